//! Proxima on a Ballista cluster, beyond the golden suite (which `sqllogictests` also runs
//! on one): an encrypted store read by a scheduler and two executors (separate processes
//! on loopback) gives the same rows as locally, in at least two stages whose tasks ran on
//! both executors; an executor without the master key fails the query, naming the key,
//! rather than return anything.

use std::path::Path;
use std::process::Command;

mod common;

/// `proxima --data <store> --master-key-file <key> <args>`: success, stdout, stderr.
fn proxima(store: &Path, key: Option<&Path>, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_proxima"));
    command.arg("--data").arg(store);
    if let Some(key) = key {
        command.arg("--master-key-file").arg(key);
    }
    let output = command
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("PROXIMA_MASTER_KEY")
        .env_remove("PROXIMA_MASTER_KEY_FILE")
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// An encrypted store of a small synthetic population over two days, and its key file.
fn encrypted_store(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (store, key) = (dir.join("store"), dir.join("master.key"));
    let (ok, _, err) = proxima(&store, Some(&key), &["key", "init"]);
    assert!(ok, "{err}");
    let (ok, _, err) = proxima(
        &store,
        Some(&key),
        &["generate", "--devices", "400", "--days", "2", "--seed", "3"],
    );
    assert!(ok, "{err}");
    (store, key)
}

const QUERY: &str = "SELECT observer, count(*) AS sightings, count(DISTINCT observed) AS heard \
                     FROM observations GROUP BY observer ORDER BY sightings DESC, observer LIMIT 50";

#[test]
fn an_encrypted_store_runs_on_two_executors_in_stages_with_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = encrypted_store(dir.path());
    let nodes = dir.path().join("nodes");
    std::fs::create_dir_all(&nodes).unwrap();
    let key_arg = ["--master-key-file".to_string(), key.display().to_string()];
    // One slot each, so that a stage of two or more tasks spreads over both.
    let cluster = common::Cluster::start(&store, &key_arg, 1, &nodes).unwrap();

    let (ok, local, err) = proxima(&store, Some(&key), &["sql", "--format", "csv", "-c", QUERY]);
    assert!(ok, "{err}");
    assert_eq!(local.lines().count(), 51, "{local}");
    let (ok, remote, err) = proxima(
        &store,
        Some(&key),
        &["sql", "--ballista", &cluster.url, "--format", "csv", "-c", QUERY],
    );
    assert!(ok, "{err}");
    assert_eq!(remote, local, "the same rows, in the same order");

    // One job, of two stages or more, whose tasks both executors ran (as their logs say).
    let tasks = cluster.finished_tasks();
    let jobs: std::collections::BTreeSet<&String> = tasks.iter().flatten().map(|(job, ..)| job).collect();
    assert_eq!(jobs.len(), 1, "{tasks:?}");
    let stages: std::collections::BTreeSet<&String> = tasks.iter().flatten().map(|(_, stage, _)| stage).collect();
    assert!(stages.len() >= 2, "stages {stages:?}");
    assert!(tasks.iter().all(|ran| !ran.is_empty()), "{tasks:?}");
}

#[test]
fn an_executor_without_the_master_key_fails_the_query_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = encrypted_store(dir.path());
    let nodes = dir.path().join("nodes");
    std::fs::create_dir_all(&nodes).unwrap();
    // The scheduler gets the key through its environment; the executors have none.
    let cluster = common::Cluster::start_with(
        &store,
        &[],
        1,
        &nodes,
        &[],
        &[("PROXIMA_MASTER_KEY_FILE", key.display().to_string())],
    )
    .unwrap();
    let (ok, out, err) = proxima(
        &store,
        Some(&key),
        &["sql", "--ballista", &cluster.url, "--format", "csv", "-c", QUERY],
    );
    assert!(!ok, "no rows without the key: {out}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("the file is encrypted and no master key was given"),
        "{err}"
    );
}

#[test]
fn nodes_refuse_a_client_that_resolves_identifiers_with_other_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = encrypted_store(dir.path());
    let id_key = dir.path().join("id.key");
    let (ok, _, err) = proxima(
        &store,
        Some(&key),
        &["id-key", "new", "--out", id_key.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    let nodes = dir.path().join("nodes");
    std::fs::create_dir_all(&nodes).unwrap();
    // The scheduler resolves identifiers with the key; the executors, started without it,
    // would find fewer encounters.
    let key_arg = ["--master-key-file".to_string(), key.display().to_string()];
    let cluster = common::Cluster::start_with(
        &store,
        &key_arg,
        1,
        &nodes,
        &[],
        &[("PROXIMA_ID_KEY", id_key.display().to_string())],
    )
    .unwrap();
    let query = "SELECT count(*) AS n FROM encounters";
    let (ok, out, err) = proxima(
        &store,
        Some(&key),
        &["sql", "--ballista", &cluster.url, "--format", "csv", "-c", query],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("the client runs Proxima") && err.contains("with no identifier keys, but this scheduler runs"),
        "{err}"
    );
    let (ok, out, err) = proxima(
        &store,
        Some(&key),
        &[
            "sql",
            "--ballista",
            &cluster.url,
            "--id-key",
            id_key.to_str().unwrap(),
            "--format",
            "csv",
            "-c",
            query,
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("but this executor runs Proxima") && err.contains("with no identifier keys"),
        "{err}"
    );
}

#[test]
fn a_job_no_executor_takes_stops_at_the_timeout_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = encrypted_store(dir.path());
    // A scheduler alone: nothing will ever run the job.
    let mut scheduler = Command::new(env!("CARGO_BIN_EXE_proxima"))
        .arg("--data")
        .arg(&store)
        .arg("--master-key-file")
        .arg(&key)
        .args(["scheduler", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(scheduler.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("df://"))
        .unwrap()
        .to_string();
    let (ok, out, err) = proxima(
        &store,
        Some(&key),
        &[
            "sql",
            "--ballista",
            &url,
            "--timeout",
            "3s",
            "--format",
            "csv",
            "-c",
            QUERY,
        ],
    );
    let _ = scheduler.kill();
    let _ = scheduler.wait();
    assert!(!ok, "{out}");
    assert!(
        err.contains("stopped after 3s (--timeout)") && err.contains("are executors running"),
        "{err}"
    );
}
