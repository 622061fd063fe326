//! One memory bound and streams that come and go (issue 14, items 1 and
//! 2), over real sockets against the real binary: the two memory
//! reproductions end with the server's RSS under the history budget plus
//! a stated overhead; subscribers cannot fill the stream table against a
//! publisher; unread streams expire; a failed request creates nothing;
//! `--no-auto-streams` still lets a publisher (and `PUT /streams/NAME`)
//! create streams. Each test keeps a bystander subscriber and checks it
//! kept receiving, and checks `/stats` counted what happened.

use std::net::SocketAddr;

use crate::common::*;

const MIB: u64 = 1 << 20;
/// The budget the memory tests run with (small, so they are quick).
const BUDGET: u64 = 64 * MIB;
/// What the server may hold beside retained history: the binary, the
/// allocator's slack from megabyte-sized request bodies and encodings
/// that come and go, buffers. Stated, not measured at run time.
const OVERHEAD: u64 = 32 * MIB;

fn rss_bytes(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

fn post_on(c: &mut Conn, path: &str, headers: &str, body: &[u8]) -> Response {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    c.request(&raw)
}

/// A bystander reading `watch` gets a fresh event: the server kept serving.
fn bystander_receives(addr: SocketAddr, by: &mut Sse, auth: &str, tag: &str) {
    let r = request(
        addr,
        format!(
            "POST /events?stream=watch HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n{auth}Content-Length: {}\r\n\r\n{tag}",
            tag.len()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = by.next_event(T).expect("bystander got nothing");
    assert_eq!(ev.data(), tag);
}

fn num(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

#[test]
fn history_budget_bounds_memory_under_many_large_publishes() {
    let s = Server::start(&["--history-total-bytes", &BUDGET.to_string()]);
    let mut by = Sse::open(s.addr, "/events?stream=watch", "");
    assert_eq!(by.status(), 200);
    let base = rss_bytes(&s);
    // The issue's first reproduction: one keep-alive client posts bodies of
    // ~1 MB to new streams m1, m2, ...; three times the budget in all.
    let body = vec![b'a'; 1_040_000];
    let n = (3 * BUDGET / 1_040_000) as usize;
    let mut c = Conn::open(s.addr);
    let mut first_id = String::new();
    for i in 1..=n {
        let r = post_on(&mut c, &format!("/events?stream=m{i}"), "", &body);
        assert_eq!(r.status, 200, "m{i}: {}", r.text());
        if i == 1 {
            first_id = r.json()["id"].as_str().unwrap().to_string();
        }
        if i % 50 == 0 {
            bystander_receives(s.addr, &mut by, "", &format!("still here {i}"));
        }
    }
    let st = stats(s.addr);
    let held = num(&st, &["history", "bytes"]);
    assert!(held <= BUDGET, "history {held} > budget {BUDGET}: {st}");
    assert!(
        held > BUDGET / 2,
        "the budget should be used, not emptied: {st}"
    );
    assert_eq!(num(&st, &["history", "budget"]), BUDGET);
    let evicted = num(&st, &["history", "evicted_events"]);
    assert!(evicted as usize >= n - 64, "evicted {evicted} of {n}: {st}");
    assert!(num(&st, &["history", "evicted_bytes"]) >= evicted * 1_040_000);
    // The oldest streams lost their event (and, unread, themselves): a
    // resume from before it is told.
    let mut resume = Sse::open(
        s.addr,
        "/events?stream=m1",
        &format!(
            "Last-Event-ID: {}\r\n",
            first_id.parse::<u64>().unwrap() - 1
        ),
    );
    let gap = resume.next_event(T).expect("gap");
    assert_eq!(gap.event.as_deref(), Some("gap"), "{gap:?}");
    assert!(gap.data().contains("\"m1\""), "{gap:?}");
    let rss = rss_bytes(&s);
    eprintln!(
        "memory: {n} publishes of 1,040,000 bytes; rss {} MiB (at start {} MiB); history {} MiB; budget {} MiB",
        rss / MIB,
        base / MIB,
        held / MIB,
        BUDGET / MIB
    );
    assert!(
        rss <= BUDGET + OVERHEAD,
        "rss {rss} over budget {BUDGET} + overhead {OVERHEAD}"
    );
    bystander_receives(s.addr, &mut by, "", "after the flood");
}

#[test]
fn oversized_encoded_events_are_refused_and_never_kept() {
    let s = Server::start(&["--history-total-bytes", &BUDGET.to_string()]);
    let mut by = Sse::open(s.addr, "/events?stream=watch", "");
    assert_eq!(by.status(), 200);
    // The issue's second reproduction: 1,048,000 CR bytes fit --max-body
    // but encode to 1,048,000 `data:` lines, six times --history-bytes.
    let body = vec![b'\r'; 1_048_000];
    let mut c = Conn::open(s.addr);
    let n = 40;
    for i in 1..=n {
        let r = post_on(&mut c, &format!("/events?stream=c{i}"), "", &body);
        assert_eq!(r.status, 413, "c{i}: {}", r.text());
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            msg.contains("encoded event is") && msg.contains("--history-bytes"),
            "{msg}"
        );
        if i % 10 == 0 {
            bystander_receives(s.addr, &mut by, "", &format!("still here {i}"));
        }
    }
    // A refused publish creates nothing.
    let r = get(s.addr, "/streams/c1");
    assert_eq!(r.status, 404, "{}", r.text());
    // Over the budget (many streams at once) is refused the same way.
    let small = Server::start(&["--history-total-bytes", "65536"]);
    let names: String = (0..16).map(|i| format!("&stream=w{i}")).collect();
    let r = post(
        small.addr,
        &format!("/events?x=1{names}"),
        "text/plain",
        &"y".repeat(5000),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("--history-total-bytes"), "{}", r.text());
    assert_eq!(stats(small.addr)["streams"], 0);

    let st = stats(s.addr);
    assert_eq!(num(&st, &["history", "refused_too_large"]), n, "{st}");
    assert_eq!(num(&st, &["rejected", "event_too_large"]), n, "{st}");
    assert!(num(&st, &["history", "bytes"]) < MIB, "{st}");
    assert_eq!(st["streams"], 1, "only watch: {st}");
    let rss = rss_bytes(&s);
    eprintln!(
        "memory: {n} refused CR publishes; rss {} MiB; budget {} MiB",
        rss / MIB,
        BUDGET / MIB
    );
    assert!(
        rss <= BUDGET + OVERHEAD,
        "rss {rss} over budget {BUDGET} + overhead {OVERHEAD}"
    );
    bystander_receives(s.addr, &mut by, "", "after the flood");
}

const AUTH: &str = "Authorization: Bearer s3cret\r\n";

fn authed(addr: SocketAddr, method: &str, path: &str, body: &str) -> Response {
    request(
        addr,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n{AUTH}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

#[test]
fn streams_come_and_go_and_subscribers_cannot_lock_out_publishers() {
    let s = Server::start(&[
        "--max-streams",
        "8",
        "--publish-token",
        "s3cret",
        "--stream-idle-ttl",
        "1",
        "--history-bytes",
        "4096",
    ]);
    let mut by = Sse::open(s.addr, "/events?stream=watch", "");
    assert_eq!(by.status(), 200);
    bystander_receives(s.addr, &mut by, AUTH, "hello");

    // Unauthenticated subscribers fill their own pool (8 streams)...
    let names: String = (1..=8).map(|i| format!("&stream=a{i}")).collect();
    let hog = Sse::open(s.addr, &format!("/events?x=1{names}"), "");
    assert_eq!(hog.status(), 200);
    let r = get(s.addr, "/events?stream=a9");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("only subscribers asked for"),
        "{}",
        r.text()
    );
    assert_eq!(
        num(&stats(s.addr), &["stream_lifecycle", "subscriber_only"]),
        8
    );
    // ...and an authorised publisher still creates and publishes.
    let r = authed(s.addr, "POST", "/events?stream=news", "first");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(s.addr, "/events?stream=news2", "text/plain", "anon");
    assert_eq!(r.status, 401, "{}", r.text());
    // Publishing to a subscriber's stream claims it for the publishers.
    let r = authed(s.addr, "POST", "/events?stream=a1", "claimed");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        num(&stats(s.addr), &["stream_lifecycle", "subscriber_only"]),
        7
    );

    // Streams with no readers and no history go with their last reader.
    drop(hog);
    assert!(wait_until(T, || {
        num(&stats(s.addr), &["stream_lifecycle", "subscriber_only"]) == 0
    }));
    assert_eq!(get(s.addr, "/streams/a2").status, 404);

    // A request that fails creates nothing: a subscribe with one bad name,
    // a publish refused as too large.
    let r = get(s.addr, "/events?stream=ok1&stream=bad%20name");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("bad stream name"), "{}", r.text());
    assert_eq!(get(s.addr, "/streams/ok1").status, 404);
    let r = authed(s.addr, "POST", "/events?stream=huge", &"z".repeat(5000));
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(get(s.addr, "/streams/huge").status, 404);

    // Unread and unpublished for --stream-idle-ttl: dropped; its tombstone
    // keeps a resume honest.
    let r = authed(s.addr, "POST", "/events?stream=old", "one");
    let first: u64 = r.json()["id"].as_str().unwrap().parse().unwrap();
    authed(s.addr, "POST", "/events?stream=old", "two");
    assert_eq!(get(s.addr, "/streams/old").status, 200);
    assert!(wait_until(T, || get(s.addr, "/streams/old").status == 404));
    let mut resume = Sse::open(
        s.addr,
        "/events?stream=old",
        &format!("Last-Event-ID: {first}\r\n"),
    );
    let gap = resume.next_event(T).expect("gap");
    assert_eq!(gap.event.as_deref(), Some("gap"), "{gap:?}");
    assert!(gap.data().contains("\"old\""), "{gap:?}");

    let st = stats(s.addr);
    assert!(
        num(&st, &["stream_lifecycle", "expired"]) >= 2,
        "old, news, a1: {st}"
    );
    assert!(
        num(&st, &["stream_lifecycle", "dropped_empty"]) >= 7,
        "{st}"
    );
    assert!(num(&st, &["stream_lifecycle", "tombstones"]) >= 1, "{st}");
    assert!(num(&st, &["rejected", "too_many_streams"]) >= 1, "{st}");
    assert_eq!(num(&st, &["rejected", "event_too_large"]), 1, "{st}");
    // The bystander's stream has a reader: it never expires.
    bystander_receives(s.addr, &mut by, AUTH, "still here");
}

#[test]
fn without_auto_streams_publishers_and_put_create_streams() {
    let s = Server::start(&["--no-auto-streams", "--publish-token", "s3cret"]);
    // PUT /streams/NAME: 201 when made, 200 when it exists; rights needed.
    let r = authed(s.addr, "PUT", "/streams/watch", "");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["created"], true);
    assert_eq!(r.json()["name"], "watch");
    let r = authed(s.addr, "PUT", "/streams/watch", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["created"], false);
    let r = request(
        s.addr,
        b"PUT /streams/x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(get(s.addr, "/streams/x").status, 404);
    let r = authed(s.addr, "PUT", "/streams/bad%20name", "");
    assert_eq!(r.status, 400, "{}", r.text());

    let mut by = Sse::open(s.addr, "/events?stream=watch", "");
    assert_eq!(by.status(), 200);
    bystander_receives(s.addr, &mut by, AUTH, "hello");

    // Subscribers still get 404 for unknown streams.
    let r = get(s.addr, "/events?stream=fresh");
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.text().contains("auto-creation is off"), "{}", r.text());
    // An authorised publish creates the stream.
    let r = authed(s.addr, "POST", "/events?stream=fresh", "made by publishing");
    assert_eq!(r.status, 200, "{}", r.text());
    let mut sub = Sse::open(
        s.addr,
        "/events?stream=fresh",
        &format!(
            "Last-Event-ID: {}\r\n",
            r.json()["id"].as_str().unwrap().parse::<u64>().unwrap() - 1
        ),
    );
    assert_eq!(sub.status(), 200);
    assert_eq!(sub.next_event(T).unwrap().data(), "made by publishing");

    let st = stats(s.addr);
    assert_eq!(st["streams"], 2, "{st}");
    assert_eq!(num(&st, &["rejected", "unauthorized"]), 1, "{st}");
    bystander_receives(s.addr, &mut by, AUTH, "still here");
}

/// A connection whose receive buffer is 4 KiB (set before the handshake,
/// so the window it offers stays small): a peer that does not read makes
/// the server hold what it sends instead of the kernel.
fn small_window(addr: SocketAddr) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(a) = addr else {
        panic!("tests listen on IPv4")
    };
    // SAFETY: a fresh socket, setsockopt reading an int, connect reading a
    // sockaddr_in of the stated size; the fd is owned by the TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let size: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*a.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        std::net::TcpStream::from_raw_fd(fd)
    }
}

