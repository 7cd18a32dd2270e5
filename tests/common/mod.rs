//! Helpers shared by the integration tests that run the real `proxima serve`.

use std::io::{BufRead, BufReader};
use std::process::ChildStdout;

/// Reads a server's standard output up to the first line starting with `prefix` and returns
/// that line; fails if the server exits first.
#[allow(dead_code)] // not every test binary that shares this module starts a server
pub fn wait_for_line(stdout: &mut BufReader<ChildStdout>, prefix: &str) -> String {
    let mut line = String::new();
    while !line.starts_with(prefix) {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "serve exited before printing '{prefix}'"
        );
    }
    line
}

/// Stops a server as an operator does (SIGTERM) and checks that it exits cleanly (a clean
/// stop flushes what the write-ahead log holds).
#[allow(dead_code)] // not every test binary that shares this module starts a server
pub fn terminate(child: &mut std::process::Child) {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM {}", child.id());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
}

/// Writes a confirmed case of `device`, reported now, straight into the store (as the REST
/// service would on `POST /v1/cases`), and returns its id: what a tracer's purpose cites.
#[allow(dead_code)] // not every test binary that shares this module opens a case
pub async fn write_case(store: &proxima_engine::Store, device: &str) -> String {
    use arrow::array::{Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
    use std::sync::Arc;
    let case_id = uuid::Uuid::now_v7().to_string();
    let now = chrono::Utc::now();
    let table = proxima_engine::Table::Cases;
    let batch = RecordBatch::try_new(
        table.file_schema(),
        vec![
            Arc::new(StringArray::from(vec![case_id.clone()])),
            Arc::new(StringArray::from(vec![device.to_string()])),
            Arc::new(StringArray::from(vec!["confirmed"])),
            Arc::new(TimestampMicrosecondArray::from(vec![now.timestamp_micros()]).with_timezone("UTC")),
            Arc::new(StringArray::from(vec!["test"])),
            Arc::new(Int32Array::from(vec![0])),
            Arc::new(Int32Array::from(vec![0])),
            Arc::new(StringArray::new_null(1)),
            Arc::new(arrow::array::BooleanArray::from(vec![false])),
        ],
    )
    .unwrap();
    let writer = proxima_storage::PartitionWriter::new(store.clone(), "test");
    let mut transaction = writer.begin();
    transaction
        .write_file(table, Some(now.date_naive()), &[batch])
        .await
        .unwrap();
    transaction.commit().await.unwrap();
    case_id
}

/// Every record of the audit log in `dir`, in order, as JSON.
#[allow(dead_code)] // not every test binary that shares this module reads an audit log
pub fn audit_records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    segments
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The Python interpreter of the project's .venv, or of $PROXIMA_PYTHON, if it can import
/// every module of `modules`.
#[allow(dead_code)] // not every test binary that shares this module runs Python
pub fn python_with(modules: &[&str]) -> Option<std::path::PathBuf> {
    let candidates = [
        std::env::var_os("PROXIMA_PYTHON").map(std::path::PathBuf::from),
        Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")),
    ];
    let imports = format!("import {}", modules.join(", "));
    candidates.into_iter().flatten().find(|python| {
        std::process::Command::new(python)
            .args(["-c", &imports])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// A `proxima serve` started by a test, its REST address read off its output; killed
/// (SIGKILL, as `kill -9`) and reaped when dropped, so a failed assertion never leaves a
/// server holding the test's pipes.
#[allow(dead_code)] // not every test binary that shares this module starts a server
pub struct Server {
    /// The process.
    pub child: std::process::Child,
    /// `http://host:port` of its REST service.
    pub api: String,
    /// `http://host:port` of its operations routes (`/metrics`, `/healthz`, `/readyz`).
    pub ops: String,
    /// Its standard output after the REST line, until [`Server::drain`].
    pub stdout: Option<BufReader<ChildStdout>>,
}

#[allow(dead_code)]
impl Server {
    /// Runs `proxima <args>` (a `serve` with a loopback `--http`; `PROXIMA_MASTER_KEY` of
    /// the test's environment removed) and waits for its REST service.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// [`Self::start`] with more environment variables (an S3 store's).
    pub fn start_with_env(args: &[&str], env: &[(&str, String)]) -> Self {
        Self::start_with(args, env, std::process::Stdio::inherit())
    }

    /// [`Self::start_with_env`] with its standard error (its logs) sent to `stderr`; `env`
    /// may set `RUST_LOG` (default `warn`; empty: unset, the server's own default).
    pub fn start_with(args: &[&str], env: &[(&str, String)], stderr: std::process::Stdio) -> Self {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"));
        command
            .args(args)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("PROXIMA_MASTER_KEY")
            .stdout(std::process::Stdio::piped())
            .stderr(stderr);
        if env.iter().any(|(k, v)| *k == "RUST_LOG" && v.is_empty()) {
            command.env_remove("RUST_LOG");
        }
        let mut child = command.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let server = |stdout| Self {
            child,
            api: String::new(),
            ops: String::new(),
            stdout: Some(stdout),
        };
        let line = wait_for_line(&mut stdout, "REST listening on ");
        let ops = wait_for_line(&mut stdout, "operations on ");
        let mut started = server(stdout);
        let address = |line: &str, prefix: &str| line[prefix.len()..].split_whitespace().next().unwrap().to_string();
        started.api = address(&line, "REST listening on ");
        started.ops = address(&ops, "operations on ");
        started
    }

    /// Reads its output up to the first line starting with `prefix`.
    pub fn line(&mut self, prefix: &str) -> String {
        wait_for_line(self.stdout.as_mut().expect("not drained"), prefix)
    }

    /// The one-run password a loopback server without a users file printed for `user`.
    pub fn password(&mut self, user: &str) -> String {
        let prefix = format!("user {user}, password ");
        let line = self.line(&prefix);
        line[prefix.len()..]
            .split_whitespace()
            .next()
            .expect("a password follows")
            .to_string()
    }

    /// Keeps draining its output, so it never blocks on a full pipe.
    pub fn drain(&mut self) {
        if let Some(mut stdout) = self.stdout.take() {
            std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Column 0 of the answer to `sql` in a full session of `factory`, as text, a row each.
#[allow(dead_code)] // not every test binary that shares this module queries in process
pub async fn column(factory: &proxima_engine::SessionFactory, sql: &str) -> Vec<String> {
    use arrow::array::AsArray;
    let ctx = factory.session().await.unwrap();
    let mut out = Vec::new();
    for batch in ctx.sql(sql).await.unwrap().collect().await.unwrap() {
        let text = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8).unwrap();
        out.extend(text.as_string::<i32>().iter().map(|v| v.unwrap_or("NULL").to_string()));
    }
    out
}

/// `POST /v1/cases` as the tracer with `password`: a confirmed case for `device`; the
/// answer as JSON.
#[allow(dead_code)] // not every test binary that shares this module reports cases
pub async fn report_case(api: &str, password: &str, device: &str) -> serde_json::Value {
    let answer = reqwest::Client::new()
        .post(format!("{api}/v1/cases"))
        .basic_auth("tracer", Some(password))
        .header("content-type", "application/json")
        .body(serde_json::json!({"device_uuid": device, "status": "confirmed"}).to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// A Ballista cluster of the real binary: a `proxima scheduler` and two `proxima executor`
/// processes on loopback over one store; killed when dropped.
#[allow(dead_code)] // not every test binary that shares this module starts a cluster
pub struct Cluster {
    /// `df://127.0.0.1:PORT` of the scheduler.
    pub url: String,
    /// Each executor's work folder (its stage output, `<job>/<stage>/<partition>` until the
    /// job ends).
    pub work_dirs: Vec<std::path::PathBuf>,
    /// Where the logs are.
    dir: std::path::PathBuf,
    children: Vec<std::process::Child>,
    /// Their standard outputs, kept open (a closed pipe would stop a node that prints).
    outputs: Vec<BufReader<ChildStdout>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port free on loopback now.
#[allow(dead_code)]
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[allow(dead_code)]
impl Cluster {
    /// Starts a cluster over the store at `store` (a folder or URL), every node given `args`
    /// too (keys), each executor `slots` task slots; logs (`scheduler.log`,
    /// `executor<n>.log`) and work folders in `dir`.
    pub fn start(
        store: impl AsRef<std::ffi::OsStr>,
        args: &[String],
        slots: usize,
        dir: &std::path::Path,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        Self::start_with(store, args, slots, dir, &[], &[])
    }

    /// [`Self::start`], every node given the environment variables `every_node` (an S3
    /// store's), and the scheduler alone `scheduler_env` too.
    pub fn start_with(
        store: impl AsRef<std::ffi::OsStr>,
        args: &[String],
        slots: usize,
        dir: &std::path::Path,
        every_node: &[(&str, String)],
        scheduler_env: &[(&str, String)],
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let node = |role: &[String], log: &str, env: &[(&str, String)]| -> std::io::Result<std::process::Child> {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"));
            command.arg("--data").arg(store.as_ref()).args(role).args(args);
            command.env_remove("PROXIMA_MASTER_KEY_FILE");
            for (name, value) in every_node.iter().chain(env) {
                command.env(name, value);
            }
            // Executors say which tasks they ran (`Finished task : [TID job/stage/partition]`).
            command
                .env("RUST_LOG", "warn,ballista_executor::execution_loop=info")
                .env_remove("PROXIMA_MASTER_KEY")
                .stdout(std::process::Stdio::piped())
                .stderr(std::fs::File::create(dir.join(log))?)
                .spawn()
        };
        let mut cluster = Self {
            url: String::new(),
            work_dirs: Vec::new(),
            dir: dir.to_path_buf(),
            children: Vec::new(),
            outputs: Vec::new(),
        };
        let mut scheduler = node(
            &["scheduler".into(), "--listen".into(), "127.0.0.1:0".into()],
            "scheduler.log",
            scheduler_env,
        )?;
        let stdout = scheduler.stdout.take().ok_or("no scheduler output")?;
        cluster.children.push(scheduler);
        let mut line = String::new();
        let mut stdout = BufReader::new(stdout);
        stdout.read_line(&mut line)?;
        cluster.outputs.push(stdout);
        cluster.url = line
            .split_whitespace()
            .find(|w| w.starts_with("df://"))
            .ok_or_else(|| format!("the scheduler said {line:?}"))?
            .to_string();
        for n in 1..=2 {
            let work = dir.join(format!("work{n}"));
            cluster.work_dirs.push(work.clone());
            let role = [
                "executor".into(),
                "--scheduler".into(),
                cluster.url.clone(),
                "--flight-port".into(),
                free_port()?.to_string(),
                "--grpc-port".into(),
                free_port()?.to_string(),
                "--slots".into(),
                slots.to_string(),
                "--memory".into(),
                "1GiB".into(),
                "--work-dir".into(),
                work.display().to_string(),
            ];
            let mut executor = node(&role, &format!("executor{n}.log"), &[])?;
            let stdout = executor.stdout.take().ok_or("no executor output")?;
            cluster.children.push(executor);
            line.clear();
            let mut stdout = BufReader::new(stdout);
            stdout.read_line(&mut line)?;
            cluster.outputs.push(stdout);
            if !line.starts_with("Ballista executor on") {
                return Err(format!("executor {n} said {line:?}").into());
            }
        }
        Ok(cluster)
    }

    /// The tasks each executor has finished, as its log says: `(job, stage, partition)`.
    pub fn finished_tasks(&self) -> Vec<Vec<(String, String, String)>> {
        (1..=self.work_dirs.len())
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.join(format!("executor{n}.log"))).unwrap_or_default();
                log.lines()
                    .filter_map(|line| line.split("Finished task : [TID ").nth(1))
                    .filter_map(|tid| {
                        let mut parts = tid.split(']').next()?.split('/');
                        let (job, stage, partition) = (parts.next()?, parts.next()?, parts.next()?);
                        Some((job.to_string(), stage.to_string(), partition.to_string()))
                    })
                    .collect()
            })
            .collect()
    }
}

/// An S3-compatible server (moto, from PyPI) on a loopback port, killed when dropped.
///
/// `moto_server` is looked up in `$MOTO_SERVER`, then in the project's `.venv`, then on
/// `PATH` (`.ci/run` installs it into `.venv`).
#[allow(dead_code)] // not every test binary that shares this module uses S3
pub struct Moto {
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(dead_code)]
impl Moto {
    /// Starts moto, or returns `None` if `moto_server` is not installed, which fails the
    /// test under CI (`CI` set): there, every test that needs S3 must run.
    pub fn start_or_skip(test: &str) -> Option<Self> {
        let Some(binary) = Self::find() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run {test}: moto_server not found (.ci/run installs it into .venv)"
            );
            eprintln!("{test}: skipped: moto_server not found (pip install 'moto[server]' or run .ci/run)");
            return None;
        };
        let port = free_port().expect("a free port");
        let child = std::process::Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Self { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while moto.request("GET", "/").is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not answer on port {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Some(moto)
    }

    /// Kills the server with SIGKILL (the store becomes unreachable).
    pub fn kill(&self) {
        let killed = std::process::Command::new("kill")
            .args(["-9", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    fn find() -> Option<std::path::PathBuf> {
        if let Some(path) = std::env::var_os("MOTO_SERVER") {
            return Some(std::path::PathBuf::from(path));
        }
        let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
        let on_path = std::env::var_os("PATH")
            .map(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join("moto_server"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        std::iter::once(venv).chain(on_path).find(|p| p.is_file())
    }

    /// The Python that runs moto (beside `moto_server`, with boto3), else `python3`.
    pub fn python(&self) -> std::path::PathBuf {
        Self::find()
            .and_then(|moto| moto.parent().map(|bin| bin.join("python")))
            .filter(|python| python.is_file())
            .unwrap_or_else(|| "python3".into())
    }

    /// Sends one bodiless, unsigned HTTP request (moto takes them) and returns the whole
    /// response.
    pub fn request(&self, method: &str, path: &str) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, bucket: &str) {
        let response = self.request("PUT", &format!("/{bucket}")).expect("moto answers");
        let status = response.lines().next().unwrap_or_default();
        assert!(status.contains(" 200"), "creating bucket {bucket}: {status}");
    }

    /// The store at `url` (`s3://…`) on this server, opened in this process with the same
    /// settings as [`Self::env`].
    pub fn open_store(&self, url: &str) -> proxima_engine::Result<proxima_engine::Store> {
        let options: Vec<(String, String)> = self
            .env()
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .collect();
        let options: Vec<(&str, &str)> = options.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        proxima_engine::Store::open_with(url, &options)
    }

    /// The variables that point `proxima` (and `Store::open`) at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

/// Runs `proxima phone --state <state> --api <api> <args>` (the reference phone): its
/// standard output, or its error message.
#[allow(dead_code)] // not every test binary that shares this module runs phones
pub fn phone(state: &std::path::Path, api: &str, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"))
        .args(["phone", "--state", state.to_str().unwrap(), "--api", api])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    if output.status.success() {
        Ok(text(&output.stdout))
    } else {
        Err(text(&output.stderr))
    }
}

/// [`phone`], which must succeed: its standard output.
#[allow(dead_code)]
pub fn phone_ok(state: &std::path::Path, api: &str, args: &[&str]) -> String {
    phone(state, api, args).unwrap_or_else(|err| panic!("phone {args:?} on {api}: {err}"))
}

/// Polls `check` every 250 ms for up to a minute.
#[allow(dead_code)]
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..240 {
        if check() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    panic!("{what} did not happen within a minute");
}

/// How many rows each (observer, `duration_s`) has in `store`'s observations: the tests that
/// tag each request's rows with its sequence number in `duration_s` count requests with it.
#[allow(dead_code)] // not every test binary that shares this module counts requests
pub async fn rows_by_request(store: &proxima_engine::Store) -> std::collections::BTreeMap<(String, i32), i64> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int32Type, Int64Type};
    let factory =
        proxima_engine::SessionFactory::new(store.clone(), proxima_engine::SessionOptions::default()).unwrap();
    let batches = factory
        .session()
        .await
        .unwrap()
        .sql("SELECT observer, duration_s, count(*) FROM observations GROUP BY observer, duration_s")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut stored = std::collections::BTreeMap::new();
    for batch in &batches {
        let observers = batch.column(0).as_string::<i32>();
        let seqs = batch.column(1).as_primitive::<Int32Type>();
        let counts = batch.column(2).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            stored.insert((observers.value(i).to_string(), seqs.value(i)), counts.value(i));
        }
    }
    stored
}

/// Registers a phone that broadcasts `mac` with the owner's public `key` (hex) on a server
/// that takes MACs and asks no proof of work: its device UUID and upload token.
#[allow(dead_code)] // not every test binary that shares this module registers phones
pub async fn register_mac_phone(http: &reqwest::Client, base: &str, mac: &str, key: &str) -> (String, String) {
    let response = http
        .post(format!("{base}/v1/devices"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"mac": mac, "revocation_key": key}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    (
        body["device_uuid"].as_str().unwrap().to_string(),
        body["upload_token"].as_str().unwrap().to_string(),
    )
}

/// A self-signed certificate for `localhost` and its key, written into `dir`: the
/// certificate's and the key's paths, and the certificate as PEM (a client's root).
#[allow(dead_code)] // not every test binary that shares this module serves TLS
pub fn write_certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = certified.cert.pem();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key, pem)
}
