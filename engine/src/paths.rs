//! Paths are types: tables, day partitions and data files.
//!
//! Writers, readers and retention all build and parse locations here, so they
//! cannot disagree about the layout:
//!
//! ```text
//! <root>/observations/day=2026-11-29/part-<uuid v7>.parquet
//! <root>/devices/part-<uuid v7>.parquet
//! <root>/observed_index/day=2026-11-29/part-<uuid v7>.parquet    (derived, written with observations)
//! <root>/{cases,alerts,temperature_readings}/day=…/part-<uuid v7>.parquet
//! <root>/{revocations,device_credentials}/part-<uuid v7>.parquet
//! <root>/exposure_keys/day=…/part-<uuid v7>.parquet               (GAEN keys, by the day they start)
//! <root>/contact_partials/day=…/part-<uuid v7>.parquet            (derived: the contact rollup's partial rows)
//! <root>/case_partials/day=…/part-<uuid v7>.parquet               (derived: the case rollup's partial rows)
//! <root>/_staging/<transaction>/...      (invisible to SQL; see proxima-ingest)
//! <root>/_keys/<table>[/<day>].json      (each table-day's key-encryption key, wrapped; see crate::encryption)
//! ```
//!
//! File names carry a fresh UUID v7, so several writers sharing one store
//! never overwrite each other's files.

use std::fmt;

use arrow::datatypes::SchemaRef;
use chrono::NaiveDate;
use object_store::path::Path;

use crate::schema;

/// A table of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Bluetooth sightings reported by devices, partitioned by day.
    Observations,
    /// Registered devices and their MACs.
    Devices,
    /// Derived: each observation file's `(observed, observer, observed_at)` sorted by the
    /// identifier heard, written in the same transaction as the observations it copies, for
    /// the tracing lookup "who heard this device" (see `proxima_engine::index`).
    ObservedIndex,
    /// Reported cases (suspected or confirmed), partitioned by the day reported.
    Cases,
    /// Exposure alerts issued to contacts of cases, partitioned by the day issued.
    Alerts,
    /// Body temperatures measured by stations, partitioned by the day measured.
    TemperatureReadings,
    /// Revoked devices: excluded from tracing and alerts (their history stays until erased).
    Revocations,
    /// Hashes of each device's upload token and revocation secret. Not visible to SQL.
    DeviceCredentials,
    /// Idempotency keys of uploads, so that a retry after a crash is not stored twice.
    /// Partitioned by the day used; not visible to SQL.
    UploadKeys,
    /// GAEN temporary exposure keys phones registered, partitioned by the day each starts:
    /// what links a rolling proximity identifier heard to the device that broadcast it.
    ExposureKeys,
    /// Derived: the contact rollup's partial rows (per hour and 4-character geohash cell:
    /// sightings, close contacts, a sketch of the devices), partitioned by the day of the
    /// hour; rows of one key add up. Written beside the rows they are derived from; read by
    /// the analysts' `contact_rollup` (see `proxima_storage::rollup`).
    ContactPartials,
    /// Derived: the case rollup's partial rows (per hour and cell: cases by status, alerts
    /// they issued, temperature readings), partitioned by the day of the hour; rows of one
    /// key add up. Read by the analysts' `case_rollup` (see `proxima_storage::rollup`).
    CasePartials,
}

impl Table {
    /// Every table, in catalog order.
    pub const ALL: [Table; 12] = [
        Table::Observations,
        Table::Devices,
        Table::ObservedIndex,
        Table::Cases,
        Table::Alerts,
        Table::TemperatureReadings,
        Table::Revocations,
        Table::DeviceCredentials,
        Table::UploadKeys,
        Table::ExposureKeys,
        Table::ContactPartials,
        Table::CasePartials,
    ];

