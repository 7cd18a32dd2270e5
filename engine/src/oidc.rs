//! Staff sign-in through an OpenID Connect provider: the checks a bearer JWT passes before
//! it stands for a staff member, shared by the Flight SQL service and REST's staff routes.
//!
//! A token is accepted only if all of this holds: its header names RS256 or ES256 (never
//! `none`, never an HMAC algorithm, whose "secret" an attacker would take from the public
//! key) and a `kid` found in the provider's key set, with a key of that algorithm's family;
//! the signature verifies; `iss` is the configured issuer and `aud` holds the configured
//! audience; `exp` is present and not past, and `nbf`, when present, not ahead (both within
//! a bounded leeway); `sub` is present; and the role claim holds at least one of Proxima's
//! role names. The key set (the JWKS) comes from a URL or a file, or from the issuer's
//! discovery document; it is cached, fetched again when a token names a key it does not
//! hold (at most once per [`OidcOptions::refresh_interval`], so a flood of made-up `kid`s
//! costs the provider nothing) and, in the background, when it is older than
//! [`KEYS_MAX_AGE`], so a provider that rotates its keys (adding or dropping one) needs no
//! restart here.
//!
//! The checks themselves are `jsonwebtoken`'s (12, past its `nbf`/`exp` type confusion);
//! this module chooses what to allow and says why a token was refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

use crate::login::{LoginGuard, LoginRefused};
use crate::{Principal, Role};

/// The header (HTTP) or metadata key (gRPC) with which a request whose token holds several
/// roles names the one it acts as.
pub const ROLE_HEADER: &str = "x-proxima-role";
/// The longest token looked at; anything longer is refused unread.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The largest discovery document or key set read from the provider.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// A key set older than this is fetched again before the next token is checked.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
/// How long one request to the provider may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest clock leeway allowed on `exp` and `nbf`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// The longest subject or display name kept.
const MAX_NAME: usize = 256;

/// How tokens from the provider are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcOptions {
    /// The issuer every token's `iss` must equal (the provider's issuer identifier, a URL).
    pub issuer: String,
    /// The audience every token's `aud` must hold.
    pub audience: String,
    /// Where the provider's key set is: an `https://` URL (`http://` on loopback only) or a
    /// file; `None` reads `jwks_uri` from the issuer's `/.well-known/openid-configuration`.
    pub jwks: Option<String>,
    /// The claim whose values name the token's roles (a dotted path reaches into objects,
    /// as Keycloak's `realm_access.roles`).
    pub role_claim: String,
    /// Clock leeway on `exp` and `nbf`.
    pub leeway: Duration,
    /// The least time between two fetches of the key set that unknown `kid`s prompt.
    pub refresh_interval: Duration,
}

impl OidcOptions {
    /// Options for `issuer` and `audience` with the defaults: discovery, claim `roles`,
    /// 60 s leeway, at most one refresh every 10 s.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks: None,
            role_claim: "roles".into(),
            leeway: Duration::from_secs(60),
            refresh_interval: Duration::from_secs(10),
        }
    }
}

/// Why a token was not accepted. The message is what the client is told and the audit
/// records; [`OidcRefusal::rule`] is the short name of the check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcRefusal {
    /// Not a JWS in compact form, or its header or payload is not JSON.
    #[error("the bearer token is not a signed JWT: {0}")]
    Malformed(String),
    /// An algorithm outside the allow-list, or one the key is not for.
    #[error("the token's algorithm {0} is not accepted (RS256 and ES256 are)")]
    Algorithm(String),
    /// The header names no key, or one the provider's key set does not hold.
    #[error("{0}")]
    UnknownKey(String),
    /// The signature does not verify with the provider's key.
    #[error("the token's signature does not verify")]
    Signature,
    /// `exp` is past.
    #[error("the token has expired: get a new one from the identity provider")]
    Expired,
    /// `nbf` is ahead.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token was issued by another issuer")]
    Issuer,
    /// `aud` does not hold the configured audience.
    #[error("the token is for another audience")]
    Audience,
    /// A required claim is missing or of the wrong type.
    #[error("the token's claim '{0}' is missing or not valid")]
    Claim(String),
    /// The role claim names none of Proxima's roles.
    #[error("the token's claim '{0}' names no Proxima role: no access")]
    NoRole(String),
    /// The role claim names several roles and the request chose none of them, or one the
    /// token does not hold.
    #[error("{0}")]
    Role(String),
    /// Too many refused tokens or passwords from the client's address: not checked.
    #[error("{0}")]
    Throttled(LoginRefused),
    /// The provider's key set could not be had (why is logged, not told the client).
    #[error("the identity provider's keys are not available; try again shortly")]
    KeysUnavailable(String),
}

