//! Server counters and their two renderings: `/stats` JSON and `/metrics`
//! in Prometheus text format 0.0.4. Each metric is listed once, as a row
//! (where `/stats` puts it, its `/metrics` name, kind, help, getter) of
//! `GENERAL`, `REDIS`, `JOURNAL`, `MEMORY` or `KINDS`; both renderings walk
//! those rows. Counting is plain field increments on the reactor thread;
//! nothing here is shared across threads.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Monotonic counters. Gauges (connections, streams, RSS) are passed in at
/// render time by the server, which owns the things they measure.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed.
    pub closed: u64,
    /// Requests parsed.
    pub requests: u64,
    /// Events published.
    pub events_published: u64,
    /// Event frames written to subscribers.
    pub frames_written: u64,
    /// Bytes written to sockets.
    pub bytes_written: u64,
    /// Heartbeats written.
    pub heartbeats: u64,
    /// `gap` events sent.
    pub gaps_sent: u64,
    /// Subscribers dropped for lagging past `--max-pending-bytes`.
    pub slow_consumers_dropped: u64,
    /// Subscribers dropped by `--write-timeout`.
    pub write_timeouts: u64,
    /// Failed `accept` calls.
    pub accept_errors: u64,
    /// Times accepting was paused (EMFILE/ENFILE).
    pub accept_paused: u64,
    /// `/healthz` answered on a connection admitted over the cap.
    pub healthz_reserve: u64,
    /// Events evicted to keep the server-wide history budget.
    pub history_evicted_events: u64,
    /// Encoded bytes of those.
    pub history_evicted_bytes: u64,
    /// Events refused because their encoded frame exceeds a history bound.
    pub history_refused_too_large: u64,
    /// Streams dropped after `--stream-idle-ttl`.
    pub streams_expired: u64,
    /// Streams dropped with no readers and no history.
    pub streams_dropped_empty: u64,
    /// Times freed heap was handed back to the system (`malloc_trim`).
    pub memory_trims: u64,
    /// Rejections by reason (`bad_request`, `timeout`, `over_capacity`…).
    pub rejected: BTreeMap<&'static str, u64>,
}

impl Counters {
    /// Counts one rejected request or connection.
    pub fn reject(&mut self, reason: &'static str) {
        *self.rejected.entry(reason).or_insert(0) += 1;
    }
}

/// Point-in-time values owned by the server.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// Open connections.
    pub connections: usize,
    /// Connections reading requests.
    pub http_connections: usize,
    /// Connections streaming from streams.
    pub sse_connections: usize,
    /// Connections streaming from app timers.
    pub app_connections: usize,
    /// Streaming connections waiting for their socket.
    pub blocked_subscribers: usize,
    /// Public streams.
    pub streams: usize,
    /// Internal (app) streams.
    pub internal_streams: usize,
    /// Events retained in all histories.
    pub history_events: usize,
    /// Bytes retained in all histories.
    pub history_bytes: usize,
    /// The server-wide history budget (`--history-total-bytes`).
    pub history_budget: usize,
    /// Public streams only subscribers asked for.
    pub subscriber_streams: usize,
    /// Tombstones of dropped streams held.
    pub tombstones: usize,
    /// Live timers (the sweep, ticking connections, one-offs).
    pub timers: usize,
    /// Timer heap entries, cancelled ones not yet dropped included.
    pub timer_entries: usize,
    /// `size_of::<Conn>()`.
    pub connection_size: usize,
    /// Seconds since start.
    pub uptime_secs: f64,
    /// Resident set size.
    pub rss_bytes: u64,
    /// Bytes held in incomplete requests' buffers.
    pub buffered_request_bytes: usize,
    /// Distinct peer addresses connected.
    pub per_ip_entries: usize,
    /// The connection cap in force.
    pub max_connections: usize,
    /// The Redis bus, with `--redis`.
    pub redis: Option<RedisGauges>,
    /// The journal (`--data-dir`), when there is one.
    pub journal: Option<JournalGauges>,
    /// The memory account.
    pub memory: MemoryGauges,
}

/// The memory account (`--memory-max`) as `/stats` and `/metrics` show it.
#[derive(Debug, Default, Clone)]
pub struct MemoryGauges {
    /// The global bound.
    pub max: usize,
    /// Bytes held, all kinds together.
    pub used: usize,
    /// Each kind.
    pub kinds: Vec<KindGauge>,
}

/// One kind of memory in the account.
#[derive(Debug, Default, Clone)]
pub struct KindGauge {
    /// `history`, `requests`, `output`, `archives`, `bus`, `selectors`,
    /// `presence`, `tails`.
    pub name: &'static str,
    /// Bytes held now.
    pub used: usize,
    /// Its limit.
    pub limit: usize,
    /// The most held at once.
    pub peak: usize,
    /// Charges refused.
    pub refused: u64,
}

