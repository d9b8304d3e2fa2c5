//! State that every server worker thread writes on every request — the
//! verification counts, the key cache's hits, the usage table — kept as one
//! stripe per thread, each on cache lines of its own. A count shared by all
//! threads is one cache line passed from core to core at each request, a
//! wait that grows with the cores; a stripe stays in its thread's core.
//! Readers (`/metrics`, the usage flush) visit every stripe.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How many stripes. Threads are dealt them in turn, so two threads may
/// share one (correct, only slower): always beyond this many, and now and
/// then before, since a thread that has ended keeps its turn.
const STRIPES: usize = 16;

/// A value alone on its cache lines (two, as the prefetcher pairs them).
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// The calling thread's stripe, dealt in turn when it first asks.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|stripe| *stripe)
}

/// One `T` per stripe.
pub struct Striped<T> {
    stripes: Box<[Padded<T>]>,
}

impl<T: Default> Default for Striped<T> {
    fn default() -> Self {
        Striped {
            stripes: (0..STRIPES).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T> Striped<T> {
    /// The calling thread's `T`.
    pub fn mine(&self) -> &T {
        &self.stripes[stripe()].0
    }

    /// Every stripe's `T`.
    pub fn all(&self) -> impl Iterator<Item = &T> {
        self.stripes.iter().map(|padded| &padded.0)
    }
}

/// A counter: each thread adds to its own stripe, readers sum them.
pub type Counter = Striped<AtomicU64>;

impl Counter {
    pub fn add(&self, n: u64) {
        self.mine().fetch_add(n, Ordering::Relaxed);
    }

    pub fn sum(&self) -> u64 {
        self.all().map(|count| count.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::{Counter, STRIPES};

    #[test]
    fn counts_from_many_threads_add_up() {
        let counter = Counter::default();
        std::thread::scope(|scope| {
            for _ in 0..2 * STRIPES {
                scope.spawn(|| (0..1_000).for_each(|_| counter.add(1)));
            }
        });
        assert_eq!(counter.sum(), 2 * STRIPES as u64 * 1_000);
    }

    #[test]
    fn no_two_stripes_share_a_cache_line() {
        let counter = Counter::default();
        let addresses: Vec<usize> = counter.all().map(|count| count as *const _ as usize).collect();
        assert_eq!(addresses.len(), STRIPES);
        for pair in addresses.windows(2) {
            assert!(pair[1] - pair[0] >= 128, "{addresses:?}");
        }
        // A thread keeps its stripe.
        let (first, again) = std::thread::spawn(move || {
            let first = counter.mine() as *const _ as usize;
            (first, counter.mine() as *const _ as usize)
        })
        .join()
        .unwrap();
        assert_eq!(first, again);
    }

    #[test]
    fn threads_living_at_once_count_on_stripes_of_their_own() {
        // Two threads alive together are dealt consecutive turns unless
        // other threads (other tests) ask in between: of a few pairs, one
        // that shares a stripe could only do so by such a coincidence; all
        // of them sharing means one stripe for everybody.
        let counter = Counter::default();
        let shared = (0..4)
            .filter(|_| {
                let barrier = std::sync::Barrier::new(2);
                let stripe = || {
                    let mine = counter.mine() as *const _ as usize;
                    barrier.wait();
                    mine
                };
                let (a, b) = std::thread::scope(|scope| {
                    let a = scope.spawn(stripe);
                    let b = scope.spawn(stripe);
                    (a.join().unwrap(), b.join().unwrap())
                });
                a == b
            })
            .count();
        assert!(shared < 4, "every pair of threads shared one stripe");
    }
}
