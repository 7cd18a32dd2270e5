//! Devices: registration, upload tokens, revocation by the owner's key.
//!
//! A device is a random UUID and a MAC, nothing else. Its upload token is kept only
//! as a SHA-256 (the token is 256 random bits, so a fast hash is enough), and its
//! owner's Ed25519 public key as given: the phone derives the key pair from the user's
//! secret (or keeps it in its keystore), and revokes by signing
//! [`revocation_message`], so the server holds nothing that could revoke a device and
//! spends no memory-hard hashing on an unauthenticated route. The [`Registry`] holds
//! them in memory for the token check of every upload; it is loaded from the store at
//! start (after the WAL's replay was flushed) and updated after each durable
//! registration or revocation.
//!
//! Serving nodes on one store share registrations and revocations through the store's
//! [`SharedRegistry`], written before either is acknowledged: a MAC is claimed there by a
//! conditional put (one device per MAC across nodes), a token this node does not know is
//! looked up there (at most once per refresh while it stays unknown), and every
//! `--registry-refresh` ([`Registry::refresh`]) each node reads the revocations made
//! anywhere.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use proxima_engine::{Role, SessionFactory, Table, ids, schema};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::body::{parse_json, read_limited, require_json, typed};
use super::error::{ApiError, ApiResult};
use super::{AppState, read_table};
use proxima_storage::registry::{DeviceEntry, SharedRegistry, UPLOAD_TAG_LEN};
use proxima_storage::wal::Entry;

/// How far a revocation's timestamp may be from the server's clock.
pub const REVOCATION_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// `POST /v1/devices` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDevice {
    /// The device's static Bluetooth MAC, `AA:BB:CC:DD:EE:FF`: only for legacy phones, on a
    /// server started with `--accept-mac` (a phone that broadcasts rotating identifiers or
    /// GAEN RPIs sends none).
    #[schema(example = "AA:BB:CC:DD:EE:FF", pattern = r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")]
    #[serde(default)]
    pub mac: Option<String>,
    /// The owner's Ed25519 public key (64 hex digits), whose private key signs the device's
    /// revocation. The server keeps only this key.
    #[schema(
        example = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        pattern = r"^[0-9A-Fa-f]{64}$"
    )]
    pub revocation_key: String,
    /// A challenge from `GET /v1/devices/challenge` (needed unless the server asks for no
    /// proof of work).
    #[serde(default)]
    pub challenge: Option<String>,
    /// A nonce such that `SHA-256(challenge ":" nonce)` starts with the challenge's
    /// difficulty in zero bits.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// `POST /v1/devices` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    /// The device's random UUID.
    pub device_uuid: String,
    /// The bearer token for uploads and alert fetches; shown once, stored only as a hash.
    pub upload_token: String,
}

/// `DELETE /v1/devices/{uuid}` body: a signature, with the registration's key, of
/// [`revocation_message`].
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeDevice {
    /// When the phone signed (RFC 3339), within 5 minutes of the server's clock.
    #[schema(example = "2026-12-02T12:00:00Z", format = DateTime)]
    pub timestamp: String,
    /// 16 random bytes (32 hex digits), new for each revocation.
    #[schema(pattern = r"^[0-9A-Fa-f]{32}$")]
    pub nonce: String,
    /// The Ed25519 signature (128 hex digits) of the revocation message.
    #[schema(pattern = r"^[0-9A-Fa-f]{128}$")]
    pub signature: String,
}

/// What a phone signs to revoke `device_uuid` (canonical lowercase), with the request's
/// `timestamp` and `nonce` exactly as sent: `proxima-revoke-v1`, the UUID, the timestamp
/// and the nonce, one per line.
pub fn revocation_message(device_uuid: &str, timestamp: &str, nonce: &str) -> String {
    format!("proxima-revoke-v1\n{device_uuid}\n{timestamp}\n{nonce}")
}

/// The one answer to a revocation that does not revoke (an unknown device, a wrong or
/// replayed signature, a device already revoked or without a key), so that the answer
/// tells nothing about which.
fn not_revoked() -> ApiError {
    ApiError::not_found("no active device with this UUID whose key made this signature")
}

