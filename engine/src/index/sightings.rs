//! Sightings resolved outside SQL for the writers that keep rollups current (issue 16):
//! the rows a flush is about to store, and the stored rows that only the flush's own new
//! devices and GAEN keys resolve.
//!
//! The rule is the `encounters` view's, as the lookup applies it (the module above): a
//! sighting hears every device registered with the MAC it heard, the device a rotating
//! identifier stands for if heard in its epoch, and the device whose GAEN key derives the
//! RPI heard within two hours of its interval; never the observer itself. What differs is
//! where the devices and keys come from: the store's (the reader's directory and RPIs) and
//! a [`Pending`] set the writer holds and the store does not yet. A writer that folds
//! [`IndexReader::resolve_new`] of its rows and [`IndexReader::resolve_stored`] of its
//! devices and keys into a rollup adds exactly the encounters its commit creates, so long
//! as no other writer commits in between (the writer's lock says so).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int16Type, Int32Type};
use chrono::NaiveDate;
use datafusion::error::{DataFusionError, Result as DfResult};
use object_store::path::Path;
use tokio::task::JoinSet;

use super::{
    DayFiles, Directory, IndexReader, MICROS_PER_DAY, Rpis, Valid, covered, device_bits, device_text, join, mac_text,
    read_columns, select, text_column, time_column,
};
use crate::schema::date_from_epoch_days;

/// One sighting of a registered device, resolved: what a rollup folds.
#[derive(Debug, Clone, Copy)]
pub struct Sighting<'a> {
    /// The device that reported it.
    pub observer: &'a str,
    /// The registered device it heard (never the observer itself).
    pub heard: &'a str,
    /// When, µs since the epoch (UTC).
    pub at: i64,
    /// Seconds.
    pub duration_s: i64,
    /// dBm.
    pub rssi: Option<i64>,
    /// dBm.
    pub tx_power: Option<i64>,
    /// The observer's geohash, if it gave one.
    pub location: Option<&'a str>,
}

/// Devices and GAEN keys a writer is about to store: what its rows resolve with beside the
/// store's, and what may make stored sightings encounters.
#[derive(Debug, Default)]
pub struct Pending {
    directory: Directory,
    rpis: Rpis,
    /// Each device's registration time (µs): identifiers are issued only to registered
    /// devices, so none of it was heard long before.
    registered_at: HashMap<u128, i64>,
}

/// How long before its registration time a device's rotating identifier is looked for in
/// stored rows: identifiers are issued to registered devices only, and this covers the
/// clocks of the nodes, the epoch that was current at registration and its tolerance.
const IDENTIFIER_MARGIN_MICROS: i64 = MICROS_PER_DAY;

impl Pending {
    /// Adds a batch of `devices` rows.
    pub fn add_devices(&mut self, batch: &RecordBatch) -> DfResult<()> {
        let pending = Path::from("pending devices");
        self.directory.load(batch, &pending)?;
        let schema = batch.schema();
        let uuids = text_column(batch, schema.index_of("device_uuid")?, &pending)?;
        let at = time_column(batch, schema.index_of("registered_at")?, &pending)?;
        for i in 0..batch.num_rows() {
            if let Some(device) = device_bits(uuids.value(i)) {
                let earliest = self.registered_at.entry(device).or_insert(i64::MAX);
                *earliest = (*earliest).min(at.value(i));
            }
        }
        Ok(())
    }

    /// Adds a batch of `exposure_keys` rows.
    pub fn add_exposure_keys(&mut self, batch: &RecordBatch) -> DfResult<()> {
        self.rpis.load(batch, &Path::from("pending exposure keys"))
    }

    /// Whether there is no device and no key.
    pub fn is_empty(&self) -> bool {
        self.directory.devices.is_empty() && self.rpis.keys_of.is_empty()
    }
}

/// The columns of an observation file a sighting needs, by position in its schema.
const OBSERVATION_COLUMNS: [usize; 7] = [0, 1, 2, 3, 4, 5, 6];

/// One batch of observation rows, typed.
struct Rows<'a> {
    observer: &'a arrow::array::StringArray,
    observed: &'a arrow::array::StringArray,
    at: &'a arrow::array::PrimitiveArray<arrow::datatypes::TimestampMicrosecondType>,
    duration: &'a arrow::array::PrimitiveArray<Int32Type>,
    rssi: &'a arrow::array::PrimitiveArray<Int16Type>,
    tx_power: &'a arrow::array::PrimitiveArray<Int16Type>,
    location: &'a arrow::array::StringArray,
}

