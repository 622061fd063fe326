//! Bus tests against a real `redis-server` that each test starts on a free
//! port and kills at the end. Without redis-server they are skipped with a
//! line and a summary at exit, or fail under `CI=true` (the integration
//! tests' component harness, included below). The loop waits on mio
//! events, not sleeps.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use super::client::Target;
use super::machine::{Bus, BusConfig, BusOutput};
use crate::bus::resp::{encode_command, Decoder, Value};
use crate::bus::{BusError, RedisUrl};

#[path = "../../../tests/it/components.rs"]
mod components;
use components::{require, REDIS_SERVER};

/// A redis-server child process, killed on drop.
struct Redis {
    port: u16,
    extra: Vec<String>,
    child: Option<Child>,
    bin: std::path::PathBuf,
}

impl Redis {
    fn start() -> Option<Redis> {
        Redis::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Option<Redis> {
        let bin = require(&REDIS_SERVER)?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let extra = extra
            .iter()
            .map(|s| s.replace("{port}", &port.to_string()))
            .collect();
        let mut r = Redis {
            port,
            extra,
            child: None,
            bin,
        };
        r.spawn();
        Some(r)
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let child = Command::new(&self.bin)
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let start = Instant::now();
        while self.try_cmd(&[b"PING"]).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

    fn url(&self) -> RedisUrl {
        format!("redis://127.0.0.1:{}", self.port).parse().unwrap()
    }

    /// One blocking command on a fresh connection (any reply counts).
    fn try_cmd(&self, args: &[&[u8]]) -> std::io::Result<Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut wire = Vec::new();
        encode_command(args, &mut wire);
        s.write_all(&wire)?;
        let (mut buf, mut dec) = (Vec::new(), Decoder::default());
        loop {
            let mut chunk = [0; 4096];
            let n = s.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some((v, _)) = dec.decode(&buf).unwrap() {
                return Ok(v);
            }
        }
    }

    fn cmd(&self, args: &[&[u8]]) -> Value {
        self.try_cmd(args).unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Buses on one mio poll; bus `i` has tokens `2i` and `2i + 1`.
struct Net {
    poll: Poll,
    events: Events,
    buses: Vec<Bus>,
    outs: Vec<VecDeque<BusOutput>>,
    start: Instant,
}

impl Net {
    fn new() -> Net {
        Net {
            poll: Poll::new().unwrap(),
            events: Events::with_capacity(64),
            buses: Vec::new(),
            outs: Vec::new(),
            start: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn add(&mut self, cfg: BusConfig) -> usize {
        let i = self.buses.len();
        let (reg, now) = (self.poll.registry(), self.now());
        self.buses
            .push(Bus::new(cfg, reg, Token(2 * i), Token(2 * i + 1), now));
        self.outs.push(VecDeque::new());
        i
    }

    /// One reactor turn: wait for events or the next deadline (<= 50 ms).
    fn turn(&mut self) {
        let now = self.now();
        let next = self.buses.iter().filter_map(Bus::next_deadline).min();
        let wait = next.map_or(50, |d| d.saturating_sub(now).min(50));
        self.poll
            .poll(&mut self.events, Some(Duration::from_millis(wait)))
            .unwrap();
        let now = self.now();
        let reg = self.poll.registry();
        for ev in self.events.iter() {
            self.buses[ev.token().0 / 2].on_event(reg, ev.token(), now);
        }
        for (bus, out) in self.buses.iter_mut().zip(&mut self.outs) {
            if bus.next_deadline().is_some_and(|d| d <= now) {
                bus.on_timer(reg, now);
            }
            out.extend(std::iter::from_fn(|| bus.poll()));
        }
    }

    /// Turns until bus `i` has output something matching `want` and takes
    /// the first such output (others stay queued), or panics after `ms`.
    fn wait(&mut self, i: usize, ms: u64, want: impl Fn(&BusOutput) -> bool) -> BusOutput {
        let deadline = self.now() + ms;
        loop {
            if let Some(at) = self.outs[i].iter().position(&want) {
                return self.outs[i].remove(at).unwrap();
            }
            assert!(self.now() < deadline, "bus {i}: timed out waiting");
            self.turn();
        }
    }

    fn run_for(&mut self, ms: u64) {
        let deadline = self.now() + ms;
        while self.now() < deadline {
            self.turn();
        }
    }

    fn up(&mut self, i: usize) {
        self.wait(i, 10_000, |o| matches!(o, BusOutput::Up { .. }));
    }

    fn published(&mut self, i: usize, req: u64) -> u64 {
        match self.wait(i, 5_000, |o| output_req(o) == Some(req)) {
            BusOutput::Published { id, .. } => id,
            other => panic!("req {req}: {other:?}"),
        }
    }

    fn publish(&mut self, i: usize, req: u64, streams: &[&str], payload: &[u8], floor: u64) -> u64 {
        let now = self.now();
        self.buses[i]
            .publish(req, streams, payload, floor, now)
            .unwrap();
        self.published(i, req)
    }

    fn fetch(&mut self, i: usize, req: u64, s: &str, after: u64, max: usize) -> BusOutput {
        let now = self.now();
        self.buses[i]
            .fetch(req, s, after, max, usize::MAX, now)
            .unwrap();
        self.wait(i, 5_000, |o| output_req(o) == Some(req))
    }
}

fn output_req(o: &BusOutput) -> Option<u64> {
    match o {
        BusOutput::Published { req, .. }
        | BusOutput::Failed { req, .. }
        | BusOutput::Fetched { req, .. } => Some(*req),
        _ => None,
    }
}

fn config(url: RedisUrl, timeout_ms: u64) -> BusConfig {
    BusConfig {
        prefix: "t".into(),
        command_timeout: Duration::from_millis(timeout_ms),
        ..resolved(url)
    }
}

fn resolved(url: RedisUrl) -> BusConfig {
    let target = Target::resolve(&url.addr).unwrap();
    BusConfig::new(url, target)
}

fn message(id: u64, streams: &[(&str, u64)], payload: &[u8]) -> BusOutput {
    BusOutput::Message {
        id,
        streams: streams.iter().map(|&(s, p)| (s.to_string(), p)).collect(),
        payload: payload.to_vec(),
    }
}

#[test]
fn publishes_fan_out_with_prev_chain_and_fetch() {
    let Some(redis) = Redis::start() else { return };
    let mut net = Net::new();
    let (a, b) = (
        net.add(config(redis.url(), 1000)),
        net.add(config(redis.url(), 1000)),
    );
    net.up(a);
    net.up(b);
    let bin = b"\x00\xff bin\r\n";
    let now = net.now();
    // Pipelined: three in flight at once.
    net.buses[a].publish(1, &["a"], b"p1", 0, now).unwrap();
    net.buses[a].publish(2, &["a"], b"p2", 0, now).unwrap();
    net.buses[a].publish(3, &["a", "b"], bin, 0, now).unwrap();
    let (id1, id2, id3) = (
        net.published(a, 1),
        net.published(a, 2),
        net.published(a, 3),
    );
    assert!(id1 < id2 && id2 < id3, "{id1} {id2} {id3}");
    let floor = id3 + 1_000_000_000_000;
    let id4 = net.publish(a, 4, &["b"], b"p4", floor);
    assert_eq!(id4, floor + 1, "the floor wins over the clock");

    let want = [
        message(id1, &[("a", 0)], b"p1"),
        message(id2, &[("a", id1)], b"p2"),
        message(id3, &[("a", id2), ("b", 0)], bin),
        message(id4, &[("b", id3)], b"p4"),
    ];
    for w in &want {
        let got = net.wait(b, 5_000, |o| matches!(o, BusOutput::Message { .. }));
        assert_eq!(&got, w);
        // The publisher hears its own publishes too.
        assert_eq!(
            &net.wait(a, 5_000, |o| matches!(o, BusOutput::Message { .. })),
            w
        );
    }

    let got = net.fetch(b, 10, "a", id1, 10);
    let entries = vec![(id2, id1, b"p2".to_vec()), (id3, id2, bin.to_vec())];
    let first_retained = Some(id1);
    assert_eq!(
        got,
        BusOutput::Fetched {
            more: false,
            req: 10,
            entries,
            first_retained
        }
    );
    let got = net.fetch(b, 11, "a", 0, 1);
    let entries = vec![(id1, 0, b"p1".to_vec())];
    assert_eq!(
        got,
        BusOutput::Fetched {
            more: false,
            req: 11,
            entries,
            first_retained
        }
    );
    let got = net.fetch(b, 12, "a", id3, 10);
    assert_eq!(
        got,
        BusOutput::Fetched {
            more: false,
            req: 12,
            entries: vec![],
            first_retained
        }
    );
    let got = net.fetch(b, 13, "nothing", 0, 10);
    let (entries, first_retained) = (vec![], None);
    assert_eq!(
        got,
        BusOutput::Fetched {
            more: false,
            req: 13,
            entries,
            first_retained
        }
    );

    let now = net.now();
    assert!(matches!(
        net.buses[a].publish(5, &[], b"", 0, now),
        Err(BusError::Invalid(_))
    ));
    assert!(matches!(
        net.buses[a].publish(5, &["x", "x"], b"", 0, now),
        Err(BusError::Invalid(_))
    ));
    let (sa, sb) = (net.buses[a].status(), net.buses[b].status());
    assert!(sa.connected && sa.in_flight == 0 && sa.publishes == 4 && sa.avg_latency_us > 0);
    assert_eq!((sb.messages, sb.errors), (4, 0));
}

#[test]
fn large_payload_round_trips() {
    let Some(redis) = Redis::start() else { return };
    let mut net = Net::new();
    let a = net.add(config(redis.url(), 2000));
    net.up(a);
    let payload: Vec<u8> = (0..6 << 20).map(|i: u32| (i % 251) as u8).collect();
    let id = net.publish(a, 1, &["big"], &payload, 0);
    let want = message(id, &[("big", 0)], &payload);
    net.wait(a, 5_000, |o| *o == want);
    let got = net.fetch(a, 2, "big", 0, 10);
    let entries = vec![(id, 0, payload)];
    assert_eq!(
        got,
        BusOutput::Fetched {
            more: false,
            req: 2,
            entries,
            first_retained: Some(id)
        }
    );
}

#[test]
fn script_flush_falls_back_to_eval() {
    let Some(redis) = Redis::start() else { return };
    let mut net = Net::new();
    let a = net.add(config(redis.url(), 1000));
    net.up(a);
    let id1 = net.publish(a, 1, &["s"], b"x", 0);
    assert_eq!(
        redis.cmd(&[b"SCRIPT", b"FLUSH"]),
        Value::Simple(b"OK".to_vec())
    );
    let now = net.now();
    net.buses[a].publish(2, &["s"], b"y", 0, now).unwrap();
    net.buses[a].publish(3, &["s"], b"z", 0, now).unwrap();
    let (id2, id3) = (net.published(a, 2), net.published(a, 3));
    let id4 = net.publish(a, 4, &["s"], b"w", 0);
    let mut ids = [id1, id2, id3, id4];
    ids.sort();
    assert!(ids.windows(2).all(|w| w[0] < w[1]) && id1 == ids[0] && id4 == ids[3]);
    assert!(
        net.buses[a].status().connected,
        "NOSCRIPT must not reconnect"
    );
}

#[test]
fn killed_pubsub_connection_gives_down_then_up() {
    let Some(redis) = Redis::start() else { return };
    let mut net = Net::new();
    let a = net.add(config(redis.url(), 1000));
    net.up(a);
    let killed = redis.cmd(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]);
    assert_eq!(killed, Value::Int(1));
    net.wait(a, 5_000, |o| *o == BusOutput::Down);
    assert!(!net.buses[a].status().connected);
    net.up(a);
    net.publish(a, 1, &["s"], b"x", 0);
    assert!(net.buses[a].status().reconnects >= 1);
}

/// `Up` carries the last id any node had allocated once the subscription
/// was live (what may have been missed): 0 on an empty Redis, the newest
/// id for a bus that connects after others published, and on a reconnect
/// whatever was allocated while the bus was down; later ids are heard.
#[test]
fn up_carries_the_last_id_allocated_before_the_subscription_was_live() {
    let Some(redis) = Redis::start() else { return };
    let mut net = Net::new();
    let is_up = |o: &BusOutput| matches!(o, BusOutput::Up { .. });
    let a = net.add(config(redis.url(), 1000));
    assert_eq!(net.wait(a, 10_000, is_up), BusOutput::Up { last_id: 0 });
    let id1 = net.publish(a, 1, &["s"], b"x", 0);
    let id2 = net.publish(a, 2, &["t"], b"y", 0);
    let b = net.add(config(redis.url(), 1000));
    assert_eq!(net.wait(b, 10_000, is_up), BusOutput::Up { last_id: id2 });
    let id3 = net.publish(a, 3, &["s"], b"z", 0);
    let heard = net.wait(b, 5_000, |o| matches!(o, BusOutput::Message { .. }));
    assert_eq!(heard, message(id3, &[("s", id1)], b"z"));
    // Both lose their pub/sub connection; meanwhile an id is allocated
    // elsewhere (as a publish would), which neither hears.
    let killed = redis.cmd(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"]);
    assert_eq!(killed, Value::Int(2));
    let elsewhere = (id3 + 1_000).to_string();
    redis.cmd(&[b"SET", b"t:id", elsewhere.as_bytes()]);
    for i in [a, b] {
        net.wait(i, 5_000, |o| *o == BusOutput::Down);
        let up = net.wait(i, 10_000, is_up);
        assert_eq!(
            up,
            BusOutput::Up {
                last_id: id3 + 1_000
            },
            "bus {i}"
        );
    }
}

#[test]
fn redis_restart_fails_fast_then_recovers_above_the_floor() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let mut net = Net::new();
    let a = net.add(config(redis.url(), 1000));
    net.up(a);
    let id1 = net.publish(a, 1, &["s"], b"x", 0);
    redis.kill();
    let t0 = Instant::now();
    let now = net.now();
    // Not yet noticed: accepted, then failed by the disconnect.
    net.buses[a].publish(2, &["s"], b"y", 0, now).unwrap();
    match net.wait(a, 5_000, |o| output_req(o) == Some(2)) {
        BusOutput::Failed { error, .. } => assert_ne!(error, BusError::Timeout),
        other => panic!("{other:?}"),
    }
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    net.wait(a, 5_000, |o| *o == BusOutput::Down);
    let now = net.now();
    assert_eq!(
        net.buses[a].publish(3, &["s"], b"z", 0, now),
        Err(BusError::Unavailable)
    );
    // Let a few reconnects fail, then bring Redis back on the same port.
    net.run_for(700);
    redis.spawn();
    net.up(a);
    let floor = id1 + 1_000_000_000_000;
    assert_eq!(net.publish(a, 4, &["s"], b"w", floor), floor + 1);
    // The restarted Redis lost the stream: prev starts again at 0.
    let want = message(floor + 1, &[("s", 0)], b"w");
    net.wait(a, 5_000, |o| *o == want);
}

#[test]
fn stopped_redis_times_out_then_recovers() {
    let Some(redis) = Redis::start() else { return };
    let mut net = Net::new();
    let cfg = BusConfig {
        max_in_flight: 2,
        ..config(redis.url(), 500)
    };
    let a = net.add(cfg);
    net.up(a);
    let id1 = net.publish(a, 1, &["s"], b"x", 0);
    redis.signal(libc::SIGSTOP);
    let t0 = Instant::now();
    let now = net.now();
    net.buses[a].publish(2, &["s"], b"y", 0, now).unwrap();
    net.buses[a].publish(3, &["s"], b"y", 0, now).unwrap();
    assert_eq!(
        net.buses[a].publish(4, &["s"], b"y", 0, now),
        Err(BusError::Busy)
    );
    assert_eq!(net.buses[a].status().in_flight, 2);
    for req in [2, 3] {
        let got = net.wait(a, 5_000, |o| output_req(o) == Some(req));
        assert_eq!(
            got,
            BusOutput::Failed {
                req,
                error: BusError::Timeout
            }
        );
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(900),
        "{took:?}"
    );
    net.wait(a, 1_000, |o| *o == BusOutput::Down);
    redis.signal(libc::SIGCONT);
    net.up(a);
    assert!(net.publish(a, 5, &["s"], b"z", 0) > id1);
}

#[test]
fn unix_socket_with_password_and_db() {
    let dir = std::env::temp_dir();
    let sock = dir.join(format!("ssed-bus-{}.sock", std::process::id()));
    let sock_s = sock.to_str().unwrap();
    let args = ["--unixsocket", sock_s, "--requirepass", "s3cret"];
    let Some(redis) = Redis::start_with(&args) else {
        return;
    };
    let mut net = Net::new();
    let url = format!("unix:{sock_s}?password=s3cret&db=3")
        .parse()
        .unwrap();
    let a = net.add(config(url, 1000));
    net.up(a);
    let id = net.publish(a, 1, &["s"], b"x", 0);
    assert!(id > 0);
    let got = net.fetch(a, 2, "s", 0, 10);
    let entries = vec![(id, 0, b"x".to_vec())];
    let want = BusOutput::Fetched {
        more: false,
        req: 2,
        entries,
        first_retained: Some(id),
    };
    assert_eq!(got, want);
    // A wrong password never comes up and says why.
    let bad = format!("redis://:nope@127.0.0.1:{}", redis.port)
        .parse()
        .unwrap();
    let b = net.add(config(bad, 1000));
    net.run_for(500);
    let st = net.buses[b].status();
    assert!(!st.connected && st.last_error.unwrap().contains("WRONGPASS"));
    assert!(net.outs[b].is_empty());
    let _ = std::fs::remove_file(&sock);
}

/// `cmdstat_<name>:calls=N` from INFO commandstats.
fn calls(redis: &Redis, name: &str) -> u64 {
    let Value::Bulk(info) = redis.cmd(&[b"INFO", b"commandstats"]) else {
        panic!("INFO is a bulk")
    };
    let info = String::from_utf8(info.expect("INFO text")).unwrap();
    let key = format!("cmdstat_{name}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|l| l.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn one_turn_of_publishes_is_one_script_call_with_an_id_and_chain_each() {
    let Some(redis) = Redis::start() else { return };
    let mut net = Net::new();
    let (a, b) = (
        net.add(config(redis.url(), 2000)),
        net.add(config(redis.url(), 2000)),
    );
    net.up(a);
    net.up(b);
    let now = net.now();
    // One turn: 40 publishes, alternating streams, some to both.
    let streams: [&[&str]; 3] = [&["m"], &["n"], &["m", "n"]];
    for req in 0..40u64 {
        let payload = format!("e{req}");
        let s = streams[req as usize % 3];
        net.buses[a]
            .publish(req, s, payload.as_bytes(), 0, now)
            .unwrap();
    }
    let ids: Vec<u64> = (0..40).map(|req| net.published(a, req)).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // The first went at once (Redis was idle), the other 39 together.
    assert_eq!(calls(&redis, "evalsha"), 2, "two script calls for the turn");
    // Every event is announced on its own, with its own predecessors.
    let mut last = [0u64; 2];
    for (req, &id) in ids.iter().enumerate() {
        let s = streams[req % 3];
        let prevs: Vec<(&str, u64)> = s
            .iter()
            .map(|&name| (name, last[usize::from(name == "n")]))
            .collect();
        for &name in s {
            last[usize::from(name == "n")] = id;
        }
        let want = message(id, &prevs, format!("e{req}").as_bytes());
        assert_eq!(
            net.wait(b, 5_000, |o| matches!(o, BusOutput::Message { .. })),
            want
        );
    }
    // A turn past the batch bound goes in several calls, ids still in order.
    let now = net.now();
    let n = crate::bus::script::MAX_BATCH_EVENTS as u64 + 10;
    for req in 100..100 + n {
        net.buses[a].publish(req, &["m"], b"x", 0, now).unwrap();
    }
    let more: Vec<u64> = (100..100 + n).map(|req| net.published(a, req)).collect();
    assert!(more[0] > ids[39] && more.windows(2).all(|w| w[0] < w[1]));
    // One at once, a full batch, the rest at the turn's end.
    assert_eq!(calls(&redis, "evalsha"), 5);
    assert_eq!(net.buses[a].status().in_flight, 0);
}

#[test]
fn a_batch_failing_in_redis_fails_each_publish_never_an_id() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let mut net = Net::new();
    let a = net.add(config(redis.url(), 2000));
    net.up(a);
    if let Value::Bulk(Some(m)) = redis.cmd(&[b"INFO", b"memory"]) {
        eprintln!(
            "MEM {}",
            String::from_utf8_lossy(&m)
                .lines()
                .find(|l| l.starts_with("used_memory:"))
                .unwrap()
        );
    }
    let id = net.publish(a, 1, &["f"], b"ok", 0);
    // Past maxmemory (noeviction), the script's first write is refused.
    // Set below what an empty Redis uses, not filled up to: a large value
    // is refused itself (its query buffer counts), and the margin an
    // empty Redis leaves under a small limit is too thin to rely on.
    let set = redis.cmd(&[b"CONFIG", b"SET", b"maxmemory", b"1"]);
    assert_eq!(set, Value::Simple(b"OK".to_vec()));
    let now = net.now();
    for req in 2..6 {
        net.buses[a].publish(req, &["f"], b"no", id, now).unwrap();
    }
    for req in 2..6 {
        match net.wait(a, 5_000, |o| output_req(o) == Some(req)) {
            BusOutput::Failed {
                error: BusError::Redis(e),
                ..
            } => assert!(e.contains("OOM"), "{e}"),
            other => panic!("req {req}: {other:?}"),
        }
    }
    assert!(
        net.buses[a].status().connected,
        "a Redis error is not a disconnect"
    );
}

#[test]
fn fetch_pages_stay_under_the_reply_cap_and_publishes_go_on() {
    let Some(redis) = Redis::start() else { return };
    let mut net = Net::new();
    // Scaled down: replies up to 96 KiB, pages of 32 KiB.
    let small = BusConfig {
        max_bulk: 64 << 10,
        max_reply: 96 << 10,
        fetch_bytes: 32 << 10,
        ..config(redis.url(), 2000)
    };
    let (a, b) = (net.add(small.clone()), net.add(small));
    net.up(a);
    net.up(b);
    // The stream holds 40 x 8 KiB = 320 KiB: more than any reply may be.
    let payload = |i: usize| vec![b'a' + (i % 26) as u8; 8 << 10];
    let mut ids = Vec::new();
    for i in 0..40 {
        let floor = ids.last().copied().unwrap_or(0);
        ids.push(net.publish(a, i as u64, &["big"], &payload(i), floor));
    }
    // Too large for every node's replies: refused at publish.
    let now = net.now();
    let too = vec![0; net.buses[a].max_payload()];
    assert!(matches!(
        net.buses[a].publish(99, &["big"], &too, 0, now),
        Err(BusError::TooLarge { .. })
    ));
    // B pages through it; a publish rides along between pages.
    let (mut after, mut got, mut pages, mut req) = (0, Vec::new(), 0, 1000);
    loop {
        req += 1;
        let BusOutput::Fetched {
            entries,
            first_retained,
            more,
            ..
        } = net.fetch(b, req, "big", after, 1000)
        else {
            panic!("fetch failed")
        };
        assert_eq!(first_retained, Some(ids[0]));
        let bytes: usize = entries.iter().map(|e| e.2.len()).sum();
        assert!(bytes <= (32 << 10) + (8 << 10), "page of {bytes} bytes");
        pages += 1;
        after = entries.last().map_or(after, |e| e.0);
        got.extend(entries);
        let by = net.publish(b, 5000 + req, &["bystander"], b"still here", 0);
        assert!(by > 0);
        if !more {
            break;
        }
    }
    assert!(pages >= 8, "{pages} pages");
    let want: Vec<(u64, u64, Vec<u8>)> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, if i == 0 { 0 } else { ids[i - 1] }, payload(i)))
        .collect();
    assert_eq!(got, want);
    let s = net.buses[b].status();
    assert!(s.connected && s.reconnects == 0 && s.errors == 0, "{s:?}");
}

/// Without redis-server these tests skip (one line, a summary at exit), and
/// fail instead under `CI=true`: this binary runs one of them again as a
/// child with the server's path pointed at nothing.
#[test]
fn a_missing_redis_server_skips_or_fails_under_ci() {
    const TEST: &str = "reactor::bus::tests::large_payload_round_trips";
    let run = |ci: Option<&str>| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([TEST, "--exact", "--test-threads=1"])
            .env("SSED_REDIS_SERVER", "/nonexistent/redis-server")
            .env_remove("SSED_REQUIRE_COMPONENTS")
            .env_remove("SSED_SKIP_REDIS");
        match ci {
            Some(v) => cmd.env("CI", v),
            None => cmd.env_remove("CI"),
        };
        let out = cmd.output().expect("run the test binary");
        // libtest reports a failure on stdout, the harness a skip on stderr.
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, err) = run(None);
    assert!(ok, "{err}");
    let line = format!("SKIPPED {TEST}: needs redis-server (cannot run /nonexistent/redis-server");
    assert_eq!(err.matches("SKIPPED ").count(), 1, "{err}");
    assert!(err.contains(&line), "{err}");
    assert!(
        err.contains(&format!(
            "  redis-server: 1 test(s) skipped; install: apt-get install -y redis-server\n    {TEST}\n"
        )),
        "{err}"
    );
    let (ok, err) = run(Some("true"));
    assert!(!ok, "{err}");
    assert!(err.contains("needs redis-server"), "{err}");
    assert!(!err.contains("SKIPPED "), "{err}");
}

/// Every connect, the first and each reconnect, goes to the address
/// resolved at start-up: the URL's host name here cannot be resolved at
/// all (`.invalid` is reserved), so a lookup on the reconnect path would
/// fail instead of reaching the listener. Needs no Redis: the listener
/// takes both connections, hangs them up, and takes the reconnects.
#[test]
fn reconnects_use_the_address_resolved_at_start_and_never_look_up() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let url: RedisUrl = format!("redis://ssed-test.invalid:{}", addr.port())
        .parse()
        .unwrap();
    assert!(
        Target::resolve(&url.addr).is_err(),
        "the name must not resolve"
    );
    let cfg = BusConfig {
        prefix: "t".into(),
        command_timeout: Duration::from_millis(5_000),
        ..BusConfig::new(url, Target::Tcp(addr))
    };
    let mut net = Net::new();
    let a = net.add(cfg);
    let accept_two = |net: &mut Net| {
        let deadline = net.now() + 10_000;
        let mut got = Vec::new();
        while got.len() < 2 {
            assert!(net.now() < deadline, "bus did not connect to {addr}");
            match listener.accept() {
                Ok((s, _)) => got.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => net.turn(),
                Err(e) => panic!("{e}"),
            }
        }
        got
    };
    let first = accept_two(&mut net);
    drop(first);
    // Both hung up: the bus notices, backs off and connects again, to the
    // stored address.
    let second = accept_two(&mut net);
    assert!(net.buses[a].status().reconnects >= 1);
    drop(second);
}

