//! The Maintainer: compaction while readers count, `proxima serve --no-rest` keeping the store
//! in shape with no REST service (and so no write-ahead log), and `proxima maintain --once`.

use crate::common;

use std::io::BufReader;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use chrono::NaiveDate;
use proxima_engine::{DayPartition, SessionFactory, SessionOptions, Store, Table};
use proxima_ingest::synthetic::{PopulationSpec, generate};
use proxima_storage::PartitionWriter;
use proxima_storage::compaction::{GRACE, compact_due, live_files, sweep};

const BIN: &str = env!("CARGO_BIN_EXE_proxima");

async fn count(factory: &SessionFactory, sql: &str) -> i64 {
    let ctx = factory.session().await.unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

async fn observations(factory: &SessionFactory) -> i64 {
    count(factory, "SELECT count(*) FROM observations").await
}

/// A small generated population over `days` days ending today, and the factory over it.
async fn population(store: &Store, days: u32) -> (PartitionWriter, SessionFactory) {
    let writer = PartitionWriter::new(store.clone(), "test");
    let today = proxima_engine::store::today_utc();
    let spec = PopulationSpec {
        broadcast: Default::default(),
        devices: 300,
        days,
        contacts_per_day: 5,
        seed: 7,
        start: today - chrono::Days::new(u64::from(days) - 1),
    };
    generate(&writer, &spec, |_| {}).await.unwrap();
    let factory = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();
    (writer, factory)
}

/// Some rows of `day`, as they are in the store (to write again as extra small files).
async fn sample(factory: &SessionFactory, day: NaiveDate, limit: usize) -> Vec<RecordBatch> {
    let ctx = factory.session().await.unwrap();
    ctx.sql(&format!(
        "SELECT observer, observed, observed_at, duration_s, rssi, tx_power, location FROM observations \
         WHERE day = DATE '{day}' ORDER BY observer, observed_at LIMIT {limit}"
    ))
    .await
    .unwrap()
    .collect()
    .await
    .unwrap()
}

/// Writes `batches` into `day` `times` times, one committed file each (as flushes would).
async fn add_files(writer: &PartitionWriter, day: NaiveDate, batches: &[RecordBatch], times: usize) {
    for _ in 0..times {
        let mut transaction = writer.begin();
        transaction
            .write_file(Table::Observations, Some(day), batches)
            .await
            .unwrap();
        transaction.commit().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_count_every_row_once_while_a_day_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(dir.path()).unwrap();
    let (writer, factory) = population(&store, 2).await;
    let today = proxima_engine::store::today_utc();
    // Nine more small files in today's folder, as nine flushes would leave.
    let extra = sample(&factory, today, 50).await;
    add_files(&writer, today, &extra, 9).await;
    assert_eq!(live_files(&store, Table::Observations, today).await.unwrap().len(), 10);
    let before = observations(&factory).await;

    let counting = {
        let factory = factory.clone();
        tokio::spawn(async move {
            let mut counts = Vec::new();
            for _ in 0..40 {
                counts.push(observations(&factory).await);
            }
            counts
        })
    };
    let runs = compact_due(&factory, &writer, chrono::Utc::now(), GRACE).await.unwrap();
    let counts = counting.await.unwrap();
    assert!(runs >= 1, "today's ten files are due");
    assert!(
        counts.iter().all(|c| *c == before),
        "{before} expected, counted {counts:?}"
    );
    assert_eq!(observations(&factory).await, before);
    assert_eq!(live_files(&store, Table::Observations, today).await.unwrap().len(), 1);
    assert!(
        factory.index().is_covered(today).await.unwrap(),
        "the lookups answer for the compacted day"
    );
    // Within the grace period the replaced files stay (a running query may read them).
    let raw = store.list_files(Table::Observations).await.unwrap();
    assert!(raw.len() >= 11, "{raw:?}");
    let folder = DayPartition {
        table: Table::Observations,
        day: today,
    };
    sweep(&store, &folder.prefix(store.root()), chrono::Utc::now(), GRACE)
        .await
        .unwrap();
    assert_eq!(observations(&factory).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_rest_still_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::local(&root).unwrap();
    let (writer, factory) = population(&store, 3).await;
    let yesterday = proxima_engine::store::today_utc().pred_opt().unwrap();
    let extra = sample(&factory, yesterday, 40).await;
    add_files(&writer, yesterday, &extra, 2).await;
    assert_eq!(
        live_files(&store, Table::Observations, yesterday).await.unwrap().len(),
        3
    );
    let before = observations(&factory).await;

    let mut child = Command::new(BIN)
        .args(["--data", root.to_str().unwrap()])
        .args([
            "serve",
            "--no-rest",
            "--flight",
            "127.0.0.1:0",
            "--flush-interval",
            "1s",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let line = common::wait_for_line(&mut stdout, "Flight SQL listening on");
    assert!(line.contains("grpc://127.0.0.1:"), "{line}");
    // A finished day with three small files (and three companions) is due: the Maintainer
    // merges each set.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let live = live_files(&store, Table::Observations, yesterday).await.unwrap().len();
        let companions = live_files(&store, Table::ObservedIndex, yesterday).await.unwrap().len();
        if (live, companions) == (1, 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {live} live files and {companions} companions after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        observations(&factory).await,
        before,
        "compaction neither adds nor drops rows"
    );
    assert!(
        factory.index().is_covered(yesterday).await.unwrap(),
        "the lookups answer for the compacted day"
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(!root.join("_wal").exists(), "without REST there is no write-ahead log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_once_compacts_and_applies_retention() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::local(&root).unwrap();
    let (writer, factory) = population(&store, 4).await;
    let today = proxima_engine::store::today_utc();
    let yesterday = today.pred_opt().unwrap();
    let oldest = today - chrono::Days::new(3);
    let extra = sample(&factory, yesterday, 40).await;
    let extra_rows: usize = extra.iter().map(RecordBatch::num_rows).sum();
    add_files(&writer, yesterday, &extra, 1).await;
    let total = observations(&factory).await;
    let expiring = count(
        &factory,
        &format!("SELECT count(*) FROM observations WHERE day = DATE '{oldest}'"),
    )
    .await;
    assert!(expiring > 0 && extra_rows > 0);

    let output = Command::new(BIN)
        .args(["--data", root.to_str().unwrap()])
        .args(["maintain", "--once", "--retention-days", "3"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Yesterday's observations and their observed_index companions: two folders of two files.
    assert!(stdout.contains("2 day folders compacted"), "{stdout}");
    assert_eq!(
        live_files(&store, Table::ObservedIndex, yesterday).await.unwrap().len(),
        1
    );
    assert_eq!(
        live_files(&store, Table::Observations, yesterday).await.unwrap().len(),
        1
    );
    let days: Vec<NaiveDate> = store
        .list_days(Table::Observations)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.day)
        .collect();
    assert!(!days.contains(&oldest), "{oldest} is past retention: {days:?}");
    assert_eq!(observations(&factory).await, total - expiring);

    let refused = Command::new(BIN)
        .args(["--data", root.to_str().unwrap()])
        .args(["maintain", "--once", "--retention-days", "0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("retention-days"));
}

/// Every row of a query as text, in order (for comparing two runs of the same query).
async fn rows(factory: &SessionFactory, sql: &str) -> Vec<String> {
    let ctx = factory.session().await.unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    text.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_over_compacted_and_fresh_days_equals_the_view() {
    use proxima_udfs::trace::EncounterLookup;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::local(&root).unwrap();
    let (writer, factory) = population(&store, 4).await;
    let today = proxima_engine::store::today_utc();
    let yesterday = today.pred_opt().unwrap();
    // Yesterday gets two more files (due: it is over), today three (not due: fewer than 8).
    let extra = sample(&factory, yesterday, 60).await;
    add_files(&writer, yesterday, &extra, 2).await;
    let extra = sample(&factory, today, 60).await;
    add_files(&writer, today, &extra, 3).await;
    compact_due(&factory, &writer, chrono::Utc::now(), GRACE).await.unwrap();
    assert_eq!(
        live_files(&store, Table::Observations, yesterday).await.unwrap().len(),
        1
    );
    assert_eq!(
        live_files(&store, Table::ObservedIndex, yesterday).await.unwrap().len(),
        1
    );
    assert_eq!(live_files(&store, Table::Observations, today).await.unwrap().len(), 4);

    let devices: Vec<String> = rows(
        &factory,
        "SELECT DISTINCT observer FROM observations ORDER BY observer LIMIT 12",
    )
    .await
    .into_iter()
    .filter_map(|line| line.split('|').nth(1).map(|v| v.trim().to_string()))
    .filter(|v| v.len() == 36)
    .collect();
    assert_eq!(devices.len(), 12, "{devices:?}");

    // The lookups answer every day, and exactly as the `encounters` view does.
    let from = (today - chrono::Days::new(3))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros();
    // The population spans these four days whole (today's rows run to its end).
    let to = (today + chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros()
        - 1;
    let found = factory.index().encounters(&devices, from, to).await.unwrap();
    assert!(found.uncovered_days.is_empty(), "{:?}", found.uncovered_days);
    let mut looked_up: Vec<(String, String, i64)> = found.edges.into_iter().map(|e| (e.a, e.b, e.at)).collect();
    looked_up.sort();
    let list = devices.iter().map(|d| format!("'{d}'")).collect::<Vec<_>>().join(", ");
    let ctx = factory.session().await.unwrap();
    let batches = ctx
        .sql(&format!(
            "SELECT a, b, CAST(at AS BIGINT) AS at_us FROM encounters WHERE a IN ({list}) ORDER BY a, b, at_us"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut viewed = Vec::new();
    for batch in &batches {
        let (a, b) = (batch.column(0).as_string::<i32>(), batch.column(1).as_string::<i32>());
        let at = batch.column(2).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            viewed.push((a.value(i).to_string(), b.value(i).to_string(), at.value(i)));
        }
    }
    viewed.sort();
    assert!(!viewed.is_empty());
    let differ = looked_up.iter().zip(&viewed).position(|(x, y)| x != y);
    assert!(
        looked_up.len() == viewed.len() && differ.is_none(),
        "{} looked up, {} in the view; first difference at {differ:?}",
        looked_up.len(),
        viewed.len()
    );

    // Traces through the lookups equal traces through the view (the index deleted).
    let traces = |factory: SessionFactory| {
        let devices = devices.clone();
        async move {
            let mut all = Vec::new();
            for device in &devices {
                all.extend(
                    rows(
                        &factory,
                        &format!(
                            "SELECT contact, contact_order, priority, exposed_at, via FROM \
                             trace_contacts('{device}', now(), 2) ORDER BY contact_order, contact"
                        ),
                    )
                    .await,
                );
            }
            all
        }
    };
    let indexed = traces(factory.clone()).await;
    std::fs::remove_dir_all(root.join("observed_index")).unwrap();
    let plain = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();
    assert!(
        !plain.index().is_covered(yesterday).await.unwrap(),
        "the view path is taken"
    );
    assert_eq!(indexed, traces(plain).await);
    assert!(indexed.len() > devices.len() * 4, "traces found contacts: {indexed:?}");
}

/// Companions written before `observer` became 16 bytes (text `observer`, no
/// `proxima.layout` in the footer) are not trusted: the day is read the slow way, compaction
/// leaves them alone, and the Maintainer's backfill rebuilds the day in the current layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn companions_of_an_older_layout_are_rebuilt_not_trusted() {
    use datafusion::parquet::arrow::ArrowWriter;
    use object_store::ObjectStoreExt;
    use proxima_engine::paths::new_data_file;
    use proxima_storage::index_build::backfill_missing;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::local(&dir.path().join("store")).unwrap();
    let (writer, factory) = population(&store, 3).await;
    let yesterday = proxima_engine::store::today_utc().pred_opt().unwrap();
    let rows_of_day = count(
        &factory,
        &format!("SELECT count(*) FROM observations WHERE day = DATE '{yesterday}'"),
    )
    .await;

    // Replace yesterday's companions with two files of the older layout, as plain Parquet.
    let ctx = factory.session().await.unwrap();
    let legacy: Vec<RecordBatch> = ctx
        .sql(&format!(
            "SELECT observed, observer, observed_at FROM observations WHERE day = DATE '{yesterday}' \
             ORDER BY observed, observed_at"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let all = arrow::compute::concat_batches(&legacy[0].schema(), &legacy).unwrap();
    assert_eq!(all.column(1).data_type(), &arrow::datatypes::DataType::Utf8);
    let old = live_files(&store, Table::ObservedIndex, yesterday).await.unwrap();
    let half = all.num_rows() / 2;
    for part in [all.slice(0, half), all.slice(half, all.num_rows() - half)] {
        let mut bytes = Vec::new();
        let mut file = ArrowWriter::try_new(&mut bytes, part.schema(), None).unwrap();
        file.write(&part).unwrap();
        file.close().unwrap();
        let location = new_data_file(store.root(), Table::ObservedIndex, Some(yesterday));
        store.object_store().put(&location, bytes.into()).await.unwrap();
    }
    for file in old {
        store.object_store().delete(&file).await.unwrap();
    }

    // As many rows as the observations, but not trusted; traces still equal the view's.
    let fresh = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();
    assert!(!fresh.index().is_covered(yesterday).await.unwrap());
    assert_eq!(
        count(
            &fresh,
            &format!("SELECT count(*) FROM observations WHERE day = DATE '{yesterday}'")
        )
        .await,
        rows_of_day
    );

    // Compaction leaves the older files alone (no error, nothing merged) ...
    let later = chrono::Utc::now() + chrono::Duration::minutes(11);
    assert_eq!(
        compact_due(&fresh, &writer, later, GRACE).await.unwrap(),
        0,
        "nothing merged"
    );
    assert_eq!(
        live_files(&store, Table::ObservedIndex, yesterday).await.unwrap().len(),
        2
    );
    // ... and the backfill rebuilds the day in the current layout.
    assert_eq!(backfill_missing(&fresh, &writer, later).await.unwrap(), 1);
    let rebuilt = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();
    assert!(rebuilt.index().is_covered(yesterday).await.unwrap());
    let files = live_files(&store, Table::ObservedIndex, yesterday).await.unwrap();
    assert_eq!(files.len(), 1);
    let key_values = proxima_engine::index::file_key_values(&store, &files[0]).await.unwrap();
    assert!(
        proxima_engine::index::is_current_companion(&key_values),
        "{key_values:?}"
    );
    assert_eq!(
        count(
            &rebuilt,
            &format!(
                "SELECT count(*) FROM (SELECT observed, decode(replace(observer, '-', ''), 'hex') AS o, observed_at \
                 FROM observations WHERE day = DATE '{yesterday}' EXCEPT \
                 SELECT observed, arrow_cast(observer, 'Binary'), observed_at FROM observed_index \
                 WHERE day = DATE '{yesterday}')"
            )
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &rebuilt,
            &format!("SELECT count(*) FROM observed_index WHERE day = DATE '{yesterday}'")
        )
        .await,
        rows_of_day
    );
}
