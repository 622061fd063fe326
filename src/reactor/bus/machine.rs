//! The bus state machine the reactor drives: two connections (pipelined
//! commands; pub/sub), the handshake (AUTH, SELECT, SCRIPT LOAD,
//! SUBSCRIBE, then the last id allocated: `GET P:id`, sent once the
//! subscription is confirmed, so every announcement above it is heard),
//! deadlines, reconnect with backoff, and the outputs.
//!
//! Publishes are gathered into a batch that goes to Redis as one script
//! call: at once when no batch is out (Redis is idle), else when the
//! owner calls [`Bus::send_batch`] (the reactor does at the end of each
//! loop turn) or the batch is full; every event keeps its own request,
//! id and outcome. Fetches are pages bounded in bytes, so a
//! stream holding more than a reply may carry never breaks the connection.
//!
//! Owns both connections and every request in flight. It must not block,
//! read a clock for deadlines (the caller passes `now_ms`; `Instant` is
//! used only to measure latency), or hold unbounded state: requests in
//! flight are capped, and each wakeup reads a bounded number of bytes.
//!
//! Any disconnect or timeout of either connection fails every request in
//! flight, emits [`BusOutput::Down`] (if it was up), closes both and
//! retries after 100 ms doubling to 5 s, plus up to 25 % jitter.
//!
//! An idle bus sends nothing and sets no deadline, so an idle node never
//! wakes for it. Liveness comes from three places instead: TCP keepalive
//! (a vanished host fails the socket in the kernel, see `client`), the
//! deadline of every command (a stopped Redis), and the announcement
//! watch: after a publish is answered, its announcement must arrive on
//! the pub/sub connection within the command timeout, or that connection
//! is taken for dead (it can fail silently while the command one works).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::{Registry, Token};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::client::{Conn, Drain, Kind, Pending, Target};
use crate::bus::resp::{parse_int, Value, DEFAULT_MAX_BULK};
use crate::bus::script::{
    parse_envelope, Batch, Keys, Retain, FETCH_LUA, MAX_ID, MAX_STREAMS, PUBLISH_LUA,
};
use crate::bus::url::RedisUrl;
use crate::bus::BusError;

/// Bytes read per connection per wakeup before yielding (see `next_deadline`).
const READ_BUDGET: usize = 4 << 20;
/// Most entries one fetch returns.
pub const MAX_FETCH: usize = 10_000;
const BACKOFF_MIN_MS: u64 = 100;
const BACKOFF_MAX_MS: u64 = 5_000;

/// How to reach Redis and how to use it.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Where Redis is, as given (credentials, database).
    pub url: RedisUrl,
    /// Where Redis is, resolved once at start-up: every reconnect uses it.
    pub target: Target,
    /// Key prefix `P` (see `script`).
    pub prefix: String,
    /// `MAXLEN ~` of each Redis stream.
    pub history: usize,
    /// Deadline of each command, of each handshake step and of an
    /// answered publish's announcement; also sets TCP keepalive.
    pub command_timeout: Duration,
    /// Publishes plus fetches waiting for replies at once.
    pub max_in_flight: usize,
    /// Largest bulk accepted from Redis.
    pub max_bulk: usize,
    /// Largest unread reply buffered: a fetch page plus one entry fits.
    pub max_reply: usize,
    /// Bytes of entries a fetch page stops after (it always takes one).
    pub fetch_bytes: usize,
}

impl BusConfig {
    /// Defaults: prefix `ssed`, history 1000, 2 s timeout, 1024 in flight.
    pub fn new(url: RedisUrl, target: Target) -> BusConfig {
        BusConfig {
            url,
            target,
            prefix: "ssed".into(),
            history: 1000,
            command_timeout: Duration::from_secs(2),
            max_in_flight: 1024,
            max_bulk: DEFAULT_MAX_BULK,
            max_reply: 2 * DEFAULT_MAX_BULK,
            fetch_bytes: 16 << 20,
        }
    }
}

