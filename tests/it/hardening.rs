//! Issue 6, hardening, over real sockets against the real binary: admission
//! control, connect bursts and fd exhaustion; timeouts (slowloris, body,
//! idle, write stall) and slow-input costs; pipelining back-pressure; slow
//! consumers (bounded memory, drop, gap, resume); hostile input; shutdown
//! under abuse; and leak-free connection churn. The seeded fuzzer is
//! `tests/fuzz.rs`.
//!
//! Every test runs an unrelated "canary" subscriber next to the abuse and
//! asserts it kept receiving events, and asserts `/stats` counters moved.
//! Every test ends by checking the server is still alive (panic safety is
//! checked from the outside: a panic on the loop thread kills the process).
//!
//! Figures (RSS, CPU) are printed; run with `--nocapture` to see them.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

// ---------------------------------------------------------------------------
// Helpers local to this file.
// ---------------------------------------------------------------------------

/// Starts `ssed` with an optional open-file limit set in the child before
/// exec.
fn spawn_with_nofile(args: &[&str], nofile: Option<u64>) -> Server {
    let mut ssed = Ssed::new().args(args);
    if let Some(n) = nofile {
        ssed = ssed.rlimit(libc::RLIMIT_NOFILE, n, n);
    }
    ssed.start()
}

fn setsockopt_int(fd: i32, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: passing a pointer to a live c_int of the stated size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Connects to `dst` from source address `src` (any of 127.0.0.0/8), with
/// an optional receive buffer size set before the handshake (so the window
/// stays small). The port is chosen at connect time
/// (`IP_BIND_ADDRESS_NO_PORT`), so each source address gets the whole
/// ephemeral range per destination.
pub(crate) fn connect_from(
    src: Ipv4Addr,
    dst: SocketAddr,
    rcvbuf: Option<i32>,
) -> io::Result<TcpStream> {
    let SocketAddr::V4(dst) = dst else {
        panic!("IPv4 only")
    };
    // SAFETY: plain socket calls on an fd we own; `from_raw_fd` takes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let s = TcpStream::from_raw_fd(fd);
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)?;
        if let Some(r) = rcvbuf {
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, r)?;
        }
        let sa = sockaddr(SocketAddrV4::new(src, 0));
        if libc::bind(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let da = sockaddr(dst);
        loop {
            let r = libc::connect(
                fd,
                &da as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            if r == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(s)
    }
}

/// `SO_LINGER {on, 0}`: closing sends a RST and leaves no TIME_WAIT.
fn set_linger0(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: pointer to a live `linger` of the stated size.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER: {}", io::Error::last_os_error());
}

/// A keep-alive connection from a given source address.
fn conn_from(src: Ipv4Addr, addr: SocketAddr) -> Conn {
    let s = connect_from(src, addr, None).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    Conn {
        reader: io::BufReader::new(s),
    }
}

/// Reads until EOF (or reset) or `timeout`; returns the bytes and whether
/// the end was reached.
fn read_to_end_within(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut b = [0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return (out, false);
        }
        s.set_read_timeout(Some(deadline - now)).unwrap();
        match s.read(&mut b) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (out, true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return (out, false),
        }
    }
}

/// Splits one response with a Content-Length body off the front of `buf`.
fn parse_response(buf: &[u8]) -> Option<(Response, usize)> {
    let end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    if buf.len() < end + len {
        return None;
    }
    let body = buf[end..end + len].to_vec();
    Some((Response { status, head, body }, end + len))
}

/// Asserts a JSON error response: exact status line, JSON content type, a
/// non-empty `"error"` string.
fn assert_json_error(r: &Response, status: u16, what: &str) {
    let first = r.head.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&format!("HTTP/1.1 {status} ")),
        "{what}: status line {first:?}, wanted {status}; body {:?}",
        r.text()
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json"),
        "{what}: {}",
        r.head
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {:?}", r.text()));
    assert!(
        v["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no error message in {v}"
    );
}

fn rejected(st: &serde_json::Value, reason: &str) -> u64 {
    st["rejected"][reason].as_u64().unwrap_or(0)
}

fn num(st: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = st;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("no number at {path:?} in {st}"))
}

