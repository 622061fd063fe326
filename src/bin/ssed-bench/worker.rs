//! The hidden `worker` subcommand: one process holding a slice of the
//! subscriptions.
//!
//! Why processes: one process may have only 20,000 open files, and a 19,000
//! connection run needs 19,000 client sockets besides the server's. Each
//! worker opens its connections (at most `inflight` unanswered at a time, so
//! the server's listen backlog never overflows into SYN retries that would
//! distort the connect rate), reads everything the server sends, and talks
//! to the parent through one JSON line per report on stdout:
//!
//! - `{"type":"ready",...}` once every connection has its `200` head (or
//!   failed, or the timeout passed);
//! - `{"type":"done",...}` when told `stop` on stdin (or stdin closes), when
//!   every live connection has seen `expect` events, or when its lifetime
//!   ends.

use std::io::{self, BufRead, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use serde_json::json;
use slab::Slab;

use crate::args::WorkerOpts;
use crate::net;
use crate::now_ns;
use crate::sse::{scan_head, Head, SseParser};
use crate::stats::Histogram;

const WAKER: Token = Token(usize::MAX);
/// A response head longer than this is not an SSE server's.
const MAX_HEAD: usize = 16 * 1024;

enum Phase {
    /// connect() in progress; the request is sent once writable.
    Connecting,
    /// Request sent; collecting the response head.
    Head(Vec<u8>),
    Streaming(SseParser),
}

struct Conn {
    stream: TcpStream,
    /// Index into the worker's URLs.
    target: usize,
    phase: Phase,
    events: u64,
    /// Queued for closing at the end of this poll batch.
    dead: bool,
}

/// Counters reported to the parent.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    /// Streams the server closed after a `200`.
    server_closed: u64,
    /// Live streams that have seen `expect` events.
    complete: u64,
    events: u64,
    bytes: u64,
    last_event_ns: u64,
    first_error: Option<String>,
}

impl Tally {
    fn fail(&mut self, why: String) {
        self.failed += 1;
        self.first_error.get_or_insert(why);
    }
}

/// Runs the worker; returns the exit code.
pub fn run(o: WorkerOpts) -> i32 {
    match work(&o) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ssed-bench worker: {e}");
            1
        }
    }
}

fn emit(v: serde_json::Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()
}

