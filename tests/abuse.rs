//! Abuse limits on the real server (`proxima serve` on loopback), asked as an attacker
//! would: a burst of 1,000 wrong staff passwords is refused unchecked after the failure
//! budget, without queueing password hashes, while a client at another address still logs
//! in; the Flight SQL handshake shares the REST logins' budget; every outcome is counted;
//! log lines carry request ids a client cannot forge; a removed user loses every login.

use crate::common;

/// `proxima serve` on loopback over a new store in `dir`, with `extra` flags.
fn serve(dir: &std::path::Path, extra: &[&str]) -> common::Server {
    let store = dir.join("store");
    let mut args = vec![
        "--data",
        store.to_str().unwrap(),
        "serve",
        "--http",
        "127.0.0.1:0",
        "--flight",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    common::Server::start(&args)
}

use std::collections::BTreeMap;

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::StreamExt as _;
use tonic::transport::Endpoint;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_wrong_passwords_is_refused_unchecked_and_others_still_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(
        dir.path(),
        &[
            "--login-rate",
            "2",
            "--login-user-rate",
            "100000",
            "--login-concurrency",
            "2",
        ],
    );
    let flight = server.line("Flight SQL listening on ");
    let flight = flight["Flight SQL listening on grpc://".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let password = server.password("tracer");
    server.drain();
    let token_url = format!("{}/v1/auth/token", server.api);

    // 1,000 wrong passwords from 127.0.0.1, 50 at a time.
    let attacker = reqwest::Client::new();
    let started = std::time::Instant::now();
    let statuses: Vec<(u16, bool)> = futures::stream::iter(0..1000)
        .map(|_| attacker.post(&token_url).basic_auth("tracer", Some("guess")).send())
        .buffer_unordered(50)
        .map(|response| {
            let response = response.unwrap();
            (
                response.status().as_u16(),
                response.headers().contains_key("retry-after"),
            )
        })
        .collect()
        .await;
    let elapsed = started.elapsed();
    let mut by_status = BTreeMap::<u16, usize>::new();
    for (status, _) in &statuses {
        *by_status.entry(*status).or_default() += 1;
    }
    // Every answer is a refusal; only wrong passwords that were hashed say 401: the budget
    // (2), the failure that found it empty, one more in the other hash slot, and for every
    // 30 s the burst lasted (the budget refills at 2 a minute) two more: the one that spends
    // the refill and the one beside it in the other slot that finds the bucket empty again.
    // (A slow refill keeps the address blocked well past the burst for the checks below.)
    assert!(by_status.keys().all(|s| [401, 429, 503].contains(s)), "{by_status:?}");
    let hashed = by_status.get(&401).copied().unwrap_or(0);
    let allowed = 4 + 2 * (elapsed.as_secs() as usize / 30);
    assert!(
        (2..=allowed).contains(&hashed),
        "{hashed} wrong passwords hashed (at most {allowed}): {by_status:?}"
    );
    // The rest were refused unchecked: 429 once the budget ran out, 503 while both hash
    // slots were busy (never a queue).
    assert!(by_status.get(&429).copied().unwrap_or(0) > 0, "{by_status:?}");
    assert!(
        statuses.iter().filter(|(s, _)| *s != 401).all(|(_, retry)| *retry),
        "every 429 and 503 says when to retry"
    );

    // The same address is refused even with the right password...
    let refused = attacker
        .post(&token_url)
        .basic_auth("tracer", Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let body = refused.text().await.unwrap();
    assert!(body.contains("too many failed logins from this address"), "{body}");
    // ... and so is its Flight SQL handshake: one budget for both services.
    let channel = Endpoint::from_shared(format!("http://{flight}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut flight_client = FlightSqlServiceClient::new(channel);
    let status = flight_client.handshake("tracer", &password).await.unwrap_err();
    assert!(status.to_string().contains("too many failed logins"), "{status}");

    // Another client (127.0.0.2, also loopback) logs in at once.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let admitted = other
        .post(&token_url)
        .basic_auth("tracer", Some(&password))
        .send()
        .await
        .unwrap();
    assert_eq!(admitted.status(), 200);

    // Every outcome is counted, as the metrics show.
    let metrics = other
        .get(format!("{}/metrics", server.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |outcome: &str| -> usize {
        let prefix = format!("proxima_logins{{outcome=\"{outcome}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map_or(0, |value| value.trim().parse().unwrap())
    };
    assert_eq!(count("wrong"), hashed);
    assert_eq!(count("ok"), 1);
    assert_eq!(
        count("throttled"),
        by_status.get(&429).copied().unwrap_or(0) + 2,
        "{metrics}"
    );
    assert_eq!(count("busy"), by_status.get(&503).copied().unwrap_or(0));
}

/// A process's peak resident memory so far (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arrow_ipc_bomb_is_refused_without_the_memory_it_asks_for() {
    use arrow::array::{RecordBatch, StringArray};
    use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &[]);
    let password = server.password("ingest");
    server.drain();

    // One row whose observer is 512 MiB of 'a': ZSTD makes it a few kilobytes, which a
    // reader would decompress into 512 MiB before looking at it.
    const DECOMPRESSED: usize = 512 << 20;
    let bomb = {
        let huge = "a".repeat(DECOMPRESSED);
        let batch = RecordBatch::try_from_iter([(
            "observer",
            Arc::new(StringArray::from(vec![huge.as_str()])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        let options = IpcWriteOptions::default()
            .try_with_compression(Some(arrow::ipc::CompressionType::ZSTD))
            .unwrap();
        let mut bytes = Vec::new();
        let mut writer = StreamWriter::try_new_with_options(&mut bytes, &batch.schema(), options).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        bytes
    };
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());

    let before = peak_rss(server.child.id());
    let response = reqwest::Client::new()
        .post(format!("{}/v1/observations:bulk", server.api))
        .basic_auth("ingest", Some(&password))
        .header("content-type", "application/vnd.apache.arrow.stream")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let body = response.text().await.unwrap();
    assert!(body.contains("compressed Arrow IPC buffers"), "{body}");
    // The server's peak memory grew by far less than what the bomb asked for.
    let grown = peak_rss(server.child.id()).saturating_sub(before);
    assert!(grown < 64 << 20, "peak RSS grew by {} MiB", grown >> 20);
    let health = reqwest::get(format!("{}/healthz", server.ops)).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_bodies_beyond_the_slots_are_refused_not_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &["--bulk-concurrency", "1"]);
    let password = server.password("ingest");
    server.drain();
    let url = format!("{}/v1/observations:bulk", server.api);
    let http = reqwest::Client::new();

    // A slow client holds the only slot: its body arrives a piece at a time.
    let (pieces, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let slow = tokio::spawn({
        let (http, url, password) = (http.clone(), url.clone(), password.clone());
        async move {
            http.post(url)
                .basic_auth("ingest", Some(password))
                .header("content-type", "application/x-ndjson")
                .body(reqwest::Body::wrap_stream(tokio_stream_of(rx)))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    pieces.send(Ok(b"{\"observer\": ".to_vec())).await.unwrap();
    // Another bulk request meanwhile: refused at once, told when to come back.
    let mut refused = None;
    for _ in 0..100 {
        let response = http
            .post(&url)
            .basic_auth("ingest", Some(&password))
            .header("content-type", "application/x-ndjson")
            .body("{}\n")
            .send()
            .await
            .unwrap();
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        // The slow request has not reached its slot yet.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let refused = refused.expect("a second bulk request is refused while the slot is held");
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(refused.text().await.unwrap().contains("--bulk-concurrency"));
    // The slow one finishes (its body is not a valid row: 422), and the slot is free again.
    pieces.send(Ok(b"1}\n".to_vec())).await.unwrap();
    drop(pieces);
    assert_eq!(slow.await.unwrap(), 422);
    let after = http
        .post(&url)
        .basic_auth("ingest", Some(&password))
        .header("content-type", "application/x-ndjson")
        .body("{}\n")
        .send()
        .await
        .unwrap();
    assert_ne!(after.status(), 503);
}

/// A stream of the pieces sent on `rx`.
fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_do_not_become_metric_labels() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve(dir.path(), &[]);
    server.drain();
    let http = reqwest::Client::new();
    for i in 0..50 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        let response = http
            .request(method, format!("{}/v1/alerts", server.api))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405);
    }
    let metrics = http
        .get(format!("{}/metrics", server.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("MADEUP"), "{metrics}");
    assert!(
        metrics.contains(r#"proxima_http_requests_total{route="/v1/alerts",method="other",status="405"} 50"#),
        "{metrics}"
    );
}

/// With `--log-format json` every line is one JSON object, and every line logged for a
/// request carries its request id, which the answer's `x-request-id` header returns: the
/// client's own if plausible; one that could forge a log field is replaced. Each route's
/// latency is a histogram on the operations port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_each_requests_id_and_a_client_cannot_choose_a_forged_one() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("stderr.log");
    let store = dir.path().join("store");
    let args = [
        "--data",
        store.to_str().unwrap(),
        "--log-format",
        "json",
        "serve",
        "--http",
        "127.0.0.1:0",
        "--flight",
        "127.0.0.1:0",
    ];
    let log = std::fs::File::create(&log_path).unwrap();
    // The server's own default log filter (no RUST_LOG): request ids must be there too.
    let mut server = common::Server::start_with(&args, &[("RUST_LOG", String::new())], log.into());
    server.drain();
    let http = reqwest::Client::new();
    let wrong_login = |id: &'static str| {
        http.post(format!("{}/v1/auth/token", server.api))
            .basic_auth("admin", Some("not the password"))
            .header("x-request-id", id)
            .send()
    };
    let plausible = wrong_login("login-attempt.7:a_b").await.unwrap();
    assert_eq!(plausible.status(), 401);
    assert_eq!(plausible.headers()["x-request-id"], "login-attempt.7:a_b");
    // Quotes and spaces could forge a field of a text log: replaced by a fresh id.
    let forged = wrong_login(r#"x" level="ERROR"#).await.unwrap();
    assert_eq!(forged.status(), 401);
    let replaced = forged.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(replaced.len(), 32, "{replaced}");
    assert!(replaced.bytes().all(|b| b.is_ascii_hexdigit()), "{replaced}");
    // No id sent: one is made.
    let anonymous = http.get(format!("{}/v1/alerts", server.api)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let made = anonymous.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(made, replaced);

    let metrics = http
        .get(format!("{}/metrics", server.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"proxima_http_request_duration_seconds_count{route="/v1/auth/token",method="POST"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"proxima_http_request_duration_seconds_count{route="/v1/alerts",method="GET"} 1"#),
        "{metrics}"
    );

    // Stop it, then read every line it logged.
    let _ = server.child.kill();
    let _ = server.child.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let refused_logins: Vec<&serde_json::Value> =
        lines.iter().filter(|line| line["target"] == "proxima::auth").collect();
    assert_eq!(refused_logins.len(), 2, "{text}");
    assert_eq!(refused_logins[0]["span"]["request_id"], "login-attempt.7:a_b", "{text}");
    assert_eq!(refused_logins[1]["span"]["request_id"], replaced.as_str(), "{text}");
    assert_eq!(refused_logins[0]["span"]["route"], "/v1/auth/token", "{text}");
    assert!(!text.contains("level=\\\"ERROR"), "{text}");
}

/// `proxima user add|list|remove` with a users file a test controls.
fn user(users: &std::path::Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"))
        .arg("user")
        .args(args)
        .arg("--users")
        .arg(users)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// The users file is watched: removing a user ends their Flight SQL login (a query it was
/// running is stopped) and their REST tokens, without a restart; a new password ends the
/// logins made with the old one; the others carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_user_loses_every_login_without_a_restart() {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    use futures::TryStreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    for (name, password) in [("ann", "ann's long password"), ("bob", "bob's long password")] {
        let added = user(&users, &["add", name, "--role", "tracer"], &format!("{password}\n"));
        assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    }
    let audit_key = dir.path().join("audit.key");
    let key = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"))
        .args(["audit", "key", "--out"])
        .arg(&audit_key)
        .output()
        .unwrap();
    assert!(key.status.success());
    let mut server = serve(
        dir.path(),
        &[
            "--users",
            users.to_str().unwrap(),
            "--audit-key",
            audit_key.to_str().unwrap(),
        ],
    );
    let flight = server.line("Flight SQL listening on ");
    let flight = flight
        .split("://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    server.drain();
    let connect = || async {
        let channel = Endpoint::from_shared(format!("http://{flight}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        FlightSqlServiceClient::new(channel)
    };
    let http = reqwest::Client::new();
    let rest_token = |name: &'static str, password: &'static str| {
        let request = http
            .post(format!("{}/v1/auth/token", server.api))
            .basic_auth(name, Some(password))
            .send();
        async move {
            let response = request.await.unwrap();
            assert_eq!(response.status(), 200);
            let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            body["token"].as_str().unwrap().to_string()
        }
    };
    let renews = |token: String| {
        let request = http
            .post(format!("{}/v1/auth/token", server.api))
            .bearer_auth(token)
            .send();
        async move { request.await.unwrap().status().as_u16() }
    };

    let mut ann = connect().await;
    ann.handshake("ann", "ann's long password").await.unwrap();
    let mut bob = connect().await;
    bob.handshake("bob", "bob's long password").await.unwrap();
    let ann_rest = rest_token("ann", "ann's long password").await;
    let bob_rest = rest_token("bob", "bob's long password").await;
    assert_eq!(renews(ann_rest.clone()).await, 200);
    // Ann starts a query that would run for minutes.
    let info = ann
        .execute("SELECT count(*) FROM generate_series(1, 100000000000)".into(), None)
        .await
        .unwrap();
    let long = ann.do_get(info.endpoint[0].ticket.clone().unwrap()).await.unwrap();
    let long = tokio::spawn(long.try_collect::<Vec<_>>());

    let listed = user(&users, &["list"], "");
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "ann\ttracer\nbob\ttracer\n");
    let removed = user(&users, &["remove", "ann"], "");
    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    let again = user(&users, &["remove", "ann"], "");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no user named 'ann'"));
    let listed = user(&users, &["list"], "");
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "bob\ttracer\n");

    // Her running query stops (the watcher checks every 2 s; a minute is the bound of a
    // hung test, not a speed target).
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(60), long)
        .await
        .expect("the removed user's query is stopped")
        .unwrap();
    let stopped = stopped.expect_err("stopped before its end").to_string();
    assert!(stopped.contains("its login ended"), "{stopped}");
    let ended = ann.execute("SELECT 1".into(), None).await.unwrap_err();
    assert!(
        ended.to_string().contains("unknown token") || ended.to_string().contains("this login has ended"),
        "{ended}"
    );
    assert_eq!(renews(ann_rest).await, 401);
    let mut ann_again = connect().await;
    assert!(ann_again.handshake("ann", "ann's long password").await.is_err());
    // Bob carries on, over both services.
    bob.execute("SELECT 1".into(), None).await.unwrap();
    assert_eq!(renews(bob_rest.clone()).await, 200);

    // Bob's password is changed: the logins made with the old one end, a new one works.
    let changed = user(&users, &["add", "bob", "--role", "tracer"], "bob's new long password\n");
    assert!(changed.status.success());
    let mut ended = false;
    for _ in 0..300 {
        if bob.execute("SELECT 1".into(), None).await.is_err() {
            ended = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        ended,
        "bob's old login still stands a minute after his password changed"
    );
    assert_eq!(renews(bob_rest).await, 401);
    let mut bob_again = connect().await;
    bob_again.handshake("bob", "bob's new long password").await.unwrap();
    bob_again.execute("SELECT 1".into(), None).await.unwrap();
}
