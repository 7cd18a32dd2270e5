//! The storage error type: one enum for the write side, converted once at each boundary.

/// Errors raised while writing, flushing, compacting or deleting files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine failed (listing, sessions, paths).
    #[error(transparent)]
    Engine(#[from] proxima_engine::Error),
    /// The object store failed.
    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),
    /// Arrow failed.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet encoding or decoding failed.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A query over the store failed.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// The write-ahead log failed (the request was not acknowledged).
    #[error("write-ahead log: {0}")]
    Wal(String),
    /// A staging manifest could not be read or written.
    #[error("staging manifest {path}: {source}")]
    Manifest {
        /// The manifest's location.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A file's `proxima.wal` marks cannot be read: replaying against them could store
    /// acknowledged rows twice, so nothing proceeds until the file is looked at.
    #[error("{file}: damaged write-ahead log marks ({value:?}): {reason}")]
    Marks {
        /// The Parquet file.
        file: String,
        /// The value found.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A transaction reached its commit point (its manifest is durable) but publishing its
    /// files failed: the rows are committed and must not be written again;
    /// [`crate::PartitionWriter::settle`] or [`crate::PartitionWriter::recover`] makes them visible.
    #[error("transaction {transaction} is committed but not yet published: {source}")]
    Unpublished {
        /// The transaction's id.
        transaction: String,
        /// What failed after the commit point.
        source: Box<Error>,
    },
    /// A transaction's commit failed and whether it reached its commit point could not be
    /// told (the store did not answer): the next [`crate::PartitionWriter::settle`] or
    /// writer start decides. Do not write the same rows again before then.
    #[error(
        "transaction {transaction} may or may not be committed ({source}); the next start of a writer settles it: \
         check the store before writing the same rows again"
    )]
    InDoubt {
        /// The transaction's id.
        transaction: String,
        /// What failed.
        source: Box<Error>,
    },
    /// An argument or a compaction marker was refused.
    #[error("{0}")]
    Invalid(String),
}

/// Result alias for storage.
pub type Result<T, E = Error> = std::result::Result<T, E>;
