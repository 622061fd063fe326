//! The Mercure hub endpoint, `/.well-known/mercure`, in both dialects at
//! once: subscribing with `GET ?topic=SELECTOR` (legacy: exact topics,
//! `*`, URI templates) or draft-08's `match=`/`match_exact=` and
//! `match_urlpattern=`; resuming by `Last-Event-ID`, `last_event_id` or
//! `lastEventID` (`earliest` for everything retained; the response says
//! where it resumed in `Mercure-Last-Event-ID`); publishing with a `POST`
//! form (`topic`, `data`, `private`, `id`, `type`, `retry`), answered with
//! the update's id as plain text; and the RFC 9728 metadata at
//! `/.well-known/oauth-protected-resource/.well-known/mercure`.
//!
//! A topic is the stream of the same name (the mapping loses nothing; see
//! the README); `*`, templates and URL patterns read selector streams the
//! broker keeps (and pools). Tokens of either dialect are verified by the
//! access rule; refusals here carry the draft's `WWW-Authenticate`. This
//! module turns requests into broker calls and actions through [`Cx`]; it
//! must not touch sockets or keep state of its own (the alias index and
//! selector streams live in the broker).

use crate::access::{href, selector_sees_private, Allowed, Denied, Op};
use crate::auth::draft08::{self, MatchType};
use crate::auth::url::Url;
use crate::auth::Selector;
use crate::broker::{valid_topic, BrokerError, Create, Resume, MAX_TOPIC_BYTES};
use crate::event::Event;
use crate::frame;
use crate::handler::{Body, Cx, Publish, Reply, Targets};
use crate::http::{self, Method, Request, Response};
use crate::id::EventId;
use crate::presence;

/// The endpoint's path.
pub const PATH: &str = "/.well-known/mercure";
/// The RFC 9728 protected-resource metadata of the hub (the well-known
/// segment goes before the hub's path).
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource/.well-known/mercure";
/// Longest publisher-supplied event id.
pub const MAX_ID_BYTES: usize = 256;
/// A `retry` above this is refused.
const MAX_RETRY_MS: u64 = 3_600_000;

