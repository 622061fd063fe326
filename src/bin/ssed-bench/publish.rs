//! `publish`: publish throughput through any URL (`POST /events?stream=S`
//! on ssed, or any peer taking a POST body): N keep-alive connections,
//! each keeping K requests pipelined, for S seconds or C publishes.
//! Reports publishes/s, latency percentiles, errors, and the CPU the
//! server (`--pid`) and Redis (`--redis-pid`) spent per publish.
//!
//! One thread drives every connection with mio (the server, not this
//! client, is measured). Everything is bounded: connections, pipeline
//! depth, body size, the run's length, and a grace period after it for
//! the last replies.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::flags::Flags;
use crate::procfs;
use crate::report::{round2, Report};
use crate::stats::Histogram;
use crate::url::Url;

/// Most connections (each a file; ssed-bench stays under 20,000).
pub const MAX_CONNECTIONS: usize = 10_000;
/// Deepest pipeline per connection.
pub const MAX_PIPELINE: usize = 1024;
/// Largest body.
pub const MAX_SIZE: usize = 1 << 20;
/// Longest run.
pub const MAX_SECONDS: f64 = 600.0;
/// Most publishes in a `--count` run.
pub const MAX_COUNT: u64 = 100_000_000;
/// How long to wait for outstanding replies after the run.
const GRACE: Duration = Duration::from_secs(10);

/// When the run stops issuing publishes.
#[derive(Debug, Clone, PartialEq)]
pub enum Limit {
    Seconds(Duration),
    Count(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PublishOpts {
    pub url: Url,
    pub connections: usize,
    pub pipeline: usize,
    pub limit: Limit,
    pub size: usize,
    pub pid: Option<u32>,
    pub redis_pid: Option<u32>,
}

const FLAGS: &[&str] = &[
    "url",
    "connections",
    "pipeline",
    "seconds",
    "count",
    "size",
    "pid",
    "redis-pid",
];

/// Parses the arguments after `publish`; `true` with `--json`.
pub fn parse(args: &[String]) -> Result<(PublishOpts, bool), String> {
    let f = Flags::parse(args, FLAGS)?;
    let in_range = |name: &str, v: u64, lo: u64, hi: u64| {
        if (lo..=hi).contains(&v) {
            Ok(())
        } else {
            Err(format!("--{name} must be in {lo}..={hi}"))
        }
    };
    let url = f.url("url")?;
    let connections: usize = f.num("connections", None)?;
    in_range("connections", connections as u64, 1, MAX_CONNECTIONS as u64)?;
    let pipeline: usize = f.num("pipeline", Some(1))?;
    in_range("pipeline", pipeline as u64, 1, MAX_PIPELINE as u64)?;
    let size: usize = f.num("size", Some(64))?;
    in_range("size", size as u64, 1, MAX_SIZE as u64)?;
    let limit = match (f.opt_num::<f64>("seconds")?, f.opt_num::<u64>("count")?) {
        (Some(_), Some(_)) => return Err("give --seconds or --count, not both".into()),
        (None, Some(c)) => {
            in_range("count", c, 1, MAX_COUNT)?;
            Limit::Count(c)
        }
        (s, None) => {
            let s = s.unwrap_or(10.0);
            if !(s > 0.0 && s <= MAX_SECONDS) {
                return Err(format!("--seconds must be in (0, {MAX_SECONDS}]"));
            }
            Limit::Seconds(Duration::from_secs_f64(s))
        }
    };
    let opts = PublishOpts {
        url,
        connections,
        pipeline,
        limit,
        size,
        pid: f.opt_num("pid")?,
        redis_pid: f.opt_num("redis-pid")?,
    };
    Ok((opts, f.json))
}

/// The request every publish sends.
pub fn request(url: &Url, size: usize) -> Vec<u8> {
    let mut r = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\r\n",
        url.path_query, url.host_header
    )
    .into_bytes();
    r.resize(r.len() + size, b'x');
    r
}

/// One complete response at the start of `buf`: (its length, status).
/// `Ok(None)` while partial; chunked bodies are refused (publish replies
/// are sized).
pub fn response(buf: &[u8]) -> Result<Option<(usize, u16)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad reply: {e}")),
    };
    let mut len = 0usize;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or("bad Content-Length")?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked publish replies are not supported".into());
        }
    }
    let status = resp.code.unwrap_or(0);
    Ok((buf.len() >= head + len).then_some((head + len, status)))
}

