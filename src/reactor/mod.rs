//! The reactor: one `mio::Poll`, the waker, the one reactor-wide read
//! buffer, every connection, and the loop that turns readiness into
//! handler calls and carries out the actions they return. It is the only
//! code that touches `Poll`, sockets, the clock, or `write`/`writev`.
//!
//! `mod.rs` is the driver: it reads the clock, calls `read`/`writev`,
//! routes requests and carries out what the parts decide. The rules live
//! in parts it owns, which never name it (`tests/it/layers.rs` checks)
//! and, but for the socket-facing ones (`conn.rs`'s socket type,
//! `bind.rs`, `listen.rs`, the bus's connections, the journal), do no
//! I/O: each takes what it needs (`&mut Broker`, `&mut Apps`, `now`) and
//! returns what the driver must do — a `proto::Due`, a `publish::Route`
//! and `Answer`, the bus link's `Effect`s, a released `Held` — so each has
//! unit tests without a socket.
//!
//! One loop turn: poll (until the nearest timer) → handle readiness
//! (accept, read + route requests, drain writes, step the bus link) →
//! fire due timers (a slice of the sweep, ticks) → release held replies,
//! compact the journal → fan newly published frames out to subscribers →
//! free closed connections → report the memory account (stream tails at
//! most once a tick) and maybe trim.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | the driver: the loop, accept, reads, writes, request routing, carrying out actions and effects |
//! | `bind.rs` | `Bound`: everything that can fail at start (listeners, waker, Redis address, journal open, signals) |
//! | `conn.rs` | the connection struct and its states (its key, `ConnKey`, is `src/id.rs`'s); `Sides`: the turn's connection lists and the side tables (reserve, proxied clients, token expiries) |
//! | `proto.rs` | the connection machine: reading requests, deadlines and what they mean, admission, the client behind a proxy (no I/O) |
//! | `fanout.rs` | the fan-out passes, what one `writev` to a subscriber holds, what slow subscribers' tails alone keep alive (`Tails`, the memory account's `tails`) (no I/O) |
//! | `sweep.rs` | deadlines swept in slices: timeouts, heartbeats, lingering; when freed heap is handed back (`Trim`) (no I/O) |
//! | `publish.rs` | the one publish path: `apply` (route: bus or prepare → journal → commit), `settle` and `render` (no I/O) |
//! | `bus/` | the Redis bus (`--redis`): its connections, and the bus link (`link.rs`, no I/O) that ties them to the broker |
//! | `durable.rs` | the journal link (`--data-dir`): replay, the journal's `Link`, held replies, compaction |
//! | `held.rs` | a reply held until the journal's fsync covers it |
//! | `report.rs` | `/stats` and `/metrics` assembled from the parts (no I/O) |
//! | `timer.rs` | the deadline heap, ticker generations |
//! | `peers.rs` | per-address connection counts and unfinished-request bytes |
//! | `listen.rs` | `SO_REUSEPORT` listeners (and the supervisor's port reservation); `Acceptor`: the listeners and the accept state between turns |

mod bind;
#[cfg_attr(not(feature = "redis"), path = "bus/off.rs")]
mod bus;
mod conn;
#[cfg_attr(not(feature = "journal"), path = "durable_off.rs")]
mod durable;
mod fanout;
mod held;
pub(crate) mod listen;
mod peers;
mod proto;
mod publish;
mod report;
mod sweep;
pub(crate) mod timer;

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use slab::Slab;

use crate::apps::Apps;
use crate::broker::{Broker, Limits, StreamIdx};
use crate::config::Config;
use crate::event::{Event, PublishError};
use crate::frame;
use crate::handler::{Action, Cx, Publish, Reply};
use crate::http::{self, Response};
use crate::id::EventId;
use crate::memory::{Kind, Refusal};
use crate::stats::{Counters, Gauges};
pub(crate) use bind::Bound;
use conn::{ms_to_ticks, Conn, ConnKey, Out, ReqBuf, State, Tick, NEVER, TICK_MS};
use fanout::{Batch, WRITE_BUDGET};
use peers::Peers;
use proto::{Due, Feed, ReadMode, Refuse, Step, Wrote};
use publish::{Answer, Outcome, Route, To};
use timer::{Timer, Timers};

const READ_BUF: usize = 64 << 10;
/// Cross-thread publishes waiting for the loop, at most.
pub(crate) const INBOX_LIMIT: usize = 65_536;
/// Subscribers written to per loop turn; a larger fan-out continues next
/// turn (see `fanout.rs`). Smaller passes let more events arrive while a
/// pass is under way, so late subscribers get more of them per write:
/// with 10,000 subscribers and a reply-paced publisher, 2048 gave ~0.8 M
/// deliveries/s at 1.25 µs of server CPU each, 512 gave ~1.8 M at 0.53 µs
/// with the same p50 latency (`ssed-bench fanout`, docs/BENCHMARKS.md).
const FLUSH_BUDGET: usize = 512;
/// Back-off after EMFILE/ENFILE.
const ACCEPT_BACKOFF_MS: u64 = 100;
/// Reads of one connection per loop turn (64 KiB each), so a flooding peer
/// cannot starve the others.
const READS_PER_TURN: usize = 16;
/// Connections accepted per listener per loop turn, so a connect storm
/// cannot starve established connections; the rest wait one turn.
const ACCEPT_BATCH: usize = 256;
/// All incomplete requests together may hold this much (or four maximal
/// requests, if more): without it, every connection may hold `--max-body`.
const REQUEST_BUFFER_BUDGET: usize = 64 << 20;

/// How long a closing connection waits for its peer's FIN after we sent
/// ours, so an error response is not destroyed by a reset.
const LINGER_MS: u64 = 2000;

/// Messages from other threads.
pub(crate) enum Command {
    /// Publish an event; the id (or why not) goes back on the channel.
    Publish(String, Event, mpsc::Sender<Result<u64, PublishError>>),
}

/// State shared with [`crate::Publisher`] and [`crate::ShutdownHandle`].
pub(crate) struct Shared {
    pub inbox: Mutex<VecDeque<Command>>,
    pub shutdown: AtomicBool,
    pub waker: Waker,
}

/// Most connection slots reserved up front. Reserved capacity is address
/// space, not memory: the allocator maps a block this large on its own and
/// a page costs RSS only once a connection lands in it. Growing by
/// doubling instead would copy the table at every power of two and can
/// leave the old copy behind in the heap (~5-10 B per connection at
/// 16,000-19,000 measured).
const RESERVE_CONNS: usize = 1 << 20;

impl Bound {
    pub fn run(self) -> io::Result<()> {
        let clock = Clock::new();
        let limits = Limits {
            history: self.cfg.history,
            history_bytes: self.cfg.history_bytes,
        };
        let mut broker = Broker::new(clock.start_unix_us, limits, self.cfg.max_streams);
        broker.set_memory(
            self.cfg.history_total_bytes,
            self.cfg.stream_idle_ttl.as_micros() as u64,
        );
        let bus = self
            .redis
            .map(|(u, t)| bus::Link::new(u, t, &self.cfg, self.poll.registry(), clock.now_ms));
        let mut apps = Apps::new(self.users);
        let durable = self
            .journal
            .map(|o| durable::install(o, &mut broker, &mut apps));
        let memory = memory_limits(&self.cfg);
        let rules = proto::Rules::new(&self.cfg, self.max);
        let mut r = Reactor {
            bus,
            durable,
            bus_fx: Vec::new(),
            side: conn::Sides::default(),
            presence: crate::presence::Presence::new(self.cfg.mercure_subscriptions),
            poll: self.poll,
            acceptor: listen::Acceptor::new(self.listeners),
            shared: self.shared,
            rbuf: vec![0; READ_BUF],
            conns: Slab::with_capacity(self.max.min(RESERVE_CONNS)),
            broker,
            apps,
            auth: self.auth,
            cfg: self.cfg,
            counters: Counters::default(),
            timers: Timers::default(),
            peers: Peers::default(),
            clock,
            rng: SmallRng::from_entropy(),
            shutting_down: false,
            memory: crate::memory::Account::new(memory),
            rules,
            fanout: fanout::Fanout::default(),
            sweep: sweep::Sweep::default(),
        };
        r.schedule_expire(false);
        r.run()
    }
}

