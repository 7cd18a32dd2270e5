//! Uploads of observations: phones (`POST /v1/observations`) and gateways (`:bulk`).
//!
//! A request is all-or-nothing: every element is validated before anything is
//! written, then the rows go to the WAL as one record and the answer is sent
//! once that record is synced. The observer is always the device of the
//! upload token (phones) or a registered device named in the `observer`
//! column (gateways, role `ingest`).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int16Array, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use arrow::ipc::reader::StreamReader;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use proxima_engine::{Role, Table, ids, rules, schema};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::{media_type, parse_time, read_limited, require_json, typed, typed_body};
use super::error::{ApiError, ApiResult};
use super::limits::{BodyDigest, body_digest};
use super::{AppState, Idempotency};
use proxima_storage::registry::KeyClaim;
use proxima_storage::wal::Entry;

/// Media type of NDJSON bulk uploads.
pub const NDJSON: &str = "application/x-ndjson";
/// Media type of Arrow IPC stream bulk uploads.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// One sighting in `POST /v1/observations`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservationIn {
    /// What was heard: a MAC `AA:BB:CC:DD:EE:FF` or a rolling proximity identifier (32 hex digits).
    #[schema(pattern = r"^([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{32})$")]
    pub observed: String,
    /// When the sighting started (RFC 3339).
    #[schema(example = "2026-11-30T08:15:00Z", format = DateTime)]
    pub observed_at: String,
    /// How long it lasted, in seconds (≥ 0).
    #[schema(minimum = 0, maximum = 2_147_483_647)]
    pub duration_s: i64,
    /// Received signal strength, dBm.
    #[schema(minimum = -128, maximum = 127)]
    pub rssi: Option<i64>,
    /// Advertised transmit power, dBm.
    #[schema(minimum = -128, maximum = 127)]
    pub tx_power: Option<i64>,
    /// Coarse location: a geohash of at most 6 characters.
    #[schema(pattern = r"^[0-9b-hjkmnp-zB-HJKMNP-Z]{1,6}$")]
    pub location: Option<String>,
}

/// One line of an NDJSON bulk upload: an observation and its observer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkObservationIn {
    /// The observing device's UUID (registered, not revoked).
    #[schema(pattern = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")]
    pub observer: String,
    /// As in [`ObservationIn`].
    #[schema(pattern = r"^([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}|[0-9A-Fa-f]{32})$")]
    pub observed: String,
    /// As in [`ObservationIn`].
    #[schema(format = DateTime)]
    pub observed_at: String,
    /// As in [`ObservationIn`].
    #[schema(minimum = 0, maximum = 2_147_483_647)]
    pub duration_s: i64,
    /// As in [`ObservationIn`].
    #[schema(minimum = -128, maximum = 127)]
    pub rssi: Option<i64>,
    /// As in [`ObservationIn`].
    #[schema(minimum = -128, maximum = 127)]
    pub tx_power: Option<i64>,
    /// As in [`ObservationIn`].
    #[schema(pattern = r"^[0-9b-hjkmnp-zB-HJKMNP-Z]{1,6}$")]
    pub location: Option<String>,
}

/// Answer of an accepted upload.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// Observations stored (durably: in the synced WAL).
    pub accepted: u64,
}

/// Where an element is, for error messages (formatted only when one is refused).
#[derive(Debug, Clone, Copy)]
enum Place {
    /// Index in a JSON array.
    Element(usize),
    /// 1-based line of NDJSON.
    Line(usize),
    /// 1-based row of an Arrow IPC stream.
    Row(usize),
}

