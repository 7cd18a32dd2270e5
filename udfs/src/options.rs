//! Session settings of Proxima's functions, changeable with `SET proxima.…`.
//!
//! | key | default | used by |
//! |---|---|---|
//! | `proxima.trace.high_window` | `48 hours` | `trace_contacts`: high priority, and the window of hops 2+ |
//! | `proxima.trace.lookback` | `96 hours` | `trace_contacts`: the window of the first hop |
//! | `proxima.risk.attenuation_thresholds` | `55,63` | `exposure_risk`: near ≤ first, medium ≤ second, far above (dB) |
//! | `proxima.risk.weights` | `1.0,0.5,0.0` | `exposure_risk`: weights of near, medium and far |
//! | `proxima.trace.require_mutual` | `false` | `trace_contacts`: an encounter counts only if both devices reported each other |
//! | `proxima.trace.mutual_window` | `5 minutes` | `trace_contacts`: how far apart the two reports of a mutual encounter may be |
//! | `proxima.purpose` | empty | a tracer's declared purpose, `case:<case_id>`: what their reads are for |
//!
//! Written by hand rather than with `extensions_options!` so that
//! [`ExtensionOptions::entries`] reports fully prefixed keys, which is what
//! survives the trip to a Ballista cluster.

use std::any::Any;
use std::time::Duration;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::error::{DataFusionError, Result};

/// The settings of Proxima's functions in one session.
#[derive(Debug, Clone, PartialEq)]
pub struct ProximaOptions {
    /// W_high: contacts this recent are high priority; hops 2+ only look this far back.
    pub high_window: Duration,
    /// W_back: how far back the first hop looks.
    pub lookback: Duration,
    /// Attenuation bucket bounds in dB: near ≤ `[0]`, medium ≤ `[1]`, far above.
    pub attenuation_thresholds: [f64; 2],
    /// Weights of the near, medium and far buckets.
    pub weights: [f64; 3],
    /// The declared purpose (`case:<case_id>`, the id lowercase), or empty.
    pub purpose: String,
    /// Whether an encounter counts only when both devices reported each other within
    /// `mutual_window` (so that one-sided, possibly forged, sightings alert no one).
    pub require_mutual: bool,
    /// How far apart two devices' reports of each other may be and still make one mutual
    /// encounter.
    pub mutual_window: Duration,
}

impl Default for ProximaOptions {
    fn default() -> Self {
        Self {
            high_window: Duration::from_secs(48 * 3600),
            lookback: Duration::from_secs(96 * 3600),
            attenuation_thresholds: [55.0, 63.0],
            weights: [1.0, 0.5, 0.0],
            purpose: String::new(),
            require_mutual: false,
            mutual_window: Duration::from_secs(5 * 60),
        }
    }
}

const HIGH_WINDOW: &str = "trace.high_window";
const LOOKBACK: &str = "trace.lookback";
const THRESHOLDS: &str = "risk.attenuation_thresholds";
const WEIGHTS: &str = "risk.weights";
const PURPOSE: &str = "purpose";
const REQUIRE_MUTUAL: &str = "trace.require_mutual";
const MUTUAL_WINDOW: &str = "trace.mutual_window";

impl ConfigExtension for ProximaOptions {
    const PREFIX: &'static str = "proxima";
}

fn config_error(key: &str, value: &str, expected: &str) -> DataFusionError {
    DataFusionError::Configuration(format!("proxima.{key}: '{value}' is not {expected}"))
}

/// Parses a duration such as `48 hours`, `2 days`, `90 minutes` or `1 day 12 hours`.
pub fn parse_window(key: &str, value: &str) -> Result<Duration> {
    let expected = "a duration such as '48 hours' or '2 days'";
    let words: Vec<&str> = value.split_whitespace().collect();
    if words.is_empty() || !words.len().is_multiple_of(2) {
        return Err(config_error(key, value, expected));
    }
    let mut seconds: u64 = 0;
    for pair in words.chunks(2) {
        let amount: u64 = pair[0].parse().map_err(|_| config_error(key, value, expected))?;
        let unit = match pair[1].to_ascii_lowercase().trim_end_matches('s') {
            "second" | "sec" => 1,
            "minute" | "min" => 60,
            "hour" => 3600,
            "day" => 86_400,
            "week" => 7 * 86_400,
            _ => return Err(config_error(key, value, expected)),
        };
        seconds = amount
            .checked_mul(unit)
            .and_then(|s| seconds.checked_add(s))
            .ok_or_else(|| config_error(key, value, expected))?;
    }
    if seconds == 0 || seconds > MAX_WINDOW_SECS {
        return Err(config_error(key, value, "a duration between 1 second and 60 days"));
    }
    Ok(Duration::from_secs(seconds))
}

/// A purpose as `case:<case_id>` (the id a UUID, lowercased), or empty to clear it.
pub fn parse_purpose(value: &str) -> Result<String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(String::new());
    }
    let id = value
        .strip_prefix("case:")
        .ok_or_else(|| config_error(PURPOSE, value, "a purpose: 'case:<case_id>'"))?
        .to_ascii_lowercase();
    let hex: Vec<usize> = id.split('-').map(str::len).collect();
    if hex != [8, 4, 4, 4, 12] || !id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
        return Err(config_error(
            PURPOSE,
            value,
            "a purpose: 'case:<case_id>', the id a UUID",
        ));
    }
    Ok(format!("case:{id}"))
}

/// The longest tracing window: far beyond any public-health look-back (and beyond the 21
/// days of data kept), and short enough that a trace reads a bounded number of days.
const MAX_WINDOW_SECS: u64 = 60 * 86_400;

