//! The flusher: acknowledged rows from the WAL's buffer into Parquet files in the store.
//!
//! Every flush interval (and before a case is traced) the WAL is rotated
//! and its buffer written as one [`crate::Transaction`]: one file per table and
//! day, sorted for lookups, each recording the WAL's id and last sequence
//! number ([`WAL_KEY`]). Only after the commit are the closed WAL segments
//! deleted. A failure *before* the commit point keeps the rows, which the
//! next flush writes again; a failure *after* it (the manifest is durable,
//! publishing failed) never does: the rows are committed, the next flush
//! first settles that transaction ([`PartitionWriter::settle`]: published if
//! its manifest is there, else deleted and its rows written again) and only
//! then deletes or reuses their segments. So a crash or an error at any point loses
//! nothing and stores nothing twice, and [`crate::marks::committed_through`]
//! keeps a replay after a crash from storing anything twice.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::compute::concat_batches;
use parquet::file::metadata::KeyValue;
use proxima_engine::Table;
use proxima_engine::index::IndexReader;
use proxima_udfs::ProximaOptions;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::layout::{sort_for_storage, split_by_day};
use crate::marks::{WAL_KEY, committed_through, encode_marks};
use crate::rollup::{CasePartials, ContactPartials, RollupWriter};
use crate::wal::{Buffer, Rotation, Wal};
use crate::writer::{CommitSummary, PartitionWriter, Transaction};

/// Moves the WAL's buffer into the store; one flush at a time.
#[derive(Debug)]
pub struct Flusher {
    wal: Wal,
    writer: PartitionWriter,
    /// Rows taken from the WAL whose transaction failed, with that transaction: the next
    /// flush first settles it (see [`PartitionWriter::settle`]), then either deletes the
    /// rows' segments (it was committed) or writes the rows again (it was not).
    in_doubt: Mutex<Option<(Uuid, Rotation)>>,
    /// What resolves sightings for the rollups written with each flush (none: no rollups).
    rollups: Option<Arc<IndexReader>>,
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
            in_doubt: Mutex::default(),
            rollups: None,
        }
    }

    /// This flusher, writing the contact rollup's partial rows of each flush in the flush's
    /// own transaction, resolved with `index` (see [`crate::rollup`]).
    pub fn with_rollups(mut self, index: Arc<IndexReader>) -> Self {
        self.rollups = Some(index);
        self
    }

    /// The WAL flushed.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Writes everything acknowledged so far to the store; after it returns, a query sees it.
    pub async fn flush(&self) -> Result<Flushed> {
        let mut in_doubt = self.in_doubt.lock().await;
        let mut segments_deleted = 0;
        let mut carried: Option<(Uuid, Rotation)> = None;
        if let Some((transaction, rotation)) = in_doubt.take() {
            match self.settle(transaction, &rotation).await {
                Ok(true) => {
                    // Committed after all: its rows are stored and must not be written again.
                    info!(%transaction, rows = rotation.buffer.rows, "an earlier flush turned out committed; published it");
                    segments_deleted += delete_segments(&rotation.segments);
                }
                Ok(false) => carried = Some((transaction, rotation)),
                Err(e) => {
                    *in_doubt = Some((transaction, rotation));
                    return Err(e);
                }
            }
        }
        let rotation = match self.wal.rotate().await {
            Ok(rotation) => rotation,
            Err(e) => {
                // Settled as not committed: settling it again says so again.
                *in_doubt = carried;
                return Err(e);
            }
        };
        let mut rotation = match carried {
            Some((_, mut earlier)) => {
                earlier.buffer.append(rotation.buffer);
                earlier.through = rotation.through;
                earlier.segments.extend(rotation.segments);
                earlier
            }
            None => rotation,
        };
        if rotation.buffer.is_empty() {
            segments_deleted += delete_segments(&rotation.segments);
            return Ok(Flushed {
                segments_deleted,
                ..Flushed::default()
            });
        }
        debug!(rows = rotation.buffer.rows, "flushing");
        let mut transaction = self.writer.begin();
        // Held until the commit: nothing else adds encounters between the rollup's
        // resolution against the store and the commit of the rows it resolved.
        let rollup_writer = match &self.rollups {
            Some(_) => match RollupWriter::acquire(self.writer.store()).await {
                Ok(right) => Some(right),
                Err(e) => {
                    warn!(error = %e, rows = rotation.buffer.rows, "flush waits for another writer of the rollup; the rows stay in the write-ahead log and are retried");
                    rotation.segments.sort();
                    *in_doubt = Some((transaction.id(), rotation));
                    return Err(e);
                }
            },
            None => None,
        };
        let placed = match &self.rollups {
            // Cases and readings are stored with the cell the case rollup counts them in.
            Some(index) => crate::rollup::place_in_cells(index, &mut rotation.buffer).await,
            None => Ok(()),
        };
        let written = match placed {
            Ok(()) => write_buffer(&mut transaction, &rotation.buffer, rotation.wal_id, rotation.through).await,
            Err(e) => Err(e),
        };
        let written = match (written, &self.rollups, &rollup_writer) {
            (Ok(()), Some(index), Some(right)) => {
                match write_rollups(&mut transaction, index, &rotation.buffer).await {
                    // A write that outlived its lease must not commit.
                    Ok(()) => right.confirm().await,
                    Err(e) => Err(e),
                }
            }
            (written, _, _) => written,
        };
        if let Err(e) = written {
            release(rollup_writer).await;
            warn!(error = %e, rows = rotation.buffer.rows, "flush failed; the rows stay in the write-ahead log and are retried");
            rotation.segments.sort();
            *in_doubt = Some((transaction.id(), rotation));
            return Err(e);
        }
        let id = transaction.id();
        let committed = transaction.commit().await;
        release(rollup_writer).await;
        match committed {
            Ok(commit) => {
                info!(rows = rotation.buffer.rows, files = commit.files, "flushed");
                segments_deleted += delete_segments(&rotation.segments);
                Ok(Flushed {
                    rows: rotation.buffer.rows,
                    commit,
                    segments_deleted,
                })
            }
            Err(e) => {
                warn!(error = %e, rows = rotation.buffer.rows, "flush commit failed; the next flush settles it (published if committed, written again if not)");
                rotation.segments.sort();
                *in_doubt = Some((id, rotation));
                Err(e)
            }
        }
    }
}

