//! Staff authentication for REST: the users file shared with Flight SQL.
//!
//! A staff call carries `Authorization: Basic` (checked against the argon2
//! hash, on a blocking thread, through the process's `LoginGuard`: rate limits per client
//! address and per user, a bounded number of hashes at once) or `Bearer` with a token from
//! `POST /v1/auth/token`, which lasts `--token-ttl`.
//!
//! With an identity provider (`--oidc-issuer`), `Bearer` also takes the provider's JWTs,
//! checked by `proxima_engine::oidc`: the principal is the token's subject, its role from
//! the role claim (`x-proxima-role` chooses among several), for as long as the token lasts;
//! such a token is used as it is, never traded for one of these.
//!
//! A token is signed, not remembered: `pxs1.<payload>.<HMAC-SHA-256>`, the payload the
//! user, role, expiry, login time and the stamp of the user's entry (base64url JSON), under
//! a key every serving node on the store derives from it (the shared registry's), so any
//! node accepts a token another issued, while the users file keeps that entry.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use proxima_engine::login::LoginGuard;
use proxima_engine::oidc::{self, OidcRefusal, OidcVerifier};
use proxima_engine::{Principal, Role, Users};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tracing::warn;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};

/// Staff users and the key their bearer tokens are signed with.
pub struct StaffAuth {
    users: Users,
    ttl: Duration,
    /// How long after its password was checked a login's tokens may last, renewals
    /// included.
    max_age: Duration,
    key: [u8; 32],
    logins: Arc<LoginGuard>,
    oidc: Option<OidcVerifier>,
}

impl std::fmt::Debug for StaffAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaffAuth")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// What a token says.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user.
    u: String,
    /// The role's name.
    r: String,
    /// Expiry, Unix seconds.
    e: u64,
    /// When the password was checked, Unix seconds: a token traded for a new one keeps it,
    /// so no chain of renewals outlives the login by more than the maximum age.
    #[serde(default)]
    a: u64,
    /// The stamp of the user's entry in the users file when the password was checked
    /// (`Users::stamp`): the token stands only while the entry is unchanged.
    #[serde(default)]
    s: u64,
}

