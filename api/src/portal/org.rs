//! The organization's pages: settings (plan and limit shown, alert
//! recipients, thresholds, rotation days) and the alerts raised for it.

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use keyledger_events::domain::org::{AlertSettings, ChangeSettingsRequest, MAX_ROTATION_DAYS};
use keyledger_events::read_model::{self, AlertRow, OrgRow};
use serde_json::{Map, Value};

use super::views::{
    self, AlertView, AlertsPage, Errors, Layout, RecipientView, Section, SettingsPage, Stamp, Threshold,
};
use super::{form, html, page, see_other, PortalError, Session};
use crate::{error::ApiError, manage, AppState};

/// The words the settings page puts beside each alert threshold:
/// (setting, label, help). The limits are the domain's
/// ([`AlertSettings::RANGES`]); every setting there has its words here.
const THRESHOLD_WORDS: [(&str, &str, &str); 7] = [
    (
        "approaching_limit_percent",
        "Approaching rate limit (%)",
        "Warn when a key uses this share of its per-minute limit within one minute.",
    ),
    (
        "error_rate_percent",
        "Error rate (%)",
        "Warn when this share of a key's requests fail…",
    ),
    (
        "error_rate_window_minutes",
        "Error rate window (minutes)",
        "…over this many minutes…",
    ),
    (
        "error_rate_min_requests",
        "Error rate minimum requests",
        "…once the key made at least this many requests in the window.",
    ),
    (
        "unusual_activity_factor",
        "Unusual activity (× hourly average)",
        "Warn when a key's last hour is this many times its hourly average of the week before…",
    ),
    (
        "unusual_activity_min_requests",
        "Unusual activity minimum requests",
        "…and at least this many requests.",
    ),
    (
        "unused_days",
        "Unused keys (days)",
        "List active keys not used for this many days in a weekly digest.",
    ),
];

/// The alert thresholds' fields, in the domain's order, with `value` of each.
fn thresholds(value: impl Fn(&str) -> String) -> Vec<Threshold> {
    AlertSettings::RANGES
        .iter()
        .map(|&(name, min, max)| {
            let (_, label, help) = THRESHOLD_WORDS
                .iter()
                .find(|(n, ..)| *n == name)
                .copied()
                .unwrap_or((name, name, ""));
            Threshold {
                name,
                label,
                help,
                value: value(name),
                min,
                max,
            }
        })
        .collect()
}

/// The organization's alert recipients as the settings page lists them,
/// with their confirmation state.
fn recipients(org: &OrgRow) -> Vec<RecipientView> {
    org.alert_recipients
        .iter()
        .map(|r| RecipientView {
            email: r.email.as_str().to_owned(),
            confirmed: r.confirmed_at.map(Stamp::new),
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
        plan: views::capitalised(org.plan.as_str()),
        rate_limit: views::grouped(i64::from(org.rate_limit_per_minute)),
        recipients: recipients(org),
        recipients_text: value("alert_emails", org.alert_emails.join("\n")),
        rotation_days: value("rotation_days", org.rotation_days.to_string()),
        max_rotation_days: MAX_ROTATION_DAYS,
        thresholds: thresholds(|name| value(name, settings.get(name).unwrap_or_default().to_string())),
        leak_action: value("leak_action", org.leak_action.as_str().to_owned()),
        errors,
        saved,
    }
}

pub async fn settings(
    state: web::Data<AppState>,
    session: Session,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, PortalError> {
    let org = manage::org(&state, &session.caller()).await?;
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
    let caller = session.caller();
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
    for (name, ..) in AlertSettings::RANGES {
        if let Some(n) = whole(name, &mut errors) {
            thresholds.insert(name.to_owned(), Value::from(n));
        }
    }
    if errors.is_empty() {
        let change = ChangeSettingsRequest {
            alert_emails: Some(emails),
            rotation_days,
            alert_settings: Some(thresholds),
            leak_action: Some(posted.text("leak_action")),
        };
        match manage::change_settings(&state, &caller, change).await {
            Ok(_) => return Ok(see_other("/portal/settings?saved=1")),
            Err(ApiError::Validation(details)) => {
                let renames: Vec<(String, &str)> = AlertSettings::RANGES
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
        keyledger_events::alert_outbox::LEAK_KIND => "Key leaked".into(),
        "webhook_disabled" => "Webhook endpoint disabled".into(),
        other => views::capitalised(&other.replace('_', " ")),
    }
}

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
    let rows = read_model::alerts_of_org(&state.pool, session.org_id, before, ALERTS_PAGE + 1).await?;
    let next_page = (rows.len() as i64 > ALERTS_PAGE)
        .then(|| format!("/portal/alerts?before={}", rows[ALERTS_PAGE as usize - 1].id));
    let alerts = rows.into_iter().take(ALERTS_PAGE as usize).map(alert_view).collect();
    page(&AlertsPage {
        layout: Layout::new(&session, Section::Alerts),
        alerts,
        next_page,
        first_page: before.map(|_| "/portal/alerts".to_owned()),
    })
}

fn alert_view(alert: AlertRow) -> AlertView {
    let (state, state_label) = match alert.status.as_str() {
        "sent" => ("active", "Sent"),
        "pending" => ("pending", "Sending"),
        "failed" => ("expired", "Failed"),
        _ => ("inactive", "No recipients"),
    };
    AlertView {
        kind: kind_label(&alert.kind),
        subject: alert.subject,
        key: alert.key_id.map(|id| {
            let id = id.to_string();
            let name = alert.key_name.unwrap_or_else(|| id.clone());
            (id, name)
        }),
        when: Stamp::new(alert.created_at),
        state,
        state_label,
        recipients: if alert.delivered_to.is_empty() {
            String::new()
        } else {
            format!("to {}", alert.delivered_to.join(", "))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alert_setting_has_its_words_and_the_domains_limits() {
        let fields = thresholds(|_| String::new());
        assert_eq!(fields.len(), AlertSettings::RANGES.len());
        for (field, (name, min, max)) in fields.iter().zip(AlertSettings::RANGES) {
            assert_eq!((field.name, field.min, field.max), (name, min, max));
            assert_ne!(field.label, name, "{name} has a label");
            assert!(!field.help.is_empty(), "{name} has help text");
        }
    }
}
