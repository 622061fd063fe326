//! The one access rule: who may do what, for every route and app, from
//! the facts of one request (the client's address and whether a trusted
//! proxy forwarded it, its forwarding headers, `Origin` and
//! `Sec-Fetch-Site`, the tokens it carries) and the settings read once at
//! start (`--publish-token`, `--jwt-key`, `--subscriber-jwt-key`,
//! `--jwt-cookie`, `--private-streams`, `--cors-origin`, and for the hub's
//! draft-08 tokens `--jwt-issuer`, `--jwt-audience`, `--mercure-legacy`).
//!
//! Routes name what they are about to do ([`Op`]) and ask [`Access`]; none
//! decides alone. The rule, in one place:
//!
//! - **Writes** (`POST /events`, `PUT`/`DELETE /streams/NAME`, the hub's
//!   `POST`, member notifications): with `--jwt-key` set, a bearer equal to
//!   `--publish-token` may write anything, else a valid JWT in
//!   `Authorization: Bearer` (never a cookie or the query, which a
//!   cross-site form could send) may write what its `mercure.publish`
//!   selectors (or a draft-08 token's `publish` grants) match. Without a key: the publish token when set, else only
//!   plainly local requests ([`plainly_local`]).
//! - **Subscribing** needs no credentials; a token, when presented, must be
//!   valid, and a `--private-streams` stream needs one whose subscribe
//!   selectors match it. Private events reach only cursors that may see
//!   them ([`Access::subscribe`], [`selector_sees_private`]).
//! - **Reading metadata** (`/streams`, `/stats`, `/metrics`, `/healthz`)
//!   and the apps' own streams (chamber, workerman, member notifications:
//!   [`Op::AppStream`]) are public, as they always were.
//! - **Browsers**: a page's origin may read replies only when listed in
//!   `--cors-origin` ([`Access::cors`]), and a page of another origin
//!   never counts as local for writes.
//! - `/api` (MongooseIM) authenticates its own users with HTTP Basic
//!   against `--users` ([`basic_user`]); JWTs and the publish token do not
//!   apply there.
//!
//! Pure: no I/O, no clock (the caller passes `now`), no logging of
//! tokens, no replies. It returns a decision or a [`Denied`] the caller
//! answers and counts as it is told.

use std::net::IpAddr;

use crate::auth::hmac::constant_time_eq;
use crate::auth::{self, Grants, Key, Selector};
use crate::config::Config;
use crate::http::{Headers, Request};

/// What a route is about to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Publish events; the topics are checked with [`PublishRights::allows`]
    /// once the body named them (`POST /events`, the hub's `POST`).
    Publish,
    /// Create stream `NAME` (`PUT /streams/NAME`).
    CreateStream(&'a str),
    /// Delete stream `NAME` (`DELETE /streams/NAME`).
    DeleteStream(&'a str),
    /// Send a member notification to member `ID` (written to the internal
    /// stream `!member/ID`, the topic a JWT's publish selectors must match).
    MemberPublish(&'a str),
    /// Open an event stream (`GET /events`, the hub, the apps' streams).
    Subscribe,
    /// Open an app's own stream that carries nothing private (chamber,
    /// workerman, member notifications): no token is read.
    AppStream,
    /// List streams or read one's counters (`GET /streams[/NAME]`).
    ListStreams,
    /// Read `/stats`, `/metrics` or `/healthz`.
    ReadStats,
}

/// What the request may do, when allowed.
#[derive(Debug)]
pub enum Allowed {
    /// Write, within these rights.
    Write(PublishRights),
    /// Subscribe as this identity: `None` anonymous, else a valid token's
    /// grants.
    Subscriber(Option<Grants>),
    /// Anyone may.
    Anyone,
}

/// A refusal: the status, a reason that never quotes a token, and the
/// `/stats` counter to bump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// 401 (no or bad credentials) or 403 (credentials that do not cover it).
    pub status: u16,
    /// The reason, for the `{"error"}` body.
    pub msg: String,
    /// The rejection counter (`unauthorized`, `forbidden`,
    /// `forbidden_not_local`).
    pub counter: &'static str,
    /// The RFC 6750 `error` code (`invalid_token`, `insufficient_scope`),
    /// when a token was presented.
    pub code: Option<&'static str>,
}

impl Denied {
    fn unauthorized(msg: impl Into<String>) -> Denied {
        Denied {
            status: 401,
            msg: msg.into(),
            counter: "unauthorized",
            code: None,
        }
    }
    fn forbidden(msg: impl Into<String>) -> Denied {
        Denied {
            status: 403,
            msg: msg.into(),
            counter: "forbidden",
            code: Some("insufficient_scope"),
        }
    }
    /// Whether the reply carries `WWW-Authenticate: Bearer`.
    pub fn challenge(&self) -> bool {
        self.status == 401
    }
}

/// The facts of one request the rule reads.
pub struct Facts<'r, 'a> {
    /// The request (headers, query).
    pub req: &'r Request<'a>,
    /// Its client: the peer, or what a `--trusted-proxy` forwarded.
    pub client: Option<IpAddr>,
    /// A trusted proxy sent it (its forwarding headers are the proxy's).
    pub via_proxy: bool,
    /// Unix time in seconds, for token expiry.
    pub now_s: u64,
}

/// The settings of the rule, checked once at start. `Debug` prints no key.
#[derive(Debug, Default)]
pub struct Access {
    publisher: Option<Key>,
    subscriber: Option<Key>,
    publish_token: Option<String>,
    cookie: String,
    private_streams: Vec<Selector>,
    /// `--cors-origin` values: a page listed by name is trusted as local.
    listed_origins: Vec<String>,
    /// `--jwt-issuer`, `--jwt-audience`, `--mercure-legacy`.
    issuer: Option<String>,
    audience: Option<String>,
    legacy: bool,
}

/// Why the authorization settings were refused at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessError {
    /// A key shorter than 256 bits; names the setting.
    ShortKey(&'static str),
    /// A `--private-streams` value that is no selector.
    BadSelector(String),
}

impl std::fmt::Display for AccessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessError::ShortKey(k) => write!(f, "{k} is shorter than 256 bits (32 bytes)"),
            AccessError::BadSelector(s) => {
                write!(f, "--private-streams {s:?} is not a topic selector")
            }
        }
    }
}

