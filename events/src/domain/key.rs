//! The `ApiKey` aggregate: one stream (`key-<id>`) per key.
//!
//! Rules enforced here, whatever the entry point:
//! - the type decides the prefix and environment (test keys live in `test`);
//! - scopes default by type and public keys may only read experiences and
//!   consumers; unknown scopes are refused;
//! - names are 1–100 characters without control characters;
//! - an expiry must lie in the future; a key past its expiry is `expired`
//!   at once (by the clock, before any job records it) and that is final;
//! - deactivate and activate are idempotent: repeating one appends nothing;
//! - an IP allowlist holds at most 100 addresses or exact CIDR ranges, each
//!   once (see [`AllowedIps`]); an empty one is none;
//! - a secret reported leaked is recorded once (`key.leaked`); which secret
//!   it is — the current one, or a regenerated-away one in its grace period —
//!   is decided here from its hash, against the stream's state (never from a
//!   read model that may be older). A leaked current secret gets the
//!   organization's leak action: `deactivate` deactivates an active key in
//!   the same append. A leaked regenerated-away secret stops working at once,
//!   whatever the action, and the key (whose current secret did not leak)
//!   stays as it is. Any other secret (retired, or never the key's) is a
//!   conflict and changes nothing;
//! - a leaked secret never works again: regenerating a key whose current
//!   secret was reported leaked ends that secret at once, whatever grace
//!   period was asked for;
//! - a deleted key is gone: every further command answers not-found.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::{
    scope::Scope, Aggregate, AllowedIps, DomainError, DomainEvent, HashKey, KeyHash, KeyId, KeyType, LeakAction, Name,
    OrgId, PlainKey, ValidationDetails,
};

/// Longest grace period of a regenerated-away secret: one week.
pub const MAX_GRACE_SECONDS: i64 = 604_800;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Inactive,
    Expired,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Inactive => "inactive",
            KeyStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<KeyStatus> {
        [KeyStatus::Active, KeyStatus::Inactive, KeyStatus::Expired]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    /// The status at `now` of a key recorded as `self` that expires at
    /// `expires_at`: past its expiry a key is expired at once, even before
    /// the expiry job records it. The one place this rule is written (the
    /// aggregate and the read model both ask it).
    pub fn at(self, expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> KeyStatus {
        match expires_at {
            Some(at) if at <= now => KeyStatus::Expired,
            _ => self,
        }
    }
}

/// A regenerated-away secret that keeps working until `valid_until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    pub key_hash: KeyHash,
    pub valid_until: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: KeyId,
    pub org_id: OrgId,
    pub name: Name,
    pub key_type: KeyType,
    pub scopes: Vec<Scope>,
    /// The recorded status; see [`ApiKey::status_at`] for the effective one.
    pub status: KeyStatus,
    pub key_hash: KeyHash,
    pub last_four: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rotation_due_at: Option<DateTime<Utc>>,
    pub previous: Option<PreviousSecret>,
    /// Where requests made with the key may come from (empty: anywhere).
    pub allowed_ips: AllowedIps,
    /// When the current secret was reported leaked (until it is regenerated).
    pub leaked_at: Option<DateTime<Utc>>,
    pub deleted: bool,
}

impl ApiKey {
    /// The status at `now`: a key past its expiry is expired even before the
    /// expiry job has recorded it.
    pub fn status_at(&self, now: DateTime<Utc>) -> KeyStatus {
        self.status.at(self.expires_at, now)
    }
}

/// Where a new secret comes from: 256 random bits (from the OS CSPRNG, drawn
/// by the caller) and the server's hash key. Deterministic, so the caller can
/// show the clear text once after the events are stored.
#[derive(Clone)]
pub struct SecretSource {
    pub random: [u8; 32],
    pub hash_key: HashKey,
}

impl SecretSource {
    pub fn issue(&self, key_type: KeyType) -> (PlainKey, KeyHash) {
        let plain = PlainKey::encode(key_type, &self.random);
        let hash = self.hash_key.hash(&plain);
        (plain, hash)
    }
}

