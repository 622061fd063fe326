//! The one publish path, shown on the wire (issue 19 item 2, issue 21
//! item 1): every publisher — `POST /events`, the library `Publisher`
//! through `Server`, member notifications, the MongooseIM API's message
//! send, the Mercure hub — on every deployment shape: one node, two nodes
//! on a real redis-server (published on one, read on the other),
//! `--workers 2` on it (connections spread by the kernel; not for the
//! library, which is one process), and one node with `--data-dir`
//! restarted between publishing and resuming. Each
//! cell checks the reply's status and body shape (the same in every
//! shape), that the event reaches a subscriber under the right id, and
//! that a resume by `Last-Event-ID` continues exactly with the next event
//! (no `gap`, nothing repeated), on every node. The hub also publishes a
//! private update between the two, which the anonymous subscriber never
//! gets, live or resumed, after a restart or on another node.
//!
//! Without redis-server the Redis cells are skipped with a line (failed
//! under `CI=true`), see `components::require`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use crate::common::*;
use crate::redis::{connected, node, Redis};

/// Where to publish and subscribe.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Deploy {
    /// One node, memory only.
    Local,
    /// Two nodes on one Redis: publish on the first, subscribe on the second.
    Redis,
    /// One node with `--data-dir`, restarted before the resume.
    Journal,
    /// `--workers 2` on one Redis: the kernel spreads connections, so
    /// publishers and subscribers land on either worker.
    Workers,
}

/// Who publishes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    Events,
    Library,
    Members,
    Mongoose,
    Hub,
}

const ALICE: (&str, &str) = ("alice@localhost", "makota");
const BOB: (&str, &str) = ("bob@localhost", "makrolika");

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn temp(tag: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("ssed-matrix-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

/// Removes a temporary path on drop.
struct Temp(PathBuf);

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A library server (`ssed::Server` on a thread) and its publisher.
struct Lib {
    addr: SocketAddr,
    publisher: ssed::Publisher,
    stop: ssed::ShutdownHandle,
    thread: Option<std::thread::JoinHandle<Result<(), ssed::Error>>>,
}

impl Lib {
    fn start(redis: Option<String>, data_dir: Option<PathBuf>) -> Lib {
        let cfg = ssed::Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            redis,
            data_dir,
            ..ssed::Config::default()
        };
        let server = ssed::Server::bind(cfg).unwrap();
        let addr = server.local_addrs()[0];
        let publisher = server.publisher();
        let stop = server.shutdown_handle();
        let thread = Some(std::thread::spawn(move || server.run()));
        Lib {
            addr,
            publisher,
            stop,
            thread,
        }
    }
}

impl Drop for Lib {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
    }
}

/// A `--workers` supervisor, stopped with SIGTERM (so it stops its
/// workers) on drop.
struct Sup {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for Sup {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node: the binary, the library, or a supervisor of workers.
enum Node {
    Bin(Server),
    Lib(Lib),
    Sup(Sup),
}

impl Node {
    fn addr(&self) -> SocketAddr {
        match self {
            Node::Bin(s) => s.addr,
            Node::Lib(l) => l.addr,
            Node::Sup(s) => s.addr,
        }
    }
}

/// One cell's servers.
struct Setup {
    who: Who,
    deploy: Deploy,
    /// Publishes here.
    a: Option<Node>,
    /// Subscribes here (with Redis; else `a`).
    b: Option<Server>,
    redis: Option<Redis>,
    dir: Option<Temp>,
    users: Option<Temp>,
}

impl Setup {
    /// `None` when the cell needs a Redis this machine lacks (skipped).
    fn start(who: Who, deploy: Deploy) -> Option<Setup> {
        let redis = match deploy {
            Deploy::Redis | Deploy::Workers => Some(Redis::start()?),
            _ => None,
        };
        let users = (who == Who::Mongoose).then(|| {
            let f = temp("users");
            let text: String = [ALICE, BOB]
                .iter()
                .map(|(u, p)| format!("{u}:{p}\n"))
                .collect();
            std::fs::write(&f, text).unwrap();
            Temp(f)
        });
        let dir = (deploy == Deploy::Journal).then(|| Temp(temp("data")));
        let mut s = Setup {
            who,
            deploy,
            a: None,
            b: None,
            redis,
            dir,
            users,
        };
        s.a = Some(s.node());
        if let (Some(r), Deploy::Redis) = (&s.redis, deploy) {
            let extra = s.args();
            let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
            s.b = Some(node(r, &refs));
        }
        Some(s)
    }

