//! Scheduled jobs and alert emails, against a real SMTP server: each alert
//! is triggered by real verifications or a chosen `now`, and the test reads
//! the email that arrived.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger_events::domain::key::{self, CreateKeyRequest, SecretSource};
use keyledger_events::domain::{ApiKey, KeyCommand, KeyId, OrgId};
use keyledger_events::handler;
use keyledger_events::log::EventMeta;
use keyledger_workers::alerts::mailer::{Delivery, Links, Mailer, Transport};
use keyledger_workers::jobs::scheduler::run_job;
use keyledger_workers::jobs::{Job, Report};
use serde_json::{json, Value};

use crate::binary::{create_org, keyledger, temp_dir, Server, HASH_KEY};
use crate::smtp::{Mail, MailServer};
use crate::support::{call, eventually, spawn_app, spawn_app_with_alert_emails, TestApp};

pub(crate) const OPS: &str = "ops@acme.test";
pub(crate) const SECURITY: &str = "security@acme.test";

pub(crate) fn days(n: i64) -> chrono::Duration {
    chrono::Duration::days(n)
}

/// An app whose organization sends alerts to its ops address (given by
/// the operator, so confirmed: see `recipients.rs` for addresses set over
/// the API).
async fn alerting_app() -> TestApp {
    spawn_app_with_alert_emails(&[OPS]).await
}

pub(crate) fn mailer(app: &TestApp, smtp: &MailServer) -> Mailer {
    let transport = Transport::new(Some(&smtp.url()), std::path::Path::new(".")).unwrap();
    // Confirmation links point at the test's server.
    let links = Links {
        hash_key: app.hash_key.clone(),
        public_url: app.address.clone(),
    };
    Mailer::new(app.pool.clone(), transport, "keyledger <alerts@keyledger.test>", links).unwrap()
}

pub(crate) async fn job(app: &TestApp, job: Job, now: DateTime<Utc>) -> Report {
    run_job(&app.pool, job, now)
        .await
        .unwrap()
        .expect("no other worker holds the lock")
}

/// Runs the mailer once at `now` and returns what arrived by then.
pub(crate) async fn deliver(app: &TestApp, smtp: &MailServer, now: DateTime<Utc>) -> (Delivery, Vec<Mail>) {
    let delivery = mailer(app, smtp).run_once(now).await.unwrap();
    let inbox = smtp.wait_for(delivery.sent, Duration::from_secs(5)).await;
    (delivery, inbox)
}

/// What every alert email must be: to the organization's address, both
/// parts present, naming the key, and holding none of `secrets`.
#[track_caller]
fn check_alert(mail: &Mail, kind: &str, key_name: &str, secrets: &[&str]) {
    assert_eq!(mail.alert_kind, kind, "{mail:#?}");
    assert_eq!(mail.envelope_to, [OPS]);
    assert_eq!(mail.to, OPS);
    assert!(mail.subject.starts_with("[keyledger] "), "{}", mail.subject);
    assert!(mail.text.contains(key_name), "plain text names the key: {}", mail.text);
    assert!(mail.html.contains(key_name), "HTML names the key: {}", mail.html);
    assert!(mail.text.contains("What to do"), "says what to do: {}", mail.text);
    for secret in secrets {
        assert!(!mail.raw.contains(secret), "a secret in an email");
        assert!(!mail.raw.contains(&secret[8..]), "a secret's body in an email");
    }
}

