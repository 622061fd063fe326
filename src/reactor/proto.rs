//! The connection machine: every rule of a connection's life that is a
//! decision rather than a system call, in the style of quinn-proto. Bytes
//! and `now` (in ticks) come in; out come the requests to route, the
//! answers that end a connection ([`Refuse`], rendered by
//! [`Refuse::encode`]) and the connection's next deadline. The driver
//! (`mod.rs`) does the `read`s and `writev`s, routes the requests and
//! carries the decisions out.
//!
//! It owns: reading requests ([`Feed`]: pipelined requests one at a time,
//! `100 Continue`, bytes after a stream began, the size bound), the header
//! deadline that dribbled bytes never extend (slowloris), the pipelining
//! pause, the idle, write-stall, heartbeat and token deadlines and what a
//! due one means ([`Conn::expire`]), admission past `--max-connections`
//! (the `/healthz` reserve, [`admit`]) and who the client is behind a
//! trusted proxy ([`client_of`], counted per address).
//!
//! It must not: touch a socket, `mio`, the clock, the broker or the
//! reactor. Its methods are generic over the socket type so its tests run
//! on `Conn<()>`.

use std::collections::HashMap;
use std::net::IpAddr;

use super::conn::{ms_to_ticks, ticks, Conn, ConnKey, Out, ReqBuf, State, Tick, NEVER, TICK_MS};
use super::peers::Peers;
use crate::broker::Cursors;
use crate::config::Config;
use crate::http::{self, HttpError, Parsed, Response};
use crate::memory::{Account, Kind, Refusal};

/// What one unfinished request may hold past `--max-header-bytes` +
/// `--max-body` (chunk framing, the start of a pipelined next request).
const MAX_REQUEST_SLACK: usize = 64 << 10;
/// Output a pipelining client may have queued before its input is paused.
pub const PIPELINE_OUT_LIMIT: usize = 64 << 10;
/// Connections admitted past `--max-connections` to answer `/healthz`
/// (and nothing else), so monitoring sees a full server as alive.
pub const HEALTHZ_RESERVE: usize = 8;
/// How long a connection in that reserve may take to send its request.
const RESERVE_WAIT_MS: u64 = 1000;
/// The 503 past `--max-connections`.
const OVER_CAP_MSG: &str =
    "server is at --max-connections; retry later (only /healthz is answered past it)";
const PER_IP_MSG: &str = "too many connections from your address (--max-connections-per-ip)";

/// The configuration as the machine needs it, computed once.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `--header-timeout`: a request must be complete this soon after it began.
    pub header: Tick,
    /// `--idle-timeout`: between requests.
    pub idle: Tick,
    /// `--write-timeout`: a socket that takes nothing for this long goes.
    pub write: Tick,
    /// `--heartbeat`: a stream that was sent nothing for this long gets a comment.
    pub heartbeat: Tick,
    /// The parser's bounds.
    pub limits: http::Limits,
    /// Most bytes one connection's unfinished requests may hold.
    pub max_request: usize,
    /// `--max-connections` (resolved).
    pub max_connections: usize,
    /// `--max-connections-per-ip`.
    pub per_ip: usize,
    /// `--trusted-proxy`.
    pub trusted: Vec<IpAddr>,
}

impl Rules {
    /// The rules of `cfg`, with `max_connections` already resolved.
    pub fn new(cfg: &Config, max_connections: usize) -> Rules {
        Rules {
            header: ticks(cfg.header_timeout),
            idle: ticks(cfg.idle_timeout),
            write: ticks(cfg.write_timeout),
            heartbeat: ticks(cfg.heartbeat),
            limits: http::Limits {
                max_header_bytes: cfg.max_header_bytes,
                max_body: cfg.max_body,
            },
            max_request: cfg.max_header_bytes + cfg.max_body + MAX_REQUEST_SLACK,
            max_connections,
            per_ip: cfg.max_connections_per_ip,
            trusted: cfg.trusted_proxies.clone(),
        }
    }
    /// Whether `ip` is a `--trusted-proxy`.
    pub fn trusts(&self, ip: &IpAddr) -> bool {
        self.trusted.contains(ip)
    }
}

/// An answer that ends the connection: a JSON error, and the `/stats`
/// reason it is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refuse {
    /// The rejection counter.
    pub reason: &'static str,
    /// The status.
    pub status: u16,
    /// The `error` text.
    pub msg: &'static str,
    /// Whether it says `Retry-After: 1`.
    pub retry: bool,
}

impl Refuse {
    /// A request the parser refused.
    pub fn http(e: HttpError) -> Refuse {
        Refuse {
            reason: e.reason(),
            status: e.status(),
            msg: e.message(),
            retry: false,
        }
    }
    /// A 503 worth retrying in a second.
    const fn busy(reason: &'static str, msg: &'static str) -> Refuse {
        Refuse {
            reason,
            status: 503,
            msg,
            retry: true,
        }
    }
    /// Past `--max-connections`.
    pub const OVER_CAPACITY: Refuse = Refuse::busy("over_capacity", OVER_CAP_MSG);
    /// Past `--max-connections-per-ip`.
    pub const PER_IP: Refuse = Refuse::busy("per_ip_limit", PER_IP_MSG);
    /// Past the request-buffer budget.
    pub const BUFFERS: Refuse = Refuse::busy(
        "buffer_budget",
        "server is holding too many unfinished requests; retry later",
    );
    /// The bytes to send (the connection closes after them).
    pub fn encode(&self) -> Vec<u8> {
        let mut resp = Response::error(self.status, self.msg);
        if self.retry {
            resp = resp.header("Retry-After", "1");
        }
        resp.encode(false, false, false)
    }
}

/// What to do with the next bytes a connection's socket has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Leave them (closing, or input paused for back-pressure).
    Stop,
    /// Read and drop them (a stream or a final response is under way).
    Discard,
    /// Read them as requests; `was_idle` when none was under way.
    Requests {
        /// The connection was between requests.
        was_idle: bool,
    },
}

/// One step through the requests in a connection's input.
#[derive(Debug)]
pub enum Step<'b> {
    /// A complete request to route.
    Request(http::Request<'b>),
    /// Nothing more to route now: the rest is incomplete, or input is
    /// paused until output drains.
    Wait,
    /// As `Wait`, but the client asked for `100 Continue` first.
    Continue,
    /// The connection reads no more requests; the rest is dropped.
    /// `pipelined` when a stream began before them.
    Dropped {
        /// Requests pipelined after a stream.
        pipelined: bool,
    },
    /// Broken framing: answer with this and close; the rest is dropped.
    Refuse(Refuse),
}

/// A connection's input being read as requests: what it held from earlier
/// plus what was just read, parsed one request at a time. Fresh bytes are
/// parsed where they were read, and copied only if a request is left
/// incomplete ([`Feed::finish`]).
pub struct Feed<'r> {
    /// Earlier bytes with the fresh ones appended, when there were any.
    held: Option<Box<ReqBuf>>,
    /// The fresh bytes, when nothing was held.
    fresh: &'r [u8],
    /// Progress through the chunked body at the front of what remains.
    scan: http::Scan,
    /// Bytes used by the requests routed so far.
    off: usize,
    limits: http::Limits,
}

