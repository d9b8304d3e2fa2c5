//! What a scheduled job is — [`Job`], what a run reports ([`Report`]) and how it
//! fails ([`JobError`]) — and what the jobs share (the metadata of the events
//! they append, organizations looked up once per run). The scheduler and the
//! jobs both depend on this module and not on each other's types.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use keyledger_events::domain::OrgId;
use keyledger_events::handler::HandlerError;
use keyledger_events::log::EventMeta;
use keyledger_events::read_model::{self, OrgRow};
use sqlx::PgPool;

use crate::session_lock::keys;

/// The scheduled jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    /// Records `key.expired` for keys past `expires_at`; warns 7 days ahead.
    Expiry,
    /// Rotation reminders (and `key.rotation_due`).
    Rotation,
    /// Approaching rate limit, error rate, unusual activity.
    UsageAlerts,
    /// The weekly digest of keys nobody used for a while.
    UnusedKeys,
    /// Asks alert addresses set before confirmations existed to confirm
    /// (`recipient_confirmations::request_missing`).
    RecipientConfirmations,
}

impl Job {
    pub const ALL: [Job; 5] = [
        Job::Expiry,
        Job::Rotation,
        Job::UsageAlerts,
        Job::UnusedKeys,
        Job::RecipientConfirmations,
    ];

    /// The advisory lock a run of this job holds.
    pub fn lock_key(self) -> i64 {
        keys::JOBS + self as i64
    }

    pub fn name(self) -> &'static str {
        match self {
            Job::Expiry => "expiry",
            Job::Rotation => "rotation",
            Job::UsageAlerts => "usage_alerts",
            Job::UnusedKeys => "unused_keys",
            Job::RecipientConfirmations => "recipient_confirmations",
        }
    }

    /// The default cron expression (seconds, minutes, hours, day of month,
    /// month, day of week). Expiry runs every 15 s so a key is recorded
    /// expired well within a minute; usage alerts run each minute, shortly
    /// after the usage of the minute before has been flushed. Recipient
    /// confirmations run every 10 minutes (after an upgrade there is work
    /// once, then none).
    pub fn default_schedule(self) -> &'static str {
        match self {
            Job::Expiry => "*/15 * * * * *",
            Job::Rotation => "0 */10 * * * *",
            Job::UsageAlerts => "20 * * * * *",
            Job::UnusedKeys => "0 0 * * * *",
            Job::RecipientConfirmations => "30 */10 * * * *",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Command(#[from] HandlerError),
}

/// What a run did: how many alerts it raised and events it appended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub alerts: usize,
    pub events: usize,
}

impl Report {
    /// One alert if `raised`, else nothing.
    pub fn raised(raised: bool) -> Report {
        Report {
            alerts: usize::from(raised),
            events: 0,
        }
    }
}

impl std::ops::AddAssign for Report {
    fn add_assign(&mut self, other: Report) {
        self.alerts += other.alerts;
        self.events += other.events;
    }
}

/// The metadata of the events a job appends.
pub(crate) fn job_meta(job: Job, now: DateTime<Utc>) -> EventMeta {
    EventMeta {
        actor: format!("system:{}", job.name()),
        request_id: None,
        occurred_at: now,
    }
}

/// Organizations looked up once per run.
#[derive(Default)]
pub(crate) struct Orgs(HashMap<OrgId, Option<OrgRow>>);

impl Orgs {
    pub(crate) async fn get(&mut self, pool: &PgPool, org_id: OrgId) -> Result<Option<&OrgRow>, sqlx::Error> {
        if let std::collections::hash_map::Entry::Vacant(entry) = self.0.entry(org_id) {
            entry.insert(read_model::org_by_id(pool, org_id).await?);
        }
        Ok(self.0[&org_id].as_ref())
    }
}