pub(crate) async fn create_key(app: &TestApp, name: &str, extra: Value) -> (String, String) {
    let mut body = json!({"name": name, "type": "secret"});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let key = app.create_key(body).await;
    (
        key["id"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
    )
}

/// Waits until the key's usage (all of today) shows `total` requests.
async fn wait_for_usage(app: &TestApp, key_id: &str, total: i64) {
    eventually(Duration::from_secs(10), || async {
        let usage = app.get(&format!("/v1/keys/{key_id}/usage")).await;
        if usage.expect(200)["total_requests"].as_i64() == Some(total) {
            return Ok(());
        }
        Err(format!("usage stuck at {:#}", usage.body))
    })
    .await
}

/// Verifications that must all land in one minute: near the end of a
/// minute, moves the app's clock into the next one (rather than waiting).
fn within_one_minute(app: &TestApp) {
    use chrono::Timelike;
    let second = app.state.clock.now().second();
    if second > 45 {
        app.state
            .clock
            .advance(chrono::Duration::seconds(i64::from(61 - second)));
    }
}

/// How many alerts of `kind` were raised about `key_id`.
async fn alerts_about(app: &TestApp, kind: &str, key_id: &str) -> i64 {
    sqlx::query_scalar("select count(*) from alerts where kind = $1 and key_id = $2")
        .bind(kind)
        .bind(key_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

pub(crate) async fn alert_rows(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query_as("select kind, status from alerts order by created_at")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[actix_web::test]
async fn a_key_near_its_rate_limit_is_reported_once_an_hour_with_the_figure_and_threshold() {
    let app = alerting_app().await;
    let (id, secret) = create_key(&app, "Checkout backend", json!({})).await;
    within_one_minute(&app);
    for _ in 0..85 {
        assert_eq!(app.verify(json!({"key": secret})).await["code"], "VALID");
    }
    wait_for_usage(&app, &id, 85).await;
    let now = app.state.clock.now();
    assert_eq!(job(&app, Job::UsageAlerts, now).await.alerts, 1);
    // The same minute seen again, and later in the same hour: nothing new.
    assert_eq!(job(&app, Job::UsageAlerts, now).await.alerts, 0);
    assert_eq!(
        job(&app, Job::UsageAlerts, now + chrono::Duration::seconds(30))
            .await
            .alerts,
        0
    );

    let smtp = MailServer::start_new();
    let (delivery, inbox) = deliver(&app, &smtp, now).await;
    assert_eq!(delivery.sent, 1);
    assert_eq!(inbox.len(), 1);
    let mail = &inbox[0];
    check_alert(
        mail,
        "approaching_rate_limit",
        "Checkout backend",
        &[&secret, &app.admin_key],
    );
    assert!(mail.subject.contains("85%"), "{}", mail.subject);
    assert!(
        mail.text.contains("used 85 of its 100 requests per minute (85%)"),
        "{}",
        mail.text
    );
    assert!(mail.text.contains("at 80% of the limit"), "{}", mail.text);
    assert!(mail.message_id.contains("@keyledger"), "{}", mail.message_id);
    // Sent means sent: another pass sends nothing.
    assert_eq!(mailer(&app, &smtp).run_once(now).await.unwrap(), Delivery::default());
    assert_eq!(
        alert_rows(&app).await,
        [("approaching_rate_limit".into(), "sent".into())]
    );
}

#[actix_web::test]
async fn a_high_error_rate_over_the_window_is_reported_with_the_measured_rate() {
    let app = alerting_app().await;
    let (id, secret) = create_key(&app, "Reporting job", json!({"scopes": ["read:consumers"]})).await;
    for _ in 0..45 {
        app.verify(json!({"key": secret, "scopes": ["read:consumers"]})).await;
    }
    for _ in 0..4 {
        app.verify(json!({"key": secret, "scopes": ["write:consumers"]})).await;
    }
    wait_for_usage(&app, &id, 49).await;
    // 4 of 49 (8.2%), below both the rate and the minimum of 50 requests.
    assert_eq!(job(&app, Job::UsageAlerts, Utc::now()).await.alerts, 0);
    for _ in 0..2 {
        app.verify(json!({"key": secret, "scopes": ["write:consumers"]})).await;
    }
    wait_for_usage(&app, &id, 51).await;
    let now = Utc::now();
    assert_eq!(job(&app, Job::UsageAlerts, now).await.alerts, 1);
    assert_eq!(job(&app, Job::UsageAlerts, now).await.alerts, 0, "once an hour");
    // Past the 15-minute window the failures no longer count.
    assert_eq!(
        job(&app, Job::UsageAlerts, now + chrono::Duration::minutes(20))
            .await
            .alerts,
        0
    );

    let smtp = MailServer::start_new();
    let (_, inbox) = deliver(&app, &smtp, now).await;
    assert_eq!(inbox.len(), 1);
    check_alert(&inbox[0], "error_rate", "Reporting job", &[&secret]);
    assert!(inbox[0].subject.contains("11.8%"), "{}", inbox[0].subject);
    assert!(inbox[0].text.contains("6 of the 51 requests"), "{}", inbox[0].text);
    assert!(inbox[0].text.contains("threshold of 10%"), "{}", inbox[0].text);
    assert!(inbox[0].text.contains("insufficient_scope"), "{}", inbox[0].text);
}

/// A key created `age` ago by the real command handler, with the events'
/// clock set back (how a test makes "a key created 76 days ago").
async fn key_created_ago(app: &TestApp, name: &str, age: chrono::Duration) -> String {
    let key_id = KeyId::new();
    let mut random = [0u8; 32];
    random[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let request = CreateKeyRequest {
        key_id,
        org_id: app.org_id.parse::<OrgId>().unwrap(),
        name: name.into(),
        key_type: "secret".into(),
        scopes: None,
        expires_at: None,
        rotation_days: 90,
        allowed_ips: None,
        secret: SecretSource {
            random,
            hash_key: app.hash_key.clone(),
        },
    };
    let command = KeyCommand::Create(Box::new(request.parse(Utc::now() - age).unwrap()));
    let meta = EventMeta {
        actor: "test".into(),
        request_id: None,
        occurred_at: Utc::now() - age,
    };
    handler::execute::<ApiKey>(&app.pool, &key::stream_id(key_id), command, &meta, |_| Ok(()))
        .await
        .unwrap();
    key_id.to_string()
}

/// Usage recorded for a past minute, as an API process records it.
async fn used_at(app: &TestApp, key_id: &str, minute: DateTime<Utc>, requests: u64) {
    use chrono::DurationRound;
    let minute = minute.duration_trunc(chrono::Duration::minutes(1)).unwrap();
    let used = key::KeyUsed {
        minute,
        requests,
        successful: requests,
        failed: 0,
        rate_limited: 0,
        last_used_at: minute,
    };
    let meta = EventMeta {
        actor: "test".into(),
        request_id: None,
        occurred_at: Utc::now(),
    };
    let stream = key::stream_id(key_id.parse().unwrap());
    handler::execute::<ApiKey>(&app.pool, &stream, KeyCommand::RecordUsage(used), &meta, |_| Ok(()))
        .await
        .unwrap();
}

#[actix_web::test]
async fn a_burst_far_above_the_keys_weekly_average_is_reported_as_unusual() {
    let app = alerting_app().await;
    app.patch(
        "/v1/org",
        json!({"alert_settings": {"unusual_activity_factor": 5, "unusual_activity_min_requests": 30}}),
    )
    .await
    .expect(200);
    // A steady key: 10 requests an hour for the past 8 days, so its hourly
    // average is 10 and 30 in an hour is only 3 times that.
    let steady = key_created_ago(&app, "Steady sync", days(8)).await;
    for day in 1..=7 {
        used_at(&app, &steady, Utc::now() - days(day), 240).await;
    }
    // A new key with no history at all.
    let (fresh, secret) = create_key(&app, "Fresh importer", json!({})).await;
    for _ in 0..30 {
        app.verify(json!({"key": secret})).await;
    }
    used_at(&app, &steady, Utc::now(), 30).await;
    wait_for_usage(&app, &fresh, 30).await;

    let now = Utc::now();
    job(&app, Job::UsageAlerts, now).await;
    assert_eq!(alerts_about(&app, "unusual_activity", &fresh).await, 1);
    assert_eq!(
        alerts_about(&app, "unusual_activity", &steady).await,
        0,
        "3 times its average"
    );
    let smtp = MailServer::start_new();
    let (_, inbox) = deliver(&app, &smtp, now).await;
    let mail = inbox
        .iter()
        .find(|m| m.text.contains("Fresh importer"))
        .expect("the fresh key's alert");
    check_alert(mail, "unusual_activity", "Fresh importer", &[&secret]);
    assert!(mail.text.contains("made 30 requests in the last hour"), "{}", mail.text);
    assert!(mail.text.contains("no traffic in the 7 days before"), "{}", mail.text);
    assert!(mail.text.contains("at least 30 requests"), "{}", mail.text);

    // The steady key's traffic jumps to 39 times its average (60 requests in
    // each of six minutes of the last hour): now it is unusual.
    for k in 0..6 {
        used_at(&app, &steady, Utc::now() - chrono::Duration::minutes(5 + 9 * k), 60).await;
    }
    let later = Utc::now();
    job(&app, Job::UsageAlerts, later).await;
    assert_eq!(alerts_about(&app, "unusual_activity", &steady).await, 1);
    assert_eq!(alerts_about(&app, "unusual_activity", &fresh).await, 1, "once an hour");
    // Still unusual 50 minutes on (most often in the next clock hour): still
    // one alert, as "at most once an hour" means.
    job(&app, Job::UsageAlerts, later + chrono::Duration::minutes(50)).await;
    assert_eq!(alerts_about(&app, "unusual_activity", &steady).await, 1);
    let (_, inbox) = deliver(&app, &smtp, later).await;
    let mail = inbox
        .iter()
        .find(|m| m.text.contains("Steady sync"))
        .expect("the steady key's alert");
    check_alert(mail, "unusual_activity", "Steady sync", &[&secret]);
    assert!(mail.text.contains("made 390 requests"), "{}", mail.text);
    assert!(
        mail.text.contains("average over the 7 days before was 10.0 requests"),
        "{}",
        mail.text
    );
    assert!(mail.text.contains("39.0 times"), "{}", mail.text);
}

#[actix_web::test]
async fn keys_unused_for_30_days_are_listed_in_one_weekly_digest_per_organization() {
    let app = alerting_app().await;
    let (_, first) = create_key(&app, "Old mobile app", json!({})).await;
    let (_, second) = create_key(&app, "Forgotten cron", json!({})).await;
    let start = Utc::now();
    assert_eq!(job(&app, Job::UnusedKeys, start + days(29)).await.alerts, 0);
    // A Monday 31+ days on, and later the same ISO week.
    let mut monday = start + days(31);
    while chrono::Datelike::weekday(&monday) != chrono::Weekday::Mon {
        monday += days(1);
    }
    assert_eq!(job(&app, Job::UnusedKeys, monday).await.alerts, 1);
    assert_eq!(job(&app, Job::UnusedKeys, monday + days(3)).await.alerts, 0);
    let smtp = MailServer::start_new();
    let (_, inbox) = deliver(&app, &smtp, monday).await;
    assert_eq!(inbox.len(), 1);
    let mail = &inbox[0];
    check_alert(
        mail,
        "unused_keys",
        "Old mobile app",
        &[&first, &second, &app.admin_key],
    );
    assert!(mail.text.contains("Forgotten cron"), "{}", mail.text);
    assert!(mail.text.contains("never used"), "{}", mail.text);
    assert!(mail.subject.contains("unused for 30 days"), "{}", mail.subject);
    // Next week, still unused: the next digest.
    assert_eq!(job(&app, Job::UnusedKeys, monday + days(7)).await.alerts, 1);
}

#[actix_web::test]
async fn a_key_created_76_days_ago_gets_the_14_day_reminder_and_regenerating_resets_the_clock() {
    let app = alerting_app().await;
    let id = key_created_ago(&app, "Payments service", days(76)).await;
    let overdue = key_created_ago(&app, "Legacy webhook", days(104)).await;
    let now = Utc::now();
    let report = job(&app, Job::Rotation, now).await;
    assert_eq!(report, Report { alerts: 2, events: 2 });
    assert_eq!(
        job(&app, Job::Rotation, now + chrono::Duration::hours(1)).await,
        Report::default()
    );
    let smtp = MailServer::start_new();
    let (_, inbox) = deliver(&app, &smtp, now).await;
    assert_eq!(inbox.len(), 2);
    let upcoming = inbox.iter().find(|m| m.text.contains("Payments service")).unwrap();
    check_alert(upcoming, "rotation_due", "Payments service", &[&app.admin_key]);
    assert!(
        upcoming.subject.contains("due for rotation in 14 days"),
        "{}",
        upcoming.subject
    );
    assert!(upcoming.text.contains("every 90 days"), "{}", upcoming.text);
    assert!(
        upcoming.text.contains(&format!("/v1/keys/{id}/regenerate")),
        "{}",
        upcoming.text
    );
    let late = inbox.iter().find(|m| m.text.contains("Legacy webhook")).unwrap();
    assert!(
        late.subject.contains("overdue for rotation (2 weeks)"),
        "{}",
        late.subject
    );
    let trail = app.get(&format!("/v1/keys/{overdue}/events")).await;
    let types: Vec<&str> = trail.expect(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"key.rotation_due"), "{types:?}");
    app.delete(&format!("/v1/keys/{overdue}")).await.expect(204);

    // On the due date and a week after it, the key gets its next reminders …
    assert_eq!(job(&app, Job::Rotation, now + days(14)).await.alerts, 1);
    assert_eq!(job(&app, Job::Rotation, now + days(21)).await.alerts, 1);
    assert_eq!(alerts_about(&app, "rotation_due", &id).await, 3);
    // … but once regenerated, nothing until 14 days before the new due date.
    let regenerated = app.post(&format!("/v1/keys/{id}/regenerate"), json!({})).await;
    let new_due = regenerated.expect(200)["rotation_due_at"].as_str().unwrap().to_owned();
    let regenerated_at = Utc::now();
    for offset in [0, 7, 30, 75] {
        job(&app, Job::Rotation, regenerated_at + days(offset)).await;
        let reminded = alerts_about(&app, "rotation_due", &id).await;
        assert_eq!(reminded, 3, "reminded {offset} days after regenerating");
    }
    job(&app, Job::Rotation, regenerated_at + days(77)).await;
    assert_eq!(alerts_about(&app, "rotation_due", &id).await, 4);
    let reminders: Vec<Value> = sqlx::query_scalar(
        "select data from events where stream_id = $1 and type = 'key.rotation_due' order by version",
    )
    .bind(format!("key-{id}"))
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(reminders.len(), 4, "{reminders:#?}");
    assert_eq!(reminders[3]["reminder"]["stage"], "upcoming");
    let due = |v: &Value| DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();
    let gap = due(&reminders[3]["rotation_due_at"]) - due(&json!(new_due));
    assert!(gap.num_seconds().abs() < 1, "the reminder is for the new due date");
}

#[actix_web::test]
async fn expiry_records_key_expired_once_and_warns_seven_days_ahead() {
    let app = alerting_app().await;
    let start = Utc::now();
    let (short, short_secret) = create_key(
        &app,
        "Contractor access",
        json!({"expires_at": (start + days(1)).to_rfc3339()}),
    )
    .await;
    let in_three_days = (start + days(3)).to_rfc3339();
    create_key(&app, "Partner pilot", json!({"expires_at": in_three_days})).await;
    create_key(
        &app,
        "Quarterly audit",
        json!({"expires_at": (start + days(10)).to_rfc3339()}),
    )
    .await;
    let first = job(&app, Job::Expiry, start).await;
    assert_eq!(
        first,
        Report { alerts: 2, events: 0 },
        "warnings for the two keys within 7 days"
    );

    let now = start + days(1) + chrono::Duration::seconds(30);
    assert_eq!(job(&app, Job::Expiry, now).await, Report { alerts: 0, events: 1 });
    assert_eq!(job(&app, Job::Expiry, now).await, Report::default());
    // Recorded, not only computed from the clock (which has not got there).
    let key = app.get(&format!("/v1/keys/{short}")).await;
    assert_eq!(key.expect(200)["status"], "expired");
    let types = app.stream_types(&short).await;
    assert_eq!(types.iter().filter(|t| *t == "key.expired").count(), 1, "{types:?}");

    let smtp = MailServer::start_new();
    let (_, inbox) = deliver(&app, &smtp, now).await;
    assert_eq!(inbox.len(), 2);
    let pilot = inbox.iter().find(|m| m.text.contains("Partner pilot")).unwrap();
    check_alert(pilot, "key_expiring", "Partner pilot", &[&short_secret]);
    assert!(pilot.subject.contains("expires in 3 days"), "{}", pilot.subject);
    assert!(pilot.text.contains("401 key_expired"), "{}", pilot.text);
}

#[actix_web::test]
async fn alerts_wait_while_smtp_is_down_and_are_each_sent_once_when_it_is_back() {
    let app = alerting_app().await;
    create_key(&app, "Old mobile app", json!({})).await;
    create_key(
        &app,
        "Pilot",
        json!({"expires_at": (Utc::now() + days(40)).to_rfc3339()}),
    )
    .await;
    let later = Utc::now() + days(35);
    assert_eq!(job(&app, Job::UnusedKeys, later).await.alerts, 1);
    assert_eq!(job(&app, Job::Expiry, later).await.alerts, 1);

    let mut smtp = MailServer::reserve();
    let mailer = mailer(&app, &smtp);
    let down = mailer.run_once(later).await.unwrap();
    assert_eq!(
        down,
        Delivery {
            sent: 0,
            retrying: 2,
            failed: 0
        }
    );
    let rows = alert_rows(&app).await;
    assert!(rows.iter().all(|(_, status)| status == "pending"), "{rows:?}");
    // Still down at the first retry: backoff, still pending.
    let retry = later + chrono::Duration::minutes(1);
    assert_eq!(mailer.run_once(retry).await.unwrap().retrying, 2);

    smtp.start();
    // Not due yet (the backoff doubled): nothing is attempted.
    assert_eq!(mailer.run_once(retry).await.unwrap(), Delivery::default());
    let back = later + chrono::Duration::hours(1);
    assert_eq!(mailer.run_once(back).await.unwrap().sent, 2);
    assert_eq!(mailer.run_once(back + days(1)).await.unwrap(), Delivery::default());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let inbox = smtp.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(inbox.len(), 2);
    let mut kinds: Vec<&str> = inbox.iter().map(|m| m.alert_kind.as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["key_expiring", "unused_keys"]);
    let attempts: Vec<i32> = sqlx::query_scalar("select attempts from alerts where status = 'sent'")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(attempts, [3, 3]);
}

#[actix_web::test]
async fn an_alert_that_cannot_be_delivered_is_marked_failed_after_its_last_attempt() {
    let app = alerting_app().await;
    create_key(&app, "Old mobile app", json!({})).await;
    let later = Utc::now() + days(31);
    assert_eq!(job(&app, Job::UnusedKeys, later).await.alerts, 1);
    let down = MailServer::reserve();
    let mut mailer = mailer(&app, &down);
    mailer.max_attempts = 3;
    let mut at = later;
    for attempt in 1..=3 {
        let delivery = mailer.run_once(at).await.unwrap();
        let expected = if attempt < 3 {
            Delivery {
                sent: 0,
                retrying: 1,
                failed: 0,
            }
        } else {
            Delivery {
                sent: 0,
                retrying: 0,
                failed: 1,
            }
        };
        assert_eq!(delivery, expected, "attempt {attempt}");
        at += chrono::Duration::hours(2);
    }
    let (status, attempts, error): (String, i32, Option<String>) =
        sqlx::query_as("select status, attempts, last_error from alerts")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("failed", 3));
    assert!(error.is_some_and(|e| !e.is_empty()), "the last error is on record");
    assert_eq!(
        mailer.run_once(at + days(1)).await.unwrap(),
        Delivery::default(),
        "given up"
    );
}

#[actix_web::test]
async fn each_address_gets_its_own_email_and_one_refused_address_does_not_silence_the_others() {
    let bouncing = format!("{}@acme.test", crate::smtp::BOUNCING);
    let app = spawn_app_with_alert_emails(&[OPS, &bouncing, SECURITY]).await;
    create_key(&app, "Old mobile app", json!({})).await;
    let later = Utc::now() + days(31);
    assert_eq!(job(&app, Job::UnusedKeys, later).await.alerts, 1);
    let smtp = MailServer::start_new();
    let (delivery, _) = deliver(&app, &smtp, later).await;
    assert_eq!(
        delivery,
        Delivery {
            sent: 1,
            retrying: 0,
            failed: 0
        }
    );
    let inbox = smtp.wait_for(2, Duration::from_secs(5)).await;
    let mut to: Vec<&str> = inbox.iter().map(|m| m.to.as_str()).collect();
    to.sort();
    assert_eq!(to, [OPS, SECURITY]);
    assert_ne!(inbox[0].message_id, inbox[1].message_id);
    assert_eq!(inbox[0].text, inbox[1].text);
    let (status, refusals): (String, Vec<String>) = sqlx::query_as("select status, refusals from alerts")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "sent");
    assert_eq!(refusals.len(), 1);
    assert!(
        refusals[0].starts_with(&bouncing),
        "the refusal is on record: {refusals:?}"
    );
    // Nobody is mailed again.
    assert_eq!(
        mailer(&app, &smtp).run_once(later + days(1)).await.unwrap(),
        Delivery::default()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.inbox().len(), 2);
}

#[actix_web::test]
async fn a_recipient_put_off_is_retried_alone_and_nobody_is_mailed_twice() {
    let later_address = format!("{}@acme.test", crate::smtp::DEFERRED);
    let app = spawn_app_with_alert_emails(&[&later_address, OPS]).await;
    create_key(&app, "Old mobile app", json!({})).await;
    let at = Utc::now() + days(31);
    assert_eq!(job(&app, Job::UnusedKeys, at).await.alerts, 1);
    let smtp = MailServer::start_new();
    let mailer = mailer(&app, &smtp);
    assert_eq!(mailer.run_once(at).await.unwrap().retrying, 1);
    assert_eq!(
        smtp.wait_for(1, Duration::from_secs(5)).await[0].to,
        OPS,
        "the put-off address held nobody back"
    );
    // The retry tries only the address that was put off.
    assert_eq!(
        mailer.run_once(at + chrono::Duration::hours(1)).await.unwrap().retrying,
        1
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.inbox().len(), 1, "nobody is mailed twice");
    let (status, delivered, error): (String, Vec<String>, Option<String>) =
        sqlx::query_as("select status, delivered_to, last_error from alerts")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), delivered), ("pending", vec![OPS.to_owned()]));
    assert!(error.is_some_and(|e| e.starts_with(&later_address)));
}