/// Routes the hub's path; `false` when the path is not the hub's.
pub fn route(cx: &mut Cx<'_>, req: &Request<'_>) -> bool {
    if req.path == METADATA_PATH {
        match req.method {
            Method::Get | Method::Head => metadata(cx, req),
            _ => cx.not_allowed(req, "GET, HEAD"),
        }
        return true;
    }
    if cx.cfg.mercure_subscriptions
        && req.path.starts_with(presence::PREFIX)
        && matches!(
            req.path.as_bytes().get(presence::PREFIX.len()),
            None | Some(b'/')
        )
    {
        subscriptions(cx, req);
        return true;
    }
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

/// Most `match_urlpattern` values in one subscription: each is a selector
/// stream from the same pools as URI templates, and each costs a match per
/// topic on its first publish, so a subscriber cannot ask for many.
pub const MAX_URL_PATTERNS: usize = 8;

/// What a subscription asks for, from its query.
struct Wanted {
    /// Exact topics (`topic=` without braces, `match=`).
    exact: Vec<String>,
    /// `*`, URI templates and URL patterns, without repeats.
    selectors: Vec<Selector>,
    /// How many values there were (the per-connection bound).
    count: usize,
    /// Each value's match type and value, as active subscriptions
    /// announce them.
    named: Vec<(&'static str, String)>,
}

/// Reads `topic=` (legacy selectors), `match=`/`match_exact=` and
/// `match_urlpattern=` (draft-08); `Err` is the 400's reason.
fn wanted(req: &Request<'_>, hub: Option<&Url>, max: usize) -> Result<Wanted, String> {
    let mut w = Wanted {
        exact: Vec::new(),
        selectors: Vec::new(),
        count: 0,
        named: Vec::new(),
    };
    let mut patterns = 0;
    let push_sel = |w: &mut Wanted, sel: Selector| {
        if !w.selectors.iter().any(|s| s.as_str() == sel.as_str()) {
            w.selectors.push(sel);
        }
    };
    for (k, v) in http::query_pairs(req.query) {
        let kind = match &*k {
            "topic" => None,
            name => match MatchType::from_query_param(name) {
                Ok(Some(t)) => Some(t),
                Ok(None) => continue,
                Err(()) => {
                    return Err(format!(
                        "unknown parameter {name:?}: match, match_exact or match_urlpattern"
                    ))
                }
            },
        };
        w.count += 1;
        if w.count > max {
            return Err(format!(
                "too many topics: at most {max} per subscription (--max-streams-per-conn)"
            ));
        }
        if !draft08::valid_protocol_string(&v) {
            return Err(format!(
                "bad {k} value: control or format characters are not allowed"
            ));
        }
        // Templates and URL patterns have their own bounds.
        if v.is_empty() || (kind == Some(MatchType::Exact) && v.len() > MAX_TOPIC_BYTES) {
            return Err(format!("bad {k} value: 1..={MAX_TOPIC_BYTES} bytes"));
        }
        // Legacy `topic=`: an exact topic or `*` is `exact`; a template is
        // not a draft-08 type.
        w.named.push(match kind {
            Some(t) => (t.name(), v.to_string()),
            None if v.contains('{') => (presence::URI_TEMPLATE, v.to_string()),
            None => ("exact", v.to_string()),
        });
        match kind {
            None => match Selector::parse(&v) {
                Ok(s) if is_exact(&v) && valid_topic(&v) => w.exact.push(s.as_str().to_string()),
                Ok(s) if !is_exact(&v) => push_sel(&mut w, s),
                Err(e) if v.contains('{') => {
                    return Err(format!("bad URI template {v:?}: {}", e.message()));
                }
                _ => {
                    return Err(format!("bad topic selector {v:?}: a topic of 1..={MAX_TOPIC_BYTES} bytes without control characters, *, or a URI template"));
                }
            },
            Some(_) if v == "*" => push_sel(&mut w, any()),
            Some(MatchType::Exact) => {
                if !valid_topic(&v) {
                    return Err(format!("bad match {v:?}: this hub's topics have no braces"));
                }
                w.exact.push(v.into_owned());
            }
            Some(MatchType::UrlPattern) => {
                patterns += 1;
                if patterns > MAX_URL_PATTERNS {
                    return Err(format!(
                        "too many match_urlpattern values: at most {MAX_URL_PATTERNS} per subscription"
                    ));
                }
                let sel = Selector::url_pattern(&v, hub)
                    .map_err(|e| format!("bad match_urlpattern {v:?}: {}", e.message()))?;
                push_sel(&mut w, sel);
            }
        }
    }
    if w.count == 0 {
        return Err(
            "missing topic: subscribe with GET /.well-known/mercure?match=TOPIC (or topic=SELECTOR, match_urlpattern=PATTERN)"
                .into(),
        );
    }
    Ok(w)
}

fn any() -> Selector {
    // `*` always parses.
    Selector::parse("*").unwrap_or_else(|_| unreachable!())
}

/// Answers an authorization failure the draft's way: the JSON reason,
/// and `WWW-Authenticate: Bearer` with `resource_metadata` and `error`.
fn deny(cx: &mut Cx<'_>, req: &Request<'_>, d: &Denied) {
    cx.counters.reject(d.counter);
    let metadata = hub_of(cx, req)
        .map(|h| draft08::metadata_url(&h))
        .unwrap_or_default();
    let mut challenge = format!("Bearer resource_metadata=\"{metadata}\"");
    if let Some(code) = d.code {
        challenge.push_str(&format!(", error=\"{code}\""));
    }
    let resp = Response::error(d.status, &d.msg).header("WWW-Authenticate", challenge);
    cx.reply(req, resp);
}

/// The RFC 9728 document: what a client needs to get and present a token.
fn metadata(cx: &mut Cx<'_>, req: &Request<'_>) {
    let Some(hub) = hub_of(cx, req) else {
        return cx.fail(req, 400, "the metadata needs a Host header naming the hub");
    };
    let o = draft08::MetadataOptions {
        authorization_servers: cx.cfg.jwt_issuer.iter().cloned().collect(),
        cookie: true,
        query: false,
        subscriptions: cx.cfg.mercure_subscriptions,
    };
    let doc = draft08::protected_resource_metadata(&href(&hub), &o);
    let mut resp = Response::json(200, &doc);
    for (k, v) in links(Some(&hub)) {
        resp = resp.header(k, v);
    }
    cx.reply(req, resp);
}

fn hub_of(cx: &Cx<'_>, req: &Request<'_>) -> Option<Url> {
    crate::access::hub_url(&cx.facts(req))
}

/// `Link` headers of hub responses: the hub (`rel="mercure"`) and its
/// RFC 9728 metadata.
fn links(hub: Option<&Url>) -> Vec<(&'static str, String)> {
    match hub {
        Some(h) => vec![
            ("Link", format!("<{}>; rel=\"mercure\"", href(h))),
            (
                "Link",
                format!(
                    "<{}>; rel=\"oauth-protected-resource\"",
                    draft08::metadata_url(h)
                ),
            ),
        ],
        None => Vec::new(),
    }
}

fn subscribe(cx: &mut Cx<'_>, req: &Request<'_>) {
    let hub = hub_of(cx, req);
    let w = match wanted(req, hub.as_ref(), cx.cfg.max_streams_per_conn) {
        Ok(w) => w,
        Err(msg) => {
            cx.counters.reject("bad_request");
            return cx.fail(req, 400, &msg);
        }
    };
    let grants = match cx.access.decide(Op::Subscribe, &cx.facts(req)) {
        Ok(Allowed::Subscriber(g)) => g,
        Ok(_) => None,
        Err(d) => return deny(cx, req, &d),
    };
    let exact: Vec<&str> = dedup(&w.exact.iter().map(String::as_str).collect::<Vec<_>>());
    let exact_sees = match cx.access.subscribe(grants.as_ref(), &exact) {
        Ok(v) => v,
        Err(d) => return deny(cx, req, &d),
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
    let mut reads: Vec<&str> = exact.clone();
    let mut sees: Vec<bool> = exact_sees;
    // Anonymous subscribers' selector streams come from a pool per client
    // address, so a few of them cannot take every slot.
    let anon = match (&grants, cx.peer) {
        (None, Some(std::net::IpAddr::V4(v4))) => Some(u128::from(v4.to_ipv6_mapped())),
        (None, Some(std::net::IpAddr::V6(v6))) => Some(u128::from(v6)),
        // Address unknown: one pool for all such.
        (None, None) => Some(0),
        (Some(_), _) => None,
    };
    for sel in &w.selectors {
        sees.push(selector_sees_private(grants.as_ref(), sel));
    }
    reads.extend(w.selectors.iter().map(Selector::as_str));
    let cursor = crate::handler::last_event_id(req);
    let resume = match cursor.as_deref() {
        Some("earliest") => Resume::Earliest,
        r => cx.resume(r, sees.contains(&true)),
    };
    // The newest event this subscriber could have been sent, so the header
    // tells nothing of private events it may not see ("earliest": none).
    // (A topic stream not made yet has published nothing.)
    let last = reads
        .iter()
        .zip(&sees)
        .filter_map(|(name, &sees)| {
            // A selector stream not made yet: what it will be rebuilt from.
            if let Some(sel) = w.selectors.iter().find(|s| s.as_str() == *name) {
                return Some(cx.broker.selector_view(sel, sees).0);
            }
            let s = cx.broker.get(cx.broker.find(name)?)?;
            Some(if sees { s.last_id } else { s.last_public_id })
        })
        .max()
        .filter(|&id| id > EventId::NONE)
        .map_or_else(|| "earliest".to_string(), |id| id.to_string());
    let mut headers = vec![("Last-Event-ID", last)];
    if cursor.is_some() {
        headers.push((
            "Mercure-Last-Event-ID",
            reconciled(cx, &reads, &sees, &resume, &w.selectors),
        ));
    }
    headers.extend(links(hub.as_ref()));
    // Mercure: the subscription ends when the token expires.
    let until = grants.as_ref().and_then(|g| g.exp);
    let joined = cx.cfg.mercure_subscriptions.then(|| {
        let subs = w
            .named
            .iter()
            .map(|(t, m)| presence::Sub {
                match_type: t,
                matcher: m.as_str().into(),
                payload: grants
                    .as_ref()
                    .and_then(|g| g.draft08.as_ref())
                    .and_then(|g| g.payload_for(&draft08::Topic::new(m, hub.as_ref())))
                    .map(|p| std::rc::Rc::new(p.clone())),
            })
            .collect();
        let peer = cx.peer_key();
        Box::new(presence::Joined::new(cx.rng, peer, subs, MAX_TOPIC_BYTES))
    });
    let to = Targets::Topics {
        exact: exact.iter().map(|s| s.to_string()).collect(),
        by,
        selectors: w.selectors,
        anon,
    };
    cx.stream_until(req, to, &sees, &resume, &headers, until);
    if let Some(crate::handler::Action::Subscribe(s)) = cx.actions.last_mut() {
        s.presence = joined;
    }
}

/// The subscriptions API (`--mercure-subscriptions`): a subscribe grant
/// on the requested path (the same relative form as the events' topics)
/// is needed; the answer is this node's table (every node's subscribers
/// with `--redis`).
fn subscriptions(cx: &mut Cx<'_>, req: &Request<'_>) {
    if !matches!(req.method, Method::Get | Method::Head) {
        return cx.not_allowed(req, "GET, HEAD");
    }
    let hub = hub_of(cx, req);
    let grants = match cx.access.decide(Op::Subscribe, &cx.facts(req)) {
        Ok(Allowed::Subscriber(g)) => g,
        Ok(_) => None,
        Err(d) => return deny(cx, req, &d),
    };
    let granted = grants.as_ref().map(|g| match &g.draft08 {
        Some(d) => d.can_subscribe(&draft08::Topic::new(req.path, hub.as_ref())),
        None => g.can_subscribe(req.path),
    });
    let denied = |status, counter, code, msg: &str| Denied {
        status,
        msg: msg.into(),
        counter,
        code,
    };
    match granted {
        None => {
            let msg = "the subscriptions API needs a token granting subscribe on its path";
            return deny(cx, req, &denied(401, "unauthorized", None, msg));
        }
        Some(false) => {
            let msg = "the token does not grant subscribe on this path";
            let d = denied(403, "forbidden", Some("insufficient_scope"), msg);
            return deny(cx, req, &d);
        }
        Some(true) => {}
    }
    let last = match cx.broker.ids().last() {
        EventId::NONE => "earliest".to_string(),
        n => n.to_string(),
    };
    match cx.presence.api(req.path, &last) {
        Ok(Some(doc)) => {
            let mut resp = Response::new(200, "application/ld+json", doc.to_string())
                .header("ETag", format!("\"{last}\""))
                .header("Cache-Control", "must-revalidate");
            if let Some(h) = &hub {
                let link = format!("<{}>; rel=\"mercure\"; last-event-id=\"{last}\"", href(h));
                resp = resp.header("Link", link);
            }
            cx.reply(req, resp);
        }
        Ok(None) => cx.fail(req, 404, "no such subscription"),
        Err(msg) => cx.fail(req, 400, &msg),
    }
}

/// `Mercure-Last-Event-ID`: the cursor the subscription resumes after when
/// every stream it reads still holds what followed it, else `earliest`
/// (unknown, unparsable, or not retained; a selector stream not made yet
/// is judged by what it will be rebuilt from).
fn reconciled(
    cx: &Cx<'_>,
    reads: &[&str],
    sees: &[bool],
    resume: &Resume,
    selectors: &[Selector],
) -> String {
    let Resume::After(id, raw) = resume else {
        return "earliest".into();
    };
    let ids = cx.broker.ids();
    if *id < ids.first() || *id > ids.last() {
        return "earliest".into();
    }
    let kept = reads.iter().zip(sees).all(|(name, &sees)| {
        if let Some(sel) = selectors.iter().find(|s| s.as_str() == *name) {
            return !cx.broker.selector_lost_after(sel, *id, sees);
        }
        cx.broker
            .find(name)
            .and_then(|i| cx.broker.get(i))
            .is_some_and(|s| !s.lost_after(*id, sees))
    });
    if kept {
        raw.clone()
    } else {
        "earliest".into()
    }
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

fn parse_form(req: &Request<'_>, max_topics: usize, hub: Option<&Url>) -> Result<Update, String> {
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
                if !valid_topic(&v) || !draft08::valid_protocol_string(&v) {
                    return Err(format!("bad topic {v:?}: 1..={MAX_TOPIC_BYTES} bytes without control characters, braces, or a lone *"));
                }
                if inside_hub(&v, hub) {
                    return Err(format!(
                        "bad topic {v:?}: topics inside the hub's own path ({PATH}) are reserved"
                    ));
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
                    && v != "earliest"
                    && draft08::valid_protocol_string(&v);
                if !ok {
                    return Err(format!("bad id: 1..={MAX_ID_BYTES} bytes, not starting with '#', not \"earliest\", without control or format characters"));
                }
                u.id = Some(v.into_owned());
            }
            // `mercure` is the type of subscription events (active
            // subscriptions): a publisher may not forge one.
            "type" if v == "mercure" => {
                return Err(
                    "bad type \"mercure\": reserved for the hub's subscription events".into(),
                )
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

/// Whether `topic` (relative ones against the hub) names the hub itself or
/// something under its path: the draft reserves those.
fn inside_hub(topic: &str, hub: Option<&Url>) -> bool {
    let under = |path: &str| {
        path.starts_with(PATH) && matches!(path.as_bytes().get(PATH.len()), None | Some(b'/'))
    };
    if under(topic) {
        return true;
    }
    let (Some(h), Some(t)) = (hub, Url::parse(topic, hub)) else {
        return false;
    };
    t.protocol() == h.protocol()
        && t.hostname() == h.hostname()
        && t.port() == h.port()
        && under(t.pathname())
}

fn publish(cx: &mut Cx<'_>, req: &Request<'_>) {
    let rights = match cx.access.decide(Op::Publish, &cx.facts(req)) {
        Ok(Allowed::Write(r)) => r,
        Ok(_) => return cx.fail(req, 500, "the access rule gave no write rights"),
        Err(d) => return deny(cx, req, &d),
    };
    let hub = hub_of(cx, req);
    let u = match parse_form(req, cx.cfg.max_streams_per_conn, hub.as_ref()) {
        Ok(u) => u,
        Err(msg) => {
            cx.counters.reject("bad_event");
            return cx.fail(req, 400, &msg);
        }
    };
    if let Err(d) = rights.covers_as(&u.topics, "topic ") {
        return deny(cx, req, &d);
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
            ..Default::default()
        };
        assert!(selector_sees_private(
            Some(&g),
            &Selector::parse("/b/{id}").unwrap()
        ));
        assert!(!selector_sees_private(
            Some(&g),
            &Selector::parse("*").unwrap()
        ));
        assert!(!selector_sees_private(
            Some(&g),
            &Selector::parse("/b/{x}/c").unwrap()
        ));
        assert!(!selector_sees_private(None, &Selector::parse("*").unwrap()));
        let all = Grants {
            publish: vec![],
            subscribe: vec![Selector::parse("*").unwrap()],
            exp: None,
            ..Default::default()
        };
        assert!(selector_sees_private(
            Some(&all),
            &Selector::parse("/anything/{x}").unwrap()
        ));
    }

    #[test]
    fn url_patterns_are_selectors_no_topic_or_template_can_name() {
        let hub = Url::parse("http://t/.well-known/mercure", None).unwrap();
        let s = Selector::url_pattern("/books/:id", Some(&hub)).unwrap();
        assert!(!valid_topic(s.as_str()) && s.as_str().starts_with('}'));
        // A legacy token naming it literally does not cover it.
        let literal = crate::auth::Grants {
            subscribe: vec![Selector::parse(s.as_str()).unwrap()],
            ..Default::default()
        };
        assert!(!selector_sees_private(Some(&literal), &s));
        for topic in ["http://t/books/1", "/books/1"] {
            let t = crate::auth::selector::Topic::new(topic);
            assert!(s.matches(topic) && s.matches_in(&t), "{topic}");
        }
        for topic in ["http://t/books/1/x", "https://t/books/1", "urn:x"] {
            let t = crate::auth::selector::Topic::new(topic);
            assert!(!s.matches(topic) && !s.matches_in(&t), "{topic}");
        }
        // The same pattern under another hub URL is another selector.
        let other = Url::parse("http://u/.well-known/mercure", None).unwrap();
        let s2 = Selector::url_pattern("/books/:id", Some(&other)).unwrap();
        assert_ne!(s.as_str(), s2.as_str());
        let t = crate::auth::selector::Topic::new("http://u/books/1");
        assert!(!s.matches_in(&t) && s2.matches_in(&t));
    }

    #[test]
    fn dedup_keeps_order() {
        assert_eq!(dedup(&["a", "b", "a", "c"]), vec!["a", "b", "c"]);
    }
}
