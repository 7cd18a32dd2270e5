//! The keys of phones' rotating identifiers kept in the store, shared by every node.
//!
//! In a store with master keys, the identifier keys (`proxima_engine::ephemeral::IdKeys`)
//! can live in the store instead of a file given to each node: one key-encryption key each,
//! `_keys/identifiers/<generation>-<key id>.json`, wrapped by the master key like every KEK
//! (so `proxima key rotate` rewraps them and `key status` counts them, and whoever reads the
//! bucket without the master key learns nothing of them). The generations order the keys:
//! the newest issues, each older one was retired when the next was made. A rotation stores
//! the next generation by a conditional put, so two rotations at once cannot both succeed;
//! a key retired past the retention period is deleted, and what it issued is unlinkable for
//! good. A store without master keys keeps none: its keys would be readable beside the
//! data they link (give those nodes an `--id-key` file instead).

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use proxima_engine::Store;
use proxima_engine::encryption::{KEYS_FOLDER, Keyring, StoredKek};
use proxima_engine::ephemeral::IdKeys;
use proxima_engine::keys::random_key;

use crate::error::{Error, Result};

/// The folder of `_keys/` that holds the identifier keys.
pub const FOLDER: &str = "identifiers";

/// One stored key.
struct Generation {
    generation: u64,
    id: u8,
    key: [u8; 32],
    created: DateTime<Utc>,
    location: Path,
}

fn kek_id(generation: u64, id: u8) -> String {
    format!("{FOLDER}/{generation:010}-{id}")
}

/// `(generation, key id)` from a stored key's file name.
fn parse_name(name: &str) -> Option<(u64, u8)> {
    let (generation, id) = name.strip_suffix(".json")?.split_once('-')?;
    Some((generation.parse().ok()?, id.parse().ok()?))
}

fn folder(store: &Store) -> Path {
    store.root().clone().join(KEYS_FOLDER).join(FOLDER)
}

