//! Rollups for public-health analysts, kept current from the rows each flush writes rather
//! than by rescanning days (issue 16).
//!
//! [`ContactPartials`] folds sightings, each resolved to the registered device it heard,
//! into partial rows ([`proxima_engine::schema::CONTACT_PARTIALS`]): per hour and
//! 4-character geohash cell, the sightings, the close ones (15 weighted minutes or more by
//! `exposure_risk`) and a sketch of the devices on either side. Partial rows of one key add
//! up (sums, merged sketches), so the rollup (`contact_rollup`, `sql/views/`) is their sum.
//!
//! The flusher adds, in each flush's transaction, the encounters that flush's commit
//! creates ([`ContactPartials::add_buffer`]): the flush's observations resolved with the
//! store's and the flush's own devices and GAEN keys, and the stored observations that only
//! the flush's devices and keys resolve. Every pair of a sighting and the device it hears
//! is so counted once, by whichever of the two was stored last, provided no other writer
//! commits between a flush's resolution and its commit: a [`RollupWriter`] (a lock in the
//! process, the store's `rollup` lease among processes) makes it so.
//!
//! [`CasePartials`] counts, per hour and cell, the cases (by status, and the confirmed ones
//! reported after an alert), the alerts they issued and the temperature readings (and fevers) a
//! flush stores, once [`place_in_cells`] has written each one's cell into its row: the cell
//! its device last reported a sighting from. A count of rows, each in its own day: no
//! resolution against the store and nothing to redo but after an erasure of readings.
//!
//! What cannot be added is recomputed from the raw rows for the days concerned
//! ([`rebuild_days`], the SQL reference [`Rollup::reference_sql`]): after an erasure, for
//! the first day retention keeps ([`after_retention`]), and for what imports and the
//! generator write. Compaction merges a day's partial rows per hour and cell.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array as _, ArrayRef, AsArray as _, BinaryArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{Float64Type, Int32Type, TimestampMicrosecondType};
use chrono::{NaiveDate, Utc};
use object_store::ObjectStoreExt as _;
pub use proxima_engine::index::Sighting;
use proxima_engine::index::{IndexReader, Pending};
use proxima_engine::{DayPartition, SessionFactory, Store, Table, schema};
use proxima_udfs::ProximaOptions;
use proxima_udfs::risk::weighted_minutes;
use proxima_udfs::sketch::Sketcher;
use tracing::info;

use crate::error::Result;
use crate::layout::sort_for_storage;
use crate::lease::{self, Lease, ROLLUP_LEASE_TTL, Work};
use crate::wal::Buffer;
use crate::writer::PartitionWriter;

/// Characters of a geohash that make a rollup cell (about 39 × 20 km).
pub const CELL_CHARS: usize = 4;

/// Weighted minutes (`exposure_risk`) from which a sighting is a close contact.
pub const CLOSE_CONTACT_MINUTES: f64 = 15.0;

/// A temperature reading from which the case rollup counts a fever (°C): a fixed public
/// health definition, whatever `serve --fever-threshold` opens suspected cases at.
pub const FEVER_CELSIUS: f64 = 38.0;

/// How far back a device's last located sighting report places a case or a reading in a
/// cell (µs): 14 days.
pub const CELL_LOOKBACK_MICROS: i64 = 14 * 24 * MICROS_PER_HOUR;

/// The writers that add to the contact rollup, one at a time in this process (the store's
/// lease does it among processes; this keeps them from polling it against each other).
static WRITE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a rollup writer waits for another process's: past the lease's expiry, when a
/// holder that died has lost it.
const ROLLUP_WAIT: Duration = Duration::from_secs(ROLLUP_LEASE_TTL.as_secs() + 30);

/// The right to add to the contact rollup: held from resolving a write's sightings against
/// the store to its commit. A flush resolves against the store as it is and must commit
/// before anything else that adds encounters does, or the pair of a row of one and a
/// device of the other would be counted by neither: one such writer at a time, in this
/// process (a lock) and among the processes sharing the store (the `rollup` lease).
#[derive(Debug)]
pub struct RollupWriter {
    _in_process: tokio::sync::MutexGuard<'static, ()>,
    lease: Lease,
}

