//! The built-in apps that replace the seed systems (chamber, workerman,
//! member notifications, MongooseIM's client API). Each app owns its
//! paths and rides on the hub's mechanisms: streams with shared history
//! for delivery, ticking connections for per-connection timers.
//!
//! Apps never touch sockets or `Poll`; they reply through the hub.

use crate::config::Config;
use crate::http::Request;
use crate::hub::Hub;

/// State of every app.
#[derive(Default)]
pub struct Apps {}

impl Apps {
    /// App state for a server configured with `cfg`.
    pub fn new(_cfg: &Config) -> Apps {
        Apps {}
    }

    /// A connection went away; drop whatever refers to it.
    pub fn on_close(&mut self, _key: u32) {}
}

/// Routes requests for app-owned paths; `false` when the path is not an app's.
pub fn route(_hub: &mut Hub, _key: u32, _req: &Request<'_>, _cors: &str) -> bool {
    false
}

/// Paths nobody routed: the Accept-detected stream, else `false` (404).
pub fn fallback(_hub: &mut Hub, _key: u32, _req: &Request<'_>, _cors: &str) -> bool {
    false
}
