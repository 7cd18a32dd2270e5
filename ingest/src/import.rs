//! Importing CSV and Parquet files into a table, all or nothing.
//!
//! Every row of every file is validated before anything is written: a bad
//! UUID, MAC, timestamp, negative duration, unknown column or duplicate MAC
//! stops the import with an error naming the file, the line (or Parquet row)
//! and the reason, and the store is left as it was. The files of an import
//! are published in one [`Transaction`](proxima_storage::Transaction). CSV needs a
//! header; timestamps in CSV are RFC 3339. The `day` column is derived from
//! the table's time column, never read.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int16Builder, Int32Builder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Int64Type, TimestampMicrosecondType};
use chrono::DateTime;
use datafusion::prelude::SessionContext;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use proxima_engine::{SessionFactory, SessionOptions, Table, ids, rules, schema};
use proxima_storage::layout::sort_for_storage;

use crate::error::{Error, Position, Result};
use proxima_storage::{CommitSummary, PartitionWriter};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// What an import stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// Input files read.
    pub files: usize,
    /// Rows stored.
    pub rows: u64,
    /// Parquet files written.
    pub written: CommitSummary,
    /// The days the rows were filed in (none for an undated table).
    pub days: Vec<chrono::NaiveDate>,
}

/// The kind of value a column holds, which decides how it is validated.
#[derive(Debug, Clone, Copy)]
enum Kind {
    DeviceUuid,
    Mac,
    Observed,
    Geohash,
    Timestamp,
    /// Seconds, by [`rules::duration_s`].
    Duration,
    /// Signal strength, by [`rules::dbm`].
    Dbm,
}

#[derive(Debug, Clone, Copy)]
struct ColumnSpec {
    name: &'static str,
    kind: Kind,
    nullable: bool,
    /// For a non-nullable column: the value used when the column is absent (import time).
    defaults_to_now: bool,
}

const fn column(name: &'static str, kind: Kind, nullable: bool) -> ColumnSpec {
    ColumnSpec {
        name,
        kind,
        nullable,
        defaults_to_now: false,
    }
}

fn columns(table: Table) -> Vec<ColumnSpec> {
    match table {
        Table::Observations => vec![
            column("observer", Kind::DeviceUuid, false),
            column("observed", Kind::Observed, false),
            column("observed_at", Kind::Timestamp, false),
            column("duration_s", Kind::Duration, false),
            column("rssi", Kind::Dbm, true),
            column("tx_power", Kind::Dbm, true),
            column("location", Kind::Geohash, true),
        ],
        // Derived from the others, or written by the REST service only: `import` refuses them.
        Table::ObservedIndex
        | Table::Cases
        | Table::Alerts
        | Table::TemperatureReadings
        | Table::Revocations
        | Table::DeviceCredentials
        | Table::UploadKeys
        | Table::ExposureKeys
        | Table::ContactPartials
        | Table::CasePartials => vec![],
        Table::Devices => vec![
            column("device_uuid", Kind::DeviceUuid, false),
            column("mac", Kind::Mac, false),
            ColumnSpec {
                defaults_to_now: true,
                ..column("registered_at", Kind::Timestamp, false)
            },
        ],
    }
}

/// One input value before validation.
enum Cell<'a> {
    Null,
    Text(&'a str),
    Int(i64),
    Micros(i64),
}

/// One validated value.
enum Value {
    Null,
    Text(String),
    Int(i64),
    Micros(i64),
}

