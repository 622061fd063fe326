//! The reactor: one `mio::Poll`, the listeners, the waker, the one
//! reactor-wide read buffer, and the loop that turns readiness into calls
//! on the hub. It is the only module that touches `Poll`, accepts sockets
//! or reads them.
//!
//! One loop turn: poll (until the nearest timer) → handle readiness
//! (accept, read + route requests, drain writes) → fire due timers →
//! write newly published frames to subscribers → free closed connections.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::config::Config;
use crate::conn::{flags, Conn, Phase, ReqBuf};
use crate::http::{self, Parsed};
use crate::hub::{Hub, Outgoing};
use crate::timer::Timer;
use crate::Event;

const WAKER: Token = Token(usize::MAX);
const READ_BUF: usize = 64 << 10;
/// Output a pipelining client may have queued before its input is paused.
const PIPELINE_OUT_LIMIT: usize = 64 << 10;
/// Cross-thread publishes waiting for the loop, at most.
const INBOX_LIMIT: usize = 65_536;
/// Subscribers written to per loop turn; a larger fan-out continues next
/// turn (see `Hub::flush_dirty`). Smaller passes let more events arrive
/// while a pass is under way, so late subscribers get more of them per
/// write: with 10,000 subscribers and a reply-paced publisher, 2048 gave
/// ~0.8 M deliveries/s at 1.25 µs of server CPU each, 512 gave ~1.8 M at
/// 0.53 µs with the same p50 latency (`ssed-bench fanout`, docs/BENCHMARKS.md).
const FLUSH_BUDGET: usize = 512;
/// Pending connections the kernel may queue per listener.
const LISTEN_BACKLOG: libc::c_int = 4096;
/// Back-off after EMFILE/ENFILE.
const ACCEPT_BACKOFF_MS: u64 = 100;
/// Reads of one connection per loop turn (64 KiB each), so a flooding peer
/// cannot starve the others.
const READS_PER_TURN: usize = 16;
/// Connections accepted per listener per loop turn, so a connect storm
/// cannot starve established connections; the rest wait one turn.
const ACCEPT_BATCH: usize = 256;

fn listener_token(i: usize) -> Token {
    Token(usize::MAX - 1 - i)
}

/// Messages from other threads.
pub(crate) enum Command {
    Publish(String, Event),
}

/// State shared with [`crate::Publisher`] and [`crate::ShutdownHandle`].
pub(crate) struct Shared {
    pub inbox: Mutex<VecDeque<Command>>,
    pub shutdown: AtomicBool,
    pub waker: Waker,
}

/// Set by the SIGTERM/SIGINT handler.
static SIGNALLED: AtomicBool = AtomicBool::new(false);
static SIGNAL_SHARED: std::sync::OnceLock<Arc<Shared>> = std::sync::OnceLock::new();

extern "C" fn on_signal(_sig: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
    // Waking is a write(2) on an eventfd: safe in a signal handler.
    if let Some(s) = SIGNAL_SHARED.get() {
        let _ = s.waker.wake();
    }
}

fn install_signal_handlers(shared: &Arc<Shared>) {
    let _ = SIGNAL_SHARED.set(shared.clone());
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only touches an atomic and an eventfd write.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // SAFETY: ignoring SIGPIPE so a write to a closed socket is an error, not death.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// The open-file limit minus a reserve for listeners, logs and the poll fd.
fn default_max_connections() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    let cur = if ok { lim.rlim_cur } else { 1024 };
    (cur.min(1 << 24) as usize).saturating_sub(64).max(16)
}

/// A bound server not yet running: `Send`, so it can be bound on one
/// thread and run on another (the hub, with its `Rc` frames, is built by
/// `run` on the loop's own thread).
pub(crate) struct Bound {
    poll: Poll,
    listeners: Vec<TcpListener>,
    pub addrs: Vec<SocketAddr>,
    pub shared: Arc<Shared>,
    cfg: Config,
    max: usize,
}

