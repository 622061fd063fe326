//! ssed's integration tests: one binary, a module per area, one shared
//! harness (`common`: start the real server on port 0, subscribe, publish,
//! `wait_until`). Every test talks to a real process or `Server` over TCP.

mod apps;
mod bench_smoke;
mod client;
mod common;
mod contrib;
mod core;
mod durable;
mod fuzz;
mod hardening;
mod layers;
mod library;
mod memory;
mod mercure;
mod mercure_hardening;
mod mongoose;
mod redis;
mod trust;
mod wire;
mod workers;