const TOKEN_PREFIX: &str = "pxs1.";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
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
    /// Staff auth over `users`; tokens last `ttl`, renewals included no longer than
    /// `max_age` after the password was checked, and are signed with `key` (the same on
    /// every node that must accept them). Passwords are checked through `logins` (rate
    /// limits, bounded hashing).
    /// `oidc`, if given, is the identity provider whose JWTs `Bearer` also takes.
    pub fn new(
        users: Users,
        ttl: Duration,
        max_age: Duration,
        key: [u8; 32],
        logins: Arc<LoginGuard>,
        oidc: Option<OidcVerifier>,
    ) -> Self {
        Self {
            users,
            ttl,
            max_age,
            key,
            logins,
            oidc,
        }
    }

    /// When the login behind a request's credentials checked its password: now for Basic
    /// credentials, the token's for a bearer token (call after [`Self::principal`] accepted
    /// them).
    pub fn login_time(&self, headers: &HeaderMap) -> u64 {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|token| self.claims(token.trim()).ok())
            .map_or_else(unix_now, |claims| claims.a)
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length")
    }

    /// The principal a token names and the entry stamp it stands on, if this key signed it,
    /// it has not expired and the users file still has that entry.
    fn verify(&self, token: &str) -> ApiResult<(Principal, u64)> {
        let claims = self.claims(token)?;
        let role = claims
            .r
            .parse()
            .map_err(|_| ApiError::unauthorized("unknown bearer token"))?;
        // A user removed, or given another role or password, since: the token no longer
        // stands.
        if self.users.stamp(&claims.u) != Some((role, claims.s)) {
            return Err(ApiError::unauthorized(
                "the token's user was removed, or their role or password changed; sign in with the password again",
            ));
        }
        Ok((
            Principal {
                name: claims.u,
                role,
                issuer: None,
            },
            claims.s,
        ))
    }

    /// What a token says, if this key signed it and neither it nor its login has expired.
    fn claims(&self, token: &str) -> ApiResult<Claims> {
        let unknown = || ApiError::unauthorized("unknown bearer token");
        let signed = token.strip_prefix(TOKEN_PREFIX).ok_or_else(unknown)?;
        let (payload, signature) = signed.split_once('.').ok_or_else(unknown)?;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| unknown())?;
        let mut mac = self.mac();
        mac.update(TOKEN_PREFIX.as_bytes());
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).map_err(|_| unknown())?;
        let claims: Claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or_else(unknown)?;
        let now = unix_now();
        if claims.e <= now {
            return Err(ApiError::unauthorized(
                "the token has expired; get a new one from POST /v1/auth/token",
            ));
        }
        if claims.a.saturating_add(self.max_age.as_secs()) <= now {
            return Err(ApiError::unauthorized(
                "the login has reached its maximum age (--token-max-age); sign in with your password again",
            ));
        }
        Ok(claims)
    }

    /// The principal of a request's credentials, sent from `client`, and the stamp of the
    /// users file's entry they were checked against (what a token issued on them carries).
    pub async fn principal(
        &self,
        headers: &HeaderMap,
        client: Option<std::net::IpAddr>,
    ) -> ApiResult<(Principal, u64)> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("staff routes need Authorization: Basic or Bearer"))?;
        if let Some(token) = value.strip_prefix("Bearer ") {
            let token = token.trim();
            return match &self.oidc {
                Some(verifier) if !token.starts_with(TOKEN_PREFIX) && oidc::looks_like_jwt(token) => {
                    self.verify_oidc(verifier, token, headers, client).await.map(|p| (p, 0))
                }
                _ => self.verify(token),
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
        let client_text = client.map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let user: String = name.chars().take(64).collect();
        match self.logins.verify(&self.users, client, name, password).await {
            Ok(Some(verified)) => Ok(verified),
            Ok(None) => {
                warn!(target: "proxima::auth", user, client = %client_text, "REST login refused: wrong user name or password");
                Err(ApiError::unauthorized("wrong user name or password"))
            }
            Err(refused) => {
                warn!(target: "proxima::auth", user, client = %client_text, %refused, "REST login not checked");
                Err(ApiError::login_refused(&refused))
            }
        }
    }

    /// The principal an identity provider's `token` stands for, sent from `client`
    /// (`OidcVerifier::sign_in`: refused tokens spend the address's failed-login budget).
    async fn verify_oidc(
        &self,
        verifier: &OidcVerifier,
        token: &str,
        headers: &HeaderMap,
        client: Option<std::net::IpAddr>,
    ) -> ApiResult<Principal> {
        let wanted = match headers.get(oidc::ROLE_HEADER).map(|v| v.to_str()) {
            None => None,
            Some(Ok(wanted)) => Some(wanted),
            Some(Err(_)) => return Err(ApiError::malformed("the x-proxima-role header is not text")),
        };
        let signed_in = verifier.sign_in(token, wanted, &self.logins, client).await;
        signed_in.map(|(_, principal)| principal).map_err(|refusal| {
            warn!(target: "proxima::auth", client = ?client, %refusal, "REST bearer token refused");
            let error = match &refusal {
                OidcRefusal::Throttled(refused) => ApiError::login_refused(refused),
                OidcRefusal::Role(_) | OidcRefusal::NoRole(_) => ApiError::forbidden(refusal.to_string()),
                OidcRefusal::KeysUnavailable(_) => ApiError::unavailable(refusal.to_string()),
                _ => ApiError::unauthorized(refusal.to_string()),
            };
            error.with_rule(refusal.rule())
        })
    }

    /// A new bearer token for `principal`, whose password was checked at `login` (Unix
    /// seconds) against the users file's entry of `stamp`: it lasts the token lifetime, but
    /// never past the login's maximum age, and only while that entry stands.
    pub fn issue(&self, principal: Principal, login: u64, stamp: u64) -> StaffToken {
        let now = unix_now();
        let expires = (now + self.ttl.as_secs()).min(login.saturating_add(self.max_age.as_secs()));
        let claims = Claims {
            u: principal.name,
            r: principal.role.name().to_string(),
            e: expires,
            a: login,
            s: stamp,
        };
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims).expect("claims serialise"));
        let mut mac = self.mac();
        mac.update(TOKEN_PREFIX.as_bytes());
        mac.update(payload.as_bytes());
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        StaffToken {
            token: format!("{TOKEN_PREFIX}{payload}.{signature}"),
            expires_in: expires.saturating_sub(now),
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
        (status = 401, description = "Wrong credentials", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 403, description = "An identity provider's token, which is used as it is, never traded", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many login attempts from this address or for this user (Retry-After)", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 503, description = "Every password check slot is busy (Retry-After)", body = super::error::ErrorBody, content_type = "application/problem+json"),
    ))]
