//! Encryption at rest of the store's Parquet files: Parquet modular encryption
//! (AES_GCM_V1, encrypted footer) under a three-level key hierarchy.
//!
//! - **Master keys** ([`crate::keys`]) are held outside the store by whoever may read it;
//!   they only wrap key-encryption keys.
//! - **Key-encryption keys** (KEKs): one per table and day, random, kept in the store
//!   wrapped by a master key, at `_keys/<table>/<YYYY-MM-DD>.json` (`_keys/<table>.json`
//!   for tables without days). Rotating the master key rewraps these few objects, never
//!   a data file.
//! - **Data keys**: one per Parquet file, random, wrapped by its table-day's KEK in the
//!   file's footer key metadata, in Parquet's key-management format (`PKMT1`, internal
//!   storage, single wrapping) with the KEK's id as `masterKeyID`: pyarrow's
//!   `CryptoFactory` reads a file with a `KmsClient` that unwraps by that id (README).
//!
//! Each file's AAD prefix names its table and day (`proxima/<table>/<day>`). It is stored in
//! the file for other readers, and Proxima's readers supply the one the file's *location*
//! implies instead, so a file moved to another table's or day's folder fails to decrypt.
//!
//! Bloom filters are not written into encrypted files: parquet 59 writes them unencrypted,
//! which would let anyone who can read the bucket test whether a MAC or device appears on
//! a day. Page indexes and statistics are encrypted with the footer and prune as before.
//!
//! Reads go through [`StoreDecryption`], DataFusion's [`EncryptionFactory`] for the store
//! (every session registers it), and [`Keyring::decryption_properties`] for the index
//! reader. A store opened without a master key still decrypts nothing: reading an
//! encrypted file fails with an error that says which key is missing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::common::config::EncryptionFactoryOptions;
use datafusion::execution::parquet_encryption::EncryptionFactory;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};
use parquet::encryption::decrypt::{FileDecryptionProperties, KeyRetriever};
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::errors::ParquetError;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{self, KeyProvider};
use crate::paths::{Table, place_of};

/// The id sessions register [`StoreDecryption`] under (`format.crypto.factory_id`).
pub const FACTORY_ID: &str = "proxima";

/// The folder of the store that holds the wrapped key-encryption keys.
pub const KEYS_FOLDER: &str = "_keys";

/// The `format` a stored key-encryption key declares.
const KEK_FORMAT: &str = "proxima-kek/1";

/// Where a file belongs, which decides its KEK and its AAD prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Place {
    /// The table.
    pub table: Table,
    /// The day, for day-partitioned tables.
    pub day: Option<NaiveDate>,
}

impl Place {
    /// The id of the place's key-encryption key: `observations/2026-11-29`, `devices`.
    pub fn kek_id(&self) -> String {
        match self.day {
            Some(day) => format!("{}/{}", self.table.name(), day.format("%Y-%m-%d")),
            None => self.table.name().to_string(),
        }
    }

    /// The AAD prefix every file of the place is encrypted with.
    pub fn aad_prefix(&self) -> Vec<u8> {
        format!("proxima/{}", self.kek_id()).into_bytes()
    }
}

/// A key-encryption key as the store keeps it, wrapped by a master key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredKek {
    format: String,
    /// The KEK's id ([`Place::kek_id`]).
    pub id: String,
    /// The master key that wraps it.
    #[serde(rename = "masterKeyID")]
    pub master_key_id: String,
    /// The KEK, wrapped ([`crate::keys::seal`] by the master key, its id as AAD).
    #[serde(rename = "wrappedKEK")]
    pub wrapped: String,
    /// When the KEK was made.
    pub created: DateTime<Utc>,
}

impl StoredKek {
    /// Parses a stored KEK, checking it is the one `location` should hold.
    pub fn parse(location: &Path, bytes: &[u8], expected_id: &str) -> Result<Self> {
        let invalid = |reason: String| Error::Keys(format!("{location}: {reason}"));
        let kek: Self = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if kek.format != KEK_FORMAT {
            return Err(invalid(format!("format '{}' is not {KEK_FORMAT}", kek.format)));
        }
        if kek.id != expected_id {
            return Err(invalid(format!("holds key {} where {expected_id} belongs", kek.id)));
        }
        Ok(kek)
    }