impl OidcRefusal {
    /// The short name of the check that refused, for audit records.
    pub fn rule(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "oidc: malformed token",
            Self::Algorithm(_) => "oidc: algorithm",
            Self::UnknownKey(_) => "oidc: unknown key",
            Self::Signature => "oidc: signature",
            Self::Expired => "oidc: expired",
            Self::NotYetValid => "oidc: not yet valid",
            Self::Issuer => "oidc: issuer",
            Self::Audience => "oidc: audience",
            Self::Claim(_) => "oidc: claims",
            Self::NoRole(_) => "oidc: no role",
            Self::Role(_) => "oidc: role choice",
            Self::KeysUnavailable(_) => "oidc: keys unavailable",
            Self::Throttled(_) => "login limits",
        }
    }
}

/// A token that passed every check: who it stands for and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcLogin {
    /// The token's `iss`.
    pub issuer: String,
    /// The token's `sub`: the principal's name.
    pub subject: String,
    /// `preferred_username`, for display only.
    pub display: Option<String>,
    /// Proxima's roles the role claim names, in [`Role::ALL`]'s order.
    pub roles: Vec<Role>,
    /// When the token stops being accepted here: its `exp` plus the clock leeway (a login
    /// made with it ends then).
    pub expires: SystemTime,
}

impl OidcLogin {
    /// The principal this token stands for, acting as `wanted` (the `x-proxima-role` a
    /// request sends). A token with one role needs no choice; with several, the request
    /// must name one, so that a login always has exactly one role.
    pub fn principal(&self, wanted: Option<&str>) -> Result<Principal, OidcRefusal> {
        let role = match (wanted, self.roles.as_slice()) {
            (None, [role]) => *role,
            (None, roles) => {
                return Err(OidcRefusal::Role(format!(
                    "the token holds the roles {}: name the one to act as in the x-proxima-role header",
                    names(roles)
                )));
            }
            (Some(wanted), roles) => match wanted.parse::<Role>() {
                Ok(role) if roles.contains(&role) => role,
                _ => {
                    return Err(OidcRefusal::Role(format!(
                        "x-proxima-role '{}' is not one of the token's roles ({})",
                        printable(wanted, 32),
                        names(roles)
                    )));
                }
            },
        };
        Ok(Principal {
            name: self.subject.clone(),
            role,
            issuer: Some(self.issuer.clone()),
        })
    }

    /// How long until the token expires (zero if it has).
    pub fn remaining(&self) -> Duration {
        self.expires.duration_since(SystemTime::now()).unwrap_or_default()
    }
}

fn names(roles: &[Role]) -> String {
    roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ")
}

/// Whether `token` has the shape of a JWS in compact form (three base64url parts, the
/// first a JSON object's encoding, `eyJ…`), so a service can tell it from its own tokens
/// before any check.
pub fn looks_like_jwt(token: &str) -> bool {
    if !token.starts_with("eyJ") {
        return false;
    }
    let mut parts = token.split('.');
    let shaped = |part: Option<&str>| {
        part.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    };
    shaped(parts.next()) && shaped(parts.next()) && parts.next().is_some() && parts.next().is_none()
}

/// A usable key of the provider's set.
struct Key {
    algorithm: Algorithm,
    decoding: DecodingKey,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Arc<Key>>,
    /// When the set was last fetched successfully.
    fetched: Option<Instant>,
}

/// Where the key set comes from.
#[derive(Debug, Clone)]
enum KeySource {
    Url(String),
    File(PathBuf),
    Discovery,
}

/// Checks bearer JWTs against one provider; cheap to clone (one shared key cache).
#[derive(Clone)]
pub struct OidcVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    options: OidcOptions,
    source: KeySource,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    /// Held while the key set is fetched; holds when the last fetch was tried.
    fetching: Mutex<Option<Instant>>,
    /// The key set's URL once discovery found it.
    discovered: Mutex<Option<String>>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// Checks that `url` is one the provider may be reached at: `https`, or `http` to a loopback
