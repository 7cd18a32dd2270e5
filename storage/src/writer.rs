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
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::AsyncArrowWriter;
use parquet::file::metadata::KeyValue;
use proxima_engine::encryption::Place;
use proxima_engine::paths::{new_data_file, staging_prefix};
use proxima_engine::{Store, Table};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::keys::file_encryption;
use crate::layout::{conform, observed_index_rows, writer_properties};

/// Parquet metadata key of an `observed_index` file: the observation file it was written with.
pub const SOURCE_KEY: &str = "proxima.index.source";
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
            companions: true,
        }
    }

    /// Decides a transaction whose commit (or staging) failed, so that it is either
    /// committed and published, or gone: if its manifest is in the store the transaction
    /// was committed, and its files are published (`true`); otherwise whatever it staged is
    /// deleted (`false`) and its rows may be written again. Idempotent.
    pub async fn settle(&self, transaction: Uuid) -> Result<bool> {
        let prefix = staging_prefix(self.store.root()).join(transaction.to_string());
        match self.read_manifest(&prefix).await? {
            Some(staged) => {
                publish(&self.store, &staged).await?;
                self.store.delete_prefix(&prefix).await?;
                Ok(true)
            }
            None => {
                self.store.delete_prefix(&prefix).await?;
                Ok(false)
            }
        }
    }

    /// The manifest of the transaction staged under `prefix`, if it reached its commit point.
    async fn read_manifest(&self, prefix: &Path) -> Result<Option<Vec<StagedFile>>> {
        let manifest_path = prefix.clone().join(MANIFEST);
        match self.store.object_store().get(&manifest_path).await {
            Ok(found) => {
                let bytes = found.bytes().await?;
                let staged = serde_json::from_slice(&bytes).map_err(|source| Error::Manifest {
                    path: manifest_path.to_string(),
                    source,
                })?;
                Ok(Some(staged))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Finishes the commits that a crash interrupted and deletes abandoned staging.
    pub async fn recover(&self) -> Result<Recovery> {
        let store = self.store.object_store();
        let staging = staging_prefix(self.store.root());
        let listing = store.list_with_delimiter(Some(&staging)).await?;
        let mut recovery = Recovery::default();
        for prefix in listing.common_prefixes {
            match self.read_manifest(&prefix).await? {
                Some(staged) => {
                    publish(&self.store, &staged).await?;
                    self.store.delete_prefix(&prefix).await?;
                    warn!(transaction = %prefix, files = staged.len(), "rolled forward an interrupted commit");
                    recovery.rolled_forward += 1;
                }
                None => {
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
            }
        }
        Ok(recovery)
    }
}

/// A set of files that become visible together on [`Transaction::commit`].
///
/// Every observation file it writes gets its `observed_index` companion (the same rows
/// sorted by the identifier heard) in the same transaction, so the lookup structure of
/// tracing is current by construction; only compaction, which rewrites rows that already
/// have companions, opts out ([`Transaction::without_companions`]).
#[derive(Debug)]
pub struct Transaction {
    writer: PartitionWriter,
    id: Uuid,
    staged: Vec<StagedFile>,
    companions: bool,
}

impl Transaction {
    /// This transaction writes observation files without their `observed_index` companion
    /// (for compaction: the rows it merges have theirs already, merged separately).
    pub fn without_companions(mut self) -> Self {
        self.companions = false;
        self
    }

    /// Writes `batches` (rows of `table`, all of `day` if the table is day-partitioned)
    /// as one staged Parquet file.
    pub async fn write_file(&mut self, table: Table, day: Option<NaiveDate>, batches: &[RecordBatch]) -> Result<()> {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let stream = futures::stream::iter(batches.iter().cloned().map(Ok::<_, Error>));
        self.write_stream(table, day, rows, Vec::new(), stream).await
    }

    /// Writes a stream of batches as one staged Parquet file; `expected_rows` sizes the bloom
    /// filters and `metadata` is added to the file's key-value metadata. Writes nothing if
    /// the stream is empty. Batches are not held in memory, except an observation file's,
    /// which are kept to write its `observed_index` companion once the stream ends.
    pub async fn write_stream<S, E>(
        &mut self,
        table: Table,
        day: Option<NaiveDate>,
        expected_rows: usize,
        metadata: Vec<KeyValue>,
        batches: S,
    ) -> Result<()>
    where
        S: futures::Stream<Item = std::result::Result<RecordBatch, E>> + Unpin + Send,
        Error: From<E>,
    {
        let batches = batches.map_err(Error::from).boxed();
        self.stage(table, day, expected_rows, metadata, batches).await
    }

    /// [`Transaction::write_stream`], for one stream type (so that an observation file can
    /// stage its companion through the same code).
    async fn stage(
        &mut self,
        table: Table,
        day: Option<NaiveDate>,
        expected_rows: usize,
        metadata: Vec<KeyValue>,
        mut batches: futures::stream::BoxStream<'_, Result<RecordBatch>>,
    ) -> Result<()> {
        let store = &self.writer.store;
        let staging = staging_prefix(store.root())
            .join(self.id.to_string())
            .join(format!("{}.parquet", self.staged.len()));
        let target = new_data_file(store.root(), table, day);
        let encryption = file_encryption(store, Place { table, day }).await?;
        let props = writer_properties(table, self.writer.name, expected_rows, metadata, encryption);
        let sink = object_store::buffered::BufWriter::new(Arc::clone(store.object_store()), staging.clone());
        let mut writer = AsyncArrowWriter::try_new(sink, table.file_schema(), Some(props))?;
        let mut rows = 0u64;
        let with_companion = table == Table::Observations && self.companions;
        let mut written = Vec::new();
        while let Some(batch) = batches.try_next().await? {
            let batch = conform(table, batch)?;
            rows += batch.num_rows() as u64;
            writer.write(&batch).await?;
            if with_companion {
                written.push(batch);
            }
        }
        if rows == 0 {
            writer.close().await?;
            store.object_store().delete(&staging).await?;
            return Ok(());
        }
        writer.close().await?;
        let bytes = store.object_store().head(&staging).await?.size;
        debug!(%staging, %target, rows, bytes, "staged file");
        self.staged.push(StagedFile {
            staging: staging.to_string(),
            target: target.to_string(),
            rows,
            bytes,
        });
        if let Some(companion) = observed_index_rows(&written)? {
            let source = vec![KeyValue::new(SOURCE_KEY.to_string(), target.to_string())];
            let rows = companion.num_rows();
            let stream = futures::stream::iter([Ok(companion)]).boxed();
            Box::pin(self.stage(Table::ObservedIndex, day, rows, source, stream)).await?;
        }
        Ok(())
    }

    /// Where the files staged so far will be published.
    pub fn staged_targets(&self) -> Vec<Path> {
        self.staged
            .iter()
            .map(|f| self.writer.store.stored_path(&f.target))
            .collect()
    }

    /// Publishes every staged file; after this returns they are durable and visible. An
    /// error means the rows are not stored (write them again), except
    /// [`Error::Unpublished`] (stored; never write them again) and [`Error::InDoubt`]
    /// (unknown until [`PartitionWriter::settle`] or a writer's start decides).
    pub async fn commit(self) -> Result<CommitSummary> {
        let summary = CommitSummary {
            files: self.staged.len(),
            rows: self.staged.iter().map(|f| f.rows).sum(),
            bytes: self.staged.iter().map(|f| f.bytes).sum(),
        };
        if self.staged.is_empty() {
            return Ok(summary);
        }
        if let Err(e) = self.write_manifest().await {
            // The manifest's put may have landed although it failed (a timeout): settle,
            // so that the caller learns which it is.
            return match self.writer.settle(self.id).await {
                Ok(true) => {
                    warn!(transaction = %self.id, error = %e, "the commit reported an error but had landed; published");
                    Ok(summary)
                }
                Ok(false) => Err(e),
                Err(_) => Err(Error::InDoubt {
                    transaction: self.id.to_string(),
                    source: Box::new(e),
                }),
            };
        }
        // From here on the transaction is committed: a crash is rolled forward by `recover`,
        // and an error is reported as committed, so that no caller writes the rows again.
        let store = &self.writer.store;
        let published = async {
            publish(store, &self.staged).await?;
            store.delete_prefix(&self.prefix()).await?;
            Ok::<_, Error>(())
        };
        if let Err(e) = published.await {
            if matches!(self.writer.settle(self.id).await, Ok(true)) {
                warn!(transaction = %self.id, error = %e, "publishing failed once, then succeeded");
            } else {
                return Err(Error::Unpublished {
                    transaction: self.id.to_string(),
                    source: Box::new(e),
                });
            }
        }
        info!(
            writer = self.writer.name,
            files = summary.files,
            rows = summary.rows,
            bytes = summary.bytes,
            "committed"
        );
        Ok(summary)
    }

    /// Makes the staged files durable, then records them in the manifest: the commit point.
    async fn write_manifest(&self) -> Result<()> {
        let store = &self.writer.store;
        let staged_paths: Vec<Path> = self
            .staged
            .iter()
            .map(|f| self.writer.store.stored_path(&f.staging))
            .collect();
        store.sync_local(&staged_paths)?;
        let manifest_path = self.prefix().join(MANIFEST);
        let manifest = serde_json::to_vec(&self.staged).map_err(|source| Error::Manifest {
            path: manifest_path.to_string(),
            source,
        })?;
        store
            .object_store()
            .put(&manifest_path, PutPayload::from(Bytes::from(manifest)))
            .await?;
        store.sync_local([&manifest_path])?;
        Ok(())
    }

    /// Deletes every staged file; nothing of the transaction becomes visible.
    pub async fn abort(self) -> Result<()> {
        self.writer.store.delete_prefix(&self.prefix()).await?;
        Ok(())
    }

    /// The transaction's id (for [`PartitionWriter::settle`] after a failed commit).
    pub fn id(&self) -> Uuid {
        self.id
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
        let from = store.stored_path(&file.staging);
        let to = store.stored_path(&file.target);
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, TimestampMicrosecondArray};

    fn device_batch(uuid: &str, mac: &str) -> RecordBatch {
        RecordBatch::try_new(
            Table::Devices.file_schema(),
            vec![
                Arc::new(StringArray::from(vec![uuid])),
                Arc::new(StringArray::from(vec![mac])),
                Arc::new(TimestampMicrosecondArray::from(vec![0]).with_timezone("UTC")),
            ],
        )
        .unwrap()
    }

    async fn staged_transaction(writer: &PartitionWriter) -> Transaction {
        let mut transaction = writer.begin();
        let batch = device_batch("00000000-0000-4000-8000-000000000001", "AA:00:00:00:00:01");
        transaction.write_file(Table::Devices, None, &[batch]).await.unwrap();
        transaction
    }

    async fn visible(store: &Store) -> usize {
        store.list_files(Table::Devices).await.unwrap().len()
    }

    #[tokio::test]
    async fn commit_publishes_and_abort_leaves_nothing() {
        let writer = PartitionWriter::new(Store::in_memory(), "test");
        let transaction = staged_transaction(&writer).await;
        assert_eq!(visible(writer.store()).await, 0, "staged files are invisible");
        let summary = transaction.commit().await.unwrap();
        assert_eq!((summary.files, summary.rows), (1, 1));
        assert_eq!(visible(writer.store()).await, 1);

        staged_transaction(&writer).await.abort().await.unwrap();
        assert_eq!(visible(writer.store()).await, 1);
        let staging: Vec<_> = writer
            .store()
            .object_store()
            .list(Some(&staging_prefix(writer.store().root())))
            .try_collect()
            .await
            .unwrap();
        assert!(staging.is_empty(), "{staging:?}");
    }

    #[tokio::test]
    async fn files_say_which_proxima_wrote_them() {
        let writer = PartitionWriter::new(Store::in_memory(), "test");
        staged_transaction(&writer).await.commit().await.unwrap();
        let file = &writer.store().list_files(Table::Devices).await.unwrap()[0];
        let bytes = writer
            .store()
            .object_store()
            .get(file)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reader = parquet::file::serialized_reader::SerializedFileReader::new(bytes).unwrap();
        use parquet::file::reader::FileReader;
        let metadata = reader.metadata().file_metadata();
        let kv: std::collections::HashMap<_, _> = metadata
            .key_value_metadata()
            .unwrap()
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(kv["proxima.version"], proxima_engine::PROXIMA_VERSION);
        assert_eq!(kv["proxima.writer"], "test");
        assert_eq!(kv["proxima.table"], "devices");
        assert_eq!(metadata.num_rows(), 1);
        let bloom = reader.metadata().row_group(0).column(1).bloom_filter_offset();
        assert!(bloom.is_some(), "the mac column has a bloom filter");
    }

    #[tokio::test]
    async fn recover_rolls_a_committed_transaction_forward() {
        let writer = PartitionWriter::new(Store::in_memory(), "test");
        let transaction = staged_transaction(&writer).await;
        // Crash right after the commit point: manifest written, nothing published.
        transaction.write_manifest().await.unwrap();
        drop(transaction);
        assert_eq!(visible(writer.store()).await, 0);
        let recovery = writer.recover().await.unwrap();
        assert_eq!(
            recovery,
            Recovery {
                rolled_forward: 1,
                rolled_back: 0
            }
        );
        assert_eq!(visible(writer.store()).await, 1);
        // Idempotent.
        assert_eq!(writer.recover().await.unwrap(), Recovery::default());
        assert_eq!(visible(writer.store()).await, 1);
    }

    #[tokio::test]
    async fn recover_deletes_only_abandoned_staging() {
        let writer = PartitionWriter::new(Store::in_memory(), "test");
        // A transaction still being written by someone else: left alone.
        let in_flight = staged_transaction(&writer).await;
        // One that crashed two hours ago, before its commit point.
        let mut abandoned = writer.begin();
        let two_hours_ago = chrono::Utc::now().timestamp_millis() as u64 - 2 * 3600 * 1000;
        abandoned.id = uuid::Builder::from_unix_timestamp_millis(two_hours_ago, &[7; 10]).into_uuid();
        abandoned
            .write_file(
                Table::Devices,
                None,
                &[device_batch(
                    "00000000-0000-4000-8000-000000000002",
                    "AA:00:00:00:00:02",
                )],
            )
            .await
            .unwrap();
        drop(abandoned);
        assert_eq!(
            writer.recover().await.unwrap(),
            Recovery {
                rolled_forward: 0,
                rolled_back: 1
            }
        );
        assert_eq!(in_flight.commit().await.unwrap().files, 1);
        assert_eq!(visible(writer.store()).await, 1);
    }
}
