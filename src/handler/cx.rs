//! A handler's view of the server for one request ([`Cx`]): the broker
//! (read-only), configuration, access rule, counters, clock, randomness
//! and the request's facts, and the helpers every handler shares: replies
//! built by `http::Response`, the 405 with `Allow`, asking the access rule
//! ([`Cx::allow`]; the rule itself is `crate::access`), the Last-Event-ID
//! reader, and the one place a subscription is planned and started. It
//! only pushes [`Action`]s: it never changes the broker or touches sockets.

use std::borrow::Cow;
use std::net::IpAddr;

use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::Value;

use super::{Action, Publish, Shape, Subscribe, Targets, TickFn};
use crate::access::{Access, Allowed, Denied, Facts, Op, PublishRights};
use crate::auth::Grants;
use crate::broker::{Broker, Resume};
use crate::config::Config;
use crate::frame;
use crate::http::{self, Headers, Method, Request, Response};
use crate::id::ConnKey;
use crate::stats::Counters;

/// A handler's view of the server for one request.
pub struct Cx<'a> {
    /// Streams and history, read-only: handlers decide, the reactor
    /// changes the broker when it applies their decisions.
    pub broker: &'a Broker,
    /// The configuration.
    pub cfg: &'a Config,
    /// The access rule (keys, tokens, private streams).
    pub access: &'a Access,
    /// Active subscriptions this node knows of (`--mercure-subscriptions`).
    pub presence: &'a crate::presence::Presence,
    /// Counters for `/stats`.
    pub counters: &'a mut Counters,
    /// Randomness (retry jitter, app ids).
    pub rng: &'a mut SmallRng,
    /// Milliseconds since server start (the loop turn's clock).
    pub now_ms: u64,
    /// Unix time in µs, read for this request.
    pub unix_us: u64,
    /// The connection the request came on (`None`: a library publish).
    pub conn: Option<ConnKey>,
    /// Its client's address: the peer's, or the one a trusted proxy
    /// forwarded (`--trusted-proxy`). Per-address pools and limits count
    /// the request under it.
    pub peer: Option<IpAddr>,
    /// The trusted proxy forwarded no address ssed could use (`for=unknown`,
    /// an obfuscated name, garbage): `peer` is the proxy's own, so the
    /// pools still apply, but the access rule sees no client address.
    pub unnamed: bool,
    /// The request came from a `--trusted-proxy` and `peer` is the address
    /// it forwarded; its forwarding headers are the proxy's, not the client's.
    pub via_proxy: bool,
    /// CORS headers for this request's origin (empty when not allowed).
    pub cors: Headers,
    /// With `--redis`: whether the bus is up (`None`: no Redis). For
    /// `/healthz` and subscriptions only: publishes never look at it.
    pub redis: Option<bool>,
    /// What to do, in order.
    pub actions: Vec<Action>,
}

