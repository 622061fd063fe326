//! Scale-out through a real Redis (issue 12): each test starts its own
//! `redis-server` on a free port and two (or three) `ssed --redis` nodes,
//! and checks what crosses nodes on the wire: ids, data, types, resumes,
//! gaps, and what happens when Redis is killed, restarted empty, stopped,
//! or drops the pub/sub connections. Without redis-server (or redis-cli)
//! they are skipped (`components::require`), or fail under `CI=true`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::components::{require, REDIS_CLI, REDIS_SERVER};

const T: Duration = Duration::from_secs(10);

/// A redis-server child, killed on drop.
pub(crate) struct Redis {
    port: u16,
    child: Option<Child>,
    server: PathBuf,
    cli: PathBuf,
}

impl Redis {
    pub(crate) fn start() -> Option<Redis> {
        let server = require(&REDIS_SERVER)?;
        let cli = require(&REDIS_CLI)?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let mut r = Redis {
            port,
            child: None,
            server,
            cli,
        };
        r.spawn();
        Some(r)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.server)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        assert!(
            wait_until(T, || self.try_cli(&["PING"]).as_deref() == Some("PONG")),
            "redis-server did not start"
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.as_ref().unwrap().id() as libc::pid_t;
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(&self.cli)
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub(crate) fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped Redis must not outlive the test.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGCONT) };
        }
        self.kill();
    }
}

pub(crate) fn connected(addr: SocketAddr) -> bool {
    stats(addr)["redis"]["connected"] == true
}

/// A node on `r`, once its bus is up.
pub(crate) fn node(r: &Redis, extra: &[&str]) -> Server {
    let url = r.url();
    let mut args = vec!["--redis", url.as_str()];
    args.extend_from_slice(extra);
    let s = Server::start(&args);
    assert!(wait_until(T, || connected(s.addr)), "bus never came up");
    s
}

