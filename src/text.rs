//! Small text helpers shared by the engine, the scripted backends and the report.

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
}
