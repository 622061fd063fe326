//! The broker: streams, the id clock, history rings, subscriber cursors,
//! resume planning, the merge across a subscriber's streams, and the gap
//! decisions. Everything an event goes through between "published" and
//! "owed to these connections".
//!
//! It does no I/O and reads no clock: no sockets, no `mio`, no `libc`, no
//! clock reads; time comes in as an argument (a test checks this). It
//! knows connections only as opaque keys, and a subscriber's cursors are a
//! value the caller stores (in its connection struct, where they cost no
//! extra allocation) and hands back.
//!
//! Positions are ids everywhere: a cursor holds the id of the last event
//! its subscriber was given; resume planning produces such ids; the merge
//! yields frames with ids above them.

mod merge;
mod ring;
#[cfg(test)]
mod tests;
mod topics;

use std::collections::HashMap;

use slab::Slab;

use crate::frame;
pub use merge::Merge;
pub use ring::{Frame, Limits, Stream};
#[cfg(test)]
use topics::MAX_ALIASES;
pub use topics::{valid_topic, MAX_SELECTOR_STREAMS, MAX_TOPIC_BYTES};

/// Where a published event comes from, so sinks do not echo an event back
/// to where it came from (a bus announcement is not re-announced; a
/// journal replay is not re-journaled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Published on this node (HTTP, the library, an app).
    Local,
    /// Arrived from another node through the bus.
    Bus,
    /// Read back from the journal at start-up.
    Replay,
}

/// An event on its way into the rings, as sinks see it.
pub struct Record<'a> {
    /// Its id.
    pub id: u64,
    /// The names of the streams it goes to.
    pub streams: &'a [&'a str],
    /// Its encoded SSE bytes (without chunk framing).
    pub frame: &'a [u8],
}

/// Why a sink refused an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkError(pub String);

/// A consumer of every event before it enters the rings (the journal, the
/// bus). A sink that fails vetoes the event: it is not delivered, and the
/// publisher gets the error.
pub trait Sink {
    /// An event is about to be appended.
    fn append(&mut self, origin: Origin, rec: &Record<'_>) -> Result<(), SinkError>;
    /// A stream was deleted; `floor` is the highest id it ever held.
    fn delete(&mut self, origin: Origin, stream: &str, floor: u64);
}

/// The server-wide id counter: `id = max(previous + 1, unix time in µs)`.
#[derive(Debug, Clone)]
pub struct IdClock {
    first: u64,
    last: u64,
}

impl IdClock {
    /// A clock whose first id is `now_us` (the unix time in µs at start).
    pub fn new(now_us: u64) -> Self {
        IdClock {
            first: now_us,
            last: now_us.saturating_sub(1),
        }
    }
    /// Assigns the next id.
    pub fn next(&mut self, now_us: u64) -> u64 {
        self.last = (self.last + 1).max(now_us);
        self.last
    }
    /// Moves the clock past an id assigned elsewhere (a bus, a journal).
    pub fn observe(&mut self, id: u64) {
        self.last = self.last.max(id);
        self.first = self.first.min(id);
    }
    /// The lowest id this clock can have assigned or seen.
    pub fn first(&self) -> u64 {
        self.first
    }
    /// The last id assigned (or `first - 1` before any).
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// A subscriber's place in one stream: the stream, its slot in that
/// stream's subscriber slab, whether it may see private frames there, and
/// the id of the last event it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Index of the stream.
    pub stream: u32,
    /// Slot of this connection in that stream's subscriber slab, with
    /// [`Cursor::SEES_PRIVATE`] as its high bit: the grant lives in bits
    /// the slot never uses, so a cursor stays 16 bytes.
    pub slot: u32,
    /// Id of the last event handed to this subscriber.
    pub last_id: u64,
}

impl Cursor {
    /// The bit of `slot` that lets this cursor see private frames.
    pub const SEES_PRIVATE: u32 = 1 << 31;
    /// The slot in the stream's subscriber slab.
    pub fn slot(&self) -> usize {
        (self.slot & !Self::SEES_PRIVATE) as usize
    }
    /// Whether private frames of this stream reach this subscriber.
    pub fn sees_private(&self) -> bool {
        self.slot & Self::SEES_PRIVATE != 0
    }
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
    fn from_vec(v: Vec<Cursor>) -> Cursors {
        match v.as_slice() {
            [one] => Cursors::One(*one),
            _ => Cursors::Many(v.into_boxed_slice()),
        }
    }
    /// All cursors as a slice.
    pub fn as_slice(&self) -> &[Cursor] {
        match self {
            Cursors::One(c) => std::slice::from_ref(c),
            Cursors::Many(v) => v,
        }
    }
    fn as_mut_slice(&mut self) -> &mut [Cursor] {
        match self {
            Cursors::One(c) => std::slice::from_mut(c),
            Cursors::Many(v) => v,
        }
    }
    /// Whether any cursor reads `stream`.
    pub fn reads(&self, stream: u32) -> bool {
        self.as_slice().iter().any(|c| c.stream == stream)
    }
    /// Records that every frame up to `id` was handed over.
    pub fn advance(&mut self, id: u64) {
        for c in self.as_mut_slice() {
            c.last_id = c.last_id.max(id);
        }
    }
}

/// Where a new subscriber starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// No Last-Event-ID: live events only.
    Live,
    /// Resume after this id (the raw text is kept for the `gap` event).
    After(u64, String),
    /// A Last-Event-ID that is not an id this server can place.
    Unparsable(String),
    /// Everything retained, without a `gap` (Mercure's `earliest`).
    Earliest,
}

