//! Test helpers: rows to write, and fault injection (an object store that fails chosen calls).
//!
//! [`FailingStore`] wraps a real store and fails the Nth call of a kind
//! (put, copy, rename, delete) counted from when it was armed, with an error
//! like a transient S3 failure; everything else passes through. Tests arm it,
//! run the write side, and check that what was stored is exactly what was
//! acknowledged.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// The kinds of call that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `put` (single-part uploads: manifests, markers).
    Put,
    /// `put` that reaches the store but answers an error (a timeout after the write).
    PutLanded,
    /// `copy`.
    Copy,
    /// `rename` (publishing staged files).
    Rename,
    /// `delete` (one per location of a delete stream).
    Delete,
}

#[derive(Debug, Default)]
struct Plan {
    /// (kind, calls of that kind still to let through, paths that must contain this text,
    /// failures still to make)
    armed: Option<(Op, usize, String, usize)>,
    failed: usize,
}

/// An object store that fails the armed call; see the module documentation.
pub struct FailingStore {
    inner: Arc<dyn ObjectStore>,
    plan: Mutex<Plan>,
}

impl fmt::Debug for FailingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingStore({})", self.inner)
    }
}

impl fmt::Display for FailingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingStore({})", self.inner)
    }
}

impl FailingStore {
    /// Wraps `inner`, failing nothing yet.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            plan: Mutex::default(),
        })
    }

    /// Fails the `nth` (1-based) call of kind `op` from now whose path contains `matching`,
    /// and the `times - 1` matching calls after it; later calls pass.
    pub fn fail(&self, op: Op, nth: usize, matching: &str, times: usize) {
        let mut plan = self.plan.lock().expect("plan lock");
        plan.armed = Some((op, nth.saturating_sub(1), matching.to_string(), times));
    }

    /// How many calls have been failed so far.
    pub fn failures(&self) -> usize {
        self.plan.lock().expect("plan lock").failed
    }

    fn check(&self, op: Op, location: &Path) -> Result<()> {
        let mut plan = self.plan.lock().expect("plan lock");
        let Some((armed, remaining, matching, times)) = plan.armed.as_mut() else {
            return Ok(());
        };
        if *armed != op || !location.as_ref().contains(matching.as_str()) {
            return Ok(());
        }
        if *remaining > 0 {
            *remaining -= 1;
            return Ok(());
        }
        *times -= 1;
        if *times == 0 {
            plan.armed = None;
        }
        plan.failed += 1;
        Err(object_store::Error::Generic {
            store: "failing",
            source: format!("injected {op:?} failure at {location}").into(),
        })
    }
}

#[async_trait]
impl ObjectStore for FailingStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.check(Op::Put, location)?;
        let result = self.inner.put_opts(location, payload, opts).await?;
        self.check(Op::PutLanded, location)?;
        Ok(result)
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.check(Op::Put, location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        // Checked one location at a time, before it reaches the inner store.
        let checked: Vec<Result<Path>> = futures::executor::block_on(locations.collect::<Vec<_>>())
            .into_iter()
            .map(|location| {
                let location = location?;
                self.check(Op::Delete, &location)?;
                Ok(location)
            })
            .collect();
        let (ok, failed): (Vec<_>, Vec<_>) = checked.into_iter().partition(|r| r.is_ok());
        let passed = self.inner.delete_stream(futures::stream::iter(ok).boxed());
        passed.chain(futures::stream::iter(failed)).boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.check(Op::Copy, to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.check(Op::Rename, to)?;
        self.inner.rename_opts(from, to, options).await
    }
}

/// `n` observations by device number `tag` (one a microsecond), `days_ago` days before now.
pub fn observations(tag: u32, n: usize, days_ago: i64) -> arrow::array::RecordBatch {
    use arrow::array::{Int16Array, Int32Array, StringArray, TimestampMicrosecondArray};
    let at = chrono::Utc::now().timestamp_micros() - days_ago * 86_400_000_000;
    arrow::array::RecordBatch::try_new(
        proxima_engine::Table::Observations.file_schema(),
        vec![
            Arc::new(StringArray::from(vec![
                format!("00000000-0000-4000-8000-{tag:012x}");
                n
            ])),
            Arc::new(StringArray::from(vec!["AA:00:00:00:00:01"; n])),
            Arc::new(TimestampMicrosecondArray::from_iter_values((0..n as i64).map(|i| at + i)).with_timezone("UTC")),
            Arc::new(Int32Array::from(vec![60; n])),
            Arc::new(Int16Array::from(vec![None; n])),
            Arc::new(Int16Array::from(vec![None; n])),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
        ],
    )
    .expect("rows match the observations schema")
}

/// Rows of `observations` as SQL counts them (through the lineage view).
pub async fn stored(store: &proxima_engine::Store) -> i64 {
    use arrow::array::AsArray;
    let factory = proxima_engine::SessionFactory::new(store.clone(), proxima_engine::SessionOptions::default())
        .expect("a session factory");
    let ctx = factory.session().await.expect("a session");
    let batches = ctx
        .sql("SELECT count(*) FROM observations")
        .await
        .expect("plans")
        .collect()
        .await
        .expect("runs");
    batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0)
}

/// A fresh in-memory store behind a [`FailingStore`].
pub fn failing_store() -> (proxima_engine::Store, Arc<FailingStore>) {
    let failing = FailingStore::new(Arc::clone(proxima_engine::Store::in_memory().object_store()));
    let store = proxima_engine::Store::in_memory().wrapped(|_| failing.clone());
    (store, failing)
}

/// Every file under `dir`, however deep.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}