/// host (tests, a provider beside the server).
fn check_url(what: &str, url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{what} '{url}' is not a URL: {e}"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback => Ok(parsed),
        "http" => Err(format!(
            "{what} '{url}' is plain http: the provider must be reached over https (http only on loopback)"
        )),
        other => Err(format!("{what} '{url}' has scheme '{other}': https expected")),
    }
}

impl OidcVerifier {
    /// A verifier for `options`. Fails on options that can never work (an issuer or key set
    /// URL that is not https, a key file that cannot be read or holds no usable key, a
    /// leeway over [`MAX_LEEWAY`]); the provider itself is asked at the first token, or by
    /// [`OidcVerifier::load`], so that a provider that is down does not stop a server whose
    /// users file still lets staff in.
    pub fn new(options: OidcOptions) -> Result<Self, String> {
        check_url("--oidc-issuer", &options.issuer)?;
        if options.audience.is_empty() {
            return Err("--oidc-audience is empty".into());
        }
        if options.role_claim.is_empty() || options.role_claim.split('.').any(str::is_empty) {
            return Err(format!(
                "--oidc-role-claim '{}' is not a claim name",
                options.role_claim
            ));
        }
        if options.leeway > MAX_LEEWAY {
            return Err(format!(
                "the OIDC clock leeway {:?} is over the most allowed, {MAX_LEEWAY:?}",
                options.leeway
            ));
        }
        let source = match &options.jwks {
            None => KeySource::Discovery,
            Some(s) if s.contains("://") => {
                check_url("--oidc-jwks", s)?;
                KeySource::Url(s.clone())
            }
            Some(path) => KeySource::File(PathBuf::from(path)),
        };
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the identity provider: {e}"))?;
        let verifier = Self {
            inner: Arc::new(Inner {
                options,
                source,
                http,
                cache: RwLock::new(KeyCache::default()),
                fetching: Mutex::new(None),
                discovered: Mutex::new(None),
            }),
        };
        if let KeySource::File(path) = &verifier.inner.source {
            // A file is read now: a wrong path is a mistake in the configuration.
            let bytes = std::fs::read(path).map_err(|e| format!("--oidc-jwks {}: {e}", path.display()))?;
            let keys = parse_key_set(&bytes).map_err(|e| format!("--oidc-jwks {}: {e}", path.display()))?;
            let mut cache = verifier.inner.cache.try_write().expect("no one else holds it yet");
            cache.keys = keys;
            cache.fetched = Some(Instant::now());
        }
        Ok(verifier)
    }

    /// The options this verifier checks with.
    pub fn options(&self) -> &OidcOptions {
        &self.inner.options
    }

    /// Fetches the key set now; returns how many usable keys it holds.
    pub async fn load(&self) -> Result<usize, String> {
        let mut last = self.inner.fetching.lock().await;
        let keys = self.fetch_keys().await;
        *last = Some(Instant::now());
        let keys = keys?;
        let count = keys.len();
        let mut cache = self.inner.cache.write().await;
        cache.keys = keys;
        cache.fetched = Some(Instant::now());
        Ok(count)
    }