impl Resume {
    /// Interprets a Last-Event-ID value.
    pub fn parse(raw: Option<&str>) -> Resume {
        match raw {
            None => Resume::Live,
            Some(s) => match s.trim().parse::<u64>() {
                Ok(n) => Resume::After(n, s.trim().to_string()),
                Err(_) => Resume::Unparsable(s.trim().to_string()),
            },
        }
    }
    fn raw(&self) -> &str {
        match self {
            Resume::Live => "",
            Resume::Earliest => "earliest",
            Resume::After(_, r) | Resume::Unparsable(r) => r,
        }
    }
}

/// A new subscriber: its cursors (for the caller to keep) and the `gap`
/// frame it must be sent first, if any.
#[derive(Debug)]
pub struct Catchup {
    /// Positions in each stream.
    pub cursors: Cursors,
    /// The SSE bytes of a `gap` event, when events after the client's
    /// cursor may be missing.
    pub gap: Option<Vec<u8>>,
}

/// A published event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Its id.
    pub id: u64,
    /// Distinct connections reading any of its streams.
    pub audience: usize,
    /// So much was appended since the last fan-out that it must run now,
    /// before the rings overtake even fast readers.
    pub pressure: bool,
}

/// Why a stream could not be had or an event not published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerError {
    /// The name is not `[A-Za-z0-9._:@/-]{1,128}`.
    BadName,
    /// It does not exist and auto-creation is off.
    NotFound,
    /// `--max-streams` exist already.
    TooMany,
    /// The name belongs to an internal stream.
    Reserved,
    /// The encoded event alone is larger than a stream's history may hold.
    TooLarge(usize),
    /// A sink (journal, bus) refused the event.
    Sink(String),
}

impl BrokerError {
    /// A message for the client.
    pub fn message(&self) -> String {
        match self {
            BrokerError::BadName => {
                "stream names are 1..=128 bytes of letters, digits and . _ : @ / -".into()
            }
            BrokerError::NotFound => "no such stream (auto-creation is off)".into(),
            BrokerError::TooMany => "too many streams exist (--max-streams)".into(),
            BrokerError::Reserved => "that stream name is reserved".into(),
            BrokerError::TooLarge(n) => format!(
                "the encoded event is {n} bytes, more than a stream's history may hold (--history-bytes)"
            ),
            BrokerError::Sink(m) => m.clone(),
        }
    }
    /// The HTTP status that goes with it.
    pub fn status(&self) -> u16 {
        match self {
            BrokerError::BadName | BrokerError::Reserved => 400,
            BrokerError::NotFound => 404,
            BrokerError::TooLarge(_) => 413,
            BrokerError::TooMany | BrokerError::Sink(_) => 503,
        }
    }
}

/// Whether `name` is a valid public stream name.
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'/' | b'-')
        })
}

/// Tombstones kept for deleted streams, so a recreated stream still knows
/// events were dropped; bounded so deleting names cannot grow memory.
const MAX_TOMBSTONES: usize = 4096;

/// Every stream, the id clock, and the sinks.
pub struct Broker {
    streams: Slab<Stream>,
    by_name: HashMap<Box<str>, u32>,
    tombstones: HashMap<Box<str>, u64>,
    dirty: Vec<u32>,
    public: usize,
    ids: IdClock,
    limits: Limits,
    max_streams: usize,
    sinks: Vec<Box<dyn Sink>>,
    topics: topics::Topics,
    /// Events ever published.
    pub published: u64,
    /// `gap` events handed out.
    pub gaps: u64,
}

