//! Blocking SSE client.

pub mod cli;
pub mod parser;
