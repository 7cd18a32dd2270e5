//! The object store that holds Proxima's files.
//!
//! A store is one root URL: a local directory (the default, `./proxima-data`),
//! `s3://bucket/prefix` (credentials and endpoint from the usual `AWS_*`
//! environment variables, `AWS_ENDPOINT` for S3-compatible servers), or
//! `memory://` for tests. Everything above this module speaks
//! [`ObjectStore`] and never special-cases the local disk, except
//! [`Store::sync_local`], which makes local writes durable (object_store's
//! local backend does not fsync).
//!
//! A local store is an object store *prefixed* with its folder, known to DataFusion as
//! [`LOCAL_STORE_URL`]: no path it can name (`..` is not a path segment) lies outside
//! the store's root, so a session that reaches it cannot read the users file, a TLS key
//! or anything else on the machine.

use std::collections::BTreeSet;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::object_store::ObjectStoreUrl;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

use parquet::encryption::decrypt::FileDecryptionProperties;

use crate::encryption::{EncryptedOnly, Keyring, StoreDecryption};
use crate::error::{Error, Result};
use crate::keys::KeyProvider;
use crate::paths::{DayPartition, Table};

/// The URL sessions know a local store by: `proxima://store/observations/…` is
/// `<root>/observations/…`.
pub const LOCAL_STORE_URL: &str = "proxima://store";

/// A store root: the object store, its URL for DataFusion, and the root path within it.
#[derive(Debug, Clone)]
pub struct Store {
    object_store: Arc<dyn ObjectStore>,
    /// The same store as readers see it: files replaced by a compaction are not listed.
    reader: Arc<dyn ObjectStore>,
    url: ObjectStoreUrl,
    root: Path,
    local_root: Option<PathBuf>,
    display: String,
    /// The master keys and key-encryption keys, when the store was opened with a master
    /// key: every file written is then encrypted (see [`crate::encryption`]).
    keyring: Option<Arc<Keyring>>,
}

impl Store {
    /// Opens a store from a location: a local path, `file://…`, `s3://bucket/prefix` or `memory://`.
    ///
    /// An S3 store takes its endpoint, region and credentials from the usual `AWS_*`
    /// environment variables.
    pub fn open(location: &str) -> Result<Self> {
        Self::open_with(location, &[])
    }

