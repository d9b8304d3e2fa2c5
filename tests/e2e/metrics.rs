//! `/metrics` as an operator's Prometheus scrapes it: each metric exists,
//! carries its labels, and moves when its event happens — requests by
//! route pattern and status with their latency histogram, key checks by
//! code, usage flushes, scheduled job runs (on a chosen `now`), the alert
//! mail queue and the relay's last publish; and `dev` and `work` serve the
//! workers' figures.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use awc::http::Method;
use chrono::Utc;
use keyledger_workers::alerts::mailer::{Links, Mailer, Transport};
use keyledger_workers::jobs::scheduler::run_and_record;
use keyledger_workers::jobs::Job;
use keyledger_workers::metrics::WorkerMetrics;
use keyledger_workers::tailing::lag::LagMonitor;
use keyledger_workers::Relay;
use serde_json::json;

use crate::alerts::{days, OPS};
use crate::binary::{keyledger, temp_dir, Server};
use crate::broker::Broker;
use crate::support::{
    call, eventually, fresh_database_url, settle, spawn_app, spawn_app_with, spawn_app_with_alert_emails, TestApp,
};

/// The text of `/metrics` at `base`.
async fn scrape(base: &str) -> String {
    let answer = call(base, Method::GET, "/metrics", None, None, &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/plain; version=0.0.4"));
    answer.body.as_str().unwrap_or_default().to_owned()
}

/// The value of the sample written exactly `series` (`name{labels}`), if any.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().expect("a number"))
}

/// [`value`], 0 when the series is not there yet.
fn count(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or(0.0)
}

#[track_caller]
fn has_type(text: &str, name: &str, kind: &str) {
    assert!(
        text.contains(&format!("# TYPE {name} {kind}\n")) && text.contains(&format!("# HELP {name} ")),
        "no HELP/TYPE {kind} for {name}:\n{text}"
    );
}

