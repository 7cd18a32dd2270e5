//! The write-ahead log: what makes a REST `2xx` durable before its rows reach Parquet.
//!
//! A request's rows are appended as one *record* (rows of one or more tables,
//! each table's rows as an Arrow IPC stream) to the current segment file of
//! the WAL folder. One thread owns the file: it takes every record queued
//! while the previous sync ran (or within 2 ms of the first), writes them, calls `fdatasync` once, moves
//! their rows into the in-memory [`Buffer`] and only then acknowledges them
//! (group commit: under load many requests share one sync). The flusher
//! later [`Wal::rotate`]s: the segment is closed and the buffer handed over;
//! once its rows are committed to the store, the closed segments are deleted.
//!
//! A failed write or sync is never retried on the same file: every record
//! not yet synced gets an error, the descriptor is dropped, the segment is
//! cut back to its last good sync through a new descriptor, and the next
//! record starts a new segment. So a record whose request got an error is
//! never replayed, and no record is acknowledged on the strength of a sync
//! that followed a failed one (the kernel may have dropped its pages).
//!
//! On start, [`Wal::open`] replays every segment left behind. Files flushed
//! from the WAL record in their Parquet metadata (`proxima.wal`, see [`crate::marks`]) the last
//! sequence number they hold per WAL, so a record whose rows reached the
//! store before a crash (and before its segment was deleted) is not stored
//! twice. A torn record at the end of the last segment was never
//! acknowledged and is dropped; damage anywhere else stops the start with
//! the file and offset, so nothing acknowledged is silently lost.
//!
//! Frame layout: `len: u32 | crc32(body): u32 | body`, body = `seq: u64 |
//! written_at_micros: i64 | entries: u32 | (table name: u8 len + bytes,
//! ipc: u32 len + bytes)*`, all little-endian.
//!
//! A WAL opened with master keys ([`Wal::open_sealed`], a store's) seals its records: each
//! segment starts with a header, `PXWE | len: u32 | JSON {format, masterKeyID, wrappedKey}`,
//! that carries a random key of its own wrapped by the current master key, and each frame's
//! body is `seq: u64 | AES-256-GCM(written_at_micros ‖ entries)` under that key, with the
//! sequence number as nonce and the WAL's id and the sequence number as associated data;
//! replay refuses sequence numbers that do not grow. A segment key seals one segment only,
//! and sequence numbers never repeat within a segment (a number reused after a crash goes
//! into a new segment, under a new key), so no nonce is ever used twice with a key.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use proxima_engine::Table;
use proxima_engine::keys::{KeyProvider, open_at, random_key, seal_at};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use uuid::Uuid;

use crate::error::{Error, Result};

const SEGMENT_SUFFIX: &str = ".wal";
/// The first bytes of a sealed segment (as a plaintext frame's length they would announce
/// a record above 1 GiB, which no request carries).
const SEALED_MAGIC: &[u8; 4] = b"PXWE";
/// The `format` of a sealed segment's header.
const SEGMENT_KEY_FORMAT: &str = "proxima-wal-key/1";
const ID_FILE: &str = "wal.id";
/// Records written by one thread between syncs at most (bounds a sync's latency).
const MAX_GROUP: usize = 4096;
/// How long the WAL thread gathers records after the first one before it syncs: fewer
/// syncs under load (each costs kernel time), at most this much added latency.
const GROUP_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// Rows of one table inside a WAL record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The table the rows belong to.
    pub table: Table,
    /// The rows, in the table's file schema.
    pub batch: RecordBatch,
}

/// Rows acknowledged but not yet in the store, by table, in acknowledgement order.
#[derive(Debug, Default)]
pub struct Buffer {
    /// Batches per table.
    pub tables: BTreeMap<Table, Vec<RecordBatch>>,
    /// Rows held.
    pub rows: u64,
}

impl Buffer {
    fn push(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            self.rows += entry.batch.num_rows() as u64;
            self.tables.entry(entry.table).or_default().push(entry.batch);
        }
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Adds what `other` holds after this buffer's rows.
    pub fn append(&mut self, other: Buffer) {
        self.rows += other.rows;
        for (table, batches) in other.tables {
            self.tables.entry(table).or_default().extend(batches);
        }
    }
}

/// What [`Wal::rotate`] hands to the flusher.
#[derive(Debug)]
pub struct Rotation {
    /// The rows of every record up to `through`.
    pub buffer: Buffer,
    /// The WAL's id (written into flushed files with `through`).
    pub wal_id: Uuid,
    /// The last sequence number in `buffer`.
    pub through: u64,
    /// Closed segments whose records are all in `buffer` (or were before): delete them
    /// once `buffer` is committed.
    pub segments: Vec<PathBuf>,
}

/// Counters of the WAL, for `/metrics`.
#[derive(Debug, Clone)]
pub struct WalStats {
    /// Bytes appended since start.
    pub bytes: Counter,
    /// Latency of each sync (one per group of records).
    pub sync_seconds: Histogram,
}

impl Default for WalStats {
    fn default() -> Self {
        Self {
            bytes: Counter::default(),
            sync_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 14)),
        }
    }
}

enum Command {
    Append {
        frame_body: Vec<u8>,
        entries: Vec<Entry>,
        reply: oneshot::Sender<Result<u64>>,
    },
    Rotate {
        reply: oneshot::Sender<Result<Rotation>>,
    },
}

/// A handle to the WAL thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct Wal {
    commands: mpsc::Sender<Command>,
    id: Uuid,
    stats: Arc<WalStats>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Append { entries, .. } => write!(f, "Append({} entries)", entries.len()),
            Command::Rotate { .. } => f.write_str("Rotate"),
        }
    }
}

/// What replay found in the segments left by the last run.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Records read.
    pub records: u64,
    /// Rows read.
    pub rows: u64,
    /// Bytes of a torn last record that was dropped (never acknowledged).
    pub torn_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct IdFile {
    id: String,
}

/// A record read back from a segment.
struct Record {
    seq: u64,
    written_at_micros: i64,
    entries: Vec<Entry>,
}

