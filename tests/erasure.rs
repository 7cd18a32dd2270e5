//! Erasure's copy-on-write rewrite (`proxima_storage::erasure`), on a real encrypted store:
//! one device's rows leave every table and the encounter index, while every other device's
//! rows, encounters and direct contacts are exactly as before.

use crate::common;
use common::{eventually, phone_ok as phone};

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::util::pretty::pretty_format_batches;
use chrono::Utc;
use proxima_engine::keys::MasterKeys;
use proxima_engine::{SessionFactory, SessionOptions, Store, Table};
use proxima_ingest::synthetic::{PopulationSpec, generate};
use proxima_storage::PartitionWriter;
use proxima_storage::erasure::{Erased, erase_everywhere};

async fn text(factory: &SessionFactory, sql: &str) -> String {
    let ctx = factory.session().await.unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

/// The single value of a one-row, one-column answer.
async fn value(factory: &SessionFactory, sql: &str) -> String {
    let mut values = common::column(factory, sql).await;
    assert_eq!(values.len(), 1, "{sql}: {values:?}");
    values.remove(0)
}

/// A store at `<dir>/store` with a new master key saved at `<dir>/store.master-key`:
/// (root, key file, keys, store opened with them).
fn encrypted_store(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, MasterKeys, Store) {
    let root = dir.join("store");
    let key_file = dir.join("store.master-key");
    let master = MasterKeys::generate(Utc::now());
    master.save(&key_file).unwrap();
    let store = Store::local(&root).unwrap().with_keys(Arc::new(master.clone()));
    (root, key_file, master, store)
}

/// The device with the most encounters, and its MAC.
async fn most_met(factory: &SessionFactory) -> (String, String) {
    let x = value(
        factory,
        "SELECT a FROM encounters GROUP BY a ORDER BY count(*) DESC, a LIMIT 1",
    )
    .await;
    let mac = value(factory, &format!("SELECT mac FROM devices WHERE device_uuid = '{x}'")).await;
    (x, mac)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_device_leaves_every_table_and_the_index_and_nothing_else_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path())
        .unwrap()
        .with_keys(Arc::new(MasterKeys::generate(Utc::now())));
    let writer = PartitionWriter::new(store.clone(), "test");
    let today = proxima_engine::store::today_utc();
    let spec = PopulationSpec {
        broadcast: Default::default(),
        devices: 200,
        days: 3,
        contacts_per_day: 8,
        seed: 3,
        start: today - chrono::Days::new(2),
    };
    generate(&writer, &spec, |_| {}).await.unwrap();
    let factory = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();

    // The device with the most encounters, and one of its contacts.
    let (x, mac) = most_met(&factory).await;
    let y = value(&factory, &format!("SELECT min(b) FROM encounters WHERE a = '{x}'")).await;
    let count = |sql: &str| {
        let factory = factory.clone();
        let sql = sql.to_string();
        async move { value(&factory, &sql).await.parse::<u64>().unwrap() }
    };
    let observations = count("SELECT count(*) FROM observations").await;
    let of_x = count(&format!(
        "SELECT count(*) FROM observations WHERE observer = '{x}' OR observed = '{mac}'"
    ))
    .await;
    assert!(of_x > 0);
    let others =
        format!("SELECT a, b, at, duration_s FROM encounters WHERE a <> '{x}' AND b <> '{x}' ORDER BY a, b, at");
    let others_before = text(&factory, &others).await;
    let now = Utc::now().to_rfc3339();
    let contacts = format!(
        "SELECT contact FROM trace_contacts('{y}', TIMESTAMP '{now}', 1) WHERE contact <> '{x}' ORDER BY contact"
    );
    let contacts_before = text(&factory, &contacts).await;
    let devices = count("SELECT count(*) FROM devices").await;
    assert!(contacts_before.lines().count() > 5, "{contacts_before}");
    assert!(others_before.lines().count() > 100, "{others_before}");

    let erased = Erased {
        device: x.clone(),
        heard_as: BTreeSet::from([mac.clone()]),
        pseudonym: proxima_storage::erasure::pseudonym(&[7; 32], &x),
    };
    let done = erase_everywhere(&factory, &writer, std::slice::from_ref(&erased), &Table::ALL, None)
        .await
        .unwrap()
        .remove(0);
    let observations_done = done.iter().find(|(t, _)| *t == Table::Observations).unwrap().1;
    let (rows, rewritten) = (observations_done.rows, observations_done.rewritten);
    assert_eq!(rows, of_x);
    assert!(
        rewritten >= 3,
        "every day's observations held rows of the device: {rewritten}"
    );

    assert_eq!(count("SELECT count(*) FROM observations").await, observations - of_x);
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM observations WHERE observer = '{x}' OR observed = '{mac}'"
        ))
        .await,
        0
    );
    assert_eq!(
        count(&format!("SELECT count(*) FROM devices WHERE device_uuid = '{x}'")).await,
        0
    );
    assert_eq!(count("SELECT count(*) FROM devices").await, devices - 1);
    assert_eq!(text(&factory, &others).await, others_before);
    assert_eq!(
        count(&format!("SELECT count(*) FROM encounters WHERE a = '{x}' OR b = '{x}'")).await,
        0
    );
    // The index still covers every day (observations and companions rewritten alike), and
    // the contact's trace lost the erased device only.
    for day in store.list_days(Table::Observations).await.unwrap() {
        assert!(factory.index().is_covered(day.day).await.unwrap(), "{day:?}");
    }
    let after = text(
        &factory,
        &format!("SELECT contact FROM trace_contacts('{y}', TIMESTAMP '{now}', 1) ORDER BY contact"),
    )
    .await;
    assert_eq!(after, contacts_before);
    assert!(!after.contains(&x));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_heard_by_rotating_identifiers_and_rpis_are_erased_too() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path()).unwrap();
    let writer = PartitionWriter::new(store.clone(), "test");
    let ids = Arc::new(proxima_engine::ephemeral::Identifiers::new(
        proxima_engine::ephemeral::IdKeys::generate(Utc::now()),
        std::time::Duration::from_secs(15 * 60),
        std::time::Duration::from_secs(120),
    ));
    let today = proxima_engine::store::today_utc();
    let spec = PopulationSpec {
        broadcast: proxima_ingest::synthetic::Broadcast::Mixed(Arc::clone(&ids)),
        devices: 150,
        days: 2,
        contacts_per_day: 8,
        seed: 9,
        start: today - chrono::Days::new(1),
    };
    generate(&writer, &spec, |_| {}).await.unwrap();
    let options = SessionOptions {
        identifiers: Some(ids),
        ..SessionOptions::default()
    };
    let factory = SessionFactory::new(store.clone(), options).unwrap();
    // One device of each kind, the most met of its kind (by the encounters view, which
    // resolves all three): heard by its MAC, by the server's identifiers, by GAEN RPIs.
    let mut victims = Vec::new();
    for kind in [
        "d.mac IS NOT NULL",
        "d.mac IS NULL AND e.a NOT IN (SELECT device_uuid FROM exposure_keys)",
        "e.a IN (SELECT device_uuid FROM exposure_keys)",
    ] {
        let victim = value(
            &factory,
            &format!(
                "SELECT e.a FROM encounters e JOIN devices d ON e.a = d.device_uuid WHERE {kind} \
                 GROUP BY e.a ORDER BY count(*) DESC, e.a LIMIT 1"
            ),
        )
        .await;
        let heard = value(
            &factory,
            &format!("SELECT count(*) FROM encounters WHERE b = '{victim}' AND a_heard"),
        )
        .await;
        assert_ne!(heard, "0", "{kind}: others heard {victim}");
        victims.push(victim);
    }
    let from = (Utc::now() - chrono::Duration::days(3)).timestamp_micros();
    let to = Utc::now().timestamp_micros();
    let list = victims.iter().map(|v| format!("'{v}'")).collect::<Vec<_>>().join(", ");
    let others =
        format!("SELECT a, b, at FROM encounters WHERE a NOT IN ({list}) AND b NOT IN ({list}) ORDER BY a, b, at");
    let others_before = text(&factory, &others).await;
    // The three are erased together, in one pass over the store.
    let mut erased = Vec::new();
    for victim in &victims {
        let one = Erased::of(&factory, &[7; 32], victim, from, to).await.unwrap();
        assert!(!one.heard_as.is_empty(), "{victim}: a MAC, identifiers or RPIs");
        erased.push(one);
    }
    let done = erase_everywhere(&factory, &writer, &erased, &Table::ALL, None)
        .await
        .unwrap();
    for (victim, tables) in victims.iter().zip(&done) {
        assert!(
            tables.iter().any(|(t, d)| *t == Table::Observations && d.rows > 0),
            "{victim}: {tables:?}"
        );
    }
    let left = value(
        &factory,
        &format!("SELECT count(*) FROM encounters WHERE a IN ({list}) OR b IN ({list})"),
    )
    .await;
    assert_eq!(left, "0");
    assert_eq!(
        value(
            &factory,
            &format!("SELECT count(*) FROM observations WHERE observer IN ({list})")
        )
        .await,
        "0"
    );
    assert_eq!(text(&factory, &others).await, others_before);
}

