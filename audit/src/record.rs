//! One audit record: who did what, through which door, what the policy decided, and how it
//! ended.
//!
//! A record is one line of JSON in the log, and the exact bytes of that line (without its
//! newline) are the Merkle leaf, so the verifier hashes what is on disk and never depends
//! on how a record would be re-encoded. An access that runs something is two records: the
//! **intent**, made durable before anything runs (if it cannot be, the request is refused),
//! and its **done** record, which names the intent's sequence number and carries the rows,
//! bytes, duration and outcome. An access that runs nothing (a login, a refused request) is
//! one **decision** record.

use serde::{Deserialize, Serialize};

/// The most SQL text a record keeps; longer statements are cut at a character boundary
/// and marked, so one huge statement cannot bloat the log.
pub const MAX_SQL_BYTES: usize = 4096;
/// The most of one parameter value, and of an error message, a record keeps.
pub const MAX_VALUE_BYTES: usize = 1024;
/// The most parameter rows a record lists; the rest are counted.
pub const MAX_PARAM_ROWS: usize = 32;

/// Which part of an access a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Written and synced before the access runs.
    Intent,
    /// Written when the access has ended, however it ended; names its intent.
    Done,
    /// An access that ran nothing: a login, or a request refused before it ran.
    Decision,
}

/// What the policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The access was allowed.
    Allow,
    /// The access was refused.
    Deny,
}

/// One audit record. The log assigns `seq` and `time`; callers fill in the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log, from 0: also the leaf index in the Merkle tree.
    pub seq: u64,
    /// When the log wrote the record, RFC 3339 in UTC.
    pub time: String,
    /// Intent, done or decision.
    pub phase: Phase,
    /// For a `done` record, the `seq` of its intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<u64>,
    /// Who: a user name, `device:<uuid>`, `local:<OS user>`, or the name a failed login gave.
    pub principal: String,
    /// The OpenID Connect issuer that vouched for `principal` (then the token's subject);
    /// absent for users of the users file, devices and local commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The principal's role (`tracer`, `analyst`, …), empty when nobody was authenticated.
    pub role: String,
    /// The client's address, when a network client made the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The login session the access belongs to (never the bearer token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The door and the call: `flight:DoGetStatement`, `rest:POST /v1/cases`, `cli:sql`.
    pub action: String,
    /// The statement, at most [`MAX_SQL_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// Bound parameter values, one list per parameter row, as SQL literals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Vec<String>>,
    /// The tables and functions the access touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
    /// What the policy decided.
    pub decision: Decision,
    /// The rule that decided, in a few words.
    pub rule: String,
    /// The declared purpose (`case:<id>`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Rows returned or written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Bytes returned or received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// How long the access took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Record {
    /// A record of `phase` by `principal` (of `role`) through `action`, decided by `rule`;
    /// every optional field empty.
    pub fn new(
        phase: Phase,
        principal: impl Into<String>,
        role: impl Into<String>,
        action: impl Into<String>,
        decision: Decision,
        rule: impl Into<String>,
    ) -> Self {
        Self {
            seq: 0,
            time: String::new(),
            phase,
            intent: None,
            principal: principal.into(),
            issuer: None,
            role: role.into(),
            client: None,
            session: None,
            action: action.into(),
            sql: None,
            params: Vec::new(),
            objects: Vec::new(),
            decision,
            rule: rule.into(),
            purpose: None,
            rows: None,
            bytes: None,
            duration_ms: None,
            error: None,
        }
    }

    /// Sets the statement, cut to [`MAX_SQL_BYTES`].
    pub fn with_sql(mut self, sql: &str) -> Self {
        self.sql = Some(cap_sql(sql));
        self
    }

    /// The `done` record of this intent (whose `seq` the log gave back): same principal,
    /// action and decision, no statement.
    pub fn done(&self, intent_seq: u64) -> Self {
        let mut done = Record::new(
            Phase::Done,
            self.principal.clone(),
            self.role.clone(),
            self.action.clone(),
            self.decision,
            self.rule.clone(),
        );
        done.intent = Some(intent_seq);
        done.client = self.client.clone();
        done.session = self.session.clone();
        done.purpose = self.purpose.clone();
        done
    }
}

