//! Rebuilds a day's `observed_index` (see `proxima_engine::index`) from its observations.
//!
//! Every transaction writes the companion of each observation file itself, so
//! nothing here runs in normal operation. It is for days written before
//! companions existed, and for repair: [`build_day`] writes one companion of
//! all the day's live observations (sorted by `observed`, then time) and then
//! deletes the day's older companion files. Until the old files are gone the
//! day's row counts disagree, so readers take the `encounters` view for it:
//! slower, never wrong. [`backfill_missing`] does this, from the Maintainer,
//! for the days the companions do not cover (once their files are ten minutes old).

use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use proxima_engine::paths::data_file_written_at;
use proxima_engine::{DayPartition, SessionFactory, Table};
use tracing::{debug, info};

use crate::error::Result;
use crate::writer::{CommitSummary, PartitionWriter};

/// The folder of the derived index earlier versions wrote.
const LEGACY_INDEX: &str = "encounter_index";
/// A day whose newest observation file is younger than this is left to its writer: its
/// companion may still be on its way.
const SETTLED_AFTER_SECS: u64 = 600;

/// Rebuilds the `observed_index` of `day` from its observations; returns what was published.
pub async fn build_day(factory: &SessionFactory, writer: &PartitionWriter, day: NaiveDate) -> Result<CommitSummary> {
    let store = factory.store();
    let prefix = DayPartition {
        table: Table::ObservedIndex,
        day,
    }
    .prefix(store.root());
    let old: Vec<Path> = store
        .object_store()
        .list(Some(&prefix))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await?;
    debug!(%day, "rebuilding the observed index");
    let ctx = factory.session().await?;
    let sql = format!(
        "SELECT observed, observer, observed_at FROM observations WHERE day = DATE '{}' ORDER BY observed, observed_at",
        day.format("%Y-%m-%d")
    );
    let rows = ctx.sql(&sql).await?.execute_stream().await?;
    let mut transaction = writer.begin();
    if let Err(e) = transaction
        .write_stream(Table::ObservedIndex, Some(day), 0, Vec::new(), rows)
        .await
    {
        transaction.abort().await?;
        return Err(e);
    }
    let summary = transaction.commit().await?;
    for location in &old {
        store.object_store().delete(location).await?;
    }
    info!(%day, rows = summary.rows, bytes = summary.bytes, replaced = old.len(), "observed index rebuilt");
    Ok(summary)
}

/// Rebuilds the `observed_index` of every day that has observations; `progress` is called
/// after each day.
pub async fn build_all(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    mut progress: impl FnMut(NaiveDate, &CommitSummary),
) -> Result<Vec<NaiveDate>> {
    let days: Vec<NaiveDate> = factory
        .store()
        .list_days(Table::Observations)
        .await?
        .into_iter()
        .map(|p| p.day)
        .collect();
    for &day in &days {
        let summary = build_day(factory, writer, day).await?;
        progress(day, &summary);
    }
    Ok(days)
}