/// Runs `proxima <args>` with the test's master key file: (success, stdout, stderr).
fn proxima(key: &std::path::Path, store: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"))
        .args([
            "--data",
            store.to_str().unwrap(),
            "--master-key-file",
            key.to_str().unwrap(),
        ])
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("PROXIMA_MASTER_KEY")
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// The whole path, through the real server: a phone that met others and was reported as a
/// case revokes itself; within one erasure round (`--erasure-interval 1s`) it is gone from
/// every table, the index and its contact's trace, its case stays as a count, every other
/// row is as before, `erasure status` lists the erasure by its keyed hash only, and
/// `erasure verify` passes, then fails on a row planted by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_phone_is_erased_within_one_round_and_verify_proves_it() {
    let dir = tempfile::tempdir().unwrap();
    let (root, key_file, master, store) = encrypted_store(dir.path());
    let today = proxima_engine::store::today_utc();
    let spec = PopulationSpec {
        broadcast: Default::default(),
        devices: 60,
        days: 2,
        contacts_per_day: 6,
        seed: 5,
        start: today - chrono::Days::new(1),
    };
    generate(&PartitionWriter::new(store.clone(), "test"), &spec, |_| {})
        .await
        .unwrap();
    let mut server = common::Server::start(&[
        "--data",
        root.to_str().unwrap(),
        "--master-key-file",
        key_file.to_str().unwrap(),
        "serve",
        "--http",
        "127.0.0.1:0",
        "--flight",
        "127.0.0.1:0",
        "--registration-work",
        "8",
        "--flush-interval",
        "1s",
        "--erasure-interval",
        "1s",
        "--sweep-grace",
        "1s",
        "--accept-mac",
    ]);
    let password = server.password("tracer");
    server.drain();
    let api = server.api.clone();

    // V, the phone that will revoke, hears two registered devices by MAC; W hears V's
    // rotating identifier and V hears W's.
    let macs = common::column(
        &SessionFactory::new(store.clone(), SessionOptions::default()).unwrap(),
        "SELECT mac FROM devices ORDER BY device_uuid LIMIT 2",
    )
    .await;
    let (v_state, w_state) = (dir.path().join("v.json"), dir.path().join("w.json"));
    let v = phone(&v_state, &api, &["register"]);
    let w = phone(&w_state, &api, &["register"]);
    phone(&v_state, &api, &["ids", "--count", "2"]);
    phone(&w_state, &api, &["ids", "--count", "2"]);
    let v_id = phone(&v_state, &api, &["current-id"]);
    let w_id = phone(&w_state, &api, &["current-id"]);
    phone(
        &v_state,
        &api,
        &["upload", "--heard", &macs[0], "--heard", &macs[1], "--heard", &w_id],
    );
    phone(&w_state, &api, &["upload", "--heard", &v_id]);
    // A tracer reports V: the two devices it heard and W get alerts.
    let opened = common::report_case(&api, &password, &v).await;
    assert_eq!(opened["alerts"]["high"], 3, "{opened}");

    // What every table holds before, read with the server's identifier key (the loopback
    // server made it beside the store, sealed with the master key).
    let ids = proxima_engine::ephemeral::IdKeys::load(&dir.path().join("store.id-key"), Some(&master)).unwrap();
    let factory = SessionFactory::new(
        store.clone(),
        SessionOptions {
            identifiers: Some(Arc::new(proxima_engine::ephemeral::Identifiers::new(
                ids,
                std::time::Duration::from_secs(15 * 60),
                std::time::Duration::from_secs(120),
            ))),
            ..SessionOptions::default()
        },
    )
    .unwrap();
    let naming_v = [
        format!("SELECT count(*) FROM observations WHERE observer = '{v}' OR observed = '{v_id}'"),
        format!("SELECT count(*) FROM devices WHERE device_uuid = '{v}'"),
        format!("SELECT count(*) FROM cases WHERE device_uuid = '{v}'"),
        format!("SELECT count(*) FROM encounters WHERE a = '{v}' OR b = '{v}'"),
    ];
    let count_naming_v = || async {
        let mut counts = Vec::new();
        for sql in &naming_v {
            counts.extend(common::column(&factory, sql).await);
        }
        counts
    };
    // The case and its alerts reach the store by the next flush (1s).
    let mut before = count_naming_v().await;
    for _ in 0..240 {
        if before[2] == "1" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        before = count_naming_v().await;
    }
    assert_eq!(before[0], "4", "V's three sightings and W's of V");
    assert!(before.iter().all(|n| n != "0"), "V's rows are there: {before:?}");
    let others = format!(
        "SELECT observer, observed, observed_at, duration_s FROM observations \
         WHERE observer <> '{v}' AND observed <> '{v_id}' ORDER BY 1, 2, 3"
    );
    let others_before = text(&factory, &others).await;
    assert!(others_before.lines().count() > 50, "{others_before}");
    let encounters = format!("SELECT a, b, at FROM encounters WHERE a <> '{v}' AND b <> '{v}' ORDER BY 1, 2, 3");
    let encounters_before = text(&factory, &encounters).await;
    let cases_before = common::column(&factory, "SELECT count(*) FROM cases").await;
    let now = Utc::now().to_rfc3339();
    let traced = format!("SELECT contact FROM trace_contacts('{w}', TIMESTAMP '{now}', 1) ORDER BY contact");
    assert!(text(&factory, &traced).await.contains(&v), "W's trace finds V before");

    let registry = proxima_storage::registry::SharedRegistry::open(&store).await.unwrap();
    assert!(
        registry.by_device(&v).await.unwrap().is_some(),
        "V is in the shared registry"
    );
    phone(&v_state, &api, &["revoke"]);
    eventually("the erasure", || {
        let (_, out, _) = proxima(&key_file, &root, &["erasure", "status"]);
        out.contains("0 revoked device(s) waiting for erasure, 1 erased")
    });
    let (ok, status, _) = proxima(&key_file, &root, &["erasure", "status"]);
    assert!(ok);
    assert!(
        !status.contains(&v),
        "the record names V by its keyed hash only:\n{status}"
    );
    // V's three sightings and W's sighting of V's identifier.
    assert!(status.contains("observations 4 rows"), "{status}");

    let after = count_naming_v().await;
    assert_eq!(after, ["0", "0", "0", "0"], "V is gone from every table and the view");
    assert_eq!(text(&factory, &others).await, others_before);
    assert_eq!(text(&factory, &encounters).await, encounters_before);
    assert_eq!(
        common::column(&factory, "SELECT count(*) FROM cases").await,
        cases_before,
        "the case stays, as a count"
    );
    assert!(
        !text(&factory, &traced).await.contains(&v),
        "W's trace no longer finds V"
    );
    assert_eq!(
        common::column(
            &factory,
            &format!("SELECT count(*) FROM revocations WHERE device_uuid = '{v}'")
        )
        .await,
        ["0"]
    );
    // The shared registry, which serving nodes look devices up in, forgot V (and only V).
    assert_eq!(registry.by_device(&v).await.unwrap(), None);
    assert!(registry.revocation_names().await.unwrap().is_empty());
    assert!(registry.by_device(&w).await.unwrap().is_some());
    for day in store.list_days(Table::Observations).await.unwrap() {
        assert!(factory.index().is_covered(day.day).await.unwrap(), "{day:?}");
    }
    // The replaced files go at the first tick after the grace (1s): then verify passes.
    eventually("a passing verify", || {
        proxima(&key_file, &root, &["erasure", "verify"]).0
    });
    let (_, verified, _) = proxima(&key_file, &root, &["erasure", "verify"]);
    assert!(verified.starts_with("ok: 1 erasure(s) checked"), "{verified}");
    drop(server);

    // A row planted by hand (an import naming V as observer) is found, and named.
    let planted = dir.path().join("planted.csv");
    std::fs::write(
        &planted,
        format!(
            "observer,observed,observed_at,duration_s,rssi,tx_power,location\n{v},{},{},60,-60,0,\n",
            macs[0],
            Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        ),
    )
    .unwrap();
    let (ok, _, err) = proxima(&key_file, &root, &["import", "observations", planted.to_str().unwrap()]);
    assert!(ok, "{err}");
    let (ok, out, err) = proxima(&key_file, &root, &["erasure", "verify"]);
    assert!(!ok, "verify must fail:\n{out}");
    assert!(
        out.contains("1 row(s) of observations whose observer names erased device"),
        "{out}"
    );
    assert!(err.contains("erasure does not hold"), "{err}");
}