/// A key to create, as a user typed it: [`CreateKeyRequest::parse`] checks
/// every field and reports all problems at once, at the edge (the API, the
/// portal, the CLI), before any command runs.
#[derive(Clone)]
pub struct CreateKeyRequest {
    pub key_id: KeyId,
    pub org_id: OrgId,
    pub name: String,
    pub key_type: String,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The organization's rotation policy in days (0 = off).
    pub rotation_days: u32,
    /// Addresses and CIDR ranges requests may come from (absent or empty: any).
    pub allowed_ips: Option<Vec<String>>,
    pub secret: SecretSource,
}

/// The command to create a key: every field a domain value, checked by
/// [`CreateKeyRequest::parse`] (scopes allowed for the type, defaults filled
/// in), so `decide` parses nothing.
#[derive(Clone)]
pub struct CreateKey {
    pub key_id: KeyId,
    pub org_id: OrgId,
    pub name: Name,
    pub key_type: KeyType,
    pub scopes: Vec<Scope>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The organization's rotation policy in days (0 = off).
    pub rotation_days: u32,
    /// Where requests made with the key may come from (empty: anywhere).
    pub allowed_ips: AllowedIps,
    pub secret: SecretSource,
}

impl CreateKeyRequest {
    /// The command, or every problem of the input at once (a validation
    /// error naming each field); `now` is the moment the expiry must follow.
    pub fn parse(self, now: DateTime<Utc>) -> Result<CreateKey, DomainError> {
        let mut details = ValidationDetails::default();
        let name = Name::parse(&self.name).map_err(|p| details.add("name", p)).ok();
        let key_type = KeyType::parse(&self.key_type);
        if key_type.is_none() {
            details.add(
                "type",
                format!("unknown type '{}': use public, secret or test", self.key_type),
            );
        }
        let scopes = match (&self.scopes, key_type) {
            (Some(raw), _) => parse_scopes(raw, key_type, &mut details),
            (None, Some(t)) => Scope::defaults_for(t),
            (None, None) => vec![],
        };
        check_expiry(self.expires_at, now, &mut details);
        let allowed_ips = parse_allowed_ips(self.allowed_ips.as_deref().unwrap_or_default(), &mut details);
        details.into_result()?;
        Ok(CreateKey {
            key_id: self.key_id,
            org_id: self.org_id,
            name: name.expect("validated"),
            key_type: key_type.expect("validated"),
            scopes,
            expires_at: self.expires_at,
            rotation_days: self.rotation_days,
            allowed_ips,
            secret: self.secret,
        })
    }
}

/// An edit, as a user typed it; [`UpdateKeyRequest::parse`] makes the
/// command.
#[derive(Clone, Default)]
pub struct UpdateKeyRequest {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// `Some(None)` clears the expiry.
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// `Some(vec![])` clears the allowlist.
    pub allowed_ips: Option<Vec<String>>,
}

/// The command to edit a key: each given field parsed at the edge into its
/// domain value — or into what is wrong with it. The problems travel with
/// the command because an edit's refusals come in an order that depends on
/// the key (not found, then an expired key's conflict, then every field
/// problem at once, with the scopes the key's type may not hold): `decide`
/// reports them, and parses nothing.
#[derive(Clone, Default)]
pub struct UpdateKey {
    pub name: Option<Result<Name, String>>,
    /// Each scope as given, in order (an unknown one is its problem).
    pub scopes: Option<Vec<Result<Scope, String>>>,
    /// `Some(None)` clears the expiry.
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// `Some(empty)` clears the allowlist.
    pub allowed_ips: Option<Result<AllowedIps, Vec<String>>>,
}

impl UpdateKeyRequest {
    pub fn parse(self) -> UpdateKey {
        UpdateKey {
            name: self.name.map(|n| Name::parse(&n)),
            scopes: self.scopes.map(|raw| {
                raw.iter()
                    .map(|t| t.parse::<Scope>().map_err(|e| e.to_string()))
                    .collect()
            }),
            expires_at: self.expires_at,
            allowed_ips: self.allowed_ips.map(|raw| AllowedIps::parse(&raw)),
        }
    }
}

/// Which of a key's secrets a leak report names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakedSecret {
    /// The secret the key has now.
    #[default]
    Current,
    /// A regenerated-away secret still in its grace period.
    Previous,
}

