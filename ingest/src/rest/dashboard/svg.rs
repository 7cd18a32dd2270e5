//! The dashboard's charts, drawn on the server as SVG text.
//!
//! Three shapes only (bars per day, a grid of geohash cells, grouped bars of the
//! intervention comparison), so they are written directly rather than through a plotting
//! library: `plotters` would need a font back-end to measure labels, while a browser lays
//! out SVG text itself. Every mark a reader sees is an element of class `mark` carrying its
//! value in `data-value` (or `data-suppressed="true"`, drawn as a hatched stub and never as
//! a number), so a test or a screen reader can read the figure as exactly as the eye.

use std::fmt::Write as _;

use chrono::NaiveDate;

/// Width of every chart, in SVG units.
const WIDTH: f64 = 720.0;
/// Height of a bar chart.
const HEIGHT: f64 = 240.0;
/// Room left of the plot for the axis labels.
const LEFT: f64 = 56.0;
/// Room below the plot for the day labels.
const BOTTOM: f64 = 36.0;
/// Room above the plot for the legend.
const TOP: f64 = 28.0;

/// Colour of suppressed marks (with the hatching pattern).
const SUPPRESSED: &str = "url(#suppressed)";

/// One series of a bar chart: its name, colour and a value per day (`None`: suppressed).
pub struct Series<'a> {
    /// Shown in the legend and in each mark's `data-series`.
    pub name: &'a str,
    /// A CSS colour.
    pub colour: &'a str,
    /// One per day of the chart.
    pub values: &'a [Option<f64>],
    /// Per day, the cells whose count was suppressed and so left out of the value (empty:
    /// none anywhere): such a bar is a lower bound, drawn as one.
    pub suppressed_cells: &'a [Option<f64>],
}

/// Escapes text for SVG and HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number as a label: integers without decimals, others with up to `decimals`.
pub fn number(value: f64, decimals: usize) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.decimals$}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The hatching that marks suppressed values (each chart carries its own copy, so a chart
/// fetched alone is complete).
fn defs() -> &'static str {
    "<defs><pattern id=\"suppressed\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" \
     patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"#eeeeee\"/>\
     <line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#9e9e9e\" stroke-width=\"2\"/></pattern></defs>"
}

/// A round upper bound of `max` for an axis, and its tick step.
fn axis(max: f64) -> (f64, f64) {
    if max <= 0.0 {
        return (1.0, 1.0);
    }
    let magnitude = 10f64.powf(max.log10().floor());
    let step = [0.2, 0.5, 1.0, 2.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| max / step <= 5.0)
        .unwrap_or(magnitude * 5.0);
    ((max / step).ceil() * step, step)
}

