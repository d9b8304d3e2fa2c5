//! Group commit of key creations: creations of one organization sent to
//! this process at the same time are committed together, in one statement
//! that is its own transaction — the quota lock, their events, their key
//! rows, one commit — instead of a transaction of five round trips each.
//! What each caller gets is what it would have got alone (`manage::run`).
//! A group's statement stores nothing where it cannot vouch for the quota
//! or the rotation policy from this process's last count (the process then
//! counts again and tries once more), where another transaction holds the
//! quota lock, or where PostgreSQL refuses it; each creation then runs
//! alone. Where it fails in a way that leaves unknown whether it committed,
//! each creation answers 500 and does not run again.
//!
//! There is no writer task to start or stop: a creation queues itself and
//! then waits either for its answer or for the process's turn ([`WRITERS`]).
//! The one that gets the turn takes everything queued, and a task of its
//! own commits what was taken, one organization's groups after each other
//! and different organizations' at once (the caller that started it may
//! hang up; the others still get their answers). That task keeps the turn
//! while creations keep coming: it takes what gathered meanwhile and
//! commits it too, until it finds the queue empty (measured with
//! gathering: faster in 8 of 10 alternating pairs, +8% on average).
//!
//! A creation taken alone is a group of one: one round trip instead of
//! five (measured: one client creates 1.5× as many keys per second; an
//! organization's first creation in a process also counts its keys first).
//! A creation its group could not commit runs alone, the five round trips,
//! in its request's task.
//!
//! While the turn is taken, creations gather in the queue: the busier the
//! process, the larger the groups. The callers a group answered are
//! expected back: for about a millisecond after the answers (1–2 ms:
//! tokio's timer ticks in whole milliseconds), the turn's holder waits for
//! as many creations to arrive before it takes the queue, so that clients
//! creating keys one after another share one group instead of alternating
//! between two half-size ones (measured: 8 clients, 1.05–1.25× the
//! creations per second).
//!
//! A caller that hangs up after its creation was taken still has its key
//! created (as it would if it hung up just after a commit), without having
//! seen its secret.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyledger_events::domain::{key, key::KeyEvent, ApiKey, KeyCommand, KeyId, OrgId};
use keyledger_events::handler;
use keyledger_events::log::{EventMeta, NewEvent, NewEventColumns, NewStream, NEW_EVENT_COLUMNS};
use keyledger_events::read_model::{self, KeyRow};
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::time::Instant;

use crate::manage::{self, Caller, Ran};
use crate::{error::ApiError, AppState};

/// How many takes of the queue one process commits at a time. One: a
/// second turn would halve the groups and add a statement's worth of
/// PostgreSQL's time per group (measured: the same creations per second,
/// 22% more of PostgreSQL's CPU).
pub const WRITERS: usize = 1;

/// Most creations one statement commits.
pub const MAX_GROUP: usize = 8;

/// How long after a group's answers its callers are waited for (a client's
/// round trip between two creations took 300–400 µs on the benchmark's
/// machine).
const RETURN_WINDOW: Duration = Duration::from_millis(1);

/// Creations waiting to be committed, and the turns to commit them.
pub struct CreationQueue {
    queued: Mutex<Queue>,
    /// Told of every creation queued (the turn's holder may be gathering).
    arrival: Notify,
    turns: Arc<Semaphore>,
    /// Group statements that committed (`keyledger_key_creation_groups_total`).
    pub groups: AtomicU64,
    /// Keys they created.
    pub grouped: AtomicU64,
    /// Keys created in a transaction of their own (`manage::run`): with an
    /// `Idempotency-Key`, near the quota, or where a group could not commit.
    pub single: AtomicU64,
}

impl Default for CreationQueue {
    fn default() -> CreationQueue {
        CreationQueue {
            queued: Mutex::new(Queue::default()),
            arrival: Notify::new(),
            turns: Arc::new(Semaphore::new(WRITERS)),
            groups: AtomicU64::new(0),
            grouped: AtomicU64::new(0),
            single: AtomicU64::new(0),
        }
    }
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Queued>,
    gathering: Gathering,
}

