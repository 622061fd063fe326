//! The fan-out: which subscribers the driver writes to in a loop turn,
//! and what one `writev` to a subscriber holds.
//!
//! A publish marks its streams dirty in the broker; [`Fanout::begin`]
//! turns each into a pass over that stream's subscriber slab, and
//! [`Fanout::next`] hands out subscribers one at a time: the driver stops
//! after its budget (512 per turn), so a pass over a large audience is
//! spread over loop turns and subscribers late in a pass get what was
//! published meanwhile in the same write. A subscriber that used its byte
//! budget while still writable is owed a turn ([`Fanout::owe`]).
//!
//! For one subscriber, [`Batch::gather`] takes the frames it is owed (the
//! broker's merge, in id order) as up to [`MAX_IOV`] slices of shared
//! frames and at most [`WRITE_BUDGET`] bytes; after the `writev`,
//! [`Batch::wrote`] says how far its cursor moves and which frame was cut
//! (kept as a position into the shared frame, no copy).
//!
//! A cut frame is a handle on the shared frame. Once history evicts it,
//! the subscribers cut inside it are all that keep it alive: [`Tails`]
//! knows which connections hold such a handle and measures what only they
//! keep alive (each frame once), for the memory account's `tails` kind,
//! and names whom to drop past the account's bounds.
//!
//! It must not touch sockets or the reactor: the driver does the
//! `writev`s and decides what a blocked or slow subscriber means.

use std::collections::VecDeque;
use std::io::IoSlice;

use slab::Slab;

use super::conn::{Conn, ConnKey, State, Tail, Tick};
use crate::broker::{Broker, Frame, StreamIdx};
use crate::id::EventId;

/// Frames gathered into one `writev`.
pub const MAX_IOV: usize = 64;
/// Bytes written to one subscriber per turn before others get a go.
pub const WRITE_BUDGET: usize = 256 << 10;

/// Fan-out passes under way, subscribers owed a turn, and the tails left
/// by short writes.
#[derive(Debug, Default)]
pub struct Fanout {
    /// Passes in progress: a stream and the next subscriber slot.
    passes: VecDeque<(StreamIdx, usize)>,
    /// Reused buffer for the broker's dirty streams.
    dirty: Vec<StreamIdx>,
    /// Subscribers that used their write budget and are owed more.
    again: Vec<ConnKey>,
    /// Slow subscribers' stream tails (the account's `tails` kind).
    pub tails: Tails,
}

impl Fanout {
    /// Whether there is work for the next turn (the loop must not sleep).
    pub fn busy(&self) -> bool {
        !self.again.is_empty() || !self.passes.is_empty()
    }

    /// A subscriber still writable and still owed frames after its budget:
    /// no writable edge will come, so it goes again next turn.
    pub fn owe(&mut self, key: ConnKey) {
        self.again.push(key);
    }

    /// The subscribers owed a turn (emptied).
    pub fn take_owed(&mut self) -> Vec<ConnKey> {
        std::mem::take(&mut self.again)
    }

    /// Starts a pass over each stream published to since the last call.
    pub fn begin(&mut self, broker: &mut Broker) {
        broker.take_dirty(&mut self.dirty);
        for s in self.dirty.drain(..) {
            // A pass not yet begun already covers what was just published.
            if !self.passes.contains(&(s, 0)) {
                self.passes.push_back((s, 0));
            }
        }
    }

    /// The next subscriber of the passes under way, `None` when all are
    /// done. A subscriber of several dirty streams may come once per pass.
    pub fn next(&mut self, broker: &Broker) -> Option<ConnKey> {
        loop {
            let (s, i) = *self.passes.front()?;
            let Some(slot) = broker.subscriber_at(s, i) else {
                self.passes.pop_front();
                continue;
            };
            if let Some(p) = self.passes.front_mut() {
                p.1 += 1;
            }
            if slot.is_some() {
                return slot;
            }
        }
    }
}

/// Whether a blocked subscriber is more than `max` bytes behind
/// (`--max-pending-bytes`): its unsent output plus what the broker still
/// holds for it. Such a subscriber is dropped rather than let its tail pin
/// history.
pub fn too_slow<S>(conn: &Conn<S>, broker: &Broker, max: usize) -> bool {
    match conn {
        Conn {
            state: State::Streaming(cs),
            out: Some(out),
            ..
        } => out.pending_len() as u64 + broker.lag(cs) > max as u64,
        _ => false,
    }
}