impl std::error::Error for AccessError {}

/// What a publisher may publish to.
#[derive(Debug)]
pub enum PublishRights {
    /// Anything (`--publish-token`, or plainly local with no key set).
    All,
    /// Topics a JWT's `mercure.publish` selectors match.
    Topics(Grants),
}

impl PublishRights {
    /// Whether publishing to `topic` is allowed.
    pub fn allows(&self, topic: &str) -> bool {
        match self {
            PublishRights::All => true,
            PublishRights::Topics(g) => g.can_publish(topic),
        }
    }
    /// `Ok` when every name is covered, else the 403 for the first that
    /// is not.
    pub fn covers<S: AsRef<str>>(&self, names: &[S]) -> Result<(), Denied> {
        self.covers_as(names, "")
    }
    /// [`PublishRights::covers`], the reason naming what the names are
    /// (`"topic "` for the hub).
    pub fn covers_as<S: AsRef<str>>(&self, names: &[S], what: &str) -> Result<(), Denied> {
        match names.iter().map(AsRef::as_ref).find(|n| !self.allows(n)) {
            None => Ok(()),
            Some(n) => Err(Denied::forbidden(format!(
                "the token's mercure.publish selectors do not match {what}{n:?}"
            ))),
        }
    }
}

impl Access {
    /// Checks the configuration's keys and selectors.
    pub fn from_config(cfg: &Config) -> Result<Access, AccessError> {
        let key = |k: &Option<crate::config::Secret>, what| {
            k.as_ref()
                .map(|s| Key::new(s.0.clone()).map_err(|_| AccessError::ShortKey(what)))
                .transpose()
        };
        let publisher = key(&cfg.jwt_key, "--jwt-key")?;
        let subscriber =
            key(&cfg.subscriber_jwt_key, "--subscriber-jwt-key")?.or(publisher.clone());
        let private_streams = cfg
            .private_streams
            .iter()
            .map(|p| Selector::parse(p).map_err(|_| AccessError::BadSelector(p.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Access {
            publisher,
            subscriber,
            publish_token: cfg.publish_token.clone(),
            cookie: cfg.jwt_cookie.clone(),
            private_streams,
            listed_origins: cfg.cors_origins.clone(),
            issuer: cfg.jwt_issuer.clone(),
            audience: cfg.jwt_audience.clone(),
            legacy: cfg.mercure_legacy,
        })
    }

    /// Whether stream `name` is readable only with a matching token.
    pub fn is_private_stream(&self, name: &str) -> bool {
        auth::any_match(&self.private_streams, name)
    }

    /// Whether any `--private-streams` selector is set.
    pub fn has_private_streams(&self) -> bool {
        !self.private_streams.is_empty()
    }

    /// CORS headers for this request's `Origin`, if `--cors-origin`
    /// allows it (empty otherwise): which pages may read the replies.
    pub fn cors(&self, req: &Request<'_>) -> Headers {
        let origins = &self.listed_origins;
        if origins.is_empty() {
            return Vec::new();
        }
        if origins.iter().any(|o| o == "*") {
            return vec![("Access-Control-Allow-Origin", "*".into())];
        }
        match req.header_str("origin") {
            Some(o) if origins.iter().any(|a| a == o) => vec![
                ("Access-Control-Allow-Origin", o.to_string()),
                ("Access-Control-Allow-Credentials", "true".into()),
                ("Vary", "Origin".into()),
            ],
            _ => Vec::new(),
        }
    }

    /// The decision for `op` given the request's facts.
    pub fn decide(&self, op: Op<'_>, f: &Facts<'_, '_>) -> Result<Allowed, Denied> {
        match op {
            Op::Publish => self.publisher(f).map(Allowed::Write),
            Op::CreateStream(name) | Op::DeleteStream(name) => {
                let rights = self.publisher(f)?;
                rights.covers(&[name])?;
                Ok(Allowed::Write(rights))
            }
            Op::MemberPublish(member) => {
                let rights = self.publisher(f)?;
                rights.covers(&[member_topic(member)])?;
                Ok(Allowed::Write(rights))
            }
            Op::Subscribe => self.subscriber(f).map(Allowed::Subscriber),
            Op::AppStream | Op::ListStreams | Op::ReadStats => Ok(Allowed::Anyone),
        }
    }

    /// The write rule (see the module doc): what `f` may publish to.
    pub fn publisher(&self, f: &Facts<'_, '_>) -> Result<PublishRights, Denied> {
        let header = f.req.header("authorization");
        let Some(key) = &self.publisher else {
            // No JWT key: the publish token, or the plainly-local rule.
            let local = plainly_local(f.client, f.req, f.via_proxy, &self.listed_origins);
            return match publish_allowed(local, header, self.publish_token.as_deref()) {
                Ok(()) => Ok(PublishRights::All),
                Err((status, msg)) => Err(Denied {
                    status,
                    msg: msg.to_string(),
                    counter: match local {
                        _ if status == 401 => "unauthorized",
                        Err(NotLocal::Remote) => "forbidden",
                        // Loopback, but forwarded or from a page of another
                        // origin: the confused-deputy cases, counted apart.
                        _ => "forbidden_not_local",
                    },
                    code: None,
                }),
            };
        };
        let bearer = auth::token_from_request_parts(header, None, None, "");
        if let (Some(t), Some(want)) = (bearer, self.publish_token.as_deref()) {
            if constant_time_eq(want.as_bytes(), t.as_bytes()) {
                return Ok(PublishRights::All);
            }
        }
        let Some(token) = bearer else {
            return Err(Denied::unauthorized(
                "publishing needs 'Authorization: Bearer <JWT>' (or --publish-token)",
            ));
        };
        self.verify(token, key, f, "publisher")
            .map(PublishRights::Topics)
    }

    /// Verifies a presented token of either dialect (draft-08 `at+jwt`
    /// tokens; legacy `mercure` claims unless `--mercure-legacy off`); a
    /// refusal is a 401 `invalid_token` naming `who`.
    fn verify(
        &self,
        token: &str,
        key: &Key,
        f: &Facts<'_, '_>,
        who: &str,
    ) -> Result<Grants, Denied> {
        let refused = |why: &str| Denied {
            code: Some("invalid_token"),
            ..Denied::unauthorized(format!("{who} token refused: {why}"))
        };
        #[cfg(feature = "mercure")]
        {
            use auth::draft08::{self, AuthError, InvalidToken, Verified};
            let hub = hub_url(f);
            let policy = draft08::Policy {
                issuer: self.issuer.clone(),
                audience: match (&self.audience, &hub) {
                    (Some(a), _) => a.clone(),
                    (None, Some(h)) => href(h),
                    (None, None) => String::new(),
                },
                legacy: self.legacy,
            };
            match draft08::verify(token, key, &policy, hub.as_ref(), f.now_s) {
                Ok(Verified::Legacy(g)) => Ok(g),
                Ok(Verified::Draft08(g)) => Ok(Grants::from_draft08(g)),
                Err(AuthError::InvalidToken(InvalidToken::Jwt(e))) => Err(refused(e.message())),
                Err(e) => Err(refused(e.message())),
            }
        }
        #[cfg(not(feature = "mercure"))]
        {
            let _ = (&self.issuer, &self.audience, self.legacy);
            match auth::verify(token, key, f.now_s) {
                Ok(c) => Ok(Grants::from_claims(c)),
                Err(e) => Err(refused(e.message())),
            }
        }
    }

    /// Who is subscribing: `None` anonymous (no token, or no key
    /// configured), `Some(grants)` a valid token; a token presented and
    /// refused is a 401 (the reason never quotes the token).
    pub fn subscriber(&self, f: &Facts<'_, '_>) -> Result<Option<Grants>, Denied> {
        let Some(key) = &self.subscriber else {
            return Ok(None);
        };
        let query = f.req.query_first("authorization");
        let cookies = f.req.header("cookie");
        let Some(token) = auth::token_from_request_parts(
            f.req.header("authorization"),
            query.as_deref(),
            cookies,
            &self.cookie,
        )
        .or_else(|| auth::token_from_request_parts(None, None, cookies, DRAFT08_COOKIE)) else {
            return Ok(None);
        };
        self.verify(token, key, f, "subscriber").map(Some)
    }

    /// Whether a subscriber may read `names`: a private stream needs a
    /// token whose subscribe selectors match it (401 without a token, 403
    /// with one that does not). Per name, whether it may see private
    /// events there.
    pub fn subscribe(&self, grants: Option<&Grants>, names: &[&str]) -> Result<Vec<bool>, Denied> {
        let mut sees = Vec::with_capacity(names.len());
        for n in names {
            let ok = grants.is_some_and(|g| g.can_subscribe(n));
            if !ok && self.is_private_stream(n) {
                return Err(match grants {
                    None => Denied::unauthorized(format!("stream {n:?} is private: subscribing needs a JWT (Authorization: Bearer, ?authorization= or the {} cookie)", self.cookie)),
                    Some(_) => Denied::forbidden(format!("the token's mercure.subscribe selectors do not match stream {n:?}")),
                });
            }
            sees.push(ok);
        }
        Ok(sees)
    }
}

/// The cookie draft-08 clients send the token in (after the header, the
/// query and `--jwt-cookie`).
pub const DRAFT08_COOKIE: &str = "__Secure-mercure_access_token";

/// The hub's URL as this request addresses it: `http://` (`https://` when
/// a trusted proxy says `X-Forwarded-Proto: https`), its `Host`, and the
/// hub's path. Draft-08 relative topics and patterns resolve against it,
/// and it is the default audience.
#[cfg(feature = "mercure")]
pub fn hub_url(f: &Facts<'_, '_>) -> Option<auth::url::Url> {
    let host = f.req.header_str("host")?.trim();
    if host.is_empty() || host.contains(['/', '?', '#', '@', '\\']) {
        return None;
    }
    let https = f.via_proxy
        && f.req
            .header_str("x-forwarded-proto")
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let scheme = if https { "https" } else { "http" };
    auth::url::Url::parse(&format!("{scheme}://{host}/.well-known/mercure"), None)
}

/// A hub URL serialized (scheme, host, port unless the default, path).
#[cfg(feature = "mercure")]
pub fn href(u: &auth::url::Url) -> String {
    let port = if u.port().is_empty() {
        String::new()
    } else {
        format!(":{}", u.port())
    };
    format!("{}://{}{port}{}", u.protocol(), u.hostname(), u.pathname())
}

/// The topic a member notification to `member` writes (its internal
/// stream): what a JWT's publish selectors must match.
pub fn member_topic(member: &str) -> String {
    format!("!member/{member}")
}

/// Whether a token's grants cover every topic selector `sel` can match,
/// which is what lets a selector stream's cursor see private updates:
/// decidable only for `*` grants or the very same selector, so anything
/// else stays public-only (never more than the token allows).
/// (Both dialects: [`Grants::covers_selector`].)
pub fn selector_sees_private(grants: Option<&Grants>, sel: &Selector) -> bool {
    grants.is_some_and(|g| g.covers_selector(sel))
}

/// The `/api` user a request authenticates as, from `Authorization:
/// Basic`, given each user's password by bare JID (`password_of`); the
/// `Err` is MongooseIM's reason.
pub fn basic_user<'p>(
    req: &Request<'_>,
    bare_jid: impl Fn(&str) -> Option<String>,
    password_of: impl Fn(&str) -> Option<&'p str>,
) -> Result<String, &'static str> {
    let missing = "Authentication required: HTTP Basic with user@domain:password";
    let h = req.header_str("authorization").ok_or(missing)?;
    let bad = "Invalid credentials";
    let (jid, password) = basic_credentials(h).ok_or(bad)?;
    let jid = bare_jid(&jid).ok_or(bad)?;
    let want = password_of(&jid).ok_or(bad)?;
    if constant_time_eq(want.as_bytes(), password.as_bytes()) {
        Ok(jid)
    } else {
        Err(bad)
    }
}