impl Place {
    /// Its position in the body, for ordering.
    fn index(self) -> usize {
        match self {
            Place::Element(i) | Place::Line(i) | Place::Row(i) => i,
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Element(i) => write!(f, "observations[{i}]"),
            Place::Line(n) => write!(f, "line {n}"),
            Place::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// Validated columns of an upload, in the `observations` file schema.
#[derive(Default)]
struct Rows {
    observer: Vec<String>,
    observed: Vec<String>,
    observed_at: Vec<i64>,
    duration_s: Vec<i32>,
    rssi: Vec<Option<i16>>,
    tx_power: Vec<Option<i16>>,
    location: Vec<Option<String>>,
}

/// The time window an observation (or a GAEN key's start) must fall in: not in the future
/// (beyond a small skew), not older than the retention window.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) earliest: DateTime<Utc>,
    pub(crate) latest: DateTime<Utc>,
    /// Whether a static MAC may be what was heard (`--accept-mac`: legacy phones).
    accept_mac: bool,
}

impl Window {
    pub(crate) fn of(state: &AppState) -> Self {
        let now = state.clock.now();
        let first_kept = proxima_storage::retention::oldest_kept_day(now.date_naive(), state.options.retention_days);
        Self {
            earliest: first_kept.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc(),
            latest: now + state.options.future_tolerance,
            accept_mac: state.options.accept_mac,
        }
    }
}

impl Rows {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        place: Place,
        window: Window,
        observer: String,
        observed: &str,
        observed_at: DateTime<Utc>,
        duration_s: i64,
        rssi: Option<i64>,
        tx_power: Option<i64>,
        location: Option<&str>,
    ) -> ApiResult<()> {
        let observed = ids::observed(observed).map_err(|e| ApiError::invalid(format!("{place}.observed: {e}")))?;
        if !window.accept_mac && ids::mac(&observed).is_ok() {
            return Err(ApiError::invalid(format!(
                "{place}.observed: {observed} is a static MAC, which anyone can follow and forge; this server takes \
                 rotating identifiers only (GET /v1/ephemeral-ids, or GAEN RPIs), unless started with --accept-mac"
            )));
        }
        if observed_at > window.latest {
            return Err(ApiError::invalid(format!(
                "{place}.observed_at: {} is in the future (more than 5 minutes ahead of the server)",
                observed_at.to_rfc3339()
            )));
        }
        if observed_at < window.earliest {
            return Err(ApiError::invalid(format!(
                "{place}.observed_at: {} is older than the retention window (data before {} is not kept)",
                observed_at.to_rfc3339(),
                window.earliest.date_naive()
            )));
        }
        let duration_s =
            rules::duration_s(duration_s).map_err(|e| ApiError::invalid(format!("{place}.duration_s: {e}")))?;
        let dbm = |value: Option<i64>, field: &str| -> ApiResult<Option<i16>> {
            value
                .map(|v| rules::dbm(v).map_err(|e| ApiError::invalid(format!("{place}.{field}: {e}"))))
                .transpose()
        };
        let rssi = dbm(rssi, "rssi")?;
        let tx_power = dbm(tx_power, "tx_power")?;
        let location = location
            .map(|l| ids::geohash(l).map_err(|e| ApiError::invalid(format!("{place}.location: {e}"))))
            .transpose()?;
        self.observer.push(observer);
        self.observed.push(observed);
        self.observed_at.push(observed_at.timestamp_micros());
        self.duration_s.push(duration_s);
        self.rssi.push(rssi);
        self.tx_power.push(tx_power);
        self.location.push(location);
        Ok(())
    }

    fn len(&self) -> usize {
        self.observer.len()
    }

    fn into_batch(self) -> ApiResult<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(self.observer)),
            Arc::new(StringArray::from(self.observed)),
            Arc::new(TimestampMicrosecondArray::from(self.observed_at).with_timezone("UTC")),
            Arc::new(Int32Array::from(self.duration_s)),
            Arc::new(Int16Array::from(self.rssi)),
            Arc::new(Int16Array::from(self.tx_power)),
            Arc::new(StringArray::from(self.location)),
        ];
        RecordBatch::try_new(schema::OBSERVATIONS_FILE.clone(), columns)
            .map_err(|e| ApiError::internal("building the observation rows failed", e))
    }
}

