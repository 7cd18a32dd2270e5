//! Server-issued rotating identifiers: what a phone broadcasts instead of a static MAC.
//!
//! An identifier is 16 bytes (the size of a GAEN RPI, so it fits a BLE advertisement and
//! the `observed` column as 32 hex digits) valid for one epoch. It is one AES-256 block
//! under a server key of
//!
//! ```text
//! device handle (8 bytes) ‖ epoch start, minutes since 1970 (4) ‖ key id (1) ‖ 0 0 0
//! ```
//!
//! so only the key's holder can tell which device an identifier stands for, or that two
//! identifiers belong to one device: each epoch's block is a different plaintext, and a
//! block cipher maps it to unrelated bytes. Decrypting anything else (random bytes, an
//! identifier with a bit flipped, one made under another key) gives a block whose key id
//! and zero bytes do not check (32 bits) and whose handle names no device, so it resolves
//! to nothing. The handle is the first 8 bytes of the SHA-256 of the device's UUID
//! ([`handle_of`]): spread evenly whatever the UUIDs look like (imported ones need not be
//! random), and checked unique at registration and import.
//!
//! The keys live in one file (`--id-key`), JSON, readable by the server only, or in a store
//! with master keys, one wrapped key each under `_keys/identifiers/` (shared by every node;
//! see `proxima_storage::id_keys`): one current key that issues, and retired keys that
//! still resolve what they issued until they are forgotten
//! ([`IdKeys::forget_retired_before`]), after which their identifiers are unlinkable for
//! good.

use std::path::Path;

use aes::Aes256;
use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::keys::{KeyError, KeyProvider, read_sealed_file, write_sealed_file};

/// An identifier as broadcast: 16 bytes.
pub type EphemeralId = [u8; 16];

/// An identifier key file's error from reading or writing it sealed: the operating system's
/// as such, anything else (a master key missing or wrong) as the reason it is refused.
fn key_file_error(path: &Path, e: KeyError) -> IdKeyError {
    let path = path.display().to_string();
    match e {
        KeyError::Io { source, .. } => IdKeyError::Io { path, source },
        other => IdKeyError::Invalid {
            path,
            reason: other.to_string(),
        },
    }
}

/// What can go wrong with an identifier key file.
#[derive(Debug, thiserror::Error)]
pub enum IdKeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not a key file.
    #[error("{path}: not an identifier key file: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Every key id is in use.
    #[error("all 255 key ids are in use: forget retired keys first")]
    Full,
}

/// One key: its id (inside every identifier it issues), its 256 bits, and when it was made
/// and retired.
#[derive(Clone, Serialize, Deserialize)]
struct IdKey {
    id: u8,
    #[serde(with = "crate::keys::key_base64")]
    key: [u8; 32],
    created: DateTime<Utc>,
    retired: Option<DateTime<Utc>>,
}

/// The identifier keys: the current one issues, every one resolves.
#[derive(Clone, Serialize, Deserialize)]
pub struct IdKeys {
    keys: Vec<IdKey>,
}

impl std::fmt::Debug for IdKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key bytes.
        let ids: Vec<(u8, bool)> = self.keys.iter().map(|k| (k.id, k.retired.is_none())).collect();
        f.debug_struct("IdKeys").field("ids (current)", &ids).finish()
    }
}

/// What an identifier stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// The device's handle ([`handle_of`]).
    pub handle: u64,
    /// When the identifier's epoch starts, in minutes since 1970.
    pub start_minute: u32,
    /// The key that issued it.
    pub key_id: u8,
}

impl Resolved {
    /// Whether a sighting at `at` falls in the identifier's epoch of length `epoch`, give or
    /// take `tolerance` (phones' clocks drift): outside it, the sighting is a replay.
    pub fn valid_at(&self, at: DateTime<Utc>, epoch: std::time::Duration, tolerance: std::time::Duration) -> bool {
        let start = i64::from(self.start_minute) * 60;
        let at = at.timestamp();
        let (epoch, tolerance) = (epoch.as_secs() as i64, tolerance.as_secs() as i64);
        at >= start - tolerance && at < start + epoch + tolerance
    }
}

