//! The one publish path (issue 19), as a part the driver owns: every
//! publisher — `POST /events`, the library `Publisher`, member
//! notifications, the MongooseIM API, the Mercure hub — hands the driver a
//! [`Publish`] decision, and [`apply`] routes it the same way whatever the
//! deployment: to the bus link when `--redis` is set (Redis gives the ids,
//! the reply waits), else locally ([`apply_local`]: the broker prepares
//! each event, the journal writes it with `--data-dir`, the broker commits
//! it). [`settle`] closes every publish, local or bus, and one renderer
//! ([`render`]) builds its reply from the outcome (ids, audience,
//! failure). One function ([`entered`]) indexes what the publisher named
//! an event whichever way it entered the rings (published here, announced
//! by the bus, read back from a journal), so custom ids and member uuids
//! resume on every node and across restarts.
//!
//! Functions over the broker, the apps and the journal link: it never
//! names the driver and writes to no socket. The driver sends the
//! [`Answer`] (or holds it until the journal's fsync covers it, see
//! `durable.rs`). It must not decide access or parse requests (handlers
//! did).

use std::sync::mpsc;

use serde_json::{json, Value};

use super::conn::ConnKey;
use crate::apps::Apps;
use crate::broker::{Broker, BrokerError, StreamIdx};
use crate::event::PublishError;
use crate::handler::{Publish, Refusal, Reply, Shape, Targets};
use crate::http::Response;
use crate::id::EventId;
use crate::journal::Link;
use crate::stats::Counters;

/// Who a publish answers.
pub(super) enum To {
    /// A connection (its input waits while a bus publish is in flight).
    Conn(ConnKey),
    /// The library [`crate::Publisher`]'s channel.
    Library(mpsc::Sender<Result<u64, PublishError>>),
    /// Nobody: the request answers on its own, or its connection went away.
    Nobody,
}

/// Why a publish stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    /// The HTTP status that goes with it.
    pub status: u16,
    /// The message for the client.
    pub msg: String,
    /// Refused for its size.
    pub too_large: bool,
    /// The `/stats` rejection counter it is, if any beyond the caller's.
    pub reason: Option<&'static str>,
}

impl Failure {
    /// Redis cannot take it now (down, timed out): 503, may pass.
    pub fn redis_unavailable() -> Failure {
        Failure {
            status: 503,
            msg: "redis unavailable".into(),
            too_large: false,
            reason: None,
        }
    }
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Failure {
        Failure {
            status: r.status(),
            msg: r.message(),
            too_large: r.too_large(),
            reason: None,
        }
    }
}

impl From<BrokerError> for Failure {
    fn from(e: BrokerError) -> Failure {
        Refusal::Broker(e).into()
    }
}

/// What became of a publish: the ids of the events published (in order,
/// up to the first refused), how many connections read the targets, and
/// the failure that stopped it.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Ids of the events published.
    pub ids: Vec<EventId>,
    /// Distinct connections reading the targets.
    pub audience: usize,
    /// Why it stopped, if it did.
    pub failure: Option<Failure>,
    /// So much was published that the fan-out should run now.
    pub pressure: bool,
}

impl Outcome {
    /// Nothing published, for `failure`.
    pub fn failed(failure: Failure) -> Outcome {
        Outcome {
            failure: Some(failure),
            ..Outcome::default()
        }
    }
}

/// Charges the memory account (`selectors`) for the selector streams a
/// subscription would make, before [`resolve`] makes them: past the kind's
/// limit or `--memory-max` the subscription is refused with a `503`.
pub(super) fn admit_selectors(
    broker: &Broker,
    memory: &mut crate::memory::Account,
    to: &Targets,
) -> Result<(), Failure> {
    let Targets::Topics { selectors, .. } = to else {
        return Ok(());
    };
    let cost: usize = selectors.iter().map(|s| broker.selector_cost(s)).sum();
    if cost == 0 {
        return Ok(());
    }
    memory
        .charge(crate::memory::Kind::Selectors, cost)
        .map_err(|r| Failure {
            status: 503,
            msg: format!("{r}; subscribe to exact topics or retry later"),
            too_large: false,
            reason: Some("memory_selectors"),
        })
}

