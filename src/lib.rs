//! ssed: a tiny, dense Server-Sent-Events daemon and library.

pub mod client;
