//! Listening sockets built by hand (libc `socket`/`setsockopt`/`bind`/
//! `listen`), because `SO_REUSEPORT` must be set before `bind` and neither
//! std nor mio lets us in between. Used for `--reuse-port` listeners and
//! for the supervisor's port reservation; and the [`Acceptor`]: the
//! listening sockets and the accept state the driver keeps between turns
//! (listeners owed a batch, the descriptor-exhaustion pause).

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};

/// Binds a TCP socket on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`;
/// with `backlog`, also listens. Without it the socket only holds the port:
/// Linux hands connections to listening members of a reuse-port group only,
/// so a bound, non-listening socket reserves a port (port 0 resolved once)
/// for processes that listen on it later. The socket is close-on-exec and,
/// when listening, nonblocking.
pub fn bind_reuse_port(addr: SocketAddr, backlog: Option<libc::c_int>) -> io::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fcntl on our own fd.
    unsafe {
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt with a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let rc = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: an all-zero sockaddr_in is valid; fields set below.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: bind with a pointer to a sockaddr_in and its size.
            unsafe {
                libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            // SAFETY: an all-zero sockaddr_in6 is valid; fields set below.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = a.port().to_be();
            sa.sin6_flowinfo = a.flowinfo();
            sa.sin6_addr.s6_addr = a.ip().octets();
            sa.sin6_scope_id = a.scope_id();
            // SAFETY: bind with a pointer to a sockaddr_in6 and its size.
            unsafe {
                libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(backlog) = backlog {
        // SAFETY: listen and fcntl on our own bound socket.
        unsafe {
            if libc::listen(fd, backlog) < 0 {
                return Err(io::Error::last_os_error());
            }
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(TcpListener::from(owned))
}

/// The listening sockets and what accepting on them remembers between
/// loop turns: which listeners still had connections waiting when their
/// batch ran out, and the pause while descriptors are exhausted (logged
/// once per episode). The driver registers them, admits what they accept
/// and keeps the back-off timer; nothing here counts or admits.
#[derive(Debug, Default)]
pub struct Acceptor {
    listeners: Vec<mio::net::TcpListener>,
    /// Accepts wait for the back-off timer (descriptors exhausted).
    paused: bool,
    /// A descriptor-exhaustion episode has been logged.
    warned: bool,
    /// Listeners that still had connections waiting when their batch ran out.
    more: Vec<usize>,
}

/// What one accept on a listener gave.
#[derive(Debug)]
pub enum Accept {
    /// A connection.
    Conn(mio::net::TcpStream, SocketAddr),
    /// Nothing waiting (or no such listener).
    Idle,
    /// Interrupted: try again.
    Again,
    /// This one connection failed (`ECONNABORTED` and friends).
    Failed,
    /// Descriptors or buffers are exhausted: accepts are paused until
    /// [`Acceptor::resume`].
    Exhausted,
}

/// Whether an accept error means the process is out of descriptors or
/// memory (every listener would fail alike) rather than one connection's.
pub fn exhausted(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

impl Acceptor {
    /// Accepts on `listeners` (already registered by the driver).
    pub fn new(listeners: Vec<mio::net::TcpListener>) -> Acceptor {
        Acceptor {
            listeners,
            ..Acceptor::default()
        }
    }

    /// How many listeners there are.
    pub fn len(&self) -> usize {
        self.listeners.len()
    }

    /// Whether accepts wait for the back-off timer.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Whether some listener is owed another batch.
    pub fn owed(&self) -> bool {
        !self.more.is_empty()
    }

    /// Listener `i` used its batch and may have more waiting.
    pub fn owe(&mut self, i: usize) {
        if !self.more.contains(&i) {
            self.more.push(i);
        }
    }

    /// The listeners owed a batch (emptied).
    pub fn take_owed(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.more)
    }

    /// The back-off is over: accepts may run again.
    pub fn resume(&mut self) {
        self.paused = false;
    }

    /// One accept on listener `i`.
    pub fn accept(&mut self, i: usize) -> Accept {
        let Some(l) = self.listeners.get(i) else {
            return Accept::Idle;
        };
        match l.accept() {
            Ok((sock, addr)) => {
                if self.warned {
                    log::warn!("accepting again");
                    self.warned = false;
                }
                Accept::Conn(sock, addr)
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, e: &io::Error) -> Accept {
        match e.kind() {
            io::ErrorKind::WouldBlock => return Accept::Idle,
            io::ErrorKind::Interrupted => return Accept::Again,
            _ => {}
        }
        if !exhausted(e) {
            log::debug!("accept: {e}");
            return Accept::Failed;
        }
        // Once per episode: the back-off repeats until descriptors free up.
        if self.warned {
            log::debug!("accept: {e}; still pausing");
        } else {
            log::warn!("accept: {e}; pausing accepts until descriptors free up");
            self.warned = true;
        }
        self.paused = true;
        Accept::Exhausted
    }

    /// Stops listening (shutdown): every listener is deregistered and closed.
    pub fn close(&mut self, registry: &mio::Registry) {
        for l in &mut self.listeners {
            let _ = registry.deregister(l);
        }
        self.listeners.clear();
        self.more.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exhaustion pauses accepts and is logged once per episode; a
    /// connection's own failure does not pause; a listener owed a batch
    /// is listed once.
    #[test]
    fn exhaustion_pauses_until_resumed() {
        let mut a = Acceptor::default();
        assert!(matches!(a.accept(3), Accept::Idle), "no such listener");
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(exhausted(&emfile));
        assert!(!exhausted(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
        assert!(matches!(a.failed(&emfile), Accept::Exhausted));
        assert!(a.paused() && a.warned);
        assert!(matches!(a.failed(&emfile), Accept::Exhausted));
        a.resume();
        assert!(
            !a.paused() && a.warned,
            "the episode lasts until an accept works"
        );
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert!(matches!(a.failed(&aborted), Accept::Failed));
        assert!(!a.paused());
        let wb = io::Error::from(io::ErrorKind::WouldBlock);
        assert!(matches!(a.failed(&wb), Accept::Idle));
        let intr = io::Error::from(io::ErrorKind::Interrupted);
        assert!(matches!(a.failed(&intr), Accept::Again));
        a.owe(1);
        a.owe(0);
        a.owe(1);
        assert!(a.owed());
        assert_eq!(a.take_owed(), [1, 0]);
        assert!(!a.owed());
    }

    /// A real listener: a waiting connection is accepted and ends the
    /// exhaustion episode; then nothing is waiting.
    #[test]
    fn accepts_a_waiting_connection() {
        let l = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let mut a = Acceptor::new(vec![l]);
        a.warned = true;
        let c = std::net::TcpStream::connect(addr).unwrap();
        // On loopback the handshake is done when connect returns: the
        // connection is waiting.
        let got = match a.accept(0) {
            Accept::Conn(_, peer) => Some(peer),
            other => panic!("{other:?}"),
        };
        assert_eq!(got, Some(c.local_addr().unwrap()));
        assert!(!a.warned);
        assert!(matches!(a.accept(0), Accept::Idle));
        assert_eq!(a.len(), 1);
    }
}
