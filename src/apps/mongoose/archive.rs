//! The MongooseIM app's message archives and their one account: each
//! archive is a bounded FIFO, and every archive together is charged to the
//! server-wide history budget through a [`Ledger`] that knows the oldest
//! item of every archive, so the oldest of any goes first. Pure: no I/O,
//! no clock.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use super::{ARCHIVE, ARCHIVE_BYTES};

/// A bounded archive, oldest first; each item has its place in the
/// app-wide order ([`Ledger`]) and its accounted size.
pub(super) struct Archive<T> {
    pub(super) items: VecDeque<(u64, Rc<T>, usize)>,
    bytes: usize,
}

impl<T> Default for Archive<T> {
    fn default() -> Self {
        Archive {
            items: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<T> Archive<T> {
    /// Appends `item` (number `seq` in the app-wide order), dropping the
    /// oldest past [`ARCHIVE`] or [`ARCHIVE_BYTES`]; returns the bytes freed.
    pub(super) fn push(&mut self, seq: u64, item: Rc<T>, size: usize) -> usize {
        self.items.push_back((seq, item, size));
        self.bytes += size;
        let mut freed = 0;
        while self.items.len() > 1 && (self.items.len() > ARCHIVE || self.bytes > ARCHIVE_BYTES) {
            freed += self.pop_front();
        }
        freed
    }
    pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.items.iter().map(|(_, t, _)| &**t)
    }
}

/// What the app-wide eviction needs of an archive, whatever it holds.
pub(super) trait Fifo {
    /// The oldest item's number in the app-wide order.
    fn front_seq(&self) -> Option<u64>;
    /// Drops the oldest item; the bytes freed.
    fn pop_front(&mut self) -> usize;
    /// Bytes held.
    fn held(&self) -> usize;
}

impl<T> Fifo for Archive<T> {
    fn front_seq(&self) -> Option<u64> {
        self.items.front().map(|(s, _, _)| *s)
    }
    fn pop_front(&mut self) -> usize {
        let s = self.items.pop_front().map_or(0, |(_, _, s)| s);
        self.bytes -= s;
        s
    }
    fn held(&self) -> usize {
        self.bytes
    }
}

/// Whose archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    User(Box<str>),
    Room(Box<str>),
}

/// Every archive's bytes, charged to the server-wide history budget
/// (`--history-total-bytes`): archives hold at most [`ARCHIVE_SHARE`] of
/// it, oldest item of any archive dropped first, and the broker evicts
/// history so that history and archives together stay within it.
#[derive(Default)]
pub(super) struct Ledger {
    pub(super) bytes: usize,
    pub(super) next: u64,
    /// The oldest item's number of each non-empty archive → its owner.
    pub(super) fronts: BTreeMap<u64, Owner>,
}

impl Ledger {
    /// Records that `owner`'s archive front moved from `old` to `new`.
    pub(super) fn refront(&mut self, owner: &Owner, old: Option<u64>, new: Option<u64>) {
        if old == new {
            return;
        }
        if let Some(o) = old {
            self.fronts.remove(&o);
        }
        if let Some(n) = new {
            self.fronts.insert(n, owner.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::mongoose::{ARCHIVE, ARCHIVE_BYTES};

    #[test]
    fn archive_is_bounded() {
        let mut a: Archive<u32> = Archive::default();
        for i in 0..(ARCHIVE as u32 + 10) {
            a.push(u64::from(i), Rc::new(i), 10);
        }
        assert_eq!(a.items.len(), ARCHIVE);
        assert_eq!(a.iter().next(), Some(&10));
        assert_eq!(a.push(1000, Rc::new(0), ARCHIVE_BYTES), ARCHIVE * 10);
        assert_eq!(a.items.len(), 1);
    }
}
