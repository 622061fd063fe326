//! What a request handler gets and what it gives back. A handler (the core
//! API, the apps) sees a narrow context — the broker, the configuration,
//! the counters, `now`, randomness, the peer — and turns a request into
//! [`Action`]s: respond, start a stream with its catch-up, start a ticker,
//! end other connections, delete a stream. The reactor carries them out.
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
use crate::broker::{Broker, BrokerError, Cursors, Published, Resume};
use crate::config::Config;
use crate::frame;
use crate::http::{self, Headers, Method, Request, Response};
use crate::journal::{self, Link};
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
        /// When the subscriber's token expires (unix seconds): the stream
        /// ends then.
        until: Option<u64>,
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
    /// When the subscriber's token expires (unix seconds).
    pub until: Option<u64>,
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

/// A handler's view of the server for one request.
pub struct Cx<'a> {
    /// Streams and history.
    pub broker: &'a mut Broker,
    /// With `--data-dir`: where a local event is written before it enters
    /// the rings (publish through [`Cx::publish_as`], which does that).
    pub journal: Option<&'a mut Link>,
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
    /// With `--redis`: whether the bus is up (`None`: no Redis; publishes
    /// and resumes then stay on this node).
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
    /// Publishes a local event to `targets`: the broker checks and numbers
    /// it, the journal (with `--data-dir`) writes it, then it enters the
    /// rings. Refused by either, it is published nowhere.
    pub fn publish_as(
        &mut self,
        targets: &[u32],
        private: bool,
        encode: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<Published, Refusal> {
        let p = self
            .broker
            .prepare_publish(targets, self.unix_us, private, encode)?;
        if let Some(j) = self.journal.as_deref_mut() {
            let names = self.broker.names_of(&p);
            j.event(p.id, &names, &p.frame, p.private)
                .map_err(Refusal::Journal)?;
        }
        Ok(self.broker.commit(p))
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

    /// Whether an event to `targets` is private because one of them is a
    /// `--private-streams` stream (so a `*` subscription without a token
    /// does not read it either).
    pub fn targets_private(&self, targets: &[u32]) -> bool {
        self.access.has_private_streams()
            && targets.iter().any(|&t| {
                self.broker
                    .get(t)
                    .is_some_and(|s| self.access.is_private_stream(&s.name))
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
        self.stream_until(req, targets, sees_private, resume, headers, None)
    }

    /// [`Cx::stream_as`] for a subscriber whose token expires at `until`
    /// (unix seconds): the stream ends then.
    pub fn stream_until(
        &mut self,
        req: &Request<'_>,
        targets: &[u32],
        sees_private: &[bool],
        resume: &Resume,
        headers: &[(&'static str, String)],
        until: Option<u64>,
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
                until,
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
            until,
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
