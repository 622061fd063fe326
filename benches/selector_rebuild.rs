//! What making a selector stream costs now that it is rebuilt from the
//! retained history of the topics it matches (issue 21 item 1): the time
//! of `Broker::selector_stream` for a selector nobody holds yet, over a
//! broker holding N public topics with a few events each, for `*`, a URI
//! template matching a tenth of the topics, one matching none, and URL
//! patterns (each topic parsed as a URL). Each row makes the stream,
//! deletes it, and makes it again, so every round is a rebuild. The row
//! over an empty broker is the cost without any history to merge: the A
//! of an A/B in one run.
//!
//! `cargo bench --bench selector_rebuild` (`-- quick`: fewer rounds).
//! Compare rows of one run, not runs on different machines.

use std::time::Instant;

use ssed::internals::auth::selector::Selector;
use ssed::internals::auth::Url;
use ssed::internals::{Broker, Limits};

fn broker(topics: usize, per_topic: usize) -> Broker {
    let mut b = Broker::new(
        1,
        Limits {
            history: 1000,
            history_bytes: 1 << 20,
        },
        topics + 16,
    );
    b.set_memory(1 << 30, 0);
    for t in 0..topics {
        let name = format!("https://ex.com/t{}/{t}", t % 10);
        let idx = b.resolve(&[name.as_str()], true).expect("topic")[0];
        for _ in 0..per_topic {
            b.publish_with(&[idx], 1, |id| {
                ssed::internals::frame::encode_numbered(id, None, "payload", None)
            })
            .expect("publish");
        }
    }
    b
}

fn row(b: &mut Broker, label: &str, sel: &Selector, rounds: usize) {
    let mut held = 0;
    let t0 = Instant::now();
    for _ in 0..rounds {
        let s = b.selector_stream(sel, None).expect("selector");
        held = b.get(s).map_or(0, |s| s.retained());
        b.delete(s);
    }
    let per = t0.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    println!("{label:<44} {per:>10.1} µs/make  ({held} events rebuilt)");
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let rounds = if quick { 5 } else { 50 };
    let hub = Url::parse("https://ex.com/.well-known/mercure", None).expect("hub");
    let sels = [
        ("*", Selector::parse("*").expect("*")),
        (
            "template, a tenth of the topics",
            Selector::parse("https://ex.com/t3/{id}").expect("t"),
        ),
        (
            "template, no topic",
            Selector::parse("https://ex.com/none/{id}").expect("t"),
        ),
        (
            "URL pattern, a tenth of the topics",
            Selector::url_pattern("https://ex.com/t3/:id", Some(&hub)).expect("p"),
        ),
    ];
    println!("selector stream made (rebuilt), per make:");
    for (topics, per_topic) in [(0, 0), (1_000, 4), (10_000, 4)] {
        let mut b = broker(topics, per_topic);
        for (label, sel) in &sels {
            row(
                &mut b,
                &format!("{topics} topics x {per_topic} events, {label}"),
                sel,
                rounds,
            );
        }
    }
}
