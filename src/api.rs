//! The core HTTP API: `/events` (subscribe, publish), `/streams`,
//! `/healthz`, `/stats`, `/metrics` and the demo page at `/`. Each handler
//! turns a request into actions through [`Cx`]; none touches a socket.
//!
//! Publishing from the library ([`crate::Publisher`]) goes through
//! [`publish_event`] here too, so both follow the same rules.

use std::borrow::Cow;

use serde_json::{json, Value};

use crate::access::{Op, PublishRights};
use crate::broker::{Broker, BrokerError, Create, StreamIdx};
use crate::event::Event;
use crate::handler::{last_event_id, status, Action, Body, Cx, Publish, Reply, Targets};
use crate::http::{self, Method, Request};
use crate::id::EventId;

/// The demo page, embedded in the binary.
const DEMO_PAGE: &str = include_str!("apps/demo.html");
/// A `retry` in a published event above this is refused.
const MAX_EVENT_RETRY_MS: u64 = 3_600_000;

/// Routes a core path; `false` when the path is not the core's.
pub fn route(cx: &mut Cx<'_>, req: &Request<'_>) -> bool {
    match req.path {
        "/events" => match req.method {
            Method::Get | Method::Head => subscribe(cx, req),
            Method::Post => publish(cx, req),
            _ => cx.not_allowed(req, "GET, HEAD, POST, OPTIONS"),
        },
        "/streams" => match req.method {
            Method::Get | Method::Head if allowed(cx, req, Op::ListStreams) => {
                list_streams(cx, req)
            }
            Method::Get | Method::Head => {}
            _ => cx.not_allowed(req, "GET, HEAD"),
        },
        p if p.starts_with("/streams/") => {
            let raw = &p["/streams/".len()..];
            let name = http::decode_component(raw).unwrap_or(Cow::Borrowed(raw));
            match req.method {
                Method::Get | Method::Head if allowed(cx, req, Op::ListStreams) => {
                    one_stream(cx, req, &name)
                }
                Method::Get | Method::Head => {}
                Method::Put => create_stream(cx, req, &name),
                Method::Delete => delete_stream(cx, req, &name),
                _ => cx.not_allowed(req, "GET, HEAD, PUT, DELETE"),
            }
        }
        "/healthz" => match req.method {
            // Still 200 while Redis is down: a load balancer must not drop
            // every node at once; the body says so.
            Method::Get | Method::Head if !allowed(cx, req, Op::ReadStats) => {}
            Method::Get | Method::Head => match cx.redis {
                Some(false) => cx.ok(req, "text/plain", "degraded: redis unavailable"),
                _ => cx.ok(req, "text/plain", "ok"),
            },
            _ => cx.not_allowed(req, "GET, HEAD"),
        },
        "/stats" | "/metrics" => match req.method {
            Method::Get | Method::Head if !allowed(cx, req, Op::ReadStats) => {}
            Method::Get | Method::Head => cx.actions.push(Action::Stats {
                prometheus: req.path == "/metrics",
                http10: req.http10,
                keep_alive: req.keep_alive,
                head_only: req.method == Method::Head,
                headers: cx.cors.clone(),
            }),
            _ => cx.not_allowed(req, "GET, HEAD"),
        },
        "/" if !req.accepts_event_stream() => match req.method {
            Method::Get | Method::Head => cx.ok(req, "text/html; charset=utf-8", DEMO_PAGE),
            _ => cx.not_allowed(req, "GET, HEAD"),
        },
        _ => return false,
    }
    true
}

/// Asks the access rule (a refusal is answered there).
fn allowed(cx: &mut Cx<'_>, req: &Request<'_>, op: Op<'_>) -> bool {
    cx.allow(req, op).is_some()
}

/// Whether public `names` can be resolved as `by` may (the reactor does
/// it when it applies the decision); on failure replies with the error.
fn resolvable(cx: &mut Cx<'_>, req: &Request<'_>, names: &[String], by: Create) -> bool {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    match cx.broker.check_resolve(&refs, by, false) {
        Ok(()) => true,
        Err(e) => {
            refuse_names(cx, req, names, e);
            false
        }
    }
}

