//! `POST /v1/exposure-keys`: a phone that uses GAEN (Apple/Google Exposure Notification)
//! registers its temporary exposure keys, as it makes them (daily), so that sightings of
//! the rolling proximity identifiers they derive become encounters like any other.
//!
//! The server keeps the key (`exposure_keys`, by the day the key starts; retention ages it
//! out with the observations), never its identifiers: who broadcast an RPI is worked out
//! when a trace reads the sighting (`proxima_engine::index`, and the `encounters` view).

use std::sync::Arc;

use arrow::array::{Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use proxima_engine::{Table, ids, schema};
use proxima_storage::wal::Entry;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::body::{read_limited, require_json, typed_body};
use super::error::{ApiError, ApiResult};

/// Keys one request may carry: GAEN phones upload at most 14 days of keys.
pub const MAX_KEYS: usize = 14;
/// Seconds in one ENIntervalNumber.
const INTERVAL_SECONDS: i64 = 600;
/// A key covers at most a day of 10-minute intervals.
const MAX_ROLLING_PERIOD: i64 = 144;

/// One temporary exposure key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposureKeyIn {
    /// The key: 16 bytes as 32 hex digits.
    #[schema(example = "75c734c6dd1a782de7a965da5eb93125")]
    pub key: String,
    /// Its first 10-minute interval (unix seconds / 600).
    #[schema(example = 2_948_976)]
    pub rolling_start_interval_number: i64,
    /// How many intervals it covers (1 to 144; default 144, a day).
    #[serde(default)]
    pub rolling_period: Option<i64>,
}

/// `POST /v1/exposure-keys` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeysAccepted {
    /// Keys stored.
    pub accepted: usize,
}

/// `POST /v1/exposure-keys`: the calling device's temporary exposure keys.
#[utoipa::path(post, path = "/v1/exposure-keys", tag = "devices", request_body = Vec<ExposureKeyIn>,
    security(("upload_token" = [])),
    responses(
        (status = 200, description = "Stored durably", body = KeysAccepted),
        (status = 400, description = "Malformed JSON or an unknown field", body = super::error::ErrorBody),
        (status = 401, description = "Missing or bad upload token", body = super::error::ErrorBody),
        (status = 413, description = "More than 14 keys", body = super::error::ErrorBody),
        (status = 422, description = "An invalid key (index and field named)", body = super::error::ErrorBody),
        (status = 429, description = "Over the device's rate limit (see Retry-After)", body = super::error::ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<KeysAccepted>> {
    let device = state.device_of(&headers)?;
    if let Err(wait) = state.limiter.check(&device) {
        return Err(ApiError::rate_limited(wait, "this device"));
    }
    require_json(&headers)?;
    let bytes = read_limited(&headers, body, state.options.max_body).await?;
    let keys: Vec<ExposureKeyIn> = typed_body(&bytes, "keys")?;
    if keys.is_empty() {
        return Err(ApiError::invalid("body: the array is empty; send at least one key"));
    }
    if keys.len() > MAX_KEYS {
        return Err(ApiError::too_large(format!(
            "body: {} keys in one request; at most {MAX_KEYS} (two weeks of daily keys)",
            keys.len()
        )));
    }
    let now = state.clock.now();
    let earliest = proxima_storage::retention::oldest_kept_day(now.date_naive(), state.options.retention_days)
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc();
    let latest = now + state.options.future_tolerance;
    let (mut teks, mut starts, mut periods) = (Vec::new(), Vec::new(), Vec::new());
    for (i, key) in keys.iter().enumerate() {
        let tek = ids::rpi(&key.key).map_err(|_| ApiError::invalid(format!("keys[{i}].key: not 32 hex digits")))?;
        let period = key.rolling_period.unwrap_or(MAX_ROLLING_PERIOD);
        if !(1..=MAX_ROLLING_PERIOD).contains(&period) {
            return Err(ApiError::invalid(format!(
                "keys[{i}].rolling_period: {period} is not between 1 and {MAX_ROLLING_PERIOD}"
            )));
        }
        let start = key
            .rolling_start_interval_number
            .checked_mul(INTERVAL_SECONDS)
            .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
            .filter(|s| *s >= earliest && *s <= latest)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "keys[{i}].rolling_start_interval_number: {} does not start between {} (the oldest data kept) and now",
                    key.rolling_start_interval_number,
                    earliest.to_rfc3339()
                ))
            })?;
        teks.push(tek);
        starts.push(start.timestamp_micros());
        periods.push(period as i32);
    }
    let n = teks.len();
    let batch = RecordBatch::try_new(
        schema::EXPOSURE_KEYS.clone(),
        vec![
            Arc::new(StringArray::from(vec![device.as_str(); n])),
            Arc::new(StringArray::from(teks)),
            Arc::new(TimestampMicrosecondArray::from(starts).with_timezone("UTC")),
            Arc::new(Int32Array::from(periods)),
            Arc::new(TimestampMicrosecondArray::from(vec![now.timestamp_micros(); n]).with_timezone("UTC")),
        ],
    )
    .map_err(|e| ApiError::internal("building the exposure key rows failed", e))?;
    state
        .make_durable(
            vec![Entry {
                table: Table::ExposureKeys,
                batch,
            }],
            "exposure keys",
        )
        .await?;
    Ok(Json(KeysAccepted { accepted: n }))
}
