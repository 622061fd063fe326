//! Blocking Server-Sent-Events client (std only, no async).
//!
//! This module owns subscribing to an event stream from Rust code: the
//! [`Client`] builder, the self-reconnecting [`Events`] iterator, the
//! r3labs/sse-style [`Client::subscribe`] / [`Client::subscribe_channel`], and
//! stopping them from another thread ([`StopHandle`], [`Subscription`]). The
//! wire format lives in [`parser`], the HTTP plumbing in `http`, and the
//! `ssed sub` / `ssed pub` commands in [`cli`].
//!
//! Only plain `http://` is spoken: TLS belongs to a reverse proxy in front
//! of ssed (nginx, Caddy, ...).
//!
//! ```no_run
//! let client = ssed::client::Client::new("http://127.0.0.1:8080")?;
//! client.subscribe("news", |event| {
//!     println!("{} {}: {}", event.id.unwrap_or_default(), event.event, event.data);
//! })?;
//! # Ok::<(), ssed::client::Error>(())
//! ```
//!
//! Reconnection follows the WHATWG EventSource model, with a cap:
//! - after a connection that worked ends, wait the reconnection time (the
//!   server's last `retry:`, else [`Client::retry`], default 3 s) and
//!   reconnect, sending `Last-Event-ID` with the last id seen;
//! - after a failed attempt (refused, timed out, 5xx, 408, 429, malformed
//!   answer) wait `retry * 2^failures`, times a jitter factor in
//!   [0.75, 1.25), at most [`Client::max_backoff`] (default 30 s), and never
//!   less than a `Retry-After` the server sent;
//! - after [`Client::max_failures`] consecutive failed attempts (default 10)
//!   the iterator yields [`Error::GaveUp`] and ends; a successful connection
//!   resets the count;
//! - HTTP 204 ends the iterator quietly (the server asks the client to stop);
//!   other 4xx answers and a 2xx that is not `text/event-stream` are fatal,
//!   yielded once as an error, and end it.

pub mod cli;
mod http;
pub mod parser;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::Rng;

use http::{BodyDecoder, Url};
pub use parser::Event;
use parser::Parser;

/// Default reconnection time before the server sends `retry:` (ms).
const DEFAULT_RETRY_MS: u64 = 3000;
/// Bytes of an error response body kept for [`Error::Http`].
const ERROR_BODY_LIMIT: usize = 4096;

