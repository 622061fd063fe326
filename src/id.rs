//! The two numbers every layer names: `EventId`, the number that orders
//! every event, and `ConnKey`, the key of one client connection.
//!
//! An `EventId` is assigned by the broker's id clock (the unix time in µs,
//! or one past the last id), written on the wire as the `id:` field, in
//! journal records and bus payloads, and read back from `Last-Event-ID`.
//! A `ConnKey` is made by the reactor from its connection table's slot
//! (also the connection's `mio` token) and handed down to the broker's
//! subscriber lists, the handlers' actions and the apps' per-connection
//! tables, which only store and compare it.
//!
//! Owns the types and their decimal spelling only. It must not assign ids
//! (the broker's `IdClock` does) or keys (the reactor's table does) or know
//! a file or wire format: each of those converts explicitly where the bytes
//! are (`EventId::get`, `EventId::new`, `ConnKey::idx`, `ConnKey::of`), so
//! a bare `u64` never stands for an id, nor a bare `u32` for a connection,
//! in between.

use std::fmt;
use std::str::FromStr;

/// An event id. Ids grow strictly in publish order on one node; across
/// nodes (the Redis bus) and restarts (the journal) every clock is moved
/// past the ids it sees, so they keep growing.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(u64);

impl EventId {
    /// No event: below every id ever assigned (the clock starts at the
    /// unix time in µs), so it is what a "newest so far" or "lost up to"
    /// mark holds before there is any event.
    pub const NONE: EventId = EventId(0);
    /// Above every id: "nothing follows" where a bound is open.
    pub const MAX: EventId = EventId(u64::MAX);

    /// The id with this number (read from a file, a bus, a header).
    pub const fn new(n: u64) -> EventId {
        EventId(n)
    }
    /// Its number (to write into a file or a bus payload).
    pub const fn get(self) -> u64 {
        self.0
    }
    /// The id right after this one.
    pub const fn succ(self) -> EventId {
        EventId(self.0.saturating_add(1))
    }
    /// The id right before this one (where a reader that has seen
    /// everything before `self` stands).
    pub const fn pred(self) -> EventId {
        EventId(self.0.saturating_sub(1))
    }
}

impl fmt::Display for EventId {
    /// The wire spelling: decimal, as in `id:` lines and replies.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl FromStr for EventId {
    type Err = std::num::ParseIntError;
    /// Decimal digits only (what `Display` writes).
    fn from_str(s: &str) -> Result<EventId, Self::Err> {
        s.parse::<u64>().map(EventId)
    }
}

/// A connection's key: its slot in the reactor's table, also its `mio`
/// token. Where there may be no connection (a library publish) the type is
/// `Option<ConnKey>`, never a reserved value. Keys stay below 2^31 (one
/// per open socket), which the broker's subscriber lists rely on to mark
/// free slots.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey(pub u32);

impl ConnKey {
    /// The slot, for the connection table.
    pub fn idx(self) -> usize {
        self.0 as usize
    }
    /// The key of slot `i`.
    pub fn of(i: usize) -> ConnKey {
        ConnKey(i as u32)
    }
}

impl fmt::Display for ConnKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::{ConnKey, EventId};

    #[test]
    fn spelled_and_read_as_decimal() {
        let id = EventId::new(1_733_212_800_000_123);
        assert_eq!(id.to_string(), "1733212800000123");
        assert_eq!("1733212800000123".parse::<EventId>(), Ok(id));
        assert!("-1".parse::<EventId>().is_err());
        assert!("1e3".parse::<EventId>().is_err());
        assert_eq!(EventId::MAX.succ(), EventId::MAX);
        assert_eq!(EventId::NONE.pred(), EventId::NONE);
        assert!(EventId::NONE < id && id < EventId::MAX);
        assert_eq!(std::mem::size_of::<EventId>(), 8);
    }

    #[test]
    fn conn_key_is_its_slot() {
        assert_eq!(ConnKey::of(7), ConnKey(7));
        assert_eq!(ConnKey(7).idx(), 7);
        assert_eq!(ConnKey(7).to_string(), "7");
        assert_eq!(std::mem::size_of::<ConnKey>(), 4);
        assert_eq!(std::mem::size_of::<Option<ConnKey>>(), 8);
    }
}
