//! Kafka, the engine that carries the log to other processes: topic names,
//! client configuration, and the mapping between a stored event and a
//! message — CloudEvents 1.0 attributes as headers (binary content mode),
//! the envelope as JSON, the stream id as the message key (so each key's
//! events stay in order on one partition).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::ClientConfig;

use crate::log::StoredEvent;

pub const EVENTS_TOPIC: &str = "keyledger.events";
pub const DLQ_TOPIC: &str = "keyledger.events.dlq";
pub const CONSUMER_GROUP: &str = "keyledger-projector";
/// `ce_source` of every event this deployment publishes.
pub const CE_SOURCE: &str = "/keyledger";

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list (`KAFKA_BROKERS`).
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    pub group_id: String,
    /// Partitions of the topics created at start-up.
    pub partitions: i32,
}

impl KafkaSettings {
    pub fn new(brokers: &str) -> KafkaSettings {
        KafkaSettings {
            brokers: brokers.to_owned(),
            topic: EVENTS_TOPIC.into(),
            dlq_topic: DLQ_TOPIC.into(),
            group_id: CONSUMER_GROUP.into(),
            partitions: 3,
        }
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "keyledger")
            .set("log_level", "4");
        config
    }

    /// The outbox relay's producer: idempotent, `acks=all`, so a retried
    /// send never duplicates on the broker and "delivered" means persisted.
    pub fn producer(&self) -> Result<FutureProducer, KafkaError> {
        self.base()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "600000")
            .create()
    }

    /// A consumer of the group; offsets are stored by the application only
    /// after the database transaction that applied a message commits.
    ///
    /// The session timeout is Kafka's smallest default (6 s): a worker
    /// killed without leaving the group holds its partitions that long
    /// before the others (or its restarted self) take them over.
    pub fn consumer(&self) -> Result<StreamConsumer, KafkaError> {
        self.base()
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "1000")
            .create()
    }

    /// Creates the events and dead-letter topics when they are missing
    /// (brokers such as Tansu do not auto-create them).
    pub async fn ensure_topics(&self) -> Result<(), KafkaError> {
        let admin: AdminClient<DefaultClientContext> = self.base().create()?;
        let topics = [
            NewTopic::new(&self.topic, self.partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&self.dlq_topic, 1, TopicReplication::Fixed(1)),
        ];
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&topics, &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(KafkaError::AdminOp(code)).inspect_err(|_| {
                        tracing::error!(%topic, ?code, "cannot create topic");
                    })
                }
            }
        }
        Ok(())
    }

    /// Whether a broker answers a metadata request within `timeout`.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        let Ok(producer): Result<FutureProducer, _> = self.base().create() else {
            return false;
        };
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout).is_ok())
            .await
            .unwrap_or(false)
    }
}

/// CloudEvents 1.0 attributes (binary content mode of the Kafka binding).
pub fn headers(event: &StoredEvent) -> OwnedHeaders {
    let id = event.event_id.to_string();
    let time = event.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    OwnedHeaders::new()
        .insert(Header {
            key: "ce_specversion",
            value: Some("1.0"),
        })
        .insert(Header {
            key: "ce_id",
            value: Some(&id),
        })
        .insert(Header {
            key: "ce_type",
            value: Some(&event.event_type),
        })
        .insert(Header {
            key: "ce_source",
            value: Some(CE_SOURCE),
        })
        .insert(Header {
            key: "ce_time",
            value: Some(&time),
        })
        .insert(Header {
            key: "ce_subject",
            value: Some(&event.stream_id),
        })
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        })
}

/// The envelope as the message value.
pub fn payload(event: &StoredEvent) -> Vec<u8> {
    serde_json::to_vec(event).expect("events serialize")
}

/// The envelope back from a message value.
pub fn decode(payload: Option<&[u8]>) -> Result<StoredEvent, String> {
    let bytes = payload.ok_or("the message has no value")?;
    serde_json::from_slice(bytes).map_err(|e| format!("the message is not an event envelope: {e}"))
}
