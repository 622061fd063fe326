//! The hub: every connection, every stream, the timers and the counters,
//! and the write path that moves shared frames from stream histories onto
//! sockets. It is the state the router changes and the reactor drives.
//!
//! What it must not do: touch `Poll`, accept, or read sockets (that is
//! `server.rs`), or know request syntax (`http.rs`) or SSE syntax
//! (`frame.rs`). Closing is deferred: `close` only marks a connection; the
//! reactor frees marked connections at the end of its turn, so no handler
//! frees a connection another handler is still looking at.

use std::io::{self, IoSlice, Write};
use std::net::{IpAddr, Shutdown};
use std::rc::Rc;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use slab::Slab;

use crate::apps::Apps;
use crate::config::Config;
use crate::conn::{flags, Conn, Cursor, Cursors, Out, Phase, ReqBuf, Tick, TickFn, Ticker, NEVER};
use crate::frame;
use crate::stats::{Counters, Gauges};
use crate::stream::{Limits, Plan, Streams};
use crate::timer::{Timer, Timers};

/// Frames gathered into one `writev`.
const MAX_IOV: usize = 64;
/// Bytes written to one subscriber per turn before others get a go.
const WRITE_BUDGET: usize = 256 << 10;
/// How long a closing connection waits for its peer's FIN after we sent
/// ours, so an error response is not destroyed by a reset.
const LINGER_MS: u64 = 2000;
/// Sweeps of the connection table run at most this often.
const SWEEP_SPACING_MS: u64 = 250;
/// Ticks are 100 ms.
pub const TICK_MS: u64 = 100;
/// All incomplete requests together may hold this much (or four maximal
/// requests, if more): without it, every connection may hold `--max-body`.
const REQUEST_BUFFER_BUDGET: usize = 64 << 20;

/// Per-peer connection counts.
#[derive(Default)]
pub struct Peers {
    slots: Slab<(IpAddr, u32)>,
    by_ip: std::collections::HashMap<IpAddr, u32>,
}

impl Peers {
    /// Counts a connection from `ip`; `None` when `limit` is reached.
    pub fn add(&mut self, ip: IpAddr, limit: usize) -> Option<u32> {
        if let Some(&slot) = self.by_ip.get(&ip) {
            let e = self.slots.get_mut(slot as usize)?;
            if e.1 as usize >= limit {
                return None;
            }
            e.1 += 1;
            return Some(slot);
        }
        if limit == 0 {
            return None;
        }
        let slot = self.slots.insert((ip, 1)) as u32;
        self.by_ip.insert(ip, slot);
        Some(slot)
    }
    /// Forgets one connection in `slot`.
    pub fn remove(&mut self, slot: u32) {
        if let Some(e) = self.slots.get_mut(slot as usize) {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                let ip = e.0;
                self.slots.remove(slot as usize);
                self.by_ip.remove(&ip);
            }
        }
    }
    /// The address in `slot`.
    pub fn ip(&self, slot: u32) -> Option<IpAddr> {
        self.slots.get(slot as usize).map(|e| e.0)
    }
    /// Distinct peers.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    /// Whether no peer is connected.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// A publish request, validated.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The data (split into `data:` lines on the wire).
    pub data: String,
    /// The event type; `None` is `message`.
    pub event: Option<String>,
    /// A `retry:` to send with the event.
    pub retry: Option<u32>,
}

