//! `ssed::client` and `ssed sub` / `ssed pub` against a real ssed process.
//!
//! Each test starts its own server on an ephemeral port. Waiting is done by
//! polling a condition against a deadline, never by sleeping for an event.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Child;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use ssed::client::{Client, Error, Event};

use crate::common::Ssed;

const DEADLINE: Duration = Duration::from_secs(15);

/// A running ssed (the shared harness's), addressed by its base URL.
struct Server {
    _proc: crate::common::Server,
    addr: SocketAddr,
}

impl Server {
    fn start(listen: &str, extra: &[&str]) -> Server {
        let proc = Ssed::bare().args(["--listen", listen]).args(extra).start();
        Server {
            addr: proc.addr,
            _proc: proc,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill(self) {
        drop(self)
    }
}

/// One HTTP/1.1 request on a fresh connection; returns status and body.
fn http(addr: SocketAddr, method: &str, target: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = resp.parse(&buf) {
            let status = resp.code.unwrap();
            let length: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| {
                    std::str::from_utf8(h.value)
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap()
                })
                .unwrap_or(0);
            while buf.len() < len + length {
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "connection closed inside the body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return (
                status,
                String::from_utf8_lossy(&buf[len..len + length]).into(),
            );
        }
        assert!(n > 0, "connection closed inside the head");
    }
}

/// Publishes `data` to `stream`; returns the id and the subscriber count.
fn publish(addr: SocketAddr, stream: &str, data: &str) -> (String, u64) {
    let (status, body) = http(addr, "POST", &format!("/events?stream={stream}"), data);
    assert_eq!(status, 200, "publish failed: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["subscribers"].as_u64().unwrap(),
    )
}

/// Subscribers of `stream`, 0 when it does not exist.
fn subscribers(addr: SocketAddr, stream: &str) -> u64 {
    let (status, body) = http(addr, "GET", &format!("/streams/{stream}"), "");
    if status == 404 {
        return 0;
    }
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["subscribers"].as_u64().unwrap()
}

fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        crate::common::wait_until(DEADLINE, cond),
        "timed out waiting for {what}"
    );
}

/// Runs the client's iterator on a thread, forwarding each item with the
/// reconnection time in force after it.
fn spawn_events(client: Client) -> mpsc::Receiver<(Result<Event, Error>, Duration)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut events = client.events();
        while let Some(item) = events.next() {
            if tx.send((item, events.reconnection_time())).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_event(rx: &mpsc::Receiver<(Result<Event, Error>, Duration)>) -> (Event, Duration) {
    let (item, retry) = rx.recv_timeout(DEADLINE).expect("no event in time");
    (item.expect("client error"), retry)
}

/// Next event that is not a `gap` notice.
fn next_data(rx: &mpsc::Receiver<(Result<Event, Error>, Duration)>) -> Event {
    loop {
        let (event, _) = next_event(rx);
        if event.event != "gap" {
            return event;
        }
    }
}

#[test]
fn reconnect_honours_server_retry() {
    let server = Server::start("127.0.0.1:0", &["--retry", "300", "--heartbeat", "0"]);
    let addr = server.addr;
    let client = Client::new(&server.url())
        .unwrap()
        .stream("retry")
        .retry(Duration::from_secs(20));
    let rx = spawn_events(client);
    wait_until("subscriber", || subscribers(addr, "retry") == 1);
    publish(addr, "retry", "first");
    let (event, retry) = next_event(&rx);
    assert_eq!(event.data, "first");
    // The server draws the value per connection from [retry, 2*retry).
    assert!(
        (300..600).contains(&retry.as_millis()),
        "retry {retry:?} not from the server"
    );

    let (status, body) = http(addr, "DELETE", "/streams/retry", "");
    assert!((200..300).contains(&status), "DELETE: {status} {body}");
    let closed = Instant::now();
    wait_until("subscriber to leave", || subscribers(addr, "retry") == 0);
    wait_until("reconnect", || subscribers(addr, "retry") == 1);
    let delay = closed.elapsed();
    assert!(
        delay + Duration::from_millis(50) >= retry,
        "reconnected after {delay:?}, before the retry of {retry:?}"
    );
    assert!(
        delay < retry + Duration::from_secs(3),
        "reconnected after {delay:?}, retry was {retry:?}"
    );
    publish(addr, "retry", "second");
    assert_eq!(next_data(&rx).data, "second");
}

#[test]
fn last_event_id_resume_yields_each_event_once() {
    let server = Server::start("127.0.0.1:0", &["--retry", "200", "--heartbeat", "0"]);
    let addr = server.addr;
    let rx = spawn_events(Client::new(&server.url()).unwrap().stream("resume"));
    wait_until("subscriber", || subscribers(addr, "resume") == 1);

    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(publish(addr, "resume", &format!("e{i}")).0);
    }
    let mut got: Vec<Event> = (0..3).map(|_| next_data(&rx)).collect();

    // Close the subscriber, then publish while it is away: these events can
    // only arrive through the Last-Event-ID replay.
    let (status, _) = http(addr, "DELETE", "/streams/resume", "");
    assert!((200..300).contains(&status));
    wait_until("subscriber to leave", || subscribers(addr, "resume") == 0);
    for i in 3..6 {
        sent.push(publish(addr, "resume", &format!("e{i}")).0);
    }
    got.extend((3..6).map(|_| next_data(&rx)));
    wait_until("reconnect", || subscribers(addr, "resume") == 1);
    for i in 6..9 {
        sent.push(publish(addr, "resume", &format!("e{i}")).0);
    }
    got.extend((6..9).map(|_| next_data(&rx)));

    let data: Vec<&str> = got.iter().map(|e| e.data.as_str()).collect();
    let want: Vec<String> = (0..9).map(|i| format!("e{i}")).collect();
    assert_eq!(data, want);
    let ids: Vec<&str> = got.iter().map(|e| e.id.as_deref().unwrap()).collect();
    assert_eq!(ids, sent);
    // Nothing else (a duplicate) is pending.
    publish(addr, "resume", "end");
    assert_eq!(next_data(&rx).data, "end");
}