struct Conn {
    sock: TcpStream,
    out: Vec<u8>,
    wpos: usize,
    inbuf: Vec<u8>,
    sent: VecDeque<Instant>,
    dead: bool,
}

#[derive(Default)]
struct Tally {
    issued: u64,
    ok: u64,
    errors: u64,
    lost: u64,
    statuses: Vec<(u16, u64)>,
}

impl Tally {
    fn status(&mut self, s: u16) {
        match self.statuses.iter_mut().find(|(k, _)| *k == s) {
            Some((_, n)) => *n += 1,
            None => self.statuses.push((s, 1)),
        }
    }
}

fn cpu_ns(pid: Option<u32>) -> Option<u64> {
    let s = procfs::sample(pid?).ok()?;
    Some((s.cpu_ticks as f64 * procfs::tick_us() * 1000.0) as u64)
}

/// Runs the load; see the module doc.
pub fn run(o: &PublishOpts) -> Result<Report, String> {
    let req = request(&o.url, o.size);
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut conns = Vec::with_capacity(o.connections);
    for i in 0..o.connections {
        let s = std::net::TcpStream::connect_timeout(&o.url.addr.into(), Duration::from_secs(5))
            .map_err(|e| format!("connect {}: {e}", o.url.addr))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut sock = TcpStream::from_std(s);
        poll.registry()
            .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| e.to_string())?;
        conns.push(Conn {
            sock,
            out: Vec::new(),
            wpos: 0,
            inbuf: Vec::new(),
            sent: VecDeque::new(),
            dead: false,
        });
    }
    let (cpu0, rcpu0) = (cpu_ns(o.pid), cpu_ns(o.redis_pid));
    let start = Instant::now();
    let stop_at = match o.limit {
        Limit::Seconds(d) => Some(start + d),
        Limit::Count(_) => None,
    };
    let hard = start
        + match o.limit {
            Limit::Seconds(d) => d + GRACE,
            Limit::Count(_) => Duration::from_secs_f64(MAX_SECONDS) + GRACE,
        };
    let mut t = Tally::default();
    let mut lat = Histogram::new();
    let may_issue = |t: &Tally, now: Instant| match o.limit {
        Limit::Seconds(_) => stop_at.is_some_and(|s| now < s),
        Limit::Count(c) => t.issued < c,
    };
    // Fill every pipeline.
    let now = Instant::now();
    for c in &mut conns {
        while c.sent.len() < o.pipeline && may_issue(&t, now) {
            c.out.extend_from_slice(&req);
            c.sent.push_back(now);
            t.issued += 1;
        }
    }
    let mut events = Events::with_capacity(1024);
    let mut last_reply = start;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let now = Instant::now();
        let outstanding = conns.iter().any(|c| !c.dead && !c.sent.is_empty());
        if (!outstanding && !may_issue(&t, now)) || now >= hard {
            break;
        }
        let wait = stop_at
            .filter(|s| *s > now)
            .map_or(Duration::from_millis(100), |s| {
                (s - now).min(Duration::from_millis(100))
            });
        poll.poll(&mut events, Some(wait))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let Some(c) = conns.get_mut(ev.token().0) else {
                continue;
            };
            if c.dead {
                continue;
            }
            if let Err(e) = service(
                c, &mut chunk, &req, o.pipeline, &mut t, &mut lat, &may_issue,
            ) {
                log_lost(&e);
                t.lost += c.sent.len() as u64;
                c.sent.clear();
                c.dead = true;
                let _ = poll.registry().deregister(&mut c.sock);
            } else {
                last_reply = Instant::now();
            }
        }
    }
    let elapsed = last_reply
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    let unanswered: u64 = conns.iter().map(|c| c.sent.len() as u64).sum();
    let per = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if t.ok + t.errors > 0 => {
            Some(b.saturating_sub(a) as f64 / 1000.0 / (t.ok + t.errors) as f64)
        }
        _ => None,
    };
    let (cpu1, rcpu1) = (cpu_ns(o.pid), cpu_ns(o.redis_pid));
    let mut r = Report::new(
        "publish",
        format!(
            "{} connections x {} pipelined, {} B bodies, to {}{}",
            o.connections, o.pipeline, o.size, o.url.addr, o.url.path_query
        ),
    );
    r.add("publishes_ok", t.ok, "");
    r.add("errors", t.errors, "non-2xx");
    r.add("lost", t.lost + unanswered, "unanswered");
    let statuses: serde_json::Map<String, serde_json::Value> = t
        .statuses
        .iter()
        .map(|(s, n)| (s.to_string(), (*n).into()))
        .collect();
    r.add("statuses", serde_json::Value::Object(statuses), "");
    r.add("seconds", round2(Some(elapsed)), "s");
    r.add("publishes_per_s", round2(Some(t.ok as f64 / elapsed)), "/s");
    let ms = |p: f64| round2(lat.percentile(p).map(|ns| ns as f64 / 1e6));
    r.add("latency_p50", ms(50.0), "ms");
    r.add("latency_p99", ms(99.0), "ms");
    r.add("latency_max", round2(Some(lat.max() as f64 / 1e6)), "ms");
    r.add("server_cpu_per_publish", round2(per(cpu0, cpu1)), "us");
    r.add("redis_cpu_per_publish", round2(per(rcpu0, rcpu1)), "us");
    Ok(r)
}

