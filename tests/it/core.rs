//! Core behaviour over real sockets: framing, multi-stream delivery,
//! resume, gaps, heartbeats, publishing, auth, keep-alive, operations.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;

#[test]
fn frame_bytes_are_exact() {
    let s = Server::start(&["--heartbeat", "0", "--retry", "1000"]);
    let mut sub = Sse::open(s.addr, "/events?stream=exact", "");
    assert!(sub.head.starts_with("HTTP/1.1 200 OK\r\n"), "{}", sub.head);
    for h in [
        "Content-Type: text/event-stream\r\n",
        "Cache-Control: no-cache\r\n",
        "X-Accel-Buffering: no\r\n",
    ] {
        assert!(sub.head.contains(h), "missing {h:?} in {}", sub.head);
    }
    assert!(!sub.head.to_ascii_lowercase().contains("content-encoding"));
    // HTTP/1.1 streams are chunked: clients that fill a read buffer before
    // parsing (sseclient-py over urllib3) see every event at once.
    assert!(
        sub.head.contains("Transfer-Encoding: chunked\r\n"),
        "{}",
        sub.head
    );
    assert!(!sub.head.to_ascii_lowercase().contains("content-length"));
    let retry = sub.next_block(T).expect("retry block");
    let ms: u32 = retry
        .retry
        .as_deref()
        .expect("retry field")
        .parse()
        .unwrap();
    assert!(
        (1000..2000).contains(&ms),
        "retry {ms} outside [1000, 2000)"
    );
    // A line, not a block: the first event ends the block it opens.
    assert_eq!(retry.raw, format!("retry: {ms}\n"));

    let id1 = publish(s.addr, "exact", "one\ntwo\r\nthree\rfour");
    let r = post(
        s.addr,
        "/events?stream=exact&event=update",
        "text/plain",
        "",
    );
    let id2 = r.json()["id"].as_str().unwrap().to_string();
    let r = post(
        s.addr,
        "/events?stream=exact&event=message",
        "text/plain",
        "plain",
    );
    let id3 = r.json()["id"].as_str().unwrap().to_string();

    let e = sub.next_block(T).unwrap();
    assert_eq!(
        e.raw,
        format!("id: {id1}\ndata: one\ndata: two\ndata: three\ndata: four\n\n")
    );
    let e = sub.next_block(T).unwrap();
    assert_eq!(e.raw, format!("id: {id2}\nevent: update\ndata:\n\n"));
    let e = sub.next_block(T).unwrap();
    assert_eq!(e.raw, format!("id: {id3}\ndata: plain\n\n"));
    // On the wire: one chunk per block, exactly.
    let chunk = |s: String| format!("{:x}\r\n{s}\r\n", s.len());
    let want = [
        chunk(format!("retry: {ms}\n")),
        chunk(format!(
            "id: {id1}\ndata: one\ndata: two\ndata: three\ndata: four\n\n"
        )),
        chunk(format!("id: {id2}\nevent: update\ndata:\n\n")),
        chunk(format!("id: {id3}\ndata: plain\n\n")),
    ]
    .concat();
    assert_eq!(String::from_utf8_lossy(&sub.wire), want);
}

#[test]
fn retry_is_jittered_per_connection() {
    let s = Server::start(&["--heartbeat", "0", "--retry", "500"]);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut sub = Sse::open(s.addr, "/events?stream=j", "");
        let ms: u32 = sub.next_block(T).unwrap().retry.unwrap().parse().unwrap();
        assert!((500..1000).contains(&ms));
        seen.insert(ms);
    }
    assert!(
        seen.len() > 1,
        "20 connections all got the same retry {seen:?}"
    );
}

#[test]
fn multi_stream_delivery_in_id_order() {
    let s = Server::start(&["--heartbeat", "0"]);
    let mut sub = Sse::open(s.addr, "/events?stream=a&stream=b", "");
    let mut only_a = Sse::open(s.addr, "/events?stream=a", "");
    let ia = publish(s.addr, "a", "to a");
    let ib = publish(s.addr, "b", "to b");
    // One event to both streams reaches a two-stream reader once.
    let r = post(s.addr, "/events?stream=a&stream=b", "text/plain", "to both");
    assert_eq!(r.json()["subscribers"], 2, "{}", r.text());
    let iab = r.json()["id"].as_str().unwrap().to_string();
    let got: Vec<(String, String)> = (0..3)
        .map(|_| sub.next_event(T).unwrap())
        .map(|e| (e.id.clone().unwrap(), e.data()))
        .collect();
    assert_eq!(
        got,
        vec![
            (ia.clone(), "to a".into()),
            (ib, "to b".into()),
            (iab.clone(), "to both".into())
        ]
    );
    assert!(
        sub.next_event(Duration::from_millis(300)).is_none(),
        "duplicate delivery"
    );
    assert_eq!(only_a.next_event(T).unwrap().id.unwrap(), ia);
    assert_eq!(only_a.next_event(T).unwrap().id.unwrap(), iab);
}

