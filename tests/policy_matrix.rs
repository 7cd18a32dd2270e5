//! The access policy as a matrix: role × object × query shape, through the sessions the
//! network services build (`SessionFactory::session_for`) and the checks they make before
//! anything runs (`Principal::check_statement`, `policy::check_plan`), on a real store.
//!
//! A tracer's cells run under a declared purpose (a case of the store); without one, every
//! read of a tracer is refused.
//!
//! An allowed cell must run. A denied cell must fail exactly as the same query over a name
//! that does not exist (the same words once the name is swapped back), leak no row, and the
//! object must not be listed in `information_schema`.

use arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use proxima_engine::{Principal, Role, SessionFactory, SessionOptions, Store};

use crate::common;

/// The objects a role may be given, with a call that uses each.
fn objects(device: &str, case_id: &str) -> Vec<(&'static str, String)> {
    [
        "observations",
        "devices",
        "encounters",
        "cases",
        "alerts",
        "temperature_readings",
        "audit",
        "daily_contacts_by_location",
        "contact_rollup",
        "case_rollup",
        "daily_cell_rates",
        "contact_partials",
        "case_partials",
    ]
    .into_iter()
    .map(|name| (name, name.to_string()))
    .chain([
        ("trace_contacts", format!("trace_contacts('{device}', now())")),
        ("trace_case", format!("trace_case('{case_id}')")),
        (
            "en_rpis",
            "en_rpis('75c734c6dd1a782de7a965da5eb93125', 2642976)".to_string(),
        ),
    ])
    .collect()
}

/// What each role may read (a tracer with a declared purpose: the case's rows).
fn allowed(role: Role, object: &str) -> bool {
    match role {
        Role::Tracer => [
            "observations",
            "encounters",
            "alerts",
            "cases",
            "trace_contacts",
            "trace_case",
            "en_rpis",
        ]
        .contains(&object),
        Role::Analyst => [
            "daily_contacts_by_location",
            "contact_rollup",
            "case_rollup",
            "daily_cell_rates",
        ]
        .contains(&object),
        Role::Auditor => object == "audit",
        _ => false,
    }
}

/// The query shapes, each with `{o}` where the object goes.
const SHAPES: [(&str, &str); 9] = [
    ("plain", "SELECT count(*) FROM {o}"),
    ("join", "SELECT count(*) FROM {o} a CROSS JOIN (SELECT 1 AS one) b"),
    ("subquery", "SELECT 1 AS one WHERE EXISTS (SELECT 1 FROM {o})"),
    ("cte", "WITH t AS (SELECT * FROM {o}) SELECT count(*) FROM t"),
    ("union", "SELECT count(*) FROM {o} UNION ALL SELECT 1"),
    ("explain", "EXPLAIN SELECT * FROM {o}"),
    ("view", "CREATE VIEW v_matrix AS SELECT * FROM {o}"),
    ("prepare", "PREPARE p_matrix AS SELECT * FROM {o}"),
    (
        "prepared with parameters",
        "PREPARE p_params(BIGINT) AS SELECT count(*) FROM {o} WHERE $1 > 0",
    ),
];

/// Runs `sql` as a network service would: plan, check, then run.
async fn run(ctx: &SessionContext, principal: &Principal, sql: &str) -> Result<Vec<RecordBatch>, String> {
    let state = ctx.state();
    let plan = state.create_logical_plan(sql).await.map_err(|e| e.strip_backtrace())?;
    principal.check_statement(&plan)?;
    proxima_engine::policy::check_plan(&state, &plan).map_err(|e| e.strip_backtrace())?;
    let frame = ctx.execute_logical_plan(plan).await.map_err(|e| e.strip_backtrace())?;
    frame.collect().await.map_err(|e| e.strip_backtrace())
}