    /// The JSON the store keeps.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a stored KEK always serialises")
    }
}

/// The master keys, and the store's key-encryption keys as far as they were read.
pub struct Keyring {
    provider: Arc<dyn KeyProvider>,
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// Unwrapped KEKs by id (a KEK never changes; rotation only rewraps it).
    keks: RwLock<HashMap<String, [u8; 32]>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the unwrapped keys.
        let cached = self.keks.read().map(|k| k.len()).unwrap_or(0);
        f.debug_struct("Keyring")
            .field("provider", &self.provider)
            .field("root", &self.root)
            .field("keks_cached", &cached)
            .finish()
    }
}

impl Keyring {
    /// Forgets an unwrapped KEK (retention deleted it).
    pub fn forget(&self, id: &str) {
        self.keks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(id);
    }

    /// A keyring over the raw object store of a store rooted at `root`.
    pub fn new(provider: Arc<dyn KeyProvider>, store: Arc<dyn ObjectStore>, root: Path) -> Self {
        Self {
            provider,
            store,
            root,
            keks: RwLock::default(),
        }
    }

    /// The master keys.
    pub fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.provider
    }

    /// The root of the store's key-encryption keys.
    pub fn keys_prefix(&self) -> Path {
        self.root.clone().join(KEYS_FOLDER)
    }

    /// Where the KEK `id` is stored.
    pub fn kek_path(&self, id: &str) -> Path {
        let mut path = self.keys_prefix();
        let mut parts = id.split('/').peekable();
        while let Some(part) = parts.next() {
            path = if parts.peek().is_some() {
                path.join(part)
            } else {
                path.join(format!("{part}.json"))
            };
        }
        path
    }

    /// The KEK `id`, unwrapped: from memory, else read from the store; `None` if the
    /// store holds none.
    pub async fn kek(&self, id: &str) -> Result<Option<[u8; 32]>> {
        if let Some(key) = self.cached(id) {
            return Ok(Some(key));
        }
        let location = self.kek_path(id);
        let bytes = match self.store.get(&location).await {
            Ok(found) => found.bytes().await?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let stored = StoredKek::parse(&location, &bytes, id)?;
        let key = self.unwrap_kek(&stored)?;
        self.remember(id, key);
        Ok(Some(key))
    }

    /// Unwraps a stored KEK with the master key it names.
    pub fn unwrap_kek(&self, stored: &StoredKek) -> Result<[u8; 32]> {
        let key = self
            .provider
            .unwrap(&stored.wrapped, &stored.master_key_id)
            .map_err(|e| Error::Keys(format!("key-encryption key {}: {e}", stored.id)))?;
        key.try_into()
            .map_err(|_| Error::Keys(format!("key-encryption key {} is not 32 bytes", stored.id)))
    }

    /// A new KEK for `id` wrapped by the current master key, as the store keeps it.
    pub fn wrap_kek(&self, id: &str, key: &[u8; 32]) -> Result<StoredKek> {
        let master_key_id = self.provider.current();
        let wrapped = self
            .provider
            .wrap(key, &master_key_id)
            .map_err(|e| Error::Keys(e.to_string()))?;
        Ok(StoredKek {
            format: KEK_FORMAT.into(),
            id: id.to_string(),
            master_key_id,
            wrapped,
            created: Utc::now(),
        })
    }

    /// Keeps an unwrapped KEK in memory (the writer, after storing a new one).
    pub fn remember(&self, id: &str, key: [u8; 32]) {
        self.keks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id.to_string(), key);
    }

    fn cached(&self, id: &str) -> Option<[u8; 32]> {
        self.keks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(id)
            .copied()
    }

    /// How a new file of `place` is encrypted: a fresh data key wrapped by `kek` (the
    /// place's), AES_GCM_V1 with an encrypted footer, the place's AAD prefix (stored).
    pub fn encryption_properties(place: Place, kek: &[u8; 32]) -> Result<Arc<FileEncryptionProperties>> {
        let data_key = keys::random_key();
        let metadata = KeyMaterial {
            key_material_type: "PKMT1".into(),
            internal_storage: true,
            is_footer_key: true,
            kms_instance_id: Some("DEFAULT".into()),
            kms_instance_url: Some("DEFAULT".into()),
            master_key_id: place.kek_id(),
            wrapped_dek: keys::seal(kek, place.kek_id().as_bytes(), &data_key),
            double_wrapping: false,
        };
        let metadata = serde_json::to_vec(&metadata).expect("key material always serialises");
        Ok(FileEncryptionProperties::builder(data_key.to_vec())
            .with_footer_key_metadata(metadata)
            .with_aad_prefix(place.aad_prefix())
            .with_aad_prefix_storage(true)
            .build()?)
    }

    /// How the file at `location` is decrypted: its data key unwrapped by the KEK of the
    /// place its location names, with that place's AAD prefix (not the one stored). `None`
    /// for a location that is no data file's place.
    pub async fn decryption_properties(&self, location: &Path) -> Result<Option<Arc<FileDecryptionProperties>>> {
        let Some((table, day)) = place_of(&self.root, location) else {
            return Ok(None);
        };
        let place = Place { table, day };
        let id = place.kek_id();
        let kek = match self.kek(&id).await? {
            Some(key) => Ok(key),
            None => Err(format!(
                "the store holds no key-encryption key {id} ({})",
                self.kek_path(&id)
            )),
        };
        Ok(Some(retrieving(location, place, kek)?))
    }
}

