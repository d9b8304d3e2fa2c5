//! The portal's pages as askama templates (`api/templates/portal/`), and the
//! view models they show: what a person reads, already formatted. askama
//! checks every template against its struct at compile time and escapes
//! every value for HTML unless a template says otherwise (only the chart's
//! SVG, built from numbers in `chart.rs`, is inserted as markup).

use std::collections::BTreeMap;

use askama::Template;
use chrono::{DateTime, Utc};
use keyledger_events::domain::{KeyStatus, Scope, ValidationDetails};
use keyledger_events::read_model::KeyRow;

use super::Session;

/// Which section of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Keys,
    Alerts,
    Settings,
    Webhooks,
}

/// What every signed-in page shows around its content.
pub struct Layout {
    pub org_name: String,
    pub user: Option<String>,
    pub csrf: String,
    pub section: Section,
}

impl Layout {
    pub fn new(session: &Session, section: Section) -> Layout {
        Layout {
            org_name: session.org_name.clone(),
            user: session.user.clone(),
            csrf: session.csrf.clone(),
            section,
        }
    }

    /// `aria-current` for a navigation link.
    pub fn current(&self, section: &str) -> &'static str {
        let here = match self.section {
            Section::Keys => "keys",
            Section::Alerts => "alerts",
            Section::Settings => "settings",
            Section::Webhooks => "webhooks",
        };
        if here == section {
            "page"
        } else {
            "false"
        }
    }
}

/// A moment, as people read it (UTC) and as machines do.
#[derive(Debug, Clone)]
pub struct Stamp {
    pub iso: String,
    pub date: String,
    pub date_time: String,
}

impl Stamp {
    pub fn new(at: DateTime<Utc>) -> Stamp {
        Stamp {
            iso: at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            date: at.format("%-d %b %Y").to_string(),
            date_time: at.format("%-d %b %Y, %H:%M UTC").to_string(),
        }
    }
}

pub use keyledger_events::figures::{capitalised, grouped};

/// 66.7% (a whole number without decimals); "—" without requests.
pub fn percent(rate: Option<f64>) -> String {
    match rate {
        None => "—".into(),
        Some(r) => {
            let p = (r * 1000.0).round() / 10.0;
            if p.fract() == 0.0 {
                format!("{p:.0}%")
            } else {
                format!("{p:.1}%")
            }
        }
    }
}

/// A key as the portal shows it.
#[derive(Debug, Clone)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub key_type: String,
    pub type_label: &'static str,
    pub environment: String,
    pub scopes: Vec<String>,
    /// `active`, `inactive` or `expired` (by the clock).
    pub status: String,
    pub status_label: &'static str,
    pub created: Stamp,
    pub last_used: Option<Stamp>,
    pub expires: Option<Stamp>,
    pub rotation_due: Option<Stamp>,
    /// `sk_live_…x9Qa`: enough to recognise a key, never enough to use it.
    pub masked: String,
    /// The IP allowlist, one entry each (empty: any address).
    pub allowed_ips: Vec<String>,
    /// When the current secret was reported leaked (until regenerated).
    pub leaked: Option<Stamp>,
}

impl KeyView {
    pub fn new(row: &KeyRow, now: DateTime<Utc>) -> KeyView {
        let status = row.status_at(now);
        KeyView {
            id: row.id.to_string(),
            name: row.name.clone(),
            key_type: row.key_type.as_str().to_owned(),
            type_label: type_label(row.key_type.as_str()),
            environment: row.environment().as_str().to_owned(),
            scopes: scope_texts(&row.scopes),
            status_label: match status {
                KeyStatus::Active => "Active",
                KeyStatus::Inactive => "Inactive",
                KeyStatus::Expired => "Expired",
            },
            status: status.as_str().to_owned(),
            created: Stamp::new(row.created_at),
            last_used: row.last_used_at.map(Stamp::new),
            expires: row.expires_at.map(Stamp::new),
            rotation_due: row.rotation_due_at.map(Stamp::new),
            masked: format!("{}…{}", row.prefix(), row.last_four),
            allowed_ips: row.allowed_ips.to_strings(),
            leaked: row.leaked_at.map(Stamp::new),
        }
    }

