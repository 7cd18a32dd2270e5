//! Keeping device UUIDs out of the log: a [`Redactor`] replaces every UUID written in a
//! record's free text (statement, parameter values, error, claimed name) by a keyed hash of
//! it before the record is written.
//!
//! The log is append-only and hash-chained, so a UUID written into it could never be taken
//! out when its device is later revoked and erased. It therefore never goes in: a tracer's
//! `trace_contacts('6f1c…')` is recorded as `trace_contacts('uuid:3b9e…')`. The hash is
//! keyed, and the caller chooses the key (Proxima uses the store's erasure hash key, the one
//! erasure records name devices by), so whoever holds it can still ask "who looked at this
//! device?" by hashing the UUID, while a reader of the log alone learns nothing. A UUID
//! right after `case:` is a case's id, not a device, and is kept, so a declared purpose
//! still reads as the case it cites.

use std::fmt;
use std::sync::{Arc, LazyLock};

use regex::Regex;

/// A UUID in its canonical hyphenated form, in either case. Wherever it stands, even inside
/// a longer word: redacting a little too much is the safe side.
static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").expect("a valid pattern")
});

/// What marks a UUID as a case id rather than a device.
const CASE_PREFIX: &str = "case:";
/// What a redacted UUID is written as, before its hash.
pub const REDACTED_PREFIX: &str = "uuid:";

/// Replaces the UUIDs in a text by a keyed hash of each (see the module docs). Cheap to
/// clone.
#[derive(Clone)]
pub struct Redactor {
    hash: Arc<dyn Fn(&str) -> String + Send + Sync>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Redactor")
    }
}

impl Redactor {
    /// A redactor that writes each UUID as `uuid:` and `hash` of its lowercase canonical
    /// form (so `6F1C…` and `6f1c…` hash alike).
    pub fn uuids(hash: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        Self { hash: Arc::new(hash) }
    }

    /// `text` with every UUID but a case's id replaced.
    pub fn apply(&self, text: &str) -> String {
        UUID.replace_all(text, |found: &regex::Captures<'_>| {
            let whole = found.get(0).expect("group 0 is the match");
            let before = &text[..whole.start()];
            if before.len() >= CASE_PREFIX.len()
                && before.is_char_boundary(before.len() - CASE_PREFIX.len())
                && before[before.len() - CASE_PREFIX.len()..].eq_ignore_ascii_case(CASE_PREFIX)
            {
                return whole.as_str().to_string();
            }
            format!("{REDACTED_PREFIX}{}", (self.hash)(&whole.as_str().to_ascii_lowercase()))
        })
        .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor() -> Redactor {
        // A stand-in for a keyed hash: visibly derived from the UUID, without it.
        Redactor::uuids(|uuid| format!("h{}", uuid.len() + uuid.matches('a').count()))
    }

    #[test]
    fn every_uuid_is_replaced_in_any_case_and_any_context() {
        let r = redactor();
        let device = "0a1b2c3d-aaaa-4bbb-8ccc-0123456789ab";
        let upper = device.to_ascii_uppercase();
        for text in [
            format!("SELECT * FROM trace_contacts('{device}')"),
            format!("WHERE device_uuid IN ('{upper}',\"{device}\")"),
            device.to_string(),
            format!("x={device};"),
        ] {
            let redacted = r.apply(&text);
            assert!(!redacted.to_ascii_lowercase().contains(device), "{redacted}");
            assert!(redacted.contains("uuid:h"), "{redacted}");
        }
        // Both spellings of one device get one hash.
        let both = r.apply(&format!("{device} {upper}"));
        let hashes: Vec<&str> = both.split(' ').collect();
        assert_eq!(hashes[0], hashes[1]);
    }

    #[test]
    fn case_ids_and_other_text_are_kept() {
        let r = redactor();
        let case = "SET proxima.purpose = 'case:01890a5d-ac96-774b-bcce-b302099a8057'";
        assert_eq!(r.apply(case), case);
        assert_eq!(r.apply("SELECT 1 -- no uuid here"), "SELECT 1 -- no uuid here");
        // A hash already written stays (redacting twice changes nothing).
        assert_eq!(
            r.apply("uuid:0123456789abcdef0123456789abcdef"),
            "uuid:0123456789abcdef0123456789abcdef"
        );
        // A case prefix elsewhere does not protect a device.
        let device = "0a1b2c3d-aaaa-4bbb-8ccc-0123456789ab";
        let text = format!("'case:x', '{device}'");
        assert!(!r.apply(&text).contains(device));
        // A UUID run into other text, multi-byte or hex, is still found.
        for text in [format!("é{device}"), format!("ff{device}ff"), format!("_{device}_")] {
            assert!(!r.apply(&text).contains(device), "{text}");
        }
    }
}