/// The Redis bus's state and counters (`--redis`).
#[derive(Debug, Default, Clone)]
pub struct RedisGauges {
    /// Both connections up, script loaded, subscribed.
    pub connected: bool,
    /// Connection attempts after the first.
    pub reconnects: u64,
    /// Publishes and fetches waiting for Redis.
    pub in_flight: usize,
    /// Moving average of command latency, µs.
    pub latency_avg_us: u64,
    /// Latency of the last command, µs.
    pub latency_last_us: u64,
    /// Announcements received from the bus.
    pub received: u64,
    /// Publishes Redis accepted.
    pub published: u64,
    /// History fetches issued.
    pub fetches: u64,
    /// Streams marked lost (holes the bus could not fill: subscribers get `gap`).
    pub bus_gaps: u64,
    /// Failed commands, bad messages and connection failures.
    pub errors: u64,
    /// Publishes answered 503 (Redis unavailable, busy or timed out).
    pub unavailable: u64,
    /// The most recent error.
    pub last_error: Option<String>,
}

/// What `/stats` and `/metrics` say about the journal.
#[derive(Debug, Default, Clone)]
pub struct JournalGauges {
    /// Bytes in segment files.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// Records appended since start.
    pub records_written: u64,
    /// Completed fsync rounds.
    pub fsyncs: u64,
    /// Last fsync round, µs.
    pub fsync_last_us: u64,
    /// Longest fsync round, µs.
    pub fsync_max_us: u64,
    /// Failed appends and fsync rounds.
    pub write_errors: u64,
    /// Compaction calls that did work.
    pub compactions: u64,
    /// Start-up: opening, repairing and replaying the journal, ms.
    pub replay_ms: u64,
    /// Start-up: events read back.
    pub replayed_events: u64,
    /// Replies waiting for an fsync (`--fsync always`).
    pub held_replies: usize,
}

/// How Prometheus reads a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Only goes up (until a restart).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One reading, as both renderings take it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(u64),
    /// Seconds and the like (`/metrics` shows three decimals).
    Float(f64),
    /// `true`/`false` in `/stats`, 1/0 in `/metrics`.
    Bool(bool),
    /// `/stats` only.
    Text(Option<String>),
}

impl Value {
    fn json(&self) -> serde_json::Value {
        match self {
            Value::Int(n) => (*n).into(),
            Value::Float(x) => (*x).into(),
            Value::Bool(b) => (*b).into(),
            Value::Text(t) => t.clone().into(),
        }
    }

    fn prometheus(&self) -> String {
        match self {
            Value::Int(n) => n.to_string(),
            Value::Float(x) => millis_as_secs((x * 1000.0).round() as u64),
            Value::Bool(b) => u64::from(*b).to_string(),
            Value::Text(_) => String::new(),
        }
    }
}

/// `ms` as seconds with three decimals, in integers: `{:.3}` of an `f64`
/// would link core's float formatting (about 20 KiB) for this one number.
fn millis_as_secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// A count of things (`usize` or `u64`) as a reading.
fn int(n: impl TryInto<u64>) -> Value {
    Value::Int(n.try_into().unwrap_or(u64::MAX))
}

/// One metric, listed once for both renderings. `G` reads it from its
/// source ([`Counters`] and [`Gauges`], or one section of them).
struct Metric<G> {
    /// Where `/stats` puts it (`a.b`: key `b` of object `a`); empty: not in
    /// `/stats`.
    json: &'static str,
    /// Its `/metrics` name after `ssed_`; empty: not in `/metrics`.
    prom: &'static str,
    kind: Kind,
    help: &'static str,
    get: G,
}

/// A row that reads its metric from an `S`.
type Row<S> = Metric<fn(&S) -> Value>;
/// What the server-wide rows read.
type Both<'a> = (&'a Counters, &'a Gauges);
type Top = Metric<fn(&Both) -> Value>;

