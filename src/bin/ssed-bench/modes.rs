//! The four measurements: density, fanout, churn, idle.
//!
//! Each resolves the server PID, samples /proc before and after the load,
//! and returns a `Report`. Every wait is bounded by a deadline, and every
//! loop by a count and a time.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::args::{ChurnOpts, DensityOpts, FanoutOpts, IdleOpts, Url};
use crate::fleet::Fleet;
use crate::net;
use crate::now_ns;
use crate::procfs::{self, ProcSample};
use crate::report::{round2, Report};
use crate::sse::{payload, scan_head, Head};
use crate::stats::{per_conn_bytes, rate};

/// How long a finished worker may take to send its last report.
const REPORT_WAIT: Duration = Duration::from_secs(30);

/// A run in which no subscription got its `200` measured nothing: an
/// error, not a report of zeros.
fn no_subscriber(ready: &crate::fleet::Ready) -> Result<(), String> {
    if ready.ok > 0 {
        return Ok(());
    }
    Err(format!(
        "no subscription succeeded: {}",
        ready.first_error.as_deref().unwrap_or("no error recorded")
    ))
}

/// `--pid`, or the process listening on the URL's port.
fn resolve_pid(pid: Option<u32>, url: &Url) -> Option<u32> {
    let pid = pid.or_else(|| {
        procfs::find_pids_by_ports(&[url.addr.port()])
            .first()
            .copied()
    });
    if pid.is_none() {
        eprintln!(
            "ssed-bench: server PID not found for port {} (pass --pid); server figures omitted",
            url.addr.port()
        );
    }
    pid
}

/// `--pid` list, or every process serving the URLs' ports: all workers of
/// `ssed --workers N`, whose figures are summed.
fn resolve_pids(pids: &[u32], urls: &[Url]) -> Vec<u32> {
    if !pids.is_empty() {
        return pids.to_vec();
    }
    let mut ports: Vec<u16> = urls.iter().map(|u| u.addr.port()).collect();
    ports.dedup();
    let found = procfs::find_pids_by_ports(&ports);
    if found.is_empty() {
        eprintln!(
            "ssed-bench: server PID not found for ports {ports:?} (pass --pid); server figures omitted"
        );
    }
    found
}

fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let pid = pid?;
    match procfs::sample(pid) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("ssed-bench: {e}");
            None
        }
    }
}

/// The sum over `pids`; `None` if there are none or any cannot be read (a
/// worker that died mid-run makes the sum meaningless).
fn sample_all(pids: &[u32]) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    let samples: Option<Vec<ProcSample>> = pids.iter().map(|&p| sample(Some(p))).collect();
    Some(ProcSample::sum(&samples?))
}

/// `server_pid` as a report value: the one PID, or the list.
fn pid_value(pids: &[u32]) -> serde_json::Value {
    match pids {
        [] => serde_json::Value::Null,
        [one] => (*one).into(),
        many => many.to_vec().into(),
    }
}

/// Server CPU time between two samples in µs: schedstat (ns) when both
/// have it, else clock ticks.
fn cpu_us(a: &ProcSample, b: &ProcSample) -> f64 {
    match (a.cpu_ns, b.cpu_ns) {
        (Some(x), Some(y)) => y.saturating_sub(x) as f64 / 1e3,
        _ => b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 * procfs::tick_us(),
    }
}

fn title(url: &Url, pid: Option<u32>) -> String {
    let pid = pid.map_or("unknown".to_string(), |p| p.to_string());
    format!(
        "http://{}{} (server pid {pid})",
        url.host_header, url.path_query
    )
}

fn title_all(urls: &[Url], pids: &[u32]) -> String {
    let more = match urls.len() {
        1 => String::new(),
        n => format!(" and {} more URLs", n - 1),
    };
    let pids = match pids {
        [] => "server pid unknown".to_string(),
        [one] => format!("server pid {one}"),
        many => format!("{} server processes", many.len()),
    };
    format!(
        "http://{}{}{more} ({pids})",
        urls[0].host_header, urls[0].path_query
    )
}

