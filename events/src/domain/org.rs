//! The `Org` aggregate: one stream (`org-<id>`) per organization. It owns
//! the plan (and so the per-key rate limit), the rotation policy and where
//! alerts go.
//!
//! Alert recipients (docs/api.md, "Alert recipients"): addresses the operator
//! gives when creating the organization count as confirmed; an address set
//! with `ChangeSettings` gets one confirmation request (an email with a link,
//! sent by the mailer) and receives alerts only once `ConfirmRecipient`
//! records that its link was followed. A link works once, for 7 days, and
//! only while the address is listed; removing an address forgets its
//! confirmation. Adding an address back while its last link still works
//! requests nothing new, so a list edited back and forth mails nobody twice.
//! At most 20 requests in any 24 hours, however the list is edited.
//!
//! The leak action (`deactivate`, the default, or `notify`) says what a
//! report that one of the organization's keys leaked does besides the
//! record and the email (see the key aggregate's `ReportLeak`).
//!
//! Addresses set over the API before confirmations existed were never asked:
//! `RequestConfirmations` (made by `keyledger work`) asks them, within the
//! same daily cap. An address an older version stored that no longer parses
//! stays listed as [`ListedAddress::Unusable`] and is never asked.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::email::{deserialize_list, deserialize_optional_list};
pub use super::email::{EmailAddress, ListedAddress};
use super::{plan::Plan, Aggregate, DomainError, DomainEvent, Name, OrgId, ValidationDetails};

/// Longest rotation policy, in days (0 turns rotation off).
pub const MAX_ROTATION_DAYS: i64 = 3_650;
pub const DEFAULT_ROTATION_DAYS: u32 = 90;
/// The quota of alert recipients per organization (docs/api.md).
pub const MAX_ALERT_RECIPIENTS: usize = 10;
/// How long a confirmation link works.
pub const CONFIRMATION_VALID_DAYS: i64 = 7;
/// Confirmation emails one organization may cause in any 24 hours: a
/// cap on what an admin key can make keyledger send to strangers.
pub const MAX_CONFIRMATIONS_PER_DAY: usize = 20;

/// Thresholds of the alert emails; each field is bounded (see `RANGES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertSettings {
    /// Share of the per-minute limit used in one minute that warns.
    pub approaching_limit_percent: u32,
    /// Failed / total over the window that warns …
    pub error_rate_percent: u32,
    pub error_rate_window_minutes: u32,
    /// … once at least this many requests were made in the window.
    pub error_rate_min_requests: u32,
    /// Requests in the last hour at least this many times the trailing
    /// 7-day hourly average …
    pub unusual_activity_factor: u32,
    /// … and at least this many requests.
    pub unusual_activity_min_requests: u32,
    /// Active keys unused for this many days are listed in a digest.
    pub unused_days: u32,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            approaching_limit_percent: 80,
            error_rate_percent: 10,
            error_rate_window_minutes: 15,
            error_rate_min_requests: 50,
            unusual_activity_factor: 5,
            unusual_activity_min_requests: 1_000,
            unused_days: 30,
        }
    }
}

