//! Given / when / then for any [`Aggregate`], written once for the unit tests
//! of every aggregate (cqrs-es's `TestFramework` is the model): given past
//! events, when a command is decided at a fixed clock, then exactly these
//! events, or this refusal. No I/O.
//!
//! ```ignore
//! TestFramework::<ApiKey>::at(now())
//!     .given(&[created()])
//!     .when(KeyCommand::Deactivate)
//!     .then_expect_events(vec![deactivated()]);
//! ```

use std::fmt::Debug;
use std::marker::PhantomData;

use chrono::{DateTime, TimeZone, Utc};

use super::error::{DomainError, ValidationDetails};
use super::{Aggregate, OrgId};

/// The fixed moment the aggregates' tests decide at.
pub fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0).unwrap()
}

/// The organization the aggregates' tests act for.
pub fn org_id() -> OrgId {
    OrgId::from_uuid(uuid::Uuid::from_u128(0x0193_5a1c_0000_7000_8000_0000_0000_0001))
}

/// The clock every `when` decides at.
pub struct TestFramework<A> {
    now: DateTime<Utc>,
    aggregate: PhantomData<A>,
}

impl<A: Aggregate> TestFramework<A> {
    pub fn at(now: DateTime<Utc>) -> Self {
        TestFramework {
            now,
            aggregate: PhantomData,
        }
    }

    /// The state after `events` (none: the aggregate does not exist yet).
    pub fn given(self, events: &[A::Event]) -> Given<A> {
        Given {
            state: A::replay(events),
            now: self.now,
        }
    }
}

/// A state to decide commands against; several `when`s may share it.
pub struct Given<A> {
    state: Option<A>,
    now: DateTime<Utc>,
}

impl<A: Aggregate> Given<A> {
    /// `command` decided at the framework's clock.
    pub fn when(&self, command: A::Command) -> Then<A::Event> {
        Then {
            result: A::decide(self.state.as_ref(), command, self.now),
        }
    }

    /// When a command parsed at the edge — or the edge's refusal of the
    /// input, which then is the outcome.
    pub fn when_parsed(&self, parsed: Result<A::Command, DomainError>) -> Then<A::Event> {
        match parsed {
            Ok(command) => self.when(command),
            Err(refused) => Then { result: Err(refused) },
        }
    }

    /// The state itself, for assertions on it.
    pub fn state(&self) -> Option<&A> {
        self.state.as_ref()
    }

    pub fn into_state(self) -> Option<A> {
        self.state
    }
}

/// What `decide` answered, to assert on.
#[must_use = "a decision is asserted with one of the then_expect methods"]
pub struct Then<E> {
    result: Result<Vec<E>, DomainError>,
}

impl<E: PartialEq + Debug> Then<E> {
    /// Exactly `expected`, in order.
    #[track_caller]
    pub fn then_expect_events(self, expected: Vec<E>) {
        assert_eq!(self.result, Ok(expected));
    }

    /// Accepted, and nothing to record.
    #[track_caller]
    pub fn then_expect_nothing(self) {
        assert_eq!(self.result, Ok(vec![]));
    }

    /// Exactly one event, returned for further checks.
    #[track_caller]
    pub fn then_expect_one(self) -> E {
        match self.result {
            Ok(mut events) if events.len() == 1 => events.remove(0),
            other => panic!("expected exactly one event, got {other:?}"),
        }
    }

    /// Exactly `expected`.
    #[track_caller]
    pub fn then_expect_error(self, expected: DomainError) {
        assert_eq!(self.result, Err(expected));
    }

    /// A validation refusal naming exactly `fields` (sorted), each with a
    /// problem in words; returns the details.
    #[track_caller]
    pub fn then_expect_invalid(self, fields: &[&str]) -> ValidationDetails {
        match self.result {
            Err(DomainError::Validation(details)) => {
                let named: Vec<&str> = details.0.keys().map(String::as_str).collect();
                assert_eq!(named, fields, "fields of {details:?}");
                for problems in details.0.values() {
                    assert!(!problems.is_empty() && problems.iter().all(|p| !p.trim().is_empty()));
                }
                details
            }
            other => panic!("expected a validation error on {fields:?}, got {other:?}"),
        }
    }

    /// A conflict, explained.
    #[track_caller]
    pub fn then_expect_conflict(self) {
        match self.result {
            Err(DomainError::Conflict(message)) => assert!(!message.is_empty()),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    /// A conflict whose explanation contains `saying`.
    #[track_caller]
    pub fn then_expect_conflict_saying(self, saying: &str) {
        match self.result {
            Err(DomainError::Conflict(message)) => assert!(message.contains(saying), "{message}"),
            other => panic!("expected a conflict saying {saying:?}, got {other:?}"),
        }
    }

    /// Over the quota named `quota`.
    #[track_caller]
    pub fn then_expect_over_quota(self, quota: &str) {
        match self.result {
            Err(DomainError::QuotaExceeded(message)) => assert!(message.contains(quota), "{message}"),
            other => panic!("expected the {quota} quota, got {other:?}"),
        }
    }

    #[track_caller]
    pub fn then_expect_not_found(self) {
        self.then_expect_error(DomainError::NotFound);
    }

    /// The answer itself, for tests that check something else about it.
    pub fn result(self) -> Result<Vec<E>, DomainError> {
        self.result
    }
}
