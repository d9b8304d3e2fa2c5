//! Webhooks end to end: endpoints over the API, the delivery worker's steps
//! driven with a chosen clock, a real HTTP receiver in this process (an
//! actix server on port 0 that answers as each test scripts it), signatures
//! checked with the Standard Webhooks reference library (`standardwebhooks`
//! on crates.io, independent of our signer), a real SMTP server for the
//! email of an endpoint disabled after 5 failing days, and two real `keyledger
//! work` processes for "each event once per endpoint".

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::{DateTime, Utc};
use keyledger_workers::webhooks::client::{SendError, WebhookClient};
use keyledger_workers::webhooks::{Sent, Webhooks};
use serde_json::{json, Value};

use crate::alerts::{deliver, OPS};
use crate::binary::{create_org, keyledger, temp_dir, Server, HASH_KEY};
use crate::smtp::MailServer;
use crate::support::{
    call, eventually, settle, spawn_app, spawn_app_with, spawn_app_with_settings_and_alert_emails, TestApp,
};

/// One request as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Shared {
    got: Mutex<Vec<Received>>,
    /// The statuses of the next answers, then `fallback` for the rest.
    script: Mutex<VecDeque<u16>>,
    fallback: u16,
}

/// A real HTTP server in the test process that records what it receives.
struct Receiver {
    port: u16,
    shared: Arc<Shared>,
}