/// Everything that can go wrong while subscribing.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not `http://HOST[:PORT][/PATH][?QUERY]`.
    InvalidUrl(String),
    /// A scheme other than `http` (for `https`, terminate TLS in a reverse
    /// proxy and point the client at plain HTTP).
    UnsupportedScheme(String),
    /// A header name or value (or the Last-Event-ID) would break the request.
    InvalidHeader(String),
    /// Connecting, reading or writing failed.
    Io(io::Error),
    /// The server closed the connection before sending a response.
    Closed,
    /// The server's answer is not valid HTTP/1.x.
    BadResponse(String),
    /// The server answered with a status other than 200 (`body` holds the
    /// start of its body, e.g. ssed's `{"error":"..."}`).
    Http {
        /// The status code.
        status: u16,
        /// The reason phrase.
        reason: String,
        /// The start of the response body, lossily decoded.
        body: String,
    },
    /// A 2xx answer whose `Content-Type` is not `text/event-stream`.
    NotEventStream {
        /// The content type the server sent, if any.
        content_type: Option<String>,
    },
    /// A line or event exceeded [`Client::max_event_size`].
    EventTooLarge(usize),
    /// This many consecutive connection attempts failed; `last` is the last
    /// failure.
    GaveUp {
        /// Consecutive failed attempts.
        attempts: u32,
        /// Why the last one failed.
        last: Box<Error>,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidUrl(why) => write!(f, "invalid URL {why}"),
            Error::UnsupportedScheme(s) => write!(
                f,
                "unsupported scheme {s:?}: only http:// (put TLS in a reverse proxy)"
            ),
            Error::InvalidHeader(name) => write!(f, "invalid header {name:?}"),
            Error::Io(e) => write!(f, "{e}"),
            Error::Closed => write!(f, "connection closed before any response"),
            Error::BadResponse(why) => write!(f, "bad response: {why}"),
            Error::Http {
                status,
                reason,
                body,
            } => {
                write!(f, "HTTP {status} {reason}")?;
                if !body.is_empty() {
                    write!(f, ": {}", body.trim())?;
                }
                Ok(())
            }
            Error::NotEventStream { content_type } => write!(
                f,
                "not an event stream (Content-Type {})",
                content_type.as_deref().unwrap_or("missing")
            ),
            Error::EventTooLarge(limit) => write!(f, "event larger than {limit} bytes"),
            Error::GaveUp { attempts, last } => {
                write!(f, "gave up after {attempts} failed attempts: {last}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            Error::GaveUp { last, .. } => Some(last.as_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

impl Error {
    /// Whether another attempt could succeed (network trouble, 5xx, 408,
    /// 429); anything else is the server or the caller saying no.
    fn is_transient(&self) -> bool {
        match self {
            Error::Io(_) | Error::Closed | Error::BadResponse(_) => true,
            Error::Http { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }
}

/// A reusable description of a subscription; see the module docs.
///
/// Cloning is cheap; clones share one stop switch ([`Client::stop_handle`]).
#[derive(Debug, Clone)]
pub struct Client {
    url: Url,
    streams: Vec<String>,
    headers: Vec<(String, String)>,
    last_event_id: Option<String>,
    connect_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    retry: Duration,
    max_backoff: Duration,
    max_failures: Option<u32>,
    max_event_size: usize,
    registry: Arc<Registry>,
}

impl Client {
    /// A client for `url` (`http://host[:port][/path][?query]`). When the URL
    /// has no path at all, `/events` is used.
    pub fn new(url: &str) -> Result<Client, Error> {
        let mut url = Url::parse(url)?;
        if url.path.is_empty() {
            url.path = "/events".to_string();
        }
        Ok(Client {
            url,
            streams: Vec::new(),
            headers: Vec::new(),
            last_event_id: None,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: None,
            retry: Duration::from_millis(DEFAULT_RETRY_MS),
            max_backoff: Duration::from_secs(30),
            max_failures: Some(10),
            max_event_size: parser::DEFAULT_MAX_EVENT_BYTES,
            registry: Arc::new(Registry::default()),
        })
    }

    /// Adds a stream to subscribe to (sent as `?stream=NAME`; repeatable).
    pub fn stream(mut self, name: impl Into<String>) -> Client {
        self.streams.push(name.into());
        self
    }

    /// Adds a request header, e.g. `("Authorization", "Bearer T")`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Client {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Resumes after event `id`: the first connection already sends it as
    /// `Last-Event-ID`.
    pub fn last_event_id(mut self, id: impl Into<String>) -> Client {
        self.last_event_id = Some(id.into());
        self
    }

    /// Limit on establishing the TCP connection (default 10 s; `None`: the
    /// OS default).
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Client {
        self.connect_timeout = timeout;
        self
    }

    /// Longest silence tolerated on an open stream before it is considered
    /// dead and reconnected (default `None`: wait forever). Set it above the
    /// server's heartbeat interval. The response head must arrive within
    /// this, or within the connect timeout when this is `None`.
    pub fn read_timeout(mut self, timeout: Option<Duration>) -> Client {
        self.read_timeout = timeout;
        self
    }

    /// Reconnection time used until the server sends `retry:` (default 3 s).
    pub fn retry(mut self, delay: Duration) -> Client {
        self.retry = delay;
        self
    }

    /// Longest wait between two attempts (default 30 s).
    pub fn max_backoff(mut self, delay: Duration) -> Client {
        self.max_backoff = delay;
        self
    }

    /// Consecutive failed attempts after which the iterator yields
    /// [`Error::GaveUp`] and ends (default 10; `None`: retry forever).
    pub fn max_failures(mut self, attempts: Option<u32>) -> Client {
        self.max_failures = attempts;
        self
    }

    /// Largest line plus pending event data accepted (default 16 MiB).
    pub fn max_event_size(mut self, bytes: usize) -> Client {
        self.max_event_size = bytes;
        self
    }

    /// A handle that stops every iterator and subscription of this client
    /// and its clones, running or future.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Target::All(self.registry.clone()))
    }

    /// The events of the configured streams, reconnecting as needed.
    pub fn events(&self) -> Events {
        let stopper = Arc::new(Stopper::default());
        self.registry.register(&stopper);
        let mut parser = Parser::with_last_event_id(self.last_event_id.clone().unwrap_or_default());
        parser.set_max_event_bytes(self.max_event_size);
        Events {
            client: self.clone(),
            parser,
            queue: VecDeque::new(),
            conn: None,
            stopper,
            failures: 0,
            wait: None,
            finished: false,
            buf: vec![0; 16 * 1024],
            body: Vec::new(),
        }
    }

    /// Calls `handler` with every event of `stream` (plus any configured
    /// streams; an empty `stream` adds none) until stopped through [`Client::stop_handle`], the server
    /// answers 204, or a fatal error, which is returned. Like r3labs/sse's
    /// `Client.Subscribe`.
    pub fn subscribe<F: FnMut(Event)>(&self, stream: &str, mut handler: F) -> Result<(), Error> {
        for item in self.with_stream(stream).events() {
            handler(item?);
        }
        Ok(())
    }

    /// Sends every event of `stream` to `sender` from a background thread,
    /// like r3labs/sse's `Client.SubscribeChan`. The thread ends when the
    /// returned [`Subscription`] is stopped or dropped, when the receiver is
    /// gone (noticed at the next event), or on a fatal error, which
    /// [`Subscription::join`] returns.
    pub fn subscribe_channel(
        &self,
        stream: &str,
        sender: Sender<Event>,
    ) -> Result<Subscription, Error> {
        let events = self.with_stream(stream).events();
        let stop = events.stop_handle();
        let thread = std::thread::Builder::new()
            .name(format!("ssed-sub-{stream}"))
            .spawn(move || {
                for item in events {
                    if sender.send(item?).is_err() {
                        break;
                    }
                }
                Ok(())
            })?;
        Ok(Subscription {
            stop,
            thread: Some(thread),
        })
    }

    fn with_stream(&self, stream: &str) -> Client {
        let client = self.clone();
        if stream.is_empty() {
            client
        } else {
            client.stream(stream)
        }
    }

    fn request(&self, last_event_id: &str) -> Result<(Url, String), Error> {
        let mut url = self.url.clone();
        for stream in &self.streams {
            url.push_query("stream", stream);
        }
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
            url.target(),
            url.host_header()
        );
        if !last_event_id.is_empty() {
            http::check_header("Last-Event-ID", last_event_id)?;
            req.push_str(&format!("Last-Event-ID: {last_event_id}\r\n"));
        }
        for (name, value) in &self.headers {
            http::check_header(name, value)?;
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        req.push_str("\r\n");
        Ok((url, req))
    }
}

/// An open event-stream response.
struct Conn {
    stream: TcpStream,
    decoder: BodyDecoder,
}

/// Iterator over the events of a [`Client`], reconnecting on its own; see
/// the module docs for the rules. Yields `Err` once, for the error that ends
/// it, then `None`.
pub struct Events {
    client: Client,
    parser: Parser,
    queue: VecDeque<Event>,
    conn: Option<Conn>,
    stopper: Arc<Stopper>,
    /// Consecutive failed attempts.
    failures: u32,
    /// Delay before the next connection attempt.
    wait: Option<Duration>,
    finished: bool,
    buf: Vec<u8>,
    body: Vec<u8>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("url", &self.client.url.target())
            .field("last_event_id", &self.parser.last_event_id())
            .field("connected", &self.conn.is_some())
            .field("failures", &self.failures)
            .finish()
    }
}

impl Events {
    /// A handle that stops this iterator only, from any thread: a blocked
    /// `next()` returns `None` promptly.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Target::One(self.stopper.clone()))
    }

    /// The last event id seen (or the initial one): what the next
    /// connection sends as `Last-Event-ID`.
    pub fn last_event_id(&self) -> Option<&str> {
        Some(self.parser.last_event_id()).filter(|id| !id.is_empty())
    }

    /// The current reconnection time: the server's last `retry:`, or the
    /// client's default.
    pub fn reconnection_time(&self) -> Duration {
        self.parser
            .reconnection_time()
            .map(Duration::from_millis)
            .unwrap_or(self.client.retry)
    }

    /// Whether a response is currently open.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    fn finish(&mut self) {
        self.finished = true;
        self.close();
    }

    fn close(&mut self) {
        if self.conn.take().is_some() {
            self.stopper.detach();
        }
    }

    /// Connects and reads the response head. `Ok(None)` means HTTP 204.
    fn open(&mut self) -> Result<Option<Conn>, Error> {
        let (url, request) = self.client.request(self.parser.last_event_id())?;
        let mut stream = url.connect(self.client.connect_timeout)?;
        if !self.stopper.attach(&stream) {
            return Ok(None);
        }
        let result = self.handshake(&mut stream, &request);
        if !matches!(result, Ok(Some(_))) {
            self.stopper.detach();
        }
        result.map(|pre| pre.map(|decoder| Conn { stream, decoder }))
    }

    fn handshake(
        &mut self,
        stream: &mut TcpStream,
        request: &str,
    ) -> Result<Option<BodyDecoder>, Error> {
        use std::io::Write;
        let head_timeout = self
            .client
            .read_timeout
            .or(self.client.connect_timeout)
            .filter(|t| !t.is_zero());
        stream.set_read_timeout(head_timeout)?;
        stream.write_all(request.as_bytes())?;
        let (head, pre) = http::read_head(stream)?;
        let framing = head.framing()?;
        if head.status == 204 {
            return Ok(None);
        }
        if head.status != 200 {
            let body = http::read_body(stream, framing, pre, ERROR_BODY_LIMIT)
                .map(|(b, _)| {
                    String::from_utf8_lossy(&b[..b.len().min(ERROR_BODY_LIMIT)]).into_owned()
                })
                .unwrap_or_default();
            let err = Error::Http {
                status: head.status,
                reason: head.reason.clone(),
                body,
            };
            if let Some(after) = head.retry_after() {
                self.wait = Some(after.min(self.client.max_backoff));
            }
            return Err(err);
        }
        let content_type = head.header("content-type");
        let is_sse = content_type.as_deref().is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        });
        if !is_sse {
            return Err(Error::NotEventStream { content_type });
        }
        stream.set_read_timeout(self.client.read_timeout.filter(|t| !t.is_zero()))?;
        let mut decoder = BodyDecoder::new(framing);
        self.body.clear();
        decoder.decode(&pre, &mut self.body)?;
        self.parser.reset_connection();
        let body = std::mem::take(&mut self.body);
        let fed = self.parser.feed(&body, &mut self.queue);
        self.body = body;
        fed.map_err(|e| Error::EventTooLarge(e.limit))?;
        Ok(Some(decoder))
    }

    /// Delay after the `failures`-th consecutive failure.
    fn backoff(&self) -> Duration {
        let base = self.reconnection_time().max(Duration::from_millis(1));
        let cap = self.client.max_backoff;
        let grown = base.saturating_mul(1u32 << self.failures.min(20));
        let jitter = rand::thread_rng().gen_range(0.75..1.25);
        grown.min(cap).mul_f64(jitter).min(cap)
    }

    /// Handles a failed attempt: `Some` is what `next` must return.
    fn failed(&mut self, err: Error) -> Option<Option<Result<Event, Error>>> {
        if self.stopper.is_stopped() {
            self.finish();
            return Some(None);
        }
        if !err.is_transient() {
            self.finish();
            return Some(Some(Err(err)));
        }
        self.failures = self.failures.saturating_add(1);
        if self
            .client
            .max_failures
            .is_some_and(|max| self.failures >= max)
        {
            self.finish();
            return Some(Some(Err(Error::GaveUp {
                attempts: self.failures,
                last: Box::new(err),
            })));
        }
        let delay = self.backoff().max(self.wait.unwrap_or_default());
        log::debug!(
            "ssed client: attempt {} failed ({err}); retrying in {delay:?}",
            self.failures
        );
        self.wait = Some(delay);
        None
    }

    /// The open stream ended or broke: reconnect after the reconnection time.
    fn dropped(&mut self) {
        self.close();
        self.wait = Some(self.reconnection_time());
    }
}

