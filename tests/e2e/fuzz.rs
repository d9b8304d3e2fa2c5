//! The API under fuzzing: a few thousand requests to every operation `GET
//! /openapi.json` lists, against the real server, then malformed HTTP over
//! raw sockets.
//!
//! Each operation that takes input has a seed: a valid request (body and
//! query string). Most probes break one field of it at a time (wrong type,
//! out of range, malformed, missing, unknown, nested), some break its bytes
//! (flips, truncation, invalid UTF-8), some are wholly random or built from
//! the operation's schema; around them go odd headers, paths, methods and
//! credentials (the admin key, other keys, bad keys, none). One probe in
//! ten is a control: the seed as a careful client sends it. Per-key
//! operations aim at live keys; `DELETE` has disposable keys of its own, so
//! it never removes the others' targets (webhook endpoints likewise).
//!
//! Fails on any 5xx, an answer without `X-Request-Id`, a dropped connection
//! or a timeout (every request has a connection of its own: nothing is
//! resent), and unless every operation answered at least one 2xx and every
//! operation that takes input at least one validation refusal — so the
//! probes are known to reach the handlers, not only the front door.
//!
//! Deterministic: the requests come from a seeded generator
//! (`KEYLEDGER_FUZZ_SEED`, default below; `KEYLEDGER_FUZZ_REQUESTS` sets
//! how many), so a failure reproduces with the same seed.

use std::collections::BTreeMap;
use std::time::Duration;

use awc::http::{header::HeaderValue, Method};
use keyledger_events::domain::confirmation::{Confirmation, CONFIRM_PATH};
use keyledger_events::domain::{org, EmailAddress, KeyId, Org, OrgCommand, OrgId, WebhookId};
use keyledger_events::handler;
use keyledger_events::log::EventMeta;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{call, spawn_app_with, TestApp};

const DEFAULT_SEED: u64 = 0x6b65_796c_6564_6765;
const DEFAULT_REQUESTS: usize = 5_000;
/// Requests in flight at once.
const PARALLEL: usize = 8;
/// Keys `DELETE` may remove (the other per-key operations never get them).
const DISPOSABLE_KEYS: usize = 40;

/// SplitMix64: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Strings that have broken parsers before: key-shaped text, encoded words,
/// bidi and zero-width characters, NULs, path tricks, huge and empty text.
fn nasty_string(rng: &mut Rng) -> String {
    let choices: [&dyn Fn(&mut Rng) -> String; 16] = [
        &|_| String::new(),
        &|_| " ".into(),
        &|_| "Checkout backend".into(),
        &|_| "sk_live_00000000000000000000000000000000000000000000000000".into(),
        &|_| "=?utf-8?B?SGFja2Vk?=".into(),
        &|_| "\u{202e}gnp.exe\u{200b}".into(),
        &|_| "\u{0}\u{1}\u{7f}".into(),
        &|_| "../../etc/passwd%00".into(),
        &|_| "\"Evil\" <x@y.z>, a@b.c\r\nBcc: d@e.f".into(),
        &|_| "ops@acme.example".into(),
        &|_| "2026-13-45T25:61:61Z".into(),
        &|_| "+10000-01-01T00:00:00Z".into(),
        &|_| "'; drop table keys; --".into(),
        &|rng| "é😀".repeat(rng.below(200) + 1),
        &|rng| "x".repeat(rng.below(5_000)),
        &|rng| {
            (0..rng.below(40))
                .map(|_| char::from(32 + rng.below(95) as u8))
                .collect()
        },
    ];
    rng.pick(&choices)(rng)
}

fn nasty_number(rng: &mut Rng) -> Value {
    let choices = [
        json!(0),
        json!(1),
        json!(-1),
        json!(100),
        json!(604_800),
        json!(604_801),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(1.5),
        json!(-0.0),
        json!(1e300),
    ];
    rng.pick(&choices).clone()
}

fn random_json(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => nasty_number(rng),
        3 | 4 => Value::String(nasty_string(rng)),
        5 => Value::Array((0..rng.below(5)).map(|_| random_json(rng, depth - 1)).collect()),
        _ => {
            let mut map = Map::new();
            for _ in 0..rng.below(5) {
                map.insert(nasty_string(rng), random_json(rng, depth - 1));
            }
            Value::Object(map)
        }
    }
}

/// `schema` with `$ref`s followed.
fn resolve<'a>(document: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..8 {
        match schema["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
            Some(pointer) => schema = document.pointer(pointer).unwrap_or(&Value::Null),
            None => break,
        }
    }
    schema
}

