//! The projector: rebuilding the read models from the log gives what the
//! commands left, and re-running it changes nothing.

use keyledger_workers::Projector;
use serde_json::json;

use crate::support::{spawn_app, TestApp};

async fn snapshot(app: &TestApp) -> Vec<String> {
    let mut rows: Vec<String> = sqlx::query_scalar("select k::text from keys k order by id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    rows.extend(
        sqlx::query_scalar::<_, String>("select u::text from usage_rollups u order by key_id, granularity, bucket")
            .fetch_all(&app.pool)
            .await
            .unwrap(),
    );
    rows.extend(
        sqlx::query_scalar::<_, String>("select o::text from orgs o order by id")
            .fetch_all(&app.pool)
            .await
            .unwrap(),
    );
    rows
}

/// The read models' indexes and constraints: names and definitions.
async fn read_model_schema(app: &TestApp) -> Vec<String> {
    let tables = keyledger_workers::tailing::replay::READ_MODELS
        .map(String::from)
        .to_vec();
    sqlx::query_scalar(
        "select indexdef from pg_indexes where schemaname = 'public' and tablename = any($1)
         union all
         select conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
         from pg_constraint where conrelid::regclass::text = any($1)
         order by 1",
    )
    .bind(&tables)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// `replay --check` finds no difference from `live` (the read models as
/// they are), and a replay leaves them exactly so, with the indexes and
/// constraints the migrations made, under their names.
async fn assert_replay_reproduces(app: &TestApp, live: Vec<String>) {
    let schema = read_model_schema(app).await;
    assert!(schema.iter().any(|i| i.contains("usage_rollups_recent")), "{schema:?}");
    let differences = keyledger_workers::tailing::replay::check(&app.pool).await.unwrap();
    assert!(
        differences.is_empty(),
        "{:?} / {:?}",
        differences.only_live,
        differences.only_rebuilt
    );
    keyledger_workers::tailing::replay::rebuild(&app.pool).await.unwrap();
    assert_eq!(snapshot(app).await, live);
    assert_eq!(read_model_schema(app).await, schema);
}

/// Every event the log holds, usage records included (the replays and
/// projectors read them all).
async fn log_length(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from events")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn drain(projector: &Projector) -> usize {
    let mut applied = 0;
    loop {
        match projector.run_once().await.unwrap() {
            0 => return applied,
            n => applied += n,
        }
    }
}

#[actix_web::test]
async fn rebuilding_from_the_log_reproduces_the_read_models_and_reruns_change_nothing() {
    let mut app = spawn_app().await;
    let a = app.create_key(json!({"name": "a", "type": "secret"})).await;
    let b = app
        .create_key(json!({"name": "b", "type": "public", "expires_at": "2031-01-01T00:00:00Z"}))
        .await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    app.patch(
        &format!("/v1/keys/{a}"),
        json!({"name": "a2", "scopes": ["read:analytics"]}),
    )
    .await
    .expect(200);
    app.post(
        &format!("/v1/keys/{a}/regenerate"),
        json!({"expire_old_in_seconds": 600}),
    )
    .await
    .expect(200);
    app.post(&format!("/v1/keys/{b}/deactivate"), json!({}))
        .await
        .expect(200);
    app.delete(&format!("/v1/keys/{b}")).await;
    app.patch("/v1/org", json!({"rotation_days": 7})).await.expect(200);
    app.stop_background().await;
    crate::support::settle(&app.pool).await;
    let live = snapshot(&app).await;
    let events = log_length(&app).await as usize;

    // From nothing: the same rows.
    sqlx::query("truncate keys, orgs, usage_rollups, projector_checkpoints")
        .execute(&app.pool)
        .await
        .unwrap();
    let projector = Projector::read_models(app.pool.clone());
    assert_eq!(drain(&projector).await, events);
    assert_eq!(snapshot(&app).await, live);
    assert_eq!(drain(&projector).await, 0, "nothing left once caught up");

    // Again over the existing rows, from the start: nothing changes.
    sqlx::query("delete from projector_checkpoints")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(drain(&projector).await, events);
    assert_eq!(snapshot(&app).await, live);
}

#[actix_web::test]
async fn a_projector_that_stops_shows_growing_lag_and_a_stall_then_zero_once_it_catches_up() {
    use keyledger_workers::tailing::lag::{LagMonitor, READ_MODELS};
    let mut app = spawn_app().await;
    app.stop_background().await;
    let monitor = LagMonitor::embedded();
    crate::support::settle(&app.pool).await;
    drain(&Projector::read_models(app.pool.clone())).await;
    monitor.sample(&app.pool).await;
    assert_eq!(monitor.lag(READ_MODELS).unwrap().events, 0);

    // The projector is stopped: events wait for it.
    app.create_key(json!({"name": "waiting", "type": "secret"})).await;
    monitor.sample(&app.pool).await;
    let lag = monitor.lag(READ_MODELS).unwrap();
    assert_eq!(lag.events, 1);
    assert!(lag.oldest.is_some());
    app.create_key(json!({"name": "waiting too", "type": "secret"})).await;
    monitor.sample(&app.pool).await;
    assert_eq!(monitor.lag(READ_MODELS).unwrap().events, 2);
    assert!(
        monitor.stalled_for(READ_MODELS).is_some(),
        "no progress while lag grows"
    );
    let mut text = String::new();
    monitor.render(&mut text);
    assert!(
        text.contains("keyledger_projection_lag_events{projector=\"read_models\"} 2\n"),
        "{text}"
    );
    let age: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("keyledger_projection_lag_seconds{projector=\"read_models\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(age >= 0.0);

    // It catches up.
    crate::support::settle(&app.pool).await;
    drain(&Projector::read_models(app.pool.clone())).await;
    monitor.sample(&app.pool).await;
    assert_eq!(monitor.lag(READ_MODELS).unwrap().events, 0);
    assert!(monitor.stalled_for(READ_MODELS).is_none());
    let mut text = String::new();
    monitor.render(&mut text);
    assert!(
        text.contains("keyledger_projection_lag_seconds{projector=\"read_models\"} 0\n"),
        "{text}"
    );
}

#[actix_web::test]
async fn a_set_based_replay_rebuilds_exactly_what_the_commands_wrote_usage_included() {
    use keyledger_events::domain::{key, key::KeyUsed, ApiKey, KeyCommand, KeyId};
    use keyledger_events::{handler, log::EventMeta};
    let mut app = spawn_app().await;
    let mut ids = vec![];
    for n in 0..4 {
        let key = app.create_key(json!({"name": format!("k{n}"), "type": "secret"})).await;
        ids.push(key["id"].as_str().unwrap().to_owned());
    }
    let minute = |m: i64| {
        chrono::DateTime::parse_from_rfc3339("2026-11-27T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc)
            + chrono::Duration::minutes(m)
    };
    let record = |id: String, m: i64, requests: u64| {
        let pool = app.pool.clone();
        async move {
            let used = KeyUsed {
                minute: minute(m),
                requests,
                successful: requests - 1,
                failed: 1,
                rate_limited: u64::from(m % 2 == 0),
                last_used_at: minute(m) + chrono::Duration::seconds(m * 7 % 60),
            };
            let meta = EventMeta {
                actor: "system:usage".into(),
                request_id: None,
                occurred_at: chrono::Utc::now(),
            };
            let stream = key::stream_id(id.parse::<KeyId>().unwrap());
            handler::execute::<ApiKey>(&pool, &stream, KeyCommand::RecordUsage(used), &meta, |_| Ok(()))
                .await
                .unwrap();
        }
    };
    // Usage runs of several records per key, in several minutes and hours,
    // interleaved with every other kind of change.
    for round in 0..6i64 {
        for (n, id) in ids.iter().enumerate() {
            if round == 5 && n == 3 {
                continue; // deleted: it records nothing any more
            }
            record(id.clone(), round * 25 + n as i64, 10 + round as u64).await;
            record(id.clone(), round * 25 + n as i64, 3).await;
        }
        match round {
            1 => {
                app.patch(&format!("/v1/keys/{}", ids[0]), json!({"name": "renamed"}))
                    .await
                    .expect(200);
            }
            2 => {
                app.post(&format!("/v1/keys/{}/deactivate", ids[1]), json!({}))
                    .await
                    .expect(200);
            }
            3 => {
                app.post(
                    &format!("/v1/keys/{}/regenerate", ids[2]),
                    json!({"expire_old_in_seconds": 600}),
                )
                .await
                .expect(200);
            }
            4 => {
                app.delete(&format!("/v1/keys/{}", ids[3])).await;
            }
            _ => {}
        }
    }
    app.stop_background().await;
    crate::support::settle(&app.pool).await;
    let live = snapshot(&app).await;
    assert_replay_reproduces(&app, live).await;
}

/// Appends `per_key` `key.used` records to each of `keys`' streams, in one
/// statement, as the usage flush writes them, numbered on from `from`: a
/// hundred records of a key in each minute (as flushes a few seconds apart
/// make them), in log order.
async fn append_usage(app: &TestApp, keys: &[String], per_key: i64, from: i64) {
    sqlx::query(
        "insert into events (event_id, stream_id, version, type, schema_version, occurred_at, actor, data)
         select gen_random_uuid(), s.stream_id, s.v + g.n, 'key.used', 1, t.at, 'system:usage',
                jsonb_build_object('minute', to_char(date_trunc('minute', t.at at time zone 'UTC'), 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                                   'requests', 3 + g.n % 5, 'successful', 2 + g.n % 5, 'failed', 1,
                                   'rate_limited', g.n % 2,
                                   'last_used_at', to_char(t.at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))
         from (select stream_id, max(version) as v from events
               where stream_id = any(select 'key-' || k from unnest($1::text[]) as k) group by stream_id) s
         cross join generate_series(1, $2) as g(n)
         cross join lateral (select timestamptz '2026-11-27 10:00:00+00' + (($3 + g.n) / 100) * interval '1 minute'
                                    + ($3 + g.n) % 100 * interval '100 milliseconds' as at) t
         order by g.n, s.stream_id",
    )
    .bind(keys)
    .bind(per_key)
    .bind(from)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[actix_web::test]
async fn a_replay_of_many_batches_rebuilds_what_the_projector_applied() {
    let mut app = spawn_app().await;
    let mut ids = vec![];
    for n in 0..3 {
        let key = app.create_key(json!({"name": format!("k{n}"), "type": "secret"})).await;
        ids.push(key["id"].as_str().unwrap().to_owned());
    }
    app.stop_background().await;
    // More records than a replay reads at a time, with changes of the keys
    // between them: a replay stages the usage of several batches (some
    // minutes of a key in two of them) and moves each key's row once at the
    // end.
    let projector = Projector::read_models(app.pool.clone());
    // Each append is projected before the next command, as the usage flush
    // projects what it appends.
    append_usage(&app, &ids, 10_000, 0).await;
    crate::support::settle(&app.pool).await;
    drain(&projector).await;
    app.patch(&format!("/v1/keys/{}", ids[0]), json!({"name": "renamed"}))
        .await
        .expect(200);
    app.post(&format!("/v1/keys/{}/deactivate", ids[1]), json!({}))
        .await
        .expect(200);
    append_usage(&app, &ids[..2], 6_000, 10_000).await;
    crate::support::settle(&app.pool).await;
    drain(&projector).await;
    app.delete(&format!("/v1/keys/{}", ids[2])).await;
    assert!(log_length(&app).await > 2 * keyledger_workers::tailing::replay::BATCH);
    let live = snapshot(&app).await;
    let versions: Vec<i64> = sqlx::query_scalar("select version from keys where id = any($1) order by id")
        .bind(&ids)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    // The projector moved each key's row past its usage records.
    assert_eq!(versions, [16_002, 16_002, 10_002]);

    assert_replay_reproduces(&app, live).await;
}

/// An app with one key, "k", its background work stopped (nothing else
/// writes the log or the read models), and the key's id.
async fn one_key_at_rest() -> (TestApp, String) {
    let mut app = spawn_app().await;
    let key = app.create_key(json!({"name": "k", "type": "secret"})).await;
    let id = key["id"].as_str().unwrap().to_owned();
    app.stop_background().await;
    (app, id)
}

/// Runs a replay with `late` committed between its snapshot and its swap;
/// returns the read models as they were live after `late`, which the swap
/// must leave as they are.
async fn replay_around(app: &TestApp, late: impl std::future::Future<Output = ()>) -> Vec<String> {
    let live = std::sync::Mutex::new(Vec::new());
    keyledger_workers::tailing::replay::rebuild_with(&app.pool, || async {
        late.await;
        *live.lock().unwrap() = snapshot(app).await;
    })
    .await
    .unwrap();
    live.into_inner().unwrap()
}

/// The events of one key in log order (transaction id, position), by version.
async fn versions_in_log_order(app: &TestApp, stream: &str) -> Vec<i64> {
    sqlx::query_scalar("select version from events where stream_id = $1 order by tx_id, position")
        .bind(stream)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// The inversion below, built on `app`'s key: a command's transaction
/// takes its id, a usage flush appends version 2 in a newer one, commits and
/// applies it; the command appends version 3, applies it and commits.
async fn command_around_a_usage_flush(app: &TestApp, id: &str) {
    use keyledger_events::log::{self, EventMeta, NewEvent};
    use keyledger_events::read_model;

    let stream = format!("key-{id}");
    let mut command = app.pool.begin().await.unwrap();
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut *command)
        .await
        .unwrap();
    append_usage(app, &[id.to_owned()], 1, 0).await;
    let used = log::read_stream(&app.pool, &stream, None).await.unwrap().pop().unwrap();
    assert_eq!((used.event_type.as_str(), used.version), ("key.used", 2));
    let mut conn = app.pool.acquire().await.unwrap();
    read_model::apply(&mut conn, &used).await.unwrap();
    drop(conn);
    let meta = EventMeta {
        actor: id.to_owned(),
        request_id: None,
        occurred_at: chrono::Utc::now(),
    };
    let renamed = NewEvent {
        event_type: "key.updated".into(),
        schema_version: 1,
        data: json!({"name": "renamed"}),
    };
    let stored = log::append(&mut command, &stream, 2, &[renamed], &meta).await.unwrap();
    read_model::apply(&mut command, &stored[0]).await.unwrap();
    command.commit().await.unwrap();
    assert_eq!(versions_in_log_order(app, &stream).await, [1, 3, 2]);
    let requests: Vec<i64> = sqlx::query_scalar("select requests from usage_rollups where key_id = $1")
        .bind(id)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(requests, [4, 4, 4], "the live minute, hour and day count the record");
}

/// The same inversion committed while a replay runs — after its snapshot,
/// before its swap: the swap applies those late events once each and counts
/// the usage record too.
#[actix_web::test]
async fn a_replay_counts_such_a_record_committed_between_its_snapshot_and_its_swap() {
    let (app, id) = one_key_at_rest().await;
    let live = replay_around(&app, command_around_a_usage_flush(&app, &id)).await;
    assert!(live.iter().any(|row| row.contains(",renamed,")), "{live:?}");
    assert_eq!(snapshot(&app).await, live);
}

/// A command whose transaction took its id before a usage flush appended
/// (an idempotent command does, with its claim) appends the next version
/// under the older id: in log order its event comes before the usage
/// record of the lower version. The live tables, each append applied as it
/// committed, counted the record; a replay counts it too.
#[actix_web::test]
async fn a_replay_counts_a_usage_record_that_follows_a_newer_event_of_its_key_in_log_order() {
    let (app, id) = one_key_at_rest().await;
    command_around_a_usage_flush(&app, &id).await;
    let live = snapshot(&app).await;
    assert_replay_reproduces(&app, live).await;
}

#[actix_web::test]
async fn a_database_replayed_before_replays_kept_index_names_gets_them_back() {
    let app = spawn_app().await;
    // What a replay before the names were kept left behind.
    sqlx::raw_sql(
        "alter index keys_list rename to keys_org_id_id_idx;
         alter index usage_rollups_recent rename to usage_rollups_granularity_bucket_idx",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::raw_sql(include_str!(
        "../../migrations/20261128190001_read_model_index_names.sql"
    ))
    .execute(&app.pool)
    .await
    .unwrap();
    let schema = read_model_schema(&app).await.join("\n");
    assert!(schema.contains("INDEX keys_list ON public.keys"), "{schema}");
    assert!(
        schema.contains("INDEX usage_rollups_recent ON public.usage_rollups"),
        "{schema}"
    );
    assert!(!schema.contains("_idx "), "{schema}");
}

#[actix_web::test]
async fn a_replay_that_cannot_copy_a_constraint_stops_and_changes_nothing() {
    let (app, _) = one_key_at_rest().await;
    // A deferrable constraint cannot be added to a copy `using index`.
    sqlx::raw_sql("alter table keys add constraint keys_name_once unique (org_id, name) deferrable")
        .execute(&app.pool)
        .await
        .unwrap();
    let (live, schema) = (snapshot(&app).await, read_model_schema(&app).await);
    let error = keyledger_workers::tailing::replay::rebuild(&app.pool)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("INDEX keys_name_once ON public.keys"),
        "{error}"
    );
    assert_eq!(snapshot(&app).await, live);
    assert_eq!(read_model_schema(&app).await, schema);
    let leftover: bool =
        sqlx::query_scalar("select exists (select from pg_namespace where nspname = 'keyledger_rebuild')")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(!leftover);
}

/// Usage committed after a replay's snapshot, in a minute its roll-up
/// already wrote: the swap adds it to that row (through the primary key the
/// replay builds after the roll-up).
#[actix_web::test]
async fn a_replay_adds_late_usage_to_the_minute_its_roll_up_wrote() {
    let (app, id) = one_key_at_rest().await;
    let projector = Projector::read_models(app.pool.clone());
    // Three records of 10:00 (4 + 5 + 6 requests) before the snapshot…
    append_usage(&app, std::slice::from_ref(&id), 3, 0).await;
    crate::support::settle(&app.pool).await;
    drain(&projector).await;
    // …and two more of 10:00 (4 + 5) after it, projected live.
    let live = replay_around(&app, async {
        append_usage(&app, std::slice::from_ref(&id), 2, 3).await;
        crate::support::settle(&app.pool).await;
        drain(&projector).await;
    })
    .await;
    let requests: Vec<(String, i64)> =
        sqlx::query_as("select granularity, requests from usage_rollups where key_id = $1 order by granularity")
            .bind(&id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let expected = [("day", 24), ("hour", 24), ("minute", 24)].map(|(g, n)| (g.to_owned(), n));
    assert_eq!(requests, expected);
    assert_eq!(snapshot(&app).await, live);
}