impl Iterator for Events {
    type Item = Result<Event, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(Ok(event));
            }
            if self.finished {
                return None;
            }
            if self.stopper.is_stopped() {
                self.finish();
                return None;
            }
            let Some(conn) = self.conn.as_mut() else {
                if let Some(delay) = self.wait.take() {
                    if self.stopper.sleep(delay) {
                        self.finish();
                        return None;
                    }
                }
                match self.open() {
                    Ok(Some(conn)) => {
                        self.failures = 0;
                        self.conn = Some(conn);
                    }
                    Ok(None) => {
                        // 204 (or stopped while connecting): do not reconnect.
                        self.finish();
                        return None;
                    }
                    Err(err) => {
                        if let Some(out) = self.failed(err) {
                            return out;
                        }
                    }
                }
                continue;
            };
            match conn.stream.read(&mut self.buf) {
                Ok(0) => self.dropped(),
                Ok(n) => {
                    self.body.clear();
                    let decoded = conn.decoder.decode(&self.buf[..n], &mut self.body);
                    let done = conn.decoder.is_done();
                    match decoded {
                        Ok(_) => {
                            if let Err(e) = self.parser.feed(&self.body, &mut self.queue) {
                                self.finish();
                                return Some(Err(Error::EventTooLarge(e.limit)));
                            }
                            if done {
                                self.dropped();
                            }
                        }
                        Err(err) => {
                            log::debug!("ssed client: stream broken: {err}");
                            self.dropped();
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("ssed client: read failed: {e}");
                    self.dropped();
                }
            }
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.close();
    }
}

