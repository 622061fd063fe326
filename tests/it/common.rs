//! Shared helpers for integration tests: start the real `ssed` binary on
//! port 0, speak raw HTTP/1.1 to it, and read SSE frames with deadlines.
//! Chunked event streams are decoded strictly (`Dechunk`), so a framing
//! mistake fails the test that met it; the wire bytes are kept as well.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How every test starts `ssed`: one builder for the plain server, servers
/// with extra environment or resource limits, several listeners, and
/// one-shot runs that must fail at start-up. `Ssed::new()` listens on
/// 127.0.0.1:0; `Ssed::bare()` passes exactly the arguments given.
pub struct Ssed {
    cmd: Command,
    listens: usize,
    stderr_piped: bool,
}

impl Ssed {
    /// `ssed --listen 127.0.0.1:0`, plus what is added.
    pub fn new() -> Ssed {
        Ssed::bare().args(["--listen", "127.0.0.1:0"])
    }

    /// `ssed` with exactly the arguments added (subcommands, `--help`, or a
    /// test choosing its own `--listen`s).
    pub fn bare() -> Ssed {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ssed"));
        cmd.stdin(Stdio::null()).stderr(Stdio::inherit());
        Ssed {
            cmd,
            listens: 0,
            stderr_piped: false,
        }
    }

