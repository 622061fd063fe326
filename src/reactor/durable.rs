//! The journal link (`--data-dir`, issue 13), a part the driver owns:
//! opening the journal at bind, its replay into the broker and the apps at
//! start-up ([`install`]), and then [`Durable`]: the journal's [`Link`]
//! (the publish path writes each local event through it between the
//! broker's two append phases; the driver records stream deletions with
//! [`Durable::delete`]), the replies held until an fsync covers them
//! (`--fsync always`: [`Durable::must_wait`], [`Durable::hold`],
//! [`Durable::release`]; the driver sends them), compaction steps and the
//! journal's numbers for `/stats`. The broker never sees it.
//!
//! It never names the driver and touches no socket. It must not fsync
//! (the journal's thread does, and wakes the loop through the driver's
//! `mio::Waker`), must not block the loop (compaction reads a bounded
//! amount per call) and must not interpret frames beyond what the apps ask
//! for (the member app's `id:` line).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::apps::Apps;
use crate::broker::{Broker, StreamIdx};
use crate::config::{Config, FsyncPolicy};
use crate::error::Error;
use crate::id::EventId;
use crate::journal::{Fsync, Journal, JournalConfig, Link, Record, Replay};
use crate::stats::JournalGauges;

use super::conn::ConnKey;

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

/// The journal link as the driver owns it: the journal's [`Link`] (the
/// publish path writes each local event through it between the broker's
/// two append phases), the replies held for an fsync, and what the replay
/// at start-up found (for `/stats`).
pub(crate) struct Durable {
    link: Link,
    /// Replies waiting for an fsync, oldest (lowest ticket) first.
    held: VecDeque<Held>,
    /// While a request's actions run: the journal's ticket before them, so
    /// a reply to a request that wrote the journal can be held.
    from: Option<u64>,
    replay_ms: u64,
    replayed: u64,
}

impl Durable {
    /// The link the publish path writes events through.
    pub fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    /// Records stream `name`'s deletion (`floor`: ids it must never reuse).
    pub fn delete(&mut self, name: &str, floor: EventId) {
        self.link.delete(name, floor);
    }

    /// A request's (or a library publish's) actions begin: what they write
    /// from now on is what their replies wait for.
    pub fn begin(&mut self) {
        self.from = Some(self.link.ticket());
    }

    /// Its actions are done.
    pub fn end(&mut self) {
        self.from = None;
    }

    /// With `--fsync always`, the ticket a reply of the actions under way
    /// must wait for: they wrote the journal and that is not durable yet.
    pub fn must_wait(&self) -> Option<u64> {
        self.from.and_then(|b| self.link.must_wait(b))
    }

    /// Holds a reply until the fsync covers its ticket.
    pub fn hold(&mut self, h: Held) {
        self.held.push_back(h);
    }

    /// Whether a reply to connection `key` is held.
    pub fn holds(&self, key: ConnKey) -> bool {
        !self.held.is_empty() && self.held.iter().any(|h| h.key() == Some(key))
    }

    /// Connection `key` was freed: its held replies go.
    pub fn forget(&mut self, key: ConnKey) {
        if !self.held.is_empty() {
            self.held.retain(|h| h.key() != Some(key));
        }
    }

    /// The next held reply the fsync now covers, oldest first (the fsync
    /// thread wakes the loop when it advances).
    pub fn release(&mut self) -> Option<Held> {
        let t = self.held.front()?.ticket();
        if t <= self.link.durable() {
            self.held.pop_front()
        } else {
            None
        }
    }

    /// Numbers for `/stats` and `/metrics`.
    pub fn gauges(&self) -> JournalGauges {
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
            held_replies: self.held.len(),
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
        held: VecDeque::new(),
        from: None,
        replay_ms,
        replayed: events,
    }
}

