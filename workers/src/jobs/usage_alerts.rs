//! Alerts evaluated from the usage read model (`usage_rollups`, `keys`),
//! each against its organization's `alert_settings`:
//! - approaching rate limit: a key used at least N% of its per-minute limit
//!   in one minute (at most one alert per key in any hour);
//! - error rate: failed / total over the last M minutes, with at least K
//!   requests (at most one per key in any hour);
//! - unusual activity: the last hour's requests at least F times the key's
//!   hourly average over the 7 days before, and at least R (at most one per
//!   key in any hour);
//! - unused keys: active keys not used for D days, one digest per
//!   organization at most every 7 days.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use sqlx::PgPool;

use super::job::{JobError, Orgs, Report};
use crate::alerts::email::{compose, count, percent, Block, Email, KeyLabel};
use crate::alerts::{self, hour_period, week_period, AlertKind, NewAlert};
use keyledger_events::domain::OrgId;
use keyledger_events::read_model::OrgRow;

/// How many past minutes each run looks at for a busy minute (runs are a
/// minute apart; the margin covers a late usage flush or a missed run).
const RECENT_MINUTES: i64 = 10;
/// Hours in the trailing window of the unusual-activity baseline.
const BASELINE_HOURS: i64 = 7 * 24;

/// Approaching rate limit, error rate and unusual activity, as of `now`.
pub async fn run_once(pool: &PgPool, now: DateTime<Utc>) -> Result<Report, JobError> {
    let mut orgs = Orgs::default();
    let mut report = approaching_limit(pool, &mut orgs, now).await?;
    report += error_rate(pool, &mut orgs, now).await?;
    report += unusual_activity(pool, &mut orgs, now).await?;
    Ok(report)
}

async fn raise(pool: &PgPool, alert: NewAlert, now: DateTime<Utc>) -> Result<Report, JobError> {
    Ok(Report::raised(alerts::raise_alone(pool, &alert, now).await?))
}

/// A usage alert about one key, raised at most once per key in any hour.
async fn raise_hourly(
    pool: &PgPool,
    kind: AlertKind,
    org: &OrgRow,
    key: &KeyLabel,
    period: String,
    email: Email,
    now: DateTime<Utc>,
) -> Result<Report, JobError> {
    let alert = NewAlert::to_org(kind, org, Some(&key.id), period, email).at_most_every(Duration::hours(1));
    raise(pool, alert, now).await
}

fn usage_link(label: &KeyLabel) -> String {
    format!(
        "See the key's usage minute by minute: GET /v1/keys/{}/usage?granularity=minute.",
        label.id
    )
}

#[derive(sqlx::FromRow)]
struct BusyMinute {
    #[sqlx(flatten)]
    label: KeyLabel,
    org_id: OrgId,
    bucket: DateTime<Utc>,
    requests: i64,
    rate_limited: i64,
}

async fn approaching_limit(pool: &PgPool, orgs: &mut Orgs, now: DateTime<Utc>) -> Result<Report, JobError> {
    let minutes: Vec<BusyMinute> = sqlx::query_as(
        "select k.id, k.name, k.prefix, k.last_four, k.org_id, u.bucket, u.requests, u.rate_limited
         from usage_rollups u join keys k on k.id = u.key_id
         where u.granularity = 'minute' and u.bucket > $1 - make_interval(mins => $2) and u.bucket <= $1
           and k.deleted_at is null
         order by u.bucket",
    )
    .bind(now)
    .bind(RECENT_MINUTES as i32)
    .fetch_all(pool)
    .await?;
    let mut report = Report::default();
    for minute in minutes {
        let Some(org) = orgs.get(pool, minute.org_id).await? else {
            continue;
        };
        let limit = i64::from(org.rate_limit_per_minute);
        let threshold = i64::from(org.alert_settings().approaching_limit_percent);
        // Requests refused with 429 did not use the budget; they show the limit was reached.
        let used = minute.requests - minute.rate_limited;
        if used * 100 < limit * threshold && minute.rate_limited == 0 {
            continue;
        }
        let email = approaching_email(&minute, limit, threshold);
        let period = hour_period(minute.bucket);
        report += raise_hourly(
            pool,
            AlertKind::ApproachingRateLimit,
            org,
            &minute.label,
            period,
            email,
            now,
        )
        .await?;
    }
    Ok(report)
}