/// What the registry knows of one device.
#[derive(Debug, Clone)]
struct Device {
    /// The owner's public key; none for an imported device, or one registered before
    /// revocation was signed (an admin revokes those).
    revocation_key: Option<ed25519_dalek::VerifyingKey>,
    revoked: bool,
}

#[derive(Debug, Default)]
struct Devices {
    /// Devices the shared registry says are revoked (by the name of their revocation
    /// object), known here or not: a registration learnt later is checked against them
    /// under this lock, so a refresh between its lookup and its insert loses nothing.
    revoked_elsewhere: HashMap<String, String>,
    /// Devices the shared registry says were forgotten (erased, or removed by retention),
    /// by the name of their tombstone: forgotten here too, and never learnt again.
    gone: HashMap<String, String>,
    by_mac: HashMap<String, String>,
    devices: HashMap<String, Device>,
    by_token: HashMap<[u8; 32], String>,
    /// MACs whose registration is being written.
    reserved: HashSet<String>,
    /// Devices whose revocation is being written.
    revoking: HashSet<String>,
    /// The handles of every device's UUID (`proxima_engine::ephemeral::handle_of`), so that
    /// no two devices' rotating identifiers are sealed with the same one.
    handles: HashSet<u64>,
}

/// How many unknown tokens a node remembers between refreshes (beyond, it looks them up).
const UNKNOWN_TOKENS: usize = 100_000;

/// Registered devices, their credentials and revocations, in memory.
#[derive(Debug, Default)]
pub struct Registry {
    inner: RwLock<Devices>,
    /// The store's shared registry (none in unit tests of this module).
    shared: Option<SharedRegistry>,
    /// Tokens looked up in the shared registry and not found, since the last refresh.
    unknown_tokens: std::sync::Mutex<HashSet<[u8; 32]>>,
    /// When the last refresh from the shared registry succeeded.
    refreshed: std::sync::Mutex<Option<std::time::Instant>>,
}

