//! One-to-one messages and delivery: `GET /api/sse` (the user's event
//! stream), `POST /api/messages` and the history under `/api/messages`,
//! and the helpers every handler publishes and archives through (one
//! frame to the internal streams of the local users it names). Handlers
//! decide: the reactor applies the publish and archives a delivered chat.

use serde_json::{json, Value};

use super::archive::Owner;
use super::ctx::Ctx;
use super::model::*;
use super::{ARCHIVE_SHARE_DIVISOR, MAX_BODY, STREAM_CAP};
use crate::apps::ids;
use crate::broker::Resume;
use crate::handler::{last_event_id, Cx};

/// The internal stream of a local user (the reactor makes it on first
/// use); `None` for a JID that is not a local user.
pub(super) fn user_stream(mg: &Mongoose, jid: &str) -> Option<crate::handler::Internal> {
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
pub(super) fn archive(
    core: &mut Cx<'_>,
    mg: &mut Mongoose,
    owner: Owner,
    item: Archived,
    size: usize,
) {
    let share = core.broker.budget() / ARCHIVE_SHARE_DIVISOR;
    mg.archive(owner, item, size, share);
}

/// Decides the publish of one event (type `etype`, JSON `data`), once, to
/// the streams of every local user in `to`, answered as `reply` says (the
/// reactor answers a refusal with its status: an encoded frame over a
/// history bound, a journal that cannot take it, Redis unavailable).
pub(super) fn deliver(
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

pub(super) fn sse(cx: &mut Ctx<'_, '_, '_>) {
    let Some(s) = user_stream(cx.mg, &cx.me) else {
        return cx.fail(500, "No event stream for this user");
    };
    let raw = last_event_id(cx.req);
    let to = crate::handler::Targets::Internal(vec![s]);
    cx.core
        .stream(cx.req, to, &Resume::parse(raw.as_deref()), &[]);
}

pub(super) fn send_message(cx: &mut Ctx<'_, '_, '_>) {
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

pub(super) fn messages(cx: &mut Ctx<'_, '_, '_>, with: Option<&str>) {
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

#[cfg(test)]
mod tests {
    #[test]
    fn frames_write_id_then_event_then_data() {
        let frame = |id: u64, event: &str, data: &str| {
            crate::handler::Body::Typed {
                event: event.into(),
                data: data.into(),
            }
            .encode(crate::id::EventId::new(id))
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
}
