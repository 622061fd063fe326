//! HTTP/1.x on the wire: request heads (through httparse), request bodies
//! (`Content-Length` and chunked), query strings, and response bytes.
//!
//! Parsing works on a borrowed byte slice and reports `Partial` for
//! incomplete input, so complete requests are parsed straight out of the
//! reactor's shared read buffer. This module never touches sockets, streams
//! or routing.

use std::borrow::Cow;

/// Request methods the router distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
    /// `OPTIONS`.
    Options,
    /// `PATCH`.
    Patch,
}

/// What is wrong with a request, mapped to a status and a fixed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// 400, with the reason.
    BadRequest(&'static str),
    /// 413: over `--max-body`.
    PayloadTooLarge,
    /// 414: request line over `--max-header-bytes`.
    UriTooLong,
    /// 431: headers over `--max-header-bytes`.
    HeadersTooLarge,
    /// 505: not HTTP/1.0 or 1.1.
    VersionNotSupported,
    /// 501, with the reason.
    NotImplemented(&'static str),
    /// 408: the request did not arrive in time.
    Timeout,
}

impl HttpError {
    /// The status code.
    pub fn status(self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::PayloadTooLarge => 413,
            HttpError::UriTooLong => 414,
            HttpError::HeadersTooLarge => 431,
            HttpError::VersionNotSupported => 505,
            HttpError::NotImplemented(_) => 501,
            HttpError::Timeout => 408,
        }
    }
    /// The message for the JSON error body.
    pub fn message(self) -> &'static str {
        match self {
            HttpError::BadRequest(m) | HttpError::NotImplemented(m) => m,
            HttpError::PayloadTooLarge => "request body is larger than --max-body",
            HttpError::UriTooLong => "request line is longer than --max-header-bytes",
            HttpError::HeadersTooLarge => "request headers are larger than --max-header-bytes",
            HttpError::VersionNotSupported => "only HTTP/1.0 and HTTP/1.1 are supported",
            HttpError::Timeout => "request not received in time",
        }
    }
    /// A short stable name for the `/stats` rejection counters.
    pub fn reason(self) -> &'static str {
        match self {
            HttpError::BadRequest(_) => "bad_request",
            HttpError::PayloadTooLarge => "body_too_large",
            HttpError::UriTooLong => "uri_too_long",
            HttpError::HeadersTooLarge => "headers_too_large",
            HttpError::VersionNotSupported => "bad_version",
            HttpError::NotImplemented(_) => "not_implemented",
            HttpError::Timeout => "timeout",
        }
    }
}

/// Size limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Largest request body.
    pub max_body: usize,
}

/// A parsed request borrowing from the buffer it was read into.
#[derive(Debug)]
pub struct Request<'b> {
    /// The method.
    pub method: Method,
    /// The path, not percent-decoded.
    pub path: &'b str,
    /// The raw query string (after `?`), possibly empty.
    pub query: &'b str,
    /// Whether the request said HTTP/1.0.
    pub http10: bool,
    /// Whether the connection may serve another request after this one.
    pub keep_alive: bool,
    /// Every header, in order.
    pub headers: Vec<(&'b str, &'b [u8])>,
    /// The decoded body (borrowed unless it was chunked).
    pub body: Cow<'b, [u8]>,
}

impl Request<'_> {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
    /// A header as UTF-8 text, trimmed.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
    }
    /// Every decoded value of query key `key`.
    pub fn query_all<'q>(&'q self, key: &'q str) -> impl Iterator<Item = Cow<'q, str>> + 'q {
        query_pairs(self.query)
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v)
    }
    /// The first decoded value of query key `key`.
    pub fn query_first<'q>(&'q self, key: &'q str) -> Option<Cow<'q, str>> {
        self.query_all(key).next()
    }
    /// Whether the client asked for an event stream.
    pub fn accepts_event_stream(&self) -> bool {
        self.header("accept").is_some_and(|v| {
            v.windows(17)
                .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
        })
    }
}

/// The result of trying to parse one request from the front of a buffer.
#[derive(Debug)]
pub enum Parsed<'b> {
    /// More bytes are needed.
    Partial,
    /// A whole request, and how many bytes of the buffer it used.
    Complete(Request<'b>, usize),
}

const MAX_HEADERS: usize = 64;

