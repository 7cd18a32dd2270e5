//! The analysts' dashboard of the real `proxima serve`, over real HTTP (reqwest) and in a
//! real browser (Debian's Chromium driven by Playwright): sign-in and its refusals, the
//! cookie, every figure the page and its downloads show checked against the same figures
//! recomputed here from the raw tables (not through the views), suppression in the page,
//! JSON and CSV, refusals of bad parameters, and the audit of each call.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::{self, Server};

/// Cell-days under this many devices are not shown (the test's `--min-cell`).
const MIN_CELL: i64 = 1500;
/// Counts under this are suppressed (the test's `--min-count`).
const MIN_COUNT: i64 = 2;

/// `proxima --data STORE <args>`, which must succeed; its standard output.
fn proxima(store: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_proxima"))
        .arg("--data")
        .arg(store)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("PROXIMA_MASTER_KEY")
        .env_remove("PROXIMA_MASTER_KEY_FILE")
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();
    assert!(output.status.success(), "proxima {args:?}: {}", text(&output.stderr));
    text(&output.stdout)
}

/// A generated population (12,000 devices over 6 days: enough cases for counts both
/// suppressed and shown), made once per run of the tests (under cargo's temporary folder
/// for tests, replaced each run) and copied for each test (each server writes its own
/// audit log and WAL into its store).
fn store_copy(into: &Path) -> PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let store = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-store");
        if store.exists() {
            std::fs::remove_dir_all(&store).unwrap();
        }
        proxima(
            &store,
            &["generate", "--devices", "12000", "--days", "6", "--seed", "7"],
        );
        store
    });
    let copy = into.join("store");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(template)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    copy
}

/// A (day, cell) key.
type Key = (String, String);

/// A day's contacts, its case columns as shown (suspected, confirmed, alerts high and
/// medium) and the cells each left out.
type DayFigures = (i64, [Option<i64>; 4], [i64; 4]);

/// What the raw tables say, computed with full access by the local CLI (the rules of the
/// rollups written out again in SQL, not the views).
struct Expected {
    /// Per day and cell: contacts and distinct devices (the same sketch the rollup keeps).
    cells: BTreeMap<Key, (i64, i64)>,
    /// Per day and cell with a case or a temperature reading (a row of `case_rollup`):
    /// suspected, confirmed, alerts high, alerts medium.
    cases: BTreeMap<Key, [i64; 4]>,
}

impl Expected {
    fn compute(store: &Path) -> Self {
        let csv = |sql: &str| -> Vec<Vec<String>> {
            proxima(store, &["sql", "--format", "csv", "-c", sql])
                .lines()
                .skip(1)
                .map(|line| line.split(',').map(str::to_string).collect())
                .collect()
        };
        let int = |s: &String| s.parse::<i64>().unwrap();
        let cells = csv(
            "SELECT CAST(day AS VARCHAR), substr(location, 1, 4), count(*) FILTER (WHERE a_heard), \
             hll_count(hll_sketch(a)) FROM encounters WHERE location IS NOT NULL GROUP BY 1, 2",
        )
        .into_iter()
        .map(|r| ((r[0].clone(), r[1].clone()), (int(&r[2]), int(&r[3]))))
        .collect();
        let cases = csv("SELECT day, cell, sum(s), sum(c), sum(h), sum(m) FROM ( \
             SELECT CAST(CAST(reported_at AS DATE) AS VARCHAR) AS day, cell, \
             CASE WHEN status = 'suspected' THEN 1 ELSE 0 END AS s, \
             CASE WHEN status = 'confirmed' THEN 1 ELSE 0 END AS c, \
             CAST(alerts_high AS BIGINT) AS h, CAST(alerts_medium AS BIGINT) AS m FROM cases WHERE cell IS NOT NULL \
             UNION ALL SELECT CAST(CAST(measured_at AS DATE) AS VARCHAR), cell, 0, 0, 0, 0 \
             FROM temperature_readings WHERE cell IS NOT NULL) GROUP BY 1, 2")
        .into_iter()
        .map(|r| {
            (
                (r[0].clone(), r[1].clone()),
                [int(&r[2]), int(&r[3]), int(&r[4]), int(&r[5])],
            )
        })
        .collect();
        Self { cells, cases }
    }

