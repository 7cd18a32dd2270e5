//! The durable, append-only audit log and its writer thread.
//!
//! ```text
//! <dir>/log/<seq of the first record, 20 digits>.jsonl   one record per line
//! <dir>/checkpoints/<tree size, 20 digits>.note          signed checkpoints
//! ```
//!
//! One thread owns the files. Callers hand it records and wait: it writes every record
//! queued meanwhile as one group, calls `fdatasync` once, and only then answers each
//! caller with its record's sequence number, so an intent that was answered is on disk
//! before the access it announces runs. A failed write or sync is answered with an error
//! (the caller refuses its request), the segment is cut back to its last synced length
//! through a new descriptor, and nothing is dropped silently: there is no queue to
//! overflow, only callers waiting their turn. After a group, when `checkpoint_every`
//! records or `checkpoint_interval` have passed, the thread signs a checkpoint of the
//! tree (its size and head) with the signer key; and once more when the log is closed.
//!
//! Before it starts a new segment the thread signs a checkpoint, so that retention
//! ([`crate::retention`], [`AuditLog::prune`]) can delete whole old segments and still
//! leave a log that verifies from the cut on.
//!
//! Opening a log locks it (`<dir>/lock`: one writer process at a time), re-reads it from
//! its retention cut (a torn last line, never answered, is cut off) and checks it against
//! its latest checkpoint: a log that no longer matches what was signed is refused, so the
//! server never signs over a tampered history.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::checkpoint::{Checkpoint, SignerKey};
use crate::merkle::{Frontier, leaf_hash};
use crate::record::Record;
use crate::redact::Redactor;
use crate::retention::{Pruned, read_cut, write_cut};
use crate::{Error, Result};

/// The folder of record segments inside the audit folder.
pub const LOG_DIR: &str = "log";
/// The folder of signed checkpoints inside the audit folder.
pub const CHECKPOINT_DIR: &str = "checkpoints";
const SEGMENT_SUFFIX: &str = ".jsonl";
const LOCK_FILE: &str = "lock";
const CHECKPOINT_SUFFIX: &str = ".note";

/// Settings of an [`AuditLog`].
#[derive(Debug, Clone)]
pub struct AuditLogOptions {
    /// Sign a checkpoint after this many records…
    pub checkpoint_every: u64,
    /// …or this long after the last one, if records came since.
    pub checkpoint_interval: Duration,
    /// Start a new segment file once the current one holds this many bytes.
    pub segment_bytes: u64,
    /// Applied to every record's free text before it is written (see [`Redactor`]); none
    /// keeps the text as given.
    pub redactor: Option<Redactor>,
}

impl Default for AuditLogOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(60),
            segment_bytes: 64 << 20,
            redactor: None,
        }
    }
}

/// The name of the segment whose first record is `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:020}{SEGMENT_SUFFIX}")
}

/// The name of the checkpoint of a tree of `size` records.
pub fn checkpoint_name(size: u64) -> String {
    format!("{size:020}{CHECKPOINT_SUFFIX}")
}

/// The files in `dir` ending in `suffix` whose stem is a number, in numeric order.
pub(crate) fn numbered_files(dir: &Path, suffix: &str) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(suffix))
        else {
            continue;
        };
        if let Ok(number) = stem.parse::<u64>() {
            files.push((number, path));
        }
    }
    files.sort();
    Ok(files)
}

/// The current time as the log writes it: RFC 3339, UTC, milliseconds.
pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Writes `text` to `path` durably: aside, synced, renamed, folder synced.
pub(crate) fn write_durably(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().expect("checkpoint paths have a folder");
    let tmp = path.with_extension("tmp");
    (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })()
    .map_err(|e| Error::io(path, e))?;
    sync_dir(dir)
}

