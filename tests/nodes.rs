//! Stateless ingest nodes: two real `proxima serve` processes on one S3 bucket (moto on
//! loopback), each with its own WAL, and phones (the reference phone, `proxima phone`)
//! that register on one node and use the other. A MAC is registered once across both; a
//! token works on the node that did not issue it at once; a node killed with SIGKILL and
//! restarted loses and doubles nothing it acknowledged; an upload acknowledged by one node
//! and retried on the other with its idempotency key is stored once; a tracer's token from
//! one node reports a case on the other, whose alert a phone fetches from the first; a
//! device revoked on one node is refused by the other within `--registry-refresh`. The
//! store is encrypted and keeps the identifier keys (`proxima id-key new --in-store`), so
//! the nodes are given the master key and nothing else: the identifiers one node issues,
//! the other resolves.
//!
//! Needs `moto_server` (see `common::Moto`): without it the test says so and passes, except
//! under CI, where it fails.

use crate::common;
use common::{eventually, phone, phone_ok};

use base64::Engine as _;

use std::path::Path;
use std::process::{Command, Output};

const BUCKET: &str = "nodes";

struct Nodes<'a> {
    moto: &'a common::Moto,
    dir: &'a Path,
    master_key: std::path::PathBuf,
}

impl Nodes<'_> {
    fn url() -> String {
        format!("s3://{BUCKET}/store")
    }

    /// `proxima --data s3://… <args>` on the bucket.
    fn proxima(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_proxima"))
            .args(["--data", &Self::url()])
            .args(["--master-key-file", self.master_key.to_str().unwrap()])
            .args(args)
            .envs(self.moto.env())
            .env("PROXIMA_AUDIT_DIR", self.dir.join("cli-audit"))
            .env("RUST_LOG", "warn")
            .env_remove("PROXIMA_MASTER_KEY")
            .env_remove("PROXIMA_MASTER_KEY_FILE")
            .output()
            .unwrap()
    }

    /// A serving node named `name` (its own WAL and audit folders, kept across restarts).
    fn serve(&self, name: &str) -> common::Server {
        let (wal, audit) = (
            self.dir.join(format!("{name}-wal")),
            self.dir.join(format!("{name}-audit")),
        );
        // One users file for every node, as a deployment has: a staff token names a user
        // of it, whichever node issued it.
        let (users, audit_key) = (self.dir.join("users.toml"), self.dir.join("audit.key"));
        let args = [
            "--data",
            &Self::url(),
            "--master-key-file",
            self.master_key.to_str().unwrap(),
            "serve",
            "--http",
            "127.0.0.1:0",
            "--flight",
            "127.0.0.1:0",
            "--wal-dir",
            wal.to_str().unwrap(),
            "--audit-dir",
            audit.to_str().unwrap(),
            "--flush-interval",
            "1s",
            "--registry-refresh",
            "1s",
            "--registration-work",
            "0",
            "--device-rate",
            "0",
            "--accept-mac",
            "--users",
            users.to_str().unwrap(),
            "--audit-key",
            audit_key.to_str().unwrap(),
        ];
        common::Server::start_with_env(&args, &self.moto.env())
    }

    /// A full session on the bucket, resolving identifiers with the keys it keeps.
    async fn factory(&self) -> proxima_engine::SessionFactory {
        let master = proxima_engine::keys::MasterKeys::load(&self.master_key).unwrap();
        let store = self
            .moto
            .open_store(&Self::url())
            .unwrap()
            .with_keys(std::sync::Arc::new(master));
        let keys = proxima_storage::id_keys::load(&store).await.unwrap().unwrap();
        proxima_engine::SessionFactory::new(
            store,
            proxima_engine::SessionOptions {
                identifiers: Some(std::sync::Arc::new(proxima_engine::ephemeral::Identifiers::new(
                    keys,
                    std::time::Duration::from_secs(15 * 60),
                    proxima_engine::ephemeral::DEFAULT_TOLERANCE,
                ))),
                ..proxima_engine::SessionOptions::default()
            },
        )
        .unwrap()
    }
}