/// A secret scanner found one of the key's secrets in public (a signed
/// report: see the API's `leaks`). Raw input from the report, bounded by
/// the caller; `action` is the organization's leak action.
#[derive(Clone)]
pub struct ReportLeak {
    pub url: String,
    pub source: String,
    pub token_type: String,
    /// The scanner's public key that signed the report.
    pub reporter_key_id: String,
    /// The keyed hash of the reported secret: `decide` tells from it which
    /// of the key's secrets leaked (if it still is one).
    pub key_hash: KeyHash,
    pub action: LeakAction,
}

#[derive(Clone)]
pub struct RegenerateKey {
    pub expire_old_in_seconds: i64,
    pub rotation_days: u32,
    pub secret: SecretSource,
}

#[derive(Clone)]
pub enum KeyCommand {
    Create(Box<CreateKey>),
    Update(UpdateKey),
    Regenerate(Box<RegenerateKey>),
    Deactivate,
    Activate,
    Delete,
    /// Recorded by the expiry job once a key is past `expires_at`.
    Expire,
    /// Usage an API process counted for one minute (a deleted key's is dropped).
    RecordUsage(KeyUsed),
    /// Recorded by the rotation job with each reminder it sends.
    RemindRotation,
    /// A signed report says one of the key's secrets is public.
    ReportLeak(Box<ReportLeak>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCreated {
    pub key_id: KeyId,
    pub org_id: OrgId,
    pub name: Name,
    pub key_type: KeyType,
    pub environment: super::Environment,
    pub scopes: Vec<Scope>,
    pub key_hash: KeyHash,
    pub prefix: String,
    pub last_four: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rotation_due_at: Option<DateTime<Utc>>,
    /// Absent (as in every event written before allowlists existed): none.
    #[serde(default, skip_serializing_if = "AllowedIps::is_empty")]
    pub allowed_ips: AllowedIps,
}

/// Only the fields that changed are present; `expires_at: null` clears it,
/// `allowed_ips: []` removes the allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<Scope>>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<AllowedIps>,
}

/// One of the key's secrets was found in public. Where (as the scanner
/// said), when, who reported it and what the organization's leak action
/// was — never the secret, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLeaked {
    /// Where the secret was found (may be empty: the scanner did not say).
    pub url: String,
    /// What kind of place (`content`, `commit`, `issue_comment`, `npm`, …).
    pub source: String,
    /// The scanner's name for the pattern that matched.
    pub token_type: String,
    pub reported_at: DateTime<Utc>,
    /// The identifier of the scanner's public key that signed the report.
    pub reporter_key_id: String,
    #[serde(default)]
    pub secret: LeakedSecret,
    pub action: LeakAction,
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRegenerated {
    pub key_hash: KeyHash,
    pub last_four: String,
    pub regenerated_at: DateTime<Utc>,
    /// Until when the previous secret still works; `None`: it stopped at once.
    pub previous_valid_until: Option<DateTime<Utc>>,
    pub rotation_due_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyExpired {
    pub expired_at: DateTime<Utc>,
}

/// Where a live key stands against its rotation date: reminders go out 14
/// days before, on the due date, and every week after it until the key is
/// regenerated (which moves the date).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "stage", content = "week", rename_all = "lowercase")]
pub enum RotationReminder {
    /// Due within the next 14 days.
    Upcoming,
    /// Due today or within the last 7 days.
    Due,
    /// Overdue for this many whole weeks (1, 2, …).
    Overdue(u32),
}

/// How far ahead of the due date the first reminder goes out.
pub const ROTATION_NOTICE_DAYS: i64 = 14;

impl RotationReminder {
    /// The reminder owed at `now` for a key due at `due`, if any.
    pub fn at(due: DateTime<Utc>, now: DateTime<Utc>) -> Option<RotationReminder> {
        if now < due - Duration::days(ROTATION_NOTICE_DAYS) {
            return None;
        }
        if now < due {
            return Some(RotationReminder::Upcoming);
        }
        let weeks = (now - due).num_days() / 7;
        Some(match weeks {
            0 => RotationReminder::Due,
            n => RotationReminder::Overdue(u32::try_from(n).unwrap_or(u32::MAX)),
        })
    }

    /// A stable name for the period this reminder covers (`upcoming`,
    /// `due`, `overdue-3`), part of its alert's dedupe key.
    pub fn period(self) -> String {
        match self {
            RotationReminder::Upcoming => "upcoming".into(),
            RotationReminder::Due => "due".into(),
            RotationReminder::Overdue(weeks) => format!("overdue-{weeks}"),
        }
    }
}

/// A rotation reminder was sent for the key's current due date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotationDue {
    pub rotation_due_at: DateTime<Utc>,
    pub reminder: RotationReminder,
}

/// Requests made with a key during one minute, as counted by one API process.
/// Refused requests are `failed`; `rate_limited` ones are among them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUsed {
    /// Start of the minute the requests fell in.
    pub minute: DateTime<Utc>,
    pub requests: u64,
    pub successful: u64,
    pub failed: u64,
    pub rate_limited: u64,
    pub last_used_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum KeyEvent {
    #[serde(rename = "key.created")]
    Created(KeyCreated),
    #[serde(rename = "key.updated")]
    Updated(KeyUpdated),
    #[serde(rename = "key.regenerated")]
    Regenerated(KeyRegenerated),
    #[serde(rename = "key.deactivated")]
    Deactivated(Empty),
    #[serde(rename = "key.activated")]
    Activated(Empty),
    #[serde(rename = "key.expired")]
    Expired(KeyExpired),
    #[serde(rename = "key.deleted")]
    Deleted(Empty),
    #[serde(rename = "key.used")]
    Used(KeyUsed),
    #[serde(rename = "key.rotation_due")]
    RotationDue(KeyRotationDue),
    #[serde(rename = "key.leaked")]
    Leaked(KeyLeaked),
}

impl DomainEvent for KeyEvent {
    fn event_type(&self) -> &'static str {
        match self {
            KeyEvent::Created(_) => "key.created",
            KeyEvent::Updated(_) => "key.updated",
            KeyEvent::Regenerated(_) => "key.regenerated",
            KeyEvent::Deactivated(_) => "key.deactivated",
            KeyEvent::Activated(_) => "key.activated",
            KeyEvent::Expired(_) => "key.expired",
            KeyEvent::Deleted(_) => "key.deleted",
            KeyEvent::Used(_) => "key.used",
            KeyEvent::RotationDue(_) => "key.rotation_due",
            KeyEvent::Leaked(_) => "key.leaked",
        }
    }
}