fn work(o: &WorkerOpts) -> io::Result<()> {
    let started = Instant::now();
    let t_start_ns = now_ns();
    let mut poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let stop = Arc::new(AtomicBool::new(false));
    {
        // stdin carries the parent's `stop`; EOF (parent gone) stops too.
        let stop = Arc::clone(&stop);
        let waker = Arc::clone(&waker);
        std::thread::spawn(move || {
            let stdin = io::stdin();
            let mut line = String::new();
            loop {
                line.clear();
                match stdin.lock().read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line.trim() == "stop" => break,
                    Ok(_) => {}
                }
            }
            stop.store(true, Ordering::SeqCst);
            let _ = waker.wake();
        });
    }

    let requests: Vec<Vec<u8>> = o
        .urls
        .iter()
        .map(|u| net::subscribe_request(u, &o.headers))
        .collect();
    let mut conns: Slab<Conn> = Slab::with_capacity(o.count);
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut t = Tally::default();
    let mut hist = Histogram::new();
    let mut next = 0usize; // connections opened so far
    let mut pending = 0usize; // opened, not yet answered
    let mut ready_sent = false;
    let mut closing: Vec<usize> = Vec::new();

    loop {
        // Open more connections while under the in-flight cap.
        while next < o.count && pending < o.inflight {
            let index = o.start + next;
            let src = net::source_addr(index, o.per_source);
            let target = index % o.urls.len();
            next += 1;
            match net::connect_from(src, o.urls[target].addr, true, o.ready_timeout) {
                Ok(s) => {
                    let mut stream = TcpStream::from_std(s);
                    let entry = conns.vacant_entry();
                    let token = Token(entry.key());
                    poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    entry.insert(Conn {
                        stream,
                        target,
                        phase: Phase::Connecting,
                        events: 0,
                        dead: false,
                    });
                    pending += 1;
                }
                Err(e) => t.fail(format!(
                    "connect from {src} to {}: {e}",
                    o.urls[target].addr
                )),
            }
        }

        let elapsed = started.elapsed();
        if !ready_sent && ((t.ok + t.failed) as usize >= o.count || elapsed >= o.ready_timeout) {
            ready_sent = true;
            emit(json!({
                "type": "ready",
                "ok": t.ok,
                "failed": t.failed,
                "unanswered": o.count as u64 - t.ok - t.failed,
                "t_start_ns": t_start_ns,
                "t_ready_ns": now_ns(),
                "first_error": t.first_error,
            }))?;
        }
        let all_complete = o.expect > 0 && ready_sent && t.complete + t.server_closed >= t.ok;
        if (ready_sent && stop.load(Ordering::SeqCst)) || all_complete || elapsed >= o.lifetime {
            break;
        }

        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        let now = now_ns();
        for ev in events.iter() {
            if ev.token() == WAKER {
                continue;
            }
            let key = ev.token().0;
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            if c.dead {
                continue;
            }
            if let Phase::Connecting = c.phase {
                // Writable (or an error) ends the connect; readiness can
                // be spurious, so a missing peer means "not yet".
                match c.stream.take_error() {
                    Ok(None) => {}
                    Ok(Some(e)) | Err(e) => {
                        t.fail(format!("connect: {e}"));
                        pending -= 1;
                        c.dead = true;
                        closing.push(key);
                        continue;
                    }
                }
                match c.stream.peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
                    Err(e) => {
                        t.fail(format!("connect: {e}"));
                        pending -= 1;
                        c.dead = true;
                        closing.push(key);
                        continue;
                    }
                }
                // ~150 bytes into an empty send buffer: one write suffices;
                // anything short of that is reported, not retried.
                let request = &requests[c.target];
                match c.stream.write(request) {
                    Ok(n) if n == request.len() => c.phase = Phase::Head(Vec::new()),
                    Ok(_) => {
                        t.fail("short write of the request".into());
                        pending -= 1;
                        c.dead = true;
                        closing.push(key);
                        continue;
                    }
                    Err(e) => {
                        t.fail(format!("write request: {e}"));
                        pending -= 1;
                        c.dead = true;
                        closing.push(key);
                        continue;
                    }
                }
            }
            if !(ev.is_readable() || ev.is_read_closed() || ev.is_error()) {
                continue;
            }
            // Read until WouldBlock: mio readiness is edge-triggered.
            loop {
                let n = match c.stream.read(&mut buf) {
                    Ok(0) => {
                        match c.phase {
                            Phase::Streaming(_) => t.server_closed += 1,
                            _ => {
                                t.fail("closed before the response head".into());
                                pending -= 1;
                            }
                        }
                        c.dead = true;
                        closing.push(key);
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        match c.phase {
                            Phase::Streaming(_) => t.server_closed += 1,
                            _ => {
                                t.fail(format!("read: {e}"));
                                pending -= 1;
                            }
                        }
                        c.dead = true;
                        closing.push(key);
                        break;
                    }
                };
                t.bytes += n as u64;
                let mut body: &[u8] = &buf[..n];
                if let Phase::Head(head) = &mut c.phase {
                    head.extend_from_slice(body);
                    match scan_head(head) {
                        Head::Partial if head.len() > MAX_HEAD => {
                            t.fail("response head too long".into());
                            pending -= 1;
                            c.dead = true;
                            closing.push(key);
                            break;
                        }
                        Head::Partial => continue,
                        Head::Refused(line) => {
                            t.fail(format!("server answered {line:?}"));
                            pending -= 1;
                            c.dead = true;
                            closing.push(key);
                            break;
                        }
                        Head::Ok(at, chunked) => {
                            let rest = head.split_off(at);
                            t.ok += 1;
                            pending -= 1;
                            // The body's first bytes may share this read.
                            let mut p = SseParser::new(chunked);
                            feed(
                                &mut p,
                                &rest,
                                now,
                                &mut c.events,
                                o.expect,
                                &mut t,
                                &mut hist,
                            );
                            c.phase = Phase::Streaming(p);
                            body = &[];
                        }
                    }
                }
                if let Phase::Streaming(p) = &mut c.phase {
                    feed(p, body, now, &mut c.events, o.expect, &mut t, &mut hist);
                }
            }
        }
        // Closing after the batch: a later event of this batch may still
        // name the token, and the slab must not hand it out again yet.
        for key in closing.drain(..) {
            if let Some(mut c) = conns.try_remove(key) {
                if o.expect > 0 && c.events >= o.expect {
                    // Completed, then closed: counted once, as closed.
                    t.complete -= 1;
                }
                let _ = poll.registry().deregister(&mut c.stream);
            }
        }
    }

    let per_conn: Vec<u64> = conns.iter().map(|(_, c)| c.events).collect();
    emit(json!({
        "type": "done",
        "ok": t.ok,
        "failed": t.failed,
        "server_closed": t.server_closed,
        "open": conns.len(),
        "events": t.events,
        "bytes": t.bytes,
        "min_events": per_conn.iter().min(),
        "max_events": per_conn.iter().max(),
        "last_event_ns": t.last_event_ns,
        "latency": hist.to_json(),
        "first_error": t.first_error,
    }))?;
    // Sockets close as the process exits.
    Ok(())
}

fn feed(
    p: &mut SseParser,
    bytes: &[u8],
    now: u64,
    conn_events: &mut u64,
    expect: u64,
    t: &mut Tally,
    hist: &mut Histogram,
) {
    p.feed(bytes, |ts| {
        *conn_events += 1;
        t.events += 1;
        t.last_event_ns = now;
        if *conn_events == expect {
            t.complete += 1;
        }
        if let Some(ts) = ts {
            hist.record(now.saturating_sub(ts));
        }
    });
}
