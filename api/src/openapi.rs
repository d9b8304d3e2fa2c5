//! `GET /openapi.json`: the HTTP API described in OpenAPI 3.1. The document
//! is `api/openapi.json`, compiled in; a test checks that a route answers
//! every operation it lists.

use actix_web::HttpResponse;

pub const DOCUMENT: &str = include_str!("../openapi.json");

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(DOCUMENT)
}
