//! Member notifications (seed 001, mkapiczy's server-sent-events service)
//! at `/notification/events`, and at `/events` for requests that carry a
//! member id and no `stream`.
//!
//! - `GET` with `Member-ID` (or `MemberId`), optional `Device-Id`, optional
//!   `Last-Event-ID` (header, or `?last_event_id=`): an event stream of
//!   that member's notifications. A second connection for the same member
//!   and device replaces the first, which is ended. A Last-Event-ID replays
//!   what the member missed; one this server does not know (too old, or
//!   from before a restart) gets a `gap` event and then everything
//!   retained, so nothing is lost silently.
//! - `POST` with `Member-ID` and body `{"event":{"type":"T","body":{...}}}`
//!   (publish rights as for `/events`): every device of the member gets
//!   `id: <uuid v4>`, `event: T`, `data: <body + "timestamp": ISO-8601
//!   UTC>`. Reply `200 {"id":"<uuid>","devices":N}`, N being how many
//!   connections the event was queued to.
//!
//! Delivery rides on the core: one internal stream `!member/<id>` per
//! member holds the encoded frames (shared by that member's devices), and
//! a bounded uuid → server-id index turns a uuid Last-Event-ID into a
//! position in it. This module owns that index and the device table; it
//! must not write frames to sockets itself.
//!
//! Bounds: at most [`MAX_MEMBERS`] members have state. Subscribing needs
//! no credentials, so what subscribers can do to others is bounded: one
//! peer address holds at most [`MAX_SUBSCRIPTIONS_PER_PEER`] member
//! streams (429 past it), and when the table is full a subscription may
//! only push out a member that has neither history nor a connected device
//! (503 if there is none): it never evicts anyone's retained events. An
//! authorised publish, when full, forgets the least recently used member
//! without a device (empty ones first), else one with devices but no
//! history (its devices' streams end), so subscribers cannot lock
//! publishing out; only a table of members that all have both history and
//! devices makes it 503. Per member: the last [`HISTORY`] events and at most
//! [`HISTORY_BYTES`] of them (fewer if `--history`/`--history-bytes` are
//! lower), and the uuid index holds the same number of entries. An event
//! body is at most [`MAX_EVENT_BYTES`]. The device table has one entry per
//! open connection that sent a `Device-Id`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;

use serde_json::{Map, Value};

use super::ids;
use crate::access::Op;
use crate::broker::{Limits, Resume};
use crate::frame;
use crate::handler::{last_event_id, Action, Body, Cx, Internal, Publish, Reply, Targets};
use crate::http::Response;
use crate::http::{Method, Request};
use crate::id::{ConnKey, EventId};

/// Members with state, at most.
pub const MAX_MEMBERS: usize = 4096;
/// Events retained per member.
pub const HISTORY: usize = 100;
/// Bytes of encoded events retained per member.
pub const HISTORY_BYTES: usize = 64 << 10;
/// Member streams one peer address may hold open (429 past it).
pub const MAX_SUBSCRIPTIONS_PER_PEER: usize = 64;
/// Largest accepted POST body.
pub const MAX_EVENT_BYTES: usize = 32 << 10;

/// History bounds of a member's stream.
pub const CAP: Limits = Limits {
    history: HISTORY,
    history_bytes: HISTORY_BYTES,
};

/// Member streams are named this plus the member id.
pub const STREAM_PREFIX: &str = "!member/";

/// One member: the uuid → server id index (its internal stream is found
/// by name, [`STREAM_PREFIX`] + the member id: the reactor makes it).
struct Member {
    ids: VecDeque<(Box<str>, EventId)>,
    last_used: u64,
}

/// State of the member-notification app.
#[derive(Default)]
pub struct Members {
    members: HashMap<Box<str>, Member>,
    /// (member, device) → the connection currently serving it.
    devices: HashMap<(Box<str>, Box<str>), ConnKey>,
    /// The reverse, so a freed connection drops its entry.
    by_key: HashMap<ConnKey, (Box<str>, Box<str>)>,
    /// A use counter for least-recently-used eviction.
    uses: u64,
    /// Member streams open per peer address (`None`: a client a trusted
    /// proxy could not name).
    per_peer: HashMap<Option<IpAddr>, u32>,
    /// The peer each member stream is counted under.
    peer_of: HashMap<ConnKey, Option<IpAddr>>,
}

