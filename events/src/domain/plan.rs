//! Plans and their per-key rate limits (requests per minute).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Free,
    Basic,
    Pro,
    /// Custom limit, set per organization.
    Enterprise,
}

/// Bounds of a custom (enterprise) limit, per key per minute.
pub const CUSTOM_LIMIT_RANGE: std::ops::RangeInclusive<u32> = 1..=10_000_000;

impl Plan {
    pub const ALL: [Plan; 4] = [Plan::Free, Plan::Basic, Plan::Pro, Plan::Enterprise];

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Basic => "basic",
            Plan::Pro => "pro",
            Plan::Enterprise => "enterprise",
        }
    }

    pub fn parse(text: &str) -> Option<Plan> {
        Plan::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// The plan's own limit; `None` for enterprise, whose limit is custom.
    pub fn default_limit(self) -> Option<u32> {
        match self {
            Plan::Free => Some(100),
            Plan::Basic => Some(1_000),
            Plan::Pro => Some(10_000),
            Plan::Enterprise => None,
        }
    }

    /// The per-minute limit for this plan with an optional custom value:
    /// enterprise requires one, the other plans refuse one.
    pub fn resolve_limit(self, custom: Option<u32>) -> Result<u32, String> {
        match (self.default_limit(), custom) {
            (Some(limit), None) => Ok(limit),
            (Some(_), Some(_)) => Err(format!(
                "a custom rate limit applies only to the enterprise plan, not {}",
                self.as_str()
            )),
            (None, None) => Err("the enterprise plan needs a custom rate limit".into()),
            (None, Some(limit)) if CUSTOM_LIMIT_RANGE.contains(&limit) => Ok(limit),
            (None, Some(_)) => Err(format!(
                "the rate limit must be between {} and {} requests per minute",
                CUSTOM_LIMIT_RANGE.start(),
                CUSTOM_LIMIT_RANGE.end()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_follow_the_plan() {
        assert_eq!(Plan::Free.resolve_limit(None), Ok(100));
        assert_eq!(Plan::Basic.resolve_limit(None), Ok(1_000));
        assert_eq!(Plan::Pro.resolve_limit(None), Ok(10_000));
        assert_eq!(Plan::Enterprise.resolve_limit(Some(50_000)), Ok(50_000));
        assert!(Plan::Enterprise.resolve_limit(None).is_err());
        assert!(Plan::Enterprise.resolve_limit(Some(0)).is_err());
        assert!(Plan::Free.resolve_limit(Some(5)).is_err());
    }
}
