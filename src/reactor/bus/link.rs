//! The bus link: the glue between the Redis bus and this node's broker,
//! as a part the driver owns. It keeps the per-stream sync state, the
//! publishes waiting for Redis's ids and the subscribers waiting for
//! history; it appends announcements and fetched entries to the broker,
//! finds holes from each announcement's predecessor and fetches what they
//! lack (or marks the loss, which subscribers see as `gap`).
//!
//! It talks to Redis through [`Wire`] (the machine, `machine.rs`, in the
//! server; a fake in the tests below) and to the driver only through
//! [`Effect`]s it pushes: answer a publish, pause or resume a
//! connection's input, start a stream, run the fan-out. It never names
//! the driver, never touches a socket and reads no clock (`now_ms` is an
//! argument), so every rule here has a unit test without Redis.
//!
//! It must not invent an id (every id comes from Redis) or hold unbounded
//! state: buffered announcements per stream, requests in flight (the
//! wire's bound) and waiting subscribers are all capped, and what it holds
//! for fetches is admitted against the memory account's room for the `bus`
//! kind, lent to it between the driver's settlings (`memory::Lease`): an
//! announcement past it is dropped and its stream marked lost (`gap`), a
//! fetch page is sized to it.
//!
//! Per stream this node holds, one of: unknown (no entry: never loaded
//! from Redis), `Live` (continuous: the next announcement's predecessor
//! must be the stream's last id), `Fetching` (a fetch is in flight;
//! announcements are buffered and merged after the fetched entries).

use std::collections::HashMap;

use slab::Slab;

use super::effect::Effect;
use super::machine::BusOutput;
use crate::apps::Apps;
use crate::broker::{Broker, Resume, StreamIdx};
use crate::bus::script::Retain;
use crate::bus::BusError;
use crate::frame;
use crate::handler::{bus_frame, Publish, Reply, Subscribe};
use crate::id::EventId;
use crate::memory::{Account, Kind, Lease};
use crate::presence::Presence;

use super::super::conn::ConnKey;
use super::super::publish::{self, Failure, Outcome, To};

/// Announcements buffered per stream while its fetch runs.
const MAX_BUFFERED: usize = 10_000;
/// Subscribers waiting for history at once; more stream from what is local.
const MAX_WAITERS: usize = 10_000;

/// What the link needs of the Redis connections: nonblocking requests
/// whose outcomes come back from [`Wire::poll`].
pub(crate) trait Wire {
    /// Publishes `payload` to `streams` with an id above `floor`; `retain`
    /// says what Redis keeps of it.
    fn publish(
        &mut self,
        req: u64,
        streams: &[&str],
        payload: &[u8],
        floor: u64,
        now_ms: u64,
        retain: Retain,
    ) -> Result<(), BusError>;
    /// Asks for up to `max` entries of `stream` after id `after`, fewer
    /// past `bytes` (one always comes).
    fn fetch(
        &mut self,
        req: u64,
        stream: &str,
        after: u64,
        max: usize,
        bytes: usize,
        now_ms: u64,
    ) -> Result<(), BusError>;
    /// The most its buffers held since the last call (the memory
    /// account's `bus` kind).
    fn buffered_bytes(&mut self) -> usize;
    /// The next outcome or announcement.
    fn poll(&mut self) -> Option<BusOutput>;
    /// Both connections are ready.
    fn up(&self) -> bool;
    /// Requests waiting for replies.
    fn in_flight(&self) -> usize;
}

/// An announcement kept for a stream whose fetch is in flight.
struct Msg {
    id: EventId,
    prev: EventId,
    sse: std::rc::Rc<[u8]>,
    private: bool,
}

impl Msg {
    /// What it holds, for the memory account (an announcement buffered for
    /// several streams counts once each: an upper bound, as history's is).
    fn bytes(&self) -> usize {
        std::mem::size_of::<Msg>() + self.sse.len()
    }
}

/// Bytes of announcements a sync state holds.
fn held(s: Option<&Sync>) -> usize {
    match s {
        Some(Sync::Fetching { buffered, .. }) => buffered.iter().map(Msg::bytes).sum(),
        _ => 0,
    }
}

enum Sync {
    /// Continuous; `reset` after Redis lost the stream (the loss is
    /// marked): the next announcement is taken whatever its predecessor.
    Live { reset: bool },
    /// A fetch is in flight.
    Fetching {
        req: u64,
        buffered: Vec<Msg>,
        /// Was `Live` before (a catch-up), so failure keeps it live.
        was_live: bool,
        /// Announcements dropped because the buffer was full: the highest
        /// id (`NONE`: none).
        overflow: EventId,
    },
}

/// A publish waiting for Redis's ids.
struct Pending {
    who: To,
    ids: Vec<Option<EventId>>,
    left: usize,
    error: Option<BusError>,
    targets: Vec<StreamIdx>,
    made: Vec<StreamIdx>,
    reply: Reply,
}

enum Req {
    Publish { slot: usize, index: usize },
    Fetch { stream: Box<str> },
}

/// A subscriber waiting for history.
struct Waiter {
    conn: ConnKey,
    names: Vec<Box<str>>,
    stream: Subscribe,
    failed: bool,
}

/// Counters for `/stats` kept by the link (the wire keeps its own).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// History fetches issued.
    pub fetches: u64,
    /// Holes marked as lost.
    pub bus_gaps: u64,
    /// Publishes answered "redis unavailable" (or refused by Redis).
    pub unavailable: u64,
    /// Announcements or entries with a payload that could not be read.
    pub bad: u64,
}

/// The bus link; see the module doc. `W` is the wire to Redis.
pub(crate) struct Link<W> {
    pub(super) wire: W,
    next_req: u64,
    reqs: HashMap<u64, Req>,
    replies: Slab<Pending>,
    by_conn: HashMap<ConnKey, usize>,
    sync: HashMap<Box<str>, Sync>,
    waiters: Slab<Waiter>,
    /// Streams to catch up after a reconnect, started as room allows.
    catchup: Vec<Box<str>>,
    /// The newest id heard on the bus (announced, or given to a publish):
    /// an `Up` saying Redis allocated more was followed by updates this
    /// node may never hear of (see [`Broker::selectors_missed`]).
    heard: EventId,
    fetch_max: usize,
    max_in_flight: usize,
    counts: Counts,
    /// Bytes of announcements buffered in `Fetching` states.
    buffered: usize,
    /// The memory account's room for the `bus` kind, lent between
    /// settlings ([`Link::settle_memory`]).
    lease: Lease,
}

fn unavailable(e: &BusError) -> Failure {
    match e {
        BusError::Invalid(m) => Failure {
            status: 400,
            msg: format!("cannot publish: {m}"),
            too_large: false,
            reason: None,
        },
        BusError::TooLarge { .. } => Failure {
            status: 413,
            msg: format!("cannot publish: {e}"),
            too_large: true,
            reason: None,
        },
        _ => Failure::redis_unavailable(),
    }
}

fn last_id(broker: &Broker, idx: StreamIdx) -> EventId {
    broker.get(idx).map_or(EventId::NONE, |s| s.last_id)
}

