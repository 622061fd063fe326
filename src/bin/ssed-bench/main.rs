//! ssed-bench: an external load generator and cost meter for SSE servers.
//!
//! It speaks plain HTTP to the server under test (ssed, or a peer such as
//! nginx + nchan) and reads that server's costs from /proc: memory per idle
//! subscription (`density`), delivery rate, latency and CPU per delivered
//! event (`fanout`), connect/disconnect throughput (`churn`), and wakeups
//! while idle (`idle`). It deliberately does not use the `ssed` library, so
//! it measures any server with the same HTTP shape the same way.
//!
//! Only loopback targets are accepted, and every load loop is bounded in
//! count and time. Subscriptions are held by worker processes (this same
//! binary, hidden subcommand `worker`) because one process may only hold
//! 20,000 files.

mod args;
mod flags;
mod fleet;
mod modes;
mod net;
mod procfs;
mod publish;
mod report;
mod sse;
mod stats;
mod url;
mod worker;

use std::time::{SystemTime, UNIX_EPOCH};

use args::Command;

/// Wall-clock ns since the epoch: publisher and subscribers share the
/// machine, so this is the common clock for publish→receive latency.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(run(&argv));
}

fn run(argv: &[String]) -> i32 {
    let a = match args::parse(argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ssed-bench: {e}\n\n{}", args::USAGE);
            return 2;
        }
    };
    let result = match &a.command {
        Command::Help => {
            print!("{}", args::USAGE);
            return 0;
        }
        Command::Worker(o) => return worker::run(o.clone()),
        Command::Density(o) => modes::density(o),
        Command::Fanout(o) => modes::fanout(o),
        Command::Churn(o) => modes::churn(o),
        Command::Idle(o) => modes::idle(o),
        Command::Publish(o) => publish::run(o),
    };
    match result {
        Ok(report) => {
            if a.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            0
        }
        Err(e) => {
            eprintln!("ssed-bench: {e}");
            1
        }
    }
}
