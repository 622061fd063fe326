//! The parent's side of the workers: spawning them (this same executable,
//! subcommand `worker`), collecting their JSON lines, stopping them.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::args::LoadOpts;
use crate::stats::Histogram;

pub struct Fleet {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    lines: Receiver<(usize, Value)>,
    /// Reports received so far, by worker, kept across waits: a wait that
    /// times out must not lose the reports that did arrive, since those
    /// workers will not send them again.
    ready: Vec<Option<Value>>,
    done: Vec<Option<Value>>,
}

/// Sum of the workers' `ready` reports.
#[derive(Debug, Default)]
pub struct Ready {
    pub ok: u64,
    pub failed: u64,
    pub unanswered: u64,
    /// From the first worker's first connect to the last worker's last head.
    pub secs: f64,
    pub first_error: Option<String>,
}

/// Sum of the workers' `done` reports.
#[derive(Debug, Default)]
pub struct Done {
    pub events: u64,
    pub bytes: u64,
    pub server_closed: u64,
    pub open: u64,
    pub min_events: Option<u64>,
    pub max_events: Option<u64>,
    pub last_event_ns: u64,
    pub latency: Histogram,
    pub first_error: Option<String>,
}

impl Fleet {
    /// Starts ceil(n / per_worker) workers holding `n` subscriptions between
    /// them. `expect` > 0 makes each finish on its own once every stream has
    /// that many events; `lifetime` bounds each worker whatever happens.
    pub fn spawn(o: &LoadOpts, expect: u64, lifetime: Duration) -> Result<Fleet, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let workers = o.n.div_ceil(o.per_worker);
        let chunk = o.n.div_ceil(workers);
        let urls: Vec<String> = o
            .urls
            .iter()
            .flat_map(|u| {
                [
                    "--url".to_string(),
                    format!("http://{}{}", u.host_header, u.path_query),
                ]
            })
            .chain(
                o.headers
                    .iter()
                    .flat_map(|h| ["--header".to_string(), h.clone()]),
            )
            .collect();
        let (tx, lines) = channel();
        let mut fleet = Fleet {
            children: Vec::new(),
            stdins: Vec::new(),
            lines,
            ready: vec![None; workers],
            done: vec![None; workers],
        };
        for w in 0..workers {
            let start = w * chunk;
            let count = chunk.min(o.n - start);
            let mut child = Command::new(&exe)
                .arg("worker")
                .args(&urls)
                .args(["--start", &start.to_string()])
                .args(["--count", &count.to_string()])
                .args(["--per-source", &o.per_source.to_string()])
                .args(["--inflight", &o.inflight.to_string()])
                .args(["--expect", &expect.to_string()])
                .args(["--timeout", &o.ready_timeout.as_secs_f64().to_string()])
                .args(["--lifetime", &lifetime.as_secs_f64().to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("spawn worker: {e}"))?;
            let stdout = child.stdout.take().ok_or("worker stdout")?;
            fleet.stdins.push(child.stdin.take());
            fleet.children.push(child);
            let tx = tx.clone();
            // One reader thread per worker, so the parent can wait on all
            // of them with one timeout.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<Value>(&line) {
                        Ok(v) => {
                            if tx.send((w, v)).is_err() {
                                break;
                            }
                        }
                        Err(_) => eprintln!("ssed-bench: worker {w} said {line:?}"),
                    }
                }
            });
        }
        Ok(fleet)
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Waits until every worker has sent its `ready` (or, with `done`, its
    /// `done`) report, or fails at `deadline`.
    fn collect(&mut self, done: bool, deadline: Instant) -> Result<Vec<Value>, String> {
        let kind = if done { "done" } else { "ready" };
        loop {
            let got = if done { &self.done } else { &self.ready };
            let missing = got.iter().filter(|g| g.is_none()).count();
            if missing == 0 {
                return Ok(got.iter().flatten().cloned().collect());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((w, v)) if v["type"] == "ready" => self.ready[w] = Some(v),
                Ok((w, v)) if v["type"] == "done" => self.done[w] = Some(v),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{missing} of {} workers did not report {kind} in time",
                        self.len()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("workers exited before reporting {kind}"))
                }
            }
        }
    }

    pub fn wait_ready(&mut self, deadline: Instant) -> Result<Ready, String> {
        let msgs = self.collect(false, deadline)?;
        let mut r = Ready::default();
        let mut t0 = u64::MAX;
        let mut t1 = 0;
        for m in &msgs {
            r.ok += m["ok"].as_u64().unwrap_or(0);
            r.failed += m["failed"].as_u64().unwrap_or(0);
            r.unanswered += m["unanswered"].as_u64().unwrap_or(0);
            t0 = t0.min(m["t_start_ns"].as_u64().unwrap_or(u64::MAX));
            t1 = t1.max(m["t_ready_ns"].as_u64().unwrap_or(0));
            if r.first_error.is_none() {
                r.first_error = m["first_error"].as_str().map(String::from);
            }
        }
        r.secs = t1.saturating_sub(t0) as f64 / 1e9;
        Ok(r)
    }

    /// Tells every worker to report and exit.
    pub fn stop(&mut self) {
        for s in &mut self.stdins {
            if let Some(mut stdin) = s.take() {
                let _ = stdin.write_all(b"stop\n");
                // Dropping closes the pipe: EOF also means stop.
            }
        }
    }

    pub fn wait_done(&mut self, deadline: Instant) -> Result<Done, String> {
        let msgs = self.collect(true, deadline)?;
        let mut d = Done::default();
        for m in &msgs {
            d.events += m["events"].as_u64().unwrap_or(0);
            d.bytes += m["bytes"].as_u64().unwrap_or(0);
            d.server_closed += m["server_closed"].as_u64().unwrap_or(0);
            d.open += m["open"].as_u64().unwrap_or(0);
            if let Some(v) = m["min_events"].as_u64() {
                d.min_events = Some(d.min_events.map_or(v, |x| x.min(v)));
            }
            if let Some(v) = m["max_events"].as_u64() {
                d.max_events = Some(d.max_events.map_or(v, |x| x.max(v)));
            }
            d.last_event_ns = d
                .last_event_ns
                .max(m["last_event_ns"].as_u64().unwrap_or(0));
            d.latency.merge(&Histogram::from_json(&m["latency"])?);
            if d.first_error.is_none() {
                d.first_error = m["first_error"].as_str().map(String::from);
            }
        }
        Ok(d)
    }

    /// Stops the workers, collects their final reports (bounded wait), and
    /// reaps them.
    pub fn finish(mut self, wait: Duration) -> Result<Done, String> {
        self.stop();
        self.wait_done(Instant::now() + wait)
        // Drop reaps.
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
        // Give them a moment to exit on their own, then end the ones that
        // did not: these are our own children, addressed by their handles.
        let until = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}
