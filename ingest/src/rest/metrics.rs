//! The service's Prometheus metrics (`GET /metrics`, text exposition format).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use proxima_engine::telemetry::{ServiceMetrics, latency_histogram};
use proxima_storage::MaintenanceStats;
use proxima_storage::wal::WalStats;

/// Labels of `proxima_http_requests`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route pattern (`/v1/devices/{uuid}`), or `unmatched`.
    pub route: String,
    /// The method.
    pub method: String,
    /// The status code.
    pub status: u16,
}

/// Labels of `proxima_http_request_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route pattern, or `unmatched`.
    pub route: String,
    /// The method (`other` for one HTTP does not define).
    pub method: String,
}

/// Labels of `proxima_alerts_issued`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabels {
    /// `high` or `medium`.
    pub priority: String,
}

/// Every metric of the REST service.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Requests by route, method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// How long requests took to answer, by route and method.
    pub request_seconds: Family<RouteLabels, Histogram>,
    /// Observations acknowledged.
    pub observations_accepted: Counter,
    /// Observations in refused requests.
    pub observations_rejected: Counter,
    /// WAL bytes and sync latency.
    pub wal: WalStats,
    /// Parquet files written by flushes.
    pub files_flushed: Counter,
    /// Rows written by flushes.
    pub rows_flushed: Counter,
    /// Compactions of a day.
    pub compaction_runs: Counter,
    /// Alerts issued by priority.
    pub alerts_issued: Family<PriorityLabels, Counter>,
    /// Time to trace a case.
    pub trace_seconds: Histogram,
    /// Days tracing lookups (REST and Flight SQL alike) had to read whole because the
    /// observed index did not cover them (0 on a healthy store); set when rendered.
    pub lookup_days_scanned: Gauge,
    /// Rows tracing lookups decoded; set when rendered.
    pub lookup_rows_read: Gauge,
    /// Sightings of rotating identifiers that tracing lookups refused, by reason
    /// (`replayed`: heard outside the identifier's epoch; `unknown`: no key issued it); set
    /// when rendered. Phones are never told.
    pub lookup_identifiers_refused: Family<ReasonLabels, Gauge>,
    /// Staff password logins since start, REST and Flight SQL together, by outcome (`ok`,
    /// `wrong`, `throttled`, `busy`); set when rendered.
    pub logins: Family<OutcomeLabels, Gauge>,
}

/// Labels of `proxima_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// Proxima's version (`CARGO_PKG_VERSION`).
    pub version: String,
}

/// Labels of `proxima_logins`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok`, `wrong` (user name or password), `throttled` (too many failures), `busy`.
    pub outcome: String,
}

/// Labels of `proxima_lookup_identifiers_refused`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `replayed` or `unknown`.
    pub reason: String,
}

impl Metrics {
    /// Creates and registers every metric; the write side's counters are `storage`'s, the
    /// Flight SQL service's are `service`.
    pub fn new(storage: &MaintenanceStats, service: &ServiceMetrics) -> Self {
        let mut registry = Registry::with_prefix("proxima");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests (until the response's head), by route and method",
            request_seconds.clone(),
        );
        service.register(&mut registry);
        let observations_accepted = Counter::default();
        registry.register(
            "observations_accepted",
            "Observations acknowledged (durable in the WAL)",
            observations_accepted.clone(),
        );
        let observations_rejected = Counter::default();
        registry.register(
            "observations_rejected",
            "Observations in refused requests",
            observations_rejected.clone(),
        );
        let wal = storage.wal.clone();
        registry.register("wal_bytes", "Bytes appended to the write-ahead log", wal.bytes.clone());
        registry.register(
            "wal_sync_seconds",
            "Latency of write-ahead log syncs (one per group of requests)",
            wal.sync_seconds.clone(),
        );
        let files_flushed = storage.files_flushed.clone();
        registry.register(
            "files_flushed",
            "Parquet files written by flushes",
            files_flushed.clone(),
        );
        let rows_flushed = storage.rows_flushed.clone();
        registry.register("rows_flushed", "Rows written by flushes", rows_flushed.clone());
        let compaction_runs = storage.compaction_runs.clone();
        registry.register("compaction_runs", "Day compactions", compaction_runs.clone());
        let alerts_issued = Family::<PriorityLabels, Counter>::default();
        registry.register("alerts_issued", "Alerts issued by priority", alerts_issued.clone());
        let trace_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register("trace_seconds", "Time to trace a reported case", trace_seconds.clone());
        let lookup_days_scanned = Gauge::default();
        registry.register(
            "lookup_days_scanned",
            "Days tracing lookups read whole (the observed index did not cover them)",
            lookup_days_scanned.clone(),
        );
        let lookup_rows_read = Gauge::default();
        registry.register(
            "lookup_rows_read",
            "Rows tracing lookups decoded",
            lookup_rows_read.clone(),
        );
        let lookup_identifiers_refused = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "lookup_identifiers_refused",
            "Sightings of rotating identifiers tracing lookups refused: replayed (outside the identifier's epoch) or \
             unknown (no key issued it); a sighting read by several lookups counts in each",
            lookup_identifiers_refused.clone(),
        );
        // `proxima_build_info{version} 1`: which version each node runs, for dashboards
        // and alerts on a mixed fleet.
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: proxima_engine::PROXIMA_VERSION.to_string(),
            })
            .set(1);
        registry.register(
            "build_info",
            "The Proxima version this process runs (always 1)",
            build_info,
        );
        let logins = Family::<OutcomeLabels, Gauge>::default();
        registry.register(
            "logins",
            "Staff password logins since start (REST and Flight SQL) by outcome: ok, wrong (user name or password), \
             throttled (refused unchecked after too many failures), busy (every password check slot taken)",
            logins.clone(),
        );
        Self {
            logins,
            registry,
            requests,
            request_seconds,
            observations_accepted,
            observations_rejected,
            wal,
            files_flushed,
            rows_flushed,
            compaction_runs,
            alerts_issued,
            trace_seconds,
            lookup_days_scanned,
            lookup_rows_read,
            lookup_identifiers_refused,
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
