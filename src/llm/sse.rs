//! Server-sent events: a streaming parser for the `text/event-stream` bodies of LLM providers.
//!
//! Pure and incremental: bytes go in as they arrive (split anywhere, even inside a UTF-8
//! character or a CRLF), complete events come out. Follows the WHATWG rules that matter for LLM
//! streams: `event:` and `data:` fields, multi-line data joined with `\n`, comments (`:`) and
//! unknown fields ignored, an event dispatched at a blank line, a single leading space after the
//! colon removed.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, if any (Anthropic names its events; OpenAI does not).
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Incremental parser.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    pending: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds bytes and returns the events they completed.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(newline) = self.pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=newline).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            self.line(&line, &mut out);
        }
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(SseEvent {
                    event: self.event.take(),
                    data,
                });
            }
            self.event = None;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn events_fields_comments_and_multiline_data() {
        let mut p = SseParser::default();
        let events = p.push(
            b": keep-alive\n\nevent: message_start\ndata: {\"a\":1}\n\ndata: line one\ndata:line two\nid: 7\n\ndata: [DONE]\n\n",
        );
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "line one\nline two".into()
                },
                SseEvent {
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
    }

    #[test]
    fn crlf_and_partial_input() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: hel").is_empty());
        assert!(p.push(b"lo\r\n").is_empty());
        assert_eq!(
            p.push(b"\r\n"),
            vec![SseEvent {
                event: None,
                data: "hello".into()
            }]
        );
    }

    proptest! {
        #[test]
        fn splitting_the_bytes_anywhere_gives_the_same_events(
            datas in proptest::collection::vec("[a-zA-Z0-9 {}\":,é€]{0,20}", 1..8),
            cuts in proptest::collection::vec(1usize..9, 1..40),
        ) {
            let body: String = datas.iter().map(|d| format!("event: e\r\ndata: {d}\r\n\r\n")).collect();
            let whole = SseParser::default().push(body.as_bytes());
            let mut parser = SseParser::default();
            let mut pieces = Vec::new();
            let mut rest = body.as_bytes();
            for cut in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let at = (*cut).min(rest.len());
                pieces.extend(parser.push(&rest[..at]));
                rest = &rest[at..];
            }
            prop_assert_eq!(&pieces, &whole);
            prop_assert_eq!(whole.len(), datas.len());
        }
    }
}