fn approaching_email(minute: &BusyMinute, limit: i64, threshold: i64) -> Email {
    let label = &minute.label;
    let used = minute.requests - minute.rate_limited;
    let share = percent(used, limit);
    let mut opening = format!(
        "Your API key {label} used {} of its {} requests per minute ({share}) in the minute starting {}. \
         You asked to be told at {threshold}% of the limit.",
        count(used),
        count(limit),
        minute.bucket.format("%Y-%m-%d %H:%M UTC"),
    );
    if minute.rate_limited > 0 {
        opening.push_str(&format!(
            " {} further requests were refused with 429 rate_limited.",
            count(minute.rate_limited)
        ));
    }
    compose(
        format!("API key {label} used {share} of its rate limit"),
        &[
            Block::Paragraph(opening),
            Block::Paragraph(
                "Once the limit is reached, requests are refused with 429 until the one-minute window \
                 refills; every answer carries X-RateLimit-Limit, X-RateLimit-Remaining and X-RateLimit-Reset."
                    .into(),
            ),
            Block::Heading("What to do".into()),
            Block::List(vec![
                "Spread requests over the minute, cache answers you fetch repeatedly, and back off when \
                 X-RateLimit-Remaining runs low (a 429 says how long in Retry-After)."
                    .into(),
                "If this traffic is expected growth, move to a larger plan (free 100, basic 1,000, \
                 pro 10,000 requests per minute; enterprise custom)."
                    .into(),
                usage_link(label),
            ]),
        ],
    )
}

#[derive(sqlx::FromRow)]
struct Window {
    #[sqlx(flatten)]
    label: KeyLabel,
    org_id: OrgId,
    requests: i64,
    failed: i64,
    rate_limited: i64,
}

async fn error_rate(pool: &PgPool, orgs: &mut Orgs, now: DateTime<Utc>) -> Result<Report, JobError> {
    // Each organization's own window; the defaults of AlertSettings apply
    // where a stored setting is missing.
    let windows: Vec<Window> = sqlx::query_as(
        "select k.id, k.name, k.prefix, k.last_four, k.org_id, sum(u.requests)::bigint as requests,
                sum(u.failed)::bigint as failed, sum(u.rate_limited)::bigint as rate_limited
         from usage_rollups u join keys k on k.id = u.key_id join orgs o on o.id = k.org_id
         where u.granularity = 'minute' and k.deleted_at is null and u.bucket <= $1
           and u.bucket > $1 - make_interval(mins => coalesce((o.alert_settings->>'error_rate_window_minutes')::int, 15))
         group by k.id",
    )
    .bind(now)
    .fetch_all(pool)
    .await?;
    let mut report = Report::default();
    for window in windows {
        let Some(org) = orgs.get(pool, window.org_id).await? else {
            continue;
        };
        let settings = org.alert_settings();
        let threshold = i64::from(settings.error_rate_percent);
        if window.requests < i64::from(settings.error_rate_min_requests)
            || window.failed * 100 < threshold * window.requests
        {
            continue;
        }
        let email = error_rate_email(&window, threshold, settings.error_rate_window_minutes);
        report += raise_hourly(
            pool,
            AlertKind::ErrorRate,
            org,
            &window.label,
            hour_period(now),
            email,
            now,
        )
        .await?;
    }
    Ok(report)
}

