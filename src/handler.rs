//! What a request handler gets and what it gives back. A handler (the core
//! API, the apps) sees a narrow context — the broker, the configuration,
//! the counters, `now`, randomness, the peer — and turns a request into
//! [`Action`]s: respond, start a stream with its catch-up, start a ticker,
//! end other connections, delete a stream. The reactor carries them out.
//!
//! Nothing here touches sockets, `Poll` or the clock. The helpers every
//! handler shares live here once: replies built by `http::Response`, the
//! 405 with `Allow`, publish rights, the Last-Event-ID reader, and the one
//! place a subscription is planned and started.

use std::borrow::Cow;
use std::net::IpAddr;

use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::Value;

use crate::auth::hmac::constant_time_eq;
use crate::auth::{self, Grants, Key, Selector};
use crate::broker::{Broker, Cursors, Resume};
use crate::config::Config;
use crate::frame;
use crate::http::{self, Headers, Method, Request, Response};
use crate::stats::Counters;

/// Produces the next frame of a ticking connection given the time in ms
/// since server start.
pub type TickFn = Box<dyn FnMut(u64) -> Vec<u8>>;

/// What the reactor is to do for a request.
pub enum Action {
    /// Write a response; `close` ends the connection once it is out.
    Respond {
        /// The response bytes.
        bytes: Vec<u8>,
        /// Close after writing.
        close: bool,
    },
    /// Turn this connection into an event stream: write `head`, then the
    /// SSE bytes of `prelude` (retry, gap), then catch up from history.
    Stream {
        /// The response head.
        head: Vec<u8>,
        /// The body is chunk-framed.
        chunked: bool,
        /// SSE bytes before the first event.
        prelude: Vec<u8>,
        /// Positions in the streams, from `Broker::subscribe`.
        cursors: Cursors,
    },
    /// Turn this connection into a ticking stream.
    Tick {
        /// The response head.
        head: Vec<u8>,
        /// The body is chunk-framed.
        chunked: bool,
        /// SSE bytes before the first tick.
        prelude: Vec<u8>,
        /// Time between ticks.
        interval_ms: u64,
        /// Time to the first tick.
        first_in_ms: u64,
        /// Makes each frame.
        next: TickFn,
    },
    /// End another connection's stream gracefully.
    End(u32),
    /// Flush a stream's subscribers, delete it, end them.
    DeleteStream(u32),
    /// Run the fan-out now: so much was published in one turn that the
    /// rings could overtake even fast readers before the loop sleeps.
    Flush,
    /// With `--redis`: publish through the bus (Redis allocates the ids);
    /// the connection's input waits and the reply goes out once Redis
    /// accepted every event (or refused one).
    BusPublish(Box<BusPublish>),
    /// With `--redis`: start a stream once the targets' history is here
    /// (the reactor loads it from Redis first when this node lacks it).
    BusStream(Box<BusStream>),
    /// Answer with `/stats` (JSON) or `/metrics` (Prometheus): the reactor
    /// holds the gauges.
    Stats {
        /// `/metrics`.
        prometheus: bool,
        /// HTTP/1.0 request.
        http10: bool,
        /// Keep the connection.
        keep_alive: bool,
        /// A `HEAD` request.
        head_only: bool,
        /// CORS headers.
        headers: Headers,
    },
}

/// Events to publish through the bus, and how to answer once they are in.
pub struct BusPublish {
    /// Target streams.
    pub targets: Vec<u32>,
    /// One bus payload per event ([`bus_payload`], [`bus_payload_raw`]).
    pub payloads: Vec<Vec<u8>>,
    /// The reply to build from the ids.
    pub reply: Deferred,
}

/// How a deferred publish is answered.
pub enum Deferred {
    /// `POST /events`: `{"id","subscribers"}`, or `{"ids",...}` for a batch.
    Ids {
        /// An array was posted.
        batch: bool,
        /// The response's framing.
        shape: Shape,
    },
    /// A member notification: `{"id": uuid, "devices"}`; the reactor also
    /// tells the app which id the uuid got.
    #[cfg(feature = "apps")]
    Member {
        /// The member.
        member: String,
        /// The event's uuid.
        uuid: String,
        /// The response's framing.
        shape: Shape,
    },
    /// The library [`crate::Publisher`]: the id goes back on its channel.
    Library,
}

/// What a response built later needs from its request.
pub struct Shape {
    /// HTTP/1.0.
    pub http10: bool,
    /// Keep the connection.
    pub keep_alive: bool,
    /// A `HEAD` request.
    pub head_only: bool,
    /// CORS headers.
    pub cors: Headers,
}

