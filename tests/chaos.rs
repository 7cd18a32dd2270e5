//! Chaos: the real `proxima serve` under upload load, killed with SIGKILL 20 times, each time
//! in the middle of a piece of its write side's work (4 times each: a flush, a compaction,
//! an index build, retention, an erasure), then restarted. The test plants the work each
//! round needs while the server is down (small files for compaction, a day without its
//! index, days past retention) or causes it (a phone's revocation), waits for the server's
//! own log to say the work started (`--log-format json`, debug lines of `proxima_storage`),
//! and kills after a random delay (seeded: `PROXIMA_CHAOS_SEED`).
//!
//! At the end, exact counts: every acknowledged upload stored exactly once, every planted row
//! exactly once (none of the expired days), no row of a revoked phone anywhere (`proxima
//! erasure verify`), and each day's `observed_index` holding exactly its observations.
//!
//! A killed process leaves its leases (compaction, housekeeping, erasure) to expire after 15
//! minutes, during which no other process does that work; the test stands in for that wait
//! by deleting the lease folders after each kill.
//!
//! Three more: a full disk under the write-ahead log (a tmpfs the test mounts: root, as in
//! CI), `fsync` failing with EIO under it (a shared library the test builds with `cc` and
//! preloads into the server: the kernel has no device-mapper here for dm-flakey), and S3
//! behind a fault-injecting proxy in front of moto. To look into a failure:
//! `CHAOS_DEBUG=1` sends the servers' logs to the terminal (the log-driven waits then time
//! out), `CHAOS_LOG` replaces their filter, `CHAOS_NO_FAULTS=1` keeps the proxy clean (the
//! S3 test then fails for want of faults, by design).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, AsArray, Int16Array, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::Int64Type;
use chrono::{NaiveDate, Utc};
use ed25519_dalek::{Signer as _, SigningKey};
use proxima_engine::{SessionFactory, SessionOptions, Store, Table};
use proxima_storage::PartitionWriter;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

const UPLOADERS: usize = 4;
const PER_REQUEST: usize = 8;
/// Rows of the phones the test revokes carry `duration_s` from here.
const VICTIM_SEQ: i32 = 3_000_000;
/// The planted rows' observer (never registered: the store does not ask).
const PLANTED: &str = "0000c4a0-0000-4000-8000-000000000001";
const KILLS: usize = 20;

/// The work a kill interrupts, with the log lines that say it started and ended, and the
/// longest random delay after the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Flush,
    Compaction,
    IndexBuild,
    Retention,
    Erasure,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Flush,
        Phase::Compaction,
        Phase::IndexBuild,
        Phase::Retention,
        Phase::Erasure,
    ];

    fn started(self) -> &'static str {
        match self {
            Phase::Flush => "flushing",
            Phase::Compaction => "compacting",
            Phase::IndexBuild => "rebuilding the observed index",
            Phase::Retention => "retention deleting day folder",
            Phase::Erasure => "rewriting a file without erased devices' rows",
        }
    }

    fn ended(self) -> &'static str {
        match self {
            Phase::Flush => "flushed",
            Phase::Compaction => "compacted",
            Phase::IndexBuild => "observed index rebuilt",
            Phase::Retention => "retention deleted day folder",
            Phase::Erasure => "rewrote a file without erased devices' rows",
        }
    }

    fn max_delay_ms(self) -> u64 {
        match self {
            Phase::Flush => 2,
            Phase::Retention => 3,
            Phase::Compaction | Phase::IndexBuild | Phase::Erasure => 120,
        }
    }
}

const LOG_FILTER: &str = "warn,proxima_storage::flush=debug,proxima_storage::compaction=debug,\
                          proxima_storage::index_build=debug,proxima_storage::retention=debug,\
                          proxima_storage::erasure=debug";

/// A server whose log messages arrive on `log`.
struct Node {
    server: common::Server,
    log: UnboundedReceiver<String>,
}

fn serve(store: &Path) -> Node {
    start(&["--data", store.to_str().unwrap()], &[], &[])
}

/// `proxima <before> serve <the test's flags> <after>`, its log on `log`.
fn start(before: &[&str], after: &[&str], env: &[(&str, String)]) -> Node {
    let mut args: Vec<&str> = before.to_vec();
    args.extend([
        "--log-format",
        "json",
        "serve",
        "--flight",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--flush-interval",
        "1s",
        "--erasure-interval",
        "1s",
        "--sweep-grace",
        "1s",
        "--device-rate",
        "0",
        "--registration-work",
        "0",
        "--accept-mac",
    ]);
    args.extend(after);
    let mut env = env.to_vec();
    env.push((
        "RUST_LOG",
        std::env::var("CHAOS_LOG").unwrap_or_else(|_| LOG_FILTER.to_string()),
    ));
    let mut server = common::Server::start_with(
        &args,
        &env,
        if std::env::var_os("CHAOS_DEBUG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::piped()
        },
    );
    server.drain();
    let (tx, log) = tokio::sync::mpsc::unbounded_channel();
    let Some(stderr) = server.child.stderr.take() else {
        return Node { server, log };
    };
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let message = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["fields"]["message"].as_str().map(str::to_string))
                .unwrap_or(line);
            if tx.send(message).is_err() {
                break;
            }
        }
    });
    Node { server, log }
}

