//! Proxima's engine: where data lives and how it is queried.
//!
//! This crate owns the storage layout (tables, day partitions and file paths),
//! the SQL-visible schemas, access to the object store that holds the Parquet
//! files, the validation of the identifiers every row carries, and the one
//! place where a DataFusion session and its catalog are built
//! ([`SessionFactory`]), and the staff users file shared by every service ([`users`]). It does not accept rows from the outside world (that
//! is `proxima-ingest`) nor speak any network protocol (`proxima-flight-server`).
#![warn(missing_docs)]

pub mod access;
pub mod error;
pub mod ids;
pub mod index;
pub mod lineage;
pub mod paths;
pub mod retention;
pub mod schema;
pub mod script;
pub mod session;
pub mod store;
mod table;
pub mod users;

pub use access::{Principal, Role};
pub use error::{Error, Result};
pub use paths::{DayPartition, Table};
pub use session::{SessionFactory, SessionOptions};
pub use store::Store;
pub use users::{Users, UsersError};

/// The version of Proxima written into every Parquet file it produces.
pub const PROXIMA_VERSION: &str = env!("CARGO_PKG_VERSION");