fn validate(spec: &ColumnSpec, cell: Cell<'_>, now_micros: i64) -> Result<Value, String> {
    let cell = match cell {
        Cell::Text("") | Cell::Null => {
            return if spec.nullable {
                Ok(Value::Null)
            } else if spec.defaults_to_now {
                Ok(Value::Micros(now_micros))
            } else {
                Err(format!("column '{}': a value is required", spec.name))
            };
        }
        cell => cell,
    };
    let in_column = |reason: String| format!("column '{}': {reason}", spec.name);
    let text = |f: fn(&str) -> Result<String, ids::IdError>, cell: Cell<'_>| match cell {
        Cell::Text(t) => f(t).map(Value::Text).map_err(|e| in_column(e.to_string())),
        _ => Err(in_column("expected text".into())),
    };
    match spec.kind {
        Kind::DeviceUuid => text(ids::device_uuid, cell),
        Kind::Mac => text(ids::mac, cell),
        Kind::Observed => text(ids::observed, cell),
        Kind::Geohash => text(ids::geohash, cell),
        Kind::Timestamp => match cell {
            Cell::Micros(v) => Ok(Value::Micros(v)),
            Cell::Text(t) => DateTime::parse_from_rfc3339(t.trim())
                .map(|ts| Value::Micros(ts.timestamp_micros()))
                .map_err(|e| in_column(format!("'{t}' is not an RFC 3339 timestamp ({e})"))),
            _ => Err(in_column("expected a timestamp".into())),
        },
        Kind::Duration | Kind::Dbm => {
            let v = match cell {
                Cell::Int(v) => v,
                Cell::Text(t) => t
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| in_column(format!("'{t}' is not an integer")))?,
                _ => return Err(in_column("expected an integer".into())),
            };
            let checked = match spec.kind {
                Kind::Duration => rules::duration_s(v).map(i64::from),
                _ => rules::dbm(v).map(i64::from),
            };
            checked.map(Value::Int).map_err(in_column)
        }
    }
}

/// Arrow builders for one output file (one day of a table).
struct Rows {
    builders: Vec<ColumnBuilder>,
    len: usize,
}

enum ColumnBuilder {
    Text(StringBuilder),
    Time(TimestampMicrosecondBuilder),
    I32(Int32Builder),
    I16(Int16Builder),
}

impl Rows {
    fn new(table: Table) -> Self {
        let builders = table
            .file_schema()
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8 => ColumnBuilder::Text(StringBuilder::new()),
                DataType::Timestamp(_, _) => {
                    ColumnBuilder::Time(TimestampMicrosecondBuilder::new().with_timezone("UTC"))
                }
                DataType::Int32 => ColumnBuilder::I32(Int32Builder::new()),
                DataType::Int16 => ColumnBuilder::I16(Int16Builder::new()),
                other => unreachable!("no Proxima table has a {other} column"),
            })
            .collect();
        Self { builders, len: 0 }
    }

    fn push(&mut self, values: Vec<Value>) {
        for (builder, value) in self.builders.iter_mut().zip(values) {
            // Values were range-checked against their column's type in `validate`.
            match (builder, value) {
                (ColumnBuilder::Text(b), Value::Text(v)) => b.append_value(v),
                (ColumnBuilder::Text(b), _) => b.append_null(),
                (ColumnBuilder::Time(b), Value::Micros(v)) => b.append_value(v),
                (ColumnBuilder::Time(b), _) => b.append_null(),
                (ColumnBuilder::I32(b), Value::Int(v)) => b.append_value(v as i32),
                (ColumnBuilder::I32(b), _) => b.append_null(),
                (ColumnBuilder::I16(b), Value::Int(v)) => b.append_value(v as i16),
                (ColumnBuilder::I16(b), _) => b.append_null(),
            }
        }
        self.len += 1;
    }

    /// The rows as a batch sorted for lookups: by the table's first lookup column, then time.
    fn finish(mut self, table: Table) -> Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    ColumnBuilder::Text(b) => Arc::new(b.finish()),
                    ColumnBuilder::Time(b) => Arc::new(b.finish()),
                    ColumnBuilder::I32(b) => Arc::new(b.finish()),
                    ColumnBuilder::I16(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        let batch = RecordBatch::try_new(table.file_schema(), arrays)?;
        Ok(sort_for_storage(table, &batch)?)
    }
}