/// Each day's row count of `table`, by day.
async fn rows_by_day(factory: &SessionFactory, table: &str, filter: &str) -> std::collections::BTreeMap<String, u64> {
    let ctx = factory.session().await.unwrap();
    let batches = ctx
        .sql(&format!(
            "SELECT CAST(day AS VARCHAR), count(*) FROM {table} WHERE {filter} GROUP BY day"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for batch in batches {
        use arrow::array::AsArray;
        let days = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        let days = days.as_string::<i32>();
        let n = batch.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..batch.num_rows() {
            counts.insert(days.value(i).to_string(), n.value(i) as u64);
        }
    }
    counts
}

/// `proxima maintain --once` killed with SIGKILL at ever later moments of an erasure: after
/// every kill, each day shows either all its rows or all but the erased device's (never
/// both a file and its rewrite, never neither), in the observations and in the index; the
/// round that finally completes leaves exactly the others' rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_erasure_leaves_the_old_or_the_new_file_never_both_never_neither() {
    let dir = tempfile::tempdir().unwrap();
    let (root, key_file, _, store) = encrypted_store(dir.path());
    let writer = PartitionWriter::new(store.clone(), "test");
    let today = proxima_engine::store::today_utc();
    let spec = PopulationSpec {
        broadcast: Default::default(),
        devices: 300,
        days: 6,
        contacts_per_day: 8,
        seed: 11,
        start: today - chrono::Days::new(5),
    };
    generate(&writer, &spec, |_| {}).await.unwrap();
    let factory = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();
    let (x, mac) = most_met(&factory).await;
    // X (imported: it has no owner's key) is revoked by an operator, audited.
    let run = |args: &[&str]| {
        let (ok, out, err) = proxima(&key_file, &root, args);
        (ok, format!("{out}\n{err}"))
    };
    let (ok, out) = run(&["erasure", "revoke", &x]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["erasure", "revoke", &x]);
    assert!(!ok && out.contains("revoked already"), "{out}");
    let (ok, out) = run(&["erasure", "revoke", "00000000-0000-4000-8000-000000000000"]);
    assert!(!ok && out.contains("no registered device"), "{out}");
    let audit = common::audit_records(&root.join("_audit"));
    let revocations: Vec<_> = audit.iter().filter(|r| r["action"] == "cli:erasure-revoke").collect();
    assert_eq!(revocations.len(), 4, "intent, outcome and two refusals: {audit:?}");
    assert!(
        revocations
            .iter()
            .all(|r| r["purpose"].as_str().is_some_and(|p| p.starts_with("erasure:"))),
        "{revocations:?}"
    );
    let text = serde_json::to_string(&audit).unwrap();
    assert!(!text.contains(&x), "the audit log names X by its keyed hash only");

    let everything = "true".to_string();
    let of_x = format!("observer = '{x}' OR observed = '{mac}'");
    let index_of_x = format!(
        "encode(arrow_cast(observer, 'Binary'), 'hex') = '{}' OR observed = '{mac}'",
        x.replace('-', "")
    );
    let before = rows_by_day(&factory, "observations", &everything).await;
    let x_rows = rows_by_day(&factory, "observations", &of_x).await;
    let index_before = rows_by_day(&factory, "observed_index", &everything).await;
    let index_x_rows = rows_by_day(&factory, "observed_index", &index_of_x).await;
    assert_eq!(x_rows.len(), 6, "X has rows on every day: {x_rows:?}");
    assert_eq!(index_x_rows, x_rows, "the index mirrors the observations");

    let check = |label: &str,
                 now: &std::collections::BTreeMap<String, u64>,
                 all: &std::collections::BTreeMap<String, u64>,
                 gone: &std::collections::BTreeMap<String, u64>| {
        let mut erased_days = 0;
        for (day, &n) in all {
            let k = gone.get(day).copied().unwrap_or(0);
            let seen = now.get(day).copied().unwrap_or(0);
            assert!(
                seen == n || seen == n - k,
                "{label} {day}: {seen} rows, expected {n} or {}",
                n - k
            );
            erased_days += usize::from(seen == n - k && k > 0);
        }
        erased_days
    };
    // While another process holds the erasure lease, a round erases nothing.
    let other = proxima_storage::erasure::Lease::acquire(&store, "another process", Utc::now())
        .await
        .unwrap()
        .unwrap();
    let (ok, out) = run(&["maintain", "--once"]);
    assert!(ok && out.contains("0 revoked devices erased"), "{out}");
    assert_eq!(rows_by_day(&factory, "observations", &everything).await, before);
    other.release().await.unwrap();

    let mut partial = 0;
    let mut delay = std::time::Duration::from_millis(100);
    let mut kills = 0;
    loop {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"))
            .args([
                "--data",
                root.to_str().unwrap(),
                "--master-key-file",
                key_file.to_str().unwrap(),
            ])
            .args(["maintain", "--once"])
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap();
        if finished.is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        let status = child.wait().unwrap();
        // A killed eraser's lease keeps other processes off until it expires (15 minutes);
        // the test stands in for that wait by removing it.
        if finished.is_none() {
            let _ = std::fs::remove_dir_all(root.join("_erasure/lease"));
        }
        let now = rows_by_day(&factory, "observations", &everything).await;
        let erased = check("observations", &now, &before, &x_rows);
        let index_now = rows_by_day(&factory, "observed_index", &everything).await;
        check("observed_index", &index_now, &index_before, &index_x_rows);
        if erased > 0 && erased < x_rows.len() {
            partial += 1;
        }
        if finished.is_some() {
            assert!(status.success(), "the round that was not killed completes");
            break;
        }
        assert!(kills < 200, "the erasure never completed");
        delay += std::time::Duration::from_millis(40);
    }
    eprintln!("{kills} kills, {partial} of them mid-erasure");
    assert!(
        kills > 0 && partial > 0,
        "some kill landed mid-erasure ({kills} kills, {partial} partial)"
    );
    let after = rows_by_day(&factory, "observations", &everything).await;
    for (day, n) in &before {
        assert_eq!(after[day], n - x_rows[day], "{day}");
    }
    assert_eq!(
        value(&factory, &format!("SELECT count(*) FROM observations WHERE {of_x}")).await,
        "0"
    );
    assert_eq!(
        value(
            &factory,
            &format!("SELECT count(*) FROM revocations WHERE device_uuid = '{x}'")
        )
        .await,
        "0"
    );
    // A later round deletes what the erasure replaced (grace 1s), and verify holds.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (ok, out) = run(&["maintain", "--once", "--sweep-grace", "1s"]);
    assert!(ok, "{out}");
    let (ok, out) = run(&["erasure", "verify"]);
    assert!(ok && out.starts_with("ok: 1 erasure(s) checked"), "{out}");
}

/// Retention of devices: once retention deletes old days, a device registered before the
/// window that no remaining observation names (as observer or by MAC) is removed with
/// everything naming it; devices seen in the window, and new ones, stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_devices_no_observation_in_the_window_names() {
    use proxima_storage::{Maintainer, MaintainerConfig, MaintenanceOptions, MaintenanceStats};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path()).unwrap();
    let writer = PartitionWriter::new(store.clone(), "test");
    let today = proxima_engine::store::today_utc();
    let spec = PopulationSpec {
        broadcast: Default::default(),
        devices: 80,
        days: 8,
        contacts_per_day: 4,
        seed: 21,
        start: today - chrono::Days::new(7),
    };
    generate(&writer, &spec, |_| {}).await.unwrap();
    // Two devices imported by hand: one registered 30 days ago and never seen, one today.
    let (old, new) = (
        "00000000-0000-4000-8000-0000000000aa",
        "00000000-0000-4000-8000-0000000000bb",
    );
    let csv = dir.path().join("devices.csv");
    std::fs::write(
        &csv,
        format!(
            "device_uuid,mac,registered_at\n{old},0A:00:00:00:00:AA,{}\n{new},0A:00:00:00:00:BB,{}\n",
            (Utc::now() - chrono::Duration::days(30)).to_rfc3339(),
            Utc::now().to_rfc3339()
        ),
    )
    .unwrap();
    proxima_ingest::import::import(&writer, Table::Devices, &[csv])
        .await
        .unwrap();
    let factory = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();
    // Kept: every device some observation of the last 3 days names, and those registered
    // since; the rest of the population, met only in older days, goes.
    let oldest = today - chrono::Days::new(2);
    let expected = common::column(
        &factory,
        &format!(
            "SELECT device_uuid FROM devices WHERE registered_at >= TIMESTAMP '{oldest}T00:00:00Z' \
             OR device_uuid IN (SELECT observer FROM observations WHERE day >= DATE '{oldest}') \
             OR mac IN (SELECT observed FROM observations WHERE day >= DATE '{oldest}') ORDER BY 1"
        ),
    )
    .await;
    let all = common::column(&factory, "SELECT device_uuid FROM devices ORDER BY 1").await;
    assert!(expected.contains(&new.to_string()) && !expected.contains(&old.to_string()));
    assert!(
        expected.len() > 60 && expected.len() < all.len(),
        "{} of {}",
        expected.len(),
        all.len()
    );

    let (maintainer, _) = Maintainer::open(MaintainerConfig {
        factory: factory.clone(),
        wal_dir: None,
        clock: Arc::new(proxima_engine::clock::SystemClock),
        options: MaintenanceOptions {
            retention_days: 3,
            ..MaintenanceOptions::default()
        },
        stats: MaintenanceStats::default(),
    })
    .await
    .unwrap();
    let (expired_days, _) = maintainer.housekeeping().await.unwrap();
    assert!(expired_days >= 5, "{expired_days}");
    assert_eq!(
        common::column(&factory, "SELECT device_uuid FROM devices ORDER BY 1").await,
        expected
    );
    // Nothing of a removed device is left, credentials and exposure keys included.
    let gone: Vec<&String> = all.iter().filter(|d| !expected.contains(d)).collect();
    let list = gone.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ");
    for table in [
        "observations",
        "cases",
        "alerts",
        "temperature_readings",
        "exposure_keys",
        "revocations",
    ] {
        let column = if table == "observations" {
            "observer"
        } else {
            "device_uuid"
        };
        assert_eq!(
            value(
                &factory,
                &format!("SELECT count(*) FROM {table} WHERE {column} IN ({list})")
            )
            .await,
            "0",
            "{table}"
        );
    }
}

