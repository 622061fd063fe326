//! Binding a server before it runs: the configuration checked, the users
//! file and the Redis address resolved once, the access rule built, the
//! listeners bound (with `SO_REUSEPORT` through `listen.rs`, or with a
//! raised backlog), the waker registered, the journal opened (`durable`)
//! and the SIGTERM/SIGINT handlers installed. What it returns, [`Bound`],
//! is `Send`; the driver is built from it on the loop's own thread
//! (`Bound::run` in `mod.rs`).
//!
//! Everything that can make a start fail is here, reported as a typed
//! [`Error`] before anything is served. It must not serve, read a socket
//! or start the loop.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use mio::net::TcpListener;
use mio::{Interest, Poll, Token, Waker};

use crate::apps::Apps;
use crate::config::Config;
use crate::error::Error;

use super::{bus, durable, listen, Shared};

/// The waker's token.
pub(super) const WAKER: Token = Token(usize::MAX);
/// Pending connections the kernel may queue per listener.
const LISTEN_BACKLOG: libc::c_int = 4096;

/// Listener `i`'s token (counted down below the waker's).
pub(super) fn listener_token(i: usize) -> Token {
    Token(usize::MAX - 1 - i)
}

/// Whether SIGTERM or SIGINT arrived (`--handle-signals`).
pub(super) fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// Set by the SIGTERM/SIGINT handler.
static SIGNALLED: AtomicBool = AtomicBool::new(false);
static SIGNAL_SHARED: std::sync::OnceLock<Arc<Shared>> = std::sync::OnceLock::new();

extern "C" fn on_signal(_sig: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
    // Waking is a write(2) on an eventfd: safe in a signal handler.
    if let Some(s) = SIGNAL_SHARED.get() {
        let _ = s.waker.wake();
    }
}

fn install_signal_handlers(shared: &Arc<Shared>) {
    let _ = SIGNAL_SHARED.set(shared.clone());
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only touches an atomic and an eventfd write.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    // SAFETY: ignoring SIGPIPE so a write to a closed socket is an error, not death.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// The open-file limit minus a reserve for listeners, logs and the poll fd.
fn default_max_connections() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    let cur = if ok { lim.rlim_cur } else { 1024 };
    (cur.min(1 << 24) as usize).saturating_sub(64).max(16)
}

/// A bound server not yet running: `Send`, so it can be bound on one
/// thread and run on another (the reactor, with its `Rc` frames, is built
/// by `run` on the loop's own thread).
pub(crate) struct Bound {
    pub(super) poll: Poll,
    pub(super) listeners: Vec<TcpListener>,
    pub addrs: Vec<SocketAddr>,
    pub shared: Arc<Shared>,
    pub(super) cfg: Config,
    /// `--max-connections`, or what the open-file limit allows.
    pub(super) max: usize,
    pub(super) users: Option<crate::apps::mongoose::Users>,
    pub(super) redis: Option<(crate::bus::RedisUrl, bus::Target)>,
    pub(super) journal: Option<durable::Opened>,
    pub(super) auth: crate::access::Access,
}

impl Bound {
    pub fn bind(cfg: Config) -> Result<Bound, Error> {
        // An embedder's Config skips `from_args`, which checks this too.
        cfg.check_features()?;
        let users = Apps::load_users(&cfg).map_err(Error::Users)?;
        let redis = match cfg.redis.as_deref() {
            Some(u) => {
                let url = u.parse::<crate::bus::RedisUrl>().map_err(Error::RedisUrl)?;
                // Once, here: a lookup on the loop at every reconnect would
                // stall every connection while the resolver waits.
                let target = bus::Target::resolve(&url.addr).map_err(Error::RedisHost)?;
                Some((url, target))
            }
            None => None,
        };
        let auth = crate::access::Access::from_config(&cfg).map_err(Error::Access)?;
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for (i, a) in cfg.listen.iter().enumerate() {
            let cannot = |source| Error::Listen { addr: *a, source };
            let mut l = if cfg.reuse_port {
                TcpListener::from_std(
                    listen::bind_reuse_port(*a, Some(LISTEN_BACKLOG)).map_err(cannot)?,
                )
            } else {
                let l = TcpListener::bind(*a).map_err(cannot)?;
                // mio listens with a backlog of 1024; a connect storm of
                // thousands of subscribers (a restart, a benchmark) would see
                // SYNs dropped and 1 s retransmits. Linux lets listen(2) be
                // called again to raise it (the kernel caps it at somaxconn).
                // SAFETY: listen on a socket we own.
                unsafe {
                    libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), LISTEN_BACKLOG);
                }
                l
            };
            poll.registry()
                .register(&mut l, listener_token(i), Interest::READABLE)?;
            let local = l.local_addr()?;
            if !local.ip().is_loopback() && cfg.publish_token.is_none() {
                log::warn!(
                    "listening on {local}, not a loopback address, without --publish-token: only plainly local requests may publish or delete; set --publish-token (or SSED_PUBLISH_TOKEN) to publish from elsewhere"
                );
            }
            addrs.push(local);
            listeners.push(l);
        }
        let max = if cfg.max_connections == 0 {
            default_max_connections()
        } else {
            cfg.max_connections
        };
        let shared = Arc::new(Shared {
            inbox: Mutex::new(VecDeque::new()),
            shutdown: AtomicBool::new(false),
            waker,
        });
        let s = shared.clone();
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let _ = s.waker.wake();
        });
        // A data directory that cannot be used is reported before anything
        // is served.
        let journal = durable::open(&cfg, wake)?;
        if cfg.handle_signals {
            install_signal_handlers(&shared);
        }
        Ok(Bound {
            journal,
            poll,
            listeners,
            addrs,
            shared,
            cfg,
            max,
            users,
            redis,
            auth,
        })
    }
}