/// `sql` cut to at most [`MAX_SQL_BYTES`] at a character boundary, marked when cut.
pub fn cap_sql(sql: &str) -> String {
    cap(sql, MAX_SQL_BYTES)
}

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
fn cap(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    const MARK: &str = "… [cut]";
    let mut end = max - MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &text[..end])
}

impl Record {
    /// Bounds every field a caller fills from outside (statement, parameters, error), so
    /// that no request can make a record, or the log, as large as it likes. The log applies
    /// it to every record it writes.
    pub fn capped(mut self) -> Self {
        if let Some(sql) = &self.sql {
            self.sql = Some(cap(sql, MAX_SQL_BYTES));
        }
        if let Some(error) = &self.error {
            self.error = Some(cap(error, MAX_VALUE_BYTES));
        }
        if self.params.len() > MAX_PARAM_ROWS {
            let more = self.params.len() - MAX_PARAM_ROWS;
            self.params.truncate(MAX_PARAM_ROWS);
            self.params.push(vec![format!("… and {more} more parameter rows")]);
        }
        for row in &mut self.params {
            if row.len() > MAX_PARAM_ROWS {
                let more = row.len() - MAX_PARAM_ROWS;
                row.truncate(MAX_PARAM_ROWS);
                row.push(format!("… and {more} more values"));
            }
            for value in row.iter_mut() {
                *value = cap(value, MAX_VALUE_BYTES);
            }
        }
        for object in &mut self.objects {
            *object = cap(object, MAX_VALUE_BYTES);
        }
        self.principal = cap(&self.principal, MAX_VALUE_BYTES);
        self
    }
}

impl Record {
    /// The record with `redactor` applied to every field a caller fills with free text: the
    /// statement, parameter values, error and principal (a refused login's claimed name is
    /// whatever the client sent). The purpose keeps its case id.
    pub fn redacted(mut self, redactor: &crate::Redactor) -> Self {
        self.sql = self.sql.map(|sql| redactor.apply(&sql));
        self.error = self.error.map(|error| redactor.apply(&error));
        for value in self.params.iter_mut().flatten() {
            *value = redactor.apply(value);
        }
        self.principal = redactor.apply(&self.principal);
        self.purpose = self.purpose.map(|purpose| redactor.apply(&purpose));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_sql_is_cut_at_a_character_boundary() {
        let sql = "é".repeat(MAX_SQL_BYTES);
        let cut = cap_sql(&sql);
        assert!(cut.len() <= MAX_SQL_BYTES, "{}", cut.len());
        assert!(cut.ends_with("… [cut]"));
        assert_eq!(cap_sql("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn records_are_bounded_whatever_the_caller_gives() {
        let mut record = Record::new(Phase::Intent, "a", "tracer", "flight:DoGet", Decision::Allow, "r");
        record.params = vec![vec!["x".repeat(2_000); 40]; 100];
        record.error = Some("e".repeat(100_000));
        record.sql = Some("s".repeat(100_000));
        let line = serde_json::to_string(&record.capped()).unwrap();
        // At most 32 rows of 33 values of 1 KiB, and the capped statement and error.
        assert!(line.len() < 33 * 33 * 1024 + 16_384, "{}", line.len());
        let record: Record = serde_json::from_str(&line).unwrap();
        assert_eq!(record.params.len(), MAX_PARAM_ROWS + 1);
        assert!(record.params[MAX_PARAM_ROWS][0].contains("68 more parameter rows"));
        assert!(record.error.unwrap().len() <= MAX_VALUE_BYTES);
    }

    #[test]
    fn a_record_survives_json() {
        let mut record = Record::new(
            Phase::Intent,
            "alice",
            "tracer",
            "flight:DoGet",
            Decision::Allow,
            "tracer",
        )
        .with_sql("SELECT $1");
        record.params = vec![vec!["'x'".into()]];
        let line = serde_json::to_string(&record).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), record);
        let done = record.done(7);
        assert_eq!(done.intent, Some(7));
        assert_eq!(done.sql, None);
    }
}