impl Shape {
    /// The framing of `req`'s response.
    pub fn of(req: &Request<'_>, cors: &Headers) -> Shape {
        Shape {
            http10: req.http10,
            keep_alive: req.keep_alive,
            head_only: req.method == Method::Head,
            cors: cors.clone(),
        }
    }
    /// Encodes `resp` as the answer.
    pub fn encode(&self, resp: Response) -> Vec<u8> {
        resp.with(&self.cors)
            .encode(self.http10, self.keep_alive, self.head_only)
    }
}

/// A stream whose start waits for history from the bus.
pub struct BusStream {
    /// The response head.
    pub head: Vec<u8>,
    /// The body is chunk-framed.
    pub chunked: bool,
    /// SSE bytes before the first event (retry).
    pub prelude: Vec<u8>,
    /// The streams to read.
    pub targets: Vec<u32>,
    /// Per target, whether the subscriber may see private events there.
    pub sees_private: Vec<bool>,
    /// Where to start.
    pub resume: Resume,
}

/// A bus payload for a core event: `E` + `{"d","e","r","p"}`; each node
/// encodes the frame once the id is known (`p`: a private event).
pub fn bus_payload(ev: &crate::event::Event, private: bool) -> Vec<u8> {
    let mut v = serde_json::json!({ "d": ev.data, "e": ev.event, "r": ev.retry });
    if private {
        v["p"] = Value::Bool(true);
    }
    let mut out = b"E".to_vec();
    out.extend_from_slice(v.to_string().as_bytes());
    out
}

/// A bus payload for an event whose SSE bytes do not depend on the id
/// (the member app writes its own `id:` line): `R` + the bytes.
pub fn bus_payload_raw(sse: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sse.len() + 1);
    out.push(b'R');
    out.extend_from_slice(sse);
    out
}

/// The SSE bytes of a bus payload given its id, and whether the event is
/// private; `None` when malformed.
pub fn bus_frame(id: u64, payload: &[u8]) -> Option<(Vec<u8>, bool)> {
    match payload.split_first()? {
        (b'E', json) => {
            let v: Value = serde_json::from_slice(json).ok()?;
            let data = v.get("d")?.as_str()?;
            let event = match v.get("e") {
                None | Some(Value::Null) => None,
                Some(e) => Some(e.as_str().filter(|t| frame::valid_event_type(t))?),
            };
            let retry = match v.get("r") {
                None | Some(Value::Null) => None,
                Some(r) => Some(u32::try_from(r.as_u64()?).ok()?),
            };
            let private = v.get("p").and_then(Value::as_bool).unwrap_or(false);
            Some((frame::encode_numbered(id, event, data, retry), private))
        }
        (b'R', sse) if sse.ends_with(b"\n\n") => Some((sse.to_vec(), false)),
        _ => None,
    }
}

/// JWT keys, the token cookie and the private-stream selectors, checked
/// once at start. `Debug` prints no key.
#[derive(Debug, Default)]
pub struct Auth {
    publisher: Option<Key>,
    subscriber: Option<Key>,
    cookie: String,
    private_streams: Vec<Selector>,
}

/// Why the authorization settings were refused at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// A key shorter than 256 bits; names the setting.
    ShortKey(&'static str),
    /// A `--private-streams` value that is no selector.
    BadSelector(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::ShortKey(k) => write!(f, "{k} is shorter than 256 bits (32 bytes)"),
            AuthError::BadSelector(s) => {
                write!(f, "--private-streams {s:?} is not a topic selector")
            }
        }
    }
}

impl std::error::Error for AuthError {}

impl Auth {
    /// Checks the configuration's keys and selectors.
    pub fn from_config(cfg: &Config) -> Result<Auth, AuthError> {
        let key = |k: &Option<crate::config::Secret>, what| {
            k.as_ref()
                .map(|s| Key::new(s.0.clone()).map_err(|_| AuthError::ShortKey(what)))
                .transpose()
        };
        let publisher = key(&cfg.jwt_key, "--jwt-key")?;
        let subscriber =
            key(&cfg.subscriber_jwt_key, "--subscriber-jwt-key")?.or(publisher.clone());
        let private_streams = cfg
            .private_streams
            .iter()
            .map(|p| Selector::parse(p).map_err(|_| AuthError::BadSelector(p.clone())))
            .collect::<Result<_, _>>()?;
        Ok(Auth {
            publisher,
            subscriber,
            cookie: cfg.jwt_cookie.clone(),
            private_streams,
        })
    }
    /// Whether stream `name` is readable only with a matching token.
    pub fn is_private_stream(&self, name: &str) -> bool {
        auth::any_match(&self.private_streams, name)
    }
}

