//! SSE wire syntax: the only module that knows how an event is spelled on
//! the wire (`id:`, `event:`, `data:`, `retry:`, comments).
//!
//! Frames are encoded once, here, into owned bytes that the history ring
//! shares between every subscriber. Nothing in this module writes to a
//! socket or knows about streams.

use std::fmt::Write as _;

/// The heartbeat comment, written to a connection that has been quiet for
/// `--heartbeat` seconds. One comment line and no blank line: a blank line
/// ends a block, and clients that dispatch blocks with no `data:` (httpx-sse
/// once it has seen an `id:`, fetch-event-source, r3labs' Go client) would
/// hand every heartbeat to the application as an empty event. A comment line
/// is dropped by every parser and never ends the block it sits in, so a
/// heartbeat is invisible whether it falls between blocks or inside the
/// block the `retry:` line opened.
pub const HEARTBEAT: &[u8] = b":\n";

/// Encodes one event. `event` of `None` or `"message"` leaves the `event:`
/// line out (EventSource's default type). Every CR, LF or CRLF in `data`
/// starts a new `data:` line so a payload can never break the framing.
pub fn encode(id: Option<&str>, event: Option<&str>, data: &str, retry: Option<u32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 48);
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    if let Some(ev) = event.filter(|e| *e != "message") {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(ev.as_bytes());
        out.push(b'\n');
    }
    if let Some(ms) = retry {
        let mut s = String::new();
        let _ = writeln!(s, "retry: {ms}");
        out.extend_from_slice(s.as_bytes());
    }
    for line in split_lines(data) {
        if line.is_empty() {
            out.extend_from_slice(b"data:\n");
        } else {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    out.push(b'\n');
    out
}

/// Encodes an event whose id is a server-assigned number.
pub fn encode_numbered(id: u64, event: Option<&str>, data: &str, retry: Option<u32>) -> Vec<u8> {
    let mut buf = [0u8; 20];
    encode(Some(fmt_u64(id, &mut buf)), event, data, retry)
}

/// The first body bytes of every stream: the per-connection reconnect delay,
/// as a `retry:` line with no blank line after it. The block it opens is
/// ended by the first real event (or `gap`) on the connection, so no client
/// sees a block without data: a standalone `retry: N\n\n` is dispatched as an
/// empty event by several clients (r3labs' Go client, httpx-sse,
/// fetch-event-source), though the spec says a block with no data is not.
/// A spec parser applies the field as soon as it reads the line.
pub fn retry(ms: u32) -> Vec<u8> {
    format!("retry: {ms}\n").into_bytes()
}

/// The `gap` event: events after `last_event_id` may be missing from
/// `streams`. It carries no `id:` so the client's cursor is left for the
/// retained events that follow to move.
pub fn gap(last_event_id: &str, streams: &[&str]) -> Vec<u8> {
    let data = serde_json::json!({ "last_event_id": last_event_id, "streams": streams });
    encode(None, Some("gap"), &data.to_string(), None)
}

/// Splits on CR, LF and CRLF, as the event-stream grammar does. Always
/// yields at least one (possibly empty) line.
pub fn split_lines(data: &str) -> impl Iterator<Item = &str> {
    let bytes = data.as_bytes();
    let mut start = 0usize;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut i = start;
        while i < bytes.len() {
            match bytes[i] {
                b'\n' => {
                    let line = &data[start..i];
                    start = i + 1;
                    return Some(line);
                }
                b'\r' => {
                    let line = &data[start..i];
                    start = if bytes.get(i + 1) == Some(&b'\n') {
                        i + 2
                    } else {
                        i + 1
                    };
                    return Some(line);
                }
                _ => i += 1,
            }
        }
        done = true;
        Some(&data[start..])
    })
}

/// Formats `n` in decimal into `buf` without allocating.
pub fn fmt_u64(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Whether `t` is a valid event type: 1..=64 bytes of visible ASCII, no `:`.
pub fn valid_event_type(t: &str) -> bool {
    (1..=64).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_and_types() {
        let f = encode_numbered(7, Some("note"), "a\nb\r\nc\rd", None);
        assert_eq!(
            f,
            b"id: 7\nevent: note\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(
            encode_numbered(1, Some("message"), "", None),
            b"id: 1\ndata:\n\n"
        );
        assert_eq!(encode(None, None, "x\n", None), b"data: x\ndata:\n\n");
    }

    #[test]
    fn retry_and_heartbeat_never_end_a_block() {
        // No blank line: neither may end a block a client would dispatch.
        assert_eq!(retry(1234), b"retry: 1234\n");
        assert_eq!(HEARTBEAT, b":\n");
    }

    #[test]
    fn gap_frame() {
        assert_eq!(
            gap("5", &["a", "b"]),
            b"event: gap\ndata: {\"last_event_id\":\"5\",\"streams\":[\"a\",\"b\"]}\n\n".to_vec()
        );
    }

    #[test]
    fn event_types() {
        assert!(valid_event_type("update"));
        assert!(!valid_event_type(""));
        assert!(!valid_event_type("a:b"));
        assert!(!valid_event_type("a\nb"));
        assert!(!valid_event_type(&"x".repeat(65)));
    }

    #[test]
    fn numbers() {
        let mut b = [0; 20];
        assert_eq!(fmt_u64(0, &mut b), "0");
        assert_eq!(fmt_u64(u64::MAX, &mut b), "18446744073709551615");
    }
}
