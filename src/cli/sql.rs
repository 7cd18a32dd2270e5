//! `proxima sql`: run statements or a script and print the last result set.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use clap::{ArgGroup, Args, ValueEnum};
use datafusion::sql::parser::Statement;
use futures::StreamExt;
use proxima_audit::{Decision, Phase};
use proxima_engine::{SessionFactory, SessionOptions, Store, script};
use proxima_flight_server::client::{Client, ClientError};

use super::CliError;
use super::audit::LocalAudit;

/// Arguments of `proxima sql`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("input").required(true).args(["command", "file"])))]
pub struct SqlArgs {
    /// SQL to run: one or several statements separated by ';'.
    #[arg(short = 'c', long)]
    command: Option<String>,
    /// A SQL script to run (a tracer job).
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// A script parameter: each ${name} in the SQL becomes 'value' (a quoted string literal).
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Folder of the audit log every statement is recorded in (default: `_audit` in a
    /// local store; needed for S3).
    #[arg(long, env = "PROXIMA_AUDIT_DIR", value_name = "DIR")]
    audit_dir: Option<PathBuf>,
    /// The key that signs the audit log's checkpoints; without it the records are appended
    /// unsigned and the next server start signs them.
    #[arg(long, env = "PROXIMA_AUDIT_KEY", value_name = "FILE")]
    audit_key: Option<PathBuf>,
    /// Run through a Proxima server instead of reading the store's files: as a real user,
    /// checked and audited by the server (grpc://HOST:PORT or grpc+tls://HOST:PORT).
    #[arg(long, value_name = "URL", requires = "user")]
    connect: Option<String>,
    /// The user to log in as with --connect; the password comes from PROXIMA_PASSWORD,
    /// the terminal, or the first line of standard input.
    #[arg(long, env = "PROXIMA_USER", value_name = "NAME")]
    user: Option<String>,
    /// Execute on a Ballista cluster (`proxima scheduler`, `proxima executor`): statements
    /// are planned here, on the store's files, and run on the cluster.
    #[arg(long, value_name = "df://HOST:PORT", conflicts_with = "connect")]
    ballista: Option<String>,
    /// Stop a statement that runs longer than this (30s, 10m): on a cluster, a job no
    /// executor takes would otherwise wait for ever. Default: no limit.
    #[arg(long, value_name = "DURATION", value_parser = super::durations::parse_duration, conflicts_with = "connect")]
    timeout: Option<std::time::Duration>,
    /// A CA certificate (PEM) to trust for grpc+tls:// besides the system's.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// What the statements are for, `case:<case_id>`: a tracer reads nothing without it
    /// (sent as x-proxima-purpose with --connect); every audit record names it.
    #[arg(long, env = "PROXIMA_PURPOSE", value_name = "case:ID", value_parser = parse_purpose)]
    purpose: Option<String>,
    /// The smallest number of distinct devices a cell of the aggregates shows on a local
    /// store (`serve --min-cell` for analysts): smaller cells are left out.
    #[arg(long, env = "PROXIMA_MIN_CELL", value_name = "N", default_value_t = proxima_engine::session::DEFAULT_MIN_CELL, value_parser = clap::value_parser!(u32).range(2..), conflicts_with = "connect")]
    min_cell: u32,
    /// The smallest count of cases, readings or alerts the aggregates show on a local store
    /// (`serve --min-count` for analysts): a smaller one, but 0, is NULL (1: none is).
    #[arg(long, env = "PROXIMA_MIN_COUNT", value_name = "N", default_value_t = proxima_engine::session::DEFAULT_MIN_COUNT, value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "connect")]
    min_count: u32,
    /// Rotating identifiers: the keys that resolve them in `encounters` and traces (default:
    /// the development key a loopback server keeps beside the store, if any), and their epochs.
    #[command(flatten)]
    identifiers: super::id_key::IdentifierArgs,
}

fn parse_purpose(text: &str) -> Result<String, String> {
    proxima_udfs::options::parse_purpose(text).map_err(|e| e.to_string())
}

impl SqlArgs {
    /// Whether the statements run through a server (`--connect`), with no local store.
    pub fn is_remote(&self) -> bool {
        self.connect.is_some()
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// An aligned table.
    Table,
    /// CSV with a header line.
    Csv,
    /// JSON, one object per line.
    Json,
}

fn parse_param(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("'{arg}' is not NAME=VALUE"))?;
    Ok((name.trim().to_string(), value.to_string()))
}

/// The statements of `-c` or `-f` with their parameters substituted, and the prefix that
/// names their source in errors.
fn statements(args: &SqlArgs) -> Result<(String, Vec<Statement>), CliError> {
    // Errors name the script file they come from; `-c` needs no name.
    let (source, text) = match (&args.command, &args.file) {
        (Some(sql), _) => (String::new(), sql.clone()),
        (None, Some(file)) => (
            format!("{}: ", file.display()),
            std::fs::read_to_string(file)
                .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?,
        ),
        (None, None) => unreachable!("clap requires -c or -f"),
    };
    let params: BTreeMap<String, String> = args.params.iter().cloned().collect();
    let query_error = |e: datafusion::error::DataFusionError| CliError::Query(format!("{source}{e}"));
    let text = script::substitute(&text, &params).map_err(query_error)?;
    let statements = script::parse(&text).map_err(query_error)?;
    if statements.is_empty() {
        return Err(CliError::Usage(format!("{source}no SQL statement to run")));
    }
    Ok((source, statements))
}

/// `error` of statement `i` (from 0) of `count`, named with its source.
fn statement_error(source: &str, i: usize, count: usize, error: impl std::fmt::Display) -> CliError {
    if count == 1 {
        CliError::Query(format!("{source}{error}"))
    } else {
        CliError::Query(format!("{source}statement {} of {count}: {error}", i + 1))
    }
}

/// The password for `--connect`: `PROXIMA_PASSWORD`, the terminal, or standard input.
fn password() -> Result<String, CliError> {
    use std::io::{BufRead, IsTerminal};
    if let Ok(password) = std::env::var("PROXIMA_PASSWORD") {
        return Ok(password);
    }
    if std::io::stdin().is_terminal() {
        return Ok(rpassword::prompt_password("password: ")?);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Runs `proxima sql --connect`: each statement through the server, the last result printed
/// as in the local mode.
pub async fn run_remote(args: SqlArgs) -> Result<(), CliError> {
    let (source, statements) = statements(&args)?;
    let address = args.connect.as_deref().expect("run_remote needs --connect");
    let user = args
        .user
        .as_deref()
        .ok_or_else(|| CliError::Usage("--connect needs --user NAME".into()))?;
    let password = password()?;
    let mut client = Client::connect(address, args.tls_ca.as_deref(), user, &password)
        .await
        .map_err(|e| CliError::Query(e.to_string()))?;
    if let Some(purpose) = &args.purpose {
        client.set_purpose(purpose);
    }
    let count = statements.len();
    for (i, statement) in statements.into_iter().enumerate() {
        let (schema, stream) = client
            .run(&statement.to_string())
            .await
            .map_err(|e| statement_error(&source, i, count, e))?;
        let printed = print_result(schema, stream, i + 1 == count, args.format).await;
        printed.map_err(|e| match e {
            StatementError::Cli(e) => e,
            other => statement_error(&source, i, count, other),
        })?;
    }
    Ok(())
}

/// Runs `proxima sql` on the store's files.
pub async fn run(store: Store, args: SqlArgs) -> Result<(), CliError> {
    let (source, statements) = statements(&args)?;
    let params = args
        .params
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    let audit = LocalAudit::open(
        &store,
        args.audit_dir.as_deref(),
        args.audit_key.as_deref(),
        args.purpose.clone(),
        params,
    )
    .await?;
    let identifiers = args.identifiers.for_sql(&store).await?;
    let remote = match &args.ballista {
        Some(url) => Some(std::sync::Arc::new(
            proxima_cluster::client::Ballista::new(url).map_err(|e| CliError::Usage(format!("--ballista {e}")))?,
        ) as std::sync::Arc<dyn proxima_engine::Remote>),
        None => None,
    };
    let factory = SessionFactory::new(
        store,
        SessionOptions {
            local_files: true,
            identifiers,
            remote,
            min_cell: Some(args.min_cell),
            min_count: Some(args.min_count),
            ..SessionOptions::default()
        },
    )?;
    let ctx = factory.session().await?;
    let count = statements.len();
    for (i, statement) in statements.into_iter().enumerate() {
        let sql = statement.to_string();
        let statement_error = |e: datafusion::error::DataFusionError| statement_error(&source, i, count, e);
        // Planned, recorded, and only then run (a SET or DDL takes effect when run).
        let plan = match ctx.state().statement_to_plan(statement).await {
            Ok(plan) => plan,
            Err(e) => {
                let mut refused = audit.record(Phase::Decision, Decision::Deny, "cli:sql").with_sql(&sql);
                refused.error = Some(e.to_string());
                audit.append(refused).await?;
                return Err(statement_error(e));
            }
        };
        let mut intent = audit.record(Phase::Intent, Decision::Allow, "cli:sql").with_sql(&sql);
        intent.objects = proxima_engine::access::objects_read(std::slice::from_ref(&plan));
        let seq = audit.append(intent.clone()).await?;
        let started = std::time::Instant::now();
        let mut done = intent.done(seq);
        let running = run_statement(&ctx, plan, i + 1 == count, args.format);
        let outcome = match args.timeout {
            None => running.await,
            Some(limit) => tokio::time::timeout(limit, running).await.unwrap_or_else(|_| {
                let hint = if args.ballista.is_some() {
                    " (on a cluster: are executors running and registered with the scheduler?)"
                } else {
                    ""
                };
                let stopped = format!("stopped after {limit:?} (--timeout){hint}");
                Err(StatementError::Cli(self::statement_error(&source, i, count, stopped)))
            }),
        };
        done.duration_ms = Some(started.elapsed().as_millis() as u64);
        match &outcome {
            Ok(rows) => done.rows = Some(*rows),
            Err(e) => done.error = Some(e.to_string()),
        }
        audit.append(done).await?;
        outcome.map_err(|e| match e {
            StatementError::Query(e) => statement_error(e),
            StatementError::Remote(e) => CliError::Query(e.to_string()),
            StatementError::Cli(e) => e,
        })?;
    }
    Ok(())
}

/// Why a statement failed: in the query (named with its statement), at the server, or in
/// printing.
enum StatementError {
    Query(datafusion::error::DataFusionError),
    Remote(ClientError),
    Cli(CliError),
}

impl From<ClientError> for StatementError {
    fn from(e: ClientError) -> Self {
        Self::Remote(e)
    }
}

impl std::fmt::Display for StatementError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Query(e) => write!(f, "{e}"),
            Self::Remote(e) => write!(f, "{e}"),
            Self::Cli(e) => write!(f, "{e}"),
        }
    }
}

