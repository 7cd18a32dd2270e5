//! Password logins, guarded: what every login path (REST Basic credentials, the Flight SQL
//! handshake) goes through before a password is hashed.
//!
//! Checking a password costs an argon2 hash (19 MiB and tens of milliseconds of one core),
//! and the caller needs no account to ask for one. So failed logins are counted per client
//! address and per user name (`governor` token buckets: `per_address` and `per_user` a
//! minute, in bursts of as many), and once a failure finds its bucket empty, logins from
//! that address or for that user are refused before any hashing until it refills; right passwords never
//! spend a bucket (a station that sends Basic credentials with every reading is never
//! throttled). And a login is answered "busy, retry" when `concurrent` hashes are already
//! running: a bounded semaphore, taken without waiting, so excess never queues. Every
//! outcome is counted ([`LoginCounts`]); callers log refusals.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::access::Principal;
use crate::limits::{RateLimiter, address_key};
use crate::users::Users;

/// The limits of password logins.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Failed logins a minute per client address (an IPv6 /64), in bursts of as many;
    /// beyond, logins from it are refused unchecked until the bucket refills. 0: no limit.
    pub per_address: u32,
    /// Failed logins a minute per user name, likewise. 0: no limit.
    pub per_user: u32,
    /// Password hashes running at once; beyond, a login is answered "busy".
    pub concurrent: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            per_address: 10,
            per_user: 30,
            concurrent: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// Why a login was not even checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginRefused {
    /// Too many failed logins from this address or for this user: retry after the wait.
    #[error("too many failed logins {by}; retry in {} s", retry_after.as_secs().max(1))]
    Throttled {
        /// "from this address" or "for this user".
        by: &'static str,
        /// How long until one more attempt is allowed.
        retry_after: Duration,
    },
    /// Every password hash slot is busy: retry shortly.
    #[error("the server is busy checking other logins; retry in 1 s")]
    Busy,
}

impl LoginRefused {
    /// How long the client should wait (for a Retry-After header).
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::Throttled { retry_after, .. } => (*retry_after).max(Duration::from_secs(1)),
            Self::Busy => Duration::from_secs(1),
        }
    }
}

/// How many logins ended how, since start.
#[derive(Debug, Default)]
pub struct LoginCounts {
    /// Right password.
    pub succeeded: AtomicU64,
    /// Wrong user name or password.
    pub failed: AtomicU64,
    /// Refused unchecked: too many attempts.
    pub throttled: AtomicU64,
    /// Refused unchecked: every hash slot busy.
    pub busy: AtomicU64,
}

/// The guard every password login goes through (one per process, shared by both services).
#[derive(Debug)]
pub struct LoginGuard {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    per_address: RateLimiter,
    per_user: RateLimiter,
    /// Addresses (`a:…`) and users (`u:…`) whose bucket of failures ran out, until when.
    blocked: Mutex<HashMap<String, Instant>>,
    hashing: Arc<tokio::sync::Semaphore>,
    counts: LoginCounts,
}

/// Blocked keys kept before the expired ones are swept.
const BLOCKED_SWEEP_AT: usize = 100_000;

impl LoginGuard {
    /// A guard with these limits.
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                per_address: RateLimiter::new(limits.per_address),
                per_user: RateLimiter::new(limits.per_user),
                blocked: Mutex::default(),
                hashing: Arc::new(tokio::sync::Semaphore::new(limits.concurrent.max(1))),
                counts: LoginCounts::default(),
            }),
        }
    }

    /// The counts of outcomes.
    pub fn counts(&self) -> &LoginCounts {
        &self.inner.counts
    }

    /// Checks `password` for user `name`, asked from `address` (`None`: unknown, which
    /// shares one budget): the user and the stamp of the entry checked
    /// ([`Users::verify_stamped`]), `Ok(None)` for a wrong name or password, `Err` when the
    /// attempt was refused before any hashing.
    pub async fn verify(
        &self,
        users: &Users,
        address: Option<std::net::IpAddr>,
        name: &str,
        password: &str,
    ) -> Result<Option<(Principal, u64)>, LoginRefused> {
        let inner = &self.inner;
        let address = address.map_or_else(|| "unknown".to_string(), address_key);
        // Names are the client's text: bounded before they become a key.
        let user: String = name.chars().take(128).collect();
        inner.throttled(&address, &user)?;
        let Ok(permit) = Arc::clone(&inner.hashing).try_acquire_owned() else {
            inner.counts.busy.fetch_add(1, Ordering::Relaxed);
            return Err(LoginRefused::Busy);
        };
        // Again with the slot held: a failure recorded (and its block set) between the first
        // look and taking the slot it freed is seen, so a block lets no attempt through.
        inner.throttled(&address, &user)?;
        let (users, name, password) = (users.clone(), name.to_string(), password.to_string());
        let inner = Arc::clone(inner);
        // The slot is held until the outcome is recorded, on the blocking thread: a client
        // that hangs up frees nothing early, and the next login sees this one's failure.
        tokio::task::spawn_blocking(move || {
            let verified = users.verify_stamped(&name, &password);
            inner.record(verified.is_some(), &address, &user);
            drop(permit);
            verified
        })
        .await
        // The hash panicked (it does not): a failed login, never a crash.
        .map_or(Ok(None), Ok)
    }
}