impl Receiver {
    fn start(script: &[u16], fallback: u16) -> Receiver {
        let shared = Arc::new(Shared {
            got: Mutex::default(),
            script: Mutex::new(script.iter().copied().collect()),
            fallback,
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || App::new().app_data(data.clone()).default_service(web::to(receive)))
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
        actix_web::rt::spawn(server);
        Receiver { port, shared }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn got(&self) -> Vec<Received> {
        self.shared.got.lock().unwrap().clone()
    }
}

async fn receive(req: HttpRequest, body: web::Bytes, shared: web::Data<Shared>) -> HttpResponse {
    let mut headers = http::HeaderMap::new();
    for (name, value) in req.headers() {
        headers.append(
            http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    shared.got.lock().unwrap().push(Received {
        headers,
        body: body.to_vec(),
    });
    let status = shared.script.lock().unwrap().pop_front().unwrap_or(shared.fallback);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).body("noted")
}

/// An app whose operator allows private destinations (the receiver is on 127.0.0.1).
async fn private_app() -> TestApp {
    spawn_app_with(allow_private(), false).await
}

fn allow_private() -> keyledger_api::ApiSettings {
    keyledger_api::ApiSettings {
        webhook_allow_private: true,
        ..keyledger_api::ApiSettings::default()
    }
}

/// The delivery worker of `app`'s deployment, retrying after 1 s.
fn worker(app: &TestApp, allow_private: bool) -> Webhooks {
    let mut webhooks = Webhooks::new(
        app.pool.clone(),
        app.hash_key.clone(),
        WebhookClient::new(allow_private),
    );
    webhooks.first_backoff = Duration::from_secs(1);
    webhooks
}

/// Runs the enqueue step until every committed event is read.
async fn enqueue(app: &TestApp, webhooks: &Webhooks) {
    settle(&app.pool).await;
    while webhooks.enqueue_once().await.unwrap() > 0 {}
}

async fn create_endpoint(app: &TestApp, url: &str, events: Value) -> (String, String) {
    let answer = app
        .post(
            "/v1/webhooks",
            json!({"url": url, "events": events, "description": "test receiver"}),
        )
        .await;
    let body = answer.expect(201).clone();
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let secret = body["secret"].as_str().unwrap().to_owned();
    (body["id"].as_str().unwrap().to_owned(), secret)
}

async fn event_id(app: &TestApp, key_id: &str, event_type: &str) -> String {
    let id: uuid::Uuid = sqlx::query_scalar("select event_id from events where stream_id = $1 and type = $2")
        .bind(format!("key-{key_id}"))
        .bind(event_type)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    id.to_string()
}

async fn log(app: &TestApp, endpoint: &str) -> Vec<Value> {
    app.get(&format!("/v1/webhooks/{endpoint}/deliveries"))
        .await
        .expect(200)["data"]
        .as_array()
        .unwrap()
        .clone()
}

fn sent(succeeded: usize, retrying: usize, failed: usize) -> Sent {
    Sent {
        succeeded,
        retrying,
        failed,
        disabled: 0,
    }
}

#[actix_web::test]
async fn deactivating_a_key_delivers_one_key_deactivated_that_the_reference_verifier_accepts() {
    let app = private_app().await;
    let receiver = Receiver::start(&[], 200);
    let (endpoint, secret) = create_endpoint(
        &app,
        &receiver.url("/hooks?source=keyledger"),
        json!(["key.deactivated"]),
    )
    .await;
    assert!(secret.starts_with("whsec_") && secret.len() >= 6 + 32, "{secret}");
    let key = app
        .create_key(json!({"name": "Checkout backend", "type": "secret"}))
        .await;
    let key_id = key["id"].as_str().unwrap();
    app.post(&format!("/v1/keys/{key_id}/deactivate"), json!({}))
        .await
        .expect(200);
    let webhooks = worker(&app, true);
    enqueue(&app, &webhooks).await;
    assert_eq!(webhooks.send_once(Utc::now()).await.unwrap(), sent(1, 0, 0));
    // Nothing more: the key's creation is not subscribed to, the
    // deactivation was delivered.
    enqueue(&app, &webhooks).await;
    assert_eq!(webhooks.send_once(Utc::now()).await.unwrap(), Sent::default());

    let got = receiver.got();
    assert_eq!(got.len(), 1, "{got:#?}");
    let request = &got[0];
    standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&request.body, &request.headers)
        .expect("the reference verifier accepts the signature");
    assert!(standardwebhooks::Webhook::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
        .unwrap()
        .verify(&request.body, &request.headers)
        .is_err());
    assert_eq!(
        request.header("webhook-id"),
        event_id(&app, key_id, "key.deactivated").await
    );
    assert_eq!(request.header("content-type"), "application/json");
    let body = request.json();
    assert_eq!(body["type"], "key.deactivated");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["data"]["id"], key_id);
    assert_eq!(body["data"]["object"], "api_key");
    assert_eq!(body["data"]["status"], "inactive");
    assert_eq!(body["data"]["name"], "Checkout backend");
    assert!(body["data"].get("key").is_none());

    let log = log(&app, &endpoint).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["type"], "key.deactivated");
    assert_eq!(log[0]["status"], "succeeded");
    assert_eq!(log[0]["status_code"], 200);
    assert_eq!(log[0]["attempt_count"], 1);
    assert_eq!(log[0]["event_id"], request.header("webhook-id"));
}

#[actix_web::test]
async fn a_receiver_that_fails_twice_gets_the_event_on_the_third_attempt_and_the_log_shows_all_three() {
    let app = private_app().await;
    let receiver = Receiver::start(&[500, 503], 204);
    let (endpoint, _) = create_endpoint(&app, &receiver.url("/in"), json!(["*"])).await;
    let key = app.create_key(json!({"name": "Flaky", "type": "secret"})).await;
    let webhooks = worker(&app, true);
    enqueue(&app, &webhooks).await;
    let t0 = Utc::now();
    assert_eq!(webhooks.send_once(t0).await.unwrap(), sent(0, 1, 0));
    // Not due again before the backoff (1 s, then 2 s) has passed.
    assert_eq!(webhooks.send_once(t0).await.unwrap(), Sent::default());
    let pending = log(&app, &endpoint).await;
    assert_eq!(pending[0]["status"], "pending");
    let retry_at: DateTime<Utc> = pending[0]["next_retry_at"].as_str().unwrap().parse().unwrap();
    assert!(
        retry_at > t0 && retry_at <= t0 + chrono::Duration::seconds(3),
        "{retry_at}"
    );
    assert_eq!(
        webhooks.send_once(t0 + chrono::Duration::seconds(10)).await.unwrap(),
        sent(0, 1, 0)
    );
    assert_eq!(
        webhooks.send_once(t0 + chrono::Duration::seconds(30)).await.unwrap(),
        sent(1, 0, 0)
    );

    let got = receiver.got();
    assert_eq!(got.len(), 3);
    let ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one event, three attempts: {ids:?}");
    assert!(got.iter().all(|r| r.body == got[0].body), "the same body each time");
    assert_eq!(got[0].json()["data"]["id"], key["id"]);
    let log = log(&app, &endpoint).await;
    assert_eq!(log.len(), 1);
    let delivery = &log[0];
    assert_eq!(
        (delivery["status"].as_str(), delivery["attempt_count"].as_i64()),
        (Some("succeeded"), Some(3))
    );
    assert_eq!(delivery["next_retry_at"], Value::Null);
    let codes: Vec<i64> = delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [500, 503, 204]);
    assert_eq!(delivery["attempts"][0]["error"], "answered 500");
}

