//! ssed: a tiny, dense Server-Sent-Events server, as a library.
//!
//! One thread runs one `mio` reactor that accepts connections, parses
//! requests, and writes events that were encoded once into a per-stream
//! history ring. Other threads publish through a [`Publisher`].
//!
//! ```
//! use std::io::{BufRead, BufReader, Write};
//! use std::net::TcpStream;
//! use ssed::{Config, Event, Server};
//!
//! let mut cfg = Config::default();
//! cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
//! let server = Server::bind(cfg).unwrap();
//! let addr = server.local_addrs()[0];
//! let publisher = server.publisher();
//! let stop = server.shutdown_handle();
//! let loop_thread = std::thread::spawn(move || server.run());
//!
//! // Subscribe over TCP.
//! let mut sock = TcpStream::connect(addr).unwrap();
//! sock.write_all(b"GET /events?stream=news HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
//! let mut reader = BufReader::new(sock);
//! let mut line = String::new();
//! while line != "\r\n" {
//!     line.clear();
//!     reader.read_line(&mut line).unwrap(); // response head
//! }
//! reader.read_line(&mut line).unwrap(); // "retry: N"
//!
//! // Publish from another thread; it wakes the loop.
//! std::thread::spawn(move || publisher.publish("news", Event::new("hello").event("greeting")).unwrap());
//!
//! let mut event = String::new();
//! while !event.ends_with("\n\n") {
//!     reader.read_line(&mut event).unwrap();
//! }
//! assert!(event.contains("event: greeting\ndata: hello\n"));
//! stop.shutdown();
//! loop_thread.join().unwrap().unwrap();
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

pub mod apps;
pub mod client;
pub mod config;
pub mod conn;
pub mod frame;
pub mod http;
pub mod hub;
// Durable history (issue 13); the server wires it in separately.
#[allow(dead_code)]
pub(crate) mod journal;
pub mod router;
mod server;
pub mod stats;
pub mod stream;
pub mod timer;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use config::{Command, Config, ConfigError};

/// An event to publish: data, an optional type, an optional `retry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub(crate) data: String,
    pub(crate) event: Option<String>,
    pub(crate) retry: Option<u32>,
}

impl Event {
    /// An event of type `message` carrying `data` (newlines become
    /// several `data:` lines on the wire).
    pub fn new(data: impl Into<String>) -> Event {
        Event {
            data: data.into(),
            event: None,
            retry: None,
        }
    }
    /// Sets the event type (`event:` line). Invalid types (empty, over 64
    /// bytes, non-visible ASCII or `:`) are ignored, leaving `message`.
    pub fn event(mut self, t: impl Into<String>) -> Event {
        let t = t.into();
        self.event = frame::valid_event_type(&t).then_some(t);
        self
    }
    /// Asks clients to reconnect after `ms` milliseconds.
    pub fn retry(mut self, ms: u32) -> Event {
        self.retry = Some(ms);
        self
    }
}

/// Why a [`Publisher`] could not hand an event over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The server has stopped.
    Stopped,
    /// Too many publishes are waiting for the loop.
    Full,
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Stopped => write!(f, "server has stopped"),
            PublishError::Full => write!(f, "publish queue is full"),
        }
    }
}

impl std::error::Error for PublishError {}

/// Publishes events into a running [`Server`] from any thread.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<server::Shared>,
}

impl Publisher {
    /// Queues `event` for `stream` (created if needed) and wakes the loop.
    /// Names outside the public alphabet make internal streams that
    /// `/events` cannot read.
    pub fn publish(&self, stream: &str, event: Event) -> Result<(), PublishError> {
        if self.shared.shutdown.load(Ordering::SeqCst) {
            return Err(PublishError::Stopped);
        }
        {
            let mut q = self
                .shared
                .inbox
                .lock()
                .map_err(|_| PublishError::Stopped)?;
            if q.len() >= server::inbox_limit() {
                return Err(PublishError::Full);
            }
            q.push_back(server::Command::Publish(stream.to_string(), event));
        }
        self.shared.waker.wake().map_err(|_| PublishError::Stopped)
    }
}

/// Asks a running [`Server`] to shut down gracefully.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<server::Shared>,
}

impl ShutdownHandle {
    /// Stops accepting, flushes queued events, closes every connection;
    /// [`Server::run`] then returns.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        let _ = self.shared.waker.wake();
    }
}

/// An SSE server: bind it, take publishers and a shutdown handle, run it.
pub struct Server {
    bound: server::Bound,
}

impl Server {
    /// Binds every `cfg.listen` address (port 0 picks a free port).
    pub fn bind(cfg: Config) -> std::io::Result<Server> {
        Ok(Server {
            bound: server::Bound::bind(cfg)?,
        })
    }
    /// The bound addresses, in `--listen` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.bound.addrs
    }
    /// A handle for publishing from other threads.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            shared: self.bound.shared.clone(),
        }
    }
    /// A handle for stopping the server from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: self.bound.shared.clone(),
        }
    }
    /// Runs the loop on this thread until shutdown.
    pub fn run(self) -> std::io::Result<()> {
        self.bound.run()
    }
}
