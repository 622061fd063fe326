//! The journal against real files: replay, damage, locking, rolling,
//! compaction within budget, write failure under `RLIMIT_FSIZE` (in a child
//! process) and fsync tickets. Each test owns a fresh directory under the
//! system temp dir and removes it when done.

use super::*;
use rand::{Rng, SeedableRng};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::AtomicUsize;
use std::sync::{Condvar, Mutex};

struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("ssed-journal-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn cfg(dir: &Path) -> JournalConfig {
    JournalConfig {
        fsync: Fsync::Never,
        max_bytes: 1 << 20,
        segment_bytes: 4096,
        ..JournalConfig::new(dir)
    }
}

fn ev(id: u64, stream: &str, pad: usize) -> Record {
    Record::Event {
        id: EventId::new(id),
        streams: vec![stream.to_string()],
        frame: format!("id: {id}\ndata: {}\n\n", "x".repeat(pad)).into_bytes(),
        private: id % 2 == 0,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn event_ids(rp: &Replay) -> Vec<u64> {
    let ev = rp
        .records
        .iter()
        .filter(|r| matches!(r, Record::Event { .. }));
    ev.map(|r| r.id().get()).collect()
}

fn open(c: JournalConfig) -> (Journal, Replay) {
    Journal::open(c).unwrap()
}

#[test]
fn reopen_gives_the_same_records_and_max_id() {
    let t = Tmp::new("reopen");
    let mut want = Vec::new();
    {
        let (mut j, rp) = open(cfg(&t.0));
        assert!(rp.records.is_empty() && !rp.cut && rp.warnings == 0);
        for id in 1..=100 {
            want.push(ev(id, if id % 2 == 0 { "a" } else { "b" }, id as usize));
        }
        want.push(Record::Delete {
            stream: "a".into(),
            floor_id: EventId::new(100),
        });
        want.push(Record::Clock {
            last_id: EventId::new(123),
        });
        let mut last = 0;
        for r in &want {
            let t = j.append(r).unwrap();
            assert!(t > last, "tickets grow");
            last = t;
        }
        assert_eq!(j.stats().records_written, want.len() as u64);
        assert_eq!(j.durable(), 0, "Never fsyncs");
    }
    let (j, rp) = open(cfg(&t.0));
    assert_eq!(rp.records, want);
    assert_eq!(rp.max_id, EventId::new(123));
    assert!(!rp.cut && rp.warnings == 0 && rp.gaps.is_empty());
    assert_eq!(rp.bytes, j.total_bytes());
    assert_eq!(rp.segments, segments(&t.0).len());
    assert!(rp.segments > 1, "4 KiB segments rolled");
}

#[test]
fn segments_roll_and_stay_within_size() {
    let t = Tmp::new("roll");
    let (mut j, _) = open(cfg(&t.0));
    for id in 1..=200 {
        j.append(&ev(id, "s", 150)).unwrap();
    }
    let files = segments(&t.0);
    assert!(files.len() >= 8, "{} segments", files.len());
    for (i, f) in files.iter().enumerate() {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, format!("journal-{:016x}.seg", i + 1));
        assert!(fs::metadata(f).unwrap().len() <= 4096);
    }
    assert_eq!(j.stats().segments, files.len());
    assert_eq!(j.stats().bytes, dir_bytes(&t.0));
    drop(j);
    let (_, rp) = open(cfg(&t.0));
    assert_eq!(rp.records.len(), 200);
}

#[test]
fn a_torn_tail_is_cut_at_every_byte_of_the_last_record() {
    let t = Tmp::new("torn");
    let recs: Vec<Record> = (1..=5).map(|id| ev(id, "s", 10)).collect();
    {
        let (mut j, _) = open(cfg(&t.0));
        for r in &recs {
            j.append(r).unwrap();
        }
    }
    let seg = segments(&t.0).remove(0);
    let orig = fs::read(&seg).unwrap();
    let mut last = Vec::new();
    record::encode(&recs[4], &mut last).unwrap();
    let good = orig.len() - last.len();
    for cut in 0..last.len() {
        fs::write(&seg, &orig[..good + cut]).unwrap();
        let (_, rp) = open(cfg(&t.0));
        assert_eq!(rp.records, recs[..4], "cut at {cut}");
        assert_eq!(rp.cut, cut > 0, "cut at {cut}");
        assert_eq!(rp.warnings, u32::from(cut > 0));
        if cut > 0 {
            assert_eq!(rp.cut_after_id, EventId::new(4));
        }
        assert_eq!(fs::metadata(&seg).unwrap().len() as usize, good);
    }
    // The repaired journal takes appends and reads back cleanly.
    {
        let (mut j, _) = open(cfg(&t.0));
        j.append(&recs[4]).unwrap();
    }
    let (_, rp) = open(cfg(&t.0));
    assert_eq!(rp.records, recs);
    assert!(!rp.cut);
}

#[test]
fn random_bytes_after_the_last_record_are_cut() {
    let t = Tmp::new("garbage");
    let recs: Vec<Record> = (1..=3).map(|id| ev(id, "s", 20)).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    for trial in 0..50 {
        {
            let (mut j, rp) = open(cfg(&t.0));
            assert_eq!(rp.records.len(), if trial == 0 { 0 } else { 3 });
            if trial == 0 {
                for r in &recs {
                    j.append(r).unwrap();
                }
            }
        }
        let seg = segments(&t.0).remove(0);
        let clean = fs::metadata(&seg).unwrap().len();
        let n = rng.gen_range(1..300);
        let junk: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&junk).unwrap();
        drop(f);
        let (_, rp) = open(cfg(&t.0));
        assert_eq!(rp.records, recs, "trial {trial}");
        assert!(rp.cut);
        assert_eq!(fs::metadata(&seg).unwrap().len(), clean);
    }
}