impl RollupWriter {
    /// Waits for the right (an error if another process has held it past its expiry
    /// and [`ROLLUP_WAIT`]: its write is stuck, and this one is retried later).
    pub async fn acquire(store: &Store) -> Result<Self> {
        let in_process = WRITE_LOCK.lock().await;
        let holder = lease::this_process();
        let started = std::time::Instant::now();
        loop {
            if let Some(lease) = Lease::acquire_for(Work::Rollup, store, &holder, Utc::now()).await? {
                return Ok(Self {
                    _in_process: in_process,
                    lease,
                });
            }
            if started.elapsed() > ROLLUP_WAIT {
                return Err(crate::Error::Invalid(format!(
                    "another process has held the store's rollup lease for over {} s; this write is retried later",
                    ROLLUP_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Checks, just before the commit, that the lease is still this process's (a write
    /// that outlived it must not commit: another writer may have resolved without it).
    pub async fn confirm(&self) -> Result<()> {
        self.lease.renew(Utc::now()).await
    }

    /// Gives the right up.
    pub async fn release(self) -> Result<()> {
        self.lease.release().await
    }
}

/// A rollup the flushes keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollup {
    /// `contact_partials`, from the encounters of located sightings.
    Contacts,
    /// `case_partials`, from cases and temperature readings placed in a cell.
    Cases,
}

impl Rollup {
    /// Both rollups.
    pub const ALL: [Rollup; 2] = [Rollup::Contacts, Rollup::Cases];

    /// The table of its partial rows.
    pub fn table(self) -> Table {
        match self {
            Rollup::Contacts => Table::ContactPartials,
            Rollup::Cases => Table::CasePartials,
        }
    }

    /// The raw tables its partial rows are computed from.
    fn sources(self) -> &'static [Table] {
        match self {
            Rollup::Contacts => &[Table::Observations],
            Rollup::Cases => &[Table::Cases, Table::TemperatureReadings],
        }
    }

    /// The rollup's partial rows computed from the raw tables, of `day` only or of every
    /// day: the reference its incremental maintenance must equal, and what a rebuild
    /// writes. A row per hour and cell.
    pub fn reference_sql(self, day: Option<NaiveDate>) -> String {
        // The `day` partition column of the tables read: every other folder is pruned.
        let on_day = |table: &str| match day {
            Some(day) => format!(" AND {table}.day = DATE '{}'", day.format("%Y-%m-%d")),
            None => String::new(),
        };
        match self {
            Rollup::Contacts => format!(
                "SELECT date_trunc('hour', at) AS hour, substr(location, 1, {CELL_CHARS}) AS cell, \
                 count(*) FILTER (WHERE a_heard) AS sightings, \
                 count(*) FILTER (WHERE a_heard AND exposure_risk(duration_s, rssi, tx_power) >= {CLOSE_CONTACT_MINUTES}) AS close_contacts, \
                 hll_sketch(a) AS devices \
                 FROM encounters WHERE location IS NOT NULL{} GROUP BY 1, 2",
                on_day("encounters")
            ),
            Rollup::Cases => format!(
                "SELECT hour, cell, sum(suspected) AS suspected, sum(confirmed) AS confirmed, \
                 sum(confirmed_after_alert) AS confirmed_after_alert, sum(alerts_high) AS alerts_high, \
                 sum(alerts_medium) AS alerts_medium, sum(readings) AS readings, \
                 sum(fever_readings) AS fever_readings FROM ( \
                 SELECT date_trunc('hour', reported_at) AS hour, cell, \
                 CASE WHEN status = 'suspected' THEN 1 ELSE 0 END AS suspected, \
                 CASE WHEN status = 'confirmed' THEN 1 ELSE 0 END AS confirmed, \
                 CASE WHEN status = 'confirmed' AND after_alert THEN 1 ELSE 0 END AS confirmed_after_alert, \
                 CAST(alerts_high AS BIGINT) AS alerts_high, CAST(alerts_medium AS BIGINT) AS alerts_medium, \
                 0 AS readings, 0 AS fever_readings \
                 FROM cases WHERE cell IS NOT NULL{} \
                 UNION ALL \
                 SELECT date_trunc('hour', measured_at), cell, 0, 0, 0, 0, 0, 1, \
                 CASE WHEN celsius >= {FEVER_CELSIUS:.1} THEN 1 ELSE 0 END \
                 FROM temperature_readings WHERE cell IS NOT NULL{}) \
                 GROUP BY hour, cell",
                on_day("cases"),
                on_day("temperature_readings")
            ),
        }
    }
}

/// Every day `rollup` may have rows for: the days of its raw tables, and those with
/// partial rows (which a rebuild deletes if no raw row is left).
pub async fn rollup_days(store: &proxima_engine::Store, rollup: Rollup) -> Result<Vec<NaiveDate>> {
    let mut days = Vec::new();
    for &table in rollup.sources().iter().chain([rollup.table()].iter()) {
        days.extend(store.list_days(table).await?.into_iter().map(|p| p.day));
    }
    days.sort_unstable();
    days.dedup();
    Ok(days)
}

/// After retention deleted the days before the last `keep_days` to `today`: the first kept
/// day's partial rows are rebuilt, since sightings early that day may have been encounters
/// only through GAEN keys of the day deleted (an RPI counts two hours past its interval).
pub async fn after_retention(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    today: NaiveDate,
    keep_days: u32,
) -> Result<u64> {
    let oldest = crate::retention::oldest_kept_day(today, keep_days);
    // The case rollup counts rows, each in its own day: nothing to redo.
    rebuild_days(factory, writer, Rollup::Contacts, &[oldest]).await
}

/// Recomputes `rollup`'s partial rows of each of `days` from the raw tables (the
/// reference, [`Rollup::reference_sql`]) and replaces the day's partial files with them:
/// after what cannot be subtracted (an erasure, retention that took a day's GAEN keys), and
/// after writers that do not keep the rollups themselves (imports, the generator). Returns
/// the partial rows written.
pub async fn rebuild_days(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    rollup: Rollup,
    days: &[NaiveDate],
) -> Result<u64> {
    let store = factory.store();
    let mut written = 0;
    // A day at a time: a flush waits for one day's rebuild, not for all of them.
    for &day in days {
        let right = RollupWriter::acquire(store).await?;
        let done = rebuild_day(factory, writer, rollup, day, &right).await;
        right.release().await?;
        written += done?;
    }
    Ok(written)
}

/// [`rebuild_days`] of one day, with the right to write.
async fn rebuild_day(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    rollup: Rollup,
    day: NaiveDate,
    right: &RollupWriter,
) -> Result<u64> {
    let store = factory.store();
    let table = rollup.table();
    let ctx = factory.session().await?;
    let prefix = DayPartition { table, day }.prefix(store.root());
    let old = crate::compaction::live_in(store, &prefix).await?;
    let batches = ctx.sql(&rollup.reference_sql(Some(day))).await?.collect().await?;
    let schema = table.file_schema();
    let mut rows = Vec::new();
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let batch = RecordBatch::try_new(Arc::clone(&schema), batch.columns().to_vec())?;
        rows.push(sort_for_storage(table, &batch)?);
    }
    let count: usize = rows.iter().map(RecordBatch::num_rows).sum();
    let mut transaction = writer.begin();
    let stream = futures::stream::iter(rows.into_iter().map(Ok::<_, crate::Error>));
    if let Err(e) = transaction
        .write_stream(table, Some(day), count, Vec::new(), stream)
        .await
    {
        transaction.abort().await?;
        return Err(e);
    }
    if let Err(e) = right.confirm().await {
        transaction.abort().await?;
        return Err(e);
    }
    if old.is_empty() {
        if count > 0 {
            transaction.commit().await?;
        } else {
            transaction.abort().await?;
        }
    } else {
        let replaces = old.iter().map(|f| f.location.to_string()).collect();
        if crate::compaction::publish_replacing(store, transaction, &prefix, replaces)
            .await?
            .is_none()
        {
            // No raw row left that day: nothing replaces the old partials.
            for file in &old {
                store.object_store().delete(&file.location).await?;
            }
        }
    }
    info!(day = %day, table = %table, rows = count, "rebuilt a day's partial rows of a rollup");
    Ok(count as u64)
}

const MICROS_PER_HOUR: i64 = 3_600_000_000;

#[derive(Debug, Default)]
struct Partial {
    sightings: i64,
    close_contacts: i64,
    devices: Sketcher,
}

/// Partial rows of the contact rollup, folded sighting by sighting.
#[derive(Debug)]
pub struct ContactPartials {
    options: ProximaOptions,
    by_key: BTreeMap<(i64, String), Partial>,
}

impl ContactPartials {
    /// Empty partials; close contacts weighed with `options`' risk settings.
    pub fn new(options: ProximaOptions) -> Self {
        Self {
            options,
            by_key: BTreeMap::new(),
        }
    }

    /// Folds one sighting in (nothing, if it has no location).
    pub fn add(&mut self, sighting: Sighting<'_>) {
        let Some(location) = sighting.location else { return };
        let hour = sighting.at - sighting.at.rem_euclid(MICROS_PER_HOUR);
        let cell: String = location.chars().take(CELL_CHARS).collect();
        let partial = self.by_key.entry((hour, cell)).or_default();
        partial.sightings += 1;
        let minutes = weighted_minutes(
            &self.options,
            Some(sighting.duration_s),
            sighting.rssi,
            sighting.tx_power,
        );
        if minutes.is_some_and(|m| m >= CLOSE_CONTACT_MINUTES) {
            partial.close_contacts += 1;
        }
        partial.devices.add(sighting.observer);
        partial.devices.add(sighting.heard);
    }

    /// Folds in the encounters that storing `buffer` creates: its observations' sightings of
    /// devices the store or the buffer registered, and the stored sightings that only the
    /// buffer's devices and GAEN keys resolve. Exact only if no other writer commits
    /// between this call and the commit of `buffer` (see [`crate::flush`]).
    pub async fn add_buffer(&mut self, index: &IndexReader, buffer: &Buffer) -> Result<()> {
        let mut pending = Pending::default();
        for batch in buffer.tables.get(&Table::Devices).into_iter().flatten() {
            pending.add_devices(batch)?;
        }
        for batch in buffer.tables.get(&Table::ExposureKeys).into_iter().flatten() {
            pending.add_exposure_keys(batch)?;
        }
        let started = std::time::Instant::now();
        if let Some(observations) = buffer.tables.get(&Table::Observations) {
            // Sightings without a location are in no cell: not even resolved (a bulk
            // upload without locations costs the rollup nothing).
            let mut located = Vec::with_capacity(observations.len());
            for batch in observations {
                let location = batch.column(batch.schema().index_of("location")?);
                if location.null_count() == location.len() {
                    continue;
                }
                let keep = arrow::compute::is_not_null(location)?;
                located.push(arrow::compute::filter_record_batch(batch, &keep)?);
            }
            index.resolve_new(&located, &pending, |s| self.add(s)).await?;
        }
        let resolved_new = started.elapsed();
        index.resolve_stored(&pending, |s| self.add(s)).await?;
        tracing::debug!(
            new_ms = resolved_new.as_millis() as u64,
            stored_ms = (started.elapsed() - resolved_new).as_millis() as u64,
            "rollup resolution"
        );
        Ok(())
    }

    /// Whether no sighting was folded in.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The partial rows, one per hour and cell, in that order.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let (hours, cells) = key_columns(&self.by_key);
        let sightings = Int64Array::from_iter_values(self.by_key.values().map(|p| p.sightings));
        let close = Int64Array::from_iter_values(self.by_key.values().map(|p| p.close_contacts));
        let devices = BinaryArray::from_iter_values(self.by_key.values().map(|p| p.devices.to_bytes()));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(hours),
            Arc::new(cells),
            Arc::new(sightings),
            Arc::new(close),
            Arc::new(devices),
        ];
        Ok(RecordBatch::try_new(schema::CONTACT_PARTIALS.clone(), columns)?)
    }
}

/// Places the cases and temperature readings of `buffer` that have no cell yet in their
/// device's cell: the first [`CELL_CHARS`] characters of the location of the device's last
/// located sighting report at or before the case or reading (within
/// [`CELL_LOOKBACK_MICROS`]), among the buffer's observations and the store's. Done by the
/// flush that stores them, so what a rollup counts is a column of the raw rows.
pub async fn place_in_cells(index: &IndexReader, buffer: &mut Buffer) -> Result<()> {
    const EVENTS: [(Table, &str); 2] = [
        (Table::Cases, "reported_at"),
        (Table::TemperatureReadings, "measured_at"),
    ];
    // Every row without a cell, of every batch: one lookup for the whole flush (REST logs a
    // batch per case or reading).
    let mut unplaced: Vec<(Table, usize, usize)> = Vec::new();
    let mut wanted: Vec<(String, i64)> = Vec::new();
    for (table, time) in EVENTS {
        for (b, batch) in buffer.tables.get(&table).into_iter().flatten().enumerate() {
            let cells = text(batch, "cell")?;
            if cells.null_count() == 0 {
                continue;
            }
            let devices = text(batch, "device_uuid")?;
            let times = batch
                .column_by_name(time)
                .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
                .ok_or_else(|| missing(time))?;
            for i in (0..batch.num_rows()).filter(|&i| cells.is_null(i)) {
                unplaced.push((table, b, i));
                wanted.push((devices.value(i).to_string(), times.value(i)));
            }
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let new = buffer.tables.get(&Table::Observations).cloned().unwrap_or_default();
    let lookups: Vec<(&str, i64)> = wanted.iter().map(|(d, at)| (d.as_str(), *at)).collect();
    let found = index.last_locations(&lookups, &new, CELL_LOOKBACK_MICROS).await?;
    let mut placed: std::collections::HashMap<(Table, usize, usize), String> = std::collections::HashMap::new();
    for (at, location) in unplaced.into_iter().zip(found) {
        if let Some(location) = location {
            placed.insert(at, location.chars().take(CELL_CHARS).collect());
        }
    }
    for (table, _) in EVENTS {
        for (b, batch) in buffer.tables.get_mut(&table).into_iter().flatten().enumerate() {
            let schema = batch.schema();
            let cell_at = schema.index_of("cell")?;
            let cells = text(batch, "cell")?;
            if cells.null_count() == 0 {
                continue;
            }
            let column: StringArray = (0..batch.num_rows())
                .map(|i| {
                    if cells.is_valid(i) {
                        Some(cells.value(i).to_string())
                    } else {
                        placed.get(&(table, b, i)).cloned()
                    }
                })
                .collect();
            let mut columns = batch.columns().to_vec();
            columns[cell_at] = Arc::new(column);
            *batch = RecordBatch::try_new(schema, columns)?;
        }
    }
    Ok(())
}

/// A text column of a buffered batch (an error, not a panic, if it is missing or not text).
fn text<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| missing(name))
}

/// A primitive column of a buffered batch (an error, not a panic, if it is missing or of
/// another type).
fn primitive<'a, T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a arrow::array::PrimitiveArray<T>> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<T>())
        .ok_or_else(|| missing(name))
}

