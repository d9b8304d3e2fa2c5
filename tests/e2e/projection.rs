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
    let events = app.event_count().await as usize;

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
