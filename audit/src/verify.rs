//! `proxima audit verify`: recomputes the tree over every record on disk and checks it
//! against every signed checkpoint, the consistency of successive checkpoints, and a
//! checkpoint an auditor kept from earlier.
//!
//! Each kind of tampering is named for what it is: an edited record (the records are in
//! order but the tree no longer matches a signed head), a deleted or reordered record
//! (sequence numbers skip or go back), a truncated log (a checkpoint signed more records
//! than there are), a history rewritten after a checkpoint (the log and its checkpoints
//! agree with each other, re-signed by whoever holds the key, but not with the checkpoint
//! the auditor kept). Only records covered by a checkpoint are protected: the report says
//! how many came after the last one.
//!
//! A log that retention cut starts from the frontier in `cut.json`, which must match the
//! signed checkpoint at the cut; checkpoints before the cut are ignored, and a kept one
//! from before it cannot be checked, which is reported as a truncation (see
//! [`crate::retention`]).

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::checkpoint::{Checkpoint, VerifierKey};
use crate::log::{CHECKPOINT_DIR, LOG_DIR, numbered_files};
use crate::merkle::{Frontier, Hash, consistency_proof, leaf_hash, verify_consistency};
use crate::record::Phase;
use crate::retention::{CUT_FILE, read_cut};

/// A kind of damage the verifier reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tampering {
    /// A record's bytes changed: the tree no longer matches a signed head.
    Edited,
    /// Records are missing from the sequence.
    Deleted,
    /// Records are out of sequence.
    Reordered,
    /// The log ends before what a checkpoint signed.
    Truncated,
    /// The log disagrees with a checkpoint kept from earlier (or two signed checkpoints
    /// disagree): its history was rewritten and re-signed.
    Rewritten,
    /// A checkpoint whose signature does not hold, or a file that is not a record.
    Unreadable,
}

impl std::fmt::Display for Tampering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Edited => "edited",
            Self::Deleted => "deleted",
            Self::Reordered => "reordered",
            Self::Truncated => "truncated",
            Self::Rewritten => "rewritten",
            Self::Unreadable => "unreadable",
        })
    }
}

/// One problem, with the sentence that explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What kind of damage.
    pub kind: Tampering,
    /// Where and what, for a person.
    pub message: String,
}

/// What the verifier found.
#[derive(Debug, Default)]
pub struct Report {
    /// Records read.
    pub records: u64,
    /// Records deleted by retention before the ones read (the first record's number).
    pub cut: u64,
    /// The time before which those records were written, from the signed cut note.
    pub cut_before: Option<String>,
    /// Signed checkpoints that verified, by size.
    pub checkpoints: Vec<Checkpoint>,
    /// Records after the last verified checkpoint: not yet protected by a signature.
    pub unsigned_tail: u64,
    /// When the first of them was written (RFC 3339): a tail older than the checkpoint
    /// interval means the server stopped without signing, or checkpoints were deleted.
    pub unsigned_since: Option<String>,
    /// Intents with no `done` record (a crash, or accesses still running).
    pub open_intents: u64,
    /// A torn last line (a crash during a write), not counted as a record.
    pub torn_tail: bool,
    /// Every problem found; the log verifies when there is none.
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when nothing was found wrong.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }

    /// True if a finding of `kind` was reported.
    pub fn found(&self, kind: Tampering) -> bool {
        self.findings.iter().any(|f| f.kind == kind)
    }

    fn add(&mut self, kind: Tampering, message: String) {
        self.findings.push(Finding { kind, message });
    }
}

/// The fields the verifier reads from each record.
#[derive(Deserialize)]
struct Head {
    seq: u64,
    #[serde(default)]
    time: String,
    phase: Phase,
    #[serde(default)]
    intent: Option<u64>,
}

/// One line of the log: where it is and what it hashes to.
struct Line {
    file: PathBuf,
    number: usize,
    leaf: Hash,
    head: Option<Head>,
}