fn log_lost(e: &io::Error) {
    eprintln!("ssed-bench publish: a connection ended: {e}");
}

/// Writes what is queued, reads replies, tops the pipeline up.
fn service(
    c: &mut Conn,
    chunk: &mut [u8],
    req: &[u8],
    pipeline: usize,
    t: &mut Tally,
    lat: &mut Histogram,
    may_issue: &impl Fn(&Tally, Instant) -> bool,
) -> io::Result<()> {
    let mut eof = false;
    loop {
        match c.sock.read(chunk) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => c.inbuf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut used = 0;
    let now = Instant::now();
    while let Some((len, status)) =
        response(&c.inbuf[used..]).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
    {
        used += len;
        let Some(at) = c.sent.pop_front() else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "unasked reply"));
        };
        lat.record(now.saturating_duration_since(at).as_nanos() as u64);
        t.status(status);
        if (200..300).contains(&status) {
            t.ok += 1;
        } else {
            t.errors += 1;
        }
    }
    c.inbuf.drain(..used);
    if eof {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    while c.sent.len() < pipeline && may_issue(t, now) {
        c.out.extend_from_slice(req);
        c.sent.push_back(now);
        t.issued += 1;
    }
    while c.wpos < c.out.len() {
        match c.sock.write(&c.out[c.wpos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => c.wpos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if c.wpos == c.out.len() {
        c.out.clear();
        c.wpos = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn defaults_and_values() {
        let (o, json) = parse(&argv(
            "--url http://127.0.0.1:9/events?stream=b --connections 128",
        ))
        .unwrap();
        assert!(!json);
        assert_eq!((o.connections, o.pipeline, o.size), (128, 1, 64));
        assert_eq!(o.limit, Limit::Seconds(Duration::from_secs(10)));
        assert_eq!((o.pid, o.redis_pid), (None, None));
        let (o, json) = parse(&argv(
            "--url=http://127.0.0.1:9/e --connections 8 --pipeline 16 --count 5000 --size 200 --redis-pid 7 --pid 8 --json",
        ))
        .unwrap();
        assert!(json);
        assert_eq!((o.connections, o.pipeline, o.size), (8, 16, 200));
        assert_eq!(o.limit, Limit::Count(5000));
        assert_eq!((o.pid, o.redis_pid), (Some(8), Some(7)));
        let (o, _) = parse(&argv(
            "--url http://127.0.0.1:9/ --connections 1 --seconds 2.5",
        ))
        .unwrap();
        assert_eq!(o.limit, Limit::Seconds(Duration::from_millis(2500)));
    }

    #[test]
    fn bounds_and_errors() {
        let base = "--url http://127.0.0.1:9/";
        for bad in [
            "--connections 1".to_string(), // no --url
            base.to_string(),              // no --connections
            format!("{base} --connections 0"),
            format!("{base} --connections {}", MAX_CONNECTIONS + 1),
            format!("{base} --connections 1 --pipeline 0"),
            format!("{base} --connections 1 --pipeline {}", MAX_PIPELINE + 1),
            format!("{base} --connections 1 --size 0"),
            format!("{base} --connections 1 --size {}", MAX_SIZE + 1),
            format!("{base} --connections 1 --seconds 0"),
            format!("{base} --connections 1 --seconds 601"),
            format!("{base} --connections 1 --seconds nan"),
            format!("{base} --connections 1 --count 0"),
            format!("{base} --connections 1 --count {}", MAX_COUNT + 1),
            format!("{base} --connections 1 --count 5 --seconds 1"),
            format!("{base} --connections 1 --connections 2"),
            format!("{base} --connections 1 --bogus 2"),
            format!("{base} --connections"),
            format!("{base} --connections x"),
            "--url http://10.0.0.1:9/ --connections 1".to_string(),
        ] {
            assert!(parse(&argv(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_and_responses() {
        let u = Url::parse("http://127.0.0.1:9/events?stream=b").unwrap();
        let r = request(&u, 5);
        assert_eq!(
            r,
            b"POST /events?stream=b HTTP/1.1\r\nHost: 127.0.0.1:9\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nxxxxx"
        );
        let two = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 503 X\r\nContent-Length: 0\r\n\r\n";
        let (n, s) = response(two).unwrap().unwrap();
        assert_eq!((n, s), (40, 200));
        assert_eq!(response(&two[n..]).unwrap(), Some((two.len() - n, 503)));
        assert_eq!(response(&two[..39]).unwrap(), None, "body incomplete");
        assert_eq!(response(&two[..10]).unwrap(), None, "head incomplete");
        assert!(response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn runs_a_count_against_a_fake_server() {
        use std::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // Answers every request it reads: the first two with 200, then 503.
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let (mut buf, mut seen, mut answered) = (Vec::new(), 0usize, 0);
            let url = Url::parse(&format!("http://127.0.0.1:{port}/x")).unwrap();
            let one = request(&url, 3).len();
            while answered < 5 {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
                while buf.len() - seen >= one {
                    seen += one;
                    let reply: &[u8] = if answered < 2 {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
                    } else {
                        b"HTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n"
                    };
                    s.write_all(reply).unwrap();
                    answered += 1;
                }
            }
            answered
        });
        let (o, _) = parse(&argv(&format!(
            "--url http://127.0.0.1:{port}/x --connections 1 --pipeline 2 --count 5 --size 3"
        )))
        .unwrap();
        let r = run(&o).unwrap().to_json();
        assert_eq!(server.join().unwrap(), 5);
        assert_eq!(r["publishes_ok"], 2);
        assert_eq!(r["errors"], 3);
        assert_eq!(r["lost"], 0);
        assert_eq!(r["statuses"]["503"], 3);
    }
}
