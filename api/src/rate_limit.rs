//! Rate limiting: a sliding one-minute window counted in one-second buckets.
//!
//! Accuracy: a request is admitted when fewer than `limit` requests were
//! admitted in the current second and the 59 before it. So at most `limit`
//! requests are admitted in any window of 59–60 seconds (a request counts
//! for its whole second); unlike a fixed window there is no double burst at
//! a window edge, and unlike a token bucket the first minute gets exactly
//! `limit`. Refused requests do not consume budget.
//!
//! Memory: 60 buckets (720 bytes) per active subject; subjects idle for a
//! minute are swept, and the table never holds more than `capacity`.
//!
//! Scope: each API process enforces limits in its own memory; see the README
//! ("Rate limits with several replicas").

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

const WINDOW: u64 = 60;
const SHARDS: usize = 16;

/// The answer to one request, and what the `X-RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Unix seconds when the budget next grows (the oldest counted second
    /// leaves the window).
    pub reset: u64,
    /// Seconds to wait before retrying (for `Retry-After`).
    pub retry_after: u64,
}

#[derive(Clone)]
struct Window {
    /// (second, count) by `second % 60`.
    buckets: [(u64, u32); WINDOW as usize],
    last_second: u64,
}

impl Window {
    fn new() -> Window {
        Window {
            buckets: [(0, 0); WINDOW as usize],
            last_second: 0,
        }
    }

    /// The counted (second, count) buckets of the window at `now`, oldest first.
    fn counted(&self, now: u64) -> Vec<(u64, u32)> {
        let mut counted: Vec<(u64, u32)> = self
            .buckets
            .iter()
            .copied()
            .filter(|&(second, count)| count > 0 && second + WINDOW > now && second <= now)
            .collect();
        counted.sort_unstable();
        counted
    }

    /// What a request at `now` would get, without counting it.
    fn assess(&self, limit: u32, now: u64) -> Decision {
        // The common case — room left — needs only the sum and the oldest
        // counted second: no allocation, no sort.
        let (mut used, mut oldest) = (0u32, None::<u64>);
        for &(second, count) in &self.buckets {
            if count > 0 && second + WINDOW > now && second <= now {
                used += count;
                oldest = Some(oldest.map_or(second, |o| o.min(second)));
            }
        }
        if used < limit {
            return Decision {
                allowed: true,
                limit,
                remaining: limit - used,
                reset: oldest.unwrap_or(now) + WINDOW,
                retry_after: 0,
            };
        }
        let counted = self.counted(now);
        // Room returns once enough of the oldest seconds have left — after a
        // plan downgrade that can take more than the oldest one.
        let mut left = used;
        let mut reset = now + WINDOW;
        for (second, count) in counted {
            left -= count;
            if left < limit {
                reset = second + WINDOW;
                break;
            }
        }
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset,
            retry_after: reset.saturating_sub(now).max(1),
        }
    }
}

/// Windows per subject: a key (by id) or a client address (its guard subject).
pub struct RateLimiter<K> {
    shards: Vec<Mutex<HashMap<K, Window>>>,
    capacity_per_shard: usize,
}

fn shard_of<Q: Hash + ?Sized>(subject: &Q) -> usize {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    subject.hash(&mut hasher);
    hasher.finish() as usize % SHARDS
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(capacity: usize) -> RateLimiter<K> {
        RateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            capacity_per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// Admits (and counts) one request of `subject` under `limit` per minute
    /// at Unix second `now`, or refuses it.
    pub fn check<Q>(&self, subject: &Q, limit: u32, now: u64) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut shard = self.shards[shard_of(subject)].lock().expect("limiter lock");
        // The subject is only copied the first time it is seen.
        if !shard.contains_key(subject) {
            if shard.len() >= self.capacity_per_shard {
                shard.retain(|_, w| w.last_second + WINDOW > now);
            }
            if shard.len() >= self.capacity_per_shard {
                // Still full of active subjects: forget the least recent one.
                if let Some(oldest) = shard.iter().min_by_key(|(_, w)| w.last_second).map(|(k, _)| k.clone()) {
                    shard.remove::<K>(&oldest);
                }
            }
            shard.insert(subject.to_owned(), Window::new());
        }
        let window = shard.get_mut(subject).expect("inserted above");
        let decision = window.assess(limit, now);
        if !decision.allowed {
            return decision;
        }
        let slot = &mut window.buckets[(now % WINDOW) as usize];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 += 1;
        window.last_second = now;
        Decision {
            remaining: decision.remaining - 1,
            ..decision
        }
    }

    /// What a request of `subject` would get, without counting it (for
    /// answers that refuse a key before it may spend its budget).
    pub fn peek<Q>(&self, subject: &Q, limit: u32, now: u64) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shards[shard_of(subject)].lock().expect("limiter lock");
        match shard.get(subject) {
            Some(window) => window.assess(limit, now),
            None => Window::new().assess(limit, now),
        }
    }

    /// How many requests `subject` made in the window (without counting one).
    pub fn used<Q>(&self, subject: &Q, now: u64) -> u32
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shards[shard_of(subject)].lock().expect("limiter lock");
        shard.get(subject).map_or(0, |w| {
            w.buckets
                .iter()
                .filter(|&&(second, count)| count > 0 && second + WINDOW > now && second <= now)
                .map(|b| b.1)
                .sum()
        })
    }

    /// Drops subjects idle for a whole window.
    pub fn sweep(&self, now: u64) {
        for shard in &self.shards {
            shard
                .lock()
                .expect("limiter lock")
                .retain(|_, w| w.last_second + WINDOW > now);
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().expect("limiter lock").len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_limit_is_admitted_in_a_minute_and_the_headers_count_down() {
        let limiter = RateLimiter::<String>::new(1_000);
        let start = 1_800_000_000;
        for i in 0..100u32 {
            let d = limiter.check("k", 100, start + u64::from(i) / 10);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 99 - i);
            assert_eq!(d.reset, start + 60);
        }
        let refused = limiter.check("k", 100, start + 30);
        assert!(!refused.allowed);
        assert_eq!((refused.remaining, refused.retry_after), (0, 30));
        // The first second's requests leave the window at start + 60.
        assert!(!limiter.check("k", 100, start + 59).allowed);
        let later = limiter.check("k", 100, start + 60);
        assert!(later.allowed);
        assert_eq!(limiter.used("k", start + 60), 91);
    }

    #[test]
    fn no_double_burst_at_a_window_edge() {
        let limiter = RateLimiter::<String>::new(1_000);
        let start = 1_800_000_000;
        let admitted = (0..120)
            .filter(|i| limiter.check("k", 10, start + 55 + i / 20).allowed)
            .count();
        assert_eq!(admitted, 10, "10 per rolling minute, even across a minute boundary");
    }

    #[test]
    fn a_lower_limit_applies_at_once_and_memory_stays_bounded() {
        let limiter = RateLimiter::<String>::new(32);
        let now = 1_800_000_000;
        for _ in 0..5 {
            limiter.check("k", 1_000, now);
        }
        let downgraded = limiter.check("k", 5, now + 10);
        assert!(!downgraded.allowed);
        assert_eq!(
            downgraded.retry_after, 50,
            "room returns only when the 5 of second 0 leave"
        );
        assert_eq!(limiter.peek("k", 1_000, now + 10).remaining, 995, "peek counts nothing");
        for i in 0..10_000 {
            limiter.check(&format!("subject {i}"), 10, now);
        }
        assert!(limiter.len() <= 32 + SHARDS, "{}", limiter.len());
        limiter.sweep(now + 61);
        assert!(limiter.is_empty());
    }
}
