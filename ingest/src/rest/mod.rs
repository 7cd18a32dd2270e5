//! The REST service: phones, stations, tracers and gateways over HTTP (axum).
//!
//! Wiring, in order: the write side (`proxima_storage::Maintainer`, opened
//! first by the caller) has recovered the store and stored what the WAL
//! replayed; the device registry, idempotency keys and the alert book are
//! loaded from the store; then [`RestService::router`] serves the routes.
//! The Maintainer's loop flushes, compacts and applies retention; it tells
//! this service after each flush, and the alert book is reloaded.
//!
//! Every route answers errors with [`error::ApiError`] (RFC 9457 problem details: `type`, `title`, `status`, `detail`, `error`),
//! and the OpenAPI document at `/openapi.json` is generated from the handlers'
//! annotations in this module tree, so it cannot drift from the code.

pub mod audit;
pub mod body;
pub mod cases;
pub mod challenge;
pub mod dashboard;
pub mod devices;
pub mod error;
pub mod exposure_keys;
pub mod identifiers;
pub mod limits;
pub mod metrics;
pub mod observations;
pub mod server;
pub mod staff;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use datafusion::prelude::ParquetReadOptions;
use proxima_audit::AuditLog;
use proxima_engine::clock::Clock;
use proxima_engine::limits::address_key;
use proxima_engine::login::{LoginGuard, LoginLimits};
use proxima_engine::telemetry::{ServiceMetrics, request_id};
use proxima_engine::{Principal, Role, SessionFactory, Store, Table, Users};
use proxima_storage::Maintainer;
use proxima_storage::flush::Flushed;
use proxima_storage::maintainer::FlushListener;
use proxima_storage::wal::{Entry, Wal};
use tracing::{Instrument, warn};
use utoipa::OpenApi;

pub use cases::AlertBook;
pub use devices::Registry;
pub use error::{ApiError, ApiResult};
pub use limits::{Idempotency, IdempotencyCache, RateLimiter};
pub use metrics::Metrics;
use proxima_storage::registry::SharedRegistry;
pub use staff::StaffAuth;

/// Settings of the REST service (the `proxima serve --http` flags).
#[derive(Debug, Clone)]
pub struct RestOptions {
    /// Largest body of a JSON request, in bytes.
    pub max_body: usize,
    /// Largest body of a bulk request, in bytes.
    pub max_bulk_body: usize,
    /// Most observations in one `POST /v1/observations`.
    pub max_batch: usize,
    /// Most rows in one bulk request.
    pub max_bulk_rows: usize,
    /// How long an alert is shown.
    pub alert_ttl: chrono::Duration,
    /// A reading at or above this opens a suspected case, °C.
    pub fever_threshold: f64,
    /// Days of data kept; older observations are refused.
    pub retention_days: u32,
    /// Requests a minute per device (0: unlimited).
    pub device_rate_per_minute: u32,
    /// Registrations and revocations a minute per client address (an IPv6 client: per
    /// /64), in bursts of as many (0: unlimited).
    pub registration_rate_per_minute: u32,
    /// How far ahead of the server's clock a time may be.
    pub future_tolerance: chrono::Duration,
    /// How long a staff bearer token lasts.
    pub token_ttl: Duration,
    /// How long after its password was checked a login's staff tokens may last, renewals
    /// (a bearer token traded for a new one) included.
    pub token_max_age: Duration,
    /// The proof of work a registration must carry, in bits (0: none; see `challenge`).
    pub registration_work: u8,
    /// Whether phones may register and report static MACs (`--accept-mac`: legacy phones;
    /// off, only rotating identifiers and GAEN RPIs).
    pub accept_mac: bool,
    /// How often this node reads the revocations other nodes on the store made (and
    /// forgets which tokens it found unknown): the longest a device revoked elsewhere may
    /// still upload here.
    pub registry_refresh: Duration,
    /// Every password login goes through this (shared with the Flight SQL service).
    pub logins: Arc<LoginGuard>,
    /// The Flight SQL service's metrics, rendered with this service's on the operations
    /// port.
    pub service_metrics: ServiceMetrics,
    /// Staff routes refuse clients without a TLS certificate the client CA signed (given
    /// with the TLS acceptor's `client_ca`): before any password is checked.
    pub staff_client_certificates: bool,
    /// Bulk requests whose bodies are read and decoded at once (each up to
    /// `max_bulk_body`); beyond, 503 with Retry-After.
    pub bulk_concurrency: usize,
    /// Whether the service is served over TLS: the dashboard's cookie is then `Secure`.
    pub secure_cookies: bool,
    /// The identity provider whose bearer tokens stand for staff on staff routes, if any.
    pub oidc: Option<proxima_engine::oidc::OidcVerifier>,
}

