//! `proxima erasure verify`: proof that no erased device is left in the store.
//!
//! Every Parquet file under every table's folder (live or replaced and not yet swept: a
//! replaced file still holds its bytes) and every record of the given WAL folders is read
//! (decrypted with the store's keys), and each value that names a device (`observer`,
//! `device_uuid`) or what was heard (`observed`) is hashed with the store's erasure hash
//! key and looked up among the completed erasures' hashes. A sighting of an erased
//! identifier counts only up to the erasure: after it, the identifier names no device in
//! the store (a MAC heard later is a stranger's, as before its owner registered).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimestampMicrosecondType};
use datafusion::prelude::ParquetReadOptions;
use futures::TryStreamExt;
use proxima_engine::{SessionFactory, Table};

use super::{ErasureRecord, completed, keyed_hash};
use crate::error::Result;

/// The columns that can name a device: whether each holds the device itself (`observer`,
/// `device_uuid`) or something it was heard by (`observed`).
const NAMING: [(&str, bool); 3] = [("observer", true), ("device_uuid", true), ("observed", false)];

/// A row of an erased device found in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file or WAL segment.
    pub place: String,
    /// The table the rows belong to.
    pub table: Table,
    /// The column that names the device.
    pub column: &'static str,
    /// The erased device's keyed hash.
    pub device: String,
    /// How many rows.
    pub rows: u64,
    /// Whether the file is one an erasure or compaction replaced and the sweep has not
    /// deleted yet (`--sweep-grace` after it was replaced).
    pub replaced: bool,
}

/// What [`verify`] read and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Completed erasures checked.
    pub erasures: usize,
    /// Parquet files read.
    pub files: usize,
    /// WAL segments read.
    pub segments: usize,
    /// Rows read.
    pub rows: u64,
    /// Rows of erased devices.
    pub findings: Vec<Finding>,
}

/// The erased devices and identifiers, by keyed hash.
struct Erased {
    key: [u8; 32],
    devices: HashSet<String>,
    /// Each identifier's device and when it was erased.
    identifiers: HashMap<String, (String, i64)>,
}

impl Erased {
    fn new(key: [u8; 32], records: &[ErasureRecord]) -> Self {
        let mut identifiers = HashMap::new();
        for record in records {
            for id in &record.heard_as {
                identifiers.insert(id.clone(), (record.device.clone(), record.erased_at.timestamp_micros()));
            }
        }
        Self {
            key,
            devices: records.iter().map(|r| r.device.clone()).collect(),
            identifiers,
        }
    }
}

/// Reads every Parquet file of the store and every WAL segment in `wal_dirs`; see the
/// module's documentation.
pub async fn verify(factory: &SessionFactory, wal_dirs: &[PathBuf]) -> Result<Report> {
    let store = factory.store();
    let records = completed(store).await?;
    let mut report = Report {
        erasures: records.len(),
        ..Report::default()
    };
    let key = crate::keys::erasure_hash_key(store).await?;
    let erased = Erased::new(key, &records);
    let ctx = factory.session().await?;
    let base = store.object_store_url().as_str().trim_end_matches('/').to_string();
    for table in Table::ALL {
        let prefix = table.prefix(store.root());
        let live: HashSet<String> = store
            .reader()
            .list(Some(&prefix))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await?;
        let mut files: Vec<_> = store
            .object_store()
            .list(Some(&prefix))
            .try_filter(|meta| futures::future::ready(meta.location.as_ref().ends_with(".parquet")))
            .try_collect()
            .await?;
        files.sort_by(|a, b| a.location.cmp(&b.location));
        let schema = table.file_schema();
        let columns: Vec<&str> = NAMING
            .iter()
            .map(|(name, _)| *name)
            .chain(table.time_column())
            .filter(|name| schema.index_of(name).is_ok())
            .collect();
        for file in files {
            let url = format!("{base}/{}", file.location);
            // Only the columns that can name a device, and the time of a sighting.
            let batches = ctx
                .read_parquet(url.as_str(), ParquetReadOptions::default().schema(&schema))
                .await?
                .select_columns(&columns)?
                .collect()
                .await?;
            report.files += 1;
            let place = file.location.to_string();
            let replaced = !live.contains(&place);
            check(&erased, table, &place, replaced, &batches, &mut report);
        }
    }
    let keys = store.keyring().map(|k| std::sync::Arc::clone(k.provider()));
    for dir in wal_dirs {
        for (segment, entries) in crate::wal::read_entries(dir, keys.as_deref())? {
            report.segments += 1;
            let place = segment.display().to_string();
            for entry in entries {
                check(&erased, entry.table, &place, false, &[entry.batch], &mut report);
            }
        }
    }
    Ok(report)
}

/// Counts, per column and device, the rows of `batches` that name an erased device.
fn check(erased: &Erased, table: Table, place: &str, replaced: bool, batches: &[RecordBatch], report: &mut Report) {
    let mut found: HashMap<(&'static str, String), u64> = HashMap::new();
    // Each distinct value is hashed once per file.
    let mut hashes: HashMap<String, String> = HashMap::new();
    let mut hash = |text: String| {
        hashes
            .entry(text)
            .or_insert_with_key(|text| keyed_hash(&erased.key, text))
            .clone()
    };
    for batch in batches {
        report.rows += batch.num_rows() as u64;
        let schema = batch.schema();
        let time = table
            .time_column()
            .and_then(|name| schema.index_of(name).ok())
            .and_then(|i| batch.column(i).as_primitive_opt::<TimestampMicrosecondType>().cloned());
        for (column, is_device) in NAMING {
            let Ok(index) = schema.index_of(column) else { continue };
            let values = texts(batch.column(index).as_ref());
            for (row, value) in values.into_iter().enumerate() {
                let Some(value) = value else { continue };
                let digest = hash(value);
                let device = if is_device {
                    erased.devices.get(&digest).cloned()
                } else {
                    erased
                        .identifiers
                        .get(&digest)
                        .filter(|(_, erased_at)| {
                            // Sightings after the erasure are of an identifier no device holds.
                            time.as_ref()
                                .is_none_or(|t| t.is_null(row) || t.value(row) <= *erased_at)
                        })
                        .map(|(device, _)| device.clone())
                };
                if let Some(device) = device {
                    *found.entry((column, device)).or_default() += 1;
                }
            }
        }
    }
    let mut found: Vec<_> = found.into_iter().collect();
    found.sort();
    for ((column, device), rows) in found {
        report.findings.push(Finding {
            place: place.to_string(),
            table,
            column,
            device,
            rows,
            replaced,
        });
    }
}

/// A column's values as canonical text: UUIDs kept as 16 bytes (the index's `observer`)
/// are written out as the hyphenated UUID every other table stores.
fn texts(array: &dyn Array) -> Vec<Option<String>> {
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect(),
        DataType::FixedSizeBinary(16) => array
            .as_fixed_size_binary()
            .iter()
            .map(|v| {
                v.and_then(|bytes| uuid::Uuid::from_slice(bytes).ok())
                    .map(|u| u.hyphenated().to_string())
            })
            .collect(),
        _ => match arrow::compute::cast(array, &DataType::Utf8) {
            Ok(cast) => cast.as_string::<i32>().iter().map(|v| v.map(str::to_string)).collect(),
            Err(_) => vec![None; array.len()],
        },
    }
}
