//! Mercure's additions to the broker: the registry of selector streams
//! (one internal ring per distinct `*` or URI-template selector, fed with
//! every later event whose public stream it matches) and the bounded index
//! from publisher-supplied event ids to broker ids.
//!
//! Bookkeeping only: it must not own frames (the rings do), decide who may
//! read what, or do I/O.

use std::collections::{HashMap, VecDeque};

use slab::Slab;

use super::ring::Stream;
use crate::auth::Selector;

/// Longest Mercure topic (a stream name through `/.well-known/mercure`).
pub const MAX_TOPIC_BYTES: usize = 1024;
/// Most selector streams at once.
pub const MAX_SELECTOR_STREAMS: usize = 1024;
/// Most publisher-supplied ids remembered for resume.
pub const MAX_ALIASES: usize = 16_384;

/// Whether `t` may name a stream through the Mercure endpoint: 1..=1024
/// bytes without control characters, and not itself a selector (`*`, or
/// anything with `{` or `}`, which no URI contains unescaped).
pub fn valid_topic(t: &str) -> bool {
    (1..=MAX_TOPIC_BYTES).contains(&t.len())
        && t != "*"
        && !t.chars().any(|c| c.is_control() || c == '{' || c == '}')
}

#[derive(Default)]
pub(super) struct Topics {
    selectors: Vec<(Selector, u32)>,
    aliases: HashMap<Box<str>, u64>,
    pub(super) alias_order: VecDeque<(u64, Box<str>)>,
}

impl Topics {
    pub(super) fn len(&self) -> usize {
        self.selectors.len()
    }

    pub(super) fn find(&self, sel: &str) -> Option<u32> {
        self.selectors
            .iter()
            .find(|(s, _)| s.as_str() == sel)
            .map(|&(_, i)| i)
    }

    pub(super) fn streams(&self) -> impl Iterator<Item = u32> + '_ {
        self.selectors.iter().map(|&(_, i)| i)
    }

    pub(super) fn add(&mut self, sel: Selector, idx: u32) {
        self.selectors.push((sel, idx));
    }

    /// A deleted stream stops being a selector stream.
    pub(super) fn forget(&mut self, idx: u32) {
        self.selectors.retain(|&(_, i)| i != idx);
    }

    /// `targets` plus the selector streams matching one of the public
    /// ones; `None` when no selector stream is added (the common case
    /// allocates nothing).
    pub(super) fn fan_in(&self, streams: &Slab<Stream>, targets: &[u32]) -> Option<Vec<u32>> {
        if self.selectors.is_empty() {
            return None;
        }
        let mut all: Option<Vec<u32>> = None;
        for (sel, idx) in &self.selectors {
            let hit = targets.iter().any(|&t| {
                streams
                    .get(t as usize)
                    .is_some_and(|s| !s.internal && sel.matches(&s.name))
            });
            if hit && !targets.contains(idx) {
                all.get_or_insert_with(|| targets.to_vec()).push(*idx);
            }
        }
        all
    }

    pub(super) fn alias(&mut self, alias: &str, id: u64) {
        if self.alias_order.len() >= MAX_ALIASES {
            if let Some((old_id, old)) = self.alias_order.pop_front() {
                // A later event may have reused the alias: keep that one.
                if self.aliases.get(&old) == Some(&old_id) {
                    self.aliases.remove(&old);
                }
            }
        }
        self.aliases.insert(alias.into(), id);
        self.alias_order.push_back((id, alias.into()));
    }

    pub(super) fn alias_id(&self, alias: &str) -> Option<u64> {
        self.aliases.get(alias).copied()
    }
}
