//! The encounter index: each day's `encounters` sorted by device, and the lookups tracing makes in it.
//!
//! `encounter_index/day=D/part-….parquet` holds the `(a, b, at)` rows of the
//! `encounters` view for day D (both directions, identifiers resolved), sorted
//! by `a` then `at`, in small pages with a page index on `a` (written by
//! `proxima-ingest`'s index builder whenever a day's files change). The
//! encounters of a few devices are then a lookup: binary search of the page
//! index, then a read of just the pages that may hold them.
//!
//! An index file records the files it was built from (key
//! [`SOURCES_KEY`] of its Parquet metadata: the day's observation files and
//! every devices file). It answers for its day only while exactly those files
//! exist; otherwise the day is reported uncovered and tracing reads it from
//! the `encounters` view, so a stale index is slow, never wrong.

use std::collections::HashMap;
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
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::page_index::column_index::ColumnIndexMetaData;
use parquet::file::statistics::Statistics;
use proxima_udfs::trace::{Edge, EncounterLookup, Lookup, LookupCounters};

use crate::paths::{DayPartition, Table};
use crate::schema::{date_from_epoch_days, epoch_days};
use crate::store::Store;

/// Parquet metadata key listing, one per line, the files an index file was built from.
pub const SOURCES_KEY: &str = "proxima.index.sources";

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// File footers kept in memory; beyond this the cache starts afresh.
const FOOTER_CACHE_ENTRIES: usize = 1024;

/// The files an index of `day` must be built from: the day's observation files and
/// every devices file, as sorted store paths.
pub async fn sources(store: &Store, day: NaiveDate) -> crate::Result<Vec<String>> {
    let observations = DayPartition {
        table: Table::Observations,
        day,
    };
    let observations = list(store, &observations.prefix(store.root())).await?;
    if observations.is_empty() {
        return Ok(observations);
    }
    let devices = list(store, &Table::Devices.prefix(store.root())).await?;
    Ok(source_list(observations, &devices))
}

/// The sources of a day's index: its observation files and the devices files, sorted.
fn source_list(mut observations: Vec<String>, devices: &[String]) -> Vec<String> {
    observations.extend(devices.iter().cloned());
    observations.sort();
    observations
}

/// The Parquet files under `prefix`, as store paths.
async fn list(store: &Store, prefix: &Path) -> object_store::Result<Vec<String>> {
    store
        .reader()
        .list(Some(prefix))
        .try_filter(|meta| futures::future::ready(meta.location.as_ref().ends_with(".parquet")))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
}

