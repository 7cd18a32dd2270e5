//! Abuse limits on the real server (`proxima serve` on loopback), asked as an attacker
//! would: a burst of 1,000 wrong staff passwords is refused unchecked after the failure
//! budget, without queueing password hashes, while a client at another address still logs
//! in; the Flight SQL handshake shares the REST logins' budget; every outcome is counted.

mod common;

use std::collections::BTreeMap;

use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::StreamExt as _;
use tonic::transport::Endpoint;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_wrong_passwords_is_refused_unchecked_and_others_still_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mut server = common::Server::start(&[
        "--data",
        store.to_str().unwrap(),
        "serve",
        "--http",
        "127.0.0.1:0",
        "--flight",
        "127.0.0.1:0",
        "--login-rate",
        "10",
        "--login-user-rate",
        "100000",
        "--login-concurrency",
        "2",
    ]);
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
    // (10), the failure that found it empty, one more in the other hash slot, and one more
    // per 6 s the burst lasted (the budget refills at 10 a minute).
    assert!(by_status.keys().all(|s| [401, 429, 503].contains(s)), "{by_status:?}");
    let hashed = by_status.get(&401).copied().unwrap_or(0);
    let allowed = 12 + elapsed.as_secs() as usize / 6;
    assert!(
        (10..=allowed).contains(&hashed),
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
        .get(format!("{}/metrics", server.api))
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
