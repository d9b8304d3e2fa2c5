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

use std::borrow::Cow;

use keyledger_events::domain::Scope;

/// The default table (docs/api.md, "Forward-auth").
pub const DEFAULT_TABLE: &str = "\
GET,HEAD  /api/experiences  read:experiences
*         /api/experiences  write:experiences
GET,HEAD  /api/consumers    read:consumers
*         /api/consumers    write:consumers
*         /api/analytics    read:analytics
";

/// The path of an original request target (`/api/x?query`), if it is
/// plain: a small grammar, not a list of known tricks.
///
/// ```text
/// path     = "/" | 1*( "/" segment ) [ "/" ]       ; a trailing slash is allowed
/// segment  = 1*( char / escape ), not "." or ".." once escapes are decoded
/// char     = ALPHA / DIGIT / "-" / "." / "_" / "~"   ; unreserved
///          / "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / "=" / ":" / "@"
/// escape   = "%" HEXDIG HEXDIG, of an unreserved character only
/// ```
///
/// So no dot or empty segments, no `;` parameters (`..;` is `..` to
/// Tomcat), no escapes of separators, `%`, NUL or bytes above ASCII
/// (`%252e`, `%2f`, `%00`, overlong `%c0%ae`), no backslashes, nothing
/// non-ASCII: anything the upstream could read as another path than the one
/// checked here. The query string (after the first `?`) is not part of the
/// path and never changes the match. The answer is the path with its
/// escapes decoded (`/api/%65xperiences` is `/api/experiences`, as RFC 3986
/// says), which is what the route table matches.
pub fn plain_path(target: &str) -> Result<Cow<'_, str>, &'static str> {
    let path = target.split_once('?').map_or(target, |(path, _query)| path);
    let Some(rest) = path.strip_prefix('/') else {
        return Err("it does not start with /");
    };
    if rest.is_empty() {
        return Ok(Cow::Borrowed(path));
    }
    // Escapes are decoded into a new string; a path without any is its own
    // answer once checked (no copy per forward-auth check).
    let mut decoded = path.contains('%').then(|| String::with_capacity(path.len()));
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        if let Some(plain) = decoded.as_mut() {
            plain.push('/');
        }
        if segment.is_empty() {
            if segments.peek().is_none() {
                continue; // the trailing slash of "/api/experiences/"
            }
            return Err("it has an empty segment (//)");
        }
        let start = decoded.as_ref().map_or(0, String::len);
        let bytes = segment.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let byte = match bytes[i] {
                b'%' => {
                    let decoded = bytes
                        .get(i + 1..i + 3)
                        .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
                        .ok_or("it has a % that is not followed by two hex digits")?;
                    if !is_unreserved(decoded) {
                        return Err("it has a %-escape of something other than a letter, digit, -, ., _ or ~");
                    }
                    i += 2;
                    decoded
                }
                b';' => return Err("it has a ; parameter"),
                b'\\' => return Err("it has a backslash"),
                byte if !byte.is_ascii() => return Err("it has a character outside ASCII"),
                byte if is_unreserved(byte) || b"!$&'()*+,=:@".contains(&byte) => byte,
                _ => return Err("it has a character that must not appear unescaped in a path"),
            };
            if let Some(plain) = decoded.as_mut() {
                plain.push(char::from(byte));
            }
            i += 1;
        }
        let plain_segment = decoded.as_deref().map_or(segment, |plain| &plain[start..]);
        if matches!(plain_segment, "." | "..") {
            return Err("it has a dot segment (. or ..)");
        }
    }
    Ok(decoded.map_or(Cow::Borrowed(path), Cow::Owned))
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    /// Methods, upper-cased when the table is read (a request's method
    /// must match exactly); empty means any.
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
            if plain_path(prefix).ok().as_deref() != Some(prefix) {
                return Err(format!(
                    "line {}: the path prefix must be a plain path starting with / (no escapes, dot or empty segments)",
                    number + 1
                ));
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

    /// The scope a request to `path` (a [`plain_path`]) needs (`admin` when
    /// no route matches).
    pub fn required_scope(&self, method: &str, path: &str) -> Scope {
        self.routes
            .iter()
            .find(|r| {
                // Methods are case-sensitive (RFC 9110): "get" is not GET.
                let method_ok = r.methods.is_empty() || r.methods.iter().any(|m| m == method);
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
            table.required_scope("HEAD", "/api/experiences/7"),
            Scope::ReadExperiences
        );
        assert_eq!(
            table.required_scope("POST", "/api/experiences/7"),
            Scope::WriteExperiences
        );
        assert_eq!(table.required_scope("get", "/api/consumers"), Scope::WriteConsumers);
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

    /// The grammar as it was first written (collecting the segments and
    /// copying every path): [`plain_path`] must answer as it does.
    fn reference_plain_path(target: &str) -> Result<String, &'static str> {
        let path = target.split_once('?').map_or(target, |(path, _query)| path);
        let Some(rest) = path.strip_prefix('/') else {
            return Err("it does not start with /");
        };
        let mut plain = String::with_capacity(path.len());
        if rest.is_empty() {
            return Ok("/".into());
        }
        let segments: Vec<&str> = rest.split('/').collect();
        for (index, segment) in segments.iter().enumerate() {
            plain.push('/');
            if segment.is_empty() {
                if index + 1 == segments.len() {
                    continue; // the trailing slash of "/api/experiences/"
                }
                return Err("it has an empty segment (//)");
            }
            let start = plain.len();
            let bytes = segment.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                let byte = match bytes[i] {
                    b'%' => {
                        let decoded = bytes
                            .get(i + 1..i + 3)
                            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
                            .ok_or("it has a % that is not followed by two hex digits")?;
                        if !is_unreserved(decoded) {
                            return Err("it has a %-escape of something other than a letter, digit, -, ., _ or ~");
                        }
                        i += 2;
                        decoded
                    }
                    b';' => return Err("it has a ; parameter"),
                    b'\\' => return Err("it has a backslash"),
                    byte if !byte.is_ascii() => return Err("it has a character outside ASCII"),
                    byte if is_unreserved(byte) || b"!$&'()*+,=:@".contains(&byte) => byte,
                    _ => return Err("it has a character that must not appear unescaped in a path"),
                };
                plain.push(char::from(byte));
                i += 1;
            }
            if matches!(&plain[start..], "." | "..") {
                return Err("it has a dot segment (. or ..)");
            }
        }
        Ok(plain)
    }

    #[test]
    fn the_borrowing_reader_answers_as_the_first_one_did() {
        // Random targets over the characters the grammar turns on.
        let alphabet: Vec<&str> = vec![
            "/", "/", "/", ".", ".", "%", "2", "e", "E", "f", "F", "5", "c", "7", "0", "a", "z", "~", "-", "_", ";",
            "\\", "?", "!", "@", " ", "#", "\u{e9}", "%2e", "%2E", "%2f", "%7e", "%41", "..", "api", "%25",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..200_000 {
            let length = next() % 12;
            let mut target = String::from(if next() % 8 == 0 { "" } else { "/" });
            for _ in 0..length {
                target.push_str(alphabet[(next() % alphabet.len() as u64) as usize]);
            }
            assert_eq!(
                plain_path(&target).map(Cow::into_owned),
                reference_plain_path(&target),
                "{target:?}"
            );
        }
    }

    #[test]
    fn only_plain_paths_are_accepted() {
        for (target, plain) in [
            ("/", "/"),
            ("/api/experiences", "/api/experiences"),
            ("/api/experiences/", "/api/experiences/"),
            ("/api/experiences/1?x=../y", "/api/experiences/1"),
            ("/api/experiences?/../consumers", "/api/experiences"),
            ("/api/experiences?%00;\\", "/api/experiences"),
            ("/api/%65xperiences/%7Euser", "/api/experiences/~user"),
            ("/api/a.b/..c/c../v1.2-x_y~z", "/api/a.b/..c/c../v1.2-x_y~z"),
            ("/api/!$&'()*+,=:@", "/api/!$&'()*+,=:@"),
        ] {
            assert_eq!(plain_path(target).as_deref(), Ok(plain), "{target}");
        }
        for target in [
            "/api/experiences/../consumers/1",
            "/api/experiences/..",
            "/api/experiences/./1",
            "/api/experiences/%2e%2e/consumers",
            "/api/experiences/%2E/consumers",
            "/api/experiences/.%2e/consumers",
            "/api/experiences/..;/consumers/1",
            "/api/experiences;jsessionid=ABC/1",
            "/api/experiences/1;jsessionid=ABC",
            "/api/experiences/%252e%252e/consumers",
            "/api/experiences/%2fconsumers",
            "/api/experiences%2Fconsumers",
            "/api/experiences/%5cconsumers",
            "/api/experiences/%00",
            "/api/experiences%00.json",
            "/api/experiences/%c0%ae%c0%ae/consumers",
            "/api/experiences/%e2%80%ae",
            "/api/experiences/%",
            "/api/experiences/%2",
            "/api/experiences/%zz",
            "/api//consumers",
            "//api/consumers",
            "/api\\x",
            "/api/experiences/\u{e9}",
            "/api/experiences/\u{202e}",
            "/api/exp eriences",
            "/api/experiences#/../consumers",
            "/api/<script>",
            "api/x",
            "",
            "*",
            "http://example.com/api/experiences",
        ] {
            assert!(plain_path(target).is_err(), "{target} was accepted");
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
        assert!(RouteTable::parse("GET /a/../b admin").is_err());
        assert!(RouteTable::parse("GET /a%2Fb admin").is_err());
        let custom = RouteTable::parse("POST /hooks  read:analytics  # webhooks\n").unwrap();
        assert_eq!(custom.required_scope("POST", "/hooks/1"), Scope::ReadAnalytics);
        assert_eq!(custom.required_scope("GET", "/hooks/1"), Scope::Admin);
    }
}