/// Polls `sql` until its first column is `expected`, for up to a minute.
async fn rows_become(factory: &proxima_engine::SessionFactory, sql: &str, expected: &[&str]) {
    let mut last = Vec::new();
    for _ in 0..240 {
        last = common::column(factory, sql).await;
        if last == expected {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("{sql} gave {last:?}, not {expected:?}, for a minute");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_bucket_share_devices_revocations_and_cases_and_survive_kill_9() {
    let Some(moto) = common::Moto::start_or_skip("the two-node test") else {
        return;
    };
    moto.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let nodes = Nodes {
        moto: &moto,
        dir: dir.path(),
        master_key: dir.path().join("master.key"),
    };
    for step in [&["key", "init"][..], &["id-key", "new", "--in-store"]] {
        let made = nodes.proxima(step);
        assert!(
            made.status.success(),
            "{step:?}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    // The keys are in the store, wrapped: a node given a key file as well is refused.
    let file = dir.path().join("id.key");
    let made = nodes.proxima(&["id-key", "new", "--out", file.to_str().unwrap()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let both = nodes.proxima(&["sql", "--id-key", file.to_str().unwrap(), "-c", "SELECT 1"]);
    let err = String::from_utf8_lossy(&both.stderr);
    assert!(
        !both.status.success() && err.contains("the store keeps its own identifier keys"),
        "{err}"
    );
    let listed = nodes.proxima(&["id-key", "list", "--in-store"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).starts_with("key 1: current"),
        "{listed:?}"
    );

    let (password, ingest_password) = ("tracer's long password", "gateway's long password");
    let users = dir.path().join("users.toml");
    proxima_engine::users::add_user(&users, "tracer", proxima_engine::Role::Tracer, password).unwrap();
    proxima_engine::users::add_user(&users, "ingest", proxima_engine::Role::Ingest, ingest_password).unwrap();
    let key = nodes.proxima(&["audit", "key", "--out", dir.path().join("audit.key").to_str().unwrap()]);
    assert!(key.status.success(), "{}", String::from_utf8_lossy(&key.stderr));
    let mut a = nodes.serve("a");
    a.drain();
    let mut b = nodes.serve("b");
    b.drain();
    let state = |name: &str| dir.path().join(format!("{name}.json"));

    // One device per MAC across the nodes.
    let mac = "AA:00:00:00:00:01";
    let x = phone_ok(&state("x"), &a.api, &["register", "--mac", mac]);
    let err = phone(&state("y"), &b.api, &["register", "--mac", mac]).unwrap_err();
    assert!(err.contains("409") && err.contains("already registered"), "{err}");

    // V registers on A and W on B; each fetches its identifiers from the other node.
    let v = phone_ok(&state("v"), &a.api, &["register"]);
    let w = phone_ok(&state("w"), &b.api, &["register"]);
    phone_ok(&state("v"), &b.api, &["ids", "--count", "2"]);
    phone_ok(&state("w"), &a.api, &["ids", "--count", "2"]);
    let v_id = phone_ok(&state("v"), &b.api, &["current-id"]);
    let w_id = phone_ok(&state("w"), &a.api, &["current-id"]);

    // V uploads on B, which is killed and restarted half-way; W uploads on A.
    let mut acked = 0;
    for round in 0..6 {
        if round == 3 {
            b.child.kill().unwrap();
            b.child.wait().unwrap();
            b = nodes.serve("b");
            b.drain();
        }
        phone_ok(&state("v"), &b.api, &["upload", "--heard", &w_id]);
        acked += 1;
    }
    phone_ok(&state("w"), &a.api, &["upload", "--heard", &v_id]);

    // W's keyed upload is acknowledged by A; its retry on B is answered again, not stored.
    let w_token = serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(state("w")).unwrap()).unwrap()
        ["upload_token"]
        .as_str()
        .unwrap()
        .to_string();
    let at = |s: i64| (chrono::Utc::now() - chrono::Duration::seconds(s)).to_rfc3339();
    let body = serde_json::json!([
        {"observed": v_id, "observed_at": at(5), "duration_s": 60},
        {"observed": v_id, "observed_at": at(4), "duration_s": 60},
    ])
    .to_string();
    let keyed = |api: &str, body: &str| {
        reqwest::Client::new()
            .post(format!("{api}/v1/observations"))
            .bearer_auth(&w_token)
            .header("content-type", "application/json")
            .header("idempotency-key", "retried-elsewhere")
            .body(body.to_string())
            .send()
    };
    let first = keyed(&a.api, &body).await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let retry = keyed(&b.api, &body).await.unwrap();
    assert_eq!(retry.status(), 200);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.text().await.unwrap(), r#"{"accepted":2}"#);
    // The key with another body on B, which holds no answer for it itself: the registry's
    // digest says it was another body.
    let other = serde_json::json!([{"observed": v_id, "observed_at": at(3), "duration_s": 60}]).to_string();
    let reused = keyed(&b.api, &other).await.unwrap();
    assert_eq!(reused.status(), 422);
    assert!(reused.text().await.unwrap().contains("idempotency_key_reused"));

    // A gateway's bulk upload on B names U, registered on A only (B has never seen it), and
    // is taken; one naming a device no node registered is refused, naming it.
    let u = phone_ok(&state("u"), &a.api, &["register"]);
    let bulk = |observer: &str| {
        let at = (chrono::Utc::now() - chrono::Duration::seconds(3)).to_rfc3339();
        let line = serde_json::json!({"observer": observer, "observed": v_id, "observed_at": at, "duration_s": 60});
        reqwest::Client::new()
            .post(format!("{}/v1/observations:bulk", b.api))
            .basic_auth("ingest", Some(&ingest_password))
            .header("content-type", "application/x-ndjson")
            .body(format!("{line}\n"))
            .send()
    };
    let taken = bulk(&u).await.unwrap();
    assert_eq!(taken.status(), 200, "{}", taken.text().await.unwrap());
    let stranger = "00000000-0000-4000-8000-0000000000ff";
    let refused = bulk(stranger).await.unwrap();
    assert_eq!(refused.status(), 422);
    let refused = refused.text().await.unwrap();
    assert!(
        refused.contains(&format!(
            "line 1.observer: {stranger} is not a registered, unrevoked device"
        )),
        "{refused}"
    );

    // Every acknowledged sighting is stored once, once each node has flushed.
    let factory = nodes.factory().await;
    let v_sightings = format!("SELECT count(*) FROM observations WHERE observer = '{v}'");
    rows_become(&factory, &v_sightings, &["6"]).await;
    assert_eq!(acked, 6);
    let w_sightings = format!("SELECT count(*) FROM observations WHERE observer = '{w}'");
    rows_become(&factory, &w_sightings, &["3"]).await;
    let u_sightings = format!("SELECT count(*) FROM observations WHERE observer = '{u}'");
    rows_become(&factory, &u_sightings, &["1"]).await;
    // No device twice, and the MAC once.
    let twice = "SELECT count(*) - count(DISTINCT device_uuid) FROM devices";
    assert_eq!(common::column(&factory, twice).await, ["0"]);
    let with_mac = format!("SELECT count(*) FROM devices WHERE mac = '{mac}'");
    assert_eq!(common::column(&factory, &with_mac).await, ["1"]);

    // X, registered on A, uploads on B (which learns it); then another process's retention
    // removes X (here only its registry part, through the registry as retention does): both
    // nodes, which hold X in memory, refuse it within their refresh.
    phone_ok(&state("x"), &b.api, &["upload", "--heard", &w_id]);
    let registry = proxima_storage::registry::SharedRegistry::open(factory.store())
        .await
        .unwrap();
    assert_eq!(registry.forget(std::slice::from_ref(&x)).await.unwrap(), 1);
    for node in [&a, &b] {
        eventually("a removed device is refused by every node", || {
            phone(&state("x"), &node.api, &["upload", "--heard", &w_id]).is_err_and(|err| err.contains("401"))
        });
    }

    // The tracer signs in on A and reports W on B with A's token; V, its contact, fetches
    // the alert from A.
    let http = reqwest::Client::new();
    let token: serde_json::Value = http
        .post(format!("{}/v1/auth/token", a.api))
        .basic_auth("tracer", Some(&password))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|text| serde_json::from_str(&text).unwrap())
        .unwrap();
    let token = token["token"].as_str().unwrap();
    let report = |token: String| {
        http.post(format!("{}/v1/cases", b.api))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(serde_json::json!({"device_uuid": w, "status": "confirmed"}).to_string())
            .send()
    };
    // The same token with one bit of its signature flipped.
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .unwrap();
    signature[0] ^= 1;
    let forged = format!(
        "{signed}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature)
    );
    assert_eq!(
        report(forged).await.unwrap().status(),
        401,
        "a token must be A's signature"
    );
    let opened = report(token.to_string()).await.unwrap().text().await.unwrap();
    let opened: serde_json::Value = serde_json::from_str(&opened).unwrap();
    assert_eq!(opened["alerts"]["high"], 1, "{opened}");
    eventually("V's alert is served by A", || {
        phone_ok(&state("v"), &a.api, &["alerts"]).contains("high")
    });

    // V revokes on A: A refuses it at once, B within its refresh.
    phone_ok(&state("v"), &a.api, &["revoke"]);
    let err = phone(&state("v"), &a.api, &["upload", "--heard", &w_id]).unwrap_err();
    assert!(err.contains("401"), "{err}");
    eventually("B refuses the device revoked on A", || {
        phone(&state("v"), &b.api, &["upload", "--heard", &w_id]).is_err_and(|err| err.contains("401"))
    });
    // ... and a node started now refuses it too.
    drop(a);
    let mut restarted = nodes.serve("a");
    restarted.drain();
    let err = phone(&state("v"), &restarted.api, &["upload", "--heard", &w_id]).unwrap_err();
    assert!(err.contains("401"), "{err}");
    // W, never revoked, still uploads on both.
    phone_ok(&state("w"), &restarted.api, &["upload", "--heard", &v_id]);
    phone_ok(&state("w"), &b.api, &["upload", "--heard", &v_id]);

    // The store goes away: a node that cannot read the revocations made elsewhere says it
    // is not ready (3 refreshes + 10 s), so a load balancer stops sending it phones.
    let ready = || async {
        let response = reqwest::get(format!("{}/readyz", b.ops)).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(ready().await.0, 200);
    moto.kill();
    let cut_off = std::time::Instant::now();
    let (status, body) = loop {
        let (status, body) = ready().await;
        if status == 503 || cut_off.elapsed() > std::time::Duration::from_secs(60) {
            break (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("shared registry has not been read for over 13 s"),
        "{body}"
    );
}