pub fn density(o: &DensityOpts) -> Result<Report, String> {
    let pids = resolve_pids(&o.pids, &o.load.urls);
    let before = sample_all(&pids);
    let sock_before = procfs::read_sockstat();
    let slab_before = procfs::read_slab_kb();
    let overflows_before = procfs::read_listen_overflows();

    let lifetime = o.load.ready_timeout + o.settle + Duration::from_secs(120);
    let mut fleet = Fleet::spawn(&o.load, 0, lifetime)?;
    let ready = fleet.wait_ready(Instant::now() + o.load.ready_timeout + REPORT_WAIT)?;
    no_subscriber(&ready)?;
    let overflows_after = procfs::read_listen_overflows();
    std::thread::sleep(o.settle);
    let after = sample_all(&pids);
    let sock_after = procfs::read_sockstat();
    let slab_after = procfs::read_slab_kb();
    let workers = fleet.len();
    let done = fleet.finish(REPORT_WAIT)?;

    let n = ready.ok;
    let mut r = Report::new("density", title_all(&o.load.urls, &pids));
    r.add("server_pid", pid_value(&pids), "");
    r.add("server_processes", pids.len() as u64, "");
    r.add("requested", o.load.n as u64, "");
    r.add("connections", n, "");
    r.add("failed", ready.failed, "");
    r.add("unanswered", ready.unanswered, "");
    r.add("workers", workers as u64, "client processes");
    r.add("targets", o.load.urls.len() as u64, "URLs");
    r.add("connect_secs", round2(Some(ready.secs)), "s");
    r.add("connect_rate", round2(rate(n, ready.secs)), "conns/s");
    r.add(
        "listen_overflows",
        overflows_before
            .zip(overflows_after)
            .map(|(b, a)| a.saturating_sub(b)),
        "SYNs dropped (system-wide)",
    );
    r.add("closed_by_server", done.server_closed, "");
    let (b, a) = (before.unwrap_or_default(), after.unwrap_or_default());
    let have = before.is_some() && after.is_some();
    r.add("rss_before_kb", have.then_some(b.rss_kb), "kB");
    r.add("rss_after_kb", have.then_some(a.rss_kb), "kB");
    r.add(
        "rss_per_conn",
        round2(
            have.then(|| per_conn_bytes(b.rss_kb, a.rss_kb, n))
                .flatten(),
        ),
        "B",
    );
    r.add("anon_before_kb", have.then_some(b.anon_kb), "kB");
    r.add("anon_after_kb", have.then_some(a.anon_kb), "kB");
    r.add(
        "anon_per_conn",
        round2(
            have.then(|| per_conn_bytes(b.anon_kb, a.anon_kb, n))
                .flatten(),
        ),
        "B",
    );
    let pss = match (b.pss_kb, a.pss_kb) {
        (Some(x), Some(y)) if have => per_conn_bytes(x, y, n),
        _ => None,
    };
    r.add("pss_before_kb", b.pss_kb.filter(|_| have), "kB");
    r.add("pss_after_kb", a.pss_kb.filter(|_| have), "kB");
    r.add("pss_per_conn", round2(pss), "B");
    // System-wide and both ends of every connection: reported apart from
    // the server's own memory.
    match (sock_before, sock_after) {
        (Some(x), Some(y)) => {
            r.add("tcp_mem_pages_before", x.mem_pages, "pages");
            r.add("tcp_mem_pages_after", y.mem_pages, "pages");
            r.add(
                "tcp_mem_per_conn",
                round2(
                    (n > 0).then(|| (y.mem_pages as f64 - x.mem_pages as f64) * 4096.0 / n as f64),
                ),
                "B (both ends)",
            );
            r.add(
                "tcp_inuse_delta",
                y.inuse as i64 - x.inuse as i64,
                "sockets",
            );
        }
        _ => r.add("tcp_mem_per_conn", round2(None), "B"),
    }
    let slab = slab_before.zip(slab_after);
    r.add("slab_before_kb", slab.map(|(b, _)| b), "kB");
    r.add("slab_after_kb", slab.map(|(_, a)| a), "kB");
    r.add(
        "slab_per_conn",
        round2(slab.and_then(|(b, a)| (n > 0).then(|| (a as f64 - b as f64) * 1024.0 / n as f64))),
        "B (both ends, system-wide)",
    );
    if let Some(e) = ready.first_error.or(done.first_error) {
        r.add("first_error", e, "");
    }
    Ok(r)
}

