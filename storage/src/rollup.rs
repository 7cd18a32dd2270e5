//! Rollups for public-health analysts, kept current from the rows a flush writes rather than
//! by rescanning days (issue 16; the first piece: the contact rollup's arithmetic).
//!
//! [`ContactPartials`] folds sightings, each already resolved to the registered device it
//! heard, into partial rows ([`proxima_engine::schema::CONTACT_PARTIALS`]): per hour and
//! 4-character geohash cell, the sightings, the close ones (15 weighted minutes or more by
//! `exposure_risk`) and a sketch of the devices on either side. Partial rows of one key add
//! up (sums, merged sketches), so a flush only has to fold its own rows, and its rows of
//! the rollup equal what the SQL reference ([`CONTACT_PARTIALS_SQL`], over the `encounters`
//! view) gives for the same sightings. Not yet here: writing them at each flush, with the
//! sightings of stored rows that new devices or GAEN keys resolve (see the note).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use proxima_engine::schema;
use proxima_udfs::ProximaOptions;
use proxima_udfs::risk::weighted_minutes;
use proxima_udfs::sketch::Sketcher;

use crate::error::Result;

/// Characters of a geohash that make a rollup cell (about 39 × 20 km).
pub const CELL_CHARS: usize = 4;

/// Weighted minutes (`exposure_risk`) from which a sighting is a close contact.
pub const CLOSE_CONTACT_MINUTES: f64 = 15.0;

/// The contact rollup's partial rows of a set of sightings, computed from the raw tables:
/// the reference its incremental maintenance must equal.
pub const CONTACT_PARTIALS_SQL: &str = "SELECT date_trunc('hour', at) AS hour, substr(location, 1, 4) AS cell, \
     count(*) FILTER (WHERE a_heard) AS sightings, \
     count(*) FILTER (WHERE a_heard AND exposure_risk(duration_s, rssi, tx_power) >= 15) AS close_contacts, \
     hll_sketch(a) AS devices \
     FROM encounters WHERE location IS NOT NULL GROUP BY 1, 2";

const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// One sighting of a registered device, resolved.
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
    /// The observer's geohash; a sighting without one is in no cell.
    pub location: Option<&'a str>,
}

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

    /// Whether no sighting was folded in.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The partial rows, one per hour and cell, in that order.
    pub fn to_batch(&self) -> Result<RecordBatch> {
        let hours =
            TimestampMicrosecondArray::from_iter_values(self.by_key.keys().map(|(hour, _)| *hour)).with_timezone("UTC");
        let cells = StringArray::from_iter_values(self.by_key.keys().map(|(_, cell)| cell));
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
            "SELECT CAST(hour AS BIGINT), cell, sightings, close_contacts, hll_count(devices) FROM ({CONTACT_PARTIALS_SQL}) ORDER BY 1, 2"
        );
        let reference = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let mut expected = Vec::new();
        for batch in &reference {
            for row in 0..batch.num_rows() {
                expected.push((
                    batch.column(0).as_primitive::<Int64Type>().value(row),
                    batch.column(1).as_string::<i32>().value(row).to_string(),
                    batch.column(2).as_primitive::<Int64Type>().value(row),
                    batch.column(3).as_primitive::<Int64Type>().value(row),
                    batch.column(4).as_primitive::<Int64Type>().value(row),
                ));
            }
        }
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
}
