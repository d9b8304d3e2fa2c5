//! Kafka mode against a real broker (Tansu): the outbox relay, the consuming
//! projector, crashes at the worst moments, poison messages, replicas.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use keyledger_events::log::StoredEvent;
use keyledger_workers::tailing::kafka_projector::{KafkaProjector, Outcome};
use keyledger_workers::Relay;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use crate::broker::{read_topic, Broker, Seen};
use crate::support::{eventually, spawn_app, TestApp};

/// Every event of the log, in position order.
async fn log_events(pool: &sqlx::PgPool) -> Vec<StoredEvent> {
    sqlx::query_as(
        "select position, tx_id, event_id, stream_id, version, type, schema_version, occurred_at, actor, request_id, data
         from events order by position",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn all_events(app: &TestApp) -> Vec<StoredEvent> {
    log_events(&app.pool).await
}

async fn keys_snapshot(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("select k::text from keys k order by id")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// Some lifecycle traffic: `n` keys, each created, renamed and deactivated.
async fn traffic(app: &mut TestApp, n: usize) {
    for i in 0..n {
        let key = app
            .create_key(json!({"name": format!("key {i}"), "type": "secret"}))
            .await;
        let path = format!("/v1/keys/{}", key["id"].as_str().unwrap());
        app.patch(&path, json!({"name": format!("key {i} renamed")}))
            .await
            .expect(200);
        app.post(&format!("{path}/deactivate"), json!({})).await.expect(200);
    }
    // Usage flushes would append `key.used` events while a test counts.
    app.stop_background().await;
    crate::support::settle(&app.pool).await;
}

async fn relay_all(relay: &Relay) -> usize {
    let mut published = 0;
    loop {
        match relay.run_once().await.unwrap() {
            0 => return published,
            n => published += n,
        }
    }
}

async fn step(projector: &KafkaProjector) -> Outcome {
    tokio::time::timeout(Duration::from_secs(60), projector.step())
        .await
        .expect("a message within 60 s")
        .unwrap()
}

/// Each event exactly once, with its CloudEvents headers, each key's events
/// in version order on one partition.
fn assert_published_once_in_order(seen: &[Seen], events: &[StoredEvent]) {
    let by_id: HashMap<String, &StoredEvent> = events.iter().map(|e| (e.event_id.to_string(), e)).collect();
    let ids: Vec<&str> = seen.iter().map(|m| m.header("ce_id")).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "no event is on the topic twice");
    assert_eq!(unique.len(), events.len(), "every event is on the topic");
    let mut per_key: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
    for message in seen {
        let event = by_id[message.header("ce_id")];
        assert_eq!(message.key, event.stream_id);
        assert_eq!(message.header("ce_specversion"), "1.0");
        assert_eq!(message.header("ce_type"), event.event_type);
        assert_eq!(message.header("ce_source"), "/keyledger");
        assert_eq!(message.header("ce_subject"), event.stream_id);
        assert_eq!(
            message.header("ce_time"),
            keyledger_events::representation::rfc3339(event.occurred_at)
        );
        assert_eq!(message.payload["event_id"], message.header("ce_id"));
        assert_eq!(message.payload["version"], event.version);
        per_key
            .entry(&event.stream_id)
            .or_default()
            .push((message.partition, event.version));
    }
    for (key, versions) in per_key {
        let partitions: HashSet<i32> = versions.iter().map(|v| v.0).collect();
        assert_eq!(partitions.len(), 1, "{key} stays on one partition");
        let order: Vec<i64> = versions.iter().map(|v| v.1).collect();
        assert_eq!(
            order,
            (1..=order.len() as i64).collect::<Vec<_>>(),
            "{key} in version order"
        );
    }
}

#[actix_web::test]
async fn the_relay_publishes_every_committed_event_once_in_order_as_cloudevents() {
    let broker = Broker::start().await;
    let mut app = spawn_app().await;
    let kafka = broker.settings(3);
    kafka.ensure_topics().await.unwrap();
    kafka.ensure_topics().await.expect("creating existing topics is fine");
    traffic(&mut app, 6).await;
    let relay = Relay::new(app.pool.clone(), &kafka).unwrap();
    let events = all_events(&app).await;
    assert_eq!(relay_all(&relay).await, events.len());
    assert_eq!(relay.run_once().await.unwrap(), 0, "nothing is published twice");
    let seen = read_topic(&kafka.brokers, &kafka.topic, events.len());
    assert_published_once_in_order(&seen, &events);
    let text = serde_json::to_string(&seen.iter().map(|m| &m.payload).collect::<Vec<_>>()).unwrap();
    assert!(!text.contains(&app.admin_key[8..51]), "no secret is published");
}

#[actix_web::test]
async fn a_relay_crash_between_acknowledgement_and_marking_republishes_and_consumers_skip_it() {
    let broker = Broker::start().await;
    let mut app = spawn_app().await;
    let kafka = broker.settings(1);
    kafka.ensure_topics().await.unwrap();
    traffic(&mut app, 3).await;
    let events = all_events(&app).await;
    let crashed = Relay::new(app.pool.clone(), &kafka).unwrap();
    let (_, sent) = crashed.publish_next().await.unwrap().expect("a batch");
    assert_eq!(sent, events.len());
    drop(crashed); // acknowledged by the broker, never marked
    let relay = Relay::new(app.pool.clone(), &kafka).unwrap();
    assert_eq!(relay_all(&relay).await, events.len(), "published again after the crash");

    let seen = read_topic(&kafka.brokers, &kafka.topic, 2 * events.len());
    assert_eq!(seen.len(), 2 * events.len());
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for message in &seen {
        *copies.entry(message.header("ce_id")).or_default() += 1;
    }
    assert!(
        copies.values().all(|&n| n == 2),
        "each event twice, with the same ce_id"
    );

    let before = keys_snapshot(&app).await;
    let projector = KafkaProjector::new(app.pool.clone(), &kafka).unwrap();
    let mut applied = HashSet::new();
    let mut skipped = HashSet::new();
    for _ in 0..seen.len() {
        match step(&projector).await {
            Outcome::Applied(id) => assert!(applied.insert(id)),
            Outcome::Skipped(id) => assert!(skipped.insert(id)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(applied.len(), events.len());
    assert_eq!(applied, skipped, "every duplicate is recognised");
    assert_eq!(keys_snapshot(&app).await, before, "the duplicates change nothing");
}

#[actix_web::test]
async fn a_worker_crash_after_its_commit_and_before_its_offset_skips_the_redelivery() {
    let broker = Broker::start().await;
    let mut app = spawn_app().await;
    let kafka = broker.settings(1);
    kafka.ensure_topics().await.unwrap();
    traffic(&mut app, 2).await;
    let relay = Relay::new(app.pool.clone(), &kafka).unwrap();
    let total = relay_all(&relay).await;

    let crashed = KafkaProjector::new(app.pool.clone(), &kafka).unwrap();
    let message = tokio::time::timeout(Duration::from_secs(60), crashed.recv())
        .await
        .unwrap()
        .unwrap();
    let Outcome::Applied(first) = crashed.handle(&message).await.unwrap() else {
        panic!("the first message is applied")
    };
    drop(message);
    drop(crashed); // committed in the database, offset never stored
    let before = keys_snapshot(&app).await;

    let projector = KafkaProjector::new(app.pool.clone(), &kafka).unwrap();
    assert_eq!(
        step(&projector).await,
        Outcome::Skipped(first.clone()),
        "redelivered and skipped"
    );
    for _ in 1..total {
        assert!(matches!(step(&projector).await, Outcome::Applied(id) if id != first));
    }
    let projected: i64 = sqlx::query_scalar("select count(*) from kafka_projection")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(projected, 4, "the streams of the org, its admin key and both new keys");
    assert_eq!(keys_snapshot(&app).await, before);
}

#[actix_web::test]
async fn poison_messages_go_to_the_dead_letter_topic_and_the_partition_keeps_flowing() {
    let broker = Broker::start().await;
    let mut app = spawn_app().await;
    let kafka = broker.settings(1);
    kafka.ensure_topics().await.unwrap();
    let template = serde_json::to_value(&all_events(&app).await[0]).unwrap();
    let mut unknown_type = template.clone();
    unknown_type["type"] = json!("key.teleported");
    unknown_type["stream_id"] = json!("key-poison");
    let mut future_schema = template.clone();
    future_schema["schema_version"] = json!(99);
    future_schema["stream_id"] = json!("org-future");
    let producer: FutureProducer = kafka.producer().unwrap();
    let poison = [
        b"{not json".to_vec(),
        serde_json::to_vec(&unknown_type).unwrap(),
        serde_json::to_vec(&future_schema).unwrap(),
    ];
    for payload in &poison {
        let record = FutureRecord::to(&kafka.topic).key("key-poison").payload(payload);
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }
    let key = app
        .create_key(json!({"name": "after the poison", "type": "secret"}))
        .await;
    app.stop_background().await;
    crate::support::settle(&app.pool).await;
    let relay = Relay::new(app.pool.clone(), &kafka).unwrap();
    let good = relay_all(&relay).await;

    let projector = KafkaProjector::new(app.pool.clone(), &kafka).unwrap();
    let mut dead = vec![];
    let mut applied = vec![];
    for _ in 0..poison.len() + good {
        match step(&projector).await {
            Outcome::DeadLettered(problem) => dead.push(problem),
            Outcome::Applied(id) => applied.push(id),
            Outcome::Skipped(id) => panic!("nothing was applied before: {id}"),
        }
    }
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert_eq!(applied.len(), good, "the good messages after the poison are projected");
    let version: i64 = sqlx::query_scalar("select version from kafka_projection where stream_id = $1")
        .bind(format!("key-{}", key["id"].as_str().unwrap()))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(version, 1);

    let dlq = read_topic(&kafka.brokers, &kafka.dlq_topic, 3);
    assert_eq!(dlq.len(), 3);
    for (message, offset) in dlq.iter().zip(0..) {
        assert_eq!(message.header("dlq_origin_topic"), kafka.topic);
        assert_eq!(message.header("dlq_origin_partition"), "0");
        assert_eq!(message.header("dlq_origin_offset"), offset.to_string());
        assert!(!message.header("dlq_error").is_empty());
        assert_eq!(message.key, "key-poison");
    }
    assert!(
        dlq[1].header("dlq_error").contains("teleported"),
        "{}",
        dlq[1].header("dlq_error")
    );
    assert!(
        dlq[2].header("dlq_error").contains("schema"),
        "{}",
        dlq[2].header("dlq_error")
    );
}

async fn wait_until(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    eventually(Duration::from_secs(seconds), || {
        let result = if done() {
            Ok(())
        } else {
            Err(format!("timed out waiting for {what}"))
        };
        async move { result }
    })
    .await
}

#[actix_web::test]
async fn two_replicas_share_the_partitions_and_one_takes_over_when_the_other_stops() {
    use std::cell::RefCell;
    use std::rc::Rc;
    let broker = Broker::start().await;
    let mut app = spawn_app().await;
    let kafka = broker.settings(4);
    kafka.ensure_topics().await.unwrap();
    let log: Rc<RefCell<Vec<(usize, Outcome)>>> = Rc::default();
    let replicas: Vec<Rc<KafkaProjector>> = (0..2)
        .map(|_| Rc::new(KafkaProjector::new(app.pool.clone(), &kafka).unwrap()))
        .collect();
    let tasks: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, replica)| {
            let (replica, log) = (replica.clone(), log.clone());
            actix_web::rt::spawn(async move {
                loop {
                    let outcome = replica.step().await.unwrap();
                    log.borrow_mut().push((i, outcome));
                }
            })
        })
        .collect();
    wait_until("both replicas to hold partitions", 60, || {
        replicas.iter().all(|r| r.assigned_partitions() > 0)
            && replicas.iter().map(|r| r.assigned_partitions()).sum::<usize>() == 4
    })
    .await;

    traffic(&mut app, 8).await;
    let relay = Relay::new(app.pool.clone(), &kafka).unwrap();
    let first = relay_all(&relay).await;
    let applied = |log: &RefCell<Vec<(usize, Outcome)>>| -> Vec<(usize, String)> {
        log.borrow()
            .iter()
            .filter_map(|(i, o)| match o {
                Outcome::Applied(id) => Some((*i, id.clone())),
                _ => None,
            })
            .collect()
    };
    wait_until("the first events to be applied", 60, || applied(&log).len() >= first).await;
    let by_replica = |replica: usize| applied(&log).iter().filter(|(i, _)| *i == replica).count();
    assert!(by_replica(0) > 0 && by_replica(1) > 0, "both replicas work");

    // Replica 0 stops; replica 1 takes over its partitions.
    tasks[0].abort();
    let stopped = replicas[0].clone();
    drop(replicas);
    drop(stopped);
    let survivor = tasks.into_iter().nth(1).unwrap();
    traffic(&mut app, 8).await;
    let second = relay_all(&relay).await;
    wait_until("every event to be applied", 90, || {
        applied(&log).len() >= first + second
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    survivor.abort();

    let all = applied(&log);
    let ids: HashSet<&String> = all.iter().map(|(_, id)| id).collect();
    assert_eq!(all.len(), first + second, "each event applied exactly once");
    assert_eq!(ids.len(), all.len());
    let events: HashSet<String> = all_events(&app).await.iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(ids.into_iter().cloned().collect::<HashSet<_>>(), events, "no gap");
}

mod binary_mode {
    //! `keyledger serve` + `keyledger work` in Kafka mode, as processes.

    use std::time::{Duration, Instant};

    use awc::http::Method;
    use serde_json::json;

    use super::assert_published_once_in_order;
    use crate::binary::{create_org, keyledger, run, temp_dir, Server, HASH_KEY};
    use crate::broker::{read_topic, Broker};
    use crate::support::{call, eventually, fresh_database_url};

    struct Stack {
        url: String,
        dir: std::path::PathBuf,
        brokers: String,
        serve: Server,
        work: Server,
        admin: String,
        pool: sqlx::PgPool,
    }

    /// `keyledger <sub>` in Kafka mode. Usage is flushed only at shutdown,
    /// so the log holds still while a test counts.
    fn kafka_mode(url: &str, dir: &std::path::Path, brokers: &str, sub: &str) -> std::process::Command {
        let mut command = keyledger(url, dir);
        command
            .arg(sub)
            .env("KAFKA_BROKERS", brokers)
            .env("KEYLEDGER_HASH_KEY", HASH_KEY)
            .env("KEYLEDGER_USAGE_FLUSH_SECONDS", "3600");
        command
    }

    async fn start_work(url: &str, dir: &std::path::Path, brokers: &str, log: &str) -> Server {
        let mut work = kafka_mode(url, dir, brokers, "work");
        Server::start_worker(&mut work, dir.join(log), "workers in Kafka mode").await
    }

    async fn stack(broker: &Broker) -> Stack {
        let (url, dir) = (fresh_database_url(), temp_dir());
        let brokers = broker.address();
        let work = start_work(&url, &dir, &brokers, "work.log").await;
        let mut serve = kafka_mode(&url, &dir, &brokers, "serve");
        let serve = Server::start(&mut serve, dir.join("serve.log")).await;
        let created = create_org(
            &url,
            &dir,
            "Kafka",
            &["--plan", "enterprise", "--rate-limit", "1000000"],
        );
        let admin = created["key"]["key"].as_str().unwrap().to_owned();
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        Stack {
            url,
            dir,
            brokers,
            serve,
            work,
            admin,
            pool,
        }
    }

    impl Stack {
        /// `n` commands from `clients` concurrent clients; every one must succeed.
        async fn commands(&self, clients: usize, n: usize) {
            let per_client = n / clients;
            let runs = (0..clients).map(|c| async move {
                let created = call(
                    &self.serve.address,
                    Method::POST,
                    "/v1/keys",
                    Some(&self.admin),
                    Some(json!({"name": format!("client {c}"), "type": "secret"})),
                    &[],
                )
                .await;
                let path = format!("/v1/keys/{}", created.expect(201)["id"].as_str().unwrap());
                for i in 1..per_client {
                    let (method, suffix, body) = match i % 4 {
                        0 => (Method::PATCH, "", Some(json!({"name": format!("client {c} #{i}")}))),
                        1 => (Method::POST, "/deactivate", None),
                        2 => (Method::POST, "/activate", None),
                        _ => (Method::POST, "/regenerate", Some(json!({}))),
                    };
                    let answer = call(
                        &self.serve.address,
                        method,
                        &format!("{path}{suffix}"),
                        Some(&self.admin),
                        body,
                        &[],
                    )
                    .await;
                    answer.expect(200);
                }
            });
            futures_util::future::join_all(runs).await;
        }

        /// Waits until every event is published and projected from Kafka.
        async fn caught_up(&self, seconds: u64) -> i64 {
            eventually(Duration::from_secs(seconds), || async {
                let (events, lagging): (i64, i64) = sqlx::query_as(
                    "select (select count(*) from events),
                            (select count(*) from (select stream_id, max(version) as version from events group by stream_id) e
                             left join kafka_projection k using (stream_id)
                             where k.version is distinct from e.version)
                            + (select count(*) from events where (tx_id, position) > (
                                 coalesce((select tx_id from projector_checkpoints where name = 'relay'), 0),
                                 coalesce((select position from projector_checkpoints where name = 'relay'), 0)))",
                )
                .fetch_one(&self.pool)
                .await
                .unwrap();
                if lagging == 0 {
                    return Ok(events);
                }
                Err(format!(
                    "{lagging} streams/events not published and projected; work log: {}",
                    std::fs::read_to_string(self.dir.join("work.log")).unwrap_or_default()
                ))
            })
            .await
        }

        async fn events(&self) -> Vec<keyledger_events::log::StoredEvent> {
            super::log_events(&self.pool).await
        }

        fn replay_check(&self) {
            let check = run(keyledger(&self.url, &self.dir).args(["replay", "--check"]));
            assert_eq!(
                check.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&check.stdout)
            );
        }
    }

    /// `work`'s own listener: health, readiness, and the projection lag.
    async fn work_metrics(stack: &Stack) -> String {
        let metrics = call(&stack.work.address, Method::GET, "/metrics", None, None, &[]).await;
        metrics.expect(200).as_str().unwrap_or_default().to_owned()
    }

    #[actix_web::test]
    async fn a_worker_killed_and_restarted_at_once_projects_new_events_within_seconds() {
        let broker = Broker::start().await;
        let mut stack = stack(&broker).await;
        stack.commands(2, 10).await;
        stack.caught_up(60).await;
        for round in 1..=3 {
            stack.work.kill9();
            stack.work = start_work(&stack.url, &stack.dir, &stack.brokers, &format!("work-{round}.log")).await;
            stack.commands(2, 10).await;
            let started = Instant::now();
            // A stale member of the group delays the new one by its session
            // (6 s) plus a rebalance; a stuck group is rejoined after 15 s.
            // (Tansu does not always form the stuck group: this test passed
            // with the rejoin disabled too. The decision is unit-tested in
            // the projector, `is_stuck`.)
            stack.caught_up(40).await;
            eprintln!("round {round}: caught up {:?} after the restart", started.elapsed());
        }
        // The stall would be visible: the lag metrics, on work's listener.
        call(&stack.work.address, Method::GET, "/healthz", None, None, &[])
            .await
            .expect(200);
        let ready = call(&stack.work.address, Method::GET, "/readyz", None, None, &[]).await;
        assert_eq!(ready.expect(200)["checks"], json!({"postgres": "ok", "kafka": "ok"}));
        eventually(Duration::from_secs(30), || async {
            let text = work_metrics(&stack).await;
            if text.contains("keyledger_projection_lag_events{projector=\"kafka\"} 0\n")
                && text.contains("keyledger_projection_lag_seconds{projector=\"kafka\"} 0\n")
                && text.contains("keyledger_relay_lag_events 0\n")
            {
                return Ok(());
            }
            Err(format!("lag metrics never showed the catch-up: {text}"))
        })
        .await;
        stack.work.stop();
        stack.serve.stop();
    }

    #[actix_web::test]
    async fn work_reports_lag_while_the_broker_is_gone_and_exits_within_ten_seconds_of_sigterm() {
        let mut broker = Broker::start().await;
        let stack = stack(&broker).await;
        stack.commands(2, 10).await;
        stack.caught_up(60).await;
        broker.kill();
        // Commands still succeed; their events wait for the broker.
        stack.commands(2, 10).await;
        let ready = call(&stack.work.address, Method::GET, "/readyz", None, None, &[]).await;
        ready.expect_error(503, "unavailable");
        assert_eq!(ready.body["error"]["details"]["kafka"], json!(["unreachable"]));
        eventually(Duration::from_secs(30), || async {
            let text = work_metrics(&stack).await;
            let lagging = text
                .lines()
                .find_map(|l| l.strip_prefix("keyledger_projection_lag_events{projector=\"kafka\"} "))
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            if lagging >= 10 && !text.contains("keyledger_relay_lag_events 0\n") {
                return Ok(());
            }
            Err(format!("the lag never showed the waiting events: {text}"))
        })
        .await;
        let log = stack.work.stop_within(Duration::from_secs(10));
        assert!(log.contains("shutting down"), "{log}");
        stack.serve.stop();
    }

    #[actix_web::test]
    async fn a_thousand_commands_from_eight_clients_are_published_and_projected_exactly_once() {
        let broker = Broker::start().await;
        let stack = stack(&broker).await;
        stack.commands(8, 1_000).await;
        let total = stack.caught_up(180).await;
        assert!(total >= 1_000, "{total} events");
        let events = stack.events().await;
        let seen = read_topic(&broker.address(), keyledger_events::bus::EVENTS_TOPIC, events.len());
        assert_published_once_in_order(&seen, &events);
        stack.replay_check();
        let ready = call(&stack.serve.address, Method::GET, "/readyz", None, None, &[]).await;
        assert_eq!(ready.expect(200)["checks"]["kafka"], "ok");
        stack.work.stop();
        stack.serve.stop();
    }

    #[actix_web::test]
    async fn commands_succeed_while_the_broker_is_frozen_and_everything_arrives_after() {
        let broker = Broker::start().await;
        let stack = stack(&broker).await;
        stack.commands(2, 20).await;
        stack.caught_up(60).await;
        broker.pause();
        stack.commands(4, 80).await;
        let ready = call(&stack.serve.address, Method::GET, "/readyz", None, None, &[]).await;
        ready.expect_error(503, "unavailable");
        assert_eq!(ready.body["error"]["details"]["kafka"], json!(["unreachable"]));
        tokio::time::sleep(Duration::from_secs(2)).await;
        broker.resume();
        stack.caught_up(180).await;
        let events = stack.events().await;
        let seen = read_topic(&broker.address(), keyledger_events::bus::EVENTS_TOPIC, events.len());
        assert_published_once_in_order(&seen, &events);
        stack.replay_check();
        stack.work.stop();
        stack.serve.stop();
    }

    #[actix_web::test]
    async fn commands_succeed_while_the_broker_is_killed_and_everything_arrives_after_its_restart() {
        let mut broker = Broker::start_durable().await;
        let stack = stack(&broker).await;
        stack.commands(2, 20).await;
        stack.caught_up(60).await;
        broker.kill();
        stack.commands(4, 80).await;
        broker.restart().await;
        stack.caught_up(180).await;
        let events = stack.events().await;
        let seen = read_topic(&broker.address(), keyledger_events::bus::EVENTS_TOPIC, events.len());
        let published: std::collections::HashSet<&str> = seen.iter().map(|m| m.header("ce_id")).collect();
        assert_eq!(published.len(), events.len(), "nothing lost");
        stack.replay_check();
        stack.work.stop();
        stack.serve.stop();
    }
}

#[actix_web::test]
async fn one_relay_leads_and_another_takes_over_when_it_dies() {
    let broker = Broker::start().await;
    let mut app = spawn_app().await;
    let kafka = broker.settings(1);
    kafka.ensure_topics().await.unwrap();
    let stop = keyledger_events::shutdown::ShutdownSignal::new();
    let stopped = stop.subscribe();
    let first = actix_web::rt::spawn(Relay::new(app.pool.clone(), &kafka).unwrap().run(stopped.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = actix_web::rt::spawn(Relay::new(app.pool.clone(), &kafka).unwrap().run(stopped.clone()));
    traffic(&mut app, 3).await;
    let relayed = |pool: sqlx::PgPool| async move {
        let (events, behind): (i64, i64) = sqlx::query_as(
            "select (select count(*) from events),
                    (select count(*) from events where (tx_id, position) > (
                        coalesce((select tx_id from projector_checkpoints where name = 'relay'), 0),
                        coalesce((select position from projector_checkpoints where name = 'relay'), 0)))",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (events, behind)
    };
    eventually(Duration::from_secs(30), || async {
        match relayed(app.pool.clone()).await.1 {
            0 => Ok(()),
            behind => Err(format!("the leader did not publish ({behind} behind)")),
        }
    })
    .await;
    // The leader dies (its lock's connection goes with it); the other takes over.
    first.abort();
    let more = app
        .create_key(json!({"name": "after the failover", "type": "secret"}))
        .await;
    assert!(more["id"].is_string());
    eventually(Duration::from_secs(30), || async {
        match relayed(app.pool.clone()).await.1 {
            0 => Ok(()),
            behind => Err(format!("no relay took over ({behind} behind)")),
        }
    })
    .await;
    stop.fire();
    let _ = second.await;
    let events = all_events(&app).await;
    let seen = read_topic(&kafka.brokers, &kafka.topic, events.len());
    assert_published_once_in_order(&seen, &events);
}
