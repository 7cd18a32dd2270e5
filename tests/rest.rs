//! The REST service on a loopback port, called over real HTTP (reqwest), with a clock the
//! test moves: every route, every refusal the API promises, idempotency, the alert
//! lifecycle and fever-triggered cases.

use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::Int64Type;
use arrow::ipc::writer::StreamWriter;
use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::SigningKey;
use proxima_engine::clock::ManualClock;
use proxima_engine::users::add_user;
use proxima_engine::{Role, SessionFactory, SessionOptions, Store, Users};
use proxima_ingest::rest::{RestConfig, RestOptions, RestService};
use proxima_storage::{Maintainer, MaintainerConfig, MaintenanceOptions, MaintenanceStats};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common;

const PASSWORD: &str = "correct horse battery";

struct Api {
    base: String,
    /// The operations routes' base (`/metrics`, `/healthz`, `/readyz`: their own port).
    ops: String,
    http: reqwest::Client,
    clock: Arc<ManualClock>,
    service: RestService,
    factory: SessionFactory,
    audit: proxima_audit::AuditLog,
    audit_key: proxima_audit::VerifierKey,
    _dir: tempfile::TempDir,
}

struct Device {
    uuid: String,
    token: String,
    mac: String,
    /// The owner's key, which signs the device's revocation.
    key: SigningKey,
}

/// A fresh owner's key.
fn new_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random())
}

/// The body of `DELETE /v1/devices/{uuid}`: the revocation message signed by `key` at `at`.
fn revocation(uuid: &str, key: &SigningKey, at: DateTime<Utc>) -> Value {
    use ed25519_dalek::Signer as _;
    let timestamp = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let message = proxima_ingest::rest::devices::revocation_message(uuid, &timestamp, &nonce);
    let signature = hex::encode(key.sign(message.as_bytes()).to_bytes());
    json!({"timestamp": timestamp, "nonce": nonce, "signature": signature})
}

impl Api {
    async fn start(options: RestOptions) -> Self {
        Self::start_with(options, SessionOptions::default()).await
    }

    /// A server whose sessions are built with `sessions` (its identifier keys, say).
    async fn start_with(options: RestOptions, sessions: SessionOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let users_file = dir.path().join("users.toml");
        for (name, role) in [
            ("tracy", Role::Tracer),
            ("stan", Role::Station),
            ("gate", Role::Ingest),
            ("ann", Role::Analyst),
            ("root", Role::Admin),
        ] {
            add_user(&users_file, name, role, PASSWORD).unwrap();
        }
        let store = Store::local(&dir.path().join("store")).unwrap();
        let factory = SessionFactory::new(store.clone(), sessions).unwrap();
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let signer = proxima_audit::SignerKey::generate("proxima.test/audit").unwrap();
        let audit_key = signer.verifier();
        let audit = proxima_audit::AuditLog::open(&dir.path().join("audit"), signer, Default::default()).unwrap();
        let (maintainer, _) = Maintainer::open(MaintainerConfig {
            factory: factory.clone(),
            wal_dir: Some(dir.path().join("wal")),
            clock: clock.clone(),
            options: MaintenanceOptions::default(),
            stats: MaintenanceStats::default(),
        })
        .await
        .unwrap();
        let service = RestService::start(RestConfig {
            store,
            factory: factory.clone(),
            users: Users::load(&users_file).unwrap(),
            maintainer: Arc::new(maintainer),
            options,
            clock: clock.clone(),
            audit: audit.clone(),
        })
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(proxima_ingest::rest::server::serve(
            service.router(),
            listener,
            None,
            std::future::pending(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(proxima_ingest::rest::server::serve(
            service.operations_router(),
            listener,
            None,
            std::future::pending(),
        ));
        Self {
            base,
            ops,
            http: reqwest::Client::new(),
            clock,
            service,
            factory,
            audit,
            audit_key,
            _dir: dir,
        }
    }

    /// Every record of the audit log so far (outcomes written in the background included).
    async fn audit_records(&self) -> Vec<Value> {
        self.audit.checkpoint().await.unwrap();
        let report = proxima_audit::verify(self.audit.dir(), &self.audit_key, None).unwrap();
        assert!(report.ok(), "{:?}", report.findings);
        common::audit_records(self.audit.dir())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post_json(&self, path: &str, body: &Value, auth: Option<&str>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn register(&self, mac: &str) -> Device {
        let key = new_key();
        let public = hex::encode(key.verifying_key().as_bytes());
        let (status, body) = self
            .post_json("/v1/devices", &json!({"mac": mac, "revocation_key": public}), None)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Device {
            uuid: body["device_uuid"].as_str().unwrap().to_string(),
            token: body["upload_token"].as_str().unwrap().to_string(),
            mac: mac.to_string(),
            key,
        }
    }

    /// A tracer reports `device` as a confirmed case: the answer (`case_id`, `alerts`).
    async fn report_case(&self, device: &Device) -> Value {
        let case = json!({"device_uuid": device.uuid, "status": "confirmed"});
        let (s, opened) = self.post_json("/v1/cases", &case, Some(&basic("tracy"))).await;
        assert_eq!(s, StatusCode::CREATED, "{opened}");
        opened
    }

    /// How many alerts `device` fetches.
    async fn alert_count(&self, device: &Device) -> usize {
        let response = self
            .http
            .get(self.url("/v1/alerts"))
            .header("authorization", bearer(&device.token))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        json_of(response).await.as_array().unwrap().len()
    }

    /// `DELETE /v1/devices/{uuid}` with `body`: the status and the body's text.
    async fn revoke(&self, uuid: &str, body: &Value) -> (StatusCode, String) {
        let response = self
            .http
            .delete(self.url(&format!("/v1/devices/{uuid}")))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    async fn upload(&self, device: &Device, observations: &Value) -> (StatusCode, Value) {
        self.post_json("/v1/observations", observations, Some(&bearer(&device.token)))
            .await
    }

    async fn count(&self, sql: &str) -> i64 {
        self.service.flush().await.unwrap();
        let ctx = self.factory.session().await.unwrap();
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        batches[0].column(0).as_primitive::<Int64Type>().value(0)
    }

    fn now(&self) -> DateTime<Utc> {
        use proxima_engine::clock::Clock;
        self.clock.now()
    }
}

/// The REST options of a server that takes static MACs (`--accept-mac`), as most tests here
/// register and hear devices by MAC.
fn legacy() -> RestOptions {
    RestOptions {
        accept_mac: true,
        ..RestOptions::default()
    }
}

async fn json_of(response: reqwest::Response) -> Value {
    let text = response.text().await.unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn basic(user: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{PASSWORD}"))
    )
}

fn sighting(mac: &str, at: DateTime<Utc>, duration_s: i64) -> Value {
    json!({"observed": mac, "observed_at": at.to_rfc3339(), "duration_s": duration_s, "rssi": -60, "tx_power": -10})
}

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, needle: &str) {
    assert_eq!(status, expected, "{body}");
    let detail = body["detail"].as_str().unwrap_or_else(|| panic!("no detail in {body}"));
    assert!(body["error"].is_string(), "{body}");
    assert!(detail.contains(needle), "'{detail}' should mention '{needle}'");
}

#[tokio::test]
async fn devices_uploads_and_every_refusal() {
    let api = Api::start(RestOptions {
        max_batch: 50,
        device_rate_per_minute: 60,
        ..legacy()
    })
    .await;
    let now = api.now();
    let a = api.register("AA:00:00:00:00:01").await;
    let b = api.register("aa:00:00:00:00:02").await;
    assert_eq!(b.mac, "aa:00:00:00:00:02");

    // Registration refusals.
    let api_ref = &api;
    let register = |body: Value| async move { api_ref.post_json("/v1/devices", &body, None).await };
    let key = hex::encode(new_key().verifying_key().as_bytes());
    let (s, body) = register(json!({"mac": "AA:00:00:00:00:02", "revocation_key": key})).await;
    assert_error(s, &body, StatusCode::CONFLICT, "already registered");
    let (s, body) = register(json!({"mac": "not a mac", "revocation_key": key})).await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "body.mac");
    for (bad, why) in [
        ("abc", "not 64 hex digits"),
        // y = 1 encodes the identity, a point of small order.
        (
            "0100000000000000000000000000000000000000000000000000000000000000",
            "weak",
        ),
        // y = 2 is on no Edwards25519 point.
        (
            "0200000000000000000000000000000000000000000000000000000000000000",
            "not an Ed25519 public key",
        ),
    ] {
        let (s, body) = register(json!({"mac": "AA:00:00:00:00:09", "revocation_key": bad})).await;
        assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "body.revocation_key");
        assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, why);
    }
    let (s, body) =
        register(json!({"mac": "AA:00:00:00:00:09", "revocation_secret": "a long revocation secret"})).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "unknown field `revocation_secret`");
    let (s, body) = register(json!({"mac": "AA:00:00:00:00:09", "revocation_key": key, "name": "Bob"})).await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "unknown field `name`");