/// `POST /v1/observations`: a phone's sightings, observer = the token's device.
#[utoipa::path(post, path = "/v1/observations", tag = "observations", request_body = Vec<ObservationIn>,
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[!-~]{1,128}$", description = "Retries with the same key and body within 24 h are acknowledged again without storing twice; the same key with another body is refused (422)")),
    security(("upload_token" = [])),
    responses(
        (status = 200, description = "Stored durably", body = Accepted),
        (status = 400, description = "Malformed JSON or an unknown field", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or bad upload token", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is still running", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 413, description = "Body over --max-body or more than --max-batch elements", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 422, description = "An invalid element (index and field named), or an Idempotency-Key used before with another body", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 429, description = "Over the device's rate limit (see Retry-After)", body = super::error::ErrorBody, content_type = "application/problem+json"),
    ))]
pub async fn upload(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let device = match state.device_of(&headers).await {
        Ok(device) => device,
        Err(e) => return e.into_response(),
    };
    if let Err(wait) = state.limiter.check(&device) {
        return ApiError::rate_limited(wait, "this device").into_response();
    }
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str().ok().filter(|k| (1..=128).contains(&k.len())) {
            Some(key) => Some(key.to_string()),
            None => {
                return ApiError::invalid("Idempotency-Key: must be 1 to 128 visible ASCII characters").into_response();
            }
        },
    };
    // The body is read before the key is claimed: a key answers for one body only.
    let bytes = match read_upload(&state, &headers, body).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let digest = body_digest(&bytes);
    let in_progress =
        || ApiError::conflict("a request with this Idempotency-Key is still being processed").into_response();
    let other_body = || ApiError::key_reused().into_response();
    let claim = match &key {
        None => None,
        Some(key) => match state.idempotency.claim(&device, key, &digest, state.clock.now()) {
            Idempotency::Replay(status, body) => return replayed(status, body),
            Idempotency::OtherBody => return other_body(),
            Idempotency::InProgress => return in_progress(),
            // This node's claim; now the other nodes'.
            Idempotency::Claimed => match claim_shared(&state, &device, key, &digest).await {
                Ok(OtherNodes::Go) => Some(key.clone()),
                Ok(shared) => {
                    state.idempotency.release(&device, key);
                    return match shared {
                        OtherNodes::Replay(accepted) => replayed(
                            StatusCode::OK,
                            serde_json::to_vec(&Accepted { accepted }).expect("serialisable"),
                        ),
                        OtherNodes::OtherBody => other_body(),
                        OtherNodes::Go | OtherNodes::InProgress => in_progress(),
                    };
                }
                Err(e) => {
                    state.idempotency.release(&device, key);
                    return e.into_response();
                }
            },
        },
    };
    let result = store_upload(&state, &device, claim.as_deref(), &bytes).await;
    match (result, claim) {
        (Ok(accepted), claim) => {
            let body = serde_json::to_vec(&accepted).expect("serialisable");
            if let Some(key) = claim {
                let now = state.clock.now();
                state
                    .idempotency
                    .complete(&device, &key, Some(digest), (StatusCode::OK, body.clone()), now);
                // The rows are durable, so the answer is 200 whatever happens here: a claim
                // left pending makes a retry elsewhere wait, then find the key stored.
                let hex = hex::encode(digest);
                if let Some(shared) = state.registry.shared()
                    && let Err(e) = shared
                        .complete_upload_key(&device, &key, accepted.accepted, Some(&hex), now)
                        .await
                {
                    tracing::warn!(target: "proxima::http", error = %e, "an idempotency key could not be completed in the store");
                }
            }
            (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()
        }
        (Err(e), claim) => {
            if let Some(key) = claim {
                state.idempotency.release(&device, &key);
                if let Some(shared) = state.registry.shared()
                    && let Err(e) = shared.release_upload_key(&device, &key).await
                {
                    tracing::warn!(target: "proxima::http", error = %e, "an idempotency key could not be released in the store");
                }
            }
            e.into_response()
        }
    }
}