/// `/stats` over an existing keep-alive connection.
fn stats_on(c: &mut Conn) -> serde_json::Value {
    let r = c.request(b"GET /stats HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200);
    r.json()
}

/// Polls `/stats` (fresh connections) until `f` holds or `timeout` passes;
/// returns the last sample.
fn poll_stats(
    addr: SocketAddr,
    timeout: Duration,
    mut f: impl FnMut(&serde_json::Value) -> bool,
) -> (bool, serde_json::Value) {
    let deadline = Instant::now() + timeout;
    loop {
        let st = stats(addr);
        if f(&st) {
            return (true, st);
        }
        if Instant::now() >= deadline {
            return (false, st);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The server process is still running and answers `/healthz`.
fn assert_alive(s: &mut Server) {
    assert!(
        s.child.try_wait().expect("try_wait").is_none(),
        "server process exited"
    );
    let r = get(s.addr, "/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
}

/// Field `name` (e.g. `VmRSS`, `VmHWM`) of `/proc/PID/status`, in bytes.
fn proc_status_bytes(pid: u32, name: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = s
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("kB value");
    kb * 1024
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let rest = &s[s.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is f[0]; utime is field 14, stime field 15.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

const MIB: u64 = 1 << 20;

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

// ---------------------------------------------------------------------------
// The canary: an unrelated subscriber that must keep receiving events.
// ---------------------------------------------------------------------------

/// What the canary saw.
#[derive(Debug)]
struct CanaryReport {
    delivered: usize,
    max_latency: Duration,
    failure: Option<String>,
}

/// A thread that publishes to its own stream over its own keep-alive
/// connection every 50 ms and waits for each event on its own subscription.
struct Canary {
    stop: Arc<AtomicBool>,
    delivered: Arc<AtomicUsize>,
    handle: thread::JoinHandle<CanaryReport>,
}

impl Canary {
    /// Starts once both connections are established (they count against
    /// connection limits: two connections from `src`).
    fn start(addr: SocketAddr, src: Ipv4Addr, stream: &str) -> Canary {
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(AtomicUsize::new(0));
        let sock = connect_from(src, addr, None).expect("canary connect");
        let mut sub = Sse::on(sock, &format!("/events?stream={stream}"), "");
        assert_eq!(sub.status(), 200, "{}", sub.head);
        let mut publ = conn_from(src, addr);
        let (stop2, delivered2, stream) = (stop.clone(), delivered.clone(), stream.to_string());
        let handle = thread::spawn(move || {
            let mut max_latency = Duration::ZERO;
            let mut n = 0usize;
            let hard_stop = Instant::now() + Duration::from_secs(600);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < hard_stop {
                let body = format!("canary-{n}");
                let t0 = Instant::now();
                let req = format!(
                    "POST /events?stream={stream} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                publ.send(req.as_bytes());
                let r = publ.response();
                if r.status != 200 {
                    return CanaryReport {
                        delivered: n,
                        max_latency,
                        failure: Some(format!("publish {n}: {} {}", r.status, r.text())),
                    };
                }
                match sub.next_event(Duration::from_secs(10)) {
                    Some(e) if e.data() == body => {}
                    other => {
                        return CanaryReport {
                            delivered: n,
                            max_latency,
                            failure: Some(format!("event {n}: got {other:?}")),
                        }
                    }
                }
                max_latency = max_latency.max(t0.elapsed());
                n += 1;
                delivered2.store(n, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(50));
            }
            CanaryReport {
                delivered: n,
                max_latency,
                failure: None,
            }
        });
        Canary {
            stop,
            delivered,
            handle,
        }
    }

    /// Waits until the canary has delivered `more` events beyond now
    /// (proof it is flowing at this point of the test).
    fn wait_more(&self, more: usize) {
        let target = self.delivered.load(Ordering::SeqCst) + more;
        assert!(
            wait_until(Duration::from_secs(20), || self
                .delivered
                .load(Ordering::SeqCst)
                >= target),
            "canary stalled at {} events",
            self.delivered.load(Ordering::SeqCst)
        );
    }

    /// Stops the canary and asserts it delivered at least `min` events with
    /// no round trip slower than `max_latency`.
    fn finish(self, min: usize, max_latency: Duration) -> CanaryReport {
        // Still flowing now: let it reach `min` (bounded) before stopping.
        wait_until(Duration::from_secs(20), || {
            self.delivered.load(Ordering::SeqCst) >= min || self.handle.is_finished()
        });
        self.stop.store(true, Ordering::SeqCst);
        let r = self.handle.join().expect("canary thread");
        println!(
            "canary: {} events, slowest round trip {:?}",
            r.delivered, r.max_latency
        );
        assert!(r.failure.is_none(), "canary failed: {r:?}");
        assert!(r.delivered >= min, "canary delivered too few: {r:?}");
        assert!(
            r.max_latency <= max_latency,
            "canary round trip too slow: {r:?}"
        );
        r
    }
}

// ---------------------------------------------------------------------------
// 1. Admission control and fd exhaustion.
// ---------------------------------------------------------------------------

/// Connects without writing and reads everything until the server closes.
fn rejected_connection(src: Ipv4Addr, addr: SocketAddr) -> Response {
    let mut s = connect_from(src, addr, None).expect("connect");
    let (bytes, eof) = read_to_end_within(&mut s, T);
    assert!(
        eof,
        "rejected connection not closed: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    let (r, used) = parse_response(&bytes)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&bytes)));
    assert_eq!(used, bytes.len(), "bytes after the 503");
    r
}

#[test]
fn admission_max_connections_503_with_retry_after() {
    let mut s = Server::start(&["--heartbeat", "0", "--max-connections", "6"]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let mut st = conn_from(LOCAL, s.addr);
    // Canary (2) + stats (1) + 3 idle = 6 = the cap.
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| connect_from(LOCAL, s.addr, None).unwrap())
        .collect();
    assert!(
        wait_until(T, || num(&stats_on(&mut st), &["connections", "total"])
            >= 6),
        "server did not accept 6"
    );
    for i in 0..3 {
        let r = rejected_connection(LOCAL, s.addr);
        assert_json_error(&r, 503, "over --max-connections");
        assert_eq!(r.header("retry-after").as_deref(), Some("1"), "{}", r.head);
        assert!(r.json()["error"]
            .as_str()
            .unwrap()
            .contains("max-connections"));
        // Also from another address: the global cap applies to everyone.
        if i == 0 {
            let r = rejected_connection(Ipv4Addr::new(127, 0, 0, 2), s.addr);
            assert_json_error(&r, 503, "over --max-connections from 127.0.0.2");
        }
    }
    canary.wait_more(3);
    let j = stats_on(&mut st);
    assert_eq!(rejected(&j, "over_capacity"), 4, "{j}");
    assert_eq!(num(&j, &["connections", "total"]), 6);
    // A client that writes its request at once gets the 503 or a close,
    // never a hang and never a 200; /healthz alone is answered past the
    // cap (a small reserve of connections), so monitoring sees the truth.
    {
        let mut c = connect_from(LOCAL, s.addr, None).unwrap();
        let _ = c.write_all(b"GET /streams HTTP/1.1\r\nHost: t\r\n\r\n");
        let (bytes, eof) = read_to_end_within(&mut c, T);
        assert!(eof, "eager client at capacity: no close");
        if !bytes.is_empty() {
            let (r, _) = parse_response(&bytes).expect("a whole response");
            assert_json_error(&r, 503, "eager client at capacity");
        }
        let mut c = connect_from(LOCAL, s.addr, None).unwrap();
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        let (bytes, eof) = read_to_end_within(&mut c, T);
        assert!(eof, "health check at capacity: no close");
        let (r, _) = parse_response(&bytes).expect("a whole response");
        assert_eq!(r.status, 200, "health check at capacity");
    }
    // Freeing a slot admits the next one.
    drop(idle);
    assert!(
        wait_until(T, || num(&stats_on(&mut st), &["connections", "total"])
            <= 3),
        "closed connections not freed"
    );
    let r = get(s.addr, "/healthz");
    assert_eq!(r.status, 200);
    canary.finish(5, Duration::from_secs(2));
    assert_alive(&mut s);
}

#[test]
fn admission_per_ip_limit_counts_addresses_separately() {
    let mut s = Server::start(&["--heartbeat", "0", "--max-connections-per-ip", "3"]);
    let two = Ipv4Addr::new(127, 0, 0, 2);
    let three = Ipv4Addr::new(127, 0, 0, 3);
    // The canary and the stats connection come from 127.0.0.3.
    let canary = Canary::start(s.addr, three, "canary");
    let mut st = conn_from(three, s.addr);
    let from_one: Vec<TcpStream> = (0..3)
        .map(|_| connect_from(LOCAL, s.addr, None).unwrap())
        .collect();
    assert!(
        wait_until(T, || num(&stats_on(&mut st), &["connections", "total"])
            >= 6),
        "server did not accept 6"
    );
    let r = rejected_connection(LOCAL, s.addr);
    assert_json_error(&r, 503, "4th connection from 127.0.0.1");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"), "{}", r.head);
    assert!(r.json()["error"].as_str().unwrap().contains("per-ip"));
    // 127.0.0.2 has its own budget of three: all served.
    let mut from_two: Vec<Conn> = (0..3).map(|_| conn_from(two, s.addr)).collect();
    for c in &mut from_two {
        let r = c.request(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(r.status, 200, "127.0.0.2 refused: {}", r.text());
    }
    // ...and its fourth is refused too.
    let r = rejected_connection(two, s.addr);
    assert_json_error(&r, 503, "4th connection from 127.0.0.2");
    // A fourth from 127.0.0.3 (which holds three) likewise.
    let r = rejected_connection(three, s.addr);
    assert_json_error(&r, 503, "4th connection from 127.0.0.3");
    canary.wait_more(3);
    let j = stats_on(&mut st);
    assert_eq!(rejected(&j, "per_ip_limit"), 3, "{j}");
    assert_eq!(rejected(&j, "over_capacity"), 0, "{j}");
    assert_eq!(num(&j, &["connections", "peers"]), 3, "{j}");
    assert_eq!(num(&j, &["connections", "total"]), 9, "{j}");
    // Closing 127.0.0.1's connections gives its budget back.
    drop(from_one);
    assert!(
        wait_until(T, || num(&stats_on(&mut st), &["connections", "peers"])
            == 2),
        "peer entry not released"
    );
    let mut again = conn_from(LOCAL, s.addr);
    assert_eq!(
        again
            .request(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .status,
        200
    );
    canary.finish(5, Duration::from_secs(2));
    assert_alive(&mut s);
}

/// Starts a non-blocking connect to `dst`; the socket is returned at once
/// (the handshake may still be in flight).
fn connect_nonblocking(dst: SocketAddr) -> TcpStream {
    let SocketAddr::V4(dst) = dst else {
        panic!("IPv4 only")
    };
    // SAFETY: plain socket calls on an fd we own; `from_raw_fd` takes it.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let s = TcpStream::from_raw_fd(fd);
        let da = sockaddr(dst);
        let r = libc::connect(
            fd,
            &da as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let e = io::Error::last_os_error();
        assert!(
            r == 0 || e.raw_os_error() == Some(libc::EINPROGRESS),
            "connect: {e}"
        );
        s
    }
}

#[test]
fn connect_burst_is_absorbed_without_syn_retransmits() {
    const N: usize = 1000;
    let mut s = Server::start(&["--heartbeat", "0", "--max-connections-per-ip", "5000"]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let overflows0 = listen_overflows();
    // A reconnect storm: every client connects in the same instant.
    let t0 = Instant::now();
    let socks: Vec<TcpStream> = (0..N).map(|_| connect_nonblocking(s.addr)).collect();
    let mut groups: Vec<Vec<TcpStream>> = (0..4).map(|_| Vec::new()).collect();
    for (i, c) in socks.into_iter().enumerate() {
        groups[i % 4].push(c);
    }
    let workers: Vec<_> = groups
        .into_iter()
        .map(|group| {
            thread::spawn(move || -> Vec<Result<Duration, String>> {
                let mut group = group;
                for c in &mut group {
                    c.set_nonblocking(false).unwrap();
                    // A blocking write waits for the handshake to finish.
                    let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
                }
                group
                    .iter_mut()
                    .map(|c| {
                        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                        let mut b = [0u8; 256];
                        match c.read(&mut b) {
                            Ok(n) if b[..n].starts_with(b"HTTP/1.1 200 OK\r\n") => Ok(t0.elapsed()),
                            Ok(n) => Err(format!("{:?}", String::from_utf8_lossy(&b[..n]))),
                            Err(e) => Err(e.to_string()),
                        }
                    })
                    .collect()
            })
        })
        .collect();
    let mut times = Vec::new();
    for w in workers {
        for r in w.join().unwrap() {
            times.push(r.unwrap_or_else(|e| panic!("a burst connection failed: {e}")));
        }
    }
    times.sort();
    let overflows = listen_overflows().saturating_sub(overflows0);
    println!(
        "connect burst: {N} connections answered, median {:?}, p99 {:?}, slowest {:?}; listen queue overflows (host-wide) {overflows}",
        times[N / 2],
        times[N * 99 / 100],
        times[N - 1]
    );
    // A SYN or SYN-ACK dropped for a full listen queue costs a 1 s
    // retransmission; a backlog that holds the burst costs none.
    assert!(
        times[N - 1] < Duration::from_millis(900),
        "slowest of {N} burst connections answered after {:?} ({overflows} listen overflows)",
        times[N - 1]
    );
    let j = stats(s.addr);
    assert!(num(&j, &["connections", "accepted"]) >= N as u64 + 3, "{j}");
    canary.finish(5, Duration::from_secs(2));
    assert_alive(&mut s);
}

#[test]
fn fd_exhaustion_pauses_accept_without_spinning_then_recovers() {
    const NOFILE: u64 = 64;
    let mut s = spawn_with_nofile(
        &[
            "--heartbeat",
            "0",
            "--max-connections",
            "1000",
            "--header-timeout",
            "60",
        ],
        Some(NOFILE),
    );
    let pid = s.child.id();
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let mut st = conn_from(LOCAL, s.addr);
    let before = stats_on(&mut st);
    assert_eq!(num(&before, &["accept_errors"]), 0);
    // Open connections until the server stops accepting: those past the
    // limit sit in the listen backlog (connect succeeds, nobody answers).
    let mut held = Vec::new();
    for _ in 0..150 {
        match TcpStream::connect_timeout(&s.addr, Duration::from_secs(1)) {
            Ok(c) => held.push(c),
            Err(_) => break,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut j = stats_on(&mut st);
    while num(&j, &["accept_paused"]) < 2 {
        assert!(Instant::now() < deadline, "accept never paused: {j}");
        thread::sleep(Duration::from_millis(50));
        j = stats_on(&mut st);
    }
    let open = num(&j, &["connections", "total"]);
    println!(
        "fd exhaustion: RLIMIT_NOFILE {NOFILE}, {} client connections, server holds {open}, accept_errors {}, accept_paused {}",
        held.len(),
        num(&j, &["accept_errors"]),
        num(&j, &["accept_paused"])
    );
    assert!(open < NOFILE, "{j}");
    assert!(num(&j, &["accept_errors"]) >= 2, "{j}");
    // The loop must not spin while the backlog waits.
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    canary.wait_more(5);
    thread::sleep(Duration::from_secs(1).saturating_sub(t0.elapsed()));
    let cpu = cpu_secs(pid) - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let j2 = stats_on(&mut st);
    println!(
        "fd exhaustion: server CPU {cpu:.3} s over {wall:.3} s wall while paused; accept_paused {} -> {}",
        num(&j, &["accept_paused"]),
        num(&j2, &["accept_paused"])
    );
    assert!(
        cpu < 0.5 * wall,
        "server used {cpu:.3} s CPU in {wall:.3} s: spinning on EMFILE?"
    );
    assert!(
        num(&j2, &["accept_paused"]) > num(&j, &["accept_paused"]),
        "accept retries stopped: {j2}"
    );
    // A new connection can not be served now...
    {
        let mut c = TcpStream::connect_timeout(&s.addr, Duration::from_secs(1)).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 64];
        assert!(
            c.read(&mut b).is_err(),
            "served a connection past the fd limit?"
        );
    }
    // ...but once the clients go, the server accepts again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = TcpStream::connect_timeout(&s.addr, Duration::from_secs(1))
            .and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(1)))?;
                c.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
                let mut v = Vec::new();
                let _ = c.read_to_end(&mut v);
                Ok(v)
            })
            .is_ok_and(|v| v.starts_with(b"HTTP/1.1 200 OK\r\n") && v.ends_with(b"ok"));
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "server never accepted again");
        thread::sleep(Duration::from_millis(100));
    }
    canary.finish(10, Duration::from_secs(2));
    assert!(
        wait_until(Duration::from_secs(10), || {
            num(&stats_on(&mut st), &["connections", "total"]) <= 1
        }),
        "connections not released"
    );
    assert_alive(&mut s);
}

// ---------------------------------------------------------------------------
// 2. Timeouts.
// ---------------------------------------------------------------------------

#[test]
fn slowloris_headers_get_408_within_header_timeout() {
    let mut s = Server::start(&["--heartbeat", "0", "--header-timeout", "2"]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let before = stats(s.addr);
    const N: usize = 20;
    let payload = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(200)
    );
    let mut socks: Vec<TcpStream> = (0..N)
        .map(|_| {
            let c = TcpStream::connect(s.addr).unwrap();
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect();
    let t0 = Instant::now();
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); N];
    let mut answered: Vec<Option<Duration>> = vec![None; N];
    let mut eof: Vec<bool> = vec![false; N];
    let mut sent = 0usize;
    // One byte per connection every 100 ms, until all are answered and closed.
    while eof.iter().any(|e| !e) && t0.elapsed() < Duration::from_secs(10) {
        for (i, c) in socks.iter_mut().enumerate() {
            if answered[i].is_none() && sent < payload.len() {
                let _ = c.write(&payload.as_bytes()[sent..sent + 1]);
            }
            let mut b = [0u8; 4096];
            loop {
                match c.read(&mut b) {
                    Ok(0) => {
                        eof[i] = true;
                        break;
                    }
                    Ok(n) => {
                        got[i].extend_from_slice(&b[..n]);
                        answered[i].get_or_insert(t0.elapsed());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        eof[i] = true;
                        break;
                    }
                }
            }
        }
        sent += 1;
        thread::sleep(Duration::from_millis(100));
    }
    assert!(sent < payload.len(), "the slow request completed");
    for i in 0..N {
        let when = answered[i].unwrap_or_else(|| panic!("connection {i} never answered"));
        assert!(eof[i], "connection {i} not closed after 408");
        let (r, used) = parse_response(&got[i]).expect("whole response");
        assert_eq!(used, got[i].len());
        assert_json_error(&r, 408, "slowloris");
        assert_eq!(r.header("connection").as_deref(), Some("close"));
        assert!(
            when >= Duration::from_millis(1500) && when <= Duration::from_millis(4000),
            "408 after {when:?}, --header-timeout 2"
        );
    }
    println!(
        "slowloris: {N} connections answered 408 after {:?}..{:?}",
        answered.iter().flatten().min().unwrap(),
        answered.iter().flatten().max().unwrap()
    );
    let after = stats(s.addr);
    assert_eq!(
        rejected(&after, "timeout") - rejected(&before, "timeout"),
        N as u64,
        "{after}"
    );
    // Events published meanwhile reached the canary without delay.
    canary.finish(20, Duration::from_millis(1000));
    assert_alive(&mut s);
}

#[test]
fn slowloris_on_a_keepalive_connection_after_a_request() {
    let mut s = Server::start(&[
        "--heartbeat",
        "0",
        "--header-timeout",
        "2",
        "--idle-timeout",
        "30",
    ]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let mut c = Conn::open(s.addr);
    assert_eq!(
        c.request(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .status,
        200
    );
    // The second request starts with its first byte, then dribbles: its
    // deadline runs from that first byte and is never extended.
    let payload = format!(
        "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: {}",
        "a".repeat(200)
    );
    let sock = c.reader.get_mut();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t0 = Instant::now();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    for byte in payload.as_bytes() {
        if find(&got, b"\r\n\r\n").is_some() || t0.elapsed() > Duration::from_secs(8) {
            break;
        }
        let _ = sock.write(std::slice::from_ref(byte));
        match sock.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(_) => {}
        }
    }
    let when = t0.elapsed();
    let (rest, eof) = read_to_end_within(sock, T);
    got.extend_from_slice(&rest);
    assert!(eof, "not closed after 408");
    let (r, _) = parse_response(&got)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&got)));
    assert_json_error(&r, 408, "slow second request");
    assert!(
        when >= Duration::from_millis(1500) && when <= Duration::from_millis(4000),
        "408 after {when:?}"
    );
    println!("slowloris after keep-alive: 408 after {when:?}");
    assert_eq!(rejected(&stats(s.addr), "timeout"), 1);
    canary.finish(10, Duration::from_secs(1));
    assert_alive(&mut s);
}

#[test]
fn body_that_never_completes_gets_408() {
    let mut s = Server::start(&["--heartbeat", "0", "--header-timeout", "2"]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let mut c = TcpStream::connect(s.addr).unwrap();
    let t0 = Instant::now();
    c.write_all(b"POST /events?stream=body HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    // Dribble more body bytes: they must not extend the deadline.
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while t0.elapsed() < Duration::from_secs(8) && find(&got, b"\r\n\r\n").is_none() {
        let _ = c.write(b"x");
        match c.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(_) => {}
        }
    }
    let when = t0.elapsed();
    let (rest, eof) = read_to_end_within(&mut c, T);
    got.extend_from_slice(&rest);
    assert!(eof, "not closed after 408");
    let (r, _) = parse_response(&got)
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&got)));
    assert_json_error(&r, 408, "incomplete body");
    assert!(
        when >= Duration::from_millis(1500) && when <= Duration::from_millis(4000),
        "408 after {when:?}"
    );
    println!("body timeout: 408 after {when:?}");
    let st = stats(s.addr);
    assert_eq!(rejected(&st, "timeout"), 1, "{st}");
    assert_eq!(
        get(s.addr, "/streams/body").status,
        404,
        "half a body was published"
    );
    canary.finish(10, Duration::from_secs(1));
    assert_alive(&mut s);
}

/// Dribbles a chunked body of one-byte chunks in small writes, then ends
/// it; returns the bytes sent and the final answer.
fn dribble_chunked(addr: SocketAddr, until: Instant, max_bytes: usize) -> (usize, Vec<u8>) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    c.write_all(b"POST /events?stream=dribble HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let piece = b"1\r\nx\r\n".repeat(10);
    let mut sent = 0;
    while Instant::now() < until && sent + piece.len() <= max_bytes {
        if c.write_all(&piece).is_err() {
            break;
        }
        sent += piece.len();
        thread::sleep(Duration::from_micros(500));
    }
    let _ = c.write_all(b"0\r\n\r\n");
    let (bytes, _) = read_to_end_within(&mut c, Duration::from_secs(1));
    (sent, bytes)
}

#[test]
fn dribbled_chunked_body_does_not_stall_others() {
    let mut s = Server::start(&["--heartbeat", "0", "--header-timeout", "30"]);
    let pid = s.child.id();
    let canary = Canary::start(s.addr, LOCAL, "canary");
    canary.wait_more(2);
    let addr = s.addr;
    let cpu0 = cpu_secs(pid);
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(4);
    let attackers: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || dribble_chunked(addr, until, 600_000)))
        .collect();
    let results: Vec<(usize, Vec<u8>)> = attackers.into_iter().map(|h| h.join().unwrap()).collect();
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu0;
    let report = canary.finish(1, Duration::from_secs(60));
    println!(
        "chunked dribble: sent {:?} bytes in {wall:.1} s; server CPU {cpu:.2} s; canary slowest round trip {:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>(),
        report.max_latency
    );
    for (sent, answer) in &results {
        let (r, _) = parse_response(answer).unwrap_or_else(|| {
            panic!(
                "no answer after {sent} bytes: {:?}",
                String::from_utf8_lossy(answer)
            )
        });
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(
        report.max_latency < Duration::from_millis(800),
        "other connections stalled for {:?}",
        report.max_latency
    );
    assert!(
        cpu < 0.5 * wall,
        "server CPU {cpu:.2} s in {wall:.1} s for {} KiB of body",
        results.iter().map(|r| r.0).sum::<usize>() >> 10
    );
    assert_alive(&mut s);
}

#[test]
fn partial_request_bodies_cost_at_most_their_limit_each() {
    const N: usize = 50;
    const MAX_BODY: u64 = 1 << 20;
    let mut s = Server::start(&["--heartbeat", "0", "--header-timeout", "30"]);
    let pid = s.child.id();
    let canary = Canary::start(s.addr, LOCAL, "canary");
    canary.wait_more(2);
    let idle_rss = proc_status_bytes(pid, "VmRSS");
    let mut body = b"POST /events?stream=held HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    body.resize(body.len() + (1 << 20) - 1, b'h');
    // From 10 addresses, each within its share of the request budget (an
    // eighth, 8 MiB).
    let held: Vec<TcpStream> = (0..N)
        .map(|i| {
            let src = Ipv4Addr::new(127, 0, 2, (i % 10) as u8 + 1);
            let mut c = connect_from(src, s.addr, None).unwrap();
            c.write_all(&body).unwrap();
            c
        })
        .collect();
    // Wait until the server has read (nearly) all of it.
    assert!(
        wait_until(Duration::from_secs(20), || {
            proc_status_bytes(pid, "VmRSS") >= idle_rss + (N as u64 - 2) * MAX_BODY
        }),
        "server did not buffer the bodies"
    );
    canary.wait_more(3);
    let j = stats(s.addr);
    assert_eq!(num(&j, &["connections", "http"]), N as u64 + 2, "{j}");
    assert_eq!(
        get(s.addr, "/streams/held").status,
        404,
        "a partial body was published"
    );
    let hwm = proc_status_bytes(pid, "VmHWM");
    let per_conn = MAX_BODY + 8192 + (64 << 10);
    let bound = idle_rss + N as u64 * per_conn + 8 * MIB;
    println!(
        "partial bodies: {N} connections x 1 MiB - 1 byte held; RSS idle {:.1} MiB, peak {:.1} MiB, bound {:.1} MiB ({:.2} MiB per connection)",
        mib(idle_rss),
        mib(hwm),
        mib(bound),
        mib(hwm.saturating_sub(idle_rss)) / N as f64
    );
    assert!(hwm <= bound, "peak RSS {hwm} over {bound}");
    drop(held);
    let (ok, j) = poll_stats(s.addr, T, |st| num(st, &["connections", "total"]) == 3);
    assert!(ok, "{j}");
    let after = proc_status_bytes(pid, "VmRSS");
    println!("partial bodies: RSS after close {:.1} MiB", mib(after));
    assert!(after <= idle_rss + 8 * MIB, "memory not returned: {after}");
    canary.finish(10, Duration::from_secs(2));
    assert_alive(&mut s);
}

#[test]
fn idle_keepalive_closes_but_subscribers_stay() {
    let mut s = Server::start(&["--heartbeat", "0", "--idle-timeout", "1"]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let mut quiet = Sse::open(s.addr, "/events?stream=quiet", "");
    let before = stats(s.addr);
    let mut c = Conn::open(s.addr);
    assert_eq!(
        c.request(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .status,
        200
    );
    let t0 = Instant::now();
    let (bytes, eof) = read_to_end_within(c.reader.get_mut(), T);
    let when = t0.elapsed();
    assert!(eof, "idle keep-alive connection not closed");
    assert!(bytes.is_empty(), "idle close sent {bytes:?}");
    assert!(
        when >= Duration::from_millis(700) && when <= Duration::from_millis(3000),
        "idle close after {when:?}, --idle-timeout 1"
    );
    println!("idle timeout: closed after {when:?}");
    let after = stats(s.addr);
    assert!(
        num(&after, &["connections", "closed"]) > num(&before, &["connections", "closed"]),
        "{after}"
    );
    assert_eq!(
        num(&after, &["connections", "total"]),
        num(&before, &["connections", "total"]),
        "the idle connection is gone: {after}"
    );
    // A quiet subscriber (no heartbeat, nothing published) outlives it.
    thread::sleep(Duration::from_millis(1500));
    let id = publish(s.addr, "quiet", "still here");
    let e = quiet.next_event(T).expect("quiet subscriber was closed");
    assert_eq!(e.id.as_deref(), Some(id.as_str()));
    canary.finish(10, Duration::from_secs(1));
    assert_alive(&mut s);
}

/// A subscriber with a tiny receive window that reads its response head
/// and then nothing (until the test says so).
fn stalled_subscriber(addr: SocketAddr, stream: &str) -> Sse {
    let s = connect_from(LOCAL, addr, Some(4096)).unwrap();
    let sub = Sse::on(s, &format!("/events?stream={stream}"), "");
    assert_eq!(sub.status(), 200, "{}", sub.head);
    sub
}

/// Publishes `n` events of `size` bytes on one keep-alive connection.
fn publish_many(c: &mut Conn, stream: &str, n: usize, size: usize, tag: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let mut body = format!("{tag}{i}:").into_bytes();
        body.resize(size, b'x');
        let mut req = format!(
            "POST /events?stream={stream} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        let r = c.request(&req);
        assert_eq!(r.status, 200, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    ids
}

#[test]
fn write_stall_closes_subscriber_after_write_timeout() {
    let mut s = Server::start(&[
        "--heartbeat",
        "0",
        "--write-timeout",
        "1",
        "--max-pending-bytes",
        "1073741824",
    ]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let mut stalled = stalled_subscriber(s.addr, "stall");
    let mut pubc = Conn::open(s.addr);
    let mut st = Conn::open(s.addr);
    assert!(wait_until(T, || get(s.addr, "/streams/stall").json()
        ["subscribers"]
        == 1));
    // Publish until the subscriber's socket is full.
    let mut published = 0;
    loop {
        publish_many(&mut pubc, "stall", 16, 64 << 10, "s");
        published += 16;
        if num(&stats_on(&mut st), &["connections", "blocked"]) >= 1 {
            break;
        }
        assert!(published < 2000, "subscriber never blocked");
    }
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(10);
    let mut j = stats_on(&mut st);
    while num(&j, &["write_timeouts"]) < 1 {
        assert!(Instant::now() < deadline, "no write timeout: {j}");
        thread::sleep(Duration::from_millis(50));
        j = stats_on(&mut st);
    }
    let when = t0.elapsed();
    println!(
        "write stall: blocked after {published} x 64 KiB, closed {when:?} later (--write-timeout 1)"
    );
    assert!(when <= Duration::from_secs(4), "closed after {when:?}");
    assert_eq!(num(&j, &["slow_consumers_dropped"]), 0, "{j}");
    assert_eq!(num(&j, &["connections", "sse"]), 1, "only the canary: {j}");
    assert!(
        stalled.closed_within(Duration::from_secs(10)),
        "stalled subscriber's socket not closed"
    );
    canary.finish(10, Duration::from_secs(2));
    assert_alive(&mut s);
}

#[test]
fn pipelining_client_that_never_reads_is_paused_then_closed() {
    let mut s = Server::start(&["--heartbeat", "0", "--write-timeout", "1"]);
    let pid = s.child.id();
    let canary = Canary::start(s.addr, LOCAL, "canary");
    canary.wait_more(2);
    let idle_rss = proc_status_bytes(pid, "VmRSS");
    let mut c = connect_from(LOCAL, s.addr, Some(4096)).unwrap();
    c.set_nonblocking(true).unwrap();
    let batch = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(500);
    let t0 = Instant::now();
    let mut sent = 0usize;
    let mut reset = None;
    // Push requests for up to three seconds, as fast as the socket takes
    // them, until the server gives up on the connection.
    while t0.elapsed() < Duration::from_secs(3) {
        match c.write(&batch) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(10))
            }
            Err(e) => {
                reset = Some((t0.elapsed(), e.kind()));
                break;
            }
        }
    }
    let hwm = proc_status_bytes(pid, "VmHWM");
    let bound = idle_rss + 8 * MIB;
    println!(
        "pipelining: {:.1} MiB of requests accepted by the kernel, then {reset:?}; server RSS idle {:.1} MiB, peak {:.1} MiB (bound {:.1} MiB)",
        mib(sent as u64),
        mib(idle_rss),
        mib(hwm),
        mib(bound)
    );
    assert!(hwm <= bound, "peak RSS {hwm} over {bound}");
    // Its output stalls, so --write-timeout closes it.
    let (ok, j) = poll_stats(s.addr, Duration::from_secs(10), |st| {
        num(st, &["write_timeouts"]) >= 1
    });
    assert!(ok, "pipelining reader never timed out: {j}");
    c.set_nonblocking(false).unwrap();
    let (_, eof) = read_to_end_within(&mut c, Duration::from_secs(10));
    assert!(eof, "connection not closed");
    let (ok, j) = poll_stats(s.addr, T, |st| num(st, &["connections", "total"]) == 3);
    assert!(ok, "{j}");
    canary.finish(10, Duration::from_secs(2));
    assert_alive(&mut s);
}

#[test]
fn pipelined_requests_survive_output_backpressure() {
    const N: usize = 1000;
    let mut s = Server::start(&["--heartbeat", "0"]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    // A client with a small window pipelines N requests with large answers
    // (the demo page) and a last /healthz, and only then reads: the server's
    // output backs up and it must pause reading, not lose requests.
    let c = connect_from(LOCAL, s.addr, Some(4096)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut batch = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(N);
    batch.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut w = c.try_clone().unwrap();
    let writer = thread::spawn(move || w.write_all(&batch));
    canary.wait_more(3);
    let mut c = c;
    let mut buf = Vec::new();
    let mut got = 0usize;
    let mut last = None;
    let mut b = vec![0u8; 1 << 16];
    let deadline = Instant::now() + Duration::from_secs(30);
    while got < N + 1 {
        while let Some((r, used)) = parse_response(&buf) {
            assert_eq!(r.status, 200, "response {got}");
            buf.drain(..used);
            got += 1;
            last = Some(r);
        }
        if got == N + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "30 s and only {got} responses");
        match c.read(&mut b) {
            Ok(0) => panic!("closed after {got} of {} responses", N + 1),
            Ok(n) => buf.extend_from_slice(&b[..n]),
            Err(e) => panic!("stalled after {got} of {} responses ({e})", N + 1),
        }
    }
    let last = last.unwrap();
    assert_eq!((last.status, last.text().as_str()), (200, "ok"));
    writer.join().unwrap().unwrap();
    assert!(num(&stats(s.addr), &["requests"]) as usize > N + 1);
    canary.finish(5, Duration::from_secs(2));
    assert_alive(&mut s);
}

// ---------------------------------------------------------------------------
// 3. Slow consumers.
// ---------------------------------------------------------------------------

#[test]
fn slow_consumer_is_dropped_and_memory_stays_bounded() {
    const HISTORY_BYTES: u64 = 1 << 20;
    const MAX_PENDING: u64 = 256 << 10;
    let mut s = Server::start(&[
        "--heartbeat",
        "0",
        "--max-body",
        "131072",
        "--history-bytes",
        "1048576",
        "--max-pending-bytes",
        "262144",
    ]);
    let pid = s.child.id();
    let canary = Canary::start(s.addr, LOCAL, "canary");
    canary.wait_more(3);
    let mut pubc = Conn::open(s.addr);
    let mut st = Conn::open(s.addr);
    // Warm up the publish path so idle RSS includes its buffers.
    publish_many(&mut pubc, "warm", 20, 64 << 10, "w");
    let idle_rss = proc_status_bytes(pid, "VmRSS");
    let mut slow = stalled_subscriber(s.addr, "firehose");
    assert!(wait_until(T, || get(s.addr, "/streams/firehose").json()
        ["subscribers"]
        == 1));
    let t0 = Instant::now();
    let mut max_rss = 0u64;
    let mut dropped_after = None;
    const EVENTS: usize = 1600;
    let mut ids = Vec::new();
    for batch in 0..EVENTS / 50 {
        ids.extend(publish_many(&mut pubc, "firehose", 50, 64 << 10, "f"));
        let j = stats_on(&mut st);
        max_rss = max_rss.max(num(&j, &["rss_bytes"]));
        if dropped_after.is_none() && num(&j, &["slow_consumers_dropped"]) >= 1 {
            dropped_after = Some((batch + 1) * 50);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let hwm = proc_status_bytes(pid, "VmHWM");
    let bound = idle_rss + HISTORY_BYTES + MAX_PENDING + 8 * MIB;
    println!(
        "slow consumer: published {EVENTS} x 64 KiB = {:.0} MiB in {secs:.1} s; idle RSS {:.1} MiB, max sampled RSS {:.1} MiB, peak (VmHWM) {:.1} MiB, bound {:.1} MiB; dropped after <= {dropped_after:?} events",
        mib((EVENTS as u64) << 16),
        mib(idle_rss),
        mib(max_rss),
        mib(hwm),
        mib(bound)
    );
    assert!(hwm <= bound, "peak RSS {hwm} over bound {bound}");
    let j = stats_on(&mut st);
    assert_eq!(num(&j, &["slow_consumers_dropped"]), 1, "{j}");
    assert!(dropped_after.is_some());
    assert_eq!(num(&j, &["connections", "sse"]), 1, "only the canary: {j}");
    assert!(
        num(&j, &["history", "bytes"]) <= 2 * HISTORY_BYTES + (1 << 20),
        "{j}"
    );
    assert!(
        slow.closed_within(Duration::from_secs(10)),
        "slow consumer not disconnected"
    );
    // What it did receive lost nothing silently.
    let (n, last) = check_no_silent_loss(&mut slow, &ids);
    println!("slow consumer: got {n} events before the drop, the last {last}");
    canary.finish(10, Duration::from_secs(2));
    assert_alive(&mut s);
}

#[test]
fn fast_subscriber_gets_every_pipelined_publish_without_gap() {
    const N: usize = 3000; // --history is 1000
    let mut s = Server::start(&["--heartbeat", "0"]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let mut sub = Sse::open(s.addr, "/events?stream=pipe", "");
    let mut batch = Vec::new();
    for i in 0..N {
        let body = i.to_string();
        batch.extend_from_slice(
            format!(
                "POST /events?stream=pipe HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    let mut pubc = Conn::open(s.addr);
    let writer = {
        let mut w = pubc.reader.get_ref().try_clone().unwrap();
        thread::spawn(move || w.write_all(&batch).unwrap())
    };
    for i in 0..N {
        assert_eq!(pubc.response().status, 200, "publish {i}");
    }
    writer.join().unwrap();
    for i in 0..N {
        let e = sub
            .next_event(T)
            .unwrap_or_else(|| panic!("event {i} of {N} missing"));
        assert_eq!(
            (e.event.as_deref(), e.data()),
            (None, i.to_string()),
            "event {i} of {N} (an idle subscriber that reads everything)"
        );
    }
    assert_eq!(stats(s.addr)["gaps_sent"], 0);
    canary.finish(3, Duration::from_secs(2));
    assert_alive(&mut s);
}

/// Reads what a (closed) subscriber was sent and checks it lost nothing
/// silently: events of `ids` in order, starting with the first, where every
/// jump is announced by a `gap` naming the last id before it. Returns how
/// many events arrived and the last id.
fn check_no_silent_loss(sub: &mut Sse, ids: &[String]) -> (usize, String) {
    let mut pos: Option<usize> = None;
    let mut gap_from: Option<String> = None;
    let mut n = 0;
    while let Some(e) = sub.next_event(Duration::from_millis(200)) {
        if e.event.as_deref() == Some("gap") {
            let g: serde_json::Value = serde_json::from_str(&e.data()).unwrap();
            let from = g["last_event_id"].as_str().unwrap().to_string();
            match pos {
                Some(p) => assert_eq!(from, ids[p], "gap does not name the last delivered id"),
                // Before anything was delivered it names the subscription's
                // starting point, which precedes every event here.
                None => assert!(
                    from.parse::<u64>().unwrap() < ids[0].parse::<u64>().unwrap(),
                    "first gap names {from}, after the first event {}",
                    ids[0]
                ),
            }
            gap_from = Some(from);
            continue;
        }
        let id = e.id.clone().expect("event without id");
        let p = ids
            .iter()
            .position(|i| *i == id)
            .unwrap_or_else(|| panic!("unknown id {id}"));
        let expected = pos.map_or(0, |q| q + 1);
        assert!(
            p == expected || (p > expected && gap_from.is_some()),
            "event {n}: id #{p}, expected #{expected}, no gap announced"
        );
        gap_from = None;
        pos = Some(p);
        n += 1;
    }
    let last = pos.map(|p| ids[p].clone()).expect("nothing received");
    (n, last)
}

#[test]
fn many_stalled_subscribers_share_history_and_are_all_dropped() {
    const SUBS: usize = 50;
    let mut s = Server::start(&["--heartbeat", "0", "--max-body", "131072"]);
    let pid = s.child.id();
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let mut pubc = Conn::open(s.addr);
    let mut st = Conn::open(s.addr);
    publish_many(&mut pubc, "warm", 20, 64 << 10, "w");
    let idle_rss = proc_status_bytes(pid, "VmRSS");
    let mut subs: Vec<Sse> = (0..SUBS)
        .map(|_| stalled_subscriber(s.addr, "crowd"))
        .collect();
    let mut published = 0;
    while num(&stats_on(&mut st), &["slow_consumers_dropped"]) < SUBS as u64 {
        publish_many(&mut pubc, "crowd", 16, 64 << 10, "c");
        published += 16;
        assert!(published < 4000, "not all dropped: {}", stats_on(&mut st));
    }
    let hwm = proc_status_bytes(pid, "VmHWM");
    // Shared frames: the history once, plus at most one partly written
    // frame per subscriber, plus slack.
    let bound = idle_rss + (1 << 20) + SUBS as u64 * (65 << 10) + 8 * MIB;
    println!(
        "{SUBS} stalled subscribers: all dropped after {published} x 64 KiB; RSS idle {:.1} MiB, peak {:.1} MiB, bound {:.1} MiB",
        mib(idle_rss),
        mib(hwm),
        mib(bound)
    );
    assert!(hwm <= bound, "peak RSS {hwm} over {bound}");
    for (i, sub) in subs.iter_mut().enumerate() {
        assert!(sub.closed_within(T), "subscriber {i} not disconnected");
    }
    let j = stats_on(&mut st);
    assert_eq!(num(&j, &["connections", "sse"]), 1, "only the canary: {j}");
    canary.finish(10, Duration::from_secs(2));
    assert_alive(&mut s);
}

#[test]
fn sigterm_during_abuse_exits_zero_within_shutdown_timeout() {
    let mut s = Server::start(&[
        "--heartbeat",
        "0",
        "--shutdown-timeout",
        "2",
        "--max-pending-bytes",
        "1073741824",
    ]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    // A stalled subscriber with megabytes queued, a half-sent request, a
    // half-sent body and an idle keep-alive connection.
    let _stalled = stalled_subscriber(s.addr, "term");
    let mut pubc = Conn::open(s.addr);
    let mut st = Conn::open(s.addr);
    let mut n = 0;
    while num(&stats_on(&mut st), &["connections", "blocked"]) == 0 {
        publish_many(&mut pubc, "term", 16, 64 << 10, "t");
        n += 16;
        assert!(n < 2000, "never blocked");
    }
    let mut half_head = TcpStream::connect(s.addr).unwrap();
    half_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-")
        .unwrap();
    let mut half_body = TcpStream::connect(s.addr).unwrap();
    half_body
        .write_all(b"POST /events?stream=term HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let mut idle = Conn::open(s.addr);
    assert_eq!(
        idle.request(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .status,
        200
    );
    canary.finish(5, Duration::from_secs(2));
    let t0 = Instant::now();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = t0 + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        thread::sleep(Duration::from_millis(20));
    };
    let took = t0.elapsed();
    println!("SIGTERM under abuse: exited {status:?} after {took:?} (--shutdown-timeout 2)");
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_millis(3500), "took {took:?}");
    for (what, c) in [("half head", &mut half_head), ("half body", &mut half_body)] {
        let (_, eof) = read_to_end_within(c, T);
        assert!(eof, "{what} connection left open");
    }
    assert!(idle.closed_within(T));
}

#[test]
fn dropped_slow_consumer_resumes_from_its_last_event_id() {
    let mut s = Server::start(&[
        "--heartbeat",
        "0",
        "--history-bytes",
        "131072",
        "--max-pending-bytes",
        "65536",
    ]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let mut pubc = Conn::open(s.addr);
    let mut st = Conn::open(s.addr);
    let mut slow = stalled_subscriber(s.addr, "resume");
    assert!(wait_until(T, || get(s.addr, "/streams/resume").json()
        ["subscribers"]
        == 1));
    let mut ids = Vec::new();
    while num(&stats_on(&mut st), &["slow_consumers_dropped"]) == 0 {
        ids.extend(publish_many(&mut pubc, "resume", 16, 16 << 10, "r"));
        assert!(ids.len() < 20_000, "never dropped");
    }
    // A few more after the drop.
    ids.extend(publish_many(&mut pubc, "resume", 16, 16 << 10, "r"));
    assert!(
        slow.closed_within(Duration::from_secs(10)),
        "not disconnected"
    );
    let (n, last) = check_no_silent_loss(&mut slow, &ids);
    let mut again = Sse::open(
        s.addr,
        "/events?stream=resume",
        &format!("Last-Event-ID: {last}\r\n"),
    );
    let g = again.next_event(T).expect("gap");
    assert_eq!(g.event.as_deref(), Some("gap"), "{g:?}");
    let gv: serde_json::Value = serde_json::from_str(&g.data()).unwrap();
    assert_eq!(
        gv,
        serde_json::json!({"last_event_id": last, "streams": ["resume"]})
    );
    let retained = num(&get(s.addr, "/streams/resume").json(), &["history"]) as usize;
    for (i, id) in ids.iter().enumerate().skip(ids.len() - retained) {
        let e = again
            .next_event(T)
            .unwrap_or_else(|| panic!("retained event {i} of {} missing", ids.len()));
        assert_eq!(e.id.as_ref(), Some(id), "event {i}");
    }
    println!(
        "resume after drop: {} published, {n} received before the drop, gap, then the {retained} retained",
        ids.len()
    );
    // And live from there.
    let live = publish(s.addr, "resume", "live");
    assert_eq!(again.next_event(T).unwrap().id, Some(live));
    canary.finish(5, Duration::from_secs(2));
    assert_alive(&mut s);
}

#[test]
fn catch_up_larger_than_one_write_budget_is_delivered() {
    let mut s = Server::start(&["--heartbeat", "0", "--history-bytes", "8388608"]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let mut pubc = Conn::open(s.addr);
    // 1.25 MiB of history, then a resume from the first event.
    let ids = publish_many(&mut pubc, "big", 20, 64 << 10, "b");
    let mut sub = Sse::open(
        s.addr,
        "/events?stream=big",
        &format!("Last-Event-ID: {}\r\n", ids[0]),
    );
    for (i, id) in ids.iter().enumerate().skip(1) {
        let e = sub
            .next_event(T)
            .unwrap_or_else(|| panic!("catch-up stalled before event {i} of {}", ids.len()));
        assert_eq!(e.id.as_ref(), Some(id));
    }
    canary.finish(3, Duration::from_secs(1));
    assert_alive(&mut s);
}

#[test]
fn overtaken_subscriber_gets_gap_then_oldest_retained_in_order() {
    const HISTORY: usize = 20;
    let mut s = Server::start(&[
        "--heartbeat",
        "0",
        "--history",
        "20",
        "--history-bytes",
        "104857600",
        "--max-pending-bytes",
        "1073741824",
    ]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let mut lagging = stalled_subscriber(s.addr, "gappy");
    let mut pubc = Conn::open(s.addr);
    let mut st = Conn::open(s.addr);
    assert!(wait_until(T, || get(s.addr, "/streams/gappy").json()
        ["subscribers"]
        == 1));
    let gaps_before = num(&stats_on(&mut st), &["gaps_sent"]);
    let mut ids = Vec::new();
    loop {
        ids.extend(publish_many(&mut pubc, "gappy", 16, 8 << 10, "g"));
        if num(&stats_on(&mut st), &["connections", "blocked"]) >= 1 {
            break;
        }
        assert!(ids.len() < 4000, "subscriber never blocked");
    }
    // Overtake it by more than the whole history.
    ids.extend(publish_many(&mut pubc, "gappy", 2 * HISTORY, 8 << 10, "g"));
    let j = stats_on(&mut st);
    assert_eq!(num(&j, &["slow_consumers_dropped"]), 0, "{j}");
    // Resume reading: a prefix of the events, a gap, then the retained tail.
    let mut got: Vec<Ev> = Vec::new();
    let mut gap_at = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() <= ids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = lagging.next_event(left).unwrap_or_else(|| {
            panic!(
                "stream ended after {} events (gap at {gap_at:?})",
                got.len()
            )
        });
        if e.event.as_deref() == Some("gap") {
            assert!(gap_at.is_none(), "two gaps");
            gap_at = Some(got.len());
        }
        let last = e.id.clone();
        got.push(e);
        if gap_at.is_some() && last.as_deref() == ids.last().map(String::as_str) {
            break;
        }
    }
    let gap_at = gap_at.expect("no gap event");
    let before: Vec<&str> = got[..gap_at]
        .iter()
        .map(|e| e.id.as_deref().unwrap())
        .collect();
    let after: Vec<&str> = got[gap_at + 1..]
        .iter()
        .map(|e| e.id.as_deref().unwrap())
        .collect();
    let ids_ref: Vec<&str> = ids.iter().map(String::as_str).collect();
    println!(
        "gap: {} published, {} delivered before the gap, {} after",
        ids.len(),
        before.len(),
        after.len()
    );
    assert_eq!(before, ids_ref[..before.len()], "prefix before the gap");
    let g = &got[gap_at];
    assert!(g.id.is_none(), "gap has an id: {g:?}");
    let gv: serde_json::Value = serde_json::from_str(&g.data()).unwrap();
    let expect_last = before.last().copied().unwrap_or("");
    assert_eq!(
        gv,
        serde_json::json!({"last_event_id": expect_last, "streams": ["gappy"]}),
        "gap data"
    );
    assert_eq!(
        after,
        ids_ref[ids.len() - HISTORY..],
        "after the gap: exactly the retained events, in id order"
    );
    let j = stats_on(&mut st);
    assert_eq!(num(&j, &["gaps_sent"]), gaps_before + 1, "{j}");
    // And it is live again.
    let live = publish(s.addr, "gappy", "live");
    let e = lagging.next_event(T).expect("live event after the gap");
    assert_eq!(e.id.as_deref(), Some(live.as_str()));
    canary.finish(10, Duration::from_secs(2));
    assert_alive(&mut s);
}

// ---------------------------------------------------------------------------
// 4. Hostile input.
// ---------------------------------------------------------------------------

/// A malformed request, its expected status, and whether the error ends
/// the connection (framing lost) or leaves it usable.
struct Bad {
    what: &'static str,
    raw: Vec<u8>,
    status: u16,
    closes: bool,
    reason: Option<&'static str>,
}

fn post_raw(path: &str, ctype: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

fn bad(what: &'static str, raw: &[u8], status: u16, closes: bool) -> Bad {
    let reason = match (status, closes) {
        (400, true) => Some("bad_request"),
        (413, _) => Some("body_too_large"),
        (414, _) => Some("uri_too_long"),
        (431, _) => Some("headers_too_large"),
        (505, _) => Some("bad_version"),
        _ => None,
    };
    Bad {
        what,
        raw: raw.to_vec(),
        status,
        closes,
        reason,
    }
}

#[test]
fn hostile_input_gets_the_right_status_and_json() {
    let mut s = Server::start(&[
        "--heartbeat",
        "0",
        "--max-body",
        "1024",
        "--max-header-bytes",
        "1024",
        "--max-streams-per-conn",
        "4",
        "--header-timeout",
        "2",
    ]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let before = stats(s.addr);
    let long_name = "n".repeat(129);
    // The request line alone, longer than --max-header-bytes and not yet
    // ended (see `long_request_line_in_a_whole_head_is_414` for the case
    // where the head is complete).
    let long_target = format!("GET /{}", "a".repeat(1100));
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(1100)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n",
        (0..100)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect::<String>()
    );
    let big_cl = "POST /events?stream=h HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 1025\r\n\r\n";
    let big_chunked = format!(
        "POST /events?stream=h HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n{}\r\n1\r\nz\r\n0\r\n\r\n",
        "y".repeat(1024)
    );
    let cases = vec![
        bad("bad request line", b"HELLO\r\n\r\n", 400, true),
        bad("bad request line 2", b"GET\r\n\r\n", 400, true),
        bad(
            "control byte in the target",
            b"GET /heal\x01thz HTTP/1.1\r\nHost: t\r\n\r\n",
            400,
            true,
        ),
        bad(
            "NUL in header",
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n",
            400,
            true,
        ),
        bad(
            "header line without a colon",
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nnocolon\r\n\r\n",
            400,
            true,
        ),
        bad(
            "bad chunk size",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            400,
            true,
        ),
        bad(
            "chunk extension",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\n\r\n",
            400,
            true,
        ),
        bad(
            "oversize chunk line",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n000000000000000000000000000000000000000005\r\nhello\r\n0\r\n\r\n",
            400,
            true,
        ),
        bad(
            "chunk data without CRLF",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            400,
            true,
        ),
        bad(
            "trailer",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
            400,
            true,
        ),
        bad(
            "Content-Length and Transfer-Encoding",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            400,
            true,
        ),
        bad(
            "duplicate differing Content-Length",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
            true,
        ),
        bad(
            "negative Content-Length",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
            400,
            true,
        ),
        bad(
            "Content-Length with a plus",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello",
            400,
            true,
        ),
        bad(
            "chunked on HTTP/1.0",
            b"POST /events?stream=h HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            400,
            true,
        ),
        bad("body over --max-body", big_cl.as_bytes(), 413, true),
        bad(
            "huge Content-Length",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
            413,
            true,
        ),
        bad(
            "chunked body over --max-body",
            big_chunked.as_bytes(),
            413,
            true,
        ),
        bad(
            "request line over --max-header-bytes",
            long_target.as_bytes(),
            414,
            true,
        ),
        bad("header over --max-header-bytes", long_header.as_bytes(), 431, true),
        bad("too many headers", many_headers.as_bytes(), 431, true),
        bad("HTTP/2.0", b"GET /healthz HTTP/2.0\r\n\r\n", 505, true),
        bad("HTTP/3.1", b"GET /healthz HTTP/3.1\r\n\r\n", 505, true),
        bad("HTTP/1.2", b"GET /healthz HTTP/1.2\r\n\r\n", 505, true),
        bad(
            "Transfer-Encoding gzip",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
            true,
        ),
        // Errors that leave framing intact: the connection stays usable.
        bad(
            "invalid UTF-8 body",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n\xc3\x28\xff",
            400,
            false,
        ),
        bad(
            "NUL in event data",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\na\0b",
            400,
            false,
        ),
        bad(
            "event type with a newline",
            b"POST /events?stream=h&event=a%0Ab HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
            400,
            false,
        ),
        bad(
            "event type with a colon",
            b"POST /events?stream=h&event=a:b HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
            400,
            false,
        ),
        bad(
            "event type too long",
            format!(
                "POST /events?stream=h&event={} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
                "e".repeat(65)
            )
            .as_bytes(),
            400,
            false,
        ),
        bad(
            "absurd retry",
            b"POST /events?stream=h&retry=99999999999 HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
            400,
            false,
        ),
        bad(
            "negative retry in JSON",
            &post_raw("/events?stream=h", "application/json", br#"{"data":"x","retry":-1}"#),
            400,
            false,
        ),
        bad(
            "absurd retry in JSON",
            &post_raw(
                "/events?stream=h",
                "application/json",
                br#"{"data":"x","retry":1e300}"#,
            ),
            400,
            false,
        ),
        bad(
            "over-long stream name (subscribe)",
            format!("GET /events?stream={long_name} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
            400,
            false,
        ),
        bad(
            "over-long stream name (publish)",
            format!(
                "POST /events?stream={long_name} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx"
            )
            .as_bytes(),
            400,
            false,
        ),
        bad(
            "stream name with a newline",
            b"GET /events?stream=a%0Ab HTTP/1.1\r\nHost: t\r\n\r\n",
            400,
            false,
        ),
        bad(
            "too many streams per connection",
            b"GET /events?stream=a&stream=b&stream=c&stream=d&stream=e HTTP/1.1\r\nHost: t\r\n\r\n",
            400,
            false,
        ),
        bad(
            "invalid JSON",
            b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{nope",
            400,
            false,
        ),
        bad("unknown path", b"GET /no/such/path HTTP/1.1\r\nHost: t\r\n\r\n", 404, false),
        bad(
            "wrong method",
            b"PUT /events?stream=h HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
            405,
            false,
        ),
        bad(
            "wrong method on /healthz",
            b"DELETE /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            405,
            false,
        ),
    ];
    for c in &cases {
        let mut conn = Conn::open(s.addr);
        conn.send(&c.raw);
        let r = conn.response();
        assert_json_error(&r, c.status, c.what);
        if c.status == 405 {
            assert!(r.header("allow").is_some(), "{}: no Allow", c.what);
        }
        if c.closes {
            assert_eq!(
                r.header("connection").as_deref(),
                Some("close"),
                "{}: {}",
                c.what,
                r.head
            );
            let (rest, eof) = read_to_end_within(conn.reader.get_mut(), T);
            assert!(
                eof,
                "{}: connection left open after a framing error",
                c.what
            );
            assert!(
                conn.reader.buffer().is_empty() && rest.is_empty(),
                "{}: bytes after the error response: {:?}",
                c.what,
                String::from_utf8_lossy(&rest)
            );
        } else {
            assert!(r.header("connection").is_none(), "{}: {}", c.what, r.head);
            let ok = conn.request(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
            assert_eq!(
                (ok.status, ok.text().as_str()),
                (200, "ok"),
                "{}: connection unusable after the error",
                c.what
            );
        }
    }
    // A body over --max-body that is actually sent is refused early and
    // the rest discarded, without the answer being lost to a reset.
    {
        let mut c = TcpStream::connect(s.addr).unwrap();
        let mut req = b"POST /events?stream=h HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 2097152\r\n\r\n".to_vec();
        req.resize(req.len() + (2 << 20), b'q');
        let _ = c.write_all(&req);
        let (bytes, eof) = read_to_end_within(&mut c, T);
        assert!(eof);
        let (r, _) = parse_response(&bytes)
            .unwrap_or_else(|| panic!("no 413: {:?}", String::from_utf8_lossy(&bytes)));
        assert_json_error(&r, 413, "2 MiB body sent");
    }
    // 408 for a request that stops half way.
    {
        let mut c = Conn::open(s.addr);
        c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n");
        let r = c.response();
        assert_json_error(&r, 408, "half a head");
        assert!(c.closed_within(T));
    }
    let after = stats(s.addr);
    for reason in [
        "bad_request",
        "body_too_large",
        "uri_too_long",
        "headers_too_large",
        "bad_version",
        "timeout",
        "bad_event",
    ] {
        let want = cases.iter().filter(|c| c.reason == Some(reason)).count() as u64;
        let moved = rejected(&after, reason) - rejected(&before, reason);
        assert!(
            moved >= want.max(1),
            "rejected.{reason} moved by {moved}, expected >= {want}: {after}"
        );
    }
    assert_eq!(
        get(s.addr, "/streams/h").json()["published"]
            .as_u64()
            .unwrap_or(0),
        0,
        "a refused publish got through"
    );
    canary.finish(10, Duration::from_secs(2));
    assert_alive(&mut s);
}

#[test]
fn long_request_line_in_a_whole_head_is_414() {
    let mut s = Server::start(&["--heartbeat", "0", "--max-header-bytes", "1024"]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let raw = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(1100));
    let mut c = Conn::open(s.addr);
    let r = c.request(raw.as_bytes());
    assert_json_error(&r, 414, "long request line, whole head");
    assert!(c.closed_within(T));
    assert_eq!(rejected(&stats(s.addr), "uri_too_long"), 1);
    canary.finish(3, Duration::from_secs(1));
    assert_alive(&mut s);
}

#[test]
fn head_error_responses_have_no_body() {
    let mut s = Server::start(&["--heartbeat", "0"]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let mut c = Conn::open(s.addr);
    // Pipelined: the 404 to HEAD must be followed directly by the next response.
    c.send(b"HEAD /nowhere HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(io::BufRead::read_line(&mut c.reader, &mut line).unwrap() > 0);
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    let mut next = [0u8; 12];
    c.reader.read_exact(&mut next).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&next),
        "HTTP/1.1 200",
        "the response to HEAD had a body; head was {head:?}"
    );
    canary.finish(3, Duration::from_secs(1));
    assert_alive(&mut s);
}

// ---------------------------------------------------------------------------
// 6. Resource hygiene: 100,000 connect/disconnect cycles.
// ---------------------------------------------------------------------------

/// `TcpExt: ListenOverflows` of this network namespace (SYNs or ACKs
/// dropped because some listen queue was full).
fn listen_overflows() -> u64 {
    let s = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = s.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let n = names
            .split_whitespace()
            .position(|n| n == "ListenOverflows");
        if let Some(v) = n.and_then(|i| values.split_whitespace().nth(i)) {
            return v.parse().unwrap_or(0);
        }
    }
    0
}

/// One churn cycle of kind `kind` from `src`.
fn churn_once(addr: SocketAddr, src: Ipv4Addr, kind: u32, stream: &str) -> io::Result<()> {
    let mut c = connect_from(src, addr, None)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    // Most cycles end in a RST so neither side keeps TIME_WAIT.
    let rst = kind % 5 != 0;
    if rst {
        set_linger0(&c);
    }
    let mut b = [0u8; 4096];
    match kind % 4 {
        // Subscribe, wait for the head, drop.
        0 => {
            c.write_all(
                format!("GET /events?stream={stream} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
            )?;
            let mut got = Vec::new();
            while find(&got, b"\r\n\r\n").is_none() {
                let n = c.read(&mut b)?;
                if n == 0 {
                    return Err(io::Error::other("EOF before SSE head"));
                }
                got.extend_from_slice(&b[..n]);
            }
            if !got.starts_with(b"HTTP/1.1 200 OK\r\n") {
                return Err(io::Error::other(format!(
                    "subscribe: {:?}",
                    String::from_utf8_lossy(&got)
                )));
            }
        }
        // Publish, read the answer, drop.
        1 => {
            c.write_all(format!("POST /events?stream={stream} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nchurn").as_bytes())?;
            let mut got = Vec::new();
            while parse_response(&got).is_none() {
                let n = c.read(&mut b)?;
                if n == 0 {
                    return Err(io::Error::other("EOF before publish answer"));
                }
                got.extend_from_slice(&b[..n]);
            }
            if !got.starts_with(b"HTTP/1.1 200 OK\r\n") {
                return Err(io::Error::other(format!(
                    "publish: {:?}",
                    String::from_utf8_lossy(&got)
                )));
            }
        }
        // Half a request head, then a reset.
        2 => {
            set_linger0(&c);
            c.write_all(b"GET /events?stream=")?;
        }
        // Half a body, then drop.
        _ => {
            c.write_all(format!("POST /events?stream={stream} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nhalf a body").as_bytes())?;
        }
    }
    Ok(())
}

#[test]
fn hundred_thousand_connection_cycles_leak_nothing() {
    const CYCLES: usize = 100_000;
    const THREADS: usize = 4;
    const STREAMS: usize = 8;
    let mut s = Server::start(&[
        "--heartbeat",
        "0",
        "--history",
        "100",
        "--header-timeout",
        "2",
        "--idle-timeout",
        "2",
    ]);
    let pid = s.child.id();
    let addr = s.addr;
    let canary = Canary::start(addr, Ipv4Addr::new(127, 0, 0, 10), "canary");
    // Warm-up: create the streams and fill their histories, so what
    // follows only churns connections.
    let mut pubc = Conn::open(addr);
    for k in 0..STREAMS {
        publish_many(&mut pubc, &format!("churn{k}"), 120, 32, "warm");
    }
    drop(pubc);
    for i in 0..2000u32 {
        churn_once(addr, LOCAL, i, &format!("churn{}", i as usize % STREAMS))
            .expect("warm-up cycle");
    }
    let quiet = |st: &serde_json::Value| num(st, &["connections", "total"]) == 3;
    let (ok, base) = poll_stats(addr, Duration::from_secs(15), quiet);
    assert!(ok, "warm-up connections not released: {base}");
    let base_rss = num(&base, &["rss_bytes"]);
    let overflows0 = listen_overflows();
    let t0 = Instant::now();
    let failures = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let failures = failures.clone();
            thread::spawn(move || -> Option<String> {
                let mut first_err = None;
                for i in 0..CYCLES / THREADS {
                    if t0.elapsed() > Duration::from_secs(120) {
                        return Some(format!("thread {t}: over 120 s at cycle {i}"));
                    }
                    let src = Ipv4Addr::new(127, 0, 0, 2 + ((i + t) % 8) as u8);
                    let kind = (i * THREADS + t) as u32;
                    let stream = format!("churn{}", (i + t) % STREAMS);
                    if let Err(e) = churn_once(addr, src, kind, &stream) {
                        failures.fetch_add(1, Ordering::SeqCst);
                        first_err.get_or_insert_with(|| format!("thread {t} cycle {i}: {e}"));
                    }
                }
                first_err
            })
        })
        .collect();
    let errs: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().expect("churn thread"))
        .collect();
    let secs = t0.elapsed().as_secs_f64();
    let overflows = listen_overflows().saturating_sub(overflows0);
    let failed = failures.load(Ordering::SeqCst);
    println!(
        "churn: {CYCLES} cycles in {secs:.1} s, {failed} failed {errs:?}; listen queue overflows (host-wide) {overflows}"
    );
    assert!(secs < 120.0, "churn took {secs:.1} s");
    assert_eq!(failed, 0, "{errs:?}");
    canary.wait_more(3);
    // Everything goes back to where it was.
    let (ok, after) = poll_stats(addr, Duration::from_secs(20), |st| {
        quiet(st) && num(st, &["timers"]) <= num(&base, &["timers"])
    });
    let rss = num(&after, &["rss_bytes"]);
    let hwm = proc_status_bytes(pid, "VmHWM");
    println!(
        "churn: accepted {} closed {}; connections {} -> {}, timers {} -> {}, streams {} -> {}, RSS {:.2} MiB -> {:.2} MiB (peak {:.2} MiB)",
        num(&after, &["connections", "accepted"]),
        num(&after, &["connections", "closed"]),
        num(&base, &["connections", "total"]),
        num(&after, &["connections", "total"]),
        num(&base, &["timers"]),
        num(&after, &["timers"]),
        num(&base, &["streams"]),
        num(&after, &["streams"]),
        mib(base_rss),
        mib(rss),
        mib(hwm)
    );
    println!("churn: stats before {base}\nchurn: stats after {after}");
    assert!(ok, "not back to baseline: base {base}\nafter {after}");
    assert_eq!(after["streams"], base["streams"]);
    // Histories are at their caps (the canary's stream filled up meanwhile).
    assert!(
        num(&after, &["history", "events"]) <= (STREAMS as u64 + 1) * 100,
        "{after}"
    );
    assert_eq!(
        num(&after, &["connections", "accepted"]),
        num(&after, &["connections", "closed"]) + num(&after, &["connections", "total"]),
        "accepted = closed + open: {after}"
    );
    for k in 0..STREAMS {
        let st = get(addr, &format!("/streams/churn{k}")).json();
        assert_eq!(st["subscribers"], 0, "{st}");
    }
    assert_eq!(num(&after, &["connections", "peers"]), 2, "{after}");
    // Every cycle was accepted, except connections the kernel dropped from
    // a full listen queue before the server could accept them (the client
    // had already reset them).
    let accepted =
        num(&after, &["connections", "accepted"]) - num(&base, &["connections", "accepted"]);
    assert!(
        accepted + overflows >= CYCLES as u64,
        "accepted {accepted} + listen overflows {overflows} < {CYCLES}"
    );
    assert!(
        rss <= base_rss + 4 * MIB,
        "RSS grew from {base_rss} to {rss} over {CYCLES} cycles"
    );
    canary.finish(20, Duration::from_secs(3));
    assert_alive(&mut s);
}

/// Many peers each holding a large unfinished request cannot make the
/// server hold more than its request-buffer budget (64 MiB): past it the
/// next such request is refused with 503, and the memory is given back when
/// the peers go. The peers come from 16 addresses, each within its own
/// share (an eighth of the budget; `limits.rs` tests the share).
#[test]
fn unfinished_requests_share_one_buffer_budget() {
    let mut s = Server::start(&[
        "--heartbeat",
        "0",
        "--max-connections-per-ip",
        "5000",
        "--header-timeout",
        "60",
    ]);
    let canary = Canary::start(s.addr, LOCAL, "canary");
    let body_len = 1_000_000;
    let part = vec![b'x'; body_len - 1000];
    let mut conns = Vec::new();
    for i in 0..100 {
        let src = Ipv4Addr::new(127, 0, 1, (i % 16) as u8 + 1);
        let mut c = connect_from(src, s.addr, None).unwrap();
        let head = format!("POST /events?stream=big HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {body_len}\r\n\r\n");
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(&part).unwrap();
        conns.push(c);
    }
    // Every connection is either holding its request or was refused.
    let mut refused = 0;
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match c.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => break,
            }
        }
        if buf.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("Retry-After: 1\r\n"), "{text}");
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("unfinished requests"));
        refused += 1;
    }
    let st = stats(s.addr);
    let held = st["buffered_request_bytes"].as_u64().unwrap();
    assert!(
        refused >= 20,
        "only {refused} of 100 refused; {held} bytes held"
    );
    assert!(
        held <= (64 << 20) + 2 * body_len as u64,
        "{held} bytes held"
    );
    assert!(st["rejected"]["buffer_budget"].as_u64().unwrap() >= 20);
    assert_eq!(rejected(&st, "buffer_share_per_ip"), 0, "{st}");
    drop(conns);
    assert!(wait_until(Duration::from_secs(10), || stats(s.addr)
        ["buffered_request_bytes"]
        == 0));
    canary.finish(1, Duration::from_secs(2));
    assert_alive(&mut s);
}