/// Every stored identifier key, oldest generation first.
async fn stored(store: &Store, keyring: &Keyring) -> Result<Vec<Generation>> {
    let listed: Vec<_> = store.object_store().list(Some(&folder(store))).try_collect().await?;
    let mut keys = Vec::with_capacity(listed.len());
    for meta in listed {
        let name = meta.location.filename().unwrap_or_default();
        let (generation, id) = parse_name(name)
            .ok_or_else(|| Error::Invalid(format!("{}: not an identifier key's name", meta.location)))?;
        let bytes = match store.object_store().get(&meta.location).await {
            Ok(found) => found.bytes().await?,
            // Forgotten by another node since the listing.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let kek = StoredKek::parse(&meta.location, &bytes, &kek_id(generation, id))?;
        keys.push(Generation {
            generation,
            id,
            key: keyring.unwrap_kek(&kek)?,
            created: kek.created,
            location: meta.location,
        });
    }
    keys.sort_by_key(|k| k.generation);
    Ok(keys)
}

fn as_keys(store: &Store, keys: &[Generation]) -> Result<Option<IdKeys>> {
    if keys.is_empty() {
        return Ok(None);
    }
    IdKeys::from_generations(keys.iter().map(|k| (k.id, k.key, k.created)).collect())
        .map(Some)
        .ok_or_else(|| Error::Invalid(format!("{}: two identifier keys share an id", folder(store))))
}

/// Whether the store holds identifier keys (read without the master key: only names).
pub async fn present(store: &Store) -> Result<bool> {
    let mut listed = store.object_store().list(Some(&folder(store)));
    Ok(listed.try_next().await?.is_some())
}

/// The identifier keys the store holds, `None` if it holds none. A store that holds some,
/// opened without its master key, is refused: its identifiers could not be resolved.
pub async fn load(store: &Store) -> Result<Option<IdKeys>> {
    let Some(keyring) = store.keyring() else {
        if present(store).await? {
            return Err(Error::Invalid(format!(
                "{}: the store's identifier keys are sealed with a master key, and none was given \
                 (--master-key-file FILE, or {})",
                folder(store),
                proxima_engine::keys::MASTER_KEY_ENV
            )));
        }
        return Ok(None);
    };
    as_keys(store, &stored(store, keyring).await?)
}

fn keyring_of(store: &Store) -> Result<&Keyring> {
    store.keyring().map(|k| &**k).ok_or_else(|| {
        Error::Invalid(format!(
            "identifier keys are kept in a store only under a master key (--master-key-file FILE, or {}): \
             in the clear, whoever reads the store could link its identifiers to devices",
            proxima_engine::keys::MASTER_KEY_ENV
        ))
    })
}

/// Stores one key by a conditional put; `false` if that generation exists already.
async fn put(
    store: &Store,
    keyring: &Keyring,
    generation: u64,
    id: u8,
    key: &[u8; 32],
    created: DateTime<Utc>,
) -> Result<bool> {
    let kek = kek_id(generation, id);
    let mut wrapped = keyring.wrap_kek(&kek, key)?;
    wrapped.created = created;
    let location = keyring.kek_path(&kek);
    // The generation is what must be unique: a key of that generation under another id
    // (a rotation elsewhere that chose differently) counts as taken too. Names suffice.
    let listed: Vec<_> = store.object_store().list(Some(&folder(store))).try_collect().await?;
    let taken = listed
        .iter()
        .filter_map(|meta| parse_name(meta.location.filename().unwrap_or_default()))
        .any(|(listed, _)| listed == generation);
    if taken {
        return Ok(false);
    }
    let create = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store
        .object_store()
        .put_opts(&location, PutPayload::from(wrapped.to_bytes()), create)
        .await
    {
        Ok(_) => {
            store.sync_local([&location])?;
            Ok(true)
        }
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Puts `keys` (a new key, or a key file's keys) in a store that holds none yet.
pub async fn create(store: &Store, keys: &IdKeys) -> Result<()> {
    let keyring = keyring_of(store)?;
    if present(store).await? {
        return Err(Error::Invalid(format!(
            "{} holds identifier keys already: rotate them (proxima id-key rotate --in-store)",
            folder(store)
        )));
    }
    for (generation, (id, key, created)) in (1u64..).zip(keys.generations()) {
        if !put(store, keyring, generation, id, &key, created).await? {
            return Err(Error::Invalid(format!(
                "{}: another process stored identifier keys at the same time; list them (proxima id-key list \
                 --in-store) before trying again",
                folder(store)
            )));
        }
    }
    Ok(())
}

/// Makes a new key current in the store: identifiers issued by nodes started (or restarted)
/// from then on use it, and those of the keys before still resolve. Returns its id.
pub async fn rotate(store: &Store, now: DateTime<Utc>) -> Result<u8> {
    let keyring = keyring_of(store)?;
    let keys = stored(store, keyring).await?;
    let Some(current) = as_keys(store, &keys)? else {
        return Err(Error::Invalid(format!(
            "{} holds no identifier keys: make them first (proxima id-key new --in-store)",
            folder(store)
        )));
    };
    let id = current.next_id().map_err(|e| Error::Invalid(e.to_string()))?;
    let generation = keys.last().map_or(1, |k| k.generation + 1);
    if !put(store, keyring, generation, id, &random_key(), now).await? {
        return Err(Error::Invalid(
            "another rotation of the identifier keys happened at the same time: list them (proxima id-key list \
             --in-store) before rotating again"
                .into(),
        ));
    }
    Ok(id)
}

/// Deletes the keys retired before `cutoff` (a key is retired when the next one was made):
/// what they issued no longer resolves, to anyone. Returns how many went. Idempotent, so
/// two nodes doing it at once do no harm.
pub async fn forget_retired_before(store: &Store, cutoff: DateTime<Utc>) -> Result<usize> {
    let Some(keyring) = store.keyring() else {
        return Ok(0);
    };
    let keys = stored(store, keyring).await?;
    let mut forgotten = 0;
    for pair in keys.windows(2) {
        let (old, next) = (&pair[0], &pair[1]);
        if next.created < cutoff {
            match store.object_store().delete(&old.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => forgotten += 1,
                Err(e) => return Err(e.into()),
            }
            keyring.forget(&kek_id(old.generation, old.id));
        }
    }
    Ok(forgotten)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use proxima_engine::keys::MasterKeys;
    use std::sync::Arc;

    fn sealed_store(dir: &std::path::Path) -> Store {
        let master = MasterKeys::generate(Utc::now());
        Store::local(&dir.join("store")).unwrap().with_keys(Arc::new(master))
    }

    #[tokio::test]
    async fn keys_in_the_store_are_made_rotated_shared_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = sealed_store(dir.path());
        assert!(load(&store).await.unwrap().is_none());
        let made = IdKeys::generate(Utc::now() - Duration::days(60));
        create(&store, &made).await.unwrap();
        let again = create(&store, &made).await.unwrap_err().to_string();
        assert!(again.contains("holds identifier keys already"), "{again}");

        // What one node issues, another (a second opening of the store) resolves.
        let loaded = load(&store).await.unwrap().unwrap();
        let old = made.issue(7, 1000);
        assert_eq!(loaded.issue(7, 1000), old);

        assert_eq!(rotate(&store, Utc::now() - Duration::days(30)).await.unwrap(), 2);
        let rotated = load(&store).await.unwrap().unwrap();
        assert_eq!(rotated.current_id(), 2);
        assert!(rotated.resolve(&old).is_some(), "the retired key still resolves");
        assert_ne!(rotated.issue(7, 1000), old);

        // Nothing on disk holds a key's bytes in the clear.
        let key_bytes = made.generations()[0].1;
        let files = crate::testing::files_under(dir.path());
        assert!(!files.is_empty());
        for entry in files {
            let content = std::fs::read(&entry).unwrap();
            assert!(
                !content.windows(32).any(|w| w == key_bytes),
                "{} holds the key",
                entry.display()
            );
        }

        // Retired 30 days ago: kept past a 31-day cutoff, forgotten at a 29-day one.
        assert_eq!(
            forget_retired_before(&store, Utc::now() - Duration::days(31))
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            forget_retired_before(&store, Utc::now() - Duration::days(29))
                .await
                .unwrap(),
            1
        );
        let left = load(&store).await.unwrap().unwrap();
        assert!(left.resolve(&old).is_none());
        assert_eq!(left.current_id(), 2);

        // Without the master key: refused, not read as "no keys".
        let bare = Store::local(&dir.path().join("store")).unwrap();
        let err = load(&bare).await.unwrap_err().to_string();
        assert!(err.contains("sealed with a master key"), "{err}");
        let err = create(&bare, &made).await.unwrap_err().to_string();
        assert!(err.contains("only under a master key"), "{err}");
    }
}