fn error_rate_email(window: &Window, threshold: i64, minutes: u32) -> Email {
    let label = &window.label;
    let rate = percent(window.failed, window.requests);
    let mut figures = format!(
        "{} of the {} requests made with your API key {label} in the last {minutes} minutes were refused: \
         an error rate of {rate}, at or above your threshold of {threshold}%.",
        count(window.failed),
        count(window.requests),
    );
    if window.rate_limited > 0 {
        figures.push_str(&format!(
            " {} of them were refused for the rate limit (429).",
            count(window.rate_limited)
        ));
    }
    compose(
        format!("API key {label}: {rate} of requests failed"),
        &[
            Block::Paragraph(figures),
            Block::Heading("What to do".into()),
            Block::List(vec![
                "401: check that the key is the right one, not expired, active, and for the right \
                 environment (live keys for live, test keys for test)."
                    .into(),
                "403 insufficient_scope: the key lacks the scope the operation needs; the error message \
                 names it. Add it with PATCH /v1/keys/{id} or use a key that has it."
                    .into(),
                "429: the key is over its per-minute limit; see Retry-After and X-RateLimit-Remaining.".into(),
                usage_link(label),
            ]),
        ],
    )
}

#[derive(sqlx::FromRow)]
struct Activity {
    #[sqlx(flatten)]
    label: KeyLabel,
    org_id: OrgId,
    created_at: DateTime<Utc>,
    recent: i64,
    baseline: i64,
}

async fn unusual_activity(pool: &PgPool, orgs: &mut Orgs, now: DateTime<Utc>) -> Result<Report, JobError> {
    // The last hour from minute buckets; the baseline from the hour buckets
    // of the 7 days before the hour that holds `now - 1h` (no overlap).
    let baseline_end = (now - Duration::hours(1))
        .duration_trunc(Duration::hours(1))
        .unwrap_or(now);
    let baseline_start = baseline_end - Duration::hours(BASELINE_HOURS);
    let activity: Vec<Activity> = sqlx::query_as(
        "with recent as (
             select key_id, sum(requests)::bigint as requests from usage_rollups
             where granularity = 'minute' and bucket > $1 - interval '1 hour' and bucket <= $1
             group by key_id),
         baseline as (
             select key_id, sum(requests)::bigint as requests from usage_rollups
             where granularity = 'hour' and bucket >= $2 and bucket < $3
               and key_id in (select key_id from recent)
             group by key_id)
         select k.id, k.name, k.prefix, k.last_four, k.org_id, k.created_at,
                r.requests as recent, coalesce(b.requests, 0)::bigint as baseline
         from recent r join keys k on k.id = r.key_id left join baseline b on b.key_id = r.key_id
         where k.deleted_at is null",
    )
    .bind(now)
    .bind(baseline_start)
    .bind(baseline_end)
    .fetch_all(pool)
    .await?;
    let mut report = Report::default();
    for key in activity {
        let Some(org) = orgs.get(pool, key.org_id).await? else {
            continue;
        };
        let settings = org.alert_settings();
        // A younger key's average counts only the hours it existed.
        let hours = (baseline_end - key.created_at.max(baseline_start))
            .num_hours()
            .clamp(0, BASELINE_HOURS);
        let factor = i64::from(settings.unusual_activity_factor);
        if key.recent < i64::from(settings.unusual_activity_min_requests) || key.recent * hours < factor * key.baseline
        {
            continue;
        }
        let email = unusual_email(&key, hours, factor, settings.unusual_activity_min_requests);
        report += raise_hourly(
            pool,
            AlertKind::UnusualActivity,
            org,
            &key.label,
            hour_period(now),
            email,
            now,
        )
        .await?;
    }
    Ok(report)
}

