//! Erasure on revocation: a revoked device's history removed from the store, provably.
//!
//! A revocation row in `revocations` is a pending erasure. [`erase_revoked`] (run by the
//! Maintainer every `--erasure-interval`, after a flush so that the WAL holds nothing of
//! the devices) takes them all at once: [`Erased::of`] gathers each device and every
//! identifier it was heard by, [`rewrite::erase_everywhere`] rewrites copy-on-write, once
//! for them all, every file that holds one of their rows, table by table in [`ORDER`] (the
//! tables the identifiers are read from last, so a crash part-way leaves them to the next
//! attempt), then each erasure is recorded and, last, their revocation rows go. What is kept of it, in
//! `_erasure/done/<hash>.json` ([`ErasureRecord`]), names the device and its identifiers
//! only by keyed hashes ([`keyed_hash`], with a key only the master key unwraps in an
//! encrypted store), so `proxima erasure status` can say what was rewritten and
//! [`verify::verify`] can prove that no file or WAL segment holds any of them, while the
//! store no longer tells whose history it was. Cases stay, as counts: their device is
//! replaced by a [`pseudonym`].

pub mod rewrite;
pub mod verify;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use proxima_engine::{SessionFactory, Store, Table};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tracing::info;

pub use crate::lease::Lease;
pub use rewrite::{Erased, FolderErasure, erase_everywhere, erase_in_folder};

use crate::error::{Error, Result};
use crate::writer::PartitionWriter;

/// The folder of the store that holds erasure records.
pub const ERASURE_FOLDER: &str = "_erasure";
/// The `format` of an erasure record.
const RECORD_FORMAT: &str = "proxima-erasure/1";

/// The order tables are rewritten in: `exposure_keys` and `devices`, which [`Erased::of`]
/// reads the device's identifiers from, come last, and `revocations` (the pending erasure
/// itself) is not among them: it goes after the record is written.
pub const ORDER: [Table; 9] = [
    Table::Observations,
    Table::ObservedIndex,
    Table::Cases,
    Table::Alerts,
    Table::TemperatureReadings,
    Table::UploadKeys,
    Table::DeviceCredentials,
    Table::ExposureKeys,
    Table::Devices,
];

/// The keyed hash erasure records name a device or an identifier by: HMAC-SHA-256 under
/// the store's erasure hash key ([`crate::keys::erasure_hash_key`]), 128 bits, hex.
pub fn keyed_hash(key: &[u8; 32], text: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"proxima erasure hash\0");
    mac.update(text.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// The UUID an erased device's cases name instead of it: derived from the device by the
/// keyed hash (so one device's cases keep naming one pseudonym), a version 8 UUID, which
/// no registration makes.
pub fn pseudonym(key: &[u8; 32], device: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"proxima erasure pseudonym\0");
    mac.update(device.as_bytes());
    let bytes: [u8; 16] = mac.finalize().into_bytes()[..16]
        .try_into()
        .expect("HMAC-SHA-256 has 32 bytes");
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// What one table's rewrite did, as a record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableErasure {
    /// The table.
    pub table: String,
    /// Files rewritten, files deleted, rows removed (pseudonymised, in `cases`).
    #[serde(flatten)]
    pub done: FolderErasure,
}

/// A completed erasure, as `_erasure/done/<device hash>.json` keeps it: nothing in it names
/// the device but by keyed hashes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErasureRecord {
    format: String,
    /// The device's keyed hash.
    pub device: String,
    /// When the device was revoked (its first revocation).
    pub revoked_at: DateTime<Utc>,
    /// When its rows were rewritten (the last attempt, if a crash made it run twice).
    pub erased_at: DateTime<Utc>,
    /// What each table's rewrite did.
    pub tables: Vec<TableErasure>,
    /// The keyed hashes of every identifier it was heard by (its MAC, rotating identifiers,
    /// RPIs), for [`verify::verify`].
    pub heard_as: BTreeSet<String>,
}

impl ErasureRecord {
    /// Rows rewritten in all tables.
    pub fn rows(&self) -> u64 {
        self.tables.iter().map(|t| t.done.rows).sum()
    }

    /// Files rewritten or deleted in all tables.
    pub fn files(&self) -> usize {
        self.tables.iter().map(|t| t.done.rewritten + t.done.deleted).sum()
    }
}

/// A revoked device whose erasure has not run yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The device.
    pub device: String,
    /// When it was revoked (first revocation).
    pub revoked_at: DateTime<Utc>,
}

fn records_prefix(store: &Store) -> Path {
    store.root().clone().join(ERASURE_FOLDER).join("done")
}

fn record_path(store: &Store, device_hash: &str) -> Path {
    records_prefix(store).join(format!("{device_hash}.json"))
}

