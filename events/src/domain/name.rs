//! Display names of keys and organizations: 1–100 characters, not blank, no
//! control characters (they would corrupt key lists, logs and emails), no
//! bidirectional controls and not only invisible characters (either lets a
//! name display as something it is not — "Trojan Source" spoofing in lists
//! and emails).

use serde::{Deserialize, Serialize};

pub const MAX_NAME_CHARS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Name(String);

/// Characters that reorder the text around them: embeddings, overrides and
/// isolates (U+202A–U+202E, U+2066–U+2069), the directional marks U+200E,
/// U+200F and U+061C.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Characters that take no visible space: zero-width spaces and joiners,
/// word joiner and invisible operators, the byte-order mark, soft hyphen,
/// fillers, variation selectors and tags — and white space.
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200D}'
                | '\u{2060}'..='\u{2064}'
                | '\u{206A}'..='\u{206F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E007F}'
                | '\u{E0100}'..='\u{E01EF}'
        )
}

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
        // U+2028 and U+2029 are line breaks without being control characters.
        if text
            .chars()
            .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
        {
            return Err("must not contain control characters (newlines, tabs, …)".into());
        }
        if let Some(c) = text.chars().find(|&c| is_bidi_control(c)) {
            return Err(format!(
                "must not contain bidirectional control characters (found U+{:04X}): they make text display \
                 in another order than it is written",
                c as u32
            ));
        }
        if text.chars().all(is_invisible) {
            return Err("must contain a visible character (it has only invisible or zero-width characters)".into());
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
        assert!(Name::parse("line\u{2028}separator").is_err());
    }

    #[test]
    fn names_cannot_reorder_or_hide_their_text() {
        for bidi in [
            '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
            '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            let error = Name::parse(&format!("admin{bidi}txt.exe")).unwrap_err();
            assert!(error.contains("bidirectional"), "{bidi:?}: {error}");
        }
        for invisible in [
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}",
            "\u{2060}",
            "\u{FEFF}",
            " \u{200B} ",
            "\u{3164}",
            "\u{00AD}",
        ] {
            let error = Name::parse(invisible).unwrap_err();
            assert!(error.contains("visible"), "{invisible:?}: {error}");
        }
        // Joiners inside visible text are legitimate (emoji sequences, scripts).
        assert!(Name::parse("👩\u{200D}💻 team").is_ok());
        assert!(Name::parse("مفتاح الدفع").is_ok());
        assert!(Name::parse("ключ").is_ok());
    }
}