/// The streams of a decision (a publish, a subscription): found or made
/// now, as the handler decided (`made`: public streams made, which a
/// refused publish drops again).
pub(super) fn resolve(
    broker: &mut Broker,
    to: &Targets,
) -> Result<(Vec<StreamIdx>, Vec<StreamIdx>), Failure> {
    match to {
        Targets::Internal(list) => {
            let mut out = Vec::with_capacity(list.len());
            for i in list {
                let idx = broker.internal(&i.name, i.cap);
                if let Some(d) = &i.display {
                    broker.set_display(idx, d);
                }
                if !out.contains(&idx) {
                    out.push(idx);
                }
            }
            Ok((out, Vec::new()))
        }
        Targets::Topics {
            exact,
            by,
            selectors,
            anon,
        } => {
            let refs: Vec<&str> = exact.iter().map(String::as_str).collect();
            let mut out = broker
                .resolve_topics(&refs, *by)
                .map_err(|(_, e)| Failure::from(e))?;
            for sel in selectors {
                match broker.selector_stream(sel, *anon) {
                    Ok(i) if !out.contains(&i) => out.push(i),
                    Ok(_) => {}
                    Err(e) => {
                        let full = matches!(e, BrokerError::TooManySelectors(_));
                        return Err(Failure {
                            status: crate::handler::status(&e),
                            msg: format!("topic {:?}: {}", sel.as_str(), e.message()),
                            too_large: false,
                            reason: full.then_some("too_many_selectors"),
                        });
                    }
                }
            }
            Ok((out, Vec::new()))
        }
        Targets::Names { names, by, topics } => {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let mut fresh: Vec<&str> = Vec::new();
            for n in &refs {
                if broker.find(n).is_none() && !fresh.contains(n) {
                    fresh.push(n);
                }
            }
            // Checked by the handler in this same turn: a failure here
            // would be a bug, answered all the same.
            let found = if *topics {
                broker.resolve_topics(&refs, *by)
            } else {
                broker.resolve_as(&refs, *by)
            };
            let targets = found.map_err(|(_, e)| Failure::from(e))?;
            let made = fresh.iter().filter_map(|n| broker.find(n)).collect();
            Ok((targets, made))
        }
    }
}

/// Publishes `p` to `targets` on this node: per event, the broker numbers
/// and checks it (prepare), the journal writes it (`--data-dir`), then it
/// enters the rings (commit). A refused event stops the publish; events
/// before it stay published, and the streams it `made` go while unused. A
/// publish to no stream publishes nothing and succeeds.
pub(super) fn apply_local(
    broker: &mut Broker,
    mut journal: Option<&mut Link>,
    apps: &mut Apps,
    (targets, made): (&[StreamIdx], &[StreamIdx]),
    p: &Publish,
    now_us: u64,
) -> Outcome {
    let mut out = Outcome::default();
    if targets.is_empty() {
        return out;
    }
    for body in &p.events {
        let prepared =
            match broker.prepare_publish(targets, now_us, p.private, |id| body.encode(id)) {
                Ok(x) => x,
                Err(e) => {
                    out.failure = Some(e.into());
                    break;
                }
            };
        if let Some(j) = journal.as_deref_mut() {
            let names = broker.names_of(&prepared);
            if let Err(e) = j.event(prepared.id, &names, &prepared.frame, prepared.private) {
                out.failure = Some(Refusal::Journal(e).into());
                break;
            }
        }
        // Indexed before it enters the rings (a commit cannot fail), so
        // the frame is not copied.
        entered(
            broker,
            apps,
            targets,
            prepared.id,
            &prepared.frame,
            p.private,
        );
        let published = broker.commit(prepared);
        out.ids.push(published.id);
        out.audience = published.audience;
        out.pressure |= published.pressure;
    }
    if out.failure.is_some() {
        for &t in made {
            broker.discard_unused(t);
        }
    }
    out
}

