//! Alert recipients (docs/api.md, "Alert recipients"): an address set over the API
//! is mailed one confirmation link and gets no alert until it follows it;
//! operator-given addresses count as confirmed; a removed address gets
//! nothing more; at most 10 recipients, 20 confirmation emails a day and a
//! key quota per organization; strict addresses; user text in headers shown
//! literally by mail programs; no token stored or logged; an upgraded
//! database and what `work` does for the addresses it had.

use std::time::Duration;

use awc::http::Method;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use keyledger_events::domain::confirmation::{Confirmation, CONFIRM_PATH};
use keyledger_events::domain::org::{self, ChangeSettingsRequest};
use keyledger_events::domain::{EmailAddress, Org, OrgCommand, OrgId};
use keyledger_events::handler;
use keyledger_events::log::EventMeta;
use keyledger_workers::alerts::mailer::{Delivery, Links, Mailer, Transport};
use keyledger_workers::jobs::scheduler::run_job;
use keyledger_workers::jobs::Job;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::alerts::{alert_rows, create_key, days, deliver, job, mailer, OPS, SECURITY};
use crate::binary::{create_org, keyledger, run, temp_dir, Server, HASH_KEY};
use crate::smtp::{Mail, MailServer};
use crate::support::{call, eventually, fresh_database_url, spawn_app, spawn_app_with_alert_emails, Answer, TestApp};

/// The confirmation link in an email's plain-text part.
fn link_in(text: &str) -> String {
    text.split_whitespace()
        .find(|word| word.contains(&format!("{CONFIRM_PATH}?token=")))
        .unwrap_or_else(|| panic!("no confirmation link in {text}"))
        .to_owned()
}

/// Runs the mailer once, now: what it did, and the inbox after it (whole:
/// the SMTP server stores each email before it answers the mailer).
async fn mail_now(app: &TestApp, smtp: &MailServer) -> (Delivery, Vec<Mail>) {
    let delivery = mailer(app, smtp).run_once(Utc::now()).await.unwrap();
    (delivery, smtp.inbox())
}

/// The confirmation emails in `inbox` to `email`, oldest first.
fn confirmations_to<'m>(inbox: &'m [Mail], email: &str) -> Vec<&'m Mail> {
    inbox
        .iter()
        .filter(|m| m.alert_kind == "recipient_confirmation" && m.to == email)
        .collect()
}

/// The one confirmation link the mailer sends `email` now.
async fn link_for(app: &TestApp, email: &str) -> String {
    let smtp = MailServer::start_new();
    let (_, inbox) = mail_now(app, &smtp).await;
    let mails = confirmations_to(&inbox, email);
    assert_eq!(mails.len(), 1, "{inbox:#?}");
    link_in(&mails[0].text)
}

/// Follows a link of this app the way a browser does (no API key).
async fn follow(app: &TestApp, link: &str) -> Answer {
    assert!(
        link.starts_with(&app.address),
        "{link} is not a link to {}",
        app.address
    );
    call(&app.address, Method::GET, &link[app.address.len()..], None, None, &[]).await
}

fn page(answer: &Answer) -> &str {
    answer
        .body
        .as_str()
        .unwrap_or_else(|| panic!("not a page: {:#}", answer.body))
}

async fn recipients(app: &TestApp) -> Value {
    app.get("/v1/org").await.expect(200)["alert_recipients"].clone()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Confirmation emails queued so far (sent or not).
async fn queued_confirmations(app: &TestApp) -> i64 {
    count(
        &app.pool,
        "select count(*) from alerts where kind = 'recipient_confirmation'",
    )
    .await
}

/// Waits until `n` backends of this database wait for a lock of `kind`
/// (`pg_stat_activity.wait_event` of a `Lock` wait: `advisory`, or
/// `transactionid` for a row another transaction is writing).
pub(crate) async fn wait_for_waiters(pool: &PgPool, kind: &str, n: i64) {
    eventually(Duration::from_secs(10), || async {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock' and wait_event = $1",
        )
        .bind(kind)
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting == n {
            return Ok(());
        }
        Err(format!("{waiting} backends wait for a {kind} lock, not {n}"))
    })
    .await
}

fn meta_at(at: DateTime<Utc>) -> EventMeta {
    EventMeta {
        actor: "test".into(),
        request_id: None,
        occurred_at: at,
    }
}

