//! The usage chart of a key's page: successful and failed requests per
//! bucket as stacked bars, drawn as SVG on the server (no script, no
//! library). Only numbers and our own labels go into the markup.
//!
//! Two drawings of the same data, one for wide screens and one for phones
//! (the stylesheet shows one): an SVG scales its text with its width, so a
//! phone gets a narrower drawing whose text stays readable.

use std::fmt::Write;

use chrono::{DateTime, Timelike, Utc};
use keyledger_events::read_model::UsagePoint;

use crate::manage::Granularity;

/// The geometry of one drawing, in SVG units (≈ CSS pixels at its usual width).
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// The drawing's class (`wide` or `narrow`) and the prefix of its ids.
    pub name: &'static str,
    pub width: f64,
    pub height: f64,
    /// Room for the y axis' labels.
    pub left: f64,
    pub right: f64,
    /// Room for the y axis' unit.
    pub top: f64,
    /// Room for the x axis' labels.
    pub bottom: f64,
    /// The axis text's size (the stylesheet's, written here to space labels).
    pub font: f64,
}

/// Desktops and tablets: drawn about as wide as it is shown.
pub const WIDE: Frame = Frame {
    name: "wide",
    width: 1000.0,
    height: 260.0,
    left: 56.0,
    right: 12.0,
    top: 28.0,
    bottom: 30.0,
    font: 12.0,
};

/// Phones (shown below 600 px): 360 units across a ~340 px wide chart.
pub const NARROW: Frame = Frame {
    name: "narrow",
    width: 360.0,
    height: 220.0,
    left: 44.0,
    right: 8.0,
    top: 26.0,
    bottom: 28.0,
    font: 11.0,
};

/// The y axis: ticks at round values (1, 2 or 5 × 10ⁿ apart), at most
/// five steps, the last at or above `peak`.
fn y_ticks(peak: i64) -> Vec<i64> {
    let wanted = (peak.max(1) as f64 / 4.0).max(1.0);
    let mut magnitude = 1_i64;
    let step = loop {
        if let Some(step) = [1, 2, 5].iter().map(|f| f * magnitude).find(|s| *s as f64 >= wanted) {
            break step;
        }
        magnitude *= 10;
    };
    let steps = (peak.max(1) + step - 1) / step;
    (0..=steps).map(|i| i * step).collect()
}

/// The label of a bucket that starts a tick: hours (or, at midnight, the
/// date) over 24 hours; dates over longer periods.
fn tick_label(start: DateTime<Utc>, granularity: Granularity, buckets: usize) -> Option<String> {
    let label = match granularity {
        Granularity::Minute if start.minute().is_multiple_of(15) => start.format("%H:%M").to_string(),
        Granularity::Hour if buckets <= 48 && start.hour() == 0 => start.format("%-d %b").to_string(),
        Granularity::Hour if buckets <= 48 && start.hour().is_multiple_of(3) => start.format("%H:%M").to_string(),
        Granularity::Hour if buckets > 48 && start.hour() == 0 => start.format("%-d %b").to_string(),
        Granularity::Day => start.format("%-d %b").to_string(),
        _ => return None,
    };
    Some(label)
}

/// The last bucket's label: what it is, without the axis' other labels.
fn last_label(start: DateTime<Utc>, granularity: Granularity, buckets: usize) -> String {
    match granularity {
        Granularity::Minute => start.format("%H:%M"),
        Granularity::Hour if buckets <= 48 => start.format("%H:%M"),
        Granularity::Hour => start.format("%-d %b %H:%M"),
        Granularity::Day => start.format("%-d %b"),
    }
    .to_string()
}

/// How wide a label's text is, roughly (for spacing, not drawing).
fn text_width(text: &str, frame: &Frame) -> f64 {
    text.chars().count() as f64 * frame.font * 0.62
}

/// The chart in both drawings (the stylesheet shows one of them).
pub fn usage_charts(series: &[UsagePoint], granularity: Granularity, period_label: &str) -> String {
    let mut svg = usage_chart(series, granularity, period_label, &WIDE);
    svg.push_str(&usage_chart(series, granularity, period_label, &NARROW));
    svg
}

