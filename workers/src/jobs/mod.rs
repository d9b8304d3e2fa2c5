//! The scheduled jobs of `keyledger work` and the scheduler that runs them:
//! [`job`] says what a job is, [`scheduler`] runs each on its cron schedule
//! under an advisory lock, and the jobs themselves — [`expiry`], [`rotation`],
//! [`usage_alerts`] (and the unused-keys digest), [`recipient_confirmations`]
//! — raise alerts (`crate::alerts`) and append events. Jobs depend on
//! `crate::alerts`, never the other way round.

pub mod expiry;
pub mod job;
pub mod recipient_confirmations;
pub mod rotation;
pub mod scheduler;
pub mod usage_alerts;

pub use job::{Job, JobError, Report};
