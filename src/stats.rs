//! Server counters and their two renderings: `/stats` JSON and `/metrics`
//! in Prometheus text format 0.0.4. Counting is plain field increments on
//! the reactor thread; nothing here is shared across threads.

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
    /// `history`, `requests`, `output`, `archives`, `bus`, `selectors`.
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

/// `/stats` as JSON.
pub fn json(c: &Counters, g: &Gauges) -> serde_json::Value {
    serde_json::json!({
        // Tells apart the workers behind one port (`--workers`).
        "pid": std::process::id(),
        "uptime_secs": g.uptime_secs,
        "rss_bytes": g.rss_bytes,
        "connections": {
            "total": g.connections,
            "http": g.http_connections,
            "sse": g.sse_connections,
            "app": g.app_connections,
            "blocked": g.blocked_subscribers,
            "max": g.max_connections,
            "peers": g.per_ip_entries,
            "accepted": c.accepted,
            "closed": c.closed,
        },
        "connection_struct_bytes": g.connection_size,
        "streams": g.streams,
        "internal_streams": g.internal_streams,
        "history": {
            "events": g.history_events,
            "bytes": g.history_bytes,
            "budget": g.history_budget,
            "evicted_events": c.history_evicted_events,
            "evicted_bytes": c.history_evicted_bytes,
            "refused_too_large": c.history_refused_too_large,
        },
        "stream_lifecycle": {
            "subscriber_only": g.subscriber_streams,
            "expired": c.streams_expired,
            "dropped_empty": c.streams_dropped_empty,
            "tombstones": g.tombstones,
        },
        "buffered_request_bytes": g.buffered_request_bytes,
        "memory": {
            "max": g.memory.max,
            "used": g.memory.used,
            "trims": c.memory_trims,
            "kinds": g.memory.kinds.iter().map(|k| (k.name.to_string(), serde_json::json!({
                "used": k.used,
                "limit": k.limit,
                "peak": k.peak,
                "refused": k.refused,
            }))).collect::<serde_json::Map<_, _>>(),
        },
        "timers": g.timers,
        "timer_entries": g.timer_entries,
        "requests": c.requests,
        "events_published": c.events_published,
        "frames_written": c.frames_written,
        "bytes_written": c.bytes_written,
        "heartbeats": c.heartbeats,
        "gaps_sent": c.gaps_sent,
        "slow_consumers_dropped": c.slow_consumers_dropped,
        "write_timeouts": c.write_timeouts,
        "accept_errors": c.accept_errors,
        "accept_paused": c.accept_paused,
        "healthz_reserve": c.healthz_reserve,
        "rejected": c.rejected,
        "redis": g.redis.as_ref().map(|r| serde_json::json!({
            "connected": r.connected,
            "reconnects": r.reconnects,
            "in_flight": r.in_flight,
            "latency_avg_us": r.latency_avg_us,
            "latency_last_us": r.latency_last_us,
            "received": r.received,
            "published": r.published,
            "fetches": r.fetches,
            "bus_gaps": r.bus_gaps,
            "errors": r.errors,
            "unavailable": r.unavailable,
            "last_error": r.last_error,
        })),
        "journal": g.journal.as_ref().map(|j| serde_json::json!({
            "bytes": j.bytes,
            "segments": j.segments,
            "records_written": j.records_written,
            "fsyncs": j.fsyncs,
            "fsync_last_us": j.fsync_last_us,
            "fsync_max_us": j.fsync_max_us,
            "write_errors": j.write_errors,
            "compactions": j.compactions,
            "replay_ms": j.replay_ms,
            "replayed_events": j.replayed_events,
            "held_replies": j.held_replies,
        })),
    })
}

