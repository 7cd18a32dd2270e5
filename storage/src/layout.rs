//! How each table is laid out in its files: one file per day, rows sorted for lookups,
//! and the Parquet settings that make those lookups cheap.
//!
//! Every writer (flush, import, generator, compaction, index build) goes through these
//! rules, so a file is laid out the same way whoever wrote it. Tracing's lookups
//! (`proxima_engine::index`) binary-search the page index that
//! [`writer_properties`] asks for, sorted as [`sort_for_storage`] sorts.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, FixedSizeBinaryBuilder, RecordBatch};
use arrow::compute::{SortColumn, filter_record_batch, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, TimestampMicrosecondType};
use chrono::NaiveDate;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::encryption::encrypt::FileEncryptionProperties;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::ColumnPath;
use proxima_engine::{PROXIMA_VERSION, Table, index, schema};

use uuid::Uuid;

use crate::error::{Error, Result};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Sorts rows the way a table's files are laid out: by its first lookup column, then its time column.
pub fn sort_for_storage(table: Table, batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut keys = vec![table.lookup_columns()[0]];
    keys.extend(table.time_column());
    let sort_columns: Vec<SortColumn> = keys
        .iter()
        .map(|name| -> Result<SortColumn> {
            Ok(SortColumn {
                values: Arc::clone(batch.column(schema.index_of(name)?)),
                options: None,
            })
        })
        .collect::<Result<_>>()?;
    let indices = lexsort_to_indices(&sort_columns, None)?;
    Ok(take_record_batch(batch, &indices)?)
}

/// Splits rows of `table` by the UTC day of its time column (one group if not partitioned).
pub fn split_by_day(table: Table, batch: &RecordBatch) -> Result<Vec<(Option<NaiveDate>, RecordBatch)>> {
    let Some(time_column) = table.time_column() else {
        return Ok(vec![(None, batch.clone())]);
    };
    let times = batch
        .column(batch.schema().index_of(time_column)?)
        .as_primitive::<TimestampMicrosecondType>();
    let days: Vec<i32> = times
        .values()
        .iter()
        .map(|t| t.div_euclid(MICROS_PER_DAY) as i32)
        .collect();
    let distinct: BTreeSet<i32> = days.iter().copied().collect();
    if distinct.len() == 1 {
        let day = *distinct.first().expect("one day");
        return Ok(vec![(Some(schema::date_from_epoch_days(day)), batch.clone())]);
    }
    let mut out = Vec::with_capacity(distinct.len());
    for day in distinct {
        let mask: arrow::array::BooleanArray = days.iter().map(|d| Some(*d == day)).collect();
        out.push((
            Some(schema::date_from_epoch_days(day)),
            filter_record_batch(batch, &mask)?,
        ));
    }
    Ok(out)
}