/// Bars per day, the series side by side: `id` names the SVG (and the test finds it by it).
pub fn bars_per_day(id: &str, title: &str, days: &[NaiveDate], series: &[Series<'_>]) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0_f64, |m, v| m.max(*v));
    let (top, step) = axis(max);
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h - v / top * plot_h;
    let slot = plot_w / days.len().max(1) as f64;
    let bar = (slot * 0.8 / series.len().max(1) as f64).max(1.0);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg id=\"{id}\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         role=\"img\" aria-label=\"{title}\">{}<title>{title}</title>",
        defs(),
        id = escape(id),
        title = escape(title)
    );
    // The value axis and its grid lines.
    let mut tick = 0.0;
    while tick <= top + step / 2.0 {
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e0e0e0\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\" fill=\"#555\">{}</text>",
            WIDTH - 8.0,
            LEFT - 6.0,
            y(tick) + 4.0,
            number(tick, 2),
            y = y(tick)
        );
        tick += step;
    }
    // The legend.
    for (i, s) in series.iter().enumerate() {
        let x = LEFT + i as f64 * 150.0;
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"6\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"16\" font-size=\"12\" fill=\"#222\">{}</text>",
            escape(s.colour),
            x + 16.0,
            escape(s.name)
        );
    }
    let label_every = days.len().div_ceil(10).max(1);
    for (d, day) in days.iter().enumerate() {
        let x0 = LEFT + d as f64 * slot + slot * 0.1;
        for (i, s) in series.iter().enumerate() {
            let x = x0 + i as f64 * bar;
            let day_text = day.format("%Y-%m-%d");
            match s.values.get(d).copied().flatten() {
                Some(v) => {
                    let left_out = s.suppressed_cells.get(d).copied().flatten().unwrap_or(0.0);
                    let (class, partial, at_least) = if left_out > 0.0 {
                        (
                            "mark partial",
                            format!(
                                " data-partial=\"{}\" stroke=\"#333\" stroke-dasharray=\"3 2\"",
                                number(left_out, 0)
                            ),
                            format!("at least {} ({} cells suppressed)", number(v, 4), number(left_out, 0)),
                        )
                    } else {
                        ("mark", String::new(), number(v, 4))
                    };
                    let _ = write!(
                        svg,
                        "<rect class=\"{class}\" data-series=\"{name}\" data-day=\"{day_text}\" data-value=\"{value}\"{partial} \
                         x=\"{x:.1}\" y=\"{top:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{colour}\">\
                         <title>{name}, {day_text}: {at_least}</title></rect>",
                        name = escape(s.name),
                        value = number(v, 4),
                        top = y(v),
                        h = (TOP + plot_h - y(v)).max(0.0),
                        colour = escape(s.colour),
                    );
                }
                None => {
                    let _ = write!(
                        svg,
                        "<rect class=\"mark suppressed\" data-series=\"{name}\" data-day=\"{day_text}\" \
                         data-suppressed=\"true\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bar:.1}\" height=\"6\" \
                         fill=\"{SUPPRESSED}\"><title>{name}, {day_text}: suppressed</title></rect>",
                        TOP + plot_h - 6.0,
                        name = escape(s.name),
                    );
                }
            }
        }
        if d % label_every == 0 {
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#555\">{}</text>",
                LEFT + d as f64 * slot + slot / 2.0,
                HEIGHT - BOTTOM + 16.0,
                day.format("%d %b")
            );
        }
    }
    let _ = write!(
        svg,
        "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{base:.1}\" y2=\"{base:.1}\" stroke=\"#333\"/></svg>",
        WIDTH - 8.0,
        base = TOP + plot_h
    );
    svg
}

/// A cell of the grid: its geohash, bounding box and value (`None`: suppressed or not seen
/// that day).
pub struct Cell {
    /// The 4-character geohash.
    pub cell: String,
    /// West, south, east, north (degrees).
    pub bbox: [f64; 4],
    /// The measure that day.
    pub value: Option<f64>,
}