#[actix_web::test]
async fn an_address_set_over_the_api_gets_one_confirmation_link_and_no_alert_until_it_follows_it() {
    let app = spawn_app().await;
    let org = app.patch("/v1/org", json!({"alert_emails": [OPS]})).await;
    assert_eq!(
        org.expect(200)["alert_recipients"],
        json!([{"email": OPS, "confirmed_at": null}])
    );
    // Saving the same list again sends nothing new.
    app.patch("/v1/org", json!({"alert_emails": [OPS], "rotation_days": 60}))
        .await
        .expect(200);
    create_key(&app, "Old mobile app", json!({})).await;
    let later = Utc::now() + days(31);
    assert_eq!(job(&app, Job::UnusedKeys, later).await.alerts, 1);

    let smtp = MailServer::start_new();
    let delivery = mailer(&app, &smtp).run_once(later).await.unwrap();
    assert_eq!(
        delivery,
        Delivery {
            sent: 1,
            ..Delivery::default()
        }
    );
    let inbox = smtp.inbox();
    assert_eq!(inbox.len(), 1, "only the confirmation: {inbox:#?}");
    let mail = &inbox[0];
    assert_eq!(mail.alert_kind, "recipient_confirmation");
    assert_eq!(
        (mail.envelope_to.as_slice(), mail.to.as_str()),
        ([OPS.to_owned()].as_slice(), OPS)
    );
    assert!(
        mail.subject.contains("Confirm") && mail.subject.contains("Acme"),
        "{}",
        mail.subject
    );
    assert!(
        mail.text.contains("Acme") && mail.text.contains("7 days"),
        "{}",
        mail.text
    );
    let link = link_in(&mail.text);
    assert!(mail.html.contains(&link.replace('&', "&amp;")), "{}", mail.html);
    assert!(!mail.raw.contains(&app.admin_key[8..]));
    // The alert raised before the address confirmed is on record, for nobody.
    assert!(alert_rows(&app)
        .await
        .contains(&("unused_keys".into(), "unaddressed".into())));

    let confirmed = follow(&app, &link).await;
    assert_eq!(confirmed.status.as_u16(), 200, "{:#}", confirmed.body);
    assert!(confirmed.header("content-type").unwrap().starts_with("text/html"));
    assert_eq!(confirmed.header("referrer-policy"), Some("no-referrer"));
    assert!(page(&confirmed).contains("is confirmed") && page(&confirmed).contains(OPS));
    let now_recipients = recipients(&app).await;
    assert_eq!(now_recipients[0]["email"], OPS);
    assert!(now_recipients[0]["confirmed_at"].is_string(), "{now_recipients:#}");
    let confirmation: Value =
        sqlx::query_scalar("select data from events where stream_id = $1 and type = 'org.alert_recipient_confirmed'")
            .bind(format!("org-{}", app.org_id))
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(confirmation["email"], OPS);

    // Followed again: it already is; nothing is appended.
    let before = app.event_count().await;
    let again = follow(&app, &link).await;
    assert_eq!(again.status.as_u16(), 200, "{:#}", again.body);
    assert!(page(&again).contains("already confirmed"), "{}", page(&again));
    assert_eq!(app.event_count().await, before);

    // From now on the address gets the alerts.
    let next_week = later + days(7);
    assert_eq!(job(&app, Job::UnusedKeys, next_week).await.alerts, 1);
    let (_, inbox) = deliver(&app, &smtp, next_week).await;
    assert_eq!(inbox.len(), 2);
    assert_eq!(
        (inbox[1].alert_kind.as_str(), inbox[1].to.as_str()),
        ("unused_keys", OPS)
    );

    // The recipients are a read model of the log: a rebuild agrees, and keeps them.
    let differences = keyledger_workers::tailing::replay::check(&app.pool).await.unwrap();
    assert!(differences.is_empty(), "{differences:#?}");
    keyledger_workers::tailing::replay::rebuild(&app.pool).await.unwrap();
    assert_eq!(recipients(&app).await, now_recipients);
}

#[actix_web::test]
async fn links_that_are_forged_or_for_a_removed_address_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    app.patch("/v1/org", json!({"alert_emails": [OPS, SECURITY]}))
        .await
        .expect(200);
    let smtp = MailServer::start_new();
    let (_, inbox) = mail_now(&app, &smtp).await;
    let ops_link = link_in(&confirmations_to(&inbox, OPS)[0].text);
    let security_link = link_in(&confirmations_to(&inbox, SECURITY)[0].text);
    let before = app.event_count().await;
    let token = &ops_link[ops_link.find("token=").unwrap() + 6..];
    let mut forged = token.to_owned();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    for query in [
        format!("token={forged}"),
        // The address is part of what is signed: another one does not pass.
        format!("token={}", token.replace(&hex(OPS), &hex("attacker@evil.test"))),
        "token=".into(),
        "token=%00%ff".into(),
        "".into(),
    ] {
        let refused = call(
            &app.address,
            Method::GET,
            &format!("{CONFIRM_PATH}?{query}"),
            None,
            None,
            &[],
        )
        .await;
        assert_eq!(refused.status.as_u16(), 400, "{query}: {:#}", refused.body);
        assert!(page(&refused).contains("not valid"), "{}", page(&refused));
    }
    // A removed address cannot confirm itself back in.
    app.patch("/v1/org", json!({"alert_emails": [OPS]})).await.expect(200);
    assert_eq!(app.event_count().await, before + 1);
    let removed = follow(&app, &security_link).await;
    assert_eq!(removed.status.as_u16(), 410, "{:#}", removed.body);
    assert!(page(&removed).contains("no longer"), "{}", page(&removed));
    assert_eq!(app.event_count().await, before + 1);
    assert_eq!(recipients(&app).await, json!([{"email": OPS, "confirmed_at": null}]));
    // A key in the query string is still refused on that path.
    let with_key = call(
        &app.address,
        Method::GET,
        &format!("{CONFIRM_PATH}?token={token}&api_key=x"),
        None,
        None,
        &[],
    )
    .await;
    with_key.expect_error(400, "bad_request");
    follow(&app, &ops_link).await.expect(200);
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[actix_web::test]
async fn a_removed_address_gets_nothing_more_not_even_an_alert_raised_before() {
    let app = spawn_app_with_alert_emails(&[OPS, SECURITY]).await;
    let given = recipients(&app).await;
    assert_eq!(given.as_array().unwrap().len(), 2, "{given:#}");
    assert!(
        given.as_array().unwrap().iter().all(|r| r["confirmed_at"].is_string()),
        "operator-given addresses count as confirmed: {given:#}"
    );
    create_key(&app, "Old mobile app", json!({})).await;
    let later = Utc::now() + days(31);
    assert_eq!(job(&app, Job::UnusedKeys, later).await.alerts, 1);
    app.patch("/v1/org", json!({"alert_emails": [SECURITY]}))
        .await
        .expect(200);

    let smtp = MailServer::start_new();
    let delivery = mailer(&app, &smtp).run_once(later).await.unwrap();
    assert_eq!(
        delivery,
        Delivery {
            sent: 1,
            ..Delivery::default()
        }
    );
    let to: Vec<String> = smtp.inbox().iter().map(|m| m.to.clone()).collect();
    assert_eq!(to, [SECURITY]);
    let withdrawn: Vec<String> = sqlx::query_scalar("select withdrawn from alerts where kind = 'unused_keys'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(withdrawn, [OPS]);

    // Added back, it is a new address: unconfirmed, mailed a link, no alerts.
    app.patch("/v1/org", json!({"alert_emails": [SECURITY, OPS]}))
        .await
        .expect(200);
    assert_eq!(recipients(&app).await[1], json!({"email": OPS, "confirmed_at": null}));
    let next_week = later + days(7);
    assert_eq!(job(&app, Job::UnusedKeys, next_week).await.alerts, 1);
    let (_, inbox) = deliver(&app, &smtp, next_week).await;
    let mut got: Vec<(String, String)> = inbox[1..]
        .iter()
        .map(|m| (m.to.clone(), m.alert_kind.clone()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (OPS.into(), "recipient_confirmation".into()),
            (SECURITY.into(), "unused_keys".into())
        ]
    );
}

#[actix_web::test]
async fn an_address_removed_before_its_confirmation_email_goes_out_gets_nothing() {
    let app = spawn_app().await;
    app.patch("/v1/org", json!({"alert_emails": [OPS, SECURITY]}))
        .await
        .expect(200);
    app.patch("/v1/org", json!({"alert_emails": [SECURITY]}))
        .await
        .expect(200);
    let smtp = MailServer::start_new();
    let (delivery, inbox) = mail_now(&app, &smtp).await;
    assert_eq!(
        delivery,
        Delivery {
            sent: 1,
            ..Delivery::default()
        }
    );
    let to: Vec<&str> = inbox.iter().map(|m| m.to.as_str()).collect();
    assert_eq!(to, [SECURITY]);
    let (status, withdrawn): (String, Vec<String>) = sqlx::query_as(
        "select status, withdrawn from alerts where kind = 'recipient_confirmation' and $1 = any(recipients)",
    )
    .bind(OPS)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), withdrawn.as_slice()),
        ("unaddressed", [OPS.to_owned()].as_slice())
    );
    // Nor later.
    let (delivery, _) = mail_now(&app, &smtp).await;
    assert_eq!(delivery, Delivery::default());
    assert_eq!(smtp.inbox().len(), 1);
}

