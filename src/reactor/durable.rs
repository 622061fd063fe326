//! Durable history wired in (issue 13): opening the journal at bind, its
//! replay into the broker and the apps at start-up, compaction calls from
//! the loop, replies held until an fsync covers them (`--fsync always`),
//! and the journal's numbers for `/stats`.
//!
//! It owns the journal's [`Link`], a plain field of the reactor: the
//! publish path (`publish.rs`) writes each local event through it between
//! the broker's two append phases, and the reactor writes stream
//! deletions itself. The broker never sees it. This module must not fsync
//! (the journal's thread does, and wakes the loop through the reactor's
//! `mio::Waker`), must not block the loop (compaction reads a bounded
//! amount per call) and must not interpret frames beyond what the apps ask
//! for (the member app's `id:` line).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::apps::Apps;
use crate::broker::{Broker, StreamIdx};
use crate::config::{Config, FsyncPolicy};
use crate::error::Error;
use crate::id::EventId;
use crate::journal::{Fsync, Journal, JournalConfig, Link, Record, Replay};
use crate::stats::JournalGauges;

/// Largest segment file: compaction reads about three per call on the
/// loop thread, so this bounds how long one call can take (tens of ms).
const MAX_SEGMENT: u64 = 4 << 20;

/// A journal opened by `Bound::bind`, not yet replayed (`Send`: bind and
/// run may be on different threads).
pub(crate) struct Opened {
    journal: Journal,
    replay: Replay,
    always: bool,
    /// `--journal-bytes`: past it, publishing waits for compaction.
    bound: u64,
}

/// Why the journal could not be opened, as one line for the operator.
pub(crate) fn open(
    cfg: &Config,
    wake: Arc<dyn Fn() + Send + Sync>,
) -> Result<Option<Opened>, Error> {
    let Some(dir) = &cfg.data_dir else {
        return Ok(None);
    };
    if cfg.redis.is_some() {
        return Err(Error::JournalWithRedis);
    }
    let mut jc = JournalConfig::new(dir);
    jc.fsync = match cfg.fsync {
        FsyncPolicy::Always => Fsync::Always,
        FsyncPolicy::Interval(d) => Fsync::Interval(d.max(Duration::from_millis(1))),
        FsyncPolicy::Never => Fsync::Never,
    };
    let segment = (cfg.journal_bytes / 8).clamp(crate::journal::MIN_SEGMENT_BYTES, MAX_SEGMENT);
    jc.segment_bytes = segment;
    // The journal compacts towards three segments below --journal-bytes:
    // while publishing floods, appends outrun compaction by up to about
    // three segments (one rewrite waiting for its fsync, the segment being
    // written, the one just sealed), and the directory must stay within
    // the bound plus one segment all the same.
    jc.max_bytes = cfg
        .journal_bytes
        .saturating_sub(3 * segment)
        .max(2 * segment);
    // Wakes the loop to release held replies and to go on compacting.
    jc.waker = Some(wake);
    // A quota (RLIMIT_FSIZE) must be a write error, not death by SIGXFSZ.
    crate::journal::ignore_sigxfsz();
    match Journal::open(jc) {
        Ok((journal, replay)) => Ok(Some(Opened {
            journal,
            replay,
            always: cfg.fsync == FsyncPolicy::Always,
            bound: cfg.journal_bytes,
        })),
        Err(source) => Err(Error::Journal {
            dir: dir.clone(),
            source,
        }),
    }
}

/// The journal as the loop holds it: the link handlers write through, and
/// what the replay at start-up found (for `/stats`).
pub(crate) struct Durable {
    /// Written by the publish path and, for stream deletions, the reactor.
    pub link: Link,
    replay_ms: u64,
    replayed: u64,
}

impl Durable {
    /// Numbers for `/stats` and `/metrics`.
    pub fn gauges(&self, held: usize) -> JournalGauges {
        let st = self.link.stats();
        JournalGauges {
            bytes: st.bytes,
            segments: st.segments,
            records_written: st.records_written,
            fsyncs: st.fsyncs,
            fsync_last_us: st.fsync_last_us,
            fsync_max_us: st.fsync_max_us,
            write_errors: st.write_errors,
            compactions: self.link.compactions(),
            replay_ms: self.replay_ms,
            replayed_events: self.replayed,
            held_replies: held,
        }
    }