/// One drawing of the chart as an `<svg>` element, with a title and a
/// description that say what it shows for people who cannot see it.
pub fn usage_chart(series: &[UsagePoint], granularity: Granularity, period_label: &str, frame: &Frame) -> String {
    let successful: i64 = series.iter().map(|p| p.successful).sum();
    let failed: i64 = series.iter().map(|p| p.failed).sum();
    let peak = series.iter().map(|p| p.successful + p.failed).max().unwrap_or(0);
    let ticks = y_ticks(peak);
    let top = *ticks.last().unwrap_or(&1);
    let plot_left = frame.left;
    let plot_right = frame.width - frame.right;
    let plot_width = plot_right - plot_left;
    let plot_bottom = frame.height - frame.bottom;
    let plot_height = plot_bottom - frame.top;
    let slot = plot_width / series.len().max(1) as f64;
    let bar = (slot * 0.72).max(1.0);
    let y = |value: i64| plot_bottom - plot_height * value as f64 / top as f64;
    let id = frame.name;
    let unit = granularity.as_str();
    let mut svg = String::with_capacity(512 + series.len() * 220);
    let _ = write!(
        svg,
        r#"<svg class="chart-svg {id}" viewBox="0 0 {} {}" role="img" aria-labelledby="chart-{id}-title chart-{id}-desc" xmlns="http://www.w3.org/2000/svg"><title id="chart-{id}-title">Requests per {unit} over the last {period_label}</title><desc id="chart-{id}-desc">{successful} successful and {failed} failed requests; at most {peak} in one {unit}.</desc>"#,
        frame.width, frame.height,
    );
    // The y axis: its unit, and gridlines at round values up to the peak or above.
    let _ = write!(
        svg,
        r#"<text class="axis unit" x="0" y="{:.1}" text-anchor="start">requests</text>"#,
        frame.top - 12.0
    );
    for value in &ticks {
        let at = y(*value);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{plot_left}" x2="{plot_right}" y1="{at:.1}" y2="{at:.1}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            plot_left - 6.0,
            at + frame.font / 3.0,
            super::views::grouped(*value)
        );
    }
    for (i, point) in series.iter().enumerate() {
        let x = plot_left + slot * i as f64 + (slot - bar) / 2.0;
        let ok_top = y(point.successful);
        let failed_top = y(point.successful + point.failed);
        let when = point.start.format("%-d %b %H:%M UTC");
        let _ = write!(
            svg,
            "<g><title>{when}: {} successful, {} failed</title>",
            point.successful, point.failed
        );
        if point.successful > 0 {
            let _ = write!(
                svg,
                r#"<rect class="bar-ok" x="{x:.2}" y="{ok_top:.2}" width="{bar:.2}" height="{:.2}"/>"#,
                plot_bottom - ok_top
            );
        }
        if point.failed > 0 {
            let _ = write!(
                svg,
                r#"<rect class="bar-failed" x="{x:.2}" y="{failed_top:.2}" width="{bar:.2}" height="{:.2}"/>"#,
                ok_top - failed_top
            );
        }
        svg.push_str("</g>");
    }
    // The x axis: the last bucket always (its label ends where the axis
    // ends), and before it the ticks that leave room for their labels.
    let label_y = frame.height - frame.bottom / 2.0 + frame.font / 2.0;
    if let Some(last) = series.last() {
        let last_text = last_label(last.start, granularity, series.len());
        let room_until = plot_right - text_width(&last_text, frame) - frame.font;
        let mut free_from = 0.0;
        for (i, point) in series.iter().enumerate().take(series.len() - 1) {
            let Some(text) = tick_label(point.start, granularity, series.len()) else {
                continue;
            };
            let centre = plot_left + slot * (i as f64 + 0.5);
            let half = text_width(&text, frame) / 2.0;
            if centre - half < free_from || centre + half > room_until {
                continue;
            }
            free_from = centre + half + frame.font;
            let _ = write!(
                svg,
                r#"<line class="tick" x1="{centre:.1}" x2="{centre:.1}" y1="{plot_bottom}" y2="{:.1}"/><text class="axis" x="{centre:.1}" y="{label_y:.1}" text-anchor="middle">{text}</text>"#,
                plot_bottom + 4.0
            );
        }
        let _ = write!(
            svg,
            r#"<text class="axis last" x="{plot_right:.1}" y="{label_y:.1}" text-anchor="end">{last_text}</text>"#
        );
    }
    if peak == 0 {
        let _ = write!(
            svg,
            r#"<text class="empty-chart" x="{:.1}" y="{:.1}" text-anchor="middle">No requests in this period</text>"#,
            plot_left + plot_width / 2.0,
            frame.top + plot_height / 2.0
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};

    fn point(start: DateTime<Utc>, successful: i64, failed: i64) -> UsagePoint {
        UsagePoint {
            start,
            requests: successful + failed,
            successful,
            failed,
            rate_limited: 0,
        }
    }

    /// `n` buckets of `step`, the first at `first`.
    fn series(first: DateTime<Utc>, step: Duration, n: i64) -> Vec<UsagePoint> {
        (0..n).map(|i| point(first + step * i as i32, 0, 0)).collect()
    }

    /// The x axis' labels, left to right.
    fn x_labels(svg: &str) -> Vec<String> {
        svg.split(r#"<text class="axis"#)
            .skip(1)
            .filter(|t| t.contains(r#"text-anchor="middle""#) || t.starts_with(r#" last""#))
            .map(|t| t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()].to_owned())
            .collect()
    }

    #[test]
    fn bars_stack_failed_on_successful() {
        let at = Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap();
        let svg = usage_chart(
            &[point(at, 30, 10), point(at + Duration::hours(1), 0, 0)],
            Granularity::Hour,
            "24 hours",
            &WIDE,
        );
        assert_eq!(svg.matches("class=\"bar-ok\"").count(), 1);
        assert_eq!(svg.matches("class=\"bar-failed\"").count(), 1);
        assert!(svg.contains("30 successful and 10 failed requests"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(!svg.contains("style="), "the CSP allows no inline styles");
    }

    #[test]
    fn the_y_axis_has_round_ticks_that_cover_the_peak_and_a_unit() {
        assert_eq!(y_ticks(0), [0, 1]);
        assert_eq!(y_ticks(4), [0, 1, 2, 3, 4]);
        assert_eq!(y_ticks(7), [0, 2, 4, 6, 8]);
        assert_eq!(y_ticks(130), [0, 50, 100, 150]);
        assert_eq!(y_ticks(1_000), [0, 500, 1_000]);
        assert_eq!(y_ticks(9_999), [0, 5_000, 10_000]);
        let svg = usage_chart(
            &series(Utc::now(), Duration::hours(1), 24),
            Granularity::Hour,
            "24 hours",
            &WIDE,
        );
        assert!(svg.contains(">requests</text>"));
    }

    #[test]
    fn twenty_four_hours_are_labelled_at_round_hours_with_the_date_where_the_day_changes() {
        let first = Utc.with_ymd_and_hms(2026, 11, 27, 14, 0, 0).unwrap();
        let svg = usage_chart(
            &series(first, Duration::hours(1), 25),
            Granularity::Hour,
            "24 hours",
            &WIDE,
        );
        let labels = x_labels(&svg);
        assert!(labels.contains(&"28 Nov".to_owned()), "{labels:?}");
        for label in &labels[..labels.len() - 1] {
            let hour: Option<u32> = label.strip_suffix(":00").and_then(|h| h.parse().ok());
            assert!(label == "28 Nov" || hour.is_some_and(|h| h % 3 == 0), "{labels:?}");
        }
        assert_eq!(labels.last().unwrap(), "14:00", "the last bucket is always labelled");
        assert!(
            svg.contains(r#"<text class="axis last" x="988.0""#),
            "anchored where the axis ends"
        );
    }

    #[test]
    fn days_are_labelled_at_midnight_and_the_last_bucket_always() {
        let first = Utc.with_ymd_and_hms(2026, 11, 21, 15, 0, 0).unwrap();
        let svg = usage_chart(
            &series(first, Duration::hours(1), 168),
            Granularity::Hour,
            "7 days",
            &WIDE,
        );
        let labels = x_labels(&svg);
        assert_eq!(
            labels,
            [
                "22 Nov",
                "23 Nov",
                "24 Nov",
                "25 Nov",
                "26 Nov",
                "27 Nov",
                "28 Nov 14:00"
            ]
        );
        let first = Utc.with_ymd_and_hms(2026, 10, 30, 0, 0, 0).unwrap();
        let svg = usage_chart(
            &series(first, Duration::days(1), 30),
            Granularity::Day,
            "30 days",
            &NARROW,
        );
        let labels = x_labels(&svg);
        assert_eq!(labels.first().unwrap(), "30 Oct");
        assert_eq!(labels.last().unwrap(), "28 Nov");
        assert!(labels.len() >= 4, "{labels:?}");
    }

    #[test]
    fn labels_never_overlap_even_on_a_phone() {
        for (granularity, step, n) in [
            (Granularity::Hour, Duration::hours(1), 25),
            (Granularity::Hour, Duration::hours(1), 168),
            (Granularity::Day, Duration::days(1), 31),
        ] {
            let first = Utc.with_ymd_and_hms(2026, 11, 1, 7, 0, 0).unwrap();
            for frame in [&WIDE, &NARROW] {
                let svg = usage_chart(&series(first, step, n), granularity, "period", frame);
                let mut previous_end = 0.0;
                for text in svg.split(r#"<text class="axis"#).skip(1) {
                    if !text.contains("text-anchor=\"middle\"") && !text.starts_with(r#" last""#) {
                        continue;
                    }
                    let x: f64 = text
                        .split("x=\"")
                        .nth(1)
                        .unwrap()
                        .split('"')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let label = &text[text.find('>').unwrap() + 1..text.find("</text>").unwrap()];
                    let width = text_width(label, frame);
                    let start = if text.starts_with(r#" last""#) {
                        x - width
                    } else {
                        x - width / 2.0
                    };
                    assert!(start >= previous_end, "{label} overlaps on {}", frame.name);
                    assert!(
                        start >= 0.0 && start + width <= frame.width,
                        "{label} leaves the drawing"
                    );
                    previous_end = start + width;
                }
            }
        }
    }

    #[test]
    fn an_empty_period_says_so() {
        let svg = usage_chart(
            &series(Utc::now(), Duration::hours(1), 1),
            Granularity::Hour,
            "24 hours",
            &WIDE,
        );
        assert!(svg.contains("No requests in this period"));
    }
}