#[test]
fn a_corrupt_middle_record_drops_it_and_everything_after() {
    let t = Tmp::new("corrupt");
    let recs: Vec<Record> = (1..=60).map(|id| ev(id, "s", 250)).collect();
    {
        let (mut j, _) = open(cfg(&t.0));
        for r in &recs {
            j.append(r).unwrap();
        }
    }
    let files = segments(&t.0);
    assert!(files.len() >= 4);
    let first = record::read_segment(&files[0]).unwrap().records.len();
    let second = record::read_segment(&files[1]).unwrap();
    assert!(second.records.len() >= 4);
    // Flip a byte inside the third record of the second segment.
    let off = HEADER_LEN + second.records[0].1 + second.records[1].1 + 20;
    let mut bytes = fs::read(&files[1]).unwrap();
    bytes[off as usize] ^= 0x40;
    fs::write(&files[1], &bytes).unwrap();

    let (mut j, rp) = open(cfg(&t.0));
    let kept = first + 2;
    assert_eq!(rp.records, recs[..kept]);
    assert!(rp.cut);
    assert_eq!(rp.cut_after_id, EventId::new(kept as u64));
    assert_eq!(rp.warnings, 1);
    assert_eq!(segments(&t.0), files[..2]);
    assert_eq!(
        fs::metadata(&files[1]).unwrap().len(),
        HEADER_LEN + second.records[0].1 + second.records[1].1
    );
    // The id clock picks up after the cut; later appends land after it.
    j.append(&ev(61, "s", 1)).unwrap();
    drop(j);
    let (_, rp) = open(cfg(&t.0));
    assert_eq!(rp.records.len(), kept + 1);
    assert!(!rp.cut && rp.warnings == 0);
}

#[test]
fn a_damaged_header_drops_that_segment() {
    let t = Tmp::new("header");
    {
        let (mut j, _) = open(cfg(&t.0));
        for id in 1..=40 {
            j.append(&ev(id, "s", 250)).unwrap();
        }
    }
    let files = segments(&t.0);
    let first = record::read_segment(&files[0]).unwrap().records.len();
    let mut b = fs::read(&files[1]).unwrap();
    b[3] = b'x';
    fs::write(&files[1], &b).unwrap();
    let (_, rp) = open(cfg(&t.0));
    assert_eq!(rp.records.len(), first);
    assert!(rp.cut && rp.warnings == 1);
    assert_eq!(segments(&t.0), files[..1]);
}