impl From<datafusion::error::DataFusionError> for StatementError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Self::Query(e)
    }
}

impl From<std::io::Error> for StatementError {
    fn from(e: std::io::Error) -> Self {
        Self::Cli(e.into())
    }
}

impl From<arrow::error::ArrowError> for StatementError {
    fn from(e: arrow::error::ArrowError) -> Self {
        Self::Cli(e.into())
    }
}

/// Runs one planned statement; the last one's result is printed in `format`. Returns the
/// rows it produced.
async fn run_statement(
    ctx: &datafusion::prelude::SessionContext,
    plan: datafusion::logical_expr::LogicalPlan,
    last: bool,
    format: Format,
) -> Result<u64, StatementError> {
    let frame = ctx.execute_logical_plan(plan).await?;
    let schema = frame.schema().inner().clone();
    let stream = frame.execute_stream().await?;
    print_result(schema, stream, last, format).await
}

/// Streams a result: printed in `format` if it is the `last` statement's, otherwise only
/// run to its end. Returns its rows.
async fn print_result<E>(
    schema: SchemaRef,
    mut stream: impl futures::Stream<Item = Result<RecordBatch, E>> + Unpin,
    last: bool,
    format: Format,
) -> Result<u64, StatementError>
where
    StatementError: From<E>,
{
    let mut rows = 0u64;
    if !last || schema.fields().is_empty() {
        // Not printed; DDL and SET have nothing to print.
        while let Some(batch) = stream.next().await {
            rows += batch?.num_rows() as u64;
        }
        return Ok(rows);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match format {
        Format::Table => {
            let mut batches: Vec<RecordBatch> = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                batches.push(batch);
            }
            if batches.is_empty() {
                batches.push(RecordBatch::new_empty(schema));
            }
            let table = arrow::util::pretty::pretty_format_batches(&batches)?;
            writeln!(out, "{table}")?;
        }
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
            let mut wrote_any = false;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                writer.write(&batch)?;
                wrote_any = true;
            }
            if !wrote_any {
                writer.write(&RecordBatch::new_empty(schema))?;
            }
        }
        Format::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows() as u64;
                writer.write(&batch)?;
            }
            writer.finish()?;
        }
    }
    out.flush()?;
    Ok(rows)
}
