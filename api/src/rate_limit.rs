//! Rate limiting: a sliding one-minute window counted in one-second buckets.
//!
//! Accuracy: a request is admitted when fewer than `limit` requests were
//! admitted in the current second and the 59 before it. So at most `limit`
//! requests are admitted in any window of 59–60 seconds (a request counts
//! for its whole second); unlike a fixed window there is no double burst at
//! a window edge, and unlike a token bucket the first minute gets exactly
//! `limit`. Refused requests do not consume budget.
//!
//! Memory: 60 buckets and a tally (1,000 bytes, plus the subject and the
//! table's own overhead) per active subject; subjects idle for a
//! minute are swept, and the table never holds more than `capacity`.
//!
//! Scope: each API process enforces limits in its own memory; see the README
//! ("Rate limits with several replicas").

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;

use foldhash::fast::RandomState;

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
    /// The window's sum as of one second, kept by [`RateLimiter::check`]:
    /// a busy subject's requests in the same second read it instead of
    /// summing the 60 buckets each (that sum was a fiftieth of a check).
    tally: Tally,
}

/// What the window held at second `at`: the requests counted and the
/// oldest counted second. An empty window's tally holds at any second.
#[derive(Clone, Copy, Default)]
struct Tally {
    at: u64,
    used: u32,
    oldest: Option<u64>,
}

impl Window {
    fn new() -> Window {
        Window {
            buckets: [(0, 0); WINDOW as usize],
            last_second: 0,
            tally: Tally::default(),
        }
    }

    /// The window's tally at `now`: the one kept, if it is of `now`.
    fn tally(&self, now: u64) -> Tally {
        if self.tally.at == now {
            return self.tally;
        }
        let mut tally = Tally {
            at: now,
            ..Tally::default()
        };
        for &(second, count) in &self.buckets {
            if count > 0 && second + WINDOW > now && second <= now {
                tally.used += count;
                tally.oldest = Some(tally.oldest.map_or(second, |o| o.min(second)));
            }
        }
        tally
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
        self.assess_tally(limit, now, self.tally(now))
    }

    /// [`Window::assess`] given the window's tally at `now`.
    fn assess_tally(&self, limit: u32, now: u64, tally: Tally) -> Decision {
        // The common case — room left — needs only the sum and the oldest
        // counted second: no allocation, no sort.
        let Tally { used, oldest, .. } = tally;
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
    shards: Vec<Mutex<Shard<K>>>,
    /// Picks a subject's shard; each shard's table hashes with its own seed.
    sharding: RandomState,
    capacity_per_shard: usize,
}

/// A shard's table. foldhash, seeded per process, rather than SipHash: the
/// subjects are key ids keyledger made and client addresses, and hashing
/// was a tenth of a check.
type Shard<K> = HashMap<K, Window, RandomState>;

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(capacity: usize) -> RateLimiter<K> {
        RateLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            sharding: RandomState::default(),
            capacity_per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// The locked shard that holds `subject`.
    fn shard<Q: Hash + ?Sized>(&self, subject: &Q) -> std::sync::MutexGuard<'_, Shard<K>> {
        let index = self.sharding.hash_one(subject) as usize % SHARDS;
        self.shards[index].lock().expect("limiter lock")
    }

    /// Admits (and counts) one request of `subject` under `limit` per minute
    /// at Unix second `now`, or refuses it.
    pub fn check<Q>(&self, subject: &Q, limit: u32, now: u64) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut shard = self.shard(subject);
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
        let tally = window.tally(now);
        let decision = window.assess_tally(limit, now, tally);
        if !decision.allowed {
            window.tally = tally;
            return decision;
        }
        // The slot of `now` held, if anything, a second outside the window
        // at `now`: emptying it leaves the tally as it was.
        let slot = &mut window.buckets[(now % WINDOW) as usize];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 += 1;
        window.last_second = now;
        window.tally = Tally {
            at: now,
            used: tally.used + 1,
            oldest: Some(tally.oldest.map_or(now, |o| o.min(now))),
        };
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
        let shard = self.shard(subject);
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
        let shard = self.shard(subject);
        shard.get(subject).map_or(0, |w| w.tally(now).used)
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
    fn the_kept_tally_decides_as_summing_the_buckets_would() {
        let limiter = RateLimiter::<String>::new(1_000);
        let start = 1_800_000_000u64;
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        let mut now = start;
        for step in 0..20_000 {
            // Mostly forward, sometimes a second back (two workers' clocks
            // read a moment apart), sometimes a jump; the limit changes too.
            now = match next(100) {
                0..=79 => now,
                80..=94 => now + 1,
                95..=97 => now.saturating_sub(1),
                _ => now + next(70),
            };
            let limit = [5, 20, 50][(step / 3_000) % 3];
            let expected = {
                let shard = limiter.shard("k");
                let mut window = shard.get("k").cloned().unwrap_or_else(Window::new);
                window.tally = Tally {
                    at: u64::MAX,
                    ..Tally::default()
                };
                window.assess(limit, now)
            };
            let decided = limiter.check("k", limit, now);
            assert_eq!(
                decided,
                Decision {
                    remaining: expected.remaining.saturating_sub(u32::from(expected.allowed)),
                    ..expected
                },
                "step {step} at {}",
                now - start
            );
        }
        assert_eq!(
            std::mem::size_of::<Window>(),
            1_000,
            "as the module's documentation says"
        );
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