#[test]
fn backoff_grows_while_down_and_resumes_on_restart() {
    let server = Server::start("127.0.0.1:0", &["--retry", "100", "--heartbeat", "0"]);
    let addr = server.addr;
    let client = Client::new(&server.url())
        .unwrap()
        .stream("down")
        .max_backoff(Duration::from_secs(5))
        .max_failures(Some(20));
    let rx = spawn_events(client);
    wait_until("subscriber", || subscribers(addr, "down") == 1);
    let (before, _) = publish(addr, "down", "before");
    let (event, retry) = next_event(&rx);
    assert_eq!(event.data, "before");

    // "Down": the port answers nothing useful. A listener that accepts and
    // closes makes each attempt visible and failed.
    server.kill();
    let listener = TcpListener::bind(addr).expect("rebind the port");
    let mut attempts = Vec::new();
    while attempts.len() < 4 {
        let (conn, _) = listener.accept().unwrap();
        attempts.push(Instant::now());
        drop(conn);
    }
    drop(listener);
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    for pair in gaps.windows(2) {
        assert!(pair[1] > pair[0], "backoff did not grow: {gaps:?}");
    }
    assert!(
        gaps[0] >= retry,
        "first backoff {:?} below retry {retry:?}",
        gaps[0]
    );

    let server = Server::start(&addr.to_string(), &["--retry", "100", "--heartbeat", "0"]);
    wait_until("resubscribe", || subscribers(server.addr, "down") == 1);
    let (after, _) = publish(server.addr, "down", "after");
    // The new process has no history, so it may announce a gap; it must
    // name the id the client resumed from.
    let event = loop {
        let (event, _) = next_event(&rx);
        if event.event != "gap" {
            break event;
        }
        assert!(event.data.contains(&before), "{}", event.data);
    };
    assert_eq!(event.data, "after");
    assert_eq!(event.id.as_deref(), Some(after.as_str()));
}

#[test]
fn subscribe_channel_delivers_in_order() {
    let server = Server::start("127.0.0.1:0", &["--heartbeat", "0"]);
    let addr = server.addr;
    let client = Client::new(&server.url()).unwrap();
    let (tx, rx) = mpsc::channel();
    let sub = client.subscribe_channel("chan", tx).unwrap();
    wait_until("subscriber", || subscribers(addr, "chan") == 1);
    let sent: Vec<String> = (0..50)
        .map(|i| publish(addr, "chan", &format!("m{i}\nline two")).0)
        .collect();
    let got: Vec<Event> = (0..50)
        .map(|_| rx.recv_timeout(DEADLINE).expect("event"))
        .collect();
    for (i, event) in got.iter().enumerate() {
        assert_eq!(event.data, format!("m{i}\nline two"));
        assert_eq!(event.id.as_deref(), Some(sent[i].as_str()));
        assert_eq!(event.event, "message");
    }
    sub.stop();
    sub.join().unwrap();
    wait_until("unsubscribe", || subscribers(addr, "chan") == 0);
}

