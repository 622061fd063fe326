//! Server configuration: defaults, command-line flags and their `SSED_*`
//! environment twins, and the `--help` text. Parsing is by hand and
//! table-driven so the help text, the flags and the environment variables
//! cannot drift apart. Nothing here opens sockets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything a [`crate::Server`] can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on (`--listen`, repeatable).
    pub listen: Vec<SocketAddr>,
    /// Quiet time before a heartbeat comment; zero disables heartbeats.
    pub heartbeat: Duration,
    /// Base reconnect delay in ms; each connection gets one from [retry, 2*retry).
    pub retry_ms: u32,
    /// Events retained per stream.
    pub history: usize,
    /// Bytes retained per stream.
    pub history_bytes: usize,
    /// Bytes of retained history in all streams together (encoded frames).
    pub history_total_bytes: usize,
    /// Everything a client can make the server hold, together (`--memory-max`);
    /// `None`: `history_total_bytes` + 256 MiB.
    pub memory_max: Option<usize>,
    /// A stream nobody reads, unpublished for this long, is dropped; zero: never.
    pub stream_idle_ttl: Duration,
    /// Maximum number of public streams (publishers' pool; subscribers get
    /// a pool of the same size for streams only they asked for).
    pub max_streams: usize,
    /// Maximum streams one connection may read.
    pub max_streams_per_conn: usize,
    /// Create unknown streams on first use.
    pub auto_streams: bool,
    /// Maximum request body.
    pub max_body: usize,
    /// Maximum request head.
    pub max_header_bytes: usize,
    /// Time allowed for a request head (and its body) to arrive.
    pub header_timeout: Duration,
    /// Idle keep-alive connections close after this.
    pub idle_timeout: Duration,
    /// A subscriber whose socket accepts nothing for this long is closed.
    pub write_timeout: Duration,
    /// Connection cap (0: open-file limit minus a reserve).
    pub max_connections: usize,
    /// Connections per peer address.
    pub max_connections_per_ip: usize,
    /// Unsent bytes a blocked subscriber may lag before it is disconnected.
    pub max_pending_bytes: usize,
    /// Time allowed to flush and close on SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// Bearer token that grants publish rights from anywhere.
    pub publish_token: Option<String>,
    /// Allowed CORS origins (`*` for any).
    pub cors_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For`/`Forwarded` name the client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `user@domain:password` lines for the `/api` app.
    pub users_file: Option<PathBuf>,
    /// Multiplies the built-in apps' tick intervals (test knob; 1.0 = the seeds' timings).
    pub tick_scale: f64,
    /// Handle SIGTERM/SIGINT (the binary sets this; embedders may not want it).
    pub handle_signals: bool,
    /// Set `SO_REUSEPORT` on the listeners, so several processes can serve one port.
    pub reuse_port: bool,
    /// Worker processes the binary supervises on one port (0: serve in this process).
    pub workers: usize,
    /// Redis to share streams, ids and history through (`--redis`);
    /// checked when the server binds (`redis://...` or `unix:/path`).
    pub redis: Option<String>,
    /// Prefix of every Redis key and channel.
    pub redis_prefix: String,
    /// Deadline of each Redis command (publish, fetch, handshake step).
    pub redis_timeout: Duration,
    /// Keep every stream's history and the id clock here (`--data-dir`).
    pub data_dir: Option<PathBuf>,
    /// When journal writes are fsynced (`--fsync`).
    pub fsync: FsyncPolicy,
    /// Disk budget of the journal (`--journal-bytes`).
    pub journal_bytes: u64,
    /// HS256 key for publishers' JWTs (and subscribers' unless
    /// `subscriber_jwt_key` is set).
    pub jwt_key: Option<Secret>,
    /// HS256 key for subscribers' JWTs.
    pub subscriber_jwt_key: Option<Secret>,
    /// Cookie a token may come in.
    pub jwt_cookie: String,
    /// Topic selectors of streams that only token holders may read.
    pub private_streams: Vec<String>,
}

/// Shortest JWT key accepted: RFC 7518 §3.2 wants at least 256 bits.
pub const MIN_JWT_KEY_BYTES: usize = 32;

/// Key bytes that `Debug` does not print, so a logged config leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// When journal writes reach the disk (`--fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Before each publish is acknowledged.
    Always,
    /// Every interval (default 100 ms).
    Interval(Duration),
    /// Left to the kernel.
    Never,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            heartbeat: Duration::from_secs(15),
            retry_ms: 2000,
            history: 1000,
            history_bytes: 1 << 20,
            history_total_bytes: 256 << 20,
            memory_max: None,
            stream_idle_ttl: Duration::from_secs(3600),
            max_streams: 10_000,
            max_streams_per_conn: 16,
            auto_streams: true,
            max_body: 1 << 20,
            max_header_bytes: 8 << 10,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(60),
            max_connections: 0,
            max_connections_per_ip: 1000,
            max_pending_bytes: 256 << 10,
            shutdown_timeout: Duration::from_secs(5),
            publish_token: None,
            cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            users_file: None,
            tick_scale: 1.0,
            handle_signals: false,
            reuse_port: false,
            workers: 0,
            redis: None,
            redis_prefix: "ssed".into(),
            redis_timeout: Duration::from_secs(2),
            data_dir: None,
            fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
            journal_bytes: 256 << 20,
            jwt_key: None,
            subscriber_jwt_key: None,
            jwt_cookie: "mercureAuthorization".into(),
            private_streams: Vec::new(),
        }
    }
}