    /// Adds arguments; every `--listen` is one more address to wait for.
    pub fn args<I, S>(mut self, args: I) -> Ssed
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        for a in args {
            if a.as_ref() == "--listen" {
                self.listens += 1;
            }
            self.cmd.arg(a);
        }
        self
    }

    /// Sets an environment variable in the server's environment.
    pub fn env(mut self, key: &str, value: &str) -> Ssed {
        self.cmd.env(key, value);
        self
    }

    /// Sets a resource limit in the child before exec (`RLIMIT_NOFILE`,
    /// `RLIMIT_FSIZE`, ...).
    pub fn rlimit(mut self, resource: libc::__rlimit_resource_t, cur: u64, max: u64) -> Ssed {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between
        // fork and exec.
        unsafe {
            self.cmd.pre_exec(move || {
                let r = libc::rlimit {
                    rlim_cur: cur,
                    rlim_max: max,
                };
                if libc::setrlimit(resource, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self
    }

    /// Keeps the server's stderr for the test (a start-up failure shows it;
    /// after start-up it is copied to the test's stderr).
    pub fn stderr_piped(mut self) -> Ssed {
        self.cmd.stderr(Stdio::piped());
        self.stderr_piped = true;
        self
    }

    /// Starts the server and waits for its first `listening on` line.
    pub fn start(self) -> Server {
        self.start_all().0
    }

    /// Starts the server and waits for one `listening on` line per
    /// `--listen` (at least one); the server and every address, in order.
    pub fn start_all(self) -> (Server, Vec<SocketAddr>) {
        let (child, addrs) = self.launch();
        let addr = addrs[0];
        (Server { child, addr }, addrs)
    }

    /// Like [`Ssed::start_all`], for a test that manages the process itself
    /// (signals, exit status): the child and every address.
    pub fn launch(mut self) -> (Child, Vec<SocketAddr>) {
        let want = self.listens.max(1);
        let mut child = self.cmd.stdout(Stdio::piped()).spawn().expect("spawn ssed");
        let stdout = child.stdout.take().expect("ssed stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Keep draining stdout after the address lines, so the server can
        // never block on (or lose output to) a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let mut addrs = Vec::new();
        while addrs.len() < want {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(a) => addrs.push(a.parse().expect("listening address")),
                Err(_) => {
                    let _ = child.kill();
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    let _ = child.wait();
                    panic!("ssed did not announce {want} address(es); stderr: {err:?}");
                }
            }
        }
        if self.stderr_piped {
            if let Some(mut err) = child.stderr.take() {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut err, &mut std::io::stderr());
                });
            }
        }
        (child, addrs)
    }

    /// Spawns it with stdout and stderr piped and waits for nothing: for a
    /// test that reads the output itself.
    pub fn spawn(mut self) -> Child {
        self.cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ssed")
    }

    /// Runs to exit (a start-up refusal, `--help`, a subcommand) and
    /// returns what it printed.
    pub fn output(mut self) -> std::process::Output {
        self.cmd.stderr(Stdio::piped());
        self.cmd.output().expect("run ssed")
    }

    /// Runs to exit with `stdin` as input: exit code, stdout, stderr.
    pub fn run(mut self, stdin: &str) -> (i32, String, String) {
        let mut child = self
            .cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ssed");
        child
            .stdin
            .take()
            .expect("ssed stdin")
            .write_all(stdin.as_bytes())
            .expect("write ssed stdin");
        let out = child.wait_with_output().expect("ssed output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }
}

/// Runs `ssed-bench ARGS --json` (bounded at two minutes) and returns its
/// JSON report.
pub fn bench(args: &[&str]) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ssed-bench"))
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ssed-bench");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if child.try_wait().expect("wait ssed-bench").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ssed-bench {args:?} ran over two minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("ssed-bench output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ssed-bench {args:?} failed: {text}");
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A running server process, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// `ssed --listen 127.0.0.1:0 ARGS`.
    pub fn start(args: &[&str]) -> Server {
        Ssed::new().args(args).start()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// A keep-alive HTTP connection.
pub struct Conn {
    pub reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn {
            reader: BufReader::new(s),
        }
    }
    pub fn send(&mut self, raw: &[u8]) {
        self.reader.get_mut().write_all(raw).expect("write");
    }
    /// Reads one response with a Content-Length body.
    pub fn response(&mut self) -> Response {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read head");
            assert!(
                n > 0,
                "connection closed before a response; head so far {head:?}"
            );
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).expect("read body");
        Response { status, head, body }
    }
    pub fn request(&mut self, raw: &[u8]) -> Response {
        self.send(raw);
        self.response()
    }
    /// Whether the server closed the connection (EOF) within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
        let mut b = [0u8; 1024];
        loop {
            match self.reader.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// One request on a fresh connection.
pub fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    Conn::open(addr).request(raw)
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
}

pub fn post(addr: SocketAddr, path: &str, ctype: &str, body: &str) -> Response {
    request(
        addr,
        format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .as_bytes(),
    )
}

/// Publishes a raw body to `stream`; returns the id.
pub fn publish(addr: SocketAddr, stream: &str, data: &str) -> String {
    let r = post(
        addr,
        &format!("/events?stream={stream}"),
        "text/plain",
        data,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_str().expect("id").to_string()
}

pub fn stats(addr: SocketAddr) -> serde_json::Value {
    get(addr, "/stats").json()
}

/// An event as seen on the wire, split into its fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ev {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Vec<String>,
    pub retry: Option<String>,
    pub comment: bool,
    pub raw: String,
}

impl Ev {
    pub fn data(&self) -> String {
        self.data.join("\n")
    }
}

/// A strict, incremental decoder of a chunked body as ssed sends one:
/// `<hex>\r\n<data>\r\n` per chunk, no extensions, no trailers, nothing
/// after the last chunk, and every chunk holding whole SSE lines (one
/// shared frame, or one per-connection write, is one chunk; the `retry:`
/// line and heartbeats are lines that end no block). It panics on
/// anything else, so a test reading through it checks the framing too.
#[derive(Debug, Default)]
pub struct Dechunk {
    state: DState,
    line: Vec<u8>,
    left: usize,
    /// The last data byte of the current chunk.
    tail: u8,
    /// Non-empty chunks decoded.
    pub chunks: usize,
    /// The last chunk (`0\r\n\r\n`) arrived.
    pub ended: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum DState {
    #[default]
    Size,
    Data,
    DataCr,
    DataLf,
    LastCr,
    LastLf,
    Done,
}

impl Dechunk {
    /// Decodes `wire` (any split of the body) onto `out`.
    pub fn feed(&mut self, wire: &[u8], out: &mut Vec<u8>) {
        let mut i = 0;
        while i < wire.len() {
            let b = wire[i];
            match self.state {
                DState::Size => {
                    i += 1;
                    self.line.push(b);
                    if !self.line.ends_with(b"\r\n") {
                        assert!(
                            self.line.len() <= 18,
                            "chunk size line too long: {:?}",
                            self.line
                        );
                        continue;
                    }
                    let hex = std::str::from_utf8(&self.line[..self.line.len() - 2])
                        .unwrap_or_else(|_| panic!("chunk size not ASCII: {:?}", self.line));
                    let n = usize::from_str_radix(hex, 16)
                        .unwrap_or_else(|_| panic!("bad chunk size line {hex:?}"));
                    self.line.clear();
                    if n == 0 {
                        self.state = DState::LastCr;
                    } else {
                        self.left = n;
                        self.tail = 0;
                        self.state = DState::Data;
                    }
                }
                DState::Data => {
                    let take = self.left.min(wire.len() - i);
                    let part = &wire[i..i + take];
                    out.extend_from_slice(part);
                    if let Some(&c) = part.last() {
                        self.tail = c;
                    }
                    self.left -= take;
                    i += take;
                    if self.left == 0 {
                        assert_eq!(
                            self.tail,
                            b'\n',
                            "a chunk ends inside an SSE line: {:?}",
                            String::from_utf8_lossy(out)
                        );
                        self.chunks += 1;
                        self.state = DState::DataCr;
                    }
                }
                DState::DataCr | DState::LastCr => {
                    assert_eq!(b, b'\r', "chunk data not followed by CRLF");
                    i += 1;
                    self.state = if self.state == DState::DataCr {
                        DState::DataLf
                    } else {
                        DState::LastLf
                    };
                }
                DState::DataLf | DState::LastLf => {
                    assert_eq!(b, b'\n', "chunk data not followed by CRLF");
                    i += 1;
                    if self.state == DState::DataLf {
                        self.state = DState::Size;
                    } else {
                        self.ended = true;
                        self.state = DState::Done;
                    }
                }
                DState::Done => panic!(
                    "bytes after the last chunk: {:?}",
                    String::from_utf8_lossy(&wire[i..])
                ),
            }
        }
    }
}

/// Whether a response head declares a chunked body.
pub fn head_is_chunked(head: &str) -> bool {
    head.lines().skip(1).any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    })
}

/// A reader that yields a body decoded from `inner`: through a `Dechunk`
/// when the head said chunked, as is otherwise.
pub struct Dechunked<R> {
    pub inner: R,
    pub dechunk: Option<Dechunk>,
    out: Vec<u8>,
    pos: usize,
}

impl<R: Read> Dechunked<R> {
    pub fn new(inner: R, chunked: bool) -> Self {
        Dechunked {
            inner,
            dechunk: chunked.then(Dechunk::default),
            out: Vec::new(),
            pos: 0,
        }
    }
}

impl<R: Read> Read for Dechunked<R> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.out.len() {
            // A chunked body ends at its last chunk (the connection may
            // stay open for the next request): that is the end of this body.
            if self.dechunk.as_ref().is_some_and(|d| d.ended) {
                return Ok(0);
            }
            self.out.clear();
            self.pos = 0;
            let mut raw = [0u8; 16384];
            let n = self.inner.read(&mut raw)?;
            if n == 0 {
                return Ok(0);
            }
            match &mut self.dechunk {
                Some(d) => d.feed(&raw[..n], &mut self.out),
                None => self.out.extend_from_slice(&raw[..n]),
            }
        }
        let n = b.len().min(self.out.len() - self.pos);
        b[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// An SSE subscription over a raw socket. `buf` holds decoded SSE bytes;
/// `wire` every body byte as it arrived (chunk framing included).
pub struct Sse {
    pub stream: TcpStream,
    pub head: String,
    buf: Vec<u8>,
    pub wire: Vec<u8>,
    pub dechunk: Option<Dechunk>,
    /// Bytes asked for per read, and a pause after each: a slow reader.
    pub read_size: usize,
    pub pace: Option<Duration>,
    /// How much of `buf` is whole lines of the block being read.
    scanned: usize,
    /// How much of `buf` holds no line end past `scanned`.
    seen: usize,
    /// Blank lines that ended nothing: blocks a lax client would dispatch
    /// as an event nobody published.
    pub empty_blocks: usize,
}

impl Sse {
    pub fn open(addr: SocketAddr, path: &str, headers: &str) -> Sse {
        let s = TcpStream::connect(addr).expect("connect");
        Self::on(s, path, headers)
    }
    pub fn on(mut s: TcpStream, path: &str, headers: &str) -> Sse {
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n{headers}\r\n")
                .as_bytes(),
        )
        .expect("write");
        let mut sse = Sse {
            stream: s,
            head: String::new(),
            buf: Vec::new(),
            wire: Vec::new(),
            dechunk: None,
            read_size: 16384,
            pace: None,
            scanned: 0,
            seen: 0,
            empty_blocks: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = find(&sse.buf, b"\r\n\r\n") {
                sse.head = String::from_utf8_lossy(&sse.buf[..i + 4]).into_owned();
                let rest = sse.buf.split_off(i + 4);
                sse.buf.clear();
                sse.wire.clear();
                if head_is_chunked(&sse.head) {
                    sse.dechunk = Some(Dechunk::default());
                }
                sse.take(&rest);
                break;
            }
            assert!(
                sse.fill(deadline),
                "no response head; got {:?}",
                String::from_utf8_lossy(&sse.buf)
            );
        }
        sse
    }
    /// Whether the body is chunk-framed.
    pub fn chunked(&self) -> bool {
        self.dechunk.is_some()
    }
    /// Whether the last chunk of a chunked body arrived.
    pub fn ended(&self) -> bool {
        self.dechunk.as_ref().is_some_and(|d| d.ended)
    }
    /// Takes body bytes off the wire.
    fn take(&mut self, raw: &[u8]) {
        self.wire.extend_from_slice(raw);
        match &mut self.dechunk {
            Some(d) => d.feed(raw, &mut self.buf),
            None => self.buf.extend_from_slice(raw),
        }
    }
    pub fn status(&self) -> u16 {
        self.head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
    fn fill(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        self.stream.set_read_timeout(Some(deadline - now)).unwrap();
        let mut b = [0u8; 16384];
        let want = self.read_size.clamp(1, b.len());
        if let Some(p) = self.pace {
            std::thread::sleep(p);
        }
        match self.stream.read(&mut b[..want]) {
            Ok(0) => false,
            Ok(n) if self.head.is_empty() => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            Ok(n) => {
                self.take(&b[..n]);
                true
            }
            Err(_) => false,
        }
    }
    /// The next unit a spec parser acts on, or `None` on timeout/EOF: a
    /// comment line or a `retry:` line that opens a block (both acted on at
    /// once and never dispatched: `comment` / `retry` set, `raw` the line),
    /// or a block up to its blank line. A blank line that ends a block with
    /// no `id`, `event` or `data` comes back as `raw == "\n"`: a block the
    /// spec does not dispatch but lax clients do (see `empty_blocks`).
    pub fn next_block(&mut self, timeout: Duration) -> Option<Ev> {
        let deadline = Instant::now() + timeout;
        loop {
            // Resume the search where the last one ended: a large event read
            // in small pieces is scanned once, not once per piece.
            let from = self.scanned.max(self.seen);
            if let Some(i) = self.buf[from..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| i + from)
            {
                let line = String::from_utf8_lossy(&self.buf[self.scanned..i]).into_owned();
                let block_start = self.scanned == 0;
                self.scanned = i + 1;
                if block_start && (line.starts_with(':') || line.starts_with("retry: ")) {
                    self.buf.drain(..self.scanned);
                    (self.scanned, self.seen) = (0, 0);
                    return Some(Ev {
                        comment: line.starts_with(':'),
                        retry: line.strip_prefix("retry: ").map(str::to_string),
                        raw: format!("{line}\n"),
                        ..Ev::default()
                    });
                }
                if !line.is_empty() {
                    continue;
                }
                let raw = String::from_utf8_lossy(&self.buf[..self.scanned]).into_owned();
                self.buf.drain(..self.scanned);
                (self.scanned, self.seen) = (0, 0);
                let mut ev = Ev {
                    raw: raw.clone(),
                    ..Ev::default()
                };
                for line in raw.trim_end_matches('\n').split('\n') {
                    if line.starts_with(':') {
                        ev.comment = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("retry: ") {
                        ev.retry = Some(v.to_string());
                    } else if line == "data:" {
                        ev.data.push(String::new());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data.push(v.to_string());
                    }
                }
                if ev.raw == "\n" {
                    self.empty_blocks += 1;
                }
                return Some(ev);
            }
            self.seen = self.buf.len();
            if !self.fill(deadline) {
                return None;
            }
        }
    }
    /// The next event that carries data (skipping retry and comments).
    pub fn next_event(&mut self, timeout: Duration) -> Option<Ev> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let b = self.next_block(left)?;
            if !b.data.is_empty() {
                return Some(b);
            }
        }
    }
    /// Whether the server ended the stream within `timeout`: the last
    /// chunk of a chunked body (the connection then stays open for the next
    /// request), or the close of an HTTP/1.0 body.
    pub fn ended_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ended() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.stream.set_read_timeout(Some(deadline - now)).unwrap();
            let mut b = [0u8; 4096];
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(n) => self.take(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
    /// Whether the server closed the stream within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            self.stream.set_read_timeout(Some(deadline - now)).unwrap();
            let mut b = [0u8; 4096];
            match self.stream.read(&mut b) {
                Ok(0) => return true,
                Ok(n) => self.take(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

pub fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

pub const T: Duration = Duration::from_secs(5);
