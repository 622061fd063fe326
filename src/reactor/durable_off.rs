//! Built without the `journal` feature: no `--data-dir`. This stub keeps
//! the shape the reactor names, with a journal that cannot exist
//! (`Reactor::durable` is always `None`, so no reply is ever held and the
//! optimiser drops those paths). `--data-dir` is refused at start
//! (`Config::check_features`) and again here for library users.

use std::sync::{mpsc, Arc};

use crate::apps::Apps;
use crate::broker::Broker;
use crate::config::{Config, ConfigError};
use crate::error::Error;
use crate::event::PublishError;
use crate::journal::Link;
use crate::stats::JournalGauges;

/// An opened journal: uninhabited in this build.
pub(crate) enum Opened {}

/// `--data-dir` is not built in: refused, never ignored.
pub(crate) fn open(
    cfg: &Config,
    _wake: Arc<dyn Fn() + Send + Sync>,
) -> Result<Option<Opened>, Error> {
    match cfg.data_dir {
        None => Ok(None),
        Some(_) => Err(Error::Config(ConfigError::NotBuilt {
            flag: "--data-dir".into(),
            feature: "journal",
        })),
    }
}

/// The journal as the loop holds it: uninhabited in this build (its
/// link cannot exist).
pub(crate) struct Durable {
    pub link: Link,
}

pub(crate) fn install(o: Opened, _broker: &mut Broker, _apps: &mut Apps) -> Durable {
    match o {}
}

impl Durable {
    pub fn compact(&mut self, _broker: &Broker) {
        match self.link {}
    }
    pub fn gauges(&self, _held: usize) -> JournalGauges {
        match self.link {}
    }
}

pub(crate) use super::held::Held;
