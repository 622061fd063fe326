//! Smoke test of `ssed-bench` against a real `ssed` server: every
//! subcommand with a small load, `--json`, and sanity checks on the
//! figures (counts exact, measurements present). No timing assertions:
//! the machine is shared and small.

use std::process::Command;

use serde_json::Value;

use crate::common::bench;

/// A running `ssed` (the shared harness's), addressed by stream.
struct Server(crate::common::Server);

impl Server {
    fn start() -> Server {
        Server::start_with(&["--listen", "127.0.0.1:0", "--heartbeat", "0"]).0
    }

    /// Starts `ssed ARGS`; returns it (with its first address) and every
    /// address it announced, one per `--listen`.
    fn start_with(args: &[&str]) -> (Server, Vec<String>) {
        let (s, addrs) = crate::common::Ssed::bare().args(args).start_all();
        (Server(s), addrs.iter().map(|a| a.to_string()).collect())
    }

    fn url(&self, stream: &str) -> String {
        format!("http://{}/events?stream={stream}", self.0.addr)
    }

    fn pid(&self) -> u64 {
        u64::from(self.0.pid())
    }
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

#[test]
fn density_counts_every_connection_and_finds_the_pid() {
    let s = Server::start();
    // No --pid: the tool finds the server from its listening port.
    let r = bench(&[
        "density",
        "--url",
        &s.url("density"),
        "--n",
        "50",
        "--settle-ms",
        "200",
    ]);
    assert_eq!(r["mode"], "density");
    assert_eq!(r["connections"], 50, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["server_pid"].as_u64(), Some(s.pid()), "{r}");
    assert!(num(&r, "connect_rate") > 0.0);
    assert!(num(&r, "rss_after_kb") > 0.0);
    // Per-connection memory is present; its sign is noise at n = 50.
    num(&r, "rss_per_conn");
    num(&r, "tcp_mem_per_conn");
}

#[test]
fn density_spreads_over_processes_ports_and_source_addresses() {
    // Two listen ports, and a per-address limit the run must respect: 25
    // connections per client address, so 200 connections only all succeed
    // if the two client processes really take 8 distinct addresses
    // between them (the second process starts where the first ended).
    let (s, addrs) = Server::start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--heartbeat",
        "0",
        "--max-connections-per-ip",
        "25",
    ]);
    let urls: Vec<String> = addrs
        .iter()
        .map(|a| format!("http://{a}/events?stream=ports"))
        .collect();
    let r = bench(&[
        "density",
        "--url",
        &urls[0],
        "--url",
        &urls[1],
        "--n",
        "200",
        "--per-worker",
        "100",
        "--per-source",
        "25",
        "--settle-ms",
        "200",
    ]);
    assert_eq!(r["connections"], 200, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["workers"], 2, "{r}");
    assert_eq!(r["targets"], 2, "{r}");
    // Found from either port: one process listens on both.
    assert_eq!(r["server_pid"].as_u64(), Some(s.pid()), "{r}");
    assert_eq!(r["server_processes"], 1, "{r}");
    num(&r, "anon_per_conn");
    num(&r, "slab_per_conn");

    // Twice the connections per address: the server refuses the excess,
    // which shows the addresses are the ones asked for.
    let r = bench(&[
        "density",
        "--url",
        &urls[0],
        "--url",
        &urls[1],
        "--n",
        "200",
        "--per-worker",
        "100",
        "--per-source",
        "50",
        "--settle-ms",
        "0",
        "--timeout",
        "20",
    ]);
    assert_eq!(r["connections"], 100, "{r}");
    assert_eq!(r["failed"], 100, "{r}");
}