impl Members {
    /// A member's stream was deleted (read back from a journal).
    pub fn forget(&mut self, member: &str) {
        self.members.remove(member);
    }

    /// A member event with `uuid` read back from a journal: index it so a
    /// resume across the restart is exact. Members past [`MAX_MEMBERS`]
    /// keep their stream but not an index (a resume gets `gap` and all that
    /// is retained).
    pub fn restored(&mut self, member: &str, id: EventId, uuid: &str) {
        if !self.members.contains_key(member) {
            if self.members.len() >= MAX_MEMBERS || !super::valid_ident(member) {
                return;
            }
            self.uses += 1;
            self.members.insert(
                member.into(),
                Member {
                    ids: VecDeque::new(),
                    last_used: self.uses,
                },
            );
        }
        self.record(member, uuid, id);
    }

    /// A connection was freed: forget its device registration, unless a
    /// newer connection already took the device over.
    pub fn on_close(&mut self, key: ConnKey) {
        if let Some(md) = self.by_key.remove(&key) {
            if self.devices.get(&md) == Some(&key) {
                self.devices.remove(&md);
            }
        }
        self.uncount(key);
    }

    /// Stops counting connection `key` against its peer.
    fn uncount(&mut self, key: ConnKey) {
        if let Some(peer) = self.peer_of.remove(&key) {
            if let Some(n) = self.per_peer.get_mut(&peer) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_peer.remove(&peer);
                }
            }
        }
    }
}

/// [`ensure`], answering 503 itself when every member slot is in use.
fn ensure_or_busy(
    cx: &mut Cx<'_>,
    m: &mut Members,
    req: &Request<'_>,
    member: &str,
    publisher: bool,
) -> Option<Targets> {
    if ensure(cx, m, member, publisher).is_none() {
        let resp = Response::error(503, "too many members are connected; retry later")
            .header("Retry-After", "1");
        cx.reply(req, resp);
        return None;
    }
    Some(Targets::Internal(vec![Internal {
        name: stream_name(member),
        cap: Some(CAP),
        // `gap` events name the member, not its internal stream.
        display: Some(member.to_string()),
    }]))
}

/// A member's internal stream.
fn stream_name(member: &str) -> String {
    format!("{STREAM_PREFIX}{member}")
}

/// The member id of a request, from `Member-ID` or `MemberId`.
fn member_id<'r>(req: &'r Request<'_>) -> Option<&'r str> {
    req.header_str("member-id")
        .or_else(|| req.header_str("memberid"))
        .filter(|s| !s.is_empty())
}

/// Whether an `/events` request is the member app's: it has a member id
/// and no `stream` parameter.
pub fn wants(req: &Request<'_>) -> bool {
    member_id(req).is_some()
        && req.query_all("stream").next().is_none()
        && req.query_all("topic").next().is_none()
}

/// `/notification/events` (and member requests to `/events`).
pub fn handle(cx: &mut Cx<'_>, m: &mut Members, req: &Request<'_>) {
    match req.method {
        Method::Get | Method::Head => subscribe(cx, m, req),
        Method::Post => publish(cx, m, req),
        _ => cx.not_allowed(req, "GET, HEAD, POST, OPTIONS"),
    }
}

/// Checks the member id header; replies 400 and returns `None` if bad.
fn checked_member(cx: &mut Cx<'_>, req: &Request<'_>) -> Option<String> {
    match member_id(req) {
        None => {
            cx.fail(
                req,
                400,
                "missing member id: send a Member-ID (or MemberId) header",
            );
            None
        }
        Some(m) if !super::valid_ident(m) => {
            cx.fail(
                req,
                400,
                "bad Member-ID: 1..=128 letters, digits or . _ : @ -",
            );
            None
        }
        Some(m) => Some(m.to_string()),
    }
}

