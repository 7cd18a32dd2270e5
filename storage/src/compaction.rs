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
//! files are deleted after [`GRACE`], longer than any query may run. A day's
//! `observed_index` files are merged the same way, on their own (their row
//! count stays that of the day's observations throughout). Files of
//! [`LARGE_FILE_BYTES`] or more are not merged again (so a busy day is not
//! rewritten every few flushes).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use chrono::{DateTime, Days, NaiveDate, Utc};
use datafusion::execution::FunctionRegistry as _;
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::logical_expr::col;
use datafusion::prelude::ParquetReadOptions;
use futures::StreamExt as _;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt, PutPayload};
use parquet::file::metadata::KeyValue;
use proxima_engine::index::{file_key_values, is_current_companion};
use proxima_engine::lineage::{MARKER_PREFIX, MARKER_SUFFIX, Marker, is_marker, read_marker, resolve};
use proxima_engine::{DayPartition, SessionFactory, Store, Table};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::marks::{WAL_KEY, encode_marks, marks_in, merge_marks};
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

/// Compacts what is due in the recent days of every table and sweeps what compactions more
/// than `grace` ago replaced ([`GRACE`] by default). Returns the compactions run.
pub async fn compact_due(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<usize> {
    let store = factory.store();
    let today = now.date_naive();
    let first = today.checked_sub_days(Days::new(RECENT_DAYS)).unwrap_or(today);
    let mut runs = 0;
    for table in Table::ALL {
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
            sweep_listed(writer, &current, now, grace).await?;
            // Files a pending compaction (marker written, merged file not published, its
            // transaction not settled) may still replace are left to it: merging them again
            // would publish the same rows twice once it settles.
            let pending: HashSet<&str> = current
                .markers
                .iter()
                .filter(|(_, m)| !current.present.contains(&m.merged))
                .flat_map(|(_, m)| m.replaces.iter().map(String::as_str))
                .collect();
            let small: Vec<ObjectMeta> = current
                .live
                .iter()
                .filter(|f| f.size < LARGE_FILE_BYTES && !pending.contains(f.location.as_ref()))
                .cloned()
                .collect();
            let is_over = day.is_some_and(|d| d < today);
            let due = small.len() >= MIN_FILES || (is_over && small.len() >= 2);
            if !due {
                continue;
            }
            if compact(factory, writer, table, day, &prefix, small).await? {
                runs += 1;
            }
        }
    }
    Ok(runs)
}

/// Merges `files` of one folder into one sorted file, published behind a lineage marker;
/// `false` if nothing was merged (no rows, or companions in an older layout, which
/// `index_build::backfill_missing` rebuilds instead).
pub async fn compact(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    table: Table,
    day: Option<NaiveDate>,
    prefix: &Path,
    files: Vec<ObjectMeta>,
) -> Result<bool> {
    if matches!(table, Table::ContactPartials | Table::CasePartials) {
        // A day's rebuild replaces the partial files it listed: merging them meanwhile
        // would leave the merged file beside the rebuilt one.
        let right = crate::rollup::RollupWriter::acquire(factory.store()).await?;
        let merged = compact_files(factory, writer, table, day, prefix, files).await;
        right.release().await?;
        return merged;
    }
    compact_files(factory, writer, table, day, prefix, files).await
}

