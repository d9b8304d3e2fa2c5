//! `POST /v1/verify`: is this key valid for these scopes and this
//! environment? Every well-formed request gets 200 with a `code`; the key in
//! the body is the credential, so no management scope is needed. An optional
//! `ip` names the end client whose request the platform is checking: its
//! unknown keys count against that address's guessing guard — when the
//! platform says so, i.e. on the internal listener or from a trusted proxy.
//! On a single listener anyone can call `/v1/verify`, and naming an address
//! there must not lock it out.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::http::header::ContentType;
use actix_web::{web, HttpRequest, HttpResponse};
use keyledger_events::domain::{Environment, KeyId, KeyType, OrgId, Scope, ValidationDetails};
use keyledger_events::representation::rfc3339;
use serde_json::json;

use crate::access::{self, Guard};
use crate::{body, error::ApiError, verify_body, AppState};

/// The answer for a known key, its fields in the order the API has always
/// written them.
#[cfg_attr(test, derive(serde::Serialize))]
struct Answer<'a> {
    code: &'static str,
    environment: Environment,
    expires_at: Option<String>,
    key_id: KeyId,
    org_id: OrgId,
    ratelimit: RateLimit,
    scopes: &'a [Scope],
    #[cfg_attr(test, serde(rename = "type"))]
    key_type: KeyType,
    valid: bool,
}

#[cfg_attr(test, derive(serde::Serialize))]
struct RateLimit {
    limit: u32,
    remaining: u32,
    reset: u64,
}

