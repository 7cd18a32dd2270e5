//! The write side of encryption at rest: making each table-day's key-encryption key the
//! first time a file of it is written, and rewrapping every KEK when the master key
//! rotates (see `proxima_engine::encryption` for the hierarchy).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use parquet::encryption::encrypt::FileEncryptionProperties;
use proxima_engine::encryption::{KEYS_FOLDER, Keyring, Place, StoredKek};
use proxima_engine::keys::random_key;
use proxima_engine::{Store, Table};
use tracing::info;

use crate::error::{Error, Result};

/// How a new file of `place` is encrypted, if the store was opened with a master key
/// (`None`: it is written in the clear, unless the store is an encrypted one: that is
/// refused, since its readers would refuse the file).
pub async fn file_encryption(store: &Store, place: Place) -> Result<Option<Arc<FileEncryptionProperties>>> {
    let Some(keyring) = store.keyring() else {
        let keys = store.root().clone().join(KEYS_FOLDER);
        if store
            .object_store()
            .list(Some(&keys))
            .next()
            .await
            .transpose()?
            .is_some()
        {
            return Err(Error::Invalid(format!(
                "{store} is encrypted (it holds key-encryption keys under {KEYS_FOLDER}/): give its master key \
                 (--master-key-file FILE, or PROXIMA_MASTER_KEY) to write to it"
            )));
        }
        return Ok(None);
    };
    let kek = kek_for(store, keyring, place).await?;
    Ok(Some(Keyring::encryption_properties(place, &kek)?))
}

/// The KEK of `place` (see [`stored_key`]).
async fn kek_for(store: &Store, keyring: &Keyring, place: Place) -> Result<[u8; 32]> {
    stored_key(store, keyring, &place.kek_id()).await
}

/// The id of the key erasure's keyed hashes are made with (`_keys/erasure-hash.json`): kept
/// and rotated like a KEK, so only a holder of the master key can tell whether a given UUID
/// was erased.
const ERASURE_HASH_KEY: &str = "erasure-hash";
/// Where a store without master keys keeps that key (in the clear, like all its data):
/// `_erasure/hash-key.json`.
fn erasure_hash_key_in_the_clear(store: &Store) -> Path {
    store
        .root()
        .clone()
        .join(crate::erasure::ERASURE_FOLDER)
        .join("hash-key.json")
}

