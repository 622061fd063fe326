//! MongooseIM's client REST API (seed 000) under `/api`: one-to-one
//! messages, MUC Light rooms, contacts (the roster), and `GET /api/sse`
//! streaming the user's `message` and `room.message` events with the
//! seed's JSON fields.
//!
//! Every request but `OPTIONS` needs HTTP Basic auth (the scheme name in
//! any case, RFC 7617) as `user@domain:password` from `--users FILE` (see
//! [`load_users`]); without valid credentials: 401 with
//! `WWW-Authenticate: Basic realm="ssed"`. Status codes, reasons and the
//! order of checks follow MongooseIM's cowboy handlers and its
//! `rest_client_SUITE`:
//!
//! | request | success | refused |
//! |---|---|---|
//! | `OPTIONS` any route below | 200, `Allow:` the route's methods, no auth | 404 unknown path |
//! | `GET /api/sse` | event stream | |
//! | `POST /api/messages {"to","body"}` | 200 `{"id"}` | 400 |
//! | `GET /api/messages[/WITH]?limit=&before=` | 200 `[{"id","from","to","body","timestamp"}]` (ms, oldest first) | 400 |
//! | `GET /api/contacts` | 200 `[{"jid","subscription","ask"}]` | |
//! | `POST /api/contacts {"jid"}` | 204 | 400, 404 unknown user, 409 over [`MAX_CONTACTS`] |
//! | `PUT /api/contacts/JID {"action":"invite"\|"accept"}` | 204 | 400, 404 not a contact |
//! | `DELETE /api/contacts/JID` | 204 | 400, 404 not a contact |
//! | `DELETE /api/contacts {"to_delete":[JID...]}` | 200 `{"not_deleted":[JID...]}` | 400 |
//! | `POST /api/rooms {"name","subject"}` | 201 `{"id"}` | 400, 429 over [`MAX_ROOMS_PER_USER`], 503 over [`MAX_ROOMS`] |
//! | `PUT /api/rooms/ID {"name","subject"}` | 201 `{"id"}` | 400 (no or bad id, foreign domain), 403 exists, 429, 503 as above |
//! | `GET /api/rooms` | 200 `[{"id","name","subject"}]` | |
//! | `GET /api/rooms/ID` | 200 `{"name","subject","participants":[{"user","role"}]}` | 403 non-member, 404 |
//! | `PUT /api/rooms/ID/config {"name","subject"}` | 204 | 400, 403 non-owner, 404 |
//! | `POST /api/rooms/ID/users {"user"}` | 204, `affiliation` `member` to all members | 403 non-owner, 404 |
//! | `DELETE /api/rooms/ID/users/USER` | 204, `affiliation` `none` to all members before | 400, 403 (a member may only remove itself), 404 |
//! | `POST /api/rooms/ID/messages {"body","markable","chat_marker"}` | 200 `{"id"}`, `room.message` to all members | 400, 403 non-member, 404 |
//! | `GET /api/rooms/ID/messages?limit=&before=` | 200 `[{"id","from","timestamp","type",...}]` | 400, 403 non-member, 404 |
//!
//! Errors under `/api` are MongooseIM's: the reason alone, as the JSON
//! string its handlers write (`jiffy:encode(Reason)`: `"Missing message
//! body"`), not ssed's `{"error": ...}` object; a 405 also carries `Allow`.
//! A query string on the history routes may hold only `limit` and `before`
//! (anything else is 400 `"Invalid query string"`, as MongooseIM refuses
//! keys it does not know). `?limit=` defaults to and is capped at 50
//! (MongooseIM's `max_result_limit`; a room's is refused above 500 as
//! there); `?before=` is in ms. A room is named by its id or by
//! `ID@muclight.<caller's domain>`.
//!
//! A room message holds a `body`, a chat marker
//! `{"chat_marker":{"type":"received"|"displayed"|"acknowledged","id"}}`,
//! or both; `"markable": true` marks a message with a body. They are
//! archived and delivered as they came and come back in history (a marker
//! as `chat_marker`, else `markable: true`), as MongooseIM's MUC Light does.
//!
//! Contacts follow RFC 6121's subscription states as MongooseIM reports
//! them: `subscription` `none`/`to`/`from`/`both`, `ask` `none`/`out`/`in`/
//! `both` (pending requests). `invite` asks for the contact's presence (our
//! `ask` becomes `out`, theirs `in`, their item created if need be);
//! `accept` approves a pending `in` (ours gains `from`, theirs `to`);
//! deleting a contact also cancels both subscriptions on the contact's
//! side. Only users of the file can be contacts (others are 404).
//!
//! When the owner leaves a room, the longest-standing member becomes owner
//! (an `owner` affiliation event), as in MUC Light; an emptied room is
//! deleted.
//!
//! Delivery rides on the core: each user has one internal stream
//! `!user/<jid>`; all of a user's `/api/sse` connections read it (so each
//! gets every event), and a room event is one frame published once to
//! every member's stream. Frames are `id:`, `event:`, `data:` in that
//! order for both event types. SSE ids are the server's numeric ids, so a
//! reconnecting client resumes with Last-Event-ID like any core
//! subscriber (MongooseIM numbers events per connection from 1; clients
//! do not rely on the values). This module owns users, contacts, rooms and
//! the message archives; it never writes to sockets. `users` reads the
//! `--users` file; `archive` holds the bounded archives and their one
//! account; this file holds the model, the routes and the handlers.
//!
//! Bounds (memory): users are those of the file, at most [`MAX_USERS`].
//! Per user: an archive of the last [`ARCHIVE`] messages and at most
//! [`ARCHIVE_BYTES`] (entries are shared between sender and recipient), an
//! event stream history of [`STREAM_HISTORY`] events / [`STREAM_BYTES`],
//! and at most [`MAX_CONTACTS`] contacts (an invitation to a user whose
//! list is full still leaves the inviter's `ask: out`, but is not recorded
//! on the full side). At most [`MAX_ROOMS`] rooms, each with at most
//! [`MAX_ROOM_MEMBERS`] members and an archive like a user's; one user
//! may have created at most [`MAX_ROOMS_PER_USER`] of the rooms that
//! exist (429 past it), so one user cannot lock the others out. Bodies at
//! most [`MAX_BODY`] bytes, room names, subjects and chat marker ids at
//! most [`MAX_NAME`].
//!
//! Every archive together is charged to the server-wide history budget
//! (`--history-total-bytes`): archives hold at most half of it (the oldest
//! item of any archive is dropped first), and the broker evicts history
//! so that history and archives together stay within the budget.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
#[cfg(test)]
use std::path::Path;
use std::rc::Rc;

use serde_json::{json, Map, Value};

mod archive;
mod users;

