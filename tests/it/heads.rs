//! Request heads nginx refuses and ssed now refuses too (`Host: a, b`, an
//! empty `Host`, bare-LF lines), `Expect: 100-continue`, and `/events`
//! resuming from Mercure's `lastEventID` spelling. Real sockets, real
//! bytes.

use std::io::Read;
use std::time::Duration;

use crate::common::*;

fn refused(addr: std::net::SocketAddr, raw: &[u8], want: &str) {
    let r = request(addr, raw);
    assert_eq!(
        r.status,
        400,
        "{:?}: {}",
        String::from_utf8_lossy(raw),
        r.text()
    );
    let e = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(e.contains(want), "{e}");
}

#[test]
fn host_lists_empty_hosts_and_bare_lf_heads_are_refused() {
    let srv = Server::start(&[]);
    let a = srv.addr;
    // A bystander keeps receiving throughout.
    let mut sub = Sse::open(a, "/events?stream=by", "");
    let before = stats(a)["rejected"]["bad_request"].as_u64().unwrap_or(0);
    refused(
        a,
        b"GET /healthz HTTP/1.1\r\nHost: a, b\r\n\r\n",
        "one host[:port] expected",
    );
    refused(
        a,
        b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n",
        "one host[:port] expected",
    );
    refused(
        a,
        b"GET /healthz HTTP/1.1\r\nHost:\r\n\r\n",
        "empty Host header",
    );
    refused(
        a,
        b"GET /healthz HTTP/1.1\r\nHost:   \r\n\r\n",
        "empty Host header",
    );
    refused(
        a,
        b"GET /healthz HTTP/1.0\r\nHost: \r\n\r\n",
        "empty Host header",
    );
    refused(
        a,
        b"GET /healthz HTTP/1.1\nHost: t\n\n",
        "bare LF in the request head",
    );
    refused(
        a,
        b"GET /healthz HTTP/1.1\r\nHost: t\nX-A: 1\r\n\r\n",
        "bare LF in the request head",
    );
    // What clients send stays accepted.
    for host in ["127.0.0.1:8080", "[::1]:8080", "localhost", "ex.com"] {
        let raw = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let r = request(a, raw.as_bytes());
        assert_eq!((r.status, r.text()), (200, "ok".to_string()), "{host}");
    }
    let after = stats(a)["rejected"]["bad_request"].as_u64().unwrap_or(0);
    assert_eq!(after - before, 7);
    publish(a, "by", "still here");
    let ev = sub
        .next_event(Duration::from_secs(5))
        .expect("bystander event");
    assert_eq!(ev.data(), "still here");
}

#[test]
fn expect_100_continue_gets_an_interim_reply_then_the_final_one() {
    let srv = Server::start(&["--max-body", "1024"]);
    let a = srv.addr;
    let mut c = Conn::open(a);
    c.send(b"POST /events?stream=x HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    // The interim response comes before any body byte is sent.
    let interim = c.response();
    assert_eq!(interim.status, 100, "{interim:?}");
    assert_eq!(interim.head, "HTTP/1.1 100 Continue\r\n\r\n");
    c.send(b"hello");
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["id"].is_string());
    // Refused at the head: the final status, and no 100 first.
    let mut c = Conn::open(a);
    c.send(b"POST /events?stream=x HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\nContent-Length: 4096\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 413, "{r:?}");
    // HTTP/1.0 gets no interim response (it cannot know one).
    let mut s = std::net::TcpStream::connect(a).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"POST /events?stream=x HTTP/1.0\r\nHost: t\r\nContent-Type: text/plain\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(s.read(&mut buf), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "nothing before the body"
    );
    std::io::Write::write_all(&mut s, b"hi").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        out.starts_with(b"HTTP/1.0 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

#[test]
fn events_resume_from_the_mercure_spelling_last_event_id() {
    let srv = Server::start(&[]);
    let a = srv.addr;
    let one = publish(a, "r", "one");
    publish(a, "r", "two");
    let mut s = Sse::open(a, &format!("/events?stream=r&lastEventID={one}"), "");
    let ev = s.next_event(Duration::from_secs(5)).expect("an event");
    assert_eq!(ev.data(), "two");
    // `last_event_id` still wins when both are given.
    let mut s = Sse::open(
        a,
        &format!("/events?stream=r&last_event_id={one}&lastEventID=0"),
        "",
    );
    let ev = s.next_event(Duration::from_secs(5)).expect("an event");
    assert_eq!(ev.data(), "two");
}
