//! How an alert reads: one list of blocks rendered twice, as plain text and
//! as HTML, so both parts of an email always say the same thing. Everything
//! a user typed (key names) is escaped in the HTML part. No secret ever
//! reaches this module: a key is named by its name, prefix and last four.

use std::fmt;

/// A rendered email, as stored with its alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// A piece of an email's body.
pub enum Block {
    Paragraph(String),
    Heading(String),
    List(Vec<String>),
    /// A link, written out in full in both parts.
    Link(String),
}

/// How a key is named in an email: `"Checkout backend" (sk_live_…a1b2)`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyLabel {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub last_four: String,
}

impl fmt::Display for KeyLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\" ({}…{})", self.name, self.prefix, self.last_four)
    }
}

const FOOTER: &str = "Alert addresses and thresholds are organization settings: change them with \
                      PATCH /v1/org (alert_emails, alert_settings, rotation_days). keyledger never \
                      puts an API key's secret in an email.";

/// The email for `subject` with `blocks` as its body, plus the common footer.
pub fn compose(subject: impl Into<String>, blocks: &[Block]) -> Email {
    let subject = format!("[keyledger] {}", subject.into());
    let mut text = String::new();
    let mut html = String::from(
        "<!DOCTYPE html>\n<html><body style=\"font-family: sans-serif; line-height: 1.5; max-width: 40em\">\n",
    );
    for block in blocks {
        match block {
            Block::Paragraph(p) => {
                text.push_str(p);
                text.push_str("\n\n");
                html.push_str(&format!("<p>{}</p>\n", escape(p)));
            }
            Block::Heading(h) => {
                text.push_str(h);
                text.push('\n');
                html.push_str(&format!("<h3>{}</h3>\n", escape(h)));
            }
            Block::Link(url) => {
                text.push_str(url);
                text.push_str("\n\n");
                html.push_str(&format!("<p><a href=\"{0}\">{0}</a></p>\n", escape(url)));
            }
            Block::List(items) => {
                html.push_str("<ul>\n");
                for item in items {
                    text.push_str(&format!("  - {item}\n"));
                    html.push_str(&format!("<li>{}</li>\n", escape(item)));
                }
                text.push('\n');
                html.push_str("</ul>\n");
            }
        }
    }
    text.push_str("-- \n");
    text.push_str(FOOTER);
    text.push('\n');
    html.push_str(&format!(
        "<hr>\n<p style=\"color: #666; font-size: small\">{}</p>\n</body></html>\n",
        escape(FOOTER)
    ));
    Email { subject, text, html }
}

/// `text` safe in HTML text and in quoted attribute values.
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
    fn both_parts_say_the_same_and_the_html_escapes_what_users_typed() {
        let label = KeyLabel {
            id: "key_1".into(),
            name: "<script>alert('x')</script> & co".into(),
            prefix: "sk_live_".into(),
            last_four: "a1b2".into(),
        };
        let email = compose(
            format!("{label} is busy"),
            &[
                Block::Paragraph(format!("Key {label} made 90 requests.")),
                Block::List(vec!["one".into(), "two".into()]),
            ],
        );
        assert!(email.subject.starts_with("[keyledger] \"<script>"));
        assert!(email
            .text
            .contains("Key \"<script>alert('x')</script> & co\" (sk_live_…a1b2) made 90 requests."));
        assert!(email.text.contains("  - one\n  - two\n"));
        assert!(email
            .html
            .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co"));
        assert!(!email.html.contains("<script>"));
        assert!(email.html.contains("<li>two</li>"));
    }

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
