//! Small text helpers shared by the engine, the scripted backends, the report and the server.

use std::fmt;

/// Characters of outside text kept in a log line or an error message.
pub(crate) const UNTRUSTED_CHARS: usize = 200;

/// Lowercase words without punctuation, single-spaced: how transcripts are compared
/// ("Friday." and "friday" are the same words).
pub(crate) fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        let cleaned: String = word
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '\'')
            .flat_map(char::to_lowercase)
            .collect();
        let cleaned = cleaned.trim_matches('\'');
        if cleaned.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(cleaned);
    }
    out
}

/// Number of words (whitespace-separated runs with at least one alphanumeric character).
pub(crate) fn word_count(text: &str) -> usize {
    text.split_whitespace()
        .filter(|w| w.chars().any(char::is_alphanumeric))
        .count()
}

/// Text from outside the process (a client, a carrier, a provider's error body) as it may
/// appear in a log line or in a message to a client: control characters and the Unicode
/// characters that reorder or break lines are escaped, so the text cannot forge a log line or
/// hide itself, and at most [`UNTRUSTED_CHARS`] characters are kept, so a 900 KB field name
/// stays a short line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Untrusted<'a>(pub(crate) &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        for (kept, (at, c)) in self.0.char_indices().enumerate() {
            if kept == UNTRUSTED_CHARS {
                return write!(f, "... ({} more bytes)", self.0.len() - at);
            }
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else if matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            {
                write!(f, "{}", c.escape_unicode())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_ignores_case_and_punctuation() {
        assert_eq!(
            normalize("I'd like to change my flight."),
            "i'd like to change my flight"
        );
        assert_eq!(normalize("  Hello,   WORLD!! "), "hello world");
        assert_eq!(normalize("— ..."), "");
        assert_eq!(normalize("'quoted'"), "quoted");
        assert_eq!(normalize("I'd like"), normalize("i'd LIKE."));
    }

    #[test]
    fn word_count_skips_punctuation_only_tokens() {
        assert_eq!(word_count("uh-huh"), 1);
        assert_eq!(word_count("wait — stop!"), 2);
        assert_eq!(word_count(""), 0);
    }

    fn untrusted(text: &str) -> String {
        Untrusted(text).to_string()
    }

    #[test]
    fn untrusted_text_cannot_forge_a_line_or_grow_one() {
        assert_eq!(untrusted("CA123"), "CA123");
        assert_eq!(
            untrusted("CA1\n2026-12-06T00:00:00Z  INFO forged"),
            "CA1\\n2026-12-06T00:00:00Z  INFO forged"
        );
        assert_eq!(untrusted("a\r\u{1b}[31mb\u{0}"), "a\\r\\u{1b}[31mb\\u{0}");
        assert_eq!(untrusted("x\u{202e}y\u{2028}"), "x\\u{202e}y\\u{2028}");
        let huge = "é".repeat(450_000);
        let kept = untrusted(&huge);
        assert!(kept.starts_with(&"é".repeat(UNTRUSTED_CHARS)), "{kept}");
        assert!(kept.ends_with("... (899600 more bytes)"), "{kept}");
        assert!(kept.len() < 450, "{}", kept.len());
        assert_eq!(
            untrusted(&"a".repeat(UNTRUSTED_CHARS)),
            "a".repeat(UNTRUSTED_CHARS)
        );
    }
}
