//! Built without the `mercure` feature: no active subscriptions. The same
//! shape as `presence.rs`, holding nothing; [`Joined`] is uninhabited, so
//! no subscriber is ever tracked.

use crate::id::ConnKey;

/// What a connection subscribed with: none can exist in this build.
#[derive(Debug)]
pub enum Joined {}

/// The (empty) table.
#[derive(Debug, Default)]
pub struct Presence;

/// Never a subscription update's topic in this build.
pub fn is_update_topic(_name: &str) -> bool {
    false
}

/// The SSE `event:` of subscription updates.
pub const EVENT: &str = "mercure";

/// A subscription update to publish (none is made in this build).
#[derive(Debug)]
pub struct Update {
    /// The subscriber's client address key.
    pub peer: u128,
}

impl Update {
    /// Its topic.
    pub fn topic(&self) -> String {
        String::new()
    }
    /// Its document.
    pub fn data(&self) -> String {
        String::new()
    }
}

impl Presence {
    /// The table.
    pub fn new(_on: bool) -> Presence {
        Presence
    }
    /// Never tracks a connection.
    pub fn none_here(&self) -> bool {
        true
    }
    /// Holds nothing.
    pub fn bytes(&self) -> usize {
        0
    }
    /// Nothing to track.
    #[allow(clippy::boxed_local)]
    pub fn join(&mut self, _conn: ConnKey, j: Box<Joined>) {
        match *j {}
    }
    /// Nothing to announce.
    pub fn started(&mut self, _conn: ConnKey, _local: bool) {}
    /// Nothing to announce.
    pub fn left(&mut self, _conn: ConnKey, _local: bool) {}
    /// Nothing waits.
    pub fn has_pending(&self) -> bool {
        false
    }
    /// Nothing waits.
    pub fn take_pending(&mut self) -> Vec<Update> {
        Vec::new()
    }
}

impl Presence {
    /// Nothing to hear.
    pub fn heard<'n>(
        &mut self,
        _names: impl Iterator<Item = &'n str>,
        _frame: &[u8],
    ) -> Option<String> {
        None
    }
}