/// The server-wide metrics, in `/metrics` order.
static GENERAL: &[Top] = &[
    Metric {
        json: "pid",
        prom: "",
        kind: Kind::Gauge,
        help: "Process id (tells apart the workers behind one port, --workers).",
        get: |&(_, _)| int(std::process::id()),
    },
    Metric {
        json: "uptime_secs",
        prom: "uptime_seconds",
        kind: Kind::Gauge,
        help: "Seconds since start.",
        get: |&(_, g)| Value::Float(g.uptime_secs),
    },
    Metric {
        json: "rss_bytes",
        prom: "resident_memory_bytes",
        kind: Kind::Gauge,
        help: "Resident set size.",
        get: |&(_, g)| int(g.rss_bytes),
    },
    Metric {
        json: "connections.total",
        prom: "connections",
        kind: Kind::Gauge,
        help: "Open connections.",
        get: |&(_, g)| int(g.connections),
    },
    Metric {
        json: "connections.http",
        prom: "",
        kind: Kind::Gauge,
        help: "Connections reading requests.",
        get: |&(_, g)| int(g.http_connections),
    },
    Metric {
        json: "connections.sse",
        prom: "",
        kind: Kind::Gauge,
        help: "Connections streaming from streams.",
        get: |&(_, g)| int(g.sse_connections),
    },
    Metric {
        json: "connections.app",
        prom: "",
        kind: Kind::Gauge,
        help: "Connections streaming from app timers.",
        get: |&(_, g)| int(g.app_connections),
    },
    Metric {
        json: "",
        prom: "sse_connections",
        kind: Kind::Gauge,
        help: "Open event-stream connections.",
        get: |&(_, g)| int(g.sse_connections + g.app_connections),
    },
    Metric {
        json: "connections.blocked",
        prom: "blocked_subscribers",
        kind: Kind::Gauge,
        help: "Subscribers waiting for their socket to drain.",
        get: |&(_, g)| int(g.blocked_subscribers),
    },
    Metric {
        json: "connections.max",
        prom: "",
        kind: Kind::Gauge,
        help: "The connection cap in force.",
        get: |&(_, g)| int(g.max_connections),
    },
    Metric {
        json: "connections.peers",
        prom: "",
        kind: Kind::Gauge,
        help: "Distinct peer addresses connected.",
        get: |&(_, g)| int(g.per_ip_entries),
    },
    Metric {
        json: "connection_struct_bytes",
        prom: "",
        kind: Kind::Gauge,
        help: "Bytes of one connection's struct.",
        get: |&(_, g)| int(g.connection_size),
    },
    Metric {
        json: "streams",
        prom: "streams",
        kind: Kind::Gauge,
        help: "Streams.",
        get: |&(_, g)| int(g.streams),
    },
    Metric {
        json: "internal_streams",
        prom: "",
        kind: Kind::Gauge,
        help: "Internal (app) streams.",
        get: |&(_, g)| int(g.internal_streams),
    },
    Metric {
        json: "history.events",
        prom: "",
        kind: Kind::Gauge,
        help: "Events retained in stream histories.",
        get: |&(_, g)| int(g.history_events),
    },
    Metric {
        json: "history.bytes",
        prom: "history_bytes",
        kind: Kind::Gauge,
        help: "Bytes retained in stream histories.",
        get: |&(_, g)| int(g.history_bytes),
    },
    Metric {
        json: "history.budget",
        prom: "history_budget_bytes",
        kind: Kind::Gauge,
        help: "Server-wide history budget (--history-total-bytes).",
        get: |&(_, g)| int(g.history_budget),
    },
    Metric {
        json: "history.evicted_events",
        prom: "",
        kind: Kind::Counter,
        help: "Events evicted to keep the history budget.",
        get: |&(c, _)| int(c.history_evicted_events),
    },
    Metric {
        json: "history.evicted_bytes",
        prom: "history_evicted_bytes_total",
        kind: Kind::Counter,
        help: "Encoded bytes evicted to keep the history budget.",
        get: |&(c, _)| int(c.history_evicted_bytes),
    },
    Metric {
        json: "history.refused_too_large",
        prom: "events_refused_too_large_total",
        kind: Kind::Counter,
        help: "Events refused because their encoded frame exceeds a history bound.",
        get: |&(c, _)| int(c.history_refused_too_large),
    },
    Metric {
        json: "stream_lifecycle.subscriber_only",
        prom: "",
        kind: Kind::Gauge,
        help: "Streams only subscribers asked for.",
        get: |&(_, g)| int(g.subscriber_streams),
    },
    Metric {
        json: "stream_lifecycle.expired",
        prom: "streams_expired_total",
        kind: Kind::Counter,
        help: "Streams dropped after --stream-idle-ttl.",
        get: |&(c, _)| int(c.streams_expired),
    },
    Metric {
        json: "stream_lifecycle.dropped_empty",
        prom: "",
        kind: Kind::Counter,
        help: "Streams dropped with no readers and no history.",
        get: |&(c, _)| int(c.streams_dropped_empty),
    },
    Metric {
        json: "stream_lifecycle.tombstones",
        prom: "",
        kind: Kind::Gauge,
        help: "Tombstones of dropped streams held.",
        get: |&(_, g)| int(g.tombstones),
    },
    Metric {
        json: "buffered_request_bytes",
        prom: "",
        kind: Kind::Gauge,
        help: "Bytes held in incomplete requests' buffers.",
        get: |&(_, g)| int(g.buffered_request_bytes),
    },
    Metric {
        json: "timers",
        prom: "timers",
        kind: Kind::Gauge,
        help: "Pending timer entries.",
        get: |&(_, g)| int(g.timers),
    },
    Metric {
        json: "timer_entries",
        prom: "",
        kind: Kind::Gauge,
        help: "Timer heap entries, cancelled ones not yet dropped included.",
        get: |&(_, g)| int(g.timer_entries),
    },
    Metric {
        json: "connections.accepted",
        prom: "connections_accepted_total",
        kind: Kind::Counter,
        help: "Connections accepted.",
        get: |&(c, _)| int(c.accepted),
    },
    Metric {
        json: "connections.closed",
        prom: "connections_closed_total",
        kind: Kind::Counter,
        help: "Connections closed.",
        get: |&(c, _)| int(c.closed),
    },
    Metric {
        json: "requests",
        prom: "requests_total",
        kind: Kind::Counter,
        help: "HTTP requests parsed.",
        get: |&(c, _)| int(c.requests),
    },
    Metric {
        json: "events_published",
        prom: "events_published_total",
        kind: Kind::Counter,
        help: "Events published.",
        get: |&(c, _)| int(c.events_published),
    },
    Metric {
        json: "frames_written",
        prom: "frames_written_total",
        kind: Kind::Counter,
        help: "Event frames written to subscribers.",
        get: |&(c, _)| int(c.frames_written),
    },
    Metric {
        json: "bytes_written",
        prom: "bytes_written_total",
        kind: Kind::Counter,
        help: "Bytes written to sockets.",
        get: |&(c, _)| int(c.bytes_written),
    },
    Metric {
        json: "heartbeats",
        prom: "heartbeats_total",
        kind: Kind::Counter,
        help: "Heartbeat comments written.",
        get: |&(c, _)| int(c.heartbeats),
    },
    Metric {
        json: "gaps_sent",
        prom: "gaps_total",
        kind: Kind::Counter,
        help: "Gap events sent.",
        get: |&(c, _)| int(c.gaps_sent),
    },
    Metric {
        json: "slow_consumers_dropped",
        prom: "slow_consumers_dropped_total",
        kind: Kind::Counter,
        help: "Subscribers dropped for lagging past --max-pending-bytes.",
        get: |&(c, _)| int(c.slow_consumers_dropped),
    },
    Metric {
        json: "write_timeouts",
        prom: "write_timeouts_total",
        kind: Kind::Counter,
        help: "Subscribers dropped after --write-timeout without progress.",
        get: |&(c, _)| int(c.write_timeouts),
    },
    Metric {
        json: "accept_errors",
        prom: "accept_errors_total",
        kind: Kind::Counter,
        help: "accept() failures (EMFILE and others).",
        get: |&(c, _)| int(c.accept_errors),
    },
    Metric {
        json: "accept_paused",
        prom: "",
        kind: Kind::Counter,
        help: "Times accepting was paused (EMFILE/ENFILE).",
        get: |&(c, _)| int(c.accept_paused),
    },
    Metric {
        json: "healthz_reserve",
        prom: "",
        kind: Kind::Counter,
        help: "/healthz answered on a connection admitted over the cap.",
        get: |&(c, _)| int(c.healthz_reserve),
    },
];