/// What the bus tells its owner; see [`Bus::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusOutput {
    /// A publish got this id.
    Published {
        /// The caller's request number.
        req: u64,
        /// The allocated id.
        id: u64,
    },
    /// A publish or fetch failed. After `Timeout`/`Disconnected` a
    /// publish may still have happened (its `Message` may arrive).
    Failed {
        /// The caller's request number.
        req: u64,
        /// Why.
        error: BusError,
    },
    /// A publish announced on pub/sub, by any node (this one included).
    Message {
        /// Its id.
        id: u64,
        /// Each target stream and that stream's previous id (0: none).
        streams: Vec<(String, u64)>,
        /// The publisher's payload.
        payload: Vec<u8>,
    },
    /// Entries of a stream after the asked id, oldest first.
    Fetched {
        /// The caller's request number.
        req: u64,
        /// (id, prev, payload) each.
        entries: Vec<(u64, u64, Vec<u8>)>,
        /// The oldest id Redis still holds for the stream.
        first_retained: Option<u64>,
        /// The byte bound ended the page: more entries may follow.
        more: bool,
    },
    /// Connected, script loaded and subscribed: catch up every stream.
    Up {
        /// The last id any node had allocated once the subscription was
        /// live (0: none): every announcement above it is heard, any at
        /// or below it may have been missed.
        last_id: u64,
    },
    /// A connection was lost: messages may have been missed.
    Down,
}

/// Counters for stats; see [`Bus::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusStatus {
    /// Up (both connections ready).
    pub connected: bool,
    /// Connection attempts after the first.
    pub reconnects: u64,
    /// Publishes and fetches waiting for replies.
    pub in_flight: usize,
    /// Latency of the last completed publish or fetch, µs.
    pub last_latency_us: u64,
    /// Moving average (1/8 weight) of that latency, µs.
    pub avg_latency_us: u64,
    /// Pub/sub messages received.
    pub messages: u64,
    /// Publishes that got an id.
    pub publishes: u64,
    /// Failed requests, bad messages and connection failures.
    pub errors: u64,
    /// The most recent error, for logs and stats pages.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Cmd = 0,
    Sub = 1,
}

/// The Redis bus; see the module doc.
pub struct Bus {
    cfg: BusConfig,
    keys: Keys,
    timeout_ms: u64,
    tokens: [Token; 2],
    conns: [Option<Conn>; 2],
    ready: [bool; 2],
    more: [bool; 2],
    up: bool,
    /// The answer to `GET P:id` sent once subscribed (see [`BusOutput::Up`]).
    bus_id: Option<u64>,
    sha: Option<Vec<u8>>,
    reloading: bool,
    broken: Option<BusError>,
    retry_at: Option<u64>,
    attempts: u32,
    /// The highest id of an answered publish whose announcement has not
    /// arrived yet, and by when it must (see the module doc).
    watch: Option<(u64, u64)>,
    /// The highest id announced on the pub/sub connection since it connected.
    last_msg: u64,
    out: VecDeque<BusOutput>,
    st: BusStatus,
    rng: SmallRng,
    /// Publishes not yet sent, and their requests in the same order.
    batch: Batch,
    batch_reqs: Vec<u64>,
    /// Publish script calls sent and not yet answered.
    batches_out: usize,
}

fn text(e: &[u8]) -> String {
    String::from_utf8_lossy(&e[..e.len().min(512)]).into_owned()
}

fn num(b: &[u8]) -> Option<u64> {
    parse_int(b).and_then(|n| u64::try_from(n).ok())
}

/// One XRANGE entry `[b"N-1", [f, payload, p, prev]]` as (N, prev, payload).
fn entry(v: &Value) -> Option<(u64, u64, Vec<u8>)> {
    let [id, fields] = v.items()? else {
        return None;
    };
    let (ms, _) = id
        .bytes()?
        .split_at(id.bytes()?.iter().position(|&b| b == b'-')?);
    let (mut payload, mut prev) = (None, None);
    for kv in fields.items()?.chunks(2) {
        match (kv[0].bytes()?, kv.get(1)?.bytes()?) {
            (b"f", f) => payload = Some(f.to_vec()),
            (b"p", p) => prev = Some(num(p)?),
            _ => {}
        }
    }
    Some((num(ms)?, prev?, payload?))
}

type Fetched = (Vec<(u64, u64, Vec<u8>)>, Option<u64>, bool);

