//! The audit log on a real disk: written by concurrent callers, closed, then tampered with
//! in each of the five ways an auditor must catch, and verified.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proxima_audit::log::{CHECKPOINT_DIR, LOG_DIR};
use proxima_audit::{AuditLog, AuditLogOptions, Decision, Phase, Record, SignerKey, Tampering, verify};

const ORIGIN: &str = "proxima.test/audit";

fn options() -> AuditLogOptions {
    AuditLogOptions {
        checkpoint_every: 8,
        checkpoint_interval: Duration::from_secs(3600),
        segment_bytes: 2048,
        redactor: None,
    }
}

/// Writes `accesses` intent/done pairs (and a refused login between) from concurrent
/// tasks, closes the log and returns its signer (as text, to make fresh copies).
fn write_log(dir: &Path, accesses: usize) -> String {
    let signer = SignerKey::generate(ORIGIN).unwrap();
    let text = signer.encode();
    let log = AuditLog::open(dir, signer, options()).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..accesses {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
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
                let mut done = intent.done(seq);
                done.rows = Some(i as u64);
                log.append(done).await.unwrap();
                let refused = Record::new(
                    Phase::Decision,
                    "mallory",
                    "",
                    "flight:Handshake",
                    Decision::Deny,
                    "wrong password",
                );
                log.append(refused).await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    drop(log); // the last checkpoint is signed on close
    text
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join(LOG_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

fn second_checkpoint(dir: &Path) -> String {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join(CHECKPOINT_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    fs::read_to_string(&files[1]).unwrap()
}

fn verifier(signer: &str) -> proxima_audit::VerifierKey {
    SignerKey::parse(signer).unwrap().verifier()
}

#[test]
fn an_untouched_log_verifies_with_every_record_signed() {
    let dir = tempfile::tempdir().unwrap();
    let signer = write_log(dir.path(), 20);
    let report = verify(dir.path(), &verifier(&signer), None).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.records, 60);
    assert_eq!(report.unsigned_tail, 0);
    assert_eq!(report.open_intents, 0);
    assert!(report.checkpoints.len() >= 2, "{}", report.checkpoints.len());
    assert!(segments(dir.path()).len() > 1, "the test should span segments");
    // Every sequence number once, in order, whatever order the callers ran in.
    let all: Vec<serde_json::Value> = segments(dir.path())
        .iter()
        .flat_map(|p| lines(p))
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    for (i, record) in all.iter().enumerate() {
        assert_eq!(record["seq"], i as u64);
    }
    // Another key's verifier accepts nothing.
    let stranger = SignerKey::generate(ORIGIN).unwrap().verifier();
    let report = verify(dir.path(), &stranger, None).unwrap();
    assert!(report.found(Tampering::Unreadable));
}

#[test]
fn an_edited_record_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let signer = write_log(dir.path(), 10);
    let first = &segments(dir.path())[0];
    let mut records = lines(first);
    records[3] = records[3].replace("\"principal\":\"alice\"", "\"principal\":\"bob\"");
    assert!(records[3].contains("bob"), "the edit should change something");
    write_lines(first, &records);
    let report = verify(dir.path(), &verifier(&signer), None).unwrap();
    assert!(report.found(Tampering::Edited), "{:?}", report.findings);
    assert!(!report.found(Tampering::Deleted) && !report.found(Tampering::Reordered));
    assert!(
        report.findings[0].message.contains("a record was edited"),
        "{}",
        report.findings[0].message
    );
}

#[test]
fn a_deleted_record_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let signer = write_log(dir.path(), 10);
    let first = &segments(dir.path())[0];
    let mut records = lines(first);
    records.remove(2);
    write_lines(first, &records);
    let report = verify(dir.path(), &verifier(&signer), None).unwrap();
    assert!(report.found(Tampering::Deleted), "{:?}", report.findings);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.message.contains("record 2 is missing")),
        "{:?}",
        report.findings
    );
}

#[test]
fn reordered_records_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let signer = write_log(dir.path(), 10);
    let first = &segments(dir.path())[0];
    let mut records = lines(first);
    records.swap(4, 5);
    write_lines(first, &records);
    let report = verify(dir.path(), &verifier(&signer), None).unwrap();
    assert!(report.found(Tampering::Reordered), "{:?}", report.findings);
    assert!(
        !report.found(Tampering::Deleted) && !report.found(Tampering::Edited),
        "{:?}",
        report.findings
    );
    assert!(
        report.findings[0].message.contains("record 5 comes before record 4"),
        "{}",
        report.findings[0].message
    );
}

#[test]
fn a_truncated_log_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let signer = write_log(dir.path(), 10);
    let files = segments(dir.path());
    let last = files.last().unwrap();
    let mut records = lines(last);
    records.truncate(records.len() - 2);
    write_lines(last, &records);
    let report = verify(dir.path(), &verifier(&signer), None).unwrap();
    assert!(report.found(Tampering::Truncated), "{:?}", report.findings);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.message.contains("the last 2 are gone")),
        "{:?}",
        report.findings
    );
    // Removing the whole last segment is a truncation too.
    fs::remove_file(last).unwrap();
    assert!(
        verify(dir.path(), &verifier(&signer), None)
            .unwrap()
            .found(Tampering::Truncated)
    );
}