fn unusual_email(key: &Activity, hours: i64, factor: i64, min_requests: u32) -> Email {
    let label = &key.label;
    let comparison = if hours == 0 || key.baseline == 0 {
        "The key had no traffic in the 7 days before to compare with.".to_owned()
    } else {
        let average = key.baseline as f64 / hours as f64;
        format!(
            "Its hourly average over the 7 days before was {average:.1} requests, so this is {:.1} times \
             as many.",
            key.recent as f64 / average
        )
    };
    compose(
        format!(
            "Unusual activity on API key {label}: {} requests in an hour",
            count(key.recent)
        ),
        &[
            Block::Paragraph(format!(
                "Your API key {label} made {} requests in the last hour. {comparison} You asked to be told \
                 at {factor} times the average and at least {} requests in an hour.",
                count(key.recent),
                count(i64::from(min_requests)),
            )),
            Block::Heading("What to do".into()),
            Block::List(vec![
                "If you expected this (a launch, a batch job, a migration), no action is needed.".into(),
                format!(
                    "If you do not recognise it, the key may have leaked: regenerate it now \
                     (POST /v1/keys/{}/regenerate) or deactivate it (POST /v1/keys/{}/deactivate), then \
                     check where it is stored and who can read it.",
                    label.id, label.id
                ),
                usage_link(label),
            ]),
        ],
    )
}

#[derive(sqlx::FromRow)]
struct Unused {
    #[sqlx(flatten)]
    label: KeyLabel,
    org_id: OrgId,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
}

/// The unused-keys digest: one email per organization and ISO week listing
/// its active keys not used for its `unused_days`.
pub async fn unused_keys(pool: &PgPool, now: DateTime<Utc>) -> Result<Report, JobError> {
    let unused: Vec<Unused> = sqlx::query_as(
        "select k.id, k.name, k.prefix, k.last_four, k.org_id, k.created_at, k.last_used_at
         from keys k join orgs o on o.id = k.org_id
         where k.deleted_at is null and k.status = 'active' and (k.expires_at is null or k.expires_at > $1)
           and coalesce(k.last_used_at, k.created_at)
               <= $1 - make_interval(days => coalesce((o.alert_settings->>'unused_days')::int, 30))
         order by k.org_id, k.created_at",
    )
    .bind(now)
    .fetch_all(pool)
    .await?;
    let mut by_org: BTreeMap<OrgId, Vec<Unused>> = BTreeMap::new();
    for key in unused {
        by_org.entry(key.org_id).or_default().push(key);
    }
    let mut orgs = Orgs::default();
    let mut report = Report::default();
    for (org_id, keys) in by_org {
        let Some(org) = orgs.get(pool, org_id).await? else {
            continue;
        };
        let email = unused_email(&keys, org.alert_settings().unused_days, now);
        let alert = NewAlert::to_org(AlertKind::UnusedKeys, org, None, week_period(now), email)
            .at_most_every(Duration::days(7));
        report += raise(pool, alert, now).await?;
    }
    Ok(report)
}

fn unused_email(keys: &[Unused], days: u32, now: DateTime<Utc>) -> Email {
    let items = keys
        .iter()
        .map(|k| {
            let last = match k.last_used_at {
                Some(at) => format!(
                    "last used {} ({} days ago)",
                    at.format("%Y-%m-%d"),
                    (now - at).num_days()
                ),
                None => "never used".into(),
            };
            format!("{} — created {}, {last}", k.label, k.created_at.format("%Y-%m-%d"))
        })
        .collect();
    let n = keys.len();
    let (subject, opening) = if n == 1 {
        (
            format!("1 API key unused for {days} days or more"),
            format!("This active API key has not been used for {days} days or more:"),
        )
    } else {
        (
            format!("{n} API keys unused for {days} days or more"),
            format!("These {n} active API keys have not been used for {days} days or more:"),
        )
    };
    compose(
        subject,
        &[
            Block::Paragraph(opening),
            Block::List(items),
            Block::Paragraph(
                "A key nobody uses can still be leaked and used by someone else; fewer keys are fewer secrets \
                 to protect."
                    .into(),
            ),
            Block::Heading("What to do".into()),
            Block::List(vec![
                "Delete keys you no longer need: DELETE /v1/keys/{id}.".into(),
                "Not sure? Deactivate it first (POST /v1/keys/{id}/deactivate): anything still using it \
                 fails with 401 key_inactive, and you can re-activate it at once."
                    .into(),
            ]),
        ],
    )
}
