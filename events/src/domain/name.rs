//! Display names of keys and organizations: 1–100 characters, not blank, no
//! control characters (they would corrupt key lists, logs and emails), no
//! bidirectional controls, no tag characters, and not only invisible
//! characters (each lets a name display as something it is not — "Trojan
//! Source" spoofing, hidden text — in lists and emails).

use serde::{Deserialize, Serialize};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

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

/// Characters that take no visible space: format characters (General
/// Category Cf: zero-width spaces and joiners, word joiner, invisible
/// operators, the byte-order mark, soft hyphen, interlinear annotation
/// anchors, shorthand format controls, tags…), combining and enclosing
/// marks on nothing (Mn, Me: variation selectors among them), white space,
/// and the fillers that are letters or symbols to Unicode but draw nothing
/// (Hangul fillers, the blank Braille pattern).
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c.general_category(),
            GeneralCategory::Format | GeneralCategory::NonspacingMark | GeneralCategory::EnclosingMark
        )
        || matches!(c, '\u{115F}' | '\u{1160}' | '\u{2800}' | '\u{3164}' | '\u{FFA0}')
}

/// Tag characters (U+E0000–U+E007F) spell ASCII that no one sees ("ASCII
/// smuggling"); they are refused anywhere, but in the three flag emoji
/// built from them (England, Scotland, Wales).
fn is_tag(c: char) -> bool {
    ('\u{E0000}'..='\u{E007F}').contains(&c)
}

const TAG_FLAGS: [&str; 3] = [
    "\u{1F3F4}\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
    "\u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
    "\u{1F3F4}\u{E0067}\u{E0062}\u{E0077}\u{E006C}\u{E0073}\u{E007F}",
];

fn has_stray_tags(text: &str) -> bool {
    let text = TAG_FLAGS
        .iter()
        .fold(text.to_owned(), |text, flag| text.replace(flag, ""));
    text.chars().any(is_tag)
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
        if has_stray_tags(text) {
            return Err("must not contain tag characters (U+E0000–U+E007F): they hide text no one sees".into());
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
        // Any format character, combining mark or enclosing mark alone.
        for invisible in [
            "\u{1BCA0}",
            "\u{FFF9}\u{FFFA}\u{FFFB}",
            "\u{0301}\u{0301}",
            " \u{0300}\u{036F} ",
            "\u{20DD}",
            "\u{110BD}",
            "\u{13430}",
            "\u{1D173}",
        ] {
            let error = Name::parse(invisible).unwrap_err();
            assert!(error.contains("visible"), "{invisible:?}: {error}");
        }
        // Tag characters hide ASCII text anywhere, even beside visible text.
        for tagged in ["admin\u{E0069}\u{E0067}\u{E006E}", "\u{E0001}x", "x\u{E007F}"] {
            let error = Name::parse(tagged).unwrap_err();
            assert!(error.contains("tag characters"), "{tagged:?}: {error}");
        }
        // …except in the three flag emoji made of them (England, Scotland, Wales).
        assert!(Name::parse("\u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F} team").is_ok());
        assert!(Name::parse("\u{1F3F4}\u{E0061}\u{E0064}\u{E006D}\u{E0069}\u{E006E}\u{E007F}").is_err());
        // Joiners and marks inside visible text are legitimate (emoji
        // sequences, accents, scripts).
        assert!(Name::parse("e\u{0301}te\u{0301}").is_ok());
        assert!(Name::parse("👩\u{200D}💻 team").is_ok());
        assert!(Name::parse("مفتاح الدفع").is_ok());
        assert!(Name::parse("ключ").is_ok());
    }
}
