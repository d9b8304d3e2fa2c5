//! Display names of keys and organizations: 1–100 characters, not blank, no
//! control characters (they would corrupt key lists, logs and emails).

use serde::{Deserialize, Serialize};

pub const MAX_NAME_CHARS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// The name, or what is wrong with it in words a user can act on.
    pub fn parse(text: &str) -> Result<Name, String> {
        let chars = text.chars().count();
        if chars == 0 || text.trim().is_empty() {
            return Err("must not be empty".into());
        }
        if chars > MAX_NAME_CHARS {
            return Err(format!("must be at most {MAX_NAME_CHARS} characters (got {chars})"));
        }
        if text.chars().any(char::is_control) {
            return Err("must not contain control characters (newlines, tabs, …)".into());
        }
        Ok(Name(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_and_printable() {
        assert!(Name::parse("Checkout backend").is_ok());
        assert!(Name::parse(&"é".repeat(100)).is_ok());
        assert!(Name::parse(&"x".repeat(101)).is_err());
        assert!(Name::parse("").is_err());
        assert!(Name::parse("   ").is_err());
        assert!(Name::parse("two\nlines").is_err());
        assert!(Name::parse("bell\u{7}").is_err());
    }
}