#[actix_web::test]
async fn an_endpoints_deliveries_go_in_log_order_one_at_a_time() {
    let app = private_app().await;
    let receiver = Receiver::start(&[500], 200);
    create_endpoint(&app, &receiver.url("/"), json!(["key.created", "key.updated"])).await;
    let key = app.create_key(json!({"name": "Ordered", "type": "secret"})).await;
    let key_id = key["id"].as_str().unwrap();
    app.patch(&format!("/v1/keys/{key_id}"), json!({"name": "Ordered 2"}))
        .await
        .expect(200);
    let webhooks = worker(&app, true);
    enqueue(&app, &webhooks).await;
    let t0 = Utc::now();
    // The creation fails: the update waits behind it.
    assert_eq!(webhooks.send_once(t0).await.unwrap(), sent(0, 1, 0));
    assert_eq!(receiver.got().len(), 1);
    assert_eq!(
        webhooks.send_once(t0 + chrono::Duration::seconds(5)).await.unwrap(),
        sent(1, 0, 0)
    );
    assert_eq!(
        webhooks.send_once(t0 + chrono::Duration::seconds(6)).await.unwrap(),
        sent(1, 0, 0)
    );
    let types: Vec<Value> = receiver.got().iter().map(|r| r.json()["type"].clone()).collect();
    assert_eq!(types, ["key.created", "key.created", "key.updated"]);
    assert_eq!(receiver.got()[2].json()["data"]["name"], "Ordered 2");
    assert_eq!(
        receiver.got()[0].json()["data"]["name"],
        "Ordered",
        "the key as that event left it"
    );
}

#[actix_web::test]
async fn replay_since_a_time_delivers_every_matching_event_again() {
    let app = private_app().await;
    let receiver = Receiver::start(&[], 200);
    let (endpoint, _) = create_endpoint(&app, &receiver.url("/"), json!(["key.created", "key.deactivated"])).await;
    // After the organization's first admin key was created.
    let before = Utc::now();
    let key = app.create_key(json!({"name": "Replayed", "type": "secret"})).await;
    let key_id = key["id"].as_str().unwrap();
    app.post(&format!("/v1/keys/{key_id}/deactivate"), json!({}))
        .await
        .expect(200);
    let webhooks = worker(&app, true);
    enqueue(&app, &webhooks).await;
    assert_eq!(webhooks.send_once(Utc::now()).await.unwrap(), sent(1, 0, 0));
    assert_eq!(webhooks.send_once(Utc::now()).await.unwrap(), sent(1, 0, 0));
    assert_eq!(receiver.got().len(), 2);

    let path = format!("/v1/webhooks/{endpoint}/replay");
    let answer = app.post(&path, json!({"since": before.to_rfc3339()})).await;
    assert_eq!(answer.expect(202)["deliveries"], 2);
    // A replay from after the events finds nothing; bad input changes nothing.
    let later = (Utc::now() + chrono::Duration::milliseconds(1)).to_rfc3339();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        app.post(&path, json!({"since": later})).await.expect(202)["deliveries"],
        0
    );
    app.post(&path, json!({})).await.expect_error(422, "validation_error");
    app.post(&path, json!({"since": "yesterday"}))
        .await
        .expect_error(422, "validation_error");
    let future = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    app.post(&path, json!({"since": future}))
        .await
        .expect_error(422, "validation_error");
    let ancient = (Utc::now() - chrono::Duration::days(31)).to_rfc3339();
    app.post(&path, json!({"since": ancient}))
        .await
        .expect_error(422, "validation_error");

    let mut now = Utc::now();
    while webhooks.send_once(now).await.unwrap() != Sent::default() {
        now += chrono::Duration::seconds(1);
    }
    let got = receiver.got();
    let ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    let created = event_id(&app, key_id, "key.created").await;
    let deactivated = event_id(&app, key_id, "key.deactivated").await;
    assert_eq!(ids, [&created, &deactivated, &created, &deactivated]);
    let log = log(&app, &endpoint).await;
    let replays: Vec<bool> = log.iter().map(|d| d["replay"].as_bool().unwrap()).collect();
    assert_eq!(replays, [true, true, false, false], "newest first");
    assert!(log.iter().all(|d| d["status"] == "succeeded"));
}