/// The reply of the fetch script: `[oldest id or "", entries, more]`.
fn fetched(v: &Value) -> Result<Fetched, BusError> {
    let bad = || BusError::Protocol("bad fetch reply".into());
    let items = match v {
        Value::Error(e) => return Err(BusError::Redis(text(e))),
        v => v.items().ok_or_else(bad)?,
    };
    let [first, range, more] = items else {
        return Err(bad());
    };
    let first = match first.bytes().ok_or_else(bad)? {
        b"" => None,
        id => Some(
            id.split(|&b| b == b'-')
                .next()
                .and_then(num)
                .ok_or_else(bad)?,
        ),
    };
    let entries = range.items().ok_or_else(bad)?.iter().map(entry);
    let more = matches!(more, Value::Int(1));
    Ok((
        entries.collect::<Option<Vec<_>>>().ok_or_else(bad)?,
        first,
        more,
    ))
}

impl Bus {
    /// Starts connecting (nonblocking) with the two tokens.
    pub fn new(
        cfg: BusConfig,
        registry: &Registry,
        cmd_token: Token,
        sub_token: Token,
        now_ms: u64,
    ) -> Bus {
        let mut bus = Bus {
            keys: Keys::new(&cfg.prefix),
            timeout_ms: u64::try_from(cfg.command_timeout.as_millis())
                .unwrap_or(u64::MAX / 4)
                .max(1),
            cfg,
            tokens: [cmd_token, sub_token],
            conns: [None, None],
            ready: [false; 2],
            more: [false; 2],
            up: false,
            bus_id: None,
            sha: None,
            reloading: false,
            broken: None,
            retry_at: None,
            attempts: 0,
            watch: None,
            last_msg: 0,
            out: VecDeque::new(),
            st: BusStatus::default(),
            rng: SmallRng::from_entropy(),
            batch: Batch::default(),
            batch_reqs: Vec::new(),
            batches_out: 0,
        };
        bus.connect(registry, now_ms);
        bus
    }

    fn connect(&mut self, registry: &Registry, now: u64) {
        if self.retry_at.take().is_some() {
            self.st.reconnects += 1;
        }
        let dl = now + self.timeout_ms;
        for side in [Side::Cmd, Side::Sub] {
            let (c, url) = (&self.cfg, &self.cfg.url);
            let token = self.tokens[side as usize];
            let t = c.command_timeout;
            let mut conn =
                match Conn::connect(&c.target, registry, token, t, (c.max_bulk, c.max_reply)) {
                    Ok(conn) => conn,
                    Err(e) => return self.drop_all(registry, e, now),
                };
            if let Some(pw) = &url.password {
                let mut args: Vec<&[u8]> = vec![b"AUTH"];
                args.extend(url.username.as_deref().map(str::as_bytes));
                args.push(pw.as_bytes());
                conn.send(&args, Kind::Setup, dl);
            }
            if side == Side::Cmd {
                if url.db != 0 {
                    conn.send(&[b"SELECT", url.db.to_string().as_bytes()], Kind::Setup, dl);
                }
                let load = Kind::Load { handshake: true };
                conn.send(&[b"SCRIPT", b"LOAD", PUBLISH_LUA.as_bytes()], load, dl);
            } else {
                conn.send(
                    &[b"SUBSCRIBE", self.keys.channel.as_bytes()],
                    Kind::Subscribe,
                    dl,
                );
            }
            self.conns[side as usize] = Some(conn);
        }
    }

    /// Fails everything in flight, closes both, schedules a reconnect.
    fn drop_all(&mut self, registry: &Registry, err: BusError, now: u64) {
        for conn in self.conns.iter_mut().filter_map(Option::take) {
            for p in &conn.pending {
                let reqs = match &p.kind {
                    Kind::Publish { reqs, .. } => &reqs[..],
                    Kind::Fetch { req } => std::slice::from_ref(req),
                    _ => &[],
                };
                for &req in reqs {
                    let error = err.clone();
                    self.out.push_back(BusOutput::Failed { req, error });
                }
            }
            conn.close(registry);
        }
        self.batch = Batch::default();
        self.batches_out = 0;
        for req in std::mem::take(&mut self.batch_reqs) {
            let error = err.clone();
            self.out.push_back(BusOutput::Failed { req, error });
        }
        self.st.in_flight = 0;
        self.st.errors += 1;
        self.st.last_error = Some(err.to_string());
        (self.ready, self.more, self.reloading) = ([false; 2], [false; 2], false);
        (self.broken, self.watch, self.last_msg) = (None, None, 0);
        self.bus_id = None;
        if std::mem::take(&mut self.up) {
            warn!("redis bus down: {err}");
            self.out.push_back(BusOutput::Down);
        } else {
            log::debug!("redis bus connect failed: {err}");
        }
        self.attempts = self.attempts.saturating_add(1);
        let delay = (BACKOFF_MIN_MS << (self.attempts - 1).min(6)).min(BACKOFF_MAX_MS);
        self.retry_at = Some(now + delay + self.rng.gen_range(0..=delay / 4));
    }