/// Event `id` (SSE bytes `frame`) entered `targets`: the apps index their
/// internal streams' events (the member app's uuid), and an event whose
/// `id:` line is not its number carries an id its publisher chose (the
/// hub's `id` field), remembered so a resume from it is exact. Called for
/// local publishes, bus announcements and fetches, and journal replay.
pub(super) fn entered(
    broker: &mut Broker,
    apps: &mut Apps,
    targets: &[StreamIdx],
    id: EventId,
    frame: &[u8],
    private: bool,
) {
    let mut public = false;
    for &t in targets {
        let Some(s) = broker.get(t) else { continue };
        if s.name.starts_with('!') {
            let name = s.name.clone();
            apps.restored(&name, id, frame);
        } else {
            public = true;
        }
    }
    if !public {
        return;
    }
    let Some(named) = crate::frame::leading_id(frame) else {
        return;
    };
    let mut buf = [0u8; 20];
    if named != crate::frame::fmt_id(id, &mut buf) {
        let named = named.to_string();
        broker.alias(&named, id, private);
    }
}

/// The answer to a publish.
#[derive(Debug, PartialEq)]
pub(super) enum Answer {
    /// Response bytes; close the connection after them.
    Http(Vec<u8>, bool),
    /// For the library's channel.
    Library(Result<u64, PublishError>),
    /// Nothing to send.
    Nothing,
}

/// Builds the reply `reply` asks for from outcome `o`: the one place a
/// publish is answered, for local and bus publishes alike.
pub(super) fn render(reply: &Reply, o: &Outcome) -> Answer {
    let failure = o.failure.as_ref().map(|f| {
        // Events before the refused one stay published: say which.
        let msg = if o.ids.is_empty() {
            f.msg.clone()
        } else {
            let list: Vec<String> = o.ids.iter().map(EventId::to_string).collect();
            format!("{} (published before it: {})", f.msg, list.join(", "))
        };
        (f.status, msg)
    });
    let http = |shape: &Shape, ok: Response, err: fn(u16, &str) -> Response| {
        let resp = match &failure {
            None => ok,
            Some((status, msg)) => {
                let r = err(*status, msg);
                // A journal or Redis that cannot take it, or a bound: may pass.
                if *status == 503 {
                    r.header("Retry-After", "1")
                } else {
                    r
                }
            }
        };
        Answer::Http(shape.encode(resp), !shape.keep_alive)
    };
    let first = o.ids.first().copied();
    match reply {
        Reply::Ids { batch, shape } => {
            let ids: Vec<String> = o.ids.iter().map(EventId::to_string).collect();
            let ok = if *batch {
                json!({ "ids": ids, "subscribers": o.audience })
            } else {
                json!({ "id": ids.first(), "subscribers": o.audience })
            };
            http(shape, Response::json(200, &ok), Response::error)
        }
        Reply::Member { uuid, shape, .. } => {
            let ok = json!({ "id": uuid, "devices": o.audience });
            http(shape, Response::json(200, &ok), Response::error)
        }
        Reply::Hub { shape, custom } => {
            let id = match (custom, first) {
                (Some(c), _) => c.clone(),
                (None, Some(id)) => id.to_string(),
                (None, None) => String::new(),
            };
            http(shape, Response::text(200, id), Response::error)
        }
        Reply::Api { shape, ok, .. } => {
            // MongooseIM's error body: the reason as a JSON string.
            fn api_error(status: u16, msg: &str) -> Response {
                let body = Value::String(msg.to_string()).to_string();
                Response::new(status, "application/json", body)
            }
            http(shape, Response::json(200, ok), api_error)
        }
        Reply::Library => Answer::Library(match (first, &o.failure) {
            (_, Some(f)) => Err(PublishError::Refused(f.msg.clone())),
            // The library's API speaks plain numbers.
            (Some(id), None) => Ok(id.get()),
            (None, None) => Err(PublishError::Refused("nothing was published".into())),
        }),
        Reply::Silent => Answer::Nothing,
    }
}

