//! The roster routes under `/api/contacts`: list, add, invite/accept,
//! delete one or many. The subscription state machine itself is the
//! model's (`Mongoose::invite`, `accept`, `remove_contact`); these only
//! parse, check and answer.

use serde_json::{json, Value};

use super::ctx::Ctx;
use super::model::*;
use super::MAX_CONTACTS;

/// A contact's JID (from the path or a body), or a 400 in MongooseIM's words.
pub(super) fn contact_jid(cx: &mut Ctx<'_, '_, '_>, raw: &str) -> Option<String> {
    let jid = bare_jid(raw);
    if jid.is_none() {
        cx.fail(400, &format!("Invalid JID: {raw}"));
    }
    jid
}

pub(super) fn list_contacts(cx: &mut Ctx<'_, '_, '_>) {
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

pub(super) fn add_contact(cx: &mut Ctx<'_, '_, '_>) {
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

pub(super) fn has_contact(cx: &Ctx<'_, '_, '_>, jid: &str) -> bool {
    cx.mg
        .users
        .get(cx.me.as_str())
        .is_some_and(|u| u.contacts.contains_key(jid))
}

/// `PUT /api/contacts/JID {"action"}`.
pub(super) fn change_contact(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
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

pub(super) fn delete_contact(cx: &mut Ctx<'_, '_, '_>, raw: &str) {
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
pub(super) fn delete_contacts(cx: &mut Ctx<'_, '_, '_>) {
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