impl<'r> Feed<'r> {
    /// Reads `fresh` after `held`; refused when together they pass what one
    /// connection may hold.
    pub fn new(
        held: Option<Box<ReqBuf>>,
        fresh: &'r [u8],
        rules: &Rules,
    ) -> Result<Feed<'r>, Refuse> {
        let before = held.as_ref().map_or(0, |b| b.data.len());
        if before + fresh.len() > rules.max_request {
            return Err(Refuse::http(HttpError::PayloadTooLarge));
        }
        Ok(match held {
            Some(mut b) => {
                b.data.extend_from_slice(fresh);
                Feed::resume(b, rules)
            }
            None => Feed {
                held: None,
                fresh,
                scan: http::Scan::default(),
                off: 0,
                limits: rules.limits,
            },
        })
    }

    /// Goes on with bytes held from earlier (input resumes after a pause).
    pub fn resume(mut held: Box<ReqBuf>, rules: &Rules) -> Feed<'r> {
        Feed {
            scan: std::mem::take(&mut held.scan),
            held: Some(held),
            fresh: &[],
            off: 0,
            limits: rules.limits,
        }
    }

    /// The next step, given the connection's state now (it may have
    /// changed since the last request: a stream began, output backed up).
    pub fn next(&mut self, state: Option<&State>) -> Step<'_> {
        let data: &[u8] = match &self.held {
            Some(b) => &b.data,
            None => self.fresh,
        };
        if self.off >= data.len() {
            return Step::Wait;
        }
        match state {
            Some(State::Reading { paused: true, .. }) => return Step::Wait,
            Some(State::Reading { .. }) => {}
            Some(State::Streaming(_) | State::Ticking(_)) => {
                self.off = data.len();
                return Step::Dropped { pipelined: true };
            }
            _ => {
                self.off = data.len();
                return Step::Dropped { pipelined: false };
            }
        }
        match http::parse_resume(&data[self.off..], self.limits, &mut self.scan) {
            Ok(Parsed::Partial) if self.scan.take_continue() => Step::Continue,
            Ok(Parsed::Partial) => Step::Wait,
            Err(e) => {
                self.off = data.len();
                Step::Refuse(Refuse::http(e))
            }
            Ok(Parsed::Complete(req, used)) => {
                self.off += used;
                self.scan = http::Scan::default();
                Step::Request(req)
            }
        }
    }

    /// Drops what is left (the connection will not read it).
    pub fn discard(&mut self) {
        self.off = match &self.held {
            Some(b) => b.data.len(),
            None => self.fresh.len(),
        };
    }

    /// What is left unrouted, to keep until more bytes come.
    pub fn finish(self) -> Option<Box<ReqBuf>> {
        let scan = self.scan;
        match self.held {
            Some(mut b) => {
                b.data.drain(..self.off.min(b.data.len()));
                b.scan = scan;
                (!b.data.is_empty()).then_some(b)
            }
            None => {
                let rest = self.fresh.get(self.off..).unwrap_or(&[]);
                (!rest.is_empty()).then(|| {
                    Box::new(ReqBuf {
                        data: rest.to_vec(),
                        scan,
                    })
                })
            }
        }
    }
}

/// Why an unfinished request may not grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferFull {
    /// All connections together hold the request-buffer budget.
    All,
    /// This connection's address holds its share (the figure).
    Address(usize),
}

impl BufferFull {
    /// The rejection counter.
    pub fn reason(self) -> &'static str {
        match self {
            BufferFull::All => Refuse::BUFFERS.reason,
            BufferFull::Address(_) => "buffer_share_per_ip",
        }
    }
    /// The 503 to send (the connection closes after it).
    pub fn encode(self) -> Vec<u8> {
        match self {
            BufferFull::All => Refuse::BUFFERS.encode(),
            BufferFull::Address(share) => {
                let msg = format!("your address is holding too many unfinished requests (at most {share} bytes, an eighth of the server's request-buffer budget); finish or close one, then retry");
                Response::error(503, &msg)
                    .header("Retry-After", "1")
                    .encode(false, false, false)
            }
        }
    }
}

/// The most of the request-buffer budget one client address may hold:
/// an eighth (8 MiB of the default 64 MiB), and at least one largest
/// request, so 64 slow uploads of one address cannot take it all.
pub fn request_share(mem: &Account, rules: &Rules) -> usize {
    (mem.limits().of(Kind::Requests) / 8).max(rules.max_request)
}

/// Whether a connection of the address in `peer` (its slot in `peers`)
/// may hold `more` bytes of an unfinished request: within its address's
/// share ([`request_share`]; a trusted proxy, which carries many clients
/// and whose nginx buffers bodies itself, has only the global budget), and
/// within the memory account (its `requests` limit, `--memory-max`; a
/// refusal is counted there). What fits is lent until
/// [`Conn::put_request`] charges it.
pub fn request_fits(
    mem: &mut Account,
    peers: &Peers,
    peer: u32,
    more: usize,
    rules: &Rules,
) -> Result<(), BufferFull> {
    let proxy = peers.ip(peer).is_some_and(|ip| rules.trusts(&ip));
    let share = request_share(mem, rules);
    if !proxy && peers.requests(peer).saturating_add(more) > share {
        return Err(BufferFull::Address(share));
    }
    match mem.charge(Kind::Requests, more) {
        Ok(()) => {
            mem.lend(Kind::Requests, more);
            Ok(())
        }
        Err(_) => Err(BufferFull::All),
    }
}

/// What a connection's due deadline means.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing now (the deadline moved on, or the connection is going).
    Nothing,
    /// A Mercure subscription whose token expired: end the stream.
    TokenExpired,
    /// The socket took nothing for `--write-timeout`: close.
    WriteStalled,
    /// Answer with this and close.
    Refuse(Refuse),
    /// Close without a word; `unasked` when no request ever began.
    Close {
        /// The connection never sent a byte.
        unasked: bool,
    },
    /// A stream owes a heartbeat.
    Heartbeat,
}

/// What follows a write on a connection that is not streaming.
#[derive(Debug, PartialEq, Eq)]
pub enum Wrote {
    /// Nothing to do.
    Nothing,
    /// A final response is out: half-close and linger.
    Linger,
    /// Output is backed up; its deadline is now this.
    Deadline(Tick),
}

impl<S> Conn<S> {
    /// What to do with the bytes its socket has.
    pub fn read_mode(&self) -> ReadMode {
        match self.state {
            State::Closing | State::Reading { paused: true, .. } => ReadMode::Stop,
            State::Reading { idle, .. } => ReadMode::Requests { was_idle: idle },
            _ => ReadMode::Discard,
        }
    }

    /// Bytes of a request arrived: the connection is no longer idle.
    pub fn input_began(&mut self) {
        if let State::Reading { idle, .. } = &mut self.state {
            *idle = false;
        }
    }

