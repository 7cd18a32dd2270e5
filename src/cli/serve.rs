//! `proxima serve`: the Flight SQL server over the store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use proxima_engine::{SessionFactory, SessionOptions, Store};
use proxima_flight_server::{FlightSqlServer, ServiceOptions, TlsFiles, Users};
use proxima_ingest::synthetic::PopulationSpec;

use super::CliError;

/// Arguments of `proxima serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the Flight SQL server (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:50051")]
    flight: SocketAddr,
    /// Users file (TOML; see `proxima user add`). Without it the server only listens on
    /// loopback, with one user `admin` whose generated password is printed at start.
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How long a login token stays valid: seconds, or with a unit (90s, 30m, 1h).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    token_ttl: Duration,
    /// Longest a query may run before it is stopped (90s, 10m, 1h).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    query_timeout: Duration,
    /// Memory one login session's queries may hold (512MiB, 4GiB); beyond it a query fails
    /// with "resources exhausted" instead of taking the server down.
    #[arg(long, default_value = "4GiB", value_parser = parse_bytes)]
    session_memory: usize,
    /// Memory all queries together may hold.
    #[arg(long, default_value = "16GiB", value_parser = parse_bytes)]
    memory: usize,
    /// If the store holds no observations, generate the demo population first.
    #[arg(long)]
    demo: bool,
}

/// Parses `90`, `90s`, `30m`, `1h`, `2d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 90s, 30m or 1h"))?;
    let seconds = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit '{other}' in '{text}' (use s, m, h or d)")),
    };
    if number == 0 {
        return Err("a duration must be positive".into());
    }
    Ok(Duration::from_secs(number * seconds))
}

/// Parses `1048576`, `512MiB`, `4GiB` (also MB/GB, read as powers of 1024).
fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size such as 512MiB or 4GiB"))?;
    let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        "g" | "gib" | "gb" => 1 << 30,
        other => return Err(format!("unknown unit '{other}' in '{text}' (use MiB or GiB)")),
    };
    if number == 0 {
        return Err("a size must be positive".into());
    }
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("'{text}' is too large"))
}

fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Resolves when the process gets SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Runs `proxima serve`.
pub async fn run(store: Store, args: ServeArgs) -> Result<(), CliError> {
    let (users, generated_password) = match &args.users {
        Some(path) => {
            let users = Users::load(path).map_err(|e| CliError::Usage(e.to_string()))?;
            if users.is_empty() {
                return Err(CliError::Usage(format!(
                    "{}: no users; add one with proxima user add NAME --role ROLE --users {}",
                    path.display(),
                    path.display()
                )));
            }
            (users, None)
        }
        None if !proxima_flight_server::server::is_loopback(&args.flight) => {
            return Err(CliError::Usage(format!(
                "refusing to listen on {} without --users: only a loopback address may use the generated \
                 admin password (create users with proxima user add)",
                args.flight
            )));
        }
        None => {
            let password = random_password();
            let users = Users::single_admin(&password).map_err(|e| CliError::Usage(e.to_string()))?;
            (users, Some(password))
        }
    };
    if args.demo {
        let has_data = super::generate::has_observations(&store).await;
        if !has_data {
            let spec = PopulationSpec {
                devices: super::demo::DEMO_DEVICES,
                days: super::demo::DEMO_DAYS,
                contacts_per_day: 10,
                seed: 42,
                start: super::generate::start_ending_today(super::demo::DEMO_DAYS)?,
            };
            let population = super::generate::populate(&store, &spec).await?;
            super::print(format!(
                "generated the demo population: {} devices, {} observations",
                population.devices, population.observations
            ))?;
        }
    }
    let factory = SessionFactory::new(
        store.clone(),
        SessionOptions {
            memory_limit: Some(args.memory),
            session_memory_limit: Some(args.session_memory),
            ..SessionOptions::default()
        },
    )?;
    let options = ServiceOptions {
        token_ttl: args.token_ttl,
        query_timeout: args.query_timeout,
    };
    let service =
        FlightSqlServer::new(factory, users, options).map_err(|e| CliError::Usage(e.message().to_string()))?;
    let listener = tokio::net::TcpListener::bind(args.flight)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", args.flight)))?;
    let address = listener.local_addr()?;
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let scheme = if tls.is_some() { "grpc+tls" } else { "grpc" };
    super::print(format!("Flight SQL listening on {scheme}://{address} (store {store})"))?;
    if let Some(password) = &generated_password {
        super::print(format!(
            "user admin, password {password} (generated for this run; use --users for real users)"
        ))?;
    }
    tracing::info!(target: "proxima::serve", %address, tls = scheme == "grpc+tls", "serving");
    proxima_flight_server::serve(service, listener, tls, shutdown_signal())
        .await
        .map_err(|e| CliError::Usage(e.to_string()))?;
    super::print("Flight SQL server stopped")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("1y").unwrap_err().contains("unknown unit 'y'"));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_bytes("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert!(parse_bytes("lots").is_err());
    }
}
