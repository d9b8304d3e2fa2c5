//! Permission scopes. `admin` implies every other scope.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::key_material::KeyType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "read:experiences")]
    ReadExperiences,
    #[serde(rename = "write:experiences")]
    WriteExperiences,
    #[serde(rename = "read:consumers")]
    ReadConsumers,
    #[serde(rename = "write:consumers")]
    WriteConsumers,
    #[serde(rename = "read:analytics")]
    ReadAnalytics,
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::ReadExperiences,
        Scope::WriteExperiences,
        Scope::ReadConsumers,
        Scope::WriteConsumers,
        Scope::ReadAnalytics,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ReadExperiences => "read:experiences",
            Scope::WriteExperiences => "write:experiences",
            Scope::ReadConsumers => "read:consumers",
            Scope::WriteConsumers => "write:consumers",
            Scope::ReadAnalytics => "read:analytics",
            Scope::Admin => "admin",
        }
    }

    /// Scopes a key gets when its creator names none: full permissions for
    /// server-side keys, read-only for browser keys.
    pub fn defaults_for(key_type: KeyType) -> Vec<Scope> {
        match key_type {
            KeyType::Public => vec![Scope::ReadExperiences],
            KeyType::Secret | KeyType::Test => vec![Scope::Admin],
        }
    }

    /// Whether a key of this type may hold this scope: public keys live in
    /// browsers, so they may only read experiences and consumers.
    pub fn allowed_for(self, key_type: KeyType) -> bool {
        key_type != KeyType::Public || matches!(self, Scope::ReadExperiences | Scope::ReadConsumers)
    }
}

/// Whether `held` grants `needed` (`admin` grants everything).
pub fn grants(held: &[Scope], needed: Scope) -> bool {
    held.iter().any(|&s| s == needed || s == Scope::Admin)
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope '{0}'")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(text: &str) -> Result<Scope, UnknownScope> {
        Scope::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| UnknownScope(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_grants_everything_and_others_only_themselves() {
        for needed in Scope::ALL {
            assert!(grants(&[Scope::Admin], needed));
        }
        assert!(grants(&[Scope::ReadConsumers], Scope::ReadConsumers));
        assert!(!grants(&[Scope::ReadConsumers], Scope::WriteConsumers));
        assert!(!grants(&[], Scope::ReadConsumers));
    }

    #[test]
    fn names_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>().unwrap(), scope);
            assert_eq!(serde_json::to_value(scope).unwrap(), scope.as_str());
        }
        assert!("write:everything".parse::<Scope>().is_err());
    }
}