/// The key, among an import's unique values, of a device's identifier handle
/// (`proxima_engine::ephemeral::handle_of`): no two devices may share one, or their rotating
/// identifiers would be the same.
const HANDLE: usize = usize::MAX;

fn handle_key(uuid: &str) -> Option<(usize, String)> {
    proxima_engine::ephemeral::handle_of(uuid).map(|h| (HANDLE, format!("{h:016x}")))
}

/// Validated rows of an import, grouped by output file.
struct Staged {
    table: Table,
    specs: Vec<ColumnSpec>,
    by_day: BTreeMap<Option<i32>, Rows>,
    /// Unique keys seen so far (column index → value → where), for duplicate checks.
    unique: HashMap<(usize, String), String>,
    unique_columns: Vec<usize>,
    time_column: Option<usize>,
    now_micros: i64,
    rows: u64,
}

impl Staged {
    fn new(table: Table, existing: HashMap<(usize, String), String>) -> Self {
        let specs = columns(table);
        let unique_columns = match table {
            Table::Devices => vec![0, 1],
            _ => vec![],
        };
        let time_column = table.time_column().map(|name| {
            specs
                .iter()
                .position(|s| s.name == name)
                .expect("time column is a column")
        });
        Self {
            table,
            specs,
            by_day: BTreeMap::new(),
            unique: existing,
            unique_columns,
            time_column,
            now_micros: chrono::Utc::now().timestamp_micros(),
            rows: 0,
        }
    }

    /// Validates one row (cells in spec order) and keeps it; `here` names the row in errors.
    fn push(&mut self, cells: Vec<Cell<'_>>, here: &str) -> Result<(), String> {
        let values = self
            .specs
            .iter()
            .zip(cells)
            .map(|(spec, cell)| validate(spec, cell, self.now_micros))
            .collect::<Result<Vec<_>, _>>()?;
        for &i in &self.unique_columns {
            if let Value::Text(v) = &values[i]
                && let Some(first) = self.unique.get(&(i, v.clone()))
            {
                let label = match self.specs[i].kind {
                    Kind::Mac => "MAC",
                    _ => "device",
                };
                return Err(format!("{label} {v} is {first}"));
            }
        }
        let handle = match (self.table, &values[0]) {
            (Table::Devices, Value::Text(uuid)) => handle_key(uuid),
            _ => None,
        };
        if let Some(key) = &handle
            && let Some(first) = self.unique.get(key)
        {
            return Err(format!(
                "device {} has the same identifier handle (8 bytes of its UUID's SHA-256) as the device {first}: the two would broadcast the same rotating identifiers",
                match &values[0] {
                    Value::Text(v) => v.as_str(),
                    _ => "",
                }
            ));
        }
        for &i in &self.unique_columns {
            if let Value::Text(v) = &values[i] {
                self.unique.insert((i, v.clone()), format!("already on {here}"));
            }
        }
        if let (Some(key), Value::Text(uuid)) = (handle, &values[0]) {
            self.unique.insert(key, format!("{uuid} on {here}"));
        }
        let day = self.time_column.map(|i| match values[i] {
            Value::Micros(v) => v.div_euclid(MICROS_PER_DAY) as i32,
            _ => unreachable!("time columns are validated timestamps"),
        });
        let table = self.table;
        self.by_day.entry(day).or_insert_with(|| Rows::new(table)).push(values);
        self.rows += 1;
        Ok(())
    }
}

