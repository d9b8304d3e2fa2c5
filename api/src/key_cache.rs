//! The key cache: keyed-hash → key snapshot (with its organization's rate
//! limit), so verifying a known key touches no database.
//!
//! Freshness: every append notifies `keyledger_events`; each API process
//! listens and evicts the keys (or the organization's keys) concerned, so a
//! revocation is seen everywhere within milliseconds. Entries also expire
//! after a short TTL, so a lost notification cannot keep a revoked key
//! alive; and if the listening connection drops, the whole cache is cleared.
//!
//! Unknown keys are cached too (negatively), so a flood of well-formed but
//! unknown keys costs one query per key per TTL; malformed keys never reach
//! the cache (the parser refuses them). Memory is bounded by `capacity`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keyledger_events::domain::KeyHash;
use keyledger_events::log::NOTIFY_CHANNEL;
use keyledger_events::read_model::{self, KeyRow};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;

/// A key as verification needs it.
#[derive(Debug, Clone)]
pub struct CachedKey {
    pub row: KeyRow,
    /// The organization's per-key limit, requests per minute.
    pub limit_per_minute: u32,
}

#[derive(Clone)]
enum Entry {
    Known(Arc<CachedKey>),
    Unknown,
}

struct Slot {
    entry: Entry,
    expires: Instant,
}

pub struct KeyCache {
    slots: RwLock<HashMap<[u8; 32], Slot>>,
    ttl: Duration,
    capacity: usize,
    /// Bumped by every eviction: a lookup that raced one does not cache
    /// what it read (it may predate the change).
    generation: AtomicU64,
    /// Lookups that went to the database (a metric, and what tests assert).
    pub database_lookups: AtomicU64,
    pub hits: AtomicU64,
}

impl KeyCache {
    pub fn new(ttl: Duration, capacity: usize) -> KeyCache {
        KeyCache {
            slots: RwLock::default(),
            ttl,
            capacity,
            generation: AtomicU64::new(0),
            database_lookups: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    /// The key whose secret hashes to `hash`, from memory when possible.
    pub async fn lookup(&self, pool: &PgPool, hash: &KeyHash) -> Result<Option<Arc<CachedKey>>, sqlx::Error> {
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
    ) -> Result<Option<Arc<CachedKey>>, sqlx::Error> {
        if let Some(slot) = self.slots.read().expect("cache lock").get(&hash.0) {
            if slot.expires > Instant::now() {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(match &slot.entry {
                    Entry::Known(key) => Some(key.clone()),
                    Entry::Unknown => None,
                });
            }
        }
        self.database_lookups.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::SeqCst);
        let now = Utc::now();
        let found = read_model::key_for_verification(pool, hash, now).await?;
        let mut expires = Instant::now() + self.ttl;
        let entry = match found {
            Some((row, limit, grace_until)) => {
                // A regenerated-away secret must not outlive its grace period.
                if let Some(until) = grace_until {
                    expires = expires.min(Instant::now() + until_instant(until, now));
                }
                Entry::Known(Arc::new(CachedKey {
                    row,
                    limit_per_minute: limit.max(0) as u32,
                }))
            }
            None => Entry::Unknown,
        };
        after_read().await;
        self.insert(
            hash.0,
            Slot {
                entry: entry.clone(),
                expires,
            },
            generation,
        );
        Ok(match entry {
            Entry::Known(key) => Some(key),
            Entry::Unknown => None,
        })
    }

    fn insert(&self, hash: [u8; 32], slot: Slot, generation: u64) {
        let mut slots = self.slots.write().expect("cache lock");
        // Checked under the lock evictions take: no eviction can slip between.
        if self.generation.load(Ordering::SeqCst) != generation {
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

    /// Forgets every entry of the key or organization a notification names,
    /// and (like [`KeyCache::clear`]) bumps the generation, so no lookup that
    /// read the database before the change caches what it read.
    pub fn evict_stream(&self, stream_id: &str) {
        let Some((kind, id)) = stream_id.split_once('-') else {
            return;
        };
        let mut slots = self.slots.write().expect("cache lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        slots.retain(|_, slot| match &slot.entry {
            Entry::Known(key) => match kind {
                "key" => key.row.id != id,
                "org" => key.row.org_id != id,
                _ => true,
            },
            Entry::Unknown => true,
        });
    }

    pub fn clear(&self) {
        let mut slots = self.slots.write().expect("cache lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        slots.clear();
    }

    pub fn len(&self) -> usize {
        self.slots.read().expect("cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies notifications until `shutdown`; reconnects (clearing the
    /// cache, since notifications may have been missed) when the connection
    /// drops.
    pub async fn listen(self: Arc<Self>, pool: PgPool, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
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
            self.clear();
            loop {
                tokio::select! {
                    changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return },
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => {
                            let (stream, types) = notification.payload().split_once(' ').unwrap_or((notification.payload(), ""));
                            // Usage records change nothing verification reads.
                            if types.split(',').any(|t| t != keyledger_events::handler::USAGE_EVENT) {
                                self.evict_stream(stream);
                            }
                        }
                        Ok(None) | Err(_) => {
                            tracing::warn!("key cache: notification connection lost; clearing the cache");
                            self.clear();
                            break;
                        }
                    },
                }
            }
        }
    }
}

fn until_instant(until: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    (until - now).to_std().unwrap_or(Duration::ZERO)
}
