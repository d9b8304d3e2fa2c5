//! The usage chart of a key's page: successful and failed requests per
//! bucket as stacked bars, drawn as SVG on the server (no script, no
//! library). Only numbers and our own labels go into the markup.

use std::fmt::Write;

use keyledger_events::read_model::UsagePoint;

use crate::manage::Granularity;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// The smallest "round" number (1, 2, 5 × 10ⁿ) at or above `n`.
fn nice_ceiling(n: i64) -> i64 {
    let mut step = 1;
    loop {
        for factor in [1, 2, 5] {
            if step * factor >= n {
                return step * factor;
            }
        }
        step *= 10;
    }
}

fn label_format(granularity: Granularity, buckets: usize) -> &'static str {
    match granularity {
        Granularity::Minute => "%H:%M",
        Granularity::Hour if buckets <= 48 => "%H:%M",
        _ => "%-d %b",
    }
}

/// The chart as an `<svg>` element, with a title and a description that
/// say what it shows for people who cannot see it.
pub fn usage_chart(series: &[UsagePoint], granularity: Granularity, period_label: &str) -> String {
    let successful: i64 = series.iter().map(|p| p.successful).sum();
    let failed: i64 = series.iter().map(|p| p.failed).sum();
    let peak = series.iter().map(|p| p.successful + p.failed).max().unwrap_or(0);
    let top = nice_ceiling(peak.max(1));
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let slot = plot_width / series.len().max(1) as f64;
    let bar = (slot * 0.72).max(1.0);
    let y = |value: i64| TOP + plot_height - plot_height * value as f64 / top as f64;
    let mut svg = String::with_capacity(256 + series.len() * 220);
    let _ = write!(
        svg,
        r#"<svg class="chart-svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg"><title id="chart-title">Requests per {} over the last {period_label}</title><desc id="chart-desc">{successful} successful and {failed} failed requests; at most {peak} in one {}.</desc>"#,
        granularity.as_str(),
        granularity.as_str(),
    );
    // Gridlines at round values: `top` (1, 2 or 5 × 10ⁿ) divides evenly.
    let ticks = [5, 4, 2, 1].into_iter().find(|n| top % n == 0).unwrap_or(1);
    for step in 0..=ticks {
        let value = top * step / ticks;
        let at = y(value);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{at:.1}" y2="{at:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            at + 4.0,
            super::views::grouped(value)
        );
    }
    let format = label_format(granularity, series.len());
    let label_every = (series.len() / 6).max(1);
    for (i, point) in series.iter().enumerate() {
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
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
                TOP + plot_height - ok_top
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
        if i.is_multiple_of(label_every) && x + bar / 2.0 + 30.0 < WIDTH {
            let _ = write!(
                svg,
                r#"<text class="axis" x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                x + bar / 2.0,
                HEIGHT - 8.0,
                point.start.format(format)
            );
        }
    }
    if peak == 0 {
        let _ = write!(
            svg,
            r#"<text class="empty-chart" x="{}" y="{}" text-anchor="middle">No requests in this period</text>"#,
            LEFT + plot_width / 2.0,
            TOP + plot_height / 2.0
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn point(hour: u32, successful: i64, failed: i64) -> UsagePoint {
        UsagePoint {
            start: Utc.with_ymd_and_hms(2026, 11, 28, hour, 0, 0).unwrap(),
            requests: successful + failed,
            successful,
            failed,
            rate_limited: 0,
        }
    }

    #[test]
    fn bars_stack_failed_on_successful_and_the_scale_is_round() {
        assert_eq!(nice_ceiling(1), 1);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(130), 200);
        let svg = usage_chart(&[point(10, 30, 10), point(11, 0, 0)], Granularity::Hour, "24 hours");
        assert_eq!(svg.matches("class=\"bar-ok\"").count(), 1);
        assert_eq!(svg.matches("class=\"bar-failed\"").count(), 1);
        assert!(svg.contains("30 successful and 10 failed requests"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(!svg.contains("style="), "the CSP allows no inline styles");
    }

    #[test]
    fn an_empty_period_says_so() {
        let svg = usage_chart(&[point(10, 0, 0)], Granularity::Hour, "24 hours");
        assert!(svg.contains("No requests in this period"));
    }
}
