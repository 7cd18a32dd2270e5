//! `proxima demo`: the newcomer's first run. Generates a demo population into
//! the store if it holds no data yet, then runs sample queries over it.

use clap::Args;
use proxima_engine::{SessionFactory, SessionOptions, Store};
use proxima_ingest::synthetic::{Broadcast, PopulationSpec};

use super::CliError;

/// Devices in the demo population.
pub const DEMO_DEVICES: u32 = 100_000;
/// Days in the demo population, ending today.
pub const DEMO_DAYS: u32 = 14;

/// Arguments of `proxima demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Devices in the demo population.
    #[arg(long, default_value_t = DEMO_DEVICES)]
    devices: u32,
    /// Days of observations, ending today.
    #[arg(long, default_value_t = DEMO_DAYS)]
    days: u32,
    /// The keys the demo phones' rotating identifiers are sealed and resolved with (default:
    /// the development key beside the store, made if missing, as a loopback server's).
    #[command(flatten)]
    keys: super::id_key::IdentifierArgs,
}

/// The sample queries, with what each shows.
const QUERIES: &[(&str, &str)] = &[
    (
        "Observations per day",
        "SELECT day, count(*) AS observations, count(DISTINCT observer) AS reporting_devices \
         FROM observations GROUP BY day ORDER BY day",
    ),
    (
        "The five devices with the most distinct contacts over the last two days",
        "SELECT a AS device, count(DISTINCT b) AS contacts, sum(duration_s) / 60 AS minutes \
         FROM encounters WHERE at >= now() - INTERVAL '2 days' \
         GROUP BY a ORDER BY contacts DESC, device LIMIT 5",
    ),
];

/// Runs `proxima demo`.
pub async fn run(store: Store, args: DemoArgs) -> Result<(), CliError> {
    let identifiers = args.keys.development_or_given(&store).await?;
    let has_data = super::generate::has_observations(&store).await;
    // A new demo store is encrypted at rest, with a development key beside it.
    let store = if has_data {
        store
    } else {
        super::key::ensure_development_key(store)?
    };
    if has_data {
        super::print(format!(
            "The store at {store} already holds observations: using them.\n"
        ))?;
    } else {
        let start = super::generate::start_ending_today(args.days)?;
        let spec = PopulationSpec {
            // Phones broadcast rotating identifiers, as the server issues them.
            broadcast: Broadcast::Ephemeral(std::sync::Arc::clone(&identifiers)),
            devices: args.devices,
            days: args.days,
            contacts_per_day: 10,
            seed: 42,
            start,
        };
        let started = std::time::Instant::now();
        let population = super::generate::populate(&store, &spec).await?;
        super::print(format!(
            "Generated {} devices and {} observations into {store} in {:.1} s.\n",
            population.devices,
            population.observations,
            started.elapsed().as_secs_f64()
        ))?;
    }
    let factory = SessionFactory::new(
        store,
        SessionOptions {
            identifiers: Some(identifiers),
            ..SessionOptions::default()
        },
    )?;
    let ctx = factory.session().await?;
    for (title, sql) in QUERIES {
        let query_error = |e: datafusion::error::DataFusionError| CliError::Query(e.to_string());
        let batches = ctx
            .sql(sql)
            .await
            .map_err(query_error)?
            .collect()
            .await
            .map_err(query_error)?;
        let table = arrow::util::pretty::pretty_format_batches(&batches)?;
        super::print(format!("{title}:\n{table}\n"))?;
    }
    super::print("Next: proxima sql -c \"SELECT * FROM encounters LIMIT 10\" (README lists the tables).")?;
    Ok(())
}
