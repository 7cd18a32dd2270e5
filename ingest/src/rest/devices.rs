//! Devices: registration, upload tokens, revocation.
//!
//! A device is a random UUID and a MAC, nothing else. Its revocation secret is
//! kept only as an argon2id hash and its upload token only as a SHA-256 (the
//! token is 256 random bits, so a fast hash is enough). The [`Registry`] holds
//! them in memory for the token check of every upload; it is loaded from the
//! store at start (after the WAL's replay was flushed) and updated after each
//! durable registration or revocation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use arrow::array::{AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use proxima_engine::users::{hash_password, verify_password};
use proxima_engine::{SessionFactory, Table, ids, schema};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::body::{parse_json, read_limited, require_json, typed};
use super::error::{ApiError, ApiResult};
use super::{AppState, read_table};
use proxima_storage::wal::Entry;

/// The shortest revocation secret accepted.
pub const MIN_SECRET_LEN: usize = 12;

/// `POST /v1/devices` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterDevice {
    /// The device's Bluetooth MAC, `AA:BB:CC:DD:EE:FF`.
    #[schema(example = "AA:BB:CC:DD:EE:FF")]
    pub mac: String,
    /// A secret of at least 12 characters that the phone keeps, to revoke the device later.
    pub revocation_secret: String,
}

/// `POST /v1/devices` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Registered {
    /// The device's random UUID.
    pub device_uuid: String,
    /// The bearer token for uploads and alert fetches; shown once, stored only as a hash.
    pub upload_token: String,
}

/// `DELETE /v1/devices/{uuid}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeDevice {
    /// The secret given at registration.
    pub revocation_secret: String,
}

/// What the registry knows of one device.
#[derive(Debug, Clone)]
struct Device {
    secret_hash: Option<String>,
    revoked: bool,
}

#[derive(Debug, Default)]
struct Devices {
    by_mac: HashMap<String, String>,
    devices: HashMap<String, Device>,
    by_token: HashMap<[u8; 32], String>,
    /// MACs whose registration is being written.
    reserved: HashSet<String>,
    /// The handles of every device's UUID (`proxima_engine::ephemeral::handle_of`), so that
    /// no two devices' rotating identifiers are sealed with the same one.
    handles: HashSet<u64>,
}

/// Registered devices, their credentials and revocations, in memory.
#[derive(Debug, Default)]
pub struct Registry {
    inner: RwLock<Devices>,
}

