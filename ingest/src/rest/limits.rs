//! Rate limits and idempotency keys.
//!
//! Both are kept in memory per process (rate limits are `proxima_engine::limits`, shared
//! with the Flight SQL service's logins) (idempotency keys also in the store's shared
//! registry, so that they hold across serving nodes: `proxima_storage::registry`). Rate limits are `governor`'s keyed token
//! buckets: per device on its own routes (`--device-rate` requests a minute, bursts up
//! to the same number), per client address on registration and revocation
//! (`--registration-rate`).
//! An idempotency key is remembered for 24 hours with the answer first given and the
//! SHA-256 of the body it answered, so that a phone retrying after a lost answer is
//! acknowledged again without its observations being stored twice, and a key reused
//! with another body is refused (422; the IETF Idempotency-Key draft's answer), not
//! answered with the first body's acknowledgement. Keys are also written, in the
//! same WAL record as the upload's rows, to the hidden table `upload_keys`,
//! and [`IdempotencyCache::load`] restores them at start: a retry after a
//! crash or restart is recognised too. That table does not keep the body's digest (its
//! schema is older than the check): a key restored from it is replayed to any body.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_WINDOW: chrono::Duration = proxima_storage::registry::UPLOAD_KEY_WINDOW;
/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 1 << 20;

pub use proxima_engine::limits::RateLimiter;

/// The SHA-256 of a request's body.
pub type BodyDigest = [u8; 32];

/// The SHA-256 of `body`.
pub fn body_digest(body: &[u8]) -> BodyDigest {
    use sha2::Digest as _;
    sha2::Sha256::digest(body).into()
}

/// What a request with an idempotency key should do.
#[derive(Debug)]
pub enum Idempotency {
    /// First time: go on, then [`IdempotencyCache::complete`] or [`IdempotencyCache::release`].
    Claimed,
    /// The same key is being processed by another request.
    InProgress,
    /// Already done with this body (or one whose digest is not known): answer this again.
    Replay(StatusCode, Vec<u8>),
    /// Already done with another body: the key is being reused, refuse.
    OtherBody,
}

#[derive(Debug)]
enum KeyState {
    InProgress,
    Done {
        status: StatusCode,
        body: Vec<u8>,
        /// The digest of the request's body (`None` for keys restored from `upload_keys`).
        request: Option<BodyDigest>,
        expires: DateTime<Utc>,
    },
}

/// Idempotency keys per device.
#[derive(Debug, Default)]
pub struct IdempotencyCache {
    keys: Mutex<HashMap<(String, String), KeyState>>,
}

impl IdempotencyCache {
    /// Claims `key` for `device` for a request whose body has digest `request`, unless it is
    /// in progress or done within the window.
    pub fn claim(&self, device: &str, key: &str, request: &BodyDigest, now: DateTime<Utc>) -> Idempotency {
        let mut keys = self.keys.lock().expect("idempotency lock is never poisoned");
        if keys.len() >= SWEEP_AT {
            keys.retain(|_, state| !matches!(state, KeyState::Done { expires, .. } if *expires <= now));
        }
        match keys.get(&(device.to_string(), key.to_string())) {
            Some(KeyState::InProgress) => return Idempotency::InProgress,
            Some(KeyState::Done {
                status,
                body,
                request: first,
                expires,
            }) if *expires > now => {
                return match first {
                    Some(first) if first != request => Idempotency::OtherBody,
                    _ => Idempotency::Replay(*status, body.clone()),
                };
            }
            _ => {}
        }
        keys.insert((device.to_string(), key.to_string()), KeyState::InProgress);
        Idempotency::Claimed
    }

    /// Records the answer of a claimed key, given to a request whose body has digest
    /// `request` (if known).
    pub fn complete(
        &self,
        device: &str,
        key: &str,
        request: Option<BodyDigest>,
        answer: (StatusCode, Vec<u8>),
        now: DateTime<Utc>,
    ) {
        let mut keys = self.keys.lock().expect("idempotency lock is never poisoned");
        let (status, body) = answer;
        keys.insert(
            (device.to_string(), key.to_string()),
            KeyState::Done {
                status,
                body,
                request,
                expires: now + IDEMPOTENCY_WINDOW,
            },
        );
    }

    /// Restores the keys used in the last 24 hours from the store's `upload_keys`.
    pub async fn load(factory: &proxima_engine::SessionFactory, now: DateTime<Utc>) -> crate::Result<Self> {
        use arrow::array::AsArray;
        use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
        let cache = Self::default();
        let since = (now - IDEMPOTENCY_WINDOW).timestamp_micros();
        for batch in super::read_table(factory, proxima_engine::Table::UploadKeys).await? {
            let devices = batch.column(0).as_string::<i32>();
            let keys = batch.column(1).as_string::<i32>();
            let accepted = batch.column(2).as_primitive::<Int64Type>();
            let used = batch.column(3).as_primitive::<TimestampMicrosecondType>();
            for i in 0..batch.num_rows() {
                if used.value(i) < since {
                    continue;
                }
                let body = format!("{{\"accepted\":{}}}", accepted.value(i)).into_bytes();
                let used_at = DateTime::from_timestamp_micros(used.value(i)).unwrap_or(now);
                cache.complete(devices.value(i), keys.value(i), None, (StatusCode::OK, body), used_at);
            }
        }
        Ok(cache)
    }

    /// Forgets a claimed key whose request failed (a retry may try again).
    pub fn release(&self, device: &str, key: &str) {
        let mut keys = self.keys.lock().expect("idempotency lock is never poisoned");
        keys.remove(&(device.to_string(), key.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_replay_within_the_window_to_the_same_body_only() {
        let cache = IdempotencyCache::default();
        let now = Utc::now();
        // FIPS 180-2's example: SHA-256("abc").
        assert_eq!(
            hex::encode(body_digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (first, second) = (body_digest(b"[1]"), body_digest(b"[2]"));
        assert!(matches!(cache.claim("d", "k", &first, now), Idempotency::Claimed));
        assert!(matches!(cache.claim("d", "k", &first, now), Idempotency::InProgress));
        cache.complete("d", "k", Some(first), (StatusCode::OK, b"{}".to_vec()), now);
        assert!(matches!(
            cache.claim("d", "k", &first, now),
            Idempotency::Replay(StatusCode::OK, _)
        ));
        assert!(matches!(cache.claim("d", "k", &second, now), Idempotency::OtherBody));
        assert!(matches!(cache.claim("other", "k", &second, now), Idempotency::Claimed));
        assert!(matches!(
            cache.claim("d", "k", &second, now + IDEMPOTENCY_WINDOW),
            Idempotency::Claimed
        ));
        // A key restored without its body's digest replays to any body.
        cache.complete("d", "k2", None, (StatusCode::OK, b"{}".to_vec()), now);
        assert!(matches!(
            cache.claim("d", "k2", &second, now),
            Idempotency::Replay(StatusCode::OK, _)
        ));
    }
}
