//! MongooseIM's client REST API (seed 000) under `/api`: one-to-one
//! messages, MUC Light rooms, and `GET /api/sse` streaming the user's
//! `message` and `room.message` events with the seed's JSON fields.
//!
//! Every request needs HTTP Basic auth as `user@domain:password` from
//! `--users FILE` (one such line per user; blank lines and `#` comments
//! skipped; JIDs compared lowercased); without valid credentials: 401 with
//! `WWW-Authenticate: Basic realm="ssed"`. Status codes follow MongooseIM's
//! cowboy handlers (and its test suite):
//!
//! | request | success | refused |
//! |---|---|---|
//! | `GET /api/sse` | event stream | |
//! | `POST /api/messages {"to","body"}` | 200 `{"id"}` | 400 |
//! | `GET /api/messages[/WITH]?limit=&before=` | 200 `[{"id","from","to","body","timestamp"}]` (ms, oldest first) | 400 |
//! | `POST /api/rooms {"name","subject"}` | 201 `{"id"}` | 400, 503 over [`MAX_ROOMS`] |
//! | `PUT /api/rooms/ID {"name","subject"}` | 201 `{"id"}` | 400 (exists, foreign domain) |
//! | `GET /api/rooms` | 200 `[{"id","name","subject"}]` | |
//! | `GET /api/rooms/ID` | 200 `{"name","subject","participants":[{"user","role"}]}` | 403 non-member, 404 |
//! | `PUT /api/rooms/ID/config {"name","subject"}` | 204 | 403 non-owner, 404 |
//! | `POST /api/rooms/ID/users {"user"}` | 204, `affiliation` `member` to all members | 403 non-owner, 404 |
//! | `DELETE /api/rooms/ID/users/USER` | 204, `affiliation` `none` to all members before | 403 (a member may only remove itself), 404 |
//! | `POST /api/rooms/ID/messages {"body"}` | 200 `{"id"}`, `room.message` to all members | 400, 403 non-member, 404 |
//! | `GET /api/rooms/ID/messages?limit=&before=` | 200 `[{"id","from","timestamp","type",...}]` | 403 non-member, 404 |
//!
//! When the owner leaves, the longest-standing member becomes owner (an
//! `owner` affiliation event), as in MUC Light; an emptied room is deleted.
//! `?limit=` defaults to and is capped at 50 (MongooseIM's
//! `max_result_limit`); `?before=` is in ms.
//!
//! Delivery rides on the core: each user has one internal stream
//! `!user/<jid>`; all of a user's `/api/sse` connections read it (so each
//! gets every event), and a room event is one frame published once to
//! every member's stream. SSE ids are the server's numeric ids, so a
//! reconnecting client resumes with Last-Event-ID like any core
//! subscriber (MongooseIM numbers events per connection from 1; clients
//! do not rely on the values). This module owns users, rooms and the
//! message archives; it never writes to sockets.
//!
//! Bounds (memory): users are those of the file, at most [`MAX_USERS`].
//! Per user: an archive of the last [`ARCHIVE`] messages and at most
//! [`ARCHIVE_BYTES`] (entries are shared between sender and recipient), and
//! an event stream history of [`STREAM_HISTORY`] events / [`STREAM_BYTES`].
//! At most [`MAX_ROOMS`] rooms, each with at most [`MAX_ROOM_MEMBERS`]
//! members and an archive like a user's. Bodies at most [`MAX_BODY`]
//! bytes, room names and subjects at most [`MAX_NAME`]. An emptied room
//! is deleted.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::rc::Rc;

use serde_json::{json, Value};

use super::ids;
use crate::broker::{Limits, Origin, Resume};
use crate::handler::{last_event_id, Action, Cx};
use crate::http::Response;
use crate::http::{Method, Request};

