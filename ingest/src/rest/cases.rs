//! Cases, alerts and temperature readings: closing the loop from a report to a phone.
//!
//! A case (reported by a tracer, or opened by a fever reading at a station)
//! first flushes the WAL, so that the trace sees every observation
//! acknowledged before the report, then runs `trace_contacts` in a tracer
//! session and writes the case and one alert per contact (revoked devices
//! get none) as one WAL record, flushed at once (so the reporting tracer can
//! declare the case as their purpose straight away). Phones fetch their own unexpired alerts from
//! the in-memory [`AlertBook`], which holds what the store holds (reloaded
//! after each flush, so alerts issued by other servers appear too).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use arrow::array::{
    ArrayRef, AsArray, BooleanArray, Date32Array, Float64Array, Int32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{Date32Type, TimestampMicrosecondType};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, NaiveDate, Utc};
use proxima_engine::{Principal, Role, SessionFactory, Table, ids, schema};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::body::{parse_json, parse_time, read_limited, require_json, typed};
use super::error::{ApiError, ApiResult};
use super::metrics::PriorityLabels;
use proxima_storage::wal::Entry;

/// Whether a case is suspected or confirmed.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CaseStatus {
    /// Symptoms or a fever reading, not yet tested.
    Suspected,
    /// A positive test.
    Confirmed,
}

impl CaseStatus {
    fn name(self) -> &'static str {
        match self {
            CaseStatus::Suspected => "suspected",
            CaseStatus::Confirmed => "confirmed",
        }
    }
}

/// `POST /v1/cases` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportCase {
    /// The device of the case.
    #[schema(pattern = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")]
    pub device_uuid: String,
    /// `suspected` or `confirmed`.
    pub status: CaseStatus,
    /// When the case was reported (RFC 3339; default: now). Contacts are traced back from it.
    #[schema(format = DateTime)]
    pub reported_at: Option<String>,
    /// The case's id, when the health authority's record of it already has one (a UUID;
    /// default: a new one). It is the call's declared purpose: the audit record of the report
    /// cites it, and tracers then read the case with `SET proxima.purpose = 'case:<case_id>'`.
    /// An id that is already a case is refused (409).
    #[schema(pattern = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")]
    pub case_id: Option<String>,
}

/// Alerts issued, by priority.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
pub struct AlertCounts {
    /// Met the case within 48 hours.
    pub high: u32,
    /// Met the case within 96 hours, or met a high-priority contact within 48 hours.
    pub medium: u32,
}

/// `POST /v1/cases` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CaseOpened {
    /// The new case's id.
    pub case_id: String,
    /// Alerts issued to its contacts.
    pub alerts: AlertCounts,
}

/// `POST /v1/temperature` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemperatureIn {
    /// The device whose QR code the station scanned.
    #[schema(pattern = r"^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$")]
    pub device_uuid: String,
    /// When the temperature was taken (RFC 3339).
    #[schema(format = DateTime)]
    pub measured_at: String,
    /// Body temperature, °C (30 to 45).
    #[schema(minimum = 30.0, maximum = 45.0)]
    pub celsius: f64,
    /// The station's site code (letters, digits, `-`, `_`, `.`; at most 64).
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,64}$")]
    pub site: String,
}

/// `POST /v1/temperature` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TemperatureStored {
    /// The suspected case opened because the reading was at or above `--fever-threshold`.
    pub case: Option<CaseOpened>,
}

/// One alert as a phone sees it: nothing about the case or other devices.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct AlertOut {
    /// `high` or `medium`.
    pub priority: String,
    /// When the alert was issued (RFC 3339).
    pub issued_at: String,
    /// When it stops being shown (RFC 3339).
    pub expires_at: String,
    /// The day of the exposure (`YYYY-MM-DD`).
    pub exposure_day: String,
}

#[derive(Debug, Clone)]
struct Alert {
    id: String,
    priority: &'static str,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    exposure_day: NaiveDate,
}

