//! The device registry every serving node shares through the store.
//!
//! A device's registration, its upload token and its revocation are rows of the WAL (and
//! then of `devices`, `device_credentials` and `revocations`), which only the node that took
//! them sees until it flushes. So that any number of stateless `proxima serve` nodes on one
//! store agree at once, each registration and revocation is also written, before it is
//! acknowledged, as small objects under `_registry/`:
//!
//! - `mac/<name>`: the claim of a static MAC, made by a conditional put (create only), so
//!   that of two nodes registering one MAC at once exactly one succeeds;
//! - `device/<name>` and `token/<name>`: the registration, found by device (erasure needs
//!   it) and by the SHA-256 of its upload token (a node that does not know a token looks
//!   it up here);
//! - `revoked/<name>`: a revocation, which every node lists every `--registry-refresh`;
//! - `upload-key/<name>`: an upload's idempotency key (per device), claimed by a
//!   conditional put before the upload is stored and completed with its answer, so that a
//!   retry on any node is answered again rather than stored twice. Claims are swept a day
//!   after their last write ([`SharedRegistry::sweep_upload_keys`], hourly; on S3 a
//!   lifecycle rule on the prefix does the same for free);
//! - `gone/<name>`: the tombstone of a device erasure or retention removed, written before
//!   its other objects are deleted, so that every node forgets what it holds of the device
//!   in memory at its next refresh; swept a day later.
//!
//! Names are keyed hashes (HMAC-SHA-256 under a key derived from the store's erasure hash
//! key), so no name shows a UUID, a MAC or a token digest, and bodies are sealed
//! (AES-256-GCM under another derived key, the object's path bound in): in a store with
//! master keys nothing here is readable without them. Erasure deletes a device's objects
//! ([`SharedRegistry::forget`]) with its rows. The same key also gives the one staff bearer
//! tokens are signed with ([`SharedRegistry::staff_token_key`]), so that every node
//! accepts a token any node issued.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use hmac::{Hmac, KeyInit, Mac};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use proxima_engine::Store;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{Error, Result};

/// The folder of the shared registry.
pub const REGISTRY_FOLDER: &str = "_registry";

/// A registration, as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceEntry {
    /// The device's UUID.
    pub uuid: String,
    /// The SHA-256 of its upload token, hex.
    pub token_digest: String,
    /// The owner's Ed25519 public key, hex (none for a device registered without one).
    pub revocation_key: Option<String>,
    /// Its static MAC, if it registered one.
    pub mac: Option<String>,
    /// When it registered.
    pub registered: DateTime<Utc>,
}

/// A revocation (or a tombstone), as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Revoked {
    uuid: String,
    at: DateTime<Utc>,
}

/// An upload's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum UploadKey {
    /// A node is storing the upload (since `at`).
    Pending { at: DateTime<Utc> },
    /// The upload was stored: `accepted` observations, from a body whose SHA-256 is
    /// `body_sha256` (hex; absent from keys completed before it was kept).
    Done {
        accepted: u64,
        at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_sha256: Option<String>,
    },
}

/// How long an upload's idempotency key is remembered.
pub const UPLOAD_KEY_WINDOW: chrono::Duration = chrono::Duration::hours(24);

/// How long a pending idempotency key holds off retries: a node storing an upload answers
/// within seconds; a claim older than this belongs to a node that died or lost its store.
pub const PENDING_KEY_TTL: chrono::Duration = chrono::Duration::minutes(2);

/// What a node may do with an upload's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// Claimed: store the upload, then [`SharedRegistry::complete_upload_key`].
    Claimed,
    /// Stored already, with `accepted` observations, from a body with this SHA-256 (hex;
    /// `None` if the key was completed without one): answer so again if it is this body.
    Replay {
        /// Observations accepted.
        accepted: u64,
        /// The stored upload's body's SHA-256, hex.
        body_sha256: Option<String>,
    },
    /// Another node is storing it now.
    InProgress,
    /// Claimed by a node that never finished (it died, or could not store it): whether
    /// the upload was stored is in the store's `upload_keys` if that node's log was
    /// flushed. Check, then [`SharedRegistry::take_over_upload_key`] or complete it.
    Abandoned(Seen),
}

/// The version of a registry object a node read, so that it replaces exactly that one (a
/// conditional put on its ETag): of two nodes taking the same abandoned claim over, one
/// succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen(Option<String>, Option<String>);