/// Parses one request from the front of `buf`.
pub fn parse(buf: &[u8], limits: Limits) -> Result<Parsed<'_>, HttpError> {
    parse_resume(buf, limits, &mut Scan::default())
}

/// Parses one request from the front of `buf`, resuming a chunked body's
/// check where `scan` says the previous attempt on the same bytes stopped.
pub fn parse_resume<'b>(
    buf: &'b [u8],
    limits: Limits,
    scan: &mut Scan,
) -> Result<Parsed<'b>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                let line_done = buf.contains(&b'\n');
                return Err(if line_done {
                    HttpError::HeadersTooLarge
                } else {
                    HttpError::UriTooLong
                });
            }
            return Ok(Parsed::Partial);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadersTooLarge),
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(httparse::Error::Token) => {
            return Err(HttpError::BadRequest(
                "malformed request line or header name",
            ))
        }
        Err(httparse::Error::HeaderName) => {
            return Err(HttpError::BadRequest("malformed header name"))
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(HttpError::BadRequest("malformed header value"))
        }
        Err(httparse::Error::NewLine) => {
            return Err(HttpError::BadRequest("malformed line ending"))
        }
        Err(_) => return Err(HttpError::BadRequest("malformed request")),
    };
    if head_len > limits.max_header_bytes {
        let line_len = buf.iter().position(|&b| b == b'\n').unwrap_or(head_len);
        return Err(if line_len > limits.max_header_bytes {
            HttpError::UriTooLong
        } else {
            HttpError::HeadersTooLarge
        });
    }
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "OPTIONS" => Method::Options,
        "PATCH" => Method::Patch,
        // Methods are case-sensitive (RFC 9110 §9.1): `get` is not GET,
        // and no route can answer what it does not know.
        _ => {
            return Err(HttpError::NotImplemented(
                "unknown method; methods are case-sensitive: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH",
            ))
        }
    };
    let target = req.path.unwrap_or("/");
    let http10 = req.version == Some(0);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let path = strip_absolute_form(path);
    let mut hs: Vec<(&str, &[u8])> = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut conn_close = false;
    let mut conn_keep = false;
    if (0..head_len).any(|i| buf[i] == b'\n' && (i == 0 || buf[i - 1] != b'\r')) {
        // A bare LF ends lines for some parsers and not others (request
        // smuggling through a proxy that disagrees); nginx refuses it too.
        return Err(HttpError::BadRequest(
            "bare LF in the request head: every line must end with CRLF",
        ));
    }
    let mut hosts = 0;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        let value = h.value;
        if value.contains(&0) {
            return Err(HttpError::BadRequest("NUL byte in a header value"));
        }
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(value)
                .map_err(|_| HttpError::BadRequest("bad Content-Length"))?;
            let v = v.trim();
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::BadRequest("bad Content-Length"));
            }
            let n: usize = v.parse().map_err(|_| HttpError::PayloadTooLarge)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(HttpError::BadRequest("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked {
                return Err(HttpError::BadRequest("repeated Transfer-Encoding"));
            }
            if value.eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else {
                return Err(HttpError::NotImplemented(
                    "only chunked Transfer-Encoding is supported",
                ));
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            check_host(value)?;
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("connection") {
            for tok in value.split(|&b| b == b',') {
                let tok = tok.trim_ascii();
                conn_close |= tok.eq_ignore_ascii_case(b"close");
                conn_keep |= tok.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        hs.push((name, value));
    }
    // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request
    // without Host, and to any request with more than one.
    if hosts > 1 {
        return Err(HttpError::BadRequest("more than one Host header"));
    }
    if hosts == 0 && !http10 {
        return Err(HttpError::BadRequest(
            "HTTP/1.1 requests need a Host header",
        ));
    }
    if chunked && content_length.is_some() {
        return Err(HttpError::BadRequest(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if chunked && http10 {
        return Err(HttpError::BadRequest("chunked bodies need HTTP/1.1"));
    }
    let keep_alive = if http10 {
        conn_keep && !conn_close
    } else {
        !conn_close
    };
    let rest = &buf[head_len..];
    // RFC 9110 §10.1.1: answer `100 Continue` before the body is read (a
    // refusal at the head, as 411 or 413 above, is the final status
    // instead); HTTP/1.0 clients get none.
    let body_expected = chunked || content_length.is_some_and(|n| n > 0);
    if expect_continue && !http10 && body_expected && rest.is_empty() {
        scan.continue_due = true;
    }
    let (body, used): (Cow<'_, [u8]>, usize) = if chunked {
        // Check only the chunks that arrived since the last attempt; decode
        // (one more pass) only once the body is complete.
        if let Err(more) = walk_chunks(rest, *scan, limits.max_body, None)? {
            *scan = more;
            return Ok(Parsed::Partial);
        }
        match decode_chunked(rest, limits.max_body)? {
            Some((b, n)) => (Cow::Owned(b), n),
            None => return Ok(Parsed::Partial),
        }
    } else if let Some(n) = content_length {
        if n > limits.max_body {
            return Err(HttpError::PayloadTooLarge);
        }
        if rest.len() < n {
            return Ok(Parsed::Partial);
        }
        (Cow::Borrowed(&rest[..n]), n)
    } else {
        // RFC 9112 6.3: a request with neither header has no body, whatever
        // its method (curl's bodiless `-X PUT` sends neither; nginx agrees).
        (Cow::Borrowed(&rest[..0]), 0)
    };
    let req = Request {
        method,
        path,
        query,
        http10,
        keep_alive,
        headers: hs,
        body,
    };
    Ok(Parsed::Complete(req, head_len + used))
}

/// A `Host` value: one `host[:port]`, not empty, no list (`a, b`), no
/// spaces, slashes or userinfo (nginx refuses the same with 400).
fn check_host(value: &[u8]) -> Result<(), HttpError> {
    let v = value.trim_ascii();
    if v.is_empty() {
        return Err(HttpError::BadRequest("empty Host header"));
    }
    let bad = |b: &u8| b.is_ascii_control() || b" ,/\\@\t".contains(b);
    if v.iter().any(bad) {
        return Err(HttpError::BadRequest(
            "bad Host header: one host[:port] expected",
        ));
    }
    Ok(())
}

/// What httparse's version error means: a request line of three parts
/// whose last is `HTTP/x.y` but not 1.0/1.1 is an unsupported version;
/// anything else (a space inside the target, say) is a malformed line.
fn version_error(buf: &[u8]) -> HttpError {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(buf);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    match parts.as_slice() {
        [_, _, v] if v.starts_with(b"HTTP/") => HttpError::VersionNotSupported,
        _ => HttpError::BadRequest("malformed request line: METHOD TARGET HTTP/1.1"),
    }
}

/// `http://host:port/path` request targets are reduced to their path.
fn strip_absolute_form(path: &str) -> &str {
    if let Some(rest) = path
        .strip_prefix("http://")
        .or_else(|| path.strip_prefix("https://"))
    {
        match rest.find('/') {
            Some(i) => &rest[i..],
            None => "/",
        }
    } else {
        path
    }
}

const MAX_CHUNK_LINE: usize = 32;

/// How far a chunked body has been checked, so that a body arriving in
/// many reads is walked once, not once per read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Offset (from the body's start) of the first chunk not yet complete.
    at: usize,
    /// Body bytes in the complete chunks before it.
    body: usize,
    /// The head asked `Expect: 100-continue` and no body byte came yet:
    /// the caller owes an interim `100 Continue` ([`Scan::take_continue`]).
    continue_due: bool,
}

impl Scan {
    /// Whether to send `HTTP/1.1 100 Continue` now (once: it clears).
    pub fn take_continue(&mut self) -> bool {
        std::mem::take(&mut self.continue_due)
    }
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Decodes a chunked body at the front of `buf`: `Ok(None)` while
/// incomplete, otherwise the body and the bytes consumed. Chunk extensions
/// and trailers are refused: they are rarely legitimate and a favourite of
/// request smuggling.
pub fn decode_chunked(buf: &[u8], max_body: usize) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let mut body = Vec::new();
    match walk_chunks(buf, Scan::default(), max_body, Some(&mut body))? {
        Ok(used) => Ok(Some((body, used))),
        Err(_) => Ok(None),
    }
}

/// Walks chunks from `from`: `Ok(Ok(used))` at the end of the body,
/// `Ok(Err(scan))` when more bytes are needed (resume from `scan`). With a
/// `sink`, chunk data is appended to it.
fn walk_chunks(
    buf: &[u8],
    from: Scan,
    max_body: usize,
    mut sink: Option<&mut Vec<u8>>,
) -> Result<Result<usize, Scan>, HttpError> {
    let mut scan = from;
    loop {
        let pos = scan.at;
        let rest = buf.get(pos..).unwrap_or(&[]);
        let Some(eol) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > MAX_CHUNK_LINE {
                return Err(HttpError::BadRequest("chunk size line too long"));
            }
            return Ok(Err(scan));
        };
        if eol > MAX_CHUNK_LINE {
            return Err(HttpError::BadRequest("chunk size line too long"));
        }
        let line = rest[..eol]
            .strip_suffix(b"\r")
            .ok_or(HttpError::BadRequest("chunk size line must end in CRLF"))?;
        if line.contains(&b';') {
            return Err(HttpError::BadRequest("chunk extensions are not accepted"));
        }
        if line.is_empty() || line.len() > 16 || !line.iter().all(u8::is_ascii_hexdigit) {
            return Err(HttpError::BadRequest("bad chunk size"));
        }
        let text =
            std::str::from_utf8(line).map_err(|_| HttpError::BadRequest("bad chunk size"))?;
        let size =
            usize::from_str_radix(text, 16).map_err(|_| HttpError::BadRequest("bad chunk size"))?;
        let data = pos + eol + 1;
        if size == 0 {
            let Some(end) = buf.get(data..data + 2) else {
                return Ok(Err(scan));
            };
            if end != b"\r\n" {
                return Err(HttpError::BadRequest("trailers are not accepted"));
            }
            return Ok(Ok(data + 2));
        }
        if scan.body.saturating_add(size) > max_body {
            return Err(HttpError::PayloadTooLarge);
        }
        let Some(chunk) = buf.get(data..data + size + 2) else {
            return Ok(Err(scan));
        };
        if &chunk[size..] != b"\r\n" {
            return Err(HttpError::BadRequest("chunk data must end in CRLF"));
        }
        if let Some(out) = sink.as_deref_mut() {
            out.extend_from_slice(&chunk[..size]);
        }
        scan = Scan {
            at: data + size + 2,
            body: scan.body + size,
            continue_due: false,
        };
    }
}

/// Decoded `key=value` pairs of a query or form body. Values that are not
/// valid UTF-8 after decoding are replaced lossily; callers that must refuse
/// them use [`decode_component`].
pub fn query_pairs(q: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    q.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (decode_lossy(k), decode_lossy(v))
    })
}

fn decode_lossy(s: &str) -> Cow<'_, str> {
    match decode_component(s) {
        Some(c) => c,
        None => Cow::Owned(String::from_utf8_lossy(&decode_bytes(s, true)).into_owned()),
    }
}

