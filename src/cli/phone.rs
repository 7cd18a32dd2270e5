//! `proxima phone`: a reference phone, doing over the REST API exactly what the app must
//! do, for tests, demos and app developers: make the owner's Ed25519 key, solve the
//! registration's proof of work, register, fetch rotating identifiers and broadcast the
//! current one, upload what it heard, fetch its alerts, and revoke itself with a signature.
//!
//! Its state (the API's address, the device, its upload token, the owner's private key,
//! the identifiers fetched) is one JSON file, readable by its owner only: a phone's
//! keystore. Nothing here talks to the store.

use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use ed25519_dalek::{Signer as _, SigningKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::CliError;

/// Arguments of `proxima phone`.
#[derive(Debug, Args)]
pub struct PhoneArgs {
    /// The phone's state: its device, token, owner's key and identifiers (made by
    /// `register`, readable by its owner only).
    #[arg(long, env = "PROXIMA_PHONE", value_name = "FILE")]
    state: PathBuf,
    /// The REST API (default: the one the phone registered with, else
    /// http://127.0.0.1:8080).
    #[arg(long, env = "PROXIMA_API", value_name = "URL")]
    api: Option<String>,
    #[command(subcommand)]
    what: PhoneCommand,
}

#[derive(Debug, Subcommand)]
enum PhoneCommand {
    /// Make the owner's key, solve the server's proof-of-work challenge, register, and
    /// write the state file (which must not exist).
    Register {
        /// A static MAC to register, for a legacy phone (the server must take them:
        /// --accept-mac). Default: none; the phone broadcasts rotating identifiers.
        #[arg(long)]
        mac: Option<String>,
    },
    /// Fetch rotating identifiers for the coming epochs and keep them; prints
    /// `<identifier> <from> <until>` a line.
    Ids {
        /// How many epochs ahead.
        #[arg(long, default_value_t = 96)]
        count: u32,
    },
    /// Print the identifier to broadcast now (from those fetched).
    CurrentId,
    /// Upload sightings: each `--heard` value (a MAC or a 32-hex identifier) heard at `--at`.
    Upload {
        /// What was heard; repeat for several.
        #[arg(long, required = true)]
        heard: Vec<String>,
        /// When (RFC 3339; default: now).
        #[arg(long)]
        at: Option<DateTime<Utc>>,
        /// For how long, in seconds.
        #[arg(long, default_value_t = 300)]
        duration_s: u32,
        /// Received signal strength, dBm.
        #[arg(long, default_value_t = -60, allow_hyphen_values = true)]
        rssi: i16,
    },
    /// Print the phone's alerts (JSON).
    Alerts,
    /// Revoke the device: sign the revocation with the owner's key and send it.
    Revoke,
}

/// What the phone keeps.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    api: String,
    device_uuid: String,
    upload_token: String,
    #[serde(default)]
    mac: Option<String>,
    /// The owner's Ed25519 private key (its 32-byte seed, hex).
    owner_key: String,
    #[serde(default)]
    ids: Vec<Identifier>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Identifier {
    id: String,
    valid_from: DateTime<Utc>,
    valid_until: DateTime<Utc>,
}

impl State {
    fn load(path: &Path) -> Result<Self, CliError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!(
                "{}: {e} (make it with proxima phone --state {} register)",
                path.display(),
                path.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| CliError::Usage(format!("{}: not a phone's state file: {e}", path.display())))
    }

    /// Writes the state, readable by its owner only: aside, then renamed.
    fn save(&self, path: &Path) -> Result<(), CliError> {
        use std::io::Write as _;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(serde_json::to_string_pretty(self).expect("state serialises").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    fn key(&self) -> Result<SigningKey, CliError> {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(&self.owner_key, &mut seed)
            .map_err(|_| CliError::Usage("the state file's owner_key is not 64 hex digits".into()))?;
        Ok(SigningKey::from_bytes(&seed))
    }
}

/// The REST API, as a phone calls it.
struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    /// Sends a request; the JSON answer of a 2xx (null if empty), or an error naming the
    /// call, its status and the server's detail.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request
            .send()
            .await
            .map_err(|e| CliError::Usage(format!("cannot reach {}: {e}", self.base)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| CliError::Usage(format!("{method} {path}: reading the answer: {e}")))?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let detail = value["detail"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            return Err(CliError::Usage(format!("{method} {path}: {status}: {detail}")));
        }
        Ok(value)
    }
}

/// Runs `proxima phone`.
pub async fn run(args: PhoneArgs) -> Result<(), CliError> {
    if let PhoneCommand::Register { mac } = &args.what {
        return register(&args, mac.clone()).await;
    }
    let mut state = State::load(&args.state)?;
    let api = Api::new(args.api.as_deref().unwrap_or(&state.api));
    let token = state.upload_token.clone();
    match args.what {
        PhoneCommand::Register { .. } => unreachable!("handled above"),
        PhoneCommand::Ids { count } => {
            let answer = api
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/ephemeral-ids?count={count}"),
                    Some(&token),
                    None,
                )
                .await?;
            state.ids = serde_json::from_value(answer["ids"].clone())
                .map_err(|e| CliError::Usage(format!("GET /v1/ephemeral-ids: an unexpected answer: {e}")))?;
            state.save(&args.state)?;
            for id in &state.ids {
                super::print(format!(
                    "{} {} {}",
                    id.id,
                    id.valid_from.to_rfc3339_opts(SecondsFormat::Secs, true),
                    id.valid_until.to_rfc3339_opts(SecondsFormat::Secs, true)
                ))?;
            }
            Ok(())
        }
        PhoneCommand::CurrentId => {
            let now = Utc::now();
            let current = state
                .ids
                .iter()
                .find(|id| id.valid_from <= now && now < id.valid_until)
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "no identifier for now among those fetched: run proxima phone --state {} ids",
                        args.state.display()
                    ))
                })?;
            super::print(&current.id)
        }
        PhoneCommand::Upload {
            heard,
            at,
            duration_s,
            rssi,
        } => {
            let at = at.unwrap_or_else(Utc::now).to_rfc3339_opts(SecondsFormat::Secs, true);
            let sightings: Vec<Value> = heard
                .iter()
                .map(|h| json!({"observed": h, "observed_at": at, "duration_s": duration_s, "rssi": rssi}))
                .collect();
            let answer = api
                .call(
                    reqwest::Method::POST,
                    "/v1/observations",
                    Some(&token),
                    Some(json!(sightings)),
                )
                .await?;
            super::print(answer)
        }
        PhoneCommand::Alerts => {
            let answer = api.call(reqwest::Method::GET, "/v1/alerts", Some(&token), None).await?;
            super::print(answer)
        }
        PhoneCommand::Revoke => {
            let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
            let nonce = hex::encode(rand::random::<[u8; 16]>());
            let message = proxima_ingest::rest::devices::revocation_message(&state.device_uuid, &timestamp, &nonce);
            let signature = hex::encode(state.key()?.sign(message.as_bytes()).to_bytes());
            let body = json!({"timestamp": timestamp, "nonce": nonce, "signature": signature});
            api.call(
                reqwest::Method::DELETE,
                &format!("/v1/devices/{}", state.device_uuid),
                None,
                Some(body),
            )
            .await?;
            super::print(format!("device {} revoked", state.device_uuid))
        }
    }
}

