//! Reading the server's costs from /proc: memory, CPU time, context
//! switches, kernel socket memory, and the PID behind a listening port.
//!
//! Parsers take the file's text so they can be tested on sample text; the
//! `read_*` wrappers do the I/O.

use std::fs;
use std::path::Path;

/// Memory and scheduling figures of one process at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcSample {
    pub rss_kb: u64,
    /// `RssAnon`: the heap and stacks, without the mapped binary.
    pub anon_kb: u64,
    /// `None` where smaps_rollup is unavailable (old kernels).
    pub pss_kb: Option<u64>,
    /// utime + stime in clock ticks (/proc/PID/stat).
    pub cpu_ticks: u64,
    /// On-CPU time in ns from /proc/PID/schedstat, finer than ticks.
    pub cpu_ns: Option<u64>,
    pub voluntary_ctxt: u64,
    pub nonvoluntary_ctxt: u64,
}

/// `VmRSS`, `voluntary_ctxt_switches`, `nonvoluntary_ctxt_switches` from
/// /proc/PID/status, as `(rss_kb, voluntary, nonvoluntary)`.
pub fn parse_status(text: &str) -> Option<(u64, u64, u64)> {
    let mut rss = None;
    let mut vol = None;
    let mut nonvol = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let num = || rest.split_whitespace().next()?.parse::<u64>().ok();
        match key {
            "VmRSS" => rss = num(),
            "voluntary_ctxt_switches" => vol = num(),
            "nonvoluntary_ctxt_switches" => nonvol = num(),
            _ => {}
        }
    }
    Some((rss?, vol?, nonvol?))
}

/// One `KEY:   N kB` figure from /proc/PID/status or /proc/meminfo text.
pub fn parse_kb(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, rest) = l.split_once(':')?;
        (k == key).then(|| rest.split_whitespace().next()?.parse().ok())?
    })
}

impl ProcSample {
    /// The sum of several processes' samples (the workers of one server):
    /// fine-grained CPU only when every one has it.
    pub fn sum(samples: &[ProcSample]) -> ProcSample {
        let add = |f: fn(&ProcSample) -> u64| samples.iter().map(f).sum::<u64>();
        let opt = |f: fn(&ProcSample) -> Option<u64>| samples.iter().map(f).sum::<Option<u64>>();
        ProcSample {
            rss_kb: add(|s| s.rss_kb),
            anon_kb: add(|s| s.anon_kb),
            pss_kb: opt(|s| s.pss_kb),
            cpu_ticks: add(|s| s.cpu_ticks),
            cpu_ns: opt(|s| s.cpu_ns),
            voluntary_ctxt: add(|s| s.voluntary_ctxt),
            nonvoluntary_ctxt: add(|s| s.nonvoluntary_ctxt),
        }
    }
}

/// `Slab:` (reclaimable and not) in kB from /proc/meminfo: socket, file
/// and inode objects of every connection land here, so its growth over a
/// run is the kernel's own cost per connection (both ends, system-wide).
pub fn read_slab_kb() -> Option<u64> {
    parse_kb(&fs::read_to_string("/proc/meminfo").ok()?, "Slab")
}