    /// The key set from its source.
    async fn fetch_keys(&self) -> Result<HashMap<String, Arc<Key>>, String> {
        let bytes = match &self.inner.source {
            KeySource::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("reading {}: {e}", path.display()))?,
            KeySource::Url(url) => self.get(url).await?,
            KeySource::Discovery => {
                let url = self.jwks_uri().await?;
                self.get(&url).await?
            }
        };
        parse_key_set(&bytes)
    }

    /// `jwks_uri` from the issuer's discovery document (found once, then kept).
    async fn jwks_uri(&self) -> Result<String, String> {
        let mut discovered = self.inner.discovered.lock().await;
        if let Some(url) = discovered.as_ref() {
            return Ok(url.clone());
        }
        let issuer = &self.inner.options.issuer;
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let document: Value = serde_json::from_slice(&self.get(&url).await?)
            .map_err(|e| format!("the discovery document at {url} is not JSON: {e}"))?;
        // OpenID Connect Discovery 1.0, 4.3: the document's issuer must be the one asked.
        if document.get("issuer").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(format!(
                "the discovery document at {url} names issuer {}, not {issuer}",
                document.get("issuer").unwrap_or(&Value::Null)
            ));
        }
        let jwks = document
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the discovery document at {url} has no jwks_uri"))?;
        check_url("the discovered jwks_uri", jwks)?;
        *discovered = Some(jwks.to_string());
        Ok(jwks.to_string())
    }

    /// A document from the provider, at most [`MAX_DOCUMENT_BYTES`].
    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let mut response = self
            .inner
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("GET {url}: the document is over {MAX_DOCUMENT_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The key `kid`. A key held is used at once (if the set is older than
    /// [`KEYS_MAX_AGE`], it is fetched again meanwhile, in the background); a `kid` not
    /// held fetches the set now, unless that was tried less than
    /// [`OidcOptions::refresh_interval`] ago.
    async fn key(&self, kid: &str) -> Result<Arc<Key>, OidcRefusal> {
        let (held, stale) = {
            let cache = self.inner.cache.read().await;
            let stale = cache.fetched.is_none_or(|t| t.elapsed() >= KEYS_MAX_AGE);
            (cache.keys.get(kid).cloned(), stale)
        };
        if let Some(key) = held {
            if stale {
                self.refresh_in_background();
            }
            return Ok(key);
        }
        let mut last = self.inner.fetching.lock().await;
        // Someone else may have fetched it while this one waited.
        if let Some(key) = self.inner.cache.read().await.keys.get(kid) {
            return Ok(Arc::clone(key));
        }
        if last.is_some_and(|t| t.elapsed() < self.inner.options.refresh_interval) {
            return Err(match self.inner.cache.read().await.fetched {
                Some(_) => unknown_key(kid),
                None => OidcRefusal::KeysUnavailable("not loaded yet: asked again shortly".into()),
            });
        }
        // Recorded when the fetch ends: requests queued behind it then find it recent and
        // do not fetch again one after the other.
        let fetched = self.fetch_keys().await;
        *last = Some(Instant::now());
        match fetched {
            Ok(keys) => {
                let mut cache = self.inner.cache.write().await;
                cache.keys = keys;
                cache.fetched = Some(Instant::now());
                tracing::info!(target: "proxima::auth", keys = cache.keys.len(), "fetched the identity provider's keys");
                cache.keys.get(kid).cloned().ok_or_else(|| unknown_key(kid))
            }
            Err(e) => {
                tracing::warn!(target: "proxima::auth", error = %e, "cannot fetch the identity provider's keys");
                match self.inner.cache.read().await.fetched {
                    Some(_) => Err(unknown_key(kid)),
                    None => Err(OidcRefusal::KeysUnavailable(e)),
                }
            }
        }
    }

    /// Fetches the key set again without making anyone wait: the keys held stay in use until
    /// it arrives (and if the provider cannot be reached, after). A key the provider dropped
    /// is dropped here with it.
    fn refresh_in_background(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            // A fetch under way, or one tried lately: nothing to do.
            let Ok(mut last) = this.inner.fetching.try_lock() else {
                return;
            };
            if last.is_some_and(|t| t.elapsed() < this.inner.options.refresh_interval) {
                return;
            }
            let fetched = this.fetch_keys().await;
            *last = Some(Instant::now());
            match fetched {
                Ok(keys) => {
                    let mut cache = this.inner.cache.write().await;
                    cache.keys = keys;
                    cache.fetched = Some(Instant::now());
                }
                Err(e) => {
                    tracing::warn!(target: "proxima::auth", error = %e, "cannot fetch the identity provider's keys again: the ones held stay in use");
                }
            }
        });
    }

    /// A sign-in with `token` from `address`, acting as `wanted` (the request's
    /// `x-proxima-role`): refused unchecked while the address is blocked by its failures;
    /// otherwise checked ([`Self::verify`], [`OidcLogin::principal`]) and the outcome counted
    /// in `logins`, a refusal spending the address's budget (each is an audit record), but
    /// for a provider that cannot be reached, which is not the client's failure. What both
    /// services do with a provider's token.
    pub async fn sign_in(
        &self,
        token: &str,
        wanted: Option<&str>,
        logins: &LoginGuard,
        address: Option<std::net::IpAddr>,
    ) -> Result<(OidcLogin, Principal), OidcRefusal> {
        logins.admit_token(address).map_err(OidcRefusal::Throttled)?;
        let signed_in = match self.verify(token).await {
            Ok(login) => login.principal(wanted).map(|principal| (login, principal)),
            Err(refusal) => Err(refusal),
        };
        if !matches!(signed_in, Err(OidcRefusal::KeysUnavailable(_))) {
            logins.record_token(address, signed_in.is_ok());
        }
        signed_in
    }

    /// Checks `token`; see the module's documentation for what is checked.
    pub async fn verify(&self, token: &str) -> Result<OidcLogin, OidcRefusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(OidcRefusal::Malformed(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let header = parse_header(token)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| OidcRefusal::Malformed("the header has no alg".into()))?;
        let algorithm = match alg {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => return Err(OidcRefusal::Algorithm(printable(other, 16))),
        };
        if header.contains_key("crit") {
            return Err(OidcRefusal::Malformed("the header has crit extensions".into()));
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .ok_or_else(|| OidcRefusal::UnknownKey("the token's header names no key (kid)".into()))?;
        let key = self.key(kid).await?;
        if key.algorithm != algorithm {
            return Err(OidcRefusal::Algorithm(format!(
                "{alg} with a key for {:?}",
                key.algorithm
            )));
        }
        let options = &self.inner.options;
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&options.issuer]);
        validation.set_audience(&[&options.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = options.leeway.as_secs();
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
            .map_err(|e| refusal(e.into_kind()))?
            .claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= MAX_NAME && !s.chars().any(char::is_control))
            .ok_or_else(|| OidcRefusal::Claim("sub".into()))?
            .to_string();
        let display = claims
            .get("preferred_username")
            .and_then(Value::as_str)
            .filter(|s| s.len() <= MAX_NAME && !s.chars().any(char::is_control))
            .map(str::to_string);
        let expires = claims
            .get("exp")
            .and_then(Value::as_u64)
            .and_then(|s| {
                UNIX_EPOCH
                    .checked_add(Duration::from_secs(s))?
                    .checked_add(options.leeway)
            })
            .ok_or_else(|| OidcRefusal::Claim("exp".into()))?;
        let roles = roles_of(&claims, &options.role_claim);
        if roles.is_empty() {
            return Err(OidcRefusal::NoRole(options.role_claim.clone()));
        }
        Ok(OidcLogin {
            issuer: options.issuer.clone(),
            subject,
            display,
            roles,
            expires,
        })
    }
}

