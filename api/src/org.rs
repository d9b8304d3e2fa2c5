//! The caller's organization (`/v1/org`): read it, change its alert
//! settings and leak action (the operations are in `manage.rs`, shared with
//! the portal).

use actix_web::{web, HttpRequest, HttpResponse};
use keyledger_events::domain::org::ChangeSettingsRequest;

use crate::{auth::Admin, body, error::ApiError, manage, AppState};
use keyledger_events::representation;

pub async fn get(state: web::Data<AppState>, caller: Admin) -> Result<HttpResponse, ApiError> {
    let org = manage::org(&state, &caller.caller()).await?;
    Ok(HttpResponse::Ok().json(representation::org_object(&org)))
}

pub async fn update(
    state: web::Data<AppState>,
    caller: Admin,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let mut fields = body::read_object(&req, payload).await?;
    let change = ChangeSettingsRequest {
        alert_emails: fields.string_list("alert_emails"),
        rotation_days: fields.integer("rotation_days"),
        alert_settings: fields.object("alert_settings"),
        leak_action: fields.optional_string("leak_action"),
    };
    fields.finish()?;
    let org = manage::change_settings(&state, &caller.caller(), change).await?;
    Ok(HttpResponse::Ok().json(representation::org_object(&org)))
}
