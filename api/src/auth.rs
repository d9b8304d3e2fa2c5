//! Authentication: `Authorization: Bearer <key>` → the caller's key.
//!
//! The key is parsed (prefix, length, alphabet, checksum) before anything is
//! looked up, so a malformed key costs no database access; then its keyed
//! hash is looked up. The clear-text key is dropped as soon as it is hashed.

use actix_web::{http::header, web, FromRequest, HttpRequest};
use chrono::Utc;
use futures_util::future::LocalBoxFuture;
use keyledger_events::domain::{scope::grants, Environment, PlainKey, Scope};
use keyledger_events::read_model::{self, KeyRow};

use crate::{error::ApiError, AppState};

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

/// The key row for a clear-text key, or `None` for a malformed or unknown
/// one (a malformed key never reaches the database).
pub async fn lookup(state: &AppState, text: &str) -> Result<Option<KeyRow>, ApiError> {
    let Ok((plain, _)) = PlainKey::parse(text) else {
        return Ok(None);
    };
    let hash = state.hash_key.hash(&plain);
    drop(plain);
    Ok(read_model::key_by_hash(&state.pool, &hash, Utc::now()).await?)
}

/// An authenticated caller of the management API: a live secret key with the
/// `admin` scope.
#[derive(Debug, Clone)]
pub struct Admin {
    pub key: KeyRow,
}

impl Admin {
    pub fn org_id(&self) -> &str {
        &self.key.org_id
    }

    /// The actor recorded on the events this caller causes.
    pub fn actor(&self) -> String {
        self.key.id.clone()
    }
}

async fn authenticate_admin(req: HttpRequest) -> Result<Admin, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal(std::io::Error::other("application state missing")))?;
    let key = lookup(state, bearer_key(&req)?).await?.ok_or(ApiError::InvalidApiKey)?;
    match key.status_at(Utc::now()) {
        "inactive" => return Err(ApiError::KeyInactive),
        "expired" => return Err(ApiError::KeyExpired),
        _ => {}
    }
    if key.environment != Environment::Live.as_str() {
        return Err(ApiError::EnvironmentMismatch { required: "live" });
    }
    let scopes: Vec<Scope> = key.scopes.iter().filter_map(|s| s.parse().ok()).collect();
    if !grants(&scopes, Scope::Admin) {
        return Err(ApiError::InsufficientScope(Scope::Admin));
    }
    Ok(Admin { key })
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Admin, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        Box::pin(authenticate_admin(req.clone()))
    }
}