fn unknown_key(kid: &str) -> OidcRefusal {
    OidcRefusal::UnknownKey(format!("the identity provider has no key '{}'", printable(kid, 64)))
}

/// At most `max` characters of a value a client chose, printable ASCII only (the rest `?`):
/// what a refusal may repeat into logs and audit records.
fn printable(value: &str, max: usize) -> String {
    value
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect()
}

/// What a `jsonwebtoken` error means to the client.
fn refusal(kind: jsonwebtoken::errors::ErrorKind) -> OidcRefusal {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::InvalidSignature => OidcRefusal::Signature,
        K::ExpiredSignature => OidcRefusal::Expired,
        K::ImmatureSignature => OidcRefusal::NotYetValid,
        K::InvalidIssuer => OidcRefusal::Issuer,
        K::InvalidAudience => OidcRefusal::Audience,
        K::MissingRequiredClaim(c) | K::InvalidClaimFormat(c) => OidcRefusal::Claim(c),
        K::InvalidAlgorithm => OidcRefusal::Algorithm("not the key's".into()),
        // A signature of the wrong length or encoding does not verify either.
        K::InvalidEcdsaKey | K::InvalidRsaKey(_) => OidcRefusal::Signature,
        // A decoding error may quote the token's bytes.
        other => OidcRefusal::Malformed(printable(&format!("{other:?}"), 200)),
    }
}