/// The handle of a device in its identifiers: the first 8 bytes of the SHA-256 of its
/// UUID's 16 bytes (registration and import make sure no two devices share one).
pub fn handle_of(device_uuid: &str) -> Option<u64> {
    let uuid = uuid::Uuid::parse_str(device_uuid).ok()?;
    Some(handle_of_bits(uuid.as_u128()))
}

/// [`handle_of`] for a UUID as its 128 bits.
pub fn handle_of_bits(device: u128) -> u64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(device.to_be_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("SHA-256 has 32 bytes"))
}

/// The start, in minutes since 1970, of the epoch of length `epoch` that holds `at`.
pub fn epoch_start(at: DateTime<Utc>, epoch: std::time::Duration) -> u32 {
    let length = epoch.as_secs().max(60) as i64;
    let start = at.timestamp().div_euclid(length) * length;
    u32::try_from(start / 60).unwrap_or(0)
}

/// One identifier under `key`.
fn seal(key: &IdKey, handle: u64, start_minute: u32) -> EphemeralId {
    let mut block = [0u8; 16];
    block[..8].copy_from_slice(&handle.to_be_bytes());
    block[8..12].copy_from_slice(&start_minute.to_be_bytes());
    block[12] = key.id;
    let mut block = block.into();
    Aes256::new(&key.key.into()).encrypt_block(&mut block);
    block.into()
}

impl IdKeys {
    /// A new file's keys: one current key, id 1.
    pub fn generate(now: DateTime<Utc>) -> Self {
        Self {
            keys: vec![IdKey {
                id: 1,
                key: crate::keys::random_key(),
                created: now,
                retired: None,
            }],
        }
    }

    /// The keys a store keeps one object each (`_keys/identifiers/`), oldest first: each is
    /// retired when the next was made, the newest is current. `None` for no keys, or ids
    /// not distinct and from 1 to 255.
    pub fn from_generations(keys: Vec<(u8, [u8; 32], DateTime<Utc>)>) -> Option<Self> {
        let retired_at: Vec<Option<DateTime<Utc>>> = keys
            .iter()
            .skip(1)
            .map(|(_, _, created)| Some(*created))
            .chain([None])
            .collect();
        let keys = Self {
            keys: keys
                .into_iter()
                .zip(retired_at)
                .map(|((id, key, created), retired)| IdKey {
                    id,
                    key,
                    created,
                    retired,
                })
                .collect(),
        };
        (!keys.keys.is_empty() && keys.ids_valid()).then_some(keys)
    }

    /// Each key, oldest first: its id, bytes and when it was made (what a store keeps).
    pub fn generations(&self) -> Vec<(u8, [u8; 32], DateTime<Utc>)> {
        let mut keys: Vec<&IdKey> = self.keys.iter().collect();
        // The current key last; retired ones in the order they were retired.
        keys.sort_by_key(|k| (k.retired.is_none(), k.retired, k.created));
        keys.into_iter().map(|k| (k.id, k.key, k.created)).collect()
    }

    /// The id a rotation gives the new key: the next one after the current that is free.
    pub fn next_id(&self) -> Result<u8, IdKeyError> {
        (1..=255u8)
            .map(|i| self.current().id.wrapping_add(i))
            .find(|id| *id != 0 && self.keys.iter().all(|k| k.id != *id))
            .ok_or(IdKeyError::Full)
    }

    /// When each key was retired, by id (`None`: current).
    pub fn retirements(&self) -> Vec<(u8, Option<DateTime<Utc>>)> {
        self.keys.iter().map(|k| (k.id, k.retired)).collect()
    }

