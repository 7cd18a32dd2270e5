//! The analysts' dashboard, `/dashboard` on the REST port: per-day trends of contacts,
//! cases and alerts, a map-like grid of cells with a day slider, and the policy-intervention
//! comparison, drawn on the server as SVG from the aggregate views alone, with JSON and CSV
//! downloads of the same figures.
//!
//! Sign-in is the staff one: the form's user and password go through the same check as
//! Basic credentials (rate limits, bounded hashing, the audit), and only the `analyst`
//! role is let in; the browser then holds a staff bearer token in a cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` under TLS, scoped to `/dashboard`), which every later
//! request is checked and audited by like any staff call. Every statement runs in the
//! analyst's own session ([`data`]), so the page can show nothing the role could not read
//! over Flight SQL. The page loads nothing from elsewhere: its script and stylesheet are
//! compiled into the binary, and its Content-Security-Policy allows nothing else.

mod data;
mod page;
mod svg;

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::NaiveDate;
use proxima_engine::{Principal, Role};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiResult};

/// The cookie that holds the signed-in analyst's token.
const COOKIE: &str = "proxima_dashboard";

/// The page's script and stylesheet, compiled in.
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// What the page may load: itself only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes (merged into the REST router, inside its audit middleware).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(show))
        .route("/dashboard/login", post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/grid.svg", get(grid))
        .route("/dashboard/data/{file}", get(download))
        .route(
            "/dashboard/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset(STYLE_CSS, "text/css; charset=utf-8") }),
        )
}

/// What the page is asked to show (every field optional; defaults from the data).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct View {
    /// The grid's day.
    day: Option<String>,
    /// The grid's measure.
    measure: Option<String>,
    /// The intervention's region (a geohash prefix of 1 to 4 characters).
    region: Option<String>,
    /// The policy's first day.
    date: Option<String>,
    /// The comparison's window.
    from: Option<String>,
    to: Option<String>,
}

/// A day parameter (`YYYY-MM-DD`; empty: not given).
fn day_param(name: &str, value: &Option<String>) -> ApiResult<Option<NaiveDate>> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        // Four-digit years only: chrono takes more, which SQL's DATE literals do not.
        Some(text) => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .filter(|_| text.len() == 10)
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "{name}: '{}' is not a date YYYY-MM-DD",
                    text.chars().take(40).collect::<String>()
                ))
            }),
    }
}

impl View {
    fn measure(&self) -> ApiResult<&'static str> {
        match self.measure.as_deref().map(str::trim) {
            None | Some("") => Ok(page::MEASURES[0].0),
            Some(m) => page::MEASURES.iter().map(|(v, _)| *v).find(|v| *v == m).ok_or_else(|| {
                ApiError::invalid(format!(
                    "measure: '{}' is not one of contacts_per_device, confirmed_per_1000_devices",
                    m.chars().take(40).collect::<String>()
                ))
            }),
        }
    }

    fn region(&self) -> ApiResult<Option<String>> {
        match self.region.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(text) => match proxima_engine::ids::geohash(text) {
                Ok(region) if region.len() <= 4 => Ok(Some(region)),
                _ => Err(ApiError::invalid(format!(
                    "region: '{}' is not a geohash prefix of 1 to 4 characters",
                    text.chars().take(40).collect::<String>()
                ))),
            },
        }
    }
}

/// The signed-in analyst of a request (audited as a staff call), or why not.
async fn analyst(state: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    let token = cookie(headers).ok_or_else(|| ApiError::unauthorized("sign in first"))?;
    let mut bearer = HeaderMap::new();
    bearer.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ApiError::unauthorized("a malformed cookie"))?,
    );
    let principal = state.staff(&bearer, &[Role::Analyst]).await?;
    super::audit::read(data::VIEWS_READ);
    Ok(principal)
}

/// The dashboard cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

/// A `Set-Cookie` value for `token` lasting `seconds` (0: removes it).
fn set_cookie(state: &AppState, token: &str, seconds: u64) -> HeaderValue {
    let secure = if state.options.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={token}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={seconds}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("proxima_dashboard=; Path=/dashboard; Max-Age=0"))
}

/// An HTML response with the page's security headers.
fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(headers);
    response
}

fn secure_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Not `no-referrer`: with it Chromium sends `Origin: null` on the sign-in form's POST,
    // which the origin check must refuse.
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// The page for a refused sign-in or session: the form again (401, 429, 503) or a refusal
/// (403), and the cookie removed if it no longer stands.
fn refused(state: &AppState, error: &ApiError) -> Response {
    let mut response = match error.status() {
        StatusCode::FORBIDDEN => html(
            StatusCode::FORBIDDEN,
            page::refusal("The dashboard is for the analyst role: it shows aggregates only."),
        ),
        status => html(status, page::login(Some(error.detail()))),
    };
    if error.status() == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::SET_COOKIE, set_cookie(state, "", 0));
    }
    response
}