impl Alert {
    fn out(&self) -> AlertOut {
        AlertOut {
            priority: self.priority.to_string(),
            issued_at: self.issued_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            expires_at: self.expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            exposure_day: self.exposure_day.format("%Y-%m-%d").to_string(),
        }
    }
}

fn priority_name(text: &str) -> &'static str {
    if text == "high" { "high" } else { "medium" }
}

/// Unexpired alerts by device.
#[derive(Debug, Default)]
pub struct AlertBook {
    by_device: RwLock<HashMap<String, Vec<Alert>>>,
}

impl AlertBook {
    /// Adds alerts the store holds (from any server) that are not yet in the book, and drops
    /// expired ones.
    pub async fn reload(
        &self,
        factory: &SessionFactory,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> crate::Result<()> {
        let ctx = factory.session().await?;
        let sql = format!(
            "SELECT alert_id, device_uuid, priority, issued_at, expires_at, exposure_day FROM alerts \
             WHERE issued_at >= TIMESTAMP '{}' AND expires_at > TIMESTAMP '{}'",
            (now - ttl - chrono::Duration::days(1)).to_rfc3339(),
            now.to_rfc3339()
        );
        let batches = ctx.sql(&sql).await?.collect().await?;
        let mut book = self.by_device.write().expect("alert lock is never poisoned");
        for alerts in book.values_mut() {
            alerts.retain(|a| a.expires_at > now);
        }
        book.retain(|_, alerts| !alerts.is_empty());
        for batch in batches {
            let ids = batch.column(0).as_string::<i32>();
            let devices = batch.column(1).as_string::<i32>();
            let priorities = batch.column(2).as_string::<i32>();
            let issued = batch.column(3).as_primitive::<TimestampMicrosecondType>();
            let expires = batch.column(4).as_primitive::<TimestampMicrosecondType>();
            let days = batch.column(5).as_primitive::<Date32Type>();
            for i in 0..batch.num_rows() {
                let alerts = book.entry(devices.value(i).to_string()).or_default();
                if alerts.iter().any(|a| a.id == ids.value(i)) {
                    continue;
                }
                alerts.push(Alert {
                    id: ids.value(i).to_string(),
                    priority: priority_name(priorities.value(i)),
                    issued_at: DateTime::from_timestamp_micros(issued.value(i)).unwrap_or_default(),
                    expires_at: DateTime::from_timestamp_micros(expires.value(i)).unwrap_or_default(),
                    exposure_day: schema::date_from_epoch_days(days.value(i)),
                });
            }
        }
        Ok(())
    }

    /// Adds an alert just issued here, unless a reload after a flush brought it in already.
    fn add(&self, device: &str, alert: Alert) {
        let mut book = self.by_device.write().expect("alert lock is never poisoned");
        let alerts = book.entry(device.to_string()).or_default();
        if !alerts.iter().any(|a| a.id == alert.id) {
            alerts.push(alert);
        }
    }

    /// The device's alerts that have not expired at `now`, newest first.
    pub fn of(&self, device: &str, now: DateTime<Utc>) -> Vec<AlertOut> {
        let book = self.by_device.read().expect("alert lock is never poisoned");
        let mut alerts: Vec<&Alert> = book
            .get(device)
            .into_iter()
            .flatten()
            .filter(|a| a.expires_at > now)
            .collect();
        alerts.sort_by_key(|a| std::cmp::Reverse(a.issued_at));
        alerts.into_iter().map(Alert::out).collect()
    }
}

/// `POST /v1/cases`: reports a case, traces it and alerts its contacts (role `tracer`).
#[utoipa::path(post, path = "/v1/cases", tag = "cases", request_body = ReportCase,
    security(("staff_basic" = []), ("staff_token" = [])),
    responses(
        (status = 201, description = "Case opened and alerts issued", body = CaseOpened),
        (status = 401, description = "Missing or bad credentials", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 403, description = "Role is not tracer", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 409, description = "The device is revoked", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = super::error::ErrorBody, content_type = "application/problem+json"),
    ))]
