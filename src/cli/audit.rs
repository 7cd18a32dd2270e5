//! `proxima audit`: makes the key that signs the audit log's checkpoints, and verifies the
//! log (`proxima audit verify`), the auditor's check that nothing was edited, deleted,
//! reordered, truncated or rewritten.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use proxima_audit::{SignerKey, VerifierKey};
use proxima_engine::Store;

use super::CliError;

/// The folder of the audit log inside a local store.
pub const AUDIT_DIR: &str = "_audit";

/// Arguments of `proxima audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    what: AuditCommand,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Make a new Ed25519 key for signing checkpoints: the private key goes to FILE (give
    /// it to `proxima serve --audit-key`, keep it out of the store), the public key is printed
    /// (give it to whoever verifies).
    Key {
        /// The file to write the signing key to (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The log's name, which every checkpoint carries as its origin.
        #[arg(long, default_value = "proxima/audit")]
        name: String,
    },
    /// Check the audit log: recompute its Merkle tree, check every checkpoint's signature,
    /// the consistency of successive checkpoints, and a checkpoint you kept from earlier.
    /// Exits 0 only when everything holds.
    Verify {
        /// The public key printed by `proxima audit key` (or the text of a file holding it).
        #[arg(long, env = "PROXIMA_AUDIT_PUBLIC_KEY", value_name = "KEY")]
        key: String,
        /// The audit folder (default: `_audit` in a local store).
        #[arg(long, env = "PROXIMA_AUDIT_DIR", value_name = "DIR")]
        dir: Option<PathBuf>,
        /// A checkpoint (a `.note` file) kept from earlier: the log must still extend it.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// Records not covered by a checkpoint may be at most this old (a server signs one
        /// every minute and at shutdown): older ones mean a server that died, or deleted
        /// checkpoints, and fail the check.
        #[arg(long, default_value = "1h", value_parser = super::durations::parse_duration)]
        max_unsigned_age: std::time::Duration,
    },
}

/// The audit folder: `--audit-dir` if given, else `_audit` in a local store.
pub fn audit_dir(store: &Store, dir: Option<&Path>) -> Result<PathBuf, CliError> {
    match (dir, store.local_root()) {
        (Some(dir), _) => Ok(dir.to_path_buf()),
        (None, Some(root)) => Ok(root.join(AUDIT_DIR)),
        (None, None) => Err(CliError::Usage(format!(
            "the store {store} is not on a local disk: give the audit log a local folder with --audit-dir"
        ))),
    }
}

/// Reads the signing key in `path`, refusing one kept inside the store it would protect.
pub fn load_signer(store: &Store, path: &Path) -> Result<SignerKey, CliError> {
    super::refuse_inside_store(
        store,
        path,
        "audit key",
        "whoever can read the store could sign a rewritten log",
    )?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read the audit key {}: {e}", path.display())))?;
    SignerKey::parse(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

/// The signing key of a loopback server without a users file: kept beside the store (never
/// in it), made on first use, so the same log is signed by the same key run after run.
pub fn development_key(store: &Store, audit_dir: &Path) -> Result<(SignerKey, PathBuf), CliError> {
    let path = super::beside_store(store, "audit-key").unwrap_or_else(|| audit_dir.with_extension("audit-key"));
    if path.exists() {
        return Ok((load_signer(store, &path)?, path));
    }
    let signer = SignerKey::generate("proxima/audit").map_err(|e| CliError::Usage(e.to_string()))?;
    write_new_key(&path, &signer.encode()).map_err(|e| {
        CliError::Usage(format!(
            "cannot write the development audit key {}: {e}",
            path.display()
        ))
    })?;
    Ok((signer, path))
}

fn write_new_key(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{text}")?;
    file.sync_all()
}

/// Runs `proxima audit`.
pub async fn run(store: Store, args: AuditArgs) -> Result<(), CliError> {
    match args.what {
        AuditCommand::Key { out, name } => {
            let signer = SignerKey::generate(&name).map_err(|e| CliError::Usage(e.to_string()))?;
            write_new_key(&out, &signer.encode())
                .map_err(|e| CliError::Usage(format!("cannot write the key to {}: {e}", out.display())))?;
            super::print(format!(
                "signing key written to {} (keep it out of the store)",
                out.display()
            ))?;
            super::print(format!("public key: {}", signer.verifier().encode()))?;
            Ok(())
        }
        AuditCommand::Verify {
            key,
            dir,
            checkpoint,
            max_unsigned_age,
        } => {
            let dir = audit_dir(&store, dir.as_deref())?;
            let key_text = match std::fs::read_to_string(&key) {
                Ok(text) => text,
                Err(_) => key.clone(),
            };
            let key = VerifierKey::parse(key_text.trim()).map_err(|e| CliError::Usage(e.to_string()))?;
            if !dir.join(proxima_audit::log::LOG_DIR).is_dir() {
                return Err(CliError::Usage(format!("{}: no audit log here", dir.display())));
            }
            let kept = match &checkpoint {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?,
                ),
                None => None,
            };
            let dir_for_task = dir.clone();
            let report =
                tokio::task::spawn_blocking(move || proxima_audit::verify(&dir_for_task, &key, kept.as_deref()))
                    .await
                    .map_err(|e| CliError::Query(e.to_string()))?
                    .map_err(|e| CliError::Usage(e.to_string()))?;
            let latest = report.checkpoints.last();
            super::print(format!(
                "{}: {} records{}, {} signed checkpoints (latest: size {}{})",
                dir.display(),
                report.records,
                if report.cut > 0 {
                    format!(
                        " (the {} before them, written before {}, deleted by the audit retention)",
                        report.cut,
                        report.cut_before.as_deref().unwrap_or("an unknown time")
                    )
                } else {
                    String::new()
                },
                report.checkpoints.len(),
                latest.map_or(0, |c| c.size),
                latest.map(|c| format!(", {}", c.time)).unwrap_or_default()
            ))?;
            let mut stale = None;
            if report.unsigned_tail > 0 {
                let since = report.unsigned_since.as_deref().unwrap_or("an unknown time");
                let age = chrono::DateTime::parse_from_rfc3339(since)
                    .ok()
                    .and_then(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).to_std().ok());
                if age.is_none_or(|age| age > max_unsigned_age) {
                    stale = Some(format!(
                        "the last {} records, from {since} on, are older than {} and not covered by any checkpoint: \
                         a server that stopped without signing (start it again with its key), or checkpoints deleted \
                         (compare with a checkpoint you kept: --checkpoint)",
                        report.unsigned_tail,
                        humantime_like(max_unsigned_age)
                    ));
                } else {
                    super::print(format!(
                        "note: the last {} records are not yet covered by a checkpoint (the server signs one every N records or M seconds, and at shutdown)",
                        report.unsigned_tail
                    ))?;
                }
            }
            if report.open_intents > 0 {
                super::print(format!(
                    "note: {} accesses have an intent but no outcome (still running, or the server stopped during them)",
                    report.open_intents
                ))?;
            }
            if report.torn_tail {
                super::print(
                    "note: the last line is torn (the server stopped while writing it; it was never acknowledged)",
                )?;
            }
            if report.ok() && stale.is_none() {
                super::print("ok: every record is in order and matches every signed checkpoint")?;
                return Ok(());
            }
            if let Some(stale) = &stale {
                super::print(format!("unsigned: {stale}"))?;
            }
            for finding in &report.findings {
                super::print(format!("{}: {}", finding.kind, finding.message))?;
            }
            Err(CliError::Usage(format!(
                "the audit log does not verify: {} problem(s) found",
                report.findings.len() + usize::from(stale.is_some())
            )))
        }
    }
}

