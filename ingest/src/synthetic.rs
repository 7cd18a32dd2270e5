//! A synthetic but realistic population, written straight into the store.
//!
//! Devices live in households of 2 to 5, most go to a workplace or school of
//! 10 to 50 on weekdays, and everyone meets strangers in transit. Each day a
//! device takes part in about `contacts_per_day` encounters; an encounter is
//! usually heard by both phones, so there are about `devices ×
//! contacts_per_day` observations a day, plus a few sightings of unregistered
//! MACs. Durations and signal strengths follow the setting: long and strong
//! at home, medium at work, short and weak in transit. The same seed and
//! start day give the same population, byte for byte, whatever the thread count.
//!
//! What a phone broadcasts, and so what others record hearing, follows
//! [`Broadcast`]: a static MAC, the server's rotating identifier of the sighting's
//! epoch (sealed with the server's keys, as `GET /v1/ephemeral-ids` would have issued
//! it), or the GAEN RPI of the sighting's 10-minute interval under the phone's key of
//! the day (each key written to `exposure_keys`, as `POST /v1/exposure-keys` would),
//! or a mix. Only the encoding differs: the same seed gives the same encounters.
//!
//! Cases and temperature readings come too (`case_batches`): a background incidence with
//! spread within households, most suspected cases opened by a fever at the device's site,
//! confirmations a day later, and screenings at sites on weekdays; each placed in its
//! device's cell from the stored sightings, as a flush places them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{ArrayRef, Int16Array, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use chrono::{Datelike, Days, NaiveDate, Weekday};
use proxima_engine::ephemeral::Identifiers;
use proxima_engine::{Store, Table, ids};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::info;

use crate::error::{Error, Result};
use proxima_storage::{CommitSummary, PartitionWriter};

const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
/// Rows per record batch handed to the Parquet writer.
const BATCH_ROWS: usize = 256 * 1024;

/// What phones broadcast.
#[derive(Debug, Clone, Default)]
pub enum Broadcast {
    /// A static MAC each (registered in `devices`).
    #[default]
    Mac,
    /// The server's rotating identifiers, sealed with these keys (no MAC registered).
    Ephemeral(Arc<Identifiers>),
    /// GAEN RPIs of a key a day, registered in `exposure_keys` (no MAC registered).
    Rpi,
    /// Each of the three, by device: MAC, identifier, RPI, MAC, …
    Mixed(Arc<Identifiers>),
}

/// How one device broadcasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    Mac,
    Ephemeral,
    Rpi,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct PopulationSpec {
    /// What phones broadcast.
    pub broadcast: Broadcast,
    /// Number of devices.
    pub devices: u32,
    /// Number of days.
    pub days: u32,
    /// Average encounters a device takes part in per day.
    pub contacts_per_day: u32,
    /// Random seed.
    pub seed: u64,
    /// The first day.
    pub start: NaiveDate,
}

/// What was generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GeneratedPopulation {
    /// Devices registered.
    pub devices: u64,
    /// Observations written.
    pub observations: u64,
    /// Files written.
    pub written: CommitSummary,
}

impl PopulationSpec {
    fn check(&self) -> Result<()> {
        let refuse = |m: &str| Err(Error::InvalidArgument(m.to_string()));
        if self.devices < 2 {
            return refuse("--devices must be at least 2");
        }
        if self.devices > 100_000_000 {
            return refuse("--devices must be at most 100000000");
        }
        if self.days == 0 || self.days > 3660 {
            return refuse("--days must be between 1 and 3660");
        }
        if self.contacts_per_day > 1000 {
            return refuse("--contacts-per-day must be at most 1000");
        }
        if self.start.checked_add_days(Days::new(u64::from(self.days))).is_none() {
            return refuse("--start is too late for that many --days");
        }
        Ok(())
    }
}

/// Where a device lives and works, fixed for the whole run.
struct Population {
    uuids: Vec<String>,
    macs: Vec<String>,
    /// How each device broadcasts.
    models: Vec<Model>,
    /// The keys rotating identifiers are sealed with (for [`Model::Ephemeral`]).
    identifiers: Option<Arc<Identifiers>>,
    seed: u64,
    /// tx_power each phone model advertises (None: the model does not say).
    tx_power: Vec<Option<i16>>,
    households: Vec<Vec<u32>>,
    household_home: Vec<u32>,
    /// Members of each workplace or school.
    sites: Vec<Vec<u32>>,
    /// The site of each device, if it has one.
    site_of: Vec<Option<u32>>,
    /// Geohashes (6 characters) of homes, then sites, then transit places.
    places: Vec<String>,
    registered_at: i64,
}

