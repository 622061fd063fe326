//! Parses where Redis is: `redis://[[user]:password@]host[:port][/db]`
//! or `unix:/path/redis.sock[?db=N][&password=P]`.
//!
//! Owns syntax only: it neither resolves host names nor connects. User
//! and password may be percent-encoded. `rediss://` (TLS) is refused.

use std::fmt;
use std::path::PathBuf;

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisAddr {
    /// A host name or IP literal (IPv6 without brackets) and a port.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// A Unix-domain socket path.
    Unix(PathBuf),
}

/// A parsed Redis URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Where to connect.
    pub addr: RedisAddr,
    /// ACL user name for `AUTH user password` (Redis 6+).
    pub username: Option<String>,
    /// Password for `AUTH`.
    pub password: Option<String>,
    /// Database for `SELECT` (0 sends none).
    pub db: u32,
}

/// Why a URL is not a Redis URL this client can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad Redis URL: {}", self.0)
    }
}

impl std::error::Error for UrlError {}

fn err<T>(msg: impl Into<String>) -> Result<T, UrlError> {
    Err(UrlError(msg.into()))
}

fn decode_pct(s: &str) -> Result<String, UrlError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => out.push(v),
                None => return err(format!("bad percent escape in {s:?}")),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).or_else(|_| err("credentials are not UTF-8"))
}

fn parse_db(s: &str) -> Result<u32, UrlError> {
    s.parse()
        .or_else(|_| err(format!("database {s:?} is not a number")))
}

impl std::str::FromStr for RedisUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<RedisUrl, UrlError> {
        if let Some(rest) = s.strip_prefix("unix:") {
            return parse_unix(rest);
        }
        if s.starts_with("rediss://") {
            return err("rediss:// (TLS) is not supported");
        }
        let Some(rest) = s.strip_prefix("redis://") else {
            return err(format!("{s:?} does not start with redis:// or unix:"));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if path.contains(['?', '#']) {
            return err("query strings are not supported in redis:// URLs");
        }
        let db = match path {
            "" => 0,
            p => parse_db(p)?,
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let Some((user, pass)) = u.split_once(':') else {
                    return err("credentials must be [user]:password@");
                };
                let user = (!user.is_empty()).then(|| decode_pct(user)).transpose()?;
                (user, Some(decode_pct(pass)?))
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((h, after)) = v6.split_once(']') else {
                return err("unclosed [ in IPv6 host");
            };
            match after {
                "" => (h, None),
                a => match a.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None => return err("junk after IPv6 host"),
                },
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return err("missing host");
        }
        let port = match port {
            None => 6379,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => return err(format!("port {p:?} is not 1-65535")),
            },
        };
        Ok(RedisUrl {
            addr: RedisAddr::Tcp {
                host: host.to_string(),
                port,
            },
            username,
            password,
            db,
        })
    }
}

fn parse_unix(rest: &str) -> Result<RedisUrl, UrlError> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    // unix:///run/redis.sock is the same as unix:/run/redis.sock.
    let path = path.strip_prefix("//").unwrap_or(path);
    if !path.starts_with('/') {
        return err("unix: needs an absolute socket path");
    }
    let mut url = RedisUrl {
        addr: RedisAddr::Unix(PathBuf::from(path)),
        username: None,
        password: None,
        db: 0,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("db", v)) => url.db = parse_db(v)?,
            Some(("password", v)) => url.password = Some(decode_pct(v)?),
            Some(("user", v)) => url.username = Some(decode_pct(v)?),
            _ => return err(format!("unknown unix: URL parameter {pair:?}")),
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(host: &str, port: u16) -> RedisAddr {
        RedisAddr::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parses_tcp_urls() {
        let u: RedisUrl = "redis://127.0.0.1".parse().unwrap();
        assert_eq!(
            (u.addr, u.password, u.db),
            (tcp("127.0.0.1", 6379), None, 0)
        );
        let u: RedisUrl = "redis://:s%40cret@redis.local:6380/3".parse().unwrap();
        assert_eq!(u.addr, tcp("redis.local", 6380));
        assert_eq!(
            (u.username, u.password.as_deref(), u.db),
            (None, Some("s@cret"), 3)
        );
        let u: RedisUrl = "redis://alice:pw@[::1]:7000/".parse().unwrap();
        assert_eq!(u.addr, tcp("::1", 7000));
        assert_eq!(u.username.as_deref(), Some("alice"));
        assert_eq!(u.password.as_deref(), Some("pw"));
    }

    #[test]
    fn parses_unix_urls() {
        let u: RedisUrl = "unix:/run/redis.sock?db=2".parse().unwrap();
        assert_eq!(u.addr, RedisAddr::Unix("/run/redis.sock".into()));
        assert_eq!(u.db, 2);
        let u: RedisUrl = "unix:///tmp/r.sock?password=x&db=0".parse().unwrap();
        assert_eq!(u.addr, RedisAddr::Unix("/tmp/r.sock".into()));
        assert_eq!(u.password.as_deref(), Some("x"));
    }

    #[test]
    fn rejects_with_a_reason() {
        for (url, why) in [
            ("http://x", "does not start"),
            ("rediss://x", "TLS"),
            ("redis://", "missing host"),
            ("redis://h:0", "port"),
            ("redis://h:99999", "port"),
            ("redis://h:6379/x", "database"),
            ("redis://pw@h", "[user]:password"),
            ("redis://:%zz@h", "percent"),
            ("redis://[::1", "unclosed"),
            ("unix:relative.sock", "absolute"),
            ("unix:/s?dbx=1", "unknown"),
        ] {
            let e = url.parse::<RedisUrl>().unwrap_err().to_string();
            assert!(e.contains(why), "{url}: {e}");
        }
    }
}
