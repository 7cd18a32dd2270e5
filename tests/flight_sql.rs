//! The Flight SQL server, started as `proxima serve` on a free loopback port, talked to by
//! arrow-flight's Rust Flight SQL client and (in CI, or wherever `adbc-driver-flightsql` is
//! installed) by the ADBC driver from Python (`tests/flight/adbc_client.py`).

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow_flight::FlightInfo;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables};
use futures::TryStreamExt;
use std::sync::Arc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const BIN: &str = env!("CARGO_BIN_EXE_proxima");
const TRACER_PASSWORD: &str = "tracer password 1";
const ANALYST_PASSWORD: &str = "analyst password 1";
const ADMIN_PASSWORD: &str = "admin password 123";
const STATION_PASSWORD: &str = "station password 1";
const AUDITOR_PASSWORD: &str = "auditor password 1";
/// Runs far longer than the tests' timeouts: a cross join of observations with itself.
const LONG_QUERY: &str = "SELECT count(*) FROM generate_series(1, 1000000000000) WHERE value = -1";

/// A store with a small generated population, and a users file with a user of each role:
/// made once, in this process, and shared by every test (each server gets its own WAL).
struct Fixture {
    dir: tempfile::TempDir,
    /// The public key of the audit signing key every server here uses.
    audit_public_key: String,
    /// A confirmed case, reported at the fixture's making, of the device seen most: what
    /// the tracer's purpose cites.
    case_id: String,
    /// That device.
    case_device: String,
}

/// The shared fixture, generated on first use.
fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        // A runtime of its own (the caller is inside a test's runtime), on a thread of its own.
        std::thread::spawn(Fixture::new)
            .join()
            .expect("the fixture store is generated")
    })
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        // The audit signing key, made as an operator makes it, outside the store.
        let key = Command::new(BIN)
            .args(["audit", "key", "--out"])
            .arg(dir.path().join("audit.key"))
            .output()
            .unwrap();
        assert!(key.status.success(), "{}", String::from_utf8_lossy(&key.stderr));
        let audit_public_key = String::from_utf8_lossy(&key.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("public key: "))
            .expect("proxima audit key prints the public key")
            .to_string();
        let store_dir = dir.path().join("store");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (case_id, case_device) = runtime.block_on(async {
            let store = proxima_engine::Store::local(&store_dir).unwrap();
            let writer = proxima_storage::PartitionWriter::new(store.clone(), "test");
            let spec = proxima_ingest::synthetic::PopulationSpec {
                broadcast: Default::default(),
                devices: 2000,
                days: 3,
                contacts_per_day: 10,
                seed: 7,
                start: proxima_engine::store::today_utc() - chrono::Days::new(2),
            };
            proxima_ingest::synthetic::generate(&writer, &spec, |_| {})
                .await
                .unwrap();
            let factory =
                proxima_engine::SessionFactory::new(store.clone(), proxima_engine::SessionOptions::default()).unwrap();
            let seen = factory
                .session()
                .await
                .unwrap()
                .sql("SELECT observer FROM observations GROUP BY observer ORDER BY count(*) DESC, observer LIMIT 1")
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let device = seen[0].column(0).as_string::<i32>().value(0).to_string();
            (common::write_case(&store, &device).await, device)
        });
        let fixture = Self {
            dir,
            audit_public_key,
            case_id,
            case_device,
        };
        assert_eq!(fixture.store(), store_dir);
        for (name, role, password) in [
            ("alice", proxima_engine::Role::Tracer, TRACER_PASSWORD),
            ("ann", proxima_engine::Role::Analyst, ANALYST_PASSWORD),
            ("root", proxima_engine::Role::Admin, ADMIN_PASSWORD),
            ("stan", proxima_engine::Role::Station, STATION_PASSWORD),
            ("audrey", proxima_engine::Role::Auditor, AUDITOR_PASSWORD),
        ] {
            proxima_engine::users::add_user(&fixture.users(), name, role, password).unwrap();
        }
        fixture
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn users(&self) -> PathBuf {
        self.dir.path().join("users.toml")
    }

    fn audit_key(&self) -> PathBuf {
        self.dir.path().join("audit.key")
    }
}

/// A running `proxima serve`, killed on drop.
struct Server {
    child: Child,
    address: String,
    /// The operations port (`/metrics`), `host:port`.
    ops: String,
    /// This server's audit log.
    audit_dir: PathBuf,
}

impl Server {
    fn start(fixture: &Fixture, extra: &[&str]) -> Self {
        // Several servers share a fixture's store; each needs its own write-ahead log.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let wal_dir = fixture.dir.path().join(format!("wal-{n}"));
        let audit_dir = fixture.dir.path().join(format!("audit-{n}"));
        let mut child = Command::new(BIN)
            .args(["--data", fixture.store().to_str().unwrap()])
            .args([
                "serve",
                "--flight",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--wal-dir",
                wal_dir.to_str().unwrap(),
                "--users",
                fixture.users().to_str().unwrap(),
                "--audit-key",
                fixture.audit_key().to_str().unwrap(),
                "--audit-dir",
                audit_dir.to_str().unwrap(),
            ])
            .args(extra)
            .env("RUST_LOG", "warn,proxima::query=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let address_in = |line: String| {
            line.split("://")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("unexpected line: {line}"))
                .to_string()
        };
        let ops = address_in(common::wait_for_line(&mut stdout, "operations on"));
        let address = address_in(common::wait_for_line(&mut stdout, "Flight SQL listening"));
        Self {
            child,
            address,
            ops,
            audit_dir,
        }
    }

    /// Stops the server as an operator does (SIGTERM) and waits for it.
    fn stop(mut self) {
        common::terminate(&mut self.child);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn client(server: &Server) -> FlightSqlServiceClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{}", server.address))
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightSqlServiceClient::new(channel)
}