/// Slow subscribers' stream tails, for the memory account.
///
/// The fan-out notes a connection when a short write leaves it a tail
/// ([`Tails::note`], the slow path only: a subscriber that keeps up costs
/// nothing here). [`Tails::measure`], at most once a tick and only while
/// some connection was noted, walks the noted ones (pruning those whose
/// tail drained or that are gone), groups their tails by frame and counts
/// a frame's cost once when its holders are all tails (history no longer
/// has it): what only the tails keep alive, exactly.
#[derive(Debug, Default)]
pub struct Tails {
    /// Connections left a tail since they were last pruned (sorted and
    /// deduplicated at each measure; a key may be stale until then).
    held: Vec<ConnKey>,
    /// The tick of the last measure.
    at: Tick,
    /// Reused: (frame address, cost, its holders, the tail's connection).
    found: Vec<(usize, usize, usize, ConnKey)>,
}

/// What [`Tails::measure`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Measured {
    /// Bytes only tails keep alive, each frame once.
    pub bytes: usize,
    /// Connections to drop to come back within the bound: every holder of
    /// the largest tail-only frames first (dropping one holder of a shared
    /// frame frees nothing).
    pub cut: Vec<ConnKey>,
    /// What dropping them frees.
    pub cut_bytes: usize,
}

impl Tails {
    /// A short write left `key` a tail.
    pub fn note(&mut self, key: ConnKey) {
        self.held.push(key);
    }

    /// Whether a measure is due at `now`: some connection may hold a tail
    /// and this tick has not been measured.
    pub fn due(&self, now: Tick) -> bool {
        !self.held.is_empty() && now != self.at
    }

    /// Measures what only tails keep alive, `allowed` being what the
    /// account lets them hold; prunes connections without a tail.
    pub fn measure<S>(&mut self, conns: &Slab<Conn<S>>, now: Tick, allowed: usize) -> Measured {
        self.at = now;
        self.held.sort_unstable();
        self.held.dedup();
        let found = &mut self.found;
        found.clear();
        self.held.retain(|&key| {
            let Some(t) = conns
                .get(key.idx())
                .and_then(|c| c.out.as_ref())
                .and_then(|o| o.tail.as_ref())
            else {
                return false;
            };
            let f = &t.frame;
            found.push((f.addr() as usize, f.cost(), f.holders(), key));
            true
        });
        found.sort_unstable();
        // Tail-only frames: (cost, range of `found` holding it).
        let mut only = Vec::new();
        let mut m = Measured::default();
        let mut i = 0;
        while i < found.len() {
            let (addr, cost, holders, _) = found[i];
            let n = found[i..].iter().take_while(|f| f.0 == addr).count();
            if holders == n {
                m.bytes += cost;
                only.push((cost, i..i + n));
            }
            i += n;
        }
        if m.bytes > allowed {
            only.sort_unstable_by_key(|o| std::cmp::Reverse(o.0));
            for (cost, range) in only {
                if m.bytes - m.cut_bytes <= allowed {
                    break;
                }
                m.cut_bytes += cost;
                m.cut.extend(found[range].iter().map(|f| f.3));
            }
        }
        m
    }
}