/// The answer given before to a request with the same idempotency key.
fn replayed(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

/// What the other serving nodes say of an idempotency key this node claimed.
enum OtherNodes {
    Go,
    Replay(u64),
    OtherBody,
    InProgress,
}

/// Claims an idempotency key in the store's shared registry. A key a node claimed and never
/// finished is looked for in `upload_keys` (that node's log flushed it if the upload was
/// stored) and else taken over.
async fn claim_shared(state: &AppState, device: &str, key: &str, digest: &BodyDigest) -> ApiResult<OtherNodes> {
    let Some(shared) = state.registry.shared() else {
        return Ok(OtherNodes::Go);
    };
    let unshared = |e| ApiError::internal("the idempotency key could not be checked with the other nodes", e);
    let now = state.clock.now();
    match shared
        .claim_upload_key(device, key, now, super::limits::IDEMPOTENCY_WINDOW)
        .await
        .map_err(unshared)?
    {
        KeyClaim::Claimed => Ok(OtherNodes::Go),
        KeyClaim::Replay { body_sha256, .. } if body_sha256.as_deref().is_some_and(|b| b != hex::encode(digest)) => {
            Ok(OtherNodes::OtherBody)
        }
        KeyClaim::Replay { accepted, .. } => Ok(OtherNodes::Replay(accepted)),
        KeyClaim::InProgress => Ok(OtherNodes::InProgress),
        KeyClaim::Abandoned(seen) => {
            if let Some(accepted) = stored_with_key(state, device, key).await? {
                // Which body it was is not in `upload_keys`.
                shared
                    .complete_upload_key(device, key, accepted, None, now)
                    .await
                    .map_err(unshared)?;
                return Ok(OtherNodes::Replay(accepted));
            }
            if shared
                .take_over_upload_key(device, key, now, &seen)
                .await
                .map_err(unshared)?
            {
                Ok(OtherNodes::Go)
            } else {
                // Another node took it over first and is storing it now.
                Ok(OtherNodes::InProgress)
            }
        }
    }
}

/// How many observations the upload stored with this key accepted, if the store holds it.
async fn stored_with_key(state: &AppState, device: &str, key: &str) -> ApiResult<Option<u64>> {
    let batches = super::read_table(&state.factory, Table::UploadKeys)
        .await
        .map_err(|e| ApiError::internal("the stored idempotency keys could not be read", e))?;
    for batch in batches {
        let devices = batch.column(0).as_string::<i32>();
        let keys = batch.column(1).as_string::<i32>();
        let accepted = batch.column(2).as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..batch.num_rows() {
            if devices.value(i) == device && keys.value(i) == key {
                return Ok(Some(u64::try_from(accepted.value(i)).unwrap_or_default()));
            }
        }
    }
    Ok(None)
}

/// A phone's upload body: JSON, at most `--max-body` bytes.
async fn read_upload(state: &AppState, headers: &HeaderMap, body: axum::body::Body) -> ApiResult<bytes::Bytes> {
    require_json(headers)?;
    read_limited(headers, body, state.options.max_body).await
}

async fn store_upload(state: &AppState, device: &str, key: Option<&str>, bytes: &[u8]) -> ApiResult<Accepted> {
    // PERF: straight into typed rows; a JSON tree first cost a third of the handler's time.
    let elements: Vec<ObservationIn> = typed_body(bytes, "observations").inspect_err(|_| {
        state.metrics.observations_rejected.inc();
    })?;
    if elements.is_empty() {
        state.metrics.observations_rejected.inc();
        return Err(ApiError::invalid(
            "body: the array is empty; send at least one observation",
        ));
    }
    if elements.len() > state.options.max_batch {
        state.metrics.observations_rejected.inc_by(elements.len() as u64);
        return Err(ApiError::too_large(format!(
            "body: {} observations in one request; at most {} (--max-batch)",
            elements.len(),
            state.options.max_batch
        )));
    }
    let count = elements.len() as u64;
    let window = Window::of(state);
    let mut rows = Rows::default();
    let validated = (|| {
        for (i, o) in elements.into_iter().enumerate() {
            let place = Place::Element(i);
            let observed_at = parse_time(&o.observed_at, &format!("{place}.observed_at"))?;
            rows.push(
                place,
                window,
                device.to_string(),
                &o.observed,
                observed_at,
                o.duration_s,
                o.rssi,
                o.tx_power,
                o.location.as_deref(),
            )?;
        }
        Ok::<_, ApiError>(())
    })();
    if let Err(e) = validated {
        state.metrics.observations_rejected.inc_by(count);
        return Err(e);
    }
    let batch = rows.into_batch()?;
    let mut entries = vec![Entry {
        table: Table::Observations,
        batch,
    }];
    if let Some(key) = key {
        // In the same record as the rows: after a crash, both are replayed or neither.
        let used = RecordBatch::try_new(
            schema::UPLOAD_KEYS.clone(),
            vec![
                Arc::new(StringArray::from(vec![device])),
                Arc::new(StringArray::from(vec![key])),
                Arc::new(arrow::array::Int64Array::from(vec![count as i64])),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![state.clock.now().timestamp_micros()]).with_timezone("UTC"),
                ),
            ],
        )
        .map_err(|e| ApiError::internal("building the idempotency row failed", e))?;
        entries.push(Entry {
            table: Table::UploadKeys,
            batch: used,
        });
    }
    state.make_durable(entries, "observations").await?;
    state.metrics.observations_accepted.inc_by(count);
    Ok(Accepted { accepted: count })
}