#[test]
fn resume_on_one_stream_is_exact() {
    let s = Server::start(&["--heartbeat", "0"]);
    let ids: Vec<String> = (0..10)
        .map(|i| publish(s.addr, "r1", &format!("e{i}")))
        .collect();
    let mut sub = Sse::open(
        s.addr,
        "/events?stream=r1",
        &format!("Last-Event-ID: {}\r\n", ids[3]),
    );
    for (i, id) in ids.iter().enumerate().skip(4) {
        let e = sub.next_event(T).unwrap();
        assert_eq!(e.id.as_deref(), Some(id.as_str()));
        assert_eq!(e.data(), format!("e{i}"));
    }
    // Then live, no duplicate.
    let live = publish(s.addr, "r1", "live");
    assert_eq!(sub.next_event(T).unwrap().id.unwrap(), live);
    // The query parameter works the same way.
    let mut q = Sse::open(
        s.addr,
        &format!("/events?stream=r1&last_event_id={}", ids[8]),
        "",
    );
    assert_eq!(q.next_event(T).unwrap().id.unwrap(), ids[9]);
    assert_eq!(q.next_event(T).unwrap().id.unwrap(), live);
}

#[test]
fn resume_across_two_streams_sends_exactly_the_rest_in_order() {
    let s = Server::start(&["--heartbeat", "0"]);
    let mut first = Sse::open(s.addr, "/events?stream=x&stream=y", "");
    let mut ids = Vec::new();
    for i in 0..20 {
        let stream = if i % 2 == 0 { "x" } else { "y" };
        ids.push(publish(s.addr, stream, &format!("n{i}")));
    }
    let mut seen = Vec::new();
    for _ in 0..7 {
        seen.push(first.next_event(T).unwrap().id.unwrap());
    }
    assert_eq!(seen, ids[..7].to_vec());
    drop(first);
    let mut again = Sse::open(
        s.addr,
        "/events?stream=x&stream=y",
        &format!("Last-Event-ID: {}\r\n", seen[6]),
    );
    let mut rest = Vec::new();
    while let Some(e) = again.next_event(Duration::from_millis(500)) {
        rest.push(e.id.unwrap());
    }
    assert_eq!(rest, ids[7..].to_vec(), "exactly the other 13, in id order");
}

fn gap_of(e: &Ev) -> serde_json::Value {
    assert_eq!(e.event.as_deref(), Some("gap"), "{e:?}");
    assert!(e.id.is_none());
    serde_json::from_str(&e.data()).unwrap()
}

#[test]
fn gap_when_history_was_evicted() {
    let s = Server::start(&["--heartbeat", "0", "--history", "3"]);
    let ids: Vec<String> = (0..6)
        .map(|i| publish(s.addr, "g", &format!("{i}")))
        .collect();
    let mut sub = Sse::open(
        s.addr,
        "/events?stream=g&stream=h",
        &format!("Last-Event-ID: {}\r\n", ids[1]),
    );
    let g = gap_of(&sub.next_event(T).unwrap());
    assert_eq!(
        g,
        serde_json::json!({"last_event_id": ids[1], "streams": ["g"]})
    );
    for id in &ids[3..] {
        assert_eq!(sub.next_event(T).unwrap().id.as_ref(), Some(id));
    }
    // No gap when nothing after the id was evicted.
    let mut ok = Sse::open(
        s.addr,
        "/events?stream=g",
        &format!("Last-Event-ID: {}\r\n", ids[2]),
    );
    assert_eq!(ok.next_event(T).unwrap().id.as_ref(), Some(&ids[3]));
}