impl Flusher {
    /// Whether the failed transaction `transaction`, which held `rotation`'s rows, is
    /// committed (then published now). Without its manifest the store itself is asked:
    /// another process's recovery may have published it and cleared its staging.
    async fn settle(&self, transaction: Uuid, rotation: &Rotation) -> Result<bool> {
        if self.writer.settle(transaction).await? {
            return Ok(true);
        }
        let since_micros = transaction
            .get_timestamp()
            .map(|ts| {
                let (secs, nanos) = ts.to_unix();
                secs as i64 * 1_000_000 + i64::from(nanos / 1000)
            })
            .unwrap_or(0);
        let tables: Vec<Table> = rotation.buffer.tables.keys().copied().collect();
        let held = committed_through(self.writer.store(), rotation.wal_id, &tables, since_micros).await?;
        Ok(held >= rotation.through)
    }
}

/// Gives up the right to add to the rollup (a failure only delays the next writer until the
/// lease expires).
async fn release(right: Option<RollupWriter>) {
    if let Some(right) = right
        && let Err(e) = right.release().await
    {
        warn!(error = %e, "could not give the rollup lease back; other writers wait for its expiry");
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

/// Stages a buffer in `transaction`: a file per table and day.
async fn write_buffer(transaction: &mut Transaction, buffer: &Buffer, wal_id: Uuid, through: u64) -> Result<()> {
    let marks = encode_marks(&HashMap::from([(wal_id.to_string(), through)]));
    for (&table, batches) in &buffer.tables {
        let all = concat_batches(&table.file_schema(), batches)?;
        for (day, rows) in split_by_day(table, &all)? {
            let sorted = sort_for_storage(table, &rows)?;
            let metadata = vec![KeyValue::new(WAL_KEY.to_string(), marks.clone())];
            let stream = futures::stream::iter([Ok::<_, Error>(sorted)]);
            transaction
                .write_stream(table, day, rows.num_rows(), metadata, stream)
                .await?;
        }
    }
    Ok(())
}

/// Stages the rollups' partial rows of what storing `buffer` adds (see
/// [`ContactPartials::add_buffer`], [`CasePartials::add_buffer`]): a file per day and
/// rollup, none if it adds nothing. The
/// flushes of one process are serialised (the flusher's lock), which is what keeps them
/// exact.
async fn write_rollups(transaction: &mut Transaction, index: &IndexReader, buffer: &Buffer) -> Result<()> {
    let started = std::time::Instant::now();
    let mut contacts = ContactPartials::new(ProximaOptions::default());
    contacts.add_buffer(index, buffer).await?;
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "resolved the flush's sightings for the rollup"
    );
    let mut cases = CasePartials::default();
    cases.add_buffer(buffer)?;
    for (table, partials) in [
        (
            Table::ContactPartials,
            (!contacts.is_empty()).then(|| contacts.to_batch()),
        ),
        (Table::CasePartials, (!cases.is_empty()).then(|| cases.to_batch())),
    ] {
        let Some(all) = partials.transpose()? else {
            continue;
        };
        for (day, rows) in split_by_day(table, &all)? {
            let sorted = sort_for_storage(table, &rows)?;
            let stream = futures::stream::iter([Ok::<_, Error>(sorted)]);
            transaction
                .write_stream(table, day, rows.num_rows(), Vec::new(), stream)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path as FsPath;

    use proxima_engine::Store;

    use super::*;
    use crate::testing::{Op, failing_store, stored};
    use crate::wal::{Entry, WalStats};

    fn observations(tag: u32, n: usize, days_ago: i64) -> Entry {
        Entry {
            table: Table::Observations,
            batch: crate::testing::observations(tag, n, days_ago),
        }
    }

    /// A WAL in `dir` over `store`, replayed against what the store holds, and its flusher.
    async fn open(dir: &FsPath, store: &Store) -> Flusher {
        let (wal, _) = Wal::open(dir, WalStats::default(), |id, tables, oldest| {
            let store = store.clone();
            async move { committed_through(&store, id, &tables, oldest).await }
        })
        .await
        .unwrap();
        Flusher::new(wal, PartitionWriter::new(store.clone(), "test"))
    }

    #[tokio::test]
    async fn an_error_after_the_commit_point_never_writes_the_rows_again() {
        // Publishing fails (the rename of a staged file), or the staging clean-up after it
        // does: either way the transaction is committed and its rows must be stored once.
        for (op, visible_at_once) in [(Op::Rename, false), (Op::Delete, true)] {
            let dir = tempfile::tempdir().unwrap();
            let (store, failing) = failing_store();
            let flusher = open(dir.path(), &store).await;
            flusher.wal().append(vec![observations(1, 3, 0)]).await.unwrap();
            flusher.flush().await.unwrap();
            flusher.wal().append(vec![observations(2, 2, 0)]).await.unwrap();
            // Twice: the commit's own retry (it settles its transaction at once) fails too.
            failing.fail(op, 1, "", 2);
            let err = flusher.flush().await.unwrap_err().to_string();
            assert_eq!(failing.failures(), 2);
            assert!(err.contains("committed but not yet published"), "{op:?}: {err}");
            assert_eq!(stored(&store).await, if visible_at_once { 5 } else { 3 }, "{op:?}");
            flusher.wal().append(vec![observations(3, 1, 0)]).await.unwrap();
            let flushed = flusher.flush().await.unwrap();
            assert_eq!(flushed.rows, 1, "{op:?}: only the new row is written");
            assert_eq!(stored(&store).await, 6, "{op:?}: every acknowledged row once");
        }
    }

    #[tokio::test]
    async fn an_error_before_the_commit_point_writes_the_rows_once_later() {
        let dir = tempfile::tempdir().unwrap();
        let (store, failing) = failing_store();
        let flusher = open(dir.path(), &store).await;
        flusher.wal().append(vec![observations(1, 4, 0)]).await.unwrap();
        // The manifest's put fails: nothing is committed.
        failing.fail(Op::Put, 1, "manifest.json", 1);
        flusher.flush().await.unwrap_err();
        assert_eq!(stored(&store).await, 0);
        flusher.wal().append(vec![observations(2, 1, 0)]).await.unwrap();
        assert_eq!(flusher.flush().await.unwrap().rows, 5);
        assert_eq!(stored(&store).await, 5);
    }

    #[tokio::test]
    async fn a_commit_that_landed_despite_an_error_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, failing) = failing_store();
        let flusher = open(dir.path(), &store).await;
        flusher.wal().append(vec![observations(1, 4, 0)]).await.unwrap();
        // The manifest reaches the store, but its put answers an error.
        failing.fail(Op::PutLanded, 1, "manifest.json", 1);
        assert_eq!(flusher.flush().await.unwrap().rows, 4, "the commit settled itself");
        assert_eq!(failing.failures(), 1);
        flusher.wal().append(vec![observations(2, 1, 0)]).await.unwrap();
        flusher.flush().await.unwrap();
        assert_eq!(stored(&store).await, 5);
    }

    #[tokio::test]
    async fn a_back_dated_flush_is_not_replayed_after_a_crash() {
        // Rows observed ten days ago go to a day folder far from the day they were written.
        let dir = tempfile::tempdir().unwrap();
        let (store, failing) = failing_store();
        let flusher = open(dir.path(), &store).await;
        flusher.wal().append(vec![observations(1, 7, 10)]).await.unwrap();
        // Committed and published, then the staging clean-up fails and the process dies
        // before it deletes the WAL segments.
        failing.fail(Op::Delete, 1, "_staging", 2);
        flusher.flush().await.unwrap_err();
        assert_eq!(stored(&store).await, 7);
        drop(flusher);
        let flusher = open(dir.path(), &store).await;
        flusher.flush().await.unwrap();
        assert_eq!(stored(&store).await, 7, "the replay found the rows already stored");
    }

    #[tokio::test]
    async fn damaged_marks_stop_a_replay_instead_of_storing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_memory();
        let flusher = open(dir.path(), &store).await;
        flusher.wal().append(vec![observations(1, 2, 0)]).await.unwrap();
        drop(flusher);
        // A file of the store whose marks cannot be read.
        let writer = PartitionWriter::new(store.clone(), "test");
        let mut transaction = writer.begin();
        let damaged = vec![KeyValue::new(WAL_KEY.to_string(), "{not json".to_string())];
        let rows = observations(9, 1, 0).batch;
        let day = Some(chrono::Utc::now().date_naive());
        transaction
            .write_stream(
                Table::Observations,
                day,
                1,
                damaged,
                futures::stream::iter([Ok::<_, Error>(rows)]),
            )
            .await
            .unwrap();
        transaction.commit().await.unwrap();
        let err = Wal::open(dir.path(), WalStats::default(), |id, tables, oldest| {
            let store = store.clone();
            async move { committed_through(&store, id, &tables, oldest).await }
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("damaged write-ahead log marks") && err.contains("observations/day="),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_restart_after_a_clean_stop_never_takes_new_records_for_stored_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::in_memory();
        let flusher = open(dir.path(), &store).await;
        let first_id = flusher.wal().id();
        for tag in 1..=3 {
            flusher.wal().append(vec![observations(tag, 1, 0)]).await.unwrap();
        }
        flusher.flush().await.unwrap();
        drop(flusher);
        // A clean stop left no segment: numbering starts again, so the id must change.
        let flusher = open(dir.path(), &store).await;
        assert_ne!(flusher.wal().id(), first_id);
        assert_eq!(flusher.wal().append(vec![observations(4, 2, 0)]).await.unwrap(), 1);
        drop(flusher);
        // A crash before that record's flush: the replay must not take it for stored
        // (the store holds marks up to 3 under the first id).
        let flusher = open(dir.path(), &store).await;
        flusher.flush().await.unwrap();
        assert_eq!(stored(&store).await, 5);
    }
}
