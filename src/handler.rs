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
    /// Its peer's address.
    pub peer: Option<IpAddr>,
    /// CORS headers for this request's origin (empty when not allowed).
    pub cors: Headers,
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
        match publish_allowed(
            self.peer,
            req.header("authorization"),
            self.cfg.publish_token.as_deref(),
        ) {
            Ok(()) => true,
            Err((status, msg)) => {
                let mut resp = Response::error(status, msg);
                if status == 401 {
                    self.counters.reject("unauthorized");
                    resp = resp.header("WWW-Authenticate", "Bearer");
                } else {
                    self.counters.reject("forbidden");
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
            return match publish_allowed(self.peer, header, self.cfg.publish_token.as_deref()) {
                Ok(()) => Some(PublishRights::All),
                Err((status, msg)) => {
                    self.deny(req, status, msg);
                    None
                }
            };
        };
        let bearer = auth::token_from_request_parts(header, None, None, "");
        if let (Some(t), Some(want)) = (bearer, self.cfg.publish_token.as_deref()) {
            if http::constant_time_eq(t.as_bytes(), want.as_bytes()) {
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
        let chunked = !req.http10 && CHUNKED_STREAMS;
        let mut hs = self.cors.clone();
        hs.extend_from_slice(headers);
        if req.method == Method::Head {
            // The head a GET would get, then close: a stream has no end
            // for a Content-Length to describe.
            let bytes = http::stream_head(req.http10, chunked, &hs);
            self.actions.push(Action::Respond { bytes, close: true });
            return;
        }
        let mut prelude = self.prelude();
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
        let chunked = !req.http10 && CHUNKED_STREAMS;
        let mut hs = self.cors.clone();
        hs.extend_from_slice(headers);
        if req.method == Method::Head {
            let bytes = http::stream_head(req.http10, chunked, &hs);
            self.actions.push(Action::Respond { bytes, close: true });
            return;
        }
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
pub const CHUNKED_STREAMS: bool = false;

/// Whether a request may publish: with a token configured, only a matching
/// `Authorization: Bearer` (compared in constant time); without one, only
/// loopback peers.
pub fn publish_allowed(
    peer: Option<IpAddr>,
    authorization: Option<&[u8]>,
    token: Option<&str>,
) -> Result<(), (u16, &'static str)> {
    match token {
        Some(t) => {
            let given = authorization.and_then(|a| a.strip_prefix(b"Bearer ")).unwrap_or(b"");
            if http::constant_time_eq(given.trim_ascii(), t.as_bytes()) {
                Ok(())
            } else {
                Err((401, "publishing needs 'Authorization: Bearer <token>' matching --publish-token"))
            }
        }
        None => match peer {
            Some(ip) if ip.is_loopback() || ip.to_canonical().is_loopback() => Ok(()),
            _ => Err((403, "publishing is allowed from loopback only; set --publish-token (or SSED_PUBLISH_TOKEN) to publish from elsewhere")),
        },
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

    #[test]
    fn publish_rights() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let far: IpAddr = "203.0.113.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(publish_allowed(Some(lo), None, None).is_ok());
        assert!(publish_allowed(Some(mapped), None, None).is_ok());
        assert_eq!(publish_allowed(Some(far), None, None).unwrap_err().0, 403);
        assert_eq!(publish_allowed(None, None, None).unwrap_err().0, 403);
        assert!(publish_allowed(Some(far), Some(b"Bearer s3cret"), Some("s3cret")).is_ok());
        assert_eq!(
            publish_allowed(Some(lo), None, Some("s3cret"))
                .unwrap_err()
                .0,
            401
        );
        assert_eq!(
            publish_allowed(Some(lo), Some(b"Bearer s3cre"), Some("s3cret"))
                .unwrap_err()
                .0,
            401
        );
        assert_eq!(
            publish_allowed(Some(lo), Some(b"Basic s3cret"), Some("s3cret"))
                .unwrap_err()
                .0,
            401
        );
    }

    #[test]
    fn constant_time() {
        assert!(http::constant_time_eq(b"abc", b"abc"));
        assert!(!http::constant_time_eq(b"abd", b"abc"));
        assert!(!http::constant_time_eq(b"abcd", b"abc"));
        assert!(!http::constant_time_eq(b"", b"abc"));
    }
}
