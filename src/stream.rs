//! Streams and their shared history: the id clock, the per-stream ring of
//! encoded-once frames, the subscriber lists, and the resume arithmetic
//! (which position each requested stream starts at, and which streams need
//! a `gap`).
//!
//! A subscriber holds a sequence number into a ring, never a copy of a
//! frame. This module does no I/O and never reads the clock itself: the
//! reactor passes `now` in, so everything here is testable without sleeping.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use slab::Slab;

/// One encoded event, shared by every ring it was published to.
#[derive(Clone)]
pub struct Frame {
    /// The server-assigned id; strictly increasing within a ring.
    pub id: u64,
    /// Offset of this frame in the stream's byte history, to measure lag in O(1).
    pub start: u64,
    /// The encoded bytes (`id:`, `event:`, `data:` lines and the blank line).
    pub bytes: Rc<[u8]>,
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
    /// The lowest id this process can have assigned.
    pub fn first(&self) -> u64 {
        self.first
    }
    /// The last id assigned (or `first - 1` before any).
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// History bounds of every stream.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Events retained per stream.
    pub history: usize,
    /// Bytes retained per stream.
    pub history_bytes: usize,
}

/// One stream: its retained frames and its subscribers.
pub struct Stream {
    /// The stream's name.
    pub name: Box<str>,
    ring: VecDeque<Frame>,
    ring_bytes: usize,
    first_seq: u64,
    end_offset: u64,
    /// The highest id dropped from this stream's history (0: none), so a
    /// resume from below it knows events may be missing.
    lost_upto: u64,
    /// Connection keys reading this stream; a connection's cursor stores its
    /// index here so removal is a swap-remove.
    pub subs: Vec<u32>,
    /// Events ever published to it.
    pub published: u64,
    /// Id of its newest event (0: none yet).
    pub last_id: u64,
    dirty: bool,
    /// Where the history stood when the stream last became dirty: frames
    /// after it have not been offered to subscribers yet.
    dirty_seq: u64,
    dirty_offset: u64,
    /// Internal streams (used by the built-in apps) are not listed and cannot
    /// be subscribed to through `/events`.
    pub internal: bool,
    /// This stream's history bounds (internal streams may be tighter than
    /// the server-wide `--history`/`--history-bytes`).
    limits: Limits,
}

impl Stream {
    fn new(name: &str, lost_upto: u64, internal: bool, limits: Limits) -> Self {
        Stream {
            name: name.into(),
            ring: VecDeque::new(),
            ring_bytes: 0,
            first_seq: 0,
            end_offset: 0,
            lost_upto,
            subs: Vec::new(),
            published: 0,
            last_id: 0,
            dirty: false,
            dirty_seq: 0,
            dirty_offset: 0,
            internal,
            limits,
        }
    }

    /// Sequence number the next published frame will get.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.ring.len() as u64
    }

    /// Sequence number of the oldest retained frame.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Retained frame count.
    pub fn retained(&self) -> usize {
        self.ring.len()
    }

    /// Retained bytes.
    pub fn retained_bytes(&self) -> usize {
        self.ring_bytes
    }

    /// The frame at `seq`, if still retained.
    pub fn frame(&self, seq: u64) -> Option<&Frame> {
        let i = seq.checked_sub(self.first_seq)?;
        self.ring.get(usize::try_from(i).ok()?)
    }

    /// Bytes between `seq` and the end of the history: how far a subscriber
    /// at `seq` lags.
    pub fn lag_bytes(&self, seq: u64) -> u64 {
        match self.frame(seq) {
            Some(f) => self.end_offset - f.start,
            None => 0,
        }
    }

    /// The first sequence whose frame has an id greater than `id`.
    pub fn seq_after(&self, id: u64) -> u64 {
        self.first_seq + self.ring.partition_point(|f| f.id <= id) as u64
    }

    /// Whether events with an id above `id` may have left this stream.
    pub fn lost_after(&self, id: u64) -> bool {
        self.lost_upto > id
    }

    /// Iterates retained frames from `seq` on.
    pub fn frames_from(&self, seq: u64) -> impl Iterator<Item = &Frame> {
        let skip = seq.saturating_sub(self.first_seq) as usize;
        self.ring.iter().skip(skip)
    }

    fn push(&mut self, id: u64, bytes: Rc<[u8]>) {
        let limits = self.limits;
        let len = bytes.len();
        self.ring.push_back(Frame {
            id,
            start: self.end_offset,
            bytes,
        });
        self.end_offset += len as u64;
        self.ring_bytes += len;
        self.published += 1;
        self.last_id = id;
        // The newest frame always stays: caught-up subscribers still need it
        // even when it alone is over the byte budget.
        while self.ring.len() > 1
            && (self.ring.len() > limits.history.max(1) || self.ring_bytes > limits.history_bytes)
        {
            if let Some(f) = self.ring.pop_front() {
                self.ring_bytes -= f.bytes.len();
                self.first_seq += 1;
                self.lost_upto = self.lost_upto.max(f.id);
            }
        }
    }
}

