//! The Maintainer: the one loop that keeps the store in shape.
//!
//! Every interval it flushes the write-ahead log (if this process has one),
//! tells its listeners (the REST service reloads alerts), and compacts the
//! recent days that are due; every hour it applies retention (alerts age
//! off sooner) and builds the `observed_index` of days that have none; every
//! `erasure_interval` it erases revoked devices (`crate::erasure`), and once
//! the sweep grace has passed deletes the files the erasure replaced. It
//! runs on a runtime of its own ([`Maintainer::spawn`]: one thread, so
//! DataFusion work in a flush or an index build never starves request
//! handlers), is started by `proxima serve` whether or not REST is enabled,
//! and [`Maintainer::run_once`] does one whole round for `proxima maintain
//! --once`. Opening it is the write side's wiring: interrupted commits are
//! recovered, the WAL is replayed, and what it replays is stored before
//! anything else runs.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use proxima_engine::clock::Clock;
use proxima_engine::{SessionFactory, Table};
use tracing::{info, warn};

use crate::compaction;
use crate::erasure;
use crate::error::Result;
use crate::flush::{Flushed, Flusher};
use crate::index_build;
use crate::lease::{self, Lease, Work};
use crate::marks::committed_through;
use crate::registry;
use crate::retention;
use crate::wal::{OsFs, Replayed, Wal, WalStats};
use crate::writer::PartitionWriter;

/// How often the Maintainer runs each part of its work.
#[derive(Debug, Clone)]
pub struct MaintenanceOptions {
    /// Flush (and compaction check) interval: acknowledged rows reach SQL within this.
    pub interval: Duration,
    /// Retention and the rebuild of stale indexes run this often.
    pub housekeeping_interval: Duration,
    /// Days of data kept.
    pub retention_days: u32,
    /// How long an alert is shown; its day folder goes once every alert in it expired.
    pub alert_ttl: chrono::Duration,
    /// Revoked devices are erased this often.
    pub erasure_interval: Duration,
    /// How long a file replaced by compaction or erasure stays for queries that listed it
    /// before it is deleted.
    pub sweep_grace: Duration,
    /// Whether each flush keeps the analysts' contact rollup (off only to measure what it
    /// costs: the rollup is then wrong until its days are rebuilt).
    pub rollups: bool,
}

impl Default for MaintenanceOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            housekeeping_interval: Duration::from_secs(3600),
            retention_days: 21,
            alert_ttl: chrono::Duration::hours(48),
            erasure_interval: Duration::from_secs(3600),
            sweep_grace: compaction::GRACE,
            rollups: true,
        }
    }
}

/// Counters of the write side, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct MaintenanceStats {
    /// WAL bytes and sync latency.
    pub wal: WalStats,
    /// Parquet files written by flushes.
    pub files_flushed: Counter,
    /// Rows written by flushes.
    pub rows_flushed: Counter,
    /// Compactions of a day.
    pub compaction_runs: Counter,
}

/// What the Maintainer is built from.
#[derive(Debug)]
pub struct MaintainerConfig {
    /// Sessions over the store (compaction and index builds read through them).
    pub factory: SessionFactory,
    /// This process's write-ahead log folder, if it takes rows over REST.
    pub wal_dir: Option<PathBuf>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Intervals and retention.
    pub options: MaintenanceOptions,
    /// Counters (shared with the metrics endpoint).
    pub stats: MaintenanceStats,
}

/// Told after every successful flush (the REST service reloads its alerts) and erasure.
#[async_trait]
pub trait FlushListener: Send + Sync + fmt::Debug {
    /// Rows just became visible to SQL.
    async fn flushed(&self);

    /// These devices were just erased from the store (the REST service forgets them).
    async fn erased(&self, _devices: &[String]) {}
}

/// What one [`Maintainer::run_once`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Round {
    /// The flush.
    pub flushed: Flushed,
    /// Day folders compacted.
    pub compactions: usize,
    /// Day folders deleted by retention.
    pub expired_days: usize,
    /// Days whose `observed_index` was built because they had none.
    pub indexes_rebuilt: usize,
    /// Revoked devices erased.
    pub erased: usize,
}

/// The write side's housekeeping, and the flusher of this process's WAL.
pub struct Maintainer {
    factory: SessionFactory,
    writer: PartitionWriter,
    flusher: Option<Flusher>,
    clock: Arc<dyn Clock>,
    options: MaintenanceOptions,
    stats: MaintenanceStats,
    listeners: Mutex<Vec<Arc<dyn FlushListener>>>,
    /// When the files the last erasure replaced may be deleted.
    sweep_due: Mutex<Option<chrono::DateTime<chrono::Utc>>>,
}

impl fmt::Debug for Maintainer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maintainer")
            .field("store", self.factory.store())
            .field("wal", &self.flusher.as_ref().map(|f| f.wal().id()))
            .field("options", &self.options)
            .finish()
    }
}