#[actix_web::test]
async fn endpoints_on_loopback_and_private_addresses_are_refused_unless_the_operator_allows_them() {
    let app = spawn_app().await;
    for url in [
        "https://127.0.0.1/hook",
        "https://localhost:8443/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/",
        "https://10.0.0.8/",
        "http://hooks.example.com/",
    ] {
        let answer = app.post("/v1/webhooks", json!({"url": url, "events": ["*"]})).await;
        answer.expect_error(422, "validation_error");
        assert!(
            answer.body["error"]["details"]["url"].is_array(),
            "{url}: {:#}",
            answer.body
        );
    }
    let none: Vec<Value> = app.get("/v1/webhooks").await.expect(200)["data"]
        .as_array()
        .unwrap()
        .clone();
    assert!(none.is_empty());

    // At connect time: a name that resolves to 127.0.0.1 is refused before
    // any connection, whatever the URL said when it was stored.
    let receiver = Receiver::start(&[], 200);
    let url =
        keyledger_events::domain::webhook::WebhookUrl::parse(&format!("https://localhost:{}/", receiver.port), true)
            .unwrap();
    let refused = WebhookClient::new(false).post(&url, &[], b"{}").await;
    assert!(
        matches!(&refused, Err(SendError::Forbidden(reason)) if reason.contains("127.0.0.1") && reason.contains("loopback")),
        "{refused:?}"
    );
    // An endpoint stored while private destinations were allowed, sent by a
    // worker that does not allow them: refused, never reached.
    let open = private_app().await;
    let (endpoint, _) = create_endpoint(&open, &format!("http://localhost:{}/", receiver.port), json!(["*"])).await;
    open.create_key(json!({"name": "Internal", "type": "secret"})).await;
    let strict = worker(&open, false);
    enqueue(&open, &strict).await;
    assert_eq!(strict.send_once(Utc::now()).await.unwrap(), sent(0, 1, 0));
    assert!(receiver.got().is_empty(), "the receiver was reached");
    let log = log(&open, &endpoint).await;
    let error = log[0]["error"].as_str().unwrap();
    assert!(error.starts_with("refused"), "{error}");
    assert_eq!(log[0]["status_code"], Value::Null);
}

