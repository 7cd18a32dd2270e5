//! Erasure: a device's rows removed from the store, copy-on-write.
//!
//! This is the first piece of erasure on revocation (issue 13): [`Erased::of`] gathers a
//! device and every identifier it was heard by (MAC, GAEN RPIs of its exposure keys, the
//! rotating identifiers the keys would have issued it); [`erase_everywhere`] runs
//! [`erase_in_folder`] on every folder of every table, which rewrites each file that holds
//! one of its rows without them, through the lineage machinery compaction uses (a marker
//! names the rewritten file and the file it replaces, so every listing shows one or the
//! other, never both, never neither), and deletes a file all of whose rows go. Replaced
//! files are deleted by [`crate::compaction::sweep`] after the grace period. Scheduling on
//! revocation, the other tables' rules (cases kept as counts), `erasure status` and
//! `verify`, and the lease between processes are not built yet.

use std::collections::BTreeSet;

use datafusion::logical_expr::{Expr, col, lit, not};
use datafusion::prelude::ParquetReadOptions;
use datafusion::scalar::ScalarValue;
use object_store::ObjectStoreExt;
use parquet::file::metadata::KeyValue;
use proxima_engine::index::file_key_values;
use proxima_engine::{DayPartition, SessionFactory, Table};
use tracing::info;
use uuid::Uuid;

use arrow::array::AsArray;
use proxima_engine::ephemeral::handle_of;

use crate::compaction::{live_in, publish_replacing};
use crate::error::{Error, Result};
use crate::marks::{WAL_KEY, encode_marks, marks_in};
use crate::writer::PartitionWriter;

/// One device to erase: its UUID and every identifier others heard it by (its MAC, the
/// rotating identifiers and RPIs it broadcast).
#[derive(Debug, Clone)]
pub struct Erased {
    /// The device's UUID, canonical.
    pub device: String,
    /// Every identifier it was heard by, canonical.
    pub heard_as: BTreeSet<String>,
}

impl Erased {
    /// A device and every identifier it was heard by between `from` and `to` (Unix
    /// microseconds; the store's retention window): its MAC, the RPIs of every exposure key
    /// it registered, and every rotating identifier the session's keys would have issued it.
    pub async fn of(factory: &SessionFactory, device: &str, from: i64, to: i64) -> Result<Self> {
        let device = Uuid::parse_str(device)
            .map_err(|_| Error::Invalid(format!("'{device}' is not a device UUID")))?
            .hyphenated()
            .to_string();
        // `device` is a canonical UUID, safe inside a literal.
        let sql = format!(
            "SELECT mac AS id FROM devices WHERE device_uuid = '{device}' AND mac IS NOT NULL \
             UNION ALL \
             SELECT en_rpi(tek, interval_number) FROM ( \
               SELECT tek, unnest(range(to_unixtime(valid_from) / 600, to_unixtime(valid_from) / 600 + rolling_period)) \
                 AS interval_number \
               FROM exposure_keys WHERE device_uuid = '{device}')"
        );
        let ctx = factory.session().await?;
        let mut heard_as = BTreeSet::new();
        for batch in ctx.sql(&sql).await?.collect().await? {
            let column = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)?;
            let ids = column.as_string::<i32>();
            heard_as.extend(ids.iter().flatten().map(str::to_string));
        }
        if let (Some(identifiers), Some(handle)) = (&factory.options().identifiers, handle_of(&device)) {
            heard_as.extend(
                identifiers
                    .broadcast_between(handle, from, to)
                    .into_iter()
                    .map(|(id, _)| id),
            );
        }
        Ok(Self { device, heard_as })
    }

    /// The rows of `table` that name the device (`None`: the table holds no device).
    pub fn predicate(&self, table: Table) -> Option<Expr> {
        let heard = || col("observed").in_list(self.heard_as.iter().map(|id| lit(id.as_str())).collect(), false);
        let device = lit(self.device.as_str());
        Some(match table {
            Table::Observations => col("observer").eq(device).or(heard()),
            Table::ObservedIndex => {
                let bytes = Uuid::parse_str(&self.device).ok()?.as_bytes().to_vec();
                col("observer")
                    .eq(lit(ScalarValue::FixedSizeBinary(16, Some(bytes))))
                    .or(heard())
            }
            Table::Devices
            | Table::Alerts
            | Table::TemperatureReadings
            | Table::Revocations
            | Table::DeviceCredentials
            | Table::UploadKeys
            | Table::ExposureKeys => col("device_uuid").eq(device),
            // Cases are kept as counts without the device: not a removal (not built yet).
            Table::Cases => return None,
        })
    }
}