impl Maintainer {
    /// Recovers interrupted commits, opens and replays the WAL (if any), and stores what it
    /// replayed. Returns what the replay found.
    pub async fn open(config: MaintainerConfig) -> Result<(Self, Replayed)> {
        let MaintainerConfig {
            factory,
            wal_dir,
            clock,
            options,
            stats,
        } = config;
        let store = factory.store().clone();
        let writer = PartitionWriter::new(store.clone(), "serve");
        writer.recover().await?;
        let mut replayed = Replayed::default();
        let flusher = match wal_dir {
            Some(dir) => {
                let committed = |id, tables: Vec<_>, oldest| {
                    let store = store.clone();
                    async move { committed_through(&store, id, &tables, oldest).await }
                };
                // A store with master keys keeps its WAL sealed with them too.
                let keys = store.keyring().map(|k| Arc::clone(k.provider()));
                let (wal, found) = Wal::open_with(Arc::new(OsFs), keys, &dir, stats.wal.clone(), committed).await?;
                replayed = found;
                let flusher = Flusher::new(wal, writer.clone());
                Some(if options.rollups {
                    flusher.with_rollups(Arc::clone(factory.index()))
                } else {
                    flusher
                })
            }
            None => None,
        };
        let maintainer = Self {
            factory,
            writer,
            flusher,
            clock,
            options,
            stats,
            listeners: Mutex::default(),
            sweep_due: Mutex::default(),
        };
        let flushed = maintainer.flush().await?;
        if replayed.records > 0 {
            info!(target: "proxima::serve", rows = flushed.rows, records = replayed.records, "stored the rows the write-ahead log replayed");
        }
        Ok((maintainer, replayed))
    }

    /// This process's WAL (none when it takes no rows over REST).
    pub fn wal(&self) -> Option<&Wal> {
        self.flusher.as_ref().map(Flusher::wal)
    }

    /// The counters.
    pub fn stats(&self) -> &MaintenanceStats {
        &self.stats
    }

    /// Registers `listener` to be told after every flush of the loop.
    pub fn add_listener(&self, listener: Arc<dyn FlushListener>) {
        self.listeners
            .lock()
            .expect("listener lock is never poisoned")
            .push(listener);
    }

    /// The listeners, copied out of their lock (they are told with it released).
    fn listeners(&self) -> Vec<Arc<dyn FlushListener>> {
        self.listeners.lock().expect("listener lock is never poisoned").clone()
    }

    /// Writes everything the WAL acknowledged to the store (nothing without a WAL); after
    /// it returns, a query sees it. Every flush, periodic or before a trace, comes here.
    pub async fn flush(&self) -> Result<Flushed> {
        let Some(flusher) = &self.flusher else {
            return Ok(Flushed::default());
        };
        let flushed = flusher.flush().await?;
        self.stats.files_flushed.inc_by(flushed.commit.files as u64);
        self.stats.rows_flushed.inc_by(flushed.rows);
        Ok(flushed)
    }

    /// Flushes, tells the listeners, and compacts what is due. Returns the compactions run.
    pub async fn tick(&self) -> Result<(Flushed, usize)> {
        let flushed = self.flush().await?;
        let listeners = self.listeners();
        for listener in listeners {
            listener.flushed().await;
        }
        let now = self.clock.now();
        // One compactor at a time among the processes on the store.
        let runs = match Lease::acquire_for(Work::Compaction, self.factory.store(), &lease::this_process(), now).await?
        {
            Some(held) => {
                let runs = compaction::compact_due(&self.factory, &self.writer, now, self.options.sweep_grace).await;
                held.release().await?;
                runs?
            }
            None => 0,
        };
        self.stats.compaction_runs.inc_by(runs as u64);
        let due = *self.sweep_due.lock().expect("sweep lock is never poisoned");
        if due.is_some_and(|due| now >= due) {
            compaction::sweep_everywhere(self.factory.store(), now, self.options.sweep_grace).await?;
            *self.sweep_due.lock().expect("sweep lock is never poisoned") = None;
            info!(target: "proxima::erasure", "deleted the files the last erasure replaced");
        }
        Ok((flushed, runs))
    }

    /// Erases every revoked device (after a flush, so the WAL holds nothing of it); the
    /// files it replaced are deleted by the first [`Maintainer::tick`] after the sweep
    /// grace. Returns how many devices were erased.
    pub async fn erase_revoked(&self) -> Result<usize> {
        self.flush().await?;
        let now = self.clock.now();
        let oldest = retention::oldest_kept_day(now.date_naive(), self.options.retention_days);
        let from = oldest
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_micros();
        let erased = erasure::erase_revoked(&self.factory, &self.writer, from, now.timestamp_micros(), now).await?;
        if !erased.is_empty() {
            // The grace counts from the round's last replacement, not its start.
            let done = self.clock.now();
            let grace = chrono::Duration::from_std(self.options.sweep_grace).unwrap_or(chrono::Duration::MAX);
            *self.sweep_due.lock().expect("sweep lock is never poisoned") =
                Some(done.checked_add_signed(grace).unwrap_or(done));
            let listeners = self.listeners();
            let devices: Vec<String> = erased.into_iter().map(|(device, _)| device).collect();
            for listener in listeners {
                listener.erased(&devices).await;
                listener.flushed().await;
            }
            return Ok(devices.len());
        }
        Ok(0)
    }

