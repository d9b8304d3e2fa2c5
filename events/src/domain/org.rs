//! The `Org` aggregate: one stream (`org-<id>`) per organization. It owns
//! the plan (and so the per-key rate limit), the rotation policy and where
//! alerts go.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{plan::Plan, Aggregate, DomainError, DomainEvent, Name, OrgId, ValidationDetails};

/// Longest rotation policy, in days (0 turns rotation off).
pub const MAX_ROTATION_DAYS: i64 = 3_650;
pub const DEFAULT_ROTATION_DAYS: u32 = 90;
pub const MAX_ALERT_EMAILS: usize = 20;

/// An address alerts can be sent to: one `@`, a dotted domain, no spaces or
/// control characters, at most 254 characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(text: &str) -> Result<EmailAddress, String> {
        let bad = || format!("'{text}' is not an email address");
        if text.len() > 254 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = text.split_once('@').ok_or_else(bad)?;
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && !domain.contains('@');
        if local.is_empty() || !domain_ok {
            return Err(bad());
        }
        Ok(EmailAddress(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    pub id: OrgId,
    pub name: Name,
    pub plan: Plan,
    pub rate_limit_per_minute: u32,
    pub alert_emails: Vec<EmailAddress>,
    pub rotation_days: u32,
    pub alert_settings: AlertSettings,
    pub created_at: DateTime<Utc>,
}

pub struct CreateOrg {
    pub org_id: OrgId,
    pub name: String,
    pub plan: String,
    pub rate_limit: Option<u32>,
    pub alert_emails: Vec<String>,
}

/// Raw settings as a user sent them; absent fields stay as they are.
#[derive(Default)]
pub struct ChangeSettings {
    pub alert_emails: Option<Vec<String>>,
    pub rotation_days: Option<i64>,
    pub alert_settings: Option<serde_json::Map<String, serde_json::Value>>,
}

pub enum OrgCommand {
    Create(CreateOrg),
    ChangePlan { plan: String, rate_limit: Option<u32> },
    ChangeSettings(ChangeSettings),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgCreated {
    pub org_id: OrgId,
    pub name: Name,
    pub plan: Plan,
    pub rate_limit_per_minute: u32,
    pub alert_emails: Vec<EmailAddress>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_emails: Option<Vec<EmailAddress>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_settings: Option<AlertSettings>,
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
}

impl DomainEvent for OrgEvent {
    fn event_type(&self) -> &'static str {
        match self {
            OrgEvent::Created(_) => "org.created",
            OrgEvent::PlanChanged(_) => "org.plan_changed",
            OrgEvent::SettingsChanged(_) => "org.settings_changed",
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

fn parse_emails(raw: &[String], details: &mut ValidationDetails) -> Vec<EmailAddress> {
    if raw.len() > MAX_ALERT_EMAILS {
        details.add("alert_emails", format!("at most {MAX_ALERT_EMAILS} addresses"));
    }
    let mut emails: Vec<EmailAddress> = Vec::with_capacity(raw.len());
    for parsed in raw
        .iter()
        .filter_map(|e| EmailAddress::parse(e).map_err(|p| details.add("alert_emails", p)).ok())
    {
        if !emails.contains(&parsed) {
            emails.push(parsed);
        }
    }
    emails
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
                let name = Name::parse(&c.name).map_err(|p| details.add("name", p)).ok();
                let plan = parse_plan(&c.plan, c.rate_limit, &mut details);
                let alert_emails = parse_emails(&c.alert_emails, &mut details);
                details.into_result()?;
                let (plan, rate_limit_per_minute) = plan.expect("validated");
                Ok(vec![OrgEvent::Created(OrgCreated {
                    org_id: c.org_id,
                    name: name.expect("validated"),
                    plan,
                    rate_limit_per_minute,
                    alert_emails,
                    rotation_days: DEFAULT_ROTATION_DAYS,
                    alert_settings: AlertSettings::default(),
                    created_at: now,
                })])
            }
            OrgCommand::ChangePlan { plan, rate_limit } => {
                let org = state.ok_or(DomainError::NotFound)?;
                let plan = parse_plan(&plan, rate_limit, &mut details);
                details.into_result()?;
                let (plan, rate_limit_per_minute) = plan.expect("validated");
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
                let emails = c.alert_emails.as_deref().map(|raw| parse_emails(raw, &mut details));
                let rotation_days = c.rotation_days.and_then(|days| {
                    if (0..=MAX_ROTATION_DAYS).contains(&days) {
                        Some(days as u32)
                    } else {
                        details.add("rotation_days", format!("must be from 0 (off) to {MAX_ROTATION_DAYS}"));
                        None
                    }
                });
                let settings = c
                    .alert_settings
                    .as_ref()
                    .map(|patch| org.alert_settings.patched(patch, &mut details));
                details.into_result()?;
                let change = OrgSettingsChanged {
                    alert_emails: emails.filter(|e| *e != org.alert_emails),
                    rotation_days: rotation_days.filter(|d| *d != org.rotation_days),
                    alert_settings: settings.filter(|s| *s != org.alert_settings),
                };
                Ok(if change == OrgSettingsChanged::default() {
                    vec![]
                } else {
                    vec![OrgEvent::SettingsChanged(change)]
                })
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
                rotation_days: e.rotation_days,
                alert_settings: e.alert_settings,
                created_at: e.created_at,
            }),
            OrgEvent::PlanChanged(e) => state.map(|org| Org {
                plan: e.plan,
                rate_limit_per_minute: e.rate_limit_per_minute,
                ..org
            }),
            OrgEvent::SettingsChanged(e) => state.map(|org| Org {
                alert_emails: e.alert_emails.clone().unwrap_or(org.alert_emails),
                rotation_days: e.rotation_days.unwrap_or(org.rotation_days),
                alert_settings: e.alert_settings.unwrap_or(org.alert_settings),
                ..org
            }),
        }
    }
}

#[cfg(test)]
mod tests;