/// Generates a population into an empty store; `on_day` is called as each day is written.
pub async fn generate(
    writer: &PartitionWriter,
    spec: &PopulationSpec,
    on_day: impl Fn(NaiveDate),
) -> Result<GeneratedPopulation> {
    spec.check()?;
    writer.recover().await?;
    refuse_non_empty(writer.store()).await?;
    let started = std::time::Instant::now();
    let population = Arc::new(build_population(spec));
    let mut transaction = writer.begin();
    transaction
        .write_file(Table::Devices, None, &[devices_batch(&population)?])
        .await?;

    // Days are generated on blocking threads (each with its own seeded RNG, so the
    // result does not depend on scheduling) and written here, in order.
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(spec.days as usize);
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<(u32, DayRows)>(threads);
    let next_day = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..threads {
        let (sender, next_day, population, spec) = (
            sender.clone(),
            Arc::clone(&next_day),
            Arc::clone(&population),
            spec.clone(),
        );
        workers.push(tokio::task::spawn_blocking(move || -> Result<()> {
            loop {
                let day = next_day.fetch_add(1, Ordering::Relaxed) as u32;
                if day >= spec.days {
                    return Ok(());
                }
                let batches = day_batches(&population, &spec, day)?;
                if sender.blocking_send((day, batches)).is_err() {
                    return Ok(()); // the writer stopped on an error it reports itself
                }
            }
        }));
    }
    drop(sender);
    let mut pending = std::collections::BTreeMap::new();
    let mut observations = 0u64;
    let mut write_next = 0u32;
    let mut write_result = Ok(());
    while let Some((day, rows)) = receiver.recv().await {
        pending.insert(day, rows);
        while let Some(rows) = pending.remove(&write_next) {
            let date = spec.start + Days::new(u64::from(write_next));
            observations += rows.observations.iter().map(|b| b.num_rows() as u64).sum::<u64>();
            write_result = transaction
                .write_file(Table::Observations, Some(date), &rows.observations)
                .await;
            if write_result.is_ok()
                && let Some(keys) = rows.exposure_keys
            {
                write_result = transaction.write_file(Table::ExposureKeys, Some(date), &[keys]).await;
            }
            if write_result.is_err() {
                break;
            }
            on_day(date);
            write_next += 1;
        }
        if write_result.is_err() {
            break;
        }
    }
    drop(receiver);
    for worker in workers {
        worker
            .await
            .map_err(|e| Error::InvalidArgument(format!("generator thread failed: {e}")))??;
    }
    if let Err(e) = write_result {
        transaction.abort().await?;
        return Err(e.into());
    }
    let mut written = transaction.commit().await?;
    // Cases and temperature readings, placed in their devices' cells as a flush would
    // place them: from the sightings just stored.
    let mut events = proxima_storage::wal::Buffer::default();
    let (cases, readings) = case_batches(&population, spec)?;
    events.tables.insert(Table::Cases, vec![cases]);
    events.tables.insert(Table::TemperatureReadings, vec![readings]);
    let index = proxima_engine::index::IndexReader::new(writer.store().clone(), None);
    proxima_storage::rollup::place_in_cells(&index, &mut events).await?;
    let mut transaction = writer.begin();
    for (&table, batches) in &events.tables {
        let all = arrow::compute::concat_batches(&table.file_schema(), batches)?;
        for (day, rows) in proxima_storage::layout::split_by_day(table, &all)? {
            let rows = proxima_storage::layout::sort_for_storage(table, &rows)?;
            if let Err(e) = transaction.write_file(table, day, &[rows]).await {
                transaction.abort().await?;
                return Err(e.into());
            }
        }
    }
    let events_written = transaction.commit().await?;
    written.files += events_written.files;
    written.rows += events_written.rows;
    written.bytes += events_written.bytes;
    info!(
        devices = spec.devices,
        observations,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "generated population"
    );
    Ok(GeneratedPopulation {
        devices: u64::from(spec.devices),
        observations,
        written,
    })
}