impl Wal {
    /// Opens the WAL in `dir` (created if missing), replays what earlier runs left, and starts
    /// the writer thread. `committed` is asked, for the replayed records' tables, which
    /// sequence number of this WAL the store already holds (see [`crate::marks::WAL_KEY`]); the replayed
    /// rows after it come back in the first [`Wal::rotate`].
    pub async fn open<F, Fut>(dir: &Path, stats: WalStats, committed: F) -> Result<(Self, Replayed)>
    where
        F: FnOnce(Uuid, Vec<Table>, i64) -> Fut,
        Fut: std::future::Future<Output = Result<u64>>,
    {
        Self::open_with(Arc::new(OsFs), None, dir, stats, committed).await
    }

    /// [`Wal::open`], sealing every record with a key of its segment wrapped by master key
    /// `keys` (see the module docs); segments it replays may be sealed or not.
    pub async fn open_sealed<F, Fut>(
        dir: &Path,
        keys: Arc<dyn KeyProvider>,
        stats: WalStats,
        committed: F,
    ) -> Result<(Self, Replayed)>
    where
        F: FnOnce(Uuid, Vec<Table>, i64) -> Fut,
        Fut: std::future::Future<Output = Result<u64>>,
    {
        Self::open_with(Arc::new(OsFs), Some(keys), dir, stats, committed).await
    }

    /// [`Wal::open`] with segment files made by `fs` (tests inject failures through it),
    /// sealed with `keys` if given.
    pub async fn open_with<F, Fut>(
        fs: Arc<dyn SegmentFs>,
        keys: Option<Arc<dyn KeyProvider>>,
        dir: &Path,
        stats: WalStats,
        committed: F,
    ) -> Result<(Self, Replayed)>
    where
        F: FnOnce(Uuid, Vec<Table>, i64) -> Fut,
        Fut: std::future::Future<Output = Result<u64>>,
    {
        fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        // One process per WAL: a second one would interleave records and delete the
        // first one's segments. The OS drops the lock when the process dies, even by kill -9.
        let lock_path = dir.join("wal.lock");
        let lock = File::create(&lock_path).map_err(|e| io_error(&lock_path, e))?;
        // A handle of this process that was just dropped releases it when its thread ends.
        let mut locked = lock.try_lock().is_ok();
        for _ in 0..20 {
            if locked {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            locked = lock.try_lock().is_ok();
        }
        if !locked {
            return Err(Error::Wal(format!(
                "{}: another proxima serve is using this write-ahead log; give each process its own --wal-dir",
                dir.display()
            )));
        }
        let mut id = wal_id(dir)?;
        let mut segments = list_segments(dir)?;
        let mut records = Vec::new();
        let mut replayed = Replayed::default();
        let last = segments.len().saturating_sub(1);
        for (i, (_, path)) in segments.iter().enumerate() {
            let (mut found, torn) = read_segment(path, i == last, keys.as_deref(), id)?;
            replayed.torn_bytes += torn;
            records.append(&mut found);
        }
        let mut buffer = Buffer::default();
        let mut next_seq = 1;
        if records.is_empty() {
            // Numbering starts again at 1: under the old id, files of the store already
            // hold higher marks, and a replay would take new records for stored ones.
            id = write_wal_id(dir, Uuid::new_v4())?;
        }
        // Sequence numbers only grow: a record repeated or moved (by hand, in the folder)
        // would otherwise be replayed twice or out of order.
        if let Some(pair) = records.windows(2).find(|pair| pair[1].seq <= pair[0].seq) {
            return Err(Error::Wal(format!(
                "{}: record {} follows record {}: records were repeated or reordered; the server will not start \
                 until the folder is repaired",
                dir.display(),
                pair[1].seq,
                pair[0].seq
            )));
        }
        if let Some(last) = records.last() {
            next_seq = last.seq + 1;
            let tables: Vec<Table> = {
                let mut t: Vec<Table> = records.iter().flat_map(|r| r.entries.iter().map(|e| e.table)).collect();
                t.sort();
                t.dedup();
                t
            };
            let oldest = records.iter().map(|r| r.written_at_micros).min().unwrap_or(0);
            let done = committed(id, tables, oldest).await?;
            for record in records {
                if record.seq <= done {
                    continue;
                }
                replayed.records += 1;
                replayed.rows += record.entries.iter().map(|e| e.batch.num_rows() as u64).sum::<u64>();
                buffer.push(record.entries);
            }
            if replayed.records > 0 || done > 0 {
                info!(wal = %dir.display(), records = replayed.records, rows = replayed.rows, already_stored_through = done, "replayed the write-ahead log");
            }
        }
        // Every segment found is closed: new records go to a new one.
        let closed: Vec<PathBuf> = segments.drain(..).map(|(_, p)| p).collect();
        let stats = Arc::new(stats);
        let (commands, receiver) = mpsc::channel(MAX_GROUP * 4);
        let writer = WriterThread {
            _lock: lock,
            fs,
            keys,
            segment_key: None,
            header: None,
            dir: dir.to_path_buf(),
            id,
            file: None,
            closed,
            current: None,
            synced_len: 0,
            written_len: 0,
            next_seq,
            last_seq: next_seq - 1,
            buffer,
            stats: Arc::clone(&stats),
        };
        std::thread::Builder::new()
            .name("proxima-wal".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| io_error(dir, e))?;
        Ok((Self { commands, id, stats }, replayed))
    }

    /// This WAL's id (stable across restarts of the same folder).
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The WAL's counters.
    pub fn stats(&self) -> &WalStats {
        &self.stats
    }

    /// Appends one record and waits until it is synced to disk; then its rows are in the
    /// buffer. Returns the record's sequence number.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<u64> {
        let frame_body = encode_entries(&entries)?;
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Append {
                frame_body,
                entries,
                reply,
            })
            .await
            .map_err(|_| Error::Wal("the write-ahead log has stopped".into()))?;
        done.await
            .map_err(|_| Error::Wal("the write-ahead log has stopped".into()))?
    }

    /// Closes the current segment and takes the buffer.
    pub async fn rotate(&self) -> Result<Rotation> {
        let (reply, done) = oneshot::channel();
        self.commands
            .send(Command::Rotate { reply })
            .await
            .map_err(|_| Error::Wal("the write-ahead log has stopped".into()))?;
        done.await
            .map_err(|_| Error::Wal("the write-ahead log has stopped".into()))?
    }
}