/// An administrator revokes, over REST, an imported device (which has no owner's key):
/// only an admin may, only for a device without a key, once; the audit names the device by
/// its keyed hash only; the next round erases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_revokes_an_imported_device_over_rest_and_the_round_erases_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::local(&root).unwrap();
    let spec = PopulationSpec {
        broadcast: Default::default(),
        devices: 30,
        days: 1,
        contacts_per_day: 4,
        seed: 8,
        start: proxima_engine::store::today_utc(),
    };
    generate(&PartitionWriter::new(store.clone(), "test"), &spec, |_| {})
        .await
        .unwrap();
    let factory = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();
    let (x, _) = most_met(&factory).await;
    let mut server = common::Server::start(&[
        "--data",
        root.to_str().unwrap(),
        "serve",
        "--http",
        "127.0.0.1:0",
        "--flight",
        "127.0.0.1:0",
        "--registration-work",
        "8",
        "--erasure-interval",
        "1s",
    ]);
    let flight = server.line("Flight SQL listening on ")["Flight SQL listening on ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let tracer = server.password("tracer");
    let admin = server.password("admin");
    server.drain();
    let api = server.api.clone();
    // A tracer names X in a statement (upper case, and refused: no purpose declared).
    let asked = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"))
        .args(["sql", "--connect", &flight, "--user", "tracer", "-c"])
        .arg(format!(
            "SELECT count(*) FROM devices WHERE device_uuid = '{}'",
            x.to_ascii_uppercase()
        ))
        .env("PROXIMA_PASSWORD", &tracer)
        .output()
        .unwrap();
    assert!(!asked.status.success(), "a tracer reads nothing without a purpose");
    let http = reqwest::Client::new();
    let revoke = |uuid: &str, user: &'static str, password: &str| {
        http.post(format!("{api}/v1/devices/{uuid}/revocation"))
            .basic_auth(user, Some(password.to_string()))
            .send()
    };
    assert_eq!(revoke(&x, "tracer", &tracer).await.unwrap().status(), 403);
    let phone_state = dir.path().join("p.json");
    let keyed = phone(&phone_state, &api, &["register"]);
    let answer = revoke(&keyed, "admin", &admin).await.unwrap();
    assert_eq!(
        answer.status(),
        409,
        "a device with an owner's key is its owner's to revoke"
    );
    assert_eq!(
        revoke("00000000-0000-4000-8000-000000000000", "admin", &admin)
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(revoke(&x, "admin", &admin).await.unwrap().status(), 204);
    assert_eq!(revoke(&x, "admin", &admin).await.unwrap().status(), 409, "once");
    eventually("the erasure", || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"))
            .args(["--data", root.to_str().unwrap(), "erasure", "status"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).contains("0 revoked device(s) waiting for erasure, 1 erased")
    });
    assert_eq!(
        common::column(
            &factory,
            &format!("SELECT count(*) FROM devices WHERE device_uuid = '{x}'")
        )
        .await,
        ["0"]
    );
    drop(server);
    // …and so does a local `proxima sql`, once the server is gone.
    let local = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"))
        .args(["--data", root.to_str().unwrap(), "sql", "-c"])
        .arg(format!("SELECT count(*) AS n FROM devices WHERE device_uuid = '{x}'"))
        .output()
        .unwrap();
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let audit = common::audit_records(&root.join("_audit"));
    let revocations: Vec<_> = audit
        .iter()
        .filter(|r| r["action"] == "rest:POST /v1/devices/{uuid}/revocation")
        .collect();
    assert!(
        revocations
            .iter()
            .any(|r| r["principal"] == "admin" && r["purpose"].as_str().is_some_and(|p| p.starts_with("erasure:"))),
        "{revocations:?}"
    );
    let log = serde_json::to_string(&audit).unwrap().to_ascii_lowercase();
    assert!(!log.contains(&x), "the audit log names X by its keyed hash only");
    // That hash is the one X's erasure record is named by: whoever holds the store's hash
    // key can still find who asked about X.
    let records: Vec<String> = std::fs::read_dir(root.join("_erasure/done"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".json")
                .to_string()
        })
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let named = format!("uuid:{}", records[0]);
    let hashed = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"))
        .args([
            "--data",
            root.to_str().unwrap(),
            "erasure",
            "hash",
            &x.to_ascii_uppercase(),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&hashed.stdout).trim(), named);
    let naming: Vec<_> = audit
        .iter()
        .filter(|r| r["sql"].as_str().is_some_and(|s| s.contains(&named)))
        .collect();
    assert!(
        naming
            .iter()
            .any(|r| r["principal"] == "tracer" && r["decision"] == "deny"),
        "{naming:?}"
    );
    assert!(naming.iter().any(|r| r["action"] == "cli:sql"), "{naming:?}");
}
