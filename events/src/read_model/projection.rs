//! How one stored event changes the read models: [`apply`], idempotent.

use sqlx::PgConnection;

use crate::domain::{
    key::{KeyEvent, LeakedSecret},
    org::OrgEvent,
    AllowedIps, KeyStatus,
};
use crate::log::{DecodeError, StoredEvent};

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("unknown event type '{0}'")]
    UnknownType(String),
    #[error("malformed stream id '{0}'")]
    StreamId(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The type of the event appended with each alert raised (stream `alert-<id>`).
pub const ALERT_RAISED: &str = "alert.raised";

/// Applies one stored event to the read models (idempotent).
pub async fn apply(db: &mut PgConnection, event: &StoredEvent) -> Result<(), ProjectionError> {
    let (kind, id) = event
        .stream_id
        .split_once('-')
        .ok_or_else(|| ProjectionError::StreamId(event.stream_id.clone()))?;
    match kind {
        "key" if event.event_type.starts_with("key.") => apply_key(db, id, event, event.decode()?).await,
        "org" if event.event_type.starts_with("org.") => apply_org(db, id, event, event.decode()?).await,
        // The record that an alert was raised (`alert.raised`, for webhooks
        // and Kafka consumers): the alert itself is a row of the mailer's
        // outbox, not a read model.
        "alert" if event.event_type == ALERT_RAISED => Ok(()),
        _ => Err(ProjectionError::UnknownType(event.event_type.clone())),
    }
}

async fn apply_key(
    db: &mut PgConnection,
    id: &str,
    stored: &StoredEvent,
    event: KeyEvent,
) -> Result<(), ProjectionError> {
    let version = stored.version;
    // Every change but creation is guarded by the row's version.
    let update = |set: &str| format!("update keys set {set}, version = $2 where id = $1 and version < $2");
    match &event {
        KeyEvent::Created(e) => {
            sqlx::query(
                "insert into keys (id, org_id, name, key_type, environment, scopes, status, key_hash, prefix,
                                   last_four, created_at, expires_at, rotation_due_at, version, allowed_ips)
                 values ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $9, $10, $11, $12, $13, $14)
                 on conflict (id) do nothing",
            )
            .bind(id)
            .bind(e.org_id.to_string())
            .bind(e.name.as_str())
            .bind(e.key_type.as_str())
            .bind(e.environment.as_str())
            .bind(e.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>())
            .bind(&e.key_hash.0[..])
            .bind(&e.prefix)
            .bind(&e.last_four)
            .bind(e.created_at)
            .bind(e.expires_at)
            .bind(e.rotation_due_at)
            .bind(version)
            .bind(e.allowed_ips.to_strings())
            .execute(&mut *db)
            .await?;
            return Ok(());
        }
        KeyEvent::Updated(e) => {
            let sql = update(
                "name = coalesce($3, name), scopes = coalesce($4, scopes),
                 expires_at = case when $5 then $6 else expires_at end,
                 allowed_ips = coalesce($7, allowed_ips)",
            );
            sqlx::query(&sql)
                .bind(id)
                .bind(version)
                .bind(e.name.as_ref().map(|n| n.as_str().to_owned()))
                .bind(
                    e.scopes
                        .as_ref()
                        .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
                )
                .bind(e.expires_at.is_some())
                .bind(e.expires_at.flatten())
                .bind(e.allowed_ips.as_ref().map(AllowedIps::to_strings))
                .execute(&mut *db)
                .await?
        }
        KeyEvent::Regenerated(e) => {
            // A leaked secret never gets a grace period (as the aggregate
            // has it), even where an event stored before that rule says so.
            // The right-hand sides read the row as it was before this update.
            let sql = update(
                "previous_key_hash = case when $3::timestamptz is null or leaked_at is not null then null
                                          else key_hash end,
                 previous_valid_until = case when leaked_at is not null then null else $3 end,
                 key_hash = $4, last_four = $5, rotation_due_at = $6, leaked_at = null",
            );
            sqlx::query(&sql)
                .bind(id)
                .bind(version)
                .bind(e.previous_valid_until)
                .bind(&e.key_hash.0[..])
                .bind(&e.last_four)
                .bind(e.rotation_due_at)
                .execute(&mut *db)
                .await?
        }
        KeyEvent::Deactivated(_) | KeyEvent::Activated(_) | KeyEvent::Expired(_) => {
            let status = match event {
                KeyEvent::Deactivated(_) => KeyStatus::Inactive,
                KeyEvent::Activated(_) => KeyStatus::Active,
                _ => KeyStatus::Expired,
            };
            sqlx::query(&update("status = $3"))
                .bind(id)
                .bind(version)
                .bind(status.as_str())
                .execute(&mut *db)
                .await?
        }
        KeyEvent::Used(e) => {
            // The keys row's version guard decides whether this event is new;
            // only then are its counts added.
            sqlx::query(
                "with claimed as (
                     update keys set last_used_at = greatest(last_used_at, $3), version = $2
                     where id = $1 and version < $2 returning id, org_id)
                 insert into usage_rollups (key_id, org_id, granularity, bucket, requests, successful, failed, rate_limited)
                 select claimed.id, claimed.org_id, g.name, date_trunc(g.name, $4::timestamptz, 'UTC'), $5, $6, $7, $8
                 from claimed, (values ('minute'), ('hour'), ('day')) as g(name)
                 on conflict (key_id, granularity, bucket) do update set
                     requests = usage_rollups.requests + excluded.requests,
                     successful = usage_rollups.successful + excluded.successful,
                     failed = usage_rollups.failed + excluded.failed,
                     rate_limited = usage_rollups.rate_limited + excluded.rate_limited",
            )
            .bind(id)
            .bind(version)
            .bind(e.last_used_at)
            .bind(e.minute)
            .bind(e.requests as i64)
            .bind(e.successful as i64)
            .bind(e.failed as i64)
            .bind(e.rate_limited as i64)
            .execute(&mut *db)
            .await?
        }
        KeyEvent::Leaked(e) => match e.secret {
            LeakedSecret::Current => {
                sqlx::query(&update("leaked_at = $3"))
                    .bind(id)
                    .bind(version)
                    .bind(e.reported_at)
                    .execute(&mut *db)
                    .await?
            }
            // A leaked regenerated-away secret stops working at once.
            LeakedSecret::Previous => {
                sqlx::query(&update("previous_key_hash = null, previous_valid_until = null"))
                    .bind(id)
                    .bind(version)
                    .execute(&mut *db)
                    .await?
            }
        },
        // A reminder changes no column of the key; only its version moves.
        KeyEvent::RotationDue(_) => {
            sqlx::query("update keys set version = $2 where id = $1 and version < $2")
                .bind(id)
                .bind(version)
                .execute(&mut *db)
                .await?
        }
        KeyEvent::Deleted(_) => {
            let sql = update("deleted_at = $3, key_hash = null, previous_key_hash = null, previous_valid_until = null");
            sqlx::query(&sql)
                .bind(id)
                .bind(version)
                .bind(stored.occurred_at)
                .execute(&mut *db)
                .await?
        }
    };
    Ok(())
}