/// A value for `schema`: usually of the right shape with edge-case
/// contents, sometimes anything at all.
fn from_schema(rng: &mut Rng, document: &Value, schema: &Value, depth: usize) -> Value {
    let schema = resolve(document, schema);
    if depth == 0 || rng.chance(12) {
        return random_json(rng, 2);
    }
    if let Some(options) = schema["enum"].as_array() {
        return rng.pick(options).clone();
    }
    if let Some(options) = schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
        let option = rng.pick(options).clone();
        return from_schema(rng, document, &option, depth);
    }
    let kind = match &schema["type"] {
        Value::String(t) => t.clone(),
        Value::Array(types) => rng.pick(types).as_str().unwrap_or("null").to_owned(),
        _ if schema["properties"].is_object() => "object".into(),
        _ => return random_json(rng, 2),
    };
    match kind.as_str() {
        "object" => {
            let mut map = Map::new();
            if let Some(properties) = schema["properties"].as_object() {
                for (name, property) in properties {
                    if rng.chance(70) {
                        map.insert(name.clone(), from_schema(rng, document, property, depth - 1));
                    }
                }
            }
            if rng.chance(10) {
                map.insert(nasty_string(rng), random_json(rng, 1));
            }
            Value::Object(map)
        }
        "array" => {
            let most = if rng.chance(5) { 150 } else { 4 };
            Value::Array(
                (0..rng.below(most))
                    .map(|_| from_schema(rng, document, &schema["items"], depth - 1))
                    .collect(),
            )
        }
        "integer" | "number" => nasty_number(rng),
        "boolean" => json!(rng.chance(50)),
        "null" => Value::Null,
        _ => match schema["format"].as_str() {
            Some("date-time") => {
                // No expiry a minute away: the live keys stay live for the whole run.
                let offset = [-86_400i64, 86_400 * 3, 86_400 * 400, 253_402_300_799][rng.below(4)];
                let at = chrono::Utc::now().timestamp() + offset;
                match chrono::DateTime::from_timestamp(at, 0) {
                    Some(t) if rng.chance(80) => json!(t.to_rfc3339()),
                    _ => json!(nasty_string(rng)),
                }
            }
            Some("email") if rng.chance(60) => json!(format!("fuzz{}@acme.example", rng.below(30))),
            _ => json!(nasty_string(rng)),
        },
    }
}

/// JSON text broken a little: bytes flipped, cut, repeated or inserted.
fn mutate(rng: &mut Rng, mut bytes: Vec<u8>) -> Vec<u8> {
    for _ in 0..rng.below(4) + 1 {
        let at = rng.below(bytes.len() + 1);
        match rng.below(5) {
            0 if at < bytes.len() => bytes[at] = rng.next() as u8,
            1 => bytes.truncate(at),
            2 => {
                let piece: Vec<u8> = bytes[at..].iter().take(rng.below(20)).copied().collect();
                bytes.splice(at..at, piece);
            }
            3 => {
                let junk = *rng.pick(&[
                    &b"{"[..],
                    b"}",
                    b"\"",
                    b"\\",
                    b",",
                    b"\xff\xfe",
                    b"\0",
                    b"1e99999",
                    b"[]",
                ]);
                bytes.splice(at..at, junk.iter().copied());
            }
            _ => bytes.insert(at.min(bytes.len()), rng.next() as u8),
        }
    }
    bytes
}

/// A value in place of `original` that its field should refuse (or, now and
/// then, an odd one it takes): a wrong type, a nasty string or number,
/// `null`, the value wrapped, or — inside an array or object — one element
/// broken in turn.
fn broken_value(rng: &mut Rng, original: &Value) -> Value {
    match rng.below(9) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => nasty_number(rng),
        3 => json!(nasty_string(rng)),
        4 => json!([original]),
        5 => json!({ "value": original }),
        6 => random_json(rng, 2),
        _ => match original {
            Value::Object(_) => break_one_field(rng, original),
            Value::Array(items) if !items.is_empty() => {
                let mut items = items.clone();
                let at = rng.below(items.len());
                items[at] = broken_value(rng, &items[at]);
                Value::Array(items)
            }
            Value::Array(_) => json!([nasty_string(rng)]),
            Value::String(text) => json!(format!("{text}{}", nasty_string(rng))),
            Value::Number(_) => json!(original.to_string()),
            _ => json!(nasty_string(rng)),
        },
    }
}

/// `seed` (an object) with one thing wrong: a field broken, missing, or an
/// unknown one added.
fn break_one_field(rng: &mut Rng, seed: &Value) -> Value {
    let Some(object) = seed.as_object() else {
        return random_json(rng, 2);
    };
    let mut object = object.clone();
    let fields: Vec<String> = object.keys().cloned().collect();
    match rng.below(10) {
        _ if fields.is_empty() => {
            object.insert(nasty_string(rng), random_json(rng, 1));
        }
        0 => {
            object.insert(format!("unknown_{}", rng.below(3)), random_json(rng, 1));
        }
        1 => {
            object.remove(rng.pick(&fields));
        }
        _ => {
            let field = rng.pick(&fields).clone();
            let broken = broken_value(rng, &object[&field]);
            object.insert(field, broken);
        }
    }
    Value::Object(object)
}