/// The SHA-256 of an upload token.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Registry {
    /// Loads the devices, credentials and revocations stored in the store, and those of the
    /// shared registry's revocations made meanwhile by other nodes.
    pub async fn load(factory: &SessionFactory) -> crate::Result<Self> {
        let mut devices = Devices::default();
        for batch in read_table(factory, Table::Devices).await? {
            let uuids = batch.column(0).as_string::<i32>();
            let macs = batch.column(1).as_string::<i32>();
            for (uuid, mac) in uuids.iter().zip(macs.iter()) {
                let Some(uuid) = uuid else { continue };
                if let Some(mac) = mac {
                    devices.by_mac.insert(mac.to_string(), uuid.to_string());
                }
                devices.handles.extend(proxima_engine::ephemeral::handle_of(uuid));
                devices.devices.entry(uuid.to_string()).or_insert(Device {
                    revocation_key: None,
                    revoked: false,
                });
            }
        }
        for batch in read_table(factory, Table::DeviceCredentials).await? {
            let uuids = batch.column(0).as_string::<i32>();
            let tokens = batch.column(1).as_string::<i32>();
            let keys = batch.column(2).as_string::<i32>();
            for i in 0..batch.num_rows() {
                let uuid = uuids.value(i).to_string();
                let mut digest = [0u8; 32];
                if hex::decode_to_slice(tokens.value(i), &mut digest).is_ok() {
                    devices.by_token.insert(digest, uuid.clone());
                }
                let device = devices.devices.entry(uuid).or_insert(Device {
                    revocation_key: None,
                    revoked: false,
                });
                // Null for devices registered with a revocation secret (before signed
                // revocation): they have no key.
                device.revocation_key = (!keys.is_null(i)).then(|| parse_key(keys.value(i)).ok()).flatten();
            }
        }
        for batch in read_table(factory, Table::Revocations).await? {
            let uuids = batch.column(0).as_string::<i32>();
            for uuid in uuids.iter().flatten() {
                if let Some(device) = devices.devices.get_mut(uuid) {
                    device.revoked = true;
                }
            }
        }
        let registry = Self {
            inner: RwLock::new(devices),
            shared: Some(SharedRegistry::open(factory.store()).await?),
            ..Self::default()
        };
        registry.refresh().await?;
        Ok(registry)
    }

    /// Reads the revocations other nodes made since the last refresh and the devices
    /// another node's erasure or retention removed (forgotten here too), and forgets the
    /// tokens found unknown (they may have been registered since). Returns how many devices
    /// this node learnt were revoked.
    pub async fn refresh(&self) -> crate::Result<usize> {
        let Some(shared) = &self.shared else { return Ok(0) };
        self.unknown_tokens.lock().expect("never poisoned").clear();
        let names = shared.gone_names().await?;
        let listed: HashSet<String> = names.iter().map(|n| n.to_string()).collect();
        self.write().gone.retain(|name, _| listed.contains(name));
        for name in names {
            if self.read().gone.contains_key(name.as_ref()) {
                continue;
            }
            let Some(uuid) = shared.gone_device(&name).await? else {
                continue;
            };
            self.forget(std::slice::from_ref(&uuid));
            self.write().gone.insert(name.to_string(), uuid);
        }
        let revoked = self.refresh_revocations(shared).await?;
        *self.refreshed.lock().expect("never poisoned") = Some(std::time::Instant::now());
        Ok(revoked)
    }

    /// How long ago the shared registry was last read in full (`None` without one): past a
    /// few refreshes, revocations made on other nodes may be missed here.
    pub fn since_refresh(&self) -> Option<std::time::Duration> {
        self.shared.as_ref()?;
        let refreshed = *self.refreshed.lock().expect("never poisoned");
        Some(refreshed.map_or(std::time::Duration::MAX, |at| at.elapsed()))
    }

    /// Marks the devices other nodes revoked; returns how many this node did not know were.
    async fn refresh_revocations(&self, shared: &SharedRegistry) -> crate::Result<usize> {
        let names = shared.revocation_names().await?;
        // Revocations erased since go from the store; what was seen of them goes too.
        let listed: HashSet<String> = names.iter().map(|n| n.to_string()).collect();
        self.write().revoked_elsewhere.retain(|name, _| listed.contains(name));
        let mut revoked = 0;
        for name in names {
            if self.read().revoked_elsewhere.contains_key(name.as_ref()) {
                continue;
            }
            let Some(uuid) = shared.revoked_device(&name).await? else {
                continue;
            };
            let mut devices = self.write();
            if let Some(device) = devices.devices.get_mut(&uuid)
                && !device.revoked
            {
                device.revoked = true;
                revoked += 1;
            }
            devices.revoked_elsewhere.insert(name.to_string(), uuid);
        }
        Ok(revoked)
    }

    /// Learns a registration another node made, and whether it is revoked.
    async fn learn(&self, shared: &SharedRegistry, entry: DeviceEntry) -> crate::Result<()> {
        let revoked = shared.is_revoked(&entry.uuid).await?;
        let mut digest = [0u8; 32];
        let mut devices = self.write();
        // Removed since the lookup: nothing to learn.
        if devices.gone.values().any(|uuid| *uuid == entry.uuid) {
            return Ok(());
        }
        if hex::decode_to_slice(&entry.token_digest, &mut digest).is_ok() {
            devices.by_token.insert(digest, entry.uuid.clone());
        }
        if let Some(mac) = entry.mac {
            devices.by_mac.insert(mac, entry.uuid.clone());
        }
        devices
            .handles
            .extend(proxima_engine::ephemeral::handle_of(&entry.uuid));
        let revocation_key = entry.revocation_key.as_deref().and_then(|k| parse_key(k).ok());
        // Revoked in the store when looked up, or by the time of this insert.
        let revoked = revoked || devices.revoked_elsewhere.values().any(|uuid| *uuid == entry.uuid);
        let device = devices.devices.entry(entry.uuid).or_insert(Device {
            revocation_key,
            revoked,
        });
        device.revoked |= revoked;
        Ok(())
    }

    /// The device an upload token belongs to, if the device is registered and not revoked:
    /// on this node, or else in the shared registry.
    pub async fn authenticate(&self, token: &str) -> crate::Result<Option<String>> {
        if let Some(uuid) = self.device_of_token(token) {
            return Ok(Some(uuid));
        }
        let Some(shared) = &self.shared else { return Ok(None) };
        // A token no node issued costs no lookup: tokens carry a tag only the store's nodes
        // can make (those issued before tags were known at start, from the tables).
        if !tagged(shared, token) {
            return Ok(None);
        }
        let digest = token_digest(token);
        if self.read().by_token.contains_key(&digest)
            || self.unknown_tokens.lock().expect("never poisoned").contains(&digest)
        {
            return Ok(None);
        }
        match shared.by_token(&hex::encode(digest)).await? {
            Some(entry) => self.learn(shared, entry).await?,
            None => {
                let mut unknown = self.unknown_tokens.lock().expect("never poisoned");
                if unknown.len() < UNKNOWN_TOKENS {
                    unknown.insert(digest);
                }
                return Ok(None);
            }
        }
        Ok(self.device_of_token(token))
    }

    /// Makes sure this node knows `uuid` if any node registered it (its [`Self::status`]
    /// is then the store's).
    pub async fn resolve(&self, uuid: &str) -> crate::Result<()> {
        let Some(shared) = &self.shared else { return Ok(()) };
        if self.read().devices.contains_key(uuid) {
            return Ok(());
        }
        if let Some(entry) = shared.by_device(uuid).await? {
            self.learn(shared, entry).await?;
        }
        Ok(())
    }

    /// A new random device UUID whose handle no other device has (a clash is a one in 2^64
    /// chance per pair of devices, but it would make two devices' identifiers the same).
    fn new_device_uuid(&self) -> String {
        let mut devices = self.write();
        loop {
            let uuid = uuid::Uuid::new_v4();
            if proxima_engine::ephemeral::handle_of(&uuid.to_string()).is_some_and(|h| devices.handles.insert(h)) {
                return uuid.to_string();
            }
        }
    }

    /// Forgets erased devices: their tokens, MACs and handles are no longer known, as after
    /// a restart (their rows, credentials included, are gone from the store).
    pub fn forget(&self, erased: &[String]) {
        let erased: HashSet<&str> = erased.iter().map(String::as_str).collect();
        let mut devices = self.write();
        devices.devices.retain(|uuid, _| !erased.contains(uuid.as_str()));
        devices.by_token.retain(|_, uuid| !erased.contains(uuid.as_str()));
        devices.by_mac.retain(|_, uuid| !erased.contains(uuid.as_str()));
        for uuid in &erased {
            if let Some(handle) = proxima_engine::ephemeral::handle_of(uuid) {
                devices.handles.remove(&handle);
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Devices> {
        self.inner.read().expect("registry lock is never poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Devices> {
        self.inner.write().expect("registry lock is never poisoned")
    }

    /// The device an upload token belongs to, if the device is registered and not revoked.
    pub fn device_of_token(&self, token: &str) -> Option<String> {
        let devices = self.read();
        let uuid = devices.by_token.get(&token_digest(token))?;
        let device = devices.devices.get(uuid)?;
        (!device.revoked).then(|| uuid.clone())
    }

    /// Whether `uuid` is registered: `Some(revoked)`, or `None` if unknown.
    pub fn status(&self, uuid: &str) -> Option<bool> {
        self.read().devices.get(uuid).map(|d| d.revoked)
    }

    /// Whether `uuid` is registered and not revoked.
    pub fn is_active(&self, uuid: &str) -> bool {
        self.status(uuid) == Some(false)
    }

    /// The store's shared registry.
    pub fn shared(&self) -> Option<&SharedRegistry> {
        self.shared.as_ref()
    }

    /// Number of devices known.
    pub fn len(&self) -> usize {
        self.read().devices.len()
    }

    /// Whether no device is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An Ed25519 public key as 64 hex digits: a point on the curve, not of small order (a
/// weak key would let signatures be forged).
fn parse_key(text: &str) -> Result<ed25519_dalek::VerifyingKey, &'static str> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| "not 64 hex digits")?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| "not an Ed25519 public key")?;
    if key.is_weak() {
        return Err("a weak Ed25519 key (of small order)");
    }
    Ok(key)
}

/// A new upload token: 32 bytes, base64url. With a shared registry, 24 random bytes (192
/// bits) and their tag ([`SharedRegistry::upload_token_tag`]), which any node checks before
/// it looks a token it does not know up in the store; without one, 32 random bytes.
fn new_token(shared: Option<&SharedRegistry>) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    if let Some(shared) = shared {
        let (body, tag) = bytes.split_at_mut(32 - UPLOAD_TAG_LEN);
        tag.copy_from_slice(&shared.upload_token_tag(body));
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `token` carries a valid tag: only then can another node have issued it.
fn tagged(shared: &SharedRegistry, token: &str) -> bool {
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token) else {
        return false;
    };
    bytes.len() == 32 && {
        let (body, tag) = bytes.split_at(32 - UPLOAD_TAG_LEN);
        shared.upload_token_tag_valid(body, tag)
    }
}

fn text(value: &str) -> Arc<StringArray> {
    Arc::new(StringArray::from(vec![value]))
}

fn timestamp(at: DateTime<Utc>) -> Arc<TimestampMicrosecondArray> {
    Arc::new(TimestampMicrosecondArray::from(vec![at.timestamp_micros()]).with_timezone("UTC"))
}

/// `POST /v1/devices`: registers a device.
#[utoipa::path(post, path = "/v1/devices", tag = "devices", request_body = RegisterDevice,
    responses(
        (status = 201, description = "Registered", body = Registered),
        (status = 400, description = "Malformed JSON or an unknown field", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 409, description = "The MAC is already registered", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 422, description = "A bad MAC or revocation key, or a missing, expired, used or unsolved \
            proof-of-work challenge", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many registrations and revocations from this address (--registration-rate; \
            Retry-After)", body = super::error::ErrorBody, content_type = "application/problem+json"),
    ))]
pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    require_json(&headers)?;
    let bytes = read_limited(&headers, body, state.options.max_body).await?;
    let request: RegisterDevice = typed(parse_json(&bytes)?, "body")?;
    let mac = match &request.mac {
        None => None,
        Some(_) if !state.options.accept_mac => {
            return Err(ApiError::invalid(
                "body.mac: this server takes no static MACs (anyone can follow and forge one): broadcast rotating \
                 identifiers (GET /v1/ephemeral-ids) or GAEN RPIs, and register without a MAC; legacy phones need a \
                 server started with --accept-mac",
            ));
        }
        Some(mac) => Some(ids::mac(mac).map_err(|e| ApiError::invalid(format!("body.mac: {e}")))?),
    };
    let key =
        parse_key(&request.revocation_key).map_err(|why| ApiError::invalid(format!("body.revocation_key: {why}")))?;
    // Before the MAC is looked up, so that even learning that a MAC is taken costs the work.
    state.challenges.redeem(
        request.challenge.as_deref(),
        request.nonce.as_deref(),
        state.clock.now(),
    )?;
    if let Some(mac) = &mac {
        let mut devices = state.registry.write();
        if devices.by_mac.contains_key(mac) || !devices.reserved.insert(mac.clone()) {
            return Err(ApiError::conflict(format!("body.mac: {mac} is already registered")));
        }
    }
    let result = write_registration(&state, mac.as_deref(), &key).await;
    let mut devices = state.registry.write();
    if let Some(mac) = &mac {
        devices.reserved.remove(mac);
    }
    let (uuid, token) = result?;
    if let Some(mac) = mac {
        devices.by_mac.insert(mac, uuid.clone());
    }
    devices.by_token.insert(token_digest(&token), uuid.clone());
    devices.devices.insert(
        uuid.clone(),
        Device {
            revocation_key: Some(key),
            revoked: false,
        },
    );
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            device_uuid: uuid,
            upload_token: token,
        }),
    ))
}

