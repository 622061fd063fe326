//! One connection's state, kept small because it is multiplied by every
//! open socket. A connection is a socket, one deadline, and a state with
//! explicit variants (reading, streaming, ticking, draining, lingering,
//! closing). Buffers exist only while needed: the request buffer while a
//! request is incomplete, the output buffer while a write is unfinished.
//!
//! A connection is named by its [`ConnKey`] (its slot in the driver's
//! table and its `mio` token) wherever the reactor's parts refer to it.
//!
//! Data and small helpers only: what the connection's states mean over
//! time is the connection machine's (`proto.rs`); the driver does its I/O.

use mio::net::TcpStream;

use crate::broker::{Cursors, Frame};
use crate::handler::TickFn;

pub use crate::id::ConnKey;

/// Ticks are 100 ms since server start; `u32` lasts 13 years.
pub type Tick = u32;

/// No deadline.
pub const NEVER: Tick = Tick::MAX;

/// Ticks are 100 ms.
pub const TICK_MS: u64 = 100;

/// Milliseconds since server start → the tick at or after it.
pub fn ms_to_ticks(ms: u64) -> Tick {
    Tick::try_from(ms.div_ceil(TICK_MS)).unwrap_or(NEVER - 1)
}

/// A timeout flag as ticks; zero means no timeout (`NEVER`).
pub fn ticks(d: std::time::Duration) -> Tick {
    if d.is_zero() {
        NEVER
    } else {
        ms_to_ticks(d.as_millis() as u64)
    }
}

/// Bytes accepted for a socket but not yet written: first the unwritten
/// tail of a shared frame after a short write (a position into the
/// frame, not a copy), then copied bytes: a response, the SSE head, a
/// `gap`, a heartbeat. Only the copied bytes are charged to the memory
/// account (`Kind::Output`): the reactor charges before it appends to
/// `buf` and releases as they are written or the connection goes.
#[derive(Debug)]
pub struct Out {
    /// The rest of a frame the socket took only part of.
    pub tail: Option<Tail>,
    /// Copied bytes, after the tail.
    pub buf: Vec<u8>,
    /// How many of `buf` are written.
    pub pos: usize,
    /// When the socket last accepted bytes (for `--write-timeout`).
    pub since: Tick,
}

/// Where a subscriber stopped inside a shared frame.
pub struct Tail {
    /// The frame (shared with the history ring; kept alive by this handle
    /// if the ring drops it meanwhile).
    pub frame: Frame,
    /// Whether the connection writes it chunk-framed.
    pub chunked: bool,
    /// Bytes of its wire form already written.
    pub at: usize,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("id", &self.frame.id)
            .field("chunked", &self.chunked)
            .field("at", &self.at)
            .finish()
    }
}

impl Tail {
    /// Unsent bytes of the frame.
    pub fn pending(&self) -> &[u8] {
        self.frame.wire(self.chunked).get(self.at..).unwrap_or(&[])
    }
}

impl Out {
    /// Copied bytes waiting for the socket.
    pub fn copied(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    /// Unsent bytes, tail and copies.
    pub fn pending_len(&self) -> usize {
        self.tail.as_ref().map_or(0, |t| t.pending().len()) + self.copied()
    }
    /// A write took `n` bytes of [`Out::slices`] at `now`: the tail moves
    /// first, then the copies. Returns how many copied bytes went (to give
    /// back to the memory account).
    pub fn advance(&mut self, n: usize, now: Tick) -> usize {
        let in_tail = self.tail.as_ref().map_or(0, |t| t.pending().len());
        if let Some(t) = self.tail.as_mut() {
            t.at += n.min(in_tail);
            if t.pending().is_empty() {
                self.tail = None;
            }
        }
        let from_buf = n.saturating_sub(in_tail);
        self.pos += from_buf;
        self.since = now;
        from_buf
    }
    /// Unsent bytes as the slices to write, in order.
    pub fn slices(&self) -> [&[u8]; 2] {
        [
            self.tail.as_ref().map_or(&[][..], Tail::pending),
            self.buf.get(self.pos..).unwrap_or(&[]),
        ]
    }
}

/// A connection fed by its own timer (the chamber and workerman apps)
/// instead of a stream.
pub struct Ticker {
    /// Distinguishes this ticker from a later one on a reused slab key.
    pub gen: u32,
    /// Time between ticks.
    pub interval_ms: u64,
    /// Makes the next frame.
    pub next: TickFn,
}

impl std::fmt::Debug for Ticker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticker")
            .field("gen", &self.gen)
            .field("interval_ms", &self.interval_ms)
            .finish()
    }
}

/// An incomplete request: its bytes so far, and how far a chunked body in
/// them has been checked.
#[derive(Debug, Default)]
pub struct ReqBuf {
    /// The request's bytes (and any pipelined ones after it).
    pub data: Vec<u8>,
    /// Progress through a chunked body, so each read only walks new chunks.
    pub scan: crate::http::Scan,
}

