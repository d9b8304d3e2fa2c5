//! The organization's pages: settings (plan and limit shown, alert
//! recipients, thresholds, rotation days) and the alerts raised for it.

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use keyledger_events::domain::org::{AlertSettings, ChangeSettings};
use keyledger_events::read_model::OrgRow;
use serde_json::{Map, Value};

use super::views::{
    self, AlertView, AlertsPage, Errors, Layout, RecipientView, Section, SettingsPage, Stamp, Threshold,
};
use super::{form, html, page, see_other, PortalError, Session};
use crate::{error::ApiError, manage, AppState};

/// The alert thresholds the settings page offers: (field, label, help, min, max).
const THRESHOLDS: [(&str, &str, &str, u32, u32); 7] = [
    (
        "approaching_limit_percent",
        "Approaching rate limit (%)",
        "Warn when a key uses this share of its per-minute limit within one minute.",
        1,
        100,
    ),
    (
        "error_rate_percent",
        "Error rate (%)",
        "Warn when this share of a key's requests fail…",
        1,
        100,
    ),
    (
        "error_rate_window_minutes",
        "Error rate window (minutes)",
        "…over this many minutes…",
        1,
        1_440,
    ),
    (
        "error_rate_min_requests",
        "Error rate minimum requests",
        "…once the key made at least this many requests in the window.",
        1,
        1_000_000,
    ),
    (
        "unusual_activity_factor",
        "Unusual activity (× hourly average)",
        "Warn when a key's last hour is this many times its hourly average of the week before…",
        2,
        1_000,
    ),
    (
        "unusual_activity_min_requests",
        "Unusual activity minimum requests",
        "…and at least this many requests.",
        1,
        1_000_000_000,
    ),
    (
        "unused_days",
        "Unused keys (days)",
        "List active keys not used for this many days in a weekly digest.",
        1,
        365,
    ),
];

fn setting_value(settings: &AlertSettings, name: &str) -> u32 {
    match name {
        "approaching_limit_percent" => settings.approaching_limit_percent,
        "error_rate_percent" => settings.error_rate_percent,
        "error_rate_window_minutes" => settings.error_rate_window_minutes,
        "error_rate_min_requests" => settings.error_rate_min_requests,
        "unusual_activity_factor" => settings.unusual_activity_factor,
        "unusual_activity_min_requests" => settings.unusual_activity_min_requests,
        _ => settings.unused_days,
    }
}

/// The organization's alert recipients and whether each confirmed its
/// address. Every address of today's organization receives alerts, so each
/// counts as confirmed (with no date).
fn recipients(org: &OrgRow) -> Vec<RecipientView> {
    org.alert_emails
        .iter()
        .map(|email| RecipientView {
            email: email.clone(),
            confirmed: true,
            confirmed_at: None::<DateTime<Utc>>.map(Stamp::new),
        })
        .collect()
}

/// The settings page, with `typed` values (a refused form) or the saved ones.
fn settings_page(
    session: &Session,
    org: &OrgRow,
    typed: Option<&form::Form>,
    errors: Errors,
    saved: bool,
) -> SettingsPage {
    let settings = org.alert_settings();
    let value = |name: &str, saved: String| typed.map_or(saved, |f| f.text(name));
    SettingsPage {
        layout: Layout::new(session, Section::Settings),
        plan: {
            let mut plan = org.plan.clone();
            if let Some(first) = plan.get(..1) {
                plan.replace_range(..1, &first.to_uppercase());
            }
            plan
        },
        rate_limit: views::grouped(i64::from(org.rate_limit_per_minute)),
        recipients: recipients(org),
        recipients_text: value("alert_emails", org.alert_emails.join("\n")),
        rotation_days: value("rotation_days", org.rotation_days.to_string()),
        thresholds: THRESHOLDS
            .iter()
            .map(|&(name, label, help, min, max)| Threshold {
                name,
                label,
                help,
                value: value(name, setting_value(&settings, name).to_string()),
                min,
                max,
            })
            .collect(),
        errors,
        saved,
    }
}

