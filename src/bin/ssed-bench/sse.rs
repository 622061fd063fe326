//! Incremental parsing of an SSE response as a subscriber sees it: the
//! HTTP response head, then `\n\n`-terminated blocks, through a chunked
//! decoder when the head says `Transfer-Encoding: chunked` (ssed and most
//! servers on HTTP/1.1), as is otherwise (HTTP/1.0, body until close).
//!
//! A block counts as an event when it holds a `data:` line; `retry:`
//! blocks and `:` comments (heartbeats, nchan's `: hi`) do not. The first
//! `data:` line may start with a decimal timestamp (ns since the epoch)
//! written by the fanout publisher, from which latency is computed. The
//! parser keeps only a short prefix of the current line, so a subscriber
//! costs a few dozen bytes however large the events are.

/// Result of looking for the end of the response head.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// More bytes needed.
    Partial,
    /// A `200` head ended; the body starts at this offset of the buffer
    /// and is chunk-framed when the flag is set.
    Ok(usize, bool),
    /// Any other status; the first line, for diagnostics.
    Refused(String),
}

/// Looks for the blank line ending the response head in `buf`.
pub fn scan_head(buf: &[u8]) -> Head {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Head::Partial;
    };
    let first = buf[..end].split(|&b| b == b'\n').next().unwrap_or(&[]);
    let first = String::from_utf8_lossy(first).trim_end().to_string();
    let mut words = first.split(' ');
    let version = words.next().unwrap_or("");
    let status = words.next().unwrap_or("");
    if version.starts_with("HTTP/1.") && status == "200" {
        let chunked = buf[..end].split(|&b| b == b'\n').skip(1).any(|l| {
            let l = String::from_utf8_lossy(l).to_ascii_lowercase();
            l.split_once(':').is_some_and(|(n, v)| {
                n.trim() == "transfer-encoding" && v.trim().ends_with("chunked")
            })
        });
        Head::Ok(end + 4, chunked)
    } else {
        Head::Refused(first)
    }
}

/// Bytes of each line kept: enough for `data: ` plus a 20-digit timestamp.
const PREFIX: usize = 32;

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Chunk {
    /// Not chunked: every byte is SSE.
    #[default]
    Identity,
    /// In a size line: the size so far, and whether an extension began.
    Size(u32, bool),
    /// In chunk data: bytes left.
    Data(u32),
    /// After chunk data, up to the LF of its CRLF.
    DataEnd,
    /// After the last chunk: nothing more is SSE.
    Done,
}

/// Per-connection parser state for the event stream body.
#[derive(Debug, Clone, Default)]
pub struct SseParser {
    chunk: Chunk,
    line: [u8; PREFIX],
    line_len: u8,
    /// Bytes seen in the current line (may exceed what is kept).
    line_seen: bool,
    block_has_data: bool,
    block_ts: Option<u64>,
}

impl SseParser {
    /// A parser for a body that is chunk-framed or not.
    pub fn new(chunked: bool) -> SseParser {
        SseParser {
            chunk: if chunked {
                Chunk::Size(0, false)
            } else {
                Chunk::Identity
            },
            ..SseParser::default()
        }
    }

    /// Feeds body bytes as they came off the wire; calls
    /// `on_event(timestamp)` for each complete event block, with the
    /// leading timestamp of its data if any.
    pub fn feed(&mut self, bytes: &[u8], mut on_event: impl FnMut(Option<u64>)) {
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.chunk {
                Chunk::Identity => {
                    self.feed_sse(rest, &mut on_event);
                    return;
                }
                Chunk::Data(left) => {
                    let n = rest.len().min(left as usize);
                    let (sse, after) = rest.split_at(n);
                    self.feed_sse(sse, &mut on_event);
                    rest = after;
                    let left = left - n as u32;
                    self.chunk = if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    };
                }
                Chunk::Size(size, ext) => {
                    let b = rest[0];
                    rest = &rest[1..];
                    self.chunk = match b {
                        b'\n' if size == 0 => Chunk::Done,
                        b'\n' => Chunk::Data(size),
                        _ if ext || b == b'\r' => Chunk::Size(size, ext),
                        b';' => Chunk::Size(size, true),
                        _ => match (b as char).to_digit(16) {
                            // A size past u32 is not a stream worth measuring.
                            Some(d) => {
                                Chunk::Size(size.saturating_mul(16).saturating_add(d), false)
                            }
                            None => Chunk::Size(size, true),
                        },
                    };
                }
                Chunk::DataEnd => {
                    if rest[0] == b'\n' {
                        self.chunk = Chunk::Size(0, false);
                    }
                    rest = &rest[1..];
                }
                Chunk::Done => return,
            }
        }
    }

    fn feed_sse(&mut self, bytes: &[u8], on_event: &mut impl FnMut(Option<u64>)) {
        for &b in bytes {
            if b == b'\n' {
                self.end_line(on_event);
            } else if b != b'\r' {
                // CR is dropped rather than treated as a line end: the
                // servers measured here end lines with LF only.
                self.line_seen = true;
                if (self.line_len as usize) < PREFIX {
                    self.line[self.line_len as usize] = b;
                    self.line_len += 1;
                }
            }
        }
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(Option<u64>)) {
        if !self.line_seen {
            // Blank line: end of a block.
            if self.block_has_data {
                on_event(self.block_ts);
            }
            self.block_has_data = false;
            self.block_ts = None;
            return;
        }
        let line = &self.line[..self.line_len as usize];
        if let Some(rest) = line.strip_prefix(b"data:") {
            if !self.block_has_data {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                self.block_ts = leading_number(rest);
            }
            self.block_has_data = true;
        }
        self.line_len = 0;
        self.line_seen = false;
    }
}

