//! What a request handler gets and what it gives back. A handler (the core
//! API, the apps) sees a narrow context — the broker (read-only), the
//! configuration, the counters, `now`, randomness, the peer — and turns a
//! request into [`Action`]s: respond, publish ([`Publish`]: targets, one
//! [`Body`] per event, the private flag, how to [`Reply`]), subscribe
//! ([`Subscribe`]), start a ticker, end other connections, create or
//! delete a stream. The reactor carries them out: it makes the streams a
//! decision names ([`Targets`]), applies every publish in one place, and
//! renders every publish reply. No handler changes the broker or knows
//! whether Redis or a journal is configured when it publishes.
//!
//! Nothing here touches sockets, `Poll` or the clock. The helpers every
//! handler shares live here once: replies built by `http::Response`, the
//! 405 with `Allow`, asking the access rule ([`Cx::allow`]; the rule
//! itself is `crate::access`, and no handler decides access alone), the
//! Last-Event-ID reader, and the one place a subscription is planned and
//! started.

use std::borrow::Cow;
use std::net::IpAddr;

use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::Value;

use crate::access::{Access, Allowed, Denied, Facts, Op, PublishRights};
use crate::auth::Grants;
use crate::broker::{Broker, BrokerError, Create, Resume};
use crate::config::Config;
use crate::frame;
use crate::http::{self, Headers, Method, Request, Response};
use crate::journal;
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
    /// SSE bytes of `prelude` (retry), then catch up from `resume`. The
    /// reactor subscribes it (with `--redis`, once the targets' history is
    /// here: it loads it from Redis first when this node lacks it).
    Subscribe(Box<Subscribe>),
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
    /// Make public stream `name` explicitly (`PUT /streams/NAME`; the
    /// handler checked it can be made) and answer with its entry.
    CreateStream {
        /// The name.
        name: String,
        /// The response's framing.
        shape: Shape,
    },
    /// Flush a stream's subscribers, delete it, end them.
    DeleteStream(u32),
    /// Publish events and answer from the outcome: the reactor applies
    /// every publish decision in one place (`reactor/publish.rs`), locally
    /// (into the journal with `--data-dir`) or through the Redis bus.
    Publish(Box<Publish>),
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

/// A publish decision: what to publish where, and how to answer once the
/// ids are known (or the publish was refused). Handlers build it; the
/// reactor applies it the same way whatever the deployment.
pub struct Publish {
    /// Where to.
    pub to: Targets,
    /// The events, in order; each is spelled once its id is known.
    pub events: Vec<Body>,
    /// Private events reach only subscribers that may see private events.
    pub private: bool,
    /// How to answer.
    pub reply: Reply,
}

/// The streams a publish goes to or a subscription reads. Handlers do not
/// make streams: the reactor finds or makes them when it applies the
/// decision, in this order (repeats once).
pub enum Targets {
    /// Public names, found or made as `by` may (the handler checked they
    /// can be: `Broker::check_resolve`); those a refused publish made are
    /// dropped again while unused.
    Names {
        /// The names.
        names: Vec<String>,
        /// Who makes the missing ones.
        by: Create,
        /// Mercure topics (`valid_topic`), not `/events` names.
        topics: bool,
    },
    /// The apps' internal streams (made when missing: that cannot fail).
    Internal(Vec<Internal>),
    /// A Mercure subscription: exact topics (found or made as `by` may;
    /// checked by the handler), then selector streams (`*`, templates),
    /// made in the pool of `anon`'s address (an anonymous subscriber) or
    /// of token holders; a full pool refuses the subscription (503).
    Topics {
        /// Exact topics, without repeats.
        exact: Vec<String>,
        /// Who makes the missing ones.
        by: Create,
        /// Selectors, without repeats.
        selectors: Vec<crate::auth::Selector>,
        /// The anonymous subscriber's pool.
        anon: Option<crate::broker::PeerKey>,
    },
}

/// An app's internal stream.
pub struct Internal {
    /// Its name (`!member/ID`, `!user/JID`).
    pub name: String,
    /// Its history bounds (within the server's).
    pub cap: Option<crate::broker::Limits>,
    /// How `gap` events name it.
    pub display: Option<String>,
}

/// How an event is spelled once its id is known.
pub enum Body {
    /// `id: N` and the event's own fields (`frame::encode_numbered`).
    Numbered(crate::event::Event),
    /// `id: N`, `event: T` (spelled even for `message`), then `data:`: the
    /// MongooseIM API's order.
    Typed {
        /// The event type.
        event: String,
        /// The data.
        data: String,
    },
    /// Bytes whose `id:` line the publisher chose (a member uuid, a hub
    /// `id`): the same whatever id the server gives the event.
    Fixed(Vec<u8>),
}

