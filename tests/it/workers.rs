//! Several processes on one port: `--reuse-port` lets independent `ssed`
//! processes share a listen address; `--workers N` supervises N of them
//! (restart on death, SIGTERM drains all, exit codes). Real binaries, a
//! real redis-server for the `--redis` URL the supervisor requires
//! (skipped without one, `components::require`), and
//! worker pids read from `/stats` to see which process took a connection.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{bench, publish, wait_until, Sse, Ssed, T};
use crate::components::{require, REDIS_SERVER};

/// A redis-server on a free port, stopped on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// `None` (the test skips) when redis-server cannot run.
    fn start() -> Option<Redis> {
        let bin = require(&REDIS_SERVER)?;
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server");
        let r = Redis { child, port };
        assert!(
            wait_until(T, || r.ping()),
            "redis-server did not answer PING"
        );
        Some(r)
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut b = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"+PONG\r\n"
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An `ssed` process started with exactly `args`; SIGTERM then SIGKILL on drop.
struct Proc {
    child: Child,
    addr: SocketAddr,
}

fn spawn(args: &[&str]) -> Child {
    Ssed::bare().args(args).spawn()
}

impl Proc {
    fn start(args: &[&str]) -> Proc {
        let (child, addrs) = Ssed::bare().args(args).stderr_piped().launch();
        Proc {
            child,
            addr: addrs[0],
        }
    }

    fn signal(&mut self, sig: libc::c_int) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return; // reaped: its pid may belong to someone else now
        }
        // SAFETY: kill(2) on our unreaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    fn exit_within(&mut self, t: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + t;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(libc::SIGTERM);
        if self.exit_within(Duration::from_secs(10)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The pid of the process that answers `/stats` on a fresh connection, or
/// `None` if the connection or the request failed.
fn pid_of(addr: SocketAddr) -> Option<u32> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

/// Distinct pids seen over fresh connections until `want` of them (or
/// `tries` connections), panicking on a failed request.
fn pids(addr: SocketAddr, want: usize, tries: usize) -> BTreeSet<u32> {
    let mut seen = BTreeSet::new();
    for _ in 0..tries {
        seen.insert(pid_of(addr).expect("a request on the shared port failed"));
        if seen.len() >= want {
            break;
        }
    }
    seen
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 4, after the parenthesised command name.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the pid exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn reuse_port_lets_two_processes_share_a_port() {
    let a = Proc::start(&["--listen", "127.0.0.1:0", "--reuse-port"]);
    let port = a.addr.to_string();
    let b = Proc::start(&["--listen", &port, "--reuse-port"]);
    assert_eq!(a.addr, b.addr);
    let seen = pids(a.addr, 2, 400);
    let want: BTreeSet<u32> = [a.child.id(), b.child.id()].into();
    assert_eq!(seen, want, "the kernel spreads connections over both");

    // Without the flag the port is taken: a clear error, exit 1.
    let out = spawn(&["--listen", &port]).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {port}")), "{err}");
}

#[test]
fn reuse_port_on_ipv6() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    }
    let a = Proc::start(&["--listen", "[::1]:0", "--reuse-port"]);
    let port = a.addr.to_string();
    let b = Proc::start(&["--listen", &port, "--reuse-port"]);
    assert_eq!(a.addr, b.addr);
    assert_eq!(pids(a.addr, 2, 400).len(), 2);
}

#[test]
fn workers_without_redis_exit_2_with_the_reason() {
    for env in [false, true] {
        let ssed = if env {
            Ssed::new().env("SSED_WORKERS", "2")
        } else {
            Ssed::new().args(["--workers", "2"])
        };
        let out = ssed.output();
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("--workers") && err.contains("--redis"),
            "{err}"
        );
    }
}