#[actix_web::test]
async fn payloads_never_contain_a_secret() {
    let app = private_app().await;
    let receiver = Receiver::start(&[], 200);
    let (_, webhook_secret) = create_endpoint(&app, &receiver.url("/"), json!(["*"])).await;
    let key = app.create_key(json!({"name": "Rotated", "type": "secret"})).await;
    let key_id = key["id"].as_str().unwrap();
    let regenerated = app
        .post(&format!("/v1/keys/{key_id}/regenerate"), json!({}))
        .await
        .expect(200)
        .clone();
    app.patch(&format!("/v1/keys/{key_id}"), json!({"scopes": ["read:experiences"]}))
        .await
        .expect(200);
    app.post(&format!("/v1/keys/{key_id}/deactivate"), json!({}))
        .await
        .expect(200);
    app.post(&format!("/v1/keys/{key_id}/activate"), json!({}))
        .await
        .expect(200);
    app.delete(&format!("/v1/keys/{key_id}")).await.expect(204);
    let webhooks = worker(&app, true);
    enqueue(&app, &webhooks).await;
    let mut now = Utc::now();
    while webhooks.send_once(now).await.unwrap() != Sent::default() {
        now += chrono::Duration::seconds(1);
    }
    let got = receiver.got();
    let types: Vec<Value> = got.iter().map(|r| r.json()["type"].clone()).collect();
    assert_eq!(
        types,
        [
            "key.created",
            "key.regenerated",
            "key.updated",
            "key.deactivated",
            "key.activated",
            "key.deleted"
        ]
    );
    assert_eq!(got[5].json()["data"]["status"], "deleted");
    let hashes: Vec<Value> =
        sqlx::query_scalar("select data -> 'key_hash' from events where stream_id = $1 and data ? 'key_hash'")
            .bind(format!("key-{key_id}"))
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(hashes.len(), 2, "created and regenerated");
    let secrets = [
        key["key"].as_str().unwrap(),
        regenerated["key"].as_str().unwrap(),
        &app.admin_key,
        &webhook_secret,
    ];
    for request in &got {
        let text = String::from_utf8(request.body.clone()).unwrap();
        let headers = format!("{:?}", request.headers);
        for secret in secrets {
            assert!(
                !text.contains(secret) && !headers.contains(secret),
                "a secret in a delivery: {text}"
            );
            assert!(!text.contains(&secret[8..]), "a secret's body in a delivery: {text}");
        }
        assert!(!text.contains("hash"), "a hash in a delivery: {text}");
        for hash in &hashes {
            let hash = hash.to_string();
            assert!(!text.contains(hash.trim_matches('"')), "a key hash in a delivery");
        }
    }
}

#[actix_web::test]
async fn the_api_validates_endpoints_enforces_the_quota_and_keeps_organizations_apart() {
    let settings = keyledger_api::ApiSettings {
        max_webhooks_per_org: 2,
        ..allow_private()
    };
    let app = spawn_app_with(settings, false).await;
    let (id, secret) = create_endpoint(
        &app,
        "https://hooks.example.com/a",
        json!(["key.created", "alert.raised"]),
    )
    .await;
    let shown = app.get(&format!("/v1/webhooks/{id}")).await.expect(200).clone();
    assert_eq!(shown["events"], json!(["key.created", "alert.raised"]));
    assert_eq!(shown["disabled"], false);
    assert!(shown.get("secret").is_none());
    let listed = app.get("/v1/webhooks").await.expect(200).clone();
    assert!(!listed.to_string().contains(&secret[6..]), "the secret is shown once");
    let stored: Vec<u8> = sqlx::query_scalar("select secret_sealed from webhook_endpoints where id = $1")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains(&secret[6..]));

    for (body, field) in [
        (json!({"events": ["*"]}), "url"),
        (
            json!({"url": "https://hooks.example.com/", "events": ["key.used"]}),
            "events",
        ),
        (json!({"url": "https://hooks.example.com/", "events": []}), "events"),
        (
            json!({"url": "https://hooks.example.com/", "description": "x".repeat(501)}),
            "description",
        ),
        (json!({"url": "https://hooks.example.com/", "colour": "red"}), "colour"),
    ] {
        let answer = app.post("/v1/webhooks", body).await;
        answer.expect_error(422, "validation_error");
        assert!(answer.body["error"]["details"][field].is_array(), "{:#}", answer.body);
    }
    create_endpoint(&app, "https://hooks.example.com/b", json!(["*"])).await;
    let over = app
        .post("/v1/webhooks", json!({"url": "https://hooks.example.com/c"}))
        .await;
    over.expect_error(403, "quota_exceeded");
    assert!(over.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("webhook endpoints"));

    let path = format!("/v1/webhooks/{id}");
    let changed = app
        .patch(
            &path,
            json!({"disabled": true, "description": "paused", "events": ["*"]}),
        )
        .await
        .expect(200)
        .clone();
    assert_eq!(
        (changed["disabled"].clone(), changed["disabled_reason"].clone()),
        (json!(true), json!("user"))
    );
    assert_eq!(changed["events"], json!(["*"]));
    let enabled = app.patch(&path, json!({"disabled": false})).await.expect(200).clone();
    assert_eq!(
        (enabled["disabled"].clone(), enabled["disabled_reason"].clone()),
        (json!(false), Value::Null)
    );
    app.patch(&path, json!({"url": "ftp://x"}))
        .await
        .expect_error(422, "validation_error");
    app.patch(&path, json!({"disabled": "yes"}))
        .await
        .expect_error(422, "validation_error");

    let (_, other_admin) = app.other_org().await;
    for (method, suffix) in [
        (awc::http::Method::GET, ""),
        (awc::http::Method::DELETE, ""),
        (awc::http::Method::GET, "/deliveries"),
    ] {
        call(
            &app.address,
            method,
            &format!("{path}{suffix}"),
            Some(&other_admin),
            None,
            &[],
        )
        .await
        .expect_error(404, "not_found");
    }
    app.delete(&path).await.expect(204);
    app.get(&path).await.expect_error(404, "not_found");
    app.get("/v1/webhooks/wh_nonsense").await.expect_error(404, "not_found");
}