fn body(rng: &mut Rng, document: &Value, target: &Target) -> Option<Vec<u8>> {
    let seed = target.seed.body.clone().unwrap_or_else(|| random_json(rng, 2));
    let shaped = |rng: &mut Rng| match &target.schema {
        Some(schema) => from_schema(rng, document, schema, 4),
        None => random_json(rng, 3),
    };
    Some(match rng.below(100) {
        0..=14 => serde_json::to_vec(&seed).unwrap(),
        15..=59 => serde_json::to_vec(&break_one_field(rng, &seed)).unwrap(),
        60..=69 => mutate(rng, serde_json::to_vec(&seed).unwrap()),
        70..=77 => serde_json::to_vec(&shaped(rng)).unwrap(),
        78..=82 => serde_json::to_vec(&random_json(rng, 4)).unwrap(),
        83..=85 => {
            let depth = rng.below(3_000) + 1;
            let (open, close) = if rng.chance(50) { ("[", "]") } else { ("{\"a\":", "}") };
            format!("{}1{}", open.repeat(depth), close.repeat(depth)).into_bytes()
        }
        86..=87 => format!("{{\"name\": \"{}\", \"type\": \"secret\"}}", "n".repeat(70 * 1024)).into_bytes(),
        88..=89 => b"{\"name\": \"\xc3\x28\xa0\xa1\", \"type\": \"secret\"}".to_vec(),
        90..=91 => b"{\"expires_at\": 1e99999999, \"limit\": -1e400}".to_vec(),
        92..=94 => b"   \n".to_vec(),
        _ => return None,
    })
}

fn junk_segment(rng: &mut Rng) -> String {
    let choices = [
        "%00",
        "..",
        "%2e%2e",
        "%252e%252e",
        "..;",
        "key_",
        "key_ZZZZZZZZZZZZZZZZZZZZZZZZZZ",
        "%c0%ae%c0%ae",
        "%ff%fe",
        "%e2%80%ae",
        "sk_live_abc",
        ";jsessionid=1",
        "%",
        "%zz",
        "a%2fb",
        "%c3%a9",
    ];
    let mut segment = rng.pick(&choices).to_string();
    if rng.chance(10) {
        segment = "k".repeat(rng.below(9_000));
    }
    segment
}

/// Every byte but the unreserved ones percent-encoded.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A query string: usually the operation's seed with one parameter broken
/// (or one more added), sometimes junk, sometimes none.
fn query(rng: &mut Rng, document: &Value, target: &Target, ammunition: &Ammunition) -> String {
    if rng.chance(20) {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = seed_query(rng, target, ammunition);
    match rng.below(10) {
        0..=5 if !pairs.is_empty() => {
            let at = rng.below(pairs.len());
            let name = pairs[at].0.clone();
            let schema = target
                .query
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(Value::Null, |(_, s)| s.clone());
            pairs[at].1 = match rng.below(3) {
                0 => match from_schema(rng, document, &schema, 2) {
                    Value::String(text) => encode(&text),
                    other => encode(&other.to_string()),
                },
                1 => encode(&nasty_string(rng)),
                _ => {
                    let (_, value) = junk_query(rng);
                    value
                }
            };
        }
        6 if !pairs.is_empty() => {
            pairs.remove(rng.below(pairs.len()));
        }
        _ => pairs.push(junk_query(rng)),
    }
    let pairs: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}={v}")).collect();
    format!("?{}", pairs.join(if rng.chance(95) { "&" } else { ";" }))
}

/// The seed's query parameters, a genuine confirmation token among them.
fn seed_query(rng: &mut Rng, target: &Target, ammunition: &Ammunition) -> Vec<(String, String)> {
    target
        .seed
        .query
        .iter()
        .map(|(name, value)| match name.as_str() {
            "token" => (name.clone(), rng.pick(&ammunition.tokens).clone()),
            _ => (name.clone(), value.clone()),
        })
        .collect()
}

/// A parameter no operation documents, or a documented one with an odd value.
fn junk_query(rng: &mut Rng) -> (String, String) {
    let names = [
        "limit",
        "cursor",
        "status",
        "type",
        "from",
        "to",
        "granularity",
        "token",
        "x",
        "%00",
        "limit[]",
        "",
    ];
    let values = [
        "5",
        "0",
        "-1",
        "101",
        "99999999999999999999",
        "active",
        "expired",
        "secret",
        "minute",
        "day",
        "2026-11-26T10:00:00Z",
        "1970-01-01T00:00:00Z",
        "%ZZ",
        "%00",
        "%ff",
        "key_01JD0000000000000000000000",
        "a+b%20c",
        "",
    ];
    (rng.pick(&names).to_string(), rng.pick(&values).to_string())
}