#[test]
fn a_segment_torn_while_rolling_is_removed_quietly() {
    let t = Tmp::new("rolltorn");
    {
        let (mut j, _) = open(cfg(&t.0));
        j.append(&ev(1, "s", 10)).unwrap();
    }
    fs::write(
        t.0.join("journal-0000000000000002.seg"),
        &record::header(0)[..7],
    )
    .unwrap();
    let (mut j, rp) = open(cfg(&t.0));
    assert_eq!(rp.records, vec![ev(1, "s", 10)]);
    assert!(!rp.cut && rp.warnings == 0);
    assert_eq!(segments(&t.0).len(), 1);
    j.append(&ev(2, "s", 10)).unwrap();
}

#[test]
fn a_missing_middle_segment_is_tolerated_with_a_warning() {
    let t = Tmp::new("gap");
    let recs: Vec<Record> = (1..=60).map(|id| ev(id, "s", 250)).collect();
    {
        let (mut j, _) = open(cfg(&t.0));
        for r in &recs {
            j.append(r).unwrap();
        }
    }
    let files = segments(&t.0);
    let first = record::read_segment(&files[0]).unwrap().records.len();
    let lost = record::read_segment(&files[1]).unwrap().records.len();
    fs::remove_file(&files[1]).unwrap();
    let (_, rp) = open(cfg(&t.0));
    let mut want = recs[..first].to_vec();
    want.extend_from_slice(&recs[first + lost..]);
    assert_eq!(rp.records, want);
    assert!(!rp.cut);
    assert_eq!(rp.warnings, 1);
    assert_eq!(rp.gaps, vec![EventId::new(first as u64)]);
    assert_eq!(rp.max_id, EventId::new(60));
}

#[test]
fn a_second_open_is_refused_while_the_first_lives() {
    let t = Tmp::new("lock");
    let (j, _) = open(cfg(&t.0));
    match Journal::open(cfg(&t.0)) {
        Err(e @ JournalError::Locked(_)) => assert!(e.to_string().contains("locked")),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened twice"),
    }
    drop(j);
    open(cfg(&t.0));
}

#[test]
fn a_newer_format_version_is_refused_not_cut() {
    let t = Tmp::new("version");
    drop(open(cfg(&t.0)));
    let seg = segments(&t.0).remove(0);
    let mut h = record::header(0);
    h[8..10].copy_from_slice(&(record::VERSION + 1).to_le_bytes());
    let c = crc32::crc32(&h[..12]);
    h[12..].copy_from_slice(&c.to_le_bytes());
    fs::write(&seg, h).unwrap();
    assert!(matches!(
        Journal::open(cfg(&t.0)),
        Err(JournalError::Version { version, .. }) if version == record::VERSION + 1
    ));
    assert_eq!(fs::metadata(&seg).unwrap().len(), HEADER_LEN);
}

/// Newest-N-per-stream retention, as the history rings do it.
#[derive(Default)]
struct Rings {
    keep: HashMap<String, (usize, VecDeque<u64>)>,
    deleted: HashSet<String>,
}

impl Rings {
    fn push(&mut self, s: &str, id: u64, n: usize) {
        let (cap, q) = self
            .keep
            .entry(s.to_string())
            .or_insert((n, VecDeque::new()));
        q.push_back(id);
        while q.len() > *cap {
            q.pop_front();
        }
    }
    fn retained(&self, s: &str, id: u64) -> bool {
        !self.deleted.contains(s) && self.keep.get(s).is_some_and(|(_, q)| q.contains(&id))
    }
}