async fn write_registration(
    state: &AppState,
    mac: Option<&str>,
    key: &ed25519_dalek::VerifyingKey,
) -> ApiResult<(String, String)> {
    let uuid = state.registry.new_device_uuid();
    let token = new_token(state.registry.shared());
    let now = state.clock.now();
    // Shared before the rows are durable: once acknowledged, every node knows the device.
    if let Some(shared) = state.registry.shared() {
        let entry = DeviceEntry {
            uuid: uuid.clone(),
            token_digest: hex::encode(token_digest(&token)),
            revocation_key: Some(hex::encode(key.as_bytes())),
            mac: mac.map(str::to_string),
            registered: now,
        };
        share_registration(shared, &entry).await?;
    }
    let mac = Arc::new(StringArray::from(vec![mac]));
    let device = RecordBatch::try_new(schema::DEVICES.clone(), vec![text(&uuid), mac, timestamp(now)])
        .map_err(|e| ApiError::internal("building the device row failed", e))?;
    let credentials = RecordBatch::try_new(
        schema::DEVICE_CREDENTIALS.clone(),
        vec![
            text(&uuid),
            text(&hex::encode(token_digest(&token))),
            text(&hex::encode(key.as_bytes())),
            timestamp(now),
        ],
    )
    .map_err(|e| ApiError::internal("building the credentials row failed", e))?;
    state
        .make_durable(
            vec![
                Entry {
                    table: Table::Devices,
                    batch: device,
                },
                Entry {
                    table: Table::DeviceCredentials,
                    batch: credentials,
                },
            ],
            "registration",
        )
        .await
        .inspect_err(|_| {
            // Not acknowledged: what was shared goes (its MAC is free again), in the
            // background, since the answer is an error either way.
            if let Some(shared) = state.registry.shared().cloned() {
                let uuid = uuid.clone();
                tokio::spawn(async move {
                    if let Err(e) = shared.forget(std::slice::from_ref(&uuid)).await {
                        tracing::warn!(target: "proxima::http", error = %e, "an unacknowledged registration stays in the shared registry");
                    }
                });
            }
        })?;
    Ok((uuid, token))
}