pub async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<CaseOpened>)> {
    let principal = state.staff(&headers, &[Role::Tracer]).await?;
    require_json(&headers)?;
    let bytes = read_limited(&headers, body, state.options.max_body).await?;
    let request: ReportCase = typed(parse_json(&bytes)?, "body")?;
    let device =
        ids::device_uuid(&request.device_uuid).map_err(|e| ApiError::invalid(format!("body.device_uuid: {e}")))?;
    let now = state.clock.now();
    let reported_at = match &request.reported_at {
        Some(text) => parse_time(text, "body.reported_at")?,
        None => now,
    };
    if reported_at > now + state.options.future_tolerance {
        return Err(ApiError::invalid(format!(
            "body.reported_at: {} is in the future",
            reported_at.to_rfc3339()
        )));
    }
    let case_id = match &request.case_id {
        Some(id) => Some(ids::case_id(id).map_err(|e| ApiError::invalid(format!("body.case_id: {e}")))?),
        None => None,
    };
    let opened = open_case(&state, &principal, &device, request.status, reported_at, case_id).await?;
    Ok((StatusCode::CREATED, Json(opened)))
}

/// A case id being opened: held from before the check that no case has it until the case
/// is durable (or the report fails), so that two reports never open the same id.
struct Opening<'a> {
    state: &'a AppState,
    case_id: String,
}

impl<'a> Opening<'a> {
    fn claim(state: &'a AppState, case_id: &str) -> ApiResult<Self> {
        let mut opening = state
            .opening
            .lock()
            .map_err(|_| ApiError::internal("opening a case", "a poisoned lock"))?;
        if !opening.insert(case_id.to_string()) {
            return Err(ApiError::conflict(format!(
                "case {case_id} is being reported by another request"
            )));
        }
        Ok(Self {
            state,
            case_id: case_id.to_string(),
        })
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if let Ok(mut opening) = self.state.opening.lock() {
            opening.remove(&self.case_id);
        }
    }
}

