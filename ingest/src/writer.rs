//! The partition writer: Arrow batches in, Parquet files in the store out.
//!
//! Writes happen in a [`Transaction`]. Each file is first written under
//! `_staging/<transaction>/`, which no table lists. On commit a manifest of
//! the staged files and their final places is written, the files are renamed
//! into their tables' folders, synced (on a local disk), and the manifest is
//! removed. A crash before the manifest exists leaves only invisible staged
//! files, which [`PartitionWriter::recover`] deletes once they are an hour
//! old; a crash after it is rolled forward by `recover`. So a transaction's
//! files become visible all together or not at all, and every file name is
//! fresh (UUID v7), so concurrent writers never overwrite each other.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use chrono::NaiveDate;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use proxima_engine::paths::{new_data_file, staging_prefix};
use proxima_engine::{PROXIMA_VERSION, Store, Table};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Uncommitted staging older than this is taken as abandoned by [`PartitionWriter::recover`].
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);
const MANIFEST: &str = "manifest.json";

/// Writes Parquet files into one store; `name` says which part of Proxima wrote them.
#[derive(Debug, Clone)]
pub struct PartitionWriter {
    store: Store,
    name: &'static str,
}

/// What a committed transaction published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitSummary {
    /// Files made visible.
    pub files: usize,
    /// Rows in them.
    pub rows: u64,
    /// Bytes in them.
    pub bytes: u64,
}

/// What [`PartitionWriter::recover`] found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Committed transactions whose files were moved into place.
    pub rolled_forward: usize,
    /// Abandoned transactions whose staged files were deleted.
    pub rolled_back: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StagedFile {
    staging: String,
    target: String,
    rows: u64,
    bytes: u64,
}

impl PartitionWriter {
    /// A writer into `store`; `name` (such as `import`) is recorded in every file's metadata.
    pub fn new(store: Store, name: &'static str) -> Self {
        Self { store, name }
    }

    /// The store written to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts a transaction.
    pub fn begin(&self) -> Transaction {
        Transaction {
            writer: self.clone(),
            id: Uuid::now_v7(),
            staged: Vec::new(),
        }
    }

