//! One stream's retained history: a ring of shared, encoded-once frames,
//! its byte accounting, and the record of what has been dropped from it.
//!
//! A frame is stored once with HTTP/1.1 chunk framing (`frame::chunk`)
//! around the SSE bytes, so a chunked connection writes it whole and
//! an identity (HTTP/1.0) connection writes the inner slice: one encoding,
//! shared by both. Nothing here knows about connections or sockets.

use std::collections::VecDeque;
use std::rc::Rc;

use super::StreamIdx;
use crate::frame;
use crate::id::{ConnKey, EventId};

/// One encoded event, shared by every ring it was published to.
#[derive(Clone)]
pub struct Frame {
    /// The server-assigned id; strictly increasing within a ring.
    pub id: EventId,
    /// Offset of this frame in the stream's byte history, to measure lag in O(1).
    pub start: u64,
    /// Offset among the stream's public frames only, so the lag of a
    /// subscriber that may not see private frames is O(1) too.
    pub(super) pub_start: u64,
    /// Chunk header, SSE bytes, chunk trailer.
    bytes: Rc<[u8]>,
    /// Length of the chunk header.
    head: u8,
    /// Only subscribers whose cursor may see private frames get it.
    pub private: bool,
}

impl Frame {
    /// Wraps SSE bytes in chunk framing.
    pub fn new(id: EventId, sse: &[u8]) -> Frame {
        Frame {
            id,
            start: 0,
            pub_start: 0,
            // At most 18 bytes (`frame::CHUNK_HEAD_MAX`).
            head: frame::chunk_head_len(sse.len()) as u8,
            bytes: frame::chunk(sse).into(),
            private: false,
        }
    }
    /// Marks the frame private (or not).
    pub fn with_private(mut self, private: bool) -> Frame {
        self.private = private;
        self
    }
    /// Whether a cursor that may (or may not) see private frames gets it.
    pub fn visible(&self, sees_private: bool) -> bool {
        sees_private || !self.private
    }
    /// The bytes a connection writes: chunk-framed or bare.
    pub fn wire(&self, chunked: bool) -> &[u8] {
        if chunked {
            &self.bytes
        } else {
            let end = self.bytes.len().saturating_sub(frame::CHUNK_END.len());
            self.bytes.get(self.head as usize..end).unwrap_or(&[])
        }
    }
    /// The SSE bytes alone.
    pub fn sse(&self) -> &[u8] {
        self.wire(false)
    }
    /// Bytes this frame holds in memory (what history budgets count).
    pub fn cost(&self) -> usize {
        self.bytes.len()
    }
    /// Where its bytes live: the same for every handle on one frame (the
    /// rings of a multi-stream publish, subscribers' tails).
    pub fn addr(&self) -> *const u8 {
        self.bytes.as_ptr()
    }
    /// How many handles keep its bytes alive (rings and tails).
    pub fn holders(&self) -> usize {
        Rc::strong_count(&self.bytes)
    }
    /// What [`Frame::cost`] will be for `sse_len` SSE bytes, known before
    /// the frame is built (so an oversized event is never copied).
    pub fn cost_for(sse_len: usize) -> usize {
        frame::chunk_len(sse_len)
    }
}

/// Who a public stream exists for, which decides the pool it counts
/// against (`--max-streams` each) and when it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Only subscribers asked for it (no credentials needed): counted in
    /// its own pool, so subscribers cannot use up the publishers' one.
    Subscribers,
    /// A publisher created it or published to it.
    Publisher,
    /// Created by `PUT /streams/NAME`: kept while empty (until the idle
    /// TTL), as an explicit creation asks.
    Explicit,
}

/// The end of the broker's LRU list of streams (a link, never a stream
/// anyone is handed: no slab key reaches it, so a lookup of it finds
/// nothing). A sentinel rather than `Option`, which would double the
/// links' size in every stream.
pub(super) const NIL: StreamIdx = StreamIdx::NIL;

/// History bounds of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Events retained.
    pub history: usize,
    /// Encoded bytes retained.
    pub history_bytes: usize,
}

