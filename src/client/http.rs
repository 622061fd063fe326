//! The little HTTP/1.1 the client needs, over a plain `TcpStream`.
//!
//! This module owns `http://` URL parsing, request writing, response heads
//! (via `httparse`), body framing (`Content-Length`, `Transfer-Encoding:
//! chunked`, or until close) and a keep-alive connection for `ssed pub`.
//! TLS is deliberately absent: put a reverse proxy in front for `https://`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::Error;

/// Largest response head accepted; ssed's are a few hundred bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

/// A parsed `http://host[:port]/path?query` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    /// Host as written (an IPv6 literal keeps its brackets).
    pub host: String,
    pub port: u16,
    /// Empty when the URL has no path, else starts with `/`.
    pub path: String,
    /// Without the `?`; empty when the URL has none.
    pub query: String,
}

impl Url {
    /// Parses an absolute `http://` URL; a fragment is dropped.
    pub fn parse(input: &str) -> Result<Url, Error> {
        let input = input.trim();
        let bad = |why: &str| Error::InvalidUrl(format!("{input}: {why}"));
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(bad("expected http://HOST[:PORT][/PATH]"));
        };
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(Error::UnsupportedScheme(scheme.to_string()));
        }
        let rest = rest.split('#').next().unwrap_or("");
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err(bad("user info in URLs is not supported; use a header"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad host or port"))?;
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if target.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces or control characters in the path"));
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (target, ""),
        };
        Ok(Url {
            host: host.to_string(),
            port,
            path: path.to_string(),
            query: query.to_string(),
        })
    }

    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Path and query as sent on the request line.
    pub fn target(&self) -> String {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        if self.query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", self.query)
        }
    }

    /// Appends `name=value` (percent-encoded) to the query.
    pub fn push_query(&mut self, name: &str, value: &str) {
        if !self.query.is_empty() {
            self.query.push('&');
        }
        self.query.push_str(&percent_encode(name));
        self.query.push('=');
        self.query.push_str(&percent_encode(value));
    }

    /// Opens a TCP connection, trying every resolved address in turn.
    pub fn connect(&self, timeout: Option<Duration>) -> io::Result<TcpStream> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = (host, self.port).to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "host resolved to no address");
        for addr in addrs {
            let attempt = match timeout {
                Some(t) if !t.is_zero() => TcpStream::connect_timeout(&addr, t),
                _ => TcpStream::connect(addr),
            };
            match attempt {
                Ok(stream) => {
                    // Small writes (requests, pub lines) must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let close = rest.find(']')?;
        let host = &authority[..close + 2];
        match &rest[close + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.contains(':') && !host.starts_with('[') {
        return None;
    }
    let port = match port {
        None | Some("") => 80,
        Some(p) => p.parse().ok()?,
    };
    Some((host, port))
}

/// Percent-encodes everything but RFC 3986 unreserved characters and the
/// `:@/` that ssed stream names may contain.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Rejects header names and values that would break the request framing.
pub(crate) fn check_header(name: &str, value: &str) -> Result<(), Error> {
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
    let value_ok = value.bytes().all(|b| b != b'\r' && b != b'\n' && b != 0);
    if name_ok && value_ok {
        Ok(())
    } else {
        Err(Error::InvalidHeader(name.to_string()))
    }
}

/// A response status line and headers.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub status: u16,
    pub reason: String,
    /// HTTP/1.x minor version.
    pub minor: u8,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    /// The first value of header `name` (case-insensitive), lossily decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).trim().to_string())
    }

    /// Whether any header `name` lists `token` (comma-separated, any case).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .any(|t| {
                String::from_utf8_lossy(t)
                    .trim()
                    .eq_ignore_ascii_case(token)
            })
    }

    /// How the body is delimited, per RFC 9112 §6.3 (for a GET or POST).
    pub fn framing(&self) -> Result<Framing, Error> {
        if self.status == 204 || self.status == 304 || (100..200).contains(&self.status) {
            return Ok(Framing::Length(0));
        }
        if self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        {
            return if self.has_token("transfer-encoding", "chunked") {
                Ok(Framing::Chunked)
            } else {
                Ok(Framing::UntilClose)
            };
        }
        match self.header("content-length") {
            Some(v) => v
                .parse()
                .map(Framing::Length)
                .map_err(|_| Error::BadResponse(format!("bad Content-Length {v:?}"))),
            None => Ok(Framing::UntilClose),
        }
    }

    /// Whether the server keeps the connection open after this response.
    pub fn keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            false
        } else {
            self.minor >= 1 || self.has_token("connection", "keep-alive")
        }
    }

    /// A `Retry-After` given in seconds (the HTTP-date form is ignored).
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")?
            .parse()
            .ok()
            .map(Duration::from_secs)
    }
}

