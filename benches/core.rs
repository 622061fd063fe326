//! Micro-benchmarks of the hot paths, with plain `std::time` (no harness):
//! frame encoding, request parsing, history append and resume lookup, and
//! in-process fan-out through a real `Server` to many TCP subscribers.
//!
//! `cargo bench` runs them; CI only compiles them (`cargo bench --no-run`).
//! Figures are per operation and vary with the machine's load: compare runs
//! on the same machine, not absolute numbers.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ssed::internals::{frame, http, Broker, ConnKey, EventId, Limits, Resume};
use ssed::{Config, Event, Server};

fn bench(name: &str, iters: u64, mut f: impl FnMut()) {
    for _ in 0..iters / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    let ns = t.elapsed().as_nanos() as f64 / iters as f64;
    println!("{name:<44} {ns:>10.1} ns/op  ({iters} iterations)");
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let want = |n: &str| filter.as_deref().is_none_or(|f| n.contains(f));

    if want("frame") {
        let data = "x".repeat(64);
        bench("frame: encode 64 B event", 1_000_000, || {
            black_box(frame::encode_numbered(
                black_box(EventId::new(1_764_000_000_000_000)),
                Some("tick"),
                &data,
                None,
            ));
        });
        let multi = "line one\nline two\r\nline three\n".repeat(8);
        bench("frame: encode 8x3-line event", 300_000, || {
            black_box(frame::encode_numbered(
                EventId::new(1),
                None,
                black_box(&multi),
                None,
            ));
        });
    }

    if want("parse") {
        let limits = http::Limits {
            max_header_bytes: 8192,
            max_body: 1 << 20,
        };
        let get = b"GET /events?stream=news&stream=alerts HTTP/1.1\r\nHost: example.com\r\nAccept: text/event-stream\r\nLast-Event-ID: 1764000000000000\r\nUser-Agent: bench\r\n\r\n";
        bench("parse: subscribe request", 1_000_000, || {
            black_box(http::parse(black_box(get), limits).ok());
        });
        let post = b"POST /events?stream=news HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 64\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123";
        bench("parse: publish request, 64 B body", 1_000_000, || {
            black_box(http::parse(black_box(post), limits).ok());
        });
    }

    if want("history") {
        let mut broker = Broker::new(
            1,
            Limits {
                history: 1000,
                history_bytes: 1 << 20,
            },
            10,
        );
        let Ok(s) = broker.resolve(&["bench"], true) else {
            return;
        };
        let sse = frame::encode_numbered(EventId::new(1), None, &"x".repeat(64), None);
        let mut now = 1u64;
        bench("history: append (ring full, evicting)", 2_000_000, || {
            now += 1;
            let _ = black_box(broker.append(&s, EventId::new(now), &sse));
        });
        let mid = EventId::new(broker.ids().last().get() - 500);
        bench("history: resume plan (id lookup)", 2_000_000, || {
            let c = broker.subscribe(
                ConnKey(1),
                &s,
                &Resume::After(black_box(mid), String::new()),
            );
            broker.unsubscribe(ConnKey(1), &c.cursors);
            black_box(c);
        });
    }

    if want("fanout") {
        for n in [100usize, 1000] {
            fanout(n, 200);
        }
    }
}

/// A real server on loopback, `n` subscribers, `m` events published from
/// another thread through `Publisher`; reports deliveries per second.
fn fanout(n: usize, m: usize) {
    let cfg = Config {
        listen: vec![([127, 0, 0, 1], 0).into()],
        heartbeat: Duration::ZERO,
        max_connections_per_ip: n + 10,
        ..Config::default()
    };
    let Ok(server) = Server::bind(cfg) else {
        return;
    };
    let addr = server.local_addrs()[0];
    let publisher = server.publisher();
    let stop = server.shutdown_handle();
    let th = std::thread::spawn(move || server.run());
    let mut subs: Vec<TcpStream> = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return;
        };
        let _ = s.write_all(b"GET /events?stream=fan HTTP/1.1\r\nHost: b\r\n\r\n");
        subs.push(s);
    }
    // Wait until every subscriber has its response head and retry line.
    let mut buf = vec![0u8; 1 << 16];
    let mut counters = Vec::with_capacity(n);
    for s in &mut subs {
        let mut got = Vec::new();
        let mut c = loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
            if let Some(h) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..h]).to_ascii_lowercase();
                let mut c = Blocks::new(head.contains("\r\ntransfer-encoding: chunked"));
                c.feed(&got[h + 4..]);
                break c;
            }
        };
        // The stream opens with `retry: N\n`, a field line, not a block.
        while c.lines < 1 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(k) => c.feed(&buf[..k]),
            }
        }
        (c.count, c.newlines) = (0, 0);
        counters.push(c);
    }
    let payload = "x".repeat(64);
    let t = Instant::now();
    let p = std::thread::spawn(move || {
        for _ in 0..m {
            let _ = publisher.publish("fan", Event::new(payload.clone()));
        }
    });
    let mut total = 0usize;
    for (s, c) in subs.iter_mut().zip(&mut counters) {
        while c.count < m {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => c.feed(&buf[..k]),
            }
        }
        total += c.count;
    }
    let el = t.elapsed();
    let _ = p.join();
    stop.shutdown();
    let _ = th.join();
    println!(
        "{:<44} {:>10.0} deliveries/s  ({total} in {:.1} ms)",
        format!("fanout: {n} subscribers x {m} events"),
        total as f64 / el.as_secs_f64(),
        el.as_secs_f64() * 1000.0
    );
}

/// Counts SSE blocks (blank-line ends) in an event-stream body, stripping
/// chunk framing first when the body is chunked (HTTP/1.1 streams are).
struct Blocks {
    /// `None`: identity body. `Some(left)`: data bytes left in the current
    /// chunk, 0 while in a size line or a chunk's CRLF.
    chunk: Option<usize>,
    size: usize,
    in_size: bool,
    newlines: u8,
    /// Lines ended in the body (the stream opens with a lone `retry:` line).
    lines: usize,
    count: usize,
}

impl Blocks {
    fn new(chunked: bool) -> Blocks {
        Blocks {
            chunk: chunked.then_some(0),
            size: 0,
            in_size: true,
            newlines: 0,
            lines: 0,
            count: 0,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = match self.chunk {
                None => bytes.len(),
                Some(0) => {
                    // Size line (hex digits, CRLF) or the CRLF after data.
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if b == b'\n' {
                        if self.in_size {
                            self.chunk = Some(self.size);
                            self.in_size = self.size == 0;
                            self.size = 0;
                        } else {
                            self.in_size = true;
                        }
                    } else if self.in_size {
                        if let Some(d) = (b as char).to_digit(16) {
                            self.size = self.size * 16 + d as usize;
                        }
                    }
                    continue;
                }
                Some(left) => left.min(bytes.len()),
            };
            for &b in &bytes[..take] {
                if b == b'\n' {
                    self.lines += 1;
                    self.newlines += 1;
                    if self.newlines == 2 {
                        self.count += 1;
                        self.newlines = 0;
                    }
                } else {
                    self.newlines = 0;
                }
            }
            if let Some(left) = self.chunk {
                self.chunk = Some(left - take);
                if left == take {
                    self.in_size = false;
                }
            }
            bytes = &bytes[take..];
        }
    }
}