/// `POST /v1/observations:bulk`: gateways and backfills (role `ingest`), NDJSON or Arrow IPC.
#[utoipa::path(post, path = "/v1/observations:bulk", tag = "observations",
    request_body(content = BulkObservationIn, description = "NDJSON (application/x-ndjson), one BulkObservationIn per line, or an Arrow IPC stream (application/vnd.apache.arrow.stream) with the same columns; at most --max-bulk-rows rows"),
    security(("staff_basic" = []), ("staff_token" = [])),
    responses(
        (status = 200, description = "Stored durably", body = Accepted),
        (status = 400, description = "Malformed NDJSON or IPC, or an unknown field", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or bad credentials", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 403, description = "Role is not ingest", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 413, description = "Too large or too many rows", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 415, description = "Neither NDJSON nor Arrow IPC, or compressed Arrow IPC buffers", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 422, description = "An invalid row (line or row and field named)", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 503, description = "Every bulk upload slot busy (Retry-After)", body = super::error::ErrorBody, content_type = "application/problem+json"),
    ))]
pub async fn bulk(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<Accepted>> {
    state.staff(&headers, &[Role::Ingest]).await?;
    // Each body may be hundreds of MiB: only so many are read at once, the rest told to
    // come back (never queued in memory).
    let Ok(_slot) = Arc::clone(&state.bulk_slots).try_acquire_owned() else {
        return Err(ApiError::busy(
            "every bulk upload slot is busy (--bulk-concurrency); retry shortly",
        ));
    };
    let media = media_type(&headers);
    if !matches!(media.as_deref(), Some(NDJSON) | Some(ARROW_STREAM)) {
        return Err(ApiError::unsupported_media(format!(
            "content type '{}' is not accepted here; send {NDJSON} or {ARROW_STREAM}",
            media.unwrap_or_default()
        )));
    }
    let bytes = read_limited(&headers, body, state.options.max_bulk_body).await?;
    let window = Window::of(&state);
    let mut unknown = Unknown::default();
    let rows = if media.as_deref() == Some(NDJSON) {
        bulk_ndjson(&state, &bytes, window, &mut unknown)
    } else {
        bulk_arrow(&state, &bytes, window, &mut unknown)
    };
    // Parsing stops at its first error, so every unknown observer comes before it: an
    // unknown one that stays unknown is the body's first error.
    let resolved = unknown.resolve(&state).await;
    let rows = resolved.and(rows);
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            state.metrics.observations_rejected.inc();
            return Err(e);
        }
    };
    let count = rows.len() as u64;
    let batch = rows.into_batch()?;
    state
        .make_durable(
            vec![Entry {
                table: Table::Observations,
                batch,
            }],
            "observations",
        )
        .await?;
    state.metrics.observations_accepted.inc_by(count);
    Ok(Json(Accepted { accepted: count }))
}