/// `(user, password)` from an `Authorization` value `Basic <base64>`; the
/// scheme name is case-insensitive (RFC 7617 §2, RFC 7235 §2.1) and may
/// be followed by more than one space.
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, cred) = header.trim().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64_decode(cred.trim())?;
    let text = String::from_utf8(raw).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// One base64 symbol's value.
fn b64_value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some((c - b'A') as u32),
        b'a'..=b'z' => Some((c - b'a') as u32 + 26),
        b'0'..=b'9' => Some((c - b'0') as u32 + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes standard base64 (padding optional); `None` on any bad symbol.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        acc = (acc << 6) | b64_value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A lone trailing symbol carries fewer than 8 bits: not base64.
    (bits < 6).then_some(out)
}

/// Why a request does not get the loopback privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotLocal {
    /// The client is not on loopback (or unknown).
    Remote,
    /// It carries a forwarding header: a proxy on this host relayed it.
    Forwarded,
    /// A browser sent it from a page of another origin (CSRF).
    CrossOrigin,
}

impl NotLocal {
    /// The 403 text: why, and how to publish anyway.
    pub fn message(self) -> &'static str {
        match self {
            NotLocal::Remote => "publishing without a token is allowed from loopback only; set --publish-token (or SSED_PUBLISH_TOKEN) and send 'Authorization: Bearer <token>'",
            NotLocal::Forwarded => "this request came through a proxy (Forwarded, X-Forwarded-For or X-Real-IP), so it is not trusted as local; set --publish-token (or SSED_PUBLISH_TOKEN) and send 'Authorization: Bearer <token>' (and --trusted-proxy ADDR to see client addresses)",
            NotLocal::CrossOrigin => "this request came from a web page of another origin (Origin or Sec-Fetch-Site), so it is not trusted as local; set --publish-token (or SSED_PUBLISH_TOKEN) and send 'Authorization: Bearer <token>'",
        }
    }
}