impl<W: Wire> Link<W> {
    /// A link over `wire`: fetches ask for `fetch_max` entries a page,
    /// catch-ups use at most half of `max_in_flight`.
    pub(crate) fn over(wire: W, fetch_max: usize, max_in_flight: usize) -> Link<W> {
        Link {
            wire,
            next_req: 1,
            reqs: HashMap::new(),
            replies: Slab::new(),
            by_conn: HashMap::new(),
            sync: HashMap::new(),
            waiters: Slab::new(),
            catchup: Vec::new(),
            heard: EventId::NONE,
            fetch_max,
            max_in_flight,
            counts: Counts::default(),
            buffered: 0,
            lease: Lease::new(Kind::Bus),
        }
    }

    /// Bytes held for history fetches: announcements buffered while
    /// fetches run, and the most the wire's buffers held since the last
    /// call (a page being read and decoded). The driver reports it as the
    /// memory account's `bus` kind once a loop turn.
    pub(crate) fn fetch_bytes(&mut self) -> usize {
        self.buffered + self.wire.buffered_bytes()
    }

    /// Settles with the memory account: what was admitted since the last
    /// settling is charged to the `bus` kind, refusals are counted, and
    /// the room is renewed. The driver settles around every `step` and
    /// `stream`, so an admission is checked against the account as it is.
    pub(crate) fn settle_memory(&mut self, memory: &mut Account) {
        self.lease.settle(memory);
    }

    /// A fetch page's byte bound: a quarter of the room (the page is read,
    /// decoded and appended, a copy each); 0 when there is none.
    fn page(&self) -> usize {
        self.lease.room() / 4
    }

    /// Takes stream `name`'s sync state out of the books (it leaves
    /// `sync`, or is replaced), giving back what it buffered.
    fn unbook(&mut self, old: Option<&Sync>) {
        self.buffered = self.buffered.saturating_sub(held(old));
    }

    /// Removes stream `name`'s sync state, out of the books.
    fn take_sync(&mut self, name: &str) -> Option<Sync> {
        let old = self.sync.remove(name);
        self.unbook(old.as_ref());
        old
    }

    /// The link's counters.
    pub(crate) fn counts(&self) -> Counts {
        self.counts
    }

    /// Whether connection `key` waits for the bus (its input stays paused).
    pub(crate) fn holds(&self, key: ConnKey) -> bool {
        self.by_conn.contains_key(&key) || self.waiters.iter().any(|(_, w)| w.conn == key)
    }

    /// Connection `key` was freed: nothing may be sent to its slot later.
    pub(crate) fn forget(&mut self, key: ConnKey) {
        if let Some(slot) = self.by_conn.remove(&key) {
            if let Some(p) = self.replies.get_mut(slot) {
                p.who = To::Nobody;
            }
        }
        self.waiters.retain(|_, w| w.conn != key);
    }

    fn req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    /// Handles the wire's next output. `false` when there was none: then
    /// the catch-up goes on and subscribers whose history came start.
    /// The driver carries out `fx` after each call, so an append that
    /// asks for the fan-out gets it before the next output.
    pub(crate) fn step(
        &mut self,
        broker: &mut Broker,
        apps: &mut Apps,
        presence: &mut Presence,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) -> bool {
        let Some(out) = self.wire.poll() else {
            self.continue_catchup(broker, apps, now_ms, fx);
            self.release_waiters(broker, fx);
            return false;
        };
        match out {
            BusOutput::Published { req, id } => {
                self.heard = self.heard.max(EventId::new(id));
                if let Some(Req::Publish { slot, index }) = self.reqs.remove(&req) {
                    // The bus speaks numbers: ids from here on.
                    self.publish_done(broker, slot, index, Ok(EventId::new(id)), fx);
                }
            }
            BusOutput::Failed { req, error } => match self.reqs.remove(&req) {
                Some(Req::Publish { slot, index }) => {
                    self.publish_done(broker, slot, index, Err(error), fx)
                }
                Some(Req::Fetch { stream }) => {
                    self.fetch_failed(broker, apps, &stream, req, &error, fx)
                }
                None => {}
            },
            BusOutput::Message {
                id,
                streams,
                payload,
            } => {
                let id = EventId::new(id);
                self.on_message(broker, apps, presence, id, &streams, &payload, now_ms, fx)
            }
            BusOutput::Fetched {
                req,
                entries,
                first_retained,
                more,
            } => self.on_fetched(broker, apps, req, entries, first_retained, more, now_ms, fx),
            BusOutput::Up { last_id } => {
                // Announcements up to it came before this node listened:
                // those of topics it does not hold never reach it.
                let last_id = EventId::new(last_id);
                broker.note_unheld(last_id);
                // Updates published while this node did not listen: the
                // catch-up refetches the topics it holds, but selector
                // streams here may want topics it does not hold, whose
                // updates are gone for them: marked lost (`gap`).
                if last_id > self.heard {
                    broker.selectors_missed(last_id);
                    self.heard = last_id;
                }
                self.on_up();
            }
            BusOutput::Down => {}
        }
        true
    }

