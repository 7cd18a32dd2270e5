//! Audit retention: the log keeps its records for a period (`--audit-retention`), and older
//! ones go a whole segment at a time, without making the rest unverifiable.
//!
//! The writer signs a checkpoint before it starts a new segment, so every segment starts
//! at a tree size some signed checkpoint covers. The log is cut at such a boundary `K`:
//! `<dir>/cut.json` keeps the tree's frontier at `K` (the heads of its complete subtrees,
//! O(log K) hashes) and a **cut note** signed with the log's key: a checkpoint of size `K`
//! and that frontier's head, with the extension line `retention-cut <time>` (every record
//! deleted was written before it). A plain checkpoint cannot stand in for it, so nobody
//! without the key can cut the log: the frontier at any boundary can be computed from the
//! records, but not signed. The writer and the verifier start from that frontier instead
//! of the empty tree, so every record after the cut is still checked against every
//! checkpoint after it.
//!
//! What a cut gives up: the records before it, and the consistency proofs that reach
//! back before `K`. A checkpoint an auditor kept from before the cut can no longer be
//! checked, and verification fails saying so: an auditor keeps one newer than the
//! retention period.
//!
//! A cut is made in three durable steps: the new `cut.json`, then the segments before it,
//! then the checkpoints before it. A crash between them leaves old segments the next open
//! deletes and old checkpoints that are ignored until the next cut deletes them.

use std::fs;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use crate::merkle::{Frontier, Hash};
use crate::{Error, Result};

/// The file, in the audit folder, that holds the frontier at the retention cut.
pub const CUT_FILE: &str = "cut.json";

/// What a pass of retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Segment files deleted.
    pub segments: usize,
    /// Records deleted.
    pub records: u64,
    /// The first record the log still holds.
    pub cut: u64,
}

#[derive(Serialize, Deserialize)]
struct CutFile {
    /// Records before the cut (deleted).
    size: u64,
    /// The frontier at the cut: `[leaves, base64 head]`, largest subtree first.
    subtrees: Vec<(u64, String)>,
    /// The signed note that authorises the cut.
    note: String,
}

/// The log's retention cut: the tree's frontier there, and the signed note that authorises
/// it (none if the log was never cut).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Cut {
    pub frontier: Frontier,
    pub note: Option<String>,
}

impl Cut {
    /// Records before the cut.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Checks that the cut is authorised: its note carries the log key's signature, is a
    /// retention-cut note, and names the frontier's size and head. Returns the note.
    pub fn check(&self, verifier: &crate::VerifierKey) -> std::result::Result<crate::Checkpoint, String> {
        let note = self.note.as_deref().ok_or("it carries no signed note")?;
        let checkpoint = verifier.open(note).map_err(|e| format!("its note: {e}"))?;
        if checkpoint.retention_cut.is_none() {
            return Err("its note is a plain checkpoint, not a retention cut".into());
        }
        if checkpoint.size != self.size() || checkpoint.root != self.frontier.root() {
            return Err(format!(
                "its note signs a cut at record {} with another tree head",
                checkpoint.size
            ));
        }
        Ok(checkpoint)
    }
}

/// The log's retention cut (the empty tree if it was never cut).
pub(crate) fn read_cut(dir: &Path) -> Result<Cut> {
    let path = dir.join(CUT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Cut::default()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let bad = |why: String| Error::Tampered(format!("{}: {why}", path.display()));
    let file: CutFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut subtrees = Vec::with_capacity(file.subtrees.len());
    for (leaves, head) in file.subtrees {
        let head: Hash = BASE64
            .decode(head)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| bad("a subtree head is not 32 bytes of base64".into()))?;
        subtrees.push((leaves, head));
    }
    let frontier =
        Frontier::from_subtrees(subtrees).ok_or_else(|| bad("the subtrees are not a tree's frontier".into()))?;
    if frontier.size() != file.size {
        return Err(bad(format!(
            "the subtrees hold {} records, not {}",
            frontier.size(),
            file.size
        )));
    }
    Ok(Cut {
        frontier,
        note: Some(file.note),
    })
}

/// Writes the frontier at a new cut and the note that authorises it, durably.
pub(crate) fn write_cut(dir: &Path, frontier: &Frontier, note: &str) -> Result<()> {
    let file = CutFile {
        size: frontier.size(),
        subtrees: frontier
            .subtrees()
            .iter()
            .map(|(leaves, head)| (*leaves, BASE64.encode(head)))
            .collect(),
        note: note.to_string(),
    };
    let text = serde_json::to_string_pretty(&file).expect("a cut always serialises");
    crate::log::write_durably(&dir.join(CUT_FILE), &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    #[test]
    fn a_cut_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_cut(dir.path()).unwrap(), Cut::default());
        let mut frontier = Frontier::new();
        for i in 0..13u8 {
            frontier.push(leaf_hash(&[i]));
        }
        write_cut(dir.path(), &frontier, "a note").unwrap();
        let cut = read_cut(dir.path()).unwrap();
        assert_eq!((cut.frontier, cut.note.as_deref()), (frontier, Some("a note")));

        let path = dir.path().join(CUT_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        for (from, to, why) in [
            ("\"size\": 13", "\"size\": 12", "hold 13 records, not 12"),
            ("[\n      8,", "[\n      6,", "not a tree's frontier"),
        ] {
            assert!(text.contains(from), "{text}");
            std::fs::write(&path, text.replace(from, to)).unwrap();
            let err = read_cut(dir.path()).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }
}