/// Decryption properties for `location` of `place` whose data key `kek` unwraps (or, if
/// that is an error, whose every use fails with it).
fn retrieving(
    location: &Path,
    place: Place,
    kek: std::result::Result<[u8; 32], String>,
) -> Result<Arc<FileDecryptionProperties>> {
    let retriever = DataKeys {
        location: location.to_string(),
        kek_id: place.kek_id(),
        kek,
    };
    Ok(FileDecryptionProperties::with_key_retriever(Arc::new(retriever))
        .with_aad_prefix(place.aad_prefix())
        .build()?)
}

/// Parquet's key material (key-management tools format `PKMT1`), internal storage.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyMaterial {
    key_material_type: String,
    internal_storage: bool,
    is_footer_key: bool,
    #[serde(rename = "kmsInstanceID", skip_serializing_if = "Option::is_none")]
    kms_instance_id: Option<String>,
    #[serde(rename = "kmsInstanceURL", skip_serializing_if = "Option::is_none")]
    kms_instance_url: Option<String>,
    #[serde(rename = "masterKeyID")]
    master_key_id: String,
    #[serde(rename = "wrappedDEK")]
    wrapped_dek: String,
    double_wrapping: bool,
}

/// Unwraps one file's data key from its key metadata.
struct DataKeys {
    location: String,
    kek_id: String,
    kek: std::result::Result<[u8; 32], String>,
}

impl KeyRetriever for DataKeys {
    fn retrieve_key(&self, key_metadata: &[u8]) -> parquet::errors::Result<Vec<u8>> {
        let fail = |reason: String| ParquetError::General(format!("cannot decrypt {}: {reason}", self.location));
        let material: KeyMaterial = serde_json::from_slice(key_metadata)
            .map_err(|e| fail(format!("its key metadata is not Parquet key material ({e})")))?;
        if material.master_key_id != self.kek_id {
            return Err(fail(format!(
                "it was written for {} but lies where {} belongs (moved or copied from another table or day?)",
                material.master_key_id, self.kek_id
            )));
        }
        let kek = self.kek.as_ref().map_err(|reason| fail(reason.clone()))?;
        keys::open(kek, self.kek_id.as_bytes(), &material.wrapped_dek).ok_or_else(|| {
            fail(format!(
                "its data key does not unwrap with key-encryption key {} (altered?)",
                self.kek_id
            ))
        })
    }
}

/// DataFusion's [`EncryptionFactory`] for the store: every session registers it (as
/// [`FACTORY_ID`]) and names it in its Parquet options, so every store file a session
/// reads is decrypted by [`Keyring::decryption_properties`]. Sessions write no store files.
#[derive(Debug)]
pub struct StoreDecryption {
    store: crate::Store,
}

impl StoreDecryption {
    /// The factory for `store` (with its keyring if it was opened with a master key).
    pub fn new(store: crate::Store) -> Self {
        Self { store }
    }
}

