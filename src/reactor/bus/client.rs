//! One nonblocking Redis connection (TCP or Unix) driven by readiness:
//! connect-in-progress detection, a write buffer, and a bounded read
//! buffer decoded into RESP values, with a FIFO of what each expected
//! reply answers and by when.
//!
//! Owns the socket and its buffers. It must not block (the host name is
//! looked up once, at start-up, by [`Target::resolve`]; connects take the
//! stored address), interpret replies (that is `bus.rs`), or hold more
//! unread input than `max_reply` bytes.
//!
//! TCP connections carry kernel keepalive ([`keepalive`]): an idle bus
//! sends nothing and wakes for nothing, yet a peer that vanished (host
//! down, link cut) turns into a socket error within a bound, which the
//! reactor sees as readiness.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

use crate::bus::resp::{encode_command, Decoder, Value};
use crate::bus::script::PublishArgs;
use crate::bus::url::RedisAddr;
use crate::bus::BusError;

const CHUNK: usize = 64 << 10;
/// A buffer emptied with more capacity than this gives it back: a large
/// fetch page read once must not stay allocated (and charged to the
/// memory account's `bus` kind) for the connection's life.
const KEEP: usize = 4 * CHUNK;

/// What an expected reply answers.
#[derive(Debug)]
pub enum Kind {
    /// AUTH or SELECT during the handshake: must not be an error.
    Setup,
    /// SCRIPT LOAD: the reply is the SHA1; `handshake` when part of connect.
    Load { handshake: bool },
    /// A batch of publishes (one request each, in order), with its
    /// arguments kept for a NOSCRIPT retry as EVAL.
    Publish {
        reqs: Vec<u64>,
        args: PublishArgs,
        eval: bool,
    },
    /// A fetch page.
    Fetch { req: u64 },
    /// SUBSCRIBE confirmation.
    Subscribe,
    /// `GET P:id` once subscribed: the last id any node allocated.
    LastId,
}

/// An expected reply.
#[derive(Debug)]
pub struct Pending {
    /// What it answers.
    pub kind: Kind,
    /// Reactor time (ms) by which it must arrive.
    pub deadline: u64,
    /// When it was queued, for latency.
    pub sent: Instant,
}

enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// One connection.
pub struct Conn {
    sock: Sock,
    connecting: bool,
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
    rpos: usize,
    dec: Decoder,
    max_reply: usize,
    /// The most its buffers held since [`Conn::high_water`]
    /// was last asked (a page is read, decoded and taken in one loop turn
    /// as often as not: the figure between turns would miss it).
    high: usize,
    /// Expected replies, oldest first.
    pub pending: VecDeque<Pending>,
}

/// Whether a read stopped at `WouldBlock` or at its byte budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// The socket has nothing more for now.
    Done,
    /// The budget ran out first: read again without waiting for an event.
    More,
}

fn io_err(e: io::Error) -> BusError {
    BusError::Io(e.to_string())
}

/// Where Redis is, resolved: what every (re)connect uses, so no connect
/// on the loop ever waits for a name lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address looked up once, at start-up.
    Tcp(SocketAddr),
    /// A Unix-domain socket path.
    Unix(PathBuf),
}

impl Target {
    /// Looks a host name up (blocking: call it once, before the loop
    /// runs); IP literals and Unix paths need no lookup. The first address
    /// is kept, as a connect took it before.
    pub fn resolve(addr: &RedisAddr) -> Result<Target, BusError> {
        match addr {
            RedisAddr::Tcp { host, port } => (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| BusError::Io(format!("cannot resolve Redis host {host}: {e}")))?
                .next()
                .map(Target::Tcp)
                .ok_or_else(|| BusError::Io(format!("Redis host {host} has no address"))),
            RedisAddr::Unix(path) => Ok(Target::Unix(path.clone())),
        }
    }
}

