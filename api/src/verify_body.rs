//! The body of a `POST /v1/verify` in the shape nearly every caller sends,
//! read in one pass over its bytes: no JSON tree, no token stream, its
//! strings borrowed from the body.
//!
//! The reader takes a strict subset of JSON and declines everything else —
//! an escape in any string, a repeated or unknown field, a value of another
//! type, a missing key, anything after the object. A declined body goes to
//! the general parser ([`read_general`]), which reads all of JSON
//! and names every problem, so declining changes only the time an answer
//! takes, never the answer. What the reader takes, it must read exactly as
//! the general parser would: a unit test holds it to that over random
//! bodies.

use crate::{body, error::ApiError};

/// A verification's fields, borrowed from the body.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub key: &'a str,
    pub scopes: Vec<&'a str>,
    pub environment: Option<&'a str>,
    pub ip: Option<&'a str>,
}

/// The fields of `body` when it is one JSON object of `key` (a string),
/// `scopes` (a list of strings, or null), `environment` and `ip` (each a
/// string, or null), each at most once and in any order, none of whose
/// strings (names included) holds an escape; otherwise `None`.
pub fn read(body: &[u8]) -> Option<Request<'_>> {
    // UTF-8 checked once for the whole body (a word at a time), not string
    // by string: outside its strings, JSON is ASCII anyway.
    let text = std::str::from_utf8(body).ok()?;
    let mut reader = Reader { text, at: 0 };
    reader.expect(b'{')?;
    // Each field: not seen (`None`), or seen with its value (`Some`), null
    // (`Some(None)`) included, so that a second one is declined.
    let (mut key, mut scopes, mut environment, mut ip) = (None, None, None, None);
    if !reader.next_is(b'}') {
        loop {
            let name = reader.string()?;
            reader.expect(b':')?;
            match name {
                "key" if key.is_none() => key = Some(reader.string()?),
                "scopes" if scopes.is_none() => scopes = Some(reader.or_null(Reader::strings)?),
                "environment" if environment.is_none() => environment = Some(reader.or_null(Reader::string)?),
                "ip" if ip.is_none() => ip = Some(reader.or_null(Reader::string)?),
                _ => return None,
            }
            if !reader.next_is(b',') {
                reader.expect(b'}')?;
                break;
            }
        }
    }
    reader.skip_space();
    if reader.at != body.len() {
        return None;
    }
    Some(Request {
        key: key?,
        scopes: scopes.flatten().unwrap_or_default(),
        environment: environment.flatten(),
        ip: ip.flatten(),
    })
}

/// A verification's fields as the general parser reads them: any JSON
/// object, its strings unescaped (so owned), every problem named.
pub struct General {
    key: String,
    scopes: Vec<String>,
    environment: Option<String>,
    ip: Option<String>,
}

pub fn read_general(body: &[u8]) -> Result<General, ApiError> {
    let mut fields = body::object_of(body)?;
    let key = fields.string("key");
    let scopes = fields.string_list("scopes").unwrap_or_default();
    let environment = fields.optional_string("environment");
    let ip = fields.optional_string("ip");
    fields.finish()?;
    Ok(General {
        // Never absent here: without a key, `finish` refused the body.
        key: key.unwrap_or_default(),
        scopes,
        environment,
        ip,
    })
}

impl General {
    pub fn request(&self) -> Request<'_> {
        Request {
            key: &self.key,
            scopes: self.scopes.iter().map(String::as_str).collect(),
            environment: self.environment.as_deref(),
            ip: self.ip.as_deref(),
        }
    }
}

struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    /// Past JSON's white space: space, tab, line feed, carriage return.
    fn skip_space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.as_bytes().get(self.at) {
            self.at += 1;
        }
    }

    /// Whether the next byte after white space is `byte`; if so, past it.
    fn next_is(&mut self, byte: u8) -> bool {
        self.skip_space();
        let found = self.text.as_bytes().get(self.at) == Some(&byte);
        self.at += usize::from(found);
        found
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.next_is(byte).then_some(())
    }

    /// A string without escapes or control characters (which JSON allows
    /// only escaped).
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        let length = first_special(&self.text.as_bytes()[start..])?;
        let end = start + length;
        if self.text.as_bytes()[end] != b'"' {
            return None;
        }
        self.at = end + 1;
        // Both ends are next to a quote, so on characters' boundaries.
        self.text.get(start..end)
    }

    /// A list of strings, perhaps empty.
    fn strings(&mut self) -> Option<Vec<&'a str>> {
        self.expect(b'[')?;
        let mut list = Vec::new();
        if self.next_is(b']') {
            return Some(list);
        }
        loop {
            list.push(self.string()?);
            if !self.next_is(b',') {
                self.expect(b']')?;
                return Some(list);
            }
        }
    }

    /// `null` (`Some(None)`), or what `read` reads.
    fn or_null<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        self.skip_space();
        if self.text.as_bytes()[self.at..].starts_with(b"null") {
            self.at += 4;
            return Some(None);
        }
        read(self).map(Some)
    }
}

/// Where in `bytes` the first `"`, `\\` or control character is, looked
/// for eight bytes at a time (the key is most of a body's bytes).
fn first_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = ONES << 7;
    // The high bit of each byte of `word` below `n` (at most 0x80) — exact
    // up to the first such byte; above it a borrow may mark others, which
    // the lowest set bit leaves out.
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    for (n, chunk) in chunks.by_ref().enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let found =
            below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1) | below(word, 0x20);
        if found != 0 {
            return Some(8 * n + found.trailing_zeros() as usize / 8);
        }
    }
    let rest = chunks.remainder();
    let position = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(bytes.len() - rest.len() + position)
}

#[cfg(test)]
mod tests {
    use super::{first_special, read, read_general, Request};