/// `3600 s` as `1h`, `90 s` as `90s`: how a duration flag was probably written.
fn humantime_like(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// What every audit log the binary opens applies to its records: a device UUID is written
/// as its keyed hash under the store's erasure hash key (the hash erasure records name a
/// device by), so the log never holds a UUID that a revocation could not take out again.
pub async fn redactor(store: &Store) -> Result<proxima_audit::Redactor, CliError> {
    let key = proxima_storage::keys::erasure_hash_key(store).await?;
    Ok(proxima_audit::Redactor::uuids(move |uuid| {
        proxima_storage::erasure::keyed_hash(&key, uuid)
    }))
}

/// The audit of a local command that reads or changes the store directly (`proxima sql`,
/// `proxima erasure revoke`): recorded under `local:<OS user>`, signed if given the key.
pub struct LocalAudit {
    log: proxima_audit::AuditLog,
    purpose: Option<String>,
    principal: String,
    params: Vec<String>,
}

impl LocalAudit {
    /// Opens the audit log in `dir` (default: beside the store, see [`audit_dir`]).
    pub async fn open(
        store: &Store,
        dir: Option<&Path>,
        key: Option<&Path>,
        purpose: Option<String>,
        params: Vec<String>,
    ) -> Result<Self, CliError> {
        let dir = audit_dir(store, dir)?;
        let options = proxima_audit::AuditLogOptions {
            redactor: Some(redactor(store).await?),
            ..proxima_audit::AuditLogOptions::default()
        };
        let log = match key {
            Some(key) => proxima_audit::AuditLog::open(&dir, load_signer(store, key)?, options),
            None => proxima_audit::AuditLog::open_unsigned(&dir, options),
        }
        .map_err(|e| {
            CliError::Usage(format!(
                "every statement is audited, and the audit log in {} cannot be opened: {e}",
                dir.display()
            ))
        })?;
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Ok(Self {
            log,
            purpose,
            principal: format!("local:{user}"),
            params,
        })
    }

    /// A record of `action` by the local user.
    pub fn record(
        &self,
        phase: proxima_audit::Phase,
        decision: proxima_audit::Decision,
        action: &str,
    ) -> proxima_audit::Record {
        let mut record = proxima_audit::Record::new(
            phase,
            self.principal.clone(),
            "local",
            action,
            decision,
            "whoever reads the store's files",
        );
        if !self.params.is_empty() {
            record.params = vec![self.params.clone()];
        }
        record.purpose.clone_from(&self.purpose);
        record
    }

    /// Appends `record` (synced before it returns).
    pub async fn append(&self, record: proxima_audit::Record) -> Result<u64, CliError> {
        self.log
            .append(record)
            .await
            .map_err(|e| CliError::Usage(format!("nothing was done: {e}")))
    }
}