/// Why a stream could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// The name is not `[A-Za-z0-9._:@/-]{1,128}`.
    BadName,
    /// It does not exist and auto-creation is off.
    NotFound,
    /// `--max-streams` exist already.
    TooMany,
}

impl StreamError {
    /// The message for the JSON error body.
    pub fn message(self) -> &'static str {
        match self {
            StreamError::BadName => {
                "stream names are 1..=128 bytes of letters, digits and . _ : @ / -"
            }
            StreamError::NotFound => "no such stream (auto-creation is off)",
            StreamError::TooMany => "too many streams exist (--max-streams)",
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

/// Where a new subscriber starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// No Last-Event-ID: live events only.
    Live,
    /// Resume after this id (the raw text is kept for the `gap` event).
    After(u64, String),
    /// A Last-Event-ID that is not a number.
    Unparsable(String),
}

impl Resume {
    /// Interprets a Last-Event-ID value.
    pub fn parse(raw: Option<&str>) -> Resume {
        match raw {
            None => Resume::Live,
            Some(s) => match s.trim().parse::<u64>() {
                Ok(n) => Resume::After(n, s.to_string()),
                Err(_) => Resume::Unparsable(s.to_string()),
            },
        }
    }
}

/// The outcome of resume planning: a start sequence per stream, and the
/// streams to name in a `gap` event (empty: no gap).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Each stream and the sequence it starts at.
    pub starts: Vec<(u32, u64)>,
    /// Streams whose events after the cursor may be missing.
    pub gap: Vec<u32>,
}

/// Tombstones kept for deleted streams, so a recreated stream still knows
/// events were dropped; bounded so deleting names cannot grow memory.
const MAX_TOMBSTONES: usize = 4096;

/// Every stream of the server, by index and by name.
pub struct Streams {
    slots: Slab<Stream>,
    by_name: HashMap<Box<str>, u32>,
    tombstones: HashMap<Box<str>, u64>,
    dirty: Vec<u32>,
    public: usize,
    /// The server-wide id counter.
    pub ids: IdClock,
    /// History bounds.
    pub limits: Limits,
    /// Cap on public streams.
    pub max_streams: usize,
}

impl Streams {
    /// An empty registry whose id clock starts at `now_us`.
    pub fn new(now_us: u64, limits: Limits, max_streams: usize) -> Self {
        Streams {
            slots: Slab::new(),
            by_name: HashMap::new(),
            tombstones: HashMap::new(),
            dirty: Vec::new(),
            public: 0,
            ids: IdClock::new(now_us),
            limits,
            max_streams,
        }
    }

    /// Number of public streams (internal app streams are not counted against
    /// `--max-streams`).
    pub fn len(&self) -> usize {
        self.public
    }

    /// Whether there are no streams at all.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Number of streams, internal ones included.
    pub fn total(&self) -> usize {
        self.slots.len()
    }

    /// Looks a stream up by name.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }

    /// Finds a stream or, when `create`, makes it.
    pub fn get_or_create(
        &mut self,
        name: &str,
        create: bool,
        internal: bool,
    ) -> Result<u32, StreamError> {
        let limits = self.limits;
        self.create_with(name, create, internal, limits)
    }

