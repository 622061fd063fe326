//! The decision contract: what a handler gives back. [`Action`] (respond,
//! subscribe, tick, end, make or delete a stream, publish, stats), the
//! publish decision ([`Publish`]: [`Targets`], one [`Body`] per event, the
//! private flag, how to [`Reply`]), a decided subscription ([`Subscribe`])
//! and the framing of an answer built later ([`Shape`]). Plain data the
//! reactor carries out; nothing here reads the broker, decides access or
//! knows whether Redis or a journal is configured.

use serde_json::Value;

use crate::broker::{Create, Resume, StreamIdx};
use crate::frame;
use crate::http::{Headers, Method, Request, Response};
use crate::id::{ConnKey, EventId};

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
    End(ConnKey),
    /// Make public stream `name` explicitly (`PUT /streams/NAME`; the
    /// handler checked it can be made) and answer with its entry.
    CreateStream {
        /// The name.
        name: String,
        /// The response's framing.
        shape: Shape,
    },
    /// Flush a stream's subscribers, delete it, end them.
    DeleteStream(StreamIdx),
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
const WIDEST_ID: EventId = EventId::new(1_000_000_000_000_000);

impl Body {
    /// The SSE bytes of this event with id `id`.
    pub fn encode(&self, id: EventId) -> Vec<u8> {
        match self {
            Body::Numbered(e) => frame::encode_numbered(id, e.event.as_deref(), &e.data, e.retry),
            Body::Typed { event, data } => {
                let mut buf = [0u8; 20];
                frame::Block::with_capacity(data.len() + 48)
                    .id(frame::fmt_id(id, &mut buf))
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
    /// A hub subscriber whose subscriptions are announced
    /// (`--mercure-subscriptions`).
    pub presence: Option<Box<crate::presence::Joined>>,
}
