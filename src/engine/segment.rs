//! Streaming sentence segmentation: LLM text deltas in, speakable sentences out.
//!
//! A sentence is released the moment its terminator arrives, without waiting for the next
//! token to show a following space (waiting costs a whole token interval on every reply).
//! The exceptions are the cases where the next character decides: a period after a digit
//! (`3.` may become `3.5`) and after a known abbreviation or an initial (`Dr.`, `J.`). The
//! first segment of a reply may also end at a comma, semicolon or colon once it has
//! `first_clause_words` words, so speech starts sooner. Text without punctuation is cut at a
//! space past `max_chars`, and [`SentenceSplitter::finish`] releases whatever remains.

const TERMINATORS: &[char] = &['.', '!', '?', '…'];
const CLOSERS: &[char] = &['"', '\'', ')', ']', '”', '’', '»'];
const CLAUSE_BREAKS: &[char] = &[',', ';', ':'];
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "sr", "jr", "prof", "vs", "e.g", "i.e", "inc", "ltd", "co",
    "no", "approx", "fig", "dept", "ave", "mt", "gen", "gov", "sgt", "capt", "u.s",
];

/// Splits streamed text into sentences.
#[derive(Debug, Clone)]
pub struct SentenceSplitter {
    pending: String,
    emitted: usize,
    first_clause_words: usize,
    max_chars: usize,
}

impl Default for SentenceSplitter {
    fn default() -> Self {
        Self::new(6, 240)
    }
}

impl SentenceSplitter {
    /// A splitter that lets the first segment end at a clause break after
    /// `first_clause_words` words (0 disables) and cuts unpunctuated text past `max_chars`.
    pub fn new(first_clause_words: usize, max_chars: usize) -> Self {
        Self {
            pending: String::new(),
            emitted: 0,
            first_clause_words,
            max_chars,
        }
    }

    /// A splitter whose first segment ends at the reply's first punctuation, however few words
    /// precede it ("Sure,", "Of course."): the quick first chunk a speculative reply
    /// synthesizes during the eager lead. Later segments follow the default rules.
    pub fn quick_first_chunk() -> Self {
        Self::new(1, 240)
    }

    /// Adds a delta and returns the sentences it completed.
    pub fn push(&mut self, delta: &str) -> Vec<String> {
        self.pending.push_str(delta);
        let mut out = Vec::new();
        while let Some(end) = self.boundary() {
            let rest = self.pending.split_off(end);
            let sentence = std::mem::replace(&mut self.pending, rest);
            self.pending = self.pending.trim_start().to_owned();
            self.release(sentence, &mut out);
        }
        out
    }

    /// Releases the remaining text at the end of the reply.
    pub fn finish(&mut self) -> Option<String> {
        let mut out = Vec::new();
        let rest = std::mem::take(&mut self.pending);
        self.release(rest, &mut out);
        out.pop()
    }

    fn release(&mut self, sentence: String, out: &mut Vec<String>) {
        let sentence = sentence.trim();
        if sentence.chars().any(char::is_alphanumeric) {
            self.emitted += 1;
            out.push(sentence.to_owned());
        }
    }

    fn boundary(&self) -> Option<usize> {
        let text = self.pending.as_str();
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut k = 0;
        while k < chars.len() {
            let (i, c) = chars[k];
            if TERMINATORS.contains(&c) {
                let mut j = k + 1;
                while j < chars.len()
                    && (TERMINATORS.contains(&chars[j].1) || CLOSERS.contains(&chars[j].1))
                {
                    j += 1;
                }
                let single_period = c == '.' && j == k + 1;
                let word = word_before(text, i);
                let ambiguous = single_period
                    && (is_abbreviation(word)
                        || word.chars().last().is_some_and(|d| d.is_ascii_digit()));
                match chars.get(j) {
                    None if ambiguous => return None,
                    None => return Some(text.len()),
                    Some((at, next)) if next.is_whitespace() => {
                        if !(single_period && is_abbreviation(word)) {
                            return Some(*at);
                        }
                    }
                    Some(_) => {}
                }
                k = j;
                continue;
            }
            if self.emitted == 0
                && self.first_clause_words > 0
                && CLAUSE_BREAKS.contains(&c)
                && crate::text::word_count(&text[..i]) >= self.first_clause_words
            {
                let digit_before = word_before(text, i)
                    .chars()
                    .last()
                    .is_some_and(|d| d.is_ascii_digit());
                match chars.get(k + 1) {
                    None if digit_before => return None,
                    None => return Some(text.len()),
                    Some((at, next)) if next.is_whitespace() => return Some(*at),
                    Some(_) => {}
                }
            }
            k += 1;
        }
        if text.len() > self.max_chars {
            return text[..self.max_chars]
                .rfind(char::is_whitespace)
                .filter(|&at| at > 0);
        }
        None
    }
}

fn word_before(text: &str, end: usize) -> &str {
    let start = text[..end].rfind(char::is_whitespace).map_or(0, |p| p + 1);
    text[start..end].trim_start_matches(|c: char| !c.is_alphanumeric())
}