    /// Finds or makes an internal stream (one the apps own) whose history is
    /// bounded by `cap` as well as by the server-wide limits: apps make one
    /// stream per member or user, so the server-wide bounds multiplied by
    /// their number would be no bound at all.
    pub fn get_or_create_internal(&mut self, name: &str, cap: Limits) -> Result<u32, StreamError> {
        let limits = Limits {
            history: self.limits.history.min(cap.history),
            history_bytes: self.limits.history_bytes.min(cap.history_bytes),
        };
        self.create_with(name, true, true, limits)
    }

    fn create_with(
        &mut self,
        name: &str,
        create: bool,
        internal: bool,
        limits: Limits,
    ) -> Result<u32, StreamError> {
        if let Some(i) = self.find(name) {
            return Ok(i);
        }
        if !internal && !valid_name(name) {
            return Err(StreamError::BadName);
        }
        if !create {
            return Err(StreamError::NotFound);
        }
        if !internal && self.public >= self.max_streams {
            return Err(StreamError::TooMany);
        }
        if !internal {
            self.public += 1;
        }
        let lost = self.tombstones.remove(name).unwrap_or(0);
        let idx = self.slots.insert(Stream::new(name, lost, internal, limits)) as u32;
        self.by_name.insert(name.into(), idx);
        Ok(idx)
    }

    /// The stream at `idx`.
    pub fn get(&self, idx: u32) -> Option<&Stream> {
        self.slots.get(idx as usize)
    }

    /// The stream at `idx`, mutably.
    pub fn get_mut(&mut self, idx: u32) -> Option<&mut Stream> {
        self.slots.get_mut(idx as usize)
    }

