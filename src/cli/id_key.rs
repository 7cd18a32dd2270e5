//! `proxima id-key`: the keys that seal the rotating identifiers phones broadcast
//! (`proxima_engine::ephemeral`): make a key file, rotate its key, list its keys; and the
//! flags with which `serve` and `sql` resolve identifiers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use proxima_engine::Store;
use proxima_engine::ephemeral::{IdKeys, Identifiers};
use proxima_engine::keys::{KeyProvider, MasterKeys};
use proxima_storage::id_keys;

use super::CliError;

/// Arguments of `proxima id-key`.
#[derive(Debug, Args)]
pub struct IdKeyArgs {
    #[command(subcommand)]
    what: IdKeyCommand,
}

#[derive(Debug, Subcommand)]
enum IdKeyCommand {
    /// Make a new key file with one key (give it to `proxima serve --id-key`; keep it out of
    /// the store and readable by the server only), or with --in-store put one key in a store
    /// with master keys, where every node started on the store finds it.
    New {
        /// The file to write (must not exist).
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "in_store",
            conflicts_with = "in_store"
        )]
        out: Option<PathBuf>,
        /// Keep the key in the store (`_keys/identifiers/`, wrapped by the master key).
        #[arg(long)]
        in_store: bool,
    },
    /// Put a key file's keys in a store with master keys (a deployment that gave every node
    /// the file moves to keys shared through the store; identifiers issued before still
    /// resolve). Then start the nodes without --id-key and delete the file.
    Import {
        /// The key file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Retire the current key and make a new one current: identifiers issued from then on
    /// use the new key; those of the retired key still resolve until the retention period
    /// has passed.
    Rotate {
        /// The key file.
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "in_store",
            conflicts_with = "in_store"
        )]
        file: Option<PathBuf>,
        /// Rotate the keys kept in the store.
        #[arg(long)]
        in_store: bool,
    },
    /// List the keys of a file or the store: id, when made, when retired (never the key bytes).
    List {
        /// The key file.
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "in_store",
            conflicts_with = "in_store"
        )]
        file: Option<PathBuf>,
        /// List the keys kept in the store.
        #[arg(long)]
        in_store: bool,
    },
    /// Print the identifiers a device broadcasts from a time on, as the server issues them
    /// (for test fixtures and for checking a phone): `<32 hex digits> <from> <until>` a line.
    Issue {
        /// The key file.
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "in_store",
            conflicts_with = "in_store"
        )]
        file: Option<PathBuf>,
        /// Use the keys kept in the store.
        #[arg(long)]
        in_store: bool,
        /// The device's UUID.
        #[arg(long)]
        device: String,
        /// The first epoch is the one holding this time (RFC 3339).
        #[arg(long)]
        from: chrono::DateTime<chrono::Utc>,
        /// How many epochs.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        count: u32,
        /// The length of an epoch, whole minutes (as the server's --epoch).
        #[arg(long, default_value = "15m", value_parser = super::durations::parse_duration)]
        epoch: std::time::Duration,
    },
}

impl IdKeyArgs {
    /// Whether the command works on the keys kept in a store (which must then be opened).
    pub fn in_store(&self) -> bool {
        match &self.what {
            IdKeyCommand::New { in_store, .. }
            | IdKeyCommand::Rotate { in_store, .. }
            | IdKeyCommand::List { in_store, .. }
            | IdKeyCommand::Issue { in_store, .. } => *in_store,
            IdKeyCommand::Import { .. } => true,
        }
    }
}

/// The flags of rotating identifiers, shared by `serve` (which issues and resolves them) and
/// `sql` (which resolves them in the `encounters` view and traces).
#[derive(Debug, Args)]
pub struct IdentifierArgs {
    /// The keys that issue and resolve phones' rotating identifiers (`proxima id-key new`
    /// makes a file; keep it out of the store). Not given: the keys kept in the store, if it
    /// holds any (`proxima id-key new --in-store`).
    #[arg(long, env = "PROXIMA_ID_KEY", value_name = "FILE")]
    pub id_key: Option<PathBuf>,
    /// How long one rotating identifier is valid, in whole minutes (15m).
    #[arg(long, env = "PROXIMA_EPOCH", default_value = "15m", value_parser = super::durations::parse_duration)]
    pub epoch: std::time::Duration,
    /// How far outside its identifier's epoch a sighting may be and still count (phones'
    /// clocks drift); further out it is a replay, no encounter.
    #[arg(long, env = "PROXIMA_EPOCH_TOLERANCE", default_value = "2m", value_parser = super::durations::parse_duration)]
    pub epoch_tolerance: std::time::Duration,
}