#[actix_web::test]
async fn a_replay_sends_no_email_and_raises_no_alert_again() {
    let app = alerting_app().await;
    key_created_ago(&app, "Payments service", days(80)).await;
    let now = Utc::now();
    assert_eq!(job(&app, Job::Rotation, now).await.alerts, 1);
    let smtp = MailServer::start_new();
    assert_eq!(deliver(&app, &smtp, now).await.1.len(), 1);
    keyledger_workers::tailing::replay::rebuild(&app.pool).await.unwrap();
    assert_eq!(job(&app, Job::Rotation, now).await, Report::default());
    assert_eq!(
        mailer(&app, &smtp).run_once(now + days(1)).await.unwrap(),
        Delivery::default()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.inbox().len(), 1);
    assert_eq!(alert_rows(&app).await.len(), 1);
}

#[actix_web::test]
async fn an_organization_without_alert_addresses_gets_no_email_but_the_alert_is_on_record() {
    let app = spawn_app().await;
    create_key(&app, "Quiet key", json!({})).await;
    assert_eq!(job(&app, Job::UnusedKeys, Utc::now() + days(31)).await.alerts, 1);
    let smtp = MailServer::start_new();
    assert_eq!(
        mailer(&app, &smtp).run_once(Utc::now()).await.unwrap(),
        Delivery::default()
    );
    assert_eq!(alert_rows(&app).await, [("unused_keys".into(), "unaddressed".into())]);
}