#[actix_web::test]
async fn concurrent_saves_of_the_same_new_address_send_one_confirmation() {
    let app = spawn_app().await;
    let answers =
        futures_util::future::join_all((0..4).map(|_| app.patch("/v1/org", json!({"alert_emails": [OPS]})))).await;
    for answer in &answers {
        match answer.status.as_u16() {
            200 => {}
            409 => {
                let message = answer.body["error"]["message"].as_str().unwrap();
                assert!(message.contains("organization"), "{message}");
            }
            other => panic!("{other}: {:#}", answer.body),
        }
    }
    assert!(answers.iter().any(|a| a.status.as_u16() == 200));
    let requests = count(
        &app.pool,
        "select count(*) from events where type = 'org.alert_recipient_confirmation_requested'",
    )
    .await;
    assert_eq!((requests, queued_confirmations(&app).await), (1, 1));
    let smtp = MailServer::start_new();
    let (_, inbox) = mail_now(&app, &smtp).await;
    assert_eq!(confirmations_to(&inbox, OPS).len(), 1, "{inbox:#?}");
}

#[actix_web::test]
async fn a_concurrent_change_of_the_organization_is_a_conflict_named_after_it() {
    let mut app = spawn_app().await;
    // The projector would wait on the other writer's row too (the PATCH must
    // be the only waiter counted below).
    app.stop_background().await;
    let org_id: OrgId = app.org_id.parse().unwrap();
    // Another writer has appended to the organization and not committed yet.
    let command = OrgCommand::ChangeSettings(
        ChangeSettingsRequest {
            rotation_days: Some(30),
            ..ChangeSettingsRequest::default()
        }
        .parse(),
    );
    let decided = handler::decide::<Org>(
        &app.pool,
        &org::stream_id(org_id),
        command,
        &meta_at(Utc::now()),
        |_| Ok(()),
    )
    .await
    .unwrap();
    let mut other = app.pool.begin().await.unwrap();
    decided.append(&mut other).await.unwrap();
    let before = app.event_count().await;
    let (address, admin) = (app.address.clone(), app.admin_key.clone());
    let patch = actix_web::rt::spawn(async move {
        call(
            &address,
            Method::PATCH,
            "/v1/org",
            Some(&admin),
            Some(json!({"rotation_days": 60})),
            &[],
        )
        .await
    });
    // The PATCH waits on the other writer's version of the stream.
    wait_for_waiters(&app.pool, "transactionid", 1).await;
    other.commit().await.unwrap();
    let answer = patch.await.unwrap();
    answer.expect_error(409, "conflict");
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("organization") && !message.contains("key"),
        "{message}"
    );
    assert_eq!(app.event_count().await, before + 1, "only the other writer's event");
    assert_eq!(app.get("/v1/org").await.expect(200)["rotation_days"], 30);
}

#[actix_web::test]
async fn a_link_followed_while_the_organization_changes_is_retried_and_confirms() {
    let app = spawn_app().await;
    app.patch("/v1/org", json!({"alert_emails": [OPS]})).await.expect(200);
    let link = link_for(&app, OPS).await;
    // Another writer has appended to the organization and not committed yet.
    let org_id: OrgId = app.org_id.parse().unwrap();
    let command = OrgCommand::ChangeSettings(
        ChangeSettingsRequest {
            rotation_days: Some(30),
            ..ChangeSettingsRequest::default()
        }
        .parse(),
    );
    let decided = handler::decide::<Org>(
        &app.pool,
        &org::stream_id(org_id),
        command,
        &meta_at(Utc::now()),
        |_| Ok(()),
    )
    .await
    .unwrap();
    let mut other = app.pool.begin().await.unwrap();
    decided.append(&mut other).await.unwrap();
    let (address, path) = (app.address.clone(), link[app.address.len()..].to_owned());
    let followed = actix_web::rt::spawn(async move { call(&address, Method::GET, &path, None, None, &[]).await });
    // The confirmation waits on the other writer's version of the stream,
    // then loses to it, and is retried once on the new state.
    wait_for_waiters(&app.pool, "transactionid", 1).await;
    other.commit().await.unwrap();
    let answer = followed.await.unwrap();
    assert_eq!(answer.status.as_u16(), 200, "{:#}", answer.body);
    assert!(page(&answer).contains("is confirmed"), "{}", page(&answer));
    assert!(recipients(&app).await[0]["confirmed_at"].is_string());
}

