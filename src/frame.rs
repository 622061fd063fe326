//! SSE wire syntax: the only module that knows how an event is spelled on
//! the wire (`id:`, `event:`, `data:`, `retry:`, comments).
//!
//! Frames are encoded once, here, into owned bytes that the history ring
//! shares between every subscriber. The HTTP/1.1 chunk framing those bytes
//! travel in on a chunked response is spelled here too, so the ring and the
//! writer share one spelling. Nothing in this module writes to a socket or
//! knows about streams.

use crate::id::EventId;

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
    let mut b = Block::with_capacity(data.len() + 48);
    if let Some(id) = id {
        b = b.id(id);
    }
    if let Some(ev) = event.filter(|e| *e != "message") {
        b = b.event(ev);
    }
    if let Some(ms) = retry {
        b = b.retry(ms);
    }
    b.data(data)
}

/// One event block, built field by field in the order the fields are
/// given: the apps that imitate another server keep that server's order
/// (workerman writes `event:` before `id:`, MongooseIM `id:` before
/// `event:`) and spell `event: message`, which [`encode`] leaves out.
/// [`Block::data`] ends the block.
pub struct Block(Vec<u8>);

impl Block {
    /// An empty block.
    pub fn new() -> Block {
        Block(Vec::new())
    }
    /// An empty block with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Block {
        Block(Vec::with_capacity(n))
    }
    /// An `id:` line. Ids are the caller's (server-made or checked), never
    /// a line break.
    pub fn id(self, id: &str) -> Block {
        self.field(b"id: ", id)
    }
    /// An `event:` line, written for every type, `message` included.
    pub fn event(self, event: &str) -> Block {
        self.field(b"event: ", event)
    }
    /// A `retry:` line.
    pub fn retry(self, ms: u32) -> Block {
        let mut buf = [0u8; 20];
        self.field(b"retry: ", fmt_u64(u64::from(ms), &mut buf))
    }
    /// The `data:` lines (one per line of `data`, split on CR, LF and
    /// CRLF) and the blank line that ends the block.
    pub fn data(mut self, data: &str) -> Vec<u8> {
        for line in split_lines(data) {
            if line.is_empty() {
                self.0.extend_from_slice(b"data:\n");
            } else {
                self.0.extend_from_slice(b"data: ");
                self.0.extend_from_slice(line.as_bytes());
                self.0.push(b'\n');
            }
        }
        self.0.push(b'\n');
        self.0
    }
    fn field(mut self, name: &[u8], value: &str) -> Block {
        self.0.extend_from_slice(name);
        self.0.extend_from_slice(value.as_bytes());
        self.0.push(b'\n');
        self
    }
}

impl Default for Block {
    fn default() -> Block {
        Block::new()
    }
}