#[actix_web::test]
async fn a_job_another_worker_is_running_is_skipped() {
    let app = spawn_app().await;
    let mut holder = app.pool.acquire().await.unwrap();
    sqlx::query("select pg_advisory_lock($1)")
        .bind(Job::Expiry.lock_key())
        .execute(&mut *holder)
        .await
        .unwrap();
    assert_eq!(run_job(&app.pool, Job::Expiry, Utc::now()).await.unwrap(), None);
    // Another job is not held up by it.
    assert!(run_job(&app.pool, Job::Rotation, Utc::now()).await.unwrap().is_some());
    sqlx::query("select pg_advisory_unlock($1)")
        .bind(Job::Expiry.lock_key())
        .execute(&mut *holder)
        .await
        .unwrap();
    assert!(run_job(&app.pool, Job::Expiry, Utc::now()).await.unwrap().is_some());
    // A holder that dies without unlocking (a panic) does not keep the job locked.
    let lock = keyledger_workers::session_lock::SessionLock::try_acquire(&app.pool, Job::Expiry.lock_key())
        .await
        .unwrap()
        .expect("free");
    assert_eq!(run_job(&app.pool, Job::Expiry, Utc::now()).await.unwrap(), None);
    drop(lock);
    eventually(Duration::from_secs(5), || async {
        match run_job(&app.pool, Job::Expiry, Utc::now()).await.unwrap() {
            Some(_) => Ok(()),
            None => Err("the dropped holder's lock stayed".to_owned()),
        }
    })
    .await;
}