pub fn stream_id(id: KeyId) -> String {
    format!("key-{id}")
}

fn rotation_due(key_type: KeyType, from: DateTime<Utc>, rotation_days: u32) -> Option<DateTime<Utc>> {
    let live = key_type.environment() == super::Environment::Live;
    (live && rotation_days > 0).then(|| from + Duration::days(i64::from(rotation_days)))
}

/// Parses and checks scopes for a key type; problems go to `details`.
fn parse_scopes(raw: &[String], key_type: Option<KeyType>, details: &mut ValidationDetails) -> Vec<Scope> {
    let parsed: Vec<Result<Scope, String>> = raw
        .iter()
        .map(|t| t.parse::<Scope>().map_err(|e| e.to_string()))
        .collect();
    check_scopes(&parsed, key_type, details)
}

/// Checks parsed scopes for a key type, in the order given; problems (an
/// unknown scope, one the type may not hold, none at all) go to `details`.
fn check_scopes(
    parsed: &[Result<Scope, String>],
    key_type: Option<KeyType>,
    details: &mut ValidationDetails,
) -> Vec<Scope> {
    let mut scopes = Vec::new();
    for given in parsed {
        match given.clone() {
            Ok(scope) => match key_type {
                Some(t) if !scope.allowed_for(t) => details.add(
                    "scopes",
                    format!(
                        "a {} key may not hold '{scope}' (allowed: read:experiences, read:consumers)",
                        t.as_str()
                    ),
                ),
                _ => scopes.push(scope),
            },
            Err(unknown) => details.add("scopes", unknown),
        }
    }
    if parsed.is_empty() {
        details.add(
            "scopes",
            "give at least one scope, or leave scopes out for the defaults",
        );
    }
    scopes.sort();
    scopes.dedup();
    scopes
}