/// The member's state, created if needed (making room as the module doc
/// says: an authorised `publisher` may push out more than a subscriber);
/// `None` when there is no room.
fn ensure(cx: &mut Cx<'_>, m: &mut Members, member: &str, publisher: bool) -> Option<()> {
    m.uses += 1;
    let now = m.uses;
    if let Some(st) = m.members.get_mut(member) {
        st.last_used = now;
        return Some(());
    }
    if m.members.len() >= MAX_MEMBERS {
        let broker = cx.broker;
        let state = |name: &str| {
            let s = broker.find(&stream_name(name)).and_then(|i| broker.get(i));
            let devices = s.is_some_and(|s| !s.subs.is_empty());
            let history = s.is_some_and(|s| s.retained() > 0);
            (devices, history)
        };
        // Subscriber: only members with neither. Publisher: any member
        // without devices (empty first), else one with no history.
        let victim = m
            .members
            .iter()
            .filter(|(name, _)| match state(name) {
                (false, false) => true,
                (false, true) | (true, false) => publisher,
                (true, true) => false,
            })
            .min_by_key(|(name, st)| {
                let (devices, history) = state(name);
                (devices, history, st.last_used)
            })
            .map(|(name, _)| name.clone());
        let name = victim?;
        m.members.remove(&name);
        log::debug!("members: table full; forgetting member {name} for {member}");
        // Its devices (if any) are flushed and ended by the reactor.
        if let Some(idx) = cx.broker.find(&stream_name(&name)) {
            cx.actions.push(Action::DeleteStream(idx));
        }
    }
    m.members.insert(
        member.into(),
        Member {
            ids: VecDeque::new(),
            last_used: now,
        },
    );
    Some(())
}

fn subscribe(cx: &mut Cx<'_>, m: &mut Members, req: &Request<'_>) {
    if cx.allow(req, Op::AppStream).is_none() {
        return;
    }
    let Some(member) = checked_member(cx, req) else {
        return;
    };
    let device = req.header_str("device-id").filter(|d| !d.is_empty());
    if device.is_some_and(|d| !super::valid_ident(d)) {
        return cx.fail(
            req,
            400,
            "bad Device-Id: 1..=128 letters, digits or . _ : @ -",
        );
    }
    let raw = last_event_id(req);
    let counted = req.method == Method::Get;
    let held = m.per_peer.get(&cx.peer).copied().unwrap_or(0) as usize;
    // A device reconnecting from the same address replaces its old stream,
    // which does not count against the new one.
    let replacing = device.and_then(|d| {
        let old = *m.devices.get(&(member.as_str().into(), d.into()))?;
        (m.peer_of.get(&old) == Some(&cx.peer)).then_some(old)
    });
    if counted && replacing.is_none() && held >= MAX_SUBSCRIPTIONS_PER_PEER {
        cx.counters.reject("member_peer_limit");
        let msg = format!(
            "too many member streams from your address: at most {MAX_SUBSCRIPTIONS_PER_PEER}"
        );
        let resp = Response::error(429, &msg).header("Retry-After", "1");
        return cx.reply(req, resp);
    }
    let Some(to) = ensure_or_busy(cx, m, req, &member, false) else {
        cx.counters.reject("too_many_members");
        return;
    };
    if counted {
        if let Some(old) = replacing {
            m.uncount(old);
        }
        if let Some(conn) = cx.conn {
            m.uncount(conn);
            *m.per_peer.entry(cx.peer).or_insert(0) += 1;
            m.peer_of.insert(conn, cx.peer);
        }
    }
    let resume = match &raw {
        None => Resume::Live,
        Some(r) => {
            let known = m
                .members
                .get(member.as_str())
                .and_then(|st| st.ids.iter().find(|(u, _)| &**u == r).map(|(_, id)| *id))
                .or_else(|| in_ring(cx, &member, r));
            match known {
                Some(id) => Resume::After(id, r.to_string()),
                // Unknown (evicted, from before a restart, or bogus): the
                // core sends `gap`, then all that is retained.
                None => Resume::Unparsable(r.to_string()),
            }
        }
    };
    let device = device.filter(|_| req.method == Method::Get);
    if let (Some(d), Some(key)) = (device, cx.conn) {
        let md: (Box<str>, Box<str>) = (member.as_str().into(), d.into());
        let old = m.devices.insert(md.clone(), key);
        m.by_key.insert(key, md);
        if let Some(old) = old.filter(|&o| o != key) {
            m.by_key.remove(&old);
            log::debug!("member {member} device {d}: connection {old} replaced by {key}");
            cx.end(old);
        }
    }
    cx.stream(req, to, &resume, &[]);
}

