//! Proxima's engine: the vocabulary every crate shares, and the read side.
//!
//! This crate owns the storage layout (tables, day partitions, and the paths
//! of every file, marker and staging folder, built and parsed in one place),
//! the SQL-visible schemas, access to the object store and its lineage view
//! for readers, the validation of the identifiers every row carries, the
//! encounter-index reader, the clock, the staff users file shared by every
//! service ([`users`]), the checks of an identity provider's staff tokens ([`oidc`]),
//! and the one place where a DataFusion session and its
//! catalog are built ([`SessionFactory`]). It never writes or deletes data
//! files (that is `proxima-storage`), accepts rows from the outside world
//! (`proxima-ingest`) or serves a network protocol (`proxima-flight-server`); its
//! one network client fetches the identity provider's keys.
#![warn(missing_docs)]

pub mod access;
pub mod clock;
pub mod encryption;
pub mod ephemeral;
pub mod error;
pub mod ids;
pub mod index;
pub mod ipc;
pub mod keys;
pub mod limits;
pub mod lineage;
pub mod login;
pub mod memory;
pub mod oidc;
pub mod paths;
pub mod policy;
pub mod purpose;
pub mod remote_plan;
pub mod rules;
pub mod schema;
pub mod script;
pub mod session;
pub mod sighting;
pub mod store;
pub mod table;
pub mod telemetry;
pub mod trace_case;
pub mod users;

pub use access::{Principal, Role};
pub use error::{Error, Result};
pub use paths::{DayPartition, Table};
pub use session::{Remote, SessionFactory, SessionOptions};
pub use store::Store;
pub use users::{Users, UsersError};

/// The version of Proxima written into every Parquet file it produces.
pub const PROXIMA_VERSION: &str = env!("CARGO_PKG_VERSION");
