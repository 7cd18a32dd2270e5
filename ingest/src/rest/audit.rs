//! The audit of REST staff calls: case reports, temperature readings, bulk uploads and
//! token requests, whatever the outcome.
//!
//! [`audit_calls`] wraps every route: it names the call (method and route) and the client,
//! runs the handler inside a task-local scope, and afterwards writes the outcome of an
//! intent the handler made. The intent itself is written by [`super::Shared::staff`], the
//! first thing every staff handler does: once the caller is authenticated and authorised,
//! and before the handler reads its body or writes anything, it appends the intent and
//! waits for it to be synced (if it cannot be, the call fails with 503). A refused caller
//! (no or wrong credentials, a role the route does not take) is one `decision` record.
//! Phones' own routes (registration, uploads, alerts) are not staff accesses and are not
//! recorded.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use proxima_audit::{Decision, Phase, Record};
use proxima_engine::Principal;

use super::error::{ApiError, ApiResult};
use super::server::ClientAddr;
use super::{AppState, Shared};

/// At most this much of a refused caller's claimed name is recorded.
const MAX_AUDITED_NAME: usize = 64;

tokio::task_local! {
    static CALL: Call;
}

/// The call being served: its name and client, and the outcome its intent is waiting for.
#[derive(Clone)]
struct Call {
    action: String,
    client: Option<String>,
    pending: Arc<Mutex<Option<(Record, Instant)>>>,
}

/// Middleware: names each call for the audit and writes the outcome of its intent, if any.
pub async fn audit_calls(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let call = Call {
        action: format!("rest:{} {route}", request.method()),
        client: request
            .extensions()
            .get::<ConnectInfo<ClientAddr>>()
            .map(|ConnectInfo(ClientAddr(address, _))| address.to_string()),
        pending: Arc::new(Mutex::new(None)),
    };
    let bytes = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let response = CALL.scope(call.clone(), next.run(request)).await;
    let pending = call.pending.lock().map(|mut p| p.take()).unwrap_or_default();
    if let Some((mut done, started)) = pending {
        done.duration_ms = Some(started.elapsed().as_millis() as u64);
        done.bytes = bytes;
        // A redirect is an answer too (the dashboard's sign-in answers 303).
        if !response.status().is_success() && !response.status().is_redirection() {
            done.error = Some(format!("HTTP {}", response.status()));
        }
        state.audit.submit(done);
    }
    response
}

/// The user name a request's Basic credentials claim (for the record of a refused login).
fn claimed_name(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|encoded| {
            let encoded = encoded.trim().trim_end_matches('=');
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded).ok()
        })
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            text.split_once(':')
                .map(|(name, _)| name.chars().take(MAX_AUDITED_NAME).collect())
        })
        .unwrap_or_default()
}

/// Names what the call being served is for (`case:<case_id>`) in its outcome record, and
/// the tables and functions it read: a case report cites the case it opens.
pub(super) fn cite(purpose: String, objects: &[&str]) {
    let _ = CALL.try_with(|call| {
        if let Ok(mut pending) = call.pending.lock()
            && let Some((done, _)) = pending.as_mut()
        {
            done.purpose = Some(purpose);
            done.objects = objects.iter().map(|o| o.to_string()).collect();
        }
    });
}

/// Names the tables and views the call being served reads, in its outcome record.
pub(super) fn read(objects: &[&str]) {
    let _ = CALL.try_with(|call| {
        if let Ok(mut pending) = call.pending.lock()
            && let Some((done, _)) = pending.as_mut()
        {
            done.objects = objects.iter().map(|o| o.to_string()).collect();
        }
    });
}

/// Adds a statement the call being served runs (its parameters bound) to its outcome
/// record, and the rows it returned.
pub(super) fn statement(sql: &str, rows: usize) {
    let _ = CALL.try_with(|call| {
        if let Ok(mut pending) = call.pending.lock()
            && let Some((done, _)) = pending.as_mut()
        {
            done.sql = Some(match done.sql.take() {
                Some(earlier) => format!("{earlier};\n{sql}"),
                None => sql.to_string(),
            });
            done.rows = Some(done.rows.unwrap_or(0) + rows as u64);
        }
    });
}

/// Records the authentication outcome of a staff call: the intent (synced before the
/// handler goes on) if the caller was let in, or a refusal: `principal` is who
/// authenticated (if anyone), `refusal` why the call is refused (if it is).
pub(super) async fn record_staff(
    state: &Shared,
    headers: &HeaderMap,
    principal: Option<&Principal>,
    refusal: Option<&ApiError>,
) -> ApiResult<()> {
    let call = CALL
        .try_with(Call::clone)
        .map_err(|_| ApiError::internal("a staff call outside the audit middleware", "no audit scope"))?;
    let (name, role) = match principal {
        Some(principal) => (principal.name.clone(), principal.role.name().to_string()),
        None => (claimed_name(headers), String::new()),
    };
    let mut record = match refusal {
        None => Record::new(
            Phase::Intent,
            name,
            role,
            call.action.clone(),
            Decision::Allow,
            "the route takes the role",
        ),
        Some(refusal) => {
            let rule = match (refusal.rule(), principal) {
                (Some(rule), _) => rule,
                (None, Some(_)) => "the route does not take the role",
                (None, None) => "credentials",
            };
            let mut record = Record::new(Phase::Decision, name, role, call.action.clone(), Decision::Deny, rule);
            record.error = Some(refusal.detail().to_string());
            record
        }
    };
    record.client = call.client.clone();
    record.issuer = principal.and_then(|p| p.issuer.clone());
    let seq = state
        .audit
        .append(record.clone())
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if refusal.is_none() {
        let mut pending = call
            .pending
            .lock()
            .map_err(|_| ApiError::internal("the audit of a staff call", "a poisoned lock"))?;
        *pending = Some((record.done(seq), Instant::now()));
    }
    Ok(())
}