/// How many bytes of `segment` (complete lines, its first record numbered `first`) are
/// records: a crash can leave lines that end in a newline but are not records (zeroes from
/// a file system that had extended the file); past the last checkpoint (`signed` records),
/// the first line that is not the next record ends the log, since no such line was ever
/// acknowledged. Lines a checkpoint covers are left for `proxima audit verify` to judge.
fn complete_records(segment: &[u8], first: u64, signed: u64, path: &Path) -> usize {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let mut offset = 0;
    for (seq, line) in (first..).zip(segment.split_inclusive(|&b| b == b'\n')) {
        let body = &line[..line.len() - 1];
        if seq >= signed && serde_json::from_slice::<Seq>(body).map_or(true, |r| r.seq != seq) {
            tracing::warn!(
                target: "proxima::audit",
                "{}: {} bytes after record {} are not records (a crash during a write?): cut off",
                path.display(),
                segment.len() - offset,
                seq
            );
            return offset;
        }
        offset += line.len();
    }
    offset
}

/// The time of the last complete record of a segment, read from its tail only.
fn last_record_time(path: &Path) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    use std::io::{Seek as _, SeekFrom};
    const TAIL: u64 = 1 << 20;
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let length = file.metadata().map_err(|e| Error::io(path, e))?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(TAIL)))
        .map_err(|e| Error::io(path, e))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(|e| Error::io(path, e))?;
    // Records are capped well below a MiB; a longer last line reads as not old (kept).
    let complete = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i);
    let start = tail[..complete].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    Ok(record_time(&tail[start..complete]))
}

/// The time a record line says it was written, if it says.
fn record_time(line: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    #[derive(serde::Deserialize)]
    struct Time<'a> {
        time: &'a str,
    }
    let time = serde_json::from_slice::<Time>(line).ok()?.time;
    Some(chrono::DateTime::parse_from_rfc3339(time).ok()?.to_utc())
}

enum Command {
    Append(Box<Record>, tokio::sync::oneshot::Sender<Result<u64>>),
    Checkpoint(tokio::sync::oneshot::Sender<Result<Checkpoint>>),
    Prune(
        chrono::DateTime<chrono::Utc>,
        tokio::sync::oneshot::Sender<Result<Pruned>>,
    ),
}

/// The audit log: cheap to clone, every clone appends to the same files. The writer
/// thread stops (after a last checkpoint) when the last clone is dropped.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    sender: Mutex<Option<mpsc::Sender<Command>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dir: PathBuf,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

impl AuditLog {
    /// Opens (or creates) the log in `dir`, signing checkpoints with `signer`. Fails if the
    /// folder cannot be written, or if the log no longer matches its latest checkpoint.
    pub fn open(dir: &Path, signer: SignerKey, options: AuditLogOptions) -> Result<Self> {
        Self::open_with(dir, Some(signer), options)
    }

    /// Opens the log to append records without signing them (`proxima sql` on a local store,
    /// run by someone who does not hold the key): the next process that opens the log with
    /// the key checks everything up to its latest checkpoint and signs what came since.
    pub fn open_unsigned(dir: &Path, options: AuditLogOptions) -> Result<Self> {
        Self::open_with(dir, None, options)
    }

    fn open_with(dir: &Path, signer: Option<SignerKey>, options: AuditLogOptions) -> Result<Self> {
        let writer = Writer::open(dir, signer, options)?;
        let (sender, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("proxima-audit".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| Error::io(dir, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                sender: Mutex::new(Some(sender)),
                thread: Mutex::new(Some(thread)),
                dir: dir.to_path_buf(),
            }),
        })
    }

    /// The folder the log lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn send(&self, command: Command) -> Result<()> {
        let sender = self.inner.sender.lock().map_err(|_| Error::Closed)?;
        sender
            .as_ref()
            .ok_or(Error::Closed)?
            .send(command)
            .map_err(|_| Error::Closed)
    }

    /// Appends `record` (its `seq` and `time` are set here) and returns its sequence
    /// number once it is synced to disk. An error means the record is not in the log.
    pub async fn append(&self, record: Record) -> Result<u64> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Command::Append(Box::new(record), reply))?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Hands `record` to the writer without waiting for it: for outcomes written where
    /// nothing can wait (a result stream being dropped). A failure is logged by the writer;
    /// the intent the record completes is already durable either way.
    pub fn submit(&self, record: Record) {
        let (reply, _) = tokio::sync::oneshot::channel();
        if self.send(Command::Append(Box::new(record), reply)).is_err() {
            tracing::error!(target: "proxima::audit", "an audit record was submitted after the log closed");
        }
    }

    /// [`Self::append`] for callers outside an async runtime.
    pub fn append_blocking(&self, record: Record) -> Result<u64> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Command::Append(Box::new(record), reply))?;
        answer.blocking_recv().map_err(|_| Error::Closed)?
    }

    /// Signs a checkpoint of everything appended so far (none is written if nothing came
    /// since the last one) and returns the latest checkpoint.
    pub async fn checkpoint(&self) -> Result<Checkpoint> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Command::Checkpoint(reply))?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Deletes the oldest segments whose every record was written before `before`, up to
    /// the latest segment boundary that a signed checkpoint covers (see
    /// [`crate::retention`]). The segment being written is never deleted, and a log opened
    /// without the key is never cut. Fails, deleting nothing, if the records to delete no
    /// longer match their checkpoint.
    pub async fn prune(&self, before: chrono::DateTime<chrono::Utc>) -> Result<Pruned> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.send(Command::Prune(before, reply))?;
        answer.await.map_err(|_| Error::Closed)?
    }
}

