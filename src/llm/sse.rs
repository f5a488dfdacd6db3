//! Server-sent events: a streaming parser for the `text/event-stream` bodies of LLM providers.
//!
//! Pure and incremental: bytes go in as they arrive (split anywhere, even inside a UTF-8
//! character or a CRLF), complete events come out. Follows the WHATWG rules that matter for LLM
//! streams: `event:` and `data:` fields, multi-line data joined with `\n`, comments (`:`) and
//! unknown fields ignored, an event dispatched at a blank line, a single leading space after the
//! colon removed.
//!
//! An event is bounded ([`MAX_EVENT_BYTES`]): a provider's events are small (a token, a tool
//! call's piece), and a server that streams a line without end must not take the process's memory
//! with it.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, if any (Anthropic names its events; OpenAI does not).
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// The most one event may hold, its unfinished line included.
pub(crate) const MAX_EVENT_BYTES: usize = 1 << 20;

/// An event grew past [`MAX_EVENT_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event grew past {limit} bytes without ending (at {bytes} bytes)")]
pub(crate) struct EventTooLarge {
    /// How large it had grown.
    pub bytes: usize,
    /// The limit.
    pub limit: usize,
}

/// Incremental parser.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    pending: Vec<u8>,
    /// How much of `pending` is known to hold no newline: each byte is searched once, however
    /// finely a long line arrives.
    scanned: usize,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds bytes and returns the events they completed.
    ///
    /// # Errors
    /// [`EventTooLarge`] when the event in progress, its unfinished line included, passes
    /// [`MAX_EVENT_BYTES`]; the stream cannot be trusted after that.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, EventTooLarge> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(found) = self.pending[self.scanned..]
            .iter()
            .position(|b| *b == b'\n')
        {
            let newline = self.scanned + found;
            self.scanned = 0;
            let mut line: Vec<u8> = self.pending.drain(..=newline).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            self.line(&line, &mut out);
        }
        self.scanned = self.pending.len();
        let bytes = self.pending.len()
            + self.data.as_ref().map_or(0, String::len)
            + self.event.as_ref().map_or(0, String::len);
        if bytes > MAX_EVENT_BYTES {
            return Err(EventTooLarge {
                bytes,
                limit: MAX_EVENT_BYTES,
            });
        }
        Ok(out)
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
        let events = p
            .push(
                b": keep-alive\n\nevent: message_start\ndata: {\"a\":1}\n\ndata: line one\ndata:line two\nid: 7\n\ndata: [DONE]\n\n",
            )
            .unwrap();
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
        assert!(p.push(b"data: hel").unwrap().is_empty());
        assert!(p.push(b"lo\r\n").unwrap().is_empty());
        assert_eq!(
            p.push(b"\r\n").unwrap(),
            vec![SseEvent {
                event: None,
                data: "hello".into()
            }]
        );
    }

    #[test]
    fn a_line_without_end_or_data_without_a_blank_line_is_refused_past_the_limit() {
        let mut p = SseParser::default();
        let piece = vec![b'x'; 64 * 1024];
        assert!(p.push(b"data: ").unwrap().is_empty());
        let mut pushed = 6;
        let error = loop {
            match p.push(&piece) {
                Ok(events) => assert!(events.is_empty()),
                Err(e) => break e,
            }
            pushed += piece.len();
            assert!(pushed <= MAX_EVENT_BYTES, "{pushed} bytes taken");
        };
        assert_eq!(error.limit, MAX_EVENT_BYTES);
        assert!(error.bytes > MAX_EVENT_BYTES);
        assert_eq!(
            error.to_string(),
            format!(
                "an event grew past 1048576 bytes without ending (at {} bytes)",
                error.bytes
            )
        );
        // Many short data lines with no blank line between them grow one event too.
        let mut p = SseParser::default();
        let line = format!("data: {}\n", "y".repeat(1000));
        let mut lines = 0;
        while p.push(line.as_bytes()).is_ok() {
            lines += 1;
            assert!(lines <= 1100, "{lines} lines taken");
        }
        assert!(lines >= 1000, "refused after {lines} lines");
        // An event just under the limit is delivered whole.
        let mut p = SseParser::default();
        let big = format!("data: {}\n\n", "z".repeat(MAX_EVENT_BYTES - 16));
        let events = p.push(big.as_bytes()).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data.len(), MAX_EVENT_BYTES - 16);
    }

    proptest! {
        #[test]
        fn splitting_the_bytes_anywhere_gives_the_same_events(
            datas in proptest::collection::vec("[a-zA-Z0-9 {}\":,é€]{0,20}", 1..8),
            cuts in proptest::collection::vec(1usize..9, 1..40),
        ) {
            let body: String = datas.iter().map(|d| format!("event: e\r\ndata: {d}\r\n\r\n")).collect();
            let whole = SseParser::default().push(body.as_bytes()).unwrap();
            let mut parser = SseParser::default();
            let mut pieces = Vec::new();
            let mut rest = body.as_bytes();
            for cut in cuts.iter().cycle() {
                if rest.is_empty() { break; }
                let at = (*cut).min(rest.len());
                pieces.extend(parser.push(&rest[..at]).unwrap());
                rest = &rest[at..];
            }
            prop_assert_eq!(&pieces, &whole);
            prop_assert_eq!(whole.len(), datas.len());
        }
    }
}
