//! The portal's Webhooks pages: the endpoints (add with the signing secret
//! shown once, edit, disable/enable, delete after a confirmation), each
//! endpoint's delivery log, and replay from a time. Each change is the JSON
//! API's operation (`webhook_endpoints.rs`); a refused one shows its reasons
//! beside the fields.

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use askama::Template;
use chrono::NaiveDateTime;
use keyledger_events::domain::webhook::{ALL_EVENTS, EVENT_TYPES};

use super::views::{Errors, Layout, Section, Stamp};
use super::{form, html, page, see_other, PortalError, Session};
use crate::clock;
use crate::error::ApiError;
use crate::webhook_endpoints::{self as ops, endpoint_id, Delivery, Endpoint, EndpointChange, NewEndpoint};
use crate::AppState;

type Query = web::Query<Vec<(String, String)>>;

/// Deliveries shown on an endpoint's page.
const LOG_SIZE: i64 = 50;

/// An endpoint as the pages show it.
pub struct EndpointView {
    pub id: String,
    pub url: String,
    pub description: String,
    /// "All events", or the types.
    pub events: Vec<String>,
    pub disabled: bool,
    pub status_label: String,
    pub created: Stamp,
    pub failing_since: Option<Stamp>,
}

impl EndpointView {
    fn new(endpoint: &Endpoint) -> EndpointView {
        let status_label = match (endpoint.disabled, endpoint.disabled_reason.as_deref()) {
            (false, _) => "Enabled",
            (true, Some("failing")) => "Disabled: failing for 5 days",
            (true, _) => "Disabled",
        };
        EndpointView {
            id: endpoint.id.clone(),
            url: endpoint.url.clone(),
            description: endpoint.description.clone(),
            events: if endpoint.events.iter().any(|e| e == ALL_EVENTS) {
                vec!["All events".into()]
            } else {
                endpoint.events.clone()
            },
            disabled: endpoint.disabled,
            status_label: status_label.into(),
            created: Stamp::new(endpoint.created_at),
            failing_since: endpoint.failing_since.map(Stamp::new),
        }
    }
}

/// A delivery as the log shows it.
pub struct DeliveryView {
    pub event_type: String,
    pub event_id: String,
    pub status: String,
    pub badge: &'static str,
    pub replay: bool,
    pub attempts: i32,
    pub status_code: String,
    pub error: String,
    pub when: Stamp,
    pub next_retry: Option<Stamp>,
}

impl DeliveryView {
    fn new(delivery: &Delivery) -> DeliveryView {
        let (status, badge) = match delivery.status.as_str() {
            "succeeded" => ("Delivered", "active"),
            "failed" => ("Failed", "expired"),
            _ if delivery.attempts == 0 => ("Queued", "pending"),
            _ => ("Retrying", "pending"),
        };
        DeliveryView {
            event_type: delivery.event_type.clone(),
            event_id: delivery.event_id.to_string(),
            status: status.into(),
            badge,
            replay: delivery.replay,
            attempts: delivery.attempts,
            status_code: delivery.last_status_code.map(|c| c.to_string()).unwrap_or_default(),
            error: delivery.last_error.clone().unwrap_or_default(),
            when: Stamp::new(delivery.last_attempt_at.unwrap_or(delivery.created_at)),
            next_retry: delivery
                .next_retry_at()
                .filter(|_| delivery.attempts > 0)
                .map(Stamp::new),
        }
    }
}

/// One checkbox of the events fieldset.
pub struct EventOption {
    pub name: &'static str,
    pub checked: bool,
}

/// What the endpoint form holds, as typed.
#[derive(Default)]
pub struct EndpointForm {
    pub url: String,
    pub description: String,
    pub events: Vec<String>,
}

impl EndpointForm {
    fn options(&self) -> Vec<EventOption> {
        std::iter::once(ALL_EVENTS)
            .chain(EVENT_TYPES)
            .map(|name| EventOption {
                name,
                checked: self.events.iter().any(|e| e == name),
            })
            .collect()
    }
}

/// The signing secret, shown once.
pub struct ShownSecret {
    pub endpoint_id: String,
    pub url: String,
    pub secret: String,
}

#[derive(Template)]
#[template(path = "portal/webhooks.html")]
pub struct WebhooksPage {
    pub layout: Layout,
    pub endpoints: Vec<EndpointView>,
    pub notice: Option<String>,
    pub shown: Option<ShownSecret>,
}

#[derive(Template)]
#[template(path = "portal/webhook_form.html")]
pub struct EndpointFormPage {
    pub layout: Layout,
    /// `None`: a new endpoint.
    pub endpoint: Option<EndpointView>,
    pub form: EndpointForm,
    pub options: Vec<EventOption>,
    pub errors: Errors,
}