    /// Frees disk when over `--journal-bytes` (a bounded step per call).
    pub fn compact(&mut self, broker: &Broker) {
        self.link
            .compact(&|name, id| broker.retains(name, id), broker.ids().last());
    }
}

/// Replays an opened journal into `broker` and `apps` (within this run's
/// `--history`/`--history-bytes`), marks what it could not restore as a
/// gap, continues the id clock, and returns the journal for the loop.
pub(crate) fn install(o: Opened, broker: &mut Broker, apps: &mut Apps) -> Durable {
    let t0 = Instant::now();
    let Opened {
        journal,
        replay,
        always,
        bound,
    } = o;
    let mut events = 0u64;
    let mut too_large = 0u64;
    let mut targets: Vec<StreamIdx> = Vec::new();
    for rec in replay.records {
        match rec {
            Record::Event {
                id,
                streams,
                frame,
                private,
            } => {
                events += 1;
                targets.clear();
                for n in &streams {
                    let t = broker.restore(n, Apps::internal_cap(n));
                    if !targets.contains(&t) {
                        targets.push(t);
                    }
                }
                if broker.append_as(&targets, id, &frame, private).is_err() {
                    // Larger than this run's --history-bytes somewhere:
                    // keep it in the streams it fits.
                    too_large += 1;
                    for &t in &targets {
                        let _ = broker.append_as(&[t], id, &frame, private);
                    }
                }
                // The apps' indexes and the hub's custom ids, as when it
                // was first published.
                super::publish::entered(broker, apps, &targets, id, &frame, private);
            }
            Record::Delete { stream, floor_id } => {
                apps.forgotten(&stream);
                match broker.find(&stream) {
                    Some(i) => {
                        broker.delete(i);
                    }
                    None => broker.restore_tombstone(&stream, floor_id),
                }
                broker.observe_id(floor_id);
            }
            Record::Clock { last_id } => broker.observe_id(last_id),
        }
    }
    broker.observe_id(replay.max_id);
    // What the journal could not give back: a resume from before it gets
    // `gap` (possible loss) rather than a silent hole.
    let mut lost_below = replay.compacted_upto;
    if replay.hole_upto != EventId::NONE {
        lost_below = lost_below.max(replay.hole_upto);
    }
    if replay.cut || replay.hole_upto == EventId::MAX {
        // Ids of what was cut are unknown: every earlier resume is suspect.
        lost_below = lost_below.max(broker.ids().last().succ());
    }
    if lost_below > EventId::NONE {
        broker.mark_lost_below(lost_below);
    }
    if too_large > 0 {
        log::warn!(
            "journal: {too_large} events are larger than --history-bytes allows in some of \
             their streams and were kept only where they fit"
        );
    }
    if broker.len() > broker.max_streams() {
        log::warn!(
            "journal: restored {} public streams, more than --max-streams; new streams are \
             refused until some are deleted",
            broker.len()
        );
    }
    let replay_ms = u64::try_from((replay.elapsed + t0.elapsed()).as_millis()).unwrap_or(u64::MAX);
    log::info!(
        "journal: replayed {events} events into {} streams in {replay_ms} ms ({} bytes, {} segments of up to {} bytes)",
        broker.len(),
        replay.bytes,
        replay.segments,
        journal.segment_bytes()
    );
    Durable {
        link: Link::new(journal, bound, always),
        replay_ms,
        replayed: events,
    }
}

pub(crate) use super::held::Held;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_with_redis_is_refused_and_no_dir_opens_nothing() {
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(|| {});
        let mut cfg = Config::default();
        assert!(matches!(open(&cfg, wake.clone()), Ok(None)));
        cfg.data_dir = Some(std::env::temp_dir().join("ssed-durable-redis-never-created"));
        cfg.redis = Some("redis://127.0.0.1:6379".into());
        let err = open(&cfg, wake).err().unwrap().to_string();
        assert!(err.contains("--data-dir and --redis"), "{err}");
        assert!(!err.contains('\n'));
        assert!(!cfg.data_dir.unwrap().exists());
    }
}