#[actix_web::test]
async fn at_most_twenty_confirmation_emails_a_day_over_the_api() {
    let app = spawn_app().await;
    for batch in 0..2 {
        let ten: Vec<String> = (0..10).map(|i| format!("a{batch}-{i}@acme.test")).collect();
        app.patch("/v1/org", json!({"alert_emails": ten})).await.expect(200);
    }
    assert_eq!(queued_confirmations(&app).await, 20);
    let before = app.event_count().await;
    let refused = app
        .patch("/v1/org", json!({"alert_emails": ["one-more@acme.test"]}))
        .await;
    refused.expect_error(403, "quota_exceeded");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("confirmation") && message.contains("20"), "{message}");
    assert_eq!(app.event_count().await, before, "nothing appended");
    assert_eq!(queued_confirmations(&app).await, 20, "nothing queued");
    // A link followed gives no place back. (The first ten addresses were
    // replaced by the next ten: only those are mailed.)
    let smtp = MailServer::start_new();
    let (delivery, inbox) = mail_now(&app, &smtp).await;
    assert_eq!(delivery.sent, 10);
    let first = "a1-0@acme.test";
    follow(&app, &link_in(&confirmations_to(&inbox, first)[0].text))
        .await
        .expect(200);
    let again = app
        .patch("/v1/org", json!({"alert_emails": [first, "one-more@acme.test"]}))
        .await;
    again.expect_error(403, "quota_exceeded");
    assert_eq!(queued_confirmations(&app).await, 20);
    assert_eq!(
        recipients(&app).await.as_array().unwrap().len(),
        10,
        "the list is unchanged"
    );
}

/// Sets `email` as of `at` (the events' clock set back), with its
/// confirmation email queued then, as `PATCH /v1/org` would have.
async fn set_address_at(app: &TestApp, email: &str, at: DateTime<Utc>) -> DateTime<Utc> {
    let org_id: OrgId = app.org_id.parse().unwrap();
    let command = OrgCommand::ChangeSettings(
        ChangeSettingsRequest {
            alert_emails: Some(vec![email.into()]),
            ..ChangeSettingsRequest::default()
        }
        .parse(),
    );
    let outcome = handler::execute::<Org>(&app.pool, &org::stream_id(org_id), command, &meta_at(at), |_| Ok(()))
        .await
        .unwrap();
    let requested_at = *outcome.state.unwrap().confirmation_requests.values().next().unwrap();
    let mut conn = app.pool.acquire().await.unwrap();
    let email = EmailAddress::parse(email).unwrap();
    keyledger_events::alert_outbox::request_confirmation(&mut conn, org_id, &email, requested_at)
        .await
        .unwrap();
    requested_at
}

#[actix_web::test]
async fn a_link_replaced_by_a_newer_one_is_refused() {
    let app = spawn_app().await;
    // Asked 8 days ago (the link expired), asked again today.
    set_address_at(&app, OPS, Utc::now() - days(8)).await;
    app.patch("/v1/org", json!({"alert_emails": [OPS]})).await.expect(200);
    assert_eq!(queued_confirmations(&app).await, 2);
    let smtp = MailServer::start_new();
    let (_, inbox) = mail_now(&app, &smtp).await;
    let mails = confirmations_to(&inbox, OPS);
    assert_eq!(mails.len(), 2, "{inbox:#?}");
    let (old, new) = (link_in(&mails[0].text), link_in(&mails[1].text));
    assert_ne!(old, new);
    let before = app.event_count().await;
    let replaced = follow(&app, &old).await;
    assert_eq!(replaced.status.as_u16(), 410, "{:#}", replaced.body);
    assert!(
        page(&replaced).contains("replaced by a newer one"),
        "{}",
        page(&replaced)
    );
    assert_eq!(app.event_count().await, before);
    assert_eq!(recipients(&app).await[0]["confirmed_at"], Value::Null);
    follow(&app, &new).await.expect(200);
    assert!(recipients(&app).await[0]["confirmed_at"].is_string());
}

#[actix_web::test]
async fn a_link_older_than_seven_days_has_expired() {
    let app = spawn_app().await;
    let requested_at = set_address_at(&app, OPS, Utc::now() - days(7) - chrono::Duration::minutes(1)).await;
    let link = link_for(&app, OPS).await;
    assert_eq!(
        link,
        Confirmation {
            org_id: app.org_id.parse().unwrap(),
            email: EmailAddress::parse(OPS).unwrap(),
            requested_at,
        }
        .link(&app.hash_key, &app.address)
    );
    let before = app.event_count().await;
    let expired = follow(&app, &link).await;
    assert_eq!(expired.status.as_u16(), 410, "{:#}", expired.body);
    assert!(page(&expired).contains("expired"), "{}", page(&expired));
    assert_eq!(app.event_count().await, before);
    // Saving the list again sends a new link, which works.
    app.patch("/v1/org", json!({"alert_emails": [OPS]})).await.expect(200);
    follow(&app, &link_for(&app, OPS).await).await.expect(200);
    assert!(recipients(&app).await[0]["confirmed_at"].is_string());
}

