//! The key cache: keyed-hash → key snapshot (with its organization's rate
//! limit), so verifying a known key touches no database.
//!
//! Freshness: every change to a key or an organization notifies
//! `keyledger_events` as it commits (new keys and usage records are
//! announced just after, and this cache ignores both); each API process
//! listens and evicts the keys (or the organization's keys) concerned, so a
//! revocation is seen everywhere within milliseconds. Entries also expire
//! after a short TTL, so a lost notification cannot keep a revoked key
//! alive. When the listening connection drops, and again when it is back,
//! every entry becomes unconfirmed: it is read again from the database
//! before it is trusted (notifications may have been missed meanwhile).
//!
//! Database outages: an entry that was fresh when the outage began keeps
//! its answer — valid, inactive, or expired by the clock — for the outage
//! grace (`KEYLEDGER_OUTAGE_GRACE_SECONDS`), even past its TTL, while the
//! database cannot confirm it; a key the cache cannot answer fails closed
//! (`503 unavailable`). A regenerated-away secret never outlives its own
//! grace period. Grace 0 fails closed at once.
//!
//! Unknown keys are cached too (negatively), so a flood of well-formed but
//! unknown keys costs one query per key per TTL; malformed keys never reach
//! the cache (the parser refuses them). Memory is bounded by `capacity`.
//!
//! Single flight: when an entry is missing or has expired, the first
//! lookup reads the database and every concurrent lookup of the same key
//! waits for its answer instead of querying too — one query per key per
//! TTL, however many requests arrive at once (without it, a busy key's
//! expiry sent every in-flight request to the connection pool together).
//!
//! Read ahead: in the last tenth of its TTL an entry is due. The first
//! lookup then reads the database as at expiry, while every other lookup
//! keeps answering from the entry, still fresh, instead of waiting: a busy
//! key no longer holds all its requests for one database read every TTL.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderValue;
use chrono::{DateTime, Utc};
use keyledger_events::domain::{KeyHash, KeyId, OrgId};
use keyledger_events::log::NOTIFY_CHANNEL;
use keyledger_events::read_model::{self, KeyRow};
use keyledger_events::shutdown::Shutdown;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

/// Lookups reading the database now, by key hash: the receiver wakes (with
/// an error) when the reading lookup ends, however it ends.
type Flights = std::sync::Mutex<ByKeyHash<watch::Receiver<()>>>;

/// A table by key hash. The hash is a keyed BLAKE3 output — uniform, and
/// not to be steered without the server's hash key — so its own first
/// bytes serve as the table's hash: hashing it again (SipHash over 32
/// bytes) was a fortieth of a verification's instructions.
type ByKeyHash<V> = HashMap<[u8; 32], V, BuildHasherDefault<KeyHashHasher>>;

#[derive(Default)]
struct KeyHashHasher(u64);

impl Hasher for KeyHashHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    /// Folds in the first eight bytes of each write (the array's length,
    /// then the hash itself).
    fn write(&mut self, bytes: &[u8]) {
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(first);
    }
}

use crate::db_health::{is_unavailable, DatabaseHealth};
use crate::error::ApiError;
use crate::striped::Counter;

/// A key as verification needs it.
#[derive(Debug, Clone)]
pub struct CachedKey {
    pub row: KeyRow,
    /// The organization's per-key limit, requests per minute.
    pub limit_per_minute: u32,
    /// The key's and its organization's ids as header values, made once per
    /// read (forward-auth answers carry them to the upstream).
    pub id_header: HeaderValue,
    pub org_header: HeaderValue,
}

impl CachedKey {
    pub fn new(row: KeyRow, limit_per_minute: u32) -> CachedKey {
        // An id's text is letters and digits: always a valid header value.
        let header = |text: String| HeaderValue::try_from(text).expect("an id is a valid header value");
        CachedKey {
            id_header: header(row.id.to_string()),
            org_header: header(row.org_id.to_string()),
            row,
            limit_per_minute,
        }
    }
}

#[derive(Clone)]
enum Entry {
    Known(Arc<CachedKey>),
    Unknown,
}

