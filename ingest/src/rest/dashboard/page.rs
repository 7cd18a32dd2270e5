//! The dashboard's HTML: the sign-in form and the page around the charts. Everything is
//! escaped; the page loads only its own stylesheet and script (the Content-Security-Policy
//! allows nothing else), so it works with no internet connection.

use std::fmt::Write as _;

use chrono::NaiveDate;

use super::svg::escape;

/// The sign-in form, with `message` above it if a sign-in failed.
pub fn login(message: Option<&str>) -> String {
    let message = message
        .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(m)))
        .unwrap_or_default();
    format!(
        "{head}<main class=\"login\"><h1>Proxima</h1><p>Analysts' dashboard: contact and case rates \
         per day and cell, from the aggregates only.</p>{message}\
         <form method=\"post\" action=\"/dashboard/login\">\
         <label>User <input name=\"user\" autocomplete=\"username\" required maxlength=\"64\"></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required maxlength=\"1024\"></label>\
         <button type=\"submit\">Sign in</button></form></main></body></html>",
        head = head("Sign in")
    )
}

/// A page that only says `message` (for a signed-in user the dashboard is not for).
pub fn refusal(message: &str) -> String {
    format!(
        "{head}<main class=\"login\"><h1>Proxima</h1><p class=\"error\" role=\"alert\">{}</p>\
         <form method=\"post\" action=\"/dashboard/logout\"><button type=\"submit\">Sign out</button></form>\
         </main></body></html>",
        escape(message),
        head = head("Not for this role")
    )
}

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Proxima</title><link rel=\"stylesheet\" href=\"/dashboard/style.css\">\
         <script src=\"/dashboard/app.js\" defer></script></head><body>",
        escape(title)
    )
}

/// What the dashboard page shows.
pub struct Dashboard<'a> {
    /// Who is signed in.
    pub user: &'a str,
    /// The thresholds in force.
    pub min_cell: u32,
    /// Counts under this are suppressed.
    pub min_count: u32,
    /// The three per-day charts (contacts, cases, alerts), SVG.
    pub trends: [String; 3],
    /// The days the slider moves over, and the one shown.
    pub days: &'a [NaiveDate],
    /// The day shown.
    pub day: Option<NaiveDate>,
    /// The grid's measure (`contacts_per_device` or `confirmed_per_1000_devices`).
    pub measure: &'a str,
    /// The grid of cells, SVG.
    pub grid: String,
    /// The intervention's parameters: region, policy date, from, to.
    pub intervention: Option<(&'a str, NaiveDate, NaiveDate, NaiveDate)>,
    /// The comparison chart, SVG, and its rows (measure and the five figures).
    pub comparison: String,
    /// The comparison's rows: measure, then region before/after, others before/after, and
    /// the difference in differences.
    pub comparison_rows: Vec<(String, [Option<f64>; 5])>,
}

/// The measures the grid can colour cells by: the parameter's value and its label.
pub const MEASURES: [(&str, &str); 2] = [
    ("contacts_per_device", "contacts per device"),
    ("confirmed_per_1000_devices", "confirmed cases per 1,000 devices"),
];