impl AlertSettings {
    /// Every setting's name and its allowed range (inclusive): the one
    /// statement of the limits, which `patched` enforces and forms show.
    pub const RANGES: [(&'static str, u32, u32); 7] = [
        ("approaching_limit_percent", 1, 100),
        ("error_rate_percent", 1, 100),
        ("error_rate_window_minutes", 1, 1_440),
        ("error_rate_min_requests", 1, 1_000_000),
        ("unusual_activity_factor", 2, 1_000),
        ("unusual_activity_min_requests", 1, 1_000_000_000),
        ("unused_days", 1, 365),
    ];

    /// The value of the setting `name` (one of [`Self::RANGES`]).
    pub fn get(&self, name: &str) -> Option<u32> {
        let mut copy = *self;
        copy.field(name).map(|v| *v)
    }

    fn field(&mut self, name: &str) -> Option<&mut u32> {
        Some(match name {
            "approaching_limit_percent" => &mut self.approaching_limit_percent,
            "error_rate_percent" => &mut self.error_rate_percent,
            "error_rate_window_minutes" => &mut self.error_rate_window_minutes,
            "error_rate_min_requests" => &mut self.error_rate_min_requests,
            "unusual_activity_factor" => &mut self.unusual_activity_factor,
            "unusual_activity_min_requests" => &mut self.unusual_activity_min_requests,
            "unused_days" => &mut self.unused_days,
            _ => return None,
        })
    }

    /// These settings with the fields of `patch` changed; every problem goes
    /// to `details` under `alert_settings.<field>`.
    pub fn patched(
        mut self,
        patch: &serde_json::Map<String, serde_json::Value>,
        details: &mut ValidationDetails,
    ) -> AlertSettings {
        for (name, value) in patch {
            let label = format!("alert_settings.{name}");
            let Some(&(_, min, max)) = Self::RANGES.iter().find(|(n, ..)| n == name) else {
                details.add(&label, "unknown setting");
                continue;
            };
            match value.as_u64().filter(|v| (u64::from(min)..=u64::from(max)).contains(v)) {
                Some(v) => *self.field(name).expect("listed in RANGES") = v as u32,
                None => details.add(&label, format!("must be a whole number from {min} to {max}")),
            }
        }
        self
    }
}

/// What a reported leak of one of the organization's keys does, besides
/// recording it and emailing the alert recipients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakAction {
    /// Deactivate the key at once (it can be activated again).
    #[default]
    Deactivate,
    /// Leave the key as it is: the owner decides.
    Notify,
}

