//! `proxima scheduler` and `proxima executor`: the nodes of a Ballista cluster that runs
//! Proxima's queries (`proxima sql --ballista`, `proxima serve --ballista`).
//!
//! Both open the store as every other command does (`--data`, the master key) and resolve
//! rotating identifiers with the same keys as the serving process (`--id-key`), because
//! they build their sessions with the same `SessionFactory`
//! (`proxima_cluster::cluster_config`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use proxima_engine::{SessionFactory, SessionOptions, Store};

use super::CliError;
use super::durations::parse_bytes;

/// Arguments of `proxima scheduler`.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// The address to listen on for clients and executors (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:50050")]
    listen: SocketAddr,
    /// The host executors and clients reach this scheduler at (default: the listen address).
    #[arg(long, value_name = "HOST")]
    advertise: Option<String>,
    /// Rotating identifiers: the keys that resolve them (the serving processes').
    #[command(flatten)]
    identifiers: super::id_key::IdentifierArgs,
}

/// Arguments of `proxima executor`.
#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// The scheduler to work for.
    #[arg(long, value_name = "df://HOST:PORT")]
    scheduler: String,
    /// The address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
    /// The host the scheduler, other executors and clients reach this executor at
    /// (default: the bind address).
    #[arg(long, value_name = "HOST")]
    advertise: Option<String>,
    /// The Arrow Flight port other executors and clients fetch stage output from.
    #[arg(long, default_value_t = 50070)]
    flight_port: u16,
    /// The gRPC port.
    #[arg(long, default_value_t = 50071)]
    grpc_port: u16,
    /// Tasks run at once (default: the number of cores).
    #[arg(long)]
    slots: Option<usize>,
    /// Where stage output is kept until its job's data expires (default: a folder named
    /// after the ports under the system's temporary folder).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Memory the executor's tasks may hold together.
    #[arg(long, default_value = "8GiB", value_parser = parse_bytes)]
    memory: usize,
    /// Rotating identifiers: the keys that resolve them (the serving processes').
    #[command(flatten)]
    identifiers: super::id_key::IdentifierArgs,
}

async fn factory(store: Store, identifiers: &super::id_key::IdentifierArgs) -> Result<SessionFactory, CliError> {
    let identifiers = identifiers.for_sql(&store).await?;
    Ok(SessionFactory::new(
        store,
        SessionOptions {
            identifiers,
            ..SessionOptions::default()
        },
    )?)
}

fn ballista(e: proxima_cluster::Error) -> CliError {
    CliError::Usage(e.to_string())
}

/// Runs `proxima scheduler` until the process is stopped.
pub async fn scheduler(store: Store, args: SchedulerArgs) -> Result<(), CliError> {
    let described = store.to_string();
    let factory = factory(store, &args.identifiers).await?;
    let advertise = args.advertise.unwrap_or_else(|| args.listen.ip().to_string());
    let scheduler = proxima_cluster::scheduler::Scheduler::bind(&factory, args.listen, &advertise)
        .await
        .map_err(ballista)?;
    let bound = scheduler.local_addr();
    super::print(format!(
        "Ballista scheduler listening on df://{advertise}:{} (store {described})",
        bound.port()
    ))?;
    scheduler.serve().await.map_err(ballista)
}

/// Runs `proxima executor` until it is stopped.
pub async fn executor(store: Store, args: ExecutorArgs) -> Result<(), CliError> {
    let described = store.to_string();
    let factory = factory(store, &args.identifiers).await?;
    let scheduler = proxima_cluster::client::Ballista::new(&args.scheduler).map_err(ballista)?;
    let (scheduler_host, scheduler_port) = scheduler.host_and_port();
    let options = proxima_cluster::executor::ExecutorOptions {
        advertise_host: args.advertise.clone().unwrap_or_else(|| args.bind.clone()),
        bind_host: args.bind,
        flight_port: args.flight_port,
        grpc_port: args.grpc_port,
        scheduler_host: scheduler_host.to_string(),
        scheduler_port,
        slots: args
            .slots
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        work_dir: args.work_dir.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("proxima-executor-{}-{}", args.flight_port, args.grpc_port))
        }),
        memory: args.memory as u64,
    };
    super::print(format!(
        "Ballista executor on {}:{} (flight), working for {} (store {described})",
        options.advertise_host, options.flight_port, args.scheduler
    ))?;
    proxima_cluster::executor::run(&factory, &options)
        .await
        .map_err(ballista)
}
