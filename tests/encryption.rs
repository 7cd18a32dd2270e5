//! Encryption at rest, end to end on real files: a store written with a master key answers
//! exactly as the same population written in the clear (tables, the `encounters` view,
//! traces through the encounter index, after a compaction), while no file of it holds a
//! registered MAC, device UUID or identifier; missing, wrong and moved keys fail with
//! errors that name the key; rotation keeps every file readable; the `proxima key`
//! commands; and pyarrow reads a file through its Key Management Tools API. In transit:
//! TLS is required beyond loopback, and `--tls-client-ca` asks staff for a certificate.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::util::pretty::pretty_format_batches;
use chrono::Utc;
use proxima_engine::ephemeral::{IdKeys, Identifiers};
use proxima_engine::keys::{KeyProvider, MasterKeys};
use proxima_engine::{SessionFactory, SessionOptions, Store, Table};
use proxima_ingest::synthetic::{Broadcast, PopulationSpec, generate};
use proxima_storage::PartitionWriter;
use proxima_storage::compaction::{GRACE, compact_due};

const BIN: &str = env!("CARGO_BIN_EXE_proxima");

fn identifiers() -> Arc<Identifiers> {
    Arc::new(Identifiers::new(
        IdKeys::generate(Utc::now()),
        std::time::Duration::from_secs(15 * 60),
        std::time::Duration::from_secs(120),
    ))
}

/// The same population (MACs, rotating identifiers and GAEN RPIs, a third each) over the
/// last three days, plus extra small files today that a compaction then merges.
async fn populate(store: &Store, ids: &Arc<Identifiers>) -> SessionFactory {
    let writer = PartitionWriter::new(store.clone(), "test");
    let today = proxima_engine::store::today_utc();
    let spec = PopulationSpec {
        broadcast: Broadcast::Mixed(Arc::clone(ids)),
        devices: 240,
        days: 3,
        contacts_per_day: 6,
        seed: 11,
        start: today - chrono::Days::new(2),
    };
    generate(&writer, &spec, |_| {}).await.unwrap();
    let options = SessionOptions {
        identifiers: Some(Arc::clone(ids)),
        ..SessionOptions::default()
    };
    let factory = SessionFactory::new(store.clone(), options).unwrap();
    let extra = rows(
        &factory,
        &format!(
            "SELECT observer, observed, observed_at, duration_s, rssi, tx_power, location FROM observations \
             WHERE day = DATE '{today}' ORDER BY observer, observed_at LIMIT 40"
        ),
    )
    .await;
    for _ in 0..proxima_storage::compaction::MIN_FILES {
        let mut transaction = writer.begin();
        transaction
            .write_file(Table::Observations, Some(today), &extra)
            .await
            .unwrap();
        transaction.commit().await.unwrap();
    }
    assert!(compact_due(&factory, &writer, Utc::now(), GRACE).await.unwrap() >= 1);
    factory
}

