//! The merge of a subscriber's streams: the frames it is owed, in id order
//! across every stream it reads, each frame once even when it was
//! published to several of them.
//!
//! A private frame is yielded only through a cursor that may see private
//! frames; other cursors step over it as if it were not there.
//!
//! Also the newest frames of several streams merged the same way
//! ([`newest`]), what a selector stream made now starts with.
//!
//! It reads shared frames and writes nothing; [`newest`] hands back
//! clones of them (a reference count each), never the bytes again.

use super::ring::{Frame, Stream};
use super::{Cursor, StreamIdx};
use crate::id::EventId;
use slab::Slab;

/// Streams merged without a heap allocation; more use a `Vec`.
const INLINE: usize = 16;

enum Positions {
    Inline([usize; INLINE]),
    Heap(Vec<usize>),
}

impl Positions {
    fn as_mut(&mut self) -> &mut [usize] {
        match self {
            Positions::Inline(a) => a,
            Positions::Heap(v) => v,
        }
    }
}

/// Frames owed to one subscriber, oldest first.
pub struct Merge<'a> {
    streams: &'a Slab<Stream>,
    cursors: &'a [Cursor],
    pos: Positions,
    /// The id of the last frame yielded (frames at or below it are skipped:
    /// an event published to two of the streams appears in both rings).
    last: EventId,
}

impl<'a> Merge<'a> {
    pub(super) fn new(streams: &'a Slab<Stream>, cursors: &'a [Cursor]) -> Merge<'a> {
        let mut pos = if cursors.len() <= INLINE {
            Positions::Inline([0; INLINE])
        } else {
            Positions::Heap(vec![0; cursors.len()])
        };
        let p = pos.as_mut();
        let mut last = EventId::MAX;
        for (i, c) in cursors.iter().enumerate() {
            if let Some(s) = streams.get(c.stream.slot()) {
                p[i] = s.index_after(c.last_id);
            }
            last = last.min(c.last_id);
        }
        Merge {
            streams,
            cursors,
            pos,
            last: if cursors.is_empty() {
                EventId::NONE
            } else {
                last
            },
        }
    }
}

impl<'a> Iterator for Merge<'a> {
    type Item = &'a Frame;

    fn next(&mut self) -> Option<&'a Frame> {
        let streams = self.streams;
        if let [c] = self.cursors {
            // One stream: no comparison needed.
            let s = streams.get(c.stream.slot())?;
            let sees = c.sees_private();
            let p = &mut self.pos.as_mut()[0];
            loop {
                let f = s.at(*p)?;
                *p += 1;
                if f.visible(sees) {
                    return Some(f);
                }
            }
        }
        let last = self.last;
        let pos = self.pos.as_mut();
        let mut best: Option<(usize, &'a Frame)> = None;
        for (i, c) in self.cursors.iter().enumerate() {
            let Some(s) = streams.get(c.stream.slot()) else {
                continue;
            };
            let sees = c.sees_private();
            while let Some(f) = s.at(pos[i]) {
                if f.id <= last || !f.visible(sees) {
                    pos[i] += 1;
                } else {
                    break;
                }
            }
            if let Some(f) = s.at(pos[i]) {
                if best.is_none_or(|(_, b)| f.id < b.id) {
                    best = Some((i, f));
                }
            }
        }
        let (i, f) = best?;
        pos[i] += 1;
        self.last = f.id;
        Some(f)
    }
}

/// What a selector stream made now starts with: the newest frames of the
/// streams it matches, oldest first, each once.
pub(super) struct Newest {
    /// The frames, oldest first.
    pub frames: Vec<Frame>,
    /// The newest id left out for the bounds (`NONE`: none).
    pub left_out: EventId,
    /// The newest public id left out (`NONE`: none), so a reader that may
    /// not see private frames is not told of those.
    pub left_out_public: EventId,
}

/// The newest frames of `from` in id order (a frame in several of them
/// once): at most `max_frames`, and past the first at most `max_bytes`
/// of frame cost, the bounds a ring of those limits keeps. A heap over the
/// rings' newest frames, so the cost is the frames taken (times log of the
/// rings), however much the rings hold.
pub(super) fn newest(
    streams: &Slab<Stream>,
    from: &[StreamIdx],
    max_frames: usize,
    max_bytes: usize,
) -> Newest {
    use std::collections::BinaryHeap;
    let ring = |k: usize| streams.get(from[k].slot());
    // Per ring: how many of its frames are not taken yet (newest last).
    let mut left: Vec<usize> = (0..from.len())
        .map(|k| ring(k).map_or(0, |s| s.retained()))
        .collect();
    let mut heap: BinaryHeap<(EventId, usize)> = BinaryHeap::with_capacity(from.len());
    for (k, &n) in left.iter().enumerate() {
        if let Some(f) = n.checked_sub(1).and_then(|i| ring(k)?.at(i)) {
            heap.push((f.id, k));
        }
    }
    let mut out = Newest {
        frames: Vec::new(),
        left_out: EventId::NONE,
        left_out_public: EventId::NONE,
    };
    let mut bytes = 0usize;
    let mut last = EventId::MAX;
    // Past the bounds only the newest public frame left out is looked
    // for; after this many private ones it is taken to be the newest one.
    let mut scan = max_frames;
    while let Some((id, k)) = heap.pop() {
        left[k] -= 1;
        let Some(f) = ring(k).and_then(|s| s.at(left[k])) else {
            continue;
        };
        if let Some(next) = left[k].checked_sub(1).and_then(|i| ring(k)?.at(i)) {
            heap.push((next.id, k));
        }
        if id == last {
            // The same event through another of the streams.
            continue;
        }
        last = id;
        let full = out.frames.len() >= max_frames
            || (!out.frames.is_empty() && bytes + f.cost() > max_bytes);
        if out.left_out == EventId::NONE && !full {
            bytes += f.cost();
            out.frames.push(f.clone());
            continue;
        }
        if out.left_out == EventId::NONE {
            out.left_out = id;
        }
        if !f.private {
            out.left_out_public = id;
            break;
        }
        scan = scan.saturating_sub(1);
        if scan == 0 {
            out.left_out_public = out.left_out;
            break;
        }
    }
    out.frames.reverse();
    out
}
