//! The copy-on-write rewrite: every file that holds one of a device's rows is rewritten
//! without them (with its cases' device replaced by a pseudonym), through the lineage
//! machinery compaction uses: a marker names the rewritten file and the file it replaces,
//! so every listing shows one or the other, never both, never neither. A file all of whose
//! rows go is deleted. Replaced files are deleted by [`crate::compaction::sweep`] after the
//! grace period.

use std::collections::BTreeSet;

use datafusion::logical_expr::{Expr, col, lit, not, when};
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
    /// What its cases name instead of it ([`super::pseudonym`]): they stay as counts.
    pub pseudonym: String,
}

/// What becomes of a table's rows that name the device.
#[derive(Debug, Clone)]
pub enum Rewrite {
    /// They go.
    Remove(Expr),
    /// They stay, with `column` replaced by `with` where `matching` holds.
    Replace {
        /// The rows naming the device.
        matching: Expr,
        /// The column naming it.
        column: &'static str,
        /// What it names instead.
        with: String,
    },
}

impl Rewrite {
    fn matching(&self) -> &Expr {
        match self {
            Rewrite::Remove(matching) | Rewrite::Replace { matching, .. } => matching,
        }
    }
}

impl Erased {
    /// A device and every identifier it was heard by between `from` and `to` (Unix
    /// microseconds; the store's retention window): its MAC, the RPIs of every exposure key
    /// it registered, and every rotating identifier the session's keys would have issued it.
    /// `hash_key` makes the pseudonym its cases will name ([`crate::keys::erasure_hash_key`]).
    pub async fn of(factory: &SessionFactory, hash_key: &[u8; 32], device: &str, from: i64, to: i64) -> Result<Self> {
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
        let pseudonym = super::pseudonym(hash_key, &device);
        Ok(Self {
            device,
            heard_as,
            pseudonym,
        })
    }

    /// What becomes of the rows of `table` that name the device.
    pub fn rewrite(&self, table: Table) -> Rewrite {
        let heard = || col("observed").in_list(self.heard_as.iter().map(|id| lit(id.as_str())).collect(), false);
        let device = lit(self.device.as_str());
        Rewrite::Remove(match table {
            Table::Observations => col("observer").eq(device).or(heard()),
            Table::ObservedIndex => {
                let bytes = Uuid::parse_str(&self.device)
                    .expect("Erased::of keeps a canonical UUID")
                    .as_bytes()
                    .to_vec();
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
            // Public-health statistics survive, the person does not.
            Table::Cases => {
                return Rewrite::Replace {
                    matching: col("device_uuid").eq(device),
                    column: "device_uuid",
                    with: self.pseudonym.clone(),
                };
            }
        })
    }
}

/// What [`erase_in_folder`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FolderErasure {
    /// Files rewritten without the device's rows.
    pub rewritten: usize,
    /// Files deleted (every row was the device's).
    pub deleted: usize,
    /// Rows removed (or, in `cases`, pseudonymised).
    pub rows: u64,
}

/// Rewrites `erased`'s rows in every folder of `tables`; returns what was done per table
/// (tables with nothing rewritten left out).
pub async fn erase_everywhere(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    erased: &Erased,
    tables: &[Table],
) -> Result<Vec<(Table, FolderErasure)>> {
    let mut done = Vec::new();
    for &table in tables {
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

/// Rewrites `erased`'s rows in the live files of `table`'s folder for `day` (the table's
/// folder for undated tables).
pub async fn erase_in_folder(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    table: Table,
    day: Option<chrono::NaiveDate>,
    erased: &Erased,
) -> Result<FolderErasure> {
    let mut done = FolderErasure::default();
    let rewrite = erased.rewrite(table);
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
        let matching = frame.clone().filter(rewrite.matching().clone())?.count().await? as u64;
        if matching == 0 {
            continue;
        }
        done.rows += matching;
        let mut keys = vec![col(table.lookup_columns()[0]).sort(true, false)];
        if let Some(time) = table.time_column() {
            keys.push(col(time).sort(true, false));
        }
        let kept = match &rewrite {
            Rewrite::Remove(matching) => frame.filter(not(matching.clone()))?,
            Rewrite::Replace { matching, column, with } => {
                let columns: Vec<Expr> = schema
                    .fields()
                    .iter()
                    .map(|field| {
                        if field.name() == column {
                            when(matching.clone(), lit(with.as_str()))
                                .otherwise(col(*column))
                                .map(|e| e.alias(*column))
                        } else {
                            Ok(col(field.name()))
                        }
                    })
                    .collect::<std::result::Result<_, _>>()?;
                frame.select(columns)?
            }
        };
        let kept = kept.sort(keys)?.execute_stream().await?;
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
        info!(table = %table, day = ?day, rewritten = done.rewritten, deleted = done.deleted, rows = done.rows, "rewrote a device's rows");
    }
    Ok(done)
}
