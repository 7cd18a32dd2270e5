//! `proxima erasure`: what erasure on revocation has done, and proof that it holds.
//!
//! `status` lists the revoked devices waiting for the next erasure round and the completed
//! erasures, each by the keyed hash its record keeps, with what was rewritten; `verify`
//! reads every Parquet file of the store and every segment of the write-ahead logs and
//! exits 1 if any row names an erased device or, up to its erasure, one of its identifiers
//! (`proxima_storage::erasure::verify`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use proxima_engine::{SessionFactory, SessionOptions, Store};
use proxima_storage::erasure::{self, verify};

use super::CliError;

/// Arguments of `proxima erasure`.
#[derive(Debug, Args)]
pub struct ErasureArgs {
    #[command(subcommand)]
    what: ErasureCommand,
}

#[derive(Debug, Subcommand)]
enum ErasureCommand {
    /// List revoked devices waiting for erasure and completed erasures, with what each
    /// rewrote.
    Status,
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
