//! The Redis bus inside the reactor (`--redis`, issue 12): the two Redis
//! connections ([`client`], driven by the [`machine`]), and the glue that
//! ties them to the broker: publishes whose replies wait for Redis,
//! announcements appended to every node's rings, the predecessor check
//! that finds holes, history fetches that fill them (or mark the loss so
//! subscribers get `gap`), and subscribes that wait for history.
//!
//! Owns the per-stream sync state, the deferred replies and the waiting
//! subscribers. It must not block (every Redis call is nonblocking and
//! bounded by the command timeout), invent an id (every id comes from
//! Redis), or hold unbounded state: buffered announcements per stream,
//! requests in flight and waiting subscribers are all capped.
//!
//! Per stream this node holds, one of: unknown (no entry: never loaded
//! from Redis), `Live` (continuous: the next announcement's predecessor
//! must be the stream's last id), `Fetching` (a fetch is in flight;
//! announcements are buffered and merged after the fetched entries).

pub(crate) mod client;
pub(crate) mod machine;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use mio::Token;
use slab::Slab;

use super::conn::State;
use super::publish::{Failure, Outcome, To};
use super::Reactor;
use crate::broker::{Resume, StreamIdx};
use crate::bus::{BusError, RedisUrl};
use crate::frame;
use crate::handler::{bus_frame, Publish, Reply, Subscribe};
use crate::id::EventId;
use crate::stats::RedisGauges;
pub(super) use client::Target;
use machine::{Bus, BusConfig, BusOutput, MAX_FETCH};

/// The command connection's token.
pub(super) const CMD: Token = Token(usize::MAX - 1_000);
/// The pub/sub connection's token.
pub(super) const SUB: Token = Token(usize::MAX - 1_001);
/// Announcements buffered per stream while its fetch runs.
const MAX_BUFFERED: usize = 10_000;
/// Subscribers waiting for history at once; more stream from what is local.
const MAX_WAITERS: usize = 10_000;

/// An announcement kept for a stream whose fetch is in flight.
struct Msg {
    id: EventId,
    prev: EventId,
    sse: std::rc::Rc<[u8]>,
    private: bool,
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
    conn: u32,
    names: Vec<Box<str>>,
    stream: Subscribe,
    failed: bool,
}

/// The bus and its glue; see the module doc.
pub(super) struct Link {
    bus: Bus,
    next_req: u64,
    reqs: HashMap<u64, Req>,
    replies: Slab<Pending>,
    by_conn: HashMap<u32, usize>,
    sync: HashMap<Box<str>, Sync>,
    waiters: Slab<Waiter>,
    /// Streams to catch up after a reconnect, started as room allows.
    catchup: Vec<Box<str>>,
    fetch_max: usize,
    max_in_flight: usize,
    fetches: u64,
    bus_gaps: u64,
    unavailable: u64,
    bad: u64,
}

impl Link {
    /// Starts connecting to `url`.
    pub(super) fn new(
        url: RedisUrl,
        target: Target,
        cfg: &crate::config::Config,
        registry: &mio::Registry,
        now_ms: u64,
    ) -> Link {
        let mut bc = BusConfig::new(url, target);
        bc.prefix = cfg.redis_prefix.clone();
        bc.history = cfg.history.max(1);
        bc.command_timeout = cfg.redis_timeout;
        let max_in_flight = bc.max_in_flight;
        Link {
            bus: Bus::new(bc, registry, CMD, SUB, now_ms),
            next_req: 1,
            reqs: HashMap::new(),
            replies: Slab::new(),
            by_conn: HashMap::new(),
            sync: HashMap::new(),
            waiters: Slab::new(),
            catchup: Vec::new(),
            fetch_max: cfg.history.clamp(1, MAX_FETCH),
            max_in_flight,
            fetches: 0,
            bus_gaps: 0,
            unavailable: 0,
            bad: 0,
        }
    }

    /// Whether the bus is up.
    pub(super) fn up(&self) -> bool {
        self.bus.status().connected
    }