fn header_value(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => Vec::new(),
        1 => b"\x80\xff obs-text".to_vec(),
        2 => "v".repeat(rng.below(6_000)).into_bytes(),
        3 => b"GET".to_vec(),
        4 => b"/api/experiences/../consumers".to_vec(),
        _ => nasty_string(rng)
            .bytes()
            .filter(|b| b.is_ascii_graphic() || *b == b' ')
            .collect(),
    }
}

/// One request to send.
#[derive(Debug, Clone)]
struct Probe {
    method: Method,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

/// A valid request of an operation: the body and query parameters (values
/// percent-encoded) a careful client sends.
#[derive(Debug, Clone, Default)]
struct Seed {
    body: Option<Value>,
    query: Vec<(String, String)>,
}

struct Target {
    method: Method,
    path: String,
    schema: Option<Value>,
    /// The documented query parameters and their schemas.
    query: Vec<(String, Value)>,
    seed: Seed,
}

impl Target {
    /// Whether the operation takes input (a body or query parameters): bad
    /// input must get a validation refusal.
    fn takes_input(&self) -> bool {
        self.schema.is_some() || !self.query.is_empty()
    }

    /// The answer to input the operation refuses: a 422 with details; the
    /// confirmation link answers a 400 page.
    fn is_refusal(&self, status: u16) -> bool {
        match self.path.as_str() {
            CONFIRM_PATH => status == 400,
            _ => status == 422,
        }
    }

    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// The seed of every operation that takes input. One that is documented
/// with a body or query parameters and has no seed here fails the test.
fn seed(method: &Method, path: &str, ammunition: &Ammunition) -> Option<Seed> {
    let now = chrono::Utc::now();
    let body = |value: Value| {
        Some(Seed {
            body: Some(value),
            query: vec![],
        })
    };
    let query = |pairs: &[(&str, String)]| {
        Some(Seed {
            body: None,
            query: pairs.iter().map(|(n, v)| (n.to_string(), v.clone())).collect(),
        })
    };
    match (method.as_str(), path) {
        ("POST", "/v1/keys") => body(json!({
            "name": "fuzz seed", "type": "secret", "scopes": ["read:experiences", "read:consumers"],
            "expires_at": (now + chrono::Duration::days(400)).to_rfc3339()
        })),
        ("GET", "/v1/keys") => query(&[
            ("status", "active".into()),
            ("type", "secret".into()),
            ("limit", "5".into()),
        ]),
        ("PATCH", "/v1/keys/{id}") => body(json!({"name": "fuzz renamed", "scopes": ["admin"], "expires_at": null})),
        ("POST", "/v1/keys/{id}/regenerate") => body(json!({"expire_old_in_seconds": 60})),
        ("GET", "/v1/keys/{id}/usage") => query(&[
            ("from", encode(&(now - chrono::Duration::days(1)).to_rfc3339())),
            ("to", encode(&now.to_rfc3339())),
            ("granularity", "hour".into()),
        ]),
        ("GET", "/v1/keys/{id}/events") => query(&[("limit", "5".into())]),
        // The list is emptied, never grown: saving it always works (no
        // confirmation email, so never the daily cap).
        ("PATCH", "/v1/org") => body(json!({
            "alert_emails": [], "rotation_days": 90, "alert_settings": {"unused_days": 30}
        })),
        ("GET", CONFIRM_PATH) => query(&[("token", ammunition.tokens[0].clone())]),
        ("POST", "/v1/portal/sessions") => body(json!({"user": "fuzz@acme.example"})),
        // A key that was never issued: a false positive, nothing changes.
        ("POST", "/v1/leaks") => body(json!([{
            "token": keyledger_events::domain::PlainKey::encode(keyledger_events::domain::KeyType::Secret, &[9; 32]).expose(),
            "type": "keyledger_secret_key", "url": "https://github.com/octocat/hello/blob/1/x.env", "source": "content"
        }])),
        ("POST", "/v1/webhooks") => body(json!({
            "url": "https://hooks.example.com/keyledger?fuzz=1",
            "events": ["key.created", "key.deactivated", "alert.raised"],
            "description": "fuzz seed"
        })),
        ("PATCH", "/v1/webhooks/{webhook_id}") => body(json!({
            "url": "https://hooks.example.com/renamed", "events": ["*"], "description": "fuzz renamed", "disabled": false
        })),
        ("GET", "/v1/webhooks/{webhook_id}/deliveries") => query(&[("limit", "5".into())]),
        ("POST", "/v1/webhooks/{webhook_id}/replay") => body(json!({
            "since": (now - chrono::Duration::hours(1)).to_rfc3339()
        })),
        ("POST", "/v1/verify") => body(json!({
            "key": ammunition.others[1], "scopes": ["read:experiences"], "environment": "live"
        })),
        _ => None,
    }
}

fn targets(document: &Value, ammunition: &Ammunition) -> Vec<Target> {
    let mut targets = vec![];
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            if !["GET", "POST", "PATCH", "PUT", "DELETE"].contains(&method.as_str()) {
                continue;
            }
            let parameters = item["parameters"].as_array().into_iter().flatten();
            let query: Vec<(String, Value)> = parameters
                .chain(operation["parameters"].as_array().into_iter().flatten())
                .map(|p| resolve(document, p))
                .filter(|p| p["in"] == "query")
                .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["schema"].clone())))
                .collect();
            let schema = operation["requestBody"]["content"]["application/json"]["schema"]
                .as_object()
                .map(|s| Value::Object(s.clone()));
            let takes_input = schema.is_some() || !query.is_empty();
            let seed = match seed(&method, path, ammunition) {
                Some(seed) => seed,
                None if takes_input => panic!("{method} {path} takes input: give it a seed (fuzz.rs, `seed`)"),
                None => Seed::default(),
            };
            targets.push(Target {
                method,
                path: path.clone(),
                schema,
                query,
                seed,
            });
        }
    }
    targets
}