#[actix_web::test]
async fn at_most_ten_alert_recipients_per_organization() {
    let app = spawn_app().await;
    let before = app.event_count().await;
    let eleven: Vec<String> = (0..11).map(|i| format!("ops{i}@acme.test")).collect();
    let refused = app.patch("/v1/org", json!({"alert_emails": eleven})).await;
    refused.expect_error(403, "quota_exceeded");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("alert recipients") && message.contains("10"),
        "{message}"
    );
    assert_eq!(app.event_count().await, before);
    let ten = &eleven[..10];
    let org = app.patch("/v1/org", json!({"alert_emails": ten})).await;
    assert_eq!(org.expect(200)["alert_recipients"].as_array().unwrap().len(), 10);
    // The same address twice is one recipient.
    let mut repeated = ten.to_vec();
    repeated.push(ten[0].clone());
    app.patch("/v1/org", json!({"alert_emails": repeated}))
        .await
        .expect(200);
    // The operator's command has the same cap.
    let (url, dir) = (fresh_database_url(), temp_dir());
    let mut command = keyledger(&url, &dir);
    command
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .args(["org", "create", "--name", "Big"]);
    for address in &eleven {
        command.args(["--alert-email", address]);
    }
    let output = run(&mut command);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("alert recipients"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[actix_web::test]
async fn alert_addresses_must_be_plain_addresses() {
    let app = spawn_app().await;
    let before = app.event_count().await;
    for bad in [
        "\"Evil\"<x@y.z>",
        "Evil <x@y.z>",
        "<x@y.z>",
        "a,c@d.com",
        "x@y.z>",
        "x@y.z\r\nBcc: a@b.c",
        "x@y.z\nBcc: a@b.c",
        "\"quoted\"@y.z",
        "x y@z.com",
        "x..y@z.com",
        ".x@z.com",
        "x.@z.com",
        "x@-z.com",
        "x@z-.com",
        "x@z_z.com",
        "x@[127.0.0.1]",
        "x@localhost",
        "x@z.com.",
        "x(comment)@z.com",
        "x@z.com;y@z.com",
        "caf\u{e9}@z.com",
        "x@z.c\u{f6}m",
        &format!("{}@z.com", "a".repeat(65)),
        &format!("x@{}.com", "a".repeat(64)),
    ] {
        let answer = app.patch("/v1/org", json!({"alert_emails": [bad]})).await;
        answer.expect_error(422, "validation_error");
        let problems = &answer.body["error"]["details"]["alert_emails"];
        assert!(problems.is_array(), "{bad:?} → {:#}", answer.body);
    }
    assert_eq!(app.event_count().await, before);
    let good = [
        "first.last+tag@mail.example.com",
        "o'brien@example.ie",
        "x_y-z@a-b.example",
    ];
    app.patch("/v1/org", json!({"alert_emails": good})).await.expect(200);

    let (url, dir) = (fresh_database_url(), temp_dir());
    for bad in ["\"Evil\"<x@y.z>", "a,c@d.com"] {
        let mut command = keyledger(&url, &dir);
        command
            .env("KEYLEDGER_HASH_KEY", HASH_KEY)
            .args(["org", "create", "--name", "Evil", "--alert-email", bad]);
        let output = run(&mut command);
        assert!(!output.status.success(), "{bad} accepted");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("alert_emails"),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[actix_web::test]
async fn user_text_in_an_email_subject_is_shown_literally_by_mail_programs() {
    let app = spawn_app_with_alert_emails(&[OPS]).await;
    let names = [
        "=?utf-8?B?SGFja2Vk?= backend",
        "=?utf-8?Q?Urgent=3A_wire_money?=",
        "Caf\u{e9} \u{2615} =?iso-8859-1?q?x?=",
    ];
    let expires_at = (Utc::now() + days(3)).to_rfc3339();
    for name in names {
        create_key(&app, name, json!({"expires_at": expires_at})).await;
    }
    let now = Utc::now();
    assert_eq!(job(&app, Job::Expiry, now).await.alerts, 3);
    let smtp = MailServer::start_new();
    let (_, inbox) = deliver(&app, &smtp, now).await;
    assert_eq!(inbox.len(), 3);
    for name in names {
        let mail: &Mail = inbox
            .iter()
            .find(|m| m.text.contains(name))
            .unwrap_or_else(|| panic!("{name}: {inbox:#?}"));
        assert!(
            mail.subject.contains(&format!("\"{name}\"")),
            "the subject as a mail program shows it: {}",
            mail.subject
        );
    }
}

/// Far below the quota, creations share the organization's quota lock (and
/// so commit together); only near it does one count alone.
#[actix_web::test]
async fn creations_far_below_the_quota_share_its_lock_and_only_an_exclusive_holder_stops_them() {
    let app = spawn_app().await;
    let lock = |how: &'static str| {
        let (pool, org_id) = (app.pool.clone(), app.org_id.clone());
        async move {
            let mut holder = pool.begin().await.unwrap();
            sqlx::query(&format!("select {how}($1, hashtext($2))"))
                .bind(keyledger_api::keys::KEY_QUOTA_LOCK)
                .bind(org_id)
                .execute(&mut *holder)
                .await
                .unwrap();
            holder
        }
    };
    // Another creation in flight holds the lock shared: this one goes ahead.
    let shared = lock("pg_advisory_xact_lock_shared").await;
    let created = tokio::time::timeout(
        Duration::from_secs(10),
        app.post("/v1/keys", json!({"name": "alongside", "type": "secret"})),
    )
    .await
    .expect("a creation far below the quota does not wait for another one");
    created.expect(201);
    shared.rollback().await.unwrap();
    // Held exclusively (a creation near the quota counting alone): it waits.
    let exclusive = lock("pg_advisory_xact_lock").await;
    let waiting = actix_web::rt::spawn({
        let (address, admin) = (app.address.clone(), app.admin_key.clone());
        async move {
            call(
                &address,
                Method::POST,
                "/v1/keys",
                Some(&admin),
                Some(json!({"name": "after", "type": "secret"})),
                &[],
            )
            .await
        }
    });
    wait_for_waiters(&app.pool, "advisory", 1).await;
    exclusive.rollback().await.unwrap();
    waiting.await.unwrap().expect(201);
}

/// A quota just above what the shared check needs to skip counting: the
/// first creations go by the bound from an earlier count, the later ones
/// count again, the last ones alone; however they interleave, exactly the
/// quota is created.
#[actix_web::test]
async fn concurrent_creations_from_far_below_to_the_quota_create_exactly_the_quota() {
    let server = PgPool::connect(&crate::support::server_database_url()).await.unwrap();
    let connections: i64 = sqlx::query_scalar("select current_setting('max_connections')::bigint")
        .fetch_one(&server)
        .await
        .unwrap();
    server.close().await;
    let quota = 2 * connections as u64 + 12;
    let app = crate::support::spawn_app_with_key_quota(quota).await;
    // An organization whose rate limit the creations cannot reach.
    let big = keyledger::cli::create_org(
        &app.pool,
        app.hash_key.clone(),
        "Big".into(),
        "enterprise".into(),
        Some(10_000_000),
        vec![],
    )
    .await
    .unwrap();
    let admin_key = big["key"]["key"].as_str().unwrap().to_owned();
    let attempts = quota as usize + 20;
    let statuses: Vec<u16> = futures_util::stream::iter(0..attempts)
        .map(|n| {
            let (address, admin) = (app.address.clone(), admin_key.clone());
            async move {
                call(
                    &address,
                    Method::POST,
                    "/v1/keys",
                    Some(&admin),
                    Some(json!({"name": format!("key {n}"), "type": "secret"})),
                    &[],
                )
                .await
                .status
                .as_u16()
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    // The admin key counts too.
    let created = statuses.iter().filter(|s| **s == 201).count();
    assert_eq!(created as u64, quota - 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 403), "{statuses:?}");
    let live: i64 = sqlx::query_scalar("select count(*) from keys where org_id = $1 and deleted_at is null")
        .bind(big["org"]["id"].as_str().unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(live as u64, quota);
    let transactions: i64 = sqlx::query_scalar(
        "select count(distinct tx_id) from events where type = 'key.created' and data->>'org_id' = $1",
    )
    .bind(big["org"]["id"].as_str().unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(transactions < live, "{live} keys in {transactions} transactions");
}

#[actix_web::test]
async fn an_organization_at_its_key_quota_gets_403_and_concurrent_creates_never_pass_it() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let created = create_org(&url, &dir, "Quota", &["--plan", "pro"]);
    let admin = created["key"]["key"].as_str().unwrap().to_owned();
    let org_id = created["org"]["id"].as_str().unwrap().to_owned();
    let mut serve = keyledger(&url, &dir);
    serve
        .arg("serve")
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .env("KEYLEDGER_MAX_KEYS_PER_ORG", "6");
    let serve = Server::start(&mut serve, dir.join("serve.log")).await;
    let create = |name: String| {
        let (address, admin) = (serve.address.clone(), admin.clone());
        async move {
            call(
                &address,
                Method::POST,
                "/v1/keys",
                Some(&admin),
                Some(json!({"name": name, "type": "secret"})),
                &[],
            )
            .await
        }
    };
    // The admin key and 3 more: 4 of 6.
    let mut ids = vec![];
    for n in 0..3 {
        ids.push(
            create(format!("key {n}")).await.expect(201)["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // The test holds the organization's quota lock; 10 creates start and
    // all wait for it; then it lets go: exactly 2 of them may pass.
    let pool = PgPool::connect(&url).await.unwrap();
    let mut holder = pool.acquire().await.unwrap();
    sqlx::query("select pg_advisory_lock($1, hashtext($2))")
        .bind(keyledger_api::keys::KEY_QUOTA_LOCK)
        .bind(&org_id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let racers: Vec<_> = (0..10)
        .map(|n| actix_web::rt::spawn(create(format!("racer {n}"))))
        .collect();
    wait_for_waiters(&pool, "advisory", 10).await;
    sqlx::query("select pg_advisory_unlock($1, hashtext($2))")
        .bind(keyledger_api::keys::KEY_QUOTA_LOCK)
        .bind(&org_id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut answers = vec![];
    for racer in racers {
        answers.push(racer.await.unwrap());
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 2, "{statuses:?}");
    for refused in answers.iter().filter(|a| a.status.as_u16() != 201) {
        refused.expect_error(403, "quota_exceeded");
        let message = refused.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("6 keys"), "{message}");
    }
    let created = count(&pool, "select count(*) from events where type = 'key.created'").await;
    assert_eq!(created, 6, "refusals append nothing");
    // Deleted keys do not count.
    let deleted = call(
        &serve.address,
        Method::DELETE,
        &format!("/v1/keys/{}", ids[0]),
        Some(&admin),
        None,
        &[],
    )
    .await;
    assert_eq!(deleted.status.as_u16(), 204);
    create("after a delete".into()).await.expect(201);
    create("one too many".into()).await.expect_error(403, "quota_exceeded");
    serve.stop();
}

/// One organization's history as a version before alert recipients wrote
/// it — its events, addresses as typed (they were checked less strictly
/// then), and its `orgs` row as it left it.
async fn old_org(pool: &PgPool, addresses: &[&str], changes: &[&[&str]]) -> String {
    use keyledger_events::domain::org::{CreateOrgRequest, OrgSettingsChanged};
    use keyledger_events::domain::{Aggregate, OrgEvent};
    use keyledger_events::log::{self, NewEvent};
    let id = OrgId::new();
    let created_at = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap();
    let mut events = Org::decide(
        None,
        OrgCommand::Create(
            CreateOrgRequest {
                org_id: id,
                name: "Old".into(),
                plan: "free".into(),
                rate_limit: None,
                alert_emails: vec![],
            }
            .parse()
            .unwrap(),
        ),
        created_at,
    )
    .unwrap();
    events.extend(changes.iter().map(|_| {
        OrgEvent::SettingsChanged(OrgSettingsChanged {
            alert_emails: Some(vec![]),
            ..OrgSettingsChanged::default()
        })
    }));
    let mut encoded: Vec<NewEvent> = events.iter().map(NewEvent::from_domain).collect();
    for (event, list) in encoded
        .iter_mut()
        .zip(std::iter::once(addresses).chain(changes.iter().copied()))
    {
        event.data["alert_emails"] = json!(list);
    }
    let mut tx = pool.begin().await.unwrap();
    log::append(&mut tx, &format!("org-{id}"), 0, &encoded, &meta_at(created_at))
        .await
        .unwrap();
    let last = changes.last().copied().unwrap_or(addresses);
    sqlx::query(
        "insert into orgs (id, name, plan, rate_limit_per_minute, alert_emails, rotation_days, alert_settings,
                           created_at, version)
         values ($1, 'Old', 'free', 100, $2, 90, $3, $4, $5)",
    )
    .bind(id.to_string())
    .bind(last)
    .bind(serde_json::to_value(keyledger_events::domain::org::AlertSettings::default()).unwrap())
    .bind(created_at)
    .bind(events.len() as i64)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id.to_string()
}

const EVIL: &str = "\"Evil\"<x@y.z>";

#[actix_web::test]
async fn an_upgraded_database_has_the_recipients_its_log_says_and_work_asks_the_unconfirmed_ones() {
    use sqlx::migrate::{MigrateDatabase, Migrator};
    let url = fresh_database_url();
    sqlx::Postgres::create_database(&url).await.unwrap();
    let pool = PgPool::connect(&url).await.unwrap();
    let before: Vec<_> = keyledger_events::MIGRATOR
        .migrations
        .iter()
        .filter(|m| m.version < 20261128090201)
        .cloned()
        .collect();
    Migrator {
        migrations: before.into(),
        ..Migrator::DEFAULT
    }
    .run(&pool)
    .await
    .unwrap();
    let kept = old_org(&pool, &["ops@a.test", "sec@a.test"], &[&["sec@a.test", "new@a.test"]]).await;
    let untouched = old_org(&pool, &["ops@b.test"], &[]).await;
    let re_added = old_org(&pool, &["ops@c.test"], &[&[], &["ops@c.test"]]).await;
    let none = old_org(&pool, &[], &[]).await;
    // Addresses the strict rules refuse, or spell differently.
    let loose = old_org(&pool, &[EVIL, "Ops@D.Test", "a,c@d.test"], &[]).await;
    let spelled = old_org(
        &pool,
        &["x@E.test"],
        &[&["x@e.test", "X@E.TEST", "x@E.TEST", "y@E.test"]],
    )
    .await;

    keyledger_events::MIGRATOR.run(&pool).await.unwrap();
    let rows: Vec<(String, String, i32, bool)> = sqlx::query_as(
        "select org_id, email, position, confirmed_at is not null from alert_recipients order by org_id, position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let of = |org: &str| -> Vec<(String, i32, bool)> {
        rows.iter()
            .filter(|r| r.0 == org)
            .map(|r| (r.1.clone(), r.2, r.3))
            .collect()
    };
    assert_eq!(
        of(&kept),
        [("sec@a.test".into(), 1, true), ("new@a.test".into(), 2, false)]
    );
    assert_eq!(of(&untouched), [("ops@b.test".into(), 1, true)]);
    assert_eq!(of(&re_added), [("ops@c.test".into(), 1, false)]);
    assert!(of(&none).is_empty());
    assert_eq!(
        of(&loose),
        [
            (EVIL.into(), 1, false),
            ("Ops@d.test".into(), 2, true),
            ("a,c@d.test".into(), 3, false)
        ]
    );
    assert_eq!(
        of(&spelled),
        [
            ("x@e.test".into(), 1, true),
            ("X@e.test".into(), 2, false),
            ("y@e.test".into(), 3, false)
        ]
    );
    let listed: Vec<String> = sqlx::query_scalar("select alert_emails from orgs where id = $1")
        .bind(&spelled)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(listed, ["x@e.test", "X@e.test", "y@e.test"]);
    // Exactly what replaying the log builds.
    let differences = keyledger_workers::tailing::replay::check(&pool).await.unwrap();
    assert!(differences.is_empty(), "{differences:#?}");
    assert_eq!(
        keyledger_workers::alerts::recipients::unusable(&pool).await.unwrap(),
        [(loose.clone(), vec![EVIL.to_owned(), "a,c@d.test".to_owned()])].into()
    );

    // `work` asks the addresses set over the API then, once; never the unusable ones.
    let now = Utc::now();
    let report = run_job(&pool, Job::RecipientConfirmations, now).await.unwrap().unwrap();
    assert_eq!((report.events, report.alerts), (4, 4));
    let mut asked: Vec<(String, String, String)> = sqlx::query_as(
        "select stream_id, data ->> 'email', actor from events
         where type = 'org.alert_recipient_confirmation_requested' order by position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    asked.sort();
    let actor = "system:recipient_confirmations".to_owned();
    let mut expected = vec![
        (format!("org-{kept}"), "new@a.test".to_owned(), actor.clone()),
        (format!("org-{re_added}"), "ops@c.test".to_owned(), actor.clone()),
        (format!("org-{spelled}"), "X@e.test".to_owned(), actor.clone()),
        (format!("org-{spelled}"), "y@e.test".to_owned(), actor.clone()),
    ];
    expected.sort();
    assert_eq!(asked, expected);
    let again = run_job(&pool, Job::RecipientConfirmations, now + days(8))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.events, again.alerts), (0, 0), "asked once");

    // The mailer sends those four links, and never mails an address that
    // does not parse, even one marked confirmed and named by an alert.
    sqlx::query("update alert_recipients set confirmed_at = now() where email = $1")
        .bind(EVIL)
        .execute(&pool)
        .await
        .unwrap();
    let org_row = keyledger_events::read_model::org_by_id(&pool, loose.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let mut alert = keyledger_workers::alerts::NewAlert::to_org(
        keyledger_workers::alerts::AlertKind::UnusedKeys,
        &org_row,
        None,
        "2026-W48".into(),
        keyledger_workers::alerts::email::compose("Unused keys", &[]),
    );
    assert_eq!(alert.recipients, ["Ops@d.test"]);
    alert.recipients.insert(0, EVIL.into());
    keyledger_workers::alerts::raise_alone(&pool, &alert, now)
        .await
        .unwrap();
    let smtp = MailServer::start_new();
    let links = Links {
        hash_key: keyledger_events::domain::HashKey::from_hex(HASH_KEY).unwrap(),
        public_url: "https://keys.example.test".into(),
    };
    let transport = Transport::new(Some(&smtp.url()), std::path::Path::new(".")).unwrap();
    let mailer = Mailer::new(pool.clone(), transport, "keyledger <alerts@keyledger.test>", links).unwrap();
    let delivery = mailer.run_once(now).await.unwrap();
    assert_eq!(
        delivery,
        Delivery {
            sent: 5,
            ..Delivery::default()
        }
    );
    let mut to: Vec<(String, String)> = smtp
        .inbox()
        .iter()
        .map(|m| (m.alert_kind.clone(), m.to.clone()))
        .collect();
    to.sort();
    assert_eq!(
        to,
        [
            ("recipient_confirmation".into(), "X@e.test".into()),
            ("recipient_confirmation".into(), "new@a.test".into()),
            ("recipient_confirmation".into(), "ops@c.test".into()),
            ("recipient_confirmation".into(), "y@e.test".into()),
            ("unused_keys".into(), "Ops@d.test".into()),
        ]
    );
    let withdrawn: Vec<String> = sqlx::query_scalar("select withdrawn from alerts where kind = 'unused_keys'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(withdrawn, [EVIL]);
}

/// The `.eml` files of confirmation emails in `dir/mail`, once there are `n`.
async fn confirmation_files(dir: &std::path::Path, n: usize) -> Vec<Mail> {
    let mail_dir = dir.join("mail");
    eventually(Duration::from_secs(20), || async {
        let mails: Vec<Mail> = std::fs::read_dir(&mail_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .filter(|p| p.to_string_lossy().contains("recipient_confirmation"))
            .map(|p| Mail::parse(&std::fs::read(p).unwrap(), vec![]))
            .collect();
        if mails.len() >= n {
            return Ok(mails);
        }
        Err(format!("{} confirmation emails in {}", mails.len(), mail_dir.display()))
    })
    .await
}

/// Every row of every table of the database, as text.
async fn dump(pool: &PgPool) -> String {
    let tables: Vec<String> = sqlx::query_scalar("select tablename::text from pg_tables where schemaname = 'public'")
        .fetch_all(pool)
        .await
        .unwrap();
    let mut dump = String::new();
    for table in &tables {
        let rows: Vec<String> = sqlx::query_scalar(&format!("select t::text from \"{table}\" t"))
            .fetch_all(pool)
            .await
            .unwrap();
        dump.push_str(&rows.join("\n"));
        dump.push('\n');
    }
    dump
}

#[actix_web::test]
async fn no_confirmation_token_is_stored_logged_or_in_an_event_and_work_builds_the_link() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let created = create_org(&url, &dir, "Tokens", &[]);
    let admin = created["key"]["key"].as_str().unwrap().to_owned();
    let mut serve = keyledger(&url, &dir);
    serve
        .arg("serve")
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .env("RUST_LOG", "trace");
    let serve = Server::start(&mut serve, dir.join("serve.log")).await;
    let mut work = keyledger(&url, &dir);
    work.arg("work")
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .env("KEYLEDGER_PUBLIC_URL", "https://keys.example.test/")
        .env("RUST_LOG", "trace");
    let work = Server::start_worker(&mut work, dir.join("work.log"), "mailer started").await;
    call(
        &serve.address,
        Method::PATCH,
        "/v1/org",
        Some(&admin),
        Some(json!({"alert_emails": [OPS, SECURITY]})),
        &[],
    )
    .await
    .expect(200);
    let mails = confirmation_files(&dir, 2).await;
    let mut tokens = vec![];
    for mail in &mails {
        let link = link_in(&mail.text);
        let base = format!("https://keys.example.test{CONFIRM_PATH}?token=");
        assert!(link.starts_with(&base), "{link}");
        tokens.push(link[base.len()..].to_owned());
    }
    // One is followed (on the API's own address).
    let followed = call(
        &serve.address,
        Method::GET,
        &format!("{CONFIRM_PATH}?token={}", tokens[0]),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(followed.status.as_u16(), 200, "{:#}", followed.body);
    let logs = serve.stop() + &work.stop();
    assert!(logs.contains("mailer started") && logs.contains("request"), "{logs}");

    let pool = PgPool::connect(&url).await.unwrap();
    let dump = dump(&pool).await;
    assert!(
        dump.contains("org.alert_recipient_confirmation_requested") && dump.contains("org.alert_recipient_confirmed"),
        "the dump covers the event log"
    );
    assert!(dump.contains("recipient_confirmation"), "the dump covers the outbox");
    for token in &tokens {
        let mac = token.rsplit('.').next().unwrap();
        assert_eq!(mac.len(), 64, "{token}");
        for (place, text) in [("a table", &dump), ("the logs", &logs)] {
            assert!(!text.contains(mac), "a confirmation token in {place}");
        }
    }
}

#[actix_web::test]
async fn dev_mode_writes_confirmation_links_on_the_public_url() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let created = create_org(&url, &dir, "Solo", &[]);
    let admin = created["key"]["key"].as_str().unwrap().to_owned();
    let mut dev = keyledger(&url, &dir);
    dev.arg("dev")
        .env("KEYLEDGER_HASH_KEY", HASH_KEY)
        .env("KEYLEDGER_PUBLIC_URL", "https://keys.example.test");
    let dev = Server::start(&mut dev, dir.join("dev.log")).await;
    call(
        &dev.address,
        Method::PATCH,
        "/v1/org",
        Some(&admin),
        Some(json!({"alert_emails": [OPS]})),
        &[],
    )
    .await
    .expect(200);
    let mails = confirmation_files(&dir, 1).await;
    assert_eq!(mails[0].to, OPS);
    let link = link_in(&mails[0].text);
    assert!(
        link.starts_with(&format!("https://keys.example.test{CONFIRM_PATH}?token=")),
        "{link}"
    );
    let token = &link[link.find("token=").unwrap()..];
    let followed = call(
        &dev.address,
        Method::GET,
        &format!("{CONFIRM_PATH}?{token}"),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(followed.status.as_u16(), 200, "{:#}", followed.body);
    dev.stop();
}