/// Keepalive settings for a command timeout `t` (whole seconds, at least
/// 1): first probe after `t` of silence, then every `t/3`, 3 unanswered
/// probes fail the socket. A vanished peer is noticed within about `2t`
/// (plus rounding up to seconds), as the pub/sub PING every `t` answered
/// within `t` noticed it before, but with no wakeup while all is well: the
/// kernel probes and answers. A peer whose kernel still answers (a stopped
/// process) is noticed by the deadline of the next command instead.
pub fn keepalive_params(t: Duration) -> (libc::c_int, libc::c_int, libc::c_int) {
    let secs = t.as_millis().div_ceil(1000).clamp(1, 3600) as libc::c_int;
    (secs, (secs / 3).max(1), 3)
}

/// Turns kernel keepalive on for `sock` with [`keepalive_params`].
pub fn keepalive(sock: &impl AsRawFd, t: Duration) -> io::Result<()> {
    let (idle, intvl, cnt) = keepalive_params(t);
    let fd = sock.as_raw_fd();
    let opts = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, intvl),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, cnt),
    ];
    for (level, opt, value) in opts {
        // SAFETY: setsockopt on a socket we own, with a c_int option value
        // of the right size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Conn {
    /// Starts a nonblocking connect to an address resolved at start-up and
    /// registers the socket: nothing here blocks. `timeout` sets TCP
    /// keepalive (see [`keepalive_params`]).
    pub fn connect(
        addr: &Target,
        registry: &Registry,
        token: Token,
        timeout: Duration,
        (max_bulk, max_reply): (usize, usize),
    ) -> Result<Conn, BusError> {
        let mut sock = match addr {
            Target::Tcp(sa) => {
                let s = TcpStream::connect(*sa).map_err(io_err)?;
                let _ = s.set_nodelay(true);
                // Without it an idle node would not notice a vanished
                // Redis: nothing is sent while idle.
                keepalive(&s, timeout).map_err(io_err)?;
                Sock::Tcp(s)
            }
            Target::Unix(path) => Sock::Unix(UnixStream::connect(path).map_err(io_err)?),
        };
        let interest = Interest::READABLE | Interest::WRITABLE;
        match &mut sock {
            Sock::Tcp(s) => registry.register(s, token, interest),
            Sock::Unix(s) => registry.register(s, token, interest),
        }
        .map_err(io_err)?;
        Ok(Conn {
            sock,
            connecting: true,
            wbuf: Vec::new(),
            wpos: 0,
            rbuf: Vec::new(),
            rpos: 0,
            dec: Decoder::new(max_bulk),
            max_reply,
            high: 0,
            pending: VecDeque::new(),
        })
    }

    /// Deregisters and closes.
    pub fn close(mut self, registry: &Registry) {
        let _ = match &mut self.sock {
            Sock::Tcp(s) => registry.deregister(s),
            Sock::Unix(s) => registry.deregister(s),
        };
    }

    /// Bytes its buffers hold (capacity) and the decoder's copy of a
    /// reply's finished items.
    fn buffers(&self) -> usize {
        self.rbuf.capacity() + self.wbuf.capacity() + self.dec.held()
    }

    /// The most its buffers held since the last call (or what they hold
    /// now), plus the publishes kept until their replies: the memory
    /// account's `bus` kind.
    pub fn high_water(&mut self) -> usize {
        let kept: usize = self
            .pending
            .iter()
            .map(|p| match &p.kind {
                Kind::Publish { args, .. } => args.len(),
                _ => 0,
            })
            .sum();
        std::mem::take(&mut self.high).max(self.buffers()) + kept
    }

    /// Queues a command and what its reply answers.
    pub fn send(&mut self, args: &[&[u8]], kind: Kind, deadline: u64) {
        encode_command(args, &mut self.wbuf);
        self.expect(kind, deadline);
    }

    /// Gives access to the write buffer for prebuilt commands.
    pub fn wbuf(&mut self) -> &mut Vec<u8> {
        &mut self.wbuf
    }

    /// Records an expected reply.
    pub fn expect(&mut self, kind: Kind, deadline: u64) {
        self.pending.push_back(Pending {
            kind,
            deadline,
            sent: Instant::now(),
        });
    }

    /// Finishes a connect in progress: `Ok(false)` while still connecting.
    fn check_connected(&mut self) -> Result<bool, BusError> {
        if !self.connecting {
            return Ok(true);
        }
        let (err, peer) = match &self.sock {
            Sock::Tcp(s) => (s.take_error(), s.peer_addr().map(|_| ())),
            Sock::Unix(s) => (s.take_error(), s.peer_addr().map(|_| ())),
        };
        if let Some(e) = err.map_err(io_err)? {
            return Err(io_err(e));
        }
        match peer {
            Ok(()) => {
                self.connecting = false;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Writes what it can; never blocks.
    pub fn flush(&mut self) -> Result<(), BusError> {
        if !self.check_connected()? {
            return Ok(());
        }
        while self.wpos < self.wbuf.len() {
            let r = match &mut self.sock {
                Sock::Tcp(s) => s.write(&self.wbuf[self.wpos..]),
                Sock::Unix(s) => s.write(&self.wbuf[self.wpos..]),
            };
            match r {
                Ok(0) => return Err(BusError::Disconnected),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wbuf.shrink_to(KEEP);
            self.wpos = 0;
        } else if self.wpos > CHUNK && self.wpos * 2 > self.wbuf.len() {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(())
    }

    /// Reads until `WouldBlock` or about `budget` bytes, appending every
    /// complete reply to `out`. EOF, I/O and protocol errors are `Err`.
    pub fn read(&mut self, budget: usize, out: &mut Vec<Value>) -> Result<Drain, BusError> {
        if !self.check_connected()? {
            return Ok(Drain::Done);
        }
        let mut taken = 0;
        loop {
            if taken >= budget {
                return Ok(Drain::More);
            }
            if self.rpos == self.rbuf.len() {
                self.rbuf.clear();
                self.rbuf.shrink_to(KEEP);
                self.rpos = 0;
            } else if self.rpos > CHUNK && self.rpos * 2 > self.rbuf.len() {
                self.rbuf.drain(..self.rpos); // the decoder's view is unchanged
                self.rpos = 0;
            }
            if self.rbuf.len() - self.rpos > self.max_reply {
                return Err(BusError::Protocol(format!(
                    "reply over {} bytes",
                    self.max_reply
                )));
            }
            let old = self.rbuf.len();
            self.rbuf.resize(old + CHUNK, 0);
            let r = match &mut self.sock {
                Sock::Tcp(s) => s.read(&mut self.rbuf[old..]),
                Sock::Unix(s) => s.read(&mut self.rbuf[old..]),
            };
            let n = match r {
                Ok(n) => n,
                Err(e) => {
                    self.rbuf.truncate(old);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(Drain::Done),
                        io::ErrorKind::Interrupted => continue,
                        _ => return Err(io_err(e)),
                    }
                }
            };
            self.rbuf.truncate(old + n);
            if n == 0 {
                return Err(BusError::Disconnected);
            }
            taken += n;
            self.high = self.high.max(self.buffers());
            while let Some((v, used)) = self
                .dec
                .decode(&self.rbuf[self.rpos..])
                .map_err(|e| BusError::Protocol(e.to_string()))?
            {
                self.rpos += used;
                out.push(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(sock: &impl AsRawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a c_int of the stated size.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                level,
                name,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        v
    }

    #[test]
    fn keepalive_follows_the_command_timeout() {
        assert_eq!(keepalive_params(Duration::from_secs(2)), (2, 1, 3));
        assert_eq!(keepalive_params(Duration::from_millis(500)), (1, 1, 3));
        assert_eq!(keepalive_params(Duration::from_millis(9_001)), (10, 3, 3));
        assert_eq!(keepalive_params(Duration::ZERO), (1, 1, 3));
        assert_eq!(
            keepalive_params(Duration::from_secs(1 << 40)),
            (3600, 1200, 3)
        );
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert_eq!(opt(&s, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 0);
        keepalive(&s, Duration::from_secs(30)).unwrap();
        assert_eq!(opt(&s, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(opt(&s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 30);
        assert_eq!(opt(&s, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 10);
        assert_eq!(opt(&s, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
    }
}