fn check_rows(state: &AppState, rows: usize) -> ApiResult<()> {
    if rows > state.options.max_bulk_rows {
        return Err(ApiError::too_large(format!(
            "more than {} rows in one bulk request (--max-bulk-rows)",
            state.options.max_bulk_rows
        )));
    }
    Ok(())
}

/// Observers a bulk request names that this node does not know, where each is first named:
/// another node may have registered them ([`Unknown::resolve`]).
#[derive(Default)]
struct Unknown(std::collections::HashMap<String, Place>);

/// Distinct unknown observers one bulk request may make a node look up in the store.
const MAX_UNKNOWN_OBSERVERS: usize = 1_000;

impl Unknown {
    fn refusal(uuid: &str, place: Place) -> ApiError {
        ApiError::invalid(format!(
            "{place}.observer: {uuid} is not a registered, unrevoked device"
        ))
    }

    /// Looks the unknown observers up in the shared registry; refuses the request at the
    /// first (in the body) that is still unknown or revoked.
    async fn resolve(self, state: &AppState) -> ApiResult<()> {
        let mut unknown: Vec<(String, Place)> = self.0.into_iter().collect();
        unknown.sort_by_key(|(_, place)| place.index());
        if let Some((_, place)) = unknown.get(MAX_UNKNOWN_OBSERVERS) {
            return Err(ApiError::invalid(format!(
                "{place}.observer: more than {MAX_UNKNOWN_OBSERVERS} observers of one request are devices this \
                 node has not seen; send them in smaller requests"
            )));
        }
        // Looked up 16 at a time (each is a request to the store), judged in body order.
        for chunk in unknown.chunks(16) {
            futures::future::try_join_all(chunk.iter().map(|(uuid, _)| state.resolve_device(uuid))).await?;
        }
        for (uuid, place) in unknown {
            if !state.registry.is_active(&uuid) {
                return Err(Self::refusal(&uuid, place));
            }
        }
        Ok(())
    }
}

fn observer(state: &AppState, value: &str, place: Place, unknown: &mut Unknown) -> ApiResult<String> {
    let uuid = ids::device_uuid(value).map_err(|e| ApiError::invalid(format!("{place}.observer: {e}")))?;
    match state.registry.status(&uuid) {
        Some(false) => {}
        Some(true) => return Err(Unknown::refusal(&uuid, place)),
        None => {
            unknown.0.entry(uuid.clone()).or_insert(place);
        }
    }
    Ok(uuid)
}

fn bulk_ndjson(state: &AppState, bytes: &[u8], window: Window, unknown: &mut Unknown) -> ApiResult<Rows> {
    let mut rows = Rows::default();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let place = Place::Line(i + 1);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        check_rows(state, rows.len() + 1)?;
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| ApiError::malformed(format!("{place}: not valid JSON: {e}")))?;
        let o: BulkObservationIn = typed(value, &place.to_string())?;
        let observer = observer(state, &o.observer, place, unknown)?;
        let observed_at = parse_time(&o.observed_at, &format!("{place}.observed_at"))?;
        rows.push(
            place,
            window,
            observer,
            &o.observed,
            observed_at,
            o.duration_s,
            o.rssi,
            o.tx_power,
            o.location.as_deref(),
        )?;
    }
    if rows.len() == 0 {
        return Err(ApiError::invalid("body: no observations"));
    }
    Ok(rows)
}

/// Checks an Arrow IPC body's every message before anything decodes it
/// ([`proxima_engine::ipc::vet_stream`]): refuses compressed buffers (LZ4 or ZSTD: each states
/// its own decompressed length, which the reader would allocate before checking it, so a few
/// bytes could ask for gigabytes), more rows than `max_rows` in all, columns other than flat
/// plain types, and messages whose parts lie outside them (on which arrow-ipc panics).
fn vet_ipc_stream(bytes: &[u8], max_rows: usize) -> ApiResult<()> {
    use proxima_engine::ipc::{IpcRefusal, vet_stream};
    match vet_stream(bytes, max_rows as u64) {
        Ok(_) => Ok(()),
        Err(refusal @ IpcRefusal::Compressed) => Err(ApiError::unsupported_media(refusal.to_string())),
        Err(IpcRefusal::TooManyRows(_)) => Err(ApiError::too_large(format!(
            "more than {max_rows} rows in one bulk request (--max-bulk-rows)"
        ))),
        Err(refusal @ IpcRefusal::Unsupported(_)) => Err(ApiError::invalid(refusal.to_string())),
        Err(refusal @ IpcRefusal::Malformed(_)) => Err(ApiError::malformed(format!(
            "the body is not an Arrow IPC stream: {refusal}"
        ))),
    }
}

