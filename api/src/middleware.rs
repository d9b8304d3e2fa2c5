//! Per-request context: the request id (echoed or generated, on every
//! answer and in every error body), refusal of keys in query strings (but
//! for the original request's query under `/v1/auth/`), and
//! the access log — which records method, path (with key-shaped segments
//! cut to their prefix), status and timing, never a query string or a
//! header (either could carry a key).

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::Instant;

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
    web, Error, HttpMessage, ResponseError,
};

use keyledger_events::domain::confirmation::CONFIRM_PATH;

use crate::error::ApiError;
use crate::rate_limit::Decision;
use crate::request_id::{self, REQUEST_ID_HEADER};
use crate::{clock, AppState};

/// `X-RateLimit-*`, named once rather than parsed for every answer.
const RATE_LIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const RATE_LIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RATE_LIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// `X-RateLimit-*` for an answer to a request made with a known key.
fn rate_limit_headers(decision: &Decision) -> [(HeaderName, HeaderValue); 3] {
    [
        (RATE_LIMIT_LIMIT, kept_number_value(0, u64::from(decision.limit))),
        (RATE_LIMIT_REMAINING, number_value(u64::from(decision.remaining))),
        (RATE_LIMIT_RESET, kept_number_value(1, decision.reset)),
    ]
}

/// Numbers below this are written from one table of decimals.
const TABLED: u64 = 10_000;

/// `n` as a header value: below [`TABLED`] (a remaining budget of the
/// smaller plans, their limits) a slice of one table of decimals made once,
/// without allocating (building the three headers' values was a fortieth
/// of a verification's instructions); above, built.
fn number_value(n: u64) -> HeaderValue {
    match tabled(n) {
        Some(digits) => HeaderValue::from_static(digits),
        None => HeaderValue::from(n),
    }
}

/// [`number_value`] for a number that the next answers repeat (a larger
/// limit, the reset second): each thread keeps the last one built in each
/// of two `slot`s, which those answers share.
fn kept_number_value(slot: usize, n: u64) -> HeaderValue {
    if let Some(digits) = tabled(n) {
        return HeaderValue::from_static(digits);
    }
    thread_local! {
        static KEPT: RefCell<[Option<(u64, HeaderValue)>; 2]> = const { RefCell::new([None, None]) };
    }
    KEPT.with_borrow_mut(|kept| match &kept[slot] {
        Some((built, value)) if *built == n => value.clone(),
        _ => {
            let value = HeaderValue::from(n);
            kept[slot] = Some((n, value.clone()));
            value
        }
    })
}

/// The decimal digits of `n` below [`TABLED`], from a table of them all
/// written one after the other ("0123…91011…"): the numbers of each width
/// take the same room, so where one starts is counted, not searched.
fn tabled(n: u64) -> Option<&'static str> {
    static TABLE: OnceLock<String> = OnceLock::new();
    if n >= TABLED {
        return None;
    }
    let table = TABLE.get_or_init(|| (0..TABLED).map(|n| n.to_string()).collect());
    let (mut start, mut low, mut high, mut width) = (0, 0, 10, 1);
    while n >= high {
        start += (high - low) as usize * width;
        (low, high, width) = (high, high * 10, width + 1);
    }
    let at = start + (n - low) as usize * width;
    Some(&table[at..at + width])
}

/// A caller's id is echoed if it is short, visible ASCII and not
/// secret-shaped (it is logged); otherwise ours.
fn request_id_of(req: &ServiceRequest) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .filter(|id| !secret_shaped(id))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id)
}

