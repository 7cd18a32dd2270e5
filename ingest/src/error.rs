//! The ingest error type.

use std::fmt;
use std::path::PathBuf;

/// Where in an input file a problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// The file as a whole (unreadable, unknown format).
    File,
    /// A line of a text file (1-based; the header is line 1).
    Line(u64),
    /// A row of a Parquet file (1-based).
    Row(u64),
    /// A column of the file's header or schema.
    Column(String),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::File => Ok(()),
            Position::Line(n) => write!(f, ":{n}"),
            Position::Row(n) => write!(f, ": row {n}"),
            Position::Column(c) => write!(f, ": column '{c}'"),
        }
    }
}

/// Errors raised while ingesting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input file was refused; nothing of the import was stored.
    #[error("{}{position}: {reason}", file.display())]
    Input {
        /// The file.
        file: PathBuf,
        /// Where in the file.
        position: Position,
        /// Why.
        reason: String,
    },
    /// Invalid arguments (for example to the generator).
    #[error("{0}")]
    InvalidArgument(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] proxima_engine::Error),
    /// Writing to the store failed.
    #[error(transparent)]
    Storage(#[from] proxima_storage::Error),
    /// Arrow failed.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet encoding or decoding failed.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A query over the store failed.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

/// Result alias for ingest.
pub type Result<T, E = Error> = std::result::Result<T, E>;