impl Default for RestOptions {
    fn default() -> Self {
        Self {
            max_body: 1 << 20,
            max_bulk_body: 512 << 20,
            max_batch: 5_000,
            max_bulk_rows: 1_000_000,
            alert_ttl: chrono::Duration::hours(48),
            fever_threshold: 38.0,
            retention_days: 21,
            device_rate_per_minute: 120,
            registration_rate_per_minute: 60,
            future_tolerance: chrono::Duration::minutes(5),
            token_ttl: Duration::from_secs(3600),
            token_max_age: Duration::from_secs(12 * 3600),
            registration_work: 0,
            accept_mac: false,
            registry_refresh: Duration::from_secs(5),
            logins: Arc::new(LoginGuard::new(LoginLimits::default())),
            service_metrics: ServiceMetrics::default(),
            staff_client_certificates: false,
            bulk_concurrency: 2,
            secure_cookies: false,
            oidc: None,
        }
    }
}

/// What the REST service is built from.
#[derive(Debug)]
pub struct RestConfig {
    /// The store rows go to.
    pub store: Store,
    /// Sessions for traces and loading.
    pub factory: SessionFactory,
    /// Staff users (the same file as Flight SQL's).
    pub users: Users,
    /// The write side, opened with a write-ahead log.
    pub maintainer: Arc<Maintainer>,
    /// Settings.
    pub options: RestOptions,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Where staff calls are audited.
    pub audit: AuditLog,
}

/// Everything a handler needs.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub options: RestOptions,
    /// The slots of bulk requests being read and decoded (`bulk_concurrency`).
    pub bulk_slots: Arc<tokio::sync::Semaphore>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The store.
    pub store: Store,
    /// Sessions for traces.
    pub factory: SessionFactory,
    /// The write side: the WAL rows go to first, and the flush that stores them.
    pub maintainer: Arc<Maintainer>,
    wal: Wal,
    /// Devices and their credentials.
    pub registry: Registry,
    /// Unexpired alerts.
    pub alerts: AlertBook,
    /// Staff logins.
    pub staff_auth: StaffAuth,
    /// Per-device rate limits.
    pub limiter: RateLimiter,
    /// Per-address limits on registration and revocation, the routes anyone may call.
    pub registrations: RateLimiter,
    /// Registration's proof-of-work challenges.
    pub challenges: challenge::Challenges,
    /// GAEN keys registered per device and day (bounded).
    pub exposure_keys: exposure_keys::KeyBook,
    /// Idempotency keys.
    pub idempotency: IdempotencyCache,
    /// Metrics.
    pub metrics: Metrics,
    /// Where staff calls are audited.
    pub audit: AuditLog,
    /// Case ids being opened right now, so that two reports never open one id twice.
    opening: std::sync::Mutex<std::collections::HashSet<String>>,
    ready: AtomicBool,
}

/// The state handlers receive.
pub type AppState = Arc<Shared>;