/// One stream: its retained frames and its subscribers.
pub struct Stream {
    /// The stream's name.
    pub name: Box<str>,
    ring: VecDeque<Frame>,
    ring_bytes: usize,
    end_offset: u64,
    /// Bytes of public frames ever pushed (see [`Frame::pub_start`]).
    end_public: u64,
    /// The highest id dropped from this stream's history (`NONE`: none), so a
    /// resume from below it knows events may be missing.
    lost_upto: EventId,
    /// The same for public frames: what a subscriber that may not see
    /// private frames is told about, so evicting a private frame never
    /// shows up in its `gap`.
    lost_public_upto: EventId,
    /// Connection keys reading this stream.
    pub subs: Subs,
    /// Events ever published to it.
    pub published: u64,
    /// Public events ever published to it, the newest one's id (`NONE`: none),
    /// and how many of them are retained: what a reader that may not see
    /// private events may be told.
    pub published_public: u64,
    /// See [`Stream::published_public`].
    pub last_public_id: EventId,
    retained_public: usize,
    /// Id of its newest event (`EventId::NONE`: none yet).
    pub last_id: EventId,
    pub(super) dirty: bool,
    /// Frames and bytes appended since the stream last became dirty.
    pub(super) dirty_frames: usize,
    pub(super) dirty_bytes: usize,
    /// Internal streams (used by the built-in apps) are not listed and
    /// cannot be subscribed to through `/events`.
    pub internal: bool,
    /// What a `gap` calls the stream, when not its name: an app's internal
    /// stream is named for what its client asked for, not `!app/...`.
    pub display: Option<Box<str>>,
    pub(super) limits: Limits,
    /// Who it exists for.
    pub claim: Claim,
    /// Unix µs of the last publish, subscribe or unsubscribe (idle TTL).
    pub(super) touched_us: u64,
    /// Neighbours in the broker's LRU list of streams holding history
    /// (`prev` is older); `NIL` at the ends or when not listed.
    pub(super) lru_prev: StreamIdx,
    pub(super) lru_next: StreamIdx,
    pub(super) in_lru: bool,
}

impl Stream {
    pub(super) fn new(
        name: &str,
        lost_upto: EventId,
        internal: bool,
        limits: Limits,
        claim: Claim,
        now_us: u64,
    ) -> Self {
        Stream {
            name: name.into(),
            ring: VecDeque::new(),
            ring_bytes: 0,
            end_offset: 0,
            end_public: 0,
            lost_upto,
            lost_public_upto: lost_upto,
            subs: Subs::default(),
            published: 0,
            published_public: 0,
            last_public_id: EventId::NONE,
            retained_public: 0,
            last_id: EventId::NONE,
            dirty: false,
            dirty_frames: 0,
            dirty_bytes: 0,
            internal,
            display: None,
            limits,
            claim,
            touched_us: now_us,
            lru_prev: NIL,
            lru_next: NIL,
            in_lru: false,
        }
    }

    /// The name a `gap` event gives the stream.
    pub fn shown(&self) -> &str {
        self.display.as_deref().unwrap_or(&self.name)
    }

    /// Retained public frames.
    pub fn retained_public(&self) -> usize {
        self.retained_public
    }

    /// Whether a reader without a token may learn that this stream exists:
    /// not when it only ever carried private events (its name, counts and
    /// ids would tell of events it may not see).
    pub fn anonymous_visible(&self) -> bool {
        !self.internal && (self.published_public > 0 || self.published == 0)
    }

    /// This stream's history bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Retained frame count.
    pub fn retained(&self) -> usize {
        self.ring.len()
    }

    /// Retained bytes.
    pub fn retained_bytes(&self) -> usize {
        self.ring_bytes
    }

    /// The highest id dropped from this stream (`NONE`: none).
    pub fn lost_upto(&self) -> EventId {
        self.lost_upto
    }

    /// Index of the first retained frame with an id above `id`.
    pub(super) fn index_after(&self, id: EventId) -> usize {
        self.ring.partition_point(|f| f.id <= id)
    }

