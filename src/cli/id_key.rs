//! `proxima id-key`: the keys that seal the rotating identifiers phones broadcast
//! (`proxima_engine::ephemeral`): make a key file, rotate its key, list its keys.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use proxima_engine::Store;
use proxima_engine::ephemeral::IdKeys;

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
    /// the store and readable by the server only).
    New {
        /// The file to write (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Retire the current key and make a new one current: identifiers issued from then on
    /// use the new key; those of the retired key still resolve until the retention period
    /// has passed.
    Rotate {
        /// The key file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// List the keys of a file: id, when made, when retired (never the key bytes).
    List {
        /// The key file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
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
    IdKeys::load(path).map_err(usage)
}

/// The identifier keys of a loopback server without a users file: a file beside the store
/// (never in it), made on first use, so identifiers issued in one run resolve in the next.
pub fn development_keys(store: &Store) -> Result<IdKeys, CliError> {
    let Some(path) = super::beside_store(store, "id-key") else {
        return Err(CliError::Usage(
            "the store is not on a local disk: give the identifier keys with --id-key FILE".into(),
        ));
    };
    if path.exists() {
        return load_outside(store, &path);
    }
    let keys = IdKeys::generate(chrono::Utc::now());
    keys.save(&path).map_err(usage)?;
    Ok(keys)
}

/// Runs `proxima id-key`.
pub fn run(args: IdKeyArgs) -> Result<(), CliError> {
    let now = chrono::Utc::now();
    match args.what {
        IdKeyCommand::New { out } => {
            if out.exists() {
                return Err(CliError::Usage(format!(
                    "{} exists: to change its key, use proxima id-key rotate --file {}",
                    out.display(),
                    out.display()
                )));
            }
            let keys = IdKeys::generate(now);
            keys.save(&out).map_err(usage)?;
            super::print(format!(
                "identifier key {} written to {} (keep it out of the store)",
                keys.current_id(),
                out.display()
            ))
        }
        IdKeyCommand::Rotate { file } => {
            let mut keys = IdKeys::load(&file).map_err(usage)?;
            let id = keys.rotate(now).map_err(usage)?;
            keys.save(&file).map_err(usage)?;
            super::print(format!(
                "key {id} is current in {}; restart the server to issue with it",
                file.display()
            ))
        }
        IdKeyCommand::List { file } => {
            let keys = IdKeys::load(&file).map_err(usage)?;
            for key in keys.summary() {
                super::print(key)?;
            }
            Ok(())
        }
    }
}