/// What [`erase_in_folder`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FolderErasure {
    /// Files rewritten without the device's rows.
    pub rewritten: usize,
    /// Files deleted (every row was the device's).
    pub deleted: usize,
    /// Rows removed.
    pub rows: u64,
}

/// Removes `erased`'s rows from every folder of every table; returns what was done per
/// table (tables with nothing removed left out).
pub async fn erase_everywhere(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    erased: &Erased,
) -> Result<Vec<(Table, FolderErasure)>> {
    let mut done = Vec::new();
    for table in Table::ALL {
        let days: Vec<Option<chrono::NaiveDate>> = if table.is_day_partitioned() {
            factory
                .store()
                .list_days(table)
                .await?
                .into_iter()
                .map(|d| Some(d.day))
                .collect()
        } else {
            vec![None]
        };
        let mut total = FolderErasure::default();
        for day in days {
            let folder = erase_in_folder(factory, writer, table, day, erased).await?;
            total.rewritten += folder.rewritten;
            total.deleted += folder.deleted;
            total.rows += folder.rows;
        }
        if total.rows > 0 {
            done.push((table, total));
        }
    }
    Ok(done)
}

/// Removes `erased`'s rows from the live files of `table`'s folder for `day` (the table's
/// folder for undated tables).
pub async fn erase_in_folder(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    table: Table,
    day: Option<chrono::NaiveDate>,
    erased: &Erased,
) -> Result<FolderErasure> {
    let mut done = FolderErasure::default();
    let Some(predicate) = erased.predicate(table) else {
        return Ok(done);
    };
    let store = factory.store();
    let prefix = match day {
        Some(day) => DayPartition { table, day }.prefix(store.root()),
        None => table.prefix(store.root()),
    };
    let base = store.object_store_url().as_str().trim_end_matches('/').to_string();
    let schema = table.file_schema();
    let ctx = factory.session().await?;
    for file in live_in(store, &prefix).await? {
        let url = format!("{base}/{}", file.location);
        let frame = ctx
            .read_parquet(url.as_str(), ParquetReadOptions::default().schema(&schema))
            .await?;
        let matching = frame.clone().filter(predicate.clone())?.count().await? as u64;
        if matching == 0 {
            continue;
        }
        done.rows += matching;
        let mut keys = vec![col(table.lookup_columns()[0]).sort(true, false)];
        if let Some(time) = table.time_column() {
            keys.push(col(time).sort(true, false));
        }
        let kept = frame
            .filter(not(predicate.clone()))?
            .sort(keys)?
            .execute_stream()
            .await?;
        // The rewritten file keeps its source's WAL marks, so a replay stores nothing twice.
        let marks = marks_in(file.location.as_ref(), &file_key_values(store, &file.location).await?)?;
        let metadata = vec![KeyValue::new(WAL_KEY.to_string(), encode_marks(&marks))];
        let mut transaction = writer.begin().without_companions();
        let rows_hint = usize::try_from(file.size / 16).unwrap_or(usize::MAX);
        if let Err(e) = transaction.write_stream(table, day, rows_hint, metadata, kept).await {
            transaction.abort().await?;
            return Err(e);
        }
        match publish_replacing(store, transaction, &prefix, vec![file.location.to_string()]).await? {
            Some(_) => done.rewritten += 1,
            None => {
                // Every row was the device's: nothing replaces the file.
                store.object_store().delete(&file.location).await?;
                done.deleted += 1;
            }
        }
    }
    if done.rows > 0 {
        info!(table = %table, day = ?day, rewritten = done.rewritten, deleted = done.deleted, rows = done.rows, "erased a device's rows");
    }
    Ok(done)
}