/// The Redis bus (`/stats` key `redis`), with `--redis`.
static REDIS: &[Row<RedisGauges>] = &[
    Metric {
        json: "connected",
        prom: "redis_connected",
        kind: Kind::Gauge,
        help: "1 while the Redis bus is up.",
        get: |r| Value::Bool(r.connected),
    },
    Metric {
        json: "reconnects",
        prom: "redis_reconnects_total",
        kind: Kind::Counter,
        help: "Redis connection attempts after the first.",
        get: |r| int(r.reconnects),
    },
    Metric {
        json: "in_flight",
        prom: "redis_in_flight",
        kind: Kind::Gauge,
        help: "Redis publishes and fetches waiting for replies.",
        get: |r| int(r.in_flight),
    },
    Metric {
        json: "latency_avg_us",
        prom: "redis_latency_avg_microseconds",
        kind: Kind::Gauge,
        help: "Moving average of Redis command latency.",
        get: |r| int(r.latency_avg_us),
    },
    Metric {
        json: "latency_last_us",
        prom: "",
        kind: Kind::Gauge,
        help: "Latency of the last Redis command.",
        get: |r| int(r.latency_last_us),
    },
    Metric {
        json: "received",
        prom: "redis_received_total",
        kind: Kind::Counter,
        help: "Events received from the bus.",
        get: |r| int(r.received),
    },
    Metric {
        json: "published",
        prom: "redis_published_total",
        kind: Kind::Counter,
        help: "Publishes Redis accepted.",
        get: |r| int(r.published),
    },
    Metric {
        json: "fetches",
        prom: "redis_fetches_total",
        kind: Kind::Counter,
        help: "History fetches from Redis.",
        get: |r| int(r.fetches),
    },
    Metric {
        json: "bus_gaps",
        prom: "redis_bus_gaps_total",
        kind: Kind::Counter,
        help: "Holes the bus could not fill (subscribers get gap).",
        get: |r| int(r.bus_gaps),
    },
    Metric {
        json: "errors",
        prom: "redis_errors_total",
        kind: Kind::Counter,
        help: "Failed Redis commands and connections.",
        get: |r| int(r.errors),
    },
    Metric {
        json: "unavailable",
        prom: "redis_unavailable_total",
        kind: Kind::Counter,
        help: "Publishes answered 503 because of Redis.",
        get: |r| int(r.unavailable),
    },
    Metric {
        json: "last_error",
        prom: "",
        kind: Kind::Gauge,
        help: "The most recent Redis error.",
        get: |r| Value::Text(r.last_error.clone()),
    },
];

