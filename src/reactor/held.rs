//! A reply held until the journal's fsync covers the publish it answers
//! (`--data-dir`): the one shape the journal link and its stub (a build
//! without the `journal` feature, which never makes one) share. Data
//! only: the driver decides when a ticket is covered and sends it.

use std::sync::mpsc;

use super::conn::ConnKey;
use crate::event::PublishError;

/// A reply held until the journal's fsync covers `ticket`.
pub(crate) enum Held {
    /// Response bytes for connection `key` (paused meanwhile).
    Conn {
        ticket: u64,
        key: ConnKey,
        bytes: Vec<u8>,
        close: bool,
    },
    /// A library publish's answer.
    Lib {
        ticket: u64,
        reply: mpsc::Sender<Result<u64, PublishError>>,
        res: Result<u64, PublishError>,
    },
}

impl Held {
    pub fn ticket(&self) -> u64 {
        match self {
            Held::Conn { ticket, .. } | Held::Lib { ticket, .. } => *ticket,
        }
    }
    pub fn key(&self) -> Option<ConnKey> {
        match self {
            Held::Conn { key, .. } => Some(*key),
            Held::Lib { .. } => None,
        }
    }
}