#[test]
fn a_history_rewritten_and_resigned_after_a_kept_checkpoint_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let signer = write_log(dir.path(), 10);
    // The auditor keeps the second checkpoint.
    let kept = second_checkpoint(dir.path());
    // Whoever holds the key edits record 3, throws the checkpoints away and has the
    // server sign the rewritten history afresh.
    let first = &segments(dir.path())[0];
    let mut records = lines(first);
    records[3] = records[3].replace("alice", "carol");
    write_lines(first, &records);
    fs::remove_dir_all(dir.path().join(CHECKPOINT_DIR)).unwrap();
    drop(AuditLog::open(dir.path(), SignerKey::parse(&signer).unwrap(), options()).unwrap());
    // On its own, the rewritten log is consistent: that is what the kept checkpoint is for.
    let alone = verify(dir.path(), &verifier(&signer), None).unwrap();
    assert!(alone.ok(), "{:?}", alone.findings);
    let report = verify(dir.path(), &verifier(&signer), Some(&kept)).unwrap();
    assert!(report.found(Tampering::Rewritten), "{:?}", report.findings);
    assert!(
        report.findings[0]
            .message
            .contains("rewritten after that checkpoint and re-signed"),
        "{}",
        report.findings[0].message
    );
    // The honest log verifies against the same kept checkpoint.
    let honest = tempfile::tempdir().unwrap();
    let signer = write_log(honest.path(), 10);
    let kept = second_checkpoint(honest.path());
    let report = verify(honest.path(), &verifier(&signer), Some(&kept)).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
}

#[test]
fn one_process_at_a_time_writes_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let signer = SignerKey::generate(ORIGIN).unwrap();
    let text = signer.encode();
    let first = AuditLog::open(dir.path(), signer, options()).unwrap();
    let second = AuditLog::open(dir.path(), SignerKey::parse(&text).unwrap(), options()).unwrap_err();
    assert!(second.to_string().contains("another process"), "{second}");
    drop(first);
    AuditLog::open(dir.path(), SignerKey::parse(&text).unwrap(), options()).unwrap();
}

#[test]
fn a_server_refuses_to_sign_over_a_tampered_log() {
    let dir = tempfile::tempdir().unwrap();
    let signer = write_log(dir.path(), 4);
    let first = &segments(dir.path())[0];
    let mut records = lines(first);
    records[1] = records[1].replace("alice", "carol");
    write_lines(first, &records);
    let error = AuditLog::open(dir.path(), SignerKey::parse(&signer).unwrap(), options()).unwrap_err();
    assert!(error.to_string().contains("tampered"), "{error}");
}

#[test]
fn a_torn_last_line_is_dropped_on_open_and_numbering_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let signer = write_log(dir.path(), 3);
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&last).unwrap();
    bytes.extend_from_slice(b"{\"seq\":9,\"ti");
    fs::write(&last, bytes).unwrap();
    let report = verify(dir.path(), &verifier(&signer), None).unwrap();
    assert!(report.ok() && report.torn_tail, "{:?}", report.findings);

    let log = AuditLog::open(dir.path(), SignerKey::parse(&signer).unwrap(), options()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let seq = runtime
        .block_on(log.append(Record::new(
            Phase::Decision,
            "alice",
            "tracer",
            "cli:sql",
            Decision::Allow,
            "local",
        )))
        .unwrap();
    assert_eq!(seq, 9);
    drop(log);
    let report = verify(dir.path(), &verifier(&signer), None).unwrap();
    assert!(report.ok() && !report.torn_tail, "{:?}", report.findings);
    assert_eq!(report.records, 10);
}

#[test]
fn records_appended_without_the_key_are_signed_by_the_next_process_that_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let signer = write_log(dir.path(), 2);
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let unsigned = AuditLog::open_unsigned(dir.path(), options()).unwrap();
    for _ in 0..3 {
        runtime
            .block_on(unsigned.append(Record::new(
                Phase::Decision,
                "local:op",
                "local",
                "cli:sql",
                Decision::Allow,
                "local files",
            )))
            .unwrap();
    }
    drop(unsigned);
    let report = verify(dir.path(), &verifier(&signer), None).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.records, report.unsigned_tail), (9, 3));
    drop(AuditLog::open(dir.path(), SignerKey::parse(&signer).unwrap(), options()).unwrap());
    let report = verify(dir.path(), &verifier(&signer), None).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!((report.records, report.unsigned_tail), (9, 0));
}

#[test]
fn a_forged_huge_sequence_number_is_reported_not_walked() {
    let dir = tempfile::tempdir().unwrap();
    let signer = write_log(dir.path(), 3);
    let first = &segments(dir.path())[0];
    let mut records = lines(first);
    let seq = format!("\"seq\":{}", 1);
    assert!(records[1].contains(&seq));
    records[1] = records[1].replacen(&seq, &format!("\"seq\":{}", u64::MAX), 1);
    write_lines(first, &records);
    let report = verify(dir.path(), &verifier(&signer), None).unwrap();
    assert!(report.found(Tampering::Deleted), "{:?}", report.findings);
}

#[test]
fn lines_a_crash_left_past_the_last_checkpoint_are_cut_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let signer = write_log(dir.path(), 3);
    let last = segments(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    // Zeroes ending in a newline: what a file system can leave of a write a crash cut.
    bytes.extend_from_slice(&[0u8; 40]);
    bytes.push(b'\n');
    std::fs::write(&last, bytes).unwrap();
    let report = verify(dir.path(), &verifier(&signer), None).unwrap();
    assert!(
        report.found(Tampering::Edited),
        "the verifier sees the garbage: {:?}",
        report.findings
    );
    drop(AuditLog::open(dir.path(), SignerKey::parse(&signer).unwrap(), options()).unwrap());
    let report = verify(dir.path(), &verifier(&signer), None).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.records, 9);
}