#[test]
fn workers_share_one_port_and_a_killed_worker_comes_back() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let sup = Proc::start(&["--listen", "127.0.0.1:0", "--workers", "2", "--redis", &url]);
    let first = pids(sup.addr, 2, 400);
    assert_eq!(first.len(), 2, "both workers take connections");
    for p in &first {
        assert_ne!(*p, sup.child.id(), "the supervisor serves nothing");
        assert_eq!(parent_of(*p), Some(sup.child.id()));
    }

    let victim = *first.iter().next().unwrap();
    let survivor = *first.iter().nth(1).unwrap();
    // SAFETY: kill(2) on a worker pid we just read.
    unsafe {
        libc::kill(victim as libc::pid_t, libc::SIGKILL);
    }
    let mut now = BTreeSet::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            // Requests racing the dying listener may fail; that's the kernel.
            if let Some(p) = pid_of(sup.addr) {
                now.insert(p);
            }
            now.iter().any(|p| !first.contains(p))
        }),
        "no replacement worker took a connection; saw {now:?}"
    );
    assert!(!alive(victim) || parent_of(victim) != Some(sup.child.id()));
    // Settled: every request is served, by the survivor and the newcomer.
    let after = pids(sup.addr, 2, 400);
    assert_eq!(after.len(), 2);
    assert!(after.contains(&survivor), "{after:?}");
    for p in &after {
        assert_eq!(parent_of(*p), Some(sup.child.id()));
    }
    for _ in 0..50 {
        assert!(pid_of(sup.addr).is_some(), "the port keeps serving");
    }
}

#[test]
fn sigterm_to_the_supervisor_drains_every_worker_and_exits_0() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let mut sup = Proc::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--redis",
        &url,
        "--heartbeat",
        "0",
    ]);
    let workers = pids(sup.addr, 2, 400);
    assert_eq!(workers.len(), 2);
    let mut subs: Vec<Sse> = (0..8)
        .map(|_| Sse::open(sup.addr, "/events?stream=drain", ""))
        .collect();
    for s in &subs {
        assert_eq!(s.status(), 200);
    }
    sup.signal(libc::SIGTERM);
    for s in &mut subs {
        assert!(s.closed_within(T), "a subscriber was not ended");
    }
    let status = sup.exit_within(T).expect("supervisor did not exit");
    assert_eq!(status.code(), Some(0), "{status:?}");
    for p in workers {
        assert!(
            wait_until(T, || !alive(p)),
            "worker {p} outlived the supervisor"
        );
    }
    assert!(TcpStream::connect(sup.addr).is_err(), "port still open");
}

#[test]
fn a_worker_that_cannot_start_stops_the_supervisor_with_its_code() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let mut child = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--redis",
        &url,
        "--users",
        "/nonexistent/users.txt",
    ]);
    let deadline = Instant::now() + T;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("supervisor kept restarting a worker that cannot start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(2));
    let out = child.wait_with_output().unwrap();
    assert!(out.stdout.is_empty(), "announced a port nobody listens on");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("worker") && err.contains("failed to start"),
        "{err}"
    );
}

#[test]
fn a_crash_looping_worker_stops_the_supervisor_with_exit_1() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let mut sup = Proc::start(&["--listen", "127.0.0.1:0", "--workers", "2", "--redis", &url]);
    let mut known = pids(sup.addr, 2, 400);
    assert_eq!(known.len(), 2);
    let mut victim = *known.iter().next().unwrap();
    // Kill the same slot (its replacement each time) five times in quick
    // succession: the supervisor gives up instead of spinning.
    for round in 1..=5 {
        // SAFETY: kill(2) on a worker pid read from /stats.
        unsafe {
            libc::kill(victim as libc::pid_t, libc::SIGKILL);
        }
        if round == 5 {
            break;
        }
        let mut next = None;
        assert!(
            wait_until(Duration::from_secs(10), || {
                if let Some(p) = pid_of(sup.addr) {
                    if !known.contains(&p) {
                        next = Some(p);
                    }
                }
                next.is_some()
            }),
            "round {round}: no replacement"
        );
        victim = next.unwrap();
        known.insert(victim);
    }
    let status = sup
        .exit_within(Duration::from_secs(15))
        .expect("supervisor kept restarting a crash-looping worker");
    assert_eq!(status.code(), Some(1), "{status:?}");
    for p in known {
        assert!(wait_until(T, || !alive(p)), "worker {p} left behind");
    }
}