    /// Handles readiness of either socket.
    pub fn on_event(&mut self, registry: &Registry, token: Token, now_ms: u64) {
        let side = match self.tokens.iter().position(|&t| t == token) {
            Some(0) => Side::Cmd,
            Some(_) => Side::Sub,
            None => return,
        };
        if let Err(e) = self.service(side, now_ms) {
            self.drop_all(registry, e, now_ms);
        }
    }

    fn service(&mut self, side: Side, now: u64) -> Result<(), BusError> {
        let Some(conn) = self.conns[side as usize].as_mut() else {
            return Ok(());
        };
        conn.flush()?;
        let mut replies = Vec::new();
        let read = conn.read(READ_BUDGET, &mut replies);
        for v in replies {
            match side {
                Side::Cmd => self.on_cmd_reply(v, now)?,
                Side::Sub => self.on_sub_reply(v, now)?,
            }
        }
        self.more[side as usize] = read? == Drain::More;
        match self.conns[side as usize].as_mut() {
            Some(conn) => conn.flush(),
            None => Ok(()),
        }
    }

    fn maybe_up(&mut self) {
        if let (true, Some(last_id), false) = (self.ready == [true; 2], self.bus_id, self.up) {
            self.up = true;
            self.attempts = 0;
            info!("redis bus up (last id {last_id})");
            self.out.push_back(BusOutput::Up { last_id });
        }
    }

    /// A publish got id `id`: its announcement is due on the pub/sub
    /// connection. One watch at a time, kept until an announcement at or
    /// above its id arrives (ids grow in announcement order), so steady
    /// traffic cannot push its deadline back forever.
    fn expect_announcement(&mut self, id: u64, now: u64) {
        if self.watch.is_none() && id > self.last_msg {
            self.watch = Some((id, now + self.timeout_ms));
        }
    }

    fn done(&mut self, sent: Instant, out: BusOutput) {
        self.st.in_flight = self.st.in_flight.saturating_sub(1);
        let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.st.last_latency_us = us;
        self.st.avg_latency_us = match self.st.avg_latency_us {
            0 => us,
            avg => avg - avg / 8 + us / 8,
        };
        match out {
            BusOutput::Published { .. } => self.st.publishes += 1,
            BusOutput::Failed { ref error, .. } => {
                self.st.errors += 1;
                self.st.last_error = Some(error.to_string());
            }
            _ => {}
        }
        self.out.push_back(out);
    }