/// The state of the writer thread.
struct Writer {
    dir: PathBuf,
    /// None: records are appended, checkpoints are left to whoever holds the key.
    signer: Option<SignerKey>,
    options: AuditLogOptions,
    /// The tree at the retention cut (empty if the log was never cut).
    cut: Frontier,
    frontier: Frontier,
    /// The segment being appended to: its path, its file (none after a failure) and the
    /// length known to be synced.
    segment: Option<(PathBuf, Option<File>, u64)>,
    last_checkpoint: Checkpoint,
    last_checkpoint_at: Instant,
    /// Set when the log cannot be brought back to a known state: every append fails.
    broken: Option<String>,
    /// Held (locked) while the log is open, so that two processes never append to it.
    _lock: File,
}

impl Writer {
    fn open(dir: &Path, signer: Option<SignerKey>, options: AuditLogOptions) -> Result<Self> {
        for sub in [LOG_DIR, CHECKPOINT_DIR] {
            fs::create_dir_all(dir.join(sub)).map_err(|e| Error::io(&dir.join(sub), e))?;
        }
        sync_dir(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Io {
                    path: dir.display().to_string(),
                    source: std::io::Error::other(
                        "another process has this audit log open; each server needs its own --audit-dir",
                    ),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        let latest_file = match &signer {
            Some(_) => numbered_files(&dir.join(CHECKPOINT_DIR), CHECKPOINT_SUFFIX)?.pop(),
            // Without the key nothing can be checked, and nothing will be signed.
            None => None,
        };
        let latest = match (latest_file, &signer) {
            (Some((_, path)), Some(signer)) => {
                let verifier = signer.verifier();
                let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                let checkpoint = verifier
                    .open(&text)
                    .map_err(|e| Error::Tampered(format!("{}: {e}", path.display())))?;
                Some(checkpoint)
            }
            _ => None,
        };
        let cut = read_cut(dir)?;
        if let Some(signer) = signer.as_ref().filter(|_| cut.size() > 0) {
            cut.check(&signer.verifier()).map_err(|why| {
                Error::Tampered(format!(
                    "the retention cut at record {} is not authorised: {why}: run 'proxima audit verify'",
                    cut.size()
                ))
            })?;
        }
        let mut segments = numbered_files(&dir.join(LOG_DIR), SEGMENT_SUFFIX)?;
        let leftovers = segments.iter().take_while(|(first, _)| *first < cut.size()).count();
        if leftovers > 0 {
            // Left by a cut that stopped before deleting them: they end where the first
            // segment the cut keeps begins, or the cut is not one retention made.
            if segments.get(leftovers).is_none_or(|(first, _)| *first != cut.size()) {
                return Err(Error::Tampered(format!(
                    "no segment starts at the retention cut (record {}): run 'proxima audit verify'",
                    cut.size()
                )));
            }
            for (_, path) in segments.drain(..leftovers) {
                // Only a writer that checked the cut's signature finishes it.
                if signer.is_some() {
                    fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                }
            }
            sync_dir(&dir.join(LOG_DIR))?;
        }
        let cut = cut.frontier;
        let mut frontier = cut.clone();
        let mut root_at_latest = None;
        let mut segment = None;
        for (i, (first, path)) in segments.iter().enumerate() {
            if *first != frontier.size() {
                return Err(Error::Tampered(format!(
                    "{} should start at record {}: run 'proxima audit verify'",
                    path.display(),
                    frontier.size()
                )));
            }
            let mut bytes = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| Error::io(path, e))?;
            let mut complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let last = i + 1 == segments.len();
            if last {
                complete = complete_records(
                    &bytes[..complete],
                    frontier.size(),
                    latest.as_ref().map_or(0, |c| c.size),
                    path,
                );
            }
            if complete < bytes.len() {
                if !last {
                    return Err(Error::Tampered(format!(
                        "{} ends in the middle of a record: run 'proxima audit verify'",
                        path.display()
                    )));
                }
                // A torn last line, or lines past it that are not records: written when the
                // process died, never answered.
                let file = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?;
                file.set_len(complete as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| Error::io(path, e))?;
            }
            for line in bytes[..complete].split_inclusive(|&b| b == b'\n') {
                let line = &line[..line.len() - 1];
                if latest.as_ref().is_some_and(|c| c.size == frontier.size()) {
                    root_at_latest = Some(frontier.root());
                }
                frontier.push(leaf_hash(line));
            }
            if last {
                segment = Some((path.clone(), None, complete as u64));
            }
        }
        let now = now_rfc3339();
        let last_checkpoint = match latest {
            Some(checkpoint) => {
                if checkpoint.size == frontier.size() {
                    root_at_latest = Some(frontier.root());
                }
                if checkpoint.size > frontier.size() {
                    return Err(Error::Tampered(format!(
                        "the log holds {} records but its latest checkpoint signed {}: run 'proxima audit verify'",
                        frontier.size(),
                        checkpoint.size
                    )));
                }
                if root_at_latest != Some(checkpoint.root) {
                    return Err(Error::Tampered(format!(
                        "the log's first {} records no longer match their signed checkpoint: run 'proxima audit verify'",
                        checkpoint.size
                    )));
                }
                checkpoint
            }
            None => Checkpoint {
                origin: signer.as_ref().map(|s| s.name().to_string()).unwrap_or_default(),
                size: 0,
                root: crate::merkle::empty_root(),
                time: now,
                retention_cut: None,
            },
        };
        let mut writer = Self {
            dir: dir.to_path_buf(),
            signer,
            options,
            cut,
            frontier,
            segment,
            last_checkpoint,
            last_checkpoint_at: Instant::now(),
            broken: None,
            _lock: lock,
        };
        // Records written since the last checkpoint (before a crash) are signed now.
        writer.checkpoint_if(|w| w.frontier.size() > w.last_checkpoint.size)?;
        Ok(writer)
    }

    fn run(mut self, receiver: mpsc::Receiver<Command>) {
        loop {
            // With records waiting for a checkpoint, wake when one is due; otherwise only a
            // record can make one due, so wait for it.
            let wait = if self.frontier.size() > self.last_checkpoint.size {
                self.options
                    .checkpoint_interval
                    .saturating_sub(self.last_checkpoint_at.elapsed())
                    .max(Duration::from_millis(10))
            } else {
                Duration::from_secs(3600)
            };
            let first = match receiver.recv_timeout(wait) {
                Ok(command) => command,
                Err(RecvTimeoutError::Timeout) => {
                    self.checkpoint_when_due();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut appends = Vec::new();
            let mut checkpoints = Vec::new();
            let mut prunes = Vec::new();
            let mut next = Some(first);
            while let Some(command) = next {
                match command {
                    Command::Append(record, reply) => appends.push((*record, reply)),
                    Command::Checkpoint(reply) => checkpoints.push(reply),
                    Command::Prune(before, reply) => prunes.push((before, reply)),
                }
                next = receiver.try_recv().ok();
            }
            if !appends.is_empty() {
                self.append_group(appends);
            }
            self.checkpoint_when_due();
            for reply in checkpoints {
                let result = self
                    .checkpoint_if(|w| w.frontier.size() > w.last_checkpoint.size)
                    .map(|()| self.last_checkpoint.clone());
                let _ = reply.send(result);
            }
            for (before, reply) in prunes {
                let _ = reply.send(self.prune(before));
            }
        }
        if let Err(e) = self.checkpoint_if(|w| w.frontier.size() > w.last_checkpoint.size) {
            tracing::error!(target: "proxima::audit", "the audit log's last checkpoint could not be written: {e}");
        }
    }

    /// [`AuditLog::prune`], on the thread that owns the files.
    fn prune(&mut self, before: chrono::DateTime<chrono::Utc>) -> Result<Pruned> {
        let Some(signer) = &self.signer else {
            return Ok(Pruned::default());
        };
        let verifier = signer.verifier();
        let segments = numbered_files(&self.dir.join(LOG_DIR), SEGMENT_SUFFIX)?;
        let mut frontier = self.cut.clone();
        let mut cut_after = None;
        // The last segment is the one being written: never a candidate.
        for (i, pair) in segments.windows(2).enumerate() {
            let ((first, path), (next, _)) = (&pair[0], &pair[1]);
            if *first != frontier.size() {
                break;
            }
            // The first segment that is not old ends the search: read only its tail for that.
            if last_record_time(path)?.is_none_or(|time| time >= before) {
                break;
            }
            let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
            for line in bytes.split_inclusive(|&b| b == b'\n') {
                let Some(body) = line.strip_suffix(b"\n") else { break };
                frontier.push(leaf_hash(body));
            }
            if frontier.size() != *next {
                break;
            }
            let note = self.dir.join(CHECKPOINT_DIR).join(checkpoint_name(*next));
            let text = match fs::read_to_string(&note) {
                Ok(text) => text,
                // Written before segments began at signed sizes: not a place to cut.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&note, e)),
            };
            let checkpoint = verifier
                .open(&text)
                .map_err(|e| Error::Tampered(format!("{}: {e}", note.display())))?;
            if checkpoint.root != frontier.root() {
                return Err(Error::Tampered(format!(
                    "records {}..{} no longer match their checkpoint, so none is deleted: run 'proxima audit verify'",
                    self.cut.size(),
                    next
                )));
            }
            cut_after = Some((i, frontier.clone()));
        }
        let Some((last, cut)) = cut_after else {
            return Ok(Pruned {
                cut: self.cut.size(),
                ..Pruned::default()
            });
        };
        let note = signer.sign(&Checkpoint {
            origin: signer.name().to_string(),
            size: cut.size(),
            root: cut.root(),
            time: now_rfc3339(),
            retention_cut: Some(before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        });
        write_cut(&self.dir, &cut, &note)?;
        for (_, path) in &segments[..=last] {
            fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        }
        sync_dir(&self.dir.join(LOG_DIR))?;
        let checkpoints = self.dir.join(CHECKPOINT_DIR);
        for (size, path) in numbered_files(&checkpoints, CHECKPOINT_SUFFIX)? {
            if size < cut.size() {
                fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        sync_dir(&checkpoints)?;
        let pruned = Pruned {
            segments: last + 1,
            records: cut.size() - self.cut.size(),
            cut: cut.size(),
        };
        self.cut = cut;
        tracing::info!(
            target: "proxima::audit",
            "audit retention deleted {} records in {} segment(s) written before {before}",
            pruned.records,
            pruned.segments
        );
        Ok(pruned)
    }

    fn checkpoint_when_due(&mut self) {
        let due = |w: &Self| {
            let pending = w.frontier.size() - w.last_checkpoint.size;
            pending >= w.options.checkpoint_every
                || (pending > 0 && w.last_checkpoint_at.elapsed() >= w.options.checkpoint_interval)
        };
        if let Err(e) = self.checkpoint_if(due) {
            // The records are durable; the next round tries again.
            tracing::error!(target: "proxima::audit", "an audit checkpoint could not be written: {e}");
        }
    }

    fn checkpoint_if(&mut self, due: impl Fn(&Self) -> bool) -> Result<()> {
        let Some(signer) = &self.signer else {
            return Ok(());
        };
        if !due(self) {
            return Ok(());
        }
        let checkpoint = Checkpoint {
            origin: signer.name().to_string(),
            size: self.frontier.size(),
            root: self.frontier.root(),
            time: now_rfc3339(),
            retention_cut: None,
        };
        let path = self.dir.join(CHECKPOINT_DIR).join(checkpoint_name(checkpoint.size));
        write_durably(&path, &signer.sign(&checkpoint))?;
        self.last_checkpoint = checkpoint;
        self.last_checkpoint_at = Instant::now();
        Ok(())
    }

    /// The file to append the next group to, starting a new segment when there is none
    /// or the current one is full.
    fn segment_file(&mut self) -> Result<&mut (PathBuf, Option<File>, u64)> {
        let full = self
            .segment
            .as_ref()
            .is_none_or(|(_, _, len)| *len >= self.options.segment_bytes);
        if full {
            // Each segment starts at a signed size, where retention may cut the log.
            if let Err(e) = self.checkpoint_if(|w| w.frontier.size() > w.last_checkpoint.size) {
                tracing::error!(target: "proxima::audit", "the checkpoint before a new segment could not be written: {e}");
            }
            let dir = self.dir.join(LOG_DIR);
            let path = dir.join(segment_name(self.frontier.size()));
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            if let Err(e) = sync_dir(&dir) {
                // The next append tries again with a fresh file rather than one whose name
                // may not survive a crash.
                let _ = fs::remove_file(&path);
                return Err(e);
            }
            self.segment = Some((path, Some(file), 0));
        }
        let segment = self.segment.as_mut().expect("set above");
        if segment.1.is_none() {
            let file = OpenOptions::new()
                .append(true)
                .open(&segment.0)
                .map_err(|e| Error::io(&segment.0, e))?;
            segment.1 = Some(file);
        }
        Ok(segment)
    }

    fn append_group(&mut self, appends: Vec<(Record, tokio::sync::oneshot::Sender<Result<u64>>)>) {
        if let Some(why) = &self.broken {
            for (_, reply) in appends {
                let _ = reply.send(Err(Error::Broken(why.clone())));
            }
            return;
        }
        let first = self.frontier.size();
        let time = now_rfc3339();
        let mut buffer = Vec::new();
        let mut leaves = Vec::with_capacity(appends.len());
        for (i, (record, _)) in appends.iter().enumerate() {
            let mut record = match &self.options.redactor {
                Some(redactor) => record.clone().redacted(redactor),
                None => record.clone(),
            }
            .capped();
            record.seq = first + i as u64;
            record.time = time.clone();
            let start = buffer.len();
            serde_json::to_writer(&mut buffer, &record).expect("a record always serialises");
            leaves.push(leaf_hash(&buffer[start..]));
            buffer.push(b'\n');
        }
        match self.write(&buffer) {
            Ok(()) => {
                for leaf in leaves {
                    self.frontier.push(leaf);
                }
                for (i, (_, reply)) in appends.into_iter().enumerate() {
                    let _ = reply.send(Ok(first + i as u64));
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(target: "proxima::audit", "{} audit record(s) could not be written: {message}", appends.len());
                for (_, reply) in appends {
                    let _ = reply.send(Err(Error::Write(message.clone())));
                }
            }
        }
    }

    /// Appends `buffer` and syncs it; on failure cuts the segment back to its synced
    /// length through a new descriptor (a failed sync may have dropped pages the old one
    /// still reports as written), or marks the log broken if even that fails.
    fn write(&mut self, buffer: &[u8]) -> Result<()> {
        let (path, file, len) = self.segment_file()?;
        let file_ref = file.as_mut().expect("opened by segment_file");
        let Err(e) = file_ref.write_all(buffer).and_then(|()| file_ref.sync_data()) else {
            *len += buffer.len() as u64;
            return Ok(());
        };
        file.take();
        let error = Error::io(path, e);
        let cut = OpenOptions::new()
            .write(true)
            .open(&*path)
            .and_then(|f| f.set_len(*len).and_then(|()| f.sync_all()));
        if let Err(cut) = cut {
            let why = format!(
                "{} could not be cut back after a failed write ({cut}); restart to recover",
                path.display()
            );
            self.broken = Some(why);
        }
        Err(error)
    }
}