/// Opens a case (with `requested_id`, or a new id): flush, trace, write the case and its
/// alerts durably.
async fn open_case(
    state: &AppState,
    principal: &Principal,
    device: &str,
    status: CaseStatus,
    reported_at: DateTime<Utc>,
    requested_id: Option<String>,
) -> ApiResult<CaseOpened> {
    let case_id = requested_id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    // The report's purpose is its case, whether or not it succeeds.
    super::audit::cite(format!("case:{case_id}"), &["cases", "trace_contacts", "alerts"]);
    state.resolve_device(device).await?;
    match state.registry.status(device) {
        None => return Err(ApiError::not_found(format!("no device {device}"))),
        Some(true) => return Err(ApiError::conflict(format!("device {device} is revoked"))),
        Some(false) => {}
    }
    let _opening = Opening::claim(state, &case_id)?;
    state
        .flush()
        .await
        .map_err(|e| ApiError::internal("flushing acknowledged observations before the trace failed", e))?;
    let started = Instant::now();
    // The trace is the service's own work on behalf of the report: the caller gets counts,
    // never the contacts, so it runs in a full session rather than the caller's role's
    // (a station that reports a fever sees no data). The call itself is audited.
    let ctx = state
        .factory
        .session()
        .await
        .map_err(|e| ApiError::internal("opening a tracing session failed", e))?;
    if requested_id.is_some() {
        // Every case acknowledged before is in the store: the WAL was just flushed.
        let existing = ctx
            .sql(&format!("SELECT count(*) FROM cases WHERE case_id = '{case_id}'"))
            .await
            .map_err(|e| ApiError::internal("looking the case id up failed", e))?
            .collect()
            .await
            .map_err(|e| ApiError::internal("looking the case id up failed", e))?;
        let count = existing.first().map_or(0, |b| {
            b.column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0)
        });
        if count > 0 {
            return Err(ApiError::conflict(format!("case {case_id} already exists")));
        }
    }
    let sql = format!(
        "SELECT contact, priority, exposed_at FROM trace_contacts('{device}', TIMESTAMP '{}')",
        reported_at.to_rfc3339()
    );
    let contacts = ctx
        .sql(&sql)
        .await
        .map_err(|e| ApiError::internal("tracing the case failed", e))?
        .collect()
        .await
        .map_err(|e| ApiError::internal("tracing the case failed", e))?;
    state.metrics.trace_seconds.observe(started.elapsed().as_secs_f64());

    let now = state.clock.now();
    // For the case rollup's secondary-attack proxy: cases of devices that had been alerted.
    let after_alert = !state.alerts.of(device, now).is_empty();
    let expires_at = now + state.options.alert_ttl;
    let mut counts = AlertCounts::default();
    let mut alerts = Vec::new();
    for batch in &contacts {
        let who = batch.column(0).as_string::<i32>();
        let priorities = batch.column(1).as_string::<i32>();
        let exposed = batch.column(2).as_primitive::<TimestampMicrosecondType>();
        for i in 0..batch.num_rows() {
            let contact = who.value(i);
            state.resolve_device(contact).await?;
            if !state.registry.is_active(contact) {
                continue;
            }
            let priority = priority_name(priorities.value(i));
            if priority == "high" {
                counts.high += 1;
            } else {
                counts.medium += 1;
            }
            let exposure = DateTime::from_timestamp_micros(exposed.value(i)).unwrap_or(reported_at);
            alerts.push((
                contact.to_string(),
                Alert {
                    id: uuid::Uuid::now_v7().to_string(),
                    priority,
                    issued_at: now,
                    expires_at,
                    exposure_day: exposure.date_naive(),
                },
            ));
        }
    }
    let case_row = RecordBatch::try_new(
        schema::CASES.clone(),
        vec![
            strings([case_id.as_str()]),
            strings([device]),
            strings([status.name()]),
            micros([reported_at]),
            strings([principal.qualified_name().as_str()]),
            Arc::new(Int32Array::from(vec![counts.high as i32])),
            Arc::new(Int32Array::from(vec![counts.medium as i32])),
            // Placed in its cell by the flush that stores it (see `proxima_storage::rollup`).
            Arc::new(StringArray::new_null(1)),
            Arc::new(BooleanArray::from(vec![after_alert])),
        ],
    )
    .map_err(|e| ApiError::internal("building the case row failed", e))?;
    let mut entries = vec![Entry {
        table: Table::Cases,
        batch: case_row,
    }];
    if !alerts.is_empty() {
        let alert_rows = RecordBatch::try_new(
            schema::ALERTS.clone(),
            vec![
                strings(alerts.iter().map(|(_, a)| a.id.as_str())),
                strings(alerts.iter().map(|(d, _)| d.as_str())),
                strings(alerts.iter().map(|_| case_id.as_str())),
                strings(alerts.iter().map(|(_, a)| a.priority)),
                micros(alerts.iter().map(|_| now)),
                micros(alerts.iter().map(|_| expires_at)),
                Arc::new(Date32Array::from_iter_values(
                    alerts.iter().map(|(_, a)| schema::epoch_days(a.exposure_day)),
                )) as ArrayRef,
            ],
        )
        .map_err(|e| ApiError::internal("building the alert rows failed", e))?;
        entries.push(Entry {
            table: Table::Alerts,
            batch: alert_rows,
        });
    }
    state.make_durable(entries, "case").await?;
    // Flushed again at once, so that the case is in the store when the tracer who reported it
    // declares it as their purpose (and its alerts reach every node's book). The case is
    // durable already: a failed flush is left to the next periodic one.
    if let Err(e) = state.flush().await {
        tracing::warn!(target: "proxima::http", case = %case_id, error = %e, "flushing the new case failed; it is in the write-ahead log and the next flush stores it");
    }
    for (device, alert) in alerts {
        state.alerts.add(&device, alert);
    }
    for (priority, n) in [("high", counts.high), ("medium", counts.medium)] {
        state
            .metrics
            .alerts_issued
            .get_or_create(&PriorityLabels {
                priority: priority.to_string(),
            })
            .inc_by(u64::from(n));
    }
    tracing::info!(target: "proxima::http", case = %case_id, status = status.name(), by = %principal.name, high = counts.high, medium = counts.medium, "case opened");
    Ok(CaseOpened {
        case_id,
        alerts: counts,
    })
}

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn micros(values: impl IntoIterator<Item = DateTime<Utc>>) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from_iter_values(values.into_iter().map(|t| t.timestamp_micros()))
            .with_timezone("UTC"),
    )
}

