//! The workers' own metrics, on the `/metrics` of the process that runs
//! them (`dev` or `work`):
//!
//! - `keyledger_job_runs_total{job,outcome}` and
//!   `keyledger_job_last_success_timestamp_seconds{job}`: each scheduled
//!   run, recorded by the scheduler ([`JobMetrics`]). A run another replica
//!   held the lock for is not counted (that replica counts it).
//! - `keyledger_mail_queue{state}` and
//!   `keyledger_mail_queue_oldest_pending_seconds`: the alert outbox by
//!   state, sampled from the database every [`SAMPLE_EVERY`] ([`MailQueue`]),
//!   so every replica shows the one queue they share.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger_events::run_loop::{from_fn, run_loop, NoWake, Progress, Schedule};
use keyledger_events::shutdown::Shutdown;
use sqlx::PgPool;

use crate::jobs::{Job, JobError, Report};

/// How often the mail queue is sampled (a count of the alerts table).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// The states an alert row can be in (`alerts.status`).
pub const MAIL_STATES: [&str; 4] = ["pending", "sent", "failed", "unaddressed"];

/// Outcomes of a job run.
pub const OUTCOMES: [&str; 2] = ["success", "failure"];

/// Runs of each scheduled job, by outcome, and when each last succeeded.
#[derive(Debug, Default)]
pub struct JobMetrics {
    /// By job (its index in [`Job::ALL`]) and outcome.
    runs: [[AtomicU64; OUTCOMES.len()]; Job::ALL.len()],
    /// Unix milliseconds of the `now` of each job's latest successful run (0: none).
    last_success_ms: [AtomicI64; Job::ALL.len()],
}

fn index(job: Job) -> usize {
    Job::ALL
        .iter()
        .position(|j| *j == job)
        .expect("every job is in Job::ALL")
}

impl JobMetrics {
    /// Counts a run of `job` as of `now` that ended with `result`; a run
    /// skipped because another worker held its lock (`Ok(None)`) is not one.
    pub fn record(&self, job: Job, now: DateTime<Utc>, result: &Result<Option<Report>, JobError>) {
        let outcome = match result {
            Ok(None) => return,
            Ok(Some(_)) => 0,
            Err(_) => 1,
        };
        self.runs[index(job)][outcome].fetch_add(1, Ordering::Relaxed);
        if outcome == 0 {
            self.last_success_ms[index(job)].fetch_max(now.timestamp_millis(), Ordering::Relaxed);
        }
    }

    /// Runs of `job` that ended with `outcome` (`success` or `failure`).
    pub fn runs(&self, job: Job, outcome: &str) -> u64 {
        OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |o| self.runs[index(job)][o].load(Ordering::Relaxed))
    }

    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP keyledger_job_runs_total Scheduled job runs on this process, by job and outcome.\n\
             # TYPE keyledger_job_runs_total counter\n",
        );
        for job in Job::ALL {
            for (outcome, count) in OUTCOMES.iter().zip(&self.runs[index(job)]) {
                let _ = writeln!(
                    out,
                    "keyledger_job_runs_total{{job=\"{}\",outcome=\"{outcome}\"}} {}",
                    job.name(),
                    count.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP keyledger_job_last_success_timestamp_seconds When the job last ran successfully on this process (Unix time; 0: not yet).\n\
             # TYPE keyledger_job_last_success_timestamp_seconds gauge\n",
        );
        for job in Job::ALL {
            let ms = self.last_success_ms[index(job)].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "keyledger_job_last_success_timestamp_seconds{{job=\"{}\"}} {}",
                job.name(),
                ms as f64 / 1000.0
            );
        }
    }
}

/// One sample of the alert outbox.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MailQueueSample {
    /// Rows by state.
    pub states: BTreeMap<String, i64>,
    /// When the oldest pending alert was raised.
    pub oldest_pending: Option<DateTime<Utc>>,
}

/// The alert outbox by state, as last sampled.
#[derive(Debug, Default)]
pub struct MailQueue {
    latest: Mutex<Option<MailQueueSample>>,
}

impl MailQueue {
    /// Reads the outbox once and keeps the figures.
    pub async fn sample(&self, pool: &PgPool) -> Result<MailQueueSample, sqlx::Error> {
        let rows: Vec<(String, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
            "select status, count(*), min(created_at) filter (where status = 'pending') from alerts group by status",
        )
        .fetch_all(pool)
        .await?;
        let mut sample = MailQueueSample::default();
        for (state, count, oldest) in rows {
            sample.states.insert(state, count);
            sample.oldest_pending = sample.oldest_pending.or(oldest);
        }
        *self.latest.lock().expect("mail queue lock") = Some(sample.clone());
        Ok(sample)
    }

    /// Samples every [`SAMPLE_EVERY`] until `shutdown`.
    pub async fn run(&self, pool: PgPool, shutdown: Shutdown) {
        let sample = from_fn(|| async {
            if let Err(e) = self.sample(&pool).await {
                tracing::warn!(error = %e, "mail queue: cannot sample");
            }
            Progress::Idle
        });
        run_loop(&shutdown, Schedule::every(SAMPLE_EVERY), NoWake, sample).await;
    }

    /// Nothing until the first sample.
    pub fn render(&self, out: &mut String) {
        let Some(sample) = self.latest.lock().expect("mail queue lock").clone() else {
            return;
        };
        out.push_str(
            "# HELP keyledger_mail_queue Alert emails in the outbox, by state (pending: not sent yet; sent; failed: given up on; unaddressed: no confirmed recipient).\n\
             # TYPE keyledger_mail_queue gauge\n",
        );
        let others = sample.states.keys().filter(|s| !MAIL_STATES.contains(&s.as_str()));
        for state in MAIL_STATES.iter().copied().chain(others.map(String::as_str)) {
            let count = sample.states.get(state).copied().unwrap_or(0);
            let _ = writeln!(out, "keyledger_mail_queue{{state=\"{state}\"}} {count}");
        }
        let age = sample.oldest_pending.map_or(0.0, |oldest| {
            (Utc::now() - oldest).num_milliseconds().max(0) as f64 / 1000.0
        });
        let _ = write!(
            out,
            "# HELP keyledger_mail_queue_oldest_pending_seconds Age of the oldest alert email not sent yet (0: none).\n\
             # TYPE keyledger_mail_queue_oldest_pending_seconds gauge\n\
             keyledger_mail_queue_oldest_pending_seconds {age}\n"
        );
    }
}

/// Everything above, for one process.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    pub jobs: Arc<JobMetrics>,
    pub mail: Arc<MailQueue>,
}

impl WorkerMetrics {
    pub fn render(&self, out: &mut String) {
        self.jobs.render(out);
        self.mail.render(out);
    }
}
