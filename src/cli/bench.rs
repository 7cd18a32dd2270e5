//! `proxima bench`: measurements that BENCHMARKS.md reports.
//!
//! `proxima bench trace` traces random registered devices in the store at the
//! time of its latest observation and reports latency percentiles. Run it in
//! release on a store made by `proxima generate`.

use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
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
    },
}

fn query_error(e: datafusion::error::DataFusionError) -> CliError {
    CliError::Query(e.to_string())
}

/// Runs `proxima bench`.
pub async fn run(store: Store, args: BenchArgs) -> Result<(), CliError> {
    let BenchCommand::Trace { cases, depth, seed } = args.what;
    let factory = SessionFactory::new(store, SessionOptions::default())?;
    let ctx = factory.session().await?;
    let batches = ctx
        .sql("SELECT max(observed_at) FROM observations")
        .await
        .map_err(query_error)?
        .collect()
        .await
        .map_err(query_error)?;
    let at = batches
        .first()
        .map(|b| b.column(0).as_primitive::<TimestampMicrosecondType>())
        .filter(|a| !a.is_null(0))
        .map(|a| a.value(0))
        .ok_or_else(|| CliError::Usage("the store has no observations: run proxima generate first".into()))?;
    let devices: Vec<String> = ctx
        .sql("SELECT device_uuid FROM devices ORDER BY device_uuid")
        .await
        .map_err(query_error)?
        .collect()
        .await
        .map_err(query_error)?
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
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    super::print(format!(
        "tracing {} index cases at {at_text}, depth {depth}",
        picked.len()
    ))?;
    let mut latencies: Vec<Duration> = Vec::new();
    let mut contacts_total = 0i64;
    for index in &picked {
        let sql = format!("SELECT count(*) FROM trace_contacts('{index}', '{at_text}', {depth})");
        let started = Instant::now();
        let batches = ctx
            .sql(&sql)
            .await
            .map_err(query_error)?
            .collect()
            .await
            .map_err(query_error)?;
        let elapsed = started.elapsed();
        let contacts = batches[0].column(0).as_primitive::<Int64Type>().value(0);
        contacts_total += contacts;
        latencies.push(elapsed);
        super::print(format!(
            "  {index}: {contacts} contacts in {:.1} ms",
            elapsed.as_secs_f64() * 1e3
        ))?;
    }
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    super::print(format!(
        "p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms; {:.1} contacts per trace on average",
        percentile(0.5).as_secs_f64() * 1e3,
        percentile(0.95).as_secs_f64() * 1e3,
        percentile(1.0).as_secs_f64() * 1e3,
        contacts_total as f64 / picked.len() as f64
    ))?;
    Ok(())
}