impl Bound {
    pub fn bind(cfg: Config) -> io::Result<Bound> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for (i, a) in cfg.listen.iter().enumerate() {
            let mut l = TcpListener::bind(*a)?;
            // mio listens with a backlog of 1024; a connect storm of
            // thousands of subscribers (a restart, a benchmark) would see
            // SYNs dropped and 1 s retransmits. Linux lets listen(2) be
            // called again to raise it (the kernel caps it at somaxconn).
            // SAFETY: listen on a socket we own.
            unsafe {
                libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), LISTEN_BACKLOG);
            }
            poll.registry()
                .register(&mut l, listener_token(i), Interest::READABLE)?;
            addrs.push(l.local_addr()?);
            listeners.push(l);
        }
        let max = if cfg.max_connections == 0 {
            default_max_connections()
        } else {
            cfg.max_connections
        };
        let shared = Arc::new(Shared {
            inbox: Mutex::new(VecDeque::new()),
            shutdown: AtomicBool::new(false),
            waker,
        });
        if cfg.handle_signals {
            install_signal_handlers(&shared);
        }
        Ok(Bound {
            poll,
            listeners,
            addrs,
            shared,
            cfg,
            max,
        })
    }

    pub fn run(self) -> io::Result<()> {
        let mut r = Reactor {
            poll: self.poll,
            listeners: self.listeners,
            hub: Hub::new(self.cfg, self.max),
            rbuf: vec![0; READ_BUF],
            shared: self.shared,
            accept_paused: false,
            accept_warned: false,
            accept_more: Vec::new(),
            read_again: Vec::new(),
        };
        r.run()
    }
}