/// Claims the registration's MAC in the shared registry (409 if another node registered it)
/// and records the registration there.
async fn share_registration(shared: &SharedRegistry, entry: &DeviceEntry) -> ApiResult<()> {
    let unshared = |e| ApiError::internal("the registration could not be shared with the other nodes", e);
    if let Some(mac) = &entry.mac
        && !shared
            .claim_mac(mac, &entry.uuid, entry.registered)
            .await
            .map_err(unshared)?
    {
        return Err(ApiError::conflict(format!("body.mac: {mac} is already registered")));
    }
    if let Err(e) = shared.register(entry).await {
        if let Some(mac) = &entry.mac
            && let Err(released) = shared.release_mac(mac).await
        {
            tracing::warn!(target: "proxima::http", %released, "a MAC claim could not be released");
        }
        return Err(unshared(e));
    }
    Ok(())
}

/// `DELETE /v1/devices/{uuid}`: revokes a device (its token stops working at once), on a
/// signature of [`revocation_message`] by the key given at registration.
#[utoipa::path(delete, path = "/v1/devices/{uuid}", tag = "devices", request_body = RevokeDevice,
    params(("uuid" = String, Path, pattern = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$", description = "The device UUID")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "Not revoked: the same answer for an unknown device, a wrong or replayed \
            signature, and a device already revoked or without a key", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a device UUID, a malformed field, or a timestamp more than 5 minutes \
            from the server's clock", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many registrations and revocations from this address (--registration-rate; \
            Retry-After)", body = super::error::ErrorBody, content_type = "application/problem+json"),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<StatusCode> {
    let uuid = ids::device_uuid(&uuid).map_err(|e| ApiError::invalid(format!("path: {e}")))?;
    require_json(&headers)?;
    let bytes = read_limited(&headers, body, state.options.max_body).await?;
    let request: RevokeDevice = typed(parse_json(&bytes)?, "body")?;
    // What can be checked without the device, and says nothing about it.
    let signed_at = DateTime::parse_from_rfc3339(&request.timestamp)
        .map_err(|e| ApiError::invalid(format!("body.timestamp: '{}' is not RFC 3339: {e}", request.timestamp)))?
        .with_timezone(&Utc);
    let now = state.clock.now();
    if (signed_at - now).abs() > REVOCATION_SKEW {
        return Err(ApiError::invalid(format!(
            "body.timestamp: {} is more than 5 minutes from the server's clock ({}); sign again",
            request.timestamp,
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    let mut nonce = [0u8; 16];
    hex::decode_to_slice(&request.nonce, &mut nonce).map_err(|_| ApiError::invalid("body.nonce: not 32 hex digits"))?;
    let mut signature = [0u8; 64];
    hex::decode_to_slice(&request.signature, &mut signature)
        .map_err(|_| ApiError::invalid("body.signature: not 128 hex digits"))?;
    let signature = ed25519_dalek::Signature::from_bytes(&signature);
    let message = revocation_message(&uuid, &request.timestamp, &request.nonce);
    // A device another node registered is learnt first.
    state.resolve_device(&uuid).await?;
    // An active device's key, or a key nothing verifies with, so that every refusal takes
    // as long as a wrong signature.
    let key = state
        .registry
        .read()
        .devices
        .get(&uuid)
        .filter(|d| !d.revoked)
        .and_then(|d| d.revocation_key);
    let verified = key
        .unwrap_or_else(nobody)
        .verify_strict(message.as_bytes(), &signature)
        .is_ok();
    if key.is_none() || !verified {
        return Err(not_revoked());
    }
    // A signature is good once: the device it revokes is then revoked, and a replay (or a
    // concurrent duplicate) gets the answer above.
    {
        let mut devices = state.registry.write();
        let active = devices.devices.get(&uuid).is_some_and(|d| !d.revoked);
        if !active || !devices.revoking.insert(uuid.clone()) {
            return Err(not_revoked());
        }
    }
    write_revocation(&state, &uuid, now).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/devices/{uuid}/revocation`: an administrator revokes a device that has no
/// owner's key to sign a revocation (imported), on the owner's behalf; the next erasure
/// round erases it. The audit record names the device only by its erasure keyed hash
/// (`erasure:<hash>`), and no refusal names it either.
#[utoipa::path(post, path = "/v1/devices/{uuid}/revocation", tag = "devices",
    params(("uuid" = String, Path, pattern = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$", description = "The device UUID")),
    security(("staff_basic" = []), ("staff_token" = [])),
    responses(
        (status = 204, description = "Revoked: erased by the next erasure round"),
        (status = 401, description = "Missing or bad credentials", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 403, description = "Role is not admin", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 409, description = "Revoked already, or the device has an owner's key (its owner revokes \
            it with DELETE /v1/devices/{uuid})", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 422, description = "Not a device UUID", body = super::error::ErrorBody, content_type = "application/problem+json"),
    ))]
pub async fn revoke_by_admin(
    State(state): State<AppState>,
    Path(uuid): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    state.staff(&headers, &[Role::Admin]).await?;
    let uuid = ids::device_uuid(&uuid).map_err(|_| ApiError::invalid("path: not a device UUID"))?;
    let key = proxima_storage::keys::erasure_hash_key(state.factory.store())
        .await
        .map_err(|e| ApiError::internal("reading the erasure hash key failed", e))?;
    super::audit::cite(
        format!("erasure:{}", proxima_storage::erasure::keyed_hash(&key, &uuid)),
        &["revocations"],
    );
    state.resolve_device(&uuid).await?;
    {
        let mut devices = state.registry.write();
        let device = devices
            .devices
            .get(&uuid)
            .ok_or_else(|| ApiError::not_found("no such device"))?;
        if device.revoked || devices.revoking.contains(&uuid) {
            return Err(ApiError::conflict(
                "the device is revoked already and waits for erasure",
            ));
        }
        if device.revocation_key.is_some() {
            return Err(ApiError::conflict(
                "the device has an owner's key: only its owner revokes it (DELETE /v1/devices/{uuid}, signed)",
            ));
        }
        devices.revoking.insert(uuid.clone());
    }
    write_revocation(&state, &uuid, state.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A valid public key whose verdict is never used: a revocation of no active device with a
/// key verifies against it only so that its refusal takes as long as a wrong signature's
/// (the key's seed is in this source, so a signature by it proves nothing, and is refused).
fn nobody() -> ed25519_dalek::VerifyingKey {
    static NOBODY: std::sync::LazyLock<ed25519_dalek::VerifyingKey> =
        std::sync::LazyLock::new(|| ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32]).verifying_key());
    *NOBODY
}

/// Makes the revocation of `uuid` (which the caller put in `revoking`) durable, then marks
/// the device revoked; `revoking` is cleared either way.
async fn write_revocation(state: &AppState, uuid: &str, now: DateTime<Utc>) -> ApiResult<()> {
    let written = async {
        write_revocation_row(state, uuid, now).await?;
        // Every node refuses the device within its refresh; until this succeeds, the
        // revocation is not acknowledged (a retry writes the row again, which is harmless).
        if let Some(shared) = state.registry.shared() {
            shared
                .revoke(uuid, now)
                .await
                .map_err(|e| ApiError::internal("the revocation could not be shared with the other nodes", e))?;
        }
        Ok::<_, ApiError>(())
    }
    .await;
    let mut devices = state.registry.write();
    devices.revoking.remove(uuid);
    written?;
    if let Some(device) = devices.devices.get_mut(uuid) {
        device.revoked = true;
    }
    Ok(())
}

async fn write_revocation_row(state: &AppState, uuid: &str, now: DateTime<Utc>) -> ApiResult<()> {
    let row = RecordBatch::try_new(schema::REVOCATIONS.clone(), vec![text(uuid), timestamp(now)])
        .map_err(|e| ApiError::internal("building the revocation row failed", e))?;
    state
        .make_durable(
            vec![Entry {
                table: Table::Revocations,
                batch: row,
            }],
            "revocation",
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_devices_never_share_a_handle() {
        let registry = Registry::default();
        let uuids: Vec<String> = (0..1000).map(|_| registry.new_device_uuid()).collect();
        let handles: HashSet<u64> = uuids
            .iter()
            .map(|u| proxima_engine::ephemeral::handle_of(u).unwrap())
            .collect();
        assert_eq!(handles.len(), uuids.len());
        assert_eq!(registry.read().handles, handles, "each one claimed");
    }

    #[tokio::test]
    async fn a_token_no_node_issued_is_never_looked_up_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = proxima_engine::Store::local(dir.path()).unwrap();
        let shared = SharedRegistry::with_key(&store, &[7; 32]);
        let registry = Registry {
            shared: Some(shared.clone()),
            ..Registry::default()
        };
        let tagged_token = new_token(Some(&shared));
        let untagged = new_token(None);
        assert!(tagged(&shared, &tagged_token));
        assert!(!tagged(&shared, &untagged));
        // One bit flipped, or a tag under another store's key: refused.
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&tagged_token)
            .unwrap();
        bytes[0] ^= 1;
        let flipped = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        assert!(!tagged(&shared, &flipped));
        assert!(!tagged(&SharedRegistry::with_key(&store, &[8; 32]), &tagged_token));
        assert!(!tagged(&shared, "not base64 at all!"));

        // Both registered in the store by "another node": the tagged one is found there; the
        // untagged one is not even looked up.
        for (i, token) in [&tagged_token, &untagged].into_iter().enumerate() {
            let entry = DeviceEntry {
                uuid: format!("00000000-0000-4000-8000-00000000000{i}"),
                token_digest: hex::encode(token_digest(token)),
                revocation_key: None,
                mac: None,
                registered: Utc::now(),
            };
            shared.register(&entry).await.unwrap();
        }
        assert_eq!(
            registry.authenticate(&tagged_token).await.unwrap().as_deref(),
            Some("00000000-0000-4000-8000-000000000000")
        );
        assert_eq!(registry.authenticate(&untagged).await.unwrap(), None);
    }
}