/// What the probes may use: the admin key, keys to aim at, confirmation
/// tokens that work.
struct Ammunition {
    admin: String,
    /// Real keys without the admin scope or of the test environment:
    /// `[test key with admin, public key]`.
    others: Vec<String>,
    /// Live keys for every per-key operation but `DELETE`.
    key_ids: Vec<String>,
    /// Keys only `DELETE` aims at.
    disposable: Vec<String>,
    /// Webhook endpoints for every per-endpoint operation but `DELETE`.
    webhook_ids: Vec<String>,
    /// Webhook endpoints only `DELETE` aims at.
    disposable_webhooks: Vec<String>,
    /// Genuine links of another organization, whose list the probes never
    /// change: each confirms once, then says it already did.
    tokens: Vec<String>,
    /// The leak reporter's key (its identifier and signing key): most
    /// probes of `/v1/leaks` are signed, so they reach its validation.
    reporter: (String, p256::ecdsa::SigningKey),
}

/// Signs a probe of `/v1/leaks` as a secret scanner would (over its body as sent).
fn sign_leak_report(probe: &mut Probe, ammunition: &Ammunition) {
    use base64::Engine;
    use p256::ecdsa::signature::Signer;
    let (id, key) = &ammunition.reporter;
    let signature: p256::ecdsa::Signature = key.sign(probe.body.as_deref().unwrap_or_default());
    let encoded = base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
    probe
        .headers
        .push(("github-public-key-identifier".into(), id.clone().into_bytes()));
    probe
        .headers
        .push(("github-public-key-signature".into(), encoded.into_bytes()));
}

/// The request as a careful client sends it: the admin key, a live key
/// (a disposable one for `DELETE`), the seed.
fn control(rng: &mut Rng, target: &Target, ammunition: &Ammunition) -> Probe {
    let (id, webhook_id) = if target.method == Method::DELETE {
        (
            rng.pick(&ammunition.disposable),
            rng.pick(&ammunition.disposable_webhooks),
        )
    } else {
        (rng.pick(&ammunition.key_ids), rng.pick(&ammunition.webhook_ids))
    };
    let mut path = target
        .path
        .replace("{id}", id)
        .replace("{webhook_id}", webhook_id)
        .replace("{path}", "api/experiences/1");
    let pairs: Vec<String> = seed_query(rng, target, ammunition)
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    if !pairs.is_empty() {
        path = format!("{path}?{}", pairs.join("&"));
    }
    let mut headers = vec![(
        "authorization".to_owned(),
        format!("Bearer {}", ammunition.admin).into_bytes(),
    )];
    if target.path == "/v1/auth" {
        headers.push(("x-original-method".into(), b"GET".to_vec()));
        headers.push(("x-original-uri".into(), b"/api/experiences/1".to_vec()));
    }
    let body = target.seed.body.as_ref().map(|seed| {
        headers.push(("content-type".into(), b"application/json".to_vec()));
        serde_json::to_vec(seed).unwrap()
    });
    let mut probe = Probe {
        method: target.method.clone(),
        path,
        headers,
        body,
    };
    if target.path == "/v1/leaks" {
        sign_leak_report(&mut probe, ammunition);
    }
    probe
}