    /// The typed serde reader this one replaced, kept as the measure of
    /// what the quick path should take.
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct SerdeRequest<'a> {
        key: &'a str,
        #[serde(default, borrow)]
        scopes: Option<Vec<&'a str>>,
        #[serde(default)]
        environment: Option<&'a str>,
        #[serde(default)]
        ip: Option<&'a str>,
    }

    #[test]
    fn the_common_shapes_are_read() {
        for (body, expected) in [
            (
                r#"{"key": "sk_live_abc", "scopes": ["read:experiences"], "environment": "live"}"#,
                Request {
                    key: "sk_live_abc",
                    scopes: vec!["read:experiences"],
                    environment: Some("live"),
                    ip: None,
                },
            ),
            (
                "\r\n\t {\"ip\":\"203.0.113.7\",\"scopes\":[],\"key\":\"sk_test_\u{e9}\"} \n",
                Request {
                    key: "sk_test_\u{e9}",
                    scopes: vec![],
                    environment: None,
                    ip: Some("203.0.113.7"),
                },
            ),
            (
                r#"{"key":"k","scopes":null,"environment":null,"ip":null}"#,
                Request {
                    key: "k",
                    scopes: vec![],
                    environment: None,
                    ip: None,
                },
            ),
        ] {
            assert_eq!(read(body.as_bytes()), Some(expected), "{body}");
        }
    }

    #[test]
    fn what_the_general_parser_must_judge_is_declined() {
        for body in [
            "",
            "{}",
            "[\"k\"]",
            r#"{"key": "k\u005f"}"#,
            r#"{"k\u0065y": "k"}"#,
            r#"{"key": "k", "key": "k"}"#,
            r#"{"key": "k", "scopes": null, "scopes": []}"#,
            r#"{"key": "k", "extra": 1}"#,
            r#"{"key": null}"#,
            r#"{"key": "k", "scopes": ["a", 5]}"#,
            r#"{"key": "k", "scopes": "a"}"#,
            r#"{"key": "k", "environment": nul}"#,
            r#"{"key": "k", "ip": nullx}"#,
            r#"{"key": "k",}"#,
            r#"{"key": "k", "scopes": ["a",]}"#,
            r#"{"key": "k"} x"#,
            r#"{"key": "k"}{}"#,
            "{\"key\": \"a\tb\"}",
            "{\"key\": \"k\"}\u{a0}",
            "{\"key\" \"k\"}",
        ] {
            assert_eq!(read(body.as_bytes()), None, "{body}");
        }
        assert_eq!(read(b"{\"key\": \"\xff\"}"), None);
    }

    /// A repeatable stream of random numbers (xorshift) from `seed`.
    fn numbers(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    #[test]
    fn the_first_special_byte_is_found_eight_at_a_time_as_one_at_a_time() {
        let alphabet = [
            b'"',
            b'\\',
            0,
            0x1f,
            0x20,
            0x21,
            b'a',
            0x7f,
            0x80,
            0xc3,
            0xff,
            0x5c ^ 0x80,
            0x22 | 0x80,
        ];
        let mut next = numbers(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200_000 {
            let length = (next() % 40) as usize;
            // Mostly plain bytes, so that the special ones fall anywhere.
            let bytes: Vec<u8> = (0..length)
                .map(|_| match next() % 8 {
                    0 => alphabet[(next() % alphabet.len() as u64) as usize],
                    _ => b'a' + (next() % 26) as u8,
                })
                .collect();
            let expected = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            assert_eq!(first_special(&bytes), expected, "{bytes:?}");
        }
    }

    /// Random bodies over the pieces the grammar turns on: whatever the
    /// reader takes, the general parser reads alike; and everything the
    /// serde reader it replaced took, without an escape, it takes too.
    #[test]
    fn what_the_reader_takes_the_general_parser_reads_alike() {
        let pieces: Vec<&[u8]> = vec![
            b"{",
            b"{",
            b"}",
            b"}",
            b"[",
            b"]",
            b",",
            b",",
            b",",
            b":",
            b":",
            b":",
            b" ",
            b"\n",
            b"\t",
            b"\r",
            b"\x0c",
            b"\"key\"",
            b"\"key\"",
            b"\"key\"",
            b"\"scopes\"",
            b"\"scopes\"",
            b"\"environment\"",
            b"\"ip\"",
            b"\"other\"",
            b"\"k\\u0065y\"",
            b"\"sk_live_a\"",
            b"\"sk_live_a\"",
            b"\"read:keys\"",
            b"\"live\"",
            b"\"10.0.0.1\"",
            b"\"\"",
            b"\"a\\\"b\"",
            b"\"\xc3\xa9\"",
            b"\"\xff\"",
            b"\"\x01\"",
            b"\"",
            b"\\",
            b"null",
            b"null",
            b"nul",
            b"true",
            b"5",
            b"-0.5e3",
            b"x",
            b"\xc2\xa0",
            // Longer strings, a special byte past the first eight.
            b"\"read:experiences\"",
            b"\"sk_live_0123456789abcdef\"",
            b"\"0123456789\\\"ab\"",
            b"\"0123456789\x1f\"",
            b"\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9x\"",
            b"\"01234567\xffab\"",
        ];
        let mut next = numbers(0x2545_f491_4f6c_dd1d);
        let (mut taken, mut by_serde) = (0, 0);
        for n in 0..300_000 {
            let mut body = Vec::new();
            // Half start as the common shape does, so that many are whole
            // objects; the rest anywhere.
            if n % 2 == 0 {
                body.extend_from_slice(b"{\"key\": \"sk_live_a\"");
            }
            for _ in 0..next() % 14 {
                body.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
            }
            if n % 2 == 0 {
                body.push(b'}');
            }
            let quick = read(&body);
            if let Some(request) = &quick {
                taken += 1;
                let general =
                    read_general(&body).unwrap_or_else(|e| panic!("{e:?}: {}", String::from_utf8_lossy(&body)));
                assert_eq!(&general.request(), request, "{}", String::from_utf8_lossy(&body));
            }
            let serde_takes = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
                && serde_json::from_slice::<SerdeRequest>(&body).is_ok();
            if serde_takes && !body.contains(&b'\\') {
                by_serde += 1;
                assert!(quick.is_some(), "{}", String::from_utf8_lossy(&body));
            }
        }
        // The random bodies reach the taken side often enough to mean
        // something.
        assert!(taken > 5_000 && by_serde > 5_000, "{taken} taken, {by_serde} by serde");
    }
}
