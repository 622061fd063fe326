//! Built without the `apps` feature: no built-in app owns a path (they
//! answer 404 like any unknown path). This stub keeps the shape the
//! router and the reactor name; `--users` is refused at start
//! (`Config::check_features`).

use crate::config::Config;
use crate::handler::Cx;
use crate::http::Request;
use crate::id::{ConnKey, EventId};

/// The MongooseIM app's users file: none in this build.
pub mod mongoose {
    /// The archives' share of `--history-total-bytes` in the memory
    /// account: the same bound as with the apps (none are ever archived).
    pub const ARCHIVE_SHARE_DIVISOR: usize = 2;

    /// Users from `--users`: uninhabited in this build.
    pub enum Users {}

    /// Why `--users` was refused.
    #[derive(Debug)]
    pub struct UsersError;

    impl std::fmt::Display for UsersError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("--users needs the `apps` feature, which this ssed was built without")
        }
    }

    impl std::error::Error for UsersError {}
}

/// State of every app: none.
#[derive(Default)]
pub struct Apps;

impl Apps {
    /// No app state.
    pub fn new(users: Option<mongoose::Users>) -> Apps {
        if let Some(u) = users {
            match u {}
        }
        Apps
    }
    /// `--users` is refused here too, for library users.
    pub fn load_users(cfg: &Config) -> Result<Option<mongoose::Users>, mongoose::UsersError> {
        match cfg.users_file {
            None => Ok(None),
            Some(_) => Err(mongoose::UsersError),
        }
    }
    /// No app streams: a journal's stream keeps the default bounds.
    pub fn internal_cap(_name: &str) -> Option<crate::broker::Limits> {
        None
    }
    /// Nothing is indexed.
    pub fn restored(&mut self, _name: &str, _id: EventId, _frame: &[u8]) {}
    /// No member app: nothing is indexed.
    pub fn record_member(&mut self, _member: &str, _uuid: &str, _id: EventId) {}
    /// No chat app: nothing is archived.
    pub fn archive_chat(&mut self, _chat: &crate::handler::Chat, _share: usize) -> usize {
        0
    }
    /// No archives.
    pub fn archived_bytes(&self) -> usize {
        0
    }
    /// Nothing is indexed.
    pub fn forgotten(&mut self, _name: &str) {}
    /// Nothing refers to connections.
    pub fn on_close(&mut self, _key: ConnKey) {}
}

/// No app paths.
pub fn route(_cx: &mut Cx<'_>, _apps: &mut Apps, _req: &Request<'_>) -> bool {
    false
}

/// No Accept-detected stream.
pub fn fallback(_cx: &mut Cx<'_>, _req: &Request<'_>) -> bool {
    false
}
