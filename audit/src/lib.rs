//! Proxima's audit log: every access, allowed or denied, as a record that nobody can edit,
//! delete, reorder or truncate without a verifier noticing.
//!
//! - [`record`]: what one record says (who, through which door, what the policy decided,
//!   how it ended), as one line of JSON.
//! - [`log`]: the durable log. An access's intent is synced before the access runs; its
//!   outcome is a second record. One writer thread groups concurrent appends into one
//!   `fdatasync`.
//! - [`merkle`]: the records are the leaves of an append-only Merkle tree hashed as in
//!   RFC 6962 (the Certificate Transparency log format).
//! - [`checkpoint`]: every N records or M seconds the log signs its size and tree head
//!   with an Ed25519 key that the store never holds (C2SP signed notes).
//! - [`retention`]: old records go a whole segment at a time; the tree's frontier at the
//!   cut, vouched for by a signed checkpoint, lets the rest verify.
//! - [`verify`]: recomputes the tree from the records on disk and checks it against every
//!   checkpoint and against one an auditor kept (`proxima audit verify`).
//!
//! This crate knows nothing of tables, sessions or stores: the services build records
//! and append them.

pub mod checkpoint;
pub mod log;
pub mod merkle;
pub mod record;
pub mod redact;
pub mod retention;
pub mod verify;

use std::path::Path;

pub use checkpoint::{Checkpoint, SignerKey, VerifierKey};
pub use log::{AuditLog, AuditLogOptions};
pub use record::{Decision, Phase, Record};
pub use redact::Redactor;
pub use retention::Pruned;
pub use verify::{Report, Tampering, verify};

/// What can go wrong with the audit log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file of the log could not be read or written.
    #[error("audit log: {path}: {source}")]
    Io {
        /// The file or folder.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// An append could not be made durable: the record is not in the log.
    #[error("the audit record could not be written, so the request is refused: {0}")]
    Write(String),
    /// The log is in a state it cannot leave without a restart.
    #[error("the audit log is out of order, so every request is refused: {0}")]
    Broken(String),
    /// The writer thread has stopped.
    #[error("the audit log is closed")]
    Closed,
    /// A key could not be read or made.
    #[error("{0}")]
    Key(String),
    /// A checkpoint could not be read or its signature does not hold.
    #[error("{0}")]
    Checkpoint(String),
    /// The log on disk no longer matches what was signed.
    #[error("the audit log was tampered with: {0}")]
    Tampered(String),
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// The crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
