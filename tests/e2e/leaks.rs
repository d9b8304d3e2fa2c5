//! `POST /v1/leaks`: reports in GitHub's secret scanning partner format,
//! signed with a P-256 key pair made by the test, against the real app, a
//! real SMTP server and the real mailer loop (which polls only every minute
//! here, so an email within a second proves it was woken).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{json, Value};
use sha2::Digest;

use crate::alerts::{mailer, OPS};
use crate::smtp::MailServer;
use keyledger_events::shutdown::ShutdownSignal;

use awc::http::Method;
use chrono::Utc;
use keyledger_events::domain::key::{self, RegenerateKey, SecretSource};
use keyledger_events::domain::{ApiKey, KeyCommand, KeyId, KeyType, PlainKey};
use keyledger_events::handler;
use keyledger_events::log::EventMeta;

use crate::recipients::wait_for_waiters;
use crate::support::{call, spawn_app_with, spawn_app_with_settings_and_alert_emails, spawn_worker, Answer, TestApp};

/// A secret scanner's signing key, as the operator's keys file names it.
struct Reporter {
    id: String,
    signing: SigningKey,
}

impl Reporter {
    fn new() -> Reporter {
        loop {
            let mut bytes = [0u8; 32];
            getrandom::getrandom(&mut bytes).unwrap();
            if let Ok(signing) = SigningKey::from_slice(&bytes) {
                let id = hex_sha256(&uuid::Uuid::new_v4().to_string());
                return Reporter { id, signing };
            }
        }
    }

    fn sign(&self, body: &[u8]) -> String {
        let signature: Signature = self.signing.sign(body);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }

    /// The operator's file, as GitHub publishes its keys.
    fn document(reporters: &[&Reporter]) -> String {
        let keys: Vec<Value> = reporters
            .iter()
            .map(|r| {
                json!({
                    "key_identifier": r.id,
                    "key": r.signing.verifying_key().to_public_key_pem(LineEnding::LF).unwrap(),
                    "is_current": true,
                })
            })
            .collect();
        json!({"public_keys": keys}).to_string()
    }
}

