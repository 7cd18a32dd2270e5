//! Compaction: a day's small flush files merged into one file sorted for lookups.
//!
//! Every flush adds one small file per table and day. When a day folder of
//! the recent days holds [`MIN_FILES`] live files or more (or, for a day that
//! is over, two or more), they are merged — sorted by the table's lookup
//! column and time, with bloom filters and page statistics — into one file
//! that carries the merged WAL marks of its sources. The swap is made safe for
//! readers by a lineage marker (see `proxima_engine::lineage`): written
//! before the merged file is published, it makes every listing show either the
//! small files or the merged file, never both and never neither. The small
//! files are deleted after [`GRACE`], longer than any query may run. After an
//! observation day is compacted its encounter index is rebuilt. Files of
//! [`LARGE_FILE_BYTES`] or more are not merged again (so a busy day is not
//! rewritten every few flushes).

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use chrono::{Days, NaiveDate};
use datafusion::logical_expr::col;
use datafusion::prelude::ParquetReadOptions;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt, PutPayload};
use parquet::file::metadata::KeyValue;
use proxima_engine::lineage::{MARKER_PREFIX, MARKER_SUFFIX, Marker, is_marker, read_marker, resolve};
use proxima_engine::{DayPartition, SessionFactory, Store, Table};
use tracing::{info, warn};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::flush::{file_marks, merge_marks};
use crate::wal::{WAL_KEY, encode_marks};
use crate::writer::PartitionWriter;

/// Small live files in a day folder of today that make it due for compaction.
pub const MIN_FILES: usize = 8;
/// Files at least this large are left alone: merging them again and again would rewrite
/// the whole day every few flushes (write amplification), for little gain in lookups.
pub const LARGE_FILE_BYTES: u64 = 256 << 20;
/// How long replaced files stay after a compaction (queries that listed them still read them).
pub const GRACE: Duration = Duration::from_secs(15 * 60);
/// A marker whose merged file never appeared is abandoned after this.
const ABANDONED_AFTER: Duration = Duration::from_secs(2 * 3600);
/// Days back from today that compaction looks at (the tracing window and a margin).
pub const RECENT_DAYS: u64 = 5;

/// A folder's files as readers see them, its markers, and what the markers decide.
struct Folder {
    live: Vec<ObjectMeta>,
    markers: Vec<(Path, Marker)>,
    present: HashSet<String>,
    losers: HashSet<Path>,
}