/// The memory account's figures for one kind in `/stats`.
fn kind(st: &serde_json::Value, k: &str, field: &str) -> u64 {
    num(st, &["memory", "kinds", k, field])
}

/// Issue 20 item 3: `GET /streams` is paged (a default of 100, at most
/// 1,000, a cursor in a `Link` header), and clients that ask for listings
/// and never read them hold at most the memory account's `output` limit:
/// past it they are refused, and `--write-timeout` closes them.
#[test]
fn streams_listing_is_paged_and_unread_listings_are_bounded() {
    let s = Server::start(&[
        "--history-total-bytes",
        "65536",
        "--memory-max",
        &(65536 + 4 * MIB).to_string(),
        "--write-timeout",
        "1",
        "--publish-token",
        "s3cret",
    ]);
    let mut by = Sse::open(s.addr, "/events?stream=watch", "");
    assert_eq!(by.status(), 200);
    bystander_receives(s.addr, &mut by, AUTH, "hello");
    let st = stats(s.addr);
    // Output gets a quarter of what --memory-max leaves beside history.
    assert_eq!(num(&st, &["memory", "max"]), 65536 + 4 * MIB, "{st}");
    let limit = kind(&st, "output", "limit");
    assert_eq!(limit, MIB, "{st}");

    // 2,000 streams with 128-character names (the issue's shape).
    let name = |i: usize| format!("n{i:04}{}", "x".repeat(123));
    let mut c = Conn::open(s.addr);
    for i in 0..2000 {
        let r = c.request(
            format!(
                "PUT /streams/{} HTTP/1.1\r\nHost: t\r\n{AUTH}Content-Length: 0\r\n\r\n",
                name(i)
            )
            .as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // The default page: the first 100 in name order, and where to go next.
    let r = get(s.addr, "/streams");
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 100);
    assert_eq!(names[0], name(0));
    assert_eq!(names[99], name(99));
    assert_eq!(
        r.header("link").as_deref(),
        Some(format!("</streams?limit=100&after={}>; rel=\"next\"", name(99)).as_str())
    );
    // Following the links at 1,000 a page visits every stream once, in
    // order; the last page has no link.
    let mut seen = Vec::new();
    let mut path = "/streams?limit=1000".to_string();
    loop {
        let r = get(s.addr, &path);
        assert_eq!(r.status, 200, "{}", r.text());
        seen.extend(
            r.json()
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap().to_string()),
        );
        let Some(link) = r.header("link") else { break };
        path = link
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .unwrap()
            .0
            .to_string();
    }
    let mut want: Vec<String> = (0..2000).map(name).collect();
    want.push("watch".into());
    assert_eq!(seen, want);
    for bad in ["0", "1001", "x"] {
        let r = get(s.addr, &format!("/streams?limit={bad}"));
        assert_eq!(r.status, 400, "{}", r.text());
        assert!(r.text().contains("expected 1..=1000"), "{}", r.text());
    }

    // Clients that pipeline listings of 1,000 streams (~200 KB each) and
    // never read, with small receive windows: once the kernel's send
    // buffers are full (~2 MB each), the rest waits in the server, and
    // only up to the account's output limit (1 MiB here; 8 × one listing
    // would be more).
    let base = rss_bytes(&s);
    let req = b"GET /streams?limit=1000 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(16);
    let mut idle: Vec<std::net::TcpStream> = Vec::new();
    for _ in 0..8 {
        let mut t = small_window(s.addr);
        std::io::Write::write_all(&mut t, &req).unwrap();
        idle.push(t);
    }
    let ok = wait_until(6 * T, || kind(&stats(s.addr), "output", "refused") > 0);
    assert!(ok, "{}", stats(s.addr));
    let st = stats(s.addr);
    let rss = rss_bytes(&s);
    eprintln!(
        "memory: 8 non-reading listing clients: output {} KiB (peak {} KiB, limit {} MiB), refused {}, rss {} MiB (before {} MiB)",
        kind(&st, "output", "used") >> 10,
        kind(&st, "output", "peak") >> 10,
        limit / MIB,
        kind(&st, "output", "refused"),
        rss / MIB,
        base / MIB
    );
    // Past the limit only the short 503s are charged (one per connection).
    assert!(kind(&st, "output", "peak") <= limit + 8 * 256, "{st}");
    assert!(num(&st, &["rejected", "memory_output"]) > 0, "{st}");
    let m = get(s.addr, "/metrics").text();
    assert!(
        m.contains(&format!(
            "ssed_memory_kind_limit_bytes{{kind=\"output\"}} {limit}\n"
        )),
        "{m}"
    );
    assert!(
        m.contains("ssed_memory_refused_total{kind=\"output\"} "),
        "{m}"
    );
    assert!(rss <= base + limit + OVERHEAD, "rss {rss}, before {base}");
    bystander_receives(s.addr, &mut by, AUTH, "while they do not read");
    // Nobody reads: --write-timeout (1 s) closes them and the account empties.
    assert!(wait_until(6 * T, || {
        let st = stats(s.addr);
        kind(&st, "output", "used") < 4096 && num(&st, &["connections", "total"]) <= 3
    }));
    let st = stats(s.addr);
    assert!(num(&st, &["write_timeouts"]) > 0, "{st}");
    drop(idle);
    bystander_receives(s.addr, &mut by, AUTH, "after them");
}