/// The revoked devices whose erasure has not run (their revocation rows are still stored;
/// a revocation still in the WAL shows after the next flush).
pub async fn pending(factory: &SessionFactory) -> Result<Vec<Pending>> {
    let ctx = factory.session().await?;
    let batches = ctx
        .sql("SELECT device_uuid, min(revoked_at) FROM revocations GROUP BY device_uuid ORDER BY 2, 1")
        .await?
        .collect()
        .await?;
    let mut found = Vec::new();
    for batch in batches {
        use arrow::array::AsArray;
        let devices = batch.column(0).as_string::<i32>();
        let times = batch
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        for i in 0..batch.num_rows() {
            let revoked_at = DateTime::from_timestamp_micros(times.value(i))
                .ok_or_else(|| Error::Invalid(format!("revocation of {} at an impossible time", devices.value(i))))?;
            found.push(Pending {
                device: devices.value(i).to_string(),
                revoked_at,
            });
        }
    }
    Ok(found)
}

/// Every completed erasure's record, oldest first.
pub async fn completed(store: &Store) -> Result<Vec<ErasureRecord>> {
    use futures::TryStreamExt;
    let listed: Vec<_> = store
        .object_store()
        .list(Some(&records_prefix(store)))
        .try_collect()
        .await?;
    let mut records = Vec::with_capacity(listed.len());
    for meta in listed {
        if !meta.location.as_ref().ends_with(".json") {
            continue;
        }
        records.push(
            read_record(store, &meta.location)
                .await?
                .ok_or_else(|| Error::Invalid(format!("{}: deleted while being read", meta.location)))?,
        );
    }
    records.sort_by(|a, b| (a.erased_at, &a.device).cmp(&(b.erased_at, &b.device)));
    Ok(records)
}

async fn read_record(store: &Store, location: &Path) -> Result<Option<ErasureRecord>> {
    let bytes = match store.object_store().get(location).await {
        Ok(found) => found.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let record: ErasureRecord = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Invalid(format!("{location}: not an erasure record: {e}")))?;
    if record.format != RECORD_FORMAT {
        return Err(Error::Invalid(format!(
            "{location}: format '{}' is not {RECORD_FORMAT}",
            record.format
        )));
    }
    Ok(Some(record))
}

/// Erases every revoked device whose erasure has not run (see the module's documentation);
/// `from..to` (Unix microseconds) is the span of the store (its retention window), over
/// which the device's rotating identifiers are derived. Returns each erased device with the
/// record written (the UUID only in memory: the caller's caches forget it).
pub async fn erase_revoked(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    from: i64,
    to: i64,
    now: DateTime<Utc>,
) -> Result<Vec<(String, ErasureRecord)>> {
    let pending = pending(factory).await?;
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let store = factory.store();
    // One eraser at a time among the processes sharing the store.
    let Some(lease) = Lease::acquire(store, &crate::lease::this_process(), Utc::now()).await? else {
        return Ok(Vec::new());
    };
    let erased = erase_pending(factory, writer, &pending, from, to, now, &lease).await;
    lease.release().await?;
    erased
}

async fn erase_pending(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    pending: &[Pending],
    from: i64,
    to: i64,
    now: DateTime<Utc>,
    lease: &Lease,
) -> Result<Vec<(String, ErasureRecord)>> {
    let store = factory.store();
    let key = crate::keys::erasure_hash_key(store).await?;
    let mut erased = Vec::with_capacity(pending.len());
    for p in pending {
        erased.push(Erased::of(factory, &key, &p.device, from, to).await?);
    }
    // One pass over the store for every pending device.
    let done = erase_everywhere(factory, writer, &erased, &ORDER, Some(lease)).await?;
    let mut records = Vec::with_capacity(pending.len());
    for ((p, e), tables) in pending.iter().zip(&erased).zip(done) {
        let device_hash = keyed_hash(&key, &e.device);
        let location = record_path(store, &device_hash);
        let mut record = ErasureRecord {
            format: RECORD_FORMAT.into(),
            device: device_hash,
            revoked_at: p.revoked_at,
            erased_at: now,
            tables: tables
                .into_iter()
                .map(|(table, done)| TableErasure {
                    table: table.name().to_string(),
                    done,
                })
                .collect(),
            heard_as: e.heard_as.iter().map(|id| keyed_hash(&key, id)).collect(),
        };
        // An earlier attempt that stopped after its record (before the revocation went)
        // did the rewriting: what it counted stays.
        if let Some(earlier) = read_record(store, &location).await? {
            merge(&mut record, earlier);
        }
        let bytes = serde_json::to_vec_pretty(&record).expect("a record always serialises");
        store.object_store().put(&location, PutPayload::from(bytes)).await?;
        store.sync_local([&location])?;
        info!(
            target: "proxima::erasure",
            device = %record.device,
            rows = record.rows(),
            files = record.files(),
            "erased a revoked device"
        );
        records.push((e.device.clone(), record));
    }
    // The shared registry's entries, which every serving node looks devices up in.
    let devices: Vec<String> = erased.iter().map(|e| e.device.clone()).collect();
    crate::registry::SharedRegistry::with_key(store, &key)
        .forget(&devices)
        .await?;
    // Last: the revocations themselves, which name the devices and kept them pending.
    lease.renew(Utc::now()).await?;
    erase_everywhere(factory, writer, &erased, &[Table::Revocations], Some(lease)).await?;
    Ok(records)
}