    /// The SQL name of the table, which is also its folder name.
    pub fn name(self) -> &'static str {
        match self {
            Table::Observations => "observations",
            Table::Devices => "devices",
            Table::ObservedIndex => "observed_index",
            Table::Cases => "cases",
            Table::Alerts => "alerts",
            Table::TemperatureReadings => "temperature_readings",
            Table::Revocations => "revocations",
            Table::DeviceCredentials => "device_credentials",
            Table::UploadKeys => "upload_keys",
            Table::ExposureKeys => "exposure_keys",
            Table::ContactPartials => "contact_partials",
            Table::CasePartials => "case_partials",
        }
    }

    /// The table whose folder name is `name`.
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether SQL sessions see the table (credential hashes are for the REST service only).
    pub fn is_sql_visible(self) -> bool {
        !matches!(self, Table::DeviceCredentials | Table::UploadKeys)
    }

    /// Whether the table is Hive-partitioned by `day` (and so ages out by retention).
    pub fn is_day_partitioned(self) -> bool {
        self.time_column().is_some()
    }

    /// For a day-partitioned table, the timestamp column whose UTC date is `day`.
    pub fn time_column(self) -> Option<&'static str> {
        match self {
            Table::Observations => Some("observed_at"),
            Table::ObservedIndex => Some("observed_at"),
            Table::Cases => Some("reported_at"),
            Table::Alerts => Some("issued_at"),
            Table::TemperatureReadings => Some("measured_at"),
            Table::UploadKeys => Some("used_at"),
            Table::ExposureKeys => Some("valid_from"),
            Table::ContactPartials | Table::CasePartials => Some("hour"),
            Table::Devices | Table::Revocations | Table::DeviceCredentials => None,
        }
    }

    /// Columns looked up by equality (a device, a MAC): written with bloom filters.
    pub fn lookup_columns(self) -> &'static [&'static str] {
        match self {
            Table::Observations => &["observer", "observed"],
            Table::Devices => &["device_uuid", "mac"],
            // Sorted by `observed` with a page index: lookups need no bloom filter.
            Table::ObservedIndex => &["observed"],
            Table::ContactPartials | Table::CasePartials => &["cell"],
            Table::Alerts
            | Table::Cases
            | Table::TemperatureReadings
            | Table::Revocations
            | Table::DeviceCredentials
            | Table::UploadKeys
            | Table::ExposureKeys => &["device_uuid"],
        }
    }

    /// Columns stored in the table's files (without the `day` partition column).
    pub fn file_schema(self) -> SchemaRef {
        match self {
            Table::Observations => schema::OBSERVATIONS_FILE.clone(),
            Table::Devices => schema::DEVICES.clone(),
            Table::ObservedIndex => schema::OBSERVED_INDEX.clone(),
            Table::Cases => schema::CASES.clone(),
            Table::Alerts => schema::ALERTS.clone(),
            Table::TemperatureReadings => schema::TEMPERATURE_READINGS.clone(),
            Table::Revocations => schema::REVOCATIONS.clone(),
            Table::DeviceCredentials => schema::DEVICE_CREDENTIALS.clone(),
            Table::UploadKeys => schema::UPLOAD_KEYS.clone(),
            Table::ExposureKeys => schema::EXPOSURE_KEYS.clone(),
            Table::ContactPartials => schema::CONTACT_PARTIALS.clone(),
            Table::CasePartials => schema::CASE_PARTIALS.clone(),
        }
    }

    /// Columns as SQL sees them.
    pub fn sql_schema(self) -> SchemaRef {
        if self.is_day_partitioned() {
            schema::with_day(&self.file_schema())
        } else {
            self.file_schema()
        }
    }

    /// The table's folder under the store root.
    pub fn prefix(self, root: &Path) -> Path {
        root.clone().join(self.name())
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One day folder of a day-partitioned table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DayPartition {
    /// The table.
    pub table: Table,
    /// The UTC date.
    pub day: NaiveDate,
}

impl DayPartition {
    /// The folder name of a day: `day=YYYY-MM-DD`.
    pub fn folder_name(day: NaiveDate) -> String {
        format!("{}={}", schema::DAY, day.format("%Y-%m-%d"))
    }

    /// The folder of this partition under the store root.
    pub fn prefix(&self, root: &Path) -> Path {
        self.table.prefix(root).join(Self::folder_name(self.day))
    }

    /// Parses a folder name `day=YYYY-MM-DD`.
    pub fn parse_folder_name(table: Table, name: &str) -> Option<Self> {
        let date = name.strip_prefix("day=")?;
        let day = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
        // Refuse non-canonical spellings such as `day=2026-1-5`.
        (Self::folder_name(day) == name).then_some(Self { table, day })
    }
}

/// Where a new data file of `table` goes: in its day folder when `day` is given.
pub fn new_data_file(root: &Path, table: Table, day: Option<NaiveDate>) -> Path {
    let file = format!("part-{}.parquet", uuid::Uuid::now_v7());
    match day {
        Some(day) => DayPartition { table, day }.prefix(root).join(file),
        None => table.prefix(root).join(file),
    }
}

/// The table and day (for day-partitioned tables) a data file's location puts it in:
/// `<root>/<table>/day=YYYY-MM-DD/<file>` or `<root>/<table>/<file>`; `None` for any
/// location that is not a data file's place in the store.
pub fn place_of(root: &Path, location: &Path) -> Option<(Table, Option<NaiveDate>)> {
    let parts: Vec<_> = location.prefix_match(root)?.collect();
    match parts.as_slice() {
        [table, _file] => {
            let table = Table::from_name(table.as_ref()).filter(|t| !t.is_day_partitioned())?;
            Some((table, None))
        }
        [table, day, _file] => {
            let table = Table::from_name(table.as_ref()).filter(|t| t.is_day_partitioned())?;
            let day = DayPartition::parse_folder_name(table, day.as_ref())?;
            Some((table, Some(day.day)))
        }
        _ => None,
    }
}

/// When a data file named by [`new_data_file`] was named, in Unix seconds (its UUID v7);
/// `None` for any other name.
pub fn data_file_written_at(location: &Path) -> Option<u64> {
    let id = location.filename()?.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let (secs, _) = uuid::Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    Some(secs)
}

/// The folder that holds staged files of unfinished writes; nothing under it is visible to SQL.
pub fn staging_prefix(root: &Path) -> Path {
    root.clone().join("_staging")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_folder_round_trip() {
        let root = Path::from("data/store");
        let day = NaiveDate::from_ymd_opt(2026, 11, 29).unwrap();
        let partition = DayPartition {
            table: Table::Observations,
            day,
        };
        assert_eq!(
            partition.prefix(&root).as_ref(),
            "data/store/observations/day=2026-11-29"
        );
        assert_eq!(
            DayPartition::parse_folder_name(Table::Observations, "day=2026-11-29"),
            Some(partition)
        );
        assert_eq!(
            DayPartition::parse_folder_name(Table::Observations, "day=2026-1-5"),
            None
        );
        assert_eq!(
            DayPartition::parse_folder_name(Table::Observations, "date=2026-11-29"),
            None
        );
    }

    #[test]
    fn data_files_are_unique() {
        let root = Path::from("r");
        let a = new_data_file(&root, Table::Devices, None);
        let b = new_data_file(&root, Table::Devices, None);
        assert_ne!(a, b);
        assert!(a.as_ref().starts_with("r/devices/part-"));
        let now = chrono::Utc::now().timestamp() as u64;
        let written = data_file_written_at(&a).expect("a data file name");
        assert!(written.abs_diff(now) <= 1, "{written} vs {now}");
        assert_eq!(data_file_written_at(&Path::from("r/devices/other.parquet")), None);
        assert_eq!(data_file_written_at(&Path::from("r/devices/part-x.parquet")), None);
    }

    #[test]
    fn a_data_file_location_names_its_table_and_day() {
        let root = Path::from("bucket/prefix");
        let day = NaiveDate::from_ymd_opt(2026, 11, 29).unwrap();
        for (table, day) in [(Table::Observations, Some(day)), (Table::Devices, None)] {
            let file = new_data_file(&root, table, day);
            assert_eq!(place_of(&root, &file), Some((table, day)));
            // The same relative path under another root is not this store's.
            assert_eq!(place_of(&Path::from("other"), &file), None);
        }
        for stray in [
            "bucket/prefix/observations/part-x.parquet",
            "bucket/prefix/devices/day=2026-11-29/part-x.parquet",
            "bucket/prefix/observations/day=2026-1-5/part-x.parquet",
            "bucket/prefix/nothing/part-x.parquet",
            "bucket/prefix/_staging/t/0.parquet",
            "bucket/prefix/observations/day=2026-11-29/deeper/part-x.parquet",
        ] {
            assert_eq!(place_of(&root, &Path::from(stray)), None, "{stray}");
        }
    }
}