/// The hot path's routes are labelled by their patterns too (their resources
/// carry their labels): one series per route, whatever the path below
/// `/v1/auth/`.
#[actix_web::test]
async fn the_hot_paths_requests_are_counted_by_their_route_patterns() {
    let app = spawn_app().await;
    let original = [("X-Original-Method", "GET"), ("X-Original-URI", "/api/experiences/1")];
    let before = scrape(&app.internal).await;
    app.verify(json!({"key": app.admin_key})).await;
    let auth = call(
        &app.internal,
        Method::GET,
        "/v1/auth",
        Some(&app.admin_key),
        None,
        &original,
    )
    .await;
    assert_eq!(auth.status, 204);
    for path in ["/v1/auth/api/experiences", "/v1/auth/api/consumers/7"] {
        let below = call(&app.internal, Method::GET, path, Some(&app.admin_key), None, &[]).await;
        assert_eq!(below.status, 400, "{path} in nginx style");
    }
    let fetched = call(&app.internal, Method::GET, "/v1/verify", None, None, &[]).await;
    assert_eq!(fetched.status, 404);
    let after = scrape(&app.internal).await;
    let moved = |labels: &str| {
        let series = format!("keyledger_http_requests_total{{{labels}}}");
        count(&after, &series) - count(&before, &series)
    };
    assert_eq!(moved(r#"route="/v1/verify",status="200""#), 1.0);
    assert_eq!(moved(r#"route="/v1/auth",status="204""#), 1.0);
    assert_eq!(moved(r#"route="/v1/auth/{tail:.*}",status="400""#), 2.0);
    // A GET of /v1/verify reaches no resource (it takes POST only).
    assert_eq!(moved(r#"route="/v1/verify",status="404""#), 1.0);
    assert!(!after.contains("/api/consumers/7"), "a raw path in /metrics:\n{after}");
}

async fn admin_get(app: &TestApp, path: &str) -> u16 {
    app.get(path).await.status.as_u16()
}

#[actix_web::test]
async fn requests_are_counted_by_route_pattern_and_status_with_a_latency_histogram() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "k", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap();
    let route = r#"route="/v1/keys/{id}""#;
    let gone = app.create_key(json!({"name": "gone", "type": "secret"})).await;
    let gone = gone["id"].as_str().unwrap();
    assert_eq!(app.delete(&format!("/v1/keys/{gone}")).await.status.as_u16(), 204);
    let before = scrape(&app.internal).await;
    assert_eq!(admin_get(&app, &format!("/v1/keys/{id}")).await, 200);
    assert_eq!(admin_get(&app, &format!("/v1/keys/{id}")).await, 200);
    assert_eq!(admin_get(&app, &format!("/v1/keys/{gone}")).await, 404);
    assert_eq!(admin_get(&app, "/no/such/path-4711").await, 404);
    let after = scrape(&app.internal).await;

    has_type(&after, "keyledger_http_requests_total", "counter");
    has_type(&after, "keyledger_http_request_duration_seconds", "histogram");
    let requests = |text: &str, labels: &str| count(text, &format!("keyledger_http_requests_total{{{labels}}}"));
    assert_eq!(
        requests(&after, &format!("{route},status=\"200\"")) - requests(&before, &format!("{route},status=\"200\"")),
        2.0
    );
    assert_eq!(
        requests(&after, &format!("{route},status=\"404\"")) - requests(&before, &format!("{route},status=\"404\"")),
        1.0
    );
    assert_eq!(
        requests(&after, r#"route="unmatched",status="404""#) - requests(&before, r#"route="unmatched",status="404""#),
        1.0
    );
    // The route is the pattern, never the path: ids and unknown paths make no series.
    assert!(!after.contains(id), "a key id in /metrics:\n{after}");
    assert!(!after.contains("path-4711"), "a raw path in /metrics:\n{after}");
    // The histogram: every bucket from 0.5 ms to 10 s and +Inf, cumulative,
    // with _count and _sum; three requests more on this route.
    let histogram = |text: &str, suffix: &str, extra: &str| {
        count(
            text,
            &format!("keyledger_http_request_duration_seconds_{suffix}{{{route}{extra}}}"),
        )
    };
    assert_eq!(histogram(&after, "count", "") - histogram(&before, "count", ""), 3.0);
    assert!(histogram(&after, "sum", "") > histogram(&before, "sum", ""));
    let mut previous = 0.0;
    for le in ["0.0005", "0.001", "0.005", "0.1", "1", "10", "+Inf"] {
        let bucket = value(
            &after,
            &format!("keyledger_http_request_duration_seconds_bucket{{{route},le=\"{le}\"}}"),
        )
        .unwrap_or_else(|| panic!("no le={le} bucket:\n{after}"));
        assert!(bucket >= previous, "buckets are cumulative");
        previous = bucket;
    }
    assert_eq!(previous, histogram(&after, "count", ""));
    // /metrics itself is a route like any other.
    let again = scrape(&app.internal).await;
    assert!(
        count(
            &again,
            r#"keyledger_http_requests_total{route="/metrics",status="200"}"#
        ) >= 2.0
    );
}

#[actix_web::test]
async fn every_key_check_is_counted_by_its_code() {
    let app = spawn_app().await;
    let key = app
        .create_key(json!({"name": "reader", "type": "secret", "scopes": ["read:experiences"]}))
        .await;
    let secret = key["key"].as_str().unwrap();
    let series = |code: &str| format!("keyledger_verifications_total{{code=\"{code}\"}}");
    let before = scrape(&app.internal).await;
    has_type(&before, "keyledger_verifications_total", "counter");
    for code in [
        "VALID",
        "NOT_FOUND",
        "INACTIVE",
        "EXPIRED",
        "ENVIRONMENT_MISMATCH",
        "INSUFFICIENT_SCOPE",
        "IP_NOT_ALLOWED",
        "RATE_LIMITED",
    ] {
        assert!(value(&before, &series(code)).is_some(), "no {code} series:\n{before}");
    }
    let delta = |after: &str, code: &str| count(after, &series(code)) - count(&before, &series(code));

    let unknown = "sk_live_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG12345";
    assert_eq!(app.verify(json!({"key": unknown})).await["code"], "NOT_FOUND");
    let after = scrape(&app.internal).await;
    assert_eq!(delta(&after, "NOT_FOUND"), 1.0);
    assert_eq!(delta(&after, "VALID"), 0.0);

    assert_eq!(app.verify(json!({"key": secret})).await["code"], "VALID");
    assert_eq!(
        app.verify(json!({"key": secret, "scopes": ["write:consumers"]})).await["code"],
        "INSUFFICIENT_SCOPE"
    );
    // /v1/auth decides the same way, and is counted the same way.
    let auth = |uri: &'static str| {
        let base = app.internal.clone();
        async move {
            call(
                &base,
                Method::GET,
                "/v1/auth",
                Some(secret),
                None,
                &[("X-Original-Method", "GET"), ("X-Original-URI", uri)],
            )
            .await
            .status
            .as_u16()
        }
    };
    assert_eq!(auth("/api/experiences/7").await, 204);
    assert_eq!(auth("/api/consumers/7").await, 403);
    let after = scrape(&app.internal).await;
    assert_eq!(delta(&after, "NOT_FOUND"), 1.0);
    assert_eq!(delta(&after, "VALID"), 2.0);
    assert_eq!(delta(&after, "INSUFFICIENT_SCOPE"), 2.0);
    // The management API's own key check shares the path.
    assert_eq!(admin_get(&app, "/v1/org").await, 200);
    assert_eq!(delta(&scrape(&app.internal).await, "VALID"), 3.0);
}

#[actix_web::test]
async fn lookups_that_wait_for_another_ones_database_read_are_counted() {
    let settings = keyledger_api::ApiSettings {
        cache_ttl: Duration::from_secs(3600),
        ..keyledger_api::ApiSettings::default()
    };
    let mut app = spawn_app_with(settings, false).await;
    let key = app.create_key(json!({"name": "busy", "type": "secret"})).await;
    // No notification may evict the key while the lookups run.
    app.stop_background().await;
    let name = "keyledger_key_cache_single_flight_waits_total";
    let before = scrape(&app.internal).await;
    has_type(&before, name, "counter");
    assert!(value(&before, name).is_some(), "no {name}:\n{before}");
    let (plain, _) = keyledger_events::domain::PlainKey::parse(key["key"].as_str().unwrap()).unwrap();
    let hash = app.hash_key.hash(&plain);
    let cache = app.state.cache.clone();
    cache.clear();
    // The first lookup reads the key and holds its answer until three more
    // lookups of the same key wait for it (as at a busy key's expiry).
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let first = cache.lookup_with(&app.pool, &hash, || async {
        let _ = released.await;
    });
    let others = futures_util::future::join_all((0..3).map(|_| cache.lookup(&app.pool, &hash)));
    let waits = cache.single_flight_waits.load(Ordering::Relaxed);
    let arrived = async {
        let all_waiting = async {
            while cache.single_flight_waits.load(Ordering::Relaxed) < waits + 3 {
                tokio::task::yield_now().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), all_waiting).await;
        let _ = release.send(());
    };
    let (first, others, ()) = tokio::join!(first, others, arrived);
    assert!(first.unwrap().is_some());
    assert!(others.into_iter().all(|other| other.unwrap().is_some()));
    let after = scrape(&app.internal).await;
    assert_eq!(count(&after, name) - count(&before, name), 3.0, "{after}");
}

#[actix_web::test]
async fn usage_flushes_are_counted_with_their_size() {
    let mut app = spawn_app().await;
    let key = app.create_key(json!({"name": "k", "type": "secret"})).await;
    let secret = key["key"].as_str().unwrap();
    let before = scrape(&app.internal).await;
    for name in [
        "keyledger_usage_flushes_total",
        "keyledger_usage_flushed_events_total",
        "keyledger_usage_flush_failures_total",
    ] {
        has_type(&before, name, "counter");
    }
    has_type(&before, "keyledger_usage_flush_last_size", "gauge");
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "VALID");
    // Stopping the background work flushes what is left, at once.
    app.stop_background().await;
    let after = scrape(&app.internal).await;
    let delta = |name: &str| count(&after, name) - count(&before, name);
    assert!(delta("keyledger_usage_flushes_total") >= 1.0, "{after}");
    // The verification and the admin key's own checks: one key.used event per key and minute.
    assert!(delta("keyledger_usage_flushed_events_total") >= 1.0, "{after}");
    assert_eq!(delta("keyledger_usage_flush_failures_total"), 0.0);
}

/// A creation sent on its own is a group of one: one statement, counted
/// as a group; one with an `Idempotency-Key` commits in a transaction of
/// its own. Concurrent creations share group statements.
#[actix_web::test]
async fn key_creations_are_counted_by_how_they_were_committed() {
    let app = spawn_app().await;
    let before = scrape(&app.internal).await;
    has_type(&before, "keyledger_key_creations_total", "counter");
    has_type(&before, "keyledger_key_creation_groups_total", "counter");
    let (group, single, groups) = (
        "keyledger_key_creations_total{commit=\"group\"}",
        "keyledger_key_creations_total{commit=\"single\"}",
        "keyledger_key_creation_groups_total",
    );
    app.create_key(json!({"name": "alone", "type": "secret"})).await;
    let after = scrape(&app.internal).await;
    let delta = |name: &str, after: &str| count(after, name) - count(&before, name);
    assert_eq!(
        (delta(group, &after), delta(single, &after), delta(groups, &after)),
        (1.0, 0.0, 1.0),
        "{after}"
    );
    let answer = call(
        &app.address,
        Method::POST,
        "/v1/keys",
        Some(&app.admin_key),
        Some(json!({"name": "idempotent", "type": "secret"})),
        &[("Idempotency-Key", "metrics-test-1")],
    )
    .await;
    answer.expect(201);
    let after = scrape(&app.internal).await;
    assert_eq!((delta(group, &after), delta(single, &after)), (1.0, 1.0), "{after}");
    let statements_before = count(&after, groups);
    futures_util::future::join_all(
        (0..12).map(|n| app.post("/v1/keys", json!({"name": format!("k{n}"), "type": "secret"}))),
    )
    .await
    .iter()
    .for_each(|answer| {
        answer.expect(201);
    });
    let after = scrape(&app.internal).await;
    assert_eq!(delta(group, &after) + delta(single, &after), 14.0, "{after}");
    let statements = count(&after, groups) - statements_before;
    assert!(
        statements < 12.0,
        "12 creations sent together in {statements} statements: {after}"
    );
}

/// The workers' metrics on an operations listener, as `work` serves them.
fn ops_listener(app: &TestApp, metrics: &Arc<WorkerMetrics>) -> String {
    let source = metrics.clone();
    ops_listener_of(app, Arc::new(move |out: &mut String| source.render(out)))
}

fn ops_listener_of(app: &TestApp, source: keyledger_api::ops::MetricsSource) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let ops = keyledger_api::ops::OpsState {
        pool: app.pool.clone(),
        kafka: None,
        database: app.state.database.clone(),
        metrics: vec![source],
    };
    actix_web::rt::spawn(keyledger_api::ops::server(listener, ops).unwrap());
    address
}

#[actix_web::test]
async fn job_runs_are_counted_by_outcome_with_the_last_success() {
    let app = spawn_app().await;
    let metrics = Arc::new(WorkerMetrics::default());
    let ops = ops_listener(&app, &metrics);
    let before = scrape(&ops).await;
    has_type(&before, "keyledger_job_runs_total", "counter");
    has_type(&before, "keyledger_job_last_success_timestamp_seconds", "gauge");
    for job in Job::ALL {
        for outcome in ["success", "failure"] {
            let series = format!(
                "keyledger_job_runs_total{{job=\"{}\",outcome=\"{outcome}\"}}",
                job.name()
            );
            assert_eq!(value(&before, &series), Some(0.0), "{series}:\n{before}");
        }
        let series = format!("keyledger_job_last_success_timestamp_seconds{{job=\"{}\"}}", job.name());
        assert_eq!(value(&before, &series), Some(0.0));
    }

    // A run on the test's clock: counted, and its time is the last success.
    let now = Utc::now() + days(3);
    run_and_record(&app.pool, Job::Expiry, now, &metrics.jobs)
        .await
        .unwrap()
        .expect("no other worker holds the lock");
    let after = scrape(&ops).await;
    assert_eq!(
        value(&after, r#"keyledger_job_runs_total{job="expiry",outcome="success"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&after, r#"keyledger_job_last_success_timestamp_seconds{job="expiry"}"#),
        Some(now.timestamp_millis() as f64 / 1000.0)
    );
    assert_eq!(
        value(&after, r#"keyledger_job_runs_total{job="rotation",outcome="success"}"#),
        Some(0.0)
    );

    // A run that cannot reach the database fails, and is counted so; the
    // last success stays.
    let unreachable = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/nothing")
        .unwrap();
    assert!(run_and_record(&unreachable, Job::Expiry, now + days(1), &metrics.jobs)
        .await
        .is_err());
    let failed = scrape(&ops).await;
    assert_eq!(
        value(&failed, r#"keyledger_job_runs_total{job="expiry",outcome="failure"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&failed, r#"keyledger_job_last_success_timestamp_seconds{job="expiry"}"#),
        Some(now.timestamp_millis() as f64 / 1000.0)
    );
}

#[actix_web::test]
async fn a_queued_alert_email_shows_as_pending_then_as_sent() {
    let app = spawn_app_with_alert_emails(&[OPS]).await;
    let metrics = Arc::new(WorkerMetrics::default());
    let ops = ops_listener(&app, &metrics);
    let queue = |text: &str, state: &str| value(text, &format!("keyledger_mail_queue{{state=\"{state}\"}}"));
    metrics.mail.sample(&app.pool).await.unwrap();
    let empty = scrape(&ops).await;
    has_type(&empty, "keyledger_mail_queue", "gauge");
    has_type(&empty, "keyledger_mail_queue_oldest_pending_seconds", "gauge");
    for state in ["pending", "sent", "failed", "unaddressed"] {
        assert_eq!(queue(&empty, state), Some(0.0), "{state}:\n{empty}");
    }
    assert_eq!(value(&empty, "keyledger_mail_queue_oldest_pending_seconds"), Some(0.0));

    // A key expiring within a week: the expiry job queues a warning.
    let start = Utc::now();
    app.create_key(json!({"name": "Partner pilot", "type": "secret", "expires_at": (start + days(3)).to_rfc3339()}))
        .await;
    let report = run_and_record(&app.pool, Job::Expiry, start, &metrics.jobs)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.alerts, 1);
    metrics.mail.sample(&app.pool).await.unwrap();
    let queued = scrape(&ops).await;
    assert_eq!(queue(&queued, "pending"), Some(1.0), "{queued}");
    assert_eq!(queue(&queued, "sent"), Some(0.0));
    assert!(value(&queued, "keyledger_mail_queue_oldest_pending_seconds").unwrap() >= 0.0);

    // The mailer sends it (as a file here): pending moves to sent.
    let dir = temp_dir();
    let transport = Transport::new(None, &dir).unwrap();
    let links = Links {
        hash_key: app.hash_key.clone(),
        public_url: app.address.clone(),
    };
    let mailer = Mailer::new(app.pool.clone(), transport, "keyledger <alerts@keyledger.test>", links).unwrap();
    assert_eq!(mailer.run_once(start).await.unwrap().sent, 1);
    metrics.mail.sample(&app.pool).await.unwrap();
    let sent = scrape(&ops).await;
    assert_eq!(queue(&sent, "pending"), Some(0.0), "{sent}");
    assert_eq!(queue(&sent, "sent"), Some(1.0));
    assert_eq!(value(&sent, "keyledger_mail_queue_oldest_pending_seconds"), Some(0.0));
}

#[actix_web::test]
async fn the_relays_last_publish_is_shown_once_it_publishes() {
    let broker = Broker::start().await;
    let mut app = spawn_app().await;
    app.stop_background().await;
    settle(&app.pool).await;
    let kafka = broker.settings(1);
    kafka.ensure_topics().await.unwrap();
    let lag = Arc::new(LagMonitor::kafka());
    let source = lag.clone();
    let ops = ops_listener_of(&app, Arc::new(move |out: &mut String| source.render(out)));
    lag.sample(&app.pool).await;
    let before = scrape(&ops).await;
    has_type(&before, "keyledger_relay_last_publish_timestamp_seconds", "gauge");
    assert_eq!(
        value(&before, "keyledger_relay_last_publish_timestamp_seconds"),
        Some(0.0)
    );
    assert!(value(&before, "keyledger_relay_lag_events").unwrap() >= 1.0, "{before}");

    let started = Utc::now();
    let relay = Relay::new(app.pool.clone(), &kafka).unwrap();
    while relay.run_once().await.unwrap() > 0 {}
    lag.sample(&app.pool).await;
    let after = scrape(&ops).await;
    assert_eq!(value(&after, "keyledger_relay_lag_events"), Some(0.0), "{after}");
    let published = value(&after, "keyledger_relay_last_publish_timestamp_seconds").unwrap();
    // The database's clock, on this machine.
    let window = (started.timestamp() - 5) as f64..=(Utc::now().timestamp() + 5) as f64;
    assert!(window.contains(&published), "{published} not in {window:?}");
}

/// Scrapes `base` until `wanted` are all in its `/metrics` (the workers
/// sample as they start).
async fn scrape_until(base: &str, wanted: &[&str]) -> String {
    eventually(Duration::from_secs(30), || async {
        let text = scrape(base).await;
        if wanted.iter().all(|w| text.contains(w)) {
            return Ok(text);
        }
        Err(format!("missing one of {wanted:?} in /metrics:\n{text}"))
    })
    .await
}

const WORKER_SERIES: [&str; 5] = [
    r#"keyledger_job_runs_total{job="expiry",outcome="success"}"#,
    r#"keyledger_job_last_success_timestamp_seconds{job="usage_alerts"}"#,
    r#"keyledger_mail_queue{state="pending"}"#,
    "keyledger_mail_queue_oldest_pending_seconds ",
    r#"keyledger_projection_lag_seconds{projector="read_models"}"#,
];

#[actix_web::test]
async fn dev_and_work_serve_the_workers_metrics_where_the_workers_run() {
    let (url, dir) = (fresh_database_url(), temp_dir());
    let dev = Server::start(keyledger(&url, &dir).arg("dev"), dir.join("dev.log")).await;
    call(&dev.address, Method::GET, "/healthz", None, None, &[]).await;
    let mut wanted = WORKER_SERIES.to_vec();
    wanted.push(r#"keyledger_http_requests_total{route="/healthz",status="200"}"#);
    wanted.push(r#"keyledger_verifications_total{code="VALID"}"#);
    scrape_until(&dev.address, &wanted).await;
    dev.stop();

    // `work` on the same database, with the hash key `dev` made.
    let hash_key = std::fs::read_to_string(dir.join("hash_key")).unwrap();
    let mut work = keyledger(&url, &dir);
    work.arg("work").env("KEYLEDGER_HASH_KEY", hash_key.trim());
    let work = Server::start_worker(&mut work, dir.join("work.log"), "mailer started").await;
    scrape_until(&work.address, &WORKER_SERIES).await;
    work.stop();
}
