//! The Redis bus inside the reactor (`--redis`, issue 12): the two Redis
//! connections ([`client`], driven by the [`machine`]) and the [`link`]
//! that ties them to the broker (sync state, publishes waiting for ids,
//! subscribers waiting for history; see its doc). This file wires the two
//! together for the driver: the machine is the link's [`Wire`], and the
//! driver feeds socket readiness and deadlines in (`on_event`,
//! `on_timer`, `send_batch`), steps the link (`Link::step`) and carries
//! out the [`Effect`]s it returns.
//!
//! It must not block: every Redis call is nonblocking and bounded by the
//! command timeout.

pub(crate) mod client;
mod effect;
mod link;
pub(crate) mod machine;
#[cfg(test)]
mod tests;

use mio::Token;

use crate::bus::script::Retain;
use crate::bus::{BusError, RedisUrl};
use crate::stats::RedisGauges;
pub(super) use client::Target;
pub(super) use effect::Effect;
use link::Wire;
use machine::{Bus, BusConfig, BusOutput, MAX_FETCH};

/// The command connection's token.
pub(super) const CMD: Token = Token(usize::MAX - 1_000);
/// The pub/sub connection's token.
pub(super) const SUB: Token = Token(usize::MAX - 1_001);

/// The bus link over the real connections.
pub(super) type Link = link::Link<Bus>;

/// Whether `token` is one of the bus's sockets.
pub(super) fn owns(token: Token) -> bool {
    token == CMD || token == SUB
}

impl Wire for Bus {
    fn publish(
        &mut self,
        req: u64,
        streams: &[&str],
        payload: &[u8],
        floor: u64,
        now_ms: u64,
        retain: Retain,
    ) -> Result<(), BusError> {
        Bus::publish_as(self, req, streams, payload, floor, now_ms, retain)
    }
    fn fetch(
        &mut self,
        req: u64,
        stream: &str,
        after: u64,
        max: usize,
        bytes: usize,
        now_ms: u64,
    ) -> Result<(), BusError> {
        Bus::fetch(self, req, stream, after, max, bytes, now_ms)
    }
    fn buffered_bytes(&mut self) -> usize {
        Bus::buffered_bytes(self)
    }
    fn poll(&mut self) -> Option<BusOutput> {
        Bus::poll(self)
    }
    fn up(&self) -> bool {
        Bus::up(self)
    }
    fn in_flight(&self) -> usize {
        Bus::in_flight(self)
    }
}

impl link::Link<Bus> {
    /// Starts connecting to `url`.
    pub(super) fn new(
        url: RedisUrl,
        target: Target,
        cfg: &crate::config::Config,
        registry: &mio::Registry,
        now_ms: u64,
    ) -> Link {
        let mut bc = BusConfig::new(url, target);
        bc.prefix = cfg.redis_prefix.clone();
        bc.history = cfg.history.max(1);
        bc.command_timeout = cfg.redis_timeout;
        let max_in_flight = bc.max_in_flight;
        let bus = Bus::new(bc, registry, CMD, SUB, now_ms);
        link::Link::over(bus, cfg.history.clamp(1, MAX_FETCH), max_in_flight)
    }

    /// Whether the bus is up.
    pub(super) fn up(&self) -> bool {
        self.wire.up()
    }

    /// When the bus wants `on_timer` (ms since start).
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.wire.next_deadline()
    }

    /// Readiness of one of the bus's sockets (`owns(token)`).
    pub(super) fn on_event(&mut self, registry: &mio::Registry, token: Token, now_ms: u64) {
        self.wire.on_event(registry, token, now_ms);
    }

    /// The bus's deadlines (timeouts, reconnects, pings), if one is due.
    pub(super) fn on_timer(&mut self, registry: &mio::Registry, now_ms: u64) {
        if self.wire.next_deadline().is_some_and(|d| d <= now_ms) {
            self.wire.on_timer(registry, now_ms);
        }
    }

    /// Sends the publishes gathered this loop turn to Redis together (one
    /// script call per batch); `true` when outputs wait (`step`).
    pub(super) fn send_batch(&mut self, now_ms: u64) -> bool {
        self.wire.send_batch(now_ms)
    }

    /// Stats.
    pub(super) fn gauges(&self) -> RedisGauges {
        let s = self.wire.status();
        let c = self.counts();
        RedisGauges {
            connected: s.connected,
            reconnects: s.reconnects,
            in_flight: s.in_flight,
            latency_avg_us: s.avg_latency_us,
            latency_last_us: s.last_latency_us,
            received: s.messages,
            published: s.publishes,
            fetches: c.fetches,
            bus_gaps: c.bus_gaps,
            errors: s.errors + c.bad,
            unavailable: c.unavailable,
            last_error: s.last_error,
        }
    }
}
