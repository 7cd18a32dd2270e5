//! `proxima generate`: a synthetic population for demos, tests and benchmarks.

use chrono::{Days, NaiveDate};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use proxima_engine::Store;
use proxima_ingest::synthetic::{Broadcast, GeneratedPopulation, PopulationSpec, generate};
use proxima_storage::PartitionWriter;

use super::CliError;

/// Arguments of `proxima generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of devices.
    #[arg(long, default_value_t = 10_000)]
    devices: u32,
    /// Number of days.
    #[arg(long, default_value_t = 14)]
    days: u32,
    /// Average encounters a device takes part in per day (about one observation each).
    #[arg(long, default_value_t = 10)]
    contacts_per_day: u32,
    /// Random seed: the same seed and start give the same population.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// First day (UTC); default: so that the last day is today.
    #[arg(long, value_name = "YYYY-MM-DD")]
    start: Option<NaiveDate>,
    /// What phones broadcast, and so what others hear: static MACs, the server's rotating
    /// identifiers (sealed with --id-key, as the server issues them), GAEN RPIs (each
    /// phone's daily key written to exposure_keys), or a mix (a third each).
    #[arg(long, value_enum, default_value_t = Identifiers::Mac)]
    identifiers: Identifiers,
    /// The keys and epochs of rotating identifiers (default key: the development key beside
    /// the store, made if missing, which a loopback `proxima serve` then uses too).
    #[command(flatten)]
    keys: super::id_key::IdentifierArgs,
}

/// `--identifiers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Identifiers {
    /// Static MACs.
    Mac,
    /// The server's rotating identifiers.
    Ephemeral,
    /// GAEN rolling proximity identifiers.
    Rpi,
    /// A third of each.
    Mixed,
}

/// Runs `proxima generate`.
pub async fn run(store: Store, args: GenerateArgs) -> Result<(), CliError> {
    let start = match args.start {
        Some(start) => start,
        None => start_ending_today(args.days)?,
    };
    let broadcast = match args.identifiers {
        Identifiers::Mac => Broadcast::Mac,
        Identifiers::Rpi => Broadcast::Rpi,
        model @ (Identifiers::Ephemeral | Identifiers::Mixed) => {
            let keys = args.keys.development_or_given(&store).await?;
            if model == Identifiers::Ephemeral {
                Broadcast::Ephemeral(keys)
            } else {
                Broadcast::Mixed(keys)
            }
        }
    };
    let spec = PopulationSpec {
        broadcast,
        devices: args.devices,
        days: args.days,
        contacts_per_day: args.contacts_per_day,
        seed: args.seed,
        start,
    };
    let started = std::time::Instant::now();
    let population = populate(&store, &spec).await?;
    let end = start + Days::new(u64::from(args.days) - 1);
    super::print(format!(
        "generated {} devices and {} observations from {start} to {end} into {store} in {:.1} s",
        population.devices,
        population.observations,
        started.elapsed().as_secs_f64()
    ))?;
    Ok(())
}

/// Generates `spec` into `store` (with its `observed_index`), with a progress bar.
pub async fn populate(store: &Store, spec: &PopulationSpec) -> Result<GeneratedPopulation, CliError> {
    let writer = PartitionWriter::new(store.clone(), "generate");
    let progress = day_progress("generating", spec.days, format!("{} devices", spec.devices));
    let result = generate(&writer, spec, |_| progress.inc(1)).await;
    progress.finish_and_clear();
    let population = result?;
    // The analysts' contact rollup of the generated days, computed once from the rows (a
    // flush keeps it from then on). The sessions resolve the identifiers the phones broadcast.
    let identifiers = match &spec.broadcast {
        Broadcast::Ephemeral(ids) | Broadcast::Mixed(ids) => Some(std::sync::Arc::clone(ids)),
        Broadcast::Mac | Broadcast::Rpi => None,
    };
    let factory = proxima_engine::SessionFactory::new(
        store.clone(),
        proxima_engine::SessionOptions {
            identifiers,
            ..proxima_engine::SessionOptions::default()
        },
    )?;
    use proxima_storage::rollup::{Rollup, rebuild_days, rollup_days};
    let mut work = Vec::new();
    for rollup in Rollup::ALL {
        work.extend(rollup_days(store, rollup).await?.into_iter().map(|day| (rollup, day)));
    }
    let progress = day_progress(
        "rolling up",
        work.len() as u32,
        "contacts and cases per hour and cell".to_string(),
    );
    for (rollup, day) in work {
        rebuild_days(&factory, &writer, rollup, &[day]).await?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(population)
}

/// Whether the store holds any observation file.
pub async fn has_observations(store: &Store) -> bool {
    use futures::StreamExt;
    store
        .object_store()
        .list(Some(&proxima_engine::Table::Observations.prefix(store.root())))
        .next()
        .await
        .is_some()
}

/// A progress bar counting days; hidden when stderr is not a terminal.
pub fn day_progress(action: &str, days: u32, message: String) -> ProgressBar {
    let template = format!("{{spinner}} {action} {{msg}} [{{bar:30}}] {{pos}}/{{len}} days, {{elapsed}}");
    let progress = ProgressBar::new(u64::from(days)).with_style(
        ProgressStyle::with_template(&template)
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    progress.set_message(message);
    progress
}

/// The first day of a `days`-day population whose last day is today (UTC).
pub fn start_ending_today(days: u32) -> Result<NaiveDate, CliError> {
    proxima_engine::store::today_utc()
        .checked_sub_days(Days::new(u64::from(days.saturating_sub(1))))
        .ok_or_else(|| CliError::Usage("--days reaches before the first representable date".into()))
}