/// The shared state of the server.
pub struct Hub {
    /// The configuration.
    pub cfg: Config,
    /// Every connection; the key is the poll token.
    pub conns: Slab<Conn>,
    /// Every stream and the id clock.
    pub streams: Streams,
    /// Counters for `/stats` and `/metrics`.
    pub counters: Counters,
    /// Timers (sweep, accept back-off, shutdown, ticks).
    pub timers: Timers,
    /// Per-peer connection counts.
    pub peers: Peers,
    /// The built-in apps' state.
    pub apps: Apps,
    /// Milliseconds since `start`, read once per loop turn.
    pub now_ms: u64,
    /// When the server started.
    pub start: Instant,
    /// Unix time of `start` in µs (ids and app timestamps derive from it).
    pub start_unix_us: u64,
    /// Set once shutdown has begun.
    pub shutting_down: bool,
    /// The connection cap in force.
    pub max_connections: usize,
    /// Randomness for retry jitter and the apps.
    pub rng: SmallRng,
    closing: Vec<u32>,
    resume_read: Vec<u32>,
    /// Subscribers that used their write budget this turn and are owed more.
    again: Vec<u32>,
    /// Bytes held in all connections' request buffers (incomplete requests).
    buffered: usize,
    /// Fan-out passes in progress: a stream and the next subscriber index.
    passes: std::collections::VecDeque<(u32, usize)>,
    sweep_at: Option<u64>,
    last_sweep: u64,
    next_gen: u32,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn interrupted(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Interrupted
}

fn ms_to_ticks(ms: u64) -> Tick {
    Tick::try_from(ms.div_ceil(TICK_MS)).unwrap_or(NEVER - 1)
}

/// Writes as much of `bufs` as the socket takes; `Ok(0)` on WouldBlock.
fn write_vectored(sock: &mut mio::net::TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        match sock.write_vectored(bufs) {
            Ok(n) => return Ok(n),
            Err(e) if interrupted(&e) => continue,
            Err(e) if would_block(&e) => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

/// Drains `conn.out`. `Ok(true)` when empty (and freed), `Ok(false)` when
/// the socket is full.
fn drain_out(conn: &mut Conn, tick: Tick, counters: &mut Counters) -> io::Result<bool> {
    let Some(out) = conn.out.as_mut() else {
        return Ok(true);
    };
    while !out.pending().is_empty() {
        let n = write_vectored(&mut conn.sock, &[IoSlice::new(out.pending())])?;
        if n == 0 {
            return Ok(false);
        }
        out.pos += n;
        out.since = tick;
        counters.bytes_written += n as u64;
    }
    conn.out = None;
    Ok(true)
}

impl Hub {
    /// A hub for `cfg`, its clocks starting now.
    pub fn new(cfg: Config, max_connections: usize) -> Hub {
        let start = Instant::now();
        let start_unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let limits = Limits {
            history: cfg.history,
            history_bytes: cfg.history_bytes,
        };
        let streams = Streams::new(start_unix_us, limits, cfg.max_streams);
        let apps = Apps::new(&cfg);
        Hub {
            cfg,
            conns: Slab::new(),
            streams,
            counters: Counters::default(),
            timers: Timers::default(),
            peers: Peers::default(),
            apps,
            now_ms: 0,
            start,
            start_unix_us,
            shutting_down: false,
            max_connections,
            rng: SmallRng::from_entropy(),
            closing: Vec::new(),
            resume_read: Vec::new(),
            again: Vec::new(),
            buffered: 0,
            passes: std::collections::VecDeque::new(),
            sweep_at: None,
            last_sweep: 0,
            next_gen: 0,
        }
    }

    /// Re-reads the clock; called once per loop turn by the reactor.
    pub fn tick_clock(&mut self) {
        self.now_ms = self.start.elapsed().as_millis() as u64;
    }

    /// Now, in ticks.
    pub fn now_tick(&self) -> Tick {
        Tick::try_from(self.now_ms / TICK_MS).unwrap_or(NEVER - 1)
    }

    /// Unix time now, in µs.
    pub fn unix_us(&self) -> u64 {
        self.start_unix_us + self.now_ms * 1000
    }

    /// Wall-clock unix time in µs, finer than the per-turn clock (for ids
    /// and timestamps that users compare with their own clocks).
    pub fn unix_us_precise(&self) -> u64 {
        self.start_unix_us + self.start.elapsed().as_micros() as u64
    }

    fn ticks(d: std::time::Duration) -> Tick {
        if d.is_zero() {
            NEVER
        } else {
            ms_to_ticks(d.as_millis() as u64)
        }
    }

    /// Deadline for a connection waiting for (the rest of) a request.
    pub fn header_deadline(&self) -> Tick {
        self.now_tick()
            .saturating_add(Self::ticks(self.cfg.header_timeout))
    }

    /// Deadline for an idle keep-alive connection.
    pub fn idle_deadline(&self) -> Tick {
        self.now_tick()
            .saturating_add(Self::ticks(self.cfg.idle_timeout))
    }

    fn heartbeat_deadline(&self) -> Tick {
        self.now_tick()
            .saturating_add(Self::ticks(self.cfg.heartbeat))
    }

    /// Sets a connection's deadline and makes sure a sweep will see it.
    pub fn set_deadline(&mut self, key: u32, d: Tick) {
        if let Some(c) = self.conns.get_mut(key as usize) {
            c.deadline = d;
            self.want_sweep(d);
        }
    }

    fn want_sweep(&mut self, d: Tick) {
        if d == NEVER {
            return;
        }
        let when = (d as u64 * TICK_MS).max(self.last_sweep + SWEEP_SPACING_MS);
        if self.sweep_at.is_none_or(|s| when < s) {
            self.sweep_at = Some(when);
            self.timers.add(when, Timer::Sweep);
        }
    }

    /// Marks a connection to be closed at the end of the turn.
    pub fn close(&mut self, key: u32) {
        if let Some(c) = self.conns.get_mut(key as usize) {
            if !c.has(flags::CLOSING) {
                c.flags |= flags::CLOSING;
                self.closing.push(key);
            }
        }
    }

    /// Whether work is owed without waiting for readiness (the loop then
    /// polls without sleeping).
    pub fn busy(&self) -> bool {
        !self.again.is_empty() || !self.passes.is_empty()
    }

    /// Takes a connection's incomplete request out of it (for parsing).
    pub fn take_reqbuf(&mut self, key: u32) -> Option<Box<ReqBuf>> {
        let c = self.conns.get_mut(key as usize)?;
        let Phase::Http(b) = &mut c.phase else {
            return None;
        };
        let b = b.take()?;
        self.buffered = self.buffered.saturating_sub(b.data.len());
        Some(b)
    }

    /// Puts an incomplete request back, unless the connection has moved on
    /// (streaming, closing), in which case it is dropped.
    pub fn put_reqbuf(&mut self, key: u32, b: Box<ReqBuf>) {
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        if b.data.is_empty() || c.has(flags::CLOSING | flags::CLOSE_AFTER_FLUSH) {
            return;
        }
        if let Phase::Http(slot @ None) = &mut c.phase {
            self.buffered += b.data.len();
            *slot = Some(b);
        }
    }

    /// Whether `more` bytes of incomplete requests still fit the server-wide
    /// budget: `--max-body` bounds one request, this bounds all of them.
    pub fn buffer_fits(&self, more: usize) -> bool {
        let budget = REQUEST_BUFFER_BUDGET.max(4 * (self.cfg.max_body + self.cfg.max_header_bytes));
        self.buffered + more <= budget
    }

    /// Bytes held in request buffers.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Takes the connections marked for closing.
    pub fn take_closing(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.closing)
    }

    /// Takes the connections whose reading may resume.
    pub fn take_resume_read(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.resume_read)
    }

    /// Frees a closed connection's resources: its stream slots, its peer
    /// count, its app registrations. The caller deregisters the socket.
    pub fn forget(&mut self, key: u32) -> Option<Conn> {
        let mut conn = self.conns.try_remove(key as usize)?;
        release_reqbuf(&mut self.buffered, &mut conn.phase);
        if let Phase::Sse(cursors) = &conn.phase {
            for c in cursors.as_slice() {
                self.unlink(key, *c);
            }
        }
        if conn.has(flags::COUNTED) {
            self.peers.remove(conn.peer);
        }
        self.apps.on_close(key);
        self.counters.closed += 1;
        Some(conn)
    }

    /// Removes `key` from a stream's subscriber list by swap-remove, fixing
    /// the moved subscriber's slot.
    fn unlink(&mut self, key: u32, c: Cursor) {
        let Some(s) = self.streams.get_mut(c.stream) else {
            return;
        };
        let slot = c.slot as usize;
        if s.subs.get(slot) != Some(&key) {
            return;
        }
        s.subs.swap_remove(slot);
        if let Some(&moved) = s.subs.get(slot) {
            // The subscriber moved from the end into a slot a running pass
            // has already visited: it would be skipped, so queue it.
            if self.passes.iter().any(|&(t, i)| t == c.stream && slot < i) {
                self.again.push(moved);
            }
            if let Some(Conn {
                phase: Phase::Sse(cs),
                ..
            }) = self.conns.get_mut(moved as usize)
            {
                for mc in cs.as_mut_slice() {
                    if mc.stream == c.stream {
                        mc.slot = c.slot;
                    }
                }
            }
        }
        if s.subs.capacity() > 64 && s.subs.len() < s.subs.capacity() / 4 {
            s.subs.shrink_to(s.subs.len() * 2);
        }
    }

    /// Queues bytes for a connection: written at once if its socket is
    /// drained, appended to its output buffer otherwise.
    pub fn send(&mut self, key: u32, bytes: &[u8]) {
        let tick = self.now_tick();
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.has(flags::CLOSING) {
            return;
        }
        if let Some(out) = conn.out.as_mut() {
            out.buf.extend_from_slice(bytes);
            return;
        }
        let mut done = 0;
        while done < bytes.len() {
            match write_vectored(&mut conn.sock, &[IoSlice::new(&bytes[done..])]) {
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    self.counters.bytes_written += n as u64;
                }
                Err(_) => {
                    self.close(key);
                    return;
                }
            }
        }
        if done < bytes.len() {
            conn.out = Some(Box::new(Out {
                buf: bytes[done..].to_vec(),
                pos: 0,
                since: tick,
            }));
        }
    }