impl LeakAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LeakAction::Deactivate => "deactivate",
            LeakAction::Notify => "notify",
        }
    }

    pub fn parse(text: &str) -> Option<LeakAction> {
        [LeakAction::Deactivate, LeakAction::Notify]
            .into_iter()
            .find(|a| a.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub id: OrgId,
    pub name: Name,
    pub plan: Plan,
    pub rate_limit_per_minute: u32,
    /// Every alert address, confirmed or not, in the order given.
    pub alert_emails: Vec<ListedAddress>,
    /// When each listed address was confirmed; absent: not yet.
    pub confirmed: BTreeMap<EmailAddress, DateTime<Utc>>,
    /// When the confirmation link of each address that has one unused was
    /// requested (kept after the address is removed, pruned after 7 days).
    pub confirmation_requests: BTreeMap<EmailAddress, DateTime<Utc>>,
    /// When each confirmation request of the last 24 hours was made (used
    /// links included): what the daily cap counts.
    pub recent_requests: Vec<DateTime<Utc>>,
    pub rotation_days: u32,
    pub alert_settings: AlertSettings,
    pub leak_action: LeakAction,
    pub created_at: DateTime<Utc>,
}

impl Org {
    /// The addresses alerts go to: those listed and confirmed.
    pub fn confirmed_alert_emails(&self) -> impl Iterator<Item = &EmailAddress> {
        self.alert_emails
            .iter()
            .filter_map(ListedAddress::valid)
            .filter(|e| self.confirmed.contains_key(*e))
    }

    /// Whether `email` is one of the listed addresses.
    pub fn lists(&self, email: &EmailAddress) -> bool {
        self.alert_emails.iter().any(|listed| listed == email)
    }
}

/// An organization to create, as given (the CLI's `org create`):
/// [`CreateOrgRequest::parse`] reports every problem at once.
pub struct CreateOrgRequest {
    pub org_id: OrgId,
    pub name: String,
    pub plan: String,
    pub rate_limit: Option<u32>,
    pub alert_emails: Vec<String>,
}

/// The command to create an organization, every field a domain value.
pub struct CreateOrg {
    pub org_id: OrgId,
    pub name: Name,
    pub plan: Plan,
    pub rate_limit_per_minute: u32,
    pub alert_emails: Vec<EmailAddress>,
}

impl CreateOrgRequest {
    pub fn parse(self) -> Result<CreateOrg, DomainError> {
        let mut details = ValidationDetails::default();
        let name = Name::parse(&self.name).map_err(|p| details.add("name", p)).ok();
        let plan = parse_plan(&self.plan, self.rate_limit, &mut details);
        let alert_emails = parse_emails(&self.alert_emails, &mut details);
        details.into_result()?;
        within_quota(&alert_emails)?;
        let (plan, rate_limit_per_minute) = plan.expect("validated");
        Ok(CreateOrg {
            org_id: self.org_id,
            name: name.expect("validated"),
            plan,
            rate_limit_per_minute,
            alert_emails,
        })
    }
}

/// A plan change, as given; [`ChangePlanRequest::parse`] makes the command.
pub struct ChangePlanRequest {
    pub plan: String,
    pub rate_limit: Option<u32>,
}

/// The command to change the plan: the plan and its limit, or what is wrong
/// with them — reported after the organization's own refusal (not found).
pub struct ChangePlan {
    pub plan: Result<(Plan, u32), ValidationDetails>,
}

impl ChangePlanRequest {
    pub fn parse(self) -> ChangePlan {
        let mut details = ValidationDetails::default();
        let plan = parse_plan(&self.plan, self.rate_limit, &mut details);
        ChangePlan {
            plan: plan.ok_or(details),
        }
    }
}

/// Settings as a user sent them; absent fields stay as they are.
/// [`ChangeSettingsRequest::parse`] makes the command.
#[derive(Default)]
pub struct ChangeSettingsRequest {
    pub alert_emails: Option<Vec<String>>,
    pub rotation_days: Option<i64>,
    pub alert_settings: Option<serde_json::Map<String, serde_json::Value>>,
    pub leak_action: Option<String>,
}

/// The command to change settings: each given field parsed at the edge into
/// its domain value or what is wrong with it, reported by `decide` after
/// the organization's own refusal (not found), all at once. The alert
/// thresholds are a patch of the current ones, so they are checked there,
/// against them.
#[derive(Default)]
pub struct ChangeSettings {
    /// The distinct addresses in order, or the problems of the bad ones.
    pub alert_emails: Option<Result<Vec<EmailAddress>, Vec<String>>>,
    pub rotation_days: Option<Result<u32, String>>,
    pub alert_settings: Option<serde_json::Map<String, serde_json::Value>>,
    pub leak_action: Option<Result<LeakAction, String>>,
}

impl ChangeSettingsRequest {
    pub fn parse(self) -> ChangeSettings {
        ChangeSettings {
            alert_emails: self.alert_emails.map(|raw| parse_email_list(&raw)),
            rotation_days: self.rotation_days.map(|days| {
                (0..=MAX_ROTATION_DAYS)
                    .contains(&days)
                    .then_some(days as u32)
                    .ok_or_else(|| format!("must be from 0 (off) to {MAX_ROTATION_DAYS}"))
            }),
            alert_settings: self.alert_settings,
            leak_action: self
                .leak_action
                .map(|text| LeakAction::parse(&text).ok_or_else(|| "must be deactivate or notify".to_owned())),
        }
    }
}

pub enum OrgCommand {
    Create(CreateOrg),
    ChangePlan(ChangePlan),
    ChangeSettings(ChangeSettings),
    /// A confirmation link was followed (its token checked by the caller:
    /// see `confirmation`).
    ConfirmRecipient {
        email: EmailAddress,
        requested_at: DateTime<Utc>,
    },
    /// Ask those of `emails` that are listed, unconfirmed and hold no link
    /// that still works to confirm — as many as the daily cap leaves room
    /// for; the others are left for a later request. The system's command
    /// for addresses set before confirmations existed.
    RequestConfirmations {
        emails: Vec<EmailAddress>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgCreated {
    pub org_id: OrgId,
    pub name: Name,
    pub plan: Plan,
    pub rate_limit_per_minute: u32,
    #[serde(deserialize_with = "deserialize_list")]
    pub alert_emails: Vec<ListedAddress>,
    pub rotation_days: u32,
    pub alert_settings: AlertSettings,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgPlanChanged {
    pub plan: Plan,
    pub rate_limit_per_minute: u32,
}

/// Only the settings that changed are present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgSettingsChanged {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_optional_list"
    )]
    pub alert_emails: Option<Vec<ListedAddress>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_settings: Option<AlertSettings>,
    /// Absent in events written before leak reports existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak_action: Option<LeakAction>,
}

/// An address is asked to confirm it wants the organization's alerts.
/// Appended when the address is set (or by `keyledger work` for one set
/// before confirmations existed), in the same transaction as the alerts
/// outbox row from which the mailer later sends the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecipientConfirmationRequested {
    pub email: EmailAddress,
    /// Part of the link's token: only the newest request's link works.
    pub requested_at: DateTime<Utc>,
}