#[test]
fn a_worker_that_does_not_drain_makes_the_exit_code_non_zero() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let mut sup = Proc::start(&[
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--redis",
        &url,
        "--shutdown-timeout",
        "0.2",
    ]);
    let workers = pids(sup.addr, 2, 400);
    assert_eq!(workers.len(), 2);
    let stuck = *workers.iter().next().unwrap();
    // SAFETY: kill(2) on a worker pid read from /stats.
    unsafe {
        libc::kill(stuck as libc::pid_t, libc::SIGSTOP);
    }
    sup.signal(libc::SIGTERM);
    let status = sup
        .exit_within(Duration::from_secs(10))
        .expect("supervisor waited forever for a stopped worker");
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(
        wait_until(T, || !alive(stuck)),
        "the stuck worker was not killed"
    );
}

// Needs the Redis bus (branch `redis`): without it each worker has its own
// broker, so a publish taken by one worker never reaches the other's
// subscribers. The lead un-ignores this after merging.
#[test]
fn a_publish_on_either_worker_reaches_subscribers_on_both() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let sup = Proc::start(&["--listen", "127.0.0.1:0", "--workers", "2", "--redis", &url]);
    assert_eq!(pids(sup.addr, 2, 400).len(), 2);
    // 16 subscribers over two workers: all on one has odds 2^-15; checked below.
    let mut subs: Vec<Sse> = (0..16)
        .map(|_| Sse::open(sup.addr, "/events?stream=x", ""))
        .collect();
    let mut sse_by_pid = std::collections::BTreeMap::new();
    assert!(wait_until(T, || {
        let mut s = TcpStream::connect(sup.addr).unwrap();
        s.write_all(b"GET /stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut b = String::new();
        s.read_to_string(&mut b).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(b.split_once("\r\n\r\n").unwrap().1).unwrap();
        sse_by_pid.insert(
            v["pid"].as_u64().unwrap(),
            v["connections"]["sse"].as_u64().unwrap(),
        );
        sse_by_pid.len() == 2 && sse_by_pid.values().all(|n| *n >= 1)
    }));
    // Each publish lands on whichever worker the kernel picks.
    let ids: Vec<String> = (0..6)
        .map(|i| publish(sup.addr, "x", &format!("m{i}")))
        .collect();
    for s in &mut subs {
        for (i, id) in ids.iter().enumerate() {
            let ev = s.next_event(T).expect("event");
            assert_eq!(ev.data(), format!("m{i}"));
            assert_eq!(ev.id.as_deref(), Some(id.as_str()));
        }
    }
}

#[test]
fn supervisor_announces_once_every_worker_listens_and_bench_sums_them_all() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let mut child = spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "4",
        "--redis",
        &url,
        "--heartbeat",
        "0",
    ]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let a = line.trim().strip_prefix("listening on http://");
        addrs.push(a.unwrap_or_else(|| panic!("line {line:?}")).to_string());
    }
    let mut err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut err, &mut std::io::stderr());
    });
    let sup = Proc {
        addr: addrs[0].parse().unwrap(),
        child,
    };
    // Announced: all four workers already listen on both ports (each holds
    // its own reuse-port socket per address, in state LISTEN).
    let listeners = |port: &str| -> usize {
        let port: u16 = port.rsplit(':').next().unwrap().parse().unwrap();
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
        tcp.lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3
                    && f[3] == "0A"
                    && f[1].rsplit(':').next() == Some(&format!("{port:04X}"))
            })
            .count()
    };
    assert_eq!(listeners(&addrs[0]), 4);
    assert_eq!(listeners(&addrs[1]), 4);

    let r = bench(&[
        "density",
        "--url",
        &format!("http://{}/events?stream=w", addrs[0]),
        "--url",
        &format!("http://{}/events?stream=w", addrs[1]),
        "--n",
        "100",
        "--per-worker",
        "50",
        "--settle-ms",
        "200",
    ]);
    assert_eq!(r["connections"], 100, "{r}");
    assert_eq!(r["workers"], 2, "{r}");
    // The workers, found from the ports and summed; not the supervisor.
    assert_eq!(r["server_processes"], 4, "{r}");
    let found: Vec<u32> = r["server_pid"]
        .as_array()
        .unwrap_or_else(|| panic!("server_pid is not a list: {r}"))
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(found.len(), 4);
    for p in found {
        assert_eq!(parent_of(p), Some(sup.child.id()), "{r}");
    }
    assert!(r["rss_after_kb"].as_u64().unwrap() > 0, "{r}");
}
