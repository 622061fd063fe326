//! Deadlines: every connection has one (`Conn::deadline`), and one sweep
//! walks the connection table when the earliest is due, for header, idle
//! and write timeouts, lingering closes and heartbeats. No connection owns
//! a timer object.
//!
//! The walk is sliced: at most [`SLICE`] slots per loop turn, continuing
//! on the next turn, so a table of 20,000 connections never holds the loop
//! for a whole pass. With nothing due, no sweep is scheduled and the loop
//! sleeps without a timeout.
//!
//! The stream lifecycle has its own, slower sweep: `Broker::expire` over
//! [`STREAM_SLICE`] stream slots per turn, a pass every quarter of
//! `--stream-idle-ttl` (between 250 ms and 60 s). It rests when a pass
//! finds every stream read (or internal): then none can expire until a
//! subscriber leaves or a stream appears, which only a wakeup for
//! something else brings, so an idle node sleeps without a timeout.
//!
//! Freed heap is handed back to the system on the same rhythm's terms:
//! [`Trim`] says when enough was freed, at most once a second.
//!
//! This part only keeps the walk's position and says when the next step
//! runs and which connections are due; what a due deadline means is the
//! connection machine's (`Conn::expire` in `proto.rs`) and the driver
//! carries it out. It must not touch sockets, timers or the reactor.

use slab::Slab;

use super::conn::{Conn, ConnKey, Tick, NEVER, TICK_MS};

/// Memory handed back to the system (`malloc_trim`) once this much was
/// freed since the last time...
const TRIM_AFTER_BYTES: usize = 16 << 20;
/// ...and at most this often (a trim walks the heap).
const TRIM_EVERY_MS: u64 = 1000;

/// When freed heap is next handed back to the system (glibc keeps it
/// otherwise: a burst of megabyte-sized buffers would stay resident after
/// they are gone). The driver does the `malloc_trim`.
#[derive(Debug, Default)]
pub struct Trim {
    /// When it last trimmed (ms); 0: never, so the first trim may come at
    /// once (a server up for less than a second frees too).
    at: u64,
}

impl Trim {
    /// Whether to trim now, `freed` bytes having been released since the
    /// last trim; if so, the trim is taken as done at `now_ms`.
    pub fn due(&mut self, freed: usize, now_ms: u64) -> bool {
        if freed < TRIM_AFTER_BYTES || (self.at != 0 && now_ms < self.at + TRIM_EVERY_MS) {
            return false;
        }
        self.at = now_ms;
        true
    }
}

/// Connection slots examined per loop turn.
const SLICE: usize = 4096;
/// Rounds of the sweep start at most this often.
const SWEEP_SPACING_MS: u64 = 250;
/// Stream slots the lifecycle sweep examines per loop turn.
pub const STREAM_SLICE: usize = 1024;

/// Where the sweep stands. The driver adds a `Timer::Sweep` entry at each
/// time [`Sweep::want`] or [`Sweep::end`] returns, and runs a slice when
/// one fires: [`Sweep::begin`], [`Sweep::scan`], what each due connection
/// means ([`Sweep::seen`] for its new deadline), [`Sweep::end`].
#[derive(Debug, Default)]
pub struct Sweep {
    /// When the scheduled sweep step runs (the live `Timer::Sweep` entry).
    pub at: Option<u64>,
    /// When the current or last round started.
    last: u64,
    /// The next slot to examine, when a round is under way.
    pos: Option<usize>,
    /// The earliest deadline seen (or set) during the round.
    next: Tick,
    /// The lifecycle sweep rests (no `Timer::Expire` scheduled) until the
    /// loop wakes for something else.
    expire_resting: bool,
    /// When freed heap is next handed back to the system.
    pub trim: Trim,
}

