//! `proxima serve`: the REST service (ingest and alerts) and the Flight SQL server, in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use proxima_engine::clock::SystemClock;
use proxima_engine::login::{LoginGuard, LoginLimits};
use proxima_engine::telemetry::ServiceMetrics;
use proxima_engine::{Role, SessionFactory, SessionOptions, Store};
use proxima_flight_server::{FlightSqlServer, ServiceOptions, TlsFiles, Users};
use proxima_ingest::rest::{RestConfig, RestOptions, RestService};
use proxima_ingest::synthetic::{Broadcast, PopulationSpec};
use proxima_storage::{Maintainer, MaintainerConfig, MaintenanceOptions, MaintenanceStats};
use tokio::sync::watch;

use super::CliError;
use super::durations::{parse_bytes, parse_duration};

/// Arguments of `proxima serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address of the Flight SQL server (port 0 picks a free port).
    #[arg(long, env = "PROXIMA_FLIGHT", default_value = "127.0.0.1:50051")]
    flight: SocketAddr,
    /// Address of the REST service: device registration, uploads, cases, alerts (port 0 picks a free port).
    #[arg(long, env = "PROXIMA_HTTP", default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// Address of the operations routes (/metrics, /healthz, /readyz), kept off the phones'
    /// port. Default: loopback, the port after --http's (127.0.0.1:8081; a free port when
    /// --http's is 0).
    #[arg(long, env = "PROXIMA_ADMIN_HTTP")]
    admin_http: Option<SocketAddr>,
    /// Serve Flight SQL only: no REST service and no write-ahead log. The maintenance loop
    /// (compaction, retention, index upkeep) still runs.
    #[arg(long, env = "PROXIMA_NO_REST")]
    no_rest: bool,
    /// Folder of this process's write-ahead log, on a local disk (default: `_wal` in a local
    /// store, `./proxima-wal` for S3). Each serving process needs its own.
    #[arg(long, env = "PROXIMA_WAL_DIR", value_name = "DIR")]
    wal_dir: Option<PathBuf>,
    /// Acknowledged observations become visible to SQL within this (5s, 10s, 1m).
    #[arg(long, env = "PROXIMA_FLUSH_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    flush_interval: Duration,
    /// Benchmarks only: flushes do not keep the analysts' rollups, which are then wrong,
    /// nor place cases and readings in cells, which stay null (`bench/ingest.sh` with
    /// `NO_ROLLUP=1` measures what keeping them costs).
    #[arg(long, hide = true)]
    no_rollup: bool,
    /// Largest JSON request body (1MiB).
    #[arg(long, env = "PROXIMA_MAX_BODY", default_value = "1MiB", value_parser = parse_bytes)]
    max_body: usize,
    /// Most observations in one POST /v1/observations.
    #[arg(long, env = "PROXIMA_MAX_BATCH", default_value_t = 5_000)]
    max_batch: usize,
    /// Largest bulk request body (NDJSON or Arrow IPC).
    #[arg(long, env = "PROXIMA_MAX_BULK_BODY", default_value = "512MiB", value_parser = parse_bytes)]
    max_bulk_body: usize,
    /// Most rows in one bulk request.
    #[arg(long, env = "PROXIMA_MAX_BULK_ROWS", default_value_t = 1_000_000)]
    max_bulk_rows: usize,
    /// Bulk requests read and decoded at once (each body up to --max-bulk-body); beyond,
    /// 503 with Retry-After, never a queue of bodies in memory.
    #[arg(long, env = "PROXIMA_BULK_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    bulk_concurrency: u32,
    /// How long an alert is shown to its device (48h).
    #[arg(long, env = "PROXIMA_ALERT_TTL", default_value = "48h", value_parser = parse_duration)]
    alert_ttl: Duration,
    /// A temperature reading at or above this (°C) opens a suspected case.
    #[arg(long, env = "PROXIMA_FEVER_THRESHOLD", default_value_t = 38.0)]
    fever_threshold: f64,
    /// Days of data kept; the hourly retention deletes older day folders and uploads of
    /// older observations are refused.
    #[arg(long, env = "PROXIMA_RETENTION_DAYS", default_value_t = 21)]
    retention_days: u32,
    #[command(flatten)]
    erasure: super::maintain::ErasureArgs,
    /// Requests a minute one device may make (0: no limit); beyond it, 429 with Retry-After.
    #[arg(long, env = "PROXIMA_DEVICE_RATE", default_value_t = 120)]
    device_rate: u32,
    /// Registrations and revocations a minute per client address (an IPv6 client: per /64);
    /// beyond it, 429 with Retry-After (0: no limit).
    #[arg(long, env = "PROXIMA_REGISTRATION_RATE", default_value_t = 60)]
    registration_rate: u32,
    /// Failed staff password logins (REST Basic credentials, the Flight SQL handshake) a
    /// minute per client address (an IPv6 client: per /64), in bursts of as many; beyond,
    /// every login from it gets 429 (REST) or RESOURCE_EXHAUSTED (Flight SQL) with
    /// Retry-After, before any password is hashed, until the budget refills. Right
    /// passwords spend nothing (0: no limit).
    #[arg(long, env = "PROXIMA_LOGIN_RATE", default_value_t = 10)]
    login_rate: u32,
    /// Failed staff password logins a minute per user name, whatever the address; beyond,
    /// that user's logins are refused likewise (0: no limit).
    #[arg(long, env = "PROXIMA_LOGIN_USER_RATE", default_value_t = 30)]
    login_user_rate: u32,
    /// Password hashes (argon2, 19 MiB each) running at once; a login beyond is answered
    /// 503 (UNAVAILABLE) with Retry-After, never queued. Default: the number of cores.
    #[arg(long, env = "PROXIMA_LOGIN_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=1024))]
    login_concurrency: Option<u32>,
    /// The proof of work each registration carries, in bits: the phone hashes about
    /// 2^BITS times (20: a few hundred milliseconds of a phone's CPU), so registering
    /// 100,000 throwaway devices costs days of CPU. 0 asks for none.
    #[arg(long, env = "PROXIMA_REGISTRATION_WORK", default_value_t = 20,
          value_parser = clap::value_parser!(u8).range(0..=i64::from(proxima_ingest::rest::challenge::MAX_DIFFICULTY)))]
    registration_work: u8,
    /// Users file (TOML; see `proxima user add`), read again whenever it changes (checked
    /// every 2 s): a user removed, or given another role or password, loses their logins at
    /// once, Flight SQL and REST alike. Without it the server only listens on
    /// loopback, with one user per role (tracer, analyst, auditor, admin, station, ingest)
    /// whose generated passwords are printed at start.
    #[arg(long, env = "PROXIMA_USERS", value_name = "FILE")]
    users: Option<PathBuf>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS for staff: CA certificates (PEM) whose certificates staff clients must
    /// present. Every Flight SQL client must; on the REST port phones need none, staff
    /// routes refuse a client without one (401) before any password is checked. Needs
    /// --tls-cert.
    #[arg(long, env = "PROXIMA_TLS_CLIENT_CA", value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve in plain text on an address beyond loopback (without --tls-cert): only behind
    /// a proxy that terminates TLS on the same host or a private link. Without it such a
    /// server refuses to start, since passwords, bearer and upload tokens would cross the
    /// network readable. Logged loudly at start.
    #[arg(long, env = "PROXIMA_INSECURE_PLAINTEXT", conflicts_with = "tls_cert")]
    insecure_plaintext: bool,
    /// Staff may also sign in through this OpenID Connect provider: its issuer identifier
    /// (https; http on loopback only). Flight SQL and REST's staff routes then take its JWTs
    /// as `Authorization: Bearer` (RS256 or ES256, this issuer, --oidc-audience, not
    /// expired); the users file keeps working beside it. Needs --oidc-audience.
    #[arg(long, env = "PROXIMA_OIDC_ISSUER", value_name = "URL", requires = "oidc_audience")]
    oidc_issuer: Option<String>,
    /// The audience every provider token must name in `aud` (this server's client or
    /// resource identifier at the provider).
    #[arg(long, env = "PROXIMA_OIDC_AUDIENCE", value_name = "AUD", requires = "oidc_issuer")]
    oidc_audience: Option<String>,
    /// The provider's signing keys (JWKS): a URL, or a file. Default: the `jwks_uri` of the
    /// issuer's /.well-known/openid-configuration. Fetched again when a token names a key
    /// not held (at most every --oidc-jwks-refresh) and every hour.
    #[arg(long, env = "PROXIMA_OIDC_JWKS", value_name = "URL|FILE", requires = "oidc_issuer")]
    oidc_jwks: Option<String>,
    /// The token claim whose values are Proxima role names (tracer, analyst, auditor,
    /// admin, station, ingest); a dotted path reaches into objects (Keycloak:
    /// realm_access.roles). A token that names no role gets no access; one that names
    /// several acts as the one its request names in the x-proxima-role header.
    #[arg(long, env = "PROXIMA_OIDC_ROLE_CLAIM", value_name = "NAME", default_value = "roles")]
    oidc_role_claim: String,
    /// Clock leeway on a provider token's exp and nbf (at most 5m).
    #[arg(long, env = "PROXIMA_OIDC_LEEWAY", default_value = "60s", value_parser = parse_duration)]
    oidc_leeway: Duration,
    /// The least time between two fetches of the provider's keys that tokens naming an
    /// unknown key prompt.
    #[arg(long, env = "PROXIMA_OIDC_JWKS_REFRESH", default_value = "10s", value_parser = parse_duration)]
    oidc_jwks_refresh: Duration,
    /// How long a login token stays valid: seconds, or with a unit (90s, 30m, 1h). Also the
    /// longest a Flight SQL session of an identity provider's token lasts before the token
    /// is checked again.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    token_ttl: Duration,
    /// Longest a staff login lasts after its password was checked: a REST bearer token
    /// traded for a new one keeps its login's time, so renewals stop here (Flight SQL
    /// tokens are never renewed: they last --token-ttl).
    #[arg(long, env = "PROXIMA_TOKEN_MAX_AGE", default_value = "12h", value_parser = parse_duration)]
    token_max_age: Duration,
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
    /// The key that signs the audit log's checkpoints (`proxima audit key` makes one; keep
    /// it outside the store). Needed with --users; without --users (loopback only) a key is
    /// made for the run and its public key printed.
    #[arg(long, env = "PROXIMA_AUDIT_KEY", value_name = "FILE")]
    audit_key: Option<PathBuf>,
    /// Folder of the audit log, on a local disk (default: `_audit` in a local store; needed
    /// for S3).
    #[arg(long, env = "PROXIMA_AUDIT_DIR", value_name = "DIR")]
    audit_dir: Option<PathBuf>,
    /// Sign an audit checkpoint after this many records…
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    audit_checkpoint_every: u64,
    /// …or this long after the last one, if records came since (10s, 1m).
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    audit_checkpoint_interval: Duration,
    /// Rotating identifiers: the keys that issue and resolve them, and their epochs.
    /// Without --id-key, GET /v1/ephemeral-ids answers 404; without --users (loopback only)
    /// a key file is made beside the store.
    #[command(flatten)]
    identifiers: super::id_key::IdentifierArgs,
    /// Let phones register and report static MACs (legacy phones; on with --demo). Off,
    /// phones broadcast rotating identifiers (GET /v1/ephemeral-ids) or GAEN RPIs, and a
    /// MAC in a registration or an upload is refused: a static MAC lets anyone with a
    /// scanner follow a phone, and lets whoever registers a sniffed MAC take its alerts.
    #[arg(long, env = "PROXIMA_ACCEPT_MAC")]
    accept_mac: bool,
    /// How often this node reads the revocations that other `proxima serve` nodes on the
    /// same store made (5s, 1m): the longest a device revoked on another node may still
    /// upload here. Registrations made elsewhere are looked up at once.
    /// Run Flight SQL's queries on a Ballista cluster (`proxima scheduler` at df://HOST:PORT
    /// and its executors): planned here, where the access policy, purposes and audit apply
    /// exactly as on one machine, executed there. REST's case traces, flushes and
    /// maintenance stay on this node; auditors' queries of the audit log run here.
    #[arg(long, env = "PROXIMA_BALLISTA", value_name = "df://HOST:PORT")]
    ballista: Option<String>,
    #[arg(long, env = "PROXIMA_REGISTRY_REFRESH", default_value = "5s", value_parser = parse_duration)]
    registry_refresh: std::time::Duration,
    /// Count an encounter in traces and alerts only when both devices reported each other
    /// within proxima.trace.mutual_window (5 minutes): a phone that uploads one-sided,
    /// made-up sightings alerts no one. Sessions start with proxima.trace.require_mutual on.
    #[arg(long, env = "PROXIMA_REQUIRE_MUTUAL")]
    require_mutual: bool,
    /// How long audit records are kept, whatever the data's retention: hourly, whole
    /// segments of older records are deleted, leaving a log that still verifies.
    #[arg(long, env = "PROXIMA_AUDIT_RETENTION", default_value = "400d", value_parser = parse_duration)]
    audit_retention: Duration,
    /// The smallest number of distinct devices a cell of an analyst's aggregate may show;
    /// smaller cells are left out.
    #[arg(long, env = "PROXIMA_MIN_CELL", default_value_t = proxima_engine::session::DEFAULT_MIN_CELL, value_parser = clap::value_parser!(u32).range(2..))]
    min_cell: u32,
    /// The smallest count of cases, readings or alerts an analyst's aggregate shows; a
    /// smaller one, but 0, is NULL.
    #[arg(long, env = "PROXIMA_MIN_COUNT", default_value_t = proxima_engine::session::DEFAULT_MIN_COUNT, value_parser = clap::value_parser!(u32).range(1..))]
    min_count: u32,
    /// If the store holds no observations, generate the demo population first.
    #[arg(long, env = "PROXIMA_DEMO")]
    demo: bool,
}