/// Answers why name `i` of `names` cannot be resolved.
fn refuse_names(
    cx: &mut Cx<'_>,
    req: &Request<'_>,
    names: &[String],
    (i, e): (usize, BrokerError),
) {
    let n = names.get(i).map_or("", String::as_str);
    let msg = match e {
        BrokerError::BadName => format!("bad stream name {n:?}: {}", e.message()),
        BrokerError::Reserved => e.message(),
        _ => format!("stream {n:?}: {}", e.message()),
    };
    if matches!(e, BrokerError::TooMany | BrokerError::TooManyUnclaimed) {
        cx.counters.reject("too_many_streams");
    }
    if matches!(e, BrokerError::TooManyUnclaimedHere { .. }) {
        cx.counters.reject("subscriber_streams_per_ip");
    }
    cx.fail(req, status(&e), &msg);
}

fn subscribe(cx: &mut Cx<'_>, req: &Request<'_>) {
    let names: Vec<String> = req.query_all("stream").map(Cow::into_owned).collect();
    if names.is_empty() {
        return cx.fail(
            req,
            400,
            "missing stream: subscribe with GET /events?stream=NAME",
        );
    }
    if names.len() > cx.cfg.max_streams_per_conn {
        let msg = format!(
            "too many streams: at most {} per connection (--max-streams-per-conn)",
            cx.cfg.max_streams_per_conn
        );
        return cx.fail(req, 400, &msg);
    }
    let Some(grants) = cx.subscriber(req) else {
        return;
    };
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let Some(sees) = cx.subscribe_rights(req, grants.as_ref(), &refs) else {
        return;
    };
    // Subscribers make streams in a pool of their own (no credentials are
    // needed to subscribe); with --no-auto-streams they make none.
    let by = if cx.cfg.auto_streams {
        Create::Subscriber(cx.peer_key())
    } else {
        Create::No
    };
    if !resolvable(cx, req, &names, by) {
        return;
    }
    // The reactor reads repeated names once; keep each target's own bit.
    let mut distinct: Vec<String> = Vec::with_capacity(names.len());
    let mut bits: Vec<bool> = Vec::with_capacity(names.len());
    for (n, &b) in names.iter().zip(&sees) {
        if !distinct.contains(n) {
            distinct.push(n.clone());
            bits.push(b);
        }
    }
    let raw = last_event_id(req);
    let resume = cx.resume(raw.as_deref(), bits.contains(&true));
    let until = grants.as_ref().and_then(|g| g.exp);
    let to = Targets::Names {
        names: distinct,
        by,
        topics: false,
    };
    cx.stream_until(req, to, &bits, &resume, &[], until);
}

/// Whether a `private` field or query value asks for a private event
/// (Mercure: present at all; `0`, `false` and `off` say no).
pub(crate) fn private_value(v: &str) -> bool {
    !matches!(v.trim(), "0" | "false" | "off")
}

/// Parses a publish body into events and extra target names.
type Parsed = (Vec<Event>, Vec<String>, bool, bool);