/// Ids have at most 16 digits below 2^53: the widest `id:` line.
const WIDEST_ID: u64 = 1_000_000_000_000_000;

impl Body {
    /// The SSE bytes of this event with id `id`.
    pub fn encode(&self, id: u64) -> Vec<u8> {
        match self {
            Body::Numbered(e) => frame::encode_numbered(id, e.event.as_deref(), &e.data, e.retry),
            Body::Typed { event, data } => {
                let mut buf = [0u8; 20];
                frame::Block::with_capacity(data.len() + 48)
                    .id(frame::fmt_u64(id, &mut buf))
                    .event(event)
                    .data(data)
            }
            Body::Fixed(b) => b.clone(),
        }
    }

    /// The most bytes [`Body::encode`] can give, whatever the id.
    pub fn max_len(&self) -> usize {
        match self {
            Body::Fixed(b) => b.len(),
            b => b.encode(WIDEST_ID).len(),
        }
    }

    /// The bus payload: `E` + `{"d","e","r","p"}` (`"t"`: typed), or raw
    /// bytes (`R` public, `P` private). Each node spells the frame once the
    /// id is known ([`bus_frame`]).
    pub fn payload(&self, private: bool) -> Vec<u8> {
        let json = |mut v: Value, typed: bool| {
            if private {
                v["p"] = Value::Bool(true);
            }
            if typed {
                v["t"] = Value::Bool(true);
            }
            let mut out = b"E".to_vec();
            out.extend_from_slice(v.to_string().as_bytes());
            out
        };
        match self {
            Body::Numbered(ev) => json(
                serde_json::json!({ "d": ev.data, "e": ev.event, "r": ev.retry }),
                false,
            ),
            Body::Typed { event, data } => json(serde_json::json!({ "d": data, "e": event }), true),
            Body::Fixed(sse) => {
                let mut out = Vec::with_capacity(sse.len() + 1);
                out.push(if private { b'P' } else { b'R' });
                out.extend_from_slice(sse);
                out
            }
        }
    }
}

/// How a publish is answered; the reactor renders every variant from the
/// outcome (ids, audience, error) in one place, for local and bus
/// publishes alike.
pub enum Reply {
    /// `POST /events`: `{"id","subscribers"}`, or `{"ids",...}` for a batch.
    Ids {
        /// An array was posted.
        batch: bool,
        /// The response's framing.
        shape: Shape,
    },
    /// A member notification: `{"id": uuid, "devices"}`; the member app
    /// indexes the uuid under the event's id.
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
    /// The MongooseIM API: `ok` as JSON, errors as its JSON-string reason;
    /// a chat message is archived once it was delivered.
    Api {
        /// The response's framing.
        shape: Shape,
        /// The body of the 200.
        ok: Value,
        /// The message to archive on success.
        chat: Option<Box<Chat>>,
    },
    /// The Mercure hub: the update's id as `text/plain` (the publisher's
    /// own `id` when it gave one).
    Hub {
        /// The response's framing.
        shape: Shape,
        /// The publisher's id.
        custom: Option<String>,
    },
    /// Nothing: the request answers on its own (a room's affiliation event).
    Silent,
}

/// A MongooseIM chat message to archive for its sender and recipient.
pub struct Chat {
    /// Its uuid.
    pub id: String,
    /// Sender's bare JID.
    pub from: String,
    /// Recipient's bare JID.
    pub to: String,
    /// The body.
    pub body: String,
    /// When it was sent (unix µs).
    pub ts_us: u64,
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

/// A subscription decided: what the reactor needs to plan it with the
/// broker and start the stream.
pub struct Subscribe {
    /// The response head.
    pub head: Vec<u8>,
    /// The body is chunk-framed.
    pub chunked: bool,
    /// SSE bytes before the first event (retry).
    pub prelude: Vec<u8>,
    /// The streams to read.
    pub to: Targets,
    /// Per target (once resolved), whether the subscriber may see private
    /// events there.
    pub sees_private: Vec<bool>,
    /// Where to start.
    pub resume: Resume,
    /// When the subscriber's token expires (unix seconds).
    pub until: Option<u64>,
    /// The framing of a refusal (a full selector pool).
    pub shape: Shape,
}

/// The SSE bytes of a bus payload ([`Body::payload`]) given its id, and
/// whether the event is private; `None` when malformed.
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
            let body = if v.get("t").and_then(Value::as_bool).unwrap_or(false) {
                Body::Typed {
                    event: event?.to_string(),
                    data: data.to_string(),
                }
            } else {
                Body::Numbered(crate::event::Event {
                    data: data.to_string(),
                    event: event.map(str::to_string),
                    retry,
                })
            };
            Some((body.encode(id), private))
        }
        (b'R', sse) if sse.ends_with(b"\n\n") => Some((sse.to_vec(), false)),
        (b'P', sse) if sse.ends_with(b"\n\n") => Some((sse.to_vec(), true)),
        _ => None,
    }
}

