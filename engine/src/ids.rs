//! Parsing and canonical forms of the identifiers stored in Proxima.
//!
//! Every row that enters the store passes through these parsers, so that SQL
//! can compare identifiers as plain text: device UUIDs are lowercase and
//! hyphenated, MACs are uppercase with colons, rolling proximity identifiers
//! are 32 lowercase hex digits, and locations are geohashes of at most 6
//! characters. Nothing here accepts personal data.

use std::fmt;

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError {
    /// The offending value, shortened if very long.
    pub value: String,
    /// What was expected instead.
    pub expected: &'static str,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' is not {}", self.value, self.expected)
    }
}

impl std::error::Error for IdError {}

fn refuse(value: &str, expected: &'static str) -> IdError {
    let value = if value.chars().count() > 64 {
        let mut short: String = value.chars().take(61).collect();
        short.push_str("...");
        short
    } else {
        value.to_string()
    };
    IdError { value, expected }
}

/// Parses a device UUID and returns its canonical lowercase hyphenated form.
pub fn device_uuid(value: &str) -> Result<String, IdError> {
    uuid(value, "a device UUID (8-4-4-4-12 hex digits)")
}

/// Parses a case id (a UUID) and returns its canonical lowercase hyphenated form.
pub fn case_id(value: &str) -> Result<String, IdError> {
    uuid(value, "a case id (a UUID: 8-4-4-4-12 hex digits)")
}

fn uuid(value: &str, expected: &'static str) -> Result<String, IdError> {
    let is_hyphenated = value.len() == 36
        && value.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if !is_hyphenated {
        return Err(refuse(value, expected));
    }
    Ok(value.to_ascii_lowercase())
}

/// Parses a Bluetooth MAC address `AA:BB:CC:DD:EE:FF` and returns it in uppercase.
pub fn mac(value: &str) -> Result<String, IdError> {
    const EXPECTED: &str = "a MAC address (six hex pairs separated by ':')";
    let is_mac = value.len() == 17
        && value
            .char_indices()
            .all(|(i, c)| if i % 3 == 2 { c == ':' } else { c.is_ascii_hexdigit() });
    if !is_mac {
        return Err(refuse(value, EXPECTED));
    }
    Ok(value.to_ascii_uppercase())
}

/// Parses a GAEN rolling proximity identifier (32 hex digits) into lowercase.
pub fn rpi(value: &str) -> Result<String, IdError> {
    if value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(refuse(value, "a rolling proximity identifier (32 hex digits)"))
    }
}

/// Parses what a device heard: a MAC (uppercased) or a rolling proximity identifier (lowercased).
pub fn observed(value: &str) -> Result<String, IdError> {
    mac(value).or_else(|_| rpi(value)).map_err(|_| {
        refuse(
            value,
            "a MAC address (AA:BB:CC:DD:EE:FF) or a rolling proximity identifier (32 hex digits)",
        )
    })
}

/// The base-32 alphabet of geohashes.
pub const GEOHASH_ALPHABET: &[u8; 32] = b"0123456789bcdefghjkmnpqrstuvwxyz";

/// Parses a geohash of 1 to 6 characters (coarser than about 1.2 km × 0.6 km is not required,
/// finer is refused so that no precise location is ever stored) and returns it in lowercase.
pub fn geohash(value: &str) -> Result<String, IdError> {
    let lower = value.to_ascii_lowercase();
    if (1..=6).contains(&lower.len()) && lower.bytes().all(|b| GEOHASH_ALPHABET.contains(&b)) {
        Ok(lower)
    } else {
        Err(refuse(value, "a geohash of 1 to 6 characters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_canonicalised_and_checked() {
        assert_eq!(
            device_uuid("0F6B1C2A-3D4E-4F50-8A9B-0C1D2E3F4A5B").unwrap(),
            "0f6b1c2a-3d4e-4f50-8a9b-0c1d2e3f4a5b"
        );
        assert!(device_uuid("0f6b1c2a3d4e4f508a9b0c1d2e3f4a5b").is_err());
        assert!(device_uuid("0f6b1c2a-3d4e-4f50-8a9b-0c1d2e3f4a5").is_err());
        assert!(device_uuid("zf6b1c2a-3d4e-4f50-8a9b-0c1d2e3f4a5b").is_err());
    }

    #[test]
    fn macs_and_rpis() {
        assert_eq!(mac("aa:bb:cc:dd:ee:0f").unwrap(), "AA:BB:CC:DD:EE:0F");
        assert!(mac("AA-BB-CC-DD-EE-FF").is_err());
        assert!(mac("AA:BB:CC:DD:EE:F").is_err());
        assert_eq!(
            observed("8BE6CD371C5C891604BFBE49DF845096").unwrap(),
            "8be6cd371c5c891604bfbe49df845096"
        );
        assert_eq!(observed("aa:bb:cc:dd:ee:ff").unwrap(), "AA:BB:CC:DD:EE:FF");
        let err = observed("hello").unwrap_err();
        assert!(err.to_string().contains("'hello' is not a MAC"), "{err}");
    }

    #[test]
    fn geohashes() {
        assert_eq!(geohash("U4PRUY").unwrap(), "u4pruy");
        assert!(geohash("u4pruyd").is_err());
        assert!(geohash("").is_err());
        assert!(geohash("ua").is_err(), "'a' is not in the geohash alphabet");
    }
}