    /// Sends a complete response. When `keep_alive` is false the connection
    /// closes once the response is out.
    pub fn respond(&mut self, key: u32, bytes: &[u8], keep_alive: bool) {
        self.send(key, bytes);
        if !keep_alive {
            if let Some(c) = self.conns.get_mut(key as usize) {
                c.flags |= flags::CLOSE_AFTER_FLUSH;
            }
        }
        self.after_write(key);
    }

    /// A JSON error response.
    pub fn error(
        &mut self,
        key: u32,
        status: u16,
        msg: &str,
        http10: bool,
        keep_alive: bool,
        extra: &str,
    ) {
        let body = crate::http::error_body(msg);
        let resp =
            crate::http::response(status, http10, keep_alive, "application/json", extra, &body);
        self.respond(key, &resp, keep_alive);
    }

    /// Handles what follows a write on a non-streaming connection: closing
    /// after a final response, and pausing reads while output is backed up.
    fn after_write(&mut self, key: u32) {
        let tick = self.now_tick();
        let write_ticks = Self::ticks(self.cfg.write_timeout);
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        if c.out.is_none() && c.has(flags::CLOSE_AFTER_FLUSH) {
            c.flags &= !flags::CLOSE_AFTER_FLUSH;
            self.linger(key);
        } else if c.out.is_some() {
            c.deadline = c.deadline.min(tick.saturating_add(write_ticks));
            let d = c.deadline;
            self.want_sweep(d);
        }
    }