fn format_window(window: Duration) -> String {
    let seconds = window.as_secs();
    if seconds.is_multiple_of(3600) {
        format!("{} hours", seconds / 3600)
    } else if seconds.is_multiple_of(60) {
        format!("{} minutes", seconds / 60)
    } else {
        format!("{seconds} seconds")
    }
}

fn parse_list<const N: usize>(key: &str, value: &str, expected: &str) -> Result<[f64; N]> {
    let numbers: Vec<f64> = value
        .split(',')
        .map(|n| n.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| config_error(key, value, expected))?;
    let numbers: [f64; N] = numbers.try_into().map_err(|_| config_error(key, value, expected))?;
    if numbers.iter().any(|n| !n.is_finite()) {
        return Err(config_error(key, value, expected));
    }
    Ok(numbers)
}

fn format_list(numbers: &[f64]) -> String {
    numbers.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(",")
}

impl ExtensionOptions for ProximaOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        // Accept the key with or without its prefix (a cluster may hand back either).
        let key = key.strip_prefix("proxima.").unwrap_or(key);
        let value = value.trim().trim_matches('\'');
        match key {
            HIGH_WINDOW => self.high_window = parse_window(key, value)?,
            LOOKBACK => self.lookback = parse_window(key, value)?,
            THRESHOLDS => {
                let [near, medium] = parse_list(key, value, "two attenuations in dB such as '55,63'")?;
                if near > medium {
                    return Err(config_error(key, value, "in increasing order"));
                }
                self.attenuation_thresholds = [near, medium];
            }
            WEIGHTS => {
                let weights = parse_list(key, value, "three weights such as '1.0,0.5,0.0'")?;
                if weights.iter().any(|w| *w < 0.0) {
                    return Err(config_error(key, value, "a list of weights ≥ 0"));
                }
                self.weights = weights;
            }
            PURPOSE => self.purpose = parse_purpose(value)?,
            REQUIRE_MUTUAL => {
                self.require_mutual = match value.to_ascii_lowercase().as_str() {
                    "true" | "on" => true,
                    "false" | "off" => false,
                    _ => return Err(config_error(key, value, "true or false")),
                }
            }
            MUTUAL_WINDOW => self.mutual_window = parse_window(key, value)?,
            _ => {
                return Err(DataFusionError::Configuration(format!(
                    "unknown setting 'proxima.{key}' (known: proxima.{HIGH_WINDOW}, proxima.{LOOKBACK}, \
                     proxima.{THRESHOLDS}, proxima.{WEIGHTS}, proxima.{PURPOSE}, proxima.{REQUIRE_MUTUAL}, \
                     proxima.{MUTUAL_WINDOW})"
                )));
            }
        }
        Ok(())
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        let entry = |key: &str, value: String, description: &'static str| ConfigEntry {
            key: format!("proxima.{key}"),
            value: Some(value),
            description,
        };
        vec![
            entry(
                HIGH_WINDOW,
                format_window(self.high_window),
                "trace_contacts: contacts this recent are high priority; hops 2+ look back this far",
            ),
            entry(
                LOOKBACK,
                format_window(self.lookback),
                "trace_contacts: how far back the first hop looks",
            ),
            entry(
                THRESHOLDS,
                format_list(&self.attenuation_thresholds),
                "exposure_risk: attenuation (dB) bounds of the near and medium buckets",
            ),
            entry(
                WEIGHTS,
                format_list(&self.weights),
                "exposure_risk: weights of the near, medium and far buckets",
            ),
            entry(
                PURPOSE,
                self.purpose.clone(),
                "a tracer's declared purpose, case:<case_id>: what their reads are for",
            ),
            entry(
                REQUIRE_MUTUAL,
                self.require_mutual.to_string(),
                "trace_contacts: count an encounter only if both devices reported each other",
            ),
            entry(
                MUTUAL_WINDOW,
                format_window(self.mutual_window),
                "trace_contacts: how far apart the two reports of a mutual encounter may be",
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(parse_window("k", "48 hours").unwrap(), Duration::from_secs(48 * 3600));
        assert_eq!(
            parse_window("k", "1 day 12 hours").unwrap(),
            Duration::from_secs(36 * 3600)
        );
        assert_eq!(parse_window("k", "90 Minutes").unwrap(), Duration::from_secs(5400));
        let err = parse_window("trace.lookback", "soon").unwrap_err().to_string();
        assert!(
            err.contains("proxima.trace.lookback: 'soon' is not a duration"),
            "{err}"
        );
        assert!(parse_window("k", "-1 hours").is_err());
        assert!(parse_window("k", "3 fortnights").is_err());
        // Bounded, so that a trace reads a bounded number of days.
        assert_eq!(parse_window("k", "60 days").unwrap(), Duration::from_secs(60 * 86_400));
        let err = parse_window("trace.lookback", "61 days").unwrap_err().to_string();
        assert!(err.contains("between 1 second and 60 days"), "{err}");
        assert!(parse_window("k", "0 hours").is_err());
    }

    #[test]
    fn settings_round_trip() {
        let mut options = ProximaOptions::default();
        options.set("trace.high_window", "24 hours").unwrap();
        options.set("proxima.risk.weights", "1,0.25,0").unwrap();
        assert!(options.set("risk.attenuation_thresholds", "63,55").is_err());
        assert!(options.set("risk.weights", "1,2").is_err());
        assert!(options.set("trace.nope", "1").is_err());
        let entries = options.entries();
        assert_eq!(entries[0].key, "proxima.trace.high_window");
        assert_eq!(entries[0].value.as_deref(), Some("24 hours"));
        assert_eq!(entries[3].value.as_deref(), Some("1.0,0.25,0.0"));
    }
}