/// Reads a response head. Returns it with the body bytes that arrived in the
/// same reads.
pub(crate) fn read_head(stream: &mut impl Read) -> Result<(Head, Vec<u8>), Error> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(Error::Closed),
            Ok(0) => {
                return Err(Error::BadResponse(
                    "connection closed inside the response head".to_string(),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Io(e)),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = Head {
                    status: resp.code.unwrap_or(0),
                    reason: resp.reason.unwrap_or("").to_string(),
                    minor: resp.version.unwrap_or(1),
                    headers: resp
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), h.value.to_vec()))
                        .collect(),
                };
                let rest = buf[len..].to_vec();
                return Ok((head, rest));
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                return Err(Error::BadResponse("response head too large".to_string()))
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(Error::BadResponse(format!("malformed response: {e}"))),
        }
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// Turns raw body bytes into payload bytes for any [`Framing`].
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    UntilClose,
    /// Reading a chunk-size line; `seen` says whether a digit was read.
    Size {
        size: u64,
        seen: bool,
    },
    /// Skipping a chunk extension up to the line end.
    Ext {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section; `line_start` is true right after a line end.
    Trailer {
        line_start: bool,
    },
    Done,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> BodyDecoder {
        let state = match framing {
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::UntilClose => State::UntilClose,
            Framing::Chunked => State::Size {
                size: 0,
                seen: false,
            },
        };
        BodyDecoder { state }
    }

    /// The body is complete; further bytes belong to the next response.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the end of the connection is the normal end of this body.
    pub fn ends_at_close(&self) -> bool {
        matches!(self.state, State::UntilClose | State::Done)
    }

    /// Decodes `input`, appending payload to `out`. Returns how many input
    /// bytes were consumed (less than all only once the body is done).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => return Ok(i),
                State::UntilClose => {
                    out.extend_from_slice(&input[i..]);
                    return Ok(input.len());
                }
                State::Length(n) | State::Data(n) => {
                    let take = (input.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    let left = n - take as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::DataCr,
                        _ => State::Data(left),
                    };
                    continue;
                }
                State::Size { size, seen } => {
                    if let Some(d) = (b as char).to_digit(16) {
                        let size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(d)))
                            .ok_or_else(|| bad_chunk("chunk size overflows"))?;
                        self.state = State::Size { size, seen: true };
                    } else if !seen {
                        return Err(bad_chunk("chunk size expected"));
                    } else {
                        self.state = match b {
                            b'\r' => State::SizeLf { size },
                            b'\n' => Self::after_size(size),
                            b';' | b' ' | b'\t' => State::Ext { size },
                            _ => return Err(bad_chunk("bad chunk size line")),
                        };
                    }
                }
                State::Ext { size } => match b {
                    b'\r' => self.state = State::SizeLf { size },
                    b'\n' => self.state = Self::after_size(size),
                    _ => {}
                },
                State::SizeLf { size } => {
                    if b != b'\n' {
                        return Err(bad_chunk("CR without LF after chunk size"));
                    }
                    self.state = Self::after_size(size);
                }
                State::DataCr => {
                    self.state = match b {
                        b'\r' => State::DataLf,
                        // Tolerate a bare LF, as most clients do.
                        b'\n' => State::Size {
                            size: 0,
                            seen: false,
                        },
                        _ => return Err(bad_chunk("missing CRLF after chunk data")),
                    };
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(bad_chunk("missing LF after chunk data"));
                    }
                    self.state = State::Size {
                        size: 0,
                        seen: false,
                    };
                }
                State::Trailer { line_start } => {
                    self.state = match b {
                        b'\r' => State::Trailer { line_start },
                        b'\n' if line_start => State::Done,
                        b'\n' => State::Trailer { line_start: true },
                        _ => State::Trailer { line_start: false },
                    };
                }
            }
            i += 1;
        }
        Ok(i)
    }

    fn after_size(size: u64) -> State {
        if size == 0 {
            State::Trailer { line_start: true }
        } else {
            State::Data(size)
        }
    }
}

fn bad_chunk(why: &str) -> Error {
    Error::BadResponse(format!("bad chunked body: {why}"))
}

