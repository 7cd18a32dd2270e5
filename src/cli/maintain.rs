//! `proxima maintain`: the write side's housekeeping without a server.
//!
//! The same [`Maintainer`] that `proxima serve` runs: erasure of revoked
//! devices, compaction of the recent days, retention, the observed index of
//! days that have none, and, with
//! `--wal-dir`, the flush of a write-ahead log a stopped server left behind.
//! `--once` does one round and prints what it did (for cron jobs and tests);
//! without it the loop runs until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use proxima_engine::clock::SystemClock;
use proxima_engine::{SessionFactory, SessionOptions, Store};
use proxima_storage::{Maintainer, MaintainerConfig, MaintenanceOptions, MaintenanceStats};

use super::CliError;
use super::durations::parse_duration;

/// Arguments of `proxima maintain`.
#[derive(Debug, Args)]
pub struct MaintainArgs {
    /// One round (erasure of revoked devices, flush, compaction, retention, index upkeep), then exit.
    #[arg(long)]
    once: bool,
    /// A write-ahead log folder to replay and flush (one that no running server holds).
    #[arg(long, env = "PROXIMA_WAL_DIR", value_name = "DIR")]
    wal_dir: Option<PathBuf>,
    /// How often the loop flushes and compacts (10s, 1m).
    #[arg(long, env = "PROXIMA_FLUSH_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    interval: Duration,
    /// Days of data kept; older day folders are deleted.
    #[arg(long, env = "PROXIMA_RETENTION_DAYS", default_value_t = 21, value_parser = clap::value_parser!(u32).range(1..))]
    retention_days: u32,
    /// How long an alert is shown; alert day folders go once every alert in them expired.
    #[arg(long, env = "PROXIMA_ALERT_TTL", default_value = "48h", value_parser = parse_duration)]
    alert_ttl: Duration,
    #[command(flatten)]
    erasure: ErasureArgs,
    /// Rotating identifiers: the keys erasure derives a revoked device's identifiers with.
    #[command(flatten)]
    identifiers: super::id_key::IdentifierArgs,
}

/// Erasure's flags, shared by `proxima serve` and `proxima maintain`.
#[derive(Debug, Args)]
pub struct ErasureArgs {
    /// How often revoked devices are erased from the store (every row, file and index entry
    /// naming them rewritten away; see `proxima erasure status`).
    #[arg(long, env = "PROXIMA_ERASURE_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub erasure_interval: Duration,
    /// How long a file that compaction or erasure replaced stays for queries already
    /// reading it before it is deleted.
    #[arg(long, env = "PROXIMA_SWEEP_GRACE", default_value = "15m", value_parser = parse_duration)]
    pub sweep_grace: Duration,
}

impl ErasureArgs {
    /// The options these flags set.
    pub fn apply(&self, options: MaintenanceOptions) -> Result<MaintenanceOptions, CliError> {
        if self.erasure_interval.is_zero() {
            return Err(CliError::Usage("--erasure-interval must be longer than 0s".into()));
        }
        Ok(MaintenanceOptions {
            erasure_interval: self.erasure_interval,
            sweep_grace: self.sweep_grace,
            ..options
        })
    }
}

/// Runs `proxima maintain`.
pub async fn run(store: Store, args: MaintainArgs) -> Result<(), CliError> {
    let alert_ttl =
        chrono::Duration::from_std(args.alert_ttl).map_err(|_| CliError::Usage("--alert-ttl is too long".into()))?;
    let identifiers = args.identifiers.for_sql(&store).await?;
    let factory = SessionFactory::new(
        store.clone(),
        SessionOptions {
            identifiers,
            ..SessionOptions::default()
        },
    )?;
    let (maintainer, replayed) = Maintainer::open(MaintainerConfig {
        factory,
        wal_dir: args.wal_dir,
        clock: Arc::new(SystemClock),
        options: args.erasure.apply(MaintenanceOptions {
            interval: args.interval,
            retention_days: args.retention_days,
            alert_ttl,
            ..MaintenanceOptions::default()
        })?,
        stats: MaintenanceStats::default(),
    })
    .await?;
    if replayed.rows > 0 {
        super::print(format!(
            "stored {} rows the write-ahead log held ({} records)",
            replayed.rows, replayed.records
        ))?;
    }
    if args.once {
        let round = maintainer.run_once().await?;
        super::print(format!(
            "maintained {store}: {} revoked devices erased, {} rows flushed, {} day folders compacted, {} expired, \
             {} observed indexes built",
            round.erased, round.flushed.rows, round.compactions, round.expired_days, round.indexes_rebuilt
        ))?;
        return Ok(());
    }
    super::print(format!("maintaining {store} every {:?} (Ctrl-C stops)", args.interval))?;
    maintainer.run(super::serve::shutdown_signal()).await;
    Ok(())
}