/// What the turn's holder waits for before it takes the queue: the callers
/// the last groups answered, back with their next creations.
#[derive(Debug, Default)]
struct Gathering {
    /// Creations queued so far, a running count.
    arrived: u64,
    /// The count `arrived` is expected to reach before `until` (the callers
    /// answered meanwhile, back).
    expected: u64,
    until: Option<Instant>,
}

impl Gathering {
    /// `creations` callers were answered at `now`.
    fn answered(&mut self, creations: usize, now: Instant) {
        // Creations that arrived beyond those expected are not these callers.
        self.expected = match self.until {
            Some(until) if until > now => self.expected.max(self.arrived),
            _ => self.arrived,
        } + creations as u64;
        self.until = Some(now + RETURN_WINDOW);
    }

    /// Until when the turn's holder waits, with `queued` creations in the
    /// queue, for more to arrive (none: it takes them now). A full group
    /// waits for nothing.
    fn wait_until(&self, queued: usize, now: Instant) -> Option<Instant> {
        self.until
            .filter(|&until| until > now && self.arrived < self.expected && queued < MAX_GROUP)
    }
}

/// One creation in the queue.
struct Queued {
    org_id: OrgId,
    id: KeyId,
    command: KeyCommand,
    /// Who and when, as the request has it (the committing task has no
    /// request of its own).
    meta: EventMeta,
    answer: oneshot::Sender<Answer>,
}

/// What a queued creation learns.
enum Answer {
    /// Committed with its group.
    Created(Box<Ran>),
    /// Not committed with a group (nothing of it was stored): it runs alone.
    Alone,
    /// The group's commit failed: whether it took effect is unknown, so it
    /// must not run again.
    Failed(String),
}

impl CreationQueue {
    /// Everything queued, but creations whose callers hung up meanwhile.
    fn take(&self) -> Vec<Queued> {
        let mut taken = std::mem::take(&mut self.queued.lock().expect("creation queue lock").waiting);
        taken.retain(|q| !q.answer.is_closed());
        taken
    }

    /// Waits, holding the turn, for the callers answered last to come back
    /// ([`Gathering`]).
    async fn gather(&self) {
        loop {
            let arrival = self.arrival.notified();
            let until = {
                let queue = self.queued.lock().expect("creation queue lock");
                queue.gathering.wait_until(queue.waiting.len(), Instant::now())
            };
            let Some(until) = until else { return };
            let _ = tokio::time::timeout_at(until, arrival).await;
        }
    }

    /// `creations` callers are being answered: they may be back.
    fn answering(&self, creations: usize) {
        let mut queue = self.queued.lock().expect("creation queue lock");
        queue.gathering.answered(creations, Instant::now());
    }

    /// Creates the key `id` by `command` (a `KeyCommand::Create`), committed
    /// with whatever other creations are sent meanwhile: what
    /// `manage::run` answers for it alone.
    pub(crate) async fn create(
        &self,
        state: &AppState,
        caller: &Caller,
        id: KeyId,
        command: KeyCommand,
    ) -> Result<Ran, ApiError> {
        let (answer, mut answered) = oneshot::channel();
        {
            let mut queue = self.queued.lock().expect("creation queue lock");
            queue.waiting.push(Queued {
                org_id: caller.org_id(),
                id,
                command: command.clone(),
                meta: caller.meta(),
                answer,
            });
            queue.gathering.arrived += 1;
        }
        self.arrival.notify_waiters();
        let answer = tokio::select! {
            biased;
            answer = &mut answered => answer,
            turn = self.turns.clone().acquire_owned() => {
                let turn = turn.map_err(ApiError::internal)?;
                // Creations this worker thread has ready to queue join
                // first (measured: 7% more creations per second).
                tokio::task::yield_now().await;
                self.gather().await;
                let taken = self.take();
                match taken.as_slice() {
                    // Another turn took this creation: its answer comes.
                    [] => {
                        drop(turn);
                        answered.await
                    }
                    _ => {
                        let state = state.clone();
                        tokio::spawn(async move {
                            let mut taken = taken;
                            // Keeps the turn while creations keep coming:
                            // no hand-over to another request's task.
                            while !taken.is_empty() {
                                commit_groups(&state, taken).await;
                                state.creations.gather().await;
                                taken = state.creations.take();
                            }
                            drop(turn);
                        });
                        answered.await
                    }
                }
            }
        };
        match answer {
            Ok(Answer::Created(ran)) => Ok(*ran),
            Ok(Answer::Alone) => manage::run_alone(state, caller, id, command, 201).await,
            Ok(Answer::Failed(error)) => Err(ApiError::internal(std::io::Error::other(error))),
            Err(gone) => Err(ApiError::internal(gone)),
        }
    }
}

