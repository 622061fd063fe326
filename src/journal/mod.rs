//! Durable history (issue 13): an append-only journal of events, stream
//! deletions and the id clock in `--data-dir`, replayed at start-up and kept
//! within `--journal-bytes` by compaction.
//!
//! Owns every file in its directory (`LOCK`, `journal-*.seg`, compaction's
//! `*.tmp`) and the fsync thread. It must not interpret event frames or know
//! retention rules (the owner passes a `retained` predicate to
//! [`Journal::compact`]), must not fsync on the appending thread, and must
//! never refuse to start over damaged files: it cuts them back to the last
//! good record and says so once.
//!
//! Layout: segments `journal-<16 hex digit segment number>.seg`, numbered
//! consecutively; each is a [`record`] header followed by framed records.

mod crc32;
mod link;
mod record;
mod refused;
mod sync;
#[cfg(test)]
mod tests;

pub use link::Link;
pub use refused::Refused;
// The owner validates publishes against these limits before appending.
#[allow(unused_imports)]
pub use record::{Record, MAX_RECORD, MAX_STREAMS};

use record::{FLAG_COMPACTED, HEADER_LEN};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::id::EventId;

/// When appended bytes are fsynced (always by the fsync thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// As soon as anything is pending, batching what arrives meanwhile; the
    /// owner holds a publish reply until [`Journal::durable`] covers it.
    Always,
    /// Every interval, if anything was written.
    Interval(Duration),
    /// Never: the page cache survives a crash of the process, not of the
    /// machine.
    Never,
}

/// Where and how to keep the journal.
#[derive(Clone)]
pub struct JournalConfig {
    /// The data directory (created if missing).
    pub dir: PathBuf,
    /// The fsync policy.
    pub fsync: Fsync,
    /// The disk budget (`--journal-bytes`); compaction keeps the directory
    /// within this plus one segment.
    pub max_bytes: u64,
    /// A segment is sealed once it would grow past this.
    pub segment_bytes: u64,
    /// Called by the fsync thread after durability advanced, so the
    /// reactor can wake and release held replies.
    pub waker: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// Default `--journal-bytes`.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Smallest segment accepted (tests use small ones; real defaults are MiBs).
pub const MIN_SEGMENT_BYTES: u64 = 4096;

impl JournalConfig {
    /// Defaults: fsync every 100 ms, 256 MiB, [`default_segment_bytes`].
    pub fn new(dir: impl Into<PathBuf>) -> JournalConfig {
        JournalConfig {
            dir: dir.into(),
            fsync: Fsync::Interval(Duration::from_millis(100)),
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: default_segment_bytes(DEFAULT_MAX_BYTES),
            waker: None,
        }
    }
}

/// An eighth of the budget, within 1..=64 MiB: small enough that compaction
/// works in small steps, large enough to keep the file count low.
pub fn default_segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 8).clamp(1 << 20, 64 << 20)
}

/// Why the journal could not do something.
#[derive(Debug)]
pub enum JournalError {
    /// A file operation failed outside `append` (open, scan, compaction).
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// Another process holds `DIR/LOCK`.
    Locked(PathBuf),
    /// A segment has a valid header of a format version this build does not
    /// know (written by a newer ssed): refuse instead of cutting it.
    Version {
        /// The segment.
        path: PathBuf,
        /// Its version.
        version: u16,
    },
    /// Something with a segment's name is not a regular file (a
    /// directory, a socket...): not the journal's to read, skip or delete.
    NotAFile(PathBuf),
    /// The record cannot be encoded (too many streams, too long).
    Invalid(&'static str),
    /// Appending failed (ENOSPC, EIO, EFBIG...); the journal is as it was
    /// before the call and the next append tries again.
    Write(io::Error),
}

impl JournalError {
    fn io(what: &'static str, path: &Path, err: io::Error) -> JournalError {
        JournalError::Io {
            what,
            path: path.to_path_buf(),
            err,
        }
    }
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalError::Io { what, path, err } => {
                write!(f, "journal: cannot {what} {}: {err}", path.display())
            }
            JournalError::Locked(p) => {
                write!(f, "journal: {} is locked by another process", p.display())
            }
            JournalError::Version { path, version } => write!(
                f,
                "journal: {} has format version {version}; this build reads {}..={}",
                path.display(),
                record::MIN_VERSION,
                record::VERSION
            ),
            JournalError::NotAFile(p) => write!(
                f,
                "journal: {} has a segment's name but is not a regular file; move it out of the \
                 data directory",
                p.display()
            ),
            JournalError::Invalid(why) => write!(f, "journal: cannot record: {why}"),
            JournalError::Write(e) => write!(f, "journal: write failed: {e}"),
        }
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            JournalError::Io { err, .. } | JournalError::Write(err) => Some(err),
            _ => None,
        }
    }
}

