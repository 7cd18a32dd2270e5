//! `proxima bench`: measurements that BENCHMARKS.md reports.
//!
//! `proxima bench trace` traces random registered devices in the store at the
//! time of its latest observation and reports latency percentiles and what each
//! trace read from the observation files and the observed index; `--contacts` saves the contacts found so
//! that `bench/trace_vs_duckdb.sh` can check another engine finds the same.
//! Run it in release on a store made by `proxima generate`.

use std::time::{Duration, Instant};

use std::io::Write;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, TimestampMicrosecondType};
use clap::{Args, Subcommand};
use proxima_engine::{SessionFactory, SessionOptions, Store};
use rand::SeedableRng;
use rand::seq::IndexedRandom;

use super::CliError;

/// Arguments of `proxima bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Time trace_contacts for random index cases.
    Trace {
        /// Number of index cases.
        #[arg(long, default_value_t = 20)]
        cases: usize,
        /// max_order of each trace.
        #[arg(long, default_value_t = 2)]
        depth: u32,
        /// Seed that picks the index cases.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write every contact found, as CSV, to this file (to compare with other engines).
        #[arg(long, value_name = "FILE")]
        contacts: Option<std::path::PathBuf>,
        /// The keys that resolve rotating identifiers (default: the development key beside
        /// the store, if any, as `proxima sql`).
        #[command(flatten)]
        identifiers: super::id_key::IdentifierArgs,
    },
}

fn query_error(e: datafusion::error::DataFusionError) -> CliError {
    CliError::Query(e.to_string())
}

/// Runs `proxima bench`.
pub async fn run(store: Store, args: BenchArgs) -> Result<(), CliError> {
    let BenchCommand::Trace {
        cases,
        depth,
        seed,
        contacts,
        identifiers,
    } = args.what;
    let identifiers = identifiers.for_sql(&store).await?;
    let factory = SessionFactory::new(
        store,
        SessionOptions {
            identifiers,
            ..SessionOptions::default()
        },
    )?;
    let ctx = factory.session().await?;
    let batches = collect(&ctx, "SELECT max(observed_at) FROM observations").await?;
    let at = batches
        .first()
        .map(|b| b.column(0).as_primitive::<TimestampMicrosecondType>())
        .filter(|a| !a.is_null(0))
        .map(|a| a.value(0))
        .ok_or_else(|| CliError::Usage("the store has no observations: run proxima generate first".into()))?;
    let devices: Vec<String> = collect(&ctx, "SELECT device_uuid FROM devices ORDER BY device_uuid")
        .await?
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let picked: Vec<&String> = devices.choose_multiple(&mut rng, cases).collect();
    if picked.is_empty() {
        return Err(CliError::Usage("the store has no devices".into()));
    }
    let at_text = chrono::DateTime::from_timestamp_micros(at)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default();
    super::print(format!(
        "tracing {} index cases at {at_text}, depth {depth}",
        picked.len()
    ))?;
    let mut output = match &contacts {
        Some(path) => {
            let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
            writeln!(
                file,
                "index,contact,contact_order,priority,exposed_at_us,last_contact_at_us,via"
            )?;
            Some(file)
        }
        None => None,
    };
    let mut traces: Vec<Trace> = Vec::new();
    for index in &picked {
        let sql = format!("SELECT * FROM trace_contacts('{index}', '{at_text}', {depth})");
        let before = factory.index().counters();
        let started = Instant::now();
        let batches = collect(&ctx, &sql).await?;
        let elapsed = started.elapsed();
        let after = factory.index().counters();
        let trace = Trace {
            elapsed,
            contacts: batches.iter().map(|b| b.num_rows()).sum(),
            rows: after.rows - before.rows,
            bytes: after.bytes - before.bytes,
            scanned_days: after.scanned_days - before.scanned_days,
        };
        super::print(format!(
            "  {index}: {} contacts in {:.1} ms, {} rows and {:.0} KiB read, {} days without the index",
            trace.contacts,
            elapsed.as_secs_f64() * 1e3,
            trace.rows,
            trace.bytes as f64 / 1024.0,
            trace.scanned_days
        ))?;
        if let Some(file) = output.as_mut() {
            write_contacts(file, index, &batches)?;
        }
        traces.push(trace);
    }
    if let Some(mut file) = output {
        file.flush()?;
    }
    let mut latencies: Vec<Duration> = traces.iter().map(|t| t.elapsed).collect();
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let n = traces.len() as f64;
    super::print(format!(
        "p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms; per trace on average: {:.1} contacts, {:.0} rows, {:.0} KiB read; \
         {} days read without the index in all",
        percentile(0.5).as_secs_f64() * 1e3,
        percentile(0.95).as_secs_f64() * 1e3,
        percentile(1.0).as_secs_f64() * 1e3,
        traces.iter().map(|t| t.contacts as f64).sum::<f64>() / n,
        traces.iter().map(|t| t.rows as f64).sum::<f64>() / n,
        traces.iter().map(|t| t.bytes as f64).sum::<f64>() / n / 1024.0,
        traces.iter().map(|t| t.scanned_days).sum::<u64>(),
    ))?;
    Ok(())
}

/// One timed trace.
struct Trace {
    elapsed: Duration,
    contacts: usize,
    rows: u64,
    bytes: u64,
    scanned_days: u64,
}

async fn collect(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<Vec<RecordBatch>, CliError> {
    ctx.sql(sql)
        .await
        .map_err(query_error)?
        .collect()
        .await
        .map_err(query_error)
}

/// Appends a trace's rows to the contacts CSV (timestamps as µs since the epoch);
/// an index case without contacts gets a row of its own with the other fields empty.
fn write_contacts(out: &mut impl Write, index: &str, batches: &[RecordBatch]) -> Result<(), CliError> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        writeln!(out, "{index},,,,,,")?;
    }
    for batch in batches {
        let contact = batch.column(0).as_string::<i32>();
        let order = batch.column(1).as_primitive::<Int32Type>();
        let priority = batch.column(2).as_string::<i32>();
        let exposed = batch.column(3).as_primitive::<TimestampMicrosecondType>();
        let last = batch.column(4).as_primitive::<TimestampMicrosecondType>();
        let via = batch.column(5).as_string::<i32>();
        for i in 0..batch.num_rows() {
            writeln!(
                out,
                "{index},{},{},{},{},{},{}",
                contact.value(i),
                order.value(i),
                priority.value(i),
                exposed.value(i),
                last.value(i),
                via.value(i)
            )?;
        }
    }
    Ok(())
}