#[derive(Template)]
#[template(path = "portal/webhook.html")]
pub struct EndpointPage {
    pub layout: Layout,
    pub endpoint: EndpointView,
    pub deliveries: Vec<DeliveryView>,
    pub notice: Option<String>,
    pub replay_since: String,
    pub errors: Errors,
}

#[derive(Template)]
#[template(path = "portal/webhook_delete.html")]
pub struct DeleteEndpointPage {
    pub layout: Layout,
    pub endpoint: EndpointView,
}

fn param<'q>(query: &'q Query, name: &str) -> Option<&'q str> {
    query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// The message for `?done=…` after a change (never user text from the URL).
fn notice(query: &Query) -> Option<String> {
    let text = match param(query, "done")? {
        "saved" => "Changes saved.".to_owned(),
        "disabled" => "Endpoint disabled: no events are sent to it until it is enabled again.".to_owned(),
        "enabled" => "Endpoint enabled: events are sent to it again.".to_owned(),
        "deleted" => "Endpoint deleted.".to_owned(),
        "replayed" => {
            let n: u64 = param(query, "n").and_then(|n| n.parse().ok()).unwrap_or(0);
            format!("Replay queued: {n} event(s) will be delivered again, in order.")
        }
        _ => return None,
    };
    Some(text)
}

async fn list_page(
    state: &AppState,
    session: &Session,
    notice: Option<String>,
    shown: Option<ShownSecret>,
) -> Result<WebhooksPage, PortalError> {
    let endpoints = ops::list(state, &session.caller()).await?;
    Ok(WebhooksPage {
        layout: Layout::new(session, Section::Webhooks),
        endpoints: endpoints.iter().map(EndpointView::new).collect(),
        notice,
        shown,
    })
}

pub async fn list(state: web::Data<AppState>, session: Session, query: Query) -> Result<HttpResponse, PortalError> {
    page(&list_page(&state, &session, notice(&query), None).await?)
}

pub async fn new_form(session: Session) -> Result<HttpResponse, PortalError> {
    let form = EndpointForm {
        events: vec![ALL_EVENTS.into()],
        ..EndpointForm::default()
    };
    page(&EndpointFormPage {
        layout: Layout::new(&session, Section::Webhooks),
        endpoint: None,
        options: form.options(),
        form,
        errors: Errors::default(),
    })
}

fn typed(posted: &form::Form) -> EndpointForm {
    EndpointForm {
        url: posted.text("url"),
        description: posted.text("description"),
        events: posted.all("events"),
    }
}