async fn apply_org(
    db: &mut PgConnection,
    id: &str,
    stored: &StoredEvent,
    event: OrgEvent,
) -> Result<(), ProjectionError> {
    let version = stored.version;
    if let OrgEvent::Created(e) = &event {
        let inserted = sqlx::query(
            "insert into orgs (id, name, plan, rate_limit_per_minute, alert_emails, rotation_days,
                               alert_settings, created_at, version)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict (id) do nothing",
        )
        .bind(id)
        .bind(e.name.as_str())
        .bind(e.plan.as_str())
        .bind(e.rate_limit_per_minute as i32)
        .bind(e.alert_emails.iter().map(|a| a.as_str()).collect::<Vec<_>>())
        .bind(e.rotation_days as i32)
        .bind(serde_json::to_value(e.alert_settings).expect("settings serialize"))
        .bind(e.created_at)
        .bind(version)
        .execute(&mut *db)
        .await?;
        if inserted.rows_affected() == 1 {
            // The operator's addresses count as confirmed (but one an older
            // version took that is not an address any more, never).
            sqlx::query(
                "insert into alert_recipients (org_id, email, position, confirmed_at)
                 select $1, e.email, e.position, case when e.usable then $4 end
                 from unnest($2::text[], $3::bool[]) with ordinality as e(email, usable, position)",
            )
            .bind(id)
            .bind(e.alert_emails.iter().map(|a| a.as_str()).collect::<Vec<_>>())
            .bind(e.alert_emails.iter().map(|a| a.valid().is_some()).collect::<Vec<_>>())
            .bind(e.created_at)
            .execute(&mut *db)
            .await?;
        }
        return Ok(());
    }
    // Every later event is applied once: the orgs row's version guard
    // decides, and the recipients follow only when it let the event in.
    let (plan, limit) = match &event {
        OrgEvent::PlanChanged(e) => (Some(e.plan.as_str()), Some(e.rate_limit_per_minute as i32)),
        _ => (None, None),
    };
    let settings = match &event {
        OrgEvent::SettingsChanged(e) => e.clone(),
        _ => Default::default(),
    };
    let emails = settings
        .alert_emails
        .as_ref()
        .map(|v| v.iter().map(|a| a.as_str().to_owned()).collect::<Vec<_>>());
    let applied = sqlx::query(
        "update orgs set plan = coalesce($3, plan), rate_limit_per_minute = coalesce($4, rate_limit_per_minute),
                alert_emails = coalesce($5, alert_emails), rotation_days = coalesce($6, rotation_days),
                alert_settings = coalesce($7, alert_settings), leak_action = coalesce($8, leak_action), version = $2
         where id = $1 and version < $2",
    )
    .bind(id)
    .bind(version)
    .bind(plan)
    .bind(limit)
    .bind(&emails)
    .bind(settings.rotation_days.map(|d| d as i32))
    .bind(
        settings
            .alert_settings
            .map(|s| serde_json::to_value(s).expect("settings serialize")),
    )
    .bind(settings.leak_action.map(|a| a.as_str()))
    .execute(&mut *db)
    .await?;
    if applied.rows_affected() == 0 {
        return Ok(());
    }
    match event {
        OrgEvent::SettingsChanged(_) => {
            if let Some(emails) = emails {
                // Removed addresses go (with their confirmation); new ones
                // arrive unconfirmed; every one takes its place in the list.
                sqlx::query("delete from alert_recipients where org_id = $1 and email <> all($2)")
                    .bind(id)
                    .bind(&emails)
                    .execute(&mut *db)
                    .await?;
                sqlx::query(
                    "insert into alert_recipients (org_id, email, position, confirmed_at)
                     select $1, e.email, e.position, null
                     from unnest($2::text[]) with ordinality as e(email, position)
                     on conflict (org_id, email) do update set position = excluded.position",
                )
                .bind(id)
                .bind(&emails)
                .execute(&mut *db)
                .await?;
            }
        }
        OrgEvent::AlertRecipientConfirmed(e) => {
            sqlx::query("update alert_recipients set confirmed_at = $3 where org_id = $1 and email = $2")
                .bind(id)
                .bind(e.email.as_str())
                .bind(e.confirmed_at)
                .execute(&mut *db)
                .await?;
        }
        // The request is the mailer's business (the alerts outbox).
        OrgEvent::AlertRecipientConfirmationRequested(_) | OrgEvent::PlanChanged(_) | OrgEvent::Created(_) => {}
    }
    Ok(())
}
