//! ssed's integration tests: one binary, a module per area, one shared
//! harness (`common`: start the real server on port 0, subscribe, publish,
//! `wait_until`). Every test talks to a real process or `Server` over TCP.
//! A module for an optional Cargo feature runs only in builds with it
//! (`cargo test --no-default-features` tests the core alone).
//! Tests that start an outside program (Redis, nginx) get it through
//! `components::require`, which skips them, with one line and a summary at
//! the end, on a machine without it (or fails them under `CI=true`).

#[cfg(all(feature = "mercure", feature = "apps"))]
mod access;
#[cfg(feature = "apps")]
mod apps;
mod bench_smoke;
#[cfg(feature = "cli")]
mod client;
mod common;
mod components;
mod contrib;
mod core;
#[cfg(feature = "journal")]
mod durable;
mod exits;
mod fuzz;
mod hardening;
mod heads;
#[cfg(feature = "mercure")]
mod hub_shapes;
mod layers;
mod library;
#[cfg(feature = "mercure")]
mod limits;
mod memory;
#[cfg(feature = "mercure")]
mod mercure;
#[cfg(feature = "mercure")]
mod mercure08;
#[cfg(feature = "mercure")]
mod mercure_hardening;
#[cfg(feature = "mercure")]
mod mercure_subscriptions;
#[cfg(feature = "apps")]
mod mongoose;
#[cfg(all(
    feature = "apps",
    feature = "redis",
    feature = "journal",
    feature = "mercure",
    feature = "workers"
))]
mod publish_matrix;
mod readme;
#[cfg(feature = "redis")]
mod redis;
// It reruns Redis- and workers-backed tests as children.
#[cfg(feature = "workers")]
mod skips;
mod trust;
mod wire;
#[cfg(feature = "workers")]
mod workers;
