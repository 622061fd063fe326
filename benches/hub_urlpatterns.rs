//! Publish latency through the Mercure hub with 1,000 draft-08
//! `match_urlpattern` subscriptions (issue 21), A/B against none in one
//! run: adversarial patterns (32 wildcards between `a`s, then a `b` the
//! topic never has: the pathname automaton runs to the end of an all-`a`
//! topic and says no). URL patterns are selector streams, so the per-topic
//! match cache applies: "same topic" is the cached case, "new topic each"
//! matches every pattern once. Real `Server` on loopback, one keep-alive
//! publisher, each publish a round trip.
//!
//! `cargo bench --bench hub_urlpatterns` (`-- quick` for fewer publishes).
//! Compare the rows of one run, not runs on different machines.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ssed::internals::auth::{mint_hs256_typ, Key};
use ssed::{Command, Config, Server};

const KEY: &[u8] = b"ssed-urlpattern-bench-key-0123456789abcd";
const PATTERNS: usize = 1000;
/// Most URL patterns one subscription may hold.
const PER_CONN: usize = 8;

fn token(actions: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let claims = serde_json::json!({
        "aud": "http://b/.well-known/mercure", "exp": exp,
        "authorization_details": [{"type": "https://mercure.rocks/authorization-detail",
            "actions": actions, "topics": [{"match": "*"}]}]
    });
    mint_hs256_typ(&claims, &Key::new(KEY.to_vec()).expect("key"), "at+jwt")
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn pattern(i: usize) -> String {
    format!("https://ex.com/{}b{i}", "*a".repeat(32))
}

/// Reads one HTTP response with a Content-Length body; returns its status.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= h + 4 + len {
                return head.get(9..12)?.parse().ok();
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Opens `subs` subscriptions of 16 templates each (template numbers
/// wrapping at [`DISTINCT`]), as token holders; returns the sockets and
/// how many were accepted.
fn row(name: &str, lat: &[Duration]) {
    if lat.is_empty() {
        println!("{name:<58} (no publishes)");
        return;
    }
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "{name:<58} p50 {:>9.1} us  p90 {:>9.1} us  max {:>9.1} us  ({} publishes)",
        p(0.5),
        p(0.9),
        p(1.0),
        lat.len()
    );
}

fn subscribe(addr: SocketAddr, patterns: usize) -> (Vec<TcpStream>, usize) {
    let t = token(&["subscribe"]);
    let mut out = Vec::new();
    let mut ok = 0;
    for c in 0..patterns.div_ceil(PER_CONN) {
        let q: Vec<String> = (c * PER_CONN..((c + 1) * PER_CONN).min(patterns))
            .map(|i| format!("match_urlpattern={}", enc(&pattern(i))))
            .collect();
        let Ok(mut s) = TcpStream::connect(addr) else {
            break;
        };
        let req = format!(
            "GET /.well-known/mercure?{} HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {t}\r\n\r\n",
            q.join("&")
        );
        let _ = s.write_all(req.as_bytes());
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&b[..n]),
            }
        }
        if head.starts_with(b"HTTP/1.1 200") {
            ok += q.len();
        }
        out.push(s);
    }
    (out, ok)
}

/// Publishes `n` events to a 1,000-byte all-`a` topic; `fresh`: each to a
/// new topic (nothing cached). Returns the latencies, sorted.
fn publish(addr: SocketAddr, n: usize, fresh: bool) -> Vec<Duration> {
    let t = token(&["publish"]);
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Vec::new();
    };
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut lat = Vec::with_capacity(n);
    for k in 0..n {
        let tail = if fresh {
            format!("{k:07}")
        } else {
            String::new()
        };
        let mut topic = String::from("https://ex.com/");
        while topic.len() < 1000 - tail.len() {
            topic.push('a');
        }
        topic.push_str(&tail);
        let form = format!("topic={}&data=x", enc(&topic));
        let req = format!(
            "POST /.well-known/mercure HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {t}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        );
        let start = Instant::now();
        if s.write_all(req.as_bytes()).is_err() {
            break;
        }
        match read_response(&mut s, &mut buf) {
            Some(200) => lat.push(start.elapsed()),
            other => {
                eprintln!("publish answered {other:?}");
                break;
            }
        }
    }
    lat.sort();
    lat
}

fn scenario(patterns: usize, n: usize) {
    let args: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--heartbeat",
        "0",
        "--max-connections-per-ip",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let key = String::from_utf8_lossy(KEY).into_owned();
    let env = move |k: &str| (k == "SSED_JWT_KEY").then(|| key.clone());
    let cfg: Config = match Config::from_args(&args, env) {
        Ok(Command::Serve(c)) => *c,
        _ => return,
    };
    let Ok(server) = Server::bind(cfg) else {
        return;
    };
    let addr = server.local_addrs()[0];
    let stop = server.shutdown_handle();
    let th = std::thread::spawn(move || server.run());
    let (held, ok) = subscribe(addr, patterns);
    let label = format!("{patterns} URL patterns ({ok} accepted)");
    row(&format!("{label}: same topic"), &publish(addr, n, false));
    row(
        &format!("{label}: new topic each"),
        &publish(addr, n / 4, true),
    );
    drop(held);
    stop.shutdown();
    let _ = th.join();
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let n = if quick { 100 } else { 400 };
    for patterns in [0, PATTERNS] {
        scenario(patterns, n);
    }
}
