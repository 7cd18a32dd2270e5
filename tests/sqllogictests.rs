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
//! When the cluster runs and `moto_server` is installed (always under CI, where its absence
//! fails the suite), every file's store is on S3: a bucket of moto on loopback, which the
//! local session, `$PROXIMA`, the scheduler and the executors all reach through `s3://`.
//! `$STORE_FILES` expands to a command that lists every file of the store, wherever it is,
//! `$STORE_RM FOLDER` to one that removes a folder of it; `$SCRATCH` is a local folder of
//! the file's own (exports, other stores).
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
async fn fixture_store(location: &Location<'_>, slt: &Path) -> Result<Store, Box<dyn std::error::Error>> {
    let store = location.open()?;
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

/// Where a file's store is: a local folder, or a prefix of the moto bucket [`BUCKET`].
enum Location<'a> {
    Local(tempfile::TempDir),
    S3 { moto: &'a common::Moto, prefix: String },
}

const BUCKET: &str = "golden";

impl Location<'_> {
    fn url(&self) -> String {
        match self {
            Self::Local(dir) => dir.path().display().to_string(),
            Self::S3 { prefix, .. } => format!("s3://{BUCKET}/{prefix}"),
        }
    }

    fn open(&self) -> proxima_engine::Result<Store> {
        match self {
            Self::Local(dir) => Store::local(dir.path()),
            Self::S3 { moto, .. } => moto.open_store(&self.url()),
        }
    }

    /// The environment a process needs to reach the store.
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Local(_) => Vec::new(),
            Self::S3 { moto, .. } => moto.env(),
        }
    }

    /// A shell command printing the path of every file the store holds, one a line.
    fn list_files(&self) -> String {
        match self {
            Self::Local(dir) => format!("find '{}' -type f", dir.path().display()),
            Self::S3 { moto, prefix } => Self::s3_script(moto, prefix, r#"print(*keys(""), sep="\n")"#),
        }
    }

    /// A shell command that removes the folder of the store its argument names (and fails if
    /// there is none), as a crash or an operator could.
    fn remove_folder(&self) -> String {
        match self {
            Self::Local(dir) => format!("sh -c 'rm -r \"$0/$1\"' '{}'", dir.path().display()),
            Self::S3 { moto, prefix } => Self::s3_script(
                moto,
                prefix,
                &r#"gone = keys(sys.argv[1] + "/"); [s3.delete_object(Bucket="BUCKET", Key=k) for k in gone]; sys.exit(0 if gone else 1)"#.replace("BUCKET", BUCKET),
            ),
        }
    }

    /// Python (moto's, which has boto3) running `body` with `s3` (a boto3 client of the
    /// bucket's server) and `keys(under)`, the keys of the store's objects under a folder.
    fn s3_script(moto: &common::Moto, prefix: &str, body: &str) -> String {
        let head = r#"import sys, boto3; s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:PORT", aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"); keys = lambda under: [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="BUCKET", Prefix="PREFIX/" + under) for o in page.get("Contents", [])]; "#
            .replace("PORT", &moto.port.to_string())
            .replace("BUCKET", BUCKET)
            .replace("PREFIX", prefix);
        format!("'{}' -c '{head}{body}'", moto.python().display())
    }
}