    // A good upload, then every refusal; the server keeps serving and stores nothing of them.
    let good = json!([
        sighting(&b.mac, now - Duration::hours(1), 300),
        sighting(&b.mac, now - Duration::hours(2), 60)
    ]);
    let (s, body) = api.upload(&a, &good).await;
    assert_eq!((s, body["accepted"].as_i64()), (StatusCode::OK, Some(2)), "{body}");

    let raw = |body: &'static str, content_type: &'static str| {
        let token = a.token.clone();
        let request = api
            .http
            .post(api.url("/v1/observations"))
            .header("authorization", bearer(&token))
            .header("content-type", content_type)
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, json_of(response).await)
        }
    };
    let (s, body) = raw("[{\"observed\": ", "application/json").await;
    assert_error(s, &body, StatusCode::BAD_REQUEST, "not valid JSON");
    let (s, body) = raw("[]", "text/plain").await;
    assert_error(s, &body, StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/json");
    let (s, body) = api.upload(&a, &json!([])).await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "empty");
    let mut unknown = sighting(&b.mac, now, 5);
    unknown["name"] = json!("Alice");
    let (s, body) = api.upload(&a, &json!([sighting(&b.mac, now, 5), unknown])).await;
    assert_error(
        s,
        &body,
        StatusCode::BAD_REQUEST,
        "observations[1].name: unknown field `name`",
    );
    let mut wrong_type = sighting(&b.mac, now, 5);
    wrong_type["duration_s"] = json!("long");
    let (s, body) = api.upload(&a, &json!([sighting(&b.mac, now, 5), wrong_type])).await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "observations[1].duration_s");
    let (s, body) = api.upload(&a, &json!([sighting("ZZ:00", now, 5)])).await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "observations[0].observed");
    let (s, body) = api
        .upload(&a, &json!([sighting(&b.mac, now + Duration::minutes(6), 5)]))
        .await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "in the future");
    let (s, body) = api
        .upload(&a, &json!([sighting(&b.mac, now - Duration::days(22), 5)]))
        .await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "retention window");
    let (s, body) = api.upload(&a, &json!([sighting(&b.mac, now, -5)])).await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "negative");
    let (s, body) = api
        .upload(
            &a,
            &json!([sighting(&b.mac, now, 5), {"observed": b.mac, "observed_at": "yesterday", "duration_s": 1}]),
        )
        .await;
    assert_error(
        s,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "observations[1].observed_at",
    );
    let many: Vec<Value> = (0..51).map(|i| sighting(&b.mac, now, i)).collect();
    let (s, body) = api.upload(&a, &Value::Array(many)).await;
    assert_error(s, &body, StatusCode::PAYLOAD_TOO_LARGE, "at most 50");
    let huge = format!("[{}]", " ".repeat(2 << 20));
    let response = api
        .http
        .post(api.url("/v1/observations"))
        .header("authorization", bearer(&a.token))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (s, body) = api.post_json("/v1/observations", &good, None).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "upload token");
    let (s, body) = api.post_json("/v1/observations", &good, Some("Bearer forged")).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "not valid");
    assert_eq!(
        api.count("SELECT count(*) FROM observations").await,
        2,
        "refused requests store nothing"
    );

    // Idempotency: a retry with the same key is acknowledged again, stored once.
    let keyed = |key: &'static str, minutes_ago: i64| {
        api.http
            .post(api.url("/v1/observations"))
            .header("authorization", bearer(&a.token))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(json!([sighting(&b.mac, now - Duration::minutes(minutes_ago), 120)]).to_string())
            .send()
    };
    let first = keyed("upload-0001", 30).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let retry = keyed("upload-0001", 30).await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(retry).await["accepted"], 1);
    assert_eq!(api.count("SELECT count(*) FROM observations").await, 3);
    // The same key with another body is refused, not acknowledged as the first body was,
    // and stores nothing; the first body's retry is still answered.
    let reused = keyed("upload-0001", 31).await.unwrap();
    let status = reused.status();
    let body = json_of(reused).await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "another body");
    assert_eq!(body["error"], "idempotency_key_reused");
    assert_eq!(
        keyed("upload-0001", 30).await.unwrap().headers()["idempotent-replayed"],
        "true"
    );
    assert_eq!(api.count("SELECT count(*) FROM observations").await, 3);

    // Rate limit: a device over 60 requests a minute gets 429 with Retry-After.
    let c = api.register("AA:00:00:00:00:03").await;
    let one = json!([sighting(&a.mac, now, 1)]);
    let mut limited = None;
    for _ in 0..70 {
        let response = api
            .http
            .post(api.url("/v1/observations"))
            .header("authorization", bearer(&c.token))
            .header("content-type", "application/json")
            .body(one.to_string())
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("the 61st request in a minute is refused");
    assert!(
        limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Other devices are not affected.
    assert_eq!(api.upload(&a, &one).await.0, StatusCode::OK);

    // Revocation, signed by the owner's key. Whatever fails to revoke (a wrong key, an
    // unknown device, a replay, a device already revoked) gets one and the same answer.
    let refused = api.revoke(&b.uuid, &revocation(&b.uuid, &new_key(), now)).await;
    assert_eq!(refused.0, StatusCode::NOT_FOUND, "{}", refused.1);
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(api.revoke(&unknown, &revocation(&unknown, &b.key, now)).await, refused);
    // Signed for another device: the message names the UUID.
    assert_eq!(api.revoke(&b.uuid, &revocation(&a.uuid, &b.key, now)).await, refused);
    // What says nothing about a device is a 422 naming the field.
    for (body, detail) in [
        (
            revocation(&b.uuid, &b.key, now - Duration::minutes(6)),
            "body.timestamp",
        ),
        (
            revocation(&b.uuid, &b.key, now + Duration::minutes(6)),
            "body.timestamp",
        ),
        (
            json!({"timestamp": now.to_rfc3339(), "nonce": "00", "signature": "00"}),
            "body.nonce",
        ),
        (
            json!({"timestamp": now.to_rfc3339(), "nonce": "00".repeat(16), "signature": "zz"}),
            "body.signature",
        ),
        (
            json!({"timestamp": "yesterday", "nonce": "00".repeat(16), "signature": "00".repeat(64)}),
            "body.timestamp",
        ),
        (
            json!({"revocation_secret": "a long revocation secret"}),
            "unknown field",
        ),
    ] {
        let (s, text) = api.revoke(&b.uuid, &body).await;
        let body: Value = serde_json::from_str(&text).unwrap();
        assert!(
            s == StatusCode::UNPROCESSABLE_ENTITY || s == StatusCode::BAD_REQUEST,
            "{s} {text}"
        );
        assert!(body["detail"].as_str().unwrap().contains(detail), "{text}");
    }
    let alerts_of_b = || {
        api.http
            .get(api.url("/v1/alerts"))
            .header("authorization", bearer(&b.token))
            .send()
    };
    assert_eq!(
        alerts_of_b().await.unwrap().status(),
        StatusCode::OK,
        "b is still active"
    );
    // The owner revokes (within the 5 minutes' skew); the token stops working at once.
    let signed = revocation(&b.uuid, &b.key, now - Duration::minutes(4));
    assert_eq!(api.revoke(&b.uuid, &signed).await.0, StatusCode::NO_CONTENT);
    let (s, _) = api.upload(&b, &json!([sighting(&a.mac, now, 1)])).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(alerts_of_b().await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // The same request again, and a fresh one for the revoked device: the same refusal.
    assert_eq!(api.revoke(&b.uuid, &signed).await, refused);
    assert_eq!(api.revoke(&b.uuid, &revocation(&b.uuid, &b.key, now)).await, refused);
    assert_eq!(api.count("SELECT count(*) FROM revocations").await, 1);

    // Staff routes: credentials and roles.
    let case = json!({"device_uuid": a.uuid, "status": "confirmed"});
    let (s, body) = api.post_json("/v1/cases", &case, None).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "Authorization");
    let (s, body) = api.post_json("/v1/cases", &case, Some(&basic("stan"))).await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "role station");
    let (s, body) = api
        .post_json("/v1/cases", &case, Some("Basic bm9ib2R5Om5vdGhpbmc="))
        .await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "wrong user name or password");
    let (s, token) = api.post_json("/v1/auth/token", &json!({}), Some(&basic("tracy"))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = api
        .post_json("/v1/cases", &case, Some(&bearer(token["token"].as_str().unwrap())))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    // The case is in the store once acknowledged, no periodic flush waited for (this server
    // runs none): the tracer who reported it may declare it as their purpose at once.
    let case_id = body["case_id"].as_str().unwrap();
    let stored = api
        .factory
        .session()
        .await
        .unwrap()
        .sql(&format!("SELECT count(*) FROM cases WHERE case_id = '{case_id}'"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(stored[0].column(0).as_primitive::<Int64Type>().value(0), 1);
    let (s, body) = api
        .post_json(
            "/v1/cases",
            &json!({"device_uuid": a.uuid, "status": "maybe"}),
            Some(&basic("tracy")),
        )
        .await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "body.status");

    // Each of those staff calls is in the audit log: refusals as decisions, admitted calls
    // as an intent and its outcome.
    let records = api.audit_records().await;
    let cases: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "rest:POST /v1/cases")
        .collect();
    let refused: Vec<(&str, &str, &str)> = cases
        .iter()
        .filter(|r| r["decision"] == "deny")
        .map(|r| {
            (
                r["principal"].as_str().unwrap(),
                r["role"].as_str().unwrap(),
                r["rule"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        vec![
            ("", "", "credentials"),
            ("stan", "station", "the route does not take the role"),
            ("nobody", "", "credentials"),
        ]
    );
    let intents: Vec<&&Value> = cases.iter().filter(|r| r["phase"] == "intent").collect();
    assert_eq!(intents.len(), 2, "{intents:?}");
    for (intent, error) in intents.iter().zip([None, Some("HTTP 422")]) {
        assert_eq!(intent["principal"], "tracy");
        assert!(intent["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        let done: Vec<&Value> = records
            .iter()
            .filter(|r| r["phase"] == "done" && r["intent"] == intent["seq"])
            .collect();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0]["error"].as_str().map(|e| &e[..8]), error, "{:?}", done[0]);
    }
    let tokens: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "rest:POST /v1/auth/token")
        .collect();
    assert_eq!(tokens.len(), 2, "an intent and its outcome: {tokens:?}");
    assert!(
        !records.iter().any(|r| r["action"] == "rest:POST /v1/observations"),
        "phones' own uploads are not staff accesses"
    );
    // Administrators run the platform and touch no data: no data route takes them.
    for route in ["/v1/cases", "/v1/temperature", "/v1/observations:bulk"] {
        let (s, body) = api.post_json(route, &case, Some(&basic("root"))).await;
        assert_error(s, &body, StatusCode::FORBIDDEN, "role admin");
    }

    // Bulk uploads: NDJSON and Arrow IPC for role ingest only.
    let ndjson = format!(
        "{}\n{}\n",
        json!({"observer": a.uuid, "observed": c.mac, "observed_at": now.to_rfc3339(), "duration_s": 30}),
        json!({"observer": c.uuid, "observed": a.mac, "observed_at": now.to_rfc3339(), "duration_s": 30})
    );
    let bulk = |auth: String, content_type: &'static str, body: Vec<u8>| {
        api.http
            .post(api.url("/v1/observations:bulk"))
            .header("authorization", auth)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let response = bulk(basic("gate"), "application/x-ndjson", ndjson.clone().into_bytes())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_of(response).await["accepted"], 2);
    let response = bulk(basic("ann"), "application/x-ndjson", ndjson.clone().into_bytes())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = bulk(basic("gate"), "text/csv", ndjson.into_bytes()).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let bad_line = format!(
        "{}\n{}\n",
        json!({"observer": a.uuid, "observed": c.mac, "observed_at": now.to_rfc3339(), "duration_s": 30}),
        json!({"observer": "00000000-0000-4000-8000-000000000000", "observed": a.mac, "observed_at": now.to_rfc3339(), "duration_s": 30})
    );
    let response = bulk(basic("gate"), "application/x-ndjson", bad_line.into_bytes())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = json_of(response).await;
    assert!(body["detail"].as_str().unwrap().contains("line 2.observer"), "{body}");
    let rows = 10_000;
    let batch = RecordBatch::try_from_iter(vec![
        (
            "observer",
            Arc::new(StringArray::from(vec![a.uuid.as_str(); rows])) as _,
        ),
        ("observed", Arc::new(StringArray::from(vec![c.mac.as_str(); rows])) as _),
        (
            "observed_at",
            Arc::new(TimestampMicrosecondArray::from(vec![now.timestamp_micros(); rows]).with_timezone("UTC")) as _,
        ),
        ("duration_s", Arc::new(Int64Array::from(vec![7; rows])) as _),
    ])
    .unwrap();
    let mut ipc = Vec::new();
    {
        let mut writer = StreamWriter::try_new(&mut ipc, &batch.schema()).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
    }
    let response = bulk(basic("gate"), "application/vnd.apache.arrow.stream", ipc)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_of(response).await["accepted"], rows);
    let response = bulk(
        basic("gate"),
        "application/vnd.apache.arrow.stream",
        b"not arrow".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        api.count("SELECT count(*) FROM observations WHERE duration_s = 7")
            .await,
        rows as i64
    );

    // Operations: health, readiness, metrics, the OpenAPI document, unknown routes.
    let get = |path: &str| api.http.get(api.url(path)).send();
    let ops = |path: &str| api.http.get(format!("{}{path}", api.ops)).send();
    assert_eq!(ops("/healthz").await.unwrap().status(), StatusCode::OK);
    assert_eq!(ops("/readyz").await.unwrap().status(), StatusCode::OK);
    let metrics = ops("/metrics").await.unwrap().text().await.unwrap();
    // Not on the phones' port: a polling phone learns nothing of the service's counts.
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(get(path).await.unwrap().status(), StatusCode::NOT_FOUND, "{path}");
    }
    for needle in [
        "proxima_http_requests_total{route=\"/v1/observations\",method=\"POST\",status=\"422\"}",
        "proxima_observations_accepted_total",
        "proxima_observations_rejected_total",
        "proxima_wal_sync_seconds_bucket",
        "proxima_files_flushed_total",
        "proxima_trace_seconds_count",
        // Every day the traces above read was covered by the observed index.
        "proxima_lookup_days_scanned 0",
        &format!("proxima_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}:\n{metrics}");
    }
    let openapi: Value = json_of(get("/openapi.json").await.unwrap()).await;
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/devices",
        "/v1/devices/{uuid}",
        "/v1/observations",
        "/v1/observations:bulk",
        "/v1/cases",
        "/v1/temperature",
        "/v1/alerts",
        "/v1/auth/token",
    ] {
        assert!(openapi["paths"][path].is_object(), "OpenAPI lacks {path}");
    }
    let missing = get("/v2/nothing").await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    // Errors are RFC 9457 problems.
    assert_eq!(missing.headers()["content-type"], "application/problem+json");
    let problem = json_of(missing).await;
    assert!(problem["detail"].is_string());
    assert_eq!(problem["status"], 404);
    assert_eq!(problem["title"], "Not Found");
    assert_eq!(
        problem["type"],
        format!("urn:proxima:problem:{}", problem["error"].as_str().unwrap())
    );
    let refusal = &openapi["paths"]["/v1/observations"]["post"]["responses"]["422"]["content"];
    assert!(
        refusal["application/problem+json"]["schema"].is_object(),
        "the spec says so too: {refusal}"
    );
}

