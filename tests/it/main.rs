//! ssed's integration tests: one binary, a module per area, one shared
//! harness (`common`: start the real server on port 0, subscribe, publish,
//! `wait_until`). Every test talks to a real process or `Server` over TCP.

mod apps;
mod bench_smoke;
mod client;
mod common;
mod core;
mod fuzz;
mod hardening;
mod layers;
mod mercure;
mod mongoose;
