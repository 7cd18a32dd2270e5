//! Proxima ingest: everything that puts rows into the store.
//!
//! [`writer`] turns Arrow batches into Parquet files and publishes them
//! atomically (a transaction's files all become visible, or none do);
//! [`import`] validates CSV and Parquet files row by row before anything is
//! written; [`synthetic`] generates a realistic demo population. The REST
//! service ([`rest`]) acknowledges rows once they are in the write-ahead log
//! ([`wal`]); [`flush`] moves them into Parquet and [`compaction`] merges a
//! day's small files. Queries are not this crate's business.
#![warn(missing_docs)]

pub mod clock;
pub mod compaction;
pub mod error;
pub mod flush;
pub mod import;
pub mod index;
pub mod rest;
pub mod synthetic;
pub mod wal;
pub mod writer;

pub use error::{Error, Result};
pub use writer::{PartitionWriter, Transaction};
