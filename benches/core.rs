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

use ssed::internals::{frame, http, Broker, Limits, Origin, Resume};
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
                black_box(1_764_000_000_000_000),
                Some("tick"),
                &data,
                None,
            ));
        });
        let multi = "line one\nline two\r\nline three\n".repeat(8);
        bench("frame: encode 8x3-line event", 300_000, || {
            black_box(frame::encode_numbered(1, None, black_box(&multi), None));
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
        let sse = frame::encode_numbered(1, None, &"x".repeat(64), None);
        let mut now = 1u64;
        bench("history: append (ring full, evicting)", 2_000_000, || {
            now += 1;
            let _ = black_box(broker.append(Origin::Local, &s, now, &sse));
        });
        let mid = broker.ids().last() - 500;
        bench("history: resume plan (id lookup)", 2_000_000, || {
            let c = broker.subscribe(1, &s, &Resume::After(black_box(mid), String::new()));
            broker.unsubscribe(1, &c.cursors);
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
        let _ = s.write_all(b"GET /events?stream=fan HTTP/1.1\r\n\r\n");
        subs.push(s);
    }
    // Wait until every subscriber has its response head and retry line.
    let mut buf = vec![0u8; 1 << 16];
    for s in &mut subs {
        let mut got = Vec::new();
        let ready = |g: &[u8]| {
            g.windows(4)
                .position(|w| w == b"\r\n\r\n")
                .is_some_and(|h| g[h + 4..].ends_with(b"\n\n"))
        };
        while !ready(&got) {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
    }
    let payload = "x".repeat(64);
    let t = Instant::now();
    let p = std::thread::spawn(move || {
        for _ in 0..m {
            let _ = publisher.publish("fan", Event::new(payload.clone()));
        }
    });
    let mut total = 0usize;
    for s in &mut subs {
        let mut events = 0;
        let mut tail = 0usize;
        while events < m {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    // Count blank-line terminators, carrying a trailing '\n'.
                    for &b in &buf[..k] {
                        if b == b'\n' {
                            tail += 1;
                            if tail == 2 {
                                events += 1;
                                tail = 0;
                            }
                        } else {
                            tail = 0;
                        }
                    }
                }
            }
        }
        total += events;
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
