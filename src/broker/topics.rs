//! Mercure's additions to the broker: the registry of selector streams
//! (one internal ring per distinct `*` or URI-template selector, fed with
//! every later event whose public stream it matches), the per-topic cache
//! of which selector streams a topic feeds (so a publish matches a topic
//! against a selector once, not on every publish), the pools selector
//! streams come from (all, anonymous, per client address), the bounded
//! memory of topics no selector wants (bus announcements of streams this node does not hold),
//! and the bounded index from publisher-supplied event ids to broker ids.
//!
//! Bookkeeping only: it must not own frames (the rings do), decide who may
//! read what, or do I/O.

use std::collections::{HashMap, VecDeque};

use slab::Slab;

use super::ring::Stream;
use super::StreamIdx;
use crate::auth::Selector;
use crate::id::EventId;

/// An anonymous subscriber's client address, as an opaque key (the caller
/// maps addresses to it; the broker knows no sockets or addresses).
pub type PeerKey = u128;

/// Longest Mercure topic (a stream name through `/.well-known/mercure`).
pub const MAX_TOPIC_BYTES: usize = 1024;
/// Most selector streams at once (`*` is not counted: there is one).
pub const MAX_SELECTOR_STREAMS: usize = 1024;
/// Of those, most made by subscribers without a token, so token holders
/// always find room.
pub const MAX_ANON_SELECTOR_STREAMS: usize = 768;
/// Of those, most made from one client address.
pub const MAX_ANON_SELECTORS_PER_PEER: usize = 32;
/// Most publisher-supplied ids remembered for resume.
pub const MAX_ALIASES: usize = 16_384;
/// What a selector stream's place in a shared frame costs against the
/// history budget (the ring entry), instead of the frame's bytes again.
pub(super) const ENTRY_BYTES: usize = std::mem::size_of::<super::ring::Frame>();
/// Most (topic, selector) match results cached; past it the cache starts
/// over, so it never holds more than this many entries.
const MAX_CACHED_HITS: usize = 1 << 18;
/// Most bytes of topic names, and most names, remembered as wanted by no
/// selector (names of streams this node does not hold, announced by a
/// bus); past either the memory starts over.
const MAX_UNWANTED_BYTES: usize = 1 << 20;
const MAX_UNWANTED: usize = 16_384;

/// Whether `t` may name a stream through the Mercure endpoint: 1..=1024
/// bytes without control characters, and not itself a selector (`*`, or
/// anything with `{` or `}`, which no URI contains unescaped).
pub fn valid_topic(t: &str) -> bool {
    (1..=MAX_TOPIC_BYTES).contains(&t.len())
        && t != "*"
        && !t.chars().any(|c| c.is_control() || c == '{' || c == '}')
}

struct Entry {
    sel: Selector,
    idx: StreamIdx,
    /// Registration order, so a topic's cache knows which selectors it has
    /// not been matched against yet (and a reused slab index is told apart).
    seq: u64,
    /// The address whose anonymous subscriber made it, if one did.
    owner: Option<PeerKey>,
    /// Its key's number ([`Topics::keys`]): selectors with one key match
    /// the same topics, so a publish matches one of them only.
    key: u32,
}

/// The selector streams a topic feeds, as far as registration `upto`.
struct Cached {
    upto: u64,
    hits: Vec<(StreamIdx, u64)>,
}

/// Why no selector stream could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorsFull {
    /// [`MAX_SELECTOR_STREAMS`] exist and all are read.
    All,
    /// [`MAX_ANON_SELECTOR_STREAMS`] made without a token exist, all read.
    Anonymous,
    /// [`MAX_ANON_SELECTORS_PER_PEER`] made from this address, all read.
    Peer,
}