#[async_trait]
impl EncryptionFactory for StoreDecryption {
    async fn get_file_encryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _schema: &SchemaRef,
        file_path: &Path,
    ) -> datafusion::error::Result<Option<Arc<FileEncryptionProperties>>> {
        // Only Proxima's writer writes an encrypted store's files (`COPY … TO` elsewhere, an
        // export, is written in the clear, which is its point).
        if self.store.keyring().is_some() && place_of(self.store.root(), file_path).is_some() {
            return Err(datafusion::error::DataFusionError::Plan(format!(
                "{file_path}: SQL does not write into an encrypted store (import the rows with proxima import)"
            )));
        }
        Ok(None)
    }

    async fn get_file_decryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        file_path: &Path,
    ) -> datafusion::error::Result<Option<Arc<FileDecryptionProperties>>> {
        self.store
            .decryption_properties(file_path)
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
    }
}

/// Decryption properties for a store opened without a master key: a plaintext file reads
/// as before; an encrypted one fails saying so.
pub fn without_key(root: &Path, location: &Path) -> Result<Option<Arc<FileDecryptionProperties>>> {
    let Some((table, day)) = place_of(root, location) else {
        return Ok(None);
    };
    let missing = format!(
        "the file is encrypted and no master key was given (--master-key-file FILE, or {})",
        keys::MASTER_KEY_ENV
    );
    Ok(Some(retrieving(location, Place { table, day }, Err(missing))?))
}

/// Why a file in the clear is refused in a store with master keys.
pub fn refused_in_the_clear(location: &Path) -> String {
    format!(
        "{location} is not encrypted, and every file of a store with master keys must be: it was not written by \
         Proxima with this store's keys (placed there by hand?), or before the store had a master key (export and \
         import such data into an encrypted store)"
    )
}

/// The readers' view of a store with master keys: a read that reaches the end of a Parquet
/// file (where its footer, and its magic, lie) is refused unless the file is encrypted
/// (`PARE`), so rows placed in the bucket by someone without the keys are never read as the
/// store's. Everything else passes through.
#[derive(Debug)]
pub struct EncryptedOnly {
    inner: Arc<dyn ObjectStore>,
    /// The size of each Parquet file listed through this store, so that a ranged read (how
    /// DataFusion reads footers) knows whether it reaches the end without asking the store.
    sizes: Arc<std::sync::Mutex<HashMap<Path, u64>>>,
}

/// Sizes remembered at most (listings refill them).
const SIZES_KEPT: usize = 1 << 16;

impl EncryptedOnly {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            sizes: Arc::default(),
        }
    }

    fn remember(sizes: &std::sync::Mutex<HashMap<Path, u64>>, meta: &ObjectMeta) {
        if meta.location.as_ref().ends_with(".parquet") {
            let mut sizes = sizes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if sizes.len() >= SIZES_KEPT {
                sizes.clear();
            }
            sizes.insert(meta.location.clone(), meta.size);
        }
    }

    async fn size_of(&self, location: &Path) -> object_store::Result<u64> {
        let known = self
            .sizes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(location)
            .copied();
        match known {
            Some(size) => Ok(size),
            None => Ok(self.inner.head(location).await?.size),
        }
    }
}

/// Refuses `bytes` read at the end of the Parquet file `location` unless they end in the
/// encrypted footer's magic.
fn check_end(location: &Path, bytes: &[u8]) -> object_store::Result<()> {
    if bytes.ends_with(b"PARE") {
        return Ok(());
    }
    Err(object_store::Error::Generic {
        store: "proxima",
        source: refused_in_the_clear(location).into(),
    })
}

