//! Publish latency through the Mercure hub while many subscribers hold
//! URI-template selectors built to make matching expensive: every template
//! matches the topic's first literal and runs 16 variables with literals
//! that occur everywhere in it, and fails only at its end. Measured over a
//! real `Server` on loopback, one keep-alive publisher connection, each
//! publish a round trip (send the form, read the whole reply).
//!
//! Publishes go to the same topic each time (the per-topic cache answers)
//! or to a new one each time (every template is matched): topics the
//! templates' exact summary refuses (no `b`; a `b` or `%62` too early),
//! topics built to pass it (a `b` late: only a matcher can say no), and
//! topics every template matches (the cost is then delivery). Two template families:
//! literals without `%` (a pass over the topic decides) and with `%62`
//! (with a `%`-encoded topic, the bitset matcher decides).
//!
//! `cargo bench --bench selectors` runs it (`-- quick` for fewer
//! publishes). Figures vary with the machine's load: compare the rows of
//! one run, not runs on different machines.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ssed::internals::auth::selector::{Selector, Topic};
use ssed::internals::auth::{mint_hs256, Key};
use ssed::{Command, Config, Server};

mod hub;
use hub::enc;

const KEY: &[u8] = b"ssed-selector-bench-key-0123456789abcdef";
/// Distinct templates (the selector-stream limit).
const DISTINCT: usize = 1024;

fn token(claims: serde_json::Value) -> String {
    mint_hs256(&claims, &Key::new(KEY.to_vec()).expect("key"))
}

/// Template `i`: 16 variables between literals of one or two `a`s (which
/// occur at every offset of an all-`a` topic), then a `b` that does not:
/// a matcher does all the work and still says no. Distinct for each `i`.
/// `pct`: `%62` instead of that `b`.
fn template(i: usize, pct: bool) -> String {
    if std::env::var_os("ISSUE_TEMPLATES").is_some() {
        // The shape: 2 KB of variables (refused since: 400).
        let mut t = format!("https://ex.com/users/mallory/{{v{i}}}");
        while t.len() < 2040 {
            t.push_str("{a}");
        }
        return t;
    }
    let mut t = String::from("https://ex.com/users/mallory/");
    for j in 0..14 {
        t.push_str(&format!("{{v{j}}}"));
        t.push_str(if i >> j & 1 == 1 { "aa" } else { "a" });
    }
    t.push_str(if pct { "{y}%62{z}" } else { "{y}b{z}" });
    t
}

/// The topics published to.
#[derive(Clone, Copy, PartialEq)]
enum Topics {
    /// One topic, every time.
    Same,
    /// A new one each time; no `b`, so the templates' summary refuses.
    New,
    /// The same, with percent-encoded value tokens (three bytes each).
    NewPct,
    /// A new one each time starting with `b`: passes the summary of
    /// templates without `%`, and a matcher says no.
    NewPasses,
    /// A new one each time starting with `%62`, `%`-encoded after: passes
    /// the summary of both families, and a matcher says no.
    NewPctPasses,
    /// A new one each time with a `b` near its end, then a lone `%`:
    /// passes every summary of templates without `%`, so a matcher walks
    /// the whole topic to say no.
    NewLate,
    /// A new one each time that every template matches.
    NewMatched,
}

impl Topics {
    fn label(self) -> &'static str {
        match self {
            Topics::Same => "same topic",
            Topics::New => "new topic each",
            Topics::NewPct => "new %-encoded topic each",
            Topics::NewPasses => "new topic each, b early",
            Topics::NewPctPasses => "new %-encoded topic each, %62 early",
            Topics::NewLate => "new topic each, b late",
            Topics::NewMatched => "new topic each, all match",
        }
    }
}

/// Opens `subs` subscriptions of 16 templates each (template numbers
/// wrapping at [`DISTINCT`]), as token holders; returns the sockets and
/// how many were accepted.
fn subscribe(addr: SocketAddr, subs: usize, pct: bool) -> (Vec<TcpStream>, usize) {
    let t = token(serde_json::json!({"mercure": {"subscribe": ["*"]}}));
    let mut out = Vec::with_capacity(subs);
    let mut ok = 0;
    for c in 0..subs {
        let q: Vec<String> = (0..16)
            .map(|i| format!("topic={}", enc(&template((c * 16 + i) % DISTINCT, pct))))
            .collect();
        let Ok(mut s) = TcpStream::connect(addr) else {
            break;
        };
        let req = format!(
            "GET /.well-known/mercure?{}&authorization={t} HTTP/1.1\r\nHost: b\r\n\r\n",
            q.join("&")
        );
        let _ = s.write_all(req.as_bytes());
        let mut head = Vec::new();
        let mut b = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&b[..n]),
            }
        }
        if head.starts_with(b"HTTP/1.1 200") {
            ok += 1;
        }
        out.push(s);
    }
    (out, ok)
}