/// A case's chance to arise in a device on a given day, not counting its household's.
const CASE_PER_DEVICE_DAY: f64 = 1.0 / 4_000.0;
/// The chance a household member of a case reported in the last three days reports one too.
const HOUSEHOLD_ATTACK: f64 = 0.08;
/// The chance a suspected case is confirmed, a day later.
const CONFIRMED: f64 = 0.6;
/// The chance a device with a workplace or school has its temperature taken there on a weekday.
const SCREENED: f64 = 0.02;

/// Suspected cases (most opened by a fever reading at the device's site), their
/// confirmations a day later and temperature readings, over the population's days: a
/// background incidence plus spread within households, so that cases cluster. A case's
/// alert counts are what tracing would roughly find (its household members high, up to
/// ten colleagues medium), not a trace; `after_alert` says a household member's case was
/// reported within the 48 hours before. Cells are left to [`proxima_storage::rollup::place_in_cells`].
fn case_batches(population: &Population, spec: &PopulationSpec) -> Result<(RecordBatch, RecordBatch)> {
    let mut rng = rng_for(spec.seed, u64::MAX);
    let n = population.uuids.len();
    // The latest case (µs) of each household.
    let mut household_case: Vec<Option<i64>> = vec![None; population.households.len()];
    let mut had_case = vec![false; n];
    // (device, status, reported_at, alerts_high, alerts_medium, after_alert)
    let mut cases: Vec<(u32, &str, i64, i32, i32, bool)> = Vec::new();
    // (device, measured_at, celsius, site)
    let mut readings: Vec<(u32, i64, f64, u32)> = Vec::new();
    for day in 0..spec.days {
        let date = spec.start + Days::new(u64::from(day));
        let midnight = date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp()
            * MICROS_PER_SECOND;
        let weekday = !matches!(date.weekday(), Weekday::Sat | Weekday::Sun);
        for device in 0..n as u32 {
            let household = population.household_home[device as usize] as usize;
            let recent = household_case[household]
                .filter(|&at| at < midnight && midnight - at <= 3 * SECONDS_PER_DAY * MICROS_PER_SECOND);
            let chance = CASE_PER_DEVICE_DAY + if recent.is_some() { HOUSEHOLD_ATTACK } else { 0.0 };
            let site = population.site_of[device as usize];
            let screened = weekday && site.is_some() && rng.random_bool(SCREENED);
            if had_case[device as usize] || !rng.random_bool(chance) {
                if let (true, Some(site)) = (screened, site) {
                    let at = midnight + rng.random_range(8 * 3_600..9 * 3_600) * MICROS_PER_SECOND;
                    readings.push((device, at, 36.2 + f64::from(rng.random_range(0..13u8)) / 10.0, site));
                }
                continue;
            }
            had_case[device as usize] = true;
            let at = midnight + rng.random_range(8 * 3_600..20 * 3_600) * MICROS_PER_SECOND;
            let after_alert = recent.is_some_and(|r| at - r <= 2 * SECONDS_PER_DAY * MICROS_PER_SECOND);
            let high = population.households[household].len() as i32 - 1;
            let medium = site.map_or(0, |s| (population.sites[s as usize].len() as i32 - 1).min(10));
            if let Some(site) = site.filter(|_| weekday) {
                // Opened by a fever at the site's station.
                readings.push((
                    device,
                    at - MICROS_PER_SECOND,
                    38.0 + f64::from(rng.random_range(1..16u8)) / 10.0,
                    site,
                ));
            }
            cases.push((device, "suspected", at, high, medium, after_alert));
            household_case[household] = Some(at);
            if day + 1 < spec.days && rng.random_bool(CONFIRMED) {
                cases.push((
                    device,
                    "confirmed",
                    at + SECONDS_PER_DAY * MICROS_PER_SECOND,
                    0,
                    0,
                    after_alert,
                ));
            }
        }
    }
    let uuid = |d: u32| population.uuids[d as usize].as_str();
    let times = |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as ArrayRef;
    let case_ids: Vec<String> = (0..cases.len())
        .map(|i| {
            uuid::Builder::from_random_bytes((u128::from(spec.seed) << 64 | i as u128).to_le_bytes())
                .into_uuid()
                .to_string()
        })
        .collect();
    let cases = RecordBatch::try_new(
        Table::Cases.file_schema(),
        vec![
            Arc::new(StringArray::from(case_ids)),
            Arc::new(StringArray::from_iter_values(cases.iter().map(|c| uuid(c.0)))),
            Arc::new(StringArray::from_iter_values(cases.iter().map(|c| c.1))),
            times(cases.iter().map(|c| c.2).collect()),
            Arc::new(StringArray::from_iter_values(cases.iter().map(|_| "generated"))),
            Arc::new(Int32Array::from_iter_values(cases.iter().map(|c| c.3))),
            Arc::new(Int32Array::from_iter_values(cases.iter().map(|c| c.4))),
            Arc::new(StringArray::new_null(cases.len())),
            Arc::new(arrow::array::BooleanArray::from_iter(cases.iter().map(|c| Some(c.5)))),
        ],
    )?;
    let readings = RecordBatch::try_new(
        Table::TemperatureReadings.file_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(readings.iter().map(|r| uuid(r.0)))),
            times(readings.iter().map(|r| r.1).collect()),
            Arc::new(arrow::array::Float64Array::from_iter_values(
                readings.iter().map(|r| r.2),
            )),
            Arc::new(StringArray::from_iter_values(
                readings.iter().map(|r| format!("site-{}", r.3)),
            )),
            Arc::new(StringArray::from_iter_values(readings.iter().map(|_| "generated"))),
            Arc::new(StringArray::new_null(readings.len())),
        ],
    )?;
    Ok((cases, readings))
}