impl Broker {
    /// An empty broker whose id clock starts at `now_us`.
    pub fn new(now_us: u64, limits: Limits, max_streams: usize) -> Self {
        Broker {
            streams: Slab::new(),
            by_name: HashMap::new(),
            tombstones: HashMap::new(),
            dirty: Vec::new(),
            public: 0,
            ids: IdClock::new(now_us),
            limits,
            max_streams,
            sinks: Vec::new(),
            topics: topics::Topics::default(),
            published: 0,
            gaps: 0,
        }
    }

    /// Adds a sink: every later event passes through it first.
    pub fn add_sink(&mut self, s: Box<dyn Sink>) {
        self.sinks.push(s);
    }

    /// The id clock.
    pub fn ids(&self) -> &IdClock {
        &self.ids
    }

    /// The server-wide history bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Number of public streams (internal ones are not counted against
    /// `--max-streams`).
    pub fn len(&self) -> usize {
        self.public
    }

    /// Whether there are no streams at all.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Looks a stream up by name.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Looks a public stream up by name.
    pub fn find_public(&self, name: &str) -> Option<u32> {
        self.find(name)
            .filter(|&i| self.get(i).is_some_and(|s| !s.internal))
    }

    /// The stream at `idx`.
    pub fn get(&self, idx: u32) -> Option<&Stream> {
        self.streams.get(idx as usize)
    }

