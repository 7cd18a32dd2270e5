//! Proxima's front doors: everything that accepts rows from outside.
//!
//! [`import`] validates CSV and Parquet files row by row before anything is
//! written; [`synthetic`] generates a realistic demo population; the REST
//! service ([`rest`]) takes devices, observations, cases and temperature
//! readings from phones, stations and tracers, and acknowledges rows once the
//! write-ahead log holds them. Every byte they store goes through
//! `proxima-storage` (transactions, the WAL, the Maintainer); this crate never
//! touches the object store itself. Queries are not its business either (a
//! case's trace goes through `SessionFactory::session_for`, like any query).
#![warn(missing_docs)]

pub mod error;
pub mod import;
pub mod rest;
pub mod synthetic;

pub use error::{Error, Result};
