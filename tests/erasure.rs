//! Erasure's copy-on-write rewrite (`proxima_storage::erasure`), on a real encrypted store:
//! one device's rows leave every table and the encounter index, while every other device's
//! rows, encounters and direct contacts are exactly as before.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::util::pretty::pretty_format_batches;
use chrono::Utc;
use proxima_engine::keys::MasterKeys;
use proxima_engine::{SessionFactory, SessionOptions, Store, Table};
use proxima_ingest::synthetic::{PopulationSpec, generate};
use proxima_storage::PartitionWriter;
use proxima_storage::erasure::{Erased, erase_in_folder};

async fn text(factory: &SessionFactory, sql: &str) -> String {
    let ctx = factory.session().await.unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

/// The single value of a one-row, one-column answer.
async fn value(factory: &SessionFactory, sql: &str) -> String {
    let out = text(factory, sql).await;
    out.lines()
        .nth(3)
        .unwrap()
        .trim_matches(|c| c == '|' || c == ' ')
        .to_string()
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
    let (mut rows, mut rewritten) = (0, 0);
    for table in Table::ALL {
        let days: Vec<Option<chrono::NaiveDate>> = if table.is_day_partitioned() {
            store
                .list_days(table)
                .await
                .unwrap()
                .into_iter()
                .map(|d| Some(d.day))
                .collect()
        } else {
            vec![None]
        };
        for day in days {
            let done = erase_in_folder(&factory, &writer, table, day, &erased).await.unwrap();
            if table == Table::Observations {
                rows += done.rows;
                rewritten += done.rewritten;
            }
        }
    }
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