/// The latest expiry a key may have: later instants have five-digit years,
/// which RFC 3339 cannot write.
pub const LATEST_EXPIRY: &str = "9999-12-31T23:59:59Z";

fn check_expiry(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>, details: &mut ValidationDetails) {
    let latest = DateTime::parse_from_rfc3339(LATEST_EXPIRY).expect("a valid instant");
    match expires_at {
        Some(at) if at <= now => details.add("expires_at", "must be in the future"),
        Some(at) if at > latest => details.add("expires_at", format!("must be at most {LATEST_EXPIRY}")),
        _ => {}
    }
}

fn live(state: Option<&ApiKey>) -> Result<&ApiKey, DomainError> {
    state.filter(|k| !k.deleted).ok_or(DomainError::NotFound)
}

fn refuse_if_expired(key: &ApiKey, now: DateTime<Utc>, action: &str) -> Result<(), DomainError> {
    if key.status_at(now) == KeyStatus::Expired {
        return Err(DomainError::Conflict(format!(
            "the key has expired and cannot be {action}; create a new key instead"
        )));
    }
    Ok(())
}

impl Aggregate for ApiKey {
    type Command = KeyCommand;
    type Event = KeyEvent;

    fn decide(state: Option<&Self>, command: KeyCommand, now: DateTime<Utc>) -> Result<Vec<KeyEvent>, DomainError> {
        match command {
            KeyCommand::Create(create) => decide_create(state, *create, now),
            KeyCommand::Update(update) => decide_update(live(state)?, update, now),
            KeyCommand::Regenerate(regenerate) => {
                let key = live(state)?;
                refuse_if_expired(key, now, "regenerated")?;
                let grace = regenerate.expire_old_in_seconds;
                if !(0..=MAX_GRACE_SECONDS).contains(&grace) {
                    return Err(DomainError::invalid(
                        "expire_old_in_seconds",
                        format!("must be between 0 and {MAX_GRACE_SECONDS} seconds"),
                    ));
                }
                let (plain, key_hash) = regenerate.secret.issue(key.key_type);
                // A secret reported leaked gets no grace period: it must
                // never work again (nor come back when the key is activated).
                let grace = if key.leaked_at.is_some() { 0 } else { grace };
                Ok(vec![KeyEvent::Regenerated(KeyRegenerated {
                    key_hash,
                    last_four: plain.last_four().to_owned(),
                    regenerated_at: now,
                    previous_valid_until: (grace > 0).then(|| now + Duration::seconds(grace)),
                    rotation_due_at: rotation_due(key.key_type, now, regenerate.rotation_days),
                })])
            }
            KeyCommand::Deactivate => {
                let key = live(state)?;
                refuse_if_expired(key, now, "deactivated")?;
                Ok(match key.status {
                    KeyStatus::Inactive => vec![],
                    _ => vec![KeyEvent::Deactivated(Empty {})],
                })
            }
            KeyCommand::Activate => {
                let key = live(state)?;
                refuse_if_expired(key, now, "activated")?;
                Ok(match key.status {
                    KeyStatus::Active => vec![],
                    _ => vec![KeyEvent::Activated(Empty {})],
                })
            }
            KeyCommand::Delete => {
                live(state)?;
                Ok(vec![KeyEvent::Deleted(Empty {})])
            }
            KeyCommand::RecordUsage(used) => {
                live(state)?;
                Ok(vec![KeyEvent::Used(used)])
            }
            KeyCommand::RemindRotation => {
                let key = live(state)?;
                if key.status_at(now) != KeyStatus::Active {
                    return Err(DomainError::Conflict(format!(
                        "the key is {}: rotation reminders are for active keys",
                        key.status_at(now).as_str()
                    )));
                }
                let due = key
                    .rotation_due_at
                    .ok_or_else(|| DomainError::Conflict("the key has no rotation date".into()))?;
                let reminder = RotationReminder::at(due, now)
                    .ok_or_else(|| DomainError::Conflict("the key's rotation date is not near yet".into()))?;
                Ok(vec![KeyEvent::RotationDue(KeyRotationDue {
                    rotation_due_at: due,
                    reminder,
                })])
            }
            KeyCommand::ReportLeak(report) => decide_leak(live(state)?, *report, now),
            KeyCommand::Expire => {
                let key = live(state)?;
                match (key.status, key.expires_at) {
                    (KeyStatus::Expired, _) => Ok(vec![]),
                    (_, Some(at)) if at <= now => Ok(vec![KeyEvent::Expired(KeyExpired { expired_at: at })]),
                    _ => Err(DomainError::Conflict("the key has not reached its expiry".into())),
                }
            }
        }
    }