    /// Half-closes a connection and waits briefly for the peer's FIN before
    /// freeing it, so a final response is not lost to a reset.
    pub fn linger(&mut self, key: u32) {
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        let _ = c.sock.shutdown(Shutdown::Write);
        release_reqbuf(&mut self.buffered, &mut c.phase);
        c.phase = Phase::Http(None);
        c.flags |= flags::CLOSE_AFTER_FLUSH | flags::IDLE;
        let d = ms_to_ticks(self.now_ms + LINGER_MS);
        self.set_deadline(key, d);
    }

    /// Whether a connection is lingering (half-closed, waiting for EOF).
    pub fn lingering(&self, key: u32) -> bool {
        self.conns.get(key as usize).is_some_and(|c| {
            c.out.is_none() && c.has(flags::CLOSE_AFTER_FLUSH) && c.has(flags::IDLE)
        })
    }

    /// The writable edge: drain output, then stream frames or resume reads.
    pub fn on_writable(&mut self, key: u32) {
        let tick = self.now_tick();
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.has(flags::CLOSING) || conn.out.is_none() {
            return;
        }
        match drain_out(conn, tick, &mut self.counters) {
            Err(_) => {
                self.close(key);
                return;
            }
            Ok(false) => return,
            Ok(true) => {}
        }
        match conn.phase {
            Phase::Sse(_) => self.flush_subscriber(key),
            Phase::App(_) => self.after_stream_write(key),
            Phase::Http(_) => {
                if conn.has(flags::READ_PAUSED) {
                    conn.flags &= !flags::READ_PAUSED;
                    self.resume_read.push(key);
                }
                self.after_write(key);
            }
        }
    }

    /// Turns a connection into an event stream: writes the response head
    /// (with `extra` header lines) and, when `retry`, the jittered `retry:`.
    pub fn start_stream(&mut self, key: u32, http10: bool, extra: &str, retry: bool) {
        let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let mut head = format!(
            "{version} 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\n{extra}\r\n"
        )
        .into_bytes();
        if retry {
            let base = self.cfg.retry_ms;
            let ms = self
                .rng
                .gen_range(base..base.saturating_mul(2).max(base + 1));
            head.extend_from_slice(&frame::retry(ms));
        }
        if let Some(c) = self.conns.get_mut(key as usize) {
            c.flags &= !(flags::IDLE | flags::READ_PAUSED);
            release_reqbuf(&mut self.buffered, &mut c.phase);
        }
        self.send(key, &head);
    }

    /// Subscribes `key` (already streaming) to the planned streams, writes
    /// `gap` if the plan needs one, then catches it up from history.
    pub fn subscribe(&mut self, key: u32, plan: &Plan, last_event_id: &str) {
        if !plan.gap.is_empty() {
            let names: Vec<&str> = plan
                .gap
                .iter()
                .filter_map(|&i| self.streams.get(i))
                .map(|s| &*s.name)
                .collect();
            let g = frame::gap(last_event_id, &names);
            self.counters.gaps_sent += 1;
            self.send(key, &g);
        }
        let mut cursors = Vec::with_capacity(plan.starts.len());
        for &(stream, start_seq) in &plan.starts {
            let Some(s) = self.streams.get_mut(stream) else {
                continue;
            };
            // Positions are ids: the one just before the first frame to send.
            let last_id = match start_seq.checked_sub(1).and_then(|p| s.frame(p)) {
                Some(f) => f.id,
                None if start_seq >= s.next_seq() => s.last_id.max(self.streams.ids.last()),
                None => s
                    .frame(start_seq)
                    .map(|f| f.id.saturating_sub(1))
                    .unwrap_or(0),
            };
            let Some(s) = self.streams.get_mut(stream) else {
                continue;
            };
            let slot = s.subs.len() as u32;
            s.subs.push(key);
            cursors.push(Cursor {
                stream,
                slot,
                last_id,
            });
        }
        let cursors = if cursors.len() == 1 {
            Cursors::One(cursors[0])
        } else {
            Cursors::Many(cursors.into_boxed_slice())
        };
        if let Some(c) = self.conns.get_mut(key as usize) {
            c.phase = Phase::Sse(cursors);
        }
        self.flush_subscriber(key);
        self.after_stream_write(key);
    }

