//! Proxima's write side: everything that writes or deletes files in the store.
//!
//! Rows from any front door (REST, imports, the generator) reach the store
//! through a [`PartitionWriter`] [`Transaction`], laid out by [`layout`]
//! (sort order, one file per day, writer properties), encrypted under the
//! table-day's key when the store has master keys ([`keys`]). The REST service's
//! rows pass first through the write-ahead log ([`wal`]); the [`flush`]
//! moves them into Parquet, recording WAL [`marks`] in each file so that a
//! replay never stores a row twice. [`compaction`] merges a day's small
//! files behind lineage markers, [`index_build`] rebuilds the `observed_index` of
//! days that lack it (every transaction writes it with the observations),
//! [`retention`] deletes day folders, and the [`Maintainer`] runs all of
//! that housekeeping in one loop on its own runtime, whether or not REST is
//! enabled. The shared [`registry`] is what serving nodes on one store know of each
//! other's registrations and revocations before they flush. [`rollup`] keeps the
//! analysts' contact and case rollups: partial rows every flush writes with the rows they
//! count. Reading the store is `proxima-engine`'s business, not this
//! crate's; accepting rows from the outside world is `proxima-ingest`'s.
#![warn(missing_docs)]

pub mod compaction;
pub mod erasure;
pub mod error;
pub mod flush;
pub mod id_keys;
pub mod index_build;
pub mod keys;
pub mod layout;
pub mod lease;
pub mod maintainer;
pub mod marks;
pub mod registry;
pub mod retention;
pub mod rollup;
#[cfg(test)]
mod testing;
pub mod wal;
pub mod writer;

pub use error::{Error, Result};
pub use maintainer::{Maintainer, MaintainerConfig, MaintenanceOptions, MaintenanceStats};
pub use writer::{CommitSummary, PartitionWriter, Transaction};