struct Slot {
    entry: Entry,
    /// End of the TTL (or sooner: a regenerated-away secret's grace end).
    expires: Instant,
    /// From then on the entry is due to be read again ahead of `expires`.
    due: Instant,
    /// When the database last confirmed this entry.
    confirmed: Instant,
    /// The listener epoch it was confirmed in; an older one must be read
    /// again before it is trusted.
    epoch: u64,
    /// A regenerated-away secret stops working then, whatever else happens.
    hard_expiry: Option<DateTime<Utc>>,
}

pub struct KeyCache {
    slots: RwLock<ByKeyHash<Slot>>,
    ttl: Duration,
    capacity: usize,
    /// Bumped by every eviction: a lookup that raced one of its key (or
    /// organization) does not cache what it read (it may predate the change).
    generation: AtomicU64,
    /// The latest evictions (at most [`EVICTION_LOG`]), each with the
    /// generation it bumped to, oldest first; written under the slots' lock.
    evictions: Mutex<VecDeque<(u64, Evicted)>>,
    /// Bumped when the notification listener drops and when it is back:
    /// entries of an older epoch are unconfirmed.
    epoch: AtomicU64,
    /// How long into a database outage entries keep their answers.
    outage_grace: Duration,
    database: Arc<DatabaseHealth>,
    /// Lookups that went to the database (a metric, and what tests assert).
    pub database_lookups: AtomicU64,
    /// Lookups answered from memory ([`Counter`]: every hit counts).
    pub hits: Counter,
    /// Lookups that waited for another lookup's database read of the same
    /// key (single flight) instead of reading it themselves.
    pub single_flight_waits: AtomicU64,
    flights: Flights,
    /// Answers given from an entry the database could not confirm (outage).
    pub outage_answers: AtomicU64,
}

impl KeyCache {
    pub fn new(ttl: Duration, capacity: usize, outage_grace: Duration, database: Arc<DatabaseHealth>) -> KeyCache {
        KeyCache {
            slots: RwLock::default(),
            ttl,
            capacity,
            generation: AtomicU64::new(0),
            evictions: Mutex::default(),
            epoch: AtomicU64::new(0),
            outage_grace,
            database,
            database_lookups: AtomicU64::new(0),
            hits: Counter::default(),
            single_flight_waits: AtomicU64::new(0),
            flights: Flights::default(),
            outage_answers: AtomicU64::new(0),
        }
    }

    /// The key whose secret hashes to `hash`, from memory when possible.
    /// `503 unavailable` when only the database could answer and it cannot.
    pub async fn lookup(&self, pool: &PgPool, hash: &KeyHash) -> Result<Option<Arc<CachedKey>>, ApiError> {
        self.lookup_with(pool, hash, || async {}).await
    }