use archive::{Archive, Fifo, Ledger, Owner};
#[cfg(test)]
use users::parse_users;
pub use users::{load_users, Users, UsersError};

use super::ids;
use crate::access;
use crate::broker::{Limits, Resume};
use crate::handler::{last_event_id, Cx};
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
/// Rooms one user may have created that still exist: one user cannot take
/// every room of the server (429 past it).
pub const MAX_ROOMS_PER_USER: usize = 20;
/// The part of the server-wide history budget (`--history-total-bytes`)
/// every archive together may hold: half.
pub const ARCHIVE_SHARE_DIVISOR: usize = 2;
/// Members of one room, at most.
pub const MAX_ROOM_MEMBERS: usize = 100;
/// Contacts (roster items) of one user, at most.
pub const MAX_CONTACTS: usize = 1000;
/// Largest message body.
pub const MAX_BODY: usize = 64 << 10;
/// Longest room name, subject or chat marker id.
pub const MAX_NAME: usize = 1024;
/// `?limit=` default and maximum, as MongooseIM's `max_result_limit`.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest `?limit=` a room history accepts (MongooseIM refuses more).
const MAX_ROOM_LIMIT: usize = 500;

/// History bounds of a user's event stream.
pub const STREAM_CAP: Limits = Limits {
    history: STREAM_HISTORY,
    history_bytes: STREAM_BYTES,
};

const REALM_VALUE: &str = "Basic realm=\"ssed\"";

/// MongooseIM's reason when the caller is not in the room.
const NOT_MEMBER: &str = "Given user does not occupy this room";

// ----------------------------------------------------------------- state

/// An item for an archive.
enum Archived {
    Chat(Rc<Chat>),
    Room(Rc<RoomItem>),
}

/// A one-to-one message.
struct Chat {
    id: String,
    from: Box<str>,
    to: Box<str>,
    body: Box<str>,
    ts_us: u64,
}

/// XEP-0333 chat marker types MongooseIM accepts.
const MARKER_TYPES: [&str; 3] = ["received", "displayed", "acknowledged"];

/// What happened in a room.
enum RoomKind {
    Message {
        from: Box<str>,
        body: Option<Box<str>>,
        /// (type, id of the marked message); `type` is one of [`MARKER_TYPES`].
        marker: Option<(&'static str, Box<str>)>,
        markable: bool,
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
    /// Who created it: the room counts against that user's quota
    /// ([`MAX_ROOMS_PER_USER`]) until it is deleted.
    creator: Box<str>,
}

impl Room {
    fn role(&self, jid: &str) -> Option<Role> {
        self.members
            .iter()
            .find(|(u, _)| &**u == jid)
            .map(|(_, r)| *r)
    }
}

/// RFC 6121 subscription state of one roster item.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sub {
    None,
    To,
    From,
    Both,
}

impl Sub {
    fn as_str(self) -> &'static str {
        match self {
            Sub::None => "none",
            Sub::To => "to",
            Sub::From => "from",
            Sub::Both => "both",
        }
    }
    /// Whether we receive the contact's presence.
    fn has_to(self) -> bool {
        matches!(self, Sub::To | Sub::Both)
    }
    /// Whether the contact receives ours.
    fn has_from(self) -> bool {
        matches!(self, Sub::From | Sub::Both)
    }
    fn with_to(self) -> Sub {
        if self.has_from() {
            Sub::Both
        } else {
            Sub::To
        }
    }
    fn with_from(self) -> Sub {
        if self.has_to() {
            Sub::Both
        } else {
            Sub::From
        }
    }
}

/// One roster item.
#[derive(Clone, Copy, Debug)]
struct Contact {
    sub: Sub,
    /// We asked for the contact's presence and wait for approval.
    pending_out: bool,
    /// The contact asked for ours.
    pending_in: bool,
}

impl Contact {
    const NEW: Contact = Contact {
        sub: Sub::None,
        pending_out: false,
        pending_in: false,
    };
    /// MongooseIM's `ask`.
    fn ask(&self) -> &'static str {
        match (self.pending_out, self.pending_in) {
            (false, false) => "none",
            (true, false) => "out",
            (false, true) => "in",
            (true, true) => "both",
        }
    }
}

struct User {
    password: Box<str>,
    archive: Archive<Chat>,
    /// Rooms this user created that still exist.
    rooms: usize,
    /// Sorted by JID, so listings are stable.
    contacts: BTreeMap<Box<str>, Contact>,
}

/// State of the MongooseIM app.
#[derive(Default)]
pub struct Mongoose {
    users: HashMap<Box<str>, User>,
    rooms: HashMap<Box<str>, Room>,
    /// The last room id's timestamp, so ids stay unique within a µs.
    last_room_us: u64,
    /// Every archive's bytes and the order to drop them in.
    ledger: Ledger,
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

impl Mongoose {
    /// Loads users from `file` (none without one: every request is 401).
    #[cfg(test)]
    /// A file that cannot be used is logged and leaves no users; callers
    /// that must refuse to start use [`load_users`] and [`Mongoose::from_users`].
    pub fn new(file: Option<&Path>) -> Mongoose {
        match file.map(load_users) {
            None => Mongoose::default(),
            Some(Ok(users)) => Mongoose::from_users(users),
            Some(Err(e)) => {
                log::error!("{e}; /api will refuse everyone");
                Mongoose::default()
            }
        }
    }

    /// The app serving `users`.
    pub fn from_users(users: Users) -> Mongoose {
        let users = users
            .entries
            .into_iter()
            .map(|(jid, password)| {
                let user = User {
                    password,
                    archive: Archive::default(),
                    rooms: 0,
                    contacts: BTreeMap::new(),
                };
                (jid, user)
            })
            .collect();
        Mongoose {
            users,
            ..Mongoose::default()
        }
    }

