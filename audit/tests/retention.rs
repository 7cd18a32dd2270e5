//! Audit retention on a real disk: old segments are deleted whole, and what is left still
//! verifies, keeps growing, and still catches tampering, including with the cut itself.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::Utc;
use proxima_audit::log::{CHECKPOINT_DIR, LOG_DIR};
use proxima_audit::merkle::{Frontier, leaf_hash};
use proxima_audit::retention::CUT_FILE;
use proxima_audit::{AuditLog, AuditLogOptions, Decision, Phase, Record, SignerKey, Tampering, VerifierKey, verify};

/// Small segments, and no checkpoints but those before a new segment and at close.
fn options() -> AuditLogOptions {
    AuditLogOptions {
        checkpoint_every: 1_000_000,
        checkpoint_interval: Duration::from_secs(3600),
        segment_bytes: 1024,
        redactor: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

/// Appends `n` intent/done pairs; each done follows its intent, so some complete an
/// intent of the segment before.
async fn accesses(log: &AuditLog, n: usize) {
    for i in 0..n {
        let intent = Record::new(
            Phase::Intent,
            "alice",
            "tracer",
            "flight:DoGet",
            Decision::Allow,
            "tracer",
        )
        .with_sql(&format!("SELECT {i}"));
        let seq = log.append(intent.clone()).await.unwrap();
        log.append(intent.done(seq)).await.unwrap();
    }
}

/// The numbered files of a folder, in order, with the number their name starts with.
fn numbered(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut files: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p.clone())))
        .collect();
    files.sort();
    files
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            copy_dir(&path, &to.join(path.file_name().unwrap()));
        } else {
            fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    signer: String,
    /// A checkpoint an auditor kept before the cut.
    kept_before: String,
    /// The first record left after the cut: the first record of the last segment.
    cut: u64,
    /// Records appended, in all.
    total: u64,
    /// The folder as it was just before the cut.
    before_cut: tempfile::TempDir,
}

/// A log of several segments, cut by retention, then appended to again.
fn cut_log() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let before_cut = tempfile::tempdir().unwrap();
    let signer = SignerKey::generate("proxima.test/retention").unwrap();
    let text = signer.encode();
    let log = AuditLog::open(dir.path(), signer, options()).unwrap();
    let rt = runtime();
    let (kept_before, cut) = rt.block_on(async {
        accesses(&log, 3).await;
        let kept = log.checkpoint().await.unwrap();
        accesses(&log, 27).await;

        // Every segment but the first starts at a size a checkpoint signed.
        let segments = numbered(&dir.path().join(LOG_DIR));
        assert!(segments.len() >= 4, "{segments:?}");
        let signed: Vec<u64> = numbered(&dir.path().join(CHECKPOINT_DIR))
            .iter()
            .map(|(n, _)| *n)
            .collect();
        for (first, _) in &segments[1..] {
            assert!(signed.contains(first), "segment {first} has no checkpoint: {signed:?}");
        }

        // Nothing was written before 1970: nothing is deleted.
        let nothing = log.prune(chrono::DateTime::UNIX_EPOCH).await.unwrap();
        assert_eq!((nothing.segments, nothing.records, nothing.cut), (0, 0, 0));

        copy_dir(dir.path(), before_cut.path());
        let pruned = log.prune(Utc::now() + chrono::Duration::minutes(1)).await.unwrap();
        // Everything is old: every segment goes but the one being written.
        let last_first = segments.last().unwrap().0;
        assert_eq!(pruned.segments, segments.len() - 1);
        assert_eq!(pruned.cut, last_first);
        assert_eq!(pruned.records, last_first);
        accesses(&log, 10).await;
        (text_of(&kept, &text), last_first)
    });
    drop(log);
    Fixture {
        dir,
        signer: text,
        kept_before,
        cut,
        total: 80,
        before_cut,
    }
}

/// The checkpoint as its signed note (what an auditor keeps).
fn text_of(checkpoint: &proxima_audit::Checkpoint, signer: &str) -> String {
    SignerKey::parse(signer).unwrap().sign(checkpoint)
}

fn verifier(signer: &str) -> VerifierKey {
    SignerKey::parse(signer).unwrap().verifier()
}

#[test]
fn a_cut_log_verifies_keeps_growing_and_deletes_only_old_files() {
    let f = cut_log();
    let dir = f.dir.path();
    let segments = numbered(&dir.join(LOG_DIR));
    assert_eq!(segments[0].0, f.cut, "{segments:?}");
    let checkpoints = numbered(&dir.join(CHECKPOINT_DIR));
    assert_eq!(checkpoints[0].0, f.cut, "the cut's checkpoint stays, older ones go");
    assert!(dir.join(CUT_FILE).exists());

    let report = verify(dir, &verifier(&f.signer), None).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.cut, f.cut);
    assert!(report.cut_before.is_some(), "the signed cut note says when");
    assert_eq!(report.records, f.total - f.cut);
    assert_eq!(report.unsigned_tail, 0);
    assert_eq!(report.open_intents, 0);

    // A checkpoint kept after the cut checks; one kept before it cannot, and says why.
    let latest = fs::read_to_string(&checkpoints.last().unwrap().1).unwrap();
    assert!(verify(dir, &verifier(&f.signer), Some(&latest)).unwrap().ok());
    let report = verify(dir, &verifier(&f.signer), Some(&f.kept_before)).unwrap();
    assert!(report.found(Tampering::Truncated), "{:?}", report.findings);
    assert!(
        report.findings[0].message.contains("predates the retention cut"),
        "{:?}",
        report.findings
    );

    // Reopened with the key, the log picks up after the cut; a second pass finds nothing old.
    let log = AuditLog::open(dir, SignerKey::parse(&f.signer).unwrap(), options()).unwrap();
    let rt = runtime();
    rt.block_on(async {
        accesses(&log, 2).await;
        let again = log.prune(chrono::DateTime::UNIX_EPOCH).await.unwrap();
        assert_eq!((again.segments, again.cut), (0, f.cut));
    });
    drop(log);
    let report = verify(dir, &verifier(&f.signer), None).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.records, f.total + 4 - f.cut);

    // Tampering after the cut is still caught.
    let (_, segment) = &numbered(&dir.join(LOG_DIR))[0];
    let text = fs::read_to_string(segment).unwrap();
    fs::write(segment, text.replacen("SELECT", "DELETE", 1)).unwrap();
    let report = verify(dir, &verifier(&f.signer), None).unwrap();
    assert!(report.found(Tampering::Edited), "{:?}", report.findings);
}

