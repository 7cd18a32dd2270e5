//! WAL marks: which acknowledged records a Parquet file already holds.
//!
//! Every file the flusher writes records, in its key-value metadata under
//! [`WAL_KEY`], a JSON map from WAL id to the last sequence number of that
//! WAL whose rows it holds; a compacted file carries the merge of its
//! sources' marks. On start, [`committed_through`] reads them back so that a
//! replay stores only what the store does not hold yet. A mark that cannot be
//! read is an error, never "no marks": taking it as empty would make a
//! replay store acknowledged rows a second time.

use std::collections::HashMap;

use futures::TryStreamExt;
use object_store::path::Path;
use proxima_engine::paths::data_file_written_at;
use proxima_engine::{Store, Table};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Parquet metadata key: JSON map from WAL id to the last sequence number the file holds.
pub const WAL_KEY: &str = "proxima.wal";

/// Marks of one file: WAL id → last sequence number held.
pub type Marks = HashMap<String, u64>;

/// Encodes a [`WAL_KEY`] value.
pub fn encode_marks(marks: &Marks) -> String {
    serde_json::to_string(marks).expect("a map of ids to numbers serialises")
}

/// Parses the [`WAL_KEY`] value of `file`; anything but a map of WAL ids to sequence
/// numbers is an error naming the file.
pub fn parse_marks(file: &str, value: &str) -> Result<Marks> {
    let refuse = |reason: String| Error::Marks {
        file: file.to_string(),
        value: value.chars().take(200).collect(),
        reason,
    };
    let marks: Marks = serde_json::from_str(value).map_err(|e| refuse(e.to_string()))?;
    if let Some(id) = marks.keys().find(|id| Uuid::parse_str(id).is_err()) {
        return Err(refuse(format!("'{id}' is not a WAL id")));
    }
    Ok(marks)
}

/// Merges marks, keeping the highest sequence per WAL (for compaction).
pub fn merge_marks(all: impl IntoIterator<Item = Marks>) -> Marks {
    let mut merged = Marks::new();
    for marks in all {
        for (id, seq) in marks {
            let entry = merged.entry(id).or_default();
            *entry = (*entry).max(seq);
        }
    }
    merged
}

/// The [`WAL_KEY`] marks of a Parquet file in the store (none if it has no such key).
pub async fn file_marks(store: &Store, file: &Path) -> Result<Marks> {
    let key_values = proxima_engine::index::file_key_values(store, file).await?;
    marks_in(file.as_ref(), &key_values)
}

/// The WAL marks among a data file's footer key-values (none if it has no marks key).
pub fn marks_in(file: &str, key_values: &HashMap<String, String>) -> Result<Marks> {
    match key_values.get(WAL_KEY) {
        Some(value) => parse_marks(file, value),
        None => Ok(Marks::new()),
    }
}

/// The last sequence number of WAL `wal_id` that the store holds, from the marks of
/// `tables`' data files named since `oldest_micros` (less an hour of slack for clocks).
///
/// Every file of each table is considered, whatever its day folder: a flush files rows by
/// the day they were *observed*, which may be weeks before they were written, so only the
/// file's own name (a UUID v7, taken when it was written) says whether it can hold records
/// this recent.
pub async fn committed_through(store: &Store, wal_id: Uuid, tables: &[Table], oldest_micros: i64) -> Result<u64> {
    let since_secs = (oldest_micros / 1_000_000).saturating_sub(3600).max(0) as u64;
    let id = wal_id.to_string();
    let mut through = 0;
    for &table in tables {
        let files: Vec<Path> = store
            .object_store()
            .list(Some(&table.prefix(store.root())))
            .try_filter(|meta| {
                let recent = data_file_written_at(&meta.location).is_some_and(|secs| secs >= since_secs);
                futures::future::ready(recent)
            })
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        for file in files {
            if let Some(&seq) = file_marks(store, &file).await?.get(&id) {
                through = through.max(seq);
            }
        }
    }
    Ok(through)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_marks_are_errors_not_empty() {
        let id = Uuid::new_v4().to_string();
        let good = encode_marks(&Marks::from([(id.clone(), 7)]));
        assert_eq!(parse_marks("f", &good).unwrap()[&id], 7);
        assert!(parse_marks("f", "{}").unwrap().is_empty());
        for bad in ["", "{", "[1,2]", "{\"x\": 1}", &format!("{{\"{id}\": -1}}"), "null"] {
            let err = parse_marks("store/observations/day=2026-11-30/part-1.parquet", bad)
                .expect_err(bad)
                .to_string();
            assert!(
                err.contains("part-1.parquet") && err.contains("damaged"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn merge_keeps_the_highest_sequence_per_wal() {
        let merged = merge_marks([
            Marks::from([("a".into(), 3), ("b".into(), 9)]),
            Marks::from([("a".into(), 5)]),
        ]);
        assert_eq!(merged, Marks::from([("a".into(), 5), ("b".into(), 9)]));
    }
}