/// The cells of one day laid out where they are (longitude across, latitude up), coloured
/// on a scale from 0 to `scale_max` (the measure's largest value over every day, so colours
/// compare across the slider's days). A cell without a value is hatched and says
/// "suppressed".
pub fn cell_grid(id: &str, title: &str, cells: &[Cell], scale_max: f64, decimals: usize) -> String {
    if cells.is_empty() {
        return format!(
            "<svg id=\"{}\" class=\"chart grid\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} 60\" \
             role=\"img\" aria-label=\"{title}\"><title>{title}</title><text x=\"8\" y=\"30\" font-size=\"13\" \
             fill=\"#555\">No cell is shown yet: none has reached the threshold of devices.</text></svg>",
            escape(id),
            title = escape(title)
        );
    }
    let west = cells.iter().map(|c| c.bbox[0]).fold(f64::INFINITY, f64::min);
    let south = cells.iter().map(|c| c.bbox[1]).fold(f64::INFINITY, f64::min);
    let east = cells.iter().map(|c| c.bbox[2]).fold(f64::NEG_INFINITY, f64::max);
    let north = cells.iter().map(|c| c.bbox[3]).fold(f64::NEG_INFINITY, f64::max);
    let (span_x, span_y) = ((east - west).max(1e-9), (north - south).max(1e-9));
    // Degrees of longitude shrink with latitude: keep the cells' true proportions.
    let aspect = span_x * ((south + north) / 2.0).to_radians().cos().max(0.1) / span_y;
    let plot_w = WIDTH - 16.0;
    let plot_h = (plot_w / aspect).clamp(160.0, 520.0);
    let plot_w = (plot_h * aspect).min(plot_w);
    let height = plot_h + 56.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg id=\"{id}\" class=\"chart grid\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {height:.0}\" \
         role=\"img\" aria-label=\"{title}\">{}<title>{title}</title>",
        defs(),
        id = escape(id),
        title = escape(title)
    );
    for c in cells {
        let x = 8.0 + (c.bbox[0] - west) / span_x * plot_w;
        let w = (c.bbox[2] - c.bbox[0]) / span_x * plot_w;
        let y = 8.0 + (north - c.bbox[3]) / span_y * plot_h;
        let h = (c.bbox[3] - c.bbox[1]) / span_y * plot_h;
        let (fill, data, label) = match c.value {
            Some(v) => (
                colour(v / scale_max.max(f64::MIN_POSITIVE)),
                format!("data-value=\"{}\"", number(v, decimals)),
                number(v, decimals),
            ),
            None => (
                SUPPRESSED.to_string(),
                "data-suppressed=\"true\"".to_string(),
                "suppressed".to_string(),
            ),
        };
        let _ = write!(
            svg,
            "<g class=\"mark cell\" data-cell=\"{cell}\" {data}><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" \
             height=\"{h:.1}\" fill=\"{fill}\" stroke=\"#fff\" stroke-width=\"1\"/>\
             <text x=\"{cx:.1}\" y=\"{cy1:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#111\">{cell}</text>\
             <text x=\"{cx:.1}\" y=\"{cy2:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#111\">{label}</text>\
             <title>{cell}: {label}</title></g>",
            cell = escape(&c.cell),
            cx = x + w / 2.0,
            cy1 = y + h / 2.0 - 2.0,
            cy2 = y + h / 2.0 + 12.0,
        );
    }
    // The scale.
    let y = plot_h + 24.0;
    for i in 0..10 {
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{y:.1}\" width=\"24\" height=\"10\" fill=\"{}\"/>",
            8.0 + f64::from(i) * 24.0,
            colour((f64::from(i) + 0.5) / 10.0)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"8\" y=\"{:.1}\" font-size=\"11\" fill=\"#555\">0</text>\
         <text x=\"248\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\" fill=\"#555\">{}</text>\
         <rect x=\"272\" y=\"{y:.1}\" width=\"24\" height=\"10\" fill=\"{SUPPRESSED}\"/>\
         <text x=\"302\" y=\"{:.1}\" font-size=\"11\" fill=\"#555\">suppressed (too few devices or cases) or not seen</text></svg>",
        y + 24.0,
        y + 24.0,
        number(scale_max, decimals),
        y + 9.0
    );
    svg
}

/// A colour from pale yellow (0) to dark red (1).
fn colour(t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        lerp(255.0, 165.0),
        lerp(237.0, 15.0),
        lerp(160.0, 21.0)
    )
}

/// One measure of the intervention comparison: the rate in the region and elsewhere,
/// before and after (`None`: no cell left).
pub struct Comparison<'a> {
    /// The measure's name.
    pub measure: &'a str,
    /// Region before, region after, others before, others after.
    pub rates: [Option<f64>; 4],
}