/// A request id of ours: `req_` and 32 hex digits — 64 random bits drawn
/// once per thread, then that thread's count of ids through a keyed
/// permutation (so ids never repeat, and do not show how many requests
/// came before). No random draw or clock reading per request: a UUIDv7
/// each was a fortieth of a verification's instructions.
fn new_request_id() -> String {
    use std::cell::Cell;
    /// The thread's random prefix, its two permutation keys, its count.
    struct Ids {
        prefix: u64,
        keys: (u64, u64),
        count: Cell<u64>,
    }
    thread_local! {
        static IDS: Ids = {
            let mut seed = [0u8; 24];
            getrandom::getrandom(&mut seed).expect("the operating system's random source");
            let word = |n: usize| u64::from_ne_bytes(seed[8 * n..8 * n + 8].try_into().expect("8 bytes"));
            Ids { prefix: word(0), keys: (word(1), word(2)), count: Cell::new(0) }
        };
    }
    let number = IDS.with(|ids| {
        let count = ids.count.get();
        ids.count.set(count.wrapping_add(1));
        (u128::from(ids.prefix) << 64) | u128::from(permute(count, ids.keys))
    });
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 36];
    id[..4].copy_from_slice(b"req_");
    for (n, digit) in id[4..].iter_mut().enumerate() {
        *digit = HEX[(number >> (124 - 4 * n) & 0xf) as usize];
    }
    String::from_utf8(id.to_vec()).expect("ASCII")
}

/// A bijection of the 64-bit numbers chosen by `keys`: SplitMix64's
/// finalizer (each step invertible) between two key whitenings.
fn permute(count: u64, keys: (u64, u64)) -> u64 {
    let mut z = count ^ keys.0;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) ^ keys.1
}

/// Where envoy-style forward-auth checks carry the original path and query.
const ENVOY_AUTH_PREFIX: &str = "/v1/auth/";

/// Query parameters that would carry a credential.
const KEY_PARAMETERS: [&str; 5] = ["key", "api_key", "apikey", "access_token", "token"];
const KEY_PREFIXES: [&str; 3] = ["pk_live_", "sk_live_", "sk_test_"];