/// The logins a loopback server without a users file makes for the run, one per role,
/// printed in this order.
const DEV_ROLES: [Role; 6] = [
    Role::Tracer,
    Role::Analyst,
    Role::Auditor,
    Role::Admin,
    Role::Station,
    Role::Ingest,
];

fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Installs the SIGINT and SIGTERM handlers now (so a signal that arrives before the
/// returned future is first polled is not lost to the default action) and resolves on either.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The identity provider's token checks, if `--oidc-issuer` is given. Options that can
/// never work stop the start; a provider that does not answer is logged, and asked again
/// at the first token (the users file still lets staff in meanwhile).
async fn oidc_verifier(args: &ServeArgs) -> Result<Option<proxima_engine::oidc::OidcVerifier>, CliError> {
    let (Some(issuer), Some(audience)) = (&args.oidc_issuer, &args.oidc_audience) else {
        return Ok(None);
    };
    let options = proxima_engine::oidc::OidcOptions {
        jwks: args.oidc_jwks.clone(),
        role_claim: args.oidc_role_claim.clone(),
        leeway: args.oidc_leeway,
        refresh_interval: args.oidc_jwks_refresh,
        ..proxima_engine::oidc::OidcOptions::new(issuer, audience)
    };
    let verifier = proxima_engine::oidc::OidcVerifier::new(options).map_err(CliError::Usage)?;
    match verifier.load().await {
        Ok(keys) => tracing::info!(target: "proxima::auth", issuer, keys, "the identity provider's keys are loaded"),
        Err(e) => {
            tracing::warn!(target: "proxima::auth", issuer, error = %e, "the identity provider's keys could not be loaded: its tokens are refused until they can");
            super::print(format!(
                "warning: the identity provider's keys could not be loaded ({e}); asked again at the first token"
            ))?;
        }
    }
    Ok(Some(verifier))
}

/// How often the users file is checked for changes.
const USERS_RELOAD: std::time::Duration = std::time::Duration::from_secs(2);

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
            // Edits take effect without a restart: a removed user's logins end.
            users.watch(path.clone(), USERS_RELOAD);
            (users, None)
        }
        None if args.oidc_issuer.is_some()
            && (!proxima_flight_server::server::is_loopback(&args.flight)
                || (!args.no_rest && !proxima_flight_server::server::is_loopback(&args.http))) =>
        {
            // Every staff member signs in through the provider: no password here.
            (Users::generated(&[]).map_err(|e| CliError::Usage(e.to_string()))?, None)
        }
        None if !proxima_flight_server::server::is_loopback(&args.flight)
            || (!args.no_rest && !proxima_flight_server::server::is_loopback(&args.http)) =>
        {
            let address = if proxima_flight_server::server::is_loopback(&args.flight) {
                args.http
            } else {
                args.flight
            };
            return Err(CliError::Usage(format!(
                "refusing to listen on {address} without --users or --oidc-issuer: only a loopback address may use \
                 the generated passwords (create users with proxima user add, or sign staff in through an OpenID \
                 Connect provider)"
            )));
        }
        None => {
            let logins: Vec<(&str, Role, String)> = DEV_ROLES
                .iter()
                .map(|&role| (role.name(), role, random_password()))
                .collect();
            let with_passwords: Vec<(&str, Role, &str)> = logins
                .iter()
                .map(|(name, role, password)| (*name, *role, password.as_str()))
                .collect();
            let users = Users::generated(&with_passwords).map_err(|e| CliError::Usage(e.to_string()))?;
            let logins: Vec<(&str, String)> = logins.into_iter().map(|(name, _, password)| (name, password)).collect();
            (users, Some(logins))
        }
    };
    let admin_http = args.admin_http.unwrap_or_else(|| {
        let port = match args.http.port() {
            0 => 0,
            port => port.checked_add(1).unwrap_or(0),
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    });
    let oidc = oidc_verifier(&args).await?;
    let exposed = !proxima_flight_server::server::is_loopback(&args.flight)
        || (!args.no_rest
            && (!proxima_flight_server::server::is_loopback(&args.http)
                || !proxima_flight_server::server::is_loopback(&admin_http)));
    // `--demo` on a store without observations: generate the population (below).
    let new_demo = args.demo && !super::generate::has_observations(&store).await;
    let store = match store.keyring() {
        Some(_) => store,
        // A new demo store is encrypted (one that holds files in the clear stays so).
        None if new_demo => super::key::ensure_development_key(store)?,
        None if exposed => {
            return Err(CliError::Usage(
                "refusing to serve beyond loopback without a master key: the store would be written in the clear. \
                 Make one with proxima key init --master-key-file FILE (keep it away from whoever administers the \
                 store) and give it with --master-key-file FILE or PROXIMA_MASTER_KEY"
                    .into(),
            ));
        }
        None => store,
    };
    if exposed && args.tls_cert.is_none() && !args.insecure_plaintext {
        return Err(CliError::Usage(
            "refusing to serve beyond loopback in plain text: passwords, bearer and upload tokens would cross the \
             network readable. Give --tls-cert FILE --tls-key FILE, or, behind a proxy that terminates TLS, \
             --insecure-plaintext"
                .into(),
        ));
    }
    if args.alert_ttl.as_secs() < 3600 {
        return Err(CliError::Usage("--alert-ttl must be at least one hour".into()));
    }
    if !(35.0..=43.0).contains(&args.fever_threshold) {
        return Err(CliError::Usage(format!(
            "--fever-threshold {} is not a fever threshold (35 to 43 °C)",
            args.fever_threshold
        )));
    }
    if args.retention_days == 0 {
        return Err(CliError::Usage("--retention-days must be at least 1".into()));
    }
    args.identifiers.check()?;
    // A retired key's identifiers were issued up to a week ahead, and their sightings are
    // kept for the retention period: after both, nothing needs the key.
    let kept = chrono::Duration::days(i64::from(args.retention_days))
        + chrono::Duration::from_std(args.identifiers.epoch * proxima_ingest::rest::identifiers::MAX_COUNT)
            .unwrap_or(chrono::Duration::days(7));
    let forget_before = chrono::Utc::now()
        .checked_sub_signed(kept)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    let id_keys = super::id_key::for_server(
        &store,
        args.identifiers.id_key.as_deref(),
        generated_password.is_some(),
        forget_before,
    )
    .await?;
    let identifiers = id_keys.map(|keys| args.identifiers.resolving_with(keys));
    if new_demo {
        // Phones broadcast rotating identifiers (a server without identifier keys: MACs).
        let broadcast = match &identifiers {
            Some(ids) => Broadcast::Ephemeral(std::sync::Arc::clone(ids)),
            None => Broadcast::Mac,
        };
        let spec = PopulationSpec {
            broadcast,
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
    let audit_dir = super::audit::audit_dir(&store, args.audit_dir.as_deref())?;
    let (signer, development_key) = match (&args.audit_key, &generated_password) {
        (Some(path), _) => (super::audit::load_signer(&store, path)?, None),
        (None, Some(_)) => {
            let (signer, path) = super::audit::development_key(&store, &audit_dir)?;
            (signer, Some(path))
        }
        (None, None) => {
            return Err(CliError::Usage(
                "--audit-key FILE is needed with --users: every access is audited in a log whose checkpoints that key \
                 signs (make one with proxima audit key --out FILE, and keep it outside the store)"
                    .into(),
            ));
        }
    };
    let audit_public_key = development_key.map(|path| (path, signer.verifier().encode()));
    let audit = proxima_audit::AuditLog::open(
        &audit_dir,
        signer,
        proxima_audit::AuditLogOptions {
            checkpoint_every: args.audit_checkpoint_every,
            checkpoint_interval: args.audit_checkpoint_interval,
            redactor: Some(super::audit::redactor(&store).await?),
            ..proxima_audit::AuditLogOptions::default()
        },
    )
    .map_err(|e| CliError::Usage(format!("the audit log in {}: {e}", audit_dir.display())))?;
    let session_options = SessionOptions {
        memory_limit: Some(args.memory),
        session_memory_limit: Some(args.session_memory),
        max_trace_window: Some(Duration::from_secs(u64::from(args.retention_days) * 86_400)),
        audit_dir: Some(audit_dir.clone()),
        min_cell: Some(args.min_cell),
        min_count: Some(args.min_count),
        identifiers,
        require_mutual: args.require_mutual,
        ..SessionOptions::default()
    };
    let factory = SessionFactory::new(store.clone(), session_options.clone())?;
    // Flight SQL's sessions, on the cluster if there is one (their own memory pool: they
    // only plan here and stream the executors' results); everything else stays here.
    let flight_factory = match &args.ballista {
        Some(url) => {
            let cluster =
                proxima_cluster::client::Ballista::new(url).map_err(|e| CliError::Usage(format!("--ballista {e}")))?;
            SessionFactory::new(
                store.clone(),
                SessionOptions {
                    remote: Some(std::sync::Arc::new(cluster)),
                    ..session_options
                },
            )?
        }
        None => factory.clone(),
    };
    let wal_dir = match (&args.wal_dir, store.local_root()) {
        _ if args.no_rest => None,
        (Some(dir), _) => Some(dir.clone()),
        (None, Some(root)) => Some(root.join("_wal")),
        (None, None) => Some(PathBuf::from("proxima-wal")),
    };
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert,
            key,
            client_ca: args.tls_client_ca.clone(),
        }),
        _ => None,
    };
    let http_tls = match &tls {
        Some(files) if !args.no_rest => Some(proxima_ingest::rest::server::tls_acceptor(
            &files.cert,
            &files.key,
            files.client_ca.as_deref(),
        )?),
        _ => None,
    };
    let alert_ttl =
        chrono::Duration::from_std(args.alert_ttl).map_err(|_| CliError::Usage("--alert-ttl is too long".into()))?;
    let clock = std::sync::Arc::new(SystemClock);
    // The write side first: interrupted commits recovered, the WAL replayed and stored.
    let (maintainer, _) = Maintainer::open(MaintainerConfig {
        factory: factory.clone(),
        wal_dir,
        clock: clock.clone(),
        options: args.erasure.apply(MaintenanceOptions {
            interval: args.flush_interval,
            retention_days: args.retention_days,
            alert_ttl,
            rollups: !args.no_rollup,
            ..MaintenanceOptions::default()
        })?,
        stats: MaintenanceStats::default(),
    })
    .await?;
    let maintainer = std::sync::Arc::new(maintainer);
    // One guard for both services: a client's login attempts count once, wherever made.
    let logins = std::sync::Arc::new(LoginGuard::new(LoginLimits {
        per_address: args.login_rate,
        per_user: args.login_user_rate,
        concurrent: args
            .login_concurrency
            .map_or_else(|| LoginLimits::default().concurrent, |n| n as usize),
    }));
    // One set of query metrics: the Flight SQL service counts, the operations port renders.
    let service_metrics = ServiceMetrics::default();
    let rest = if args.no_rest {
        None
    } else {
        Some(
            RestService::start(RestConfig {
                store: store.clone(),
                factory: factory.clone(),
                users: users.clone(),
                maintainer: maintainer.clone(),
                options: RestOptions {
                    max_body: args.max_body,
                    max_bulk_body: args.max_bulk_body,
                    bulk_concurrency: args.bulk_concurrency as usize,
                    max_batch: args.max_batch,
                    max_bulk_rows: args.max_bulk_rows,
                    alert_ttl,
                    fever_threshold: args.fever_threshold,
                    retention_days: args.retention_days,
                    device_rate_per_minute: args.device_rate,
                    registration_rate_per_minute: args.registration_rate,
                    registration_work: args.registration_work,
                    accept_mac: args.accept_mac || args.demo,
                    token_ttl: args.token_ttl,
                    token_max_age: args.token_max_age,
                    registry_refresh: args.registry_refresh,
                    logins: std::sync::Arc::clone(&logins),
                    service_metrics: service_metrics.clone(),
                    staff_client_certificates: args.tls_client_ca.is_some(),
                    secure_cookies: http_tls.is_some(),
                    oidc: oidc.clone(),
                    ..RestOptions::default()
                },
                clock,
                audit: audit.clone(),
            })
            .await?,
        )
    };
    let options = ServiceOptions {
        token_ttl: args.token_ttl,
        query_timeout: args.query_timeout,
        logins,
        metrics: service_metrics,
        oidc,
    };
    let service = FlightSqlServer::new(flight_factory, users, audit.clone(), options)
        .map_err(|e| CliError::Usage(e.message().to_string()))?;
    let flight_listener = tokio::net::TcpListener::bind(args.flight)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", args.flight)))?;
    let http_listener = match &rest {
        Some(_) => Some(
            tokio::net::TcpListener::bind(args.http)
                .await
                .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", args.http)))?,
        ),
        None => None,
    };
    let admin_listener = match &rest {
        Some(_) => Some(tokio::net::TcpListener::bind(admin_http).await.map_err(|e| {
            CliError::Usage(format!(
                "cannot listen on {admin_http} (--admin-http, the operations routes): {e}"
            ))
        })?),
        None => None,
    };
    let flight_address = flight_listener.local_addr()?;
    // Before anything says "listening": a signal from then on stops the server cleanly.
    let signals = shutdown_signal();
    let (grpc, http) = if tls.is_some() {
        ("grpc+tls", "https")
    } else {
        ("grpc", "http")
    };
    if exposed && tls.is_none() {
        tracing::warn!(
            target: "proxima::serve",
            "SERVING IN PLAIN TEXT beyond loopback (--insecure-plaintext): credentials cross the network readable \
             unless a proxy in front terminates TLS"
        );
        eprintln!(
            "warning: serving in plain text beyond loopback (--insecure-plaintext): credentials cross the network \
             readable unless a proxy in front terminates TLS"
        );
    }
    if let Some(listener) = &http_listener {
        super::print(format!(
            "REST listening on {http}://{} (OpenAPI at /openapi.json)",
            listener.local_addr()?
        ))?;
    }
    if let Some(listener) = &admin_listener {
        super::print(format!(
            "operations on {http}://{} (/metrics, /healthz, /readyz)",
            listener.local_addr()?
        ))?;
    }
    super::print(format!(
        "Flight SQL listening on {grpc}://{flight_address} (store {store})"
    ))?;
    if let Some(logins) = &generated_password {
        for (name, password) in logins {
            super::print(format!(
                "user {name}, password {password} (generated for this run; use --users for real users)"
            ))?;
        }
    }
    if let Some((path, key)) = &audit_public_key {
        super::print(format!(
            "audit log in {}, signed with the development key {} (public key {key})",
            audit_dir.display(),
            path.display()
        ))?;
    }
    tracing::info!(target: "proxima::serve", %flight_address, rest = rest.is_some(), tls = tls.is_some(), "serving");

    // One signal stops everything: the servers drain, then the Maintainer's last flush runs.
    let (stop, stopped) = watch::channel(false);
    let when_stopped = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    {
        let rest = rest.clone();
        tokio::spawn(async move {
            signals.await;
            if let Some(rest) = rest {
                rest.set_stopping();
            }
            let _ = stop.send(true);
        });
    }
    let admin_server = match (&rest, admin_listener) {
        (Some(rest), Some(listener)) => Some(tokio::spawn(proxima_ingest::rest::server::serve(
            rest.operations_router(),
            listener,
            http_tls.clone(),
            when_stopped(stopped.clone()),
        ))),
        _ => None,
    };
    let rest_server = match (rest, http_listener) {
        (Some(rest), Some(listener)) => Some(tokio::spawn(proxima_ingest::rest::server::serve(
            rest.router(),
            listener,
            http_tls,
            when_stopped(stopped.clone()),
        ))),
        _ => None,
    };
    let maintenance = maintainer.spawn(when_stopped(stopped.clone()))?;
    let audit_retention = tokio::spawn(audit_retention(
        audit.clone(),
        args.audit_retention,
        when_stopped(stopped.clone()),
    ));
    let flight = proxima_flight_server::serve(service, flight_listener, tls, when_stopped(stopped)).await;
    let rest_result = match rest_server {
        Some(server) => Some(server.await),
        None => None,
    };
    if let Some(server) = admin_server
        && let Ok(Err(e)) = server.await
    {
        tracing::warn!(target: "proxima::serve", error = %e, "the operations server failed");
    }
    let _ = tokio::task::spawn_blocking(move || maintenance.join()).await;
    let _ = audit_retention.await;
    flight.map_err(|e| CliError::Usage(e.to_string()))?;
    match rest_result {
        None | Some(Ok(Ok(()))) => {}
        Some(Ok(Err(e))) => return Err(CliError::Usage(format!("REST server: {e}"))),
        Some(Err(e)) => return Err(CliError::Usage(format!("REST server: {e}"))),
    }
    // The last checkpoint is signed once every clone of the log is gone.
    drop(audit);
    super::print("Proxima stopped")?;
    Ok(())
}

/// Deletes the audit records older than `keep`, now and every hour, until `stop`.
async fn audit_retention(audit: proxima_audit::AuditLog, keep: Duration, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut hourly = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = hourly.tick() => {}
        }
        let before = chrono::Duration::from_std(keep)
            .ok()
            .and_then(|keep| chrono::Utc::now().checked_sub_signed(keep))
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        match audit.prune(before).await {
            Ok(pruned) if pruned.segments > 0 => tracing::info!(
                target: "proxima::audit",
                records = pruned.records,
                segments = pruned.segments,
                first_kept = pruned.cut,
                "audit retention"
            ),
            Ok(_) => {}
            // The records stay; the next hour tries again, and verify names the problem.
            Err(e) => tracing::error!(target: "proxima::audit", "audit retention: {e}"),
        }
    }
}