impl std::fmt::Display for EncryptedOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptedOnly({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for EncryptedOnly {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if head || !location.as_ref().ends_with(".parquet") || result.range.end != result.meta.size {
            return Ok(result);
        }
        let (meta, range, attributes) = (result.meta.clone(), result.range.clone(), result.attributes.clone());
        let bytes = result.bytes().await?;
        check_end(location, &bytes)?;
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async move { Ok(bytes) }).boxed()),
            meta,
            range,
            attributes,
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[std::ops::Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        let read = self.inner.get_ranges(location, ranges).await?;
        if location.as_ref().ends_with(".parquet") && !ranges.is_empty() {
            let size = self.size_of(location).await?;
            for (range, bytes) in ranges.iter().zip(&read) {
                if range.end == size {
                    check_end(location, bytes)?;
                }
            }
        }
        Ok(read)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let sizes = Arc::clone(&self.sizes);
        self.inner
            .list(prefix)
            .inspect_ok(move |meta| Self::remember(&sizes, meta))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let listing = self.inner.list_with_delimiter(prefix).await?;
        for meta in &listing.objects {
            Self::remember(&self.sizes, meta);
        }
        Ok(listing)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKeys;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use bytes::Bytes;
    use object_store::memory::InMemory;
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::file::properties::WriterProperties;

    fn day(d: u32) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(2026, 11, d)
    }

    fn encrypted_file(place: Place, kek: &[u8; 32]) -> Bytes {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![7, 8, 9]))]).unwrap();
        let props = WriterProperties::builder()
            .with_file_encryption_properties(Keyring::encryption_properties(place, kek).unwrap())
            .build();
        let mut bytes = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut bytes, schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        Bytes::from(bytes)
    }

    fn read(bytes: Bytes, props: Arc<FileDecryptionProperties>) -> std::result::Result<Vec<i64>, String> {
        let options = ArrowReaderOptions::new().with_file_decryption_properties(props);
        let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(bytes, options)
            .map_err(|e| e.to_string())?
            .build()
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| e.to_string())?;
            let column = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            out.extend(column.values().iter().copied());
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_file_decrypts_only_where_it_was_written_and_only_with_its_keys() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let provider = Arc::new(MasterKeys::generate(Utc::now()));
        let keyring = Keyring::new(provider.clone(), Arc::clone(&store), Path::default());
        let here = Place {
            table: Table::Observations,
            day: day(29),
        };
        let kek = keys::random_key();
        let stored = keyring.wrap_kek(&here.kek_id(), &kek).unwrap();
        store
            .put(&keyring.kek_path(&here.kek_id()), stored.to_bytes().into())
            .await
            .unwrap();
        assert_eq!(
            keyring.kek_path(&here.kek_id()).as_ref(),
            "_keys/observations/2026-11-29.json"
        );
        let file = encrypted_file(here, &kek);
        assert_eq!(&file[..4], b"PARE");
        assert_eq!(&file[file.len() - 4..], b"PARE");

        let location = Path::from("observations/day=2026-11-29/part-a.parquet");
        let props = keyring.decryption_properties(&location).await.unwrap().unwrap();
        assert_eq!(read(file.clone(), props).unwrap(), vec![7, 8, 9]);

        // Another day's folder: refused by the key id, and by the AAD even if that agreed.
        let moved = Path::from("observations/day=2026-11-30/part-a.parquet");
        let props = keyring.decryption_properties(&moved).await.unwrap().unwrap();
        let err = read(file.clone(), props).unwrap_err();
        assert!(err.contains("lies where observations/2026-11-30 belongs"), "{err}");
        let other_place = Place {
            table: Table::Observations,
            day: day(30),
        };
        // The AAD alone refuses it too: the right keys, another place's prefix.
        let right_keys = DataKeys {
            location: moved.to_string(),
            kek_id: here.kek_id(),
            kek: Ok(kek),
        };
        let wrong_aad = FileDecryptionProperties::with_key_retriever(Arc::new(right_keys))
            .with_aad_prefix(other_place.aad_prefix())
            .build()
            .unwrap();
        let err = read(file.clone(), wrong_aad).unwrap_err();
        assert!(!err.contains("lies where"), "{err}");

        // No master key: the error names what is missing.
        let err = read(file.clone(), without_key(&Path::default(), &location).unwrap().unwrap()).unwrap_err();
        assert!(
            err.contains("no master key was given") && err.contains("PROXIMA_MASTER_KEY"),
            "{err}"
        );

        // A different master key: the KEK does not unwrap, and the error names both keys.
        let stranger = Keyring::new(
            Arc::new(MasterKeys::generate(Utc::now())),
            Arc::clone(&store),
            Path::default(),
        );
        let err = stranger.decryption_properties(&location).await.unwrap_err().to_string();
        assert!(err.contains(&provider.current()), "{err}");

        // A place whose KEK is gone: the read fails saying so.
        store.delete(&keyring.kek_path(&here.kek_id())).await.unwrap();
        let fresh = Keyring::new(provider, Arc::clone(&store), Path::default());
        let props = fresh.decryption_properties(&location).await.unwrap().unwrap();
        let err = read(file, props).unwrap_err();
        assert!(err.contains("no key-encryption key observations/2026-11-29"), "{err}");
    }
}
