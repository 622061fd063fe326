//! Routing: which handler answers a request, CORS, and the core API
//! (`/events`, `/streams`, `/healthz`, `/stats`, `/metrics`, `/`). The
//! built-in apps (`apps/`) get their paths before the fallback.
//!
//! Handlers decide and reply through the hub; they never touch sockets.

use std::borrow::Cow;
use std::net::IpAddr;

use serde_json::{json, Value};

use crate::frame;
use crate::http::{self, Method, Request};
use crate::hub::{Hub, Outgoing};
use crate::stream::{valid_name, Resume, StreamError};

/// The demo page, embedded in the binary.
const DEMO_PAGE: &str = include_str!("apps/demo.html");
/// A `retry` in a published event above this is refused.
const MAX_EVENT_RETRY_MS: u64 = 3_600_000;

/// Routes one complete request.
pub fn handle(hub: &mut Hub, key: u32, req: &Request<'_>) {
    let cors = cors_headers(hub, req);
    if req.method == Method::Options && !cors.is_empty() {
        let extra = format!(
            "{cors}Access-Control-Allow-Methods: GET, POST, DELETE, OPTIONS\r\nAccess-Control-Allow-Headers: Last-Event-ID, Authorization, Content-Type, Member-ID, Device-Id\r\nAccess-Control-Max-Age: 600\r\n"
        );
        let resp = http::response(204, req.http10, req.keep_alive, "text/plain", &extra, b"");
        hub.respond(key, &resp, req.keep_alive);
        return;
    }
    if crate::apps::route(hub, key, req, &cors) {
        return;
    }
    match req.path {
        "/events" => match req.method {
            Method::Get => subscribe(hub, key, req, &cors),
            Method::Post => publish(hub, key, req, &cors),
            _ => not_allowed(hub, key, req, "GET, POST, OPTIONS"),
        },
        "/streams" => match req.method {
            Method::Get => list_streams(hub, key, req, &cors),
            _ => not_allowed(hub, key, req, "GET"),
        },
        p if p.starts_with("/streams/") => {
            let raw = &p["/streams/".len()..];
            let name = http::decode_component(raw).unwrap_or(Cow::Borrowed(raw));
            match req.method {
                Method::Get => one_stream(hub, key, req, &name, &cors),
                Method::Delete => delete_stream(hub, key, req, &name, &cors),
                _ => not_allowed(hub, key, req, "GET, DELETE"),
            }
        }
        "/healthz" => match req.method {
            Method::Get | Method::Head => ok(hub, key, req, "text/plain", &cors, b"ok"),
            _ => not_allowed(hub, key, req, "GET"),
        },
        "/stats" => match req.method {
            Method::Get => {
                let body = crate::stats::json(&hub.counters, &hub.gauges()).to_string();
                ok(hub, key, req, "application/json", &cors, body.as_bytes());
            }
            _ => not_allowed(hub, key, req, "GET"),
        },
        "/metrics" => match req.method {
            Method::Get => {
                let body = crate::stats::prometheus(&hub.counters, &hub.gauges());
                ok(
                    hub,
                    key,
                    req,
                    "text/plain; version=0.0.4",
                    &cors,
                    body.as_bytes(),
                );
            }
            _ => not_allowed(hub, key, req, "GET"),
        },
        "/" if !req.accepts_event_stream() => match req.method {
            Method::Get | Method::Head => ok(
                hub,
                key,
                req,
                "text/html; charset=utf-8",
                &cors,
                DEMO_PAGE.as_bytes(),
            ),
            _ => not_allowed(hub, key, req, "GET"),
        },
        _ => {
            if !crate::apps::fallback(hub, key, req, &cors) {
                fail(hub, key, req, 404, "no such path", &cors);
            }
        }
    }
}

/// CORS header lines for this request's `Origin`, if it is allowed.
fn cors_headers(hub: &Hub, req: &Request<'_>) -> String {
    let origins = &hub.cfg.cors_origins;
    if origins.is_empty() {
        return String::new();
    }
    if origins.iter().any(|o| o == "*") {
        return "Access-Control-Allow-Origin: *\r\n".to_string();
    }
    match req.header_str("origin") {
        Some(o) if origins.iter().any(|a| a == o) => {
            format!("Access-Control-Allow-Origin: {o}\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n")
        }
        _ => String::new(),
    }
}

/// A 200 response.
pub fn ok(hub: &mut Hub, key: u32, req: &Request<'_>, ctype: &str, extra: &str, body: &[u8]) {
    reply(hub, key, req, 200, ctype, extra, body);
}