    /// A publish decision through the bus (`publish::apply` routed it
    /// here, `targets` resolved); answered (`Effect::Settled`) once Redis
    /// gave every id or refused one. A connection's input waits meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn publish(
        &mut self,
        broker: &Broker,
        who: To,
        targets: Vec<StreamIdx>,
        made: Vec<StreamIdx>,
        p: Publish,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        let floor = broker.ids().last();
        let names: Vec<String> = targets
            .iter()
            .filter_map(|&t| broker.get(t))
            .map(|s| s.name.to_string())
            .collect();
        let conn = match who {
            To::Conn(k) => Some(k),
            _ => None,
        };
        let payloads: Vec<Vec<u8>> = p.events.iter().map(|b| b.payload(p.private)).collect();
        let n = payloads.len();
        let slot = self.replies.insert(Pending {
            who,
            ids: vec![None; n],
            left: 0,
            error: None,
            targets,
            made,
            reply: p.reply,
        });
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        // A subscription update's topic is read only as it happens: Redis
        // keeps no history of it (a key per subscription would pile up).
        let retain = if refs.iter().any(|n| crate::presence::is_update_topic(n)) {
            Retain::Announce
        } else {
            Retain::History
        };
        for (index, payload) in payloads.iter().enumerate() {
            let req = self.req();
            match self
                .wire
                .publish(req, &refs, payload, floor.get(), now_ms, retain)
            {
                Ok(()) => {
                    self.reqs.insert(req, Req::Publish { slot, index });
                    if let Some(p) = self.replies.get_mut(slot) {
                        p.left += 1;
                    }
                }
                Err(e) => {
                    if let Some(p) = self.replies.get_mut(slot) {
                        p.error = Some(e);
                    }
                    break;
                }
            }
        }
        let left = self.replies.get(slot).map_or(0, |p| p.left);
        if left == 0 {
            self.finish_publish(broker, slot, fx);
        } else if let Some(k) = conn {
            self.by_conn.insert(k, slot);
            fx.push(Effect::Pause(k));
        }
    }

    fn publish_done(
        &mut self,
        broker: &Broker,
        slot: usize,
        index: usize,
        r: Result<EventId, BusError>,
        fx: &mut Vec<Effect>,
    ) {
        let Some(p) = self.replies.get_mut(slot) else {
            return;
        };
        p.left = p.left.saturating_sub(1);
        match r {
            Ok(id) => {
                if let Some(x) = p.ids.get_mut(index) {
                    *x = Some(id);
                }
            }
            Err(e) => {
                log::debug!("bus publish failed: {e}");
                p.error.get_or_insert(e);
            }
        }
        if p.left == 0 {
            self.finish_publish(broker, slot, fx);
        }
    }

    /// Every publish of a deferred reply is answered: settled like a
    /// local one (`publish::settle` renders the reply).
    fn finish_publish(&mut self, broker: &Broker, slot: usize, fx: &mut Vec<Effect>) {
        let Some(p) = self.replies.try_remove(slot) else {
            return;
        };
        let conn = match p.who {
            To::Conn(k) => {
                self.by_conn.remove(&k);
                Some(k)
            }
            _ => None,
        };
        if p.error.is_some() {
            self.counts.unavailable += 1;
        }
        let outcome = Outcome {
            ids: p.ids.iter().map_while(|x| *x).collect(),
            audience: broker.audience(&p.targets),
            failure: p.error.as_ref().map(unavailable),
            pressure: false,
        };
        fx.push(Effect::Settled {
            to: p.who,
            reply: p.reply,
            made: p.made,
            outcome,
        });
        if let Some(k) = conn {
            fx.push(Effect::Resume(k));
        }
    }

    /// Appends an announcement to the streams this node holds, or buffers
    /// it (fetch in flight), or starts a fetch (a predecessor it lacks).
    #[allow(clippy::too_many_arguments)]
    fn on_message(
        &mut self,
        broker: &mut Broker,
        apps: &mut Apps,
        presence: &mut Presence,
        id: EventId,
        streams: &[(String, u64)],
        payload: &[u8],
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        self.heard = self.heard.max(id);
        let Some((sse, private)) = bus_frame(id, payload) else {
            log::warn!("redis bus: ignoring an announcement with a malformed payload (id {id})");
            self.counts.bad += 1;
            return;
        };
        // Every node lists every node's subscribers, whichever streams it
        // holds, and its watchers get the update (`--mercure-subscriptions`).
        let names = streams.iter().map(|(n, _)| n.as_str());
        if let (Some(topic), [_]) = (presence.heard(names, &sse), streams) {
            return self.presence_entered(broker, apps, &topic, id, &sse, private, fx);
        }
        let sse: std::rc::Rc<[u8]> = sse.into();
        let mut now_targets = Vec::new();
        let mut fetch = Vec::new();
        // Streams that take it once their history is in: their selector
        // streams take it now, in announcement order.
        let mut later = Vec::new();
        for (name, prev) in streams {
            let prev = EventId::new(*prev);
            // Not held here: loaded when someone asks, or now when a
            // selector stream here wants its events. Else a selector
            // stream made later lacks this one (its history is not here).
            let Some(idx) = broker
                .find(name)
                .or_else(|| broker.hold_for_selectors(name, id))
            else {
                broker.note_unheld(id);
                continue;
            };
            let last = last_id(broker, idx);
            match self.sync.get_mut(name.as_str()) {
                None if prev == last => {
                    self.sync
                        .insert(name.as_str().into(), Sync::Live { reset: false });
                    now_targets.push(idx);
                }
                None => {
                    fetch.push((name.clone(), false, prev));
                    later.push(idx);
                }
                Some(Sync::Live { reset }) => {
                    if id <= last {
                        continue;
                    }
                    if prev == last || *reset {
                        *reset = false;
                        now_targets.push(idx);
                    } else {
                        fetch.push((name.clone(), true, prev));
                        later.push(idx);
                    }
                }
                Some(Sync::Fetching {
                    buffered, overflow, ..
                }) => {
                    later.push(idx);
                    let m = Msg {
                        id,
                        prev,
                        sse: sse.clone(),
                        private,
                    };
                    // Past the count or the memory account's `bus` kind the
                    // announcement is dropped and marked lost (`gap`).
                    if buffered.len() < MAX_BUFFERED && self.lease.admit(m.bytes()) {
                        self.buffered += m.bytes();
                        buffered.push(m);
                    } else {
                        *overflow = (*overflow).max(id);
                    }
                }
            }
        }
        if !later.is_empty() {
            append_selectors(broker, apps, &later, id, &sse, private, fx);
        }
        for (name, was_live, prev) in fetch {
            log::debug!("stream {name:?}: predecessor {prev} not held, fetching");
            let msg = Msg {
                id,
                prev,
                sse: sse.clone(),
                private,
            };
            self.start_fetch(broker, apps, &name, was_live, vec![msg], now_ms, fx);
        }
        if !now_targets.is_empty() {
            append(broker, apps, &now_targets, id, &sse, private, fx);
        }
    }

    /// A subscription update: nobody resumes one from Redis, so it skips
    /// the sync rules and enters this node's selector streams through its
    /// topic's stream, made for it (in the pool of addresses unknown) and
    /// dropped again unless someone reads that very topic
    /// (`Effect::DropOneOff`).
    #[allow(clippy::too_many_arguments)]
    fn presence_entered(
        &mut self,
        broker: &mut Broker,
        apps: &mut Apps,
        topic: &str,
        id: EventId,
        sse: &[u8],
        private: bool,
        fx: &mut Vec<Effect>,
    ) {
        let by = crate::broker::Create::Subscriber(0);
        let idx = match broker.find(topic) {
            Some(i) => i,
            None => match broker.resolve_topics(&[topic], by) {
                Ok(v) => match v.first() {
                    Some(&i) => i,
                    None => return,
                },
                Err((_, e)) => {
                    return log::debug!("subscription update {id} not kept: {}", e.message())
                }
            },
        };
        append(broker, apps, &[idx], id, sse, private, fx);
        if broker.subscribers(idx).is_empty() {
            self.sync.remove(topic);
            fx.push(Effect::DropOneOff(idx));
        }
    }

    /// Starts a fetch of `name` after its last local id. Its page is at
    /// most a quarter of the memory account's room for the bus; with no
    /// room at all it fails at once, which marks what it was for as lost.
    #[allow(clippy::too_many_arguments)]
    fn start_fetch(
        &mut self,
        broker: &mut Broker,
        apps: &mut Apps,
        name: &str,
        was_live: bool,
        mut buffered: Vec<Msg>,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        let after = broker
            .find(name)
            .map_or(EventId::NONE, |i| last_id(broker, i));
        let req = self.req();
        let mut overflow = EventId::NONE;
        let bytes: usize = buffered.iter().map(Msg::bytes).sum();
        if bytes > 0 && !self.lease.admit(bytes) {
            overflow = buffered.iter().map(|m| m.id).max().unwrap_or(EventId::NONE);
            buffered.clear();
        }
        let new = Sync::Fetching {
            req,
            buffered,
            was_live,
            overflow,
        };
        self.buffered += held(Some(&new));
        let old = self.sync.insert(name.into(), new);
        self.unbook(old.as_ref());
        let page = self.page();
        let sent = if page == 0 {
            log::info!("fetch of stream {name:?} refused: the memory account's bus kind is full");
            Err(BusError::Busy)
        } else {
            self.wire
                .fetch(req, name, after.get(), self.fetch_max, page, now_ms)
        };
        match sent {
            Ok(()) => {
                self.counts.fetches += 1;
                self.reqs.insert(
                    req,
                    Req::Fetch {
                        stream: name.into(),
                    },
                );
            }
            Err(e) => self.fetch_failed(broker, apps, name, req, &e, fx),
        }
    }

    /// A fetch failed: what was buffered goes in after marking the hole
    /// before it (unless the bus is down: its catch-up refetches it);
    /// subscribers waiting for it stream from what is local.
    fn fetch_failed(
        &mut self,
        broker: &mut Broker,
        apps: &mut Apps,
        name: &str,
        req: u64,
        e: &BusError,
        fx: &mut Vec<Effect>,
    ) {
        if !matches!(self.sync.get(name), Some(Sync::Fetching { req: r, .. }) if *r == req) {
            return;
        }
        let Some(Sync::Fetching {
            buffered,
            was_live,
            overflow,
            ..
        }) = self.take_sync(name)
        else {
            return;
        };
        log::debug!("fetch of stream {name:?} failed: {e}");
        for (_, w) in self.waiters.iter_mut() {
            if w.names.iter().any(|n| &**n == name) {
                w.failed = true;
            }
        }
        if buffered.is_empty() && overflow == EventId::NONE {
            if was_live {
                self.sync.insert(name.into(), Sync::Live { reset: false });
            }
            return;
        }
        self.sync.insert(name.into(), Sync::Live { reset: false });
        if !self.wire.up() {
            // Not up (yet, or any more): the coming `Up` catches up every
            // live stream from Redis, which holds what was buffered (each
            // announcement follows its XADD). A hole marked now would be
            // a gap where nothing is lost (an announcement can arrive
            // on the pub/sub connection before the command one is ready).
            return;
        }
        if let Some(idx) = broker.find(name) {
            self.merge_buffered(broker, apps, idx, buffered, overflow, false, fx);
        }
    }

    /// Appends buffered announcements in id order, marking any hole.
    #[allow(clippy::too_many_arguments)]
    fn merge_buffered(
        &mut self,
        broker: &mut Broker,
        apps: &mut Apps,
        idx: StreamIdx,
        mut buffered: Vec<Msg>,
        overflow: EventId,
        reset: bool,
        fx: &mut Vec<Effect>,
    ) {
        buffered.sort_by_key(|m| m.id);
        let mut reset = reset;
        for m in buffered {
            let last = last_id(broker, idx);
            if m.id <= last {
                continue;
            }
            if m.prev != last && !reset {
                self.hole(broker, idx, last, m.prev, m.id);
            }
            reset = false;
            append(broker, apps, &[idx], m.id, &m.sse, m.private, fx);
        }
        if overflow > EventId::NONE {
            let top = last_id(broker, idx).max(overflow);
            self.lost(broker, idx, top);
        }
    }

    /// The event after `last` names `prev` as its predecessor: the events
    /// between are not here and Redis no longer has them.
    fn hole(
        &mut self,
        broker: &mut Broker,
        idx: StreamIdx,
        last: EventId,
        prev: EventId,
        id: EventId,
    ) {
        if last == EventId::NONE && prev == EventId::NONE {
            return;
        }
        broker.observe(prev);
        // Events up to `prev` are missing; if Redis forgot `last` (it
        // restarted), anything before `id` may be.
        let upto = if prev > last { prev } else { id.pred() };
        if last == EventId::NONE {
            // Nothing held here yet: only resumes from before `prev` lack
            // history, which is trimmed history, not a bus loss.
            broker.mark_lost(idx, upto);
        } else {
            self.lost(broker, idx, upto);
        }
    }

    fn lost(&mut self, broker: &mut Broker, idx: StreamIdx, upto: EventId) {
        if broker.mark_lost(idx, upto) {
            self.counts.bus_gaps += 1;
            let name = broker.get(idx).map(|s| s.name.to_string());
            log::warn!("stream {name:?}: events up to {upto} lost on the bus; subscribers get gap");
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_fetched(
        &mut self,
        broker: &mut Broker,
        apps: &mut Apps,
        req: u64,
        entries: Vec<(u64, u64, Vec<u8>)>,
        first_retained: Option<u64>,
        more: bool,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        let Some(Req::Fetch { stream: name }) = self.reqs.remove(&req) else {
            return;
        };
        // The bus speaks numbers: ids from here on.
        let entries: Vec<(EventId, EventId, Vec<u8>)> = entries
            .into_iter()
            .map(|(id, prev, p)| (EventId::new(id), EventId::new(prev), p))
            .collect();
        let first_retained = first_retained.map(EventId::new);
        let full = more || entries.len() >= self.fetch_max;
        // The next page starts after this one even if an entry was unusable.
        let page_end = entries.last().map_or(EventId::NONE, |e| e.0);
        let Some(Sync::Fetching { req: r, .. }) = self.sync.get(&name) else {
            return;
        };
        if *r != req {
            return;
        }
        let Some(idx) = broker.find(&name) else {
            self.take_sync(&name);
            return;
        };
        let held = last_id(broker, idx);
        for (id, prev, payload) in &entries {
            let last = last_id(broker, idx);
            if *id <= last {
                continue;
            }
            let Some((sse, private)) = bus_frame(*id, payload) else {
                self.counts.bad += 1;
                continue;
            };
            if *prev != last {
                self.hole(broker, idx, last, *prev, *id);
            }
            broker.observe(*prev);
            append(broker, apps, &[idx], *id, &sse, private, fx);
        }
        if full {
            // More than one page: keep buffering, fetch the next.
            let after = last_id(broker, idx).max(page_end);
            let req2 = self.req();
            if let Some(Sync::Fetching { req: r, .. }) = self.sync.get_mut(&name) {
                *r = req2;
            }
            let page = self.page();
            let sent = if page == 0 {
                log::info!(
                    "fetch of stream {name:?} stopped: the memory account's bus kind is full"
                );
                Err(BusError::Busy)
            } else {
                self.wire
                    .fetch(req2, &name, after.get(), self.fetch_max, page, now_ms)
            };
            match sent {
                Ok(()) => {
                    self.counts.fetches += 1;
                    self.reqs.insert(req2, Req::Fetch { stream: name });
                }
                Err(e) => self.fetch_failed(broker, apps, &name, req2, &e, fx),
            }
            return;
        }
        // Redis holds neither this node's last event nor anything after
        // it: it lost the stream (restarted empty). What was published
        // while this node was away is gone: mark it, take what comes next.
        let mut reset = false;
        if entries.is_empty() && held > EventId::NONE && first_retained.is_none_or(|f| f > held) {
            // Above every id seen here, so even a subscriber at the newest
            // is told; the next id Redis gives is above it (floor).
            let top = broker.ids().last().succ();
            self.lost(broker, idx, top);
            reset = true;
        }
        let old = self.sync.insert(name.clone(), Sync::Live { reset: false });
        self.unbook(old.as_ref());
        let Some(Sync::Fetching {
            buffered, overflow, ..
        }) = old
        else {
            return;
        };
        self.merge_buffered(broker, apps, idx, buffered, overflow, reset, fx);
        if reset && last_id(broker, idx) == held {
            // Nothing came after: the next announcement is taken as is.
            self.sync.insert(name, Sync::Live { reset: true });
        }
    }

    /// Connected again: every stream held here may have missed events.
    fn on_up(&mut self) {
        let mut names: Vec<Box<str>> = self
            .sync
            .iter()
            .filter(|(_, s)| matches!(s, Sync::Live { .. }))
            .map(|(n, _)| n.clone())
            .collect();
        names.retain(|n| !self.catchup.contains(n));
        self.catchup.extend(names);
    }

    /// Starts queued catch-up fetches while half the in-flight budget is
    /// free.
    fn continue_catchup(
        &mut self,
        broker: &mut Broker,
        apps: &mut Apps,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        while self.wire.up() && self.wire.in_flight() * 2 < self.max_in_flight {
            let Some(name) = self.catchup.pop() else {
                return;
            };
            if matches!(self.sync.get(&name), Some(Sync::Live { .. })) {
                self.start_fetch(broker, apps, &name, true, Vec::new(), now_ms, fx);
            }
        }
    }

    /// A subscription reading `targets`: starts now (`Effect::Stream`)
    /// when the history here suffices, else waits for it from Redis with
    /// the connection's input paused.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn stream(
        &mut self,
        broker: &mut Broker,
        apps: &mut Apps,
        key: ConnKey,
        targets: &[StreamIdx],
        bs: Subscribe,
        now_ms: u64,
        fx: &mut Vec<Effect>,
    ) {
        let last_seen = broker.ids().last();
        let names: Vec<Box<str>> = targets
            .iter()
            .filter_map(|&t| broker.get(t))
            .map(|s| s.name.clone())
            .collect();
        // Selector streams are this node's own (no other node has them to
        // fetch): a resume reads them as they are here.
        let synced: Vec<Box<str>> = targets
            .iter()
            .filter(|&&t| !broker.is_selector(t))
            .filter_map(|&t| broker.get(t))
            .map(|s| s.name.clone())
            .collect();
        let need: Vec<(Box<str>, bool)> = match bs.resume {
            Resume::Live => Vec::new(),
            ref r => synced
                .iter()
                .filter_map(|n| match self.sync.get(n) {
                    None => Some((n.clone(), false)),
                    Some(Sync::Fetching { .. }) => Some((n.clone(), true)),
                    Some(Sync::Live { .. }) => {
                        // Published elsewhere and not announced here yet.
                        matches!(r, Resume::After(x, _) if *x > last_seen)
                            .then(|| (n.clone(), true))
                    }
                })
                .collect(),
        };
        if need.is_empty() || self.waiters.len() >= MAX_WAITERS {
            let failed = !need.is_empty();
            return begin(broker, key, false, bs, &names, failed, fx);
        }
        self.waiters.insert(Waiter {
            conn: key,
            names,
            stream: bs,
            failed: false,
        });
        fx.push(Effect::Pause(key));
        for (n, was_live) in need {
            if !matches!(self.sync.get(&n), Some(Sync::Fetching { .. })) {
                self.start_fetch(broker, apps, &n, was_live, Vec::new(), now_ms, fx);
            }
        }
        self.release_waiters(broker, fx);
    }

    /// Starts the streams of subscribers whose history has arrived (or
    /// could not).
    fn release_waiters(&mut self, broker: &mut Broker, fx: &mut Vec<Effect>) {
        let ready: Vec<usize> = self
            .waiters
            .iter()
            .filter(|(_, w)| {
                !w.names
                    .iter()
                    .any(|n| matches!(self.sync.get(n), Some(Sync::Fetching { .. })))
            })
            .map(|(i, _)| i)
            .collect();
        for i in ready {
            let Some(w) = self.waiters.try_remove(i) else {
                continue;
            };
            begin(broker, w.conn, true, w.stream, &w.names, w.failed, fx);
        }
    }
}

