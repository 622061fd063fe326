//! The crate's one error: why a [`crate::Server`] could not start or
//! stopped. Each layer keeps its own typed error (config, access, bus,
//! journal, users file); this wraps them unchanged, so the binary's `main`
//! alone decides what each means as an exit code. Nothing here prints,
//! logs or exits.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::access::AccessError;
use crate::apps::mongoose::UsersError;
#[cfg(feature = "redis")]
use crate::bus::url::UrlError;
// Without Redis a URL never parses; the refusal is the bus stub's.
#[cfg(not(feature = "redis"))]
use crate::bus::BusError as UrlError;
use crate::bus::BusError;
use crate::config::ConfigError;
#[cfg(feature = "journal")]
use crate::journal::JournalError;

/// Built without the `journal` feature: no journal opens, so none fails.
#[cfg(not(feature = "journal"))]
#[derive(Debug)]
pub enum JournalError {}

#[cfg(not(feature = "journal"))]
impl fmt::Display for JournalError {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

#[cfg(not(feature = "journal"))]
impl std::error::Error for JournalError {}

/// Why ssed could not start, or why its loop stopped.
#[derive(Debug)]
pub enum Error {
    /// The command line or the environment was refused.
    Config(ConfigError),
    /// The `--users` file cannot be used.
    Users(UsersError),
    /// The `--redis` URL does not parse.
    RedisUrl(UrlError),
    /// The `--redis` host does not resolve.
    RedisHost(BusError),
    /// The JWT keys or `--private-streams` selectors were refused.
    Access(AccessError),
    /// `--data-dir` and `--redis` were both given.
    JournalWithRedis,
    /// The journal in `--data-dir` cannot be opened.
    Journal {
        /// The `--data-dir`.
        dir: PathBuf,
        /// Why.
        source: JournalError,
    },
    /// A `--listen` address cannot be bound.
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Any other system call failed (poll setup, the loop).
    Io(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::Users(e) => e.fmt(f),
            Error::RedisUrl(e) => e.fmt(f),
            Error::RedisHost(e) => write!(f, "--redis: {e}"),
            Error::Access(e) => e.fmt(f),
            Error::JournalWithRedis => f.write_str(
                "--data-dir and --redis cannot be used together: Redis is the shared history \
                 of a scale-out deployment; pick one",
            ),
            Error::Journal { dir, source } if locked(source) => write!(
                f,
                "{source}: another ssed is using --data-dir {}",
                dir.display()
            ),
            Error::Journal { source, .. } => source.fmt(f),
            Error::Listen { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Io(e) => e.fmt(f),
        }
    }
}

/// Whether another process holds the journal's lock.
fn locked(e: &JournalError) -> bool {
    #[cfg(feature = "journal")]
    return matches!(e, JournalError::Locked(_));
    #[cfg(not(feature = "journal"))]
    match *e {}
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Users(e) => Some(e),
            Error::RedisUrl(e) => Some(e),
            Error::RedisHost(e) => Some(e),
            Error::Access(e) => Some(e),
            Error::JournalWithRedis => None,
            Error::Journal { source, .. } => Some(source),
            Error::Listen { source, .. } => Some(source),
            Error::Io(e) => Some(e),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Server::run` on another thread hands its error back through `join`.
    #[test]
    fn crosses_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Error>();
    }

    #[cfg(feature = "journal")]
    #[test]
    fn messages_name_what_to_fix() {
        let e = Error::Journal {
            dir: "/d".into(),
            source: JournalError::Locked("/d/LOCK".into()),
        };
        assert!(
            e.to_string()
                .ends_with(": another ssed is using --data-dir /d"),
            "{e}"
        );
        let e = Error::Listen {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert!(
            e.to_string().starts_with("cannot listen on 127.0.0.1:1: "),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
        let e = Error::from(ConfigError::MissingValue("--history".into()));
        assert_eq!(e.to_string(), "flag --history needs a value");
    }
}
