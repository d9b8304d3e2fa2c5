//! The checks every request made with a key goes through, shared by the
//! management API, `/v1/verify` and `/v1/auth`: the client-address guard
//! against key guessing, parsing, the key cache, the key's status and IP
//! allowlist, the rate limiter, then environment and scope — and usage
//! accounting of the result.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::http::header::HeaderName;
use actix_web::{HttpMessage, HttpRequest};
use chrono::{DateTime, Utc};
use keyledger_events::domain::{scope::grants, Environment, IpRange, KeyStatus, PlainKey, Scope};

use crate::clock;
use crate::key_cache::CachedKey;
use crate::rate_limit::Decision;
use crate::usage::Outcome;
use crate::{error::ApiError, ApiSettings, AppState, Surface};

/// Why a known key was refused; API codes derive from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    RateLimited,
    Inactive,
    Expired,
    /// The key has an IP allowlist and the client address is not on it.
    IpNotAllowed,
    EnvironmentMismatch,
    InsufficientScope(Scope),
}

/// A key found, its rate-limit decision, and the verdict.
pub struct Checked {
    pub key: Arc<CachedKey>,
    pub decision: Decision,
    pub verdict: Result<(), Refusal>,
}

impl Checked {
    /// The verdict as an API error (for endpoints that answer with errors).
    pub fn into_result(self) -> Result<Arc<CachedKey>, ApiError> {
        match self.verdict {
            Ok(()) => Ok(self.key),
            Err(Refusal::RateLimited) => Err(ApiError::RateLimited {
                retry_after: self.decision.retry_after,
            }),
            Err(Refusal::Inactive) => Err(ApiError::KeyInactive),
            Err(Refusal::Expired) => Err(ApiError::KeyExpired),
            Err(Refusal::IpNotAllowed) => Err(ApiError::IpNotAllowed),
            Err(Refusal::EnvironmentMismatch) => Err(ApiError::EnvironmentMismatch {
                required: match self.key.row.environment() {
                    Environment::Live => "test",
                    Environment::Test => "live",
                },
            }),
            Err(Refusal::InsufficientScope(scope)) => Err(ApiError::InsufficientScope(scope)),
        }
    }
}

/// The headers a proxy names the client in (made once, not parsed per request).
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The address a request comes from. When the peer is a trusted reverse
/// proxy, the client it names in the header its forward-auth style sets:
/// nginx's `X-Real-IP`, else (nginx without it, traefik, envoy) the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy —
/// Traefik and Envoy pass a client's own `X-Real-IP` through untouched, so
/// it names nobody there. An entry may carry a port (`203.0.113.7:4711`,
/// `[2001:db8::7]:443`); anything else is a 400: blaming the proxy would
/// lock out everyone behind it, and counting the text apart would let a
/// client escape the guard by choosing it. Otherwise — and with no proxy
/// trusted, the default — the peer itself: headers anyone can send name
/// nobody.
pub fn client_address(req: &HttpRequest, settings: &ApiSettings) -> Result<Option<IpAddr>, ApiError> {
    let Some(peer) = req.peer_addr().map(|a| a.ip().to_canonical()) else {
        return Ok(None);
    };
    let trusted = |ip: IpAddr| settings.trusted_proxies.iter().any(|range| range.contains(ip));
    if !trusted(peer) {
        warn_of_untrusted_forwarding(req, peer);
        return Ok(Some(peer));
    }
    let unreadable = |header: &str| {
        tracing::warn!(
            %peer,
            header,
            "the trusted proxy {peer} sent a {header} that is not an address (ip, ip:port or [ipv6]:port): \
             the request is refused"
        );
        ApiError::BadRequest(format!(
            "The proxy in front of keyledger sent a {header} header that is not an IP address (ip, ip:port or \
             [ipv6]:port), so keyledger cannot tell which client to hold responsible for invalid keys. The proxy's \
             configuration needs fixing."
        ))
    };
    if settings.forward_auth.reads_x_real_ip() {
        let mut values = req.headers().get_all(X_REAL_IP);
        match (values.next(), values.next()) {
            (None, _) => {}
            (Some(value), None) => {
                return value
                    .to_str()
                    .ok()
                    .and_then(forwarded_address)
                    .map(Some)
                    .ok_or_else(|| unreadable("X-Real-IP"))
            }
            (Some(_), Some(_)) => return Err(unreadable("X-Real-IP")),
        }
    }
    let mut entries = Vec::new();
    for value in req.headers().get_all(X_FORWARDED_FOR) {
        entries.extend(value.to_str().map_err(|_| unreadable("X-Forwarded-For"))?.split(','));
    }
    // From the right: each trusted proxy names the one before it. When all
    // are trusted, the left-most is the client.
    let mut client = peer;
    for entry in entries.into_iter().rev() {
        client = forwarded_address(entry).ok_or_else(|| unreadable("X-Forwarded-For"))?;
        if !trusted(client) {
            break;
        }
    }
    Ok(Some(client))
}