/// What a connection is doing.
#[derive(Debug)]
pub enum State {
    /// Reading requests. `buf` holds an incomplete one; `idle` is set
    /// between requests (the idle timeout applies); `paused` while output
    /// backs up (pipelining back-pressure: input waits until it drains).
    Reading {
        /// The incomplete request, if any.
        buf: Option<Box<ReqBuf>>,
        /// Between requests.
        idle: bool,
        /// Input waits for output to drain.
        paused: bool,
    },
    /// Streaming events from shared history.
    Streaming(Cursors),
    /// Streaming events from a per-connection timer.
    Ticking(Box<Ticker>),
    /// A final response is being written; the socket closes once it drains.
    Draining,
    /// Half-closed after a final response, waiting briefly for the peer's
    /// FIN so the response is not destroyed by a reset.
    Lingering,
    /// To be freed at the end of the loop turn.
    Closing,
}

impl State {
    /// A connection ready for its first (or next) request.
    pub fn reading() -> State {
        State::Reading {
            buf: None,
            idle: false,
            paused: false,
        }
    }
}

/// One connection. The socket is a type parameter only so that the
/// connection machine (`proto.rs`), which never touches it, can be tested
/// on connections without one (`Conn<()>`).
#[derive(Debug)]
pub struct Conn<S = TcpStream> {
    /// The socket (its fd is the only per-connection kernel handle).
    pub sock: S,
    /// When the sweep must next look at this connection.
    pub deadline: Tick,
    /// Slot of the peer address in the per-IP table.
    pub peer: u32,
    /// Its stream's body is chunk-framed (HTTP/1.1 streams).
    pub chunked: bool,
    /// Unwritten bytes; `None` while the socket is drained.
    pub out: Option<Box<Out>>,
    /// What the connection is doing.
    pub state: State,
}

impl<S> Conn<S> {
    /// A freshly accepted connection, waiting for its first request.
    pub fn new(sock: S, peer: u32, deadline: Tick) -> Self {
        Conn {
            sock,
            deadline,
            peer,
            chunked: false,
            out: None,
            state: State::reading(),
        }
    }
    /// Whether bytes are waiting for the socket to drain.
    pub fn blocked(&self) -> bool {
        self.out.is_some()
    }
    /// Whether it is being closed.
    pub fn closing(&self) -> bool {
        matches!(self.state, State::Closing)
    }
}

/// What the driver keeps about a few connections beside the table, since
/// `Conn` must not grow for what most connections never need: the turn's
/// lists (to free, to read again, to resume) and the side tables.
#[derive(Debug, Default)]
pub struct Sides {
    /// Connections to free at the end of the turn.
    pub closing: Vec<ConnKey>,
    /// Connections whose paused input may be read again.
    pub resume_read: Vec<ConnKey>,
    /// Connections that used their read budget and may have more input.
    pub read_again: Vec<ConnKey>,
    /// Connections admitted over the cap: they may ask for `/healthz` only.
    pub reserve: Vec<ConnKey>,
    /// Connections from a trusted proxy → their client's per-address slot.
    pub proxied: std::collections::HashMap<ConnKey, u32>,
    /// Streams opened with a token that expires → the tick they end at.
    pub token_exp: std::collections::HashMap<ConnKey, Tick>,
}

impl Sides {
    /// When `key`'s stream token expires (`NEVER` without one).
    pub fn token_expiry(&self, key: ConnKey) -> Tick {
        match self.token_exp.is_empty() {
            true => NEVER,
            false => self.token_exp.get(&key).copied().unwrap_or(NEVER),
        }
    }

    /// `key`'s stream ended: its token no longer matters.
    pub fn stream_ended(&mut self, key: ConnKey) {
        if !self.token_exp.is_empty() {
            self.token_exp.remove(&key);
        }
    }

    /// `key` is freed: it leaves the side tables; returns the per-address
    /// slot of its proxied client, for the driver to give back.
    pub fn freed(&mut self, key: ConnKey) -> Option<u32> {
        self.reserve.retain(|&k| k != key);
        self.stream_ended(key);
        self.proxied.remove(&key)
    }
}

/// The budget (see ../shared/design/core-layout.md): 48 bytes in release
/// builds. Debug builds of mio add a selector id to every socket, hence 56.
pub const CONN_SIZE: usize = std::mem::size_of::<Conn>();
#[cfg(not(debug_assertions))]
const _: () = assert!(CONN_SIZE <= 48);
#[cfg(debug_assertions)]
const _: () = assert!(CONN_SIZE <= 64);

#[cfg(test)]
mod tests {
    #[test]
    fn conn_is_small() {
        // Printed so the figure shows up in test logs next to the budget.
        println!("size_of::<Conn>() = {}", super::CONN_SIZE);
        println!(
            "size_of::<State>() = {}",
            std::mem::size_of::<super::State>()
        );
        assert_eq!(std::mem::size_of::<crate::broker::Cursor>(), 16);
    }

    use super::*;

    /// A freed connection leaves every side table and gives back its
    /// proxied client's slot; token expiries are per connection.
    #[test]
    fn sides_forget_a_freed_connection() {
        let mut s = Sides::default();
        let (a, b) = (ConnKey(1), ConnKey(2));
        assert_eq!(s.token_expiry(a), NEVER);
        s.token_exp.insert(a, 50);
        s.reserve.extend([a, b]);
        s.proxied.insert(a, 7);
        assert_eq!((s.token_expiry(a), s.token_expiry(b)), (50, NEVER));
        assert_eq!(s.freed(b), None);
        assert_eq!(s.reserve, [a]);
        s.stream_ended(a);
        assert_eq!(s.token_expiry(a), NEVER);
        assert_eq!(s.freed(a), Some(7));
        assert!(s.reserve.is_empty() && s.proxied.is_empty());
    }
}