/// Whether `req` is plainly local, the only kind that may publish without
/// a token: a loopback client, no forwarding header (unless a trusted proxy
/// sent it and `client` is what it forwarded), and no browser context of
/// another origin. ssed's own origin is `http(s)://` + the request's `Host`,
/// which must itself name loopback: a DNS-rebound name is not ssed's. An
/// origin the operator listed by name in `--cors-origin` (not `*`) counts
/// as ssed's own: listing it is trusting that page.
pub fn plainly_local(
    client: Option<IpAddr>,
    req: &Request<'_>,
    via_proxy: bool,
    listed: &[String],
) -> Result<(), NotLocal> {
    match client {
        Some(ip) if ip.is_loopback() || ip.to_canonical().is_loopback() => {}
        _ => return Err(NotLocal::Remote),
    }
    let forwarded = ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| req.header(h).is_some());
    if forwarded && !via_proxy {
        return Err(NotLocal::Forwarded);
    }
    let origin_listed = req
        .header_str("origin")
        .is_some_and(|o| o != "*" && listed.iter().any(|l| l == o));
    if origin_listed {
        return Ok(());
    }
    if let Some(site) = req.header("sec-fetch-site") {
        // `same-site` ignores ports: another server on this host is
        // same-site. Only `same-origin` and `none` (typed, bookmarked) pass.
        let ok = site.eq_ignore_ascii_case(b"same-origin") || site.eq_ignore_ascii_case(b"none");
        if !ok {
            return Err(NotLocal::CrossOrigin);
        }
    }
    if let Some(origin) = req.header("origin") {
        let host = req.header("host").unwrap_or(b"").trim_ascii();
        let own = origin
            .strip_prefix(b"http://")
            .or_else(|| origin.strip_prefix(b"https://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !own || !loopback_host(host) {
            return Err(NotLocal::CrossOrigin);
        }
    }
    Ok(())
}

