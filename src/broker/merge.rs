//! The merge of a subscriber's streams: the frames it is owed, in id order
//! across every stream it reads, each frame once even when it was
//! published to several of them.
//!
//! A private frame is yielded only through a cursor that may see private
//! frames; other cursors step over it as if it were not there.
//!
//! An iterator over shared frames; it copies nothing and writes nothing.

use super::ring::{Frame, Stream};
use super::Cursor;
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