/// Stops a running iterator or subscription from another thread: sets a
/// flag, wakes a backoff sleep and shuts the socket down so a blocked read
/// returns. A TCP connect in progress finishes (or hits the connect timeout)
/// first. Stopping is permanent.
#[derive(Debug, Clone)]
pub struct StopHandle(Target);

#[derive(Debug, Clone)]
enum Target {
    One(Arc<Stopper>),
    All(Arc<Registry>),
}

impl StopHandle {
    /// Stops; the stopped iterators return `None` from `next()`.
    pub fn stop(&self) {
        match &self.0 {
            Target::One(stopper) => stopper.stop(),
            Target::All(registry) => registry.stop(),
        }
    }

    /// Whether [`StopHandle::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        match &self.0 {
            Target::One(stopper) => stopper.is_stopped(),
            Target::All(registry) => registry.stopped.load(Ordering::SeqCst),
        }
    }
}

/// A background subscription from [`Client::subscribe_channel`]. Dropping it
/// stops the subscription (without waiting for the thread).
#[derive(Debug)]
#[must_use = "dropping a Subscription stops it"]
pub struct Subscription {
    stop: StopHandle,
    thread: Option<JoinHandle<Result<(), Error>>>,
}

impl Subscription {
    /// Stops the subscription; the sender is dropped once the thread ends.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// A handle that stops this subscription from elsewhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Whether the background thread has ended.
    pub fn is_finished(&self) -> bool {
        match &self.thread {
            Some(thread) => thread.is_finished(),
            None => true,
        }
    }