    fn ids_valid(&self) -> bool {
        let mut ids: Vec<u8> = self.keys.iter().map(|k| k.id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len() == self.keys.len() && !ids.contains(&0)
    }

    /// Reads a key file (sealed with a master key, which `master` must hold, or as it is),
    /// checking it holds exactly one current key and distinct ids.
    pub fn load(path: &Path, master: Option<&dyn KeyProvider>) -> Result<Self, IdKeyError> {
        let bytes = read_sealed_file(path, master).map_err(|e| key_file_error(path, e))?;
        let text = String::from_utf8_lossy(&bytes);
        let invalid = |reason: String| IdKeyError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let keys: Self = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let current = keys.keys.iter().filter(|k| k.retired.is_none()).count();
        if current != 1 {
            return Err(invalid(format!("{current} current keys (one is needed)")));
        }
        if !keys.ids_valid() {
            return Err(invalid("key ids must be distinct, from 1 to 255".into()));
        }
        Ok(keys)
    }

    /// Writes the keys to `path` (readable by its owner only; sealed with the current master
    /// key if `master` is given), durably: aside, synced,
    /// renamed.
    pub fn save(&self, path: &Path, master: Option<&dyn KeyProvider>) -> Result<(), IdKeyError> {
        let text = serde_json::to_string_pretty(self).expect("keys always serialise");
        write_sealed_file(path, text.as_bytes(), master).map_err(|e| key_file_error(path, e))
    }

    fn current(&self) -> &IdKey {
        self.keys
            .iter()
            .find(|k| k.retired.is_none())
            .expect("loaded and built with one current key")
    }

    /// The current key's id.
    pub fn current_id(&self) -> u8 {
        self.current().id
    }

    /// One line per key, for people: its id, when it was made and retired (never its bytes).
    pub fn summary(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|k| match k.retired {
                None => format!("key {}: current, made {}", k.id, k.created.to_rfc3339()),
                Some(retired) => format!(
                    "key {}: retired {} (made {}); resolves until forgotten",
                    k.id,
                    retired.to_rfc3339(),
                    k.created.to_rfc3339()
                ),
            })
            .collect()
    }

    /// Retires the current key and makes a new one current: identifiers issued from now on
    /// use the new key, and those issued before still resolve.
    pub fn rotate(&mut self, now: DateTime<Utc>) -> Result<u8, IdKeyError> {
        let id = self.next_id()?;
        for key in &mut self.keys {
            key.retired.get_or_insert(now);
        }
        self.keys.push(IdKey {
            id,
            key: crate::keys::random_key(),
            created: now,
            retired: None,
        });
        Ok(id)
    }

    /// Forgets the keys retired before `cutoff` (the retention period): what they issued no
    /// longer resolves, to anyone. Returns how many were forgotten.
    pub fn forget_retired_before(&mut self, cutoff: DateTime<Utc>) -> usize {
        let before = self.keys.len();
        self.keys.retain(|k| k.retired.is_none_or(|retired| retired >= cutoff));
        before - self.keys.len()
    }

    /// The identifier of the device with `handle` for the epoch starting at `start_minute`,
    /// under the current key.
    pub fn issue(&self, handle: u64, start_minute: u32) -> EphemeralId {
        seal(self.current(), handle, start_minute)
    }

    /// The identifiers a device with `handle` broadcasts in the `count` epochs (of length
    /// `epoch`, whole minutes) from the one holding `from` on, under the current key: each
    /// with its epoch's start and end.
    pub fn schedule(
        &self,
        handle: u64,
        from: DateTime<Utc>,
        count: u32,
        epoch: std::time::Duration,
    ) -> Vec<(EphemeralId, DateTime<Utc>, DateTime<Utc>)> {
        let minutes = (epoch.as_secs() / 60).max(1);
        let first = u64::from(epoch_start(from, epoch));
        let at = |minute: u64| DateTime::<Utc>::from_timestamp((minute * 60) as i64, 0).unwrap_or_default();
        (0..u64::from(count))
            .map_while(|i| u32::try_from(first + i * minutes).ok())
            .map(|start| {
                let start64 = u64::from(start);
                (self.issue(handle, start), at(start64), at(start64 + minutes))
            })
            .collect()
    }

    /// Every identifier any of the keys would give the device with `handle` for the epochs
    /// (of `epoch_minutes`) that start from `from_minute` up to `to_minute`, with each one's
    /// epoch start: what to look up to find who heard that device in a window, without
    /// storing which identifier belongs to whom.
    pub fn identifiers_between(
        &self,
        handle: u64,
        from_minute: u32,
        to_minute: u32,
        epoch_minutes: u32,
    ) -> Vec<(EphemeralId, u32)> {
        let step = epoch_minutes.max(1);
        let first = from_minute - from_minute % step;
        let starts: Vec<u32> = (first..=to_minute).step_by(step as usize).collect();
        self.keys
            .iter()
            .flat_map(|key| starts.iter().map(move |&start| (seal(key, handle, start), start)))
            .collect()
    }

