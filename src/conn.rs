//! One connection's state, kept small because it is multiplied by every
//! open socket. A connection is a socket, one deadline, and a phase:
//! reading requests, streaming from shared history, or streaming from a
//! ticking app. Buffers exist only while needed: the request buffer while
//! a request is incomplete, the output buffer while a write is unfinished.
//!
//! This module holds data and small helpers only; the reactor
//! (`server.rs`) drives it.

use mio::net::TcpStream;

/// Ticks are 100 ms since server start; `u32` lasts 13 years.
pub type Tick = u32;

/// No deadline.
pub const NEVER: Tick = Tick::MAX;

/// A subscriber's place in one stream: the stream, its slot in that
/// stream's subscriber list (for O(1) removal), and the id of the last
/// event it was given (its position; frames are found by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Index of the stream in the registry.
    pub stream: u32,
    /// Index of this connection in that stream's subscriber list.
    pub slot: u32,
    /// Id of the last event handed to this subscriber.
    pub last_id: u64,
}

/// The streams a subscriber reads: inline for one, boxed for more.
#[derive(Debug)]
pub enum Cursors {
    /// One stream, inline.
    One(Cursor),
    /// Several streams, merged in id order.
    Many(Box<[Cursor]>),
}

impl Cursors {
    /// All cursors as a slice.
    pub fn as_slice(&self) -> &[Cursor] {
        match self {
            Cursors::One(c) => std::slice::from_ref(c),
            Cursors::Many(v) => v,
        }
    }
    /// All cursors, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [Cursor] {
        match self {
            Cursors::One(c) => std::slice::from_mut(c),
            Cursors::Many(v) => v,
        }
    }
}

/// Bytes accepted for a socket but not yet written: a response, the SSE
/// head, or the unwritten tail of a frame after a short write.
#[derive(Debug)]
pub struct Out {
    /// The bytes.
    pub buf: Vec<u8>,
    /// How many of them are written.
    pub pos: usize,
    /// When the socket last accepted bytes (for `--write-timeout`).
    pub since: Tick,
}

impl Out {
    /// Unsent bytes.
    pub fn pending(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }
}

/// Produces the next frame of a ticking app connection given the time in
/// ms since server start.
pub type TickFn = Box<dyn FnMut(u64) -> Vec<u8>>;

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
pub enum Phase {
    /// Reading requests; the buffer holds an incomplete one, if any.
    Http(Option<Box<ReqBuf>>),
    /// Streaming events from shared history.
    Sse(Cursors),
    /// Streaming events from a per-connection timer.
    App(Box<Ticker>),
}

/// Flag bits.
pub mod flags {
    /// Close once the output buffer drains.
    pub const CLOSE_AFTER_FLUSH: u8 = 1;
    /// Scheduled for closing at the end of the loop turn.
    pub const CLOSING: u8 = 2;
    /// Input is not read until output drains (pipelining back-pressure).
    pub const READ_PAUSED: u8 = 4;
    /// Between requests on a keep-alive connection (idle timeout applies).
    pub const IDLE: u8 = 8;
    /// Counted against per-peer limits.
    pub const COUNTED: u8 = 16;
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket (its fd is the only per-connection kernel handle).
    pub sock: TcpStream,
    /// When the sweep must next look at this connection.
    pub deadline: Tick,
    /// Slot of the peer address in the per-IP table.
    pub peer: u32,
    /// Bits from [`flags`].
    pub flags: u8,
    /// Unwritten bytes; `None` while the socket is drained.
    pub out: Option<Box<Out>>,
    /// What the connection is doing.
    pub phase: Phase,
}

impl Conn {
    /// A freshly accepted connection, waiting for its first request.
    pub fn new(sock: TcpStream, peer: u32, deadline: Tick) -> Self {
        Conn {
            sock,
            deadline,
            peer,
            flags: 0,
            out: None,
            phase: Phase::Http(None),
        }
    }
    /// Whether a flag is set.
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
    /// Whether bytes are waiting for the socket to drain.
    pub fn blocked(&self) -> bool {
        self.out.is_some()
    }
}

/// The budget (see ../shared/design/core-layout.md): 48 bytes in release
/// builds. Debug builds of mio add a selector id to every socket, hence 64.
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
        assert_eq!(std::mem::size_of::<super::Cursor>(), 16);
    }
}