/// The server id of the retained frame whose `id:` line is `uuid` (events
/// that came from another node through the bus are not in the index).
fn in_ring(cx: &Cx<'_>, member: &str, uuid: &str) -> Option<EventId> {
    let s = cx.broker.get(cx.broker.find(&stream_name(member))?)?;
    let f = s
        .frames_after(EventId::NONE)
        .find(|f| frame::leading_id(f.sse()) == Some(uuid))?;
    Some(f.id)
}

impl Members {
    /// A member event `uuid` got server id `id` (published here, or
    /// arrived through the bus: both may tell, so a repeat is ignored).
    pub fn record(&mut self, member: &str, uuid: &str, id: EventId) {
        if let Some(st) = self.members.get_mut(member) {
            if st.ids.iter().rev().any(|(u, i)| *i == id && &**u == uuid) {
                return;
            }
            st.ids.push_back((uuid.into(), id));
            while st.ids.len() > HISTORY {
                st.ids.pop_front();
            }
        }
    }
}

/// Parses `{"event":{"type":"T","body":{...}}}` into the type and body.
fn parse_event(body: &[u8]) -> Result<(String, Map<String, Value>), String> {
    let text = std::str::from_utf8(body).map_err(|_| "request body must be UTF-8".to_string())?;
    let v: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON body: {e}"))?;
    let shape = "body must be {\"event\":{\"type\":\"TYPE\",\"body\":{...}}}";
    let ev = v
        .get("event")
        .and_then(Value::as_object)
        .ok_or_else(|| shape.to_string())?;
    let t = match ev.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => return Err(format!("missing event.type: {shape}")),
    };
    if !frame::valid_event_type(&t) {
        return Err(format!(
            "bad event.type {t:?}: 1..=64 visible ASCII characters without ':'"
        ));
    }
    let body = match ev.get("body") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(format!("event.body must be an object: {shape}")),
    };
    Ok((t, body))
}

fn publish(cx: &mut Cx<'_>, m: &mut Members, req: &Request<'_>) {
    // Credentials first, so a refused client learns nothing of the
    // member id's checks; then the rights over this member's stream.
    if cx.writer(req, Op::Publish).is_none() {
        return;
    }
    let Some(member) = checked_member(cx, req) else {
        return;
    };
    if cx.writer(req, Op::MemberPublish(&member)).is_none() {
        return;
    }
    if req.body.len() > MAX_EVENT_BYTES {
        let msg = format!("event body is larger than {MAX_EVENT_BYTES} bytes");
        return cx.fail(req, 413, &msg);
    }
    let (etype, mut body) = match parse_event(&req.body) {
        Ok(x) => x,
        Err(msg) => {
            cx.counters.reject("bad_event");
            return cx.fail(req, 400, &msg);
        }
    };
    let Some(to) = ensure_or_busy(cx, m, req, &member, true) else {
        cx.counters.reject("too_many_members");
        return;
    };
    let now = cx.unix_us;
    body.insert("timestamp".into(), Value::String(ids::iso8601_utc(now)));
    let uuid = ids::uuid_v4(cx.rng);
    let data = Value::Object(body).to_string();
    let bytes = frame::Block::with_capacity(data.len() + 64)
        .id(&uuid)
        .event(&etype)
        .data(&data);
    let shape = cx.shape(req);
    cx.publish(Publish {
        to,
        events: vec![Body::Fixed(bytes)],
        private: false,
        reply: Reply::Member {
            member,
            uuid,
            shape,
        },
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_bodies() {
        let (t, b) = parse_event(br#"{"event":{"type":"ORDER_SHIPPED","body":{"a":1}}}"#).unwrap();
        assert_eq!(t, "ORDER_SHIPPED");
        assert_eq!(b.get("a"), Some(&serde_json::json!(1)));
        let (_, b) = parse_event(br#"{"event":{"type":"PING"}}"#).unwrap();
        assert!(b.is_empty());
        for bad in [
            &br#"{"event":{"body":{}}}"#[..],
            br#"{"event":{"type":"A B","body":{}}}"#,
            br#"{"event":{"type":"T","body":[1]}}"#,
            br#"{"type":"T"}"#,
            br#"not json"#,
            b"\xff",
        ] {
            assert!(
                parse_event(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