/// The dashboard page.
pub fn dashboard(d: &Dashboard<'_>) -> String {
    let mut html = head("Analysts' dashboard");
    let _ = write!(
        html,
        "<header><h1>Proxima</h1><span class=\"who\">Analysts' dashboard · signed in as <b>{user}</b></span>\
         <form method=\"post\" action=\"/dashboard/logout\"><button type=\"submit\">Sign out</button></form></header><main>\
         <p class=\"note\">Every figure is read from the analysts' aggregate views (<code>daily_cell_rates</code>, \
         <code>case_rollup</code>), kept current by every flush, through your own session: a cell and day seen by \
         fewer than {min_cell} devices is not shown, and a count of cases, readings or alerts under {min_count} is \
         <em>suppressed</em>, never drawn as a number. Totals per day add up the cells shown, so they leave out what \
         is suppressed.</p>",
        user = escape(d.user),
        min_cell = d.min_cell,
        min_count = d.min_count,
    );
    let _ = write!(
        html,
        "<section id=\"trends\"><h2>Per day</h2>\
         <figure>{}<figcaption><b>Contacts</b>: sightings of a registered device by another, per day, over the cells shown.</figcaption></figure>\
         <figure>{}<figcaption><b>New cases</b>: suspected and confirmed reports per day, in the cells of the devices \
         that reported them (a person suspected then confirmed is in both).</figcaption></figure>\
         <figure>{}<figcaption><b>Alerts issued</b> by the day's case reports, by priority (high: met a case within 48 h; \
         medium: within 96 h, or a contact's contact).</figcaption></figure>\
         <p class=\"downloads\">Download the figures per day: <a href=\"/dashboard/data/trends.json\">JSON</a> · \
         <a href=\"/dashboard/data/trends.csv\">CSV</a></p></section>",
        d.trends[0], d.trends[1], d.trends[2]
    );
    let days: Vec<String> = d.days.iter().map(ToString::to_string).collect();
    let day = d.day.map(|day| day.to_string()).unwrap_or_default();
    let index = d.day.and_then(|day| d.days.iter().position(|x| *x == day)).unwrap_or(0);
    let mut options = String::new();
    for (value, label) in MEASURES {
        let selected = if value == d.measure { " selected" } else { "" };
        let _ = write!(options, "<option value=\"{value}\"{selected}>{label}</option>");
    }
    let (region, date, from, to) = match d.intervention {
        Some((region, date, from, to)) => (region.to_string(), date.to_string(), from.to_string(), to.to_string()),
        None => Default::default(),
    };
    let _ = write!(
        html,
        "<section id=\"cells\"><h2>Cells</h2>\
         <form id=\"cell-form\" method=\"get\" action=\"/dashboard\">\
         <label>Colour by <select name=\"measure\" id=\"measure\">{options}</select></label>\
         <label>Day <input type=\"range\" id=\"day-slider\" min=\"0\" max=\"{max}\" value=\"{index}\" data-days=\"{days}\"></label>\
         <output id=\"day-label\" for=\"day-slider\">{day}</output>\
         <input type=\"hidden\" name=\"day\" id=\"day\" value=\"{day}\">\
         <input type=\"hidden\" name=\"region\" value=\"{region}\"><input type=\"hidden\" name=\"date\" value=\"{date}\">\
         <input type=\"hidden\" name=\"from\" value=\"{from}\"><input type=\"hidden\" name=\"to\" value=\"{to}\">\
         <noscript><button type=\"submit\">Show</button></noscript></form>\
         <div id=\"grid\">{grid}</div>\
         <p class=\"caption\">Each 4-character geohash cell (about 39 × 20 km) where it lies, coloured by the measure \
         on the day chosen; the colour scale spans every day, so days compare.</p>\
         <p class=\"downloads\">Download the cells: <a id=\"cells-day-json\" href=\"/dashboard/data/cells.json?day={day}\">this day, JSON</a> · \
         <a id=\"cells-day-csv\" href=\"/dashboard/data/cells.csv?day={day}\">CSV</a> · \
         <a href=\"/dashboard/data/cells.json\">every day, JSON</a> · <a href=\"/dashboard/data/cells.csv\">CSV</a></p></section>",
        max = d.days.len().saturating_sub(1),
        days = escape(&days.join(",")),
        day = escape(&day),
        region = escape(&region),
        grid = d.grid,
    );
    let mut rows = String::new();
    for (measure, figures) in &d.comparison_rows {
        let _ = write!(rows, "<tr><th scope=\"row\">{}</th>", escape(measure));
        for figure in figures {
            match figure {
                Some(v) => {
                    let _ = write!(rows, "<td>{}</td>", super::svg::number(*v, 4));
                }
                None => rows.push_str("<td class=\"suppressed\">no cell shown</td>"),
            }
        }
        rows.push_str("</tr>");
    }
    let query = format!("region={}&amp;date={date}&amp;from={from}&amp;to={to}", escape(&region));
    let _ = write!(
        html,
        "<section id=\"intervention\"><h2>Policy intervention</h2>\
         <form method=\"get\" action=\"/dashboard#intervention\">\
         <label>Region (geohash prefix) <input name=\"region\" value=\"{region}\" required pattern=\"[0-9b-hjkmnp-z]{{1,4}}\" maxlength=\"4\"></label>\
         <label>Policy from <input type=\"date\" name=\"date\" value=\"{date}\" required></label>\
         <label>Window <input type=\"date\" name=\"from\" value=\"{from}\" required> to <input type=\"date\" name=\"to\" value=\"{to}\" required></label>\
         <input type=\"hidden\" name=\"day\" value=\"{day}\"><input type=\"hidden\" name=\"measure\" value=\"{measure}\">\
         <button type=\"submit\">Compare</button></form>\
         {chart}\
         <table><thead><tr><th>measure</th><th>region before</th><th>region after</th><th>others before</th>\
         <th>others after</th><th>difference in differences</th></tr></thead><tbody>{rows}</tbody></table>\
         <p class=\"caption\">A difference in differences (<code>sql/jobs/intervention.sql</code>): the change in the \
         region's rate from the policy date on, minus the change in every other cell's; negative when the region's rate \
         fell more. Cells and days suppressed count nowhere.</p>\
         <p class=\"downloads\">Download the comparison: <a href=\"/dashboard/data/intervention.json?{query}\">JSON</a> · \
         <a href=\"/dashboard/data/intervention.csv?{query}\">CSV</a></p></section></main></body></html>",
        region = escape(&region),
        day = escape(&day),
        measure = escape(d.measure),
        chart = d.comparison,
    );
    html
}
