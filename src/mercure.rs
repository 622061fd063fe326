//! The Mercure hub endpoint, `/.well-known/mercure`: subscribing with
//! `GET ?topic=SELECTOR` (exact topics, `*`, URI templates; resume by
//! `Last-Event-ID` or `lastEventID`, `earliest` for everything retained)
//! and publishing with a `POST` form (`topic`, `data`, `private`, `id`,
//! `type`, `retry`), answered with the update's id as plain text.
//!
//! A topic is the stream of the same name (the mapping loses nothing; see
//! the README); `*` and templates read selector streams the broker keeps.
//! This module turns requests into broker calls and actions through
//! [`Cx`]; it must not touch sockets or keep state of its own (the alias
//! index and selector streams live in the broker).

use std::borrow::Cow;

use crate::access::{selector_sees_private, Op};
use crate::auth::Selector;
use crate::broker::{valid_topic, BrokerError, Create, Resume, MAX_TOPIC_BYTES};
use crate::event::Event;
use crate::frame;
use crate::handler::{Body, Cx, Publish, Reply, Targets};
use crate::http::{self, Method, Request};

/// The endpoint's path.
pub const PATH: &str = "/.well-known/mercure";
/// Longest publisher-supplied event id.
pub const MAX_ID_BYTES: usize = 256;
/// A `retry` above this is refused.
const MAX_RETRY_MS: u64 = 3_600_000;

/// Routes the hub's path; `false` when the path is not the hub's.
pub fn route(cx: &mut Cx<'_>, req: &Request<'_>) -> bool {
    if req.path != PATH {
        return false;
    }
    match req.method {
        Method::Get | Method::Head => subscribe(cx, req),
        Method::Post => publish(cx, req),
        _ => cx.not_allowed(req, "GET, HEAD, POST, OPTIONS"),
    }
    true
}

/// Whether `sel` is an exact topic (read from its own stream) rather than
/// `*` or a template (read from a selector stream).
fn is_exact(sel: &str) -> bool {
    sel != "*" && !sel.contains('{')
}

fn subscribe(cx: &mut Cx<'_>, req: &Request<'_>) {
    let topics: Vec<String> = req.query_all("topic").map(Cow::into_owned).collect();
    if topics.is_empty() {
        cx.counters.reject("bad_request");
        return cx.fail(
            req,
            400,
            "missing topic: subscribe with GET /.well-known/mercure?topic=SELECTOR",
        );
    }
    if topics.len() > cx.cfg.max_streams_per_conn {
        let msg = format!(
            "too many topics: at most {} per subscription (--max-streams-per-conn)",
            cx.cfg.max_streams_per_conn
        );
        return cx.fail(req, 400, &msg);
    }
    let mut selectors = Vec::with_capacity(topics.len());
    for t in &topics {
        match Selector::parse(t) {
            Ok(s) if !is_exact(t) || valid_topic(t) => selectors.push(s),
            Err(e) if t.contains('{') => {
                cx.counters.reject("bad_request");
                let msg = format!("bad URI template {t:?}: {}", e.message());
                return cx.fail(req, 400, &msg);
            }
            _ => {
                let msg = format!("bad topic selector {t:?}: a topic of 1..={MAX_TOPIC_BYTES} bytes without control characters, *, or a URI template");
                return cx.fail(req, 400, &msg);
            }
        }
    }
    let Some(grants) = cx.subscriber(req) else {
        return;
    };
    let exact: Vec<&str> = topics
        .iter()
        .map(String::as_str)
        .filter(|t| is_exact(t))
        .collect();
    let Some(exact_sees) = cx.subscribe_rights(req, grants.as_ref(), &exact) else {
        return;
    };
    let by = if cx.cfg.auto_streams {
        Create::Subscriber(cx.peer_key())
    } else {
        Create::No
    };
    if let Err((i, e)) = cx.broker.check_resolve(&exact, by, true) {
        return fail_broker(cx, req, exact.get(i).copied().unwrap_or(""), &e);
    }
    // The reactor finds or makes these streams, in this order: exact
    // topics, then selector streams (each once).
    let mut reads: Vec<&str> = Vec::with_capacity(topics.len());
    let mut sees: Vec<bool> = Vec::with_capacity(topics.len());
    for name in dedup(&exact) {
        reads.push(name);
        sees.push(
            exact
                .iter()
                .position(|t| *t == name)
                .is_some_and(|p| exact_sees[p]),
        );
    }
    // Anonymous subscribers' selector streams come from a pool per client
    // address, so a few of them cannot take every slot.
    let anon = match (&grants, cx.peer) {
        (None, Some(std::net::IpAddr::V4(v4))) => Some(u128::from(v4.to_ipv6_mapped())),
        (None, Some(std::net::IpAddr::V6(v6))) => Some(u128::from(v6)),
        // Address unknown: one pool for all such.
        (None, None) => Some(0),
        (Some(_), _) => None,
    };
    let mut wanted: Vec<Selector> = Vec::new();
    for sel in selectors.into_iter().filter(|s| !is_exact(s.as_str())) {
        if !wanted.iter().any(|w| w.as_str() == sel.as_str()) {
            sees.push(selector_sees_private(grants.as_ref(), sel.as_str()));
            wanted.push(sel);
        }
    }
    reads.extend(wanted.iter().map(Selector::as_str));
    let resume = match last_event_id(req) {
        Some(r) if r == "earliest" => Resume::Earliest,
        r => cx.resume(r.as_deref(), sees.contains(&true)),
    };
    // The newest event this subscriber could have been sent, so the header
    // tells nothing of private events it may not see ("earliest": none).
    // (A stream not made yet has published nothing.)
    let last = reads
        .iter()
        .zip(&sees)
        .filter_map(|(name, &sees)| {
            let s = cx.broker.get(cx.broker.find(name)?)?;
            Some(if sees { s.last_id } else { s.last_public_id })
        })
        .max()
        .filter(|&id| id > 0)
        .map_or_else(|| "earliest".to_string(), |id| id.to_string());
    // Mercure: the subscription ends when the token expires.
    let until = grants.as_ref().and_then(|g| g.exp);
    let to = Targets::Topics {
        exact: dedup(&exact).into_iter().map(str::to_string).collect(),
        by,
        selectors: wanted,
        anon,
    };
    cx.stream_until(req, to, &sees, &resume, &[("Last-Event-ID", last)], until);
}