impl Answer<'_> {
    /// The answer as compact JSON, exactly as serde would write it (a test
    /// holds it to that), but written directly: every string in it is one
    /// keyledger makes — a code, an environment, a time, ids, scope names,
    /// a type — none of which needs escaping, so serde's byte-by-byte
    /// escape scan (measured with callgrind: a twelfth of a verification's
    /// instructions) is left out.
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut number = itoa::Buffer::new();
        out.extend_from_slice(br#"{"code":""#);
        out.extend_from_slice(self.code.as_bytes());
        out.extend_from_slice(br#"","environment":""#);
        out.extend_from_slice(self.environment.as_str().as_bytes());
        out.extend_from_slice(br#"","expires_at":"#);
        match &self.expires_at {
            Some(at) => {
                out.push(b'"');
                out.extend_from_slice(at.as_bytes());
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","key_id":""#);
        self.key_id.push_to(out);
        out.extend_from_slice(br#"","org_id":""#);
        self.org_id.push_to(out);
        out.extend_from_slice(br#"","ratelimit":{"limit":"#);
        out.extend_from_slice(number.format(self.ratelimit.limit).as_bytes());
        out.extend_from_slice(br#","remaining":"#);
        out.extend_from_slice(number.format(self.ratelimit.remaining).as_bytes());
        out.extend_from_slice(br#","reset":"#);
        out.extend_from_slice(number.format(self.ratelimit.reset).as_bytes());
        out.extend_from_slice(br#"},"scopes":["#);
        for (n, scope) in self.scopes.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(scope.as_str().as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(br#"],"type":""#);
        out.extend_from_slice(self.key_type.as_str().as_bytes());
        out.extend_from_slice(br#"","valid":"#);
        out.extend_from_slice(if self.valid { b"true}" } else { b"false}" });
    }
}

pub async fn verify(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let bytes = body::read_json(&req, payload).await?;
    // The common shape read in place; anything else by the general parser.
    let general;
    let request = match verify_body::read(&bytes) {
        Some(quick) => quick,
        None => {
            general = verify_body::read_general(&bytes)?;
            general.request()
        }
    };
    let verify_body::Request {
        key,
        scopes,
        environment,
        ip,
    } = request;
    let mut details = ValidationDetails::default();
    let needed: Vec<Scope> = scopes
        .iter()
        .filter_map(|s| {
            s.parse::<Scope>()
                .map_err(|e| details.add("scopes", e.to_string()))
                .ok()
        })
        .collect();
    let environment = environment.and_then(|e| {
        Environment::parse(e).or_else(|| {
            details.add("environment", "must be live or test");
            None
        })
    });
    let end_client = ip.and_then(|text| {
        text.trim()
            .parse::<IpAddr>()
            .map(|ip| ip.to_canonical())
            .map_err(|_| details.add("ip", "must be an IPv4 or IPv6 address, e.g. 203.0.113.7 or 2001:db8::7"))
            .ok()
    });
    if !details.is_empty() {
        return Err(ApiError::Validation(details));
    }
    let guard = guard_for(&state, &req, end_client);
    // A key's IP allowlist checks the end client the platform names, from
    // whoever calls (without `ip`, no allowlist admits the request).
    let checked = access::check(&state, &req, key, guard, end_client, environment, &needed).await?;
    let Some(checked) = checked else {
        return Ok(HttpResponse::Ok().json(json!({"valid": false, "code": "NOT_FOUND"})));
    };
    let code = crate::metrics::verdict_code(&checked.verdict);
    let (row, decision) = (&checked.key.row, checked.decision);
    let answer = Answer {
        valid: code == "VALID",
        code,
        key_id: row.id,
        org_id: row.org_id,
        key_type: row.key_type,
        environment: row.environment(),
        scopes: &row.scopes,
        expires_at: row.expires_at.map(rfc3339),
        ratelimit: RateLimit {
            limit: decision.limit,
            remaining: decision.remaining,
            reset: decision.reset,
        },
    };
    // Written once into room for the whole answer (about 300 bytes), not
    // into a string grown in steps.
    let mut body = Vec::with_capacity(ANSWER_CAPACITY);
    answer.write_json(&mut body);
    Ok(HttpResponse::Ok().content_type(ContentType::json()).body(body))
}

/// Room for a known key's answer: its fixed fields, two ids, an expiry and
/// a few scopes.
const ANSWER_CAPACITY: usize = 512;

/// Whom the guessing guard holds responsible for this request's unknown
/// keys. Without `ip`, nobody: the caller is the platform's own server,
/// which the guard must never lock out. With `ip`, that end client — if the
/// platform said so (the internal listener, or a trusted proxy as the
/// peer); from anyone else the `ip` is still validated (and is the address
/// a key's own rules would check) but the guard ignores it.
fn guard_for(state: &AppState, req: &HttpRequest, end_client: Option<IpAddr>) -> Guard {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let Some(ip) = end_client else {
        return Guard::Nobody;
    };
    if access::from_the_platform(req, &state.settings.trusted_proxies) {
        return Guard::EndClient(ip);
    }
    if !WARNED.swap(true, Ordering::Relaxed) {
        let peer = req
            .peer_addr()
            .map(|a| a.ip().to_canonical().to_string())
            .unwrap_or_default();
        tracing::warn!(
            %peer,
            "/v1/verify was called with an ip by {peer}, on the only listener (anyone can call /v1/verify \
             there) and not from KEYLEDGER_TRUSTED_PROXIES: the guessing guard ignores that ip. Serve /v1/verify \
             on KEYLEDGER_INTERNAL_LISTEN, or list the platform's servers in KEYLEDGER_TRUSTED_PROXIES (logged \
             once)"
        );
    }
    Guard::Nobody
}

#[cfg(test)]
mod tests {
    use super::{Answer, RateLimit};
    use keyledger_events::domain::{KeyId, KeyType, OrgId, Scope};

    #[test]
    fn the_answer_is_written_as_serde_writes_it() {
        let scopes = [Scope::ReadExperiences, Scope::WriteConsumers, Scope::Admin];
        for (n, key_type) in KeyType::ALL.into_iter().enumerate() {
            let answer = Answer {
                code: ["VALID", "RATE_LIMITED", "INSUFFICIENT_SCOPE"][n % 3],
                environment: key_type.environment(),
                expires_at: (n % 2 == 0).then(|| "2026-11-28T10:00:00.123456Z".to_owned()),
                key_id: KeyId::new(),
                org_id: OrgId::new(),
                ratelimit: RateLimit {
                    limit: 1000,
                    remaining: n as u32,
                    reset: 1_764_320_400 + n as u64,
                },
                scopes: &scopes[..n],
                key_type,
                valid: n == 0,
            };
            let mut written = Vec::new();
            answer.write_json(&mut written);
            let written = String::from_utf8(written).unwrap();
            assert_eq!(written, serde_json::to_string(&answer).unwrap());
            let parsed: serde_json::Value = serde_json::from_str(&written).unwrap();
            assert_eq!(parsed["type"], key_type.as_str());
        }
    }
}
