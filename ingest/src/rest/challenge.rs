//! Proof of work before registration, so that minting throwaway devices costs real time.
//!
//! `GET /v1/devices/challenge` hands out a challenge (hashcash-style): the phone finds a
//! nonce such that `SHA-256(challenge ‖ ":" ‖ nonce)` starts with `difficulty` zero bits
//! (`--registration-work`; 2^difficulty hashes on average), and sends both with its
//! registration. A challenge is stateless until used: its expiry, difficulty and 16 random
//! bytes, authenticated with an HMAC under a key the server draws at start. Each is good for
//! one registration attempt (a 409 for a MAC already registered uses it up too, so probing
//! which MACs are known costs the same work), and for [`TTL`].

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};

/// How long a challenge may be used after it was issued.
pub const TTL: chrono::Duration = chrono::Duration::minutes(10);
/// The hardest work a server may ask (about 4 billion hashes on average).
pub const MAX_DIFFICULTY: u8 = 32;

/// `GET /v1/devices/challenge` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Challenge {
    /// What to hash (opaque text; send it back as is).
    pub challenge: String,
    /// How many leading zero bits `SHA-256(challenge ":" nonce)` must have.
    pub difficulty: u8,
    /// Until when it may be used (RFC 3339).
    pub expires_at: String,
}

/// Issues challenges and checks their proofs.
#[derive(Debug)]
pub struct Challenges {
    key: [u8; 32],
    difficulty: u8,
    /// Challenges used, by their random part, with their expiry (µs): kept until then.
    used: Mutex<HashMap<[u8; 16], i64>>,
}

impl Challenges {
    /// Challenges of `difficulty` bits (0: registration asks for none), under a new key.
    pub fn new(difficulty: u8) -> Self {
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        Self {
            key,
            difficulty: difficulty.min(MAX_DIFFICULTY),
            used: Mutex::default(),
        }
    }

    /// The work asked of each registration, in bits (0: none).
    pub fn difficulty(&self) -> u8 {
        self.difficulty
    }

    fn mac(&self, body: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(body.as_bytes());
        mac
    }

    /// A new challenge, valid from `now` for [`TTL`].
    pub fn issue(&self, now: DateTime<Utc>) -> Challenge {
        let expires = now + TTL;
        let mut random = [0u8; 16];
        rand::fill(&mut random);
        let body = format!("{}.{}.{}", expires.timestamp(), self.difficulty, hex::encode(random));
        Challenge {
            challenge: format!("{body}.{}", hex::encode(self.mac(&body).finalize().into_bytes())),
            difficulty: self.difficulty,
            expires_at: expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }

    /// Checks a registration's proof: `challenge` was issued here, has not expired or been
    /// used, and `nonce` solves it; then marks it used. Nothing is asked at difficulty 0.
    pub fn redeem(&self, challenge: Option<&str>, nonce: Option<&str>, now: DateTime<Utc>) -> ApiResult<()> {
        if self.difficulty == 0 {
            return Ok(());
        }
        let (Some(challenge), Some(nonce)) = (challenge, nonce) else {
            return Err(ApiError::invalid(format!(
                "body.challenge and body.nonce: registration needs a proof of work of {} bits: \
                 GET /v1/devices/challenge, then find a nonce such that SHA-256(challenge \":\" nonce) \
                 starts with that many zero bits",
                self.difficulty
            )));
        };
        let foreign =
            || ApiError::invalid("body.challenge: not a challenge this server issued (or it restarted since)");
        let (body, tag) = challenge.rsplit_once('.').ok_or_else(foreign)?;
        let mut parts = body.split('.');
        let (Some(expires), Some(difficulty), Some(random), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(foreign());
        };
        // The tag first (compared in constant time): nothing else of a forged challenge is read.
        let tag = hex::decode(tag).map_err(|_| foreign())?;
        self.mac(body).verify_slice(&tag).map_err(|_| foreign())?;
        let expires: i64 = expires.parse().map_err(|_| foreign())?;
        let difficulty: u8 = difficulty.parse().map_err(|_| foreign())?;
        let mut id = [0u8; 16];
        hex::decode_to_slice(random, &mut id).map_err(|_| foreign())?;
        if now.timestamp() > expires {
            return Err(ApiError::invalid("body.challenge: expired; fetch a new one"));
        }
        if nonce.len() > 64 {
            return Err(ApiError::invalid("body.nonce: at most 64 characters"));
        }
        if leading_zero_bits(&digest(challenge, nonce)) < u32::from(difficulty) {
            return Err(ApiError::invalid(format!(
                "body.nonce: SHA-256(challenge \":\" nonce) does not start with {difficulty} zero bits"
            )));
        }
        let mut used = self.used.lock().expect("challenge lock is never poisoned");
        let now_micros = now.timestamp_micros();
        if used.len() >= 1024 {
            used.retain(|_, expiry| *expiry >= now_micros);
        }
        if used.insert(id, expires.saturating_mul(1_000_000)).is_some() {
            return Err(ApiError::invalid("body.challenge: already used; fetch a new one"));
        }
        Ok(())
    }
}

fn digest(challenge: &str, nonce: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(challenge.as_bytes());
    hasher.update(b":");
    hasher.update(nonce.as_bytes());
    hasher.finalize().into()
}

/// How many zero bits `hash` starts with.
pub fn leading_zero_bits(hash: &[u8]) -> u32 {
    let mut bits = 0;
    for byte in hash {
        if *byte == 0 {
            bits += 8;
        } else {
            return bits + byte.leading_zeros();
        }
    }
    bits
}

/// What a phone does: the first nonce (decimal, from 0) that solves `challenge` at
/// `difficulty` bits. About 2^difficulty hashes.
pub fn solve(challenge: &str, difficulty: u8) -> String {
    (0u64..)
        .map(|n| n.to_string())
        .find(|nonce| leading_zero_bits(&digest(challenge, nonce)) >= u32::from(difficulty))
        .expect("some nonce below 2^64 solves any difficulty up to 32 bits")
}

/// `GET /v1/devices/challenge`: a proof-of-work challenge for one registration.
#[utoipa::path(get, path = "/v1/devices/challenge", tag = "devices",
    responses((status = 200, description = "A challenge; difficulty 0 means registration asks for no work", body = Challenge)))]