impl Seen {
    fn version(&self) -> UpdateVersion {
        UpdateVersion {
            e_tag: self.0.clone(),
            version: self.1.clone(),
        }
    }
}

/// The MAC claim's body.
#[derive(Debug, Serialize, Deserialize)]
struct MacClaim {
    uuid: String,
    at: DateTime<Utc>,
}

/// How long a MAC claim whose registration never followed (its node died between the two)
/// holds the MAC.
pub const ORPHAN_CLAIM_TTL: chrono::Duration = chrono::Duration::minutes(1);

/// How long the tombstone of a forgotten device stays for the nodes to read (they read
/// them every `--registry-refresh`, and report not ready long before this without).
pub const GONE_KEPT: chrono::Duration = chrono::Duration::days(1);

/// The length of an upload token's tag ([`SharedRegistry::upload_token_tag`]): 64 bits,
/// so a made-up token passes one time in 2^64.
pub const UPLOAD_TAG_LEN: usize = 8;

/// The shared registry of one store.
#[derive(Debug, Clone)]
pub struct SharedRegistry {
    store: Store,
    name_key: [u8; 32],
    seal_key: [u8; 32],
    token_key: [u8; 32],
    upload_tag_key: [u8; 32],
}

/// A key derived from `key` for one use.
fn derive(key: &[u8; 32], purpose: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"proxima registry\0");
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().into()
}

impl SharedRegistry {
    /// The registry of `store` (its keys derived from the store's erasure hash key, made on
    /// first use).
    pub async fn open(store: &Store) -> Result<Self> {
        let key = crate::keys::erasure_hash_key(store).await?;
        Ok(Self::with_key(store, &key))
    }

    /// The registry of `store`, whose erasure hash key the caller has read already.
    pub fn with_key(store: &Store, erasure_hash_key: &[u8; 32]) -> Self {
        Self {
            store: store.clone(),
            name_key: derive(erasure_hash_key, "names"),
            seal_key: derive(erasure_hash_key, "bodies"),
            token_key: derive(erasure_hash_key, "staff tokens"),
            upload_tag_key: derive(erasure_hash_key, "upload token tags"),
        }
    }

