//! The `--workers N` supervisor: the `ssed` binary, asked for workers,
//! serves nothing itself. It reserves the listen addresses, starts N copies
//! of itself (the same command line minus `--workers`, plus `--reuse-port`
//! and the resolved `--listen` addresses), announces `listening on` once
//! every worker listens, restarts a worker that dies (with backoff, and
//! gives up on a crash loop), and on SIGTERM/SIGINT passes the signal on
//! and waits for every worker to drain.
//!
//! Port 0: the supervisor binds each address itself with `SO_REUSEPORT`
//! but never listens on it (`reactor::listen`), so the kernel resolves the
//! port once, every worker (a restarted one too) listens on that same
//! port, and the supervisor's socket never takes a connection.
//!
//! It must not serve, parse HTTP, or talk to Redis; its loop is one
//! `poll(2)` on a self-pipe (written by the signal handlers) and the
//! workers' stdout pipes. Unix only.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use crate::config::{without_flags, Config};
use crate::reactor::listen::bind_reuse_port;

/// First restart delay; doubles per quick failure in a row.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A worker that ran at least this long was healthy: its failure count resets.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Quick failures in a row of one worker before the supervisor gives up.
const MAX_QUICK_FAILURES: u32 = 5;
/// Time past `--shutdown-timeout` a worker gets to exit before SIGKILL.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Worker stdout kept while looking for its `listening on` lines.
const LINE_LIMIT: usize = 4096;
/// Environment twins the workers must not inherit: `SSED_WORKERS` would
/// make each worker a supervisor; the others are replaced by flags.
const WORKER_ENV_DROP: &[&str] = &["SSED_WORKERS", "SSED_LISTEN", "SSED_REUSE_PORT"];

/// Why the supervisor stopped with a failure.
#[derive(Debug)]
pub enum SuperviseError {
    /// A listen address could not be reserved.
    Reserve(SocketAddr, io::Error),
    /// The self-pipe, signal handlers or the executable path failed.
    Setup(io::Error),
    /// A worker could not be started.
    Spawn(io::Error),
    /// A worker exited before every worker listened (bad config, port taken).
    Startup {
        /// Worker number (1-based).
        worker: usize,
        /// How it exited.
        status: ExitStatus,
    },
    /// A worker kept dying soon after each start.
    CrashLoop {
        /// Worker number (1-based).
        worker: usize,
    },
    /// Some workers did not exit cleanly after the stop signal.
    Drain {
        /// How many.
        failed: usize,
    },
}

impl std::fmt::Display for SuperviseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SuperviseError::Reserve(a, e) => write!(f, "cannot listen on {a}: {e}"),
            SuperviseError::Setup(e) => write!(f, "supervisor setup failed: {e}"),
            SuperviseError::Spawn(e) => write!(f, "cannot start a worker: {e}"),
            SuperviseError::Startup { worker, status } => {
                write!(f, "worker {worker} failed to start ({})", describe(*status))
            }
            SuperviseError::CrashLoop { worker } => write!(
                f,
                "worker {worker} died {MAX_QUICK_FAILURES} times in a row within {}s of starting; giving up",
                HEALTHY_AFTER.as_secs()
            ),
            SuperviseError::Drain { failed } => {
                write!(f, "{failed} worker(s) did not drain cleanly")
            }
        }
    }
}

impl std::error::Error for SuperviseError {}

fn describe(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".to_string(),
    }
}

/// Write end of the self-pipe (-1 before setup).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
/// The stop signal received (0: none yet).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig != libc::SIGCHLD {
        STOP_SIGNAL.store(sig, Ordering::SeqCst);
    }
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; a full pipe already wakes us.
        unsafe {
            libc::write(fd, [1u8].as_ptr().cast(), 1);
        }
    }
}