/// The loop's clock: read once per turn (and precisely for ids).
struct Clock {
    start: Instant,
    /// Unix time of `start` in µs.
    start_unix_us: u64,
    /// Milliseconds since `start`, as of this turn.
    now_ms: u64,
}

impl Clock {
    fn new() -> Clock {
        let start_unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Clock {
            start: Instant::now(),
            start_unix_us,
            now_ms: 0,
        }
    }
    fn tick(&mut self) {
        self.now_ms = self.start.elapsed().as_millis() as u64;
    }
    fn now_tick(&self) -> Tick {
        Tick::try_from(self.now_ms / TICK_MS).unwrap_or(NEVER - 1)
    }
    /// Wall-clock unix time in µs, finer than the per-turn clock (for ids
    /// and timestamps that users compare with their own clocks).
    fn unix_us(&self) -> u64 {
        self.start_unix_us + self.start.elapsed().as_micros() as u64
    }
}

/// The reactor and everything it owns.
pub(crate) struct Reactor {
    /// The Redis bus, with `--redis`.
    bus: Option<bus::Link>,
    poll: Poll,
    /// The listeners and the accept state.
    acceptor: listen::Acceptor,
    shared: Arc<Shared>,
    rbuf: Vec<u8>,
    conns: Slab<Conn>,
    broker: Broker,
    apps: Apps,
    auth: crate::access::Access,
    cfg: Config,
    counters: Counters,
    timers: Timers,
    peers: Peers,
    clock: Clock,
    rng: SmallRng,
    shutting_down: bool,
    /// The memory account: request buffers, unsent output, history (as
    /// reported by the broker) and what other parts charge.
    memory: crate::memory::Account,
    /// The connection machine's configuration.
    rules: proto::Rules,
    /// Fan-out passes under way and subscribers owed a turn.
    fanout: fanout::Fanout,
    sweep: sweep::Sweep,
    /// The journal link (`--data-dir`).
    durable: Option<durable::Durable>,
    /// What the bus link asked for, carried out in order (reused).
    bus_fx: Vec<bus::Effect>,
    /// The turn's connection lists and the side tables (`Conn` must not
    /// grow for what few connections need).
    side: conn::Sides,
    /// Hub subscribers whose subscriptions are announced, by connection (a
    /// side table too), and the active subscriptions heard of.
    presence: crate::presence::Presence,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Writes as much of `bufs` as the socket takes; `Ok(0)` on WouldBlock.
fn write_vectored(sock: &mut TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    loop {
        match sock.write_vectored(bufs) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if would_block(&e) => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

impl Reactor {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            self.clock.tick();
            self.bus_send();
            let busy = self.fanout.busy() || self.presence.has_pending();
            let timeout = if !self.acceptor.owed() && self.side.read_again.is_empty() && !busy {
                let bus = self.bus.as_ref().and_then(bus::Link::next_deadline);
                let at = match (self.timers.next_at(), bus) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                at.map(|t| Duration::from_millis(t.saturating_sub(self.clock.now_ms)))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.clock.tick();
            self.broker
                .tick(self.clock.start_unix_us + self.clock.now_ms * 1000);
            for i in self.acceptor.take_owed() {
                self.accept(i);
            }
            for key in std::mem::take(&mut self.side.read_again) {
                self.on_readable(key);
            }
            for ev in events.iter() {
                let t = ev.token();
                if t == bind::WAKER {
                    self.drain_inbox();
                } else if bus::owns(t) {
                    self.bus_event(t);
                } else if t.0 >= usize::MAX - 1 - self.acceptor.len() {
                    self.accept(usize::MAX - 1 - t.0);
                } else {
                    let key = ConnKey::of(t.0);
                    if ev.is_writable() {
                        self.on_writable(key);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.on_readable(key);
                    }
                }
            }
            let mut stirred = !events.is_empty();
            while let Some((when, t)) = self.timers.pop_due(self.clock.now_ms) {
                stirred |= t != Timer::Expire;
                match t {
                    Timer::Sweep => self.sweep(when),
                    Timer::ResumeAccept => {
                        self.acceptor.resume();
                        for i in 0..self.acceptor.len() {
                            self.accept(i);
                        }
                    }
                    Timer::ShutdownDeadline => self.close_all(),
                    Timer::Expire => self.expire_streams(),
                    Timer::Tick { key, gen } => self.on_tick(key, gen),
                }
            }
            if stirred {
                self.stir_expire();
            }
            self.bus_timer();
            self.release_held();
            for key in std::mem::take(&mut self.side.resume_read) {
                self.resume_reading(key);
            }
            if let Some(d) = &mut self.durable {
                d.compact(&self.broker);
            }
            if self.presence.has_pending() {
                let ups = self.presence.take_pending();
                self.announce(ups);
            }
            self.flush_dirty(FLUSH_BUDGET);
            self.reap();
            self.report_memory();
            self.maybe_trim();
            if bind::signalled() || self.shared.shutdown.load(Ordering::SeqCst) {
                self.begin_shutdown();
            }
            if self.shutting_down && self.conns.is_empty() {
                log::info!("shut down cleanly");
                return Ok(());
            }
        }
    }

    /// Frees the connections closed this turn.
    fn reap(&mut self) {
        while !self.side.closing.is_empty() {
            for key in std::mem::take(&mut self.side.closing) {
                let Some(mut conn) = self.conns.try_remove(key.idx()) else {
                    continue;
                };
                let _ = self.poll.registry().deregister(&mut conn.sock);
                if let Some(out) = conn.out.take() {
                    self.free_out(&out);
                }
                self.peers.remove(conn.peer);
                if let Some(slot) = self.side.freed(key) {
                    self.peers.remove(slot);
                }
                self.apps.on_close(key);
                if let Some(l) = self.bus.as_mut() {
                    l.forget(key);
                }
                if let Some(d) = self.durable.as_mut() {
                    d.forget(key);
                }
                self.counters.closed += 1;
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        log::info!("shutting down: flushing {} connections", self.conns.len());
        self.acceptor.close(self.poll.registry());
        self.shutting_down = true;
        let deadline = self.clock.now_ms + self.cfg.shutdown_timeout.as_millis() as u64;
        self.timers.add(deadline, Timer::ShutdownDeadline);
        self.flush_dirty(usize::MAX);
        let keys: Vec<ConnKey> = self.conns.iter().map(|(k, _)| ConnKey::of(k)).collect();
        for k in keys {
            let Some(c) = self.conns.get_mut(k.idx()) else {
                continue;
            };
            match c.state {
                State::Streaming(_) | State::Ticking(_) => self.end_stream(k),
                State::Reading { .. }
                    if c.out.is_none() && !self.durable.as_ref().is_some_and(|d| d.holds(k)) =>
                {
                    self.close(k)
                }
                State::Reading { .. } => c.state = State::Draining,
                _ => {}
            }
        }
        self.reap();
    }

    /// Closes everything now (shutdown timeout).
    fn close_all(&mut self) {
        let keys: Vec<ConnKey> = self.conns.iter().map(|(k, _)| ConnKey::of(k)).collect();
        for k in keys {
            self.close(k);
        }
    }

    /// A handler context for a request on `key` (the reactor's fields, split
    /// so the rest stay usable while it lives).
    fn context(&mut self, key: Option<ConnKey>) -> Cx<'_> {
        let peer = key
            .and_then(|k| self.conns.get(k.idx()))
            .and_then(|c| self.peers.ip(c.peer));
        let via_proxy = peer.is_some_and(|p| self.cfg.trusted_proxies.contains(&p));
        self.context_for(
            key,
            proto::Client {
                ip: peer,
                via_proxy,
                unnamed: false,
                counted: None,
            },
        )
    }

    /// A handler context for `client` (see [`Reactor::client_of`]).
    fn context_for(&mut self, key: Option<ConnKey>, client: proto::Client) -> Cx<'_> {
        let proto::Client {
            ip: peer,
            via_proxy,
            unnamed,
            ..
        } = client;
        Cx {
            broker: &self.broker,
            cfg: &self.cfg,
            access: &self.auth,
            presence: &self.presence,
            counters: &mut self.counters,
            rng: &mut self.rng,
            now_ms: self.clock.now_ms,
            unix_us: self.clock.unix_us(),
            conn: key,
            peer,
            unnamed,
            via_proxy,
            cors: Vec::new(),
            redis: self.bus.as_ref().map(bus::Link::up),
            actions: Vec::new(),
        }
    }

    fn drain_inbox(&mut self) {
        let cmds: Vec<Command> = match self.shared.inbox.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(p) => p.into_inner().drain(..).collect(),
        };
        for c in cmds {
            match c {
                Command::Publish(stream, ev, reply) => {
                    let mut cx = self.context(None);
                    let decided = crate::api::publish_event(&mut cx, &stream, &ev);
                    match decided {
                        Ok(p) => {
                            if let Some(d) = self.durable.as_mut() {
                                d.begin();
                            }
                            self.publish(To::Library(reply), p);
                            if let Some(d) = self.durable.as_mut() {
                                d.end();
                            }
                        }
                        Err(e) => {
                            log::debug!("library publish to {stream:?} refused: {e}");
                            // The publisher may have stopped waiting.
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
        }
    }

    /// Carries out what a handler decided for connection `key`.
    fn act(&mut self, key: ConnKey, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Respond { bytes, close } => self.answer(key, bytes, close),
                Action::Subscribe(s) => self.subscribe(key, *s),
                Action::Publish(p) => self.publish(To::Conn(key), *p),
                Action::Tick {
                    head,
                    chunked,
                    prelude,
                    interval_ms,
                    first_in_ms,
                    next,
                } => {
                    if !self.begin_stream(key, &head, chunked) {
                        continue;
                    }
                    let gen = self.timers.next_gen();
                    if let Some(c) = self.conns.get_mut(key.idx()) {
                        c.state = State::Ticking(Box::new(conn::Ticker {
                            gen,
                            interval_ms: interval_ms.max(1),
                            next,
                        }));
                        self.timers
                            .add(self.clock.now_ms + first_in_ms, Timer::Tick { key, gen });
                    }
                    self.send_sse(key, &prelude);
                    self.after_stream_write(key);
                }
                Action::End(k) => self.end_stream(k),
                Action::DeleteStream(idx) => self.delete_stream(idx),
                Action::CreateStream { name, shape } => {
                    let resp = match self.broker.create(&name) {
                        Ok((idx, created)) => {
                            crate::api::created_stream(&self.broker, idx, created)
                        }
                        // Checked by the handler in this same turn.
                        Err(e) => Response::error(crate::handler::status(&e), &e.message()),
                    };
                    self.answer(key, shape.encode(resp), !shape.keep_alive);
                }
                Action::Stats {
                    prometheus,
                    http10,
                    keep_alive,
                    head_only,
                    headers,
                } => {
                    report::sync_counters(&mut self.counters, &self.broker);
                    self.report_memory();
                    let g = self.gauges();
                    let resp = report::response(prometheus, &self.counters, &g, &headers);
                    let bytes = resp.encode(http10, keep_alive, head_only);
                    self.respond(key, &bytes, !keep_alive);
                }
            }
        }
    }

    /// Applies a publish decision (`publish::apply`): through the bus
    /// link with `--redis`, else on this node (and into the journal with
    /// `--data-dir`); a local one is settled at once.
    fn publish(&mut self, to: To, p: Publish) {
        let to = match p.reply {
            Reply::Silent => To::Nobody,
            _ => to,
        };
        let bus = self.bus.is_some();
        // Only a local publish numbers events here (with the bus, Redis
        // does): no clock read for the bus path.
        let now_us = if bus { 0 } else { self.clock.unix_us() };
        let journal = self.durable.as_mut().map(durable::Durable::link);
        match publish::apply(&mut self.broker, journal, &mut self.apps, bus, &p, now_us) {
            Route::Done { made, outcome } => {
                if outcome.pressure {
                    self.flush_dirty(usize::MAX);
                }
                self.settle(to, p.reply, &made, outcome);
            }
            Route::Bus { targets, made } => {
                let now = self.clock.now_ms;
                let mut fx = std::mem::take(&mut self.bus_fx);
                match self.bus.as_mut() {
                    Some(l) => l.publish(&self.broker, to, targets, made, p, now, &mut fx),
                    // Not reached (no bus, no bus route); should it be, the
                    // publisher gets the 503 a bus that is down gives.
                    None => fx.push(bus::Effect::Settled {
                        to,
                        reply: p.reply,
                        made,
                        outcome: Outcome::failed(publish::Failure::redis_unavailable()),
                    }),
                }
                self.carry_out(fx);
            }
        }
    }

    /// A publish is over (`publish::settle`): its answer goes out.
    fn settle(&mut self, to: To, reply: Reply, made: &[StreamIdx], o: Outcome) {
        let (broker, apps, counters) = (&mut self.broker, &mut self.apps, &mut self.counters);
        let answer = publish::settle(broker, apps, counters, &reply, made, &o);
        self.deliver(to, answer);
    }

    /// Sends a publish's answer to whoever asked, or holds it until the
    /// journal's fsync covers what the publish wrote.
    fn deliver(&mut self, to: To, answer: Answer) {
        match (to, answer) {
            (To::Conn(k), Answer::Http(bytes, close)) => self.answer(k, bytes, close),
            (To::Library(reply), Answer::Library(res)) => {
                let wait = self.durable.as_ref().and_then(durable::Durable::must_wait);
                match (wait, self.durable.as_mut()) {
                    (Some(ticket), Some(d)) => d.hold(durable::Held::Lib { ticket, reply, res }),
                    // The publisher may have stopped waiting.
                    _ => {
                        let _ = reply.send(res);
                    }
                }
            }
            _ => {}
        }
    }

    /// Sends a reply to connection `key`, or holds it until the journal's
    /// fsync covers what its request wrote (`--fsync always`); the
    /// connection's input stays paused meanwhile, so pipelined requests
    /// wait their turn and answers keep their order.
    fn answer(&mut self, key: ConnKey, bytes: Vec<u8>, close: bool) {
        let wait = self.durable.as_ref().and_then(durable::Durable::must_wait);
        match (wait, self.durable.as_mut()) {
            (Some(ticket), Some(d)) => {
                d.hold(durable::Held::Conn {
                    ticket,
                    key,
                    bytes,
                    close,
                });
                self.pause(key);
            }
            _ => self.respond(key, &bytes, close),
        }
    }

    /// Readiness of a bus socket.
    fn bus_event(&mut self, token: Token) {
        let now = self.clock.now_ms;
        if let Some(l) = self.bus.as_mut() {
            l.on_event(self.poll.registry(), token, now);
        }
        self.bus_drain();
    }

    /// The bus's deadlines (timeouts, reconnects, pings), and what the
    /// link carries on each turn (catch-ups, waiting subscribers).
    fn bus_timer(&mut self) {
        let now = self.clock.now_ms;
        let Some(l) = self.bus.as_mut() else { return };
        l.on_timer(self.poll.registry(), now);
        self.bus_drain();
    }

    /// Sends the publishes gathered this loop turn to Redis together.
    fn bus_send(&mut self) {
        let now = self.clock.now_ms;
        if self.bus.as_mut().is_some_and(|l| l.send_batch(now)) {
            self.bus_drain();
        }
    }

    /// Steps the bus link through everything Redis said, carrying out
    /// what each output asks before the next (`Link::step`).
    fn bus_drain(&mut self) {
        let now = self.clock.now_ms;
        loop {
            let Some(l) = self.bus.as_mut() else { return };
            let mut fx = std::mem::take(&mut self.bus_fx);
            // The link admits what it buffers against the memory account's
            // room for the bus, settled around its work.
            l.settle_memory(&mut self.memory);
            let more = l.step(
                &mut self.broker,
                &mut self.apps,
                &mut self.presence,
                now,
                &mut fx,
            );
            l.settle_memory(&mut self.memory);
            self.carry_out(fx);
            if !more {
                return;
            }
        }
    }

    /// Carries out what the bus link asked for, in order; keeps the
    /// buffer for the next time.
    fn carry_out(&mut self, mut fx: Vec<bus::Effect>) {
        for e in fx.drain(..) {
            match e {
                bus::Effect::Settled {
                    to,
                    reply,
                    made,
                    outcome,
                } => self.settle(to, reply, &made, outcome),
                bus::Effect::Pause(k) => self.pause(k),
                bus::Effect::Resume(k) => self.unpause(k),
                bus::Effect::Stream {
                    key,
                    waited,
                    sub,
                    cursors,
                } => {
                    if waited {
                        // It becomes a stream: later input is dropped anyway.
                        if let Some(c) = self.conns.get_mut(key.idx()) {
                            if let State::Reading { paused, .. } = &mut c.state {
                                *paused = false;
                            }
                        }
                    }
                    self.start_stream(
                        key,
                        &sub.head,
                        sub.chunked,
                        &sub.prelude,
                        cursors,
                        sub.until,
                    );
                }
                bus::Effect::Flush => self.flush_dirty(usize::MAX),
                bus::Effect::DropOneOff(idx) => self.drop_one_off(idx),
            }
        }
        if self.bus_fx.capacity() < fx.capacity() {
            self.bus_fx = fx;
        }
    }

    /// Pauses a connection's input (its reply waits).
    fn pause(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(key.idx()) {
            if let State::Reading { paused, .. } = &mut c.state {
                *paused = true;
            }
        }
    }

    /// Lets a paused connection's input be read again.
    fn unpause(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(key.idx()) {
            if let State::Reading { paused, .. } = &mut c.state {
                if std::mem::replace(paused, false) {
                    self.side.resume_read.push(key);
                }
            }
        }
    }

    /// Subscribes connection `key`: finds or makes its streams, then
    /// plans it from this node's history and starts its stream (with
    /// `--redis`, the bus link may load history first: `Link::stream`).
    fn subscribe(&mut self, key: ConnKey, mut s: crate::handler::Subscribe) {
        let targets = match publish::admit_selectors(&self.broker, &mut self.memory, &s.to)
            .and_then(|()| publish::resolve(&mut self.broker, &s.to))
        {
            Ok((t, _)) => t,
            Err(f) => {
                // A full selector pool or the memory account's `selectors`
                // (names were checked by the handler).
                if let Some(r) = f.reason {
                    self.counters.reject(r);
                }
                let resp = Response::error(f.status, &f.msg);
                let close = !s.shape.keep_alive;
                return self.answer(key, s.shape.encode(resp), close);
            }
        };
        if let Some(j) = s.presence.take() {
            self.presence.join(key, j);
        }
        if let Some(l) = self.bus.as_mut() {
            let now = self.clock.now_ms;
            let mut fx = std::mem::take(&mut self.bus_fx);
            l.settle_memory(&mut self.memory);
            l.stream(
                &mut self.broker,
                &mut self.apps,
                key,
                &targets,
                s,
                now,
                &mut fx,
            );
            l.settle_memory(&mut self.memory);
            return self.carry_out(fx);
        }
        let c = self
            .broker
            .subscribe_as(key, &targets, &s.sees_private, &s.resume);
        let mut prelude = s.prelude;
        if let Some(g) = &c.gap {
            prelude.extend_from_slice(g);
        }
        self.start_stream(key, &s.head, s.chunked, &prelude, c.cursors, s.until);
    }

    /// Turns connection `key` into an event stream reading `cursors`.
    fn start_stream(
        &mut self,
        key: ConnKey,
        head: &[u8],
        chunked: bool,
        prelude: &[u8],
        cursors: crate::broker::Cursors,
        until: Option<u64>,
    ) {
        if !self.begin_stream(key, head, chunked) {
            // The connection went while the handler decided.
            self.broker.unsubscribe(key, &cursors);
            self.presence.left(key, true);
            return;
        }
        if let Some(c) = self.conns.get_mut(key.idx()) {
            c.state = State::Streaming(cursors);
        }
        if let Some(exp) = until {
            let at = proto::token_deadline(exp, self.clock.unix_us(), self.clock.now_tick());
            self.side.token_exp.insert(key, at);
        }
        if !self.presence.none_here() {
            self.presence.started(key, self.bus.is_none());
        }
        self.send_sse(key, prelude);
        self.flush_subscriber(key);
        self.after_stream_write(key);
    }

    /// Reports into the memory account what keeps a budget of its own:
    /// history in the rings, and the apps' archives (both within
    /// `--history-total-bytes`; the broker evicts history to keep them);
    /// and what the selector registry and the bus's fetches hold (charged
    /// between reports as clients make them grow).
    fn report_memory(&mut self) {
        use crate::memory::Kind;
        self.memory.report(Kind::History, self.broker.total_bytes());
        self.memory.report(Kind::Archives, self.broker.app_bytes());
        self.memory
            .report(Kind::Selectors, self.broker.selector_bytes());
        if let Some(l) = &mut self.bus {
            self.memory.report(Kind::Bus, l.fetch_bytes());
        }
        self.memory.report(Kind::Presence, self.presence.bytes());
        let now = self.clock.now_tick();
        if self.fanout.tails.due(now) {
            self.report_tails(now);
        }
    }

    /// Reports what only slow subscribers' tails keep alive; past the
    /// kind's limit or the global bound, drops the holders of the largest
    /// such frames as `--max-pending-bytes` drops a slow subscriber.
    fn report_tails(&mut self, now: Tick) {
        use crate::memory::Kind;
        let allowed = self.memory.allowed(Kind::Tails);
        let m = self.fanout.tails.measure(&self.conns, now, allowed);
        // What is held now; the dropped tails go when their connections
        // are freed, and the next measure says so.
        self.memory.report(Kind::Tails, m.bytes);
        if m.cut.is_empty() {
            return;
        }
        self.memory.note_refused(Kind::Tails);
        for key in m.cut {
            if self.conns.get(key.idx()).is_some_and(|c| !c.closing()) {
                self.drop_slow(
                    key,
                    format_args!(
                        "stream tails keep {} bytes alive, {allowed} allowed by the memory account",
                        m.bytes
                    ),
                );
            }
        }
    }

    /// Gauges for `/stats` and `/metrics` (`report.rs`).
    fn gauges(&self) -> Gauges {
        let live = self
            .timers
            .iter()
            .filter(|(w, t)| self.timer_live(*w, t))
            .count();
        report::gauges(report::View {
            conns: &self.conns,
            broker: &self.broker,
            memory: &self.memory,
            peers: &self.peers,
            timers: (live, self.timers.len()),
            uptime_secs: self.clock.start.elapsed().as_secs_f64(),
            rss_bytes: crate::stats::rss_bytes(),
            max_connections: self.rules.max_connections,
            redis: self.bus.as_ref().map(bus::Link::gauges),
            journal: self.durable.as_ref().map(durable::Durable::gauges),
        })
    }

    /// Sends the held replies the journal's fsync now covers (the fsync
    /// thread wakes the loop when it advances).
    fn release_held(&mut self) {
        while let Some(h) = self.durable.as_mut().and_then(durable::Durable::release) {
            match h {
                durable::Held::Lib { reply, res, .. } => {
                    let _ = reply.send(res);
                }
                durable::Held::Conn {
                    key, bytes, close, ..
                } => {
                    self.respond(key, &bytes, close);
                    if self.durable.as_ref().is_some_and(|d| d.holds(key)) {
                        continue;
                    }
                    if let Some(c) = self.conns.get_mut(key.idx()) {
                        if let State::Reading { paused, .. } = &mut c.state {
                            if *paused && c.out.is_none() {
                                *paused = false;
                                self.side.resume_read.push(key);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Makes sure a sweep runs by deadline `d`.
    fn want_sweep(&mut self, d: Tick) {
        if let Some(at) = self.sweep.want(d) {
            self.timers.add(at, Timer::Sweep);
        }
    }

    /// One slice of the sweep (the timer entry for `when` fired).
    fn sweep(&mut self, when: u64) {
        let Some(new_round) = self.sweep.begin(when, self.clock.now_ms) else {
            return;
        };
        // Cancelled timer entries (superseded sweeps, ticks of closed
        // connections) are dropped lazily; compact when they could have
        // piled up.
        if new_round && self.timers.len() > 64 {
            let (conns, at) = (&self.conns, self.sweep.at);
            self.timers.retain(|w, t| timer_live(conns, at, w, t));
        }
        let now = self.clock.now_tick();
        let mut due = Vec::new();
        self.sweep.scan(&self.conns, now, &mut due);
        for key in due {
            self.expire(key, now);
            if let Some(c) = self.conns.get(key.idx()) {
                if !c.closing() {
                    self.sweep.seen(c.deadline);
                }
            }
        }
        if let Some(at) = self.sweep.end(self.conns.capacity(), self.clock.now_ms) {
            self.timers.add(at, Timer::Sweep);
        }
    }

    /// A connection's deadline passed: the connection machine says what
    /// that means (`Conn::expire`), the reactor does it.
    fn expire(&mut self, key: ConnKey, now: Tick) {
        let exp = self.side.token_expiry(key);
        let reserved = self.side.reserve.contains(&key);
        let Some(c) = self.conns.get_mut(key.idx()) else {
            return;
        };
        match c.expire(now, exp, reserved, &self.rules) {
            Due::Nothing => {}
            Due::TokenExpired => {
                // Mercure: a subscription ends when its token expires.
                log::info!("ending stream {key}: its token expired");
                self.counters.reject("token_expired");
                self.end_stream(key);
            }
            Due::WriteStalled => {
                log::info!(
                    "closing connection {key}: nothing written for {:?}",
                    self.cfg.write_timeout
                );
                self.counters.write_timeouts += 1;
                self.close(key);
            }
            Due::Refuse(r) => self.refuse(key, r),
            Due::Close { unasked } => {
                if unasked {
                    self.counters.reject("idle_before_request");
                }
                self.close(key);
            }
            Due::Heartbeat => self.heartbeat(key),
        }
    }

    /// Schedules the next slice of the stream lifecycle sweep.
    fn schedule_expire(&mut self, mid_pass: bool) {
        let at = sweep::expire_at(self.clock.now_ms, self.cfg.stream_idle_ttl, mid_pass);
        self.timers.add(at, Timer::Expire);
    }

    /// One slice of the stream lifecycle sweep (its timer fired).
    fn expire_streams(&mut self) {
        let now = self.clock.unix_us();
        let done = self.broker.expire(now, sweep::STREAM_SLICE);
        let unread = |(_, s): (StreamIdx, &crate::broker::Stream)| !s.internal && s.subs.is_empty();
        if done && !self.broker.iter().any(unread) {
            self.sweep.rest_expire();
            return;
        }
        self.schedule_expire(!done);
    }

    /// The loop woke for something other than the lifecycle sweep: a
    /// resting sweep starts again (after its usual rest).
    fn stir_expire(&mut self) {
        if self.sweep.stir_expire() {
            self.schedule_expire(false);
        }
    }

    /// Whether a timer entry still means something: the current sweep, any
    /// one-off timer, or the tick of a live ticking connection of that
    /// generation.
    fn timer_live(&self, when: u64, t: &Timer) -> bool {
        timer_live(&self.conns, self.sweep.at, when, t)
    }

    /// Accepts a batch on listener `i`; a listener with more waiting is
    /// owed another batch next turn.
    fn accept(&mut self, i: usize) {
        if self.acceptor.paused() || self.shutting_down {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            match self.acceptor.accept(i) {
                listen::Accept::Conn(sock, addr) => self.admit(sock, addr),
                listen::Accept::Idle => return,
                listen::Accept::Again => continue,
                listen::Accept::Failed => self.counters.accept_errors += 1,
                listen::Accept::Exhausted => {
                    // Back off in steps until descriptors free up.
                    self.counters.accept_errors += 1;
                    self.counters.accept_paused += 1;
                    self.timers
                        .add(self.clock.now_ms + ACCEPT_BACKOFF_MS, Timer::ResumeAccept);
                    return;
                }
            }
        }
        self.acceptor.owe(i);
    }

    fn admit(&mut self, mut sock: TcpStream, addr: SocketAddr) {
        self.counters.accepted += 1;
        let _ = sock.set_nodelay(true);
        let admitted = proto::admit(
            &mut self.peers,
            addr.ip(),
            self.conns.len(),
            self.side.reserve.len(),
            self.shutting_down,
            self.clock.now_tick(),
            &self.rules,
        );
        let a = match admitted {
            Ok(a) => a,
            Err(r) => {
                self.counters.reject(r.reason);
                // A fresh socket has an empty send buffer; if even this does
                // not fit, the peer just sees the close.
                let _ = std::io::Write::write(&mut sock, &r.encode());
                let _ = sock.shutdown(std::net::Shutdown::Write);
                let _ = sock.read(&mut self.rbuf);
                return;
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("register: {e}");
            self.peers.remove(a.peer);
            return;
        }
        entry.insert(Conn::new(sock, a.peer, a.deadline));
        self.set_deadline(ConnKey::of(key), a.deadline);
        if a.reserve {
            self.side.reserve.push(ConnKey::of(key));
        }
    }

    /// Output drained on a connection whose input was paused: route the
    /// requests already buffered, then read on.
    fn resume_reading(&mut self, key: ConnKey) {
        let held = match self.conns.get_mut(key.idx()) {
            Some(c) => c.take_request(&mut self.memory, &mut self.peers),
            None => None,
        };
        if let Some(buf) = held {
            let feed = Feed::resume(buf, &self.rules);
            if let Some(rest) = self.process(key, feed) {
                self.put_request(key, rest);
            }
        }
        self.on_readable(key);
    }

    /// Puts an unfinished request back into its connection.
    fn put_request(&mut self, key: ConnKey, b: Box<ReqBuf>) {
        if let Some(c) = self.conns.get_mut(key.idx()) {
            c.put_request(b, &mut self.memory, &mut self.peers);
        }
    }

    /// The readable edge: read until WouldBlock, routing complete requests
    /// as they arrive. Input on connections that are not reading requests
    /// is read and dropped.
    fn on_readable(&mut self, key: ConnKey) {
        let mut rbuf = std::mem::take(&mut self.rbuf);
        self.read_into(key, &mut rbuf);
        self.rbuf = rbuf;
    }

    fn read_into(&mut self, key: ConnKey, rbuf: &mut [u8]) {
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key.idx()) else {
                return;
            };
            let mode = conn.read_mode();
            if mode == ReadMode::Stop {
                return;
            }
            let n = match conn.sock.read(rbuf) {
                Ok(0) => {
                    self.close(key);
                    return;
                }
                Ok(n) => n,
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(key);
                    return;
                }
            };
            let ReadMode::Requests { was_idle } = mode else {
                continue;
            };
            conn.input_began();
            let peer = conn.peer;
            let pending = conn.take_request(&mut self.memory, &mut self.peers);
            let feed = match Feed::new(pending, &rbuf[..n], &self.rules) {
                Ok(f) => f,
                Err(r) => return self.refuse(key, r),
            };
            let Some(rest) = self.process(key, feed) else {
                continue;
            };
            let fits = proto::request_fits(
                &mut self.memory,
                &self.peers,
                peer,
                rest.data.len(),
                &self.rules,
            );
            if let Err(full) = fits {
                // Many peers each holding a large unfinished request: refuse
                // this one rather than let the sum grow with the peer count.
                self.counters.reject(full.reason());
                return self.respond(key, &full.encode(), true);
            }
            let now = self.clock.now_tick();
            let Some(conn) = self.conns.get_mut(key.idx()) else {
                continue;
            };
            let new_request = was_idle || conn.idle();
            conn.put_request(rest, &mut self.memory, &mut self.peers);
            if let Some(d) = conn.holding(new_request, now, &self.rules) {
                self.set_deadline(key, d);
            }
        }
        // Still readable after a full budget: no new edge will come, so
        // carry on next turn, after everyone else.
        if !self.side.read_again.contains(&key) {
            self.side.read_again.push(key);
        }
    }

    /// Routes every complete request `feed` yields while the connection
    /// reads requests; returns what is left unrouted.
    fn process(&mut self, key: ConnKey, mut feed: Feed<'_>) -> Option<Box<ReqBuf>> {
        loop {
            let req = match feed.next(self.conns.get(key.idx()).map(|c| &c.state)) {
                Step::Wait => break,
                Step::Continue => {
                    self.respond(key, http::CONTINUE, false);
                    break;
                }
                Step::Dropped { pipelined } => {
                    if pipelined {
                        self.counters.reject("pipelined_after_stream");
                    }
                    break;
                }
                Step::Refuse(r) => {
                    self.refuse(key, r);
                    break;
                }
                Step::Request(req) => req,
            };
            self.counters.requests += 1;
            if self.side.reserve.contains(&key) {
                match proto::reserve_answer(&req) {
                    Ok(bytes) => {
                        self.counters.healthz_reserve += 1;
                        self.respond(key, &bytes, true);
                    }
                    Err(r) => self.refuse(key, r),
                }
                feed.discard();
                break;
            }
            let Some(client) = self.client_of(key, &req) else {
                feed.discard();
                break;
            };
            let mut apps = std::mem::take(&mut self.apps);
            let mut cx = self.context_for(Some(key), client);
            crate::router::handle(&mut cx, &mut apps, &req);
            let actions = std::mem::take(&mut cx.actions);
            self.apps = apps;
            // The archives the request changed share the history budget.
            let archived = self.apps.archived_bytes();
            if archived != self.broker.app_bytes() {
                self.broker.set_app_bytes(archived);
            }
            if let Some(d) = self.durable.as_mut() {
                d.begin();
            }
            self.act(key, actions);
            if let Some(d) = self.durable.as_mut() {
                d.end();
            }
            let now = self.clock.now_tick();
            if let Some(c) = self.conns.get_mut(key.idx()) {
                if let Some(d) = c.after_request(now, &self.rules) {
                    self.set_deadline(key, d);
                }
            }
        }
        feed.finish()
    }

    /// The client of a request (see `proto::client_of`); `None`, with a
    /// 503 sent, when its forwarded address is over
    /// `--max-connections-per-ip`.
    fn client_of(&mut self, key: ConnKey, req: &http::Request<'_>) -> Option<proto::Client> {
        let peer = self.peers.ip(self.conns.get(key.idx())?.peer);
        let c = proto::client_of(
            key,
            peer,
            req,
            &mut self.peers,
            &mut self.side.proxied,
            &self.rules,
        );
        match c {
            Ok(c) => {
                if let (Some(c), Some(proxy)) = (c.counted, peer) {
                    log::debug!("connection {key}: client {c} via proxy {proxy}");
                }
                if let (true, Some(proxy)) = (c.unnamed, peer) {
                    log::debug!(
                        "connection {key}: proxy {proxy} named no client; pooled under its address"
                    );
                }
                Some(c)
            }
            Err(r) => {
                self.refuse(key, r);
                None
            }
        }
    }

    /// Counts a refusal and sends its answer, which ends the connection.
    fn refuse(&mut self, key: ConnKey, r: Refuse) {
        self.counters.reject(r.reason);
        self.respond(key, &r.encode(), true);
    }

    // The write path: responses, stream heads, catch-up, the fan-out
    // pass, partial writes, slow subscribers, and the ways a connection
    // ends. Closing is deferred: `close` marks a connection, `reap` frees
    // it at the end of the turn.

    /// Marks a connection to be freed at the end of the turn, leaving the
    /// streams it read and releasing its request buffer.
    fn close(&mut self, key: ConnKey) {
        if !self.presence.none_here() {
            self.presence.left(key, self.bus.is_none());
        }
        let Some(c) = self.conns.get_mut(key.idx()) else {
            return;
        };
        self.side.stream_ended(key);
        match c.close(&mut self.memory, &mut self.peers) {
            proto::Closed::Already => return,
            proto::Closed::Now(Some(cursors)) => self.broker.unsubscribe(key, &cursors),
            proto::Closed::Now(None) => {}
        }
        self.side.closing.push(key);
    }

    /// Lets go of a connection's unsent bytes (it is being freed): copies
    /// go back to the account; a frame tail is noted as freed, since the
    /// connection may have been the frame's last holder.
    fn free_out(&mut self, out: &Out) {
        self.memory.release(Kind::Output, out.copied());
        if let Some(t) = &out.tail {
            self.memory.note_freed(t.frame.cost());
        }
    }

    /// Hands freed heap back to the system after large frees (glibc keeps
    /// it otherwise: a burst of megabyte-sized buffers would stay resident
    /// after they are gone). Rate-limited; a no-op on other C libraries.
    fn maybe_trim(&mut self) {
        if !self.sweep.trim.due(self.memory.freed(), self.clock.now_ms) {
            return;
        }
        self.memory.take_freed();
        self.counters.memory_trims += 1;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only walks the allocator's own structures.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Output that would pass the memory account: the connection machine
    /// answers a response not yet begun with a short 503 (`refuse_output`);
    /// anything else closes the connection.
    fn refuse_output(&mut self, key: ConnKey, r: Refusal, nothing_sent: bool) {
        self.counters.reject("memory_output");
        log::info!("connection {key}: {} output refused: {r}", r.kind().name());
        let now = self.clock.now_tick();
        let Some(c) = self.conns.get_mut(key.idx()) else {
            return;
        };
        if !c.refuse_output(nothing_sent, now, &mut self.memory, &mut self.peers) {
            self.close(key);
        }
    }

    /// Queues raw bytes for a connection: written at once if its socket is
    /// drained, appended to its output buffer otherwise.
    fn send(&mut self, key: ConnKey, bytes: &[u8]) {
        self.queue(key, bytes, false);
    }

    /// `Reactor::send`; `response` says the bytes are a whole response
    /// to a request, which a refusal may replace with a short 503.
    fn queue(&mut self, key: ConnKey, bytes: &[u8], response: bool) {
        let tick = self.clock.now_tick();
        let Some(conn) = self.conns.get_mut(key.idx()) else {
            return;
        };
        if conn.closing() || bytes.is_empty() {
            return;
        }
        if conn.out.is_some() {
            if let Err(r) = conn.append_out(bytes, &mut self.memory) {
                self.refuse_output(key, r, false);
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
            if let Err(r) = conn.keep_unsent(&bytes[done..], tick, &mut self.memory) {
                self.refuse_output(key, r, response && done == 0);
            }
        }
    }

    /// Queues SSE bytes for a streaming connection, chunk-framed if its
    /// body is chunked.
    fn send_sse(&mut self, key: ConnKey, sse: &[u8]) {
        if sse.is_empty() {
            return;
        }
        match self.conns.get(key.idx()) {
            Some(c) if c.chunked => self.send(key, &frame::chunk(sse)),
            Some(_) => self.send(key, sse),
            None => {}
        }
    }

    /// Sends a complete response; `close` ends the connection once it is out.
    fn respond(&mut self, key: ConnKey, bytes: &[u8], close: bool) {
        self.queue(key, bytes, true);
        if close {
            if let Some(c) = self.conns.get_mut(key.idx()) {
                c.last_response(&mut self.memory, &mut self.peers);
            }
        }
        self.after_write(key);
    }

    /// What follows a write on a connection that is not streaming: a final
    /// response that is out lingers; backed-up output gets a write deadline.
    fn after_write(&mut self, key: ConnKey) {
        let tick = self.clock.now_tick();
        let Some(c) = self.conns.get_mut(key.idx()) else {
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
    fn linger(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(key.idx()) else {
            return;
        };
        let _ = c.sock.shutdown(Shutdown::Write);
        c.state = State::Lingering;
        let d = ms_to_ticks(self.clock.now_ms + LINGER_MS);
        self.set_deadline(key, d);
    }

    /// Drains `conn.out`. `Ok(true)` when empty (and freed), `Ok(false)`
    /// when the socket is full.
    fn drain_out(&mut self, key: ConnKey) -> io::Result<bool> {
        let tick = self.clock.now_tick();
        let Reactor {
            conns,
            memory,
            counters,
            ..
        } = self;
        let Some(conn) = conns.get_mut(key.idx()) else {
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
            let n = write_vectored(&mut conn.sock, &[IoSlice::new(tail), IoSlice::new(copied)])?;
            if n == 0 {
                return Ok(false);
            }
            memory.release(Kind::Output, out.advance(n, tick));
            counters.bytes_written += n as u64;
        }
        conn.out = None;
        Ok(true)
    }

    /// The writable edge: drain output, then stream frames or resume reads.
    fn on_writable(&mut self, key: ConnKey) {
        match self.conns.get(key.idx()) {
            Some(c) if !c.closing() && c.out.is_some() => {}
            _ => return,
        }
        match self.drain_out(key) {
            Err(_) => return self.close(key),
            Ok(false) => return,
            Ok(true) => {}
        }
        // A reply waiting for Redis or for an fsync keeps the input paused.
        let paused = matches!(
            self.conns.get(key.idx()).map(|c| &c.state),
            Some(State::Reading { paused: true, .. })
        );
        let held = paused
            && (self.bus.as_ref().is_some_and(|l| l.holds(key))
                || self.durable.as_ref().is_some_and(|d| d.holds(key)));
        let Some(conn) = self.conns.get_mut(key.idx()) else {
            return;
        };
        match conn.drained(held) {
            proto::Drained::Stream => {
                self.flush_subscriber(key);
                self.after_stream_write(key);
            }
            proto::Drained::Ticking => self.after_stream_write(key),
            proto::Drained::Write { resume } => {
                if resume {
                    self.side.resume_read.push(key);
                }
                self.after_write(key);
            }
            proto::Drained::Nothing => {}
        }
    }

    /// Writes a stream's response head and turns the connection's input
    /// off; `false` if the connection is gone.
    fn begin_stream(&mut self, key: ConnKey, head: &[u8], chunked: bool) -> bool {
        let Some(c) = self.conns.get_mut(key.idx()) else {
            return false;
        };
        if !c.begin_stream(chunked, &mut self.memory, &mut self.peers) {
            return false;
        }
        self.send(key, head);
        self.conns
            .get(key.idx())
            .is_some_and(|c| matches!(c.state, State::Draining))
    }

    /// Deadline bookkeeping after writing to a streaming connection.
    fn after_stream_write(&mut self, key: ConnKey) {
        let exp = self.side.token_expiry(key);
        let now = self.clock.now_tick();
        let d = match self.conns.get(key.idx()) {
            Some(c) => c.stream_deadline(now, exp, &self.rules),
            None => None,
        };
        if let Some(d) = d {
            self.set_deadline(key, d);
        }
    }

    /// A ticking connection is due.
    fn on_tick(&mut self, key: ConnKey, gen: u32) {
        let now = self.clock.now_ms;
        let Some(t) = self.conns.get_mut(key.idx()).and_then(|c| c.tick(gen, now)) else {
            return;
        };
        self.timers.add(t.next_ms, Timer::Tick { key, gen });
        if let Some(b) = t.frame {
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
    fn flush_dirty(&mut self, mut budget: usize) {
        for key in self.fanout.take_owed() {
            let ready = self
                .conns
                .get(key.idx())
                .is_some_and(|c| !c.blocked() && !c.closing());
            if ready {
                self.flush_subscriber(key);
            }
        }
        self.fanout.begin(&mut self.broker);
        while budget > 0 {
            let Some(key) = self.fanout.next(&self.broker) else {
                break;
            };
            budget -= 1;
            let blocked = self
                .conns
                .get(key.idx())
                .is_none_or(|c| c.blocked() || c.closing());
            if blocked {
                self.check_lag(key);
            } else {
                self.flush_subscriber(key);
            }
        }
    }

    fn check_lag(&mut self, key: ConnKey) {
        let max = self.cfg.max_pending_bytes;
        let slow = self
            .conns
            .get(key.idx())
            .is_some_and(|c| fanout::too_slow(c, &self.broker, max));
        if slow {
            self.drop_slow(key, format_args!("more than {max} bytes behind"));
        }
    }

    /// Drops a subscriber too slow to keep: `why` is logged.
    fn drop_slow(&mut self, key: ConnKey, why: std::fmt::Arguments<'_>) {
        log::info!("dropping slow subscriber {key}: {why}");
        self.counters.slow_consumers_dropped += 1;
        self.close(key);
    }

    /// Writes everything a subscriber is owed, in id order across its
    /// streams, in batches of up to `MAX_IOV` frames per `writev`.
    fn flush_subscriber(&mut self, key: ConnKey) {
        let tick = self.clock.now_tick();
        let mut budget = WRITE_BUDGET;
        // Whether this subscriber was sent anything: only then does its
        // heartbeat move, so events it may not see leave no timing trace.
        let mut wrote = false;
        loop {
            // A gap first, for any stream that dropped frames this
            // subscriber had not been sent yet.
            let gap = match self.conns.get_mut(key.idx()) {
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
                fanout,
                ..
            } = self;
            let Some(conn) = conns.get_mut(key.idx()) else {
                return;
            };
            if conn.out.is_some() {
                break;
            }
            let chunked = conn.chunked;
            let State::Streaming(cs) = &mut conn.state else {
                return;
            };
            let batch = Batch::gather(broker.merge(cs), chunked, budget);
            if batch.is_empty() {
                break;
            }
            wrote = true;
            let written = match write_vectored(&mut conn.sock, batch.slices()) {
                Ok(n) => n,
                Err(_) => {
                    self.close(key);
                    return;
                }
            };
            let w = batch.wrote(written);
            let more = batch.more();
            counters.frames_written += w.sent;
            counters.bytes_written += written as u64;
            if w.tail.is_some() {
                fanout.tails.note(key);
            }
            if let Some(last) = w.last {
                cs.advance(last);
            }
            if w.short {
                // A cut frame, or the socket filled at a frame boundary (an
                // Out without a tail marks the connection blocked until its
                // writable edge).
                conn.out = Some(Box::new(Out {
                    tail: w.tail,
                    buf: Vec::new(),
                    pos: 0,
                    since: tick,
                }));
            }
            budget = budget.saturating_sub(written);
            if conn.out.is_none() && more && budget == 0 {
                // Still writable and still owed frames: no edge will come, so
                // continue next turn, after everyone else had a go.
                fanout.owe(key);
            }
            if conn.out.is_some() || !more || budget == 0 {
                break;
            }
        }
        let blocked = self.conns.get(key.idx()).is_some_and(|c| c.out.is_some());
        if wrote || blocked {
            self.after_stream_write(key);
        }
        self.check_lag(key);
    }

    /// Ends a streaming connection gracefully: what is queued is flushed,
    /// then an HTTP/1.0 (body-until-close) stream's socket closes; a chunked
    /// one gets its last chunk and goes back to reading requests (unless
    /// the server is shutting down).
    fn end_stream(&mut self, key: ConnKey) {
        if !self.presence.none_here() {
            self.presence.left(key, self.bus.is_none());
        }
        let Some(c) = self.conns.get_mut(key.idx()) else {
            return;
        };
        self.side.stream_ended(key);
        let Some((left, chunked)) = c.end_stream() else {
            return;
        };
        if let Some(cs) = left {
            self.broker.unsubscribe(key, &cs);
        }
        if chunked {
            self.send(key, frame::LAST_CHUNK);
            if !self.shutting_down {
                // Node's fetch and fetch-event-source reuse the connection.
                let now = self.clock.now_tick();
                let reused = match self.conns.get_mut(key.idx()) {
                    Some(c) => c.reuse(now, &self.rules),
                    None => None,
                };
                if let Some(d) = reused {
                    self.set_deadline(key, d);
                    self.after_write(key);
                }
                return;
            }
        }
        match self.conns.get(key.idx()) {
            Some(c) if c.out.is_some() => self.after_write(key),
            Some(_) => self.close(key),
            None => {}
        }
    }

    /// Flushes a stream's subscribers, deletes it, and ends their streams.
    fn delete_stream(&mut self, idx: StreamIdx) {
        // Flush first so subscribers that can take it get what was published.
        for k in self.broker.subscribers(idx) {
            if self.conns.get(k.idx()).is_some_and(|c| !c.blocked()) {
                self.flush_subscriber(k);
            }
        }
        if let (Some(d), Some((name, floor))) = (&mut self.durable, self.broker.tombstone_of(idx)) {
            d.delete(name, floor);
        }
        for k in self.broker.delete(idx) {
            self.end_stream(k);
        }
    }

    /// Publishes subscription updates (`--mercure-subscriptions`), at the
    /// end of a turn, through the one publish path: private, `event:
    /// mercure`, numbered like any event. Each update's topic stream is
    /// made in the subscriber's address's share of the subscribers' pool,
    /// and goes again once it carried the update (with `--redis`, once it
    /// was handed to the bus: each node's bus link (`Link::presence_entered`) makes it
    /// again for the announcement) unless someone reads that very topic:
    /// watchers read selector streams, and a stream per subscription would
    /// fill `--max-streams`.
    fn announce(&mut self, ups: Vec<crate::presence::Update>) {
        use crate::handler::{Body, Publish, Reply, Targets};
        for u in ups {
            let mut ev = crate::event::Event::new(u.data());
            ev.event = Some(crate::presence::EVENT.into());
            let topic = u.topic();
            let p = Publish {
                to: Targets::Names {
                    names: vec![topic.clone()],
                    by: crate::broker::Create::Subscriber(u.peer),
                    topics: true,
                },
                events: vec![Body::Numbered(ev)],
                private: true,
                reply: Reply::Silent,
            };
            self.publish(publish::To::Nobody, p);
            if let Some(idx) = self.broker.find(&topic) {
                self.drop_one_off(idx);
            }
        }
    }

    /// Drops a subscription update's topic stream unless someone reads
    /// that very topic (the journal records it as deleted).
    fn drop_one_off(&mut self, idx: StreamIdx) {
        if !self.broker.subscribers(idx).is_empty() {
            return;
        }
        if let (Some(d), Some((name, floor))) = (&mut self.durable, self.broker.tombstone_of(idx)) {
            if floor > EventId::NONE {
                d.delete(name, floor);
            }
        }
        self.broker.drop_one_off(idx);
    }

    /// Sets a connection's deadline and makes sure a sweep will see it.
    fn set_deadline(&mut self, key: ConnKey, d: Tick) {
        if let Some(c) = self.conns.get_mut(key.idx()) {
            c.deadline = d;
            if d != NEVER {
                self.want_sweep(d);
            }
        }
    }

    /// Writes a heartbeat comment.
    fn heartbeat(&mut self, key: ConnKey) {
        self.counters.heartbeats += 1;
        self.send_sse(key, frame::HEARTBEAT);
        self.after_stream_write(key);
    }
}

/// Whether a timer entry still means something (see `Reactor::timer_live`).
fn timer_live(conns: &Slab<Conn>, sweep_at: Option<u64>, when: u64, t: &Timer) -> bool {
    match *t {
        Timer::Sweep => sweep_at == Some(when),
        Timer::Tick { key, gen } => matches!(
            conns.get(key.idx()),
            Some(Conn { state: State::Ticking(tk), .. }) if tk.gen == gen
        ),
        Timer::ResumeAccept | Timer::ShutdownDeadline | Timer::Expire => true,
    }
}

/// The memory account's bounds from the configuration: `--memory-max`,
/// history's own budget, and the request-buffer budget the reactor has
/// always had (64 MiB, or four maximal requests if more).
fn memory_limits(cfg: &Config) -> crate::memory::Limits {
    let requests = REQUEST_BUFFER_BUDGET.max(4 * (cfg.max_body + cfg.max_header_bytes));
    let archives = cfg.history_total_bytes / crate::apps::mongoose::ARCHIVE_SHARE_DIVISOR;
    crate::memory::Limits::new(cfg.memory_max(), cfg.history_total_bytes, requests)
        .with(crate::memory::Kind::Archives, archives)
}

/// Bound on queued cross-thread publishes.
pub(crate) fn inbox_limit() -> usize {
    INBOX_LIMIT
}