/// The journal (`/stats` key `journal`), with `--data-dir`.
static JOURNAL: &[Row<JournalGauges>] = &[
    Metric {
        json: "bytes",
        prom: "journal_bytes",
        kind: Kind::Gauge,
        help: "Bytes in journal segment files.",
        get: |j| int(j.bytes),
    },
    Metric {
        json: "segments",
        prom: "journal_segments",
        kind: Kind::Gauge,
        help: "Journal segment files.",
        get: |j| int(j.segments),
    },
    Metric {
        json: "records_written",
        prom: "journal_records_written_total",
        kind: Kind::Counter,
        help: "Journal records appended.",
        get: |j| int(j.records_written),
    },
    Metric {
        json: "fsyncs",
        prom: "journal_fsyncs_total",
        kind: Kind::Counter,
        help: "Journal fsync rounds.",
        get: |j| int(j.fsyncs),
    },
    Metric {
        json: "fsync_last_us",
        prom: "journal_fsync_last_microseconds",
        kind: Kind::Gauge,
        help: "Duration of the last journal fsync round.",
        get: |j| int(j.fsync_last_us),
    },
    Metric {
        json: "fsync_max_us",
        prom: "journal_fsync_max_microseconds",
        kind: Kind::Gauge,
        help: "Longest journal fsync round.",
        get: |j| int(j.fsync_max_us),
    },
    Metric {
        json: "write_errors",
        prom: "journal_write_errors_total",
        kind: Kind::Counter,
        help: "Failed journal appends and fsync rounds.",
        get: |j| int(j.write_errors),
    },
    Metric {
        json: "compactions",
        prom: "journal_compactions_total",
        kind: Kind::Counter,
        help: "Journal compaction calls that did work.",
        get: |j| int(j.compactions),
    },
    Metric {
        json: "replay_ms",
        prom: "journal_replay_milliseconds",
        kind: Kind::Gauge,
        help: "Time to open and replay the journal at start-up.",
        get: |j| int(j.replay_ms),
    },
    Metric {
        json: "replayed_events",
        prom: "journal_replayed_events",
        kind: Kind::Gauge,
        help: "Events read back from the journal at start-up.",
        get: |j| int(j.replayed_events),
    },
    Metric {
        json: "held_replies",
        prom: "",
        kind: Kind::Gauge,
        help: "Replies waiting for an fsync (--fsync always).",
        get: |j| int(j.held_replies),
    },
];

/// The memory account, after the sections in `/metrics`.
static MEMORY: &[Top] = &[
    Metric {
        json: "memory.max",
        prom: "memory_max_bytes",
        kind: Kind::Gauge,
        help: "The memory account's global bound (--memory-max).",
        get: |&(_, g)| int(g.memory.max),
    },
    Metric {
        json: "memory.used",
        prom: "memory_used_bytes",
        kind: Kind::Gauge,
        help: "Bytes held in the memory account, all kinds together.",
        get: |&(_, g)| int(g.memory.used),
    },
    Metric {
        json: "memory.trims",
        prom: "",
        kind: Kind::Counter,
        help: "Times freed heap was handed back to the system (malloc_trim).",
        get: |&(c, _)| int(c.memory_trims),
    },
];

/// Each kind of the memory account: `/stats` `memory.kinds.NAME.KEY`,
/// `/metrics` one sample per kind labelled `kind="NAME"`.
static KINDS: &[Row<KindGauge>] = &[
    Metric {
        json: "used",
        prom: "memory_kind_bytes",
        kind: Kind::Gauge,
        help: "Bytes held in the memory account, by kind.",
        get: |k| int(k.used),
    },
    Metric {
        json: "limit",
        prom: "memory_kind_limit_bytes",
        kind: Kind::Gauge,
        help: "The memory account's limit of each kind.",
        get: |k| int(k.limit),
    },
    Metric {
        json: "peak",
        prom: "",
        kind: Kind::Gauge,
        help: "The most held at once in the memory account, by kind.",
        get: |k| int(k.peak),
    },
    Metric {
        json: "refused",
        prom: "memory_refused_total",
        kind: Kind::Counter,
        help: "Charges the memory account refused, by kind.",
        get: |k| int(k.refused),
    },
];