/// A TCP proxy in front of Redis. While `mute` is set, what Redis sends
/// on pub/sub connections (those whose client sent SUBSCRIBE) is swallowed
/// and nothing is closed: a pub/sub connection that died silently, while
/// the command connection works.
struct MuteProxy {
    port: u16,
    mute: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl MuteProxy {
    fn start(redis_port: u16) -> MuteProxy {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        use std::sync::Arc;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mute = Arc::new(AtomicBool::new(false));
        let muted = mute.clone();
        // Threads end when Redis (killed on drop) closes its side; the
        // acceptor lives as long as the test process.
        std::thread::spawn(move || {
            for client in l.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", redis_port)) else {
                    continue;
                };
                let sub = Arc::new(AtomicBool::new(false));
                let (mut from, mut to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let is_sub = sub.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        if buf[..n].windows(9).any(|w| w == b"SUBSCRIBE") {
                            is_sub.store(true, SeqCst);
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
                let (mut from, mut to, muted) = (server, client, muted.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        if sub.load(SeqCst) && muted.load(SeqCst) {
                            continue;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        MuteProxy { port, mute }
    }

    fn set_mute(&self, on: bool) {
        self.mute.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn an_idle_bus_wants_no_wakeup_and_a_silent_pubsub_is_noticed_at_the_next_publish() {
    let Some(redis) = Redis::start() else { return };
    let proxy = MuteProxy::start(redis.port);
    let url: RedisUrl = format!("redis://127.0.0.1:{}", proxy.port).parse().unwrap();
    let mut net = Net::new();
    let a = net.add(config(url, 500));
    net.up(a);
    // Up and idle: no deadline at all, so the reactor sleeps without a
    // timeout for the bus (it used to PING every command timeout).
    assert_eq!(net.buses[a].next_deadline(), None);
    let id1 = net.publish(a, 1, &["s"], b"x", 0);
    net.wait(a, 5_000, |o| *o == message(id1, &[("s", 0)], b"x"));
    assert_eq!(net.buses[a].next_deadline(), None, "the watch ends");

    proxy.set_mute(true);
    // The command connection still answers: the publish gets its id...
    let id2 = net.publish(a, 2, &["s"], b"y", 0);
    assert!(id2 > id1);
    assert!(net.buses[a].next_deadline().is_some(), "watching for {id2}");
    // ...but its announcement never comes: the pub/sub connection is taken
    // for dead, and the bus goes down (subscribers get a catch-up after).
    net.wait(a, 5_000, |o| *o == BusOutput::Down);
    let seen = |id: u64| {
        let m = |o: &BusOutput| matches!(o, BusOutput::Message { id: i, .. } if *i == id);
        net.outs[a].iter().any(m)
    };
    assert!(!seen(id2));

    proxy.set_mute(false);
    net.up(a);
    let id3 = net.publish(a, 3, &["s"], b"z", 0);
    net.wait(a, 5_000, |o| *o == message(id3, &[("s", id2)], b"z"));
    assert!(net.buses[a].status().reconnects >= 1);
}
