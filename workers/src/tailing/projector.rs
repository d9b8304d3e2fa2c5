//! The projector: tails the event log in commit-safe order and applies each
//! event to the read models, recording its checkpoint in the same
//! transaction — so a crash or a re-run never applies an event twice, and a
//! re-run from the start over existing read models changes nothing.

use std::time::Duration;

use keyledger_events::log::{self, LogPosition};
use keyledger_events::read_model::{self, ProjectionError};
use keyledger_events::run_loop::{run_loop, Progress, Schedule, Task};
use keyledger_events::shutdown::Shutdown;
use sqlx::PgPool;

use crate::wake;

/// How many events one step applies at most.
const BATCH: i64 = 500;
/// How long the loop waits for a notification before looking anyway.
const POLL: Duration = Duration::from_millis(500);
/// Its waits: `POLL` when caught up, doubling per failure up to 32 × `POLL`.
const SCHEDULE: Schedule = Schedule::every(POLL).doubling_up_to(5);

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error("event at position {position} cannot be projected: {source}")]
    Event {
        position: i64,
        #[source]
        source: ProjectionError,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(Clone)]
pub struct Projector {
    pool: PgPool,
    name: String,
}

impl Projector {
    /// The projector that keeps `keys` and `orgs`.
    pub fn read_models(pool: PgPool) -> Projector {
        Projector {
            pool,
            name: "read_models".into(),
        }
    }

    pub async fn checkpoint(&self) -> Result<LogPosition, sqlx::Error> {
        log::checkpoint(&self.pool, &self.name).await
    }

    /// One step: applies the next batch of committed events; returns how
    /// many were applied (0: caught up).
    pub async fn run_once(&self) -> Result<usize, ProjectorError> {
        let mut tx = self.pool.begin().await?;
        // Serializes concurrent runs of the same projector (several workers).
        sqlx::query("select pg_advisory_xact_lock(hashtext('projector:' || $1))")
            .bind(&self.name)
            .execute(&mut *tx)
            .await?;
        let after = log::checkpoint(&mut *tx, &self.name).await?;
        let events = log::read_after(&mut *tx, after, BATCH).await?;
        let Some(last) = events.last().map(|e| e.log_position()) else {
            return Ok(0);
        };
        for event in &events {
            read_model::apply(&mut tx, event)
                .await
                .map_err(|source| ProjectorError::Event {
                    position: event.position,
                    source,
                })?;
        }
        log::save_checkpoint(&mut *tx, &self.name, last).await?;
        tx.commit().await?;
        Ok(events.len())
    }

    /// Steps until `shutdown`: right away while there is work, on each
    /// append's notification, and every `POLL` regardless (a notification
    /// can be lost while the listener reconnects).
    pub async fn run(self, shutdown: Shutdown) {
        let listener = wake::listen(&self.pool).await;
        run_loop(&shutdown, SCHEDULE, listener, &self).await;
        tracing::info!(projector = %self.name, "stopped");
    }
}

impl Task for &Projector {
    type Error = ProjectorError;

    async fn step(&mut self) -> Result<Progress, ProjectorError> {
        Ok(match self.run_once().await? {
            0 => Progress::Idle,
            _ => Progress::Worked,
        })
    }

    fn failed(&mut self, error: ProjectorError, _: u32) {
        tracing::error!(projector = %self.name, error = %error, "projection step failed; retrying");
    }
}
