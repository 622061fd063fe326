//! Built without the `journal` feature: no `--data-dir`. This stub keeps
//! the journal link's shape, with a journal that cannot exist (the
//! driver's `durable` is always `None`, so no reply is ever held and the
//! optimiser drops those paths). `--data-dir` is refused at start
//! (`Config::check_features`) and again here for library users.

use std::sync::Arc;

use crate::apps::Apps;
use crate::broker::Broker;
use crate::config::{Config, ConfigError};
use crate::error::Error;
use crate::journal::Link;
use crate::stats::JournalGauges;

use super::conn::ConnKey;

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

/// The journal link: uninhabited in this build (its link cannot exist).
pub(crate) struct Durable {
    link: Link,
}

pub(crate) fn install(o: Opened, _broker: &mut Broker, _apps: &mut Apps) -> Durable {
    match o {}
}

impl Durable {
    pub fn link(&mut self) -> &mut Link {
        &mut self.link
    }
    pub fn delete(&mut self, _name: &str, _floor: crate::id::EventId) {
        match self.link {}
    }
    pub fn begin(&mut self) {
        match self.link {}
    }
    pub fn end(&mut self) {
        match self.link {}
    }
    pub fn must_wait(&self) -> Option<u64> {
        match self.link {}
    }
    pub fn hold(&mut self, _h: Held) {
        match self.link {}
    }
    pub fn holds(&self, _key: ConnKey) -> bool {
        match self.link {}
    }
    pub fn forget(&mut self, _key: ConnKey) {
        match self.link {}
    }
    pub fn release(&mut self) -> Option<Held> {
        match self.link {}
    }
    pub fn compact(&mut self, _broker: &Broker) {
        match self.link {}
    }
    pub fn gauges(&self) -> JournalGauges {
        match self.link {}
    }
}

pub(crate) use super::held::Held;
