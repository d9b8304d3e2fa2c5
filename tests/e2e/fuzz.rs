//! The API under fuzzing: a few thousand random and mutated requests to
//! every operation `GET /openapi.json` lists — JSON bodies built from each
//! operation's schema and then broken (wrong types, unknown fields, byte
//! flips, truncation, deep nesting, huge numbers, invalid UTF-8), odd
//! headers, paths and query strings — with the admin key, with bad keys and
//! without, against the real server; then malformed HTTP over raw sockets.
//! Any 5xx, an answer without `X-Request-Id`, or a connection dropped
//! without an answer fails the test, naming the request.
//!
//! Deterministic: the requests come from a seeded generator
//! (`KEYLEDGER_FUZZ_SEED`, default below; `KEYLEDGER_FUZZ_REQUESTS` sets
//! how many), so a failure reproduces with the same seed.

use std::collections::BTreeMap;
use std::time::Duration;

use awc::http::{header::HeaderValue, Method};
use keyledger_events::domain::{confirmation::Confirmation, org, EmailAddress, KeyId, Org, OrgCommand};
use keyledger_events::handler;
use keyledger_events::log::EventMeta;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{spawn_app_with, TestApp};

const DEFAULT_SEED: u64 = 0x6b65_796c_6564_6765;
const DEFAULT_REQUESTS: usize = 5_000;
/// Requests in flight at once.
const PARALLEL: usize = 8;

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
                let offset = [-86_400i64, 60, 86_400 * 3, 86_400 * 400, 253_402_300_799][rng.below(5)];
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

fn body(rng: &mut Rng, document: &Value, schema: Option<&Value>) -> Option<Vec<u8>> {
    let shaped = |rng: &mut Rng| match schema {
        Some(schema) => from_schema(rng, document, schema, 4),
        None => random_json(rng, 3),
    };
    Some(match rng.below(100) {
        0..=39 => serde_json::to_vec(&shaped(rng)).unwrap(),
        40..=59 => {
            let text = serde_json::to_vec(&shaped(rng)).unwrap();
            mutate(rng, text)
        }
        60..=74 => serde_json::to_vec(&random_json(rng, 4)).unwrap(),
        75..=79 => {
            let depth = rng.below(3_000) + 1;
            let (open, close) = if rng.chance(50) { ("[", "]") } else { ("{\"a\":", "}") };
            format!("{}1{}", open.repeat(depth), close.repeat(depth)).into_bytes()
        }
        80..=82 => format!("{{\"name\": \"{}\", \"type\": \"secret\"}}", "n".repeat(70 * 1024)).into_bytes(),
        83..=86 => b"{\"name\": \"\xc3\x28\xa0\xa1\", \"type\": \"secret\"}".to_vec(),
        87..=89 => b"{\"expires_at\": 1e99999999, \"limit\": -1e400}".to_vec(),
        90..=94 => b"   \n".to_vec(),
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

/// A query string: mostly the operation's own parameters with values of
/// their schema at its edges, sometimes anything.
fn query(rng: &mut Rng, document: &Value, target: &Target, tokens: &[String]) -> String {
    if rng.chance(30) {
        return String::new();
    }
    let mut pairs = vec![];
    for (name, schema) in &target.query {
        if !rng.chance(60) {
            continue;
        }
        let value = if name == "token" && rng.chance(60) {
            rng.pick(tokens).clone()
        } else {
            match from_schema(rng, document, schema, 2) {
                Value::String(text) => encode(&text),
                other => encode(&other.to_string()),
            }
        };
        pairs.push(format!("{name}={value}"));
    }
    if pairs.is_empty() || rng.chance(25) {
        pairs.push(junk_query(rng));
    }
    format!("?{}", pairs.join(if rng.chance(95) { "&" } else { ";" }))
}

fn junk_query(rng: &mut Rng) -> String {
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
    format!("{}={}", rng.pick(&names), rng.pick(&values))
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

struct Target {
    method: Method,
    path: String,
    schema: Option<Value>,
    /// The documented query parameters and their schemas.
    query: Vec<(String, Value)>,
}

fn targets(document: &Value) -> Vec<Target> {
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
            let query = parameters
                .chain(operation["parameters"].as_array().into_iter().flatten())
                .map(|p| resolve(document, p))
                .filter(|p| p["in"] == "query")
                .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["schema"].clone())))
                .collect();
            targets.push(Target {
                method,
                path: path.clone(),
                schema: operation["requestBody"]["content"]["application/json"]["schema"]
                    .as_object()
                    .map(|s| Value::Object(s.clone())),
                query,
            });
        }
    }
    targets
}

/// What the probes may use: the admin key, keys to aim at, genuine
/// confirmation tokens (which the API still refuses: none is the newest).
struct Ammunition {
    admin: String,
    /// Real keys without the admin scope or of the test environment.
    others: Vec<String>,
    key_ids: Vec<String>,
    tokens: Vec<String>,
}