    /// When the bus wants `on_timer` (ms since start).
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.bus.next_deadline()
    }

    /// Whether connection `key` waits for the bus (its input stays paused).
    pub(super) fn holds(&self, key: u32) -> bool {
        self.by_conn.contains_key(&key) || self.waiters.iter().any(|(_, w)| w.conn == key)
    }

    /// Connection `key` was freed: nothing may be sent to its slot later.
    pub(super) fn forget(&mut self, key: u32) {
        if let Some(slot) = self.by_conn.remove(&key) {
            if let Some(p) = self.replies.get_mut(slot) {
                p.who = To::Nobody;
            }
        }
        self.waiters.retain(|_, w| w.conn != key);
    }

    /// Stats.
    pub(super) fn gauges(&self) -> RedisGauges {
        let s = self.bus.status();
        RedisGauges {
            connected: s.connected,
            reconnects: s.reconnects,
            in_flight: s.in_flight,
            latency_avg_us: s.avg_latency_us,
            latency_last_us: s.last_latency_us,
            received: s.messages,
            published: s.publishes,
            fetches: self.fetches,
            bus_gaps: self.bus_gaps,
            errors: s.errors + self.bad,
            unavailable: self.unavailable,
            last_error: s.last_error,
        }
    }

    fn req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }
}

fn unavailable(e: &BusError) -> Failure {
    let (status, msg) = match e {
        BusError::Invalid(m) => (400, format!("cannot publish: {m}")),
        BusError::TooLarge { .. } => (413, format!("cannot publish: {e}")),
        _ => (503, "redis unavailable".into()),
    };
    Failure {
        status,
        msg,
        too_large: status == 413,
        reason: None,
    }
}

impl Reactor {
    /// Readiness of a bus socket; `false` when the token is not the bus's.
    pub(super) fn bus_event(&mut self, token: Token) -> bool {
        if token != CMD && token != SUB {
            return false;
        }
        let now = self.clock.now_ms;
        if let Some(l) = self.bus.as_mut() {
            l.bus.on_event(self.poll.registry(), token, now);
        }
        self.bus_drain();
        true
    }

    /// The bus's deadlines (timeouts, reconnects, pings).
    pub(super) fn bus_timer(&mut self) {
        let now = self.clock.now_ms;
        let Some(l) = self.bus.as_mut() else { return };
        if l.bus.next_deadline().is_some_and(|d| d <= now) {
            l.bus.on_timer(self.poll.registry(), now);
        }
        self.bus_drain();
    }

    /// Sends the publishes gathered this loop turn to Redis together
    /// (one script call per batch), and answers any that failed at once.
    pub(super) fn bus_send(&mut self) {
        let now = self.clock.now_ms;
        if self.bus.as_mut().is_some_and(|l| l.bus.send_batch(now)) {
            self.bus_drain();
        }
    }

    /// Whether connection `key` waits for the bus.
    pub(super) fn bus_holds(&self, key: u32) -> bool {
        self.bus.as_ref().is_some_and(|l| l.holds(key))
    }

    /// Carries out every output the bus has queued.
    fn bus_drain(&mut self) {
        while let Some(out) = self.bus.as_mut().and_then(|l| l.bus.poll()) {
            match out {
                BusOutput::Published { req, id } => self.on_published(req, Ok(EventId::new(id))),
                BusOutput::Failed { req, error } => {
                    match self.bus.as_mut().and_then(|l| l.reqs.remove(&req)) {
                        Some(Req::Publish { slot, index }) => {
                            self.publish_done(slot, index, Err(error))
                        }
                        Some(Req::Fetch { stream }) => self.fetch_failed(&stream, req, &error),
                        None => {}
                    }
                }
                BusOutput::Message {
                    id,
                    streams,
                    payload,
                } => self.on_message(id, &streams, &payload),
                BusOutput::Fetched {
                    req,
                    entries,
                    first_retained,
                    more,
                } => self.on_fetched(req, entries, first_retained, more),
                BusOutput::Up => self.on_up(),
                BusOutput::Down => {}
            }
        }
        self.continue_catchup();
        self.release_waiters();
    }

