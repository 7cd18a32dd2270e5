//! `proxima sql` on a local store is direct access to the files, and still audited: every
//! statement under `local:<OS user>`, planned, recorded, then run; refused when the log
//! cannot be written; verified with `proxima audit verify`.

use std::path::Path;
use std::process::{Command, Output};

use crate::common;

const BIN: &str = env!("CARGO_BIN_EXE_proxima");

fn proxima(store: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--data", store.to_str().unwrap()])
        .args(args)
        .env("USER", "operator")
        .env_remove("PROXIMA_AUDIT_DIR")
        .env_remove("PROXIMA_AUDIT_KEY")
        .output()
        .unwrap()
}

fn records(store: &Path) -> Vec<serde_json::Value> {
    common::audit_records(&store.join("_audit"))
}

#[test]
fn every_local_statement_is_audited_and_the_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let ran = proxima(
        &store,
        &[
            "sql",
            "-c",
            "SELECT 1 AS x UNION ALL SELECT 2; SELECT count(*) FROM devices",
        ],
    );
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let script = dir.path().join("job.sql");
    std::fs::write(&script, "SELECT ${case} AS case_id").unwrap();
    let ran = proxima(&store, &["sql", "-f", script.to_str().unwrap(), "--param", "case=c-1"]);
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    let refused = proxima(&store, &["sql", "-c", "SELECT * FROM no_such_table"]);
    assert!(!refused.status.success());

    let records = records(&store);
    let summary: Vec<(String, String, Option<u64>)> = records
        .iter()
        .map(|r| {
            (
                r["phase"].as_str().unwrap().to_string(),
                r["sql"].as_str().unwrap_or("").to_string(),
                r["rows"].as_u64(),
            )
        })
        .collect();
    let expected: Vec<(String, String, Option<u64>)> = [
        ("intent", "SELECT 1 AS x UNION ALL SELECT 2", None),
        ("done", "", Some(2)),
        ("intent", "SELECT count(*) FROM devices", None),
        ("done", "", Some(1)),
        ("intent", "SELECT 'c-1' AS case_id", None),
        ("done", "", Some(1)),
        ("decision", "SELECT * FROM no_such_table", None),
    ]
    .into_iter()
    .map(|(p, s, r)| (p.to_string(), s.to_string(), r))
    .collect();
    assert_eq!(summary, expected);
    for record in &records {
        assert_eq!(record["principal"], "local:operator");
        assert_eq!(record["action"], "cli:sql");
    }
    assert_eq!(records[2]["objects"], serde_json::json!(["devices"]));
    assert_eq!(records[4]["params"], serde_json::json!([["case=c-1"]]));
    assert_eq!(records[6]["decision"], "deny");
    assert!(records[6]["error"].as_str().unwrap().contains("no_such_table"));

    // Without the key the records are unsigned; a run with the key signs them all.
    let key = dir.path().join("audit.key");
    let made = proxima(&store, &["audit", "key", "--out", key.to_str().unwrap()]);
    let public = String::from_utf8_lossy(&made.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .unwrap()
        .to_string();
    let unsigned = proxima(&store, &["audit", "verify", "--key", &public]);
    assert!(unsigned.status.success());
    assert!(String::from_utf8_lossy(&unsigned.stdout).contains("the last 7 records are not yet covered"));
    let signed = proxima(&store, &["sql", "--audit-key", key.to_str().unwrap(), "-c", "SELECT 3"]);
    assert!(signed.status.success(), "{}", String::from_utf8_lossy(&signed.stderr));
    let verified = proxima(&store, &["audit", "verify", "--key", &public]);
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{report}");
    assert!(
        report.contains("9 records") && !report.contains("not yet covered"),
        "{report}"
    );

    // Deleting the checkpoints leaves every record unsigned: past --max-unsigned-age, that
    // fails the check (a log is signed every minute and at shutdown).
    std::fs::remove_dir_all(store.join("_audit/checkpoints")).unwrap();
    std::fs::create_dir(store.join("_audit/checkpoints")).unwrap();
    let recent = proxima(&store, &["audit", "verify", "--key", &public]);
    assert!(recent.status.success(), "within the hour it is only a note");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let stale = proxima(
        &store,
        &["audit", "verify", "--key", &public, "--max-unsigned-age", "1s"],
    );
    let report = String::from_utf8_lossy(&stale.stdout);
    assert!(!stale.status.success(), "{report}");
    assert!(report.contains("unsigned: the last 9 records"), "{report}");
}

#[test]
fn nothing_runs_when_the_audit_log_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // A server holds the store's audit log.
    let signer = proxima_audit::SignerKey::generate("proxima.test/audit").unwrap();
    let held = proxima_audit::AuditLog::open(&store.join("_audit"), signer, Default::default()).unwrap();
    let view = dir.path().join("out.csv");
    let sql = format!("COPY (SELECT 1 AS x) TO '{}' STORED AS CSV", view.display());
    let refused = proxima(&store, &["sql", "-c", &sql]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("every statement is audited"), "{stderr}");
    assert!(!view.exists(), "the statement ran although it could not be audited");
    drop(held);
    let ran = proxima(&store, &["sql", "-c", &sql]);
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
    assert!(view.exists());
}