/// The reactor and everything it owns.
struct Reactor {
    poll: Poll,
    listeners: Vec<TcpListener>,
    hub: Hub,
    rbuf: Vec<u8>,
    shared: Arc<Shared>,
    accept_paused: bool,
    /// A descriptor-exhaustion episode has been logged.
    accept_warned: bool,
    /// Listeners that still had connections waiting when their batch ran out.
    accept_more: Vec<usize>,
    /// Connections that used their read budget and may have more input.
    read_again: Vec<u32>,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Reactor {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            self.hub.tick_clock();
            let timeout =
                if self.accept_more.is_empty() && self.read_again.is_empty() && !self.hub.busy() {
                    self.hub
                        .timers
                        .next_at()
                        .map(|t| Duration::from_millis(t.saturating_sub(self.hub.now_ms)))
                } else {
                    Some(Duration::ZERO)
                };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            self.hub.tick_clock();
            for i in std::mem::take(&mut self.accept_more) {
                self.accept(i);
            }
            for key in std::mem::take(&mut self.read_again) {
                self.on_readable(key);
            }
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER {
                    self.drain_inbox();
                } else if t.0 >= usize::MAX - 1 - self.listeners.len() {
                    self.accept(usize::MAX - 1 - t.0);
                } else {
                    let key = t.0 as u32;
                    if ev.is_writable() {
                        self.hub.on_writable(key);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.on_readable(key);
                    }
                }
            }
            while let Some((when, t)) = self.hub.timers.pop_due(self.hub.now_ms) {
                match t {
                    Timer::Sweep => self.hub.sweep(when),
                    Timer::ResumeAccept => {
                        self.accept_paused = false;
                        for i in 0..self.listeners.len() {
                            self.accept(i);
                        }
                    }
                    Timer::ShutdownDeadline => self.hub.close_all(),
                    Timer::Tick { key, gen } => self.hub.on_tick(key, gen),
                }
            }
            for key in self.hub.take_resume_read() {
                self.resume_read(key);
            }
            self.hub.flush_dirty(FLUSH_BUDGET);
            self.reap();
            if SIGNALLED.load(Ordering::SeqCst) || self.shared.shutdown.load(Ordering::SeqCst) {
                self.begin_shutdown();
            }
            if self.hub.shutting_down && self.hub.conns.is_empty() {
                log::info!("shut down cleanly");
                return Ok(());
            }
        }
    }

    fn reap(&mut self) {
        loop {
            let closing = self.hub.take_closing();
            if closing.is_empty() {
                break;
            }
            for key in closing {
                if let Some(mut conn) = self.hub.forget(key) {
                    let _ = self.poll.registry().deregister(&mut conn.sock);
                }
            }
        }
    }

    fn begin_shutdown(&mut self) {
        if self.hub.shutting_down {
            return;
        }
        log::info!(
            "shutting down: flushing {} connections",
            self.hub.conns.len()
        );
        for l in &mut self.listeners {
            let _ = self.poll.registry().deregister(l);
        }
        self.listeners.clear();
        self.hub.begin_shutdown();
        self.reap();
    }

    fn drain_inbox(&mut self) {
        let cmds: Vec<Command> = match self.shared.inbox.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(p) => p.into_inner().drain(..).collect(),
        };
        for c in cmds {
            match c {
                Command::Publish(stream, ev) => {
                    let internal = !crate::stream::valid_name(&stream);
                    match self.hub.streams.get_or_create(&stream, true, internal) {
                        Ok(idx) => {
                            let out = Outgoing {
                                data: ev.data,
                                event: ev.event,
                                retry: ev.retry,
                            };
                            self.hub.publish(&[idx], &out);
                        }
                        Err(e) => log::warn!("publish to {stream:?} dropped: {}", e.message()),
                    }
                }
            }
        }
    }

    fn accept(&mut self, i: usize) {
        if self.accept_paused || self.hub.shutting_down {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            let Some(l) = self.listeners.get(i) else {
                return;
            };
            match l.accept() {
                Ok((sock, addr)) => {
                    if self.accept_warned {
                        log::warn!("accepting again");
                        self.accept_warned = false;
                    }
                    self.admit(sock, addr)
                }
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.hub.counters.accept_errors += 1;
                    let raw = e.raw_os_error();
                    if matches!(
                        raw,
                        Some(libc::EMFILE)
                            | Some(libc::ENFILE)
                            | Some(libc::ENOBUFS)
                            | Some(libc::ENOMEM)
                    ) {
                        // Once per episode: the back-off repeats every 100 ms
                        // until descriptors free up.
                        if self.accept_warned {
                            log::debug!("accept: {e}; still pausing");
                        } else {
                            log::warn!("accept: {e}; pausing accepts ({ACCEPT_BACKOFF_MS} ms steps) until descriptors free up");
                            self.accept_warned = true;
                        }
                        self.hub.counters.accept_paused += 1;
                        self.accept_paused = true;
                        self.hub
                            .timers
                            .add(self.hub.now_ms + ACCEPT_BACKOFF_MS, Timer::ResumeAccept);
                        return;
                    }
                    // ECONNABORTED and friends concern one connection only.
                    log::debug!("accept: {e}");
                }
            }
        }
        if !self.accept_more.contains(&i) {
            self.accept_more.push(i);
        }
    }

    fn admit(&mut self, mut sock: TcpStream, addr: SocketAddr) {
        self.hub.counters.accepted += 1;
        let _ = sock.set_nodelay(true);
        let over = self.hub.conns.len() >= self.hub.max_connections;
        let peer = if over {
            None
        } else {
            self.hub
                .peers
                .add(addr.ip(), self.hub.cfg.max_connections_per_ip)
        };
        let Some(peer) = peer else {
            let (reason, msg) = if over {
                (
                    "over_capacity",
                    "server is at --max-connections; retry later",
                )
            } else {
                (
                    "per_ip_limit",
                    "too many connections from your address (--max-connections-per-ip)",
                )
            };
            self.hub.counters.reject(reason);
            let body = http::error_body(msg);
            let resp = http::response(
                503,
                false,
                false,
                "application/json",
                "Retry-After: 1\r\n",
                &body,
            );
            // A fresh socket has an empty send buffer; if even this does not
            // fit, the peer just sees the close.
            let _ = std::io::Write::write(&mut sock, &resp);
            let _ = sock.shutdown(std::net::Shutdown::Write);
            let _ = sock.read(&mut self.rbuf);
            return;
        };
        let deadline = self.hub.header_deadline();
        let entry = self.hub.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("register: {e}");
            self.hub.peers.remove(peer);
            return;
        }
        let mut conn = Conn::new(sock, peer, deadline);
        conn.flags |= flags::COUNTED;
        entry.insert(conn);
        self.hub.set_deadline(key as u32, deadline);
    }

    /// Output drained on a connection whose input was paused: route the
    /// requests already buffered, then read on.
    fn resume_read(&mut self, key: u32) {
        if let Some(mut buf) = self.hub.take_reqbuf(key) {
            let used = process(&mut self.hub, key, &buf.data, &mut buf.scan);
            buf.data.drain(..used);
            self.hub.put_reqbuf(key, buf);
        }
        self.on_readable(key);
    }

    /// The readable edge: read until WouldBlock, routing complete requests
    /// as they arrive. Streaming connections' input is read and dropped.
    fn on_readable(&mut self, key: u32) {
        for _ in 0..READS_PER_TURN {
            let lingering = self.hub.lingering(key);
            let Some(conn) = self.hub.conns.get_mut(key as usize) else {
                return;
            };
            if conn.has(flags::CLOSING) {
                return;
            }
            let discard = !matches!(conn.phase, Phase::Http(_)) || lingering;
            if !discard && conn.has(flags::READ_PAUSED) {
                return;
            }
            let n = match conn.sock.read(&mut self.rbuf) {
                Ok(0) => {
                    self.hub.close(key);
                    return;
                }
                Ok(n) => n,
                Err(e) if would_block(&e) => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.hub.close(key);
                    return;
                }
            };
            if discard || conn.has(flags::CLOSE_AFTER_FLUSH) {
                continue;
            }
            let was_idle = conn.has(flags::IDLE);
            conn.flags &= !flags::IDLE;
            let pending = self.hub.take_reqbuf(key);
            let held = pending.as_ref().map_or(0, |b| b.data.len());
            let limit = self.hub.cfg.max_header_bytes + self.hub.cfg.max_body + (64 << 10);
            if held + n > limit {
                let e = http::HttpError::PayloadTooLarge;
                self.hub.counters.reject(e.reason());
                self.hub
                    .error(key, e.status(), e.message(), false, false, "");
                return;
            }
            let leftover: Option<Box<ReqBuf>> = match pending {
                Some(mut buf) => {
                    buf.data.extend_from_slice(&self.rbuf[..n]);
                    let used = process(&mut self.hub, key, &buf.data, &mut buf.scan);
                    buf.data.drain(..used);
                    (!buf.data.is_empty()).then_some(buf)
                }
                None => {
                    let mut scan = http::Scan::default();
                    let used = process(&mut self.hub, key, &self.rbuf[..n], &mut scan);
                    (used < n).then(|| {
                        Box::new(ReqBuf {
                            data: self.rbuf[used..n].to_vec(),
                            scan,
                        })
                    })
                }
            };
            let Some(rest) = leftover else { continue };
            if !self.hub.buffer_fits(rest.data.len()) {
                // Many peers each holding a large unfinished request: refuse
                // this one rather than let the sum grow with the peer count.
                self.hub.counters.reject("buffer_budget");
                let msg = "server is holding too many unfinished requests; retry later";
                self.hub
                    .error(key, 503, msg, false, false, "Retry-After: 1\r\n");
                return;
            }
            // A request that began in this read (after an idle gap, or after
            // one completed just now) gets a fresh header deadline; bytes
            // dribbled into the same request never extend it (slowloris).
            let new_request = was_idle
                || self
                    .hub
                    .conns
                    .get(key as usize)
                    .is_some_and(|c| c.has(flags::IDLE));
            self.hub.put_reqbuf(key, rest);
            let header_deadline = self.hub.header_deadline();
            if let Some(conn) = self.hub.conns.get_mut(key as usize) {
                if matches!(conn.phase, Phase::Http(Some(_))) {
                    conn.flags &= !flags::IDLE;
                    if new_request {
                        self.hub.set_deadline(key, header_deadline);
                    }
                }
            }
        }
        // Still readable after a full budget: no new edge will come, so
        // carry on next turn, after everyone else.
        if !self.read_again.contains(&key) {
            self.read_again.push(key);
        }
    }
}

