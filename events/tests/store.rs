//! The event store against a real PostgreSQL: append and read, optimistic
//! concurrency (including a true race), the commit-safe global reader (it
//! never passes an append that has not committed yet), the append-only
//! guard, and idempotent projection into the read models.
//!
//! Every test runs in its own fresh database.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keyledger_events::domain::key::{stream_id, CreateKeyRequest, SecretSource};
use keyledger_events::domain::{Aggregate, ApiKey, HashKey, KeyCommand, KeyEvent, KeyId, OrgId};
use keyledger_events::log::{self, AppendError, EventMeta, LogPosition, NewEvent, StoredEvent};
use keyledger_events::read_model;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// A fresh, migrated database, dropped by [`TestDb::drop`].
struct TestDb {
    name: String,
    pool: PgPool,
}

impl TestDb {
    async fn new() -> TestDb {
        let name = format!("kl_store_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&format!("{SERVER}/postgres"))
            .await
            .expect("connect to the postgres database");
        sqlx::query(&format!("create database {name}"))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&format!("{SERVER}/{name}"))
            .await
            .expect("connect to the test database");
        keyledger_events::MIGRATOR.run(&pool).await.expect("migrate");
        TestDb { name, pool }
    }

    /// Best effort: a failed drop leaves a stray database, not a failed test.
    async fn drop(self) {
        self.pool.close().await;
        if let Ok(mut admin) = PgConnection::connect(&format!("{SERVER}/postgres")).await {
            let _ = sqlx::query(&format!("drop database if exists {} with (force)", self.name))
                .execute(&mut admin)
                .await;
            let _ = admin.close().await;
        }
    }
}

/// A timestamp Postgres stores exactly (microseconds).
fn at(seconds: i64, micros: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, micros * 1_000).expect("valid timestamp")
}

fn meta(actor: &str, request_id: Option<&str>, occurred_at: DateTime<Utc>) -> EventMeta {
    EventMeta {
        actor: actor.to_owned(),
        request_id: request_id.map(str::to_owned),
        occurred_at,
    }
}

fn raw_event(event_type: &str, data: serde_json::Value) -> NewEvent {
    NewEvent {
        event_type: event_type.to_owned(),
        schema_version: 1,
        data,
    }
}

/// Appends one event to `stream` in its own committed transaction.
async fn append_committed(pool: &PgPool, stream: &str, expected: i64, label: &str) -> StoredEvent {
    let mut tx = pool.begin().await.unwrap();
    let mut stored = log::append(
        &mut tx,
        stream,
        expected,
        &[raw_event("key.used", json!({ "label": label }))],
        &meta("cli", None, at(1_764_000_000, 0)),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stored.len(), 1);
    stored.remove(0)
}

/// A reader of the whole log that keeps a checkpoint, as the projector does.
struct Reader<'p> {
    pool: &'p PgPool,
    checkpoint: LogPosition,
    delivered: Vec<StoredEvent>,
}