/// Why the command line or environment was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A flag nobody knows.
    UnknownFlag(String),
    /// A flag without its value.
    MissingValue(String),
    /// A flag of a Cargo feature this binary was built without.
    NotBuilt {
        /// The flag, as typed (or its environment variable).
        flag: String,
        /// The feature it needs.
        feature: &'static str,
    },
    /// A value that does not parse or is out of range.
    BadValue {
        /// The flag, as typed.
        flag: String,
        /// The value given.
        value: String,
        /// What was wrong with it.
        why: String,
    },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::UnknownFlag(x) => write!(f, "unknown flag {x} (see --help)"),
            ConfigError::MissingValue(x) => write!(f, "flag {x} needs a value"),
            ConfigError::NotBuilt { flag, feature } => write!(
                f,
                "{flag} needs the `{feature}` feature, which this ssed was built without \
                 (rebuild with: cargo build --release --features {feature})"
            ),
            ConfigError::BadValue { flag, value, why } => {
                write!(f, "bad value {value:?} for {flag}: {why}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// Names the environment variable a bad value came from, so the
    /// message points at what the user actually typed.
    fn named(self, var: String) -> ConfigError {
        match self {
            ConfigError::BadValue { value, why, .. } => ConfigError::BadValue {
                flag: var,
                value,
                why,
            },
            other => other,
        }
    }
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    /// Run the server.
    Serve(Box<Config>),
    /// Print help and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
}

struct Flag {
    name: &'static str,
    value: &'static str,
    default: &'static str,
    help: &'static str,
}

const FLAGS: &[Flag] = &[
    Flag {
        name: "listen",
        value: "ADDR",
        default: "127.0.0.1:8080",
        help: "address to listen on (repeatable; env: comma-separated; port 0 picks one)",
    },
    Flag {
        name: "heartbeat",
        value: "SECS",
        default: "15",
        help: "comment line after this much quiet; 0 disables",
    },
    Flag {
        name: "retry",
        value: "MS",
        default: "2000",
        help: "reconnect delay sent to clients, jittered per connection to [MS, 2*MS)",
    },
    Flag {
        name: "history",
        value: "N",
        default: "1000",
        help: "events retained per stream for resume",
    },
    Flag {
        name: "history-bytes",
        value: "BYTES",
        default: "1048576",
        help: "bytes retained per stream for resume; a larger encoded event is refused (413)",
    },
    Flag {
        name: "history-total-bytes",
        value: "BYTES",
        default: "268435456",
        help: "retained history of all streams together; past it the least recently used streams' oldest events go",
    },
    Flag {
        name: "memory-max",
        value: "BYTES",
        default: "--history-total-bytes + 268435456",
        help: "all a client can make the server hold together (history, request buffers, unsent responses, archives, bus fetches, selectors); past it such memory is refused (503, or the connection closed)",
    },
    Flag {
        name: "stream-idle-ttl",
        value: "SECS",
        default: "3600",
        help: "a stream nobody reads, unread and unpublished this long, is dropped; 0: never",
    },
    Flag {
        name: "max-streams",
        value: "N",
        default: "10000",
        help: "maximum number of streams publishers may create (subscribers: as many more)",
    },
    Flag {
        name: "max-streams-per-conn",
        value: "N",
        default: "16",
        help: "maximum streams one subscription may read",
    },
    Flag {
        name: "no-auto-streams",
        value: "",
        default: "off",
        help: "subscribing to an unknown stream is 404 (publishing or PUT /streams/NAME creates it)",
    },
    Flag {
        name: "max-body",
        value: "BYTES",
        default: "1048576",
        help: "maximum request body",
    },
    Flag {
        name: "max-header-bytes",
        value: "BYTES",
        default: "8192",
        help: "maximum request head",
    },
    Flag {
        name: "header-timeout",
        value: "SECS",
        default: "10",
        help: "time allowed for a request to arrive (408 after)",
    },
    Flag {
        name: "idle-timeout",
        value: "SECS",
        default: "60",
        help: "idle keep-alive connections close after this",
    },
    Flag {
        name: "write-timeout",
        value: "SECS",
        default: "60",
        help: "subscribers whose socket accepts nothing this long are closed",
    },
    Flag {
        name: "max-connections",
        value: "N",
        default: "open-file limit - 64",
        help: "connection cap (503 past it)",
    },
    Flag {
        name: "max-connections-per-ip",
        value: "N",
        default: "1000",
        help: "connections per peer address (503 past it)",
    },
    Flag {
        name: "max-pending-bytes",
        value: "BYTES",
        default: "262144",
        help: "unsent bytes a stalled subscriber may lag before it is dropped",
    },
    Flag {
        name: "shutdown-timeout",
        value: "SECS",
        default: "5",
        help: "time to flush and close on SIGTERM/SIGINT",
    },
    Flag {
        name: "publish-token",
        value: "TOKEN",
        default: "none",
        help: "publishing needs 'Authorization: Bearer TOKEN' (else loopback only)",
    },
    Flag {
        name: "cors-origin",
        value: "ORIGIN",
        default: "none",
        help: "allowed CORS origin (repeatable, or *)",
    },
    Flag {
        name: "trusted-proxy",
        value: "ADDR",
        default: "none",
        help: "a reverse proxy's IP: its X-Forwarded-For/Forwarded name the client (repeatable; env: comma-separated)",
    },
    Flag {
        name: "users",
        value: "FILE",
        default: "none",
        help: "user@domain:password lines for the /api app",
    },
    Flag {
        name: "data-dir",
        value: "DIR",
        default: "none",
        help: "keep history and the id clock in DIR through restarts (a journal)",
    },
    Flag {
        name: "fsync",
        value: "POLICY",
        default: "interval",
        help: "journal fsync: always (before each reply), interval (every 100 ms; or N ms), never",
    },
    Flag {
        name: "journal-bytes",
        value: "BYTES",
        default: "268435456",
        help: "disk budget of --data-dir (kept within it plus one segment)",
    },
    Flag {
        name: "jwt-key",
        value: "KEY",
        default: "none",
        help: "HS256 key (>= 32 bytes) for publishers' JWTs, and subscribers' unless --subscriber-jwt-key",
    },
    Flag {
        name: "jwt-key-file",
        value: "FILE",
        default: "none",
        help: "read --jwt-key from FILE (one trailing newline is dropped)",
    },
    Flag {
        name: "subscriber-jwt-key",
        value: "KEY",
        default: "--jwt-key",
        help: "HS256 key (>= 32 bytes) for subscribers' JWTs",
    },
    Flag {
        name: "subscriber-jwt-key-file",
        value: "FILE",
        default: "none",
        help: "read --subscriber-jwt-key from FILE",
    },
    Flag {
        name: "jwt-cookie",
        value: "NAME",
        default: "mercureAuthorization",
        help: "cookie a JWT may come in (after Authorization: Bearer and ?authorization=)",
    },
    Flag {
        name: "private-streams",
        value: "SELECTOR",
        default: "none",
        help: "streams matching this topic selector (*, a name, a URI template) need a subscribe JWT (repeatable)",
    },
    Flag {
        name: "tick-scale",
        value: "X",
        default: "1.0",
        help: "test knob: multiplies the built-in apps' tick intervals",
    },
    Flag {
        name: "redis",
        value: "URL",
        default: "none",
        help: "share streams, ids and history through Redis: redis://[:password@]host:port[/db] or unix:/path",
    },
    Flag {
        name: "redis-prefix",
        value: "PREFIX",
        default: "ssed",
        help: "prefix of every Redis key and channel",
    },
    Flag {
        name: "redis-timeout",
        value: "SECS",
        default: "2",
        help: "deadline of each Redis command; publishes answer 503 past it",
    },
    Flag {
        name: "reuse-port",
        value: "",
        default: "off",
        help: "set SO_REUSEPORT so several processes can listen on one port",
    },
    Flag {
        name: "workers",
        value: "N",
        default: "0",
        help: "supervise N worker processes on one port (needs --redis; 0: one process)",
    },
];

/// Room `--memory-max` must leave beside `--history-total-bytes` (the
/// memory account's minimum headroom, 4 MiB).
pub const MEMORY_HEADROOM: usize = 4 << 20;
/// What `--memory-max` is beside `--history-total-bytes` when not given.
pub const MEMORY_DEFAULT_HEADROOM: usize = 256 << 20;

impl Config {
    /// The memory account's global bound in force.
    pub fn memory_max(&self) -> usize {
        self.memory_max.unwrap_or(
            self.history_total_bytes
                .saturating_add(MEMORY_DEFAULT_HEADROOM),
        )
    }
}

/// The most workers `--workers` accepts.
pub const MAX_WORKERS: usize = 256;

/// Environment variable for a flag: `SSED_` + upper-case name, `-` → `_`.
fn env_name(flag: &str) -> String {
    format!("SSED_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// The `--help` text.
pub fn help() -> String {
    let mut s = String::from(
        "ssed: a tiny, dense Server-Sent-Events server\n\n\
         usage: ssed [serve] [FLAGS]\n       ssed sub URL [--stream S]... [--last-event-id ID] [--json]\n       ssed pub URL --stream S [--event T] [--token T] [DATA | -]\n\nflags (each also read from the environment variable shown):\n",
    );
    for f in FLAGS {
        let left = if f.value.is_empty() {
            format!("--{}", f.name)
        } else {
            format!("--{} {}", f.name, f.value)
        };
        s.push_str(&format!(
            "  {left:<30} {} [default: {}] [env: {}]\n",
            f.help,
            f.default,
            env_name(f.name)
        ));
        if let Some((feature, false)) = feature_of(f.name) {
            s.pop();
            s.push_str(&format!(" [not in this build: feature {feature}]\n"));
        }
    }
    s.push_str("  --help                         this text\n  --version                      print the version\n\nLogging: RUST_LOG=info (or debug, warn...).\n");
    s
}

/// The Cargo feature a flag belongs to, and whether this build has it.
fn feature_of(flag: &str) -> Option<(&'static str, bool)> {
    Some(match flag {
        "users" | "tick-scale" => ("apps", cfg!(feature = "apps")),
        "redis" | "redis-prefix" | "redis-timeout" => ("redis", cfg!(feature = "redis")),
        "data-dir" | "fsync" | "journal-bytes" => ("journal", cfg!(feature = "journal")),
        "jwt-key"
        | "jwt-key-file"
        | "subscriber-jwt-key"
        | "subscriber-jwt-key-file"
        | "jwt-cookie"
        | "private-streams" => ("mercure", cfg!(feature = "mercure")),
        "workers" => ("workers", cfg!(feature = "workers")),
        _ => return None,
    })
}

fn bad(flag: &str, value: &str, why: &str) -> ConfigError {
    ConfigError::BadValue {
        flag: format!("--{flag}"),
        value: value.to_string(),
        why: why.to_string(),
    }
}

fn num(flag: &str, v: &str) -> Result<usize, ConfigError> {
    v.trim()
        .parse::<usize>()
        .map_err(|_| bad(flag, v, "expected a whole number"))
}

/// A valueless flag (or its env twin): present means on.
fn switch(flag: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "" | "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(bad(flag, v, "expected true or false")),
    }
}

/// A key from a flag; the value is never echoed into the error.
fn jwt_key(flag: &str, bytes: Vec<u8>) -> Result<Secret, ConfigError> {
    if bytes.len() < MIN_JWT_KEY_BYTES {
        return Err(bad(
            flag,
            "<redacted>",
            "shorter than 256 bits (32 bytes); generate one with: openssl rand -base64 32",
        ));
    }
    Ok(Secret(bytes))
}

/// A non-negative decimal (`12`, `0.25`, `.5`, `3.`) as whole units and
/// billionths (digits past the ninth decimal are dropped). By hand because
/// `str::parse::<f64>` links core's float parser (about 14 KiB) into every
/// build for the flags that take seconds.
fn decimal(v: &str) -> Option<(u64, u32)> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    let whole = if int.is_empty() { 0 } else { int.parse().ok()? };
    let nanos = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0, |n, b| n * 10 + u32::from(b - b'0'));
    Some((whole, nanos))
}