    fn on_cmd_reply(&mut self, v: Value, now: u64) -> Result<(), BusError> {
        let unexpected = || BusError::Protocol("unexpected reply".into());
        let conn = self.conns[0].as_mut().ok_or_else(unexpected)?;
        let Pending { kind, sent, .. } = conn.pending.pop_front().ok_or_else(unexpected)?;
        if let (Value::Error(e), Kind::Setup | Kind::Load { .. } | Kind::LastId) = (&v, &kind) {
            return Err(BusError::Redis(text(e)));
        }
        match kind {
            Kind::Setup => {}
            Kind::Load { handshake } => {
                self.sha = Some(v.bytes().ok_or_else(unexpected)?.to_vec());
                self.reloading = false;
                if handshake {
                    self.ready[0] = true;
                    self.maybe_up();
                }
            }
            Kind::Publish { reqs, args, eval } => {
                if let (Value::Error(e), false) = (&v, eval) {
                    if e.starts_with(b"NOSCRIPT") {
                        // Redis restarted or SCRIPT FLUSH: send the text
                        // this time, and reload it once for the batches after.
                        args.encode(b"EVAL", PUBLISH_LUA.as_bytes(), conn.wbuf());
                        let kind = Kind::Publish {
                            reqs,
                            args,
                            eval: true,
                        };
                        let deadline = now + self.timeout_ms;
                        conn.pending.push_back(Pending {
                            kind,
                            deadline,
                            sent,
                        });
                        if !std::mem::replace(&mut self.reloading, true) {
                            let load = Kind::Load { handshake: false };
                            conn.send(
                                &[b"SCRIPT", b"LOAD", PUBLISH_LUA.as_bytes()],
                                load,
                                deadline,
                            );
                        }
                        return Ok(());
                    }
                }
                self.batches_out = self.batches_out.saturating_sub(1);
                match &v {
                    Value::Error(e) => {
                        let error = BusError::Redis(text(e));
                        for req in reqs {
                            let error = error.clone();
                            self.done(sent, BusOutput::Failed { req, error });
                        }
                    }
                    v => {
                        // One id per event, in order; anything else answers
                        // every event of the batch as failed, never a guess.
                        let ids: Option<Vec<u64>> = v
                            .items()
                            .filter(|ids| ids.len() == reqs.len())
                            .and_then(|ids| ids.iter().map(|i| i.bytes().and_then(num)).collect());
                        if let Some(&top) = ids.as_ref().and_then(|ids| ids.iter().max()) {
                            self.expect_announcement(top, now);
                        }
                        for (i, req) in reqs.into_iter().enumerate() {
                            let out = match ids.as_ref().and_then(|ids| ids.get(i)) {
                                Some(&id) => BusOutput::Published { req, id },
                                None => {
                                    let error = BusError::Protocol("bad publish reply".into());
                                    BusOutput::Failed { req, error }
                                }
                            };
                            self.done(sent, out);
                        }
                    }
                }
            }
            Kind::Fetch { req } => {
                let out = match fetched(&v) {
                    Ok((entries, first_retained, more)) => BusOutput::Fetched {
                        req,
                        entries,
                        first_retained,
                        more,
                    },
                    Err(error) => BusOutput::Failed { req, error },
                };
                self.done(sent, out);
            }
            Kind::LastId => {
                let id = match &v {
                    Value::Bulk(None) => 0, // no id allocated yet
                    v => v.bytes().and_then(num).ok_or_else(unexpected)?,
                };
                self.bus_id = Some(id);
                self.maybe_up();
            }
            Kind::Subscribe => return Err(unexpected()),
        }
        Ok(())
    }

    fn on_sub_reply(&mut self, v: Value, now: u64) -> Result<(), BusError> {
        if let Some([kind, _, data]) = v.items() {
            if kind.bytes() == Some(b"message") {
                match data.bytes().and_then(parse_envelope) {
                    Some(e) => {
                        self.st.messages += 1;
                        self.last_msg = self.last_msg.max(e.id);
                        if self.watch.is_some_and(|(id, _)| id <= e.id) {
                            self.watch = None;
                        }
                        let (id, streams, payload) = (e.id, e.streams, e.payload);
                        self.out.push_back(BusOutput::Message {
                            id,
                            streams,
                            payload,
                        });
                    }
                    None => {
                        warn!("redis bus: ignoring a malformed message");
                        self.st.errors += 1;
                        self.st.last_error = Some("malformed pub/sub message".into());
                    }
                }
                return Ok(());
            }
        }
        let unexpected = || BusError::Protocol("unexpected pub/sub reply".into());
        let conn = self.conns[1].as_mut().ok_or_else(unexpected)?;
        let p = conn.pending.pop_front().ok_or_else(unexpected)?;
        if let Value::Error(e) = &v {
            return Err(BusError::Redis(text(e)));
        }
        match p.kind {
            Kind::Subscribe => {
                self.ready[1] = true;
                // Asked only now: an id allocated after this answer is
                // announced to a live subscription, so it is heard.
                let dl = now + self.timeout_ms;
                let key = self.keys.id();
                if let Some(conn) = self.conns[0].as_mut() {
                    conn.send(&[b"GET", key.as_bytes()], Kind::LastId, dl);
                }
                self.sent();
            }
            Kind::Setup => {}
            _ => return Err(unexpected()),
        }
        Ok(())
    }