/// Appends a bus event (announced or fetched) to `targets`, indexes it
/// like a local publish (`publish::entered`), and asks for the fan-out
/// when the rings fill.
fn append(
    broker: &mut Broker,
    apps: &mut Apps,
    targets: &[StreamIdx],
    id: EventId,
    sse: &[u8],
    private: bool,
    fx: &mut Vec<Effect>,
) {
    match broker.append_as(targets, id, sse, private) {
        Ok(p) => {
            publish::entered(broker, apps, targets, id, sse, private);
            if p.pressure && !matches!(fx.last(), Some(Effect::Flush)) {
                fx.push(Effect::Flush);
            }
        }
        Err(e) => log::warn!("bus event {id} not kept: {}", e.message()),
    }
}

/// [`append`] for the selector streams `targets` feed only: `targets`
/// take the event once their history is loaded.
fn append_selectors(
    broker: &mut Broker,
    apps: &mut Apps,
    targets: &[StreamIdx],
    id: EventId,
    sse: &[u8],
    private: bool,
    fx: &mut Vec<Effect>,
) {
    let (took, pressure) = broker.append_selectors(targets, id, sse, private);
    if took {
        publish::entered(broker, apps, targets, id, sse, private);
    }
    if pressure && !matches!(fx.last(), Some(Effect::Flush)) {
        fx.push(Effect::Flush);
    }
}