#[actix_web::test]
async fn an_endpoint_failing_for_five_days_is_disabled_and_the_organization_is_emailed() {
    let app = spawn_app_with_settings_and_alert_emails(allow_private(), &[OPS]).await;
    let smtp = MailServer::start_new();
    let receiver = Receiver::start(&[], 500);
    let (endpoint, _) = create_endpoint(&app, &receiver.url("/down"), json!(["key.created"])).await;
    let alerts_receiver = Receiver::start(&[], 200);
    create_endpoint(&app, &alerts_receiver.url("/alerts"), json!(["alert.raised"])).await;
    app.create_key(json!({"name": "Unheard", "type": "secret"})).await;
    let webhooks = worker(&app, true);
    enqueue(&app, &webhooks).await;
    let t0 = Utc::now();
    assert_eq!(webhooks.send_once(t0).await.unwrap(), sent(0, 1, 0));
    let failing = app.get(&format!("/v1/webhooks/{endpoint}")).await.expect(200).clone();
    assert!(failing["failing_since"].is_string());
    // Four days on: still enabled (the delivery itself gave up after a day).
    let four_days = t0 + chrono::Duration::days(4);
    assert_eq!(webhooks.send_once(four_days).await.unwrap(), sent(0, 0, 1));
    assert_eq!(
        app.get(&format!("/v1/webhooks/{endpoint}")).await.expect(200)["disabled"],
        false
    );

    app.create_key(json!({"name": "Unheard 2", "type": "secret"})).await;
    enqueue(&app, &webhooks).await;
    let five_days = t0 + chrono::Duration::days(5) + chrono::Duration::minutes(1);
    let step = webhooks.send_once(five_days).await.unwrap();
    assert_eq!((step.retrying, step.disabled), (1, 1));
    let disabled = app.get(&format!("/v1/webhooks/{endpoint}")).await.expect(200).clone();
    assert_eq!(
        (disabled["disabled"].clone(), disabled["disabled_reason"].clone()),
        (json!(true), json!("failing"))
    );
    // Nothing more is sent to it while it is disabled.
    let attempts = receiver.got().len();
    assert_eq!(
        webhooks
            .send_once(five_days + chrono::Duration::hours(2))
            .await
            .unwrap()
            .retrying,
        0
    );
    assert_eq!(receiver.got().len(), attempts);

    let (mail, inbox) = deliver(&app, &smtp, five_days + chrono::Duration::hours(3)).await;
    assert_eq!(mail.sent, 1);
    assert_eq!(inbox.len(), 1);
    let email = &inbox[0];
    assert_eq!(email.alert_kind, "webhook_disabled");
    assert_eq!(email.envelope_to, [OPS]);
    assert!(
        email.subject.contains("webhook endpoint was disabled"),
        "{}",
        email.subject
    );
    assert!(
        email.text.contains(&receiver.url("/down")) && email.text.contains("answered 500"),
        "{}",
        email.text
    );

    // The alert is an event too: the other endpoint receives alert.raised.
    enqueue(&app, &webhooks).await;
    webhooks.send_once(five_days).await.unwrap();
    let got = alerts_receiver.got();
    assert_eq!(got.len(), 1);
    let alert = got[0].json();
    assert_eq!(alert["type"], "alert.raised");
    assert_eq!(alert["data"]["object"], "alert");
    assert_eq!(alert["data"]["kind"], "webhook_disabled");
    assert_eq!(alert["data"]["org_id"], app.org_id.as_str());
}

