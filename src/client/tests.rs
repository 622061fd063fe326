//! Client behaviour against scripted fake servers: the HTTP cases the real
//! ssed never produces (chunked bodies, 204, wrong content type, 5xx) and
//! stopping. The real-server tests live in `tests/client.rs`.

use super::*;
use std::io::Write;
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Instant;

type Handler = Box<dyn FnOnce(&mut TcpStream) + Send>;

/// A server that answers one connection per handler, in order, recording
/// each request head, then stops listening.
struct Fake {
    url: String,
    requests: mpsc::Receiver<String>,
}

fn fake(handlers: Vec<Handler>) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, requests) = mpsc::channel();
    std::thread::spawn(move || {
        for handler in handlers {
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8(head).unwrap());
            // A slow handler must not hold up the next connection.
            std::thread::spawn(move || handler(&mut stream));
        }
    });
    Fake { url, requests }
}

fn sse(body: &'static str) -> Handler {
    Box::new(move |s: &mut TcpStream| {
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n{body}"
        );
    })
}

fn status(line: &'static str, extra: &'static str, body: &'static str) -> Handler {
    Box::new(move |s: &mut TcpStream| {
        let _ = write!(
            s,
            "HTTP/1.1 {line}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
    })
}

fn data(events: &[Result<Event, Error>]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            Ok(e) => e.data.clone(),
            Err(e) => format!("error: {e}"),
        })
        .collect()
}

#[test]
fn sends_streams_headers_and_accept() {
    let f = fake(vec![sse("data: x\n\n")]);
    let client = Client::new(&f.url)
        .unwrap()
        .stream("a")
        .stream("b/c")
        .header("Authorization", "Bearer t")
        .last_event_id("41")
        .max_failures(Some(1));
    let got: Vec<_> = client.events().take(1).collect();
    assert_eq!(data(&got), ["x"]);
    let req = f.requests.recv().unwrap();
    assert!(
        req.starts_with("GET /events?stream=a&stream=b/c HTTP/1.1\r\n"),
        "{req}"
    );
    for line in [
        "Accept: text/event-stream\r\n",
        "Last-Event-ID: 41\r\n",
        "Authorization: Bearer t\r\n",
    ] {
        assert!(req.contains(line), "{line:?} missing in {req}");
    }
}

#[test]
fn reconnects_after_retry_with_last_event_id() {
    let f = fake(vec![
        sse("retry: 50\n\nid: 1\ndata: a\n\nid: 2\ndata: half"),
        sse("id: 2\ndata: b\n\n"),
        status("204 No Content", "", ""),
    ]);
    let client = Client::new(&f.url).unwrap().stream("s");
    let started = Instant::now();
    let got: Vec<_> = client.events().collect();
    assert_eq!(data(&got), ["a", "b"]);
    assert!(started.elapsed() >= Duration::from_millis(100));
    let reqs: Vec<String> = f.requests.try_iter().collect();
    assert!(!reqs[0].contains("Last-Event-ID"));
    // The cut-off event "half" never counted: the resume point is id 1.
    assert!(reqs[1].contains("Last-Event-ID: 1\r\n"), "{}", reqs[1]);
    assert!(reqs[2].contains("Last-Event-ID: 2\r\n"), "{}", reqs[2]);
}

#[test]
fn chunked_bodies_are_decoded() {
    let f = fake(vec![Box::new(|s: &mut TcpStream| {
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        );
        // Chunk borders fall inside lines and inside a CRLF. One write: the
        // borders are in the chunk framing, whatever TCP does with the
        // segments (reads split at every byte are `http::tests`' job).
        let mut body = Vec::new();
        for chunk in ["id: 1\r", "\ndata: he", "llo\r\n\r\nda", "ta: two\n\n"] {
            let _ = write!(body, "{:x}\r\n{chunk}\r\n", chunk.len());
        }
        body.extend_from_slice(b"0\r\n\r\n");
        let _ = s.write_all(&body);
        // Keep the socket open: the end of the chunked body alone must end
        // this response.
        std::thread::sleep(Duration::from_secs(5));
    })]);
    let client = Client::new(&f.url)
        .unwrap()
        .max_failures(Some(1))
        .retry(Duration::from_millis(10));
    let mut events = client.events();
    let first = events.next().unwrap().unwrap();
    assert_eq!(
        (first.id.as_deref(), first.data.as_str()),
        (Some("1"), "hello")
    );
    assert_eq!(events.next().unwrap().unwrap().data, "two");
    // The reconnect is refused (fake is done): GaveUp after 1 attempt.
    assert!(matches!(
        events.next(),
        Some(Err(Error::GaveUp { attempts: 1, .. }))
    ));
    assert!(events.next().is_none());
}

#[test]
fn http_204_stops_without_error() {
    let f = fake(vec![status("204 No Content", "", "")]);
    let mut events = Client::new(&f.url).unwrap().events();
    assert!(events.next().is_none());
    assert!(events.next().is_none());
}

#[test]
fn client_errors_are_fatal() {
    let f = fake(vec![status(
        "404 Not Found",
        "Content-Type: application/json\r\n",
        "{\"error\":\"no such stream\"}",
    )]);
    let mut events = Client::new(&f.url).unwrap().events();
    match events.next() {
        Some(Err(Error::Http { status, body, .. })) => {
            assert_eq!(status, 404);
            assert!(body.contains("no such stream"));
        }
        other => panic!("{other:?}"),
    }
    assert!(events.next().is_none());
}