impl IdentifierArgs {
    /// Refuses an epoch that is not whole minutes up to a day, or a tolerance beyond it.
    pub fn check(&self) -> Result<(), CliError> {
        if !self.epoch.as_secs().is_multiple_of(60) || self.epoch.as_secs() == 0 || self.epoch.as_secs() > 86_400 {
            return Err(CliError::Usage(
                "--epoch must be a whole number of minutes, at most a day (15m)".into(),
            ));
        }
        if self.epoch_tolerance > self.epoch {
            return Err(CliError::Usage(format!(
                "--epoch-tolerance ({} s) must not exceed --epoch ({} s)",
                self.epoch_tolerance.as_secs(),
                self.epoch.as_secs()
            )));
        }
        Ok(())
    }

    /// What resolves identifiers with `keys` and these epochs.
    pub fn resolving_with(&self, keys: IdKeys) -> Arc<Identifiers> {
        Arc::new(Identifiers::new(keys, self.epoch, self.epoch_tolerance))
    }

    /// The keys to seal identifiers with outside a server (`generate`, `demo`): `--id-key`,
    /// the store's, or the development key file beside the store, made if missing.
    pub async fn development_or_given(&self, store: &Store) -> Result<Arc<Identifiers>, CliError> {
        self.check()?;
        let keys = for_server(
            store,
            self.id_key.as_deref(),
            true,
            chrono::DateTime::<chrono::Utc>::MIN_UTC,
        )
        .await?
        .ok_or_else(|| CliError::Usage("no identifier keys: give --id-key FILE".into()))?;
        Ok(self.resolving_with(keys))
    }

    /// The identifiers a local `proxima sql` (or a cluster's node) resolves: with `--id-key`,
    /// the keys kept in the store, or the development key file a loopback server keeps
    /// beside the store, if there is one; else none (no sighting of an identifier is an
    /// encounter).
    pub async fn for_sql(&self, store: &Store) -> Result<Option<Arc<Identifiers>>, CliError> {
        self.check()?;
        if let Some(keys) = in_store(store, self.id_key.as_deref()).await? {
            return Ok(Some(self.resolving_with(keys)));
        }
        let path = match &self.id_key {
            Some(path) => path.clone(),
            None => match super::beside_store(store, "id-key").filter(|p| p.exists()) {
                Some(path) => path,
                None => return Ok(None),
            },
        };
        Ok(Some(self.resolving_with(load_outside(store, &path)?)))
    }
}

/// The keys kept in the store, if it holds any; refused beside an `--id-key` file (two
/// sources of keys: nodes given the file would resolve differently from those that are
/// not).
async fn in_store(store: &Store, given: Option<&Path>) -> Result<Option<IdKeys>, CliError> {
    if !keeps_keys(store, given).await? {
        return Ok(None);
    }
    Ok(id_keys::load(store).await?)
}

/// Whether the store keeps identifier keys (a listing only); refused beside `--id-key`.
async fn keeps_keys(store: &Store, given: Option<&Path>) -> Result<bool, CliError> {
    if !id_keys::present(store).await? {
        return Ok(false);
    }
    if let Some(path) = given {
        return Err(CliError::Usage(format!(
            "--id-key {}: the store keeps its own identifier keys (_keys/identifiers/), which every node uses: \
             drop --id-key (PROXIMA_ID_KEY)",
            path.display()
        )));
    }
    Ok(true)
}

fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

/// Reads the key file at `path`, refusing one kept inside the store: whoever reads the
/// store's files must not also be able to link its identifiers.
pub fn load_outside(store: &Store, path: &Path) -> Result<IdKeys, CliError> {
    super::refuse_inside_store(
        store,
        path,
        "identifier key",
        "whoever can read the store could link its identifiers to devices",
    )?;
    IdKeys::load(path, master_of(store)).map_err(usage)
}

/// The master keys of `store`, which seal its identifier key files.
fn master_of(store: &Store) -> Option<&dyn KeyProvider> {
    store.keyring().map(|k| k.provider().as_ref())
}

