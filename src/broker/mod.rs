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
//! Appends come in two phases, [`Broker::prepare`] (check, number) and
//! [`Broker::commit`] (into the rings), so the caller can make an event
//! durable in between; the broker holds no journal, sink or callback.
//!
//! Positions are ids everywhere: a cursor holds the id of the last event
//! its subscriber was given; resume planning produces such ids; the merge
//! yields frames with ids above them.
//!
//! Memory and lifecycle live here too: one server-wide budget for retained
//! history (encoded bytes, `Frame::cost`), enforced by evicting from the
//! least recently published-or-read stream (an intrusive LRU list through
//! the streams, O(1) per publish); public streams that nobody reads are
//! dropped when they hold no history, or after the idle TTL (`expire`,
//! called by the caller in slices); tombstones, bounded, keep resumes of
//! dropped streams honest.

mod merge;
mod ring;
#[cfg(test)]
mod tests;
mod topics;

use std::collections::{HashMap, VecDeque};

use slab::Slab;

use crate::frame;
use crate::id::{ConnKey, EventId};
pub use merge::Merge;
use ring::NIL;
pub use ring::{Claim, Frame, Limits, Stream};
#[cfg(test)]
use topics::MAX_ALIASES;
pub use topics::{
    valid_topic, PeerKey, SelectorsFull, MAX_ANON_SELECTORS_PER_PEER, MAX_ANON_SELECTOR_STREAMS,
    MAX_SELECTOR_STREAMS, MAX_TOPIC_BYTES,
};

/// Where a stream sits in the broker: what targets, cursors, fan-out and
/// the dirty list name a stream by. Only the broker hands them out (from
/// its slab of streams), so one is never made up from a number; a deleted
/// stream's index may be reused, and every lookup of a stale one finds
/// nothing or the new stream, as any slab key.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamIdx(u32);

impl StreamIdx {
    /// No stream (the ends of the LRU list): no slab key reaches it.
    const NIL: StreamIdx = StreamIdx(u32::MAX);
    /// The index of the stream at slab key `key`. Keys stay far below
    /// `u32::MAX`: public streams are bounded by `--max-streams` (twice:
    /// two pools), selector streams and the apps' internal ones by their
    /// own bounds.
    fn of(key: usize) -> StreamIdx {
        StreamIdx(key as u32)
    }
    /// Its slab key.
    fn slot(self) -> usize {
        self.0 as usize
    }
    /// An index made up for a unit test elsewhere (outside tests, only
    /// the broker makes them).
    #[cfg(test)]
    pub(crate) fn for_test(n: u32) -> StreamIdx {
        StreamIdx(n)
    }
}

/// An event checked and numbered but not yet in the rings: the first of
/// an append's two phases ([`Broker::prepare`], then [`Broker::commit`]).
/// Between them the caller makes it durable if it must (the journal); the
/// broker itself writes nothing anywhere. Dropping it publishes nothing
/// (its id stays used: ids only need to grow).
#[derive(Debug)]
#[must_use = "an event is published only once committed"]
pub struct Prepared<'a> {
    /// Its id.
    pub id: EventId,
    /// The streams it was published to (what a journal records).
    pub targets: &'a [StreamIdx],
    /// Those and the selector streams whose selectors match them, when any
    /// do (what its frame enters).
    fanned: Option<Vec<StreamIdx>>,
    /// Its encoded SSE bytes (without chunk framing).
    pub frame: std::borrow::Cow<'a, [u8]>,
    /// Only subscribers allowed private frames may see it.
    pub private: bool,
}

/// The server-wide id counter: `id = max(previous + 1, unix time in µs)`.
#[derive(Debug, Clone)]
pub struct IdClock {
    first: EventId,
    last: EventId,
}

impl IdClock {
    /// A clock whose first id is `now_us` (the unix time in µs at start).
    pub fn new(now_us: u64) -> Self {
        IdClock {
            first: EventId::new(now_us),
            last: EventId::new(now_us).pred(),
        }
    }
    /// Assigns the next id.
    pub fn next(&mut self, now_us: u64) -> EventId {
        self.last = self.last.succ().max(EventId::new(now_us));
        self.last
    }
    /// Moves the clock past an id assigned elsewhere (a bus, a journal).
    pub fn observe(&mut self, id: EventId) {
        self.last = self.last.max(id);
        self.first = self.first.min(id);
    }
    /// The lowest id this clock can have assigned or seen.
    pub fn first(&self) -> EventId {
        self.first
    }
    /// The last id assigned (or `first - 1` before any).
    pub fn last(&self) -> EventId {
        self.last
    }
}

/// A subscriber's place in one stream: the stream, its slot in that
/// stream's subscriber slab, whether it may see private frames there, and
/// the id of the last event it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Index of the stream.
    pub stream: StreamIdx,
    /// Slot of this connection in that stream's subscriber slab, with
    /// [`Cursor::SEES_PRIVATE`] as its high bit: the grant lives in bits
    /// the slot never uses, so a cursor stays 16 bytes.
    pub slot: u32,
    /// Id of the last event handed to this subscriber.
    pub last_id: EventId,
}