/// Reads a whole body of at most `limit` bytes. `pre` holds bytes already
/// read past the head. Returns the body and any bytes past its end.
pub(crate) fn read_body(
    stream: &mut impl Read,
    framing: Framing,
    pre: Vec<u8>,
    limit: usize,
) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let mut decoder = BodyDecoder::new(framing);
    let mut body = Vec::new();
    let used = decoder.decode(&pre, &mut body)?;
    let mut rest = pre[used..].to_vec();
    let mut chunk = [0u8; 8192];
    while !decoder.is_done() {
        if body.len() > limit {
            return Err(Error::BadResponse(format!(
                "response body larger than {limit} bytes"
            )));
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) if decoder.ends_at_close() => break,
            Ok(0) => {
                return Err(Error::BadResponse(
                    "connection closed inside the response body".to_string(),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Io(e)),
        };
        let used = decoder.decode(&chunk[..n], &mut body)?;
        rest = chunk[used..n].to_vec();
    }
    Ok((body, rest))
}

/// A response read in full.
#[derive(Debug)]
pub(crate) struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

/// One keep-alive HTTP/1.1 connection that reconnects when the server has
/// closed it. Used by `ssed pub` to send many requests over one socket.
#[derive(Debug)]
pub(crate) struct KeepAlive {
    url: Url,
    timeout: Option<Duration>,
    stream: Option<TcpStream>,
    /// Bytes read past the previous response (normally none).
    rest: Vec<u8>,
    /// How many TCP connections have been opened so far.
    pub connects: u32,
}

impl KeepAlive {
    pub fn new(url: Url, timeout: Option<Duration>) -> KeepAlive {
        KeepAlive {
            url,
            timeout,
            stream: None,
            rest: Vec::new(),
            connects: 0,
        }
    }

    /// Sends one request with a `Content-Length` body and reads the answer.
    ///
    /// A reused connection that turns out closed before any answer byte is
    /// retried once on a new connection: that is the usual race with a
    /// server's idle timeout, where the request was never read.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Response, Error> {
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.url.host_header(),
            body.len()
        );
        for (name, value) in headers {
            check_header(name, value)?;
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);

        let reused = self.stream.is_some() && self.still_open();
        if !reused {
            self.open()?;
        }
        match self.exchange(&bytes) {
            Err(Failure::Unanswered(_)) if reused => {
                self.open()?;
                self.exchange(&bytes).map_err(Failure::into_error)
            }
            other => other.map_err(Failure::into_error),
        }
    }

    fn open(&mut self) -> Result<(), Error> {
        self.stream = None;
        self.rest.clear();
        let stream = self.url.connect(self.timeout).map_err(Error::Io)?;
        stream.set_read_timeout(self.timeout).map_err(Error::Io)?;
        self.connects += 1;
        self.stream = Some(stream);
        Ok(())
    }

    /// Peeks without blocking: a closed (or data-sending) idle connection is
    /// not worth reusing.
    fn still_open(&mut self) -> bool {
        let Some(stream) = &self.stream else {
            return false;
        };
        if !self.rest.is_empty() || stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut probe = [0u8; 1];
        let open =
            matches!(stream.peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        open && stream.set_nonblocking(false).is_ok()
    }

    fn exchange(&mut self, bytes: &[u8]) -> Result<Response, Failure> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(Failure::Unanswered(Error::Closed));
        };
        if let Err(e) = stream.write_all(bytes).and_then(|()| stream.flush()) {
            self.stream = None;
            return Err(Failure::Unanswered(Error::Io(e)));
        }
        let mut reader = Prefixed {
            pre: std::mem::take(&mut self.rest),
            stream,
        };
        let result = match read_head(&mut reader) {
            Ok((head, pre)) => head
                .framing()
                .and_then(|f| read_body(&mut reader, f, pre, 16 << 20))
                .map(|(body, rest)| (head, body, rest))
                .map_err(Failure::Answered),
            Err(e @ Error::Closed) => Err(Failure::Unanswered(e)),
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                Err(Failure::Unanswered(Error::Io(e)))
            }
            Err(e) => Err(Failure::Answered(e)),
        };
        match result {
            Ok((head, body, rest)) => {
                if head.keep_alive() && head.framing().ok() != Some(Framing::UntilClose) {
                    self.rest = rest;
                } else {
                    self.stream = None;
                }
                Ok(Response { head, body })
            }
            Err(f) => {
                self.stream = None;
                Err(f)
            }
        }
    }
}

/// Why an exchange failed: before any answer byte (safe to resend on a new
/// connection) or after the server started answering (it must not be resent).
enum Failure {
    Unanswered(Error),
    Answered(Error),
}

