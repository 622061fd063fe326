//! The trust model and the smaller holes of round two of hardening, over
//! real sockets: who may publish without a token (forwarding headers,
//! browser origins, a real nginx in front), `--trusted-proxy`, the member
//! app's per-address bound and its gap names, the parser's Host/method/
//! request-line rules, disallowed preflights, pipelining after a stream,
//! the `/healthz` reserve past the connection cap, and `--users` problems
//! that end start-up with exit 2. Each test keeps a bystander subscriber
//! and checks that it kept receiving, and reads `/stats` for the counts.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::components::{require, NGINX};
use crate::hardening::connect_from;

fn rejected(stats: &serde_json::Value, reason: &str) -> u64 {
    stats["rejected"][reason].as_u64().unwrap_or(0)
}

/// A bystander on `stream`: asserts it receives `data` next.
fn expect(sub: &mut Sse, data: &str) {
    let ev = sub.next_event(T).expect("bystander got nothing");
    assert_eq!(ev.data(), data, "bystander got {:?}", ev.raw);
}

fn post_with(addr: SocketAddr, path: &str, headers: &str, body: &str) -> Response {
    request(
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

fn assert_error(r: &Response, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}{}", r.head, r.text());
    let msg = r.json()["error"].as_str().unwrap_or("").to_string();
    assert!(msg.contains(needle), "error {msg:?} lacks {needle:?}");
}

#[test]
fn forwarded_and_cross_origin_requests_lose_the_loopback_privilege() {
    let s = Server::start(&["--heartbeat", "0"]);
    let mut by = Sse::open(s.addr, "/events?stream=by", "");
    assert_eq!(by.status(), 200);
    let own = format!("Origin: http://{}\r\n", s.addr);
    // Plainly local, and the page ssed serves itself: allowed.
    assert_eq!(
        post_with(s.addr, "/events?stream=by", "", "plain").status,
        200
    );
    expect(&mut by, "plain");
    let r = post_with(
        s.addr,
        "/events?stream=by",
        &format!("{own}Sec-Fetch-Site: same-origin\r\n"),
        "own",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    expect(&mut by, "own");
    let refused = [
        ("X-Forwarded-For: 203.0.113.5\r\n", "through a proxy"),
        ("Forwarded: for=203.0.113.5\r\n", "through a proxy"),
        ("X-Real-IP: 203.0.113.5\r\n", "through a proxy"),
        ("Origin: http://evil.example\r\n", "another origin"),
        ("Origin: http://127.0.0.2:9\r\n", "another origin"),
        ("Origin: null\r\n", "another origin"),
        ("Sec-Fetch-Site: cross-site\r\n", "another origin"),
    ];
    for (h, why) in refused {
        let r = post_with(s.addr, "/events?stream=by", h, "refused");
        assert_error(&r, 403, why);
        assert_error(&r, 403, "--publish-token");
        // DELETE has the same rights.
        let d = request(
            s.addr,
            format!("DELETE /streams/by HTTP/1.1\r\nHost: {}\r\n{h}\r\n", s.addr).as_bytes(),
        );
        assert_error(&d, 403, why);
    }
    // A form POST from a foreign page, as a browser sends it.
    let r = request(
        s.addr,
        format!(
            "POST /events HTTP/1.1\r\nHost: {}\r\nOrigin: http://evil.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 18\r\n\r\ntopic=by&data=evil",
            s.addr
        )
        .as_bytes(),
    );
    assert_error(&r, 403, "another origin");
    // DNS rebinding: Origin equals Host, but Host is not a loopback name.
    let r = post_with(
        s.addr,
        "/events?stream=by",
        "Origin: http://rebound.example:80\r\n",
        "rebound",
    );
    assert_error(&r, 403, "another origin");
    assert_eq!(
        post_with(s.addr, "/events?stream=by", "", "after").status,
        200
    );
    expect(&mut by, "after");
    let j = stats(s.addr);
    assert_eq!(
        rejected(&j, "forbidden_not_local"),
        2 * refused.len() as u64 + 2,
        "{j}"
    );
    assert_eq!(j["events_published"], 3, "{j}");
}

#[test]
fn trusted_proxy_judges_and_counts_the_forwarded_client() {
    let s = Server::start(&[
        "--heartbeat",
        "0",
        "--trusted-proxy",
        "127.0.0.1",
        "--max-connections-per-ip",
        "2",
    ]);
    let mut by = Sse::on(
        connect_from(Ipv4Addr::new(127, 0, 0, 3), s.addr, None).unwrap(),
        "/events?stream=by",
        "",
    );
    // A client the proxy forwarded from the internet is not local...
    let r = post_with(
        s.addr,
        "/events?stream=by",
        "X-Forwarded-For: 203.0.113.7\r\n",
        "far",
    );
    assert_error(&r, 403, "loopback only");
    // ...nor one whose claim of loopback the proxy appended a real address to.
    let r = post_with(
        s.addr,
        "/events?stream=by",
        "X-Forwarded-For: 127.0.0.1, 203.0.113.7\r\n",
        "far",
    );
    assert_error(&r, 403, "loopback only");
    // A client on the proxy's own host is.
    let r = post_with(
        s.addr,
        "/events?stream=by",
        "X-Forwarded-For: 127.0.0.1\r\n",
        "near",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    expect(&mut by, "near");
    // Per-address limits use the forwarded address: 2 per client, while the
    // proxy itself (127.0.0.1) carries more than 2.
    let fwd = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    let a1 = Sse::open(s.addr, "/events?stream=x", &fwd("203.0.113.7"));
    let a2 = Sse::open(s.addr, "/events?stream=x", &fwd("203.0.113.7"));
    assert_eq!((a1.status(), a2.status()), (200, 200));
    let mut c = Conn::open(s.addr);
    let r = c.request(
        b"GET /events?stream=x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n",
    );
    assert_error(&r, 503, "--max-connections-per-ip");
    let b1 = Sse::open(s.addr, "/events?stream=x", &fwd("203.0.113.8"));
    assert_eq!(b1.status(), 200);
    assert_eq!(
        publish(s.addr, "by", "still"),
        publish_id_probe(&mut by, "still")
    );
    let j = stats(s.addr);
    assert_eq!(rejected(&j, "forbidden"), 2, "{j}");
    assert_eq!(rejected(&j, "per_ip_limit"), 1, "{j}");
    assert_eq!(j["connections"]["sse"].as_u64().unwrap_or(0), 4, "{j}");
}

/// Reads the bystander's next event, asserts its data, returns its id.
fn publish_id_probe(sub: &mut Sse, data: &str) -> String {
    let ev = sub.next_event(T).expect("bystander got nothing");
    assert_eq!(ev.data(), data);
    ev.id.expect("id")
}

// ------------------------------------------------------------------ nginx

/// A real nginx (Debian `nginx-light`) with its own prefix, stopped on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx proxying to `upstream` with the README's block verbatim;
    /// `None` (the test skips) when nginx cannot run.
    fn start(upstream: SocketAddr) -> Option<Nginx> {
        let bin = require(&NGINX)?;
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let start = readme.find("## Behind nginx").expect("README section");
        let block = &readme[start..];
        let block = &block[block.find("```nginx\n").expect("nginx block") + 9..];
        let block = &block[..block.find("```").unwrap()];
        assert!(block.contains("127.0.0.1:8080"), "{block}");
        let block = block.replace("127.0.0.1:8080", &upstream.to_string());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("ssed-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  server {{\n    listen 127.0.0.1:{port};\n{block}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn nginx");
        let mut n = Nginx { child, port, dir };
        let up = wait_until(T, || TcpStream::connect(("127.0.0.1", port)).is_ok());
        if !up {
            let log = std::fs::read_to_string(n.dir.join("error.log")).unwrap_or_default();
            let _ = n.child.kill();
            panic!("nginx did not start on {port}: {log}");
        }
        Some(n)
    }
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: nginx's fast shutdown takes its workers with it (SIGKILL
        // would orphan them).
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_case(args: &[&str]) -> Option<(Server, Nginx)> {
    let s = Server::start(args);
    let n = Nginx::start(s.addr)?;
    Some((s, n))
}

#[test]
fn through_nginx_an_anonymous_publish_is_refused_and_events_flow() {
    let Some((s, n)) = nginx_case(&["--heartbeat", "0", "--publish-token", "s3cret"]) else {
        return;
    };
    let Some((open, n2)) = nginx_case(&["--heartbeat", "0"]) else {
        return;
    };
    // No token configured: ssed's loopback privilege must not leak to
    // whoever reaches nginx.
    let mut sub = Sse::open(n2.addr(), "/events?stream=px", "");
    assert_eq!(sub.status(), 200, "{}", sub.head);
    let r = post_with(n2.addr(), "/events?stream=px", "", "anon");
    assert_error(&r, 403, "through a proxy");
    assert_error(&r, 403, "--publish-token");
    // The same from the box itself, not through nginx, is fine.
    assert_eq!(
        post_with(open.addr, "/events?stream=px", "", "direct").status,
        200
    );
    expect(&mut sub, "direct");
    let j = stats(open.addr);
    assert_eq!(rejected(&j, "forbidden_not_local"), 1, "{j}");

    // With a token: through nginx it works, and a subscriber through nginx
    // gets each event promptly (buffering is off).
    let mut sub = Sse::open(n.addr(), "/events?stream=px", "");
    assert_eq!(sub.status(), 200, "{}", sub.head);
    let mut by = Sse::open(s.addr, "/events?stream=px", "");
    let r = post_with(n.addr(), "/events?stream=px", "", "anon");
    assert_error(&r, 401, "--publish-token");
    for i in 0..5 {
        let t0 = Instant::now();
        let r = post_with(
            n.addr(),
            "/events?stream=px",
            "Authorization: Bearer s3cret\r\n",
            &format!("e{i}"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let ev = sub
            .next_event(Duration::from_secs(2))
            .expect("event through nginx");
        assert_eq!(ev.data(), format!("e{i}"));
        println!("through nginx: publish -> delivery {:?}", t0.elapsed());
        expect(&mut by, &format!("e{i}"));
    }
    let j = stats(s.addr);
    assert_eq!(rejected(&j, "unauthorized"), 1, "{j}");
    assert_eq!(j["events_published"], 5, "{j}");
}

/// The README's block proxies every route a deployment needs: the demo
/// page, `/healthz`, `/streams` (`PUT` with the token: 201, no length, as
/// curl sends it), `/events`, `/.well-known/mercure`, an app's stream and
/// the MongooseIM API, `/stats` and `/metrics`.
#[cfg(all(feature = "mercure", feature = "apps"))]
#[test]
fn through_the_readme_block_every_route_answers() {
    let Some((_s, n)) = nginx_case(&["--heartbeat", "0", "--publish-token", "s3cret"]) else {
        return;
    };
    let a = n.addr();
    let page = get(a, "/");
    assert_eq!(page.status, 200, "{}", page.head);
    assert!(page
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/html"));
    assert_eq!(get(a, "/healthz").status, 200);
    let r = request(
        a,
        b"PUT /streams/routes HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer s3cret\r\n\r\n",
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let listed = get(a, "/streams").json();
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "routes"),
        "{listed}"
    );
    let mut events = Sse::open(a, "/events?stream=routes", "");
    let mut hub = Sse::open(a, "/.well-known/mercure?topic=routes", "");
    assert_eq!((events.status(), hub.status()), (200, 200), "{}", hub.head);
    let r = post_with(
        a,
        "/events?stream=routes",
        "Authorization: Bearer s3cret\r\n",
        "both",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    expect(&mut events, "both");
    expect(&mut hub, "both");
    let mut chamber = Sse::open(a, "/streaming/sse?data=hi", "");
    let e = chamber.next_event(T).expect("chamber's first event");
    assert!(e.data().contains("\"hi\""), "{e:?}");
    // The API answers itself: its own Basic challenge, not nginx's 404.
    let api = get(a, "/api/contacts");
    assert_eq!(api.status, 401, "{}", api.text());
    assert_eq!(
        api.header("www-authenticate").as_deref(),
        Some("Basic realm=\"ssed\"")
    );
    assert_eq!(get(a, "/stats").status, 200);
    assert!(get(a, "/metrics").text().contains("ssed_"));
}

#[test]
fn through_nginx_with_trusted_proxy_the_client_address_is_used() {
    let Some((s, n)) = nginx_case(&[
        "--heartbeat",
        "0",
        "--trusted-proxy",
        "127.0.0.1",
        "--max-connections-per-ip",
        "1",
    ]) else {
        return;
    };
    let mut by = Sse::open(s.addr, "/events?stream=tp", "");
    // The client is 127.0.0.1 (this test): local, judged by what nginx
    // forwarded; a client-supplied claim is to the left of nginx's.
    assert_eq!(
        post_with(n.addr(), "/events?stream=tp", "", "near").status,
        200
    );
    expect(&mut by, "near");
    // From 127.0.0.4, one connection per address: a second through nginx is 503.
    let first = Sse::on(
        connect_from(Ipv4Addr::new(127, 0, 0, 4), n.addr(), None).unwrap(),
        "/events?stream=tp",
        "",
    );
    assert_eq!(first.status(), 200);
    let mut c = connect_from(Ipv4Addr::new(127, 0, 0, 4), n.addr(), None).unwrap();
    c.write_all(b"GET /events?stream=tp HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("max-connections-per-ip"), "{text}");
    assert_eq!(
        publish(s.addr, "tp", "still"),
        publish_id_probe(&mut by, "still")
    );
    let j = stats(s.addr);
    assert_eq!(rejected(&j, "per_ip_limit"), 1, "{j}");
}

// ------------------------------------------------------------- members

#[cfg(feature = "apps")]
#[test]
fn member_streams_are_bounded_per_peer_address() {
    let s = Server::start(&["--heartbeat", "0"]);
    let three = Ipv4Addr::new(127, 0, 0, 3);
    let member = |src: Ipv4Addr, id: &str| {
        Sse::on(
            connect_from(src, s.addr, None).unwrap(),
            "/notification/events",
            &format!("Member-ID: {id}\r\n"),
        )
    };
    // A bystander member with history, from another address.
    let mut by = member(three, "keeper");
    let body = r#"{"event":{"type":"T","body":{"n":1}}}"#;
    let r = post_with(
        s.addr,
        "/notification/events",
        "Member-ID: keeper\r\n",
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let first = by.next_event(T).expect("member event");
    let held: Vec<Sse> = (0..64)
        .map(|i| member(Ipv4Addr::LOCALHOST, &format!("m{i}")))
        .collect();
    assert!(held.iter().all(|h| h.status() == 200));
    let mut c = Conn::open(s.addr);
    let r = c.request(b"GET /notification/events HTTP/1.1\r\nHost: t\r\nMember-ID: m64\r\nAccept: text/event-stream\r\n\r\n");
    assert_error(&r, 429, "at most 64");
    // Another address is not held back, and publishing still works.
    let other = member(Ipv4Addr::new(127, 0, 0, 2), "m64");
    assert_eq!(other.status(), 200);
    let r = post_with(
        s.addr,
        "/notification/events",
        "Member-ID: keeper\r\n",
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        by.next_event(T).expect("bystander").event.as_deref(),
        Some("T")
    );
    // The keeper's history is intact: a resume from its first event replays the second.
    let mut again = member(three, "keeper");
    drop(again);
    again = Sse::on(
        connect_from(three, s.addr, None).unwrap(),
        "/notification/events",
        &format!(
            "Member-ID: keeper\r\nLast-Event-ID: {}\r\n",
            first.id.clone().unwrap()
        ),
    );
    let replay = again.next_event(T).expect("replay");
    assert_eq!(replay.event.as_deref(), Some("T"));
    assert_ne!(replay.id, first.id);
    // A freed stream frees its count.
    drop(held);
    assert!(wait_until(T, || {
        let mut c = Conn::open(s.addr);
        c.send(b"GET /notification/events HTTP/1.1\r\nHost: t\r\nMember-ID: late\r\nAccept: text/event-stream\r\n\r\n");
        c.response().status == 200
    }));
    let j = stats(s.addr);
    assert_eq!(rejected(&j, "member_peer_limit"), 1, "{j}");
}

#[cfg(feature = "apps")]
#[test]
fn member_gap_names_the_member_not_the_internal_stream() {
    let s = Server::start(&["--heartbeat", "0"]);
    let mut by = Sse::open(s.addr, "/events?stream=by", "");
    let body = r#"{"event":{"type":"T","body":{}}}"#;
    assert_eq!(
        post_with(s.addr, "/notification/events", "Member-ID: m7\r\n", body).status,
        200
    );
    let mut sub = Sse::open(
        s.addr,
        "/notification/events",
        "Member-ID: m7\r\nLast-Event-ID: 00000000-0000-4000-8000-000000000000\r\n",
    );
    let gap = sub.next_event(T).expect("gap");
    assert_eq!(gap.event.as_deref(), Some("gap"), "{:?}", gap.raw);
    let v: serde_json::Value = serde_json::from_str(&gap.data()).unwrap();
    assert_eq!(v["streams"], serde_json::json!(["m7"]), "{v}");
    assert_eq!(v["last_event_id"], "00000000-0000-4000-8000-000000000000");
    assert!(!gap.raw.contains("!member"), "{:?}", gap.raw);
    assert_eq!(
        sub.next_event(T).expect("retained").event.as_deref(),
        Some("T")
    );
    publish(s.addr, "by", "alive");
    expect(&mut by, "alive");
    assert_eq!(stats(s.addr)["gaps_sent"], 1);
}

// ------------------------------------------------------------- parser

#[test]
fn parser_refuses_what_rfc_9112_refuses() {
    let s = Server::start(&["--heartbeat", "0"]);
    let mut by = Sse::open(s.addr, "/events?stream=by", "");
    let cases: [(&[u8], u16, &str, bool); 6] = [
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400, "need a Host", true),
        (b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host", true),
        (b"get /healthz HTTP/1.1\r\nHost: a\r\n\r\n", 501, "case-sensitive", true),
        (b"Get /healthz HTTP/1.1\r\nHost: a\r\n\r\n", 501, "case-sensitive", true),
        (b"GET /heal thz HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line", true),
        (
            b"OPTIONS /events HTTP/1.1\r\nHost: a\r\nOrigin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\n\r\n",
            403,
            "not allowed; allow it with --cors-origin",
            false,
        ),
    ];
    for (raw, status, needle, closes) in cases {
        let mut c = Conn::open(s.addr);
        let r = c.request(raw);
        assert_error(&r, status, needle);
        if closes {
            assert!(
                c.closed_within(T),
                "{} kept open",
                String::from_utf8_lossy(raw)
            );
        } else {
            assert_eq!(r.header("allow"), None);
            assert_eq!(
                c.request(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
                    .status,
                200
            );
        }
    }
    // HTTP/1.0 needs no Host.
    let r = request(s.addr, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    publish(s.addr, "by", "alive");
    expect(&mut by, "alive");
    let j = stats(s.addr);
    assert_eq!(rejected(&j, "bad_request"), 3, "{j}");
    assert_eq!(rejected(&j, "not_implemented"), 2, "{j}");
    assert_eq!(rejected(&j, "cors_origin"), 1, "{j}");
}

#[test]
fn a_request_pipelined_after_a_subscribe_is_counted() {
    let s = Server::start(&["--heartbeat", "0"]);
    let mut by = Sse::open(s.addr, "/events?stream=by", "");
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"GET /events?stream=p HTTP/1.1\r\nHost: t\r\n\r\nPOST /events?stream=by HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nsneak").unwrap();
    assert!(wait_until(T, || rejected(
        &stats(s.addr),
        "pipelined_after_stream"
    ) == 1));
    publish(s.addr, "by", "alive");
    expect(&mut by, "alive");
    assert_eq!(stats(s.addr)["events_published"], 1);
}

#[test]
fn healthz_is_answered_past_the_connection_cap() {
    let s = Server::start(&["--heartbeat", "0", "--max-connections", "3"]);
    let mut by = Sse::open(s.addr, "/events?stream=by", "");
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(s.addr).unwrap())
        .collect();
    // Wait until the cap is taken (a /healthz on a reserve slot says ok,
    // so probe with a request only ordinary slots answer).
    assert!(wait_until(T, || get(s.addr, "/streams").status == 503));
    let r = get(s.addr, "/healthz");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "ok");
    let r = get(s.addr, "/stats");
    assert_error(&r, 503, "only /healthz is answered");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    publish_when_free(&s, idle, &mut by);
    let j = stats(s.addr);
    assert!(j["healthz_reserve"].as_u64() >= Some(1), "{j}");
    assert!(rejected(&j, "over_capacity") >= 2, "{j}");
}

/// Frees the idle slots, then checks the bystander still receives.
fn publish_when_free(s: &Server, idle: Vec<TcpStream>, by: &mut Sse) {
    drop(idle);
    assert!(wait_until(T, || get(s.addr, "/healthz").status == 200
        && stats(s.addr)["connections"]["total"].as_u64() <= Some(2)));
    publish(s.addr, "by", "alive");
    expect(by, "alive");
}

// ---------------------------------------------------------------- --users

fn start_fails(args: &[&str]) -> String {
    let out = Ssed::new().args(args).output();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "it listened: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[cfg(feature = "apps")]
fn users(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ssed-trust-users-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

#[cfg(feature = "apps")]
#[test]
fn users_file_problems_exit_2_and_a_bom_is_stripped() {
    let missing = std::env::temp_dir().join("ssed-trust-no-such-users-file");
    let err = start_fails(&["--users", missing.to_str().unwrap()]);
    assert!(
        err.contains("ssed-trust-no-such-users-file") && err.contains("cannot read"),
        "{err}"
    );
    for (name, bytes, needle) in [
        ("latin1", &b"alice@x:caf\xe9\n"[..], "not UTF-8"),
        ("dup", b"alice@x:a\nalice@x:b\n", "line 2"),
        ("empty", b"alice@x:\n", "line 1"),
    ] {
        let p = users(name, bytes);
        let err = start_fails(&["--users", p.to_str().unwrap()]);
        assert!(err.contains(needle), "{name}: {err}");
        let _ = std::fs::remove_file(p);
    }
    // A BOM before the first name is not part of it; `basic` in lower case works.
    let p = users("bom", b"\xef\xbb\xbfalice@x:pw\n");
    let s = Server::start(&["--users", p.to_str().unwrap()]);
    let mut by = Sse::open(s.addr, "/events?stream=by", "");
    for scheme in ["Basic", "basic"] {
        let r = request(
            s.addr,
            format!("GET /api/rooms HTTP/1.1\r\nHost: localhost\r\nAuthorization: {scheme} YWxpY2VAeDpwdw==\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "{scheme}: {}", r.text());
    }
    let r = request(s.addr, b"GET /api/rooms HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic YWxpY2VAeDpweA==\r\n\r\n");
    assert_eq!(r.status, 401);
    publish(s.addr, "by", "alive");
    expect(&mut by, "alive");
    assert_eq!(rejected(&stats(s.addr), "unauthorized"), 1);
    let _ = std::fs::remove_file(p);
}

/// In a build without a feature (README "Embedded and minimal builds"),
/// its flag stops start-up with exit 2 and names the feature, rather than
/// being ignored; in a build with every feature there is nothing to refuse.
#[test]
fn flags_of_features_not_built_stop_start_up() {
    let cases: [(&[&str], &str, bool); 5] = [
        (&["--users", "/nonexistent"], "apps", cfg!(feature = "apps")),
        (
            &["--redis", "redis://127.0.0.1:1"],
            "redis",
            cfg!(feature = "redis"),
        ),
        (
            &["--data-dir", "/nonexistent"],
            "journal",
            cfg!(feature = "journal"),
        ),
        (
            &["--jwt-key", "0123456789abcdef0123456789abcdef"],
            "mercure",
            cfg!(feature = "mercure"),
        ),
        (
            &["--private-streams", "p"],
            "mercure",
            cfg!(feature = "mercure"),
        ),
    ];
    for (args, feature, built) in cases {
        if built {
            continue;
        }
        let err = start_fails(args);
        assert!(
            err.contains(args[0]) && err.contains(&format!("`{feature}` feature")),
            "{args:?}: {err}"
        );
    }
    if !cfg!(feature = "cli") {
        let out = Command::new(env!("CARGO_BIN_EXE_ssed"))
            .args(["sub", "http://127.0.0.1:1/events"])
            .output()
            .expect("run ssed");
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("`cli` feature"));
    }
}