    /// The binary's arguments beside `--redis`.
    fn args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(u) = &self.users {
            v.push("--users".to_string());
            v.push(u.0.to_str().unwrap().to_string());
        }
        v
    }

    /// Starts the publishing node (again, for a restart).
    fn node(&self) -> Node {
        let url = self.redis.as_ref().map(Redis::url);
        let dir = self.dir.as_ref().map(|d| d.0.clone());
        if self.who == Who::Library {
            let l = Lib::start(url, dir);
            if self.redis.is_some() {
                assert!(wait_until(T, || connected(l.addr)), "bus never came up");
            }
            return Node::Lib(l);
        }
        let mut args = self.args();
        if let Some(d) = &dir {
            args.push("--data-dir".into());
            args.push(d.to_str().unwrap().into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        match (&self.redis, self.deploy) {
            (Some(r), Deploy::Workers) => {
                let url = r.url();
                let (child, addrs) = Ssed::new()
                    .args(["--workers", "2", "--redis", url.as_str()])
                    .args(&refs)
                    .launch();
                let addr = addrs[0];
                // Both workers' buses up: fresh connections land on either.
                assert!(
                    wait_until(T, || (0..8).all(|_| connected(addr))),
                    "workers' buses never came up"
                );
                Node::Sup(Sup { child, addr })
            }
            (Some(r), _) => Node::Bin(node(r, &refs)),
            (None, _) => Node::Bin(Server::start(&refs)),
        }
    }

    fn pub_addr(&self) -> SocketAddr {
        self.a.as_ref().unwrap().addr()
    }

    fn sub_addr(&self) -> SocketAddr {
        match &self.b {
            Some(b) => b.addr,
            None => self.pub_addr(),
        }
    }

    /// With a journal: stop the node and start it again on the same data.
    fn restart(&mut self) {
        if self.deploy == Deploy::Journal {
            self.a = None;
            self.a = Some(self.node());
        }
    }

    /// Every node to resume on (with workers, several connections, which
    /// the kernel spreads over them).
    fn resume_addrs(&self) -> Vec<SocketAddr> {
        match (&self.b, self.deploy) {
            (Some(b), _) => vec![b.addr, self.pub_addr()],
            (None, Deploy::Workers) => vec![self.pub_addr(); 4],
            (None, _) => vec![self.pub_addr()],
        }
    }

    /// Live subscribers to open.
    fn live(&self) -> usize {
        if self.deploy == Deploy::Workers {
            6
        } else {
            1
        }
    }
}

fn base64(input: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            out.push(if i <= n {
                A[(v >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn basic(who: (&str, &str)) -> String {
    format!(
        "Authorization: Basic {}\r\n",
        base64(&format!("{}:{}", who.0, who.1))
    )
}

fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    ctype: &str,
    body: &str,
) -> Response {
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\n{headers}Content-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    request(addr, raw.as_bytes())
}

/// A reply's status, content type and body shape (JSON keys, or `text`),
/// compared across deployments.
fn shape(r: &Response) -> String {
    let ctype = r.header("content-type").unwrap_or_default();
    let body = match serde_json::from_slice::<Value>(&r.body) {
        Ok(Value::Object(o)) => {
            let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
            keys.sort();
            format!("{{{}}}", keys.join(","))
        }
        _ => "text".to_string(),
    };
    format!("{} {ctype} {body}", r.status)
}

/// What a publish answered and what its subscribers must see.
struct Sent {
    /// The reply's shape (`None` for the library).
    shape: Option<String>,
    /// The SSE id subscribers get, when the reply tells it.
    id: Option<String>,
    /// A piece of the data subscribers get.
    mark: String,
    /// Another.
    also: Option<String>,
}

/// Publishes event `n` (`private`: a private hub update).
fn publish(s: &Setup, n: usize, private: bool) -> Sent {
    let addr = s.pub_addr();
    let mark = format!("{:?}-{:?}-{n}", s.who, s.deploy);
    let ok = |r: &Response| {
        assert_eq!(r.status, 200, "{:?} {:?}: {}", s.who, s.deploy, r.text());
        Some(shape(r))
    };
    match s.who {
        Who::Events => {
            let r = send(addr, "POST", "/events?stream=mx", "", "text/plain", &mark);
            let id = r.json()["id"].as_str().map(str::to_string);
            Sent {
                shape: ok(&r),
                id,
                mark,
                also: None,
            }
        }
        Who::Library => {
            let Some(Node::Lib(l)) = &s.a else {
                unreachable!()
            };
            let id = l
                .publisher
                .publish("mx", ssed::Event::new(mark.as_str()))
                .unwrap();
            Sent {
                shape: None,
                id: Some(id.to_string()),
                mark,
                also: None,
            }
        }
        Who::Members => {
            let body = format!(r#"{{"event":{{"type":"T","body":{{"m":"{mark}"}}}}}}"#);
            let r = send(
                addr,
                "POST",
                "/notification/events",
                "Member-ID: mx\r\n",
                "application/json",
                &body,
            );
            let id = r.json()["id"].as_str().map(str::to_string);
            Sent {
                shape: ok(&r),
                id,
                mark,
                also: None,
            }
        }
        Who::Mongoose => {
            let body = format!(r#"{{"to":"{}","body":"{mark}"}}"#, BOB.0);
            let r = send(
                addr,
                "POST",
                "/api/messages",
                &basic(ALICE),
                "application/json",
                &body,
            );
            // The reply names the message (its uuid is in the event's
            // data); the event's id is the server's.
            let uuid = r.json()["id"].as_str().unwrap().to_string();
            Sent {
                shape: ok(&r),
                id: None,
                mark,
                also: Some(uuid),
            }
        }
        Who::Hub => {
            // The first update names itself; the others take ssed's ids.
            let mut form = format!("topic=mx&data={mark}");
            if n == 1 {
                form.push_str(&format!("&id=urn:{mark}"));
            }
            if private {
                form.push_str("&private=on");
            }
            let r = send(
                addr,
                "POST",
                "/.well-known/mercure",
                "",
                "application/x-www-form-urlencoded",
                &form,
            );
            let id = Some(r.text());
            if n == 1 {
                assert_eq!(r.text(), format!("urn:{mark}"));
            }
            Sent {
                shape: ok(&r),
                id,
                mark,
                also: None,
            }
        }
    }
}

/// Opens a subscription (resuming after `last`); its first block (the
/// `retry:` line) is read, so it is live.
fn subscribe(s: &Setup, addr: SocketAddr, last: Option<&str>, device: &str) -> Sse {
    let mut h = last
        .map(|l| format!("Last-Event-ID: {l}\r\n"))
        .unwrap_or_default();
    let path = match s.who {
        Who::Events | Who::Library => "/events?stream=mx",
        Who::Members => {
            h.push_str(&format!("Member-ID: mx\r\nDevice-Id: {device}\r\n"));
            "/notification/events"
        }
        Who::Mongoose => {
            h.push_str(&basic(BOB));
            "/api/sse"
        }
        Who::Hub => "/.well-known/mercure?topic=mx",
    };
    let mut sse = Sse::open(addr, path, &h);
    assert_eq!(sse.status(), 200, "{:?} {:?}", s.who, s.deploy);
    assert!(sse.next_block(T).unwrap().retry.is_some());
    sse
}

/// The next event, checked against what was sent; returns its id.
fn receive(s: &Setup, sse: &mut Sse, sent: &Sent, what: &str) -> String {
    let e = sse
        .next_event(T)
        .unwrap_or_else(|| panic!("{:?} {:?}: no event ({what})", s.who, s.deploy));
    assert_ne!(
        e.event.as_deref(),
        Some("gap"),
        "{:?} {:?} {what}: {e:?}",
        s.who,
        s.deploy
    );
    assert!(
        e.data().contains(&sent.mark),
        "{:?} {:?} {what}: {e:?} lacks {}",
        s.who,
        s.deploy,
        sent.mark
    );
    if let Some(also) = &sent.also {
        assert!(
            e.data().contains(also),
            "{:?} {:?} {what}: {e:?}",
            s.who,
            s.deploy
        );
    }
    let id = e.id.clone().expect("an id");
    if let Some(want) = &sent.id {
        assert_eq!(&id, want, "{:?} {:?} {what}", s.who, s.deploy);
    }
    id
}

/// One cell; the reply shapes it saw, `None` when skipped.
fn cell(who: Who, deploy: Deploy) -> Option<Vec<String>> {
    let mut s = Setup::start(who, deploy)?;
    let mut lives: Vec<Sse> = (0..s.live())
        .map(|i| subscribe(&s, s.sub_addr(), None, &format!("l{i}")))
        .collect();
    let first = publish(&s, 1, false);
    let ids1: Vec<String> = lives
        .iter_mut()
        .map(|l| receive(&s, l, &first, "live, first"))
        .collect();
    let id1 = ids1[0].clone();
    assert!(
        ids1.iter().all(|i| *i == id1),
        "{who:?} {deploy:?}: {ids1:?}"
    );
    if who == Who::Hub {
        // A private update: never for the anonymous subscriber.
        publish(&s, 9, true);
    }
    let second = publish(&s, 2, false);
    let ids2: Vec<String> = lives
        .iter_mut()
        .map(|l| receive(&s, l, &second, "live, second"))
        .collect();
    let id2 = ids2[0].clone();
    assert!(
        ids2.iter().all(|i| *i == id2),
        "{who:?} {deploy:?}: {ids2:?}"
    );
    assert_ne!(id1, id2);
    s.restart();
    for (i, addr) in s.resume_addrs().into_iter().enumerate() {
        let mut again = subscribe(&s, addr, Some(&id1), &format!("d{}", i + 1));
        let got = receive(&s, &mut again, &second, "resumed");
        assert_eq!(got, id2, "{who:?} {deploy:?}: resume is exact");
        let wire = String::from_utf8_lossy(&again.wire).into_owned();
        assert!(
            !wire.contains(&first.mark) && !wire.contains(&format!("{who:?}-{deploy:?}-9")),
            "{who:?} {deploy:?}: resumed stream repeats or leaks: {wire}"
        );
    }
    for live in &lives {
        let wire = String::from_utf8_lossy(&live.wire).into_owned();
        assert!(
            !wire.contains(&format!("{who:?}-{deploy:?}-9")),
            "{who:?} {deploy:?}: the private update reached an anonymous subscriber"
        );
    }
    Some([first.shape, second.shape].into_iter().flatten().collect())
}

/// Runs `who` in every shape; the reply shapes must agree.
fn row(who: Who) {
    let mut shapes: Vec<(Deploy, Vec<String>)> = Vec::new();
    for d in [
        Deploy::Local,
        Deploy::Journal,
        Deploy::Redis,
        Deploy::Workers,
    ] {
        // The library is one process: it has no workers.
        if who == Who::Library && d == Deploy::Workers {
            continue;
        }
        if let Some(sh) = cell(who, d) {
            shapes.push((d, sh));
        }
    }
    let want = match who {
        Who::Events => "200 application/json {id,subscribers}",
        Who::Library => "",
        Who::Members => "200 application/json {devices,id}",
        Who::Mongoose => "200 application/json {id}",
        Who::Hub => "200 text/plain; charset=utf-8 text",
    };
    let (d0, first) = &shapes[0];
    for sh in first {
        assert_eq!(sh, want, "{who:?} {d0:?}");
    }
    for (d, sh) in &shapes[1..] {
        assert_eq!(sh, first, "{who:?}: {d:?} answers unlike {d0:?}");
    }
}

#[test]
fn events_publish_the_same_everywhere() {
    row(Who::Events);
}

#[test]
fn library_publishes_the_same_everywhere() {
    row(Who::Library);
}

#[test]
fn member_notifications_publish_the_same_everywhere() {
    row(Who::Members);
}

#[test]
fn mongoose_messages_publish_the_same_everywhere() {
    row(Who::Mongoose);
}

#[test]
fn hub_publishes_the_same_everywhere() {
    row(Who::Hub);
}