    /// The cell-days shown: those of at least MIN_CELL devices.
    fn shown(&self) -> BTreeSet<&Key> {
        self.cells
            .iter()
            .filter(|(_, (_, d))| *d >= MIN_CELL)
            .map(|(k, _)| k)
            .collect()
    }

    /// A count as the views show it: 0 or at least MIN_COUNT, else suppressed.
    fn count(n: i64) -> Option<i64> {
        (n == 0 || n >= MIN_COUNT).then_some(n)
    }

    /// Confirmed cases of a shown cell-day as the views show them.
    fn confirmed(&self, key: &Key) -> Option<i64> {
        Self::count(self.cases.get(key).map_or(0, |c| c[1]))
    }

    /// The days with a shown cell, in order.
    fn days(&self) -> Vec<String> {
        self.shown()
            .into_iter()
            .map(|(d, _)| d.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Every cell any day shows.
    fn all_cells(&self) -> BTreeSet<String> {
        self.shown().into_iter().map(|(_, c)| c.clone()).collect()
    }

    /// A case column of a shown cell-day as `case_rollup` shows it (0 to 3: suspected,
    /// confirmed, alerts high, alerts medium): alerts only where their reports are shown.
    fn case_column(&self, key: &Key, i: usize) -> Option<i64> {
        let row = self.cases.get(key)?;
        let reports = row[0] + row[1];
        if i >= 2 && Self::count(reports) != Some(reports) {
            return None;
        }
        Self::count(row[i])
    }

    /// Per day: contacts over the shown cells; each case column summed over the shown
    /// cells whose count is shown (None if every one with a case row is suppressed; 0 if
    /// the day has no case row in a shown cell); and per column the cells left out.
    fn trends(&self) -> BTreeMap<String, DayFigures> {
        let mut out = BTreeMap::new();
        for day in self.days() {
            let shown: Vec<&Key> = self.shown().into_iter().filter(|(d, _)| *d == day).collect();
            let contacts = shown.iter().map(|k| self.cells[*k].0).sum();
            let rows: Vec<&Key> = shown.iter().copied().filter(|k| self.cases.contains_key(*k)).collect();
            let column = |i: usize| -> Option<i64> {
                if rows.is_empty() {
                    return Some(0);
                }
                let values: Vec<i64> = rows.iter().filter_map(|k| self.case_column(k, i)).collect();
                (!values.is_empty()).then(|| values.iter().sum())
            };
            let left_out = |i: usize| rows.iter().filter(|k| self.case_column(k, i).is_none()).count() as i64;
            out.insert(
                day,
                (
                    contacts,
                    [column(0), column(1), column(2), column(3)],
                    [left_out(0), left_out(1), left_out(2), left_out(3)],
                ),
            );
        }
        out
    }
}

/// The server on a copy of the generated store, with the test's thresholds.
fn start(dir: &Path) -> (Server, PathBuf, Expected) {
    let store = store_copy(dir);
    let expected = Expected::compute(&store);
    let server = Server::start(&[
        "--data",
        store.to_str().unwrap(),
        "serve",
        "--http",
        "127.0.0.1:0",
        "--flight",
        "127.0.0.1:0",
        "--admin-http",
        "127.0.0.1:0",
        "--min-cell",
        &MIN_CELL.to_string(),
        "--min-count",
        &MIN_COUNT.to_string(),
    ]);
    (server, store, expected)
}

/// An HTTP client that keeps no cookies and follows no redirects (the test does both).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in through the form; the cookie header to send from then on.
async fn sign_in(api: &str, user: &str, password: &str) -> reqwest::Response {
    client()
        .post(format!("{api}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", api)
        .body(format!("user={user}&password={password}"))
        .send()
        .await
        .unwrap()
}

/// The `name=value` of a response's dashboard cookie.
fn cookie_of(response: &reqwest::Response) -> String {
    let set = response.headers()["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_string()
}

async fn get(api: &str, path: &str, cookie: &str) -> reqwest::Response {
    client()
        .get(format!("{api}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
}

/// Every element of class `mark` in `svg_id`'s SVG of `html`, as its attributes.
fn marks(html: &str, svg_id: &str) -> Vec<BTreeMap<String, String>> {
    let start = html
        .find(&format!("id=\"{svg_id}\""))
        .unwrap_or_else(|| panic!("no {svg_id}"));
    let end = start + html[start..].find("</svg>").unwrap();
    let tag = regex::Regex::new(r#"<(?:rect|g) class="mark[^>]*>"#).unwrap();
    let attribute = regex::Regex::new(r#"([a-z-]+)="([^"]*)""#).unwrap();
    tag.find_iter(&html[start..end])
        .map(|m| {
            attribute
                .captures_iter(m.as_str())
                .map(|c| (c[1].to_string(), c[2].to_string()))
                .collect()
        })
        .collect()
}

fn close(shown: &str, expected: f64) -> bool {
    (shown.parse::<f64>().unwrap() - expected).abs() < 1e-4
}

#[tokio::test]
async fn the_dashboard_shows_the_aggregates_only_suppressed_values_never_as_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, store, expected) = start(dir.path());
    // In the order the server prints them.
    let tracer = server.password("tracer");
    let analyst = server.password("analyst");
    server.drain();
    let api = server.api.clone();
    let shown = expected.shown();
    // The population must give this test something to check either way.
    assert!(shown.len() < expected.cells.len(), "some cell-day is under --min-cell");
    let confirmed: Vec<Option<i64>> = shown.iter().map(|k| expected.confirmed(k)).collect();
    // And the boundary: a count of exactly --min-count shown, one under it suppressed.
    let counts: Vec<i64> = shown
        .iter()
        .filter_map(|k| expected.cases.get(*k))
        .flat_map(|row| [row[0], row[1]])
        .collect();
    assert!(
        counts.contains(&MIN_COUNT) && counts.contains(&(MIN_COUNT - 1)),
        "{counts:?}"
    );
    assert!(confirmed.contains(&None), "some confirmed count is suppressed");
    assert!(
        confirmed.iter().any(|c| c.is_some_and(|n| n > 0)),
        "some confirmed count is shown"
    );

    // Before signing in: the form, and nothing else.
    let page = client().get(format!("{api}/dashboard")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("action=\"/dashboard/login\"") && !html.contains("class=\"mark"));
    for path in [
        "/dashboard/grid.svg",
        "/dashboard/data/trends.json",
        "/dashboard/data/cells.csv",
    ] {
        let response = client().get(format!("{api}{path}")).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }

    // A cookie that is no token: the form again, saying so, and the cookie removed.
    let forged_cookie = get(&api, "/dashboard", "proxima_dashboard=pxs1.forged.token").await;
    assert_eq!(forged_cookie.status(), 401);
    assert!(
        forged_cookie.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let html = forged_cookie.text().await.unwrap();
    assert!(
        html.contains("sign in again") && html.contains("action=\"/dashboard/login\""),
        "{html}"
    );

    // Refused sign-ins: a wrong password, another role, a form posted from another site.
    let wrong = sign_in(&api, "analyst", "not-the-password").await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("wrong user name or password"));
    let other_role = sign_in(&api, "tracer", &tracer).await;
    assert_eq!(other_role.status(), 403);
    assert!(other_role.headers().get("set-cookie").is_none());
    let forged = client()
        .post(format!("{api}/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://evil.example")
        .body(format!("user=analyst&password={analyst}"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(forged.headers().get("set-cookie").is_none());

    // The analyst signs in: a cookie scripts cannot read, sent to the dashboard only.
    let signed = sign_in(&api, "analyst", &analyst).await;
    assert_eq!(signed.status(), 303);
    assert_eq!(signed.headers()["location"], "/dashboard");
    let set = signed.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/dashboard", "Max-Age="] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = cookie_of(&signed);

    // The page: each chart's marks, and the values they carry, against the raw tables.
    let page = get(&api, "/dashboard", &cookie).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let days = expected.days();
    let trends = expected.trends();
    let contacts = marks(&html, "contacts-chart");
    assert_eq!(contacts.len(), days.len());
    for mark in &contacts {
        assert!(
            close(&mark["data-value"], trends[&mark["data-day"]].0 as f64),
            "{mark:?}"
        );
    }
    let (cases, alerts) = (marks(&html, "cases-chart"), marks(&html, "alerts-chart"));
    assert_eq!((cases.len(), alerts.len()), (2 * days.len(), 2 * days.len()));
    for (mark, columns) in cases
        .iter()
        .map(|m| (m, [0, 1]))
        .chain(alerts.iter().map(|m| (m, [2, 3])))
    {
        let (_, figures, left_out) = trends[&mark["data-day"]];
        let column = match mark["data-series"].as_str() {
            "suspected" | "high" => columns[0],
            _ => columns[1],
        };
        match figures[column] {
            Some(n) => {
                assert!(close(&mark["data-value"], n as f64), "{mark:?} {figures:?}");
                // A sum that leaves suppressed cells out says how many.
                let partial = mark.get("data-partial").map(|p| p.parse::<i64>().unwrap());
                assert_eq!(partial.unwrap_or(0), left_out[column], "{mark:?}");
            }
            None => assert!(
                mark.contains_key("data-suppressed") && !mark.contains_key("data-value"),
                "{mark:?}"
            ),
        }
    }
    // The grid of the last day: every cell any day shows, valued where that day shows it.
    let last = days.last().unwrap().clone();
    let grid = marks(&html, "grid-chart");
    let grid_cells: BTreeSet<String> = grid.iter().map(|m| m["data-cell"].clone()).collect();
    assert_eq!(grid_cells, expected.all_cells());
    for mark in &grid {
        let key = (last.clone(), mark["data-cell"].clone());
        match shown.contains(&key) {
            true => {
                let (c, d) = expected.cells[&key];
                assert!(
                    close(&mark["data-value"], (2.0 * c as f64 / d as f64 * 1e4).round() / 1e4),
                    "{mark:?}"
                );
            }
            false => assert!(
                !mark.contains_key("data-value") && mark.contains_key("data-suppressed"),
                "{mark:?}"
            ),
        }
    }
    assert_eq!(marks(&html, "intervention-chart").len(), 8);

    // The grid of each day by confirmed cases per 1,000, as the slider fetches it: a
    // suppressed count is hatched, never a number.
    for day in &days {
        let svg = get(
            &api,
            &format!("/dashboard/grid.svg?day={day}&measure=confirmed_per_1000_devices"),
            &cookie,
        )
        .await;
        assert_eq!(svg.headers()["content-type"], "image/svg+xml");
        let svg = svg.text().await.unwrap();
        assert!(svg.contains(&format!("data-day=\"{day}\"")));
        for mark in marks(&svg, "grid-chart") {
            let key = (day.clone(), mark["data-cell"].clone());
            let want = shown
                .contains(&key)
                .then(|| expected.confirmed(&key))
                .flatten()
                .map(|n| (1000.0 * n as f64 / expected.cells[&key].1 as f64 * 1e4).round() / 1e4);
            match want {
                Some(v) => assert!(close(&mark["data-value"], v), "{day} {mark:?}"),
                None => assert!(!mark.contains_key("data-value"), "{day} {mark:?}"),
            }
        }
    }

    // Downloads: the shown cell-days exactly, a suppressed count null in JSON and empty in
    // CSV.
    let json: serde_json::Value = serde_json::from_str(
        &get(&api, "/dashboard/data/cells.json", &cookie)
            .await
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let rows = json.as_array().unwrap();
    let keys: BTreeSet<Key> = rows
        .iter()
        .map(|r| {
            (
                r["day"].as_str().unwrap().to_string(),
                r["cell"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(keys.iter().collect::<BTreeSet<_>>(), shown);
    for row in rows {
        let key = (
            row["day"].as_str().unwrap().to_string(),
            row["cell"].as_str().unwrap().to_string(),
        );
        let (c, d) = expected.cells[&key];
        assert_eq!(
            (row["contacts"].as_i64(), row["devices"].as_i64()),
            (Some(c), Some(d)),
            "{row}"
        );
        assert_eq!(row["confirmed"].as_i64(), expected.confirmed(&key), "{row}");
        // The rate is suppressed with its count (it would give the count back).
        assert_eq!(
            row["confirmed_per_1000_devices"].is_null(),
            expected.confirmed(&key).is_none(),
            "{row}"
        );
        assert!(
            row.as_object().unwrap().contains_key("confirmed"),
            "null written, not left out"
        );
    }
    let csv = get(&api, "/dashboard/data/cells.csv", &cookie).await;
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let at = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let mut csv_rows = 0;
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let key = (fields[at("day")].to_string(), fields[at("cell")].to_string());
        let want = expected.confirmed(&key).map(|n| n.to_string()).unwrap_or_default();
        assert_eq!(fields[at("confirmed")], want, "{line}");
        csv_rows += 1;
    }
    assert_eq!(csv_rows, shown.len());
    let trends_json: serde_json::Value = serde_json::from_str(
        &get(&api, "/dashboard/data/trends.json", &cookie)
            .await
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    for row in trends_json.as_array().unwrap() {
        let (contacts, figures, left_out) = trends[row["day"].as_str().unwrap()];
        assert_eq!(row["contacts"].as_i64(), Some(contacts), "{row}");
        for (i, column) in ["suspected", "confirmed", "alerts_high", "alerts_medium"]
            .iter()
            .enumerate()
        {
            assert_eq!(row[*column].as_i64(), figures[i], "{column}: {row}");
            assert_eq!(
                row[format!("{column}_suppressed")].as_i64(),
                Some(left_out[i]),
                "{column}: {row}"
            );
        }
    }
    let region = &expected.all_cells().into_iter().next().unwrap()[..3];
    let comparison = get(
        &api,
        &format!(
            "/dashboard/data/intervention.csv?region={region}&date={}&from={}&to={last}",
            days[days.len() / 2],
            days[0]
        ),
        &cookie,
    )
    .await;
    assert_eq!(comparison.status(), 200);
    // The job's own answer, run by the local CLI with the same thresholds and parameters.
    let job = proxima(
        &store,
        &[
            "sql",
            // Its own audit log: the server holds the store's.
            "--audit-dir",
            store.with_file_name("cli-audit").to_str().unwrap(),
            "--min-cell",
            &MIN_CELL.to_string(),
            "--min-count",
            &MIN_COUNT.to_string(),
            "--format",
            "csv",
            "-f",
            concat!(env!("CARGO_MANIFEST_DIR"), "/sql/jobs/intervention.sql"),
            "--param",
            &format!("region={region}"),
            "--param",
            &format!("date={}", days[days.len() / 2]),
            "--param",
            &format!("from={}", days[0]),
            "--param",
            &format!("to={last}"),
        ],
    );
    let numbers = |csv: &str| -> Vec<Vec<Option<f64>>> {
        csv.lines()
            .skip(1)
            .map(|l| l.split(',').skip(1).map(|f| f.parse().ok()).collect())
            .collect()
    };
    let downloaded = comparison.text().await.unwrap();
    assert_eq!(numbers(&downloaded), numbers(&job), "{downloaded}\n{job}");
    assert_eq!(numbers(&job).len(), 2, "two measures: {job}");

    // Bad parameters: said what and where, nothing run.
    for (path, status, says) in [
        ("/dashboard?day=yesterday", 422, "day: 'yesterday' is not a date"),
        ("/dashboard?measure=devices", 422, "measure: 'devices' is not one of"),
        ("/dashboard?region=gcp%27--", 422, "region:"),
        ("/dashboard?colour=red", 400, "colour"),
        (
            "/dashboard/data/observations.json",
            404,
            "downloads are trends, cells or intervention",
        ),
        ("/dashboard/data/intervention.json?region=gcp", 422, "date: give a date"),
    ] {
        let response = get(&api, path, &cookie).await;
        assert_eq!(response.status(), status, "{path}");
        let body = response.text().await.unwrap();
        assert!(body.contains(says), "{path}: {body}");
    }

    // Signing out removes the cookie.
    let out = client()
        .post(format!("{api}/dashboard/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));

    // Every call is in the audit log: the analyst's, naming the views read, and the refusals.
    drop(server);
    let records = common::audit_records(&store.join("_audit"));
    let of = |action: &str| -> Vec<&serde_json::Value> {
        records
            .iter()
            .filter(|r| r["action"].as_str() == Some(action))
            .collect()
    };
    let pages = of("rest:GET /dashboard");
    assert!(
        pages.iter().any(|r| r["principal"] == "analyst"
            && r["objects"]
                .as_array()
                .is_some_and(|o| o.iter().any(|v| v == "daily_cell_rates"))),
        "{pages:?}"
    );
    // The analyst's sign-in is a success (a 303 is no error); each grid and download is a
    // call of its own, with the statements it ran and the rows they returned.
    let logins = of("rest:POST /dashboard/login");
    assert!(
        logins
            .iter()
            .any(|r| r["principal"] == "analyst" && r["phase"] == "done" && r.get("error").is_none()),
        "{logins:?}"
    );
    for action in ["rest:GET /dashboard/grid.svg", "rest:GET /dashboard/data/{file}"] {
        let done: Vec<_> = of(action).into_iter().filter(|r| r["phase"] == "done").collect();
        assert!(!done.is_empty(), "{action}");
        assert!(
            done.iter().any(
                |r| r["sql"].as_str().is_some_and(|sql| sql.contains("daily_cell_rates"))
                    && r["rows"].as_u64() > Some(0)
            ),
            "{done:?}"
        );
    }
    assert!(
        logins
            .iter()
            .any(|r| r["principal"] == "tracer" && r["phase"] == "decision"),
        "{logins:?}"
    );
}

/// [`start`] for a Python client: the server (its output drained), what to expect, its
/// Flight SQL address and the analyst's password.
fn start_for_a_client(dir: &Path) -> (Server, Expected, String, String) {
    let (mut server, _store, expected) = start(dir);
    let flight = server.line("Flight SQL listening on ")["Flight SQL listening on ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let analyst = server.password("analyst");
    server.drain();
    (server, expected, flight, analyst)
}

/// Where the browser test's screenshot goes: `$PROXIMA_ARTIFACTS` (CI keeps it), else the
/// test's own folder.
fn screenshot_path(dir: &Path) -> PathBuf {
    match std::env::var_os("PROXIMA_ARTIFACTS") {
        Some(folder) => {
            std::fs::create_dir_all(&folder).unwrap();
            PathBuf::from(folder).join("dashboard.png")
        }
        None => dir.join("dashboard.png"),
    }
}

#[test]
fn a_browser_signs_in_reads_the_charts_and_moves_the_slider() {
    let chromium = std::env::var("PROXIMA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let python = common::python_with(&["playwright", "adbc_driver_flightsql"]);
    let Some(python) = python.filter(|_| Path::new(&chromium).exists()) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the browser test: .ci/run installs Debian's chromium and Playwright into .venv"
        );
        eprintln!("skipped: no {chromium}, or no Python with playwright and adbc-driver-flightsql (run .ci/run)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (server, expected, flight, analyst) = start_for_a_client(dir.path());
    let screenshot = screenshot_path(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .args([
            "--url",
            &server.api,
            "--flight",
            &flight,
            "--user",
            "analyst",
            "--password",
            &analyst,
        ])
        .args(["--days", &expected.days().len().to_string()])
        .args(["--cells", &expected.all_cells().len().to_string()])
        .arg("--screenshot")
        .arg(&screenshot)
        .args(["--chromium", &chromium])
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();
    assert!(
        output.status.success() && text(&output.stdout).trim_end().ends_with("ok"),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    // A real picture of the page: a PNG of the page's width and more than a screen high.
    let png = std::fs::read(&screenshot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (width, height) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert!(width == 900 && height > 1200, "{width} × {height}");
}

#[test]
fn the_notebook_example_draws_the_same_figures_with_pandas_and_polars() {
    let modules = ["adbc_driver_flightsql", "pandas", "polars", "matplotlib"];
    let Some(python) = common::python_with(&modules) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the notebook example: .ci/run installs pandas, polars and matplotlib into .venv"
        );
        eprintln!("skipped: no Python with {modules:?} (run .ci/run)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_server, expected, flight, analyst) = start_for_a_client(dir.path());
    let charts = dir.path().join("charts");
    let output = std::process::Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/notebook.py"))
        .env("PROXIMA_URI", &flight)
        .env("PROXIMA_PASSWORD", &analyst)
        .env("PROXIMA_CHARTS", &charts)
        .env("MPLBACKEND", "Agg")
        .output()
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).to_string();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", text(&output.stderr));
    let days = expected.days();
    let summary = format!(
        "{} days from {} to {}, {} cells",
        days.len(),
        days[0],
        days.last().unwrap(),
        expected.all_cells().len()
    );
    assert!(stdout.contains(&summary), "{summary}: {stdout}");
    // Each day's contacts, as the notebook printed them, are the raw tables' over the
    // cells shown.
    for (day, (contacts, _, _)) in expected.trends() {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&day))
            .unwrap_or_else(|| panic!("{day}"));
        let printed: i64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(printed, contacts, "{line}");
    }
    for name in [
        "contacts_per_day",
        "cases_per_day",
        "alerts_per_day",
        "cells",
        "intervention",
    ] {
        let png = std::fs::read(charts.join(format!("{name}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}");
        assert!(png.len() > 5_000, "{name}: {} bytes", png.len());
    }
}
