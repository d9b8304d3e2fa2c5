//! `GET /v1/auth`: forward authentication for reverse proxies. The key comes
//! from `Authorization`; the original request from `X-Original-Method` /
//! `X-Original-URI` (nginx `auth_request`), `X-Forwarded-Method` /
//! `X-Forwarded-Uri` (Traefik ForwardAuth), or — for Envoy's ext_authz HTTP
//! service, which forwards the original method and path below a prefix —
//! from the request itself at `/v1/auth/<original path>`.
//!
//! 204 with the key's id, organization and environment and the rate-limit
//! headers when the key may make that request; otherwise the API's 401,
//! 403 or 429 (with `X-Keyledger-Error` naming the code, for proxies that
//! pass headers but not bodies).

use actix_web::{web, HttpRequest, HttpResponse};

use crate::{access, auth, error::ApiError, routes, AppState};

fn original(req: &HttpRequest, tail: Option<&str>) -> Result<(String, String), ApiError> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let method = header("x-original-method").or_else(|| header("x-forwarded-method"));
    let uri = header("x-original-uri").or_else(|| header("x-forwarded-uri"));
    let (method, uri) = match (method, uri, tail) {
        (Some(method), Some(uri), _) => (method, uri),
        (_, None, Some(tail)) => (req.method().to_string(), format!("/{tail}")),
        // Guessing the method would fail open (GET needs the weakest scopes).
        _ => {
            return Err(ApiError::BadRequest(
                "Forward-auth needs the original request: send X-Original-Method and X-Original-URI, \
                 or X-Forwarded-Method and X-Forwarded-Uri."
                    .into(),
            ))
        }
    };
    if !routes::is_canonical(&uri) {
        return Err(ApiError::BadRequest(
            "The original path has dot segments, empty segments or encoded separators; it could reach \
             another route than it names. Send the normalized path."
                .into(),
        ));
    }
    Ok((method, uri))
}

async fn authorize(state: &AppState, req: &HttpRequest, tail: Option<&str>) -> Result<HttpResponse, ApiError> {
    let (method, uri) = original(req, tail)?;
    let needed = state.routes.required_scope(&method, &uri);
    let text = auth::bearer_key(req)?;
    let client = access::client_address(req, &state.settings.trusted_proxies);
    let checked = access::check(state, req, text, client, Some(state.environment), &[needed])
        .await?
        .ok_or(ApiError::InvalidApiKey)?;
    let key = checked.into_result()?;
    Ok(HttpResponse::NoContent()
        .insert_header(("x-keyledger-key-id", key.row.id.as_str()))
        .insert_header(("x-keyledger-org-id", key.row.org_id.as_str()))
        .insert_header(("x-keyledger-environment", key.row.environment.as_str()))
        .finish())
}

pub async fn auth(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req, None).await
}

/// Envoy ext_authz: `/v1/auth/<original path>` with the original method.
pub async fn auth_path(
    state: web::Data<AppState>,
    req: HttpRequest,
    tail: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    authorize(&state, &req, Some(&tail)).await
}