    /// Turns a streaming connection into a ticking one: `next` is called
    /// every `interval_ms`, the first time after `first_in_ms`.
    pub fn start_ticker(&mut self, key: u32, interval_ms: u64, first_in_ms: u64, next: TickFn) {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        if let Some(c) = self.conns.get_mut(key as usize) {
            c.phase = Phase::App(Box::new(Ticker {
                gen,
                interval_ms: interval_ms.max(1),
                next,
            }));
            self.timers
                .add(self.now_ms + first_in_ms, Timer::Tick { key, gen });
        }
        self.after_stream_write(key);
    }

    /// A ticking connection is due.
    pub fn on_tick(&mut self, key: u32, gen: u32) {
        let now = self.now_ms;
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        if c.has(flags::CLOSING) {
            return;
        }
        let blocked = c.out.is_some();
        let Phase::App(t) = &mut c.phase else { return };
        if t.gen != gen {
            return;
        }
        let interval = t.interval_ms;
        // A peer that is not reading gets no new ticks queued behind it.
        let bytes = if blocked { None } else { Some((t.next)(now)) };
        self.timers.add(now + interval, Timer::Tick { key, gen });
        if let Some(b) = bytes {
            self.counters.frames_written += 1;
            self.send(key, &b);
            self.after_stream_write(key);
        }
    }

    /// Deadline bookkeeping after writing to a streaming connection.
    fn after_stream_write(&mut self, key: u32) {
        let d = match self.conns.get(key as usize) {
            Some(c) => match &c.out {
                Some(out) => out
                    .since
                    .saturating_add(Self::ticks(self.cfg.write_timeout)),
                None => self.heartbeat_deadline(),
            },
            None => return,
        };
        self.set_deadline(key, d);
    }

    /// Publishes one event to `targets`; returns its id and how many
    /// connections it was queued to. Writing happens before the loop sleeps.
    pub fn publish(&mut self, targets: &[u32], ev: &Outgoing) -> (u64, usize) {
        let id = self.streams.ids.next(self.unix_us_precise());
        let bytes = frame::encode_numbered(id, ev.event.as_deref(), &ev.data, ev.retry);
        self.publish_frame(targets, id, bytes.into())
    }

    /// Publishes an already-encoded frame with a server id (apps that spell
    /// their own `id:` use this).
    pub fn publish_frame(&mut self, targets: &[u32], id: u64, bytes: Rc<[u8]>) -> (u64, usize) {
        let pressure = self.streams.append(targets, id, bytes);
        self.counters.events_published += 1;
        let n = self.audience(targets);
        if pressure {
            // Many publishes in one turn (pipelined or batched): write now,
            // while every caught-up subscriber's next frame is still retained.
            self.flush_dirty(usize::MAX);
        }
        (id, n)
    }

    /// Distinct connections reading any of `targets`.
    fn audience(&self, targets: &[u32]) -> usize {
        let mut n = 0;
        for (i, &t) in targets.iter().enumerate() {
            let Some(s) = self.streams.get(t) else {
                continue;
            };
            if i == 0 {
                n += s.subs.len();
                continue;
            }
            let earlier = &targets[..i];
            for &k in &s.subs {
                let dup = match self.conns.get(k as usize) {
                    Some(Conn {
                        phase: Phase::Sse(Cursors::Many(cs)),
                        ..
                    }) => cs.iter().any(|c| earlier.contains(&c.stream)),
                    _ => false,
                };
                if !dup {
                    n += 1;
                }
            }
        }
        n
    }

    /// Writes new frames to the subscribers of streams published to, at most
    /// `budget` subscribers per call: a pass over a large audience is spread
    /// over loop turns so accepts and reads are not held up, and subscribers
    /// late in a pass receive what was published meanwhile in the same
    /// write. Blocked subscribers are skipped (their writable edge resumes
    /// them) unless they lag past `--max-pending-bytes`.
    pub fn flush_dirty(&mut self, mut budget: usize) {
        for key in std::mem::take(&mut self.again) {
            let ready = self
                .conns
                .get(key as usize)
                .is_some_and(|c| !c.blocked() && !c.has(flags::CLOSING));
            if ready {
                self.flush_subscriber(key);
            }
        }
        let dirty = self.streams.take_dirty();
        for &s in &dirty {
            // A pass not yet begun already covers what was just published.
            if !self.passes.contains(&(s, 0)) {
                self.passes.push_back((s, 0));
            }
        }
        self.streams.return_dirty(dirty);
        while budget > 0 {
            let Some(&(s, i)) = self.passes.front() else {
                break;
            };
            let Some(&key) = self.streams.get(s).and_then(|st| st.subs.get(i)) else {
                self.passes.pop_front();
                continue;
            };
            if let Some(p) = self.passes.front_mut() {
                p.1 += 1;
            }
            budget -= 1;
            let blocked = self
                .conns
                .get(key as usize)
                .is_none_or(|c| c.blocked() || c.has(flags::CLOSING));
            if blocked {
                self.check_lag(key);
            } else {
                self.flush_subscriber(key);
            }
        }
    }