/// What [`Journal::open`] found on disk.
#[derive(Debug, Default)]
pub struct Replay {
    /// Every surviving record, in append order (events deduplicated by id
    /// after a crash in the middle of compaction).
    pub records: Vec<Record>,
    /// The highest id of any record (events, tombstones, clock).
    pub max_id: EventId,
    /// Damage was cut away.
    pub cut: bool,
    /// The last event id before the cut (`NONE` if none), to mark the gap.
    pub cut_after_id: EventId,
    /// For each missing run of segments, the last event id before it.
    pub gaps: Vec<EventId>,
    /// The id of the first record after the last missing run of segments
    /// (`EventId::MAX` if nothing follows it; `NONE` if none is missing): a
    /// resume from below it may have missed events.
    pub hole_upto: EventId,
    /// The highest id vouched for up to the end of the last segment that
    /// compaction rewrote (`NONE` if none): compaction may have dropped
    /// events at or below it, so a resume from below it may have missed
    /// events.
    pub compacted_upto: EventId,
    /// Bytes on disk after repair.
    pub bytes: u64,
    /// Segment files after repair.
    pub segments: usize,
    /// Warnings logged while opening.
    pub warnings: u32,
    /// Time spent opening.
    pub elapsed: Duration,
}

/// Counters for `/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// Bytes in segment files.
    pub bytes: u64,
    /// Segment files.
    pub segments: usize,
    /// Records appended since open.
    pub records_written: u64,
    /// Completed fsync rounds.
    pub fsyncs: u64,
    /// Duration of the last fsync round, µs.
    pub fsync_last_us: u64,
    /// Longest fsync round, µs.
    pub fsync_max_us: u64,
    /// Failed appends and failed fsync rounds.
    pub write_errors: u64,
    /// Time [`Journal::open`] took, ms.
    pub replay_ms: u64,
}

/// What one [`Journal::compact`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Segment files read.
    pub segments_read: usize,
    /// Bytes read (bounded by about three segments per call).
    pub bytes_read: u64,
    /// Segment files removed.
    pub segments_removed: usize,
    /// Segment files written (rewrites).
    pub segments_written: usize,
    /// Total bytes before.
    pub bytes_before: u64,
    /// Total bytes after.
    pub bytes_after: u64,
    /// Records carried into rewritten segments.
    pub records_kept: u64,
    /// Records dropped.
    pub records_dropped: u64,
    /// Retained events dropped anyway because retained history alone
    /// exceeds the budget.
    pub retained_dropped: u64,
}

/// Most tombstones one rewritten segment carries (the newest per stream
/// name), so deleting many streams cannot grow the journal without bound.
const MAX_TOMBSTONES: usize = 4096;

/// A segment file the journal tracks.
#[derive(Debug, Clone, Copy)]
struct Seg {
    seq: u64,
    bytes: u64,
}

/// An open journal: appends on the caller's thread, fsyncs on its own.
pub struct Journal {
    dir: PathBuf,
    fsync: Fsync,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the last one is being appended to.
    segs: Vec<Seg>,
    cur: Arc<File>,
    /// Ticket clock: bytes appended through this handle.
    pos: u64,
    buf: Vec<u8>,
    sync: Option<sync::Syncer>,
    records_written: u64,
    write_errors: u64,
    /// In a run of failed appends (warn once per run).
    failing: bool,
    /// The active segment may hold a partial record a failed truncate left.
    tail_dirty: bool,
    replay_ms: u64,
    /// Compaction resumes at the first segment numbered at least this.
    cursor: u64,
    /// Bytes compaction freed since the cursor last wrapped around.
    pass_freed: u64,
    over_budget: bool,
    /// Room an append is waiting for: compaction frees until the total is
    /// at most this (0: nothing is waiting).
    want_below: u64,
    /// The total when a compaction call looked at everything and freed
    /// nothing: no further call is made until the total or the room wanted
    /// changes, so a journal that cannot shrink is not rewritten in a loop.
    stalled_at: Option<u64>,
    /// The stall was logged (once per run of them).
    stall_logged: bool,
    /// The segments (as they were) a rewrite handed to the fsync thread is
    /// replacing, until it reports back; put back if it failed.
    inflight: Option<Vec<Seg>>,
    /// Rewrites the fsync thread has finished (done or failed) as last seen.
    rewrites_seen: u64,
    /// Failed rewrites as last seen.
    failed_rewrites: u64,
    /// Holds the `flock` for the journal's life. Declared last so it is
    /// released only after the fsync thread (in `sync`) has finished.
    _lock: File,
}