async fn refuse_non_empty(store: &Store) -> Result<()> {
    for table in Table::ALL {
        if !store.is_empty(table).await? {
            return Err(Error::InvalidArgument(format!(
                "the store at {store} already holds {table}: generate writes a fresh population, \
                 so give it an empty store (another --data) or delete this one"
            )));
        }
    }
    Ok(())
}

fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

fn build_population(spec: &PopulationSpec) -> Population {
    let mut rng = rng_for(spec.seed, 0);
    let n = spec.devices as usize;

    let mut uuids: Vec<String> = (0..n)
        .map(|_| uuid::Builder::from_random_bytes(rng.random()).into_uuid().to_string())
        .collect();
    // Devices are numbered in UUID order, so rows sorted by number are sorted by observer.
    uuids.sort_unstable();
    uuids.dedup();
    while uuids.len() < n {
        // A repeated random UUID: astronomically rare, but keep the count exact.
        uuids.push(uuid::Builder::from_random_bytes(rng.random()).into_uuid().to_string());
        uuids.sort_unstable();
        uuids.dedup();
    }
    let mut seen = HashSet::with_capacity(n);
    let macs = (0..n)
        .map(|_| {
            loop {
                let mac = random_mac(&mut rng);
                if seen.insert(mac.clone()) {
                    break mac;
                }
            }
        })
        .collect();
    const MODELS: [Option<i16>; 6] = [Some(-8), Some(-4), Some(0), Some(4), Some(8), None];
    let tx_power = (0..n).map(|_| MODELS[rng.random_range(0..MODELS.len())]).collect();
    let (models, identifiers) = match &spec.broadcast {
        Broadcast::Mac => (vec![Model::Mac; n], None),
        Broadcast::Ephemeral(ids) => (vec![Model::Ephemeral; n], Some(Arc::clone(ids))),
        Broadcast::Rpi => (vec![Model::Rpi; n], None),
        Broadcast::Mixed(ids) => (
            (0..n)
                .map(|i| [Model::Mac, Model::Ephemeral, Model::Rpi][i % 3])
                .collect(),
            Some(Arc::clone(ids)),
        ),
    };

    let mut order: Vec<u32> = (0..spec.devices).collect();
    order.shuffle(&mut rng);
    let households = partition(&order, 2..=5, &mut rng);
    order.shuffle(&mut rng);
    // About one in five has no workplace or school (retired, at home, unemployed).
    let with_site: Vec<u32> = order.iter().copied().filter(|_| rng.random_bool(0.8)).collect();
    let sites = partition(&with_site, 10..=50, &mut rng);
    let mut site_of = vec![None; n];
    for (s, members) in sites.iter().enumerate() {
        for &m in members {
            site_of[m as usize] = Some(s as u32);
        }
    }
    let mut household_home = vec![0; n];
    for (h, members) in households.iter().enumerate() {
        for &m in members {
            household_home[m as usize] = h as u32;
        }
    }
    // One place per home and site, and a few hundred transit places (stations, buses, shops).
    let transit_places = 500;
    let places = (0..households.len() + sites.len() + transit_places)
        .map(|_| geohash6(rng.random_range(51.30..51.70), rng.random_range(-0.50..0.30)))
        .collect();
    let registered_at = (spec
        .start
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp()
        - 30 * SECONDS_PER_DAY)
        * MICROS_PER_SECOND;
    Population {
        uuids,
        macs,
        models,
        identifiers,
        seed: spec.seed,
        tx_power,
        households,
        household_home,
        sites,
        site_of,
        places,
        registered_at,
    }
}