    /// Whether it is between requests.
    pub fn idle(&self) -> bool {
        matches!(self.state, State::Reading { idle: true, .. })
    }

    /// Takes its unfinished request out (to parse it with new bytes); what
    /// it held is lent from the memory account until put back.
    pub fn take_request(&mut self, mem: &mut Account, peers: &mut Peers) -> Option<Box<ReqBuf>> {
        let State::Reading { buf, .. } = &mut self.state else {
            return None;
        };
        let b = buf.take()?;
        mem.lend(Kind::Requests, b.data.len());
        peers.let_go(self.peer, b.data.len());
        Some(b)
    }

    /// Puts an unfinished request back, unless the connection has moved on
    /// (streaming, closing), in which case it is dropped.
    pub fn put_request(&mut self, b: Box<ReqBuf>, mem: &mut Account, peers: &mut Peers) {
        if b.data.is_empty() {
            return;
        }
        if let State::Reading {
            buf: slot @ None, ..
        } = &mut self.state
        {
            // Checked by `request_fits` when it grew; put back whatever it is.
            mem.force(Kind::Requests, b.data.len());
            peers.hold(self.peer, b.data.len());
            *slot = Some(b);
        }
    }

    /// An unfinished request was just put back. A request that began in
    /// this read (`new_request`: after an idle gap, or after one completed
    /// just now) gets a fresh header deadline; bytes dribbled into the same
    /// request never extend it (slowloris). The new deadline, if any.
    pub fn holding(&mut self, new_request: bool, now: Tick, rules: &Rules) -> Option<Tick> {
        let State::Reading {
            buf: Some(_), idle, ..
        } = &mut self.state
        else {
            return None;
        };
        *idle = false;
        new_request.then(|| now.saturating_add(rules.header))
    }

    /// A request was routed. The connection, if still reading requests,
    /// is idle; with its output drained it gets the idle deadline
    /// (returned), and with more than [`PIPELINE_OUT_LIMIT`] queued its
    /// input pauses until that drains.
    pub fn after_request(&mut self, now: Tick, rules: &Rules) -> Option<Tick> {
        let State::Reading { idle, paused, .. } = &mut self.state else {
            return None;
        };
        *idle = true;
        match &self.out {
            None => Some(now.saturating_add(rules.idle)),
            Some(o) if o.pending_len() > PIPELINE_OUT_LIMIT => {
                *paused = true;
                None
            }
            Some(_) => None,
        }
    }

    /// What follows a write on a connection that is not streaming: a final
    /// response that is out lingers; backed-up output must move within
    /// `--write-timeout`.
    pub fn after_write(&mut self, now: Tick, rules: &Rules) -> Wrote {
        if self.out.is_none() && matches!(self.state, State::Draining) {
            Wrote::Linger
        } else if self.out.is_some() {
            self.deadline = self.deadline.min(now.saturating_add(rules.write));
            Wrote::Deadline(self.deadline)
        } else {
            Wrote::Nothing
        }
    }

    /// A streaming connection's next deadline after a write: the write
    /// timeout while output is backed up, else the next heartbeat; never
    /// past its token's expiry. `None` if it is closing.
    pub fn stream_deadline(&self, now: Tick, token_exp: Tick, rules: &Rules) -> Option<Tick> {
        if self.closing() {
            return None;
        }
        let d = match &self.out {
            Some(out) => out.since.saturating_add(rules.write),
            None => now.saturating_add(rules.heartbeat),
        };
        Some(d.min(token_exp))
    }

    /// Its deadline passed at `now`. `token_exp` is when its subscription's
    /// token expires (`NEVER` without one); `reserved` says it was
    /// admitted past `--max-connections` for `/healthz` only.
    pub fn expire(&mut self, now: Tick, token_exp: Tick, reserved: bool, rules: &Rules) -> Due {
        if self.closing() {
            return Due::Nothing;
        }
        if token_exp <= now && matches!(self.state, State::Streaming(_)) {
            return Due::TokenExpired;
        }
        if let Some(out) = &self.out {
            if now.saturating_sub(out.since) >= rules.write {
                return Due::WriteStalled;
            }
            self.deadline = out.since.saturating_add(rules.write).min(token_exp);
            return Due::Nothing;
        }
        match &self.state {
            // Admitted over the cap for a health check that did not come at
            // once: the answer everyone else past the cap gets.
            State::Reading { .. } if reserved => Due::Refuse(Refuse::OVER_CAPACITY),
            // Idle keep-alive, or a connection that never sent a byte
            // (browsers open spare ones): just go. A 408 there could be
            // read as the answer to the next request the client sends.
            State::Reading { buf, idle, .. } if *idle || buf.is_none() => Due::Close {
                unasked: buf.is_none() && !*idle,
            },
            State::Reading { .. } => Due::Refuse(Refuse::http(HttpError::Timeout)),
            State::Streaming(_) | State::Ticking(_) if rules.heartbeat == NEVER => {
                self.deadline = token_exp;
                Due::Nothing
            }
            State::Streaming(_) | State::Ticking(_) => Due::Heartbeat,
            State::Draining | State::Lingering | State::Closing => Due::Close { unasked: false },
        }
    }
}

/// Told to a client whose response would pass the memory account.
const OUTPUT_FULL_MSG: &str =
    "server is holding too many unsent responses (--memory-max); retry later";

/// An unfinished request of the address in `peer` is let go: its bytes go
/// back to the memory account and to the address's share.
fn let_go(mem: &mut Account, peers: &mut Peers, peer: u32, b: &ReqBuf) {
    mem.release(Kind::Requests, b.data.len());
    peers.let_go(peer, b.data.len());
}

/// What `Conn::close` left behind.
#[derive(Debug)]
pub enum Closed {
    /// It was closing already: nothing to do.
    Already,
    /// Now closing: free it at the end of the turn, after leaving the
    /// streams it read (if any).
    Now(Option<Cursors>),
}

/// What a drained socket means for the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// A subscriber: write it what it is owed.
    Stream,
    /// A ticking connection: only its deadline moves.
    Ticking,
    /// Reading requests (`resume`: its paused input may be read again) or
    /// draining a final response.
    Write {
        /// Paused input may go on.
        resume: bool,
    },
    /// Lingering or closing.
    Nothing,
}

impl<S> Conn<S> {
    /// Marks it closing (freed at the end of the turn), giving back its
    /// request buffer.
    pub fn close(&mut self, mem: &mut Account, peers: &mut Peers) -> Closed {
        match std::mem::replace(&mut self.state, State::Closing) {
            State::Closing => return Closed::Already,
            State::Streaming(cursors) => return Closed::Now(Some(cursors)),
            State::Reading { buf: Some(b), .. } => let_go(mem, peers, self.peer, &b),
            _ => {}
        }
        Closed::Now(None)
    }