#[test]
fn gap_for_old_future_and_garbage_ids() {
    let s = Server::start(&["--heartbeat", "0"]);
    let id = publish(s.addr, "k", "kept");
    let n: u64 = id.parse().unwrap();
    for bad in [
        "12".to_string(),
        (n + 1_000_000).to_string(),
        "not-a-number".to_string(),
    ] {
        let mut sub = Sse::open(
            s.addr,
            "/events?stream=k",
            &format!("Last-Event-ID: {bad}\r\n"),
        );
        let g = gap_of(&sub.next_event(T).unwrap());
        assert_eq!(g["last_event_id"], bad.as_str());
        assert_eq!(g["streams"], serde_json::json!(["k"]));
        let e = sub.next_event(T).unwrap();
        assert_eq!(
            (e.id.as_deref(), e.data().as_str()),
            (Some(id.as_str()), "kept"),
            "retained events follow the gap"
        );
    }
}

#[test]
fn heartbeat_arrives_when_quiet() {
    let s = Server::start(&["--heartbeat", "0.3"]);
    let mut sub = Sse::open(s.addr, "/events?stream=hb", "");
    sub.next_block(T).unwrap(); // retry
    let b = sub.next_block(T).expect("heartbeat");
    assert!(b.comment, "{b:?}");
    assert_eq!(b.raw, ":\n");
    let b = sub.next_block(T).expect("second heartbeat");
    assert_eq!(b.raw, ":\n");
    // An event after heartbeats is the next block, and nothing between
    // them ended a block a lax client would dispatch.
    let id = publish(s.addr, "hb", "x");
    let e = sub.next_event(T).expect("event");
    assert_eq!(e.id.as_deref(), Some(id.as_str()));
    assert_eq!(sub.empty_blocks, 0);
    assert!(
        !String::from_utf8_lossy(&sub.wire).contains("\n\n\r\n2\r\n:"),
        "{:?}",
        String::from_utf8_lossy(&sub.wire)
    );
}

#[test]
fn no_heartbeat_when_disabled() {
    // A control server with 1 s heartbeats paces the test: by the time its
    // subscriber has had two, the disabled one would have had some too.
    let off = Server::start(&["--heartbeat", "0"]);
    let on = Server::start(&["--heartbeat", "1"]);
    let mut quiet = Sse::open(off.addr, "/events?stream=hb", "");
    let mut control = Sse::open(on.addr, "/events?stream=hb", "");
    quiet.next_block(T).unwrap(); // retry
    control.next_block(T).unwrap(); // retry
    for _ in 0..2 {
        let b = control.next_block(T).expect("control heartbeat");
        assert_eq!(b.raw, ":\n");
    }
    assert!(quiet.next_block(Duration::from_millis(1)).is_none());
    assert_eq!(stats(off.addr)["heartbeats"], 0);
    assert!(stats(on.addr)["heartbeats"].as_u64().unwrap() >= 2);
}