impl LoginGuard {
    /// Whether a bearer token from `address` may be checked: not while the address is
    /// blocked by its failures (refused tokens spend the same budget as wrong passwords,
    /// since each is an audit record). Call [`Self::record_token`] with the outcome.
    pub fn admit_token(&self, address: Option<std::net::IpAddr>) -> Result<(), LoginRefused> {
        let address = address.map_or_else(|| "unknown".to_string(), address_key);
        if let Some(retry_after) = self.inner.blocked_for(&format!("a:{address}"), Instant::now()) {
            self.inner.counts.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(LoginRefused::Throttled {
                by: "from this address",
                retry_after,
            });
        }
        Ok(())
    }

    /// Counts a bearer token's outcome; a refusal spends the address's budget.
    pub fn record_token(&self, address: Option<std::net::IpAddr>, succeeded: bool) {
        let address = address.map_or_else(|| "unknown".to_string(), address_key);
        let inner = &self.inner;
        if succeeded {
            inner.counts.succeeded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        inner.counts.failed.fetch_add(1, Ordering::Relaxed);
        inner.failed(&inner.per_address, &address, format!("a:{address}"), Instant::now());
    }
}

impl Inner {
    /// Refuses (and counts) an attempt from `address` or for `user` while either is blocked.
    fn throttled(&self, address: &str, user: &str) -> Result<(), LoginRefused> {
        let now = Instant::now();
        for (key, by) in [
            (format!("a:{address}"), "from this address"),
            (format!("u:{user}"), "for this user"),
        ] {
            if let Some(retry_after) = self.blocked_for(&key, now) {
                self.counts.throttled.fetch_add(1, Ordering::Relaxed);
                return Err(LoginRefused::Throttled { by, retry_after });
            }
        }
        Ok(())
    }

    /// Counts an outcome; a failure spends the address's and the user's budgets.
    fn record(&self, succeeded: bool, address: &str, user: &str) {
        if succeeded {
            self.counts.succeeded.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counts.failed.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        self.failed(&self.per_address, address, format!("a:{address}"), now);
        self.failed(&self.per_user, user, format!("u:{user}"), now);
    }

    /// How much longer `key` is refused, if it is.
    fn blocked_for(&self, key: &str, now: Instant) -> Option<Duration> {
        let blocked = self.blocked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        blocked.get(key).and_then(|until| until.checked_duration_since(now))
    }

    /// Spends one failure of `key` from `bucket`; an empty bucket blocks `key` until it
    /// refills.
    fn failed(&self, bucket: &RateLimiter, limited: &str, key: String, now: Instant) {
        if let Err(wait) = bucket.check(limited) {
            let mut blocked = self.blocked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if blocked.len() >= BLOCKED_SWEEP_AT {
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(key, now + wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;

    fn users() -> Users {
        Users::generated(&[("ann", Role::Tracer, "right")]).unwrap()
    }

    #[tokio::test]
    async fn failed_logins_are_limited_per_address_and_user_and_counted() {
        let guard = LoginGuard::new(LoginLimits {
            per_address: 3,
            per_user: 5,
            concurrent: 2,
        });
        let users = users();
        let here = Some("203.0.113.7".parse().unwrap());
        // Right passwords spend nothing.
        for _ in 0..10 {
            assert!(guard.verify(&users, here, "ann", "right").await.unwrap().is_some());
        }
        // Three failures a minute are allowed from an address; the fourth finds its bucket
        // empty, and then any attempt, even with the right password, is refused unchecked.
        for user in ["ann", "bob", "ann", "bob"] {
            assert!(guard.verify(&users, here, user, "wrong").await.unwrap().is_none());
        }
        let refused = guard.verify(&users, here, "ann", "right").await.unwrap_err();
        assert!(
            matches!(
                refused,
                LoginRefused::Throttled {
                    by: "from this address",
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(refused.retry_after() >= Duration::from_secs(1));
        // Other addresses still get in, until the user's own failures (5) are spent.
        for i in 0..4 {
            let there = Some(format!("198.51.100.{i}").parse().unwrap());
            assert!(guard.verify(&users, there, "ann", "wrong").await.unwrap().is_none());
        }
        let elsewhere = Some("192.0.2.1".parse().unwrap());
        let refused = guard.verify(&users, elsewhere, "ann", "right").await.unwrap_err();
        assert!(
            matches!(
                refused,
                LoginRefused::Throttled {
                    by: "for this user",
                    ..
                }
            ),
            "{refused:?}"
        );
        // Another user from there is not held up.
        assert!(guard.verify(&users, elsewhere, "bob", "x").await.unwrap().is_none());
        let counts = guard.counts();
        assert_eq!(counts.succeeded.load(Ordering::Relaxed), 10);
        assert_eq!(counts.failed.load(Ordering::Relaxed), 9);
        assert_eq!(counts.throttled.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn hashes_beyond_the_slots_are_refused_not_queued() {
        let guard = Arc::new(LoginGuard::new(LoginLimits {
            per_address: 0,
            per_user: 0,
            concurrent: 1,
        }));
        let users = users();
        // Hold the only slot, as a running hash does.
        let held = Arc::clone(&guard.inner.hashing).try_acquire_owned().unwrap();
        let refused = guard.verify(&users, None, "ann", "right").await.unwrap_err();
        assert_eq!(refused, LoginRefused::Busy);
        assert_eq!(guard.counts().busy.load(Ordering::Relaxed), 1);
        drop(held);
        assert!(guard.verify(&users, None, "ann", "right").await.unwrap().is_some());
    }
}