/// The decimal number at the start of `s`, if a space or the end of the
/// kept line follows it (so `12abc` is not read as 12).
fn leading_number(s: &[u8]) -> Option<u64> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 || (digits < s.len() && s[digits] != b' ') {
        return None;
    }
    std::str::from_utf8(&s[..digits]).ok()?.parse().ok()
}

/// Builds a fanout payload of exactly `size` bytes (at least the
/// timestamp): `"<ns> xxxx..."`.
pub fn payload(ts_ns: u64, size: usize) -> Vec<u8> {
    let mut p = format!("{ts_ns} ").into_bytes();
    if p.len() < size {
        p.resize(size, b'x');
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<Option<u64>> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |ts| out.push(ts));
        }
        out
    }

    #[test]
    fn head() {
        assert_eq!(scan_head(b"HTTP/1.1 200 OK\r\nA: b\r\n"), Head::Partial);
        let h = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nretry: 2000\n\n";
        assert_eq!(scan_head(h), Head::Ok(52, false));
        assert_eq!(&h[52..], b"retry: 2000\n\n");
        assert_eq!(
            scan_head(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"),
            Head::Refused("HTTP/1.1 503 Service Unavailable".into())
        );
        assert!(matches!(
            scan_head(b"HTTP/1.0 200 OK\r\n\r\n"),
            Head::Ok(_, false)
        ));
        assert_eq!(
            scan_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding:  Chunked\r\n\r\n"),
            Head::Ok(48, true)
        );
    }

    #[test]
    fn counts_data_blocks_only() {
        let stream: &[u8] = b"retry: 2345\n\n: hi\n\n:\n\nid: 1\ndata: 1700000000000000000 xxx\n\nid: 2\nevent: t\ndata: a\ndata: b\n\ndata:\n\n";
        assert_eq!(
            events(&[stream]),
            vec![Some(1_700_000_000_000_000_000), None, None]
        );
    }

    #[test]
    fn split_anywhere() {
        let stream: &[u8] = b"retry: 1\n\nid: 5\ndata: 42 yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\n\nid: 6\ndata: 43\n\n";
        let whole = events(&[stream]);
        assert_eq!(whole, vec![Some(42), Some(43)]);
        for cut in 0..stream.len() {
            assert_eq!(
                events(&[&stream[..cut], &stream[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events(&bytes), whole);
    }

    /// The same events framed as ssed frames them on HTTP/1.1, split at
    /// every byte, chunk headers and trailers included; the last chunk ends
    /// the body.
    #[test]
    fn chunked_bodies_split_anywhere() {
        let blocks: [&[u8]; 4] = [
            b"retry: 1\n\n",
            b"id: 5\ndata: 42 yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\n\n",
            b":\n\n",
            b"id: 6\ndata: 43\n\n",
        ];
        let mut body = Vec::new();
        for b in blocks {
            body.extend_from_slice(format!("{:x}\r\n", b.len()).as_bytes());
            body.extend_from_slice(b);
            body.extend_from_slice(b"\r\n");
        }
        // One event split across two chunks, with an extension.
        body.extend_from_slice(b"5;x=y\r\ndata:\r\n5\r\n 44\n\n\r\n0\r\n\r\ndata: 99\n\n");
        let run = |parts: &[&[u8]]| {
            let mut p = SseParser::new(true);
            let mut out = Vec::new();
            for c in parts {
                p.feed(c, |ts| out.push(ts));
            }
            out
        };
        let whole = run(&[&body]);
        assert_eq!(whole, vec![Some(42), Some(43), Some(44)]);
        for cut in 0..body.len() {
            assert_eq!(run(&[&body[..cut], &body[cut..]]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(run(&bytes), whole);
    }

    #[test]
    fn crlf_and_partial_numbers() {
        assert_eq!(events(&[b"data: 7\r\n\r\n"]), vec![Some(7)]);
        assert_eq!(events(&[b"data: 12abc\n\n"]), vec![None]);
        // Only the first data line of a block carries the timestamp.
        assert_eq!(events(&[b"data: x\ndata: 9\n\n"]), vec![None]);
        // An unterminated block is not an event yet.
        assert_eq!(events(&[b"data: 1\n"]), vec![]);
    }

    #[test]
    fn payloads() {
        let p = payload(1_700_000_000_123_456_789, 64);
        assert_eq!(p.len(), 64);
        assert!(p.starts_with(b"1700000000123456789 xxx"));
        assert_eq!(leading_number(&p[..]), Some(1_700_000_000_123_456_789));
        assert_eq!(payload(5, 1), b"5 ");
    }
}