#[test]
fn publish_forms_and_batches() {
    let s = Server::start(&["--heartbeat", "0"]);
    let mut sub = Sse::open(s.addr, "/events?stream=f", "");
    // JSON object with a non-string value and a type.
    let r = post(
        s.addr,
        "/events?stream=f",
        "application/json",
        r#"{"data":{"n":1,"s":"x"},"event":"obj"}"#,
    );
    assert_eq!(r.status, 200);
    let e = sub.next_event(T).unwrap();
    assert_eq!(
        (e.event.as_deref(), e.data().as_str()),
        (Some("obj"), r#"{"n":1,"s":"x"}"#)
    );
    // JSON string data with retry.
    post(
        s.addr,
        "/events?stream=f",
        "application/json; charset=utf-8",
        r#"{"data":"a\nb","retry":1500}"#,
    );
    let e = sub.next_event(T).unwrap();
    assert_eq!(e.data, vec!["a", "b"]);
    assert_eq!(e.retry.as_deref(), Some("1500"));
    // Batch.
    let r = post(
        s.addr,
        "/events?stream=f",
        "application/json",
        r#"[{"data":"1"},{"data":"2","event":"two"},{"data":3}]"#,
    );
    let ids: Vec<String> = r.json()["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(r.json()["subscribers"], 1);
    for (want_id, want) in ids.iter().zip(["1", "2", "3"]) {
        let e = sub.next_event(T).unwrap();
        assert_eq!((e.id.as_ref(), e.data().as_str()), (Some(want_id), want));
    }
    // Form, Mercure style: topic alias, type alias.
    let r = post(
        s.addr,
        "/events",
        "application/x-www-form-urlencoded",
        "topic=f&type=formy&data=hello+w%C3%B6rld",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let e = sub.next_event(T).unwrap();
    assert_eq!(
        (e.event.as_deref(), e.data().as_str()),
        (Some("formy"), "hello wörld")
    );
    // Raw with ?event=.
    post(
        s.addr,
        "/events?stream=f&event=raw",
        "application/octet-stream",
        "bytes",
    );
    let e = sub.next_event(T).unwrap();
    assert_eq!(
        (e.event.as_deref(), e.data().as_str()),
        (Some("raw"), "bytes")
    );
}

#[test]
fn bad_publishes_are_refused_with_json_errors() {
    let s = Server::start(&["--heartbeat", "0"]);
    let cases: &[(&str, &str, &str)] = &[
        ("/events?stream=b", "application/json", "{nope"),
        ("/events?stream=b", "application/json", r#"{"event":"x"}"#),
        (
            "/events?stream=b",
            "application/json",
            r#"{"data":"x","event":"bad type"}"#,
        ),
        (
            "/events?stream=b",
            "application/json",
            r#"{"data":"x","event":"a:b"}"#,
        ),
        (
            "/events?stream=b",
            "application/json",
            r#"{"data":"x","retry":99999999999}"#,
        ),
        ("/events?stream=b", "application/json", "[]"),
        ("/events", "text/plain", "no stream"),
        ("/events?stream=bad%20name", "text/plain", "x"),
        (
            "/events?stream=b",
            "application/x-www-form-urlencoded",
            "event=x",
        ),
    ];
    for (path, ct, body) in cases {
        let r = post(s.addr, path, ct, body);
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        assert!(r.json()["error"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let r = request(
        s.addr,
        b"POST /events?stream=b HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n\xff\xfe",
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("UTF-8"));
    let r = get(s.addr, "/events");
    assert_eq!(r.status, 400);
}

#[test]
fn hundred_publishes_on_one_keepalive_connection() {
    let s = Server::start(&["--heartbeat", "0"]);
    let mut sub = Sse::open(s.addr, "/events?stream=ka", "");
    let mut c = Conn::open(s.addr);
    let mut ids = Vec::new();
    for i in 0..100 {
        let body = format!("n{i}");
        let r = c.request(
            format!("POST /events?stream=ka HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        );
        assert_eq!(r.status, 200);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    for (i, id) in ids.iter().enumerate() {
        let e = sub.next_event(T).unwrap();
        assert_eq!((e.id.as_ref(), e.data()), (Some(id), format!("n{i}")));
    }
    assert_eq!(
        stats(s.addr)["connections"]["accepted"],
        3,
        "one keep-alive connection served all 100"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Server::start(&["--heartbeat", "0"]);
    let mut c = Conn::open(s.addr);
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.extend_from_slice(format!("POST /events?stream=p HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\np{i}").as_bytes());
        batch.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    c.send(&batch);
    let mut last = 0u64;
    for _ in 0..5 {
        let r = c.response();
        assert_eq!(r.status, 200);
        let id: u64 = r.json()["id"].as_str().unwrap().parse().unwrap();
        assert!(id > last);
        last = id;
        let h = c.response();
        assert_eq!((h.status, h.text().as_str()), (200, "ok"));
    }
    let st: serde_json::Value = get(s.addr, "/streams/p").json();
    assert_eq!(st["published"], 5);
}

#[test]
fn chunked_publish_and_http10() {
    let s = Server::start(&["--heartbeat", "0"]);
    let mut sub = Sse::open(s.addr, "/events?stream=c", "");
    let r = request(
        s.addr,
        b"POST /events?stream=c HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nchun\r\n3\r\nked\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sub.next_event(T).unwrap().data(), "chunked");
    // HTTP/1.0 gets a 1.0 answer and a close.
    let mut c = Conn::open(s.addr);
    let r = c.request(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert!(r.head.starts_with("HTTP/1.0 200 OK\r\n"), "{}", r.head);
    assert!(c.closed_within(T));
    let mut old = Sse::open(s.addr, "/events?stream=c", "");
    let _ = &mut old;
    let mut s10 = TcpStream::connect(s.addr).unwrap();
    s10.write_all(b"GET /events?stream=c HTTP/1.0\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 12];
    s10.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.0 200");
}

#[test]
fn token_is_required_when_set() {
    let s = Server::start(&["--heartbeat", "0", "--publish-token", "s3cret"]);
    let r = post(s.addr, "/events?stream=t", "text/plain", "x");
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("Bearer"));
    let r = request(s.addr, b"POST /events?stream=t HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer wrong\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(r.status, 401);
    let r = request(s.addr, b"POST /events?stream=t HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer s3cret\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(s.addr, b"DELETE /streams/t HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 401);
    assert_eq!(stats(s.addr)["rejected"]["unauthorized"], 2 + 1);
}

#[test]
fn thousand_subscribers_each_get_hundred_events_in_order() {
    // Every client here is 127.0.0.1: lift the per-address cap above 1,000.
    let s = Server::start(&["--heartbeat", "0", "--max-connections-per-ip", "5000"]);
    let mut subs: Vec<Sse> = (0..1000)
        .map(|_| Sse::open(s.addr, "/events?stream=many", ""))
        .collect();
    assert!(wait_until(T, || get(s.addr, "/streams/many").json()
        ["subscribers"]
        == 1000));
    let mut c = Conn::open(s.addr);
    let mut ids = Vec::new();
    for i in 0..100 {
        let body = format!("{i}");
        let r = c.request(
            format!("POST /events?stream=many HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        );
        assert_eq!(r.json()["subscribers"], 1000);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    for (n, sub) in subs.iter_mut().enumerate() {
        for (i, id) in ids.iter().enumerate() {
            let e = sub
                .next_event(T)
                .unwrap_or_else(|| panic!("subscriber {n} missing event {i}"));
            assert_eq!(
                (e.id.as_ref(), e.data()),
                (Some(id), i.to_string()),
                "subscriber {n}"
            );
        }
    }
    let st = stats(s.addr);
    assert_eq!(st["frames_written"], 100_000);
    assert_eq!(st["events_published"], 100);
}

#[test]
fn streams_stats_and_metrics_move_with_traffic() {
    let s = Server::start(&["--heartbeat", "0"]);
    let before = stats(s.addr);
    assert_eq!(before["events_published"], 0);
    let mut sub = Sse::open(s.addr, "/events?stream=m", "");
    let id = publish(s.addr, "m", "hello");
    sub.next_event(T).unwrap();
    let one = get(s.addr, "/streams/m").json();
    assert_eq!(
        one,
        serde_json::json!({"name":"m","subscribers":1,"last_id":id,"history":1,"published":1})
    );
    let list = get(s.addr, "/streams").json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let after = stats(s.addr);
    assert_eq!(after["events_published"], 1);
    assert_eq!(after["frames_written"], 1);
    assert_eq!(after["connections"]["sse"], 1);
    assert_eq!(after["streams"], 1);
    assert!(after["bytes_written"].as_u64().unwrap() > before["bytes_written"].as_u64().unwrap());
    assert!(after["rss_bytes"].as_u64().unwrap() > 0);
    let m = get(s.addr, "/metrics");
    assert_eq!(
        m.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4")
    );
    let text = m.text();
    assert!(text.contains("ssed_events_published_total 1\n"), "{text}");
    assert!(text.contains("ssed_frames_written_total 1\n"));
    assert!(text.contains("# TYPE ssed_connections gauge\n"));
    // DELETE closes subscribers and removes the stream.
    let r = request(s.addr, b"DELETE /streams/m HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.json()["closed"], 1);
    assert!(sub.ended_within(T));
    assert_eq!(get(s.addr, "/streams/m").status, 404);
}

#[test]
fn errors_404_405_with_allow() {
    let s = Server::start(&["--heartbeat", "0"]);
    let r = get(s.addr, "/nowhere");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(r.json()["error"].is_string());
    let r = request(
        s.addr,
        b"PUT /events?stream=a HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 405);
    assert_eq!(
        r.header("allow").as_deref(),
        Some("GET, HEAD, POST, OPTIONS")
    );
    let r = request(
        s.addr,
        b"POST /stats HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(
        (r.status, r.header("allow").as_deref()),
        (405, Some("GET, HEAD"))
    );
    let r = get(s.addr, "/");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
}

#[test]
fn auto_create_off_and_stream_caps() {
    let s = Server::start(&["--heartbeat", "0", "--no-auto-streams"]);
    assert_eq!(get(s.addr, "/events?stream=none").status, 404);
    let s = Server::start(&[
        "--heartbeat",
        "0",
        "--max-streams",
        "2",
        "--max-streams-per-conn",
        "2",
    ]);
    publish(s.addr, "one", "x");
    publish(s.addr, "two", "x");
    let r = post(s.addr, "/events?stream=three", "text/plain", "x");
    assert_eq!(r.status, 503, "{}", r.text());
    let r = get(s.addr, "/events?stream=one&stream=two&stream=three");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("too many streams"));
}

#[test]
fn header_and_idle_timeouts() {
    let s = Server::start(&[
        "--heartbeat",
        "0",
        "--header-timeout",
        "0.5",
        "--idle-timeout",
        "0.5",
    ]);
    let mut slow = Conn::open(s.addr);
    slow.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ");
    let r = slow.response();
    assert_eq!(r.status, 408);
    assert!(r.json()["error"].is_string());
    assert!(slow.closed_within(T));
    let mut idle = Conn::open(s.addr);
    assert_eq!(
        idle.request(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .status,
        200
    );
    assert!(
        idle.closed_within(T),
        "idle keep-alive connection was not closed"
    );
    assert_eq!(stats(s.addr)["rejected"]["timeout"], 1);
}

#[test]
fn sigterm_exits_zero_and_closes_clients() {
    let mut s = Server::start(&["--heartbeat", "0"]);
    let mut sub = Sse::open(s.addr, "/events?stream=bye", "");
    let id = publish(s.addr, "bye", "last words");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc_kill(s.child.id() as i32, 15);
    }
    assert_eq!(
        sub.next_event(T).unwrap().id.unwrap(),
        id,
        "queued event flushed before close"
    );
    assert!(sub.closed_within(T));
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn large_backlog_is_sent_in_full_without_new_publishes() {
    let s = Server::start(&[
        "--heartbeat",
        "0",
        "--history-bytes",
        "8000000",
        "--max-pending-bytes",
        "100000000",
    ]);
    let body = "y".repeat(32 << 10);
    let mut c = Conn::open(s.addr);
    let mut ids = Vec::new();
    for _ in 0..64 {
        let r = c.request(
            format!("POST /events?stream=big HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        );
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    // 2 MiB owed, more than one turn's write budget: all of it must arrive.
    let mut sub = Sse::open(
        s.addr,
        "/events?stream=big",
        &format!("Last-Event-ID: {}\r\n", ids[0]),
    );
    for id in &ids[1..] {
        let e = sub.next_event(T).expect("backlog event");
        assert_eq!(e.id.as_ref(), Some(id));
        assert_eq!(e.data().len(), body.len());
    }
}

#[test]
fn fanout_larger_than_one_turn_stays_complete_and_ordered_while_subscribers_leave() {
    // 3,000 subscribers is more than one loop turn writes to, so passes span
    // turns; subscribers leaving mid-pass move others around in the list.
    let s = Server::start(&["--heartbeat", "0", "--max-connections-per-ip", "10000"]);
    let mut subs: Vec<Option<Sse>> = (0..3000)
        .map(|_| Some(Sse::open(s.addr, "/events?stream=wide", "")))
        .collect();
    assert!(wait_until(T, || get(s.addr, "/streams/wide").json()
        ["subscribers"]
        == 3000));
    let mut c = Conn::open(s.addr);
    let mut ids = Vec::new();
    for i in 0..50 {
        let body = format!("w{i}");
        let r = c.request(
            format!("POST /events?stream=wide HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        );
        ids.push(r.json()["id"].as_str().unwrap().to_string());
        if i == 49 {
            for (n, slot) in subs.iter_mut().enumerate() {
                if n % 7 == 3 {
                    *slot = None;
                }
            }
        }
    }
    let mut checked = 0;
    for (n, sub) in subs.iter_mut().enumerate() {
        let Some(sub) = sub else { continue };
        for (i, id) in ids.iter().enumerate() {
            let e = sub
                .next_event(T)
                .unwrap_or_else(|| panic!("subscriber {n} missing event {i}"));
            assert_eq!(e.id.as_ref(), Some(id), "subscriber {n}");
        }
        checked += 1;
    }
    assert!(checked > 2500);
}