    pub fn is_active(&self) -> bool {
        self.status == "active"
    }

    pub fn is_expired(&self) -> bool {
        self.status == "expired"
    }
}

/// Scopes as the forms name them.
pub fn scope_texts(scopes: &[Scope]) -> Vec<String> {
    scopes.iter().map(|s| s.as_str().to_owned()).collect()
}

pub fn type_label(key_type: &str) -> &'static str {
    match key_type {
        "public" => "Public",
        "secret" => "Secret",
        _ => "Test",
    }
}

/// Problems with a form's fields, in words, by field name.
#[derive(Debug, Clone, Default)]
pub struct Errors(pub BTreeMap<String, Vec<String>>);

impl Errors {
    /// The command's validation details, under the form's field names.
    pub fn from_details(details: &ValidationDetails, rename: &[(&str, &str)]) -> Errors {
        let mut errors = Errors::default();
        for (field, problems) in &details.0 {
            let name = rename
                .iter()
                .find(|(from, _)| from == field)
                .map_or(field.as_str(), |(_, to)| to);
            errors
                .0
                .entry(name.to_owned())
                .or_default()
                .extend(problems.iter().cloned());
        }
        errors
    }

    pub fn add(&mut self, field: &str, problem: impl Into<String>) {
        self.0.entry(field.to_owned()).or_default().push(problem.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }

    /// The problems with `field`, as one sentence ("" when none).
    pub fn of(&self, field: &str) -> String {
        self.0
            .get(field)
            .map(|p| capitalised(&p.join("; ")))
            .unwrap_or_default()
    }
}

/// A permission checkbox.
pub struct ScopeOption {
    pub name: &'static str,
    pub description: &'static str,
    pub public: bool,
    pub checked: bool,
}

pub fn scope_options(checked: &[String]) -> Vec<ScopeOption> {
    Scope::ALL
        .into_iter()
        .map(|scope| ScopeOption {
            name: scope.as_str(),
            description: match scope {
                Scope::ReadExperiences => "Read experiences",
                Scope::WriteExperiences => "Create and change experiences",
                Scope::ReadConsumers => "Read consumers",
                Scope::WriteConsumers => "Create and change consumers",
                Scope::ReadAnalytics => "Read analytics",
                Scope::Admin => "Full permissions, including managing keys",
            },
            public: scope.allowed_for(keyledger_events::domain::KeyType::Public),
            checked: checked.iter().any(|c| c == scope.as_str()),
        })
        .collect()
}

/// The fields of the create and edit forms, as typed.
#[derive(Debug, Clone, Default)]
pub struct KeyForm {
    pub name: String,
    pub key_type: String,
    pub scopes: Vec<String>,
    /// `YYYY-MM-DD`, or "" for none.
    pub expires_on: String,
    /// The IP allowlist, one entry a line ("" for none).
    pub allowed_ips: String,
}

impl KeyForm {
    /// The allowlist typed: entries separated by lines, commas or spaces.
    pub fn allowed_ips_list(&self) -> Vec<String> {
        self.allowed_ips
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A reported leak of a key's secret, as its page tells it.
pub struct LeakNotice {
    pub when: Stamp,
    /// Where it was found, as the scanner said ("" when it did not).
    pub url: String,
    /// Whether `url` may be shown as a link (http or https only).
    pub linkable: bool,
    pub source: String,
    /// Whether the organization's leak action was to deactivate the key.
    pub deactivated: bool,
}

/// A secret shown once, in the answer to the POST that made it.
pub struct Shown {
    pub title: String,
    pub key_name: String,
    pub key_id: String,
    pub secret: String,
    pub grace_note: Option<String>,
}

/// The answer to a create or regenerate form sent again (same nonce): what
/// the first submission did, without its secret, which is never stored.
pub struct Already {
    pub title: String,
    pub key_name: String,
    pub key_id: String,
    /// What happened the first time, in words.
    pub done: String,
}

#[derive(Template)]
#[template(path = "portal/keys.html")]
pub struct KeysPage {
    pub layout: Layout,
    pub keys: Vec<KeyView>,
    pub status_filter: String,
    pub type_filter: String,
    pub filtered: bool,
    pub next_page: Option<String>,
    pub first_page: Option<String>,
    pub notice: Option<String>,
    pub shown: Option<Shown>,
    pub already: Option<Already>,
    pub return_to: String,
    /// The regenerate dialog's nonce.
    pub nonce: String,
}

#[derive(Template)]
#[template(path = "portal/key_new.html")]
pub struct NewKeyPage {
    pub layout: Layout,
    pub nonce: String,
    pub form: KeyForm,
    pub scopes: Vec<ScopeOption>,
    pub errors: Errors,
    pub today: String,
}

#[derive(Template)]
#[template(path = "portal/key_edit.html")]
pub struct EditKeyPage {
    pub layout: Layout,
    pub key: KeyView,
    pub form: KeyForm,
    pub scopes: Vec<ScopeOption>,
    pub errors: Errors,
    pub today: String,
}

#[derive(Template)]
#[template(path = "portal/key_actions.html")]
pub struct ActionsPage {
    pub layout: Layout,
    pub key: KeyView,
    pub return_to: String,
}

/// The grace periods offered when regenerating: (form value, label, seconds).
pub const GRACE_PERIODS: [(&str, &str, i64); 4] = [
    ("none", "None", 0),
    ("1 hour", "1 hour", 3_600),
    ("24 hours", "24 hours", 86_400),
    ("7 days", "7 days", 604_800),
];

#[derive(Template)]
#[template(path = "portal/key_regenerate.html")]
pub struct RegeneratePage {
    pub layout: Layout,
    pub nonce: String,
    pub key: KeyView,
    pub error: String,
}

#[derive(Template)]
#[template(path = "portal/key_delete.html")]
pub struct DeletePage {
    pub layout: Layout,
    pub key: KeyView,
    pub typed: String,
    pub error: String,
}

/// One line of a key's audit trail.
pub struct AuditRow {
    pub what: String,
    pub detail: String,
    pub when: Stamp,
    pub who: String,
}

/// A usage figure with its label.
pub struct Stat {
    pub label: &'static str,
    pub value: String,
    pub note: String,
}

/// A period the key page can show.
pub struct Period {
    pub value: &'static str,
    pub label: &'static str,
    pub current: bool,
}

#[derive(Template)]
#[template(path = "portal/key.html")]
pub struct KeyPage {
    pub layout: Layout,
    pub key: KeyView,
    pub periods: Vec<Period>,
    pub period_label: &'static str,
    pub stats: Vec<Stat>,
    pub chart: String,
    pub audit: Vec<AuditRow>,
    pub notice: Option<String>,
    pub return_to: String,
    /// The report that the current secret leaked, while it stands.
    pub leak: Option<LeakNotice>,
    /// The regenerate dialog's nonce.
    pub nonce: String,
}

/// An alert recipient, as the settings page lists it: confirmed (alerts go
/// to it) or waiting for its confirmation link to be followed.
pub struct RecipientView {
    pub email: String,
    /// When it was confirmed (`None`: alerts do not go to it yet).
    pub confirmed: Option<Stamp>,
}

/// One alert threshold field.
pub struct Threshold {
    pub name: &'static str,
    pub label: &'static str,
    pub help: &'static str,
    pub value: String,
    pub min: u32,
    pub max: u32,
}

#[derive(Template)]
#[template(path = "portal/settings.html")]
pub struct SettingsPage {
    pub layout: Layout,
    pub plan: String,
    pub rate_limit: String,
    pub recipients: Vec<RecipientView>,
    pub recipients_text: String,
    pub rotation_days: String,
    /// The longest rotation policy the organization may set.
    pub max_rotation_days: i64,
    pub thresholds: Vec<Threshold>,
    /// `deactivate` or `notify` (as saved, or as typed in a refused form).
    pub leak_action: String,
    pub errors: Errors,
    pub saved: bool,
}

/// One alert as the alerts page lists it.
pub struct AlertView {
    pub kind: String,
    pub subject: String,
    pub key: Option<(String, String)>,
    pub when: Stamp,
    pub state: &'static str,
    pub state_label: &'static str,
    pub recipients: String,
}

#[derive(Template)]
#[template(path = "portal/alerts.html")]
pub struct AlertsPage {
    pub layout: Layout,
    pub alerts: Vec<AlertView>,
    pub next_page: Option<String>,
    pub first_page: Option<String>,
}

#[derive(Template)]
#[template(path = "portal/sign_in.html")]
pub struct SignInPage {
    pub signed_out: bool,
    /// A sign-in link that is unknown, used or expired.
    pub refused: bool,
    /// Reload once: the session cookie did not come with a cross-site redirect.
    pub retry_signed_in: bool,
    /// How long a sign-in link works, in words ("5 minutes").
    pub link_lifetime: String,
}

#[derive(Template)]
#[template(path = "portal/message.html")]
pub struct MessagePage {
    pub title: &'static str,
    pub message: &'static str,
    pub request_id: String,
    pub signed_in: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_like_a_product() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(-1000), "-1,000");
        assert_eq!(percent(None), "—");
        assert_eq!(percent(Some(0.5)), "50%");
        assert_eq!(percent(Some(2.0 / 3.0)), "66.7%");
        assert_eq!(percent(Some(1.0)), "100%");
    }