    fn upload_tag_mac(&self, body: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.upload_tag_key).expect("HMAC takes any key length");
        mac.update(body);
        mac
    }

    /// The tag an upload token's random `body` carries (8 bytes of an HMAC under a key every
    /// node of the store derives), so that a node tells a token some node issued from a
    /// made-up one before it looks it up in the store.
    pub fn upload_token_tag(&self, body: &[u8]) -> [u8; UPLOAD_TAG_LEN] {
        let digest = self.upload_tag_mac(body).finalize().into_bytes();
        let mut tag = [0u8; UPLOAD_TAG_LEN];
        tag.copy_from_slice(&digest[..UPLOAD_TAG_LEN]);
        tag
    }

    /// Whether `tag` is [`Self::upload_token_tag`] of `body` (in constant time).
    pub fn upload_token_tag_valid(&self, body: &[u8], tag: &[u8]) -> bool {
        tag.len() == UPLOAD_TAG_LEN && self.upload_tag_mac(body).verify_truncated_left(tag).is_ok()
    }

    /// The key staff bearer tokens are signed with, the same on every node of the store.
    pub fn staff_token_key(&self) -> [u8; 32] {
        self.token_key
    }

    fn folder(&self, kind: &str) -> Path {
        self.store.root().clone().join(REGISTRY_FOLDER).join(kind)
    }

    /// `_registry/<kind>/<keyed hash of text>`.
    fn path(&self, kind: &str, text: &str) -> Path {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.name_key).expect("HMAC takes any key length");
        mac.update(kind.as_bytes());
        mac.update(b"\0");
        mac.update(text.as_bytes());
        self.folder(kind).join(hex::encode(&mac.finalize().into_bytes()[..16]))
    }

    /// Writes `body` sealed at `path`; with `create`, only if nothing is there (`false` if
    /// something was).
    async fn put(&self, path: &Path, body: &impl Serialize, create: bool) -> Result<bool> {
        let json = serde_json::to_vec(body).map_err(|e| Error::Invalid(format!("registry entry: {e}")))?;
        let sealed = proxima_engine::keys::seal(&self.seal_key, path.as_ref().as_bytes(), &json);
        let mode = if create { PutMode::Create } else { PutMode::Overwrite };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .store
            .object_store()
            .put_opts(path, PutPayload::from(sealed.into_bytes()), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) if create => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the version `seen` of `path` with `body`: `false` if it changed since (a
    /// conditional put on its ETag). A store that cannot put conditionally (a local disk:
    /// nodes sharing one are on one machine) overwrites.
    async fn replace(&self, path: &Path, body: &impl Serialize, seen: &Seen) -> Result<bool> {
        let json = serde_json::to_vec(body).map_err(|e| Error::Invalid(format!("registry entry: {e}")))?;
        let sealed = proxima_engine::keys::seal(&self.seal_key, path.as_ref().as_bytes(), &json);
        let payload = PutPayload::from(sealed.into_bytes());
        let update = PutOptions {
            mode: PutMode::Update(seen.version()),
            ..PutOptions::default()
        };
        match self.store.object_store().put_opts(path, payload.clone(), update).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented { .. }) => {
                self.store.object_store().put(path, payload).await?;
                Ok(true)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads and opens what [`Self::put`] wrote at `path`, if anything is there.
    async fn get<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Result<Option<T>> {
        Ok(self.get_seen(path).await?.map(|(body, _)| body))
    }

    /// [`Self::get`], with the version read (for [`Self::replace`]).
    async fn get_seen<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Result<Option<(T, Seen)>> {
        let (bytes, seen) = match self.store.object_store().get(path).await {
            Ok(found) => {
                let seen = Seen(found.meta.e_tag.clone(), found.meta.version.clone());
                (found.bytes().await?, seen)
            }
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| Error::Invalid(format!("{path}: not sealed text")))?;
        let json = proxima_engine::keys::open(&self.seal_key, path.as_ref().as_bytes(), text)
            .ok_or_else(|| Error::Invalid(format!("{path}: cannot be opened with this store's registry key")))?;
        serde_json::from_slice(&json)
            .map(|body| Some((body, seen)))
            .map_err(|e| Error::Invalid(format!("{path}: {e}")))
    }

    async fn delete(&self, path: &Path) -> Result<()> {
        match self.store.object_store().delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Claims `mac` for device `uuid` at `now`: `false` if another device holds it. A claim
    /// whose device was never registered is taken over after [`ORPHAN_CLAIM_TTL`] (two
    /// nodes taking the same orphan in the same instant could both succeed: that needs a
    /// node's death mid-registration and then two registrations of its MAC at once).
    pub async fn claim_mac(&self, mac: &str, uuid: &str, now: DateTime<Utc>) -> Result<bool> {
        let path = self.path("mac", mac);
        let claim = MacClaim {
            uuid: uuid.to_string(),
            at: now,
        };
        if self.put(&path, &claim, true).await? {
            return Ok(true);
        }
        let Some((held, seen)) = self.get_seen::<MacClaim>(&path).await? else {
            // Released meanwhile: one more try.
            return self.put(&path, &claim, true).await;
        };
        if now - held.at < ORPHAN_CLAIM_TTL || self.by_device(&held.uuid).await?.is_some() {
            return Ok(false);
        }
        // The orphan claim as read, not whatever another node put there since.
        self.replace(&path, &claim, &seen).await
    }

    /// Gives a MAC claim back (a registration that failed after claiming it).
    pub async fn release_mac(&self, mac: &str) -> Result<()> {
        self.delete(&self.path("mac", mac)).await
    }

    /// Records a registration (its MAC claimed first, if it has one).
    pub async fn register(&self, entry: &DeviceEntry) -> Result<()> {
        if !self.put(&self.path("device", &entry.uuid), entry, true).await? {
            return Err(Error::Invalid(format!(
                "a device with the new UUID {} is registered already",
                entry.uuid
            )));
        }
        self.put(&self.path("token", &entry.token_digest), entry, false).await?;
        Ok(())
    }

    /// The registration whose upload token has this SHA-256 (hex), if any.
    pub async fn by_token(&self, token_digest: &str) -> Result<Option<DeviceEntry>> {
        self.get(&self.path("token", token_digest)).await
    }

    /// The registration of `uuid`, if any.
    pub async fn by_device(&self, uuid: &str) -> Result<Option<DeviceEntry>> {
        self.get(&self.path("device", uuid)).await
    }

    /// Records that `uuid` is revoked (again is no error).
    pub async fn revoke(&self, uuid: &str, at: DateTime<Utc>) -> Result<()> {
        let revoked = Revoked {
            uuid: uuid.to_string(),
            at,
        };
        self.put(&self.path("revoked", uuid), &revoked, true).await?;
        Ok(())
    }

    /// Whether `uuid` is recorded as revoked.
    pub async fn is_revoked(&self, uuid: &str) -> Result<bool> {
        Ok(self.get::<Revoked>(&self.path("revoked", uuid)).await?.is_some())
    }

    /// The revocations recorded, as the names of their objects (cheap: one listing).
    pub async fn revocation_names(&self) -> Result<Vec<Path>> {
        self.names("revoked").await
    }

    /// The device a revocation object names (`None` if it went meanwhile).
    pub async fn revoked_device(&self, name: &Path) -> Result<Option<String>> {
        Ok(self.get::<Revoked>(name).await?.map(|r| r.uuid))
    }

    fn upload_key_path(&self, device: &str, key: &str) -> Path {
        self.path("upload-key", &format!("{device}\0{key}"))
    }

    /// Claims idempotency key `key` of `device` for an upload at `now`; a key completed more
    /// than `window` ago is claimed anew.
    pub async fn claim_upload_key(
        &self,
        device: &str,
        key: &str,
        now: DateTime<Utc>,
        window: chrono::Duration,
    ) -> Result<KeyClaim> {
        let path = self.upload_key_path(device, key);
        let pending = UploadKey::Pending { at: now };
        // Twice at most: a claim released between the put and the read is claimed again.
        for _ in 0..2 {
            if self.put(&path, &pending, true).await? {
                return Ok(KeyClaim::Claimed);
            }
            match self.get_seen::<UploadKey>(&path).await? {
                None => continue,
                Some((
                    UploadKey::Done {
                        accepted,
                        at,
                        body_sha256,
                    },
                    _,
                )) if now - at < window => {
                    return Ok(KeyClaim::Replay { accepted, body_sha256 });
                }
                Some((UploadKey::Done { .. }, seen)) => {
                    if self.replace(&path, &pending, &seen).await? {
                        return Ok(KeyClaim::Claimed);
                    }
                    // Another node claimed it anew first.
                    return Ok(KeyClaim::InProgress);
                }
                Some((UploadKey::Pending { at }, _)) if now - at < PENDING_KEY_TTL => return Ok(KeyClaim::InProgress),
                Some((UploadKey::Pending { .. }, seen)) => return Ok(KeyClaim::Abandoned(seen)),
            }
        }
        Ok(KeyClaim::InProgress)
    }

    /// Claims an abandoned key (see [`KeyClaim::Abandoned`]) as it was `seen`: `false` if
    /// another node took it over first.
    pub async fn take_over_upload_key(&self, device: &str, key: &str, now: DateTime<Utc>, seen: &Seen) -> Result<bool> {
        let path = self.upload_key_path(device, key);
        self.replace(&path, &UploadKey::Pending { at: now }, seen).await
    }

    /// Records that the upload of a claimed key was stored, with `accepted` observations,
    /// from a body whose SHA-256 is `body_sha256` (hex), if known.
    pub async fn complete_upload_key(
        &self,
        device: &str,
        key: &str,
        accepted: u64,
        body_sha256: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let path = self.upload_key_path(device, key);
        let done = UploadKey::Done {
            accepted,
            at: now,
            body_sha256: body_sha256.map(str::to_string),
        };
        self.put(&path, &done, false).await?;
        Ok(())
    }

    /// Gives a claimed key back: its upload failed and a retry may try again.
    pub async fn release_upload_key(&self, device: &str, key: &str) -> Result<()> {
        self.delete(&self.upload_key_path(device, key)).await
    }

    /// The devices forgotten (erased or expired) as the names of their tombstones (one
    /// listing).
    pub async fn gone_names(&self) -> Result<Vec<Path>> {
        self.names("gone").await
    }

    /// The device a tombstone names (`None` if it was swept meanwhile).
    pub async fn gone_device(&self, name: &Path) -> Result<Option<String>> {
        Ok(self.get::<Revoked>(name).await?.map(|r| r.uuid))
    }

    async fn names(&self, kind: &str) -> Result<Vec<Path>> {
        Ok(self.listed(kind).await?.into_iter().map(|m| m.location).collect())
    }

    async fn listed(&self, kind: &str) -> Result<Vec<object_store::ObjectMeta>> {
        Ok(self
            .store
            .object_store()
            .list(Some(&self.folder(kind)))
            .try_collect()
            .await?)
    }

    /// Deletes the idempotency keys last written before `before`; returns how many.
    pub async fn sweep_upload_keys(&self, before: DateTime<Utc>) -> Result<usize> {
        self.sweep("upload-key", before).await
    }

    /// Deletes the tombstones of devices forgotten before `before`; returns how many.
    pub async fn sweep_gone(&self, before: DateTime<Utc>) -> Result<usize> {
        self.sweep("gone", before).await
    }

    async fn sweep(&self, kind: &str, before: DateTime<Utc>) -> Result<usize> {
        let listed = self.listed(kind).await?;
        let mut swept = 0;
        for meta in listed.into_iter().filter(|m| m.last_modified < before) {
            self.delete(&meta.location).await?;
            swept += 1;
        }
        Ok(swept)
    }

    /// Deletes everything the registry holds of these devices (erased or expired): their
    /// registration, token, MAC claim and revocation, after a tombstone under `gone/` that
    /// tells every other node to forget what it holds of them in memory (at its next
    /// refresh; swept after [`GONE_KEPT`]). Returns how many were registered here.
    pub async fn forget(&self, uuids: &[String]) -> Result<usize> {
        let now = Utc::now();
        for uuid in uuids {
            let gone = Revoked {
                uuid: uuid.clone(),
                at: now,
            };
            self.put(&self.path("gone", uuid), &gone, false).await?;
        }
        let mut found = 0;
        for uuid in uuids {
            if let Some(entry) = self.by_device(uuid).await? {
                found += 1;
                self.delete(&self.path("token", &entry.token_digest)).await?;
                if let Some(mac) = &entry.mac {
                    self.delete(&self.path("mac", mac)).await?;
                }
            }
            self.delete(&self.path("revoked", uuid)).await?;
            self.delete(&self.path("device", uuid)).await?;
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(uuid: &str, mac: Option<&str>) -> DeviceEntry {
        DeviceEntry {
            uuid: uuid.into(),
            token_digest: hex::encode([7u8; 32]),
            revocation_key: None,
            mac: mac.map(str::to_string),
            registered: Utc::now(),
        }
    }

    #[tokio::test]
    async fn two_nodes_share_registrations_claims_and_revocations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let (one, two) = (
            SharedRegistry::open(&store).await.unwrap(),
            SharedRegistry::open(&store).await.unwrap(),
        );
        let device = "00000000-0000-4000-8000-000000000001";
        let mac = "AA:00:00:00:00:01";
        let now = Utc::now();
        assert!(one.claim_mac(mac, device, now).await.unwrap());
        assert!(!two.claim_mac(mac, "another", now).await.unwrap(), "one claim per MAC");
        let registered = entry(device, Some(mac));
        one.register(&registered).await.unwrap();
        assert!(one.register(&registered).await.is_err(), "one registration per UUID");
        assert_eq!(
            two.by_token(&registered.token_digest).await.unwrap(),
            Some(registered.clone())
        );
        assert_eq!(two.by_token(&hex::encode([8u8; 32])).await.unwrap(), None);
        assert!(!two.is_revoked(device).await.unwrap());

        one.revoke(device, Utc::now()).await.unwrap();
        one.revoke(device, Utc::now()).await.unwrap();
        let names = two.revocation_names().await.unwrap();
        assert_eq!(names.len(), 1);
        assert_eq!(two.revoked_device(&names[0]).await.unwrap().as_deref(), Some(device));
        assert!(two.is_revoked(device).await.unwrap());

        // Nothing on disk names the device, its MAC or its token digest.
        let files: Vec<_> = crate::testing::files_under(dir.path());
        assert_eq!(files.len(), 5, "{files:?}"); // the hash key, device, token, mac, revoked
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap() + &file.display().to_string();
            for secret in [device, mac, registered.token_digest.as_str()] {
                assert!(!text.contains(secret), "{file:?} holds {secret}");
            }
        }

        assert_eq!(two.forget(&[device.to_string()]).await.unwrap(), 1);
        assert_eq!(one.by_token(&registered.token_digest).await.unwrap(), None);
        assert!(one.revocation_names().await.unwrap().is_empty());
        assert!(
            one.claim_mac(mac, "another", now).await.unwrap(),
            "the MAC is free again"
        );

        // A claim whose registration never came (its node died) holds the MAC a minute.
        let orphan = "AA:00:00:00:00:02";
        assert!(one.claim_mac(orphan, "lost", now).await.unwrap());
        assert!(!two.claim_mac(orphan, "d2", now).await.unwrap());
        let later = now + ORPHAN_CLAIM_TTL + chrono::Duration::seconds(1);
        assert!(two.claim_mac(orphan, "d2", later).await.unwrap(), "taken over");
        // ... but a registered device's claim is kept for good.
        let kept = entry("00000000-0000-4000-8000-000000000003", Some("AA:00:00:00:00:03"));
        assert!(one.claim_mac("AA:00:00:00:00:03", &kept.uuid, now).await.unwrap());
        one.register(&kept).await.unwrap();
        assert!(!two.claim_mac("AA:00:00:00:00:03", "d4", later).await.unwrap());
    }

    #[tokio::test]
    async fn an_idempotency_key_is_stored_once_across_nodes() {
        let store = Store::in_memory();
        let (one, two) = (
            SharedRegistry::open(&store).await.unwrap(),
            SharedRegistry::open(&store).await.unwrap(),
        );
        let (device, key, day) = ("d", "k", chrono::Duration::hours(24));
        let now = Utc::now();
        assert_eq!(
            one.claim_upload_key(device, key, now, day).await.unwrap(),
            KeyClaim::Claimed
        );
        assert_eq!(
            two.claim_upload_key(device, key, now, day).await.unwrap(),
            KeyClaim::InProgress
        );
        assert_eq!(
            two.claim_upload_key("other device", key, now, day).await.unwrap(),
            KeyClaim::Claimed,
            "keys are per device"
        );
        one.complete_upload_key(device, key, 8, Some("ab12"), now)
            .await
            .unwrap();
        assert_eq!(
            two.claim_upload_key(device, key, now, day).await.unwrap(),
            KeyClaim::Replay {
                accepted: 8,
                body_sha256: Some("ab12".into())
            }
        );
        // A key completed before bodies' digests were kept still reads.
        let old = serde_json::json!({"state": "done", "accepted": 3, "at": now});
        let parsed: UploadKey = serde_json::from_value(old).unwrap();
        assert_eq!(
            parsed,
            UploadKey::Done {
                accepted: 3,
                at: now,
                body_sha256: None
            }
        );
        let tomorrow = now + day + chrono::Duration::seconds(1);
        assert_eq!(
            two.claim_upload_key(device, key, tomorrow, day).await.unwrap(),
            KeyClaim::Claimed
        );

        // A claim whose node never finished holds retries off for a while, then is abandoned.
        assert_eq!(
            one.claim_upload_key(device, "k2", now, day).await.unwrap(),
            KeyClaim::Claimed
        );
        let later = now + PENDING_KEY_TTL + chrono::Duration::seconds(1);
        let KeyClaim::Abandoned(seen) = two.claim_upload_key(device, "k2", later, day).await.unwrap() else {
            panic!("abandoned")
        };
        // Both nodes find it abandoned; exactly one takes it over (a conditional put on
        // the version each read).
        let KeyClaim::Abandoned(seen_by_one) = one.claim_upload_key(device, "k2", later, day).await.unwrap() else {
            panic!("abandoned")
        };
        assert!(two.take_over_upload_key(device, "k2", later, &seen).await.unwrap());
        assert!(
            !one.take_over_upload_key(device, "k2", later, &seen_by_one)
                .await
                .unwrap()
        );
        assert_eq!(
            one.claim_upload_key(device, "k2", later, day).await.unwrap(),
            KeyClaim::InProgress
        );
        // A released key is claimed again.
        two.release_upload_key(device, "k2").await.unwrap();
        assert_eq!(
            one.claim_upload_key(device, "k2", later, day).await.unwrap(),
            KeyClaim::Claimed
        );

        assert_eq!(one.sweep_upload_keys(Utc::now() - day).await.unwrap(), 0);
        assert_eq!(one.sweep_upload_keys(Utc::now() + day).await.unwrap(), 3);
    }
}