/// Rejections by reason: `/stats` `rejected.REASON`, `/metrics` one
/// sample per reason labelled `reason="REASON"`.
const REJECTED: Metric<()> = Metric {
    json: "rejected",
    prom: "rejected_total",
    kind: Kind::Counter,
    help: "Requests or connections rejected, by reason.",
    get: (),
};

/// Puts `v` at `path` (`a.b`) in `obj`, making the objects on the way.
fn put(obj: &mut serde_json::Map<String, serde_json::Value>, path: &str, v: serde_json::Value) {
    match path.split_once('.') {
        None => {
            obj.insert(path.to_string(), v);
        }
        Some((head, rest)) => {
            let inner = obj
                .entry(head)
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let serde_json::Value::Object(m) = inner {
                put(m, rest, v);
            }
        }
    }
}

/// A section's rows as one `/stats` object.
fn section<S>(s: &S, rows: &[Row<S>]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for r in rows.iter().filter(|r| !r.json.is_empty()) {
        put(&mut m, r.json, (r.get)(s).json());
    }
    serde_json::Value::Object(m)
}

/// `/stats` as JSON.
pub fn json(c: &Counters, g: &Gauges) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for r in GENERAL.iter().chain(MEMORY).filter(|r| !r.json.is_empty()) {
        put(&mut m, r.json, (r.get)(&(c, g)).json());
    }
    let kinds = g
        .memory
        .kinds
        .iter()
        .map(|k| (k.name.to_string(), section(k, KINDS)))
        .collect::<serde_json::Map<_, _>>();
    put(&mut m, "memory.kinds", kinds.into());
    put(
        &mut m,
        REJECTED.json,
        serde_json::to_value(&c.rejected).unwrap_or_default(),
    );
    let r = g.redis.as_ref().map(|r| section(r, REDIS));
    m.insert("redis".into(), r.into());
    let j = g.journal.as_ref().map(|j| section(j, JOURNAL));
    m.insert("journal".into(), j.into());
    serde_json::Value::Object(m)
}

/// Writes a metric's `# HELP` and `# TYPE` lines.
fn head<G>(s: &mut String, m: &Metric<G>) {
    let _ = writeln!(
        s,
        "# HELP ssed_{0} {1}\n# TYPE ssed_{0} {2}",
        m.prom,
        m.help,
        m.kind.name()
    );
}

/// Writes each of `rows` that `/metrics` shows, read from `s`.
fn samples<S>(out: &mut String, rows: &[Row<S>], s: &S) {
    for r in rows.iter().filter(|r| !r.prom.is_empty()) {
        head(out, r);
        let _ = writeln!(out, "ssed_{} {}", r.prom, (r.get)(s).prometheus());
    }
}

/// `/metrics` in Prometheus text format 0.0.4.
pub fn prometheus(c: &Counters, g: &Gauges) -> String {
    let mut s = String::new();
    samples(&mut s, GENERAL, &(c, g));
    if let Some(r) = &g.redis {
        samples(&mut s, REDIS, r);
    }
    if let Some(j) = &g.journal {
        samples(&mut s, JOURNAL, j);
    }
    samples(&mut s, MEMORY, &(c, g));
    for r in KINDS.iter().filter(|r| !r.prom.is_empty()) {
        head(&mut s, r);
        for k in &g.memory.kinds {
            let v = (r.get)(k).prometheus();
            let _ = writeln!(s, "ssed_{}{{kind=\"{}\"}} {v}", r.prom, k.name);
        }
    }
    head(&mut s, &REJECTED);
    for (reason, n) in &c.rejected {
        let _ = writeln!(s, "ssed_{}{{reason=\"{reason}\"}} {n}", REJECTED.prom);
    }
    s
}

