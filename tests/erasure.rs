//! Erasure's copy-on-write rewrite (`proxima_storage::erasure`), on a real encrypted store:
//! one device's rows leave every table and the encounter index, while every other device's
//! rows, encounters and direct contacts are exactly as before.

mod common;

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
    let x = value(
        &factory,
        "SELECT a FROM encounters GROUP BY a ORDER BY count(*) DESC, a LIMIT 1",
    )
    .await;
    let mac = value(&factory, &format!("SELECT mac FROM devices WHERE device_uuid = '{x}'")).await;
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
    };
    let done = erase_everywhere(&factory, &writer, &erased).await.unwrap();
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
    for victim in &victims {
        let erased = Erased::of(&factory, victim, from, to).await.unwrap();
        assert!(!erased.heard_as.is_empty(), "{victim}: a MAC, identifiers or RPIs");
        erase_everywhere(&factory, &writer, &erased).await.unwrap();
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