/// Users read from `--users`, at most.
pub const MAX_USERS: usize = 10_000;
/// Messages kept per user archive and per room archive.
pub const ARCHIVE: usize = 500;
/// Bytes kept per archive (bodies and ids).
pub const ARCHIVE_BYTES: usize = 256 << 10;
/// Events retained in a user's event stream (for Last-Event-ID resume).
pub const STREAM_HISTORY: usize = 100;
/// Bytes retained in a user's event stream.
pub const STREAM_BYTES: usize = 128 << 10;
/// Rooms, at most.
pub const MAX_ROOMS: usize = 1000;
/// Members of one room, at most.
pub const MAX_ROOM_MEMBERS: usize = 100;
/// Largest message body.
pub const MAX_BODY: usize = 64 << 10;
/// Longest room name or subject.
pub const MAX_NAME: usize = 1024;
/// `?limit=` default and maximum, as MongooseIM's `max_result_limit`.
pub const DEFAULT_LIMIT: usize = 50;

const STREAM_CAP: Limits = Limits {
    history: STREAM_HISTORY,
    history_bytes: STREAM_BYTES,
};

const REALM_VALUE: &str = "Basic realm=\"ssed\"";

/// A bounded archive, oldest first.
struct Archive<T> {
    items: VecDeque<(Rc<T>, usize)>,
    bytes: usize,
}

impl<T> Default for Archive<T> {
    fn default() -> Self {
        Archive {
            items: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<T> Archive<T> {
    fn push(&mut self, item: Rc<T>, size: usize) {
        self.items.push_back((item, size));
        self.bytes += size;
        while self.items.len() > 1 && (self.items.len() > ARCHIVE || self.bytes > ARCHIVE_BYTES) {
            if let Some((_, s)) = self.items.pop_front() {
                self.bytes -= s;
            }
        }
    }
    fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.items.iter().map(|(t, _)| &**t)
    }
}

/// A one-to-one message.
struct Chat {
    id: String,
    from: Box<str>,
    to: Box<str>,
    body: Box<str>,
    ts_us: u64,
}

/// What happened in a room.
enum RoomKind {
    Message {
        from: Box<str>,
        body: Box<str>,
    },
    Affiliation {
        user: Box<str>,
        affiliation: &'static str,
    },
}

struct RoomItem {
    id: String,
    ts_us: u64,
    kind: RoomKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Owner,
    Member,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Member => "member",
        }
    }
}

struct Room {
    /// `muclight.<creator's domain>`.
    domain: Box<str>,
    name: Box<str>,
    subject: Box<str>,
    /// In joining order: the first member after the owner inherits
    /// ownership when the owner leaves (MUC Light does the same).
    members: Vec<(Box<str>, Role)>,
    archive: Archive<RoomItem>,
}

impl Room {
    fn role(&self, jid: &str) -> Option<Role> {
        self.members
            .iter()
            .find(|(u, _)| &**u == jid)
            .map(|(_, r)| *r)
    }
}

struct User {
    password: Box<str>,
    stream: Option<u32>,
    archive: Archive<Chat>,
}

/// State of the MongooseIM app.
#[derive(Default)]
pub struct Mongoose {
    users: HashMap<Box<str>, User>,
    rooms: HashMap<Box<str>, Room>,
    /// The last room id's timestamp, so ids stay unique within a µs.
    last_room_us: u64,
}

/// A bare JID `local@domain`, lowercased; `None` if it is not one.
pub fn bare_jid(s: &str) -> Option<String> {
    let (local, domain) = s.split_once('@')?;
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 255
            && p.chars().all(|c| {
                !c.is_whitespace()
                    && !c.is_control()
                    && !matches!(c, '@' | '/' | '"' | '&' | '\'' | ':' | '<' | '>')
            })
    };
    (ok_part(local) && ok_part(domain)).then(|| s.to_lowercase())
}

/// Parses a users file: `user@domain:password` per line.
fn parse_users(text: &str) -> HashMap<Box<str>, User> {
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((jid, password)) = line
            .split_once(':')
            .and_then(|(j, p)| Some((bare_jid(j)?, p)))
        else {
            log::warn!("--users line {}: not user@domain:password; skipped", n + 1);
            continue;
        };
        if users.len() >= MAX_USERS {
            log::warn!("--users: more than {MAX_USERS} users; the rest are ignored");
            break;
        }
        users.insert(
            jid.into(),
            User {
                password: password.into(),
                stream: None,
                archive: Archive::default(),
            },
        );
    }
    users
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, y) in b.iter().enumerate() {
        diff |= (a.get(i).copied().unwrap_or(0) ^ y) as usize;
    }
    diff == 0
}

