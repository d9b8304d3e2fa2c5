//! The portal's key pages: the list (filters, pages), create, edit,
//! regenerate, deactivate/activate, delete, a key's usage and audit trail.
//! Each change is the JSON API's operation (`manage.rs`); a refused one
//! shows the command's own reasons beside the fields.

use std::collections::HashMap;

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use keyledger_events::domain::{key::UpdateKeyRequest, KeyId, KeyStatus, KeyType};
use keyledger_events::log::StoredEvent;
use keyledger_events::read_model::{self, KeyFilter, KeyRow};
use serde_json::Value;

use super::views::{
    self, ActionsPage, Already, AuditRow, DeletePage, EditKeyPage, Errors, KeyForm, KeyPage, KeyView, KeysPage, Layout,
    LeakNotice, NewKeyPage, Period, RegeneratePage, Section, Shown, Stamp, Stat,
};
use super::{chart, form, html, page, see_other, PortalError, Session};
use crate::clock;
use crate::idempotency::{self, Recorded};
use crate::manage::{self, Done, Granularity, NewKey};
use crate::{error::ApiError, AppState};

type Query = web::Query<Vec<(String, String)>>;

/// Keys per page of the list.
const PAGE_SIZE: i64 = 20;

fn param<'q>(query: &'q Query, name: &str) -> Option<&'q str> {
    query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The message for `?done=…` after a change (never user text from the URL).
fn notice(query: &Query) -> Option<String> {
    let text = match param(query, "done")? {
        "saved" => "Changes saved.",
        "deactivated" => "Key deactivated: requests made with it are refused until it is activated again.",
        "activated" => "Key activated: it works again.",
        "deleted" => "Key deleted: it will never work again.",
        _ => return None,
    };
    Some(text.to_owned())
}

fn with_done(path: &str, done: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}done={done}")
}

fn list_url(status: &str, key_type: &str, cursor: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if !status.is_empty() {
        query.append_pair("status", status);
    }
    if !key_type.is_empty() {
        query.append_pair("type", key_type);
    }
    if let Some(cursor) = cursor {
        query.append_pair("cursor", cursor);
    }
    let query = query.finish();
    if query.is_empty() {
        "/portal/keys".into()
    } else {
        format!("/portal/keys?{query}")
    }
}

/// What the list page shows above the keys after a create or regenerate
/// form: the new secret (once), or what a form sent again did the first time.
enum Outcome {
    Shown(Shown),
    Already(Already),
}

/// The page for a form sent again: the first outcome, as the shared
/// operation replays it (the key, and that its secret is unavailable).
fn already(recorded: &Recorded, title: &str, done: &str) -> Result<Outcome, PortalError> {
    let body = recorded.replay_body();
    let text = |field: &str| body[field].as_str().map(str::to_owned);
    match (text("id"), text("name"), body["secret_unavailable"].as_bool()) {
        (Some(key_id), Some(key_name), Some(true)) => Ok(Outcome::Already(Already {
            title: title.to_owned(),
            key_name,
            key_id,
            done: done.to_owned(),
        })),
        _ => Err(ApiError::internal(std::io::Error::other("a replayed answer names no key")).into()),
    }
}

/// The list page (also the page that shows a new secret once).
async fn keys_page(
    state: &AppState,
    session: &Session,
    query: Option<&Query>,
    notice: Option<String>,
    outcome: Option<Outcome>,
) -> Result<KeysPage, PortalError> {
    let (shown, already) = match outcome {
        Some(Outcome::Shown(shown)) => (Some(shown), None),
        Some(Outcome::Already(already)) => (None, Some(already)),
        None => (None, None),
    };
    let status = query
        .and_then(|q| param(q, "status"))
        .and_then(KeyStatus::parse)
        .map(KeyStatus::as_str)
        .unwrap_or("");
    let key_type = query
        .and_then(|q| param(q, "type"))
        .and_then(KeyType::parse)
        .map(KeyType::as_str)
        .unwrap_or("");
    let cursor = query
        .and_then(|q| param(q, "cursor"))
        .and_then(|c| manage::key_id(c).ok());
    let filter = KeyFilter {
        status: KeyStatus::parse(status),
        key_type: KeyType::parse(key_type),
        before_id: cursor,
        limit: PAGE_SIZE,
    };
    let now = clock::now();
    let (rows, next) = manage::list_keys(state, &session.caller(), filter, now).await?;
    Ok(KeysPage {
        layout: Layout::new(session, Section::Keys),
        keys: rows.iter().map(|r| KeyView::new(r, now)).collect(),
        filtered: !status.is_empty() || !key_type.is_empty(),
        next_page: next.map(|c| list_url(status, key_type, Some(&c.to_string()))),
        first_page: cursor.map(|_| list_url(status, key_type, None)),
        return_to: list_url(status, key_type, None),
        status_filter: status.to_owned(),
        type_filter: key_type.to_owned(),
        notice,
        shown,
        already,
        nonce: form::nonce()?,
    })
}

