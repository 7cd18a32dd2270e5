//! The value rules of observation rows that every front door applies (REST uploads and
//! `proxima import` alike), so that a row one door accepts the other does too.
//!
//! Identifiers have their own parsers in [`crate::ids`]; this module holds the numeric
//! ranges. Errors say what was wrong with the value; the caller adds where it was.

use std::ops::RangeInclusive;

/// Signal strengths (`rssi`, `tx_power`): BLE reports them as signed 8-bit dBm.
pub const DBM: RangeInclusive<i64> = -128..=127;

/// A sighting's `duration_s`: seconds, not negative, stored as a 32-bit integer.
pub fn duration_s(value: i64) -> Result<i32, String> {
    if value < 0 {
        return Err(format!("{value} is negative"));
    }
    i32::try_from(value).map_err(|_| format!("{value} is too large (at most {} seconds)", i32::MAX))
}

/// A signal strength in dBm (`rssi`, `tx_power`), stored as a 16-bit integer.
pub fn dbm(value: i64) -> Result<i16, String> {
    if DBM.contains(&value) {
        Ok(value as i16)
    } else {
        Err(format!("{value} is outside {}..={} dBm", DBM.start(), DBM.end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive_and_refusals_say_why() {
        assert_eq!(duration_s(0), Ok(0));
        assert_eq!(duration_s(i64::from(i32::MAX)), Ok(i32::MAX));
        assert_eq!(duration_s(-1).unwrap_err(), "-1 is negative");
        assert!(duration_s(i64::from(i32::MAX) + 1).unwrap_err().contains("too large"));
        assert_eq!(dbm(-128), Ok(-128));
        assert_eq!(dbm(127), Ok(127));
        assert_eq!(dbm(128).unwrap_err(), "128 is outside -128..=127 dBm");
        assert_eq!(dbm(-129).unwrap_err(), "-129 is outside -128..=127 dBm");
    }
}
