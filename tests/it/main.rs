//! ssed's integration tests: one binary, a module per area, one shared
//! harness (`common`: start the real server on port 0, subscribe, publish,
//! `wait_until`). Every test talks to a real process or `Server` over TCP.
//! Tests that start an outside program (Redis, nginx) get it through
//! `components::require`, which skips them, with one line and a summary at
//! the end, on a machine without it (or fails them under `CI=true`).

mod access;
mod apps;
mod bench_smoke;
mod client;
mod common;
mod components;
mod contrib;
mod core;
mod durable;
mod exits;
mod fuzz;
mod hardening;
mod heads;
mod layers;
mod library;
mod memory;
mod mercure;
mod mercure_hardening;
mod mongoose;
mod readme;
mod redis;
mod skips;
mod trust;
mod wire;
mod workers;
