//! How an alert reads (`keyledger_events::alert_email`, shared with the
//! API, which raises leaked-key alerts) and the figures alert emails show.

pub use keyledger_events::alert_email::{compose, escape, Block, Email, KeyLabel};

/// A whole number with thousands separators (`12,345`), as figures read in
/// emails (the same as on the portal's pages).
pub use keyledger_events::figures::grouped as count;

/// How long until `until`, as an email says it: whole days rounded up
/// ("3 days"), or hours when less than a day is left.
pub fn time_left(now: chrono::DateTime<chrono::Utc>, until: chrono::DateTime<chrono::Utc>) -> String {
    let hours = ((until - now).num_minutes().max(1) + 59) / 60;
    match hours {
        1 => "1 hour".into(),
        h if h < 24 => format!("{h} hours"),
        h => match (h + 23) / 24 {
            1 => "1 day".into(),
            d => format!("{d} days"),
        },
    }
}

/// A share as a percentage with one decimal (`12.5%`).
pub fn percent(part: i64, whole: i64) -> String {
    if whole == 0 {
        return "0%".into();
    }
    let tenths = (part * 1000 + whole / 2) / whole;
    match tenths % 10 {
        0 => format!("{}%", tenths / 10),
        r => format!("{}.{r}%", tenths / 10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_like_figures() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(percent(1, 8), "12.5%");
        assert_eq!(percent(80, 100), "80%");
        assert_eq!(percent(2, 3), "66.7%");
        assert_eq!(percent(5, 0), "0%");
        let now = chrono::Utc::now();
        let left = |d: chrono::Duration| time_left(now, now + d);
        assert_eq!(left(chrono::Duration::days(3) - chrono::Duration::seconds(2)), "3 days");
        assert_eq!(left(chrono::Duration::days(14)), "14 days");
        assert_eq!(left(chrono::Duration::hours(25)), "2 days");
        assert_eq!(left(chrono::Duration::hours(5)), "5 hours");
        assert_eq!(left(chrono::Duration::seconds(2)), "1 hour");
    }
}
