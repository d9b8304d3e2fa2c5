//! What wakes the workers that tail a table (the projector and relay the
//! log, the webhooks worker its enqueueing, the mailer the alerts outbox)
//! before their poll interval is up: a PostgreSQL notification. Their loop
//! is `keyledger_events::run_loop`; this is its [`Wake`].

use keyledger_events::log::NOTIFY_CHANNEL;
use keyledger_events::run_loop::Wake;
use sqlx::postgres::PgListener;
use sqlx::PgPool;

/// A listener on a notification channel, or none if it could not be had
/// (the worker then only polls).
pub struct Notifications(Option<PgListener>);

impl Notifications {
    pub fn is_listening(&self) -> bool {
        self.0.is_some()
    }
}

impl Wake for Notifications {
    /// A notification (or the listener's error, which it recovers from by
    /// reconnecting: a notification may have been missed meanwhile).
    fn woken(&mut self) -> impl std::future::Future<Output = ()> + Send {
        let listener = self.0.as_mut();
        async move {
            match listener {
                Some(l) => {
                    let _ = l.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// A listener on the appends' channel.
pub async fn listen(pool: &PgPool) -> Notifications {
    listen_on(pool, NOTIFY_CHANNEL).await
}

/// A listener on `channel`.
pub async fn listen_on(pool: &PgPool, channel: &str) -> Notifications {
    let listener = async {
        let mut listener = PgListener::connect_with(pool).await.ok()?;
        listener.listen(channel).await.ok()?;
        Some(listener)
    };
    Notifications(listener.await)
}