    /// [`KeyCache::lookup`], running `after_read` between a miss's database
    /// read and its insert — where a racing eviction must win (tests put one
    /// there). A test hook, hidden from the documentation: callers use
    /// [`KeyCache::lookup`].
    #[doc(hidden)]
    pub async fn lookup_with<F: std::future::Future<Output = ()>>(
        &self,
        pool: &PgPool,
        hash: &KeyHash,
        after_read: impl FnOnce() -> F,
    ) -> Result<Option<Arc<CachedKey>>, ApiError> {
        // Waiting for another lookup's read happens at most twice; then this
        // one reads for itself (the other's answer may not have been stored:
        // an eviction raced it).
        let mut waited = 0;
        // The request's time: a regenerated-away secret ends by it, so a
        // test that moves the clock past a grace period sees it end.
        let now = crate::clock::now();
        let (cached, _flight, ahead) = loop {
            let instant = Instant::now();
            let cached = self.slots.read().expect("cache lock").get(&hash.0).map(|slot| Cached {
                entry: slot.entry.clone(),
                fresh: slot.expires > instant
                    && slot.epoch == self.epoch.load(Ordering::SeqCst)
                    && slot.hard_expiry.is_none_or(|until| now < until),
                due: slot.due <= instant,
                confirmed: slot.confirmed,
                hard_expiry: slot.hard_expiry,
            });
            if let Some(cached) = cached.as_ref().filter(|c| c.fresh) {
                // Due: one lookup reads ahead, the others answer meanwhile
                // (not while the database is known to be down).
                if cached.due && !self.database.is_down() {
                    if let Ok(flight) = self.take_flight(hash.0) {
                        break (Some(cached.clone()), Some(flight), true);
                    }
                }
                self.hits.add(1);
                return Ok(cached.entry.answer());
            }
            if self.database.is_down() {
                return self.outage_answer(cached, now);
            }
            match self.take_flight(hash.0) {
                Ok(flight) => break (cached, Some(flight), false),
                Err(mut landed) if waited < 2 => {
                    waited += 1;
                    self.single_flight_waits.fetch_add(1, Ordering::Relaxed);
                    // An error: the reading lookup has ended.
                    let _ = landed.changed().await;
                }
                Err(_) => break (cached, None, false),
            }
        };
        // A read ahead that fails leaves the entry, fresh, to answer.
        let unread = |cached: Option<Cached>| match cached {
            Some(cached) if ahead => Ok(cached.entry.answer()),
            cached => self.outage_answer(cached, now),
        };
        self.database_lookups.fetch_add(1, Ordering::Relaxed);
        let (generation, epoch) = (
            self.generation.load(Ordering::SeqCst),
            self.epoch.load(Ordering::SeqCst),
        );
        // A read: when the probe finds the database down meanwhile, give up
        // waiting for a connection and answer as in an outage.
        let query = read_model::key_for_verification(pool, hash, now);
        let result = tokio::select! {
            biased;
            _ = self.database.outage() => return unread(cached),
            result = query => result,
        };
        let found = match result {
            Ok(found) => found,
            Err(e) if is_unavailable(&e) => {
                self.database.observe(&e);
                return unread(cached);
            }
            Err(e) if ahead => {
                tracing::warn!(error = %e, "reading a cached key ahead of its expiry failed; the entry answers until then");
                return unread(cached);
            }
            Err(e) => return Err(e.into()),
        };
        let confirmed = Instant::now();
        let mut slot = Slot {
            entry: Entry::Unknown,
            expires: confirmed + self.ttl,
            due: confirmed + self.ttl - self.ttl / READ_AHEAD,
            confirmed,
            epoch,
            hard_expiry: None,
        };
        if let Some((row, limit, grace_until)) = found {
            // A regenerated-away secret must not outlive its grace period.
            if let Some(until) = grace_until {
                slot.expires = slot.expires.min(confirmed + until_instant(until, now));
                slot.hard_expiry = Some(until);
            }
            slot.entry = Entry::Known(Arc::new(CachedKey::new(row, limit.max(0) as u32)));
        }
        let answer = slot.entry.answer();
        after_read().await;
        self.insert(hash.0, slot, generation);
        Ok(answer)
    }

    /// Moves every entry `by` nearer its expiry, as if the database had
    /// confirmed it that much earlier (tests reach an entry's last tenth
    /// without waiting for it). A test hook, hidden from the documentation.
    #[doc(hidden)]
    pub fn age(&self, by: Duration) {
        for slot in self.slots.write().expect("cache lock").values_mut() {
            for instant in [&mut slot.expires, &mut slot.due, &mut slot.confirmed] {
                *instant = instant.checked_sub(by).unwrap_or(*instant);
            }
        }
    }