/// Grouped bars of the intervention comparison, one small chart per measure.
pub fn intervention(id: &str, comparisons: &[Comparison<'_>]) -> String {
    const NAMES: [&str; 4] = ["region before", "region after", "others before", "others after"];
    const COLOURS: [&str; 4] = ["#90caf9", "#1565c0", "#ffcc80", "#ef6c00"];
    let panel = WIDTH / comparisons.len().max(1) as f64;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg id=\"{}\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         role=\"img\" aria-label=\"policy intervention comparison\">{}<title>policy intervention comparison</title>",
        escape(id),
        defs()
    );
    for (p, comparison) in comparisons.iter().enumerate() {
        let x0 = p as f64 * panel + 24.0;
        let max = comparison.rates.iter().flatten().fold(0.0_f64, |m, v| m.max(*v));
        let (top, _) = axis(max);
        let bar = (panel - 48.0) / 4.0;
        let _ = write!(
            svg,
            "<text x=\"{x0:.1}\" y=\"16\" font-size=\"12\" font-weight=\"bold\" fill=\"#222\">{}</text>",
            escape(comparison.measure)
        );
        for (i, rate) in comparison.rates.iter().enumerate() {
            let x = x0 + i as f64 * bar;
            match rate {
                Some(v) => {
                    let h = v / top * plot_h;
                    let _ = write!(
                        svg,
                        "<rect class=\"mark\" data-series=\"{name}\" data-measure=\"{measure}\" data-value=\"{value}\" \
                         x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{colour}\">\
                         <title>{measure}, {name}: {value}</title></rect>\
                         <text x=\"{cx:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"#222\">{value}</text>",
                        name = NAMES[i],
                        measure = escape(comparison.measure),
                        value = number(*v, 4),
                        y = TOP + plot_h - h,
                        w = bar * 0.85,
                        colour = COLOURS[i],
                        cx = x + bar * 0.85 / 2.0,
                        ty = TOP + plot_h - h - 4.0,
                    );
                }
                None => {
                    let _ = write!(
                        svg,
                        "<rect class=\"mark suppressed\" data-series=\"{name}\" data-measure=\"{measure}\" \
                         data-suppressed=\"true\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"6\" \
                         fill=\"{SUPPRESSED}\"><title>{measure}, {name}: no cell shown</title></rect>",
                        TOP + plot_h - 6.0,
                        name = NAMES[i],
                        measure = escape(comparison.measure),
                        w = bar * 0.85,
                    );
                }
            }
            let _ = write!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#555\">{}</text>",
                x + bar * 0.85 / 2.0,
                HEIGHT - BOTTOM + 14.0,
                NAMES[i]
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_round() {
        assert_eq!(axis(0.0), (1.0, 1.0));
        assert_eq!(axis(7.0), (8.0, 2.0));
        assert_eq!(axis(95.0), (100.0, 20.0));
        assert_eq!(axis(1234.0), (1500.0, 500.0));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn numbers_drop_needless_decimals() {
        assert_eq!(number(3.0, 2), "3");
        assert_eq!(number(2.5, 2), "2.5");
        assert_eq!(number(0.12345, 4), "0.1235");
    }

    #[test]
    fn a_suppressed_value_is_never_drawn_as_a_number() {
        let days = [NaiveDate::from_ymd_opt(2026, 11, 2).unwrap(); 2];
        let svg = bars_per_day(
            "c",
            "cases",
            &days,
            &[Series {
                name: "confirmed",
                colour: "#c00",
                values: &[Some(12.0), None],
                suppressed_cells: &[Some(1.0), Some(2.0)],
            }],
        );
        assert_eq!(svg.matches("class=\"mark").count(), 2);
        assert_eq!(svg.matches("data-suppressed=\"true\"").count(), 1);
        assert!(svg.contains("data-value=\"12\" data-partial=\"1\""), "{svg}");
        let grid = cell_grid(
            "g",
            "cells",
            &[Cell {
                cell: "gcpv".into(),
                bbox: [-0.35, 51.33, 0.0, 51.5],
                value: None,
            }],
            1.0,
            2,
        );
        assert!(grid.contains("data-suppressed=\"true\"") && !grid.contains("data-value"));
    }

    #[test]
    fn an_empty_store_draws_charts_without_marks() {
        let bars = bars_per_day(
            "c",
            "contacts",
            &[],
            &[Series {
                name: "contacts",
                colour: "#00f",
                values: &[],
                suppressed_cells: &[],
            }],
        );
        let grid = cell_grid("g", "cells", &[], 0.0, 2);
        let comparison = intervention("i", &[]);
        for svg in [&bars, &grid, &comparison] {
            assert!(
                !svg.contains("NaN") && !svg.contains("inf") && !svg.contains("class=\"mark"),
                "{svg}"
            );
        }
    }
}