impl Mongoose {
    /// Loads users from `file` (none without one: every request is 401).
    pub fn new(file: Option<&Path>) -> Mongoose {
        let users = match file {
            None => HashMap::new(),
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => parse_users(&text),
                Err(e) => {
                    log::error!("--users {}: {e}; /api will refuse everyone", p.display());
                    HashMap::new()
                }
            },
        };
        Mongoose {
            users,
            ..Mongoose::default()
        }
    }

    /// The user a request authenticates as, from `Authorization: Basic`.
    fn authenticate(&self, req: &Request<'_>) -> Result<String, &'static str> {
        let missing = "authentication required: HTTP Basic with user@domain:password";
        let h = req.header_str("authorization").ok_or(missing)?;
        let (scheme, cred) = h.split_once(' ').ok_or(missing)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(missing);
        }
        let bad = "invalid credentials";
        let raw = ids::base64_decode(cred.trim()).ok_or(bad)?;
        let text = String::from_utf8(raw).map_err(|_| bad)?;
        let (jid, password) = text.split_once(':').ok_or(bad)?;
        let jid = bare_jid(jid).ok_or(bad)?;
        let user = self.users.get(jid.as_str()).ok_or(bad)?;
        if constant_time_eq(password.as_bytes(), user.password.as_bytes()) {
            Ok(jid)
        } else {
            Err(bad)
        }
    }

    /// A fresh room id in MUC Light's style (`1483-609513-293487`: the
    /// creation time in µs, split), unique within this server.
    fn new_room_id(&mut self, now_us: u64) -> String {
        let us = now_us.max(self.last_room_us + 1);
        self.last_room_us = us;
        format!(
            "{}-{:06}-{:06}",
            us / 1_000_000_000_000,
            (us / 1_000_000) % 1_000_000,
            us % 1_000_000
        )
    }
}

/// Percent-decodes a path segment (`+` stays `+`); `None` if not UTF-8.
fn decode_segment(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s));
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|&h| (h as char).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// Everything a handler needs about the request.
struct Ctx<'a, 'c, 'r> {
    core: &'a mut Cx<'c>,
    mg: &'a mut Mongoose,
    req: &'a Request<'r>,
    me: String,
}

impl Ctx<'_, '_, '_> {
    fn fail(&mut self, status: u16, msg: &str) {
        self.core.fail(self.req, status, msg);
    }
    fn json(&mut self, v: &Value) {
        self.core.ok_json(self.req, v);
    }
    fn status(&mut self, status: u16, body: Option<&Value>) {
        let resp = match body {
            _ if status == 204 => Response::no_content(),
            Some(v) => Response::json(status, v),
            None => Response::new(status, "application/json", Vec::new()),
        };
        self.core.reply(self.req, resp);
    }
    fn not_allowed(&mut self, allow: &str) {
        self.core.not_allowed(self.req, allow);
    }
    /// The JSON object body, or a 400.
    fn body_object(&mut self) -> Option<serde_json::Map<String, Value>> {
        let parsed = std::str::from_utf8(&self.req.body)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(t).ok());
        match parsed {
            Some(Value::Object(o)) => Some(o),
            _ => {
                self.fail(400, "Invalid request body: expected a JSON object");
                None
            }
        }
    }
    /// `?limit=` and `?before=` (ms), or a 400.
    fn paging(&mut self) -> Option<(usize, Option<u64>)> {
        let limit = match self.req.query_first("limit") {
            None => DEFAULT_LIMIT,
            Some(l) => match l.trim().parse::<usize>() {
                Ok(n) => n.min(DEFAULT_LIMIT),
                Err(_) => {
                    self.fail(400, "Invalid limit");
                    return None;
                }
            },
        };
        let before = match self.req.query_first("before") {
            None => None,
            Some(b) => match b.trim().parse::<u64>() {
                Ok(n) => Some(n.saturating_mul(1000)),
                Err(_) => {
                    self.fail(400, "Invalid value of 'before'");
                    return None;
                }
            },
        };
        Some((limit, before))
    }
}

