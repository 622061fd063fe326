//! The write path: responses, stream heads, catch-up, the fan-out pass
//! that moves shared frames from the broker's rings onto sockets, partial
//! writes, slow subscribers, and the ways a connection ends.
//!
//! A drained subscriber gets one `writev` of every frame it is owed (the
//! broker's merge, in id order); a short write keeps a position into the
//! cut frame (a handle on the shared frame, no copy) in the connection's
//! `Out` and waits for the writable edge. Bytes that must be copied
//! (responses, heads, `gap`s, heartbeats the socket did not take at once)
//! are charged to the memory account (`Kind::Output`) before they are
//! held; past its bounds the connection is refused (a short 503 when
//! nothing of the response was sent yet, else closed). Closing is
//! deferred: `close` marks a connection, `reap` frees it at the end of the
//! turn, so no code frees a connection another is still looking at.

use std::io::{self, IoSlice, Write};
use std::net::Shutdown;

use super::conn::{ms_to_ticks, Conn, Out, State, Tail, NEVER};
use super::proto::Wrote;
use super::{Reactor, Timer};
use crate::broker::Frame;
use crate::frame;
use crate::http::Response;
use crate::memory::{Kind, Refusal};

/// Frames gathered into one `writev`.
const MAX_IOV: usize = 64;
/// Bytes written to one subscriber per turn before others get a go.
const WRITE_BUDGET: usize = 256 << 10;
/// How long a closing connection waits for its peer's FIN after we sent
/// ours, so an error response is not destroyed by a reset.
const LINGER_MS: u64 = 2000;
/// Memory handed back to the system (`malloc_trim`) once this much was
/// freed since the last time...
const TRIM_AFTER_BYTES: usize = 16 << 20;
/// ...and at most this often (a trim walks the heap).
const TRIM_EVERY_MS: u64 = 1000;
/// Told to a client whose response would pass the memory account.
const OUTPUT_FULL_MSG: &str =
    "server is holding too many unsent responses (--memory-max); retry later";