    /// Unsent bytes owed to a subscriber: its private tail plus the history
    /// after its positions.
    fn lag(&self, key: u32) -> u64 {
        let Some(c) = self.conns.get(key as usize) else {
            return 0;
        };
        let mut n = c.out.as_ref().map_or(0, |o| o.pending().len() as u64);
        if let Phase::Sse(cs) = &c.phase {
            for cur in cs.as_slice() {
                if let Some(s) = self.streams.get(cur.stream) {
                    n += s.lag_bytes(s.seq_after(cur.last_id));
                }
            }
        }
        n
    }

    fn check_lag(&mut self, key: u32) {
        let blocked = self
            .conns
            .get(key as usize)
            .is_some_and(|c| c.blocked() && !c.has(flags::CLOSING));
        if blocked && self.lag(key) > self.cfg.max_pending_bytes as u64 {
            log::info!(
                "dropping slow subscriber {key}: more than {} bytes behind",
                self.cfg.max_pending_bytes
            );
            self.counters.slow_consumers_dropped += 1;
            self.close(key);
        }
    }

    /// Writes everything a subscriber is owed, in id order across its
    /// streams, in batches of up to `MAX_IOV` frames per `writev`.
    pub fn flush_subscriber(&mut self, key: u32) {
        let tick = self.now_tick();
        let mut budget = WRITE_BUDGET;
        loop {
            // A gap first, for any stream that dropped frames this subscriber
            // had not been sent yet.
            let gap = {
                let Some(Conn {
                    phase: Phase::Sse(cs),
                    ..
                }) = self.conns.get_mut(key as usize)
                else {
                    return;
                };
                let mut names: Vec<&str> = Vec::new();
                let mut from: Option<u64> = None;
                for cur in cs.as_mut_slice() {
                    if let Some(s) = self.streams.get(cur.stream) {
                        if s.lost_after(cur.last_id) {
                            from = Some(from.map_or(cur.last_id, |f| f.min(cur.last_id)));
                            names.push(&s.name);
                            cur.last_id = s.first_seq_id_floor();
                        }
                    }
                }
                from.map(|f| frame::gap(&f.to_string(), &names))
            };
            if let Some(g) = gap {
                self.counters.gaps_sent += 1;
                self.send(key, &g);
            }
            let Some(conn) = self.conns.get_mut(key as usize) else {
                return;
            };
            if conn.has(flags::CLOSING) {
                return;
            }
            if conn.out.is_some() {
                break;
            }
            let Phase::Sse(cs) = &mut conn.phase else {
                return;
            };
            // Gather frames in id order.
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut ids = [0u64; MAX_IOV];
            let mut n_iov = 0;
            let mut total = 0usize;
            let mut more = false;
            match cs {
                Cursors::One(cur) => {
                    if let Some(s) = self.streams.get(cur.stream) {
                        for f in s.frames_from(s.seq_after(cur.last_id)) {
                            if n_iov == MAX_IOV || total >= budget {
                                more = true;
                                break;
                            }
                            iov[n_iov] = IoSlice::new(&f.bytes);
                            ids[n_iov] = f.id;
                            n_iov += 1;
                            total += f.bytes.len();
                        }
                    }
                }
                Cursors::Many(list) => {
                    let mut pos: [u64; 64] = [0; 64];
                    let k = list.len().min(64);
                    for (i, cur) in list.iter().take(k).enumerate() {
                        if let Some(s) = self.streams.get(cur.stream) {
                            pos[i] = s.seq_after(cur.last_id);
                        }
                    }
                    let mut last = 0u64;
                    loop {
                        let mut best: Option<(usize, u64)> = None;
                        for (i, cur) in list.iter().take(k).enumerate() {
                            let Some(s) = self.streams.get(cur.stream) else {
                                continue;
                            };
                            while let Some(f) = s.frame(pos[i]) {
                                if f.id <= last {
                                    pos[i] += 1;
                                } else {
                                    break;
                                }
                            }
                            if let Some(f) = s.frame(pos[i]) {
                                if best.is_none_or(|(_, id)| f.id < id) {
                                    best = Some((i, f.id));
                                }
                            }
                        }
                        let Some((i, id)) = best else { break };
                        if n_iov == MAX_IOV || total >= budget {
                            more = true;
                            break;
                        }
                        let Some(f) = self
                            .streams
                            .get(list[i].stream)
                            .and_then(|s| s.frame(pos[i]))
                        else {
                            break;
                        };
                        iov[n_iov] = IoSlice::new(&f.bytes);
                        ids[n_iov] = id;
                        n_iov += 1;
                        total += f.bytes.len();
                        last = id;
                        pos[i] += 1;
                    }
                }
            }
            if n_iov == 0 {
                break;
            }
            let written = match write_vectored(&mut conn.sock, &iov[..n_iov]) {
                Ok(n) => n,
                Err(_) => {
                    self.close(key);
                    return;
                }
            };
            // Advance past whole frames; copy the unwritten tail of a partial one.
            let mut left = written;
            let mut sent_to = None;
            let mut tail: Option<Vec<u8>> = None;
            for (i, slice) in iov[..n_iov].iter().enumerate() {
                if left >= slice.len() {
                    left -= slice.len();
                    sent_to = Some(ids[i]);
                } else {
                    if left > 0 {
                        tail = Some(slice[left..].to_vec());
                        sent_to = Some(ids[i]);
                    }
                    break;
                }
            }
            if let Some(last) = sent_to {
                let count = ids[..n_iov].iter().take_while(|&&id| id <= last).count();
                self.counters.frames_written += count as u64;
                for cur in cs.as_mut_slice() {
                    cur.last_id = cur.last_id.max(last);
                }
            }
            self.counters.bytes_written += written as u64;
            if let Some(t) = tail {
                conn.out = Some(Box::new(Out {
                    buf: t,
                    pos: 0,
                    since: tick,
                }));
            } else if written < total {
                // The socket filled at a frame boundary: an empty Out marks the
                // connection blocked until its writable edge.
                conn.out = Some(Box::new(Out {
                    buf: Vec::new(),
                    pos: 0,
                    since: tick,
                }));
            }
            budget = budget.saturating_sub(written);
            if conn.out.is_none() && more && budget == 0 {
                // Still writable and still owed frames: no edge will come, so
                // continue next turn, after everyone else had a go.
                self.again.push(key);
            }
            if conn.out.is_some() || !more || budget == 0 {
                break;
            }
        }
        self.after_stream_write(key);
        self.check_lag(key);
    }

