//! The portal's stylesheet, script and icon, compiled into the binary: the
//! portal needs no CDN and no build step, and works in an air-gapped network.
//!
//! Each is served under a name that carries a hash of its content
//! (`portal.3f9a0c1b2d4e.css`), so browsers may keep it for a year without
//! asking again (`immutable`), and a new release is never shown with an old
//! stylesheet: its pages name other files.

use std::sync::LazyLock;

use actix_web::{http::header, web, HttpResponse};

use super::PortalError;

/// Where the assets are served.
const PREFIX: &str = "/portal/assets/";

/// One asset as served.
struct Asset {
    /// Its name in the sources (`portal.css`).
    name: &'static str,
    /// Its path with the content hash (`/portal/assets/portal.<hash>.css`).
    path: String,
    content_type: &'static str,
    body: String,
}

impl Asset {
    fn new(name: &'static str, content_type: &'static str, body: String) -> Asset {
        let hash = blake3::hash(body.as_bytes()).to_hex();
        let (stem, extension) = name.rsplit_once('.').unwrap_or((name, ""));
        Asset {
            name,
            path: format!("{PREFIX}{stem}.{}.{extension}", &hash[..12]),
            content_type,
            body,
        }
    }
}

static ASSETS: LazyLock<[Asset; 3]> = LazyLock::new(|| {
    let icon = Asset::new(
        "icon.svg",
        "image/svg+xml",
        include_str!("../../assets/icon.svg").to_owned(),
    );
    // The stylesheet names the icon: by its hashed path, before its own hash is taken.
    let css = include_str!("../../assets/portal.css").replace(&format!("{PREFIX}icon.svg"), &icon.path);
    let css = Asset::new("portal.css", "text/css; charset=utf-8", css);
    let js = Asset::new(
        "portal.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/portal.js").to_owned(),
    );
    [css, js, icon]
});

/// The path an asset is served at, for pages to link (`portal.css` →
/// `/portal/assets/portal.<hash>.css`).
pub fn url(name: &str) -> &'static str {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .map_or("/portal/assets/missing", |a| a.path.as_str())
}

/// `GET /portal/assets/{name}`: an asset by its hashed name, cached for a year.
pub async fn asset(name: web::Path<String>) -> Result<HttpResponse, PortalError> {
    let asset = ASSETS
        .iter()
        .find(|a| a.path.strip_prefix(PREFIX) == Some(name.as_str()))
        .ok_or(PortalError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type(asset.content_type)
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .body(asset.body.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_named_by_their_content() {
        for asset in ASSETS.iter() {
            let hash = blake3::hash(asset.body.as_bytes()).to_hex();
            assert!(asset.path.contains(&hash[..12]), "{}", asset.path);
            assert_eq!(url(asset.name), asset.path);
        }
        let css = &ASSETS[0].body;
        assert!(
            css.contains(url("icon.svg")),
            "the stylesheet names the icon by its hashed path"
        );
        assert!(!css.contains("/portal/assets/icon.svg"));
    }
}
