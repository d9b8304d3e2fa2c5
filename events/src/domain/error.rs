//! Why a command is refused. The API maps each case to its HTTP status and
//! error code (docs/api.md, "Errors"); the CLI prints the message.

use std::collections::BTreeMap;

/// Field name → the problems found with it, in a stable order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ValidationDetails(pub BTreeMap<String, Vec<String>>);

impl ValidationDetails {
    pub fn add(&mut self, field: &str, problem: impl Into<String>) {
        self.0.entry(field.to_owned()).or_default().push(problem.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when no problem was found, the refusal otherwise.
    pub fn into_result(self) -> Result<(), DomainError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Validation(self))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Well-formed input that breaks a rule.
    #[error("validation failed: {0:?}")]
    Validation(ValidationDetails),
    /// The aggregate does not exist (or was deleted).
    #[error("not found")]
    NotFound,
    /// The command is not valid in the aggregate's current state.
    #[error("{0}")]
    Conflict(String),
    /// The organization is at one of its quotas; the message names it.
    #[error("{0}")]
    QuotaExceeded(String),
}

impl DomainError {
    pub fn invalid(field: &str, problem: impl Into<String>) -> Self {
        let mut details = ValidationDetails::default();
        details.add(field, problem);
        DomainError::Validation(details)
    }
}