/// What a publisher may publish to.
#[derive(Debug)]
pub enum PublishRights {
    /// Anything (`--publish-token`, or loopback with no keys configured).
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
}

/// A handler's view of the server for one request.
pub struct Cx<'a> {
    /// Streams and history.
    pub broker: &'a mut Broker,
    /// The configuration.
    pub cfg: &'a Config,
    /// Keys and private streams.
    pub auth: &'a Auth,
    /// Counters for `/stats`.
    pub counters: &'a mut Counters,
    /// Randomness (retry jitter, app ids).
    pub rng: &'a mut SmallRng,
    /// Milliseconds since server start (the loop turn's clock).
    pub now_ms: u64,
    /// Unix time in µs, read for this request.
    pub unix_us: u64,
    /// The connection the request came on.
    pub conn: u32,
    /// Its client's address: the peer's, or the one a trusted proxy
    /// forwarded (`--trusted-proxy`).
    pub peer: Option<IpAddr>,
    /// The request came from a `--trusted-proxy` and `peer` is the address
    /// it forwarded; its forwarding headers are the proxy's, not the client's.
    pub via_proxy: bool,
    /// CORS headers for this request's origin (empty when not allowed).
    pub cors: Headers,
    /// With `--redis`: whether the bus is up (`None`: no Redis; publishes
    /// and resumes then stay on this node).
    pub redis: Option<bool>,
    /// What to do, in order.
    pub actions: Vec<Action>,
}

