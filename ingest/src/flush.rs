//! The flusher: acknowledged rows from the WAL's buffer into Parquet files in the store.
//!
//! Every `--flush-interval` (and before a case is traced) the WAL is rotated
//! and its buffer written as one [`crate::Transaction`]: one file per table and
//! day, sorted for lookups, each recording the WAL's id and last sequence
//! number ([`WAL_KEY`]). Only after the commit are the closed WAL segments
//! deleted; if the commit fails the rows are kept and tried again, and the
//! segments stay on disk, so a crash at any point loses nothing and
//! [`committed_through`] keeps a replay from storing anything twice.

use std::collections::{BTreeSet, HashMap};

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::TimestampMicrosecondType;
use chrono::NaiveDate;
use futures::TryStreamExt;
use object_store::path::Path;
use parquet::file::metadata::KeyValue;
use proxima_engine::{DayPartition, Store, Table, schema};
use tokio::sync::Mutex;
use tracing::{info, warn};
use uuid::Uuid;

use crate::error::Result;
use crate::import::sort_for_storage;
use crate::wal::{Buffer, Rotation, WAL_KEY, Wal, encode_marks, parse_marks};
use crate::writer::{CommitSummary, PartitionWriter};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Moves the WAL's buffer into the store; one flush at a time.
#[derive(Debug)]
pub struct Flusher {
    wal: Wal,
    writer: PartitionWriter,
    /// Rows taken from the WAL whose commit failed: written with the next flush.
    pending: Mutex<Option<Rotation>>,
}

/// What one flush wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flushed {
    /// Rows written.
    pub rows: u64,
    /// The commit.
    pub commit: CommitSummary,
    /// WAL segments deleted.
    pub segments_deleted: usize,
}

impl Flusher {
    /// A flusher of `wal` into `writer`'s store.
    pub fn new(wal: Wal, writer: PartitionWriter) -> Self {
        Self {
            wal,
            writer,
            pending: Mutex::new(None),
        }
    }

    /// Writes everything acknowledged so far to the store; after it returns, a query sees it.
    pub async fn flush(&self) -> Result<Flushed> {
        let mut pending = self.pending.lock().await;
        let rotation = self.wal.rotate().await?;
        let mut rotation = match pending.take() {
            Some(mut earlier) => {
                earlier.buffer.append(rotation.buffer);
                earlier.through = rotation.through;
                earlier.segments.extend(rotation.segments);
                earlier
            }
            None => rotation,
        };
        if rotation.buffer.is_empty() {
            let deleted = delete_segments(&rotation.segments);
            return Ok(Flushed {
                segments_deleted: deleted,
                ..Flushed::default()
            });
        }
        match write_buffer(&self.writer, &rotation.buffer, rotation.wal_id, rotation.through).await {
            Ok(commit) => {
                let deleted = delete_segments(&rotation.segments);
                Ok(Flushed {
                    rows: rotation.buffer.rows,
                    commit,
                    segments_deleted: deleted,
                })
            }
            Err(e) => {
                warn!(error = %e, rows = rotation.buffer.rows, "flush failed; the rows stay in the write-ahead log and are retried");
                rotation.segments.sort();
                *pending = Some(rotation);
                Err(e)
            }
        }
    }
}

fn delete_segments(segments: &[std::path::PathBuf]) -> usize {
    let mut deleted = 0;
    for segment in segments {
        match std::fs::remove_file(segment) {
            Ok(()) => deleted += 1,
            Err(e) => warn!(segment = %segment.display(), error = %e, "could not delete a flushed WAL segment"),
        }
    }
    deleted
}

/// Writes a buffer as one transaction: a file per table and day.
async fn write_buffer(writer: &PartitionWriter, buffer: &Buffer, wal_id: Uuid, through: u64) -> Result<CommitSummary> {
    let marks = encode_marks(&HashMap::from([(wal_id.to_string(), through)]));
    let mut transaction = writer.begin();
    for (&table, batches) in &buffer.tables {
        let all = concat_batches(&table.file_schema(), batches)?;
        for (day, rows) in split_by_day(table, &all)? {
            let sorted = sort_for_storage(table, &rows)?;
            let metadata = vec![KeyValue::new(WAL_KEY.to_string(), marks.clone())];
            let stream = futures::stream::iter([Ok::<_, crate::Error>(sorted)]);
            if let Err(e) = transaction
                .write_stream(table, day, rows.num_rows(), metadata, stream)
                .await
            {
                transaction.abort().await?;
                return Err(e);
            }
        }
    }
    let commit = transaction.commit().await?;
    info!(rows = buffer.rows, files = commit.files, "flushed");
    Ok(commit)
}

