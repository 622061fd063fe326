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
//! // Subscribe over TCP. HTTP/1.0 gets the bare SSE body until close
//! // (HTTP/1.1 streams are chunked: use `ssed::client` or any SSE client).
//! let mut sock = TcpStream::connect(addr).unwrap();
//! sock.write_all(b"GET /events?stream=news HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
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
// Without every feature some shared helpers (the handler's bus payloads,
// the apps' actions) have no caller; the default build, which has them
// all, is where dead code is linted.
#![cfg_attr(
    not(all(
        feature = "apps",
        feature = "redis",
        feature = "journal",
        feature = "mercure",
        feature = "cli",
        feature = "workers"
    )),
    allow(dead_code, unused_imports)
)]

// Layers (docs/ARCHITECTURE.md): each module uses only those of lower
// layers, never one of its own or a higher one (tests/it/layers.rs checks
// it). 0: id (the event id, which every layer above names). 1: config,
// frame, http, stats, auth, bus, journal, memory. 2: event, access, presence.
// 3: broker. 4: handler. 5: api, apps, mercure. 6: router, error (the
// crate's one error, wrapping those of lower layers). 7: reactor.
// 8: supervisor (the `--workers` process manager).
// `client` stands apart and uses none of them.
// Cargo features (Cargo.toml) leave modules out; where the core calls one,
// a stub of the same shape (`off.rs`) stands in, refusing its flags at bind
// and, with uninhabited types, letting the optimiser drop the call sites.
mod access;
mod api;
#[cfg_attr(not(feature = "apps"), path = "apps/off.rs")]
mod apps;
mod auth;
mod broker;
#[cfg_attr(not(feature = "redis"), path = "bus/off.rs")]
mod bus;
#[cfg(feature = "cli")]
pub mod client;
mod config;
mod error;
mod event;
mod frame;
mod handler;
mod http;
mod id;
#[cfg_attr(not(feature = "journal"), path = "journal/off.rs")]
mod journal;
mod memory;
#[cfg_attr(not(feature = "mercure"), path = "mercure_off.rs")]
mod mercure;
#[cfg_attr(not(feature = "mercure"), path = "presence_off.rs")]
mod presence;
mod reactor;
mod router;
mod stats;
#[cfg(all(unix, feature = "workers"))]
mod supervisor;

#[doc(hidden)]
pub mod internals;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

pub use config::{help, Command, Config, ConfigError};
pub use error::Error;
pub use event::{Event, PublishError};
#[cfg(all(unix, feature = "workers"))]
#[doc(hidden)] // for the binary's `--workers`; not part of the library API
pub use supervisor::{supervise, SuperviseError};

/// How long [`Publisher::publish`] waits for the loop to take an event.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// Publishes events into a running [`Server`] from any thread.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<reactor::Shared>,
}

impl Publisher {
    /// Publishes `event` to `stream` and returns its id, following the
    /// rules of `POST /events`: the stream name, the event type,
    /// auto-creation (`--no-auto-streams`), `--max-streams`, the history
    /// bounds. Waits for the loop to take it.
    pub fn publish(&self, stream: &str, event: Event) -> Result<u64, PublishError> {
        if self.shared.shutdown.load(Ordering::SeqCst) {
            return Err(PublishError::Stopped);
        }
        event.check().map_err(PublishError::BadEvent)?;
        let (tx, rx) = mpsc::channel();
        {
            let mut q = self
                .shared
                .inbox
                .lock()
                .map_err(|_| PublishError::Stopped)?;
            if q.len() >= reactor::inbox_limit() {
                return Err(PublishError::Full);
            }
            q.push_back(reactor::Command::Publish(stream.to_string(), event, tx));
        }
        self.shared
            .waker
            .wake()
            .map_err(|_| PublishError::Stopped)?;
        match rx.recv_timeout(PUBLISH_WAIT) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(PublishError::Timeout),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(PublishError::Stopped),
        }
    }
}

/// Asks a running [`Server`] to shut down gracefully.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<reactor::Shared>,
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
    bound: reactor::Bound,
}

impl Server {
    /// Binds every `cfg.listen` address (port 0 picks a free port), after
    /// checking what the config names: the `--users` file, the `--redis`
    /// URL, the keys, the `--data-dir` journal.
    pub fn bind(cfg: Config) -> Result<Server, Error> {
        Ok(Server {
            bound: reactor::Bound::bind(cfg)?,
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
    pub fn run(self) -> Result<(), Error> {
        self.bound.run().map_err(Error::Io)
    }
}
