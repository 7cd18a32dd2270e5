//! Tracing's lookups: the encounters of a few devices on a day, read by page index.
//!
//! Nothing here is ever stale, because nothing is derived from more than one
//! file. Each observation file is sorted by `observer`, and each has an
//! `observed_index` companion (the same rows' `observed`, `observer`,
//! `observed_at`, sorted by `observed`) written in the same transaction by
//! `proxima-storage` and merged by the same compaction. The encounters of
//! devices F on a day are then two lookups (binary search of the page index,
//! then a read of only the pages that may hold the keys):
//!
//! - what F heard: observation rows with `observer` in F, whose `observed` MAC
//!   belongs to a registered device other than the observer → `(observer, device)`;
//! - who heard F: `observed_index` rows with `observed` among F's MACs, from
//!   another device → `(device, observer)`.
//!
//! A rotating identifier (`crate::ephemeral`) is resolved when read, never stored
//! resolved: what F heard is decrypted and counts if heard within its epoch; who heard F
//! is looked up on every identifier the keys would have given F in the window, each match
//! checked against its epoch. Replayed and unknown identifiers hear no one and are counted
//! ([`LookupCounters`]).
//!
//! MACs are resolved to devices at lookup time from `devices`, through a
//! directory loaded file by file (a registration adds a file, which is read
//! once), so registering a device never invalidates anything: its earlier
//! sightings become encounters at once, exactly as in the `encounters` view.
//! A day counts as covered when its live observation files and its live
//! companion files hold the same number of rows (they differ only while a
//! transaction is being published, or for days written before companions
//! existed until `proxima index` writes theirs); an uncovered day is answered
//! by reading all its observations (what the `encounters` view does, without
//! a SQL session, so that a trace can run from its task alone) and counted in
//! [`LookupCounters::scanned_days`]: the index is at worst slower, never
//! wrong. Tests hold both paths to the view.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::NaiveDate;
use datafusion::error::{DataFusionError, Result as DfResult};
use futures::future::BoxFuture;
use futures::{FutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::encryption::decrypt::FileDecryptionProperties;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader, RowGroupMetaData};
use parquet::file::page_index::column_index::{ByteArrayColumnIndex, ColumnIndexMetaData};
use parquet::file::page_index::offset_index::PageLocation;
use parquet::file::statistics::Statistics;
use proxima_udfs::trace::{Edge, EncounterLookup, Lookup, LookupCounters};
use tokio::task::JoinSet;

use crate::ephemeral::{Heard, Identifiers};
use crate::paths::{DayPartition, Table};
use crate::schema::{date_from_epoch_days, epoch_days};
use crate::store::Store;

mod sightings;
pub use sightings::{Pending, Sighting};

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// File footers kept in memory; beyond this the cache starts afresh.
const FOOTER_CACHE_ENTRIES: usize = 4096;

/// Footer key naming the layout of an `observed_index` file.
pub const LAYOUT_KEY: &str = "proxima.layout";
/// The layout of `observed_index` files this version writes and reads (`observer` as the
/// UUID's 16 bytes). Companions without it (text `observer`, written before 2026-12-02)
/// do not count as covering their day: the day is read the slow way until the Maintainer
/// or `proxima index` rebuilds its companions, and compaction leaves them alone.
pub const COMPANION_LAYOUT: &str = "observer-bytes";

/// Whether footer key-values (see [`file_key_values`]) are those of a companion in the
/// current layout.
pub fn is_current_companion(key_values: &HashMap<String, String>) -> bool {
    key_values.get(LAYOUT_KEY).map(String::as_str) == Some(COMPANION_LAYOUT)
}

/// The key-value metadata of a Parquet file in the store (its footer only).
pub async fn file_key_values(store: &Store, location: &Path) -> crate::Result<HashMap<String, String>> {
    let size = store.object_store().head(location).await?.size;
    let mut reader = CountingReader {
        store: Arc::clone(store.object_store()),
        location: location.clone(),
        size,
        bytes: Arc::default(),
        decryption: store.decryption_properties(location).await?,
        encrypted_only: store.keyring().is_some(),
    };
    let metadata = reader
        .get_metadata(None)
        .await
        .map_err(|e| DataFusionError::ParquetError(Box::new(e)))?;
    Ok(metadata
        .file_metadata()
        .key_value_metadata()
        .into_iter()
        .flatten()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
        .collect())
}

/// Registered devices by MAC and MAC by device, as compact integers.
#[derive(Debug, Default)]
struct Directory {
    /// The `devices` files read so far (files are immutable).
    files: HashSet<Path>,
    by_mac: HashMap<u64, u128>,
    /// Further devices of a MAC that more than one device registered (rare: the view joins
    /// on the MAC, so each of them is an encounter).
    shared_macs: HashMap<u64, Vec<u128>>,
    mac_of: HashMap<u128, u64>,
    /// Every registered device (also one whose MAC is not canonical, which no sighting names).
    devices: HashSet<u128>,
    /// Every registered device by its handle in rotating identifiers (unique: registration
    /// and import refuse a clash).
    by_handle: HashMap<u64, u128>,
}

impl Directory {
    /// Adds the devices of a batch of `devices` rows read from `file`.
    fn load(&mut self, batch: &RecordBatch, file: &Path) -> DfResult<()> {
        let schema = batch.schema();
        let uuids = text_column(batch, schema.index_of("device_uuid")?, file)?;
        let macs = text_column(batch, schema.index_of("mac")?, file)?;
        for (uuid, mac) in uuids.iter().zip(macs.iter()) {
            let Some(device) = uuid.and_then(device_bits) else {
                continue;
            };
            self.devices.insert(device);
            self.by_handle.insert(crate::ephemeral::handle_of_bits(device), device);
            if let Some(mac) = mac.and_then(mac_bits) {
                self.insert(device, mac);
            }
        }
        Ok(())
    }