/// The JOSE header of a compact JWS, as JSON.
fn parse_header(token: &str) -> Result<Map<String, Value>, OidcRefusal> {
    if !looks_like_jwt(token) {
        return Err(OidcRefusal::Malformed("not three base64url parts".into()));
    }
    let encoded = token.split('.').next().expect("three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| OidcRefusal::Malformed("the header is not base64url".into()))?;
    serde_json::from_slice(&bytes).map_err(|_| OidcRefusal::Malformed("the header is not a JSON object".into()))
}

/// The role names at `path` (dot-separated) in `claims`: a string, or an array of strings;
/// values that name no Proxima role are left out.
fn roles_of(claims: &Map<String, Value>, path: &str) -> Vec<Role> {
    let mut parts = path.split('.');
    let mut value = parts.next().and_then(|first| claims.get(first));
    for part in parts {
        value = value.and_then(|v| v.get(part));
    }
    let named: Vec<&str> = match value {
        Some(Value::String(s)) => s.split(' ').collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    Role::ALL
        .into_iter()
        .filter(|role| named.contains(&role.name()))
        .collect()
}

/// The usable keys of a JWKS document, by `kid`: RSA keys for RS256 and P-256 keys for
/// ES256, for signatures. Keys of other kinds, for encryption or without a `kid` are left
/// out; a set with no usable key at all is an error.
fn parse_key_set(bytes: &[u8]) -> Result<HashMap<String, Arc<Key>>, String> {
    let document: Value = serde_json::from_slice(bytes).map_err(|e| format!("the key set is not JSON: {e}"))?;
    let entries = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the key set has no 'keys' array")?;
    let mut keys = HashMap::new();
    for entry in entries {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
            (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
            (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.insert(kid, Arc::new(Key { algorithm, decoding }));
    }
    if keys.is_empty() {
        return Err("the key set holds no RS256 or ES256 signing key with a kid".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(looks_like_jwt("eyJ-_.b.c"));
        assert!(!looks_like_jwt("eyJ.b"));
        assert!(!looks_like_jwt("eyJ.b.c.d"));
        assert!(!looks_like_jwt("eyJ..c"));
        // REST's own staff tokens have three base64url parts too.
        assert!(!looks_like_jwt("pxs1.eyJ1IjoiYWxpY2UifQ.c2lnbmF0dXJl"));
        assert!(!looks_like_jwt("0123abcdef"));
    }

    #[test]
    fn roles_from_claims() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"roles":["tracer","viewer","analyst"],"scope":"openid tracer","realm_access":{"roles":["auditor"]},"n":3}"#,
        )
        .unwrap();
        assert_eq!(roles_of(&claims, "roles"), vec![Role::Tracer, Role::Analyst]);
        assert_eq!(roles_of(&claims, "scope"), vec![Role::Tracer]);
        assert_eq!(roles_of(&claims, "realm_access.roles"), vec![Role::Auditor]);
        assert!(roles_of(&claims, "n").is_empty());
        assert!(roles_of(&claims, "missing.roles").is_empty());
    }

    #[test]
    fn one_role_per_login() {
        let login = OidcLogin {
            issuer: "https://id.example".into(),
            subject: "s-1".into(),
            display: None,
            roles: vec![Role::Tracer, Role::Analyst],
            expires: SystemTime::now() + Duration::from_secs(60),
        };
        assert!(matches!(login.principal(None), Err(OidcRefusal::Role(_))));
        assert_eq!(login.principal(Some("analyst")).unwrap().role, Role::Analyst);
        assert!(matches!(login.principal(Some("admin")), Err(OidcRefusal::Role(_))));
        assert!(matches!(login.principal(Some("nonsense")), Err(OidcRefusal::Role(_))));
        let single = OidcLogin {
            roles: vec![Role::Tracer],
            ..login
        };
        let principal = single.principal(None).unwrap();
        assert_eq!((principal.name.as_str(), principal.role), ("s-1", Role::Tracer));
        assert_eq!(principal.issuer.as_deref(), Some("https://id.example"));
    }

    #[test]
    fn options_that_cannot_work_are_refused() {
        assert!(OidcVerifier::new(OidcOptions::new("http://id.example", "proxima")).is_err());
        assert!(OidcVerifier::new(OidcOptions::new("ftp://id.example", "proxima")).is_err());
        assert!(OidcVerifier::new(OidcOptions::new("http://127.0.0.1:9", "proxima")).is_ok());
        assert!(OidcVerifier::new(OidcOptions::new("https://id.example", "")).is_err());
        let mut options = OidcOptions::new("https://id.example", "proxima");
        options.leeway = Duration::from_secs(3600);
        assert!(OidcVerifier::new(options).is_err());
        let mut options = OidcOptions::new("https://id.example", "proxima");
        options.jwks = Some("/nonexistent/jwks.json".into());
        assert!(
            OidcVerifier::new(options)
                .unwrap_err()
                .contains("/nonexistent/jwks.json")
        );
        let mut options = OidcOptions::new("https://id.example", "proxima");
        options.role_claim = "a..b".into();
        assert!(OidcVerifier::new(options).is_err());
    }

    #[test]
    fn key_sets_keep_only_signing_keys() {
        // An HMAC key ("oct") and an encryption key are never used to verify.
        let set = r#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"EC","kid":"e","crv":"P-256","use":"enc",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","kid":"s","crv":"P-256",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let keys = parse_key_set(set.as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["s"]);
        assert_eq!(keys["s"].algorithm, Algorithm::ES256);
        assert!(parse_key_set(br#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#).is_err());
        assert!(parse_key_set(b"[]").is_err());
    }
}