/// Routes `/api` + `rest`.
pub fn handle(core: &mut Cx<'_>, mg: &mut Mongoose, req: &Request<'_>, rest: &str) {
    let me = match mg.authenticate(req) {
        Ok(me) => me,
        Err(msg) => {
            core.counters.reject("unauthorized");
            let resp = Response::error(401, msg).header("WWW-Authenticate", REALM_VALUE);
            return core.reply(req, resp);
        }
    };
    let mut segs: Vec<Cow<'_, str>> = Vec::new();
    for s in rest.strip_prefix('/').unwrap_or(rest).split('/') {
        match decode_segment(s) {
            Some(d) => segs.push(d),
            None => return core.fail(req, 400, "path is not UTF-8"),
        }
    }
    let segs: Vec<&str> = segs.iter().map(|s| &**s).collect();
    let mut cx = Ctx { core, mg, req, me };
    let m = req.method;
    match segs.as_slice() {
        ["sse"] => match m {
            Method::Get => sse(&mut cx),
            _ => cx.not_allowed("GET"),
        },
        ["messages"] => match m {
            Method::Get => messages(&mut cx, None),
            Method::Post => send_message(&mut cx),
            _ => cx.not_allowed("GET, POST"),
        },
        ["messages", with] => match m {
            Method::Get => messages(&mut cx, Some(with)),
            _ => cx.not_allowed("GET"),
        },
        ["rooms"] => match m {
            Method::Get => list_rooms(&mut cx),
            Method::Post => create_room(&mut cx),
            _ => cx.not_allowed("GET, POST"),
        },
        ["rooms", id] => match m {
            Method::Get => room_details(&mut cx, id),
            Method::Put => create_room_with_id(&mut cx, id),
            _ => cx.not_allowed("GET, PUT"),
        },
        ["rooms", id, "config"] => match m {
            Method::Put => change_config(&mut cx, id),
            _ => cx.not_allowed("PUT"),
        },
        ["rooms", id, "users"] => match m {
            Method::Post => add_user(&mut cx, id),
            _ => cx.not_allowed("POST"),
        },
        ["rooms", id, "users", user] => match m {
            Method::Delete => remove_user(&mut cx, id, user),
            _ => cx.not_allowed("DELETE"),
        },
        ["rooms", id, "messages"] => match m {
            Method::Get => room_messages(&mut cx, id),
            Method::Post => send_room_message(&mut cx, id),
            _ => cx.not_allowed("GET, POST"),
        },
        _ => cx.fail(404, "no such path under /api"),
    }
}

/// The internal stream of a local user, created on first use.
fn user_stream(core: &mut Cx<'_>, mg: &mut Mongoose, jid: &str) -> Option<u32> {
    let user = mg.users.get_mut(jid)?;
    if let Some(s) = user.stream {
        return Some(s);
    }
    let s = core
        .broker
        .internal(&format!("!user/{jid}"), Some(STREAM_CAP));
    user.stream = Some(s);
    Some(s)
}

/// Publishes one event (type `etype`, JSON `data`) once to the streams of
/// every local user in `to`.
fn deliver(
    core: &mut Cx<'_>,
    mg: &mut Mongoose,
    to: &[&str],
    etype: &str,
    data: &Value,
    now_us: u64,
) {
    let mut targets: Vec<u32> = Vec::with_capacity(to.len());
    for u in to {
        if let Some(s) = user_stream(core, mg, u) {
            if !targets.contains(&s) {
                targets.push(s);
            }
        }
    }
    if targets.is_empty() {
        return;
    }
    let data = data.to_string();
    let published = core
        .broker
        .publish_with(Origin::Local, &targets, now_us, |id| {
            ids::frame_typed(&id.to_string(), etype, &data)
        });
    match published {
        Ok(p) if p.pressure => core.actions.push(Action::Flush),
        Ok(_) => {}
        Err(e) => log::warn!("api event not delivered: {}", e.message()),
    }
}

fn sse(cx: &mut Ctx<'_, '_, '_>) {
    let Some(idx) = user_stream(cx.core, cx.mg, &cx.me) else {
        return cx.fail(500, "no event stream for this user");
    };
    let raw = last_event_id(cx.req);
    cx.core
        .stream(cx.req, &[idx], &Resume::parse(raw.as_deref()), &[]);
}