/// The counts of one hour and cell of the case rollup, in [`schema::CASE_PARTIALS`]' order.
#[derive(Debug, Default, Clone, Copy)]
struct CaseCounts {
    suspected: i64,
    confirmed: i64,
    confirmed_after_alert: i64,
    alerts_high: i64,
    alerts_medium: i64,
    readings: i64,
    fever_readings: i64,
}

/// Partial rows of the case rollup, folded from cases and temperature readings that
/// [`place_in_cells`] placed (those in no cell are not counted).
#[derive(Debug, Default)]
pub struct CasePartials {
    by_key: BTreeMap<(i64, String), CaseCounts>,
}

impl CasePartials {
    /// Folds in the cases and temperature readings of `buffer`.
    pub fn add_buffer(&mut self, buffer: &Buffer) -> Result<()> {
        for batch in buffer.tables.get(&Table::Cases).into_iter().flatten() {
            let cells = text(batch, "cell")?;
            let at = primitive::<TimestampMicrosecondType>(batch, "reported_at")?;
            let status = text(batch, "status")?;
            let after_alert = batch
                .column_by_name("after_alert")
                .and_then(|c| c.as_boolean_opt())
                .ok_or_else(|| missing("after_alert"))?;
            let high = primitive::<Int32Type>(batch, "alerts_high")?;
            let medium = primitive::<Int32Type>(batch, "alerts_medium")?;
            for i in (0..batch.num_rows()).filter(|&i| cells.is_valid(i)) {
                let counts = self.counts(at.value(i), cells.value(i));
                match status.value(i) {
                    "suspected" => counts.suspected += 1,
                    "confirmed" => {
                        counts.confirmed += 1;
                        // A confirmation is a second row of a suspected case: counting
                        // confirmed cases only counts each person once.
                        if after_alert.is_valid(i) && after_alert.value(i) {
                            counts.confirmed_after_alert += 1;
                        }
                    }
                    _ => {}
                }
                counts.alerts_high += i64::from(high.value(i));
                counts.alerts_medium += i64::from(medium.value(i));
            }
        }
        for batch in buffer.tables.get(&Table::TemperatureReadings).into_iter().flatten() {
            let cells = text(batch, "cell")?;
            let at = primitive::<TimestampMicrosecondType>(batch, "measured_at")?;
            let celsius = primitive::<Float64Type>(batch, "celsius")?;
            for i in (0..batch.num_rows()).filter(|&i| cells.is_valid(i)) {
                let counts = self.counts(at.value(i), cells.value(i));
                counts.readings += 1;
                if celsius.value(i) >= FEVER_CELSIUS {
                    counts.fever_readings += 1;
                }
            }
        }
        Ok(())
    }