async fn folder(store: &Store, prefix: &Path) -> Result<Folder> {
    let objects: Vec<ObjectMeta> = store.object_store().list_with_delimiter(Some(prefix)).await?.objects;
    let present: HashSet<String> = objects.iter().map(|o| o.location.to_string()).collect();
    let mut markers = Vec::new();
    for object in objects.iter().filter(|o| is_marker(&o.location)) {
        match read_marker(store.object_store().as_ref(), &object.location).await {
            Ok(marker) => markers.push((object.location.clone(), marker)),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let resolution = resolve(&mut markers, |p| present.contains(p));
    let live = objects
        .into_iter()
        .filter(|o| o.location.as_ref().ends_with(".parquet") && !resolution.hidden.contains(o.location.as_ref()))
        .collect();
    Ok(Folder {
        live,
        markers,
        present,
        losers: resolution.losers,
    })
}

/// Compacts what is due in the recent days of every REST table, sweeps old markers, and
/// rebuilds the encounter index of compacted observation days. Returns the compactions run.
pub async fn compact_due(factory: &SessionFactory, writer: &PartitionWriter, today: NaiveDate) -> Result<usize> {
    let store = factory.store();
    let first = today.checked_sub_days(Days::new(RECENT_DAYS)).unwrap_or(today);
    let mut runs = 0;
    // Every table but the encounter index, which is rebuilt whole, never merged.
    for table in Table::ALL.into_iter().filter(|t| *t != Table::EncounterIndex) {
        let folders: Vec<(Option<NaiveDate>, Path)> = if table.is_day_partitioned() {
            store
                .list_days(table)
                .await?
                .into_iter()
                .filter(|p| p.day >= first)
                .map(|p| (Some(p.day), p.prefix(store.root())))
                .collect()
        } else {
            vec![(None, table.prefix(store.root()))]
        };
        for (day, prefix) in folders {
            // One listing serves both: a sweep deletes only files the listing already hides.
            let current = folder(store, &prefix).await?;
            sweep_listed(store, &current).await?;
            let small: Vec<ObjectMeta> = current.live.into_iter().filter(|f| f.size < LARGE_FILE_BYTES).collect();
            let is_over = day.is_some_and(|d| d < today);
            let due = small.len() >= MIN_FILES || (is_over && small.len() >= 2);
            if !due {
                continue;
            }
            compact(factory, writer, table, day, &prefix, small).await?;
            runs += 1;
            if table == Table::Observations
                && let Some(day) = day
            {
                crate::index::build_day(factory, writer, day).await?;
            }
        }
    }
    Ok(runs)
}

/// Rebuilds the encounter index of the recent finished days whose index went stale for
/// another reason than their own compaction (a devices file added by registrations, which
/// can turn old sightings into encounters). Run hourly: until then, traces read those days
/// from the `encounters` view (slower, never wrong). Returns the days rebuilt.
pub async fn rebuild_stale_indexes(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    today: NaiveDate,
) -> Result<usize> {
    let store = factory.store();
    let first = today.checked_sub_days(Days::new(RECENT_DAYS)).unwrap_or(today);
    let mut rebuilt = 0;
    for day in store.list_days(Table::Observations).await? {
        if day.day >= first && factory.index().is_stale(day.day).await? {
            crate::index::build_day(factory, writer, day.day).await?;
            rebuilt += 1;
        }
    }
    Ok(rebuilt)
}

/// Merges `files` of one folder into one sorted file, published behind a lineage marker.
pub async fn compact(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    table: Table,
    day: Option<NaiveDate>,
    prefix: &Path,
    files: Vec<ObjectMeta>,
) -> Result<()> {
    let store = factory.store();
    let mut marks = Vec::with_capacity(files.len());
    for file in &files {
        marks.push(file_marks(store, &file.location).await?);
    }
    let marks = merge_marks(marks);
    let base = store.object_store_url().as_str().trim_end_matches('/').to_string();
    let urls: Vec<String> = files.iter().map(|f| format!("{base}/{}", f.location)).collect();
    let rows_hint: usize = files.len() * 100_000;
    let ctx = factory.session().await?;
    let schema = table.file_schema();
    let frame = ctx
        .read_parquet(urls, ParquetReadOptions::default().schema(&schema))
        .await?;
    let mut keys = vec![col(table.lookup_columns()[0]).sort(true, false)];
    if let Some(time) = table.time_column() {
        keys.push(col(time).sort(true, false));
    }
    let stream = frame.sort(keys)?.execute_stream().await?;
    let mut transaction = writer.begin();
    let metadata = vec![KeyValue::new(WAL_KEY.to_string(), encode_marks(&marks))];
    if let Err(e) = transaction.write_stream(table, day, rows_hint, metadata, stream).await {
        transaction.abort().await?;
        return Err(e);
    }
    let Some(merged) = transaction.staged_targets().pop() else {
        transaction.abort().await?;
        return Ok(());
    };
    let marker = Marker {
        merged: merged.to_string(),
        replaces: files.iter().map(|f| f.location.to_string()).collect(),
    };
    let marker_path = prefix
        .clone()
        .join(format!("{MARKER_PREFIX}{}{MARKER_SUFFIX}", Uuid::now_v7()));
    let body = serde_json::to_vec(&marker).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    if let Err(e) = store
        .object_store()
        .put(&marker_path, PutPayload::from(Bytes::from(body)))
        .await
    {
        transaction.abort().await?;
        return Err(e.into());
    }
    store.sync_local([&marker_path])?;
    let summary = transaction.commit().await?;
    info!(table = %table, day = ?day, files = files.len(), rows = summary.rows, bytes = summary.bytes, "compacted");
    Ok(())
}

/// The age of a marker, from the UUID v7 in its name.
fn marker_age(location: &Path) -> Option<Duration> {
    let name = location.filename()?;
    let id = name.strip_prefix(MARKER_PREFIX)?.strip_suffix(MARKER_SUFFIX)?;
    let (secs, _) = Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    let written = std::time::UNIX_EPOCH + Duration::from_secs(secs);
    Some(written.elapsed().unwrap_or_default())
}

/// Deletes what compactions older than [`GRACE`] replaced, then their markers; and markers
/// whose merged file never appeared.
pub async fn sweep(store: &Store, prefix: &Path) -> Result<()> {
    sweep_listed(store, &folder(store, prefix).await?).await
}

async fn sweep_listed(store: &Store, current: &Folder) -> Result<()> {
    for (path, marker) in &current.markers {
        let Some(age) = marker_age(path) else { continue };
        let published = current.present.contains(&marker.merged);
        let doomed: Vec<&str> = if published && current.losers.contains(path) {
            if age < GRACE {
                continue;
            }
            vec![marker.merged.as_str()]
        } else if published {
            if age < GRACE {
                continue;
            }
            marker.replaces.iter().map(String::as_str).collect()
        } else if age > ABANDONED_AFTER {
            vec![]
        } else {
            continue;
        };
        for file in doomed {
            match store.object_store().delete(&Path::from(file)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    warn!(file, error = %e, "could not delete a replaced file; the next sweep retries");
                    return Err(e.into());
                }
            }
        }
        store.object_store().delete(path).await?;
    }
    Ok(())
}

/// Lists live files of a day folder (for tests and tools).
pub async fn live_files(store: &Store, table: Table, day: NaiveDate) -> Result<Vec<Path>> {
    let prefix = DayPartition { table, day }.prefix(store.root());
    Ok(folder(store, &prefix)
        .await?
        .live
        .into_iter()
        .map(|o| o.location)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use proxima_engine::SessionOptions;

    use crate::synthetic::{PopulationSpec, generate};

    #[test]
    fn marker_names_tell_their_age() {
        let path = Path::from(format!("d/{MARKER_PREFIX}{}{MARKER_SUFFIX}", Uuid::now_v7()));
        assert!(marker_age(&path).unwrap() < Duration::from_secs(5));
        assert!(marker_age(&Path::from("d/part-x.parquet")).is_none());
    }

    async fn count(factory: &SessionFactory) -> i64 {
        let ctx = factory.session().await.unwrap();
        let batches = ctx
            .sql("SELECT count(*) FROM observations")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches[0].column(0).as_primitive::<Int64Type>().value(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_count_every_row_once_while_a_day_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let writer = PartitionWriter::new(store.clone(), "test");
        let today = proxima_engine::store::today_utc();
        let spec = PopulationSpec {
            devices: 300,
            days: 2,
            contacts_per_day: 5,
            seed: 7,
            start: today.pred_opt().unwrap(),
        };
        generate(&writer, &spec, |_| {}).await.unwrap();
        let factory = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();
        // Nine more small files in today's folder, as nine flushes would leave.
        let ctx = factory.session().await.unwrap();
        let sample = ctx
            .sql(&format!(
                "SELECT observer, observed, observed_at, duration_s, rssi, tx_power, location FROM observations \
                 WHERE day = DATE '{today}' LIMIT 50"
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        for _ in 0..9 {
            let mut transaction = writer.begin();
            transaction
                .write_file(Table::Observations, Some(today), &sample)
                .await
                .unwrap();
            transaction.commit().await.unwrap();
        }
        assert_eq!(live_files(&store, Table::Observations, today).await.unwrap().len(), 10);
        let before = count(&factory).await;

        let counting = {
            let factory = factory.clone();
            tokio::spawn(async move {
                let mut counts = Vec::new();
                for _ in 0..40 {
                    counts.push(count(&factory).await);
                }
                counts
            })
        };
        let runs = compact_due(&factory, &writer, today).await.unwrap();
        let counts = counting.await.unwrap();
        assert!(runs >= 1, "today's ten files are due");
        assert!(
            counts.iter().all(|c| *c == before),
            "{before} expected, counted {counts:?}"
        );
        assert_eq!(count(&factory).await, before);
        assert_eq!(live_files(&store, Table::Observations, today).await.unwrap().len(), 1);
        assert!(!factory.index().is_stale(today).await.unwrap(), "the index was rebuilt");
        // Within the grace period the replaced files stay (a running query may read them).
        let raw = crate::writer::list_files(&store, Table::Observations).await.unwrap();
        assert!(raw.len() >= 11, "{raw:?}");
        sweep(
            &store,
            &DayPartition {
                table: Table::Observations,
                day: today,
            }
            .prefix(store.root()),
        )
        .await
        .unwrap();
        assert_eq!(count(&factory).await, before);
    }
}