/// Where a publish decision goes.
pub(super) enum Route {
    /// Through the bus (`--redis`): Redis gives the ids, the link answers
    /// (`bus::Link::publish`).
    Bus {
        /// The streams, found or made.
        targets: Vec<StreamIdx>,
        /// Those made for it (dropped again if it fails).
        made: Vec<StreamIdx>,
    },
    /// Over: settle it.
    Done {
        /// Streams made for it that `settle` drops (it failed).
        made: Vec<StreamIdx>,
        /// What became of it.
        outcome: Outcome,
    },
}

/// Applies publish decision `p`: its streams are found or made; with a
/// bus (`bus`), an event every node would refuse for its size is refused
/// here and the rest goes to the bus; else it is published on this node
/// (`apply_local`, through `journal` with `--data-dir`).
pub(super) fn apply(
    broker: &mut Broker,
    journal: Option<&mut Link>,
    apps: &mut Apps,
    bus: bool,
    p: &Publish,
    now_us: u64,
) -> Route {
    let (targets, made) = match resolve(broker, &p.to) {
        Ok(x) => x,
        Err(f) => {
            return Route::Done {
                made: Vec::new(),
                outcome: Outcome::failed(f),
            }
        }
    };
    if bus && !targets.is_empty() {
        // Every node would refuse an event too large for a target's
        // history on arrival: refuse it before it goes to Redis.
        let fits = p
            .events
            .iter()
            .try_for_each(|b| broker.check_size(&targets, b.max_len()));
        if let Err(e) = fits {
            return Route::Done {
                made,
                outcome: Outcome::failed(e.into()),
            };
        }
        return Route::Bus { targets, made };
    }
    let outcome = apply_local(broker, journal, apps, (&targets, &made), p, now_us);
    Route::Done {
        made: Vec::new(),
        outcome,
    }
}