/// Splits `members` into consecutive groups with sizes drawn from `sizes`.
fn partition(members: &[u32], sizes: std::ops::RangeInclusive<usize>, rng: &mut ChaCha8Rng) -> Vec<Vec<u32>> {
    let mut groups = Vec::new();
    let mut rest = members;
    while !rest.is_empty() {
        let size = rng.random_range(sizes.clone()).min(rest.len());
        let (group, tail) = rest.split_at(size);
        groups.push(group.to_vec());
        rest = tail;
    }
    groups
}

fn random_mac(rng: &mut ChaCha8Rng) -> String {
    let b: [u8; 6] = rng.random();
    format!(
        "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
        b[0], b[1], b[2], b[3], b[4], b[5]
    )
}

/// Encodes a latitude/longitude as a 6-character geohash.
fn geohash6(lat: f64, lon: f64) -> String {
    let (mut lat_range, mut lon_range) = ((-90.0, 90.0), (-180.0, 180.0));
    let mut hash = String::with_capacity(6);
    let (mut bits, mut value, mut even) = (0, 0usize, true);
    while hash.len() < 6 {
        let (range, coordinate): (&mut (f64, f64), f64) = if even {
            (&mut lon_range, lon)
        } else {
            (&mut lat_range, lat)
        };
        let mid = (range.0 + range.1) / 2.0;
        value <<= 1;
        if coordinate >= mid {
            value |= 1;
            range.0 = mid;
        } else {
            range.1 = mid;
        }
        even = !even;
        bits += 1;
        if bits == 5 {
            hash.push(ids::GEOHASH_ALPHABET[value] as char);
            (bits, value) = (0, 0);
        }
    }
    hash
}

/// One sighting before it becomes a row.
struct Sighting {
    observer: u32,
    /// A device number, or `UNKNOWN | n` for the n-th unregistered MAC of the day.
    observed: u32,
    at_s: i64,
    duration_s: i32,
    rssi: Option<i16>,
    tx_power: Option<i16>,
    place: Option<u32>,
}

const UNKNOWN: u32 = 1 << 31;

#[derive(Clone, Copy)]
struct Setting {
    /// Earliest and latest start, in hours of the day.
    hours: (i64, i64),
    /// Shortest and longest duration, in minutes.
    minutes: (i64, i64),
    /// Strongest and weakest RSSI.
    rssi: (i16, i16),
}

const HOME: Setting = Setting {
    hours: (17, 23),
    minutes: (30, 300),
    rssi: (-65, -45),
};
const WORK: Setting = Setting {
    hours: (8, 17),
    minutes: (5, 120),
    rssi: (-80, -55),
};
const TRANSIT: Setting = Setting {
    hours: (6, 21),
    minutes: (1, 25),
    rssi: (-95, -65),
};

/// One day's rows: its observations, and the GAEN keys phones registered for it.
#[derive(Debug, PartialEq)]
struct DayRows {
    observations: Vec<RecordBatch>,
    exposure_keys: Option<RecordBatch>,
}

/// The temporary exposure key of device `device` on day `day` of the run: derived from the
/// seed, so that the same seed gives the same keys.
fn tek(seed: u64, device: u32, day: u32) -> [u8; 16] {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"proxima synthetic TEK");
    hasher.update(seed.to_be_bytes());
    hasher.update(device.to_be_bytes());
    hasher.update(day.to_be_bytes());
    let digest = hasher.finalize();
    digest[..16].try_into().expect("SHA-256 has 32 bytes")
}