    /// Handles time: reconnects, deadlines, the announcement watch, and
    /// reads left over from a wakeup's budget. Call it when `next_deadline` is due.
    pub fn on_timer(&mut self, registry: &Registry, now_ms: u64) {
        let _ = self.send_batch(now_ms);
        if let Some(e) = self.broken.take() {
            return self.drop_all(registry, e, now_ms);
        }
        if self.retry_at.is_some_and(|t| t <= now_ms) {
            return self.connect(registry, now_ms);
        }
        let late = |c: &Option<Conn>| {
            c.as_ref()
                .and_then(|c| c.pending.front())
                .is_some_and(|p| p.deadline <= now_ms)
        };
        let unseen = |w: Option<(u64, u64)>| w.is_some_and(|(_, by)| by <= now_ms);
        if self.conns.iter().any(late) || unseen(self.watch) {
            // The reply may be waiting in the socket: a loop turn busy with
            // an accept burst (more ready sockets than one poll returns) or
            // a process starved of CPU sees the deadline before the
            // readiness. Read what has arrived before calling Redis late.
            for side in [Side::Cmd, Side::Sub] {
                if let Err(e) = self.service(side, now_ms) {
                    return self.drop_all(registry, e, now_ms);
                }
            }
        }
        if self.conns.iter().any(late) {
            return self.drop_all(registry, BusError::Timeout, now_ms);
        }
        if let Some((id, _)) = self.watch.filter(|&w| unseen(Some(w))) {
            warn!("redis bus: event {id} was published but not announced in time");
            return self.drop_all(registry, BusError::Timeout, now_ms);
        }
        for side in [Side::Cmd, Side::Sub] {
            if self.more[side as usize] {
                if let Err(e) = self.service(side, now_ms) {
                    return self.drop_all(registry, e, now_ms);
                }
            }
        }
    }