/// The key erasure's keyed hashes ([`crate::erasure::keyed_hash`]) are made with: in a store
/// with master keys, a key wrapped like a KEK (rewrapped on rotation); in a store without,
/// a random key kept in the clear beside the erasure records. Made on first use by a
/// conditional put, so two processes agree.
pub async fn erasure_hash_key(store: &Store) -> Result<[u8; 32]> {
    if let Some(keyring) = store.keyring() {
        return stored_key(store, keyring, ERASURE_HASH_KEY).await;
    }
    #[derive(serde::Serialize, serde::Deserialize)]
    struct InTheClear {
        format: String,
        #[serde(with = "proxima_engine::keys::key_base64")]
        key: [u8; 32],
    }
    const FORMAT: &str = "proxima-erasure-hash-key/1";
    let location = erasure_hash_key_in_the_clear(store);
    let parse = |bytes: &[u8]| -> Result<[u8; 32]> {
        let stored: InTheClear = serde_json::from_slice(bytes)
            .map_err(|e| Error::Invalid(format!("{location}: not an erasure hash key: {e}")))?;
        if stored.format != FORMAT {
            return Err(Error::Invalid(format!(
                "{location}: format '{}' is not {FORMAT}",
                stored.format
            )));
        }
        Ok(stored.key)
    };
    match store.object_store().get(&location).await {
        Ok(found) => return parse(&found.bytes().await?),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    // A store with master keys opened without one: making a key in the clear would give it
    // a second hash key, and hashes that match nothing erasure records.
    let sealed = store
        .root()
        .clone()
        .join(KEYS_FOLDER)
        .join(format!("{ERASURE_HASH_KEY}.json"));
    match store.object_store().head(&sealed).await {
        Ok(_) => {
            return Err(Error::Invalid(format!(
                "{sealed}: the store's erasure hash key is sealed with a master key, and no master key was \
                 given (--master-key-file FILE, or {})",
                proxima_engine::keys::MASTER_KEY_ENV
            )));
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let fresh = InTheClear {
        format: FORMAT.into(),
        key: random_key(),
    };
    let bytes = serde_json::to_vec(&fresh).expect("a key always serialises");
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store
        .object_store()
        .put_opts(&location, PutPayload::from(bytes), create)
        .await
    {
        Ok(_) => {
            store.sync_local([&location])?;
            Ok(fresh.key)
        }
        Err(object_store::Error::AlreadyExists { .. }) => {
            parse(&store.object_store().get(&location).await?.bytes().await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// The key `id` kept under `_keys/`: the stored one, or a new one stored now. Two writers
/// racing to make it agree: the store keeps the first (a conditional put), the other reads it.
async fn stored_key(store: &Store, keyring: &Keyring, id: &str) -> Result<[u8; 32]> {
    let id = id.to_string();
    if let Some(kek) = keyring.kek(&id).await? {
        return Ok(kek);
    }
    let kek = random_key();
    let stored = keyring.wrap_kek(&id, &kek)?;
    let location = keyring.kek_path(&id);
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store
        .object_store()
        .put_opts(&location, PutPayload::from(stored.to_bytes()), create)
        .await
    {
        Ok(_) => {
            store.sync_local([&location])?;
            info!(kek = %id, master_key = %stored.master_key_id, "new key-encryption key");
            keyring.remember(&id, kek);
            Ok(kek)
        }
        Err(object_store::Error::AlreadyExists { .. }) => keyring.kek(&id).await?.ok_or_else(|| {
            Error::Invalid(format!(
                "key-encryption key {id} was made by another writer and deleted at once (retention?); write again"
            ))
        }),
        Err(e) => Err(e.into()),
    }
}

/// Every stored KEK.
async fn stored_keks(store: &Store, keyring: &Keyring) -> Result<Vec<(object_store::path::Path, StoredKek)>> {
    let prefix = keyring.keys_prefix();
    let listed: Vec<_> = store.object_store().list(Some(&prefix)).try_collect().await?;
    let mut keks = Vec::with_capacity(listed.len());
    for meta in listed {
        let Some(id) = meta
            .location
            .prefix_match(&prefix)
            .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/"))
            .and_then(|id| id.strip_suffix(".json").map(str::to_string))
        else {
            continue;
        };
        let bytes = store.object_store().get(&meta.location).await?.bytes().await?;
        keks.push((meta.location.clone(), StoredKek::parse(&meta.location, &bytes, &id)?));
    }
    Ok(keks)
}

/// How many KEKs each master key wraps.
pub async fn master_key_use(store: &Store, keyring: &Keyring) -> Result<BTreeMap<String, usize>> {
    let mut uses = BTreeMap::new();
    for (_, kek) in stored_keks(store, keyring).await? {
        *uses.entry(kek.master_key_id).or_default() += 1;
    }
    Ok(uses)
}

/// Rewraps with the current master key every KEK another master key wraps; returns how
/// many were rewrapped. Data files are not touched (their data keys are wrapped by the
/// KEKs, which do not change). Interrupted, it is run again: every KEK is readable with
/// either key meanwhile.
pub async fn rewrap_all(store: &Store, keyring: &Keyring) -> Result<usize> {
    let current = keyring.provider().current();
    let mut rewrapped = 0;
    for (location, stored) in stored_keks(store, keyring).await? {
        if stored.master_key_id == current {
            continue;
        }
        let kek = keyring.unwrap_kek(&stored)?;
        let fresh = keyring.wrap_kek(&stored.id, &kek)?;
        store
            .object_store()
            .put(&location, PutPayload::from(fresh.to_bytes()))
            .await?;
        store.sync_local([&location])?;
        rewrapped += 1;
    }
    Ok(rewrapped)
}

/// Deletes the key-encryption keys of `table`'s days before `oldest` (retention, once their
/// day folders are gone): a copy of those days' files kept anywhere, a backup say, can then
/// no longer be decrypted with the store's keys once its own `_keys/` is gone too. Deleting
/// needs no master key, so retention run without one shreds as well. Returns how many
/// were deleted.
pub async fn forget_keks_before(store: &Store, table: Table, oldest: NaiveDate) -> Result<usize> {
    let prefix = store.root().clone().join(KEYS_FOLDER).join(table.name());
    let listed: Vec<_> = store.object_store().list(Some(&prefix)).try_collect().await?;
    let mut forgotten = 0;
    for meta in listed {
        let day = meta
            .location
            .filename()
            .and_then(|name| name.strip_suffix(".json"))
            .and_then(|day| NaiveDate::parse_from_str(day, "%Y-%m-%d").ok());
        if let Some(day) = day.filter(|day| *day < oldest) {
            if let Some(keyring) = store.keyring() {
                keyring.forget(&Place { table, day: Some(day) }.kek_id());
            }
            match store.object_store().delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => forgotten += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use proxima_engine::keys::{KeyProvider, MasterKeys};

    #[tokio::test]
    async fn a_place_gets_one_kek_and_rotation_rewraps_it_without_changing_it() {
        let mut masters = MasterKeys::generate(Utc::now());
        let store = Store::in_memory().with_keys(Arc::new(masters.clone()));
        let keyring = store.keyring().unwrap().clone();
        let place = Place {
            table: Table::Observations,
            day: NaiveDate::from_ymd_opt(2026, 11, 29),
        };
        let first = kek_for(&store, &keyring, place).await.unwrap();
        assert_eq!(kek_for(&store, &keyring, place).await.unwrap(), first);
        // Another process (a fresh keyring) reads the same KEK rather than making its own.
        let other = Store::in_memory().wrapped(|_| Arc::clone(store.object_store()));
        let other = other.with_keys(Arc::new(masters.clone()));
        assert_eq!(kek_for(&other, other.keyring().unwrap(), place).await.unwrap(), first);

        let old = masters.current();
        let new = masters.rotate(Utc::now());
        let rotated = Store::in_memory()
            .wrapped(|_| Arc::clone(store.object_store()))
            .with_keys(Arc::new(masters.clone()));
        let ring = rotated.keyring().unwrap();
        assert_eq!(
            master_key_use(&rotated, ring).await.unwrap(),
            BTreeMap::from([(old.clone(), 1)])
        );
        assert_eq!(rewrap_all(&rotated, ring).await.unwrap(), 1);
        assert_eq!(rewrap_all(&rotated, ring).await.unwrap(), 0);
        assert_eq!(
            master_key_use(&rotated, ring).await.unwrap(),
            BTreeMap::from([(new, 1)])
        );
        // With the old key gone, the KEK still unwraps, to the same key.
        masters.remove_retired(&old).unwrap();
        let after = Store::in_memory()
            .wrapped(|_| Arc::clone(store.object_store()))
            .with_keys(Arc::new(masters));
        assert_eq!(
            after.keyring().unwrap().kek(&place.kek_id()).await.unwrap(),
            Some(first)
        );
    }

    #[tokio::test]
    async fn the_erasure_hash_key_is_one_per_store_and_never_made_twice() {
        let store = Store::in_memory().with_keys(Arc::new(MasterKeys::generate(Utc::now())));
        let sealed = erasure_hash_key(&store).await.unwrap();
        let again = Store::in_memory()
            .wrapped(|_| Arc::clone(store.object_store()))
            .with_keys(Arc::clone(store.keyring().unwrap().provider()));
        assert_eq!(erasure_hash_key(&again).await.unwrap(), sealed);
        // Opened without the master key, the store gets no second key in the clear.
        let keyless = Store::in_memory().wrapped(|_| Arc::clone(store.object_store()));
        let err = erasure_hash_key(&keyless).await.unwrap_err().to_string();
        assert!(
            err.contains("no master key was given") && err.contains("erasure hash key"),
            "{err}"
        );
        assert!(
            keyless
                .object_store()
                .head(&erasure_hash_key_in_the_clear(&keyless))
                .await
                .is_err()
        );
        // A store that never had master keys makes one in the clear, once.
        let clear = Store::in_memory();
        let key = erasure_hash_key(&clear).await.unwrap();
        assert_eq!(erasure_hash_key(&clear).await.unwrap(), key);
        let listed: Vec<String> = clear
            .object_store()
            .list(None)
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed, ["_erasure/hash-key.json"]);
        assert_ne!(key, sealed);
    }

    #[tokio::test]
    async fn retention_forgets_the_keys_of_expired_days_only() {
        let store = Store::in_memory().with_keys(Arc::new(MasterKeys::generate(Utc::now())));
        let keyring = store.keyring().unwrap().clone();
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        for (table, d) in [
            (Table::Observations, 1),
            (Table::Observations, 2),
            (Table::Observations, 3),
            (Table::Alerts, 1),
        ] {
            kek_for(
                &store,
                &keyring,
                Place {
                    table,
                    day: Some(day(d)),
                },
            )
            .await
            .unwrap();
        }
        assert_eq!(
            forget_keks_before(&store, Table::Observations, day(3)).await.unwrap(),
            2
        );
        let ids: Vec<String> = stored_keks(&store, &keyring)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, kek)| kek.id)
            .collect();
        assert_eq!(ids, vec!["alerts/2026-11-01", "observations/2026-11-03"]);
        // Retention run without the master key deletes them all the same.
        let keyless = Store::in_memory().wrapped(|_| Arc::clone(store.object_store()));
        assert_eq!(
            forget_keks_before(&keyless, Table::Observations, day(4)).await.unwrap(),
            1
        );
        assert_eq!(stored_keks(&store, &keyring).await.unwrap().len(), 1);
    }
}