    const HOSTILE: &str = "<script>alert(1)</script>";

    fn layout() -> Layout {
        Layout {
            org_name: HOSTILE.into(),
            user: Some(HOSTILE.into()),
            csrf: "c".into(),
            section: Section::Keys,
        }
    }

    fn key() -> KeyView {
        let row = KeyRow {
            id: keyledger_events::domain::KeyId::new(),
            org_id: keyledger_events::domain::OrgId::new(),
            name: HOSTILE.into(),
            key_type: keyledger_events::domain::KeyType::Secret,
            scopes: vec![Scope::Admin],
            status: KeyStatus::Active,
            last_four: "abcd".into(),
            created_at: Utc::now(),
            last_used_at: Some(Utc::now()),
            expires_at: None,
            rotation_due_at: None,
            version: 1,
            allowed_ips: keyledger_events::domain::AllowedIps::parse(&["203.0.113.0/24".into()]).unwrap(),
            leaked_at: Some(Utc::now()),
        };
        KeyView::new(&row, Utc::now())
    }

    fn form() -> KeyForm {
        KeyForm {
            name: HOSTILE.into(),
            key_type: "secret".into(),
            scopes: vec![],
            expires_on: HOSTILE.into(),
            allowed_ips: HOSTILE.into(),
        }
    }