impl Shared {
    /// The device of a request's upload token (401 if missing, unknown or revoked), known
    /// here or to the shared registry.
    pub async fn device_of(&self, headers: &HeaderMap) -> ApiResult<String> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("send the device's upload token as Authorization: Bearer <token>"))?;
        self.registry
            .authenticate(token)
            .await
            .map_err(unreadable_registry)?
            .ok_or_else(|| ApiError::unauthorized("the upload token is not valid (unknown, or the device is revoked)"))
    }

    /// Makes this node know device `uuid` if another node on the store registered it (its
    /// `registry.status` is then the store's).
    pub async fn resolve_device(&self, uuid: &str) -> ApiResult<()> {
        self.registry.resolve(uuid).await.map_err(unreadable_registry)
    }

    /// Appends rows to the WAL and waits for its sync: after this, a 2xx may be sent.
    /// `what` names the rows in the error (`the observations could not be made durable`).
    /// A WAL that cannot take them (a full disk, a failed write or sync) answers 503 with
    /// Retry-After: nothing of the request was acknowledged, and the WAL starts a new segment
    /// for the next one, so the service resumes by itself once the disk takes writes again.
    pub async fn make_durable(&self, entries: Vec<Entry>, what: &str) -> ApiResult<u64> {
        self.wal.append(entries).await.map_err(|e| {
            tracing::error!(target: "proxima::http", error = %e, "the {what} could not be made durable");
            ApiError::unavailable_for(
                format!(
                    "the {what} could not be made durable (the server's write-ahead log cannot write now); \
                     nothing of this request was acknowledged: retry later"
                ),
                WAL_RETRY_AFTER,
            )
        })
    }

    /// Flushes the WAL's rows into the store (the Maintainer counts them in the metrics).
    pub async fn flush(&self) -> crate::Result<Flushed> {
        Ok(self.maintainer.flush().await?)
    }

    /// The staff principal of a request, if its role is one of `roles` (401, 403). Either
    /// way the call is audited: a refusal as a decision, an admitted call as an intent that
    /// is synced before this returns (503 if it cannot be).
    pub async fn staff(&self, headers: &HeaderMap, roles: &[Role]) -> ApiResult<Principal> {
        Ok(self.staff_stamped(headers, roles).await?.0)
    }

    /// [`Self::staff`], with the stamp of the users file's entry the credentials were
    /// checked against (a token issued on them carries it).
    pub async fn staff_stamped(&self, headers: &HeaderMap, roles: &[Role]) -> ApiResult<(Principal, u64)> {
        if self.options.staff_client_certificates && !client_certified() {
            let refusal = ApiError::unauthorized(
                "staff routes need a TLS client certificate signed by the server's client CA (--tls-client-ca)",
            );
            audit::record_staff(self, headers, None, Some(&refusal)).await?;
            return Err(refusal);
        }
        let (authenticated, checked) = match self.staff_auth.principal(headers, client_address()).await {
            Ok((principal, stamp)) => {
                let checked = staff::require_role(&principal, roles).map(|()| (principal.clone(), stamp));
                (Some(principal), checked)
            }
            Err(refusal) => (None, Err(refusal)),
        };
        audit::record_staff(self, headers, authenticated.as_ref(), checked.as_ref().err()).await?;
        checked
    }
}

/// The error of a failed read of the store's shared registry.
fn unreadable_registry(error: crate::Error) -> ApiError {
    ApiError::internal("the shared registry could not be read", error)
}

/// The running REST service.
#[derive(Debug, Clone)]
pub struct RestService {
    state: AppState,
}

/// Reads every row of a table straight from its files (also tables SQL does not see).
pub(crate) async fn read_table(factory: &SessionFactory, table: Table) -> crate::Result<Vec<RecordBatch>> {
    let store = factory.store();
    if store.list_files(table).await?.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = factory.session().await?;
    let url = store.table_url(table)?;
    let schema = table.file_schema();
    let options = ParquetReadOptions::default().schema(&schema);
    let options = if table.is_day_partitioned() {
        options.table_partition_cols(vec![(
            proxima_engine::schema::DAY.to_string(),
            arrow::datatypes::DataType::Date32,
        )])
    } else {
        options
    };
    Ok(ctx.read_parquet(url.as_str(), options).await?.collect().await?)
}