// Every subscriber holds one per stream it reads: the newtypes cost nothing.
const _: () = assert!(std::mem::size_of::<Cursor>() == 16);

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
    pub fn reads(&self, stream: StreamIdx) -> bool {
        self.as_slice().iter().any(|c| c.stream == stream)
    }
    /// Records that every frame up to `id` was handed over.
    pub fn advance(&mut self, id: EventId) {
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
    After(EventId, String),
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
            Some(s) => match s.trim().parse::<EventId>() {
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
    pub id: EventId,
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
    /// `--max-streams` streams exist that only subscribers asked for (a
    /// pool of their own, so they cannot use up the publishers' one).
    TooManyUnclaimed,
    /// This client address holds its share of that pool already
    /// ([`unclaimed_share`]), so one address cannot take all of it.
    TooManyUnclaimedHere {
        /// The share.
        limit: usize,
    },
    /// The name belongs to an internal stream.
    Reserved,
    /// The encoded event is larger than a history bound lets be kept.
    TooLarge {
        /// Its encoded size (chunk framing included; for the server-wide
        /// budget, times the streams it goes to).
        size: usize,
        /// The bound it is over.
        limit: usize,
        /// Which bound, in words an operator can act on.
        bound: &'static str,
    },
    /// No room for another `*`/URI-template selector stream in the pool
    /// this subscriber draws from.
    TooManySelectors(SelectorsFull),
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
            BrokerError::TooManyUnclaimed => "too many streams exist that only subscribers asked for (--max-streams); it can be subscribed to once a publisher creates it".into(),
            BrokerError::TooManyUnclaimedHere { limit } => format!(
                "too many streams exist that only subscribers from your address asked for (at most {limit}: an eighth of --max-streams, at least {MIN_UNCLAIMED_SHARE}); end a subscription first, or subscribe once a publisher creates the stream"
            ),
            BrokerError::Reserved => "that stream name is reserved".into(),
            BrokerError::TooLarge { size, limit, bound } => format!(
                "the encoded event is {size} bytes, more than {bound} may hold ({limit} bytes); it was not published"
            ),
            BrokerError::TooManySelectors(SelectorsFull::All) => format!(
                "too many distinct URI-template selectors are subscribed to (at most {MAX_SELECTOR_STREAMS}, a fixed limit); subscribe to exact topics or retry later"
            ),
            BrokerError::TooManySelectors(SelectorsFull::Anonymous) => format!(
                "too many distinct URI-template selectors are subscribed to without a token (at most {MAX_ANON_SELECTOR_STREAMS}); subscribe with a JWT, to exact topics, or retry later"
            ),
            BrokerError::TooManySelectors(SelectorsFull::Peer) => format!(
                "too many distinct URI-template selectors from your address without a token (at most {MAX_ANON_SELECTORS_PER_PEER}); subscribe with a JWT, to exact topics, or retry later"
            ),
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

/// The server-wide history budget unless told otherwise (`--history-total-bytes`).
pub const DEFAULT_TOTAL_BYTES: usize = 256 << 20;
/// Idle time after which an unread, unpublished stream nobody reads is
/// dropped, unless told otherwise (`--stream-idle-ttl`).
pub const DEFAULT_IDLE_TTL_US: u64 = 3_600_000_000;

/// What rebuilding one selector stream may spend on matching selectors
/// against stream names and tombstones (in units of a URI-template match;
/// see `Broker::selector_history`): about a millisecond of URL parsing for
/// a URL pattern.
pub const REBUILD_MATCH_BUDGET: usize = 16_384;

/// Fewest subscriber-only streams one address may hold, whatever
/// `--max-streams` is: one subscription of the most names a connection may
/// ask for (`--max-streams-per-conn` is at most 64) always fits.
pub const MIN_UNCLAIMED_SHARE: usize = 64;

/// The most subscriber-only streams one client address may hold: an eighth
/// of the pool (`--max-streams`), at least [`MIN_UNCLAIMED_SHARE`]. Eight
/// addresses are needed to fill the pool, and the streams an address made
/// go with its subscribers, so a hog holds only while it stays connected.
pub fn unclaimed_share(max_streams: usize) -> usize {
    (max_streams / 8).max(MIN_UNCLAIMED_SHARE)
}

/// Who asks for streams: whether missing ones are made, and which pool
/// (`--max-streams` each) they count against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Only existing streams.
    No,
    /// A subscriber (no credentials needed) from the client address with
    /// this key (`Cx::peer_key`): made in the subscribers' pool, within the
    /// address's share of it ([`unclaimed_share`]).
    Subscriber(PeerKey),
    /// An authorised publisher: made, or claimed, in the publishers' pool.
    Publisher,
}

/// What the memory bound and the stream lifecycle did, for `/stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    /// Events dropped from a history to keep the server-wide budget.
    pub evicted_events: u64,
    /// Encoded bytes of those.
    pub evicted_bytes: u64,
    /// Events refused because their encoded frame exceeds a history bound.
    pub refused_too_large: u64,
    /// Streams dropped after `--stream-idle-ttl` unread and unpublished.
    pub expired: u64,
    /// Streams dropped because nobody read them and they held no history.
    pub dropped_empty: u64,
}

/// Floors of dropped streams, oldest forgotten first once full. A name
/// whose tombstone was forgotten gets the highest forgotten floor instead:
/// a resume from below it is told events may be missing, which is the
/// honest answer when nothing more precise is kept.
#[derive(Default)]
struct Tombstones {
    /// Per name: its floor and the sequence number of its entry in `order`.
    floors: HashMap<Box<str>, (EventId, u64)>,
    order: VecDeque<(u64, Box<str>)>,
    seq: u64,
    forgotten: EventId,
}

impl Tombstones {
    fn take(&mut self, name: &str) -> EventId {
        self.floors
            .remove(name)
            .map_or(self.forgotten, |(f, _)| f.max(self.forgotten))
    }
    fn put(&mut self, name: &str, floor: EventId) {
        if floor <= self.forgotten {
            return;
        }
        self.seq += 1;
        let seq = self.seq;
        let e = self.floors.entry(name.into()).or_insert((EventId::NONE, 0));
        *e = (e.0.max(floor), seq);
        self.order.push_back((seq, name.into()));
        while self.floors.len() > MAX_TOMBSTONES {
            let Some((sq, n)) = self.order.pop_front() else {
                break;
            };
            if self.floors.get(&n).is_some_and(|&(_, s)| s == sq) {
                if let Some((f, _)) = self.floors.remove(&n) {
                    self.forgotten = self.forgotten.max(f);
                }
            }
        }
        if self.order.len() > 2 * MAX_TOMBSTONES {
            let floors = &self.floors;
            self.order
                .retain(|(sq, n)| floors.get(n).is_some_and(|&(_, s)| s == *sq));
        }
    }
}

