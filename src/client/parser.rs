//! Incremental `text/event-stream` parser.
//!
//! This module owns the WHATWG "interpreting an event stream" rules and
//! nothing else: it is fed arbitrary byte chunks (as they come off a socket)
//! and produces dispatched [`Event`]s. It knows no HTTP and no I/O, so it can
//! be tested byte by byte.
//!
//! Rules implemented (HTML Living Standard, §9.2.5–9.2.6):
//! - one UTF-8 BOM at the start of the stream is dropped;
//! - lines end with CR, LF or CRLF, also when the CR and the LF arrive in
//!   different chunks;
//! - a blank line dispatches; a line starting with `:` is a comment;
//! - `name: value` splits at the first colon and drops one space after it; a
//!   line without colon is a field name with an empty value;
//! - `data` lines are joined with LF, the final LF removed; nothing is
//!   dispatched while the data buffer is empty;
//! - `id` values containing NUL are ignored; the last event id persists
//!   across events (and, in [`Parser::reset_connection`], across
//!   connections);
//! - `retry` is honoured only when it is made of ASCII digits (an empty value
//!   or one that does not fit in a `u64` is ignored as well).
//!
//! Invalid UTF-8 is replaced by U+FFFD, as the spec's UTF-8 decode does.

use std::fmt;

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The last event id in force when the event was dispatched (`None` while
    /// the stream has not set one, or after it set an empty one).
    pub id: Option<String>,
    /// The event type; `"message"` when the stream did not set one.
    pub event: String,
    /// The `data` lines joined with LF.
    pub data: String,
    /// The reconnection time (ms) set by a `retry` field inside this event's
    /// block, if any.
    pub retry: Option<u64>,
}

impl Event {
    /// An event of type `message` with the given data and no id.
    pub fn message(data: impl Into<String>) -> Event {
        Event {
            id: None,
            event: "message".to_string(),
            data: data.into(),
            retry: None,
        }
    }
}

/// The parser refused to buffer more bytes than its limit allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLarge {
    /// The limit that was exceeded, in bytes.
    pub limit: usize,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event stream line or event larger than {} bytes",
            self.limit
        )
    }
}

impl std::error::Error for TooLarge {}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Default cap on one line plus the pending event's data (16 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 << 20;

/// Incremental event-stream parser; see the module documentation.
#[derive(Debug, Clone)]
pub struct Parser {
    /// Bytes of the current, not yet terminated line.
    line: Vec<u8>,
    /// The previous chunk ended in CR: a leading LF of the next chunk belongs
    /// to that same line end.
    pending_cr: bool,
    /// How many bytes of a leading BOM have matched so far; `None` once the
    /// start of the stream has been decided.
    bom_matched: Option<usize>,
    data: String,
    event_type: String,
    id_buffer: String,
    last_event_id: String,
    block_retry: Option<u64>,
    reconnection_time: Option<u64>,
    max_bytes: usize,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new()
    }
}

