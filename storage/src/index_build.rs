//! Builds the encounter index of a day (see `proxima_engine::index`) from its current files.
//!
//! A build lists the files the day's index depends on, writes the day's
//! `encounters` sorted by `a` and `at` as one new index file that records
//! that list, publishes it in a transaction, then deletes the day's older
//! index files. Readers pick the file whose recorded sources match the store,
//! so a crash between publishing and deleting leaves at most a stale file
//! that the next build removes.

use chrono::NaiveDate;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use parquet::file::metadata::KeyValue;
use proxima_engine::index::{SOURCES_KEY, encode_sources, sources};
use proxima_engine::{DayPartition, SessionFactory, Table};
use tracing::info;

use crate::error::Result;
use crate::writer::{CommitSummary, PartitionWriter};

/// Rebuilds the encounter index of `day`; returns what was published (nothing if the day has no observations).
pub async fn build_day(factory: &SessionFactory, writer: &PartitionWriter, day: NaiveDate) -> Result<CommitSummary> {
    let store = factory.store();
    let prefix = DayPartition {
        table: Table::EncounterIndex,
        day,
    }
    .prefix(store.root());
    let old: Vec<Path> = store
        .object_store()
        .list(Some(&prefix))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await?;
    let sources = sources(store, day).await?;
    let mut summary = CommitSummary::default();
    if !sources.is_empty() {
        let ctx = factory.session().await?;
        let sql = format!(
            "SELECT a, b, at FROM encounters WHERE day = DATE '{}' ORDER BY a, at",
            day.format("%Y-%m-%d")
        );
        let rows = ctx.sql(&sql).await?.execute_stream().await?;
        let metadata = vec![KeyValue::new(SOURCES_KEY.to_string(), encode_sources(&sources))];
        let mut transaction = writer.begin();
        if let Err(e) = transaction
            .write_stream(Table::EncounterIndex, Some(day), 0, metadata, rows)
            .await
        {
            transaction.abort().await?;
            return Err(e);
        }
        summary = transaction.commit().await?;
    }
    for location in &old {
        store.object_store().delete(location).await?;
    }
    info!(%day, rows = summary.rows, bytes = summary.bytes, replaced = old.len(), "encounter index built");
    Ok(summary)
}

/// Rebuilds the encounter index of every day that has observations; `progress` is called after each day.
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
                    });
                }
            }
        }
        edges.sort_by(|x, y| (&x.a, x.at, &x.b).cmp(&(&y.a, y.at, &y.b)));
        edges
    }

    #[tokio::test]
    async fn lookups_read_a_few_pages_and_stale_days_are_reported() {
        let store = Store::in_memory();
        let writer = PartitionWriter::new(store.clone(), "test");
        let day = proxima_engine::schema::date_from_epoch_days((DAY_START / 86_400_000_000) as i32);
        let mut transaction = writer.begin();
        transaction
            .write_file(Table::Devices, None, &[devices()])
            .await
            .unwrap();
        transaction
            .write_file(Table::Observations, Some(day), &[observations(0..DEVICES)])
            .await
            .unwrap();
        transaction.commit().await.unwrap();
        let factory = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();
        let built = build_day(&factory, &writer, day).await.unwrap();
        assert_eq!(built.rows, 2 * DEVICES as u64, "every sighting in both directions");

        let reader = IndexReader::new(store.clone());
        let (from, to) = (DAY_START, DAY_START + 86_400_000_000 - 1);
        let keys = vec![uuid(5)];
        let mut found = reader.encounters(&keys, from, to).await.unwrap();
        found.edges.sort_by(|x, y| (&x.a, x.at, &x.b).cmp(&(&y.a, y.at, &y.b)));
        assert_eq!(found.edges, expected(&keys));
        assert!(found.uncovered_days.is_empty());
        let read = reader.counters().rows;
        assert!(
            read > 0 && read <= 2 * 1024,
            "one device's rows are a page or two, read {read}"
        );

        let mut keys: Vec<String> = (100..140).map(uuid).collect();
        keys.sort();
        let mut found = reader.encounters(&keys, from, DAY_START + 1_000_000_000).await.unwrap();
        found.edges.sort_by(|x, y| (&x.a, x.at, &x.b).cmp(&(&y.a, y.at, &y.b)));
        let in_window: Vec<Edge> = expected(&keys)
            .into_iter()
            .filter(|e| e.at <= DAY_START + 1_000_000_000)
            .collect();
        assert_eq!(found.edges, in_window);

        // A new file for the day makes the index stale: the day is reported, not answered.
        let mut transaction = writer.begin();
        transaction
            .write_file(Table::Observations, Some(day), &[observations(0..10)])
            .await
            .unwrap();
        transaction.commit().await.unwrap();
        let found = reader.encounters(&keys, from, to).await.unwrap();
        assert!(found.edges.is_empty());
        assert_eq!(found.uncovered_days, vec![proxima_engine::schema::epoch_days(day)]);

        // Rebuilt, it answers again, and the old index file is gone.
        build_day(&factory, &writer, day).await.unwrap();
        let found = reader.encounters(&[uuid(5)], from, to).await.unwrap();
        assert!(found.uncovered_days.is_empty());
        let twice = expected(&[uuid(5)]).len() + expected_from(&[uuid(5)], 0..10).len();
        assert_eq!(found.edges.len(), twice, "the day now holds sightings 0..10 twice");
        let index_files = store.list_files(Table::EncounterIndex).await.unwrap();
        assert_eq!(index_files.len(), 1);
    }
}