/// Percent-decodes (and `+` → space) one query component; `None` when the
/// result is not UTF-8.
pub fn decode_component(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    String::from_utf8(decode_bytes(s, true))
        .ok()
        .map(Cow::Owned)
}

/// Percent-decodes one path segment (`+` stays `+`); `None` when the
/// result is not UTF-8.
pub fn decode_path(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    String::from_utf8(decode_bytes(s, false))
        .ok()
        .map(Cow::Owned)
}

/// The one percent-decoder: `%XX` → the byte (a `%` not followed by two
/// hex digits stays as it is), and `+` → space in query components.
fn decode_bytes(s: &str, plus_is_space: bool) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The reason phrase for a status code: every status ssed sends has its
/// own (a test walks the list).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Header lines a handler adds to a response, as names and values: the
/// builder alone spells them on the wire.
pub type Headers = Vec<(&'static str, String)>;

/// A response being built: status, content type, extra headers, body.
/// [`Response::encode`] is the one place response bytes are spelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    ctype: &'static str,
    headers: Headers,
    body: Vec<u8>,
}

impl Response {
    /// A response with a body of type `ctype`.
    pub fn new(status: u16, ctype: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            ctype,
            headers: Vec::new(),
            body: body.into(),
        }
    }
    /// A JSON response; the body ends in a newline, so a shell prompt does
    /// not stick to it.
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        let mut body = v.to_string().into_bytes();
        body.push(b'\n');
        Response::new(status, "application/json", body)
    }
    /// `{"error": msg}`.
    pub fn error(status: u16, msg: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": msg }))
    }
    /// A plain-text response.
    #[allow(dead_code)] // the MongooseIM app's plain-text errors
    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body)
    }
    /// `204 No Content`: no body, no `Content-Length`, no `Content-Type`.
    pub fn no_content() -> Response {
        Response::new(204, "", Vec::new())
    }
    /// `405` naming the methods that are allowed.
    pub fn not_allowed(allow: &str) -> Response {
        Response::error(405, &format!("method not allowed; use {allow}")).header("Allow", allow)
    }
    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
    /// Adds several headers.
    pub fn with(mut self, hs: &[(&'static str, String)]) -> Response {
        self.headers.extend_from_slice(hs);
        self
    }
    /// The bytes on the wire. `head_only` (a `HEAD` request) keeps the
    /// `Content-Length` a `GET` would get and drops the body.
    pub fn encode(&self, http10: bool, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.body.len());
        out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        out.extend_from_slice(format!("{} {}\r\n", self.status, reason(self.status)).as_bytes());
        if self.status != 204 {
            push_header(&mut out, "Content-Type", self.ctype);
            push_header(&mut out, "Content-Length", &self.body.len().to_string());
        }
        match (http10, keep_alive) {
            (_, false) => push_header(&mut out, "Connection", "close"),
            (true, true) => push_header(&mut out, "Connection", "keep-alive"),
            (false, true) => {}
        }
        for (n, v) in &self.headers {
            push_header(&mut out, n, v);
        }
        out.extend_from_slice(b"\r\n");
        if !head_only && self.status != 204 {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    // A value never ends a header early, whatever a handler put in it.
    out.extend(value.bytes().filter(|&b| b != b'\r' && b != b'\n'));
    out.extend_from_slice(b"\r\n");
}

/// The head of an event-stream response. HTTP/1.1 streams are chunked
/// (clients that read fixed-size blocks see every event at once); HTTP/1.0
/// ones are a body until close.
pub fn stream_head(http10: bool, chunked: bool, headers: &[(&'static str, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(if http10 {
        b"HTTP/1.0 200 OK\r\n"
    } else {
        b"HTTP/1.1 200 OK\r\n"
    });
    push_header(&mut out, "Content-Type", "text/event-stream");
    push_header(&mut out, "Cache-Control", "no-cache");
    push_header(&mut out, "X-Accel-Buffering", "no");
    if chunked && !http10 {
        push_header(&mut out, "Transfer-Encoding", "chunked");
    }
    for (n, v) in headers {
        push_header(&mut out, n, v);
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_header_bytes: 8192,
        max_body: 1 << 20,
    };

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse(buf, L) {
            Ok(Parsed::Complete(r, n)) => (r, n),
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn simple_get_with_query() {
        let raw = b"GET /events?stream=a&stream=b%2Fc&x=1+2 HTTP/1.1\r\nHost: x\r\n\r\nextra";
        let (r, n) = complete(raw);
        assert_eq!(n, raw.len() - "extra".len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/events");
        assert_eq!(r.query_all("stream").collect::<Vec<_>>(), vec!["a", "b/c"]);
        assert_eq!(r.query_first("x").as_deref(), Some("1 2"));
        assert!(r.keep_alive);
    }

    #[test]
    fn partial_until_body_complete() {
        let req = b"POST /events?stream=a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        for cut in 0..req.len() {
            assert!(
                matches!(parse(&req[..cut], L), Ok(Parsed::Partial)),
                "cut {cut}"
            );
        }
        let (r, n) = complete(req);
        assert_eq!(&*r.body, b"hello");
        assert_eq!(n, req.len());
    }

    #[test]
    fn chunked_bodies() {
        let req = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        for cut in 0..req.len() {
            assert!(
                matches!(parse(&req[..cut], L), Ok(Parsed::Partial)),
                "cut {cut}"
            );
        }
        let (r, n) = complete(req);
        assert_eq!(&*r.body, b"hello world");
        assert_eq!(n, req.len());
    }

    #[test]
    fn chunked_scan_resumes_where_it_stopped() {
        let mut req = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let head = req.len();
        let mut scan = Scan::default();
        for i in 0..50u8 {
            req.extend_from_slice(b"1\r\n");
            req.push(b'a' + i % 26);
            req.extend_from_slice(b"\r\n");
            assert!(matches!(
                parse_resume(&req, L, &mut scan),
                Ok(Parsed::Partial)
            ));
            // The walk stopped after the last complete chunk, not at the start.
            assert_eq!(
                scan,
                Scan {
                    at: req.len() - head,
                    body: i as usize + 1,
                    continue_due: false,
                }
            );
        }
        req.extend_from_slice(b"0\r\n\r\n");
        match parse_resume(&req, L, &mut scan) {
            Ok(Parsed::Complete(r, n)) => {
                assert_eq!(n, req.len());
                assert_eq!(r.body.len(), 50);
                assert_eq!(&r.body[..3], b"abc");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn smuggling_shapes_rejected() {
        let bad: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n000000000000000000000000000005\r\n",
        ];
        for b in bad {
            let e = parse(b, L).expect_err(&String::from_utf8_lossy(b));
            assert_eq!(e.status(), 400, "{}", String::from_utf8_lossy(b));
        }
        assert_eq!(
            parse(
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
                L
            )
            .unwrap_err()
            .status(),
            501
        );
    }

    #[test]
    fn no_length_and_no_chunking_is_an_empty_body() {
        for m in ["PUT", "POST", "DELETE", "PATCH"] {
            for v in ["1.1", "1.0"] {
                let raw = format!("{m} /streams/news HTTP/{v}\r\nHost: x\r\n\r\n");
                match parse(raw.as_bytes(), L) {
                    Ok(Parsed::Complete(r, n)) => {
                        assert_eq!(n, raw.len(), "{raw:?}");
                        assert!(r.body.is_empty(), "{raw:?}");
                    }
                    _ => panic!("not a complete request: {raw:?}"),
                }
            }
        }
    }

    #[test]
    fn statuses_for_limits() {
        let e = |b: &[u8]| parse(b, L).unwrap_err().status();
        assert_eq!(
            e(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n"),
            413
        );
        assert_eq!(e(b"GET / HTTP/2.0\r\n\r\n"), 505);
        let long_line = [b"GET /".as_slice(), &vec![b'a'; 9000]].concat();
        assert_eq!(e(&long_line), 414);
        let whole = [
            b"GET /".as_slice(),
            &vec![b'a'; 9000],
            b" HTTP/1.1\r\nHost: x\r\n\r\n",
        ]
        .concat();
        assert_eq!(
            e(&whole),
            414,
            "request line too long, whole head in one read"
        );
        let long_head = [
            b"GET / HTTP/1.1\r\nHost: x\r\nX: ".as_slice(),
            &vec![b'a'; 9000],
        ]
        .concat();
        assert_eq!(e(&long_head), 431);
    }

    #[test]
    fn host_method_and_request_line_rules() {
        let e = |b: &[u8]| parse(b, L).unwrap_err();
        assert_eq!(
            e(b"GET / HTTP/1.1\r\n\r\n"),
            HttpError::BadRequest("HTTP/1.1 requests need a Host header")
        );
        assert_eq!(
            e(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").status(),
            400
        );
        assert_eq!(
            e(b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n").status(),
            400
        );
        assert!(matches!(
            parse(b"GET / HTTP/1.0\r\n\r\n", L),
            Ok(Parsed::Complete(..))
        ));
        for m in ["get", "Get", "TRACE", "CONNECT"] {
            let raw = format!("{m} / HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(e(raw.as_bytes()).status(), 501, "{m}");
        }
        assert_eq!(
            e(b"GET /heal thz HTTP/1.1\r\nHost: a\r\n\r\n").status(),
            400
        );
        assert_eq!(e(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n").status(), 505);
        assert_eq!(e(b"GET / FTP/1.1\r\nHost: a\r\n\r\n").status(), 400);
    }

    #[test]
    fn http10_keepalive_rules() {
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(r.http10 && !r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(decode_component("a%20b").as_deref(), Some("a b"));
        assert_eq!(decode_component("%E2%9C%93").as_deref(), Some("✓"));
        assert_eq!(decode_component("%ff"), None);
        assert_eq!(decode_component("100%").as_deref(), Some("100%"));
        assert_eq!(decode_component("%4").as_deref(), Some("%4"));
        assert_eq!(decode_path("a+b%2Fc").as_deref(), Some("a+b/c"));
        assert_eq!(decode_path("%C3%A9").as_deref(), Some("é"));
        assert_eq!(decode_path("%ff"), None);
    }
}