fn send_message(cx: &mut Ctx<'_, '_, '_>) {
    let Some(obj) = cx.body_object() else { return };
    let (Some(Value::String(to)), Some(Value::String(body))) = (obj.get("to"), obj.get("body"))
    else {
        return cx.fail(
            400,
            "body must be {\"to\":\"user@domain\",\"body\":\"text\"}",
        );
    };
    let Some(to) = bare_jid(to) else {
        return cx.fail(400, "\"to\" must be a bare JID user@domain");
    };
    if body.len() > MAX_BODY {
        return cx.fail(
            413,
            &format!("message body is larger than {MAX_BODY} bytes"),
        );
    }
    let now = cx.core.unix_us;
    let id = ids::uuid_v4(&mut *cx.core.rng);
    let data = json!({ "to": to, "timestamp": now, "id": id, "from": cx.me, "body": body });
    deliver(cx.core, cx.mg, &[to.as_str()], "message", &data, now);
    let size = body.len() + to.len() + cx.me.len() + 96;
    let msg = Rc::new(Chat {
        id: id.clone(),
        from: cx.me.as_str().into(),
        to: to.as_str().into(),
        body: body.as_str().into(),
        ts_us: now,
    });
    let users = &mut cx.mg.users;
    if let Some(u) = users.get_mut(cx.me.as_str()) {
        u.archive.push(msg.clone(), size);
    }
    if to != cx.me {
        if let Some(u) = users.get_mut(to.as_str()) {
            u.archive.push(msg, size);
        }
    }
    cx.json(&json!({ "id": id }));
}

fn messages(cx: &mut Ctx<'_, '_, '_>, with: Option<&str>) {
    let with = match with.map(bare_jid) {
        None => None,
        Some(Some(w)) => Some(w),
        Some(None) => return cx.fail(400, "invalid JID: expected user@domain"),
    };
    let Some((limit, before)) = cx.paging() else {
        return;
    };
    let Some(user) = cx.mg.users.get(cx.me.as_str()) else {
        return cx.fail(401, "unknown user");
    };
    let me = cx.me.as_str();
    let mut picked: Vec<Value> = user
        .archive
        .iter()
        .rev()
        .filter(|m| before.is_none_or(|b| m.ts_us < b))
        .filter(|m| {
            with.as_deref()
                .is_none_or(|w| (&*m.from, &*m.to) == (w, me) || (&*m.to, &*m.from) == (w, me))
        })
        .take(limit)
        .map(|m| {
            json!({ "from": &*m.from, "to": &*m.to, "id": m.id, "body": &*m.body,
                    "timestamp": m.ts_us / 1000 })
        })
        .collect();
    picked.reverse();
    cx.json(&Value::Array(picked));
}

/// A room id from a path (a bare id or `id@muclight.domain`) that exists.
/// The requesting user's role in room `id`, if they are in it.
fn my_role(cx: &Ctx<'_, '_, '_>, id: &str) -> Option<Role> {
    cx.mg.rooms.get(id).and_then(|r| r.role(&cx.me))
}

fn find_room(cx: &mut Ctx<'_, '_, '_>, raw: &str) -> Option<String> {
    let (id, domain) = match raw.split_once('@') {
        Some((i, d)) => (i, Some(d.to_lowercase())),
        None => (raw, None),
    };
    let found = cx
        .mg
        .rooms
        .get(id)
        .is_some_and(|r| domain.as_deref().is_none_or(|d| *r.domain == *d));
    if found {
        Some(id.to_string())
    } else {
        cx.fail(404, "Room does not exist");
        None
    }
}

fn room_string(obj: &serde_json::Map<String, Value>, k: &str) -> Option<String> {
    match obj.get(k) {
        Some(Value::String(s)) if s.len() <= MAX_NAME => Some(s.clone()),
        _ => None,
    }
}

/// The `{"name","subject"}` body of room creation and configuration.
fn name_and_subject(cx: &mut Ctx<'_, '_, '_>) -> Option<(String, String)> {
    let obj = cx.body_object()?;
    match (room_string(&obj, "name"), room_string(&obj, "subject")) {
        (Some(n), Some(s)) => Some((n, s)),
        _ => {
            let msg = format!(
                "body must be {{\"name\":\"...\",\"subject\":\"...\"}}, strings of at most {MAX_NAME} bytes"
            );
            cx.fail(400, &msg);
            None
        }
    }
}

