//! How an alert reads: one list of blocks rendered twice, as plain text and
//! as HTML, so both parts of an email always say the same thing. Everything
//! a user typed (key names) is escaped in the HTML part. No secret ever
//! reaches this module: a key is named by its name, prefix and last four.
//!
//! Here rather than with the mailer (`keyledger-workers`) because the API
//! raises an alert too — a leaked key's, in the request that reports it —
//! and alerts are rendered when they are raised.

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
}