pub async fn settings(
    state: web::Data<AppState>,
    session: Session,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, PortalError> {
    let org = manage::org(&state, &session.caller()?).await?;
    let saved = query.iter().any(|(name, _)| name == "saved");
    page(&settings_page(&session, &org, None, Errors::default(), saved))
}

/// Saves every setting of the form at once, or nothing.
pub async fn save_settings(
    state: web::Data<AppState>,
    session: Session,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PortalError> {
    let posted = form::read(&req, payload, &state, &session).await?;
    let caller = session.caller()?;
    let mut errors = Errors::default();
    let whole = |name: &str, errors: &mut Errors| match posted.text(name).trim().parse::<i64>() {
        Ok(n) => Some(n),
        Err(_) => {
            errors.add(name, "must be a whole number");
            None
        }
    };
    let emails: Vec<String> = posted
        .text("alert_emails")
        .split(['\n', ',', ';'])
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    let rotation_days = whole("rotation_days", &mut errors);
    let mut thresholds = Map::new();
    for (name, ..) in THRESHOLDS {
        if let Some(n) = whole(name, &mut errors) {
            thresholds.insert(name.to_owned(), Value::from(n));
        }
    }
    if errors.is_empty() {
        let change = ChangeSettings {
            alert_emails: Some(emails),
            rotation_days,
            alert_settings: Some(thresholds),
        };
        match manage::change_settings(&state, &caller, change).await {
            Ok(_) => return Ok(see_other("/portal/settings?saved=1")),
            Err(ApiError::Validation(details)) => {
                let renames: Vec<(String, &str)> = THRESHOLDS
                    .iter()
                    .map(|(name, ..)| (format!("alert_settings.{name}"), *name))
                    .collect();
                let renames: Vec<(&str, &str)> = renames.iter().map(|(from, to)| (from.as_str(), *to)).collect();
                errors = Errors::from_details(&details, &renames);
            }
            Err(other) => return Err(other.into()),
        }
    }
    let org = manage::org(&state, &caller).await?;
    Ok(html(
        StatusCode::UNPROCESSABLE_ENTITY,
        &settings_page(&session, &org, Some(&posted), errors, false),
    ))
}

/// Alerts per page.
const ALERTS_PAGE: i64 = 50;

fn kind_label(kind: &str) -> String {
    match kind {
        "approaching_rate_limit" => "Approaching rate limit".into(),
        "error_rate" => "High error rate".into(),
        "unusual_activity" => "Unusual activity".into(),
        "unused_keys" => "Unused keys".into(),
        "rotation_due" => "Rotation due".into(),
        "key_expiring" => "Key expiring".into(),
        other => {
            let mut text = other.replace('_', " ");
            if let Some(first) = text.get(..1) {
                text.replace_range(..1, &first.to_uppercase());
            }
            text
        }
    }
}

type AlertRow = (
    uuid::Uuid,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    Vec<String>,
    DateTime<Utc>,
);

/// The alerts raised for the organization, newest first, 50 a page.
pub async fn alerts(
    state: web::Data<AppState>,
    session: Session,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, PortalError> {
    let before = query
        .iter()
        .find(|(name, _)| name == "before")
        .and_then(|(_, v)| v.parse::<uuid::Uuid>().ok());
    let rows: Vec<AlertRow> = sqlx::query_as(
        "select a.id, a.kind, a.key_id, k.name, a.subject, a.status, a.delivered_to, a.created_at
         from alerts a left join keys k on k.id = a.key_id
         where a.org_id = $1 and ($2::uuid is null or a.id < $2)
         order by a.id desc limit $3",
    )
    .bind(&session.org_id)
    .bind(before)
    .bind(ALERTS_PAGE + 1)
    .fetch_all(&state.pool)
    .await?;
    let next_page = (rows.len() as i64 > ALERTS_PAGE)
        .then(|| format!("/portal/alerts?before={}", rows[ALERTS_PAGE as usize - 1].0));
    let alerts = rows
        .into_iter()
        .take(ALERTS_PAGE as usize)
        .map(
            |(_, kind, key_id, key_name, subject, status, delivered_to, created_at)| {
                let (state, state_label) = match status.as_str() {
                    "sent" => ("active", "Sent"),
                    "pending" => ("pending", "Sending"),
                    "failed" => ("expired", "Failed"),
                    _ => ("inactive", "No recipients"),
                };
                AlertView {
                    kind: kind_label(&kind),
                    subject,
                    key: key_id.map(|id| {
                        let name = key_name.unwrap_or_else(|| id.clone());
                        (id, name)
                    }),
                    when: Stamp::new(created_at),
                    state,
                    state_label,
                    recipients: if delivered_to.is_empty() {
                        String::new()
                    } else {
                        format!("to {}", delivered_to.join(", "))
                    },
                }
            },
        )
        .collect();
    page(&AlertsPage {
        layout: Layout::new(&session, Section::Alerts),
        alerts,
        next_page,
        first_page: before.map(|_| "/portal/alerts".to_owned()),
    })
}