impl Failure {
    fn into_error(self) -> Error {
        match self {
            Failure::Unanswered(e) | Failure::Answered(e) => e,
        }
    }
}

/// A reader that first yields leftover bytes, then reads the stream.
struct Prefixed<'a> {
    pre: Vec<u8>,
    stream: &'a mut TcpStream,
}

impl Read for Prefixed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pre.is_empty() {
            return self.stream.read(buf);
        }
        let n = buf.len().min(self.pre.len());
        buf[..n].copy_from_slice(&self.pre[..n]);
        self.pre.drain(..n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = Url::parse("http://example.com:8080/a/events?x=1#frag").unwrap();
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, 8080);
        assert_eq!(u.path, "/a/events");
        assert_eq!(u.query, "x=1");
        assert_eq!(u.host_header(), "example.com:8080");
        let u = Url::parse("HTTP://[::1]:9/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[::1]", 9));
        let u = Url::parse("http://h?q").unwrap();
        assert_eq!((u.port, u.path.as_str(), u.query.as_str()), (80, "", "q"));
        assert_eq!(u.target(), "/?q");
        assert!(matches!(
            Url::parse("https://h/"),
            Err(Error::UnsupportedScheme(_))
        ));
        for bad in [
            "h:1/",
            "http://",
            "http://h:x/",
            "http://u@h/",
            "http://h/a b",
            "http://::1/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn query_is_percent_encoded() {
        let mut u = Url::parse("http://h/events?a=1").unwrap();
        u.push_query("stream", "a/b:c");
        u.push_query("stream", "x y&z");
        assert_eq!(u.target(), "/events?a=1&stream=a/b:c&stream=x%20y%26z");
    }

    #[test]
    fn header_checks() {
        assert!(check_header("Authorization", "Bearer x").is_ok());
        assert!(check_header("Bad Name", "x").is_err());
        assert!(check_header("X", "a\r\nInjected: 1").is_err());
    }

    fn decode_all(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, usize, bool), Error> {
        let mut d = BodyDecoder::new(framing);
        let mut out = Vec::new();
        let used = d.decode(input, &mut out)?;
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn chunked_bodies() {
        let body =
            b"4\r\nWiki\r\n5;ext=1\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (out, used, done) = decode_all(Framing::Chunked, body).unwrap();
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.");
        assert!(done);
        assert_eq!(&body[used..], b"NEXT");
        // Byte at a time gives the same.
        let mut d = BodyDecoder::new(Framing::Chunked);
        let mut out2 = Vec::new();
        for b in &body[..used] {
            assert_eq!(d.decode(std::slice::from_ref(b), &mut out2).unwrap(), 1);
        }
        assert_eq!(out2, out);
        assert!(d.is_done());
        assert!(decode_all(Framing::Chunked, b"zz\r\n").is_err());
        assert!(decode_all(Framing::Chunked, b"3\r\nabcX").is_err());
        assert!(decode_all(Framing::Chunked, b"FFFFFFFFFFFFFFFFF\r\n").is_err());
    }

    #[test]
    fn length_and_close_bodies() {
        let (out, used, done) = decode_all(Framing::Length(3), b"abcdef").unwrap();
        assert_eq!((out.as_slice(), used, done), (&b"abc"[..], 3, true));
        let (out, used, done) = decode_all(Framing::UntilClose, b"abcdef").unwrap();
        assert_eq!((out.as_slice(), used, done), (&b"abcdef"[..], 6, false));
    }

    #[test]
    fn reads_heads() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: gzip, chunked\r\n\r\nbody";
        let (head, rest) = read_head(&mut &raw[..]).unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(
            head.header("content-type").as_deref(),
            Some("text/event-stream")
        );
        assert_eq!(head.framing().unwrap(), Framing::Chunked);
        assert!(head.keep_alive());
        assert_eq!(rest, b"body");
        let raw = b"HTTP/1.0 503 Busy\r\nRetry-After: 3\r\nContent-Length: 2\r\n\r\n";
        let (head, _) = read_head(&mut &raw[..]).unwrap();
        assert_eq!(head.retry_after(), Some(Duration::from_secs(3)));
        assert!(!head.keep_alive());
        assert_eq!(head.framing().unwrap(), Framing::Length(2));
        assert!(read_head(&mut &b"HTTP/1.1 200 OK\r\n"[..]).is_err());
        assert!(read_head(&mut &b"garbage\r\n\r\n"[..]).is_err());
    }
}
