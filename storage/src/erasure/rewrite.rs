//! The copy-on-write rewrite: every file that holds a row of one of the devices erased
//! together is rewritten once without them (with their cases' device replaced by a
//! pseudonym), so a round's cost is one pass over the affected files however many devices
//! were revoked, through the lineage
//! machinery compaction uses: a marker names the rewritten file and the file it replaces,
//! so every listing shows one or the other, never both, never neither. A file all of whose
//! rows go is deleted. Replaced files are deleted by [`crate::compaction::sweep`] after the
//! grace period.

use std::collections::BTreeSet;

use arrow::datatypes::Int64Type;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{Expr, col, lit, not, when};
use datafusion::prelude::ParquetReadOptions;
use datafusion::scalar::ScalarValue;
use object_store::ObjectStoreExt;
use parquet::file::metadata::KeyValue;
use proxima_engine::index::file_key_values;
use proxima_engine::{DayPartition, SessionFactory, Table};
use tracing::{debug, info};
use uuid::Uuid;

use arrow::array::AsArray;
use proxima_engine::ephemeral::handle_of;

use crate::compaction::{live_in, publish_replacing};
use crate::error::{Error, Result};
use crate::marks::{WAL_KEY, encode_marks, marks_in};
use crate::writer::PartitionWriter;

use crate::lease::Lease;

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

    /// The rows of `table` that name the device (in `cases` they stay, pseudonymised).
    pub fn matching(&self, table: Table) -> Expr {
        let device = lit(self.device.as_str());
        match table {
            Table::Observations => col("observer").eq(device).or(self.heard()),
            Table::ObservedIndex => col("observer").eq(uuid_bytes(&self.device)).or(self.heard()),
            _ => col("device_uuid").eq(device),
        }
    }

    fn heard(&self) -> Expr {
        col("observed").in_list(self.heard_as.iter().map(|id| lit(id.as_str())).collect(), false)
    }
}

/// A canonical UUID as the index's 16-byte `observer`.
fn uuid_bytes(device: &str) -> Expr {
    let bytes = Uuid::parse_str(device)
        .expect("Erased::of keeps a canonical UUID")
        .as_bytes()
        .to_vec();
    lit(ScalarValue::FixedSizeBinary(16, Some(bytes)))
}

/// The rows of `table` that name any of `erased`: one list lookup per column, however
/// many devices are erased together.
fn any_matching(erased: &[Erased], table: Table) -> Expr {
    let devices = || erased.iter().map(|e| lit(e.device.as_str())).collect::<Vec<_>>();
    let heard = || {
        let ids: BTreeSet<&str> = erased
            .iter()
            .flat_map(|e| e.heard_as.iter().map(String::as_str))
            .collect();
        col("observed").in_list(ids.into_iter().map(lit).collect(), false)
    };
    match table {
        Table::Observations => col("observer").in_list(devices(), false).or(heard()),
        Table::ObservedIndex => col("observer")
            .in_list(erased.iter().map(|e| uuid_bytes(&e.device)).collect(), false)
            .or(heard()),
        _ => col("device_uuid").in_list(devices(), false),
    }
}