/// The address followed its link: alerts go to it from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecipientConfirmed {
    pub email: EmailAddress,
    pub confirmed_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OrgEvent {
    #[serde(rename = "org.created")]
    Created(OrgCreated),
    #[serde(rename = "org.plan_changed")]
    PlanChanged(OrgPlanChanged),
    #[serde(rename = "org.settings_changed")]
    SettingsChanged(OrgSettingsChanged),
    #[serde(rename = "org.alert_recipient_confirmation_requested")]
    AlertRecipientConfirmationRequested(AlertRecipientConfirmationRequested),
    #[serde(rename = "org.alert_recipient_confirmed")]
    AlertRecipientConfirmed(AlertRecipientConfirmed),
}

impl DomainEvent for OrgEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrgEvent::Created(_) => "org.created",
            OrgEvent::PlanChanged(_) => "org.plan_changed",
            OrgEvent::SettingsChanged(_) => "org.settings_changed",
            OrgEvent::AlertRecipientConfirmationRequested(_) => "org.alert_recipient_confirmation_requested",
            OrgEvent::AlertRecipientConfirmed(_) => "org.alert_recipient_confirmed",
        }
    }
}

pub fn stream_id(id: OrgId) -> String {
    format!("org-{id}")
}

fn parse_plan(plan: &str, rate_limit: Option<u32>, details: &mut ValidationDetails) -> Option<(Plan, u32)> {
    let Some(parsed) = Plan::parse(plan) else {
        details.add(
            "plan",
            format!("unknown plan '{plan}': use free, basic, pro or enterprise"),
        );
        return None;
    };
    parsed
        .resolve_limit(rate_limit)
        .map(|limit| (parsed, limit))
        .map_err(|problem| details.add("rate_limit_per_minute", problem))
        .ok()
}

/// The distinct addresses of `raw`, in order; each bad one is noted.
fn parse_emails(raw: &[String], details: &mut ValidationDetails) -> Vec<EmailAddress> {
    parse_email_list(raw).unwrap_or_else(|problems| {
        for problem in problems {
            details.add("alert_emails", problem);
        }
        vec![]
    })
}