fn parse_publish(req: &Request<'_>) -> Result<Parsed, String> {
    let body =
        std::str::from_utf8(&req.body).map_err(|_| "request body must be UTF-8".to_string())?;
    let ctype = req
        .header_str("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut extra_streams = Vec::new();
    let mut batch = false;
    let mut private = req
        .query_first("private")
        .is_some_and(|v| private_value(&v));
    let events = if ctype.starts_with("application/json") {
        let v: Value = serde_json::from_str(body).map_err(|e| format!("invalid JSON body: {e}"))?;
        match v {
            Value::Array(items) => {
                batch = true;
                if items.is_empty() {
                    return Err("empty event array".into());
                }
                items
                    .iter()
                    .map(json_event)
                    .collect::<Result<Vec<_>, _>>()?
            }
            v @ Value::Object(_) => vec![json_event(&v)?],
            _ => {
                return Err(
                    "JSON body must be an object {\"data\": ...} or an array of them".into(),
                )
            }
        }
    } else if ctype.starts_with("application/x-www-form-urlencoded") {
        let mut data = None;
        let mut event = None;
        let mut retry = None;
        for (k, v) in http::query_pairs(body) {
            match &*k {
                "data" if data.is_none() => data = Some(v.into_owned()),
                "event" | "type" => event = Some(v.into_owned()),
                "retry" => retry = Some(parse_retry(&v)?),
                "stream" | "topic" => extra_streams.push(v.into_owned()),
                "private" => private |= private_value(&v),
                _ => {}
            }
        }
        let data = data.ok_or("form body needs a data field (curl -d sends a form; for a raw body add -H 'Content-Type: text/plain')")?;
        vec![Event { data, event, retry }]
    } else {
        let retry = match req.query_first("retry") {
            Some(r) => Some(parse_retry(&r)?),
            None => None,
        };
        vec![Event {
            data: body.to_string(),
            event: req.query_first("event").map(Cow::into_owned),
            retry,
        }]
    };
    for e in &events {
        e.check()?;
    }
    Ok((events, extra_streams, batch, private))
}

fn parse_retry(v: &str) -> Result<u32, String> {
    match v.trim().parse::<u64>() {
        Ok(n) if n <= MAX_EVENT_RETRY_MS => Ok(n as u32),
        _ => Err(format!(
            "bad retry {v:?}: milliseconds, at most {MAX_EVENT_RETRY_MS}"
        )),
    }
}

fn json_event(v: &Value) -> Result<Event, String> {
    let obj = v.as_object().ok_or("each event must be a JSON object")?;
    let data = match obj.get("data") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => return Err("event needs a \"data\" field".into()),
    };
    let event = match obj.get("event") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("\"event\" must be a string".into()),
    };
    let retry = match obj.get("retry") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(parse_retry(&n.to_string())?),
        Some(_) => return Err("\"retry\" must be a number of milliseconds".into()),
    };
    Ok(Event { data, event, retry })
}

/// 403 unless `rights` cover every name (answered here).
fn covers(cx: &mut Cx<'_>, req: &Request<'_>, rights: &PublishRights, names: &[String]) -> bool {
    match rights.covers(names) {
        Ok(()) => true,
        Err(d) => {
            cx.deny(req, &d);
            false
        }
    }
}

fn publish(cx: &mut Cx<'_>, req: &Request<'_>) {
    let Some(rights) = cx.writer(req, Op::Publish) else {
        return;
    };
    let (events, extra, batch, private) = match parse_publish(req) {
        Ok(x) => x,
        Err(msg) => {
            cx.counters.reject("bad_event");
            return cx.fail(req, 400, &msg);
        }
    };
    let mut names: Vec<String> = req.query_all("stream").map(Cow::into_owned).collect();
    names.extend(req.query_all("topic").map(Cow::into_owned));
    names.extend(extra);
    if names.is_empty() {
        return cx.fail(
            req,
            400,
            "missing stream: publish with POST /events?stream=NAME",
        );
    }
    if names.len() > cx.cfg.max_streams_per_conn {
        return cx.fail(
            req,
            400,
            "too many streams in one publish (--max-streams-per-conn)",
        );
    }
    if !covers(cx, req, &rights, &names) {
        return;
    }
    // An authorised publish creates its streams, --no-auto-streams or not.
    if !resolvable(cx, req, &names, Create::Publisher) {
        return;
    }
    let private = private || cx.names_private(&names);
    let shape = cx.shape(req);
    cx.publish(Publish {
        to: Targets::Names {
            names,
            by: Create::Publisher,
            topics: false,
        },
        events: events.into_iter().map(Body::Numbered).collect(),
        private,
        reply: Reply::Ids { batch, shape },
    });
}