/// The frames of one `writev` to a subscriber.
pub struct Batch<'f> {
    iov: [IoSlice<'f>; MAX_IOV],
    frames: [Option<&'f Frame>; MAX_IOV],
    n: usize,
    total: usize,
    more: bool,
    chunked: bool,
}

/// What a `writev` of a [`Batch`] did.
#[derive(Debug)]
pub struct Wrote {
    /// Frames begun (a cut one counts: its rest is queued, never re-sent).
    pub sent: u64,
    /// The id of the last frame begun: the cursor moves to it.
    pub last: Option<EventId>,
    /// The cut frame's unwritten rest.
    pub tail: Option<Tail>,
    /// The socket took less than the batch: it is blocked until its
    /// writable edge.
    pub short: bool,
}

impl<'f> Batch<'f> {
    /// The first frames of `owed`, in order, as the subscriber's wire form
    /// (`chunked` or not), up to [`MAX_IOV`] frames and about `budget`
    /// bytes (the frame that passes it is the last).
    pub fn gather(owed: impl Iterator<Item = &'f Frame>, chunked: bool, budget: usize) -> Self {
        let mut b = Batch {
            iov: [IoSlice::new(&[]); MAX_IOV],
            frames: [None; MAX_IOV],
            n: 0,
            total: 0,
            more: false,
            chunked,
        };
        for f in owed {
            if b.n == MAX_IOV || b.total >= budget {
                b.more = true;
                break;
            }
            let w = f.wire(chunked);
            b.iov[b.n] = IoSlice::new(w);
            b.frames[b.n] = Some(f);
            b.n += 1;
            b.total += w.len();
        }
        b
    }

    /// The slices to write.
    pub fn slices(&self) -> &[IoSlice<'f>] {
        &self.iov[..self.n]
    }

    /// Whether nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Whether more frames are owed after this batch.
    pub fn more(&self) -> bool {
        self.more
    }

    /// Where a `writev` of this batch that took `written` bytes stopped.
    pub fn wrote(&self, written: usize) -> Wrote {
        // The cut may fall anywhere, chunk framing included: a handle on
        // the shared frame, not a copy of its rest.
        let (sent, cut) = split_write(self.slices().iter().map(|s| s.len()), written);
        let last = sent
            .checked_sub(1)
            .and_then(|i| self.frames.get(i).copied().flatten())
            .map(|f| f.id);
        let tail = cut.and_then(|(i, at)| {
            self.frames.get(i).copied().flatten().map(|f| Tail {
                frame: f.clone(),
                chunked: self.chunked,
                at,
            })
        });
        Wrote {
            sent: sent as u64,
            last,
            short: tail.is_some() || written < self.total,
            tail,
        }
    }
}

/// Where a `writev` of slices of `lens` that took `written` bytes stopped:
/// how many slices it began (each is advanced past: a begun slice's rest
/// goes to the connection's buffer) and, for a cut one, its index and the
/// offset of its unwritten tail.
fn split_write(
    lens: impl Iterator<Item = usize>,
    written: usize,
) -> (usize, Option<(usize, usize)>) {
    let mut left = written;
    let mut sent = 0;
    for (i, len) in lens.enumerate() {
        if left >= len {
            left -= len;
            sent += 1;
        } else {
            if left > 0 {
                return (sent + 1, Some((i, left)));
            }
            break;
        }
    }
    (sent, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Limits, Resume};
    use crate::event::Event;

    /// Every possible cut of a batch of chunk-framed (and bare) frames,
    /// including inside chunk headers and trailers: the bytes written plus
    /// the kept tail are exactly the begun frames, and a cut frame is
    /// counted as sent (its rest is queued, never re-sent).
    #[test]
    fn every_cut_resumes_exactly() {
        let frames: Vec<Frame> = [1usize, 0x10, 0xff, 0x100, 3, 4097]
            .iter()
            .enumerate()
            .map(|(i, &n)| Frame::new(EventId::new(i as u64 + 1), &vec![b'x'; n]))
            .collect();
        for chunked in [true, false] {
            let slices: Vec<&[u8]> = frames.iter().map(|f| f.wire(chunked)).collect();
            let all: Vec<u8> = slices.concat();
            for written in 0..=all.len() {
                let (sent, cut) = split_write(slices.iter().map(|s| s.len()), written);
                let mut out = all[..written].to_vec();
                if let Some((i, at)) = cut {
                    assert_eq!(i + 1, sent);
                    assert!(at > 0 && at < slices[i].len());
                    out.extend_from_slice(&slices[i][at..]);
                }
                assert_eq!(out, slices[..sent].concat(), "cut at {written}");
                let whole: usize = slices[..sent].iter().map(|s| s.len()).sum();
                assert!(whole >= written && (cut.is_some() || whole == written));
            }
        }
    }

    fn frames(sizes: &[usize]) -> Vec<Frame> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Frame::new(EventId::new(i as u64 + 1), &vec![b'x'; n]))
            .collect()
    }

    #[test]
    fn a_batch_stops_at_the_slice_count_or_the_byte_budget() {
        let fs = frames(&[10; MAX_IOV + 5]);
        let b = Batch::gather(fs.iter(), false, WRITE_BUDGET);
        assert_eq!((b.slices().len(), b.more()), (MAX_IOV, true));
        // 10 bytes each: the frame that reaches 25 is the last.
        let b = Batch::gather(fs.iter(), false, 25);
        assert_eq!((b.slices().len(), b.more()), (3, true));
        let b = Batch::gather(fs[..2].iter(), true, 25);
        assert_eq!((b.slices().len(), b.more()), (2, false));
        assert_eq!(b.slices()[0].len(), fs[0].wire(true).len());
        assert!(Batch::gather(fs[..0].iter(), true, 25).is_empty());
    }

    #[test]
    fn a_short_write_keeps_the_cut_frame() {
        let fs = frames(&[10, 20, 30]);
        let b = Batch::gather(fs.iter(), false, WRITE_BUDGET);
        let w = b.wrote(60);
        assert_eq!((w.sent, w.last, w.short), (3, Some(EventId::new(3)), false));
        assert!(w.tail.is_none());
        // 15 bytes: the first frame and half the second.
        let w = b.wrote(15);
        assert_eq!((w.sent, w.last, w.short), (2, Some(EventId::new(2)), true));
        let t = w.tail.unwrap();
        assert_eq!(
            (t.frame.id, t.at, t.pending().len()),
            (EventId::new(2), 5, 15)
        );
        // At a frame boundary: blocked, nothing cut.
        let w = b.wrote(30);
        assert_eq!((w.sent, w.last, w.short), (2, Some(EventId::new(2)), true));
        assert!(w.tail.is_none());
        let w = b.wrote(0);
        assert_eq!((w.sent, w.last, w.short), (0, None, true));
    }

    fn broker() -> Broker {
        let limits = Limits {
            history: 100,
            history_bytes: 1 << 20,
        };
        Broker::new(1_000, limits, 10)
    }

    /// Passes hand out each dirty stream's subscribers in slab order, in
    /// as many turns as the budget needs, once per publish burst.
    #[test]
    fn passes_cover_every_subscriber_once_across_turns() {
        let mut b = broker();
        let s = b.resolve(&["a", "b"], true).unwrap();
        for key in 0..5 {
            b.subscribe(ConnKey(key), &s[..1], &Resume::Live);
        }
        b.subscribe(ConnKey(9), &s[1..], &Resume::Live);
        let mut f = Fanout::default();
        f.begin(&mut b);
        assert!(!f.busy());
        b.publish(&s[..1], &Event::new("x"), 2_000).unwrap();
        b.publish(&s[..1], &Event::new("y"), 2_000).unwrap();
        f.begin(&mut b);
        assert!(f.busy());
        // A turn with a budget of 3, then the rest.
        let turn: Vec<u32> = (0..3).map_while(|_| f.next(&b)).map(|k| k.0).collect();
        assert_eq!(turn, [0, 1, 2]);
        // Published mid-pass: a new pass, after the one under way.
        b.publish(&s, &Event::new("z"), 2_000).unwrap();
        f.begin(&mut b);
        let rest: Vec<u32> = std::iter::from_fn(|| f.next(&b)).map(|k| k.0).collect();
        assert_eq!(rest, [3, 4, 0, 1, 2, 3, 4, 9]);
        assert!(!f.busy());
        // A subscriber gone mid-pass is skipped.
        b.publish(&s[..1], &Event::new("w"), 2_000).unwrap();
        f.begin(&mut b);
        let c = b.subscribe(ConnKey(7), &s[..1], &Resume::Live).cursors;
        b.unsubscribe(ConnKey(7), &c);
        let gone = b.subscribe(ConnKey(8), &s[..1], &Resume::Live).cursors;
        assert_eq!(f.next(&b), Some(ConnKey(0)));
        b.unsubscribe(ConnKey(8), &gone);
        let rest: Vec<u32> = std::iter::from_fn(|| f.next(&b)).map(|k| k.0).collect();
        assert_eq!(rest, [1, 2, 3, 4]);
        f.owe(ConnKey(4));
        assert!(f.busy());
        assert_eq!(f.take_owed(), [ConnKey(4)]);
    }

    fn tailed(frame: &Frame) -> Conn<()> {
        let mut c = Conn::new((), 0, 0);
        c.out = Some(Box::new(crate::reactor::conn::Out {
            tail: Some(Tail {
                frame: frame.clone(),
                chunked: true,
                at: 1,
            }),
            buf: Vec::new(),
            pos: 0,
            since: 0,
        }));
        c
    }

    /// Tails cost the account only what history no longer holds, each
    /// frame once however many subscribers were cut in it; past the bound
    /// the holders of the largest such frames are named; drained or gone
    /// connections are pruned, and nothing is due once none is left.
    #[test]
    fn tails_count_what_only_they_keep_alive() {
        let fs = frames(&[100, 300, 50]);
        let mut ring: Vec<Frame> = fs.clone();
        let mut conns: Slab<Conn<()>> = Slab::new();
        let mut t = Tails::default();
        assert!(!t.due(1));
        // Three subscribers cut in frame 1, one in frame 2, one in 3.
        let mut keys = Vec::new();
        for f in [&fs[0], &fs[0], &fs[0], &fs[1], &fs[2]] {
            let k = ConnKey::of(conns.insert(tailed(f)));
            t.note(k);
            keys.push(k);
        }
        t.note(keys[0]);
        drop(fs);
        assert!(t.due(1));
        // History still has every frame: the tails keep nothing alive.
        assert_eq!(t.measure(&conns, 1, 0), Measured::default());
        assert!(!t.due(1), "once a tick");
        // History evicts frames 1 and 2: counted once each.
        let cost = |i: usize| ring[i].cost();
        let (c1, c2, c3) = (cost(0), cost(1), cost(2));
        ring.drain(..2);
        let m = t.measure(&conns, 2, usize::MAX);
        assert_eq!((m.bytes, m.cut.len()), (c1 + c2, 0));
        // Room for less: frame 2's holder goes first (the largest); then
        // all three holders of frame 1.
        let m = t.measure(&conns, 3, c1);
        assert_eq!(
            (m.bytes, m.cut_bytes, &m.cut[..]),
            (c1 + c2, c2, &keys[3..4])
        );
        let m = t.measure(&conns, 4, 0);
        assert_eq!(m.cut_bytes, c1 + c2);
        assert_eq!(m.cut, [keys[3], keys[0], keys[1], keys[2]]);
        // One holder of frame 1 drained, another is gone: the last still
        // keeps it alive alone.
        conns[keys[0].idx()].out = None;
        conns.remove(keys[1].idx());
        conns.remove(keys[3].idx());
        assert_eq!(t.measure(&conns, 5, usize::MAX).bytes, c1);
        assert_eq!(t.held, [keys[2], keys[4]]);
        // History evicts frame 3 too; then the connections go.
        ring.clear();
        assert_eq!(t.measure(&conns, 6, usize::MAX).bytes, c1 + c3);
        conns.clear();
        assert_eq!(t.measure(&conns, 7, usize::MAX), Measured::default());
        assert!(!t.due(8));
    }

    #[test]
    fn a_blocked_subscriber_too_far_behind_is_too_slow() {
        let mut b = broker();
        let s = b.resolve(&["a"], true).unwrap();
        let cursors = b.subscribe(ConnKey(1), &s, &Resume::Live).cursors;
        let mut c = Conn::new((), 0, 0);
        c.state = State::Streaming(cursors);
        // Drained: never too slow, however much is owed.
        b.publish(&s, &Event::new("x".repeat(100)), 2_000).unwrap();
        assert!(!too_slow(&c, &b, 10));
        // Blocked with 20 unsent bytes, and one frame owed.
        c.out = Some(Box::new(crate::reactor::conn::Out {
            tail: None,
            buf: vec![0; 20],
            pos: 0,
            since: 0,
        }));
        let State::Streaming(cs) = &c.state else {
            panic!()
        };
        let behind = 20 + b.lag(cs) as usize;
        assert!(behind > 120, "{behind}");
        assert!(!too_slow(&c, &b, behind));
        assert!(too_slow(&c, &b, behind - 1));
    }
}