    fn evolve(state: Option<Self>, event: &KeyEvent) -> Option<Self> {
        if let KeyEvent::Created(e) = event {
            return Some(ApiKey {
                id: e.key_id,
                org_id: e.org_id,
                name: e.name.clone(),
                key_type: e.key_type,
                scopes: e.scopes.clone(),
                status: KeyStatus::Active,
                key_hash: e.key_hash,
                last_four: e.last_four.clone(),
                created_at: e.created_at,
                expires_at: e.expires_at,
                rotation_due_at: e.rotation_due_at,
                previous: None,
                allowed_ips: e.allowed_ips.clone(),
                leaked_at: None,
                deleted: false,
            });
        }
        let mut key = state?;
        match event {
            KeyEvent::Created(_) => unreachable!("handled above"),
            KeyEvent::Updated(e) => {
                if let Some(name) = &e.name {
                    key.name = name.clone();
                }
                if let Some(scopes) = &e.scopes {
                    key.scopes = scopes.clone();
                }
                if let Some(expires_at) = e.expires_at {
                    key.expires_at = expires_at;
                }
                if let Some(allowed_ips) = &e.allowed_ips {
                    key.allowed_ips = allowed_ips.clone();
                }
            }
            KeyEvent::Regenerated(e) => {
                // A leaked secret never gets a grace period, even where an
                // event stored before that rule says otherwise.
                key.previous = match key.leaked_at {
                    Some(_) => None,
                    None => e.previous_valid_until.map(|valid_until| PreviousSecret {
                        key_hash: key.key_hash,
                        valid_until,
                    }),
                };
                key.key_hash = e.key_hash;
                key.last_four = e.last_four.clone();
                key.rotation_due_at = e.rotation_due_at;
                // The new secret has not leaked (the old one's grace ended
                // if it had: see `Leaked`).
                key.leaked_at = None;
            }
            KeyEvent::Leaked(e) => match e.secret {
                LeakedSecret::Current => key.leaked_at = Some(e.reported_at),
                LeakedSecret::Previous => key.previous = None,
            },
            KeyEvent::Deactivated(_) => key.status = KeyStatus::Inactive,
            KeyEvent::Activated(_) => key.status = KeyStatus::Active,
            KeyEvent::Expired(_) => key.status = KeyStatus::Expired,
            KeyEvent::Deleted(_) => key.deleted = true,
            KeyEvent::Used(_) | KeyEvent::RotationDue(_) => {}
        }
        Some(key)
    }
}

fn decide_create(state: Option<&ApiKey>, c: CreateKey, now: DateTime<Utc>) -> Result<Vec<KeyEvent>, DomainError> {
    if state.is_some() {
        return Err(DomainError::Conflict("a key with this id already exists".into()));
    }
    // Parsed at the edge; the one rule that moves with the clock is checked
    // again at the moment the command is decided.
    let mut details = ValidationDetails::default();
    check_expiry(c.expires_at, now, &mut details);
    details.into_result()?;
    let key_type = c.key_type;
    let (plain, key_hash) = c.secret.issue(key_type);
    Ok(vec![KeyEvent::Created(KeyCreated {
        key_id: c.key_id,
        org_id: c.org_id,
        name: c.name,
        key_type,
        environment: key_type.environment(),
        scopes: c.scopes,
        key_hash,
        prefix: key_type.prefix().to_owned(),
        last_four: plain.last_four().to_owned(),
        created_at: now,
        expires_at: c.expires_at,
        rotation_due_at: rotation_due(key_type, now, c.rotation_days),
        allowed_ips: c.allowed_ips,
    })])
}