/// Retention of devices: removes every device registered before `oldest` (the first day
/// retention keeps) that no observation in the store names, as observer or by its MAC,
/// with its credentials, exposure keys and any other row naming it (cases pseudonymised),
/// so that nothing outlives its purpose. Run after retention deleted days, under the
/// erasure lease. Returns the devices removed (`None` if another process holds the lease).
///
/// A phone that only broadcasts rotating identifiers or RPIs and uploaded nothing for the
/// whole window is removed too, though others may have heard it: its sightings then name
/// no device.
pub async fn expire_inactive(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    oldest: chrono::NaiveDate,
) -> Result<Option<Vec<String>>> {
    let start = oldest.format("%Y-%m-%dT00:00:00Z");
    let sql = format!(
        "SELECT d.device_uuid, min(d.mac) FROM devices d \
         WHERE d.registered_at < TIMESTAMP '{start}' \
           AND d.device_uuid NOT IN (SELECT observer FROM observations) \
           AND (d.mac IS NULL OR d.mac NOT IN (SELECT observed FROM observations)) \
         GROUP BY d.device_uuid ORDER BY 1"
    );
    let ctx = factory.session().await?;
    let mut inactive = Vec::new();
    for batch in ctx.sql(&sql).await?.collect().await? {
        use arrow::array::{Array, AsArray};
        let devices = batch.column(0).as_string::<i32>();
        let macs = batch.column(1).as_string::<i32>();
        for i in 0..batch.num_rows() {
            inactive.push((
                devices.value(i).to_string(),
                macs.is_valid(i).then(|| macs.value(i).to_string()),
            ));
        }
    }
    if inactive.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let store = factory.store();
    let Some(lease) = Lease::acquire(store, &crate::lease::this_process(), Utc::now()).await? else {
        return Ok(None);
    };
    let key = crate::keys::erasure_hash_key(store).await?;
    let erased: Vec<Erased> = inactive
        .into_iter()
        .map(|(device, mac): (String, Option<String>)| Erased {
            pseudonym: pseudonym(&key, &device),
            heard_as: mac.into_iter().collect(),
            device,
        })
        .collect();
    let mut tables = ORDER.to_vec();
    tables.push(Table::Revocations);
    let done = erase_everywhere(factory, writer, &erased, &tables, Some(&lease)).await;
    let devices: Vec<String> = erased.into_iter().map(|e| e.device).collect();
    let forgotten = match done {
        Ok(_) => crate::registry::SharedRegistry::with_key(store, &key)
            .forget(&devices)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    lease.release().await?;
    forgotten?;
    info!(target: "proxima::erasure", devices = devices.len(), "retention removed devices with no observation in the window");
    Ok(Some(devices))
}

fn merge(record: &mut ErasureRecord, earlier: ErasureRecord) {
    record.revoked_at = record.revoked_at.min(earlier.revoked_at);
    record.heard_as.extend(earlier.heard_as);
    for table in earlier.tables {
        match record.tables.iter_mut().find(|t| t.table == table.table) {
            Some(mine) => {
                mine.done.rewritten += table.done.rewritten;
                mine.done.deleted += table.done.deleted;
                mine.done.rows += table.done.rows;
            }
            None => record.tables.push(table),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_pseudonyms_depend_on_the_key_and_never_on_each_other() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let device = "6f1c3c2e-7d1a-4c55-9b1e-0a4d8f3e2b10";
        assert_eq!(keyed_hash(&a, device), keyed_hash(&a, device));
        assert_ne!(keyed_hash(&a, device), keyed_hash(&b, device));
        assert_eq!(keyed_hash(&a, device).len(), 32);
        let p = pseudonym(&a, device);
        assert_eq!(p, pseudonym(&a, device));
        assert_ne!(p, pseudonym(&b, device));
        let parsed = uuid::Uuid::parse_str(&p).unwrap();
        assert_eq!(parsed.get_version_num(), 8);
        assert!(!p.contains(&keyed_hash(&a, device)[..8]));
    }
}