/// A library publish ([`crate::Publisher`]) decided: the same checks as
/// `POST /events` (stream name, event type, auto-creation,
/// `--max-streams`); the reactor applies it like any publish and sends
/// the id (or why not) back on the publisher's channel.
pub fn publish_event(
    cx: &mut Cx<'_>,
    stream: &str,
    ev: &Event,
) -> Result<Publish, crate::event::PublishError> {
    use crate::event::PublishError;
    ev.check().map_err(PublishError::BadEvent)?;
    // The library is an authorised publisher: it creates streams even with
    // --no-auto-streams.
    cx.broker
        .check_resolve(&[stream], Create::Publisher, false)
        .map_err(|(_, e)| PublishError::Refused(format!("stream {stream:?}: {}", e.message())))?;
    let names = vec![stream.to_string()];
    let private = cx.names_private(&names);
    Ok(Publish {
        to: Targets::Names {
            names,
            by: Create::Publisher,
            topics: false,
        },
        events: vec![Body::Numbered(ev.clone())],
        private,
        reply: Reply::Library,
    })
}

fn stream_json(cx: &Cx<'_>, idx: StreamIdx) -> Value {
    stream_entry(cx.broker, idx)
}

fn stream_entry(broker: &Broker, idx: StreamIdx) -> Value {
    match broker.get(idx) {
        // Public events only: the listing is open to anyone.
        Some(s) => json!({
            "name": &*s.name,
            "subscribers": s.subs.len(),
            "last_id": if s.last_public_id == EventId::NONE { Value::Null } else { Value::String(s.last_public_id.to_string()) },
            "history": s.retained_public(),
            "published": s.published_public,
        }),
        None => Value::Null,
    }
}

/// Streams in one page of `GET /streams` unless `?limit=` asks for fewer
/// or more...
const LIST_DEFAULT: usize = 100;
/// ...and at most: a listing is built whole in memory and written to a
/// client that may never read it.
const LIST_MAX: usize = 1000;