#[test]
fn compaction_keeps_the_directory_within_budget_and_the_retained_events() {
    let t = Tmp::new("compact");
    let c = JournalConfig {
        max_bytes: 64 << 10,
        segment_bytes: 8 << 10,
        ..cfg(&t.0)
    };
    let (max, seg) = (c.max_bytes, c.segment_bytes);
    let (mut j, _) = open(c.clone());
    let mut rings = Rings::default();
    let mut written = 0u64;
    let mut id = 0u64;
    let mut compactions = 0;
    let mut files = 0;
    while written < 10 * max {
        id += 1;
        // A busy stream keeps little; "deep" wrote a burst first and keeps
        // all of it (old segments that stay fully retained), "quiet" keeps
        // a sparse old history; one stream is deleted.
        let (streams, n): (Vec<&str>, usize) = match id % 40 {
            _ if id <= 250 => (vec!["deep"], 250),
            0 => (vec!["quiet"], 60),
            1 => (vec!["busy", "also"], 5),
            2 if id < 2000 => (vec!["doomed"], 100),
            _ => (vec!["busy"], 20),
        };
        for s in &streams {
            rings.push(s, id, n);
        }
        let r = Record::Event {
            id: EventId::new(id),
            streams: streams.iter().map(|s| s.to_string()).collect(),
            frame: vec![b'x'; 100 + (id % 7) as usize],
            private: false,
        };
        j.append(&r).unwrap();
        written += 109 + (id % 7);
        if id == 2000 {
            rings.deleted.insert("doomed".into());
            j.append(&Record::Delete {
                stream: "doomed".into(),
                floor_id: EventId::new(id),
            })
            .unwrap();
        }
        if j.needs_compaction() {
            let st = j
                .compact(&|s, i| rings.retained(s, i.get()), EventId::new(id))
                .unwrap();
            compactions += 1;
            assert_eq!(st.retained_dropped, 0, "{st:?}");
            assert!(st.bytes_after <= st.bytes_before, "{st:?}");
            assert!(st.bytes_read <= 3 * seg, "bounded work per call: {st:?}");
            files = files.max(segments(&t.0).len());
            assert!(
                dir_bytes(&t.0) <= max + seg,
                "{} > {max} + {seg}",
                dir_bytes(&t.0)
            );
            assert_eq!(dir_bytes(&t.0), j.total_bytes());
        }
    }
    assert!(compactions > 20, "{compactions}");
    assert!(files <= 2 * (max / seg) as usize, "{files} files");
    drop(j);
    let (_, rp) = open(c);
    assert!(!rp.cut && rp.warnings == 0, "{rp:?}");
    assert_eq!(rp.max_id, EventId::new(id));
    let mut seen = HashSet::new();
    let mut prev = EventId::NONE;
    for r in &rp.records {
        if let Record::Event { id, .. } = r {
            assert!(*id > prev, "ids ascend without copies");
            prev = *id;
            seen.insert(id.get());
        }
    }
    for (s, (_, q)) in &rings.keep {
        for &i in q {
            if rings.retained(s, i) {
                assert!(seen.contains(&i), "retained {s}/{i} lost");
            }
        }
    }
    assert!(rp.records.contains(&Record::Delete {
        stream: "doomed".into(),
        floor_id: EventId::new(2000)
    }));
}

#[test]
fn retained_history_beyond_the_budget_is_dropped_oldest_first() {
    let t = Tmp::new("over");
    let c = JournalConfig {
        max_bytes: 32 << 10,
        segment_bytes: 4096,
        ..cfg(&t.0)
    };
    let (mut j, _) = open(c.clone());
    let mut dropped = 0;
    for id in 1..=2000 {
        j.append(&ev(id, "s", 100)).unwrap();
        if j.needs_compaction() {
            dropped += j
                .compact(&|_, _| true, EventId::new(id))
                .unwrap()
                .retained_dropped;
            assert!(dir_bytes(&t.0) <= (32 << 10) + 4096);
        }
    }
    assert!(dropped > 0);
    drop(j);
    let (_, rp) = open(c);
    let ids = event_ids(&rp);
    assert_eq!(*ids.last().unwrap(), 2000);
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "a newest suffix");
    assert_eq!(rp.max_id, EventId::new(2000));
}

#[test]
fn the_clock_survives_when_every_event_is_compacted_away() {
    let t = Tmp::new("clock");
    let c = JournalConfig {
        max_bytes: 16 << 10,
        segment_bytes: 4096,
        ..cfg(&t.0)
    };
    let (mut j, _) = open(c.clone());
    for id in 1..=200 {
        j.append(&ev(id, "s", 100)).unwrap();
    }
    // The clock ran ahead of the journaled events (say, unjournaled ids).
    while j.needs_compaction() {
        j.compact(&|_, _| false, EventId::new(5000)).unwrap();
    }
    drop(j);
    let (_, rp) = open(c);
    assert_eq!(rp.max_id, EventId::new(5000));
}