fn publish_typed(addr: SocketAddr, stream: &str, event: &str, data: &str) -> u64 {
    let r = post(
        addr,
        &format!("/events?stream={stream}&event={event}"),
        "text/plain",
        data,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["id"].as_str().unwrap().parse().unwrap()
}

fn pub_id(addr: SocketAddr, stream: &str, data: &str) -> u64 {
    publish(addr, stream, data).parse().unwrap()
}

/// Publishes, retrying while the node reconnects (503); the id.
fn publish_retrying(addr: SocketAddr, stream: &str, data: &str) -> u64 {
    let deadline = Instant::now() + T;
    loop {
        let r = post(
            addr,
            &format!("/events?stream={stream}"),
            "text/plain",
            data,
        );
        if r.status == 200 {
            return r.json()["id"].as_str().unwrap().parse().unwrap();
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "publishing never recovered");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A live subscriber, with its retry line read (so it is registered).
fn live(addr: SocketAddr, path: &str) -> Sse {
    resume(addr, path, None)
}

fn resume(addr: SocketAddr, path: &str, last: Option<u64>) -> Sse {
    let h = last.map_or(String::new(), |l| format!("Last-Event-ID: {l}\r\n"));
    let mut s = Sse::open(addr, path, &h);
    assert_eq!(s.status(), 200, "{}", s.head);
    let retry = s.next_block(T).expect("retry line");
    assert!(retry.retry.is_some(), "{retry:?}");
    s
}

fn next_id(s: &mut Sse) -> u64 {
    let e = s.next_event(T).expect("an event");
    assert_ne!(e.event.as_deref(), Some("gap"), "unexpected gap: {e:?}");
    e.id.expect("id").parse().unwrap()
}

#[test]
fn publish_on_a_reaches_b_exactly_and_ids_increase_across_nodes() {
    let Some(r) = Redis::start() else { return };
    let (a, b) = (node(&r, &[]), node(&r, &[]));
    let mut on_b = live(b.addr, "/events?stream=news");
    let mut on_a = live(a.addr, "/events?stream=news");
    let id = publish_typed(a.addr, "news", "update", "hello\nworld");
    for s in [&mut on_b, &mut on_a] {
        let e = s.next_event(T).expect("event");
        assert_eq!(e.id, Some(id.to_string()));
        assert_eq!(e.event.as_deref(), Some("update"));
        assert_eq!(e.data(), "hello\nworld");
    }
    // Alternating nodes: one order of ids, every event delivered once.
    let mut ids = vec![id];
    for i in 0..10 {
        let n = if i % 2 == 0 { b.addr } else { a.addr };
        ids.push(pub_id(n, "news", &format!("e{i}")));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for s in [&mut on_b, &mut on_a] {
        let got: Vec<u64> = (0..10).map(|_| next_id(s)).collect();
        assert_eq!(got, ids[1..]);
    }
    let st = stats(b.addr);
    assert_eq!(st["redis"]["received"], 11);
    assert_eq!(get(b.addr, "/healthz").text(), "ok");
    let m = get(a.addr, "/metrics").text();
    assert!(m.contains("ssed_redis_connected 1\n"), "{m}");
}

#[test]
fn resume_on_a_from_ids_published_on_b() {
    let Some(r) = Redis::start() else { return };
    let (a, b) = (node(&r, &[]), node(&r, &[]));
    let ids: Vec<u64> = (0..5)
        .map(|i| pub_id(b.addr, "one", &format!("o{i}")))
        .collect();
    // A never held "one": it loads it from Redis before going live.
    let mut s = resume(a.addr, "/events?stream=one", Some(ids[1]));
    let got: Vec<u64> = (0..3).map(|_| next_id(&mut s)).collect();
    assert_eq!(got, ids[2..]);
    // Live continues with no hole.
    let more = pub_id(b.addr, "one", "later");
    assert_eq!(next_id(&mut s), more);

    // Several streams, interleaved on B; the merge on A is in id order.
    let mut all = Vec::new();
    for i in 0..6 {
        let st = if i % 2 == 0 { "two" } else { "three" };
        all.push(pub_id(b.addr, st, &format!("m{i}")));
    }
    let mut s = resume(a.addr, "/events?stream=two&stream=three", Some(all[0]));
    let got: Vec<u64> = (0..5).map(|_| next_id(&mut s)).collect();
    assert_eq!(got, all[1..]);
    // Straight after a publish on B, before A may have heard of it.
    let x = pub_id(b.addr, "two", "fresh");
    let y = pub_id(b.addr, "two", "fresher");
    let mut s = resume(a.addr, "/events?stream=two", Some(x));
    assert_eq!(next_id(&mut s), y);
    assert_eq!(stats(a.addr)["redis"]["bus_gaps"], 0);
}

#[test]
fn history_trimmed_in_redis_gives_gap() {
    let Some(r) = Redis::start() else { return };
    let (a, b) = (node(&r, &[]), node(&r, &[]));
    let ids: Vec<u64> = (0..6)
        .map(|i| pub_id(b.addr, "trim", &format!("t{i}")))
        .collect();
    assert_eq!(r.cli(&["XTRIM", "ssed:s:trim", "MAXLEN", "2"]), "4");
    let mut s = resume(a.addr, "/events?stream=trim", Some(ids[0]));
    let g = s.next_event(T).expect("gap");
    assert_eq!(g.event.as_deref(), Some("gap"), "{g:?}");
    assert!(g.data().contains("trim"), "{g:?}");
    assert_eq!(next_id(&mut s), ids[4]);
    assert_eq!(next_id(&mut s), ids[5]);
    // From the newest trimmed-away predecessor's successor on, exact.
    let mut s = resume(a.addr, "/events?stream=trim", Some(ids[4]));
    assert_eq!(next_id(&mut s), ids[5]);
}

#[test]
fn redis_killed_publish_fails_fast_subscribers_keep_heartbeats() {
    let Some(mut r) = Redis::start() else { return };
    let hb = ["--heartbeat", "0.2"];
    let (a, b) = (node(&r, &hb), node(&r, &hb));
    let mut s = live(b.addr, "/events?stream=k");
    let id = pub_id(a.addr, "k", "before");
    assert_eq!(next_id(&mut s), id);
    r.kill();
    assert!(wait_until(T, || !connected(a.addr)));
    let t0 = Instant::now();
    let resp = post(a.addr, "/events?stream=k", "text/plain", "during");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.json()["error"], "redis unavailable");
    assert_eq!(resp.header("retry-after").as_deref(), Some("1"));
    // The subscriber stays connected and keeps getting heartbeats.
    for _ in 0..3 {
        let blk = s.next_block(Duration::from_secs(2)).expect("heartbeat");
        assert!(blk.comment, "{blk:?}");
    }
    let h = get(b.addr, "/healthz");
    assert_eq!(h.status, 200);
    assert!(h.text().contains("degraded"), "{}", h.text());
    assert_eq!(stats(a.addr)["redis"]["connected"], false);
}

#[test]
fn redis_back_empty_nodes_recover_old_ids_gap_no_id_reused() {
    let Some(mut r) = Redis::start() else { return };
    let (a, b) = (node(&r, &[]), node(&r, &[]));
    let mut s = live(b.addr, "/events?stream=e");
    let old: Vec<u64> = (0..3)
        .map(|i| pub_id(a.addr, "e", &format!("o{i}")))
        .collect();
    for &id in &old {
        assert_eq!(next_id(&mut s), id);
    }
    r.kill();
    r.spawn(); // empty: no save, no AOF
    assert!(wait_until(T, || connected(a.addr) && connected(b.addr)));
    // The live subscriber on B is told it may have missed events.
    let g = s.next_event(T).expect("gap");
    assert_eq!(g.event.as_deref(), Some("gap"), "{g:?}");
    let new = publish_retrying(a.addr, "e", "new");
    assert!(new > old[2], "id {new} reused or went back (old {old:?})");
    assert_eq!(next_id(&mut s), new);
    // Ids continue above what the nodes have seen, from B too.
    let newer = publish_retrying(b.addr, "e", "newer");
    assert!(newer > new);
    assert_eq!(next_id(&mut s), newer);
    // A resume from before the loss gets a gap, on either node and on a
    // node that never held the stream.
    let c = node(&r, &[]);
    for n in [a.addr, b.addr, c.addr] {
        let mut s = resume(n, "/events?stream=e", Some(old[0]));
        let g = s.next_event(T).expect("gap");
        assert_eq!(g.event.as_deref(), Some("gap"), "on {n}: {g:?}");
        assert_eq!(next_id(&mut s), new);
        assert_eq!(next_id(&mut s), newer);
    }
    // A resume from after the loss is exact.
    let mut s = resume(c.addr, "/events?stream=e", Some(new));
    assert_eq!(next_id(&mut s), newer);
}

#[test]
fn pubsub_killed_node_catches_up_without_loss() {
    let Some(r) = Redis::start() else { return };
    let (a, b) = (node(&r, &[]), node(&r, &[]));
    let mut s = live(b.addr, "/events?stream=p");
    let first = pub_id(a.addr, "p", "first");
    assert_eq!(next_id(&mut s), first);
    let before = stats(b.addr)["redis"]["reconnects"].as_u64().unwrap();
    let killed: u32 = r
        .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .parse()
        .unwrap();
    assert!(killed >= 2, "killed {killed}");
    let ids: Vec<u64> = (0..20)
        .map(|i| publish_retrying(a.addr, "p", &format!("x{i}")))
        .collect();
    let got: Vec<u64> = (0..20).map(|_| next_id(&mut s)).collect();
    assert_eq!(got, ids);
    assert!(wait_until(T, || stats(b.addr)["redis"]["reconnects"]
        .as_u64()
        .unwrap()
        > before));
    assert_eq!(stats(b.addr)["redis"]["bus_gaps"], 0);
}

/// A TCP proxy in front of Redis that can cut every connection through
/// it, hold new ones (nothing forwarded), and hold Redis's replies on
/// command connections (those that do not open with SUBSCRIBE).
struct HoldProxy {
    port: u16,
    flags: std::sync::Arc<HoldFlags>,
}

#[derive(Default)]
struct HoldFlags {
    /// Bytes from clients wait here.
    hold_all: std::sync::atomic::AtomicBool,
    /// Replies to command connections wait here.
    hold_cmd: std::sync::atomic::AtomicBool,
    socks: std::sync::Mutex<Vec<std::net::TcpStream>>,
}

impl HoldProxy {
    fn start(redis_port: u16) -> HoldProxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        use std::sync::Arc;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let flags = Arc::new(HoldFlags::default());
        let f = flags.clone();
        let wait = |b: &AtomicBool| {
            while b.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { return };
                let Ok(mut up) = std::net::TcpStream::connect(("127.0.0.1", redis_port)) else {
                    continue;
                };
                f.socks.lock().unwrap().push(c.try_clone().unwrap());
                f.socks.lock().unwrap().push(up.try_clone().unwrap());
                let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
                let is_sub = Arc::new(AtomicBool::new(false));
                let (f1, sub1) = (f.clone(), is_sub.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    let mut first = true;
                    while let Ok(n @ 1..) = c.read(&mut buf) {
                        wait(&f1.hold_all);
                        if first && buf[..n].windows(9).any(|w| w == b"SUBSCRIBE") {
                            sub1.store(true, SeqCst);
                        }
                        first = false;
                        if up.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = up.shutdown(std::net::Shutdown::Both);
                });
                let f2 = f.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n @ 1..) = up2.read(&mut buf) {
                        if !is_sub.load(SeqCst) {
                            wait(&f2.hold_cmd);
                        }
                        if c2.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        HoldProxy { port, flags }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn set(&self, all: bool, cmd: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        self.flags.hold_all.store(all, SeqCst);
        self.flags.hold_cmd.store(cmd, SeqCst);
    }

    fn cut(&self) {
        for s in self.flags.socks.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A node reconnecting gets its pub/sub connection subscribed before its
/// command connection is ready: an announcement arriving in between
/// names a predecessor it missed, and the fetch for it cannot go out yet.
/// That is no loss (Redis holds it all): the catch-up once up delivers
/// every event exactly, never a `gap`.
#[test]
fn announcement_before_the_bus_is_up_is_caught_up_without_a_gap() {
    let Some(r) = Redis::start() else { return };
    let proxy = HoldProxy::start(r.port);
    let a = node(&r, &[]);
    let url = proxy.url();
    let b = Server::start(&["--redis", &url, "--redis-timeout", "30"]);
    assert!(wait_until(T, || connected(b.addr)), "bus never came up");
    let mut s = live(b.addr, "/events?stream=h");
    let first = pub_id(a.addr, "h", "first");
    assert_eq!(next_id(&mut s), first);
    // B is cut off and cannot subscribe again: it misses `missed`.
    proxy.set(true, true);
    proxy.cut();
    assert!(wait_until(T, || !connected(b.addr)));
    let missed = pub_id(a.addr, "h", "missed");
    // B subscribes; its command connection's handshake waits.
    let subs = || r.cli(&["PUBSUB", "NUMSUB", "ssed:events"]);
    proxy.set(false, true);
    assert!(wait_until(T, || subs().ends_with("\n2")), "{}", subs());
    let received = stats(b.addr)["redis"]["received"].as_u64().unwrap();
    let next = pub_id(a.addr, "h", "next");
    assert!(wait_until(T, || stats(b.addr)["redis"]["received"]
        .as_u64()
        .unwrap()
        > received));
    assert!(!connected(b.addr), "the command connection is held");
    proxy.set(false, false);
    assert_eq!(next_id(&mut s), missed);
    assert_eq!(next_id(&mut s), next);
    assert_eq!(stats(b.addr)["redis"]["bus_gaps"], 0);
}

/// Issue 19 item 5: announcements a node buffers while a history fetch
/// runs are charged to the memory account's `bus` kind. Past its limit
/// (2 MiB with this `--memory-max`) the rest are dropped and the stream is
/// marked lost, so the subscriber waiting for that fetch gets `gap`, never
/// a silent hole; what comes after arrives as usual.
#[test]
fn announcements_buffered_past_the_bus_limit_are_marked_lost() {
    let Some(r) = Redis::start() else { return };
    let proxy = HoldProxy::start(r.port);
    let a = node(&r, &[]);
    let url = proxy.url();
    let history = 16u64 << 20;
    let max = (history + (4 << 20)).to_string();
    let h = history.to_string();
    let b = Server::start(&[
        "--redis",
        &url,
        "--redis-timeout",
        "30",
        "--history-total-bytes",
        &h,
        "--memory-max",
        &max,
    ]);
    assert!(wait_until(T, || connected(b.addr)), "bus never came up");
    assert_eq!(stats(b.addr)["memory"]["kinds"]["bus"]["limit"], 2 << 20);
    let first = pub_id(a.addr, "s", "first");
    // B's replies wait in the proxy: a resume's fetch goes out and its
    // answer is held, so the stream stays `Fetching` on B.
    proxy.set(false, true);
    let fetches = stats(b.addr)["redis"]["fetches"].as_u64().unwrap();
    let addr = b.addr;
    let reader = std::thread::spawn(move || {
        let h = format!("Last-Event-ID: {}\r\n", first - 1);
        let mut s = Sse::open(addr, "/events?stream=s", &h);
        assert_eq!(s.status(), 200, "{}", s.head);
        let mut seen = Vec::new();
        while let Some(e) = s.next_event(T) {
            let done = e.data() == "after";
            seen.push(e);
            if done {
                break;
            }
        }
        seen
    });
    assert!(wait_until(T, || stats(b.addr)["redis"]["fetches"]
        .as_u64()
        .unwrap()
        > fetches));
    // 12 announcements of 256 KiB (3 MiB) while the fetch is held.
    let received = stats(b.addr)["redis"]["received"].as_u64().unwrap();
    let big = "x".repeat(256 << 10);
    for _ in 0..12 {
        pub_id(a.addr, "s", &big);
    }
    assert!(wait_until(T, || stats(b.addr)["redis"]["received"]
        .as_u64()
        .unwrap()
        >= received + 12));
    let st = stats(b.addr);
    let bus = &st["memory"]["kinds"]["bus"];
    assert!(bus["refused"].as_u64().unwrap() >= 1, "{st}");
    // Within the limit, but for one read's worth of buffer (the read
    // buffer is reported at its most in the turn, after the charges).
    assert!(
        bus["used"].as_u64().unwrap() <= (2 << 20) + (512 << 10),
        "{st}"
    );
    assert!(bus["used"].as_u64().unwrap() >= 1 << 20, "{st}");
    proxy.set(false, false);
    assert!(wait_until(T, || stats(b.addr)["redis"]["bus_gaps"]
        .as_u64()
        .unwrap()
        >= 1));
    pub_id(a.addr, "s", "after");
    let seen = reader.join().unwrap();
    let kinds: Vec<Option<String>> = seen.iter().map(|e| e.event.clone()).collect();
    assert!(
        kinds.iter().any(|k| k.as_deref() == Some("gap")),
        "no gap: {kinds:?}"
    );
    assert_eq!(seen.last().unwrap().data(), "after");
    // Released once merged: nothing stays buffered.
    assert!(wait_until(T, || stats(b.addr)["memory"]["kinds"]["bus"]
        ["used"]
        .as_u64()
        .unwrap()
        < 1 << 20));
}

#[test]
fn script_flush_publishing_still_works() {
    let Some(r) = Redis::start() else { return };
    let (a, b) = (node(&r, &[]), node(&r, &[]));
    let mut s = live(b.addr, "/events?stream=f");
    assert_eq!(r.cli(&["SCRIPT", "FLUSH"]), "OK");
    let ids: Vec<u64> = (0..3)
        .map(|i| pub_id(a.addr, "f", &format!("f{i}")))
        .collect();
    let got: Vec<u64> = (0..3).map(|_| next_id(&mut s)).collect();
    assert_eq!(got, ids);
}

#[test]
fn sigstop_redis_times_out_with_503_then_recovers_on_sigcont() {
    let Some(r) = Redis::start() else { return };
    let args = ["--redis-timeout", "0.5", "--heartbeat", "0.3"];
    let (a, b) = (node(&r, &args), node(&r, &args));
    let mut s = live(b.addr, "/events?stream=z");
    r.signal(libc::SIGSTOP);
    let t0 = Instant::now();
    let resp = post(a.addr, "/events?stream=z", "text/plain", "stalled");
    let took = t0.elapsed();
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // While Redis is stopped, other connections are not stalled.
    let t0 = Instant::now();
    assert_eq!(get(a.addr, "/healthz").status, 200);
    assert!(t0.elapsed() < Duration::from_millis(500));
    let blk = s.next_block(Duration::from_secs(2)).expect("heartbeat");
    assert!(blk.comment, "{blk:?}");
    r.signal(libc::SIGCONT);
    assert!(wait_until(T, || connected(a.addr) && connected(b.addr)));
    let id = publish_retrying(a.addr, "z", "after");
    // The stalled publish may have gone through after all; either way, the
    // next id B delivers is real and nothing after it is missing.
    let mut last = next_id_or_gap(&mut s);
    while last < id {
        last = next_id_or_gap(&mut s);
    }
    assert_eq!(last, id);
}

fn next_id_or_gap(s: &mut Sse) -> u64 {
    loop {
        let e = s.next_event(T).expect("an event");
        if e.event.as_deref() != Some("gap") {
            return e.id.expect("id").parse().unwrap();
        }
    }
}

#[test]
fn member_notification_crosses_nodes() {
    let Some(r) = Redis::start() else { return };
    let (a, b) = (node(&r, &[]), node(&r, &[]));
    let mut dev = Sse::open(
        b.addr,
        "/notification/events",
        "Member-ID: m1\r\nDevice-Id: phone\r\n",
    );
    assert_eq!(dev.status(), 200);
    assert!(dev.next_block(T).unwrap().retry.is_some());
    let body = r#"{"event":{"type":"ORDER_SHIPPED","body":{"order":7}}}"#;
    let resp = request(
        a.addr,
        format!(
            "POST /notification/events HTTP/1.1\r\nHost: t\r\nMember-ID: m1\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let uuid = resp.json()["id"].as_str().unwrap().to_string();
    let e = dev.next_event(T).expect("notification on B");
    assert_eq!(e.id.as_deref(), Some(uuid.as_str()));
    assert_eq!(e.event.as_deref(), Some("ORDER_SHIPPED"));
    let data: serde_json::Value = serde_json::from_str(&e.data()).unwrap();
    assert_eq!(data["order"], 7);
    assert!(data["timestamp"].is_string());
}

#[test]
fn bad_redis_url_exits_2() {
    let out = Ssed::new().args(["--redis", "rediss://x:1"]).output();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Redis URL"));
}

/// The Redis host is looked up once, at start-up (never on a reconnect):
/// a name that does not resolve is a start-up error that names it.
#[test]
fn unresolvable_redis_host_exits_2_at_start() {
    let out = Ssed::new()
        .args(["--redis", "redis://ssed-test.invalid:6379"])
        .output();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot resolve Redis host ssed-test.invalid"),
        "{err}"
    );
}

#[test]
fn pipelined_requests_wait_for_the_deferred_publish_in_order() {
    let Some(r) = Redis::start() else { return };
    let a = node(&r, &[]);
    let mut c = Conn::open(a.addr);
    let post = |d: &str| {
        format!(
            "POST /events?stream=pl HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{d}",
            d.len()
        )
    };
    let wire = format!(
        "{}{}GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        post("one"),
        post("two")
    );
    c.send(wire.as_bytes());
    let one = c.response();
    let two = c.response();
    let third = c.response();
    assert_eq!((one.status, two.status, third.status), (200, 200, 200));
    let id = |r: &Response| r.json()["id"].as_str().unwrap().parse::<u64>().unwrap();
    assert!(id(&one) < id(&two));
    assert_eq!(third.text(), "ok");
}

#[test]
fn library_publisher_goes_through_redis() {
    let Some(r) = Redis::start() else { return };
    let b = node(&r, &[]);
    let cfg = ssed::Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        redis: Some(r.url()),
        ..ssed::Config::default()
    };
    let server = ssed::Server::bind(cfg).unwrap();
    let (addr, publisher) = (server.local_addrs()[0], server.publisher());
    let stop = server.shutdown_handle();
    let th = std::thread::spawn(move || server.run());
    assert!(wait_until(T, || connected(addr)));
    let mut s = live(b.addr, "/events?stream=lib");
    let id = publisher
        .publish("lib", ssed::Event::new("from the library"))
        .unwrap();
    let e = s.next_event(T).unwrap();
    assert_eq!(e.id, Some(id.to_string()));
    assert_eq!(e.data(), "from the library");
    drop(r);
    assert!(wait_until(T, || !connected(addr)));
    let err = publisher.publish("lib", ssed::Event::new("x")).unwrap_err();
    assert!(err.to_string().contains("redis unavailable"), "{err}");
    stop.shutdown();
    th.join().unwrap().unwrap();
}

#[cfg(feature = "mercure")]
#[test]
fn private_events_cross_nodes_only_to_subscribers_who_may_see_them() {
    use serde_json::json;
    use ssed::internals::auth::{mint_hs256, Key};
    let Some(r) = Redis::start() else { return };
    const KEY: &str = "ssed-redis-private-test-key-0123456789";
    let key = Key::new(KEY.as_bytes().to_vec()).unwrap();
    let sub = mint_hs256(&json!({"mercure": {"subscribe": ["priv"]}}), &key);
    let pubt = mint_hs256(&json!({"mercure": {"publish": ["*"]}}), &key);
    let a = node(&r, &["--jwt-key", KEY]);
    let b = node(&r, &["--jwt-key", KEY]);
    let mut anon = live(b.addr, "/events?stream=priv");
    let mut authed = live(b.addr, &format!("/events?stream=priv&authorization={sub}"));
    let send = |q: &str, data: &str| {
        let raw = format!(
            "POST /events?stream=priv{q} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {pubt}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{data}",
            data.len()
        );
        let resp = request(a.addr, raw.as_bytes());
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.json()["id"].as_str().unwrap().to_string()
    };
    let secret = send("&private=1", "secret");
    let public = send("", "public");
    // The authorised subscriber on the other node gets both, in order.
    let e = authed.next_event(T).expect("private event");
    assert_eq!(
        (e.id.as_deref(), e.data().as_str()),
        (Some(secret.as_str()), "secret")
    );
    let e = authed.next_event(T).expect("public event");
    assert_eq!(e.id.as_deref(), Some(public.as_str()));
    // The anonymous one: the public event first; the private one, and its
    // id, never.
    let e = anon.next_event(T).expect("public event");
    assert_eq!(
        (e.id.as_deref(), e.data().as_str()),
        (Some(public.as_str()), "public")
    );
    let wire = String::from_utf8_lossy(&anon.wire).into_owned();
    assert!(!wire.contains("secret"));
    assert!(!wire.contains(&secret));
    // Hub publishes cross the bus too: a private update with the
    // publisher's id reaches the authorised subscriber on the other node
    // under that id, and never the anonymous one.
    let hub = |form: &str| {
        let raw = format!(
            "POST /.well-known/mercure HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {pubt}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        );
        let resp = request(a.addr, raw.as_bytes());
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.text()
    };
    assert_eq!(
        hub("topic=priv&data=hub-secret&private=on&id=urn:h1"),
        "urn:h1"
    );
    let after = hub("topic=priv&data=hub-public");
    let e = authed.next_event(T).expect("private hub update");
    assert_eq!(
        (e.id.as_deref(), e.data().as_str()),
        (Some("urn:h1"), "hub-secret")
    );
    let e = anon.next_event(T).expect("public hub update");
    assert_eq!(
        (e.id.as_deref(), e.data().as_str()),
        (Some(after.as_str()), "hub-public")
    );
    let wire = String::from_utf8_lossy(&anon.wire).into_owned();
    assert!(!wire.contains("hub-secret") && !wire.contains("urn:h1"));
}

/// One publisher's replies: (data, status, id) in the order sent.
type Replies = Vec<(String, u16, Option<u64>)>;

/// Posts events `tag-0`, `tag-1`, ... to `query` on one keep-alive
/// connection, `depth` pipelined at a time, for up to `rounds` rounds or
/// until a round gets a non-200 (when `stop_on_error`); `acked` counts
/// every 200.
fn pipelined_publisher(
    addr: SocketAddr,
    query: &str,
    tag: &str,
    rounds: usize,
    depth: usize,
    stop_on_error: bool,
    acked: &std::sync::atomic::AtomicUsize,
) -> Replies {
    let mut c = Conn::open(addr);
    let mut out = Vec::new();
    for round in 0..rounds {
        let datas: Vec<String> = (0..depth)
            .map(|i| format!("{tag}-{}", round * depth + i))
            .collect();
        let wire: String = datas
            .iter()
            .map(|d| {
                format!(
                    "POST /events?{query} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{d}",
                    d.len()
                )
            })
            .collect();
        c.send(wire.as_bytes());
        let mut failed = false;
        for d in datas {
            let r = c.response();
            let id = (r.status == 200).then(|| {
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                r.json()["id"].as_str().unwrap().parse::<u64>().unwrap()
            });
            if r.status != 200 {
                assert_eq!(r.status, 503, "{}", r.text());
                assert!(r.text().contains("redis unavailable"), "{}", r.text());
                failed = true;
            }
            out.push((d, r.status, id));
        }
        if failed && stop_on_error {
            break;
        }
    }
    out
}

/// Reads `n` events from `s`: (id, data) each; panics on a gap.
fn read_events(s: &mut Sse, n: usize) -> Vec<(u64, String)> {
    (0..n)
        .map(|_| {
            let e = s.next_event(T).expect("an event");
            assert_ne!(e.event.as_deref(), Some("gap"), "unexpected gap: {e:?}");
            (e.id.clone().expect("id").parse().unwrap(), e.data())
        })
        .collect()
}

/// Each entry of Redis stream `P:s:name` as (id, prev).
fn redis_chain(r: &Redis, name: &str) -> Vec<(u64, u64)> {
    let out = r.cli(&["XRANGE", &format!("ssed:s:{name}"), "-", "+"]);
    // redis-cli prints id, then f, payload, p, prev, one per line.
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(5)
        .map(|e| {
            let id = e[0].trim_end_matches("-1").parse().unwrap();
            assert_eq!(e[3], "p", "{e:?}");
            (id, e[4].parse().unwrap())
        })
        .collect()
}

#[test]
fn concurrent_batched_publishes_from_two_nodes_keep_ids_chains_and_replies() {
    let Some(r) = Redis::start() else { return };
    let (a, b) = (node(&r, &[]), node(&r, &[]));
    let subs: Vec<(SocketAddr, &str, Sse)> = [a.addr, b.addr]
        .iter()
        .flat_map(|&n| {
            ["x", "y"]
                .into_iter()
                .map(move |s| (n, s, live(n, &format!("/events?stream={s}"))))
        })
        .collect();
    let acked = std::sync::atomic::AtomicUsize::new(0);
    // 12 connections on each node, 6 requests pipelined on each: every
    // loop turn gathers many publishes into one script call. Some go to
    // both streams.
    let (rounds, depth) = (8, 6);
    let queries = ["stream=x", "stream=y", "stream=x&stream=y"];
    let all: Vec<(&str, Replies)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..24)
            .map(|i| {
                let node = if i % 2 == 0 { a.addr } else { b.addr };
                let q = queries[i % 3];
                let acked = &acked;
                let h = sc.spawn(move || {
                    pipelined_publisher(node, q, &format!("p{i}"), rounds, depth, false, acked)
                });
                (q, h)
            })
            .collect();
        hs.into_iter()
            .map(|(q, h)| (q, h.join().unwrap()))
            .collect()
    });
    // Every publish got its own id; each connection's ids increase in the
    // order its requests were sent.
    let mut want: std::collections::HashMap<&str, Vec<(u64, String)>> = Default::default();
    let mut seen = std::collections::HashSet::new();
    for (q, replies) in &all {
        assert_eq!(replies.len(), rounds * depth);
        let ids: Vec<u64> = replies.iter().map(|x| x.2.expect("200")).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{q}: {ids:?}");
        for (data, _, id) in replies {
            assert!(seen.insert(id.unwrap()), "id {id:?} given twice");
            for s in ["x", "y"] {
                if q.contains(&format!("stream={s}")) {
                    want.entry(s).or_default().push((id.unwrap(), data.clone()));
                }
            }
        }
    }
    // Every node delivers each stream's events once, in id order, each
    // with the data of the publisher whose reply named that id.
    for (n, s, mut sse) in subs {
        let mut w = want[s].clone();
        w.sort();
        let got = read_events(&mut sse, w.len());
        assert_eq!(got, w, "stream {s} on {n}");
    }
    // In Redis each entry names the one before it.
    for s in ["x", "y"] {
        let chain = redis_chain(&r, s);
        assert_eq!(chain.len(), want[s].len());
        assert_eq!(chain[0].1, 0);
        for w in chain.windows(2) {
            assert_eq!(w[1].1, w[0].0, "stream {s}: broken chain at {w:?}");
        }
    }
    // Batches: fewer script calls than publishes.
    let calls: u64 = r
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("evalsha calls");
    let total = 24 * rounds * depth;
    assert!(
        calls < total as u64,
        "{calls} script calls for {total} publishes"
    );
}

#[test]
fn redis_killed_mid_batch_answers_real_ids_or_503_never_made_up() {
    let Some(mut r) = Redis::start() else { return };
    let (a, b) = (node(&r, &[]), node(&r, &[]));
    let mut subs = [
        live(a.addr, "/events?stream=k"),
        live(b.addr, "/events?stream=k"),
    ];
    let acked = std::sync::atomic::AtomicUsize::new(0);
    let all: Vec<Replies> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..16)
            .map(|i| {
                let node = if i % 2 == 0 { a.addr } else { b.addr };
                let acked = &acked;
                sc.spawn(move || {
                    pipelined_publisher(node, "stream=k", &format!("q{i}"), 2_000, 4, true, acked)
                })
            })
            .collect();
        // Kill it while batches are in flight.
        assert!(wait_until(T, || acked
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 400));
        r.kill();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut by_data = std::collections::HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for replies in &all {
        assert_eq!(
            replies.last().map(|x| x.1),
            Some(503),
            "every publisher saw the kill"
        );
        for (data, _, id) in replies {
            if let Some(id) = id {
                assert!(ids.insert(*id), "id {id} given twice");
            }
            by_data.insert(data.clone(), *id);
        }
    }
    r.spawn(); // empty
    assert!(wait_until(T, || connected(a.addr) && connected(b.addr)));
    let after = publish_retrying(a.addr, "k", "after");
    for (i, s) in subs.iter_mut().enumerate() {
        // Up to the marker: every event is one some publisher sent, with
        // the id its reply named (or its reply was a 503: outcome unknown);
        // ids increase; an acknowledged id not delivered needs a gap.
        let (mut last, mut gap, mut delivered) = (0, false, std::collections::HashSet::new());
        loop {
            let e = s.next_event(T).expect("an event");
            if e.event.as_deref() == Some("gap") {
                gap = true;
                continue;
            }
            let id: u64 = e.id.clone().unwrap().parse().unwrap();
            assert!(id > last, "node {i}: {id} after {last}");
            last = id;
            if e.data() == "after" {
                assert_eq!(id, after);
                break;
            }
            match by_data.get(&e.data()) {
                Some(Some(acked_id)) => assert_eq!(*acked_id, id, "node {i}: {}", e.data()),
                Some(None) => {} // answered 503 after Redis ran it
                None => panic!("node {i}: delivered unknown event {:?}", e.data()),
            }
            delivered.insert(id);
        }
        let missing = ids.iter().filter(|id| !delivered.contains(id)).count();
        assert!(
            missing == 0 || gap,
            "node {i}: {missing} acknowledged events neither delivered nor covered by a gap"
        );
    }
}

#[test]
fn resumes_of_a_stream_larger_than_a_fetch_page_never_drop_the_bus() {
    let Some(r) = Redis::start() else { return };
    let extra = ["--max-body", "2097152", "--history-bytes", "4194304"];
    let (a, b) = (node(&r, &extra), node(&r, &extra));
    // 20 MiB in Redis: more than one 16 MiB fetch page.
    let big = "b".repeat(1 << 20);
    let ids: Vec<u64> = (0..20).map(|_| pub_id(a.addr, "huge", &big)).collect();
    let before = stats(b.addr)["redis"]["fetches"].as_u64().unwrap();
    // Anonymous resumes on a node that never held the stream, while a
    // bystander publishes there: the bus stays up, every publish lands.
    let mut s = resume(b.addr, "/events?stream=huge", Some(ids[0]));
    let mut last = 0;
    while last != ids[19] {
        let e = s.next_event(T).expect("an event");
        if e.event.as_deref() != Some("gap") {
            last = e.id.clone().unwrap().parse().unwrap();
            assert_eq!(e.data().len(), big.len());
        }
    }
    for i in 0..3 {
        let mut again = resume(b.addr, "/events?stream=huge", Some(ids[0]));
        assert!(again.next_event(T).is_some());
        let by = post(b.addr, "/events?stream=by", "text/plain", &format!("b{i}"));
        assert_eq!(by.status, 200, "{}", by.text());
    }
    let st = stats(b.addr);
    assert_eq!(st["redis"]["reconnects"], 0, "{st}");
    assert_eq!(st["redis"]["connected"], true);
    let fetches = st["redis"]["fetches"].as_u64().unwrap() - before;
    assert!(fetches >= 2, "paged: {fetches} fetches");
}

/// Redis's clients other than the one asking: (last command, idle s).
fn redis_clients(r: &Redis) -> Vec<(String, u64)> {
    let list = r.cli(&["CLIENT", "LIST"]);
    let client = |l: &str| {
        let field = |k: &str| l.split(' ').find_map(|f| f.strip_prefix(k));
        let cmd = field("cmd=")?;
        let idle = field("idle=")?.parse().ok()?;
        (cmd != "client|list").then(|| (cmd.to_string(), idle))
    };
    list.lines().filter_map(client).collect()
}

/// PINGs Redis has answered (the harness's start-up checks included).
fn ping_calls(r: &Redis) -> u64 {
    let stats = r.cli(&["INFO", "commandstats"]);
    let calls = |l: &str| {
        l.strip_prefix("cmdstat_ping:calls=")?
            .split(',')
            .next()?
            .parse()
            .ok()
    };
    stats.lines().find_map(calls).unwrap_or(0)
}

fn voluntary_switches(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    s.lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

#[test]
fn an_idle_node_sends_redis_nothing_and_does_not_wake() {
    let Some(r) = Redis::start() else { return };
    let n = node(&r, &["--heartbeat", "0", "--redis-timeout", "0.5"]);
    let _s = live(n.addr, "/events?stream=quiet");
    let before = voluntary_switches(n.child.id());
    let pings = ping_calls(&r);
    // Redis sees no command on either of the node's connections for 3-4 s
    // (it counts whole seconds): 6+ timeouts, each of which used to bring a
    // pub/sub PING.
    let quiet = || {
        let c = redis_clients(&r);
        c.len() == 2 && c.iter().all(|(_, idle)| *idle >= 4)
    };
    assert!(wait_until(T, quiet), "{:?}", redis_clients(&r));
    // Not a wakeup per timeout either (a ping and its answer were two):
    // at most a one-off sweep of the subscriber's header deadline.
    let woke = voluntary_switches(n.child.id()) - before;
    assert!(woke <= 3, "{woke} wakeups while idle");
    assert_eq!(ping_calls(&r), pings);
    // Liveness is the kernel's instead: both of the node's sockets to
    // Redis (rem_address on its port, ESTABLISHED) carry the keepalive
    // timer (`tr` 2 in /proc/net/tcp).
    let rem = format!(":{:04X}", r.port);
    let tcp = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let timers: Vec<String> = tcp
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 5 && f[2].ends_with(&rem) && f[3] == "01")
        .map(|f| f[5].to_string())
        .collect();
    assert_eq!(timers.len(), 2, "{timers:?}");
    assert!(timers.iter().all(|t| t.starts_with("02:")), "{timers:?}");
}

#[test]
fn an_idle_node_notices_a_stopped_redis_at_the_next_publish() {
    let Some(r) = Redis::start() else { return };
    let n = node(&r, &["--heartbeat", "0", "--redis-timeout", "0.5"]);
    let mut s = live(n.addr, "/events?stream=h");
    let id = pub_id(n.addr, "h", "before");
    assert_eq!(next_id(&mut s), id);
    r.signal(libc::SIGSTOP);
    // Its kernel still answers keepalive, so nothing notices while idle:
    // the next publish does, by its deadline.
    let t0 = Instant::now();
    let resp = post(n.addr, "/events?stream=h", "text/plain", "stalled");
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.json()["error"], "redis unavailable");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(wait_until(T, || !connected(n.addr)));
    // Stopped still: refused without waiting on Redis.
    let resp = post(n.addr, "/events?stream=h", "text/plain", "refused");
    assert_eq!(resp.status, 503, "{}", resp.text());
    r.signal(libc::SIGCONT);
    assert!(wait_until(T, || connected(n.addr)));
    let id2 = publish_retrying(n.addr, "h", "after");
    let mut last = next_id_or_gap(&mut s);
    while last < id2 {
        last = next_id_or_gap(&mut s);
    }
    assert_eq!(last, id2);
}
