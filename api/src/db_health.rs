//! Whether PostgreSQL can be reached: which errors mean it cannot (they
//! answer `503 unavailable`, never 500), the process-wide "down since"
//! state, and the probe that sets and clears it.
//!
//! While the database is known to be down, requests that need it fail at
//! once instead of each waiting for a connection, `/readyz` says so, and
//! the key cache answers from what it confirmed before the outage (within
//! its grace). The probe tries a connection of its own every
//! [`PROBE_INTERVAL`]: the first success clears the state and wakes whoever
//! waits for the database to return (the usage flush).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::error::ApiError;
use keyledger_events::run_loop::{run_loop, NoWake, Progress, Schedule, Task, Wake};
use keyledger_events::shutdown::Shutdown;
use tokio::sync::{watch, Notify};

/// When the current outage began, if one is going on.
type DownSince = Option<(Instant, DateTime<Utc>)>;

/// How often the probe checks the database.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long one probe may take before the database counts as down (a
/// frozen server answers nothing at all).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether `e` means the database (or the connection to it) is unavailable,
/// as opposed to a query it refused: refused or broken connections, a
/// server shutting down or starting (57P01 admin_shutdown, 57P02
/// crash_shutdown, 57P03 cannot_connect_now), connection exceptions (class
/// 08), too many connections (53300), and no connection to be had from the
/// pool in time.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300")),
        _ => false,
    }
}

/// Whether `e` says the server cannot be reached or is going away (as
/// opposed to [`is_unavailable`]'s pool timeouts, which a busy pool causes too).
pub fn is_unreachable(e: &sqlx::Error) -> bool {
    !matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) && is_unavailable(e)
}

/// The shared "database down since" state of one process.
pub struct DatabaseHealth {
    down_since: watch::Sender<DownSince>,
    recovered: Notify,
}

impl Default for DatabaseHealth {
    fn default() -> Self {
        DatabaseHealth {
            down_since: watch::Sender::new(None),
            recovered: Notify::new(),
        }
    }
}

impl DatabaseHealth {
    pub fn is_down(&self) -> bool {
        self.down_since.borrow().is_some()
    }

    /// When the current outage began (`None`: the database is up).
    pub fn down_since(&self) -> Option<(Instant, DateTime<Utc>)> {
        *self.down_since.borrow()
    }

    /// Records that the database is unreachable (the first report of an
    /// outage sets its start).
    pub fn mark_down(&self) {
        let began = self.down_since.send_if_modified(|down| {
            if down.is_some() {
                return false;
            }
            *down = Some((Instant::now(), Utc::now()));
            true
        });
        if began {
            tracing::warn!("PostgreSQL is unreachable: requests that need it answer 503 until it is back");
        }
    }

    /// Records that the database answers again.
    pub fn mark_up(&self) {
        let mut was = None;
        self.down_since.send_if_modified(|down| {
            was = down.take();
            was.is_some()
        });
        if let Some((since, _)) = was {
            tracing::info!(
                outage_seconds = since.elapsed().as_secs_f64(),
                "PostgreSQL is reachable again"
            );
            self.recovered.notify_waiters();
        }
    }

    /// Marks the database down when `e` says it cannot be reached. A pool
    /// timeout does not: every connection may just be busy (the request
    /// still answers 503); the probe decides.
    pub fn observe(&self, e: &sqlx::Error) {
        if is_unreachable(e) {
            self.mark_down();
        }
    }

    /// Resolves as soon as the database is known to be down (at once if it
    /// is): a read, or a command still waiting for its connection, can give
    /// up then. (A command that has begun writing must not: it may commit.)
    pub async fn outage(&self) {
        let mut down = self.down_since.subscribe();
        let _ = down.wait_for(|since| since.is_some()).await;
    }

    /// `work` answered 503 at once while the database is known to be down,
    /// and as soon as it is found down while waiting.
    pub async fn read<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, ApiError> {
        tokio::select! {
            biased;
            _ = self.outage() => Err(ApiError::Unavailable),
            result = work => Ok(result?),
        }
    }

