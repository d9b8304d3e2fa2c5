//! The `orgs` read model, with its `alert_recipients`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

use crate::domain::{org::AlertSettings, EmailAddress, LeakAction, ListedAddress, Org, OrgId, Plan};

/// An alert address of an organization and when it confirmed (if it did).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct RecipientRow {
    pub email: ListedAddress,
    pub confirmed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrgRow {
    pub id: OrgId,
    pub name: String,
    pub plan: Plan,
    pub rate_limit_per_minute: i32,
    /// Every alert address, confirmed or not.
    pub alert_emails: Vec<String>,
    /// The same addresses with their confirmation, in list order.
    #[sqlx(json)]
    pub alert_recipients: Vec<RecipientRow>,
    pub rotation_days: i32,
    pub alert_settings: Value,
    /// What a reported leak of a key does.
    pub leak_action: LeakAction,
    pub created_at: DateTime<Utc>,
    pub version: i64,
}

impl OrgRow {
    /// The row the projection holds for this aggregate state at `version`.
    pub fn from_aggregate(org: &Org, version: i64) -> OrgRow {
        OrgRow {
            id: org.id,
            name: org.name.as_str().to_owned(),
            plan: org.plan,
            rate_limit_per_minute: org.rate_limit_per_minute as i32,
            alert_emails: org.alert_emails.iter().map(|a| a.as_str().to_owned()).collect(),
            alert_recipients: org
                .alert_emails
                .iter()
                .map(|listed| RecipientRow {
                    confirmed_at: listed.valid().and_then(|e| org.confirmed.get(e).copied()),
                    email: listed.clone(),
                })
                .collect(),
            rotation_days: org.rotation_days as i32,
            alert_settings: serde_json::to_value(org.alert_settings).expect("settings serialize"),
            leak_action: org.leak_action,
            created_at: org.created_at,
            version,
        }
    }

    /// The addresses alerts go to: the confirmed ones.
    pub fn confirmed_alert_emails(&self) -> Vec<EmailAddress> {
        self.alert_recipients
            .iter()
            .filter(|r| r.confirmed_at.is_some())
            .filter_map(|r| r.email.valid().cloned())
            .collect()
    }

    pub fn alert_settings(&self) -> AlertSettings {
        serde_json::from_value(self.alert_settings.clone()).unwrap_or_default()
    }
}

pub async fn org_by_id<'c>(db: impl PgExecutor<'c>, org_id: OrgId) -> Result<Option<OrgRow>, sqlx::Error> {
    sqlx::query_as(
        "select id, name, plan, rate_limit_per_minute, alert_emails, rotation_days, alert_settings, leak_action,
                created_at, version,
                coalesce((select jsonb_agg(jsonb_build_object('email', r.email, 'confirmed_at', r.confirmed_at)
                                           order by r.position)
                          from alert_recipients r where r.org_id = o.id), '[]') as alert_recipients
         from orgs o where id = $1",
    )
    .bind(org_id)
    .fetch_optional(db)
    .await
}