/// Makes `write(2)` past `RLIMIT_FSIZE` fail with `EFBIG` instead of killing
/// the process with `SIGXFSZ`, so a full quota is an append error.
pub fn ignore_sigxfsz() {
    // SAFETY: installing SIG_IGN for a signal has no memory-safety effects.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("journal-{seq:016x}.seg"))
}

fn parse_seg_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("journal-")?.strip_suffix(".seg")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join("LOCK");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| JournalError::io("open", &path, e))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            JournalError::Locked(path)
        } else {
            JournalError::io("lock", &path, e)
        });
    }
    Ok(f)
}

/// Creates (or replaces) a segment holding just a header.
fn create_segment(path: &Path, flags: u16) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    if let Err(e) = f.write_all(&record::header(flags)) {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(f)
}

/// Logs an operator-visible event and counts it.
fn warn(count: &mut u32, msg: std::fmt::Arguments<'_>) {
    log::warn!("{msg}");
    *count += 1;
}

impl Journal {
    /// Opens (creating if needed) the journal in `cfg.dir`, repairs damage,
    /// and returns everything it holds.
    pub fn open(cfg: JournalConfig) -> Result<(Journal, Replay), JournalError> {
        let t0 = Instant::now();
        if cfg.fsync == Fsync::Interval(Duration::ZERO) {
            return Err(JournalError::Invalid("fsync interval must be positive"));
        }
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| JournalError::io("create", &dir, e))?;
        let lock = lock_dir(&dir)?;
        let mut seqs = Vec::new();
        let list = fs::read_dir(&dir).map_err(|e| JournalError::io("list", &dir, e))?;
        for ent in list {
            let ent = ent.map_err(|e| JournalError::io("list", &dir, e))?;
            let name = ent.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = parse_seg_name(&name) {
                // Refused rather than skipped: the journal numbers new
                // segments on from the ones it has and would run into this
                // name later, mid-run; nor may it delete what it did not make.
                let path = ent.path();
                let meta = fs::metadata(&path).map_err(|e| JournalError::io("stat", &path, e))?;
                if !meta.is_file() {
                    return Err(JournalError::NotAFile(path));
                }
                seqs.push(seq);
            } else if name.ends_with(".tmp") {
                // A rewrite that never got renamed: the originals are intact.
                log::info!("journal: removing unfinished compaction output {name}");
                let _ = fs::remove_file(ent.path());
            }
        }
        seqs.sort_unstable();

