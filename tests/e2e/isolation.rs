//! Tenant isolation and concurrent commands on one key.

use awc::http::Method;
use serde_json::{json, Value};

use crate::support::{call, spawn_app};

#[actix_web::test]
async fn another_organization_sees_nothing_and_changes_nothing() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "A's key", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap();
    let (_, other) = app.other_org().await;
    let before = app.event_count().await;
    let path = format!("/v1/keys/{id}");
    for (method, path, body) in [
        (Method::GET, path.clone(), None),
        (Method::PATCH, path.clone(), Some(json!({"name": "stolen"}))),
        (Method::POST, format!("{path}/regenerate"), Some(json!({}))),
        (Method::POST, format!("{path}/deactivate"), None),
        (Method::POST, format!("{path}/activate"), None),
        (Method::DELETE, path.clone(), None),
        (Method::GET, format!("{path}/events"), None),
    ] {
        let answer = call(&app.address, method.clone(), &path, Some(&other), body, &[]).await;
        answer.expect_error(404, "not_found");
    }
    assert_eq!(app.event_count().await, before);
    let listed = call(&app.address, Method::GET, "/v1/keys", Some(&other), None, &[]).await;
    let ids: Vec<&Value> = listed.expect(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["id"])
        .collect();
    assert_eq!(ids.len(), 1, "only B's own admin key");
    assert!(!ids.contains(&&json!(id)));
    // A's key is untouched.
    let read = app.get(&path).await;
    assert_eq!(
        (&read.expect(200)["name"], &read.body["status"]),
        (&json!("A's key"), &json!("active"))
    );
    assert_eq!(app.verify(json!({"key": key["key"]})).await["code"], "VALID");
}

/// Replays a key's stream with the domain and compares with the read model.
async fn assert_stream_contiguous_and_state_equals_replay(app: &crate::support::TestApp, id: &str) -> i64 {
    use keyledger_events::domain::{Aggregate, ApiKey};
    let events = keyledger_events::log::read_stream(&app.pool, &format!("key-{id}"), None)
        .await
        .unwrap();
    let versions: Vec<i64> = events.iter().map(|e| e.version).collect();
    assert_eq!(
        versions,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "versions are contiguous"
    );
    let decoded: Vec<_> = events.iter().map(|e| e.decode().unwrap()).collect();
    let replayed = ApiKey::replay(&decoded).unwrap();
    let expected = keyledger_events::read_model::KeyRow::from_aggregate(&replayed, events.len() as i64);
    let now = chrono::Utc::now();
    let row = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(
        row.expect(200),
        &keyledger_events::representation::key_object(&expected, now)
    );
    let stored: Vec<u8> = sqlx::query_scalar("select key_hash from keys where id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        stored,
        replayed.key_hash.0.to_vec(),
        "the live hash is the replayed one"
    );
    events.len() as i64
}