fn bulk_arrow(state: &AppState, bytes: &[u8], window: Window, unknown: &mut Unknown) -> ApiResult<Rows> {
    vet_ipc_stream(bytes, state.options.max_bulk_rows)?;
    let reader = StreamReader::try_new(bytes, None)
        .map_err(|e| ApiError::malformed(format!("the body is not an Arrow IPC stream: {e}")))?;
    let schema = reader.schema();
    const KNOWN: [&str; 7] = [
        "observer",
        "observed",
        "observed_at",
        "duration_s",
        "rssi",
        "tx_power",
        "location",
    ];
    if let Some(unknown) = schema.fields().iter().find(|f| !KNOWN.contains(&f.name().as_str())) {
        return Err(ApiError::unknown_field(format!(
            "column '{}': unknown; the columns are {}",
            unknown.name(),
            KNOWN.join(", ")
        )));
    }
    let mut rows = Rows::default();
    let mut row_base = 0usize;
    for batch in reader {
        let batch = batch.map_err(|e| ApiError::malformed(format!("the Arrow IPC stream is damaged: {e}")))?;
        check_rows(state, rows.len() + batch.num_rows())?;
        let column = |name: &str, to: &DataType, required: bool| -> ApiResult<Option<ArrayRef>> {
            match batch.column_by_name(name) {
                None if required => Err(ApiError::invalid(format!("column '{name}': missing"))),
                None => Ok(None),
                Some(array) => cast(array, to)
                    .map(Some)
                    .map_err(|e| ApiError::invalid(format!("column '{name}': cannot be read as {to}: {e}"))),
            }
        };
        let observers = column("observer", &DataType::Utf8, true)?.expect("required");
        let observeds = column("observed", &DataType::Utf8, true)?.expect("required");
        let times = column("observed_at", &schema::timestamp_type(), true)?.expect("required");
        let durations = column("duration_s", &DataType::Int64, true)?.expect("required");
        let rssis = column("rssi", &DataType::Int64, false)?;
        let tx_powers = column("tx_power", &DataType::Int64, false)?;
        let locations = column("location", &DataType::Utf8, false)?;
        let observers = observers.as_string::<i32>();
        let observeds = observeds.as_string::<i32>();
        let times = times.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let durations = durations.as_primitive::<Int64Type>();
        let rssis = rssis.as_ref().map(|a| a.as_primitive::<Int64Type>());
        let tx_powers = tx_powers.as_ref().map(|a| a.as_primitive::<Int64Type>());
        let locations = locations.as_ref().map(|a| a.as_string::<i32>());
        // PERF: one registry check per distinct observer of the batch, not per row.
        let mut known: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
        for i in 0..batch.num_rows() {
            let place = Place::Row(row_base + i + 1);
            let required_null = [
                ("observer", observers.is_null(i)),
                ("observed", observeds.is_null(i)),
                ("observed_at", times.is_null(i)),
                ("duration_s", durations.is_null(i)),
            ]
            .into_iter()
            .find(|(_, null)| *null);
            if let Some((name, _)) = required_null {
                return Err(ApiError::invalid(format!("{place}.{name}: must not be null")));
            }
            let observer = match known.get(observers.value(i)) {
                Some(uuid) => uuid.clone(),
                None => {
                    let uuid = observer(state, observers.value(i), place, unknown)?;
                    known.insert(observers.value(i), uuid.clone());
                    uuid
                }
            };
            let observed_at = DateTime::from_timestamp_micros(times.value(i))
                .ok_or_else(|| ApiError::invalid(format!("{place}.observed_at: out of range")))?;
            let optional = |a: Option<&arrow::array::PrimitiveArray<Int64Type>>| {
                a.and_then(|a| (!a.is_null(i)).then(|| a.value(i)))
            };
            rows.push(
                place,
                window,
                observer,
                observeds.value(i),
                observed_at,
                durations.value(i),
                optional(rssis),
                optional(tx_powers),
                locations.and_then(|a| (!a.is_null(i)).then(|| a.value(i))),
            )?;
        }
        row_base += batch.num_rows();
    }
    if rows.len() == 0 {
        return Err(ApiError::invalid("body: no observations"));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::ipc::CompressionType;
    use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};

    fn stream(rows: usize, batches: usize, compression: Option<CompressionType>) -> Vec<u8> {
        let batch = RecordBatch::try_from_iter([("duration_s", Arc::new(Int64Array::from(vec![7; rows])) as ArrayRef)])
            .unwrap();
        let options = IpcWriteOptions::default().try_with_compression(compression).unwrap();
        let mut bytes = Vec::new();
        let mut writer = StreamWriter::try_new_with_options(&mut bytes, &batch.schema(), options).unwrap();
        for _ in 0..batches {
            writer.write(&batch).unwrap();
        }
        writer.finish().unwrap();
        bytes
    }

    #[test]
    fn compressed_or_oversized_ipc_streams_are_refused_before_decoding() {
        vet_ipc_stream(&stream(100, 3, None), 300).unwrap();
        for compression in [CompressionType::LZ4_FRAME, CompressionType::ZSTD] {
            let err = vet_ipc_stream(&stream(100, 1, Some(compression)), 300).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
            assert!(err.detail().contains("compressed Arrow IPC"), "{}", err.detail());
        }
        // The rows counted from the messages' headers, before any batch is decoded.
        let err = vet_ipc_stream(&stream(100, 4, None), 300).unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        // Garbage and truncations are refused as malformed (400), never a panic; a stream cut
        // at a message boundary is whole.
        let whole = stream(100, 2, None);
        for cut in 0..whole.len() {
            if let Err(err) = vet_ipc_stream(&whole[..cut], 300) {
                assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "cut at {cut}");
            }
        }
        for garbage in [&b"not arrow"[..], &[0xff; 64]] {
            let err = vet_ipc_stream(garbage, 300).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        }
    }

    /// Regression (fuzzing, 2026-12-03): a record batch whose parts lie outside it (a column
    /// longer than the batch, a buffer past the body) made arrow-buffer panic in the decoder (`Buffer::slice_with_length`), killing the request's
    /// task. The input is the one the fuzzer found.
    #[test]
    fn a_buffer_past_its_message_body_is_refused_not_a_panic() {
        // The second (fuzzing, the same day): an offsets buffer 4 bytes off the format's
        // 8-byte padding made arrow-data's validation panic on its alignment.
        for found in [
            &include_bytes!("../../../fuzz/regressions/rest_bulk_arrow-arrow-buffer-immutable-287.arrows")[..],
            &include_bytes!("../../../fuzz/regressions/rest_bulk_arrow-arrow-buffer-immutable-322.arrows")[..],
            // The third (the 10-minute run): a column with nulls whose validity bitmap is
            // shorter than the column panicked arrow-buffer (`BooleanBuffer::new`).
            &include_bytes!("../../../fuzz/regressions/rest_bulk_arrow-arrow-buffer-boolean-128.arrows")[..],
        ] {
            let err = vet_ipc_stream(found, 300).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST, "{}", err.detail());
            assert!(err.detail().contains("Arrow IPC message"), "{}", err.detail());
            // The check is what stands between the input and the panic.
            let decoded = std::panic::catch_unwind(|| {
                StreamReader::try_new(found, None).map(|reader| reader.collect::<Vec<_>>().len())
            });
            assert!(
                decoded.is_err(),
                "arrow-ipc no longer panics on it: the regression input is stale"
            );
        }
    }
}