/// Prepares `sql` by the raw action, for a test that sends its own parameter messages.
async fn prepare_raw(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> prost::bytes::Bytes {
    use arrow_flight::sql::{
        ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult, Any, ProstMessageExt,
    };
    use prost::Message as _;
    let request = ActionCreatePreparedStatementRequest {
        query: sql.into(),
        transaction_id: None,
    };
    let action = arrow_flight::Action::new("CreatePreparedStatement", request.as_any().encode_to_vec());
    let mut results = client.do_action(action).await.unwrap();
    let result = results.try_next().await.unwrap().expect("a result");
    let created: ActionCreatePreparedStatementResult = Any::decode(result.body).unwrap().unpack().unwrap().unwrap();
    created.prepared_statement_handle
}

/// `parameters` as the Flight data that binds them to the prepared statement `handle`.
fn bound(handle: &prost::bytes::Bytes, parameters: &RecordBatch) -> Vec<arrow_flight::FlightData> {
    use arrow_flight::sql::{CommandPreparedStatementQuery, ProstMessageExt};
    use prost::Message as _;
    let command = CommandPreparedStatementQuery {
        prepared_statement_handle: handle.clone(),
    };
    let mut data = arrow_flight::utils::batches_to_flight_data(&parameters.schema(), vec![parameters.clone()]).unwrap();
    data[0].flight_descriptor = Some(arrow_flight::FlightDescriptor::new_cmd(
        command.as_any().encode_to_vec(),
    ));
    data
}

/// Sends bound parameters; the server's refusal as text.
async fn put_parameters(
    client: &mut FlightSqlServiceClient<Channel>,
    data: Vec<arrow_flight::FlightData>,
) -> Result<(), String> {
    let results = client
        .do_put(futures::stream::iter(data))
        .await
        .map_err(|e| format!("{e:?}"))?;
    results.try_collect::<Vec<_>>().await.map_err(|e| format!("{e:?}"))?;
    Ok(())
}

/// Sends `damaged`, an `Any` naming a Flight SQL message its bytes do not decode as, as a
/// ticket, a command, a DoPut descriptor and (retyped) an action body: each is refused as
/// `InvalidArgument`, saying the message is damaged.
async fn damaged_messages_are_refused_as_invalid(client: &FlightSqlServiceClient<Channel>, damaged: &[u8]) {
    use prost::Message as _;
    let token = client.token().cloned().expect("logged in");
    fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let bearer = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
        request
    }
    let mut raw = client.inner().clone();
    let mut refusals = Vec::new();
    let ticket = arrow_flight::Ticket::new(damaged.to_vec());
    refusals.push(("DoGet", raw.do_get(authorized(ticket, &token)).await.err()));
    let descriptor = arrow_flight::FlightDescriptor::new_cmd(damaged.to_vec());
    refusals.push((
        "GetFlightInfo",
        raw.get_flight_info(authorized(descriptor.clone(), &token)).await.err(),
    ));
    let data = arrow_flight::FlightData {
        flight_descriptor: Some(descriptor),
        ..Default::default()
    };
    let put = raw.do_put(authorized(futures::stream::iter(vec![data]), &token)).await;
    refusals.push(("DoPut", put.err()));
    let mut any = arrow_flight::sql::Any::decode(damaged).expect("an Any around damaged bytes");
    any.type_url = "type.googleapis.com/arrow.flight.protocol.sql.ActionCreatePreparedStatementRequest".into();
    let action = arrow_flight::Action::new("CreatePreparedStatement", any.encode_to_vec());
    refusals.push(("DoAction", raw.do_action(authorized(action, &token)).await.err()));
    for (call, refusal) in refusals {
        let status = refusal.unwrap_or_else(|| panic!("{call} took a damaged message"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{call}: {status:?}");
        assert!(status.message().contains("damaged"), "{call}: {status:?}");
    }
}

async fn fetch(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("an endpoint has a ticket");
        let stream = client.do_get(ticket).await.unwrap();
        batches.extend(stream.try_collect::<Vec<_>>().await.unwrap());
    }
    batches
}

async fn query(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Vec<RecordBatch> {
    let info = client.execute(sql.to_string(), None).await.unwrap();
    fetch(client, info).await
}

/// A cell as text, whatever the string type (CAST AS VARCHAR gives Utf8View).
fn text(batch: &RecordBatch, column: usize, row: usize) -> String {
    let column = arrow::compute::cast(batch.column(column), &DataType::Utf8).unwrap();
    column.as_string::<i32>().value(row).to_string()
}

/// Runs `sql` expecting the result stream to fail; returns the error.
async fn failing_query(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> arrow_flight::error::FlightError {
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let outcome = async {
        let stream = client.do_get(ticket).await?;
        stream.try_collect::<Vec<_>>().await
    }
    .await;
    outcome.expect_err("the query should fail")
}

fn single_i64(batches: &[RecordBatch]) -> i64 {
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

#[tokio::test]
async fn rust_flight_sql_client() {
    let fixture = fixture();
    let server = Server::start(fixture, &[]);

    // No credentials, a wrong password: refused.
    let mut anonymous = client(&server).await;
    let refused = anonymous.execute("SELECT 1".into(), None).await.unwrap_err();
    assert!(refused.to_string().contains("no credentials"), "{refused}");
    let wrong = anonymous.handshake("alice", "not her password").await.unwrap_err();
    assert!(wrong.to_string().contains("wrong user name or password"), "{wrong}");
    let unknown = anonymous.handshake("mallory", TRACER_PASSWORD).await.unwrap_err();
    assert!(unknown.to_string().contains("wrong user name or password"), "{unknown}");

    let mut alice = client(&server).await;
    alice.handshake("alice", TRACER_PASSWORD).await.unwrap();

    // A tracer reads nothing without a purpose, then only the case's rows.
    let refused = failing_query(&mut alice, "SELECT count(*) FROM observations").await;
    assert!(
        refused.to_string().contains("reads only for a declared purpose"),
        "{refused}"
    );
    let refused = alice
        .execute_update("SET proxima.purpose = 'case:not-a-case'".into(), None)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("'case:<case_id>'"), "{refused}");
    // A well-formed id that is no case fails at the SET, not at the next read.
    let refused = alice
        .execute_update(format!("SET proxima.purpose = 'case:{}'", uuid::Uuid::now_v7()), None)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("there is no such case"), "{refused}");
    alice
        .execute_update(format!("SET proxima.purpose = 'case:{}'", fixture.case_id), None)
        .await
        .unwrap();
    let device = &fixture.case_device;
    let reported = local_csv(
        fixture,
        &format!(
            "SELECT CAST(reported_at AS VARCHAR) FROM cases WHERE case_id = '{}'",
            fixture.case_id
        ),
    );
    let involving = local_csv(
        fixture,
        &format!(
            "WITH scope AS (SELECT '{device}' AS d UNION SELECT contact FROM trace_contacts('{device}', TIMESTAMP '{}')) \
             SELECT count(*) FROM observations WHERE observer IN (SELECT d FROM scope) \
             OR observed IN (SELECT mac FROM devices WHERE device_uuid IN (SELECT d FROM scope))",
            reported[0]
        ),
    )[0]
    .parse::<i64>()
    .unwrap();
    let everything = local_csv(fixture, "SELECT count(*) FROM observations")[0]
        .parse::<i64>()
        .unwrap();

    // Thousands of rows, streamed; the FlightInfo schema matches the data.
    let info = alice
        .execute("SELECT observer, observed_at FROM observations".into(), None)
        .await
        .unwrap();
    let announced = Schema::try_from(info.clone()).unwrap();
    let batches = fetch(&mut alice, info).await;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let count = single_i64(&query(&mut alice, "SELECT count(*) FROM observations").await);
    assert!(rows > 1_000, "{rows} rows");
    assert_eq!(rows as i64, count);
    // Exactly the rows of the case's device and contacts, counted independently on the files.
    assert_eq!(count, involving);
    assert!(count < everything, "{count} of {everything}");
    assert_eq!(batches[0].schema().fields(), announced.fields());

    // A `SET` takes effect when it is planned (GetFlightInfo), whether or not its empty
    // result is ever fetched, as ADBC's `execute` may not; fetched, it reads no rows.
    let mut again = client(&server).await;
    again.handshake("alice", TRACER_PASSWORD).await.unwrap();
    let refused = again
        .execute(format!("SET proxima.purpose = 'case:{}'", uuid::Uuid::now_v7()), None)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("there is no such case"), "{refused}");
    let set = again
        .execute(format!("SET proxima.purpose = 'case:{}'", fixture.case_id), None)
        .await
        .unwrap();
    assert_eq!(
        single_i64(&query(&mut again, "SELECT count(*) FROM observations").await),
        involving
    );
    let fetched = fetch(&mut again, set).await;
    assert_eq!(fetched.iter().map(|b| b.num_rows()).sum::<usize>(), 0);

    // Malformed SQL: a clear error, and the server serves the next query.
    let bad = alice.execute("SELEC 1".into(), None).await.unwrap_err();
    assert!(bad.to_string().contains("SELEC"), "{bad}");
    let missing = alice
        .execute("SELECT * FROM no_such_table".into(), None)
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("no_such_table"), "{missing}");
    assert_eq!(single_i64(&query(&mut alice, "SELECT 41 + 1").await), 42);

    // Prepared statement with $1 bound, two parameter rows.
    let mut prepared = alice
        .prepare(
            "SELECT count(*) AS n FROM observations WHERE duration_s >= $1".into(),
            None,
        )
        .await
        .unwrap();
    let parameters = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![0, 1_000_000_000]))],
    )
    .unwrap();
    prepared.set_parameters(parameters).unwrap();
    let info = prepared.execute().await.unwrap();
    let batches = fetch(&mut alice, info).await;
    let counts: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(counts, vec![count, 0]);
    prepared.close().await.unwrap();

    // Bound parameters are checked before arrow-ipc decodes them: a batch whose body is cut
    // short (its buffers past the end, on which arrow-ipc panics) and parameters past 16 MiB
    // are refused with a status, and the login goes on.
    let handle = prepare_raw(&mut alice, "SELECT $1").await;
    let parameters = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![7; 64]))],
    )
    .unwrap();
    let mut damaged = bound(&handle, &parameters);
    let body = &mut damaged.last_mut().unwrap().data_body;
    *body = body.slice(..body.len() / 2);
    let refused = put_parameters(&mut alice, damaged).await.unwrap_err();
    assert!(
        refused.contains("InvalidArgument") && refused.contains("follow"),
        "{refused}"
    );
    let huge = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new("$1", DataType::Int64, false)])),
        vec![Arc::new(Int64Array::from(vec![7; 3 << 20]))],
    )
    .unwrap();
    let refused = put_parameters(&mut alice, bound(&handle, &huge)).await.unwrap_err();
    assert!(
        refused.contains("ResourceExhausted") && refused.contains("16 MiB"),
        "{refused}"
    );
    put_parameters(&mut alice, bound(&handle, &parameters)).await.unwrap();
    assert_eq!(single_i64(&query(&mut alice, "SELECT 40 + 2").await), 42);

    // A known Flight SQL message whose bytes are damaged (found by fuzzing: a
    // `CommandStatementQuery` whose query is cut short) is the client's mistake wherever it
    // comes, as a ticket, a command, a DoPut descriptor or an action body; arrow-flight's
    // dispatch alone answered Internal.
    let damaged = include_bytes!("../fuzz/regressions/flight_commands-damaged-statement-query.bin");
    damaged_messages_are_refused_as_invalid(&alice, damaged).await;
    assert_eq!(single_i64(&query(&mut alice, "SELECT 40 + 2").await), 42);

    // Prepare without parameters (what JDBC and ADBC do for plain queries).
    let mut plain = alice.prepare("SELECT count(*) FROM cases".into(), None).await.unwrap();
    let info = plain.execute().await.unwrap();
    assert_eq!(single_i64(&fetch(&mut alice, info).await), 1, "the purpose's case only");
    plain.close().await.unwrap();

    // SET lasts for the session; trace_contacts answers.
    alice
        .execute_update("SET proxima.trace.lookback = '72 hours'".into(), None)
        .await
        .unwrap();
    let settings = query(
        &mut alice,
        "SELECT value FROM information_schema.df_settings WHERE name = 'proxima.trace.lookback'",
    )
    .await;
    assert_eq!(settings[0].column(0).as_string::<i32>().value(0), "72 hours");
    // No login lifts its own limits, moves the server's spill folder or catalog, or asks
    // for an unbounded trace window.
    for (sql, why) in [
        (
            "RESET datafusion.runtime.memory_limit",
            "server settings are not changed",
        ),
        (
            "SET datafusion.runtime.temp_directory = '/tmp'",
            "server settings are not changed",
        ),
        (
            "SET datafusion.catalog.location = 'bad://x'",
            "server settings are not changed",
        ),
        (
            "SET proxima.trace.lookback = '100000000 weeks'",
            "between 1 second and 60 days",
        ),
        (
            "SET proxima.trace.lookback = '30 days'",
            "longer than the 504 hours of data kept",
        ),
    ] {
        let refused = alice.execute_update(sql.into(), None).await.unwrap_err();
        assert!(refused.to_string().contains(why), "{sql}: {refused}");
    }
    let traced = query(
        &mut alice,
        &format!("SELECT count(*) FROM trace_contacts('{device}', now()) WHERE contact_order = 1"),
    )
    .await;
    assert!(single_i64(&traced) > 0, "the case's device has contacts");
    let other = local_csv(
        fixture,
        &format!("SELECT device_uuid FROM devices WHERE device_uuid <> '{device}' LIMIT 1"),
    );
    let refused = failing_query(
        &mut alice,
        &format!("SELECT * FROM trace_contacts('{}', now())", other[0]),
    )
    .await;
    assert!(
        refused.to_string().contains(&format!("is about device {device}")),
        "{refused}"
    );
    // Nor the case's device at an earlier time: other periods are outside the case.
    let refused = failing_query(
        &mut alice,
        &format!("SELECT * FROM trace_contacts('{device}', now() - INTERVAL '7 days')"),
    )
    .await;
    assert!(
        refused.to_string().contains("trace it at that time or later"),
        "{refused}"
    );

    // Metadata.
    let info = alice.get_catalogs().await.unwrap();
    let catalogs = fetch(&mut alice, info).await;
    assert_eq!(catalogs[0].column(0).as_string::<i32>().value(0), "proxima");
    let info = alice
        .get_db_schemas(CommandGetDbSchemas {
            catalog: Some("proxima".into()),
            db_schema_filter_pattern: None,
        })
        .await
        .unwrap();
    let schemas = fetch(&mut alice, info).await;
    let names: Vec<&str> = schemas[0].column(1).as_string::<i32>().iter().flatten().collect();
    assert!(names.contains(&"public"), "{names:?}");
    let info = alice
        .get_tables(CommandGetTables {
            catalog: Some("proxima".into()),
            db_schema_filter_pattern: Some("public".into()),
            table_name_filter_pattern: Some("observa%".into()),
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let tables = fetch(&mut alice, info).await;
    assert_eq!(tables[0].num_rows(), 1);
    assert_eq!(tables[0].column(2).as_string::<i32>().value(0), "observations");
    let info = alice.get_sql_info(vec![]).await.unwrap();
    assert!(!fetch(&mut alice, info).await.is_empty());
    let info = alice.get_xdbc_type_info(Default::default()).await.unwrap();
    assert!(fetch(&mut alice, info).await[0].num_rows() >= 5);

    // Nobody writes server files or reads them as tables over the network, admins included.
    let export = fixture.dir.path().join("export.csv");
    let copy = format!("COPY (SELECT 1 AS x) TO '{}' STORED AS CSV", export.display());
    let external = format!(
        "CREATE EXTERNAL TABLE users_file STORED AS CSV LOCATION '{}'",
        fixture.users().display()
    );
    let mut root = client(&server).await;
    root.handshake("root", ADMIN_PASSWORD).await.unwrap();
    for (client, role) in [(&mut alice, "tracer"), (&mut root, "admin")] {
        let denied = client.execute_update(copy.clone(), None).await.unwrap_err();
        let expected = format!("COPY writes server files and is not run over the network (role {role})");
        assert!(denied.to_string().contains(&expected), "{denied}");
        let denied = client.execute_update(external.clone(), None).await.unwrap_err();
        assert!(
            denied.to_string().contains("only CREATE VIEW and DROP VIEW"),
            "{denied}"
        );
    }
    assert!(!export.exists());
    // A view lasts for the login, and DDL through the query path runs once (GetFlightInfo
    // only plans).
    query(&mut alice, "CREATE VIEW recent AS SELECT 7::BIGINT AS x").await;
    assert_eq!(single_i64(&query(&mut alice, "SELECT x FROM recent").await), 7);
    let mut alice_again = client(&server).await;
    alice_again.handshake("alice", TRACER_PASSWORD).await.unwrap();
    let missing = alice_again
        .execute("SELECT x FROM recent".into(), None)
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("recent"), "{missing}");
    // Stations and gateways have no SQL at all.
    let mut station = client(&server).await;
    let denied = station.handshake("stan", STATION_PASSWORD).await.unwrap_err();
    assert!(
        denied.to_string().contains("role station has no SQL access"),
        "{denied}"
    );

    // The auditor reads the audit table over SQL, and nothing else: data tables and
    // functions fail exactly as names that do not exist.
    let mut audrey = client(&server).await;
    audrey.handshake("audrey", AUDITOR_PASSWORD).await.unwrap();
    let refused = query(
        &mut audrey,
        "SELECT principal, rule FROM audit WHERE action = 'flight:Handshake' AND decision = 'deny' ORDER BY seq",
    )
    .await;
    let refused: Vec<(String, String)> = refused
        .iter()
        .flat_map(|b| {
            (0..b.num_rows())
                .map(|i| (text(b, 0, i), text(b, 1, i)))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        refused,
        [
            ("alice", "password"),
            ("mallory", "password"),
            ("stan", "role without SQL")
        ]
        .map(|(p, r)| (p.to_string(), r.to_string()))
    );
    let within_a_minute = query(
        &mut audrey,
        "SELECT count(*) FROM audit WHERE time > now() - INTERVAL '10 minutes' AND phase = 'intent'",
    )
    .await;
    assert!(single_i64(&within_a_minute) > 10, "times are typed timestamps");
    for (hidden, absent) in [
        ("SELECT * FROM observations", "SELECT * FROM observationz"),
        ("SELECT * FROM devices", "SELECT * FROM devicez"),
        ("SELECT * FROM encounters", "SELECT * FROM encounterz"),
        (
            "SELECT * FROM trace_contacts('x', now())",
            "SELECT * FROM trace_contactz('x', now())",
        ),
    ] {
        let hidden_error = audrey.execute(hidden.into(), None).await.unwrap_err().to_string();
        let absent_error = audrey.execute(absent.into(), None).await.unwrap_err().to_string();
        let (name, twin) = (
            hidden.split_whitespace().nth(3).unwrap(),
            absent.split_whitespace().nth(3).unwrap(),
        );
        let stem = |s: &str| s.split('(').next().unwrap().to_string();
        assert_eq!(
            hidden_error.replace(&stem(name), "NAME"),
            absent_error.replace(&stem(twin), "NAME"),
            "{hidden}"
        );
    }
    assert_eq!(listed_tables(&mut audrey).await, ["audit"]);

    // A forged token is refused.
    let mut forged = client(&server).await;
    forged.set_token("0".repeat(64));
    let refused = forged.execute("SELECT 1".into(), None).await.unwrap_err();
    assert!(refused.to_string().contains("unknown token"), "{refused}");

    // Every access above is in the audit log, which verifies once the server has stopped.
    drop((alice, alice_again, root, anonymous, forged, station, audrey));
    let audit_dir = server.audit_dir.clone();
    server.stop();
    let verified = Command::new(BIN)
        .args(["audit", "verify", "--key", &fixture.audit_public_key, "--dir"])
        .arg(&audit_dir)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(report.contains("ok: every record"), "{report}");
    assert!(
        !report.contains("not yet covered") && !report.contains("no outcome"),
        "{report}"
    );
    let records = common::audit_records(&audit_dir);
    let find =
        |what: &dyn Fn(&serde_json::Value) -> bool| records.iter().filter(|r| what(r)).cloned().collect::<Vec<_>>();
    // Logins: the refused ones (a wrong password, an unknown user, a station), every allowed one.
    for user in ["alice", "mallory", "stan"] {
        let refused = find(&|r| r["action"] == "flight:Handshake" && r["principal"] == user && r["decision"] == "deny");
        assert_eq!(refused.len(), 1, "{user}: {refused:?}");
    }
    for (user, role, logins) in [("alice", "tracer", 3), ("root", "admin", 1), ("audrey", "auditor", 1)] {
        let allowed =
            find(&|r| r["action"] == "flight:Handshake" && r["principal"] == user && r["decision"] == "allow");
        assert_eq!(allowed.len(), logins, "{user}");
        assert_eq!(allowed[0]["role"], role);
        assert!(allowed[0]["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    // The prepared statement, with both parameter rows, the table it read, and its outcome.
    let intent = find(&|r| r["phase"] == "intent" && r["sql"].as_str().is_some_and(|s| s.contains("duration_s >= $1")));
    assert_eq!(intent.len(), 1, "{intent:?}");
    assert_eq!(
        intent[0]["purpose"],
        format!("case:{}", fixture.case_id),
        "the record names the case"
    );
    assert_eq!(intent[0]["params"], serde_json::json!([["0"], ["1000000000"]]));
    assert_eq!(intent[0]["objects"], serde_json::json!(["observations"]));
    assert_eq!(intent[0]["principal"], "alice");
    let done = find(&|r| r["phase"] == "done" && r["intent"] == intent[0]["seq"]);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["rows"], 2, "one count per parameter row");
    assert!(done[0]["bytes"].as_u64().unwrap() > 0);
    assert!(
        done[0]["seq"].as_u64() > intent[0]["seq"].as_u64(),
        "the outcome comes after the intent"
    );
    // The thousands of streamed rows are counted in their outcome.
    let streamed = find(&|r| r["phase"] == "intent" && r["sql"] == "SELECT observer, observed_at FROM observations");
    let done = find(&|r| r["phase"] == "done" && r["intent"] == streamed[0]["seq"]);
    assert_eq!(done[0]["rows"], count);
    // Refusals: both COPYs and external tables, malformed SQL, a forbidden setting.
    let copies = find(&|r| r["sql"].as_str().is_some_and(|s| s.starts_with("COPY")));
    assert_eq!(copies.len(), 2, "{copies:?}");
    for copy in &copies {
        assert_eq!(
            (&copy["phase"], &copy["decision"]),
            (&"decision".into(), &"deny".into())
        );
        assert!(
            copy["error"].as_str().unwrap().contains("not run over the network"),
            "{copy:?}"
        );
    }
    let external = find(&|r| r["sql"].as_str().is_some_and(|s| s.starts_with("CREATE EXTERNAL")));
    assert_eq!(external.len(), 2, "{external:?}");
    assert!(external.iter().all(|r| r["decision"] == "deny"));
    assert_eq!(find(&|r| r["sql"] == "SELEC 1" && r["decision"] == "deny").len(), 1);
    let reset = find(&|r| r["sql"] == "RESET datafusion.runtime.memory_limit");
    assert_eq!(reset.len(), 1, "{reset:?}");
    assert_eq!(reset[0]["decision"], "deny");
    // Planning a statement for its schema (GetFlightInfo) reveals what exists: recorded too,
    // before the run's intent.
    let phases: Vec<String> = find(&|r| r["sql"] == "SELECT 41 + 1")
        .iter()
        .map(|r| r["phase"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(phases, ["decision", "intent"]);
    // Metadata calls are accesses too.
    let listings = find(&|r| r["action"] == "flight:GetTables" && r["phase"] == "intent");
    let listed_by: Vec<&str> = listings.iter().map(|r| r["principal"].as_str().unwrap()).collect();
    assert_eq!(listed_by, ["alice", "audrey"]);
    // No secret ever reaches the log.
    let text: String = records.iter().map(|r| r.to_string()).collect();
    for secret in [
        TRACER_PASSWORD,
        ANALYST_PASSWORD,
        ADMIN_PASSWORD,
        STATION_PASSWORD,
        AUDITOR_PASSWORD,
        "not her password",
    ] {
        assert!(!text.contains(secret), "{secret} is in the audit log");
    }
}

#[tokio::test]
async fn sql_connect_runs_a_job_as_a_user_through_the_server() {
    let fixture = fixture();
    let server = Server::start(fixture, &[]);
    let job = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/jobs/daily_contacts_by_location.sql");
    let today = proxima_engine::store::today_utc();
    let (from, to) = (format!("from={}", today - chrono::Days::new(2)), format!("to={today}"));
    let job_args = [
        "sql",
        "-f",
        job.to_str().unwrap(),
        "--param",
        &from,
        "--param",
        &to,
        "--format",
        "csv",
    ];
    let remote = |args: &[&str], user: &str, password: &str| {
        Command::new(BIN)
            .args(args)
            .args(["--connect", &format!("grpc://{}", server.address), "--user", user])
            .env("PROXIMA_PASSWORD", password)
            .current_dir(fixture.dir.path())
            .output()
            .unwrap()
    };
    // The same job, on the files and through the server as ann, an analyst: the same rows.
    let local = Command::new(BIN)
        .args(["--data", fixture.store().to_str().unwrap()])
        .args(job_args)
        .args(["--audit-dir", &local_audit_dir(fixture)])
        .output()
        .unwrap();
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let through = remote(&job_args, "ann", ANALYST_PASSWORD);
    assert!(through.status.success(), "{}", String::from_utf8_lossy(&through.stderr));
    let lines = String::from_utf8_lossy(&local.stdout).lines().count();
    assert!(
        lines > 2,
        "the job finds areas: {}",
        String::from_utf8_lossy(&local.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&through.stdout),
        String::from_utf8_lossy(&local.stdout)
    );
    assert!(
        !fixture.dir.path().join("proxima-data").exists(),
        "--connect opens no local store"
    );

    // SET lasts for the run's login; the last result is printed.
    let set = remote(
        &[
            "sql",
            "-c",
            "SET proxima.trace.lookback = '72 hours'; SELECT value FROM information_schema.df_settings WHERE name = 'proxima.trace.lookback'",
            "--format",
            "json",
        ],
        "alice",
        TRACER_PASSWORD,
    );
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), r#"{"value":"72 hours"}"#);

    // Refusals: a wrong password, a statement the server refuses (named with its place).
    let wrong = remote(&["sql", "-c", "SELECT 1"], "alice", "not her password");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong user name or password"));
    let refused = remote(
        &["sql", "-c", "SELECT 1; RESET datafusion.runtime.memory_limit"],
        "alice",
        TRACER_PASSWORD,
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("statement 2 of 2") && stderr.contains("server settings are not changed"),
        "{stderr}"
    );

    // The tracer job takes a case id; through the server it needs the case as purpose,
    // and then finds what the files hold for that case.
    let trace_job = Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/jobs/trace_case.sql");
    let case_param = format!("case_id={}", fixture.case_id);
    let purpose = format!("case:{}", fixture.case_id);
    let trace_args = [
        "sql",
        "-f",
        trace_job.to_str().unwrap(),
        "--param",
        &case_param,
        "--format",
        "csv",
    ];
    let local = Command::new(BIN)
        .args(["--data", fixture.store().to_str().unwrap()])
        .args(trace_args)
        .args(["--audit-dir", &local_audit_dir(fixture)])
        .output()
        .unwrap();
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    assert!(
        String::from_utf8_lossy(&local.stdout).lines().count() > 1,
        "the case has contacts"
    );
    let without = remote(&trace_args, "alice", TRACER_PASSWORD);
    assert!(!without.status.success());
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("declared purpose"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
    let with: Vec<&str> = trace_args.iter().copied().chain(["--purpose", &purpose]).collect();
    let traced = remote(&with, "alice", TRACER_PASSWORD);
    assert!(traced.status.success(), "{}", String::from_utf8_lossy(&traced.stderr));
    // The same contacts, encounters and durations; the summed risk (floating point, summed
    // in parallel in whatever order) may differ in its last rounded digit.
    let rows = |out: &[u8]| {
        let mut rows: Vec<(String, f64)> = String::from_utf8_lossy(out)
            .lines()
            .map(|line| {
                let (rest, risk) = line.rsplit_once(',').unwrap();
                (rest.to_string(), risk.parse().unwrap_or(f64::NAN))
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    };
    let (through, on_files) = (rows(&traced.stdout), rows(&local.stdout));
    assert_eq!(through.len(), on_files.len());
    for ((a, risk_a), (b, risk_b)) in through.iter().zip(&on_files) {
        assert_eq!(a, b);
        assert!(
            a.starts_with("contact,") || (risk_a - risk_b).abs() < 0.15,
            "{a}: {risk_a} / {risk_b}"
        );
    }
    // Another case than the purpose's is no case at all for this login.
    let other = format!("case_id={}", uuid::Uuid::now_v7());
    let elsewhere: Vec<&str> = [
        "sql",
        "-f",
        trace_job.to_str().unwrap(),
        "--param",
        &other,
        "--purpose",
        &purpose,
    ]
    .to_vec();
    let refused = remote(&elsewhere, "alice", TRACER_PASSWORD);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("trace_case: there is no case"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A SQL prepared statement: its EXECUTE is audited with what the PREPARE reads.
    let prepared = remote(
        &[
            "sql",
            "-c",
            "PREPARE busy(BIGINT) AS SELECT count(*) FROM daily_contacts_by_location WHERE devices > $1; EXECUTE busy(0)",
        ],
        "ann",
        ANALYST_PASSWORD,
    );
    assert!(
        prepared.status.success(),
        "{}",
        String::from_utf8_lossy(&prepared.stderr)
    );

    // The server audited the job under ann's name.
    let audit_dir = server.audit_dir.clone();
    server.stop();
    let records = common::audit_records(&audit_dir);
    let jobs: Vec<_> = records
        .iter()
        .filter(|r| {
            r["phase"] == "intent"
                && r["sql"]
                    .as_str()
                    .is_some_and(|s| s.contains("FROM daily_contacts_by_location") && !s.starts_with("PREPARE"))
        })
        .collect();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["principal"], "ann");
    assert_eq!(jobs[0]["objects"], serde_json::json!(["daily_contacts_by_location"]));
    let executes: Vec<_> = records
        .iter()
        .filter(|r| r["phase"] == "intent" && r["sql"].as_str().is_some_and(|s| s.starts_with("EXECUTE busy")))
        .collect();
    assert_eq!(executes.len(), 1, "{executes:?}");
    assert_eq!(
        executes[0]["objects"],
        serde_json::json!(["daily_contacts_by_location"])
    );
    // …and the trace under alice's, citing the case.
    let traces: Vec<_> = records
        .iter()
        .filter(|r| r["phase"] == "intent" && r["sql"].as_str().is_some_and(|s| s.contains("trace_case(")))
        .collect();
    assert!(traces.iter().all(|r| r["principal"] == "alice"), "{traces:?}");
    assert!(traces.iter().any(|r| r["purpose"] == purpose.as_str()), "{traces:?}");
}

/// A fresh audit folder for one local `proxima sql` run: tests share the fixture and run at
/// once, and an audit log is open to one process at a time.
fn local_audit_dir(fixture: &Fixture) -> String {
    let dir = fixture.dir.path().join(format!("audit-local-{}", uuid::Uuid::new_v4()));
    dir.to_str().unwrap().to_string()
}

/// Runs `sql` on the fixture's files with the local CLI (a full session) and returns the
/// CSV lines after the header.
fn local_csv(fixture: &Fixture, sql: &str) -> Vec<String> {
    let out = Command::new(BIN)
        .args(["--data", fixture.store().to_str().unwrap()])
        .args(["sql", "--format", "csv", "-c", sql])
        .args(["--audit-dir", &local_audit_dir(fixture)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// The names `GetTables` shows a login, without `information_schema`'s.
async fn listed_tables(client: &mut FlightSqlServiceClient<Channel>) -> Vec<String> {
    let info = client
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: None,
            table_name_filter_pattern: None,
            table_types: vec![],
            include_schema: false,
        })
        .await
        .unwrap();
    let mut names: Vec<String> = fetch(client, info)
        .await
        .iter()
        .flat_map(|b| {
            (0..b.num_rows())
                .map(|i| (text(b, 1, i), text(b, 2, i)))
                .collect::<Vec<_>>()
        })
        .filter(|(schema, _)| schema != "information_schema")
        .map(|(_, name)| name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn analysts_see_aggregates_only_and_never_a_small_cell() {
    let fixture = fixture();
    // The threshold: the median cell of the files, so that cells fall on both sides.
    let sizes: Vec<i64> = local_csv(
        fixture,
        "SELECT count(DISTINCT a) AS n FROM encounters WHERE location IS NOT NULL \
         GROUP BY day, substr(location, 1, 4) ORDER BY n",
    )
    .iter()
    .map(|n| n.parse().unwrap())
    .collect();
    let min_cell = sizes[sizes.len() / 2];
    let server = Server::start(fixture, &["--min-cell", &min_cell.to_string()]);
    let mut ann = client(&server).await;
    ann.handshake("ann", ANALYST_PASSWORD).await.unwrap();
    assert_eq!(
        listed_tables(&mut ann).await,
        [
            "case_rollup",
            "contact_rollup",
            "daily_cell_rates",
            "daily_contacts_by_location"
        ]
    );

    // Raw tables and tracing functions fail exactly as names that do not exist.
    for (hidden, absent) in [
        ("SELECT * FROM observations", "SELECT * FROM observationz"),
        ("SELECT * FROM devices", "SELECT * FROM devicez"),
        ("SELECT * FROM encounters", "SELECT * FROM encounterz"),
        ("SELECT * FROM cases", "SELECT * FROM casez"),
        ("SELECT * FROM contact_partials", "SELECT * FROM contact_partialz"),
        ("SELECT * FROM case_partials", "SELECT * FROM case_partialz"),
        ("SELECT hll_count(NULL)", "SELECT hll_counz(NULL)"),
        (
            "SELECT * FROM trace_contacts('x', now())",
            "SELECT * FROM trace_contactz('x', now())",
        ),
        ("SELECT * FROM en_rpis('00', 1)", "SELECT * FROM en_rpiz('00', 1)"),
        (
            "SELECT * FROM daily_contacts_by_location WHERE area IN (SELECT location FROM observations)",
            "SELECT * FROM daily_contacts_by_location WHERE area IN (SELECT location FROM observationz)",
        ),
    ] {
        let hidden_error = ann.execute(hidden.into(), None).await.unwrap_err().to_string();
        let absent_error = ann.execute(absent.into(), None).await.unwrap_err().to_string();
        let normalise = |e: &str| {
            e.replace("observationz", "observations")
                .replace("devicez", "devices")
                .replace("encounterz", "encounters")
                .replace("casez", "cases")
                .replace("contact_partialz", "contact_partials")
                .replace("case_partialz", "case_partials")
                .replace("hll_counz", "hll_count")
                .replace("trace_contactz", "trace_contacts")
                .replace("en_rpiz", "en_rpis")
        };
        assert_eq!(normalise(&hidden_error), normalise(&absent_error), "{hidden}");
    }

    // The aggregate: every cell the files hold with at least min_cell devices, no other.
    let cells = |min: i64, max: i64| {
        local_csv(
            fixture,
            &format!(
                "SELECT count(*) FROM (SELECT day, substr(location, 1, 4) AS area, count(DISTINCT a) AS n \
                 FROM encounters WHERE location IS NOT NULL GROUP BY day, substr(location, 1, 4)) \
                 WHERE n >= {min} AND n < {max}"
            ),
        )[0]
        .parse::<i64>()
        .unwrap()
    };
    let (shown, small) = (cells(min_cell, i64::MAX), cells(1, min_cell));
    assert!(
        shown > 0 && small > 0,
        "the fixture has cells on both sides: {shown} {small}"
    );
    let view = query(
        &mut ann,
        "SELECT count(*), min(devices) FROM daily_contacts_by_location",
    )
    .await;
    assert_eq!(view[0].column(0).as_primitive::<Int64Type>().value(0), shown);
    assert!(view[0].column(1).as_primitive::<Int64Type>().value(0) >= min_cell);
    // Grouping over the view sums shown cells only: no total reaches a suppressed one.
    let totals = query(
        &mut ann,
        &format!(
            "SELECT area, sum(devices) AS devices FROM daily_contacts_by_location GROUP BY area \
             HAVING sum(devices) < {min_cell}"
        ),
    )
    .await;
    assert_eq!(totals.iter().map(|b| b.num_rows()).sum::<usize>(), 0);

    // The contact rollup, per hour and cell: those of at least min_cell devices (the
    // same sketch's count), computed here from the raw rows, and no other.
    let hours = |min: i64, max: i64| {
        local_csv(
            fixture,
            &format!(
                "SELECT count(*) FROM (SELECT hll_count(hll_sketch(a)) AS n FROM encounters \
                 WHERE location IS NOT NULL GROUP BY date_trunc('hour', at), substr(location, 1, 4)) \
                 WHERE n >= {min} AND n < {max}"
            ),
        )[0]
        .parse::<i64>()
        .unwrap()
    };
    let (shown, small) = (hours(min_cell, i64::MAX), hours(1, min_cell));
    assert!(small > 0, "the fixture has small hours and cells");
    let rollup = query(&mut ann, "SELECT count(*), min(devices) FROM contact_rollup").await;
    assert_eq!(rollup[0].column(0).as_primitive::<Int64Type>().value(0), shown);
    if shown > 0 {
        assert!(rollup[0].column(1).as_primitive::<Int64Type>().value(0) >= min_cell);
    }

    // Admins run the platform and read no data.
    let mut root = client(&server).await;
    root.handshake("root", ADMIN_PASSWORD).await.unwrap();
    assert!(listed_tables(&mut root).await.is_empty());
    let hidden = root
        .execute("SELECT count(*) FROM devices".into(), None)
        .await
        .unwrap_err();
    assert!(hidden.to_string().contains("not found"), "{hidden}");
}

#[tokio::test]
async fn query_timeout_stops_a_long_query() {
    let fixture = fixture();
    let server = Server::start(fixture, &["--query-timeout", "1s"]);
    let mut alice = client(&server).await;
    alice.handshake("alice", TRACER_PASSWORD).await.unwrap();
    // A cross join of observations with itself runs far longer than a second.
    let error = failing_query(&mut alice, LONG_QUERY).await;
    assert!(error.to_string().contains("query timeout"), "{error}");
    assert_eq!(
        single_i64(&query(&mut alice, "SELECT 1::BIGINT").await),
        1,
        "the server still serves"
    );

    // The memory limit of a session: a query that needs more fails, the server serves on.
    let small = Server::start(fixture, &["--session-memory", "1MiB"]);
    let mut bob = client(&small).await;
    bob.handshake("alice", TRACER_PASSWORD).await.unwrap();
    // A hash join keeps its build side in memory: 2 million rows are far over 1 MiB.
    let join = "SELECT count(*) FROM generate_series(1, 2000000) a JOIN generate_series(1, 2000000) b USING (value)";
    let error = failing_query(&mut bob, join).await;
    assert!(error.to_string().contains("esources exhausted"), "{error}");
    assert_eq!(single_i64(&query(&mut bob, "SELECT 2::BIGINT").await), 2);

    // Tokens expire.
    let brief = Server::start(fixture, &["--token-ttl", "1s"]);
    let mut carol = client(&brief).await;
    carol.handshake("alice", TRACER_PASSWORD).await.unwrap();
    assert_eq!(single_i64(&query(&mut carol, "SELECT 3::BIGINT").await), 3);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let expired = carol.execute("SELECT 1".into(), None).await.unwrap_err();
    assert!(expired.to_string().contains("expired"), "{expired}");
}

#[tokio::test]
async fn without_users_file_loopback_only_with_a_generated_password() {
    let fixture = fixture();
    // Any address but loopback is refused.
    let refused = Command::new(BIN)
        .args(["--data", fixture.store().to_str().unwrap()])
        .args(["serve", "--flight", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0 without --users"),
        "{stderr}"
    );

    // On loopback it prints a generated password per role, which work; SIGTERM stops it
    // cleanly; and it starts again on the same store, signing the same audit log with the
    // development key it keeps beside the store.
    let mut public_key = None;
    for run in 0..2 {
        let mut child = Command::new(BIN)
            .args(["--data", fixture.store().to_str().unwrap()])
            .args(["serve", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        for _ in 0..10 {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            lines.push(line.trim_end().to_string());
        }
        assert!(lines[0].starts_with("REST listening on http://"), "{lines:?}");
        assert!(lines[1].starts_with("operations on http://127.0.0.1:"), "{lines:?}");
        let lines = [&lines[..1], &lines[2..]].concat();
        let address = lines[1].split("://").nth(1).unwrap().split_whitespace().next().unwrap();
        let passwords: Vec<(&str, &str)> = lines[2..8]
            .iter()
            .map(|line| {
                let rest = line.strip_prefix("user ").unwrap_or_else(|| panic!("{line}"));
                let (name, rest) = rest.split_once(", password ").unwrap();
                (name, rest.split_whitespace().next().unwrap())
            })
            .collect();
        let names: Vec<&str> = passwords.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["tracer", "analyst", "auditor", "admin", "station", "ingest"]);
        let key = lines[8]
            .split("(public key ")
            .nth(1)
            .and_then(|k| k.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{}", lines[8]))
            .to_string();
        assert!(
            lines[8].contains("store.audit-key"),
            "the key is kept beside the store: {}",
            lines[8]
        );
        assert_eq!(public_key.get_or_insert(key.clone()), &key, "the same key on every run");
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut tracer = FlightSqlServiceClient::new(channel);
        tracer.handshake("tracer", passwords[0].1).await.unwrap();
        let refused = failing_query(&mut tracer, "SELECT count(*) FROM observations").await;
        assert!(refused.to_string().contains("declared purpose"), "{refused}");
        let mut analyst = FlightSqlServiceClient::new(
            Endpoint::from_shared(format!("http://{address}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
        analyst.handshake("analyst", passwords[1].1).await.unwrap();
        let cells = query(&mut analyst, "SELECT count(*) FROM daily_contacts_by_location").await;
        assert!(single_i64(&cells) > 0);
        assert!(
            tracer.handshake("admin", "admin").await.is_err(),
            "no well-known password"
        );

        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = child.wait().unwrap();
        assert!(status.success(), "SIGTERM is a clean stop (run {run}): {status}");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        assert!(rest.contains("Proxima stopped"), "{rest}");
    }
    let verified = Command::new(BIN)
        .args(["--data", fixture.store().to_str().unwrap()])
        .args(["audit", "verify", "--key", public_key.as_deref().unwrap()])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{report}");
    assert!(
        !report.contains("not yet covered"),
        "both runs signed their records: {report}"
    );
}

#[tokio::test]
async fn cancel_query_stops_a_running_query() {
    use arrow_flight::sql::{ActionCancelQueryRequest, ProstMessageExt};
    use prost::Message;

    let fixture = fixture();
    let server = Server::start(fixture, &[]);
    let mut alice = client(&server).await;
    alice.handshake("alice", TRACER_PASSWORD).await.unwrap();
    let info = alice.execute(LONG_QUERY.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut reader = alice.clone();
    let running = tokio::spawn(async move {
        let stream = reader.do_get(ticket).await?;
        stream.try_collect::<Vec<_>>().await
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let action = arrow_flight::Action::new(
        "CancelQuery",
        ActionCancelQueryRequest {
            info: info.encode_to_vec().into(),
        }
        .as_any()
        .encode_to_vec(),
    );
    let results: Vec<_> = alice.do_action(action).await.unwrap().try_collect().await.unwrap();
    assert_eq!(results.len(), 1);
    let error = running.await.unwrap().unwrap_err();
    assert!(error.to_string().contains("query cancelled"), "{error}");

    // Tickets are opaque and name one run: the same statement planned twice gets two
    // tickets, neither holding its text; cancelling one leaves the other running.
    let first = alice.execute(LONG_QUERY.into(), None).await.unwrap();
    let second = alice.execute(LONG_QUERY.into(), None).await.unwrap();
    let (first_ticket, second_ticket) = (
        first.endpoint[0].ticket.clone().unwrap(),
        second.endpoint[0].ticket.clone().unwrap(),
    );
    assert_ne!(first_ticket, second_ticket);
    let sql_bytes = LONG_QUERY.as_bytes();
    assert!(
        !first_ticket.ticket.windows(sql_bytes.len()).any(|w| w == sql_bytes),
        "the ticket carries no SQL"
    );
    // Another login cannot redeem them.
    let mut ann = client(&server).await;
    ann.handshake("ann", ANALYST_PASSWORD).await.unwrap();
    let foreign = match ann.do_get(first_ticket.clone()).await {
        Ok(stream) => stream.try_collect::<Vec<_>>().await.unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(foreign.contains("unknown statement ticket"), "{foreign}");
    let start = |ticket: arrow_flight::Ticket| {
        let mut reader = alice.clone();
        tokio::spawn(async move {
            let stream = reader.do_get(ticket).await?;
            stream.try_collect::<Vec<_>>().await
        })
    };
    let (first_run, second_run) = (start(first_ticket), start(second_ticket));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let cancel = |info: &FlightInfo| {
        arrow_flight::Action::new(
            "CancelQuery",
            ActionCancelQueryRequest {
                info: info.encode_to_vec().into(),
            }
            .as_any()
            .encode_to_vec(),
        )
    };
    // Each run registers once planned and its audit intent synced: asked until it has.
    let cancel_until_found = async |alice: &mut FlightSqlServiceClient<Channel>, info: &FlightInfo| {
        for _ in 0..100 {
            match alice.do_action(cancel(info)).await {
                Ok(stream) => return stream.try_collect::<Vec<_>>().await.unwrap(),
                Err(e) if e.to_string().contains("no running query") => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the query never started");
    };
    cancel_until_found(&mut alice, &first).await;
    let error = first_run.await.unwrap().unwrap_err();
    assert!(error.to_string().contains("query cancelled"), "{error}");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!second_run.is_finished(), "the identical statement still runs");
    cancel_until_found(&mut alice, &second).await;
    assert!(second_run.await.unwrap().is_err());
    assert_eq!(
        single_i64(&query(&mut alice, "SELECT 1::BIGINT").await),
        1,
        "the server still serves"
    );
}

#[tokio::test]
async fn tls_connection() {
    let fixture = fixture();
    let certificates = tempfile::tempdir().unwrap();
    let (cert, key, pem) = common::write_certificate(certificates.path());
    let server = Server::start(
        fixture,
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    let port = server.address.rsplit(':').next().unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pem))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut alice = FlightSqlServiceClient::new(channel);
    alice.handshake("alice", TRACER_PASSWORD).await.unwrap();
    assert_eq!(
        single_i64(&query(&mut alice, "SELECT count(*) FROM generate_series(1, 2000)").await),
        2000
    );

    // Plain text to a TLS server fails.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let mut client = FlightSqlServiceClient::new(channel);
        assert!(client.handshake("alice", TRACER_PASSWORD).await.is_err());
    }
}

/// The Python interpreter of the project's .venv, or of $PROXIMA_PYTHON, if it has ADBC.
fn python_with_adbc() -> Option<PathBuf> {
    common::python_with(&["adbc_driver_flightsql", "pyarrow"])
}

#[tokio::test]
async fn adbc_python_client() {
    let Some(python) = python_with_adbc() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install adbc-driver-flightsql into .venv (see .ci/run)"
        );
        eprintln!("skipped: no Python with adbc-driver-flightsql (run .ci/run, or set PROXIMA_PYTHON)");
        return;
    };
    let fixture = fixture();
    let certificates = tempfile::tempdir().unwrap();
    let (cert, key, pem) = common::write_certificate(certificates.path());
    let plain = Server::start(fixture, &[]);
    let tls = Server::start(
        fixture,
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    let tls_port = tls.address.rsplit(':').next().unwrap().to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flight/adbc_client.py");
    let output = Command::new(python)
        .arg(script)
        .env("PROXIMA_URI", format!("grpc://{}", plain.address))
        .env("PROXIMA_TLS_URI", format!("grpc+tls://localhost:{tls_port}"))
        .env("PROXIMA_TLS_ROOT", pem)
        .env("PROXIMA_USER", "alice")
        .env("PROXIMA_PASSWORD", TRACER_PASSWORD)
        .env("PROXIMA_PURPOSE", format!("case:{}", fixture.case_id))
        .env("PROXIMA_CASE_DEVICE", &fixture.case_device)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ADBC client failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("adbc: all checks passed"), "{stdout}");
}

/// The SQL info values BI tools read, each checked against what the engine does on the same
/// server (not against a copy of the value).
#[tokio::test]
async fn sql_info_says_what_the_engine_does() {
    use arrow_flight::sql::SqlInfo;
    let fixture = fixture();
    let server = Server::start(fixture, &[]);
    let mut alice = client(&server).await;
    alice.handshake("alice", TRACER_PASSWORD).await.unwrap();
    let wanted = [
        SqlInfo::SqlNullOrdering,
        SqlInfo::SqlIdentifierCase,
        SqlInfo::SqlQuotedIdentifierCase,
        SqlInfo::SqlKeywords,
        SqlInfo::FlightSqlServerReadOnly,
    ];
    let info = alice.get_sql_info(wanted.to_vec()).await.unwrap();
    let batches = fetch(&mut alice, info).await;
    let mut values = std::collections::HashMap::new();
    for batch in &batches {
        let names = batch.column(0).as_primitive::<arrow::datatypes::UInt32Type>();
        for row in 0..batch.num_rows() {
            let value = arrow::util::display::array_value_to_string(batch.column(1), row).unwrap();
            values.insert(names.value(row), value);
        }
    }
    let value = |info: SqlInfo| values.get(&(info as u32)).cloned().unwrap_or_default();

    // Nulls: ascending they come last, descending first: "sorted high" (0 in FlightSql.proto).
    let sorted = |order: &str| format!("SELECT x FROM (VALUES (1), (NULL), (2)) AS t(x) ORDER BY x {order}");
    let ascending = query(&mut alice, &sorted("ASC")).await;
    assert!(ascending[0].column(0).is_null(2), "NULL last ascending");
    let descending = query(&mut alice, &sorted("DESC")).await;
    assert!(descending[0].column(0).is_null(0), "NULL first descending");
    assert_eq!(value(SqlInfo::SqlNullOrdering), "{int32_bitmask=0}");

    // Unquoted identifiers fold to lower case (SQL_CASE_SENSITIVITY_LOWERCASE = 3); quoted
    // ones keep theirs.
    let folded = query(&mut alice, r#"SELECT 1 AS MixedCase, 2 AS "Quoted""#).await;
    let schema = folded[0].schema();
    assert_eq!(schema.field(0).name(), "mixedcase");
    assert_eq!(schema.field(1).name(), "Quoted");
    assert_eq!(value(SqlInfo::SqlIdentifierCase), "{int32_bitmask=3}");
    // Quoted ones match exactly, which the proto's enum cannot say: unknown (0).
    assert_eq!(value(SqlInfo::SqlQuotedIdentifierCase), "{int32_bitmask=0}");

    // Keywords: the parser's, so SELECT is one and a word it does not reserve is not.
    let listed = value(SqlInfo::SqlKeywords);
    let keywords: Vec<&str> = listed
        .trim_start_matches("{string_list=[")
        .trim_end_matches("]}")
        .split(", ")
        .collect();
    for keyword in ["SELECT", "WHERE", "VIEW", "RECURSIVE"] {
        assert!(keywords.contains(&keyword), "{listed}");
    }
    assert!(!keywords.contains(&"OBSERVATIONS"), "{listed}");

    // Read only: no statement writes data, whoever sends it.
    assert_eq!(value(SqlInfo::FlightSqlServerReadOnly), "{bool_value=true}");
    let refused = alice
        .execute("INSERT INTO observations SELECT * FROM observations".into(), None)
        .await;
    assert!(refused.is_err(), "an INSERT is refused");
}

/// The operations port counts Flight SQL queries by role and outcome and times every call by
/// RPC and status. The expected counts are what this test does on a server of its own.
#[tokio::test]
async fn the_operations_port_counts_queries_by_role_and_outcome() {
    let fixture = fixture();
    let server = Server::start(fixture, &[]);
    let mut alice = client(&server).await;
    alice.handshake("alice", TRACER_PASSWORD).await.unwrap();
    for _ in 0..3 {
        assert_eq!(single_i64(&query(&mut alice, "SELECT CAST(1 AS BIGINT)").await), 1);
    }
    // A table that does not exist: refused while planning (GetFlightInfo), never run.
    let missing = alice
        .execute("SELECT * FROM no_such_table".into(), None)
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("no_such_table"), "{missing}");
    let mut ann = client(&server).await;
    ann.handshake("ann", ANALYST_PASSWORD).await.unwrap();
    query(&mut ann, "SELECT 2").await;
    // A statement the role may not run.
    let ddl = ann.execute("CREATE TABLE t (x INT)".into(), None).await.unwrap_err();
    assert!(ddl.to_string().contains("only CREATE VIEW and DROP VIEW run"), "{ddl}");
    // A role without SQL: its handshake is refused.
    let mut stan = client(&server).await;
    stan.handshake("stan", STATION_PASSWORD).await.unwrap_err();

    // A query is counted when its stream is dropped, which may come just after the client
    // saw its last row: read until the last one is in (a bound, not a speed target).
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = reqwest::get(format!("http://{}/metrics", server.ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains(r#"proxima_queries_total{role="analyst",outcome="ok"} 1"#)
            && metrics.contains(r#"proxima_queries_total{role="tracer",outcome="ok"} 3"#)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert_eq!(value(r#"proxima_queries_total{role="tracer",outcome="ok"}"#), 3.0);
    assert_eq!(value(r#"proxima_queries_total{role="tracer",outcome="invalid"}"#), 1.0);
    assert_eq!(value(r#"proxima_queries_total{role="analyst",outcome="ok"}"#), 1.0);
    assert_eq!(value(r#"proxima_queries_total{role="analyst",outcome="denied"}"#), 1.0);
    assert_eq!(
        value(r#"proxima_query_duration_seconds_count{role="tracer",outcome="ok"}"#),
        3.0
    );
    // Four statements ran (three of alice's, one of ann's), each a GetFlightInfo and a DoGet.
    assert_eq!(
        value(r#"proxima_flight_request_duration_seconds_count{method="DoGet",code="ok"}"#),
        4.0
    );
    assert_eq!(
        value(r#"proxima_flight_request_duration_seconds_count{method="Handshake",code="ok"}"#),
        2.0
    );
    assert_eq!(
        value(r#"proxima_flight_request_duration_seconds_count{method="Handshake",code="permission_denied"}"#),
        1.0
    );
    assert_eq!(
        value(r#"proxima_flight_request_duration_seconds_count{method="GetFlightInfo",code="invalid_argument"}"#),
        1.0
    );
    assert!(!metrics.contains(r#"role="station""#), "stan never queried:\n{metrics}");
}