impl<'p> Reader<'p> {
    fn new(pool: &'p PgPool) -> Reader<'p> {
        Reader {
            pool,
            checkpoint: LogPosition::default(),
            delivered: Vec::new(),
        }
    }

    /// One read after the checkpoint; the checkpoint moves to the last event.
    async fn step(&mut self) -> usize {
        let events = log::read_after(self.pool, self.checkpoint, 100).await.unwrap();
        for event in &events {
            assert!(
                event.log_position() > self.checkpoint,
                "read_after returned {:?}, not after the checkpoint {:?}",
                event.log_position(),
                self.checkpoint
            );
            self.checkpoint = event.log_position();
        }
        self.delivered.extend(events.iter().cloned());
        events.len()
    }

    /// Several reads a little apart (the reader polling while nothing may be
    /// delivered).
    async fn poll_a_while(&mut self) {
        for _ in 0..5 {
            self.step().await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// Reads until `count` events in all have been delivered. Any transaction
    /// still running in the cluster (other tests) may hold the reader back
    /// for a moment, hence the polling.
    async fn until_delivered(&mut self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.delivered.len() < count {
            assert!(
                Instant::now() < deadline,
                "the reader is stuck at {:?} with {} of {count} events delivered",
                self.checkpoint,
                self.delivered.len()
            );
            if self.step().await == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        // Caught up: nothing more, and nothing again.
        self.step().await;
        assert_eq!(self.delivered.len(), count, "more events delivered than appended");
    }

    fn delivered_streams(&self) -> Vec<&str> {
        self.delivered.iter().map(|e| e.stream_id.as_str()).collect()
    }
}

#[tokio::test]
async fn append_and_read_stream_round_trip_the_envelope() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let (t1, t2) = (at(1_764_000_000, 123_456), at(1_764_000_060, 654_321));

    let mut tx = pool.begin().await.unwrap();
    let first = log::append(
        &mut tx,
        "key-one",
        0,
        &[
            raw_event("key.created", json!({ "name": "first", "n": 1 })),
            raw_event("key.deactivated", json!({})),
        ],
        &meta("key_01ABC", Some("req-1"), t1),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(first.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(first[1].position, first[0].position + 1);
    assert_eq!(first[0].tx_id, first[1].tx_id, "one append is one transaction");
    for event in &first {
        assert_eq!(event.event_id.get_version_num(), 7, "event ids are UUIDv7");
        assert_eq!(event.stream_id, "key-one");
        assert_eq!(event.schema_version, 1);
        assert_eq!(event.actor, "key_01ABC");
        assert_eq!(event.request_id.as_deref(), Some("req-1"));
        assert_eq!(event.occurred_at, t1);
    }
    assert_ne!(first[0].event_id, first[1].event_id);
    assert_eq!(first[0].event_type, "key.created");
    assert_eq!(first[0].data, json!({ "name": "first", "n": 1 }));
    assert_eq!(first[1].event_type, "key.deactivated");
    assert_eq!(first[1].data, json!({}));

    // What was stored is what append returned.
    assert_eq!(log::read_stream(pool, "key-one", None).await.unwrap(), first);

    // A third event continues the stream; no request id round-trips as
    // null; a time finer than PostgreSQL keeps is returned as it is stored.
    let mut tx = pool.begin().await.unwrap();
    let third = log::append(
        &mut tx,
        "key-one",
        2,
        &[raw_event("key.activated", json!({}))],
        &meta("system:expiry", None, t2 + chrono::Duration::nanoseconds(789)),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].version, 3);
    assert_eq!(third[0].request_id, None);
    assert_eq!(third[0].actor, "system:expiry");
    assert_eq!(third[0].occurred_at, t2);
    assert!(third[0].position > first[1].position);

    // A second stream is independent: it starts at version 1.
    let mut tx = pool.begin().await.unwrap();
    let other = log::append(
        &mut tx,
        "key-two",
        0,
        &[raw_event(
            "key.created",
            json!({ "name": "second", "z": [1.5, -2, "x", null], "a": { "nested": true, "big": 18_446_744_073_709_551_615_u64 } }),
        )],
        &meta("cli", Some("req-2"), t1),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(other[0].version, 1);
    assert_eq!(other[0].stream_id, "key-two");

    let one = log::read_stream(pool, "key-one", None).await.unwrap();
    assert_eq!(one.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(one[2], third[0]);
    assert_eq!(log::read_stream(pool, "key-two", None).await.unwrap(), other);
    assert!(log::read_stream(pool, "key-none", None).await.unwrap().is_empty());

    // `until` keeps only what occurred at or before it.
    let until_t1 = log::read_stream(pool, "key-one", Some(t1)).await.unwrap();
    assert_eq!(until_t1, first);

    db.drop().await;
}

#[tokio::test]
async fn a_stale_expected_version_conflicts_and_writes_nothing() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    append_committed(pool, "key-s", 0, "v1").await;
    append_committed(pool, "key-s", 1, "v2").await;
    let before = log::read_stream(pool, "key-s", None).await.unwrap();

    for expected in [0, 1, 3] {
        let mut tx = pool.begin().await.unwrap();
        let result = log::append(
            &mut tx,
            "key-s",
            expected,
            &[raw_event("key.used", json!({ "label": "stale" }))],
            &meta("cli", None, at(1_764_000_000, 0)),
        )
        .await;
        match result {
            Err(AppendError::Conflict { stream_id, expected: e }) => {
                assert_eq!(stream_id, "key-s");
                assert_eq!(e, expected);
            }
            other => panic!("expected version {expected}: wanted a conflict, got {other:?}"),
        }
        tx.commit().await.unwrap();
    }
    assert_eq!(log::read_stream(pool, "key-s", None).await.unwrap(), before);
    let count: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(count, 2);

    db.drop().await;
}

#[tokio::test]
async fn two_racing_writers_of_the_same_version_one_conflicts_no_lost_update() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let when = at(1_764_000_000, 0);

    let mut first = pool.begin().await.unwrap();
    let mut second = pool.begin().await.unwrap();
    // Both have read the stream at version 0.
    assert!(log::read_stream(&mut *first, "key-race", None)
        .await
        .unwrap()
        .is_empty());
    assert!(log::read_stream(&mut *second, "key-race", None)
        .await
        .unwrap()
        .is_empty());

    let winner = log::append(
        &mut first,
        "key-race",
        0,
        &[raw_event("key.created", json!({ "writer": "first" }))],
        &meta("cli", Some("first"), when),
    )
    .await
    .unwrap();
    assert_eq!(winner[0].version, 1);

    // The second writer still sees version 0 (the first has not committed),
    // so it gets past the version check and its insert waits on the unique
    // (stream_id, version) index.
    let racer = tokio::spawn(async move {
        let result = log::append(
            &mut second,
            "key-race",
            0,
            &[raw_event("key.created", json!({ "writer": "second" }))],
            &meta("cli", Some("second"), when),
        )
        .await;
        (result, second)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock' and query ilike 'insert into events%'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting == 1 {
            break;
        }
        assert!(
            !racer.is_finished(),
            "the second append finished without waiting for the first"
        );
        assert!(
            Instant::now() < deadline,
            "the second append never blocked on the first"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!racer.is_finished());

    first.commit().await.unwrap();
    let (result, second) = tokio::time::timeout(Duration::from_secs(10), racer)
        .await
        .expect("the second append is released once the first commits")
        .unwrap();
    match result {
        Err(AppendError::Conflict { stream_id, expected }) => {
            assert_eq!(stream_id, "key-race");
            assert_eq!(expected, 0);
        }
        other => panic!("the losing writer must get a conflict, got {other:?}"),
    }
    second.rollback().await.unwrap();

    let stream = log::read_stream(pool, "key-race", None).await.unwrap();
    assert_eq!(stream, winner, "exactly the first writer's version 1");
    assert_eq!(stream[0].data, json!({ "writer": "first" }));

    db.drop().await;
}

/// Several new streams' first events in one statement of the caller's
/// (`NewEventColumns`): what `stored` builds from the returned ids and
/// positions is what a read returns, each stream's notice names its events,
/// and a stream that has an event already is refused by the unique index.
#[tokio::test]
async fn new_streams_appended_in_one_statement_read_back_as_returned() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let (m1, m2) = (
        meta("key_01A", Some("req-a"), at(1_764_000_000, 1)),
        meta("cli", None, at(1_764_000_001, 2) + chrono::Duration::nanoseconds(999)),
    );
    let a = [raw_event("key.created", json!({ "name": "a", "list": [1, "x", null] }))];
    let b = [
        raw_event("key.created", json!({ "name": "b" })),
        raw_event("key.deactivated", json!({})),
    ];
    let streams = [
        log::NewStream {
            stream_id: "key-batch-a",
            expected_version: 0,
            events: &a,
            meta: &m1,
        },
        log::NewStream {
            stream_id: "key-batch-b",
            expected_version: 0,
            events: &b,
            meta: &m2,
        },
    ];
    let columns = log::NewEventColumns::of(&streams);
    let sql = format!(
        "insert into events ({}) select e.* from {} returning event_id, position, tx_id",
        log::NEW_EVENT_COLUMNS,
        log::NewEventColumns::unnest(1, "e")
    );
    let returned: Vec<(uuid::Uuid, i64, i64)> = columns.bind(sqlx::query_as(&sql)).fetch_all(pool).await.unwrap();
    assert_eq!(returned.len(), 3);
    let stored = columns.stored(&returned).expect("every row returned");
    assert!(columns.stored(&returned[..2]).is_none(), "a missing row is noticed");
    let (a_stored, a_notice) = &stored[0];
    let (b_stored, b_notice) = &stored[1];
    assert_eq!(log::read_stream(pool, "key-batch-a", None).await.unwrap(), *a_stored);
    assert_eq!(log::read_stream(pool, "key-batch-b", None).await.unwrap(), *b_stored);
    assert_eq!(b_stored.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(b_stored[1].occurred_at, at(1_764_000_001, 2));
    assert!(a_stored[0].position < b_stored[0].position && b_stored[0].position < b_stored[1].position);
    assert_eq!(a_stored[0].tx_id, b_stored[1].tx_id, "one statement, one transaction");
    let heard: Vec<String> = [a_notice, b_notice].iter().map(|n| format!("{n:?}")).collect();
    assert!(heard[0].contains("key-batch-a key.created"), "{heard:?}");
    assert!(
        heard[1].contains("key-batch-b key.created,key.deactivated"),
        "{heard:?}"
    );

    // A stream with events is not new: the statement fails and stores nothing.
    let again = [log::NewStream {
        stream_id: "key-batch-a",
        expected_version: 0,
        events: &a,
        meta: &m1,
    }];
    let columns = log::NewEventColumns::of(&again);
    let refused = columns
        .bind(sqlx::query_as::<_, (uuid::Uuid, i64, i64)>(&sql))
        .fetch_all(pool)
        .await;
    match refused {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.constraint(), Some("events_stream_version")),
        other => panic!("expected a unique violation, got {other:?}"),
    }
    assert_eq!(log::read_stream(pool, "key-batch-a", None).await.unwrap(), *a_stored);
    db.drop().await;
}

/// Events for several streams, new and not, in one statement: each after
/// its stream's version; a stale version fails the whole statement.
#[tokio::test]
async fn streams_appended_to_in_one_statement_follow_their_versions_or_store_nothing() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let first = append_committed(pool, "key-many-a", 0, "a1").await;
    let m = meta("system:usage", None, at(1_764_000_000, 5));
    let a = [raw_event("key.used", json!({ "label": "a2" }))];
    let b = [
        raw_event("key.created", json!({ "name": "b" })),
        raw_event("key.used", json!({ "label": "b2" })),
    ];
    assert_eq!(
        log::stream_versions(pool, &["key-many-b", "key-many-a"]).await.unwrap(),
        [0, 1],
        "in the order asked"
    );
    let streams = [
        log::NewStream {
            stream_id: "key-many-a",
            expected_version: 1,
            events: &a,
            meta: &m,
        },
        log::NewStream {
            stream_id: "key-many-b",
            expected_version: 0,
            events: &b,
            meta: &m,
        },
    ];
    let mut tx = pool.begin().await.unwrap();
    let stored = log::append_many_unannounced(&mut tx, &streams).await.unwrap();
    tx.commit().await.unwrap();
    let (a_stored, a_notice) = &stored[0];
    let (b_stored, b_notice) = &stored[1];
    let a_read = log::read_stream(pool, "key-many-a", None).await.unwrap();
    assert_eq!(a_read[1..], a_stored[..]);
    assert_eq!(a_read[0], first);
    assert_eq!(log::read_stream(pool, "key-many-b", None).await.unwrap(), *b_stored);
    assert_eq!(a_stored.iter().map(|e| e.version).collect::<Vec<_>>(), [2]);
    assert_eq!(b_stored.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2]);
    assert!(format!("{a_notice:?}").contains("key-many-a key.used"), "{a_notice:?}");
    assert!(
        format!("{b_notice:?}").contains("key-many-b key.created,key.used"),
        "{b_notice:?}"
    );
    assert_eq!(
        log::stream_versions(pool, &["key-many-a", "key-many-b", "key-none"])
            .await
            .unwrap(),
        [2, 2, 0]
    );
    let without_usage = log::read_streams_without_usage(pool, &["key-many-b", "key-many-a"])
        .await
        .unwrap();
    assert_eq!(without_usage, b_stored[..1], "usage records left out");

    // "key-many-a" is at version 2 now: a batch that read 1 stores nothing,
    // not even the other stream's events.
    let c = [raw_event("key.created", json!({ "name": "c" }))];
    let stale = [
        log::NewStream {
            stream_id: "key-many-c",
            expected_version: 0,
            events: &c,
            meta: &m,
        },
        log::NewStream {
            stream_id: "key-many-a",
            expected_version: 1,
            events: &a,
            meta: &m,
        },
    ];
    let count = || sqlx::query_scalar::<_, i64>("select count(*) from events").fetch_one(pool);
    let before = count().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    match log::append_many_unannounced(&mut tx, &stale).await {
        Err(AppendError::BatchConflict { streams: 2 }) => {}
        other => panic!("expected a batch conflict, got {other:?}"),
    }
    drop(tx);
    assert_eq!(count().await.unwrap(), before);
    assert_eq!(log::stream_versions(pool, &["key-many-c"]).await.unwrap(), [0]);
    db.drop().await;
}

/// The test: one append transaction stays open while later appends
/// commit; the reader does not pass the open one, and delivers it (once)
/// when it commits.
#[tokio::test]
async fn the_reader_never_skips_an_append_that_has_not_committed_yet() {
    let db = TestDb::new().await;
    let pool = &db.pool;

    // A takes the lower position and stays open.
    let mut tx_a = pool.begin().await.unwrap();
    let a = log::append(
        &mut tx_a,
        "key-a",
        0,
        &[raw_event("key.created", json!({ "label": "a" }))],
        &meta("cli", Some("a"), at(1_764_000_000, 0)),
    )
    .await
    .unwrap()
    .remove(0);

    // B and C take higher positions and commit first.
    let b = append_committed(pool, "key-b", 0, "b").await;
    let c = append_committed(pool, "key-c", 0, "c").await;
    assert!(a.position < b.position && b.position < c.position, "the gap is real");
    let visible: Vec<i64> = sqlx::query_scalar("select position from events order by position")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(
        visible,
        [b.position, c.position],
        "b and c are committed and visible, a is not"
    );

    // A reader from the start gets nothing that would let it pass A.
    assert!(log::read_after(pool, LogPosition::default(), 100)
        .await
        .unwrap()
        .is_empty());

    let mut reader = Reader::new(pool);
    reader.poll_a_while().await;
    assert!(
        reader.delivered.is_empty(),
        "the reader passed the open append: delivered {:?}",
        reader.delivered_streams()
    );
    assert_eq!(reader.checkpoint, LogPosition::default());

    tx_a.commit().await.unwrap();
    reader.until_delivered(3).await;
    assert_eq!(reader.delivered_streams(), ["key-a", "key-b", "key-c"]);
    assert_eq!(reader.delivered, [a.clone(), b.clone(), c.clone()]);
    assert_eq!(reader.checkpoint, c.log_position());

    // And it keeps making progress.
    let d = append_committed(pool, "key-d", 0, "d").await;
    reader.until_delivered(4).await;
    assert_eq!(reader.delivered[3], d);

    db.drop().await;
}

/// Commit order, position order and transaction order can all differ: a
/// transaction that started (and took its id) first but appends last, with
/// the higher position, still holds the reader back until it commits.
#[tokio::test]
async fn the_reader_waits_for_an_older_transaction_that_appends_late() {
    let db = TestDb::new().await;
    let pool = &db.pool;

    let mut old = pool.begin().await.unwrap();
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut *old)
        .await
        .unwrap();
    let early = append_committed(pool, "key-early", 0, "early").await;
    let late = log::append(
        &mut old,
        "key-late",
        0,
        &[raw_event("key.created", json!({ "label": "late" }))],
        &meta("cli", None, at(1_764_000_000, 0)),
    )
    .await
    .unwrap()
    .remove(0);
    assert!(late.position > early.position);
    assert!(late.tx_id < early.tx_id);

    let mut reader = Reader::new(pool);
    reader.poll_a_while().await;
    assert!(
        reader.delivered.is_empty(),
        "the reader passed the open transaction: delivered {:?}",
        reader.delivered_streams()
    );

    old.commit().await.unwrap();
    reader.until_delivered(2).await;
    assert_eq!(reader.delivered, [late, early]);

    db.drop().await;
}

/// A rolled-back append leaves a permanent hole in the positions: the reader
/// waits while the transaction runs, then passes the hole.
#[tokio::test]
async fn the_reader_passes_the_gap_of_an_aborted_append() {
    let db = TestDb::new().await;
    let pool = &db.pool;

    let mut aborted = pool.begin().await.unwrap();
    let ghost = log::append(
        &mut aborted,
        "key-ghost",
        0,
        &[raw_event("key.created", json!({ "label": "ghost" }))],
        &meta("cli", None, at(1_764_000_000, 0)),
    )
    .await
    .unwrap()
    .remove(0);
    let e = append_committed(pool, "key-e", 0, "e").await;
    assert!(ghost.position < e.position);

    let mut reader = Reader::new(pool);
    reader.poll_a_while().await;
    assert!(
        reader.delivered.is_empty(),
        "the reader passed the open append: delivered {:?}",
        reader.delivered_streams()
    );

    aborted.rollback().await.unwrap();
    reader.until_delivered(1).await;
    assert_eq!(reader.delivered, std::slice::from_ref(&e));

    let holes: i64 = sqlx::query_scalar("select count(*) from events where position = $1")
        .bind(ghost.position)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(holes, 0, "the aborted append left nothing behind");
    assert!(log::read_stream(pool, "key-ghost", None).await.unwrap().is_empty());

    let f = append_committed(pool, "key-f", 0, "f").await;
    reader.until_delivered(2).await;
    assert_eq!(reader.delivered, [e, f]);

    db.drop().await;
}

#[tokio::test]
async fn the_events_table_is_append_only() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    append_committed(pool, "key-h", 0, "one").await;
    append_committed(pool, "key-h", 1, "two").await;
    let before = log::read_stream(pool, "key-h", None).await.unwrap();