/// A publish is over, locally or through the bus: counts a refusal, drops
/// the streams it `made`, lets the apps book what was delivered (member
/// uuids, MongooseIM archives), and renders the answer `reply` asks for.
/// Sending it is the driver's (`Reactor::deliver`).
pub(super) fn settle(
    broker: &mut Broker,
    apps: &mut Apps,
    counters: &mut Counters,
    reply: &Reply,
    made: &[StreamIdx],
    o: &Outcome,
) -> Answer {
    if let Some(f) = &o.failure {
        log::debug!("publish refused: {}", f.msg);
        if matches!(reply, Reply::Ids { .. } | Reply::Hub { .. }) {
            counters.reject("publish_refused");
            if f.too_large && matches!(reply, Reply::Ids { .. }) {
                counters.reject("event_too_large");
            }
        }
        if matches!(reply, Reply::Silent) {
            log::warn!("api event not delivered: {}", f.msg);
        }
        for &t in made {
            broker.discard_unused(t);
        }
    } else {
        match reply {
            Reply::Member { member, uuid, .. } => {
                if let Some(&id) = o.ids.first() {
                    apps.record_member(member, uuid, id);
                }
            }
            // Archived once delivered (or when no recipient has a
            // stream here: it is still the user's message).
            Reply::Api {
                chat: Some(chat), ..
            } => {
                let share = broker.budget() / crate::apps::mongoose::ARCHIVE_SHARE_DIVISOR;
                let bytes = apps.archive_chat(chat, share);
                broker.set_app_bytes(bytes);
            }
            _ => {}
        }
    }
    render(reply, o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Create, Limits};
    use crate::event::Event;
    use crate::handler::Body;

    fn shape() -> Shape {
        Shape {
            http10: false,
            keep_alive: true,
            head_only: false,
            cors: Vec::new(),
        }
    }

    fn body_of(a: &Answer) -> (u16, String) {
        let Answer::Http(b, _) = a else {
            panic!("{a:?}")
        };
        let t = String::from_utf8_lossy(b).into_owned();
        let status = t[9..12].parse().unwrap();
        let body = t.split_once("\r\n\r\n").unwrap().1.trim_end().to_string();
        (status, body)
    }

    fn broker() -> Broker {
        let limits = Limits {
            history: 10,
            history_bytes: 1 << 16,
        };
        Broker::new(1, limits, 100)
    }

    #[test]
    fn every_reply_is_rendered_from_the_outcome() {
        let ok = Outcome {
            ids: vec![EventId::new(7), EventId::new(8)],
            audience: 3,
            ..Outcome::default()
        };
        let ids = Reply::Ids {
            batch: true,
            shape: shape(),
        };
        assert_eq!(
            body_of(&render(&ids, &ok)),
            (200, r#"{"ids":["7","8"],"subscribers":3}"#.into())
        );
        let one = Reply::Ids {
            batch: false,
            shape: shape(),
        };
        assert_eq!(
            body_of(&render(&one, &ok)),
            (200, r#"{"id":"7","subscribers":3}"#.into())
        );
        let hub = Reply::Hub {
            shape: shape(),
            custom: None,
        };
        assert_eq!(body_of(&render(&hub, &ok)), (200, "7".into()));
        let named = Reply::Hub {
            shape: shape(),
            custom: Some("urn:x".into()),
        };
        assert_eq!(body_of(&render(&named, &ok)), (200, "urn:x".into()));
        let member = Reply::Member {
            member: "m".into(),
            uuid: "u-1".into(),
            shape: shape(),
        };
        assert_eq!(
            body_of(&render(&member, &ok)),
            (200, r#"{"devices":3,"id":"u-1"}"#.into())
        );
        assert_eq!(render(&Reply::Library, &ok), Answer::Library(Ok(7)));
        assert_eq!(render(&Reply::Silent, &ok), Answer::Nothing);

        // A failure after one event: the status, and which were published.
        let failed = Outcome {
            ids: vec![EventId::new(7)],
            audience: 0,
            failure: Some(Failure {
                status: 503,
                msg: "redis unavailable".into(),
                too_large: false,
                reason: None,
            }),
            pressure: false,
        };
        let a = render(&ids, &failed);
        let (status, body) = body_of(&a);
        assert_eq!(status, 503);
        assert!(body.contains("redis unavailable (published before it: 7)"));
        let Answer::Http(bytes, _) = &a else { panic!() };
        assert!(String::from_utf8_lossy(bytes).contains("Retry-After: 1"));
        let api = Reply::Api {
            shape: shape(),
            ok: json!({"id": "x"}),
            chat: None,
        };
        let (status, body) = body_of(&render(&api, &failed));
        assert_eq!(status, 503);
        assert!(body.starts_with("\"redis unavailable"), "{body}");
        assert_eq!(
            render(&Reply::Library, &failed),
            Answer::Library(Err(PublishError::Refused("redis unavailable".into())))
        );
    }

    #[test]
    fn local_publishes_number_refuse_and_alias() {
        let mut b = broker();
        let mut apps = Apps::new(None);
        let p = Publish {
            to: Targets::Names {
                names: vec!["s".into()],
                by: Create::Publisher,
                topics: false,
            },
            events: vec![
                Body::Numbered(Event::new("a")),
                Body::Fixed(crate::frame::encode(Some("urn:1"), None, "b", None)),
            ],
            private: true,
            reply: Reply::Library,
        };
        let (t, made) = resolve(&mut b, &p.to).unwrap();
        assert_eq!(made, t, "made for it");
        let o = apply_local(&mut b, None, &mut apps, (&t, &made), &p, 10);
        assert_eq!(o.ids.len(), 2);
        assert!(o.failure.is_none());
        assert!(b.find("s").is_some(), "published to: kept");
        // The custom id resumes, for those who may see private events only.
        assert_eq!(b.alias_id("urn:1", true), Some(o.ids[1]));
        assert_eq!(b.alias_id("urn:1", false), None);
        // Too large for the history: refused, and a stream it made goes.
        let big = Publish {
            to: Targets::Names {
                names: vec!["new".into(), "s".into()],
                by: Create::Publisher,
                topics: false,
            },
            events: vec![Body::Numbered(Event::new("x".repeat(1 << 17)))],
            private: false,
            reply: Reply::Library,
        };
        let (t, made) = resolve(&mut b, &big.to).unwrap();
        assert_eq!(made.len(), 1);
        let o = apply_local(&mut b, None, &mut apps, (&t, &made), &big, 20);
        let f = o.failure.unwrap();
        assert_eq!((f.status, f.too_large), (413, true));
        assert!(o.ids.is_empty());
        assert!(b.find("new").is_none());
        assert!(b.find("s").is_some());
        // A name the broker refuses: a failure, not a panic.
        let bad = Targets::Names {
            names: vec!["!x".into()],
            by: Create::Publisher,
            topics: false,
        };
        assert_eq!(resolve(&mut b, &bad).unwrap_err().status, 400);
        // No target: nothing published, nothing refused.
        let none = Publish {
            to: Targets::Internal(Vec::new()),
            events: vec![Body::Numbered(Event::new("x"))],
            private: false,
            reply: Reply::Silent,
        };
        let o = apply_local(&mut b, None, &mut apps, (&[], &[]), &none, 30);
        assert!(o.ids.is_empty() && o.failure.is_none());
    }

    #[test]
    fn decisions_name_streams_the_reactor_makes() {
        let mut b = broker();
        // Internal streams: made once, shown as asked, repeats read once.
        let member = || crate::handler::Internal {
            name: "!member/m".into(),
            cap: None,
            display: Some("m".into()),
        };
        let (t, made) = resolve(&mut b, &Targets::Internal(vec![member(), member()])).unwrap();
        assert_eq!(t.len(), 1);
        assert!(made.is_empty());
        let s = b.get(t[0]).unwrap();
        assert!(s.internal);
        assert_eq!(s.display.as_deref(), Some("m"));
        assert_eq!(
            resolve(&mut b, &Targets::Internal(vec![member()]))
                .unwrap()
                .0,
            t
        );
        // Mercure: exact topics first, then selector streams, each once.
        let sel = |s: &str| crate::auth::Selector::parse(s).unwrap();
        let topics = Targets::Topics {
            exact: vec!["https://x/a".into()],
            by: Create::Subscriber(0),
            selectors: vec![sel("*"), sel("https://x/{id}")],
            anon: Some(1),
        };
        let (t, _) = resolve(&mut b, &topics).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(b.find("https://x/a"), Some(t[0]));
        assert!(b.get(t[1]).unwrap().internal && b.get(t[2]).unwrap().internal);
        assert_eq!(resolve(&mut b, &topics).unwrap().0, t, "found again");
        // Subscribers may not make streams with --no-auto-streams.
        let none = Targets::Names {
            names: vec!["absent".into()],
            by: Create::No,
            topics: false,
        };
        assert_eq!(resolve(&mut b, &none).unwrap_err().status, 404);
        assert!(b.find("absent").is_none());
    }

    #[test]
    fn bodies_spell_the_same_frame_locally_and_through_the_bus() {
        let bodies = [
            Body::Numbered(Event {
                data: "a\nb".into(),
                event: Some("t".into()),
                retry: Some(5),
            }),
            Body::Typed {
                event: "message".into(),
                data: "{}".into(),
            },
            Body::Fixed(b"id: u\ndata: x\n\n".to_vec()),
        ];
        for b in &bodies {
            for private in [false, true] {
                let (sse, p) =
                    crate::handler::bus_frame(EventId::new(42), &b.payload(private)).unwrap();
                assert_eq!(sse, b.encode(EventId::new(42)));
                assert_eq!(p, private);
                assert!(b.max_len() >= sse.len());
            }
        }
        assert_eq!(
            bodies[1].encode(EventId::new(42)),
            b"id: 42\nevent: message\ndata: {}\n\n"
        );
    }
}