/// A store of 200 synthetic devices over two days, a factory with an (empty) audit log, a
/// device and a case of it: what the matrix runs on.
async fn matrix_store(dir: &std::path::Path) -> (SessionFactory, String, String) {
    let store = Store::local(&dir.join("store")).unwrap();
    let writer = proxima_storage::PartitionWriter::new(store.clone(), "test");
    let spec = proxima_ingest::synthetic::PopulationSpec {
        broadcast: Default::default(),
        devices: 200,
        days: 2,
        contacts_per_day: 5,
        seed: 3,
        start: proxima_engine::store::today_utc() - chrono::Days::new(1),
    };
    proxima_ingest::synthetic::generate(&writer, &spec, |_| {})
        .await
        .unwrap();
    let audit_dir = dir.join("audit");
    std::fs::create_dir_all(audit_dir.join("log")).unwrap();
    let options = SessionOptions {
        audit_dir: Some(audit_dir),
        ..SessionOptions::default()
    };
    let factory = SessionFactory::new(store, options).unwrap();
    let full = factory.session().await.unwrap();
    let device = full
        .sql("SELECT device_uuid FROM devices ORDER BY device_uuid LIMIT 1")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let device = arrow::array::AsArray::as_string::<i32>(device[0].column(0))
        .value(0)
        .to_string();
    let case_id = common::write_case(factory.store(), &device).await;
    (factory, device, case_id)
}

#[tokio::test]
async fn every_role_reads_what_it_may_and_nothing_else_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let (factory, device, case_id) = matrix_store(dir.path()).await;
    let full = factory.session().await.unwrap();
    let purpose = format!("SET proxima.purpose = 'case:{case_id}'");

    let mut checked = 0;
    for role in [Role::Tracer, Role::Analyst, Role::Auditor, Role::Admin] {
        let principal = Principal {
            name: "matrix".into(),
            role,
            issuer: None,
        };
        for (object, call) in objects(&device, &case_id) {
            let twin_name = format!("{object}_nope");
            let twin_call = call.replacen(object, &twin_name, 1);
            for (shape, template) in SHAPES {
                // A session per cell: views and prepared statements do not carry over.
                let ctx = factory.session_for(&principal).await.unwrap();
                if role == Role::Tracer {
                    ctx.sql(&purpose).await.unwrap();
                }
                let result = run(&ctx, &principal, &template.replace("{o}", &call)).await;
                if allowed(role, object) {
                    assert!(result.is_ok(), "{role} may {shape} {object}: {result:?}");
                } else {
                    let error = result.expect_err(&format!("{role} must not {shape} {object}"));
                    let twin = run(&ctx, &principal, &template.replace("{o}", &twin_call))
                        .await
                        .expect_err("a name that does not exist fails");
                    assert_eq!(
                        error,
                        twin.replace(&twin_name, object),
                        "{role} {shape} {object}: the refusal must read as a missing name"
                    );
                }
                checked += 1;
            }
            // Listed only where allowed.
            let ctx = factory.session_for(&principal).await.unwrap();
            let listed = run(
                &ctx,
                &principal,
                &format!(
                    "SELECT table_name FROM information_schema.tables WHERE table_name = '{object}' \
                     UNION ALL SELECT routine_name FROM information_schema.routines WHERE routine_name = '{object}'"
                ),
            )
            .await
            .unwrap();
            let rows: usize = listed.iter().map(|b| b.num_rows()).sum();
            let table_functions = ["trace_contacts", "trace_case", "en_rpis"];
            if !table_functions.contains(&object) {
                assert_eq!(
                    rows > 0,
                    allowed(role, object),
                    "{role}: {object} in information_schema"
                );
            } else if !allowed(role, object) {
                assert_eq!(rows, 0, "{role}: {object} in information_schema");
            }
        }
    }
    assert_eq!(checked, 4 * 16 * SHAPES.len());

    // A tracer without a purpose reads nothing, though the names exist.
    let tracer = Principal {
        name: "matrix".into(),
        role: Role::Tracer,
        issuer: None,
    };
    for (object, call) in objects(&device, &case_id)
        .into_iter()
        .filter(|(o, _)| allowed(Role::Tracer, o))
    {
        if object == "en_rpis" {
            continue; // computes identifiers from a key it is given: no data
        }
        let ctx = factory.session_for(&tracer).await.unwrap();
        let error = run(&ctx, &tracer, &format!("SELECT count(*) FROM {call}"))
            .await
            .unwrap_err();
        assert!(error.contains("reads only for a declared purpose"), "{object}: {error}");
    }

    // SET of a forbidden key, for every role: refused, whatever the role.
    for role in [Role::Tracer, Role::Analyst, Role::Auditor, Role::Admin] {
        let principal = Principal {
            name: "matrix".into(),
            role,
            issuer: None,
        };
        let ctx = factory.session_for(&principal).await.unwrap();
        let plan = ctx
            .state()
            .create_logical_plan("SET datafusion.runtime.memory_limit = '1T'")
            .await
            .unwrap();
        let current = proxima_udfs::ProximaOptions::default();
        assert!(principal.check_settings(&plan, &current, None).is_err(), "{role}");
    }
    drop(full);
}