/// `GET /dashboard`: the sign-in form, or the dashboard of the signed-in analyst.
async fn show(State(state): State<AppState>, headers: HeaderMap, Query(view): Query<View>) -> Response {
    if cookie(&headers).is_none() {
        return html(StatusCode::OK, page::login(None));
    }
    let principal = match analyst(&state, &headers).await {
        Ok(principal) => principal,
        // A token that lapsed or no longer stands: sign in again, said plainly.
        Err(error) if error.status() == StatusCode::UNAUTHORIZED => {
            let ended = ApiError::unauthorized(format!("Your session has ended ({}): sign in again.", error.detail()));
            return refused(&state, &ended);
        }
        Err(error) => return refused(&state, &error),
    };
    match render(&state, &principal, &view).await {
        Ok(body) => html(StatusCode::OK, body),
        Err(error) => error.into_response(),
    }
}

/// The sign-in form's fields.
#[derive(Deserialize)]
struct Credentials {
    user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// `POST /dashboard/login`: checks the form's credentials as Basic ones (audited, rate
/// limited), admits the analyst role only, and sets the cookie.
async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<Credentials>, axum::extract::rejection::FormRejection>,
) -> Response {
    // A sign-in posted from another site's page is refused (the cookie is SameSite too).
    if !same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            page::login(Some("sign in from the dashboard's own page")),
        );
    }
    let Ok(Form(credentials)) = form else {
        return html(
            StatusCode::BAD_REQUEST,
            page::login(Some("send the form's user and password")),
        );
    };
    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", credentials.user, credentials.password));
    let mut as_basic = HeaderMap::new();
    match HeaderValue::from_str(&format!("Basic {basic}")) {
        Ok(value) => as_basic.insert(header::AUTHORIZATION, value),
        Err(_) => {
            return html(
                StatusCode::BAD_REQUEST,
                page::login(Some("wrong user name or password")),
            );
        }
    };
    match state.staff_stamped(&as_basic, &[Role::Analyst]).await {
        Ok((principal, stamp)) => {
            let login = state.staff_auth.login_time(&as_basic);
            let token = state.staff_auth.issue(principal, login, stamp);
            let mut response = (StatusCode::SEE_OTHER, "").into_response();
            let headers = response.headers_mut();
            headers.insert(header::LOCATION, HeaderValue::from_static("/dashboard"));
            headers.insert(header::SET_COOKIE, set_cookie(&state, &token.token, token.expires_in));
            secure_headers(headers);
            response
        }
        Err(error) => refused(&state, &error),
    }
}

/// Whether a form was posted from this server's own pages: its `Origin`, if the browser
/// sent one, names the host the request was sent to (behind a proxy that rewrites `Host`,
/// the proxy must pass the original one).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin.split_once("://").map_or(origin, |(_, rest)| rest) == host
}

/// `POST /dashboard/logout`: removes the cookie (the token itself lapses at its expiry).
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            page::refusal("Sign out from the dashboard's own page."),
        );
    }
    let mut response = (StatusCode::SEE_OTHER, "").into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static("/dashboard"));
    headers.insert(header::SET_COOKIE, set_cookie(&state, "", 0));
    secure_headers(headers);
    response
}

/// Every day and cell the analyst may see, read once per request.
struct Cells {
    days: Vec<NaiveDate>,
    cells: Vec<String>,
    contacts_per_device: Vec<Option<f64>>,
    confirmed_per_1000: Vec<Option<f64>>,
}

impl Cells {
    async fn read(state: &AppState, principal: &Principal) -> ApiResult<Self> {
        let batches = data::query(&state.factory, principal, data::CELLS_SQL).await?;
        Ok(Self {
            days: data::days(&batches, "day")?,
            cells: data::texts(&batches, "cell")?,
            contacts_per_device: data::numbers(&batches, "contacts_per_device")?,
            confirmed_per_1000: data::numbers(&batches, "confirmed_per_1000_devices")?,
        })
    }

    fn distinct_days(&self) -> Vec<NaiveDate> {
        self.days.iter().copied().collect::<BTreeSet<_>>().into_iter().collect()
    }

    fn values(&self, measure: &str) -> &[Option<f64>] {
        if measure == "contacts_per_device" {
            &self.contacts_per_device
        } else {
            &self.confirmed_per_1000
        }
    }