/// The id of a block that begins with its `id:` line (as every block
/// [`Block::id`] or [`encode`] started with an id does); `None` otherwise.
/// For reading back ids of frames the server wrote itself (a journal, a
/// retained ring), not for parsing a peer's stream.
pub fn leading_id(sse: &[u8]) -> Option<&str> {
    let rest = sse.strip_prefix(b"id: ")?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// HTTP/1.1 chunk framing: `<hex len>\r\n`, the bytes, `\r\n`. Held here
/// with the SSE syntax so that the ring (which stores frames chunk-framed
/// once) and the writer (which frames what is not in a ring) agree.
pub fn chunk(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(chunk_len(body.len()));
    let mut buf = [0u8; CHUNK_HEAD_MAX];
    v.extend_from_slice(chunk_head(body.len(), &mut buf));
    v.extend_from_slice(body);
    v.extend_from_slice(CHUNK_END);
    v
}

/// The bytes after a chunk's body.
pub const CHUNK_END: &[u8] = b"\r\n";

/// The last chunk of a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Room for the longest chunk header: every hex digit of a `usize`, CRLF.
pub const CHUNK_HEAD_MAX: usize = 2 * std::mem::size_of::<usize>() + 2;

/// The chunk header for `len` body bytes (`<hex>\r\n`), formatted into
/// `buf` without allocating.
pub fn chunk_head(len: usize, buf: &mut [u8; CHUNK_HEAD_MAX]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len() - 2;
    buf[i] = b'\r';
    buf[i + 1] = b'\n';
    let mut n = len;
    loop {
        i -= 1;
        buf[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Length of [`chunk`]`(body)` for a body of `len` bytes, known before
/// anything is copied.
pub fn chunk_len(len: usize) -> usize {
    chunk_head_len(len) + len + CHUNK_END.len()
}

/// Length of the chunk header for a body of `len` bytes.
pub fn chunk_head_len(len: usize) -> usize {
    let mut hex = 1;
    let mut n = len >> 4;
    while n > 0 {
        hex += 1;
        n >>= 4;
    }
    hex + 2
}

/// Encodes an event whose id is a server-assigned number.
pub fn encode_numbered(
    id: EventId,
    event: Option<&str>,
    data: &str,
    retry: Option<u32>,
) -> Vec<u8> {
    let mut buf = [0u8; 20];
    encode(Some(fmt_id(id, &mut buf)), event, data, retry)
}

/// The first body bytes of every stream: the per-connection reconnect delay,
/// as a `retry:` line with no blank line after it. The block it opens is
/// ended by the first real event (or `gap`) on the connection, so no client
/// sees a block without data: a standalone `retry: N\n\n` is dispatched as an
/// empty event by several clients (r3labs' Go client, httpx-sse,
/// fetch-event-source), though the spec says a block with no data is not.
/// A spec parser applies the field as soon as it reads the line.
pub fn retry(ms: u32) -> Vec<u8> {
    let mut buf = [0u8; 20];
    let mut out = b"retry: ".to_vec();
    out.extend_from_slice(fmt_u64(u64::from(ms), &mut buf).as_bytes());
    out.push(b'\n');
    out
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

/// An event id's wire spelling (its `id:` line), written into `buf`
/// without allocating.
pub fn fmt_id(id: EventId, buf: &mut [u8; 20]) -> &str {
    fmt_u64(id.get(), buf)
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
        let f = encode_numbered(EventId::new(7), Some("note"), "a\nb\r\nc\rd", None);
        assert_eq!(
            f,
            b"id: 7\nevent: note\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(
            encode_numbered(EventId::new(1), Some("message"), "", None),
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
    fn blocks_keep_field_order_and_spell_message() {
        assert_eq!(
            Block::new().event("message").id("1").data("hello"),
            b"event: message\nid: 1\ndata: hello\n\n"
        );
        assert_eq!(
            Block::new().id("u-1").event("message").data("a\nb"),
            b"id: u-1\nevent: message\ndata: a\ndata: b\n\n"
        );
        assert_eq!(
            Block::new().id("x").retry(0).data(""),
            b"id: x\nretry: 0\ndata:\n\n"
        );
        assert_eq!(
            Block::default().data("a\r\n\rb"),
            b"data: a\ndata:\ndata: b\n\n"
        );
        assert_eq!(
            encode(Some("x"), Some("t"), "d", Some(5)),
            b"id: x\nevent: t\nretry: 5\ndata: d\n\n"
        );
    }

    #[test]
    fn leading_ids() {
        let b = Block::new().id("36891c7f").event("T").data("{}");
        assert_eq!(leading_id(&b), Some("36891c7f"));
        assert_eq!(leading_id(b"event: T\nid: 1\ndata:\n\n"), None);
        assert_eq!(leading_id(b"id: 1"), None);
        assert_eq!(leading_id(b"id: \n\n"), Some(""));
    }

    #[test]
    fn chunks() {
        assert_eq!(chunk(b"hello"), b"5\r\nhello\r\n");
        assert_eq!(chunk(b""), b"0\r\n\r\n");
        let big = vec![b'x'; 0x1a2b];
        let c = chunk(&big);
        assert_eq!(&c[..6], b"1a2b\r\n");
        assert_eq!(&c[c.len() - 2..], b"\r\n");
        assert_eq!(c.len(), 6 + 0x1a2b + 2);
        for len in [
            0,
            1,
            15,
            16,
            255,
            256,
            0xfffff,
            0x100000,
            usize::MAX >> 4,
            usize::MAX,
        ] {
            let mut buf = [0; CHUNK_HEAD_MAX];
            let head = chunk_head(len, &mut buf);
            assert_eq!(head, format!("{len:x}\r\n").as_bytes());
            assert_eq!(chunk_head_len(len), head.len());
        }
        let mut buf = [0; CHUNK_HEAD_MAX];
        assert_eq!(chunk_head(usize::MAX, &mut buf).len(), CHUNK_HEAD_MAX);
        assert_eq!(LAST_CHUNK, b"0\r\n\r\n");
    }

    #[test]
    fn numbers() {
        let mut b = [0; 20];
        assert_eq!(fmt_u64(0, &mut b), "0");
        assert_eq!(fmt_u64(u64::MAX, &mut b), "18446744073709551615");
    }
}