/// Creates a room owned by the caller; `id` of `None` draws a fresh one.
fn new_room(cx: &mut Ctx<'_, '_, '_>, id: Option<String>) {
    let Some((name, subject)) = name_and_subject(cx) else {
        return;
    };
    if cx.mg.rooms.len() >= MAX_ROOMS {
        return cx.fail(503, &format!("too many rooms (at most {MAX_ROOMS})"));
    }
    let now = cx.core.unix_us;
    let domain = cx.me.split_once('@').map_or("", |(_, d)| d);
    let room = Room {
        domain: format!("muclight.{domain}").into(),
        name: name.into(),
        subject: subject.into(),
        members: vec![(cx.me.as_str().into(), Role::Owner)],
        archive: Archive::default(),
    };
    let mg = &mut cx.mg;
    let id = id.unwrap_or_else(|| mg.new_room_id(now));
    mg.rooms.insert(id.as_str().into(), room);
    cx.status(201, Some(&json!({ "id": id })));
}

/// `POST /api/rooms`.
fn create_room(cx: &mut Ctx<'_, '_, '_>) {
    new_room(cx, None);
}

/// `PUT /api/rooms/ID` (ID bare, or `ID@muclight.<caller's domain>`).
fn create_room_with_id(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
    let own = format!("muclight.{}", cx.me.split_once('@').map_or("", |(_, d)| d));
    let id = match raw.split_once('@') {
        Some((i, d)) if d.eq_ignore_ascii_case(&own) => i,
        Some(_) => {
            return cx.fail(
                400,
                "invalid_room_id: the room JID's domain is not this server's MUC Light domain",
            )
        }
        None => raw,
    };
    if !super::valid_ident(id) {
        return cx.fail(400, "invalid_room_id: 1..=128 letters, digits or . _ : -");
    }
    if cx.mg.rooms.contains_key(id) {
        return cx.fail(400, "Failed to create room: a room with this id exists");
    }
    new_room(cx, Some(id.to_string()));
}

/// `PUT /api/rooms/ID/config`: the owner renames the room.
fn change_config(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
    let Some(id) = find_room(cx, raw) else { return };
    let role = my_role(cx, &id);
    if role != Some(Role::Owner) {
        return cx.fail(403, "only the room's owner may change its configuration");
    }
    let Some((name, subject)) = name_and_subject(cx) else {
        return;
    };
    if let Some(room) = cx.mg.rooms.get_mut(id.as_str()) {
        room.name = name.into();
        room.subject = subject.into();
    }
    cx.status(204, None);
}

fn list_rooms(cx: &mut Ctx<'_, '_, '_>) {
    let mut list: Vec<(&str, Value)> = cx
        .mg
        .rooms
        .iter()
        .filter(|(_, r)| r.role(&cx.me).is_some())
        .map(|(id, r)| {
            (
                &**id,
                json!({ "id": &**id, "name": &*r.name, "subject": &*r.subject }),
            )
        })
        .collect();
    // Ids start with the creation time: sorting lists rooms oldest first.
    list.sort_by(|a, b| a.0.cmp(b.0));
    let v = Value::Array(list.into_iter().map(|(_, v)| v).collect());
    cx.json(&v);
}

fn room_details(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
    let Some(id) = find_room(cx, raw) else { return };
    let Some(room) = cx.mg.rooms.get(id.as_str()) else {
        return;
    };
    if room.role(&cx.me).is_none() {
        return cx.fail(403, "you are not a member of this room");
    }
    let v = json!({
        "name": &*room.name,
        "subject": &*room.subject,
        "participants": room.members.iter().map(|(u, r)| json!({ "user": &**u, "role": r.as_str() })).collect::<Vec<_>>(),
    });
    cx.json(&v);
}