/// Subscribes `key` to the streams `names` (as they are here now) and
/// asks the driver to start its stream; `failed`: history could not be
/// loaded, so what is local may miss some (a `gap` says so).
fn begin(
    broker: &mut Broker,
    key: ConnKey,
    waited: bool,
    mut sub: Subscribe,
    names: &[Box<str>],
    failed: bool,
    fx: &mut Vec<Effect>,
) {
    let targets: Vec<StreamIdx> = names.iter().filter_map(|n| broker.find(n)).collect();
    let c = broker.subscribe_as(key, &targets, &sub.sees_private, &sub.resume);
    match (&c.gap, failed, &sub.resume) {
        (Some(g), _, _) => sub.prelude.extend_from_slice(g),
        (None, true, Resume::After(_, raw) | Resume::Unparsable(raw)) => {
            // History could not be loaded: what is local may miss some.
            let refs: Vec<&str> = targets
                .iter()
                .filter_map(|&t| broker.get(t))
                .map(|s| s.shown())
                .collect();
            sub.prelude.extend_from_slice(&frame::gap(raw, &refs));
            broker.gaps += 1;
        }
        _ => {}
    }
    fx.push(Effect::Stream {
        key,
        waited,
        sub,
        cursors: c.cursors,
    });
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::broker::{Create, Limits};
    use crate::event::Event;
    use crate::handler::{Body, Shape, Targets};

    /// A publish the link asked for: (req, streams, payload, floor, what
    /// Redis keeps).
    type Sent = (u64, Vec<String>, Vec<u8>, u64, Retain);

    /// A wire without Redis: it records what the link asks and hands out
    /// the outputs a test queues.
    #[derive(Default)]
    struct Fake {
        out: VecDeque<BusOutput>,
        published: Vec<Sent>,
        /// (req, stream, after)
        fetched: Vec<(u64, String, u64)>,
        /// Each fetch's page bound, in order.
        pages: Vec<usize>,
        refuse: Option<BusError>,
        down: bool,
    }

    impl Wire for Fake {
        fn publish(
            &mut self,
            req: u64,
            streams: &[&str],
            payload: &[u8],
            floor: u64,
            _now_ms: u64,
            retain: Retain,
        ) -> Result<(), BusError> {
            if let Some(e) = &self.refuse {
                return Err(e.clone());
            }
            let names = streams.iter().map(|s| s.to_string()).collect();
            self.published
                .push((req, names, payload.to_vec(), floor, retain));
            Ok(())
        }
        fn fetch(
            &mut self,
            req: u64,
            stream: &str,
            after: u64,
            _max: usize,
            bytes: usize,
            _now_ms: u64,
        ) -> Result<(), BusError> {
            self.fetched.push((req, stream.to_string(), after));
            self.pages.push(bytes);
            Ok(())
        }
        fn buffered_bytes(&mut self) -> usize {
            0
        }
        fn poll(&mut self) -> Option<BusOutput> {
            self.out.pop_front()
        }
        fn up(&self) -> bool {
            !self.down
        }
        fn in_flight(&self) -> usize {
            0
        }
    }

    struct World {
        link: Link<Fake>,
        broker: Broker,
        apps: Apps,
        presence: Presence,
        fx: Vec<Effect>,
        memory: Account,
    }

    impl World {
        fn new() -> World {
            // 64 MiB of history, 4 MiB beside it: the bus may hold 2 MiB.
            let mut memory = Account::new(crate::memory::Limits::new(68 << 20, 64 << 20, 1 << 20));
            let limits = Limits {
                history: 100,
                history_bytes: 1 << 20,
            };
            let mut link = Link::over(Fake::default(), 16, 64);
            link.settle_memory(&mut memory);
            World {
                link,
                broker: Broker::new(1, limits, 100),
                apps: Apps::new(None),
                presence: Presence::new(false),
                fx: Vec::new(),
                memory,
            }
        }
        /// A public stream held here.
        fn stream(&mut self, name: &str) -> StreamIdx {
            self.broker.resolve_as(&[name], Create::Publisher).unwrap()[0]
        }
        fn last(&self, idx: StreamIdx) -> u64 {
            self.broker.get(idx).unwrap().last_id.get()
        }
        /// Queues `o` and steps the link until the wire is drained.
        fn feed(&mut self, o: BusOutput) {
            self.link.wire.out.push_back(o);
            loop {
                self.link.settle_memory(&mut self.memory);
                let more = self.link.step(
                    &mut self.broker,
                    &mut self.apps,
                    &mut self.presence,
                    0,
                    &mut self.fx,
                );
                self.link.settle_memory(&mut self.memory);
                if !more {
                    break;
                }
            }
        }
        fn announce(&mut self, id: u64, stream: &str, prev: u64, data: &str) {
            let payload = Body::Numbered(Event::new(data)).payload(false);
            self.feed(BusOutput::Message {
                id,
                streams: vec![(stream.to_string(), prev)],
                payload,
            });
        }
    }

    fn shape() -> Shape {
        Shape {
            http10: false,
            keep_alive: true,
            head_only: false,
            cors: Vec::new(),
        }
    }

    #[test]
    fn an_announcement_for_a_held_stream_is_appended_and_a_hole_is_fetched() {
        let mut w = World::new();
        let s = w.stream("s");
        // Its predecessor is what is held: appended, no fetch.
        w.announce(5, "s", 0, "a");
        assert_eq!(w.last(s), 5);
        assert_eq!(w.broker.get(s).unwrap().retained(), 1);
        w.announce(9, "s", 5, "b");
        assert_eq!(w.last(s), 9);
        assert!(w.link.wire.fetched.is_empty());
        // A stream not held here is not made for an announcement.
        w.announce(10, "other", 0, "x");
        assert!(w.broker.find("other").is_none());
        // Its predecessor (11) is not held: fetched after 9, buffered.
        w.announce(12, "s", 11, "d");
        assert_eq!(w.last(s), 9);
        let (req, stream, after) = w.link.wire.fetched[0].clone();
        assert_eq!((stream.as_str(), after), ("s", 9));
        // The fetch brings 11; the buffered 12 follows it: no hole.
        let payload = Body::Numbered(Event::new("c")).payload(false);
        w.feed(BusOutput::Fetched {
            req,
            entries: vec![(11, 9, payload)],
            first_retained: Some(5),
            more: false,
        });
        assert_eq!(w.last(s), 12);
        assert_eq!(w.broker.get(s).unwrap().retained(), 4);
        assert_eq!(w.link.counts().bus_gaps, 0);
        assert_eq!(w.link.counts().fetches, 1);
        // A repeat (an echo) is not appended twice.
        w.announce(12, "s", 11, "d");
        assert_eq!(w.broker.get(s).unwrap().retained(), 4);
        // Nothing here needed the driver but the fan-out.
        assert!(w.fx.iter().all(|e| matches!(e, Effect::Flush)));
    }

    #[test]
    fn a_hole_redis_cannot_fill_is_marked_lost() {
        let mut w = World::new();
        let s = w.stream("s");
        w.announce(5, "s", 0, "a");
        w.announce(9, "s", 7, "b");
        let (req, _, after) = w.link.wire.fetched[0].clone();
        assert_eq!(after, 5);
        // Redis no longer has 6..7 (trimmed): it starts at 9.
        let payload = Body::Numbered(Event::new("b")).payload(false);
        w.feed(BusOutput::Fetched {
            req,
            entries: vec![(9, 7, payload)],
            first_retained: Some(9),
            more: false,
        });
        assert_eq!(w.last(s), 9);
        assert_eq!(w.link.counts().bus_gaps, 1);
        // Lost up to 9's predecessor: what is held at or below it goes
        // too, so a subscriber there gets `gap`, not a silent hole.
        let st = w.broker.get(s).unwrap();
        assert_eq!((st.lost_upto().get(), st.retained()), (7, 1));
    }

    /// What the link buffers while a fetch runs is admitted against the
    /// memory account's room for the bus: past it an announcement is
    /// dropped and the stream marked lost once the fetch is in (`gap`),
    /// pages are sized to a quarter of the room, and the bytes go back
    /// when the buffer is merged.
    #[test]
    fn announcements_past_the_bus_room_are_marked_lost() {
        let mut w = World::new();
        let s = w.stream("s");
        w.announce(5, "s", 0, "a");
        w.announce(9, "s", 7, "b");
        let (req, _, _) = w.link.wire.fetched[0].clone();
        // A quarter of the room (less the announcement buffered for it).
        let page = w.link.wire.pages[0];
        assert!(
            page <= (2 << 20) / 4 && page > (2 << 20) / 4 - 1024,
            "{page}"
        );
        // 6 announcements of 512 KiB while the fetch runs: 3 fit in 2 MiB.
        let big = "x".repeat(512 << 10);
        for id in 10..16 {
            w.announce(id, "s", id - 1, &big);
        }
        let bus = |w: &World| w.memory.usage().find(|u| u.kind == Kind::Bus).unwrap();
        assert_eq!(bus(&w).refused, 3);
        assert!(
            w.link.fetch_bytes() >= 3 * (512 << 10),
            "{}",
            w.link.fetch_bytes()
        );
        assert!(bus(&w).used <= 2 << 20);
        let payload = Body::Numbered(Event::new("c")).payload(false);
        w.feed(BusOutput::Fetched {
            req,
            entries: vec![(7, 5, payload)],
            first_retained: Some(5),
            more: false,
        });
        // Merged: 9 and what fit; lost up to the last dropped (15).
        assert_eq!(w.link.counts().bus_gaps, 1);
        assert_eq!(w.broker.get(s).unwrap().lost_upto().get(), 15);
        assert_eq!(w.link.fetch_bytes(), 0, "nothing stays buffered");
        w.memory.report(Kind::Bus, w.link.fetch_bytes());
        assert_eq!(bus(&w).used, 0);
    }

    #[test]
    fn a_publish_reply_is_rendered_once_redis_gives_every_id() {
        let mut w = World::new();
        let s = w.stream("s");
        let key = ConnKey(3);
        let p = Publish {
            to: Targets::Internal(Vec::new()),
            events: vec![
                Body::Numbered(Event::new("a")),
                Body::Numbered(Event::new("b")),
            ],
            private: false,
            reply: Reply::Ids {
                batch: true,
                shape: shape(),
            },
        };
        w.link.publish(
            &w.broker,
            To::Conn(key),
            vec![s],
            Vec::new(),
            p,
            0,
            &mut w.fx,
        );
        // Two publishes went to Redis; the connection waits.
        let sent = &w.link.wire.published;
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].1, ["s"]);
        assert_eq!(sent[0].2, Body::Numbered(Event::new("a")).payload(false));
        assert_eq!(sent[0].4, Retain::History, "other nodes fetch its history");
        assert!(matches!(w.fx.as_slice(), [Effect::Pause(k)] if *k == key));
        assert!(w.link.holds(key));
        w.fx.clear();
        let (r1, r2) = (sent[0].0, sent[1].0);
        w.feed(BusOutput::Published { req: r2, id: 101 });
        assert!(w.fx.is_empty(), "one id is not the answer");
        w.feed(BusOutput::Published { req: r1, id: 100 });
        let Some(Effect::Settled {
            to, reply, outcome, ..
        }) = w.fx.first()
        else {
            panic!("not settled");
        };
        assert!(matches!(to, To::Conn(k) if *k == key));
        assert_eq!(outcome.ids, [EventId::new(100), EventId::new(101)]);
        let publish::Answer::Http(bytes, close) = publish::render(reply, outcome) else {
            panic!("not an HTTP answer");
        };
        assert!(!close);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text.trim_end()
                .ends_with(r#"{"ids":["100","101"],"subscribers":0}"#),
            "{text}"
        );
        assert!(matches!(w.fx.get(1), Some(Effect::Resume(k)) if *k == key));
        assert_eq!(w.fx.len(), 2);
        assert!(!w.link.holds(key));
    }

    #[test]
    fn a_publish_redis_refuses_is_answered_503_at_once_and_a_gone_connection_not_at_all() {
        let mut w = World::new();
        let s = w.stream("s");
        w.link.wire.refuse = Some(BusError::Unavailable);
        let p = Publish {
            to: Targets::Internal(Vec::new()),
            events: vec![Body::Numbered(Event::new("a"))],
            private: false,
            reply: Reply::Library,
        };
        let (tx, _rx) = std::sync::mpsc::channel();
        w.link.publish(
            &w.broker,
            To::Library(tx),
            vec![s],
            Vec::new(),
            p,
            0,
            &mut w.fx,
        );
        let [Effect::Settled { reply, outcome, .. }] = w.fx.as_slice() else {
            panic!("not settled at once");
        };
        assert_eq!(outcome.failure.as_ref().map(|f| f.status), Some(503));
        assert_eq!(
            publish::render(reply, outcome),
            publish::Answer::Library(Err(crate::event::PublishError::Refused(
                "redis unavailable".into()
            )))
        );
        assert_eq!(w.link.counts().unavailable, 1);
        // A connection freed while Redis works: its answer goes nowhere.
        w.fx.clear();
        w.link.wire.refuse = None;
        let p = Publish {
            to: Targets::Internal(Vec::new()),
            events: vec![Body::Numbered(Event::new("b"))],
            private: false,
            reply: Reply::Ids {
                batch: false,
                shape: shape(),
            },
        };
        let key = ConnKey(7);
        w.link.publish(
            &w.broker,
            To::Conn(key),
            vec![s],
            Vec::new(),
            p,
            0,
            &mut w.fx,
        );
        w.link.forget(key);
        w.fx.clear();
        let req = w.link.wire.published[0].0;
        w.feed(BusOutput::Published { req, id: 50 });
        assert!(matches!(
            w.fx.as_slice(),
            [Effect::Settled { to: To::Nobody, .. }]
        ));
    }

    #[test]
    fn a_resuming_subscriber_waits_for_history_then_streams_from_it() {
        let mut w = World::new();
        let s = w.stream("s");
        let key = ConnKey(4);
        let sub = Subscribe {
            head: b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            chunked: true,
            prelude: b"retry: 1000\n\n".to_vec(),
            to: Targets::Internal(Vec::new()),
            sees_private: vec![false],
            resume: Resume::After(EventId::new(1), "1".into()),
            until: None,
            shape: shape(),
            presence: None,
        };
        w.link
            .stream(&mut w.broker, &mut w.apps, key, &[s], sub, 0, &mut w.fx);
        // Never loaded from Redis: a fetch, and the connection waits.
        assert!(matches!(w.fx.as_slice(), [Effect::Pause(k)] if *k == key));
        assert!(w.link.holds(key));
        let (req, stream, after) = w.link.wire.fetched[0].clone();
        assert_eq!((stream.as_str(), after), ("s", 0));
        w.fx.clear();
        let entry = |id, prev, d: &str| (id, prev, Body::Numbered(Event::new(d)).payload(false));
        w.feed(BusOutput::Fetched {
            req,
            entries: vec![entry(1, 0, "a"), entry(2, 1, "b")],
            first_retained: Some(1),
            more: false,
        });
        assert_eq!(w.last(s), 2);
        let [Effect::Stream {
            key: k,
            waited,
            sub,
            cursors,
        }] = w.fx.as_mut_slice()
        else {
            panic!("no stream started");
        };
        assert_eq!((*k, *waited), (key, true));
        assert_eq!(sub.prelude, b"retry: 1000\n\n", "history came: no gap");
        // It reads from after 1: event 2 is owed.
        let owed: Vec<u64> = w.broker.merge(cursors).map(|f| f.id.get()).collect();
        assert_eq!(owed, [2]);
        assert!(!w.link.holds(key));
    }

    fn live_sub(resume: Resume) -> Subscribe {
        Subscribe {
            head: b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
            chunked: true,
            prelude: Vec::new(),
            to: Targets::Internal(Vec::new()),
            sees_private: vec![false],
            resume,
            until: None,
            shape: shape(),
            presence: None,
        }
    }

    #[test]
    fn a_live_subscriber_starts_at_once_and_a_reconnect_catches_up_live_streams() {
        let mut w = World::new();
        let s = w.stream("s");
        let key = ConnKey(1);
        w.link.stream(
            &mut w.broker,
            &mut w.apps,
            key,
            &[s],
            live_sub(Resume::Live),
            0,
            &mut w.fx,
        );
        assert!(matches!(
            w.fx.as_slice(),
            [Effect::Stream { waited: false, .. }]
        ));
        assert!(w.link.wire.fetched.is_empty(), "live: nothing to load");
        assert!(!w.link.holds(key));
        w.fx.clear();
        // Live after an announcement; after a reconnect it is fetched from
        // its last id, in case announcements were missed meanwhile.
        w.announce(3, "s", 0, "a");
        w.feed(BusOutput::Down);
        w.feed(BusOutput::Up { last_id: 0 });
        assert_eq!(
            w.link.wire.fetched.last().map(|f| (f.1.as_str(), f.2)),
            Some(("s", 3))
        );
    }

    /// Updates published while the node did not listen may be of topics
    /// it does not hold, which the catch-up does not refetch: a selector
    /// stream that exists across the outage marks them lost (its reader
    /// gets `gap`), unless Redis allocated nothing the node had not heard.
    #[test]
    fn an_outage_marks_existing_selector_streams_lost_up_to_what_redis_allocated() {
        let mut w = World::new();
        w.feed(BusOutput::Up { last_id: 0 });
        let any = crate::auth::Selector::parse("*").unwrap();
        let s = w.broker.selector_stream(&any, None).unwrap();
        w.stream("/b/1");
        w.announce(5, "/b/1", 0, "a");
        let mut reader = w.broker.subscribe(ConnKey(1), &[s], &Resume::Live).cursors;
        assert!(w.broker.take_gap(&mut reader).is_none());
        // Down and up again with nothing new: no loss.
        w.feed(BusOutput::Down);
        w.feed(BusOutput::Up { last_id: 5 });
        assert_eq!(w.broker.get(s).unwrap().lost_upto(), EventId::NONE);
        assert!(w.broker.take_gap(&mut reader).is_none());
        // Down while another node published up to 9: marked, told.
        w.feed(BusOutput::Down);
        w.feed(BusOutput::Up { last_id: 9 });
        assert_eq!(w.broker.get(s).unwrap().lost_upto(), EventId::new(9));
        assert!(w.broker.take_gap(&mut reader).is_some());
    }

    /// What this node may have missed of topics it does not hold: the id
    /// of each announcement it skips, and what `Up` says was allocated
    /// before it listened. A selector stream made later counts it lost;
    /// announcements it takes do not move it.
    #[test]
    fn skipped_announcements_and_up_mark_what_a_new_selector_stream_lacks() {
        let mut w = World::new();
        let any = crate::auth::Selector::parse("*").unwrap();
        let lost = |w: &World| w.broker.selector_view(&any, true).1;
        w.feed(BusOutput::Up { last_id: 0 });
        assert_eq!(lost(&w), EventId::new(0), "an empty Redis: nothing missed");
        w.stream("/b/1");
        w.announce(5, "/b/1", 0, "a");
        assert_eq!(lost(&w), EventId::new(0), "held: taken");
        // No stream here, no selector wants it: skipped, and not made.
        w.announce(7, "/c/1", 0, "b");
        assert!(w.broker.find("/c/1").is_none());
        assert_eq!(lost(&w), EventId::new(7));
        // Nothing at or below the mark is kept (it would come again after
        // the gap): a stream made now has no newest event yet.
        assert_eq!(
            w.broker.selector_view(&any, false),
            (EventId::NONE, EventId::new(7))
        );
        // A selector stream that wants it makes this node hold the next.
        let sel = crate::auth::Selector::parse("/c/{x}").unwrap();
        w.broker.selector_stream(&sel, None).unwrap();
        w.announce(8, "/c/2", 0, "c");
        assert!(w.broker.find("/c/2").is_some());
        assert_eq!(lost(&w), EventId::new(7));
        // Reconnected: what was allocated before it listened again.
        w.feed(BusOutput::Down);
        w.feed(BusOutput::Up { last_id: 30 });
        assert_eq!(lost(&w), EventId::new(30));
        w.feed(BusOutput::Up { last_id: 20 });
        assert_eq!(lost(&w), EventId::new(30), "never lowered");
        // A live reader of a stream made now starts above it: no gap.
        let s = w.broker.selector_stream(&any, None).unwrap();
        let mut live = w.broker.subscribe(ConnKey(1), &[s], &Resume::Live).cursors;
        assert!(w.broker.take_gap(&mut live).is_none());
    }

    #[test]
    fn a_fetch_that_fails_while_down_marks_no_hole_and_its_subscriber_streams_with_a_gap() {
        let mut w = World::new();
        let s = w.stream("s");
        w.announce(2, "s", 0, "a");
        // A resume from an id this node never saw: history is asked for.
        let key = ConnKey(5);
        w.link.stream(
            &mut w.broker,
            &mut w.apps,
            key,
            &[s],
            live_sub(Resume::After(EventId::new(9), "9".into())),
            0,
            &mut w.fx,
        );
        let (req, _, after) = w.link.wire.fetched[0].clone();
        assert_eq!(after, 2);
        w.fx.clear();
        // Meanwhile an announcement with a predecessor not held is buffered.
        w.announce(12, "s", 11, "z");
        assert_eq!(w.last(s), 2);
        w.link.wire.down = true;
        w.feed(BusOutput::Failed {
            req,
            error: BusError::Unavailable,
        });
        // Down: what was buffered waits for the catch-up, no loss marked.
        assert_eq!(w.last(s), 2);
        assert_eq!(w.link.counts().bus_gaps, 0);
        // The subscriber streams from what is here, told it may miss some.
        let [Effect::Stream {
            key: k,
            waited: true,
            sub,
            ..
        }] = w.fx.as_slice()
        else {
            panic!("the waiting subscriber did not start");
        };
        assert_eq!(*k, key);
        let prelude = String::from_utf8_lossy(&sub.prelude);
        assert!(prelude.contains("event: gap"), "{prelude}");
        assert!(!w.link.holds(key));
    }

    #[test]
    fn a_subscription_update_heard_on_the_bus_is_listed_entered_and_its_stream_dropped() {
        let mut w = World::new();
        w.presence = Presence::new(true);
        let who = "urn:uuid:00000000-0000-4000-8000-000000000001";
        let topic = crate::presence::topic("exact", "https://x/a", who);
        let doc = serde_json::json!({
            "id": topic,
            "type": "Subscription",
            "subscriber": who,
            "match_type": "exact",
            "match": "https://x/a",
            "active": true,
        });
        let mut ev = Event::new(doc.to_string());
        ev.event = Some(crate::presence::EVENT.into());
        w.feed(BusOutput::Message {
            id: 40,
            streams: vec![(topic.clone(), 0)],
            payload: Body::Numbered(ev).payload(true),
        });
        // Listed by the subscriptions API...
        let listed = w
            .presence
            .api(crate::presence::PREFIX, "")
            .unwrap()
            .unwrap();
        assert!(listed.to_string().contains(who), "{listed}");
        // ...entered through its topic's stream (no sync state kept for
        // it, no fetch), which nobody reads: the driver drops it again.
        let idx = w.broker.find(&topic).expect("made for the update");
        assert_eq!(w.last(idx), 40);
        assert!(w.link.wire.fetched.is_empty());
        assert!(w.link.sync.is_empty());
        assert!(matches!(w.fx.as_slice(), [Effect::DropOneOff(i)] if *i == idx));
    }
}