    fn errors() -> Errors {
        let mut errors = Errors::default();
        errors.add("name", HOSTILE);
        errors
    }

    /// Every page that shows text a user typed (key names, typed fields,
    /// addresses, the organization's name, alert subjects), rendered with
    /// markup in that text: the markup is shown as text, never as markup.
    #[test]
    fn user_text_is_escaped_in_every_page_that_shows_it() {
        let pages: Vec<(&str, String)> = vec![
            (
                "keys",
                KeysPage {
                    layout: layout(),
                    keys: vec![key()],
                    status_filter: String::new(),
                    type_filter: String::new(),
                    filtered: false,
                    next_page: None,
                    first_page: None,
                    notice: None,
                    shown: Some(Shown {
                        title: HOSTILE.into(),
                        key_name: HOSTILE.into(),
                        key_id: "key_1".into(),
                        secret: "sk_live_x".into(),
                        grace_note: Some(HOSTILE.into()),
                    }),
                    already: Some(Already {
                        title: "API key already created".into(),
                        key_name: HOSTILE.into(),
                        key_id: "key_1".into(),
                        done: "created".into(),
                    }),
                    return_to: "/portal/keys".into(),
                    nonce: "n".into(),
                }
                .render()
                .unwrap(),
            ),
            (
                "new",
                NewKeyPage {
                    layout: layout(),
                    nonce: "n".into(),
                    form: form(),
                    scopes: scope_options(&[]),
                    errors: errors(),
                    today: "2026-11-28".into(),
                }
                .render()
                .unwrap(),
            ),
            (
                "edit",
                EditKeyPage {
                    layout: layout(),
                    key: key(),
                    form: form(),
                    scopes: scope_options(&[]),
                    errors: errors(),
                    today: "2026-11-28".into(),
                }
                .render()
                .unwrap(),
            ),
            (
                "key",
                KeyPage {
                    layout: layout(),
                    key: key(),
                    periods: vec![],
                    period_label: "24 hours",
                    stats: vec![],
                    chart: String::new(),
                    audit: vec![AuditRow {
                        what: "Edited".into(),
                        detail: HOSTILE.into(),
                        when: Stamp::new(Utc::now()),
                        who: HOSTILE.into(),
                    }],
                    notice: None,
                    return_to: "/portal/keys/key_1".into(),
                    leak: Some(LeakNotice {
                        when: Stamp::new(Utc::now()),
                        url: HOSTILE.into(),
                        linkable: false,
                        source: HOSTILE.into(),
                        deactivated: true,
                    }),
                    nonce: "n".into(),
                }
                .render()
                .unwrap(),
            ),
            (
                "actions",
                ActionsPage {
                    layout: layout(),
                    key: key(),
                    return_to: "/portal/keys".into(),
                }
                .render()
                .unwrap(),
            ),
            (
                "regenerate",
                RegeneratePage {
                    layout: layout(),
                    nonce: "n".into(),
                    key: key(),
                    error: HOSTILE.into(),
                }
                .render()
                .unwrap(),
            ),
            (
                "delete",
                DeletePage {
                    layout: layout(),
                    key: key(),
                    typed: HOSTILE.into(),
                    error: HOSTILE.into(),
                }
                .render()
                .unwrap(),
            ),
            (
                "settings",
                SettingsPage {
                    layout: layout(),
                    plan: "Pro".into(),
                    rate_limit: "10,000".into(),
                    recipients: vec![RecipientView {
                        email: HOSTILE.into(),
                        confirmed: None,
                    }],
                    recipients_text: HOSTILE.into(),
                    rotation_days: HOSTILE.into(),
                    max_rotation_days: 3650,
                    thresholds: vec![],
                    leak_action: HOSTILE.into(),
                    errors: errors(),
                    saved: false,
                }
                .render()
                .unwrap(),
            ),
            (
                "alerts",
                AlertsPage {
                    layout: layout(),
                    alerts: vec![AlertView {
                        kind: "Key expiring".into(),
                        subject: HOSTILE.into(),
                        key: Some(("key_1".into(), HOSTILE.into())),
                        when: Stamp::new(Utc::now()),
                        state: "active",
                        state_label: "Sent",
                        recipients: HOSTILE.into(),
                    }],
                    next_page: None,
                    first_page: None,
                }
                .render()
                .unwrap(),
            ),
        ];
        for (name, html) in pages {
            assert!(!html.contains(HOSTILE), "{name}: markup from user text");
            assert!(
                html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
                "{name}: shown as text"
            );
        }
    }
}