fn day_batches(population: &Population, spec: &PopulationSpec, day: u32) -> Result<DayRows> {
    let mut rng = rng_for(spec.seed, 1 + u64::from(day));
    let date = spec.start + Days::new(u64::from(day));
    let midnight = date
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp();
    let weekday = !matches!(date.weekday(), Weekday::Sat | Weekday::Sun);
    let n = spec.devices;
    let k = f64::from(spec.contacts_per_day);
    let mut sightings: Vec<Sighting> = Vec::with_capacity((f64::from(n) * (k + 1.0) * 1.1) as usize);
    let homes = population.households.len() as u32;
    let sites = population.sites.len() as u32;
    let transit_places = population.places.len() as u32 - homes - sites;

    let meet = |rng: &mut ChaCha8Rng, sightings: &mut Vec<Sighting>, a: u32, b: u32, setting: Setting, place: u32| {
        let at_s = midnight + rng.random_range(setting.hours.0 * 3600..setting.hours.1 * 3600);
        let duration_s = (rng.random_range(setting.minutes.0 * 60..=setting.minutes.1 * 60)) as i32;
        // Each phone hears the other most of the time; scans miss some.
        for (observer, observed) in [(a, b), (b, a)] {
            if rng.random_bool(0.93) {
                let rssi = rng
                    .random_bool(0.98)
                    .then(|| rng.random_range(setting.rssi.0..=setting.rssi.1));
                sightings.push(Sighting {
                    observer,
                    observed,
                    at_s: at_s + rng.random_range(0..30),
                    duration_s,
                    rssi,
                    tx_power: population.tx_power[observed as usize],
                    place: rng.random_bool(0.8).then_some(place),
                });
            }
        }
    };

    // Home: every pair of a household, every evening.
    for (h, members) in population.households.iter().enumerate() {
        for (i, &a) in members.iter().enumerate() {
            for &b in &members[i + 1..] {
                meet(&mut rng, &mut sightings, a, b, HOME, h as u32);
            }
        }
    }
    for a in 0..n {
        let at_home = (population.households[population.household_home[a as usize] as usize].len() - 1) as f64;
        let mut left = (k - at_home).max(0.0);
        // Work or school on weekdays: about half of the remaining encounters.
        if let (true, Some(site)) = (weekday, population.site_of[a as usize]) {
            let colleagues = &population.sites[site as usize];
            let wanted = draw_count(&mut rng, left * 0.5 / 2.0);
            for _ in 0..wanted {
                let b = colleagues[rng.random_range(0..colleagues.len())];
                if b != a {
                    meet(&mut rng, &mut sightings, a, b, WORK, homes + site);
                }
            }
            left *= 0.5;
        }
        // Transit: strangers from the whole population. Each encounter counts for both
        // devices, so a device starts half of its encounters.
        for _ in 0..draw_count(&mut rng, left / 2.0) {
            let b = rng.random_range(0..n);
            if b != a {
                let place = homes + sites + rng.random_range(0..transit_places);
                meet(&mut rng, &mut sightings, a, b, TRANSIT, place);
            }
        }
        // A few sightings of phones that are not registered (other apps, visitors).
        if rng.random_bool(0.05) {
            sightings.push(Sighting {
                observer: a,
                observed: UNKNOWN | rng.random_range(0..UNKNOWN),
                at_s: midnight + rng.random_range(0..SECONDS_PER_DAY),
                duration_s: rng.random_range(10..600),
                rssi: Some(rng.random_range(-100..=-70)),
                tx_power: None,
                place: None,
            });
        }
    }
    // Storage order: by observer (device numbers follow UUID order), then time.
    sightings.sort_unstable_by_key(|s| (s.observer, s.at_s, s.observed));
    // Times must stay within the day, or the row would belong to another partition.
    let last_second = midnight + SECONDS_PER_DAY - 1;
    // Today's key of each GAEN phone (the day's first interval on, 144 intervals).
    let rpi_devices: Vec<u32> = (0..n)
        .filter(|&d| population.models[d as usize] == Model::Rpi)
        .collect();
    let mut rpiks = vec![None; n as usize];
    let mut teks = Vec::with_capacity(rpi_devices.len());
    for &d in &rpi_devices {
        let key = tek(population.seed, d, day);
        rpiks[d as usize] = Some(proxima_udfs::gaen::rpik(&key));
        teks.push(hex::encode(key));
    }
    let exposure_keys = (!rpi_devices.is_empty())
        .then(|| exposure_keys_batch(population, &rpi_devices, teks, midnight))
        .transpose()?;
    let observations = sightings
        .chunks(BATCH_ROWS)
        .map(|chunk| {
            sightings_batch(
                population,
                chunk,
                last_second,
                &rpiks,
                matches!(spec.broadcast, Broadcast::Mac),
            )
        })
        .collect::<Result<_>>()?;
    Ok(DayRows {
        observations,
        exposure_keys,
    })
}