impl RestService {
    /// Loads devices, idempotency keys and alerts, and registers with the Maintainer for its
    /// flushes. The Maintainer must have been opened with a write-ahead log.
    pub async fn start(config: RestConfig) -> crate::Result<Self> {
        let RestConfig {
            store,
            factory,
            users,
            maintainer,
            options,
            clock,
            audit,
        } = config;
        let wal = maintainer.wal().cloned().ok_or_else(|| {
            crate::Error::InvalidArgument(
                "the REST service needs a write-side maintainer with a write-ahead log".into(),
            )
        })?;
        let metrics = Metrics::new(maintainer.stats(), &options.service_metrics);
        let registry = Registry::load(&factory).await?;
        let idempotency = IdempotencyCache::load(&factory, clock.now()).await?;
        let exposure_keys = exposure_keys::KeyBook::load(&factory).await?;
        let alerts = AlertBook::default();
        alerts.reload(&factory, clock.now(), options.alert_ttl).await?;
        let state = Arc::new(Shared {
            bulk_slots: Arc::new(tokio::sync::Semaphore::new(options.bulk_concurrency.max(1))),
            limiter: RateLimiter::new(options.device_rate_per_minute),
            registrations: RateLimiter::new(options.registration_rate_per_minute),
            challenges: challenge::Challenges::new(options.registration_work),
            exposure_keys,
            staff_auth: StaffAuth::new(
                users,
                options.token_ttl,
                options.token_max_age,
                registry
                    .shared()
                    .map(SharedRegistry::staff_token_key)
                    .unwrap_or_else(proxima_engine::keys::random_key),
                Arc::clone(&options.logins),
                options.oidc.clone(),
            ),
            options,
            clock,
            store,
            factory,
            maintainer: Arc::clone(&maintainer),
            wal,
            registry,
            alerts,
            idempotency,
            metrics,
            audit,
            opening: std::sync::Mutex::default(),
            ready: AtomicBool::new(true),
        });
        maintainer.add_listener(Arc::new(AlertReloader(Arc::downgrade(&state))));
        tokio::spawn(refresh_registry(Arc::downgrade(&state)));
        Ok(Self { state })
    }

    /// The shared state (for tests and the benchmark).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The routes.
    /// The operations routes (`/healthz`, `/readyz`, `/metrics`), served on their own port
    /// (`serve --admin-http`, loopback by default), never on the phones' one: a polling
    /// phone must not learn how many alerts a case produced.
    pub fn operations_router(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .fallback(not_found)
            .with_state(Arc::clone(&self.state))
    }

    /// The routes of phones, stations, gateways and tracers (and `/openapi.json`, which
    /// describes them).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/openapi.json", get(openapi_json))
            .route(
                "/v1/devices",
                post(devices::register).route_layer(axum::middleware::from_fn_with_state(
                    Arc::clone(&self.state),
                    limit_by_address,
                )),
            )
            .route("/v1/devices/challenge", get(challenge::issue))
            .route("/v1/devices/{uuid}/revocation", post(devices::revoke_by_admin))
            .route(
                "/v1/devices/{uuid}",
                delete(devices::revoke).route_layer(axum::middleware::from_fn_with_state(
                    Arc::clone(&self.state),
                    limit_by_address,
                )),
            )
            .route("/v1/observations", post(observations::upload))
            .route("/v1/observations:bulk", post(observations::bulk))
            .route("/v1/cases", post(cases::report))
            .route("/v1/temperature", post(cases::temperature))
            .route("/v1/alerts", get(cases::alerts))
            .route("/v1/ephemeral-ids", get(identifiers::issue))
            .route("/v1/exposure-keys", post(exposure_keys::register))
            .route("/v1/auth/token", post(staff::token))
            .merge(dashboard::routes())
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&self.state),
                audit::audit_calls,
            ))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&self.state),
                count_requests,
            ))
            .layer(axum::middleware::from_fn(remember_client))
            .with_state(Arc::clone(&self.state))
    }

    /// Flushes now (what was acknowledged becomes visible to SQL).
    pub async fn flush(&self) -> crate::Result<Flushed> {
        self.state.flush().await
    }

    /// From now on `/readyz` answers 503 (the server is stopping).
    pub fn set_stopping(&self) {
        self.state.ready.store(false, Ordering::SeqCst);
    }
}

/// Refreshes the registry from the shared one every `registry_refresh`, while the service
/// lives.
async fn refresh_registry(state: std::sync::Weak<Shared>) {
    loop {
        let Some(every) = state.upgrade().map(|s| s.options.registry_refresh) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(state) = state.upgrade() else { return };
        match state.registry.refresh().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(target: "proxima::serve", devices = n, "revoked on other nodes"),
            Err(e) => warn!(target: "proxima::serve", error = %e, "refreshing the registry failed"),
        }
    }
}

/// Reloads the alert book after each flush (alerts written by other processes appear, and
/// expired ones go).
#[derive(Debug)]
struct AlertReloader(std::sync::Weak<Shared>);

#[async_trait::async_trait]
impl FlushListener for AlertReloader {
    async fn flushed(&self) {
        let Some(state) = self.0.upgrade() else { return };
        if let Err(e) = state
            .alerts
            .reload(&state.factory, state.clock.now(), state.options.alert_ttl)
            .await
        {
            warn!(target: "proxima::serve", error = %e, "reloading alerts failed");
        }
    }