/// Every stream and the id clock.
pub struct Broker {
    streams: Slab<Stream>,
    by_name: HashMap<Box<str>, StreamIdx>,
    tombstones: Tombstones,
    dirty: Vec<StreamIdx>,
    public: usize,
    /// Public streams only subscribers asked for (`Claim::Subscribers`).
    unclaimed: usize,
    /// Which address made each of those (those restored by the journal
    /// have none), and how many each address holds.
    unclaimed_owner: HashMap<StreamIdx, PeerKey>,
    unclaimed_by: HashMap<PeerKey, usize>,
    /// Encoded bytes retained in every ring (a frame shared by several
    /// rings counts once per ring: an upper bound of the memory held).
    total_bytes: usize,
    /// Bytes the apps hold outside the rings (archives) but charge to the
    /// same budget.
    app_bytes: usize,
    budget: usize,
    idle_ttl_us: u64,
    /// The latest time the caller passed in (unix µs).
    now_us: u64,
    /// Streams holding history, least recently published or read first.
    lru_head: StreamIdx,
    lru_tail: StreamIdx,
    /// Where the next `expire` slice starts.
    expire_pos: usize,
    life: Lifecycle,
    ids: IdClock,
    limits: Limits,
    max_streams: usize,
    /// A resume from an id below this gets `gap` whatever the stream's own
    /// history says: events up to it may be missing everywhere (a journal
    /// replay found damage, a missing segment, or compacted history).
    lost_below: EventId,
    /// The highest id of an event this node may have missed on a topic it
    /// does not hold (a bus announcement it skipped, or one before its
    /// subscription to the bus was live): a selector stream made now lacks
    /// those, so it counts everything up to it as possibly lost. 0 without
    /// a bus.
    unheld_upto: EventId,
    topics: topics::Topics,
    /// The newest event the budget evicted from a history: selector
    /// streams keep nothing up to it (see `trim_selectors`).
    budget_evicted_upto: EventId,
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
            tombstones: Tombstones::default(),
            dirty: Vec::new(),
            public: 0,
            unclaimed: 0,
            unclaimed_owner: HashMap::new(),
            unclaimed_by: HashMap::new(),
            total_bytes: 0,
            app_bytes: 0,
            budget: DEFAULT_TOTAL_BYTES,
            idle_ttl_us: DEFAULT_IDLE_TTL_US,
            now_us,
            lru_head: NIL,
            lru_tail: NIL,
            expire_pos: 0,
            life: Lifecycle::default(),
            ids: IdClock::new(now_us),
            limits,
            max_streams,
            lost_below: EventId::NONE,
            unheld_upto: EventId::NONE,
            topics: topics::Topics::default(),
            budget_evicted_upto: EventId::NONE,
            published: 0,
            gaps: 0,
        }
    }

    /// Sets the server-wide history budget (encoded bytes) and the idle
    /// TTL of unread streams (0: streams never expire by idleness).
    pub fn set_memory(&mut self, total_bytes: usize, idle_ttl_us: u64) {
        self.budget = total_bytes.max(1);
        self.idle_ttl_us = idle_ttl_us;
        self.enforce_budget();
    }

    /// Encoded bytes retained in every history.
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// What the apps hold outside the rings (see [`Broker::set_app_bytes`]).
    pub fn app_bytes(&self) -> usize {
        self.app_bytes
    }

    /// Tells the budget what the apps hold outside the rings (the
    /// MongooseIM archives); history is evicted so that both fit.
    pub fn set_app_bytes(&mut self, bytes: usize) {
        self.app_bytes = bytes;
        self.enforce_budget();
    }

    /// The server-wide history budget.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// What the budget and the lifecycle did so far.
    pub fn lifecycle(&self) -> Lifecycle {
        self.life
    }

    /// Public streams that only subscribers asked for.
    pub fn unclaimed(&self) -> usize {
        self.unclaimed
    }

    /// Of those, how many the address with key `peer` made.
    pub fn unclaimed_by(&self, peer: PeerKey) -> usize {
        self.unclaimed_by.get(&peer).copied().unwrap_or(0)
    }

    /// Forgets who made subscriber-only stream `idx` (claimed or dropped).
    fn disown(&mut self, idx: StreamIdx) {
        let Some(peer) = self.unclaimed_owner.remove(&idx) else {
            return;
        };
        if let Some(n) = self.unclaimed_by.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.unclaimed_by.remove(&peer);
            }
        }
    }

    /// Tombstones held.
    pub fn tombstones(&self) -> usize {
        self.tombstones.floors.len()
    }

    /// Moves the broker's notion of now (unix µs) forward; subscribes and
    /// unsubscribes are stamped with it.
    pub fn tick(&mut self, now_us: u64) {
        self.now_us = self.now_us.max(now_us);
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
    pub fn find(&self, name: &str) -> Option<StreamIdx> {
        self.by_name.get(name).copied()
    }

    /// Looks a public stream up by name.
    pub fn find_public(&self, name: &str) -> Option<StreamIdx> {
        self.find(name)
            .filter(|&i| self.get(i).is_some_and(|s| !s.internal))
    }

    /// The stream at `idx`.
    pub fn get(&self, idx: StreamIdx) -> Option<&Stream> {
        self.streams.get(idx.slot())
    }

    /// Iterates every stream.
    pub fn iter(&self) -> impl Iterator<Item = (StreamIdx, &Stream)> {
        self.streams.iter().map(|(i, s)| (StreamIdx::of(i), s))
    }

    /// Checks public names and finds them, creating the missing ones when
    /// `create` (as a publisher would). All or nothing: when one fails,
    /// none is created. A name outside the alphabet is accepted when a
    /// public stream of that name exists (a Mercure topic, see
    /// [`Broker::resolve_topics`]), so such streams can be read through
    /// `/events` too.
    pub fn resolve(
        &mut self,
        names: &[&str],
        create: bool,
    ) -> Result<Vec<StreamIdx>, (usize, BrokerError)> {
        let by = if create {
            Create::Publisher
        } else {
            Create::No
        };
        self.resolve_as(names, by)
    }

    /// Checks public names and finds them, creating the missing ones as
    /// `by` may (a publisher also claims existing subscriber-only streams
    /// into its pool). All or nothing: when one fails, none is created and
    /// none is claimed.
    pub fn resolve_as(
        &mut self,
        names: &[&str],
        by: Create,
    ) -> Result<Vec<StreamIdx>, (usize, BrokerError)> {
        self.resolve_by(names, by, valid_name)
    }

    /// [`Broker::resolve_as`] for Mercure topics: names are checked with
    /// [`valid_topic`] instead of the `/events` alphabet.
    pub fn resolve_topics(
        &mut self,
        names: &[&str],
        by: Create,
    ) -> Result<Vec<StreamIdx>, (usize, BrokerError)> {
        self.resolve_by(names, by, valid_topic)
    }

    /// Whether [`Broker::resolve_as`] (`topics`: [`Broker::resolve_topics`])
    /// of `names` would succeed, changing nothing: a handler checks, and the
    /// reactor resolves when it applies the decision.
    pub fn check_resolve(
        &self,
        names: &[&str],
        by: Create,
        topics: bool,
    ) -> Result<(), (usize, BrokerError)> {
        let valid = if topics { valid_topic } else { valid_name };
        self.check_by(names, by, valid)
    }

    fn check_by(
        &self,
        names: &[&str],
        by: Create,
        valid: fn(&str) -> bool,
    ) -> Result<(), (usize, BrokerError)> {
        let (mut claimed, mut unclaimed) = (0, 0);
        for (i, n) in names.iter().enumerate() {
            if !valid(n) && self.find_public(n).is_none() {
                return Err((i, BrokerError::BadName));
            }
            let first = !names[..i].contains(n);
            match self.find(n).and_then(|idx| self.get(idx)) {
                Some(s) if s.internal => return Err((i, BrokerError::Reserved)),
                Some(s) => {
                    if by == Create::Publisher && s.claim == Claim::Subscribers && first {
                        claimed += 1;
                    }
                }
                None => match by {
                    Create::No => return Err((i, BrokerError::NotFound)),
                    Create::Subscriber(_) => unclaimed += usize::from(first),
                    Create::Publisher => claimed += usize::from(first),
                },
            }
            if self.claimed() + claimed > self.max_streams {
                return Err((i, BrokerError::TooMany));
            }
            if let Create::Subscriber(peer) = by {
                let limit = unclaimed_share(self.max_streams);
                if unclaimed > 0 && self.unclaimed_by(peer) + unclaimed > limit {
                    return Err((i, BrokerError::TooManyUnclaimedHere { limit }));
                }
            }
            if self.unclaimed + unclaimed > self.max_streams {
                return Err((i, BrokerError::TooManyUnclaimed));
            }
        }
        Ok(())
    }

    fn resolve_by(
        &mut self,
        names: &[&str],
        by: Create,
        valid: fn(&str) -> bool,
    ) -> Result<Vec<StreamIdx>, (usize, BrokerError)> {
        self.check_by(names, by, valid)?;
        let claim = match by {
            Create::Publisher => Claim::Publisher,
            _ => Claim::Subscribers,
        };
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let idx = match self.find(n) {
                Some(i) => i,
                None => {
                    let i = self.insert(n, false, self.limits, claim);
                    if let Create::Subscriber(peer) = by {
                        self.unclaimed_owner.insert(i, peer);
                        *self.unclaimed_by.entry(peer).or_insert(0) += 1;
                    }
                    i
                }
            };
            if by == Create::Publisher {
                if let Some(s) = self.streams.get_mut(idx.slot()) {
                    if s.claim == Claim::Subscribers {
                        s.claim = Claim::Publisher;
                        self.unclaimed -= 1;
                        self.disown(idx);
                    }
                }
            }
            if !out.contains(&idx) {
                out.push(idx);
            }
        }
        Ok(out)
    }

    /// Names the stream `idx` in `gap` events as `shown` (apps' internal
    /// streams: the client never asked for `!app/...`).
    pub fn set_display(&mut self, idx: StreamIdx, shown: &str) {
        if let Some(s) = self.streams.get_mut(idx.slot()) {
            s.display = Some(shown.into());
        }
    }

    /// Public streams that count against the publishers' `--max-streams`.
    fn claimed(&self) -> usize {
        self.public - self.unclaimed
    }

    /// Creates a public stream explicitly (`PUT /streams/NAME`); `true`
    /// when it was made, `false` when it existed. An explicit stream is
    /// kept while empty, until the idle TTL.
    pub fn create(&mut self, name: &str) -> Result<(StreamIdx, bool), BrokerError> {
        let existed = self.find(name).is_some();
        let idx = self
            .resolve_as(&[name], Create::Publisher)
            .map_err(|(_, e)| e)?
            .first()
            .copied()
            .ok_or(BrokerError::NotFound)?;
        if !existed {
            if let Some(s) = self.streams.get_mut(idx.slot()) {
                s.claim = Claim::Explicit;
            }
        }
        Ok((idx, !existed))
    }

    /// Drops a public stream made for a request that then failed, if it
    /// is still unused (no readers, never published to, not explicit): a
    /// request that fails creates nothing.
    pub fn discard_unused(&mut self, idx: StreamIdx) {
        let unused = self.get(idx).is_some_and(|s| {
            !s.internal
                && s.subs.is_empty()
                && s.retained() == 0
                && s.last_id == EventId::NONE
                && s.claim != Claim::Explicit
        });
        if unused {
            self.drop_stream(idx);
        }
    }

    /// Finds or makes an internal stream (one the apps or the library own)
    /// whose history is bounded by `cap` as well as by the server-wide
    /// limits: apps make one stream per member or user, so the server-wide
    /// bounds multiplied by their number would be no bound at all.
    pub fn internal(&mut self, name: &str, cap: Option<Limits>) -> StreamIdx {
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
        self.insert(name, true, limits, Claim::Publisher)
    }

    fn insert(&mut self, name: &str, internal: bool, limits: Limits, claim: Claim) -> StreamIdx {
        if !internal {
            self.public += 1;
            if claim == Claim::Subscribers {
                self.unclaimed += 1;
            }
        }
        let lost = self.tombstones.take(name);
        let idx = StreamIdx::of(self.streams.insert(Stream::new(
            name,
            lost,
            internal,
            limits,
            claim,
            self.now_us,
        )));
        self.by_name.insert(name.into(), idx);
        idx
    }

    /// Drops public stream `idx`, which carried a one-off update under a
    /// name never used again (a Mercure subscription update), unless it
    /// has readers: without a tombstone, which nobody would resume from
    /// and which would push other streams' tombstones out.
    pub fn drop_one_off(&mut self, idx: StreamIdx) {
        if self
            .get(idx)
            .is_some_and(|s| !s.internal && s.subs.is_empty())
        {
            self.drop_stream_as(idx, false);
        }
    }

    /// Removes a stream, leaving a tombstone when it held events; the
    /// caller deals with its subscribers.
    fn drop_stream(&mut self, idx: StreamIdx) -> Option<Stream> {
        self.drop_stream_as(idx, true)
    }

    fn drop_stream_as(&mut self, idx: StreamIdx, tombstone: bool) -> Option<Stream> {
        self.lru_unlink(idx);
        let s = self.streams.try_remove(idx.slot())?;
        self.by_name.remove(&s.name);
        if !s.internal {
            self.public -= 1;
            if s.claim == Claim::Subscribers {
                self.unclaimed -= 1;
                self.disown(idx);
            }
        }
        self.total_bytes -= if self.topics.is_selector(idx) {
            s.retained() * topics::ENTRY_BYTES
        } else {
            s.retained_bytes()
        };
        if tombstone {
            self.tombstones.put(&s.name, s.last_id.max(s.lost_upto()));
        }
        self.dirty.retain(|&d| d != idx);
        self.topics.forget(idx);
        Some(s)
    }

    /// Takes `idx` out of the LRU list.
    fn lru_unlink(&mut self, idx: StreamIdx) {
        let Some(s) = self.streams.get_mut(idx.slot()) else {
            return;
        };
        if !s.in_lru {
            return;
        }
        let (p, n) = (s.lru_prev, s.lru_next);
        s.in_lru = false;
        s.lru_prev = NIL;
        s.lru_next = NIL;
        match self.streams.get_mut(p.slot()) {
            Some(ps) => ps.lru_next = n,
            None => self.lru_head = n,
        }
        match self.streams.get_mut(n.slot()) {
            Some(ns) => ns.lru_prev = p,
            None => self.lru_tail = p,
        }
    }

    /// Makes `idx` the most recently used stream holding history.
    fn lru_use(&mut self, idx: StreamIdx) {
        self.lru_unlink(idx);
        let tail = self.lru_tail;
        let Some(s) = self.streams.get_mut(idx.slot()) else {
            return;
        };
        s.in_lru = true;
        s.lru_prev = tail;
        s.lru_next = NIL;
        match self.streams.get_mut(tail.slot()) {
            Some(ts) => ts.lru_next = idx,
            None => self.lru_head = idx,
        }
        self.lru_tail = idx;
    }

    /// Stamps a read or publish: the idle TTL restarts, and a stream with
    /// history becomes the last to be evicted from.
    fn touch(&mut self, idx: StreamIdx) {
        let now = self.now_us;
        let listed = match self.streams.get_mut(idx.slot()) {
            Some(s) => {
                s.touched_us = now;
                s.in_lru
            }
            None => false,
        };
        if listed {
            self.lru_use(idx);
        }
    }

    /// Evicts the oldest events of the least recently used streams until
    /// the retained total is within the budget.
    fn enforce_budget(&mut self) {
        let evicted_before = self.life.evicted_events;
        self.evict_to_budget();
        if self.life.evicted_events != evicted_before {
            self.trim_selectors();
        }
    }

    fn evict_to_budget(&mut self) {
        while self.total_bytes + self.app_bytes > self.budget {
            let v = self.lru_head;
            let Some(s) = self.streams.get_mut(v.slot()) else {
                // Nothing listed: the accounting says otherwise only if it
                // is broken; stop rather than spin.
                break;
            };
            let front = s.first_id().unwrap_or(EventId::NONE);
            let internal = s.internal;
            let freed = s.evict_front();
            let empty = s.retained() == 0;
            self.total_bytes -= freed;
            if !internal {
                self.budget_evicted_upto = self.budget_evicted_upto.max(front);
            }
            if freed > 0 {
                self.life.evicted_events += 1;
                self.life.evicted_bytes += freed as u64;
            }
            if empty {
                self.lru_unlink(v);
            }
        }
    }

    /// Publishes `ev` to `targets`, encoding it once: [`Broker::prepare`]
    /// and [`Broker::commit`] with nothing in between, so nothing makes it
    /// durable (handlers publish through `Cx::publish_as`, which does).
    pub fn publish(
        &mut self,
        targets: &[StreamIdx],
        ev: &crate::event::Event,
        now_us: u64,
    ) -> Result<Published, BrokerError> {
        self.publish_with(targets, now_us, |id| {
            frame::encode_numbered(id, ev.event.as_deref(), &ev.data, ev.retry)
        })
    }

    /// Publishes an event that `encode` spells given its id (see
    /// [`Broker::publish`]).
    pub fn publish_with(
        &mut self,
        targets: &[StreamIdx],
        now_us: u64,
        encode: impl FnOnce(EventId) -> Vec<u8>,
    ) -> Result<Published, BrokerError> {
        self.publish_as(targets, now_us, false, encode)
    }

    /// [`Broker::publish_with`] for an event that is `private` (reaches
    /// only cursors that may see private frames) or not.
    pub fn publish_as(
        &mut self,
        targets: &[StreamIdx],
        now_us: u64,
        private: bool,
        encode: impl FnOnce(EventId) -> Vec<u8>,
    ) -> Result<Published, BrokerError> {
        let p = self.prepare_publish(targets, now_us, private, encode)?;
        Ok(self.commit(p))
    }

    /// Phase one of publishing a new event: assigns its id, has `encode`
    /// spell it, and checks that `targets` may keep it.
    pub fn prepare_publish<'a>(
        &mut self,
        targets: &'a [StreamIdx],
        now_us: u64,
        private: bool,
        encode: impl FnOnce(EventId) -> Vec<u8>,
    ) -> Result<Prepared<'a>, BrokerError> {
        self.tick(now_us);
        let id = self.ids.next(now_us);
        let sse = encode(id);
        self.prepare(targets, id, sse.into(), private)
    }

    /// Whether an event of `sse_len` SSE bytes may be kept in `targets`: no
    /// larger than any target's history bytes, nor, times the rings it
    /// goes to, than the server-wide budget.
    pub fn check_size(&self, targets: &[StreamIdx], sse_len: usize) -> Result<(), BrokerError> {
        let cost = Frame::cost_for(sse_len);
        let mut rings = 0usize;
        let mut entries = 0usize;
        for &t in targets {
            if let Some(s) = self.streams.get(t.slot()) {
                // A selector stream holds a place in the shared frame, not
                // a copy of it.
                if self.topics.is_selector(t) {
                    entries += 1;
                } else {
                    rings += 1;
                }
                if cost > s.limits.history_bytes {
                    let bound = if s.limits.history_bytes == self.limits.history_bytes {
                        "a stream's history (--history-bytes)"
                    } else {
                        "this app stream's history"
                    };
                    return Err(BrokerError::TooLarge {
                        size: cost,
                        limit: s.limits.history_bytes,
                        bound,
                    });
                }
            }
        }
        let size = cost
            .saturating_mul(rings)
            .saturating_add(entries.saturating_mul(topics::ENTRY_BYTES));
        if size > self.budget {
            return Err(BrokerError::TooLarge {
                size,
                limit: self.budget,
                bound: "the server-wide history budget (--history-total-bytes)",
            });
        }
        Ok(())
    }

    /// Appends an event whose id was assigned elsewhere (a journal being
    /// replayed, a bus): [`Broker::prepare`] and [`Broker::commit`].
    pub fn append(
        &mut self,
        targets: &[StreamIdx],
        id: EventId,
        sse: &[u8],
    ) -> Result<Published, BrokerError> {
        self.append_as(targets, id, sse, false)
    }

    /// [`Broker::append`] of a private (or public) event.
    pub fn append_as(
        &mut self,
        targets: &[StreamIdx],
        id: EventId,
        sse: &[u8],
        private: bool,
    ) -> Result<Published, BrokerError> {
        let p = self.prepare(targets, id, sse.into(), private)?;
        Ok(self.commit(p))
    }

    /// Phase one of an append: finds the selector streams the event also
    /// goes to (those whose selector matches the name of one of the public
    /// `targets`) and checks that every ring may keep it, before any frame
    /// is built, so an oversized event is never copied, let alone kept.
    /// Changes nothing but the refusal count.
    pub fn prepare<'a>(
        &mut self,
        targets: &'a [StreamIdx],
        id: EventId,
        sse: std::borrow::Cow<'a, [u8]>,
        private: bool,
    ) -> Result<Prepared<'a>, BrokerError> {
        let fanned = self.topics.fan_in(&self.streams, targets);
        if let Err(e) = self.check_size(fanned.as_deref().unwrap_or(targets), sse.len()) {
            self.life.refused_too_large += 1;
            return Err(e);
        }
        Ok(Prepared {
            id,
            targets,
            fanned,
            frame: sse,
            private,
        })
    }

    /// The names of the streams a prepared event was published to (what a
    /// journal records; selector streams are derived, so not among them).
    pub fn names_of<'b>(&'b self, p: &Prepared<'_>) -> Vec<&'b str> {
        p.targets
            .iter()
            .filter_map(|&t| self.streams.get(t.slot()))
            .map(|s| &*s.name)
            .collect()
    }

    /// Phase two of an append: the frame enters its rings (built once,
    /// shared by all of them) and the id clock moves past its id.
    pub fn commit(&mut self, p: Prepared<'_>) -> Published {
        let (id, audience_of) = (p.id, p.targets);
        let pressure = self.enter(p);
        self.published += 1;
        Published {
            id,
            audience: self.audience(audience_of),
            pressure,
        }
    }

    /// The frame enters its rings; whether the fan-out must run now.
    fn enter(&mut self, p: Prepared<'_>) -> bool {
        let Prepared {
            id,
            targets: audience_of,
            fanned,
            frame: sse,
            private,
        } = p;
        let targets = fanned.as_deref().unwrap_or(audience_of);
        self.ids.observe(id);
        let f = Frame::new(id, &sse).with_private(private);
        let mut pressure = false;
        for (i, &t) in targets.iter().enumerate() {
            // Past the published-to streams come the selector streams
            // fanned in: they hold a place in the shared frame, which costs
            // an entry, not the bytes again (see `trim_selectors`).
            let selector = i >= audience_of.len();
            let Some(s) = self.streams.get_mut(t.slot()) else {
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
            if selector {
                let before = s.retained();
                s.push(f.clone());
                let popped = (before + 1).saturating_sub(s.retained());
                pressure |= s.dirty_frames >= (s.limits.history / 2).max(1)
                    || s.dirty_bytes >= (s.limits.history_bytes / 2).max(1);
                self.total_bytes = (self.total_bytes + topics::ENTRY_BYTES)
                    .saturating_sub(popped * topics::ENTRY_BYTES);
                continue;
            }
            let freed = s.push(f.clone());
            // Half the ring published since subscribers were last offered
            // frames: flush before the ring overtakes even fast readers.
            pressure |= s.dirty_frames >= (s.limits.history / 2).max(1)
                || s.dirty_bytes >= (s.limits.history_bytes / 2).max(1);
            s.touched_us = self.now_us;
            self.total_bytes = self.total_bytes + f.cost() - freed;
            self.lru_use(t);
        }
        self.enforce_budget();
        pressure
    }

    /// Records that events of stream `idx` up to id `upto` may be missing
    /// on this node (a hole a bus could not fill: trimmed history, a Redis
    /// that lost its data). Retained frames at or below `upto` are dropped
    /// like evicted ones, so subscribers not yet sent all of them get `gap`
    /// on their next flush (the stream is marked dirty so they are visited)
    /// and resumes from below `upto` get `gap`. Returns whether the stream
    /// exists and its loss mark moved.
    pub fn mark_lost(&mut self, idx: StreamIdx, upto: EventId) -> bool {
        let Some(s) = self.streams.get_mut(idx.slot()) else {
            return false;
        };
        if !s.mark_lost(upto) {
            return false;
        }
        if !s.dirty {
            s.dirty = true;
            s.dirty_frames = 0;
            s.dirty_bytes = 0;
            self.dirty.push(idx);
        }
        self.ids.observe(upto);
        true
    }

    /// Moves the id clock past an id seen elsewhere (a bus announcement's
    /// predecessor), so a resume from it is one this node can place.
    pub fn observe(&mut self, id: EventId) {
        if id > EventId::NONE {
            self.ids.observe(id);
        }
    }

    /// Distinct connections reading any of `targets`.
    pub fn audience(&self, targets: &[StreamIdx]) -> usize {
        match targets {
            [] => 0,
            [t] => self.get(*t).map_or(0, |s| s.subs.len()),
            _ => {
                let mut keys: Vec<ConnKey> = targets
                    .iter()
                    .filter_map(|&t| self.get(t))
                    .flat_map(|s| s.subs.iter())
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                keys.len()
            }
        }
    }

    /// Takes the streams published to since the last call.
    pub fn take_dirty(&mut self, into: &mut Vec<StreamIdx>) {
        for &i in &self.dirty {
            if let Some(s) = self.streams.get_mut(i.slot()) {
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
        targets: &[StreamIdx],
        sees_private: &[bool],
        resume: &Resume,
    ) -> (Vec<Cursor>, Vec<StreamIdx>) {
        let mut cursors = Vec::with_capacity(targets.len());
        let mut gap = Vec::new();
        for (i, &t) in targets.iter().enumerate() {
            let Some(s) = self.get(t) else { continue };
            let sees = sees_private.get(i).copied().unwrap_or(false);
            let (last_id, g) = match resume {
                Resume::Live => (s.last_id.max(self.ids.last()), false),
                Resume::Earliest => (s.floor(), false),
                Resume::After(x, _) if *x >= self.ids.first() && *x <= self.ids.last() => (
                    s.floor().max(*x),
                    s.lost_after(*x, sees) || *x < self.lost_below,
                ),
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
    pub fn subscribe(&mut self, conn: ConnKey, targets: &[StreamIdx], resume: &Resume) -> Catchup {
        self.subscribe_as(conn, targets, &[], resume)
    }

    /// [`Broker::subscribe`] with a may-see-private bit per target (see
    /// [`Broker::plan`]).
    pub fn subscribe_as(
        &mut self,
        conn: ConnKey,
        targets: &[StreamIdx],
        sees_private: &[bool],
        resume: &Resume,
    ) -> Catchup {
        let (mut cursors, gap) = self.plan(targets, sees_private, resume);
        for c in cursors.iter_mut() {
            if let Some(s) = self.streams.get_mut(c.stream.slot()) {
                c.slot = s.subs.insert(conn) | (c.slot & Cursor::SEES_PRIVATE);
            }
            self.touch(c.stream);
        }
        let gap = (!gap.is_empty()).then(|| {
            self.gaps += 1;
            let names: Vec<&str> = gap
                .iter()
                .filter_map(|&i| self.get(i))
                .map(|s| s.shown())
                .collect();
            frame::gap(resume.raw(), &names)
        });
        Catchup {
            cursors: Cursors::from_vec(cursors),
            gap,
        }
    }

    /// Removes connection `conn` from every stream its cursors name. A
    /// public stream left with no readers and no history is dropped at
    /// once (unless it was created explicitly).
    pub fn unsubscribe(&mut self, conn: ConnKey, cursors: &Cursors) {
        let now = self.now_us;
        for c in cursors.as_slice() {
            let Some(s) = self.streams.get_mut(c.stream.slot()) else {
                continue;
            };
            if !s.subs.remove(c.slot() as u32, conn) {
                continue;
            }
            s.touched_us = now;
            if !s.internal && s.subs.is_empty() && s.retained() == 0 && s.claim != Claim::Explicit {
                self.drop_stream(c.stream);
                self.life.dropped_empty += 1;
            }
        }
    }

    /// One slice of the lifecycle sweep: looks at up to `slots` stream
    /// slots and drops the public streams nobody reads that have gone
    /// unread and unpublished for the idle TTL, or that hold no history
    /// (and were not created explicitly). Returns `true` when the slice
    /// ended a pass over the table (the caller may rest before the next).
    pub fn expire(&mut self, now_us: u64, slots: usize) -> bool {
        self.tick(now_us);
        let cap = self.streams.capacity();
        let start = self.expire_pos.min(cap);
        let end = start.saturating_add(slots.max(1)).min(cap);
        let mut doomed: Vec<(StreamIdx, bool)> = Vec::new();
        for i in start..end {
            let Some(s) = self.streams.get(i) else {
                continue;
            };
            if s.internal || !s.subs.is_empty() {
                continue;
            }
            let idle = self.idle_ttl_us > 0
                && self.now_us.saturating_sub(s.touched_us) >= self.idle_ttl_us;
            if idle || (s.retained() == 0 && s.claim != Claim::Explicit) {
                doomed.push((StreamIdx::of(i), idle));
            }
        }
        for (i, idle) in doomed {
            if self.drop_stream(i).is_some() {
                if idle {
                    self.life.expired += 1;
                } else {
                    self.life.dropped_empty += 1;
                }
            }
        }
        if end >= cap {
            self.expire_pos = 0;
            true
        } else {
            self.expire_pos = end;
            false
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
        let mut from: Option<EventId> = None;
        for c in cursors.as_mut_slice() {
            if let Some(s) = self.streams.get(c.stream.slot()) {
                let sees = c.sees_private();
                if s.lost_after(c.last_id, sees) {
                    from = Some(from.map_or(c.last_id, |f| f.min(c.last_id)));
                    names.push(s.shown());
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
    pub fn subscriber_at(&self, stream: StreamIdx, i: usize) -> Option<Option<ConnKey>> {
        let s = self.get(stream)?;
        s.subs.at(i)
    }

    /// The connections reading a stream.
    pub fn subscribers(&self, stream: StreamIdx) -> Vec<ConnKey> {
        self.get(stream)
            .map(|s| s.subs.iter().collect())
            .unwrap_or_default()
    }

    /// Deletes a stream, leaving a tombstone so a stream recreated under its
    /// name knows events were dropped; returns the connections that read it
    /// (the caller ends them, and must flush them first).
    pub fn delete(&mut self, idx: StreamIdx) -> Vec<ConnKey> {
        let Some(s) = self.drop_stream(idx) else {
            return Vec::new();
        };
        s.subs.iter().collect()
    }

    /// The name of stream `idx` and the floor its deletion would leave in
    /// its tombstone (what a journal records before [`Broker::delete`]).
    pub fn tombstone_of(&self, idx: StreamIdx) -> Option<(&str, EventId)> {
        self.get(idx)
            .map(|s| (&*s.name, s.last_id.max(s.lost_upto())))
    }

    /// Says that events with ids below `id` may be missing from every
    /// stream (what a journal replay could not restore), so a resume from
    /// below it gets `gap` instead of a silent hole.
    pub fn mark_lost_below(&mut self, id: EventId) {
        self.lost_below = self.lost_below.max(id);
    }

    /// Events up to `upto` were published while this node did not listen
    /// to the bus (it was down, or not up yet): every selector stream here
    /// may lack updates of topics this node does not hold (the catch-up
    /// refetches only the topics it holds), so each marks them lost and
    /// its readers get `gap` rather than a silent hole.
    pub fn selectors_missed(&mut self, upto: EventId) {
        let all: Vec<StreamIdx> = self.topics.streams().collect();
        for idx in all {
            self.mark_lost(idx, upto);
        }
    }

    /// Says that events up to `id` may have been published to topics this
    /// node does not hold (so were never here): a selector stream made
    /// later counts them as lost (see `selector_history`). One `max`: the
    /// bus link calls it for every announcement it skips.
    pub fn note_unheld(&mut self, id: EventId) {
        self.unheld_upto = self.unheld_upto.max(id);
        // A subscriber starting live is placed above it, not told of it.
        self.observe(id);
    }

    /// Moves the id clock past an id handed out before this broker existed.
    pub fn observe_id(&mut self, id: EventId) {
        self.ids.observe(id);
    }

    /// Whether stream `name` still holds event `id` in its history (what a
    /// journal must keep on disk).
    pub fn retains(&self, name: &str, id: EventId) -> bool {
        self.find(name)
            .and_then(|i| self.get(i))
            .and_then(|s| s.first_id())
            .is_some_and(|first| id >= first)
    }

    /// Finds or recreates a stream read back from a journal: a public name
    /// (an `/events` name or a Mercure topic, even one outside the
    /// `/events` alphabet) comes back whatever `--no-auto-streams` and
    /// `--max-streams` say now (it existed, and dropping its history
    /// silently would be worse; it still counts against `--max-streams` for
    /// new ones); an internal name (the apps', `!...`) is an internal
    /// stream with history `cap`.
    pub fn restore(&mut self, name: &str, cap: Option<Limits>) -> StreamIdx {
        if name.starts_with('!') || !valid_topic(name) {
            return self.internal(name, cap);
        }
        match self.find(name) {
            Some(i) => i,
            // Replayed history was published once: a publisher's stream.
            None => self.insert(name, false, self.limits, Claim::Publisher),
        }
    }

    /// Records a deletion that happened before this broker existed (a
    /// journal being replayed).
    pub fn restore_tombstone(&mut self, name: &str, floor: EventId) {
        self.tombstones.put(name, floor);
        self.ids.observe(floor);
    }
}

impl Broker {
    /// The selector stream of `sel` (`*` or a URI template), made on first
    /// use: an internal stream that receives every later event published to
    /// a public stream whose name `sel` matches, so a selector subscription
    /// also sees streams created after it. A resume from before it was made
    /// gets a `gap`. At most [`MAX_SELECTOR_STREAMS`] exist besides `*`;
    /// one made for an anonymous subscriber (`anon`: its address as a
    /// [`PeerKey`]) comes
    /// from the anonymous pool and that address's share of it. Past a
    /// bound an unread one of that pool is dropped, or
    /// [`BrokerError::TooManySelectors`] when all are read.
    pub fn selector_stream(
        &mut self,
        sel: &crate::auth::Selector,
        anon: Option<PeerKey>,
    ) -> Result<StreamIdx, BrokerError> {
        if let Some(i) = self.topics.find(sel.as_str()) {
            return Ok(i);
        }
        if self.find(sel.as_str()).is_some() {
            // A name taken by some other internal stream.
            return Err(BrokerError::Reserved);
        }
        // At most three pools to make room in.
        for _ in 0..3 {
            match self.topics.room(&self.streams, sel, anon) {
                Ok(()) => break,
                Err((_, Some(unread))) => {
                    self.delete(unread);
                }
                Err((full, None)) => return Err(BrokerError::TooManySelectors(full)),
            }
        }
        if let Err((full, _)) = self.topics.room(&self.streams, sel, anon) {
            return Err(BrokerError::TooManySelectors(full));
        }
        let idx = self.insert(sel.as_str(), true, self.limits, Claim::Publisher);
        // A gap names what the subscriber asked for, not the internal key.
        if sel.shown() != sel.as_str() {
            self.set_display(idx, sel.shown());
        }
        self.topics.add(sel.clone(), idx, anon);
        self.rebuild_selector(idx, sel);
        Ok(idx)
    }

    /// What a selector stream for `sel` made now starts with: the public
    /// streams it matches, and the highest id at or below which events of
    /// its topics may be gone (all, and public ones): the matching streams'
    /// own loss marks, the tombstones of matching names (and the floor of
    /// forgotten ones), what [`merge::newest`] leaves out for the ring's
    /// bounds, and, with a bus, everything up to `unheld_upto` (events of
    /// topics this node does not hold never came here).
    ///
    /// Bounded: at most [`REBUILD_MATCH_BUDGET`] match units (a URL
    /// pattern's match parses the topic as a URL and costs more, see
    /// `Selector::match_cost`), spent on the most recently used streams
    /// first; a stream or tombstone past the budget is not matched but
    /// counted as lost (a resume from before its newest event gets `gap`),
    /// so a subscriber cannot make one subscription cost a pass of URL
    /// parses over every stream. Returns the matches run too.
    fn selector_history(
        &self,
        sel: &crate::auth::Selector,
    ) -> (merge::Newest, EventId, EventId, u64) {
        let mut budget = if sel.is_any() {
            usize::MAX
        } else {
            REBUILD_MATCH_BUDGET / sel.match_cost().max(1)
        };
        let mut ran = 0u64;
        let start = self.tombstones.forgotten.max(self.unheld_upto);
        let (mut lost, mut lost_public) = (start, start);
        let mut from = Vec::new();
        let mut seen_lru = 0usize;
        // Streams holding history, most recently used first; then those
        // that hold none but lost some.
        let mut order: Vec<StreamIdx> = Vec::new();
        let mut i = self.lru_tail;
        while let Some(s) = self.get(i) {
            seen_lru += 1;
            if seen_lru > self.streams.len() {
                break; // a broken list: stop rather than spin
            }
            if !s.internal {
                order.push(i);
            }
            i = s.lru_prev;
        }
        order.extend(
            self.iter()
                .filter(|(_, s)| !s.internal && !s.in_lru && s.lost_upto() > EventId::NONE)
                .map(|(i, _)| i),
        );
        for i in order {
            let Some(s) = self.get(i) else { continue };
            if budget == 0 {
                lost = lost.max(s.last_id).max(s.lost_upto());
                lost_public = lost_public.max(s.last_public_id).max(s.lost_public_upto());
                continue;
            }
            budget -= 1;
            ran += 1;
            if sel.matches_in(&crate::auth::selector::Topic::new(&s.name)) {
                lost = lost.max(s.lost_upto());
                lost_public = lost_public.max(s.lost_public_upto());
                if s.retained() > 0 {
                    from.push(i);
                }
            }
        }
        for (name, &(floor, _)) in &self.tombstones.floors {
            if floor <= lost || !valid_topic(name) {
                continue;
            }
            if budget == 0 {
                lost = floor;
                lost_public = lost_public.max(floor);
                continue;
            }
            budget -= 1;
            ran += 1;
            if sel.matches(name) {
                lost = floor;
                lost_public = lost_public.max(floor);
            }
        }
        let mut n = merge::newest(
            &self.streams,
            &from,
            self.limits.history.max(1),
            self.limits.history_bytes,
        );
        let (l, mut lp) = (lost.max(n.left_out), lost_public.max(n.left_out_public));
        // Nothing at or below the loss mark stays, as after an eviction: a
        // subscriber told of the loss goes on after the oldest frame kept
        // (`Stream::floor`), so one kept below it would come again.
        let cut = n.frames.partition_point(|f| f.id <= l);
        for f in n.frames.drain(..cut) {
            if f.visible(false) {
                lp = lp.max(f.id);
            }
        }
        (n, l, lp, ran)
    }

    /// Fills selector stream `idx`, made now, with the retained history of
    /// the streams `sel` matches (in id order, each event once, private
    /// flags kept), so a resume on it is exact after a restart (the
    /// journal restored the topics) or when it was made after the events:
    /// what it may miss is what its topics miss (see `selector_history`
    /// for the bound). With `--redis`, only the topics this node holds
    /// count, and what it may have missed of the others counts as lost
    /// (see the README).
    fn rebuild_selector(&mut self, idx: StreamIdx, sel: &crate::auth::Selector) {
        let (newest, lost, lost_public, ran) = self.selector_history(sel);
        self.topics.matches_run += ran;
        let Some(s) = self.streams.get_mut(idx.slot()) else {
            return;
        };
        s.set_lost(lost, lost_public);
        for f in newest.frames {
            s.push(f);
        }
        self.total_bytes += s.retained() * topics::ENTRY_BYTES;
        self.enforce_budget();
    }

    /// What a subscriber of selector `sel` that may (or may not) see
    /// private events is told of it: the newest id it could be sent
    /// (`NONE`: none) and the id at or below which events it could see may be
    /// missing; from its selector stream when it exists, else from what
    /// one made now would hold. (What the hub's `Last-Event-ID` and
    /// `Mercure-Last-Event-ID` report before the stream is made.)
    pub fn selector_view(
        &self,
        sel: &crate::auth::Selector,
        sees_private: bool,
    ) -> (EventId, EventId) {
        if let Some(s) = self.topics.find(sel.as_str()).and_then(|i| self.get(i)) {
            return if sees_private {
                (s.last_id, s.lost_upto())
            } else {
                (s.last_public_id, s.lost_public_upto())
            };
        }
        let (newest, lost, lost_public, _) = self.selector_history(sel);
        let last = newest
            .frames
            .iter()
            .rev()
            .find(|f| f.visible(sees_private))
            .map_or(EventId::NONE, |f| f.id);
        (last, if sees_private { lost } else { lost_public })
    }

    /// Whether a subscriber of selector `sel` resuming after `id` may miss
    /// events it could see (see [`Broker::selector_view`]).
    pub fn selector_lost_after(
        &self,
        sel: &crate::auth::Selector,
        id: EventId,
        sees_private: bool,
    ) -> bool {
        self.selector_view(sel, sees_private).1 > id
    }

    /// Makes this node hold `topic`, a stream another node published to
    /// (a bus announcement), when a selector stream here matches it, so
    /// its events reach that selector stream; `None` when none does (or it
    /// cannot be had: an internal or invalid name, `--max-streams`). The
    /// stream starts empty, like one a subscriber asked for: its history
    /// comes from the bus.
    pub fn hold_for_selectors(&mut self, topic: &str, id: EventId) -> Option<StreamIdx> {
        if topic.starts_with('!') || !valid_topic(topic) || !self.topics.wanted(topic) {
            return None;
        }
        match self.resolve_topics(&[topic], Create::Publisher) {
            Ok(v) => v.first().copied(),
            Err((_, e)) => {
                // The selector streams that want it miss event `id`: marked
                // lost, so their subscribers get `gap`, not a silent hole.
                log::info!(
                    "topic {topic:?} not held for selectors ({}): their subscribers get a gap",
                    e.message()
                );
                for idx in self.topics.matching(topic) {
                    self.mark_lost(idx, id);
                }
                None
            }
        }
    }

    /// Enters an event of `targets` into the selector streams they feed,
    /// not into `targets` (a bus announcement whose streams take it only
    /// once their history is loaded): selector streams take every event in
    /// announcement order, and skip it when it enters `targets` later.
    /// Returns whether a selector stream took it, and whether the fan-out
    /// must run now (see [`Published::pressure`]).
    pub fn append_selectors(
        &mut self,
        targets: &[StreamIdx],
        id: EventId,
        sse: &[u8],
        private: bool,
    ) -> (bool, bool) {
        let Some(mut fanned) = self.topics.fan_in(&self.streams, targets) else {
            return (false, false);
        };
        fanned.drain(..targets.len());
        fanned.retain(|&t| self.get(t).is_some_and(|s| s.last_id < id));
        if fanned.is_empty() {
            return (false, false);
        }
        if let Err(e) = self.check_size(&fanned, sse.len()) {
            self.life.refused_too_large += 1;
            log::warn!("bus event {id} not kept: {}", e.message());
            return (false, false);
        }
        let p = Prepared {
            id,
            targets: &[],
            fanned: Some(fanned),
            frame: sse.into(),
            private,
        };
        (true, self.enter(p))
    }

    /// Keeps selector streams within what the published-to streams hold.
    /// A selector stream gets every frame its topics get, under the same
    /// per-stream bounds, so by itself it never outlives them; only the
    /// server-wide budget evicts from a published-to stream alone. Dropping
    /// from every selector stream what is not newer than the newest frame
    /// the budget evicted keeps them holding no frame that nothing else
    /// holds (their readers get a `gap`, as any reader of an evicted frame).
    fn trim_selectors(&mut self) {
        let upto = self.budget_evicted_upto;
        let sels: Vec<StreamIdx> = self.topics.streams().collect();
        for idx in sels {
            let Some(s) = self.streams.get_mut(idx.slot()) else {
                continue;
            };
            if s.first_id().is_none_or(|f| f > upto) {
                continue;
            }
            while s.first_id().is_some_and(|f| f <= upto) {
                s.evict_front();
                self.total_bytes = self.total_bytes.saturating_sub(topics::ENTRY_BYTES);
            }
            if !s.dirty {
                s.dirty = true;
                s.dirty_frames = 0;
                s.dirty_bytes = 0;
                self.dirty.push(idx);
            }
        }
    }

    /// Whether stream `idx` is a selector stream (derived on each node
    /// from the streams it holds, so never fetched from elsewhere).
    pub fn is_selector(&self, idx: StreamIdx) -> bool {
        self.topics.is_selector(idx)
    }

    /// Template matches run by the selector fan-in so far.
    pub fn selector_matches_run(&self) -> u64 {
        self.topics.matches_run
    }

    /// Bytes the selector registry, its match cache and interned keys
    /// hold (the memory account's `selectors` kind).
    pub fn selector_bytes(&self) -> usize {
        self.topics.bytes()
    }

    /// What making the selector stream of `sel` would add to
    /// [`Broker::selector_bytes`] (0 when it exists).
    pub fn selector_cost(&self, sel: &crate::auth::Selector) -> usize {
        self.topics.cost(sel)
    }

    /// Remembers that a publisher named event `id` `alias`, so a resume
    /// from `alias` finds it (the oldest aliases go past [`MAX_ALIASES`]).
    /// `private`: the event was private, so only subscribers that may see
    /// private events can resume from its alias.
    pub fn alias(&mut self, alias: &str, id: EventId, private: bool) {
        self.topics.alias(alias, id, private);
    }

    /// The id a publisher-supplied alias stands for, while remembered; a
    /// private event's alias only for `sees_private` (to anyone else it is
    /// as unknown as an alias never used, so a resume cannot probe for it).
    pub fn alias_id(&self, alias: &str, sees_private: bool) -> Option<EventId> {
        self.topics
            .alias_id(alias)
            .filter(|&(_, private)| sees_private || !private)
            .map(|(id, _)| id)
    }
}