/// One address as a proxy writes it: `203.0.113.7`, `203.0.113.7:4711`,
/// `2001:db8::7`, `[2001:db8::7]` or `[2001:db8::7]:443`.
fn forwarded_address(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let is_port =
        |port: &str| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok();
    let address = if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        IpAddr::V6(v6.parse::<Ipv6Addr>().ok()?)
    } else {
        let (v4, port) = text.split_once(':')?;
        if !is_port(port) {
            return None;
        }
        IpAddr::V4(v4.parse::<Ipv4Addr>().ok()?)
    };
    Some(address.to_canonical())
}

/// Once per process: a request carrying `X-Real-IP` / `X-Forwarded-For`
/// from a peer that is not a trusted proxy. Either a client sent them (and
/// they are rightly ignored), or a proxy nobody listed is in front — and
/// then every client behind it counts as the proxy, so one client's invalid
/// keys lock out all of them.
fn warn_of_untrusted_forwarding(req: &HttpRequest, peer: IpAddr) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let forwarded = [X_REAL_IP, X_FORWARDED_FOR]
        .into_iter()
        .any(|name| req.headers().contains_key(name));
    if forwarded && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            %peer,
            "a request from {peer} carries X-Real-IP or X-Forwarded-For, but {peer} is not in \
             KEYLEDGER_TRUSTED_PROXIES: the headers are ignored and the guessing guard counts {peer} itself. If \
             {peer} is your reverse proxy, every client behind it shares one guard (one client's invalid keys \
             lock out all of them): add it to KEYLEDGER_TRUSTED_PROXIES (logged once)"
        );
    }
}

/// Whether a request comes from the platform itself: it arrived on the
/// internal listener, or its peer is a trusted proxy.
pub fn from_the_platform(req: &HttpRequest, trusted_proxies: &[IpRange]) -> bool {
    let internal = req.app_data::<Surface>() == Some(&Surface::Internal);
    internal
        || req
            .peer_addr()
            .is_some_and(|peer| trusted_proxies.iter().any(|range| range.contains(peer.ip())))
}

/// Whose unknown keys a request counts, and in which guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Nobody: the platform's own server calling `/v1/verify` (without an
    /// `ip` it may give), which a guard must never lock out.
    Nobody,
    /// The address the request comes from ([`client_address`]): the
    /// management API and `/v1/auth`.
    Caller(IpAddr),
    /// The end client a `/v1/verify` names in `ip`. Counted in a guard of
    /// its own: the address is the platform's word, not a connection's, so
    /// it locks that address out of `/v1/verify` only — never out of the
    /// management API or `/v1/auth`.
    EndClient(IpAddr),
}

/// Whom the guessing guard counts an address against: an IPv4 address, or
/// an IPv6 address's /64 (one subscriber's network: counting single IPv6
/// addresses would let a client rotate through 2^64 of them). An IPv4
/// client written as IPv6 — mapped (`::ffff:a.b.c.d`), translated
/// (`::ffff:0:a.b.c.d`) or through NAT64's well-known prefix
/// (`64:ff9b::a.b.c.d`) — is that IPv4 client. Written as the address, or
/// the network with `/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardSubject {
    V4(Ipv4Addr),
    /// The network's first address.
    V6Network(Ipv6Addr),
}

/// Whom the guessing guard counts `ip` against.
pub fn guard_subject(ip: IpAddr) -> GuardSubject {
    match embedded_ipv4(ip) {
        IpAddr::V4(v4) => GuardSubject::V4(v4),
        IpAddr::V6(v6) => GuardSubject::V6Network(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
    }
}

impl std::fmt::Display for GuardSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuardSubject::V4(v4) => v4.fmt(f),
            GuardSubject::V6Network(network) => write!(f, "{network}/64"),
        }
    }
}

fn embedded_ipv4(ip: IpAddr) -> IpAddr {
    const NAT64: u128 = 0x0064_ff9b_u128 << 96;
    const TRANSLATED: u128 = 0xffff_0000_u128 << 32;
    let ip = ip.to_canonical();
    if let IpAddr::V6(v6) = ip {
        let bits = u128::from(v6);
        if bits >> 32 == NAT64 >> 32 || bits >> 32 == TRANSLATED >> 32 {
            return IpAddr::V4(Ipv4Addr::from(bits as u32));
        }
    }
    ip
}

/// [`decide`], counted in `keyledger_verifications_total` by its result code.
pub async fn check(
    state: &AppState,
    req: &HttpRequest,
    text: &str,
    guard: Guard,
    client: Option<IpAddr>,
    environment: Option<Environment>,
    scopes: &[Scope],
) -> Result<Option<Checked>, ApiError> {
    let result = decide(state, req, text, guard, client, environment, scopes).await;
    state
        .verifications
        .record_result(&result, |checked| crate::metrics::verdict_code(&checked.verdict));
    result
}