/// Records an affiliation change in the room archive and sends it to
/// `recipients`.
fn affiliation_event(
    core: &mut Cx<'_>,
    mg: &mut Mongoose,
    room_id: &str,
    user: &str,
    affiliation: &'static str,
    recipients: &[&str],
) {
    let now = core.unix_us;
    let id = ids::uuid_v4(&mut *core.rng);
    let Some(room) = mg.rooms.get_mut(room_id) else {
        return;
    };
    let data = json!({
        "user": user, "type": "affiliation", "timestamp": now, "room": room_id, "id": id,
        "from": format!("{room_id}@{}", room.domain), "affiliation": affiliation,
    });
    let size = user.len() + id.len() + 64;
    room.archive.push(
        Rc::new(RoomItem {
            id,
            ts_us: now,
            kind: RoomKind::Affiliation {
                user: user.into(),
                affiliation,
            },
        }),
        size,
    );
    deliver(core, mg, recipients, "room.message", &data, now);
}

fn member_list(mg: &Mongoose, room_id: &str) -> Vec<String> {
    mg.rooms
        .get(room_id)
        .map(|r| r.members.iter().map(|(u, _)| u.to_string()).collect())
        .unwrap_or_default()
}

fn add_user(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
    let Some(id) = find_room(cx, raw) else { return };
    let role = my_role(cx, &id);
    if role != Some(Role::Owner) {
        return cx.fail(403, "only the room's owner may add users");
    }
    let Some(obj) = cx.body_object() else { return };
    let Some(user) = obj.get("user").and_then(Value::as_str).and_then(bare_jid) else {
        return cx.fail(400, "body must be {\"user\":\"user@domain\"}");
    };
    let Some(room) = cx.mg.rooms.get_mut(id.as_str()) else {
        return;
    };
    if room.role(&user).is_some() {
        return cx.status(204, None);
    }
    if room.members.len() >= MAX_ROOM_MEMBERS {
        return cx.fail(
            409,
            &format!("room is full (at most {MAX_ROOM_MEMBERS} members)"),
        );
    }
    room.members.push((user.as_str().into(), Role::Member));
    let members = member_list(cx.mg, &id);
    let to: Vec<&str> = members.iter().map(String::as_str).collect();
    affiliation_event(cx.core, cx.mg, &id, &user, "member", &to);
    cx.status(204, None);
}

fn remove_user(cx: &mut Ctx<'_, '_, '_>, raw: &str, target: &str) {
    let Some(id) = find_room(cx, raw) else { return };
    if target.is_empty() {
        return cx.fail(400, "Missing JID");
    }
    let Some(target) = bare_jid(target) else {
        return cx.fail(400, &format!("Invalid user JID: {target}"));
    };
    let Some(room) = cx.mg.rooms.get_mut(id.as_str()) else {
        return;
    };
    match room.role(&cx.me) {
        None => return cx.fail(403, "you are not a member of this room"),
        // Members may only remove themselves (leave), as in MongooseIM.
        Some(Role::Member) if target != cx.me => {
            return cx.fail(403, "only the room's owner may remove other users")
        }
        _ => {}
    }
    let Some(pos) = room.members.iter().position(|(u, _)| **u == *target) else {
        return cx.status(204, None);
    };
    // Everyone who was a member hears about it, the removed user included.
    let before: Vec<String> = room.members.iter().map(|(u, _)| u.to_string()).collect();
    let (_, was) = room.members.remove(pos);
    let promoted = if was == Role::Owner {
        room.members.first_mut().map(|m| {
            m.1 = Role::Owner;
            m.0.to_string()
        })
    } else {
        None
    };
    let empty = room.members.is_empty();
    let to: Vec<&str> = before.iter().map(String::as_str).collect();
    affiliation_event(cx.core, cx.mg, &id, &target, "none", &to);
    if let Some(p) = promoted {
        let after: Vec<&str> = to.iter().copied().filter(|u| *u != target).collect();
        affiliation_event(cx.core, cx.mg, &id, &p, "owner", &after);
    }
    if empty {
        cx.mg.rooms.remove(id.as_str());
    }
    cx.status(204, None);
}

