//! The scheduler of `keyledger work`: each job runs on its own cron
//! expression (the `cron` crate, seconds first) under a PostgreSQL advisory
//! lock (`session_lock`), so of N worker replicas woken at the same tick one runs it and the
//! others skip. Every job is idempotent anyway (commands check the key's
//! state; alerts have dedupe keys), so a run that overlaps another after a
//! clock skew changes nothing.
//!
//! A job is one step, [`run_job`]`(pool, job, now)`, which tests call with a
//! chosen `now`.

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use keyledger_events::shutdown::Shutdown;
use sqlx::PgPool;

use super::job::{Job, JobError, Report};
use super::{expiry, recipient_confirmations, rotation, usage_alerts};
use crate::metrics::JobMetrics;
use crate::session_lock::SessionLock;

/// The cron schedule of every job.
#[derive(Debug, Clone)]
pub struct Schedules(pub Vec<(Job, cron::Schedule)>);

impl Schedules {
    /// The defaults, with `overrides` (job → expression) applied.
    pub fn new(overrides: &[(Job, Option<String>)]) -> Result<Schedules, String> {
        let mut schedules = Vec::new();
        for job in Job::ALL {
            let text = overrides
                .iter()
                .find(|(j, _)| *j == job)
                .and_then(|(_, t)| t.clone())
                .unwrap_or_else(|| job.default_schedule().to_owned());
            let schedule = cron::Schedule::from_str(&text).map_err(|e| {
                format!(
                    "the {} schedule '{text}' is not a cron expression ({e}); it has six fields, seconds first, e.g. '{}'",
                    job.name(),
                    job.default_schedule()
                )
            })?;
            schedules.push((job, schedule));
        }
        Ok(Schedules(schedules))
    }
}

/// Runs `job` as of `now` unless another worker is running it; `None` when
/// it was skipped for that reason.
pub async fn run_job(pool: &PgPool, job: Job, now: DateTime<Utc>) -> Result<Option<Report>, JobError> {
    // Held only while the job runs; the job's own transactions stay short.
    let Some(lock) = SessionLock::try_acquire(pool, job.lock_key()).await? else {
        return Ok(None);
    };
    let result = match job {
        Job::Expiry => expiry::run_once(pool, now).await,
        Job::Rotation => rotation::run_once(pool, now).await,
        Job::UsageAlerts => usage_alerts::run_once(pool, now).await,
        Job::UnusedKeys => usage_alerts::unused_keys(pool, now).await,
        Job::RecipientConfirmations => recipient_confirmations::request_missing(pool, now).await,
    };
    lock.release().await;
    result.map(Some)
}

/// [`run_job`], counted in `metrics` (`keyledger_job_runs_total`): what
/// the schedule runs.
pub async fn run_and_record(
    pool: &PgPool,
    job: Job,
    now: DateTime<Utc>,
    metrics: &JobMetrics,
) -> Result<Option<Report>, JobError> {
    let result = run_job(pool, job, now).await;
    metrics.record(job, now, &result);
    result
}

/// Runs every job on its schedule until shutdown, counting runs in `metrics`.
pub async fn run(pool: PgPool, schedules: Schedules, metrics: Arc<JobMetrics>, shutdown: Shutdown) {
    let mut tasks = tokio::task::JoinSet::new();
    for (job, schedule) in schedules.0 {
        tasks.spawn(run_on_schedule(
            pool.clone(),
            job,
            schedule,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    while let Some(ended) = tasks.join_next().await {
        if let Err(e) = ended {
            tracing::error!(error = %e, "a job's schedule stopped");
        }
    }
}

async fn run_on_schedule(
    pool: PgPool,
    job: Job,
    schedule: cron::Schedule,
    metrics: Arc<JobMetrics>,
    shutdown: Shutdown,
) {
    tracing::info!(job = job.name(), schedule = %schedule, "job scheduled");
    loop {
        let Some(next) = schedule.upcoming(Utc).next() else {
            tracing::warn!(job = job.name(), "the schedule has no further run");
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        let stop = tokio::select! {
            _ = shutdown.recv() => true,
            _ = tokio::time::sleep(wait) => false,
        };
        if stop {
            return;
        }
        match run_and_record(&pool, job, Utc::now(), &metrics).await {
            Ok(Some(report)) if report != Report::default() => {
                tracing::info!(
                    job = job.name(),
                    alerts = report.alerts,
                    events = report.events,
                    "job ran"
                )
            }
            Ok(_) => tracing::debug!(job = job.name(), "job ran (nothing to do, or another worker ran it)"),
            Err(e) => tracing::error!(job = job.name(), error = %e, "job failed; it runs again at its next time"),
        }
    }
}