/// A response to `req`: a `HEAD` gets the head that `GET` would (its
/// `Content-Length` included) and no body, so keep-alive framing holds.
pub fn reply(
    hub: &mut Hub,
    key: u32,
    req: &Request<'_>,
    status: u16,
    ctype: &str,
    extra: &str,
    body: &[u8],
) {
    let mut resp = http::response(status, req.http10, req.keep_alive, ctype, extra, body);
    if req.method == Method::Head {
        resp.truncate(resp.len() - body.len());
    }
    hub.respond(key, &resp, req.keep_alive);
}

/// A JSON 200 response.
pub fn ok_json(hub: &mut Hub, key: u32, req: &Request<'_>, extra: &str, v: &Value) {
    ok(
        hub,
        key,
        req,
        "application/json",
        extra,
        v.to_string().as_bytes(),
    );
}

/// A JSON error response; the connection stays open when framing is intact.
pub fn fail(hub: &mut Hub, key: u32, req: &Request<'_>, status: u16, msg: &str, extra: &str) {
    reply(
        hub,
        key,
        req,
        status,
        "application/json",
        extra,
        &http::error_body(msg),
    );
}

fn not_allowed(hub: &mut Hub, key: u32, req: &Request<'_>, allow: &str) {
    let extra = format!("Allow: {allow}\r\n");
    fail(
        hub,
        key,
        req,
        405,
        &format!("method not allowed; use {allow}"),
        &extra,
    );
}

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
            if constant_time_eq(given.trim_ascii(), t.as_bytes()) {
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, y) in b.iter().enumerate() {
        diff |= (a.get(i).copied().unwrap_or(0) ^ y) as usize;
    }
    diff == 0
}

/// Checks publish rights for `req`, answering 401/403 itself when refused.
pub fn authorize(hub: &mut Hub, key: u32, req: &Request<'_>, cors: &str) -> bool {
    let peer = hub
        .conns
        .get(key as usize)
        .and_then(|c| hub.peers.ip(c.peer));
    match publish_allowed(
        peer,
        req.header("authorization"),
        hub.cfg.publish_token.as_deref(),
    ) {
        Ok(()) => true,
        Err((status, msg)) => {
            hub.counters.reject(if status == 401 {
                "unauthorized"
            } else {
                "forbidden"
            });
            let extra = if status == 401 {
                format!("{cors}WWW-Authenticate: Bearer\r\n")
            } else {
                cors.to_string()
            };
            fail(hub, key, req, status, msg, &extra);
            false
        }
    }
}

/// Resolves public stream names to indices, creating them if allowed; on
/// failure replies with the error and returns `None`.
fn resolve(
    hub: &mut Hub,
    key: u32,
    req: &Request<'_>,
    names: &[String],
    cors: &str,
) -> Option<Vec<u32>> {
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        if !valid_name(n) {
            fail(
                hub,
                key,
                req,
                400,
                &format!("bad stream name {n:?}: {}", StreamError::BadName.message()),
                cors,
            );
            return None;
        }
        match hub.streams.get_or_create(n, hub.cfg.auto_streams, false) {
            Ok(i) if hub.streams.get(i).is_some_and(|s| s.internal) => {
                fail(hub, key, req, 400, "that stream name is reserved", cors);
                return None;
            }
            Ok(i) => {
                if !out.contains(&i) {
                    out.push(i);
                }
            }
            Err(e) => {
                let status = match e {
                    StreamError::BadName => 400,
                    StreamError::NotFound => 404,
                    StreamError::TooMany => 503,
                };
                fail(
                    hub,
                    key,
                    req,
                    status,
                    &format!("stream {n:?}: {}", e.message()),
                    cors,
                );
                return None;
            }
        }
    }
    Some(out)
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
    (!raw.trim().is_empty()).then_some(raw)
}

fn subscribe(hub: &mut Hub, key: u32, req: &Request<'_>, cors: &str) {
    let names: Vec<String> = req.query_all("stream").map(Cow::into_owned).collect();
    if names.is_empty() {
        return fail(
            hub,
            key,
            req,
            400,
            "missing stream: subscribe with GET /events?stream=NAME",
            cors,
        );
    }
    if names.len() > hub.cfg.max_streams_per_conn {
        let msg = format!(
            "too many streams: at most {} per connection (--max-streams-per-conn)",
            hub.cfg.max_streams_per_conn
        );
        return fail(hub, key, req, 400, &msg, cors);
    }
    let Some(idx) = resolve(hub, key, req, &names, cors) else {
        return;
    };
    let raw = last_event_id(req);
    let plan = hub.streams.plan(&idx, &Resume::parse(raw.as_deref()));
    hub.start_stream(key, req.http10, cors, true);
    hub.subscribe(key, &plan, raw.as_deref().unwrap_or(""));
}

