//! The forward-auth route table: which scope an original request needs,
//! by method and path prefix. First match wins; nothing matched needs
//! `admin`. Configured by a file (`KEYLEDGER_ROUTES`), one route a line:
//!
//! ```text
//! # methods        path prefix         scope
//! GET,HEAD         /api/experiences    read:experiences
//! *                /api/experiences    write:experiences
//! ```
//!
//! A prefix matches the path itself and everything below it
//! (`/api/consumers` matches `/api/consumers/42`, not `/api/consumersX`).

use keyledger_events::domain::Scope;

/// API.md's default table.
pub const DEFAULT_TABLE: &str = "\
GET,HEAD  /api/experiences  read:experiences
*         /api/experiences  write:experiences
GET,HEAD  /api/consumers    read:consumers
*         /api/consumers    write:consumers
*         /api/analytics    read:analytics
";

/// Whether a request path reads the same to every server: no dot segments,
/// no empty segments, no encoded dots, slashes or backslashes. Anything else
/// could match one prefix here and reach another route upstream.
pub fn is_canonical(uri: &str) -> bool {
    let path = uri.split(['?', '#']).next().unwrap_or("");
    let lower = path.to_ascii_lowercase();
    path.starts_with('/')
        && !["%2e", "%2f", "%5c", "\\", "//"].iter().any(|bad| lower.contains(bad))
        && !path.split('/').any(|segment| segment == "." || segment == "..")
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    /// Upper-case methods; empty means any.
    methods: Vec<String>,
    prefix: String,
    scope: Scope,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable::parse(DEFAULT_TABLE).expect("the default table parses")
    }
}

impl RouteTable {
    /// Parses a table; the error names the line and what is wrong.
    pub fn parse(text: &str) -> Result<RouteTable, String> {
        let mut routes = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [methods, prefix, scope] = fields[..] else {
                return Err(format!("line {}: expected 'METHODS PREFIX SCOPE'", number + 1));
            };
            if !prefix.starts_with('/') {
                return Err(format!("line {}: the path prefix must start with /", number + 1));
            }
            let scope = scope
                .parse::<Scope>()
                .map_err(|e| format!("line {}: {e}", number + 1))?;
            let methods = match methods {
                "*" => vec![],
                list => list.split(',').map(|m| m.trim().to_ascii_uppercase()).collect(),
            };
            routes.push(Route {
                methods,
                prefix: prefix.trim_end_matches('/').to_owned(),
                scope,
            });
        }
        Ok(RouteTable { routes })
    }

    pub fn load(path: &std::path::Path) -> Result<RouteTable, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        RouteTable::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The scope a request needs (`admin` when no route matches).
    pub fn required_scope(&self, method: &str, uri: &str) -> Scope {
        let path = uri.split(['?', '#']).next().unwrap_or("");
        self.routes
            .iter()
            .find(|r| {
                let method_ok = r.methods.is_empty() || r.methods.iter().any(|m| m.eq_ignore_ascii_case(method));
                let below = path == r.prefix
                    || path.strip_prefix(&r.prefix).is_some_and(|rest| rest.starts_with('/'))
                    || r.prefix.is_empty();
                method_ok && below
            })
            .map_or(Scope::Admin, |r| r.scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_table_follows_api_md() {
        let table = RouteTable::default();
        assert_eq!(table.required_scope("GET", "/api/experiences"), Scope::ReadExperiences);
        assert_eq!(
            table.required_scope("HEAD", "/api/experiences/7?x=1"),
            Scope::ReadExperiences
        );
        assert_eq!(
            table.required_scope("POST", "/api/experiences/7"),
            Scope::WriteExperiences
        );
        assert_eq!(table.required_scope("get", "/api/consumers"), Scope::ReadConsumers);
        assert_eq!(
            table.required_scope("DELETE", "/api/consumers/1"),
            Scope::WriteConsumers
        );
        assert_eq!(
            table.required_scope("POST", "/api/analytics/report"),
            Scope::ReadAnalytics
        );
        assert_eq!(table.required_scope("GET", "/api/experiencesX"), Scope::Admin);
        assert_eq!(table.required_scope("GET", "/admin"), Scope::Admin);
    }

    #[test]
    fn ambiguous_paths_are_recognised() {
        assert!(is_canonical("/api/experiences/1?x=../y"));
        for path in [
            "/api/experiences/../consumers/1",
            "/api/experiences/./1",
            "/api//consumers",
            "/api/experiences/%2e%2e/consumers",
            "/api/experiences%2Fconsumers",
            "/api\\x",
            "api/x",
        ] {
            assert!(!is_canonical(path), "{path}");
        }
    }

    #[test]
    fn bad_tables_name_the_line() {
        assert!(RouteTable::parse("GET /x read:everything")
            .unwrap_err()
            .contains("line 1"));
        assert!(RouteTable::parse("# comment\nGET x admin")
            .unwrap_err()
            .contains("line 2"));
        assert!(RouteTable::parse("GET /x").is_err());
        let custom = RouteTable::parse("POST /hooks  read:analytics  # webhooks\n").unwrap();
        assert_eq!(custom.required_scope("POST", "/hooks/1"), Scope::ReadAnalytics);
        assert_eq!(custom.required_scope("GET", "/hooks/1"), Scope::Admin);
    }
}