    /// Iterates every stream.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Stream)> {
        self.slots.iter().map(|(i, s)| (i as u32, s))
    }

    /// Appends an already-encoded frame with id `id` to each stream in
    /// `targets` and marks them dirty. The bytes are shared, not copied.
    /// Returns whether so much has been appended since the streams were last
    /// flushed that they must be flushed now.
    pub fn append(&mut self, targets: &[u32], id: u64, bytes: Rc<[u8]>) -> bool {
        let mut pressure = false;
        for &t in targets {
            if let Some(s) = self.slots.get_mut(t as usize) {
                if !s.dirty {
                    s.dirty = true;
                    s.dirty_seq = s.next_seq();
                    s.dirty_offset = s.end_offset;
                    self.dirty.push(t);
                }
                s.push(id, bytes.clone());
                // Half the ring published since subscribers were last offered
                // frames: flush before the ring overtakes even fast readers.
                let frames = s.next_seq() - s.dirty_seq;
                let bytes_in = s.end_offset - s.dirty_offset;
                pressure |= frames as usize >= (s.limits.history / 2).max(1)
                    || bytes_in as usize >= (s.limits.history_bytes / 2).max(1);
            }
        }
        pressure
    }

    /// Takes the list of streams published to since the last call.
    pub fn take_dirty(&mut self) -> Vec<u32> {
        let d = std::mem::take(&mut self.dirty);
        for &i in &d {
            if let Some(s) = self.slots.get_mut(i as usize) {
                s.dirty = false;
            }
        }
        d
    }

    /// Gives back the (cleared) dirty vector so its capacity is reused.
    pub fn return_dirty(&mut self, mut v: Vec<u32>) {
        if self.dirty.is_empty() {
            v.clear();
            self.dirty = v;
        }
    }

    /// Removes a stream; returns its subscribers (to be closed by the caller).
    pub fn remove(&mut self, idx: u32) -> Option<Vec<u32>> {
        let s = self.slots.try_remove(idx as usize)?;
        self.by_name.remove(&s.name);
        if !s.internal {
            self.public -= 1;
        }
        if self.tombstones.len() >= MAX_TOMBSTONES {
            self.tombstones.clear();
        }
        let floor = s.last_id.max(s.lost_upto);
        if floor > 0 {
            self.tombstones.insert(s.name.clone(), floor);
        }
        self.dirty.retain(|&d| d != idx);
        Some(s.subs)
    }

    /// Where each of `streams` starts for a subscriber resuming with
    /// `resume`, and which of them need a `gap` first (§4 of the contract).
    pub fn plan(&self, streams: &[u32], resume: &Resume) -> Plan {
        let mut plan = Plan::default();
        for &i in streams {
            let Some(s) = self.get(i) else { continue };
            let (start, gap) = match resume {
                Resume::Live => (s.next_seq(), false),
                Resume::Unparsable(_) => (s.first_seq(), true),
                Resume::After(x, _) if *x < self.ids.first() || *x > self.ids.last() => {
                    (s.first_seq(), true)
                }
                Resume::After(x, _) => (s.seq_after(*x), s.lost_after(*x)),
            };
            plan.starts.push((i, start));
            if gap {
                plan.gap.push(i);
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(history: usize) -> Streams {
        Streams::new(
            1_000,
            Limits {
                history,
                history_bytes: 1 << 20,
            },
            10,
        )
    }

    fn publish(r: &mut Streams, s: u32, now: u64) -> u64 {
        let id = r.ids.next(now);
        r.append(&[s], id, Rc::from(&b"x\n\n"[..]));
        id
    }

    #[test]
    fn ids_grow_past_clock() {
        let mut c = IdClock::new(100);
        assert_eq!(c.next(100), 100);
        assert_eq!(c.next(100), 101);
        assert_eq!(c.next(50), 102);
        assert_eq!(c.next(500), 500);
    }

    #[test]
    fn resume_exact_and_gap_on_eviction() {
        let mut r = reg(3);
        let a = r.get_or_create("a", true, false).unwrap();
        let ids: Vec<u64> = (0..5).map(|_| publish(&mut r, a, 1_000)).collect();
        let s = r.get(a).unwrap();
        assert_eq!(s.retained(), 3);
        // Resume after id[2]: retained 3,4, nothing lost above id[2].
        let p = r.plan(&[a], &Resume::After(ids[2], String::new()));
        assert_eq!(p.starts, vec![(a, 3)]);
        assert!(p.gap.is_empty());
        // Resume after id[0]: id[1] was evicted.
        let p = r.plan(&[a], &Resume::After(ids[0], String::new()));
        assert_eq!(p.starts, vec![(a, 2)]);
        assert_eq!(p.gap, vec![a]);
    }

    #[test]
    fn gap_for_future_old_and_garbage() {
        let mut r = reg(10);
        let a = r.get_or_create("a", true, false).unwrap();
        let last = publish(&mut r, a, 1_000);
        for res in [
            Resume::After(last + 1, String::new()),
            Resume::After(999, String::new()),
            Resume::Unparsable("zz".into()),
        ] {
            let p = r.plan(&[a], &res);
            assert_eq!(p.gap, vec![a], "{res:?}");
            assert_eq!(p.starts, vec![(a, 0)]);
        }
        assert_eq!(r.plan(&[a], &Resume::Live).starts, vec![(a, 1)]);
    }

    #[test]
    fn names_and_caps() {
        let mut r = Streams::new(
            1,
            Limits {
                history: 1,
                history_bytes: 10,
            },
            1,
        );
        assert_eq!(
            r.get_or_create("bad name", true, false),
            Err(StreamError::BadName)
        );
        assert_eq!(
            r.get_or_create("a", false, false),
            Err(StreamError::NotFound)
        );
        r.get_or_create("a", true, false).unwrap();
        assert_eq!(r.get_or_create("b", true, false), Err(StreamError::TooMany));
        assert!(r.get_or_create("!app/x", true, true).is_ok());
    }

    #[test]
    fn deleted_stream_leaves_a_tombstone() {
        let mut r = reg(10);
        let a = r.get_or_create("a", true, false).unwrap();
        let id = publish(&mut r, a, 1_000);
        let before = id - 1;
        r.remove(a);
        let a2 = r.get_or_create("a", true, false).unwrap();
        let p = r.plan(&[a2], &Resume::After(before, String::new()));
        assert_eq!(p.gap, vec![a2]);
    }

    #[test]
    fn lag_is_measured_in_bytes() {
        let mut r = reg(10);
        let a = r.get_or_create("a", true, false).unwrap();
        publish(&mut r, a, 1_000);
        publish(&mut r, a, 1_000);
        let s = r.get(a).unwrap();
        assert_eq!(s.lag_bytes(0), 6);
        assert_eq!(s.lag_bytes(1), 3);
        assert_eq!(s.lag_bytes(2), 0);
    }
}
