//! A 2xx means durable: the real `proxima serve` under sustained uploads, killed with
//! SIGKILL again and again, then restarted; every acknowledged observation must be
//! stored exactly once, and nothing may be stored twice or in part.

use crate::common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxima_engine::Store;
use serde_json::{Value, json};

const DEVICES: usize = 4;
const PER_REQUEST: usize = 8;
/// The `duration_s` tag of the keyed upload.
const KEYED_SEQ: i32 = 1_000_000;

type Serve = common::Server;

fn serve(store: &std::path::Path) -> Serve {
    // What is tested is durability: no proof of work at registration; phones of MACs.
    let mut server = common::Server::start(&[
        "--data",
        store.to_str().unwrap(),
        "serve",
        "--flight",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--flush-interval",
        "1s",
        "--device-rate",
        "0",
        "--registration-work",
        "0",
        "--accept-mac",
    ]);
    server.drain();
    server
}

const RFC8032_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

async fn register(http: &reqwest::Client, base: &str, i: usize) -> (String, String) {
    // A public key from RFC 8032's test vectors: these devices are never revoked.
    common::register_mac_phone(http, base, &format!("D0:00:00:00:00:{i:02X}"), RFC8032_KEY).await
}

/// Uploads requests of 8 observations tagged `duration_s = seq` until an upload fails
/// (the server was killed); records the acknowledged sequence numbers.
async fn upload_until_killed(base: String, token: String, next: Arc<Mutex<i32>>, acked: Arc<Mutex<BTreeSet<i32>>>) {
    let http = reqwest::Client::new();
    let now = chrono::Utc::now();
    loop {
        let seq = {
            let mut next = next.lock().unwrap();
            *next += 1;
            *next
        };
        let observations: Vec<Value> = (0..PER_REQUEST)
            .map(|k| {
                json!({"observed": format!("AA:BB:CC:00:00:{k:02X}"), "observed_at": (now - chrono::Duration::seconds(k as i64)).to_rfc3339(), "duration_s": seq})
            })
            .collect();
        let sent = http
            .post(format!("{base}/v1/observations"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Value::Array(observations).to_string())
            .send()
            .await;
        match sent {
            Ok(response) if response.status() == 200 => {
                acked.lock().unwrap().insert(seq);
            }
            Ok(response) => panic!("unexpected status {}", response.status()),
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_uploads_survive_kill_9_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let http = reqwest::Client::new();

    let mut server = serve(&store_dir);
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        devices.push(register(&http, &server.api, i).await);
    }
    // A keyed upload acknowledged just before a kill: its retry after the restart must be
    // recognised (answered again, stored once).
    let keyed = || {
        let observations: Vec<Value> = (0..PER_REQUEST)
            .map(|k| json!({"observed": "AA:BB:CC:00:00:99", "observed_at": (chrono::Utc::now() - chrono::Duration::seconds(k as i64)).to_rfc3339(), "duration_s": KEYED_SEQ}))
            .collect();
        Value::Array(observations).to_string()
    };
    let send_keyed = |base: String, body: String| {
        http.post(format!("{base}/v1/observations"))
            .header("authorization", format!("Bearer {}", devices[0].1))
            .header("content-type", "application/json")
            .header("idempotency-key", "retry-after-crash")
            .body(body)
            .send()
    };
    let keyed_body = keyed();
    let first = send_keyed(server.api.clone(), keyed_body.clone()).await.unwrap();
    assert_eq!(first.status(), 200);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    server = serve(&store_dir);
    let retry = send_keyed(server.api.clone(), keyed_body).await.unwrap();
    assert_eq!(retry.status(), 200);
    assert_eq!(
        retry.headers()["idempotent-replayed"],
        "true",
        "the key survived the kill"
    );

    let next: Vec<Arc<Mutex<i32>>> = (0..DEVICES).map(|_| Arc::default()).collect();
    let acked: Vec<Arc<Mutex<BTreeSet<i32>>>> = (0..DEVICES).map(|_| Arc::default()).collect();

    for round in 0..4 {
        if round > 0 {
            server = serve(&store_dir);
        }
        let uploaders: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(i, (_, token))| {
                tokio::spawn(upload_until_killed(
                    server.api.clone(),
                    token.clone(),
                    Arc::clone(&next[i]),
                    Arc::clone(&acked[i]),
                ))
            })
            .collect();
        // Kill at a different moment each round: mid-upload, and around flushes (1 s).
        let started = Instant::now();
        tokio::time::sleep(Duration::from_millis(700 + 450 * round)).await;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        for uploader in uploaders {
            uploader.await.unwrap();
        }
        let total: usize = acked.iter().map(|a| a.lock().unwrap().len()).sum();
        assert!(
            total > 0,
            "round {round}: nothing acknowledged in {:?}",
            started.elapsed()
        );
    }

    // A clean start replays what the WAL still holds; SIGTERM flushes it all.
    let mut server = serve(&store_dir);
    common::terminate(&mut server.child);

    let stored = common::rows_by_request(&Store::local(&store_dir).unwrap()).await;
    for ((observer, seq), count) in &stored {
        assert_eq!(
            *count, PER_REQUEST as i64,
            "{observer} request {seq} stored {count} times its rows"
        );
    }
    assert_eq!(
        stored.get(&(devices[0].0.clone(), KEYED_SEQ)),
        Some(&(PER_REQUEST as i64)),
        "the keyed upload is stored once, not once per try"
    );
    let mut acknowledged = 0;
    for (i, (uuid, _)) in devices.iter().enumerate() {
        for seq in acked[i].lock().unwrap().iter() {
            acknowledged += 1;
            assert!(
                stored.contains_key(&(uuid.clone(), *seq)),
                "acknowledged request {seq} of device {i} is missing"
            );
        }
    }
    assert!(
        acknowledged > 50,
        "only {acknowledged} requests acknowledged: the test did not load the server"
    );
    eprintln!(
        "{acknowledged} acknowledged requests, {} stored (the rest were in flight at a kill)",
        stored.len()
    );
}