/// Rows as sorted text, to compare results that may come in any order.
fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    // No rows is no rows, whether or not an empty batch carried the header.
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Vec::new();
    }
    let text = arrow::util::pretty::pretty_format_batches(batches).unwrap().to_string();
    let mut rows: Vec<String> = text.lines().map(str::to_string).collect();
    rows.sort();
    rows
}

/// The same policy where the plan runs on a Ballista cluster (a scheduler and two
/// executors over the store): the caller's session resolves the policy's relations before
/// the plan leaves, so every allowed cell returns the same rows as locally and every
/// denied one fails with the same words; the audit log, a local folder, is read locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_every_role_reads_the_same_rows_and_is_refused_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (factory, device, case_id) = matrix_store(dir.path()).await;
    let nodes = tempfile::tempdir().unwrap();
    let cluster = common::Cluster::start(dir.path().join("store"), &[], 2, nodes.path()).unwrap();
    let remote = SessionFactory::new(
        factory.store().clone(),
        SessionOptions {
            audit_dir: Some(dir.path().join("audit")),
            remote: Some(std::sync::Arc::new(
                proxima_cluster::client::Ballista::new(&cluster.url).unwrap(),
            )),
            ..SessionOptions::default()
        },
    )
    .unwrap();
    let purpose = format!("SET proxima.purpose = 'case:{case_id}'");
    let data_shapes = &SHAPES[..5];
    let mut compared = 0;
    for role in [Role::Tracer, Role::Analyst, Role::Auditor, Role::Admin] {
        let principal = Principal {
            name: "matrix".into(),
            role,
            issuer: None,
        };
        for (object, call) in objects(&device, &case_id) {
            // Every shape where the role may read; the plain one where it may not.
            let shapes = if allowed(role, object) {
                data_shapes
            } else {
                &SHAPES[..1]
            };
            for (shape, template) in shapes {
                let sql = template.replace("{o}", &call);
                let (here, there) = (
                    factory.session_for(&principal).await.unwrap(),
                    remote.session_for(&principal).await.unwrap(),
                );
                if role == Role::Tracer {
                    here.sql(&purpose).await.unwrap();
                    there.sql(&purpose).await.unwrap();
                }
                let (local, on_cluster) = (run(&here, &principal, &sql).await, run(&there, &principal, &sql).await);
                match (local, on_cluster) {
                    (Ok(local), Ok(on_cluster)) => {
                        assert_eq!(sorted_rows(&on_cluster), sorted_rows(&local), "{role} {shape} {object}");
                    }
                    (Err(local), Err(on_cluster)) => assert_eq!(on_cluster, local, "{role} {shape} {object}"),
                    (local, on_cluster) => {
                        panic!("{role} {shape} {object}: locally {local:?}, on the cluster {on_cluster:?}")
                    }
                }
                compared += 1;
            }
        }
    }
    // The tracer's and analyst's relations ran there: the executors did work.
    let tasks = cluster.finished_tasks();
    assert!(tasks.iter().all(|ran| !ran.is_empty()), "{tasks:?}");
    assert_eq!(compared, 12 * 5 + (4 * 16 - 12));
    // A tracer's scope holds there too: a trace of another device than the case's is refused.
    let tracer = Principal {
        name: "matrix".into(),
        role: Role::Tracer,
        issuer: None,
    };
    let there = remote.session_for(&tracer).await.unwrap();
    there.sql(&purpose).await.unwrap();
    let other = "00000000-0000-4000-8000-000000000999";
    let refused = run(
        &there,
        &tracer,
        &format!("SELECT * FROM trace_contacts('{other}', now())"),
    )
    .await
    .unwrap_err();
    assert!(refused.contains("is about device"), "{refused}");
}