/// `POST /v1/temperature`: a station's reading (role `station`); a fever opens a suspected case.
#[utoipa::path(post, path = "/v1/temperature", tag = "cases", request_body = TemperatureIn,
    security(("staff_basic" = []), ("staff_token" = [])),
    responses(
        (status = 201, description = "Stored (and a case opened if feverish)", body = TemperatureStored),
        (status = 401, description = "Missing or bad credentials", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 403, description = "Role is not station", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = super::error::ErrorBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = super::error::ErrorBody, content_type = "application/problem+json"),
    ))]
pub async fn temperature(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<(StatusCode, Json<TemperatureStored>)> {
    let principal = state.staff(&headers, &[Role::Station]).await?;
    require_json(&headers)?;
    let bytes = read_limited(&headers, body, state.options.max_body).await?;
    let reading: TemperatureIn = typed(parse_json(&bytes)?, "body")?;
    let device =
        ids::device_uuid(&reading.device_uuid).map_err(|e| ApiError::invalid(format!("body.device_uuid: {e}")))?;
    let measured_at = parse_time(&reading.measured_at, "body.measured_at")?;
    let now = state.clock.now();
    if measured_at > now + state.options.future_tolerance {
        return Err(ApiError::invalid(format!(
            "body.measured_at: {} is in the future",
            measured_at.to_rfc3339()
        )));
    }
    if !(30.0..=45.0).contains(&reading.celsius) {
        return Err(ApiError::invalid(format!(
            "body.celsius: {} is not a body temperature (30 to 45 °C)",
            reading.celsius
        )));
    }
    let site_ok = (1..=64).contains(&reading.site.len())
        && reading
            .site
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !site_ok {
        return Err(ApiError::invalid(
            "body.site: 1 to 64 letters, digits, '-', '_' or '.' (a site code, not a name or address)",
        ));
    }
    state.resolve_device(&device).await?;
    match state.registry.status(&device) {
        None => return Err(ApiError::not_found(format!("no device {device}"))),
        Some(true) => return Err(ApiError::conflict(format!("device {device} is revoked"))),
        Some(false) => {}
    }
    let row = RecordBatch::try_new(
        schema::TEMPERATURE_READINGS.clone(),
        vec![
            strings([device.as_str()]),
            micros([measured_at]),
            Arc::new(Float64Array::from(vec![reading.celsius])),
            strings([reading.site.as_str()]),
            strings([principal.qualified_name().as_str()]),
            Arc::new(StringArray::new_null(1)),
        ],
    )
    .map_err(|e| ApiError::internal("building the reading row failed", e))?;
    state
        .make_durable(
            vec![Entry {
                table: Table::TemperatureReadings,
                batch: row,
            }],
            "reading",
        )
        .await?;
    let case = if reading.celsius >= state.options.fever_threshold {
        Some(open_case(&state, &principal, &device, CaseStatus::Suspected, measured_at, None).await?)
    } else {
        None
    };
    Ok((StatusCode::CREATED, Json(TemperatureStored { case })))
}

/// `GET /v1/alerts`: the calling device's unexpired alerts.
#[utoipa::path(get, path = "/v1/alerts", tag = "alerts",
    security(("upload_token" = [])),
    responses(
        (status = 200, description = "This device's unexpired alerts, newest first", body = Vec<AlertOut>),
        (status = 401, description = "Missing or bad upload token", body = super::error::ErrorBody, content_type = "application/problem+json"),
    ))]
pub async fn alerts(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Json<Vec<AlertOut>>> {
    let device = state.device_of(&headers).await?;
    Ok(Json(state.alerts.of(&device, state.clock.now())))
}
