//! The portal's stylesheet, script and icon, compiled into the binary: the
//! portal needs no CDN and no build step, and works in an air-gapped network.

use actix_web::{http::header, web, HttpResponse};

use super::PortalError;

/// (name, content type, content)
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "portal.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/portal.css"),
    ),
    (
        "portal.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/portal.js"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("../../assets/icon.svg")),
];

pub async fn asset(name: web::Path<String>) -> Result<HttpResponse, PortalError> {
    let (_, content_type, body) = ASSETS
        .iter()
        .find(|(n, ..)| *n == name.as_str())
        .ok_or(PortalError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type(*content_type)
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(*body))
}