/// Which of `erased` a matching row names (its index; the first, if it names several).
fn whose(erased: &[Erased], table: Table) -> Result<Expr> {
    let mut cases = erased.iter().enumerate();
    let (_, first) = cases.next().expect("a batch is never empty");
    let mut expr = when(first.matching(table), lit(0i64));
    for (i, e) in cases {
        expr = expr.when(e.matching(table), lit(i as i64));
    }
    Ok(expr.end()?)
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

/// Rewrites the rows of every device of `erased` in every folder of `tables`, each file
/// once for them all; returns what was done for each device, per table (tables with
/// nothing rewritten left out).
pub async fn erase_everywhere(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    erased: &[Erased],
    tables: &[Table],
    lease: Option<&Lease>,
) -> Result<Vec<Vec<(Table, FolderErasure)>>> {
    let mut done = vec![Vec::new(); erased.len()];
    if erased.is_empty() {
        return Ok(done);
    }
    for &table in tables {
        if matches!(table, Table::ContactPartials | Table::CasePartials) {
            // No row names a device (counts and sketches): rebuilt below from what is left.
            continue;
        }
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
        let mut totals = vec![FolderErasure::default(); erased.len()];
        let mut rewritten_days = Vec::new();
        for day in days {
            let folder = erase_in_folder(factory, writer, table, day, erased, lease).await?;
            if folder.iter().any(|done| done.rows > 0) {
                rewritten_days.extend(day);
            }
            for (total, done) in totals.iter_mut().zip(folder) {
                total.rewritten += done.rewritten;
                total.deleted += done.deleted;
                total.rows += done.rows;
            }
        }
        // A sketch cannot forget a device: the days whose sightings changed are rolled up
        // again from what is left; so are those of readings (a case keeps its row, under a
        // pseudonym, and so its count).
        let rollup = match table {
            Table::Observations => Some(crate::rollup::Rollup::Contacts),
            Table::TemperatureReadings => Some(crate::rollup::Rollup::Cases),
            _ => None,
        };
        if let Some(rollup) = rollup
            && !rewritten_days.is_empty()
        {
            crate::rollup::rebuild_days(factory, writer, rollup, &rewritten_days).await?;
        }
        for (done, total) in done.iter_mut().zip(totals) {
            if total.rows > 0 {
                done.push((table, total));
            }
        }
    }
    Ok(done)
}

/// Rewrites the rows of every device of `erased` in the live files of `table`'s folder for
/// `day` (the table's folder for undated tables): each file that holds any of them once.
/// Returns what was done for each device (a row that names two of them counts for the
/// first). With `lease`, it is renewed before each file is rewritten, and the work stops
/// if another process took it over.
pub async fn erase_in_folder(
    factory: &SessionFactory,
    writer: &PartitionWriter,
    table: Table,
    day: Option<chrono::NaiveDate>,
    erased: &[Erased],
    lease: Option<&Lease>,
) -> Result<Vec<FolderErasure>> {
    let mut done = vec![FolderErasure::default(); erased.len()];
    if erased.is_empty() {
        return Ok(done);
    }
    let any = any_matching(erased, table);
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
        let counted = frame
            .clone()
            .filter(any.clone())?
            .aggregate(
                vec![whose(erased, table)?.alias("whose")],
                vec![count(lit(1)).alias("n")],
            )?
            .collect()
            .await?;
        let mut rows = vec![0u64; erased.len()];
        for batch in &counted {
            let whose = batch.column(0).as_primitive::<Int64Type>();
            let n = batch.column(1).as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                if let Some(slot) = usize::try_from(whose.value(i)).ok().and_then(|w| rows.get_mut(w)) {
                    *slot += n.value(i) as u64;
                }
            }
        }
        if rows.iter().all(|&n| n == 0) {
            continue;
        }
        if let Some(lease) = lease {
            lease.renew(chrono::Utc::now()).await?;
        }
        debug!(table = %table, day = ?day, file = %file.location, "rewriting a file without erased devices' rows");
        let mut keys = vec![col(table.lookup_columns()[0]).sort(true, false)];
        if let Some(time) = table.time_column() {
            keys.push(col(time).sort(true, false));
        }
        let kept = if table == Table::Cases {
            // Public-health statistics survive, the person does not: each case keeps its
            // row, naming its device's pseudonym.
            let mut pseudonyms = erased.iter();
            let first = pseudonyms.next().expect("a batch is never empty");
            let mut replaced = when(first.matching(table), lit(first.pseudonym.as_str()));
            for e in pseudonyms {
                replaced = replaced.when(e.matching(table), lit(e.pseudonym.as_str()));
            }
            let replaced = replaced.otherwise(col("device_uuid"))?.alias("device_uuid");
            let columns: Vec<Expr> = schema
                .fields()
                .iter()
                .map(|field| {
                    if field.name() == "device_uuid" {
                        replaced.clone()
                    } else {
                        col(field.name())
                    }
                })
                .collect();
            frame.select(columns)?
        } else {
            frame.filter(not(any.clone()))?
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
        let replaced = publish_replacing(store, transaction, &prefix, vec![file.location.to_string()]).await?;
        if replaced.is_none() {
            // Every row was an erased device's: nothing replaces the file.
            store.object_store().delete(&file.location).await?;
        }
        for (done, rows) in done.iter_mut().zip(rows).filter(|(_, rows)| *rows > 0) {
            done.rows += rows;
            if replaced.is_some() {
                done.rewritten += 1;
            } else {
                done.deleted += 1;
            }
        }
        info!(table = %table, day = ?day, file = %file.location, deleted = replaced.is_none(), "rewrote a file without erased devices' rows");
    }
    Ok(done)
}