// ------------------------------------------------------- the real binary

#[actix_web::test]
async fn two_work_processes_deliver_each_event_once_per_endpoint() {
    let (url, dir) = (crate::support::fresh_database_url(), temp_dir());
    let created = create_org(&url, &dir, "Twin hooks", &[]);
    let admin = created["key"]["key"].as_str().unwrap().to_owned();
    let mut serve = keyledger(&url, &dir);
    serve
        .arg("serve")
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .env("KEYLEDGER_WEBHOOK_ALLOW_PRIVATE", "true");
    let serve = Server::start(&mut serve, dir.join("serve.log")).await;
    let receivers = [Receiver::start(&[], 200), Receiver::start(&[503], 200)];
    let mut secrets = vec![admin.clone()];
    for receiver in &receivers {
        let answer = call(
            &serve.address,
            awc::http::Method::POST,
            "/v1/webhooks",
            Some(&admin),
            Some(json!({"url": receiver.url("/"), "events": ["*"]})),
            &[],
        )
        .await;
        secrets.push(answer.expect(201)["secret"].as_str().unwrap().to_owned());
    }
    let work = || {
        let mut command = keyledger(&url, &dir);
        command
            .arg("work")
            .env("KEYLEDGER_HASH_KEY", HASH_KEY)
            .env("KEYLEDGER_WEBHOOK_ALLOW_PRIVATE", "true")
            .env("KEYLEDGER_WEBHOOK_RETRY_SECONDS", "1");
        command
    };
    let first = Server::start_worker(&mut work(), dir.join("work-1.log"), "webhook deliveries started").await;
    let second = Server::start_worker(&mut work(), dir.join("work-2.log"), "webhook deliveries started").await;
    for n in 0..5 {
        let key = call(
            &serve.address,
            awc::http::Method::POST,
            "/v1/keys",
            Some(&admin),
            Some(json!({"name": format!("Twin {n}"), "type": "secret"})),
            &[],
        )
        .await;
        secrets.push(key.expect(201)["key"].as_str().unwrap().to_owned());
    }
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    eventually(Duration::from_secs(30), || async {
        let (done, all): (i64, i64) =
            sqlx::query_as("select count(*) filter (where status = 'succeeded'), count(*) from webhook_deliveries")
                .fetch_one(&pool)
                .await
                .unwrap();
        if all == 10 && done == 10 {
            return Ok(());
        }
        Err(format!("{done} of {all} deliveries done"))
    })
    .await;
    let logs = [first.stop(), second.stop(), serve.stop()].concat();
    let expected: Vec<String> = sqlx::query_scalar(
        "select event_id::text from events where type = 'key.created' and actor <> 'cli' order by tx_id, position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(expected.len(), 5);
    for (n, receiver) in receivers.iter().enumerate() {
        let mut ids: Vec<String> = receiver
            .got()
            .iter()
            .map(|r| r.header("webhook-id").to_owned())
            .collect();
        if n == 1 {
            // The first attempt was answered 503 and retried.
            assert_eq!(ids[0], ids[1]);
            ids.remove(0);
        }
        assert_eq!(ids, expected, "each event once, in log order");
    }
    for secret in &secrets {
        assert!(!logs.contains(&secret[8..]), "a secret in the logs");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