/// Reads the log until `message`, for at most `within`.
async fn wait_for(log: &mut UnboundedReceiver<String>, message: &str, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        while let Some(line) = log.recv().await {
            if line == message {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

const RFC8032_KEY: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fn observations(seq: i32) -> String {
    let now = Utc::now();
    let rows: Vec<Value> = (0..PER_REQUEST)
        .map(|k| {
            json!({"observed": format!("AA:BB:CC:00:00:{k:02X}"),
                   "observed_at": (now - chrono::Duration::seconds(k as i64)).to_rfc3339(),
                   "duration_s": seq})
        })
        .collect();
    Value::Array(rows).to_string()
}

async fn upload(http: &reqwest::Client, base: &str, token: &str, seq: i32) -> Result<(), String> {
    let response = http
        .post(format!("{base}/v1/observations"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(observations(seq))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    match response.status().as_u16() {
        200 => Ok(()),
        status => panic!(
            "upload answered {status}: {}",
            response.text().await.unwrap_or_default()
        ),
    }
}

/// Uploads tagged requests until one fails (the server was killed); records the acknowledged.
async fn upload_until_killed(base: String, token: String, next: Arc<Mutex<i32>>, acked: Arc<Mutex<BTreeSet<i32>>>) {
    let http = reqwest::Client::new();
    loop {
        let seq = {
            let mut next = next.lock().unwrap();
            *next += 1;
            *next
        };
        if upload(&http, &base, &token, seq).await.is_err() {
            return;
        }
        acked.lock().unwrap().insert(seq);
        // Load, not a flood: the rounds' work must get the CPU too.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Commits `files` files of 5 planted rows each into `day` of observations, each row's
/// `duration_s` from `first` up; returns the values written.
async fn plant(writer: &PartitionWriter, day: NaiveDate, files: usize, first: i32) -> Vec<i32> {
    let noon = day.and_hms_opt(12, 0, 0).unwrap().and_utc();
    let mut written = Vec::new();
    for f in 0..files {
        let tags: Vec<i32> = (0..5).map(|k| first + (f * 5) as i32 + k).collect();
        let times: Vec<i64> = (0..5)
            .map(|k| (noon + chrono::Duration::seconds(k)).timestamp_micros())
            .collect();
        let batch = RecordBatch::try_new(
            proxima_engine::schema::OBSERVATIONS_FILE.clone(),
            vec![
                Arc::new(StringArray::from(vec![PLANTED; 5])) as ArrayRef,
                Arc::new(StringArray::from(vec!["AA:BB:CC:00:01:00"; 5])),
                Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
                Arc::new(Int32Array::from(tags.clone())),
                Arc::new(Int16Array::from(vec![Some(-60); 5])),
                Arc::new(Int16Array::from(vec![None::<i16>; 5])),
                Arc::new(StringArray::from(vec![None::<&str>; 5])),
            ],
        )
        .unwrap();
        let mut transaction = writer.begin();
        transaction
            .write_file(Table::Observations, Some(day), &[batch])
            .await
            .unwrap();
        transaction.commit().await.unwrap();
        written.extend(tags);
    }
    written
}

/// Renames every data file in `folder` to a name made an hour ago (a UUID v7 of that time),
/// as files a process wrote then are named: the index rebuild leaves alone a day with a
/// file newer than ten minutes (a writer may be publishing its companion).
fn backdate(folder: &Path) {
    let hour_ago = Utc::now() - chrono::Duration::hours(1);
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("part-") && name.ends_with(".parquet") {
            let timestamp = uuid::Timestamp::from_unix(
                uuid::NoContext,
                hour_ago.timestamp() as u64,
                rand::random::<u32>() % 1_000_000_000,
            );
            let renamed = folder.join(format!("part-{}.parquet", uuid::Uuid::new_v7(timestamp)));
            std::fs::rename(&path, renamed).unwrap();
        }
    }
}

/// Signs and sends a phone's revocation of its device.
async fn revoke(http: &reqwest::Client, base: &str, uuid: &str, key: &SigningKey) {
    let timestamp = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let message = proxima_ingest::rest::devices::revocation_message(uuid, &timestamp, &nonce);
    let signature = hex::encode(key.sign(message.as_bytes()).to_bytes());
    let response = http
        .delete(format!("{base}/v1/devices/{uuid}"))
        .header("content-type", "application/json")
        .body(json!({"timestamp": timestamp, "nonce": nonce, "signature": signature}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "{}", response.text().await.unwrap_or_default());
}

fn proxima(store: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"))
        .args(["--data", store.to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "error")
        .env_remove("PROXIMA_MASTER_KEY")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "proxima {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_in_the_middle_of_every_kind_of_work_loses_and_repeats_nothing() {
    let seed: u64 = std::env::var("PROXIMA_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_203);
    eprintln!("PROXIMA_CHAOS_SEED={seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::local(&root).unwrap();
    let writer = PartitionWriter::new(store.clone(), "chaos test");
    let http = reqwest::Client::new();
    let today = proxima_engine::store::today_utc();

    let mut node = serve(&root);
    let mut uploaders = Vec::new();
    for i in 0..UPLOADERS {
        uploaders.push(
            common::register_mac_phone(&http, &node.server.api, &format!("D0:00:00:00:00:{i:02X}"), RFC8032_KEY).await,
        );
    }
    let next: Vec<Arc<Mutex<i32>>> = (0..UPLOADERS).map(|_| Arc::default()).collect();
    let acked: Vec<Arc<Mutex<BTreeSet<i32>>>> = (0..UPLOADERS).map(|_| Arc::default()).collect();
    // Planted rows expected once each at the end, and those of expired days (none).
    let mut planted_kept: Vec<i32> = Vec::new();
    let mut planted_expired: Vec<i32> = Vec::new();
    let mut victims: Vec<String> = Vec::new();
    let mut mid: BTreeMap<Phase, usize> = BTreeMap::new();

    for round in 0..KILLS {
        let phase = Phase::ALL[round % Phase::ALL.len()];
        let tag = 2_000_000 + (round as i32) * 10_000;
        if round > 0 {
            // The work this round interrupts, planted while the server is down.
            match phase {
                Phase::Compaction => planted_kept.extend(plant(&writer, today, 9, tag).await),
                Phase::IndexBuild => {
                    // A day past the recent ones compaction looks at, written (by its files'
                    // names) an hour ago and without its index: what a rebuild is for.
                    let day = today - chrono::Days::new(8 + (round / Phase::ALL.len()) as u64);
                    planted_kept.extend(plant(&writer, day, 3, tag).await);
                    backdate(&root.join(format!("observations/day={day}")));
                    std::fs::remove_dir_all(root.join(format!("observed_index/day={day}"))).unwrap();
                }
                Phase::Retention => {
                    for back in [30, 31, 32, 33] {
                        planted_expired
                            .extend(plant(&writer, today - chrono::Days::new(back), 4, tag + back as i32 * 100).await);
                    }
                }
                Phase::Flush | Phase::Erasure => {}
            }
            node = serve(&root);
        }
        let load: Vec<_> = uploaders
            .iter()
            .enumerate()
            .map(|(i, (_, token))| {
                tokio::spawn(upload_until_killed(
                    node.server.api.clone(),
                    token.clone(),
                    Arc::clone(&next[i]),
                    Arc::clone(&acked[i]),
                ))
            })
            .collect();
        if phase == Phase::Erasure {
            // A phone with rows in the store revokes itself; the next erasure round rewrites
            // every file that holds them.
            let key = SigningKey::from_bytes(&[round as u8 + 1; 32]);
            let mac = format!("E0:00:00:00:00:{round:02X}");
            let (uuid, token) = common::register_mac_phone(
                &http,
                &node.server.api,
                &mac,
                &hex::encode(key.verifying_key().to_bytes()),
            )
            .await;
            for seq in 0..3 {
                upload(&http, &node.server.api, &token, VICTIM_SEQ + seq).await.unwrap();
            }
            // The second flush from now began after the uploads: the rows are in files.
            for _ in 0..2 {
                assert!(
                    wait_for(&mut node.log, "flushed", Duration::from_secs(30)).await,
                    "round {round}: no flush"
                );
            }
            revoke(&http, &node.server.api, &uuid, &key).await;
            victims.push(uuid);
        }
        assert!(
            wait_for(&mut node.log, phase.started(), Duration::from_secs(60)).await,
            "round {round}: the server never started its {phase:?}"
        );
        let delay = rng.random_range(0..=phase.max_delay_ms());
        tokio::time::sleep(Duration::from_millis(delay)).await;
        node.server.child.kill().unwrap(); // SIGKILL
        node.server.child.wait().unwrap();
        // What the process logged before it died: did the interrupted work end first?
        let mut ended = false;
        while let Some(line) = node.log.recv().await {
            if line == phase.ended() {
                ended = true;
            } else if line == phase.started() {
                ended = false;
            }
        }
        if !ended {
            *mid.entry(phase).or_default() += 1;
        }
        eprintln!(
            "round {round}: killed {delay} ms into a {phase:?}{}",
            if ended { " (it had ended)" } else { "" }
        );
        for uploader in load {
            uploader.await.unwrap();
        }
        // The stand-in for the leases' expiry (see the module's doc).
        let _ = std::fs::remove_dir_all(root.join("_leases"));
        let _ = std::fs::remove_dir_all(root.join("_erasure/lease"));
    }
    let interrupted: usize = mid.values().sum();
    eprintln!("{interrupted} of {KILLS} kills landed mid-work: {mid:?}");
    assert!(
        interrupted >= KILLS / 2,
        "too few kills landed in the middle of the work ({mid:?}): the test tests too little"
    );

    // A clean start replays the WAL; SIGTERM flushes it; one maintenance round finishes what
    // the kills left (erasures, compactions, indexes, retention).
    let mut node = serve(&root);
    common::terminate(&mut node.server.child);
    let _ = std::fs::remove_dir_all(root.join("_leases"));
    let _ = std::fs::remove_dir_all(root.join("_erasure/lease"));
    // Twice: the first round finishes what the kills left (an erasure may replace files as it
    // does), the second sweeps what the first replaced, once past the grace.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1_100)).await; // past the sweep grace
        proxima(&root, &["maintain", "--once", "--sweep-grace", "1s"]);
    }
    let verified = proxima(&root, &["erasure", "verify"]);
    assert!(
        verified.starts_with(&format!("ok: {} erasure(s) checked", victims.len())),
        "{verified}"
    );

    let factory = SessionFactory::new(store.clone(), SessionOptions::default()).unwrap();
    let ctx = factory.session().await.unwrap();
    let stored = common::rows_by_request(&store).await;
    // Uploads: every acknowledged request stored, none twice or in part.
    let mut acknowledged = 0;
    for (i, (uuid, _)) in uploaders.iter().enumerate() {
        for seq in acked[i].lock().unwrap().iter() {
            acknowledged += 1;
            assert_eq!(
                stored.get(&(uuid.clone(), *seq)),
                Some(&(PER_REQUEST as i64)),
                "acknowledged request {seq} of uploader {i}"
            );
        }
    }
    for ((observer, seq), count) in &stored {
        if observer == PLANTED {
            assert_eq!(*count, 1, "planted row {seq} stored {count} times");
        } else {
            assert_eq!(
                *count, PER_REQUEST as i64,
                "{observer} request {seq} stored {count} times its rows"
            );
        }
    }
    // Planted rows: once each, but none of the days past retention.
    let planted: BTreeSet<i32> = stored
        .keys()
        .filter(|(observer, _)| observer == PLANTED)
        .map(|(_, seq)| *seq)
        .collect();
    assert_eq!(planted, planted_kept.iter().copied().collect::<BTreeSet<_>>());
    assert!(!planted_expired.is_empty() && planted_expired.iter().all(|seq| !planted.contains(seq)));
    // Revoked phones: no row of theirs anywhere.
    for victim in &victims {
        assert!(
            stored.keys().all(|(observer, _)| observer != victim),
            "a revoked phone's rows survived"
        );
    }
    // Each day's index holds exactly its observations.
    let per_day = |table: &'static str| {
        let ctx = ctx.clone();
        async move {
            let batches = ctx
                .sql(&format!(
                    "SELECT arrow_cast(day, 'Utf8'), count(*) FROM {table} GROUP BY day"
                ))
                .await
                .unwrap()
                .collect()
                .await
                .unwrap();
            let mut days = BTreeMap::new();
            for batch in &batches {
                for i in 0..batch.num_rows() {
                    days.insert(
                        batch.column(0).as_string::<i32>().value(i).to_string(),
                        batch.column(1).as_primitive::<Int64Type>().value(i),
                    );
                }
            }
            days
        }
    };
    let days = per_day("observations").await;
    assert_eq!(
        per_day("observed_index").await,
        days,
        "each day's index holds its observations"
    );
    let oldest_kept = (today - chrono::Days::new(20)).to_string();
    assert!(days.keys().all(|day| *day >= oldest_kept), "{days:?}");
    eprintln!(
        "{acknowledged} acknowledged requests, {} planted rows kept, {} expired, {} phones erased",
        planted_kept.len(),
        planted_expired.len(),
        victims.len()
    );
}

/// `proxima --data root serve` with its log in `wal`, flushed only when it stops.
fn unflushed<'a>(root: &'a Path, wal: &'a Path) -> [&'a str; 16] {
    [
        "--data",
        root.to_str().unwrap(),
        "serve",
        "--flight",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--wal-dir",
        wal.to_str().unwrap(),
        "--flush-interval",
        "1h",
        "--device-rate",
        "0",
        "--registration-work",
        "0",
        "--accept-mac",
    ]
}

/// A tmpfs of a given size mounted by the test (it needs root, as CI runs); unmounted when
/// dropped.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    /// Mounts one of `size` (`mount`'s syntax: 256k) at `dir`; `None` where this machine does
    /// not let the test mount (never in CI, which must).
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status();
        match status {
            Ok(status) if status.success() => Some(Self(dir.to_path_buf())),
            other => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must let the test mount a small file system (root): {other:?}"
                );
                eprintln!("skipped: cannot mount a tmpfs here ({other:?}); run as root");
                None
            }
        }
    }

    /// Gives it `size` (a full file system whose operator made room).
    fn grow(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_under_the_write_ahead_log_refuses_uploads_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let wal = dir.path().join("wal");
    let Some(fs) = SmallFs::mount(&wal, "256k") else { return };
    // No flush until the end: only the operator's room frees the log's disk.
    let args = unflushed(&root, &wal);
    let mut server = common::Server::start_with_env(&args, &[("RUST_LOG", "error".to_string())]);
    server.drain();
    let http = reqwest::Client::new();
    let mut devices = Vec::new();
    for i in 0..2 {
        devices.push(
            common::register_mac_phone(&http, &server.api, &format!("D1:00:00:00:00:{i:02X}"), RFC8032_KEY).await,
        );
    }
    let answers = Answers::default();
    // Uploads until the disk is full and 20 requests were refused, then until 20 more are
    // acknowledged after the room is made; every answer is 200 or 503 with Retry-After.
    let send = |device: usize| answers.upload(&http, &server.api, device, &devices[device].1);
    let mut sent = 0;
    while answers.counts().1 < 20 {
        futures::future::join(send(0), send(1)).await;
        sent += 2;
        assert!(sent < 20_000, "256 KiB never filled");
    }
    let before = answers.counts().0;
    assert!(
        before > 10,
        "some uploads were acknowledged before the disk filled: {before}"
    );
    fs.grow("16m");
    for _ in 0..10 {
        let refused_before = answers.counts().1;
        futures::future::join(send(0), send(1)).await;
        assert_eq!(answers.counts().1, refused_before, "refused after the room was made");
    }
    // SIGTERM flushes; the store holds exactly the acknowledged requests, each once.
    common::terminate(&mut server.child);
    answers.check_stored(&root, &devices).await;
    let (acked, refused) = answers.counts();
    eprintln!("{acked} acknowledged ({before} before the disk filled), {refused} refused with 503, all accounted for");
    drop(fs);
}

/// A shared library for `LD_PRELOAD` that makes `fsync` and `fdatasync` fail with EIO on
/// the files under `$FAILSYNC_DIR` while the file `$FAILSYNC_TRIGGER` exists, as a disk
/// whose writeback failed does, and writes to `$FAILSYNC_LOG` a line for each failure
/// (`failed`) and for each sync of a descriptor that had failed before (`resynced`).
const FAILSYNC_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FDS 65536
static volatile char failed[FDS];

static void note(const char *what, int fd, const char *path) {
    const char *log = getenv("FAILSYNC_LOG");
    FILE *f = log ? fopen(log, "a") : NULL;
    if (f) { fprintf(f, "%s %d %s\n", what, fd, path); fclose(f); }
}

static int sync_with(const char *name, int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, name);
    const char *dir = getenv("FAILSYNC_DIR"), *trigger = getenv("FAILSYNC_TRIGGER");
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (fd >= 0 && fd < FDS && dir && n > 0) {
        path[n] = 0;
        if (strncmp(path, dir, strlen(dir)) == 0) {
            if (failed[fd]) note("resynced", fd, path);
            if (trigger && access(trigger, F_OK) == 0) {
                failed[fd] = 1;
                note("failed", fd, path);
                errno = EIO;
                return -1;
            }
        }
    }
    return real(fd);
}

int fsync(int fd) { return sync_with("fsync", fd); }
int fdatasync(int fd) { return sync_with("fdatasync", fd); }

int close(int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "close");
    if (fd >= 0 && fd < FDS) failed[fd] = 0;
    return real(fd);
}
"#;

/// [`FAILSYNC_C`] built with the machine's C compiler into `dir`.
fn failsync_library(dir: &Path) -> std::path::PathBuf {
    let source = dir.join("failsync.c");
    let library = dir.join("libfailsync.so");
    std::fs::write(&source, FAILSYNC_C).unwrap();
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc) builds the fsync fault library");
    assert!(built.success(), "cc failed on the fsync fault library");
    library
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsync_failing_with_eio_acknowledges_nothing_of_it_and_never_syncs_that_descriptor_again() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let wal = dir.path().join("wal");
    std::fs::create_dir_all(&wal).unwrap();
    let library = failsync_library(dir.path());
    let (trigger, faults) = (dir.path().join("fail-now"), dir.path().join("failsync.log"));
    let wal_dir = wal.canonicalize().unwrap();
    let args = |preload: bool| {
        let mut env = vec![("RUST_LOG", "error".to_string())];
        if preload {
            env.extend([
                ("LD_PRELOAD", library.display().to_string()),
                ("FAILSYNC_DIR", wal_dir.display().to_string()),
                ("FAILSYNC_TRIGGER", trigger.display().to_string()),
                ("FAILSYNC_LOG", faults.display().to_string()),
            ]);
        }
        env
    };
    // No flush until the end: the log is where acknowledged uploads live.
    let flags = unflushed(&root, &wal);
    let mut server = common::Server::start_with_env(&flags, &args(true));
    server.drain();
    let http = reqwest::Client::new();
    let mut devices = Vec::new();
    for i in 0..2 {
        devices.push(
            common::register_mac_phone(&http, &server.api, &format!("E1:00:00:00:00:{i:02X}"), RFC8032_KEY).await,
        );
    }
    let answers = Answers::default();
    let send = |device: usize| answers.upload(&http, &server.api, device, &devices[device].1);
    let round = |expect_refused: bool| {
        let answers = &answers;
        let send = &send;
        async move {
            for i in 0..20 {
                let before = answers.counts();
                send(i % 2).await;
                let after = answers.counts();
                let refused = after.1 > before.1;
                assert_eq!(
                    refused, expect_refused,
                    "request {i} of a round (acked, refused): {after:?}"
                );
            }
        }
    };
    round(false).await;
    // The disk's writeback fails: every sync of the log's files answers EIO.
    std::fs::write(&trigger, b"").unwrap();
    round(true).await;
    let failed = std::fs::read_to_string(&faults).unwrap_or_default();
    assert!(
        failed.lines().filter(|l| l.starts_with("failed ")).count() >= 20,
        "each refused upload met a failed sync:\n{failed}"
    );
    // The disk is back: uploads are acknowledged again, in new segments.
    std::fs::remove_file(&trigger).unwrap();
    round(false).await;
    let log = std::fs::read_to_string(&faults).unwrap();
    assert!(
        !log.lines().any(|l| l.starts_with("resynced ")),
        "a descriptor whose sync failed was synced again (its lost pages would pass as written):\n{log}"
    );
    // A crash now: the refused records' bytes may be in the log's files, and must not come
    // back on replay. The restart replays the log; SIGTERM flushes it into the store.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut server = common::Server::start_with_env(&flags, &args(false));
    server.drain();
    common::terminate(&mut server.child);
    answers.check_stored(&root, &devices).await;
    assert_eq!(answers.counts(), (40, 20));
}

/// The uploads a test sent, by (device, request number): acknowledged (200) or refused
/// (503 with Retry-After: the write-ahead log could not write).
#[derive(Default)]
struct Answers {
    acked: Mutex<BTreeSet<(usize, i32)>>,
    refused: Mutex<BTreeSet<(usize, i32)>>,
    next: Mutex<i32>,
}

impl Answers {
    /// Sends device `device`'s next request and records its answer; anything but 200 and a
    /// 503 saying nothing was acknowledged fails the test.
    async fn upload(&self, http: &reqwest::Client, base: &str, device: usize, token: &str) {
        let seq = {
            let mut next = self.next.lock().unwrap();
            *next += 1;
            *next
        };
        let response = http
            .post(format!("{base}/v1/observations"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(observations(seq))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => self.acked.lock().unwrap().insert((device, seq)),
            503 => {
                assert_eq!(response.headers()["retry-after"], "5");
                let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
                assert!(
                    body["detail"].as_str().unwrap().contains("nothing of this request"),
                    "{body}"
                );
                self.refused.lock().unwrap().insert((device, seq))
            }
            status => panic!("upload answered {status}"),
        };
    }

    fn counts(&self) -> (usize, usize) {
        (self.acked.lock().unwrap().len(), self.refused.lock().unwrap().len())
    }

    /// Checks that the store at `root` holds exactly the acknowledged requests of
    /// `devices`, each whole and once, and none of the refused.
    async fn check_stored(&self, root: &Path, devices: &[(String, String)]) {
        let mut stored = BTreeSet::new();
        for ((observer, seq), count) in common::rows_by_request(&Store::local(root).unwrap()).await {
            assert_eq!(count, PER_REQUEST as i64, "request {seq} stored in part or twice");
            let device = devices.iter().position(|(uuid, _)| *uuid == observer).unwrap();
            stored.insert((device, seq));
        }
        let acked = self.acked.lock().unwrap().clone();
        let refused = self.refused.lock().unwrap().clone();
        assert_eq!(stored, acked, "the store holds exactly what was acknowledged");
        assert!(refused.iter().all(|r| !stored.contains(r)));
    }
}

/// What the fault-injecting proxy in front of moto does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// Answered 500 (InternalError) without reaching S3.
    Error500,
    /// Answered 503 (SlowDown) without reaching S3.
    SlowDown,
    /// The connection closed before the request reached S3.
    ResetBefore,
    /// The request done by S3, then the connection closed before the answer.
    ResetAfter,
    /// Held 1 s, then done.
    Stall,
}

/// A proxy between Proxima and moto that, while `faulty`, gives one request in ten a fault.
struct FaultyS3 {
    port: u16,
    faulty: Arc<std::sync::atomic::AtomicBool>,
    faults: Arc<Mutex<BTreeMap<Fault, usize>>>,
}

impl FaultyS3 {
    async fn start(moto_port: u16, seed: u64) -> Self {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faulty = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let faults: Arc<Mutex<BTreeMap<Fault, usize>>> = Arc::default();
        let rng = Arc::new(Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)));
        let client = reqwest::Client::new();
        let (on, counts) = (Arc::clone(&faulty), Arc::clone(&faults));
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (on, counts, rng, client) =
                    (Arc::clone(&on), Arc::clone(&counts), Arc::clone(&rng), client.clone());
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (on, counts, rng, client) =
                        (Arc::clone(&on), Arc::clone(&counts), Arc::clone(&rng), client.clone());
                    async move {
                        let fault = on.load(std::sync::atomic::Ordering::SeqCst).then(|| {
                            let roll = rng.lock().unwrap().random_range(0..100);
                            match roll {
                                0..2 => Some(Fault::Error500),
                                2..4 => Some(Fault::SlowDown),
                                4..6 => Some(Fault::ResetBefore),
                                6..8 => Some(Fault::ResetAfter),
                                8..10 => Some(Fault::Stall),
                                _ => None,
                            }
                        });
                        let fault = fault.flatten();
                        if let Some(fault) = fault {
                            *counts.lock().unwrap().entry(fault).or_default() += 1;
                        }
                        let answer = |status: u16, code: &str| {
                            let body = format!(
                                "<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>injected</Message></Error>"
                            );
                            let mut response =
                                hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::io::Error>(response)
                        };
                        match fault {
                            Some(Fault::Error500) => return answer(500, "InternalError"),
                            Some(Fault::SlowDown) => return answer(503, "SlowDown"),
                            Some(Fault::ResetBefore) => return Err(std::io::Error::other("injected reset")),
                            Some(Fault::Stall) => tokio::time::sleep(Duration::from_secs(1)).await,
                            _ => {}
                        }
                        // Forward to moto, as it came.
                        let (parts, body) = request.into_parts();
                        let body = http_body_util::BodyExt::collect(body)
                            .await
                            .map_err(std::io::Error::other)?
                            .to_bytes();
                        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                        let mut forwarded =
                            client.request(parts.method.clone(), format!("http://127.0.0.1:{moto_port}{path}"));
                        for (name, value) in &parts.headers {
                            if ![
                                hyper::header::HOST,
                                hyper::header::CONTENT_LENGTH,
                                hyper::header::TRANSFER_ENCODING,
                                hyper::header::CONNECTION,
                            ]
                            .contains(name)
                            {
                                forwarded = forwarded.header(name, value);
                            }
                        }
                        let answered = forwarded.body(body).send().await.map_err(std::io::Error::other)?;
                        if fault == Some(Fault::ResetAfter) {
                            return Err(std::io::Error::other("injected reset after the request was done"));
                        }
                        let mut response = hyper::Response::builder().status(answered.status().as_u16());
                        for (name, value) in answered.headers() {
                            if ![hyper::header::TRANSFER_ENCODING, hyper::header::CONNECTION].contains(name) {
                                response = response.header(name, value);
                            }
                        }
                        let body = answered.bytes().await.map_err(std::io::Error::other)?;
                        Ok(response.body(http_body_util::Full::new(body)).unwrap())
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { port, faulty, faults }
    }

    fn env(&self, moto: &common::Moto) -> Vec<(&'static str, String)> {
        let mut env = moto.env();
        for (name, value) in &mut env {
            if *name == "AWS_ENDPOINT" {
                *value = format!("http://127.0.0.1:{}", self.port);
            }
        }
        env
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_that_fails_stalls_and_resets_during_flush_and_compaction_loses_and_repeats_nothing() {
    let Some(moto) = common::Moto::start_or_skip("the S3 fault test") else {
        return;
    };
    moto.create_bucket("proxima-chaos");
    let url = "s3://proxima-chaos/store";
    let seed: u64 = std::env::var("PROXIMA_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_203);
    let proxy = FaultyS3::start(moto.port, seed).await;
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal");
    // Nine small files of today, due for compaction at the first tick (written straight to moto).
    let direct = moto.open_store(url).unwrap();
    let today = proxima_engine::store::today_utc();
    let planted = plant(&PartitionWriter::new(direct.clone(), "chaos test"), today, 9, 2_000_000).await;

    let audit = dir.path().join("audit");
    let id_key = dir.path().join("id.key");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"))
        .args(["id-key", "new", "--out", id_key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mut node = start(
        &["--data", url],
        &[
            "--wal-dir",
            wal.to_str().unwrap(),
            "--audit-dir",
            audit.to_str().unwrap(),
            "--id-key",
            id_key.to_str().unwrap(),
        ],
        &proxy.env(&moto),
    );
    let http = reqwest::Client::new();
    let mut devices = Vec::new();
    for i in 0..UPLOADERS {
        devices.push(
            common::register_mac_phone(&http, &node.server.api, &format!("D2:00:00:00:00:{i:02X}"), RFC8032_KEY).await,
        );
    }
    proxy.faulty.store(
        std::env::var_os("CHAOS_NO_FAULTS").is_none(),
        std::sync::atomic::Ordering::SeqCst,
    );
    let next: Vec<Arc<Mutex<i32>>> = (0..UPLOADERS).map(|_| Arc::default()).collect();
    let acked: Vec<Arc<Mutex<BTreeSet<i32>>>> = (0..UPLOADERS).map(|_| Arc::default()).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = devices
        .iter()
        .enumerate()
        .map(|(i, (_, token))| {
            let (http, base, token) = (http.clone(), node.server.api.clone(), token.clone());
            let (next, acked, stop) = (Arc::clone(&next[i]), Arc::clone(&acked[i]), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let seq = {
                        let mut next = next.lock().unwrap();
                        *next += 1;
                        *next
                    };
                    upload(&http, &base, &token, seq).await.unwrap();
                    acked.lock().unwrap().insert(seq);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();
    // Faults until a flush and a compaction have each completed through them and every kind
    // of fault was injected (at least 10 s, at most 90: each run makes dozens of requests).
    let mut said: BTreeMap<String, usize> = BTreeMap::new();
    let started = std::time::Instant::now();
    loop {
        while let Ok(line) = node.log.try_recv() {
            *said.entry(line).or_default() += 1;
        }
        let done = |message: &str| said.get(message).is_some_and(|n| *n > 0);
        let every_fault = proxy.faults.lock().unwrap().len() == 5;
        if started.elapsed() > Duration::from_secs(10) && done("flushed") && done("compacted") && every_fault {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no flush and compaction through every kind of fault in 90 s: {said:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for uploader in load {
        uploader.await.unwrap();
    }
    proxy.faulty.store(false, std::sync::atomic::Ordering::SeqCst);
    let faults = proxy.faults.lock().unwrap().clone();
    let during: usize = acked.iter().map(|a| a.lock().unwrap().len()).sum();
    eprintln!("faults injected: {faults:?}; {during} requests acknowledged meanwhile");
    assert_eq!(faults.len(), 5, "every kind of fault was injected: {faults:?}");
    eprintln!("the server said: {said:?} in {:?}", started.elapsed());
    // SIGTERM flushes what is left (S3 answers again).
    common::terminate(&mut node.server.child);

    let stored = common::rows_by_request(&direct).await;
    let mut expected: BTreeMap<(String, i32), i64> =
        planted.iter().map(|seq| ((PLANTED.to_string(), *seq), 1)).collect();
    for (i, (uuid, _)) in devices.iter().enumerate() {
        for seq in acked[i].lock().unwrap().iter() {
            expected.insert((uuid.clone(), *seq), PER_REQUEST as i64);
        }
    }
    // Every request was acknowledged (uploads go to the local log): stored is exactly that.
    assert_eq!(stored.len(), expected.len(), "rows stored vs acknowledged and planted");
    assert_eq!(stored, expected);
    eprintln!(
        "{} acknowledged requests and {} planted rows, each stored once",
        expected.len() - planted.len(),
        planted.len()
    );
}
