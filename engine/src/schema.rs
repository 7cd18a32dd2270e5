//! The SQL-visible schemas of Proxima's tables.
//!
//! Column names and types are a contract with users (README documents them).
//! A day-partitioned table's files hold every column but `day`, which comes
//! from the Hive-style folder name (`day=2026-11-29`).

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::NaiveDate;

/// Name of the partition column of every day-partitioned table.
pub const DAY: &str = "day";

/// The type of every timestamp column: microseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The type of the `day` partition column.
pub const DAY_TYPE: DataType = DataType::Date32;

/// Columns of `observations` as stored in its Parquet files (everything but `day`).
pub static OBSERVATIONS_FILE: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("observer", DataType::Utf8, false),
        Field::new("observed", DataType::Utf8, false),
        Field::new("observed_at", timestamp_type(), false),
        Field::new("duration_s", DataType::Int32, false),
        Field::new("rssi", DataType::Int16, true),
        Field::new("tx_power", DataType::Int16, true),
        Field::new("location", DataType::Utf8, true),
    ]))
});

/// Columns of `devices` (not partitioned).
pub static DEVICES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("device_uuid", DataType::Utf8, false),
        // Null for a phone that broadcasts only rotating identifiers or GAEN RPIs.
        Field::new("mac", DataType::Utf8, true),
        Field::new("registered_at", timestamp_type(), false),
    ]))
});

/// Columns of `observed_index` files: the observations' `(observed, observer, observed_at)`,
/// sorted by `observed` then time, so that "who heard these MACs" is a page-index lookup.
/// `observer` is the device UUID's 16 bytes (big-endian, as `uuid` orders them), not its
/// 36 characters: the column is random, so compression cannot do that for it.
pub static OBSERVED_INDEX: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("observed", DataType::Utf8, false),
        Field::new("observer", DataType::FixedSizeBinary(16), false),
        Field::new("observed_at", timestamp_type(), false),
    ]))
});

/// Columns of `cases`: one row per reported case and the alerts its trace issued.
pub static CASES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("case_id", DataType::Utf8, false),
        Field::new("device_uuid", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("reported_at", timestamp_type(), false),
        Field::new("reported_by", DataType::Utf8, false),
        Field::new("alerts_high", DataType::Int32, false),
        Field::new("alerts_medium", DataType::Int32, false),
        // The 4-character geohash cell of the device's last located sighting report at or
        // before the report (within 14 days), set by the flush that stores the case; null
        // if it has none (and in files written before cells were kept).
        Field::new("cell", DataType::Utf8, true),
        // Whether the device held an unexpired alert when the case was reported (null in
        // files written before this was kept).
        Field::new("after_alert", DataType::Boolean, true),
    ]))
});

/// Columns of `alerts`: one row per contact of a case, fetched by the contact's phone.
pub static ALERTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("device_uuid", DataType::Utf8, false),
        Field::new("case_id", DataType::Utf8, false),
        Field::new("priority", DataType::Utf8, false),
        Field::new("issued_at", timestamp_type(), false),
        Field::new("expires_at", timestamp_type(), false),
        Field::new("exposure_day", DAY_TYPE, false),
    ]))
});

/// Columns of `temperature_readings`.
pub static TEMPERATURE_READINGS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("device_uuid", DataType::Utf8, false),
        Field::new("measured_at", timestamp_type(), false),
        Field::new("celsius", DataType::Float64, false),
        Field::new("site", DataType::Utf8, false),
        Field::new("station", DataType::Utf8, false),
        // As `cases.cell`: the device's cell when measured, set by the flush.
        Field::new("cell", DataType::Utf8, true),
    ]))
});

/// Columns of `revocations` (not partitioned).
pub static REVOCATIONS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("device_uuid", DataType::Utf8, false),
        Field::new("revoked_at", timestamp_type(), false),
    ]))
});