/// `names` without repeats, in first-seen order (what `resolve` returns
/// indices for).
fn dedup<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::with_capacity(names.len());
    for n in names {
        if !out.contains(n) {
            out.push(n);
        }
    }
    out
}

/// Mercure's resume cursor: the `Last-Event-ID` header, else the
/// `lastEventID` query parameter.
fn last_event_id(req: &Request<'_>) -> Option<String> {
    let raw = match req.header("last-event-id") {
        Some(v) => String::from_utf8_lossy(v).into_owned(),
        None => req.query_first("lastEventID")?.into_owned(),
    };
    let raw = raw.trim();
    (!raw.is_empty()).then(|| raw.to_string())
}

fn fail_broker(cx: &mut Cx<'_>, req: &Request<'_>, topic: &str, e: &BrokerError) {
    match e {
        BrokerError::TooMany | BrokerError::TooManyUnclaimed => {
            cx.counters.reject("too_many_streams")
        }
        BrokerError::TooManyUnclaimedHere { .. } => cx.counters.reject("subscriber_streams_per_ip"),
        _ => {}
    }
    let msg = match e {
        BrokerError::BadName => format!(
            "bad topic {topic:?}: 1..={MAX_TOPIC_BYTES} bytes without control characters, braces, or a lone *"
        ),
        _ => format!("topic {topic:?}: {}", e.message()),
    };
    cx.fail(req, crate::handler::status(e), &msg);
}

/// A publish form, checked.
struct Update {
    topics: Vec<String>,
    event: Event,
    private: bool,
    id: Option<String>,
}