pub async fn create(
    state: web::Data<AppState>,
    session: Session,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PortalError> {
    let posted = form::read(&req, payload, &state, &session).await?;
    let typed = typed(&posted);
    let new = NewEndpoint {
        url: typed.url.clone(),
        events: Some(typed.events.clone()),
        description: Some(typed.description.clone()),
    };
    match ops::create(&state, &session.caller(), new).await {
        // The secret goes into this answer and nowhere else (no redirect, no
        // URL, no log line; Cache-Control: no-store).
        Ok((endpoint, secret)) => {
            let shown = ShownSecret {
                endpoint_id: endpoint.id.clone(),
                url: endpoint.url.clone(),
                secret,
            };
            page(&list_page(&state, &session, None, Some(shown)).await?)
        }
        Err(ApiError::Validation(details)) => {
            let refused = EndpointFormPage {
                layout: Layout::new(&session, Section::Webhooks),
                endpoint: None,
                options: typed.options(),
                form: typed,
                errors: Errors::from_details(&details, &[]),
            };
            Ok(html(StatusCode::UNPROCESSABLE_ENTITY, &refused))
        }
        Err(other) => Err(other.into()),
    }
}

async fn own(state: &AppState, session: &Session, id: &str) -> Result<Endpoint, PortalError> {
    Ok(ops::get(state, &session.caller(), endpoint_id(id)?).await?)
}

/// The replay field's default: an hour ago, as `datetime-local` (UTC).
fn an_hour_ago() -> String {
    (clock::now() - chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M")
        .to_string()
}

async fn endpoint_page(
    state: &AppState,
    session: &Session,
    endpoint: &Endpoint,
    notice: Option<String>,
    replay_since: String,
    errors: Errors,
) -> Result<EndpointPage, PortalError> {
    let id = endpoint_id(&endpoint.id)?;
    let (deliveries, _) = ops::deliveries(state, &session.caller(), id, LOG_SIZE, None).await?;
    Ok(EndpointPage {
        layout: Layout::new(session, Section::Webhooks),
        endpoint: EndpointView::new(endpoint),
        deliveries: deliveries.iter().map(DeliveryView::new).collect(),
        notice,
        replay_since,
        errors,
    })
}

pub async fn detail(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
    query: Query,
) -> Result<HttpResponse, PortalError> {
    let endpoint = own(&state, &session, &id).await?;
    page(
        &endpoint_page(
            &state,
            &session,
            &endpoint,
            notice(&query),
            an_hour_ago(),
            Errors::default(),
        )
        .await?,
    )
}

pub async fn edit_form(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
) -> Result<HttpResponse, PortalError> {
    let endpoint = own(&state, &session, &id).await?;
    let form = EndpointForm {
        url: endpoint.url.clone(),
        description: endpoint.description.clone(),
        events: endpoint.events.clone(),
    };
    page(&EndpointFormPage {
        layout: Layout::new(&session, Section::Webhooks),
        endpoint: Some(EndpointView::new(&endpoint)),
        options: form.options(),
        form,
        errors: Errors::default(),
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
    let endpoint = own(&state, &session, &id).await?;
    let typed = typed(&posted);
    let change = EndpointChange {
        url: Some(typed.url.clone()),
        events: Some(typed.events.clone()),
        description: Some(typed.description.clone()),
        disabled: None,
    };
    match ops::update(&state, &session.caller(), endpoint_id(&id)?, change).await {
        Ok(_) => Ok(see_other(&format!("/portal/webhooks/{}?done=saved", endpoint.id))),
        Err(ApiError::Validation(details)) => {
            let refused = EndpointFormPage {
                layout: Layout::new(&session, Section::Webhooks),
                endpoint: Some(EndpointView::new(&endpoint)),
                options: typed.options(),
                form: typed,
                errors: Errors::from_details(&details, &[]),
            };
            Ok(html(StatusCode::UNPROCESSABLE_ENTITY, &refused))
        }
        Err(other) => Err(other.into()),
    }
}

/// Disables or enables the endpoint (one handler: the path says which).
pub async fn toggle(
    state: web::Data<AppState>,
    session: Session,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PortalError> {
    form::read(&req, payload, &state, &session).await?;
    let (id, action) = path.into_inner();
    let disabled = match action.as_str() {
        "disable" => true,
        "enable" => false,
        _ => return Err(PortalError::NotFound),
    };
    let change = EndpointChange {
        disabled: Some(disabled),
        ..EndpointChange::default()
    };
    let endpoint = ops::update(&state, &session.caller(), endpoint_id(&id)?, change).await?;
    let done = if disabled { "disabled" } else { "enabled" };
    Ok(see_other(&format!("/portal/webhooks/{}?done={done}", endpoint.id)))
}

pub async fn delete_form(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
) -> Result<HttpResponse, PortalError> {
    let endpoint = own(&state, &session, &id).await?;
    page(&DeleteEndpointPage {
        layout: Layout::new(&session, Section::Webhooks),
        endpoint: EndpointView::new(&endpoint),
    })
}

pub async fn delete(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PortalError> {
    form::read(&req, payload, &state, &session).await?;
    ops::delete(&state, &session.caller(), endpoint_id(&id)?).await?;
    Ok(see_other("/portal/webhooks?done=deleted"))
}

pub async fn replay(
    state: web::Data<AppState>,
    session: Session,
    id: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, PortalError> {
    let posted = form::read(&req, payload, &state, &session).await?;
    let endpoint = own(&state, &session, &id).await?;
    let typed = posted.text("since");
    let mut errors = Errors::default();
    let since = NaiveDateTime::parse_from_str(typed.trim(), "%Y-%m-%dT%H:%M")
        .map(|t| t.and_utc())
        .map_err(|_| errors.add("since", "must be a date and time such as 2026-11-26T10:00 (UTC)"))
        .ok();
    let outcome = match since {
        Some(since) => ops::replay(&state, &session.caller(), endpoint_id(&id)?, since).await,
        None => Err(ApiError::Validation(Default::default())),
    };
    match outcome {
        Ok(n) => Ok(see_other(&format!(
            "/portal/webhooks/{}?done=replayed&n={n}",
            endpoint.id
        ))),
        Err(ApiError::Validation(details)) => {
            let mut errors = if errors.is_empty() {
                Errors::from_details(&details, &[])
            } else {
                errors
            };
            if errors.is_empty() {
                errors.add("since", "is not a time a replay can start from");
            }
            let refused = endpoint_page(&state, &session, &endpoint, None, typed, errors).await?;
            Ok(html(StatusCode::UNPROCESSABLE_ENTITY, &refused))
        }
        Err(other) => Err(other.into()),
    }
}