async fn run_file(
    path: &Path,
    complete: bool,
    on_cluster: bool,
    moto: Option<&common::Moto>,
) -> Result<Ran, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let location = match moto {
        Some(moto) => Location::S3 {
            moto,
            prefix: path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .ok_or("a file name")?,
        },
        None => Location::Local(tempfile::tempdir()?),
    };
    let store = fixture_store(&location, path).await?;
    let identifiers = fixture_identifiers(path)?;
    let factory = Arc::new(SessionFactory::new(
        store.clone(),
        SessionOptions {
            local_files: true,
            identifiers: identifiers.clone(),
            ..SessionOptions::default()
        },
    )?);
    // The analysts' rollups, as the writers leave them (cases and exposure keys were
    // written after the imports, so every day is rolled up once at the end).
    for rollup in proxima_storage::rollup::Rollup::ALL {
        let days = proxima_storage::rollup::rollup_days(&store, rollup).await?;
        proxima_storage::rollup::rebuild_days(&factory, &PartitionWriter::new(store.clone(), "import"), rollup, &days)
            .await?;
    }
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
        let cluster = common::Cluster::start_with(location.url(), &args, 2, nodes.path(), &location.env(), &[])?;
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
    // A store on S3 has no folder beside it for `proxima sql`'s audit log.
    let proxima = format!(
        "env RUST_LOG=error PROXIMA_DATA={} PROXIMA_AUDIT_DIR={} {} {}",
        location.url(),
        dir.path().join("audit").display(),
        location
            .env()
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(" "),
        env!("CARGO_BIN_EXE_proxima")
    );
    runner.set_var("PROXIMA".into(), proxima);
    runner.set_var("STORE_FILES".into(), location.list_files());
    runner.set_var("STORE_RM".into(), location.remove_folder());
    runner.set_var("SCRATCH".into(), dir.path().display().to_string());
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
    let mut ran = Ran {
        compared: compared.load(std::sync::atomic::Ordering::Relaxed),
        ..Ran::default()
    };
    if let Some(cluster) = cluster {
        let tasks = cluster.finished_tasks();
        for (n, executor) in tasks.iter().enumerate().take(2) {
            ran.tasks[n] = executor.len();
        }
        let mut stages = std::collections::BTreeMap::<&String, std::collections::BTreeSet<&String>>::new();
        for (job, stage, _) in tasks.iter().flatten() {
            stages.entry(job).or_default().insert(stage);
        }
        ran.most_stages = stages.values().map(|s| s.len()).max().unwrap_or(0);
    }
    Ok(ran)
}

/// What a file's run did on the cluster.
#[derive(Default)]
struct Ran {
    /// Statements that returned the same rows there as locally.
    compared: usize,
    /// Tasks each executor finished.
    tasks: [usize; 2],
    /// The most stages of one job.
    most_stages: usize,
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
    let moto = if on_cluster && !complete {
        common::Moto::start_or_skip("S3 stores for the golden suite")
    } else {
        None
    };
    match &moto {
        Some(moto) => {
            moto.create_bucket(BUCKET);
            println!("stores on S3: s3://{BUCKET}/<file> on moto, 127.0.0.1:{}", moto.port);
        }
        None => println!("stores in local folders"),
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let (mut passed, mut failed, mut compared) = (0, 0, 0);
    let (mut tasks, mut most_stages) = ([0, 0], 0);
    for file in &files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match runtime.block_on(run_file(file, complete, on_cluster, moto.as_ref())) {
            Ok(ran) => {
                println!(
                    "ok      {name} ({} statements with the same rows on the cluster; tasks {} + {})",
                    ran.compared, ran.tasks[0], ran.tasks[1]
                );
                passed += 1;
                compared += ran.compared;
                tasks = [tasks[0] + ran.tasks[0], tasks[1] + ran.tasks[1]];
                most_stages = most_stages.max(ran.most_stages);
            }
            Err(e) => {
                println!("FAILED  {name}\n{e}\n");
                failed += 1;
            }
        }
    }
    println!(
        "sqllogictests: {passed} passed, {failed} failed; {compared} statements returned the same rows on the cluster, \
         whose executors ran {} and {} tasks, {most_stages} stages at most in one job",
        tasks[0], tasks[1]
    );
    // The cluster's work was spread: both executors ran tasks, and queries ran in stages.
    let spread = !on_cluster || complete || (tasks[0] > 0 && tasks[1] > 0 && most_stages >= 2);
    if !spread {
        println!("FAILED  the cluster's work was not spread over both executors in stages");
    }
    if failed == 0 && spread && !files.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
