//! What Proxima's fuzz targets share: one REST service, one Flight SQL server, one store,
//! built once per fuzzing process, and the checks every input must pass.
//!
//! The oracle is stronger than "no panic" (libfuzzer-sys aborts on a panic in any thread,
//! so a panicking handler is a crash too): bad input must never make a server answer with
//! a 5xx or a Flight `INTERNAL`/`UNKNOWN` status, since that would be a fault of ours.
//! Inputs must never reach data the test did not give them either; every server here runs
//! on a store of its own in a temporary folder, on a clock fixed at [`NOW`] so that the
//! committed corpus stays inside the upload window for good.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use proxima_engine::clock::ManualClock;
use proxima_engine::{Role, SessionFactory, SessionOptions, Store, Users};
use proxima_ingest::rest::{RestConfig, RestOptions, RestService};
use proxima_storage::{Maintainer, MaintainerConfig, MaintenanceOptions, MaintenanceStats};
use tower::ServiceExt as _;

pub mod seeds;

/// The time every server of the fuzz targets lives at.
pub fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(NOW)
        .expect("a valid time")
        .with_timezone(&Utc)
}

/// [`now`] as text.
pub const NOW: &str = "2026-12-01T12:00:00Z";

/// The password of every staff user of the fuzz servers.
pub const PASSWORD: &str = "fuzzing password 1";

/// A folder for a server's files: in memory (`/dev/shm`) where there is one, so that the
/// write-ahead log's syncs cost nothing.
pub fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("a temporary folder in /dev/shm")
    } else {
        tempfile::tempdir().expect("a temporary folder")
    }
}

/// A runtime for one fuzzing process (targets run inputs one after the other).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        // The server's 16 MiB stacks (`src/main.rs`): a deep plan must not overflow here
        // when it would not there.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_stack_size(16 << 20)
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

/// The REST service in this process, with a registered phone and an ingest gateway's
/// staff token.
pub struct Rest {
    router: axum::Router,
    /// The phone's upload token.
    pub device_token: String,
    /// The gateway's bearer token (role `ingest`).
    pub gateway_token: String,
    _dir: tempfile::TempDir,
}

/// The REST service of this process, started on first use.
pub fn rest() -> &'static Rest {
    static REST: OnceLock<Rest> = OnceLock::new();
    REST.get_or_init(|| runtime().block_on(Rest::start()))
}

impl Rest {
    async fn start() -> Self {
        let dir = scratch();
        let users_file = dir.path().join("users.toml");
        proxima_engine::users::add_user(&users_file, "gate", Role::Ingest, PASSWORD).expect("a user");
        let store = Store::local(&dir.path().join("store")).expect("a store");
        let factory = SessionFactory::new(store.clone(), SessionOptions::default()).expect("a factory");
        let clock = Arc::new(ManualClock::new(now()));
        let signer = proxima_audit::SignerKey::generate("proxima.fuzz/audit").expect("an audit key");
        let audit =
            proxima_audit::AuditLog::open(&dir.path().join("audit"), signer, Default::default()).expect("an audit log");
        let (maintainer, _) = Maintainer::open(MaintainerConfig {
            factory: factory.clone(),
            wal_dir: Some(dir.path().join("wal")),
            clock: clock.clone(),
            options: MaintenanceOptions::default(),
            stats: MaintenanceStats::default(),
        })
        .await
        .expect("the write side");
        let service = RestService::start(RestConfig {
            store,
            factory,
            users: Users::load(&users_file).expect("the users"),
            maintainer: Arc::new(maintainer),
            options: RestOptions {
                accept_mac: true,
                // Every input is parsed: no limit answers first.
                device_rate_per_minute: u32::MAX,
                registration_rate_per_minute: u32::MAX,
                // The gateway's token outlives any run.
                token_ttl: std::time::Duration::from_secs(365 * 86_400),
                token_max_age: std::time::Duration::from_secs(365 * 86_400),
                ..RestOptions::default()
            },
            clock,
            audit,
        })
        .await
        .expect("the REST service");
        let router = service.router();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let registration = serde_json::json!({
            "mac": seeds::PHONE_MAC,
            "revocation_key": hex::encode(key.verifying_key().as_bytes()),
        });
        let (status, body) = send(
            &router,
            "POST",
            "/v1/devices",
            "application/json",
            None,
            registration.to_string().as_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
        let device_token = json_field(&body, "upload_token");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("gate:{PASSWORD}"));
        let (status, body) = send(
            &router,
            "POST",
            "/v1/auth/token",
            "application/json",
            Some(&format!("Basic {basic}")),
            b"",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let gateway_token = json_field(&body, "token");
        Self {
            router,
            device_token,
            gateway_token,
            _dir: dir,
        }
    }

    /// Posts `body` to `path` with a bearer token; the input must not be answered with a
    /// server error.
    pub fn post(&self, path: &str, content_type: &str, token: &str, body: &[u8]) {
        let (status, answer) = runtime().block_on(send(
            &self.router,
            "POST",
            path,
            content_type,
            Some(&format!("Bearer {token}")),
            body,
        ));
        assert!(
            !status.is_server_error(),
            "{path} answered {status} ({}) to {:?}",
            String::from_utf8_lossy(&answer),
            String::from_utf8_lossy(body)
        );
    }
}

async fn send(
    router: &axum::Router,
    method: &str,
    path: &str,
    content_type: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> (StatusCode, Vec<u8>) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let request = request.body(Body::from(body.to_vec())).expect("a request");
    let response = router.clone().oneshot(request).await.expect("the router answers");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body is read");
    (status, bytes.to_vec())
}

fn json_field(body: &[u8], field: &str) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).expect("a JSON answer");
    value[field].as_str().expect("a text field").to_string()
}

