//! The management API's caller: `Authorization: Bearer <key>` with a live
//! secret key holding the `admin` scope.

use actix_web::{http::header, web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use keyledger_events::domain::{Environment, OrgId, Scope};

use crate::{access, error::ApiError, AppState};

/// The `Authorization` header's key, or `missing_api_key`.
pub fn bearer_key(req: &HttpRequest) -> Result<&str, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::MissingApiKey)?;
    let (scheme, key) = value.trim().split_once(' ').ok_or(ApiError::MissingApiKey)?;
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || key.is_empty() {
        return Err(ApiError::MissingApiKey);
    }
    Ok(key)
}

pub fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal(std::io::Error::other("application state missing")))
}

/// An authenticated caller of the management API.
#[derive(Debug, Clone)]
pub struct Admin {
    pub key: keyledger_events::read_model::KeyRow,
}

impl Admin {
    pub fn org_id(&self) -> OrgId {
        self.key.org_id
    }

    /// The actor recorded on the events this caller causes.
    pub fn actor(&self) -> String {
        self.key.id.to_string()
    }

    /// This caller for the shared operations: its organization, acting as its key.
    pub fn caller(&self) -> crate::manage::Caller {
        crate::manage::Caller::new(self.org_id(), self.actor())
    }
}

async fn authenticate_admin(req: HttpRequest) -> Result<Admin, ApiError> {
    let state = state(&req)?;
    // Every management call needs the database: while it is known to be
    // down, answer at once instead of after a connection timeout.
    if state.database.is_down() {
        return Err(ApiError::Unavailable);
    }
    let text = bearer_key(&req)?;
    let client = access::client_address(&req, &state.settings)?;
    let guard = client.map_or(access::Guard::Nobody, access::Guard::Caller);
    let checked = access::check(
        state,
        &req,
        text,
        guard,
        client,
        Some(Environment::Live),
        &[Scope::Admin],
    )
    .await?
    .ok_or(ApiError::InvalidApiKey)?;
    // The key may have come from the cache while the lookup found the
    // database down.
    if state.database.is_down() {
        return Err(ApiError::Unavailable);
    }
    Ok(Admin {
        key: checked.into_result()?.row.clone(),
    })
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Admin, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        Box::pin(authenticate_admin(req.clone()))
    }
}