impl Cx<'_> {
    /// Decides a publish: the reactor applies it (locally, into the
    /// journal, or through the bus) and answers as `p.reply` says.
    pub fn publish(&mut self, p: Publish) {
        self.actions.push(Action::Publish(Box::new(p)));
    }

    /// The framing of `req`'s response, for an answer built later.
    pub fn shape(&self, req: &Request<'_>) -> Shape {
        Shape::of(req, &self.cors)
    }

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
    pub fn end(&mut self, conn: ConnKey) {
        self.actions.push(Action::End(conn));
    }

    /// The key of the request's client address in the broker's
    /// per-address pools (IPv4 as its IPv6-mapped form; no address: 0).
    pub fn peer_key(&self) -> crate::broker::PeerKey {
        match self.peer {
            Some(IpAddr::V4(v4)) => u128::from(v4.to_ipv6_mapped()),
            Some(IpAddr::V6(v6)) => u128::from(v6),
            None => 0,
        }
    }

    /// The request's facts for the access rule.
    pub fn facts<'r, 'a>(&self, req: &'r Request<'a>) -> Facts<'r, 'a> {
        Facts {
            req,
            client: self.peer.filter(|_| !self.unnamed),
            via_proxy: self.via_proxy,
            now_s: self.unix_us / 1_000_000,
        }
    }

    /// Asks the access rule whether `req` may do `op`; a refusal is
    /// answered (and counted) here, in the core's JSON format.
    pub fn allow(&mut self, req: &Request<'_>, op: Op<'_>) -> Option<Allowed> {
        let decided = self.access.decide(op, &self.facts(req));
        match decided {
            Ok(a) => Some(a),
            Err(d) => {
                self.deny(req, &d);
                None
            }
        }
    }

    /// Answers a refusal of the access rule: its status, reason and
    /// counter, with `WWW-Authenticate: Bearer` on a 401.
    pub fn deny(&mut self, req: &Request<'_>, d: &Denied) {
        self.counters.reject(d.counter);
        let mut resp = Response::error(d.status, &d.msg);
        if d.challenge() {
            resp = resp.header("WWW-Authenticate", "Bearer");
        }
        self.reply(req, resp);
    }

    /// What `req` may write ([`Op::Publish`] and the other writes), `None`
    /// when refused (answered here).
    pub fn writer(&mut self, req: &Request<'_>, op: Op<'_>) -> Option<PublishRights> {
        match self.allow(req, op)? {
            Allowed::Write(r) => Some(r),
            _ => None,
        }
    }

    /// Who is subscribing: `Some(None)` anonymous, `Some(Some(grants))` a
    /// valid token; `None` when a token was presented and refused
    /// (answered 401 here).
    pub fn subscriber(&mut self, req: &Request<'_>) -> Option<Option<Grants>> {
        match self.allow(req, Op::Subscribe)? {
            Allowed::Subscriber(g) => Some(g),
            _ => None,
        }
    }

    /// Per name, whether the subscriber may see private events there;
    /// `None` when a private stream is refused (answered here).
    pub fn subscribe_rights(
        &mut self,
        req: &Request<'_>,
        grants: Option<&Grants>,
        names: &[&str],
    ) -> Option<Vec<bool>> {
        match self.access.subscribe(grants, names) {
            Ok(v) => Some(v),
            Err(d) => {
                self.deny(req, &d);
                None
            }
        }
    }

    /// Where a subscriber with Last-Event-ID `raw` starts: an id a
    /// publisher chose (Mercure's `id` field) while it is remembered, else
    /// ssed's own numeric id. A private event's id is known only to a
    /// subscriber that may see private events (`sees_private`).
    pub fn resume(&self, raw: Option<&str>, sees_private: bool) -> Resume {
        match raw.map(str::trim) {
            Some(r) => match self.broker.alias_id(r, sees_private) {
                Some(id) => Resume::After(id, r.to_string()),
                None => Resume::parse(Some(r)),
            },
            None => Resume::Live,
        }
    }

    /// Whether an event to the public streams `names` is private because
    /// one of them is a `--private-streams` stream.
    pub fn names_private(&self, names: &[String]) -> bool {
        self.access.has_private_streams() && names.iter().any(|n| self.access.is_private_stream(n))
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
        to: Targets,
        resume: &Resume,
        headers: &[(&'static str, String)],
    ) {
        self.stream_as(req, to, &[], resume, headers)
    }

    /// [`Cx::stream`] with a may-see-private bit per target.
    pub fn stream_as(
        &mut self,
        req: &Request<'_>,
        to: Targets,
        sees_private: &[bool],
        resume: &Resume,
        headers: &[(&'static str, String)],
    ) {
        self.stream_until(req, to, sees_private, resume, headers, None)
    }

    /// [`Cx::stream_as`] for a subscriber whose token expires at `until`
    /// (unix seconds): the stream ends then.
    pub fn stream_until(
        &mut self,
        req: &Request<'_>,
        to: Targets,
        sees_private: &[bool],
        resume: &Resume,
        headers: &[(&'static str, String)],
        until: Option<u64>,
    ) {
        let Some((chunked, hs)) = self.stream_start(req, headers) else {
            return;
        };
        let prelude = self.prelude();
        self.actions.push(Action::Subscribe(Box::new(Subscribe {
            head: http::stream_head(req.http10, chunked, &hs),
            chunked,
            prelude,
            to,
            sees_private: sees_private.to_vec(),
            resume: resume.clone(),
            until,
            shape: Shape::of(req, &self.cors),
            presence: None,
        })));
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

/// The cursor a subscriber resumes from: the `Last-Event-ID` header, else
/// the `last_event_id` query parameter, else Mercure's spelling
/// `lastEventID` (the README says either endpoint takes either), since
/// EventSource cannot set headers on its first connection. The header wins: EventSource keeps the query on
/// every reconnect while its header moves on. Not-UTF-8 stays unparsable
/// (so it gets a `gap`) rather than vanishing.
pub fn last_event_id(req: &Request<'_>) -> Option<String> {
    let raw = match req.header("last-event-id") {
        Some(v) => String::from_utf8_lossy(v).trim().to_string(),
        None => req
            .query_first("last_event_id")
            .or_else(|| req.query_first("lastEventID"))
            .map(Cow::into_owned)?,
    };
    let raw = raw.trim();
    (!raw.is_empty()).then(|| raw.to_string())
}