    /// The frame at ring index `i`.
    pub(super) fn at(&self, i: usize) -> Option<&Frame> {
        self.ring.get(i)
    }

    /// Retained frames with an id above `id`.
    pub fn frames_after(&self, id: EventId) -> impl Iterator<Item = &Frame> {
        self.ring.range(self.index_after(id)..)
    }

    /// Bytes a subscriber positioned at `id` still has to be sent (only
    /// public frames count for one that may not see private frames).
    pub fn lag_bytes(&self, id: EventId, sees_private: bool) -> u64 {
        match self.ring.get(self.index_after(id)) {
            Some(f) if sees_private => self.end_offset - f.start,
            Some(f) => self.end_public - f.pub_start,
            None => 0,
        }
    }

    /// Whether events with an id above `id` that this subscriber could see
    /// may have left this stream.
    pub fn lost_after(&self, id: EventId, sees_private: bool) -> bool {
        if sees_private {
            self.lost_upto > id
        } else {
            self.lost_public_upto > id
        }
    }

    /// The id of the last frame in the run of invisible frames right after
    /// `id` (or `id` when the next frame is visible): a subscriber that may
    /// not see them moves past them once, instead of every merge walking
    /// over them again.
    pub(super) fn skip_invisible(&self, id: EventId, sees_private: bool) -> EventId {
        if sees_private {
            return id;
        }
        self.ring
            .range(self.index_after(id)..)
            .take_while(|f| !f.visible(false))
            .last()
            .map_or(id, |f| f.id)
    }

    /// The highest public id dropped from this stream (`NONE`: none).
    pub(super) fn lost_public_upto(&self) -> EventId {
        self.lost_public_upto
    }

    /// Sets what may be missing up to (all frames, public ones): a selector
    /// stream rebuilt from the streams it matches knows exactly that, not
    /// what its name's tombstone says.
    pub(super) fn set_lost(&mut self, upto: EventId, public_upto: EventId) {
        self.lost_upto = upto;
        self.lost_public_upto = public_upto;
    }

    /// Where a subscriber that fell out of the history continues from: the
    /// id just below the oldest retained frame.
    pub fn floor(&self) -> EventId {
        match self.ring.front() {
            Some(f) => f.id.pred(),
            None => self.last_id.max(self.lost_upto),
        }
    }

    /// Id of the oldest retained frame.
    pub fn first_id(&self) -> Option<EventId> {
        self.ring.front().map(|f| f.id)
    }

    /// Appends a frame, evicting from the front past either bound. The
    /// caller has checked that the frame alone fits the byte bound.
    pub(super) fn push(&mut self, mut f: Frame) -> usize {
        let len = f.cost();
        f.start = self.end_offset;
        f.pub_start = self.end_public;
        if !f.private {
            self.end_public += len as u64;
            self.published_public += 1;
            self.last_public_id = f.id;
            self.retained_public += 1;
        }
        self.last_id = f.id;
        self.ring.push_back(f);
        self.end_offset += len as u64;
        self.ring_bytes += len;
        self.published += 1;
        let mut freed = 0;
        while self.ring.len() > self.limits.history.max(1)
            || (self.ring_bytes > self.limits.history_bytes && self.ring.len() > 1)
        {
            freed += self.evict_front();
        }
        freed
    }

    /// Treats every event up to `upto` as possibly missing: drops the
    /// retained frames at or below it and raises the loss mark. Returns
    /// whether the mark moved.
    pub(super) fn mark_lost(&mut self, upto: EventId) -> bool {
        while self.ring.front().is_some_and(|f| f.id <= upto) {
            self.evict_front();
        }
        let moved = upto > self.lost_upto;
        self.lost_upto = self.lost_upto.max(upto);
        // What was lost is unknown: public events may be among it.
        self.lost_public_upto = self.lost_public_upto.max(upto);
        moved
    }

