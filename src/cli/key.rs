//! `proxima key`: the master keys of encryption at rest (`proxima_engine::keys`): make a
//! key file, rotate (rewrapping the store's key-encryption keys, no data file rewritten),
//! show which keys the store still needs, retire one it no longer needs; and how every
//! subcommand finds the master keys of its store.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use proxima_engine::Store;
use proxima_engine::ephemeral::IdKeys;
use proxima_engine::keys::{KeyProvider, MASTER_KEY_ENV, MasterKeys};

use super::CliError;

/// Arguments of `proxima key`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    what: KeyCommand,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Make a new master key file (readable by its owner only) at --master-key-file. Keep
    /// it off the store's disk and away from whoever administers the store.
    Init,
    /// Make a new current master key in --master-key-file and rewrap every key-encryption
    /// key of the store with it (no data file is rewritten). The old key stays in the file,
    /// retired, until `proxima key retire`.
    Rotate,
    /// List the master keys and how many of the store's key-encryption keys each wraps (a
    /// retired key that wraps none can be retired).
    Status,
    /// Remove a retired master key from the file, once no key-encryption key needs it.
    Retire {
        /// The key's id (`mk-…`, as `proxima key status` lists it).
        id: String,
    },
}

/// The master keys given explicitly, for commands that open no store: `--master-key-file`,
/// else `PROXIMA_MASTER_KEY`.
pub fn given(file: Option<&Path>) -> Result<Option<Arc<MasterKeys>>, CliError> {
    if let Some(path) = file {
        return Ok(Some(Arc::new(MasterKeys::load(path).map_err(usage)?)));
    }
    match std::env::var(MASTER_KEY_ENV) {
        Ok(value) => Ok(Some(Arc::new(MasterKeys::from_env(&value).map_err(usage)?))),
        Err(_) => Ok(None),
    }
}

/// The master keys a store is opened with: `--master-key-file`, else `PROXIMA_MASTER_KEY`,
/// else the development key beside a local store (`<store>.master-key`) if there is one;
/// `None` without any (the store's files are then neither written encrypted nor readable
/// if they are).
pub fn provider(store: &Store, file: Option<&Path>) -> Result<Option<Arc<MasterKeys>>, CliError> {
    if let Some(path) = file {
        return Ok(Some(Arc::new(load_outside(store, path)?)));
    }
    if let Some(keys) = given(None)? {
        return Ok(Some(keys));
    }
    match development_key(store) {
        Some(path) if path.exists() => Ok(Some(Arc::new(MasterKeys::load(&path).map_err(usage)?))),
        _ => Ok(None),
    }
}

/// Opens `store` with its master keys (see [`provider`]).
pub fn open_with_keys(store: Store, file: Option<&Path>) -> Result<Store, CliError> {
    Ok(match provider(&store, file)? {
        Some(keys) => store.with_keys(keys),
        None => store,
    })
}

/// Where a loopback demo keeps the master key it makes: beside a local store, never in it.
pub fn development_key(store: &Store) -> Option<PathBuf> {
    super::beside_store(store, "master-key")
}

/// For `serve --demo` and `proxima demo`: the store's keys, or a development key made
/// beside the store now (and said where).
pub fn ensure_development_key(store: Store) -> Result<Store, CliError> {
    if store.keyring().is_some() {
        return Ok(store);
    }
    let path = development_key(&store).ok_or_else(|| {
        CliError::Usage(format!(
            "the store is not on a local disk: give its master key with --master-key-file FILE or {MASTER_KEY_ENV}"
        ))
    })?;
    let keys = MasterKeys::generate(chrono::Utc::now());
    keys.save(&path).map_err(usage)?;
    super::print(format!(
        "made a development master key at {} (the store's files are encrypted with it; keep it, and in production \
         keep the key away from whoever administers the store)",
        path.display()
    ))?;
    Ok(store.with_keys(Arc::new(keys)))
}

/// How many keys each master key wraps in the store and beside it: the key-encryption keys,
/// the segments of the local server's WAL (`<store>/_wal`), the identifier key file beside
/// the store. (A server's `--wal-dir` or `--id-key` elsewhere is not seen: restart those
/// servers after a rotation, which reseals and starts new segments, before retiring.)
async fn master_key_use(store: &Store) -> Result<std::collections::BTreeMap<String, usize>, CliError> {
    let keyring = store.keyring().expect("opened with keys");
    let mut uses = proxima_storage::keys::master_key_use(store, keyring).await?;
    if let Some(root) = store.local_root() {
        for (id, n) in proxima_storage::wal::segment_master_keys(&root.join("_wal"))? {
            *uses.entry(id).or_default() += n;
        }
    }
    if let Some(id) = super::beside_store(store, "id-key").and_then(|p| proxima_engine::keys::sealed_with(&p)) {
        *uses.entry(id).or_default() += 1;
    }
    Ok(uses)
}