impl Parser {
    /// A parser at the start of a stream, with no last event id.
    pub fn new() -> Parser {
        Parser {
            line: Vec::new(),
            pending_cr: false,
            bom_matched: Some(0),
            data: String::new(),
            event_type: String::new(),
            id_buffer: String::new(),
            last_event_id: String::new(),
            block_retry: None,
            reconnection_time: None,
            max_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }

    /// A parser whose last event id starts as `id` (a resumed subscription).
    pub fn with_last_event_id(id: impl Into<String>) -> Parser {
        let id = id.into();
        Parser {
            id_buffer: id.clone(),
            last_event_id: id,
            ..Parser::new()
        }
    }

    /// Caps the bytes held for one line plus the pending event data; past it
    /// [`Parser::feed`] fails rather than growing without bound.
    pub fn set_max_event_bytes(&mut self, limit: usize) {
        self.max_bytes = limit.max(1);
    }

    /// The last event id string as of the last dispatch (empty if none).
    /// This is what a reconnect sends as `Last-Event-ID`.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// The reconnection time (ms) from the most recent valid `retry` field,
    /// whether or not an event has been dispatched since.
    pub fn reconnection_time(&self) -> Option<u64> {
        self.reconnection_time
    }

    /// Prepares for a new connection: the half-read line and event are
    /// dropped (the spec discards an event cut off by end of stream), the
    /// BOM may appear again, while the last event id and the reconnection
    /// time are kept.
    pub fn reset_connection(&mut self) {
        self.line.clear();
        self.pending_cr = false;
        self.bom_matched = Some(0);
        self.data.clear();
        self.event_type.clear();
        self.id_buffer = self.last_event_id.clone();
        self.block_retry = None;
    }

    /// Feeds the next chunk of the stream, appending every event it
    /// completes to `out`.
    pub fn feed<E: Extend<Event>>(&mut self, chunk: &[u8], out: &mut E) -> Result<(), TooLarge> {
        let mut rest = self.skip_bom(chunk);
        if self.pending_cr && !rest.is_empty() {
            self.pending_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let end = rest[pos];
            self.push_line_bytes(&rest[..pos])?;
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out);
            // Reuse the allocation for the next line.
            self.line = line;
            self.line.clear();
            rest = &rest[pos + 1..];
            if end == b'\r' {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
        }
        self.push_line_bytes(rest)
    }

    /// Strips a BOM that may itself be split across chunks. Bytes that
    /// started like a BOM but turned out not to be one are put back in front
    /// of the line.
    fn skip_bom<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        let Some(mut matched) = self.bom_matched else {
            return chunk;
        };
        let mut i = 0;
        while i < chunk.len() && matched < BOM.len() {
            if chunk[i] != BOM[matched] {
                self.bom_matched = None;
                // The partial match belongs to the stream's first line.
                self.line.extend_from_slice(&BOM[..matched]);
                return &chunk[i..];
            }
            matched += 1;
            i += 1;
        }
        self.bom_matched = if matched == BOM.len() {
            None
        } else {
            Some(matched)
        };
        &chunk[i..]
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), TooLarge> {
        if self.line.len() + bytes.len() + self.data.len() > self.max_bytes {
            return Err(TooLarge {
                limit: self.max_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line<E: Extend<Event>>(&mut self, line: &[u8], out: &mut E) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (&line[..colon], value)
            }
            None => (line, &b""[..]),
        };
        match name {
            b"event" => self.event_type = String::from_utf8_lossy(value).into_owned(),
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
            }
            b"id" if !value.contains(&0) => {
                self.id_buffer = String::from_utf8_lossy(value).into_owned();
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                // All digits, so only overflow can fail: ignore the field then.
                if let Some(ms) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    self.reconnection_time = Some(ms);
                    self.block_retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch<E: Extend<Event>>(&mut self, out: &mut E) {
        // The spec updates the last event id even when nothing is dispatched.
        self.last_event_id.clone_from(&self.id_buffer);
        let retry = self.block_retry.take();
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let event = if self.event_type.is_empty() {
            "message".to_string()
        } else {
            std::mem::take(&mut self.event_type)
        };
        let id = if self.last_event_id.is_empty() {
            None
        } else {
            Some(self.last_event_id.clone())
        };
        out.extend(Some(Event {
            id,
            event,
            data,
            retry,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Vec<Event> {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.feed(input, &mut out).unwrap();
        out
    }

    fn ev(id: Option<&str>, event: &str, data: &str) -> Event {
        Event {
            id: id.map(str::to_string),
            event: event.to_string(),
            data: data.to_string(),
            retry: None,
        }
    }

    #[test]
    fn bom_at_stream_start_is_stripped() {
        assert_eq!(
            parse(b"\xEF\xBB\xBFdata: a\n\n"),
            vec![ev(None, "message", "a")]
        );
    }

    #[test]
    fn only_one_bom_is_stripped() {
        // A second BOM makes the first line's field name "\u{feff}data".
        assert_eq!(parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\n"), vec![]);
    }

    #[test]
    fn bom_split_across_chunks_is_stripped() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.feed(b"\xEF", &mut out).unwrap();
        p.feed(b"\xBB", &mut out).unwrap();
        p.feed(b"\xBFdata: a\n\n", &mut out).unwrap();
        assert_eq!(out, vec![ev(None, "message", "a")]);
    }

    #[test]
    fn partial_bom_prefix_is_kept_as_data() {
        // EF BB then 'x' is not a BOM: the bytes stay (as U+FFFD once decoded).
        let out = parse(b"data: \xEF\xBBx\n\n");
        assert_eq!(out[0].data, "\u{FFFD}x");
        let out = parse(b"\xEF\xBBdata: a\n\n");
        assert_eq!(out, vec![]);
    }

    #[test]
    fn bom_not_at_start_is_data() {
        assert_eq!(parse(b"data: \xEF\xBB\xBFa\n\n")[0].data, "\u{FEFF}a");
    }

    #[test]
    fn lf_line_ends() {
        assert_eq!(
            parse(b"data: a\ndata: b\n\n"),
            vec![ev(None, "message", "a\nb")]
        );
    }

    #[test]
    fn cr_line_ends() {
        assert_eq!(
            parse(b"data: a\rdata: b\r\r"),
            vec![ev(None, "message", "a\nb")]
        );
    }

    #[test]
    fn crlf_line_ends() {
        assert_eq!(
            parse(b"data: a\r\ndata: b\r\n\r\n"),
            vec![ev(None, "message", "a\nb")]
        );
    }

    #[test]
    fn mixed_line_ends() {
        assert_eq!(
            parse(b"data: a\r\ndata: b\rdata: c\n\r\n"),
            vec![ev(None, "message", "a\nb\nc")]
        );
    }

    #[test]
    fn lf_cr_is_two_line_ends() {
        // "\n\r" ends the data line and then an empty line: dispatch.
        assert_eq!(parse(b"data: a\n\r"), vec![ev(None, "message", "a")]);
    }

    #[test]
    fn cr_then_lf_in_next_chunk_is_one_line_end() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.feed(b"data: a\r", &mut out).unwrap();
        p.feed(b"\ndata: b\r", &mut out).unwrap();
        assert!(out.is_empty(), "a CRLF split in two must not dispatch");
        p.feed(b"\n\r", &mut out).unwrap();
        p.feed(b"\n", &mut out).unwrap();
        assert_eq!(out, vec![ev(None, "message", "a\nb")]);
    }

    #[test]
    fn cr_at_chunk_end_then_other_byte_keeps_it() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.feed(b"data: a\r", &mut out).unwrap();
        p.feed(b"\r", &mut out).unwrap();
        assert_eq!(out, vec![ev(None, "message", "a")]);
        p.feed(b"data: b\n\n", &mut out).unwrap();
        assert_eq!(out[1], ev(None, "message", "b"));
    }

    #[test]
    fn cr_at_chunk_end_survives_empty_chunk() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.feed(b"data: a\r", &mut out).unwrap();
        p.feed(b"", &mut out).unwrap();
        p.feed(b"\n\n", &mut out).unwrap();
        assert_eq!(out, vec![ev(None, "message", "a")]);
    }

    #[test]
    fn field_without_colon_has_empty_value() {
        // "data" alone appends an empty line to the data buffer.
        assert_eq!(
            parse(b"data\ndata\ndata: x\n\n"),
            vec![ev(None, "message", "\n\nx")]
        );
        // "event" alone resets the type to empty, which dispatches "message".
        assert_eq!(
            parse(b"event: a\nevent\ndata: x\n\n"),
            vec![ev(None, "message", "x")]
        );
        // A lone "data" is one empty line: dispatched as empty data.
        assert_eq!(parse(b"data\n\n"), vec![ev(None, "message", "")]);
    }

    #[test]
    fn exactly_one_leading_space_is_stripped() {
        assert_eq!(
            parse(b"data:a\n\ndata: a\n\ndata:  a\n\ndata:\ta\n\n"),
            vec![
                ev(None, "message", "a"),
                ev(None, "message", "a"),
                ev(None, "message", " a"),
                ev(None, "message", "\ta"),
            ]
        );
    }

    #[test]
    fn value_keeps_later_colons_and_trailing_space() {
        assert_eq!(
            parse(b"data: a: b \n\n"),
            vec![ev(None, "message", "a: b ")]
        );
    }

    #[test]
    fn field_names_are_case_sensitive_and_unknown_ignored() {
        assert_eq!(
            parse(b"Data: x\nDATA: y\nfoo: z\ndata : w\ndata: v\n\n"),
            vec![ev(None, "message", "v")]
        );
    }

    #[test]
    fn id_with_nul_is_ignored() {
        assert_eq!(
            parse(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n"),
            vec![ev(Some("1"), "message", "a"), ev(Some("1"), "message", "b")]
        );
    }

    #[test]
    fn empty_id_resets_last_event_id() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.feed(b"id: 1\ndata: a\n\nid\ndata: b\n\n", &mut out)
            .unwrap();
        assert_eq!(
            out,
            vec![ev(Some("1"), "message", "a"), ev(None, "message", "b")]
        );
        assert_eq!(p.last_event_id(), "");
    }

    #[test]
    fn retry_only_ascii_digits() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.feed(b"retry: 1500\n\n", &mut out).unwrap();
        assert_eq!(p.reconnection_time(), Some(1500));
        for bad in [
            &b"retry: 15a\n\n"[..],
            b"retry: -1\n\n",
            b"retry: +1\n\n",
            b"retry: 1.5\n\n",
            b"retry:  12\n\n",
            b"retry: 12 \n\n",
            b"retry:\n\n",
            b"retry\n\n",
            b"retry: \xD9\xA3\n\n",
            b"retry: 99999999999999999999999\n\n",
        ] {
            p.feed(bad, &mut out).unwrap();
            assert_eq!(p.reconnection_time(), Some(1500), "{bad:?}");
        }
        p.feed(b"retry:0\n\n", &mut out).unwrap();
        assert_eq!(p.reconnection_time(), Some(0));
        assert!(out.is_empty(), "retry alone dispatches nothing");
    }

    #[test]
    fn retry_is_reported_on_its_event_only() {
        assert_eq!(
            parse(b"retry: 10\ndata: a\n\ndata: b\n\n"),
            vec![
                Event {
                    retry: Some(10),
                    ..ev(None, "message", "a")
                },
                ev(None, "message", "b"),
            ]
        );
    }

    #[test]
    fn data_lines_joined_with_lf_and_last_lf_removed() {
        assert_eq!(
            parse(b"data: a\ndata:\ndata: b\ndata:\n\n"),
            vec![ev(None, "message", "a\n\nb\n")]
        );
    }

    #[test]
    fn blank_line_dispatches_and_resets_type() {
        assert_eq!(
            parse(b"event: t\ndata: a\n\ndata: b\n\n"),
            vec![ev(None, "t", "a"), ev(None, "message", "b")]
        );
    }

    #[test]
    fn comments_are_ignored() {
        assert_eq!(
            parse(b":\n: hello\n:data: x\ndata: a\n:\n\n:\n\n"),
            vec![ev(None, "message", "a")]
        );
    }

    #[test]
    fn no_dispatch_with_empty_data_buffer() {
        // The event type is dropped with the empty event, the id is kept.
        assert_eq!(
            parse(b"event: t\nid: 7\n\ndata: a\n\n"),
            vec![ev(Some("7"), "message", "a")]
        );
        assert_eq!(parse(b"\n\n\n"), vec![]);
    }

    #[test]
    fn last_event_id_persists_across_events() {
        assert_eq!(
            parse(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\n"),
            vec![
                ev(Some("1"), "message", "a"),
                ev(Some("1"), "message", "b"),
                ev(Some("2"), "message", "c"),
            ]
        );
    }

    #[test]
    fn id_only_counts_at_dispatch() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        p.feed(b"id: 1\ndata: a\n\nid: 2\ndata: b\n", &mut out)
            .unwrap();
        assert_eq!(p.last_event_id(), "1");
        p.feed(b"\n", &mut out).unwrap();
        assert_eq!(p.last_event_id(), "2");
    }

    #[test]
    fn unterminated_event_is_not_dispatched_and_reset_drops_it() {
        let mut p = Parser::with_last_event_id("5");
        let mut out = Vec::new();
        p.feed(b"id: 6\ndata: half", &mut out).unwrap();
        assert!(out.is_empty());
        p.reset_connection();
        p.feed(b"\xEF\xBB\xBFdata: new\n\n", &mut out).unwrap();
        assert_eq!(out, vec![ev(Some("5"), "message", "new")]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_char() {
        assert_eq!(parse(b"data: a\xFFb\n\n")[0].data, "a\u{FFFD}b");
    }

    #[test]
    fn limit_stops_unbounded_lines() {
        let mut p = Parser::new();
        p.set_max_event_bytes(16);
        let mut out = Vec::new();
        assert!(p.feed(b"data: 0123456789", &mut out).is_ok());
        assert_eq!(p.feed(b"abcdef", &mut out), Err(TooLarge { limit: 16 }));
    }

    const STREAM: &[u8] = b"\xEF\xBB\xBFretry: 300\r\n: comment\r\nid: 1\r\nevent: add\r\ndata: one\r\ndata: two\r\n\r\ndata:three\r\rid\nevent: x\ndata\n\nid: \x00\ndata: four\xC3\xA9\n\n: tail\ndata: cut";

    fn expected_stream() -> Vec<Event> {
        vec![
            Event {
                retry: Some(300),
                ..ev(Some("1"), "add", "one\ntwo")
            },
            ev(Some("1"), "message", "three"),
            ev(None, "x", ""),
            ev(None, "message", "four\u{e9}"),
        ]
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let whole = parse(STREAM);
        assert_eq!(whole, expected_stream());
        for cut in 0..=STREAM.len() {
            let mut p = Parser::new();
            let mut out = Vec::new();
            p.feed(&STREAM[..cut], &mut out).unwrap();
            p.feed(&STREAM[cut..], &mut out).unwrap();
            assert_eq!(out, whole, "split at {cut}");
        }
        for a in 0..=STREAM.len() {
            for b in a..=STREAM.len() {
                let mut p = Parser::new();
                let mut out = Vec::new();
                for part in [&STREAM[..a], &STREAM[a..b], &STREAM[b..]] {
                    p.feed(part, &mut out).unwrap();
                }
                assert_eq!(out, whole, "split at {a} and {b}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time_gives_the_same_events() {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for byte in STREAM {
            p.feed(std::slice::from_ref(byte), &mut out).unwrap();
        }
        assert_eq!(out, expected_stream());
        assert_eq!(p.reconnection_time(), Some(300));
    }
}
