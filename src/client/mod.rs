//! Blocking SSE client (placeholder; filled in by the client work).

pub mod cli;