fn secs(flag: &str, v: &str) -> Result<Duration, ConfigError> {
    let (whole, nanos) = decimal(v.trim()).ok_or_else(|| bad(flag, v, "expected seconds"))?;
    if whole > 10_000_000 || (whole == 10_000_000 && nanos > 0) {
        return Err(bad(flag, v, "out of range"));
    }
    Ok(Duration::new(whole, nanos))
}

impl Config {
    fn set(&mut self, name: &str, v: &str, from_env: bool) -> Result<(), ConfigError> {
        match name {
            "listen" => {
                let parts: Vec<&str> = if from_env {
                    v.split(',').collect()
                } else {
                    vec![v]
                };
                for p in parts {
                    let a: SocketAddr = p
                        .trim()
                        .parse()
                        .map_err(|_| bad(name, p, "expected IP:PORT"))?;
                    self.listen.push(a);
                }
            }
            "heartbeat" => self.heartbeat = secs(name, v)?,
            "retry" => {
                let n = num(name, v)?;
                if n == 0 || n > 3_600_000 {
                    return Err(bad(name, v, "must be 1..=3600000 ms"));
                }
                self.retry_ms = n as u32;
            }
            "history" => self.history = num(name, v)?,
            "history-bytes" => self.history_bytes = num(name, v)?,
            "history-total-bytes" => {
                let n = num(name, v)?;
                if n < 4096 {
                    return Err(bad(name, v, "must be at least 4096"));
                }
                self.history_total_bytes = n;
            }
            "memory-max" => self.memory_max = Some(num(name, v)?),
            "stream-idle-ttl" => self.stream_idle_ttl = secs(name, v)?,
            "max-streams" => self.max_streams = num(name, v)?,
            "max-streams-per-conn" => {
                let n = num(name, v)?;
                // The write path merges at most 64 streams per connection.
                if !(1..=64).contains(&n) {
                    return Err(bad(name, v, "must be 1..=64"));
                }
                self.max_streams_per_conn = n;
            }
            "no-auto-streams" => {
                self.auto_streams = match v {
                    "" | "1" | "true" | "yes" => false,
                    "0" | "false" | "no" => true,
                    _ => return Err(bad(name, v, "expected true or false")),
                }
            }
            "max-body" => self.max_body = num(name, v)?,
            "max-header-bytes" => {
                let n = num(name, v)?;
                if n < 256 {
                    return Err(bad(name, v, "must be at least 256"));
                }
                self.max_header_bytes = n;
            }
            "header-timeout" => self.header_timeout = secs(name, v)?,
            "idle-timeout" => self.idle_timeout = secs(name, v)?,
            "write-timeout" => self.write_timeout = secs(name, v)?,
            "max-connections" => self.max_connections = num(name, v)?,
            "max-connections-per-ip" => self.max_connections_per_ip = num(name, v)?,
            "max-pending-bytes" => self.max_pending_bytes = num(name, v)?,
            "shutdown-timeout" => self.shutdown_timeout = secs(name, v)?,
            "publish-token" => {
                if v.is_empty() {
                    return Err(bad(name, v, "must not be empty"));
                }
                self.publish_token = Some(v.to_string());
            }
            "cors-origin" => {
                let parts: Vec<&str> = if from_env {
                    v.split(',').collect()
                } else {
                    vec![v]
                };
                self.cors_origins.extend(
                    parts
                        .iter()
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty()),
                );
            }
            "trusted-proxy" => {
                let parts: Vec<&str> = if from_env {
                    v.split(',').collect()
                } else {
                    vec![v]
                };
                for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
                    let ip: std::net::IpAddr = p
                        .parse()
                        .map_err(|_| bad(name, p, "expected an IP address"))?;
                    self.trusted_proxies.push(ip);
                }
            }
            "users" => self.users_file = Some(PathBuf::from(v)),
            "data-dir" => {
                if v.is_empty() {
                    return Err(bad(name, v, "must not be empty"));
                }
                self.data_dir = Some(PathBuf::from(v));
            }
            "fsync" => self.fsync = match v.trim() {
                "always" => FsyncPolicy::Always,
                "interval" => FsyncPolicy::Interval(Duration::from_millis(100)),
                "never" => FsyncPolicy::Never,
                t => match t.strip_suffix("ms").map(|n| n.trim().parse::<u64>()) {
                    Some(Ok(ms)) if (1..=60_000).contains(&ms) => {
                        FsyncPolicy::Interval(Duration::from_millis(ms))
                    }
                    _ => return Err(bad(
                        name,
                        v,
                        "expected always, interval, never or an interval like 250ms (1..=60000)",
                    )),
                },
            },
            "journal-bytes" => {
                let n = num(name, v)? as u64;
                if n < 64 << 10 {
                    return Err(bad(name, v, "must be at least 65536"));
                }
                self.journal_bytes = n;
            }
            "jwt-key" => self.jwt_key = Some(jwt_key(name, v.as_bytes().to_vec())?),
            "subscriber-jwt-key" => {
                self.subscriber_jwt_key = Some(jwt_key(name, v.as_bytes().to_vec())?)
            }
            "jwt-key-file" | "subscriber-jwt-key-file" => {
                let mut bytes =
                    std::fs::read(v).map_err(|e| bad(name, v, &format!("cannot read it: {e}")))?;
                // `echo KEY > file` adds a newline nobody means as key.
                if bytes.ends_with(b"\n") {
                    bytes.pop();
                    if bytes.ends_with(b"\r") {
                        bytes.pop();
                    }
                }
                let key = Some(jwt_key(name, bytes).map_err(|_| {
                    bad(name, v, "the key in it is shorter than 256 bits (32 bytes)")
                })?);
                if name == "jwt-key-file" {
                    self.jwt_key = key;
                } else {
                    self.subscriber_jwt_key = key;
                }
            }
            "jwt-cookie" => {
                let ok = !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
                if !ok {
                    return Err(bad(name, v, "expected a cookie name (a token)"));
                }
                self.jwt_cookie = v.to_string();
            }
            "private-streams" => {
                let parts: Vec<&str> = if from_env {
                    v.split(',').collect()
                } else {
                    vec![v]
                };
                for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
                    if p.len() > 2048 || p.matches('{').count() != p.matches('}').count() {
                        return Err(bad(name, p, "expected a topic selector"));
                    }
                    self.private_streams.push(p.to_string());
                }
            }
            "tick-scale" => {
                let (whole, nanos) = decimal(v).ok_or_else(|| bad(name, v, "expected a number"))?;
                let x = whole as f64 + f64::from(nanos) / 1e9;
                if !(0.001..=1000.0).contains(&x) {
                    return Err(bad(name, v, "must be in 0.001..=1000"));
                }
                self.tick_scale = x;
            }
            "redis" => {
                let v = v.trim();
                if v.is_empty() {
                    return Err(bad(name, v, "must not be empty"));
                }
                self.redis = Some(v.to_string());
            }
            "redis-prefix" => {
                let ok = (1..=64).contains(&v.len())
                    && v.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
                if !ok {
                    return Err(bad(name, v, "1..=64 visible characters"));
                }
                self.redis_prefix = v.to_string();
            }
            "redis-timeout" => {
                let d = secs(name, v)?;
                if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
                    return Err(bad(name, v, "must be 0.01..=3600 seconds"));
                }
                self.redis_timeout = d;
            }
            "reuse-port" => self.reuse_port = switch(name, v)?,
            "workers" => {
                let n = num(name, v)?;
                if n > MAX_WORKERS {
                    return Err(bad(name, v, "must be 0..=256"));
                }
                self.workers = n;
            }
            _ => return Err(ConfigError::UnknownFlag(format!("--{name}"))),
        }
        Ok(())
    }

    /// Parses `ssed [serve] ARGS` on top of the environment (`env` looks a
    /// variable up). Flags win over the environment.
    pub fn from_args<F>(args: &[String], env: F) -> Result<Command, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let mut cfg = Config {
            listen: Vec::new(),
            handle_signals: true,
            ..Config::default()
        };
        for f in FLAGS {
            let var = env_name(f.name);
            if let Some(v) = env(&var) {
                cfg.set(f.name, &v, true).map_err(|e| e.named(var))?;
            }
        }
        let env_listen = std::mem::take(&mut cfg.listen);
        let env_cors = std::mem::take(&mut cfg.cors_origins);
        let env_proxies = std::mem::take(&mut cfg.trusted_proxies);
        let env_private = std::mem::take(&mut cfg.private_streams);
        let mut args = args.iter().map(String::as_str).peekable();
        if args.peek() == Some(&"serve") {
            args.next();
        }
        while let Some(a) = args.next() {
            match a {
                "-h" | "--help" | "help" => return Ok(Command::Help),
                "-V" | "--version" => return Ok(Command::Version),
                _ => {}
            }
            let Some(body) = a.strip_prefix("--") else {
                return Err(ConfigError::UnknownFlag(a.to_string()));
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(flag) = FLAGS.iter().find(|f| f.name == name) else {
                return Err(ConfigError::UnknownFlag(a.to_string()));
            };
            let value = if flag.value.is_empty() {
                inline.unwrap_or("").to_string()
            } else if let Some(v) = inline {
                v.to_string()
            } else {
                args.next()
                    .ok_or_else(|| ConfigError::MissingValue(a.to_string()))?
                    .to_string()
            };
            cfg.set(name, &value, false)?;
        }
        if cfg.listen.is_empty() {
            cfg.listen = env_listen;
        }
        if cfg.cors_origins.is_empty() {
            cfg.cors_origins = env_cors;
        }
        if cfg.trusted_proxies.is_empty() {
            cfg.trusted_proxies = env_proxies;
        }
        if cfg.private_streams.is_empty() {
            cfg.private_streams = env_private;
        }
        if cfg.listen.is_empty() {
            cfg.listen = Config::default().listen;
        }
        if let Some(m) = cfg.memory_max {
            let least = cfg.history_total_bytes.saturating_add(MEMORY_HEADROOM);
            if m < least {
                return Err(bad(
                    "memory-max",
                    &m.to_string(),
                    &format!(
                        "must be at least --history-total-bytes + {MEMORY_HEADROOM} ({least})"
                    ),
                ));
            }
        }
        cfg.check_features()?;
        if cfg.workers > 0 && cfg.redis.is_none() {
            // Each worker has its own streams and history; without a shared
            // bus a publish would reach only one worker's subscribers.
            return Err(bad(
                "workers",
                &cfg.workers.to_string(),
                "needs --redis URL (without it each worker has its own streams, so a publish reaches only the subscribers of the worker that took it)",
            ));
        }
        Ok(Command::Serve(Box::new(cfg)))
    }
}

