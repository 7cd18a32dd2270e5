//! The REST API against its own OpenAPI document: schemathesis (from PyPI, installed by
//! `.ci/run` into `.venv`) reads `/openapi.json` of the real server on loopback and sends
//! every operation valid and invalid requests (examples, boundary values, random data,
//! sequences), as a phone with a registered device and as each staff role on its routes.
//! Every answer must be no server error and conform to the document: a status it lists,
//! its media type, headers and body schema.

use crate::common;

/// The schemathesis command of the project's .venv (or beside $PROXIMA_PYTHON), if any.
fn schemathesis() -> Option<std::path::PathBuf> {
    let beside_python = std::env::var_os("PROXIMA_PYTHON")
        .map(std::path::PathBuf::from)
        .and_then(|python| Some(python.parent()?.join("schemathesis")));
    let in_venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/schemathesis");
    [beside_python, Some(in_venv)]
        .into_iter()
        .flatten()
        .find(|path| path.is_file())
}

/// The checks every response must pass (schemathesis's names).
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,negative_data_rejection";

#[test]
fn every_answer_conforms_to_the_openapi_document() {
    let Some(schemathesis) = schemathesis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install schemathesis into .venv (see .ci/run)"
        );
        eprintln!("skipped: no schemathesis in .venv (run .ci/run, or set PROXIMA_PYTHON beside one)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // Limits far above what the run sends, so that the routes' logic is what answers.
    let mut server = common::Server::start(&[
        "--data",
        store.to_str().unwrap(),
        "serve",
        "--http",
        "127.0.0.1:0",
        "--flight",
        "127.0.0.1:0",
        "--accept-mac",
        "--registration-work",
        "0",
        "--device-rate",
        "1000000",
        "--registration-rate",
        "1000000",
        "--login-rate",
        "1000000",
        "--login-user-rate",
        "1000000",
    ]);
    let passwords: Vec<(&str, String)> = ["tracer", "admin", "station", "ingest"]
        .into_iter()
        .map(|role| (role, server.password(role)))
        .collect();
    server.drain();
    let phone_state = dir.path().join("phone.json");
    common::phone_ok(&phone_state, &server.api, &["register"]);
    let phone: serde_json::Value = serde_json::from_slice(&std::fs::read(&phone_state).unwrap()).unwrap();
    let token = phone["upload_token"].as_str().unwrap();
    let schema = format!("{}/openapi.json", server.api);

    // Who calls which operations: a phone (and anyone) everywhere but the staff routes,
    // then each staff role on its own.
    let staff_routes = "^/v1/(cases|temperature|observations:bulk|auth/token|devices/\\{uuid\\}/revocation)$";
    let runs: Vec<(String, Vec<String>)> = {
        let mut runs = vec![(
            "a phone".to_string(),
            vec![
                "-H".to_string(),
                format!("Authorization: Bearer {token}"),
                "--exclude-path-regex".to_string(),
                staff_routes.to_string(),
            ],
        )];
        for (role, path) in [
            ("tracer", "^/v1/(cases|auth/token)$"),
            ("station", "^/v1/temperature$"),
            ("ingest", "^/v1/observations:bulk$"),
            ("admin", "^/v1/devices/\\{uuid\\}/revocation$"),
        ] {
            let password = &passwords.iter().find(|(r, _)| *r == role).unwrap().1;
            runs.push((
                role.to_string(),
                vec![
                    "-a".to_string(),
                    format!("{role}:{password}"),
                    "--include-path-regex".to_string(),
                    path.to_string(),
                ],
            ));
        }
        runs
    };
    let mut failures = Vec::new();
    for (who, args) in runs {
        let output = std::process::Command::new(&schemathesis)
            // At most 25 cases an operation and phase, and 10 s a run (CI's 45 minutes): a slow machine runs
            // fewer; the seed keeps the cases it runs the same.
            .args([
                "run",
                &schema,
                "--checks",
                CHECKS,
                "--max-examples",
                "25",
                "--max-time",
                "10",
            ])
            .args(["--workers", "1"])
            .args(["--seed", "20261203", "--no-color"])
            .args(&args)
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let summary: Vec<&str> = stdout
            .lines()
            .filter(|l| l.contains("Test cases:") || l.contains("generated") || l.starts_with("==="))
            .collect();
        eprintln!("{who}: {}", summary.join(" | "));
        if !output.status.success() {
            failures.push(format!(
                "as {who}:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
