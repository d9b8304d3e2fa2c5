//! The read models (`keys`, `orgs` with their `alert_recipients`,
//! `usage_rollups`): how events are applied to them and how the API and
//! CLI query them.
//!
//! `apply` is the one projection function. Commands call it inside their
//! append transaction (so a command's answer, the key list and verification
//! see the change at once: a regenerated-away secret fails immediately), and
//! the projector calls it again while tailing the log (which is what rebuilds
//! the tables from nothing). Each row keeps the version of the last event
//! applied, so applying an event twice changes nothing.

mod alerts;
mod batch;
mod columns;
mod keys;
mod orgs;
mod projection;
mod usage;

pub use alerts::{alerts_of_org, AlertRow};
pub use batch::{
    apply_batch, apply_batch_into, create_usage_staging, insert_created_keys, roll_up_usage_staging, BatchFailure,
    CreatedKeyColumns, UsageSink,
};
pub use keys::{key_by_hash, key_by_id, key_for_verification, key_names, last_used_at, list_keys, KeyFilter, KeyRow};
pub use orgs::{org_by_id, OrgRow, RecipientRow};
pub use projection::{apply, ProjectionError, ALERT_RAISED};
pub use usage::{usage_series, UsagePoint};