    /// Drops the oldest frame; returns the bytes freed.
    pub(super) fn evict_front(&mut self) -> usize {
        match self.ring.pop_front() {
            Some(f) => {
                self.ring_bytes -= f.cost();
                self.lost_upto = self.lost_upto.max(f.id);
                if !f.private {
                    self.lost_public_upto = self.lost_public_upto.max(f.id);
                    self.retained_public -= 1;
                }
                f.cost()
            }
            None => 0,
        }
    }
}

/// The connections reading a stream, 4 bytes a slot. A subscriber's slot
/// never moves, so leaving is O(1) and a fan-out pass walking the slots is
/// not disturbed by others leaving; free slots form a list threaded
/// through the vector itself (a `slab::Slab<u32>` would spend 16 bytes a
/// slot, more than a third of an idle subscriber's whole cost).
#[derive(Debug, Default)]
pub struct Subs {
    slots: Vec<u32>,
    /// First free slot, or `NONE`.
    free: u32,
    len: u32,
}

/// Marks a free slot; the low bits hold the next free slot.
const FREE: u32 = 1 << 31;
const NONE: u32 = FREE - 1;

impl Subs {
    /// Adds a connection; returns its slot. Connection keys are below 2^31
    /// (see [`ConnKey`]), so a held slot never has the `FREE` bit.
    pub fn insert(&mut self, conn: ConnKey) -> u32 {
        self.len += 1;
        if self.slots.is_empty() {
            self.free = NONE;
        }
        let f = self.free;
        if f != NONE {
            if let Some(s) = self.slots.get_mut(f as usize) {
                self.free = *s & !FREE;
                *s = conn.0;
                return f;
            }
        }
        self.slots.push(conn.0);
        self.slots.len() as u32 - 1
    }
    /// Removes the connection in `slot` if it is `conn`.
    pub fn remove(&mut self, slot: u32, conn: ConnKey) -> bool {
        match self.slots.get_mut(slot as usize) {
            Some(s) if *s == conn.0 => {
                *s = FREE | self.free;
                self.free = slot;
                self.len -= 1;
                if self.len == 0 {
                    // Everyone left: give the memory back.
                    self.slots = Vec::new();
                    self.free = NONE;
                }
                true
            }
            _ => false,
        }
    }
    /// The connection in `slot`: `None` past the end, `Some(None)` when free.
    pub fn at(&self, slot: usize) -> Option<Option<ConnKey>> {
        self.slots
            .get(slot)
            .map(|&s| (s & FREE == 0).then_some(ConnKey(s)))
    }
    /// Subscribers.
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// Whether nobody reads the stream.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The connections, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = ConnKey> + '_ {
        self.slots
            .iter()
            .filter(|&&s| s & FREE == 0)
            .map(|&s| ConnKey(s))
    }
}

#[cfg(test)]
mod tests {
    use super::Subs;
    use crate::id::ConnKey;

    #[test]
    fn subs_reuse_free_slots_and_never_move_others() {
        let mut s = Subs::default();
        let a = s.insert(ConnKey(10));
        let b = s.insert(ConnKey(11));
        let c = s.insert(ConnKey(12));
        assert!(s.remove(b, ConnKey(11)));
        assert!(!s.remove(b, ConnKey(11)), "already gone");
        assert!(!s.remove(a, ConnKey(99)), "not that connection");
        assert_eq!(s.at(b as usize), Some(None));
        assert_eq!(s.iter().collect::<Vec<_>>(), [10, 12].map(ConnKey));
        assert_eq!(s.insert(ConnKey(13)), b, "the free slot is reused");
        assert_eq!(
            (s.at(a as usize), s.at(c as usize)),
            (Some(Some(ConnKey(10))), Some(Some(ConnKey(12))))
        );
        assert_eq!(s.at(3), None);
        for (slot, k) in [(a, 10), (b, 13), (c, 12)] {
            assert!(s.remove(slot, ConnKey(k)));
        }
        assert!(s.is_empty());
        assert_eq!(s.insert(ConnKey(20)), 0, "an emptied list starts over");
    }
}
