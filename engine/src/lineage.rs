//! Compaction lineage: how readers never see a row twice or miss one while files are merged.
//!
//! Compaction writes one merged file for several small files of a day folder.
//! Before the merged file is published, a *marker* `compaction-<uuid>.json`
//! is written beside them naming the merged file and the files it replaces.
//! Readers list through [`LineageStore`], which applies one rule to every
//! listing: **if a marker's merged file is in the listing, the files it
//! replaces are left out**. So a listing taken before the merged file appears
//! sees the small files, one taken after sees the merged file, and none sees
//! both. The replaced files are deleted only after a grace period longer than
//! any query (so a query that listed them can still read them), then the
//! marker. Writers, retention and compaction use the raw store.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use serde::{Deserialize, Serialize};

/// File-name prefix of compaction markers.
pub const MARKER_PREFIX: &str = "compaction-";
/// File-name suffix of compaction markers.
pub const MARKER_SUFFIX: &str = ".json";

/// What a compaction marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The merged file (store path).
    pub merged: String,
    /// The files it replaces (store paths).
    pub replaces: Vec<String>,
    /// The writer transaction that publishes the merged file: a marker whose merged file
    /// never appeared is removed only once that transaction is settled (committed and
    /// published, or deleted), so a later roll-forward cannot publish it without its marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<String>,
}

/// Whether a store path is a compaction marker.
pub fn is_marker(location: &Path) -> bool {
    location
        .filename()
        .is_some_and(|name| name.starts_with(MARKER_PREFIX) && name.ends_with(MARKER_SUFFIX))
}

/// Reads a marker. Every file a marker names is in the marker's own folder, and each name is
/// read as that folder's file: markers written before local stores were prefixed with their
/// root named files by absolute paths (`home/u/store/observations/day=…/part-….parquet`),
/// and still name the same files.
pub async fn read_marker(store: &dyn ObjectStore, location: &Path) -> Result<Marker> {
    let bytes = store.get(location).await?.bytes().await?;
    let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| object_store::Error::Generic {
        store: "lineage",
        source: format!("{location}: not a compaction marker: {e}").into(),
    })?;
    let parts: Vec<_> = location.parts().collect();
    let folder: Path = parts[..parts.len().saturating_sub(1)].iter().cloned().collect();
    let in_folder = |name: &str| match Path::from(name).filename() {
        Some(file) => folder.clone().join(file).to_string(),
        None => name.to_string(),
    };
    Ok(Marker {
        merged: in_folder(&marker.merged),
        replaces: marker.replaces.iter().map(|f| in_folder(f)).collect(),
        transaction: marker.transaction,
    })
}

/// What the published markers of a listing decide.
#[derive(Debug, Default)]
pub struct Resolution {
    /// Files readers must not see: replaced files, and merged files of losing markers.
    pub hidden: HashSet<String>,
    /// Markers whose merged file lost to an earlier marker over the same files (two
    /// writers compacted at once): their merged file is hidden and can be deleted.
    pub losers: HashSet<Path>,
}

/// Applies markers in name order (names carry a UUID v7, so: in order of writing). A marker
/// counts once its merged file is `present`; if one of the files it replaces was already
/// replaced by an earlier counted marker, it loses instead, and its merged file is hidden.
pub fn resolve(markers: &mut [(Path, Marker)], present: impl Fn(&str) -> bool) -> Resolution {
    markers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut resolution = Resolution::default();
    for (path, marker) in markers.iter() {
        if !present(&marker.merged) {
            continue;
        }
        if marker.replaces.iter().any(|f| resolution.hidden.contains(f)) {
            resolution.hidden.insert(marker.merged.clone());
            resolution.losers.insert(path.clone());
        } else {
            resolution.hidden.extend(marker.replaces.iter().cloned());
        }
    }
    resolution
}

/// An object store whose listings hide files replaced by a published compaction.
pub struct LineageStore {
    inner: Arc<dyn ObjectStore>,
    /// Markers are immutable: cached by path.
    markers: Arc<Mutex<HashMap<Path, Marker>>>,
}

impl LineageStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            markers: Arc::default(),
        }
    }
}

impl fmt::Debug for LineageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LineageStore({})", self.inner)
    }
}

impl fmt::Display for LineageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LineageStore({})", self.inner)
    }
}

