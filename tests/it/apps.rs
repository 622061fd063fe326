//! The built-in apps (issue 4) over TCP against the real `ssed` binary:
//! chamber, workerman's Accept-detected stream, member notifications and
//! MongooseIM's client API. Field sets and types are checked exactly;
//! timing only within generous windows (`--tick-scale` shrinks the apps'
//! intervals so the tests stay fast). Nothing sleeps to synchronise where
//! an event can be awaited: reads carry deadlines instead.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{head_is_chunked, Dechunked, Server};

/// A complete HTTP response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// Sends one request (`Connection: close`) and reads the whole response.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("utf8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let (status, headers) = parse_head(head);
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

/// One parsed event.
#[derive(Debug, Clone, Default)]
struct Ev {
    id: Option<String>,
    event: Option<String>,
    data: String,
    /// The frame's field names in order, to check exact field sets.
    fields: Vec<String>,
}

impl Ev {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("data not JSON ({e}): {:?}", self.data))
    }
}

/// An open event stream.
struct Sse {
    status: u16,
    headers: Vec<(String, String)>,
    /// The body, de-chunked when the head says chunked.
    reader: BufReader<Dechunked<BufReader<TcpStream>>>,
}

impl Sse {
    fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Sse {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read head");
            assert!(n > 0, "EOF in response head: {head:?}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let chunked = head_is_chunked(&head);
        let (status, headers) = parse_head(&head);
        Sse {
            status,
            headers,
            reader: BufReader::new(Dechunked::new(reader, chunked)),
        }
    }

    fn sock(&self) -> &TcpStream {
        self.reader.get_ref().inner.get_ref()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next event with data, waiting at most `within`; `None` on EOF.
    /// Blocks of only `retry:` or comments are skipped.
    fn next_within(&mut self, within: Duration) -> Option<Ev> {
        let deadline = Instant::now() + within;
        let mut ev = Ev::default();
        let mut has_data = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no event within {within:?}");
            self.sock().set_read_timeout(Some(left)).unwrap();
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("no event within {within:?}")
                }
                Err(_) => return None,
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if has_data {
                    return Some(ev);
                }
                ev = Ev::default();
                continue;
            }
            // `retry:` is the stream's (ssed's first event carries it), not
            // an event field the imitated apps send.
            if line.starts_with(':') || line.starts_with("retry:") {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            ev.fields.push(field.to_string());
            match field {
                "id" => ev.id = Some(value.to_string()),
                "event" => ev.event = Some(value.to_string()),
                "data" => {
                    if has_data {
                        ev.data.push('\n');
                    }
                    ev.data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
    }

    fn next(&mut self) -> Ev {
        self.next_within(Duration::from_secs(5))
            .expect("stream ended")
    }

    /// Whether the server closes the stream within `within`.
    fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.sock().set_read_timeout(Some(left)).unwrap();
            let pending = self.reader.buffer().len();
            self.reader.consume(pending);
            match self.reader.get_mut().read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

// ---------------------------------------------------------------- chamber

#[test]
fn chamber_events_have_the_seed_fields_and_pace() {
    // 4 s × 0.05 = 200 ms between events.
    let srv = Server::start(&["--tick-scale", "0.05"]);
    let mut s = Sse::open(srv.addr, "/streaming/sse", &[]);
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("cache-control"), Some("no-cache"));
    assert_eq!(s.header("access-control-allow-origin"), Some("*"));
    assert_eq!(s.header("connection"), Some("keep-alive"));
    let date = s.header("date").unwrap_or("");
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date:?}");
    let mut elapsed = Vec::new();
    for _ in 0..3 {
        // "At once" is checked on the server's own clock below
        // (`elapsed[0]`), not on this test's, which a loaded machine skews.
        let ev = s.next();
        assert_eq!(ev.fields, ["id", "event", "data"]);
        let id = ev.id.clone().unwrap();
        assert_eq!(id.len(), 32, "{id}");
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(ev.event.as_deref(), Some("random"));
        // Spelled as chamber's Lua does: `{"message": "...", "elapsed": N.NNNNNN}`.
        assert!(ev.data.starts_with("{\"message\": \""), "{}", ev.data);
        let v = ev.json();
        assert_eq!(keys(&v), set(&["message", "elapsed"]));
        let msg = v["message"].as_str().unwrap();
        assert!((10..=50).contains(&msg.len()), "{msg}");
        assert!(msg.bytes().all(|c| c.is_ascii_alphanumeric()), "{msg}");
        let e = ev.data.rsplit_once("\"elapsed\": ").unwrap().1;
        let digits = e.trim_end_matches('}');
        assert_eq!(digits.split_once('.').unwrap().1.len(), 6, "{digits}");
        elapsed.push(v["elapsed"].as_f64().unwrap());
    }
    assert!(elapsed[0] < 0.1, "{elapsed:?}");
    for w in elapsed.windows(2) {
        let gap = w[1] - w[0];
        assert!((0.15..=1.5).contains(&gap), "interval {gap} in {elapsed:?}");
    }
}

#[test]
fn chamber_takes_event_and_data_from_the_query() {
    let srv = Server::start(&["--tick-scale", "0.05"]);
    let mut s = Sse::open(srv.addr, "/streaming/sse?event=greeting&data=hello", &[]);
    for _ in 0..2 {
        let ev = s.next();
        assert_eq!(ev.event.as_deref(), Some("greeting"));
        assert_eq!(ev.json()["message"], "hello");
    }
    let r = request(srv.addr, "GET", "/streaming/sse?event=a:b", &[], "");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());
    let r = request(srv.addr, "POST", "/streaming/sse", &[], "x");
    assert_eq!(r.status, 405);
}

// -------------------------------------------------------------- workerman

#[test]
fn workerman_streams_hello_on_unrouted_paths_with_accept() {
    // 2 s × 0.1 = 200 ms.
    let srv = Server::start(&["--tick-scale", "0.1"]);
    let t0 = Instant::now();
    let mut s = Sse::open(srv.addr, "/any/path", &[("Accept", "text/event-stream")]);
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    for _ in 0..3 {
        let ev = s.next();
        assert_eq!(ev.event.as_deref(), Some("message"));
        assert_eq!(ev.id.as_deref(), Some("1"));
        assert_eq!(ev.data, "hello");
        assert_eq!(
            set(&ev.fields.iter().map(String::as_str).collect::<Vec<_>>()),
            set(&["event", "id", "data"])
        );
    }
    // Like workerman's Timer::add(2, ...): the first one after an interval.
    assert!(
        t0.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    let r = request(srv.addr, "GET", "/any/path", &[], "");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
}

fn stats(addr: SocketAddr) -> Value {
    let r = request(addr, "GET", "/stats", &[], "");
    assert_eq!(r.status, 200);
    r.json()
}

static SOCKETS: AtomicUsize = AtomicUsize::new(0);

/// Closes with RST (SO_LINGER 0) so the test leaves no TIME_WAIT behind.
fn reset_on_close(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `l` for its stated size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// RSS may grow by at most this much over 10,000 opened-and-dropped
/// Accept-detected streams (it measures leaks, not allocator slack).
const RSS_GROWTH_BOUND: u64 = 16 << 20;

#[test]
fn workerman_timers_die_with_their_connections() {
    // Short timeouts: the core cancels its sweep timers lazily, so a stale
    // entry lives until its (heartbeat, header or idle) deadline; shortened,
    // the heap settles within seconds instead of a minute.
    let srv = Server::start(&[
        "--tick-scale",
        "0.05",
        "--max-connections-per-ip",
        "5000",
        "--heartbeat",
        "1",
        "--header-timeout",
        "1",
        "--idle-timeout",
        "1",
    ]);
    let fresh = stats(srv.addr);
    let base_timers = fresh["timers"].as_u64().unwrap();
    let base_total = fresh["connections"]["total"].as_u64().unwrap();
    let settle = |want_timers: u64, want_total: u64| -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = stats(srv.addr);
            let timers = st["timers"].as_u64().unwrap();
            let total = st["connections"]["total"].as_u64().unwrap();
            if timers <= want_timers && total <= want_total {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "did not settle to {want_timers} timers: {st}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let batch = |n: usize| {
        let mut socks = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = TcpStream::connect(srv.addr).expect("connect");
            s.write_all(b"GET /live HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
                .unwrap();
            socks.push(s);
        }
        for s in &mut socks {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // The head and `retry:` prove the server made it a ticking stream.
            let mut buf = [0u8; 512];
            let mut got = Vec::new();
            while !got.windows(7).any(|w| w == b"retry: ") {
                let n = s.read(&mut buf).expect("read head");
                assert!(n > 0, "closed early");
                got.extend_from_slice(&buf[..n]);
            }
            assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
        }
        let n_socks = socks.len();
        for (i, s) in socks.into_iter().enumerate() {
            // Half close with RST (no TIME_WAIT left behind), half with FIN.
            if i % 2 == 0 {
                reset_on_close(&s);
            }
            drop(s);
        }
        SOCKETS.fetch_add(n_socks, Ordering::Relaxed);
    };
    // A warm-up batch so allocator pools exist before the RSS baseline.
    batch(500);
    let warm = settle(base_timers, base_total);
    let base_rss = warm["rss_bytes"].as_u64().unwrap();
    let t0 = Instant::now();
    for i in 0..20 {
        if i == 10 {
            // While streams are open their timers exist (one per stream).
            let mut socks = Vec::new();
            for _ in 0..50 {
                let mut s = TcpStream::connect(srv.addr).unwrap();
                s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
                    .unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut b = [0u8; 256];
                assert!(s.read(&mut b).unwrap() > 0);
                socks.push(s);
            }
            let st = stats(srv.addr);
            assert!(st["timers"].as_u64().unwrap() >= 50, "{st}");
            assert!(st["connections"]["app"].as_u64().unwrap() >= 50, "{st}");
        }
        batch(500);
    }
    let opened = t0.elapsed();
    assert!(opened < Duration::from_secs(120), "took {opened:?}");
    let after = settle(base_timers, base_total);
    let rss = after["rss_bytes"].as_u64().unwrap();
    println!(
        "{} streams opened and dropped in {opened:?}; timers {base_timers} -> {}; RSS {base_rss} -> {rss}",
        SOCKETS.load(Ordering::Relaxed),
        after["timers"]
    );
    assert!(
        rss <= base_rss + RSS_GROWTH_BOUND,
        "RSS grew from {base_rss} to {rss} over {} connections",
        SOCKETS.load(Ordering::Relaxed)
    );
    assert!(SOCKETS.load(Ordering::Relaxed) >= 10_000);
    assert_eq!(after["connections"]["app"], 0, "{after}");
}

// ------------------------------------------------------- member notifications

fn post_member(addr: SocketAddr, path: &str, member: &str, body: &str) -> Resp {
    request(
        addr,
        "POST",
        path,
        &[("Member-ID", member), ("Content-Type", "application/json")],
        body,
    )
}

fn is_iso8601_utc_ms(s: &str) -> bool {
    // YYYY-MM-DDTHH:MM:SS.mmmZ
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn member_events_carry_uuid_type_and_timestamped_body() {
    let srv = Server::start(&[]);
    let mut s = Sse::open(
        srv.addr,
        "/notification/events",
        &[("MemberId", "123"), ("Device-Id", "phone")],
    );
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    let r = post_member(
        srv.addr,
        "/notification/events",
        "123",
        r#"{"event":{"type":"ORDER_SHIPPED","body":{"examplePropertyOfEvent":"exampleValueOfProperty","n":7}}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let reply = r.json();
    assert_eq!(keys(&reply), set(&["id", "devices"]));
    assert_eq!(reply["devices"], 1);
    let ev = s.next();
    assert_eq!(ev.fields, ["id", "event", "data"]);
    let id = ev.id.clone().unwrap();
    assert!(is_uuid_v4(&id), "{id}");
    assert_eq!(reply["id"], id.as_str());
    assert_eq!(ev.event.as_deref(), Some("ORDER_SHIPPED"));
    let v = ev.json();
    assert_eq!(keys(&v), set(&["examplePropertyOfEvent", "n", "timestamp"]));
    assert_eq!(v["examplePropertyOfEvent"], "exampleValueOfProperty");
    assert_eq!(v["n"], 7);
    let ts = v["timestamp"].as_str().unwrap();
    assert!(is_iso8601_utc_ms(ts), "{ts}");
    // The same member at `/events` (Member-ID, no stream) is the same app.
    let mut s2 = Sse::open(srv.addr, "/events", &[("Member-ID", "123")]);
    let r = post_member(
        srv.addr,
        "/events",
        "123",
        r#"{"event":{"type":"PING","body":{}}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["devices"], 2);
    assert_eq!(s.next().event.as_deref(), Some("PING"));
    assert_eq!(s2.next().event.as_deref(), Some("PING"));
    // Another member hears nothing of it: its first event is its own.
    let mut other = Sse::open(srv.addr, "/notification/events", &[("Member-ID", "456")]);
    post_member(srv.addr, "/events", "456", r#"{"event":{"type":"MINE"}}"#);
    assert_eq!(other.next().event.as_deref(), Some("MINE"));
}

#[test]
fn member_bad_requests_are_400_with_a_message() {
    let srv = Server::start(&[]);
    for (member, body) in [
        ("", r#"{"event":{"type":"T","body":{}}}"#),
        ("123", "not json"),
        ("123", r#"{"type":"T"}"#),
        ("123", r#"{"event":{"body":{}}}"#),
        ("123", r#"{"event":{"type":"bad type","body":{}}}"#),
        ("123", r#"{"event":{"type":"T","body":[1,2]}}"#),
        ("bad member", r#"{"event":{"type":"T","body":{}}}"#),
    ] {
        let mut h = vec![("Content-Type", "application/json")];
        if !member.is_empty() {
            h.push(("Member-ID", member));
        }
        let r = request(srv.addr, "POST", "/notification/events", &h, body);
        assert_eq!(r.status, 400, "{member:?} {body:?}: {}", r.body);
        assert!(!r.json()["error"].as_str().unwrap().is_empty());
    }
    let r = request(srv.addr, "GET", "/notification/events", &[], "");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("Member-ID"));
    // Without a member id, `/events` stays the core's.
    let r = request(srv.addr, "GET", "/events", &[], "");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("stream"));
}

#[test]
fn member_publishing_needs_publish_rights() {
    let srv = Server::start(&["--publish-token", "s3cret"]);
    let body = r#"{"event":{"type":"T","body":{}}}"#;
    let r = post_member(srv.addr, "/notification/events", "1", body);
    assert_eq!(r.status, 401);
    let r = request(
        srv.addr,
        "POST",
        "/notification/events",
        &[("Member-ID", "1"), ("Authorization", "Bearer s3cret")],
        body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn member_device_reconnect_replaces_the_old_connection() {
    let srv = Server::start(&[]);
    let h = [("Member-ID", "m1"), ("Device-Id", "tablet")];
    let mut old = Sse::open(srv.addr, "/notification/events", &h);
    let mut other_device = Sse::open(
        srv.addr,
        "/notification/events",
        &[("Member-ID", "m1"), ("Device-Id", "phone")],
    );
    let mut new = Sse::open(srv.addr, "/notification/events", &h);
    assert!(
        old.closed_within(Duration::from_secs(5)),
        "old connection was not ended"
    );
    let r = post_member(
        srv.addr,
        "/notification/events",
        "m1",
        r#"{"event":{"type":"HELLO","body":{}}}"#,
    );
    assert_eq!(r.json()["devices"], 2, "{}", r.body);
    assert_eq!(new.next().event.as_deref(), Some("HELLO"));
    assert_eq!(other_device.next().event.as_deref(), Some("HELLO"));
    // Dropping the new one frees the device: a later connection replaces nobody.
    drop(new);
    let mut again = Sse::open(srv.addr, "/notification/events", &h);
    assert!(!other_device.closed_within(Duration::from_millis(200)));
    post_member(
        srv.addr,
        "/notification/events",
        "m1",
        r#"{"event":{"type":"AGAIN"}}"#,
    );
    assert_eq!(again.next().event.as_deref(), Some("AGAIN"));
}

#[test]
fn member_replays_what_it_missed_after_last_event_id() {
    let srv = Server::start(&[]);
    let mut s = Sse::open(
        srv.addr,
        "/notification/events",
        &[("Member-ID", "77"), ("Device-Id", "d")],
    );
    post_member(
        srv.addr,
        "/notification/events",
        "77",
        r#"{"event":{"type":"E1","body":{"i":1}}}"#,
    );
    let first = s.next();
    assert_eq!(first.event.as_deref(), Some("E1"));
    drop(s);
    let mut sent = Vec::new();
    for i in 2..=4 {
        let r = post_member(
            srv.addr,
            "/notification/events",
            "77",
            &format!(r#"{{"event":{{"type":"E{i}","body":{{"i":{i}}}}}}}"#),
        );
        sent.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let last = first.id.clone().unwrap();
    let mut s = Sse::open(
        srv.addr,
        "/notification/events",
        &[
            ("Member-ID", "77"),
            ("Device-Id", "d"),
            ("Last-Event-ID", &last),
        ],
    );
    for (i, id) in (2..=4).zip(&sent) {
        let ev = s.next();
        assert_eq!(ev.event.as_deref(), Some(format!("E{i}").as_str()));
        assert_eq!(ev.id.as_deref(), Some(id.as_str()));
        assert_eq!(ev.json()["i"], i);
    }
    // Then live.
    post_member(
        srv.addr,
        "/notification/events",
        "77",
        r#"{"event":{"type":"LIVE"}}"#,
    );
    assert_eq!(s.next().event.as_deref(), Some("LIVE"));
    // An id the server does not know: `gap` first, then all retained.
    let mut s = Sse::open(
        srv.addr,
        "/notification/events",
        &[
            ("Member-ID", "77"),
            ("Last-Event-ID", "00000000-0000-4000-8000-000000000000"),
        ],
    );
    let gap = s.next();
    assert_eq!(gap.event.as_deref(), Some("gap"));
    assert_eq!(s.next().event.as_deref(), Some("E1"));
}

// ---------------------------------------------------------------- MongooseIM

static FILES: AtomicUsize = AtomicUsize::new(0);

fn users_file() -> std::path::PathBuf {
    let n = FILES.fetch_add(1, Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("ssed-apps-users-{}-{n}.txt", std::process::id()));
    std::fs::write(
        &p,
        "# test users\nalice@wonderland.lit:secret\nrabbit@wonderland.lit:carrot\nhatter@wonderland.lit:tea:time\n",
    )
    .unwrap();
    p
}

fn basic(user: &str, password: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let b = input.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                out.push(T[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    format!("Basic {out}")
}

const ALICE: (&str, &str) = ("alice@wonderland.lit", "secret");
const RABBIT: (&str, &str) = ("rabbit@wonderland.lit", "carrot");
const HATTER: (&str, &str) = ("hatter@wonderland.lit", "tea:time");

fn api(addr: SocketAddr, who: (&str, &str), method: &str, path: &str, body: &str) -> Resp {
    let auth = basic(who.0, who.1);
    let mut h = vec![("Authorization", auth.as_str())];
    if !body.is_empty() {
        h.push(("Content-Type", "application/json"));
    }
    request(addr, method, path, &h, body)
}

fn api_sse(addr: SocketAddr, who: (&str, &str)) -> Sse {
    let auth = basic(who.0, who.1);
    let s = Sse::open(
        addr,
        "/api/sse",
        &[("Authorization", &auth), ("Accept", "text/event-stream")],
    );
    assert_eq!(s.status, 200);
    s
}

#[test]
fn api_requires_basic_auth() {
    let f = users_file();
    let srv = Server::start(&["--users", f.to_str().unwrap()]);
    for path in ["/api/sse", "/api/messages", "/api/rooms", "/api/nothing"] {
        let r = request(srv.addr, "GET", path, &[], "");
        assert_eq!(r.status, 401, "{path}");
        let www = r.header("www-authenticate").unwrap_or("");
        assert!(www.starts_with("Basic realm=\""), "{www:?}");
        // Under /api errors are MongooseIM's: the reason as a JSON string.
        assert!(r.json().is_string(), "{}", r.body);
    }
    for (user, pw) in [
        (ALICE.0, "wrong"),
        ("nobody@wonderland.lit", "secret"),
        (ALICE.0, ""),
    ] {
        let r = api(srv.addr, (user, pw), "GET", "/api/messages", "");
        assert_eq!(r.status, 401, "{user}:{pw}");
        assert!(r.header("www-authenticate").is_some());
    }
    for bad in ["Basic !!!", "Bearer xyz", "Basic"] {
        let r = request(srv.addr, "GET", "/api/rooms", &[("Authorization", bad)], "");
        assert_eq!(r.status, 401, "{bad}");
    }
    // Passwords may contain ':'; JIDs are case-insensitive.
    assert_eq!(api(srv.addr, HATTER, "GET", "/api/rooms", "").status, 200);
    assert_eq!(
        api(
            srv.addr,
            ("Alice@Wonderland.LIT", "secret"),
            "GET",
            "/api/rooms",
            ""
        )
        .status,
        200
    );
    assert_eq!(api(srv.addr, ALICE, "GET", "/api/nothing", "").status, 404);
    let _ = std::fs::remove_file(f);
}

#[test]
fn api_messages_reach_every_sse_connection_with_the_seed_fields() {
    let f = users_file();
    let srv = Server::start(&["--users", f.to_str().unwrap()]);
    let mut a1 = api_sse(srv.addr, ALICE);
    let mut a2 = api_sse(srv.addr, ALICE);
    let before = now_us();
    let r = api(
        srv.addr,
        RABBIT,
        "POST",
        "/api/messages",
        r#"{"to":"alice@wonderland.lit","body":"Test message over SSE"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let reply = r.json();
    assert_eq!(keys(&reply), set(&["id"]));
    let msg_id = reply["id"].as_str().unwrap().to_string();
    assert!(is_uuid_v4(&msg_id));
    for s in [&mut a1, &mut a2] {
        let ev = s.next();
        assert_eq!(ev.event.as_deref(), Some("message"));
        let v = ev.json();
        assert_eq!(keys(&v), set(&["to", "timestamp", "id", "from", "body"]));
        assert_eq!(v["to"], "alice@wonderland.lit");
        assert_eq!(v["from"], "rabbit@wonderland.lit");
        assert_eq!(v["body"], "Test message over SSE");
        assert_eq!(v["id"], msg_id.as_str());
        let ts = v["timestamp"].as_u64().expect("integer timestamp");
        assert!(
            ts >= before && ts <= now_us() + 1_000_000,
            "µs timestamp {ts}"
        );
    }
    // History, both ways and per peer, with ?limit=.
    api(
        srv.addr,
        ALICE,
        "POST",
        "/api/messages",
        r#"{"to":"rabbit@wonderland.lit","body":"reply"}"#,
    );
    api(
        srv.addr,
        HATTER,
        "POST",
        "/api/messages",
        r#"{"to":"alice@wonderland.lit","body":"tea?"}"#,
    );
    let all = api(srv.addr, ALICE, "GET", "/api/messages", "").json();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 3);
    for m in all {
        assert_eq!(keys(m), set(&["id", "from", "to", "body", "timestamp"]));
        assert!(m["timestamp"].is_u64());
    }
    assert_eq!(all[0]["body"], "Test message over SSE");
    assert_eq!(all[2]["body"], "tea?");
    let with = api(
        srv.addr,
        ALICE,
        "GET",
        "/api/messages/rabbit@wonderland.lit",
        "",
    )
    .json();
    assert_eq!(with.as_array().unwrap().len(), 2);
    let one = api(
        srv.addr,
        ALICE,
        "GET",
        "/api/messages/rabbit@wonderland.lit?limit=1",
        "",
    )
    .json();
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["body"], "reply");
    assert_eq!(
        api(srv.addr, ALICE, "GET", "/api/messages?limit=x", "").status,
        400
    );
    // Bad bodies: MongooseIM's reasons, as JSON strings.
    for (body, reason) in [
        ("{}", "Missing recipient JID"),
        (r#"{"to":"alice@wonderland.lit"}"#, "Missing message body"),
        (r#"{"to":"nojid","body":"x"}"#, "Invalid recipient JID"),
        ("nope", "Invalid request body"),
    ] {
        let r = api(srv.addr, RABBIT, "POST", "/api/messages", body);
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json(), Value::String(reason.into()), "{body}");
    }
    let _ = std::fs::remove_file(f);
}

#[test]
fn api_rooms_owner_rules_and_room_events() {
    let f = users_file();
    let srv = Server::start(&["--users", f.to_str().unwrap()]);
    let mut alice = api_sse(srv.addr, ALICE);
    let mut rabbit = api_sse(srv.addr, RABBIT);
    let r = api(
        srv.addr,
        ALICE,
        "POST",
        "/api/rooms",
        r#"{"name":"Tea party","subject":"Unbirthdays"}"#,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(keys(&r.json()), set(&["id"]));
    let room = r.json()["id"].as_str().unwrap().to_string();
    let rooms = api(srv.addr, ALICE, "GET", "/api/rooms", "").json();
    assert_eq!(rooms.as_array().unwrap().len(), 1);
    assert_eq!(keys(&rooms[0]), set(&["id", "name", "subject"]));
    assert_eq!(rooms[0]["id"], room.as_str());
    assert_eq!(rooms[0]["name"], "Tea party");
    assert_eq!(
        api(srv.addr, RABBIT, "GET", "/api/rooms", "").json(),
        serde_json::json!([])
    );

    // Only the owner adds users.
    let users = format!("/api/rooms/{room}/users");
    let add_hatter = r#"{"user":"hatter@wonderland.lit"}"#;
    assert_eq!(
        api(srv.addr, RABBIT, "POST", &users, add_hatter).status,
        403
    );
    let r = api(
        srv.addr,
        ALICE,
        "POST",
        &users,
        r#"{"user":"rabbit@wonderland.lit"}"#,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let room_jid = format!("{room}@muclight.wonderland.lit");
    for s in [&mut alice, &mut rabbit] {
        let ev = s.next();
        assert_eq!(ev.event.as_deref(), Some("room.message"));
        let v = ev.json();
        assert_eq!(
            keys(&v),
            set(&[
                "user",
                "type",
                "timestamp",
                "room",
                "id",
                "from",
                "affiliation"
            ])
        );
        assert_eq!(v["type"], "affiliation");
        assert_eq!(v["affiliation"], "member");
        assert_eq!(v["user"], "rabbit@wonderland.lit");
        assert_eq!(v["room"], room.as_str());
        assert_eq!(v["from"], room_jid.as_str());
        assert!(is_uuid_v4(v["id"].as_str().unwrap()));
        assert!(v["timestamp"].is_u64());
    }
    // A member still may not add anyone.
    assert_eq!(
        api(srv.addr, RABBIT, "POST", &users, add_hatter).status,
        403
    );

    // Room messages reach every member once.
    let msgs = format!("/api/rooms/{room}/messages");
    let r = api(srv.addr, RABBIT, "POST", &msgs, r#"{"body":"Hi all!"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let mid = r.json()["id"].as_str().unwrap().to_string();
    for s in [&mut alice, &mut rabbit] {
        let ev = s.next();
        assert_eq!(ev.event.as_deref(), Some("room.message"));
        let v = ev.json();
        assert_eq!(
            keys(&v),
            set(&["type", "timestamp", "room", "id", "from", "body"])
        );
        assert_eq!(v["type"], "message");
        assert_eq!(v["from"], "rabbit@wonderland.lit");
        assert_eq!(v["body"], "Hi all!");
        assert_eq!(v["id"], mid.as_str());
        assert_eq!(v["room"], room.as_str());
    }
    // Non-members can neither read nor write; unknown rooms are 404.
    assert_eq!(api(srv.addr, HATTER, "GET", &msgs, "").status, 403);
    assert_eq!(
        api(srv.addr, HATTER, "POST", &msgs, r#"{"body":"x"}"#).status,
        403
    );
    assert_eq!(
        api(srv.addr, ALICE, "GET", "/api/rooms/nope/messages", "").status,
        404
    );
    assert_eq!(
        api(srv.addr, ALICE, "POST", &msgs, r#"{"body":1}"#).status,
        400
    );
    let hist = api(srv.addr, ALICE, "GET", &msgs, "").json();
    let hist = hist.as_array().unwrap();
    assert_eq!(hist.len(), 2, "{hist:?}");
    assert_eq!(hist[0]["type"], "affiliation");
    assert_eq!(hist[1]["type"], "message");
    assert_eq!(
        keys(&hist[1]),
        set(&["id", "from", "timestamp", "type", "body"])
    );
    assert_eq!(
        api(srv.addr, ALICE, "GET", &format!("{msgs}?limit=1"), "")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Only the owner removes others; the removed user hears `none`.
    let del_alice = format!("/api/rooms/{room}/users/alice@wonderland.lit");
    assert_eq!(api(srv.addr, RABBIT, "DELETE", &del_alice, "").status, 403);
    let del_rabbit = format!("/api/rooms/{room}/users/rabbit@wonderland.lit");
    assert_eq!(api(srv.addr, ALICE, "DELETE", &del_rabbit, "").status, 204);
    for s in [&mut alice, &mut rabbit] {
        let v = s.next().json();
        assert_eq!(v["type"], "affiliation");
        assert_eq!(v["affiliation"], "none");
        assert_eq!(v["user"], "rabbit@wonderland.lit");
    }
    assert_eq!(api(srv.addr, RABBIT, "GET", &msgs, "").status, 403);
    let _ = std::fs::remove_file(f);
}

#[test]
fn api_sse_resumes_with_last_event_id() {
    let f = users_file();
    let srv = Server::start(&["--users", f.to_str().unwrap()]);
    let mut a = api_sse(srv.addr, ALICE);
    api(
        srv.addr,
        RABBIT,
        "POST",
        "/api/messages",
        r#"{"to":"alice@wonderland.lit","body":"one"}"#,
    );
    let first = a.next();
    drop(a);
    api(
        srv.addr,
        RABBIT,
        "POST",
        "/api/messages",
        r#"{"to":"alice@wonderland.lit","body":"two"}"#,
    );
    let auth = basic(ALICE.0, ALICE.1);
    let mut a = Sse::open(
        srv.addr,
        "/api/sse",
        &[
            ("Authorization", &auth),
            ("Last-Event-ID", first.id.as_deref().unwrap()),
        ],
    );
    assert_eq!(a.next().json()["body"], "two");
    let _ = std::fs::remove_file(f);
}

#[test]
fn api_owner_leaving_promotes_a_member_and_an_empty_room_goes() {
    let f = users_file();
    let srv = Server::start(&["--users", f.to_str().unwrap()]);
    let mut rabbit = api_sse(srv.addr, RABBIT);
    let room = api(
        srv.addr,
        ALICE,
        "POST",
        "/api/rooms",
        r#"{"name":"n","subject":"s"}"#,
    )
    .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let users = format!("/api/rooms/{room}/users");
    for u in ["rabbit@wonderland.lit", "hatter@wonderland.lit"] {
        let r = api(
            srv.addr,
            ALICE,
            "POST",
            &users,
            &format!(r#"{{"user":"{u}"}}"#),
        );
        assert_eq!(r.status, 204);
    }
    for u in ["rabbit@wonderland.lit", "hatter@wonderland.lit"] {
        assert_eq!(rabbit.next().json()["user"], u);
    }
    let details = api(srv.addr, HATTER, "GET", &format!("/api/rooms/{room}"), "").json();
    assert_eq!(keys(&details), set(&["name", "subject", "participants"]));
    assert_eq!(details["participants"].as_array().unwrap().len(), 3);
    // The owner leaves: the first member after it becomes owner.
    let r = api(
        srv.addr,
        ALICE,
        "DELETE",
        &format!("{users}/alice@wonderland.lit"),
        "",
    );
    assert_eq!(r.status, 204);
    let gone = rabbit.next().json();
    assert_eq!(
        (gone["user"].as_str(), gone["affiliation"].as_str()),
        (Some("alice@wonderland.lit"), Some("none"))
    );
    let owner = rabbit.next().json();
    assert_eq!(
        (owner["user"].as_str(), owner["affiliation"].as_str()),
        (Some("rabbit@wonderland.lit"), Some("owner"))
    );
    // A member may leave by itself, and the new owner may remove others.
    assert_eq!(
        api(
            srv.addr,
            HATTER,
            "DELETE",
            &format!("{users}/rabbit@wonderland.lit"),
            ""
        )
        .status,
        403
    );
    assert_eq!(
        api(
            srv.addr,
            HATTER,
            "DELETE",
            &format!("{users}/hatter@wonderland.lit"),
            ""
        )
        .status,
        204
    );
    assert_eq!(rabbit.next().json()["user"], "hatter@wonderland.lit");
    assert_eq!(
        api(
            srv.addr,
            RABBIT,
            "DELETE",
            &format!("{users}/rabbit@wonderland.lit"),
            ""
        )
        .status,
        204
    );
    // Empty: the room is gone.
    assert_eq!(
        api(srv.addr, RABBIT, "GET", &format!("/api/rooms/{room}"), "").status,
        404
    );
    assert_eq!(
        api(srv.addr, ALICE, "GET", "/api/rooms", "").json(),
        serde_json::json!([])
    );
    let _ = std::fs::remove_file(f);
}

#[test]
fn member_state_is_bounded_by_evicting_idle_members() {
    // 4096 members (the cap) plus some: the least recently used idle
    // members are forgotten, so internal streams never exceed the cap.
    let srv = Server::start(&[]);
    let mut live = Sse::open(srv.addr, "/notification/events", &[("Member-ID", "keeper")]);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let body = r#"{"event":{"type":"T","body":{}}}"#;
    for i in 0..4200 {
        // One keep-alive connection; each reply is read before the next.
        let req = format!(
            "POST /notification/events HTTP/1.1\r\nHost: t\r\nMember-ID: m{i}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut len = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if line.starts_with("HTTP/1.1 ") {
                assert!(line.starts_with("HTTP/1.1 200"), "member {i}: {line}");
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut b = vec![0u8; len];
        reader.read_exact(&mut b).unwrap();
    }
    let st = stats(srv.addr);
    assert!(st["internal_streams"].as_u64().unwrap() <= 4096, "{st}");
    // The member with a connected device kept its state and still hears.
    post_member(
        srv.addr,
        "/notification/events",
        "keeper",
        r#"{"event":{"type":"STILL"}}"#,
    );
    assert_eq!(live.next().event.as_deref(), Some("STILL"));
}