impl Config {
    /// Refuses settings whose Cargo feature is not built in (a minimal
    /// build), so `--redis` there is an error at start, never ignored.
    pub fn check_features(&self) -> Result<(), ConfigError> {
        let set: [(bool, &str, &'static str, bool); 6] = [
            (
                self.users_file.is_some(),
                "--users",
                "apps",
                cfg!(feature = "apps"),
            ),
            (
                self.redis.is_some(),
                "--redis",
                "redis",
                cfg!(feature = "redis"),
            ),
            (
                self.data_dir.is_some(),
                "--data-dir",
                "journal",
                cfg!(feature = "journal"),
            ),
            (
                self.jwt_key.is_some() || self.subscriber_jwt_key.is_some(),
                "--jwt-key",
                "mercure",
                cfg!(feature = "mercure"),
            ),
            (
                !self.private_streams.is_empty(),
                "--private-streams",
                "mercure",
                cfg!(feature = "mercure"),
            ),
            (
                self.workers > 0,
                "--workers",
                "workers",
                cfg!(feature = "workers"),
            ),
        ];
        match set.iter().find(|(on, _, _, built)| *on && !built) {
            Some((_, flag, feature, _)) => Err(ConfigError::NotBuilt {
                flag: flag.to_string(),
                feature,
            }),
            None => Ok(()),
        }
    }
}

/// `args` without the flags named in `drop` (and their values), read with
/// the same rules as [`Config::from_args`]: the supervisor uses it to give
/// its workers the command line it was given, minus `--workers`.
pub fn without_flags(args: &[String], drop: &[&str]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(body) = a.strip_prefix("--") else {
            out.push(a.clone());
            continue;
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, _)) => (n, true),
            None => (body, false),
        };
        let takes_value = FLAGS
            .iter()
            .find(|f| f.name == name)
            .is_some_and(|f| !f.value.is_empty());
        let value = if takes_value && !inline {
            it.next()
        } else {
            None
        };
        if !drop.contains(&name) {
            out.push(a.clone());
            out.extend(value.cloned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Command, ConfigError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Config::from_args(&args, |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
    }

    fn serve(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse(args, env) {
            Ok(Command::Serve(c)) => *c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_and_flags() {
        let c = serve(&[], &[]);
        assert_eq!(c.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.heartbeat, Duration::from_secs(15));
        let c = serve(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--listen=[::1]:9",
                "--heartbeat",
                "0.5",
                "--no-auto-streams",
            ],
            &[],
        );
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.heartbeat, Duration::from_millis(500));
        assert!(!c.auto_streams);
        assert_eq!(c.data_dir, None);
    }

    #[test]
    fn memory_max_follows_the_history_budget_unless_given() {
        let c = serve(&[], &[]);
        assert_eq!(c.memory_max(), (256 << 20) + (256 << 20));
        let c = serve(&["--history-total-bytes", "1048576"], &[]);
        assert_eq!(c.memory_max(), (1 << 20) + (256 << 20));
        let c = serve(&[], &[("SSED_MEMORY_MAX", "314572800")]);
        assert_eq!(c.memory_max(), 300 << 20);
        let e = Config::from_args(
            &[
                "--history-total-bytes".into(),
                "104857600".into(),
                "--memory-max".into(),
                "104857600".into(),
            ],
            |_| None,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("--history-total-bytes + 4194304"),
            "{e}"
        );
        assert!(help().contains("SSED_MEMORY_MAX"));
    }

    #[test]
    fn env_twins_and_precedence() {
        let c = serve(
            &["--retry", "300"],
            &[
                ("SSED_RETRY", "100"),
                ("SSED_HISTORY", "5"),
                ("SSED_LISTEN", "127.0.0.1:1,127.0.0.1:2"),
            ],
        );
        assert_eq!(c.retry_ms, 300);
        assert_eq!(c.history, 5);
        let t = serve(
            &["--stream-idle-ttl", "2"],
            &[("SSED_HISTORY_TOTAL_BYTES", "65536")],
        );
        assert_eq!(t.history_total_bytes, 65536);
        assert_eq!(t.stream_idle_ttl, Duration::from_secs(2));
        assert!(matches!(
            parse(&["--history-total-bytes", "10"], &[]),
            Err(ConfigError::BadValue { .. })
        ));
        assert_eq!(c.listen.len(), 2);
        let c = serve(
            &["--trusted-proxy", "127.0.0.1", "--trusted-proxy=::1"],
            &[],
        );
        assert_eq!(c.trusted_proxies.len(), 2);
        let c = serve(&[], &[("SSED_TRUSTED_PROXY", "10.0.0.1, 10.0.0.2")]);
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(
            serve(&[], &[("SSED_PUBLISH_TOKEN", "t")])
                .publish_token
                .as_deref(),
            Some("t")
        );
    }

    #[test]
    fn decimals() {
        assert_eq!(decimal("12"), Some((12, 0)));
        assert_eq!(decimal("0.25"), Some((0, 250_000_000)));
        assert_eq!(decimal(".5"), Some((0, 500_000_000)));
        assert_eq!(decimal("3."), Some((3, 0)));
        assert_eq!(decimal("1.0000000019"), Some((1, 1)));
        for bad in [
            "",
            ".",
            "-1",
            "+1",
            "1e3",
            "1.2.3",
            "x",
            " 1",
            "99999999999999999999",
        ] {
            assert_eq!(decimal(bad), None, "{bad}");
        }
        assert_eq!(secs("f", " 0.05 ").unwrap(), Duration::from_millis(50));
        assert_eq!(
            secs("f", "10000000").unwrap(),
            Duration::from_secs(10_000_000)
        );
        assert!(secs("f", "10000000.5").is_err());
    }

    #[test]
    fn errors() {
        assert!(matches!(
            parse(&["--nope"], &[]),
            Err(ConfigError::UnknownFlag(_))
        ));
        assert!(matches!(
            parse(&["--history"], &[]),
            Err(ConfigError::MissingValue(_))
        ));
        assert!(matches!(
            parse(&["--history", "x"], &[]),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            parse(&["--listen", "nowhere"], &[]),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            parse(&[], &[("SSED_HEARTBEAT", "-1")]),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(parse(&["--help"], &[]), Ok(Command::Help)));
        assert!(matches!(
            parse(&["--trusted-proxy", "nginx"], &[]),
            Err(ConfigError::BadValue { .. })
        ));
    }

    #[cfg(feature = "workers")]
    #[test]
    fn workers_reuse_port_redis() {
        let c = serve(
            &["--reuse-port", "--workers", "3", "--redis", "redis://h:1"],
            &[],
        );
        assert!(c.reuse_port);
        assert_eq!(c.workers, 3);
        assert_eq!(c.redis.as_deref(), Some("redis://h:1"));
        let c = serve(
            &[],
            &[
                ("SSED_REUSE_PORT", "1"),
                ("SSED_WORKERS", "2"),
                ("SSED_REDIS", "redis://h:2"),
            ],
        );
        assert!(c.reuse_port && c.workers == 2);
        assert!(!serve(&[], &[]).reuse_port);
        let e = parse(&["--workers", "2"], &[]).unwrap_err().to_string();
        assert!(e.contains("--workers") && e.contains("--redis"), "{e}");
        assert!(!e.contains('\n'));
        assert!(parse(&["--workers", "257", "--redis", "x"], &[]).is_err());
        assert!(parse(&["--reuse-port=maybe"], &[]).is_err());
    }

    #[test]
    fn without_flags_drops_flag_and_value() {
        let a: Vec<String> = [
            "serve",
            "--workers",
            "2",
            "--publish-token",
            "--workers",
            "--workers=3",
            "--reuse-port",
            "--history",
            "5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            without_flags(&a, &["workers", "reuse-port"]),
            ["serve", "--publish-token", "--workers", "--history", "5"]
        );
    }

    #[test]
    fn bad_values_name_what_was_typed() {
        let e = parse(&[], &[("SSED_MAX_BODY", "lots")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad value \"lots\" for SSED_MAX_BODY: expected a whole number"
        );
        let e = parse(&["--max-body", "lots"], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad value \"lots\" for --max-body: expected a whole number"
        );
        let e = parse(&[], &[("SSED_LISTEN", "127.0.0.1:1,nowhere")]).unwrap_err();
        assert!(e.to_string().contains("for SSED_LISTEN"), "{e}");
    }

    #[cfg(feature = "mercure")]
    #[test]
    fn jwt_flags() {
        let key = "k".repeat(32);
        let c = serve(
            &["--jwt-key", &key, "--private-streams", "/a/{id}"],
            &[("SSED_PRIVATE_STREAMS", "x,y"), ("SSED_JWT_COOKIE", "tok")],
        );
        assert_eq!(c.jwt_key, Some(Secret(key.clone().into_bytes())));
        assert_eq!(c.private_streams, vec!["/a/{id}".to_string()]);
        assert_eq!(c.jwt_cookie, "tok");
        let c = serve(&[], &[("SSED_PRIVATE_STREAMS", "x, y")]);
        assert_eq!(c.private_streams, vec!["x", "y"]);
        assert!(!format!("{c:?}").contains(&key));
        let short = "k".repeat(31);
        let e = parse(&["--subscriber-jwt-key", &short], &[]).unwrap_err();
        assert!(e.to_string().contains("256 bits"), "{e}");
        assert!(!e.to_string().contains(&short), "{e}");
        let dir = std::env::temp_dir().join(format!("ssed-jwt-{}", std::process::id()));
        std::fs::write(&dir, format!("{key}\n")).unwrap();
        let c = serve(&["--jwt-key-file", dir.to_str().unwrap()], &[]);
        assert_eq!(c.jwt_key, Some(Secret(key.into_bytes())));
        std::fs::write(&dir, "short\n").unwrap();
        assert!(parse(&["--jwt-key-file", dir.to_str().unwrap()], &[]).is_err());
        let _ = std::fs::remove_file(&dir);
        assert!(parse(&["--jwt-cookie", "a;b"], &[]).is_err());
        assert!(parse(&["--private-streams", "{x"], &[]).is_err());
    }

    /// A flag of a feature not built in is refused, naming the feature,
    /// from the command line and the environment alike.
    #[test]
    fn flags_of_features_not_built_are_refused() {
        let key = "k".repeat(32);
        type Case<'a> = (&'a [&'a str], (&'a str, &'a str), &'a str, bool);
        let cases: [Case; 6] = [
            (
                &["--users", "/u"],
                ("SSED_USERS", "/u"),
                "apps",
                cfg!(feature = "apps"),
            ),
            (
                &["--redis", "redis://h:1"],
                ("SSED_REDIS", "redis://h:1"),
                "redis",
                cfg!(feature = "redis"),
            ),
            (
                &["--data-dir", "/d"],
                ("SSED_DATA_DIR", "/d"),
                "journal",
                cfg!(feature = "journal"),
            ),
            (
                &["--jwt-key", &key],
                ("SSED_JWT_KEY", &key),
                "mercure",
                cfg!(feature = "mercure"),
            ),
            (
                &["--private-streams", "p"],
                ("SSED_PRIVATE_STREAMS", "p"),
                "mercure",
                cfg!(feature = "mercure"),
            ),
            (
                &["--workers", "2", "--redis", "redis://h:1"],
                ("SSED_WORKERS", "2"),
                "workers",
                cfg!(feature = "workers"),
            ),
        ];
        for (args, env, feature, built) in cases {
            let r = parse(args, &[]);
            if built {
                assert!(matches!(r, Ok(Command::Serve(_))), "{args:?}: {r:?}");
                continue;
            }
            // `--workers` needs `--redis`, refused first when it is missing.
            let want = if feature == "workers" && !cfg!(feature = "redis") {
                ("--redis", "redis")
            } else {
                (args[0], feature)
            };
            let e = r.unwrap_err();
            assert!(
                matches!(&e, ConfigError::NotBuilt { flag, feature: f } if (flag.as_str(), *f) == want),
                "{args:?}: {e:?}"
            );
            let msg = e.to_string();
            assert!(msg.contains(&format!("--features {}", want.1)), "{msg}");
            if feature != "workers" {
                assert!(parse(&[], &[env]).is_err(), "{env:?}");
            }
            let mut cfg = Config::default();
            assert!(cfg.check_features().is_ok());
            cfg.redis = Some("x".into());
            cfg.users_file = Some("/u".into());
            cfg.data_dir = Some("/d".into());
            cfg.private_streams = vec!["p".into()];
            assert!(cfg.check_features().is_err());
        }
    }

    #[test]
    fn help_marks_flags_of_features_not_built() {
        let h = help();
        let line = |flag: &str| {
            h.lines()
                .find(|l| l.trim_start().starts_with(&format!("--{flag} ")))
                .unwrap_or_else(|| panic!("--{flag} not in help"))
                .to_string()
        };
        for (flag, feature, built) in [
            ("redis", "redis", cfg!(feature = "redis")),
            ("data-dir", "journal", cfg!(feature = "journal")),
            ("jwt-key", "mercure", cfg!(feature = "mercure")),
            ("users", "apps", cfg!(feature = "apps")),
        ] {
            let marked = line(flag).contains(&format!("[not in this build: feature {feature}]"));
            assert_eq!(marked, !built, "{}", line(flag));
        }
        assert!(!line("history").contains("not in this build"));
    }

    #[test]
    fn help_lists_every_flag_with_env() {
        let h = help();
        for f in FLAGS {
            assert!(h.contains(&format!("--{}", f.name)), "{}", f.name);
            assert!(h.contains(&env_name(f.name)), "{}", f.name);
        }
    }
}

#[cfg(test)]
mod durable_tests {
    use super::*;

    fn serve(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match Config::from_args(&args, |k| {
            env.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })? {
            Command::Serve(c) => Ok(*c),
            other => panic!("{other:?}"),
        }
    }

    #[cfg(feature = "journal")]
    #[test]
    fn journal_flags_and_env_twins() {
        let c = serve(&[], &[]).unwrap();
        assert_eq!(c.data_dir, None);
        assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(100)));
        assert_eq!(c.journal_bytes, 256 << 20);
        let c = serve(
            &[
                "--data-dir",
                "/d",
                "--fsync",
                "always",
                "--journal-bytes",
                "65536",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(c.data_dir, Some(PathBuf::from("/d")));
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert_eq!(c.journal_bytes, 65536);
        let c = serve(
            &[],
            &[
                ("SSED_DATA_DIR", "/e"),
                ("SSED_FSYNC", "250ms"),
                ("SSED_JOURNAL_BYTES", "1000000"),
            ],
        )
        .unwrap();
        assert_eq!(c.data_dir, Some(PathBuf::from("/e")));
        assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(250)));
        assert_eq!(
            serve(&["--fsync", "never"], &[]).unwrap().fsync,
            FsyncPolicy::Never
        );
        for bad in [
            &["--fsync", "sometimes"][..],
            &["--fsync", "0ms"],
            &["--journal-bytes", "100"],
            &["--data-dir", ""],
        ] {
            assert!(serve(bad, &[]).is_err(), "{bad:?}");
        }
        assert!(help().contains("--data-dir DIR") && help().contains("SSED_FSYNC"));
    }
}
