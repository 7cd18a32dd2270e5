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
//! Each file also runs on a Ballista cluster: a `proxima scheduler` and two
//! `proxima executor` processes on loopback over the same store, and every
//! statement is run by a second session that executes there (`--ballista`).
//! A query must return the same rows on the cluster as locally (in the same
//! order when it has an `ORDER BY`), and a statement that fails locally must
//! fail there too. EXPLAIN (plans differ by design) and statements that write
//! the machine's files (`COPY`, external tables: the cluster has no access to
//! them) run locally only. `--local` skips the cluster.
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

mod common;

struct ProximaDb {
    ctx: SessionContext,
    /// The same session executing on the cluster, if the file runs on one.
    cluster: Option<SessionContext>,
    compared: Arc<std::sync::atomic::AtomicUsize>,
}

/// Whether a statement runs on the cluster too (see the module docs).
fn runs_on_cluster(sql: &str) -> bool {
    let head = sql.trim_start().to_ascii_uppercase();
    !["EXPLAIN", "COPY", "CREATE EXTERNAL"]
        .iter()
        .any(|k| head.starts_with(k))
}

/// A statement's rows (none for a statement without a result), formatted.
async fn rows_of(ctx: &SessionContext, sql: &str) -> Result<Option<Vec<Vec<String>>>, DataFusionError> {
    let frame = ctx.sql(sql).await?;
    if frame.schema().fields().is_empty() {
        frame.collect().await?;
        return Ok(None);
    }
    let mut rows = Vec::new();
    for batch in &frame.collect().await? {
        rows.extend(format_rows(batch)?);
    }
    Ok(Some(rows))
}

impl ProximaDb {
    /// Runs `sql` on the cluster and compares with what it did locally (`local`).
    async fn compare(
        &self,
        sql: &str,
        local: &Result<Option<Vec<Vec<String>>>, String>,
    ) -> Result<(), DataFusionError> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        if !runs_on_cluster(sql) {
            return Ok(());
        }
        let remote = rows_of(cluster, sql).await.map_err(|e| e.to_string());
        let differs = |why: String| Err(DataFusionError::Execution(format!("on the cluster, {sql}\n{why}")));
        match (local, remote) {
            (Ok(Some(local)), Ok(Some(mut remote))) => {
                if !sql.to_ascii_uppercase().contains("ORDER BY") {
                    let mut local = local.clone();
                    local.sort();
                    remote.sort();
                    if local != remote {
                        return differs(format!("returned {remote:?}\nlocally {local:?}"));
                    }
                } else if *local != remote {
                    return differs(format!("returned {remote:?}\nlocally {local:?}"));
                }
                self.compared.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            (Ok(None), Ok(None)) | (Err(_), Err(_)) => Ok(()),
            (Ok(_), Err(e)) => differs(format!("failed: {e}")),
            (Err(e), Ok(_)) => differs(format!("succeeded, but locally it failed: {e}")),
            (Ok(_), Ok(_)) => differs("returned rows where locally there were none, or none where there were".into()),
        }
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for ProximaDb {
    type Error = DataFusionError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DataFusionError> {
        let result = self.run_locally(sql).await;
        let local = match &result {
            Ok(DBOutput::Rows { rows, .. }) => Ok(Some(rows.clone())),
            Ok(_) => Ok(None),
            Err(e) => Err(e.to_string()),
        };
        self.compare(sql, &local).await?;
        result
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "proxima"
    }

    async fn sleep(duration: std::time::Duration) {
        tokio::time::sleep(duration).await;
    }
}

impl ProximaDb {
    async fn run_locally(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DataFusionError> {
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

async fn run_file(path: &Path, complete: bool, on_cluster: bool) -> Result<usize, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = fixture_store(dir.path(), path).await?;
    let identifiers = fixture_identifiers(path)?;
    let factory = Arc::new(SessionFactory::new(
        store.clone(),
        SessionOptions {
            local_files: true,
            identifiers: identifiers.clone(),
            ..SessionOptions::default()
        },
    )?);
    let nodes = tempfile::tempdir()?;
    let (cluster, remote) = if on_cluster && !complete {
        let id_key = path
            .file_stem()
            .map(|stem| root().join("sql/fixtures").join(stem).join("id.key"))
            .filter(|f| f.exists());
        let mut args = Vec::new();
        if let Some(key) = &id_key {
            args.extend(["--id-key".to_string(), key.display().to_string()]);
        }
        let cluster = common::Cluster::start(dir.path(), &args, 2, nodes.path())?;
        let remote = SessionFactory::new(
            store,
            SessionOptions {
                local_files: true,
                identifiers,
                remote: Some(Arc::new(proxima_cluster::client::Ballista::new(&cluster.url)?)),
                ..SessionOptions::default()
            },
        )?;
        (Some(cluster), Some(Arc::new(remote)))
    } else {
        (None, None)
    };
    let compared = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&compared);
    let mut runner = sqllogictest::Runner::new(move || {
        let factory = Arc::clone(&factory);
        let remote = remote.clone();
        let compared = Arc::clone(&counter);
        async move {
            let external = |e| DataFusionError::External(Box::new(e));
            let ctx = factory.session().await.map_err(external)?;
            let cluster = match remote {
                Some(remote) => Some(remote.session().await.map_err(external)?),
                None => None,
            };
            Ok::<_, DataFusionError>(ProximaDb { ctx, cluster, compared })
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
        let ran = runner.run_file_async(path).await;
        if let (Err(_), Some(_)) = (&ran, &cluster) {
            for log in ["scheduler.log", "executor1.log", "executor2.log"] {
                let text = std::fs::read_to_string(nodes.path().join(log)).unwrap_or_default();
                eprintln!(
                    "--- {log}\n{}",
                    text.lines().rev().take(20).collect::<Vec<_>>().join("\n")
                );
            }
        }
        ran?;
    }
    drop(cluster);
    Ok(compared.load(std::sync::atomic::Ordering::Relaxed))
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let complete = args.iter().any(|a| a == "--complete");
    let on_cluster = !args.iter().any(|a| a == "--local");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("sql/tests"))
        .expect("sql/tests exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .filter(|p| filters.is_empty() || filters.iter().any(|f| p.to_string_lossy().contains(f.as_str())))
        .collect();
    files.sort();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let (mut passed, mut failed, mut compared) = (0, 0, 0);
    for file in &files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match runtime.block_on(run_file(file, complete, on_cluster)) {
            Ok(same) => {
                println!("ok      {name} ({same} statements with the same rows on the cluster)");
                passed += 1;
                compared += same;
            }
            Err(e) => {
                println!("FAILED  {name}\n{e}\n");
                failed += 1;
            }
        }
    }
    println!(
        "sqllogictests: {passed} passed, {failed} failed; {compared} statements returned the same rows on the cluster"
    );
    if failed == 0 && !files.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
