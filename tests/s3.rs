//! The store on S3: the real `proxima` binary against an S3-compatible server
//! (moto, from PyPI) on a loopback port. Imports, queries, a refused import and
//! retention must behave exactly as on the local disk.
//!
//! `moto_server` is looked up in `$MOTO_SERVER`, then on `PATH` (`.ci/run`
//! installs it into `.venv`). Without it the test says so and passes, except
//! under CI (`CI` set), where it fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_moto() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("moto_server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    std::iter::once(venv).chain(on_path).find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends one bodiless HTTP request and returns the status line.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response.lines().next().unwrap_or_default().to_string())
}

fn start_moto(moto_server: &Path) -> (Moto, u16) {
    let port = free_port();
    let child = Command::new(moto_server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server starts");
    let moto = Moto(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(port, "GET", "/").is_err() {
        assert!(Instant::now() < deadline, "moto_server did not answer on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (moto, port)
}

fn proxima(port: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_proxima"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/fixtures"))
        .env("PROXIMA_DATA", "s3://proxima-test/store")
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "error")
        // An S3 store has no local folder for `proxima sql`'s audit log: it is given one.
        .env(
            "PROXIMA_AUDIT_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("s3-audit-{port}")),
        )
        .output()
        .expect("proxima runs")
}

fn ok(port: u16, args: &[&str]) -> String {
    let output = proxima(port, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "proxima {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

fn days(port: u16) -> String {
    ok(
        port,
        &[
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT day, count(*) AS n FROM observations GROUP BY day ORDER BY day",
        ],
    )
}

#[test]
fn the_store_works_on_s3() {
    let Some(moto_server) = find_moto() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the S3 test: moto_server not found"
        );
        eprintln!("skipped: moto_server not found (pip install 'moto[server]' or run .ci/run)");
        return;
    };
    let (_moto, port) = start_moto(&moto_server);
    let created = http(port, "PUT", "/proxima-test").unwrap();
    assert!(created.contains("200"), "creating the bucket: {created}");

    ok(port, &["import", "devices", "devices.csv"]);
    ok(port, &["import", "observations", "observations.csv"]);
    let all_days = "day,n\n2026-11-02,2\n2026-11-03,2\n2026-11-04,3\n2026-11-05,1\n";
    assert_eq!(days(port), all_days);

    // A refused import leaves the S3 store as it was.
    let refused = proxima(
        port,
        &[
            "import",
            "observations",
            "import/good_observations.csv",
            "import/bad_mac.csv",
        ],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("import/bad_mac.csv:3: column 'observed'"), "{stderr}");
    assert_eq!(days(port), all_days);

    // Pruning and the view work the same.
    let encounters = ok(
        port,
        &[
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT count(*) AS n FROM encounters WHERE at >= TIMESTAMP '2026-11-04T00:00:00Z'",
        ],
    );
    assert_eq!(encounters, "n\n4\n");
    // The imports wrote the observed index on S3 with the observations.
    let observations = ok(
        port,
        &[
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT count(*) AS n FROM observations WHERE observed_at >= TIMESTAMP '2026-11-04T00:00:00Z'",
        ],
    );
    let indexed = ok(
        port,
        &[
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT count(*) AS n FROM observed_index WHERE observed_at >= TIMESTAMP '2026-11-04T00:00:00Z'",
        ],
    );
    assert_eq!(indexed, observations);
    assert_ne!(indexed, "n\n0\n");

    let retention = ok(port, &["retention", "--keep-days", "2", "--today", "2026-11-05"]);
    assert!(retention.contains("deleted 4 day folder(s)"), "{retention}");
    assert!(
        retention.contains("deleted observed_index/day=2026-11-03"),
        "{retention}"
    );
    assert_eq!(days(port), "day,n\n2026-11-04,3\n2026-11-05,1\n");
}
