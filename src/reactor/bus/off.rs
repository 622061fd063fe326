//! Built without the `redis` feature: the reactor's bus hooks, with a
//! [`Link`] that cannot exist, so `Reactor::bus` is always `None`, no
//! handler sees a bus (`Cx::redis` is `None`) and none of these is reached.

use mio::Token;

use super::publish::{Failure, Outcome, To};
use super::Reactor;
use crate::broker::StreamIdx;
use crate::handler::{Publish, Subscribe};
use crate::stats::RedisGauges;

/// Where Redis is, resolved: uninhabited in this build.
pub(super) enum Target {}

impl Target {
    pub(super) fn resolve(addr: &crate::bus::RedisAddr) -> Result<Target, crate::bus::BusError> {
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
        who: To,
        _targets: Vec<StreamIdx>,
        made: Vec<StreamIdx>,
        p: Publish,
    ) {
        let o = Outcome {
            failure: Some(Failure {
                status: 503,
                msg: "redis unavailable".into(),
                too_large: false,
                reason: None,
            }),
            ..Outcome::default()
        };
        self.settle(who, p.reply, &made, o);
    }
    pub(super) fn bus_stream(&mut self, key: u32, _targets: &[StreamIdx], _s: Subscribe) {
        let bytes =
            crate::http::Response::error(503, "redis unavailable").encode(false, false, false);
        self.respond(key, &bytes, true);
    }
}