    /// Walks connections whose deadline has passed: timeouts, write stalls,
    /// lingering closes and heartbeats. Schedules the next sweep at the
    /// earliest remaining deadline, so an idle server makes no wakeups.
    pub fn sweep(&mut self, when: u64) {
        if self.sweep_at != Some(when) {
            return;
        }
        self.sweep_at = None;
        // Cancelled entries (superseded sweeps, ticks of closed connections)
        // are dropped lazily; compact when they could have piled up.
        if self.timers.len() > 64 {
            let (conns, sweep_at) = (&self.conns, self.sweep_at);
            self.timers.retain(|w, t| timer_live(conns, sweep_at, w, t));
        }
        self.last_sweep = self.now_ms;
        let now = self.now_tick();
        let write_ticks = Self::ticks(self.cfg.write_timeout);
        let mut due: Vec<u32> = Vec::new();
        let mut next = NEVER;
        for (k, c) in self.conns.iter() {
            if c.deadline <= now {
                due.push(k as u32);
            } else {
                next = next.min(c.deadline);
            }
        }
        for key in due {
            let Some(c) = self.conns.get_mut(key as usize) else {
                continue;
            };
            if c.has(flags::CLOSING) {
                continue;
            }
            if let Some(out) = &c.out {
                if now.saturating_sub(out.since) >= write_ticks {
                    log::info!(
                        "closing connection {key}: nothing written for {:?}",
                        self.cfg.write_timeout
                    );
                    self.counters.write_timeouts += 1;
                    self.close(key);
                } else {
                    let d = out.since.saturating_add(write_ticks);
                    c.deadline = d;
                    next = next.min(d);
                }
                continue;
            }
            match &c.phase {
                Phase::Http(buf) => {
                    if c.has(flags::IDLE) || buf.is_none() {
                        // Idle keep-alive, a lingering close, or a connection
                        // that never sent a byte (browsers open spare ones):
                        // just go. A 408 there could be read as the answer
                        // to the next request the client sends.
                        if buf.is_none() && !c.has(flags::IDLE) {
                            self.counters.reject("idle_before_request");
                        }
                        self.close(key);
                    } else {
                        self.counters
                            .reject(crate::http::HttpError::Timeout.reason());
                        let e = crate::http::HttpError::Timeout;
                        self.error(key, e.status(), e.message(), false, false, "");
                    }
                }
                Phase::Sse(_) | Phase::App(_) => {
                    if self.cfg.heartbeat.is_zero() {
                        c.deadline = NEVER;
                        continue;
                    }
                    self.counters.heartbeats += 1;
                    self.send(key, frame::HEARTBEAT);
                    self.after_stream_write(key);
                }
            }
            if let Some(c) = self.conns.get(key as usize) {
                if !c.has(flags::CLOSING) {
                    next = next.min(c.deadline);
                }
            }
        }
        if next != NEVER {
            self.want_sweep(next);
        }
    }