#[derive(Default)]
pub(super) struct Topics {
    /// In registration order.
    selectors: Vec<Entry>,
    live: HashMap<StreamIdx, u64>,
    next_seq: u64,
    /// Per public stream: which selector streams its events also go to,
    /// so a publish matches each (topic, selector) pair once, not every
    /// selector every time.
    cache: HashMap<StreamIdx, Cached>,
    cached_hits: usize,
    anon: usize,
    per_peer: HashMap<PeerKey, usize>,
    aliases: HashMap<Box<str>, (EventId, bool)>,
    pub(super) alias_order: VecDeque<(EventId, Box<str>)>,
    /// Template matches run (what the cache saves shows here).
    pub(super) matches_run: u64,
    /// Selector keys interned at registration: key -> (number, selectors
    /// holding it), so a publish tells shared keys apart by number without
    /// hashing template text.
    keys: HashMap<Box<str>, (u32, u32)>,
    /// Numbers of keys no selector holds any more, to reuse.
    free_keys: Vec<u32>,
    /// Numbers ever handed out (one past the largest).
    key_slots: u32,
    /// Topics this node holds no stream for that no selector matched, as
    /// far as registration number (see [`Topics::wanted`]), and the bytes
    /// of their names.
    unwanted: HashMap<Box<str>, u64>,
    unwanted_bytes: usize,
    /// Heap bytes the entries hold beyond their structs (compiled
    /// selectors, their streams' structs and names, interned key text),
    /// kept as they come and go so [`Topics::bytes`] is constant-time.
    held: usize,
}

/// A hash table slot of `T`: the pair and its control byte.
fn slot<T>() -> usize {
    std::mem::size_of::<T>() + 1
}

impl Topics {
    /// Bytes the registry, its match cache and interned keys hold (an
    /// estimate from capacities and lengths), for the memory account's
    /// `selectors` kind, with the remembered unwanted topics. Aliases are
    /// publishers' state, not counted here.
    pub(super) fn bytes(&self) -> usize {
        self.selectors.capacity() * std::mem::size_of::<Entry>()
            + self.held
            + self.live.capacity() * slot::<(u32, u64)>()
            + self.cache.capacity() * slot::<(u32, Cached)>()
            + self.cached_hits * std::mem::size_of::<(u32, u64)>()
            + self.per_peer.capacity() * slot::<(PeerKey, usize)>()
            + self.keys.capacity() * slot::<(Box<str>, (u32, u32))>()
            + self.free_keys.capacity() * std::mem::size_of::<u32>()
            + self.unwanted.capacity() * slot::<(Box<str>, u64)>()
            + self.unwanted_bytes
    }

    /// What registering `sel` would add to [`Topics::bytes`] (0 when it is
    /// registered): checked against the memory account before a
    /// subscription makes it.
    pub(super) fn cost(&self, sel: &Selector) -> usize {
        if self.find(sel.as_str()).is_some() {
            return 0;
        }
        std::mem::size_of::<Entry>()
            + Self::entry_bytes(sel)
            + sel.key().len()
            + slot::<(u32, u64)>()
            + slot::<(Box<str>, (u32, u32))>()
            + slot::<(PeerKey, usize)>()
    }

    /// Heap bytes one entry holds beyond its struct: the compiled
    /// selector, and its stream's struct and name.
    fn entry_bytes(sel: &Selector) -> usize {
        sel.heap_bytes() + std::mem::size_of::<Stream>() + sel.as_str().len()
    }

    /// Selector streams that count against [`MAX_SELECTOR_STREAMS`].
    pub(super) fn len(&self) -> usize {
        self.selectors.iter().filter(|e| !e.sel.is_any()).count()
    }

    /// Whether stream `idx` is a selector stream.
    pub(super) fn is_selector(&self, idx: StreamIdx) -> bool {
        !self.live.is_empty() && self.live.contains_key(&idx)
    }

