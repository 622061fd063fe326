//! Built without the `redis` feature: the reactor's bus hooks, with a
//! [`Link`] that cannot exist, so `Reactor::bus` is always `None`, no
//! handler sees a bus (`Cx::redis` is `None`) and none of these is reached.

use std::sync::mpsc;

use mio::Token;

use super::Reactor;
use crate::event::PublishError;
use crate::handler::{BusPublish, BusStream};
use crate::stats::RedisGauges;

/// Where Redis is, resolved: uninhabited in this build.
pub(super) enum Target {}

impl Target {
    pub(super) fn resolve(addr: &crate::bus::RedisAddr) -> Result<Target, String> {
        match *addr {}
    }
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
    pub(super) fn forget(&mut self, _key: u32) {
        match *self {}
    }
    pub(super) fn gauges(&self) -> RedisGauges {
        match *self {}
    }
}

impl Reactor {
    pub(super) fn bus_event(&mut self, _token: Token) -> bool {
        false
    }
    pub(super) fn bus_timer(&mut self) {}
    pub(super) fn bus_send(&mut self) {}
    pub(super) fn bus_holds(&self, _key: u32) -> bool {
        false
    }
    /// Unreachable without a bus; should it ever run, the publisher gets
    /// the same 503 a bus that is down gives, never a made-up id.
    pub(super) fn bus_publish(
        &mut self,
        conn: Option<u32>,
        lib: Option<mpsc::Sender<Result<u64, PublishError>>>,
        _bp: BusPublish,
    ) {
        if let Some(tx) = lib {
            let _ = tx.send(Err(PublishError::Refused("redis unavailable".into())));
        }
        if let Some(key) = conn {
            self.error(key, 503, "redis unavailable", None);
        }
    }
    pub(super) fn bus_stream(&mut self, key: u32, _bs: BusStream) {
        self.error(key, 503, "redis unavailable", None);
    }
}