    /// [`Self::open`], an S3 store's settings (`object_store`'s names, such as
    /// `aws_endpoint` or `allow_http`) given by `s3_options` over the environment's. Options
    /// for a store that is not on S3 are refused.
    pub fn open_with(location: &str, s3_options: &[(&str, &str)]) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidStore {
            location: location.to_string(),
            reason,
        };
        if location.trim().is_empty() {
            return Err(invalid("the location is empty".into()));
        }
        match Url::parse(location) {
            Ok(url) if url.scheme() == "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| invalid("not a local file URL".into()))?;
                Self::local(&path)
            }
            Ok(url) if url.scheme() != "s3" && !s3_options.is_empty() => {
                Err(invalid("S3 options were given for a store that is not on S3".into()))
            }
            Ok(url) if url.scheme() == "s3" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| invalid("an s3 URL needs a bucket: s3://bucket/prefix".into()))?
                    .to_string();
                let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
                for (key, value) in s3_options {
                    let key = key
                        .parse()
                        .map_err(|e: object_store::Error| invalid(format!("S3 option '{key}': {e}")))?;
                    builder = builder.with_config(key, *value);
                }
                let s3: Arc<dyn ObjectStore> = Arc::new(builder.build().map_err(|e| invalid(e.to_string()))?);
                let root = Path::parse(url.path().trim_matches('/')).map_err(|e| invalid(e.to_string()))?;
                Ok(Self {
                    reader: reader_of(Arc::clone(&s3)),
                    object_store: s3,
                    url: ObjectStoreUrl::parse(format!("s3://{bucket}"))?,
                    root,
                    local_root: None,
                    display: location.to_string(),
                    keyring: None,
                })
            }
            Ok(url) if url.scheme() == "memory" => Ok(Self::in_memory()),
            // A Windows drive letter parses as a one-letter scheme: treat it as a path.
            Ok(url) if url.scheme().len() > 1 => Err(invalid(format!(
                "unsupported scheme '{}' (use a local path, file://, s3:// or memory://)",
                url.scheme()
            ))),
            _ if !s3_options.is_empty() => Err(invalid("S3 options were given for a local store".into())),
            _ => Self::local(FsPath::new(location)),
        }
    }

    /// A fresh, empty in-memory store (for tests).
    pub fn in_memory() -> Self {
        let object_store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        Self {
            reader: reader_of(Arc::clone(&object_store)),
            object_store,
            url: ObjectStoreUrl::parse("memory://").expect("memory:// is a valid URL"),
            root: Path::default(),
            local_root: None,
            display: "memory://".into(),
            keyring: None,
        }
    }

    /// Opens (creating it if needed) a store in a local directory.
    pub fn local(dir: &FsPath) -> Result<Self> {
        let local_error = |source| Error::LocalStore {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(local_error)?;
        let dir = std::fs::canonicalize(dir).map_err(local_error)?;
        let prefixed = LocalFileSystem::new_with_prefix(&dir).map_err(|e| Error::InvalidStore {
            location: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let object_store: Arc<dyn ObjectStore> = Arc::new(prefixed);
        Ok(Self {
            reader: reader_of(Arc::clone(&object_store)),
            object_store,
            url: ObjectStoreUrl::parse(LOCAL_STORE_URL)?,
            root: Path::default(),
            display: dir.display().to_string(),
            local_root: Some(dir),
            keyring: None,
        })
    }

    /// The same store with its object store wrapped by `wrap` (readers see the wrapped one
    /// too, behind the lineage view): how tests put a failing store under the write side.
    pub fn wrapped(&self, wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>) -> Self {
        let object_store = wrap(Arc::clone(&self.object_store));
        let store = Self {
            reader: reader_of(Arc::clone(&object_store)),
            object_store,
            keyring: None,
            ..self.clone()
        };
        match &self.keyring {
            Some(keyring) => store.with_keys(Arc::clone(keyring.provider())),
            None => store,
        }
    }

    /// The same store, opened with master keys: every file written from now on is
    /// encrypted, and reads decrypt with them.
    pub fn with_keys(self, provider: Arc<dyn KeyProvider>) -> Self {
        let keyring = Keyring::new(provider, Arc::clone(&self.object_store), self.root.clone());
        // Readers refuse Parquet files in the clear: nothing placed in the bucket without
        // the keys is read as the store's.
        let encrypted_only: Arc<dyn ObjectStore> = Arc::new(EncryptedOnly::new(Arc::clone(&self.object_store)));
        Self {
            keyring: Some(Arc::new(keyring)),
            reader: reader_of(encrypted_only),
            ..self
        }
    }

    /// The keyring, if the store was opened with master keys.
    pub fn keyring(&self) -> Option<&Arc<Keyring>> {
        self.keyring.as_ref()
    }

    /// How a session or reader decrypts this store's files.
    pub fn decryption(&self) -> Arc<StoreDecryption> {
        Arc::new(StoreDecryption::new(self.clone()))
    }

    /// The decryption properties of one of the store's files (`None`: read it as is).
    pub async fn decryption_properties(&self, location: &Path) -> Result<Option<Arc<FileDecryptionProperties>>> {
        match &self.keyring {
            Some(keyring) => keyring.decryption_properties(location).await,
            None => crate::encryption::without_key(&self.root, location),
        }
    }

    /// The object store, raw: for writers, retention and compaction.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.object_store
    }

    /// The object store as readers see it: listings leave out files that a published
    /// compaction replaced (see [`crate::lineage`]).
    pub fn reader(&self) -> &Arc<dyn ObjectStore> {
        &self.reader
    }

    /// The URL DataFusion knows the object store by.
    pub fn object_store_url(&self) -> &ObjectStoreUrl {
        &self.url
    }

    /// The root path of the store within the object store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A store path read back from a file the store wrote (a staging manifest). Before
    /// local stores were prefixed with their root, such paths were absolute
    /// (`home/u/store/observations/…`): their root part is dropped, so they name the same
    /// file today.
    pub fn stored_path(&self, text: &str) -> Path {
        if let Some(root) = &self.local_root
            && let Ok(legacy) = Path::from_absolute_path(root)
            && let Some(rest) = text.strip_prefix(legacy.as_ref()).and_then(|r| r.strip_prefix('/'))
        {
            return Path::from(rest);
        }
        Path::from(text)
    }

    /// The local directory of the store, if it is on the local disk.
    pub fn local_root(&self) -> Option<&FsPath> {
        self.local_root.as_deref()
    }

    /// The URL of a table's folder, as DataFusion lists it.
    pub fn table_url(&self, table: Table) -> Result<ListingTableUrl> {
        let base = self.url.as_str().trim_end_matches('/');
        let url = format!("{base}/{}/", table.prefix(&self.root));
        Ok(ListingTableUrl::parse(url)?)
    }

    /// The days present in a day-partitioned table, in order.
    pub async fn list_days(&self, table: Table) -> Result<Vec<DayPartition>> {
        let listing = self
            .object_store
            .list_with_delimiter(Some(&table.prefix(&self.root)))
            .await?;
        let days: BTreeSet<DayPartition> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename())
            .filter_map(|name| DayPartition::parse_folder_name(table, name))
            .collect();
        Ok(days.into_iter().collect())
    }

    /// Every Parquet file under a table's folder, as the raw store lists it (files that a
    /// compaction replaced included; readers list through [`Store::reader`] instead).
    pub async fn list_files(&self, table: Table) -> Result<Vec<Path>> {
        let files = self
            .object_store
            .list(Some(&table.prefix(&self.root)))
            .try_filter(|meta| futures::future::ready(meta.location.as_ref().ends_with(".parquet")))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        Ok(files)
    }

    /// Whether nothing at all is stored under a table's folder.
    pub async fn is_empty(&self, table: Table) -> Result<bool> {
        let listing = self
            .object_store
            .list_with_delimiter(Some(&table.prefix(&self.root)))
            .await?;
        Ok(listing.objects.is_empty() && listing.common_prefixes.is_empty())
    }

    /// Deletes every object below `prefix`; returns the number of objects and bytes removed.
    pub async fn delete_prefix(&self, prefix: &Path) -> Result<(usize, u64)> {
        let objects: Vec<_> = self.object_store.list(Some(prefix)).try_collect().await?;
        let bytes = objects.iter().map(|o| o.size).sum();
        let count = objects.len();
        let locations = futures::stream::iter(objects.into_iter().map(|o| Ok(o.location))).boxed();
        self.object_store
            .delete_stream(locations)
            .try_collect::<Vec<_>>()
            .await?;
        if let Some(dir) = self.local_dir_of(prefix) {
            // The local backend leaves empty folders behind; remove them so the day is gone.
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::LocalStore { path: dir, source }),
            }
        }
        Ok((count, bytes))
    }

    /// Whether an object exists.
    pub async fn exists(&self, location: &Path) -> Result<bool> {
        match self.object_store.head(location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes files written through object_store durable on a local disk: fsyncs each
    /// file and the folders that hold them. A no-op for remote stores, whose PUT is durable.
    pub fn sync_local<'a>(&self, locations: impl IntoIterator<Item = &'a Path>) -> Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let mut dirs = BTreeSet::new();
        for location in locations {
            let file = root.join(location.as_ref());
            sync_path(&file)?;
            if let Some(parent) = file.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
        for dir in dirs {
            sync_path(&dir)?;
            if let Some(grandparent) = dir.parent().filter(|g| g.starts_with(root)) {
                sync_path(grandparent)?;
            }
        }
        Ok(())
    }

    fn local_dir_of(&self, prefix: &Path) -> Option<PathBuf> {
        Some(self.local_root.as_ref()?.join(prefix.as_ref()))
    }
}

