//! The engine's error type.

use std::path::PathBuf;

/// Errors raised by the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store location could not be understood or opened.
    #[error("invalid store location '{location}': {reason}")]
    InvalidStore {
        /// The location as the user gave it.
        location: String,
        /// Why it was refused.
        reason: String,
    },
    /// A local store directory could not be created or read.
    #[error("cannot use local store directory {path}: {source}")]
    LocalStore {
        /// The directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// An object store operation failed.
    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),
    /// A key of encryption at rest is missing, wrong or damaged.
    #[error("encryption at rest: {0}")]
    Keys(String),
    /// A Parquet operation failed.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A DataFusion operation failed.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