    /// Number of users loaded.
    #[cfg(test)]
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The user a request authenticates as, from `Authorization: Basic`
    /// (the access rule's [`access::basic_user`]).
    fn authenticate(&self, req: &Request<'_>) -> Result<String, &'static str> {
        access::basic_user(req, bare_jid, |jid| {
            self.users.get(jid).map(|u| &*u.password)
        })
    }

    fn fifo(&mut self, owner: &Owner) -> Option<&mut dyn Fifo> {
        match owner {
            Owner::User(j) => self
                .users
                .get_mut(j)
                .map(|u| &mut u.archive as &mut dyn Fifo),
            Owner::Room(r) => self
                .rooms
                .get_mut(r)
                .map(|r| &mut r.archive as &mut dyn Fifo),
        }
    }

    /// Archives an item for `owner`, then keeps every archive together
    /// within `share` bytes by dropping the oldest items of any archive
    /// (never the one just added).
    fn archive(&mut self, owner: Owner, item: Archived, size: usize, share: usize) {
        let seq = self.ledger.next;
        self.ledger.next += 1;
        let (old, freed, new) = match (&owner, item) {
            (Owner::User(j), Archived::Chat(c)) => {
                let Some(u) = self.users.get_mut(j) else {
                    return;
                };
                let old = u.archive.front_seq();
                let freed = u.archive.push(seq, c, size);
                (old, freed, u.archive.front_seq())
            }
            (Owner::Room(r), Archived::Room(i)) => {
                let Some(room) = self.rooms.get_mut(r) else {
                    return;
                };
                let old = room.archive.front_seq();
                let freed = room.archive.push(seq, i, size);
                (old, freed, room.archive.front_seq())
            }
            _ => return,
        };
        self.ledger.bytes = self.ledger.bytes + size - freed;
        self.ledger.refront(&owner, old, new);
        while self.ledger.bytes > share {
            let Some((&front, who)) = self.ledger.fronts.first_key_value() else {
                break;
            };
            if front == seq {
                break;
            }
            let who = who.clone();
            self.ledger.fronts.remove(&front);
            let Some(a) = self.fifo(&who) else { continue };
            let freed = a.pop_front();
            let next = a.front_seq();
            self.ledger.bytes -= freed;
            if let Some(n) = next {
                self.ledger.fronts.insert(n, who);
            }
        }
    }

    /// Forgets a deleted room's archive.
    fn drop_room(&mut self, id: &str) {
        if let Some(room) = self.rooms.remove(id) {
            self.ledger.bytes -= room.archive.held();
            if let Some(f) = room.archive.front_seq() {
                self.ledger.fronts.remove(&f);
            }
            if let Some(u) = self.users.get_mut(&*room.creator) {
                u.rooms = u.rooms.saturating_sub(1);
            }
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

    /// `owner`'s item for `contact`; created when `create` and there is
    /// room for it.
    fn contact_mut(&mut self, owner: &str, contact: &str, create: bool) -> Option<&mut Contact> {
        let user = self.users.get_mut(owner)?;
        if create && !user.contacts.contains_key(contact) && user.contacts.len() < MAX_CONTACTS {
            user.contacts.insert(contact.into(), Contact::NEW);
        }
        user.contacts.get_mut(contact)
    }

    /// `me` asks for `contact`'s presence (an outbound `subscribe`).
    fn invite(&mut self, me: &str, contact: &str) {
        if let Some(c) = self.contact_mut(me, contact, false) {
            if !c.sub.has_to() {
                c.pending_out = true;
            }
        }
        // The inbound side; a full list drops the request (module doc).
        if let Some(c) = self.contact_mut(contact, me, true) {
            if !c.sub.has_from() {
                c.pending_in = true;
            }
        }
    }

    /// `me` approves `contact`'s pending request (an outbound `subscribed`);
    /// without one there is nothing to approve (RFC 6121 §3.1.4).
    fn accept(&mut self, me: &str, contact: &str) {
        match self.contact_mut(me, contact, false) {
            Some(c) if c.pending_in => {
                c.pending_in = false;
                c.sub = c.sub.with_from();
            }
            _ => return,
        }
        if let Some(c) = self.contact_mut(contact, me, false) {
            if c.pending_out {
                c.pending_out = false;
                c.sub = c.sub.with_to();
            }
        }
    }

    /// Removes `contact` from `me`'s list, cancelling both subscriptions
    /// (RFC 6121 §2.5.3); `false` if it was not there.
    fn remove_contact(&mut self, me: &str, contact: &str) -> bool {
        let removed = self
            .users
            .get_mut(me)
            .is_some_and(|u| u.contacts.remove(contact).is_some());
        if removed {
            if let Some(c) = self.contact_mut(contact, me, false) {
                *c = Contact::NEW;
            }
        }
        removed
    }
}

/// MongooseIM's error body: the reason as a JSON string.
fn reason_body(msg: &str) -> Vec<u8> {
    Value::String(msg.to_string()).to_string().into_bytes()
}

/// An error reply under `/api`.
fn api_error(status: u16, msg: &str) -> Response {
    Response::new(status, "application/json", reason_body(msg))
}

// ----------------------------------------------------------------- routes

/// The handlers MongooseIM has, with their path bindings.
enum Route<'s> {
    Sse,
    Messages(Option<&'s str>),
    Contacts(Option<&'s str>),
    Rooms(Option<&'s str>),
    RoomConfig(&'s str),
    RoomUsers(&'s str, Option<&'s str>),
    RoomMessages(&'s str),
}

/// An optional binding: cowboy's `[:x]` matches a trailing slash as absent.
fn opt(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl<'s> Route<'s> {
    fn parse(segs: &[&'s str]) -> Option<Route<'s>> {
        Some(match *segs {
            ["sse"] => Route::Sse,
            ["messages"] => Route::Messages(None),
            ["messages", w] => Route::Messages(opt(w)),
            ["contacts"] => Route::Contacts(None),
            ["contacts", j] => Route::Contacts(opt(j)),
            ["rooms"] => Route::Rooms(None),
            ["rooms", id] => Route::Rooms(opt(id)),
            ["rooms", id, "config"] => Route::RoomConfig(id),
            ["rooms", id, "users"] => Route::RoomUsers(id, None),
            ["rooms", id, "users", u] => Route::RoomUsers(id, opt(u)),
            ["rooms", id, "messages"] => Route::RoomMessages(id),
            _ => return None,
        })
    }

    /// The methods the route answers (`Allow`), OPTIONS included as in
    /// every MongooseIM handler.
    fn allow(&self) -> &'static str {
        match self {
            Route::Sse | Route::Messages(Some(_)) => "OPTIONS, GET",
            Route::Messages(None) | Route::RoomMessages(_) => "OPTIONS, GET, POST",
            Route::Contacts(_) => "OPTIONS, GET, POST, PUT, DELETE",
            Route::Rooms(None) => "OPTIONS, GET, POST, PUT",
            Route::Rooms(Some(_)) => "OPTIONS, GET, PUT",
            Route::RoomConfig(_) => "OPTIONS, PUT",
            Route::RoomUsers(..) => "OPTIONS, POST, DELETE",
        }
    }
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
        self.core.reply(self.req, api_error(status, msg));
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
        let resp = api_error(405, "Method not allowed").header("Allow", allow);
        self.core.reply(self.req, resp);
    }
    /// `muclight.<caller's domain>`.
    fn muc_domain(&self) -> String {
        format!(
            "muclight.{}",
            self.me.split_once('@').map_or("", |(_, d)| d)
        )
    }
    /// The JSON object body, or a 400 as MongooseIM's `parse_body`.
    fn body_object(&mut self) -> Option<Map<String, Value>> {
        let parsed = std::str::from_utf8(&self.req.body)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(t).ok());
        match parsed {
            Some(Value::Object(o)) => Some(o),
            _ => {
                self.fail(400, "Invalid request body");
                None
            }
        }
    }
    /// `?limit=` and `?before=` (ms → µs), or a 400. Other keys are refused
    /// as MongooseIM's `parse_qs` refuses keys it has no atom for.
    fn paging(&mut self, max_limit: usize) -> Option<(usize, Option<u64>)> {
        let known = self
            .req
            .query
            .split('&')
            .filter(|p| !p.is_empty())
            .all(|p| {
                let k = p.split_once('=').map_or(p, |(k, _)| k);
                matches!(
                    crate::http::decode_component(k).as_deref(),
                    Some("limit" | "before")
                )
            });
        if !known {
            self.fail(400, "Invalid query string");
            return None;
        }
        let limit = match self.req.query_first("limit") {
            None => DEFAULT_LIMIT,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if n <= max_limit => n.min(DEFAULT_LIMIT),
                _ => {
                    self.fail(400, "Invalid limit");
                    return None;
                }
            },
        };
        let before = match self.req.query_first("before") {
            None => None,
            Some(b) => match b.parse::<u64>() {
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
    let mut decoded: Vec<Cow<'_, str>> = Vec::new();
    for s in rest.strip_prefix('/').unwrap_or(rest).split('/') {
        match crate::http::decode_path(s) {
            Some(d) => decoded.push(d),
            None => return core.reply(req, api_error(400, "Path is not UTF-8")),
        }
    }
    let segs: Vec<&str> = decoded.iter().map(|s| &**s).collect();
    let route = Route::parse(&segs);
    // MongooseIM answers OPTIONS before authentication
    // (`is_noauth_http_method`), with cowboy's default: 200 and `Allow`.
    if req.method == Method::Options {
        return match route {
            Some(r) => {
                let resp = Response::new(200, "text/plain", Vec::new()).header("Allow", r.allow());
                core.reply(req, resp);
            }
            None => core.reply(req, api_error(404, "Not found")),
        };
    }
    let me = match mg.authenticate(req) {
        Ok(me) => me,
        Err(msg) => {
            core.counters.reject("unauthorized");
            let resp = api_error(401, msg).header("WWW-Authenticate", REALM_VALUE);
            return core.reply(req, resp);
        }
    };
    let mut cx = Ctx { core, mg, req, me };
    let Some(route) = route else {
        return cx.fail(404, "Not found");
    };
    let m = req.method;
    match (&route, m) {
        (Route::Sse, Method::Get) => sse(&mut cx),
        (Route::Messages(None), Method::Post) => send_message(&mut cx),
        (Route::Messages(with), Method::Get) => messages(&mut cx, *with),
        (Route::Contacts(None), Method::Get) => list_contacts(&mut cx),
        (Route::Contacts(Some(_)), Method::Get) => cx.fail(404, "JID provided but not supported"),
        // MongooseIM takes the JID of a new contact from the body only.
        (Route::Contacts(_), Method::Post) => add_contact(&mut cx),
        (Route::Contacts(None), Method::Put) => cx.fail(400, "Missing JID"),
        (Route::Contacts(Some(j)), Method::Put) => change_contact(&mut cx, j),
        (Route::Contacts(None), Method::Delete) => delete_contacts(&mut cx),
        (Route::Contacts(Some(j)), Method::Delete) => delete_contact(&mut cx, j),
        (Route::Rooms(None), Method::Get) => list_rooms(&mut cx),
        (Route::Rooms(None), Method::Post) => new_room(&mut cx, None),
        (Route::Rooms(None), Method::Put) => cx.fail(400, "Missing room ID"),
        (Route::Rooms(Some(id)), Method::Get) => room_details(&mut cx, id),
        (Route::Rooms(Some(id)), Method::Put) => create_room_with_id(&mut cx, id),
        (Route::RoomConfig(id), Method::Put) => change_config(&mut cx, id),
        (Route::RoomUsers(id, _), Method::Post) => add_user(&mut cx, id),
        (Route::RoomUsers(id, user), Method::Delete) => {
            remove_user(&mut cx, id, user.unwrap_or(""))
        }
        (Route::RoomMessages(id), Method::Get) => room_messages(&mut cx, id),
        (Route::RoomMessages(id), Method::Post) => send_room_message(&mut cx, id),
        _ => cx.not_allowed(route.allow()),
    }
}

// ----------------------------------------------------------- delivery

/// The internal stream of a local user (the reactor makes it on first
/// use); `None` for a JID that is not a local user.
fn user_stream(mg: &Mongoose, jid: &str) -> Option<crate::handler::Internal> {
    mg.users.get(jid)?;
    Some(crate::handler::Internal {
        name: format!("!user/{jid}"),
        cap: Some(STREAM_CAP),
        display: None,
    })
}

/// Archives `item` for `owner` within the archives' share of the history
/// budget (the reactor then tells the broker what the archives hold, and
/// it evicts history so that both together stay within the budget).
fn archive(core: &mut Cx<'_>, mg: &mut Mongoose, owner: Owner, item: Archived, size: usize) {
    let share = core.broker.budget() / ARCHIVE_SHARE_DIVISOR;
    mg.archive(owner, item, size, share);
}

/// Decides the publish of one event (type `etype`, JSON `data`), once, to
/// the streams of every local user in `to`, answered as `reply` says (the
/// reactor answers a refusal with its status: an encoded frame over a
/// history bound, a journal that cannot take it, Redis unavailable).
fn deliver(
    core: &mut Cx<'_>,
    mg: &mut Mongoose,
    to: &[&str],
    etype: &str,
    data: &Value,
    reply: crate::handler::Reply,
) {
    let mut targets: Vec<crate::handler::Internal> = Vec::with_capacity(to.len());
    for u in to {
        if let Some(s) = user_stream(mg, u) {
            if !targets.iter().any(|t| t.name == s.name) {
                targets.push(s);
            }
        }
    }
    core.publish(crate::handler::Publish {
        to: crate::handler::Targets::Internal(targets),
        events: vec![crate::handler::Body::Typed {
            event: etype.to_string(),
            data: data.to_string(),
        }],
        private: false,
        reply,
    });
}

impl Mongoose {
    /// What the archives hold (charged to the history budget by the
    /// reactor after each request: `Broker::set_app_bytes`).
    pub fn archived_bytes(&self) -> usize {
        self.ledger.bytes
    }

    /// A chat message was delivered: archive it for its sender and (if
    /// another user) its recipient, within the archives' `share` of the
    /// history budget; returns what the archives now hold.
    pub fn archive_chat(&mut self, c: &crate::handler::Chat, share: usize) -> usize {
        let size = c.body.len() + c.to.len() + c.from.len() + 96;
        let msg = Rc::new(Chat {
            id: c.id.clone(),
            from: c.from.as_str().into(),
            to: c.to.as_str().into(),
            body: c.body.as_str().into(),
            ts_us: c.ts_us,
        });
        let me = Owner::User(c.from.as_str().into());
        self.archive(me, Archived::Chat(msg.clone()), size, share);
        if c.to != c.from {
            let them = Owner::User(c.to.as_str().into());
            self.archive(them, Archived::Chat(msg), size, share);
        }
        self.ledger.bytes
    }
}

fn sse(cx: &mut Ctx<'_, '_, '_>) {
    let Some(s) = user_stream(cx.mg, &cx.me) else {
        return cx.fail(500, "No event stream for this user");
    };
    let raw = last_event_id(cx.req);
    let to = crate::handler::Targets::Internal(vec![s]);
    cx.core
        .stream(cx.req, to, &Resume::parse(raw.as_deref()), &[]);
}

fn send_message(cx: &mut Ctx<'_, '_, '_>) {
    let Some(obj) = cx.body_object() else { return };
    // MongooseIM checks the recipient, then the body.
    let to = match obj.get("to") {
        None => return cx.fail(400, "Missing recipient JID"),
        Some(to) => match to.as_str().and_then(bare_jid) {
            Some(to) => to,
            None => return cx.fail(400, "Invalid recipient JID"),
        },
    };
    let body = match obj.get("body") {
        None => return cx.fail(400, "Missing message body"),
        Some(Value::String(b)) => b,
        Some(_) => return cx.fail(400, "Invalid message body"),
    };
    if body.len() > MAX_BODY {
        return cx.fail(
            413,
            &format!("Message body is larger than {MAX_BODY} bytes"),
        );
    }
    let now = cx.core.unix_us;
    let id = ids::uuid_v4(&mut *cx.core.rng);
    let data = json!({ "to": to, "timestamp": now, "id": id, "from": cx.me, "body": body });
    // Archived once delivered (by the reactor): a refused message (its
    // encoded frame over a history bound) is answered with the refusal and
    // archived nowhere, rather than answered as if it were sent.
    let chat = crate::handler::Chat {
        id: id.clone(),
        from: cx.me.clone(),
        to: to.clone(),
        body: body.clone(),
        ts_us: now,
    };
    let reply = crate::handler::Reply::Api {
        shape: cx.core.shape(cx.req),
        ok: json!({ "id": id }),
        chat: Some(Box::new(chat)),
    };
    deliver(cx.core, cx.mg, &[to.as_str()], "message", &data, reply);
}

fn messages(cx: &mut Ctx<'_, '_, '_>, with: Option<&str>) {
    let with = match with.map(bare_jid) {
        None => None,
        Some(Some(w)) => Some(w),
        Some(None) => return cx.fail(400, "Invalid interlocutor JID"),
    };
    let Some((limit, before)) = cx.paging(usize::MAX) else {
        return;
    };
    let Some(user) = cx.mg.users.get(cx.me.as_str()) else {
        return cx.fail(401, "Unknown user");
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

// ------------------------------------------------------------- contacts

/// A contact's JID (from the path or a body), or a 400 in MongooseIM's words.
fn contact_jid(cx: &mut Ctx<'_, '_, '_>, raw: &str) -> Option<String> {
    let jid = bare_jid(raw);
    if jid.is_none() {
        cx.fail(400, &format!("Invalid JID: {raw}"));
    }
    jid
}

fn list_contacts(cx: &mut Ctx<'_, '_, '_>) {
    let list: Vec<Value> = cx
        .mg
        .users
        .get(cx.me.as_str())
        .map(|u| {
            u.contacts
                .iter()
                .map(|(jid, c)| {
                    json!({ "jid": &**jid, "subscription": c.sub.as_str(), "ask": c.ask() })
                })
                .collect()
        })
        .unwrap_or_default();
    cx.json(&Value::Array(list));
}

fn add_contact(cx: &mut Ctx<'_, '_, '_>) {
    let Some(obj) = cx.body_object() else { return };
    let raw = match obj.get("jid") {
        None => return cx.fail(400, "Missing JID"),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let Some(jid) = contact_jid(cx, &raw) else {
        return;
    };
    let mg = &mut cx.mg;
    if !mg.users.contains_key(jid.as_str()) {
        return cx.fail(404, &format!("User {jid} does not exist"));
    }
    let Some(me) = mg.users.get_mut(cx.me.as_str()) else {
        return cx.fail(401, "Unknown user");
    };
    if !me.contacts.contains_key(jid.as_str()) {
        if me.contacts.len() >= MAX_CONTACTS {
            return cx.fail(409, &format!("Too many contacts (at most {MAX_CONTACTS})"));
        }
        me.contacts.insert(jid.as_str().into(), Contact::NEW);
    }
    cx.status(204, None);
}

fn has_contact(cx: &Ctx<'_, '_, '_>, jid: &str) -> bool {
    cx.mg
        .users
        .get(cx.me.as_str())
        .is_some_and(|u| u.contacts.contains_key(jid))
}

/// `PUT /api/contacts/JID {"action"}`.
fn change_contact(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
    let Some(jid) = contact_jid(cx, raw) else {
        return;
    };
    let Some(obj) = cx.body_object() else { return };
    let invite = match obj.get("action") {
        None => return cx.fail(400, "Missing action"),
        Some(a) if a == "invite" => true,
        Some(a) if a == "accept" => false,
        Some(_) => return cx.fail(400, "Invalid action"),
    };
    if !has_contact(cx, &jid) {
        return cx.fail(404, &format!("Contact {jid} not found"));
    }
    let mg = &mut cx.mg;
    if invite {
        mg.invite(&cx.me, &jid);
    } else {
        mg.accept(&cx.me, &jid);
    }
    cx.status(204, None);
}

fn delete_contact(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
    let Some(jid) = contact_jid(cx, raw) else {
        return;
    };
    if cx.mg.remove_contact(&cx.me, &jid) {
        cx.status(204, None);
    } else {
        cx.fail(404, &format!("Contact {jid} not found"));
    }
}

/// `DELETE /api/contacts {"to_delete":[...]}`: every JID is checked before
/// any is deleted, as MongooseIM parses the whole list first.
fn delete_contacts(cx: &mut Ctx<'_, '_, '_>) {
    let Some(obj) = cx.body_object() else { return };
    let Some(Value::Array(list)) = obj.get("to_delete") else {
        return cx.fail(400, "Invalid request body");
    };
    let mut jids = Vec::with_capacity(list.len());
    for v in list {
        let raw = v.as_str().map_or_else(|| v.to_string(), str::to_string);
        let Some(jid) = contact_jid(cx, &raw) else {
            return;
        };
        jids.push(jid);
    }
    let mg = &mut cx.mg;
    let not_deleted: Vec<String> = jids
        .into_iter()
        .filter(|j| !mg.remove_contact(&cx.me, j))
        .collect();
    cx.json(&json!({ "not_deleted": not_deleted }));
}

// ---------------------------------------------------------------- rooms

/// The requesting user's role in room `id`, if they are in it.
fn my_role(cx: &Ctx<'_, '_, '_>, id: &str) -> Option<Role> {
    cx.mg.rooms.get(id).and_then(|r| r.role(&cx.me))
}

/// A room id from a path: a bare id or `id@muclight.<caller's domain>`
/// (MongooseIM's `get_room_jid`), lowercased as nodeprep does; a 400
/// otherwise. Nothing is looked up.
fn room_id(cx: &mut Ctx<'_, '_, '_>, raw: &str) -> Option<String> {
    let (id, domain) = match raw.split_once('@') {
        Some((i, d)) => (i, Some(d)),
        None => (raw, None),
    };
    let err = if raw.is_empty() {
        Some("Missing room ID")
    } else if !super::valid_ident(id) || domain.is_some_and(str::is_empty) {
        Some("Invalid room ID")
    } else if domain.is_some_and(|d| !d.eq_ignore_ascii_case(&cx.muc_domain())) {
        Some("Invalid MUC Light domain")
    } else {
        None
    };
    match err {
        Some(e) => {
            cx.fail(400, e);
            None
        }
        None => Some(id.to_lowercase()),
    }
}

/// A room id from a path that names an existing room of the caller's
/// MUC Light domain; else a 400, or a 404 saying `missing`.
fn find_room_as(cx: &mut Ctx<'_, '_, '_>, raw: &str, missing: &str) -> Option<String> {
    let id = room_id(cx, raw)?;
    let own = cx.muc_domain();
    let found = cx
        .mg
        .rooms
        .get(id.as_str())
        .is_some_and(|r| *r.domain == *own);
    if found {
        Some(id)
    } else {
        cx.fail(404, missing);
        None
    }
}

fn find_room(cx: &mut Ctx<'_, '_, '_>, raw: &str) -> Option<String> {
    find_room_as(cx, raw, "Room not found")
}

/// The `{"name","subject"}` body of room creation and configuration, or a
/// 400 in MongooseIM's words.
fn name_and_subject(cx: &mut Ctx<'_, '_, '_>) -> Option<(String, String)> {
    let obj = cx.body_object()?;
    let (name, subject) = match (obj.get("name"), obj.get("subject")) {
        (None, _) => {
            cx.fail(400, "Missing room name");
            return None;
        }
        (_, None) => {
            cx.fail(400, "Missing room subject");
            return None;
        }
        (Some(n), Some(s)) => (n, s),
    };
    match (name, subject) {
        (Value::String(n), Value::String(s)) if n.len() <= MAX_NAME && s.len() <= MAX_NAME => {
            Some((n.clone(), s.clone()))
        }
        _ => {
            let msg = format!(
                "Validation failed for name and subject: strings of at most {MAX_NAME} bytes"
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
    insert_room(cx, id, name, subject);
}

fn insert_room(cx: &mut Ctx<'_, '_, '_>, id: Option<String>, name: String, subject: String) {
    let mine = cx.mg.users.get(cx.me.as_str()).map_or(0, |u| u.rooms);
    if mine >= MAX_ROOMS_PER_USER {
        cx.core.counters.reject("room_quota");
        let msg = format!(
            "Too many rooms created by this user (at most {MAX_ROOMS_PER_USER}); delete one first"
        );
        return cx.fail(429, &msg);
    }
    if cx.mg.rooms.len() >= MAX_ROOMS {
        return cx.fail(503, &format!("Too many rooms (at most {MAX_ROOMS})"));
    }
    let now = cx.core.unix_us;
    let room = Room {
        domain: cx.muc_domain().into(),
        name: name.into(),
        subject: subject.into(),
        members: vec![(cx.me.as_str().into(), Role::Owner)],
        archive: Archive::default(),
        creator: cx.me.as_str().into(),
    };
    let mg = &mut cx.mg;
    if let Some(u) = mg.users.get_mut(cx.me.as_str()) {
        u.rooms += 1;
    }
    let id = id.unwrap_or_else(|| mg.new_room_id(now));
    mg.rooms.insert(id.as_str().into(), room);
    cx.status(201, Some(&json!({ "id": id })));
}

/// `PUT /api/rooms/ID` (ID bare, or `ID@muclight.<caller's domain>`).
fn create_room_with_id(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
    let Some(id) = room_id(cx, raw) else { return };
    let Some((name, subject)) = name_and_subject(cx) else {
        return;
    };
    if cx.mg.rooms.contains_key(id.as_str()) {
        return cx.fail(403, "Room already exists");
    }
    insert_room(cx, Some(id), name, subject);
}

/// `PUT /api/rooms/ID/config`: the owner renames the room. The body is
/// checked first, as MongooseIM does.
fn change_config(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
    let Some(_) = room_id(cx, raw) else { return };
    let Some((name, subject)) = name_and_subject(cx) else {
        return;
    };
    let Some(id) = find_room(cx, raw) else { return };
    let role = my_role(cx, &id);
    if role != Some(Role::Owner) {
        return cx.fail(403, "Only the room's owner may change its configuration");
    }
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
        return cx.fail(403, NOT_MEMBER);
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
    let item = Rc::new(RoomItem {
        id,
        ts_us: now,
        kind: RoomKind::Affiliation {
            user: user.into(),
            affiliation,
        },
    });
    let owner = Owner::Room(room_id.into());
    archive(core, mg, owner, Archived::Room(item), size);
    // The request answers on its own; a refusal is the reactor's to log.
    deliver(
        core,
        mg,
        recipients,
        "room.message",
        &data,
        crate::handler::Reply::Silent,
    );
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
        return cx.fail(403, "Only the room's owner may add users");
    }
    let Some(obj) = cx.body_object() else { return };
    let user = match obj.get("user") {
        None => return cx.fail(400, "Missing user JID"),
        Some(u) => match u.as_str().and_then(bare_jid) {
            Some(u) => u,
            None => return cx.fail(400, "Invalid user JID"),
        },
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
            &format!("Room is full (at most {MAX_ROOM_MEMBERS} members)"),
        );
    }
    room.members.push((user.as_str().into(), Role::Member));
    let members = member_list(cx.mg, &id);
    let to: Vec<&str> = members.iter().map(String::as_str).collect();
    affiliation_event(cx.core, cx.mg, &id, &user, "member", &to);
    cx.status(204, None);
}

fn remove_user(cx: &mut Ctx<'_, '_, '_>, raw: &str, target: &str) {
    // MongooseIM's reason on this route (its suite's `user_removal_errors`).
    let Some(id) = find_room_as(cx, raw, "Room does not exist") else {
        return;
    };
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
        None => return cx.fail(403, NOT_MEMBER),
        // Members may only remove themselves (leave), as in MongooseIM.
        Some(Role::Member) if target != cx.me => {
            return cx.fail(403, "Only the room's owner may remove other users")
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
        cx.mg.drop_room(&id);
    }
    cx.status(204, None);
}

/// What a room message carries: MongooseIM's `get_body`, `get_marker`,
/// `get_markable` and `verify_children`, checked in that order.
struct RoomPayload {
    body: Option<String>,
    marker: Option<(&'static str, String)>,
    markable: bool,
}

fn room_payload(obj: &Map<String, Value>) -> Result<RoomPayload, &'static str> {
    let body = match obj.get("body") {
        None => None,
        Some(Value::String(b)) => Some(b.clone()),
        Some(_) => return Err("Invalid message body"),
    };
    let marker = match obj.get("chat_marker") {
        None => None,
        Some(m) => {
            let kind = m.get("type").and_then(Value::as_str);
            let kind = MARKER_TYPES.iter().copied().find(|t| Some(*t) == kind);
            match (kind, m.get("id").and_then(Value::as_str)) {
                (Some(k), Some(id)) if id.len() <= MAX_NAME => Some((k, id.to_string())),
                _ => return Err("Invalid chat marker"),
            }
        }
    };
    // `markable` counts only on a message with a body, and only as `true`.
    let markable = body.is_some() && obj.get("markable") == Some(&Value::Bool(true));
    if body.is_none() && marker.is_none() {
        return Err("No valid message elements");
    }
    Ok(RoomPayload {
        body,
        marker,
        markable,
    })
}

/// The JSON of a room message's optional parts, into `v`: the body, then
/// the first chat-marker element (a marker before `markable`), as
/// MongooseIM's `add_chat_marker` reads them back.
fn message_parts(
    v: &mut Map<String, Value>,
    body: Option<&str>,
    marker: Option<(&str, &str)>,
    markable: bool,
) {
    if let Some(b) = body {
        v.insert("body".into(), b.into());
    }
    if let Some((t, id)) = marker {
        v.insert("chat_marker".into(), json!({ "type": t, "id": id }));
    } else if markable {
        v.insert("markable".into(), true.into());
    }
}

fn send_room_message(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
    let Some(_) = room_id(cx, raw) else { return };
    let Some(obj) = cx.body_object() else { return };
    let p = match room_payload(&obj) {
        Ok(p) => p,
        Err(e) => return cx.fail(400, e),
    };
    if p.body.as_ref().is_some_and(|b| b.len() > MAX_BODY) {
        return cx.fail(
            413,
            &format!("Message body is larger than {MAX_BODY} bytes"),
        );
    }
    let Some(id) = find_room(cx, raw) else { return };
    if my_role(cx, &id).is_none() {
        return cx.fail(403, NOT_MEMBER);
    }
    let now = cx.core.unix_us;
    let msg_id = ids::uuid_v4(&mut *cx.core.rng);
    let mut data = Map::new();
    data.insert("type".into(), "message".into());
    data.insert("timestamp".into(), now.into());
    data.insert("room".into(), id.as_str().into());
    data.insert("id".into(), msg_id.as_str().into());
    data.insert("from".into(), cx.me.as_str().into());
    let marker = p.marker.as_ref().map(|(t, i)| (*t, i.as_str()));
    message_parts(&mut data, p.body.as_deref(), marker, p.markable);
    let size = p.body.as_ref().map_or(0, String::len)
        + p.marker.as_ref().map_or(0, |(_, i)| i.len())
        + cx.me.len()
        + 96;
    let item = Rc::new(RoomItem {
        id: msg_id.clone(),
        ts_us: now,
        kind: RoomKind::Message {
            from: cx.me.as_str().into(),
            body: p.body.map(Into::into),
            marker: p.marker.map(|(t, i)| (t, i.into())),
            markable: p.markable,
        },
    });
    let owner = Owner::Room(id.as_str().into());
    archive(cx.core, cx.mg, owner, Archived::Room(item), size);
    let members = member_list(cx.mg, &id);
    let to: Vec<&str> = members.iter().map(String::as_str).collect();
    // Archived already (a room's history is its own); a refusal by the
    // streams is still the client's to know.
    let reply = crate::handler::Reply::Api {
        shape: cx.core.shape(cx.req),
        ok: json!({ "id": msg_id }),
        chat: None,
    };
    let data = Value::Object(data);
    deliver(cx.core, cx.mg, &to, "room.message", &data, reply);
}

fn room_messages(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
    let Some(_) = room_id(cx, raw) else { return };
    let Some((limit, before)) = cx.paging(MAX_ROOM_LIMIT) else {
        return;
    };
    let Some(id) = find_room(cx, raw) else { return };
    let Some(room) = cx.mg.rooms.get(id.as_str()) else {
        return;
    };
    if room.role(&cx.me).is_none() {
        return cx.fail(403, NOT_MEMBER);
    }
    let room_jid = format!("{id}@{}", room.domain);
    let mut picked: Vec<Value> = room
        .archive
        .iter()
        .rev()
        .filter(|m| before.is_none_or(|b| m.ts_us < b))
        .take(limit)
        .map(|m| match &m.kind {
            RoomKind::Message {
                from,
                body,
                marker,
                markable,
            } => {
                let mut v = Map::new();
                v.insert("id".into(), m.id.as_str().into());
                v.insert("from".into(), (**from).into());
                v.insert("timestamp".into(), (m.ts_us / 1000).into());
                v.insert("type".into(), "message".into());
                let marker = marker.as_ref().map(|(t, i)| (*t, &**i));
                message_parts(&mut v, body.as_deref(), marker, *markable);
                Value::Object(v)
            }
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

    fn parsed(text: &str) -> Users {
        match parse_users(text) {
            Ok(u) => u,
            Err(e) => panic!("{text:?}: {e:?}"),
        }
    }

    #[test]
    fn contact_states_follow_rfc_6121() {
        let mut m = Mongoose::from_users(parsed("a@x:1\nb@x:2\n"));
        let item = |m: &Mongoose, o: &str, c: &str| {
            m.users[o]
                .contacts
                .get(c)
                .map(|c| (c.sub.as_str(), c.ask()))
        };
        m.users
            .get_mut("a@x")
            .unwrap()
            .contacts
            .insert("b@x".into(), Contact::NEW);
        m.invite("a@x", "b@x");
        assert_eq!(item(&m, "a@x", "b@x"), Some(("none", "out")));
        assert_eq!(item(&m, "b@x", "a@x"), Some(("none", "in")));
        m.accept("b@x", "a@x");
        assert_eq!(item(&m, "a@x", "b@x"), Some(("to", "none")));
        assert_eq!(item(&m, "b@x", "a@x"), Some(("from", "none")));
        // Accepting with nothing pending changes nothing.
        m.accept("b@x", "a@x");
        assert_eq!(item(&m, "b@x", "a@x"), Some(("from", "none")));
        m.invite("b@x", "a@x");
        m.accept("a@x", "b@x");
        assert_eq!(item(&m, "a@x", "b@x"), Some(("both", "none")));
        assert_eq!(item(&m, "b@x", "a@x"), Some(("both", "none")));
        assert!(m.remove_contact("a@x", "b@x"));
        assert!(!m.remove_contact("a@x", "b@x"));
        assert_eq!(item(&m, "a@x", "b@x"), None);
        assert_eq!(item(&m, "b@x", "a@x"), Some(("none", "none")));
    }

    #[test]
    fn contacts_are_bounded() {
        let mut m = Mongoose::from_users(parsed("a@x:1\nb@x:2\n"));
        let a = m.users.get_mut("a@x").unwrap();
        for i in 0..MAX_CONTACTS {
            a.contacts.insert(format!("c{i}@x").into(), Contact::NEW);
        }
        m.users
            .get_mut("b@x")
            .unwrap()
            .contacts
            .insert("a@x".into(), Contact::NEW);
        // b invites a, whose list is full: b still asks, a records nothing.
        m.invite("b@x", "a@x");
        assert_eq!(m.users["a@x"].contacts.len(), MAX_CONTACTS);
        assert_eq!(m.users["b@x"].contacts["a@x"].ask(), "out");
    }

    #[test]
    fn room_payloads() {
        let obj = |s: &str| match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => o,
            _ => panic!("{s}"),
        };
        let err = |s: &str| room_payload(&obj(s)).err();
        assert_eq!(
            err(r#"{"body":{"body":"x"}}"#),
            Some("Invalid message body")
        );
        assert_eq!(err(r#"{"no_body":"x"}"#), Some("No valid message elements"));
        assert_eq!(
            err(r#"{"markable":true}"#),
            Some("No valid message elements")
        );
        assert_eq!(
            err(r#"{"chat_marker":{"type":"bad","id":"i"}}"#),
            Some("Invalid chat marker")
        );
        assert_eq!(
            err(r#"{"chat_marker":{"type":"received"}}"#),
            Some("Invalid chat marker")
        );
        let p = room_payload(&obj(r#"{"chat_marker":{"type":"displayed","id":"i"}}"#)).unwrap();
        assert_eq!(p.marker, Some(("displayed", "i".to_string())));
        assert!(p.body.is_none() && !p.markable);
        let p = room_payload(&obj(r#"{"body":"b","markable":true}"#)).unwrap();
        assert!(p.markable);
        let p = room_payload(&obj(r#"{"body":"b","markable":"yes"}"#)).unwrap();
        assert!(!p.markable);
    }

    #[test]
    fn frames_write_id_then_event_then_data() {
        let frame = |id: u64, event: &str, data: &str| {
            crate::handler::Body::Typed {
                event: event.into(),
                data: data.into(),
            }
            .encode(id)
        };
        assert_eq!(
            frame(7, "message", "{}"),
            b"id: 7\nevent: message\ndata: {}\n\n"
        );
        assert_eq!(
            frame(8, "room.message", "a\nb"),
            b"id: 8\nevent: room.message\ndata: a\ndata: b\n\n"
        );
    }

    #[test]
    fn reasons_are_json_strings() {
        assert_eq!(
            reason_body("Missing message body"),
            b"\"Missing message body\""
        );
        assert_eq!(
            reason_body("Invalid value of 'before'"),
            b"\"Invalid value of 'before'\""
        );
    }

    #[test]
    fn routes_and_their_methods() {
        let allow = |p: &[&str]| Route::parse(p).map(|r| r.allow());
        assert_eq!(
            allow(&["contacts", "a@b"]),
            Some("OPTIONS, GET, POST, PUT, DELETE")
        );
        assert_eq!(allow(&["rooms"]), Some("OPTIONS, GET, POST, PUT"));
        assert_eq!(
            allow(&["rooms", "r", "users", ""]),
            Some("OPTIONS, POST, DELETE")
        );
        assert!(matches!(
            Route::parse(&["rooms", ""]),
            Some(Route::Rooms(None))
        ));
        assert!(Route::parse(&["nothing"]).is_none());
        assert!(Route::parse(&[""]).is_none());
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
            a.push(u64::from(i), Rc::new(i), 10);
        }
        assert_eq!(a.items.len(), ARCHIVE);
        assert_eq!(a.iter().next(), Some(&10));
        assert_eq!(a.push(1000, Rc::new(0), ARCHIVE_BYTES), ARCHIVE * 10);
        assert_eq!(a.items.len(), 1);
    }

    #[test]
    fn archives_share_one_bound_oldest_first() {
        let mut m = Mongoose::from_users(parsed("a@x:1\nb@x:2\n"));
        let chat = |n: &str| {
            Archived::Chat(Rc::new(Chat {
                id: n.into(),
                from: "a@x".into(),
                to: "b@x".into(),
                body: "".into(),
                ts_us: 0,
            }))
        };
        let user = |j: &str| Owner::User(j.into());
        m.archive(user("a@x"), chat("1"), 100, 250);
        m.archive(user("b@x"), chat("2"), 100, 250);
        assert_eq!(m.ledger.bytes, 200);
        // A third item goes over 250: the oldest of any archive (a's) goes.
        m.archive(user("b@x"), chat("3"), 100, 250);
        assert_eq!(m.ledger.bytes, 200);
        assert_eq!(m.users["a@x"].archive.items.len(), 0);
        let ids: Vec<&str> = m.users["b@x"].archive.iter().map(|c| &*c.id).collect();
        assert_eq!(ids, ["2", "3"]);
        // One item larger than the share is kept alone (never the new one).
        m.archive(user("a@x"), chat("4"), 1000, 250);
        assert_eq!(m.ledger.bytes, 1000);
        assert_eq!(m.users["b@x"].archive.items.len(), 0);
        assert_eq!(m.ledger.fronts.len(), 1);
    }

    #[test]
    fn segments() {
        assert_eq!(
            crate::http::decode_path("a%40b+c").as_deref(),
            Some("a@b+c")
        );
        assert_eq!(crate::http::decode_path("%ff"), None);
        assert_eq!(crate::http::decode_path("%4").as_deref(), Some("%4"));
    }
}
