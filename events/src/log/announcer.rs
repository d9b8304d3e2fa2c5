//! Announcements after commit, sent in batches by a task of their own: a
//! command hands its [`Notice`] over and answers without another round
//! trip; the task sends whatever has gathered in one statement.

use std::sync::Mutex;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;

use super::store::{announce, Notice};
use crate::shutdown::Shutdown;

/// Most notices sent in one statement.
const BATCH: usize = 1_000;

/// How long the task waits, after the first notice, for more to send with
/// it. Under load creations commit in a group every millisecond or two, and
/// each statement that notifies is a transaction PostgreSQL writes to its
/// log and flushes, and a wake-up of every listening process: gathered for
/// this long, creations ran 17% faster in the probe than with one
/// statement per group. The workers these notices wake hear of an append
/// that much later.
const GATHER: Duration = Duration::from_millis(5);

/// The hand-over side, shared by every request; [`Announcer::run`] sends.
#[derive(Debug)]
pub struct Announcer {
    sender: mpsc::UnboundedSender<Vec<Notice>>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Vec<Notice>>>>,
}

impl Default for Announcer {
    fn default() -> Announcer {
        let (sender, receiver) = mpsc::unbounded_channel();
        Announcer {
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl Announcer {
    /// Queues `notice`, whose append has committed. Never waits.
    pub fn announce(&self, notice: Notice) {
        self.announce_all(vec![notice]);
    }

    /// Queues `notices`, whose appends have committed together: the task
    /// sends them in one statement (handed over one by one, the task would
    /// wake for the first and send the rest in another). Never waits.
    pub fn announce_all(&self, notices: Vec<Notice>) {
        // Only a stopped task refuses: the workers find the appends at
        // their next poll.
        let _ = self.sender.send(notices);
    }

    /// Sends what is queued, in batches, until `shutdown` — and then what is
    /// left. A batch that cannot be sent is dropped (the workers poll); the
    /// next one is tried all the same. Runs once per announcer.
    pub async fn run(&self, pool: PgPool, shutdown: Shutdown) {
        let Some(mut receiver) = self.receiver.lock().expect("announcer lock").take() else {
            return;
        };
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let first = tokio::select! {
                notices = receiver.recv() => notices,
                _ = shutdown.recv() => None,
            };
            let Some(first) = first else { break };
            batch.extend(first);
            tokio::select! {
                _ = tokio::time::sleep(GATHER) => {}
                _ = shutdown.recv() => {}
            }
            while batch.len() < BATCH {
                match receiver.try_recv() {
                    Ok(notices) => batch.extend(notices),
                    Err(_) => break,
                }
            }
            send(&pool, &mut batch).await;
        }
        while let Ok(notices) = receiver.try_recv() {
            batch.extend(notices);
            if batch.len() >= BATCH {
                send(&pool, &mut batch).await;
            }
        }
        send(&pool, &mut batch).await;
    }
}

async fn send(pool: &PgPool, batch: &mut Vec<Notice>) {
    for chunk in batch.chunks(BATCH) {
        if let Err(e) = announce(pool, chunk).await {
            tracing::warn!(error = %e, dropped = chunk.len(), "cannot announce appends; the workers find them at their next poll");
        }
    }
    batch.clear();
}
