//! Server configuration: defaults, command-line flags and their `SSED_*`
//! environment twins, and the `--help` text. Each flag is written once, as
//! a row of `FLAGS` (name, value, default, help, feature, setter): the
//! field's default (`Config::default` runs each row's setter on its
//! default), the help line, the environment variable and the parsing all
//! come from that row, so they cannot drift apart. Nothing here opens
//! sockets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Declares `Config` and `Config::blank`, every field at its type's zero,
/// so that the real defaults come only from the rows of `FLAGS`.
macro_rules! with_blank {
    ($(#[$attr:meta])* pub struct $name:ident {
        $($(#[$fattr:meta])* pub $field:ident: $ty:ty,)*
    }) => {
        $(#[$attr])*
        pub struct $name {
            $($(#[$fattr])* pub $field: $ty,)*
        }

        impl $name {
            /// Every field at its type's zero (no flag's default applied).
            fn blank() -> $name {
                $name {
                    $($field: Default::default(),)*
                }
            }
        }
    };
}

with_blank! {
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
    /// Draft-08 tokens' `iss` must equal it (`--jwt-issuer`).
    pub jwt_issuer: Option<String>,
    /// Draft-08 tokens' `aud` must hold it (`--jwt-audience`); `None`:
    /// the hub's URL.
    pub jwt_audience: Option<String>,
    /// Tokens with the legacy `mercure` claim are accepted
    /// (`--mercure-legacy`).
    pub mercure_legacy: bool,
    /// Active subscriptions: subscription events and the subscriptions
    /// API (`--mercure-subscriptions`).
    pub mercure_subscriptions: bool,
}
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

/// What `--fsync interval` means.
const FSYNC_INTERVAL: Duration = Duration::from_millis(100);

impl Default for FsyncPolicy {
    /// `--fsync interval`, the flag's default.
    fn default() -> Self {
        FsyncPolicy::Interval(FSYNC_INTERVAL)
    }
}

impl Default for Config {
    /// The defaults `--help` shows, each read by its flag's own setter.
    fn default() -> Self {
        let mut cfg = Config::blank();
        for f in FLAGS {
            let v = match f.default {
                Init::Value(v) => v,
                Init::Off => "false",
                Init::Note(_) => continue,
            };
            // Every default parses (`every_default_parses`).
            let _ = (f.set)(&mut cfg, v);
        }
        cfg
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
        /// The flag, as typed (or its environment variable).
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

/// One flag: everything about it in one place.
struct Flag {
    /// `--name`; the environment twin is derived from it ([`env_name`]).
    name: &'static str,
    /// What the value is called in `--help`; empty for a switch, which
    /// takes no value on the command line (`--name` alone means on).
    value: &'static str,
    default: Init,
    help: &'static str,
    /// Repeatable on the command line and comma-separated in the
    /// environment; the setter then takes one item. Moves a layer's list
    /// (defaults, environment, command line) into `dst` when `dst`'s is
    /// empty, so the command line replaces the environment, which
    /// replaces the default.
    list: Option<Fill>,
    /// The Cargo feature the flag belongs to (`None`: the core); `--help`
    /// marks it when this build lacks the feature.
    feature: Option<&'static str>,
    /// Reads a value into the config (for a list, one item).
    set: Set,
}

type Set = fn(&mut Config, &str) -> Result<(), Refused>;
type Fill = fn(dst: &mut Config, src: &mut Config);

/// A flag's default, as `--help` shows it.
#[derive(Clone, Copy)]
enum Init {
    /// A value: the flag's setter reads it into `Config::default()`.
    Value(&'static str),
    /// A switch, off unless given (its setter reads `false`).
    Off,
    /// Words for `--help`; the field keeps its type's zero (`None`, 0, empty).
    Note(&'static str),
}

impl Init {
    fn shown(self) -> &'static str {
        match self {
            Init::Value(v) | Init::Note(v) => v,
            Init::Off => "off",
        }
    }
}

/// Why a setter refused a value; the caller names the flag as typed.
struct Refused {
    why: String,
    /// The value to show, when not the one given (a trimmed part, or
    /// `<redacted>` for a key).
    value: Option<String>,
}

fn no(why: impl Into<String>) -> Refused {
    Refused {
        why: why.into(),
        value: None,
    }
}

/// Refuses `value` in place of the value given.
fn no_as(value: &str, why: impl Into<String>) -> Refused {
    Refused {
        why: why.into(),
        value: Some(value.to_string()),
    }
}

/// `dst`'s list takes `src`'s when it has none of its own.
fn fill<T>(dst: &mut Vec<T>, src: &mut Vec<T>) {
    if dst.is_empty() {
        *dst = std::mem::take(src);
    }
}

/// The fields every row leaves at their usual value.
const ROW: Flag = Flag {
    name: "",
    value: "",
    default: Init::Note("none"),
    help: "",
    list: None,
    feature: None,
    set: |_, _| Ok(()),
};

static FLAGS: &[Flag] = &[
    Flag {
        name: "listen",
        value: "ADDR",
        default: Init::Value("127.0.0.1:8080"),
        help: "address to listen on (repeatable; env: comma-separated; port 0 picks one)",
        list: Some(|d, s| fill(&mut d.listen, &mut s.listen)),
        set: |c, v| {
            let a = v.trim().parse().map_err(|_| no("expected IP:PORT"))?;
            c.listen.push(a);
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "heartbeat",
        value: "SECS",
        default: Init::Value("15"),
        help: "comment line after this much quiet; 0 disables",
        set: |c, v| {
            c.heartbeat = secs(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "retry",
        value: "MS",
        default: Init::Value("2000"),
        help: "reconnect delay sent to clients, jittered per connection to [MS, 2*MS)",
        set: |c, v| {
            let n = num(v)?;
            if n == 0 || n > 3_600_000 {
                return Err(no("must be 1..=3600000 ms"));
            }
            c.retry_ms = n as u32;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "history",
        value: "N",
        default: Init::Value("1000"),
        help: "events retained per stream for resume",
        set: |c, v| {
            c.history = num(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "history-bytes",
        value: "BYTES",
        default: Init::Value("1048576"),
        help: "bytes retained per stream for resume; a larger encoded event is refused (413)",
        set: |c, v| {
            c.history_bytes = num(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "history-total-bytes",
        value: "BYTES",
        default: Init::Value("268435456"),
        help: "retained history of all streams together; past it the least recently used streams' oldest events go",
        set: |c, v| {
            let n = num(v)?;
            if n < 4096 {
                return Err(no("must be at least 4096"));
            }
            c.history_total_bytes = n;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "memory-max",
        value: "BYTES",
        default: Init::Note("--history-total-bytes + 268435456"),
        help: "all a client can make the server hold together: history and app archives (evicted to fit), request buffers and unsent responses (refused past it: 503, or the connection closed); Redis fetches and selector streams have fixed bounds of their own",
        set: |c, v| {
            c.memory_max = Some(num(v)?);
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "stream-idle-ttl",
        value: "SECS",
        default: Init::Value("3600"),
        help: "a stream nobody reads, unread and unpublished this long, is dropped; 0: never",
        set: |c, v| {
            c.stream_idle_ttl = secs(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "max-streams",
        value: "N",
        default: Init::Value("10000"),
        help: "maximum number of streams publishers may create (subscribers: as many more, an eighth of those per address)",
        set: |c, v| {
            c.max_streams = num(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "max-streams-per-conn",
        value: "N",
        default: Init::Value("16"),
        help: "maximum streams one subscription may read",
        set: |c, v| {
            let n = num(v)?;
            // The write path merges at most 64 streams per connection.
            if !(1..=64).contains(&n) {
                return Err(no("must be 1..=64"));
            }
            c.max_streams_per_conn = n;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "no-auto-streams",
        default: Init::Off,
        help: "subscribing to an unknown stream is 404 (publishing or PUT /streams/NAME creates it)",
        set: |c, v| {
            c.auto_streams = !switch(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "max-body",
        value: "BYTES",
        default: Init::Value("1048576"),
        help: "maximum request body",
        set: |c, v| {
            c.max_body = num(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "max-header-bytes",
        value: "BYTES",
        default: Init::Value("8192"),
        help: "maximum request head",
        set: |c, v| {
            let n = num(v)?;
            if n < 256 {
                return Err(no("must be at least 256"));
            }
            c.max_header_bytes = n;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "header-timeout",
        value: "SECS",
        default: Init::Value("10"),
        help: "time allowed for a request to arrive (408 after)",
        set: |c, v| {
            c.header_timeout = secs(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "idle-timeout",
        value: "SECS",
        default: Init::Value("60"),
        help: "idle keep-alive connections close after this",
        set: |c, v| {
            c.idle_timeout = secs(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "write-timeout",
        value: "SECS",
        default: Init::Value("60"),
        help: "subscribers whose socket accepts nothing this long are closed",
        set: |c, v| {
            c.write_timeout = secs(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "max-connections",
        value: "N",
        default: Init::Note("open-file limit - 64"),
        help: "connection cap (503 past it)",
        set: |c, v| {
            c.max_connections = num(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "max-connections-per-ip",
        value: "N",
        default: Init::Value("1000"),
        help: "connections per peer address (503 past it)",
        set: |c, v| {
            c.max_connections_per_ip = num(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "max-pending-bytes",
        value: "BYTES",
        default: Init::Value("262144"),
        help: "unsent bytes a stalled subscriber may lag before it is dropped",
        set: |c, v| {
            c.max_pending_bytes = num(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "shutdown-timeout",
        value: "SECS",
        default: Init::Value("5"),
        help: "time to flush and close on SIGTERM/SIGINT",
        set: |c, v| {
            c.shutdown_timeout = secs(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "publish-token",
        value: "TOKEN",
        help: "publishing needs 'Authorization: Bearer TOKEN' (else loopback only)",
        set: |c, v| {
            if v.is_empty() {
                return Err(no("must not be empty"));
            }
            c.publish_token = Some(v.to_string());
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "cors-origin",
        value: "ORIGIN",
        help: "allowed CORS origin (repeatable, or *)",
        list: Some(|d, s| fill(&mut d.cors_origins, &mut s.cors_origins)),
        set: |c, v| {
            let v = v.trim();
            if !v.is_empty() {
                c.cors_origins.push(v.to_string());
            }
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "trusted-proxy",
        value: "ADDR",
        help: "a reverse proxy's IP: its X-Forwarded-For/Forwarded name the client (repeatable; env: comma-separated)",
        list: Some(|d, s| fill(&mut d.trusted_proxies, &mut s.trusted_proxies)),
        set: |c, v| {
            let v = v.trim();
            if !v.is_empty() {
                let ip = v.parse().map_err(|_| no_as(v, "expected an IP address"))?;
                c.trusted_proxies.push(ip);
            }
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "users",
        value: "FILE",
        help: "user@domain:password lines for the /api app",
        feature: Some("apps"),
        set: |c, v| {
            c.users_file = Some(PathBuf::from(v));
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "data-dir",
        value: "DIR",
        help: "keep history and the id clock in DIR through restarts (a journal)",
        feature: Some("journal"),
        set: |c, v| {
            if v.is_empty() {
                return Err(no("must not be empty"));
            }
            c.data_dir = Some(PathBuf::from(v));
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "fsync",
        value: "POLICY",
        default: Init::Value("interval"),
        help: "journal fsync: always (before each reply), interval (every 100 ms; or N ms), never",
        feature: Some("journal"),
        set: |c, v| {
            c.fsync = match v.trim() {
                "always" => FsyncPolicy::Always,
                "interval" => FsyncPolicy::Interval(FSYNC_INTERVAL),
                "never" => FsyncPolicy::Never,
                t => match t.strip_suffix("ms").map(|n| n.trim().parse::<u64>()) {
                    Some(Ok(ms)) if (1..=60_000).contains(&ms) => {
                        FsyncPolicy::Interval(Duration::from_millis(ms))
                    }
                    _ => {
                        return Err(no(
                            "expected always, interval, never or an interval like 250ms (1..=60000)",
                        ))
                    }
                },
            };
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "journal-bytes",
        value: "BYTES",
        default: Init::Value("268435456"),
        help: "disk budget of --data-dir (kept within it plus one segment)",
        feature: Some("journal"),
        set: |c, v| {
            let n = num(v)? as u64;
            if n < 64 << 10 {
                return Err(no("must be at least 65536"));
            }
            c.journal_bytes = n;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "jwt-key",
        value: "KEY",
        help: "HS256 key (>= 32 bytes) for publishers' JWTs, and subscribers' unless --subscriber-jwt-key",
        feature: Some("mercure"),
        set: |c, v| {
            c.jwt_key = Some(jwt_key(v.as_bytes().to_vec())?);
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "jwt-key-file",
        value: "FILE",
        help: "read --jwt-key from FILE (one trailing newline is dropped)",
        feature: Some("mercure"),
        set: |c, v| {
            c.jwt_key = Some(jwt_key_file(v)?);
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "subscriber-jwt-key",
        value: "KEY",
        default: Init::Note("--jwt-key"),
        help: "HS256 key (>= 32 bytes) for subscribers' JWTs",
        feature: Some("mercure"),
        set: |c, v| {
            c.subscriber_jwt_key = Some(jwt_key(v.as_bytes().to_vec())?);
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "subscriber-jwt-key-file",
        value: "FILE",
        help: "read --subscriber-jwt-key from FILE",
        feature: Some("mercure"),
        set: |c, v| {
            c.subscriber_jwt_key = Some(jwt_key_file(v)?);
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "jwt-cookie",
        value: "NAME",
        default: Init::Value("mercureAuthorization"),
        help: "cookie a JWT may come in (after Authorization: Bearer and ?authorization=)",
        feature: Some("mercure"),
        set: |c, v| {
            let ok = !v.is_empty()
                && v.bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if !ok {
                return Err(no("expected a cookie name (a token)"));
            }
            c.jwt_cookie = v.to_string();
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "private-streams",
        value: "SELECTOR",
        help: "streams matching this topic selector (*, a name, a URI template) need a subscribe JWT (repeatable)",
        list: Some(|d, s| fill(&mut d.private_streams, &mut s.private_streams)),
        feature: Some("mercure"),
        set: |c, v| {
            let v = v.trim();
            if v.is_empty() {
                return Ok(());
            }
            if v.len() > 2048 || v.matches('{').count() != v.matches('}').count() {
                return Err(no_as(v, "expected a topic selector"));
            }
            c.private_streams.push(v.to_string());
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "jwt-issuer",
        value: "ISS",
        help: "draft-08 access tokens (typ at+jwt) must have this iss",
        feature: Some("mercure"),
        set: |c, v| {
            c.jwt_issuer = Some(protocol_value(v)?);
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "jwt-audience",
        value: "AUD",
        default: Init::Note("the hub's URL"),
        help: "draft-08 access tokens must have this in aud",
        feature: Some("mercure"),
        set: |c, v| {
            c.jwt_audience = Some(protocol_value(v)?);
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "mercure-legacy",
        value: "on|off",
        default: Init::Value("on"),
        help: "accept tokens of the legacy Mercure dialect (the mercure claim) beside draft-08 ones",
        feature: Some("mercure"),
        set: |c, v| {
            c.mercure_legacy = match v.trim() {
                "on" | "true" | "1" => true,
                "off" | "false" | "0" => false,
                _ => return Err(no("expected on or off")),
            };
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "mercure-subscriptions",
        default: Init::Off,
        help: "active subscriptions: publish subscription events and serve /.well-known/mercure/subscriptions",
        feature: Some("mercure"),
        set: |c, v| {
            c.mercure_subscriptions = switch(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "tick-scale",
        value: "X",
        default: Init::Value("1.0"),
        help: "test knob: multiplies the built-in apps' tick intervals",
        feature: Some("apps"),
        set: |c, v| {
            let (whole, nanos) = decimal(v).ok_or_else(|| no("expected a number"))?;
            let x = whole as f64 + f64::from(nanos) / 1e9;
            if !(0.001..=1000.0).contains(&x) {
                return Err(no("must be in 0.001..=1000"));
            }
            c.tick_scale = x;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "redis",
        value: "URL",
        help: "share streams, ids and history through Redis: redis://[:password@]host:port[/db] or unix:/path",
        feature: Some("redis"),
        set: |c, v| {
            let v = v.trim();
            if v.is_empty() {
                return Err(no_as(v, "must not be empty"));
            }
            c.redis = Some(v.to_string());
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "redis-prefix",
        value: "PREFIX",
        default: Init::Value("ssed"),
        help: "prefix of every Redis key and channel",
        feature: Some("redis"),
        set: |c, v| {
            let ok = (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
            if !ok {
                return Err(no("1..=64 visible characters"));
            }
            c.redis_prefix = v.to_string();
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "redis-timeout",
        value: "SECS",
        default: Init::Value("2"),
        help: "deadline of each Redis command; publishes answer 503 past it",
        feature: Some("redis"),
        set: |c, v| {
            let d = secs(v)?;
            if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
                return Err(no("must be 0.01..=3600 seconds"));
            }
            c.redis_timeout = d;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "reuse-port",
        default: Init::Off,
        help: "set SO_REUSEPORT so several processes can listen on one port",
        set: |c, v| {
            c.reuse_port = switch(v)?;
            Ok(())
        },
        ..ROW
    },
    Flag {
        name: "workers",
        value: "N",
        default: Init::Value("0"),
        help: "supervise N worker processes on one port (needs --redis; 0: one process)",
        feature: Some("workers"),
        set: |c, v| {
            let n = num(v)?;
            if n > MAX_WORKERS {
                return Err(no("must be 0..=256"));
            }
            c.workers = n;
            Ok(())
        },
        ..ROW
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
            f.default.shown(),
            env_name(f.name)
        ));
        if let Some(feature) = f.feature.filter(|x| !built(x)) {
            s.pop();
            s.push_str(&format!(" [not in this build: feature {feature}]\n"));
        }
    }
    s.push_str("  --help                         this text\n  --version                      print the version\n\nLogging: RUST_LOG=info (or debug, warn...).\n");
    s
}

/// Whether this build has the Cargo feature a flag names.
fn built(feature: &str) -> bool {
    const BUILT: &[(&str, bool)] = &[
        ("apps", cfg!(feature = "apps")),
        ("redis", cfg!(feature = "redis")),
        ("journal", cfg!(feature = "journal")),
        ("mercure", cfg!(feature = "mercure")),
        ("workers", cfg!(feature = "workers")),
    ];
    BUILT
        .iter()
        .find(|(name, _)| *name == feature)
        .is_none_or(|(_, on)| *on)
}

fn bad(flag: &str, value: &str, why: &str) -> ConfigError {
    ConfigError::BadValue {
        flag: format!("--{flag}"),
        value: value.to_string(),
        why: why.to_string(),
    }
}

fn num(v: &str) -> Result<usize, Refused> {
    v.trim()
        .parse::<usize>()
        .map_err(|_| no("expected a whole number"))
}

/// A valueless flag (or its env twin): present means on.
/// A claim value to compare with: non-empty, at most 2,048 bytes, no
/// control characters.
fn protocol_value(v: &str) -> Result<String, Refused> {
    if v.is_empty() || v.len() > 2048 || v.chars().any(char::is_control) {
        return Err(no("expected 1..=2048 bytes without control characters"));
    }
    Ok(v.to_string())
}

fn switch(v: &str) -> Result<bool, Refused> {
    match v {
        "" | "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(no("expected true or false")),
    }
}

/// A key from a flag; the value is never echoed into the error.
fn jwt_key(bytes: Vec<u8>) -> Result<Secret, Refused> {
    if bytes.len() < MIN_JWT_KEY_BYTES {
        return Err(no_as(
            "<redacted>",
            "shorter than 256 bits (32 bytes); generate one with: openssl rand -base64 32",
        ));
    }
    Ok(Secret(bytes))
}

/// A key from the file named `path`.
fn jwt_key_file(path: &str) -> Result<Secret, Refused> {
    let mut bytes = std::fs::read(path).map_err(|e| no(format!("cannot read it: {e}")))?;
    // `echo KEY > file` adds a newline nobody means as key.
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    jwt_key(bytes).map_err(|_| no("the key in it is shorter than 256 bits (32 bytes)"))
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

fn secs(v: &str) -> Result<Duration, Refused> {
    let (whole, nanos) = decimal(v.trim()).ok_or_else(|| no("expected seconds"))?;
    if whole > 10_000_000 || (whole == 10_000_000 && nanos > 0) {
        return Err(no("out of range"));
    }
    Ok(Duration::new(whole, nanos))
}

impl Flag {
    /// Reads `v` as given for the flag named `shown` (`--name` or its
    /// environment variable, whose list values are comma-separated).
    fn apply(
        &self,
        cfg: &mut Config,
        v: &str,
        shown: &str,
        from_env: bool,
    ) -> Result<(), ConfigError> {
        let one = |cfg: &mut Config, v: &str| {
            (self.set)(cfg, v).map_err(|r| ConfigError::BadValue {
                flag: shown.to_string(),
                value: r.value.unwrap_or_else(|| v.to_string()),
                why: r.why,
            })
        };
        if self.list.is_some() && from_env {
            v.split(',').try_for_each(|p| one(cfg, p))
        } else {
            one(cfg, v)
        }
    }
}

/// Moves each list of `src` into `dst` where `dst`'s is empty.
fn fill_lists(dst: &mut Config, src: &mut Config) {
    for fill in FLAGS.iter().filter_map(|f| f.list) {
        fill(dst, src);
    }
}

impl Config {
    /// Parses `ssed [serve] ARGS` on top of the environment (`env` looks a
    /// variable up). Flags win over the environment.
    pub fn from_args<F>(args: &[String], env: F) -> Result<Command, ConfigError>
    where
        F: Fn(&str) -> Option<String>,
    {
        let mut cfg = Config {
            handle_signals: true,
            ..Config::default()
        };
        // Lists are not merged across layers: the environment's replaces
        // the default, the command line's the environment's.
        let mut defaults = Config::blank();
        fill_lists(&mut defaults, &mut cfg);
        for f in FLAGS {
            let var = env_name(f.name);
            if let Some(v) = env(&var) {
                f.apply(&mut cfg, &v, &var, true)?;
            }
        }
        let mut from_env = Config::blank();
        fill_lists(&mut from_env, &mut cfg);
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
                inline.unwrap_or("")
            } else if let Some(v) = inline {
                v
            } else {
                args.next()
                    .ok_or_else(|| ConfigError::MissingValue(a.to_string()))?
            };
            flag.apply(&mut cfg, value, &format!("--{name}"), false)?;
        }
        fill_lists(&mut cfg, &mut from_env);
        fill_lists(&mut cfg, &mut defaults);
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
        let set: [(bool, &str, &'static str, bool); 7] = [
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
                self.jwt_issuer.is_some()
                    || self.jwt_audience.is_some()
                    || !self.mercure_legacy
                    || self.mercure_subscriptions,
                "--jwt-issuer, --jwt-audience, --mercure-legacy or --mercure-subscriptions",
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
        assert_eq!(secs(" 0.05 ").ok().unwrap(), Duration::from_millis(50));
        assert_eq!(
            secs("10000000").ok().unwrap(),
            Duration::from_secs(10_000_000)
        );
        assert!(secs("10000000.5").is_err());
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

    /// The defaults as they were before the flag table: a row whose
    /// default is not read by its setter shows up here.
    #[test]
    fn defaults_are_pinned() {
        assert_eq!(
            format!("{:?}", Config::default()),
            "Config { listen: [127.0.0.1:8080], heartbeat: 15s, retry_ms: 2000, history: 1000, \
             history_bytes: 1048576, history_total_bytes: 268435456, memory_max: None, \
             stream_idle_ttl: 3600s, max_streams: 10000, max_streams_per_conn: 16, \
             auto_streams: true, max_body: 1048576, max_header_bytes: 8192, header_timeout: 10s, \
             idle_timeout: 60s, write_timeout: 60s, max_connections: 0, \
             max_connections_per_ip: 1000, max_pending_bytes: 262144, shutdown_timeout: 5s, \
             publish_token: None, cors_origins: [], trusted_proxies: [], users_file: None, \
             tick_scale: 1.0, handle_signals: false, reuse_port: false, workers: 0, redis: None, \
             redis_prefix: \"ssed\", redis_timeout: 2s, data_dir: None, fsync: Interval(100ms), \
             journal_bytes: 268435456, jwt_key: None, subscriber_jwt_key: None, \
             jwt_cookie: \"mercureAuthorization\", private_streams: [], jwt_issuer: None, \
             jwt_audience: None, mercure_legacy: true, mercure_subscriptions: false }"
        );
    }

    #[test]
    fn every_default_parses() {
        for f in FLAGS {
            // A switch takes no value, so its default can only be off.
            assert_eq!(
                f.value.is_empty(),
                matches!(f.default, Init::Off),
                "{}",
                f.name
            );
            let v = match f.default {
                Init::Value(v) => v,
                Init::Off => "false",
                Init::Note(_) => continue,
            };
            assert!((f.set)(&mut Config::blank(), v).is_ok(), "{}", f.name);
        }
    }

    /// A list given on the command line replaces the environment's, which
    /// replaces the default; a layer naming no item keeps the one below.
    #[test]
    fn lists_replace_layer_by_layer() {
        let one: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let two: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c = serve(&[], &[("SSED_LISTEN", "127.0.0.1:1")]);
        assert_eq!(c.listen, vec![one]);
        let c = serve(
            &["--listen", "127.0.0.1:2"],
            &[("SSED_LISTEN", "127.0.0.1:1")],
        );
        assert_eq!(c.listen, vec![two]);
        let env = [("SSED_CORS_ORIGIN", "x, ,y")];
        assert_eq!(serve(&["--cors-origin", ""], &env).cors_origins, ["x", "y"]);
        assert_eq!(serve(&["--cors-origin", "a,b"], &env).cors_origins, ["a,b"]);
        // The environment is read (and refused) even when a flag wins.
        let e = parse(&["--listen", "127.0.0.1:2"], &[("SSED_LISTEN", "x")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad value \"x\" for SSED_LISTEN: expected IP:PORT"
        );
        let e = parse(&["--trusted-proxy", " nginx "], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad value \"nginx\" for --trusted-proxy: expected an IP address"
        );
    }

    /// The Cargo feature each flag belongs to (the feature gates read it).
    #[test]
    fn flags_name_their_feature() {
        let of = |feature| {
            FLAGS
                .iter()
                .filter(|f| f.feature == Some(feature))
                .map(|f| f.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(of("apps"), ["users", "tick-scale"]);
        assert_eq!(of("journal"), ["data-dir", "fsync", "journal-bytes"]);
        assert_eq!(of("redis"), ["redis", "redis-prefix", "redis-timeout"]);
        assert_eq!(
            of("mercure"),
            [
                "jwt-key",
                "jwt-key-file",
                "subscriber-jwt-key",
                "subscriber-jwt-key-file",
                "jwt-cookie",
                "private-streams",
                "jwt-issuer",
                "jwt-audience",
                "mercure-legacy",
                "mercure-subscriptions"
            ]
        );
        assert_eq!(of("workers"), ["workers"]);
        assert_eq!(FLAGS.iter().filter(|f| f.feature.is_some()).count(), 19);
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