struct WriterThread {
    /// Held for the thread's life: the WAL folder's lock.
    _lock: File,
    fs: Arc<dyn SegmentFs>,
    /// The master keys, if records are sealed.
    keys: Option<Arc<dyn KeyProvider>>,
    /// The current segment's key, if records are sealed.
    segment_key: Option<[u8; 32]>,
    /// The current segment's header, until the first frame writes it.
    header: Option<Vec<u8>>,
    dir: PathBuf,
    id: Uuid,
    file: Option<BufWriter<Box<dyn SegmentFile>>>,
    current: Option<PathBuf>,
    /// Bytes of the current segment known to be on disk (after its last good sync).
    synced_len: u64,
    /// Bytes handed to the current segment so far.
    written_len: u64,
    closed: Vec<PathBuf>,
    next_seq: u64,
    last_seq: u64,
    buffer: Buffer,
    stats: Arc<WalStats>,
}

/// Records written but not yet synced, each with the request waiting for its answer.
type Unsynced = Vec<(u64, Vec<Entry>, oneshot::Sender<Result<u64>>)>;

impl WriterThread {
    fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        while let Some(first) = receiver.blocking_recv() {
            let mut group = vec![first];
            let deadline = Instant::now() + GROUP_WAIT;
            // A rotation (a flush, a case's trace) is not kept waiting.
            let mut gather = matches!(group[0], Command::Append { .. });
            while group.len() < MAX_GROUP {
                match receiver.try_recv() {
                    Ok(command) => {
                        gather &= matches!(command, Command::Append { .. });
                        group.push(command);
                    }
                    Err(mpsc::error::TryRecvError::Empty) if gather && Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_micros(100));
                    }
                    Err(_) => break,
                }
            }
            let mut unsynced: Unsynced = Vec::new();
            for command in group {
                match command {
                    Command::Append {
                        frame_body,
                        entries,
                        reply,
                    } => match self.write(&frame_body) {
                        Ok(seq) => unsynced.push((seq, entries, reply)),
                        Err(e) => {
                            let failure = e.to_string();
                            let _ = reply.send(Err(e));
                            self.abandon_segment(&mut unsynced, &failure);
                        }
                    },
                    Command::Rotate { reply } => {
                        // Records before the rotation are synced and buffered first.
                        self.commit(&mut unsynced);
                        let _ = reply.send(Ok(self.rotate()));
                    }
                }
            }
            self.commit(&mut unsynced);
        }
    }

    /// Syncs the current segment and acknowledges what was written since the last sync; if
    /// the sync fails, none of it is acknowledged and the segment is abandoned.
    fn commit(&mut self, unsynced: &mut Unsynced) {
        if unsynced.is_empty() {
            return;
        }
        if let Err(e) = self.sync() {
            self.abandon_segment(unsynced, &e.to_string());
            return;
        }
        self.synced_len = self.written_len;
        for (seq, entries, reply) in unsynced.drain(..) {
            self.buffer.push(entries);
            self.last_seq = seq;
            let _ = reply.send(Ok(seq));
        }
    }

    /// After a failed write or sync: fails every unsynced record, drops the segment's
    /// descriptor without syncing it again (after a failed fsync the kernel may have dropped
    /// the dirty pages, and a later fsync on the same descriptor can succeed without them),
    /// and cuts the segment back to what the last good sync made durable, through a new
    /// descriptor, so that a replay never finds a record whose request got an error. The
    /// next record starts a new segment.
    fn abandon_segment(&mut self, unsynced: &mut Unsynced, failure: &str) {
        for (_, _, reply) in unsynced.drain(..) {
            let _ = reply.send(Err(Error::Wal(failure.to_string())));
        }
        self.file = None;
        if let Some(path) = self.current.take() {
            match self.fs.truncate(&path, self.synced_len) {
                Ok(()) => {
                    warn!(wal = %self.dir.display(), %failure, segment = %path.display(), kept_bytes = self.synced_len, "write-ahead log failure; the segment was cut back to its last sync and a new one starts")
                }
                // Until the next flush deletes this segment, a crash would replay the
                // unacknowledged records at its end: said loudly, for the operator.
                Err(e) => {
                    tracing::error!(wal = %self.dir.display(), %failure, segment = %path.display(), error = %e, "write-ahead log failure, and the segment could not be cut back: until the next flush deletes it, a crash would replay records whose requests failed")
                }
            }
            self.closed.push(path);
        }
        self.synced_len = 0;
        self.written_len = 0;
    }

    /// Writes one frame (not yet synced); returns its sequence number.
    fn write(&mut self, body_tail: &[u8]) -> Result<u64> {
        let seq = self.next_seq;
        if self.file.is_none() {
            // The key first: if the master keys fail, no file is made.
            let sealing = match &self.keys {
                Some(keys) => Some(new_segment_key(keys.as_ref())?),
                None => None,
            };
            let path = self.dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"));
            let file = self.fs.create(&path).map_err(|e| io_error(&path, e))?;
            // The new file's name must survive a crash as well as its contents.
            if let Err(e) = self.fs.sync_dir(&self.dir) {
                // The empty file stays (deleted with the next flush's segments), and its
                // number is not used again, so the next record can start a segment.
                self.closed.push(path);
                self.next_seq += 1;
                return Err(io_error(&self.dir, e));
            }
            self.file = Some(BufWriter::with_capacity(1 << 20, file));
            self.current = Some(path);
            self.synced_len = 0;
            self.written_len = 0;
            (self.segment_key, self.header) = match sealing {
                Some((key, header)) => (Some(key), Some(header)),
                None => (None, None),
            };
        }
        let written_at = chrono::Utc::now().timestamp_micros().to_le_bytes();
        let mut body = Vec::with_capacity(16 + body_tail.len() + 16);
        body.extend_from_slice(&seq.to_le_bytes());
        match &self.segment_key {
            Some(key) => {
                let mut plain = Vec::with_capacity(8 + body_tail.len());
                plain.extend_from_slice(&written_at);
                plain.extend_from_slice(body_tail);
                body.extend_from_slice(&seal_at(key, nonce_of(seq), &record_aad(self.id, seq), &plain));
            }
            None => {
                body.extend_from_slice(&written_at);
                body.extend_from_slice(body_tail);
            }
        }
        let len = u32::try_from(body.len()).map_err(|_| Error::Wal("record larger than 4 GiB".into()))?;
        let file = self.file.as_mut().expect("opened above");
        let path = self.current.as_ref().expect("opened above");
        // Sequence numbers are never reused, even for a record that then fails.
        self.next_seq += 1;
        if let Some(header) = self.header.take() {
            file.write_all(&header).map_err(|e| io_error(path, e))?;
            self.written_len += header.len() as u64;
            self.stats.bytes.inc_by(header.len() as u64);
        }
        file.write_all(&len.to_le_bytes())
            .and_then(|()| file.write_all(&crc32fast::hash(&body).to_le_bytes()))
            .and_then(|()| file.write_all(&body))
            .map_err(|e| io_error(path, e))?;
        self.written_len += 8 + body.len() as u64;
        self.stats.bytes.inc_by(8 + body.len() as u64);
        Ok(seq)
    }

    fn sync(&mut self) -> Result<()> {
        let (Some(file), Some(path)) = (self.file.as_mut(), self.current.as_ref()) else {
            return Ok(());
        };
        let started = Instant::now();
        file.flush()
            .and_then(|()| file.get_mut().sync_data())
            .map_err(|e| io_error(path, e))?;
        self.stats.sync_seconds.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn rotate(&mut self) -> Rotation {
        self.file = None;
        if let Some(path) = self.current.take() {
            self.closed.push(path);
        }
        self.synced_len = 0;
        self.written_len = 0;
        Rotation {
            buffer: std::mem::take(&mut self.buffer),
            wal_id: self.id,
            through: self.last_seq,
            segments: std::mem::take(&mut self.closed),
        }
    }
}

