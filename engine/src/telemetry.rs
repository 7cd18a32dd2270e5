//! What the Flight SQL service measures about the work it does for staff: each call's
//! latency and each query's outcome and duration, by role. It records them; the REST
//! service's `Metrics` registers them beside its own, and the operations port renders them
//! (a crate below both, so neither service depends on the other).
//!
//! Every label takes its value from a fixed set (a role name, one of [`QueryOutcome`]'s, a
//! Flight RPC name or `other`), so no client can grow the registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Role;

/// How a query ended, as counted (the label `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryOutcome {
    /// Every row was sent.
    Ok,
    /// Refused by the access policy or the role (permission denied).
    Denied,
    /// The statement was wrong: syntax, an unknown name, a bad argument.
    Invalid,
    /// A resource limit stopped it (memory, the trace window).
    Exhausted,
    /// The client cancelled it or went away before the end.
    Cancelled,
    /// It ran past the query timeout.
    Timeout,
    /// Anything else (an internal error).
    Error,
}

impl QueryOutcome {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Invalid => "invalid",
            Self::Exhausted => "exhausted",
            Self::Cancelled => "cancelled",
            Self::Timeout => "timeout",
            Self::Error => "error",
        }
    }
}

/// Labels of `proxima_queries` and `proxima_query_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    /// The caller's role (`tracer`, `analyst`, `auditor`, `admin`).
    pub role: &'static str,
    /// How it ended ([`QueryOutcome::name`]).
    pub outcome: &'static str,
}

/// Labels of `proxima_flight_request_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The Flight RPC (`Handshake`, `GetFlightInfo`, `DoGet`, `DoPut`, `DoAction`, …), or
    /// `other` for a path that is none of them.
    pub method: &'static str,
    /// The gRPC status the call answered with (`ok`, `unauthenticated`, …).
    pub code: &'static str,
}

/// The Flight RPCs, by the last segment of their gRPC path.
const FLIGHT_METHODS: [&str; 10] = [
    "Handshake",
    "ListFlights",
    "GetFlightInfo",
    "PollFlightInfo",
    "GetSchema",
    "DoGet",
    "DoPut",
    "DoExchange",
    "DoAction",
    "ListActions",
];

/// The bounded label of a gRPC path (`/arrow.flight.protocol.FlightService/DoGet` → `DoGet`).
pub fn flight_method(path: &str) -> &'static str {
    let last = path.rsplit('/').next().unwrap_or_default();
    FLIGHT_METHODS.iter().find(|m| **m == last).copied().unwrap_or("other")
}

/// The bounded label of a gRPC status code (its number as a header value, `None` for ok).
pub fn grpc_code(code: Option<i32>) -> &'static str {
    match code.unwrap_or(0) {
        0 => "ok",
        1 => "cancelled",
        2 => "unknown",
        3 => "invalid_argument",
        4 => "deadline_exceeded",
        5 => "not_found",
        6 => "already_exists",
        7 => "permission_denied",
        8 => "resource_exhausted",
        9 => "failed_precondition",
        10 => "aborted",
        11 => "out_of_range",
        12 => "unimplemented",
        13 => "internal",
        14 => "unavailable",
        15 => "data_loss",
        16 => "unauthenticated",
        _ => "other",
    }
}

/// The id of one request, in every line logged for it and in the `x-request-id` answer
/// header: the client's own (`x-request-id`) when it is 1 to 64 letters, digits, `-`, `_`,
/// `.` or `:` (nothing a log line could be forged with), else a new UUID v7 (time-ordered).
pub fn request_id(given: Option<&str>) -> String {
    match given {
        Some(id)
            if (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')) =>
        {
            id.to_string()
        }
        _ => uuid::Uuid::now_v7().simple().to_string(),
    }
}

/// The services' shared metrics; clones share the same counters.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    /// Queries by role and outcome.
    pub queries: Family<QueryLabels, Counter>,
    /// How long each query took, from its plan to its last row (or its end), by role and
    /// outcome.
    pub query_seconds: Family<QueryLabels, Histogram>,
    /// How long each Flight SQL call took to answer (for `DoGet`, until the stream starts:
    /// the rows' time is the query's), by RPC and status.
    pub flight_seconds: Family<RpcLabels, Histogram>,
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        Self {
            queries: Family::default(),
            query_seconds: Family::new_with_constructor(latency_histogram),
            flight_seconds: Family::new_with_constructor(latency_histogram),
        }
    }
}

/// Buckets from 1 ms to about 65 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl ServiceMetrics {
    /// Counts one query.
    pub fn query(&self, role: Role, outcome: QueryOutcome, seconds: f64) {
        let labels = QueryLabels {
            role: role.name(),
            outcome: outcome.name(),
        };
        self.queries.get_or_create(&labels).inc();
        self.query_seconds.get_or_create(&labels).observe(seconds);
    }

    /// Puts every metric into `registry` (one with the `proxima` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "queries",
            "Flight SQL statements run or refused, by role and outcome: ok, denied, invalid, exhausted, cancelled, \
             timeout, error",
            self.queries.clone(),
        );
        registry.register(
            "query_duration_seconds",
            "Time from a query's plan to its last row, by role and outcome",
            self.query_seconds.clone(),
        );
        registry.register(
            "flight_request_duration_seconds",
            "Time each Flight SQL call took to answer (DoGet: until its rows start streaming), by RPC and gRPC status",
            self.flight_seconds.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_fixed_sets() {
        assert_eq!(flight_method("/arrow.flight.protocol.FlightService/DoGet"), "DoGet");
        assert_eq!(
            flight_method("/arrow.flight.protocol.FlightService/Handshake"),
            "Handshake"
        );
        assert_eq!(flight_method("/x/DoGetEverything"), "other");
        assert_eq!(flight_method(""), "other");
        assert_eq!(grpc_code(None), "ok");
        assert_eq!(grpc_code(Some(16)), "unauthenticated");
        assert_eq!(grpc_code(Some(99)), "other");
        assert_eq!(grpc_code(Some(-1)), "other");
        assert_eq!(request_id(Some("abc-1.2:3_x")), "abc-1.2:3_x");
        for forged in ["", "a b", "a\nlevel=ERROR", "é", &"x".repeat(65)] {
            let id = request_id(Some(forged));
            assert_eq!(id.len(), 32, "{forged:?} kept");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(request_id(None), request_id(None));
    }
}