/// Commits `taken` in groups of one organization's creations, at most
/// [`MAX_GROUP`] of them, in the order they came: one organization's groups
/// one after the other (each takes its quota lock alone), different
/// organizations' at once.
async fn commit_groups(state: &AppState, taken: Vec<Queued>) {
    let mut by_org: Vec<Vec<Queued>> = Vec::new();
    for queued in taken {
        match by_org.iter_mut().find(|o| o[0].org_id == queued.org_id) {
            Some(org) => org.push(queued),
            None => by_org.push(vec![queued]),
        }
    }
    futures_util::future::join_all(by_org.into_iter().map(|mut queued| async move {
        while !queued.is_empty() {
            let rest = queued.split_off(queued.len().min(MAX_GROUP));
            commit_and_answer(state, std::mem::replace(&mut queued, rest)).await;
        }
    }))
    .await;
}

/// Commits one group and answers each of its creations.
async fn commit_and_answer(state: &AppState, group: Vec<Queued>) {
    let org_id = group[0].org_id;
    let mut committed = commit_group(state, org_id, &group).await;
    // The count it bounds from may be old (the log grows), or the rotation
    // policy changed: count again, then try once more.
    if matches!(committed, Err(Stale)) && manage::recount_keys(state, org_id).await.is_ok() {
        committed = commit_group(state, org_id, &group).await;
    }
    match committed {
        Ok(ran) => {
            let creations = &state.creations;
            creations.groups.fetch_add(1, Ordering::Relaxed);
            creations.grouped.fetch_add(ran.len() as u64, Ordering::Relaxed);
            // Callers that hung up are not coming back.
            creations.answering(group.iter().filter(|q| !q.answer.is_closed()).count());
            for (queued, ran) in group.into_iter().zip(ran) {
                // A caller that hung up needs no answer.
                let _ = queued.answer.send(Answer::Created(Box::new(ran)));
            }
        }
        Err(Unstored | Busy | Stale) => answer_all(group, || Answer::Alone),
        Err(Uncertain(error)) => answer_all(group, || Answer::Failed(error.clone())),
    }
}

fn answer_all(group: Vec<Queued>, answer: impl Fn() -> Answer) {
    for queued in group {
        // A caller that hung up needs no answer.
        let _ = queued.answer.send(answer());
    }
}

/// Why a group was not committed.
enum NotCommitted {
    /// Nothing was stored: each creation runs alone.
    Unstored,
    /// Nothing was stored: another transaction holds the quota lock (each
    /// creation runs alone, waiting for it in its own task).
    Busy,
    /// Nothing was stored: this process's last count, rotation policy or
    /// `max_connections` could not vouch for the group.
    Stale,
    /// Whether the statement took effect is unknown (the message says why).
    Uncertain(String),
}
use NotCommitted::{Busy, Stale, Uncertain, Unstored};