    /// Resolves the next time the database comes back after an outage.
    pub async fn recovered(&self) {
        self.recovered.notified().await
    }

    /// Probes the database once, on a new connection, within
    /// [`PROBE_TIMEOUT`], and records the result: whether it answered.
    pub async fn check(&self, options: &PgConnectOptions) -> bool {
        let mut conn = None;
        let result = tokio::time::timeout(PROBE_TIMEOUT, probe(&mut conn, options)).await;
        if let Some(conn) = conn {
            let _ = conn.close().await;
        }
        match result {
            Ok(Ok(())) => {
                self.mark_up();
                true
            }
            Ok(Err(e)) => {
                self.observe(&e);
                false
            }
            Err(_) => false,
        }
    }

    /// Checks the database every [`PROBE_INTERVAL`] on a connection of its
    /// own (not the pool's, which may be busy: a full pool is not an
    /// outage) until `shutdown`.
    pub async fn run_probe(&self, pool: PgPool, shutdown: Shutdown) {
        let mut probing = Probing {
            health: self,
            options: pool.connect_options().as_ref().clone(),
            conn: None,
            timeouts: 0,
        };
        run_loop(&shutdown, Schedule::every(PROBE_INTERVAL), NoWake, &mut probing).await;
        if let Some(conn) = probing.conn {
            let _ = conn.close().await;
        }
    }

    /// What ends a wait early: the database coming back (see
    /// [`DatabaseHealth::recovered`]).
    pub fn recoveries(&self) -> Recoveries<'_> {
        Recoveries(self)
    }
}

/// [`DatabaseHealth::recoveries`].
pub struct Recoveries<'a>(&'a DatabaseHealth);

impl Wake for Recoveries<'_> {
    fn woken(&mut self) -> impl std::future::Future<Output = ()> + Send {
        self.0.recovered()
    }
}

/// The probe's state between two steps of [`DatabaseHealth::run_probe`].
struct Probing<'a> {
    health: &'a DatabaseHealth,
    options: PgConnectOptions,
    conn: Option<PgConnection>,
    timeouts: u32,
}

impl Task for Probing<'_> {
    type Error = std::convert::Infallible;

    async fn step(&mut self) -> Result<Progress, Self::Error> {
        match tokio::time::timeout(PROBE_TIMEOUT, probe(&mut self.conn, &self.options)).await {
            Ok(Ok(())) => {
                self.timeouts = 0;
                self.health.mark_up();
            }
            Ok(Err(e)) if is_unavailable(&e) => {
                self.conn = None;
                self.timeouts = 0;
                self.health.mark_down();
            }
            Ok(Err(e)) => {
                self.conn = None;
                tracing::warn!(error = %e, "database probe failed");
            }
            // No answer at all: a frozen server, or a very busy machine.
            // Twice in a row counts as an outage.
            Err(_) => {
                self.conn = None;
                self.timeouts += 1;
                if self.timeouts >= 2 {
                    self.health.mark_down();
                }
            }
        }
        Ok(Progress::Idle)
    }

    fn failed(&mut self, error: Self::Error, _: u32) {
        match error {}
    }
}

async fn probe(conn: &mut Option<PgConnection>, options: &PgConnectOptions) -> Result<(), sqlx::Error> {
    if conn.is_none() {
        *conn = Some(PgConnection::connect_with(options).await?);
    }
    let conn = conn.as_mut().expect("connected above");
    sqlx::query("select 1").execute(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_connections_are_unavailability_and_refusals_are_not() {
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        ))));
        assert!(is_unavailable(&sqlx::Error::Protocol("unexpected end".into())));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        assert!(!is_unavailable(&sqlx::Error::ColumnNotFound("x".into())));
    }

    #[test]
    fn an_outage_keeps_its_first_start_until_it_ends() {
        let health = DatabaseHealth::default();
        assert!(!health.is_down());
        health.mark_down();
        let first = health.down_since().unwrap();
        health.mark_down();
        assert_eq!(health.down_since().unwrap().0, first.0);
        health.mark_up();
        assert!(health.down_since().is_none());
    }
}