    /// Waits for the thread to end (it only ends by itself on the events
    /// named in [`Client::subscribe_channel`]) and returns its outcome.
    pub fn join(mut self) -> Result<(), Error> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::Io(io::Error::other("subscription thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop.stop();
        }
    }
}

/// The stop switch of one iterator.
#[derive(Debug, Default)]
struct Stopper {
    state: Mutex<StopState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct StopState {
    stopped: bool,
    /// A clone of the open socket, so `stop` can shut it down.
    socket: Option<TcpStream>,
}

impl Stopper {
    fn lock(&self) -> MutexGuard<'_, StopState> {
        // The state stays consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stop(&self) {
        let mut state = self.lock();
        state.stopped = true;
        if let Some(socket) = state.socket.take() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        self.wake.notify_all();
    }

    fn is_stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Registers the socket; false (and the socket shut) if already stopped.
    fn attach(&self, stream: &TcpStream) -> bool {
        let mut state = self.lock();
        if state.stopped {
            let _ = stream.shutdown(Shutdown::Both);
            return false;
        }
        // Without a clone the stop cannot interrupt a blocked read; an
        // iterator that cannot be stopped promptly still works otherwise.
        state.socket = stream.try_clone().ok();
        true
    }

    fn detach(&self) {
        self.lock().socket = None;
    }

    /// Sleeps `delay` unless stopped first; returns whether stopped.
    fn sleep(&self, delay: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .wake
            .wait_timeout_while(state, delay, |s| !s.stopped)
            .unwrap_or_else(|e| e.into_inner());
        state.stopped
    }
}

/// The stop switch of a [`Client`] and its clones: every iterator they
/// create registers here.
#[derive(Debug, Default)]
struct Registry {
    stopped: AtomicBool,
    members: Mutex<Vec<Weak<Stopper>>>,
}

impl Registry {
    fn register(&self, stopper: &Arc<Stopper>) {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock so a concurrent `stop` cannot miss it.
        if self.stopped.load(Ordering::SeqCst) {
            stopper.stop();
        }
        members.retain(|m| m.strong_count() > 0);
        members.push(Arc::downgrade(stopper));
    }

    fn stop(&self) {
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        self.stopped.store(true, Ordering::SeqCst);
        for stopper in members.iter().filter_map(Weak::upgrade) {
            stopper.stop();
        }
    }
}
