//! What the hub benches share (`selectors`, `hub_urlpatterns`): query
//! encoding, reading one response, a keep-alive publisher timing each
//! round trip, and the latency row they print. Not a bench of its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Percent-encodes `s` for a form body or query.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads one HTTP response with a Content-Length body; returns its status.
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<u16> {
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

/// Publishes `n` hub updates with bearer `token` on one keep-alive
/// connection, to `topic(k)` for the k-th; the round-trip latencies,
/// sorted (fewer if a publish is refused or the connection fails).
pub fn publish_each(
    addr: SocketAddr,
    token: &str,
    n: usize,
    mut topic: impl FnMut(usize) -> String,
) -> Vec<Duration> {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return Vec::new();
    };
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut lat = Vec::with_capacity(n);
    for k in 0..n {
        let form = format!("topic={}&data=x", enc(&topic(k)));
        let req = format!(
            "POST /.well-known/mercure HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
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

/// Prints one row: p50, p90 and max of `lat` (sorted), names padded to
/// `width`.
pub fn row(name: &str, lat: &[Duration], width: usize) {
    if lat.is_empty() {
        println!("{name:<width$} (no publishes)");
        return;
    }
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "{name:<width$} p50 {:>9.1} us  p90 {:>9.1} us  max {:>9.1} us  ({} publishes)",
        p(0.5),
        p(0.9),
        p(1.0),
        lat.len()
    );
}