#[test]
fn a_crash_between_rewrite_and_unlink_replays_no_copies() {
    let t = Tmp::new("crashcompact");
    let c = JournalConfig {
        max_bytes: 16 << 10,
        segment_bytes: 4096,
        ..cfg(&t.0)
    };
    let (mut j, _) = open(c.clone());
    for id in 1..=150 {
        j.append(&ev(id, "s", 100)).unwrap();
    }
    let before: Vec<(PathBuf, Vec<u8>)> = segments(&t.0)
        .into_iter()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    let st = j
        .compact(&|_, id| id.get() % 3 == 0, EventId::new(150))
        .unwrap();
    assert!(st.segments_removed > 0, "{st:?}");
    drop(j);
    // Put back the files the rewrite unlinked, as if it had crashed.
    for (p, b) in &before {
        if !p.exists() {
            fs::write(p, b).unwrap();
        }
    }
    let (_, rp) = open(c);
    let events = event_ids(&rp);
    assert!(events.windows(2).all(|w| w[0] < w[1]), "{events:?}");
    assert!(events.contains(&3) && events.contains(&150));
    assert!(rp.warnings == 0 && !rp.cut);
}

/// Waits for `j.durable() >= ticket`, woken by the journal's waker.
fn wait_durable(j: &Journal, bell: &(Mutex<u64>, Condvar), ticket: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut g = bell.0.lock().unwrap();
    while j.durable() < ticket {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "durable {} < {ticket}", j.durable());
        g = bell.1.wait_timeout(g, left).unwrap().0;
    }
}

fn ringing(c: JournalConfig) -> (JournalConfig, Arc<(Mutex<u64>, Condvar)>) {
    let bell = Arc::new((Mutex::new(0u64), Condvar::new()));
    let b = bell.clone();
    let waker: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        *b.0.lock().unwrap() += 1;
        b.1.notify_all();
    });
    (
        JournalConfig {
            waker: Some(waker),
            ..c
        },
        bell,
    )
}

#[test]
fn tickets_become_durable_with_always_and_interval() {
    for policy in [Fsync::Always, Fsync::Interval(Duration::from_millis(5))] {
        let t = Tmp::new("durable");
        let (c, bell) = ringing(JournalConfig {
            fsync: policy,
            ..cfg(&t.0)
        });
        let (mut j, _) = open(c);
        let mut ticket = 0;
        for round in 0..5 {
            for id in 0..30 {
                ticket = j.append(&ev(round * 100 + id, "s", 200)).unwrap();
            }
            wait_durable(&j, &bell, ticket);
        }
        let st = j.stats();
        assert!(
            st.fsyncs >= 1 && st.fsync_max_us >= st.fsync_last_us,
            "{st:?}"
        );
        assert!(*bell.0.lock().unwrap() >= 1);
        assert_eq!(st.write_errors, 0);
    }
}

const CHILD: &str = "SSED_JOURNAL_FSIZE_CHILD";

/// Runs only in the child process `write_failure_recovers_under_rlimit_fsize`
/// starts: `RLIMIT_FSIZE` is per process, so it must not touch the others.
#[test]
fn fsize_child() {
    let Some(dir) = std::env::var_os(CHILD) else {
        return;
    };
    ignore_sigxfsz();
    let c = cfg(Path::new(&dir));
    let (mut j, _) = open(c.clone());
    j.append(&ev(1, "s", 10)).unwrap();
    let seg = segments(Path::new(&dir)).remove(0);
    let len = fs::metadata(&seg).unwrap().len();
    let set = |soft: libc::rlim_t| {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain get/setrlimit with a valid struct.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut r), 0);
            r.rlim_cur = soft.min(r.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &r), 0);
        }
    };
    // Room for part of the next record only: the write is cut short.
    set(len + 20);
    for _ in 0..3 {
        match j.append(&ev(2, "s", 10)) {
            Err(JournalError::Write(e)) => assert_eq!(e.raw_os_error(), Some(libc::EFBIG)),
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::metadata(&seg).unwrap().len(), len, "partial record cut");
    }
    assert_eq!(j.stats().write_errors, 3);
    set(libc::RLIM_INFINITY);
    j.append(&ev(2, "s", 10)).unwrap();
    drop(j);
    let (_, rp) = open(c);
    assert_eq!(rp.records, vec![ev(1, "s", 10), ev(2, "s", 10)]);
    assert!(!rp.cut);
}