#[test]
fn a_forged_or_unauthorised_cut_is_caught() {
    let f = cut_log();
    let dir = f.dir.path();
    let path = dir.join(CUT_FILE);
    let original = fs::read_to_string(&path).unwrap();

    // Another head at the cut: it no longer matches the cut's signed note.
    let mut cut: serde_json::Value = serde_json::from_str(&original).unwrap();
    let head = cut["subtrees"][0][1].as_str().unwrap().to_string();
    let mut bytes = BASE64.decode(&head).unwrap();
    bytes[0] ^= 1;
    cut["subtrees"][0][1] = BASE64.encode(bytes).into();
    fs::write(&path, cut.to_string()).unwrap();
    let report = verify(dir, &verifier(&f.signer), None).unwrap();
    assert!(report.found(Tampering::Deleted), "{:?}", report.findings);
    let err = AuditLog::open(dir, SignerKey::parse(&f.signer).unwrap(), options()).unwrap_err();
    assert!(err.to_string().contains("not authorised"), "{err}");
    fs::write(&path, &original).unwrap();
    assert!(verify(dir, &verifier(&f.signer), None).unwrap().ok());
}

/// Someone who can write the folder, but has no key, deletes old records and writes the
/// cut retention would have written: the frontier at a boundary can be computed from the
/// records, and the boundary's own checkpoint is signed, but it is not a cut note.
#[test]
fn a_cut_made_without_the_key_is_caught() {
    let f = cut_log();
    let dir = f.before_cut.path(); // the log before retention cut it
    let segments = numbered(&dir.join(LOG_DIR));
    let (boundary, _) = segments[2];
    let mut frontier = Frontier::new();
    for (first, path) in &segments[..2] {
        assert!(*first < boundary);
        for line in fs::read_to_string(path).unwrap().lines() {
            frontier.push(leaf_hash(line.as_bytes()));
        }
    }
    assert_eq!(frontier.size(), boundary);
    let plain = fs::read_to_string(
        dir.join(CHECKPOINT_DIR)
            .join(proxima_audit::log::checkpoint_name(boundary)),
    )
    .unwrap();
    let forged = serde_json::json!({
        "size": boundary,
        "subtrees": frontier.subtrees().iter().map(|(n, h)| serde_json::json!([n, BASE64.encode(h)])).collect::<Vec<_>>(),
        "note": plain,
    });
    fs::write(dir.join(CUT_FILE), forged.to_string()).unwrap();
    for (_, path) in &segments[..2] {
        fs::remove_file(path).unwrap();
    }
    let report = verify(dir, &verifier(&f.signer), None).unwrap();
    assert!(report.found(Tampering::Deleted), "{:?}", report.findings);
    assert!(
        report
            .findings
            .iter()
            .any(|x| x.message.contains("plain checkpoint, not a retention cut")),
        "{:?}",
        report.findings
    );
    let err = AuditLog::open(dir, SignerKey::parse(&f.signer).unwrap(), options()).unwrap_err();
    assert!(err.to_string().contains("not authorised"), "{err}");

    // Without any note at all the cut file is not one.
    fs::write(
        dir.join(CUT_FILE),
        serde_json::json!({"size": boundary, "subtrees": forged["subtrees"]}).to_string(),
    )
    .unwrap();
    let report = verify(dir, &verifier(&f.signer), None).unwrap();
    assert!(!report.ok(), "{:?}", report.findings);
    assert!(AuditLog::open(dir, SignerKey::parse(&f.signer).unwrap(), options()).is_err());
}

/// A crash after `cut.json` was written but before the old files were deleted.
#[test]
fn a_cut_interrupted_before_deleting_finishes_on_open() {
    let f = cut_log();
    let dir = f.dir.path();
    for sub in [LOG_DIR, CHECKPOINT_DIR] {
        for (n, path) in numbered(&f.before_cut.path().join(sub)) {
            if n < f.cut {
                fs::copy(&path, dir.join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    assert!(numbered(&dir.join(LOG_DIR))[0].0 < f.cut);
    let report = verify(dir, &verifier(&f.signer), None).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.cut, f.cut);

    drop(AuditLog::open(dir, SignerKey::parse(&f.signer).unwrap(), options()).unwrap());
    assert_eq!(
        numbered(&dir.join(LOG_DIR))[0].0,
        f.cut,
        "the leftover segments are deleted"
    );
    assert!(verify(dir, &verifier(&f.signer), None).unwrap().ok());
}