fn parse_form(req: &Request<'_>, max_topics: usize) -> Result<Update, String> {
    let ctype = req
        .header_str("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if !ctype.starts_with("application/x-www-form-urlencoded") {
        return Err(
            "publish with Content-Type: application/x-www-form-urlencoded (topic=...&data=...)"
                .into(),
        );
    }
    let body =
        std::str::from_utf8(&req.body).map_err(|_| "request body must be UTF-8".to_string())?;
    let mut u = Update {
        topics: Vec::new(),
        event: Event::new(""),
        private: false,
        id: None,
    };
    for (k, v) in http::query_pairs(body) {
        match &*k {
            "topic" => {
                if u.topics.len() == max_topics {
                    return Err(format!(
                        "too many topics: at most {max_topics} per update (--max-streams-per-conn)"
                    ));
                }
                if !valid_topic(&v) {
                    return Err(format!("bad topic {v:?}: 1..={MAX_TOPIC_BYTES} bytes without control characters, braces, or a lone *"));
                }
                if !u.topics.iter().any(|t| *t == *v) {
                    u.topics.push(v.into_owned());
                }
            }
            "data" => u.event.data = v.into_owned(),
            // Mercure: the field's presence makes the update private.
            "private" => u.private = !matches!(v.trim(), "0" | "false" | "off"),
            "id" => {
                let ok = !v.is_empty()
                    && v.len() <= MAX_ID_BYTES
                    && !v.starts_with('#')
                    && !v.contains(['\r', '\n', '\0']);
                if !ok {
                    return Err(format!("bad id: 1..={MAX_ID_BYTES} bytes, not starting with '#', without CR, LF or NUL"));
                }
                u.id = Some(v.into_owned());
            }
            "type" => u.event.event = Some(v.into_owned()),
            "retry" => match v.trim().parse::<u64>() {
                Ok(n) if n <= MAX_RETRY_MS => u.event.retry = Some(n as u32),
                _ => {
                    return Err(format!(
                        "bad retry {v:?}: milliseconds, at most {MAX_RETRY_MS}"
                    ))
                }
            },
            _ => {}
        }
    }
    if u.topics.is_empty() {
        return Err("missing topic: the form needs at least one topic field".into());
    }
    u.event.check()?;
    Ok(u)
}

fn publish(cx: &mut Cx<'_>, req: &Request<'_>) {
    let Some(rights) = cx.writer(req, Op::Publish) else {
        return;
    };
    let u = match parse_form(req, cx.cfg.max_streams_per_conn) {
        Ok(u) => u,
        Err(msg) => {
            cx.counters.reject("bad_event");
            return cx.fail(req, 400, &msg);
        }
    };
    if let Err(d) = rights.covers_as(&u.topics, "topic ") {
        return cx.deny(req, &d);
    }
    let names: Vec<&str> = u.topics.iter().map(String::as_str).collect();
    if let Err((i, e)) = cx.broker.check_resolve(&names, Create::Publisher, true) {
        return fail_broker(cx, req, names.get(i).copied().unwrap_or(""), &e);
    }
    let private = u.private || cx.names_private(&u.topics);
    // A publisher's own id is spelled into the frame (every node, and a
    // journal read back, learns the alias from its `id:` line); ssed's
    // numeric id otherwise.
    let ev = u.event;
    let body = match &u.id {
        Some(c) => Body::Fixed(frame::encode(
            Some(c),
            ev.event.as_deref(),
            &ev.data,
            ev.retry,
        )),
        None => Body::Numbered(ev),
    };
    let shape = cx.shape(req);
    cx.publish(Publish {
        to: Targets::Names {
            names: u.topics,
            by: Create::Publisher,
            topics: true,
        },
        events: vec![body],
        private,
        reply: Reply::Hub {
            shape,
            custom: u.id,
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Grants;

    #[test]
    fn exact_and_selector_sees_private() {
        assert!(is_exact("https://example.com/books/1"));
        assert!(!is_exact("*"));
        assert!(!is_exact("https://example.com/books/{id}"));
        let g = Grants {
            publish: vec![],
            subscribe: vec![Selector::parse("/b/{id}").unwrap()],
            exp: None,
        };
        assert!(selector_sees_private(Some(&g), "/b/{id}"));
        assert!(!selector_sees_private(Some(&g), "*"));
        assert!(!selector_sees_private(Some(&g), "/b/{x}/c"));
        assert!(!selector_sees_private(None, "*"));
        let all = Grants {
            publish: vec![],
            subscribe: vec![Selector::parse("*").unwrap()],
            exp: None,
        };
        assert!(selector_sees_private(Some(&all), "/anything/{x}"));
    }

    #[test]
    fn dedup_keeps_order() {
        assert_eq!(dedup(&["a", "b", "a", "c"]), vec!["a", "b", "c"]);
    }
}
