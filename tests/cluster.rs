//! Proxima on a Ballista cluster, beyond the golden suite (which `sqllogictests` also runs
//! on one): an encrypted store read by a scheduler and two executors (separate processes
//! on loopback) gives the same rows as locally, in at least two stages whose tasks ran on
//! both executors; an executor without the master key fails the query, naming the key,
//! rather than return anything; a plain Ballista executor (without Proxima's functions,
//! codecs or decryption) fails every query loudly.

use std::path::Path;
use std::process::Command;

use crate::common;

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
    let (mut scheduler, url) = scheduler_alone(&store, &key);
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

/// `proxima sql --connect <flight> --user <user>` with `password`: success, stdout, stderr.
fn over_flight(flight: &str, user: &str, password: &str, sql: &str) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_proxima"))
        .args(["sql", "--connect", flight, "--user", user, "--format", "csv", "-c", sql])
        .env("PROXIMA_PASSWORD", password)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// A `proxima serve` on `store`, its Flight SQL address and the analyst's and auditor's
/// passwords; with `--ballista` if `cluster` is given.
fn serve(store: &Path, key: &Path, cluster: Option<&str>) -> (common::Server, String, String, String) {
    let mut args = vec![
        "--data",
        store.to_str().unwrap(),
        "--master-key-file",
        key.to_str().unwrap(),
        "serve",
        "--http",
        "127.0.0.1:0",
        "--flight",
        "127.0.0.1:0",
    ];
    if let Some(url) = cluster {
        args.extend(["--ballista", url]);
    }
    let audit = store.with_file_name(format!("audit-{}", cluster.is_some()));
    args.extend(["--audit-dir", audit.to_str().unwrap()]);
    let wal = store.with_file_name(format!("wal-{}", cluster.is_some()));
    args.extend(["--wal-dir", wal.to_str().unwrap()]);
    let mut server = common::Server::start(&args);
    let flight = server.line("Flight SQL listening on ")["Flight SQL listening on ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let analyst = server.password("analyst");
    let auditor = server.password("auditor");
    server.drain();
    (server, flight, analyst, auditor)
}

/// `proxima serve --ballista`: an analyst's aggregate over Flight SQL is computed on the
/// cluster (its executors run the tasks) and gives the rows a serve without a cluster
/// gives; an auditor's query of the audit log, a local folder, runs on the serving node.
#[test]
fn serve_runs_flight_sql_on_the_cluster_under_the_same_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = encrypted_store(dir.path());
    let nodes = dir.path().join("nodes");
    std::fs::create_dir_all(&nodes).unwrap();
    // The first serve makes the development identifier key beside the store, which every
    // node of the cluster must resolve identifiers with too (or they refuse the queries).
    let (_here, here, analyst_here, _) = serve(&store, &key, None);
    let id_key = store.with_file_name("store.id-key");
    assert!(id_key.exists(), "the development identifier key");
    let node_args = [
        "--master-key-file".to_string(),
        key.display().to_string(),
        "--id-key".to_string(),
        id_key.display().to_string(),
    ];
    let cluster = common::Cluster::start(&store, &node_args, 2, &nodes).unwrap();
    let (_there, there, analyst_there, auditor_there) = serve(&store, &key, Some(&cluster.url));

    let aggregate = "SELECT * FROM daily_contacts_by_location ORDER BY day, area";
    let (ok, local, err) = over_flight(&here, "analyst", &analyst_here, aggregate);
    assert!(ok, "{err}");
    assert!(local.lines().count() > 5, "{local}");
    assert!(
        cluster.finished_tasks().iter().all(Vec::is_empty),
        "nothing ran there yet"
    );
    let (ok, remote, err) = over_flight(&there, "analyst", &analyst_there, aggregate);
    assert!(ok, "{err}");
    assert_eq!(remote, local);
    assert!(
        cluster.finished_tasks().iter().any(|ran| !ran.is_empty()),
        "the aggregate ran on the executors"
    );
    // The analyst still reads only aggregates.
    let (ok, _, err) = over_flight(&there, "analyst", &analyst_there, "SELECT count(*) FROM observations");
    assert!(!ok && err.contains("observations"), "{err}");

    let (ok, out, err) = over_flight(&there, "auditor", &auditor_there, "SELECT count(*) AS n FROM audit");
    assert!(ok, "{err}");
    assert_ne!(out, "n\n0", "the analyst's queries were audited: {out}");
}

/// A scheduler alone, as a process; its `df://` address.
fn scheduler_alone(store: &Path, key: &Path) -> (std::process::Child, String) {
    let mut scheduler = Command::new(env!("CARGO_BIN_EXE_proxima"))
        .arg("--data")
        .arg(store)
        .arg("--master-key-file")
        .arg(key)
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
    (scheduler, url)
}

#[test]
fn a_plain_ballista_executor_fails_proximas_queries_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = encrypted_store(dir.path());
    let (mut scheduler, url) = scheduler_alone(&store, &key);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();

    // Ballista's own executor, as its crate builds it: no Proxima registry, codec,
    // settings or decryption.
    let work = dir.path().join("plain-executor");
    std::fs::create_dir_all(&work).unwrap();
    let config = ballista_executor::executor_process::ExecutorProcessConfig {
        bind_host: "127.0.0.1".into(),
        external_host: Some("127.0.0.1".into()),
        port: common::free_port().unwrap(),
        grpc_port: common::free_port().unwrap(),
        scheduler_host: "127.0.0.1".into(),
        scheduler_port: port,
        vcores: 2,
        task_scheduling_policy: ballista_core::config::TaskSchedulingPolicy::PullStaged,
        work_dir: Some(work.display().to_string()),
        executor_heartbeat_interval_seconds: 1,
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.spawn(ballista_executor::executor_process::start_executor_process(
        std::sync::Arc::new(config),
    ));

    // A count the client answers from the files' statistics runs nothing that needs
    // Proxima: the plain executor returns the same row. An aggregate over the (encrypted)
    // rows, the `encounters` view (Proxima's functions) and a trace (Proxima's plan) fail,
    // naming why, and print no row.
    let local = |query: &str| {
        let (ok, out, err) = proxima(&store, Some(&key), &["sql", "--format", "csv", "-c", query]);
        assert!(ok, "{query} runs locally: {err}");
        out
    };
    let on_plain = |query: &str| {
        proxima(
            &store,
            Some(&key),
            &[
                "sql",
                "--ballista",
                &url,
                "--timeout",
                "60s",
                "--format",
                "csv",
                "-c",
                query,
            ],
        )
    };
    let counted = "SELECT count(*) FROM observations";
    let (ok, out, err) = on_plain(counted);
    assert!(ok, "{err}");
    assert_eq!(out, local(counted));
    let device = local("SELECT min(device_uuid) FROM devices");
    let device = device.lines().nth(1).unwrap();
    let trace = format!("SELECT count(*) FROM trace_contacts('{device}', TIMESTAMP '2030-01-01T00:00:00Z', 2)");
    // (Which task fails first, and why, varies: the store's object store is missing, a
    // function has no codec, Proxima's plan nodes cannot be decoded.)
    for query in [QUERY, "SELECT count(*) FROM encounters", trace.as_str()] {
        local(query);
        let (ok, out, err) = on_plain(query);
        assert!(!ok, "{query} on a plain executor gave rows: {out}");
        assert!(out.is_empty(), "{query}: {out}");
        assert!(
            err.contains("Task failed due to runtime execution error"),
            "{query}: {err}"
        );
    }
    let _ = scheduler.kill();
    let _ = scheduler.wait();
    runtime.shutdown_background();
}
