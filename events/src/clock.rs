//! The time every part of keyledger reads: the system clock, moved by an
//! offset that only tests set. The API takes one at start and reads it once
//! per request; a test that needs a key to expire or a grace period to end
//! moves the clock forward instead of waiting for the wall clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

/// The system time plus an offset (zero unless a test moves it). Clones
/// share the offset, so moving one moves every part that holds a copy.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_micros: Arc<AtomicI64>,
}

impl Clock {
    /// The system clock (what production runs on).
    pub fn system() -> Clock {
        Clock::default()
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::microseconds(self.offset_micros.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every copy of it) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let micros = by.num_microseconds().expect("an advance of less than 292,000 years");
        self.offset_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// The moment a step of a worker was given, moved on by the real time the
/// step has taken since: leases and retry times stay true however long a
/// batch of sends lasts (the mailer's, the webhook sender's).
pub struct StepClock {
    start: DateTime<Utc>,
    started: std::time::Instant,
}

impl StepClock {
    pub fn starting_at(start: DateTime<Utc>) -> StepClock {
        StepClock {
            start,
            started: std::time::Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.start + Duration::from_std(self.started.elapsed()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_a_copy_moves_every_copy() {
        let clock = Clock::system();
        let copy = clock.clone();
        let before = clock.now();
        copy.advance(Duration::days(3));
        let moved = clock.now() - before;
        assert!(moved >= Duration::days(3) && moved < Duration::days(3) + Duration::minutes(1));
    }
}
