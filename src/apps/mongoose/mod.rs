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
//! the message archives; it never writes to sockets. This file holds the
//! contract (the table above, the bounds below); by responsibility:
//! `users` reads the `--users` file; `model` holds users, contacts, rooms
//! and their mutations; `archive` the bounded archives and their one
//! account; `routes` dispatches a path to a handler; `ctx` is a request
//! being handled (MongooseIM's error format, body and paging parsers);
//! `messages`, `contacts` and `rooms` are the handlers.
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

mod archive;
mod contacts;
mod ctx;
mod messages;
mod model;
mod rooms;
mod routes;
mod users;

pub use model::{bare_jid, Mongoose};
pub use routes::handle;
pub use users::{load_users, Users, UsersError};

use crate::broker::Limits;

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