fn load_outside(store: &Store, path: &Path) -> Result<MasterKeys, CliError> {
    super::refuse_inside_store(
        store,
        path,
        "master key",
        "whoever can read the store's files could then decrypt them",
    )?;
    MasterKeys::load(path).map_err(usage)
}

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// Runs `proxima key` on `store` (opened without keys) with the key file `file`.
pub async fn run(store: Store, file: Option<&Path>, args: KeyArgs) -> Result<(), CliError> {
    let file = match (file, development_key(&store)) {
        (Some(file), _) => file.to_path_buf(),
        (None, Some(beside)) if !matches!(args.what, KeyCommand::Init) && beside.exists() => beside,
        _ => {
            return Err(CliError::Usage(
                "give the master key file with --master-key-file FILE (or PROXIMA_MASTER_KEY_FILE)".into(),
            ));
        }
    };
    let now = chrono::Utc::now();
    match args.what {
        KeyCommand::Init => {
            if file.exists() {
                return Err(CliError::Usage(format!(
                    "{} exists: to change its key, use proxima key rotate --master-key-file {}",
                    file.display(),
                    file.display()
                )));
            }
            let keys = MasterKeys::generate(now);
            super::refuse_inside_store(
                &store,
                file.parent().unwrap_or(Path::new(".")),
                "master key",
                "whoever can read the store's files could then decrypt them",
            )?;
            keys.save(&file).map_err(usage)?;
            super::print(format!(
                "master key {} written to {} (readable by its owner only): give it to every proxima command on this \
                 store with --master-key-file, and keep it away from whoever administers the store's disk or bucket",
                keys.current(),
                file.display()
            ))
        }
        KeyCommand::Rotate => {
            let mut keys = load_outside(&store, &file)?;
            let old = keys.current();
            let new = keys.rotate(now);
            // The file first: from here on both keys unwrap, so a rotation cut short is
            // simply run again.
            keys.save(&file).map_err(usage)?;
            let keys = Arc::new(keys);
            let store = store.with_keys(keys.clone());
            let keyring = store.keyring().expect("opened with keys");
            let rewrapped = proxima_storage::keys::rewrap_all(&store, keyring).await?;
            // The identifier keys a loopback server keeps beside the store, sealed anew.
            if let Some(id_key) = super::beside_store(&store, "id-key").filter(|p| p.exists()) {
                let master = Some(keys.as_ref() as &dyn KeyProvider);
                let ids = IdKeys::load(&id_key, master).map_err(usage)?;
                ids.save(&id_key, master).map_err(usage)?;
            }
            super::print(format!(
                "master key {new} is current ({old} retired); {rewrapped} key-encryption keys rewrapped. Restart the \
                 servers of this store; once `proxima key status` shows {old} wraps nothing, `proxima key retire {old}`"
            ))
        }
        KeyCommand::Status => {
            let keys = load_outside(&store, &file)?;
            let current = keys.current();
            let store = store.with_keys(Arc::new(keys.clone()));
            let uses = master_key_use(&store).await?;
            for (id, created, retired) in keys.summary() {
                let wraps = uses.get(&id).copied().unwrap_or(0);
                let state = match retired {
                    None => "current".to_string(),
                    Some(at) if wraps == 0 => format!("retired {}; wraps nothing: can be retired", at.to_rfc3339()),
                    Some(at) => format!("retired {}; still needed", at.to_rfc3339()),
                };
                super::print(format!(
                    "{id}  made {}  wraps {wraps} keys (key-encryption keys, WAL segments, identifier key file)  {state}",
                    created.to_rfc3339()
                ))?;
            }
            for (id, wraps) in uses.iter().filter(|(id, _)| !keys.ids().contains(id)) {
                super::print(format!(
                    "{id}  NOT IN {}: wraps {wraps} keys that cannot be read",
                    file.display()
                ))?;
            }
            if !uses.contains_key(&current) && !uses.is_empty() {
                super::print(format!(
                    "the current key {current} wraps nothing yet: run proxima key rotate to rewrap"
                ))?;
            }
            Ok(())
        }
        KeyCommand::Retire { id } => {
            let mut keys = load_outside(&store, &file)?;
            let store = store.with_keys(Arc::new(keys.clone()));
            let uses = master_key_use(&store).await?;
            if let Some(wraps) = uses.get(&id) {
                return Err(CliError::Usage(format!(
                    "{id} still wraps {wraps} keys of the store (key-encryption keys, WAL segments, the identifier \
                     key file): run proxima key rotate, restart the servers and let them flush, then retire"
                )));
            }
            keys.remove_retired(&id).map_err(usage)?;
            keys.save(&file).map_err(usage)?;
            super::print(format!("{id} removed from {}", file.display()))
        }
    }
}
