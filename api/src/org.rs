//! The caller's organization (`/v1/org`): read it, change its alert
//! settings. Setting `alert_emails` queues one confirmation email per
//! address that needs one (`keyledger_events::alert_outbox`), in the same
//! transaction as the events: both are stored, or neither.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use keyledger_events::alert_outbox;
use keyledger_events::domain::{
    org::{self, ChangeSettings},
    Org, OrgCommand, OrgEvent, OrgId,
};
use keyledger_events::handler::{self, HandlerError};
use keyledger_events::log::EventMeta;
use keyledger_events::read_model;

use crate::{auth::Admin, body, error::ApiError, middleware::current_request_id, AppState};
pub async fn get(state: web::Data<AppState>, caller: Admin) -> Result<HttpResponse, ApiError> {
    let org = read_model::org_by_id(&state.pool, caller.org_id())
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(org.to_json()))
}

pub async fn update(
    state: web::Data<AppState>,
    caller: Admin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mut fields = body::read_object(&req, payload).await?;
    let change = ChangeSettings {
        alert_emails: fields.string_list("alert_emails"),
        rotation_days: fields.integer("rotation_days"),
        alert_settings: fields.object("alert_settings"),
    };
    fields.finish()?;
    let id: OrgId = caller
        .org_id()
        .parse()
        .map_err(|_| ApiError::internal(std::io::Error::other("stored org id is malformed")))?;
    let meta = EventMeta {
        actor: caller.actor(),
        request_id: Some(current_request_id()),
        occurred_at: Utc::now(),
    };
    let decided = handler::decide::<Org>(
        &state.pool,
        &org::stream_id(id),
        OrgCommand::ChangeSettings(change),
        &meta,
        |_| Ok(()),
    )
    .await?;
    if !decided.is_empty() {
        let mut tx = state.pool.begin().await?;
        let outcome = decided.append(&mut tx).await.map_err(org_error)?;
        for stored in &outcome.events {
            if let OrgEvent::AlertRecipientConfirmationRequested(request) =
                stored.decode().map_err(ApiError::internal)?
            {
                alert_outbox::request_confirmation(&mut tx, id, &request.email, request.requested_at).await?;
            }
        }
        tx.commit().await?;
    }
    get(state, caller).await
}

/// A command's failure, with a concurrent change named as the
/// organization's (the shared mapping speaks of keys).
fn org_error(e: HandlerError) -> ApiError {
    match e {
        HandlerError::Concurrency => ApiError::Conflict(
            "The organization's settings were changed by another request at the same time; read them \
             again (GET /v1/org) and retry."
                .into(),
        ),
        other => other.into(),
    }
}