/// `Pss:` in kB from /proc/PID/smaps_rollup.
pub fn parse_smaps_rollup(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// utime + stime (ticks) from /proc/PID/stat. The command name may contain
/// spaces and parentheses, so fields are counted after the last `)`.
pub fn parse_stat_cpu(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// First field of /proc/PID/schedstat: ns spent on a CPU.
pub fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The `TCP:` line of /proc/net/sockstat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpSockstat {
    pub inuse: u64,
    pub orphan: u64,
    pub tw: u64,
    pub alloc: u64,
    /// Pages charged to TCP socket buffers, system-wide.
    pub mem_pages: u64,
}

pub fn parse_sockstat(text: &str) -> Option<TcpSockstat> {
    let line = text.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let mut s = TcpSockstat::default();
    let words: Vec<&str> = line.split_whitespace().collect();
    for pair in words.chunks(2) {
        let [key, value] = pair else { continue };
        let v: u64 = value.parse().ok()?;
        match *key {
            "inuse" => s.inuse = v,
            "orphan" => s.orphan = v,
            "tw" => s.tw = v,
            "alloc" => s.alloc = v,
            "mem" => s.mem_pages = v,
            _ => {}
        }
    }
    Some(s)
}

/// `TcpExt: ListenOverflows` from /proc/net/netstat: SYNs dropped because
/// some listener's accept queue was full (system-wide). Each one costs that
/// client a 1 s retransmit, so it explains a low connect rate.
pub fn parse_listen_overflows(text: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let keys = lines.next()?;
    let values = lines.next()?;
    let i = keys
        .split_whitespace()
        .position(|k| k == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

pub fn read_listen_overflows() -> Option<u64> {
    parse_listen_overflows(&fs::read_to_string("/proc/net/netstat").ok()?)
}

/// Inodes of sockets listening (state 0A) on `port` in /proc/net/tcp or
/// tcp6 text.
pub fn parse_listen_inodes(text: &str, port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retr uid timeout inode ...
        if f.len() < 10 || f[3] != "0A" {
            continue;
        }
        let Some((_, port_hex)) = f[1].rsplit_once(':') else {
            continue;
        };
        if u16::from_str_radix(port_hex, 16) != Ok(port) {
            continue;
        }
        if let Ok(inode) = f[9].parse::<u64>() {
            if inode != 0 {
                out.push(inode);
            }
        }
    }
    out
}

/// Parent PID (field 4) from /proc/PID/stat text.
pub fn parse_stat_ppid(text: &str) -> Option<u32> {
    let after = &text[text.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Picks the processes that serve connections among those holding a
/// listening socket, as `(pid, ppid)`: nginx's master and workers all hold
/// it, and the workers are children of another holder, so those are the
/// servers. Otherwise every holder: `ssed --workers N` has N workers each
/// listening on its own `SO_REUSEPORT` socket, and a supervisor that holds
/// only a bound, non-listening one. Sorted, no repeats.
pub fn choose_server_pids(holders: &[(u32, u32)]) -> Vec<u32> {
    let pids: Vec<u32> = holders.iter().map(|&(p, _)| p).collect();
    let mut out: Vec<u32> = holders
        .iter()
        .filter(|(_, ppid)| pids.contains(ppid))
        .map(|&(p, _)| p)
        .collect();
    if out.is_empty() {
        out = pids;
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Finds the processes listening on `ports` (best effort: needs permission
/// to read other processes' fd tables).
pub fn find_pids_by_ports(ports: &[u16]) -> Vec<u32> {
    let mut inodes = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(t) = fs::read_to_string(f) {
            for &port in ports {
                inodes.extend(parse_listen_inodes(&t, port));
            }
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut holders = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path())
                .map(|l| wanted.iter().any(|w| l == Path::new(w)))
                .unwrap_or(false)
        });
        if holds {
            let ppid = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| parse_stat_ppid(&t))
                .unwrap_or(0);
            holders.push((pid, ppid));
        }
    }
    choose_server_pids(&holders)
}

/// Samples memory, CPU and context switches of `pid`.
pub fn sample(pid: u32) -> Result<ProcSample, String> {
    let read = |f: &str| fs::read_to_string(format!("/proc/{pid}/{f}"));
    let status = read("status").map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let (rss_kb, voluntary_ctxt, nonvoluntary_ctxt) =
        parse_status(&status).ok_or_else(|| format!("/proc/{pid}/status: unexpected format"))?;
    let stat = read("stat").map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let cpu_ticks =
        parse_stat_cpu(&stat).ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    Ok(ProcSample {
        rss_kb,
        anon_kb: parse_kb(&status, "RssAnon").unwrap_or(0),
        pss_kb: read("smaps_rollup")
            .ok()
            .and_then(|t| parse_smaps_rollup(&t)),
        cpu_ticks,
        cpu_ns: read("schedstat").ok().and_then(|t| parse_schedstat(&t)),
        voluntary_ctxt,
        nonvoluntary_ctxt,
    })
}

pub fn read_sockstat() -> Option<TcpSockstat> {
    parse_sockstat(&fs::read_to_string("/proc/net/sockstat").ok()?)
}

/// Microseconds per clock tick of /proc/PID/stat times.
pub fn tick_us() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e6 / if hz > 0 { hz as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tssed\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t   12000 kB\n\
VmRSS:\t    4242 kB\nRssAnon:\t     900 kB\nThreads:\t1\n\
voluntary_ctxt_switches:\t17\nnonvoluntary_ctxt_switches:\t3\n";

    #[test]
    fn status() {
        assert_eq!(parse_status(STATUS), Some((4242, 17, 3)));
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn smaps_rollup() {
        let t = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:                5000 kB\nPss:                4096 kB\nPss_Anon:           1000 kB\n";
        assert_eq!(parse_smaps_rollup(t), Some(4096));
        assert_eq!(parse_smaps_rollup("Rss: 1 kB\n"), None);
    }

    #[test]
    fn stat_with_odd_comm() {
        // comm "(a b) c" contains spaces and a parenthesis.
        let t = "1234 ((a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 1 0 100 1000 250 18446744073709551615";
        assert_eq!(parse_stat_cpu(t), Some(325));
        assert_eq!(parse_stat_ppid(t), Some(1));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn schedstat() {
        assert_eq!(parse_schedstat("123456789 2345 67\n"), Some(123456789));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn sockstat() {
        let t = "sockets: used 320\nTCP: inuse 38004 orphan 0 tw 12 alloc 38010 mem 77\nUDP: inuse 2 mem 1\n";
        let s = parse_sockstat(t).unwrap();
        assert_eq!(s.inuse, 38004);
        assert_eq!(s.tw, 12);
        assert_eq!(s.alloc, 38010);
        assert_eq!(s.mem_pages, 77);
        assert_eq!(parse_sockstat("UDP: inuse 2\n"), None);
    }

    #[test]
    fn listen_overflows() {
        let t = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 258 260\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_listen_overflows(t), Some(258));
        assert_eq!(parse_listen_overflows("IpExt: a\nIpExt: 1\n"), None);
    }

    #[test]
    fn listen_inodes() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1F90 0200007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 20 4 30 10 -1\n\
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_listen_inodes(t, 8080), vec![123456]);
        assert_eq!(parse_listen_inodes(t, 80), vec![555]);
        assert!(parse_listen_inodes(t, 81).is_empty());
    }

    #[test]
    fn choose_pids() {
        // nginx: master 100 (parent 1) and workers 101, 102 (parent 100).
        assert_eq!(
            choose_server_pids(&[(100, 1), (102, 100), (101, 100)]),
            vec![101, 102]
        );
        assert_eq!(choose_server_pids(&[(7, 1)]), vec![7]);
        // ssed --workers 3: workers of a supervisor (50) that does not
        // listen; one worker holding two listeners appears twice.
        assert_eq!(
            choose_server_pids(&[(53, 50), (51, 50), (52, 50), (51, 50)]),
            vec![51, 52, 53]
        );
        assert!(choose_server_pids(&[]).is_empty());
    }

    #[test]
    fn kb_fields_and_sums() {
        assert_eq!(parse_kb(STATUS, "RssAnon"), Some(900));
        assert_eq!(parse_kb(STATUS, "VmRSS"), Some(4242));
        assert_eq!(parse_kb(STATUS, "Rss"), None);
        let meminfo = "MemTotal:       24576000 kB\nSlab:             123456 kB\nSReclaimable:      1000 kB\n";
        assert_eq!(parse_kb(meminfo, "Slab"), Some(123456));
        let a = ProcSample {
            rss_kb: 10,
            anon_kb: 4,
            pss_kb: Some(8),
            cpu_ticks: 1,
            cpu_ns: Some(100),
            voluntary_ctxt: 5,
            nonvoluntary_ctxt: 1,
        };
        let b = ProcSample { pss_kb: None, ..a };
        let s = ProcSample::sum(&[a, a]);
        assert_eq!((s.rss_kb, s.anon_kb, s.pss_kb), (20, 8, Some(16)));
        assert_eq!((s.cpu_ns, s.voluntary_ctxt), (Some(200), 10));
        assert_eq!(ProcSample::sum(&[a, b]).pss_kb, None);
        assert_eq!(
            ProcSample::sum(&[]),
            ProcSample {
                pss_kb: Some(0),
                cpu_ns: Some(0),
                ..Default::default()
            }
        );
    }

    #[test]
    fn sample_self() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kb > 0);
        assert!(tick_us() > 0.0);
    }
}