    fn insert(&mut self, device: u128, mac: u64) {
        self.mac_of.insert(device, mac);
        match self.by_mac.get(&mac) {
            None => {
                self.by_mac.insert(mac, device);
            }
            Some(&first) if first == device => {}
            Some(_) => {
                let others = self.shared_macs.entry(mac).or_default();
                if !others.contains(&device) {
                    others.push(device);
                }
            }
        }
    }

    /// The devices registered with `mac`.
    fn devices_of(&self, mac: u64) -> impl Iterator<Item = u128> + '_ {
        self.by_mac
            .get(&mac)
            .copied()
            .into_iter()
            .chain(self.shared_macs.get(&mac).into_iter().flatten().copied())
    }
}

/// How far from its 10-minute interval a GAEN rolling proximity identifier may be heard and
/// still count (the Exposure Notification specification's matching tolerance: phones'
/// clocks drift, and a phone rotates its RPI at randomised times).
pub const RPI_TOLERANCE_MICROS: i64 = 2 * 3_600_000_000;
const INTERVAL_MICROS: i64 = proxima_udfs::gaen::INTERVAL_SECONDS * 1_000_000;

/// The GAEN keys devices registered, and every rolling proximity identifier they derive,
/// loaded file by file from `exposure_keys` (files are immutable).
#[derive(Debug, Default)]
struct Rpis {
    files: HashSet<Path>,
    /// Each identifier's devices (one, but for a key two devices registered) and interval.
    by_rpi: HashMap<[u8; 16], Vec<(u128, u32)>>,
    /// Each device's keys: (RPI key, first interval, intervals).
    keys_of: HashMap<u128, Vec<([u8; 16], u32, u32)>>,
}

impl Rpis {
    /// Adds the keys of a batch of `exposure_keys` rows read from `file`.
    fn load(&mut self, batch: &RecordBatch, file: &Path) -> DfResult<()> {
        let schema = batch.schema();
        let uuids = text_column(batch, schema.index_of("device_uuid")?, file)?;
        let teks = text_column(batch, schema.index_of("tek")?, file)?;
        let starts = time_column(batch, schema.index_of("valid_from")?, file)?;
        let periods = batch
            .column(schema.index_of("rolling_period")?)
            .as_primitive_opt::<arrow::datatypes::Int32Type>()
            .ok_or_else(|| DataFusionError::Execution(format!("{file}: rolling_period is not Int32")))?;
        for i in 0..batch.num_rows() {
            let mut tek = [0u8; 16];
            let Some(device) = device_bits(uuids.value(i)) else {
                continue;
            };
            if hex::decode_to_slice(teks.value(i), &mut tek).is_err() {
                continue;
            }
            let first = u32::try_from(starts.value(i).div_euclid(INTERVAL_MICROS)).unwrap_or(0);
            let period = u32::try_from(periods.value(i))
                .unwrap_or(0)
                .min(proxima_udfs::gaen::DEFAULT_ROLLING_PERIOD as u32);
            self.insert(device, &tek, first, period);
        }
        Ok(())
    }

    fn insert(&mut self, device: u128, tek: &[u8; 16], first: u32, period: u32) {
        let rpik = proxima_udfs::gaen::rpik(tek);
        for interval in first..first.saturating_add(period) {
            let devices = self.by_rpi.entry(proxima_udfs::gaen::rpi(&rpik, interval)).or_default();
            if !devices.contains(&(device, interval)) {
                devices.push((device, interval));
            }
        }
        self.keys_of.entry(device).or_default().push((rpik, first, period));
    }
}

/// Whether a sighting at `at` (µs) of the RPI of `interval` counts.
fn rpi_heard_in_time(interval: u32, at: i64) -> bool {
    let start = i64::from(interval) * INTERVAL_MICROS;
    at >= start - RPI_TOLERANCE_MICROS && at < start + INTERVAL_MICROS + RPI_TOLERANCE_MICROS
}

/// When a sighting of something a device broadcasts counts.
#[derive(Debug, Clone, Copy)]
enum Valid {
    /// A MAC: always.
    Always,
    /// A rotating identifier: in the epoch starting at this minute (± the tolerance).
    Epoch(u32),
    /// A GAEN RPI: in this 10-minute interval (± [`RPI_TOLERANCE_MICROS`]).
    Interval(u32),
}

/// A canonical MAC (`AA:BB:CC:DD:EE:FF`) as an integer; `None` for anything else (an RPI).
fn mac_bits(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() != 17 {
        return None;
    }
    let mut value = 0u64;
    for (i, chunk) in bytes.chunks(3).enumerate() {
        if i < 5 && chunk.get(2) != Some(&b':') {
            return None;
        }
        for &c in &chunk[..2] {
            let digit = match c {
                b'0'..=b'9' => c - b'0',
                b'A'..=b'F' => c - b'A' + 10,
                _ => return None,
            };
            value = value << 4 | u64::from(digit);
        }
    }
    Some(value)
}

fn mac_text(bits: u64) -> String {
    let b = bits.to_be_bytes();
    format!(
        "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
        b[2], b[3], b[4], b[5], b[6], b[7]
    )
}

fn device_bits(text: &str) -> Option<u128> {
    uuid::Uuid::try_parse(text).ok().map(|u| u.as_u128())
}

fn device_text(bits: u128) -> String {
    uuid::Uuid::from_u128(bits).hyphenated().to_string()
}

/// Looks up encounters in the store's observation files and their companions (the
/// tracing fast path).
#[derive(Debug)]
pub struct IndexReader {
    store: Store,
    /// What resolves rotating identifiers (none: their sightings are no encounters).
    identifiers: Option<Arc<Identifiers>>,
    footers: Mutex<HashMap<Path, Footer>>,
    directory: tokio::sync::RwLock<Directory>,
    rpis: tokio::sync::RwLock<Rpis>,
    rows: AtomicU64,
    bytes: Arc<AtomicU64>,
    scanned_days: AtomicU64,
    replayed: AtomicU64,
    unknown: AtomicU64,
}

/// How lookups search one row group of a file, decided once when its footer is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    /// Pages in key order: one binary search of the page index per key.
    Sorted,
    /// A page index whose pages are not in key order: every page's bounds are tested.
    Pages,
    /// No usable page index (none, or a page without bounds): the row group's statistics.
    Whole,
}