    pub(super) fn streams(&self) -> impl Iterator<Item = StreamIdx> + '_ {
        self.selectors.iter().map(|e| e.idx)
    }

    pub(super) fn find(&self, sel: &str) -> Option<StreamIdx> {
        self.selectors
            .iter()
            .find(|e| e.sel.as_str() == sel)
            .map(|e| e.idx)
    }

    /// Which pool a new selector stream for `owner` would overflow, and
    /// the unread stream to drop to make room (`None`: no room).
    pub(super) fn room(
        &self,
        streams: &Slab<Stream>,
        sel: &Selector,
        owner: Option<PeerKey>,
    ) -> Result<(), (SelectorsFull, Option<StreamIdx>)> {
        if sel.is_any() {
            return Ok(());
        }
        let unread = |pick: &dyn Fn(&Entry) -> bool| {
            self.selectors
                .iter()
                .filter(|e| !e.sel.is_any() && pick(e))
                .find(|e| streams.get(e.idx.slot()).is_some_and(|s| s.subs.is_empty()))
                .map(|e| e.idx)
        };
        if let Some(ip) = owner {
            if self.per_peer.get(&ip).copied().unwrap_or(0) >= MAX_ANON_SELECTORS_PER_PEER {
                return Err((SelectorsFull::Peer, unread(&|e| e.owner == Some(ip))));
            }
            if self.anon >= MAX_ANON_SELECTOR_STREAMS {
                return Err((SelectorsFull::Anonymous, unread(&|e| e.owner.is_some())));
            }
        }
        if self.len() >= MAX_SELECTOR_STREAMS {
            return Err((SelectorsFull::All, unread(&|_| true)));
        }
        Ok(())
    }

    pub(super) fn add(&mut self, sel: Selector, idx: StreamIdx, owner: Option<PeerKey>) {
        self.next_seq += 1;
        let owner = owner.filter(|_| !sel.is_any());
        if let Some(ip) = owner {
            self.anon += 1;
            *self.per_peer.entry(ip).or_insert(0) += 1;
        }
        self.live.insert(idx, self.next_seq);
        self.held += Self::entry_bytes(&sel);
        let key = match self.keys.get_mut(sel.key()) {
            Some((k, refs)) => {
                *refs += 1;
                *k
            }
            None => {
                let k = self.free_keys.pop().unwrap_or_else(|| {
                    self.key_slots += 1;
                    self.key_slots - 1
                });
                self.keys.insert(sel.key().into(), (k, 1));
                self.held += sel.key().len();
                k
            }
        };
        self.selectors.push(Entry {
            sel,
            idx,
            seq: self.next_seq,
            owner,
            key,
        });
    }

    /// A deleted stream stops being a selector stream, or a topic.
    pub(super) fn forget(&mut self, idx: StreamIdx) {
        if let Some(c) = self.cache.remove(&idx) {
            self.cached_hits -= c.hits.len();
        }
        if self.live.remove(&idx).is_none() {
            return;
        }
        if let Some(pos) = self.selectors.iter().position(|e| e.idx == idx) {
            let e = self.selectors.remove(pos);
            self.held = self.held.saturating_sub(Self::entry_bytes(&e.sel));
            if let Some((k, refs)) = self.keys.get_mut(e.sel.key()) {
                *refs -= 1;
                if *refs == 0 {
                    self.free_keys.push(*k);
                    self.keys.remove(e.sel.key());
                    self.held = self.held.saturating_sub(e.sel.key().len());
                }
            }
            if let Some(ip) = e.owner {
                self.anon -= 1;
                if let Some(n) = self.per_peer.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_peer.remove(&ip);
                    }
                }
            }
        }
    }

    /// `targets` plus the selector streams matching one of the public
    /// ones; `None` when no selector stream is added (the common case
    /// allocates nothing). Each topic is matched against a selector once
    /// (the result is cached), and selectors with the same key share one
    /// match, so a publish costs the selectors registered since the
    /// topic's last publish, not all of them.
    pub(super) fn fan_in(
        &mut self,
        streams: &Slab<Stream>,
        targets: &[StreamIdx],
    ) -> Option<Vec<StreamIdx>> {
        if self.selectors.is_empty() {
            return None;
        }
        let mut all: Option<Vec<StreamIdx>> = None;
        for &t in targets {
            let Some(s) = streams.get(t.slot()).filter(|s| !s.internal) else {
                continue;
            };
            let c = self.cache.entry(t).or_insert(Cached {
                upto: 0,
                hits: Vec::new(),
            });
            if c.upto < self.next_seq {
                let from = self.selectors.partition_point(|e| e.seq <= c.upto);
                // Per key number: 0 not matched yet, 1 no, 2 yes.
                let mut seen = vec![0u8; self.key_slots as usize];
                let topic = crate::auth::selector::Topic::new(&s.name);
                for e in &self.selectors[from..] {
                    let slot = &mut seen[e.key as usize];
                    if *slot == 0 {
                        self.matches_run += 1;
                        *slot = 1 + e.sel.matches_in(&topic) as u8;
                    }
                    let hit = *slot == 2;
                    if hit {
                        c.hits.push((e.idx, e.seq));
                        self.cached_hits += 1;
                    }
                }
                c.upto = self.next_seq;
            }
            let live = &self.live;
            let before = c.hits.len();
            c.hits.retain(|(i, sq)| live.get(i) == Some(sq));
            self.cached_hits -= before - c.hits.len();
            if !c.hits.is_empty() {
                let v = all.get_or_insert_with(|| targets.to_vec());
                v.extend(c.hits.iter().map(|&(i, _)| i));
            }
        }
        if self.cached_hits > MAX_CACHED_HITS {
            self.cache.clear();
            self.cached_hits = 0;
        }
        if let Some(v) = all.as_mut() {
            // Several topics can feed one selector stream: once each.
            let tail = &mut v[targets.len()..];
            tail.sort_unstable();
            let mut seen_last = None;
            let mut keep = targets.len();
            for i in targets.len()..v.len() {
                let x = v[i];
                if seen_last != Some(x) && !v[..targets.len()].contains(&x) {
                    v[keep] = x;
                    keep += 1;
                }
                seen_last = Some(x);
            }
            v.truncate(keep);
        }
        all
    }

    /// The selector streams whose selector matches `topic` (`*` included).
    pub(super) fn matching(&self, topic: &str) -> Vec<StreamIdx> {
        let t = crate::auth::selector::Topic::new(topic);
        self.selectors
            .iter()
            .filter(|e| e.sel.matches_in(&t))
            .map(|e| e.idx)
            .collect()
    }

    /// Whether a selector stream's selector matches `topic`, the name of a
    /// stream this node does not hold (an announcement from another node):
    /// then the node must hold it so its events reach that selector stream.
    /// A name no selector matches is remembered (bounded), so the next of
    /// its announcements is matched only against selectors registered since.
    pub(super) fn wanted(&mut self, topic: &str) -> bool {
        if self.selectors.is_empty() {
            return false;
        }
        let upto = self.unwanted.get(topic).copied().unwrap_or(0);
        if upto >= self.next_seq {
            return false;
        }
        let from = self.selectors.partition_point(|e| e.seq <= upto);
        let t = crate::auth::selector::Topic::new(topic);
        // Per key number: 0 not matched yet, 1 no, 2 yes.
        let mut seen = vec![0u8; self.key_slots as usize];
        for e in &self.selectors[from..] {
            let slot = &mut seen[e.key as usize];
            if *slot == 0 {
                self.matches_run += 1;
                *slot = 1 + e.sel.matches_in(&t) as u8;
            }
            if *slot == 2 {
                if self.unwanted.remove(topic).is_some() {
                    self.unwanted_bytes -= topic.len();
                }
                return true;
            }
        }
        match self.unwanted.get_mut(topic) {
            Some(u) => *u = self.next_seq,
            None => {
                if self.unwanted_bytes + topic.len() > MAX_UNWANTED_BYTES
                    || self.unwanted.len() >= MAX_UNWANTED
                {
                    self.unwanted.clear();
                    self.unwanted_bytes = 0;
                }
                self.unwanted_bytes += topic.len();
                self.unwanted.insert(topic.into(), self.next_seq);
            }
        }
        false
    }

    pub(super) fn alias(&mut self, alias: &str, id: EventId, private: bool) {
        if self.aliases.get(alias).is_some_and(|a| a.0 == id) {
            // The same event again (a bus announcement, then its fetch).
            return;
        }
        if self.alias_order.len() >= MAX_ALIASES {
            if let Some((old_id, old)) = self.alias_order.pop_front() {
                // A later event may have reused the alias: keep that one.
                if self.aliases.get(&old).is_some_and(|a| a.0 == old_id) {
                    self.aliases.remove(&old);
                }
            }
        }
        self.aliases.insert(alias.into(), (id, private));
        self.alias_order.push_back((id, alias.into()));
    }

    /// The id behind `alias`, and whether its event was private.
    pub(super) fn alias_id(&self, alias: &str) -> Option<(EventId, bool)> {
        self.aliases.get(alias).copied()
    }
}
