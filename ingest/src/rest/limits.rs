//! Rate limits and idempotency keys.
//!
//! Both are kept in memory per process (rate limits are `proxima_engine::limits`, shared
//! with the Flight SQL service's logins) (idempotency keys also in the store's shared
//! registry, so that they hold across serving nodes: `proxima_storage::registry`). Rate limits are `governor`'s keyed token
//! buckets: per device on its own routes (`--device-rate` requests a minute, bursts up
//! to the same number), per client address on registration and revocation
//! (`--registration-rate`).
//! An idempotency key is remembered for 24 hours with the answer first given,
//! so that a phone retrying after a lost answer is acknowledged again
//! without its observations being stored twice. Keys are also written, in the
//! same WAL record as the upload's rows, to the hidden table `upload_keys`,
//! and [`IdempotencyCache::load`] restores them at start: a retry after a
//! crash or restart is recognised too.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_WINDOW: chrono::Duration = proxima_storage::registry::UPLOAD_KEY_WINDOW;
/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 1 << 20;

pub use proxima_engine::limits::RateLimiter;

/// What a request with an idempotency key should do.
#[derive(Debug)]
pub enum Idempotency {
    /// First time: go on, then [`IdempotencyCache::complete`] or [`IdempotencyCache::release`].
    Claimed,
    /// The same key is being processed by another request.
    InProgress,
    /// Already done: answer this again.
    Replay(StatusCode, Vec<u8>),
}

#[derive(Debug)]
enum KeyState {
    InProgress,
    Done {
        status: StatusCode,
        body: Vec<u8>,
        expires: DateTime<Utc>,
    },
}

/// Idempotency keys per device.
#[derive(Debug, Default)]
pub struct IdempotencyCache {
    keys: Mutex<HashMap<(String, String), KeyState>>,
}

impl IdempotencyCache {
    /// Claims `key` for `device`, unless it is in progress or done within the window.
    pub fn claim(&self, device: &str, key: &str, now: DateTime<Utc>) -> Idempotency {
        let mut keys = self.keys.lock().expect("idempotency lock is never poisoned");
        if keys.len() >= SWEEP_AT {
            keys.retain(|_, state| !matches!(state, KeyState::Done { expires, .. } if *expires <= now));
        }
        match keys.get(&(device.to_string(), key.to_string())) {
            Some(KeyState::InProgress) => return Idempotency::InProgress,
            Some(KeyState::Done { status, body, expires }) if *expires > now => {
                return Idempotency::Replay(*status, body.clone());
            }
            _ => {}
        }
        keys.insert((device.to_string(), key.to_string()), KeyState::InProgress);
        Idempotency::Claimed
    }

    /// Records the answer of a claimed key.
    pub fn complete(&self, device: &str, key: &str, status: StatusCode, body: Vec<u8>, now: DateTime<Utc>) {
        let mut keys = self.keys.lock().expect("idempotency lock is never poisoned");
        keys.insert(
            (device.to_string(), key.to_string()),
            KeyState::Done {
                status,
                body,
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
                cache.complete(devices.value(i), keys.value(i), StatusCode::OK, body, used_at);
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
    fn keys_replay_within_the_window() {
        let cache = IdempotencyCache::default();
        let now = Utc::now();
        assert!(matches!(cache.claim("d", "k", now), Idempotency::Claimed));
        assert!(matches!(cache.claim("d", "k", now), Idempotency::InProgress));
        cache.complete("d", "k", StatusCode::OK, b"{}".to_vec(), now);
        assert!(matches!(
            cache.claim("d", "k", now),
            Idempotency::Replay(StatusCode::OK, _)
        ));
        assert!(matches!(cache.claim("other", "k", now), Idempotency::Claimed));
        assert!(matches!(
            cache.claim("d", "k", now + IDEMPOTENCY_WINDOW),
            Idempotency::Claimed
        ));
    }
}