pub async fn token(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<StaffToken>> {
    // A renewal carries the stamp its token stood on, a login the one its password was
    // checked against: never the file's as it may be by now.
    let (principal, stamp) = state.staff_stamped(&headers, &Role::ALL).await?;
    if principal.issuer.is_some() {
        // Traded for one of ours, it would outlive the provider's `exp` and its revocation.
        return Err(ApiError::forbidden(
            "an identity provider's token is used as it is on every staff route; it is not traded for another",
        ));
    }
    let login = state.staff_auth.login_time(&headers);
    Ok(Json(state.staff_auth.issue(principal, login, stamp)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(key: u8, ttl: Duration) -> StaffAuth {
        // One users file read by every node: the same entries, the same stamps.
        static USERS: std::sync::OnceLock<Users> = std::sync::OnceLock::new();
        let users = USERS
            .get_or_init(|| Users::generated(&[("alice", Role::Tracer, "correct horse battery")]).unwrap())
            .clone();
        let max_age = Duration::from_secs(12 * 3600);
        StaffAuth::new(
            users,
            ttl,
            max_age,
            [key; 32],
            Arc::new(LoginGuard::new(Default::default())),
            None,
        )
    }

    /// The stamp of `name`'s entry in the test users file (0 for no such user).
    fn stamp(name: &str) -> u64 {
        auth(1, Duration::ZERO).users.stamp(name).map_or(0, |(_, stamp)| stamp)
    }

    #[test]
    fn a_token_signed_by_one_node_is_accepted_by_another_with_the_same_key_only() {
        let alice = Principal {
            name: "alice".into(),
            role: Role::Tracer,
            issuer: None,
        };
        let issued = auth(1, Duration::from_secs(60)).issue(alice.clone(), unix_now(), stamp("alice"));
        let (verified, _) = auth(1, Duration::from_secs(60)).verify(&issued.token).unwrap();
        assert_eq!((verified.name, verified.role), (alice.name.clone(), alice.role));
        assert!(
            auth(2, Duration::from_secs(60)).verify(&issued.token).is_err(),
            "another store's key"
        );

        // Any change to the payload breaks the signature: no one makes themselves admin.
        let (payload, signature) = issued.token[TOKEN_PREFIX.len()..].split_once('.').unwrap();
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        let forged = String::from_utf8(json).unwrap().replace("tracer", "admin");
        let forged = format!(
            "{TOKEN_PREFIX}{}.{signature}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged)
        );
        assert!(auth(1, Duration::from_secs(60)).verify(&forged).is_err());
        for junk in ["", "pxs1.", "pxs1.a.b", "pxs1..", "x.y.z"] {
            assert!(auth(1, Duration::from_secs(60)).verify(junk).is_err(), "{junk:?}");
        }

        // A user who is gone, or has another role now, is refused though the token is good.
        let bob = auth(1, Duration::from_secs(60)).issue(
            Principal {
                name: "bob".into(),
                role: Role::Tracer,
                issuer: None,
            },
            unix_now(),
            stamp("alice"),
        );
        assert!(
            auth(1, Duration::from_secs(60)).verify(&bob.token).is_err(),
            "no such user"
        );
        let promoted = auth(1, Duration::from_secs(60)).issue(
            Principal {
                name: "alice".into(),
                role: Role::Admin,
                issuer: None,
            },
            unix_now(),
            stamp("alice"),
        );
        assert!(
            auth(1, Duration::from_secs(60)).verify(&promoted.token).is_err(),
            "not her role"
        );

        let expired = auth(1, Duration::ZERO).issue(alice.clone(), unix_now(), stamp("alice"));
        let err = auth(1, Duration::from_secs(60)).verify(&expired.token).unwrap_err();
        assert!(format!("{err:?}").contains("expired"), "{err:?}");
    }

    #[test]
    fn renewals_never_outlive_the_logins_maximum_age() {
        let alice = Principal {
            name: "alice".into(),
            role: Role::Tracer,
            issuer: None,
        };
        let auth = auth(1, Duration::from_secs(3600));
        // A login 11 h 30 min ago (maximum age 12 h): a renewal lasts 30 minutes, not an hour.
        let login = unix_now() - 11 * 3600 - 1800;
        let renewed = auth.issue(alice.clone(), login, stamp("alice"));
        assert!((1798..=1800).contains(&renewed.expires_in), "{}", renewed.expires_in);
        let bearer: HeaderMap = [(
            header::AUTHORIZATION,
            format!("Bearer {}", renewed.token).parse().unwrap(),
        )]
        .into_iter()
        .collect();
        assert_eq!(auth.login_time(&bearer), login, "a renewal keeps the login's time");
        // A login past its maximum age: its tokens are refused, whatever their expiry says.
        let stale = auth.issue(alice, unix_now() - 13 * 3600, stamp("alice"));
        let err = auth.verify(&stale.token).unwrap_err();
        assert!(
            format!("{err:?}").contains("expired") || format!("{err:?}").contains("maximum age"),
            "{err:?}"
        );
        let before = unix_now();
        let basic = auth.login_time(&HeaderMap::new());
        assert!((before..=unix_now()).contains(&basic), "Basic: now");
    }
}