/// Verifies the audit log in `dir` with `key`, and against `kept`, a signed checkpoint an
/// auditor saved earlier (its text), if given.
pub fn verify(dir: &Path, key: &VerifierKey, kept: Option<&str>) -> crate::Result<Report> {
    let mut report = Report::default();
    let cut = match read_cut(dir) {
        Ok(cut) => {
            if cut.size() > 0 {
                match cut.check(key) {
                    Ok(note) => report.cut_before = note.retention_cut,
                    Err(why) => report.add(
                        Tampering::Deleted,
                        format!(
                            "{}: the retention cut at record {} is not authorised ({why}): the {} records before it were deleted without the log's key",
                            dir.join(CUT_FILE).display(),
                            cut.size(),
                            cut.size()
                        ),
                    ),
                }
            }
            cut.frontier
        }
        Err(e) => {
            report.add(Tampering::Unreadable, e.to_string());
            Frontier::new()
        }
    };
    report.cut = cut.size();
    let lines = read_lines(dir, cut.size(), &mut report)?;
    report.records = lines.len() as u64;
    check_sequence(&lines, cut.size(), &mut report);
    // Records in the tree, deleted ones included.
    let total = cut.size() + lines.len() as u64;

    // Every checkpoint on disk, each checked on its own first.
    let mut checkpoints = Vec::new();
    for (size, path) in numbered_files(&dir.join(CHECKPOINT_DIR), ".note")? {
        if size < cut.size() {
            // Left by a cut that stopped before deleting it: its records are gone.
            continue;
        }
        let text = fs::read_to_string(&path).map_err(|e| crate::Error::io(&path, e))?;
        match key.open(&text) {
            Ok(checkpoint) if checkpoint.size == size => checkpoints.push(checkpoint),
            Ok(checkpoint) => report.add(
                Tampering::Unreadable,
                format!(
                    "{}: the file is named for size {size} but signs size {}",
                    path.display(),
                    checkpoint.size
                ),
            ),
            Err(e) => report.add(Tampering::Unreadable, format!("{}: {e}", path.display())),
        }
    }
    let kept = match kept.map(|text| key.open(text)) {
        Some(Ok(checkpoint)) => Some(checkpoint),
        Some(Err(e)) => {
            report.add(Tampering::Unreadable, format!("the kept checkpoint: {e}"));
            None
        }
        None => None,
    };

    // The tree's head at every size a checkpoint names, in one pass.
    let leaves: Vec<Hash> = lines.iter().map(|l| l.leaf).collect();
    let mut sizes: Vec<u64> = checkpoints.iter().chain(&kept).map(|c| c.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let heads = heads_at(&cut, &leaves, &sizes);
    let head_at = |size: u64| heads.iter().find(|(s, _)| *s == size).and_then(|(_, h)| *h);

    // Sequence problems are the precise finding; a head mismatch they cause is reported
    // under the same kind, not as a separate edit.
    let structural = report
        .findings
        .iter()
        .map(|f| f.kind)
        .find(|k| matches!(k, Tampering::Deleted | Tampering::Reordered));
    let mut matched: Vec<&Checkpoint> = Vec::new();
    let mut previous_size = cut.size();
    for checkpoint in &checkpoints {
        match head_at(checkpoint.size) {
            None => report.add(
                Tampering::Truncated,
                format!(
                    "the log holds {total} records but the checkpoint of {} signed {}: the last {} are gone",
                    checkpoint.time,
                    checkpoint.size,
                    checkpoint.size - total
                ),
            ),
            Some(head) if head == checkpoint.root => matched.push(checkpoint),
            Some(_) => {
                let (kind, why) = match structural {
                    Some(kind) => (kind, "records were deleted or moved (above)"),
                    None => (Tampering::Edited, "a record was edited"),
                };
                report.add(
                    kind,
                    format!(
                        "records {previous_size}..{} no longer match the checkpoint of {} (size {}): {why}{}",
                        checkpoint.size,
                        checkpoint.time,
                        checkpoint.size,
                        locate(
                            &lines,
                            previous_size.saturating_sub(cut.size()),
                            checkpoint.size - cut.size()
                        )
                    ),
                )
            }
        }
        previous_size = checkpoint.size;
    }

    // Successive checkpoints must extend each other: checked with a consistency proof
    // built from the log, step by step as a remote auditor would. After a retention cut the
    // proofs would need hashes from before it; the checkpoints matched heads of one leaf
    // sequence, which is what the proofs would show.
    for pair in matched.windows(2).filter(|_| cut.size() == 0) {
        let (old, new) = (pair[0], pair[1]);
        let proof = consistency_proof(&leaves[..new.size as usize], old.size as usize).unwrap_or_default();
        if !verify_consistency(old.size, new.size, &old.root, &new.root, &proof) {
            report.add(
                Tampering::Rewritten,
                format!(
                    "the checkpoints of size {} and {} are not consistent: history between them was rewritten",
                    old.size, new.size
                ),
            );
        }
    }

    if let Some(kept) = &kept {
        match head_at(kept.size) {
            None if kept.size < cut.size() => report.add(
                Tampering::Truncated,
                format!(
                    "the checkpoint kept from {} (size {}) predates the retention cut at record {}: the records it signed were deleted, so it cannot be checked (keep a checkpoint newer than the audit retention)",
                    kept.time,
                    kept.size,
                    cut.size()
                ),
            ),
            None => report.add(
                Tampering::Truncated,
                format!(
                    "the log holds {total} records but the kept checkpoint of {} signed {}",
                    kept.time,
                    kept.size
                ),
            ),
            Some(head) if head != kept.root => report.add(
                Tampering::Rewritten,
                format!(
                    "the log's first {} records differ from the checkpoint kept from {}: its history was rewritten after that checkpoint{}",
                    kept.size,
                    kept.time,
                    if matched.iter().any(|c| c.size >= kept.size) {
                        " and re-signed"
                    } else {
                        ""
                    }
                ),
            ),
            Some(_) => {
                if let Some(latest) = matched.last().filter(|c| c.size >= kept.size && cut.size() == 0) {
                    let proof = consistency_proof(&leaves[..latest.size as usize], kept.size as usize)
                        .unwrap_or_default();
                    if !verify_consistency(kept.size, latest.size, &kept.root, &latest.root, &proof) {
                        report.add(
                            Tampering::Rewritten,
                            format!(
                                "the latest checkpoint (size {}) does not extend the kept one (size {})",
                                latest.size, kept.size
                            ),
                        );
                    }
                }
            }
        }
    }

    report.unsigned_tail = total - matched.last().map_or(cut.size(), |c| c.size.clamp(cut.size(), total));
    report.unsigned_since = lines
        .get(leaves.len() - report.unsigned_tail as usize)
        .and_then(|line| line.head.as_ref())
        .map(|head| head.time.clone());
    report.checkpoints = matched.into_iter().cloned().collect();
    Ok(report)
}

/// Reads every segment's lines in order, from record `cut` on; a line that is not a record
/// is reported.
fn read_lines(dir: &Path, cut: u64, report: &mut Report) -> crate::Result<Vec<Line>> {
    let mut lines = Vec::new();
    let mut segments = numbered_files(&dir.join(LOG_DIR), ".jsonl")?;
    // Segments before the cut are left by a cut that stopped before deleting them.
    let leftovers = segments.iter().take_while(|(first, _)| *first < cut).count();
    if segments.get(leftovers).is_none_or(|(first, _)| *first == cut) {
        segments.drain(..leftovers);
    }
    for (i, (first, path)) in segments.iter().enumerate() {
        if *first != cut + lines.len() as u64 {
            report.add(
                Tampering::Deleted,
                format!(
                    "{} is named for record {first} but the log before it holds {} records: records or a segment were removed",
                    path.display(),
                    cut + lines.len() as u64
                ),
            );
        }
        let bytes = fs::read(path).map_err(|e| crate::Error::io(path, e))?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            if i + 1 == segments.len() {
                report.torn_tail = true;
            } else {
                report.add(
                    Tampering::Edited,
                    format!("{} ends in the middle of a record", path.display()),
                );
            }
        }
        for (number, line) in bytes[..complete].split_inclusive(|&b| b == b'\n').enumerate() {
            let line = &line[..line.len() - 1];
            let head = serde_json::from_slice::<Head>(line).ok();
            if head.is_none() {
                report.add(
                    Tampering::Edited,
                    format!("{}:{}: not an audit record", path.display(), number + 1),
                );
            }
            lines.push(Line {
                file: path.clone(),
                number: number + 1,
                leaf: leaf_hash(line),
                head,
            });
        }
    }
    Ok(lines)
}

