//! The reactor's timers: one min-heap of deadlines with lazy cancellation.
//!
//! Only a handful of entries live here at once per *kind* of work (the
//! connection sweep, accept back-off, shutdown) plus one per ticking app
//! connection. Per-connection timeouts and heartbeats are not timers: they
//! are a deadline field swept in one pass (see `server.rs`). This module
//! never reads the clock; callers pass times in ms since server start.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Walk connections whose deadline has passed (timeouts, heartbeats).
    Sweep,
    /// Try accepting again after running out of file descriptors.
    ResumeAccept,
    /// Give up flushing and close everything on shutdown.
    ShutdownDeadline,
    /// A slice of the stream lifecycle sweep (`Broker::expire`).
    Expire,
    /// A ticking app connection is due; `gen` guards against a reused slab key.
    Tick {
        /// The connection.
        key: super::conn::ConnKey,
        /// Its ticker generation when scheduled.
        gen: u32,
    },
}

/// A min-heap of `(when_ms, timer)`.
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(u64, Timer)>>,
    /// The last ticker generation handed out.
    gen: u32,
}

impl Timers {
    /// A new ticker generation (for `Timer::Tick`'s guard).
    pub fn next_gen(&mut self) -> u32 {
        self.gen = self.gen.wrapping_add(1);
        self.gen
    }

    /// Schedules `t` at `when_ms`.
    pub fn add(&mut self, when_ms: u64, t: Timer) {
        self.heap.push(Reverse((when_ms, t)));
    }

    /// The earliest deadline, if any.
    pub fn next_at(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((w, _))| *w)
    }

    /// Pops one timer due at `now_ms`.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<(u64, Timer)> {
        match self.heap.peek() {
            Some(Reverse((w, _))) if *w <= now_ms => self.heap.pop().map(|Reverse(x)| x),
            _ => None,
        }
    }

    /// Entries in the heap, cancelled-but-not-yet-popped ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Drops entries `keep` rejects (used when cancelled entries pile up).
    pub fn retain(&mut self, mut keep: impl FnMut(u64, &Timer) -> bool) {
        self.heap.retain(|Reverse((w, t))| keep(*w, t));
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Timer)> {
        self.heap.iter().map(|Reverse((w, t))| (*w, t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::conn::ConnKey;

    #[test]
    fn pops_in_order() {
        let mut t = Timers::default();
        t.add(30, Timer::Sweep);
        t.add(10, Timer::ResumeAccept);
        t.add(
            20,
            Timer::Tick {
                key: ConnKey(1),
                gen: 2,
            },
        );
        assert_eq!(t.next_at(), Some(10));
        assert_eq!(t.pop_due(5), None);
        assert_eq!(t.pop_due(25), Some((10, Timer::ResumeAccept)));
        assert_eq!(
            t.pop_due(25),
            Some((
                20,
                Timer::Tick {
                    key: ConnKey(1),
                    gen: 2
                }
            ))
        );
        assert_eq!(t.pop_due(25), None);
        assert_eq!(t.len(), 1);
    }
}