/// A segment file open for appending.
pub trait SegmentFile: Write + Send {
    /// Makes everything written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> std::io::Result<()>;
}

impl SegmentFile for File {
    fn sync_data(&mut self) -> std::io::Result<()> {
        File::sync_data(self)
    }
}

/// The file operations of the WAL thread: the operating system's, or a failing one in tests.
pub trait SegmentFs: Send + Sync + std::fmt::Debug + 'static {
    /// Creates a new segment (it must not exist) for appending.
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn SegmentFile>>;
    /// Makes the folder's entries (a new file's name) durable.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
    /// Cuts a segment back to `len` bytes through a new descriptor, and syncs it.
    fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()>;
}

/// The operating system's files.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

impl SegmentFs for OsFs {
    fn create(&self, path: &Path) -> std::io::Result<Box<dyn SegmentFile>> {
        let file = OpenOptions::new().create_new(true).append(true).open(path)?;
        Ok(Box::new(file))
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()> {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Wal(format!("{}: {source}", path.display()))
}

/// The WAL's id, created on first use.
fn wal_id(dir: &Path) -> Result<Uuid> {
    let path = dir.join(ID_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str::<IdFile>(&text)
            .ok()
            .and_then(|file| Uuid::parse_str(&file.id).ok())
            .ok_or_else(|| Error::Wal(format!("{}: not a WAL id file", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_wal_id(dir, Uuid::new_v4()),
        Err(e) => Err(io_error(&path, e)),
    }
}

/// Makes `id` the WAL's id (durably: written aside, synced, renamed, folder synced).
fn write_wal_id(dir: &Path, id: Uuid) -> Result<Uuid> {
    let path = dir.join(ID_FILE);
    let text = serde_json::to_string(&IdFile { id: id.to_string() }).expect("serialisable");
    let tmp = dir.join(format!("{ID_FILE}.tmp"));
    fs::write(&tmp, text)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, &path))
        .and_then(|()| File::open(dir)?.sync_all())
        .map_err(|e| io_error(&path, e))?;
    Ok(id)
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for item in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let item = item.map_err(|e| io_error(dir, e))?;
        let name = item.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        segments.push((first, item.path()));
    }
    segments.sort();
    Ok(segments)
}

/// Reads a segment's records; a damaged tail is tolerated only in the last segment. A
/// sealed segment needs the master key its header names.
fn read_segment(
    path: &Path,
    is_last: bool,
    keys: Option<&dyn KeyProvider>,
    wal_id: Uuid,
) -> Result<(Vec<Record>, u64)> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_error(path, e))?;
    let mut records = Vec::new();
    let mut offset = 0usize;
    let mut key = None;
    if bytes.starts_with(SEALED_MAGIC) {
        match parse_segment_header(&bytes) {
            Some((header, used)) => {
                key = Some(segment_key(path, &header, keys)?);
                offset = used;
            }
            // A header cut short (the segment's first record was never synced); a complete
            // header that does not parse is damage.
            None if is_last && header_cut_short(&bytes) => return Ok((records, bytes.len() as u64)),
            None => {
                return Err(Error::Wal(format!(
                    "{}: damaged segment header; the server will not start until it is repaired or moved away",
                    path.display()
                )));
            }
        }
    }
    if keys.is_some() && key.is_none() && !bytes.is_empty() {
        // A WAL sealed with master keys replays no record in the clear: one would be rows
        // placed in the folder by someone without the keys.
        return Err(Error::Wal(format!(
            "{}: a segment in the clear in a write-ahead log sealed with master keys; if it was written before \
             the store had a master key, start the server once without the key to flush it",
            path.display()
        )));
    }
    while offset < bytes.len() {
        let frame = parse_frame(&bytes[offset..], key.as_ref().map(|k| (k, wal_id)));
        match frame {
            Ok(Some((record, used))) => {
                records.push(record);
                offset += used;
            }
            Ok(None) if is_last => {
                let torn = (bytes.len() - offset) as u64;
                warn!(segment = %path.display(), offset, torn, "dropped a torn record at the end of the write-ahead log (it was never acknowledged)");
                return Ok((records, torn));
            }
            Ok(None) | Err(()) => {
                return Err(Error::Wal(format!(
                    "{}: damaged record at byte {offset}; the segment is kept for inspection and the server \
                     will not start until it is repaired or moved away",
                    path.display()
                )));
            }
        }
    }
    Ok((records, 0))
}