/// Opens a subscription on `s` without reading past the head: the
/// request is sent, nothing is read.
fn stalled_subscriber(addr: SocketAddr, path: &str) -> std::net::TcpStream {
    let mut t = small_window(addr);
    std::io::Write::write_all(
        &mut t,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
    .unwrap();
    t
}

/// Issue 20 item 8: subscribers that stop reading in the middle of large
/// events hold a position into the shared frame, not a copy of its rest:
/// 200 of them, let lag far (`--max-pending-bytes` 16 MiB) behind three
/// 1 MB events, stay far from 200 copies of a tail (up to 200 MB): the
/// account's output stays small, a bystander keeps receiving, and once
/// they are gone the freed memory is handed back (`memory.trims`).
#[test]
fn stalled_subscribers_share_large_frames_instead_of_copying_them() {
    let s = Server::start(&["--write-timeout", "60", "--max-pending-bytes", "16777216"]);
    let mut by = Sse::open(s.addr, "/events?stream=watch", "");
    assert_eq!(by.status(), 200);
    bystander_receives(s.addr, &mut by, "", "hello");
    let base = rss_bytes(&s);
    let n = 200;
    let mut stalled: Vec<std::net::TcpStream> = (0..n)
        .map(|_| stalled_subscriber(s.addr, "/events?stream=big"))
        .collect();
    assert!(wait_until(6 * T, || num(
        &stats(s.addr),
        &["connections", "sse"]
    ) == n as u64 + 1));
    let body = vec![b'b'; 1_000_000];
    let mut c = Conn::open(s.addr);
    for i in 0..3 {
        let r = post_on(&mut c, "/events?stream=big", "", &body);
        assert_eq!(r.status, 200, "event {i}: {}", r.text());
        bystander_receives(s.addr, &mut by, "", &format!("between big events {i}"));
    }
    let st = stats(s.addr);
    let rss = rss_bytes(&s);
    eprintln!(
        "memory: {n} stalled subscribers, three 1 MB events: rss {} MiB (at start {} MiB); blocked {}, dropped {}, output {} KiB",
        rss / MIB,
        base / MIB,
        num(&st, &["connections", "blocked"]),
        num(&st, &["slow_consumers_dropped"]),
        kind(&st, "output", "used") >> 10,
    );
    // Every one of them is stalled (inside a frame, or at its end).
    assert_eq!(num(&st, &["connections", "blocked"]), n as u64, "{st}");
    assert_eq!(num(&st, &["slow_consumers_dropped"]), 0, "{st}");
    // Copies: at most small heads; the frames are shared (3 MB of
    // history). The RSS bound leaves 16 MiB beside them: 200 private
    // copies of even an 80 KiB tail would pass it (the old code held
    // ~190 KiB each, 40 MiB in all, in this scenario).
    assert!(kind(&st, "output", "used") < 64 << 10, "{st}");
    assert!(
        rss <= base + 3 * MIB + 16 * MIB,
        "rss {rss}, at start {base}"
    );

    // They go: what they held is freed and handed back.
    for t in &stalled {
        let _ = t.shutdown(std::net::Shutdown::Both);
    }
    stalled.clear();
    assert!(wait_until(6 * T, || num(
        &stats(s.addr),
        &["connections", "sse"]
    ) == 1));
    bystander_receives(s.addr, &mut by, "", "after them");
    let st = stats(s.addr);
    assert_eq!(kind(&st, "output", "used"), 0, "{st}");
    assert!(num(&st, &["memory", "trims"]) >= 1, "{st}");
    assert!(rss_bytes(&s) <= base + 3 * MIB + 16 * MIB);
}

/// The MongooseIM archives are in the account: reported (they live within
/// `--history-total-bytes`, at most half of it), next to history.
#[cfg(feature = "apps")]
#[test]
fn app_archives_are_reported_in_the_memory_account() {
    let file = std::env::temp_dir().join(format!("ssed-memory-users-{}.txt", std::process::id()));
    std::fs::write(&file, "alice@localhost:makota\nbob@localhost:makrolika\n").unwrap();
    let budget = 4 * MIB;
    let s = Server::start(&[
        "--users",
        file.to_str().unwrap(),
        "--history-total-bytes",
        &budget.to_string(),
    ]);
    let _ = std::fs::remove_file(&file);
    let mut by = Sse::open(s.addr, "/events?stream=watch", "");
    assert_eq!(by.status(), 200);
    let st = stats(s.addr);
    assert_eq!(kind(&st, "archives", "limit"), budget / 2, "{st}");
    assert_eq!(kind(&st, "archives", "used"), 0, "{st}");
    // "alice@localhost:makota" in base64.
    let auth = "Authorization: Basic YWxpY2VAbG9jYWxob3N0Om1ha290YQ==\r\n";
    let text = "m".repeat(4000);
    let body = format!(r#"{{"to":"bob@localhost","body":"{text}"}}"#);
    for _ in 0..200 {
        let r = request(
            s.addr,
            format!(
                "POST /api/messages HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    bystander_receives(s.addr, &mut by, "", "after the messages");
    let st = stats(s.addr);
    // 200 messages of 4,000 bytes, each archive keeping its newest ones:
    // hundreds of KB archived, within half the history budget; the
    // account's total holds archives and history.
    let archived = kind(&st, "archives", "used");
    assert!((400_000..=budget / 2).contains(&archived), "{st}");
    assert!(
        num(&st, &["memory", "used"]) >= archived + kind(&st, "history", "used"),
        "{st}"
    );
    assert!(kind(&st, "history", "used") + archived <= budget, "{st}");
}

/// `/metrics`' sample of one kind's metric (`ssed_memory_kind_bytes`...).
#[cfg(any(feature = "mercure", feature = "redis"))]
fn metric_of(addr: SocketAddr, name: &str, kind: &str) -> Option<u64> {
    let m = get(addr, "/metrics").text();
    let key = format!("ssed_{name}{{kind=\"{kind}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.parse().ok())
}

/// Issue 19 item 5: the selector registry is charged to the memory
/// account's `selectors` kind. A token holder (no per-address pool) who
/// subscribes to ever more distinct long templates is refused with a `503`
/// and a JSON error naming the kind once the kind's limit (a sixteenth of
/// what `--memory-max` leaves beside history: 256 KiB here) would pass;
/// `/stats` and `/metrics` show the bytes and the refusal; a selector that
/// exists and exact topics still subscribe.
#[cfg(feature = "mercure")]
#[test]
fn selector_state_is_charged_and_refused_past_its_limit() {
    use crate::mercure::{enc, sub_token, HUB, KEY};
    let history = 65536u64;
    let s = Server::start(&[
        "--jwt-key",
        KEY,
        "--history-total-bytes",
        &history.to_string(),
        "--memory-max",
        &(history + 4 * MIB).to_string(),
    ]);
    let limit = 4 * MIB / 16;
    let st = stats(s.addr);
    assert_eq!(kind(&st, "selectors", "limit"), limit, "{st}");
    let empty = kind(&st, "selectors", "used");
    let auth = format!("Authorization: Bearer {}\r\n", sub_token(&["*"]));
    // ~1 KiB templates: a few KiB each compiled, with their streams.
    let template = |i: usize| format!("/{}/{i}/{{id}}", "t".repeat(960));
    let path = |i: usize| format!("{HUB}?topic={}", enc(&template(i)));
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        let sub = Sse::open(s.addr, &path(i), &auth);
        match sub.status() {
            200 => held.push(sub),
            503 => {
                refused = Some(i);
                break;
            }
            other => panic!("template {i}: {other}: {}", sub.head),
        }
    }
    let n = refused.expect("never refused: the selectors kind is not charged");
    assert!(n >= 10, "refused after only {n} selectors");
    // The refusal is a JSON error that says which memory is full.
    let r = request(
        s.addr,
        format!("GET {} HTTP/1.1\r\nHost: t\r\n{auth}\r\n", path(n)).as_bytes(),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("selectors memory"), "{msg}");
    let st = stats(s.addr);
    let used = kind(&st, "selectors", "used");
    eprintln!(
        "memory: {n} selector streams of ~1 KiB templates: selectors {} KiB (limit {} KiB, empty {} KiB)",
        used >> 10,
        limit >> 10,
        empty >> 10
    );
    // Each selector is counted (several KiB each) and the limit held
    // (within what capacity doubling adds after the last charge).
    assert!(used >= empty + n as u64 * 4096, "{st}");
    assert!(used <= limit + limit / 8, "{st}");
    assert!(kind(&st, "selectors", "refused") >= 2, "{st}");
    assert!(num(&st, &["rejected", "memory_selectors"]) >= 2, "{st}");
    assert_eq!(
        metric_of(s.addr, "memory_kind_bytes", "selectors"),
        Some(used)
    );
    assert_eq!(
        metric_of(s.addr, "memory_kind_limit_bytes", "selectors"),
        Some(limit)
    );
    assert!(metric_of(s.addr, "memory_refused_total", "selectors").unwrap() >= 2);
    // What exists costs nothing more; exact topics are no selectors.
    let again = Sse::open(s.addr, &path(0), &auth);
    assert_eq!(again.status(), 200, "{}", again.head);
    let exact = Sse::open(s.addr, &format!("{HUB}?topic=/books/1"), &auth);
    assert_eq!(exact.status(), 200, "{}", exact.head);
}

/// Issue 19 item 5: what the Redis bus holds for a history fetch is
/// charged to the `bus` kind and given back. A node resuming a stream of
/// 6 MiB in Redis reads a fetch page larger than one read pass (4 MiB), so
/// a loop turn ends with part of it buffered: the kind's peak shows it.
/// Once the page is taken the buffer shrinks and the kind empties. A node
/// with a small `--memory-max` (a 2 MiB bus limit) asks pages of at most a
/// quarter of its room: the same resume arrives whole in more, smaller
/// pages, its bus kind never past its limit.
#[cfg(feature = "redis")]
#[test]
fn bus_fetches_are_charged_and_released() {
    use crate::redis::{node, Redis};
    let Some(r) = Redis::start() else { return };
    let extra = [
        "--history-bytes",
        "16777216",
        "--history-total-bytes",
        "67108864",
        "--max-pending-bytes",
        "67108864",
    ];
    let a = node(&r, &extra);
    let body = "f".repeat(128 << 10);
    let ids: Vec<String> = (0..48)
        .map(|_| {
            let r = post(a.addr, "/events?stream=big", "text/plain", &body);
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    let small_max = (64 * MIB + 4 * MIB).to_string();
    let mut small_args = extra.to_vec();
    small_args.extend(["--memory-max", small_max.as_str()]);
    for (args, bus_limit) in [(&extra[..], 128 * MIB), (&small_args[..], 2 * MIB)] {
        let b = node(&r, args);
        let st = stats(b.addr);
        assert_eq!(kind(&st, "bus", "limit"), bus_limit, "{st}");
        let idle = kind(&st, "bus", "used");
        assert!(idle < 1 << 20, "{st}");
        let before = num(&st, &["redis", "fetches"]);
        let mut s = Sse::open(
            b.addr,
            "/events?stream=big",
            &format!("Last-Event-ID: {}\r\n", ids[0]),
        );
        assert_eq!(s.status(), 200, "{}", s.head);
        let mut got = 0;
        while got < 47 {
            let e = s
                .next_event(T)
                .unwrap_or_else(|| panic!("{got} events, then none: {}", stats(b.addr)));
            assert_ne!(e.event.as_deref(), Some("gap"), "{e:?}");
            if e.id.is_some() {
                assert_eq!(e.data().len(), body.len());
                got += 1;
            }
        }
        assert!(s
            .next_event(std::time::Duration::from_millis(300))
            .is_none());
        let st = stats(b.addr);
        let (peak, used) = (kind(&st, "bus", "peak"), kind(&st, "bus", "used"));
        let fetches = num(&st, &["redis", "fetches"]) - before;
        eprintln!(
            "memory: a 6 MiB resume over the bus, limit {} MiB: bus peak {} KiB, now {} KiB, {fetches} fetch pages",
            bus_limit / MIB,
            peak >> 10,
            used >> 10
        );
        // Charged while held: more than one 128 KiB entry at once.
        assert!(peak >= 256 << 10, "{st}");
        assert!(peak <= bus_limit, "{st}");
        // Released: the read buffer gave its capacity back.
        assert!(used <= idle.max(512 << 10), "{st}");
        assert_eq!(kind(&st, "bus", "refused"), 0, "{st}");
        assert_eq!(
            metric_of(b.addr, "memory_kind_bytes", "bus"),
            Some(kind(&stats(b.addr), "bus", "used"))
        );
        if bus_limit == 2 * MIB {
            // Pages of at most 512 KiB: 6 MiB takes a dozen or more.
            assert!(fetches >= 10, "{fetches} pages");
        }
    }
}

/// The account's `tails` figures: bytes held and charges refused.
fn tails(addr: SocketAddr) -> (u64, u64) {
    let j = stats(addr);
    (
        num(&j, &["memory", "kinds", "tails", "used"]),
        num(&j, &["memory", "kinds", "tails", "refused"]),
    )
}

/// `ssed_memory_kind_bytes{kind="tails"}` in `/metrics`.
fn tails_metric(addr: SocketAddr) -> u64 {
    let m = get(addr, "/metrics").text();
    m.lines()
        .find_map(|l| l.strip_prefix("ssed_memory_kind_bytes{kind=\"tails\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("tails in /metrics")
}

/// Subscribers that stop reading are cut inside a frame that history then
/// evicts: the frames only their tails keep alive are charged to the
/// account's `tails` kind (in `/stats` and `/metrics`), at most one frame
/// per subscriber, and given back when they disconnect.
#[test]
fn stalled_readers_tails_are_charged_and_released() {
    let s = Ssed::new().args(["--history", "2"]).start();
    let readers: Vec<Sse> = (0..4)
        .map(|_| Sse::open(s.addr, "/events?stream=t", ""))
        .collect();
    assert!(readers.iter().all(|r| r.status() == 200));
    assert_eq!(tails(s.addr), (0, 0));
    let body = vec![b'x'; 64 << 10];
    let mut c = Conn::open(s.addr);
    // Their sockets fill, each is cut in a frame, and later publishes
    // evict it from the two retained.
    let mut n = 0;
    while tails(s.addr).0 == 0 {
        assert!(n < 2_000, "no tail charged after {n} events");
        let r = post_on(&mut c, "/events?stream=t", "", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        n += 1;
    }
    // Keep publishing until every reader is cut in an evicted frame (or
    // they share them), then a few more: the figure holds still.
    for _ in 0..8 {
        post_on(&mut c, "/events?stream=t", "", &body);
    }
    let frame = body.len() as u64 + 64;
    assert!(wait_until(T, || tails_metric(s.addr) > 0));
    let (used, refused) = tails(s.addr);
    assert!(used > 0 && used <= 4 * frame, "{used} bytes for 4 tails");
    assert_eq!(refused, 0);
    let j = stats(s.addr);
    assert_eq!(num(&j, &["slow_consumers_dropped"]), 0, "{j}");
    assert_eq!(num(&j, &["connections", "sse"]), 4, "{j}");
    drop(readers);
    assert!(
        wait_until(T, || tails(s.addr).0 == 0),
        "tails not released: {:?}",
        tails(s.addr)
    );
    assert_eq!(tails_metric(s.addr), 0);
}

/// Past the `tails` kind's limit (a quarter of the 4 MiB headroom
/// `--memory-max` leaves here), the subscribers whose tails keep the
/// largest evicted frames alive are dropped, as `--max-pending-bytes`
/// drops a slow subscriber, and the refusal counted; the one left within
/// the limit stays.
#[test]
fn tails_past_their_limit_drop_their_subscribers() {
    let history = 16u64 << 20;
    let s = Ssed::new()
        .args(["--history", "1", "--history-bytes", "2097152"])
        .args(["--history-total-bytes", &history.to_string()])
        .args(["--memory-max", &(history + (4 << 20)).to_string()])
        .args(["--max-pending-bytes", &(64u64 << 20).to_string()])
        .start();
    // Three streams, so the frames the readers are cut in are distinct.
    let readers: Vec<Sse> = (0..3)
        .map(|i| Sse::open(s.addr, &format!("/events?stream=s{i}"), ""))
        .collect();
    assert!(readers.iter().all(|r| r.status() == 200));
    let body = vec![b'y'; 900_000];
    let mut c = Conn::open(s.addr);
    let mut rounds = 0;
    while tails(s.addr).1 == 0 {
        assert!(
            rounds < 200,
            "no refusal after {rounds} rounds: {:?}",
            tails(s.addr)
        );
        for i in 0..3 {
            let r = post_on(&mut c, &format!("/events?stream=s{i}"), "", &body);
            assert_eq!(r.status, 200, "{}", r.text());
        }
        rounds += 1;
    }
    // 3 × 900 kB against 1 MiB: two go, the third fits.
    let dropped = || num(&stats(s.addr), &["slow_consumers_dropped"]);
    assert!(wait_until(T, || dropped() == 2), "{}", stats(s.addr));
    assert!(
        wait_until(T, || tails(s.addr).0 <= 1 << 20),
        "{:?}",
        tails(s.addr)
    );
    assert_eq!(num(&stats(s.addr), &["connections", "sse"]), 1);
    drop(readers);
    assert!(
        wait_until(T, || tails(s.addr).0 == 0),
        "{:?}",
        tails(s.addr)
    );
}