#[actix_web::test]
async fn concurrent_regenerates_each_succeed_or_conflict_and_lose_nothing() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "hot", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap().to_owned();
    let requests = (0..20).map(|_| {
        let (address, admin, id) = (app.address.clone(), app.admin_key.clone(), id.clone());
        async move {
            call(
                &address,
                Method::POST,
                &format!("/v1/keys/{id}/regenerate"),
                Some(&admin),
                Some(json!({})),
                &[],
            )
            .await
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let mut secrets = vec![];
    for answer in &answers {
        match answer.status.as_u16() {
            200 => secrets.push(answer.body["key"].as_str().unwrap().to_owned()),
            409 => answer.expect_error(409, "conflict"),
            other => panic!("unexpected {other}: {:#}", answer.body),
        }
    }
    assert!(!secrets.is_empty());
    let versions = assert_stream_contiguous_and_state_equals_replay(&app, &id).await;
    assert_eq!(versions, 1 + secrets.len() as i64, "one event per success");
    // Exactly one of the issued secrets works: the last one appended.
    let mut valid = 0;
    for secret in &secrets {
        if app.verify(json!({"key": secret})).await["code"] == "VALID" {
            valid += 1;
        }
    }
    assert_eq!(valid, 1);
}

#[actix_web::test]
async fn concurrent_updates_each_succeed_or_conflict_and_lose_nothing() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "edited", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap().to_owned();
    let requests = (0..20).map(|i| {
        let (address, admin, id) = (app.address.clone(), app.admin_key.clone(), id.clone());
        async move {
            let body = json!({"name": format!("name {i}")});
            (
                i,
                call(
                    &address,
                    Method::PATCH,
                    &format!("/v1/keys/{id}"),
                    Some(&admin),
                    Some(body),
                    &[],
                )
                .await,
            )
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let succeeded = answers.iter().filter(|(_, a)| a.status.as_u16() == 200).count();
    for (_, answer) in &answers {
        assert!(matches!(answer.status.as_u16(), 200 | 409), "{:#}", answer.body);
    }
    let versions = assert_stream_contiguous_and_state_equals_replay(&app, &id).await;
    assert_eq!(versions, 1 + succeeded as i64);
}

/// A transaction that has appended `command` to the key's stream and not
/// committed: a command that reads the stream now sees the version before
/// it, and its append waits for this one's outcome.
async fn hold_an_append(
    app: &crate::support::TestApp,
    id: &str,
    command: keyledger_events::domain::KeyCommand,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    use keyledger_events::domain::ApiKey;
    use keyledger_events::{handler, log::EventMeta};
    let mut tx = app.pool.begin().await.unwrap();
    let meta = EventMeta {
        actor: "test".into(),
        request_id: None,
        occurred_at: chrono::Utc::now(),
    };
    handler::decide_on::<ApiKey>(&mut tx, &format!("key-{id}"), command, &meta, |_| Ok(()))
        .await
        .unwrap()
        .append(&mut tx)
        .await
        .unwrap();
    tx
}

/// The usage records a flush appends: one minute's counts.
fn usage() -> keyledger_events::domain::KeyCommand {
    let now = chrono::Utc::now();
    keyledger_events::domain::KeyCommand::RecordUsage(keyledger_events::domain::key::KeyUsed {
        minute: now,
        requests: 3,
        successful: 3,
        failed: 0,
        rate_limited: 0,
        last_used_at: now,
    })
}

/// The types of the key's events, in order.
async fn event_types(app: &crate::support::TestApp, id: &str) -> Vec<String> {
    sqlx::query_scalar("select type from events where stream_id = $1 order by version")
        .bind(format!("key-{id}"))
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// Waits until an append to the log waits for `held` to end: the
/// request's (or job's, or flush's) append, blocked by the held one. Only
/// an `insert into events` that `held` blocks counts, so another backend
/// of the app waiting on some other row or transaction cannot release the
/// held transaction before the request has read.
async fn wait_for_an_append_blocked_by(pool: &sqlx::PgPool, held: &mut sqlx::Transaction<'static, sqlx::Postgres>) {
    let holder: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut **held)
        .await
        .unwrap();
    crate::support::eventually(std::time::Duration::from_secs(10), || async {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and query ilike 'insert into events%'
               and $1 = any(pg_blocking_pids(pid))",
        )
        .bind(holder)
        .fetch_one(pool)
        .await
        .unwrap();
        match waiting {
            1 => Ok(()),
            n => Err(format!("{n} appends wait for the held transaction, not 1")),
        }
    })
    .await
}

/// Starts `request` and lets it run until its append waits for `held`;
/// then commits `held` and answers what the request answered.
async fn interleave(
    app: &crate::support::TestApp,
    mut held: sqlx::Transaction<'static, sqlx::Postgres>,
    method: Method,
    path: String,
    body: Option<Value>,
    headers: &'static [(&'static str, &'static str)],
) -> crate::support::Answer {
    let (address, admin) = (app.address.clone(), app.admin_key.clone());
    let request = actix_web::rt::spawn(async move { call(&address, method, &path, Some(&admin), body, headers).await });
    wait_for_an_append_blocked_by(&app.pool, &mut held).await;
    held.commit().await.unwrap();
    request.await.unwrap()
}

#[actix_web::test]
async fn usage_recorded_between_a_commands_read_and_its_append_is_no_conflict() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "busy", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap().to_owned();
    // A usage flush appends to the key while the deactivation runs: after
    // its read, before its append.
    let held = hold_an_append(&app, &id, usage()).await;
    let answer = interleave(&app, held, Method::POST, format!("/v1/keys/{id}/deactivate"), None, &[]).await;
    assert_eq!(answer.expect(200)["status"], "inactive");
    assert_eq!(
        event_types(&app, &id).await,
        ["key.created", "key.used", "key.deactivated"],
        "the deactivation is stored once, after the usage"
    );
    assert_eq!(app.verify(json!({"key": key["key"]})).await["code"], "INACTIVE");
    // That verification is usage too: the app's flush appends it before the
    // next append is held, or it would take part in the interleaving (its
    // append waiting for the held one, or landing between them).
    crate::support::eventually(std::time::Duration::from_secs(10), || async {
        match event_types(&app, &id).await.len() {
            4 => Ok(()),
            n => Err(format!("{n} events, the verification's usage not yet flushed")),
        }
    })
    .await;

    // The same with an Idempotency-Key: the answer is recorded once, and a
    // retry replays it.
    let held = hold_an_append(&app, &id, usage()).await;
    let path = format!("/v1/keys/{id}/regenerate");
    let headers = &[("Idempotency-Key", "regenerate-while-used")];
    let first = interleave(&app, held, Method::POST, path.clone(), Some(json!({})), headers).await;
    let secret = first.expect(200)["key"].as_str().unwrap().to_owned();
    let again = call(
        &app.address,
        Method::POST,
        &path,
        Some(&app.admin_key),
        Some(json!({})),
        headers,
    )
    .await;
    assert_eq!(again.expect(200)["id"], json!(id));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["secret_unavailable"], true);
    assert_eq!(
        event_types(&app, &id).await,
        [
            "key.created",
            "key.used",
            "key.deactivated",
            "key.used",
            "key.used",
            "key.regenerated"
        ]
    );
    assert_eq!(app.verify(json!({"key": secret})).await["code"], "INACTIVE");
}

/// A batch of a usage flush whose read of a key is overtaken by a command's
/// append stores nothing, and its keys' minutes are then appended one by
/// one: none is lost or counted twice.
#[actix_web::test]
async fn a_usage_flush_batch_overtaken_by_a_command_appends_each_minute_on_its_own() {
    use keyledger_api::db_health::DatabaseHealth;
    use keyledger_api::usage::{Outcome, UsageAccumulator};

    let app = spawn_app().await;
    let busy = app.create_key(json!({"name": "busy", "type": "secret"})).await;
    let quiet = app.create_key(json!({"name": "quiet", "type": "secret"})).await;
    let (busy, quiet) = (
        busy["id"].as_str().unwrap().to_owned(),
        quiet["id"].as_str().unwrap().to_owned(),
    );
    let usage = UsageAccumulator::default();
    let now = chrono::Utc::now();
    for id in [&busy, &quiet] {
        usage.record(id.parse().unwrap(), Outcome::Succeeded, now);
    }
    // The deactivation has appended and not committed: the flush reads the
    // version before it, and its batch's insert waits for it.
    let mut held = hold_an_append(&app, &busy, keyledger_events::domain::KeyCommand::Deactivate).await;
    // On a pool of one connection, as the shutdown's flush has: the batch's
    // connection goes back to it for the minutes appended one by one.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(app.pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let flush = actix_web::rt::spawn(async move { usage.flush(&pool, &DatabaseHealth::default()).await });
    wait_for_an_append_blocked_by(&app.pool, &mut held).await;
    held.commit().await.unwrap();
    assert_eq!(flush.await.unwrap(), 2, "both minutes appended");
    assert_eq!(
        event_types(&app, &busy).await,
        ["key.created", "key.deactivated", "key.used"]
    );
    assert_eq!(event_types(&app, &quiet).await, ["key.created", "key.used"]);
    let requests: i64 = sqlx::query_scalar(
        "select sum(requests)::bigint from usage_rollups where granularity = 'minute' and key_id = any($1)",
    )
    .bind([&busy, &quiet])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(requests, 2, "each minute counted once");
}

#[actix_web::test]
async fn another_commands_change_between_a_commands_read_and_its_append_is_a_conflict() {
    let app = spawn_app().await;
    let key = app.create_key(json!({"name": "edited", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap().to_owned();
    let rename = keyledger_events::domain::KeyCommand::Update(
        keyledger_events::domain::key::UpdateKeyRequest {
            name: Some("renamed".into()),
            ..Default::default()
        }
        .parse(),
    );
    let held = hold_an_append(&app, &id, rename).await;
    let answer = interleave(&app, held, Method::POST, format!("/v1/keys/{id}/deactivate"), None, &[]).await;
    answer.expect_error(409, "conflict");
    assert_eq!(event_types(&app, &id).await, ["key.created", "key.updated"]);
    let read = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(
        (&read.expect(200)["name"], &read.body["status"]),
        (&json!("renamed"), &json!("active"))
    );
}

/// The scheduled jobs decide again when a usage flush appends to the key
/// between their read and their append, as commands do: the reminder and
/// the expiry are recorded on this run, not lost to a conflict until the
/// next (a key in use is flushed every few seconds).
#[actix_web::test]
async fn usage_recorded_between_a_jobs_read_and_its_append_is_no_conflict() {
    use keyledger_workers::jobs::{scheduler::run_job, Job, Report};

    let app = crate::support::spawn_app_with_alert_emails(&["ops@acme.test"]).await;
    let created = chrono::Utc::now();
    let expires_at = created + chrono::Duration::days(100);
    let key = app
        .create_key(json!({"name": "busy", "type": "secret", "expires_at": expires_at.to_rfc3339()}))
        .await;
    let id = key["id"].as_str().unwrap().to_owned();
    let run = |job: Job, at: chrono::DateTime<chrono::Utc>| {
        let pool = app.pool.clone();
        actix_web::rt::spawn(async move { run_job(&pool, job, at).await.unwrap().expect("no other worker runs it") })
    };

    // 77 days on, the 90-day rotation is 13 days away: a reminder for the
    // key and one for the organization's admin key, created with it.
    let mut held = hold_an_append(&app, &id, usage()).await;
    let reminding = run(Job::Rotation, created + chrono::Duration::days(77));
    wait_for_an_append_blocked_by(&app.pool, &mut held).await;
    held.commit().await.unwrap();
    assert_eq!(reminding.await.unwrap(), Report { alerts: 2, events: 2 });

    let mut held = hold_an_append(&app, &id, usage()).await;
    let expiring = run(Job::Expiry, expires_at + chrono::Duration::minutes(1));
    wait_for_an_append_blocked_by(&app.pool, &mut held).await;
    held.commit().await.unwrap();
    assert_eq!(expiring.await.unwrap(), Report { alerts: 0, events: 1 });
    assert_eq!(
        event_types(&app, &id).await,
        ["key.created", "key.used", "key.rotation_due", "key.used", "key.expired"]
    );
    let read = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(read.expect(200)["status"], "expired");
}