    async fn erased(&self, devices: &[String]) {
        if let Some(state) = self.0.upgrade() {
            state.registry.forget(devices);
        }
    }
}

/// `GET /healthz`: the process is up.
async fn healthz() -> &'static str {
    "ok"
}

/// How long a node may go without reading the shared registry before it reports itself
/// not ready: three refreshes and 10 seconds (one slow listing is no outage).
fn registry_stale_after(refresh: Duration) -> Duration {
    refresh * 3 + Duration::from_secs(10)
}

/// `GET /readyz`: the service takes requests (not while starting or stopping, nor while it
/// cannot read the revocations other nodes made).
async fn readyz(State(state): State<AppState>) -> Response {
    if !state.ready.load(Ordering::SeqCst) {
        return ApiError::unavailable("the server is stopping").into_response();
    }
    let stale_after = registry_stale_after(state.options.registry_refresh);
    match state.registry.since_refresh() {
        Some(since) if since > stale_after => ApiError::unavailable(format!(
            "the store's shared registry has not been read for over {} s: devices revoked on other nodes may \
             not be refused here",
            stale_after.as_secs()
        ))
        .into_response(),
        _ => "ready".into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
async fn metrics_text(State(state): State<AppState>) -> Response {
    let logins = state.options.logins.counts();
    for (outcome, count) in [
        ("ok", &logins.succeeded),
        ("wrong", &logins.failed),
        ("throttled", &logins.throttled),
        ("busy", &logins.busy),
    ] {
        state
            .metrics
            .logins
            .get_or_create(&metrics::OutcomeLabels {
                outcome: outcome.into(),
            })
            .set(i64::try_from(count.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    }
    let lookups = state.factory.index().counters();
    state
        .metrics
        .lookup_days_scanned
        .set(i64::try_from(lookups.scanned_days).unwrap_or(i64::MAX));
    state
        .metrics
        .lookup_rows_read
        .set(i64::try_from(lookups.rows).unwrap_or(i64::MAX));
    for (reason, count) in [
        ("replayed", lookups.replayed_identifiers),
        ("unknown", lookups.unknown_identifiers),
    ] {
        state
            .metrics
            .lookup_identifiers_refused
            .get_or_create(&metrics::ReasonLabels { reason: reason.into() })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /openapi.json`: this API's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3 document")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed("this route does not take that method; see /openapi.json")
}

/// Middleware on the routes anyone may call (registration, revocation): at most
/// `--registration-rate` a minute per client address, so that one machine cannot mint
/// throwaway devices or guess at revocations at will. An IPv6 client is limited per /64,
/// the block one subscriber is usually given.
async fn limit_by_address(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // Without the peer's address (a router served without connect info), every such
    // client shares one budget: never none.
    let address = request
        .extensions()
        .get::<axum::extract::ConnectInfo<server::ClientAddr>>()
        .map_or_else(
            || "unknown".to_string(),
            |axum::extract::ConnectInfo(server::ClientAddr(address, _))| address_key(address.ip()),
        );
    if let Err(wait) = state.registrations.check(&address) {
        return ApiError::rate_limited(wait, "this address").into_response();
    }
    next.run(request).await
}

tokio::task_local! {
    /// The peer address of the request being handled (set by [`remember_client`]).
    static CLIENT: Option<(std::net::IpAddr, bool)>;
}

/// Middleware on every route: keeps the peer's address for the request's handler, so that
/// its login is limited per address ([`client_address`]).
async fn remember_client(request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<server::ClientAddr>>()
        .map(|axum::extract::ConnectInfo(server::ClientAddr(address, certified))| (address.ip(), certified.0));
    CLIENT.scope(client, next.run(request)).await
}

/// The peer address of the request being handled, if known.
fn client_address() -> Option<std::net::IpAddr> {
    CLIENT
        .try_with(|client| client.map(|(address, _)| address))
        .ok()
        .flatten()
}

/// Whether the client of the request being handled presented a certificate the client CA
/// signed.
fn client_certified() -> bool {
    CLIENT
        .try_with(|client| client.is_some_and(|(_, certified)| certified))
        .unwrap_or(false)
}

/// A request's method as a metric label: the standard ones by name, any other as `other`
/// (a method is any token a client makes up, and every label value is kept for good).
fn method_label(method: &axum::http::Method) -> &'static str {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT",
    ];
    STANDARD
        .into_iter()
        .find(|name| *name == method.as_str())
        .unwrap_or("other")
}

async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = method_label(request.method()).to_string();
    let id = request_id(request.headers().get("x-request-id").and_then(|v| v.to_str().ok()));
    let span =
        tracing::info_span!(target: "proxima::request", "request", request_id = %id, method = %method, route = %route);
    let started = std::time::Instant::now();
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = header::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    state
        .metrics
        .request_seconds
        .get_or_create(&metrics::RouteLabels {
            route: route.clone(),
            method: method.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&metrics::RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("upload_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        components.add_security_scheme("staff_basic", SecurityScheme::Http(Http::new(HttpAuthScheme::Basic)));
        components.add_security_scheme("staff_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// Documents on every operation the refusals that do not depend on the route: those of
/// its body (400 malformed, 413 too large, 415 not its media type, 422 a field refused),
/// of its credentials (401; a phone's token also 429, its device's rate; staff Basic also
/// 403 for a role the route does not take, 429 and 503 from the login limits), each an
/// RFC 9457 problem. Routes add what is theirs in their own annotations.
struct Refusals;

/// What a client is told to wait after the write-ahead log failed its request.
pub const WAL_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl utoipa::Modify for Refusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for (operation, writes) in [
                (&mut item.get, false),
                (&mut item.post, true),
                (&mut item.put, true),
                (&mut item.delete, true),
                (&mut item.patch, true),
            ]
            .into_iter()
            .filter_map(|(operation, writes)| Some((operation.as_mut()?, writes)))
            {
                // The schemes an operation takes, by name.
                let schemes: Vec<String> = serde_json::to_value(&operation.security)
                    .ok()
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|requirement| requirement.as_object())
                    .flat_map(|requirement| requirement.keys().cloned().collect::<Vec<_>>())
                    .collect();
                let mut refusals: Vec<(&str, &str)> = Vec::new();
                if operation.request_body.is_some() {
                    refusals.extend([
                        ("400", "The body is not well-formed"),
                        ("413", "The body is larger than the server takes"),
                        ("415", "The body is not of a media type this route takes"),
                        ("422", "A field or element was refused (which one, and why, in detail)"),
                    ]);
                }
                if !schemes.is_empty() {
                    refusals.push(("401", "Missing, unknown or expired credentials"));
                }
                if schemes.iter().any(|s| s == "upload_token") {
                    refusals.push(("429", "Too many requests from this device (Retry-After)"));
                }
                if schemes.iter().any(|s| s == "staff_basic") {
                    refusals.extend([
                        ("403", "The user's role does not take this route"),
                        (
                            "429",
                            "Too many failed logins from this address or for this user (Retry-After)",
                        ),
                    ]);
                }
                let unavailable = match (schemes.iter().any(|s| s == "staff_basic"), writes) {
                    (true, true) => Some(
                        "Every password check slot is busy, or the request could not be made durable now (a full \
                         disk, an I/O error) or the server is stopping; nothing was acknowledged (Retry-After)",
                    ),
                    (true, false) => Some("Every password check slot is busy (Retry-After)"),
                    (false, true) => Some(
                        "The request could not be made durable now (a full disk, an I/O error) or the server is \
                         stopping; nothing was acknowledged (Retry-After)",
                    ),
                    (false, false) => None,
                };
                refusals.extend(unavailable.map(|description| ("503", description)));
                for (status, description) in refusals {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| problem(description).into());
                }
            }
        }
    }
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "Proxima REST API", description = "Devices, observations, cases, temperature readings and alerts. Errors are RFC 9457 problem details (application/problem+json: type, title, status, detail, and the error code)."),
    paths(
        devices::register, devices::revoke, devices::revoke_by_admin, challenge::issue,
        observations::upload, observations::bulk,
        cases::report, cases::temperature, cases::alerts,
        identifiers::issue, exposure_keys::register,
        staff::token,
        openapi_json,
    ),
    modifiers(&SecuritySchemes, &Refusals),
)]
pub struct ApiDoc;