fn send_room_message(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
    let Some(id) = find_room(cx, raw) else { return };
    let member = my_role(cx, &id).is_some();
    if !member {
        return cx.fail(403, "you are not a member of this room");
    }
    let Some(obj) = cx.body_object() else { return };
    let body = match obj.get("body") {
        Some(Value::String(b)) => b.clone(),
        Some(_) => return cx.fail(400, "Invalid message body: it must be a string"),
        None => return cx.fail(400, "No valid message elements: send {\"body\":\"text\"}"),
    };
    if body.len() > MAX_BODY {
        return cx.fail(
            413,
            &format!("message body is larger than {MAX_BODY} bytes"),
        );
    }
    let now = cx.core.unix_us;
    let msg_id = ids::uuid_v4(&mut *cx.core.rng);
    let data = json!({
        "type": "message", "timestamp": now, "room": id, "id": msg_id,
        "from": cx.me, "body": body,
    });
    let size = body.len() + cx.me.len() + 96;
    if let Some(room) = cx.mg.rooms.get_mut(id.as_str()) {
        room.archive.push(
            Rc::new(RoomItem {
                id: msg_id.clone(),
                ts_us: now,
                kind: RoomKind::Message {
                    from: cx.me.as_str().into(),
                    body: body.into(),
                },
            }),
            size,
        );
    }
    let members = member_list(cx.mg, &id);
    let to: Vec<&str> = members.iter().map(String::as_str).collect();
    deliver(cx.core, cx.mg, &to, "room.message", &data, now);
    cx.json(&json!({ "id": msg_id }));
}

fn room_messages(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
    let Some(id) = find_room(cx, raw) else { return };
    let Some((limit, before)) = cx.paging() else {
        return;
    };
    let Some(room) = cx.mg.rooms.get(id.as_str()) else {
        return;
    };
    if room.role(&cx.me).is_none() {
        return cx.fail(403, "you are not a member of this room");
    }
    let room_jid = format!("{id}@{}", room.domain);
    let mut picked: Vec<Value> = room
        .archive
        .iter()
        .rev()
        .filter(|m| before.is_none_or(|b| m.ts_us < b))
        .take(limit)
        .map(|m| match &m.kind {
            RoomKind::Message { from, body } => json!({
                "id": m.id, "from": &**from, "timestamp": m.ts_us / 1000,
                "type": "message", "body": &**body,
            }),
            RoomKind::Affiliation { user, affiliation } => json!({
                "id": m.id, "from": room_jid, "timestamp": m.ts_us / 1000,
                "type": "affiliation", "affiliation": affiliation, "user": &**user,
            }),
        })
        .collect();
    picked.reverse();
    cx.json(&Value::Array(picked));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jids() {
        assert_eq!(
            bare_jid("Alice@Wonderland.lit").as_deref(),
            Some("alice@wonderland.lit")
        );
        assert_eq!(bare_jid("alice@wonderland.lit/res"), None);
        assert_eq!(bare_jid("@x"), None);
        assert_eq!(bare_jid("a@"), None);
        assert_eq!(bare_jid("a@b@c"), None);
        assert_eq!(bare_jid("a b@c"), None);
    }

    #[test]
    fn users_file() {
        let u = parse_users(
            "# comment\n\nalice@wonderland.lit:secret\nbad line\nrabbit@wonderland.lit:pa:ss\n",
        );
        assert_eq!(u.len(), 2);
        assert_eq!(&*u["rabbit@wonderland.lit"].password, "pa:ss");
    }

    #[test]
    fn room_ids_are_unique_and_shaped() {
        let mut m = Mongoose::default();
        let a = m.new_room_id(1_483_609_513_293_487);
        let b = m.new_room_id(1_483_609_513_293_487);
        assert_eq!(a, "1483-609513-293487");
        assert_eq!(b, "1483-609513-293488");
    }

    #[test]
    fn archive_is_bounded() {
        let mut a: Archive<u32> = Archive::default();
        for i in 0..(ARCHIVE as u32 + 10) {
            a.push(Rc::new(i), 10);
        }
        assert_eq!(a.items.len(), ARCHIVE);
        assert_eq!(a.iter().next(), Some(&10));
        a.push(Rc::new(0), ARCHIVE_BYTES);
        assert_eq!(a.items.len(), 1);
    }

    #[test]
    fn segments() {
        assert_eq!(decode_segment("a%40b+c").as_deref(), Some("a@b+c"));
        assert_eq!(decode_segment("%ff"), None);
        assert_eq!(decode_segment("%4").as_deref(), Some("%4"));
    }
}
