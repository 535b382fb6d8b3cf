//! An incremental parser for server-sent events, as OpenAI-compatible servers stream them.
//!
//! Bytes arrive in arbitrary pieces; the parser keeps the unfinished tail and yields each event
//! whole once its blank line arrives, so a chunk boundary inside a UTF-8 character or a line
//! never corrupts an event.

/// One event: its `event:` name if any, and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    /// OpenAI's end-of-stream sentinel.
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

/// Renders one `data:` event (the payload must be a single line, as JSON without newlines is).
pub fn data_event(payload: &str) -> String {
    format!("data: {payload}\n\n")
}

pub const DONE_EVENT: &str = "data: [DONE]\n\n";

/// Turns a chat completion's stream, chunk by chunk, into another API's stream (Anthropic's
/// messages, OpenAI's Responses): each call returns the SSE text to send for what it was given.
pub trait StreamDialect {
    /// One parsed chunk of the chat stream.
    fn chunk(&mut self, chunk: &serde_json::Value) -> String;
    /// The chat stream's `[DONE]`.
    fn done(&mut self) -> String;
    /// The chat stream ended without its end or an error event of its own.
    fn broken(&mut self, message: &str) -> String;
    /// Whether the translated stream has said all it will.
    fn ended(&self) -> bool;
}

/// Renders one named event (`event:` and one `data:` line).
pub fn named_event(name: &str, payload: &str) -> String {
    format!("event: {name}\ndata: {payload}\n\n")
}

#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds bytes and returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut consumed = 0;
        while let Some(offset) = self.buffer[consumed..]
            .iter()
            .position(|byte| *byte == b'\n' || *byte == b'\r')
        {
            let end = consumed + offset;
            let mut next = end + 1;
            if self.buffer[end] == b'\r' {
                match self.buffer.get(next) {
                    Some(b'\n') => next += 1,
                    // A trailing `\r` may be half of `\r\n`: wait for more bytes.
                    None => break,
                    Some(_) => {}
                }
            }
            let line = String::from_utf8_lossy(&self.buffer[consumed..end]).into_owned();
            consumed = next;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        self.buffer.drain(..consumed);
        events
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.has_data.then(|| SseEvent {
                event: self.event.take(),
                data: self.data.join("\n"),
            });
            self.event = None;
            self.data.clear();
            self.has_data = false;
            return event;
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push(value.to_owned());
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(stream: &str, piece: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        stream
            .as_bytes()
            .chunks(piece)
            .flat_map(|bytes| parser.feed(bytes))
            .collect()
    }

    #[test]
    fn events_survive_any_split() {
        let stream = "data: {\"a\":\"é\"}\n\n: keep-alive\n\nevent: x\ndata: one\ndata:two\n\r\ndata: [DONE]\r\n\r\n";
        let expected = vec![
            SseEvent {
                event: None,
                data: "{\"a\":\"é\"}".into(),
            },
            SseEvent {
                event: Some("x".into()),
                data: "one\ntwo".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ];
        for piece in [1, 2, 3, 7, stream.len()] {
            assert_eq!(
                parse_in_pieces(stream, piece),
                expected,
                "piece size {piece}"
            );
        }
        assert!(expected[2].is_done());
    }

    #[test]
    fn an_unfinished_event_is_held_back() {
        let mut parser = SseParser::new();
        assert!(parser.feed(b"data: partial").is_empty());
        assert!(parser.feed(b"\n").is_empty());
        assert_eq!(parser.feed(b"\n").len(), 1);
    }

    #[test]
    fn renders_events() {
        assert_eq!(data_event("{}"), "data: {}\n\n");
        assert_eq!(
            parse_in_pieces(&data_event("{\"x\":1}"), 4)[0].data,
            "{\"x\":1}"
        );
    }
}