/// Imports `files` into `table` in one transaction; on any error nothing is stored.
///
/// The observation files get their `observed_index` companions in the same transaction,
/// so tracing's lookups are current as soon as the import is; a devices import changes no
/// index (MACs are resolved when traced).
pub async fn import(writer: &PartitionWriter, table: Table, files: &[PathBuf]) -> Result<ImportSummary> {
    if matches!(
        table,
        Table::ObservedIndex | Table::ContactPartials | Table::CasePartials
    ) {
        return Err(Error::InvalidArgument(format!(
            "{table} is derived from other tables (written with their rows); it cannot be imported"
        )));
    }
    if !matches!(table, Table::Observations | Table::Devices) {
        return Err(Error::InvalidArgument(format!(
            "{table} is written by the REST service (proxima serve --http); only observations and devices \
             can be imported"
        )));
    }
    writer.recover().await?;
    let existing = existing_unique_values(writer, table).await?;
    let mut staged = Staged::new(table, existing);
    for file in files {
        match Format::of(file)? {
            Format::Csv => read_csv(file, &mut staged)?,
            Format::Parquet => read_parquet(file, &mut staged)?,
        }
    }
    let rows = staged.rows;
    let mut transaction = writer.begin();
    let mut days = Vec::new();
    for (day, day_rows) in std::mem::take(&mut staged.by_day) {
        let batch = day_rows.finish(table)?;
        let day = day.map(schema::date_from_epoch_days);
        days.extend(day);
        if let Err(e) = transaction.write_file(table, day, &[batch]).await {
            transaction.abort().await?;
            return Err(e.into());
        }
    }
    let written = transaction.commit().await?;
    Ok(ImportSummary {
        files: files.len(),
        rows,
        written,
        days,
    })
}

/// [`import`], then the contact rollup of the days the import may have changed, recomputed
/// from the rows (an import does not keep it row by row as a flush does): the days of the
/// imported observations, or every day for devices, whose MACs may have been heard on any.
/// `factory`'s sessions resolve what the rollup counts (its identifiers, if any).
pub async fn import_rolled_up(
    factory: &proxima_engine::SessionFactory,
    writer: &PartitionWriter,
    table: Table,
    files: &[PathBuf],
) -> Result<ImportSummary> {
    let summary = import(writer, table, files).await?;
    use proxima_storage::rollup::{Rollup, rebuild_days, rollup_days};
    let days = match table {
        Table::Devices => rollup_days(writer.store(), Rollup::Contacts).await?,
        _ => summary.days.clone(),
    };
    // Cases and readings are not imported: their rollup is the flushes' alone.
    rebuild_days(factory, writer, Rollup::Contacts, &days).await?;
    Ok(summary)
}

/// Values already in the store that an import must not repeat (registered devices and MACs).
async fn existing_unique_values(writer: &PartitionWriter, table: Table) -> Result<HashMap<(usize, String), String>> {
    let mut existing = HashMap::new();
    if table != Table::Devices {
        return Ok(existing);
    }
    let factory = SessionFactory::new(writer.store().clone(), SessionOptions::default())?;
    let ctx: SessionContext = factory.session().await?;
    let batches = ctx.sql("SELECT device_uuid, mac FROM devices").await?.collect().await?;
    for batch in batches {
        let uuids = batch.column(0).as_string::<i32>();
        let macs = batch.column(1).as_string::<i32>();
        for (uuid, mac) in uuids.iter().zip(macs.iter()) {
            let (Some(uuid), Some(mac)) = (uuid, mac) else { continue };
            existing.insert((0, uuid.to_string()), "already registered".to_string());
            if let Some(key) = handle_key(uuid) {
                existing.insert(key, format!("{uuid}, already registered"));
            }
            existing.insert((1, mac.to_string()), format!("already registered to device {uuid}"));
        }
    }
    Ok(existing)
}

enum Format {
    Csv,
    Parquet,
}

impl Format {
    fn of(file: &Path) -> Result<Self> {
        let extension = file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match extension.as_deref() {
            Some("csv") => Ok(Format::Csv),
            Some("parquet") | Some("pq") => Ok(Format::Parquet),
            _ => Err(Error::Input {
                file: file.to_path_buf(),
                position: Position::File,
                reason: "unknown format: the file name must end in .csv or .parquet".into(),
            }),
        }
    }
}

