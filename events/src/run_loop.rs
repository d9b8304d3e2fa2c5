//! The loop every background task runs in: a step, then a wait, until
//! [`Shutdown`].
//!
//! A step reports what it did ([`Progress`]) or fails, and the loop picks
//! the wait before the next one ([`Schedule`]):
//!
//! - it did work: the next step at once (there may be more);
//! - it found nothing to do: the poll interval, or less if the task's
//!   [`Wake`] fires first (a PostgreSQL notification, the database being
//!   back);
//! - it failed: the poll interval doubled per failure in a row, up to a
//!   cap, and no early wake-up (a notification does not mend an outage);
//!   the task is told of each failure ([`Task::failed`]) and logs it.
//!
//! Shutdown ends any wait at once; a step is left to finish, unless the
//! schedule says it may be interrupted. The loop returns after shutdown,
//! or when a step says the task is finished; what a task does after that
//! (a last flush, closing connections) follows the call.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use crate::shutdown::Shutdown;

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Something: step again at once.
    Worked,
    /// Nothing to do: wait for the poll interval or a wake-up.
    Idle,
    /// The loop ends (e.g. the relay lost its leader lock).
    Finished,
}

/// When a task steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    poll: Duration,
    max_doublings: u32,
    wait_first: bool,
    interruptible: bool,
}

impl Schedule {
    /// Waits `poll` after an idle step (and after a failure, unless
    /// [`Schedule::doubling_up_to`] says more).
    pub const fn every(poll: Duration) -> Schedule {
        Schedule {
            poll,
            max_doublings: 0,
            wait_first: false,
            interruptible: false,
        }
    }

    /// After the n-th failure in a row, waits `poll × 2^min(n, max)`.
    pub const fn doubling_up_to(self, max: u32) -> Schedule {
        Schedule {
            max_doublings: max,
            ..self
        }
    }

    /// Waits (as after an idle step) before the first step.
    pub const fn waiting_first(self) -> Schedule {
        Schedule {
            wait_first: true,
            ..self
        }
    }

    /// Shutdown interrupts a step too (the step's future is dropped):
    /// for steps that can wait on an outside party for long and leave
    /// nothing half done when dropped.
    pub const fn interrupted_by_shutdown(self) -> Schedule {
        Schedule {
            interruptible: true,
            ..self
        }
    }

    /// The wait after an idle step.
    pub fn poll(&self) -> Duration {
        self.poll
    }

    /// The wait after the `failures`-th failure in a row.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.min(self.max_doublings).min(31);
        self.poll.saturating_mul(1u32 << doublings)
    }
}

/// What may end an idle wait early.
pub trait Wake: Send {
    /// Completes on a wake-up. Dropped when the wait ends otherwise, so it
    /// must lose nothing when dropped (or lose only a wake-up).
    fn woken(&mut self) -> impl Future<Output = ()> + Send;
}

impl<W: Wake> Wake for &mut W {
    fn woken(&mut self) -> impl Future<Output = ()> + Send {
        (**self).woken()
    }
}

/// No wake-ups: idle waits last the poll interval.
pub struct NoWake;