fn probe(rng: &mut Rng, document: &Value, target: &Target, ammunition: &Ammunition) -> Probe {
    if rng.chance(10) {
        return control(rng, target, ammunition);
    }
    let admin = &ammunition.admin;
    let (aimed, aimed_webhooks) = if target.method == Method::DELETE {
        (&ammunition.disposable, &ammunition.disposable_webhooks)
    } else {
        (&ammunition.key_ids, &ammunition.webhook_ids)
    };
    let mut path = target.path.clone();
    let (id, webhook_id) = match rng.below(10) {
        0..=6 => (rng.pick(aimed).clone(), rng.pick(aimed_webhooks).clone()),
        7 => (KeyId::new().to_string(), WebhookId::new().to_string()),
        _ => (junk_segment(rng), junk_segment(rng)),
    };
    path = path.replace("{id}", &id).replace("{webhook_id}", &webhook_id);
    let tail: Vec<String> = (0..rng.below(4)).map(|_| junk_segment(rng)).collect();
    path = path.replace(
        "{path}",
        &if rng.chance(50) {
            "api/experiences/1".into()
        } else {
            tail.join("/")
        },
    );
    if rng.chance(5) {
        path = match rng.below(3) {
            0 => format!("{path}/"),
            1 => path.replacen('/', "//", 1),
            _ => format!("{path}/{}", junk_segment(rng)),
        };
    }
    path.push_str(&query(rng, document, target, ammunition));
    // Never DELETE in place of another method: a live key would go.
    let method = if rng.chance(4) {
        rng.pick(&[Method::PUT, Method::OPTIONS, Method::HEAD, Method::TRACE, Method::POST])
            .clone()
    } else {
        target.method.clone()
    };
    let mut headers: Vec<(String, Vec<u8>)> = vec![];
    let auth: Option<Vec<u8>> = match rng.below(100) {
        0..=64 => Some(format!("Bearer {admin}").into_bytes()),
        65..=74 => None,
        75..=79 => Some(format!("Bearer {}", &admin[..admin.len() - 1]).into_bytes()),
        80..=84 => Some(format!("bearer   {admin}  ").into_bytes()),
        85..=87 => Some(b"Basic dXNlcjpwYXNz".to_vec()),
        88..=89 => Some(format!("Bearer {}", rng.pick(&ammunition.others)).into_bytes()),
        90..=94 => Some(format!("Bearer {}", "sk_test_".to_owned() + &"0".repeat(49)).into_bytes()),
        _ => Some(header_value(rng)),
    };
    if let Some(auth) = auth {
        headers.push(("authorization".into(), auth));
    }
    let content_type = match rng.below(20) {
        0 => None,
        1 => Some(b"text/plain".to_vec()),
        2 => Some(b"application/json; charset=latin1".to_vec()),
        3 => Some(b"application/x-www-form-urlencoded".to_vec()),
        4 => Some(header_value(rng)),
        _ => Some(b"application/json".to_vec()),
    };
    if let Some(content_type) = content_type {
        headers.push(("content-type".into(), content_type));
    }
    for _ in 0..rng.below(3) {
        let name = rng
            .pick(&[
                "x-request-id",
                "idempotency-key",
                "x-original-method",
                "x-original-uri",
                "x-forwarded-method",
                "x-forwarded-uri",
                "x-forwarded-for",
                "x-real-ip",
                "accept",
                "accept-encoding",
                "cookie",
                "origin",
            ])
            .to_string();
        headers.push((name, header_value(rng)));
    }
    let body = if matches!(method, Method::POST | Method::PATCH | Method::PUT) || rng.chance(10) {
        body(rng, document, target)
    } else {
        None
    };
    let mut probe = Probe {
        method,
        path,
        headers,
        body,
    };
    if target.path == "/v1/leaks" && !rng.chance(10) {
        sign_leak_report(&mut probe, ammunition);
    }
    probe
}

/// Sends one probe on a connection of its own (`Connection: close`, so no
/// pooled connection the server already closed is ever reused): the
/// status, or why there was none (a dropped connection, a timeout).
async fn send(client: &awc::Client, base: &str, probe: &Probe) -> Result<(u16, bool), String> {
    let mut request = client
        .request(probe.method.clone(), format!("{base}{}", probe.path))
        .force_close();
    for (name, value) in &probe.headers {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            request = request.insert_header((name.as_str(), value));
        }
    }
    let sent = match &probe.body {
        Some(bytes) => request.send_body(bytes.clone()).await,
        None => request.send().await,
    };
    let mut response = sent.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let has_request_id = response.headers().contains_key("x-request-id");
    response
        .body()
        .limit(4 << 20)
        .await
        .map_err(|e| format!("answer body: {e}"))?;
    Ok((status, has_request_id))
}

fn meta() -> EventMeta {
    EventMeta {
        actor: "test".into(),
        request_id: None,
        occurred_at: chrono::Utc::now(),
    }
}