#[tokio::test]
async fn alert_lifecycle_from_case_to_expiry() {
    let api = Api::start(legacy()).await;
    let now = api.now();
    let case = api.register("CA:5E:00:00:00:01").await;
    let near = api.register("CA:5E:00:00:00:02").await; // met the case 3 hours ago: high
    let older = api.register("CA:5E:00:00:00:03").await; // met the case 3 days ago: medium
    let second = api.register("CA:5E:00:00:00:04").await; // met `near` after its exposure: medium
    let stranger = api.register("CA:5E:00:00:00:05").await;
    let revoked = api.register("CA:5E:00:00:00:06").await; // met the case, but revoked
    for (device, heard, at) in [
        (&case, &near, now - Duration::hours(3)),
        (&older, &case, now - Duration::hours(72)),
        (&second, &near, now - Duration::hours(1)),
        (&revoked, &case, now - Duration::hours(2)),
        (&stranger, &stranger, now - Duration::hours(1)),
    ] {
        let (s, body) = api.upload(device, &json!([sighting(&heard.mac, at, 900)])).await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    let (status, _) = api
        .revoke(&revoked.uuid, &revocation(&revoked.uuid, &revoked.key, now))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // The case is traced over everything acknowledged, without waiting for a flush.
    let (s, opened) = api
        .post_json(
            "/v1/cases",
            &json!({"device_uuid": case.uuid, "status": "confirmed"}),
            Some(&basic("tracy")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{opened}");
    assert_eq!(opened["alerts"], json!({"high": 1, "medium": 2}), "{opened}");
    assert!(opened["case_id"].is_string());

    let alerts_of = |device: &Device| {
        let request = api
            .http
            .get(api.url("/v1/alerts"))
            .header("authorization", bearer(&device.token));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            json_of(response).await.as_array().unwrap().clone()
        }
    };
    let mine = alerts_of(&near).await;
    assert_eq!(mine.len(), 1);
    let alert = mine[0].as_object().unwrap();
    let mut keys: Vec<&str> = alert.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["expires_at", "exposure_day", "issued_at", "priority"],
        "nothing identifies the case"
    );
    assert_eq!(alert["priority"], "high");
    assert_eq!(
        alert["exposure_day"],
        (now - Duration::hours(3)).date_naive().to_string()
    );
    assert_eq!(alerts_of(&older).await[0]["priority"], "medium");
    assert_eq!(alerts_of(&second).await[0]["priority"], "medium");
    assert!(alerts_of(&stranger).await.is_empty(), "another device sees none");
    assert!(alerts_of(&case).await.is_empty(), "the case itself gets no alert");
    let response = api.http.get(api.url("/v1/alerts")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(api.count("SELECT count(*) FROM alerts").await, 3);
    assert_eq!(api.count("SELECT count(*) FROM cases WHERE alerts_high = 1").await, 1);

    // Alerts survive a reload from the store, and expire after the TTL.
    api.clock.advance(Duration::hours(47));
    api.service
        .state()
        .alerts
        .reload(&api.factory, api.now(), Duration::hours(48))
        .await
        .unwrap();
    assert_eq!(alerts_of(&near).await.len(), 1);
    api.clock.advance(Duration::hours(2));
    assert!(alerts_of(&near).await.is_empty(), "expired after 48 hours");

    // A report may cite the id the health authority gave the case: it is the report's
    // purpose, and an id already used is refused, with nothing written.
    let cited = "0F6B1C2A-3D4E-4F50-8A9B-0C1D2E3F4A5B";
    let report = json!({"device_uuid": case.uuid, "status": "confirmed", "case_id": cited});
    let (s, again) = api.post_json("/v1/cases", &report, Some(&basic("tracy"))).await;
    assert_eq!(s, StatusCode::CREATED, "{again}");
    assert_eq!(again["case_id"], cited.to_ascii_lowercase());
    let alerts = api.count("SELECT count(*) FROM alerts").await;
    let (s, body) = api.post_json("/v1/cases", &report, Some(&basic("tracy"))).await;
    assert_error(s, &body, StatusCode::CONFLICT, "already exists");
    let bad = json!({"device_uuid": case.uuid, "status": "confirmed", "case_id": "case-7"});
    let (s, body) = api.post_json("/v1/cases", &bad, Some(&basic("tracy"))).await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "body.case_id");
    let cited = cited.to_ascii_lowercase();
    assert_eq!(
        api.count(&format!("SELECT count(*) FROM cases WHERE case_id = '{cited}'"))
            .await,
        1
    );
    assert_eq!(api.count("SELECT count(*) FROM alerts").await, alerts);

    // Each report's outcome names its case as the purpose.
    let records = api.audit_records().await;
    let purposes: Vec<&str> = records
        .iter()
        .filter(|r| r["action"] == "rest:POST /v1/cases" && r["phase"] == "done")
        .map(|r| r["purpose"].as_str().unwrap_or("-"))
        .collect();
    let first = format!("case:{}", opened["case_id"].as_str().unwrap());
    let second = format!("case:{cited}");
    assert_eq!(purposes, [first.as_str(), &second, &second, "-"]);
}

#[tokio::test]
async fn a_fever_reading_opens_a_suspected_case() {
    let api = Api::start(legacy()).await;
    let now = api.now();
    let patient = api.register("FE:00:00:00:00:01").await;
    let contact = api.register("FE:00:00:00:00:02").await;
    let mut heard = sighting(&patient.mac, now - Duration::hours(5), 1200);
    heard["location"] = json!("u4pruz");
    let (s, _) = api.upload(&contact, &json!([heard])).await;
    assert_eq!(s, StatusCode::OK);
    // Where the patient's phone last was: what places its readings and case in a cell.
    let mut located = sighting(&contact.mac, now - Duration::hours(6), 60);
    located["location"] = json!("u4pruy");
    let (s, _) = api.upload(&patient, &json!([located])).await;
    assert_eq!(s, StatusCode::OK);
    let reading = |celsius: f64| json!({"device_uuid": patient.uuid, "measured_at": now.to_rfc3339(), "celsius": celsius, "site": "clinic-7"});
    let (s, body) = api
        .post_json("/v1/temperature", &reading(36.9), Some(&basic("stan")))
        .await;
    assert_eq!((s, &body["case"]), (StatusCode::CREATED, &Value::Null), "{body}");
    let (s, body) = api
        .post_json("/v1/temperature", &reading(38.4), Some(&basic("stan")))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["case"]["alerts"], json!({"high": 1, "medium": 0}));
    let (s, body) = api
        .post_json("/v1/temperature", &reading(52.0), Some(&basic("stan")))
        .await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "body.celsius");
    let mut named = reading(37.0);
    named["site"] = json!("Dr Smith's house, 4 Elm Road");
    let (s, body) = api.post_json("/v1/temperature", &named, Some(&basic("stan"))).await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "body.site");
    let (s, body) = api
        .post_json("/v1/temperature", &reading(39.0), Some(&basic("tracy")))
        .await;
    assert_error(s, &body, StatusCode::FORBIDDEN, "role tracer");
    assert_eq!(api.count("SELECT count(*) FROM temperature_readings").await, 2);
    assert_eq!(
        api.count("SELECT count(*) FROM cases WHERE status = 'suspected' AND reported_by = 'stan'")
            .await,
        1
    );
    // Stored in the patient's cell, and counted there by the case rollup the flush kept.
    assert_eq!(api.count("SELECT count(*) FROM cases WHERE cell = 'u4pr'").await, 1);
    assert_eq!(
        api.count("SELECT count(*) FROM temperature_readings WHERE cell = 'u4pr'")
            .await,
        2
    );
    // The alerted contact becomes a confirmed case after an alert, whose trace alerts
    // the patient.
    let (s, body) = api
        .post_json(
            "/v1/cases",
            &json!({"device_uuid": contact.uuid, "status": "confirmed"}),
            Some(&basic("tracy")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    for (count, expected) in [
        ("suspected", 1),
        ("confirmed", 1),
        ("readings", 2),
        ("fever_readings", 1),
        ("alerts_high", 2),
        ("confirmed_after_alert", 1),
    ] {
        let sql = format!("SELECT CAST(sum({count}) AS BIGINT) FROM case_partials WHERE cell = 'u4pr'");
        assert_eq!(api.count(&sql).await, expected, "{count}");
    }
    let response = api
        .http
        .get(api.url("/v1/alerts"))
        .header("authorization", bearer(&contact.token))
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(response).await.as_array().unwrap().clone().len(), 1);
}