/// The master key the sealed seeds and the WAL target use (fixed, so the corpus stays
/// valid).
pub fn master_keys() -> proxima_engine::keys::MasterKeys {
    let key = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    proxima_engine::keys::MasterKeys::from_env(&key).expect("a master key")
}

/// A file of `bytes` named `name` in a fresh folder (kept until the folder is dropped).
pub fn file_of(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = scratch();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).expect("a scratch file");
    (dir, path)
}

/// A Flight SQL server on loopback in this process and a client logged in as a tracer.
pub struct Flight {
    /// The client, with its bearer token.
    pub client: tokio::sync::Mutex<arrow_flight::sql::client::FlightSqlServiceClient<tonic::transport::Channel>>,
    _dir: tempfile::TempDir,
}

/// The Flight SQL server of this process, started on first use.
pub fn flight() -> &'static Flight {
    static FLIGHT: OnceLock<Flight> = OnceLock::new();
    FLIGHT.get_or_init(|| runtime().block_on(Flight::start()))
}

impl Flight {
    async fn start() -> Self {
        let dir = scratch();
        let store = Store::local(&dir.path().join("store")).expect("a store");
        let factory = SessionFactory::new(store, SessionOptions::default()).expect("a factory");
        let users = Users::generated(&[("tracy", Role::Tracer, PASSWORD)]).expect("a user");
        let signer = proxima_audit::SignerKey::generate("proxima.fuzz/audit").expect("an audit key");
        let audit =
            proxima_audit::AuditLog::open(&dir.path().join("audit"), signer, Default::default()).expect("an audit log");
        let options = proxima_flight_server::ServiceOptions {
            // The login outlives any run.
            token_ttl: std::time::Duration::from_secs(365 * 86_400),
            ..Default::default()
        };
        let service = proxima_flight_server::FlightSqlServer::new(factory, users, audit, options).expect("the service");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("an address");
        tokio::spawn(proxima_flight_server::serve(
            service,
            listener,
            None,
            std::future::pending(),
        ));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("an endpoint")
            .connect()
            .await
            .expect("a connection");
        let mut client = arrow_flight::sql::client::FlightSqlServiceClient::new(channel);
        client.handshake("tracy", PASSWORD).await.expect("a login");
        Self {
            client: tokio::sync::Mutex::new(client),
            _dir: dir,
        }
    }