fn exposure_keys_batch(
    population: &Population,
    devices: &[u32],
    teks: Vec<String>,
    midnight: i64,
) -> Result<RecordBatch> {
    let n = devices.len();
    let micros = midnight * MICROS_PER_SECOND;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            devices.iter().map(|&d| population.uuids[d as usize].as_str()),
        )),
        Arc::new(StringArray::from(teks)),
        Arc::new(TimestampMicrosecondArray::from(vec![micros; n]).with_timezone("UTC")),
        Arc::new(Int32Array::from(vec![
            proxima_udfs::gaen::DEFAULT_ROLLING_PERIOD as i32;
            n
        ])),
        Arc::new(TimestampMicrosecondArray::from(vec![micros; n]).with_timezone("UTC")),
    ];
    Ok(RecordBatch::try_new(Table::ExposureKeys.file_schema(), columns)?)
}

/// A count with mean `mean`: its integer part plus one with the fractional part's probability.
fn draw_count(rng: &mut ChaCha8Rng, mean: f64) -> u32 {
    let whole = mean.floor();
    whole as u32 + u32::from(rng.random_bool((mean - whole).clamp(0.0, 1.0)))
}

/// What a phone that heard device `device` at `at_s` (unix seconds) recorded.
fn broadcast_of(population: &Population, device: u32, at_s: i64, rpiks: &[Option<[u8; 16]>]) -> String {
    let d = device as usize;
    match population.models[d] {
        Model::Mac => population.macs[d].clone(),
        Model::Ephemeral => {
            let ids = population
                .identifiers
                .as_ref()
                .expect("identifier keys come with the model");
            let at = chrono::DateTime::from_timestamp(at_s, 0).unwrap_or_default();
            let handle = proxima_engine::ephemeral::handle_of(&population.uuids[d]).unwrap_or(0);
            let id = ids
                .keys()
                .issue(handle, proxima_engine::ephemeral::epoch_start(at, ids.epoch()));
            proxima_engine::ephemeral::hex(&id)
        }
        Model::Rpi => {
            let rpik = rpiks[d].expect("every GAEN phone has a key of the day");
            let interval = u32::try_from(at_s.div_euclid(proxima_udfs::gaen::INTERVAL_SECONDS)).unwrap_or(0);
            hex::encode(proxima_udfs::gaen::rpi(&rpik, interval))
        }
    }
}

fn sightings_batch(
    population: &Population,
    chunk: &[Sighting],
    last_second: i64,
    rpiks: &[Option<[u8; 16]>],
    macs_only: bool,
) -> Result<RecordBatch> {
    let observer: StringArray = chunk
        .iter()
        .map(|s| Some(population.uuids[s.observer as usize].as_str()))
        .collect();
    let observed: StringArray = chunk
        .iter()
        .map(|s| {
            Some(if s.observed & UNKNOWN == 0 {
                broadcast_of(population, s.observed, s.at_s.min(last_second), rpiks)
            } else if macs_only {
                let v = s.observed & !UNKNOWN;
                format!(
                    "02:00:{:02X}:{:02X}:{:02X}:{:02X}",
                    v >> 24,
                    (v >> 16) & 0xff,
                    (v >> 8) & 0xff,
                    v & 0xff
                )
            } else {
                // Another app's identifier: 16 bytes no key of ours derives.
                format!(
                    "{:032x}",
                    u128::from(s.observed & !UNKNOWN).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
                )
            })
        })
        .collect();
    let observed_at =
        TimestampMicrosecondArray::from_iter_values(chunk.iter().map(|s| s.at_s.min(last_second) * MICROS_PER_SECOND))
            .with_timezone("UTC");
    let duration = Int32Array::from_iter_values(chunk.iter().map(|s| s.duration_s));
    let rssi: Int16Array = chunk.iter().map(|s| s.rssi).collect();
    let tx_power: Int16Array = chunk.iter().map(|s| s.tx_power).collect();
    let location: StringArray = chunk
        .iter()
        .map(|s| s.place.map(|p| population.places[p as usize].as_str()))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(observer),
        Arc::new(observed),
        Arc::new(observed_at),
        Arc::new(duration),
        Arc::new(rssi),
        Arc::new(tx_power),
        Arc::new(location),
    ];
    Ok(RecordBatch::try_new(Table::Observations.file_schema(), columns)?)
}