#[test]
fn write_failure_recovers_under_rlimit_fsize() {
    let t = Tmp::new("fsize");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "journal::tests::fsize_child", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD, &t.0)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, rp) = open(cfg(&t.0));
    assert_eq!(rp.records.len(), 2);
}

/// `cargo test --release --lib journal::tests::throughput -- --ignored --nocapture`
#[test]
#[ignore]
fn throughput() {
    for policy in [
        Fsync::Never,
        Fsync::Interval(Duration::from_millis(100)),
        Fsync::Always,
    ] {
        let t = Tmp::new("bench");
        let (c, bell) = ringing(JournalConfig {
            fsync: policy,
            max_bytes: 1 << 30,
            segment_bytes: 32 << 20,
            ..cfg(&t.0)
        });
        let (mut j, _) = open(c);
        let n = 100_000;
        let t0 = Instant::now();
        let mut ticket = 0;
        for id in 1..=n {
            ticket = j.append(&ev(id, "news", 200)).unwrap();
        }
        let append = t0.elapsed();
        if policy != Fsync::Never {
            wait_durable(&j, &bell, ticket);
        }
        let all = t0.elapsed();
        let st = j.stats();
        println!(
            "{policy:?}: {n} appends of ~230 B in {append:?} ({:.0}/s), all durable after \
             {all:?}; {} fsyncs (max {} us)",
            n as f64 / append.as_secs_f64(),
            st.fsyncs,
            st.fsync_max_us,
        );
        if policy == Fsync::Always {
            // Publish-and-wait, one at a time: what Always costs one caller.
            let (k, t1) = (200, Instant::now());
            for id in 0..k {
                let tk = j.append(&ev(n + 1 + id, "news", 200)).unwrap();
                wait_durable(&j, &bell, tk);
            }
            println!(
                "Always: append + wait for durable: {:?} each",
                t1.elapsed() / k as u32
            );
        }
    }
}

#[test]
fn the_journal_can_move_to_another_thread() {
    fn send<T: Send>() {}
    send::<Journal>();
    send::<JournalError>();
}

/// A journal written by version 1 (no private flag) replays, its events as
/// public; the next append goes to a new segment of the current version, so
/// no file mixes formats, and both replay after a restart.
#[test]
fn a_version_1_journal_replays_as_public_and_appends_in_a_new_segment() {
    let t = Tmp::new("v1");
    fs::create_dir_all(&t.0).unwrap();
    // The header and one event record, byte for byte as version 1 wrote them.
    let mut h = Vec::new();
    h.extend_from_slice(b"SSEDJRNL");
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    let c = crc32::crc32(&h);
    h.extend_from_slice(&c.to_le_bytes());
    let mut body = vec![1u8];
    body.extend_from_slice(&5u64.to_le_bytes());
    body.extend_from_slice(&[1, 0, 1, 0, b's']);
    body.extend_from_slice(b"id: 5\ndata: old\n\n");
    h.extend_from_slice(&(body.len() as u32).to_le_bytes());
    h.extend_from_slice(&crc32::crc32(&body).to_le_bytes());
    h.extend_from_slice(&body);
    fs::write(seg_path(&t.0, 1), &h).unwrap();
    let old = Record::Event {
        id: EventId::new(5),
        streams: vec!["s".into()],
        frame: b"id: 5\ndata: old\n\n".to_vec(),
        private: false,
    };
    let (mut j, rp) = open(cfg(&t.0));
    assert!(!rp.cut && rp.warnings == 0, "{rp:?}");
    assert_eq!(rp.records, vec![old.clone()]);
    let new = Record::Event {
        id: EventId::new(6),
        streams: vec!["s".into()],
        frame: b"id: 6\ndata: new\n\n".to_vec(),
        private: true,
    };
    j.append(&new).unwrap();
    drop(j);
    // The version 1 file is untouched; the new record is in a second one.
    assert_eq!(fs::read(seg_path(&t.0, 1)).unwrap(), h);
    assert_eq!(segments(&t.0).len(), 2);
    assert_eq!(fs::read(seg_path(&t.0, 2)).unwrap()[8..10], [2, 0]);
    let (_, rp) = open(cfg(&t.0));
    assert!(!rp.cut && rp.warnings == 0, "{rp:?}");
    assert_eq!(rp.records, vec![old, new]);
}