/// What is sent to a cluster keeps the caller's filters above the policy: after the
/// cluster's optimiser, an analyst's filter still runs on the aggregate's rows, not on the
/// observations under it (where it could fail on a suppressed cell's row and say so).
#[tokio::test]
async fn a_plan_sent_to_a_cluster_keeps_the_callers_filters_above_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (factory, _, _) = matrix_store(dir.path()).await;
    let analyst = Principal {
        name: "matrix".into(),
        role: Role::Analyst,
        issuer: None,
    };
    let ctx = factory.session_for(&analyst).await.unwrap();
    let sql = "SELECT * FROM daily_contacts_by_location WHERE area = 'zzzz'";
    let plan = ctx.state().create_logical_plan(sql).await.unwrap();
    let resolved = proxima_engine::remote_plan::resolve(&plan, &ctx.state())
        .await
        .unwrap()
        .expect("the aggregate is replaced");
    // Optimised as the scheduler would (a full session: the same rules).
    let full = factory.session().await.unwrap();
    let optimized = full.state().optimize(&resolved).unwrap();
    let text = optimized.display_indent().to_string();
    let line_of = |needle: &str| {
        text.lines()
            .position(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in\n{text}"))
    };
    let (filter, barrier) = (line_of("zzzz"), line_of("proxima_policy_barrier"));
    assert!(
        filter < barrier,
        "the caller's filter must stay above the barrier:\n{text}"
    );
    assert_eq!(text.matches("zzzz").count(), 1, "and nowhere below it:\n{text}");
}

/// A tracer's filters never run on rows outside the purpose's scope: a filter that fails
/// on one device's rows would otherwise tell, by failing, that the device has rows in the
/// store. The same filter over the scoped rows runs, and counts what the plain query does.
#[tokio::test]
async fn a_tracers_filter_that_would_fail_outside_the_scope_tells_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (factory, _device, case_id) = matrix_store(dir.path()).await;
    let tracer = Principal {
        name: "matrix".into(),
        role: Role::Tracer,
        issuer: None,
    };
    let ctx = factory.session_for(&tracer).await.unwrap();
    ctx.sql(&format!("SET proxima.purpose = 'case:{case_id}'"))
        .await
        .unwrap();
    let column = |batches: Vec<RecordBatch>| -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| {
                let strings = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
                let strings = arrow::array::AsArray::as_string::<i32>(&strings).clone();
                (0..arrow::array::Array::len(&strings)).map(move |i| strings.value(i).to_string())
            })
            .collect()
    };
    let full = factory.session().await.unwrap();
    let count = |sql: String| {
        let ctx = ctx.clone();
        let tracer = tracer.clone();
        async move {
            column(run(&ctx, &tracer, &sql).await?)
                .pop()
                .ok_or_else(|| "no row".to_string())
        }
    };
    for (table, device_column) in [("observations", "observer"), ("encounters", "a")] {
        let distinct = format!("SELECT DISTINCT {device_column} FROM {table} ORDER BY 1");
        let in_scope = column(run(&ctx, &tracer, &distinct).await.unwrap());
        assert!(!in_scope.is_empty(), "{table}: the case's device has rows");
        let everyone = column(full.sql(&distinct).await.unwrap().collect().await.unwrap());
        let outsiders: Vec<&String> = everyone.iter().filter(|o| !in_scope.contains(o)).collect();
        assert!(outsiders.len() > 10, "{table}: most devices are outside the scope");
        let plain = count(format!("SELECT count(*) FROM {table}")).await.unwrap();
        let probe = |device: &str| {
            count(format!(
                "SELECT count(*) FROM {table} WHERE 1 / (CASE WHEN {device_column} = '{device}' THEN 0 ELSE 1 END) = 1"
            ))
        };
        for outsider in outsiders.iter().take(5) {
            assert_eq!(
                probe(outsider).await.as_deref(),
                Ok(plain.as_str()),
                "{table}: outsider {outsider}"
            );
        }
        // Its own rows: the division fails there, as it would for anyone.
        let error = probe(&in_scope[0])
            .await
            .expect_err("a division by zero on a scoped row fails");
        assert!(error.to_lowercase().contains("divide"), "{table}: {error}");
    }
    // That filters which cannot fail (time windows) still go inside is pinned by the unit
    // test of `purpose::cannot_fail`.
}