/// Maps the input's column names to the table's columns; refuses unknown, repeated and missing ones.
fn map_columns(file: &Path, specs: &[ColumnSpec], table: Table, names: &[&str]) -> Result<Vec<Option<usize>>> {
    let refuse = |column: &str, reason: String| Error::Input {
        file: file.to_path_buf(),
        position: Position::Column(column.to_string()),
        reason,
    };
    let mut positions = vec![None; specs.len()];
    for (i, name) in names.iter().enumerate() {
        let name = name.trim();
        let Some(spec) = specs.iter().position(|s| s.name == name) else {
            let known: Vec<_> = specs.iter().map(|s| s.name).collect();
            let hint = match table.time_column() {
                Some(time) if name == schema::DAY => format!(" (day is derived from {time})"),
                _ => String::new(),
            };
            return Err(refuse(
                name,
                format!("unknown column{hint}; the columns of {table} are {}", known.join(", ")),
            ));
        };
        if positions[spec].is_some() {
            return Err(refuse(name, "the column appears twice".into()));
        }
        positions[spec] = Some(i);
    }
    for (spec, position) in specs.iter().zip(&positions) {
        if position.is_none() && !spec.nullable && !spec.defaults_to_now {
            return Err(refuse(spec.name, "required column is missing".into()));
        }
    }
    Ok(positions)
}

fn read_csv(file: &Path, staged: &mut Staged) -> Result<()> {
    let input_error = |position, reason: String| Error::Input {
        file: file.to_path_buf(),
        position,
        reason,
    };
    let reader = File::open(file).map_err(|e| input_error(Position::File, format!("cannot open: {e}")))?;
    let mut csv = csv::ReaderBuilder::new().has_headers(true).from_reader(reader);
    let header = csv
        .headers()
        .map_err(|e| input_error(Position::Line(1), e.to_string()))?
        .clone();
    let names: Vec<&str> = header.iter().collect();
    if names.iter().all(|n| n.trim().is_empty()) {
        return Err(input_error(
            Position::Line(1),
            "the file is empty: a header line is required".into(),
        ));
    }
    let positions = map_columns(file, &staged.specs, staged.table, &names)?;
    let mut record = csv::StringRecord::new();
    loop {
        let line = csv.position().line() + 1;
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map_or(line, |p| p.line());
                let reason = match e.kind() {
                    csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                        format!("the line has {len} fields but the header has {expected_len}")
                    }
                    _ => e.to_string(),
                };
                return Err(input_error(Position::Line(line), reason));
            }
        }
        let line = record.position().map_or(line, |p| p.line());
        let cells = positions
            .iter()
            .map(|p| p.and_then(|i| record.get(i)).map_or(Cell::Null, Cell::Text))
            .collect();
        staged
            .push(cells, &format!("line {line} of {}", file.display()))
            .map_err(|reason| input_error(Position::Line(line), reason))?;
    }
    Ok(())
}