    /// This lookup's turn to read `hash` from the database, or (`Err`) the
    /// lookup already reading it, to wait for.
    fn take_flight(&self, hash: [u8; 32]) -> Result<Flight<'_>, watch::Receiver<()>> {
        let mut flights = self.flights.lock().expect("flights lock");
        if let Some(landed) = flights.get(&hash) {
            return Err(landed.clone());
        }
        let (sender, receiver) = watch::channel(());
        flights.insert(hash, receiver);
        Ok(Flight {
            flights: &self.flights,
            hash,
            _sender: sender,
        })
    }

    /// The answer while the database cannot confirm anything: what an entry
    /// said when the outage began, within the grace; otherwise fail closed.
    fn outage_answer(&self, cached: Option<Cached>, now: DateTime<Utc>) -> Result<Option<Arc<CachedKey>>, ApiError> {
        let Some(cached) = cached else {
            return Err(ApiError::Unavailable);
        };
        let Some((outage_began, _)) = self.database.down_since() else {
            return Err(ApiError::Unavailable);
        };
        // Fresh when the outage began (confirmed at most a TTL before it)…
        let fresh_then = cached.confirmed + self.ttl > outage_began;
        // …and the outage is younger than the grace.
        let within_grace = outage_began.elapsed() < self.outage_grace;
        let secret_alive = !matches!(cached.hard_expiry, Some(until) if now >= until);
        if fresh_then && within_grace && secret_alive {
            self.outage_answers.fetch_add(1, Ordering::Relaxed);
            return Ok(cached.entry.answer());
        }
        Err(ApiError::Unavailable)
    }

    fn insert(&self, hash: [u8; 32], slot: Slot, generation: u64) {
        let mut slots = self.slots.write().expect("cache lock");
        // Checked under the lock evictions take: no eviction can slip between.
        if self.generation.load(Ordering::SeqCst) != generation && self.raced(&slot.entry, generation) {
            return;
        }
        if slots.len() >= self.capacity {
            let now = Instant::now();
            slots.retain(|_, s| s.expires > now);
            if slots.len() >= self.capacity {
                slots.retain(|_, s| matches!(s.entry, Entry::Known(_)));
            }
            if slots.len() >= self.capacity {
                slots.clear();
            }
        }
        slots.insert(hash, slot);
    }

    /// Whether an eviction since `generation` may have changed what a
    /// lookup read as `entry`: one of its key or organization, a
    /// [`KeyCache::clear`], any at all for an unknown key (whose id the
    /// cache does not know), or more than the log remembers. A lookup that
    /// merely ran alongside evictions of other keys keeps what it read — it
    /// is also what the key answers in a database outage. Called under the
    /// slots' lock.
    fn raced(&self, entry: &Entry, generation: u64) -> bool {
        let evictions = self.evictions.lock().expect("evictions lock");
        let remembered = evictions.front().is_some_and(|(first, _)| *first <= generation + 1);
        if !remembered {
            return true;
        }
        evictions
            .iter()
            .filter(|(bumped, _)| *bumped > generation)
            .any(|(_, evicted)| match (evicted, entry) {
                (Evicted::All, _) | (_, Entry::Unknown) => true,
                (Evicted::Key(id), Entry::Known(key)) => key.row.id == *id,
                (Evicted::Org(id), Entry::Known(key)) => key.row.org_id == *id,
            })
    }

    /// Bumps the generation for an eviction (under the slots' lock).
    fn bump(&self, evicted: Evicted) {
        let bumped = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let mut evictions = self.evictions.lock().expect("evictions lock");
        if evictions.len() >= EVICTION_LOG {
            evictions.pop_front();
        }
        evictions.push_back((bumped, evicted));
    }

    /// Forgets every entry of the key or organization a notification names,
    /// and (like [`KeyCache::clear`]) bumps the generation, so no lookup that
    /// read that key or organization before the change caches what it read.
    pub fn evict_stream(&self, stream_id: &str) {
        let Some((kind, id)) = stream_id.split_once('-') else {
            return;
        };
        // A stream id this build cannot read may name any key: forget all.
        let evicted = match kind {
            "key" => id.parse().map_or(Evicted::All, Evicted::Key),
            "org" => id.parse().map_or(Evicted::All, Evicted::Org),
            _ => return,
        };
        let mut slots = self.slots.write().expect("cache lock");
        slots.retain(|_, slot| match (&slot.entry, &evicted) {
            (Entry::Known(key), Evicted::Key(id)) => key.row.id != *id,
            (Entry::Known(key), Evicted::Org(id)) => key.row.org_id != *id,
            (Entry::Known(_), Evicted::All) => false,
            (Entry::Unknown, _) => true,
        });
        self.bump(evicted);
    }

    /// Every entry must be confirmed by the database again before it is
    /// trusted; until then each keeps its answer for a database outage. A
    /// lookup that read before this stores what it read with the epoch it
    /// began in: unconfirmed like the others, and kept for an outage as they
    /// are.
    fn unconfirm_all(&self) {
        let _slots = self.slots.write().expect("cache lock");
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        let mut slots = self.slots.write().expect("cache lock");
        self.bump(Evicted::All);
        slots.clear();
    }

    pub fn len(&self) -> usize {
        self.slots.read().expect("cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies notifications until `shutdown`; reconnects when the
    /// connection drops. Notifications may have been missed while it was
    /// down, so every entry is read again before it is trusted — but kept
    /// meanwhile, for answers during a database outage.
    pub async fn listen(self: Arc<Self>, pool: PgPool, shutdown: Shutdown) {
        while !shutdown.is_shutdown() {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(mut listener) => match listener.listen(NOTIFY_CHANNEL).await {
                    Ok(()) => listener,
                    Err(e) => {
                        tracing::warn!(error = %e, "key cache: cannot listen; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "key cache: cannot connect; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // Anything cached before listening may have missed a change.
            self.unconfirm_all();
            loop {
                tokio::select! {
                    _ = shutdown.recv() => return,
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => {
                            let (stream, types) = notification.payload().split_once(' ').unwrap_or((notification.payload(), ""));
                            if evicts(types) {
                                self.evict_stream(stream);
                            }
                        }
                        Ok(None) | Err(_) => {
                            tracing::warn!("key cache: notification connection lost; cached keys are confirmed again before use");
                            self.unconfirm_all();
                            break;
                        }
                    },
                }
            }
        }
    }
}

/// The type of a key's creation.
const KEY_CREATED: &str = "key.created";

/// Whether an append of events of `types` (comma-separated, as notified)
/// can change what a cached entry answers, so its stream's entries must go.
/// Usage records change nothing verification reads. Nor does a key's
/// creation: no entry holds a key not created yet, and no lookup can have
/// cached its secret as unknown, for nobody has the secret before the
/// creation commits. Evicting for them would scan the whole cache under its
/// write lock for every key created.
fn evicts(types: &str) -> bool {
    types
        .split(',')
        .any(|t| t != keyledger_events::handler::USAGE_EVENT && t != KEY_CREATED)
}

/// A lookup's database read of one key; dropping it (the read ended, in
/// any way) wakes the lookups that waited for it.
struct Flight<'a> {
    flights: &'a Flights,
    hash: [u8; 32],
    _sender: watch::Sender<()>,
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.flights.lock().expect("flights lock").remove(&self.hash);
    }
}

/// Evictions remembered for lookups in flight.
const EVICTION_LOG: usize = 1024;

/// What an eviction forgot.
enum Evicted {
    Key(KeyId),
    Org(OrgId),
    All,
}

/// An entry is read again ahead of its expiry in the last `1 / READ_AHEAD`
/// of its TTL.
const READ_AHEAD: u32 = 10;

/// A slot as a lookup saw it.
#[derive(Clone)]
struct Cached {
    entry: Entry,
    fresh: bool,
    /// Due to be read again ahead of its expiry.
    due: bool,
    confirmed: Instant,
    hard_expiry: Option<DateTime<Utc>>,
}

impl Entry {
    fn answer(&self) -> Option<Arc<CachedKey>> {
        match self {
            Entry::Known(key) => Some(key.clone()),
            Entry::Unknown => None,
        }
    }
}

fn until_instant(until: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (until - now).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creations_and_usage_records_evict_nothing_and_every_other_change_does() {
        assert!(!evicts("key.created"));
        assert!(!evicts("key.used"));
        assert!(!evicts("key.used,key.used"));
        assert!(evicts("key.deactivated"));
        assert!(evicts("key.regenerated"));
        assert!(evicts("key.used,key.deleted"));
        assert!(evicts("org.plan_changed"));
        // A type this build does not know may change anything.
        assert!(evicts("key.renamed_in_a_later_version"));
        assert!(evicts(""));
    }
}
