//! The caller's organization (`/v1/org`): read it, change its alert
//! settings. Setting `alert_emails` raises one confirmation email per
//! address that needs one (see `recipients.rs`), in the same transaction
//! as the events: both are stored, or neither.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use keyledger_events::domain::{
    confirmation::Confirmation,
    org::{self, AlertRecipientConfirmationRequested, ChangeSettings, CONFIRMATION_VALID_DAYS},
    Org, OrgCommand, OrgEvent, OrgId,
};
use keyledger_events::handler;
use keyledger_events::log::EventMeta;
use keyledger_events::read_model;
use keyledger_workers::{alerts, recipients::confirmation_alert};

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
        let outcome = decided.append(&mut tx).await?;
        let name = outcome.state.as_ref().map_or("", |org| org.name.as_str());
        for stored in &outcome.events {
            if let OrgEvent::AlertRecipientConfirmationRequested(request) =
                stored.decode().map_err(ApiError::internal)?
            {
                let alert = confirmation_email(&state, id, name, &request);
                alerts::raise(&mut tx, &alert, request.requested_at).await?;
            }
        }
        tx.commit().await?;
    }
    get(state, caller).await
}

/// The email asking `request.email` to confirm, with its link.
fn confirmation_email(
    state: &AppState,
    org_id: OrgId,
    org_name: &str,
    request: &AlertRecipientConfirmationRequested,
) -> alerts::NewAlert {
    let token = Confirmation {
        org_id,
        email: request.email.clone(),
        requested_at: request.requested_at,
    }
    .token(&state.hash_key);
    let link = format!(
        "{}{}?token={token}",
        state.settings.public_url,
        crate::recipients::CONFIRM_PATH
    );
    confirmation_alert(
        &org_id.to_string(),
        org_name,
        request.email.as_str(),
        request.requested_at,
        &link,
        CONFIRMATION_VALID_DAYS,
    )
}