/// Whether a `Host` value names loopback: `localhost` (and `*.localhost`),
/// `127.x.y.z`, `[::1]`, with any port.
fn loopback_host(host: &[u8]) -> bool {
    let Ok(h) = std::str::from_utf8(host) else {
        return false;
    };
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        h.rsplit_once(':').map_or(h, |(n, _)| n)
    };
    let name = name.to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback() || ip.to_canonical().is_loopback())
}

/// The client a trusted proxy forwarded `req` for: `None` when it carries
/// no `X-Forwarded-For` (or, without one, `Forwarded`) header;
/// `Some(None)` when the client cannot be told (`unknown`, a name). The
/// hops are read right to left, skipping `trusted` proxies (a client's
/// own claims are on the left, behind what each proxy appended); when
/// every hop is trusted the leftmost is the client.
pub fn forwarded_client(req: &Request<'_>, trusted: &[IpAddr]) -> Option<Option<IpAddr>> {
    let mut hops: Vec<&[u8]> = Vec::new();
    for (n, v) in &req.headers {
        if n.eq_ignore_ascii_case("x-forwarded-for") {
            hops.extend(v.split(|&b| b == b','));
        }
    }
    if hops.is_empty() {
        for (n, v) in &req.headers {
            if !n.eq_ignore_ascii_case("forwarded") {
                continue;
            }
            for element in v.split(|&b| b == b',') {
                for pair in element.split(|&b| b == b';') {
                    let pair = pair.trim_ascii();
                    if pair.len() > 4 && pair[..4].eq_ignore_ascii_case(b"for=") {
                        hops.push(&pair[4..]);
                    }
                }
            }
        }
    }
    if hops.is_empty() {
        return None;
    }
    let mut left = None;
    for hop in hops.iter().rev() {
        let ip = hop_ip(hop);
        match ip {
            Some(ip) if trusted.contains(&ip) => left = Some(ip),
            other => return Some(other),
        }
    }
    Some(left)
}

/// One hop of a forwarding header: `1.2.3.4`, `1.2.3.4:80`, `::1`,
/// `"[::1]:80"`.
fn hop_ip(hop: &[u8]) -> Option<IpAddr> {
    let h = std::str::from_utf8(hop).ok()?.trim().trim_matches('"');
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    h.rsplit_once(':')?.0.parse().ok()
}