pub async fn list(state: web::Data<AppState>, session: Session, query: Query) -> Result<HttpResponse, PortalError> {
    page(&keys_page(&state, &session, Some(&query), notice(&query), None).await?)
}

fn today() -> String {
    clock::now().format("%Y-%m-%d").to_string()
}

pub async fn new_form(session: Session) -> Result<HttpResponse, PortalError> {
    page(&NewKeyPage {
        layout: Layout::new(&session, Section::Keys),
        nonce: form::nonce()?,
        scopes: views::scope_options(&[]),
        form: KeyForm::default(),
        errors: Errors::default(),
        today: today(),
    })
}

/// An expiration date from the form: the key works through that day (UTC).
fn parse_expiry(text: &str, errors: &mut Errors) -> Option<DateTime<Utc>> {
    if text.trim().is_empty() {
        return None;
    }
    match NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        Ok(date) => date.and_hms_opt(23, 59, 59).map(|t| t.and_utc()),
        Err(_) => {
            errors.add("expires_on", "must be a date such as 2027-01-31");
            None
        }
    }
}

/// The command's field names, as the key forms name them.
const KEY_FIELDS: [(&str, &str); 1] = [("expires_at", "expires_on")];

pub async fn create(
    state: web::Data<AppState>,
    session: Session,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PortalError> {
    let posted = form::read(&req, payload, &state, &session).await?;
    let typed = KeyForm {
        name: posted.text("name"),
        key_type: posted.text("type"),
        scopes: posted.all("scopes"),
        expires_on: posted.text("expires_on"),
        allowed_ips: posted.text("allowed_ips"),
    };
    let caller = session.caller();
    let idempotent = posted.idempotent(&req, caller.org_id())?;
    // A refused form changed nothing: sent again as corrected, it runs anew
    // under the same nonce. (Its nonce stays unless it was used with other
    // values: then the form gets a new one.)
    let mut nonce = posted.text(form::NONCE);
    let mut errors = Errors::default();
    let expires_at = parse_expiry(&typed.expires_on, &mut errors);
    let outcome = if errors.is_empty() {
        let new = NewKey {
            name: typed.name.clone(),
            key_type: typed.key_type.clone(),
            scopes: (!typed.scopes.is_empty()).then(|| typed.scopes.clone()),
            expires_at,
            allowed_ips: Some(typed.allowed_ips_list()),
        };
        match manage::create_key(&state, &caller, new, Some(&idempotent)).await {
            Ok(Done::Ran(created)) => Some(created),
            Ok(Done::Replayed(recorded)) => {
                let outcome = already(&recorded, "This API key was already created", "it created the key")?;
                return page(&keys_page(&state, &session, None, None, Some(outcome)).await?);
            }
            Err(e) if idempotency::is_mismatch(&e) => {
                errors.add(
                    "form",
                    "This form was already sent with other values, and a key was created then (see the list of \
                     keys). Check the fields and choose Create again to create another key.",
                );
                nonce = form::nonce()?;
                None
            }
            Err(ApiError::Validation(details)) => {
                errors = Errors::from_details(&details, &KEY_FIELDS);
                None
            }
            Err(other) => return Err(other.into()),
        }
    } else {
        None
    };
    let Some((row, secret)) = outcome else {
        let refused = NewKeyPage {
            layout: Layout::new(&session, Section::Keys),
            nonce,
            scopes: views::scope_options(&typed.scopes),
            form: typed,
            errors,
            today: today(),
        };
        return Ok(html(StatusCode::UNPROCESSABLE_ENTITY, &refused));
    };
    // The secret goes into this answer and nowhere else: no redirect, no
    // URL, no log line; the answer is never stored (Cache-Control: no-store).
    let shown = Shown {
        title: "API key created".into(),
        key_name: row.name.clone(),
        key_id: row.id.to_string(),
        secret: secret.expose().to_owned(),
        grace_note: None,
    };
    page(&keys_page(&state, &session, None, None, Some(Outcome::Shown(shown))).await?)
}

async fn own_key(state: &AppState, session: &Session, id: &str) -> Result<KeyRow, PortalError> {
    Ok(manage::get_key(state, &session.caller(), manage::key_id(id)?).await?)
}

fn key_form(row: &KeyRow) -> KeyForm {
    KeyForm {
        name: row.name.clone(),
        key_type: row.key_type.as_str().to_owned(),
        scopes: views::scope_texts(&row.scopes),
        expires_on: row
            .expires_at
            .map(|at| at.format("%Y-%m-%d").to_string())
            .unwrap_or_default(),
        allowed_ips: row.allowed_ips.to_strings().join("\n"),
    }
}

pub async fn edit_form(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
) -> Result<HttpResponse, PortalError> {
    let row = own_key(&state, &session, &id).await?;
    page(&EditKeyPage {
        layout: Layout::new(&session, Section::Keys),
        form: key_form(&row),
        scopes: views::scope_options(&views::scope_texts(&row.scopes)),
        key: KeyView::new(&row, clock::now()),
        errors: Errors::default(),
        today: today(),
    })
}

pub async fn edit(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PortalError> {
    let posted = form::read(&req, payload, &state, &session).await?;
    let row = own_key(&state, &session, &id).await?;
    let typed = KeyForm {
        name: posted.text("name"),
        key_type: row.key_type.as_str().to_owned(),
        scopes: posted.all("scopes"),
        expires_on: posted.text("expires_on"),
        allowed_ips: posted.text("allowed_ips"),
    };
    let mut errors = Errors::default();
    // The same day as before keeps the exact time set before (perhaps over the API).
    let expires_at = if typed.expires_on == key_form(&row).expires_on {
        row.expires_at
    } else {
        parse_expiry(&typed.expires_on, &mut errors)
    };
    if errors.is_empty() {
        let update = UpdateKeyRequest {
            name: Some(typed.name.clone()),
            scopes: Some(typed.scopes.clone()),
            expires_at: Some(expires_at),
            // Emptied: no allowlist any more.
            allowed_ips: Some(typed.allowed_ips_list()),
        };
        let id = manage::key_id(&id)?;
        match manage::update_key(&state, &session.caller(), id, update).await {
            Ok(_) => return Ok(see_other(&with_done(&format!("/portal/keys/{id}"), "saved"))),
            Err(ApiError::Validation(details)) => errors = Errors::from_details(&details, &KEY_FIELDS),
            Err(other) => return Err(other.into()),
        }
    }
    let refused = EditKeyPage {
        layout: Layout::new(&session, Section::Keys),
        scopes: views::scope_options(&typed.scopes),
        form: typed,
        key: KeyView::new(&row, clock::now()),
        errors,
        today: today(),
    };
    Ok(html(StatusCode::UNPROCESSABLE_ENTITY, &refused))
}

/// The actions of one key on a page of their own (the Actions button
/// without JavaScript).
pub async fn actions(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
) -> Result<HttpResponse, PortalError> {
    let row = own_key(&state, &session, &id).await?;
    page(&ActionsPage {
        layout: Layout::new(&session, Section::Keys),
        return_to: format!("/portal/keys/{}", row.id),
        key: KeyView::new(&row, clock::now()),
    })
}

fn regenerate_page(session: &Session, row: &KeyRow, error: &str) -> Result<RegeneratePage, PortalError> {
    Ok(RegeneratePage {
        layout: Layout::new(session, Section::Keys),
        nonce: form::nonce()?,
        key: KeyView::new(row, clock::now()),
        error: error.to_owned(),
    })
}

pub async fn regenerate_form(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
) -> Result<HttpResponse, PortalError> {
    let row = own_key(&state, &session, &id).await?;
    page(&regenerate_page(&session, &row, "")?)
}

pub async fn regenerate(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PortalError> {
    let posted = form::read(&req, payload, &state, &session).await?;
    let grace = posted.get("grace").unwrap_or("none");
    let Some(&(_, grace_label, seconds)) = views::GRACE_PERIODS.iter().find(|(value, ..)| *value == grace) else {
        let row = own_key(&state, &session, &id).await?;
        let refused = regenerate_page(
            &session,
            &row,
            "Choose a grace period: none, 1 hour, 24 hours or 7 days.",
        )?;
        return Ok(html(StatusCode::UNPROCESSABLE_ENTITY, &refused));
    };
    let caller = session.caller();
    let idempotent = posted.idempotent(&req, caller.org_id())?;
    let regenerated =
        match manage::regenerate_key(&state, &caller, manage::key_id(&id)?, seconds, Some(&idempotent)).await {
            Ok(Done::Ran(regenerated)) => regenerated,
            Ok(Done::Replayed(recorded)) => {
                let outcome = already(&recorded, "This key was already regenerated", "it gave a new secret to")?;
                return page(&keys_page(&state, &session, None, None, Some(outcome)).await?);
            }
            // The same form sent with another grace period: the key was
            // regenerated the first time; regenerating again is a new form.
            Err(e) if idempotency::is_mismatch(&e) => {
                let row = own_key(&state, &session, &id).await?;
                let refused = regenerate_page(
                    &session,
                    &row,
                    "This form was already sent with another grace period, and the key was regenerated then. \
                     To give it yet another secret, choose the grace period and Regenerate again.",
                )?;
                return Ok(html(StatusCode::UNPROCESSABLE_ENTITY, &refused));
            }
            Err(other) => return Err(other.into()),
        };
    // The time the command recorded, not the time of this page.
    let grace_note = match regenerated.previous_valid_until {
        // A grace period asked for and not given: the secret was reported leaked.
        None if seconds > 0 => "The previous secret stopped working at once: it was reported leaked, so it gets no \
                                grace period."
            .to_owned(),
        None => "The previous secret stopped working.".to_owned(),
        Some(until) => format!(
            "The previous secret keeps working for {grace_label}, until {}.",
            Stamp::new(until).date_time
        ),
    };
    let row = regenerated.key;
    let shown = Shown {
        title: format!("New secret for {}", row.name),
        key_name: row.name.clone(),
        key_id: row.id.to_string(),
        secret: regenerated.secret.expose().to_owned(),
        grace_note: Some(grace_note),
    };
    page(&keys_page(&state, &session, None, None, Some(Outcome::Shown(shown))).await?)
}

pub async fn deactivate(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PortalError> {
    switch(&state, &session, &id, &req, payload, false).await
}

pub async fn activate(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PortalError> {
    switch(&state, &session, &id, &req, payload, true).await
}

/// Activates or deactivates the key, then goes back where the form came from.
async fn switch(
    state: &AppState,
    session: &Session,
    id: &str,
    req: &HttpRequest,
    payload: web::Payload,
    on: bool,
) -> Result<HttpResponse, PortalError> {
    let posted = form::read(req, payload, state, session).await?;
    let (caller, id) = (session.caller(), manage::key_id(id)?);
    let done = if on {
        manage::activate_key(state, &caller, id).await?;
        "activated"
    } else {
        manage::deactivate_key(state, &caller, id).await?;
        "deactivated"
    };
    Ok(see_other(&with_done(&form::return_path(&posted, "/portal/keys"), done)))
}

fn delete_page(session: &Session, row: &KeyRow, typed: String, error: &str) -> DeletePage {
    DeletePage {
        layout: Layout::new(session, Section::Keys),
        key: KeyView::new(row, clock::now()),
        typed,
        error: error.to_owned(),
    }
}

pub async fn delete_form(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
) -> Result<HttpResponse, PortalError> {
    let row = own_key(&state, &session, &id).await?;
    page(&delete_page(&session, &row, String::new(), ""))
}

/// Deletes the key once its name was typed exactly.
pub async fn delete(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PortalError> {
    let posted = form::read(&req, payload, &state, &session).await?;
    let row = own_key(&state, &session, &id).await?;
    let typed = posted.text("confirm_name");
    if typed != row.name {
        let refused = delete_page(
            &session,
            &row,
            typed,
            "The name typed does not match: type the key's name exactly as shown to delete it.",
        );
        return Ok(html(StatusCode::UNPROCESSABLE_ENTITY, &refused));
    }
    manage::delete_key(&state, &session.caller(), manage::key_id(&id)?).await?;
    Ok(see_other("/portal/keys?done=deleted"))
}

/// The periods the key page shows: (value, label, length, bucket size).
const PERIODS: [(&str, &str, i64, Granularity); 3] = [
    ("24h", "24 hours", 24, Granularity::Hour),
    ("7d", "7 days", 24 * 7, Granularity::Hour),
    ("30d", "30 days", 24 * 30, Granularity::Day),
];

/// The newest audit events the key page lists.
const AUDIT_ROWS: i64 = 50;

pub async fn detail(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
    query: Query,
) -> Result<HttpResponse, PortalError> {
    let id = manage::key_id(&id)?;
    let caller = session.caller();
    let chosen = param(&query, "period").unwrap_or("24h");
    let &(period, period_label, hours, granularity) = PERIODS
        .iter()
        .find(|(value, ..)| *value == chosen)
        .unwrap_or(&PERIODS[0]);
    let now = clock::now();
    let from = now - Duration::hours(hours);
    let usage = manage::key_usage(&state, &caller, id, from, now, granularity).await?;
    let events = manage::recent_key_events(&state, &caller, id, AUDIT_ROWS).await?;
    // An admin key acts under its id (the events' actor).
    let mut acting_keys: Vec<KeyId> = events.iter().filter_map(|e| e.actor.parse().ok()).collect();
    acting_keys.sort();
    acting_keys.dedup();
    let key_names: HashMap<String, String> = read_model::key_names(&state.pool, caller.org_id(), &acting_keys)
        .await?
        .into_iter()
        .map(|(id, name)| (id.to_string(), name))
        .collect();
    let audit = events.iter().map(|e| audit_row(e, &key_names)).collect();
    let leak = match usage.key.leaked_at {
        Some(_) => leak_notice(&state, &usage.key).await?,
        None => None,
    };
    let key = KeyView::new(&usage.key, now);
    let stats = vec![
        Stat {
            label: "Total requests",
            value: views::grouped(usage.total_requests),
            note: format!(
                "{} successful · {} failed",
                views::grouped(usage.successful),
                views::grouped(usage.failed)
            ),
        },
        Stat {
            label: "Success rate",
            value: views::percent(usage.success_rate),
            note: String::new(),
        },
        Stat {
            label: "Error rate",
            value: views::percent(usage.error_rate),
            note: if usage.rate_limited > 0 {
                format!("{} rate limited", views::grouped(usage.rate_limited))
            } else {
                String::new()
            },
        },
        Stat {
            label: "Last used",
            value: key.last_used.as_ref().map_or("Never".into(), |s| s.date_time.clone()),
            note: String::new(),
        },
    ];
    page(&KeyPage {
        layout: Layout::new(&session, Section::Keys),
        periods: PERIODS
            .iter()
            .map(|&(value, label, ..)| Period {
                value,
                label,
                current: value == period,
            })
            .collect(),
        period_label,
        stats,
        chart: chart::usage_charts(&usage.series, granularity, period_label),
        audit,
        notice: notice(&query),
        return_to: format!("/portal/keys/{id}"),
        leak,
        key,
        nonce: form::nonce()?,
    })
}

/// What the key's newest `key.leaked` event says, for the notice on its page.
async fn leak_notice(state: &AppState, key: &KeyRow) -> Result<Option<LeakNotice>, PortalError> {
    let stream = keyledger_events::domain::key::stream_id(key.id);
    let Some(event) = keyledger_events::log::newest_of_type(&state.pool, &stream, "key.leaked").await? else {
        return Ok(None);
    };
    let text = |field: &str| event.data[field].as_str().unwrap_or_default().to_owned();
    let url = text("url");
    Ok(Some(LeakNotice {
        when: Stamp::new(event.occurred_at),
        linkable: url.starts_with("https://") || url.starts_with("http://"),
        url,
        source: text("source"),
        deactivated: text("action") == "deactivate",
    }))
}

/// Who caused an event, in words; `key_names` names the organization's own
/// keys (another organization's key id is never looked up).
fn actor_label(actor: &str, key_names: &HashMap<String, String>) -> String {
    match actor {
        "portal" => "Portal user".into(),
        "cli" => "Operator (command line)".into(),
        a if a.starts_with("portal:") => format!("{} (portal)", &a["portal:".len()..]),
        a if a.starts_with("system:") => format!("keyledger ({})", &a["system:".len()..]),
        crate::leaks::ACTOR => "Secret scanner report".into(),
        a if a.starts_with("key_") => match key_names.get(a) {
            Some(name) => format!("API key “{name}”"),
            None => format!("API key {a}"),
        },
        a => a.to_owned(),
    }
}

fn time_text(value: &Value) -> Option<String> {
    let at = DateTime::parse_from_rfc3339(value.as_str()?).ok()?;
    Some(Stamp::new(at.with_timezone(&Utc)).date_time)
}

fn scopes_text(value: &Value) -> String {
    value
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

/// One audit event in words: what happened and the details that matter.
fn audit_row(event: &StoredEvent, key_names: &HashMap<String, String>) -> AuditRow {
    let data = &event.data;
    let (what, detail) = match event.event_type.as_str() {
        "key.created" => (
            "Created",
            format!(
                "{} key named “{}” with {}",
                views::type_label(data["key_type"].as_str().unwrap_or("")),
                data["name"].as_str().unwrap_or(""),
                scopes_text(&data["scopes"])
            ),
        ),
        "key.updated" => {
            let mut changes = Vec::new();
            if let Some(name) = data["name"].as_str() {
                changes.push(format!("name → “{name}”"));
            }
            if data.get("scopes").is_some() {
                changes.push(format!("permissions → {}", scopes_text(&data["scopes"])));
            }
            match data.get("expires_at") {
                Some(Value::Null) => changes.push("expiration removed".into()),
                Some(at) => changes.push(format!("expires → {}", time_text(at).unwrap_or_default())),
                None => {}
            }
            match data.get("allowed_ips").and_then(Value::as_array) {
                Some(list) if list.is_empty() => changes.push("IP allowlist removed".into()),
                Some(_) => changes.push(format!("allowed IP addresses → {}", scopes_text(&data["allowed_ips"]))),
                None => {}
            }
            ("Edited", changes.join("; "))
        }
        "key.regenerated" => (
            "Regenerated",
            match time_text(&data["previous_valid_until"]) {
                Some(until) => format!("previous secret worked until {until}"),
                None => "previous secret stopped at once".into(),
            },
        ),
        "key.deactivated" => ("Deactivated", String::new()),
        "key.activated" => ("Activated", String::new()),
        "key.expired" => ("Expired", String::new()),
        "key.deleted" => ("Deleted", String::new()),
        "key.rotation_due" => ("Rotation reminder sent", String::new()),
        "key.leaked" => (
            "Reported leaked",
            format!(
                "{}found at {}{}",
                if data["secret"] == "previous" {
                    "previous secret "
                } else {
                    ""
                },
                match data["url"].as_str() {
                    Some(url) if !url.is_empty() => url,
                    _ => "an unnamed place",
                },
                match data["source"].as_str() {
                    Some(source) if !source.is_empty() => format!(" ({source})"),
                    _ => String::new(),
                }
            ),
        ),
        other => (other, String::new()),
    };
    AuditRow {
        what: what.to_owned(),
        detail,
        when: Stamp::new(event.occurred_at),
        who: actor_label(&event.actor, key_names),
    }
}
