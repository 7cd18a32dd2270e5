//! `proxima index`: rebuilds the `observed_index` that `trace_contacts` looks up.
//!
//! Every writer keeps it current by itself (each observation file is written
//! with its companion); this command is for stores written before it existed,
//! or to repair one.

use clap::Args;
use proxima_engine::{SessionFactory, SessionOptions, Store, Table};
use proxima_storage::PartitionWriter;

use super::CliError;

/// Arguments of `proxima index`.
#[derive(Debug, Args)]
pub struct IndexArgs {}

/// Runs `proxima index`.
pub async fn run(store: Store, _args: IndexArgs) -> Result<(), CliError> {
    let started = std::time::Instant::now();
    let writer = PartitionWriter::new(store.clone(), "index");
    let (days, rows) = rebuild(&store, &writer).await?;
    super::print(format!(
        "indexed {days} days ({rows} observed-index rows) in {:.1} s",
        started.elapsed().as_secs_f64()
    ))?;
    Ok(())
}

/// Rebuilds the index of every day with observations, with a progress bar; returns days and rows.
pub async fn rebuild(store: &Store, writer: &PartitionWriter) -> Result<(usize, u64), CliError> {
    let days = store.list_days(Table::Observations).await?.len();
    let factory = SessionFactory::new(store.clone(), SessionOptions::default())?;
    let progress = super::generate::day_progress("indexing", days as u32, "observations".into());
    let mut rows = 0;
    let result = proxima_storage::index_build::build_all(&factory, writer, |_, summary| {
        rows += summary.rows;
        progress.inc(1);
    })
    .await;
    progress.finish_and_clear();
    Ok((result?.len(), rows))
}