    fn counts(&mut self, at: i64, cell: &str) -> &mut CaseCounts {
        let hour = at - at.rem_euclid(MICROS_PER_HOUR);
        self.by_key.entry((hour, cell.to_string())).or_default()
    }

    /// Whether nothing was folded in.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The partial rows, one per hour and cell, in that order.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let (hours, cells) = key_columns(&self.by_key);
        let count = |f: fn(&CaseCounts) -> i64| -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(self.by_key.values().map(f)))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(hours),
            Arc::new(cells),
            count(|c| c.suspected),
            count(|c| c.confirmed),
            count(|c| c.confirmed_after_alert),
            count(|c| c.alerts_high),
            count(|c| c.alerts_medium),
            count(|c| c.readings),
            count(|c| c.fever_readings),
        ];
        Ok(RecordBatch::try_new(schema::CASE_PARTIALS.clone(), columns)?)
    }
}

/// The hour and cell columns of partial rows kept by `(hour µs, cell)`, in key order.
fn key_columns<V>(by_key: &BTreeMap<(i64, String), V>) -> (TimestampMicrosecondArray, StringArray) {
    let hours = TimestampMicrosecondArray::from_iter_values(by_key.keys().map(|(hour, _)| *hour)).with_timezone("UTC");
    let cells = StringArray::from_iter_values(by_key.keys().map(|(_, cell)| cell));
    (hours, cells)
}

