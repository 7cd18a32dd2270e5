//! Staff authentication for REST: the users file shared with Flight SQL.
//!
//! A staff call carries `Authorization: Basic` (checked against the argon2
//! hash, on a blocking thread) or `Bearer` with a token from
//! `POST /v1/auth/token`, which lasts `--token-ttl`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use proxima_engine::{Principal, Role, Users};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};

/// Staff users and their bearer tokens.
#[derive(Debug)]
pub struct StaffAuth {
    users: Users,
    ttl: Duration,
    tokens: Mutex<HashMap<String, (Principal, Instant)>>,
}

/// Answer of `POST /v1/auth/token`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StaffToken {
    /// Bearer token for staff routes.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

impl StaffAuth {
    /// Staff auth over `users`; tokens last `ttl`.
    pub fn new(users: Users, ttl: Duration) -> Self {
        Self {
            users,
            ttl,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The principal of a request's credentials.
    pub async fn principal(&self, headers: &HeaderMap) -> ApiResult<Principal> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("staff routes need Authorization: Basic or Bearer"))?;
        if let Some(token) = value.strip_prefix("Bearer ") {
            let mut tokens = self.tokens.lock().expect("token lock is never poisoned");
            return match tokens.get(token.trim()) {
                Some((principal, expires)) if *expires > Instant::now() => Ok(principal.clone()),
                Some(_) => {
                    tokens.remove(token.trim());
                    Err(ApiError::unauthorized(
                        "the token has expired; get a new one from POST /v1/auth/token",
                    ))
                }
                None => Err(ApiError::unauthorized("unknown bearer token")),
            };
        }
        let Some(encoded) = value.strip_prefix("Basic ") else {
            return Err(ApiError::unauthorized("Authorization must be Basic or Bearer"));
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded.trim()))
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| ApiError::unauthorized("Basic credentials are not base64 of user:password"))?;
        let (name, password) = decoded
            .split_once(':')
            .ok_or_else(|| ApiError::unauthorized("Basic credentials are not user:password"))?;
        let users = self.users.clone();
        let (name, password) = (name.to_string(), password.to_string());
        let principal = tokio::task::spawn_blocking(move || users.verify(&name, &password))
            .await
            .map_err(|e| ApiError::internal("checking the password failed", e))?;
        principal.ok_or_else(|| ApiError::unauthorized("wrong user name or password"))
    }

    /// A new bearer token for `principal`.
    pub fn issue(&self, principal: Principal) -> StaffToken {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let now = Instant::now();
        let mut tokens = self.tokens.lock().expect("token lock is never poisoned");
        tokens.retain(|_, (_, expires)| *expires > now);
        tokens.insert(token.clone(), (principal, now + self.ttl));
        StaffToken {
            token,
            expires_in: self.ttl.as_secs(),
        }
    }
}

/// Refuses a principal whose role is not in `roles` (403).
pub fn require_role(principal: &Principal, roles: &[Role]) -> ApiResult<()> {
    if roles.contains(&principal.role) {
        Ok(())
    } else {
        let allowed: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        Err(ApiError::forbidden(format!(
            "user '{}' has role {}; this route needs {}",
            principal.name,
            principal.role,
            allowed.join(" or ")
        )))
    }
}

/// `POST /v1/auth/token`: trades Basic credentials for a bearer token.
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth",
    security(("staff_basic" = [])),
    responses(
        (status = 200, description = "A bearer token", body = StaffToken),
        (status = 401, description = "Wrong credentials", body = super::error::ErrorBody),
    ))]
pub async fn token(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<StaffToken>> {
    let principal = state.staff(&headers, &Role::ALL).await?;
    Ok(Json(state.staff_auth.issue(principal)))
}
