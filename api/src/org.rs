//! The caller's organization (`/v1/org`): read it, change its alert settings.

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use keyledger_events::domain::{
    org::{self, ChangeSettings},
    Org, OrgCommand, OrgId,
};
use keyledger_events::handler;
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
    handler::execute::<Org>(
        &state.pool,
        &org::stream_id(id),
        OrgCommand::ChangeSettings(change),
        &meta,
        |_| Ok(()),
    )
    .await?;
    get(state, caller).await
}