    /// When `on_timer` wants to run next (ms, same clock as `now_ms`);
    /// 0 means at once.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.more.contains(&true) || self.broken.is_some() || !self.batch.is_empty() {
            return Some(0);
        }
        let fronts = self
            .conns
            .iter()
            .flatten()
            .filter_map(|c| c.pending.front());
        let deadlines = fronts.map(|p| p.deadline);
        let watch = self.watch.map(|(_, by)| by);
        deadlines.chain(self.retry_at).chain(watch).min()
    }

    fn check(&self) -> Result<(), BusError> {
        if !self.up || self.broken.is_some() {
            Err(BusError::Unavailable)
        } else if self.st.in_flight >= self.cfg.max_in_flight {
            Err(BusError::Busy)
        } else {
            Ok(())
        }
    }

    fn sent(&mut self) {
        if let Some(Err(e)) = self.conns[0].as_mut().map(Conn::flush) {
            self.broken = Some(e); // no registry here: on_timer closes
        }
    }

    /// Most payload bytes one event may carry: its announcement must fit
    /// one bulk, and as a fetched entry one page after the byte bound, on
    /// every node (they share these bounds).
    pub fn max_payload(&self) -> usize {
        let c = &self.cfg;
        c.max_bulk
            .min(c.max_reply.saturating_sub(c.fetch_bytes))
            .saturating_sub(64)
    }

    /// Sends the gathered publishes as one script call (nothing when
    /// none). Publishes gathered while the bus went down fail: `true`
    /// when that queued outputs.
    pub fn send_batch(&mut self, now_ms: u64) -> bool {
        if self.batch.is_empty() {
            return false;
        }
        let batch = std::mem::take(&mut self.batch);
        let reqs = std::mem::take(&mut self.batch_reqs);
        let ready = self.up && self.broken.is_none();
        let (Some(sha), Some(conn), true) = (&self.sha, self.conns[0].as_mut(), ready) else {
            self.st.in_flight = self.st.in_flight.saturating_sub(reqs.len());
            for req in reqs {
                let error = BusError::Unavailable;
                self.out.push_back(BusOutput::Failed { req, error });
            }
            return true;
        };
        let args = batch.args(&self.keys, self.cfg.history);
        args.encode(b"EVALSHA", sha, conn.wbuf());
        let kind = Kind::Publish {
            reqs,
            args,
            eval: false,
        };
        conn.expect(kind, now_ms + self.timeout_ms);
        self.batches_out += 1;
        self.sent();
        false
    }

    /// Publishes `payload` to `streams` with an id above `floor_id` (the
    /// highest id this node has seen); the outcome comes from `poll`. It
    /// joins the batch that [`Bus::send_batch`] sends.
    #[cfg(test)]
    pub fn publish(
        &mut self,
        req: u64,
        streams: &[&str],
        payload: &[u8],
        floor_id: u64,
        now_ms: u64,
    ) -> Result<(), BusError> {
        self.publish_as(req, streams, payload, floor_id, now_ms, Retain::History)
    }

    /// [`Bus::publish`], saying what Redis keeps of the event.
    pub fn publish_as(
        &mut self,
        req: u64,
        streams: &[&str],
        payload: &[u8],
        floor_id: u64,
        now_ms: u64,
        retain: Retain,
    ) -> Result<(), BusError> {
        self.check()?;
        if streams.is_empty() || streams.len() > MAX_STREAMS {
            return Err(BusError::Invalid("need 1 to 256 streams"));
        }
        if streams
            .iter()
            .enumerate()
            .any(|(i, s)| streams[..i].contains(s))
        {
            return Err(BusError::Invalid("duplicate stream"));
        }
        if floor_id > MAX_ID {
            return Err(BusError::Invalid("floor id over 2^53"));
        }
        // The announcement: payload plus each name and two numbers.
        let size = streams
            .iter()
            .fold(payload.len() + 32, |n, s| n + s.len() + 48);
        let limit = self.max_payload();
        if size > limit {
            return Err(BusError::TooLarge { size, limit });
        }
        if self.sha.is_none() || self.conns[0].is_none() {
            return Err(BusError::Unavailable);
        }
        if !self.batch.takes(streams, payload.len()) {
            let _ = self.send_batch(now_ms);
        }
        self.batch.push(streams, payload, floor_id, retain);
        self.batch_reqs.push(req);
        self.st.in_flight += 1;
        if self.batches_out == 0 {
            // Redis is idle: waiting for the turn's end would only add
            // latency. While a batch is out, the next one gathers.
            let _ = self.send_batch(now_ms);
        }
        Ok(())
    }

    /// Asks for up to `max` (capped at [`MAX_FETCH`]) entries of `stream`
    /// after `after_id`, fewer when they pass `bytes` (at most
    /// `fetch_bytes`: the memory account's room for the bus; then `more`;
    /// one entry always comes), plus the oldest id retained, atomically.
    pub fn fetch(
        &mut self,
        req: u64,
        stream: &str,
        after_id: u64,
        max: usize,
        bytes: usize,
        now_ms: u64,
    ) -> Result<(), BusError> {
        self.check()?;
        let Some(conn) = self.conns[0].as_mut() else {
            return Err(BusError::Unavailable);
        };
        let key = self.keys.stream(stream);
        let start = format!("({after_id}-1");
        let count = max.clamp(1, MAX_FETCH).to_string();
        let budget = self.cfg.fetch_bytes.min(bytes).max(1).to_string();
        // EVAL, not EVALSHA: fetches are rare, and Redis caches the text.
        let cmd: [&[u8]; 7] = [
            b"EVAL",
            FETCH_LUA.as_bytes(),
            b"1",
            key.as_bytes(),
            start.as_bytes(),
            count.as_bytes(),
            budget.as_bytes(),
        ];
        conn.send(&cmd, Kind::Fetch { req }, now_ms + self.timeout_ms);
        self.st.in_flight += 1;
        self.sent();
        Ok(())
    }

    /// The most the connections' buffers held since the last call (a
    /// fetch page being read and decoded, what waits to be written,
    /// publishes waiting for replies) and the batch being gathered: part
    /// of the memory account's `bus` kind.
    pub fn buffered_bytes(&mut self) -> usize {
        let conns: usize = self.conns.iter_mut().flatten().map(Conn::high_water).sum();
        conns + self.batch.bytes()
    }

    /// The next output, oldest first. Drain it after every call above.
    pub fn poll(&mut self) -> Option<BusOutput> {
        self.out.pop_front()
    }

    /// Whether both connections are ready (`status().connected`, without
    /// the copy).
    pub fn up(&self) -> bool {
        self.up
    }

    /// Publishes and fetches waiting for replies.
    pub fn in_flight(&self) -> usize {
        self.st.in_flight
    }

    /// Counters and state.
    pub fn status(&self) -> BusStatus {
        BusStatus {
            connected: self.up,
            ..self.st.clone()
        }
    }
}
