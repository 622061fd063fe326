//! Built without the `redis` feature: there is no Redis bus. This stub
//! keeps the shape the reactor names (`RedisUrl`), uninhabited, so every
//! `--redis` path is dead code the optimiser drops. `--redis` itself is
//! refused at start (`Config::check_features`); a URL never parses here.

use std::fmt;
use std::str::FromStr;

/// A Redis URL: none can exist in this build (its address cannot).
#[derive(Debug, Clone)]
pub struct RedisUrl {
    /// Where to connect.
    pub addr: RedisAddr,
}

/// Where Redis is: uninhabited in this build.
#[derive(Debug, Clone)]
pub enum RedisAddr {}

/// Why a URL was refused: this build has no Redis.
#[derive(Debug)]
pub struct BusError;

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("--redis needs the `redis` feature, which this ssed was built without")
    }
}

impl std::error::Error for BusError {}

impl FromStr for RedisUrl {
    type Err = BusError;
    fn from_str(_: &str) -> Result<RedisUrl, BusError> {
        Err(BusError)
    }
}