/// A file's footer (with page index), and how each of its row groups is searched.
#[derive(Debug, Clone)]
struct Footer {
    metadata: ArrowReaderMetadata,
    search: Arc<[Search]>,
    /// Whether the file names [`COMPANION_LAYOUT`] (only companions do).
    current_companion: bool,
}

impl Footer {
    fn new(metadata: ArrowReaderMetadata) -> Self {
        let meta = metadata.metadata();
        let search = (0..meta.num_row_groups())
            .map(|group| {
                let rows = meta.row_group(group).num_rows() as u64;
                match PageIndex::locate(meta, group, rows) {
                    Some(pages) if pages.is_bounded() && pages.is_sorted() => Search::Sorted,
                    Some(pages) if pages.is_bounded() => Search::Pages,
                    _ => Search::Whole,
                }
            })
            .collect();
        let current_companion = meta
            .file_metadata()
            .key_value_metadata()
            .into_iter()
            .flatten()
            .any(|kv| kv.key == LAYOUT_KEY && kv.value.as_deref() == Some(COMPANION_LAYOUT));
        Self {
            metadata,
            search,
            current_companion,
        }
    }

    fn num_rows(&self) -> i64 {
        self.metadata.metadata().file_metadata().num_rows()
    }
}

/// A day's live files of one table, with their footers.
type DayFiles = Vec<(ObjectMeta, Footer)>;

/// Rows found by a lookup: (key, other column, time).
type Found = Vec<(String, String, i64)>;

impl IndexReader {
    /// A reader of `store` that resolves rotating identifiers with `identifiers`, with
    /// empty caches.
    pub fn new(store: Store, identifiers: Option<Arc<Identifiers>>) -> Self {
        Self {
            store,
            identifiers,
            footers: Mutex::new(HashMap::new()),
            directory: tokio::sync::RwLock::default(),
            rpis: tokio::sync::RwLock::default(),
            rows: AtomicU64::new(0),
            bytes: Arc::new(AtomicU64::new(0)),
            scanned_days: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            unknown: AtomicU64::new(0),
        }
    }

    /// Rows decoded and bytes fetched by this reader's lookups so far.
    pub fn counters(&self) -> LookupCounters {
        LookupCounters {
            rows: self.rows.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            scanned_days: self.scanned_days.load(Ordering::Relaxed),
            replayed_identifiers: self.replayed.load(Ordering::Relaxed),
            unknown_identifiers: self.unknown.load(Ordering::Relaxed),
        }
    }