/// The allowlist, or its problems under `allowed_ips`.
fn parse_allowed_ips(raw: &[String], details: &mut ValidationDetails) -> AllowedIps {
    check_allowed_ips(AllowedIps::parse(raw), details)
}

/// A parsed allowlist, or its problems under `allowed_ips`.
fn check_allowed_ips(parsed: Result<AllowedIps, Vec<String>>, details: &mut ValidationDetails) -> AllowedIps {
    parsed.unwrap_or_else(|problems| {
        for problem in problems {
            details.add("allowed_ips", problem);
        }
        AllowedIps::default()
    })
}

/// Longest place (URL) and names kept from a leak report; longer ones are cut.
pub const MAX_LEAK_URL_CHARS: usize = 2_000;
pub const MAX_LEAK_NAME_CHARS: usize = 100;

/// Which of the key's secrets hashes to `hash` at `now`, if any.
fn which_secret(key: &ApiKey, hash: &KeyHash, now: DateTime<Utc>) -> Option<LeakedSecret> {
    if key.key_hash == *hash {
        return Some(LeakedSecret::Current);
    }
    key.previous
        .as_ref()
        .filter(|p| p.key_hash == *hash && p.valid_until > now)
        .map(|_| LeakedSecret::Previous)
}

fn decide_leak(key: &ApiKey, report: ReportLeak, now: DateTime<Utc>) -> Result<Vec<KeyEvent>, DomainError> {
    let Some(secret) = which_secret(key, &report.key_hash, now) else {
        // Retired (regenerated away, its grace over) or never the key's.
        return Err(DomainError::Conflict(
            "the reported secret is no longer a secret of this key".into(),
        ));
    };
    // Recorded once: the same secret found again changes nothing.
    if secret == LeakedSecret::Current && key.leaked_at.is_some() {
        return Ok(vec![]);
    }
    let mut events = vec![KeyEvent::Leaked(KeyLeaked {
        url: clean(&report.url, MAX_LEAK_URL_CHARS),
        source: clean(&report.source, MAX_LEAK_NAME_CHARS),
        token_type: clean(&report.token_type, MAX_LEAK_NAME_CHARS),
        reported_at: now,
        reporter_key_id: clean(&report.reporter_key_id, MAX_LEAK_NAME_CHARS),
        secret,
        action: report.action,
    })];
    // Only the current secret's leak deactivates the key: a leaked previous
    // secret just stops (see `evolve`), and the current one did not leak.
    if secret == LeakedSecret::Current
        && report.action == LeakAction::Deactivate
        && key.status_at(now) == KeyStatus::Active
    {
        events.push(KeyEvent::Deactivated(Empty {}));
    }
    Ok(events)
}

/// Scanner-supplied text as it is kept: control characters dropped, at
/// most `max` characters.
fn clean(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

fn decide_update(key: &ApiKey, u: UpdateKey, now: DateTime<Utc>) -> Result<Vec<KeyEvent>, DomainError> {
    refuse_if_expired(key, now, "edited")?;
    let mut details = ValidationDetails::default();
    let name = u.name.and_then(|n| n.map_err(|p| details.add("name", p)).ok());
    let scopes = u
        .scopes
        .as_deref()
        .map(|parsed| check_scopes(parsed, Some(key.key_type), &mut details));
    check_expiry(u.expires_at.flatten(), now, &mut details);
    let allowed_ips = u.allowed_ips.map(|parsed| check_allowed_ips(parsed, &mut details));
    details.into_result()?;
    // Only what really changes is recorded; an edit that changes nothing appends nothing.
    let change = KeyUpdated {
        name: name.filter(|n| *n != key.name),
        scopes: scopes.filter(|s| *s != key.scopes),
        expires_at: u.expires_at.filter(|e| *e != key.expires_at),
        allowed_ips: allowed_ips.filter(|a| *a != key.allowed_ips),
    };
    Ok(if change == KeyUpdated::default() {
        vec![]
    } else {
        vec![KeyEvent::Updated(change)]
    })
}

#[cfg(test)]
mod tests;