#[tokio::test]
async fn registrations_never_leave_a_day_uncovered() {
    use proxima_udfs::trace::EncounterLookup;

    let api = Api::start(legacy()).await;
    let now = api.now();
    let phone = api.register("1C:00:00:00:00:01").await;
    // Sightings over three days of a MAC nobody has registered yet.
    let days_back = [0, 1, 2];
    let sightings: Vec<Value> = days_back
        .iter()
        .map(|d| sighting("1C:00:00:00:00:02", now - Duration::days(*d) - Duration::hours(1), 900))
        .collect();
    let (s, body) = api.upload(&phone, &Value::Array(sightings)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    api.service.flush().await.unwrap();
    let covered = |api: &Api| {
        let index = Arc::clone(api.factory.index());
        async move {
            let mut all = true;
            for d in days_back {
                all &= index
                    .is_covered((now - Duration::days(d) - Duration::hours(1)).date_naive())
                    .await
                    .unwrap();
            }
            all
        }
    };
    assert!(covered(&api).await);
    // The heard phone registers (its MAC now names a device), and the flush writes a devices
    // file: every day stays covered, and the earlier sightings are encounters at once.
    let heard = api.register("1C:00:00:00:00:02").await;
    api.service.flush().await.unwrap();
    assert!(covered(&api).await, "a registration made a day uncovered");
    let from = (now - Duration::days(3)).timestamp_micros();
    let found = api
        .factory
        .index()
        .encounters(std::slice::from_ref(&heard.uuid), from, now.timestamp_micros())
        .await
        .unwrap();
    assert!(found.uncovered_days.is_empty(), "{:?}", found.uncovered_days);
    assert_eq!(found.edges.len(), 3, "{:?}", found.edges);
    assert!(found.edges.iter().all(|e| e.b == phone.uuid));
}

#[tokio::test]
async fn phones_fetch_rotating_identifiers_only_the_key_links() {
    use proxima_engine::ephemeral::{DEFAULT_TOLERANCE, IdKeys, Identifiers, handle_of};
    let keys = IdKeys::generate(Utc::now());
    let identifiers = Identifiers::new(keys.clone(), std::time::Duration::from_secs(900), DEFAULT_TOLERANCE);
    let api = Api::start_with(
        legacy(),
        SessionOptions {
            identifiers: Some(Arc::new(identifiers)),
            ..SessionOptions::default()
        },
    )
    .await;
    let phone = api.register("AA:00:00:00:00:E1").await;
    let get = |query: &str, token: Option<&str>| {
        let mut request = api.http.get(api.url(&format!("/v1/ephemeral-ids{query}")));
        if let Some(token) = token {
            request = request.header("authorization", bearer(token));
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status(), json_of(response).await)
        }
    };

    let (s, body) = get("?count=4", Some(&phone.token)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["epoch_seconds"], 900);
    let ids = body["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 4);
    // The first epoch holds now; each follows the last by 15 minutes.
    let time = |v: &Value| v.as_str().unwrap().parse::<DateTime<Utc>>().unwrap();
    let first = time(&ids[0]["valid_from"]);
    assert!(first <= api.now() && api.now() < first + Duration::minutes(15));
    assert_eq!(first.timestamp() % 900, 0);
    let mut seen = std::collections::HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        let from = time(&id["valid_from"]);
        assert_eq!(from, first + Duration::minutes(15 * i as i64));
        assert_eq!(time(&id["valid_until"]), from + Duration::minutes(15));
        let text = id["id"].as_str().unwrap();
        assert!(
            text.len() == 32 && text.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "{text}"
        );
        assert!(seen.insert(text.to_string()), "identifiers repeat");
        // Only the key links it back: to this phone, in this epoch.
        let bytes: [u8; 16] = hex::decode(text).unwrap().try_into().unwrap();
        let resolved = keys.resolve(&bytes).expect("the server's key resolves it");
        assert_eq!(resolved.handle, handle_of(&phone.uuid).unwrap());
        assert_eq!(i64::from(resolved.start_minute) * 60, from.timestamp());
        assert_eq!(IdKeys::generate(Utc::now()).resolve(&bytes), None);
    }
    let (_, body) = get("", Some(&phone.token)).await;
    assert_eq!(body["ids"].as_array().unwrap().len(), 96, "a day by default");

    // Refusals: no token, a bad count, an unknown parameter.
    let (s, body) = get("?count=4", None).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "upload token");
    for (query, detail) in [
        ("?count=0", "query.count"),
        ("?count=673", "query.count"),
        ("?count=lots", "query.count"),
        ("?every=1", "unknown parameter 'every'"),
    ] {
        let (s, body) = get(query, Some(&phone.token)).await;
        assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, detail);
    }

    // A server without identifier keys issues none, and says why.
    let plain = Api::start(legacy()).await;
    let other = plain.register("AA:00:00:00:00:E2").await;
    let response = plain
        .http
        .get(plain.url("/v1/ephemeral-ids"))
        .header("authorization", bearer(&other.token))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_error(status, &json_of(response).await, StatusCode::NOT_FOUND, "--id-key");
}

