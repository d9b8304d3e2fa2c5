//! How the workers that tail a table wait for work (the projector and relay
//! the log, the mailer the alerts outbox): a notification, the poll
//! interval (or a backoff after a failure), or shutdown — whichever comes
//! first.

use std::time::Duration;

use keyledger_events::log::NOTIFY_CHANNEL;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

/// A listener on the appends' channel, or `None` if it cannot be had (the
/// worker then only polls).
pub async fn listen(pool: &PgPool) -> Option<PgListener> {
    listen_on(pool, NOTIFY_CHANNEL).await
}

/// A listener on `channel`, or `None` if it cannot be had.
pub async fn listen_on(pool: &PgPool, channel: &str) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(channel).await.ok()?;
    Some(listener)
}

/// Waits up to `wait`, or until a notification when `notified` is true, or
/// until shutdown. Returns false on shutdown.
pub async fn wait(
    listener: &mut Option<PgListener>,
    shutdown: &mut watch::Receiver<bool>,
    wait: Duration,
    notified: bool,
) -> bool {
    tokio::select! {
        changed = shutdown.changed() => changed.is_ok() && !*shutdown.borrow(),
        _ = tokio::time::sleep(wait) => true,
        _ = async {
            match listener.as_mut() {
                Some(l) => { let _ = l.recv().await; }
                None => std::future::pending::<()>().await,
            }
        }, if notified => true,
    }
}
