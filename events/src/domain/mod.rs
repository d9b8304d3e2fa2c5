//! The domain: identifiers, key material, scopes, plans, email addresses
//! and the two aggregates. Nothing here touches the network, the disk or the clock:
//! time and randomness are passed in, so every rule is unit-testable.

pub mod confirmation;
pub mod email;
pub mod error;
pub mod ids;
pub mod ip;
pub mod key;
pub mod key_material;
pub mod name;
pub mod org;
pub mod plan;
pub mod scope;
#[cfg(test)]
pub(crate) mod test_framework;
pub mod webhook;

pub use email::{EmailAddress, ListedAddress};
pub use error::{DomainError, ValidationDetails};
pub use ids::{DeliveryId, KeyId, OrgId, WebhookId};
pub use ip::{AllowedIps, IpRange};
pub use key::{ApiKey, KeyCommand, KeyEvent, KeyStatus};
pub use key_material::{Environment, HashKey, KeyHash, KeyType, PlainKey};
pub use name::Name;
pub use org::{LeakAction, Org, OrgCommand, OrgEvent};
pub use plan::Plan;
pub use scope::Scope;

use chrono::{DateTime, Utc};

/// An event-sourced aggregate: `decide` turns a command into new events (or a
/// refusal) given the current state; `evolve` folds one event into the state.
/// Both are pure; `None` is the state before the first event.
pub trait Aggregate: Sized {
    type Command;
    type Event: DomainEvent;

    fn decide(
        state: Option<&Self>,
        command: Self::Command,
        now: DateTime<Utc>,
    ) -> Result<Vec<Self::Event>, DomainError>;

    fn evolve(state: Option<Self>, event: &Self::Event) -> Option<Self>;

    /// The state after `events`, from nothing.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Option<Self>
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(None, Self::evolve)
    }
}

/// An event with a stable stored name (`key.created`) and schema version;
/// serde's adjacent tagging (`{"type": …, "data": …}`) maps it to the log.
pub trait DomainEvent: serde::Serialize + serde::de::DeserializeOwned {
    /// The newest schema version this code writes and can read.
    const SCHEMA_VERSION: i32 = 1;

    fn event_type(&self) -> &'static str;
}