fn missing(column: &str) -> crate::Error {
    crate::Error::Invalid(format!("a buffered row has no {column} column"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use arrow::array::{AsArray, Int16Array, Int32Array};
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    use proxima_engine::{SessionFactory, SessionOptions, Store, Table};

    use super::*;
    use crate::PartitionWriter;

    /// A deterministic pseudo-random stream (xorshift), so that a failure can be replayed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn uuid(i: u64) -> String {
        format!("00000000-0000-4000-8000-{i:012x}")
    }

    fn mac(i: u64) -> String {
        format!("AA:00:00:00:{:02X}:{:02X}", i / 256, i % 256)
    }

    /// Random observations of 40 registered devices (and of unknown MACs, of the observer's
    /// own MAC, without a location, in cells of several lengths, over three days), stored;
    /// the partials folded from them with the devices' MACs equal the SQL reference over the
    /// `encounters` view: every hour and cell, every count and every sketch's count.
    #[tokio::test]
    async fn folded_partials_equal_the_sql_reference() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path()).unwrap();
        let devices = 40u64;
        let registered = RecordBatch::try_new(
            schema::DEVICES.clone(),
            vec![
                Arc::new(StringArray::from_iter_values((0..devices).map(uuid))),
                Arc::new(StringArray::from_iter_values((0..devices).map(mac))),
                Arc::new(TimestampMicrosecondArray::from_iter_values((0..devices).map(|_| 0)).with_timezone("UTC")),
            ],
        )
        .unwrap();
        let start = 1_793_577_600_000_000i64; // 2026-11-02T00:00:00Z
        let mut rng = Rng(0x5eed);
        let cells = [
            Some("gcpvj0"),
            Some("gcpvhf"),
            Some("gcpe"),
            Some("u10h"),
            Some("gcp"),
            None,
        ];
        let (mut observers, mut observed, mut at, mut duration, mut rssi, mut tx, mut location) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for _ in 0..3_000 {
            let observer = rng.below(devices);
            observers.push(uuid(observer));
            observed.push(match rng.below(10) {
                0 => "DE:AD:BE:EF:00:01".to_string(), // nobody's
                1 => mac(observer),                   // its own
                _ => mac(rng.below(devices)),
            });
            at.push(start + rng.below(3 * 24 * 3_600) as i64 * 1_000_000);
            duration.push(rng.below(3_600) as i32);
            rssi.push((rng.below(3) > 0).then(|| -(rng.below(100) as i16)));
            tx.push((rng.below(3) > 0).then(|| rng.below(10) as i16));
            location.push(cells[rng.below(cells.len() as u64) as usize]);
        }
        let observations = RecordBatch::try_new(
            schema::OBSERVATIONS_FILE.clone(),
            vec![
                Arc::new(StringArray::from(observers.clone())),
                Arc::new(StringArray::from(observed.clone())),
                Arc::new(TimestampMicrosecondArray::from(at.clone()).with_timezone("UTC")),
                Arc::new(Int32Array::from(duration.clone())),
                Arc::new(Int16Array::from(rssi.clone())),
                Arc::new(Int16Array::from(tx.clone())),
                Arc::new(StringArray::from(location.clone())),
            ],
        )
        .unwrap();
        let writer = PartitionWriter::new(store.clone(), "test");
        let mut transaction = writer.begin();
        transaction
            .write_file(Table::Devices, None, &[registered])
            .await
            .unwrap();
        for (day, batch) in crate::layout::split_by_day(Table::Observations, &observations).unwrap() {
            transaction
                .write_file(Table::Observations, day, &[batch])
                .await
                .unwrap();
        }
        transaction.commit().await.unwrap();

        // Folded here, resolving MACs as the `encounters` view does.
        let by_mac: HashMap<String, String> = (0..devices).map(|i| (mac(i), uuid(i))).collect();
        let mut partials = ContactPartials::new(ProximaOptions::default());
        for i in 0..observers.len() {
            let Some(heard) = by_mac.get(&observed[i]) else {
                continue;
            };
            if *heard == observers[i] {
                continue;
            }
            partials.add(Sighting {
                observer: &observers[i],
                heard,
                at: at[i],
                duration_s: i64::from(duration[i]),
                rssi: rssi[i].map(i64::from),
                tx_power: tx[i].map(i64::from),
                location: location[i],
            });
        }
        let folded = partials.to_batch().unwrap();
        assert!(
            folded.num_rows() > 100,
            "{} partial rows: the test tests too little",
            folded.num_rows()
        );

        // The reference, over the stored rows.
        let factory = SessionFactory::new(store, SessionOptions::default()).unwrap();
        let ctx = factory.session().await.unwrap();
        let sql = format!(
            "SELECT CAST(hour AS BIGINT), cell, sightings, close_contacts, hll_count(devices) FROM ({}) ORDER BY 1, 2",
            Rollup::Contacts.reference_sql(None)
        );
        let expected = rows_of(&ctx.sql(&sql).await.unwrap().collect().await.unwrap());
        let mut got = Vec::new();
        for row in 0..folded.num_rows() {
            let devices = proxima_udfs::sketch::decode(folded.column(4).as_binary::<i32>().value(row)).unwrap();
            got.push((
                folded.column(0).as_primitive::<TimestampMicrosecondType>().value(row),
                folded.column(1).as_string::<i32>().value(row).to_string(),
                folded.column(2).as_primitive::<Int64Type>().value(row),
                folded.column(3).as_primitive::<Int64Type>().value(row),
                proxima_udfs::sketch::count(&devices),
            ));
        }
        assert_eq!(got, expected);
        assert!(
            got.iter().any(|row| row.3 > 0),
            "no close contact: the test tests too little"
        );
    }

    /// Every hour and cell of the rollup (partial rows added up) and of the reference
    /// recomputed from the raw tables: `(hour µs, cell, sightings, close contacts, devices)`.
    async fn rollup_and_reference(factory: &SessionFactory) -> (Vec<Row>, Vec<Row>) {
        let ctx = factory.session().await.unwrap();
        let rollup = ctx
            .sql(
                "SELECT CAST(hour AS BIGINT), cell, CAST(sum(sightings) AS BIGINT), CAST(sum(close_contacts) AS BIGINT), \
                 hll_count(hll_merge(devices)) FROM contact_partials GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let reference = ctx
            .sql(&format!(
                "SELECT CAST(hour AS BIGINT), cell, sightings, close_contacts, hll_count(devices) \
                 FROM ({}) ORDER BY 1, 2",
                Rollup::Contacts.reference_sql(None)
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        (rows_of(&rollup), rows_of(&reference))
    }

    /// The case rollup (partial rows added up) and its reference recomputed from the raw
    /// tables, a line per hour and cell.
    async fn case_rollup_and_reference(factory: &SessionFactory) -> (String, String) {
        let ctx = factory.session().await.unwrap();
        let counts = [
            "suspected",
            "confirmed",
            "confirmed_after_alert",
            "alerts_high",
            "alerts_medium",
            "readings",
            "fever_readings",
        ];
        let summed: Vec<String> = counts
            .iter()
            .map(|c| format!("CAST(sum({c}) AS BIGINT) AS {c}"))
            .collect();
        let rollup = format!(
            "SELECT CAST(hour AS BIGINT) AS hour, cell, {} FROM case_partials GROUP BY 1, 2 ORDER BY 1, 2",
            summed.join(", ")
        );
        let reference = format!(
            "SELECT CAST(hour AS BIGINT) AS hour, cell, {} FROM ({}) ORDER BY 1, 2",
            counts
                .iter()
                .map(|c| format!("CAST({c} AS BIGINT) AS {c}"))
                .collect::<Vec<_>>()
                .join(", "),
            Rollup::Cases.reference_sql(None)
        );
        let mut out = Vec::new();
        for sql in [rollup, reference] {
            let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
            out.push(
                arrow::util::pretty::pretty_format_batches(&batches)
                    .unwrap()
                    .to_string(),
            );
        }
        let reference = out.pop().unwrap();
        (out.pop().unwrap(), reference)
    }

    /// Every case and reading the last flush (`tag`) stored is in the cell of its device's
    /// latest located sighting report at or before it (within 14 days), as SQL finds it over
    /// the store that flush left (later back-dated sightings do not move it); some are in
    /// none.
    async fn check_cells(factory: &SessionFactory, tag: u32) {
        let ctx = factory.session().await.unwrap();
        let sql = format!(
            "WITH events AS (SELECT device_uuid, reported_at AS at, cell FROM cases WHERE reported_by = 'flush-{tag}' \
                   UNION ALL SELECT device_uuid, measured_at, cell FROM temperature_readings WHERE site = 'flush-{tag}'), \
                   ranked AS (SELECT e.device_uuid, e.at, e.cell, substr(o.location, 1, 4) AS expected, \
                   row_number() OVER (PARTITION BY e.device_uuid, e.at ORDER BY o.observed_at DESC NULLS LAST, o.location DESC NULLS LAST) AS n \
                   FROM events e LEFT JOIN observations o ON o.observer = e.device_uuid AND o.location IS NOT NULL \
                   AND o.observed_at <= e.at AND o.observed_at >= e.at - INTERVAL '14 days') \
                   SELECT count(*), count(*) FILTER (WHERE cell IS NOT DISTINCT FROM expected), \
                   count(*) FILTER (WHERE cell IS NULL) FROM ranked WHERE n = 1"
        );
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let value = |c: usize| batches[0].column(c).as_primitive::<Int64Type>().value(0);
        let (events, placed_right, in_none) = (value(0), value(1), value(2));
        assert!(events >= 200, "{events} cases and readings: too few");
        assert_eq!(
            placed_right, events,
            "every case and reading is in its device's last cell"
        );
        assert!(in_none > 0 && in_none < events / 2, "{in_none} of {events} in no cell");
    }

    type Row = (i64, String, i64, i64, i64);

    /// The rows of a query of five columns: hour (µs), cell, two counts, a count.
    fn rows_of(batches: &[RecordBatch]) -> Vec<Row> {
        let mut rows = Vec::new();
        for batch in batches {
            for row in 0..batch.num_rows() {
                rows.push((
                    batch.column(0).as_primitive::<Int64Type>().value(row),
                    batch.column(1).as_string::<i32>().value(row).to_string(),
                    batch.column(2).as_primitive::<Int64Type>().value(row),
                    batch.column(3).as_primitive::<Int64Type>().value(row),
                    batch.column(4).as_primitive::<Int64Type>().value(row),
                ));
            }
        }
        rows
    }

    /// A flusher of a WAL in `wal_dir` into `store` that keeps the rollup.
    async fn flusher_with_rollups(store: &Store, wal_dir: &std::path::Path) -> crate::flush::Flusher {
        let (wal, _) = crate::wal::Wal::open(wal_dir, crate::wal::WalStats::default(), |id, tables, oldest| {
            let store = store.clone();
            async move { crate::marks::committed_through(&store, id, &tables, oldest).await }
        })
        .await
        .unwrap();
        let index = Arc::new(IndexReader::new(store.clone(), None));
        crate::flush::Flusher::new(wal, PartitionWriter::new(store.clone(), "test")).with_rollups(index)
    }

    /// Random uploads flushed in rounds, with devices registered after their MACs were
    /// heard, GAEN keys registered after their RPIs were heard (and RPIs heard too far from
    /// their interval), back-dated sightings and self-sightings; then compaction and
    /// retention (which takes a day's keys, so the next day's partials are rebuilt): after
    /// every step the rollup the flushes kept equals the recomputation from raw rows.
    #[tokio::test]
    async fn the_rollup_kept_by_flushes_equals_recomputation() {
        use crate::wal::Entry;

        let (dir, wal_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = Store::local(dir.path()).unwrap();
        let flusher = flusher_with_rollups(&store, wal_dir.path()).await;
        let factory = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();

        let day = 86_400_000_000i64;
        let start = 1_793_577_600_000_000i64; // 2026-11-02T00:00:00Z
        // Devices 0..30 broadcast MACs; 30..40 GAEN RPIs of one key a day each.
        let teks: Vec<[u8; 16]> = (0..40u64)
            .map(|i| {
                let mut tek = [0u8; 16];
                tek[..8].copy_from_slice(&(i * 7919 + 1).to_be_bytes());
                tek
            })
            .collect();
        let devices_batch = |ids: std::ops::Range<u64>| {
            RecordBatch::try_new(
                schema::DEVICES.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(ids.clone().map(uuid))),
                    Arc::new(StringArray::from_iter(ids.clone().map(|i| (i < 30).then(|| mac(i))))),
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(ids.map(|_| start + 2 * day)).with_timezone("UTC"),
                    ),
                ],
            )
            .unwrap()
        };
        let keys_batch = |ids: std::ops::Range<u64>, days: std::ops::Range<i64>| {
            let rows: Vec<(u64, i64)> = ids.flat_map(|i| days.clone().map(move |d| (i, d))).collect();
            RecordBatch::try_new(
                schema::EXPOSURE_KEYS.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|(i, _)| uuid(*i)))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|(i, d)| {
                        let mut tek = teks[*i as usize];
                        tek[15] = *d as u8;
                        hex::encode(tek)
                    }))),
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|(_, d)| start + d * day))
                            .with_timezone("UTC"),
                    ),
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|_| 144))),
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|_| start + 3 * day))
                            .with_timezone("UTC"),
                    ),
                ],
            )
            .unwrap()
        };
        let entry = |table, batch| Entry { table, batch };
        let mut rng = Rng(0xfeed);
        let cells = [Some("gcpvj0"), Some("gcpvhf"), Some("u10h"), Some("gcpe2"), None];
        let mut observations = |n: usize, days: i64| {
            let (mut observers, mut observed, mut at, mut duration, mut rssi, mut tx, mut location) =
                (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
            for _ in 0..n {
                let observer = rng.below(40);
                let t = start + rng.below(days as u64 * 86_400) as i64 * 1_000_000;
                let heard = rng.below(40);
                observed.push(match rng.below(12) {
                    0 => "DE:AD:BE:EF:00:01".to_string(),
                    1 => mac(observer),
                    _ if heard < 30 => mac(heard),
                    _ => {
                        // An RPI of the key of `heard` for the day of `t`; now and then one
                        // heard three hours from its interval (beyond the tolerance).
                        let mut d = (t - start) / day;
                        // Early in a day, now and then the last RPI of the day before's
                        // key (heard within the tolerance).
                        let late = d > 0 && (t - start) % day < 7_200_000_000 && rng.below(2) == 0;
                        if late {
                            d -= 1;
                        }
                        let mut tek = teks[heard as usize];
                        tek[15] = d as u8;
                        let skew = if rng.below(8) == 0 { 3 * 3_600_000_000 } else { 0 };
                        let interval = ((t - skew) / 600_000_000) as u32;
                        let first = ((start + d * day) / 600_000_000) as u32;
                        let interval = if late {
                            first + 143
                        } else {
                            interval.clamp(first, first + 143)
                        };
                        hex::encode(proxima_udfs::gaen::rpi(&proxima_udfs::gaen::rpik(&tek), interval))
                    }
                });
                observers.push(uuid(observer));
                at.push(t);
                duration.push(rng.below(3_600) as i32);
                rssi.push((rng.below(3) > 0).then(|| -(rng.below(100) as i16)));
                tx.push((rng.below(3) > 0).then(|| rng.below(10) as i16));
                location.push(cells[rng.below(cells.len() as u64) as usize]);
            }
            RecordBatch::try_new(
                schema::OBSERVATIONS_FILE.clone(),
                vec![
                    Arc::new(StringArray::from(observers)),
                    Arc::new(StringArray::from(observed)),
                    Arc::new(TimestampMicrosecondArray::from(at).with_timezone("UTC")),
                    Arc::new(Int32Array::from(duration)),
                    Arc::new(Int16Array::from(rssi)),
                    Arc::new(Int16Array::from(tx)),
                    Arc::new(StringArray::from(location)),
                ],
            )
            .unwrap()
        };
        // Cases and temperature readings of devices 0..40 and of one that never reports a
        // sighting (in no cell), at distinct times over the three days.
        let mut event_rng = Rng(0xca5e);
        let mut serial = 0i64;
        let mut events = |n: usize, tag: u32| {
            let mut rows = Vec::new();
            for _ in 0..n {
                serial += 1;
                let device = if event_rng.below(10) == 0 {
                    45
                } else {
                    event_rng.below(40)
                };
                let t = start + event_rng.below(3 * 86_400) as i64 * 1_000_000 + serial;
                rows.push((device, t, event_rng.below(1_000)));
            }
            let cases = RecordBatch::try_new(
                schema::CASES.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| format!("case-{}", r.1)),
                    )),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| uuid(r.0)))),
                    Arc::new(StringArray::from_iter_values(
                        rows.iter()
                            .map(|r| if r.2 % 3 == 0 { "confirmed" } else { "suspected" }),
                    )),
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1)).with_timezone("UTC"),
                    ),
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|_| format!("flush-{tag}")),
                    )),
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| (r.2 % 7) as i32))),
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| (r.2 % 11) as i32))),
                    Arc::new(StringArray::new_null(rows.len())),
                    Arc::new(arrow::array::BooleanArray::from_iter(
                        rows.iter().map(|r| Some(r.2 % 4 == 0)),
                    )),
                ],
            )
            .unwrap();
            let readings = RecordBatch::try_new(
                schema::TEMPERATURE_READINGS.clone(),
                vec![
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| uuid(r.0)))),
                    Arc::new(
                        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1 + 1)).with_timezone("UTC"),
                    ),
                    Arc::new(arrow::array::Float64Array::from_iter_values(
                        rows.iter().map(|r| 36.0 + (r.2 % 40) as f64 / 10.0),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|_| format!("flush-{tag}")),
                    )),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "station"))),
                    Arc::new(StringArray::new_null(rows.len())),
                ],
            )
            .unwrap();
            [entry(Table::Cases, cases), entry(Table::TemperatureReadings, readings)]
        };
        let check = |step: &'static str| {
            let factory = &factory;
            async move {
                let (rollup, reference) = rollup_and_reference(factory).await;
                assert!(
                    reference.len() > 20,
                    "{step}: {} hours and cells: too little tested",
                    reference.len()
                );
                assert_eq!(rollup, reference, "{step}");
                let (rollup, reference) = case_rollup_and_reference(factory).await;
                assert!(
                    reference.lines().count() > 20,
                    "{step}: too few hours and cells of cases"
                );
                assert_eq!(rollup, reference, "{step}: the case rollup");
            }
        };

        // 1: half the MAC devices registered, no GAEN key yet; sightings over three days.
        // Cases and readings in the same flush, placed by its sightings.
        let first = observations(1_500, 3);
        let mut appended = vec![
            entry(Table::Devices, devices_batch(0..15)),
            entry(Table::Observations, first),
        ];
        appended.extend(events(200, 1));
        flusher.wal().append(appended).await.unwrap();
        flusher.flush().await.unwrap();
        check_cells(&factory, 1).await;
        check("first flush").await;
        // 2: the other MAC devices (heard before they registered), keys of half the GAEN
        // devices (their RPIs heard before), more sightings.
        // Cases and readings placed by sightings stored and new.
        let second = observations(1_000, 3);
        let mut appended = vec![
            entry(Table::Observations, second),
            entry(Table::Devices, devices_batch(15..30)),
            entry(Table::ExposureKeys, keys_batch(30..35, 0..3)),
        ];
        appended.extend(events(200, 2));
        flusher.wal().append(appended).await.unwrap();
        flusher.flush().await.unwrap();
        check_cells(&factory, 2).await;
        check("late registrations and keys").await;
        // Cases and readings alone, placed by stored sightings only.
        flusher.wal().append(events(100, 3).into()).await.unwrap();
        flusher.flush().await.unwrap();
        check_cells(&factory, 3).await;
        // 3: only keys, then only sightings, in flushes of their own.
        flusher
            .wal()
            .append(vec![entry(Table::ExposureKeys, keys_batch(35..40, 0..3))])
            .await
            .unwrap();
        flusher.flush().await.unwrap();
        check("keys alone").await;
        for _ in 0..3 {
            let more = observations(300, 3);
            flusher
                .wal()
                .append(vec![entry(Table::Observations, more)])
                .await
                .unwrap();
            flusher.flush().await.unwrap();
        }
        check("sightings alone").await;
        let partial_files = || async {
            use futures::TryStreamExt as _;
            let prefix = Table::ContactPartials.prefix(store.root());
            let live: Vec<_> = store.reader().list(Some(&prefix)).try_collect().await.unwrap();
            live.iter()
                .filter(|m| m.location.as_ref().ends_with(".parquet"))
                .count()
        };
        assert!(partial_files().await >= 15, "a partial file per flush and day");

        // Compaction merges each day's partial rows per hour and cell.
        let writer = PartitionWriter::new(store.clone(), "test");
        let now = chrono::DateTime::from_timestamp_micros(start + 3 * day).unwrap();
        let runs = crate::compaction::compact_due(&factory, &writer, now, std::time::Duration::ZERO)
            .await
            .unwrap();
        assert!(runs > 0);
        assert_eq!(partial_files().await, 3, "one partial file a day");
        check("compaction").await;
        let ctx = factory.session().await.unwrap();
        let merged = ctx
            .sql("SELECT count(*) = count(DISTINCT (hour, cell)) FROM case_partials")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert!(
            merged[0].column(0).as_boolean().value(0),
            "compaction merged the case partials per hour and cell"
        );

        // Retention keeps the last two days; the first kept day's sightings of the keys of
        // the day before (within the two hours' tolerance) are no encounters any more.
        let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 4).unwrap();
        crate::retention::apply(&store, today, 2).await.unwrap();
        after_retention(&factory, &writer, today, 2).await.unwrap();
        check("retention").await;

        // Erasure of a MAC device and a GAEN one: their sightings leave the rollup, both
        // sides' (a sketch cannot forget them: the days are rolled up again).
        let revoked = RecordBatch::try_new(
            schema::REVOCATIONS.clone(),
            vec![
                Arc::new(StringArray::from_iter_values([uuid(3), uuid(33)])),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values([start + 3 * day, start + 3 * day])
                        .with_timezone("UTC"),
                ),
            ],
        )
        .unwrap();
        flusher
            .wal()
            .append(vec![entry(Table::Revocations, revoked)])
            .await
            .unwrap();
        flusher.flush().await.unwrap();
        let (before, _) = rollup_and_reference(&factory).await;
        let erased = crate::erasure::erase_revoked(&factory, &writer, start, start + 3 * day, now)
            .await
            .unwrap();
        assert_eq!(erased.len(), 2);
        check("erasure").await;
        let (after, _) = rollup_and_reference(&factory).await;
        assert!(
            after.iter().map(|r| r.2).sum::<i64>() < before.iter().map(|r| r.2).sum::<i64>(),
            "the erased devices' sightings left the rollup"
        );
    }

    /// Another process (here: its lease, taken directly) is writing the rollup: a flush
    /// waits for it, stores nothing meanwhile, and goes on once it is given back.
    #[tokio::test]
    async fn a_flush_waits_for_another_processs_rollup_write() {
        use crate::wal::Entry;

        let (dir, wal_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = Store::local(dir.path()).unwrap();
        let flusher = flusher_with_rollups(&store, wal_dir.path()).await;
        let other = Lease::acquire_for(Work::Rollup, &store, "another node", Utc::now())
            .await
            .unwrap()
            .expect("the lease is free");
        let batch = crate::testing::observations(1, 5, 0);
        flusher
            .wal()
            .append(vec![Entry {
                table: Table::Observations,
                batch,
            }])
            .await
            .unwrap();
        let flushing = flusher.flush();
        tokio::pin!(flushing);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut flushing)
                .await
                .is_err(),
            "the flush waits"
        );
        assert_eq!(crate::testing::stored(&store).await, 0, "nothing stored meanwhile");
        other.release().await.unwrap();
        let flushed = flushing.await.unwrap();
        assert_eq!(flushed.rows, 5);
        assert_eq!(crate::testing::stored(&store).await, 5);
        // Given back: the next writer takes the lease at once.
        assert!(
            Lease::acquire_for(Work::Rollup, &store, "another node", Utc::now())
                .await
                .unwrap()
                .is_some()
        );
    }
}