/// Sequence numbers must count up from `cut` (0 if retention never cut the log) with no
/// gap; `done` records must name an earlier intent (or one before the cut). A gap whose
/// records appear later is a reordering, not a deletion.
fn check_sequence(lines: &[Line], cut: u64, report: &mut Report) {
    const MAX: usize = 20;
    let present: std::collections::BTreeSet<u64> =
        lines.iter().filter_map(|l| l.head.as_ref()).map(|h| h.seq).collect();
    let mut seen = std::collections::HashSet::new();
    let mut findings = Vec::new();
    let mut intents = std::collections::HashSet::new();
    let mut expected = cut;
    for line in lines {
        let Some(head) = &line.head else {
            expected = expected.saturating_add(1);
            continue;
        };
        let at = format!("{}:{}", line.file.display(), line.number);
        if !seen.insert(head.seq) {
            findings.push((Tampering::Edited, format!("{at}: record {} appears twice", head.seq)));
        } else if head.seq > expected {
            // Counted from the set, never by walking the gap: a forged number can be huge.
            let gap = head.seq - expected;
            let elsewhere = present.range(expected..head.seq).count() as u64;
            if elsewhere == gap {
                findings.push((
                    Tampering::Reordered,
                    format!("{at}: record {} comes before record {expected}: out of order", head.seq),
                ));
            } else {
                let first_missing = (expected..head.seq).find(|s| !present.contains(s)).unwrap_or(expected);
                let what = if gap - elsewhere == 1 {
                    format!("record {first_missing} is")
                } else {
                    format!("{} records from {first_missing} on are", gap - elsewhere)
                };
                findings.push((Tampering::Deleted, format!("{at}: {what} missing")));
            }
        }
        if head.seq >= expected {
            expected = head.seq.saturating_add(1);
        }
        match head.phase {
            Phase::Intent => {
                intents.insert(head.seq);
            }
            Phase::Done => {
                if !head.intent.is_some_and(|i| i < cut || intents.remove(&i)) {
                    let kind = if head.intent.is_some_and(|i| present.contains(&i)) {
                        Tampering::Reordered
                    } else {
                        Tampering::Deleted
                    };
                    findings.push((
                        kind,
                        format!(
                            "{at}: record {} completes an intent that does not come before it",
                            head.seq
                        ),
                    ));
                }
            }
            Phase::Decision => {}
        }
    }
    let extra = findings.len().saturating_sub(MAX);
    for (kind, message) in findings.into_iter().take(MAX) {
        report.add(kind, message);
    }
    if extra > 0 {
        let kind = report.findings.last().expect("MAX findings were added").kind;
        report.add(kind, format!("… and {extra} more problems of sequence"));
    }
    report.open_intents = intents.len() as u64;
}

/// The tree head after each of `sizes` leaves (sorted), `leaves` following the tree at the
/// retention cut; `None` past the end or before the cut.
fn heads_at(cut: &Frontier, leaves: &[Hash], sizes: &[u64]) -> Vec<(u64, Option<Hash>)> {
    let mut frontier = cut.clone();
    let mut heads = Vec::new();
    let mut leaves = leaves.iter();
    for &size in sizes {
        while frontier.size() < size {
            match leaves.next() {
                Some(leaf) => frontier.push(*leaf),
                None => break,
            }
        }
        heads.push((size, (frontier.size() == size).then(|| frontier.root())));
    }
    heads
}

/// Where records `from..to` are on disk, for a message.
fn locate(lines: &[Line], from: u64, to: u64) -> String {
    match (lines.get(from as usize), lines.get(to.saturating_sub(1) as usize)) {
        (Some(a), Some(b)) => format!(
            " (in {}:{} to {}:{})",
            a.file.display(),
            a.number,
            b.file.display(),
            b.number
        ),
        _ => String::new(),
    }
}