pub async fn issue(axum::extract::State(state): axum::extract::State<super::AppState>) -> axum::Json<Challenge> {
    axum::Json(state.challenges.issue(state.clock.now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-12-02T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn leading_zero_bits_count_across_bytes() {
        assert_eq!(leading_zero_bits(&[0xff]), 0);
        assert_eq!(leading_zero_bits(&[0x00, 0x10]), 11);
        assert_eq!(leading_zero_bits(&[0x00, 0x00, 0x01]), 23);
        assert_eq!(leading_zero_bits(&[0, 0]), 16);
    }

    #[test]
    fn a_solved_challenge_is_good_once_and_only_here_and_in_time() {
        let challenges = Challenges::new(12);
        let issued = challenges.issue(now());
        assert_eq!(issued.difficulty, 12);
        let nonce = solve(&issued.challenge, 12);
        // Checked apart from `leading_zero_bits`: the first 12 bits of the hash are zero.
        let hash = digest(&issued.challenge, &nonce);
        assert_eq!((hash[0], hash[1] & 0xf0), (0, 0));
        let redeem = |c: &str, n: &str, at| challenges.redeem(Some(c), Some(n), at).map_err(|e| format!("{e:?}"));

        let wrong = (0u64..)
            .map(|n| n.to_string())
            .find(|n| leading_zero_bits(&digest(&issued.challenge, n)) < 12)
            .unwrap();
        assert!(
            redeem(&issued.challenge, &wrong, now())
                .unwrap_err()
                .contains("body.nonce")
        );
        assert!(
            redeem(&issued.challenge, &nonce, now() + TTL + chrono::Duration::seconds(1))
                .unwrap_err()
                .contains("expired")
        );
        redeem(&issued.challenge, &nonce, now()).unwrap();
        assert!(
            redeem(&issued.challenge, &nonce, now())
                .unwrap_err()
                .contains("already used")
        );

        // Another server's challenge, and one with its difficulty lowered.
        let other = Challenges::new(12).issue(now());
        let solved = solve(&other.challenge, 12);
        assert!(
            redeem(&other.challenge, &solved, now())
                .unwrap_err()
                .contains("not a challenge")
        );
        let fresh = challenges.issue(now());
        let easier = fresh.challenge.replacen(".12.", ".0.", 1);
        assert!(redeem(&easier, "0", now()).unwrap_err().contains("not a challenge"));
        assert!(redeem("x", "0", now()).unwrap_err().contains("not a challenge"));
        assert!(
            format!("{:?}", challenges.redeem(None, None, now()).unwrap_err()).contains("proof of work of 12 bits")
        );
        assert!(Challenges::new(0).redeem(None, None, now()).is_ok(), "no work asked");
    }
}