/// Topic `k` of `kind` (numbered from `salt`), 1,024 bytes: `a`s after
/// the prefix every template matches (and, for a new topic each time, a
/// counter `{z}` would take too).
fn topic_for(kind: Topics, pct: bool, salt: usize, k: usize) -> String {
    let num = format!("{:07}", salt * 1_000_000 + k);
    let (head, tail) = match kind {
        Topics::Same => ("", String::new()),
        Topics::New => ("", num),
        Topics::NewPct => ("", format!("%41%2F{num}")),
        Topics::NewPasses => ("b", num),
        Topics::NewPctPasses => ("%62", format!("%41%2F{num}")),
        Topics::NewLate => ("", format!("b%z{num}")),
        Topics::NewMatched if pct => ("", format!("%62{num}")),
        Topics::NewMatched => ("", format!("b{num}")),
    };
    let mut topic = format!("https://ex.com/users/mallory/{head}");
    while topic.len() < 1024 - tail.len() {
        topic.push('a');
    }
    topic.push_str(&tail);
    topic
}

/// The matching alone, in-process (no loopback round trip to blur it):
/// one new topic against the 1,024 distinct templates of a family, as a
/// publish to a new topic does it (prepare the topic once, then match
/// each template). Returns the latencies, sorted.
fn match_only(n: usize, kind: Topics, pct: bool, salt: usize) -> Vec<Duration> {
    let sels: Vec<Selector> = (0..DISTINCT)
        .filter_map(|i| Selector::parse(&template(i, pct)).ok())
        .collect();
    let mut lat = Vec::with_capacity(n);
    for k in 0..n {
        let topic = topic_for(kind, pct, salt, k);
        let start = Instant::now();
        let prepared = Topic::new(&topic);
        let hits = sels.iter().filter(|s| s.matches_in(&prepared)).count();
        lat.push(start.elapsed());
        std::hint::black_box(hits);
    }
    lat.sort();
    lat
}

/// Publishes `n` events to `kind` of topics (numbered from `salt`).
/// Returns the latencies, sorted.
fn publish(addr: SocketAddr, n: usize, kind: Topics, pct: bool, salt: usize) -> Vec<Duration> {
    let t = token(serde_json::json!({"mercure": {"publish": ["*"]}}));
    // 1,024 bytes: `a`s after the prefix every template matches (and,
    // for a new topic each time, a counter `{z}` would take too).
    hub::publish_each(addr, &t, n, |k| topic_for(kind, pct, salt, k))
}

fn row(name: &str, lat: &[Duration]) {
    hub::row(name, lat, 70)
}

fn scenario(subs: usize, n: usize, pct: bool) {
    let args: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--heartbeat",
        "0",
        "--max-connections-per-ip",
        &(subs + 16).to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let key = String::from_utf8_lossy(KEY).into_owned();
    let env = move |k: &str| (k == "SSED_JWT_KEY").then(|| key.clone());
    let cfg: Config = match Config::from_args(&args, env) {
        Ok(Command::Serve(c)) => *c,
        _ => return,
    };
    let Ok(server) = Server::bind(cfg) else {
        return;
    };
    let addr = server.local_addrs()[0];
    let stop = server.shutdown_handle();
    let th = std::thread::spawn(move || server.run());
    let (held, ok) = subscribe(addr, subs, pct);
    let label = format!(
        "{:>4} {} ({} distinct)",
        ok * 16,
        if pct { "%-templates" } else { "templates" },
        (ok * 16).min(DISTINCT)
    );
    for (salt, kind) in KINDS.into_iter().enumerate() {
        let count = if kind == Topics::Same { n } else { n / 4 };
        let lat = publish(addr, count, kind, pct, salt + 1);
        row(&format!("{label}: {}", kind.label()), &lat);
    }
    drop(held);
    stop.shutdown();
    let _ = th.join();
}

const KINDS: [Topics; 7] = [
    Topics::Same,
    Topics::New,
    Topics::NewPct,
    Topics::NewPasses,
    Topics::NewPctPasses,
    Topics::NewLate,
    Topics::NewMatched,
];

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let n = if quick { 100 } else { 400 };
    for pct in [false, true] {
        for (salt, kind) in KINDS.into_iter().enumerate().skip(1) {
            let family = if pct { "%-templates" } else { "templates" };
            let lat = match_only(n / 4, kind, pct, salt + 1);
            row(
                &format!("matching only, 1024 {family}: {}", kind.label()),
                &lat,
            );
        }
    }
    scenario(0, n, false);
    for pct in [false, true] {
        for subs in [DISTINCT / 16, 4 * DISTINCT / 16] {
            scenario(subs, n, pct);
        }
    }
}