async fn rows(factory: &SessionFactory, sql: &str) -> Vec<RecordBatch> {
    let ctx = factory.session().await.unwrap();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

async fn text(factory: &SessionFactory, sql: &str) -> String {
    pretty_format_batches(&rows(factory, sql).await).unwrap().to_string()
}

async fn query_error(factory: &SessionFactory, sql: &str) -> String {
    let ctx = factory.session().await.unwrap();
    match ctx.sql(sql).await {
        Err(e) => e.to_string(),
        Ok(frame) => frame.collect().await.expect_err("the query should fail").to_string(),
    }
}

/// What is compared between the two stores: every table's content and traces.
const CHECKS: &[&str] = &[
    "SELECT count(*), sum(duration_s), min(observed_at), max(observed_at) FROM observations",
    "SELECT day, count(*) FROM observations GROUP BY day ORDER BY day",
    "SELECT * FROM devices ORDER BY device_uuid",
    "SELECT count(*), count(DISTINCT a), sum(duration_s) FROM encounters",
    "SELECT a, b, at FROM encounters ORDER BY a, b, at LIMIT 50",
];

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The byte strings that identify someone: each device's UUID (text and its 16 bytes), each
/// MAC, and some identifiers heard (rotating identifiers and RPIs).
async fn secrets(factory: &SessionFactory) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let identities = common::column(
        factory,
        "SELECT device_uuid FROM devices UNION ALL SELECT mac FROM devices WHERE mac IS NOT NULL",
    )
    .await;
    for value in identities {
        if let Ok(uuid) = uuid::Uuid::parse_str(&value) {
            out.push(uuid.as_bytes().to_vec());
        }
        out.push(value.into_bytes());
    }
    let heard = common::column(
        factory,
        "SELECT DISTINCT observed FROM observations WHERE length(observed) = 32 ORDER BY observed LIMIT 200",
    )
    .await;
    out.extend(heard.into_iter().map(String::into_bytes));
    assert!(out.len() > 600, "devices, MACs and identifiers: {}", out.len());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_store_answers_as_a_plaintext_one_and_holds_nothing_readable() {
    let dirs = tempfile::tempdir().unwrap();
    let ids = identifiers();
    let plain = Store::local(&dirs.path().join("plain")).unwrap();
    let masters = Arc::new(MasterKeys::generate(Utc::now()));
    let sealed_root = dirs.path().join("sealed");
    let sealed = Store::local(&sealed_root).unwrap().with_keys(masters.clone());
    let plain = populate(&plain, &ids).await;
    let sealed = populate(&sealed, &ids).await;

    for sql in CHECKS {
        assert_eq!(text(&sealed, sql).await, text(&plain, sql).await, "{sql}");
    }
    // Traces, through the encounter index (every day is covered), for a few devices.
    let devices = common::column(&plain, "SELECT device_uuid FROM devices ORDER BY device_uuid LIMIT 6").await;
    assert_eq!(devices.len(), 6);
    let now = Utc::now().to_rfc3339();
    for device in devices {
        let sql = format!(
            "SELECT contact, contact_order, priority, exposed_at FROM trace_contacts('{device}', TIMESTAMP '{now}') \
             ORDER BY contact"
        );
        assert_eq!(text(&sealed, &sql).await, text(&plain, &sql).await, "{sql}");
    }
    let today = proxima_engine::store::today_utc();
    assert!(sealed.index().is_covered(today).await.unwrap());

    let secrets = secrets(&plain).await;
    let plain_root = plain.store().local_root().unwrap().to_path_buf();
    // The check finds what it looks for: in the plaintext store, compressed pages hide most
    // values, but statistics and footers show some of each kind.
    let plain_bytes: Vec<u8> = files_under(&plain_root)
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    for (kind, len) in [("UUIDs", 36), ("UUIDs as bytes", 16), ("MACs", 17), ("identifiers", 32)] {
        let seen = secrets
            .iter()
            .filter(|s| s.len() == len && contains(&plain_bytes, s))
            .count();
        assert!(
            seen > 0,
            "no {kind} in the plaintext store: the search cannot find anything"
        );
    }

    let files = files_under(&sealed_root);
    let parquet: Vec<_> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "parquet"))
        .collect();
    let tables: BTreeSet<String> = parquet
        .iter()
        .map(|f| {
            f.strip_prefix(&sealed_root)
                .unwrap()
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for table in ["devices", "observations", "observed_index", "exposure_keys"] {
        assert!(tables.contains(table), "{tables:?}");
    }
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        if file.extension().is_some_and(|e| e == "parquet") {
            assert_eq!(&bytes[..4], b"PARE", "{}", file.display());
            assert_eq!(&bytes[bytes.len() - 4..], b"PARE", "{}", file.display());
        }
        for secret in &secrets {
            assert!(
                !contains(&bytes, secret),
                "{} holds {}",
                file.display(),
                String::from_utf8_lossy(secret)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_wrong_and_moved_keys_fail_clearly_and_rotation_keeps_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let ids = identifiers();
    let mut masters = MasterKeys::generate(Utc::now());
    let first = masters.current();
    let store = Store::local(&root).unwrap().with_keys(Arc::new(masters.clone()));
    let factory = populate(&store, &ids).await;
    let count = "SELECT count(*) FROM observations";
    let expected = text(&factory, count).await;
    let session = |store: Store| {
        SessionFactory::new(
            store,
            SessionOptions {
                identifiers: Some(Arc::clone(&ids)),
                ..SessionOptions::default()
            },
        )
        .unwrap()
    };

    let keyless = session(Store::local(&root).unwrap());
    let err = query_error(&keyless, count).await;
    assert!(
        err.contains("no master key was given") && err.contains("PROXIMA_MASTER_KEY"),
        "{err}"
    );
    let stranger = session(
        Store::local(&root)
            .unwrap()
            .with_keys(Arc::new(MasterKeys::generate(Utc::now()))),
    );
    let err = query_error(&stranger, count).await;
    assert!(err.contains(&first) && err.contains("is not in"), "{err}");

    // A file copied into another day's folder fails to decrypt there, and says why.
    let today = proxima_engine::store::today_utc();
    let yesterday = today.pred_opt().unwrap();
    let folder = |day: chrono::NaiveDate| root.join(format!("observations/day={day}"));
    let source = files_under(&folder(yesterday))
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    let planted = folder(today).join("part-00000000-0000-7000-8000-000000000000.parquet");
    std::fs::copy(&source, &planted).unwrap();
    let err = query_error(
        &factory,
        &format!("SELECT count(*) FROM observations WHERE day = DATE '{today}'"),
    )
    .await;
    assert!(
        err.contains("lies where observations/") && err.contains("belongs"),
        "{err}"
    );
    std::fs::remove_file(&planted).unwrap();
    assert_eq!(text(&factory, count).await, expected);

    // Rows written in the clear beside the encrypted files (by someone without the keys) are
    // refused, by SQL and by the index lookups, never read as the store's.
    let some = rows(
        &factory,
        &format!(
            "SELECT observer, observed, observed_at, duration_s, rssi, tx_power, location FROM observations \
             WHERE day = DATE '{today}' LIMIT 3"
        ),
    )
    .await;
    // Through Proxima without the key: refused, the store being an encrypted one.
    let writer = PartitionWriter::new(Store::local(&root).unwrap(), "intruder");
    let mut transaction = writer.begin();
    let err = transaction
        .write_file(Table::Observations, Some(today), &some)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is encrypted") && err.contains("master key"), "{err}");
    drop(transaction);
    // Written straight into the folder: refused when read.
    let mut planted = Vec::new();
    let mut parquet = parquet::arrow::ArrowWriter::try_new(&mut planted, some[0].schema(), None).unwrap();
    for batch in &some {
        parquet.write(batch).unwrap();
    }
    parquet.close().unwrap();
    std::fs::write(
        folder(today).join("part-00000000-0000-7000-8000-000000000001.parquet"),
        planted,
    )
    .unwrap();
    let err = query_error(&factory, count).await;
    assert!(err.contains("is not encrypted"), "{err}");
    let device = common::column(&factory, "SELECT device_uuid FROM devices ORDER BY device_uuid LIMIT 1")
        .await
        .remove(0);
    let trace = format!(
        "SELECT count(*) FROM trace_contacts('{device}', TIMESTAMP '{}')",
        Utc::now().to_rfc3339()
    );
    let err = query_error(&factory, &trace).await;
    assert!(err.contains("is not encrypted"), "{err}");
    for file in files_under(&root) {
        if file.extension().is_some_and(|e| e == "parquet") && std::fs::read(&file).unwrap().starts_with(b"PAR1") {
            std::fs::remove_file(file).unwrap();
        }
    }
    assert_eq!(text(&factory, count).await, expected);

    // Rotation: a new current key, every KEK rewrapped, the old key removed: all readable.
    let second = masters.rotate(Utc::now());
    let rotated = Store::local(&root).unwrap().with_keys(Arc::new(masters.clone()));
    let rewrapped = proxima_storage::keys::rewrap_all(&rotated, rotated.keyring().unwrap())
        .await
        .unwrap();
    assert!(rewrapped >= 10, "a KEK per table and day: {rewrapped}");
    masters.remove_retired(&first).unwrap();
    assert_eq!(masters.ids(), vec![second]);
    let after = session(Store::local(&root).unwrap().with_keys(Arc::new(masters)));
    for sql in CHECKS {
        assert_eq!(text(&after, sql).await, text(&factory, sql).await, "{sql}");
    }
}

fn proxima(root: &Path, key: Option<&Path>, args: &[&str]) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.args(["--data", root.to_str().unwrap()]).args(args);
    command
        .env_remove("PROXIMA_MASTER_KEY")
        .env_remove("PROXIMA_MASTER_KEY_FILE");
    if let Some(key) = key {
        command.args(["--master-key-file", key.to_str().unwrap()]);
    }
    command.output().unwrap()
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn key_commands_and_a_server_that_will_not_serve_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let key = dir.path().join("master.key");
    let init = stdout(&proxima(&root, Some(&key), &["key", "init"]));
    assert!(init.contains("master key mk-"), "{init}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let again = proxima(&root, Some(&key), &["key", "init"]);
    assert!(!again.status.success());
    let inside = proxima(&root, Some(&root.join("master.key")), &["key", "init"]);
    assert!(String::from_utf8_lossy(&inside.stderr).contains("must not be kept inside the store"));

    stdout(&proxima(
        &root,
        Some(&key),
        &["generate", "--devices", "40", "--days", "2"],
    ));
    let count = ["sql", "-c", "SELECT count(*) AS n FROM observations"];
    let counted = stdout(&proxima(&root, Some(&key), &count));
    assert!(
        counted.lines().any(|l| l
            .trim_matches(|c| c == '|' || c == ' ')
            .parse::<u64>()
            .is_ok_and(|n| n > 0)),
        "{counted}"
    );
    let keyless = proxima(&root, None, &count);
    assert!(!keyless.status.success());
    assert!(
        String::from_utf8_lossy(&keyless.stderr).contains("no master key was given"),
        "{}",
        String::from_utf8_lossy(&keyless.stderr)
    );

    let status = stdout(&proxima(&root, Some(&key), &["key", "status"]));
    let first = status.split_whitespace().next().unwrap().to_string();
    assert!(status.contains("current") && status.contains("wraps"), "{status}");
    let refused = proxima(&root, Some(&key), &["key", "retire", &first]);
    assert!(!refused.status.success());
    let rotated = stdout(&proxima(&root, Some(&key), &["key", "rotate"]));
    assert!(rotated.contains(&format!("({first} retired)")), "{rotated}");
    let status = stdout(&proxima(&root, Some(&key), &["key", "status"]));
    assert!(status.contains("wraps nothing: can be retired"), "{status}");
    stdout(&proxima(&root, Some(&key), &["key", "retire", &first]));
    assert_eq!(stdout(&proxima(&root, Some(&key), &count)), counted);

    // The route for DuckDB: an export in the clear, to a place the analyst controls.
    let export = dir.path().join("daily.parquet");
    let copy = format!(
        "COPY (SELECT day, count(*) AS n FROM observations GROUP BY day) TO '{}'",
        export.display()
    );
    stdout(&proxima(&root, Some(&key), &["sql", "-c", &copy]));
    let bytes = std::fs::read(&export).unwrap();
    assert_eq!(&bytes[..4], b"PAR1");
    // SQL does not write into the store: that would put a file in the clear among its files.
    let into =
        "COPY (SELECT * FROM observations LIMIT 1) TO 'proxima://store/observations/day=2026-01-01/part-x.parquet'";
    let refused = proxima(&root, Some(&key), &["sql", "-c", into]);
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("does not write into an encrypted store"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A server with real users, beyond loopback, but no master key: refused.
    let users = dir.path().join("users.toml");
    let mut add = Command::new(BIN)
        .args([
            "user",
            "add",
            "alice",
            "--role",
            "tracer",
            "--users",
            users.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        add.stdin
            .take()
            .unwrap()
            .write_all(b"a long enough password\n")
            .unwrap();
    }
    assert!(add.wait().unwrap().success());
    let exposed = proxima(
        &root,
        None,
        &[
            "serve",
            "--flight",
            "0.0.0.0:0",
            "--no-rest",
            "--users",
            users.to_str().unwrap(),
        ],
    );
    assert!(!exposed.status.success());
    assert!(
        String::from_utf8_lossy(&exposed.stderr).contains("without a master key"),
        "{}",
        String::from_utf8_lossy(&exposed.stderr)
    );

    // With a master key, beyond loopback, without TLS: refused, unless told it is meant.
    let plain = proxima(
        &root,
        Some(&key),
        &[
            "serve",
            "--flight",
            "0.0.0.0:0",
            "--no-rest",
            "--users",
            users.to_str().unwrap(),
        ],
    );
    assert!(!plain.status.success());
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(
        stderr.contains("refusing to serve beyond loopback in plain text") && stderr.contains("--tls-cert"),
        "{stderr}"
    );
    let audit_key = dir.path().join("audit.key");
    stdout(&proxima(
        &root,
        None,
        &["audit", "key", "--out", audit_key.to_str().unwrap()],
    ));
    let mut meant = Command::new(BIN)
        .args([
            "--data",
            root.to_str().unwrap(),
            "--master-key-file",
            key.to_str().unwrap(),
        ])
        .args([
            "serve",
            "--flight",
            "0.0.0.0:0",
            "--no-rest",
            "--insecure-plaintext",
            "--users",
        ])
        .arg(&users)
        .arg("--audit-key")
        .arg(&audit_key)
        .arg("--audit-dir")
        .arg(dir.path().join("audit"))
        .env_remove("PROXIMA_MASTER_KEY")
        .env_remove("PROXIMA_MASTER_KEY_FILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(meant.stdout.take().unwrap());
    common::wait_for_line(&mut out, "Flight SQL listening on grpc://");
    meant.kill().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut meant.stderr.take().unwrap(), &mut stderr).unwrap();
    meant.wait().unwrap();
    assert!(
        stderr.contains("warning: serving in plain text beyond loopback"),
        "{stderr}"
    );
}

/// The Python interpreter of the project's .venv, or of $PROXIMA_PYTHON, with pyarrow and
/// cryptography.
fn python() -> Option<PathBuf> {
    common::python_with(&["pyarrow.parquet.encryption", "cryptography"])
}

#[test]
fn pyarrow_reads_a_file_with_the_master_key() {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install pyarrow and cryptography into .venv (see .ci/run)"
        );
        eprintln!("skipped: no Python with pyarrow and cryptography (run .ci/run, or set PROXIMA_PYTHON)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let key = dir.path().join("master.key");
    stdout(&proxima(&root, Some(&key), &["key", "init"]));
    stdout(&proxima(
        &root,
        Some(&key),
        &["generate", "--devices", "30", "--days", "1"],
    ));
    let devices = stdout(&proxima(
        &root,
        Some(&key),
        &["sql", "-c", "SELECT device_uuid FROM devices ORDER BY device_uuid"],
    ));
    let expected: Vec<&str> = devices
        .lines()
        .map(|l| l.trim_matches(|c| c == '|' || c == ' '))
        .filter(|l| uuid::Uuid::parse_str(l).is_ok())
        .collect();
    assert_eq!(expected.len(), 30, "{devices}");
    let file = files_under(&root.join("devices"))
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/encryption/pyarrow_read.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(&file)
        .env("PROXIMA_STORE", &root)
        .env("PROXIMA_MASTER_KEY_FILE", &key)
        .output()
        .unwrap();
    let printed = stdout(&output);
    let mut read: Vec<&str> = printed.lines().collect();
    read.sort_unstable();
    assert_eq!(read, expected);

    // With another master key (same id as the right one, so the lookup succeeds and the
    // unwrapping is what fails), pyarrow gets nothing.
    let right: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&key).unwrap()).unwrap();
    let mut wrong = right.clone();
    wrong["keys"][0]["key"] = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]).into();
    let wrong_key = dir.path().join("wrong.key");
    std::fs::write(&wrong_key, wrong.to_string()).unwrap();
    let output = Command::new(&python)
        .arg(&script)
        .arg(&file)
        .env("PROXIMA_STORE", &root)
        .env("PROXIMA_MASTER_KEY_FILE", &wrong_key)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("InvalidTag"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains(expected[0]));
}

/// Starts `proxima serve` on loopback with the master key, writing what it acknowledges to
/// its WAL and flushing only at start; returns it and its REST address.
fn serve(root: &Path, key: &Path) -> (common::Server, String) {
    let mut server = common::Server::start(&[
        "--data",
        root.to_str().unwrap(),
        "--master-key-file",
        key.to_str().unwrap(),
        "serve",
        "--http",
        "127.0.0.1:0",
        "--flight",
        "127.0.0.1:0",
        "--registration-work",
        "10",
        "--flush-interval",
        "1h",
    ]);
    server.drain();
    let api = server.api.clone();
    (server, api)
}

fn phone(state: &Path, api: &str, args: &[&str]) -> String {
    let output = Command::new(BIN)
        .args(["phone", "--state", state.to_str().unwrap(), "--api", api])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    stdout(&output).trim().to_string()
}

#[test]
fn what_phones_send_is_sealed_in_the_wal_and_the_store_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let key = dir.path().join("master.key");
    stdout(&proxima(&root, Some(&key), &["key", "init"]));
    let (server, api) = serve(&root, &key);
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    let a_uuid = phone(&a, &api, &["register"]);
    let b_uuid = phone(&b, &api, &["register"]);
    phone(&b, &api, &["ids", "--count", "4"]);
    let heard = phone(&b, &api, &["current-id"]);
    assert_eq!(heard.len(), 32);
    phone(&a, &api, &["upload", "--heard", &heard]);
    drop(server); // kill -9: the sighting is acknowledged, in the WAL only

    let wal: Vec<_> = files_under(&root.join("_wal"))
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "wal"))
        .collect();
    assert!(!wal.is_empty());
    let secrets = [a_uuid.as_str(), b_uuid.as_str(), heard.as_str()];
    let check = |stage: &str| {
        for file in files_under(&root) {
            // The audit log is not encrypted (verifiers read it); it is checked apart.
            if file.starts_with(root.join("_audit")) {
                continue;
            }
            let bytes = std::fs::read(&file).unwrap();
            for secret in secrets {
                assert!(
                    !contains(&bytes, secret.as_bytes()),
                    "{stage}: {} holds {secret}",
                    file.display()
                );
            }
            if file.extension().is_some_and(|e| e == "wal") && !bytes.is_empty() {
                assert!(bytes.starts_with(b"PXWE"), "{}", file.display());
            }
        }
    };
    check("after kill -9");
    // The identifier keys the server made beside the store are sealed with the master key.
    let id_key = std::fs::read_to_string(dir.path().join("store.id-key")).unwrap();
    assert!(
        id_key.contains("proxima-sealed/1") && !id_key.contains("\"keys\""),
        "{id_key}"
    );

    // A rotation now: the old master key still seals the WAL segment, so it cannot be
    // retired yet (that would lose the acknowledged sighting).
    let status = stdout(&proxima(&root, Some(&key), &["key", "status"]));
    let old = status.split_whitespace().next().unwrap().to_string();
    let rotated = stdout(&proxima(&root, Some(&key), &["key", "rotate"]));
    assert!(rotated.contains(&format!("({old} retired)")), "{rotated}");
    let refused = proxima(&root, Some(&key), &["key", "retire", &old]);
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("WAL segments"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Restarted with the key file, the server replays the sealed WAL into the store; then
    // nothing needs the old key, which goes; the server still starts and reads everything.
    let (server, _) = serve(&root, &key);
    drop(server);
    let status = stdout(&proxima(&root, Some(&key), &["key", "status"]));
    assert!(status.contains("can be retired"), "{status}");
    stdout(&proxima(&root, Some(&key), &["key", "retire", &old]));
    let (server, _) = serve(&root, &key);
    drop(server);
    let sql = format!("SELECT count(*) AS n FROM observations WHERE observer = '{a_uuid}' AND observed = '{heard}'");
    let counted = stdout(&proxima(&root, Some(&key), &["sql", "-c", &sql]));
    assert!(
        counted.lines().any(|l| l.trim_matches(|c| c == '|' || c == ' ') == "1"),
        "{counted}"
    );
    check("after replay");
}