/// Compaction carries the private flag over into the segment it writes.
#[test]
fn compaction_keeps_the_private_flag() {
    let t = Tmp::new("privcompact");
    let c = JournalConfig {
        max_bytes: 16 * 1024,
        ..cfg(&t.0)
    };
    let (mut j, _) = open(c.clone());
    for id in 1..=200 {
        j.append(&ev(id, "s", 100)).unwrap();
        if j.needs_compaction() {
            // Retain the newest 40 events.
            j.compact(&|_, i| i.get() + 40 > id, EventId::new(id))
                .unwrap();
        }
    }
    drop(j);
    let (_, rp) = open(c);
    let mut n = 0;
    for r in &rp.records {
        if let Record::Event { id, private, .. } = r {
            assert_eq!(*private, id.get() % 2 == 0, "{id}");
            n += 1;
        }
    }
    assert!(n >= 40, "{n}");
    assert!(
        rp.compacted_upto > EventId::NONE,
        "a compaction rewrote something"
    );
}

/// Events larger than a segment in a small budget: compaction drops the
/// oldest to get within it, never rewrites a file to the same size, and
/// once nothing more can be freed it stops being asked until the journal
/// changes (no busy loop over one small rewritten file).
#[test]
fn compaction_of_large_events_makes_progress_or_stops() {
    let t = Tmp::new("progress");
    let c = JournalConfig {
        max_bytes: 20 * 1024,
        segment_bytes: 4096,
        ..cfg(&t.0)
    };
    let (mut j, _) = open(c);
    for id in 1..=6u64 {
        j.append(&ev(id, "s", 8000)).unwrap();
        let mut calls = 0;
        while j.needs_compaction() {
            let st = j.compact(&|_, _| true, EventId::new(id)).unwrap();
            calls += 1;
            assert!(calls < 10, "compaction does not converge: {st:?}");
            assert!(
                st.segments_written == 0 || st.bytes_after < st.bytes_before,
                "a rewrite that freed nothing: {st:?}"
            );
        }
        assert!(j.total_bytes() <= 20 * 1024, "{}", j.total_bytes());
    }
    // Room asked for beyond what dropping can give (the active segment
    // stays): one call tries, then it is not asked again until a change.
    j.want_room(100);
    let mut calls = 0;
    while j.needs_compaction() {
        j.compact(&|_, _| true, EventId::new(6)).unwrap();
        calls += 1;
        assert!(calls < 10, "busy loop");
    }
    let settled = j.total_bytes();
    assert!(settled > 100 && settled < 9000, "{settled}");
    assert!(!j.needs_compaction());
    // An append withdraws the request; the budget alone rules again.
    j.append(&ev(7, "s", 10)).unwrap();
    assert!(!j.needs_compaction());
}

/// While a rewrite waits for the fsync thread, the files it replaces are
/// still on disk: what the append gate reads must count them, or a flood
/// overshoots `--journal-bytes` by them (seen as a flaky integration test
/// on a loaded machine).
#[test]
fn bytes_on_disk_count_the_files_a_rewrite_in_flight_replaces() {
    let t = Tmp::new("inflight");
    let c = JournalConfig {
        fsync: Fsync::Interval(Duration::from_millis(50)),
        max_bytes: 32 << 10,
        segment_bytes: 4 << 10,
        ..cfg(&t.0)
    };
    let (mut j, _) = open(c);
    let (mut compactions, mut seen_in_flight) = (0, 0);
    for id in 1..=3000u64 {
        j.append(&ev(id, "s", 200)).unwrap();
        if j.needs_compaction() {
            j.compact(&|_, i| i.get() + 20 > id, EventId::new(id))
                .unwrap();
            compactions += 1;
        }
        // The gate's figure first: the disk can only shrink after it.
        let gate = j.bytes_on_disk();
        // The fsync thread may unlink a file between listing and measuring.
        let disk: u64 = fs::read_dir(&t.0)
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        assert!(gate >= disk, "gate reads {gate} with {disk} on disk");
        if gate > j.total_bytes() {
            seen_in_flight += 1;
        }
    }
    assert!(compactions > 10, "{compactions}");
    println!("{compactions} compactions, {seen_in_flight} appends saw a rewrite in flight");
}