    /// Retention (alerts age off after their TTL), the `observed_index` of days written
    /// before it existed, the sweep of every folder (files replaced more than the grace
    /// ago) and of idempotency keys a day old. Returns the days deleted and the indexes built.
    pub async fn housekeeping(&self) -> Result<(usize, usize)> {
        // One process at a time among those on the store; the others skip this round.
        let store = self.factory.store();
        let Some(held) =
            Lease::acquire_for(Work::Housekeeping, store, &lease::this_process(), self.clock.now()).await?
        else {
            return Ok((0, 0));
        };
        let done = self.housekeeping_held().await;
        held.release().await?;
        done
    }

    async fn housekeeping_held(&self) -> Result<(usize, usize)> {
        let store = self.factory.store();
        let today = self.clock.now().date_naive();
        let mut expired = retention::apply(store, today, self.options.retention_days).await?.len();
        let alert_days = (self.options.alert_ttl.num_hours().max(1) as u32).div_ceil(24) + 1;
        expired += retention::apply_table(store, Table::Alerts, today, alert_days)
            .await?
            .len();
        if expired > 0 {
            info!(target: "proxima::serve", days = expired, "retention deleted day folders");
            crate::rollup::after_retention(&self.factory, &self.writer, today, self.options.retention_days).await?;
            // Devices no observation left in the window names go too.
            let oldest = retention::oldest_kept_day(today, self.options.retention_days);
            if let Some(devices) = erasure::expire_inactive(&self.factory, &self.writer, oldest).await?
                && !devices.is_empty()
            {
                let listeners = self.listeners();
                for listener in listeners {
                    listener.erased(&devices).await;
                }
            }
        }
        let rebuilt = index_build::backfill_missing(&self.factory, &self.writer, self.clock.now()).await?;
        // What an erasure replaced is deleted by the first tick after the grace; this also
        // catches files replaced by a process that stopped before then.
        compaction::sweep_everywhere(store, self.clock.now(), self.options.sweep_grace).await?;
        // Idempotency keys past their window (an hour's margin for clocks).
        let before = self.clock.now() - registry::UPLOAD_KEY_WINDOW - chrono::Duration::hours(1);
        let shared = registry::SharedRegistry::open(store).await?;
        shared.sweep_upload_keys(before).await?;
        // Tombstones of forgotten devices, read by every node long before.
        shared.sweep_gone(self.clock.now() - registry::GONE_KEPT).await?;
        Ok((expired, rebuilt))
    }

    /// One whole round: erasure of revoked devices, flush, compaction (and the sweep of
    /// what an erasure replaced, if its grace is over), retention, index upkeep (`proxima
    /// maintain --once`).
    pub async fn run_once(&self) -> Result<Round> {
        let erased = self.erase_revoked().await?;
        let (flushed, compactions) = self.tick().await?;
        let (expired_days, indexes_rebuilt) = self.housekeeping().await?;
        Ok(Round {
            flushed,
            compactions,
            expired_days,
            indexes_rebuilt,
            erased,
        })
    }

    /// The loop, until `shutdown` resolves; then a last flush. Errors are logged and the
    /// work is tried again at the next tick (a failed flush keeps its rows).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.options.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut housekeeping = tokio::time::interval(self.options.housekeeping_interval);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut erasure = tokio::time::interval(self.options.erasure_interval);
        erasure.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {
                    if let Err(e) = self.tick().await {
                        warn!(target: "proxima::serve", error = %e, "maintenance failed; will retry");
                    }
                }
                _ = housekeeping.tick() => {
                    if let Err(e) = self.housekeeping().await {
                        warn!(target: "proxima::serve", error = %e, "retention or index upkeep failed; will retry");
                    }
                }
                _ = erasure.tick() => {
                    if let Err(e) = self.erase_revoked().await {
                        warn!(target: "proxima::erasure", error = %e, "erasure of revoked devices failed; will retry");
                    }
                }
            }
        }
        match self.flush().await {
            Ok(flushed) => info!(target: "proxima::serve", rows = flushed.rows, "final flush"),
            Err(e) => {
                warn!(target: "proxima::serve", error = %e, "final flush failed; the write-ahead log keeps the rows for the next start")
            }
        }
    }

    /// Runs [`Maintainer::run`] on a one-thread runtime of its own, on its own thread.
    pub fn spawn(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        // PERF: flushes, compactions and index builds are DataFusion work that keeps a worker
        // busy for seconds; on their own runtime (one thread) they cannot starve the request
        // handlers (on the shared runtime they pushed upload p99 from 30 ms to over a second).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("proxima-maintenance")
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("proxima-maintenance".into())
            .spawn(move || runtime.block_on(self.run(shutdown)))
    }
}
