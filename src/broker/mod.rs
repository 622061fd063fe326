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

use std::collections::HashMap;

use slab::Slab;

use crate::frame;
pub use merge::Merge;
pub use ring::{Frame, Limits, Stream};

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
/// stream's subscriber slab, and the id of the last event it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Index of the stream.
    pub stream: u32,
    /// Slot of this connection in that stream's subscriber slab.
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
    /// A resume from an id below this gets `gap` whatever the stream's own
    /// history says: events up to it may be missing everywhere (a journal
    /// replay found damage, a missing segment, or compacted history).
    lost_below: u64,
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
            lost_below: 0,
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

    /// `--max-streams`.
    pub fn max_streams(&self) -> usize {
        self.max_streams
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
    pub fn resolve(
        &mut self,
        names: &[&str],
        create: bool,
    ) -> Result<Vec<u32>, (usize, BrokerError)> {
        let mut missing = 0;
        for (i, n) in names.iter().enumerate() {
            if !valid_name(n) {
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
        let id = self.ids.next(now_us);
        let sse = encode(id);
        self.append(origin, targets, id, &sse)
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
        let f = Frame::new(id, sse);
        for &t in targets {
            if let Some(s) = self.get(t) {
                if f.cost() > s.limits.history_bytes {
                    return Err(BrokerError::TooLarge(sse.len()));
                }
            }
        }
        if !self.sinks.is_empty() {
            let names: Vec<&str> = targets
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
            audience: self.audience(targets),
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
    pub fn plan(&self, targets: &[u32], resume: &Resume) -> (Vec<Cursor>, Vec<u32>) {
        let mut cursors = Vec::with_capacity(targets.len());
        let mut gap = Vec::new();
        for &t in targets {
            let Some(s) = self.get(t) else { continue };
            let (last_id, g) = match resume {
                Resume::Live => (s.last_id.max(self.ids.last()), false),
                Resume::After(x, _) if *x >= self.ids.first() && *x <= self.ids.last() => {
                    (s.floor().max(*x), s.lost_after(*x) || *x < self.lost_below)
                }
                Resume::After(..) | Resume::Unparsable(_) => (s.floor(), true),
            };
            cursors.push(Cursor {
                stream: t,
                slot: 0,
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
        let (mut cursors, gap) = self.plan(targets, resume);
        for c in cursors.iter_mut() {
            if let Some(s) = self.streams.get_mut(c.stream as usize) {
                c.slot = s.subs.insert(conn) as u32;
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
                if s.subs.get(c.slot as usize) == Some(&conn) {
                    s.subs.remove(c.slot as usize);
                }
            }
        }
    }

    /// The frames owed to a subscriber, in id order.
    pub fn merge<'a>(&'a self, cursors: &'a Cursors) -> Merge<'a> {
        Merge::new(&self.streams, cursors.as_slice())
    }

    /// The `gap` owed to a subscriber whose next events were evicted before
    /// it was sent them; moves its cursors to what is retained.
    pub fn take_gap(&mut self, cursors: &mut Cursors) -> Option<Vec<u8>> {
        let mut names: Vec<&str> = Vec::new();
        let mut from: Option<u64> = None;
        for c in cursors.as_mut_slice() {
            if let Some(s) = self.streams.get(c.stream as usize) {
                if s.lost_after(c.last_id) {
                    from = Some(from.map_or(c.last_id, |f| f.min(c.last_id)));
                    names.push(&s.name);
                    c.last_id = s.floor();
                }
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
            .filter_map(|c| self.get(c.stream).map(|s| s.lag_bytes(c.last_id)))
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

    /// Says that events with ids below `id` may be missing from every
    /// stream (what a journal replay could not restore), so a resume from
    /// below it gets `gap` instead of a silent hole.
    pub fn mark_lost_below(&mut self, id: u64) {
        self.lost_below = self.lost_below.max(id);
    }

    /// Moves the id clock past an id handed out before this broker existed.
    pub fn observe_id(&mut self, id: u64) {
        self.ids.observe(id);
    }

    /// Whether stream `name` still holds event `id` in its history (what a
    /// journal must keep on disk).
    pub fn retains(&self, name: &str, id: u64) -> bool {
        self.find(name)
            .and_then(|i| self.get(i))
            .and_then(|s| s.first_id())
            .is_some_and(|first| id >= first)
    }

    /// Finds or recreates a stream read back from a journal: a public name
    /// comes back whatever `--no-auto-streams` and `--max-streams` say now
    /// (it existed, and dropping its history silently would be worse; it
    /// still counts against `--max-streams` for new ones); any other name is
    /// an internal stream with history `cap`.
    pub fn restore(&mut self, name: &str, cap: Option<Limits>) -> u32 {
        if !valid_name(name) {
            return self.internal(name, cap);
        }
        match self.find(name) {
            Some(i) => i,
            None => self.insert(name, false, self.limits),
        }
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