/// [`compact`], with whatever right it needs held.
async fn compact_files(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    table: Table,
    day: Option<NaiveDate>,
    prefix: &Path,
    files: Vec<ObjectMeta>,
) -> Result<bool> {
    let store = factory.store();
    let mut marks = Vec::with_capacity(files.len());
    for file in &files {
        let key_values = file_key_values(store, &file.location).await?;
        if table == Table::ObservedIndex && !is_current_companion(&key_values) {
            // An older layout: `backfill_missing` rebuilds the day's companions, not us.
            info!(table = %table, day = ?day, file = %file.location, "companion in an older layout; left to the index rebuild");
            return Ok(false);
        }
        marks.push(marks_in(file.location.as_ref(), &key_values)?);
    }
    let marks = merge_marks(marks);
    let base = store.object_store_url().as_str().trim_end_matches('/').to_string();
    let urls: Vec<String> = files.iter().map(|f| format!("{base}/{}", f.location)).collect();
    let rows_hint: usize = files.len() * 100_000;
    debug!(table = %table, day = ?day, files = files.len(), "compacting");
    let ctx = factory.session().await?;
    let schema = table.file_schema();
    let frame = ctx
        .read_parquet(urls, ParquetReadOptions::default().schema(&schema))
        .await?;
    let frame = if table == Table::ContactPartials {
        // Partial rows of one hour and cell add up: merged into one, so that a day's
        // partials shrink to a row per hour and cell however often it was flushed.
        let merge = ctx.udaf("hll_merge")?;
        frame
            .aggregate(
                vec![col("hour"), col("cell")],
                vec![
                    sum(col("sightings")).alias("sightings"),
                    sum(col("close_contacts")).alias("close_contacts"),
                    merge.call(vec![col("devices")]).alias("devices"),
                ],
            )?
            .select_columns(&["hour", "cell", "sightings", "close_contacts", "devices"])?
    } else if table == Table::CasePartials {
        // Counts of one hour and cell add up likewise.
        let counts: Vec<String> = schema.fields().iter().skip(2).map(|f| f.name().clone()).collect();
        frame.aggregate(
            vec![col("hour"), col("cell")],
            counts.iter().map(|c| sum(col(c.as_str())).alias(c.as_str())).collect(),
        )?
    } else {
        frame
    };
    let mut keys = vec![col(table.lookup_columns()[0]).sort(true, false)];
    if let Some(time) = table.time_column() {
        keys.push(col(time).sort(true, false));
    }
    let stream = frame.sort(keys)?.execute_stream().await?;
    // The file's own schema (an aggregate's sums are nullable; these never hold a null).
    let stream = stream.map(move |batch| {
        let batch = batch?;
        Ok::<_, Error>(RecordBatch::try_new(Arc::clone(&schema), batch.columns().to_vec())?)
    });
    // The rows merged already have their `observed_index` companions, merged on their own.
    let mut transaction = writer.begin().without_companions();
    let metadata = vec![KeyValue::new(WAL_KEY.to_string(), encode_marks(&marks))];
    if let Err(e) = transaction.write_stream(table, day, rows_hint, metadata, stream).await {
        transaction.abort().await?;
        return Err(e);
    }
    let replaces = files.iter().map(|f| f.location.to_string()).collect();
    let Some(summary) = publish_replacing(store, transaction, prefix, replaces).await? else {
        return Ok(false);
    };
    info!(table = %table, day = ?day, files = files.len(), rows = summary.rows, bytes = summary.bytes, "compacted");
    Ok(true)
}

/// Publishes the one file `transaction` staged as the replacement of `replaces` (files of
/// the folder `prefix`): a lineage marker first, then the commit, so that every listing
/// shows either the old files or the new one. `None` (the transaction aborted) if nothing
/// was staged. The replaced files are deleted by [`sweep`] after [`GRACE`].
pub(crate) async fn publish_replacing(
    store: &Store,
    transaction: crate::writer::Transaction,
    prefix: &Path,
    replaces: Vec<String>,
) -> Result<Option<crate::CommitSummary>> {
    let Some(merged) = transaction.staged_targets().pop() else {
        transaction.abort().await?;
        return Ok(None);
    };
    let marker = Marker {
        transaction: Some(transaction.id().to_string()),
        merged: merged.to_string(),
        replaces,
    };
    let marker_path = prefix
        .clone()
        .join(format!("{MARKER_PREFIX}{}{MARKER_SUFFIX}", Uuid::now_v7()));
    let body = serde_json::to_vec(&marker).map_err(|e| Error::Invalid(e.to_string()))?;
    if let Err(e) = store
        .object_store()
        .put(&marker_path, PutPayload::from(Bytes::from(body)))
        .await
    {
        transaction.abort().await?;
        return Err(e.into());
    }
    store.sync_local([&marker_path])?;
    let summary = match transaction.commit().await {
        Ok(summary) => summary,
        // Committed (or perhaps): the marker waits for the sweep to settle the transaction.
        Err(e @ (Error::Unpublished { .. } | Error::InDoubt { .. })) => return Err(e),
        Err(e) => {
            // Not committed, and settled so: the marker has nothing to wait for.
            if let Err(cleanup) = store.object_store().delete(&marker_path).await {
                warn!(marker = %marker_path, error = %cleanup, "could not delete the marker of a failed compaction; the sweep will");
            }
            return Err(e);
        }
    };
    Ok(Some(summary))
}