/// The identifier keys a server issues with: the store's own (`_keys/identifiers/`), the
/// file `given` (`--id-key`), or for a loopback server without a users file
/// (`development`) a file beside the store (never in it), made on first use so that
/// identifiers issued in one run resolve in the next. Keys retired before `forget_before`
/// are forgotten (deleted from the store, or the file saved without them): their
/// identifiers become unlinkable for good.
pub async fn for_server(
    store: &Store,
    given: Option<&Path>,
    development: bool,
    forget_before: chrono::DateTime<chrono::Utc>,
) -> Result<Option<IdKeys>, CliError> {
    // Read once, after the retired keys are forgotten.
    if keeps_keys(store, given).await? {
        let forgotten = id_keys::forget_retired_before(store, forget_before).await?;
        if forgotten > 0 {
            tracing::info!(target: "proxima::serve", forgotten, "retired identifier keys forgotten from the store");
        }
        return Ok(id_keys::load(store).await?);
    }
    let path = match (given, development) {
        (Some(path), _) => path.to_path_buf(),
        (None, true) => super::beside_store(store, "id-key").ok_or_else(|| {
            CliError::Usage("the store is not on a local disk: give the identifier keys with --id-key FILE".into())
        })?,
        (None, false) => return Ok(None),
    };
    if given.is_none() && !path.exists() {
        let keys = IdKeys::generate(chrono::Utc::now());
        keys.save(&path, master_of(store)).map_err(usage)?;
        return Ok(Some(keys));
    }
    let mut keys = load_outside(store, &path)?;
    let forgotten = keys.forget_retired_before(forget_before);
    // Sealed again if it is in the clear, or sealed with a master key that is no longer the
    // current one (after `proxima key rotate`), so that the old key can be retired.
    let current = master_of(store).map(|m| m.current());
    let reseal = current.is_some() && proxima_engine::keys::sealed_with(&path) != current;
    if forgotten > 0 || reseal {
        keys.save(&path, master_of(store)).map_err(usage)?;
        tracing::info!(target: "proxima::serve", forgotten, file = %path.display(), "retired identifier keys forgotten");
    }
    Ok(Some(keys))
}

/// The key file of a command that is not `--in-store` (clap requires one of the two).
fn file_of(file: Option<PathBuf>) -> Result<PathBuf, CliError> {
    file.ok_or_else(|| CliError::Usage("give the key file (--file FILE) or --in-store".into()))
}

/// Prints the identifiers of `device` from `from` on under `keys`.
fn print_schedule(
    keys: &IdKeys,
    device: &str,
    from: chrono::DateTime<chrono::Utc>,
    count: u32,
    epoch: std::time::Duration,
) -> Result<(), CliError> {
    if !epoch.as_secs().is_multiple_of(60) {
        return Err(CliError::Usage("--epoch must be a whole number of minutes".into()));
    }
    let handle = proxima_engine::ephemeral::handle_of(device)
        .ok_or_else(|| CliError::Usage(format!("--device: '{device}' is not a device UUID")))?;
    let time = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (id, from, until) in keys.schedule(handle, from, count, epoch) {
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        super::print(format!("{hex} {} {}", time(from), time(until)))?;
    }
    Ok(())
}

/// Runs `proxima id-key` on a key file; key files are sealed with `master` when given.
pub fn run(args: IdKeyArgs, master: Option<Arc<MasterKeys>>) -> Result<(), CliError> {
    let now = chrono::Utc::now();
    let master = master.as_deref().map(|m| m as &dyn KeyProvider);
    match args.what {
        IdKeyCommand::New { out, .. } => {
            let out = out.ok_or_else(|| CliError::Usage("give the key file (--out FILE) or --in-store".into()))?;
            if out.exists() {
                return Err(CliError::Usage(format!(
                    "{} exists: to change its key, use proxima id-key rotate --file {}",
                    out.display(),
                    out.display()
                )));
            }
            let keys = IdKeys::generate(now);
            keys.save(&out, master).map_err(usage)?;
            super::print(format!(
                "identifier key {} written to {} (keep it out of the store)",
                keys.current_id(),
                out.display()
            ))
        }
        IdKeyCommand::Rotate { file, .. } => {
            let file = file_of(file)?;
            let mut keys = IdKeys::load(&file, master).map_err(usage)?;
            let id = keys.rotate(now).map_err(usage)?;
            keys.save(&file, master).map_err(usage)?;
            super::print(format!(
                "key {id} is current in {}; restart the server to issue with it",
                file.display()
            ))
        }
        IdKeyCommand::Issue {
            file,
            device,
            from,
            count,
            epoch,
            ..
        } => print_schedule(
            &IdKeys::load(&file_of(file)?, master).map_err(usage)?,
            &device,
            from,
            count,
            epoch,
        ),
        IdKeyCommand::List { file, .. } => {
            for key in IdKeys::load(&file_of(file)?, master).map_err(usage)?.summary() {
                super::print(key)?;
            }
            Ok(())
        }
        IdKeyCommand::Import { .. } => Err(CliError::Usage("import needs the store".into())),
    }
}

