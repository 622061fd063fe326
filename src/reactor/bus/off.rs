//! Built without the `redis` feature: the bus link's shape, with a
//! [`Link`] that cannot exist, so the driver's `bus` is always `None`, no
//! handler sees a bus (`Cx::redis` is `None`), no socket is the bus's and
//! none of the link's methods is reached.

use mio::Token;

use crate::apps::Apps;
use crate::broker::{Broker, StreamIdx};
use crate::handler::{Publish, Subscribe};
use crate::stats::RedisGauges;

use super::conn::ConnKey;
use super::publish::To;

#[path = "effect.rs"]
mod effect;
pub(super) use effect::Effect;

/// Where Redis is, resolved: uninhabited in this build.
pub(super) enum Target {}

impl Target {
    pub(super) fn resolve(addr: &crate::bus::RedisAddr) -> Result<Target, crate::bus::BusError> {
        match *addr {}
    }
}

/// No socket is the bus's.
pub(super) fn owns(_token: Token) -> bool {
    false
}

/// The bus link: uninhabited in this build.
pub(super) enum Link {}

impl Link {
    pub(super) fn new(
        _url: crate::bus::RedisUrl,
        target: Target,
        _cfg: &crate::config::Config,
        _registry: &mio::Registry,
        _now_ms: u64,
    ) -> Link {
        match target {}
    }
    pub(super) fn up(&self) -> bool {
        match *self {}
    }
    pub(super) fn next_deadline(&self) -> Option<u64> {
        match *self {}
    }
    pub(super) fn on_event(&mut self, _registry: &mio::Registry, _token: Token, _now_ms: u64) {
        match *self {}
    }
    pub(super) fn on_timer(&mut self, _registry: &mio::Registry, _now_ms: u64) {
        match *self {}
    }
    pub(super) fn send_batch(&mut self, _now_ms: u64) -> bool {
        match *self {}
    }
    pub(super) fn gauges(&self) -> RedisGauges {
        match *self {}
    }
    pub(super) fn fetch_bytes(&mut self) -> usize {
        match *self {}
    }
    pub(super) fn settle_memory(&mut self, _memory: &mut crate::memory::Account) {
        match *self {}
    }
    pub(super) fn holds(&self, _key: ConnKey) -> bool {
        match *self {}
    }
    pub(super) fn forget(&mut self, _key: ConnKey) {
        match *self {}
    }
    pub(super) fn step(
        &mut self,
        _broker: &mut Broker,
        _apps: &mut Apps,
        _presence: &mut crate::presence::Presence,
        _now_ms: u64,
        _fx: &mut Vec<Effect>,
    ) -> bool {
        match *self {}
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish(
        &mut self,
        _broker: &Broker,
        _who: To,
        _targets: Vec<StreamIdx>,
        _made: Vec<StreamIdx>,
        _p: Publish,
        _now_ms: u64,
        _fx: &mut Vec<Effect>,
    ) {
        match *self {}
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stream(
        &mut self,
        _broker: &mut Broker,
        _apps: &mut Apps,
        _key: ConnKey,
        _targets: &[StreamIdx],
        _s: Subscribe,
        _now_ms: u64,
        _fx: &mut Vec<Effect>,
    ) {
        match *self {}
    }
}