/// Drops replaced files and markers from a listing.
async fn filter(
    inner: &Arc<dyn ObjectStore>,
    cache: &Mutex<HashMap<Path, Marker>>,
    objects: Vec<ObjectMeta>,
) -> Result<Vec<ObjectMeta>> {
    if !objects.iter().any(|o| is_marker(&o.location)) {
        return Ok(objects);
    }
    let present: HashSet<&str> = objects.iter().map(|o| o.location.as_ref()).collect();
    let mut markers = Vec::new();
    for object in objects.iter().filter(|o| is_marker(&o.location)) {
        let cached = cache
            .lock()
            .expect("marker cache lock is never poisoned")
            .get(&object.location)
            .cloned();
        let marker = match cached {
            Some(marker) => marker,
            None => match read_marker(inner.as_ref(), &object.location).await {
                Ok(marker) => {
                    let mut cache = cache.lock().expect("marker cache lock is never poisoned");
                    if cache.len() > 4096 {
                        cache.clear();
                    }
                    cache.insert(object.location.clone(), marker.clone());
                    marker
                }
                // Deleted since the listing: its sweep is done, nothing left to hide.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            },
        };
        markers.push((object.location.clone(), marker));
    }
    let hidden = resolve(&mut markers, |path| present.contains(path)).hidden;
    Ok(objects
        .into_iter()
        .filter(|o| !is_marker(&o.location) && !hidden.contains(o.location.as_ref()))
        .collect())
}

#[async_trait]
impl ObjectStore for LineageStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let listing = self.inner.list(prefix);
        let inner = Arc::clone(&self.inner);
        let cache = Arc::clone(&self.markers);
        futures::stream::once(async move {
            let objects: Vec<ObjectMeta> = listing.try_collect().await?;
            filter(&inner, &cache, objects).await
        })
        .map_ok(|objects| futures::stream::iter(objects.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut listing = self.inner.list_with_delimiter(prefix).await?;
        listing.objects = filter(&self.inner, &self.markers, listing.objects).await?;
        Ok(listing)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    async fn put(store: &dyn ObjectStore, path: &str, body: &[u8]) {
        store
            .put(&Path::from(path), Bytes::copy_from_slice(body).into())
            .await
            .unwrap();
    }

    async fn names(store: &LineageStore) -> Vec<String> {
        let mut names: Vec<String> = store
            .list(Some(&Path::from("t")))
            .map_ok(|o| o.location.to_string())
            .try_collect()
            .await
            .unwrap();
        names.sort();
        names
    }

    /// A marker written when local stores named files by absolute paths still hides what it
    /// replaced.
    #[tokio::test]
    async fn markers_naming_absolute_paths_name_the_files_of_their_folder() {
        let raw: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = LineageStore::new(Arc::clone(&raw));
        for file in ["a", "b", "m"] {
            put(raw.as_ref(), &format!("t/day=1/{file}.parquet"), b"x").await;
        }
        let marker = Marker {
            transaction: None,
            merged: "home/u/store/t/day=1/m.parquet".into(),
            replaces: vec![
                "home/u/store/t/day=1/a.parquet".into(),
                "home/u/store/t/day=1/b.parquet".into(),
            ],
        };
        put(
            raw.as_ref(),
            "t/day=1/compaction-1.json",
            &serde_json::to_vec(&marker).unwrap(),
        )
        .await;
        let read = read_marker(raw.as_ref(), &Path::from("t/day=1/compaction-1.json"))
            .await
            .unwrap();
        assert_eq!(read.merged, "t/day=1/m.parquet");
        assert_eq!(read.replaces, ["t/day=1/a.parquet", "t/day=1/b.parquet"]);
        assert_eq!(names(&store).await, ["t/day=1/m.parquet"]);
    }

    #[tokio::test]
    async fn a_listing_sees_the_small_files_or_the_merged_one_never_both() {
        let raw: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = LineageStore::new(Arc::clone(&raw));
        put(raw.as_ref(), "t/day=1/a.parquet", b"a").await;
        put(raw.as_ref(), "t/day=1/b.parquet", b"b").await;
        let marker = Marker {
            transaction: None,
            merged: "t/day=1/m.parquet".into(),
            replaces: vec!["t/day=1/a.parquet".into(), "t/day=1/b.parquet".into()],
        };
        put(
            raw.as_ref(),
            "t/day=1/compaction-1.json",
            &serde_json::to_vec(&marker).unwrap(),
        )
        .await;
        // Marker written, merged file not yet published: the small files.
        assert_eq!(names(&store).await, ["t/day=1/a.parquet", "t/day=1/b.parquet"]);
        put(raw.as_ref(), "t/day=1/m.parquet", b"ab").await;
        // Published: only the merged file.
        assert_eq!(names(&store).await, ["t/day=1/m.parquet"]);
        let listing = store.list_with_delimiter(Some(&Path::from("t/day=1"))).await.unwrap();
        assert_eq!(listing.objects.len(), 1);
        // Swept: still only the merged file.
        raw.delete(&Path::from("t/day=1/a.parquet")).await.unwrap();
        raw.delete(&Path::from("t/day=1/b.parquet")).await.unwrap();
        raw.delete(&Path::from("t/day=1/compaction-1.json")).await.unwrap();
        assert_eq!(names(&store).await, ["t/day=1/m.parquet"]);
    }

    #[test]
    fn of_two_compactions_of_the_same_files_the_first_wins() {
        let marker = |merged: &str, replaces: &[&str]| Marker {
            transaction: None,
            merged: merged.into(),
            replaces: replaces.iter().map(|s| s.to_string()).collect(),
        };
        let mut markers = vec![
            (Path::from("d/compaction-2.json"), marker("d/m2", &["d/a", "d/b"])),
            (Path::from("d/compaction-1.json"), marker("d/m1", &["d/a", "d/b"])),
            (Path::from("d/compaction-3.json"), marker("d/m3", &["d/m1", "d/c"])),
        ];
        let all = |_: &str| true;
        let resolution = resolve(&mut markers, all);
        let mut hidden: Vec<_> = resolution.hidden.into_iter().collect();
        hidden.sort();
        // m1 replaced a and b; m2 lost (hidden); m3 then replaced m1 and c.
        assert_eq!(hidden, ["d/a", "d/b", "d/c", "d/m1", "d/m2"]);
        assert!(resolution.losers.contains(&Path::from("d/compaction-2.json")));
    }
}