    for statement in [
        "update events set actor = 'mallory'",
        "update events set data = '{}' where version = 2",
        "delete from events",
        "delete from events where version = 1",
        "truncate events",
    ] {
        match sqlx::query(statement).execute(pool).await {
            Err(sqlx::Error::Database(e)) => {
                assert!(
                    e.message().contains("the event log is append-only"),
                    "{statement}: unexpected error {e}"
                );
            }
            other => panic!("{statement}: must fail, got {other:?}"),
        }
    }
    assert_eq!(log::read_stream(pool, "key-h", None).await.unwrap(), before);

    db.drop().await;
}

async fn key_row(pool: &PgPool) -> String {
    let rows: Vec<String> = sqlx::query_scalar("select k::text from keys k")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "exactly one key row: {rows:?}");
    rows.into_iter().next().unwrap()
}

async fn apply_all(pool: &PgPool, events: &[&StoredEvent]) {
    let mut tx = pool.begin().await.unwrap();
    for event in events {
        read_model::apply(&mut tx, event).await.unwrap();
    }
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn projecting_the_same_events_again_changes_nothing() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let now = at(1_764_000_000, 250_000);
    let (key_id, org_id) = (KeyId::new(), OrgId::new());
    let stream = stream_id(key_id);

    let created = ApiKey::decide(
        None,
        KeyCommand::Create(Box::new(
            CreateKeyRequest {
                key_id,
                org_id,
                name: "ci deploy".into(),
                key_type: "secret".into(),
                scopes: None,
                expires_at: None,
                rotation_days: 90,
                secret: SecretSource {
                    random: [7; 32],
                    hash_key: HashKey::from_bytes([3; 32]),
                },
                allowed_ips: None,
            }
            .parse(now)
            .unwrap(),
        )),
        now,
    )
    .unwrap();
    let state = ApiKey::replay(&created);
    let deactivated = ApiKey::decide(state.as_ref(), KeyCommand::Deactivate, now).unwrap();
    let KeyEvent::Created(creation) = &created[0] else {
        panic!("not a creation: {created:?}")
    };
    let new_events: Vec<NewEvent> = created.iter().chain(&deactivated).map(NewEvent::from_domain).collect();
    assert_eq!(
        new_events.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        ["key.created", "key.deactivated"]
    );

    let mut tx = pool.begin().await.unwrap();
    let stored = log::append(&mut tx, &stream, 0, &new_events, &meta("cli", Some("req"), now))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (v1, v2) = (&stored[0], &stored[1]);
    assert_eq!((v1.version, v2.version), (1, 2));

    apply_all(pool, &[v1, v2]).await;
    let row: (
        String,
        String,
        String,
        String,
        String,
        Vec<String>,
        String,
        String,
        String,
        i64,
    ) = sqlx::query_as(
        "select id, org_id, name, key_type, environment, scopes, status, prefix, last_four, version from keys",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            key_id.to_string(),
            org_id.to_string(),
            "ci deploy".to_owned(),
            "secret".to_owned(),
            "live".to_owned(),
            creation.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            "inactive".to_owned(),
            "sk_live_".to_owned(),
            creation.last_four.clone(),
            2
        )
    );
    let projected = key_row(pool).await;

    // The same events again, together and one by one: the row is identical.
    apply_all(pool, &[v1, v2]).await;
    assert_eq!(key_row(pool).await, projected);
    apply_all(pool, &[v2]).await;
    assert_eq!(key_row(pool).await, projected);
    // An older event after a newer one changes nothing.
    apply_all(pool, &[v1]).await;
    assert_eq!(key_row(pool).await, projected);

    // Activate (version 3), then replay the older deactivation: the key stays
    // active.
    let state = ApiKey::replay(created.iter().chain(&deactivated));
    let activated = ApiKey::decide(state.as_ref(), KeyCommand::Activate, now).unwrap();
    let mut tx = pool.begin().await.unwrap();
    let v3 = log::append(
        &mut tx,
        &stream,
        2,
        &[NewEvent::from_domain(&activated[0])],
        &meta("cli", None, now),
    )
    .await
    .unwrap()
    .remove(0);
    tx.commit().await.unwrap();
    assert_eq!((v3.version, v3.event_type.as_str()), (3, "key.activated"));
    apply_all(pool, &[&v3]).await;
    let reactivated = key_row(pool).await;
    assert_ne!(reactivated, projected);
    let (status, version): (String, i64) = sqlx::query_as("select status, version from keys")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!((status.as_str(), version), ("active", 3));

    apply_all(pool, &[v2]).await;
    assert_eq!(
        key_row(pool).await,
        reactivated,
        "an older deactivation revived nothing"
    );
    apply_all(pool, &[v1, v2, &v3]).await;
    assert_eq!(key_row(pool).await, reactivated);

    db.drop().await;
}