impl<'a> Rows<'a> {
    /// The columns of `batch` (an observation file's, or rows of that schema) by name.
    fn of(batch: &'a RecordBatch, file: &Path) -> DfResult<Self> {
        let schema = batch.schema();
        let index = |name: &str| schema.index_of(name);
        let int = |name: &str| -> DfResult<usize> { Ok(index(name)?) };
        let wrong =
            |name: &str| DataFusionError::Execution(format!("{file}: {name} has another type (not a Proxima file?)"));
        Ok(Self {
            observer: text_column(batch, int("observer")?, file)?,
            observed: text_column(batch, int("observed")?, file)?,
            at: time_column(batch, int("observed_at")?, file)?,
            duration: batch
                .column(int("duration_s")?)
                .as_primitive_opt::<Int32Type>()
                .ok_or_else(|| wrong("duration_s"))?,
            rssi: batch
                .column(int("rssi")?)
                .as_primitive_opt::<Int16Type>()
                .ok_or_else(|| wrong("rssi"))?,
            tx_power: batch
                .column(int("tx_power")?)
                .as_primitive_opt::<Int16Type>()
                .ok_or_else(|| wrong("tx_power"))?,
            location: text_column(batch, int("location")?, file)?,
        })
    }

    fn sighting(&self, i: usize, heard: &'a str) -> Sighting<'a> {
        let small = |a: &arrow::array::PrimitiveArray<Int16Type>| a.is_valid(i).then(|| i64::from(a.value(i)));
        Sighting {
            observer: self.observer.value(i),
            heard,
            at: self.at.value(i),
            duration_s: i64::from(self.duration.value(i)),
            rssi: small(self.rssi),
            tx_power: small(self.tx_power),
            location: self.location.is_valid(i).then(|| self.location.value(i)),
        }
    }
}

impl IndexReader {
    /// Calls `each` with every sighting among `observations` (batches of rows of the
    /// observations table that are not stored yet) of a device the store or `pending`
    /// knows: each row once per device it hears. The store's devices and keys are read
    /// once for all the batches.
    pub async fn resolve_new(
        &self,
        observations: &[RecordBatch],
        pending: &Pending,
        mut each: impl FnMut(Sighting<'_>),
    ) -> DfResult<()> {
        self.refresh_directory().await?;
        self.refresh_rpis().await?;
        let directory = self.directory.read().await;
        let rpis = self.rpis.read().await;
        let mut heard: Vec<u128> = Vec::new();
        for batch in observations {
            let rows = Rows::of(batch, &Path::from("new observations"))?;
            for i in 0..batch.num_rows() {
                heard.clear();
                let (observed, at) = (rows.observed.value(i), rows.at.value(i));
                self.for_each_heard(&directory, &rpis, observed, at, false, |d| heard.push(d));
                self.for_each_heard(&pending.directory, &pending.rpis, observed, at, false, |d| {
                    heard.push(d)
                });
                if heard.is_empty() {
                    continue;
                }
                heard.sort_unstable();
                heard.dedup();
                let observer = device_bits(rows.observer.value(i));
                let mut text = uuid::Uuid::encode_buffer();
                for &device in &heard {
                    if Some(device) != observer {
                        // On the stack: a sighting costs no allocation.
                        let text = uuid::Uuid::from_u128(device).hyphenated().encode_lower(&mut text);
                        each(rows.sighting(i, text));
                    }
                }
            }
        }
        Ok(())
    }

    /// Calls `each` with every sighting, among the stored observations, of a device or key
    /// of `pending` that the store's own devices and keys do not already resolve it to:
    /// sightings of a MAC heard before it registered, of an identifier whose device another
    /// node registered, of the RPIs of GAEN keys registered after they were heard.
    pub async fn resolve_stored(&self, pending: &Pending, mut each: impl FnMut(Sighting<'_>)) -> DfResult<()> {
        if pending.is_empty() {
            return Ok(());
        }
        self.refresh_directory().await?;
        self.refresh_rpis().await?;
        let days = self.observation_days().await?;
        let (Some(first), Some(last)) = (days.first(), days.last()) else {
            return Ok(());
        };
        let from = i64::from(crate::schema::epoch_days(*first)) * MICROS_PER_DAY;
        let to = (i64::from(crate::schema::epoch_days(*last)) + 1) * MICROS_PER_DAY - 1;
        // What a sighting of a pending device or key carries, and when it counts.
        let mut broadcasts: HashMap<String, Vec<Valid>> = HashMap::new();
        for &mac in pending.directory.by_mac.keys() {
            broadcasts.entry(mac_text(mac)).or_default().push(Valid::Always);
        }
        if let Some(ids) = &self.identifiers {
            for (&handle, device) in &pending.directory.by_handle {
                let registered = pending.registered_at.get(device).copied().unwrap_or(from);
                let since = registered.saturating_sub(IDENTIFIER_MARGIN_MICROS).max(from);
                for (id, start) in ids.broadcast_between(handle, since, to) {
                    broadcasts.entry(id).or_default().push(Valid::Epoch(start));
                }
            }
        }
        for keys in pending.rpis.keys_of.values() {
            for &(rpik, first, period) in keys {
                for interval in first..first.saturating_add(period) {
                    let rpi = hex::encode(proxima_udfs::gaen::rpi(&rpik, interval));
                    broadcasts.entry(rpi).or_default().push(Valid::Interval(interval));
                }
            }
        }
        // Each key in the days a sighting of it may fall in.
        let mut keys_of_day: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        let stored_days: HashSet<i64> = days.iter().map(|d| i64::from(crate::schema::epoch_days(*d))).collect();
        for (key, valid) in &broadcasts {
            let mut key_days: Vec<i64> = Vec::new();
            for valid in valid {
                let Some((lo, hi)) = self.counts_when(valid, from, to) else {
                    continue;
                };
                key_days.extend(
                    (lo.div_euclid(MICROS_PER_DAY)..=hi.div_euclid(MICROS_PER_DAY)).filter(|d| stored_days.contains(d)),
                );
            }
            key_days.sort_unstable();
            key_days.dedup();
            for day in key_days {
                keys_of_day.entry(day).or_default().push(key.clone());
            }
        }
        let directory = self.directory.read().await;
        let rpis = self.rpis.read().await;
        for (day, mut keys) in keys_of_day {
            let Ok(day) = i32::try_from(day) else { continue };
            keys.sort_unstable();
            let keys: Arc<[String]> = keys.into();
            let (observations, companions) = self.day_tables(date_from_epoch_days(day)).await?;
            let batches = if covered(&observations, &companions) {
                // Who heard a key, from the companions; then those observers' rows.
                let mut tasks = JoinSet::new();
                for (file, footer) in &companions {
                    self.spawn_matching(&mut tasks, file, footer, &keys, from, to);
                }
                let mut observers: Vec<String> = join(tasks)
                    .await?
                    .into_iter()
                    .map(|(_, observer, _)| observer)
                    .collect();
                if observers.is_empty() {
                    continue;
                }
                observers.sort_unstable();
                observers.dedup();
                self.rows_of(&observations, &observers).await?
            } else {
                self.scanned_days.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.rows_of_all(&observations).await?
            };
            for (file, batch) in &batches {
                let rows = Rows::of(batch, file)?;
                let mut stored: Vec<u128> = Vec::new();
                let mut new: Vec<u128> = Vec::new();
                for i in 0..batch.num_rows() {
                    let observed = rows.observed.value(i);
                    if keys.binary_search_by(|k| k.as_str().cmp(observed)).is_err() {
                        continue;
                    }
                    let at = rows.at.value(i);
                    new.clear();
                    self.for_each_heard(&pending.directory, &pending.rpis, observed, at, false, |d| new.push(d));
                    if new.is_empty() {
                        continue;
                    }
                    stored.clear();
                    self.for_each_heard(&directory, &rpis, observed, at, false, |d| stored.push(d));
                    new.sort_unstable();
                    new.dedup();
                    let observer = device_bits(rows.observer.value(i));
                    for &device in &new {
                        if Some(device) != observer && !stored.contains(&device) {
                            let text = device_text(device);
                            each(rows.sighting(i, &text));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// For each `(device, at)` of `wanted`: where the device last reported a sighting from,
    /// the location of its latest row as observer with a location, at or before `at` and at
    /// most `lookback` µs before it (of equal times, the greater location), among `new` rows
    /// of the observations table (not stored yet) and the store's. What places a case or a
    /// temperature reading in a rollup cell; `None` if there is no such row.
    pub async fn last_locations(
        &self,
        wanted: &[(&str, i64)],
        new: &[RecordBatch],
        lookback: i64,
    ) -> DfResult<Vec<Option<String>>> {
        let mut best: Vec<Option<(i64, String)>> = vec![None; wanted.len()];
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut of_device: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, (device, _)) in wanted.iter().enumerate() {
            of_device.entry(device).or_default().push(i);
        }
        let consider = |best: &mut [Option<(i64, String)>], i: usize, at: i64, location: &str| {
            let until = wanted[i].1;
            if at > until || at < until.saturating_sub(lookback) {
                return;
            }
            if best[i].as_ref().is_none_or(|(a, l)| (at, location) > (*a, l.as_str())) {
                best[i] = Some((at, location.to_string()));
            }
        };
        let scan =
            |best: &mut [Option<(i64, String)>], batch: &RecordBatch, file: &Path, only: Option<&HashSet<usize>>| {
                let rows = Rows::of(batch, file)?;
                for r in 0..batch.num_rows() {
                    if rows.location.is_null(r) {
                        continue;
                    }
                    let Some(indices) = of_device.get(rows.observer.value(r)) else {
                        continue;
                    };
                    for &i in indices {
                        if only.is_none_or(|o| o.contains(&i)) {
                            consider(best, i, rows.at.value(r), rows.location.value(r));
                        }
                    }
                }
                Ok::<_, DataFusionError>(())
            };
        for batch in new {
            scan(&mut best, batch, &Path::from("new observations"), None)?;
        }
        // The store's days, newest first: a device found on a day needs no earlier one.
        let window = |i: usize| {
            let (_, until) = wanted[i];
            (
                until.saturating_sub(lookback).div_euclid(MICROS_PER_DAY),
                until.div_euclid(MICROS_PER_DAY),
            )
        };
        let mut days = self.observation_days().await?;
        days.reverse();
        let mut done: HashSet<usize> = HashSet::new();
        for day in days {
            let epoch_day = i64::from(crate::schema::epoch_days(day));
            // A row found on a later day (or in `new`, on this one or later) beats any here.
            for (i, found) in best.iter().enumerate() {
                if found
                    .as_ref()
                    .is_some_and(|(at, _)| at.div_euclid(MICROS_PER_DAY) > epoch_day)
                {
                    done.insert(i);
                }
            }
            let open: HashSet<usize> = (0..wanted.len())
                .filter(|&i| {
                    let (from, to) = window(i);
                    !done.contains(&i) && (from..=to).contains(&epoch_day)
                })
                .collect();
            if open.is_empty() {
                if (0..wanted.len()).all(|i| done.contains(&i) || window(i).0 > epoch_day) {
                    break;
                }
                continue;
            }
            let mut observers: Vec<String> = open.iter().map(|&i| wanted[i].0.to_string()).collect();
            observers.sort_unstable();
            observers.dedup();
            let (observations, _) = self.day_tables(day).await?;
            for (file, batch) in self.rows_of(&observations, &observers).await? {
                scan(&mut best, &batch, &file, Some(&open))?;
            }
        }
        Ok(best.into_iter().map(|b| b.map(|(_, location)| location)).collect())
    }

    /// The days the store holds observations of, oldest first.
    async fn observation_days(&self) -> DfResult<Vec<NaiveDate>> {
        let mut days: Vec<NaiveDate> = self
            .store
            .list_days(crate::paths::Table::Observations)
            .await
            .map_err(super::external)?
            .into_iter()
            .map(|p| p.day)
            .collect();
        days.sort_unstable();
        Ok(days)
    }

    /// The rows of `observers` (sorted) in a day's observation files, with every column a
    /// sighting needs (whole pages: the caller filters).
    async fn rows_of(&self, files: &DayFiles, observers: &[String]) -> DfResult<Vec<(Path, RecordBatch)>> {
        let keys: Arc<[String]> = observers.into();
        let mut found = Vec::new();
        for (file, footer) in files {
            let (row_groups, selection, rows) = select(footer, &keys);
            if row_groups.is_empty() {
                continue;
            }
            self.rows.fetch_add(rows, std::sync::atomic::Ordering::Relaxed);
            let reader = self.pages_reader(&file.location, file.size);
            let batches = read_columns(reader, footer.metadata.clone(), &OBSERVATION_COLUMNS, |builder| {
                builder.with_row_groups(row_groups).with_row_selection(selection)
            })
            .await?;
            found.extend(batches.into_iter().map(|b| (file.location.clone(), b)));
        }
        Ok(found)
    }

    /// Every row of a day's observation files (a day the companions do not cover).
    async fn rows_of_all(&self, files: &DayFiles) -> DfResult<Vec<(Path, RecordBatch)>> {
        let mut found = Vec::new();
        for (file, footer) in files {
            self.rows
                .fetch_add(footer.num_rows() as u64, std::sync::atomic::Ordering::Relaxed);
            let reader = self.pages_reader(&file.location, file.size);
            let batches =
                read_columns(reader, footer.metadata.clone(), &OBSERVATION_COLUMNS, |builder| builder).await?;
            found.extend(batches.into_iter().map(|b| (file.location.clone(), b)));
        }
        Ok(found)
    }
}
