//! Shared helpers for integration tests: start the real `ssed` binary on
//! port 0, speak raw HTTP/1.1 to it, and read SSE frames with deadlines.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server process, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ssed"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ssed");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("addr");
        Server { child, addr }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
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

/// An SSE subscription over a raw socket.
pub struct Sse {
    pub stream: TcpStream,
    pub head: String,
    buf: Vec<u8>,
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
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = find(&sse.buf, b"\r\n\r\n") {
                sse.head = String::from_utf8_lossy(&sse.buf[..i + 4]).into_owned();
                sse.buf.drain(..i + 4);
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
        match self.stream.read(&mut b) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            Err(_) => false,
        }
    }
    /// The next block (event, retry or comment), or `None` on timeout/EOF.
    pub fn next_block(&mut self, timeout: Duration) -> Option<Ev> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = find(&self.buf, b"\n\n") {
                let raw = String::from_utf8_lossy(&self.buf[..i + 2]).into_owned();
                self.buf.drain(..i + 2);
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
                return Some(ev);
            }
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
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
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