impl Wake for NoWake {
    fn woken(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// A background task's work, one step at a time.
pub trait Task: Send {
    type Error: Send;

    fn step(&mut self) -> impl Future<Output = Result<Progress, Self::Error>> + Send;

    /// Told of the `failures`-th failed step in a row, before the backoff.
    fn failed(&mut self, error: Self::Error, failures: u32);
}

impl<T: Task> Task for &mut T {
    type Error = T::Error;

    fn step(&mut self) -> impl Future<Output = Result<Progress, T::Error>> + Send {
        (**self).step()
    }

    fn failed(&mut self, error: T::Error, failures: u32) {
        (**self).failed(error, failures)
    }
}

/// A [`Task`] from a closure whose steps cannot fail (they log and carry
/// on themselves), e.g. a sampler run every few seconds.
pub struct FromFn<F>(F);

/// See [`FromFn`].
pub fn from_fn<F, Fut>(step: F) -> FromFn<F>
where
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = Progress> + Send,
{
    FromFn(step)
}

impl<F, Fut> Task for FromFn<F>
where
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = Progress> + Send,
{
    type Error = Infallible;

    fn step(&mut self) -> impl Future<Output = Result<Progress, Infallible>> + Send {
        let step = (self.0)();
        async move { Ok(step.await) }
    }

    fn failed(&mut self, error: Infallible, _: u32) {
        match error {}
    }
}

/// Runs `task` by `schedule` until `shutdown` (or until a step says it is
/// finished). See the module's documentation for the waits.
/// Both `wake` and `task` may be borrowed (`&mut`) by a caller that keeps
/// them for later.
pub async fn run_loop<T: Task, W: Wake>(shutdown: &Shutdown, schedule: Schedule, mut wake: W, mut task: T) {
    let mut failures = 0u32;
    let mut wait = schedule.wait_first.then_some(Wait::Idle);
    loop {
        let waited = match wait {
            None => true,
            Some(Wait::Idle) => tokio::select! {
                biased;
                _ = shutdown.recv() => false,
                _ = tokio::time::sleep(schedule.poll) => true,
                _ = wake.woken() => true,
            },
            Some(Wait::Backoff(backoff)) => tokio::select! {
                biased;
                _ = shutdown.recv() => false,
                _ = tokio::time::sleep(backoff) => true,
            },
        };
        if !waited || shutdown.is_shutdown() {
            return;
        }
        let stepped = if schedule.interruptible {
            tokio::select! {
                biased;
                _ = shutdown.recv() => return,
                stepped = task.step() => stepped,
            }
        } else {
            task.step().await
        };
        wait = match stepped {
            Ok(Progress::Worked) => {
                failures = 0;
                None
            }
            Ok(Progress::Idle) => {
                failures = 0;
                Some(Wait::Idle)
            }
            Ok(Progress::Finished) => return,
            Err(e) => {
                failures = failures.saturating_add(1);
                task.failed(e, failures);
                Some(Wait::Backoff(schedule.backoff(failures)))
            }
        };
    }
}

#[derive(Clone, Copy)]
enum Wait {
    Idle,
    Backoff(Duration),
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use tokio::sync::Notify;
    use tokio::time::Instant;

    use super::*;
    use crate::shutdown::ShutdownSignal;

    const POLL: Duration = Duration::from_millis(500);

    /// What a scripted step does.
    #[derive(Clone, Copy)]
    enum Do {
        Work,
        Idle,
        Fail,
        Finish,
        /// Pokes the wake-up, then is idle.
        PokeThenIdle,
        /// Takes this long, then has worked.
        Take(Duration),
    }

    /// Plays `script`, noting when each step started (from the test's
    /// start) and the failure counts it was told; fires the shutdown when
    /// the script runs out.
    struct Script {
        script: VecDeque<Do>,
        started: Instant,
        steps: Vec<Duration>,
        failures: Vec<u32>,
        signal: Arc<ShutdownSignal>,
        poke: Arc<Notify>,
    }

    impl Script {
        fn new(script: &[Do], signal: &Arc<ShutdownSignal>, poke: &Arc<Notify>) -> Script {
            Script {
                script: script.iter().copied().collect(),
                started: Instant::now(),
                steps: Vec::new(),
                failures: Vec::new(),
                signal: signal.clone(),
                poke: poke.clone(),
            }
        }
    }

    impl Task for Script {
        type Error = &'static str;

        async fn step(&mut self) -> Result<Progress, &'static str> {
            self.steps.push(self.started.elapsed());
            match self.script.pop_front() {
                Some(Do::Work) => Ok(Progress::Worked),
                Some(Do::Idle) => Ok(Progress::Idle),
                Some(Do::Fail) => Err("failed"),
                Some(Do::Finish) => Ok(Progress::Finished),
                Some(Do::PokeThenIdle) => {
                    self.poke.notify_one();
                    Ok(Progress::Idle)
                }
                Some(Do::Take(d)) => {
                    tokio::time::sleep(d).await;
                    Ok(Progress::Worked)
                }
                None => {
                    self.signal.fire();
                    Ok(Progress::Idle)
                }
            }
        }

        fn failed(&mut self, _: &'static str, failures: u32) {
            self.failures.push(failures);
        }
    }

    struct Pokes(Arc<Notify>);

    impl Wake for Pokes {
        fn woken(&mut self) -> impl Future<Output = ()> + Send {
            let poke = self.0.clone();
            async move { poke.notified().await }
        }
    }

    /// Runs `script` and returns when each step started, the failure
    /// counts, and how long the loop ran.
    async fn play(schedule: Schedule, script: &[Do]) -> (Vec<Duration>, Vec<u32>, Duration) {
        let (signal, poke) = (Arc::new(ShutdownSignal::new()), Arc::new(Notify::new()));
        let mut task = Script::new(script, &signal, &poke);
        run_loop(&signal.subscribe(), schedule, Pokes(poke), &mut task).await;
        let ran = task.started.elapsed();
        (task.steps, task.failures, ran)
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[tokio::test(start_paused = true)]
    async fn after_work_the_next_step_comes_at_once_and_after_nothing_the_poll_interval() {
        let (steps, failures, ran) = play(Schedule::every(POLL), &[Do::Work, Do::Work, Do::Idle, Do::Idle]).await;
        // The fifth step finds the script out and fires the shutdown.
        assert_eq!(steps, [ms(0), ms(0), ms(0), ms(500), ms(1000)]);
        assert!(failures.is_empty());
        assert_eq!(ran, ms(1000), "the wait after the last step ends with the shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_doubling_up_to_the_cap_and_success_resets_it() {
        let schedule = Schedule::every(POLL).doubling_up_to(2);
        let script = [Do::Fail, Do::Fail, Do::Fail, Do::Fail, Do::Idle, Do::Fail];
        let (steps, failures, _) = play(schedule, &script).await;
        // Waits: 1 s, 2 s, 2 s (capped), 2 s, then 0.5 s (idle), 1 s.
        assert_eq!(
            steps,
            [ms(0), ms(1000), ms(3000), ms(5000), ms(7000), ms(7500), ms(8500)]
        );
        assert_eq!(failures, [1, 2, 3, 4, 1]);
    }

    #[test]
    fn the_backoff_is_the_poll_interval_without_doublings() {
        let schedule = Schedule::every(POLL);
        assert_eq!(schedule.backoff(1), POLL);
        assert_eq!(schedule.backoff(50), POLL);
        let schedule = schedule.doubling_up_to(5);
        assert_eq!(schedule.backoff(0), POLL);
        assert_eq!(schedule.backoff(3), POLL * 8);
        assert_eq!(schedule.backoff(u32::MAX), POLL * 32);
        assert_eq!(schedule.poll(), POLL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_ends_an_idle_wait_but_not_a_backoff() {
        let schedule = Schedule::every(POLL).doubling_up_to(5);
        let script = [Do::PokeThenIdle, Do::Idle, Do::Fail, Do::Idle];
        let (signal, poke) = (Arc::new(ShutdownSignal::new()), Arc::new(Notify::new()));
        let mut task = Script::new(&script, &signal, &poke);
        let shutdown = signal.subscribe();
        let mut wake = Pokes(poke.clone());
        {
            let run = run_loop(&shutdown, schedule, &mut wake, &mut task);
            tokio::pin!(run);
            // A wake-up during the backoff after the third step (the failure).
            tokio::select! {
                _ = &mut run => unreachable!("the script is not over"),
                _ = tokio::time::sleep(ms(600)) => poke.notify_one(),
            }
            run.await;
        }
        // The first step's wake-up ends the idle wait after it; the one
        // during the backoff does not end the backoff (1 s), and is not lost
        // either: it ends the idle wait after the fourth step.
        assert_eq!(task.steps, [ms(0), ms(0), ms(500), ms(1500), ms(1500)]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_wait_at_once() {
        let signal = ShutdownSignal::new();
        let shutdown = signal.subscribe();
        let mut idle = from_fn(|| async { Progress::Idle });
        let schedule = Schedule::every(Duration::from_secs(3600));
        let started = Instant::now();
        {
            let run = run_loop(&shutdown, schedule, NoWake, &mut idle);
            tokio::pin!(run);
            tokio::select! {
                _ = &mut run => unreachable!("no shutdown yet"),
                _ = tokio::time::sleep(ms(10)) => signal.fire(),
            }
            run.await;
        }
        assert_eq!(started.elapsed(), ms(10));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_backoff_at_once() {
        let (steps, failures, ran) = {
            let signal = Arc::new(ShutdownSignal::new());
            let shutdown = signal.subscribe();
            let mut task = Script::new(&[Do::Fail; 20], &signal, &Arc::new(Notify::new()));
            let schedule = Schedule::every(Duration::from_secs(3600)).doubling_up_to(5);
            {
                let run = run_loop(&shutdown, schedule, NoWake, &mut task);
                tokio::pin!(run);
                tokio::select! {
                    _ = &mut run => unreachable!("no shutdown yet"),
                    _ = tokio::time::sleep(ms(10)) => signal.fire(),
                }
                run.await;
            }
            (task.steps, task.failures, task.started.elapsed())
        };
        assert_eq!(steps, [ms(0)]);
        assert_eq!(failures, [1]);
        assert_eq!(ran, ms(10));
    }

    #[tokio::test(start_paused = true)]
    async fn no_step_is_made_after_shutdown() {
        let signal = ShutdownSignal::new();
        signal.fire();
        let mut steps = 0;
        run_loop(
            &signal.subscribe(),
            Schedule::every(POLL),
            NoWake,
            &mut from_fn(|| {
                steps += 1;
                async { Progress::Worked }
            }),
        )
        .await;
        assert_eq!(steps, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_step_ends_the_loop_without_shutdown() {
        let (steps, _, ran) = play(Schedule::every(POLL), &[Do::Idle, Do::Finish, Do::Work]).await;
        assert_eq!(steps, [ms(0), ms(500)]);
        assert_eq!(ran, ms(500));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_first_waits_the_poll_interval_before_the_first_step() {
        let (steps, _, _) = play(Schedule::every(POLL).waiting_first(), &[Do::Work]).await;
        assert_eq!(steps, [ms(500), ms(500)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_is_finished_before_shutdown_unless_it_may_be_interrupted() {
        for (schedule, stopped_at) in [
            (Schedule::every(POLL), ms(5000)),
            (Schedule::every(POLL).interrupted_by_shutdown(), ms(10)),
        ] {
            let signal = ShutdownSignal::new();
            let shutdown = signal.subscribe();
            let mut slow = Script::new(
                &[Do::Take(ms(5000))],
                &Arc::new(ShutdownSignal::new()),
                &Arc::new(Notify::new()),
            );
            {
                let run = run_loop(&shutdown, schedule, NoWake, &mut slow);
                tokio::pin!(run);
                tokio::select! {
                    _ = &mut run => unreachable!("the step takes longer"),
                    _ = tokio::time::sleep(ms(10)) => signal.fire(),
                }
                run.await;
            }
            assert_eq!(slow.started.elapsed(), stopped_at);
            assert_eq!(slow.steps.len(), 1, "no step after the shutdown");
        }
    }
}
