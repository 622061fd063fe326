//! Built without the `journal` feature: no `--data-dir`. This stub keeps
//! the shape handlers name, with a [`Link`] that cannot exist, so
//! `Cx::journal` is always `None` and the write path is dead code.
//! [`Refused`] is the journal's own (a publish maps it the same way).

#[path = "refused.rs"]
mod refused;
pub use refused::Refused;

use crate::id::EventId;

/// An open journal: uninhabited in this build.
pub enum Link {}

impl Link {
    /// Never called: no journal exists.
    pub fn event(
        &mut self,
        _id: EventId,
        _streams: &[&str],
        _frame: &[u8],
        _private: bool,
    ) -> Result<(), Refused> {
        match *self {}
    }
    /// Never called: no journal exists.
    pub fn delete(&mut self, _stream: &str, _floor: EventId) {
        match *self {}
    }
    /// Never called: no journal exists.
    pub fn ticket(&self) -> u64 {
        match *self {}
    }
    /// Never called: no journal exists.
    pub fn must_wait(&self, _before: u64) -> Option<u64> {
        match *self {}
    }
    /// Never called: no journal exists.
    pub fn durable(&self) -> u64 {
        match *self {}
    }
}
