//! The core HTTP API: `/events` (subscribe, publish), `/streams`,
//! `/healthz`, `/stats`, `/metrics` and the demo page at `/`. Each handler
//! turns a request into actions through [`Cx`]; none touches a socket.
//!
//! Publishing from the library ([`crate::Publisher`]) goes through
//! [`publish_event`] here too, so both follow the same rules.

use std::borrow::Cow;

use serde_json::{json, Value};

use crate::broker::{BrokerError, Origin};
use crate::event::Event;
use crate::handler::{last_event_id, Action, Cx, PublishRights};
use crate::http::{self, Method, Request};

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
            Method::Get | Method::Head => list_streams(cx, req),
            _ => cx.not_allowed(req, "GET, HEAD"),
        },
        p if p.starts_with("/streams/") => {
            let raw = &p["/streams/".len()..];
            let name = http::decode_component(raw).unwrap_or(Cow::Borrowed(raw));
            match req.method {
                Method::Get | Method::Head => one_stream(cx, req, &name),
                Method::Delete => delete_stream(cx, req, &name),
                _ => cx.not_allowed(req, "GET, HEAD, DELETE"),
            }
        }
        "/healthz" => match req.method {
            Method::Get | Method::Head => cx.ok(req, "text/plain", "ok"),
            _ => cx.not_allowed(req, "GET, HEAD"),
        },
        "/stats" | "/metrics" => match req.method {
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

/// Resolves public stream names, creating them if allowed; on failure
/// replies with the error and returns `None`.
fn resolve(cx: &mut Cx<'_>, req: &Request<'_>, names: &[String]) -> Option<Vec<u32>> {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    match cx.broker.resolve(&refs, cx.cfg.auto_streams) {
        Ok(v) => Some(v),
        Err((i, e)) => {
            let n = &names[i];
            let msg = match e {
                BrokerError::BadName => format!("bad stream name {n:?}: {}", e.message()),
                BrokerError::Reserved => e.message(),
                _ => format!("stream {n:?}: {}", e.message()),
            };
            cx.fail(req, e.status(), &msg);
            None
        }
    }
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
    let Some(idx) = resolve(cx, req, &names) else {
        return;
    };
    // `resolve` drops repeated names; keep each target's own bit.
    let sees: Vec<bool> = idx
        .iter()
        .map(|&i| {
            let name = cx.broker.get(i).map(|s| &*s.name);
            names
                .iter()
                .position(|n| Some(n.as_str()) == name)
                .is_some_and(|p| sees[p])
        })
        .collect();
    let raw = last_event_id(req);
    let resume = cx.resume(raw.as_deref());
    cx.stream_as(req, &idx, &sees, &resume, &[]);
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
    match names.iter().find(|n| !rights.allows(n)) {
        None => true,
        Some(n) => {
            cx.counters.reject("forbidden");
            let msg = format!("the token's mercure.publish selectors do not match {n:?}");
            cx.fail(req, 403, &msg);
            false
        }
    }
}

fn publish(cx: &mut Cx<'_>, req: &Request<'_>) {
    let Some(rights) = cx.publish_rights(req) else {
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
    let Some(targets) = resolve(cx, req, &names) else {
        return;
    };
    let private = private || cx.targets_private(&targets);
    let mut ids = Vec::with_capacity(events.len());
    let mut subscribers = 0;
    for e in &events {
        let published = cx
            .broker
            .publish_as(Origin::Local, &targets, cx.unix_us, private, |id| {
                crate::frame::encode_numbered(id, e.event.as_deref(), &e.data, e.retry)
            });
        match published {
            Ok(p) => {
                ids.push(p.id.to_string());
                subscribers = p.audience;
                if p.pressure {
                    cx.actions.push(Action::Flush);
                }
            }
            Err(e) => {
                cx.counters.reject("publish_refused");
                // Events of a batch before the refused one stay published:
                // say which.
                let msg = if ids.is_empty() {
                    e.message()
                } else {
                    format!("{} (published before it: {})", e.message(), ids.join(", "))
                };
                return cx.fail(req, e.status(), &msg);
            }
        }
    }
    let body = if batch {
        json!({ "ids": ids, "subscribers": subscribers })
    } else {
        json!({ "id": ids.first(), "subscribers": subscribers })
    };
    cx.ok_json(req, &body);
}

/// Publishes one event from the library: the same checks as `POST
/// /events`. Names outside the public alphabet are internal streams (not
/// readable through `/events`), created as needed.
pub fn publish_event(
    cx: &mut Cx<'_>,
    stream: &str,
    ev: &Event,
) -> Result<u64, crate::event::PublishError> {
    ev.check().map_err(crate::event::PublishError::BadEvent)?;
    let targets = if crate::broker::valid_name(stream) {
        cx.broker
            .resolve(&[stream], cx.cfg.auto_streams)
            .map_err(|(_, e)| crate::event::PublishError::Refused(e.message()))?
    } else {
        vec![cx.broker.internal(stream, None)]
    };
    let private = cx.targets_private(&targets);
    let p = cx
        .broker
        .publish_as(Origin::Local, &targets, cx.unix_us, private, |id| {
            crate::frame::encode_numbered(id, ev.event.as_deref(), &ev.data, ev.retry)
        })
        .map_err(|e| crate::event::PublishError::Refused(e.message()))?;
    if p.pressure {
        cx.actions.push(Action::Flush);
    }
    Ok(p.id)
}

fn stream_json(cx: &Cx<'_>, idx: u32) -> Value {
    match cx.broker.get(idx) {
        Some(s) => json!({
            "name": &*s.name,
            "subscribers": s.subs.len(),
            "last_id": if s.last_id == 0 { Value::Null } else { Value::String(s.last_id.to_string()) },
            "history": s.retained(),
            "published": s.published,
        }),
        None => Value::Null,
    }
}

fn list_streams(cx: &mut Cx<'_>, req: &Request<'_>) {
    let mut list: Vec<(String, u32)> = cx
        .broker
        .iter()
        .filter(|(_, s)| !s.internal)
        .map(|(i, s)| (s.name.to_string(), i))
        .collect();
    list.sort();
    let v = Value::Array(list.iter().map(|(_, i)| stream_json(cx, *i)).collect());
    cx.ok_json(req, &v);
}

fn one_stream(cx: &mut Cx<'_>, req: &Request<'_>, name: &str) {
    match cx.broker.find_public(name) {
        Some(i) => {
            let v = stream_json(cx, i);
            cx.ok_json(req, &v);
        }
        None => cx.fail(req, 404, &format!("no stream named {name:?}")),
    }
}

fn delete_stream(cx: &mut Cx<'_>, req: &Request<'_>, name: &str) {
    let Some(rights) = cx.publish_rights(req) else {
        return;
    };
    if !covers(cx, req, &rights, &[name.to_string()]) {
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