/// `%XX` escapes and `+` (a space in forms) decoded, as a query parser
/// would; a malformed escape is kept as it is.
fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (bytes[i], escaped) {
            (_, Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (b'+', None) => {
                decoded.push(b' ');
                i += 1;
            }
            (byte, None) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// `text` as sent, then after each round of percent-decoding until nothing
/// changes (a round that changes something shortens the text, so this ends).
fn decodings(text: &str) -> Vec<String> {
    let mut rounds = vec![text.to_owned()];
    loop {
        let decoded = form_decode(rounds.last().expect("one at least"));
        if &decoded == rounds.last().expect("one at least") {
            return rounds;
        }
        rounds.push(decoded);
    }
}

/// The key prefix `text` holds, in any letter case, as sent or after any
/// number of rounds of percent-decoding (`sk%2525255Flive_…`, `SK_LIVE_…`).
fn key_prefix_in(text: &str) -> Option<&'static str> {
    decodings(text).iter().find_map(|round| {
        let round = round.to_ascii_lowercase();
        KEY_PREFIXES.into_iter().find(|p| round.contains(p))
    })
}

/// Key bodies are 49 characters of base62; nothing else keyledger serves
/// (ids, request ids) has a run of letters and digits this long.
const SECRET_RUN: usize = 40;

/// Whether `text`, as sent or decoded, holds a key prefix or a run of
/// [`SECRET_RUN`] letters and digits (a key's body without its prefix).
fn secret_shaped(text: &str) -> bool {
    key_prefix_in(text).is_some()
        || decodings(text).iter().any(|round| {
            round
                .split(|c: char| !c.is_ascii_alphanumeric())
                .any(|run| run.len() >= SECRET_RUN)
        })
}

/// The path as the access log writes it: a portal sign-in link's token
/// (which would sign someone in) is left out; a segment holding a key prefix
/// (a key sent where an id belongs, `/v1/keys/sk_live_…`) is cut to its
/// prefix, and one holding a long run of letters and digits (a key's body
/// alone) is replaced.
fn loggable_path(path: &str) -> String {
    if path.starts_with("/portal/session/") {
        return "/portal/session/[token]".to_owned();
    }
    path.split('/')
        .map(|segment| match key_prefix_in(segment) {
            Some(prefix) => format!("{prefix}…"),
            None if secret_shaped(segment) => "[redacted]".to_owned(),
            None => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The parameter named like a credential that a path takes by design, if
/// any: only the confirmation link's `token`, which is not an API key (see
/// `recipients.rs`).
fn allowed_parameter(path: &str) -> Option<&'static str> {
    (path == CONFIRM_PATH).then_some("token")
}

/// Whether a query string names a credential parameter (other than
/// `allowed`, spelled exactly) or holds a key prefix — as sent, and after
/// every round of percent-decoding (`sk%5Flive_…`, `%6bey=…`, and their
/// repeated encodings). The allowed parameter's value is checked too.
fn query_carries_key(query: &str, allowed: Option<&str>) -> bool {
    if query.is_empty() {
        return false;
    }
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        key_prefix_in(name).is_some()
            || key_prefix_in(value).is_some()
            || (allowed != Some(name)
                && decodings(name)
                    .iter()
                    .any(|round| KEY_PARAMETERS.contains(&round.to_ascii_lowercase().as_str())))
    })
}

pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let request_id = request_id_of(&req);
    // The access log's line is only built when it is written (verification
    // runs at log level warn in busy deployments; building it cost more
    // than answering).
    let logged = tracing::enabled!(tracing::Level::INFO);
    let method = logged.then(|| req.method().clone());
    let path = logged.then(|| loggable_path(req.path()));
    let now = match req.app_data::<web::Data<AppState>>() {
        Some(state) => state.clock.now(),
        None => chrono::Utc::now(),
    };
    // Checked as it was read: visible ASCII only.
    let echoed = HeaderValue::from_str(&request_id);
    let handled = request_id::scope(request_id, async move {
        // Under /v1/auth/ (envoy style) the query is the original
        // request's, for the upstream: neither logged nor matched here.
        let original_query = req.path().starts_with(ENVOY_AUTH_PREFIX);
        if !original_query && query_carries_key(req.query_string(), allowed_parameter(req.path())) {
            let refusal = ApiError::BadRequest(
                "API keys are not accepted in query strings (they end up in logs and browser history): \
                     send 'Authorization: Bearer <key>' instead."
                    .into(),
            );
            let response = refusal.error_response();
            return Ok(req.into_response(response).map_into_right_body());
        }
        next.call(req).await.map(ServiceResponse::map_into_left_body)
    });
    let result = clock::scope(now, handled).await;
    let mut response = result?;
    if let (Some(method), Some(path)) = (method, path) {
        tracing::info!(
            request_id = %echoed.as_ref().ok().and_then(|id| id.to_str().ok()).unwrap_or_default(),
            method = %method,
            path = %path,
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
    }
    if let Ok(value) = echoed {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let decision = response.request().extensions().get::<Decision>().copied();
    if let Some(decision) = decision {
        let headers = response.headers_mut();
        for (name, value) in rate_limit_headers(&decision) {
            headers.insert(name, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::{allowed_parameter, kept_number_value, loggable_path, number_value, query_carries_key, TABLED};
    use keyledger_events::domain::confirmation::CONFIRM_PATH;

    #[test]
    fn key_shaped_path_segments_are_cut_to_their_prefix_in_the_log() {
        let key = "sk_live_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG123456";
        assert_eq!(loggable_path(&format!("/v1/keys/{key}")), "/v1/keys/sk_live_…");
        assert_eq!(
            loggable_path(&format!("/v1/keys/{}/usage", key.replace('_', "%5F"))),
            "/v1/keys/sk_live_…/usage"
        );
        assert_eq!(loggable_path("/v1/auth/api/x-pk_live_abc;y"), "/v1/auth/api/pk_live_…");
        assert_eq!(loggable_path("/v1/keys/key_01ABC/usage"), "/v1/keys/key_01ABC/usage");
        // Any number of encodings, any letter case, or the body alone.
        let body = &key[8..];
        assert_eq!(
            loggable_path(&format!("/v1/keys/sk%2525255Flive_{body}")),
            "/v1/keys/sk_live_…"
        );
        assert_eq!(loggable_path(&format!("/v1/keys/SK_LIVE_{body}")), "/v1/keys/sk_live_…");
        assert_eq!(
            loggable_path(&format!("/v1/keys/Sk%5FTeSt_{body}")),
            "/v1/keys/sk_test_…"
        );
        assert_eq!(
            loggable_path(&format!("/v1/keys/{body}/usage")),
            "/v1/keys/[redacted]/usage"
        );
        assert_eq!(
            loggable_path(&format!("/v1/keys/x-{}", body.replace('a', "%61"))),
            "/v1/keys/[redacted]"
        );
        // Ids, request ids and ordinary words stay readable.
        for path in [
            "/v1/keys/key_01JD5ZQ3M9X7W2V4T8R6P0N1K3/events",
            "/v1/keys/req_0193a5b6c7d8e9f00112233445566778",
            "/api/experiences/0123456789abcdefghijklmnopqrstuvwxyzABC",
        ] {
            assert_eq!(loggable_path(path), path);
        }
    }

    #[test]
    fn keys_in_query_strings_are_recognised() {
        assert!(query_carries_key("api_key=abc", None));
        assert!(query_carries_key("limit=5&key=x", None));
        assert!(query_carries_key("q=sk_live_abc", None));
        assert!(query_carries_key("Token=1", None));
        assert!(!query_carries_key("limit=5&cursor=key_01ABC", None));
        assert!(!query_carries_key("", None));
        assert!(query_carries_key("q=sk%5Flive_abc", None));
        assert!(query_carries_key("q=sk%255Flive_abc", None));
        assert!(query_carries_key("%6bey=1", None));
        assert!(query_carries_key("%256bey=1", None));
        assert!(query_carries_key("x=1&api%5Fkey=2", None));
        assert!(!query_carries_key("q=100%25&r=%zz", None));
        assert!(query_carries_key("q=sk%2525255Flive_abc", None));
        assert!(query_carries_key("%2525256bey=1", None));
    }

    #[test]
    fn our_request_ids_are_distinct_across_threads_and_never_secret_shaped() {
        let mut ids: Vec<String> = (0..1000).map(|_| super::new_request_id()).collect();
        for thread in [
            std::thread::spawn(super::new_request_id),
            std::thread::spawn(super::new_request_id),
        ] {
            ids.push(thread.join().unwrap());
        }
        for id in &ids {
            let digits = id.strip_prefix("req_").expect("req_ first");
            assert_eq!(digits.len(), 32, "{id}");
            assert!(
                digits.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "{id}"
            );
            assert!(!super::secret_shaped(id), "{id}");
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count);
    }

    #[test]
    fn sign_in_tokens_stay_out_of_the_access_log() {
        assert_eq!(
            super::loggable_path("/portal/session/abc123"),
            "/portal/session/[token]"
        );
        assert_eq!(super::loggable_path("/portal/keys"), "/portal/keys");
    }

    #[test]
    fn only_the_confirmation_link_may_carry_a_token() {
        let link = "token=org_01ABC.1764320400000000.6f7073.00ff";
        let check = |path: &str, query: &str| query_carries_key(query, allowed_parameter(path));
        assert!(!check(CONFIRM_PATH, link));
        assert!(check("/v1/keys", link));
        assert!(check("/v1/org", link));
        assert!(check(CONFIRM_PATH, &format!("{link}&api_key=x")));
        assert!(check(CONFIRM_PATH, &format!("{link}&Token=x")));
        assert!(check(CONFIRM_PATH, &format!("{link}&%74oken=x")));
        assert!(check(CONFIRM_PATH, "token=sk_live_abc"));
    }

    #[test]
    fn numbers_are_written_as_their_decimals_from_the_table_kept_or_built() {
        let tabled = [0, 1, 9, 10, 11, 99, 100, 101, 999, 1_000, 4_321, TABLED - 1];
        let built = [
            TABLED,
            10_001,
            123_456,
            1_798_000_000,
            1_798_000_000,
            1_798_000_001,
            u64::MAX,
        ];
        for n in tabled.into_iter().chain(built) {
            assert_eq!(number_value(n).to_str().unwrap(), n.to_string(), "{n}");
            for slot in 0..2 {
                assert_eq!(
                    kept_number_value(slot, n).to_str().unwrap(),
                    n.to_string(),
                    "{n} in slot {slot}"
                );
            }
        }
        // A kept value answers only for its own number and slot.
        assert_eq!(kept_number_value(0, 50_000).to_str().unwrap(), "50000");
        assert_eq!(kept_number_value(1, 60_000).to_str().unwrap(), "60000");
        assert_eq!(kept_number_value(0, 50_000).to_str().unwrap(), "50000");
        assert_eq!(kept_number_value(0, 50_001).to_str().unwrap(), "50001");
        assert_eq!(kept_number_value(1, 60_000).to_str().unwrap(), "60000");
    }
}