    /// `bytes` for a socket that is backed up: appended to its output,
    /// if the memory account takes them.
    pub fn append_out(&mut self, bytes: &[u8], mem: &mut Account) -> Result<(), Refusal> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        mem.charge(Kind::Output, bytes.len())?;
        out.buf.extend_from_slice(bytes);
        Ok(())
    }

    /// The `rest` of bytes a drained socket did not take at `now`: kept
    /// (and charged) until its writable edge.
    pub fn keep_unsent(
        &mut self,
        rest: &[u8],
        now: Tick,
        mem: &mut Account,
    ) -> Result<(), Refusal> {
        mem.charge(Kind::Output, rest.len())?;
        self.out = Some(Box::new(Out {
            tail: None,
            buf: rest.to_vec(),
            pos: 0,
            since: now,
        }));
        Ok(())
    }

    /// Output that would pass the memory account: a response of which
    /// nothing was sent yet is replaced by a short 503 (charged past the
    /// bound: it is small and one per connection) and `true`; for anything
    /// else (a stream's bytes, a response already begun) `false`: the
    /// connection must close.
    pub fn refuse_output(
        &mut self,
        nothing_sent: bool,
        now: Tick,
        mem: &mut Account,
        peers: &mut Peers,
    ) -> bool {
        let answerable = nothing_sent
            && self.out.is_none()
            && matches!(self.state, State::Reading { .. } | State::Draining);
        if !answerable {
            return false;
        }
        if let State::Reading { buf: Some(b), .. } = &self.state {
            let_go(mem, peers, self.peer, b);
        }
        self.state = State::Draining;
        let resp = Response::error(503, OUTPUT_FULL_MSG)
            .header("Retry-After", "1")
            .encode(false, false, false);
        mem.force(Kind::Output, resp.len());
        self.out = Some(Box::new(Out {
            tail: None,
            buf: resp,
            pos: 0,
            since: now,
        }));
        true
    }

    /// A final response was queued: the connection reads no more requests
    /// and closes once it is out.
    pub fn last_response(&mut self, mem: &mut Account, peers: &mut Peers) {
        if let State::Reading { buf, .. } = &mut self.state {
            if let Some(b) = buf.take() {
                let_go(mem, peers, self.peer, &b);
            }
            self.state = State::Draining;
        }
    }

    /// A stream's response begins (its head is sent next): input is
    /// discarded from now on. `false` if it is not reading requests.
    pub fn begin_stream(&mut self, chunked: bool, mem: &mut Account, peers: &mut Peers) -> bool {
        match &mut self.state {
            State::Reading { buf, .. } => {
                if let Some(b) = buf.take() {
                    let_go(mem, peers, self.peer, &b);
                }
            }
            _ => return false,
        }
        self.chunked = chunked;
        // Streaming until the stream ends; later input is discarded.
        self.state = State::Draining;
        true
    }

    /// Ends its stream: `None` if it has none (any more); else the cursors
    /// to leave (a subscriber's) and whether the body was chunked (the last
    /// chunk is owed). It drains what is queued meanwhile.
    pub fn end_stream(&mut self) -> Option<(Option<Cursors>, bool)> {
        let left = match std::mem::replace(&mut self.state, State::Draining) {
            State::Streaming(cs) => Some(cs),
            State::Ticking(_) => None,
            other => {
                // Not a stream (any more): nothing to end. Closing it could
                // hit an unrelated connection that reuses the key.
                self.state = other;
                return None;
            }
        };
        Some((left, std::mem::take(&mut self.chunked)))
    }

    /// After a chunked stream's last chunk: the response is complete, so
    /// the connection may carry the next request (clients with a
    /// connection pool reuse it; closing it under them would fail their
    /// next request). Its idle deadline, or `None` if it went meanwhile.
    pub fn reuse(&mut self, now: Tick, rules: &Rules) -> Option<Tick> {
        if !matches!(self.state, State::Draining) {
            return None;
        }
        self.state = State::Reading {
            buf: None,
            idle: true,
            paused: false,
        };
        Some(now.saturating_add(rules.idle))
    }

    /// Its socket drained. `held` says a reply it waits for (Redis, an
    /// fsync) keeps its input paused.
    pub fn drained(&mut self, held: bool) -> Drained {
        match &mut self.state {
            State::Streaming(_) => Drained::Stream,
            State::Ticking(_) => Drained::Ticking,
            State::Reading { paused, .. } => {
                let resume = *paused && !held;
                if resume {
                    *paused = false;
                }
                Drained::Write { resume }
            }
            State::Draining => Drained::Write { resume: false },
            State::Lingering | State::Closing => Drained::Nothing,
        }
    }
}

/// A ticking connection's timer fired.
#[derive(Debug, PartialEq, Eq)]
pub struct Ticked {
    /// When its next tick is due, in ms.
    pub next_ms: u64,
    /// The frame to send now, unless its peer is not reading (no new
    /// ticks are queued behind a blocked socket).
    pub frame: Option<Vec<u8>>,
}

impl<S> Conn<S> {
    /// Its tick of generation `gen` is due at `now_ms`: `None` if it is not
    /// that ticker (any more: a reused slab key, a stream that ended).
    pub fn tick(&mut self, gen: u32, now_ms: u64) -> Option<Ticked> {
        let blocked = self.out.is_some();
        let State::Ticking(t) = &mut self.state else {
            return None;
        };
        if t.gen != gen {
            return None;
        }
        Some(Ticked {
            next_ms: now_ms + t.interval_ms,
            frame: (!blocked).then(|| (t.next)(now_ms)),
        })
    }
}

/// The tick at which a subscription whose token expires at `exp` (unix
/// seconds) ends, given the time now as unix µs and as a tick: rounded up,
/// never a moment before `exp`.
pub fn token_deadline(exp: u64, unix_us: u64, now: Tick) -> Tick {
    let left_us = exp.saturating_mul(1_000_000).saturating_sub(unix_us);
    let t = left_us.div_ceil(TICK_MS * 1000).min(Tick::MAX as u64 / 2) as Tick;
    now.saturating_add(t)
}

/// A connection admitted: its slot in the per-address table, its first
/// deadline, and whether it is in the `/healthz` reserve.
#[derive(Debug, PartialEq, Eq)]
pub struct Admitted {
    /// Its slot in [`Peers`].
    pub peer: u32,
    /// When its first request must be complete.
    pub deadline: Tick,
    /// Admitted past `--max-connections`: it may ask for `/healthz` only.
    pub reserve: bool,
}

/// Whether a connection from `ip` may be admitted when `open` are, of
/// which `reserved` in the `/healthz` reserve. Counted in `peers` when
/// admitted. A trusted proxy carries many clients: each is counted under
/// its forwarded address at its first request instead ([`client_of`]).
pub fn admit(
    peers: &mut Peers,
    ip: IpAddr,
    open: usize,
    reserved: usize,
    shutting_down: bool,
    now: Tick,
    rules: &Rules,
) -> Result<Admitted, Refuse> {
    let over = open >= rules.max_connections;
    let reserve = over && reserved < HEALTHZ_RESERVE && !shutting_down;
    let limit = if rules.trusts(&ip) {
        usize::MAX
    } else {
        rules.per_ip
    };
    let peer = if over && !reserve {
        None
    } else {
        peers.add(ip, limit)
    };
    let Some(peer) = peer else {
        return Err(if over {
            Refuse::OVER_CAPACITY
        } else {
            Refuse::PER_IP
        });
    };
    let deadline = if over {
        now.saturating_add(ms_to_ticks(RESERVE_WAIT_MS))
    } else {
        now.saturating_add(rules.header)
    };
    Ok(Admitted {
        peer,
        deadline,
        reserve: over,
    })
}

