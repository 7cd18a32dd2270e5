//! `proxima retention`: old data ages out by deleting whole day folders.

use chrono::NaiveDate;
use clap::Args;
use proxima_engine::Store;
use proxima_storage::retention;

use super::CliError;

/// Arguments of `proxima retention`.
#[derive(Debug, Args)]
pub struct RetentionArgs {
    /// Days to keep, today included (1 keeps only today).
    #[arg(long, env = "PROXIMA_KEEP_DAYS", default_value_t = 21, value_parser = clap::value_parser!(u32).range(1..))]
    keep_days: u32,
    /// The day taken as today (UTC); default: the current date.
    #[arg(long, value_name = "YYYY-MM-DD")]
    today: Option<NaiveDate>,
    /// Rotating identifiers: the keys that resolve them when the first kept day is rolled
    /// up again for analysts (default: the store's, or the development key beside it).
    #[command(flatten)]
    identifiers: super::id_key::IdentifierArgs,
}

/// Runs `proxima retention`.
pub async fn run(store: Store, args: RetentionArgs) -> Result<(), CliError> {
    let today = args.today.unwrap_or_else(proxima_engine::store::today_utc);
    let expired = retention::apply(&store, today, args.keep_days).await?;
    if !expired.is_empty() {
        // Sightings early on the first kept day may have needed the GAEN keys of the day
        // deleted: that day's rollup is recomputed.
        let factory = proxima_engine::SessionFactory::new(
            store.clone(),
            proxima_engine::SessionOptions {
                identifiers: args.identifiers.for_sql(&store).await?,
                ..proxima_engine::SessionOptions::default()
            },
        )?;
        let writer = proxima_storage::PartitionWriter::new(store.clone(), "retention");
        proxima_storage::rollup::after_retention(&factory, &writer, today, args.keep_days).await?;
    }
    for day in &expired {
        super::print(format!(
            "deleted {}/day={} ({} file(s), {} bytes)",
            day.partition.table, day.partition.day, day.files, day.bytes
        ))?;
    }
    super::print(format!(
        "kept days from {} to {today}; deleted {} day folder(s)",
        retention::oldest_kept_day(today, args.keep_days),
        expired.len()
    ))?;
    Ok(())
}