fn is_abbreviation(word: &str) -> bool {
    let lower = word.to_lowercase();
    ABBREVIATIONS.contains(&lower.as_str())
        || (word.chars().count() == 1
            && word.chars().all(|c| c.is_alphabetic() && c.is_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::normalize;
    use proptest::prelude::*;

    fn split_tokens(tokens: &[&str]) -> Vec<String> {
        split_with(SentenceSplitter::default(), tokens)
    }

    fn split_with(mut s: SentenceSplitter, tokens: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for t in tokens {
            out.extend(s.push(t));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn releases_a_sentence_on_its_terminator_without_waiting() {
        let mut s = SentenceSplitter::default();
        assert!(s.push("Yes").is_empty());
        assert!(s.push(" we").is_empty());
        assert_eq!(s.push(" are."), vec!["Yes we are."]);
        assert_eq!(s.push(" Come"), Vec::<String>::new());
        assert_eq!(s.push(" in!"), vec!["Come in!"]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn numbers_abbreviations_and_initials_wait_for_the_next_character() {
        assert_eq!(
            split_tokens(&["It costs 3", ".", "50", " today.", " Thanks."]),
            vec!["It costs 3.50 today.", "Thanks."]
        );
        assert_eq!(
            split_tokens(&["Ask Dr", ".", " Smith", " now.", " Bye."]),
            vec!["Ask Dr. Smith now.", "Bye."]
        );
        assert_eq!(
            split_tokens(&["Written by J.", " K.", " Rowling."]),
            vec!["Written by J. K. Rowling."]
        );
        assert_eq!(
            split_tokens(&["It was 2024.", " Then"]),
            vec!["It was 2024.", "Then"]
        );
        assert_eq!(
            split_tokens(&["Visit example.com today."]),
            vec!["Visit example.com today."]
        );
    }

    #[test]
    fn quotes_ellipses_and_question_marks() {
        assert_eq!(
            split_tokens(&["He said \"stop.\"", " Then left?!", " Well...", " ok"]),
            vec!["He said \"stop.\"", "Then left?!", "Well...", "ok"]
        );
    }

    #[test]
    fn first_clause_may_end_at_a_comma_after_enough_words() {
        assert_eq!(
            split_tokens(&[
                "Thanks Jordan, your table for four is booked",
                ", and we will hold it",
                "."
            ]),
            vec![
                "Thanks Jordan, your table for four is booked,",
                "and we will hold it."
            ]
        );
        assert_eq!(
            split_tokens(&["Sure, that works.", " Later, we talk, ok."]),
            vec!["Sure, that works.", "Later, we talk, ok."],
            "short clauses and later sentences are not cut at commas"
        );
        assert_eq!(
            split_tokens(&["We sold one two three four 1,", "000 units."]),
            vec!["We sold one two three four 1,000 units."]
        );
    }

    #[test]
    fn a_quick_first_chunk_ends_at_the_first_punctuation() {
        let split = |tokens: &[&str]| split_with(SentenceSplitter::quick_first_chunk(), tokens);
        let mut s = SentenceSplitter::quick_first_chunk();
        assert_eq!(s.push("Yes,"), vec!["Yes,"], "released on its own token");
        assert_eq!(
            split(&["Sure", " thing,", " I", " can,", " really."]),
            vec!["Sure thing,", "I can, really."],
            "only the first segment is cut short"
        );
        assert_eq!(
            split(&["Of", " course.", " What", " time?"]),
            vec!["Of course.", "What time?"]
        );
        assert_eq!(
            split(&["Let", " me", " check", " that", " for", " you."]),
            vec!["Let me check that for you."],
            "no punctuation: never cut mid-phrase"
        );
        assert_eq!(
            split(&["About 1,", "000 people."]),
            vec!["About 1,000 people."],
            "a digit before the comma waits"
        );
    }

    #[test]
    fn unpunctuated_text_is_cut_at_a_space_and_flushed_at_the_end() {
        let mut s = SentenceSplitter::new(0, 20);
        let out = s.push("one two three four five six seven");
        assert_eq!(out, vec!["one two three four"]);
        assert_eq!(s.finish(), Some("five six seven".into()));
    }

    proptest! {
        #[test]
        fn no_words_are_lost_however_the_text_is_streamed(
            words in proptest::collection::vec("[A-Za-z0-9]{1,7}[.,!?]?", 1..40),
            cuts in proptest::collection::vec(1usize..12, 1..60),
        ) {
            let text = words.join(" ");
            let mut tokens = Vec::new();
            let mut rest = text.as_str();
            for cut in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let at = rest.char_indices().nth(*cut).map_or(rest.len(), |(i, _)| i);
                tokens.push(&rest[..at]);
                rest = &rest[at..];
            }
            let out = split_tokens(&tokens);
            prop_assert_eq!(normalize(&out.join(" ")), normalize(&text));
            for s in &out {
                prop_assert!(s.chars().any(char::is_alphanumeric));
                prop_assert_eq!(s.trim(), s.as_str());
            }
        }
    }
}
