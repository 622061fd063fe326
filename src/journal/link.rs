//! The journal as the event loop uses it: the publish gate of
//! `--journal-bytes` (what is refused for good, what waits for compaction),
//! the ticket of the last append (for replies held until an fsync covers
//! them), and compaction paced by the loop.
//!
//! Owns a [`Journal`] and these decisions only. It must not know the broker
//! (the caller passes names, frames and a `retained` predicate) nor HTTP
//! (a [`Refused`] says why, the caller picks the status).

use super::{Journal, JournalStats, Record, Refused};
use crate::id::EventId;

/// Bytes a record adds on top of its frame and stream names (framing, type,
/// id, flags, name count; rounded up).
const RECORD_OVERHEAD: u64 = 64;

/// Slack kept below half the publish gate for the small files compaction
/// leaves (headers, clocks, tombstones).
const SLACK: u64 = 4096;

/// An open journal with its publish gate.
pub struct Link {
    journal: Journal,
    /// Ticket of the last record appended.
    ticket: u64,
    /// `--fsync always`: replies wait for their ticket.
    always: bool,
    /// `--journal-bytes`.
    bound: u64,
    compactions: u64,
    compact_failing: bool,
}

impl Link {
    /// Wraps `journal`, whose directory is to stay within `bound` bytes.
    pub fn new(journal: Journal, bound: u64, always: bool) -> Link {
        Link {
            journal,
            ticket: 0,
            always,
            bound,
            compactions: 0,
            compact_failing: false,
        }
    }

    /// What appends may bring the directory to: one segment of room stays
    /// for the rewrite being put in place (the new file and the old ones
    /// coexist until the old are unlinked). Compaction aims three segments
    /// below `--journal-bytes`; only a flood that outruns it (a rewrite
    /// waiting for its fsync on a slow disk) or a large event reaches this.
    fn gate(&self) -> u64 {
        self.bound.saturating_sub(self.journal.segment_bytes())
    }

    /// The largest record one event may be: half the gate (less slack), so
    /// that once compaction dropped what it must, it fits beside the
    /// segment being written, which may hold one such event itself.
    pub fn max_record(&self) -> u64 {
        (self.gate() / 2).saturating_sub(SLACK)
    }

    /// Appends an event (phase two of a local publish, before it enters the
    /// rings): refused if the budget cannot hold it now or ever.
    pub fn event(
        &mut self,
        id: EventId,
        streams: &[&str],
        frame: &[u8],
        private: bool,
    ) -> Result<(), Refused> {
        let size = frame.len() as u64
            + streams.iter().map(|s| s.len() as u64 + 2).sum::<u64>()
            + RECORD_OVERHEAD;
        if size > self.max_record() {
            return Err(Refused::TooLarge {
                size,
                limit: self.max_record(),
            });
        }
        let gate = self.gate();
        if self.journal.bytes_on_disk().saturating_add(size) > gate {
            // Compaction frees this much (dropping the oldest retained
            // history if it must): a retry then succeeds.
            self.journal.want_room(gate - size);
            return Err(Refused::Full);
        }
        let r = Record::Event {
            id,
            streams: streams.iter().map(|s| s.to_string()).collect(),
            frame: frame.to_vec(),
            private,
        };
        self.ticket = self.journal.append(&r).map_err(|e| {
            Refused::Failed(format!(
                "{e}; publishing is refused until the journal (--data-dir) can be written again"
            ))
        })?;
        Ok(())
    }

    /// Records a stream's deletion. It cannot be refused (the stream goes
    /// anyway); the journal logged a failure, and after a restart the stream
    /// comes back with its history.
    pub fn delete(&mut self, stream: &str, floor: EventId) {
        let r = Record::Delete {
            stream: stream.to_string(),
            floor_id: floor,
        };
        if let Ok(t) = self.journal.append(&r) {
            self.ticket = t;
        }
    }

    /// Ticket of the last record appended (to compare before and after a
    /// request).
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// With `--fsync always`, the ticket a reply must wait for if the
    /// journal was written since `before` and that is not yet durable.
    pub fn must_wait(&self, before: u64) -> Option<u64> {
        let t = self.ticket;
        (self.always && t > before && self.durable() < t).then_some(t)
    }

    /// The highest ticket known to be fsynced.
    pub fn durable(&self) -> u64 {
        self.journal.durable()
    }

    /// Frees disk when over budget or when an append waits for room (a
    /// bounded step per call; nothing while a call could free nothing and
    /// nothing changed since).
    pub fn compact(&mut self, retained: &dyn Fn(&str, EventId) -> bool, last_id: EventId) {
        if !self.journal.needs_compaction() {
            return;
        }
        match self.journal.compact(retained, last_id) {
            Ok(st) => {
                if st.segments_written > 0 || st.segments_removed > 0 {
                    self.compactions += 1;
                }
                if std::mem::replace(&mut self.compact_failing, false) {
                    log::warn!("journal: compaction works again");
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut self.compact_failing, true) {
                    log::warn!("journal: compaction failed ({e}); retrying every turn");
                }
            }
        }
    }

    /// Compaction calls that rewrote or removed a file.
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// The journal's counters.
    pub fn stats(&self) -> JournalStats {
        self.journal.stats()
    }
}