/// Parses a publish body into events and extra target names.
fn parse_publish(req: &Request<'_>) -> Result<(Vec<Outgoing>, Vec<String>, bool), String> {
    let body =
        std::str::from_utf8(&req.body).map_err(|_| "request body must be UTF-8".to_string())?;
    let ctype = req
        .header_str("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut extra_streams = Vec::new();
    let mut batch = false;
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
                _ => {}
            }
        }
        let data = data.ok_or("form body needs a data field (curl -d sends a form; for a raw body add -H 'Content-Type: text/plain')")?;
        vec![Outgoing { data, event, retry }]
    } else {
        let retry = match req.query_first("retry") {
            Some(r) => Some(parse_retry(&r)?),
            None => None,
        };
        vec![Outgoing {
            data: body.to_string(),
            event: req.query_first("event").map(Cow::into_owned),
            retry,
        }]
    };
    for e in &events {
        if let Some(t) = &e.event {
            if !frame::valid_event_type(t) {
                return Err(format!(
                    "bad event type {t:?}: 1..=64 visible ASCII characters without ':'"
                ));
            }
        }
        if e.data.contains('\0') {
            return Err("event data must not contain NUL bytes".into());
        }
    }
    Ok((events, extra_streams, batch))
}

fn parse_retry(v: &str) -> Result<u32, String> {
    match v.trim().parse::<u64>() {
        Ok(n) if n <= MAX_EVENT_RETRY_MS => Ok(n as u32),
        _ => Err(format!(
            "bad retry {v:?}: milliseconds, at most {MAX_EVENT_RETRY_MS}"
        )),
    }
}

fn json_event(v: &Value) -> Result<Outgoing, String> {
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
    Ok(Outgoing { data, event, retry })
}

fn publish(hub: &mut Hub, key: u32, req: &Request<'_>, cors: &str) {
    if !authorize(hub, key, req, cors) {
        return;
    }
    let (events, extra, batch) = match parse_publish(req) {
        Ok(x) => x,
        Err(msg) => {
            hub.counters.reject("bad_event");
            return fail(hub, key, req, 400, &msg, cors);
        }
    };
    let mut names: Vec<String> = req.query_all("stream").map(Cow::into_owned).collect();
    names.extend(req.query_all("topic").map(Cow::into_owned));
    names.extend(extra);
    if names.is_empty() {
        return fail(
            hub,
            key,
            req,
            400,
            "missing stream: publish with POST /events?stream=NAME",
            cors,
        );
    }
    if names.len() > hub.cfg.max_streams_per_conn {
        return fail(
            hub,
            key,
            req,
            400,
            "too many streams in one publish (--max-streams-per-conn)",
            cors,
        );
    }
    let Some(targets) = resolve(hub, key, req, &names, cors) else {
        return;
    };
    let mut ids = Vec::with_capacity(events.len());
    let mut subscribers = 0;
    for e in &events {
        let (id, n) = hub.publish(&targets, e);
        ids.push(id.to_string());
        subscribers = n;
    }
    let body = if batch {
        json!({ "ids": ids, "subscribers": subscribers })
    } else {
        json!({ "id": ids.first(), "subscribers": subscribers })
    };
    ok_json(hub, key, req, cors, &body);
}

fn stream_json(hub: &Hub, idx: u32) -> Value {
    match hub.streams.get(idx) {
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

fn list_streams(hub: &mut Hub, key: u32, req: &Request<'_>, cors: &str) {
    let mut list: Vec<(String, u32)> = hub
        .streams
        .iter()
        .filter(|(_, s)| !s.internal)
        .map(|(i, s)| (s.name.to_string(), i))
        .collect();
    list.sort();
    let v = Value::Array(list.iter().map(|(_, i)| stream_json(hub, *i)).collect());
    ok_json(hub, key, req, cors, &v);
}

fn find_public(hub: &Hub, name: &str) -> Option<u32> {
    hub.streams
        .find(name)
        .filter(|&i| hub.streams.get(i).is_some_and(|s| !s.internal))
}

fn one_stream(hub: &mut Hub, key: u32, req: &Request<'_>, name: &str, cors: &str) {
    match find_public(hub, name) {
        Some(i) => {
            let v = stream_json(hub, i);
            ok_json(hub, key, req, cors, &v);
        }
        None => fail(
            hub,
            key,
            req,
            404,
            &format!("no stream named {name:?}"),
            cors,
        ),
    }
}

fn delete_stream(hub: &mut Hub, key: u32, req: &Request<'_>, name: &str, cors: &str) {
    if !authorize(hub, key, req, cors) {
        return;
    }
    match find_public(hub, name) {
        Some(i) => {
            let closed = hub.streams.get(i).map_or(0, |s| s.subs.len());
            hub.delete_stream(i);
            ok_json(
                hub,
                key,
                req,
                cors,
                &json!({ "deleted": name, "closed": closed }),
            );
        }
        None => fail(
            hub,
            key,
            req,
            404,
            &format!("no stream named {name:?}"),
            cors,
        ),
    }
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
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
    }
}