/// Parquet settings for a table's files: ZSTD, page statistics (for the page index),
/// bloom filters on the lookup columns, and metadata naming the Proxima version and writer.
///
/// Files that tracing looks up by page index (`observations` by `observer`,
/// `observed_index` by `observed`) are laid out for it: small pages (1,024 rows) so that
/// one device's rows are a page or two, and no dictionaries (a dictionary page would be
/// read whole for every lookup).
pub fn writer_properties(
    table: Table,
    writer: &str,
    rows: usize,
    extra: Vec<KeyValue>,
    encryption: Option<Arc<FileEncryptionProperties>>,
) -> WriterProperties {
    let mut metadata = vec![
        KeyValue::new("proxima.version".to_string(), PROXIMA_VERSION.to_string()),
        KeyValue::new("proxima.writer".to_string(), writer.to_string()),
        KeyValue::new("proxima.table".to_string(), table.name().to_string()),
    ];
    if table == Table::ObservedIndex {
        metadata.push(KeyValue::new(
            index::LAYOUT_KEY.to_string(),
            index::COMPANION_LAYOUT.to_string(),
        ));
    }
    metadata.extend(extra);
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("1 is a valid zstd level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_key_value_metadata(Some(metadata));
    if matches!(table, Table::Observations | Table::ObservedIndex) {
        builder = builder
            .set_dictionary_enabled(false)
            .set_data_page_row_count_limit(LOOKUP_PAGE_ROWS)
            .set_write_batch_size(LOOKUP_PAGE_ROWS);
    }
    if table == Table::ObservedIndex {
        // Only `observed` is searched; the other columns need no page statistics. A MAC's
        // times ascend, so their differences are small.
        builder = builder
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_column_statistics_enabled(ColumnPath::from("observed"), EnabledStatistics::Page)
            .set_column_encoding(ColumnPath::from("observed_at"), Encoding::DELTA_BINARY_PACKED);
    }
    let Some(encryption) = encryption else {
        return with_bloom_filters(builder, table, rows).build();
    };
    // No bloom filters: parquet writes them unencrypted, and a filter would tell whoever
    // can read the bucket whether a MAC or device is in a file (module docs of
    // `proxima_engine::encryption`).
    builder.with_file_encryption_properties(encryption).build()
}

/// Bloom filters on the table's lookup columns, sized for `rows`.
fn with_bloom_filters(mut builder: WriterPropertiesBuilder, table: Table, rows: usize) -> WriterPropertiesBuilder {
    for column in table.lookup_columns() {
        let column = ColumnPath::from(*column);
        builder = builder
            .set_column_bloom_filter_enabled(column.clone(), true)
            .set_column_bloom_filter_fpp(column.clone(), 0.01)
            .set_column_bloom_filter_max_ndv(column, rows.clamp(1, 1_000_000) as u64);
    }
    builder
}

/// Rows per data page of files that tracing looks up by page index.
const LOOKUP_PAGE_ROWS: usize = 1024;

/// The `observed_index` rows of observation rows: `(observed, observer, observed_at)`,
/// sorted by `observed` then time.
pub fn observed_index_rows(observations: &[RecordBatch]) -> Result<Option<RecordBatch>> {
    let projected: Vec<RecordBatch> = observations
        .iter()
        .map(|batch| {
            let schema = batch.schema();
            let column = |name: &str| -> Result<_> { Ok(Arc::clone(batch.column(schema.index_of(name)?))) };
            Ok(RecordBatch::try_new(
                Table::ObservedIndex.file_schema(),
                vec![
                    column("observed")?,
                    device_bytes(column("observer")?.as_ref())?,
                    column("observed_at")?,
                ],
            )?)
        })
        .collect::<Result<_>>()?;
    let rows: usize = projected.iter().map(RecordBatch::num_rows).sum();
    if rows == 0 {
        return Ok(None);
    }
    let all = arrow::compute::concat_batches(&Table::ObservedIndex.file_schema(), &projected)?;
    Ok(Some(sort_for_storage(Table::ObservedIndex, &all)?))
}

/// Rows of `table` as its files store them: `observed_index` rows whose `observer` is text
/// (from SQL, when a day's companion is rebuilt) get the UUID's 16 bytes; anything else is
/// returned as it is.
pub fn conform(table: Table, batch: RecordBatch) -> Result<RecordBatch> {
    if table != Table::ObservedIndex || batch.schema().field(1).data_type() != &DataType::Utf8 {
        return Ok(batch);
    }
    let mut columns = batch.columns().to_vec();
    columns[1] = device_bytes(columns[1].as_ref())?;
    Ok(RecordBatch::try_new(Table::ObservedIndex.file_schema(), columns)?)
}

/// Device UUIDs as text, as 16-byte binary values.
fn device_bytes(devices: &dyn Array) -> Result<ArrayRef> {
    let text = devices.as_string_opt::<i32>().ok_or_else(|| {
        Error::Invalid(format!(
            "observer: expected device UUIDs as text, got {}",
            devices.data_type()
        ))
    })?;
    let mut bytes = FixedSizeBinaryBuilder::with_capacity(text.len(), 16);
    for value in text {
        let value = value.ok_or_else(|| Error::Invalid("observer: a device UUID is missing".into()))?;
        let uuid =
            Uuid::try_parse(value).map_err(|_| Error::Invalid(format!("observer: '{value}' is not a device UUID")))?;
        bytes.append_value(uuid.as_bytes())?;
    }
    Ok(Arc::new(bytes.finish()))
}