    /// Sends `bytes` as a ticket (`DoGet`), as a command (`GetFlightInfo`) and as the body
    /// of each action the service knows (`DoAction`): each may be refused, never with an
    /// internal error.
    pub fn send(&self, bytes: &[u8]) {
        runtime().block_on(async {
            let client = self.client.lock().await;
            let token = client.token().cloned().expect("logged in");
            let mut raw = client.inner().clone();
            let ticket = arrow_flight::Ticket::new(bytes.to_vec());
            match raw.do_get(authorized(ticket, &token)).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    while let Some(item) = futures::StreamExt::next(&mut stream).await {
                        if let Err(status) = item {
                            check(&status, "DoGet (streaming)", bytes);
                            break;
                        }
                    }
                }
                Err(status) => check(&status, "DoGet", bytes),
            }
            let descriptor = arrow_flight::FlightDescriptor::new_cmd(bytes.to_vec());
            if let Err(status) = raw.get_flight_info(authorized(descriptor, &token)).await {
                check(&status, "GetFlightInfo", bytes);
            }
            for action in [
                "CreatePreparedStatement",
                "ClosePreparedStatement",
                "CancelQuery",
                "BeginTransaction",
                "made-up action",
            ] {
                let action = arrow_flight::Action::new(action, bytes.to_vec());
                match raw.do_action(authorized(action, &token)).await {
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        while let Some(item) = futures::StreamExt::next(&mut stream).await {
                            if let Err(status) = item {
                                check(&status, "DoAction (streaming)", bytes);
                                break;
                            }
                        }
                    }
                    Err(status) => check(&status, "DoAction", bytes),
                }
            }
        });
    }
}

impl Flight {
    /// Sends `bytes`, cut into Arrow IPC messages as a stream frames them, as the parameters
    /// bound to a prepared statement (`DoPut`): refused or taken, never an internal error.
    pub fn bind(&self, bytes: &[u8]) {
        use arrow_flight::sql::{ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any};
        use arrow_flight::sql::{CommandPreparedStatementQuery, ProstMessageExt};
        use prost::Message as _;
        runtime().block_on(async {
            let client = self.client.lock().await;
            let token = client.token().cloned().expect("logged in");
            let mut raw = client.inner().clone();
            static HANDLE: tokio::sync::OnceCell<prost::bytes::Bytes> = tokio::sync::OnceCell::const_new();
            let handle = HANDLE
                .get_or_init(|| async {
                    let request = ActionCreatePreparedStatementRequest {
                        query: "SELECT $1".into(),
                        transaction_id: None,
                    };
                    let action = arrow_flight::Action::new("CreatePreparedStatement", request.as_any().encode_to_vec());
                    let mut results = raw
                        .clone()
                        .do_action(authorized(action, &token))
                        .await
                        .expect("prepared")
                        .into_inner();
                    let result = futures::StreamExt::next(&mut results)
                        .await
                        .expect("a result")
                        .expect("prepared");
                    let created: ActionCreatePreparedStatementResult = Any::decode(result.body)
                        .expect("an Any")
                        .unpack()
                        .expect("the result")
                        .expect("the result");
                    created.prepared_statement_handle
                })
                .await;
            let command = CommandPreparedStatementQuery {
                prepared_statement_handle: handle.clone(),
            };
            let mut data = ipc_messages(bytes);
            let descriptor = arrow_flight::FlightDescriptor::new_cmd(command.as_any().encode_to_vec());
            match data.first_mut() {
                Some(first) => first.flight_descriptor = Some(descriptor),
                None => data.push(arrow_flight::FlightData {
                    flight_descriptor: Some(descriptor),
                    ..Default::default()
                }),
            }
            match raw.do_put(authorized(futures::stream::iter(data), &token)).await {
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    while let Some(item) = futures::StreamExt::next(&mut stream).await {
                        if let Err(status) = item {
                            check(&status, "DoPut (streaming)", bytes);
                            break;
                        }
                    }
                }
                Err(status) => check(&status, "DoPut", bytes),
            }
        });
    }
}

/// `bytes` cut into Flight data as an Arrow IPC stream frames its messages (a continuation
/// marker, a length, the metadata, then as much body as the metadata declares); what cannot
/// be framed ends the list (the rest of the bytes, as one last message's header).
fn ipc_messages(mut bytes: &[u8]) -> Vec<arrow_flight::FlightData> {
    let mut data = Vec::new();
    let word = |b: &[u8]| Some(i32::from_le_bytes(b.get(..4)?.try_into().ok()?));
    while let Some(mut length) = word(bytes) {
        bytes = &bytes[4..];
        if length == -1 {
            let Some(next) = word(bytes) else { break };
            length = next;
            bytes = &bytes[4..];
        }
        let Some((header, rest)) = usize::try_from(length).ok().and_then(|n| bytes.split_at_checked(n)) else {
            break;
        };
        let body_length = arrow::ipc::root_as_message(header)
            .ok()
            .and_then(|m| usize::try_from(m.bodyLength()).ok())
            .unwrap_or(0)
            .min(rest.len());
        let (body, rest) = rest.split_at(body_length);
        data.push(arrow_flight::FlightData {
            data_header: header.to_vec().into(),
            data_body: body.to_vec().into(),
            ..Default::default()
        });
        bytes = rest;
        if length == 0 {
            break;
        }
    }
    if !bytes.is_empty() {
        data.push(arrow_flight::FlightData {
            data_header: bytes.to_vec().into(),
            ..Default::default()
        });
    }
    data
}