/// Rebuilds the `observed_index` of the days it does not cover (written before companions
/// existed, or left uneven by an interrupted rebuild), leaving alone any day with a file
/// named in the last ten minutes at `now` (a writer may be publishing its companion).
/// Returns the days rebuilt.
pub async fn backfill_missing(factory: &SessionFactory, writer: &PartitionWriter, now: DateTime<Utc>) -> Result<usize> {
    let store = factory.store();
    // The per-day `encounter_index` that earlier versions wrote is derived data nothing reads now.
    let legacy = store.root().clone().join(LEGACY_INDEX);
    let (files, bytes) = store.delete_prefix(&legacy).await?;
    if files > 0 {
        info!(
            files,
            bytes, "deleted the old encounter_index (replaced by observed_index)"
        );
    }
    let settled_before = (now.timestamp().max(0) as u64).saturating_sub(SETTLED_AFTER_SECS);
    let mut built = 0;
    for partition in store.list_days(Table::Observations).await? {
        if factory.index().is_covered(partition.day).await? {
            continue;
        }
        let mut files: Vec<Path> = Vec::new();
        for table in [Table::Observations, Table::ObservedIndex] {
            let prefix = DayPartition {
                table,
                day: partition.day,
            }
            .prefix(store.root());
            let listed: Vec<Path> = store
                .reader()
                .list(Some(&prefix))
                .map_ok(|m| m.location)
                .try_collect()
                .await?;
            files.extend(listed);
        }
        let settled = files
            .iter()
            .all(|f| data_file_written_at(f).is_none_or(|written| written <= settled_before));
        if settled {
            build_day(factory, writer, partition.day).await?;
            built += 1;
        }
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::Int16Type;
    use proxima_engine::index::IndexReader;
    use proxima_engine::{SessionOptions, Store};
    use proxima_udfs::trace::{Edge, EncounterLookup};

    use super::*;

    const DEVICES: usize = 3000;
    /// 2026-11-10T00:00:00Z in µs.
    const DAY_START: i64 = 1_762_732_800_000_000;

    fn uuid(i: usize) -> String {
        format!("00000000-0000-4000-8000-{i:012x}")
    }

    fn mac(i: usize) -> String {
        format!("AA:00:00:00:{:02X}:{:02X}", i >> 8, i & 255)
    }

    /// Device i heard device (7i + 1) mod N at second i of the day.
    fn sighting(i: usize) -> (usize, usize, i64) {
        (i, (7 * i + 1) % DEVICES, DAY_START + i as i64 * 1_000_000)
    }

    fn observations(range: std::ops::Range<usize>) -> RecordBatch {
        let sightings: Vec<_> = range.map(sighting).collect();
        let n = sightings.len();
        RecordBatch::try_new(
            Table::Observations.file_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(sightings.iter().map(|s| uuid(s.0)))),
                Arc::new(StringArray::from_iter_values(sightings.iter().map(|s| mac(s.1)))),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(sightings.iter().map(|s| s.2)).with_timezone("UTC"),
                ),
                Arc::new(Int32Array::from(vec![60; n])),
                Arc::new(arrow::array::PrimitiveArray::<Int16Type>::from(vec![None; n])),
                Arc::new(arrow::array::PrimitiveArray::<Int16Type>::from(vec![None; n])),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
            ],
        )
        .unwrap()
    }

    fn devices() -> RecordBatch {
        RecordBatch::try_new(
            Table::Devices.file_schema(),
            vec![
                Arc::new(StringArray::from_iter_values((0..DEVICES).map(uuid))),
                Arc::new(StringArray::from_iter_values((0..DEVICES).map(mac))),
                Arc::new(TimestampMicrosecondArray::from(vec![0; DEVICES]).with_timezone("UTC")),
            ],
        )
        .unwrap()
    }

    /// The encounters of `keys` by definition: both directions of every sighting.
    fn expected(keys: &[String]) -> Vec<Edge> {
        expected_from(keys, 0..DEVICES)
    }

    fn expected_from(keys: &[String], sightings: std::ops::Range<usize>) -> Vec<Edge> {
        let mut edges = Vec::new();
        for (a, b, at) in sightings.map(sighting) {
            if a == b {
                continue;
            }
            for (x, y) in [(a, b), (b, a)] {
                if keys.contains(&uuid(x)) {
                    edges.push(Edge {
                        a: uuid(x),
                        b: uuid(y),
                        at,
                        a_heard: x == a,
                    });
                }
            }
        }
        edges.sort_by(|x, y| (&x.a, x.at, &x.b, x.a_heard).cmp(&(&y.a, y.at, &y.b, y.a_heard)));
        edges
    }

    /// The encounters of `keys` on the day, as the `encounters` view (the reference) has them.
    async fn from_view(factory: &SessionFactory, keys: &[String]) -> Vec<Edge> {
        use arrow::array::AsArray;
        use arrow::datatypes::TimestampMicrosecondType;
        let ctx = factory.session().await.unwrap();
        let list = keys.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ");
        let batches = ctx
            .sql(&format!("SELECT a, b, at, a_heard FROM encounters WHERE a IN ({list})"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut edges = Vec::new();
        for batch in batches {
            let (a, b) = (batch.column(0).as_string::<i32>(), batch.column(1).as_string::<i32>());
            let at = batch.column(2).as_primitive::<TimestampMicrosecondType>();
            let a_heard = batch.column(3).as_boolean();
            for i in 0..batch.num_rows() {
                edges.push(Edge {
                    a: a.value(i).to_string(),
                    b: b.value(i).to_string(),
                    at: at.value(i),
                    a_heard: a_heard.value(i),
                });
            }
        }
        sorted(edges)
    }

    fn sorted(mut edges: Vec<Edge>) -> Vec<Edge> {
        edges.sort_by(|x, y| (&x.a, x.at, &x.b, x.a_heard).cmp(&(&y.a, y.at, &y.b, y.a_heard)));
        edges
    }

    async fn commit(writer: &PartitionWriter, table: Table, day: Option<NaiveDate>, batch: RecordBatch) {
        let mut transaction = writer.begin();
        transaction.write_file(table, day, &[batch]).await.unwrap();
        transaction.commit().await.unwrap();
    }

    #[tokio::test]
    async fn lookups_read_a_few_pages_and_stay_current_through_every_write() {
        let store = Store::in_memory();
        let writer = PartitionWriter::new(store.clone(), "test");
        let day = proxima_engine::schema::date_from_epoch_days((DAY_START / 86_400_000_000) as i32);
        // Every device registered but the last ten, which registers later.
        let mut transaction = writer.begin();
        transaction
            .write_file(Table::Devices, None, &[devices().slice(0, DEVICES - 10)])
            .await
            .unwrap();
        transaction
            .write_file(Table::Observations, Some(day), &[observations(0..DEVICES)])
            .await
            .unwrap();
        transaction.commit().await.unwrap();
        let factory = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();
        let reader = IndexReader::new(store.clone(), None);
        let (from, to) = (DAY_START, DAY_START + 86_400_000_000 - 1);

        // No build step: the observation file came with its companion.
        let keys = vec![uuid(5)];
        let found = reader.encounters(&keys, from, to).await.unwrap();
        assert!(found.uncovered_days.is_empty());
        assert_eq!(sorted(found.edges), expected(&keys));
        let read = reader.counters().rows;
        assert!(
            read > 0 && read <= 4 * 1024,
            "one device's rows are a page or two in each file, read {read}"
        );

        let mut keys: Vec<String> = (100..140).map(uuid).collect();
        keys.sort();
        let found = reader.encounters(&keys, from, DAY_START + 1_000_000_000).await.unwrap();
        let in_window: Vec<Edge> = expected(&keys)
            .into_iter()
            .filter(|e| e.at <= DAY_START + 1_000_000_000)
            .collect();
        assert_eq!(sorted(found.edges), in_window);

        // A device registering late: its earlier sightings are encounters at once, as in
        // the view, and no day goes uncovered.
        let late = uuid(DEVICES - 3);
        let hearer = (0..DEVICES).find(|&i| sighting(i).1 == DEVICES - 3).unwrap();
        let before = reader.encounters(std::slice::from_ref(&late), from, to).await.unwrap();
        assert!(before.uncovered_days.is_empty());
        assert!(!before.edges.iter().any(|e| e.b == uuid(hearer)), "{:?}", before.edges);
        assert_eq!(
            sorted(before.edges),
            from_view(&factory, std::slice::from_ref(&late)).await
        );
        commit(&writer, Table::Devices, None, devices().slice(DEVICES - 10, 10)).await;
        let after = reader.encounters(std::slice::from_ref(&late), from, to).await.unwrap();
        assert!(
            after.uncovered_days.is_empty(),
            "a registration never makes a day stale"
        );
        assert!(after.edges.iter().any(|e| e.b == uuid(hearer)), "{:?}", after.edges);
        assert_eq!(sorted(after.edges), from_view(&factory, &[late]).await);

        // A flush's new file: still covered, and its rows are found.
        commit(&writer, Table::Observations, Some(day), observations(0..10)).await;
        let found = reader.encounters(&[uuid(5)], from, to).await.unwrap();
        assert!(found.uncovered_days.is_empty());
        let twice = expected(&[uuid(5)]).len() + expected_from(&[uuid(5)], 0..10).len();
        assert_eq!(found.edges.len(), twice, "the day now holds sightings 0..10 twice");

        // The view is the reference: the same edges for a spread of devices.
        let mut keys: Vec<String> = (0..DEVICES).step_by(97).map(uuid).collect();
        keys.sort();
        let found = reader.encounters(&keys, from, to).await.unwrap();
        assert_eq!(sorted(found.edges), from_view(&factory, &keys).await);

        // Without its companions the day is uncovered: answered by reading the whole day,
        // still exactly as the view answers ...
        for file in store.list_files(Table::ObservedIndex).await.unwrap() {
            store.object_store().delete(&file).await.unwrap();
        }
        let scanned = reader.counters().scanned_days;
        let found = reader.encounters(&keys, from, to).await.unwrap();
        assert_eq!(found.uncovered_days, vec![proxima_engine::schema::epoch_days(day)]);
        assert_eq!(reader.counters().scanned_days, scanned + 1);
        assert_eq!(sorted(found.edges), from_view(&factory, &keys).await);
        // ... until a rebuild writes one companion for the whole day.
        build_day(&factory, &writer, day).await.unwrap();
        let found = reader.encounters(&keys, from, to).await.unwrap();
        assert!(found.uncovered_days.is_empty());
        assert_eq!(sorted(found.edges), from_view(&factory, &keys).await);
        assert_eq!(store.list_files(Table::ObservedIndex).await.unwrap().len(), 1);
    }

    /// Rotating identifiers, by definition: device i hears device (7i + 1) mod N at minute i,
    /// by its MAC, by an identifier of the epoch holding that minute (under a retired key or
    /// the current one), by one of an hour earlier (a replay) or by 16 bytes no key issued.
    /// The index, the day scan and the view find exactly the first three kinds.
    #[tokio::test]
    async fn identifiers_resolve_alike_in_the_index_the_day_scan_and_the_view() {
        use proxima_engine::ephemeral::{self, IdKeys, Identifiers};
        const N: usize = 600;
        const EPOCH: std::time::Duration = std::time::Duration::from_secs(15 * 60);
        let made = chrono::DateTime::from_timestamp_micros(DAY_START).unwrap();
        let mut keys = IdKeys::generate(made);
        let retired = keys.clone();
        keys.rotate(made).unwrap();
        let id = |keys: &IdKeys, device: usize, at: i64| {
            let at = chrono::DateTime::from_timestamp_micros(at).unwrap();
            let handle = ephemeral::handle_of(&uuid(device)).unwrap();
            ephemeral::hex(&keys.issue(handle, ephemeral::epoch_start(at, EPOCH)))
        };
        let mut rows = Vec::new();
        let mut expected = Vec::new();
        for i in 0..N {
            let (heard, at) = ((7 * i + 1) % N, DAY_START + i as i64 * 60_000_000);
            let observed = match i % 5 {
                0 => mac(heard),
                1 => id(&retired, heard, at),
                2 => id(&keys, heard, at),
                3 => id(&keys, heard, at - 3_600_000_000),
                _ => format!(
                    "{:032x}",
                    (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
                ),
            };
            if i % 5 < 3 && i != heard {
                expected.push((uuid(i), uuid(heard), at));
            }
            rows.push((uuid(i), observed, at));
        }
        let n = rows.len();
        let batch = RecordBatch::try_new(
            Table::Observations.file_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.clone()))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1.clone()))),
                Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2)).with_timezone("UTC")),
                Arc::new(Int32Array::from(vec![60; n])),
                Arc::new(arrow::array::PrimitiveArray::<Int16Type>::from(vec![None; n])),
                Arc::new(arrow::array::PrimitiveArray::<Int16Type>::from(vec![None; n])),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
            ],
        )
        .unwrap();
        let store = Store::in_memory();
        let writer = PartitionWriter::new(store.clone(), "test");
        let day = proxima_engine::schema::date_from_epoch_days((DAY_START / 86_400_000_000) as i32);
        let mut transaction = writer.begin();
        let devices = RecordBatch::try_new(
            Table::Devices.file_schema(),
            vec![
                Arc::new(StringArray::from_iter_values((0..N).map(uuid))),
                Arc::new(StringArray::from_iter_values((0..N).map(mac))),
                Arc::new(TimestampMicrosecondArray::from(vec![0; N]).with_timezone("UTC")),
            ],
        )
        .unwrap();
        transaction.write_file(Table::Devices, None, &[devices]).await.unwrap();
        transaction
            .write_file(Table::Observations, Some(day), &[batch])
            .await
            .unwrap();
        transaction.commit().await.unwrap();
        let identifiers = Some(Arc::new(Identifiers::new(keys, EPOCH, ephemeral::DEFAULT_TOLERANCE)));
        let options = SessionOptions {
            identifiers: identifiers.clone(),
            ..SessionOptions::default()
        };
        let factory = SessionFactory::new(store.clone(), options).unwrap();
        let reader = IndexReader::new(store.clone(), identifiers);
        let (from, to) = (DAY_START, DAY_START + 86_400_000_000 - 1);

        let mut wanted: Vec<String> = (0..N).step_by(7).map(uuid).collect();
        wanted.sort();
        let by_definition = sorted(
            expected
                .iter()
                .flat_map(|(a, b, at)| [(a, b, at, true), (b, a, at, false)])
                .filter(|(a, _, _, _)| wanted.contains(a))
                .map(|(a, b, at, a_heard)| Edge {
                    a: a.clone(),
                    b: b.clone(),
                    at: *at,
                    a_heard,
                })
                .collect(),
        );
        assert!(by_definition.len() > 100, "{} edges", by_definition.len());
        assert_eq!(from_view(&factory, &wanted).await, by_definition);
        let found = reader.encounters(&wanted, from, to).await.unwrap();
        assert!(found.uncovered_days.is_empty());
        assert_eq!(sorted(found.edges), by_definition);
        let counters = reader.counters();
        assert!(
            counters.replayed_identifiers > 0 && counters.unknown_identifiers > 0,
            "{counters:?}"
        );

        // Without the keys, no identifier is anyone: only the MAC sightings remain.
        let blind = IndexReader::new(store.clone(), None);
        // (Sighting i is at minute i.)
        let macs_only: Vec<Edge> = by_definition
            .iter()
            .filter(|e| ((e.at - DAY_START) / 60_000_000) % 5 == 0)
            .cloned()
            .collect();
        assert_eq!(
            sorted(blind.encounters(&wanted, from, to).await.unwrap().edges),
            macs_only
        );

        // The day scan (no companions) finds the same.
        for file in store.list_files(Table::ObservedIndex).await.unwrap() {
            store.object_store().delete(&file).await.unwrap();
        }
        let found = reader.encounters(&wanted, from, to).await.unwrap();
        assert_eq!(found.uncovered_days.len(), 1);
        assert_eq!(sorted(found.edges), by_definition);
    }
}
