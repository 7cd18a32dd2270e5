//! Rate limits both services apply: `governor`'s keyed token buckets, and the key a
//! client address is limited under.

use std::time::Duration;

/// Buckets kept before the full ones (which carry no information) are dropped.
const SWEEP_AT: usize = 1 << 20;

/// A token bucket per key (a device, a client address, a user): `governor`'s keyed limiter.
pub struct RateLimiter {
    limiter: Option<governor::DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("keys", &self.limiter.as_ref().map_or(0, |l| l.len()))
            .finish()
    }
}

impl RateLimiter {
    /// At most `per_minute` requests a minute per key, in bursts of as many (0: unlimited).
    pub fn new(per_minute: u32) -> Self {
        Self {
            limiter: std::num::NonZeroU32::new(per_minute)
                .map(|n| governor::RateLimiter::keyed(governor::Quota::per_minute(n))),
        }
    }

    /// Takes one request from `key`'s bucket, or says how long to wait.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        use governor::clock::Clock as _;
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if limiter.len() >= SWEEP_AT {
            limiter.retain_recent();
        }
        limiter
            .check_key(&key.to_string())
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }
}

/// The key a client address is limited under: the address, or an IPv6 address's /64 (the
/// block one subscriber is usually given); a mapped IPv4 address is that address.
pub fn address_key(address: std::net::IpAddr) -> String {
    match address {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_limited_per_address_or_ipv6_block() {
        let key = |a: &str| address_key(a.parse().unwrap());
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_eq!(
            key("::ffff:203.0.113.7"),
            "203.0.113.7",
            "a mapped IPv4 address is that address"
        );
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(
            key("2001:db8:1:2:bbbb:cccc:dddd:eeee"),
            key("2001:db8:1:2::9"),
            "one subscriber's /64"
        );
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }

    #[test]
    fn a_bucket_empties_and_says_how_long_to_wait() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            limiter.check("a").unwrap();
        }
        let wait = limiter.check("a").unwrap_err();
        // One request a minute / 3 = every 20 s, less the time since.
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        limiter.check("b").unwrap();
        let unlimited = RateLimiter::new(0);
        for _ in 0..1000 {
            unlimited.check("a").unwrap();
        }
    }
}