/// A server with identifier keys (15-minute epochs, the default tolerance).
async fn api_with_identifiers() -> Api {
    api_with_identifiers_and(false).await
}

/// A server with identifier keys and, if `require_mutual`, only mutual encounters.
async fn api_with_identifiers_and(require_mutual: bool) -> Api {
    api_with_identifiers_and_options(require_mutual, legacy()).await
}

/// A server with identifier keys, `options` and, if `require_mutual`, only mutual encounters.
async fn api_with_identifiers_and_options(require_mutual: bool, options: RestOptions) -> Api {
    use proxima_engine::ephemeral::{DEFAULT_TOLERANCE, IdKeys, Identifiers};
    let keys = IdKeys::generate(Utc::now());
    let identifiers = Identifiers::new(keys, std::time::Duration::from_secs(900), DEFAULT_TOLERANCE);
    Api::start_with(
        options,
        SessionOptions {
            identifiers: Some(Arc::new(identifiers)),
            require_mutual,
            ..SessionOptions::default()
        },
    )
    .await
}

/// A case, a friend it really met (each heard the other's identifier, two minutes apart) and
/// two Sybil devices that uploaded one-sided sightings of the case (its identifier, its
/// MAC): the alerts the case's report gives, and how many the Sybils received.
async fn sybil_attack(require_mutual: bool) -> (Value, usize) {
    let api = api_with_identifiers_and(require_mutual).await;
    let case = api.register("5B:00:00:00:00:01").await;
    let friend = api.register("5B:00:00:00:00:02").await;
    let sybils = [
        api.register("5B:00:00:00:00:03").await,
        api.register("5B:00:00:00:00:04").await,
    ];
    let case_id = identifiers_of(&api, &case, 1).await[0].0.clone();
    let friend_id = identifiers_of(&api, &friend, 1).await[0].0.clone();
    let now = api.now();
    for (device, heard, at) in [
        (&case, &friend_id, now),
        (&friend, &case_id, now - Duration::minutes(2)),
        (&sybils[0], &case_id, now),
        (&sybils[1], &case.mac, now),
    ] {
        let (s, body) = api.upload(device, &json!([sighting(heard, at, 300)])).await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    let opened = api.report_case(&case).await;
    let mut received = 0;
    for sybil in &sybils {
        received += api.alert_count(sybil).await;
    }
    (opened["alerts"].clone(), received)
}

/// Without `require_mutual`, a device that claims to have heard a target learns from its
/// alert that the target was reported; with it, one-sided sightings alert no one, and a
/// real (mutual) contact still does.
#[tokio::test]
async fn one_sided_sightings_alert_no_one_under_require_mutual() {
    let (alerts, received) = sybil_attack(false).await;
    assert_eq!(
        alerts,
        json!({"high": 3, "medium": 0}),
        "the attack works without the policy"
    );
    assert_eq!(received, 2);
    let (alerts, received) = sybil_attack(true).await;
    assert_eq!(alerts, json!({"high": 1, "medium": 0}), "only the friend");
    assert_eq!(received, 0, "no Sybil learns anything");
}

/// The identifiers a phone fetches: (id, valid from).
async fn identifiers_of(api: &Api, phone: &Device, count: u32) -> Vec<(String, DateTime<Utc>)> {
    let response = api
        .http
        .get(api.url(&format!("/v1/ephemeral-ids?count={count}")))
        .header("authorization", bearer(&phone.token))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await;
    body["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| {
            (
                id["id"].as_str().unwrap().to_string(),
                id["valid_from"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

/// Phones that broadcast rotating identifiers: a sighting in the identifier's epoch alerts
/// its hearer, and the identifier's owner when the hearer is the case; a replay, a tampered
/// or random identifier alerts no one; a squatter cannot take a victim's identifier.
#[tokio::test]
async fn sightings_of_rotating_identifiers_count_only_in_their_epoch() {
    let api = api_with_identifiers().await;
    let case = api.register("1D:00:00:00:00:01").await;
    let near = api.register("1D:00:00:00:00:02").await; // heard the case's identifier
    let victim = api.register("1D:00:00:00:00:03").await; // heard by the case
    let replayer = api.register("1D:00:00:00:00:04").await;
    let forger = api.register("1D:00:00:00:00:05").await;
    let case_ids = identifiers_of(&api, &case, 2).await;
    let victim_ids = identifiers_of(&api, &victim, 1).await;
    let (case_id, epoch) = case_ids[0].clone();
    assert!(epoch <= api.now() && api.now() < epoch + Duration::minutes(15));
    let heard_at = api.now();

    // In the epoch: near heard the case, the case heard the victim (and 16 bytes no key
    // issued, from some other app).
    let (s, body) = api.upload(&near, &json!([sighting(&case_id, heard_at, 300)])).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let heard_by_case = json!([
        sighting(&victim_ids[0].0, heard_at, 300),
        sighting("fedcba9876543210fedcba9876543210", heard_at, 300)
    ]);
    let (s, body) = api.upload(&case, &heard_by_case).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // Forged: the case's identifier with one bit flipped, and 16 random bytes.
    let mut tampered = hex::decode(&case_id).unwrap();
    tampered[5] ^= 0x10;
    let forged = [hex::encode(tampered), "0123456789abcdef0123456789abcdef".to_string()];
    let (s, body) = api
        .upload(
            &forger,
            &json!(forged.iter().map(|f| sighting(f, heard_at, 300)).collect::<Vec<_>>()),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "{body}: forged identifiers are not refused, only ignored"
    );

    // A squatter cannot register the victim's identifier as its address.
    let (s, body) = api
        .post_json(
            "/v1/devices",
            &json!({"mac": victim_ids[0].0, "revocation_key": hex::encode(new_key().verifying_key().as_bytes())}),
            None,
        )
        .await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "body.mac");

    // Later, the case's first identifier is replayed: no longer its epoch. Lookups read an
    // identifier only in the days its epoch (± the tolerance) spans, so the replay is put
    // on that day (a replay on a later day is no encounter either, but is not counted).
    let valid_until =
        epoch + Duration::minutes(15) + Duration::from_std(proxima_engine::ephemeral::DEFAULT_TOLERANCE).unwrap();
    let next_midnight = (valid_until.date_naive() + chrono::Days::new(1))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let replay_at = (valid_until + Duration::minutes(30)).min(next_midnight - Duration::seconds(1));
    api.clock.advance(replay_at - api.now());
    let (s, body) = api
        .upload(&replayer, &json!([sighting(&case_id, api.now(), 300)]))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");

    let opened = api.report_case(&case).await;
    assert_eq!(opened["alerts"], json!({"high": 2, "medium": 0}), "{opened}");
    let alerts_of = |device| api.alert_count(device);
    assert_eq!(alerts_of(&near).await, 1);
    assert_eq!(alerts_of(&victim).await, 1, "the victim's identifier is the victim's");
    assert_eq!(alerts_of(&replayer).await, 0, "a replay is no encounter");
    assert_eq!(alerts_of(&forger).await, 0, "a forged identifier is no encounter");

    // The refusals are counted for operators, never shown to phones.
    let metrics = api
        .http
        .get(format!("{}/metrics", api.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |reason: &str| {
        let prefix = format!("proxima_lookup_identifiers_refused{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
            .parse::<i64>()
            .unwrap()
    };
    assert!(gauge("replayed") >= 1 && gauge("unknown") >= 1, "{metrics}");
}

/// A server started without `--accept-mac` (the default) takes no static MAC: not in a
/// registration, not as what a phone heard; phones register without one and broadcast
/// rotating identifiers, which count as encounters.
#[tokio::test]
async fn static_macs_are_refused_unless_accepted() {
    let api = api_with_identifiers_and_options(false, RestOptions::default()).await;
    let key = hex::encode(new_key().verifying_key().as_bytes());
    let (s, body) = api
        .post_json(
            "/v1/devices",
            &json!({"mac": "7A:00:00:00:00:01", "revocation_key": key}),
            None,
        )
        .await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "--accept-mac");
    let register = || async {
        let key = new_key();
        let body = json!({"revocation_key": hex::encode(key.verifying_key().as_bytes())});
        let (s, body) = api.post_json("/v1/devices", &body, None).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        Device {
            uuid: body["device_uuid"].as_str().unwrap().to_string(),
            token: body["upload_token"].as_str().unwrap().to_string(),
            mac: String::new(),
            key,
        }
    };
    let (a, b) = (register().await, register().await);
    let (s, body) = api
        .upload(&a, &json!([sighting("7A:00:00:00:00:02", api.now(), 60)]))
        .await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "observations[0].observed");
    let b_id = identifiers_of(&api, &b, 1).await[0].0.clone();
    let (s, body) = api.upload(&a, &json!([sighting(&b_id, api.now(), 60)])).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(api.report_case(&a).await["alerts"]["high"], 1);
    assert_eq!(api.alert_count(&b).await, 1);
    assert_eq!(api.count("SELECT count(*) FROM devices WHERE mac IS NULL").await, 2);
}

/// A GAEN phone registers its temporary exposure key; a sighting of one of the key's RPIs
/// near its interval is an encounter (the key's owner is alerted when the hearer is a
/// case); one far from it, or of a key nobody registered, is none.
#[tokio::test]
async fn rpis_of_registered_exposure_keys_are_encounters() {
    use proxima_udfs::gaen::{rpi, rpik};
    let api = Api::start(legacy()).await;
    let case = api.register("6E:00:00:00:00:01").await;
    let gaen = api.register("6E:00:00:00:00:02").await;
    let stranger = api.register("6E:00:00:00:00:03").await;
    let now = api.now();
    // Yesterday's key, from midnight (GAEN's rolling start), 144 intervals.
    let yesterday = (now - Duration::days(1))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let start = yesterday.timestamp() / 600;
    let tek: [u8; 16] = rand::random();
    let api = &api;
    let post = |device: &Device, body: Value| {
        let token = bearer(&device.token);
        async move { api.post_json("/v1/exposure-keys", &body, Some(&token)).await }
    };
    let (s, body) = post(
        &gaen,
        json!([{"key": hex::encode(tek), "rolling_start_interval_number": start}]),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 1);

    // The RPI of yesterday's 12:00 interval, heard at 12:05 by the case, and at 18:00 by the
    // stranger (beyond GAEN's 2 hours' tolerance: a replay).
    let noon = yesterday + Duration::hours(12);
    let heard = hex::encode(rpi(&rpik(&tek), u32::try_from(noon.timestamp() / 600).unwrap()));
    let (s, body) = api
        .upload(&case, &json!([sighting(&heard, noon + Duration::minutes(5), 600)]))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = api
        .upload(&stranger, &json!([sighting(&heard, noon + Duration::hours(6), 600)]))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let opened = api.report_case(&case).await;
    assert_eq!(opened["alerts"], json!({"high": 1, "medium": 0}), "{opened}");
    assert_eq!(api.alert_count(&gaen).await, 1, "the key's owner");
    assert_eq!(api.alert_count(&stranger).await, 0, "a replayed RPI is no encounter");

    // Refusals name the element and field; nothing is stored.
    for (body, status, detail) in [
        (json!([]), StatusCode::UNPROCESSABLE_ENTITY, "empty"),
        (
            json!([{"key": "xyz", "rolling_start_interval_number": start}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "keys[0].key",
        ),
        (
            json!([{"key": hex::encode(tek), "rolling_start_interval_number": start, "rolling_period": 145}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "keys[0].rolling_period",
        ),
        (
            json!([{"key": hex::encode(tek), "rolling_start_interval_number": start + 1000}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "keys[0].rolling_start_interval_number",
        ),
        (
            json!([{"key": hex::encode(tek), "rolling_start_interval_number": start - 144 * 30}]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "the oldest data kept",
        ),
        (
            json!([{"key": hex::encode(tek), "rolling_start_interval_number": start, "extra": 1}]),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            Value::Array(vec![
                json!({"key": hex::encode(tek), "rolling_start_interval_number": start});
                15
            ]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at most 14",
        ),
    ] {
        let (s, answer) = post(&gaen, body).await;
        assert_error(s, &answer, status, detail);
    }
    let (s, body) = api.post_json("/v1/exposure-keys", &json!([]), None).await;
    assert_error(s, &body, StatusCode::UNAUTHORIZED, "upload token");
    // A phone may register a second key for a day (after a reset), not a third: each key
    // puts 144 RPIs into the server's memory.
    let another = |n: u8| json!([{"key": hex::encode([n; 16]), "rolling_start_interval_number": start}]);
    let (s, body) = post(&gaen, another(1)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = post(&gaen, another(2)).await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "at most 2 a day");
    let (s, body) = post(&stranger, json!([{"key": hex::encode([3u8; 16]), "rolling_start_interval_number": start}, {"key": hex::encode([4u8; 16]), "rolling_start_interval_number": start}, {"key": hex::encode([5u8; 16]), "rolling_start_interval_number": start}])).await;
    assert_error(
        s,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "keys[2].rolling_start_interval_number",
    );
    assert_eq!(api.count("SELECT count(*) FROM exposure_keys").await, 2);
}

/// With `--registration-work`, a registration carries a solved challenge, good once.
#[tokio::test]
async fn registration_costs_a_proof_of_work() {
    use proxima_ingest::rest::challenge::{leading_zero_bits, solve};
    let api = Api::start(RestOptions {
        registration_work: 12,
        ..legacy()
    })
    .await;
    let challenge = || async {
        let response = api.http.get(api.url("/v1/devices/challenge")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = json_of(response).await;
        assert_eq!(body["difficulty"], 12);
        let expires: DateTime<Utc> = body["expires_at"].as_str().unwrap().parse().unwrap();
        assert!(expires > api.now() + Duration::minutes(9));
        body["challenge"].as_str().unwrap().to_string()
    };
    let key = hex::encode(new_key().verifying_key().as_bytes());
    let (api, key) = (&api, &key);
    let register = |mac: &str, challenge: &str, nonce: &str| {
        let body = json!({"mac": mac, "revocation_key": key, "challenge": challenge, "nonce": nonce});
        async move { api.post_json("/v1/devices", &body, None).await }
    };

    let (s, body) = api
        .post_json(
            "/v1/devices",
            &json!({"mac": "BC:00:00:00:00:01", "revocation_key": key}),
            None,
        )
        .await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "proof of work of 12 bits");
    let first = challenge().await;
    let nonce = solve(&first, 12);
    // Checked by hand: SHA-256(challenge ":" nonce) starts with 12 zero bits.
    let hash = <sha2::Sha256 as sha2::Digest>::digest(format!("{first}:{nonce}").as_bytes());
    assert_eq!((hash[0], hash[1] >> 4), (0, 0));
    let unsolved = (0u64..)
        .map(|n| n.to_string())
        .find(|n| {
            leading_zero_bits(&<sha2::Sha256 as sha2::Digest>::digest(
                format!("{first}:{n}").as_bytes(),
            )) < 12
        })
        .unwrap();
    let (s, body) = register("BC:00:00:00:00:01", &first, &unsolved).await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "body.nonce");
    let (s, body) = register("BC:00:00:00:00:01", &first, &nonce).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, body) = register("BC:00:00:00:00:02", &first, &nonce).await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "already used");
    let forged = first.replacen(".12.", ".1.", 1);
    let (s, body) = register("BC:00:00:00:00:02", &forged, "0").await;
    assert_error(
        s,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "not a challenge this server issued",
    );
    // Learning that a MAC is taken costs a solved challenge too, and uses it up.
    let second = challenge().await;
    let nonce = solve(&second, 12);
    let (s, body) = register("BC:00:00:00:00:01", &second, &nonce).await;
    assert_error(s, &body, StatusCode::CONFLICT, "already registered");
    let (s, body) = register("BC:00:00:00:00:02", &second, &nonce).await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "already used");
    // Ten minutes on, an unused challenge has expired.
    let third = challenge().await;
    let nonce = solve(&third, 12);
    api.clock.advance(Duration::minutes(11));
    let (s, body) = register("BC:00:00:00:00:02", &third, &nonce).await;
    assert_error(s, &body, StatusCode::UNPROCESSABLE_ENTITY, "expired");
    assert_eq!(api.count("SELECT count(*) FROM devices").await, 1);
}

#[tokio::test]
async fn one_address_cannot_mint_devices_at_will() {
    let api = Api::start(RestOptions {
        registration_rate_per_minute: 3,
        ..legacy()
    })
    .await;
    let first = api.register("AA:00:00:00:00:F1").await;
    api.register("AA:00:00:00:00:F2").await;
    api.register("AA:00:00:00:00:F3").await;
    let register = |mac: &str| {
        let body = json!({"mac": mac, "revocation_key": hex::encode(new_key().verifying_key().as_bytes())});
        api.http
            .post(api.url("/v1/devices"))
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let response = register("AA:00:00:00:00:F4").send().await.unwrap();
    let status = response.status();
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    // Three a minute: the next one in about 20 seconds.
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_error(
        status,
        &json_of(response).await,
        StatusCode::TOO_MANY_REQUESTS,
        "this address",
    );
    // Revocation shares the address's budget, and nothing was registered meanwhile.
    let (status, _) = api
        .revoke(&first.uuid, &revocation(&first.uuid, &first.key, api.now()))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(api.count("SELECT count(*) FROM devices").await, 3);
    assert_eq!(api.count("SELECT count(*) FROM revocations").await, 0);
    // A device's own routes are not held back by its address's registrations.
    let (s, body) = api.upload(&first, &json!([])).await;
    assert_ne!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
}
