//! `GET /v1/ephemeral-ids`: the rotating identifiers a phone broadcasts, issued by the
//! server for the coming epochs (see `proxima_engine::ephemeral`). Only the server's key
//! links an identifier to the device, or two identifiers to each other; the phone fetches
//! a batch ahead (as BlueTrace phones fetch TempIDs) and broadcasts each in its epoch.

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use proxima_engine::ephemeral::handle_of;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};

/// Identifiers issued when the request does not say how many: a day of 15-minute epochs.
pub const DEFAULT_COUNT: u32 = 96;
/// The most identifiers one request may take: a week of 15-minute epochs.
pub const MAX_COUNT: u32 = 672;

/// One identifier and the epoch it is valid in.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EphemeralIdOut {
    /// 16 bytes as 32 lowercase hex digits: what the phone broadcasts in the epoch, and
    /// what the phones that hear it upload as `observed`.
    pub id: String,
    /// When the epoch starts (RFC 3339).
    pub valid_from: String,
    /// When it ends (RFC 3339); a sighting outside the epoch does not count.
    pub valid_until: String,
}

/// `GET /v1/ephemeral-ids` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EphemeralIds {
    /// The length of an epoch, in seconds.
    pub epoch_seconds: u64,
    /// One identifier per epoch, from the current one on.
    pub ids: Vec<EphemeralIdOut>,
}

/// The `count` of a query string (the only parameter), checked.
fn count_of(query: Option<&str>) -> ApiResult<u32> {
    let mut count = None;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("count", value)) => {
                let n = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_COUNT).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(format!("query.count: '{value}' is not a number from 1 to {MAX_COUNT}"))
                    })?;
                count = Some(n);
            }
            _ => {
                let name = pair.split('=').next().unwrap_or_default();
                let name: String = name.chars().take(64).collect();
                return Err(ApiError::invalid(format!(
                    "query: unknown parameter '{name}' (the only one is count)"
                )));
            }
        }
    }
    Ok(count.unwrap_or(DEFAULT_COUNT))
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `GET /v1/ephemeral-ids?count=N`: identifiers for the calling device, one per epoch from
/// the current one on.
#[utoipa::path(get, path = "/v1/ephemeral-ids", tag = "devices",
    security(("upload_token" = [])),
    params(("count" = Option<u32>, Query, minimum = 1, maximum = 672, description = "How many epochs ahead (1 to 672; default 96)")),
    responses(
        (status = 200, description = "Identifiers to broadcast, one per epoch", body = EphemeralIds),
        (status = 401, description = "Missing or bad upload token", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 404, description = "This server issues no identifiers (no --id-key)", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid count", body = super::error::ErrorBody, content_type = "application/problem+json"),
    ))]
pub async fn issue(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<EphemeralIds>> {
    let device = state.device_of(&headers).await?;
    if let Err(wait) = state.limiter.check(&device) {
        return Err(ApiError::rate_limited(wait, "this device"));
    }
    let count = count_of(query.as_deref())?;
    // The session factory's, so that what is issued is what tracing resolves.
    let Some(identifiers) = &state.factory.options().identifiers else {
        return Err(ApiError::not_found(
            "this server issues no rotating identifiers (it was started without --id-key)",
        ));
    };
    let handle = handle_of(&device).ok_or_else(|| ApiError::internal("issuing identifiers", "a device UUID"))?;
    let epoch = identifiers.epoch();
    let ids = identifiers
        .keys()
        .schedule(handle, state.clock.now(), count, epoch)
        .into_iter()
        .map(|(id, from, until)| EphemeralIdOut {
            id: hex::encode(id),
            valid_from: rfc3339(from),
            valid_until: rfc3339(until),
        })
        .collect();
    Ok(Json(EphemeralIds {
        epoch_seconds: (epoch.as_secs() / 60).max(1) * 60,
        ids,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_checked_and_defaults_to_a_day() {
        assert_eq!(count_of(None).unwrap(), DEFAULT_COUNT);
        assert_eq!(count_of(Some("")).unwrap(), DEFAULT_COUNT);
        assert_eq!(count_of(Some("count=3")).unwrap(), 3);
        assert_eq!(count_of(Some("count=672")).unwrap(), 672);
        for bad in ["count=0", "count=673", "count=-1", "count=x", "count="] {
            assert!(
                count_of(Some(bad)).unwrap_err().detail().contains("query.count"),
                "{bad}"
            );
        }
        assert!(
            count_of(Some("n=3"))
                .unwrap_err()
                .detail()
                .contains("unknown parameter 'n'")
        );
    }
}
