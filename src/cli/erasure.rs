//! `proxima erasure`: what erasure on revocation has done, and proof that it holds.
//!
//! `revoke` is an operator's revocation, for a device that has no owner's key to sign one
//! (imported) or whose owner asked by another channel: audited, the device named in the
//! audit record by its keyed hash only. `hash` prints that keyed hash, the one the audit
//! log names the device by wherever a statement wrote its UUID. `status` lists the revoked devices waiting for the next erasure round and the completed
//! erasures, each by the keyed hash its record keeps, with what was rewritten; `verify`
//! reads every Parquet file of the store and every segment of the write-ahead logs and
//! exits 1 if any row names an erased device or, up to its erasure, one of its identifiers
//! (`proxima_storage::erasure::verify`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use proxima_engine::{SessionFactory, SessionOptions, Store};
use proxima_storage::erasure::{self, verify};

use super::CliError;
use super::audit::LocalAudit;
use proxima_audit::{Decision, Phase};

/// Arguments of `proxima erasure`.
#[derive(Debug, Args)]
pub struct ErasureArgs {
    #[command(subcommand)]
    what: ErasureCommand,
}

#[derive(Debug, Subcommand)]
enum ErasureCommand {
    /// Revoke a registered device on its owner's behalf (an imported device has no key to
    /// sign a revocation): the next erasure round erases it. Audited under local:<OS user>.
    Revoke {
        /// The device's UUID.
        device: String,
        /// Folder of the audit log the revocation is recorded in (default: `_audit` in a
        /// local store).
        #[arg(long, env = "PROXIMA_AUDIT_DIR", value_name = "DIR")]
        audit_dir: Option<PathBuf>,
        /// The key that signs the audit log's checkpoints.
        #[arg(long, env = "PROXIMA_AUDIT_KEY", value_name = "FILE")]
        audit_key: Option<PathBuf>,
    },
    /// List revoked devices waiting for erasure and completed erasures, with what each
    /// rewrote.
    Status,
    /// Print the keyed hash the audit log and erasure records name a device by
    /// (`uuid:<hash>`), to find who asked about it (needs the master key of a store that has
    /// one).
    Hash {
        /// The device's UUID.
        device: String,
    },
    /// Read every file and write-ahead log segment of the store and exit 1 if any row names
    /// an erased device or one of its identifiers.
    Verify {
        /// Write-ahead log folders to read too (default: `_wal` in a local store). Give
        /// every serving process's.
        #[arg(long = "wal-dir", value_name = "DIR")]
        wal_dirs: Vec<PathBuf>,
    },
}

/// Runs `proxima erasure`.
pub async fn run(store: Store, args: ErasureArgs) -> Result<(), CliError> {
    let factory = SessionFactory::new(store.clone(), SessionOptions::default())?;
    match args.what {
        ErasureCommand::Status => status(&factory).await,
        ErasureCommand::Hash { device } => {
            let device =
                proxima_engine::ids::device_uuid(&device).map_err(|e| CliError::Usage(format!("{device}: {e}")))?;
            let key = proxima_storage::keys::erasure_hash_key(&store).await?;
            super::print(format!("uuid:{}", erasure::keyed_hash(&key, &device)))?;
            Ok(())
        }
        ErasureCommand::Revoke {
            device,
            audit_dir,
            audit_key,
        } => revoke(&factory, &device, audit_dir.as_deref(), audit_key.as_deref()).await,
        ErasureCommand::Verify { mut wal_dirs } => {
            if let Some(missing) = wal_dirs.iter().find(|dir| !dir.is_dir()) {
                return Err(CliError::Usage(format!(
                    "--wal-dir {}: no such folder",
                    missing.display()
                )));
            }
            if wal_dirs.is_empty()
                && let Some(root) = store.local_root()
            {
                wal_dirs.push(root.join("_wal"));
            }
            check(&factory, &wal_dirs).await
        }
    }
}