    /// What `id` stands for, if one of the keys issued it.
    pub fn resolve(&self, id: &EphemeralId) -> Option<Resolved> {
        self.keys.iter().find_map(|key| {
            let mut block = (*id).into();
            Aes256::new(&key.key.into()).decrypt_block(&mut block);
            let block: [u8; 16] = block.into();
            (block[12] == key.id && block[13..] == [0, 0, 0]).then(|| Resolved {
                handle: u64::from_be_bytes(block[..8].try_into().expect("8 bytes")),
                start_minute: u32::from_be_bytes(block[8..12].try_into().expect("4 bytes")),
                key_id: key.id,
            })
        })
    }
}

/// How far a sighting may fall outside its identifier's epoch and still count, by default:
/// phones' clocks drift, and a sighting is stamped by the hearing phone.
pub const DEFAULT_TOLERANCE: std::time::Duration = std::time::Duration::from_secs(120);

/// What tracing resolves heard identifiers with: the keys, the epoch length and the
/// tolerance. Identifiers are resolved when a sighting is read, never stored resolved, so
/// forgetting a key makes what it issued unlinkable in the store as it stands.
#[derive(Debug, Clone)]
pub struct Identifiers {
    keys: IdKeys,
    epoch: std::time::Duration,
    tolerance: std::time::Duration,
}

/// What a heard identifier turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// An identifier of the device with this handle, heard in its epoch.
    Device(u64),
    /// An identifier one of the keys issued, heard outside its epoch: a replay.
    Replayed,
    /// 16 bytes none of the keys issued: forged, tampered with, made under a forgotten or
    /// foreign key, or some other identifier (a GAEN RPI).
    Unknown,
}

impl Identifiers {
    /// Resolves with `keys`, identifiers valid for `epoch` give or take `tolerance`.
    pub fn new(keys: IdKeys, epoch: std::time::Duration, tolerance: std::time::Duration) -> Self {
        Self {
            keys,
            epoch: epoch.max(std::time::Duration::from_secs(60)),
            tolerance,
        }
    }

    /// The keys.
    pub fn keys(&self) -> &IdKeys {
        &self.keys
    }

    /// A short digest of the keys, epoch and tolerance: two processes that print the same
    /// one resolve every identifier alike (a cluster's nodes check they do). One-way: it
    /// tells nothing of the keys.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(b"proxima identifier keys fingerprint\0");
        for key in &self.keys.keys {
            hash.update([key.id]);
            hash.update(key.key);
        }
        hash.update(self.epoch.as_secs().to_le_bytes());
        hash.update(self.tolerance.as_secs().to_le_bytes());
        hex::encode(&hash.finalize()[..8])
    }

    /// The length of an epoch.
    pub fn epoch(&self) -> std::time::Duration {
        self.epoch
    }

    /// Whether a sighting at `at` (µs since 1970) falls in the epoch starting at
    /// `start_minute`, within the tolerance.
    pub fn in_epoch(&self, start_minute: u32, at: i64) -> bool {
        let start = i64::from(start_minute) * 60_000_000;
        let (epoch, tolerance) = (self.epoch.as_micros() as i64, self.tolerance.as_micros() as i64);
        at >= start - tolerance && at < start + epoch + tolerance
    }

    /// When (µs since 1970, both ends inclusive) a sighting of the identifier of the epoch
    /// starting at `start_minute` counts: the epoch, widened by the tolerance.
    pub fn validity(&self, start_minute: u32) -> (i64, i64) {
        let start = i64::from(start_minute) * 60_000_000;
        let (epoch, tolerance) = (self.epoch.as_micros() as i64, self.tolerance.as_micros() as i64);
        (start - tolerance, start + epoch + tolerance - 1)
    }

    /// What `observed` (as stored: 32 lowercase hex digits; `None` for anything else, a MAC)
    /// heard at `at` (µs since 1970) stands for.
    pub fn heard(&self, observed: &str, at: i64) -> Option<Heard> {
        let id = parse_hex(observed)?;
        Some(match self.keys.resolve(&id) {
            Some(resolved) if self.in_epoch(resolved.start_minute, at) => Heard::Device(resolved.handle),
            Some(_) => Heard::Replayed,
            None => Heard::Unknown,
        })
    }

    /// Every identifier (as stored: 32 lowercase hex digits) that a sighting from `from` to
    /// `to` (µs since 1970) of the device with `handle` may carry, under every key, with its
    /// epoch's start: what to look up to find who heard the device.
    pub fn broadcast_between(&self, handle: u64, from: i64, to: i64) -> Vec<(String, u32)> {
        let tolerance = self.tolerance.as_micros() as i64;
        let epoch = self.epoch.as_micros() as i64;
        let minute = |micros: i64| u32::try_from(micros.div_euclid(60_000_000).max(0)).unwrap_or(u32::MAX);
        // An epoch counts if a sighting in it, give or take the tolerance, can fall in the window.
        let first = minute(from.saturating_sub(tolerance).saturating_sub(epoch));
        let last = minute(to.saturating_add(tolerance));
        let epoch_minutes = u32::try_from(self.epoch.as_secs() / 60).unwrap_or(u32::MAX);
        self.keys
            .identifiers_between(handle, first, last, epoch_minutes)
            .into_iter()
            .map(|(id, start)| (hex(&id), start))
            .collect()
    }
}