    /// Iterates every stream.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Stream)> {
        self.streams.iter().map(|(i, s)| (i as u32, s))
    }

    /// Checks public names and finds them, creating the missing ones when
    /// `create`. All or nothing: when one fails, none is created.
    /// A name outside the alphabet is accepted when a public stream of
    /// that name exists (a Mercure topic, see [`Broker::resolve_topics`]),
    /// so such streams can be read through `/events` too.
    pub fn resolve(
        &mut self,
        names: &[&str],
        create: bool,
    ) -> Result<Vec<u32>, (usize, BrokerError)> {
        self.resolve_by(names, create, valid_name)
    }

    /// [`Broker::resolve`] for Mercure topics: names are checked with
    /// [`valid_topic`] instead of the `/events` alphabet.
    pub fn resolve_topics(
        &mut self,
        names: &[&str],
        create: bool,
    ) -> Result<Vec<u32>, (usize, BrokerError)> {
        self.resolve_by(names, create, valid_topic)
    }

    fn resolve_by(
        &mut self,
        names: &[&str],
        create: bool,
        valid: fn(&str) -> bool,
    ) -> Result<Vec<u32>, (usize, BrokerError)> {
        let mut missing = 0;
        for (i, n) in names.iter().enumerate() {
            if !valid(n) && self.find_public(n).is_none() {
                return Err((i, BrokerError::BadName));
            }
            match self.find(n) {
                Some(idx) if self.get(idx).is_some_and(|s| s.internal) => {
                    return Err((i, BrokerError::Reserved))
                }
                Some(_) => {}
                None if !create => return Err((i, BrokerError::NotFound)),
                None => {
                    if !names[..i].contains(n) {
                        missing += 1;
                    }
                    if self.public + missing > self.max_streams {
                        return Err((i, BrokerError::TooMany));
                    }
                }
            }
        }
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let idx = match self.find(n) {
                Some(i) => i,
                None => self.insert(n, false, self.limits),
            };
            if !out.contains(&idx) {
                out.push(idx);
            }
        }
        Ok(out)
    }

    /// Finds or makes an internal stream (one the apps or the library own)
    /// whose history is bounded by `cap` as well as by the server-wide
    /// limits: apps make one stream per member or user, so the server-wide
    /// bounds multiplied by their number would be no bound at all.
    pub fn internal(&mut self, name: &str, cap: Option<Limits>) -> u32 {
        if let Some(i) = self.find(name) {
            return i;
        }
        let limits = match cap {
            Some(c) => Limits {
                history: self.limits.history.min(c.history),
                history_bytes: self.limits.history_bytes.min(c.history_bytes),
            },
            None => self.limits,
        };
        self.insert(name, true, limits)
    }

    fn insert(&mut self, name: &str, internal: bool, limits: Limits) -> u32 {
        if !internal {
            self.public += 1;
        }
        let lost = self.tombstones.remove(name).unwrap_or(0);
        let idx = self
            .streams
            .insert(Stream::new(name, lost, internal, limits)) as u32;
        self.by_name.insert(name.into(), idx);
        idx
    }

    /// Publishes `ev` to `targets`, encoding it once.
    pub fn publish(
        &mut self,
        origin: Origin,
        targets: &[u32],
        ev: &crate::event::Event,
        now_us: u64,
    ) -> Result<Published, BrokerError> {
        self.publish_with(origin, targets, now_us, |id| {
            frame::encode_numbered(id, ev.event.as_deref(), &ev.data, ev.retry)
        })
    }

    /// Publishes an event that `encode` spells given its id (apps that
    /// write their own `id:` line use this).
    pub fn publish_with(
        &mut self,
        origin: Origin,
        targets: &[u32],
        now_us: u64,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<Published, BrokerError> {
        self.publish_as(origin, targets, now_us, false, encode)
    }

    /// [`Broker::publish_with`] for an event that is `private` (reaches
    /// only cursors that may see private frames) or not.
    pub fn publish_as(
        &mut self,
        origin: Origin,
        targets: &[u32],
        now_us: u64,
        private: bool,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<Published, BrokerError> {
        let id = self.ids.next(now_us);
        let sse = encode(id);
        self.append_as(origin, targets, id, &sse, private)
    }

    /// Appends an event whose id was assigned elsewhere (a journal being
    /// replayed, a bus), or by [`Broker::publish_with`].
    pub fn append(
        &mut self,
        origin: Origin,
        targets: &[u32],
        id: u64,
        sse: &[u8],
    ) -> Result<Published, BrokerError> {
        self.append_as(origin, targets, id, sse, false)
    }

    /// [`Broker::append`] of a private (or public) event. The same shared
    /// frame also goes to every selector stream whose selector matches the
    /// name of one of the public `targets`.
    pub fn append_as(
        &mut self,
        origin: Origin,
        targets: &[u32],
        id: u64,
        sse: &[u8],
        private: bool,
    ) -> Result<Published, BrokerError> {
        let f = Frame::new(id, sse).with_private(private);
        let audience_of = targets;
        let fanned;
        let targets = match self.topics.fan_in(&self.streams, targets) {
            Some(all) => {
                fanned = all;
                &fanned[..]
            }
            None => targets,
        };
        for &t in targets {
            if let Some(s) = self.get(t) {
                if f.cost() > s.limits.history_bytes {
                    return Err(BrokerError::TooLarge(sse.len()));
                }
            }
        }
        if !self.sinks.is_empty() {
            // Selector streams are derived: sinks (a journal, a bus) see
            // only the streams the event was published to.
            let names: Vec<&str> = audience_of
                .iter()
                .filter_map(|&t| self.streams.get(t as usize))
                .map(|s| &*s.name)
                .collect();
            let rec = Record {
                id,
                streams: &names,
                frame: sse,
            };
            for s in self.sinks.iter_mut() {
                s.append(origin, &rec).map_err(|e| BrokerError::Sink(e.0))?;
            }
        }
        self.ids.observe(id);
        let mut pressure = false;
        for &t in targets {
            let Some(s) = self.streams.get_mut(t as usize) else {
                continue;
            };
            if s.last_id >= id {
                // Already holds it (a bus echo, a replay overlap).
                continue;
            }
            if !s.dirty {
                s.dirty = true;
                s.dirty_frames = 0;
                s.dirty_bytes = 0;
                self.dirty.push(t);
            }
            s.dirty_frames += 1;
            s.dirty_bytes += f.cost();
            s.push(f.clone());
            // Half the ring published since subscribers were last offered
            // frames: flush before the ring overtakes even fast readers.
            pressure |= s.dirty_frames >= (s.limits.history / 2).max(1)
                || s.dirty_bytes >= (s.limits.history_bytes / 2).max(1);
        }
        self.published += 1;
        Ok(Published {
            id,
            audience: self.audience(audience_of),
            pressure,
        })
    }

    /// Distinct connections reading any of `targets`.
    pub fn audience(&self, targets: &[u32]) -> usize {
        match targets {
            [] => 0,
            [t] => self.get(*t).map_or(0, |s| s.subs.len()),
            _ => {
                let mut keys: Vec<u32> = targets
                    .iter()
                    .filter_map(|&t| self.get(t))
                    .flat_map(|s| s.subs.iter().map(|(_, &k)| k))
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                keys.len()
            }
        }
    }

    /// Takes the streams published to since the last call.
    pub fn take_dirty(&mut self, into: &mut Vec<u32>) {
        for &i in &self.dirty {
            if let Some(s) = self.streams.get_mut(i as usize) {
                s.dirty = false;
            }
        }
        into.append(&mut self.dirty);
    }

    /// Where each of `targets` starts for a subscriber resuming with
    /// `resume`, and which of them need a `gap` first (§4 of the contract):
    /// an id outside what this clock has handed out, or an unparsable one,
    /// starts at the oldest retained event with a gap; an id whose
    /// successors were evicted gets a gap and continues at what is left.
    ///
    /// `sees_private[i]` (missing: `false`) says whether the subscriber may
    /// see private frames of `targets[i]`; a gap is owed only for frames it
    /// could have seen.
    pub fn plan(
        &self,
        targets: &[u32],
        sees_private: &[bool],
        resume: &Resume,
    ) -> (Vec<Cursor>, Vec<u32>) {
        let mut cursors = Vec::with_capacity(targets.len());
        let mut gap = Vec::new();
        for (i, &t) in targets.iter().enumerate() {
            let Some(s) = self.get(t) else { continue };
            let sees = sees_private.get(i).copied().unwrap_or(false);
            let (last_id, g) = match resume {
                Resume::Live => (s.last_id.max(self.ids.last()), false),
                Resume::Earliest => (s.floor(), false),
                Resume::After(x, _) if *x >= self.ids.first() && *x <= self.ids.last() => {
                    (s.floor().max(*x), s.lost_after(*x, sees))
                }
                Resume::After(..) | Resume::Unparsable(_) => (s.floor(), true),
            };
            cursors.push(Cursor {
                stream: t,
                slot: if sees { Cursor::SEES_PRIVATE } else { 0 },
                last_id,
            });
            if g {
                gap.push(t);
            }
        }
        (cursors, gap)
    }

    /// Subscribes connection `conn` to `targets` from `resume`.
    pub fn subscribe(&mut self, conn: u32, targets: &[u32], resume: &Resume) -> Catchup {
        self.subscribe_as(conn, targets, &[], resume)
    }

    /// [`Broker::subscribe`] with a may-see-private bit per target (see
    /// [`Broker::plan`]).
    pub fn subscribe_as(
        &mut self,
        conn: u32,
        targets: &[u32],
        sees_private: &[bool],
        resume: &Resume,
    ) -> Catchup {
        let (mut cursors, gap) = self.plan(targets, sees_private, resume);
        for c in cursors.iter_mut() {
            if let Some(s) = self.streams.get_mut(c.stream as usize) {
                c.slot = (s.subs.insert(conn) as u32) | (c.slot & Cursor::SEES_PRIVATE);
            }
        }
        let gap = (!gap.is_empty()).then(|| {
            self.gaps += 1;
            let names: Vec<&str> = gap
                .iter()
                .filter_map(|&i| self.get(i))
                .map(|s| &*s.name)
                .collect();
            frame::gap(resume.raw(), &names)
        });
        Catchup {
            cursors: Cursors::from_vec(cursors),
            gap,
        }
    }

    /// Removes connection `conn` from every stream its cursors name.
    pub fn unsubscribe(&mut self, conn: u32, cursors: &Cursors) {
        for c in cursors.as_slice() {
            if let Some(s) = self.streams.get_mut(c.stream as usize) {
                if s.subs.get(c.slot()) == Some(&conn) {
                    s.subs.remove(c.slot());
                }
            }
        }
    }

    /// The frames owed to a subscriber, in id order.
    pub fn merge<'a>(&'a self, cursors: &'a Cursors) -> Merge<'a> {
        Merge::new(&self.streams, cursors.as_slice())
    }

    /// The `gap` owed to a subscriber whose next events were evicted before
    /// it was sent them; moves its cursors to what is retained. Only events
    /// it could have seen count, and a cursor that may not see private
    /// frames is moved past those that follow it, so they neither cost a
    /// later merge nor ever surface as a gap.
    pub fn take_gap(&mut self, cursors: &mut Cursors) -> Option<Vec<u8>> {
        let mut names: Vec<&str> = Vec::new();
        let mut from: Option<u64> = None;
        for c in cursors.as_mut_slice() {
            if let Some(s) = self.streams.get(c.stream as usize) {
                let sees = c.sees_private();
                if s.lost_after(c.last_id, sees) {
                    from = Some(from.map_or(c.last_id, |f| f.min(c.last_id)));
                    names.push(&s.name);
                    c.last_id = s.floor();
                }
                c.last_id = s.skip_invisible(c.last_id, sees);
            }
        }
        let g = from.map(|f| frame::gap(&f.to_string(), &names));
        if g.is_some() {
            self.gaps += 1;
        }
        g
    }

    /// Bytes of retained history a subscriber has not been sent.
    pub fn lag(&self, cursors: &Cursors) -> u64 {
        cursors
            .as_slice()
            .iter()
            .filter_map(|c| {
                self.get(c.stream)
                    .map(|s| s.lag_bytes(c.last_id, c.sees_private()))
            })
            .sum()
    }

    /// The connection in slot `i` of a stream's subscribers: `None` past the
    /// end, `Some(None)` for a free slot.
    pub fn subscriber_at(&self, stream: u32, i: usize) -> Option<Option<u32>> {
        let s = self.get(stream)?;
        if i >= s.subs.capacity() {
            return None;
        }
        Some(s.subs.get(i).copied())
    }

    /// The connections reading a stream.
    pub fn subscribers(&self, stream: u32) -> Vec<u32> {
        self.get(stream)
            .map(|s| s.subs.iter().map(|(_, &k)| k).collect())
            .unwrap_or_default()
    }

    /// Deletes a stream, leaving a tombstone so a stream recreated under its
    /// name knows events were dropped; returns the connections that read it
    /// (the caller ends them, and must flush them first).
    pub fn delete(&mut self, origin: Origin, idx: u32) -> Vec<u32> {
        let Some(s) = self.streams.try_remove(idx as usize) else {
            return Vec::new();
        };
        self.by_name.remove(&s.name);
        self.topics.forget(idx);
        if !s.internal {
            self.public -= 1;
        }
        if self.tombstones.len() >= MAX_TOMBSTONES {
            self.tombstones.clear();
        }
        let floor = s.last_id.max(s.lost_upto());
        if floor > 0 {
            self.tombstones.insert(s.name.clone(), floor);
        }
        for sink in self.sinks.iter_mut() {
            sink.delete(origin, &s.name, floor);
        }
        self.dirty.retain(|&d| d != idx);
        s.subs.iter().map(|(_, &k)| k).collect()
    }

    /// Records a deletion that happened before this broker existed (a
    /// journal being replayed).
    pub fn restore_tombstone(&mut self, name: &str, floor: u64) {
        if self.tombstones.len() < MAX_TOMBSTONES {
            let t = self.tombstones.entry(name.into()).or_insert(0);
            *t = (*t).max(floor);
        }
        self.ids.observe(floor);
    }
}

impl Broker {
    /// The selector stream of `sel` (`*` or a URI template), made on first
    /// use: an internal stream that receives every later event published to
    /// a public stream whose name `sel` matches, so a selector subscription
    /// also sees streams created after it. A resume from before it was made
    /// gets a `gap`. At most [`MAX_SELECTOR_STREAMS`] exist; past that an
    /// unread one is dropped, or [`BrokerError::TooMany`] when all are read.
    pub fn selector_stream(&mut self, sel: &crate::auth::Selector) -> Result<u32, BrokerError> {
        if let Some(i) = self.topics.find(sel.as_str()) {
            return Ok(i);
        }
        if let Some(i) = self.find(sel.as_str()) {
            // A name taken by some other internal stream.
            let _ = i;
            return Err(BrokerError::Reserved);
        }
        if self.topics.len() >= MAX_SELECTOR_STREAMS {
            let unread = self
                .topics
                .streams()
                .find(|&i| self.get(i).is_some_and(|s| s.subs.is_empty()));
            match unread {
                Some(i) => {
                    self.delete(Origin::Local, i);
                }
                None => return Err(BrokerError::TooMany),
            }
        }
        let idx = self.insert(sel.as_str(), true, self.limits);
        let made_at = self.ids.last();
        if let Some(s) = self.streams.get_mut(idx as usize) {
            s.lost_before(made_at);
        }
        self.topics.add(sel.clone(), idx);
        Ok(idx)
    }

    /// Remembers that a publisher named event `id` `alias`, so a resume
    /// from `alias` finds it (the oldest aliases go past [`MAX_ALIASES`]).
    pub fn alias(&mut self, alias: &str, id: u64) {
        self.topics.alias(alias, id);
    }

    /// The id a publisher-supplied alias stands for, while remembered.
    pub fn alias_id(&self, alias: &str) -> Option<u64> {
        self.topics.alias_id(alias)
    }
}