/// The distinct addresses of `raw`, in order, or the problem of each bad one.
fn parse_email_list(raw: &[String]) -> Result<Vec<EmailAddress>, Vec<String>> {
    let (mut emails, mut problems) = (Vec::with_capacity(raw.len()), vec![]);
    for text in raw {
        match EmailAddress::parse(text) {
            Ok(parsed) if !emails.contains(&parsed) => emails.push(parsed),
            Ok(_) => {}
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(emails)
    } else {
        Err(problems)
    }
}

/// Refuses a list over the recipients quota (after validation: a list
/// with bad addresses gets its details first).
fn within_quota(emails: &[EmailAddress]) -> Result<(), DomainError> {
    if emails.len() > MAX_ALERT_RECIPIENTS {
        return Err(DomainError::QuotaExceeded(format!(
            "An organization has at most {MAX_ALERT_RECIPIENTS} alert recipients (quota: alert recipients); \
             this list has {}. Remove some addresses, or use a mailing list address.",
            emails.len()
        )));
    }
    Ok(())
}

/// A request for each of `emails` neither confirmed nor holding a link
/// that still works.
fn pending_requests(org: &Org, emails: &[EmailAddress], now: DateTime<Utc>) -> Vec<OrgEvent> {
    let valid = Duration::days(CONFIRMATION_VALID_DAYS);
    emails
        .iter()
        .filter(|e| !org.confirmed.contains_key(*e))
        .filter(|e| match org.confirmation_requests.get(*e) {
            Some(at) => now >= *at + valid,
            None => true,
        })
        .map(|e| {
            OrgEvent::AlertRecipientConfirmationRequested(AlertRecipientConfirmationRequested {
                email: e.clone(),
                requested_at: now,
            })
        })
        .collect()
}

/// Confirmation requests made in the 24 hours before `now`.
fn requests_last_day(org: &Org, now: DateTime<Utc>) -> usize {
    org.recent_requests
        .iter()
        .filter(|at| **at > now - Duration::days(1))
        .count()
}

/// The confirmation requests a new alert list causes, or the daily cap's
/// refusal.
fn confirmation_requests(org: &Org, emails: &[EmailAddress], now: DateTime<Utc>) -> Result<Vec<OrgEvent>, DomainError> {
    let new = pending_requests(org, emails, now);
    let last_day = requests_last_day(org, now);
    if !new.is_empty() && last_day + new.len() > MAX_CONFIRMATIONS_PER_DAY {
        return Err(DomainError::QuotaExceeded(format!(
            "An organization may cause at most {MAX_CONFIRMATIONS_PER_DAY} confirmation emails a day \
             (quota: alert recipient confirmations); {last_day} went out in the last 24 hours. \
             Add these addresses tomorrow."
        )));
    }
    Ok(new)
}

fn confirm_recipient(
    org: &Org,
    email: EmailAddress,
    requested_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<OrgEvent>, DomainError> {
    if !org.lists(&email) {
        return Err(DomainError::Conflict(format!(
            "{email} is no longer an alert recipient of {}: this link does not apply any more.",
            org.name.as_str()
        )));
    }
    if org.confirmed.contains_key(&email) {
        // Followed twice (or after a newer link): nothing left to do.
        return Ok(vec![]);
    }
    // The token carries microseconds, as the log does.
    let newest = org.confirmation_requests.get(&email).map(DateTime::timestamp_micros);
    if newest != Some(requested_at.timestamp_micros()) {
        return Err(DomainError::Conflict(
            "This link was replaced by a newer one: use the link of the most recent confirmation email.".into(),
        ));
    }
    if now >= requested_at + Duration::days(CONFIRMATION_VALID_DAYS) {
        return Err(DomainError::Conflict(format!(
            "This link has expired (links work for {CONFIRMATION_VALID_DAYS} days). Ask an administrator of {} \
             to save the alert addresses again: a new link will be sent.",
            org.name.as_str()
        )));
    }
    Ok(vec![OrgEvent::AlertRecipientConfirmed(AlertRecipientConfirmed {
        email,
        confirmed_at: now,
    })])
}

impl Aggregate for Org {
    type Command = OrgCommand;
    type Event = OrgEvent;

    fn decide(state: Option<&Self>, command: OrgCommand, now: DateTime<Utc>) -> Result<Vec<OrgEvent>, DomainError> {
        let mut details = ValidationDetails::default();
        match command {
            OrgCommand::Create(c) => {
                if state.is_some() {
                    return Err(DomainError::Conflict("the organization already exists".into()));
                }
                Ok(vec![OrgEvent::Created(OrgCreated {
                    org_id: c.org_id,
                    name: c.name,
                    plan: c.plan,
                    rate_limit_per_minute: c.rate_limit_per_minute,
                    alert_emails: c.alert_emails.into_iter().map(ListedAddress::from).collect(),
                    rotation_days: DEFAULT_ROTATION_DAYS,
                    alert_settings: AlertSettings::default(),
                    created_at: now,
                })])
            }
            OrgCommand::ChangePlan(c) => {
                let org = state.ok_or(DomainError::NotFound)?;
                let (plan, rate_limit_per_minute) = c.plan.map_err(DomainError::Validation)?;
                if (plan, rate_limit_per_minute) == (org.plan, org.rate_limit_per_minute) {
                    return Ok(vec![]);
                }
                Ok(vec![OrgEvent::PlanChanged(OrgPlanChanged {
                    plan,
                    rate_limit_per_minute,
                })])
            }
            OrgCommand::ChangeSettings(c) => {
                let org = state.ok_or(DomainError::NotFound)?;
                let mut problems = |field: &str, list: Vec<String>| {
                    for problem in list {
                        details.add(field, problem);
                    }
                };
                let emails = c
                    .alert_emails
                    .and_then(|e| e.map_err(|p| problems("alert_emails", p)).ok());
                let rotation_days = c
                    .rotation_days
                    .and_then(|d| d.map_err(|p| problems("rotation_days", vec![p])).ok());
                let leak_action = c
                    .leak_action
                    .and_then(|a| a.map_err(|p| problems("leak_action", vec![p])).ok());
                let settings = c
                    .alert_settings
                    .as_ref()
                    .map(|patch| org.alert_settings.patched(patch, &mut details));
                details.into_result()?;
                let requests = match &emails {
                    Some(emails) => {
                        within_quota(emails)?;
                        confirmation_requests(org, emails, now)?
                    }
                    None => vec![],
                };
                let change = OrgSettingsChanged {
                    alert_emails: emails
                        .map(|e| e.into_iter().map(ListedAddress::from).collect::<Vec<_>>())
                        .filter(|e| *e != org.alert_emails),
                    rotation_days: rotation_days.filter(|d| *d != org.rotation_days),
                    alert_settings: settings.filter(|s| *s != org.alert_settings),
                    leak_action: leak_action.filter(|a| *a != org.leak_action),
                };
                let mut events = vec![];
                if change != OrgSettingsChanged::default() {
                    events.push(OrgEvent::SettingsChanged(change));
                }
                events.extend(requests);
                Ok(events)
            }
            OrgCommand::ConfirmRecipient { email, requested_at } => {
                let org = state.ok_or(DomainError::NotFound)?;
                confirm_recipient(org, email, requested_at, now)
            }
            OrgCommand::RequestConfirmations { mut emails } => {
                let org = state.ok_or(DomainError::NotFound)?;
                emails.retain(|e| org.lists(e));
                emails.sort();
                emails.dedup();
                let mut requests = pending_requests(org, &emails, now);
                requests.truncate(MAX_CONFIRMATIONS_PER_DAY.saturating_sub(requests_last_day(org, now)));
                Ok(requests)
            }
        }
    }

    fn evolve(state: Option<Self>, event: &OrgEvent) -> Option<Self> {
        match event {
            OrgEvent::Created(e) => Some(Org {
                id: e.org_id,
                name: e.name.clone(),
                plan: e.plan,
                rate_limit_per_minute: e.rate_limit_per_minute,
                alert_emails: e.alert_emails.clone(),
                // The operator's addresses: confirmed as they are given.
                confirmed: e
                    .alert_emails
                    .iter()
                    .filter_map(ListedAddress::valid)
                    .map(|a| (a.clone(), e.created_at))
                    .collect(),
                confirmation_requests: BTreeMap::new(),
                recent_requests: vec![],
                rotation_days: e.rotation_days,
                alert_settings: e.alert_settings,
                leak_action: LeakAction::default(),
                created_at: e.created_at,
            }),
            OrgEvent::PlanChanged(e) => state.map(|org| Org {
                plan: e.plan,
                rate_limit_per_minute: e.rate_limit_per_minute,
                ..org
            }),
            OrgEvent::SettingsChanged(e) => state.map(|mut org| {
                if let Some(emails) = &e.alert_emails {
                    // A removed address's confirmation goes with it.
                    org.confirmed
                        .retain(|address, _| emails.iter().any(|listed| listed == address));
                    org.alert_emails = emails.clone();
                }
                Org {
                    rotation_days: e.rotation_days.unwrap_or(org.rotation_days),
                    alert_settings: e.alert_settings.unwrap_or(org.alert_settings),
                    leak_action: e.leak_action.unwrap_or(org.leak_action),
                    ..org
                }
            }),
            OrgEvent::AlertRecipientConfirmationRequested(e) => state.map(|mut org| {
                let expired = e.requested_at - Duration::days(CONFIRMATION_VALID_DAYS);
                org.confirmation_requests.retain(|_, at| *at > expired);
                org.confirmation_requests.insert(e.email.clone(), e.requested_at);
                org.recent_requests
                    .retain(|at| *at > e.requested_at - Duration::days(1));
                org.recent_requests.push(e.requested_at);
                org
            }),
            OrgEvent::AlertRecipientConfirmed(e) => state.map(|mut org| {
                org.confirmation_requests.remove(&e.email);
                org.confirmed.insert(e.email.clone(), e.confirmed_at);
                org
            }),
        }
    }
}

#[cfg(test)]
mod tests;