/// 32 hex digits as 16 bytes; `None` for anything else.
fn parse_hex(text: &str) -> Option<EphemeralId> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(text, &mut id).ok()?;
    Some(id)
}

/// 16 bytes as 32 lowercase hex digits (how an identifier is stored in `observed`).
pub fn hex(id: &EphemeralId) -> String {
    hex::encode(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const EPOCH: Duration = Duration::from_secs(15 * 60);
    const DEVICE: &str = "6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b";

    fn now() -> DateTime<Utc> {
        "2026-12-02T12:07:00Z".parse().unwrap()
    }

    #[test]
    fn an_identifier_resolves_to_its_device_and_epoch_only_with_the_key() {
        let keys = IdKeys::generate(now());
        let handle = handle_of(DEVICE).unwrap();
        // SHA-256 of the UUID's 16 bytes, computed apart (Python's hashlib).
        assert_eq!(handle, 0x0f4d_7fbe_5e2f_0182);
        let start = epoch_start(now(), EPOCH);
        assert_eq!(
            i64::from(start) * 60,
            "2026-12-02T12:00:00Z".parse::<DateTime<Utc>>().unwrap().timestamp()
        );
        let id = keys.issue(handle, start);
        assert_eq!(
            keys.resolve(&id),
            Some(Resolved {
                handle,
                start_minute: start,
                key_id: 1
            })
        );
        // Another key (another server, or a key forgotten) resolves nothing.
        assert_eq!(IdKeys::generate(now()).resolve(&id), None);
    }

    #[test]
    fn identifiers_of_one_device_share_nothing_visible() {
        let keys = IdKeys::generate(now());
        let handle = handle_of(DEVICE).unwrap();
        let start = epoch_start(now(), EPOCH);
        let mut ids: Vec<EphemeralId> = (0..96).map(|i| keys.issue(handle, start + i * 15)).collect();
        // Another device's identifier of the same epoch among them.
        ids.push(keys.issue(handle_of("00000000-0000-4000-8000-000000000001").unwrap(), start));
        let distinct: std::collections::HashSet<&EphemeralId> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // No byte is the same in all of them: no common prefix, no visible field. (For
        // random bytes, a position agreeing 96 times by chance has odds of 256^-96.)
        for position in 0..16 {
            assert!(
                ids.iter().any(|id| id[position] != ids[0][position]),
                "byte {position} is constant"
            );
        }
    }

    #[test]
    fn random_and_tampered_identifiers_resolve_to_nothing() {
        let keys = IdKeys::generate(now());
        for _ in 0..10_000 {
            let mut random = [0u8; 16];
            rand::fill(&mut random);
            assert_eq!(keys.resolve(&random), None);
        }
        let id = keys.issue(handle_of(DEVICE).unwrap(), epoch_start(now(), EPOCH));
        for bit in 0..128 {
            let mut tampered = id;
            tampered[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(keys.resolve(&tampered), None, "bit {bit}");
        }
    }

    #[test]
    fn a_sighting_outside_the_epoch_is_a_replay() {
        let keys = IdKeys::generate(now());
        let start = epoch_start(now(), EPOCH);
        let resolved = keys.resolve(&keys.issue(7, start)).unwrap();
        let at = |t: &str| t.parse::<DateTime<Utc>>().unwrap();
        let tolerance = Duration::from_secs(60);
        assert!(resolved.valid_at(at("2026-12-02T12:00:00Z"), EPOCH, tolerance));
        assert!(resolved.valid_at(at("2026-12-02T12:14:59Z"), EPOCH, tolerance));
        assert!(
            resolved.valid_at(at("2026-12-02T11:59:00Z"), EPOCH, tolerance),
            "a minute early: clock drift"
        );
        assert!(resolved.valid_at(at("2026-12-02T12:15:59Z"), EPOCH, tolerance));
        assert!(!resolved.valid_at(at("2026-12-02T12:16:00Z"), EPOCH, tolerance));
        assert!(!resolved.valid_at(at("2026-12-02T11:58:59Z"), EPOCH, tolerance));
        assert!(
            !resolved.valid_at(at("2026-12-03T12:05:00Z"), EPOCH, tolerance),
            "a day later"
        );
    }

    #[test]
    fn rotation_keeps_old_identifiers_until_their_key_is_forgotten() {
        let mut keys = IdKeys::generate(now());
        let handle = handle_of(DEVICE).unwrap();
        let start = epoch_start(now(), EPOCH);
        let old = keys.issue(handle, start);
        assert_eq!(keys.rotate(now()).unwrap(), 2);
        assert_eq!(keys.current_id(), 2);
        let new = keys.issue(handle, start);
        assert_ne!(old, new);
        assert_eq!(keys.resolve(&old).map(|r| r.key_id), Some(1));
        assert_eq!(keys.resolve(&new).map(|r| r.key_id), Some(2));

        // Retired at now(): kept while the cutoff is earlier, forgotten once it passes.
        assert_eq!(keys.forget_retired_before(now()), 0);
        assert_eq!(keys.forget_retired_before(now() + chrono::Duration::seconds(1)), 1);
        assert_eq!(keys.resolve(&old), None, "unlinkable for good");
        assert_eq!(keys.resolve(&new).map(|r| r.handle), Some(handle));
    }

    #[test]
    fn the_identifiers_of_a_window_are_all_those_issued_in_it_under_every_key() {
        let mut keys = IdKeys::generate(now());
        let handle = handle_of(DEVICE).unwrap();
        let epoch_minutes = 15;
        let first = epoch_start(now(), EPOCH);
        let issued_before: Vec<EphemeralId> = (0..4).map(|i| keys.issue(handle, first + i * 15)).collect();
        keys.rotate(now()).unwrap();
        let issued_after: Vec<EphemeralId> = (0..4).map(|i| keys.issue(handle, first + i * 15)).collect();
        // A window from inside the first epoch to the start of the fourth.
        let window = keys.identifiers_between(handle, first + 7, first + 45, epoch_minutes);
        assert_eq!(window.len(), 2 * 4, "4 epochs under 2 keys");
        for (id, start) in &window {
            let resolved = keys.resolve(id).unwrap();
            assert_eq!((resolved.handle, resolved.start_minute), (handle, *start));
        }
        let ids: Vec<&EphemeralId> = window.iter().map(|(id, _)| id).collect();
        for id in issued_before.iter().chain(&issued_after) {
            assert!(ids.contains(&id));
        }
        assert!(
            keys.identifiers_between(handle, first + 60, first + 59, epoch_minutes)
                .is_empty()
        );
    }

    #[test]
    fn the_key_file_round_trips_and_refuses_what_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ids.key");
        let mut keys = IdKeys::generate(now());
        keys.rotate(now()).unwrap();
        keys.save(&path, None).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let loaded = IdKeys::load(&path, None).unwrap();
        let id = keys.issue(9, 100);
        assert_eq!(loaded.resolve(&id), keys.resolve(&id));
        assert_eq!(loaded.issue(9, 100), id);
        assert!(
            !format!("{loaded:?}").contains(&base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                keys.keys[0].key
            )),
            "Debug shows no key"
        );

        for (text, why) in [
            ("{}", "missing field"),
            (r#"{"keys":[]}"#, "0 current keys"),
            (
                r#"{"keys":[{"id":1,"key":"AAAA","created":"2026-12-02T00:00:00Z","retired":null}]}"#,
                "32 bytes",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = IdKeys::load(&path, None).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
