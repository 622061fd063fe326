//! The fsync thread: makes appended bytes durable off the calling thread and
//! publishes how far durability has reached.
//!
//! Owns the thread and the shared durability counters. It must not write
//! records (the journal does); it fsyncs descriptors it was handed, and
//! finishes compaction rewrites it was handed (fsync the new file, rename
//! it into place, fsync the directory, unlink the originals) so the
//! appending thread never waits for a disk. It stops (after one last round)
//! when the journal drops.

use super::Fsync;
use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long to back off after a failed fsync before trying again, so a dead
/// disk does not turn `Always` into a busy loop.
const RETRY: Duration = Duration::from_millis(100);

/// What the appender hands over, under the mutex.
struct Pending {
    /// Ticket (logical byte position) of the last record written.
    written: u64,
    /// The segment being appended to.
    cur: Arc<File>,
    /// Segments sealed since the last fsync; their tails still need one.
    sealed: Vec<Arc<File>>,
    /// A segment was created, so the directory entry needs an fsync.
    dir_dirty: bool,
    /// Compaction output waiting to replace its originals.
    rewrites: Vec<Rewrite>,
    stop: bool,
}

/// A compaction rewrite written to `tmp`, to be made durable and put in
/// place of the segment at `path`; `olds` are the segments it also stands
/// in for, unlinked once it is in place.
pub struct Rewrite {
    pub tmp: PathBuf,
    pub path: PathBuf,
    pub olds: Vec<PathBuf>,
}

/// Counters read without the lock.
#[derive(Default)]
pub struct Counters {
    pub durable: AtomicU64,
    pub fsyncs: AtomicU64,
    pub last_us: AtomicU64,
    pub max_us: AtomicU64,
    pub errors: AtomicU64,
    pub rewrites_done: AtomicU64,
    pub rewrites_failed: AtomicU64,
}

struct Shared {
    pending: Mutex<Pending>,
    cv: Condvar,
    counters: Counters,
}

/// The appender's handle on the fsync thread.
pub struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// A poisoned lock only means the other side panicked; the data (a few
/// counters and descriptors) is still coherent, so keep going.
fn lock(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Syncer {
    /// Starts the thread for `policy` (not [`Fsync::Never`]: no thread then).
    pub fn start(
        policy: Fsync,
        cur: Arc<File>,
        dir: File,
        waker: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> std::io::Result<Syncer> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                written: 0,
                cur,
                sealed: Vec::new(),
                dir_dirty: false,
                rewrites: Vec::new(),
                stop: false,
            }),
            cv: Condvar::new(),
            counters: Counters::default(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ssed-fsync".into())
            .spawn(move || run(&s, policy, &dir, waker))?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// Records that bytes up to `ticket` were written.
    pub fn written(&self, ticket: u64, wake: bool) {
        lock(&self.shared.pending).written = ticket;
        if wake {
            self.shared.cv.notify_one();
        }
    }

    /// The appender moved on to `cur`; `old` still needs its final fsync.
    pub fn rolled(&self, old: Arc<File>, cur: Arc<File>) {
        let mut p = lock(&self.shared.pending);
        p.sealed.push(old);
        p.cur = cur;
        p.dir_dirty = true;
    }

    /// Hands over a compaction rewrite; the counters report when it is done.
    pub fn rewrite(&self, r: Rewrite) {
        lock(&self.shared.pending).rewrites.push(r);
        self.shared.cv.notify_one();
    }

    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        lock(&self.shared.pending).stop = true;
        self.shared.cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(s: &Shared, policy: Fsync, dir: &File, waker: Option<Arc<dyn Fn() + Send + Sync>>) {
    let c = &s.counters;
    let mut synced = 0u64;
    let mut failing = false;
    loop {
        let mut p = lock(&s.pending);
        let dirty = |p: &Pending| {
            p.written > synced || !p.sealed.is_empty() || p.dir_dirty || !p.rewrites.is_empty()
        };
        let pause = match policy {
            _ if failing => Some(RETRY),
            Fsync::Interval(d) => Some(d),
            Fsync::Always | Fsync::Never => None,
        };
        if let Some(d) = pause {
            // Sleep the whole interval (waking early only to stop), then
            // sync whatever piled up: one fsync per interval at most.
            let until = Instant::now() + d;
            // A rewrite does not wait: compaction is paused until it is done.
            while !p.stop && p.rewrites.is_empty() {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                p =
                    s.cv.wait_timeout(p, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
            }
        } else {
            while !p.stop && !dirty(&p) {
                p = s.cv.wait(p).unwrap_or_else(PoisonError::into_inner);
            }
        }
        let stopping = p.stop;
        if !dirty(&p) {
            if stopping {
                return;
            }
            continue;
        }
        // Take a snapshot and fsync without the lock, so appends that
        // arrive meanwhile are not blocked and batch into the next round.
        let target = p.written;
        let sealed = std::mem::take(&mut p.sealed);
        let cur = p.cur.clone();
        let dir_dirty = std::mem::replace(&mut p.dir_dirty, false);
        let rewrites = std::mem::take(&mut p.rewrites);
        drop(p);
        if !rewrites.is_empty() {
            for r in rewrites {
                finish_rewrite(c, dir, r);
            }
            // The owner resumes compaction when it hears of it.
            if let Some(w) = &waker {
                w();
            }
        }
        let t0 = Instant::now();
        let mut res = Ok(());
        for f in sealed.iter().chain(std::iter::once(&cur)) {
            res = res.and_then(|()| f.sync_data());
        }
        if dir_dirty {
            res = res.and_then(|()| dir.sync_all());
        }
        match res {
            Ok(()) => {
                let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                c.fsyncs.fetch_add(1, Ordering::Relaxed);
                c.last_us.store(us, Ordering::Relaxed);
                c.max_us.fetch_max(us, Ordering::Relaxed);
                synced = target;
                c.durable.store(target, Ordering::Release);
                if failing {
                    log::warn!("journal: fsync works again");
                    failing = false;
                }
                if let Some(w) = &waker {
                    w();
                }
            }
            Err(e) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    log::warn!("journal: fsync failed ({e}); durability is stalled, retrying");
                    failing = true;
                }
                // Hand the work back so the next round retries it.
                let mut p = lock(&s.pending);
                let mut back = sealed;
                back.append(&mut p.sealed);
                p.sealed = back;
                p.dir_dirty |= dir_dirty;
            }
        }
        if stopping {
            return;
        }
    }
}

/// Makes a rewrite durable, puts it in place and unlinks its originals.
/// Until the rename the originals are intact, so a failure only removes the
/// rewrite (the journal puts the originals back in its books); a crash
/// after the rename leaves copies that replay skips by id.
fn finish_rewrite(c: &Counters, dir: &File, r: Rewrite) {
    let placed = File::open(&r.tmp)
        .and_then(|f| f.sync_data())
        .and_then(|()| fs::rename(&r.tmp, &r.path));
    if let Err(e) = placed {
        log::warn!(
            "journal: compaction could not put {} in place ({e}); keeping the originals",
            r.path.display()
        );
        let _ = fs::remove_file(&r.tmp);
        c.rewrites_failed.fetch_add(1, Ordering::Release);
        return;
    }
    // The rename must be durable before the originals go.
    if let Err(e) = dir.sync_all() {
        log::warn!("journal: fsync of the directory failed after a compaction rename ({e})");
    }
    for p in &r.olds {
        if let Err(e) = fs::remove_file(p) {
            log::warn!("journal: cannot remove {}: {e}", p.display());
        }
    }
    c.rewrites_done.fetch_add(1, Ordering::Release);
}
