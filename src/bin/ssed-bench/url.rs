//! The one kind of target `ssed-bench` accepts: an `http://` URL on a
//! loopback address. Parsing it is where the tool refuses to aim load at
//! another machine; every mode takes its targets from here.

use std::net::{Ipv4Addr, SocketAddrV4};

/// A parsed `http://` URL pointing at a loopback IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub addr: SocketAddrV4,
    /// Value for the `Host` header, as written in the URL.
    pub host_header: String,
    /// Path plus query, e.g. `/events?stream=bench`.
    pub path_query: String,
}

impl Url {
    /// Parses `http://HOST[:PORT][/PATH[?QUERY]]`, refusing anything that is
    /// not on 127.0.0.0/8: this tool generates load and must never aim it at
    /// another machine.
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("{s}: only http:// URLs are supported"))?;
        let (authority, path_query) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("{s}: bad port {p:?}"))?,
            ),
            None => (authority, 80),
        };
        let ip: Ipv4Addr = if host.eq_ignore_ascii_case("localhost") {
            Ipv4Addr::LOCALHOST
        } else {
            host.parse()
                .map_err(|_| format!("{s}: host must be an IPv4 loopback address"))?
        };
        if !ip.is_loopback() {
            return Err(format!("{s}: refusing a non-loopback target ({ip})"));
        }
        Ok(Url {
            addr: SocketAddrV4::new(ip, port),
            host_header: authority.to_string(),
            path_query,
        })
    }
}
