//! Built without the `mercure` feature: no JWTs. A [`Key`] cannot exist
//! (`--jwt-key` is refused at start by `Config::check_features`), so the
//! handlers' token paths are dead code the optimiser drops, and no token
//! is ever accepted.

use super::selector::Selector;

/// An HS256 secret: uninhabited in this build.
#[derive(Debug, Clone)]
pub enum Key {}

/// Why a key was refused: this build has no JWTs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Not built in.
    NotBuilt,
}

impl Key {
    /// Refuses every key.
    pub fn new(_bytes: impl Into<Vec<u8>>) -> Result<Key, KeyError> {
        Err(KeyError::NotBuilt)
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {}

impl JwtError {
    /// A reason safe to send to the client.
    pub fn message(self) -> &'static str {
        match self {}
    }
}

/// What a verified token grants (never made in this build).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `mercure.publish` selectors.
    pub publish: Option<Vec<Selector>>,
    /// `mercure.subscribe` selectors.
    pub subscribe: Option<Vec<Selector>>,
    /// When the token expires (unix seconds).
    pub exp: Option<u64>,
}

/// No key exists to verify with.
pub fn verify(_token: &str, key: &Key, _now_unix_secs: u64) -> Result<Claims, JwtError> {
    match *key {}
}