/// Splits rows of `table` by the UTC day of its time column (one group if not partitioned).
pub fn split_by_day(table: Table, batch: &RecordBatch) -> Result<Vec<(Option<NaiveDate>, RecordBatch)>> {
    let Some(time_column) = table.time_column() else {
        return Ok(vec![(None, batch.clone())]);
    };
    let times = batch
        .column(batch.schema().index_of(time_column)?)
        .as_primitive::<TimestampMicrosecondType>();
    let days: Vec<i32> = times
        .values()
        .iter()
        .map(|t| t.div_euclid(MICROS_PER_DAY) as i32)
        .collect();
    let distinct: BTreeSet<i32> = days.iter().copied().collect();
    if distinct.len() == 1 {
        let day = *distinct.first().expect("one day");
        return Ok(vec![(Some(schema::date_from_epoch_days(day)), batch.clone())]);
    }
    let mut out = Vec::with_capacity(distinct.len());
    for day in distinct {
        let mask: arrow::array::BooleanArray = days.iter().map(|d| Some(*d == day)).collect();
        out.push((
            Some(schema::date_from_epoch_days(day)),
            filter_record_batch(batch, &mask)?,
        ));
    }
    Ok(out)
}

/// The last sequence number of WAL `wal_id` that the store holds, from the [`WAL_KEY`]
/// metadata of `tables`' files written since `oldest_micros` (minus an hour of slack).
pub async fn committed_through(store: &Store, wal_id: Uuid, tables: &[Table], oldest_micros: i64) -> Result<u64> {
    let since_secs = (oldest_micros / 1_000_000).saturating_sub(3600).max(0) as u64;
    let id = wal_id.to_string();
    let mut through = 0;
    for &table in tables {
        let prefixes: Vec<Path> = if table.is_day_partitioned() {
            let first_day = schema::date_from_epoch_days((since_secs / 86_400) as i32);
            store
                .list_days(table)
                .await?
                .into_iter()
                .filter(|p| p.day >= first_day)
                .map(|p: DayPartition| p.prefix(store.root()))
                .collect()
        } else {
            vec![table.prefix(store.root())]
        };
        for prefix in prefixes {
            let files: Vec<Path> = store
                .object_store()
                .list(Some(&prefix))
                .try_filter(|meta| {
                    let recent = written_since(&meta.location, since_secs);
                    futures::future::ready(recent)
                })
                .map_ok(|meta| meta.location)
                .try_collect()
                .await?;
            for file in files {
                let marks = file_marks(store, &file).await?;
                if let Some(&seq) = marks.get(&id) {
                    through = through.max(seq);
                }
            }
        }
    }
    Ok(through)
}

/// Whether a data file's UUID v7 name says it was written at or after `since_secs`.
fn written_since(location: &Path, since_secs: u64) -> bool {
    location
        .filename()
        .and_then(|name| name.strip_prefix("part-"))
        .and_then(|name| name.strip_suffix(".parquet"))
        .and_then(|id| Uuid::parse_str(id).ok())
        .and_then(|id| id.get_timestamp())
        .map(|ts| ts.to_unix().0 >= since_secs)
        .unwrap_or(false)
}

/// The [`WAL_KEY`] marks of a Parquet file.
pub async fn file_marks(store: &Store, file: &Path) -> Result<HashMap<String, u64>> {
    let key_values = proxima_engine::index::file_key_values(store, file).await?;
    Ok(key_values.get(WAL_KEY).map(|v| parse_marks(v)).unwrap_or_default())
}

/// Merges WAL marks, keeping the highest sequence per WAL (for compaction).
pub fn merge_marks(all: impl IntoIterator<Item = HashMap<String, u64>>) -> HashMap<String, u64> {
    let mut merged: HashMap<String, u64> = HashMap::new();
    for marks in all {
        for (id, seq) in marks {
            let entry = merged.entry(id).or_default();
            *entry = (*entry).max(seq);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v7_names_tell_their_age() {
        let path = proxima_engine::paths::new_data_file(&Path::from("r"), Table::Devices, None);
        let now = chrono::Utc::now().timestamp() as u64;
        assert!(written_since(&path, now - 5));
        assert!(!written_since(&path, now + 5));
        assert!(!written_since(&Path::from("r/devices/other.parquet"), 0));
    }
}