/// `ms` as seconds with three decimals, in integers: `{:.3}` of an `f64`
/// would link core's float formatting (about 20 KiB) for this one number.
fn millis_as_secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// `/metrics` in Prometheus text format 0.0.4.
pub fn prometheus(c: &Counters, g: &Gauges) -> String {
    let mut s = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(
            s,
            "# HELP ssed_{name} {help}\n# TYPE ssed_{name} {kind}\nssed_{name} {value}\n"
        );
    };
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since start.",
        millis_as_secs((g.uptime_secs * 1000.0).round() as u64),
    );
    metric(
        "resident_memory_bytes",
        "gauge",
        "Resident set size.",
        g.rss_bytes.to_string(),
    );
    metric(
        "connections",
        "gauge",
        "Open connections.",
        g.connections.to_string(),
    );
    metric(
        "sse_connections",
        "gauge",
        "Open event-stream connections.",
        (g.sse_connections + g.app_connections).to_string(),
    );
    metric(
        "blocked_subscribers",
        "gauge",
        "Subscribers waiting for their socket to drain.",
        g.blocked_subscribers.to_string(),
    );
    metric("streams", "gauge", "Streams.", g.streams.to_string());
    metric(
        "history_bytes",
        "gauge",
        "Bytes retained in stream histories.",
        g.history_bytes.to_string(),
    );
    metric(
        "history_budget_bytes",
        "gauge",
        "Server-wide history budget (--history-total-bytes).",
        g.history_budget.to_string(),
    );
    metric(
        "history_evicted_bytes_total",
        "counter",
        "Encoded bytes evicted to keep the history budget.",
        c.history_evicted_bytes.to_string(),
    );
    metric(
        "events_refused_too_large_total",
        "counter",
        "Events refused because their encoded frame exceeds a history bound.",
        c.history_refused_too_large.to_string(),
    );
    metric(
        "streams_expired_total",
        "counter",
        "Streams dropped after --stream-idle-ttl.",
        c.streams_expired.to_string(),
    );
    metric(
        "timers",
        "gauge",
        "Pending timer entries.",
        g.timers.to_string(),
    );
    metric(
        "connections_accepted_total",
        "counter",
        "Connections accepted.",
        c.accepted.to_string(),
    );
    metric(
        "connections_closed_total",
        "counter",
        "Connections closed.",
        c.closed.to_string(),
    );
    metric(
        "requests_total",
        "counter",
        "HTTP requests parsed.",
        c.requests.to_string(),
    );
    metric(
        "events_published_total",
        "counter",
        "Events published.",
        c.events_published.to_string(),
    );
    metric(
        "frames_written_total",
        "counter",
        "Event frames written to subscribers.",
        c.frames_written.to_string(),
    );
    metric(
        "bytes_written_total",
        "counter",
        "Bytes written to sockets.",
        c.bytes_written.to_string(),
    );
    metric(
        "heartbeats_total",
        "counter",
        "Heartbeat comments written.",
        c.heartbeats.to_string(),
    );
    metric(
        "gaps_total",
        "counter",
        "Gap events sent.",
        c.gaps_sent.to_string(),
    );
    metric(
        "slow_consumers_dropped_total",
        "counter",
        "Subscribers dropped for lagging past --max-pending-bytes.",
        c.slow_consumers_dropped.to_string(),
    );
    metric(
        "write_timeouts_total",
        "counter",
        "Subscribers dropped after --write-timeout without progress.",
        c.write_timeouts.to_string(),
    );
    metric(
        "accept_errors_total",
        "counter",
        "accept() failures (EMFILE and others).",
        c.accept_errors.to_string(),
    );
    if let Some(r) = &g.redis {
        for (name, kind, help, v) in [
            (
                "redis_connected",
                "gauge",
                "1 while the Redis bus is up.",
                u64::from(r.connected),
            ),
            (
                "redis_reconnects_total",
                "counter",
                "Redis connection attempts after the first.",
                r.reconnects,
            ),
            (
                "redis_in_flight",
                "gauge",
                "Redis publishes and fetches waiting for replies.",
                r.in_flight as u64,
            ),
            (
                "redis_latency_avg_microseconds",
                "gauge",
                "Moving average of Redis command latency.",
                r.latency_avg_us,
            ),
            (
                "redis_received_total",
                "counter",
                "Events received from the bus.",
                r.received,
            ),
            (
                "redis_published_total",
                "counter",
                "Publishes Redis accepted.",
                r.published,
            ),
            (
                "redis_fetches_total",
                "counter",
                "History fetches from Redis.",
                r.fetches,
            ),
            (
                "redis_bus_gaps_total",
                "counter",
                "Holes the bus could not fill (subscribers get gap).",
                r.bus_gaps,
            ),
            (
                "redis_errors_total",
                "counter",
                "Failed Redis commands and connections.",
                r.errors,
            ),
            (
                "redis_unavailable_total",
                "counter",
                "Publishes answered 503 because of Redis.",
                r.unavailable,
            ),
        ] {
            metric(name, kind, help, v.to_string());
        }
    }
    if let Some(j) = &g.journal {
        for (name, kind, help, v) in [
            (
                "journal_bytes",
                "gauge",
                "Bytes in journal segment files.",
                j.bytes,
            ),
            (
                "journal_segments",
                "gauge",
                "Journal segment files.",
                j.segments as u64,
            ),
            (
                "journal_records_written_total",
                "counter",
                "Journal records appended.",
                j.records_written,
            ),
            (
                "journal_fsyncs_total",
                "counter",
                "Journal fsync rounds.",
                j.fsyncs,
            ),
            (
                "journal_fsync_last_microseconds",
                "gauge",
                "Duration of the last journal fsync round.",
                j.fsync_last_us,
            ),
            (
                "journal_fsync_max_microseconds",
                "gauge",
                "Longest journal fsync round.",
                j.fsync_max_us,
            ),
            (
                "journal_write_errors_total",
                "counter",
                "Failed journal appends and fsync rounds.",
                j.write_errors,
            ),
            (
                "journal_compactions_total",
                "counter",
                "Journal compaction calls that did work.",
                j.compactions,
            ),
            (
                "journal_replay_milliseconds",
                "gauge",
                "Time to open and replay the journal at start-up.",
                j.replay_ms,
            ),
            (
                "journal_replayed_events",
                "gauge",
                "Events read back from the journal at start-up.",
                j.replayed_events,
            ),
        ] {
            metric(name, kind, help, v.to_string());
        }
    }
    metric(
        "memory_max_bytes",
        "gauge",
        "The memory account's global bound (--memory-max).",
        g.memory.max.to_string(),
    );
    metric(
        "memory_used_bytes",
        "gauge",
        "Bytes held in the memory account, all kinds together.",
        g.memory.used.to_string(),
    );
    for (name, help, value) in [
        (
            "memory_kind_bytes",
            "Bytes held in the memory account, by kind.",
            &(|k: &KindGauge| k.used as u64) as &dyn Fn(&KindGauge) -> u64,
        ),
        (
            "memory_kind_limit_bytes",
            "The memory account's limit of each kind.",
            &|k: &KindGauge| k.limit as u64,
        ),
        (
            "memory_refused_total",
            "Charges the memory account refused, by kind.",
            &|k: &KindGauge| k.refused,
        ),
    ] {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(s, "# HELP ssed_{name} {help}\n# TYPE ssed_{name} {kind}");
        for k in &g.memory.kinds {
            let _ = writeln!(s, "ssed_{name}{{kind=\"{}\"}} {}", k.name, value(k));
        }
    }
    let _ = write!(s, "# HELP ssed_rejected_total Requests or connections rejected, by reason.\n# TYPE ssed_rejected_total counter\n");
    for (reason, n) in &c.rejected {
        let _ = writeln!(s, "ssed_rejected_total{{reason=\"{reason}\"}} {n}");
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
}