/// A handler's view of the server for one request.
pub struct Cx<'a> {
    /// Streams and history, read-only: handlers decide, the reactor
    /// changes the broker when it applies their decisions.
    pub broker: &'a Broker,
    /// The configuration.
    pub cfg: &'a Config,
    /// The access rule (keys, tokens, private streams).
    pub access: &'a Access,
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

/// Why a local publish was refused: by the broker (names, bounds) or by
/// the journal (`--data-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The broker refused it.
    Broker(BrokerError),
    /// The journal could not take it.
    Journal(journal::Refused),
}

impl From<BrokerError> for Refusal {
    fn from(e: BrokerError) -> Self {
        Refusal::Broker(e)
    }
}

impl Refusal {
    /// A message for the client.
    pub fn message(&self) -> String {
        match self {
            Refusal::Broker(e) => e.message(),
            Refusal::Journal(e) => e.message(),
        }
    }
    /// The HTTP status that goes with it.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Broker(e) => status(e),
            Refusal::Journal(journal::Refused::TooLarge { .. }) => 413,
            // Compaction catching up, or a disk that may recover: both pass.
            Refusal::Journal(journal::Refused::Full | journal::Refused::Failed(_)) => 503,
        }
    }
    /// Refused for its size (by a history bound or the journal's budget).
    pub fn too_large(&self) -> bool {
        matches!(
            self,
            Refusal::Broker(BrokerError::TooLarge { .. })
                | Refusal::Journal(journal::Refused::TooLarge { .. })
        )
    }
}

/// The HTTP status of a broker refusal.
pub fn status(e: &BrokerError) -> u16 {
    match e {
        BrokerError::BadName | BrokerError::Reserved => 400,
        BrokerError::NotFound => 404,
        BrokerError::TooLarge { .. } => 413,
        // This address's own share: others are still served.
        BrokerError::TooManyUnclaimedHere { .. } => 429,
        BrokerError::TooMany | BrokerError::TooManyUnclaimed | BrokerError::TooManySelectors(_) => {
            503
        }
    }
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
    pub fn end(&mut self, conn: u32) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_statuses() {
        let big = BrokerError::TooLarge {
            size: 2,
            limit: 1,
            bound: "x",
        };
        for (e, want) in [
            (BrokerError::BadName, 400),
            (BrokerError::Reserved, 400),
            (BrokerError::NotFound, 404),
            (big.clone(), 413),
            (BrokerError::TooMany, 503),
            (BrokerError::TooManyUnclaimed, 503),
            (BrokerError::TooManyUnclaimedHere { limit: 1 }, 429),
            (
                BrokerError::TooManySelectors(crate::broker::SelectorsFull::Peer),
                503,
            ),
        ] {
            assert_eq!(status(&e), want, "{e:?}");
            assert_eq!(Refusal::from(e).status(), want);
        }
        assert!(Refusal::from(big).too_large());
        let j = |r| Refusal::Journal(r);
        let huge = journal::Refused::TooLarge { size: 2, limit: 1 };
        assert_eq!(j(huge.clone()).status(), 413);
        assert!(j(huge.clone()).too_large());
        assert!(j(huge).message().contains("--journal-bytes"));
        assert_eq!(j(journal::Refused::Full).status(), 503);
        assert!(!j(journal::Refused::Full).too_large());
        assert_eq!(j(journal::Refused::Failed("disk".into())).status(), 503);
    }

    #[test]
    fn bus_payloads_round_trip() {
        let ev = crate::event::Event {
            data: "a\nb".into(),
            event: Some("t".into()),
            retry: Some(5),
        };
        let body = Body::Numbered(ev);
        let f = bus_frame(42, &body.payload(false)).unwrap();
        assert_eq!(
            f,
            (
                frame::encode_numbered(42, Some("t"), "a\nb", Some(5)),
                false
            )
        );
        assert!(
            bus_frame(42, &body.payload(true)).unwrap().1,
            "private survives the bus"
        );
        let raw = b"id: u\ndata: x\n\n";
        assert_eq!(
            bus_frame(1, &Body::Fixed(raw.to_vec()).payload(false)).unwrap(),
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