pub fn fanout(o: &FanoutOpts) -> Result<Report, String> {
    let pids = resolve_pids(&o.pids, &o.load.urls);
    let lifetime = o.load.ready_timeout + o.max_time + Duration::from_secs(60);
    let mut fleet = Fleet::spawn(&o.load, o.m, lifetime)?;
    let ready = fleet.wait_ready(Instant::now() + o.load.ready_timeout + REPORT_WAIT)?;
    no_subscriber(&ready)?;

    let mut publisher = net::Publisher::connect(&o.publish, Duration::from_secs(10))
        .map_err(|e| format!("publisher connect: {e}"))?;
    let before = sample_all(&pids);
    let t0 = now_ns();
    let started = Instant::now();
    let deadline = started + o.max_time;
    let mut published = 0u64;
    let mut rejected = 0u64;
    let mut first_subscribers = None;
    let mut last_subscribers = None;
    let mut publish_error = None;
    for i in 0..o.m {
        if Instant::now() >= deadline {
            break;
        }
        if let Some(r) = o.rate {
            // Pace by schedule, not by sleeping a fixed gap, so slow
            // replies do not lower the rate further.
            let due = started + Duration::from_secs_f64(i as f64 / r);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        match publisher.publish(&payload(now_ns(), o.size)) {
            Ok(rep) if (200..300).contains(&rep.status) => {
                published += 1;
                first_subscribers = first_subscribers.or(rep.subscribers);
                last_subscribers = rep.subscribers.or(last_subscribers);
            }
            Ok(rep) => {
                rejected += 1;
                publish_error.get_or_insert(format!("publish answered {}", rep.status));
            }
            Err(e) => {
                publish_error = Some(format!("publish: {e}"));
                break;
            }
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();

    // Workers finish by themselves once every stream has M events; past
    // the deadline they are told to stop and report what they have.
    let wait_until = deadline.max(Instant::now() + Duration::from_secs(1));
    let done = match fleet.wait_done(wait_until) {
        Ok(d) => d,
        Err(_) => fleet.finish(REPORT_WAIT)?,
    };
    let after = sample_all(&pids);

    let n = ready.ok;
    let expected = n * published;
    let deliver_secs = done.last_event_ns.saturating_sub(t0) as f64 / 1e9;
    let mut r = Report::new("fanout", title_all(&o.load.urls, &pids));
    r.add("server_pid", pid_value(&pids), "");
    r.add("server_processes", pids.len() as u64, "");
    r.add("connect_secs", round2(Some(ready.secs)), "s");
    r.add("subscribers", n, "");
    r.add("failed", ready.failed, "");
    r.add("events_published", published, "");
    r.add("publish_rejected", rejected, "");
    r.add("event_bytes", o.size as u64, "B");
    r.add(
        "publish_rate",
        round2(rate(published, publish_secs)),
        "events/s",
    );
    r.add("reply_subscribers_first", first_subscribers, "");
    r.add("reply_subscribers_last", last_subscribers, "");
    r.add("delivered", done.events, "");
    r.add("expected", expected, "");
    r.add("min_per_sub", done.min_events, "");
    r.add("closed_by_server", done.server_closed, "");
    r.add("deliver_secs", round2(Some(deliver_secs)), "s");
    r.add(
        "delivered_per_s",
        round2(rate(done.events, deliver_secs)),
        "events/s",
    );
    let us = |v: Option<u64>| round2(v.map(|ns| ns as f64 / 1e3));
    r.add("latency_p50_us", us(done.latency.percentile(50.0)), "µs");
    r.add("latency_p99_us", us(done.latency.percentile(99.0)), "µs");
    r.add(
        "latency_max_us",
        us((done.latency.total() > 0).then(|| done.latency.max())),
        "µs",
    );
    let cpu = match (before, after) {
        (Some(b), Some(a)) => Some(cpu_us(&b, &a)),
        _ => None,
    };
    r.add("server_cpu_ms", round2(cpu.map(|c| c / 1e3)), "ms");
    r.add(
        "server_cpu_us_per_event",
        round2(
            cpu.filter(|_| done.events > 0)
                .map(|c| c / done.events as f64),
        ),
        "µs",
    );
    if let Some(e) = publish_error.or(ready.first_error).or(done.first_error) {
        r.add("first_error", e, "");
    }
    Ok(r)
}

/// One connect → subscribe → first bytes → close cycle.
fn churn_once(url: &Url, src: std::net::Ipv4Addr, req: &[u8]) -> Result<(), String> {
    let mut s = net::connect_from(src, url.addr, false, Duration::from_secs(5))
        .map_err(|e| format!("connect from {src}: {e}"))?;
    s.write_all(req).map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the response head".into());
        }
        head.extend_from_slice(&buf[..n]);
        match scan_head(&head) {
            Head::Partial if head.len() > 16 * 1024 => return Err("head too long".into()),
            Head::Partial => {}
            Head::Ok(..) => return Ok(()),
            Head::Refused(line) => return Err(format!("server answered {line:?}")),
        }
    }
}

pub fn churn(o: &ChurnOpts) -> Result<Report, String> {
    let pid = resolve_pid(o.pid, &o.url);
    let before = sample(pid);
    let req = net::subscribe_request(&o.url, &[]);
    let started = Instant::now();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut first_error = None;
    let mut i = 0u64;
    while i < o.cycles && started.elapsed() < o.max_time {
        // Each close leaves a TIME_WAIT on our side; rotating the source
        // address keeps a long run clear of port exhaustion.
        let src = net::source_addr(i as usize, o.per_source);
        match churn_once(&o.url, src, &req) {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        i += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    // Let the server notice the last closes before sampling it.
    std::thread::sleep(Duration::from_millis(500));
    let after = sample(pid);

    let mut r = Report::new("churn", title(&o.url, pid));
    r.add("server_pid", pid, "");
    r.add("cycles", ok, "");
    r.add("failed", failed, "");
    r.add("secs", round2(Some(secs)), "s");
    r.add("cycles_per_s", round2(rate(ok, secs)), "cycles/s");
    r.add("rss_before_kb", before.map(|s| s.rss_kb), "kB");
    r.add("rss_after_kb", after.map(|s| s.rss_kb), "kB");
    r.add(
        "rss_growth_kb",
        match (before, after) {
            (Some(b), Some(a)) => Some(a.rss_kb as i64 - b.rss_kb as i64),
            _ => None,
        },
        "kB",
    );
    if let Some(e) = first_error {
        r.add("first_error", e, "");
    }
    Ok(r)
}

pub fn idle(o: &IdleOpts) -> Result<Report, String> {
    let pids = resolve_pids(&o.pids, &o.load.urls);
    // Before any connection, for the bytes each idle subscriber costs.
    let empty = sample_all(&pids);
    let lifetime = o.load.ready_timeout + o.seconds + Duration::from_secs(120);
    let mut fleet = Fleet::spawn(&o.load, 0, lifetime)?;
    let ready = fleet.wait_ready(Instant::now() + o.load.ready_timeout + REPORT_WAIT)?;
    no_subscriber(&ready)?;
    // The accept burst is not idleness: let it finish first.
    std::thread::sleep(Duration::from_millis(500));
    let before = sample_all(&pids);
    let started = Instant::now();
    std::thread::sleep(o.seconds);
    let secs = started.elapsed().as_secs_f64();
    let after = sample_all(&pids);
    let done = fleet.finish(REPORT_WAIT)?;

    let mut r = Report::new("idle", title_all(&o.load.urls, &pids));
    r.add("server_pid", pid_value(&pids), "");
    r.add("server_processes", pids.len() as u64, "");
    r.add("subscribers", ready.ok, "");
    r.add("connect_secs", round2(Some(ready.secs)), "s");
    r.add("failed", ready.failed, "");
    r.add("secs", round2(Some(secs)), "s");
    r.add("events_received", done.events, "");
    match (before, after) {
        (Some(b), Some(a)) => {
            let vol = a.voluntary_ctxt.saturating_sub(b.voluntary_ctxt);
            let invol = a.nonvoluntary_ctxt.saturating_sub(b.nonvoluntary_ctxt);
            r.add("voluntary_ctxt_switches", vol, "");
            r.add("nonvoluntary_ctxt_switches", invol, "");
            r.add("wakeups_per_s", round2(rate(vol + invol, secs)), "/s");
            let cpu_ms = cpu_us(&b, &a) / 1e3;
            r.add("server_cpu_ms", round2(Some(cpu_ms)), "ms");
            r.add(
                "server_cpu_ms_per_s",
                round2((secs > 0.0).then(|| cpu_ms / secs)),
                "ms/s",
            );
            r.add("rss_kb", a.rss_kb, "kB");
            let n = ready.ok;
            let per = |e: Option<u64>, x: Option<u64>| match (e, x) {
                (Some(e), Some(x)) => round2(per_conn_bytes(e, x, n)),
                _ => round2(None),
            };
            let e = empty.as_ref();
            r.add(
                "rss_per_conn",
                per(e.map(|e| e.rss_kb), Some(a.rss_kb)),
                "B",
            );
            r.add("pss_per_conn", per(e.and_then(|e| e.pss_kb), a.pss_kb), "B");
        }
        _ => {
            r.add("wakeups_per_s", round2(None), "/s");
            r.add("server_cpu_ms", round2(None), "ms");
        }
    }
    Ok(r)
}
