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
/// Keys one device may register that start on one day: a GAEN phone makes one a day (and
/// a new one if its user resets it). Every key makes 144 RPIs that tracing holds in memory,
/// so without a bound one device could fill the server's memory.
pub const MAX_KEYS_PER_DAY: u32 = 2;

/// How many keys each device registered that start on each day (µs of the day's
/// midnight), loaded from `exposure_keys` at start and kept as keys are registered.
#[derive(Debug, Default)]
pub struct KeyBook {
    counts: std::sync::Mutex<std::collections::HashMap<(String, i64), u32>>,
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

impl KeyBook {
    /// The counts of the keys in the store.
    pub async fn load(factory: &proxima_engine::SessionFactory) -> crate::Result<Self> {
        use arrow::array::AsArray;
        use arrow::datatypes::TimestampMicrosecondType;
        let mut counts = std::collections::HashMap::new();
        for batch in super::read_table(factory, Table::ExposureKeys).await? {
            let devices = batch.column(0).as_string::<i32>();
            let starts = batch.column(2).as_primitive::<TimestampMicrosecondType>();
            for i in 0..batch.num_rows() {
                let day = starts.value(i).div_euclid(MICROS_PER_DAY);
                *counts.entry((devices.value(i).to_string(), day)).or_default() += 1;
            }
        }
        Ok(Self {
            counts: std::sync::Mutex::new(counts),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(String, i64), u32>> {
        self.counts.lock().expect("key book lock is never poisoned")
    }

    /// Counts `starts` (µs) as registered by `device`, unless that would pass
    /// [`MAX_KEYS_PER_DAY`] on some day: then nothing is counted and the answer names the
    /// first key over the bound. Days before `forget_before` (µs) are forgotten.
    fn reserve(&self, device: &str, starts: &[i64], forget_before: i64) -> ApiResult<()> {
        let mut counts = self.lock();
        counts.retain(|(_, day), _| *day >= forget_before.div_euclid(MICROS_PER_DAY));
        let mut wanted: std::collections::HashMap<i64, u32> = std::collections::HashMap::new();
        for (i, start) in starts.iter().enumerate() {
            let day = start.div_euclid(MICROS_PER_DAY);
            let n = wanted.entry(day).or_default();
            *n += 1;
            let held = counts.get(&(device.to_string(), day)).copied().unwrap_or(0);
            if held + *n > MAX_KEYS_PER_DAY {
                return Err(ApiError::invalid(format!(
                    "keys[{i}].rolling_start_interval_number: this device would have {} keys starting on {}; \
                     at most {MAX_KEYS_PER_DAY} a day (a GAEN phone makes one)",
                    held + *n,
                    DateTime::<Utc>::from_timestamp_micros(day * MICROS_PER_DAY)
                        .map(|d| d.date_naive().to_string())
                        .unwrap_or_default()
                )));
            }
        }
        for (day, n) in wanted {
            *counts.entry((device.to_string(), day)).or_default() += n;
        }
        Ok(())
    }

    /// Forgets keys [`KeyBook::reserve`] counted whose write failed.
    fn release(&self, device: &str, starts: &[i64]) {
        let mut counts = self.lock();
        for start in starts {
            if let Some(n) = counts.get_mut(&(device.to_string(), start.div_euclid(MICROS_PER_DAY))) {
                *n = n.saturating_sub(1);
            }
        }
    }
}
/// A key covers at most a day of 10-minute intervals.
const MAX_ROLLING_PERIOD: i64 = proxima_udfs::gaen::DEFAULT_ROLLING_PERIOD;

/// One temporary exposure key.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposureKeyIn {
    /// The key: 16 bytes as 32 hex digits.
    #[schema(example = "75c734c6dd1a782de7a965da5eb93125", pattern = r"^[0-9A-Fa-f]{32}$")]
    pub key: String,
    /// Its first 10-minute interval (unix seconds / 600).
    #[schema(example = 2_948_976)]
    pub rolling_start_interval_number: i64,
    /// How many intervals it covers (1 to 144; default 144, a day).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 144)]
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
        (status = 400, description = "Malformed JSON or an unknown field", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 401, description = "Missing or bad upload token", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 413, description = "A body over the size limit", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 422, description = "An invalid key (index and field named), or more than 14 keys", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 429, description = "Over the device's rate limit (see Retry-After)", body = super::error::ErrorBody, content_type = "application/problem+json"),
    ))]
pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<KeysAccepted>> {
    let device = state.device_of(&headers).await?;
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
        // 422 like any other element the schema refuses (`maxItems`), not 413: the body
        // is within the size limit, and a client tells the two apart.
        return Err(ApiError::invalid(format!(
            "body: {} keys in one request; at most {MAX_KEYS} (two weeks of daily keys)",
            keys.len()
        )));
    }
    let now = state.clock.now();
    let window = super::observations::Window::of(&state);
    let (earliest, latest) = (window.earliest, window.latest);
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
            .checked_mul(proxima_udfs::gaen::INTERVAL_SECONDS)
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
    state
        .exposure_keys
        .reserve(&device, &starts, earliest.timestamp_micros())?;
    let n = teks.len();
    let batch = RecordBatch::try_new(
        schema::EXPOSURE_KEYS.clone(),
        vec![
            Arc::new(StringArray::from(vec![device.as_str(); n])),
            Arc::new(StringArray::from(teks)),
            Arc::new(TimestampMicrosecondArray::from(starts.clone()).with_timezone("UTC")),
            Arc::new(Int32Array::from(periods)),
            Arc::new(TimestampMicrosecondArray::from(vec![now.timestamp_micros(); n]).with_timezone("UTC")),
        ],
    )
    .map_err(|e| ApiError::internal("building the exposure key rows failed", e));
    let written = match batch {
        Ok(batch) => {
            state
                .make_durable(
                    vec![Entry {
                        table: Table::ExposureKeys,
                        batch,
                    }],
                    "exposure keys",
                )
                .await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        state.exposure_keys.release(&device, &starts);
        return Err(e);
    }
    Ok(Json(KeysAccepted { accepted: n }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxima_engine::{SessionFactory, SessionOptions, Store};
    use proxima_storage::PartitionWriter;

    /// After a restart, the keys in the store still count against the daily bound.
    #[tokio::test]
    async fn the_daily_bound_survives_a_restart() {
        let store = Store::in_memory();
        let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let midnight = day.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_micros();
        let device = "00000000-0000-4000-8000-000000000001";
        let batch = RecordBatch::try_new(
            schema::EXPOSURE_KEYS.clone(),
            vec![
                Arc::new(StringArray::from(vec![device; 2])),
                Arc::new(StringArray::from(vec!["00".repeat(16), "11".repeat(16)])),
                Arc::new(TimestampMicrosecondArray::from(vec![midnight; 2]).with_timezone("UTC")),
                Arc::new(Int32Array::from(vec![144; 2])),
                Arc::new(TimestampMicrosecondArray::from(vec![midnight; 2]).with_timezone("UTC")),
            ],
        )
        .unwrap();
        let writer = PartitionWriter::new(store.clone(), "test");
        let mut transaction = writer.begin();
        transaction
            .write_file(Table::ExposureKeys, Some(day), &[batch])
            .await
            .unwrap();
        transaction.commit().await.unwrap();
        let factory = SessionFactory::new(store, SessionOptions::default()).unwrap();
        let book = KeyBook::load(&factory).await.unwrap();
        let refused = book.reserve(device, &[midnight + 3_600_000_000], 0).unwrap_err();
        assert!(format!("{refused:?}").contains("at most 2 a day"), "{refused:?}");
        // Another day, and another device, are not held back.
        book.reserve(device, &[midnight + MICROS_PER_DAY], 0).unwrap();
        book.reserve("00000000-0000-4000-8000-000000000002", &[midnight], 0)
            .unwrap();
    }
}