#[test]
fn subscribe_callback_stops_from_another_thread() {
    let server = Server::start("127.0.0.1:0", &["--heartbeat", "0"]);
    let addr = server.addr;
    let client = Client::new(&server.url())
        .unwrap()
        .stream("extra")
        .last_event_id("0");
    let stop = client.stop_handle();
    let (tx, rx) = mpsc::channel();
    let worker = thread::spawn(move || client.subscribe("cb", |e| tx.send(e).unwrap()));
    wait_until("subscriber", || subscribers(addr, "cb") == 1);
    publish(addr, "cb", "one");
    publish(addr, "extra", "two");
    let data: Vec<String> = rx
        .iter()
        .filter(|e| e.event != "gap")
        .take(2)
        .map(|e| e.data)
        .collect();
    assert_eq!(data, ["one", "two"]);
    stop.stop();
    worker.join().unwrap().unwrap();
}

#[test]
fn client_errors_end_the_iterator() {
    let server = Server::start("127.0.0.1:0", &["--heartbeat", "0"]);
    let mut events = Client::new(&server.url())
        .unwrap()
        .stream("bad name!")
        .events();
    match events.next() {
        Some(Err(Error::Http {
            status: 400, body, ..
        })) => assert!(body.contains("error")),
        other => panic!("expected a 400, got {other:?}"),
    }
    assert!(events.next().is_none());
}

fn ssed(args: &[&str], stdin: &str) -> (i32, String, String) {
    Ssed::bare().args(args).run(stdin)
}

#[test]
fn cli_pub_and_sub() {
    let server = Server::start("127.0.0.1:0", &["--heartbeat", "0"]);
    let addr = server.addr;
    let url = server.url();
    let mut sub = KillOnDrop(
        Ssed::bare()
            .args(["sub", &url, "--stream", "cli", "--json"])
            .spawn(),
    );
    let lines = BufReader::new(sub.0.stdout.take().unwrap()).lines();
    wait_until("ssed sub to subscribe", || subscribers(addr, "cli") == 1);

    let (code, out, err) = ssed(
        &[
            "pub", &url, "--stream", "cli", "--event", "note", "hi there",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let mut ids: Vec<String> = vec![out.trim().to_string()];
    let (code, out, err) = ssed(&["pub", &url, "--stream", "cli", "-"], "a\nb\r\n\nc");
    assert_eq!(code, 0, "{err}");
    ids.extend(out.lines().map(str::to_string));
    assert_eq!(ids.len(), 5, "{ids:?}");

    let want = [
        ("note", "hi there"),
        ("message", "a"),
        ("message", "b"),
        ("message", ""),
        ("message", "c"),
    ];
    let mut lines = lines;
    for (i, (event, data)) in want.iter().enumerate() {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], ids[i].as_str(), "{line}");
        assert_eq!(v["event"], *event, "{line}");
        assert_eq!(v["data"], *data, "{line}");
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cli_usage_errors_exit_2() {
    for args in [
        &["sub", "--nope"][..],
        &["sub"],
        &["pub", "http://127.0.0.1:1", "x"],
        &["pub", "http://127.0.0.1:1", "--stream"],
    ] {
        let (code, out, err) = ssed(args, "");
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    let (code, out, _) = ssed(&["pub", "--help"], "");
    assert_eq!(code, 0);
    assert!(out.contains("usage: ssed pub"));
}

#[test]
fn cli_pub_reports_server_errors() {
    let server = Server::start("127.0.0.1:0", &["--publish-token", "sekret"]);
    let url = server.url();
    let (code, _, err) = ssed(&["pub", &url, "--stream", "t", "x"], "");
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, out, err) = ssed(
        &["pub", &url, "--stream", "t", "--token", "sekret", "x"],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.trim().parse::<u64>().is_ok(), "{out}");
}