/// Reads every page of `file` once before its rows are decoded, and refuses one that says
/// it holds no values yet carries value bytes: parquet 59's byte-array decoder divides by
/// the page's value count (fuzzing found a dictionary page of 0 values that panics it).
/// A page that cannot be read at all is refused here too, naming where.
fn vet_pages(file: &Path) -> std::result::Result<(), String> {
    use parquet::basic::Encoding;
    use parquet::column::page::Page;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let opened = File::open(file).map_err(|e| format!("cannot open: {e}"))?;
    let size = opened.metadata().map_err(|e| format!("cannot read: {e}"))?.len();
    let reader = SerializedFileReader::new(opened).map_err(|e| format!("not a readable Parquet file: {e}"))?;
    for group in 0..reader.num_row_groups() {
        let row_group = reader
            .get_row_group(group)
            .map_err(|e| format!("row group {group}: {e}"))?;
        for column in 0..row_group.num_columns() {
            let chunk = row_group.metadata().column(column);
            let name = chunk.column_path().string();
            let at = |what: String| format!("row group {group}, column {name}: {what}");
            // parquet asserts that a chunk's start and length are not negative (fuzzing
            // found a footer that says otherwise); one past the file's end is damaged too.
            let start = chunk.dictionary_page_offset().unwrap_or(chunk.data_page_offset());
            let within = u64::try_from(start)
                .ok()
                .zip(u64::try_from(chunk.compressed_size()).ok())
                .and_then(|(start, length)| start.checked_add(length))
                .is_some_and(|end| end <= size);
            if !within {
                return Err(at(format!(
                    "the footer places it at byte {start}, {} bytes long, in a file of {size} bytes (a damaged file)",
                    chunk.compressed_size()
                )));
            }
            let pages = row_group
                .get_column_page_reader(column)
                .map_err(|e| at(e.to_string()))?;
            for page in pages {
                let page = page.map_err(|e| at(e.to_string()))?;
                let empty_but_carrying = match &page {
                    Page::DictionaryPage { buf, num_values, .. } => *num_values == 0 && !buf.is_empty(),
                    Page::DataPage { buf, num_values, .. } => *num_values == 0 && !buf.is_empty(),
                    Page::DataPageV2 {
                        buf,
                        num_values,
                        num_nulls,
                        encoding,
                        def_levels_byte_len,
                        rep_levels_byte_len,
                        ..
                    } => {
                        let levels = (*def_levels_byte_len as usize).saturating_add(*rep_levels_byte_len as usize);
                        *encoding == Encoding::PLAIN && num_values <= num_nulls && buf.len() > levels
                    }
                };
                if empty_but_carrying {
                    return Err(at(format!(
                        "a {:?} page that holds no values but carries {} bytes (a damaged file)",
                        page.page_type(),
                        page.buffer().len()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Reads `file`'s rows into `staged`. parquet 59 panics on some damaged files (fuzzing found
/// three: a page of no values carrying bytes, a chunk outside the file, and a dictionary
/// index width past 32 bits in an RLE page); the first two are refused by name before any
/// row is decoded, and any other panic of the reader is caught here and refused as a
/// damaged file (the import then stores nothing of it, as for any refused file).
fn read_parquet(file: &Path, staged: &mut Staged) -> Result<()> {
    let read = std::panic::AssertUnwindSafe(|| read_parquet_rows(file, staged));
    std::panic::catch_unwind(read).unwrap_or_else(|panic| {
        let said = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(Error::Input {
            file: file.to_path_buf(),
            position: Position::File,
            reason: format!("the Parquet reader failed on it (a damaged file): {said}"),
        })
    })
}

fn read_parquet_rows(file: &Path, staged: &mut Staged) -> Result<()> {
    let input_error = |position, reason: String| Error::Input {
        file: file.to_path_buf(),
        position,
        reason,
    };
    let reader = File::open(file).map_err(|e| input_error(Position::File, format!("cannot open: {e}")))?;
    // The file's embedded Arrow schema (`ARROW:schema`, an IPC message) is ignored: arrow-ipc
    // panics on a damaged one (fuzzing found it), and the Parquet schema says all the import
    // needs (every column is cast to the type its kind is validated from).
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    let builder = ParquetRecordBatchReaderBuilder::try_new_with_options(reader, options)
        .map_err(|e| input_error(Position::File, format!("not a readable Parquet file: {e}")))?;
    let file_schema = Arc::clone(builder.schema());
    let names: Vec<&str> = file_schema.fields().iter().map(|f| f.name().as_str()).collect();
    let positions = map_columns(file, &staged.specs, staged.table, &names)?;
    vet_pages(file).map_err(|reason| input_error(Position::File, reason))?;
    let reader = builder
        .build()
        .map_err(|e| input_error(Position::File, e.to_string()))?;
    let mut row = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| input_error(Position::Row(row + 1), e.to_string()))?;
        // Bring every column to the type its kind is validated from.
        let columns: Vec<Option<ArrayRef>> = staged
            .specs
            .iter()
            .zip(&positions)
            .map(|(spec, position)| {
                let Some(i) = *position else { return Ok(None) };
                let source = batch.column(i).data_type();
                let is_text = matches!(source, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
                // Text is validated row by row, as in CSV; other types convert exactly or fail.
                let target = match spec.kind {
                    _ if is_text => DataType::Utf8,
                    Kind::Timestamp => schema::timestamp_type(),
                    Kind::Duration | Kind::Dbm => DataType::Int64,
                    _ => DataType::Utf8,
                };
                let options = CastOptions {
                    safe: false,
                    ..Default::default()
                };
                cast_with_options(batch.column(i), &target, &options)
                    .map(Some)
                    .map_err(|e| {
                        input_error(
                            Position::Column(spec.name.to_string()),
                            format!("cannot read {} as {target}: {e}", batch.schema().field(i).data_type()),
                        )
                    })
            })
            .collect::<Result<_>>()?;
        for r in 0..batch.num_rows() {
            row += 1;
            let cells = columns
                .iter()
                .map(|column| match column {
                    None => Cell::Null,
                    Some(a) if a.is_null(r) => Cell::Null,
                    Some(a) => match a.data_type() {
                        DataType::Int64 => Cell::Int(a.as_primitive::<Int64Type>().value(r)),
                        DataType::Timestamp(_, _) => {
                            Cell::Micros(a.as_primitive::<TimestampMicrosecondType>().value(r))
                        }
                        _ => Cell::Text(a.as_string::<i32>().value(r)),
                    },
                })
                .collect();
            staged
                .push(cells, &format!("row {row} of {}", file.display()))
                .map_err(|reason| input_error(Position::Row(row), reason))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (fuzzing, 2026-12-03): a Parquet file whose embedded Arrow schema names an
    /// integer type arrow-ipc does not know made it panic while the file was opened, killing
    /// `proxima import`. The input is the one the fuzzer found; now it is read by its Parquet
    /// schema alone, like a file with no Arrow schema.
    #[tokio::test]
    async fn a_parquet_file_with_a_damaged_arrow_schema_is_read_by_its_parquet_schema() {
        let found = include_bytes!("../../fuzz/regressions/import_parquet-arrow-ipc-convert-332.parquet");
        // The independent check that the input still carries the bug: reading it with its
        // Arrow schema panics.
        let panics = std::panic::catch_unwind(|| {
            ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from_static(found)).map(|_| ())
        });
        assert!(
            panics.is_err(),
            "parquet no longer panics on it: the regression input is stale"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("found.parquet");
        std::fs::write(&file, found).unwrap();
        let store = proxima_engine::Store::open("memory://").unwrap();
        let writer = PartitionWriter::new(store.clone(), "test");
        // Its Parquet data is sound: imported whole, as many rows as its footer counts.
        let footer = ParquetRecordBatchReaderBuilder::try_new_with_options(
            bytes::Bytes::from_static(found),
            ArrowReaderOptions::new().with_skip_arrow_metadata(true),
        )
        .unwrap();
        let rows = footer.metadata().file_metadata().num_rows() as u64;
        assert!(rows > 0);
        let summary = import(&writer, Table::Observations, &[file]).await.unwrap();
        assert_eq!(summary.rows, rows);
        assert!(!store.list_files(Table::Observations).await.unwrap().is_empty());
    }

    /// A file whose dictionary page says it holds no values but carries bytes (found by
    /// fuzzing) is refused as damaged, naming the column; parquet's reader panics on it.
    #[tokio::test]
    async fn a_parquet_page_of_no_values_carrying_bytes_is_refused_not_a_panic() {
        let found = include_bytes!("../../fuzz/regressions/import_parquet-parquet-byte-array-391.parquet");
        // The independent check that the input still carries the bug: reading its rows
        // panics parquet's byte-array decoder.
        assert!(
            decoding_panics(found),
            "parquet no longer panics on it: the regression input is stale"
        );
        let refused = refused_import(found).await;
        assert!(
            refused.contains("holds no values but carries") && refused.contains("column "),
            "{refused}"
        );
    }

    /// A footer placing a column chunk at a negative offset (found by fuzzing) is refused,
    /// naming the column; parquet asserts on it when a page reader is made.
    #[tokio::test]
    async fn a_parquet_column_chunk_outside_the_file_is_refused_not_a_panic() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let found = include_bytes!("../../fuzz/regressions/import_parquet-parquet-metadata-1063.parquet");
        let panics = std::panic::catch_unwind(|| {
            let reader = SerializedFileReader::new(bytes::Bytes::from_static(found)).unwrap();
            let group = reader.get_row_group(0).unwrap();
            (0..group.num_columns()).for_each(|c| drop(group.get_column_page_reader(c)));
        });
        assert!(
            panics.is_err(),
            "parquet no longer panics on it: the regression input is stale"
        );
        let refused = refused_import(found).await;
        assert!(
            refused.contains("the footer places it") && refused.contains("column "),
            "{refused}"
        );
    }

    /// A damaged file on which parquet's reader panics where no check of ours looks (an RLE
    /// dictionary page whose index width is over 32 bits; found by fuzzing) is refused, not
    /// a crash of the command.
    #[tokio::test]
    async fn a_parquet_file_the_reader_panics_on_is_refused() {
        let found = include_bytes!("../../fuzz/regressions/import_parquet-parquet-bit-util-697.parquet");
        assert!(
            decoding_panics(found),
            "parquet no longer panics on it: the regression input is stale"
        );
        let refused = refused_import(found).await;
        assert!(refused.contains("the Parquet reader failed on it"), "{refused}");
    }

    /// `found`, imported as a Parquet file of observations into an empty store: refused
    /// (returned), and nothing stored.
    async fn refused_import(found: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("found.parquet");
        std::fs::write(&file, found).unwrap();
        let store = proxima_engine::Store::open("memory://").unwrap();
        let writer = PartitionWriter::new(store.clone(), "test");
        let refused = import(&writer, Table::Observations, &[file]).await.unwrap_err();
        assert!(store.list_files(Table::Observations).await.unwrap().is_empty());
        refused.to_string()
    }

    /// Whether decoding `found`'s rows (by its Parquet schema) panics parquet's reader.
    fn decoding_panics(found: &'static [u8]) -> bool {
        std::panic::catch_unwind(|| {
            let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
            let reader =
                ParquetRecordBatchReaderBuilder::try_new_with_options(bytes::Bytes::from_static(found), options)
                    .unwrap()
                    .build()
                    .unwrap();
            reader.count()
        })
        .is_err()
    }

    /// Two devices whose handles clash cannot both be imported. (No two real UUIDs are known
    /// to clash, so the earlier device's handle is given as already registered.)
    #[test]
    fn a_device_whose_handle_is_taken_is_refused() {
        let uuid = "00000000-0000-4000-8000-00000000000a";
        let mut existing = HashMap::new();
        existing.insert(
            handle_key(uuid).unwrap(),
            "00000000-0000-4000-8000-0000000000ff, already registered".to_string(),
        );
        let mut staged = Staged::new(Table::Devices, existing);
        let cells = |uuid: &'static str, mac: &'static str| vec![Cell::Text(uuid), Cell::Text(mac), Cell::Micros(0)];
        let err = staged
            .push(cells(uuid, "AA:00:00:00:00:0A"), "line 2 of d.csv")
            .unwrap_err();
        assert!(
            err.contains("the same identifier handle (8 bytes of its UUID's SHA-256) as the device 00000000-0000-4000-8000-0000000000ff, already registered"),
            "{err}"
        );
        // Another device is fine, and its handle is then taken within the import.
        let other = "00000000-0000-4000-8000-00000000000b";
        staged
            .push(cells(other, "AA:00:00:00:00:0B"), "line 3 of d.csv")
            .unwrap();
        assert_eq!(
            staged.unique.get(&handle_key(other).unwrap()).map(String::as_str),
            Some("00000000-0000-4000-8000-00000000000b on line 3 of d.csv")
        );
    }
}