    /// Finishes the commits that a crash interrupted and deletes abandoned staging.
    pub async fn recover(&self) -> Result<Recovery> {
        let store = self.store.object_store();
        let staging = staging_prefix(self.store.root());
        let listing = store.list_with_delimiter(Some(&staging)).await?;
        let mut recovery = Recovery::default();
        for prefix in listing.common_prefixes {
            let manifest_path = prefix.clone().join(MANIFEST);
            match store.get(&manifest_path).await {
                Ok(found) => {
                    let bytes = found.bytes().await?;
                    let staged: Vec<StagedFile> = serde_json::from_slice(&bytes).map_err(|source| Error::Manifest {
                        path: manifest_path.to_string(),
                        source,
                    })?;
                    publish(&self.store, &staged).await?;
                    self.store.delete_prefix(&prefix).await?;
                    warn!(transaction = %prefix, files = staged.len(), "rolled forward an interrupted commit");
                    recovery.rolled_forward += 1;
                }
                Err(object_store::Error::NotFound { .. }) => {
                    let abandoned = prefix
                        .filename()
                        .and_then(|name| Uuid::parse_str(name).ok())
                        .and_then(|id| id.get_timestamp())
                        .map(|ts| {
                            let (secs, _) = ts.to_unix();
                            let started = std::time::UNIX_EPOCH + Duration::from_secs(secs);
                            started.elapsed().unwrap_or_default() > ABANDONED_AFTER
                        })
                        // Not one of ours: never a table's data, safe to clear.
                        .unwrap_or(true);
                    if abandoned {
                        self.store.delete_prefix(&prefix).await?;
                        warn!(transaction = %prefix, "deleted abandoned staged files");
                        recovery.rolled_back += 1;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(recovery)
    }
}

/// A set of files that become visible together on [`Transaction::commit`].
#[derive(Debug)]
pub struct Transaction {
    writer: PartitionWriter,
    id: Uuid,
    staged: Vec<StagedFile>,
}

impl Transaction {
    /// Writes `batches` (rows of `table`, all of `day` if the table is day-partitioned)
    /// as one staged Parquet file.
    pub async fn write_file(&mut self, table: Table, day: Option<NaiveDate>, batches: &[RecordBatch]) -> Result<()> {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows == 0 {
            return Ok(());
        }
        let store = &self.writer.store;
        let staging = staging_prefix(store.root())
            .join(self.id.to_string())
            .join(format!("{}.parquet", self.staged.len()));
        let target = new_data_file(store.root(), table, day);
        let props = writer_properties(table, self.writer.name, rows);
        let sink = object_store::buffered::BufWriter::new(Arc::clone(store.object_store()), staging.clone());
        let mut writer = AsyncArrowWriter::try_new(sink, table.file_schema(), Some(props))?;
        for batch in batches {
            writer.write(batch).await?;
        }
        writer.close().await?;
        let bytes = store.object_store().head(&staging).await?.size;
        debug!(%staging, %target, rows, bytes, "staged file");
        self.staged.push(StagedFile {
            staging: staging.to_string(),
            target: target.to_string(),
            rows: rows as u64,
            bytes,
        });
        Ok(())
    }

    /// Publishes every staged file; after this returns they are durable and visible.
    pub async fn commit(self) -> Result<CommitSummary> {
        let summary = CommitSummary {
            files: self.staged.len(),
            rows: self.staged.iter().map(|f| f.rows).sum(),
            bytes: self.staged.iter().map(|f| f.bytes).sum(),
        };
        if self.staged.is_empty() {
            return Ok(summary);
        }
        let store = &self.writer.store;
        let staged_paths: Vec<Path> = self.staged.iter().map(|f| Path::from(f.staging.as_str())).collect();
        store.sync_local(&staged_paths)?;
        let prefix = self.prefix();
        let manifest_path = prefix.clone().join(MANIFEST);
        let manifest = serde_json::to_vec(&self.staged).map_err(|source| Error::Manifest {
            path: manifest_path.to_string(),
            source,
        })?;
        store
            .object_store()
            .put(&manifest_path, PutPayload::from(Bytes::from(manifest)))
            .await?;
        store.sync_local([&manifest_path])?;
        // From here on the transaction is committed: a crash is rolled forward by `recover`.
        publish(store, &self.staged).await?;
        store.delete_prefix(&prefix).await?;
        info!(
            writer = self.writer.name,
            files = summary.files,
            rows = summary.rows,
            bytes = summary.bytes,
            "committed"
        );
        Ok(summary)
    }

    /// Deletes every staged file; nothing of the transaction becomes visible.
    pub async fn abort(self) -> Result<()> {
        self.writer.store.delete_prefix(&self.prefix()).await?;
        Ok(())
    }

    fn prefix(&self) -> Path {
        staging_prefix(self.writer.store.root()).join(self.id.to_string())
    }
}

/// Moves staged files to their targets (idempotent: a file already moved is skipped).
async fn publish(store: &Store, staged: &[StagedFile]) -> Result<()> {
    let object_store: &Arc<dyn ObjectStore> = store.object_store();
    let mut targets = Vec::with_capacity(staged.len());
    for file in staged {
        let from = Path::from(file.staging.as_str());
        let to = Path::from(file.target.as_str());
        match object_store.rename(&from, &to).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) if store.exists(&to).await? => {}
            Err(e) => return Err(e.into()),
        }
        targets.push(to);
    }
    store.sync_local(&targets)?;
    Ok(())
}

/// Parquet settings for a table's files: ZSTD, page statistics (for the page index),
/// bloom filters on the lookup columns, and metadata naming the Proxima version and writer.
fn writer_properties(table: Table, writer: &str, rows: usize) -> WriterProperties {
    let metadata = vec![
        KeyValue::new("proxima.version".to_string(), PROXIMA_VERSION.to_string()),
        KeyValue::new("proxima.writer".to_string(), writer.to_string()),
        KeyValue::new("proxima.table".to_string(), table.name().to_string()),
    ];
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("1 is a valid zstd level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_key_value_metadata(Some(metadata));
    for column in table.lookup_columns() {
        let column = parquet::schema::types::ColumnPath::from(*column);
        builder = builder
            .set_column_bloom_filter_enabled(column.clone(), true)
            .set_column_bloom_filter_fpp(column.clone(), 0.01)
            .set_column_bloom_filter_max_ndv(column, rows.clamp(1, 1_000_000) as u64);
    }
    builder.build()
}

/// Lists the data files of a table (for tests and tools).
pub async fn list_files(store: &Store, table: Table) -> Result<Vec<Path>> {
    let files = store
        .object_store()
        .list(Some(&table.prefix(store.root())))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await?;
    Ok(files)
}