    /// Calls `heard` with each registered device a sighting of `observed` at `at` (µs) hears:
    /// those registered with that MAC, the device a rotating identifier stands for if it is
    /// heard in its epoch, or the device whose GAEN key derives an RPI heard near its
    /// interval. A replayed or unknown identifier hears no one, and is counted if `count` (a
    /// sighting by a device the lookup is about).
    fn for_each_heard(
        &self,
        directory: &Directory,
        rpis: &Rpis,
        observed: &str,
        at: i64,
        count: bool,
        mut heard: impl FnMut(u128),
    ) {
        if let Some(mac) = mac_bits(observed) {
            directory.devices_of(mac).for_each(heard);
            return;
        }
        match self.identifiers.as_ref().and_then(|ids| ids.heard(observed, at)) {
            Some(Heard::Device(handle)) => {
                if let Some(&device) = directory.by_handle.get(&handle) {
                    heard(device);
                }
                return;
            }
            Some(Heard::Replayed) => {
                if count {
                    self.replayed.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            // No key of ours issued it: a GAEN RPI, maybe.
            Some(Heard::Unknown) | None => {}
        }
        let mut id = [0u8; 16];
        if hex::decode_to_slice(observed, &mut id).is_err() {
            return;
        }
        let refused = match rpis.by_rpi.get(&id) {
            Some(devices) => {
                let mut any = false;
                for &(device, interval) in devices {
                    if rpi_heard_in_time(interval, at) {
                        heard(device);
                        any = true;
                    }
                }
                (!any).then_some(&self.replayed)
            }
            None => Some(&self.unknown),
        };
        if let Some(counter) = refused.filter(|_| count) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// When (µs, both ends) a sighting of something broadcast, valid as `valid`, counts,
    /// within `from..=to` for a MAC; `None` for an identifier with no keys to resolve it.
    fn counts_when(&self, valid: &Valid, from: i64, to: i64) -> Option<(i64, i64)> {
        match valid {
            Valid::Always => Some((from, to)),
            Valid::Epoch(start) => self.identifiers.as_ref().map(|ids| ids.validity(*start)),
            Valid::Interval(interval) => {
                let start = i64::from(*interval) * INTERVAL_MICROS;
                Some((
                    start - RPI_TOLERANCE_MICROS,
                    start + INTERVAL_MICROS + RPI_TOLERANCE_MICROS,
                ))
            }
        }
    }

    /// The live Parquet files of `table` (every day of it), as readers list them.
    async fn table_files(&self, table: Table) -> DfResult<Vec<ObjectMeta>> {
        Ok(self
            .store
            .reader()
            .list(Some(&table.prefix(self.store.root())))
            .try_filter(|meta| futures::future::ready(meta.location.as_ref().ends_with(".parquet")))
            .try_collect()
            .await?)
    }

    /// Every row of a file.
    async fn read_whole(&self, meta: &ObjectMeta) -> DfResult<Vec<RecordBatch>> {
        Ok(
            ParquetRecordBatchStreamBuilder::new(self.reader(&meta.location, meta.size).await?)
                .await?
                .build()?
                .try_collect()
                .await?,
        )
    }

    /// Reads the `exposure_keys` files not read yet (all of them again if one that was read
    /// is gone: retention or compaction).
    async fn refresh_rpis(&self) -> DfResult<()> {
        let listed = self.table_files(Table::ExposureKeys).await?;
        if same_files(&self.rpis.read().await.files, &listed) {
            return Ok(());
        }
        let mut rpis = self.rpis.write().await;
        if any_gone(&rpis.files, &listed) {
            *rpis = Rpis::default();
        }
        for meta in &listed {
            if rpis.files.contains(&meta.location) {
                continue;
            }
            for batch in self.read_whole(meta).await? {
                rpis.load(&batch, &meta.location)?;
            }
            rpis.files.insert(meta.location.clone());
        }
        Ok(())
    }

    /// A reader of one file of the store, decrypting with the store's keys.
    async fn reader(&self, location: &Path, size: u64) -> DfResult<CountingReader> {
        let mut reader = self.pages_reader(location, size);
        reader.decryption = self.store.decryption_properties(location).await.map_err(external)?;
        reader.encrypted_only = self.store.keyring().is_some();
        Ok(reader)
    }

    /// A reader of the pages of a file whose footer was read already (the footer's
    /// metadata holds what decrypts its pages).
    fn pages_reader(&self, location: &Path, size: u64) -> CountingReader {
        CountingReader {
            store: Arc::clone(self.store.object_store()),
            location: location.clone(),
            size,
            bytes: Arc::clone(&self.bytes),
            decryption: None,
            encrypted_only: false,
        }
    }

    /// The footer (with page index) of a file; files are immutable, so it is cached by path.
    async fn footer(&self, location: &Path, size: u64) -> DfResult<Footer> {
        if let Some(found) = self.footers.lock().map_err(poisoned)?.get(location) {
            return Ok(found.clone());
        }
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let metadata = ArrowReaderMetadata::load_async(&mut self.reader(location, size).await?, options).await?;
        let footer = Footer::new(metadata);
        let mut footers = self.footers.lock().map_err(poisoned)?;
        if footers.len() >= FOOTER_CACHE_ENTRIES {
            footers.clear();
        }
        footers.insert(location.clone(), footer.clone());
        Ok(footer)
    }

    /// The live Parquet files of `table` on `day`, as readers see them, with footers.
    async fn day_files(&self, table: Table, day: NaiveDate) -> DfResult<DayFiles> {
        let prefix = DayPartition { table, day }.prefix(self.store.root());
        let objects: Vec<ObjectMeta> = self
            .store
            .reader()
            .list(Some(&prefix))
            .try_filter(|meta| futures::future::ready(meta.location.as_ref().ends_with(".parquet")))
            .try_collect()
            .await?;
        let mut files = Vec::with_capacity(objects.len());
        for object in objects {
            let footer = self.footer(&object.location, object.size).await?;
            files.push((object, footer));
        }
        Ok(files)
    }

    /// Reads the devices files not read yet into the directory (all of them again if one
    /// that was read is gone: devices were erased or compacted away).
    async fn refresh_directory(&self) -> DfResult<()> {
        let listed = self.table_files(Table::Devices).await?;
        if same_files(&self.directory.read().await.files, &listed) {
            return Ok(());
        }
        let mut directory = self.directory.write().await;
        if any_gone(&directory.files, &listed) {
            *directory = Directory::default();
        }
        for meta in &listed {
            if directory.files.contains(&meta.location) {
                continue;
            }
            for batch in self.read_whole(meta).await? {
                directory.load(&batch, &meta.location)?;
            }
            directory.files.insert(meta.location.clone());
        }
        Ok(())
    }

    /// Starts the lookup, on a task of `tasks` (so that lookups of several files decode on
    /// every core, and stop when the trace is dropped), of the rows of `file` whose column 0 is one of `keys` (sorted) and whose
    /// column 2 (the time) is in `from..=to`, as `(column 0, column 1, time)`; nothing if no
    /// page may hold a key.
    fn spawn_matching(
        &self,
        tasks: &mut JoinSet<DfResult<Found>>,
        file: &ObjectMeta,
        footer: &Footer,
        keys: &Arc<[String]>,
        from: i64,
        to: i64,
    ) {
        let (row_groups, selection, rows) = select(footer, keys);
        if row_groups.is_empty() {
            return;
        }
        self.rows.fetch_add(rows, Ordering::Relaxed);
        let reader = self.pages_reader(&file.location, file.size);
        let metadata = footer.metadata.clone();
        let keys = Arc::clone(keys);
        tasks.spawn(async move {
            let location = reader.location.clone();
            let batches = read(reader, metadata, |builder| {
                builder.with_row_groups(row_groups).with_row_selection(selection)
            })
            .await?;
            let mut found = Vec::new();
            for batch in batches {
                let key = text_column(&batch, 0, &location)?;
                let other = Other::of(&batch, &location)?;
                let at = time_column(&batch, 2, &location)?;
                // Rows come in key order, a key's rows together: search each key once.
                let mut last: Option<(&str, bool)> = None;
                for i in 0..batch.num_rows() {
                    let (k, t) = (key.value(i), at.value(i));
                    let wanted = match last {
                        Some((previous, wanted)) if previous == k => wanted,
                        _ => keys.binary_search_by(|d| d.as_str().cmp(k)).is_ok(),
                    };
                    last = Some((k, wanted));
                    if wanted && (from..=to).contains(&t) {
                        found.push((k.to_string(), other.value(i), t));
                    }
                }
            }
            Ok(found)
        });
    }

    /// The encounters of `devices` on a day the companions do not cover, by reading all of
    /// `files`, the day's observations (what the `encounters` view would do, without SQL).
    async fn scan_day(&self, files: &DayFiles, devices: &[String], from: i64, to: i64) -> DfResult<Vec<Edge>> {
        self.scanned_days.fetch_add(1, Ordering::Relaxed);
        let directory = self.directory.read().await;
        let rpis = self.rpis.read().await;
        let wanted: HashSet<u128> = devices.iter().filter_map(|d| device_bits(d)).collect();
        let mut edges = Vec::new();
        for (file, footer) in files {
            self.rows.fetch_add(footer.num_rows() as u64, Ordering::Relaxed);
            let reader = self.pages_reader(&file.location, file.size);
            for batch in read(reader, footer.metadata.clone(), |builder| builder).await? {
                let observer = text_column(&batch, 0, &file.location)?;
                let observed = text_column(&batch, 1, &file.location)?;
                let at = time_column(&batch, 2, &file.location)?;
                for i in 0..batch.num_rows() {
                    let t = at.value(i);
                    if !(from..=to).contains(&t) {
                        continue;
                    }
                    let Some(by) = device_bits(observer.value(i)) else {
                        continue;
                    };
                    let mut devices = Vec::new();
                    let count = wanted.contains(&by);
                    self.for_each_heard(&directory, &rpis, observed.value(i), t, count, |d| devices.push(d));
                    for heard in devices {
                        if heard == by {
                            continue;
                        }
                        if wanted.contains(&by) {
                            edges.push(Edge {
                                a: observer.value(i).to_string(),
                                b: device_text(heard),
                                at: t,
                                a_heard: true,
                            });
                        }
                        if wanted.contains(&heard) {
                            edges.push(Edge {
                                a: device_text(heard),
                                b: observer.value(i).to_string(),
                                at: t,
                                a_heard: false,
                            });
                        }
                    }
                }
            }
        }
        Ok(edges)
    }

    /// Whether `day` is answered from the files (see the module documentation); a day
    /// without observations is covered (there is nothing to find).
    pub async fn is_covered(&self, day: NaiveDate) -> crate::Result<bool> {
        let (observations, companions) = self.day_tables(day).await?;
        Ok(covered(&observations, &companions))
    }

    /// A day's observation files and companion files.
    async fn day_tables(&self, day: NaiveDate) -> DfResult<(DayFiles, DayFiles)> {
        futures::try_join!(
            self.day_files(Table::Observations, day),
            self.day_files(Table::ObservedIndex, day)
        )
    }
}

/// Whether the files a directory was built from are exactly those `listed` (files are
/// immutable: nothing new to read).
fn same_files(read: &HashSet<Path>, listed: &[ObjectMeta]) -> bool {
    read.len() == listed.len() && listed.iter().all(|m| read.contains(&m.location))
}

/// Whether a file a directory was built from is no longer listed (erased or compacted
/// away): the directory is built afresh.
fn any_gone(read: &HashSet<Path>, listed: &[ObjectMeta]) -> bool {
    let names: HashSet<&Path> = listed.iter().map(|m| &m.location).collect();
    read.iter().any(|f| !names.contains(f))
}

/// Whether a day's companions cover its observations: they hold as many rows, all in the
/// current layout.
fn covered(observations: &DayFiles, companions: &DayFiles) -> bool {
    let rows = |files: &DayFiles| files.iter().map(|(_, footer)| footer.num_rows()).sum::<i64>();
    rows(observations) == rows(companions) && companions.iter().all(|(_, footer)| footer.current_companion)
}

/// Columns 0, 1 and 2 of the file `reader` reads, as `select` narrows the reader.
async fn read(
    reader: CountingReader,
    metadata: ArrowReaderMetadata,
    select: impl FnOnce(ParquetRecordBatchStreamBuilder<CountingReader>) -> ParquetRecordBatchStreamBuilder<CountingReader>,
) -> DfResult<Vec<RecordBatch>> {
    read_columns(reader, metadata, &[0, 1, 2], select).await
}

/// `columns` of the file `reader` reads, as `select` narrows the reader.
async fn read_columns(
    reader: CountingReader,
    metadata: ArrowReaderMetadata,
    columns: &[usize],
    select: impl FnOnce(ParquetRecordBatchStreamBuilder<CountingReader>) -> ParquetRecordBatchStreamBuilder<CountingReader>,
) -> DfResult<Vec<RecordBatch>> {
    let mask = ProjectionMask::roots(
        metadata.metadata().file_metadata().schema_descr(),
        columns.iter().copied(),
    );
    let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata).with_projection(mask);
    Ok(select(builder).build()?.try_collect().await?)
}

/// Column 1 of a lookup: observations' `observed` (text) or companions' `observer` (a
/// device's 16 bytes).
enum Other<'a> {
    Text(&'a arrow::array::StringArray),
    Device(&'a arrow::array::FixedSizeBinaryArray),
}

impl<'a> Other<'a> {
    fn of(batch: &'a RecordBatch, file: &Path) -> DfResult<Self> {
        let column = batch.column(1);
        if let Some(text) = column.as_string_opt::<i32>() {
            return Ok(Self::Text(text));
        }
        match column.as_fixed_size_binary_opt() {
            Some(bytes) if bytes.value_length() == 16 => Ok(Self::Device(bytes)),
            _ => Err(DataFusionError::Execution(format!(
                "{file}: column 1 is neither text nor 16 bytes (not a Proxima file?)"
            ))),
        }
    }

    fn value(&self, i: usize) -> String {
        match self {
            Self::Text(text) => text.value(i).to_string(),
            Self::Device(bytes) => {
                let bits = <[u8; 16]>::try_from(bytes.value(i)).map_or(0, u128::from_be_bytes);
                device_text(bits)
            }
        }
    }
}

/// Column `i` of a batch read from `file`, as text: an error (not a panic) if a file that is
/// not Proxima's has another type there.
fn text_column<'a>(batch: &'a RecordBatch, i: usize, file: &Path) -> DfResult<&'a arrow::array::StringArray> {
    batch
        .column(i)
        .as_string_opt::<i32>()
        .ok_or_else(|| DataFusionError::Execution(format!("{file}: column {i} is not text (not a Proxima file?)")))
}

/// Column `i` of a batch read from `file`, as UTC microsecond timestamps.
fn time_column<'a>(
    batch: &'a RecordBatch,
    i: usize,
    file: &Path,
) -> DfResult<&'a arrow::array::PrimitiveArray<TimestampMicrosecondType>> {
    batch
        .column(i)
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| {
            DataFusionError::Execution(format!(
                "{file}: column {i} is not a microsecond timestamp (not a Proxima file?)"
            ))
        })
}