fn devices_batch(population: &Population) -> Result<RecordBatch> {
    let uuids: StringArray = population.uuids.iter().map(|u| Some(u.as_str())).collect();
    // Phones that broadcast identifiers or RPIs register no MAC.
    let macs: StringArray = population
        .macs
        .iter()
        .zip(&population.models)
        .map(|(m, model)| (*model == Model::Mac).then_some(m.as_str()))
        .collect();
    let registered =
        TimestampMicrosecondArray::from_iter_values(population.uuids.iter().map(|_| population.registered_at))
            .with_timezone("UTC");
    let columns: Vec<ArrayRef> = vec![Arc::new(uuids), Arc::new(macs), Arc::new(registered)];
    Ok(RecordBatch::try_new(Table::Devices.file_schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geohash_matches_a_known_point() {
        // The classic example: 57.64911, 10.40744 is u4pruy…
        assert_eq!(geohash6(57.64911, 10.40744), "u4pruy");
    }

    #[test]
    fn same_seed_same_population() {
        let spec = PopulationSpec {
            broadcast: Default::default(),
            devices: 200,
            days: 2,
            contacts_per_day: 10,
            seed: 7,
            start: NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(),
        };
        let a = build_population(&spec);
        let b = build_population(&spec);
        assert_eq!(a.uuids, b.uuids);
        assert_eq!(a.macs, b.macs);
        let day_a = day_batches(&a, &spec, 1).unwrap();
        let day_b = day_batches(&b, &spec, 1).unwrap();
        assert_eq!(day_a, day_b);
        let rows: usize = day_a.observations.iter().map(|b| b.num_rows()).sum();
        // About devices × contacts_per_day sightings a day (Monday: work too).
        assert!((1_400..=2_600).contains(&rows), "{rows} sightings");
        for uuid in &a.uuids {
            ids::device_uuid(uuid).unwrap();
        }
    }

    /// The encoding of what phones broadcast changes nothing else: the same seed gives the
    /// same encounters whether phones broadcast MACs or a mix of MACs, rotating identifiers
    /// and GAEN RPIs (resolved by the `encounters` view with the keys and exposure keys).
    #[tokio::test]
    async fn the_same_encounters_whatever_phones_broadcast() {
        use proxima_engine::ephemeral::{DEFAULT_TOLERANCE, IdKeys};
        use proxima_engine::{SessionFactory, SessionOptions};
        let start = NaiveDate::from_ymd_opt(2026, 11, 2).unwrap();
        let keys = IdKeys::generate(start.and_hms_opt(0, 0, 0).unwrap().and_utc());
        let ids = Arc::new(Identifiers::new(
            keys,
            std::time::Duration::from_secs(900),
            DEFAULT_TOLERANCE,
        ));
        let encounters = |broadcast: Broadcast| {
            let ids = Arc::clone(&ids);
            async move {
                let store = Store::in_memory();
                let spec = PopulationSpec {
                    broadcast,
                    devices: 120,
                    days: 2,
                    contacts_per_day: 8,
                    seed: 11,
                    start,
                };
                generate(&PartitionWriter::new(store.clone(), "test"), &spec, |_| {})
                    .await
                    .unwrap();
                let options = SessionOptions {
                    identifiers: Some(ids),
                    ..SessionOptions::default()
                };
                let ctx = SessionFactory::new(store, options).unwrap().session().await.unwrap();
                let sql = "SELECT a, b, at FROM encounters ORDER BY a, b, at";
                let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
                let macs = ctx
                    .sql("SELECT count(*) FROM devices WHERE mac IS NOT NULL")
                    .await
                    .unwrap()
                    .collect()
                    .await
                    .unwrap();
                (
                    arrow::util::pretty::pretty_format_batches(&batches)
                        .unwrap()
                        .to_string(),
                    macs,
                )
            }
        };
        let (by_mac, _) = encounters(Broadcast::Mac).await;
        let (mixed, macs) = encounters(Broadcast::Mixed(Arc::clone(&ids))).await;
        assert!(by_mac.lines().count() > 500, "{by_mac}");
        assert_eq!(mixed, by_mac);
        // One device in three keeps a MAC.
        let macs = arrow::util::pretty::pretty_format_batches(&macs).unwrap().to_string();
        assert!(macs.contains("| 40 "), "{macs}");
    }
}
