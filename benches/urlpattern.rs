//! The matching side of a publish with 1,000 URL-pattern subscriptions:
//! one topic parsed once, then tested against 1,000 compiled patterns,
//! for three shapes: typical (`/books/:id`-like, most refused by a fixed
//! component), near misses (same origin, the pathname automaton runs to
//! the end) and adversarial (32 wildcards between `a`s against an
//! all-`a` topic, which a backtracking engine would never finish).
//! In-process, no sockets: the hub's publish latency adds this to the
//! existing fan-out.
//!
//! `cargo bench --bench urlpattern` (`-- quick` for fewer rounds).
//! Compare the rows of one run, not runs on different machines.

use std::hint::black_box;
use std::time::Instant;

use ssed::internals::auth::{Url, UrlPattern};

const PATTERNS: usize = 1000;

fn row(name: &str, patterns: &[UrlPattern], topic: &str, hub: &Url, rounds: u32) {
    let start = Instant::now();
    let mut hits = 0usize;
    for _ in 0..rounds {
        let url = Url::parse(black_box(topic), Some(hub)).expect("topic");
        hits += patterns.iter().filter(|p| p.matches_url(&url)).count();
    }
    let per_publish = start.elapsed() / rounds;
    let steps: u64 = {
        let url = Url::parse(topic, Some(hub)).expect("topic");
        patterns.iter().map(|p| p.match_steps(&url).1).sum()
    };
    println!(
        "{name:<12} {:>9.1} µs per topic x {PATTERNS} patterns  {:>6.0} ns/pattern  {:>9} word steps  {} matches",
        per_publish.as_secs_f64() * 1e6,
        per_publish.as_secs_f64() * 1e9 / PATTERNS as f64,
        steps,
        hits / rounds as usize
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let rounds = if quick { 20 } else { 200 };
    let hub = Url::parse("https://hub.example.com/.well-known/mercure", None).expect("hub");
    let compile = |p: String| UrlPattern::compile(&p, Some(&hub)).expect("pattern");

    let typical: Vec<UrlPattern> = (0..PATTERNS)
        .map(|i| {
            compile(format!(
                "https://example{}.com/books/:id{{/reviews/:r}}?",
                i % 50
            ))
        })
        .collect();
    let near: Vec<UrlPattern> = (0..PATTERNS)
        .map(|i| compile(format!("https://example.com/users/:user/books/:id/v{i}")))
        .collect();
    let adversarial: Vec<UrlPattern> = (0..PATTERNS)
        .map(|i| compile(format!("https://example.com/{}b{i}", "*a".repeat(32))))
        .collect();

    println!("URL-pattern matching, {rounds} rounds");
    row(
        "typical",
        &typical,
        "https://example7.com/books/42/reviews/3",
        &hub,
        rounds,
    );
    row(
        "near-miss",
        &near,
        "https://example.com/users/kim/books/42/v",
        &hub,
        rounds,
    );
    let long = format!("https://example.com/{}", "a".repeat(1000));
    row("adversarial", &adversarial, &long, &hub, rounds.min(20));
}