/// Parses and routes every complete request at the front of `data`;
/// returns how many bytes were used. `scan` is the progress through the
/// first request's chunked body, and is left describing the request at the
/// front of what remains.
fn process(hub: &mut Hub, key: u32, data: &[u8], scan: &mut http::Scan) -> usize {
    let limits = http::Limits {
        max_header_bytes: hub.cfg.max_header_bytes,
        max_body: hub.cfg.max_body,
    };
    let mut off = 0;
    while off < data.len() {
        match hub.conns.get(key as usize) {
            // Paused for back-pressure: keep the rest for when output drains.
            Some(c) if c.has(flags::READ_PAUSED) => break,
            Some(c)
                if matches!(c.phase, Phase::Http(_))
                    && !c.has(flags::CLOSING | flags::CLOSE_AFTER_FLUSH) => {}
            // Streaming or closing: later pipelined bytes mean nothing.
            _ => return data.len(),
        }
        match http::parse_resume(&data[off..], limits, scan) {
            Ok(Parsed::Partial) => break,
            Err(e) => {
                hub.counters.reject(e.reason());
                hub.error(key, e.status(), e.message(), false, false, "");
                return data.len();
            }
            Ok(Parsed::Complete(req, used)) => {
                off += used;
                *scan = http::Scan::default();
                hub.counters.requests += 1;
                crate::router::handle(hub, key, &req);
                let idle = hub.idle_deadline();
                if let Some(c) = hub.conns.get_mut(key as usize) {
                    if matches!(c.phase, Phase::Http(_))
                        && !c.has(flags::CLOSE_AFTER_FLUSH | flags::CLOSING)
                    {
                        c.flags |= flags::IDLE;
                        match &c.out {
                            None => hub.set_deadline(key, idle),
                            Some(o) if o.pending().len() > PIPELINE_OUT_LIMIT => {
                                c.flags |= flags::READ_PAUSED;
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
        }
    }
    off
}

/// Bound on queued cross-thread publishes.
pub(crate) fn inbox_limit() -> usize {
    INBOX_LIMIT
}