/// Columns of `device_credentials` (not partitioned, not visible to SQL): the SHA-256 of a
/// device's upload token and its owner's Ed25519 public key (hex), which verifies the
/// device's revocation (null in files written before revocation was signed, whose
/// `secret_hash` column is no longer read).
pub static DEVICE_CREDENTIALS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("device_uuid", DataType::Utf8, false),
        Field::new("token_sha256", DataType::Utf8, false),
        Field::new("revocation_key", DataType::Utf8, true),
        Field::new("registered_at", timestamp_type(), false),
    ]))
});

/// Columns of `exposure_keys`: a GAEN temporary exposure key a device registered (32 hex
/// digits), when its first interval starts (its rolling start interval number × 10
/// minutes) and how many 10-minute intervals it covers.
pub static EXPOSURE_KEYS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("device_uuid", DataType::Utf8, false),
        Field::new("tek", DataType::Utf8, false),
        Field::new("valid_from", timestamp_type(), false),
        Field::new("rolling_period", DataType::Int32, false),
        Field::new("uploaded_at", timestamp_type(), false),
    ]))
});

/// Columns of the contact rollup's partial rows: per hour and 4-character geohash cell, the
/// sightings of a registered device by another with a location, those of 15 weighted minutes
/// or more (`exposure_risk`), and a sketch of the devices on either side (`hll_sketch`).
/// Rows of one key add up: their sums and merged sketches are the totals.
pub static CONTACT_PARTIALS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("hour", timestamp_type(), false),
        Field::new("cell", DataType::Utf8, false),
        Field::new("sightings", DataType::Int64, false),
        Field::new("close_contacts", DataType::Int64, false),
        Field::new("devices", DataType::Binary, false),
    ]))
});

/// Columns of the case rollup's partial rows: per hour and 4-character geohash cell (the
/// cell of the device concerned, `cases.cell`), new suspected and confirmed cases, the
/// confirmed ones reported by a device that held an alert, the alerts the cases issued by priority, and the
/// temperature readings, feverish or not. Rows of one key add up.
pub static CASE_PARTIALS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("hour", timestamp_type(), false),
        Field::new("cell", DataType::Utf8, false),
        Field::new("suspected", DataType::Int64, false),
        Field::new("confirmed", DataType::Int64, false),
        Field::new("confirmed_after_alert", DataType::Int64, false),
        Field::new("alerts_high", DataType::Int64, false),
        Field::new("alerts_medium", DataType::Int64, false),
        Field::new("readings", DataType::Int64, false),
        Field::new("fever_readings", DataType::Int64, false),
    ]))
});

/// Columns of `upload_keys` (not visible to SQL): an upload's idempotency key and its answer.
pub static UPLOAD_KEYS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("device_uuid", DataType::Utf8, false),
        Field::new("idempotency_key", DataType::Utf8, false),
        Field::new("accepted", DataType::Int64, false),
        Field::new("used_at", timestamp_type(), false),
    ]))
});

/// Appends the `day` partition column to a file schema: the schema SQL sees.
pub fn with_day(file_schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = file_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(DAY, DAY_TYPE, false));
    Arc::new(Schema::new(fields))
}

/// Days from 1970-01-01 to the day 0001-01-01 (chrono's day 1 of the common era).
const UNIX_EPOCH_FROM_CE: i32 = 719_163;

/// The date `days` days after 1970-01-01 (the `Date32` encoding of `day`).
pub fn date_from_epoch_days(days: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(days.saturating_add(UNIX_EPOCH_FROM_CE)).unwrap_or(NaiveDate::MAX)
}

/// Days since 1970-01-01 of a date (the `Date32` encoding of `day`).
pub fn epoch_days(date: NaiveDate) -> i32 {
    use chrono::Datelike;
    date.num_days_from_ce() - UNIX_EPOCH_FROM_CE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_days_round_trip() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 29).unwrap();
        assert_eq!(epoch_days(day), 20_786);
        assert_eq!(date_from_epoch_days(20_786), day);
        assert_eq!(date_from_epoch_days(0), NaiveDate::from_ymd_opt(1970, 1, 1).unwrap());
    }
}
