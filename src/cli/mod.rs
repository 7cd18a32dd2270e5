//! The subcommands, one module each, and the flags they share.

mod audit;
mod bench;
mod cluster;
mod demo;
mod durations;
mod erasure;
mod generate;
mod id_key;
mod import;
mod index;
mod key;
mod maintain;
mod phone;
mod retention;
mod serve;
mod sql;
mod user;

use clap::{Parser, Subcommand};
use proxima_engine::Store;

/// Proxima: privacy-preserving contact tracing over day-partitioned Parquet.
#[derive(Debug, Parser)]
#[command(name = "proxima", version, about, long_about = None)]
pub struct Args {
    /// Store root: a local directory, file://…, s3://bucket/prefix (AWS_* variables), or memory://.
    #[arg(long, global = true, env = "PROXIMA_DATA", default_value = "./proxima-data")]
    data: String,

    /// The master key file of encryption at rest (`proxima key init` makes one; keep it away
    /// from whoever administers the store). Default: PROXIMA_MASTER_KEY (one key, base64),
    /// else `<store>.master-key` beside a local store if it exists; without any, files are
    /// written in the clear and encrypted ones cannot be read.
    #[arg(long, global = true, env = "PROXIMA_MASTER_KEY_FILE", value_name = "FILE")]
    master_key_file: Option<std::path::PathBuf>,

    /// How log lines (on standard error) are written: `text` for people, `json` (one object a
    /// line, with the request id of the call each belongs to) for a log pipeline. Which lines:
    /// RUST_LOG (default: warnings, and the query, login and serving logs).
    #[arg(long, global = true, env = "PROXIMA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line an event, its span's fields (request id) first.
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, `fields`, and `span`/`spans`
    /// with the request id.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a demo population (if the store has no data yet) and run sample queries.
    Demo(demo::DemoArgs),
    /// Run SQL statements against the store and print the last result.
    Sql(sql::SqlArgs),
    /// Import CSV or Parquet files into a table (all rows validated first; all or nothing).
    Import(import::ImportArgs),
    /// Generate a synthetic, realistic population straight into an empty store.
    Generate(generate::GenerateArgs),
    /// Rebuild the observed index (tracing's lookup of who heard a MAC) of every day.
    Index(index::IndexArgs),
    /// Delete day folders older than the retention window.
    Retention(retention::RetentionArgs),
    /// Keep the store in shape without serving: erasure of revoked devices, compaction,
    /// retention, index upkeep (and a
    /// flush of a write-ahead log left behind), in a loop or once with --once.
    Maintain(maintain::MaintainArgs),
    /// Serve the store over Arrow Flight SQL (ADBC, JDBC, pyarrow.flight).
    Serve(Box<serve::ServeArgs>),
    /// Manage the users of the servers.
    User(user::UserArgs),
    /// The audit log: make its signing key, verify it.
    Audit(audit::AuditArgs),
    /// Erasure of revoked devices: what is pending and done, and proof that it holds.
    Erasure(erasure::ErasureArgs),
    /// The master keys of encryption at rest: make, rotate, status, retire.
    Key(key::KeyArgs),
    /// The keys of the rotating identifiers phones broadcast: make, rotate, list.
    IdKey(id_key::IdKeyArgs),
    /// A reference phone over the REST API: register (with its proof of work), fetch
    /// rotating identifiers, upload sightings, fetch alerts, revoke with the owner's key.
    Phone(phone::PhoneArgs),
    /// Measure: trace latency over the store (run in release).
    Bench(bench::BenchArgs),
    /// Run a Ballista scheduler for the store: clients' queries (--ballista) are planned
    /// into stages here and run on executors.
    Scheduler(cluster::SchedulerArgs),
    /// Run a Ballista executor for the store: it runs the stages its scheduler hands out.
    Executor(cluster::ExecutorArgs),
}

/// Errors a subcommand reports; printed as `error: …` with a non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag or argument is wrong.
    #[error("{0}")]
    Usage(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] proxima_engine::Error),
    /// Ingest failed.
    #[error(transparent)]
    Ingest(#[from] proxima_ingest::Error),
    /// The write side failed.
    #[error(transparent)]
    Storage(#[from] proxima_storage::Error),
    /// A query failed.
    #[error("{0}")]
    Query(String),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    /// Formatting the output failed.
    #[error("cannot format output: {0}")]
    Format(#[from] arrow::error::ArrowError),
}

/// Runs the parsed command.
pub async fn run(args: Args) -> Result<(), CliError> {
    match args.command {
        Command::User(a) => return user::run(a).await,
        Command::IdKey(a) if !a.in_store() => return id_key::run(a, key::given(args.master_key_file.as_deref())?),
        Command::Phone(a) => return phone::run(a).await,
        // Through a server: no local store is opened (or created).
        Command::Sql(a) if a.is_remote() => return sql::run_remote(a).await,
        _ => {}
    }
    let store = Store::open(&args.data)?;
    if let Command::Key(a) = args.command {
        return key::run(store, args.master_key_file.as_deref(), a).await;
    }
    let store = key::open_with_keys(store, args.master_key_file.as_deref())?;
    match args.command {
        Command::User(_) | Command::Phone(_) | Command::Key(_) => Ok(()),
        Command::IdKey(a) => id_key::run_in_store(store, a).await,
        Command::Serve(a) => serve::run(store, *a).await,
        Command::Demo(a) => demo::run(store, a).await,
        Command::Sql(a) => sql::run(store, a).await,
        Command::Import(a) => import::run(store, a).await,
        Command::Generate(a) => generate::run(store, a).await,
        Command::Index(a) => index::run(store, a).await,
        Command::Retention(a) => retention::run(store, a).await,
        Command::Maintain(a) => maintain::run(store, a).await,
        Command::Bench(a) => bench::run(store, a).await,
        Command::Audit(a) => audit::run(store, a).await,
        Command::Erasure(a) => erasure::run(store, a).await,
        Command::Scheduler(a) => cluster::scheduler(store, a).await,
        Command::Executor(a) => cluster::executor(store, a).await,
    }
}

/// Refuses a key file kept inside the local store it protects: `why` says what whoever
/// reads the store's files could then do.
pub fn refuse_inside_store(store: &Store, path: &std::path::Path, what: &str, why: &str) -> Result<(), CliError> {
    if let (Some(root), Ok(key)) = (store.local_root(), path.canonicalize())
        && let Ok(root) = root.canonicalize()
        && key.starts_with(&root)
    {
        return Err(CliError::Usage(format!(
            "{}: the {what} must not be kept inside the store ({}): {why}",
            path.display(),
            root.display()
        )));
    }
    Ok(())
}

/// A file beside a local store's folder, never in it: `<store>.<suffix>` (where a loopback
/// server without a users file keeps the keys it makes).
pub fn beside_store(store: &Store, suffix: &str) -> Option<std::path::PathBuf> {
    let root = store.local_root()?;
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Some(root.with_file_name(format!("{name}.{suffix}")))
}

/// Prints a line on standard output, reporting failure (a closed pipe) instead of panicking.
pub fn print(text: impl std::fmt::Display) -> Result<(), CliError> {
    use std::io::Write;
    writeln!(std::io::stdout().lock(), "{text}")?;
    Ok(())
}
