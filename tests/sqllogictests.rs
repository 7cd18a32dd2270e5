//! Golden SQL tests: every `sql/tests/*.slt` file (sqllogictest format, as DataFusion uses).
//!
//! Each file runs against its own fresh store, filled from `sql/fixtures/`
//! through the real import path, with a session from the engine's
//! `SessionFactory`. `system ok` records run the real `proxima` binary on the
//! same store: `$PROXIMA` expands to it (with `PROXIMA_DATA` set), `$FIXTURES`
//! to the fixtures folder. Output paths and file names are normalised so
//! plans are stable.
//!
//! A file whose fixtures folder holds `id.key` gets sessions that resolve rotating
//! identifiers with it (15-minute epochs, the default tolerance).
//!
//! `cargo test --test sqllogictests -- --complete` rewrites the expected
//! results (review the diff); other arguments select files by substring.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use proxima_engine::ephemeral::{DEFAULT_TOLERANCE, IdKeys, Identifiers};
use proxima_engine::{SessionFactory, SessionOptions, Store, Table};
use proxima_storage::PartitionWriter;
use sqllogictest::{DBOutput, DefaultColumnType};

struct ProximaDb {
    ctx: SessionContext,
}

#[async_trait]
impl sqllogictest::AsyncDB for ProximaDb {
    type Error = DataFusionError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DataFusionError> {
        let frame = self.ctx.sql(sql).await?;
        let schema = frame.schema().inner().clone();
        let batches = frame.collect().await?;
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let types = schema.fields().iter().map(|f| column_type(f.data_type())).collect();
        let mut rows = Vec::new();
        for batch in &batches {
            rows.extend(format_rows(batch)?);
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "proxima"
    }

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }
}

fn column_type(data_type: &DataType) -> DefaultColumnType {
    match data_type {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() || matches!(t, DataType::Decimal128(_, _)) => DefaultColumnType::FloatingPoint,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

fn format_rows(batch: &RecordBatch) -> Result<Vec<Vec<String>>, DataFusionError> {
    let options = FormatOptions::default().with_null("NULL");
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::new();
    for row in 0..batch.num_rows() {
        let cells: Vec<String> = formatters
            .iter()
            .map(|f| match f.value(row).to_string() {
                s if s.is_empty() => "(empty)".to_string(),
                s => s,
            })
            .collect();
        // A multi-line cell (an EXPLAIN plan) continues on rows of its own, one per line,
        // so that expected results read like the plan.
        let mut continuation = Vec::new();
        let first_lines = cells
            .into_iter()
            .map(|cell| {
                let mut lines = cell.lines().map(str::to_string);
                let first = lines.next().unwrap_or_default();
                continuation.extend(lines.map(|line| vec![line]));
                first
            })
            .collect();
        rows.push(first_lines);
        rows.extend(continuation);
    }
    Ok(rows)
}

static STORE_PATH: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"[^\s\[\],]*/(observations|devices)/").expect("valid regex"));
static FILE_NAME: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"part-[0-9a-f-]{36}\.parquet").expect("valid regex"));

/// Whitespace-folding, as sqllogictest's default, plus store paths and file names made stable.
fn normalize(s: &String) -> String {
    let s = sqllogictest::default_normalizer(s);
    let s = STORE_PATH.replace_all(&s, "$1/");
    FILE_NAME.replace_all(&s, "part-*.parquet").into_owned()
}

fn validator(normalizer: sqllogictest::Normalizer, actual: &[Vec<String>], expected: &[String]) -> bool {
    sqllogictest::default_validator(normalizer, actual, expected)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Fills a fresh store with the fixtures, through the real import path: those in
/// `sql/fixtures/<name of the .slt file>/` if that folder exists, else `sql/fixtures/`.
async fn fixture_store(dir: &Path, slt: &Path) -> Result<Store, Box<dyn std::error::Error>> {
    let store = Store::local(dir)?;
    let writer = PartitionWriter::new(store.clone(), "import");
    let own = slt.file_stem().map(|stem| root().join("sql/fixtures").join(stem));
    let fixtures = own
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| root().join("sql/fixtures"));
    proxima_ingest::import::import(&writer, Table::Devices, &[fixtures.join("devices.csv")]).await?;
    proxima_ingest::import::import(&writer, Table::Observations, &[fixtures.join("observations.csv")]).await?;
    for table in [Table::Cases, Table::ExposureKeys] {
        let file = fixtures.join(format!("{}.csv", table.name()));
        if file.exists() {
            write_rows(&writer, table, &file).await?;
        }
    }
    Ok(store)
}

