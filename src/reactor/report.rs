//! What `/stats` and `/metrics` show of the reactor, assembled from its
//! parts: connections by state, streams and history (the broker), timers,
//! the memory account, per-address entries, and the bus's and journal's
//! own numbers. The driver reads the clock and `/proc` and hands the
//! figures in ([`View`]); this part only counts and renders, so it is
//! tested on connections without sockets.
//!
//! It must not change what it reports on (everything is borrowed shared)
//! and must not tell anonymous readers of private-only streams.

use slab::Slab;

use super::conn::{Conn, State, CONN_SIZE};
use super::peers::Peers;
use crate::broker::Broker;
use crate::http::{Headers, Response};
use crate::memory::{Account, Kind};
use crate::stats::{Counters, Gauges, JournalGauges, KindGauge, MemoryGauges, RedisGauges};

/// Everything `/stats` reads, borrowed for one report.
pub(super) struct View<'a, S> {
    pub conns: &'a Slab<Conn<S>>,
    pub broker: &'a Broker,
    pub memory: &'a Account,
    pub peers: &'a Peers,
    /// Timer entries that still mean something, and all of them.
    pub timers: (usize, usize),
    pub uptime_secs: f64,
    pub rss_bytes: u64,
    pub max_connections: usize,
    pub redis: Option<RedisGauges>,
    pub journal: Option<JournalGauges>,
}

/// The broker's running totals, copied into the counters before a report.
pub(super) fn sync_counters(counters: &mut Counters, broker: &Broker) {
    counters.events_published = broker.published;
    counters.gaps_sent = broker.gaps;
    let life = broker.lifecycle();
    counters.history_evicted_events = life.evicted_events;
    counters.history_evicted_bytes = life.evicted_bytes;
    counters.history_refused_too_large = life.refused_too_large;
    counters.streams_expired = life.expired;
    counters.streams_dropped_empty = life.dropped_empty;
}

/// Gauges for `/stats` and `/metrics`.
pub(super) fn gauges<S>(v: View<'_, S>) -> Gauges {
    let mut g = Gauges {
        connections: v.conns.len(),
        ..Gauges::default()
    };
    for (_, c) in v.conns.iter() {
        match c.state {
            State::Streaming(_) => g.sse_connections += 1,
            State::Ticking(_) => g.app_connections += 1,
            _ => g.http_connections += 1,
        }
        if c.blocked() && matches!(c.state, State::Streaming(_) | State::Ticking(_)) {
            g.blocked_subscribers += 1;
        }
    }
    for (_, s) in v.broker.iter() {
        if s.internal {
            g.internal_streams += 1;
        } else if s.anonymous_visible() {
            // /stats is open to anyone: private-only streams are not told of.
            g.streams += 1;
        }
        g.history_events += s.retained();
    }
    g.history_bytes = v.broker.total_bytes();
    g.history_budget = v.broker.budget();
    g.subscriber_streams = v.broker.unclaimed();
    g.tombstones = v.broker.tombstones();
    (g.timers, g.timer_entries) = v.timers;
    g.connection_size = CONN_SIZE;
    g.uptime_secs = v.uptime_secs;
    g.rss_bytes = v.rss_bytes;
    g.per_ip_entries = v.peers.len();
    g.buffered_request_bytes = v.memory.used(Kind::Requests);
    g.memory = MemoryGauges {
        max: v.memory.limits().max,
        used: v.memory.total(),
        kinds: v
            .memory
            .usage()
            .map(|u| KindGauge {
                name: u.kind.name(),
                used: u.used,
                limit: u.limit,
                peak: u.peak,
                refused: u.refused,
            })
            .collect(),
    };
    g.max_connections = v.max_connections;
    g.redis = v.redis;
    g.journal = v.journal;
    g
}

/// The `/stats` (JSON) or `/metrics` (Prometheus text) response.
pub(super) fn response(
    prometheus: bool,
    counters: &Counters,
    g: &Gauges,
    headers: &Headers,
) -> Response {
    let resp = if prometheus {
        Response::new(
            200,
            "text/plain; version=0.0.4",
            crate::stats::prometheus(counters, g),
        )
    } else {
        Response::json(200, &crate::stats::json(counters, g))
    };
    resp.with(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Create, Limits, Resume};
    use crate::event::Event;
    use crate::id::ConnKey;

    #[test]
    fn connections_are_counted_by_state_and_private_only_streams_are_not_told_of() {
        let mut b = Broker::new(
            1,
            Limits {
                history: 10,
                history_bytes: 1 << 16,
            },
            100,
        );
        let s = b
            .resolve_as(&["open", "secret"], Create::Publisher)
            .unwrap();
        b.publish(&s[..1], &Event::new("a"), 2_000).unwrap();
        let frame = crate::frame::encode(None, None, "p", None);
        b.append_as(&s[1..], crate::id::EventId::new(9), &frame, true)
            .unwrap();
        let mut conns: Slab<Conn<()>> = Slab::new();
        let reading = conns.insert(Conn::new((), 0, 0));
        let streaming = conns.insert(Conn::new((), 0, 0));
        let cursors = b
            .subscribe(ConnKey::of(streaming), &s[..1], &Resume::Live)
            .cursors;
        conns[streaming].state = State::Streaming(cursors);
        let blocked = conns.insert(Conn::new((), 0, 0));
        let cursors = b
            .subscribe(ConnKey::of(blocked), &s[..1], &Resume::Live)
            .cursors;
        conns[blocked].state = State::Streaming(cursors);
        conns[blocked].out = Some(Box::new(super::super::conn::Out {
            tail: None,
            buf: b"x".to_vec(),
            pos: 0,
            since: 0,
        }));
        let memory = Account::new(crate::memory::Limits::new(1 << 30, 1 << 20, 1 << 20));
        let g = gauges(View {
            conns: &conns,
            broker: &b,
            memory: &memory,
            peers: &Peers::default(),
            timers: (2, 5),
            uptime_secs: 1.5,
            rss_bytes: 7,
            max_connections: 100,
            redis: None,
            journal: None,
        });
        assert_eq!(g.connections, 3);
        assert_eq!((g.sse_connections, g.http_connections), (2, 1));
        assert_eq!(g.blocked_subscribers, 1);
        assert!(conns.contains(reading));
        // Two streams hold history; only the one with public events shows.
        assert_eq!(g.streams, 1);
        assert_eq!(g.history_events, 2);
        assert_eq!((g.timers, g.timer_entries), (2, 5));
        assert_eq!((g.rss_bytes, g.max_connections), (7, 100));
        assert!(g.redis.is_none() && g.journal.is_none());
        // The broker's totals reach the counters.
        let mut c = Counters::default();
        sync_counters(&mut c, &b);
        assert_eq!(c.events_published, b.published);
        assert!(c.events_published >= 1);
        let text = response(true, &c, &g, &Vec::new()).encode(false, true, false);
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("text/plain; version=0.0.4"), "{text}");
    }
}
