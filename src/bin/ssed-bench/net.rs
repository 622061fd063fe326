//! Sockets and the little HTTP this tool speaks: subscribe requests from a
//! chosen loopback source address, and a keep-alive publisher.
//!
//! Connections are spread over source addresses 127.0.0.2, .3, … because
//! one (source, destination) address pair has only ~28,000 ephemeral ports
//! and because a server may limit connections per client IP. The socket is
//! made with libc (bind before connect is not expressible with std) and
//! handed to std with `from_raw_fd`.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::time::Duration;

use crate::args::Url;

/// The source address of connection number `index` (global over all
/// workers): `per_source` connections per address, starting at 127.0.0.2
/// (127.0.0.1 is left to the publisher and to anything else on the box).
pub fn source_addr(index: usize, per_source: usize) -> Ipv4Addr {
    // Host part 2..=0xfffffe: inside 127.0.0.0/8, off .0.0.0, .0.0.1 and
    // the broadcast address.
    let n = 2 + ((index / per_source.max(1)) % 0x00ff_fffd) as u32;
    Ipv4Addr::from(0x7f00_0000 | n)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Creates a TCP socket bound to `src` (port chosen at connect time) and
/// starts connecting it to `dst`. Nonblocking sockets come back with the
/// connect in progress; blocking ones connected (or failed, or timed out).
pub fn connect_from(
    src: Ipv4Addr,
    dst: SocketAddrV4,
    nonblocking: bool,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let flags =
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain socket(2); the fd is owned by `stream` right after, so
    // every error path below closes it.
    let fd = check(unsafe { libc::socket(libc::AF_INET, flags, 0) })?;
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // IP_BIND_ADDRESS_NO_PORT: pick the port at connect(), by the full
    // 4-tuple, instead of reserving one per bind(); without it the
    // ephemeral range would be exhausted by source address alone.
    // SAFETY: valid fd, option value points to a live c_int of the given size.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let src = sockaddr(SocketAddrV4::new(src, 0));
    // SAFETY: `src` is a valid sockaddr_in of the size passed.
    check(unsafe {
        libc::bind(
            fd,
            (&src as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })?;
    if !nonblocking {
        // SO_SNDTIMEO also bounds a blocking connect() on Linux.
        stream.set_write_timeout(Some(timeout))?;
        stream.set_read_timeout(Some(timeout))?;
    }
    let dst = sockaddr(dst);
    // SAFETY: `dst` is a valid sockaddr_in of the size passed.
    let ret = unsafe {
        libc::connect(
            fd,
            (&dst as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if !(nonblocking && err.raw_os_error() == Some(libc::EINPROGRESS)) {
            return Err(err);
        }
    }
    Ok(stream)
}

/// The request a subscriber sends, as a browser's EventSource would,
/// with `headers` (`Name: value` lines, checked by the flag parser).
pub fn subscribe_request(url: &Url, headers: &[String]) -> Vec<u8> {
    let mut r = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n",
        url.path_query, url.host_header
    );
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// What a publish request got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReply {
    pub status: u16,
    /// `"subscribers":N` from the JSON reply (ssed and nchan both say it).
    pub subscribers: Option<u64>,
}

/// Finds `"subscribers": N` in a reply body without a full JSON parse
/// (nchan's reply is JSON-ish with spaces, ssed's compact).
pub fn subscribers_in(body: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(body).ok()?;
    let at = s.find("\"subscribers\"")? + "\"subscribers\"".len();
    let rest = s[at..].trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// One keep-alive connection that POSTs raw bodies and waits for each reply.
pub struct Publisher {
    stream: TcpStream,
    url: Url,
    buf: Vec<u8>,
}

impl Publisher {
    pub fn connect(url: &Url, timeout: Duration) -> io::Result<Publisher> {
        let stream = TcpStream::connect_timeout(&url.addr.into(), timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Publisher {
            stream,
            url: url.clone(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// POSTs `body` as text/plain and reads the whole reply.
    pub fn publish(&mut self, body: &[u8]) -> io::Result<PublishReply> {
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n",
            self.url.path_query,
            self.url.host_header,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req)?;
        self.read_reply()
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "publisher connection closed by the server",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn read_reply(&mut self) -> io::Result<PublishReply> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        let (head_len, status, length, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut length = None;
                    let mut chunked = false;
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok());
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = String::from_utf8_lossy(h.value)
                                .to_ascii_lowercase()
                                .contains("chunked");
                        }
                    }
                    break (n, resp.code.unwrap_or(0), length, chunked);
                }
                Ok(httparse::Status::Partial) => self.fill()?,
                Err(e) => return Err(bad(format!("bad publish reply: {e}"))),
            }
        };
        let body_end = if chunked {
            // Replies are tiny; wait for the terminating zero-size chunk.
            loop {
                if let Some(p) = find(&self.buf[head_len..], b"0\r\n\r\n") {
                    break head_len + p + 5;
                }
                self.fill()?;
            }
        } else {
            let len = length.unwrap_or(0);
            while self.buf.len() < head_len + len {
                self.fill()?;
            }
            head_len + len
        };
        let subscribers = subscribers_in(&self.buf[head_len..body_end]);
        self.buf.drain(..body_end);
        Ok(PublishReply {
            status,
            subscribers,
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses() {
        assert_eq!(source_addr(0, 4096), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(4095, 4096), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(4096, 4096), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source_addr(300, 1), Ipv4Addr::new(127, 0, 1, 46));
        assert!(source_addr(usize::MAX / 2, 1).is_loopback());
    }

    #[test]
    fn subscribers_field() {
        assert_eq!(
            subscribers_in(br#"{"id":"17","subscribers":1000}"#),
            Some(1000)
        );
        assert_eq!(
            subscribers_in(
                br#"{"messages": 1, "requested": 0, "subscribers": 20, "last_message_id": "1:0" }"#
            ),
            Some(20)
        );
        assert_eq!(subscribers_in(b"queued messages: 1"), None);
    }

    #[test]
    fn request_text() {
        let u = Url::parse("http://127.0.0.1:9/events?stream=b").unwrap();
        let r = String::from_utf8(subscribe_request(&u, &[])).unwrap();
        assert!(r.starts_with("GET /events?stream=b HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
        let h = ["Authorization: Bearer abc".to_string(), "X-A: 1".into()];
        let r = String::from_utf8(subscribe_request(&u, &h)).unwrap();
        assert!(
            r.ends_with("no-cache\r\nAuthorization: Bearer abc\r\nX-A: 1\r\n\r\n"),
            "{r}"
        );
    }

    #[test]
    fn publisher_against_a_fake_server() {
        use std::net::TcpListener;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            // Two requests, each answered once it has arrived: one sized
            // reply, one chunked.
            let replies: [&[u8]; 2] = [
                b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n{\"id\":\"1\",\"subscribers\":12345}",
                b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
            ];
            for (i, reply) in replies.iter().enumerate() {
                while seen.windows(5).filter(|w| w == b"hello").count() <= i {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0);
                    seen.extend_from_slice(&buf[..n]);
                }
                s.write_all(reply).unwrap();
            }
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}/events?stream=x")).unwrap();
        let mut p = Publisher::connect(&url, Duration::from_secs(5)).unwrap();
        let r1 = p.publish(b"hello").unwrap();
        assert_eq!(
            r1,
            PublishReply {
                status: 200,
                subscribers: Some(12345)
            }
        );
        let r2 = p.publish(b"hello").unwrap();
        assert_eq!(
            r2,
            PublishReply {
                status: 201,
                subscribers: None
            }
        );
        server.join().unwrap();
    }

    #[test]
    fn bound_blocking_connect() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = match l.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let s = connect_from(
            Ipv4Addr::new(127, 0, 0, 3),
            dst,
            false,
            Duration::from_secs(5),
        )
        .unwrap();
        let (_, peer) = l.accept().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        drop(s);
    }
}
