//! The built-in apps that replace the seed systems (chamber, workerman,
//! member notifications, MongooseIM's client API). Each app owns its
//! paths and rides on the hub's mechanisms: streams with shared history
//! for delivery, ticking connections for per-connection timers.
//!
//! Apps never touch sockets or `Poll`: they get a narrow context ([`Cx`]:
//! the broker, `now`, randomness) and their own state, and return actions.
//! This module only dispatches: which app owns a request, and the small
//! helpers every app shares.
//!
//! | path | app | module |
//! |---|---|---|
//! | `/streaming/sse` | chamber (seed 002) | [`chamber`] |
//! | any unrouted `GET` with `Accept: text/event-stream` | workerman (seed 003) | [`workerman`] |
//! | `/notification/events`, `/events` + `Member-ID` without `stream` | member notifications (seed 001) | [`members`] |
//! | `/api/...` | MongooseIM client API (seed 000) | [`mongoose`] |

pub mod chamber;
pub mod ids;
pub mod members;
pub mod mongoose;
pub mod workerman;

use crate::config::Config;
use crate::handler::Cx;
use crate::http::Request;
use crate::id::{ConnKey, EventId};

/// State of every app.
pub struct Apps {
    /// Member notifications: per-member history index and device table.
    pub members: members::Members,
    /// MongooseIM client API: users, rooms, archives.
    pub mongoose: mongoose::Mongoose,
}

impl Default for Apps {
    fn default() -> Self {
        Apps::new(None)
    }
}

impl Apps {
    /// App state; `users` from `--users` (none: `/api` refuses everyone).
    pub fn new(users: Option<mongoose::Users>) -> Apps {
        Apps {
            members: members::Members::default(),
            mongoose: users
                .map(mongoose::Mongoose::from_users)
                .unwrap_or_default(),
        }
    }

    /// Reads `--users`, if set: a file that cannot be used is an error at
    /// start (the binary exits 2), never a silently disabled `/api`.
    pub fn load_users(cfg: &Config) -> Result<Option<mongoose::Users>, mongoose::UsersError> {
        cfg.users_file
            .as_deref()
            .map(mongoose::load_users)
            .transpose()
    }

    /// The history cap an app gives its internal stream `name` (so a stream
    /// read back from a journal gets the bounds it was created with).
    pub fn internal_cap(name: &str) -> Option<crate::broker::Limits> {
        if name.starts_with(members::STREAM_PREFIX) {
            Some(members::CAP)
        } else if name.starts_with("!user/") {
            Some(mongoose::STREAM_CAP)
        } else {
            None
        }
    }

    /// An event entered internal stream `name` (read back from a journal,
    /// announced by the bus, published here): the apps index what they
    /// need (the member app's uuid → id map).
    pub fn restored(&mut self, name: &str, id: EventId, frame: &[u8]) {
        if let Some(member) = name.strip_prefix(members::STREAM_PREFIX) {
            // Member frames lead with their uuid's `id:` line.
            if let Some(uuid) = crate::frame::leading_id(frame) {
                self.members.restored(member, id, uuid);
            }
        }
    }

    /// A member notification was published with event id `id`: index
    /// its uuid.
    pub fn record_member(&mut self, member: &str, uuid: &str, id: EventId) {
        self.members.record(member, uuid, id);
    }

    /// A chat message was delivered: archive it within `share` bytes;
    /// the archives' size after.
    pub fn archive_chat(&mut self, chat: &crate::handler::Chat, share: usize) -> usize {
        self.mongoose.archive_chat(chat, share)
    }

    /// Bytes the chat archives hold (they share the history budget).
    pub fn archived_bytes(&self) -> usize {
        self.mongoose.archived_bytes()
    }

    /// A deletion read back from a journal: forget what indexes the stream.
    pub fn forgotten(&mut self, name: &str) {
        if let Some(member) = name.strip_prefix(members::STREAM_PREFIX) {
            self.members.forget(member);
        }
    }

    /// A connection went away; drop whatever refers to it.
    pub fn on_close(&mut self, key: ConnKey) {
        self.members.on_close(key);
    }
}

/// Routes requests for app-owned paths; `false` when the path is not an app's.
pub fn route(cx: &mut Cx<'_>, apps: &mut Apps, req: &Request<'_>) -> bool {
    match req.path {
        "/streaming/sse" => chamber::handle(cx, req),
        "/notification/events" => members::handle(cx, &mut apps.members, req),
        // The mkapiczy service lived at `/events`; its requests carry a
        // member id and never a `stream`, so they cannot be core requests.
        "/events" if members::wants(req) => members::handle(cx, &mut apps.members, req),
        "/api" => mongoose::handle(cx, &mut apps.mongoose, req, ""),
        p if p.starts_with("/api/") => mongoose::handle(cx, &mut apps.mongoose, req, &p[4..]),
        _ => return false,
    }
    true
}

/// Paths nobody routed: the Accept-detected stream, else `false` (404).
pub fn fallback(cx: &mut Cx<'_>, req: &Request<'_>) -> bool {
    workerman::fallback(cx, req)
}

/// An app's nominal interval multiplied by `--tick-scale` (a test knob),
/// at least 1 ms.
pub fn scaled(cfg: &Config, ms: u64) -> u64 {
    ((ms as f64) * cfg.tick_scale).round().max(1.0) as u64
}

/// Whether `s` is a safe identifier for member and device ids: 1..=128
/// bytes of letters, digits and `._:@-` (they become part of internal
/// stream names and JSON; anything else is refused with 400).
pub fn valid_ident(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}