/// An app whose organization and failure guard never get in the way, and
/// what the probes aim at.
async fn fuzz_app() -> (TestApp, Ammunition) {
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    let reporter_key = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
    let reporter_id = "fuzz-reporter".to_owned();
    let document = json!({"public_keys": [{
        "key_identifier": reporter_id,
        "key": reporter_key.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
        "is_current": true,
    }]});
    let leak_report_keys = keyledger_api::leaks::LeakReportKeys::parse(&document.to_string()).unwrap();
    let app = spawn_app_with(
        keyledger_api::ApiSettings {
            leak_report_keys: Some(std::sync::Arc::new(leak_report_keys)),
            failed_attempts_per_minute: u32::MAX,
            max_webhooks_per_org: 100_000,
            ..keyledger_api::ApiSettings::default()
        },
        false,
    )
    .await;
    let command = OrgCommand::ChangePlan(
        keyledger_events::domain::org::ChangePlanRequest {
            plan: "enterprise".into(),
            rate_limit: Some(10_000_000),
        }
        .parse(),
    );
    let stream = org::stream_id(app.org_id.parse().unwrap());
    handler::execute::<Org>(&app.pool, &stream, command, &meta(), |_| Ok(()))
        .await
        .unwrap();
    // The plan change reaches the key cache by notification.
    crate::support::eventually(Duration::from_secs(5), || async {
        match app.get("/v1/org").await.header("x-ratelimit-limit") {
            Some("10000000") => Ok(()),
            other => Err(format!("the new limit did not apply (x-ratelimit-limit {other:?})")),
        }
    })
    .await;
    let mut key_ids = vec![];
    for n in 0..6 {
        let key = app
            .create_key(json!({"name": format!("fuzz target {n}"), "type": "secret"}))
            .await;
        key_ids.push(key["id"].as_str().unwrap().to_owned());
    }
    let mut disposable = vec![];
    for n in 0..DISPOSABLE_KEYS {
        let key = app
            .create_key(json!({"name": format!("fuzz disposable {n}"), "type": "secret"}))
            .await;
        disposable.push(key["id"].as_str().unwrap().to_owned());
    }
    let (mut webhook_ids, mut disposable_webhooks) = (vec![], vec![]);
    for n in 0..(3 + DISPOSABLE_KEYS) {
        let url = format!("https://hooks.example.com/fuzz/{n}");
        let endpoint = app.post("/v1/webhooks", json!({"url": url})).await;
        let id = endpoint.expect(201)["id"].as_str().unwrap().to_owned();
        if n < 3 {
            webhook_ids.push(id);
        } else {
            disposable_webhooks.push(id);
        }
    }
    let mut others = vec![];
    for (key_type, scopes) in [("test", json!(["admin"])), ("public", json!(["read:experiences"]))] {
        let key = app
            .create_key(json!({"name": "fuzz other", "type": key_type, "scopes": scopes}))
            .await;
        others.push(key["key"].as_str().unwrap().to_owned());
    }
    // Another organization asks ten addresses to confirm: their links.
    let (other_org, other_admin) = app.other_org().await;
    let addresses: Vec<String> = (0..10).map(|n| format!("fuzz{n}@acme.example")).collect();
    call(
        &app.address,
        Method::PATCH,
        "/v1/org",
        Some(&other_admin),
        Some(json!({ "alert_emails": addresses })),
        &[],
    )
    .await
    .expect(200);
    let org_id: OrgId = other_org.parse().unwrap();
    let requests: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "select data ->> 'email', occurred_at from events
         where stream_id = $1 and type = 'org.alert_recipient_confirmation_requested'",
    )
    .bind(org::stream_id(org_id))
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(requests.len(), 10);
    let tokens = requests
        .iter()
        .map(|(email, requested_at)| {
            Confirmation {
                org_id,
                email: EmailAddress::parse(email).unwrap(),
                requested_at: *requested_at,
            }
            .token(&app.hash_key)
        })
        .collect();
    let ammunition = Ammunition {
        admin: app.admin_key.clone(),
        others,
        key_ids,
        disposable,
        webhook_ids,
        disposable_webhooks,
        tokens,
        reporter: (reporter_id, reporter_key),
    };
    (app, ammunition)
}