    /// Gauges for `/stats` and `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges {
            connections: self.conns.len(),
            ..Gauges::default()
        };
        for (_, c) in self.conns.iter() {
            match c.phase {
                Phase::Http(_) => g.http_connections += 1,
                Phase::Sse(_) => g.sse_connections += 1,
                Phase::App(_) => g.app_connections += 1,
            }
            if c.blocked() && !matches!(c.phase, Phase::Http(_)) {
                g.blocked_subscribers += 1;
            }
        }
        for (_, s) in self.streams.iter() {
            if s.internal {
                g.internal_streams += 1;
            } else {
                g.streams += 1;
            }
            g.history_events += s.retained();
            g.history_bytes += s.retained_bytes();
        }
        g.timers = self
            .timers
            .iter()
            .filter(|(w, t)| timer_live(&self.conns, self.sweep_at, *w, t))
            .count();
        g.timer_entries = self.timers.len();
        g.connection_size = crate::conn::CONN_SIZE;
        g.uptime_secs = self.start.elapsed().as_secs_f64();
        g.rss_bytes = crate::stats::rss_bytes();
        g.per_ip_entries = self.peers.len();
        g.buffered_request_bytes = self.buffered;
        g.max_connections = self.max_connections;
        g
    }

    /// Closes every subscriber of a stream and drops the stream.
    pub fn delete_stream(&mut self, idx: u32) {
        // Flush first so subscribers that can take it get what was published.
        let subs: Vec<u32> = self
            .streams
            .get(idx)
            .map(|s| s.subs.clone())
            .unwrap_or_default();
        for &k in &subs {
            self.flush_subscriber(k);
        }
        if let Some(subs) = self.streams.remove(idx) {
            for k in subs {
                if let Some(Conn {
                    phase: Phase::Sse(cs),
                    ..
                }) = self.conns.get_mut(k as usize)
                {
                    // Its slot in the removed stream is gone with the stream.
                    for c in cs.as_mut_slice() {
                        if c.stream == idx {
                            c.slot = u32::MAX;
                        }
                    }
                }
                self.end_stream(k);
            }
        }
    }

    /// Ends a streaming connection gracefully: what is queued is flushed,
    /// then the socket is half-closed.
    pub fn end_stream(&mut self, key: u32) {
        if let Some(c) = self.conns.get_mut(key as usize) {
            if c.out.is_some() {
                c.flags |= flags::CLOSE_AFTER_FLUSH;
                if let Phase::Sse(cs) = &c.phase {
                    let cs: Vec<Cursor> = cs.as_slice().to_vec();
                    for cur in cs {
                        self.unlink(key, cur);
                    }
                }
                if let Some(c) = self.conns.get_mut(key as usize) {
                    c.phase = Phase::Http(None);
                }
            } else {
                self.close(key);
            }
        }
    }

    /// Begins a graceful shutdown: every connection is flushed and closed.
    pub fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let deadline = self.now_ms + self.cfg.shutdown_timeout.as_millis() as u64;
        self.timers.add(deadline, Timer::ShutdownDeadline);
        self.flush_dirty(usize::MAX);
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for k in keys {
            let streaming = self
                .conns
                .get(k as usize)
                .is_some_and(|c| !matches!(c.phase, Phase::Http(_)));
            let idle = self.conns.get(k as usize).is_some_and(|c| c.out.is_none());
            if streaming || idle {
                self.end_stream(k);
            } else if let Some(c) = self.conns.get_mut(k as usize) {
                c.flags |= flags::CLOSE_AFTER_FLUSH;
            }
        }
    }

    /// Closes everything now (shutdown timeout).
    pub fn close_all(&mut self) {
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for k in keys {
            self.close(k);
        }
    }
}

/// Drops a connection's request buffer, if any, from the accounting.
fn release_reqbuf(buffered: &mut usize, phase: &mut Phase) {
    if let Phase::Http(b) = phase {
        if let Some(b) = b.take() {
            *buffered = buffered.saturating_sub(b.data.len());
        }
    }
}

/// Whether a timer entry still means something: the current sweep, any
/// one-off timer, or the tick of a live ticking connection of that
/// generation.
fn timer_live(conns: &Slab<Conn>, sweep_at: Option<u64>, when: u64, t: &Timer) -> bool {
    match *t {
        Timer::Sweep => sweep_at == Some(when),
        Timer::Tick { key, gen } => {
            matches!(conns.get(key as usize), Some(Conn { phase: Phase::App(tk), .. }) if tk.gen == gen)
        }
        Timer::ResumeAccept | Timer::ShutdownDeadline => true,
    }
}

impl crate::stream::Stream {
    /// The id just below the oldest retained frame: where a subscriber that
    /// fell out of the history continues from.
    pub fn first_seq_id_floor(&self) -> u64 {
        self.frame(self.first_seq())
            .map_or(self.last_id, |f| f.id.saturating_sub(1))
    }
}