/// A frame: `Ok(None)` if cut short or its CRC fails (a torn write at the end of the last
/// segment), `Err` if complete and intact but not a record (a seal that does not open: the
/// wrong key, or tampering), which is never taken for a torn write.
fn parse_frame(bytes: &[u8], key: Option<(&[u8; 32], Uuid)>) -> Result<Option<(Record, usize)>, ()> {
    let Some((len, crc, body)) = frame_body(bytes) else {
        return Ok(None);
    };
    if crc32fast::hash(body) != crc {
        return Ok(None);
    }
    decode_frame(body, key).map(|record| Some((record, 8 + len))).ok_or(())
}

fn frame_body(bytes: &[u8]) -> Option<(usize, u32, &[u8])> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    Some((len, crc, bytes.get(8..8 + len)?))
}

fn decode_frame(body: &[u8], key: Option<(&[u8; 32], Uuid)>) -> Option<Record> {
    let seq_bytes = body.get(0..8)?;
    let seq = u64::from_le_bytes(seq_bytes.try_into().ok()?);
    let opened;
    let rest = match key {
        Some(key) => {
            let (key, wal_id) = key;
            opened = open_at(key, nonce_of(seq), &record_aad(wal_id, seq), body.get(8..)?)?;
            &opened[..]
        }
        None => body.get(8..)?,
    };
    let written_at_micros = i64::from_le_bytes(rest.get(0..8)?.try_into().ok()?);
    let entries = decode_entries(rest.get(8..)?)?;
    Some(Record {
        seq,
        written_at_micros,
        entries,
    })
}

/// A sealed segment's key, as its header carries it.
#[derive(Debug, Serialize, Deserialize)]
struct SegmentKeyHeader {
    format: String,
    #[serde(rename = "masterKeyID")]
    master_key_id: String,
    #[serde(rename = "wrappedKey")]
    wrapped: String,
}

/// A new segment's key, and the header that carries it wrapped by the current master key.
fn new_segment_key(keys: &dyn KeyProvider) -> Result<([u8; 32], Vec<u8>)> {
    let key = random_key();
    let master_key_id = keys.current();
    let wrapped = keys
        .wrap(&key, &master_key_id)
        .map_err(|e| Error::Wal(format!("cannot seal a new segment: {e}")))?;
    let json = serde_json::to_vec(&SegmentKeyHeader {
        format: SEGMENT_KEY_FORMAT.into(),
        master_key_id,
        wrapped,
    })
    .expect("a segment header always serialises");
    let mut header = SEALED_MAGIC.to_vec();
    header.extend_from_slice(&(json.len() as u32).to_le_bytes());
    header.extend_from_slice(&json);
    Ok((key, header))
}

/// How many segments of the WAL in `dir` each master key seals (a key that seals any is
/// still needed: `proxima key retire` asks). Empty if there is no such folder.
pub fn segment_master_keys(dir: &Path) -> Result<BTreeMap<String, usize>> {
    let mut uses = BTreeMap::new();
    if !dir.exists() {
        return Ok(uses);
    }
    for (_, path) in list_segments(dir)? {
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| io_error(&path, e))?;
        if let Some((header, _)) = parse_segment_header(&bytes) {
            *uses.entry(header.master_key_id).or_default() += 1;
        }
    }
    Ok(uses)
}

/// The rows the WAL in `dir` holds, segment by segment (`proxima erasure verify` reads
/// them). It takes no lock, so a running server's last segment may end in a record being
/// written: that is skipped, as a replay would. Nothing if there is no such folder.
pub fn read_entries(dir: &Path, keys: Option<&dyn KeyProvider>) -> Result<Vec<(PathBuf, Vec<Entry>)>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let segments = list_segments(dir)?;
    if segments.is_empty() {
        return Ok(Vec::new());
    }
    let id = wal_id(dir)?;
    let last = segments.len() - 1;
    let mut found = Vec::with_capacity(segments.len());
    for (i, (_, path)) in segments.into_iter().enumerate() {
        let (records, _) = read_segment(&path, i == last, keys, id)?;
        found.push((path, records.into_iter().flat_map(|r| r.entries).collect()));
    }
    Ok(found)
}

/// Whether a sealed segment ends before its header does (a crash before its first sync).
fn header_cut_short(bytes: &[u8]) -> bool {
    match bytes.get(4..8) {
        None => true,
        Some(len) => bytes.len() < 8 + u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize,
    }
}

/// A sealed segment's header and the bytes it takes; `None` if cut short or not one.
fn parse_segment_header(bytes: &[u8]) -> Option<(SegmentKeyHeader, usize)> {
    let len = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
    let header: SegmentKeyHeader = serde_json::from_slice(bytes.get(8..8 + len)?).ok()?;
    (header.format == SEGMENT_KEY_FORMAT).then_some((header, 8 + len))
}

/// Unwraps a sealed segment's key with the master key its header names.
fn segment_key(path: &Path, header: &SegmentKeyHeader, keys: Option<&dyn KeyProvider>) -> Result<[u8; 32]> {
    let keys = keys.ok_or_else(|| {
        Error::Wal(format!(
            "{}: the segment is sealed with master key {}, and no master key was given (--master-key-file FILE, \
             or PROXIMA_MASTER_KEY)",
            path.display(),
            header.master_key_id
        ))
    })?;
    let key = keys
        .unwrap(&header.wrapped, &header.master_key_id)
        .map_err(|e| Error::Wal(format!("{}: {e}", path.display())))?;
    key.try_into()
        .map_err(|_| Error::Wal(format!("{}: the segment key is not 32 bytes", path.display())))
}