// ------------------------------------------------------- the real binary

/// `keyledger work` with every job running each second, mailing to `smtp`.
fn worker(url: &str, dir: &std::path::Path, smtp: &MailServer) -> std::process::Command {
    let mut command = keyledger(url, dir);
    command
        .arg("work")
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .env("SMTP_URL", smtp.url());
    for job in ["EXPIRY", "ROTATION", "USAGE_ALERTS", "UNUSED_KEYS"] {
        command.env(format!("KEYLEDGER_SCHEDULE_{job}"), "* * * * * *");
    }
    command
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[actix_web::test]
async fn two_workers_send_each_alert_once_record_each_expiry_once_and_a_replay_sends_nothing() {
    let (url, dir) = (crate::support::fresh_database_url(), temp_dir());
    let smtp = MailServer::start_new();
    let created = create_org(&url, &dir, "Twin", &["--alert-email", OPS]);
    let admin = created["key"]["key"].as_str().unwrap().to_owned();
    let mut serve = keyledger(&url, &dir);
    serve.arg("serve").env("KEYLEDGER_HASH_KEY", HASH_KEY);
    let serve = Server::start(&mut serve, dir.join("serve.log")).await;
    let first = Server::start_worker(&mut worker(&url, &dir, &smtp), dir.join("work-1.log"), "mailer started").await;
    let second = Server::start_worker(&mut worker(&url, &dir, &smtp), dir.join("work-2.log"), "mailer started").await;
    // Far enough ahead that the workers warn before the keys expire.
    let expires_at = (Utc::now() + chrono::Duration::seconds(8)).to_rfc3339();
    let mut secrets = vec![admin.clone()];
    for name in ["Contractor A", "Contractor B", "Contractor C"] {
        let key = call(
            &serve.address,
            awc::http::Method::POST,
            "/v1/keys",
            Some(&admin),
            Some(json!({"name": name, "type": "secret", "expires_at": expires_at})),
            &[],
        )
        .await;
        secrets.push(key.expect(201)["key"].as_str().unwrap().to_owned());
    }
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    eventually(Duration::from_secs(20), || async {
        match count(&pool, "select count(*) from events where type = 'key.expired'").await {
            3.. => Ok(()),
            recorded => Err(format!("keys not recorded expired ({recorded} of 3)")),
        }
    })
    .await;
    smtp.wait_for(3, Duration::from_secs(10)).await;
    // Several more ticks of both workers change nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let per_key: Vec<i64> =
        sqlx::query_scalar("select count(*) from events where type = 'key.expired' group by stream_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(per_key, [1, 1, 1]);
    let inbox = smtp.inbox();
    assert_eq!(inbox.len(), 3, "one warning per key: {inbox:#?}");
    for name in ["Contractor A", "Contractor B", "Contractor C"] {
        let mail = inbox
            .iter()
            .find(|m| m.text.contains(name))
            .expect("each key's warning");
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        check_alert(mail, "key_expiring", name, &secrets);
    }

    let mut replay = keyledger(&url, &dir);
    replay.arg("replay");
    let replayed = crate::binary::run(&mut replay);
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(smtp.inbox().len(), 3, "a replay sends no email");
    assert_eq!(count(&pool, "select count(*) from alerts").await, 3);
    assert_eq!(
        count(&pool, "select count(*) from events where type = 'key.expired'").await,
        3
    );
    let logs = [first.stop(), second.stop(), serve.stop()].concat();
    for secret in &secrets {
        assert!(!logs.contains(&secret[8..]), "a secret in the logs");
    }
}

#[actix_web::test]
async fn dev_mode_writes_alert_emails_as_eml_files_a_mail_program_opens() {
    let (url, dir) = (crate::support::fresh_database_url(), temp_dir());
    let created = create_org(&url, &dir, "Solo", &["--alert-email", OPS]);
    let admin = created["key"]["key"].as_str().unwrap().to_owned();
    let mut dev = keyledger(&url, &dir);
    dev.arg("dev")
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .env("KEYLEDGER_SCHEDULE_EXPIRY", "* * * * * *");
    let dev = Server::start(&mut dev, dir.join("dev.log")).await;
    let expires_at = (Utc::now() + days(2)).to_rfc3339();
    call(
        &dev.address,
        awc::http::Method::POST,
        "/v1/keys",
        Some(&admin),
        Some(json!({"name": "Trial <integration>", "type": "secret", "expires_at": expires_at})),
        &[],
    )
    .await
    .expect(201);
    let mail_dir = dir.join("mail");
    let file = eventually(Duration::from_secs(15), || async {
        std::fs::read_dir(&mail_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "eml"))
            .ok_or_else(|| format!("no .eml file in {}", mail_dir.display()))
    })
    .await;
    let raw = std::fs::read(&file).unwrap();
    let mail = Mail::parse(&raw, vec![]);
    assert!(mail.subject.contains("Trial <integration>"), "{}", mail.subject);
    assert!(mail.subject.contains("expires in 2 days"), "{}", mail.subject);
    assert_eq!(mail.to, OPS);
    assert!(mail.text.contains("What to do"), "{}", mail.text);
    assert!(mail.html.contains("Trial &lt;integration&gt;"), "{}", mail.html);
    let text = String::from_utf8_lossy(&raw);
    for header in [
        "From: ",
        "Date: ",
        "MIME-Version: 1.0",
        "Content-Type: multipart/alternative",
    ] {
        assert!(text.contains(header), "missing {header}: {text}");
    }
    assert!(!text.contains(&admin[8..]));
    dev.stop();
}