#[test]
fn every_second_connection_goes_to_the_second_url() {
    let s = Server::start();
    // A port that was free a moment ago: connects to it are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let closed_url = format!("http://{closed}/events?stream=x");
    let pid = s.pid().to_string();
    let r = bench(&[
        "density",
        "--url",
        &s.url("rr"),
        "--url",
        &closed_url,
        "--n",
        "60",
        "--per-worker",
        "20",
        "--pid",
        &pid,
        "--settle-ms",
        "0",
        "--timeout",
        "20",
    ]);
    assert_eq!(r["workers"], 3, "{r}");
    assert_eq!(r["connections"], 30, "{r}");
    assert_eq!(r["failed"], 30, "{r}");
    let e = r["first_error"].as_str().unwrap_or_default();
    assert!(
        e.contains("refused") || e.contains(&closed.to_string()),
        "{r}"
    );
}

#[test]
fn fanout_delivers_n_times_m() {
    let s = Server::start();
    let url = s.url("fanout");
    let pid = s.pid().to_string();
    let r = bench(&[
        "fanout",
        "--url",
        &url,
        "--publish",
        &url,
        "--n",
        "20",
        "--m",
        "30",
        "--size",
        "64",
        "--pid",
        &pid,
        "--max-seconds",
        "60",
    ]);
    assert_eq!(r["subscribers"], 20, "{r}");
    assert_eq!(r["events_published"], 30, "{r}");
    assert_eq!(r["publish_rejected"], 0, "{r}");
    assert_eq!(r["delivered"], 600, "{r}");
    assert_eq!(r["expected"], 600, "{r}");
    assert_eq!(r["min_per_sub"], 30, "{r}");
    assert_eq!(r["closed_by_server"], 0, "{r}");
    // ssed says in every reply how many subscribers the event reached.
    assert_eq!(r["reply_subscribers_first"], 20, "{r}");
    let (p50, p99, max) = (
        num(&r, "latency_p50_us"),
        num(&r, "latency_p99_us"),
        num(&r, "latency_max_us"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r}");
    assert!(num(&r, "server_cpu_us_per_event") >= 0.0);
    assert!(num(&r, "delivered_per_s") > 0.0);
}

#[test]
fn churn_completes_every_cycle() {
    let s = Server::start();
    let pid = s.pid().to_string();
    let r = bench(&[
        "churn",
        "--url",
        &s.url("churn"),
        "--cycles",
        "200",
        "--pid",
        &pid,
        "--max-seconds",
        "60",
    ]);
    assert_eq!(r["cycles"], 200, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert!(num(&r, "cycles_per_s") > 0.0);
    assert!(num(&r, "rss_before_kb") > 0.0);
    assert!(num(&r, "rss_after_kb") > 0.0);
}

#[test]
fn idle_subscribers_get_no_events() {
    let s = Server::start();
    let pid = s.pid().to_string();
    let r = bench(&[
        "idle",
        "--url",
        &s.url("idle"),
        "--n",
        "20",
        "--seconds",
        "1",
        "--pid",
        &pid,
    ]);
    assert_eq!(r["subscribers"], 20, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    // `retry:` is not an event, and --heartbeat 0 sends no comments.
    assert_eq!(r["events_received"], 0, "{r}");
    assert!(num(&r, "wakeups_per_s") >= 0.0);
    assert!(num(&r, "server_cpu_ms") >= 0.0);
}

#[test]
fn refuses_non_loopback_targets() {
    let out = Command::new(env!("CARGO_BIN_EXE_ssed-bench"))
        .args([
            "density",
            "--url",
            "http://192.0.2.1:80/events?stream=x",
            "--n",
            "1",
        ])
        .output()
        .expect("run ssed-bench");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-loopback"));
}

#[test]
fn fails_when_nothing_listens() {
    // A port that was free a moment ago: connects are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}/events?stream=x");
    let out = Command::new(env!("CARGO_BIN_EXE_ssed-bench"))
        .args([
            "density",
            "--url",
            &url,
            "--n",
            "3",
            "--pid",
            "1",
            "--timeout",
            "10",
        ])
        .output()
        .expect("run ssed-bench");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no subscription succeeded"));
}