    /// The grid of `day`: every cell any day shows, valued where `day` shows it.
    fn grid(&self, day: Option<NaiveDate>, measure: &'static str) -> String {
        let all: BTreeSet<&str> = self.cells.iter().map(String::as_str).collect();
        let values = self.values(measure);
        let on_day: std::collections::HashMap<&str, Option<f64>> = (0..self.days.len())
            .filter(|&i| Some(self.days[i]) == day)
            .map(|i| (self.cells[i].as_str(), values[i]))
            .collect();
        let scale_max = values.iter().flatten().fold(0.0_f64, |m, v| m.max(*v));
        let cells: Vec<svg::Cell> = all
            .into_iter()
            .filter_map(|cell| {
                let rect = geohash::decode_bbox(cell).ok()?;
                let value = on_day.get(cell).copied().flatten();
                Some(svg::Cell {
                    cell: cell.to_string(),
                    bbox: [rect.min().x, rect.min().y, rect.max().x, rect.max().y],
                    value,
                })
            })
            .collect();
        let label = page::MEASURES
            .iter()
            .find(|(v, _)| *v == measure)
            .map_or(measure, |(_, l)| l);
        let day_text = day.map(|d| d.to_string()).unwrap_or_default();
        let svg = svg::cell_grid(
            "grid-chart",
            &format!("{label} per cell, {day_text}"),
            &cells,
            scale_max,
            4,
        );
        // The day and measure drawn, for the page's script and tests.
        svg.replacen(
            "<svg ",
            &format!("<svg data-day=\"{day_text}\" data-measure=\"{measure}\" "),
            1,
        )
    }
}

/// The dashboard page of `principal`.
async fn render(state: &AppState, principal: &Principal, view: &View) -> ApiResult<String> {
    let measure = view.measure()?;
    let wanted_day = day_param("day", &view.day)?;
    let region = view.region()?;
    let (date, from, to) = (
        day_param("date", &view.date)?,
        day_param("from", &view.from)?,
        day_param("to", &view.to)?,
    );
    let trends = data::query(&state.factory, principal, data::TRENDS_SQL).await?;
    let trend_days = data::days(&trends, "day")?;
    let series = |name: &str| data::numbers(&trends, name);
    let (contacts, suspected, confirmed) = (series("contacts")?, series("suspected")?, series("confirmed")?);
    let (high, medium) = (series("alerts_high")?, series("alerts_medium")?);
    let (suspected_suppressed, confirmed_suppressed) =
        (series("suspected_suppressed")?, series("confirmed_suppressed")?);
    let (high_suppressed, medium_suppressed) = (series("alerts_high_suppressed")?, series("alerts_medium_suppressed")?);
    let charts = [
        svg::bars_per_day(
            "contacts-chart",
            "contacts per day",
            &trend_days,
            &[svg::Series {
                name: "contacts",
                colour: "#1565c0",
                values: &contacts,
                suppressed_cells: &[],
            }],
        ),
        svg::bars_per_day(
            "cases-chart",
            "new cases per day",
            &trend_days,
            &[
                svg::Series {
                    name: "suspected",
                    colour: "#ffb74d",
                    values: &suspected,
                    suppressed_cells: &suspected_suppressed,
                },
                svg::Series {
                    name: "confirmed",
                    colour: "#c62828",
                    values: &confirmed,
                    suppressed_cells: &confirmed_suppressed,
                },
            ],
        ),
        svg::bars_per_day(
            "alerts-chart",
            "alerts issued per day",
            &trend_days,
            &[
                svg::Series {
                    name: "high",
                    colour: "#6a1b9a",
                    values: &high,
                    suppressed_cells: &high_suppressed,
                },
                svg::Series {
                    name: "medium",
                    colour: "#ba68c8",
                    values: &medium,
                    suppressed_cells: &medium_suppressed,
                },
            ],
        ),
    ];
    let cells = Cells::read(state, principal).await?;
    let days = cells.distinct_days();
    let day = wanted_day.or_else(|| days.last().copied());
    let grid = cells.grid(day, measure);
    // The comparison: the region asked for, else the 3-character prefix of the cell with
    // the most rows; the policy date the window's middle day.
    let (first, last) = (days.first().copied(), days.last().copied());
    let intervention = match (first, last) {
        (Some(first), Some(last)) => {
            let region = region.unwrap_or_else(|| busiest_prefix(&cells.cells));
            let from = from.unwrap_or(first);
            let to = to.unwrap_or(last);
            let date = date.unwrap_or_else(|| from + (to - from) / 2);
            Some((region, date, from, to))
        }
        _ => None,
    };
    let (comparison, comparison_rows) = match &intervention {
        Some((region, date, from, to)) => compare(state, principal, region, *date, *from, *to).await?,
        None => (String::new(), Vec::new()),
    };
    let options = state.factory.options();
    Ok(page::dashboard(&page::Dashboard {
        user: &principal.name,
        min_cell: options.min_cell.unwrap_or(proxima_engine::session::DEFAULT_MIN_CELL),
        min_count: options.min_count.unwrap_or(proxima_engine::session::DEFAULT_MIN_COUNT),
        trends: charts,
        days: &days,
        day,
        measure,
        grid,
        intervention: intervention
            .as_ref()
            .map(|(region, date, from, to)| (region.as_str(), *date, *from, *to)),
        comparison,
        comparison_rows,
    }))
}