#[test]
fn wrong_content_type_is_fatal() {
    let f = fake(vec![status(
        "200 OK",
        "Content-Type: text/html\r\n",
        "<p>hi</p>",
    )]);
    let mut events = Client::new(&f.url).unwrap().events();
    assert!(matches!(
        events.next(),
        Some(Err(Error::NotEventStream { content_type: Some(ct) })) if ct == "text/html"
    ));
    assert!(events.next().is_none());
}

#[test]
fn server_errors_are_retried_then_give_up() {
    let f = fake(vec![
        status("503 Service Unavailable", "", "busy"),
        Box::new(|s: &mut TcpStream| drop(s.shutdown(Shutdown::Both))),
        status("500 Internal Server Error", "", ""),
    ]);
    let client = Client::new(&f.url)
        .unwrap()
        .retry(Duration::from_millis(5))
        .max_failures(Some(3));
    let got: Vec<_> = client.events().collect();
    assert_eq!(got.len(), 1);
    match &got[0] {
        Err(Error::GaveUp { attempts: 3, last }) => {
            assert!(matches!(**last, Error::Http { status: 500, .. }))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.requests.try_iter().count(), 3);
}

#[test]
fn backoff_grows_and_is_capped() {
    let client = Client::new("http://127.0.0.1:9")
        .unwrap()
        .retry(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(1000));
    let mut events = client.events();
    let mut last = Duration::ZERO;
    for failures in 1..=3 {
        events.failures = failures;
        let d = events.backoff();
        let nominal = 100u64 << failures;
        assert!(d >= Duration::from_millis(nominal * 3 / 4), "{d:?}");
        assert!(d < Duration::from_millis(nominal * 5 / 4), "{d:?}");
        assert!(d > last);
        last = d;
    }
    events.failures = 30;
    assert!(events.backoff() <= Duration::from_millis(1000));
}

#[test]
fn stop_handle_unblocks_a_blocked_read() {
    let f = fake(vec![Box::new(|s: &mut TcpStream| {
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: one\n\n");
        // Hold the connection open and silent until the client goes.
        let mut buf = [0u8; 16];
        while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    })]);
    let client = Client::new(&f.url).unwrap();
    let stop = client.stop_handle();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || client.subscribe("s", |e| tx.send(e).unwrap()));
    assert_eq!(rx.recv().unwrap().data, "one");
    stop.stop();
    assert!(stop.is_stopped());
    worker.join().unwrap().unwrap();
}

#[test]
fn stop_wakes_a_backoff_sleep() {
    // The stream asks for a ten-minute reconnection delay, then ends: the
    // client goes to sleep for it. Stopping must end that sleep at once.
    let f = fake(vec![sse("retry: 600000\nid: 1\ndata: a\n\n")]);
    let client = Client::new(&f.url).unwrap().max_failures(None).stream("s");
    let mut events = client.events();
    let stop = events.stop_handle();
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let first = events.next();
        let _ = tx.send(first.and_then(|e| e.ok()).map(|e| e.data));
        // The fake has closed the stream: this call sleeps 600 s unless woken.
        events.next().is_none()
    });
    assert_eq!(rx.recv().unwrap().as_deref(), Some("a"));
    let stopped = Instant::now();
    stop.stop();
    assert!(worker.join().unwrap(), "the iterator ends once stopped");
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "stop took {:?}: the 600 s reconnection sleep was not woken",
        stopped.elapsed()
    );
}

#[test]
fn subscribe_channel_delivers_in_order_and_join_reports() {
    let f = fake(vec![sse(
        "id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\n",
    )]);
    let client = Client::new(&f.url)
        .unwrap()
        .retry(Duration::from_millis(5))
        .max_failures(Some(1));
    let (tx, rx) = mpsc::channel();
    let sub = client.subscribe_channel("s", tx).unwrap();
    let got: Vec<String> = rx.iter().take(3).map(|e| e.data).collect();
    assert_eq!(got, ["a", "b", "c"]);
    // The fake is gone, so the reconnect fails and the thread reports it.
    assert!(matches!(sub.join(), Err(Error::GaveUp { .. })));
}

#[test]
fn read_timeout_reconnects_a_silent_stream() {
    let f = fake(vec![
        Box::new(|s: &mut TcpStream| {
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nretry: 10\nid: 5\ndata: a\n\n",
            );
            std::thread::sleep(Duration::from_secs(3));
        }),
        sse("data: b\n\n"),
    ]);
    let client = Client::new(&f.url)
        .unwrap()
        .read_timeout(Some(Duration::from_millis(200)));
    let got: Vec<_> = client.events().take(2).collect();
    assert_eq!(data(&got), ["a", "b"]);
    let reqs: Vec<String> = f.requests.try_iter().collect();
    assert!(reqs[1].contains("Last-Event-ID: 5\r\n"));
}

#[test]
fn bad_urls_and_headers_are_rejected() {
    assert!(matches!(
        Client::new("https://x/"),
        Err(Error::UnsupportedScheme(_))
    ));
    assert!(matches!(Client::new("nope"), Err(Error::InvalidUrl(_))));
    let mut events = Client::new("http://127.0.0.1:9")
        .unwrap()
        .header("X", "a\r\nb")
        .events();
    assert!(matches!(events.next(), Some(Err(Error::InvalidHeader(_)))));
    assert!(events.next().is_none());
}
