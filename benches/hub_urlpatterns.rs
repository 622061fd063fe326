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
use std::time::Duration;

use ssed::internals::auth::{mint_hs256_typ, Key};
use ssed::{Command, Config, Server};

mod hub;
use hub::enc;

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

fn pattern(i: usize) -> String {
    format!("https://ex.com/{}b{i}", "*a".repeat(32))
}

fn row(name: &str, lat: &[Duration]) {
    hub::row(name, lat, 58)
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
    hub::publish_each(addr, &t, n, |k| {
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
        topic
    })
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