fn set_flags(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The self-pipe's read end, with the handlers installed.
fn setup_signals() -> io::Result<libc::c_int> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe(2) writes two fds into the array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    set_flags(fds[0])?;
    set_flags(fds[1])?;
    WAKE_FD.store(fds[1], Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
        // SAFETY: the handler only touches atomics and write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: a closed stdout must be an error, not death.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    Ok(fds[0])
}

/// One worker position: the process in it, or when it comes back.
struct Slot {
    child: Option<Child>,
    stdout: Option<ChildStdout>,
    line: Vec<u8>,
    /// `listening on` lines seen from the current process.
    listening: usize,
    started: Instant,
    /// Quick failures in a row.
    failures: u32,
    restart_at: Option<Instant>,
}

struct Supervisor {
    exe: std::path::PathBuf,
    args: Vec<String>,
    listeners: usize,
    parent: libc::pid_t,
    slots: Vec<Slot>,
    announced: bool,
}

impl Supervisor {
    fn spawn(&mut self, i: usize) -> Result<(), SuperviseError> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for k in WORKER_ENV_DROP {
            cmd.env_remove(k);
        }
        let parent = self.parent;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // A supervisor killed outright must not leave workers
                // serving behind it: they get SIGTERM and drain.
                #[cfg(target_os = "linux")]
                {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                }
                let _ = parent;
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(SuperviseError::Spawn)?;
        let stdout = child.stdout.take();
        if let Some(s) = &stdout {
            set_flags(s.as_raw_fd()).map_err(SuperviseError::Spawn)?;
        }
        log::info!("worker {} started, pid {}", i + 1, child.id());
        let slot = &mut self.slots[i];
        slot.child = Some(child);
        slot.stdout = stdout;
        slot.line.clear();
        slot.listening = 0;
        slot.started = Instant::now();
        slot.restart_at = None;
        Ok(())
    }

    /// Reads a worker's stdout until it would block; true once it has
    /// printed a `listening on` line per address.
    fn read_stdout(&mut self, i: usize) -> bool {
        let slot = &mut self.slots[i];
        let Some(out) = slot.stdout.as_mut() else {
            return false;
        };
        let mut buf = [0u8; 1024];
        loop {
            match out.read(&mut buf) {
                Ok(0) => {
                    slot.stdout = None;
                    break;
                }
                Ok(n) => {
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            if slot.line.starts_with(b"listening on ") {
                                slot.listening += 1;
                            }
                            slot.line.clear();
                        } else if slot.line.len() < LINE_LIMIT {
                            slot.line.push(b);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        slot.listening >= self.listeners
    }

    /// Signals every live worker.
    fn signal_all(&self, sig: libc::c_int) {
        for s in &self.slots {
            if let Some(c) = &s.child {
                // SAFETY: kill(2) on a child we have not reaped yet, so the
                // pid cannot have been reused.
                unsafe {
                    libc::kill(c.id() as libc::pid_t, sig);
                }
            }
        }
    }
}

/// Runs the supervisor for `cfg` (parsed from `args`, the command line
/// after the program name) until every worker has exited after a stop
/// signal. Prints `listening on http://ADDR` lines to stdout once every
/// worker listens.
pub fn supervise(cfg: &Config, args: &[String]) -> Result<(), SuperviseError> {
    let mut reserved = Vec::new();
    let mut addrs = Vec::new();
    for a in &cfg.listen {
        let l = bind_reuse_port(*a, None).map_err(|e| SuperviseError::Reserve(*a, e))?;
        addrs.push(l.local_addr().map_err(|e| SuperviseError::Reserve(*a, e))?);
        reserved.push(l);
    }
    let mut wargs = without_flags(args, &["workers", "listen", "reuse-port"]);
    for a in &addrs {
        wargs.push("--listen".into());
        wargs.push(a.to_string());
    }
    wargs.push("--reuse-port".into());
    let wake = setup_signals().map_err(SuperviseError::Setup)?;
    let mut sup = Supervisor {
        exe: std::env::current_exe().map_err(SuperviseError::Setup)?,
        args: wargs,
        listeners: addrs.len(),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        slots: (0..cfg.workers)
            .map(|_| Slot {
                child: None,
                stdout: None,
                line: Vec::new(),
                listening: 0,
                started: Instant::now(),
                failures: 0,
                restart_at: None,
            })
            .collect(),
        announced: false,
    };
    let result = run(&mut sup, cfg, wake, &addrs);
    drop(reserved);
    result
}

fn run(
    sup: &mut Supervisor,
    cfg: &Config,
    wake: libc::c_int,
    addrs: &[SocketAddr],
) -> Result<(), SuperviseError> {
    for i in 0..sup.slots.len() {
        if let Err(e) = sup.spawn(i) {
            sup.signal_all(libc::SIGKILL);
            return Err(e);
        }
    }
    // Set once stopping: the deadline for workers to exit, and the error
    // to report afterwards (a crash loop also stops everything).
    let mut stop: Option<(Instant, Option<SuperviseError>)> = None;
    let mut failed = 0usize;
    loop {
        if STOP_SIGNAL.load(Ordering::SeqCst) != 0 && stop.is_none() {
            let sig = STOP_SIGNAL.load(Ordering::SeqCst);
            log::info!("signal {sig}: stopping {} workers", sup.slots.len());
            sup.signal_all(sig);
            stop = Some((Instant::now() + cfg.shutdown_timeout + DRAIN_GRACE, None));
        }
        let now = Instant::now();
        if let Some((deadline, _)) = &mut stop {
            if now >= *deadline {
                log::warn!("workers still running after the drain deadline: killing them");
                sup.signal_all(libc::SIGKILL);
                // SIGKILL cannot be ignored; the next wake-up is their SIGCHLD.
                *deadline = now + DRAIN_GRACE;
            }
        }
        // Reap.
        for i in 0..sup.slots.len() {
            sup.read_stdout(i);
            let Some(child) = sup.slots[i].child.as_mut() else {
                continue;
            };
            let status = match child.try_wait() {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    log::warn!("waiting for worker {}: {e}", i + 1);
                    continue;
                }
            };
            let pid = child.id();
            sup.read_stdout(i);
            let slot = &mut sup.slots[i];
            slot.child = None;
            slot.stdout = None;
            if stop.is_some() {
                if !status.success() {
                    log::warn!("worker {} (pid {pid}) stopped: {}", i + 1, describe(status));
                    failed += 1;
                }
                continue;
            }
            if !sup.announced {
                // Died before the pool was up: a bad config or a taken
                // port, not a crash to retry.
                sup.signal_all(libc::SIGTERM);
                stop = Some((
                    now + cfg.shutdown_timeout + DRAIN_GRACE,
                    Some(SuperviseError::Startup {
                        worker: i + 1,
                        status,
                    }),
                ));
                continue;
            }
            slot.failures = if now.duration_since(slot.started) >= HEALTHY_AFTER {
                1
            } else {
                slot.failures + 1
            };
            if slot.failures >= MAX_QUICK_FAILURES {
                log::error!("worker {} is crash-looping; stopping all workers", i + 1);
                sup.signal_all(libc::SIGTERM);
                stop = Some((
                    now + cfg.shutdown_timeout + DRAIN_GRACE,
                    Some(SuperviseError::CrashLoop { worker: i + 1 }),
                ));
                continue;
            }
            let delay = BACKOFF_FIRST
                .saturating_mul(1 << (slot.failures - 1).min(16))
                .min(BACKOFF_MAX);
            log::warn!(
                "worker {} (pid {pid}) died ({}); restarting in {} ms",
                i + 1,
                describe(status),
                delay.as_millis()
            );
            slot.restart_at = Some(now + delay);
        }
        if let Some((_, err)) = &mut stop {
            if sup.slots.iter().all(|s| s.child.is_none()) {
                if let Some(e) = err.take() {
                    return Err(e);
                }
                return if failed == 0 {
                    log::info!("all workers drained");
                    Ok(())
                } else {
                    Err(SuperviseError::Drain { failed })
                };
            }
        } else {
            for i in 0..sup.slots.len() {
                if sup.slots[i].restart_at.is_some_and(|t| t <= now) {
                    if let Err(e) = sup.spawn(i) {
                        // Retry later rather than stop the healthy workers.
                        log::error!("restarting worker {}: {e}", i + 1);
                        sup.slots[i].restart_at = Some(now + BACKOFF_MAX);
                    }
                }
            }
        }
        // Every worker, not the first: the kernel spreads connections over
        // the listeners that exist, so a client that starts at the
        // announcement would otherwise pile onto the first few of 60 workers
        // (and past their open-file limit).
        if !sup.announced && sup.slots.iter().all(|s| s.listening >= sup.listeners) {
            sup.announced = true;
            let mut out = io::stdout().lock();
            for a in addrs {
                let _ = writeln!(out, "listening on http://{a}");
            }
            let _ = out.flush();
        }
        wait(sup, wake, stop.as_ref().map(|(d, _)| *d));
    }
}

/// Sleeps in poll(2) until a signal, worker output, a restart or the
/// drain deadline; then empties the self-pipe.
fn wait(sup: &Supervisor, wake: libc::c_int, deadline: Option<Instant>) {
    let now = Instant::now();
    let next = sup
        .slots
        .iter()
        .filter_map(|s| s.restart_at)
        .chain(deadline)
        .min();
    let timeout_ms = match next {
        // Round up so a wake-up is never a hair early and spins.
        Some(t) => t.saturating_duration_since(now).as_millis().min(60_000) as libc::c_int + 1,
        None => -1,
    };
    let mut fds = vec![libc::pollfd {
        fd: wake,
        events: libc::POLLIN,
        revents: 0,
    }];
    for s in &sup.slots {
        if let Some(o) = &s.stdout {
            fds.push(libc::pollfd {
                fd: o.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
    }
    // SAFETY: poll(2) on a live array of pollfds of the given length.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms);
    }
    let mut buf = [0u8; 64];
    // SAFETY: read(2) into a local buffer from our nonblocking pipe.
    while unsafe { libc::read(wake, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}