/// `message` with the bearer `token`.
fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("a header"));
    request
}

/// Bad input is the client's fault: never an internal error of the server.
fn check(status: &tonic::Status, call: &str, bytes: &[u8]) {
    assert!(
        !matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown),
        "{call} answered {status:?} to {bytes:?}"
    );
}

/// Imports `bytes`, as a file named `name`, into `table` of an in-memory store (a new one
/// every 1,000 inputs, so that long runs do not grow without end): imported whole or
/// refused.
pub fn import(table: proxima_engine::Table, name: &str, bytes: &[u8]) {
    static STORE: OnceLock<std::sync::Mutex<(Store, usize)>> = OnceLock::new();
    let writer = {
        let mut store = STORE
            .get_or_init(|| std::sync::Mutex::new((memory_store(), 0)))
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        store.1 += 1;
        if store.1 % 1_000 == 0 {
            store.0 = memory_store();
        }
        proxima_storage::PartitionWriter::new(store.0.clone(), "fuzz")
    };
    let (_dir, path) = file_of(name, bytes);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(leave_parquet_panics_to_the_import);
    let _ = runtime().block_on(proxima_ingest::import::import(&writer, table, &[path]));
}

/// libfuzzer-sys's panic hook aborts at once, even on a panic the code catches. The import
/// catches parquet's panics on damaged files and refuses the file (parquet 59 has several),
/// so a panic raised in parquet's source is left to unwind: caught, the input was refused; not
/// caught, libfuzzer-sys's wrapper aborts on it as on any other.
fn leave_parquet_panics_to_the_import() {
    let libfuzzer = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_parquet = info.location().is_some_and(|at| at.file().contains("/parquet-"));
        if !in_parquet {
            libfuzzer(info);
        }
    }));
}

fn memory_store() -> Store {
    Store::open("memory://").expect("an in-memory store")
}

/// Reads `bytes` as a WAL segment, first as the last one (a torn tail is tolerated), then
/// as an earlier one (followed by an empty segment: damage is refused).
pub fn replay(bytes: &[u8]) {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(scratch).path();
    let keys = master_keys();
    let later = dir.join("2.wal");
    let _ = std::fs::remove_file(&later);
    std::fs::write(dir.join("1.wal"), bytes).expect("a segment");
    let _ = proxima_storage::wal::read_entries(dir, Some(&keys));
    std::fs::write(&later, b"").expect("a segment");
    let _ = proxima_storage::wal::read_entries(dir, Some(&keys));
}

/// Tries each line of `bytes` as every kind of identifier.
pub fn identifiers(bytes: &[u8]) {
    use proxima_engine::ids;
    static KEYS: OnceLock<proxima_engine::ephemeral::Identifiers> = OnceLock::new();
    let identifiers = KEYS.get_or_init(|| {
        proxima_engine::ephemeral::Identifiers::new(
            proxima_engine::ephemeral::IdKeys::generate(now()),
            std::time::Duration::from_secs(900),
            std::time::Duration::from_secs(120),
        )
    });
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines() {
        let _ = ids::device_uuid(line);
        let _ = ids::case_id(line);
        let _ = ids::mac(line);
        let _ = ids::rpi(line);
        let _ = ids::observed(line);
        let _ = ids::geohash(line);
        let _ = identifiers.heard(line, now().timestamp_micros());
        let _ = proxima_engine::ephemeral::handle_of(line);
    }
}

/// `name=value` lines, `---`, then a SQL job script: substituted, then split into
/// statements.
pub fn script(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let (params, script) = text.split_once("\n---\n").unwrap_or(("", &text));
    let params = params
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    if let Ok(substituted) = proxima_engine::script::substitute(script, &params) {
        let _ = proxima_engine::script::parse(&substituted);
    }
    let _ = proxima_engine::script::parse(script);
}