/// The key-value metadata of a Parquet file in the store (its footer only).
pub async fn file_key_values(store: &Store, location: &Path) -> crate::Result<HashMap<String, String>> {
    let size = store.object_store().head(location).await?.size;
    let mut reader = CountingReader {
        store: Arc::clone(store.object_store()),
        location: location.clone(),
        size,
        bytes: Arc::default(),
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

/// Encodes a source list for [`SOURCES_KEY`].
pub fn encode_sources(sources: &[String]) -> String {
    sources.join("\n")
}

/// Looks up encounters in the store's encounter index (the tracing fast path).
#[derive(Debug)]
pub struct IndexReader {
    store: Store,
    footers: Mutex<HashMap<Path, ArrowReaderMetadata>>,
    rows: AtomicU64,
    bytes: Arc<AtomicU64>,
}

impl IndexReader {
    /// A reader of `store`'s index, with an empty footer cache.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            footers: Mutex::new(HashMap::new()),
            rows: AtomicU64::new(0),
            bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Rows decoded and bytes fetched by this reader's lookups so far.
    pub fn counters(&self) -> LookupCounters {
        LookupCounters {
            rows: self.rows.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    fn reader(&self, location: &Path, size: u64) -> CountingReader {
        CountingReader {
            store: Arc::clone(self.store.object_store()),
            location: location.clone(),
            size,
            bytes: Arc::clone(&self.bytes),
        }
    }

    /// The footer (with page index) of an index file; files are immutable, so it is cached by path.
    async fn footer(&self, location: &Path, size: u64) -> DfResult<ArrowReaderMetadata> {
        if let Some(found) = self.footers.lock().map_err(poisoned)?.get(location) {
            return Ok(found.clone());
        }
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        let metadata = ArrowReaderMetadata::load_async(&mut self.reader(location, size), options).await?;
        let mut footers = self.footers.lock().map_err(poisoned)?;
        if footers.len() >= FOOTER_CACHE_ENTRIES {
            footers.clear();
        }
        footers.insert(location.clone(), metadata.clone());
        Ok(metadata)
    }

    /// The index file of `day` built from exactly the current sources, if any.
    async fn current_file(&self, day: NaiveDate, devices: &[String]) -> DfResult<Current> {
        let store = self.store.object_store();
        let observations = DayPartition {
            table: Table::Observations,
            day,
        };
        let observations = list(&self.store, &observations.prefix(self.store.root())).await?;
        if observations.is_empty() {
            return Ok(Current::NoData);
        }
        let expected = encode_sources(&source_list(observations, devices));
        let index = DayPartition {
            table: Table::EncounterIndex,
            day,
        };
        let mut files: Vec<_> = store.list(Some(&index.prefix(self.store.root()))).try_collect().await?;
        // Newest first: file names carry a UUID v7.
        files.sort_by(|a, b| b.location.cmp(&a.location));
        for file in files {
            let metadata = self.footer(&file.location, file.size).await?;
            let built_from = metadata
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .and_then(|kv| kv.iter().find(|kv| kv.key == SOURCES_KEY))
                .and_then(|kv| kv.value.as_deref());
            if built_from == Some(expected.as_str()) {
                return Ok(Current::File(file.location, file.size, metadata));
            }
        }
        Ok(Current::Stale)
    }

    /// Reads the rows of one index file whose `a` is in `devices` and `at` in `from..=to`.
    async fn read(
        &self,
        location: &Path,
        size: u64,
        metadata: ArrowReaderMetadata,
        devices: &[String],
        from: i64,
        to: i64,
    ) -> DfResult<Vec<Edge>> {
        let (row_groups, selection, rows) = select(metadata.metadata(), devices);
        if row_groups.is_empty() {
            return Ok(Vec::new());
        }
        self.rows.fetch_add(rows, Ordering::Relaxed);
        let mask = ProjectionMask::roots(metadata.metadata().file_metadata().schema_descr(), [0, 1, 2]);
        let batches: Vec<RecordBatch> =
            ParquetRecordBatchStreamBuilder::new_with_metadata(self.reader(location, size), metadata)
                .with_row_groups(row_groups)
                .with_row_selection(selection)
                .with_projection(mask)
                .build()?
                .try_collect()
                .await?;
        let mut edges = Vec::new();
        for batch in batches {
            let a = batch.column(0).as_string::<i32>();
            let b = batch.column(1).as_string::<i32>();
            let at = batch.column(2).as_primitive::<TimestampMicrosecondType>();
            for i in 0..batch.num_rows() {
                let (a, at) = (a.value(i), at.value(i));
                if (from..=to).contains(&at) && devices.binary_search_by(|d| d.as_str().cmp(a)).is_ok() {
                    edges.push(Edge {
                        a: a.to_string(),
                        b: b.value(i).to_string(),
                        at,
                    });
                }
            }
        }
        Ok(edges)
    }
}

enum Current {
    /// The day has no observations: nothing to find.
    NoData,
    /// No index file matches the day's current files.
    Stale,
    /// The index file to read: location, size, footer.
    File(Path, u64, ArrowReaderMetadata),
}

fn poisoned<T>(_: T) -> DataFusionError {
    DataFusionError::Internal("index footer cache lock poisoned".into())
}

impl IndexReader {
    /// Whether `day` needs an index build: it has observations and no index file matches them.
    pub async fn is_stale(&self, day: NaiveDate) -> crate::Result<bool> {
        let device_files = list(&self.store, &Table::Devices.prefix(self.store.root())).await?;
        Ok(matches!(self.current_file(day, &device_files).await?, Current::Stale))
    }
}

#[async_trait]
impl EncounterLookup for IndexReader {
    async fn encounters(&self, devices: &[String], from: i64, to: i64) -> DfResult<Lookup> {
        let mut found = Lookup::default();
        if devices.is_empty() || from > to {
            return Ok(found);
        }
        let device_files = list(&self.store, &Table::Devices.prefix(self.store.root())).await?;
        let days = from.div_euclid(MICROS_PER_DAY)..=to.div_euclid(MICROS_PER_DAY);
        for day in days {
            let Ok(day) = i32::try_from(day) else { continue };
            match self.current_file(date_from_epoch_days(day), &device_files).await? {
                Current::NoData => {}
                Current::Stale => found.uncovered_days.push(epoch_days(date_from_epoch_days(day))),
                Current::File(location, size, metadata) => {
                    let edges = self.read(&location, size, metadata, devices, from, to).await?;
                    found.edges.extend(edges);
                }
            }
        }
        Ok(found)
    }

    fn counters(&self) -> LookupCounters {
        IndexReader::counters(self)
    }
}

/// The row groups and rows of a file sorted by its first column that may hold one of
/// `keys` (sorted): pages whose min..=max contains a key, by the page index when the
/// file has one, else whole row groups by their statistics. Also returns the rows selected.
fn select(metadata: &ParquetMetaData, keys: &[String]) -> (Vec<usize>, RowSelection, u64) {
    let may_hold = |min: &[u8], max: &[u8]| {
        let first = keys.partition_point(|k| k.as_bytes() < min);
        keys.get(first).is_some_and(|k| k.as_bytes() <= max)
    };
    let mut row_groups = Vec::new();
    let mut selectors = Vec::new();
    let mut selected = 0u64;
    for (i, row_group) in metadata.row_groups().iter().enumerate() {
        let rows = row_group.num_rows() as u64;
        let spans = page_spans(metadata, i, rows).unwrap_or_else(|| {
            // No page index: the whole row group, bounded by its statistics if it has them.
            let (min, max) = match row_group.column(0).statistics() {
                Some(Statistics::ByteArray(s)) => (
                    s.min_opt().map(|v| v.data().to_vec()),
                    s.max_opt().map(|v| v.data().to_vec()),
                ),
                _ => (None, None),
            };
            vec![PageSpan {
                min,
                max,
                rows: 0..rows,
            }]
        });
        let mut cursor = 0u64;
        let mut group_selectors = Vec::new();
        for PageSpan { min, max, rows: range } in spans {
            let unbounded = min.is_none() || max.is_none();
            if !unbounded && !may_hold(min.as_deref().unwrap_or_default(), max.as_deref().unwrap_or_default()) {
                continue;
            }
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

/// A run of rows of column 0 and the bounds of its values (`None`: unknown).
struct PageSpan {
    min: Option<Vec<u8>>,
    max: Option<Vec<u8>>,
    rows: Range<u64>,
}

/// The span of each page of column 0 in row group `group`, from the page index.
fn page_spans(metadata: &ParquetMetaData, group: usize, rows: u64) -> Option<Vec<PageSpan>> {
    let ColumnIndexMetaData::BYTE_ARRAY(index) = metadata.column_index()?.get(group)?.first()? else {
        return None;
    };
    let locations = metadata.offset_index()?.get(group)?.first()?.page_locations();
    let mut pages = Vec::with_capacity(locations.len());
    for (page, location) in locations.iter().enumerate() {
        let start = location.first_row_index as u64;
        let end = locations.get(page + 1).map_or(rows, |next| next.first_row_index as u64);
        pages.push(PageSpan {
            min: index.min_value(page).map(<[u8]>::to_vec),
            max: index.max_value(page).map(<[u8]>::to_vec),
            rows: start..end,
        });
    }
    Some(pages)
}

/// An [`AsyncFileReader`] over the object store that counts the bytes it fetches.
struct CountingReader {
    store: Arc<dyn ObjectStore>,
    location: Path,
    size: u64,
    bytes: Arc<AtomicU64>,
}

impl AsyncFileReader for CountingReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.bytes.fetch_add(range.end - range.start, Ordering::Relaxed);
        async move { Ok(self.store.get_range(&self.location, range).await?) }.boxed()
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
                .load_and_finish(&mut *self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}