fn probe(rng: &mut Rng, document: &Value, target: &Target, ammunition: &Ammunition) -> Probe {
    let (admin, key_ids) = (&ammunition.admin, &ammunition.key_ids);
    let mut path = target.path.clone();
    let id = match rng.below(10) {
        0..=5 => rng.pick(key_ids).clone(),
        6 => KeyId::new().to_string(),
        _ => junk_segment(rng),
    };
    path = path.replace("{id}", &id);
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
    path.push_str(&query(rng, document, target, &ammunition.tokens));
    let method = if rng.chance(4) {
        rng.pick(&[
            Method::PUT,
            Method::OPTIONS,
            Method::HEAD,
            Method::TRACE,
            Method::DELETE,
            Method::POST,
        ])
        .clone()
    } else {
        target.method.clone()
    };
    let mut headers: Vec<(String, Vec<u8>)> = vec![];
    let auth: Option<Vec<u8>> = match rng.below(100) {
        0..=59 => Some(format!("Bearer {admin}").into_bytes()),
        60..=74 => None,
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
        body(rng, document, target.schema.as_ref())
    } else {
        None
    };
    Probe {
        method,
        path,
        headers,
        body,
    }
}

/// Sends one probe; the status, or why there was none.
async fn send(client: &awc::Client, base: &str, probe: &Probe) -> Result<(u16, bool), String> {
    let mut request = client.request(probe.method.clone(), format!("{base}{}", probe.path));
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

/// An app whose organization and failure guard never get in the way.
async fn fuzz_app() -> (TestApp, Ammunition) {
    let app = spawn_app_with(&[], |settings| settings.failed_attempts_per_minute = u32::MAX).await;
    let meta = EventMeta {
        actor: "test".into(),
        request_id: None,
        occurred_at: chrono::Utc::now(),
    };
    let command = OrgCommand::ChangePlan {
        plan: "enterprise".into(),
        rate_limit: Some(10_000_000),
    };
    let stream = org::stream_id(app.org_id.parse().unwrap());
    handler::execute::<Org>(&app.pool, &stream, command, &meta, |_| Ok(()))
        .await
        .unwrap();
    // The plan change reaches the key cache by notification.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.get("/v1/org").await.header("x-ratelimit-limit") != Some("10000000") {
        assert!(std::time::Instant::now() < deadline, "the new limit did not apply");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut key_ids = vec![];
    for n in 0..6 {
        let key = app
            .create_key(json!({"name": format!("fuzz target {n}"), "type": "secret"}))
            .await;
        key_ids.push(key["id"].as_str().unwrap().to_owned());
    }
    let mut others = vec![];
    for (key_type, scopes) in [("test", json!(["admin"])), ("public", json!(["read:experiences"]))] {
        let key = app
            .create_key(json!({"name": "fuzz other", "type": key_type, "scopes": scopes}))
            .await;
        others.push(key["key"].as_str().unwrap().to_owned());
    }
    let tokens = (0..8)
        .map(|n| {
            Confirmation {
                org_id: app.org_id.parse().unwrap(),
                email: EmailAddress::parse(&format!("fuzz{n}@acme.example")).unwrap(),
                requested_at: chrono::Utc::now() - chrono::Duration::hours(n),
            }
            .token(&app.hash_key)
        })
        .collect();
    let ammunition = Ammunition {
        admin: app.admin_key.clone(),
        others,
        key_ids,
        tokens,
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
    let targets = targets(&document);
    assert!(targets.len() >= 20, "only {} operations", targets.len());
    let mut rng = Rng(seed);
    let client = awc::Client::builder().timeout(Duration::from_secs(20)).finish();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut failures = vec![];
    let mut number = 0;
    while number < total {
        let batch: Vec<(usize, Probe)> = (0..PARALLEL.min(total - number))
            .map(|i| {
                // Every operation in turn, so each gets its share.
                let target = &targets[(number + i) % targets.len()];
                (number + i, probe(&mut rng, &document, target, &ammunition))
            })
            .collect();
        number += batch.len();
        let answers = futures_util::future::join_all(batch.iter().map(|(_, p)| send(&client, &app.address, p))).await;
        for ((n, probe), answer) in batch.iter().zip(answers) {
            // A pooled connection the server closed between two requests is
            // not a dropped answer: such a probe is sent once more, alone.
            let answer = match answer {
                Err(_) => send(&awc::Client::default(), &app.address, probe).await,
                ok => ok,
            };
            match answer {
                Ok((status, has_request_id)) => {
                    *statuses.entry(status).or_default() += 1;
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
    assert!(failures.is_empty(), "seed {seed:#x}:\n{}", failures.join("\n"));
    // The fuzz reached the handlers, not only the front door.
    for status in [200, 201, 204, 400, 401, 403, 404, 410, 413, 422] {
        assert!(statuses.contains_key(&status), "no {status} among {statuses:?}");
    }
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