/// The live Parquet files of a folder, as readers see them.
pub(crate) async fn live_in(store: &Store, prefix: &Path) -> Result<Vec<ObjectMeta>> {
    Ok(folder(store, prefix).await?.live)
}

/// When a marker was written, from the UUID v7 in its name.
fn marker_written(location: &Path) -> Option<DateTime<Utc>> {
    let name = location.filename()?;
    let id = name.strip_prefix(MARKER_PREFIX)?.strip_suffix(MARKER_SUFFIX)?;
    let (secs, nanos) = Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    DateTime::from_timestamp(secs as i64, nanos)
}

/// Deletes what compactions (and erasures) more than `grace` before `now` replaced, then
/// their markers; and markers whose merged file never appeared, once their transaction is
/// settled.
pub async fn sweep(store: &Store, prefix: &Path, now: DateTime<Utc>, grace: Duration) -> Result<()> {
    let writer = PartitionWriter::new(store.clone(), "compaction");
    sweep_listed(&writer, &folder(store, prefix).await?, now, grace).await
}

async fn sweep_listed(writer: &PartitionWriter, current: &Folder, now: DateTime<Utc>, grace: Duration) -> Result<()> {
    let store = writer.store();
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let abandoned_after = chrono::Duration::from_std(ABANDONED_AFTER).expect("the abandonment period fits");
    for (path, marker) in &current.markers {
        let Some(written) = marker_written(path) else { continue };
        let age = now - written;
        let published = current.present.contains(&marker.merged);
        let is_loser = current.losers.contains(path);
        let (doomed, drop_marker): (Vec<&str>, bool) = if published && is_loser {
            if age < grace {
                continue;
            }
            (vec![marker.merged.as_str()], true)
        } else if published {
            if age < grace {
                continue;
            }
            // Its marker stays while a losing marker over the same files remains: without
            // it that loser would count as the winner, and its merged file (the same rows)
            // would show beside this one.
            let contested = current.markers.iter().any(|(other, other_marker)| {
                current.losers.contains(other) && other_marker.replaces.iter().any(|f| marker.replaces.contains(f))
            });
            (marker.replaces.iter().map(String::as_str).collect(), !contested)
        } else if age > abandoned_after {
            // The merged file never appeared. If its transaction did commit, publish it now
            // (the marker is then an ordinary one); only a transaction that is gone for good
            // lets the marker go, so no later recovery can publish the merged file without it.
            if let Some(transaction) = marker.transaction.as_deref().and_then(|t| Uuid::parse_str(t).ok())
                && writer.settle(transaction).await?
            {
                warn!(marker = %path, "published the merged file of an interrupted compaction");
                continue;
            }
            (vec![], true)
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
        if drop_marker {
            store.object_store().delete(path).await?;
        }
    }
    Ok(())
}

/// [`sweep`]s every folder of every table (after an erasure, whose rewrites reach days
/// compaction no longer looks at).
pub async fn sweep_everywhere(store: &Store, now: DateTime<Utc>, grace: Duration) -> Result<()> {
    let writer = PartitionWriter::new(store.clone(), "compaction");
    for table in Table::ALL {
        let prefixes: Vec<Path> = if table.is_day_partitioned() {
            store
                .list_days(table)
                .await?
                .into_iter()
                .map(|p| p.prefix(store.root()))
                .collect()
        } else {
            vec![table.prefix(store.root())]
        };
        for prefix in prefixes {
            sweep_listed(&writer, &folder(store, &prefix).await?, now, grace).await?;
        }
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
    use proxima_engine::SessionOptions;

    use super::*;
    use crate::testing::{Op, failing_store, observations, stored};

    /// A finished day (two days ago) with two small observation files of 5 and 7 rows.
    async fn day_with_two_files(store: &Store) -> (SessionFactory, PartitionWriter, NaiveDate, Path, Vec<ObjectMeta>) {
        let writer = PartitionWriter::new(store.clone(), "test");
        let day = (Utc::now() - chrono::Duration::days(2)).date_naive();
        for (tag, n) in [(1, 5), (2, 7)] {
            let mut transaction = writer.begin();
            transaction
                .write_file(Table::Observations, Some(day), &[observations(tag, n, 2)])
                .await
                .unwrap();
            transaction.commit().await.unwrap();
        }
        let prefix = DayPartition {
            table: Table::Observations,
            day,
        }
        .prefix(store.root());
        let files = folder(store, &prefix).await.unwrap().live;
        assert_eq!(files.len(), 2);
        let factory = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();
        (factory, writer, day, prefix, files)
    }

    fn markers_written(current: &Folder) -> Vec<DateTime<Utc>> {
        let mut times: Vec<_> = current.markers.iter().filter_map(|(p, _)| marker_written(p)).collect();
        times.sort();
        times
    }

    #[tokio::test]
    async fn a_losing_compaction_never_becomes_a_winner() {
        let (store, _) = failing_store();
        let (factory, writer, day, prefix, files) = day_with_two_files(&store).await;
        // Two processes compact the same files: both publish a merged file.
        compact(
            &factory,
            &writer,
            Table::Observations,
            Some(day),
            &prefix,
            files.clone(),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        compact(&factory, &writer, Table::Observations, Some(day), &prefix, files)
            .await
            .unwrap();
        assert_eq!(stored(&store).await, 12, "the loser's merged file is hidden");
        let times = markers_written(&folder(&store, &prefix).await.unwrap());
        let (winner, loser) = (times[0], times[1]);
        assert!(loser > winner);
        // The winner is past its grace period, the loser not yet.
        let now = loser + chrono::Duration::from_std(GRACE).unwrap() - chrono::Duration::milliseconds(1);
        sweep(&store, &prefix, now, GRACE).await.unwrap();
        assert_eq!(stored(&store).await, 12, "the winner's marker must outlive its loser");
        // Later both are past it: one merged file is left, and the rows once.
        sweep(&store, &prefix, now + chrono::Duration::minutes(1), GRACE)
            .await
            .unwrap();
        sweep(&store, &prefix, now + chrono::Duration::minutes(2), GRACE)
            .await
            .unwrap();
        assert_eq!(stored(&store).await, 12);
        let left = folder(&store, &prefix).await.unwrap();
        assert_eq!(left.live.len(), 1, "{:?}", left.live);
        assert!(left.markers.is_empty(), "{:?}", left.markers);
    }

    #[tokio::test]
    async fn an_abandoned_marker_waits_for_its_transaction() {
        let (store, failing) = failing_store();
        let (factory, writer, day, prefix, files) = day_with_two_files(&store).await;
        // The compaction commits (its manifest is durable) but publishing the merged file
        // fails, and so does the commit's own retry: the marker waits with no merged file.
        failing.fail(Op::Rename, 1, "observations/day=", 2);
        let err = compact(&factory, &writer, Table::Observations, Some(day), &prefix, files)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("committed but not yet published"), "{err}");
        assert_eq!(stored(&store).await, 12);
        // Meanwhile no compaction takes the same files again (it would publish the rows a
        // second time once the first one settles).
        let runs = compact_due(&factory, &writer, Utc::now(), GRACE).await.unwrap();
        assert_eq!(folder(&store, &prefix).await.unwrap().live.len(), 2);
        assert_eq!(runs, 1, "only the day's observed_index files were due");
        // Hours later the sweep finds the marker abandoned ...
        let later = Utc::now() + chrono::Duration::hours(3);
        sweep(&store, &prefix, later, GRACE).await.unwrap();
        assert_eq!(stored(&store).await, 12);
        // ... and a recovery (any writer's start) rolls the transaction forward.
        writer.recover().await.unwrap();
        assert_eq!(
            stored(&store).await,
            12,
            "the merged file must never show beside its sources"
        );
        sweep(&store, &prefix, later, GRACE).await.unwrap();
        assert_eq!(stored(&store).await, 12);
        assert_eq!(folder(&store, &prefix).await.unwrap().live.len(), 1);
    }

    #[test]
    fn marker_names_tell_their_age() {
        let path = Path::from(format!("d/{MARKER_PREFIX}{}{MARKER_SUFFIX}", Uuid::now_v7()));
        let age = Utc::now() - marker_written(&path).unwrap();
        assert!(age < chrono::Duration::seconds(5), "{age}");
        assert!(marker_written(&Path::from("d/part-x.parquet")).is_none());
    }
}