async fn revoke(
    factory: &SessionFactory,
    device: &str,
    audit_dir: Option<&std::path::Path>,
    audit_key: Option<&std::path::Path>,
) -> Result<(), CliError> {
    let store = factory.store();
    let device = proxima_engine::ids::device_uuid(device).map_err(|e| CliError::Usage(format!("{device}: {e}")))?;
    // The audit names the device by the keyed hash its erasure record will carry, so the
    // log keeps no UUID the erasure removes from the store.
    let hash = erasure::keyed_hash(&proxima_storage::keys::erasure_hash_key(store).await?, &device);
    let audit = LocalAudit::open(store, audit_dir, audit_key, Some(format!("erasure:{hash}")), Vec::new()).await?;
    let ctx = factory.session().await?;
    // `device` is a canonical UUID, safe inside a literal.
    let known = count(
        &ctx,
        &format!("SELECT count(*) FROM devices WHERE device_uuid = '{device}'"),
    )
    .await?;
    let revoked = count(
        &ctx,
        &format!("SELECT count(*) FROM revocations WHERE device_uuid = '{device}'"),
    )
    .await?;
    let refusal = if known == 0 {
        Some(format!("no registered device {device} (or it was erased already)"))
    } else if revoked > 0 {
        Some(format!(
            "device {device} is revoked already and waits for the next erasure round"
        ))
    } else {
        None
    };
    if let Some(refusal) = refusal {
        let mut record = audit.record(Phase::Decision, Decision::Deny, "cli:erasure-revoke");
        record.error = Some(refusal.replace(&device, &hash));
        audit.append(record).await?;
        return Err(CliError::Usage(refusal));
    }
    let mut intent = audit.record(Phase::Intent, Decision::Allow, "cli:erasure-revoke");
    intent.objects = vec!["revocations".into()];
    let seq = audit.append(intent.clone()).await?;
    let written = write_revocation(store, &device).await;
    let mut done = intent.done(seq);
    if let Err(e) = &written {
        done.error = Some(e.to_string().replace(&device, &hash));
    }
    audit.append(done).await?;
    written?;
    super::print(format!(
        "revoked {device} (erasure:{hash} in the audit log); the next erasure round of proxima serve or proxima \
         maintain erases it"
    ))
}

async fn count(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<i64, CliError> {
    use arrow::array::AsArray;
    let batches = ctx
        .sql(sql)
        .await
        .map_err(|e| CliError::Query(e.to_string()))?
        .collect()
        .await
        .map_err(|e| CliError::Query(e.to_string()))?;
    Ok(batches
        .first()
        .map(|b| b.column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0))
        .unwrap_or(0))
}

async fn write_revocation(store: &Store, device: &str) -> Result<(), CliError> {
    use arrow::array::{RecordBatch, StringArray, TimestampMicrosecondArray};
    let table = proxima_engine::Table::Revocations;
    let row = RecordBatch::try_new(
        table.file_schema(),
        vec![
            std::sync::Arc::new(StringArray::from(vec![device.to_string()])),
            std::sync::Arc::new(
                TimestampMicrosecondArray::from(vec![chrono::Utc::now().timestamp_micros()]).with_timezone("UTC"),
            ),
        ],
    )?;
    let writer = proxima_storage::PartitionWriter::new(store.clone(), "erasure-revoke");
    let mut transaction = writer.begin();
    transaction.write_file(table, None, &[row]).await?;
    transaction.commit().await?;
    Ok(())
}

async fn status(factory: &SessionFactory) -> Result<(), CliError> {
    let pending = erasure::pending(factory).await?;
    let done = erasure::completed(factory.store()).await?;
    super::print(format!(
        "{}: {} revoked device(s) waiting for erasure, {} erased",
        factory.store(),
        pending.len(),
        done.len()
    ))?;
    for p in &pending {
        super::print(format!(
            "pending  revoked {}  (erased by the next round of proxima serve or proxima maintain)",
            p.revoked_at.format("%Y-%m-%d %H:%M:%S UTC")
        ))?;
    }
    for record in &done {
        let tables: Vec<String> = record
            .tables
            .iter()
            .map(|t| {
                format!(
                    "{} {} rows in {} files",
                    t.table,
                    t.done.rows,
                    t.done.rewritten + t.done.deleted
                )
            })
            .collect();
        super::print(format!(
            "erased   {}  revoked {}, erased {}: {} identifiers; {}",
            record.device,
            record.revoked_at.format("%Y-%m-%d %H:%M:%S UTC"),
            record.erased_at.format("%Y-%m-%d %H:%M:%S UTC"),
            record.heard_as.len(),
            if tables.is_empty() {
                "no rows were stored".to_string()
            } else {
                tables.join(", ")
            }
        ))?;
    }
    Ok(())
}

async fn check(factory: &SessionFactory, wal_dirs: &[PathBuf]) -> Result<(), CliError> {
    let report = verify::verify(factory, wal_dirs).await?;
    let read = format!(
        "{} erasure(s) checked against {} rows of {} files and {} write-ahead log segment(s)",
        report.erasures, report.rows, report.files, report.segments
    );
    if report.findings.is_empty() {
        return super::print(format!("ok: {read}: no row names an erased device"));
    }
    for finding in &report.findings {
        super::print(format!(
            "found: {}: {} row(s) of {} whose {} names erased device {}{}",
            finding.place,
            finding.rows,
            finding.table,
            finding.column,
            finding.device,
            if finding.replaced {
                " (a replaced file the sweep has not deleted yet: see --sweep-grace)"
            } else {
                ""
            }
        ))?;
    }
    Err(CliError::Usage(format!(
        "erasure does not hold: {} place(s) still hold rows of erased devices ({read})",
        report.findings.len()
    )))
}