/// One page of the stream listing: of the streams `keep` admits, those
/// whose names sort after `after`, the first `limit` in name order, and
/// whether more follow. A pass over the table keeping at most `limit + 1`
/// names (borrowed, not copied) in a heap: O(streams × log limit) however
/// large the table.
fn list_page<'b>(
    broker: &'b crate::broker::Broker,
    after: Option<&str>,
    limit: usize,
    keep: impl Fn(&crate::broker::Stream) -> bool,
) -> (Vec<(&'b str, StreamIdx)>, bool) {
    let mut heap: std::collections::BinaryHeap<(&str, StreamIdx)> =
        std::collections::BinaryHeap::with_capacity(limit + 2);
    for (i, s) in broker.iter() {
        let name: &str = &s.name;
        if after.is_some_and(|a| name <= a) || !keep(s) {
            continue;
        }
        if heap.len() > limit && heap.peek().is_some_and(|&(top, _)| name >= top) {
            continue;
        }
        heap.push((name, i));
        if heap.len() > limit + 1 {
            heap.pop();
        }
    }
    let mut page = heap.into_sorted_vec();
    let more = page.len() > limit;
    page.truncate(limit);
    (page, more)
}

/// A query component with everything but unreserved characters (and the
/// `/`, `:`, `@` stream names use) percent-encoded.
fn query_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET /streams[?limit=N][&after=NAME]`: a page of streams in name order
/// (the body stays the array it always was). When more follow, a
/// `Link: </streams?limit=N&after=LAST>; rel="next"` header names the
/// next page; its cursor is the page's last name.
fn list_streams(cx: &mut Cx<'_>, req: &Request<'_>) {
    let limit = match req.query_first("limit") {
        None => LIST_DEFAULT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=LIST_MAX).contains(&n) => n,
            _ => {
                cx.counters.reject("bad_request");
                let msg = format!("bad limit {v:?}: expected 1..={LIST_MAX}");
                return cx.fail(req, 400, &msg);
            }
        },
    };
    let after = req.query_first("after");
    let (page, more) = list_page(cx.broker, after.as_deref(), limit, |s| {
        s.anonymous_visible()
    });
    let next = more.then(|| page.last()).flatten().map(|(name, _)| {
        format!(
            "</streams?limit={limit}&after={}>; rel=\"next\"",
            query_component(name)
        )
    });
    let v = Value::Array(page.iter().map(|&(_, i)| stream_json(cx, i)).collect());
    let mut resp = http::Response::json(200, &v);
    if let Some(link) = next {
        resp = resp.header("Link", link);
    }
    cx.reply(req, resp);
}

fn one_stream(cx: &mut Cx<'_>, req: &Request<'_>, name: &str) {
    let visible = |i: &StreamIdx| cx.broker.get(*i).is_some_and(|s| s.anonymous_visible());
    match cx.broker.find_public(name).filter(visible) {
        Some(i) => {
            let v = stream_json(cx, i);
            cx.ok_json(req, &v);
        }
        None => cx.fail(req, 404, &format!("no stream named {name:?}")),
    }
}

/// `PUT /streams/NAME`: creates a stream explicitly (publish rights
/// needed), like r3labs/sse's `CreateStream`: 201 when made, 200 when it
/// existed. It works with --no-auto-streams, and an explicit stream is
/// kept while empty until --stream-idle-ttl.
fn create_stream(cx: &mut Cx<'_>, req: &Request<'_>, name: &str) {
    if cx.writer(req, Op::CreateStream(name)).is_none() {
        return;
    }
    let names = [name.to_string()];
    if !resolvable(cx, req, &names, Create::Publisher) {
        return;
    }
    let shape = cx.shape(req);
    cx.actions.push(Action::CreateStream {
        name: name.to_string(),
        shape,
    });
}

/// The answer to `PUT /streams/NAME` once the reactor made (`created`) or
/// found stream `idx`: 201 or 200 with the stream's listing entry.
pub fn created_stream(broker: &Broker, idx: StreamIdx, created: bool) -> http::Response {
    let mut v = stream_entry(broker, idx);
    v["created"] = Value::Bool(created);
    let status = if created { 201 } else { 200 };
    http::Response::json(status, &v)
}

fn delete_stream(cx: &mut Cx<'_>, req: &Request<'_>, name: &str) {
    if cx.writer(req, Op::DeleteStream(name)).is_none() {
        return;
    }
    match cx.broker.find_public(name) {
        Some(i) => {
            let closed = cx.broker.get(i).map_or(0, |s| s.subs.len());
            cx.actions.push(Action::DeleteStream(i));
            cx.ok_json(req, &json!({ "deleted": name, "closed": closed }));
        }
        None => cx.fail(req, 404, &format!("no stream named {name:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{list_page, query_component};
    use crate::broker::{Broker, Create, Limits};

    /// Paging through the listing visits every kept stream once, in name
    /// order, whatever the page size, and says when more follow.
    #[test]
    fn pages_cover_every_stream_once_in_order() {
        let limits = Limits {
            history: 10,
            history_bytes: 1 << 20,
        };
        let mut b = Broker::new(1, limits, 10_000);
        let mut names: Vec<String> = (0..250)
            .map(|i| format!("s{:03}", (i * 37) % 250))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        b.resolve_as(&refs, Create::Publisher).unwrap();
        b.internal("!app/x", None);
        names.sort();
        for limit in [1, 7, 100, 250, 1000] {
            let mut seen = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let (page, more) = list_page(&b, after.as_deref(), limit, |s| !s.internal);
                assert!(page.len() <= limit);
                seen.extend(page.iter().map(|(n, _)| n.to_string()));
                if !more {
                    break;
                }
                assert_eq!(page.len(), limit);
                after = page.last().map(|(n, _)| n.to_string());
            }
            assert_eq!(seen, names, "limit {limit}");
        }
        // A predicate leaves streams out without breaking the order.
        let (page, more) = list_page(&b, Some("s100"), 3, |s| s.name.ends_with('5'));
        let got: Vec<&str> = page.iter().map(|(n, _)| *n).collect();
        assert_eq!(got, ["s105", "s115", "s125"]);
        assert!(more);
        // A cursor past the end: an empty last page.
        assert_eq!(list_page(&b, Some("zzz"), 5, |_| true), (vec![], false));
    }

    #[test]
    fn cursors_are_encoded_for_the_link_header() {
        assert_eq!(query_component("a/b:c@d-e.f_g~h"), "a/b:c@d-e.f_g~h");
        assert_eq!(query_component("x y&z>"), "x%20y%26z%3E");
    }
}