/// One statement, its own transaction, for `group` (creations of the
/// organization `org_id`): it takes the quota lock alone, if no other
/// transaction holds it (it never waits for it), and appends and projects
/// every creation — or, where this process cannot vouch for the quota or the
/// rotation policy from its last look, stores nothing.
///
/// The quota: the argument of `manage::within_key_quota`, with the bound
/// taken before the append instead of after it. The group holds the lock
/// alone, so no other creation commits while it runs, and from this
/// process's last count (`n` keys when the log's newest position was `p`,
/// taken holding the lock), every key committed when the lock is granted
/// was counted, or was in a transaction holding the lock alongside the
/// count (fewer than `m`, PostgreSQL's `max_connections`, each creating one
/// key), or appended its event at a position after `p` and no later than
/// the last value the position sequence has handed out when the lock is
/// granted (`s`, read after the grant; some of those positions belong to
/// appends not committed or rolled back, which only makes it more careful):
/// at most `n + m + (s - p)`. With the group's own
/// keys, the statement appends only while that stays within the quota.
async fn commit_group(state: &AppState, org_id: OrgId, group: &[Queued]) -> Result<Vec<Ran>, NotCommitted> {
    let Some(last) = state.key_counts.get(org_id) else {
        return Err(Stale);
    };
    // The newest position `s` may be for the bound to hold.
    let newest = i128::from(state.settings.max_keys_per_org) + i128::from(last.position)
        - i128::from(last.keys)
        - i128::from(last.connections)
        - group.len() as i128;
    let Ok(newest) = i64::try_from(newest) else {
        return Err(Unstored);
    };
    if newest < last.position {
        return Err(Stale);
    }
    let mut decided = Vec::with_capacity(group.len());
    let mut keys = read_model::CreatedKeyColumns::default();
    for queued in group {
        let mut command = queued.command.clone();
        if let KeyCommand::Create(c) = &mut command {
            c.rotation_days = last.rotation_days;
        }
        let stream = key::stream_id(queued.id);
        let one = handler::decide_new::<ApiKey>(&stream, command, &queued.meta).map_err(|_| Unstored)?;
        let [KeyEvent::Created(created)] = one.events() else {
            return Err(Unstored);
        };
        keys.push(&queued.id.to_string(), created, 1);
        decided.push(one);
    }
    let encoded: Vec<Vec<NewEvent>> = decided
        .iter()
        .map(|d| d.events().iter().map(NewEvent::from_domain).collect())
        .collect();
    let streams: Vec<NewStream> = decided
        .iter()
        .zip(&encoded)
        .map(|(d, events)| NewStream {
            stream_id: d.stream_id(),
            expected_version: 0,
            events,
            meta: d.meta(),
        })
        .collect();
    let columns = NewEventColumns::of(&streams);
    let sql = format!(
        "with held as (
             select l.locked,
                    o.rotation_days = $3 and current_setting('max_connections')::bigint <= $4
                    and coalesce(pg_sequence_last_value(pg_get_serial_sequence('events', 'position')::regclass), 0)
                        <= $5 as vouched
             from orgs o, pg_try_advisory_xact_lock($1, hashtext($2)) as l(locked)
             where o.id = $2
         ),
         appended as (
             insert into events ({NEW_EVENT_COLUMNS})
             select e.* from {events}, held
             where held.locked and held.vouched
             returning event_id, position, tx_id
         ),
         projected as ({keys})
         select a.event_id, a.position, a.tx_id, h.locked from held h left join appended a on true",
        events = NewEventColumns::unnest(6, "e"),
        keys = read_model::insert_created_keys(15, "exists (select from appended)"),
    );
    let query = sqlx::query_as::<_, (Option<uuid::Uuid>, Option<i64>, Option<i64>, bool)>(&sql)
        .bind(manage::KEY_QUOTA_LOCK)
        .bind(org_id)
        .bind(last.rotation_days as i32)
        .bind(last.connections as i64)
        .bind(newest);
    let mut conn = state.database.read(state.pool.acquire()).await.map_err(|_| Unstored)?;
    let returned = match keys.bind(columns.bind(query)).fetch_all(&mut *conn).await {
        Ok(returned) => returned,
        // The server shutting down or the connection failing may come after
        // the commit.
        Err(sqlx::Error::Database(e)) if e.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")) => {
            return Err(Uncertain(e.to_string()))
        }
        // PostgreSQL refused the statement: it stored nothing.
        Err(sqlx::Error::Database(_)) => return Err(Unstored),
        Err(e) => return Err(Uncertain(e.to_string())),
    };
    let returned: Vec<(uuid::Uuid, i64, i64)> = match returned.as_slice() {
        // No such organization.
        [] => return Err(Unstored),
        [(None, _, _, false)] => return Err(Busy),
        [(None, _, _, true)] => return Err(Stale),
        _ => returned
            .iter()
            .filter_map(|&(id, position, tx_id, _)| Some((id?, position?, tx_id?)))
            .collect(),
    };
    let stored = columns
        .stored(&returned)
        .ok_or_else(|| Uncertain("the statement appended part of the group".into()))?;
    // Committed: announced together (one statement of the announcer's).
    let (stored, notices): (Vec<_>, Vec<_>) = stored.into_iter().unzip();
    state.announcer.announce_all(notices);
    let mut ran = Vec::with_capacity(stored.len());
    for (one, events) in decided.into_iter().zip(stored) {
        let outcome = one.stored(events);
        let key = outcome
            .state
            .as_ref()
            .ok_or_else(|| Uncertain("a creation made no key".into()))?;
        ran.push(Ran {
            row: KeyRow::from_aggregate(key, outcome.version),
            events: outcome.events,
        });
    }
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_is_waited_for_before_a_group_was_answered() {
        let gathering = Gathering::default();
        assert_eq!(gathering.wait_until(0, Instant::now()), None);
    }

    #[test]
    fn the_callers_answered_are_waited_for_until_the_window_ends() {
        let start = Instant::now();
        let mut gathering = Gathering {
            arrived: 10,
            ..Gathering::default()
        };
        gathering.answered(4, start);
        assert_eq!(gathering.wait_until(1, start), Some(start + RETURN_WINDOW));
        gathering.arrived += 3;
        assert_eq!(gathering.wait_until(4, start), Some(start + RETURN_WINDOW));
        // All four back: taken at once.
        gathering.arrived += 1;
        assert_eq!(gathering.wait_until(5, start), None);
        // Not back within the window: taken without them.
        gathering.arrived -= 1;
        assert_eq!(gathering.wait_until(4, start + RETURN_WINDOW), None);
    }

    #[test]
    fn a_full_group_waits_for_nobody() {
        let start = Instant::now();
        let mut gathering = Gathering::default();
        gathering.answered(MAX_GROUP, start);
        assert_eq!(gathering.wait_until(MAX_GROUP - 1, start), Some(start + RETURN_WINDOW));
        assert_eq!(gathering.wait_until(MAX_GROUP, start), None);
    }

    #[test]
    fn groups_answered_within_the_window_are_waited_for_together() {
        let start = Instant::now();
        let mut gathering = Gathering::default();
        gathering.answered(2, start);
        gathering.answered(3, start + RETURN_WINDOW / 2);
        gathering.arrived = 4;
        let until = start + RETURN_WINDOW / 2 + RETURN_WINDOW;
        assert_eq!(gathering.wait_until(0, start + RETURN_WINDOW), Some(until));
        gathering.arrived = 5;
        assert_eq!(gathering.wait_until(0, start + RETURN_WINDOW), None);
        // Later answers are counted from the creations arrived by then.
        gathering.answered(1, start + ms(10));
        assert_eq!(
            gathering.wait_until(0, start + ms(10)),
            Some(start + ms(10) + RETURN_WINDOW)
        );
        gathering.arrived = 6;
        assert_eq!(gathering.wait_until(0, start + ms(10)), None);
        // Creations beyond those expected (new callers) are not the ones
        // answered next.
        gathering.arrived = 9;
        gathering.answered(2, start + ms(10) + RETURN_WINDOW / 2);
        gathering.arrived = 10;
        assert!(gathering.wait_until(0, start + ms(11)).is_some());
        gathering.arrived = 11;
        assert_eq!(gathering.wait_until(0, start + ms(11)), None);
    }
}