/// Whether a request may publish when no JWT key is set: with a token
/// configured, only a matching `Authorization: Bearer` (compared in
/// constant time); without one, only plainly local requests (see
/// [`plainly_local`]).
pub fn publish_allowed(
    local: Result<(), NotLocal>,
    authorization: Option<&[u8]>,
    token: Option<&str>,
) -> Result<(), (u16, &'static str)> {
    match token {
        Some(t) => {
            let given = authorization
                .and_then(|a| a.strip_prefix(b"Bearer "))
                .unwrap_or(b"");
            if constant_time_eq(t.as_bytes(), given.trim_ascii()) {
                Ok(())
            } else {
                Err((
                    401,
                    "publishing needs 'Authorization: Bearer <token>' matching --publish-token",
                ))
            }
        }
        None => local.map_err(|why| (403, why.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;

    fn req(raw: &[u8]) -> Request<'_> {
        match http::parse(
            raw,
            http::Limits {
                max_header_bytes: 8192,
                max_body: 1024,
            },
        ) {
            Ok(http::Parsed::Complete(r, _)) => r,
            other => panic!("{other:?}"),
        }
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    #[cfg(feature = "mercure")]
    /// The credential kinds every route is tried with.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Cred {
        None,
        LoopbackPlain,
        Forwarded,
        PublishToken,
        JwtGranted,
        JwtNoGrants,
        JwtExpired,
        CrossOrigin,
    }

    #[cfg(feature = "mercure")]
    const CREDS: [Cred; 8] = [
        Cred::None,
        Cred::LoopbackPlain,
        Cred::Forwarded,
        Cred::PublishToken,
        Cred::JwtGranted,
        Cred::JwtNoGrants,
        Cred::JwtExpired,
        Cred::CrossOrigin,
    ];

    #[cfg(feature = "mercure")]
    fn jwt(claims: serde_json::Value) -> String {
        auth::mint_hs256(&claims, &Key::new(KEY.as_bytes().to_vec()).unwrap())
    }

    #[cfg(feature = "mercure")]
    /// The request head for `c` (`None` peer: not loopback).
    fn head(c: Cred) -> (String, Option<IpAddr>) {
        let lo = Some("127.0.0.1".parse().unwrap());
        let far = Some("203.0.113.9".parse().unwrap());
        let granted = jwt(serde_json::json!({"mercure": {"publish": ["*"], "subscribe": ["*"]}}));
        let none =
            jwt(serde_json::json!({"mercure": {"publish": ["other"], "subscribe": ["other"]}}));
        let expired = jwt(
            serde_json::json!({"exp": NOW - 10, "mercure": {"publish": ["*"], "subscribe": ["*"]}}),
        );
        let (extra, peer) = match c {
            Cred::None => (String::new(), far),
            Cred::LoopbackPlain => (String::new(), lo),
            Cred::Forwarded => ("X-Forwarded-For: 203.0.113.5\r\n".into(), lo),
            Cred::PublishToken => ("Authorization: Bearer s3cret\r\n".into(), far),
            Cred::JwtGranted => (format!("Authorization: Bearer {granted}\r\n"), far),
            Cred::JwtNoGrants => (format!("Authorization: Bearer {none}\r\n"), far),
            Cred::JwtExpired => (format!("Authorization: Bearer {expired}\r\n"), far),
            Cred::CrossOrigin => (
                "Origin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\n".into(),
                lo,
            ),
        };
        (
            format!("POST /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n{extra}Content-Length: 0\r\n\r\n"),
            peer,
        )
    }

    #[cfg(feature = "mercure")]
    fn access(jwt_key: bool, token: bool) -> Access {
        let mut cfg = Config::default();
        if jwt_key {
            cfg.jwt_key = Some(crate::config::Secret(KEY.as_bytes().to_vec()));
        }
        if token {
            cfg.publish_token = Some("s3cret".into());
        }
        cfg.private_streams = vec!["secret".into()];
        Access::from_config(&cfg).unwrap()
    }

    #[cfg(feature = "mercure")]
    /// What each op decides for each credential kind: `Ok(())` or the
    /// refusal's status.
    fn outcome(a: &Access, op: Op<'_>, c: Cred) -> Result<(), u16> {
        let (raw, client) = head(c);
        let r = req(raw.as_bytes());
        let f = Facts {
            req: &r,
            client,
            via_proxy: false,
            now_s: NOW,
        };
        a.decide(op, &f).map(|_| ()).map_err(|d| d.status)
    }

    #[cfg(feature = "mercure")]
    const WRITES: [Op<'static>; 4] = [
        Op::Publish,
        Op::CreateStream("news"),
        Op::DeleteStream("news"),
        Op::MemberPublish("alice"),
    ];

    #[cfg(feature = "mercure")]
    #[test]
    fn every_write_follows_one_rule_with_a_jwt_key() {
        let a = access(true, true);
        for op in WRITES {
            for c in CREDS {
                let want = match c {
                    Cred::PublishToken | Cred::JwtGranted => Ok(()),
                    // A JWT without matching selectors: the open publish is
                    // allowed (topics are checked later), a named write not.
                    Cred::JwtNoGrants if op == Op::Publish => Ok(()),
                    Cred::JwtNoGrants => Err(403),
                    _ => Err(401),
                };
                assert_eq!(outcome(&a, op, c), want, "{op:?} with {c:?}");
            }
        }
    }

    #[cfg(feature = "mercure")]
    #[test]
    fn every_write_follows_one_rule_without_a_key() {
        let open = access(false, false);
        let token = access(false, true);
        for op in WRITES {
            for c in CREDS {
                let want = match c {
                    Cred::LoopbackPlain => Ok(()),
                    _ => Err(403),
                };
                assert_eq!(outcome(&open, op, c), want, "{op:?} with {c:?}, no token");
                let want = match c {
                    Cred::PublishToken => Ok(()),
                    _ => Err(401),
                };
                assert_eq!(outcome(&token, op, c), want, "{op:?} with {c:?}, token");
            }
        }
    }

    #[cfg(feature = "mercure")]
    #[test]
    fn reads_are_public_and_subscribing_checks_a_presented_token() {
        for a in [access(true, true), access(false, false)] {
            for c in CREDS {
                for op in [Op::ListStreams, Op::ReadStats, Op::AppStream] {
                    assert_eq!(outcome(&a, op, c), Ok(()), "{op:?} with {c:?}");
                }
            }
        }
        let a = access(true, true);
        for c in CREDS {
            let want = match c {
                // A bad token is refused rather than read as anonymous;
                // the publish token is no JWT.
                Cred::JwtExpired | Cred::PublishToken => Err(401),
                _ => Ok(()),
            };
            assert_eq!(outcome(&a, Op::Subscribe, c), want, "subscribe with {c:?}");
        }
        // Without a key, no token is read at all.
        let a = access(false, true);
        for c in CREDS {
            assert_eq!(outcome(&a, Op::Subscribe, c), Ok(()), "{c:?}");
        }
    }

    #[cfg(feature = "mercure")]
    #[test]
    fn private_streams_and_selectors() {
        let a = access(true, false);
        let all = Grants {
            publish: vec![],
            subscribe: vec![Selector::parse("*").unwrap()],
            exp: None,
            ..Default::default()
        };
        let other = Grants {
            publish: vec![],
            subscribe: vec![Selector::parse("other").unwrap()],
            exp: None,
            ..Default::default()
        };
        assert_eq!(a.subscribe(None, &["news"]), Ok(vec![false]));
        assert_eq!(a.subscribe(None, &["secret"]).unwrap_err().status, 401);
        assert_eq!(
            a.subscribe(Some(&other), &["secret"]).unwrap_err().status,
            403
        );
        assert_eq!(
            a.subscribe(Some(&all), &["secret", "news"]),
            Ok(vec![true, true])
        );
        assert!(selector_sees_private(
            Some(&all),
            &Selector::parse("https://ex/{x}").unwrap()
        ));
        assert!(!selector_sees_private(
            Some(&other),
            &Selector::parse("https://ex/{x}").unwrap()
        ));
        assert!(!selector_sees_private(None, &Selector::parse("*").unwrap()));
    }

    #[test]
    fn basic_users() {
        let pw = |j: &str| (j == "alice@x").then_some("pw");
        let jid = |s: &str| s.contains('@').then(|| s.to_lowercase());
        let with = |h: &str| {
            let raw = format!("GET / HTTP/1.1\r\nHost: h\r\n{h}\r\n");
            let r = req(raw.as_bytes());
            basic_user(&r, jid, pw)
        };
        // alice@x:pw, ALICE@x:pw, alice@x:no
        assert_eq!(
            with("Authorization: Basic YWxpY2VAeDpwdw==\r\n"),
            Ok("alice@x".into())
        );
        assert_eq!(
            with("Authorization: basic  QUxJQ0VAeDpwdw==\r\n"),
            Ok("alice@x".into())
        );
        assert_eq!(
            with("Authorization: Basic YWxpY2VAeDpubw==\r\n"),
            Err("Invalid credentials")
        );
        assert!(with("").unwrap_err().starts_with("Authentication required"));
        assert_eq!(
            with("Authorization: Bearer x\r\n"),
            Err("Invalid credentials")
        );
    }

    #[test]
    fn publish_rights() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "203.0.113.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let plain = req(b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 0\r\n\r\n");
        let local = |ip| plainly_local(Some(ip), &plain, false, &[]);
        assert!(publish_allowed(local(lo), None, None).is_ok());
        assert!(publish_allowed(local(mapped), None, None).is_ok());
        assert_eq!(publish_allowed(local(far), None, None).unwrap_err().0, 403);
        assert_eq!(
            plainly_local(None, &plain, false, &[]),
            Err(NotLocal::Remote)
        );
        assert!(publish_allowed(local(far), Some(b"Bearer s3cret"), Some("s3cret")).is_ok());
        assert_eq!(
            publish_allowed(local(lo), None, Some("s3cret"))
                .unwrap_err()
                .0,
            401
        );
        assert_eq!(
            publish_allowed(local(lo), Some(b"Bearer s3cre"), Some("s3cret"))
                .unwrap_err()
                .0,
            401
        );
        assert_eq!(
            publish_allowed(local(lo), Some(b"Basic s3cret"), Some("s3cret"))
                .unwrap_err()
                .0,
            401
        );
    }

    #[test]
    fn only_plainly_local_requests_are_local() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let check = |raw: &[u8], via| plainly_local(Some(lo), &req(raw), via, &[]);
        let h = "POST / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 0\r\n";
        let with = |extra: &str| format!("{h}{extra}\r\n");
        assert_eq!(check(with("").as_bytes(), false), Ok(()));
        for f in [
            "X-Forwarded-For: 1.2.3.4\r\n",
            "Forwarded: for=1.2.3.4\r\n",
            "X-Real-IP: 1.2.3.4\r\n",
        ] {
            assert_eq!(
                check(with(f).as_bytes(), false),
                Err(NotLocal::Forwarded),
                "{f}"
            );
            assert_eq!(
                check(with(f).as_bytes(), true),
                Ok(()),
                "{f} from a trusted proxy"
            );
        }
        assert_eq!(
            check(with("Origin: http://127.0.0.1:8080\r\n").as_bytes(), false),
            Ok(())
        );
        assert_eq!(
            check(with("Origin: HTTP://127.0.0.1:8080\r\n").as_bytes(), false),
            Err(NotLocal::CrossOrigin)
        );
        assert_eq!(
            check(with("Origin: http://127.0.0.1:9999\r\n").as_bytes(), false),
            Err(NotLocal::CrossOrigin)
        );
        assert_eq!(
            check(with("Origin: http://evil.example\r\n").as_bytes(), false),
            Err(NotLocal::CrossOrigin)
        );
        assert_eq!(
            check(with("Origin: null\r\n").as_bytes(), false),
            Err(NotLocal::CrossOrigin)
        );
        assert_eq!(
            check(with("Sec-Fetch-Site: cross-site\r\n").as_bytes(), false),
            Err(NotLocal::CrossOrigin)
        );
        assert_eq!(
            check(with("Sec-Fetch-Site: same-site\r\n").as_bytes(), false),
            Err(NotLocal::CrossOrigin)
        );
        assert_eq!(
            check(with("Sec-Fetch-Site: same-origin\r\n").as_bytes(), false),
            Ok(())
        );
        // DNS rebinding: the page's origin equals Host, but Host is not loopback.
        let rebound = b"POST / HTTP/1.1\r\nHost: evil.example:8080\r\nOrigin: http://evil.example:8080\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(check(rebound, false), Err(NotLocal::CrossOrigin));
        let v6 = b"POST / HTTP/1.1\r\nHost: [::1]:8080\r\nOrigin: http://[::1]:8080\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(check(v6, false), Ok(()));
        let named = b"POST / HTTP/1.1\r\nHost: localhost:8080\r\nOrigin: http://localhost:8080\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(check(named, false), Ok(()));
        // An origin listed in --cors-origin is trusted; `*` trusts nobody.
        let page = b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nOrigin: http://127.0.0.2:3000\r\nSec-Fetch-Site: same-site\r\nContent-Length: 0\r\n\r\n";
        let listed = ["http://127.0.0.2:3000".to_string()];
        assert_eq!(plainly_local(Some(lo), &req(page), false, &listed), Ok(()));
        let star = ["*".to_string()];
        assert_eq!(
            plainly_local(Some(lo), &req(page), false, &star),
            Err(NotLocal::CrossOrigin)
        );
    }

    #[test]
    fn forwarded_clients() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let t = [proxy];
        let f = |extra: &str| {
            let raw = format!("GET / HTTP/1.1\r\nHost: h\r\n{extra}\r\n");
            forwarded_client(&req(raw.as_bytes()), &t)
        };
        let ip = |s: &str| Some(Some(s.parse::<IpAddr>().unwrap()));
        assert_eq!(f(""), None);
        assert_eq!(f("X-Forwarded-For: 203.0.113.5\r\n"), ip("203.0.113.5"));
        // A client's own claim on the left is skipped past.
        assert_eq!(
            f("X-Forwarded-For: 127.0.0.1, 203.0.113.5\r\n"),
            ip("203.0.113.5")
        );
        assert_eq!(
            f("X-Forwarded-For: 10.1.1.1\r\nX-Forwarded-For: 203.0.113.5, 127.0.0.1\r\n"),
            ip("203.0.113.5")
        );
        assert_eq!(f("X-Forwarded-For: 127.0.0.1\r\n"), ip("127.0.0.1"));
        assert_eq!(f("X-Forwarded-For: unknown\r\n"), Some(None));
        assert_eq!(
            f("Forwarded: for=192.0.2.60;proto=http;by=203.0.113.43\r\n"),
            ip("192.0.2.60")
        );
        assert_eq!(
            f("Forwarded: for=\"[2001:db8:cafe::17]:4711\"\r\n"),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            f("Forwarded: for=192.0.2.1:80, for=127.0.0.1\r\n"),
            ip("192.0.2.1")
        );
        assert_eq!(f("Forwarded: for=_hidden\r\n"), Some(None));
    }

    #[test]
    fn base64() {
        assert_eq!(
            base64_decode("YWxpY2VAbG9jYWxob3N0OnNlY3JldA==").as_deref(),
            Some(&b"alice@localhost:secret"[..])
        );
        assert_eq!(base64_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64_decode("Zg").as_deref(), Some(&b"f"[..]));
        assert_eq!(base64_decode("Zm8=").as_deref(), Some(&b"fo"[..]));
        assert_eq!(base64_decode("Zm9v").as_deref(), Some(&b"foo"[..]));
        assert_eq!(base64_decode("Z"), None);
        assert_eq!(base64_decode("Zm9v!"), None);
        assert_eq!(base64_decode("Zm 9v"), None);
    }

    #[test]
    fn basic_scheme_is_case_insensitive() {
        // "alice@localhost:secret"
        let b64 = "YWxpY2VAbG9jYWxob3N0OnNlY3JldA==";
        let want = Some(("alice@localhost".to_string(), "secret".to_string()));
        for scheme in ["Basic", "basic", "BASIC", "bAsIc"] {
            assert_eq!(
                basic_credentials(&format!("{scheme} {b64}")),
                want,
                "{scheme}"
            );
        }
        assert_eq!(basic_credentials(&format!("basic   {b64}")), want);
        assert_eq!(basic_credentials(&format!("Bearer {b64}")), None);
        assert_eq!(basic_credentials("Basic"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
    }
}