    fn on_published(&mut self, req: u64, r: Result<EventId, BusError>) {
        if let Some(Req::Publish { slot, index }) =
            self.bus.as_mut().and_then(|l| l.reqs.remove(&req))
        {
            self.publish_done(slot, index, r);
        }
    }

    /// A publish decision through the bus (`publish.rs` decides that it
    /// goes here); answered once Redis gave every id or refused one.
    pub(super) fn bus_publish(
        &mut self,
        who: To,
        targets: Vec<StreamIdx>,
        made: Vec<StreamIdx>,
        p: Publish,
    ) {
        let now = self.clock.now_ms;
        let floor = self.broker.ids().last();
        let names: Vec<String> = targets
            .iter()
            .filter_map(|&t| self.broker.get(t))
            .map(|s| s.name.to_string())
            .collect();
        let Some(l) = self.bus.as_mut() else { return };
        let conn = match who {
            To::Conn(k) => Some(k),
            _ => None,
        };
        let payloads: Vec<Vec<u8>> = p.events.iter().map(|b| b.payload(p.private)).collect();
        let n = payloads.len();
        let slot = l.replies.insert(Pending {
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
            crate::bus::script::Retain::Announce
        } else {
            crate::bus::script::Retain::History
        };
        for (index, payload) in payloads.iter().enumerate() {
            let req = l.req();
            match l
                .bus
                .publish_as(req, &refs, payload, floor.get(), now, retain)
            {
                Ok(()) => {
                    l.reqs.insert(req, Req::Publish { slot, index });
                    if let Some(p) = l.replies.get_mut(slot) {
                        p.left += 1;
                    }
                }
                Err(e) => {
                    if let Some(p) = l.replies.get_mut(slot) {
                        p.error = Some(e);
                    }
                    break;
                }
            }
        }
        let left = l.replies.get(slot).map_or(0, |p| p.left);
        if left == 0 {
            self.finish_publish(slot);
        } else if let Some(k) = conn {
            l.by_conn.insert(k, slot);
            self.pause(k);
        }
    }

    fn pause(&mut self, key: u32) {
        if let Some(c) = self.conns.get_mut(key as usize) {
            if let State::Reading { paused, .. } = &mut c.state {
                *paused = true;
            }
        }
    }

    fn unpause(&mut self, key: u32) {
        if let Some(c) = self.conns.get_mut(key as usize) {
            if let State::Reading { paused, .. } = &mut c.state {
                if std::mem::replace(paused, false) {
                    self.resume_read.push(key);
                }
            }
        }
    }

    fn publish_done(&mut self, slot: usize, index: usize, r: Result<EventId, BusError>) {
        let Some(p) = self.bus.as_mut().and_then(|l| l.replies.get_mut(slot)) else {
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
            self.finish_publish(slot);
        }
    }

    /// Every publish of a deferred reply is answered: settle it like a
    /// local one (`publish.rs` renders the reply).
    fn finish_publish(&mut self, slot: usize) {
        let Some(l) = self.bus.as_mut() else { return };
        let Some(p) = l.replies.try_remove(slot) else {
            return;
        };
        let conn = match p.who {
            To::Conn(k) => {
                l.by_conn.remove(&k);
                Some(k)
            }
            _ => None,
        };
        if p.error.is_some() {
            l.unavailable += 1;
        }
        let o = Outcome {
            ids: p.ids.iter().map_while(|x| *x).collect(),
            audience: self.broker.audience(&p.targets),
            failure: p.error.as_ref().map(unavailable),
            pressure: false,
        };
        self.settle(p.who, p.reply, &p.made, o);
        if let Some(k) = conn {
            self.unpause(k);
        }
    }

    /// Appends an announcement to the streams this node holds, or buffers
    /// it (fetch in flight), or starts a fetch (a predecessor it lacks).
    fn on_message(&mut self, id: u64, streams: &[(String, u64)], payload: &[u8]) {
        // The bus speaks numbers: ids from here on.
        let id = EventId::new(id);
        let Some((sse, private)) = bus_frame(id, payload) else {
            log::warn!("redis bus: ignoring an announcement with a malformed payload (id {id})");
            if let Some(l) = self.bus.as_mut() {
                l.bad += 1;
            }
            return;
        };
        // Every node lists every node's subscribers, whichever streams it
        // holds, and its watchers get the update (`--mercure-subscriptions`).
        let names = streams.iter().map(|(n, _)| n.as_str());
        if let (Some(topic), [_]) = (self.presence.heard(names, &sse), streams) {
            return self.presence_entered(&topic, id, &sse, private);
        }
        let sse: std::rc::Rc<[u8]> = sse.into();
        let mut now_targets = Vec::new();
        let mut fetch = Vec::new();
        // Streams that take it once their history is in: their selector
        // streams take it now, in announcement order.
        let mut later = Vec::new();
        let Some(l) = self.bus.as_mut() else { return };
        for (name, prev) in streams {
            let prev = EventId::new(*prev);
            // Not held here: loaded when someone asks, or now when a
            // selector stream here wants its events.
            let Some(idx) = self
                .broker
                .find(name)
                .or_else(|| self.broker.hold_for_selectors(name))
            else {
                continue;
            };
            let last = self.broker.get(idx).map_or(EventId::NONE, |s| s.last_id);
            match l.sync.get_mut(name.as_str()) {
                None if prev == last => {
                    l.sync
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
                    if buffered.len() < MAX_BUFFERED {
                        buffered.push(Msg {
                            id,
                            prev,
                            sse: sse.clone(),
                            private,
                        });
                    } else {
                        *overflow = (*overflow).max(id);
                    }
                }
            }
        }
        if !later.is_empty() {
            self.append_selectors_bus(&later, id, &sse, private);
        }
        for (name, was_live, prev) in fetch {
            log::debug!("stream {name:?}: predecessor {prev} not held, fetching");
            let msg = Msg {
                id,
                prev,
                sse: sse.clone(),
                private,
            };
            self.start_fetch(&name, was_live, vec![msg]);
        }
        if !now_targets.is_empty() {
            self.append_bus(&now_targets, id, &sse, private);
        }
    }

    /// A subscription update: nobody resumes one from Redis, so it skips
    /// the sync rules and enters this node's selector streams through its
    /// topic's stream, made for it (in the pool of addresses unknown) and
    /// dropped again unless someone reads that very topic.
    fn presence_entered(&mut self, topic: &str, id: EventId, sse: &[u8], private: bool) {
        let by = crate::broker::Create::Subscriber(0);
        let idx = match self.broker.find(topic) {
            Some(i) => i,
            None => match self.broker.resolve_topics(&[topic], by) {
                Ok(v) => match v.first() {
                    Some(&i) => i,
                    None => return,
                },
                Err((_, e)) => {
                    return log::debug!("subscription update {id} not kept: {}", e.message())
                }
            },
        };
        self.append_bus(&[idx], id, sse, private);
        if self.broker.subscribers(idx).is_empty() {
            if let Some(l) = self.bus.as_mut() {
                l.sync.remove(topic);
            }
            self.drop_one_off(idx);
        }
    }

    fn append_bus(&mut self, targets: &[StreamIdx], id: EventId, sse: &[u8], private: bool) {
        match self.broker.append_as(targets, id, sse, private) {
            Ok(p) => {
                super::publish::entered(
                    &mut self.broker,
                    &mut self.apps,
                    targets,
                    id,
                    sse,
                    private,
                );
                if p.pressure {
                    self.flush_dirty(usize::MAX);
                }
            }
            Err(e) => log::warn!("bus event {id} not kept: {}", e.message()),
        }
    }

    /// [`Reactor::append_bus`] for the selector streams `targets` feed
    /// only: `targets` take the event once their history is loaded.
    fn append_selectors_bus(
        &mut self,
        targets: &[StreamIdx],
        id: EventId,
        sse: &[u8],
        private: bool,
    ) {
        let (took, pressure) = self.broker.append_selectors(targets, id, sse, private);
        if took {
            super::publish::entered(&mut self.broker, &mut self.apps, targets, id, sse, private);
        }
        if pressure {
            self.flush_dirty(usize::MAX);
        }
    }

    /// Starts a fetch of `name` after its last local id.
    fn start_fetch(&mut self, name: &str, was_live: bool, buffered: Vec<Msg>) {
        let now = self.clock.now_ms;
        let after = self
            .broker
            .find(name)
            .and_then(|i| self.broker.get(i))
            .map_or(EventId::NONE, |s| s.last_id);
        let Some(l) = self.bus.as_mut() else { return };
        let req = l.req();
        let max = l.fetch_max;
        l.sync.insert(
            name.into(),
            Sync::Fetching {
                req,
                buffered,
                was_live,
                overflow: EventId::NONE,
            },
        );
        match l.bus.fetch(req, name, after.get(), max, now) {
            Ok(()) => {
                l.fetches += 1;
                l.reqs.insert(
                    req,
                    Req::Fetch {
                        stream: name.into(),
                    },
                );
            }
            Err(e) => self.fetch_failed(name, req, &e),
        }
    }

    /// A fetch failed: what was buffered goes in after marking the hole
    /// before it (unless the bus is down: its catch-up refetches it);
    /// subscribers waiting for it stream from what is local.
    fn fetch_failed(&mut self, name: &str, req: u64, e: &BusError) {
        let Some(l) = self.bus.as_mut() else { return };
        if !matches!(l.sync.get(name), Some(Sync::Fetching { req: r, .. }) if *r == req) {
            return;
        }
        let Some(Sync::Fetching {
            buffered,
            was_live,
            overflow,
            ..
        }) = l.sync.remove(name)
        else {
            return;
        };
        log::debug!("fetch of stream {name:?} failed: {e}");
        for (_, w) in l.waiters.iter_mut() {
            if w.names.iter().any(|n| &**n == name) {
                w.failed = true;
            }
        }
        if buffered.is_empty() && overflow == EventId::NONE {
            if was_live {
                l.sync.insert(name.into(), Sync::Live { reset: false });
            }
            return;
        }
        l.sync.insert(name.into(), Sync::Live { reset: false });
        if !l.bus.status().connected {
            // Not up (yet, or any more): the coming `Up` catches up every
            // live stream from Redis, which holds what was buffered (each
            // announcement follows its XADD). A hole marked now would be
            // a gap where nothing is lost (an announcement can arrive
            // on the pub/sub connection before the command one is ready).
            return;
        }
        if let Some(idx) = self.broker.find(name) {
            self.merge_buffered(idx, buffered, overflow, false);
        }
    }

    /// Appends buffered announcements in id order, marking any hole.
    fn merge_buffered(
        &mut self,
        idx: StreamIdx,
        mut buffered: Vec<Msg>,
        overflow: EventId,
        reset: bool,
    ) {
        buffered.sort_by_key(|m| m.id);
        let mut reset = reset;
        for m in buffered {
            let last = self.broker.get(idx).map_or(EventId::NONE, |s| s.last_id);
            if m.id <= last {
                continue;
            }
            if m.prev != last && !reset {
                self.hole(idx, last, m.prev, m.id);
            }
            reset = false;
            self.append_bus(&[idx], m.id, &m.sse, m.private);
        }
        if overflow > EventId::NONE {
            let top = self
                .broker
                .get(idx)
                .map_or(EventId::NONE, |s| s.last_id)
                .max(overflow);
            self.lost(idx, top);
        }
    }

    /// The event after `last` names `prev` as its predecessor: the events
    /// between are not here and Redis no longer has them.
    fn hole(&mut self, idx: StreamIdx, last: EventId, prev: EventId, id: EventId) {
        if last == EventId::NONE && prev == EventId::NONE {
            return;
        }
        self.broker.observe(prev);
        // Events up to `prev` are missing; if Redis forgot `last` (it
        // restarted), anything before `id` may be.
        let upto = if prev > last { prev } else { id.pred() };
        if last == EventId::NONE {
            // Nothing held here yet: only resumes from before `prev` lack
            // history, which is trimmed history, not a bus loss.
            self.broker.mark_lost(idx, upto);
        } else {
            self.lost(idx, upto);
        }
    }

    fn lost(&mut self, idx: StreamIdx, upto: EventId) {
        if self.broker.mark_lost(idx, upto) {
            if let Some(l) = self.bus.as_mut() {
                l.bus_gaps += 1;
            }
            let name = self.broker.get(idx).map(|s| s.name.to_string());
            log::warn!("stream {name:?}: events up to {upto} lost on the bus; subscribers get gap");
        }
    }

    fn on_fetched(
        &mut self,
        req: u64,
        entries: Vec<(u64, u64, Vec<u8>)>,
        first_retained: Option<u64>,
        more: bool,
    ) {
        // The bus speaks numbers: ids from here on.
        let entries = entries
            .into_iter()
            .map(|(id, prev, p)| (EventId::new(id), EventId::new(prev), p));
        let entries: Vec<(EventId, EventId, Vec<u8>)> = entries.collect();
        let first_retained = first_retained.map(EventId::new);
        let Some(l) = self.bus.as_mut() else { return };
        let Some(Req::Fetch { stream: name }) = l.reqs.remove(&req) else {
            return;
        };
        let full = more || entries.len() >= l.fetch_max;
        // The next page starts after this one even if an entry was unusable.
        let page_end = entries.last().map_or(EventId::NONE, |e| e.0);
        let Some(Sync::Fetching { req: r, .. }) = l.sync.get(&name) else {
            return;
        };
        if *r != req {
            return;
        }
        let Some(idx) = self.broker.find(&name) else {
            l.sync.remove(&name);
            return;
        };
        let held = self.broker.get(idx).map_or(EventId::NONE, |s| s.last_id);
        for (id, prev, payload) in &entries {
            let last = self.broker.get(idx).map_or(EventId::NONE, |s| s.last_id);
            if *id <= last {
                continue;
            }
            let Some((sse, private)) = bus_frame(*id, payload) else {
                if let Some(l) = self.bus.as_mut() {
                    l.bad += 1;
                }
                continue;
            };
            if *prev != last {
                self.hole(idx, last, *prev, *id);
            }
            self.broker.observe(*prev);
            self.append_bus(&[idx], *id, &sse, private);
        }
        if full {
            // More than one page: keep buffering, fetch the next.
            let now = self.clock.now_ms;
            let after = self
                .broker
                .get(idx)
                .map_or(EventId::NONE, |s| s.last_id)
                .max(page_end);
            let Some(l) = self.bus.as_mut() else { return };
            let req2 = l.req();
            let max = l.fetch_max;
            if let Some(Sync::Fetching { req: r, .. }) = l.sync.get_mut(&name) {
                *r = req2;
            }
            match l.bus.fetch(req2, &name, after.get(), max, now) {
                Ok(()) => {
                    l.fetches += 1;
                    l.reqs.insert(req2, Req::Fetch { stream: name });
                }
                Err(e) => self.fetch_failed(&name, req2, &e),
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
            let top = self.broker.ids().last().succ();
            self.lost(idx, top);
            reset = true;
        }
        let Some(l) = self.bus.as_mut() else { return };
        let Some(Sync::Fetching {
            buffered, overflow, ..
        }) = l.sync.insert(name.clone(), Sync::Live { reset: false })
        else {
            return;
        };
        self.merge_buffered(idx, buffered, overflow, reset);
        if reset {
            // Nothing came after: the next announcement is taken as is.
            let last = self.broker.get(idx).map_or(EventId::NONE, |s| s.last_id);
            if last == held {
                if let Some(l) = self.bus.as_mut() {
                    l.sync.insert(name, Sync::Live { reset: true });
                }
            }
        }
    }

    /// Connected again: every stream held here may have missed events.
    fn on_up(&mut self) {
        let Some(l) = self.bus.as_mut() else { return };
        let mut names: Vec<Box<str>> = l
            .sync
            .iter()
            .filter(|(_, s)| matches!(s, Sync::Live { .. }))
            .map(|(n, _)| n.clone())
            .collect();
        names.retain(|n| !l.catchup.contains(n));
        l.catchup.extend(names);
    }

    /// Starts queued catch-up fetches while half the in-flight budget is free.
    fn continue_catchup(&mut self) {
        loop {
            let Some(l) = self.bus.as_mut() else { return };
            if !l.bus.status().connected || l.bus.status().in_flight * 2 >= l.max_in_flight {
                return;
            }
            let Some(name) = l.catchup.pop() else { return };
            if matches!(l.sync.get(&name), Some(Sync::Live { .. })) {
                self.start_fetch(&name, true, Vec::new());
            }
        }
    }

    /// A subscription reading `targets`: start now when the history here
    /// suffices, else wait for it from Redis.
    pub(super) fn bus_stream(&mut self, key: u32, targets: &[StreamIdx], bs: Subscribe) {
        let last_seen = self.broker.ids().last();
        let names: Vec<Box<str>> = targets
            .iter()
            .filter_map(|&t| self.broker.get(t))
            .map(|s| s.name.clone())
            .collect();
        // Selector streams are this node's own (no other node has them to
        // fetch): a resume reads them as they are here.
        let synced: Vec<Box<str>> = targets
            .iter()
            .filter(|&&t| !self.broker.is_selector(t))
            .filter_map(|&t| self.broker.get(t))
            .map(|s| s.name.clone())
            .collect();
        let Some(l) = self.bus.as_mut() else { return };
        let need: Vec<(Box<str>, bool)> = match bs.resume {
            Resume::Live => Vec::new(),
            ref r => synced
                .iter()
                .filter_map(|n| match l.sync.get(n) {
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
        if need.is_empty() || l.waiters.len() >= MAX_WAITERS {
            let failed = !need.is_empty();
            return self.begin_bus_stream(key, bs, &names, failed);
        }
        l.waiters.insert(Waiter {
            conn: key,
            names,
            stream: bs,
            failed: false,
        });
        self.pause(key);
        for (n, was_live) in need {
            let fetching = matches!(
                self.bus.as_ref().and_then(|l| l.sync.get(&n)),
                Some(Sync::Fetching { .. })
            );
            if !fetching {
                let buffered = Vec::new();
                self.start_fetch(&n, was_live, buffered);
            }
        }
        self.release_waiters();
    }

    /// Starts the streams of subscribers whose history has arrived (or
    /// could not).
    fn release_waiters(&mut self) {
        let Some(l) = self.bus.as_mut() else { return };
        let ready: Vec<usize> = l
            .waiters
            .iter()
            .filter(|(_, w)| {
                !w.names
                    .iter()
                    .any(|n| matches!(l.sync.get(n), Some(Sync::Fetching { .. })))
            })
            .map(|(i, _)| i)
            .collect();
        for i in ready {
            let Some(l) = self.bus.as_mut() else { return };
            let Some(w) = l.waiters.try_remove(i) else {
                continue;
            };
            self.unpause_quiet(w.conn);
            self.begin_bus_stream(w.conn, w.stream, &w.names, w.failed);
        }
    }

    /// Clears `paused` without rereading input (the connection becomes a
    /// stream; later input is discarded anyway).
    fn unpause_quiet(&mut self, key: u32) {
        if let Some(c) = self.conns.get_mut(key as usize) {
            if let State::Reading { paused, .. } = &mut c.state {
                *paused = false;
            }
        }
    }

    fn begin_bus_stream(&mut self, key: u32, bs: Subscribe, names: &[Box<str>], failed: bool) {
        let targets: Vec<StreamIdx> = names.iter().filter_map(|n| self.broker.find(n)).collect();
        let c = self
            .broker
            .subscribe_as(key, &targets, &bs.sees_private, &bs.resume);
        let mut prelude = bs.prelude;
        match (&c.gap, failed, &bs.resume) {
            (Some(g), _, _) => prelude.extend_from_slice(g),
            (None, true, Resume::After(_, raw) | Resume::Unparsable(raw)) => {
                // History could not be loaded: what is local may miss some.
                let refs: Vec<&str> = targets
                    .iter()
                    .filter_map(|&t| self.broker.get(t))
                    .map(|s| s.shown())
                    .collect();
                prelude.extend_from_slice(&frame::gap(raw, &refs));
                self.broker.gaps += 1;
            }
            _ => {}
        }
        self.start_stream(key, &bs.head, bs.chunked, &prelude, c.cursors, bs.until);
    }
}