/// Resident set size of this process from `/proc/self/statm` (0 if unknown).
pub fn rss_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_has_three_decimals() {
        assert_eq!(millis_as_secs(0), "0.000");
        assert_eq!(millis_as_secs(1_005), "1.005");
        assert_eq!(millis_as_secs(86_400_120), "86400.120");
        let g = Gauges {
            uptime_secs: 2.0004,
            ..Gauges::default()
        };
        assert!(prometheus(&Counters::default(), &g).contains("\nssed_uptime_seconds 2.000\n"));
    }

    /// Every kind of the memory account (the bus's fetches and the
    /// selector registry included) shows in both renderings with its
    /// figures, as the reactor hands them over.
    #[test]
    fn every_memory_kind_is_shown() {
        let names = [
            "history",
            "requests",
            "output",
            "archives",
            "bus",
            "selectors",
        ];
        let g = Gauges {
            memory: MemoryGauges {
                max: 100 << 20,
                used: 1234 + 777,
                kinds: names
                    .iter()
                    .map(|&name| KindGauge {
                        name,
                        used: match name {
                            "bus" => 1234,
                            "selectors" => 777,
                            _ => 0,
                        },
                        limit: 1 << 20,
                        peak: 2000,
                        refused: u64::from(name == "selectors"),
                    })
                    .collect(),
            },
            ..Gauges::default()
        };
        let c = Counters::default();
        let text = prometheus(&c, &g);
        let j = json(&c, &g);
        for (k, used, refused) in [("bus", 1234, 0), ("selectors", 777, 1), ("history", 0, 0)] {
            let line = format!("ssed_memory_kind_bytes{{kind=\"{k}\"}} {used}\n");
            assert!(text.contains(&line), "{text}");
            let line = format!("ssed_memory_refused_total{{kind=\"{k}\"}} {refused}\n");
            assert!(text.contains(&line), "{text}");
            let line = format!("ssed_memory_kind_limit_bytes{{kind=\"{k}\"}} 1048576\n");
            assert!(text.contains(&line), "{text}");
            assert_eq!(j["memory"]["kinds"][k]["used"], used);
            assert_eq!(j["memory"]["kinds"][k]["refused"], refused);
            assert_eq!(j["memory"]["kinds"][k]["peak"], 2000);
        }
        assert_eq!(j["memory"]["kinds"].as_object().unwrap().len(), names.len());
        assert_eq!(j["memory"]["used"], 1234 + 777);
    }

    #[test]
    fn prometheus_shape() {
        let mut c = Counters {
            events_published: 3,
            ..Counters::default()
        };
        c.reject("timeout");
        let text = prometheus(&c, &Gauges::default());
        assert!(text.contains(
            "# TYPE ssed_events_published_total counter\nssed_events_published_total 3\n"
        ));
        assert!(text.contains("ssed_rejected_total{reason=\"timeout\"} 1\n"));
        let g = Gauges {
            memory: MemoryGauges {
                max: 100,
                used: 7,
                kinds: vec![KindGauge {
                    name: "output",
                    used: 7,
                    limit: 25,
                    peak: 9,
                    refused: 2,
                }],
            },
            ..Gauges::default()
        };
        let text = prometheus(&c, &g);
        assert!(text.contains("ssed_memory_max_bytes 100\n"), "{text}");
        assert!(text.contains("# TYPE ssed_memory_refused_total counter\nssed_memory_refused_total{kind=\"output\"} 2\n"), "{text}");
        assert!(
            text.contains("ssed_memory_kind_bytes{kind=\"output\"} 7\n"),
            "{text}"
        );
        let j = json(&c, &g);
        assert_eq!(j["memory"]["kinds"]["output"]["peak"], 9);
        assert_eq!(j["memory"]["used"], 7);
        let j = json(&c, &Gauges::default());
        assert_eq!(j["events_published"], 3);
        assert_eq!(j["rejected"]["timeout"], 1);
    }

    /// Every counter and gauge set to a different number, both sections on.
    fn sample() -> (Counters, Gauges) {
        let mut n = 0u64;
        let mut v = || {
            n += 1;
            n
        };
        let mut c = Counters {
            accepted: v(),
            closed: v(),
            requests: v(),
            events_published: v(),
            frames_written: v(),
            bytes_written: v(),
            heartbeats: v(),
            gaps_sent: v(),
            slow_consumers_dropped: v(),
            write_timeouts: v(),
            accept_errors: v(),
            accept_paused: v(),
            healthz_reserve: v(),
            history_evicted_events: v(),
            history_evicted_bytes: v(),
            history_refused_too_large: v(),
            streams_expired: v(),
            streams_dropped_empty: v(),
            memory_trims: v(),
            rejected: BTreeMap::new(),
        };
        c.reject("timeout");
        c.reject("bad_request");
        c.reject("bad_request");
        let mut u = || v() as usize;
        let g = Gauges {
            connections: u(),
            http_connections: u(),
            sse_connections: u(),
            app_connections: u(),
            blocked_subscribers: u(),
            streams: u(),
            internal_streams: u(),
            history_events: u(),
            history_bytes: u(),
            history_budget: u(),
            subscriber_streams: u(),
            tombstones: u(),
            timers: u(),
            timer_entries: u(),
            connection_size: u(),
            uptime_secs: 12.3456,
            rss_bytes: u() as u64,
            buffered_request_bytes: u(),
            per_ip_entries: u(),
            max_connections: u(),
            redis: Some(RedisGauges {
                connected: true,
                reconnects: u() as u64,
                in_flight: u(),
                latency_avg_us: u() as u64,
                latency_last_us: u() as u64,
                received: u() as u64,
                published: u() as u64,
                fetches: u() as u64,
                bus_gaps: u() as u64,
                errors: u() as u64,
                unavailable: u() as u64,
                last_error: Some("boom".into()),
            }),
            journal: Some(JournalGauges {
                bytes: u() as u64,
                segments: u(),
                records_written: u() as u64,
                fsyncs: u() as u64,
                fsync_last_us: u() as u64,
                fsync_max_us: u() as u64,
                write_errors: u() as u64,
                compactions: u() as u64,
                replay_ms: u() as u64,
                replayed_events: u() as u64,
                held_replies: u(),
            }),
            memory: MemoryGauges {
                max: u(),
                used: u(),
                kinds: ["history", "output"]
                    .map(|name| KindGauge {
                        name,
                        used: u(),
                        limit: u(),
                        peak: u(),
                        refused: u() as u64,
                    })
                    .to_vec(),
            },
        };
        (c, g)
    }

    /// A `/stats` value as `/metrics` writes it.
    fn as_sample(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Bool(b) => u64::from(*b).to_string(),
            serde_json::Value::Number(n) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap()),
            other => other.to_string(),
        }
    }

    /// Each `/metrics` sample is in `/stats` with the same value (the one
    /// sum, `sse_connections`, as its two parts), and each rendering shows
    /// every metric of the table and nothing else.
    #[test]
    fn both_renderings_carry_the_same_metrics() {
        let (c, g) = sample();
        let text = prometheus(&c, &g);
        let stats = json(&c, &g);
        let at = |path: &str| path.split('.').fold(&stats, |v, k| &v[k]).clone();
        // name (with labels) -> value, from the sample lines.
        let prom: BTreeMap<&str, &str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').unwrap())
            .collect();
        let mut expect = BTreeMap::new();
        let mut leaves = vec![
            "rejected.timeout".to_string(),
            "rejected.bad_request".into(),
        ];
        let mut row = |json: String, prom: String, shown: String| {
            if !json.is_empty() {
                assert_eq!(as_sample(&at(&json)), shown, "{json}");
                leaves.push(json);
            }
            if !prom.is_empty() {
                expect.insert(prom, shown);
            }
        };
        for r in GENERAL.iter().chain(MEMORY) {
            row(
                r.json.into(),
                r.prom.into(),
                (r.get)(&(&c, &g)).prometheus(),
            );
        }
        for r in REDIS {
            let v = (r.get)(g.redis.as_ref().unwrap());
            let shown = match &v {
                Value::Text(t) => serde_json::to_string(t).unwrap(),
                v => v.prometheus(),
            };
            row(format!("redis.{}", r.json), r.prom.into(), shown);
        }
        for r in JOURNAL {
            let v = (r.get)(g.journal.as_ref().unwrap()).prometheus();
            row(format!("journal.{}", r.json), r.prom.into(), v);
        }
        for k in &g.memory.kinds {
            for r in KINDS {
                let prom = if r.prom.is_empty() {
                    String::new()
                } else {
                    format!("{}{{kind=\"{}\"}}", r.prom, k.name)
                };
                let json = format!("memory.kinds.{}.{}", k.name, r.json);
                row(json, prom, (r.get)(k).prometheus());
            }
        }
        for (reason, n) in &c.rejected {
            expect.insert(
                format!("rejected_total{{reason=\"{reason}\"}}"),
                n.to_string(),
            );
        }
        let expect: BTreeMap<String, &str> = expect
            .iter()
            .map(|(k, v)| (format!("ssed_{k}"), v.as_str()))
            .collect();
        let prom: BTreeMap<String, &str> =
            prom.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(prom, expect);
        // The one `/metrics` sample not in `/stats` is a sum of two that are
        // (checked below to be the only one).
        assert_eq!(
            prom["ssed_sse_connections"],
            (at("connections.sse").as_u64().unwrap() + at("connections.app").as_u64().unwrap())
                .to_string()
        );
        // Every `/stats` leaf is a row.
        fn walk(v: &serde_json::Value, path: String, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        walk(v, p, out);
                    }
                }
                _ => out.push(path),
            }
        }
        let mut seen = Vec::new();
        walk(&stats, String::new(), &mut seen);
        seen.sort();
        leaves.sort();
        assert_eq!(seen, leaves);
        let only_metrics: Vec<&str> = GENERAL
            .iter()
            .chain(MEMORY)
            .filter(|r| r.json.is_empty())
            .map(|r| r.prom)
            .chain(REDIS.iter().filter(|r| r.json.is_empty()).map(|r| r.prom))
            .chain(JOURNAL.iter().filter(|r| r.json.is_empty()).map(|r| r.prom))
            .chain(KINDS.iter().filter(|r| r.json.is_empty()).map(|r| r.prom))
            .collect();
        assert_eq!(only_metrics, ["sse_connections"]);
    }
}
