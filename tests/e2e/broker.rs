//! A real Kafka-protocol broker (Tansu) per test, on its own port, which a
//! test can pause (SIGSTOP), kill and restart; and a reader of whole topics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyledger_events::bus::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub struct Broker {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    durable: bool,
}

fn tansu() -> String {
    std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".into())
}

impl Broker {
    /// In memory: fast, gone with the process.
    pub async fn start() -> Broker {
        Broker::launch(false).await
    }

    /// On SQLite in its own folder: survives `kill -9` and a restart.
    pub async fn start_durable() -> Broker {
        Broker::launch(true).await
    }

    async fn launch(durable: bool) -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("keyledger-tansu-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut broker = Broker {
            child: None,
            port,
            dir,
            durable,
        };
        broker.spawn().await;
        broker
    }

    async fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let storage = if self.durable {
            "sqlite://tansu.db".to_owned()
        } else {
            "memory://tansu/".to_owned()
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .unwrap();
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                &storage,
            ])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the tansu broker is installed (cargo install tansu --locked --features dynostore,libsql)");
        self.child = Some(child);
        let port = self.port;
        crate::support::eventually(Duration::from_secs(30), || async {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|_| format!("tansu did not start: {}", self.log()))
        })
        .await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tansu.log")).unwrap_or_default()
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Settings for this broker, with `partitions` for the events topic.
    pub fn settings(&self, partitions: i32) -> KafkaSettings {
        KafkaSettings {
            partitions,
            ..KafkaSettings::new(&self.address())
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }

    /// Freezes the broker (it keeps its connections but answers nothing).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and storage.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = Command::new("kill").args(["-CONT", &child.id().to_string()]).status();
        }
        self.kill();
    }
}

/// One message as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub headers: HashMap<String, String>,
    pub payload: serde_json::Value,
}

impl Seen {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

/// Every message of `topic` from the beginning, waiting until at least
/// `expected` arrived (or 60 s passed), then a little longer for extras.
pub fn read_topic(brokers: &str, topic: &str, expected: usize) -> Vec<Seen> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                seen.push(Seen {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    headers,
                    payload: serde_json::from_slice(message.payload().unwrap_or_default()).unwrap_or_default(),
                });
                quiet_since = Instant::now();
            }
            _ if seen.len() >= expected && quiet_since.elapsed() > Duration::from_secs(1) => break,
            _ => {}
        }
    }
    seen.sort_by_key(|m| (m.partition, m.offset));
    seen
}