pub(crate) use super::held::Held;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Create, Limits};
    use crate::event::Event;
    use crate::handler::{Body, Publish, Reply, Targets};
    use std::sync::{mpsc, Mutex};

    /// A data directory removed at the end.
    struct Tmp(std::path::PathBuf);

    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p = std::env::temp_dir().join(format!("ssed-durable-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            Tmp(p)
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn broker() -> Broker {
        let limits = Limits {
            history: 100,
            history_bytes: 1 << 20,
        };
        Broker::new(1, limits, 100)
    }

    /// The journal link of `dir`, replayed into `broker`; fsync thread
    /// progress is signalled on the returned channel.
    fn opened(dir: &Tmp, broker: &mut Broker) -> (Durable, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Ok(t) = tx.lock() {
                let _ = t.send(());
            }
        });
        let cfg = Config {
            data_dir: Some(dir.0.clone()),
            fsync: FsyncPolicy::Always,
            ..Config::default()
        };
        let o = open(&cfg, wake).unwrap().unwrap();
        (install(o, broker, &mut Apps::new(None)), rx)
    }

    fn publish(d: &mut Durable, b: &mut Broker, bodies: Vec<Body>) -> Vec<EventId> {
        let p = Publish {
            to: Targets::Names {
                names: vec!["s".into()],
                by: Create::Publisher,
                topics: false,
            },
            events: bodies,
            private: false,
            reply: Reply::Library,
        };
        let mut apps = Apps::new(None);
        match super::super::publish::apply(b, Some(d.link()), &mut apps, false, &p, 10) {
            super::super::publish::Route::Done { outcome, .. } => {
                assert!(outcome.failure.is_none());
                outcome.ids
            }
            super::super::publish::Route::Bus { .. } => panic!("no bus here"),
        }
    }

    #[test]
    fn replies_wait_for_the_fsync_of_what_their_request_wrote() {
        let dir = Tmp::new("held");
        let mut b = broker();
        let (mut d, woken) = opened(&dir, &mut b);
        // Outside a request nothing waits; a request that writes nothing
        // does not wait either.
        assert_eq!(d.must_wait(), None);
        d.begin();
        assert_eq!(d.must_wait(), None);
        let ids = publish(&mut d, &mut b, vec![Body::Numbered(Event::new("a"))]);
        assert_eq!(ids.len(), 1);
        let ticket = d.link().ticket();
        assert!(ticket > 0);
        // Held: one reply covered by this request's record, one beyond it.
        let key = ConnKey(2);
        d.hold(Held::Conn {
            ticket,
            key,
            bytes: b"first".to_vec(),
            close: false,
        });
        d.hold(Held::Conn {
            ticket: ticket + 1,
            key,
            bytes: b"second".to_vec(),
            close: true,
        });
        d.end();
        assert_eq!(d.must_wait(), None);
        assert!(d.holds(key));
        assert!(!d.holds(ConnKey(3)));
        // The fsync thread wakes the loop when the record is durable.
        while d.link().durable() < ticket {
            woken
                .recv_timeout(Duration::from_secs(10))
                .expect("the fsync thread never woke the loop");
        }
        let Some(Held::Conn { bytes, .. }) = d.release() else {
            panic!("the covered reply was not released");
        };
        assert_eq!(bytes, b"first");
        assert!(d.release().is_none(), "a reply past the fsync waits");
        assert_eq!(d.gauges().held_replies, 1);
        // A connection that goes takes its held replies with it.
        d.forget(key);
        assert!(!d.holds(key));
        assert_eq!(d.gauges().held_replies, 0);
    }

    #[test]
    fn what_was_written_comes_back_on_replay_with_its_ids() {
        let dir = Tmp::new("replay");
        let mut b = broker();
        let ids = {
            let (mut d, _woken) = opened(&dir, &mut b);
            let custom = crate::frame::encode(Some("urn:x"), None, "b", None);
            publish(
                &mut d,
                &mut b,
                vec![Body::Numbered(Event::new("a")), Body::Fixed(custom)],
            )
        };
        let mut again = broker();
        let (d, _woken) = opened(&dir, &mut again);
        let s = again.find("s").expect("the stream is restored");
        let st = again.get(s).unwrap();
        assert_eq!((st.last_id, st.retained()), (ids[1], 2));
        // The publisher-chosen id resumes as it did before the restart.
        assert_eq!(again.alias_id("urn:x", false), Some(ids[1]));
        assert_eq!(d.gauges().replayed_events, 2);
        // New ids continue above the replayed ones.
        assert!(again.ids().last() >= ids[1]);
    }

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