/// The 3-character geohash prefix most cells start with (ties: the first).
fn busiest_prefix(cells: &[String]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for cell in cells {
        *counts.entry(&cell[..cell.len().min(3)]).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
        .map_or_else(String::new, |(prefix, _)| prefix.to_string())
}

/// Rows of the intervention comparison: measure and its five figures.
type ComparisonRows = Vec<(String, [Option<f64>; 5])>;

/// The intervention job's answer as a chart and rows.
async fn compare(
    state: &AppState,
    principal: &Principal,
    region: &str,
    date: NaiveDate,
    from: NaiveDate,
    to: NaiveDate,
) -> ApiResult<(String, ComparisonRows)> {
    let batches = data::query(
        &state.factory,
        principal,
        &data::intervention_sql(region, date, from, to)?,
    )
    .await?;
    let measures = data::texts(&batches, "measure")?;
    let columns = [
        data::numbers(&batches, "region_before")?,
        data::numbers(&batches, "region_after")?,
        data::numbers(&batches, "others_before")?,
        data::numbers(&batches, "others_after")?,
        data::numbers(&batches, "difference_in_differences")?,
    ];
    let rows: ComparisonRows = measures
        .into_iter()
        .enumerate()
        .map(|(i, m)| (m, [0, 1, 2, 3, 4].map(|c| columns[c][i])))
        .collect();
    let comparisons: Vec<svg::Comparison<'_>> = rows
        .iter()
        .map(|(measure, f)| svg::Comparison {
            measure,
            rates: [f[0], f[1], f[2], f[3]],
        })
        .collect();
    Ok((svg::intervention("intervention-chart", &comparisons), rows))
}

/// `GET /dashboard/grid.svg?day=&measure=`: the grid of one day (what the slider fetches).
async fn grid(State(state): State<AppState>, headers: HeaderMap, Query(view): Query<View>) -> ApiResult<Response> {
    let principal = analyst(&state, &headers).await?;
    let measure = view.measure()?;
    let cells = Cells::read(&state, &principal).await?;
    let day = day_param("day", &view.day)?.or_else(|| cells.distinct_days().last().copied());
    let mut response = cells.grid(day, measure).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
    secure_headers(response.headers_mut());
    Ok(response)
}

/// `GET /dashboard/data/{trends,cells,intervention}.{json,csv}`: the figures the page
/// draws, suppressed values as null (JSON) or empty (CSV), never as numbers.
async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(file): Path<String>,
    Query(view): Query<View>,
) -> ApiResult<Response> {
    let (name, format) = file
        .rsplit_once('.')
        .filter(|(_, f)| matches!(*f, "json" | "csv"))
        .ok_or_else(|| ApiError::not_found("downloads are trends, cells or intervention, as .json or .csv"))?;
    let principal = analyst(&state, &headers).await?;
    let sql = match name {
        "trends" => data::TRENDS_SQL.to_string(),
        "cells" => match day_param("day", &view.day)? {
            Some(day) => {
                format!(
                    "SELECT * FROM ({}) WHERE day = DATE '{day}'",
                    data::CELLS_SQL.replace(" ORDER BY day, cell", "")
                ) + " ORDER BY cell"
            }
            None => data::CELLS_SQL.to_string(),
        },
        "intervention" => {
            let region = view
                .region()?
                .ok_or_else(|| ApiError::invalid("region: give a geohash prefix of 1 to 4 characters"))?;
            let need = |name: &str, value: &Option<String>| {
                day_param(name, value)?.ok_or_else(|| ApiError::invalid(format!("{name}: give a date YYYY-MM-DD")))
            };
            data::intervention_sql(
                &region,
                need("date", &view.date)?,
                need("from", &view.from)?,
                need("to", &view.to)?,
            )?
        }
        _ => {
            return Err(ApiError::not_found(
                "downloads are trends, cells or intervention, as .json or .csv",
            ));
        }
    };
    let (schema, batches) = data::query_with_schema(&state.factory, &principal, &sql).await?;
    let (body, content_type) = match format {
        "json" => (data::to_json(&batches)?, "application/json"),
        _ => (data::to_csv(&batches, &schema)?, "text/csv; charset=utf-8"),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.{format}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    secure_headers(headers);
    Ok(response)
}