/// What a sealed record's seal binds besides its content: the WAL's id and the record's
/// sequence number, so a record copied from another WAL, or to another place, does not open.
fn record_aad(wal_id: Uuid, seq: u64) -> [u8; 24] {
    let mut aad = [0u8; 24];
    aad[..16].copy_from_slice(wal_id.as_bytes());
    aad[16..].copy_from_slice(&seq.to_le_bytes());
    aad
}

/// The nonce of record `seq` in a sealed segment.
fn nonce_of(seq: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&seq.to_le_bytes());
    nonce
}

fn encode_entries(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        let name = entry.table.name().as_bytes();
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        let mut ipc = Vec::new();
        {
            let mut writer = StreamWriter::try_new(&mut ipc, &entry.batch.schema())?;
            writer.write(&entry.batch)?;
            writer.finish()?;
        }
        out.extend_from_slice(&(ipc.len() as u32).to_le_bytes());
        out.extend_from_slice(&ipc);
    }
    Ok(out)
}

fn decode_entries(mut bytes: &[u8]) -> Option<Vec<Entry>> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = bytes.split_at_checked(n)?;
        bytes = tail;
        Some(head)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let mut entries = Vec::with_capacity((count as usize).min(1_024));
    for _ in 0..count {
        let name_len = take(1)?[0] as usize;
        let name = std::str::from_utf8(take(name_len)?).ok()?;
        let table = Table::from_name(name)?;
        let ipc_len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let ipc = take(ipc_len)?;
        // A frame that passed its checksum was written by this process; a damaged one must still
        // be an error, not a panic in arrow-ipc.
        proxima_engine::ipc::vet_stream(ipc, u64::MAX).ok()?;
        let reader = StreamReader::try_new(ipc, None).ok()?;
        for batch in reader {
            entries.push(Entry {
                table,
                batch: conform(table, batch.ok()?)?,
            });
        }
    }
    Some(entries)
}