        let mut rp = Replay::default();
        let mut segs: Vec<Seg> = Vec::new();
        let mut last_event: Option<EventId> = None;
        // The format version of the segment appends would continue.
        let mut tail_version = record::VERSION;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = seg_path(&dir, seq);
            let scan = record::read_segment(&path)?;
            let version = scan.version;
            if let Some(prev) = segs.last() {
                if seq != prev.seq + 1 && !scan.compacted {
                    let last = last_event.unwrap_or(EventId::NONE);
                    warn(
                        &mut rp.warnings,
                        format_args!(
                            "journal: segments {:016x}..{:016x} are missing from {}; \
                             history after id {last} has a hole",
                            prev.seq + 1,
                            seq - 1,
                            dir.display()
                        ),
                    );
                    rp.gaps.push(last);
                    rp.hole_upto = EventId::MAX;
                }
            }
            let kept = scan.records.len();
            let compacted = scan.compacted;
            for (rec, _) in scan.records {
                if rp.hole_upto == EventId::MAX {
                    rp.hole_upto = rec.id();
                }
                if let Record::Event { id, .. } = rec {
                    // After a crash between a compaction's rename and its
                    // unlinks, old segments and their rewrite both exist;
                    // ids only grow, so a repeat is a copy.
                    if last_event.is_some_and(|l| id <= l) {
                        continue;
                    }
                    last_event = Some(id);
                }
                rp.max_id = rp.max_id.max(rec.id());
                rp.records.push(rec);
            }
            if compacted {
                rp.compacted_upto = rp.max_id;
            }
            if scan.file_len < HEADER_LEN && i + 1 == seqs.len() {
                // A crash while rolling: the new segment never got its
                // header, so it never held a record. Nothing is lost.
                log::info!("journal: removing unfinished segment {}", path.display());
                fs::remove_file(&path).map_err(|e| JournalError::io("remove", &path, e))?;
                continue;
            }
            let Some(why) = scan.problem else {
                segs.push(Seg {
                    seq,
                    bytes: scan.file_len,
                });
                tail_version = version;
                continue;
            };
            // Damage: keep what came before it, drop everything after it.
            rp.cut = true;
            rp.cut_after_id = last_event.unwrap_or(EventId::NONE);
            let later = &seqs[i + 1..];
            let mut dropped = scan.file_len - scan.good_end;
            if scan.good_end == 0 {
                let _ = fs::remove_file(&path);
            } else {
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(scan.good_end))
                    .map_err(|e| JournalError::io("truncate", &path, e))?;
                segs.push(Seg {
                    seq,
                    bytes: scan.good_end,
                });
                tail_version = version;
            }
            for &s in later {
                let p = seg_path(&dir, s);
                dropped += fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&p).map_err(|e| JournalError::io("remove", &p, e))?;
            }
            warn(
                &mut rp.warnings,
                format_args!(
                    "journal: {} is damaged at byte {} ({why}); kept {kept} records \
                     before it, cut {dropped} bytes and {} later segments; history \
                     after id {} is lost",
                    path.display(),
                    scan.good_end,
                    later.len(),
                    rp.cut_after_id
                ),
            );
            break;
        }

        let cur = match segs.last() {
            Some(s) => {
                let p = seg_path(&dir, s.seq);
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&p)
                    .map_err(|e| JournalError::io("open", &p, e))?
            }
            None => {
                let p = seg_path(&dir, 1);
                segs.push(Seg {
                    seq: 1,
                    bytes: HEADER_LEN,
                });
                create_segment(&p, 0).map_err(|e| JournalError::io("create", &p, e))?
            }
        };
        let cur = Arc::new(cur);
        let sync = match cfg.fsync {
            Fsync::Never => None,
            policy => {
                let d = File::open(&dir).map_err(|e| JournalError::io("open", &dir, e))?;
                let s = sync::Syncer::start(policy, cur.clone(), d, cfg.waker.clone())
                    .map_err(|e| JournalError::io("start fsync thread for", &dir, e))?;
                Some(s)
            }
        };
        let max_bytes = cfg.max_bytes.max(2 * MIN_SEGMENT_BYTES);
        rp.bytes = segs.iter().map(|s| s.bytes).sum();
        rp.segments = segs.len();
        rp.elapsed = t0.elapsed();
        let mut j = Journal {
            dir,
            fsync: cfg.fsync,
            max_bytes,
            // At most half the budget, so compaction always has a sealed
            // segment to work on before the active one alone is too big.
            segment_bytes: cfg.segment_bytes.clamp(MIN_SEGMENT_BYTES, max_bytes / 2),
            _lock: lock,
            segs,
            cur,
            pos: 0,
            buf: Vec::new(),
            sync,
            records_written: 0,
            write_errors: 0,
            failing: false,
            tail_dirty: false,
            replay_ms: u64::try_from(rp.elapsed.as_millis()).unwrap_or(u64::MAX),
            cursor: 0,
            pass_freed: 0,
            over_budget: false,
            want_below: 0,
            stalled_at: None,
            stall_logged: false,
            inflight: None,
            rewrites_seen: 0,
            failed_rewrites: 0,
        };
        if tail_version != record::VERSION && j.active().bytes > 0 {
            // An older build's segment: records of this version go to a
            // new one, so each file is of one format.
            j.roll().map_err(|e| JournalError::io("roll", &j.dir, e))?;
        }
        Ok((j, rp))
    }

    fn active(&self) -> Seg {
        // `segs` is never empty: open creates a segment if there is none
        // and compaction never touches the active (last) one.
        self.segs
            .last()
            .copied()
            .unwrap_or(Seg { seq: 1, bytes: 0 })
    }

    fn set_active_len(&mut self, bytes: u64) {
        if let Some(s) = self.segs.last_mut() {
            s.bytes = bytes;
        }
    }

    /// Writes `rec` to the current segment (rolling to a new one when it is
    /// full) and returns its ticket: durable once [`Journal::durable`]
    /// reaches it. Once this returns `Ok` the record survives a crash of the
    /// process; on `Err` nothing of it is left in the file.
    pub fn append(&mut self, rec: &Record) -> Result<u64, JournalError> {
        self.buf.clear();
        record::encode(rec, &mut self.buf)?;
        let n = self.buf.len() as u64;
        let r = self.write_buf();
        match r {
            Ok(()) => {
                if self.failing {
                    log::warn!(
                        "journal: writing works again after {} errors",
                        self.write_errors
                    );
                    self.failing = false;
                }
                self.pos += n;
                self.records_written += 1;
                self.want_below = 0;
                if let Some(s) = &self.sync {
                    s.written(self.pos, self.fsync == Fsync::Always);
                }
                Ok(self.pos)
            }
            Err(e) => {
                self.write_errors += 1;
                if !self.failing {
                    log::warn!(
                        "journal: append failed ({e}); publishes are refused until writing works"
                    );
                    self.failing = true;
                }
                Err(JournalError::Write(e))
            }
        }
    }

    fn write_buf(&mut self) -> io::Result<()> {
        let at = self.active().bytes;
        if self.tail_dirty {
            self.cur.set_len(at)?;
            self.tail_dirty = false;
        }
        if at > HEADER_LEN && at + self.buf.len() as u64 > self.segment_bytes {
            self.roll()?;
        }
        let at = self.active().bytes;
        if let Err(e) = self.cur.write_all_at(&self.buf, at) {
            // Cut the partial record so the file ends on a whole record.
            if self.cur.set_len(at).is_err() {
                self.tail_dirty = true;
            }
            return Err(e);
        }
        self.set_active_len(at + self.buf.len() as u64);
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        let seq = self.active().seq + 1;
        let f = Arc::new(create_segment(&seg_path(&self.dir, seq), 0)?);
        let old = std::mem::replace(&mut self.cur, f.clone());
        self.segs.push(Seg {
            seq,
            bytes: HEADER_LEN,
        });
        if let Some(s) = &self.sync {
            s.rolled(old, f);
        }
        Ok(())
    }

    /// The highest ticket known to be fsynced (0 with [`Fsync::Never`]).
    pub fn durable(&self) -> u64 {
        self.sync
            .as_ref()
            .map_or(0, |s| s.counters().durable.load(Ordering::Acquire))
    }

    /// Bytes in segment files.
    pub fn total_bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.bytes).sum()
    }

    /// What the directory may hold now: the books ([`Journal::total_bytes`])
    /// already describe a rewrite handed to the fsync thread, but until it
    /// reports back the files it replaces are still on disk beside it. An
    /// append gate that read the books alone let a flood overshoot the
    /// budget by those files while a slow disk (or a loaded machine) kept
    /// the rewrite in flight.
    pub fn bytes_on_disk(&mut self) -> u64 {
        self.settle_rewrite();
        let replaced: u64 = self
            .inflight
            .as_ref()
            .map_or(0, |r| r.iter().map(|s| s.bytes).sum());
        self.total_bytes() + replaced
    }

    /// The directory is over budget, or over what an append waits for:
    /// call [`Journal::compact`] (unless the last call found nothing to
    /// free and nothing changed since).
    pub fn needs_compaction(&self) -> bool {
        let t = self.total_bytes();
        let over = t > self.max_bytes || (self.want_below > 0 && t > self.want_below);
        over && self.stalled_at != Some(t)
    }

    /// Asks compaction to bring the total down to `below` (dropping the
    /// oldest retained history if it must), for an append refused for room;
    /// the next successful append withdraws the request.
    pub fn want_room(&mut self, below: u64) {
        let below = below.max(1);
        if self.want_below != below {
            self.want_below = below;
            self.stalled_at = None;
        }
    }

    /// The effective segment size (after clamping).
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// Counters for `/stats`.
    pub fn stats(&self) -> JournalStats {
        let mut st = JournalStats {
            bytes: self.total_bytes(),
            segments: self.segs.len(),
            records_written: self.records_written,
            write_errors: self.write_errors,
            replay_ms: self.replay_ms,
            ..JournalStats::default()
        };
        if let Some(s) = &self.sync {
            let c = s.counters();
            st.fsyncs = c.fsyncs.load(Ordering::Relaxed);
            st.fsync_last_us = c.last_us.load(Ordering::Relaxed);
            st.fsync_max_us = c.max_us.load(Ordering::Relaxed);
            st.write_errors += c.errors.load(Ordering::Relaxed);
        }
        st
    }

    /// Frees disk while over budget, reading at most about three segments
    /// per call (call again while [`Journal::needs_compaction`]): runs of old segments are merged into one file holding only what
    /// is still `retained` (an event is kept if any of its streams retains
    /// its id; the newest tombstone per stream; a fresh clock at
    /// `last_id`). A segment that is almost all retained is skipped, and
    /// only when a full pass frees nothing is retained history dropped,
    /// oldest first, so the directory stays within budget plus one segment.
    /// Once over budget it frees down to about a segment below it. The
    /// rewrite is written here but fsynced, renamed into place and its
    /// originals unlinked by the fsync thread (unless [`Fsync::Never`]:
    /// then here, without fsync), so this call never waits for a disk;
    /// while that is under way, calls return at once without work.
    pub fn compact(
        &mut self,
        retained: &dyn Fn(&str, EventId) -> bool,
        last_id: EventId,
    ) -> Result<CompactStats, JournalError> {
        let mut st = CompactStats {
            bytes_before: self.total_bytes(),
            ..CompactStats::default()
        };
        if !self.settle_rewrite() {
            st.bytes_after = st.bytes_before;
            return Ok(st);
        }
        if self.needs_compaction() && self.segs.len() == 1 {
            self.roll()
                .map_err(|e| JournalError::io("roll", &self.dir, e))?;
        }
        let budget = 2 * self.segment_bytes;
        // Once started, free down to a low-water mark: a run of compaction
        // frees a good share of a segment instead of a few bytes per call,
        // and the merged runs keep the file count down.
        // With rewrites put in place by the fsync thread, appends go on
        // while one is in flight: leave two segments of room instead of one.
        let room = if self.sync.is_some() { 2 } else { 1 } * self.segment_bytes;
        let mut low = self.max_bytes - room.min(self.max_bytes / 4);
        if self.want_below > 0 {
            low = low.min(self.want_below);
        }
        // Dropping retained history was tried in this call.
        let mut dropped = false;
        let mut read = 0u64;
        // A segment read but left for the next group (it did not fit).
        let mut carry: Option<(u64, record::Scan)> = None;
        while self.total_bytes() > low && read < budget && self.segs.len() > 1 {
            let sealed = self.segs.len() - 1;
            let mut start = self.segs.partition_point(|s| s.seq < self.cursor);
            if start >= sealed {
                // A whole pass: if it freed next to nothing, what is retained
                // alone exceeds the budget and the oldest of it has to go
                // (at least half a segment's worth, so tiny rewritten files
                // at the front are not all that goes).
                let drop = self.pass_freed < self.segment_bytes / 8;
                self.cursor = 0;
                self.pass_freed = 0;
                start = 0;
                if drop {
                    dropped = true;
                    let (mut scans, mut bytes) = (Vec::new(), 0);
                    while scans.len() < sealed && bytes < self.segment_bytes / 2 {
                        let s = self.segs[scans.len()];
                        scans.push(self.scan(s, &mut carry, &mut read, &mut st)?);
                        bytes += s.bytes;
                    }
                    self.rewrite(0, scans, retained, last_id, &mut st, true)?;
                    if self.inflight.is_some() {
                        break; // one rewrite in flight at a time
                    }
                    continue;
                }
            }
            // Gather the run of segments from `start` whose retained records
            // fit in one segment, within what is left of this call's budget.
            let mut scans = Vec::new();
            let mut kept_bytes = 0;
            let mut freed = 0;
            let mut out_of_budget = false;
            for s in self.segs[start..sealed].iter().copied() {
                if !scans.is_empty() && read + s.bytes > budget {
                    out_of_budget = true;
                    break;
                }
                let scan = self.scan(s, &mut carry, &mut read, &mut st)?;
                let k: u64 = scan
                    .records
                    .iter()
                    .filter(|(r, _)| keep(r, retained))
                    .map(|(_, n)| n)
                    .sum();
                if scans.is_empty() && k * 8 >= s.bytes * 7 && 2 * s.bytes >= self.segment_bytes {
                    break; // a big, nearly all retained head: step over it
                }
                if !scans.is_empty() && kept_bytes + k > self.segment_bytes {
                    carry = Some((s.seq, scan));
                    break;
                }
                kept_bytes += k;
                freed += s.bytes.saturating_sub(k);
                scans.push(scan);
                if self.total_bytes() - freed <= low {
                    break;
                }
            }
            if scans.is_empty() || (scans.len() == 1 && freed * 8 < self.segs[start].bytes) {
                if out_of_budget {
                    break; // the next call merges this run further
                }
                // Rewriting would free next to nothing.
                self.cursor = self.segs[start].seq + 1;
                continue;
            }
            self.rewrite(start, scans, retained, last_id, &mut st, false)?;
            if self.inflight.is_some() {
                break; // one rewrite in flight at a time
            }
        }
        st.bytes_after = self.total_bytes();
        // Even dropping retained history freed nothing: the next call
        // would do the same, so wait for something to change. (A call that
        // freed nothing otherwise moved the cursor on; the loop calls again
        // only when woken for something else, so that is no busy loop.)
        let idle = self.inflight.is_none() && st.bytes_after >= st.bytes_before;
        self.stalled_at = (idle && dropped).then_some(st.bytes_after);
        if st.bytes_after < st.bytes_before {
            self.stall_logged = false;
        } else if self.stalled_at.is_some() && !std::mem::replace(&mut self.stall_logged, true) {
            log::warn!(
                "journal: compaction cannot free anything below {} bytes; it resumes \
                 when the journal changes",
                st.bytes_after
            );
        }
        if st.retained_dropped == 0 && !self.needs_compaction() {
            self.over_budget = false;
        }
        Ok(st)
    }

    /// Whether no rewrite is in flight any more (compaction may go on); a
    /// failed one is undone in the books (its originals are still on disk).
    fn settle_rewrite(&mut self) -> bool {
        let Some(replaced) = &self.inflight else {
            return true;
        };
        let Some(s) = &self.sync else {
            return true;
        };
        let c = s.counters();
        let failed = c.rewrites_failed.load(Ordering::Acquire);
        let finished = c.rewrites_done.load(Ordering::Acquire) + failed;
        if finished == self.rewrites_seen {
            return false;
        }
        self.rewrites_seen = finished;
        if failed > self.failed_rewrites {
            self.failed_rewrites = failed;
            let target = replaced.last().map_or(0, |s| s.seq);
            let mut segs: Vec<Seg> = self
                .segs
                .iter()
                .copied()
                .filter(|s| s.seq != target)
                .collect();
            segs.extend(replaced.iter().copied());
            segs.sort_unstable_by_key(|s| s.seq);
            self.segs = segs;
        }
        self.inflight = None;
        true
    }

    /// Reads segment `s`, or takes it from `carry` if it was read already.
    fn scan(
        &self,
        s: Seg,
        carry: &mut Option<(u64, record::Scan)>,
        read: &mut u64,
        st: &mut CompactStats,
    ) -> Result<record::Scan, JournalError> {
        if let Some((seq, scan)) = carry.take() {
            if seq == s.seq {
                return Ok(scan);
            }
        }
        *read += s.bytes;
        st.segments_read += 1;
        st.bytes_read += s.bytes;
        record::read_segment(&seg_path(&self.dir, s.seq))
    }

    /// Replaces the segments from `start` that `scans` read by one file named
    /// after the last of them, holding their retained records (none if
    /// `drop_events`), the newest tombstone per stream and a clock; then
    /// unlinks the others.
    fn rewrite(
        &mut self,
        start: usize,
        scans: Vec<record::Scan>,
        retained: &dyn Fn(&str, EventId) -> bool,
        last_id: EventId,
        st: &mut CompactStats,
        drop_events: bool,
    ) -> Result<(), JournalError> {
        let end = start + scans.len();
        let mut out = record::header(FLAG_COMPACTED).to_vec();
        let mut tomb: HashMap<String, usize> = HashMap::new();
        let mut spans: Vec<(usize, usize)> = Vec::new();
        let mut clock = last_id;
        let mut last_event: Option<EventId> = None;
        for (s, scan) in self.segs[start..end].iter().zip(scans) {
            if let Some(why) = scan.problem {
                log::warn!(
                    "journal: {} went bad after start-up ({why}); compaction drops \
                     its records after byte {}",
                    seg_path(&self.dir, s.seq).display(),
                    scan.good_end
                );
            }
            for (rec, _) in scan.records {
                clock = clock.max(rec.id());
                let mut k = keep(&rec, retained);
                match &rec {
                    Record::Event { id, .. } => {
                        // A copy left by an interrupted earlier rewrite.
                        if last_event.is_some_and(|l| *id <= l) {
                            k = false;
                        } else if k && drop_events {
                            st.retained_dropped += 1;
                            k = false;
                        }
                        last_event = Some(last_event.map_or(*id, |l| l.max(*id)));
                    }
                    Record::Delete { stream, .. } => {
                        k = tomb.len() < MAX_TOMBSTONES || tomb.contains_key(stream);
                    }
                    Record::Clock { .. } => {}
                }
                if !k {
                    st.records_dropped += 1;
                    continue;
                }
                let at = out.len();
                record::encode(&rec, &mut out)?;
                if let Record::Delete { stream, .. } = rec {
                    // Only the newest tombstone per stream matters: empty
                    // the older one's span so it is left out below.
                    if let Some(i) = tomb.insert(stream, spans.len()) {
                        spans[i].1 = spans[i].0;
                        st.records_dropped += 1;
                    }
                }
                spans.push((at, out.len()));
            }
        }
        let mut packed = Vec::with_capacity(out.len());
        packed.extend_from_slice(&out[..HEADER_LEN as usize]);
        for &(a, b) in &spans {
            packed.extend_from_slice(&out[a..b]);
        }
        drop(out);
        record::encode(&Record::Clock { last_id: clock }, &mut packed)?;
        st.records_kept += spans.iter().filter(|(a, b)| a != b).count() as u64;
        if drop_events && !self.over_budget {
            log::warn!(
                "journal: retained history exceeds the {}-byte budget; dropping \
                 the oldest retained events (up to id {})",
                self.max_bytes,
                last_event.unwrap_or(EventId::NONE)
            );
            self.over_budget = true;
        }

        let target = self.segs[end - 1].seq;
        let before: u64 = self.segs[start..end].iter().map(|s| s.bytes).sum();
        if packed.len() as u64 >= before {
            // It would free nothing (a lone file compaction wrote already):
            // step over it rather than write it again.
            self.cursor = target + 1;
            return Ok(());
        }
        let path = seg_path(&self.dir, target);
        let tmp = path.with_extension("tmp");
        let written = File::create(&tmp).and_then(|mut f| f.write_all(&packed));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(JournalError::io("rewrite", &path, e));
        }
        let replaced: Vec<Seg> = self.segs[start..end].to_vec();
        let olds: Vec<PathBuf> = replaced[..replaced.len() - 1]
            .iter()
            .map(|s| seg_path(&self.dir, s.seq))
            .collect();
        let mut gone: Vec<u64> = replaced[..replaced.len() - 1]
            .iter()
            .map(|s| s.seq)
            .collect();
        match &self.sync {
            Some(s) => {
                // The fsync before the rename (without it a power loss could
                // leave an empty file in place of the originals), the
                // rename, the directory fsync and the unlinks all happen on
                // the fsync thread: the caller (the reactor) never waits for
                // a disk. Until it reports back, compaction pauses; the
                // books below already describe the result.
                s.rewrite(sync::Rewrite {
                    tmp,
                    path: path.clone(),
                    olds,
                });
                self.inflight = Some(replaced);
            }
            None => {
                // Fsync::Never: nothing is fsynced anyway.
                if let Err(e) = fs::rename(&tmp, &path) {
                    let _ = fs::remove_file(&tmp);
                    return Err(JournalError::io("rewrite", &path, e));
                }
                // The old files only hold copies now; a crash before these
                // unlinks leaves copies that replay skips by id.
                gone.clear();
                for (p, s) in olds.iter().zip(&replaced) {
                    match fs::remove_file(p) {
                        Ok(()) => gone.push(s.seq),
                        Err(e) => log::warn!("journal: cannot remove {}: {e}", p.display()),
                    }
                }
            }
        }
        st.segments_written += 1;
        self.segs[end - 1].bytes = packed.len() as u64;
        st.segments_removed += gone.len();
        self.segs.retain(|s| !gone.contains(&s.seq));
        self.pass_freed += before.saturating_sub(packed.len() as u64);
        // A small result is the head of the next run, so the survivors of
        // many runs end up merged instead of as many little files.
        let small = 2 * (packed.len() as u64) < self.segment_bytes;
        self.cursor = if small { target } else { target + 1 };
        Ok(())
    }
}

/// Whether compaction carries `rec` over (tombstones and clocks are handled
/// by the caller: all tombstones pass here, clocks are replaced).
fn keep(rec: &Record, retained: &dyn Fn(&str, EventId) -> bool) -> bool {
    match rec {
        Record::Event { id, streams, .. } => streams.iter().any(|s| retained(s, *id)),
        Record::Delete { .. } => true,
        Record::Clock { .. } => false,
    }
}