fn hex_sha256(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn settings(reporter: &Reporter) -> keyledger_api::ApiSettings {
    let keys = keyledger_api::leaks::LeakReportKeys::parse(&Reporter::document(&[reporter])).unwrap();
    keyledger_api::ApiSettings {
        leak_report_keys: Some(Arc::new(keys)),
        ..keyledger_api::ApiSettings::default()
    }
}

/// An app that accepts `reporter`'s reports, whose organization alerts
/// OPS, with its mailer running (polling every minute only) until the
/// returned sender is dropped.
async fn leak_app(reporter: &Reporter, smtp: &MailServer) -> (TestApp, ShutdownSignal) {
    let app = spawn_app_with_settings_and_alert_emails(settings(reporter), &[OPS]).await;
    let mut mailer = mailer(&app, smtp);
    mailer.poll = Duration::from_secs(60);
    let stop = ShutdownSignal::new();
    spawn_worker(mailer.run(stop.subscribe()));
    (app, stop)
}

/// Sends `body` as it is, with these signature headers.
async fn send(app: &TestApp, body: &str, headers: &[(&str, String)]) -> Answer {
    let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    let mut request = client
        .post(format!("{}/v1/leaks", app.address))
        .insert_header(("Content-Type", "application/json"));
    for (name, value) in headers {
        request = request.insert_header((*name, value.as_str()));
    }
    let mut response = request.send_body(body.to_owned()).await.expect("sent");
    let bytes = response.body().limit(1 << 20).await.unwrap();
    Answer {
        status: response.status(),
        headers: response.headers().clone(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// `body` signed by `reporter`, as GitHub sends it.
async fn report(app: &TestApp, reporter: &Reporter, body: &str) -> Answer {
    send(
        app,
        body,
        &[
            ("Github-Public-Key-Identifier", reporter.id.clone()),
            ("Github-Public-Key-Signature", reporter.sign(body.as_bytes())),
        ],
    )
    .await
}

fn matches(tokens: &[&str]) -> String {
    let found: Vec<Value> = tokens
        .iter()
        .map(|t| {
            json!({"token": t, "type": "keyledger_secret_key",
                   "url": "https://github.com/octocat/hello/blob/12345600b9cbe38a/config/.env", "source": "content"})
        })
        .collect();
    serde_json::to_string(&found).unwrap()
}

/// A well-formed key with a right checksum that was never issued.
fn never_issued() -> String {
    let mut random = [0u8; 32];
    getrandom::getrandom(&mut random).unwrap();
    keyledger_events::domain::PlainKey::encode(keyledger_events::domain::KeyType::Secret, &random)
        .expose()
        .to_owned()
}

async fn verify(app: &TestApp, key: &str) -> String {
    app.verify(json!({"key": key})).await["code"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

/// The data of the key's events of `event_type`.
async fn event_data(app: &TestApp, key_id: &str, event_type: &str) -> Vec<(Value, String)> {
    sqlx::query_as("select data, actor from events where stream_id = $1 and type = $2 order by version")
        .bind(format!("key-{key_id}"))
        .bind(event_type)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_signed_report_deactivates_the_key_within_a_second_and_emails_the_recipients() {
    let smtp = MailServer::start_new();
    let reporter = Reporter::new();
    let (mut app, _mailer) = leak_app(&reporter, &smtp).await;
    let created = app
        .create_key(json!({"name": "Checkout backend", "type": "secret"}))
        .await;
    let (id, secret) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    assert_eq!(verify(&app, secret).await, "VALID", "cached before the report");
    let random = never_issued();
    let mut bad_checksum = secret.to_owned();
    bad_checksum.replace_range(20..21, if &secret[20..21] == "A" { "B" } else { "A" });
    let body = matches(&[secret, &random, &bad_checksum, "not a key at all"]);

    let start = Instant::now();
    let answer = report(&app, &reporter, &body).await;
    let answered = start.elapsed();
    let labels = answer.expect(200).as_array().unwrap().clone();
    assert_eq!(verify(&app, secret).await, "INACTIVE", "deactivated in the request");
    let inbox = smtp.wait_for(1, Duration::from_secs(2)).await;
    let emailed = start.elapsed();
    assert!(answered < Duration::from_secs(1), "answered in {answered:?}");
    assert!(
        emailed < Duration::from_secs(1),
        "emailed in {emailed:?} (the mailer polls every minute)"
    );

    // GitHub's feedback format: the token's SHA-256, never the token.
    let expected: Vec<Value> = [
        (secret, "true_positive"),
        (random.as_str(), "false_positive"),
        (bad_checksum.as_str(), "false_positive"),
        ("not a key at all", "false_positive"),
    ]
    .iter()
    .map(|(t, label)| json!({"token_hash": hex_sha256(t), "token_type": "keyledger_secret_key", "label": label}))
    .collect();
    assert_eq!(labels, expected);
    assert!(
        !answer.body.to_string().contains(&secret[8..]),
        "no secret in the answer"
    );

    // The email names the key and where it was found, and holds no secret.
    let mail = &inbox[0];
    assert_eq!(mail.envelope_to, [OPS]);
    assert_eq!(mail.alert_kind, "key_leaked");
    let label = format!("\"Checkout backend\" (sk_live_…{})", &secret[secret.len() - 4..]);
    assert!(mail.subject.contains(&label), "{}", mail.subject);
    assert!(mail.text.contains(&label) && mail.html.contains("Checkout backend"));
    assert!(
        mail.text.contains(
            "found in public, at https://github.com/octocat/hello/blob/12345600b9cbe38a/config/.env. Anyone who saw \
             it there can use it"
        ),
        "{}",
        mail.text
    );
    assert!(
        mail.text.contains("deactivated") && mail.text.contains("What to do"),
        "{}",
        mail.text
    );
    assert!(!mail.raw.contains(&secret[8..]), "no secret in the email");

    // The log: key.leaked (where, when, by which reporter key; no secret)
    // then key.deactivated, both by the leak report.
    let leaked = event_data(&app, id, "key.leaked").await;
    assert_eq!(leaked.len(), 1);
    let (data, actor) = &leaked[0];
    assert_eq!(actor, "leak-report");
    assert_eq!(
        data["url"],
        "https://github.com/octocat/hello/blob/12345600b9cbe38a/config/.env"
    );
    assert_eq!(data["source"], "content");
    assert_eq!(data["token_type"], "keyledger_secret_key");
    assert_eq!(data["reporter_key_id"], reporter.id);
    assert_eq!(data["action"], "deactivate");
    assert!(data["reported_at"].is_string());
    assert!(!data.to_string().contains(&secret[8..]) && data.get("key_hash").is_none());
    let types = app.stream_types(id).await;
    assert_eq!(types[types.len() - 2..], ["key.leaked", "key.deactivated"]);
    let key = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(key.expect(200)["status"], "inactive");

    // The alert is in the log like every alert raised (`alert.raised` on
    // its own stream), so the audit log and webhooks see it.
    let (alert, subject): (uuid::Uuid, String) =
        sqlx::query_as("select id, subject from alerts where kind = 'key_leaked'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let raised: Vec<(String, Value, String)> =
        sqlx::query_as("select stream_id, data, actor from events where type = 'alert.raised'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(raised.len(), 1, "{raised:?}");
    let (stream, data, actor) = &raised[0];
    assert_eq!(stream, &format!("alert-{alert}"));
    assert_eq!(actor, "system:alert:key_leaked");
    assert_eq!(data["alert_id"], alert.to_string());
    assert_eq!(data["kind"], "key_leaked");
    assert_eq!(data["key_id"], id);
    assert_eq!(data["org_id"], app.org_id.as_str());
    assert_eq!(data["subject"], subject.as_str());
    assert!(!data.to_string().contains(&secret[8..]));

    // A signed report is counted as one, forged ones apart.
    let counted = metrics(&app).await;
    assert_eq!(metric(&counted, "keyledger_leak_reports_total"), 1, "{counted}");
    assert_eq!(metric(&counted, "keyledger_leak_reports_refused_total"), 0, "{counted}");

    // Reported again (GitHub rescans): true_positive, nothing new. Usage
    // flushes (of the requests above) append too: stop them first, so the
    // count sees only what the report appends.
    app.stop_background().await;
    let events = app.event_count().await;
    let again = report(&app, &reporter, &matches(&[secret])).await;
    assert_eq!(again.expect(200)[0]["label"], "true_positive");
    assert_eq!(app.event_count().await, events);
    assert_eq!(
        count(&app, "select count(*) from alerts where kind = 'key_leaked'").await,
        1
    );
}

#[actix_web::test]
async fn a_forged_unsigned_or_altered_report_is_refused_and_changes_nothing() {
    let smtp = MailServer::start_new();
    let reporter = Reporter::new();
    let (mut app, _mailer) = leak_app(&reporter, &smtp).await;
    let created = app.create_key(json!({"name": "Billing", "type": "secret"})).await;
    let secret = created["key"].as_str().unwrap();
    let body = matches(&[secret]);
    // No usage flush may append while the count is compared.
    app.stop_background().await;
    let before = app.event_count().await;
    let forger = Reporter::new();
    let signed = reporter.sign(body.as_bytes());
    let altered = body.replace("content", "commit");
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no headers", vec![]),
        (
            "no signature",
            vec![("Github-Public-Key-Identifier", reporter.id.clone())],
        ),
        ("no identifier", vec![("Github-Public-Key-Signature", signed.clone())]),
        (
            "another key's signature",
            vec![
                ("Github-Public-Key-Identifier", reporter.id.clone()),
                ("Github-Public-Key-Signature", forger.sign(body.as_bytes())),
            ],
        ),
        (
            "an unknown identifier",
            vec![
                ("Github-Public-Key-Identifier", forger.id.clone()),
                ("Github-Public-Key-Signature", forger.sign(body.as_bytes())),
            ],
        ),
        (
            "not base64",
            vec![
                ("Github-Public-Key-Identifier", reporter.id.clone()),
                ("Github-Public-Key-Signature", "%%%".into()),
            ],
        ),
        (
            "not DER",
            vec![
                ("Github-Public-Key-Identifier", reporter.id.clone()),
                ("Github-Public-Key-Signature", "AAAA".into()),
            ],
        ),
    ];
    for (case, headers) in &cases {
        send(&app, &body, headers).await.expect_error(401, "invalid_signature");
        let _ = case;
    }
    // A body changed after signing.
    let answer = send(
        &app,
        &altered,
        &[
            ("Github-Public-Key-Identifier", reporter.id.clone()),
            ("Github-Public-Key-Signature", signed),
        ],
    )
    .await;
    answer.expect_error(401, "invalid_signature");
    assert!(!answer.body.to_string().contains(&secret[8..]));
    // The signature is checked before the body is read as a report: a forged
    // body that is not JSON, or holds too many matches, is refused as forged.
    let too_many: Vec<String> = (0..1_001).map(|n| format!("token{n}")).collect();
    let too_many = matches(&too_many.iter().map(String::as_str).collect::<Vec<_>>());
    for junk in ["[{".to_owned(), too_many] {
        let headers = [
            ("Github-Public-Key-Identifier", reporter.id.clone()),
            ("Github-Public-Key-Signature", forger.sign(junk.as_bytes())),
        ];
        send(&app, &junk, &headers).await.expect_error(401, "invalid_signature");
    }
    assert_eq!(app.event_count().await, before, "nothing appended");
    assert_eq!(verify(&app, secret).await, "VALID");
    assert_eq!(count(&app, "select count(*) from alerts").await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(smtp.inbox().is_empty(), "nobody was emailed");

    // Forgeries count against the sender's address like invalid keys: the
    // 20th in a minute and what follows are refused outright.
    for _ in cases.len() + 3..20 {
        send(&app, &body, &[]).await.expect_error(401, "invalid_signature");
    }
    report(&app, &reporter, &body)
        .await
        .expect_error(429, "too_many_failed_attempts");
    // Forgeries have their own count; none was counted as a report.
    let metrics = metrics(&app).await;
    assert_eq!(
        metric(&metrics, "keyledger_leak_reports_refused_total"),
        20,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "keyledger_leak_reports_total"), 0, "{metrics}");
}

/// The app's `/metrics` text.
async fn metrics(app: &TestApp) -> String {
    let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
    let mut response = client
        .get(format!("{}/metrics", app.internal))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    String::from_utf8(response.body().await.unwrap().to_vec()).unwrap()
}

/// The value of the metric `name` in `text`.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[actix_web::test]
async fn notify_leaves_the_key_active_but_records_the_leak_and_emails() {
    let smtp = MailServer::start_new();
    let reporter = Reporter::new();
    let (app, _mailer) = leak_app(&reporter, &smtp).await;
    assert_eq!(app.get("/v1/org").await.expect(200)["leak_action"], "deactivate");
    let org = app.patch("/v1/org", json!({"leak_action": "notify"})).await;
    assert_eq!(org.expect(200)["leak_action"], "notify");
    app.patch("/v1/org", json!({"leak_action": "revoke"}))
        .await
        .expect_error(422, "validation_error");
    assert_eq!(app.get("/v1/org").await.expect(200)["leak_action"], "notify");
    let created = app.create_key(json!({"name": "Widget", "type": "public"})).await;
    let (id, secret) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    let start = Instant::now();
    let answer = report(&app, &reporter, &matches(&[secret])).await;
    assert_eq!(answer.expect(200)[0]["label"], "true_positive");
    assert_eq!(verify(&app, secret).await, "VALID", "notify leaves the key working");
    let mail = smtp.wait_for(1, Duration::from_secs(2)).await.remove(0);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "emailed in {:?}",
        start.elapsed()
    );
    assert!(mail.text.contains("still active"), "{}", mail.text);
    assert!(mail.subject.contains("Widget") && !mail.raw.contains(&secret[8..]));
    let leaked = event_data(&app, id, "key.leaked").await;
    assert_eq!(leaked.len(), 1);
    assert_eq!(leaked[0].0["action"], "notify");
    assert!(!app.stream_types(id).await.contains(&"key.deactivated".to_owned()));
}

#[actix_web::test]
async fn a_leaked_regenerated_away_secret_stops_at_once_and_the_new_one_keeps_working() {
    let smtp = MailServer::start_new();
    let reporter = Reporter::new();
    let (app, _mailer) = leak_app(&reporter, &smtp).await;
    app.patch("/v1/org", json!({"leak_action": "notify"})).await.expect(200);
    let created = app.create_key(json!({"name": "Rotating", "type": "secret"})).await;
    let (id, old) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    let regenerated = app
        .post(
            &format!("/v1/keys/{id}/regenerate"),
            json!({"expire_old_in_seconds": 3600}),
        )
        .await;
    let new = regenerated.expect(200)["key"].as_str().unwrap().to_owned();
    assert_eq!(verify(&app, old).await, "VALID", "in its grace period");
    let answer = report(&app, &reporter, &matches(&[old])).await;
    assert_eq!(answer.expect(200)[0]["label"], "true_positive");
    assert_eq!(verify(&app, old).await, "NOT_FOUND", "the leaked old secret stopped");
    assert_eq!(verify(&app, &new).await, "VALID");
    assert_eq!(event_data(&app, id, "key.leaked").await[0].0["secret"], "previous");
    // Now it is no secret of ours any more.
    let again = report(&app, &reporter, &matches(&[old])).await;
    assert_eq!(again.expect(200)[0]["label"], "false_positive");
}

#[actix_web::test]
async fn oversized_or_malformed_reports_are_refused_and_an_unconfigured_deployment_says_so() {
    let smtp = MailServer::start_new();
    let reporter = Reporter::new();
    let (mut app, _mailer) = leak_app(&reporter, &smtp).await;
    app.stop_background().await;
    let before = app.event_count().await;
    let many: Vec<String> = (0..1_001).map(|n| format!("token{n}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let answer = report(&app, &reporter, &matches(&many)).await;
    answer.expect_error(422, "validation_error");
    let huge = format!("[{}]", " ".repeat(1024 * 1024));
    report(&app, &reporter, &huge)
        .await
        .expect_error(413, "payload_too_large");
    report(&app, &reporter, "[{\"token\": 5}]")
        .await
        .expect_error(422, "validation_error");
    report(&app, &reporter, "{\"token\": \"x\"}")
        .await
        .expect_error(422, "validation_error");
    report(&app, &reporter, "[{").await.expect_error(400, "bad_request");
    assert_eq!(app.event_count().await, before);

    // Without KEYLEDGER_LEAK_REPORT_KEYS: 503, so a scanner retries rather
    // than drops the report while the operator configures it.
    let unconfigured = spawn_app_with(keyledger_api::ApiSettings::default(), false).await;
    let answer = report(&unconfigured, &reporter, &matches(&["x"])).await;
    answer.expect_error(503, "unavailable");
    assert!(answer.header("retry-after").is_some());
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "its operator has not configured the public keys reports are signed with \
                          (KEYLEDGER_LEAK_REPORT_KEYS)"
        ),
        "{message}"
    );
}

/// What each surface answers for `key`: `/v1/verify`'s code, `/v1/auth`'s
/// status (204: allowed) and the management API's status.
async fn surfaces(app: &TestApp, key: &str) -> (String, u16, u16) {
    let auth = call(
        &app.internal,
        Method::GET,
        "/v1/auth",
        Some(key),
        None,
        &[("X-Original-Method", "GET"), ("X-Original-URI", "/api/experiences")],
    )
    .await;
    let manage = call(&app.address, Method::GET, "/v1/keys", Some(key), None, &[]).await;
    (verify(app, key).await, auth.status.as_u16(), manage.status.as_u16())
}

fn refused_everywhere() -> (String, u16, u16) {
    ("NOT_FOUND".to_owned(), 401, 401)
}

fn accepted_everywhere() -> (String, u16, u16) {
    ("VALID".to_owned(), 204, 200)
}

#[actix_web::test]
async fn a_leaked_secret_is_not_revived_by_a_regeneration_with_a_grace_period() {
    let smtp = MailServer::start_new();
    let reporter = Reporter::new();
    let (app, _mailer) = leak_app(&reporter, &smtp).await;
    for action in ["notify", "deactivate"] {
        app.patch("/v1/org", json!({"leak_action": action})).await.expect(200);
        let created = app
            .create_key(json!({"name": format!("Leaky {action}"), "type": "secret"}))
            .await;
        let (id, old) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
        let answer = report(&app, &reporter, &matches(&[old])).await;
        assert_eq!(answer.expect(200)[0]["label"], "true_positive");

        // The owner regenerates and asks for the usual grace period.
        let regenerated = app
            .post(
                &format!("/v1/keys/{id}/regenerate"),
                json!({"expire_old_in_seconds": 3600}),
            )
            .await;
        let new = regenerated.expect(200)["key"].as_str().unwrap().to_owned();
        if action == "deactivate" {
            app.post(&format!("/v1/keys/{id}/activate"), json!({}))
                .await
                .expect(200);
        }
        assert_eq!(
            surfaces(&app, old).await,
            refused_everywhere(),
            "the leaked secret came back ({action})"
        );
        assert_eq!(surfaces(&app, &new).await, accepted_everywhere(), "{action}");
        let (regenerated, _) = &event_data(&app, id, "key.regenerated").await[0];
        assert_eq!(regenerated["previous_valid_until"], Value::Null, "{action}");
    }
}

#[actix_web::test]
async fn a_leaked_previous_secret_ends_its_grace_and_leaves_the_current_secret_alone() {
    let smtp = MailServer::start_new();
    let reporter = Reporter::new();
    // The default leak action: deactivate.
    let (app, _mailer) = leak_app(&reporter, &smtp).await;
    let created = app.create_key(json!({"name": "Rotating", "type": "secret"})).await;
    let (id, old) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    let regenerated = app
        .post(
            &format!("/v1/keys/{id}/regenerate"),
            json!({"expire_old_in_seconds": 3600}),
        )
        .await;
    let new = regenerated.expect(200)["key"].as_str().unwrap().to_owned();
    assert_eq!(surfaces(&app, old).await, accepted_everywhere(), "in its grace period");
    let answer = report(&app, &reporter, &matches(&[old])).await;
    assert_eq!(answer.expect(200)[0]["label"], "true_positive");
    assert_eq!(surfaces(&app, old).await, refused_everywhere(), "its grace ended");
    assert_eq!(
        surfaces(&app, &new).await,
        accepted_everywhere(),
        "the current secret did not leak"
    );
    assert_eq!(app.get(&format!("/v1/keys/{id}")).await.expect(200)["status"], "active");
    assert!(!app.stream_types(id).await.contains(&"key.deactivated".to_owned()));
    let (leaked, _) = &event_data(&app, id, "key.leaked").await[0];
    assert_eq!(leaked["secret"], "previous");
    let mail = smtp.wait_for(1, Duration::from_secs(5)).await.remove(0);
    assert!(mail.text.contains("current secret is not affected"), "{}", mail.text);
}

#[actix_web::test]
async fn a_report_of_a_secret_retired_while_it_is_judged_deactivates_nothing() {
    let smtp = MailServer::start_new();
    let reporter = Reporter::new();
    let (mut app, _mailer) = leak_app(&reporter, &smtp).await;
    // The projector would wait on the other writer's row too.
    app.stop_background().await;
    let created = app.create_key(json!({"name": "Busy", "type": "secret"})).await;
    let (id, old) = (created["id"].as_str().unwrap(), created["key"].as_str().unwrap());
    // The owner regenerates without a grace period; not committed yet, so
    // the report still finds `old` as the key's current secret.
    let mut random = [0u8; 32];
    getrandom::getrandom(&mut random).unwrap();
    let new = PlainKey::encode(KeyType::Secret, &random).expose().to_owned();
    let command = KeyCommand::Regenerate(Box::new(RegenerateKey {
        expire_old_in_seconds: 0,
        rotation_days: 0,
        secret: SecretSource {
            random,
            hash_key: app.hash_key.clone(),
        },
    }));
    let meta = EventMeta {
        actor: "test".into(),
        request_id: None,
        occurred_at: Utc::now(),
    };
    let key_id: KeyId = id.parse().unwrap();
    let decided = handler::decide::<ApiKey>(&app.pool, &key::stream_id(key_id), command, &meta, |_| Ok(()))
        .await
        .unwrap();
    let mut other = app.pool.begin().await.unwrap();
    decided.append(&mut other).await.unwrap();
    let (address, body) = (app.address.clone(), matches(&[old]));
    let (key_id_header, signature) = (reporter.id.clone(), reporter.sign(body.as_bytes()));
    let reported = actix_web::rt::spawn(async move {
        let client = awc::Client::builder().timeout(Duration::from_secs(30)).finish();
        let mut response = client
            .post(format!("{address}/v1/leaks"))
            .insert_header(("Content-Type", "application/json"))
            .insert_header(("Github-Public-Key-Identifier", key_id_header))
            .insert_header(("Github-Public-Key-Signature", signature))
            .send_body(body)
            .await
            .expect("sent");
        let bytes = response.body().await.unwrap();
        (response.status(), serde_json::from_slice::<Value>(&bytes).unwrap())
    });
    // The report's append waits on the regeneration's.
    wait_for_waiters(&app.pool, "transactionid", 1).await;
    other.commit().await.unwrap();
    let (status, labels) = reported.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(labels[0]["label"], "false_positive", "no secret of ours any more");
    assert_eq!(verify(&app, &new).await, "VALID", "the new secret was not deactivated");
    assert_eq!(verify(&app, old).await, "NOT_FOUND");
    assert_eq!(app.get(&format!("/v1/keys/{id}")).await.expect(200)["status"], "active");
    assert!(event_data(&app, id, "key.leaked").await.is_empty());
    assert_eq!(count(&app, "select count(*) from alerts").await, 0);
}
