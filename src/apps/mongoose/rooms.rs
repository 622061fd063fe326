//! The MUC Light routes under `/api/rooms`: create (with or without an
//! id), list, details, configuration, members (affiliation events,
//! ownership passing on) and room messages with their history. Room
//! state is the model's; these parse, check membership and roles, and
//! decide the affiliation and message publishes.

use std::rc::Rc;

use serde_json::{json, Map, Value};

use super::archive::{Archive, Owner};
use super::ctx::Ctx;
use super::messages::{archive, deliver};
use super::model::*;
use super::{MAX_BODY, MAX_NAME, MAX_ROOMS, MAX_ROOMS_PER_USER, MAX_ROOM_LIMIT, MAX_ROOM_MEMBERS};
use crate::apps::ids;
use crate::handler::Cx;

/// MongooseIM's reason when the caller is not in the room.
pub(super) const NOT_MEMBER: &str = "Given user does not occupy this room";

/// The requesting user's role in room `id`, if they are in it.
pub(super) fn my_role(cx: &Ctx<'_, '_, '_>, id: &str) -> Option<Role> {
    cx.mg.rooms.get(id).and_then(|r| r.role(&cx.me))
}

/// A room id from a path: a bare id or `id@muclight.<caller's domain>`
/// (MongooseIM's `get_room_jid`), lowercased as nodeprep does; a 400
/// otherwise. Nothing is looked up.
pub(super) fn room_id(cx: &mut Ctx<'_, '_, '_>, raw: &str) -> Option<String> {
    let (id, domain) = match raw.split_once('@') {
        Some((i, d)) => (i, Some(d)),
        None => (raw, None),
    };
    let err = if raw.is_empty() {
        Some("Missing room ID")
    } else if !crate::apps::valid_ident(id) || domain.is_some_and(str::is_empty) {
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
pub(super) fn find_room_as(cx: &mut Ctx<'_, '_, '_>, raw: &str, missing: &str) -> Option<String> {
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

pub(super) fn find_room(cx: &mut Ctx<'_, '_, '_>, raw: &str) -> Option<String> {
    find_room_as(cx, raw, "Room not found")
}

/// The `{"name","subject"}` body of room creation and configuration, or a
/// 400 in MongooseIM's words.
pub(super) fn name_and_subject(cx: &mut Ctx<'_, '_, '_>) -> Option<(String, String)> {
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
pub(super) fn new_room(cx: &mut Ctx<'_, '_, '_>, id: Option<String>) {
    let Some((name, subject)) = name_and_subject(cx) else {
        return;
    };
    insert_room(cx, id, name, subject);
}

pub(super) fn insert_room(
    cx: &mut Ctx<'_, '_, '_>,
    id: Option<String>,
    name: String,
    subject: String,
) {
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
pub(super) fn create_room_with_id(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
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
pub(super) fn change_config(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
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

pub(super) fn list_rooms(cx: &mut Ctx<'_, '_, '_>) {
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

pub(super) fn room_details(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
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
pub(super) fn affiliation_event(
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

pub(super) fn member_list(mg: &Mongoose, room_id: &str) -> Vec<String> {
    mg.rooms
        .get(room_id)
        .map(|r| r.members.iter().map(|(u, _)| u.to_string()).collect())
        .unwrap_or_default()
}

pub(super) fn add_user(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
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

pub(super) fn remove_user(cx: &mut Ctx<'_, '_, '_>, raw: &str, target: &str) {
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
pub(super) struct RoomPayload {
    body: Option<String>,
    marker: Option<(&'static str, String)>,
    markable: bool,
}

pub(super) fn room_payload(obj: &Map<String, Value>) -> Result<RoomPayload, &'static str> {
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
pub(super) fn message_parts(
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

pub(super) fn send_room_message(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
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

pub(super) fn room_messages(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
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
}