/// What PostgreSQL counted on `index` so far: (scans, index entries read).
/// Read on the connection that did the reads, after flushing its counts.
async fn index_use(conn: &mut PgConnection, index: &str) -> (i64, i64) {
    sqlx::query("select pg_stat_force_next_flush()")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query_as("select idx_scan, idx_tup_read from pg_stat_user_indexes where indexrelname = $1")
        .bind(index)
        .fetch_optional(&mut *conn)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no index {index}"))
}

#[tokio::test]
async fn a_busy_keys_stream_is_read_without_visiting_its_usage_records() {
    let db = TestDb::new().await;
    let stream = "key-busy";
    let events: Vec<NewEvent> = std::iter::once(raw_event("key.created", json!({})))
        .chain((0..3_000).map(|n| raw_event("key.used", json!({ "n": n }))))
        .chain(std::iter::once(raw_event("key.updated", json!({}))))
        .collect();
    let mut tx = db.pool.begin().await.unwrap();
    for (n, chunk) in events.chunks(100).enumerate() {
        log::append(
            &mut tx,
            stream,
            n as i64 * 100,
            chunk,
            &meta("cli", None, at(1_764_000_000, 0)),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    sqlx::query("analyze events").execute(&db.pool).await.unwrap();

    let mut conn = db.pool.acquire().await.unwrap();
    // As a busy server's prepared statements are planned after a few runs:
    // one plan for any stream (a bound type would not match the index).
    sqlx::query("set plan_cache_mode = force_generic_plan")
        .execute(&mut *conn)
        .await
        .unwrap();
    let index = "events_stream_without_usage";
    let before = index_use(&mut conn, index).await;
    let loaded = log::read_stream_without_usage(&mut *conn, stream, None).await.unwrap();
    let types: Vec<(&str, i64)> = loaded.iter().map(|e| (e.event_type.as_str(), e.version)).collect();
    assert_eq!(types, [("key.created", 1), ("key.updated", 3_002)]);
    let newest = log::read_stream_newest_without_usage(&mut *conn, stream, 1)
        .await
        .unwrap();
    assert_eq!(newest[0].version, 3_002);
    assert!(log::only_usage_after(&mut *conn, stream, 3_002).await.unwrap());
    assert!(!log::only_usage_after(&mut *conn, stream, 3_001).await.unwrap());
    let after = index_use(&mut conn, index).await;
    // Four reads, each by the index of the other events: the two events,
    // not the 3,000 usage records.
    assert_eq!(after.0 - before.0, 4, "index scans");
    assert!(after.1 - before.1 <= 6, "index entries read: {}", after.1 - before.1);
    drop(conn);
    db.drop().await;
}