fn reader_of(raw: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    Arc::new(crate::lineage::LineageStore::new(raw))
}

fn sync_path(path: &FsPath) -> Result<()> {
    let sync = || std::fs::File::open(path)?.sync_all();
    match sync() {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::LocalStore {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

/// Today's date in UTC.
pub fn today_utc() -> NaiveDate {
    chrono::Utc::now().date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let url = store.table_url(Table::Observations).unwrap();
        assert_eq!(url.as_str(), "proxima://store/observations/");

        let err = Store::open("ftp://host/x").unwrap_err().to_string();
        assert!(err.contains("unsupported scheme 'ftp'"), "{err}");
        let err = Store::open("s3:///prefix").unwrap_err().to_string();
        assert!(err.contains("needs a bucket"), "{err}");
        assert!(Store::open("memory://").is_ok());

        let endpoint = [("aws_endpoint", "http://127.0.0.1:9"), ("allow_http", "true")];
        assert!(Store::open_with("s3://bucket/prefix", &endpoint).is_ok());
        let err = Store::open_with("s3://bucket/prefix", &[("aws_endpiont", "x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("S3 option 'aws_endpiont'"), "{err}");
        let err = Store::open_with(dir.path().to_str().unwrap(), &endpoint)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not on S3") || err.contains("local store"), "{err}");
    }

    /// Staging manifests written when local stores named files by absolute paths name the
    /// same files today.
    #[test]
    fn paths_written_absolute_are_read_relative_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let legacy = format!(
            "{}/observations/day=2026-11-02/part-1.parquet",
            Path::from_absolute_path(&root).unwrap()
        );
        assert_eq!(
            store.stored_path(&legacy).as_ref(),
            "observations/day=2026-11-02/part-1.parquet"
        );
        assert_eq!(
            store.stored_path("_staging/t/a.parquet").as_ref(),
            "_staging/t/a.parquet"
        );
        assert_eq!(
            Store::in_memory().stored_path(&legacy).as_ref(),
            legacy.as_str(),
            "only a local store had absolute paths"
        );
    }

    /// The local store is prefixed with its folder: a path that climbs out of it names a
    /// file inside it (or nothing), never the file beside it.
    #[tokio::test]
    async fn a_local_store_names_nothing_outside_its_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.txt"), "outside").unwrap();
        let store = Store::local(&dir.path().join("store")).unwrap();
        std::fs::write(dir.path().join("store/inside.txt"), "inside").unwrap();
        let os = store.object_store();

        let inside = os.get(&Path::from("inside.txt")).await.unwrap().bytes().await.unwrap();
        assert_eq!(&inside[..], b"inside");
        // `..` is not a segment: parsing refuses it, and `from` encodes it as a name.
        assert!(Path::parse("../secret.txt").is_err());
        for path in [Path::from("../secret.txt"), Path::from_iter(["..", "secret.txt"])] {
            let err = os.get(&path).await.unwrap_err();
            assert!(matches!(err, object_store::Error::NotFound { .. }), "{path}: {err}");
        }
        // Listing the root lists the store only.
        let listed: Vec<_> = os
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed, vec!["inside.txt".to_string()]);
    }
}
