//! ssed's integration tests: one binary, a module per area, one shared
//! harness (`common`: start the real server on port 0, subscribe, publish,
//! `wait_until`). Every test talks to a real process or `Server` over TCP.
//! A module for an optional Cargo feature runs only in builds with it
//! (`cargo test --no-default-features` tests the core alone).

#[cfg(feature = "apps")]
mod apps;
mod bench_smoke;
#[cfg(feature = "cli")]
mod client;
mod common;
mod contrib;
mod core;
#[cfg(feature = "journal")]
mod durable;
mod fuzz;
mod hardening;
mod layers;
mod library;
mod memory;
#[cfg(feature = "mercure")]
mod mercure;
#[cfg(feature = "apps")]
mod mongoose;
#[cfg(feature = "redis")]
mod redis;
mod trust;
mod wire;
#[cfg(feature = "workers")]
mod workers;