/// Checks `text` as a key that needs `scopes` in `environment` (if given),
/// used from `client` (the address a key's IP allowlist is checked against;
/// `None`: unknown, which no allowlist admits). `guard`: whom an unknown key
/// counts against (an address's [`guard_subject`], in that guard's own
/// counts); an address that sent too many is refused at once. Records usage
/// for known keys.
async fn decide(
    state: &AppState,
    req: &HttpRequest,
    text: &str,
    guard: Guard,
    client: Option<IpAddr>,
    environment: Option<Environment>,
    scopes: &[Scope],
) -> Result<Option<Checked>, ApiError> {
    // The request's time, once: the key's status, its limit window, usage.
    let at = clock::now();
    let now = at.timestamp().max(0) as u64;
    let guard = match guard {
        Guard::Nobody => None,
        Guard::Caller(ip) => Some((&state.failures, guard_subject(ip))),
        Guard::EndClient(ip) => Some((&state.end_client_failures, guard_subject(ip))),
    };
    let limit = state.settings.failed_attempts_per_minute;
    if let Some((failures, address)) = &guard {
        if failures.used(address, now) >= limit {
            let retry_after = failures.check(address, limit, now).retry_after;
            return Err(ApiError::TooManyFailedAttempts { retry_after });
        }
    }
    let key = match PlainKey::parse(text) {
        Ok((plain, _)) => {
            let hash = state.hash_key.hash(&plain);
            drop(plain);
            state.cache.lookup(&state.pool, &hash).await?
        }
        Err(_) => None,
    };
    let Some(key) = key else {
        if let Some((failures, address)) = &guard {
            failures.check(address, limit, now);
        }
        return Ok(None);
    };
    // A key refused for its state, or used from an address its allowlist
    // does not admit, spends no budget (a stolen key used elsewhere cannot
    // exhaust its owner's limit); any other request does.
    let status =
        status_refusal(&key, at).or_else(|| (!key.row.allowed_ips.allows(client)).then_some(Refusal::IpNotAllowed));
    let decision = match status {
        Some(_) => state.limiter.peek(&key.row.id, key.limit_per_minute, now),
        None => state.limiter.check(&key.row.id, key.limit_per_minute, now),
    };
    req.extensions_mut().insert(decision);
    let verdict = match status {
        Some(refusal) => Err(refusal),
        None => verdict(&key, decision, environment, scopes),
    };
    let outcome = match verdict {
        Ok(()) => Outcome::Succeeded,
        Err(Refusal::RateLimited) => Outcome::RateLimited,
        Err(_) => Outcome::Failed,
    };
    state.usage.record(key.row.id, outcome, at);
    Ok(Some(Checked { key, decision, verdict }))
}

fn status_refusal(key: &CachedKey, now: DateTime<Utc>) -> Option<Refusal> {
    match key.row.status_at(now) {
        KeyStatus::Inactive => Some(Refusal::Inactive),
        KeyStatus::Expired => Some(Refusal::Expired),
        KeyStatus::Active => None,
    }
}

/// For a key in a usable state: its budget, then the environment, then the
/// scopes — the order a user fixes things.
fn verdict(
    key: &CachedKey,
    decision: Decision,
    environment: Option<Environment>,
    needed: &[Scope],
) -> Result<(), Refusal> {
    if !decision.allowed {
        return Err(Refusal::RateLimited);
    }
    if environment.is_some_and(|env| env != key.row.environment()) {
        return Err(Refusal::EnvironmentMismatch);
    }
    match needed.iter().find(|&&s| !grants(&key.row.scopes, s)) {
        Some(&missing) => Err(Refusal::InsufficientScope(missing)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::guard_subject;

    #[test]
    fn an_ipv4_client_is_one_subject_however_its_address_is_written() {
        for written in [
            "203.0.113.9",
            "::ffff:203.0.113.9",
            "64:ff9b::203.0.113.9",
            "::ffff:0:203.0.113.9",
        ] {
            assert_eq!(
                guard_subject(written.parse().unwrap()).to_string(),
                "203.0.113.9",
                "{written}"
            );
        }
        let subject = |written: &str| guard_subject(written.parse().unwrap()).to_string();
        assert_eq!(subject("2001:db8:1:2:3::4"), "2001:db8:1:2::/64");
        assert_eq!(
            guard_subject("2001:db8:1:2:3::4".parse().unwrap()),
            guard_subject("2001:db8:1:2::9".parse().unwrap())
        );
        // Only the well-known prefix of 64:ff9b::/96 embeds an IPv4 address.
        assert_eq!(subject("64:ff9b:1::cb00:7109"), "64:ff9b:1::/64");
    }
}