impl Sweep {
    /// Makes sure a sweep runs by deadline `d`: the time (ms) of a sweep
    /// step to schedule, if one must be.
    pub fn want(&mut self, d: Tick) -> Option<u64> {
        if d == NEVER {
            return None;
        }
        if self.pos.is_some() {
            // A round is under way; it reschedules when it ends.
            self.next = self.next.min(d);
            return None;
        }
        let when = (d as u64 * TICK_MS).max(self.last + SWEEP_SPACING_MS);
        if self.at.is_none_or(|s| when < s) {
            self.at = Some(when);
            return Some(when);
        }
        None
    }

    /// The step scheduled for `when` fired at `now_ms`: `None` if it was
    /// superseded; else whether a new round begins (when cancelled timer
    /// entries may be compacted).
    pub fn begin(&mut self, when: u64, now_ms: u64) -> Option<bool> {
        if self.at != Some(when) {
            return None;
        }
        self.at = None;
        if self.pos.is_some() {
            return Some(false);
        }
        self.last = now_ms;
        self.next = NEVER;
        self.pos = Some(0);
        Some(true)
    }

    /// Walks the round's next slice of `conns`: the keys due at `now` go
    /// to `due`, the others' deadlines are remembered. The round stays
    /// under way while the due ones are handled, so deadlines set
    /// meanwhile are folded into it.
    pub fn scan<S>(&mut self, conns: &Slab<Conn<S>>, now: Tick, due: &mut Vec<ConnKey>) {
        let start = self.pos.unwrap_or(0);
        let end = (start + SLICE).min(conns.capacity());
        for k in start..end {
            if let Some(c) = conns.get(k) {
                if c.deadline <= now {
                    due.push(ConnKey::of(k));
                } else {
                    self.next = self.next.min(c.deadline);
                }
            }
        }
        self.pos = Some(end);
    }

    /// A due connection was handled and is still open with deadline `d`.
    pub fn seen(&mut self, d: Tick) {
        self.next = self.next.min(d);
    }

    /// The slice is done (`capacity` slots in the table): the time of the
    /// next step to schedule, if any: at once while slots remain, else by
    /// the earliest deadline seen.
    pub fn end(&mut self, capacity: usize, now_ms: u64) -> Option<u64> {
        if self.pos.is_some_and(|p| p < capacity) {
            // More slots: continue next turn.
            self.at = Some(now_ms);
            return Some(now_ms);
        }
        self.pos = None;
        let next = self.next;
        self.want(next)
    }
}

impl Sweep {
    /// The lifecycle sweep found nothing that could expire: it rests.
    pub fn rest_expire(&mut self) {
        self.expire_resting = true;
    }

    /// The loop woke for something else: whether a resting lifecycle sweep
    /// must be scheduled again.
    pub fn stir_expire(&mut self) -> bool {
        std::mem::take(&mut self.expire_resting)
    }
}

