//! Stopping the background work: one [`ShutdownSignal`] per process (or
//! test) and a [`Shutdown`] in every task that has to stop with it.
//!
//! The signal is fired once and never taken back. Dropping the signal
//! counts as firing it, so a task never outlives the code that owns its
//! signal (a test that drops its harness stops its workers).

use tokio::sync::watch;

/// The sending side: fires the shutdown of every [`Shutdown`] it handed out.
#[derive(Debug)]
pub struct ShutdownSignal {
    sender: watch::Sender<bool>,
}

impl ShutdownSignal {
    pub fn new() -> ShutdownSignal {
        ShutdownSignal {
            sender: watch::Sender::new(false),
        }
    }

    /// A [`Shutdown`] for one more task; fired already if this signal was.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            receiver: self.sender.subscribe(),
        }
    }

    /// Tells every task to stop. Firing again changes nothing.
    pub fn fire(&self) {
        self.sender.send_replace(true);
    }

    pub fn is_fired(&self) -> bool {
        *self.sender.borrow()
    }
}

impl Default for ShutdownSignal {
    fn default() -> ShutdownSignal {
        ShutdownSignal::new()
    }
}

/// The receiving side, held by a background task: cheap to clone, and a
/// clone sees the same shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

impl Shutdown {
    /// Whether the signal was fired (or dropped).
    pub fn is_shutdown(&self) -> bool {
        *self.receiver.borrow() || self.receiver.has_changed().is_err()
    }

    /// Returns once the signal was fired (or dropped); at once if it was
    /// already. Cancel-safe: it may lose a `select!` and be called again.
    pub async fn recv(&self) {
        let mut receiver = self.receiver.clone();
        // An error means the signal is gone: a shutdown as well.
        let _ = receiver.wait_for(|fired| *fired).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_is_seen_by_every_subscriber_and_clone() {
        let signal = ShutdownSignal::new();
        let shutdown = signal.subscribe();
        let clone = shutdown.clone();
        assert!(!shutdown.is_shutdown() && !clone.is_shutdown());
        let waiting = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.recv().await }
        });
        signal.fire();
        waiting.await.unwrap();
        assert!(shutdown.is_shutdown() && clone.is_shutdown() && signal.is_fired());
        // Firing again, and waiting again, return at once.
        signal.fire();
        clone.recv().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_after_the_fact_is_shut_down_already() {
        let signal = ShutdownSignal::new();
        signal.fire();
        let late = signal.subscribe();
        assert!(late.is_shutdown());
        late.recv().await;
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_signal_is_a_shutdown() {
        let signal = ShutdownSignal::new();
        let shutdown = signal.subscribe();
        drop(signal);
        assert!(shutdown.is_shutdown());
        shutdown.recv().await;
    }

    #[tokio::test(start_paused = true)]
    async fn recv_waits_while_the_signal_is_not_fired() {
        let signal = ShutdownSignal::new();
        let shutdown = signal.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(3600), shutdown.recv()).await;
        assert!(waited.is_err(), "no shutdown yet");
        assert!(!shutdown.is_shutdown());
    }
}
