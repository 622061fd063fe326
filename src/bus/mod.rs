//! Scale-out through Redis (issue 12): several ssed nodes allocate ids,
//! keep per-stream history and fan events out through one Redis.
//!
//! Owns the pure Redis side only: the wire format ([`resp`]), URLs
//! ([`url`]), the data model and publish script ([`script`]), and the
//! error type. It does no I/O: the connections and the state machine that
//! drive them live under the reactor (`src/reactor/bus/`), the only code
//! that touches sockets.

pub mod resp;
pub mod script;
pub mod url;

use std::fmt;

pub use url::RedisUrl;

/// Why a bus request failed or was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusError {
    /// Not connected (or not yet subscribed and scripted): refused at once.
    Unavailable,
    /// `max_in_flight` requests are already waiting: refused at once.
    Busy,
    /// No reply within the command timeout; the outcome is unknown.
    Timeout,
    /// The connection dropped first; the outcome is unknown.
    Disconnected,
    /// A socket error (connect refused, reset, ...).
    Io(String),
    /// Redis answered with an error (text as sent, cut to 512 bytes).
    Redis(String),
    /// Redis sent something this client cannot accept.
    Protocol(String),
    /// The request itself is unusable (no streams, duplicates, ...).
    Invalid(&'static str),
    /// An event larger than every node can carry through Redis.
    TooLarge {
        /// Its size on the bus, bytes.
        size: usize,
        /// The most the bus carries, bytes.
        limit: usize,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusError::Unavailable => write!(f, "redis bus is not connected"),
            BusError::Busy => write!(f, "too many redis requests in flight"),
            BusError::Timeout => write!(f, "redis did not answer in time"),
            BusError::Disconnected => write!(f, "redis connection closed"),
            BusError::Io(e) => write!(f, "redis connection: {e}"),
            BusError::Redis(e) => write!(f, "redis error: {e}"),
            BusError::Protocol(e) => write!(f, "redis protocol: {e}"),
            BusError::Invalid(e) => write!(f, "invalid bus request: {e}"),
            BusError::TooLarge { size, limit } => write!(
                f,
                "event of {size} bytes is over the {limit} bytes the redis bus carries"
            ),
        }
    }
}

impl std::error::Error for BusError {}
