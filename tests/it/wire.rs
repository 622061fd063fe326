//! Stream framing on the wire: HTTP/1.1 streams are chunked (one chunk per
//! shared frame or per-connection write, a last chunk at the end), HTTP/1.0
//! streams are the bare body until close, partial writes resume inside chunk
//! framing, the crate's own client reads chunked streams, and a bad value
//! from the environment is reported under the variable's name.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn http11_streams_end_with_the_last_chunk() {
    let s = Server::start(&["--heartbeat", "0"]);
    let mut sub = Sse::open(s.addr, "/events?stream=end", "");
    assert!(sub.chunked(), "{}", sub.head);
    sub.next_block(T).expect("retry");
    let id = publish(s.addr, "end", "bye");
    let e = sub.next_event(T).expect("event");
    assert_eq!(
        (e.id.as_deref(), e.data().as_str()),
        (Some(id.as_str()), "bye")
    );
    let r = request(s.addr, b"DELETE /streams/end HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.json()["closed"], 1, "{}", r.text());
    assert!(sub.ended_within(T), "no last chunk after DELETE");
    assert!(sub.wire.ends_with(b"\r\n0\r\n\r\n"), "{:?}", sub.wire);
    // The response is complete, so the connection carries the next request
    // (pooling clients such as Node's fetch reuse it).
    use std::io::{Read, Write};
    sub.stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 512];
    while !got.ends_with(b"ok") {
        let n = sub.stream.read(&mut b).unwrap();
        assert!(n > 0, "closed instead of answering: {got:?}");
        got.extend_from_slice(&b[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{got:?}");
}

#[test]
fn heartbeats_are_chunks_of_their_own() {
    let s = Server::start(&["--heartbeat", "0.2", "--retry", "1000"]);
    let mut sub = Sse::open(s.addr, "/events?stream=hb", "");
    let retry = sub.next_block(T).expect("retry");
    let ms = retry.retry.expect("retry field");
    let hb = sub.next_block(T).expect("heartbeat");
    assert_eq!(hb.raw, ":\n");
    // Neither ends a block: no blank line on the wire.
    let want = format!("{:x}\r\nretry: {ms}\n\r\n2\r\n:\n\r\n", 8 + ms.len());
    assert_eq!(String::from_utf8_lossy(&sub.wire), want);
}

#[test]
fn http10_streams_are_the_bare_body_until_close() {
    let s = Server::start(&["--heartbeat", "0", "--retry", "1000"]);
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"GET /events?stream=old HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.ends_with(b"\n") {
        let n = c.read(&mut b).expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    let id = wait_publish(s.addr, "old", "plain");
    let r = request(s.addr, b"DELETE /streams/old HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.json()["closed"], 1, "{}", r.text());
    loop {
        match c.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) => panic!("no close: {e}; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    let retry = body.split('\n').next().unwrap_or("");
    assert!(retry.starts_with("retry: "), "{body:?}");
    // The retry line and the first event are one block.
    assert_eq!(body, format!("{retry}\nid: {id}\ndata: plain\n\n"));
}

/// Publishes once the stream has its subscriber, so nothing races the
/// subscription.
fn wait_publish(addr: std::net::SocketAddr, stream: &str, data: &str) -> String {
    assert!(wait_until(T, || {
        let r = get(addr, &format!("/streams/{stream}"));
        r.status == 200 && r.json()["subscribers"] == 1
    }));
    publish(addr, stream, data)
}

/// A TCP connection whose receive buffer is set small before the
/// handshake, so the server's writes are cut often.
fn connect_small_rcvbuf(addr: std::net::SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let std::net::SocketAddr::V4(a) = addr else {
        panic!("IPv4 expected")
    };
    // SAFETY: plain socket calls on a fresh descriptor we own; the
    // sockaddr and option value live across the calls that read them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
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
        assert_eq!(rc, 0, "connect");
        TcpStream::from_raw_fd(fd)
    }
}

/// Publishes many events over one connection, pipelined in batches.
fn publish_many(c: &mut Conn, stream: &str, bodies: &[Vec<u8>]) -> Vec<String> {
    let mut ids = Vec::new();
    for batch in bodies.chunks(400) {
        let mut req = Vec::new();
        for body in batch {
            req.extend_from_slice(
                format!(
                    "POST /events?stream={stream} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            req.extend_from_slice(body);
        }
        c.send(&req);
        for _ in batch {
            let r = c.response();
            assert_eq!(r.status, 200, "{}", r.text());
            ids.push(r.json()["id"].as_str().expect("id").to_string());
        }
    }
    ids
}

/// A subscriber with a small receive buffer stops reading while large and
/// tiny frames pile up, then reads in small paced pieces: the server's
/// writes are cut wherever the socket fills (inside SSE bytes, chunk
/// headers and chunk trailers alike: with tiny frames, framing is a sixth
/// of the bytes) and every resumption must continue the framing exactly.
/// The strict decoder fails the test on any misframing; every event
/// arrives whole and in order.
#[test]
fn partial_writes_resume_inside_chunk_framing() {
    let s = Server::start(&[
        "--heartbeat",
        "0.05",
        "--history",
        "100000",
        "--history-bytes",
        "64000000",
        "--max-pending-bytes",
        "64000000",
        "--max-body",
        "300000",
        "--write-timeout",
        "60",
    ]);
    let sock = connect_small_rcvbuf(s.addr);
    let mut sub = Sse::on(sock, "/events?stream=slow", "");
    assert!(sub.chunked());
    sub.next_block(T).expect("retry");
    let mut c = Conn::open(s.addr);
    let mut bodies = Vec::new();
    // More than the kernel's socket buffers (4 MiB here) hold, so the
    // server blocks and its writes are cut.
    for round in 0..12 {
        for (i, n) in [200_000usize, 1, 70_001, 2, 4097, 250_000]
            .into_iter()
            .enumerate()
        {
            bodies.push(vec![b'a' + ((round * 7 + i) % 26) as u8; n]);
        }
        for i in 0..100 {
            bodies.push(vec![b'a' + (i % 26) as u8; 1 + i % 3]);
        }
    }
    let ids = publish_many(&mut c, "slow", &bodies);
    // The subscriber must be behind, with bytes held for it, for this test
    // to mean anything.
    let st = get(s.addr, "/stats").json();
    assert_eq!(st["connections"]["blocked"], 1, "{st}");
    sub.read_size = 4096;
    sub.pace = Some(Duration::from_micros(20));
    let deadline = Instant::now() + Duration::from_secs(120);
    for (id, body) in ids.iter().zip(&bodies) {
        let e = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let b = sub.next_block(left).expect("an event");
            if !b.data.is_empty() {
                break b;
            }
            assert!(b.comment, "unexpected block {:?}", b.raw);
        };
        assert_eq!(e.id.as_deref(), Some(id.as_str()));
        assert!(e.data().as_bytes() == &body[..], "event {id} corrupted");
    }
    let chunks = sub.dechunk.as_ref().map(|d| d.chunks).unwrap_or(0);
    assert!(
        chunks > ids.len(),
        "{chunks} chunks for {} events",
        ids.len()
    );
}

/// The crate's own client reads a chunked stream (and a heartbeat between
/// events does not disturb it).
#[cfg(feature = "cli")]
#[test]
fn own_client_reads_chunked_streams() {
    let s = Server::start(&["--heartbeat", "0.1"]);
    let head = Sse::open(s.addr, "/events?stream=own", "");
    assert!(head.chunked(), "{}", head.head);
    drop(head);
    let client = ssed::client::Client::new(&s.url("/events"))
        .expect("client")
        .stream("own");
    let mut events = client.events();
    let addr = s.addr;
    let publisher = std::thread::spawn(move || {
        assert!(wait_until(T, || {
            get(addr, "/streams/own").json()["subscribers"] == 1
        }));
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(publish(addr, "own", &format!("line {i}\nsecond")));
            std::thread::sleep(Duration::from_millis(150));
        }
        ids
    });
    let mut got = Vec::new();
    for _ in 0..3 {
        let e = events.next().expect("an event").expect("no error");
        got.push((e.id.unwrap_or_default(), e.data));
    }
    let ids = publisher.join().unwrap();
    let want: Vec<_> = ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, format!("line {i}\nsecond")))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn bad_env_values_name_the_variable() {
    let out = Ssed::new().env("SSED_MAX_BODY", "lots").output();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SSED_MAX_BODY"), "{err}");
    assert!(!err.contains("--max-body"), "{err}");
}

/// A bodiless `PUT`, `DELETE` or `POST` with neither `Content-Length` nor
/// `Transfer-Encoding` (what `curl -X PUT URL` sends) has an empty body
/// (RFC 9112 6.3): each is answered, and the request pipelined after it on
/// the same connection is read as a request, not as a body.
#[test]
fn requests_without_a_length_have_an_empty_body() {
    let s = Server::start(&["--heartbeat", "0"]);
    let mut c = Conn::open(s.addr);
    c.send(
        b"PUT /streams/news HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /streams/news HTTP/1.1\r\nHost: t\r\n\r\n\
          PUT /streams/news HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let created = c.response();
    assert_eq!(created.status, 201, "{}", created.text());
    let listed = c.response();
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.json()["name"], "news", "{}", listed.text());
    assert_eq!(c.response().status, 200, "an existing stream is 200");
    let mut sub = Sse::open(s.addr, "/events?stream=news", "");
    let r = c.request(b"POST /events?stream=news HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    let e = sub.next_event(T).expect("the empty event");
    assert_eq!(
        (e.id, e.data),
        (
            r.json()["id"].as_str().map(String::from),
            vec![String::new()]
        )
    );
    let r = c.request(b"DELETE /streams/news HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(sub.ended_within(T), "DELETE ends the subscriber's stream");
}
