//! Figures as people read them in what keyledger shows and sends (portal
//! pages, alert emails): one formatting, wherever a number is written out.

/// A whole number with thousands separators: `12,345`.
pub fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

/// `text` with its first letter upper-case: `pro` → `Pro`.
pub fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(-1000), "-1,000");
    }

    #[test]
    fn the_first_letter_is_capitalised() {
        assert_eq!(capitalised("pro"), "Pro");
        assert_eq!(capitalised("élan vital"), "Élan vital");
        assert_eq!(capitalised(""), "");
    }
}