/// `batch` in `table`'s current file schema: a record written before a nullable column was
/// added (say `cases.cell`) gets it as nulls, so that an upgrade replays its log. `None`
/// if a column the schema requires is missing or of another type.
fn conform(table: Table, batch: RecordBatch) -> Option<RecordBatch> {
    let schema = table.file_schema();
    if batch.schema().fields() == schema.fields() {
        return Some(batch);
    }
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Some(std::sync::Arc::clone(column)),
            None if field.is_nullable() => Some(arrow::array::new_null_array(field.data_type(), batch.num_rows())),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    RecordBatch::try_new(schema, columns).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    /// A case logged before `cases.cell` and `cases.after_alert` existed replays in the
    /// current schema, the new columns null; a record missing a required column does not.
    #[test]
    fn a_record_of_an_older_schema_replays_in_the_current_one() {
        use arrow::datatypes::{Field, Schema};
        let current = Table::Cases.file_schema();
        let old_fields: Vec<Field> = current
            .fields()
            .iter()
            .filter(|f| !["cell", "after_alert"].contains(&f.name().as_str()))
            .map(|f| f.as_ref().clone())
            .collect();
        let old = RecordBatch::try_new(
            std::sync::Arc::new(Schema::new(old_fields)),
            vec![
                std::sync::Arc::new(StringArray::from(vec!["c"])),
                std::sync::Arc::new(StringArray::from(vec!["d"])),
                std::sync::Arc::new(StringArray::from(vec!["confirmed"])),
                std::sync::Arc::new(arrow::array::TimestampMicrosecondArray::from(vec![1]).with_timezone("UTC")),
                std::sync::Arc::new(StringArray::from(vec!["t"])),
                std::sync::Arc::new(arrow::array::Int32Array::from(vec![1])),
                std::sync::Arc::new(arrow::array::Int32Array::from(vec![2])),
            ],
        )
        .unwrap();
        let replayed = conform(Table::Cases, old.clone()).unwrap();
        assert_eq!(replayed.schema(), current);
        assert_eq!(replayed.column_by_name("cell").unwrap().null_count(), 1);
        assert_eq!(
            replayed.column_by_name("status").unwrap(),
            old.column_by_name("status").unwrap()
        );
        let without_status = old.project(&[0, 1, 3, 4, 5, 6]).unwrap();
        assert!(conform(Table::Cases, without_status).is_none());
    }
    use proxima_engine::schema;

    fn revocation(uuid: &str) -> Entry {
        let batch = RecordBatch::try_new(
            schema::REVOCATIONS.clone(),
            vec![
                Arc::new(StringArray::from(vec![uuid])),
                Arc::new(arrow::array::TimestampMicrosecondArray::from(vec![1_000_000]).with_timezone("UTC")),
            ],
        )
        .unwrap();
        Entry {
            table: Table::Revocations,
            batch,
        }
    }

    async fn nothing_stored(_: Uuid, _: Vec<Table>, _: i64) -> Result<u64> {
        Ok(0)
    }

    #[tokio::test]
    async fn replays_acknowledged_records_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, replayed) = Wal::open(dir.path(), WalStats::default(), nothing_stored)
            .await
            .unwrap();
        assert_eq!(replayed.records, 0);
        for i in 0..5 {
            let seq = wal.append(vec![revocation(&format!("d{i}"))]).await.unwrap();
            assert_eq!(seq, i + 1);
        }
        let id = wal.id();
        drop(wal);
        // A torn frame (as after a crash mid-write) at the end of the segment.
        let (_, segment) = list_segments(dir.path()).unwrap().pop().unwrap();
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(file);

        let (wal, replayed) = Wal::open(dir.path(), WalStats::default(), nothing_stored)
            .await
            .unwrap();
        assert_eq!(wal.id(), id, "the id survives restarts that replay records");
        assert_eq!((replayed.records, replayed.rows, replayed.torn_bytes), (5, 5, 6));
        let seq = wal.append(vec![revocation("d5")]).await.unwrap();
        assert_eq!(seq, 6, "numbering continues after the replayed records");
        let rotation = wal.rotate().await.unwrap();
        assert_eq!(rotation.buffer.rows, 6);
        assert_eq!(rotation.through, 6);
        assert_eq!(rotation.segments.len(), 2);
    }

    #[tokio::test]
    async fn sealed_segments_hold_no_row_in_the_clear_and_replay_only_with_the_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Arc<dyn KeyProvider> = Arc::new(proxima_engine::keys::MasterKeys::generate(chrono::Utc::now()));
        let uuid = "6f1c2d3e-4a5b-4c6d-8e7f-901234567890";
        let (wal, _) = Wal::open_sealed(dir.path(), Arc::clone(&keys), WalStats::default(), nothing_stored)
            .await
            .unwrap();
        for _ in 0..3 {
            wal.append(vec![revocation(uuid)]).await.unwrap();
        }
        wal.rotate().await.unwrap();
        wal.append(vec![revocation(uuid)]).await.unwrap();
        drop(wal);
        let segments = list_segments(dir.path()).unwrap();
        assert_eq!(segments.len(), 2);
        for (_, path) in &segments {
            let bytes = fs::read(path).unwrap();
            assert!(bytes.starts_with(SEALED_MAGIC));
            assert!(!bytes.windows(uuid.len()).any(|w| w == uuid.as_bytes()));
        }

        let err = Wal::open(dir.path(), WalStats::default(), nothing_stored)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no master key was given") && err.contains(&keys.current()),
            "{err}"
        );
        let stranger: Arc<dyn KeyProvider> = Arc::new(proxima_engine::keys::MasterKeys::generate(chrono::Utc::now()));
        let err = Wal::open_sealed(dir.path(), stranger, WalStats::default(), nothing_stored)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&keys.current()), "{err}");

        // A torn record at the end of the last segment is dropped, as in a plaintext one.
        let (_, last) = &segments[1];
        let intact = fs::read(last).unwrap();
        let mut torn = intact.clone();
        torn.extend_from_slice(&[200, 0, 0, 0, 1, 2]);
        fs::write(last, &torn).unwrap();
        let (wal, replayed) = Wal::open_sealed(dir.path(), Arc::clone(&keys), WalStats::default(), nothing_stored)
            .await
            .unwrap();
        assert_eq!((replayed.records, replayed.rows, replayed.torn_bytes), (4, 4, 6));
        drop(wal);
        // The last record altered, its CRC fixed up: the seal does not open. That is damage,
        // not a torn write, even at the very end.
        let mut bytes = intact;
        let header = parse_segment_header(&bytes).unwrap().1;
        let len = u32::from_le_bytes(bytes[header..header + 4].try_into().unwrap()) as usize;
        let body = header + 8..header + 8 + len;
        bytes[body.end - 1] ^= 1;
        let crc = crc32fast::hash(&bytes[body.clone()]);
        bytes[header + 4..header + 8].copy_from_slice(&crc.to_le_bytes());
        fs::write(last, bytes).unwrap();
        let err = Wal::open_sealed(dir.path(), Arc::clone(&keys), WalStats::default(), nothing_stored)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("damaged record"), "{err}");

        // A segment in the clear is refused by a sealed WAL: rows placed there without the keys.
        let plain = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(plain.path(), WalStats::default(), nothing_stored)
            .await
            .unwrap();
        wal.append(vec![revocation(uuid)]).await.unwrap();
        drop(wal);
        let err = Wal::open_sealed(plain.path(), keys, WalStats::default(), nothing_stored)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("in the clear"), "{err}");
    }

    #[tokio::test]
    async fn a_repeated_record_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), WalStats::default(), nothing_stored)
            .await
            .unwrap();
        wal.append(vec![revocation("a")]).await.unwrap();
        wal.append(vec![revocation("b")]).await.unwrap();
        drop(wal);
        let (_, segment) = list_segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&segment).unwrap();
        let first = 8 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        let copy = bytes[..first].to_vec();
        bytes.extend_from_slice(&copy);
        fs::write(&segment, bytes).unwrap();
        let err = Wal::open(dir.path(), WalStats::default(), nothing_stored)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("repeated or reordered"), "{err}");
    }

    #[tokio::test]
    async fn skips_records_the_store_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), WalStats::default(), nothing_stored)
            .await
            .unwrap();
        for i in 0..4 {
            wal.append(vec![revocation(&format!("d{i}"))]).await.unwrap();
        }
        drop(wal);
        let (_, replayed) = Wal::open(dir.path(), WalStats::default(), |_, tables, _| async move {
            assert_eq!(tables, vec![Table::Revocations]);
            Ok(3)
        })
        .await
        .unwrap();
        assert_eq!(replayed.records, 1);
    }

    #[tokio::test]
    async fn a_second_process_cannot_open_the_same_wal() {
        let dir = tempfile::tempdir().unwrap();
        let (_wal, _) = Wal::open(dir.path(), WalStats::default(), nothing_stored)
            .await
            .unwrap();
        let err = Wal::open(dir.path(), WalStats::default(), nothing_stored)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("another proxima serve"), "{err}");
    }

    #[tokio::test]
    async fn damage_before_the_last_segment_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = Wal::open(dir.path(), WalStats::default(), nothing_stored)
            .await
            .unwrap();
        wal.append(vec![revocation("a")]).await.unwrap();
        wal.rotate().await.unwrap();
        wal.append(vec![revocation("b")]).await.unwrap();
        drop(wal);
        let (_, first) = list_segments(dir.path()).unwrap().remove(0);
        let mut bytes = fs::read(&first).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&first, bytes).unwrap();
        let err = Wal::open(dir.path(), WalStats::default(), nothing_stored)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("damaged record at byte 0"), "{err}");
    }

    /// Segment files whose writes or syncs fail on demand, and which remember every sync
    /// made on a descriptor after it failed one.
    #[derive(Debug, Default)]
    struct FaultyFs {
        fail_next_sync: std::sync::atomic::AtomicBool,
        /// Fail the next write after letting this many bytes through (`usize::MAX`: never).
        fail_write_after: std::sync::atomic::AtomicUsize,
        syncs_after_failure: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl FaultyFs {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                fail_write_after: std::sync::atomic::AtomicUsize::new(usize::MAX),
                ..Self::default()
            })
        }
    }

    struct FaultyFile {
        inner: File,
        fs: Arc<FaultyFs>,
        failed: bool,
    }

    impl Write for FaultyFile {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            use std::sync::atomic::Ordering::SeqCst;
            let allowed = self.fs.fail_write_after.load(SeqCst);
            if allowed == usize::MAX {
                return self.inner.write(buf);
            }
            if allowed == 0 {
                self.fs.fail_write_after.store(usize::MAX, SeqCst);
                return Err(std::io::Error::other("injected write failure (disk full)"));
            }
            let n = buf.len().min(allowed);
            self.fs.fail_write_after.store(allowed - n, SeqCst);
            self.inner.write(&buf[..n])
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }

    impl SegmentFile for FaultyFile {
        fn sync_data(&mut self) -> std::io::Result<()> {
            use std::sync::atomic::Ordering::SeqCst;
            if self.failed {
                self.fs.syncs_after_failure.fetch_add(1, SeqCst);
            }
            if self.fs.fail_next_sync.swap(false, SeqCst) {
                self.failed = true;
                return Err(std::io::Error::other("injected fsync failure (EIO)"));
            }
            self.inner.sync_data()
        }
    }

    /// The operating system's files behind a [`FaultyFs`] (a newtype: `SegmentFs` wants the
    /// `Arc` to hand to each file).
    #[derive(Debug)]
    struct Faulty(Arc<FaultyFs>);

    impl SegmentFs for Faulty {
        fn create(&self, path: &Path) -> std::io::Result<Box<dyn SegmentFile>> {
            let inner = OpenOptions::new().create_new(true).append(true).open(path)?;
            Ok(Box::new(FaultyFile {
                inner,
                fs: Arc::clone(&self.0),
                failed: false,
            }))
        }

        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            OsFs.sync_dir(dir)
        }

        fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()> {
            OsFs.truncate(path, len)
        }
    }

    /// The revocation UUIDs a fresh open of `dir` replays, in order.
    async fn replayed_uuids(dir: &Path, keys: Option<Arc<dyn KeyProvider>>) -> Vec<String> {
        let (wal, _) = Wal::open_with(Arc::new(OsFs), keys, dir, WalStats::default(), nothing_stored)
            .await
            .unwrap();
        let rotation = wal.rotate().await.unwrap();
        let mut uuids = Vec::new();
        for batch in rotation.buffer.tables.get(&Table::Revocations).into_iter().flatten() {
            let column = batch.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            uuids.extend(column.iter().map(|v| v.unwrap().to_string()));
        }
        uuids
    }

    #[tokio::test]
    async fn a_failed_sync_is_never_retried_and_its_record_never_replayed() {
        for keys in [None, Some(master_keys())] {
            failed_sync(keys).await;
        }
    }

    /// Master keys for the sealed variant of a test.
    fn master_keys() -> Arc<dyn KeyProvider> {
        Arc::new(proxima_engine::keys::MasterKeys::generate(chrono::Utc::now()))
    }

    async fn failed_sync(keys: Option<Arc<dyn KeyProvider>>) {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultyFs::new();
        let fs: Arc<dyn SegmentFs> = Arc::new(Faulty(Arc::clone(&faults)));
        let (wal, _) = Wal::open_with(fs, keys.clone(), dir.path(), WalStats::default(), nothing_stored)
            .await
            .unwrap();
        assert_eq!(wal.append(vec![revocation("before")]).await.unwrap(), 1);
        faults.fail_next_sync.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = wal.append(vec![revocation("refused")]).await.unwrap_err().to_string();
        assert!(err.contains("injected fsync failure"), "{err}");
        // The WAL goes on, in a new segment; the failed descriptor is never synced again.
        assert_eq!(wal.append(vec![revocation("after")]).await.unwrap(), 3);
        assert_eq!(wal.append(vec![revocation("later")]).await.unwrap(), 4);
        assert_eq!(faults.syncs_after_failure.load(std::sync::atomic::Ordering::SeqCst), 0);
        let rotation = wal.rotate().await.unwrap();
        assert_eq!(
            (rotation.buffer.rows, rotation.through),
            (3, 4),
            "only acknowledged rows"
        );
        drop((wal, rotation));
        // A crash now (the rotation's segments not deleted): the refused record is not replayed.
        assert_eq!(replayed_uuids(dir.path(), keys).await, ["before", "after", "later"]);
    }

    #[tokio::test]
    async fn a_failed_write_leaves_no_damage_and_no_refused_record() {
        for keys in [None, Some(master_keys())] {
            failed_write(keys).await;
        }
    }

    async fn failed_write(keys: Option<Arc<dyn KeyProvider>>) {
        let dir = tempfile::tempdir().unwrap();
        let faults = FaultyFs::new();
        let fs: Arc<dyn SegmentFs> = Arc::new(Faulty(Arc::clone(&faults)));
        let (wal, _) = Wal::open_with(fs, keys.clone(), dir.path(), WalStats::default(), nothing_stored)
            .await
            .unwrap();
        wal.append(vec![revocation("first")]).await.unwrap();
        // The disk fills half-way through the next record's frame.
        let frame = encode_entries(&[revocation("torn")]).unwrap().len();
        faults
            .fail_write_after
            .store(frame / 2, std::sync::atomic::Ordering::SeqCst);
        let small = revocation("torn");
        let err = wal.append(vec![small]).await.unwrap_err().to_string();
        assert!(err.contains("injected write failure"), "{err}");
        wal.append(vec![revocation("second")]).await.unwrap();
        drop(wal);
        // Before the fix the half frame sat in a closed segment: the next start refused to
        // run ("damaged record"), or replayed the refused record.
        assert_eq!(replayed_uuids(dir.path(), keys).await, ["first", "second"]);
    }
}