/// Writes the rows of a CSV file (with the table's columns, `day` aside), each in its day:
/// cases and exposure keys come from REST, which `proxima import` does not stand in for.
async fn write_rows(writer: &PartitionWriter, table: Table, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let time_column = table.time_column().ok_or("a day-partitioned table")?;
    let reader = arrow::csv::ReaderBuilder::new(table.file_schema())
        .with_header(true)
        .build(std::fs::File::open(path)?)?;
    let mut transaction = writer.begin();
    for batch in reader {
        let batch = batch?;
        let times = batch
            .column_by_name(time_column)
            .ok_or("no time column")?
            .as_any()
            .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
            .ok_or("the time column is not a timestamp")?
            .clone();
        for row in 0..batch.num_rows() {
            let day = chrono::DateTime::from_timestamp_micros(times.value(row))
                .ok_or("a time out of range")?
                .date_naive();
            transaction.write_file(table, Some(day), &[batch.slice(row, 1)]).await?;
        }
    }
    transaction.commit().await?;
    Ok(())
}

/// The identifier keys of a file's own fixtures (`id.key`, resolving 15-minute epochs with
/// the default tolerance), if it has them.
fn fixture_identifiers(slt: &Path) -> Result<Option<Arc<Identifiers>>, Box<dyn std::error::Error>> {
    let Some(file) = slt
        .file_stem()
        .map(|stem| root().join("sql/fixtures").join(stem).join("id.key"))
        .filter(|f| f.exists())
    else {
        return Ok(None);
    };
    let keys = IdKeys::load(&file, None)?;
    let epoch = std::time::Duration::from_secs(15 * 60);
    Ok(Some(Arc::new(Identifiers::new(keys, epoch, DEFAULT_TOLERANCE))))
}

async fn run_file(path: &Path, complete: bool) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = fixture_store(dir.path(), path).await?;
    let factory = Arc::new(SessionFactory::new(
        store,
        SessionOptions {
            local_files: true,
            identifiers: fixture_identifiers(path)?,
            ..SessionOptions::default()
        },
    )?);
    let mut runner = sqllogictest::Runner::new(move || {
        let factory = Arc::clone(&factory);
        async move {
            let ctx = factory
                .session()
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            Ok::<_, DataFusionError>(ProximaDb { ctx })
        }
    });
    let proxima = format!(
        "env RUST_LOG=error PROXIMA_DATA={} {}",
        dir.path().display(),
        env!("CARGO_BIN_EXE_proxima")
    );
    runner.set_var("PROXIMA".into(), proxima);
    runner.set_var("STORE_DIR".into(), dir.path().display().to_string());
    runner.set_var("FIXTURES".into(), root().join("sql/fixtures").display().to_string());
    runner.with_normalizer(normalize);
    runner.with_validator(validator);
    if complete {
        runner
            .update_test_file(path, " ", validator, normalize, sqllogictest::default_column_validator)
            .await?;
    } else {
        runner.run_file_async(path).await?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let complete = args.iter().any(|a| a == "--complete");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("sql/tests"))
        .expect("sql/tests exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .filter(|p| filters.is_empty() || filters.iter().any(|f| p.to_string_lossy().contains(f.as_str())))
        .collect();
    files.sort();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match runtime.block_on(run_file(file, complete)) {
            Ok(()) => {
                println!("ok      {name}");
                passed += 1;
            }
            Err(e) => {
                println!("FAILED  {name}\n{e}\n");
                failed += 1;
            }
        }
    }
    println!("sqllogictests: {passed} passed, {failed} failed");
    if failed == 0 && !files.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