/// The rows of every lookup, once all have finished.
async fn join(mut tasks: JoinSet<DfResult<Found>>) -> DfResult<Found> {
    let mut all = Vec::new();
    while let Some(result) = tasks.join_next().await {
        let found = result.map_err(|e| DataFusionError::External(Box::new(e)))??;
        all.extend(found);
    }
    Ok(all)
}

fn external(e: crate::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

fn poisoned<T>(_: T) -> DataFusionError {
    DataFusionError::Internal("index footer cache lock poisoned".into())
}

#[async_trait]
impl EncounterLookup for IndexReader {
    async fn encounters(&self, devices: &[String], from: i64, to: i64) -> DfResult<Lookup> {
        let mut found = Lookup::default();
        if devices.is_empty() || from > to {
            return Ok(found);
        }
        self.refresh_directory().await?;
        self.refresh_rpis().await?;
        let mut sorted = devices.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let devices: Arc<[String]> = sorted.into();
        // What others hear of the devices: their MACs, the rotating identifiers they may have
        // broadcast in the window (with each one's epoch) and the RPIs of their GAEN keys
        // (with each one's interval); the devices of each.
        let mut broadcasts: HashMap<String, Vec<(String, Valid)>> = HashMap::new();
        {
            let directory = self.directory.read().await;
            let rpis = self.rpis.read().await;
            for device in devices.iter() {
                let Some(bits) = device_bits(device) else { continue };
                if let Some(mac) = directory.mac_of.get(&bits) {
                    broadcasts
                        .entry(mac_text(*mac))
                        .or_default()
                        .push((device.clone(), Valid::Always));
                }
                if let Some(ids) = &self.identifiers
                    && directory.devices.contains(&bits)
                {
                    let handle = crate::ephemeral::handle_of_bits(bits);
                    for (id, start) in ids.broadcast_between(handle, from, to) {
                        broadcasts
                            .entry(id)
                            .or_default()
                            .push((device.clone(), Valid::Epoch(start)));
                    }
                }
                for &(rpik, first, period) in rpis.keys_of.get(&bits).into_iter().flatten() {
                    for interval in first..first.saturating_add(period) {
                        let start = i64::from(interval) * INTERVAL_MICROS;
                        if start + INTERVAL_MICROS + RPI_TOLERANCE_MICROS < from || start - RPI_TOLERANCE_MICROS > to {
                            continue;
                        }
                        let rpi = hex::encode(proxima_udfs::gaen::rpi(&rpik, interval));
                        broadcasts
                            .entry(rpi)
                            .or_default()
                            .push((device.clone(), Valid::Interval(interval)));
                    }
                }
            }
        }
        // Each key is looked up only in the days a sighting of it may fall in: a MAC in every
        // day, an identifier or RPI in the day or two its validity spans (searching every key
        // in every day's companions read several times the pages).
        let (first_day, last_day) = (from.div_euclid(MICROS_PER_DAY), to.div_euclid(MICROS_PER_DAY));
        let mut keys_of_day: HashMap<i64, Vec<String>> = HashMap::new();
        for (key, owners) in &broadcasts {
            let mut days: Vec<i64> = Vec::new();
            for (_, valid) in owners {
                let Some((lo, hi)) = self.counts_when(valid, from, to) else {
                    continue;
                };
                days.extend(lo.div_euclid(MICROS_PER_DAY).max(first_day)..=hi.div_euclid(MICROS_PER_DAY).min(last_day));
            }
            days.sort_unstable();
            days.dedup();
            for day in days {
                keys_of_day.entry(day).or_default().push(key.clone());
            }
        }
        let keys_of_day: HashMap<i64, Arc<[String]>> = keys_of_day
            .into_iter()
            .map(|(day, mut keys)| {
                keys.sort_unstable();
                (day, keys.into())
            })
            .collect();

        let days = (from.div_euclid(MICROS_PER_DAY)..=to.div_euclid(MICROS_PER_DAY))
            .filter_map(|day| i32::try_from(day).ok())
            .map(date_from_epoch_days);
        let listed = futures::future::try_join_all(
            days.map(|day| async move { Ok::<_, DataFusionError>((day, self.day_tables(day).await?)) }),
        )
        .await?;
        // Both lookups of every file of every covered day at once.
        let (mut heard, mut heard_by) = (JoinSet::new(), JoinSet::new());
        let mut uncovered = Vec::new();
        for (day, (observations, companions)) in &listed {
            if !covered(observations, companions) {
                found.uncovered_days.push(epoch_days(*day));
                uncovered.push(observations);
                continue;
            }
            for (file, footer) in observations {
                self.spawn_matching(&mut heard, file, footer, &devices, from, to);
            }
            if let Some(keys) = keys_of_day.get(&i64::from(epoch_days(*day))) {
                for (file, footer) in companions {
                    self.spawn_matching(&mut heard_by, file, footer, keys, from, to);
                }
            }
        }
        let heard = join(heard).await?;
        let heard_by = join(heard_by).await?;
        {
            let directory = self.directory.read().await;
            let rpis = self.rpis.read().await;
            // What the devices heard.
            for (observer, observed, at) in heard {
                self.for_each_heard(&directory, &rpis, &observed, at, true, |device| {
                    let device = device_text(device);
                    if device != observer {
                        found.edges.push(Edge {
                            a: observer.clone(),
                            b: device,
                            at,
                            a_heard: true,
                        });
                    }
                });
            }
        }
        // Who heard the devices: by MAC at any time, by identifier in its epoch, by RPI near
        // its interval.
        for (observed, observer, at) in heard_by {
            for (device, valid) in broadcasts.get(&observed).into_iter().flatten() {
                let in_time = match valid {
                    Valid::Always => true,
                    Valid::Epoch(start) => self.identifiers.as_ref().is_some_and(|ids| ids.in_epoch(*start, at)),
                    Valid::Interval(interval) => rpi_heard_in_time(*interval, at),
                };
                if !in_time {
                    self.replayed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if *device != observer {
                    found.edges.push(Edge {
                        a: device.clone(),
                        b: observer.clone(),
                        at,
                        a_heard: false,
                    });
                }
            }
        }
        // Days the companions do not cover: the slow, always correct path.
        for observations in uncovered {
            found
                .edges
                .extend(self.scan_day(observations, &devices, from, to).await?);
        }
        Ok(found)
    }

    async fn is_registered(&self, device: &str) -> DfResult<bool> {
        self.refresh_directory().await?;
        let Some(device) = device_bits(device) else {
            return Ok(false);
        };
        Ok(self.directory.read().await.devices.contains(&device))
    }

    fn counters(&self) -> LookupCounters {
        IndexReader::counters(self)
    }
}

/// The row groups and rows of a file sorted by its first column that may hold one of
/// `keys` (sorted): pages whose min..=max contains a key, found by binary search of the
/// page index when the file has one, else whole row groups by their statistics. Also
/// returns the rows selected.
fn select(footer: &Footer, keys: &[String]) -> (Vec<usize>, RowSelection, u64) {
    let metadata = footer.metadata.metadata();
    let mut row_groups = Vec::new();
    let mut selectors = Vec::new();
    let mut selected = 0u64;
    for (i, row_group) in metadata.row_groups().iter().enumerate() {
        let rows = row_group.num_rows() as u64;
        let search = footer.search.get(i).copied().unwrap_or(Search::Whole);
        let spans = match (search, PageIndex::locate(metadata, i, rows)) {
            (Search::Sorted, Some(pages)) => pages.spans_holding(keys, true),
            (Search::Pages, Some(pages)) => pages.spans_holding(keys, false),
            _ => whole_group(row_group, rows, keys),
        };
        let mut cursor = 0u64;
        let mut group_selectors = Vec::new();
        for range in spans {
            if range.start > cursor {
                group_selectors.push(RowSelector::skip((range.start - cursor) as usize));
            }
            group_selectors.push(RowSelector::select((range.end - range.start) as usize));
            selected += range.end - range.start;
            cursor = range.end;
        }
        if group_selectors.is_empty() {
            continue;
        }
        if cursor < rows {
            group_selectors.push(RowSelector::skip((rows - cursor) as usize));
        }
        row_groups.push(i);
        selectors.extend(group_selectors);
    }
    (row_groups, RowSelection::from(selectors), selected)
}

/// A row group without a page index: all of it, unless its statistics rule every key out.
fn whole_group(row_group: &RowGroupMetaData, rows: u64, keys: &[String]) -> Vec<Range<u64>> {
    if let Some(Statistics::ByteArray(s)) = row_group.column(0).statistics()
        && let (Some(min), Some(max)) = (s.min_opt(), s.max_opt())
    {
        let first = keys.partition_point(|k| k.as_bytes() < min.data());
        if keys.get(first).is_none_or(|k| k.as_bytes() > max.data()) {
            return Vec::new();
        }
    }
    std::iter::once(0..rows).collect()
}

/// The page index of column 0 in one row group of a file sorted by that column.
struct PageIndex<'a> {
    index: &'a ByteArrayColumnIndex,
    locations: &'a [PageLocation],
    rows: u64,
}

impl<'a> PageIndex<'a> {
    /// `None` if the file has no page index.
    fn locate(metadata: &'a ParquetMetaData, group: usize, rows: u64) -> Option<Self> {
        let ColumnIndexMetaData::BYTE_ARRAY(index) = metadata.column_index()?.get(group)?.first()? else {
            return None;
        };
        let locations = metadata
            .offset_index()?
            .get(group)?
            .first()?
            .page_locations()
            .as_slice();
        Some(Self { index, locations, rows })
    }

    /// Whether every page has bounds (a page of nulls has none, and no search can place it).
    fn is_bounded(&self) -> bool {
        (0..self.locations.len()).all(|p| self.index.min_value(p).is_some() && self.index.max_value(p).is_some())
    }

    /// Whether the pages are in key order with no overlap but at their edges (each page's
    /// max is at most the next page's min), as in a file sorted by this column.
    fn is_sorted(&self) -> bool {
        (1..self.locations.len()).all(|p| self.max(p - 1) <= self.min(p))
    }

    fn min(&self, page: usize) -> &[u8] {
        self.index.min_value(page).unwrap_or_default()
    }

    fn max(&self, page: usize) -> &[u8] {
        self.index.max_value(page).unwrap_or_default()
    }

    /// Rows of page `page`.
    fn page_rows(&self, page: usize) -> Range<u64> {
        let start = self.locations[page].first_row_index as u64;
        let end = self
            .locations
            .get(page + 1)
            .map_or(self.rows, |next| next.first_row_index as u64);
        start..end
    }

    /// The rows of the pages that may hold one of `keys` (sorted), in order and disjoint:
    /// for each key, the pages from the first whose max is not below it to the last whose
    /// min is not above it (pages of a sorted column are in order, so that run is contiguous).
    fn spans_holding(&self, keys: &[String], sorted: bool) -> Vec<Range<u64>> {
        let pages = self.locations.len();
        let mut spans: Vec<Range<u64>> = Vec::new();
        if !sorted {
            // Not a file Proxima sorted: every page whose bounds may hold a key.
            for page in 0..pages {
                let first = keys.partition_point(|k| k.as_bytes() < self.min(page));
                if keys.get(first).is_some_and(|k| k.as_bytes() <= self.max(page)) {
                    spans.push(self.page_rows(page));
                }
            }
            return spans;
        }
        let mut next_page = 0;
        for key in keys {
            let key = key.as_bytes();
            let first = next_page + partition(pages - next_page, |p| self.max(next_page + p) < key);
            let end = first + partition(pages - first, |p| self.min(first + p) <= key);
            if first >= end {
                continue;
            }
            let rows = self.page_rows(first).start..self.page_rows(end - 1).end;
            match spans.last_mut() {
                Some(last) if last.end >= rows.start => last.end = last.end.max(rows.end),
                _ => spans.push(rows),
            }
            // Keys are sorted: the next key's pages start no earlier than this key's first.
            next_page = first;
        }
        spans
    }
}

/// The number of leading items among `0..len` for which `pred` holds (`pred` is true then false).
fn partition(len: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (0, len);
    while low < high {
        let mid = low + (high - low) / 2;
        if pred(mid) {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    low
}

/// An [`AsyncFileReader`] over the object store that counts the bytes it fetches.
struct CountingReader {
    store: Arc<dyn ObjectStore>,
    location: Path,
    size: u64,
    bytes: Arc<AtomicU64>,
    /// How the file decrypts (`None`: as is).
    decryption: Option<Arc<FileDecryptionProperties>>,
    /// Whether the file must be encrypted (a store with master keys): a read of its end
    /// that does not end in `PARE` is refused.
    encrypted_only: bool,
}

impl AsyncFileReader for CountingReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.bytes.fetch_add(range.end - range.start, Ordering::Relaxed);
        let check = self.encrypted_only && range.end == self.size;
        async move {
            let bytes = self.store.get_range(&self.location, range).await?;
            if check && !bytes.ends_with(b"PARE") {
                return Err(parquet::errors::ParquetError::General(
                    crate::encryption::refused_in_the_clear(&self.location),
                ));
            }
            Ok(bytes)
        }
        .boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        self.bytes.fetch_add(total, Ordering::Relaxed);
        async move { Ok(self.store.get_ranges(&self.location, &ranges).await?) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        // Read through this reader's get_bytes so that footer bytes count too.
        let policy = options.map_or(PageIndexPolicy::Skip, |o| o.column_index_policy());
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_page_index_policy(policy)
                .with_decryption_properties(self.decryption.clone())
                .load_and_finish(&mut *self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::{EnabledStatistics, WriterProperties};

    use super::*;

    /// A one-column Parquet file of `values` (in this order) with 4-row pages, as its footer.
    fn footer_of(values: &[&str]) -> Footer {
        let schema = Arc::new(Schema::new(vec![Field::new("key", DataType::Utf8, false)]));
        let batch =
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(StringArray::from(values.to_vec()))]).unwrap();
        let props = WriterProperties::builder()
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_data_page_row_count_limit(4)
            .set_write_batch_size(4)
            .set_max_row_group_row_count(Some(10))
            .build();
        let mut bytes = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut bytes, schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        Footer::new(ArrowReaderMetadata::load(&Bytes::from(bytes), options).unwrap())
    }

    /// The rows `select` picks, as indexes into the file.
    fn selected_rows(footer: &Footer, keys: &[&str]) -> Vec<usize> {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let (groups, selection, _) = select(footer, &keys);
        let metadata = footer.metadata.metadata();
        let mut offsets = vec![0usize];
        for group in metadata.row_groups() {
            offsets.push(offsets.last().unwrap() + group.num_rows() as usize);
        }
        // The selection runs over the selected row groups' rows, one after the other.
        let candidates: Vec<usize> = groups.iter().flat_map(|&g| offsets[g]..offsets[g + 1]).collect();
        let mut rows = Vec::new();
        let mut at = 0;
        for selector in selection.iter() {
            if !selector.skip {
                rows.extend_from_slice(&candidates[at..at + selector.row_count]);
            }
            at += selector.row_count;
        }
        assert_eq!(
            at,
            candidates.len(),
            "the selection covers the selected row groups exactly"
        );
        rows
    }

    #[test]
    fn page_selection_finds_every_row_of_each_key_and_reads_few_pages() {
        // 3 row groups of up to 10 rows, pages of 4 rows; "c" spans two pages, "f" two groups.
        let values = [
            "a", "a", "b", "c", "c", "c", "c", "c", "d", "e", "f", "f", "f", "f", "f", "f", "f", "g", "h", "h", "i",
            "j", "k", "l", "m", "n", "o", "p",
        ];
        let footer = footer_of(&values);
        assert!(footer.search.iter().all(|&search| search == Search::Sorted));
        for keys in [
            vec!["c"],
            vec!["f"],
            vec!["a", "h", "p"],
            vec!["0", "bb", "zz"],
            vec!["b", "c", "d", "e", "f"],
        ] {
            let rows = selected_rows(&footer, &keys);
            // Every row holding a key is selected ...
            for (i, value) in values.iter().enumerate() {
                if keys.contains(value) {
                    assert!(rows.contains(&i), "{keys:?}: row {i} ({value}) not selected: {rows:?}");
                }
            }
            // ... and only pages that may hold one: each selected row's 4-row page does.
            for &i in &rows {
                let group_start = i / 10 * 10;
                let page_start = group_start + (i - group_start) / 4 * 4;
                let page_end = (page_start + 4).min(group_start + 10).min(values.len());
                let page = &values[page_start..page_end];
                assert!(
                    keys.iter()
                        .any(|k| page.first().unwrap() <= k && k <= page.last().unwrap()),
                    "{keys:?}: row {i} selected from page {page:?}"
                );
            }
        }
        assert!(selected_rows(&footer, &["0", "zz"]).is_empty());
    }

    #[test]
    fn an_unsorted_file_is_searched_page_by_page() {
        let values = ["m", "n", "o", "p", "a", "b", "c", "d", "x", "y"];
        let footer = footer_of(&values);
        assert_eq!(footer.search[0], Search::Pages);
        assert_eq!(selected_rows(&footer, &["b"]), vec![4, 5, 6, 7]);
        assert_eq!(selected_rows(&footer, &["b", "y"]), vec![4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn identifiers_round_trip_through_their_integers() {
        for mac in ["AA:00:00:00:00:01", "0A:1B:2C:3D:4E:5F", "FF:FF:FF:FF:FF:FF"] {
            assert_eq!(mac_text(mac_bits(mac).unwrap()), mac);
        }
        for other in [
            "aa:00:00:00:00:01",
            "AA-00-00-00-00-01",
            "AA:00:00:00:00",
            "0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(mac_bits(other), None, "{other}");
        }
        let device = "00000000-0000-4000-8000-0000000000a1";
        assert_eq!(device_text(device_bits(device).unwrap()), device);
    }
}
