//! Proxima's audit log: every access, allowed or denied, as a record that nobody can edit,
//! delete, reorder or truncate without a verifier noticing.
//!
//! The records are the leaves of an append-only Merkle tree hashed as in RFC 6962 (the
//! Certificate Transparency log format), so that signed checkpoints of the tree's size and
//! root, with inclusion and consistency proofs, let an auditor check the whole history
//! against a checkpoint they kept.
//!
//! So far this crate holds the tree itself ([`merkle`]); the record format, the durable
//! log, checkpoints and `proxima audit verify` build on it (issue 11), and nothing else in
//! the workspace uses it yet.

pub mod merkle;