async fn register(args: &PhoneArgs, mac: Option<String>) -> Result<(), CliError> {
    if args.state.exists() {
        return Err(CliError::Usage(format!(
            "{} exists: this phone is registered already (revoke it, or use another state file)",
            args.state.display()
        )));
    }
    let base = args.api.clone().unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
    let api = Api::new(&base);
    let key = SigningKey::from_bytes(&rand::random());
    let challenge = api
        .call(reqwest::Method::GET, "/v1/devices/challenge", None, None)
        .await?;
    let difficulty = challenge["difficulty"].as_u64().unwrap_or(0);
    let mut body = json!({"revocation_key": hex::encode(key.verifying_key().as_bytes())});
    if let Some(mac) = &mac {
        body["mac"] = json!(mac);
    }
    if difficulty > 0 {
        let text = challenge["challenge"]
            .as_str()
            .ok_or_else(|| CliError::Usage("GET /v1/devices/challenge: no challenge in the answer".into()))?
            .to_string();
        let started = Instant::now();
        let bits = u8::try_from(difficulty).unwrap_or(u8::MAX);
        let nonce = tokio::task::spawn_blocking({
            let text = text.clone();
            move || proxima_ingest::rest::challenge::solve(&text, bits)
        })
        .await
        .map_err(|e| CliError::Usage(format!("solving the challenge: {e}")))?;
        eprintln!(
            "proof of work: {difficulty} bits, solved in {} ms",
            started.elapsed().as_millis()
        );
        body["challenge"] = json!(text);
        body["nonce"] = json!(nonce);
    }
    let answer = api.call(reqwest::Method::POST, "/v1/devices", None, Some(body)).await?;
    let field = |name: &str| {
        answer[name]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| CliError::Usage(format!("POST /v1/devices: no {name} in the answer")))
    };
    let state = State {
        api: base,
        device_uuid: field("device_uuid")?,
        upload_token: field("upload_token")?,
        mac,
        owner_key: hex::encode(key.to_bytes()),
        ids: Vec::new(),
    };
    state.save(&args.state)?;
    super::print(&state.device_uuid)
}