/// Writes as much of `bufs` as the socket takes; `Ok(0)` on WouldBlock.
fn write_vectored(sock: &mut mio::net::TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        match sock.write_vectored(bufs) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

/// Where a `writev` of slices of `lens` that took `written` bytes stopped:
/// how many slices it began (each is advanced past: a begun slice's rest
/// goes to the connection's buffer) and, for a cut one, its index and the
/// offset of its unwritten tail.
fn split_write(
    lens: impl Iterator<Item = usize>,
    written: usize,
) -> (usize, Option<(usize, usize)>) {
    let mut left = written;
    let mut sent = 0;
    for (i, len) in lens.enumerate() {
        if left >= len {
            left -= len;
            sent += 1;
        } else {
            if left > 0 {
                return (sent + 1, Some((i, left)));
            }
            break;
        }
    }
    (sent, None)
}

impl Reactor {
    /// Marks a connection to be freed at the end of the turn, leaving the
    /// streams it read and releasing its request buffer.
    pub(super) fn close(&mut self, key: u32) {
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        if !self.token_exp.is_empty() {
            self.token_exp.remove(&key);
        }
        match std::mem::replace(&mut c.state, State::Closing) {
            State::Closing => return,
            State::Streaming(cursors) => self.broker.unsubscribe(key, &cursors),
            State::Reading { buf: Some(b), .. } => {
                self.memory.release(Kind::Requests, b.data.len());
            }
            _ => {}
        }
        self.closing.push(key);
    }

    /// Lets go of a connection's unsent bytes (it is being freed): copies
    /// go back to the account; a frame tail is noted as freed, since the
    /// connection may have been the frame's last holder.
    pub(super) fn free_out(&mut self, out: &Out) {
        self.memory.release(Kind::Output, out.copied());
        if let Some(t) = &out.tail {
            self.memory.note_freed(t.frame.cost());
        }
    }

    /// Hands freed heap back to the system after large frees (glibc keeps
    /// it otherwise: a burst of megabyte-sized buffers would stay resident
    /// after they are gone). Rate-limited; a no-op on other C libraries.
    pub(super) fn maybe_trim(&mut self) {
        if self.memory.freed() < TRIM_AFTER_BYTES
            // `trimmed_at` 0: never trimmed, so the first trim may come at
            // once (a server up for less than a second frees too).
            || (self.trimmed_at != 0 && self.clock.now_ms < self.trimmed_at + TRIM_EVERY_MS)
        {
            return;
        }
        self.memory.take_freed();
        self.trimmed_at = self.clock.now_ms;
        self.counters.memory_trims += 1;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only walks the allocator's own structures.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Output that would pass the memory account: a response of which
    /// nothing was sent yet is replaced by a short 503 (charged past the
    /// bound: it is small and one per connection); anything else (a
    /// stream's bytes, a response already begun) closes the connection.
    fn refuse_output(&mut self, key: u32, r: Refusal, nothing_sent: bool) {
        self.counters.reject("memory_output");
        log::info!("connection {key}: {} output refused: {r}", r.kind().name());
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        let answerable = nothing_sent
            && c.out.is_none()
            && matches!(c.state, State::Reading { .. } | State::Draining);
        if !answerable {
            self.close(key);
            return;
        }
        if let State::Reading { buf: Some(b), .. } = &c.state {
            self.memory.release(Kind::Requests, b.data.len());
        }
        c.state = State::Draining;
        let resp = Response::error(503, OUTPUT_FULL_MSG)
            .header("Retry-After", "1")
            .encode(false, false, false);
        self.memory.force(Kind::Output, resp.len());
        c.out = Some(Box::new(Out {
            tail: None,
            buf: resp,
            pos: 0,
            since: self.clock.now_tick(),
        }));
    }

    /// Queues raw bytes for a connection: written at once if its socket is
    /// drained, appended to its output buffer otherwise.
    pub(super) fn send(&mut self, key: u32, bytes: &[u8]) {
        self.queue(key, bytes, false);
    }

    /// [`Reactor::send`]; `response` says the bytes are a whole response
    /// to a request, which a refusal may replace with a short 503.
    fn queue(&mut self, key: u32, bytes: &[u8], response: bool) {
        let tick = self.clock.now_tick();
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        if conn.closing() || bytes.is_empty() {
            return;
        }
        if let Some(out) = conn.out.as_mut() {
            match self.memory.charge(Kind::Output, bytes.len()) {
                Ok(()) => out.buf.extend_from_slice(bytes),
                Err(r) => self.refuse_output(key, r, false),
            }
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
            let rest = &bytes[done..];
            if let Err(r) = self.memory.charge(Kind::Output, rest.len()) {
                return self.refuse_output(key, r, response && done == 0);
            }
            conn.out = Some(Box::new(Out {
                tail: None,
                buf: rest.to_vec(),
                pos: 0,
                since: tick,
            }));
        }
    }

    /// Queues SSE bytes for a streaming connection, chunk-framed if its
    /// body is chunked.
    pub(super) fn send_sse(&mut self, key: u32, sse: &[u8]) {
        if sse.is_empty() {
            return;
        }
        match self.conns.get(key as usize) {
            Some(c) if c.chunked => self.send(key, &frame::chunk(sse)),
            Some(_) => self.send(key, sse),
            None => {}
        }
    }

    /// Sends a complete response; `close` ends the connection once it is out.
    pub(super) fn respond(&mut self, key: u32, bytes: &[u8], close: bool) {
        self.queue(key, bytes, true);
        if close {
            if let Some(c) = self.conns.get_mut(key as usize) {
                if let State::Reading { buf, .. } = &mut c.state {
                    if let Some(b) = buf.take() {
                        self.memory.release(Kind::Requests, b.data.len());
                    }
                    c.state = State::Draining;
                }
            }
        }
        self.after_write(key);
    }

    /// What follows a write on a connection that is not streaming: a final
    /// response that is out lingers; backed-up output gets a write deadline.
    fn after_write(&mut self, key: u32) {
        let tick = self.clock.now_tick();
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        match c.after_write(tick, &self.rules) {
            Wrote::Linger => self.linger(key),
            Wrote::Deadline(d) => self.want_sweep(d),
            Wrote::Nothing => {}
        }
    }

    /// Half-closes a connection and waits briefly for the peer's FIN before
    /// freeing it, so a final response is not lost to a reset.
    fn linger(&mut self, key: u32) {
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        let _ = c.sock.shutdown(Shutdown::Write);
        c.state = State::Lingering;
        let d = ms_to_ticks(self.clock.now_ms + LINGER_MS);
        self.set_deadline(key, d);
    }

    /// Drains `conn.out`. `Ok(true)` when empty (and freed), `Ok(false)`
    /// when the socket is full.
    fn drain_out(&mut self, key: u32) -> io::Result<bool> {
        let tick = self.clock.now_tick();
        let Reactor {
            conns,
            memory,
            counters,
            ..
        } = self;
        let Some(conn) = conns.get_mut(key as usize) else {
            return Ok(true);
        };
        let Some(out) = conn.out.as_mut() else {
            return Ok(true);
        };
        loop {
            let [tail, copied] = out.slices();
            if tail.is_empty() && copied.is_empty() {
                break;
            }
            let in_tail = tail.len();
            let n = write_vectored(&mut conn.sock, &[IoSlice::new(tail), IoSlice::new(copied)])?;
            if n == 0 {
                return Ok(false);
            }
            if let Some(t) = out.tail.as_mut() {
                t.at += n.min(in_tail);
                if t.pending().is_empty() {
                    out.tail = None;
                }
            }
            let from_buf = n.saturating_sub(in_tail);
            out.pos += from_buf;
            memory.release(Kind::Output, from_buf);
            out.since = tick;
            counters.bytes_written += n as u64;
        }
        conn.out = None;
        Ok(true)
    }

    /// The writable edge: drain output, then stream frames or resume reads.
    pub(super) fn on_writable(&mut self, key: u32) {
        match self.conns.get(key as usize) {
            Some(c) if !c.closing() && c.out.is_some() => {}
            _ => return,
        }
        match self.drain_out(key) {
            Err(_) => return self.close(key),
            Ok(false) => return,
            Ok(true) => {}
        }
        // A connection waiting for Redis keeps its input paused.
        let held = matches!(
            self.conns.get(key as usize).map(|c| &c.state),
            Some(State::Reading { paused: true, .. })
        ) && self.bus_holds(key);
        let Some(conn) = self.conns.get_mut(key as usize) else {
            return;
        };
        match &mut conn.state {
            State::Streaming(_) => {
                self.flush_subscriber(key);
                self.after_stream_write(key);
            }
            State::Ticking(_) => self.after_stream_write(key),
            State::Reading { paused, .. } => {
                // A reply waiting for Redis or for an fsync keeps the input
                // paused.
                if *paused && !held && !self.held.iter().any(|h| h.key() == Some(key)) {
                    *paused = false;
                    self.resume_read.push(key);
                }
                self.after_write(key);
            }
            State::Draining => self.after_write(key),
            State::Lingering | State::Closing => {}
        }
    }

    /// Writes a stream's response head and turns the connection's input
    /// off; `false` if the connection is gone.
    pub(super) fn begin_stream(&mut self, key: u32, head: &[u8], chunked: bool) -> bool {
        let Some(c) = self.conns.get_mut(key as usize) else {
            return false;
        };
        match &mut c.state {
            State::Reading { buf, .. } => {
                if let Some(b) = buf.take() {
                    self.memory.release(Kind::Requests, b.data.len());
                }
            }
            _ => return false,
        }
        c.chunked = chunked;
        // Streaming until the stream ends; later input is discarded.
        c.state = State::Draining;
        self.send(key, head);
        self.conns
            .get(key as usize)
            .is_some_and(|c| matches!(c.state, State::Draining))
    }

    /// Deadline bookkeeping after writing to a streaming connection.
    pub(super) fn after_stream_write(&mut self, key: u32) {
        let exp = match self.token_exp.is_empty() {
            true => NEVER,
            false => self.token_exp.get(&key).copied().unwrap_or(NEVER),
        };
        let now = self.clock.now_tick();
        let d = match self.conns.get(key as usize) {
            Some(c) => c.stream_deadline(now, exp, &self.rules),
            None => None,
        };
        if let Some(d) = d {
            self.set_deadline(key, d);
        }
    }

    /// A ticking connection is due.
    pub(super) fn on_tick(&mut self, key: u32, gen: u32) {
        let now = self.clock.now_ms;
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        let blocked = c.out.is_some();
        let State::Ticking(t) = &mut c.state else {
            return;
        };
        if t.gen != gen {
            return;
        }
        let interval = t.interval_ms;
        // A peer that is not reading gets no new ticks queued behind it.
        let bytes = if blocked { None } else { Some((t.next)(now)) };
        self.timers.add(now + interval, Timer::Tick { key, gen });
        if let Some(b) = bytes {
            self.counters.frames_written += 1;
            self.send_sse(key, &b);
            self.after_stream_write(key);
        }
    }

    /// Writes new frames to the subscribers of streams published to, at
    /// most `budget` subscribers per call: a pass over a large audience is
    /// spread over loop turns so accepts and reads are not held up, and
    /// subscribers late in a pass receive what was published meanwhile in
    /// the same write. Blocked subscribers are skipped (their writable edge
    /// resumes them) unless they lag past `--max-pending-bytes`.
    pub(super) fn flush_dirty(&mut self, mut budget: usize) {
        for key in std::mem::take(&mut self.again) {
            let ready = self
                .conns
                .get(key as usize)
                .is_some_and(|c| !c.blocked() && !c.closing());
            if ready {
                self.flush_subscriber(key);
            }
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        self.broker.take_dirty(&mut dirty);
        for s in dirty.drain(..) {
            // A pass not yet begun already covers what was just published.
            if !self.passes.contains(&(s, 0)) {
                self.passes.push_back((s, 0));
            }
        }
        self.dirty = dirty;
        while budget > 0 {
            let Some(&(s, i)) = self.passes.front() else {
                break;
            };
            let Some(slot) = self.broker.subscriber_at(s, i) else {
                self.passes.pop_front();
                continue;
            };
            if let Some(p) = self.passes.front_mut() {
                p.1 += 1;
            }
            let Some(key) = slot else { continue };
            budget -= 1;
            let blocked = self
                .conns
                .get(key as usize)
                .is_none_or(|c| c.blocked() || c.closing());
            if blocked {
                self.check_lag(key);
            } else {
                self.flush_subscriber(key);
            }
        }
    }

    fn check_lag(&mut self, key: u32) {
        let lag = match self.conns.get(key as usize) {
            Some(Conn {
                state: State::Streaming(cs),
                out: Some(out),
                ..
            }) => out.pending_len() as u64 + self.broker.lag(cs),
            _ => return,
        };
        if lag > self.cfg.max_pending_bytes as u64 {
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
    pub(super) fn flush_subscriber(&mut self, key: u32) {
        let tick = self.clock.now_tick();
        let mut budget = WRITE_BUDGET;
        // Whether this subscriber was sent anything: only then does its
        // heartbeat move, so events it may not see leave no timing trace.
        let mut wrote = false;
        loop {
            // A gap first, for any stream that dropped frames this
            // subscriber had not been sent yet.
            let gap = match self.conns.get_mut(key as usize) {
                Some(Conn {
                    state: State::Streaming(cs),
                    ..
                }) => self.broker.take_gap(cs),
                _ => return,
            };
            if let Some(g) = gap {
                wrote = true;
                self.send_sse(key, &g);
            }
            let Reactor {
                conns,
                broker,
                counters,
                again,
                ..
            } = self;
            let Some(conn) = conns.get_mut(key as usize) else {
                return;
            };
            if conn.out.is_some() {
                break;
            }
            let chunked = conn.chunked;
            let State::Streaming(cs) = &mut conn.state else {
                return;
            };
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut frames: [Option<&Frame>; MAX_IOV] = [None; MAX_IOV];
            let mut n_iov = 0;
            let mut total = 0usize;
            let mut more = false;
            for f in broker.merge(cs) {
                if n_iov == MAX_IOV || total >= budget {
                    more = true;
                    break;
                }
                let w = f.wire(chunked);
                iov[n_iov] = IoSlice::new(w);
                frames[n_iov] = Some(f);
                n_iov += 1;
                total += w.len();
            }
            if n_iov == 0 {
                break;
            }
            wrote = true;
            let written = match write_vectored(&mut conn.sock, &iov[..n_iov]) {
                Ok(n) => n,
                Err(_) => {
                    self.close(key);
                    return;
                }
            };
            // Advance past whole frames; keep a position into a partial one
            // (the cut may fall anywhere, chunk framing included): a handle
            // on the shared frame, not a copy of its rest.
            let (sent, cut) = split_write(iov[..n_iov].iter().map(|s| s.len()), written);
            let sent_to = sent
                .checked_sub(1)
                .and_then(|i| frames.get(i).copied().flatten())
                .map(|f| f.id);
            let tail = cut.and_then(|(i, at)| {
                frames.get(i).copied().flatten().map(|f| Tail {
                    frame: f.clone(),
                    chunked,
                    at,
                })
            });
            let sent = sent as u64;
            counters.frames_written += sent;
            counters.bytes_written += written as u64;
            if let Some(last) = sent_to {
                cs.advance(last);
            }
            if tail.is_some() || written < total {
                // A cut frame, or the socket filled at a frame boundary (an
                // Out without a tail marks the connection blocked until its
                // writable edge).
                conn.out = Some(Box::new(Out {
                    tail,
                    buf: Vec::new(),
                    pos: 0,
                    since: tick,
                }));
            }
            budget = budget.saturating_sub(written);
            if conn.out.is_none() && more && budget == 0 {
                // Still writable and still owed frames: no edge will come, so
                // continue next turn, after everyone else had a go.
                again.push(key);
            }
            if conn.out.is_some() || !more || budget == 0 {
                break;
            }
        }
        let blocked = self
            .conns
            .get(key as usize)
            .is_some_and(|c| c.out.is_some());
        if wrote || blocked {
            self.after_stream_write(key);
        }
        self.check_lag(key);
    }

    /// Ends a streaming connection gracefully: what is queued is flushed,
    /// then an HTTP/1.0 (body-until-close) stream's socket closes; a chunked
    /// one gets its last chunk and goes back to reading requests (unless
    /// the server is shutting down).
    pub(super) fn end_stream(&mut self, key: u32) {
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        if !self.token_exp.is_empty() {
            self.token_exp.remove(&key);
        }
        match std::mem::replace(&mut c.state, State::Draining) {
            State::Streaming(cs) => self.broker.unsubscribe(key, &cs),
            State::Ticking(_) => {}
            other => {
                // Not a stream (any more): nothing to end. Closing it could
                // hit an unrelated connection that reuses the key.
                c.state = other;
                return;
            }
        }
        if c.chunked {
            c.chunked = false;
            self.send(key, frame::LAST_CHUNK);
            if !self.shutting_down {
                // The chunked response is complete, so the connection may
                // carry the next request: clients with a connection pool
                // (Node's fetch, fetch-event-source) reuse it, and closing
                // it under them would fail their next request.
                if let Some(c) = self.conns.get_mut(key as usize) {
                    if matches!(c.state, State::Draining) {
                        c.state = State::Reading {
                            buf: None,
                            idle: true,
                            paused: false,
                        };
                        let d = self.clock.now_tick().saturating_add(self.rules.idle);
                        self.set_deadline(key, d);
                        self.after_write(key);
                    }
                }
                return;
            }
        }
        match self.conns.get(key as usize) {
            Some(c) if c.out.is_some() => self.after_write(key),
            Some(_) => self.close(key),
            None => {}
        }
    }

    /// Flushes a stream's subscribers, deletes it, and ends their streams.
    pub(super) fn delete_stream(&mut self, idx: u32) {
        // Flush first so subscribers that can take it get what was published.
        for k in self.broker.subscribers(idx) {
            if self.conns.get(k as usize).is_some_and(|c| !c.blocked()) {
                self.flush_subscriber(k);
            }
        }
        if let (Some(d), Some((name, floor))) = (&mut self.durable, self.broker.tombstone_of(idx)) {
            d.link.delete(name, floor);
        }
        for k in self.broker.delete(idx) {
            self.end_stream(k);
        }
    }

    /// Sets a connection's deadline and makes sure a sweep will see it.
    pub(super) fn set_deadline(&mut self, key: u32, d: super::Tick) {
        if let Some(c) = self.conns.get_mut(key as usize) {
            c.deadline = d;
            if d != NEVER {
                self.want_sweep(d);
            }
        }
    }

    /// Writes a heartbeat comment.
    pub(super) fn heartbeat(&mut self, key: u32) {
        self.counters.heartbeats += 1;
        self.send_sse(key, frame::HEARTBEAT);
        self.after_stream_write(key);
    }
}

#[cfg(test)]
mod tests {
    use super::split_write;
    use crate::broker::Frame;

    /// Every possible cut of a batch of chunk-framed (and bare) frames,
    /// including inside chunk headers and trailers: the bytes written plus
    /// the kept tail are exactly the begun frames, and a cut frame is
    /// counted as sent (its rest is queued, never re-sent).
    #[test]
    fn every_cut_resumes_exactly() {
        let frames: Vec<Frame> = [1usize, 0x10, 0xff, 0x100, 3, 4097]
            .iter()
            .enumerate()
            .map(|(i, &n)| Frame::new(i as u64 + 1, &vec![b'x'; n]))
            .collect();
        for chunked in [true, false] {
            let slices: Vec<&[u8]> = frames.iter().map(|f| f.wire(chunked)).collect();
            let all: Vec<u8> = slices.concat();
            for written in 0..=all.len() {
                let (sent, cut) = split_write(slices.iter().map(|s| s.len()), written);
                let mut out = all[..written].to_vec();
                if let Some((i, at)) = cut {
                    assert_eq!(i + 1, sent);
                    assert!(at > 0 && at < slices[i].len());
                    out.extend_from_slice(&slices[i][at..]);
                }
                assert_eq!(out, slices[..sent].concat(), "cut at {written}");
                let whole: usize = slices[..sent].iter().map(|s| s.len()).sum();
                assert!(whole >= written && (cut.is_some() || whole == written));
            }
        }
    }
}