/// When the stream lifecycle sweep's next slice runs: on the next turn
/// while a pass is under way, else after a rest of a quarter of
/// `--stream-idle-ttl` (250 ms to 60 s; 60 s without a TTL).
pub fn expire_at(now_ms: u64, stream_idle_ttl: std::time::Duration, mid_pass: bool) -> u64 {
    let rest = match stream_idle_ttl.as_millis() as u64 {
        0 => 60_000,
        ttl => (ttl / 4).clamp(250, 60_000),
    };
    if mid_pass {
        now_ms
    } else {
        now_ms + rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(deadlines: &[(usize, Tick)], capacity: usize) -> Slab<Conn<()>> {
        let mut t = Slab::with_capacity(capacity);
        let top = deadlines.iter().map(|d| d.0).max().unwrap_or(0);
        let keys: Vec<usize> = (0..=top)
            .map(|_| t.insert(Conn::new((), 0, NEVER)))
            .collect();
        for k in keys {
            match deadlines.iter().find(|d| d.0 == k) {
                Some(&(_, d)) => t[k].deadline = d,
                None => {
                    t.remove(k);
                }
            }
        }
        t
    }

    #[test]
    fn a_step_is_scheduled_once_for_the_earliest_deadline() {
        let mut s = Sweep::default();
        assert_eq!(s.want(NEVER), None);
        // Tick 30 is 3000 ms; a later deadline adds nothing, an earlier one does.
        assert_eq!(s.want(30), Some(3000));
        assert_eq!(s.want(40), None);
        assert_eq!(s.want(20), Some(2000));
        // The superseded entry does nothing when it fires.
        assert_eq!(s.begin(3000, 3000), None);
        assert_eq!(s.begin(2000, 2000), Some(true));
        // Rounds start at most every 250 ms.
        let mut t = table(&[], 8);
        t.clear();
        s.scan(&t, 20, &mut Vec::new());
        assert_eq!(s.end(t.capacity(), 2000), None);
        assert_eq!(s.want(20), Some(2250));
    }

    #[test]
    fn a_round_finds_due_connections_and_the_next_deadline() {
        let t = table(&[(0, 5), (1, 20), (3, NEVER), (4, 10)], 16);
        let mut s = Sweep::default();
        let at = s.want(5).unwrap();
        assert_eq!(s.begin(at, at), Some(true));
        let mut due = Vec::new();
        s.scan(&t, 10, &mut due);
        assert_eq!(due, [0, 4].map(ConnKey));
        // While handling them, a deadline set elsewhere joins the round...
        assert_eq!(s.want(15), None);
        // ...and a handled connection's new one too.
        s.seen(12);
        assert_eq!(s.end(t.capacity(), 1000), Some(1200));
    }

    #[test]
    fn a_large_table_is_walked_in_slices() {
        let n = 2 * SLICE + 10;
        let deadlines: Vec<(usize, Tick)> = (0..n).map(|k| (k, 100 + k as Tick)).collect();
        let t = table(&deadlines, n);
        let mut s = Sweep::default();
        let at = s.want(100).unwrap();
        let mut due = Vec::new();
        let mut steps = 0;
        let mut next = Some(at);
        let mut first = true;
        while let Some(when) = next {
            assert_eq!(s.begin(when, when), Some(first));
            first = false;
            s.scan(&t, 105, &mut due);
            steps += 1;
            next = s.end(t.capacity(), when);
            if steps > 10 {
                break;
            }
            // The round over: the next step waits for the earliest left.
            if s.pos.is_none() {
                assert_eq!(next, Some(10_600));
                break;
            }
            // Mid-round: the next slice runs on the next turn.
            assert_eq!(next, Some(when));
        }
        assert_eq!(steps, t.capacity().div_ceil(SLICE));
        assert_eq!(due, [0, 1, 2, 3, 4, 5].map(ConnKey));
    }

    #[test]
    fn the_stream_sweep_rests_between_passes() {
        // A resting sweep is stirred once.
        let mut s = Sweep::default();
        assert!(!s.stir_expire());
        s.rest_expire();
        assert!(s.stir_expire());
        assert!(!s.stir_expire());
        let ttl = std::time::Duration::from_secs(8);
        assert_eq!(expire_at(1000, ttl, false), 3000);
        assert_eq!(expire_at(1000, ttl, true), 1000);
        assert_eq!(expire_at(0, std::time::Duration::ZERO, false), 60_000);
        assert_eq!(
            expire_at(0, std::time::Duration::from_millis(10), false),
            250
        );
    }

    /// A trim needs enough freed, and then waits a second for the next.
    #[test]
    fn trims_are_rate_limited() {
        let mut t = Trim::default();
        assert!(!t.due(TRIM_AFTER_BYTES - 1, 10));
        assert!(t.due(TRIM_AFTER_BYTES, 10), "the first may come at once");
        assert!(!t.due(usize::MAX, 10 + TRIM_EVERY_MS - 1));
        assert!(t.due(TRIM_AFTER_BYTES, 10 + TRIM_EVERY_MS));
    }
}