/// `--tls-client-ca`: every Flight SQL client must present a certificate the CA signed; on
/// the REST port phones need none, while staff routes refuse a client without one before
/// any password is checked. A certificate from another CA does not get through either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_asks_staff_for_a_certificate_and_phones_for_none() {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let server_certificate = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let server_pem = server_certificate.cert.pem();
    let cert = write("server.pem", &server_pem);
    let key = write("server.key", &server_certificate.signing_key.serialize_pem());
    // The staff CA, a certificate it signed, and one from a CA the server does not know.
    let issue = |ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["staff".to_string()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        (params.signed_by(&key, ca).unwrap().pem(), key.serialize_pem())
    };
    let new_ca = || {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
    };
    let (staff_ca, other_ca) = (new_ca(), new_ca());
    let ca_file = write("staff-ca.pem", &staff_ca.pem());
    let staff = issue(&staff_ca);
    let stranger = issue(&other_ca);

    let store = dir.path().join("store");
    let mut server = common::Server::start(&[
        "--data",
        store.to_str().unwrap(),
        "serve",
        "--http",
        "127.0.0.1:0",
        "--flight",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-client-ca",
        ca_file.to_str().unwrap(),
    ]);
    let flight_line = server.line("Flight SQL listening on ");
    let flight_port = flight_line
        .split_whitespace()
        .nth(4)
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let password = server.password("tracer");
    server.drain();
    let api = server.api.replace("127.0.0.1", "localhost");
    assert!(api.starts_with("https://"), "{api}");

    // Flight SQL: with the staff certificate a login works; without one, or with a
    // stranger's, nothing does.
    let flight = |identity: Option<&(String, String)>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&server_pem))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let endpoint = Endpoint::from_shared(format!("https://localhost:{flight_port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap();
        let password = password.clone();
        async move {
            let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
            let mut client = FlightSqlServiceClient::new(channel);
            client.handshake("tracer", &password).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        }
    };
    flight(Some(&staff)).await.unwrap();
    assert!(flight(None).await.is_err(), "no certificate");
    assert!(flight(Some(&stranger)).await.is_err(), "another CA's certificate");

    // REST: phones need no certificate; staff routes do.
    let rest = |identity: Option<&(String, String)>| {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(server_pem.as_bytes()).unwrap());
        if let Some((cert, key)) = identity {
            builder = builder.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        builder.build().unwrap()
    };
    let phone = rest(None);
    let challenge = phone.get(format!("{api}/v1/devices/challenge")).send().await.unwrap();
    assert_eq!(challenge.status(), 200);
    let refused = phone
        .post(format!("{api}/v1/auth/token"))
        .basic_auth("tracer", Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("--tls-client-ca"));
    let admitted = rest(Some(&staff))
        .post(format!("{api}/v1/auth/token"))
        .basic_auth("tracer", Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(admitted.status(), 200);
    let stranger_call = rest(Some(&stranger))
        .post(format!("{api}/v1/auth/token"))
        .basic_auth("tracer", Some(&password))
        .send()
        .await;
    assert!(stranger_call.is_err(), "the handshake refuses another CA's certificate");
}
