//! Per-address shares of the server's pools (issue 20's remaining gaps),
//! over real sockets from several loopback source addresses: a trusted
//! proxy that names no client pools it under the proxy's own address; one
//! address holds at most its share of the subscriber-only stream pool and
//! of the request-buffer budget. Each test asserts the refusal's status and
//! body, that another address is still served, that a bystander subscriber
//! keeps receiving, and that `/stats` counts it.

use std::io::{BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::hardening::connect_from;
use crate::mercure::{enc, HUB};

const ONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

fn from(src: Ipv4Addr, a: SocketAddr) -> TcpStream {
    let s = connect_from(src, a, None).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One request from `src`, its response.
fn request_from(src: Ipv4Addr, a: SocketAddr, raw: &str) -> Response {
    let mut c = Conn {
        reader: BufReader::new(from(src, a)),
    };
    c.request(raw.as_bytes())
}

fn get_from(src: Ipv4Addr, a: SocketAddr, path: &str, headers: &str) -> Response {
    request_from(
        src,
        a,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n"),
    )
}

fn post_from(src: Ipv4Addr, a: SocketAddr, path: &str, headers: &str, body: &str) -> Response {
    request_from(
        src,
        a,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// A subscription from `src`, which must be accepted.
fn sub_from(src: Ipv4Addr, a: SocketAddr, path: &str, headers: &str) -> Sse {
    let s = Sse::on(from(src, a), path, headers);
    assert_eq!(s.status(), 200, "{path} from {src}: {}", s.head);
    s
}

fn error_of(r: &Response) -> String {
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json"),
        "{}",
        r.head
    );
    r.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {}", r.text()))
        .to_string()
}

fn rejected(st: &serde_json::Value, why: &str) -> u64 {
    st["rejected"][why].as_u64().unwrap_or(0)
}

/// Publishes `data` to `stream` from loopback `src` and checks `by` gets it.
fn bystander_gets(a: SocketAddr, src: Ipv4Addr, by: &mut Sse, stream: &str, data: &str) {
    let r = post_from(src, a, &format!("/events?stream={stream}"), "", data);
    assert_eq!(r.status, 200, "{}", r.text());
    let e = by.next_event(T).expect("the bystander's event");
    assert_eq!(e.data(), data);
}

#[test]
fn a_trusted_proxy_that_names_no_client_pools_it_under_its_own_address() {
    let (proxy_a, proxy_b, plain) = (
        ONE,
        Ipv4Addr::new(127, 0, 0, 3),
        Ipv4Addr::new(127, 0, 0, 2),
    );
    let s = Server::start(&[
        "--heartbeat",
        "0",
        "--trusted-proxy",
        "127.0.0.1",
        "--trusted-proxy",
        "127.0.0.3",
    ]);
    let a = s.addr;
    let mut by = sub_from(plain, a, "/events?stream=watch", "");
    let topics = |p: &str, r: std::ops::Range<usize>| -> String {
        r.map(|i| format!("topic={}", enc(&format!("https://ex.com/{p}/{i}/{{x}}"))))
            .collect::<Vec<_>>()
            .join("&")
    };
    // Proxy A's clients that it does not name (`unknown`, garbage, an
    // obfuscated name) share proxy A's anonymous selector pool: 32.
    let mut held = vec![
        sub_from(
            proxy_a,
            a,
            &format!("{HUB}?{}", topics("a", 0..16)),
            "Forwarded: for=unknown\r\n",
        ),
        sub_from(
            proxy_a,
            a,
            &format!("{HUB}?{}", topics("a", 16..32)),
            "X-Forwarded-For: not-an-address\r\n",
        ),
    ];
    let r = get_from(
        proxy_a,
        a,
        &format!("{HUB}?{}", topics("a", 32..33)),
        "Forwarded: for=_hidden\r\n",
    );
    assert_eq!(r.status, 503, "{}", r.text());
    let msg = error_of(&r);
    assert!(
        msg.contains("from your address") && msg.contains("at most 32"),
        "{msg}"
    );
    // Proxy B's unnamed clients have a pool of their own (they used to
    // share one with every unnamed client of every proxy)...
    held.push(sub_from(
        proxy_b,
        a,
        &format!("{HUB}?{}", topics("b", 0..16)),
        "Forwarded: for=unknown\r\n",
    ));
    // ...and a client proxy A does name has its own too.
    held.push(sub_from(
        proxy_a,
        a,
        &format!("{HUB}?{}", topics("c", 0..1)),
        "X-Forwarded-For: 203.0.113.9\r\n",
    ));
    // Pooled under the proxy's loopback address, an unnamed client is still
    // no loopback client: it may not publish without a token.
    let r = post_from(
        proxy_a,
        a,
        "/events?stream=watch",
        "Forwarded: for=unknown\r\n",
        "sneaky",
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(error_of(&r).contains("token"), "{}", r.text());
    let st = stats(a);
    assert_eq!(rejected(&st, "too_many_selectors"), 1, "{st}");
    assert!(
        rejected(&st, "forbidden") + rejected(&st, "forbidden_not_local") >= 1,
        "{st}"
    );
    bystander_gets(a, plain, &mut by, "watch", "still here");
    assert!(by.next_event(Duration::from_millis(200)).is_none());
    drop(held);
}

#[test]
fn one_address_holds_a_share_of_the_subscriber_stream_pool() {
    let (hog, other) = (Ipv4Addr::new(127, 0, 0, 5), Ipv4Addr::new(127, 0, 0, 6));
    // 1024 streams: an eighth, 128, per address.
    let s = Server::start(&["--heartbeat", "0", "--max-streams", "1024"]);
    let a = s.addr;
    let mut by = sub_from(ONE, a, "/events?stream=watch", "");
    let names = |c: usize| -> String {
        (0..16)
            .map(|j| format!("stream=h{c}-{j}"))
            .collect::<Vec<_>>()
            .join("&")
    };
    let mut held: Vec<Sse> = (0..8)
        .map(|c| sub_from(hog, a, &format!("/events?{}", names(c)), ""))
        .collect();
    let r = get_from(hog, a, "/events?stream=one-more", "");
    assert_eq!(r.status, 429, "{}", r.text());
    let msg = error_of(&r);
    assert!(
        msg.contains("from your address")
            && msg.contains("at most 128")
            && msg.contains("--max-streams"),
        "{msg}"
    );
    // Through the hub too.
    let r = get_from(
        hog,
        a,
        &format!("{HUB}?topic={}", enc("https://ex.com/new")),
        "",
    );
    assert_eq!(r.status, 429, "{}", r.text());
    // Streams that exist cost nothing: the hog still reads its own.
    held.push(sub_from(hog, a, "/events?stream=h0-0", ""));
    // Another address creates streams of its own.
    held.push(sub_from(other, a, "/events?stream=mine&stream=h1-1", ""));
    let st = stats(a);
    assert_eq!(rejected(&st, "subscriber_streams_per_ip"), 2, "{st}");
    assert_eq!(rejected(&st, "too_many_streams"), 0, "{st}");
    // The hog's, `mine`, and the bystander's `watch` (until published to).
    assert_eq!(
        st["stream_lifecycle"]["subscriber_only"].as_u64(),
        Some(128 + 2),
        "{st}"
    );
    bystander_gets(a, ONE, &mut by, "watch", "one");
    // A hog's streams go with its subscribers, and so does its share.
    held.remove(7);
    assert!(
        wait_until(T, || stats(a)["stream_lifecycle"]["subscriber_only"]
            .as_u64()
            == Some(112 + 1)),
        "the hog's streams did not go: {}",
        stats(a)["stream_lifecycle"]
    );
    held.push(sub_from(hog, a, "/events?stream=one-more", ""));
    bystander_gets(a, ONE, &mut by, "watch", "two");
}

/// Reads until the server closes (or `timeout`).
fn read_all(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let end = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut b = [0u8; 65536];
    while Instant::now() < end {
        s.set_read_timeout(Some(end - Instant::now())).unwrap();
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&b[..n]),
        }
    }
    out
}

#[test]
fn one_address_holds_a_share_of_the_request_buffer_budget() {
    let (hog, other) = (Ipv4Addr::new(127, 0, 0, 7), Ipv4Addr::new(127, 0, 0, 8));
    // The default budget: 64 MiB, an eighth of it per address.
    let share = 8 << 20;
    let s = Server::start(&["--heartbeat", "0", "--header-timeout", "60"]);
    let a = s.addr;
    let mut by = sub_from(ONE, a, "/events?stream=watch", "");
    let head = "POST /events?stream=big HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n";
    let part = vec![b'x'; 900_000];
    let each = (head.len() + part.len()) as u64;
    let buffered = || stats(a)["buffered_request_bytes"].as_u64().unwrap();
    // Slow large bodies, one after another: each held until its share is
    // full (9 × 900 KB fit 8 MiB, a tenth does not).
    let mut conns = Vec::new();
    for i in 1..=9u64 {
        let mut c = from(hog, a);
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(&part).unwrap();
        assert!(
            wait_until(T, || buffered() == i * each),
            "request {i} not held: {}",
            buffered()
        );
        conns.push(c);
    }
    let mut c = from(hog, a);
    // The server may close while this is still being written.
    let _ = c.write_all(head.as_bytes());
    let _ = c.write_all(&part);
    let bytes = read_all(&mut c, T);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
    assert!(text.contains("Retry-After: 1\r\n"), "{text}");
    let body = &text[text.find("\r\n\r\n").expect("a head") + 4..];
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON error");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("your address") && msg.contains(&format!("at most {share} bytes")),
        "{msg}"
    );
    // Nothing of the refused request is held; the nine still are.
    assert!(wait_until(T, || buffered() == 9 * each), "{}", buffered());
    // Another address still sends a large publish, and the bystander is
    // still served.
    let big = "y".repeat(600_000);
    let r = post_from(other, a, "/events?stream=other", "", &big);
    assert_eq!(r.status, 200, "{}", r.text());
    bystander_gets(a, other, &mut by, "watch", "served");
    let st = stats(a);
    assert_eq!(rejected(&st, "buffer_share_per_ip"), 1, "{st}");
    assert_eq!(rejected(&st, "buffer_budget"), 0, "{st}");
    // The hog's connections go, and its share is free again.
    drop(conns);
    assert!(wait_until(T, || buffered() == 0), "{}", buffered());
    let r = post_from(hog, a, "/events?stream=big", "", &big);
    assert_eq!(r.status, 200, "{}", r.text());
}