/// Runs `proxima id-key … --in-store` (and `import`) on the keys kept in `store`.
pub async fn run_in_store(store: Store, args: IdKeyArgs) -> Result<(), CliError> {
    let now = chrono::Utc::now();
    let stored = |keys: Option<IdKeys>| {
        keys.ok_or_else(|| {
            CliError::Usage(format!(
                "{store} keeps no identifier keys: make them with proxima id-key new --in-store"
            ))
        })
    };
    match args.what {
        IdKeyCommand::New { .. } => {
            let keys = IdKeys::generate(now);
            id_keys::create(&store, &keys).await?;
            super::print(format!(
                "identifier key {} kept in {store} (_keys/identifiers/, wrapped by the master key): start every \
                 node without --id-key",
                keys.current_id()
            ))
        }
        IdKeyCommand::Import { file } => {
            let keys = load_outside(&store, &file)?;
            id_keys::create(&store, &keys).await?;
            super::print(format!(
                "{} identifier keys of {} kept in {store}: restart every node without --id-key, then delete the file",
                keys.summary().len(),
                file.display()
            ))
        }
        IdKeyCommand::Rotate { .. } => {
            let id = id_keys::rotate(&store, now).await?;
            super::print(format!(
                "key {id} is current in {store}; restart every node (serve, sql jobs, scheduler, executors) to \
                 issue and resolve with it"
            ))
        }
        IdKeyCommand::List { .. } => {
            for key in stored(id_keys::load(&store).await?)?.summary() {
                super::print(key)?;
            }
            Ok(())
        }
        IdKeyCommand::Issue {
            device,
            from,
            count,
            epoch,
            ..
        } => print_schedule(&stored(id_keys::load(&store).await?)?, &device, from, count, epoch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, Utc};

    #[tokio::test]
    async fn a_server_forgets_keys_retired_long_ago_and_never_reads_one_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(&dir.path().join("store")).unwrap();
        let path = dir.path().join("ids.key");
        let mut keys = IdKeys::generate(Utc::now() - Duration::days(90));
        let old = keys.issue(7, 1000);
        keys.rotate(Utc::now() - Duration::days(60)).unwrap();
        keys.save(&path, None).unwrap();

        // Retired 60 days ago: kept while the cutoff is older, forgotten after.
        let kept = for_server(&store, Some(&path), false, Utc::now() - Duration::days(61))
            .await
            .unwrap()
            .unwrap();
        assert!(kept.resolve(&old).is_some());
        let served = for_server(&store, Some(&path), false, Utc::now() - Duration::days(30))
            .await
            .unwrap()
            .unwrap();
        assert!(served.resolve(&old).is_none());
        assert!(
            IdKeys::load(&path, None).unwrap().resolve(&old).is_none(),
            "the file forgot it too"
        );
        assert_eq!(served.current_id(), 2);

        // None without a file or a development store; a development file beside the store.
        assert!(for_server(&store, None, false, Utc::now()).await.unwrap().is_none());
        let made = for_server(&store, None, true, Utc::now()).await.unwrap().unwrap();
        let beside = dir.path().join("store.id-key");
        assert_eq!(IdKeys::load(&beside, None).unwrap().issue(1, 2), made.issue(1, 2));

        let inside = dir.path().join("store").join("ids.key");
        keys.save(&inside, None).unwrap();
        let err = for_server(&store, Some(&inside), false, Utc::now())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("must not be kept inside the store"), "{err}");
    }
}