/// The answer to a request on a connection in the `/healthz` reserve:
/// `/healthz` is answered (and the connection closed), anything else gets
/// the over-capacity 503 (`Err`).
pub fn reserve_answer(req: &http::Request<'_>) -> Result<Vec<u8>, Refuse> {
    let head_only = req.method == http::Method::Head;
    if req.path == "/healthz" && (head_only || req.method == http::Method::Get) {
        Ok(Response::new(200, "text/plain", "ok").encode(req.http10, false, head_only))
    } else {
        Err(Refuse::OVER_CAPACITY)
    }
}

/// Who sent a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the peer's, or the one a trusted proxy forwarded.
    pub ip: Option<IpAddr>,
    /// The forwarding headers were a trusted proxy's.
    pub via_proxy: bool,
    /// The proxy named no usable client (`for=unknown`, a name, garbage):
    /// `ip` is the proxy's own, under which per-address pools count it,
    /// so a client cannot leave every pool by hiding its address.
    pub unnamed: bool,
    /// A client newly counted under its forwarded address.
    pub counted: Option<IpAddr>,
}

/// The client of a request on connection `key` from `peer`: the peer, or,
/// from a `--trusted-proxy`, the address it forwarded, under which the
/// connection is then also counted for `--max-connections-per-ip`
/// (`proxied` keeps that count's slot per connection; a refusal when that
/// address is over it).
pub fn client_of(
    key: ConnKey,
    peer: Option<IpAddr>,
    req: &http::Request<'_>,
    peers: &mut Peers,
    proxied: &mut HashMap<ConnKey, u32>,
    rules: &Rules,
) -> Result<Client, Refuse> {
    let Some(proxy) = peer.filter(|p| rules.trusts(p)) else {
        return Ok(Client {
            ip: peer,
            via_proxy: false,
            unnamed: false,
            counted: None,
        });
    };
    let (client, unnamed) = match crate::access::forwarded_client(req, &rules.trusted) {
        None => (Some(proxy), false),
        Some(Some(c)) => (Some(c), false),
        Some(None) => (None, true),
    };
    let held = proxied.get(&key).copied();
    let held_ip = held.and_then(|s| peers.ip(s));
    let countable = client.filter(|c| !rules.trusts(c));
    let mut counted = None;
    if held_ip != countable {
        // The proxy may reuse the connection for another client.
        if let Some(s) = held {
            peers.remove(s);
            proxied.remove(&key);
        }
        if let Some(c) = countable {
            let slot = peers.add(c, rules.per_ip).ok_or(Refuse::PER_IP)?;
            proxied.insert(key, slot);
            counted = Some(c);
        }
    }
    Ok(Client {
        ip: client.or(Some(proxy)),
        via_proxy: true,
        unnamed,
        counted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Cursor;

    fn rules() -> Rules {
        let cfg = Config {
            header_timeout: std::time::Duration::from_secs(10),
            idle_timeout: std::time::Duration::from_secs(60),
            write_timeout: std::time::Duration::from_secs(30),
            heartbeat: std::time::Duration::from_secs(15),
            max_header_bytes: 1024,
            max_body: 1024,
            max_connections_per_ip: 2,
            trusted_proxies: vec!["10.0.0.1".parse().unwrap()],
            ..Config::default()
        };
        Rules::new(&cfg, 4)
    }

    fn conn() -> Conn<()> {
        Conn::new((), 0, NEVER)
    }

    fn streaming() -> State {
        State::Streaming(Cursors::One(Cursor {
            stream: crate::broker::StreamIdx::for_test(0),
            slot: 0,
            last_id: crate::id::EventId::NONE,
        }))
    }

    fn out(bytes: usize, since: Tick) -> Option<Box<Out>> {
        Some(Box::new(Out {
            tail: None,
            buf: vec![b'x'; bytes],
            pos: 0,
            since,
        }))
    }

    fn mem() -> Account {
        Account::new(crate::memory::Limits::new(1 << 30, 1 << 20, 1 << 20))
    }

    /// Paths of the requests a feed yields until it waits, and how it stopped.
    fn paths(f: &mut Feed<'_>, state: &State) -> (Vec<String>, String) {
        let mut out = Vec::new();
        loop {
            match f.next(Some(state)) {
                Step::Request(r) => out.push(r.path.to_string()),
                other => return (out, format!("{other:?}")),
            }
        }
    }

    /// The driver's read path without a socket: bytes in at `now`, the
    /// paths routed and the deadline set (if any) out.
    fn read(
        c: &mut Conn<()>,
        m: &mut Account,
        bytes: &[u8],
        now: Tick,
        r: &Rules,
    ) -> (Vec<String>, Option<Tick>) {
        let ReadMode::Requests { was_idle } = c.read_mode() else {
            return (Vec::new(), None);
        };
        c.input_began();
        let mut f = Feed::new(c.take_request(m, &mut Peers::default()), bytes, r).unwrap();
        let mut routed = Vec::new();
        let mut deadline = None;
        while let Step::Request(req) = f.next(Some(&c.state)) {
            routed.push(req.path.to_string());
            deadline = c.after_request(now, r).or(deadline);
        }
        if let Some(rest) = f.finish() {
            let new_request = was_idle || c.idle();
            c.put_request(rest, m, &mut Peers::default());
            deadline = c.holding(new_request, now, r).or(deadline);
        }
        (routed, deadline)
    }

    #[test]
    fn pipelined_requests_come_out_one_at_a_time() {
        let r = rules();
        let input =
            b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\nGET /c HT";
        let mut f = Feed::new(None, input, &r).unwrap();
        let (got, end) = paths(&mut f, &State::reading());
        assert_eq!(got, ["/a", "/b"]);
        assert_eq!(end, "Wait");
        let rest = f.finish().unwrap();
        assert_eq!(rest.data, b"GET /c HT");
        let mut f = Feed::new(Some(rest), b"TP/1.1\r\nHost: h\r\n\r\n", &r).unwrap();
        assert_eq!(paths(&mut f, &State::reading()).0, ["/c"]);
        assert!(f.finish().is_none());
    }

    #[test]
    fn paused_input_keeps_everything() {
        let r = rules();
        let input = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
        let paused = State::Reading {
            buf: None,
            idle: true,
            paused: true,
        };
        let mut f = Feed::new(None, input, &r).unwrap();
        assert_eq!(paths(&mut f, &paused), (vec![], "Wait".to_string()));
        let rest = f.finish().unwrap();
        assert_eq!(rest.data, input);
        // Resumed once output drained: routed from what was kept.
        let mut f = Feed::resume(rest, &r);
        assert_eq!(paths(&mut f, &State::reading()).0, ["/a"]);
        assert!(f.finish().is_none());
    }

    #[test]
    fn bytes_after_a_stream_began_are_dropped() {
        let r = rules();
        let mut f = Feed::new(None, b"GET /b HTTP/1.1\r\n\r\n", &r).unwrap();
        let (got, end) = paths(&mut f, &streaming());
        assert!(got.is_empty());
        assert_eq!(end, "Dropped { pipelined: true }");
        assert!(f.finish().is_none());
        let mut f = Feed::new(None, b"GET /b HTTP/1.1\r\n\r\n", &r).unwrap();
        assert_eq!(
            paths(&mut f, &State::Draining).1,
            "Dropped { pipelined: false }"
        );
    }

    #[test]
    fn broken_framing_and_oversize_are_refused() {
        let r = rules();
        let mut f = Feed::new(None, b"NOT HTTP AT ALL\r\n\r\n", &r).unwrap();
        match f.next(Some(&State::reading())) {
            Step::Refuse(x) => assert_eq!(x.status, 400),
            other => panic!("{other:?}"),
        }
        assert!(f.finish().is_none());
        let big = vec![b'x'; r.max_request + 1];
        let e = Feed::new(None, &big, &r).err().unwrap();
        assert_eq!(e.status, 413);
        let wire = String::from_utf8(e.encode()).unwrap();
        assert!(wire.starts_with("HTTP/1.1 413 "), "{wire}");
        assert!(wire.contains("Connection: close"), "{wire}");
    }

    #[test]
    fn expect_continue_is_asked_for_once() {
        let r = rules();
        let head =
            b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        let mut f = Feed::new(None, head, &r).unwrap();
        assert!(matches!(f.next(Some(&State::reading())), Step::Continue));
        let rest = f.finish().unwrap();
        let mut f = Feed::new(Some(rest), b"abc", &r).unwrap();
        assert_eq!(paths(&mut f, &State::reading()).0, ["/e"]);
    }

    /// Slowloris: the header deadline is set when a request begins and
    /// dribbled bytes never move it; the next request gets a fresh one.
    #[test]
    fn dribbled_bytes_never_extend_the_header_deadline() {
        let r = rules();
        let mut m = mem();
        // Admitted at tick 0: its first request is due by 0 + 100 ticks,
        // and its first bytes do not move that.
        let mut peers = Peers::default();
        let a = admit(&mut peers, [192, 0, 2, 1].into(), 0, 0, false, 0, &r).unwrap();
        assert_eq!(a.deadline, 100);
        let mut c = conn();
        assert_eq!(
            read(&mut c, &mut m, b"GET /a HTTP/1.1\r\n", 20, &r),
            (vec![], None)
        );
        assert_eq!(read(&mut c, &mut m, b"Host: h\r\n", 50, &r), (vec![], None));
        assert_eq!(read(&mut c, &mut m, b"X: y\r\n", 99, &r), (vec![], None));
        assert_eq!(
            m.used(Kind::Requests),
            b"GET /a HTTP/1.1\r\nHost: h\r\nX: y\r\n".len()
        );
        // Completed at tick 99: routed, then idle until 99 + 600.
        let (got, d) = read(&mut c, &mut m, b"\r\n", 99, &r);
        assert_eq!((got, d), (vec!["/a".to_string()], Some(699)));
        assert!(c.idle());
        assert_eq!(m.used(Kind::Requests), 0);
        // The next request, begun at 300, has until 400.
        assert_eq!(
            read(&mut c, &mut m, b"GET /b HTTP/1.1\r\nHost: h", 300, &r).1,
            Some(400)
        );
        // A request completed with the start of another in the same read:
        // the new one's clock starts now.
        let (got, d) = read(&mut c, &mut m, b"\r\n\r\nGET /c", 350, &r);
        assert_eq!((got, d), (vec!["/b".to_string()], Some(450)));
    }

    #[test]
    fn backed_up_output_pauses_pipelined_input() {
        let r = rules();
        let mut c = conn();
        c.out = out(PIPELINE_OUT_LIMIT, 0);
        assert_eq!(c.after_request(5, &r), None);
        assert_eq!(c.read_mode(), ReadMode::Requests { was_idle: true });
        c.out = out(PIPELINE_OUT_LIMIT + 1, 0);
        assert_eq!(c.after_request(5, &r), None);
        assert_eq!(c.read_mode(), ReadMode::Stop);
        c.out = None;
        c.state = State::reading();
        assert_eq!(c.after_request(5, &r), Some(605));
    }

    #[test]
    fn due_deadlines_while_reading() {
        let r = rules();
        let mut c = conn();
        // Never sent a byte.
        assert_eq!(
            c.expire(100, NEVER, false, &r),
            Due::Close { unasked: true }
        );
        // Idle keep-alive.
        c.state = State::Reading {
            buf: None,
            idle: true,
            paused: false,
        };
        assert_eq!(
            c.expire(100, NEVER, false, &r),
            Due::Close { unasked: false }
        );
        // Half a request: 408.
        c.state = State::Reading {
            buf: Some(Box::default()),
            idle: false,
            paused: false,
        };
        let Due::Refuse(x) = c.expire(100, NEVER, false, &r) else {
            panic!()
        };
        assert_eq!((x.status, x.reason), (408, "timeout"));
        // In the /healthz reserve: the over-capacity 503.
        let mut c = conn();
        assert_eq!(
            c.expire(10, NEVER, true, &r),
            Due::Refuse(Refuse::OVER_CAPACITY)
        );
        // Lingering after a final response.
        c.state = State::Lingering;
        assert_eq!(
            c.expire(10, NEVER, false, &r),
            Due::Close { unasked: false }
        );
        c.state = State::Closing;
        assert_eq!(c.expire(10, NEVER, false, &r), Due::Nothing);
    }

    #[test]
    fn write_stalls_heartbeats_and_tokens() {
        let r = rules();
        let mut c = conn();
        c.state = streaming();
        // Drained: a heartbeat is due, then the deadline is the next one.
        assert_eq!(c.expire(150, NEVER, false, &r), Due::Heartbeat);
        assert_eq!(c.stream_deadline(150, NEVER, &r), Some(300));
        assert_eq!(c.stream_deadline(150, 200, &r), Some(200));
        // Output stuck since tick 100: at 250 the deadline moves to 400...
        c.out = out(10, 100);
        assert_eq!(c.expire(250, NEVER, false, &r), Due::Nothing);
        assert_eq!(c.deadline, 400);
        assert_eq!(c.stream_deadline(250, NEVER, &r), Some(400));
        // ...or to the token's expiry if sooner, and at 400 it is stalled.
        assert_eq!(c.expire(250, 300, false, &r), Due::Nothing);
        assert_eq!(c.deadline, 300);
        assert_eq!(c.expire(400, NEVER, false, &r), Due::WriteStalled);
        // An expired token ends the stream before anything else.
        assert_eq!(c.expire(400, 400, false, &r), Due::TokenExpired);
        // Without heartbeats a drained stream waits for its token only.
        let mut r = r;
        r.heartbeat = NEVER;
        c.out = None;
        assert_eq!(c.expire(400, 900, false, &r), Due::Nothing);
        assert_eq!(c.deadline, 900);
    }

    #[test]
    fn after_write_lingers_or_waits() {
        let r = rules();
        let mut c = conn();
        c.state = State::Draining;
        assert_eq!(c.after_write(10, &r), Wrote::Linger);
        c.out = out(1, 10);
        assert_eq!(c.after_write(10, &r), Wrote::Deadline(310));
        // A nearer deadline (the header one) stays.
        c.deadline = 50;
        assert_eq!(c.after_write(10, &r), Wrote::Deadline(50));
        c.out = None;
        c.state = State::reading();
        assert_eq!(c.after_write(10, &r), Wrote::Nothing);
    }

    #[test]
    fn healthz_reserve_past_the_cap() {
        let r = rules();
        let mut peers = Peers::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = admit(&mut peers, ip, 3, 0, false, 7, &r).unwrap();
        assert_eq!((a.deadline, a.reserve), (107, false));
        // At the cap: admitted to the reserve, with a second to ask.
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = admit(&mut peers, other, 4, 0, false, 7, &r).unwrap();
        assert_eq!((a.deadline, a.reserve), (17, true));
        // The reserve full, or shutting down: refused.
        let e = admit(&mut peers, other, 4, HEALTHZ_RESERVE, false, 7, &r);
        assert_eq!(e, Err(Refuse::OVER_CAPACITY));
        assert_eq!(
            admit(&mut peers, other, 4, 0, true, 7, &r),
            Err(Refuse::OVER_CAPACITY)
        );
        // Per address: two, then refused; a trusted proxy is not limited.
        admit(&mut peers, ip, 0, 0, false, 7, &r).unwrap();
        assert_eq!(
            admit(&mut peers, ip, 0, 0, false, 7, &r),
            Err(Refuse::PER_IP)
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..5 {
            admit(&mut peers, proxy, 0, 0, false, 7, &r).unwrap();
        }
        // Only GET or HEAD /healthz is answered from the reserve.
        let ok = http::parse(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n", r.limits).unwrap();
        let Parsed::Complete(req, _) = ok else {
            panic!()
        };
        let wire = reserve_answer(&req).unwrap();
        assert!(wire.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(wire.ends_with(b"\r\n\r\nok"));
        let no = http::parse(b"GET /events HTTP/1.1\r\nHost: h\r\n\r\n", r.limits).unwrap();
        let Parsed::Complete(req, _) = no else {
            panic!()
        };
        assert_eq!(reserve_answer(&req), Err(Refuse::OVER_CAPACITY));
    }

    #[test]
    fn forwarded_clients_are_counted_per_address() {
        let r = rules();
        let mut peers = Peers::default();
        let mut proxied = HashMap::new();
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let direct: IpAddr = "192.0.2.9".parse().unwrap();
        let parse = |b: &'static [u8]| match http::parse(b, r.limits).unwrap() {
            Parsed::Complete(req, _) => req,
            Parsed::Partial => panic!(),
        };
        let from = |ip: &str| {
            let s = format!("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: {ip}\r\n\r\n");
            Box::leak(s.into_bytes().into_boxed_slice()) as &[u8]
        };
        // A direct peer is itself, and its headers are ignored.
        let c = client_of(
            ConnKey(0),
            Some(direct),
            &parse(from("203.0.113.5")),
            &mut peers,
            &mut proxied,
            &r,
        );
        assert_eq!(
            c.unwrap(),
            Client {
                ip: Some(direct),
                via_proxy: false,
                unnamed: false,
                counted: None
            }
        );
        // Through the proxy: the forwarded address, counted once per connection.
        let a: IpAddr = "203.0.113.5".parse().unwrap();
        let req = parse(from("203.0.113.5"));
        for key in [1, 1, 2].map(ConnKey) {
            let c = client_of(key, Some(proxy), &req, &mut peers, &mut proxied, &r).unwrap();
            assert_eq!((c.ip, c.via_proxy), (Some(a), true));
        }
        assert_eq!(proxied.len(), 2);
        // A third connection for that address is over --max-connections-per-ip.
        let e = client_of(ConnKey(3), Some(proxy), &req, &mut peers, &mut proxied, &r);
        assert_eq!(e, Err(Refuse::PER_IP));
        // Connection 1 now carries another client: the count moves.
        let b: IpAddr = "203.0.113.6".parse().unwrap();
        let c = client_of(
            ConnKey(1),
            Some(proxy),
            &parse(from("203.0.113.6")),
            &mut peers,
            &mut proxied,
            &r,
        );
        assert_eq!(c.unwrap().counted, Some(b));
        assert!(client_of(ConnKey(3), Some(proxy), &req, &mut peers, &mut proxied, &r).is_ok());
        // No forwarding header: the proxy itself, not counted.
        let c = client_of(
            ConnKey(4),
            Some(proxy),
            &parse(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
            &mut peers,
            &mut proxied,
            &r,
        );
        assert_eq!(
            c.unwrap(),
            Client {
                ip: Some(proxy),
                via_proxy: true,
                unnamed: false,
                counted: None
            }
        );
        // A proxy that names no usable client: pooled under the proxy's
        // address, not counted.
        let c = client_of(
            ConnKey(5),
            Some(proxy),
            &parse(b"GET / HTTP/1.1\r\nHost: h\r\nForwarded: for=unknown\r\n\r\n"),
            &mut peers,
            &mut proxied,
            &r,
        );
        assert_eq!(
            c.unwrap(),
            Client {
                ip: Some(proxy),
                via_proxy: true,
                unnamed: true,
                counted: None
            }
        );
    }

    #[test]
    fn each_address_holds_at_most_its_share_of_request_buffers() {
        let r = rules();
        // A 64 MiB request budget: an eighth, 8 MiB, per address.
        let mut m = Account::new(crate::memory::Limits::new(1 << 30, 1 << 20, 64 << 20));
        let share = request_share(&m, &r);
        assert_eq!(share, 8 << 20);
        let mut peers = Peers::default();
        let a = peers.add([192, 0, 2, 1].into(), 10).unwrap();
        let b = peers.add([192, 0, 2, 2].into(), 10).unwrap();
        let proxy = peers.add("10.0.0.1".parse().unwrap(), 10).unwrap();
        // Connection of `a` holds 6 MiB of an unfinished request.
        let mut c = conn();
        c.peer = a;
        let held = Box::new(ReqBuf {
            data: vec![b'x'; 6 << 20],
            scan: http::Scan::default(),
        });
        assert_eq!(request_fits(&mut m, &peers, a, 6 << 20, &r), Ok(()));
        c.put_request(held, &mut m, &mut peers);
        assert_eq!(peers.requests(a), 6 << 20);
        // 3 MiB more of `a` passes its share; of `b` or the proxy it fits.
        let e = request_fits(&mut m, &peers, a, 3 << 20, &r);
        assert_eq!(e, Err(BufferFull::Address(share)));
        assert_eq!(e.unwrap_err().reason(), "buffer_share_per_ip");
        let wire = String::from_utf8(e.unwrap_err().encode()).unwrap();
        assert!(wire.starts_with("HTTP/1.1 503 ") && wire.contains("at most 8388608 bytes"));
        assert_eq!(request_fits(&mut m, &peers, b, 3 << 20, &r), Ok(()));
        assert_eq!(request_fits(&mut m, &peers, proxy, 9 << 20, &r), Ok(()));
        // Taken out to parse, then closed: `a` holds nothing any more.
        let b = c.take_request(&mut m, &mut peers).unwrap();
        assert_eq!(peers.requests(a), 0);
        c.put_request(b, &mut m, &mut peers);
        assert!(matches!(c.close(&mut m, &mut peers), Closed::Now(None)));
        assert_eq!(peers.requests(a), 0);
    }

    #[test]
    fn unsent_output_is_charged_and_refused_past_the_account() {
        // The smallest account: 4 MiB, a quarter of it for output.
        let mut m = Account::new(crate::memory::Limits::new(0, 0, 1 << 20));
        let out_limit = m.limits().of(Kind::Output);
        let mut c = conn();
        // A drained socket took part of a response: the rest is kept.
        c.keep_unsent(b"rest", 3, &mut m).unwrap();
        assert_eq!(c.out.as_ref().unwrap().slices()[1], b"rest");
        c.append_out(b"+more", &mut m).unwrap();
        assert_eq!(m.used(Kind::Output), 9);
        // The socket takes 6 at tick 8: the copies given back, the clock moved.
        let out = c.out.as_mut().unwrap();
        assert_eq!(out.advance(6, 8), 6);
        assert_eq!((out.slices()[1], out.since), (&b"ore"[..], 8));
        // Past the account: a response not yet begun becomes a short 503...
        let huge = vec![0; out_limit + 1];
        let mut fresh = conn();
        let r = fresh.keep_unsent(&huge, 3, &mut m).unwrap_err();
        assert_eq!(r.kind(), Kind::Output);
        assert!(fresh.refuse_output(true, 3, &mut m, &mut Peers::default()));
        assert!(matches!(fresh.state, State::Draining));
        let wire = fresh.out.as_ref().unwrap().slices()[1].to_vec();
        assert!(wire.starts_with(b"HTTP/1.1 503 "));
        assert!(String::from_utf8(wire).unwrap().contains("--memory-max"));
        // ...anything else closes: a stream's bytes, or a begun response.
        let mut s = conn();
        s.state = streaming();
        assert!(!s.refuse_output(true, 3, &mut m, &mut Peers::default()));
        assert!(!c.refuse_output(true, 3, &mut m, &mut Peers::default()));
        assert!(matches!(
            s.close(&mut m, &mut Peers::default()),
            Closed::Now(Some(_))
        ));
        assert!(matches!(
            s.close(&mut m, &mut Peers::default()),
            Closed::Already
        ));
    }

    #[test]
    fn a_chunked_stream_ends_back_in_keep_alive() {
        let r = rules();
        let mut m = mem();
        let mut c = conn();
        c.state = State::Reading {
            buf: Some(Box::new(ReqBuf {
                data: b"GET /x".to_vec(),
                scan: http::Scan::default(),
            })),
            idle: false,
            paused: false,
        };
        m.force(Kind::Requests, 6);
        assert!(c.begin_stream(true, &mut m, &mut Peers::default()));
        assert_eq!(m.used(Kind::Requests), 0);
        assert_eq!(c.read_mode(), ReadMode::Discard);
        assert!(
            !c.begin_stream(true, &mut m, &mut Peers::default()),
            "only from reading"
        );
        c.state = streaming();
        let (left, chunked) = c.end_stream().unwrap();
        assert!(left.is_some() && chunked && !c.chunked);
        // The last chunk queued: reading requests again, idle.
        assert_eq!(c.reuse(40, &r), Some(640));
        assert_eq!(c.read_mode(), ReadMode::Requests { was_idle: true });
        assert!(c.end_stream().is_none(), "no stream any more");
        // An HTTP/1.0 stream ends unchunked: the driver closes it.
        c.state = State::Ticking(Box::new(crate::reactor::conn::Ticker {
            gen: 1,
            interval_ms: 100,
            next: Box::new(|_| Vec::new()),
        }));
        let (left, chunked) = c.end_stream().unwrap();
        assert!(left.is_none() && !chunked);
    }

    #[test]
    fn a_drained_socket_resumes_paused_input_unless_a_reply_is_held() {
        let mut c = conn();
        c.state = State::Reading {
            buf: None,
            idle: true,
            paused: true,
        };
        assert_eq!(c.drained(true), Drained::Write { resume: false });
        assert_eq!(c.read_mode(), ReadMode::Stop);
        assert_eq!(c.drained(false), Drained::Write { resume: true });
        assert_eq!(c.read_mode(), ReadMode::Requests { was_idle: true });
        assert_eq!(c.drained(false), Drained::Write { resume: false });
        c.state = streaming();
        assert_eq!(c.drained(false), Drained::Stream);
        c.state = State::Lingering;
        assert_eq!(c.drained(false), Drained::Nothing);
        let mut m = mem();
        c.state = State::reading();
        c.last_response(&mut m, &mut Peers::default());
        assert!(matches!(c.state, State::Draining));
        assert_eq!(c.drained(false), Drained::Write { resume: false });
    }

    #[test]
    fn ticks_skip_a_blocked_peer_and_stale_generations() {
        let mut c = conn();
        c.state = State::Ticking(Box::new(crate::reactor::conn::Ticker {
            gen: 7,
            interval_ms: 250,
            next: Box::new(|now| format!("data: {now}\n\n").into_bytes()),
        }));
        let t = c.tick(7, 1000).unwrap();
        assert_eq!(
            (t.next_ms, t.frame),
            (1250, Some(b"data: 1000\n\n".to_vec()))
        );
        assert_eq!(c.tick(6, 1000), None, "an older ticker on a reused key");
        c.out = out(1, 0);
        assert_eq!(c.tick(7, 1250).unwrap().frame, None);
        c.state = State::Draining;
        assert_eq!(c.tick(7, 1500), None);
    }

    #[test]
    fn a_token_ends_its_stream_never_early() {
        // Expires at unix 100 s; now is 99.95 s at tick 40: half a tick
        // left, rounded up to one.
        assert_eq!(token_deadline(100, 99_950_000, 40), 41);
        assert_eq!(token_deadline(100, 99_900_000, 40), 41);
        assert_eq!(token_deadline(100, 99_899_999, 40), 42);
        // Already expired: due now.
        assert_eq!(token_deadline(100, 100_000_001, 40), 40);
        // Far away: capped, never NEVER.
        assert!(token_deadline(u64::MAX, 0, 40) < NEVER);
    }
}