/// The SHA-256 of an upload token.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Registry {
    /// Loads the devices, credentials and revocations stored in the store.
    pub async fn load(factory: &SessionFactory) -> crate::Result<Self> {
        let mut devices = Devices::default();
        for batch in read_table(factory, Table::Devices).await? {
            let uuids = batch.column(0).as_string::<i32>();
            let macs = batch.column(1).as_string::<i32>();
            for (uuid, mac) in uuids.iter().zip(macs.iter()) {
                let (Some(uuid), Some(mac)) = (uuid, mac) else { continue };
                devices.by_mac.insert(mac.to_string(), uuid.to_string());
                devices.handles.extend(proxima_engine::ephemeral::handle_of(uuid));
                devices.devices.entry(uuid.to_string()).or_insert(Device {
                    secret_hash: None,
                    revoked: false,
                });
            }
        }
        for batch in read_table(factory, Table::DeviceCredentials).await? {
            let uuids = batch.column(0).as_string::<i32>();
            let tokens = batch.column(1).as_string::<i32>();
            let secrets = batch.column(2).as_string::<i32>();
            for i in 0..batch.num_rows() {
                let uuid = uuids.value(i).to_string();
                let mut digest = [0u8; 32];
                if hex::decode_to_slice(tokens.value(i), &mut digest).is_ok() {
                    devices.by_token.insert(digest, uuid.clone());
                }
                let device = devices.devices.entry(uuid).or_insert(Device {
                    secret_hash: None,
                    revoked: false,
                });
                device.secret_hash = Some(secrets.value(i).to_string());
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
        Ok(Self {
            inner: RwLock::new(devices),
        })
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

    /// Number of devices known.
    pub fn len(&self) -> usize {
        self.read().devices.len()
    }

    /// Whether no device is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
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
        (status = 400, description = "Malformed JSON or an unknown field", body = super::error::ErrorBody),
        (status = 409, description = "The MAC is already registered", body = super::error::ErrorBody),
        (status = 413, description = "Body too large", body = super::error::ErrorBody),
        (status = 415, description = "Not JSON", body = super::error::ErrorBody),
        (status = 422, description = "A bad MAC or a short secret", body = super::error::ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    require_json(&headers)?;
    let bytes = read_limited(&headers, body, state.options.max_body).await?;
    let request: RegisterDevice = typed(parse_json(&bytes)?, "body")?;
    let mac = ids::mac(&request.mac).map_err(|e| ApiError::invalid(format!("body.mac: {e}")))?;
    if request.revocation_secret.chars().count() < MIN_SECRET_LEN {
        return Err(ApiError::invalid(format!(
            "body.revocation_secret: must be at least {MIN_SECRET_LEN} characters"
        )));
    }
    {
        let mut devices = state.registry.write();
        if devices.by_mac.contains_key(&mac) || !devices.reserved.insert(mac.clone()) {
            return Err(ApiError::conflict(format!("body.mac: {mac} is already registered")));
        }
    }
    let result = write_registration(&state, &mac, request.revocation_secret).await;
    let mut devices = state.registry.write();
    devices.reserved.remove(&mac);
    let (uuid, token, secret_hash) = result?;
    devices.by_mac.insert(mac, uuid.clone());
    devices.by_token.insert(token_digest(&token), uuid.clone());
    devices.devices.insert(
        uuid.clone(),
        Device {
            secret_hash: Some(secret_hash),
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

async fn write_registration(state: &AppState, mac: &str, secret: String) -> ApiResult<(String, String, String)> {
    let secret_hash = tokio::task::spawn_blocking(move || hash_password(&secret))
        .await
        .map_err(|e| ApiError::internal("hashing the revocation secret failed", e))?
        .map_err(|e| ApiError::internal("hashing the revocation secret failed", e))?;
    let uuid = state.registry.new_device_uuid();
    let token = random_token();
    let now = state.clock.now();
    let device = RecordBatch::try_new(schema::DEVICES.clone(), vec![text(&uuid), text(mac), timestamp(now)])
        .map_err(|e| ApiError::internal("building the device row failed", e))?;
    let credentials = RecordBatch::try_new(
        schema::DEVICE_CREDENTIALS.clone(),
        vec![
            text(&uuid),
            text(&hex::encode(token_digest(&token))),
            text(&secret_hash),
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
        .await?;
    Ok((uuid, token, secret_hash))
}

/// `DELETE /v1/devices/{uuid}`: revokes a device (its token stops working at once).
#[utoipa::path(delete, path = "/v1/devices/{uuid}", tag = "devices", request_body = RevokeDevice,
    params(("uuid" = String, Path, description = "The device UUID")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Wrong revocation secret", body = super::error::ErrorBody),
        (status = 404, description = "No such device", body = super::error::ErrorBody),
        (status = 422, description = "Not a device UUID", body = super::error::ErrorBody),
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
    let device = state
        .registry
        .read()
        .devices
        .get(&uuid)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no device {uuid}")))?;
    let Some(hash) = device.secret_hash else {
        return Err(ApiError::conflict(format!(
            "device {uuid} was imported without a revocation secret; an admin revokes it"
        )));
    };
    let secret = request.revocation_secret;
    let matches = tokio::task::spawn_blocking(move || verify_password(&hash, &secret))
        .await
        .map_err(|e| ApiError::internal("checking the revocation secret failed", e))?;
    if !matches {
        return Err(ApiError::unauthorized("the revocation secret does not match"));
    }
    if device.revoked {
        return Ok(StatusCode::NO_CONTENT);
    }
    let row = RecordBatch::try_new(
        schema::REVOCATIONS.clone(),
        vec![text(&uuid), timestamp(state.clock.now())],
    )
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
    if let Some(device) = state.registry.write().devices.get_mut(&uuid) {
        device.revoked = true;
    }
    Ok(StatusCode::NO_CONTENT)
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
}