impl Cx<'_> {
    /// Replies to `req` with `resp` (CORS headers added; a `HEAD` gets the
    /// head a `GET` would).
    pub fn reply(&mut self, req: &Request<'_>, resp: Response) {
        let bytes =
            resp.with(&self.cors)
                .encode(req.http10, req.keep_alive, req.method == Method::Head);
        self.actions.push(Action::Respond {
            bytes,
            close: !req.keep_alive,
        });
    }
    /// A 200 with a body.
    pub fn ok(&mut self, req: &Request<'_>, ctype: &'static str, body: impl Into<Vec<u8>>) {
        self.reply(req, Response::new(200, ctype, body));
    }
    /// A JSON 200.
    pub fn ok_json(&mut self, req: &Request<'_>, v: &Value) {
        self.reply(req, Response::json(200, v));
    }
    /// A JSON error; the connection stays open.
    pub fn fail(&mut self, req: &Request<'_>, status: u16, msg: &str) {
        self.reply(req, Response::error(status, msg));
    }
    /// A 405 naming the allowed methods.
    pub fn not_allowed(&mut self, req: &Request<'_>, allow: &str) {
        self.reply(req, Response::not_allowed(allow));
    }
    /// Ends another connection's stream.
    pub fn end(&mut self, conn: u32) {
        self.actions.push(Action::End(conn));
    }

    /// Checks publish rights for `req`, answering 401/403 itself when
    /// refused.
    pub fn authorize(&mut self, req: &Request<'_>) -> bool {
        let local = plainly_local(self.peer, req, self.via_proxy, &self.cfg.cors_origins);
        match publish_allowed(
            local,
            req.header("authorization"),
            self.cfg.publish_token.as_deref(),
        ) {
            Ok(()) => true,
            Err((status, msg)) => {
                let mut resp = Response::error(status, msg);
                if status == 401 {
                    self.counters.reject("unauthorized");
                    resp = resp.header("WWW-Authenticate", "Bearer");
                } else if local == Err(NotLocal::Remote) {
                    self.counters.reject("forbidden");
                } else {
                    // Loopback, but forwarded or from a page of another
                    // origin: the confused-deputy cases, counted apart.
                    self.counters.reject("forbidden_not_local");
                }
                self.reply(req, resp);
                false
            }
        }
    }

    fn deny(&mut self, req: &Request<'_>, status: u16, msg: &str) {
        let mut resp = Response::error(status, msg);
        if status == 401 {
            self.counters.reject("unauthorized");
            resp = resp.header("WWW-Authenticate", "Bearer");
        } else {
            self.counters.reject("forbidden");
        }
        self.reply(req, resp);
    }

    /// Who is subscribing: `Some(None)` anonymous (no token, or no key
    /// configured), `Some(Some(grants))` a valid token; `None` when a token
    /// was presented and refused (answered 401 here; the reason never
    /// quotes the token).
    pub fn subscriber(&mut self, req: &Request<'_>) -> Option<Option<Grants>> {
        let Some(key) = &self.auth.subscriber else {
            return Some(None);
        };
        let query = req.query_first("authorization");
        let Some(token) = auth::token_from_request_parts(
            req.header("authorization"),
            query.as_deref(),
            req.header("cookie"),
            &self.auth.cookie,
        ) else {
            return Some(None);
        };
        match auth::verify(token, key, self.unix_us / 1_000_000) {
            Ok(c) => Some(Some(Grants::from_claims(c))),
            Err(e) => {
                self.deny(
                    req,
                    401,
                    &format!("subscriber token refused: {}", e.message()),
                );
                None
            }
        }
    }

    /// Checks that a subscriber may read `names`: a private stream needs a
    /// token whose subscribe selectors match it (401 without a token, 403
    /// with one that does not). Returns, per name, whether the subscriber
    /// may see private events there; `None` when refused (answered here).
    pub fn subscribe_rights(
        &mut self,
        req: &Request<'_>,
        grants: Option<&Grants>,
        names: &[&str],
    ) -> Option<Vec<bool>> {
        let mut sees = Vec::with_capacity(names.len());
        for n in names {
            let ok = grants.is_some_and(|g| g.can_subscribe(n));
            if !ok && self.auth.is_private_stream(n) {
                let (status, msg) = match grants {
                    None => (401, format!("stream {n:?} is private: subscribing needs a JWT (Authorization: Bearer, ?authorization= or the {} cookie)", self.auth.cookie)),
                    Some(_) => (403, format!("the token's mercure.subscribe selectors do not match stream {n:?}")),
                };
                self.deny(req, status, &msg);
                return None;
            }
            sees.push(ok);
        }
        Some(sees)
    }

    /// What `req` may publish: `--publish-token` as the bearer grants
    /// everything; else a JWT in `Authorization: Bearer` (never a cookie
    /// or the query, which a cross-site form could send) grants what its
    /// publish selectors match; else, with no key and no token configured,
    /// loopback peers may publish anything. `None` when refused (answered
    /// 401/403 here).
    pub fn publish_rights(&mut self, req: &Request<'_>) -> Option<PublishRights> {
        let header = req.header("authorization");
        let Some(key) = &self.auth.publisher else {
            // No JWT key: the token or the plainly-local rule, as always.
            return self.authorize(req).then_some(PublishRights::All);
        };
        let bearer = auth::token_from_request_parts(header, None, None, "");
        if let (Some(t), Some(want)) = (bearer, self.cfg.publish_token.as_deref()) {
            if constant_time_eq(want.as_bytes(), t.as_bytes()) {
                return Some(PublishRights::All);
            }
        }
        let Some(token) = bearer else {
            self.deny(
                req,
                401,
                "publishing needs 'Authorization: Bearer <JWT>' (or --publish-token)",
            );
            return None;
        };
        match auth::verify(token, key, self.unix_us / 1_000_000) {
            Ok(c) => Some(PublishRights::Topics(Grants::from_claims(c))),
            Err(e) => {
                self.deny(
                    req,
                    401,
                    &format!("publisher token refused: {}", e.message()),
                );
                None
            }
        }
    }

    /// Where a subscriber with Last-Event-ID `raw` starts: an id a
    /// publisher chose (Mercure's `id` field) while it is remembered, else
    /// ssed's own numeric id.
    pub fn resume(&self, raw: Option<&str>) -> Resume {
        match raw.map(str::trim) {
            Some(r) => match self.broker.alias_id(r) {
                Some(id) => Resume::After(id, r.to_string()),
                None => Resume::parse(Some(r)),
            },
            None => Resume::Live,
        }
    }

    /// Whether an event to `targets` is private because one of them is a
    /// `--private-streams` stream (so a `*` subscription without a token
    /// does not read it either).
    pub fn targets_private(&self, targets: &[u32]) -> bool {
        !self.auth.private_streams.is_empty()
            && targets.iter().any(|&t| {
                self.broker
                    .get(t)
                    .is_some_and(|s| self.auth.is_private_stream(&s.name))
            })
    }

    fn prelude(&mut self) -> Vec<u8> {
        let base = self.cfg.retry_ms;
        let ms = self
            .rng
            .gen_range(base..base.saturating_mul(2).max(base + 1));
        frame::retry(ms)
    }

    /// The framing and headers of a stream response to `req`; `None` when
    /// it is a `HEAD`, answered here with the head a `GET` would get, then
    /// a close (a stream has no end for a Content-Length to describe).
    fn stream_start(
        &mut self,
        req: &Request<'_>,
        headers: &[(&'static str, String)],
    ) -> Option<(bool, Headers)> {
        let chunked = !req.http10 && CHUNKED_STREAMS;
        let mut hs = self.cors.clone();
        hs.extend_from_slice(headers);
        if req.method == Method::Head {
            let bytes = http::stream_head(req.http10, chunked, &hs);
            self.actions.push(Action::Respond { bytes, close: true });
            return None;
        }
        Some((chunked, hs))
    }

    /// Starts an event stream on this connection reading `targets` from
    /// `resume`: the one place a subscription is planned and begun.
    pub fn stream(
        &mut self,
        req: &Request<'_>,
        targets: &[u32],
        resume: &Resume,
        headers: &[(&'static str, String)],
    ) {
        self.stream_as(req, targets, &[], resume, headers)
    }

    /// [`Cx::stream`] with a may-see-private bit per target.
    pub fn stream_as(
        &mut self,
        req: &Request<'_>,
        targets: &[u32],
        sees_private: &[bool],
        resume: &Resume,
        headers: &[(&'static str, String)],
    ) {
        let Some((chunked, hs)) = self.stream_start(req, headers) else {
            return;
        };
        let mut prelude = self.prelude();
        if self.redis.is_some() {
            self.actions.push(Action::BusStream(Box::new(BusStream {
                head: http::stream_head(req.http10, chunked, &hs),
                chunked,
                prelude,
                targets: targets.to_vec(),
                sees_private: sees_private.to_vec(),
                resume: resume.clone(),
            })));
            return;
        }
        let c = self
            .broker
            .subscribe_as(self.conn, targets, sees_private, resume);
        if let Some(g) = &c.gap {
            prelude.extend_from_slice(g);
        }
        self.actions.push(Action::Stream {
            head: http::stream_head(req.http10, chunked, &hs),
            chunked,
            prelude,
            cursors: c.cursors,
        });
    }

    /// Starts a ticking stream on this connection: `next` makes a frame
    /// every `interval_ms`, the first after `first_in_ms`.
    pub fn ticker(
        &mut self,
        req: &Request<'_>,
        headers: &[(&'static str, String)],
        interval_ms: u64,
        first_in_ms: u64,
        next: TickFn,
    ) {
        let Some((chunked, hs)) = self.stream_start(req, headers) else {
            return;
        };
        let prelude = self.prelude();
        self.actions.push(Action::Tick {
            head: http::stream_head(req.http10, chunked, &hs),
            chunked,
            prelude,
            interval_ms,
            first_in_ms,
            next,
        });
    }
}

/// Whether HTTP/1.1 event streams are chunk-framed.
pub const CHUNKED_STREAMS: bool = true;

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

/// Whether a request may publish: with a token configured, only a matching
/// `Authorization: Bearer` (compared in constant time); without one, only
/// plainly local requests (see [`plainly_local`]).
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

/// The cursor a subscriber resumes from: the `Last-Event-ID` header, else
/// the `last_event_id` query parameter (EventSource cannot set headers on
/// its first connection). The header wins: EventSource keeps the query on
/// every reconnect while its header moves on. Not-UTF-8 stays unparsable
/// (so it gets a `gap`) rather than vanishing.
pub fn last_event_id(req: &Request<'_>) -> Option<String> {
    let raw = match req.header("last-event-id") {
        Some(v) => String::from_utf8_lossy(v).trim().to_string(),
        None => req.query_first("last_event_id").map(Cow::into_owned)?,
    };
    let raw = raw.trim();
    (!raw.is_empty()).then(|| raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn bus_payloads_round_trip() {
        let ev = crate::event::Event {
            data: "a\nb".into(),
            event: Some("t".into()),
            retry: Some(5),
        };
        let f = bus_frame(42, &bus_payload(&ev, false)).unwrap();
        assert_eq!(
            f,
            (
                frame::encode_numbered(42, Some("t"), "a\nb", Some(5)),
                false
            )
        );
        assert!(
            bus_frame(42, &bus_payload(&ev, true)).unwrap().1,
            "private survives the bus"
        );
        let raw = b"id: u\ndata: x\n\n";
        assert_eq!(
            bus_frame(1, &bus_payload_raw(raw)).unwrap(),
            (raw.to_vec(), false)
        );
        for bad in [
            &b""[..],
            b"X",
            b"E{",
            b"E{\"d\":1}",
            b"E{\"d\":\"x\",\"e\":\"a:b\"}",
            b"Rdata: x",
        ] {
            assert!(bus_frame(1, bad).is_none(), "{bad:?}");
        }
    }
}