fn shorten(text: &str) -> String {
    text.chars().take(200).collect()
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[actix_web::test]
async fn thousands_of_random_and_mutated_requests_get_no_5xx_and_no_dropped_connection() {
    let seed = env_number("KEYLEDGER_FUZZ_SEED", DEFAULT_SEED);
    let total = env_number("KEYLEDGER_FUZZ_REQUESTS", DEFAULT_REQUESTS as u64) as usize;
    let (app, ammunition) = fuzz_app().await;
    let document = app.get("/openapi.json").await.expect(200).clone();
    let targets = targets(&document, &ammunition);
    assert!(targets.len() >= 20, "only {} operations", targets.len());
    let mut rng = Rng(seed);
    let client = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    // Per operation: how many 2xx answers, and how many refusals of input.
    let mut per_target = vec![(0usize, 0usize); targets.len()];
    let mut failures = vec![];
    let mut number = 0;
    while number < total {
        let batch: Vec<(usize, usize, Probe)> = (0..PARALLEL.min(total - number))
            .map(|i| {
                // Every operation in turn, so each gets its share.
                let index = (number + i) % targets.len();
                (
                    number + i,
                    index,
                    probe(&mut rng, &document, &targets[index], &ammunition),
                )
            })
            .collect();
        number += batch.len();
        let answers =
            futures_util::future::join_all(batch.iter().map(|(_, _, p)| send(&client, &app.address, p))).await;
        for ((n, index, probe), answer) in batch.iter().zip(answers) {
            match answer {
                Ok((status, has_request_id)) => {
                    *statuses.entry(status).or_default() += 1;
                    if probe.method == targets[*index].method {
                        if (200..300).contains(&status) {
                            per_target[*index].0 += 1;
                        } else if targets[*index].is_refusal(status) {
                            per_target[*index].1 += 1;
                        }
                    }
                    if status >= 500 || !has_request_id {
                        failures.push(format!(
                            "#{n}: {status}{} for {} {} {:?}",
                            if has_request_id { "" } else { " without X-Request-Id" },
                            probe.method,
                            shorten(&probe.path),
                            probe
                                .body
                                .as_ref()
                                .map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned())
                        ))
                    }
                }
                Err(e) => failures.push(format!(
                    "#{n}: no answer ({e}) for {} {}",
                    probe.method,
                    shorten(&probe.path)
                )),
            }
        }
    }
    println!("fuzz seed {seed:#x}: {total} requests, statuses {statuses:?}");
    for (target, (successes, refusals)) in targets.iter().zip(&per_target) {
        println!(
            "  {:<45} 2xx: {successes:>3}, refused input: {refusals:>3}",
            target.name()
        );
    }
    assert!(failures.is_empty(), "seed {seed:#x}:\n{}", failures.join("\n"));
    // The probes reached every handler: each operation succeeded at least
    // once, and each that takes input refused some.
    let mut missing = vec![];
    for (target, (successes, refusals)) in targets.iter().zip(&per_target) {
        // `/v1/auth/{path}` is the envoy style's; this server has the default
        // (nginx) style, where it refuses every request with a 400.
        let envoy_only = target.path == "/v1/auth/{path}";
        if *successes == 0 && !envoy_only {
            missing.push(format!("{}: no 2xx", target.name()));
        }
        if target.takes_input() && *refusals == 0 {
            missing.push(format!("{}: no refusal of its input", target.name()));
        }
    }
    assert!(missing.is_empty(), "seed {seed:#x}: {missing:#?}\n{per_target:?}");
    raw_http(&app).await;
}

/// Requests no HTTP client library would send: each gets an answer below
/// 500 (mostly 400) before the server closes the connection.
async fn raw_http(app: &TestApp) {
    let address = app.address.trim_start_matches("http://").to_owned();
    let admin = &app.admin_key;
    let requests: Vec<Vec<u8>> = vec![
        b"GET /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x80\xff\r\n\r\n".to_vec(),
        b"GET /v1/keys/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /v1/keys\0 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET http://evil.example/v1/org HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /v1/org HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\r\n b\r\n\r\n".to_vec(),
        b"GET /v1/org HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n".to_vec(),
        b"GET /v1/org HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
        b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(),
        b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
        b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
        format!("PATCH /v1/org HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Type: application/json\r\nContent-Length: 99999999999999999999\r\n\r\n{{}}").into_bytes(),
        format!("GET /v1/keys?{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\n\r\n", "a=1&".repeat(4_000)).into_bytes(),
        format!("GET /v1/org HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nX-Big: {}\r\n\r\n", "b".repeat(40_000)).into_bytes(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n".to_vec(),
    ];
    let mut failures = vec![];
    for (n, request) in requests.iter().enumerate() {
        let shown = String::from_utf8_lossy(&request[..request.len().min(120)]).into_owned();
        match raw_exchange(&address, request).await {
            Some(status) if status < 500 => {}
            Some(status) => failures.push(format!("raw #{n}: {status} for {shown:?}")),
            None => failures.push(format!("raw #{n}: no answer for {shown:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The status of the answer to `request`, if one came before the server closed.
async fn raw_exchange(address: &str, request: &[u8]) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    // The server may refuse before reading everything; what it answers counts.
    let _ = stream.write_all(request).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    if read.is_err() && answer.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()
}
