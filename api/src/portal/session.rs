//! Signing in to the portal: single-use sign-in links, the sessions they
//! start, the session cookie and the CSRF token tied to each session.
//!
//! Tokens are 256 random bits; the database keeps only their blake3 hashes.
//! A link works once and for `portal_link_lifetime` (5 minutes); a session
//! lasts 12 hours or until Sign out deletes it. The CSRF token of a session
//! is derived from its token (blake3 key derivation), so it is tied to the
//! session, needs no storage, and does not reveal the session token.

use actix_web::{http::header, web, FromRequest, HttpRequest};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use futures_util::future::LocalBoxFuture;
use keyledger_events::domain::{org::EmailAddress, OrgId};
use sqlx::PgPool;

use super::PortalError;
use crate::{error::ApiError, manage::Caller, AppState};

/// The session cookie's name.
pub const COOKIE: &str = "keyledger_portal";
/// How long a session lasts after sign-in.
pub const SESSION_HOURS: i64 = 12;
const CSRF_CONTEXT: &str = "keyledger portal 2026-11-28 csrf token";

/// A fresh token: 256 bits from the OS CSPRNG, as 64 hex characters.
pub(super) fn new_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| ApiError::internal(std::io::Error::other(e.to_string())))?;
    Ok(hex(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the database keeps of a token.
fn token_hash(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

/// A minted sign-in link.
#[derive(Debug, Clone)]
pub struct SignInLink {
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// Mints a single-use sign-in link for `org_id`, for `user` (recorded as
/// the actor `portal:<user>` of everything the session changes).
pub async fn mint_link(
    pool: &PgPool,
    public_url: &str,
    org_id: OrgId,
    user: Option<&EmailAddress>,
    now: DateTime<Utc>,
    lifetime: std::time::Duration,
) -> Result<SignInLink, ApiError> {
    let token = new_token()?;
    let now = now.trunc_subsecs(0);
    let expires_at = now + Duration::from_std(lifetime).unwrap_or(Duration::minutes(5));
    // Old links and sessions are swept here, by the index on their expiry.
    sqlx::query("delete from portal_links where expires_at < $1")
        .bind(now - Duration::days(1))
        .execute(pool)
        .await?;
    sqlx::query("delete from portal_sessions where expires_at < $1")
        .bind(now)
        .execute(pool)
        .await?;
    sqlx::query(
        "insert into portal_links (token_hash, org_id, user_email, created_at, expires_at) values ($1, $2, $3, $4, $5)",
    )
    .bind(&token_hash(&token)[..])
    .bind(org_id)
    .bind(user.map(EmailAddress::as_str))
    .bind(now)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(SignInLink {
        url: format!("{}/portal/session/{token}", public_url.trim_end_matches('/')),
        expires_at,
    })
}

/// Follows a sign-in link: marks it used, ends the browser's `previous`
/// session (if it sent one) and starts a new session, in one transaction.
/// `None` when the link is unknown, used or expired (then nothing changes).
/// Of several requests racing with one link, one claims it.
pub async fn start_session(
    pool: &PgPool,
    link_token: &str,
    previous: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<String>, ApiError> {
    let mut tx = pool.begin().await?;
    let claimed: Option<(String, Option<String>)> = sqlx::query_as(
        "update portal_links set used_at = $2
         where token_hash = $1 and used_at is null and expires_at > $2
         returning org_id, user_email",
    )
    .bind(&token_hash(link_token)[..])
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((org_id, user)) = claimed else {
        return Ok(None);
    };
    if let Some(previous) = previous {
        sqlx::query("delete from portal_sessions where token_hash = $1")
            .bind(&token_hash(previous)[..])
            .execute(&mut *tx)
            .await?;
    }
    let token = new_token()?;
    sqlx::query(
        "insert into portal_sessions (token_hash, org_id, user_email, created_at, expires_at) values ($1, $2, $3, $4, $5)",
    )
    .bind(&token_hash(&token)[..])
    .bind(&org_id)
    .bind(user)
    .bind(now)
    .bind(now + Duration::hours(SESSION_HOURS))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(token))
}

/// Ends the session whose token this is (Sign out).
pub async fn end_session(pool: &PgPool, token: &str) -> Result<(), ApiError> {
    sqlx::query("delete from portal_sessions where token_hash = $1")
        .bind(&token_hash(token)[..])
        .execute(pool)
        .await?;
    Ok(())
}

/// The `Set-Cookie` value that starts (`Some(token)`) or clears a session.
pub fn cookie(token: Option<&str>, secure: bool) -> String {
    let (value, max_age) = match token {
        Some(token) => (token, SESSION_HOURS * 3600),
        None => ("", 0),
    };
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/portal; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}")
}

/// The session token the request's cookie carries, if any.
pub fn cookie_token(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|(_, value)| value.to_owned())
}

/// A signed-in user of one organization.
#[derive(Debug, Clone)]
pub struct Session {
    pub org_id: OrgId,
    pub org_name: String,
    pub user: Option<String>,
    pub expires_at: DateTime<Utc>,
    /// The token every form of this session must carry.
    pub csrf: String,
    token: String,
}

impl Session {
    /// Loads the session the request's cookie names, if it is still running.
    pub async fn load(req: &HttpRequest, state: &AppState) -> Result<Option<Session>, ApiError> {
        let Some(token) = cookie_token(req) else {
            return Ok(None);
        };
        let found: Option<(OrgId, String, Option<String>, DateTime<Utc>)> = sqlx::query_as(
            "select s.org_id, o.name, s.user_email, s.expires_at
             from portal_sessions s join orgs o on o.id = s.org_id
             where s.token_hash = $1 and s.expires_at > $2",
        )
        .bind(&token_hash(&token)[..])
        .bind(crate::clock::now())
        .fetch_optional(&state.pool)
        .await?;
        Ok(found.map(|(org_id, org_name, user, expires_at)| Session {
            org_id,
            org_name,
            user,
            expires_at,
            csrf: csrf_token(&token),
            token,
        }))
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// The actor recorded on the events this session causes.
    pub fn actor(&self) -> String {
        match &self.user {
            Some(user) => format!("portal:{user}"),
            None => "portal".into(),
        }
    }

    /// This session for the shared operations.
    pub fn caller(&self) -> Caller {
        Caller::new(self.org_id, self.actor())
    }

    /// Whether `submitted` is this session's CSRF token (compared in constant time).
    pub fn csrf_matches(&self, submitted: &str) -> bool {
        match (blake3::Hash::from_hex(&self.csrf), blake3::Hash::from_hex(submitted)) {
            (Ok(expected), Ok(given)) => expected == given,
            _ => false,
        }
    }
}

fn csrf_token(session_token: &str) -> String {
    hex(&blake3::derive_key(CSRF_CONTEXT, session_token.as_bytes()))
}

impl FromRequest for Session {
    type Error = PortalError;
    type Future = LocalBoxFuture<'static, Result<Session, PortalError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| PortalError::from(ApiError::internal(std::io::Error::other("state missing"))))?;
            Session::load(&req, state).await?.ok_or(PortalError::SignIn)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_are_tied_to_their_session() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(csrf_token(&a), csrf_token(&b));
        assert_eq!(csrf_token(&a), csrf_token(&a));
        assert_ne!(csrf_token(&a), a);
        assert_eq!(csrf_token(&a).len(), 64);
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_https() {
        let set = cookie(Some("ab"), false);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Secure"));
        assert!(cookie(Some("ab"), true).ends_with("; Secure"));
        assert!(cookie(None, false).contains("Max-Age=0"));
    }
}
