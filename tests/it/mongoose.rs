//! MongooseIM's client API against its own test suite: each test below is
//! a case of MongooseIM's `big_tests/tests/rest_client_SUITE.erl`, named
//! after it, with the assertions that apply to a server without XMPP
//! (where the suite waits for an XMPP stanza, these wait for the
//! `/api/sse` event carrying the same information). A divergence from
//! MongooseIM shows as a failing test. Tests after the suite's cases
//! cover what the suite does not (OPTIONS, frame field order, status
//! lines).
//!
//! Not ported: `msg_is_sent_and_delivered_over_xmpp` and the
//! `messages_with_props` / `messages_with_thread` groups (they send XMPP
//! stanzas), `muc_disabled_errors` and `config_can_be_changed_by_all`
//! (MongooseIM configurations ssed does not have), and the `security`
//! group (cowboy's `Server` header).
//!
//! Every test starts the real binary on port 0 and speaks HTTP/1.1 over
//! TCP; reads carry deadlines, nothing sleeps.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

use crate::common::{Conn, Response, Server, Sse, Ssed, T};

const ALICE: (&str, &str) = ("alice@localhost", "makota");
const BOB: (&str, &str) = ("bob@localhost", "makrolika");
const KATE: (&str, &str) = ("kate@localhost", "makrowe");
const MIKE: (&str, &str) = ("mike@localhost", "nicniema");

type Who = (&'static str, &'static str);

/// A server with the four users above; removes its users file on drop.
struct Api {
    srv: Server,
    file: PathBuf,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

static FILES: AtomicUsize = AtomicUsize::new(0);

fn start() -> Api {
    let n = FILES.fetch_add(1, Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!(
        "ssed-mongoose-users-{}-{n}.txt",
        std::process::id()
    ));
    let users: String = [ALICE, BOB, KATE, MIKE]
        .iter()
        .map(|(u, p)| format!("{u}:{p}\n"))
        .collect();
    std::fs::write(&file, users).unwrap();
    let srv = Server::start(&["--users", file.to_str().unwrap()]);
    Api { srv, file }
}

impl Api {
    fn addr(&self) -> SocketAddr {
        self.srv.addr
    }
}

fn base64(input: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= n {
                out.push(T[(v >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request as `who` (HTTP Basic), with a raw body if any.
fn call(addr: SocketAddr, who: Who, method: &str, path: &str, body: Option<&str>) -> Response {
    let mut req = format!(
        "{method} /api{path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {}\r\n",
        base64(&format!("{}:{}", who.0, who.1))
    );
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        req.push_str("\r\n");
    }
    Conn::open(addr).request(req.as_bytes())
}

fn gett(api: &Api, who: Who, path: &str) -> Response {
    call(api.addr(), who, "GET", path, None)
}
fn post(api: &Api, who: Who, path: &str, body: &Value) -> Response {
    call(api.addr(), who, "POST", path, Some(&body.to_string()))
}
fn putt(api: &Api, who: Who, path: &str, body: &Value) -> Response {
    call(api.addr(), who, "PUT", path, Some(&body.to_string()))
}
fn delete(api: &Api, who: Who, path: &str) -> Response {
    call(api.addr(), who, "DELETE", path, None)
}

fn status_line(r: &Response) -> &str {
    r.head.split("\r\n").next().unwrap_or("")
}

/// Asserts the status line and, for errors, MongooseIM's reason (a JSON
/// string, as its handlers write `jiffy:encode(Reason)`).
#[track_caller]
fn expect(r: &Response, line: &str, reason: Option<&str>) {
    assert_eq!(status_line(r), line, "body {:?}", r.text());
    if let Some(reason) = reason {
        assert_eq!(r.json(), Value::String(reason.into()), "{}", r.text());
    }
}

const OK: &str = "HTTP/1.1 200 OK";
const NOCONTENT: &str = "HTTP/1.1 204 No Content";
const BAD_REQUEST: &str = "HTTP/1.1 400 Bad Request";
const FORBIDDEN: &str = "HTTP/1.1 403 Forbidden";
const NOT_FOUND: &str = "HTTP/1.1 404 Not Found";

#[track_caller]
fn ok_json(r: Response) -> Value {
    expect(&r, OK, None);
    r.json()
}

/// `/api/sse` as `who`, authenticating as the suite's `connect_to_sse`
/// does: scheme `basic` in lower case.
fn connect_to_sse(api: &Api, who: Who) -> Sse {
    let auth = base64(&format!("{}:{}", who.0, who.1));
    let s = Sse::open(
        api.addr(),
        "/api/sse",
        &format!("Authorization: basic {auth}\r\n"),
    );
    assert_eq!(s.status(), 200, "{}", s.head);
    s
}

#[track_caller]
fn wait_for_event(s: &mut Sse) -> Value {
    let ev = s.next_event(T).expect("an event");
    serde_json::from_str(&ev.data()).unwrap_or_else(|e| panic!("{e}: {:?}", ev.raw))
}

/// Sends a one-to-one message; the suite's `send_message`.
fn send_message(api: &Api, from: Who, to: Who) -> Value {
    let m = json!({ "to": to.0, "body": format!("hello, {} it's me", to.0) });
    let r = ok_json(post(api, from, "/messages", &m));
    let id = r["id"].as_str().expect("id").to_string();
    json!({ "to": to.0, "body": m["body"], "id": id, "from": from.0 })
}

fn assert_messages(sent: &[Value], received: &Value) {
    let received = received.as_array().expect("a list");
    assert_eq!(received.len(), sent.len(), "{received:?}");
    for (s, r) in sent.iter().zip(received) {
        for k in ["from", "to", "id", "body"] {
            assert_eq!(r[k], s[k], "{k}: {r}");
        }
        assert!(r["timestamp"].is_u64(), "{r}");
    }
}

fn given_new_room(api: &Api, owner: Who) -> String {
    let r = post(
        api,
        owner,
        "/rooms",
        &json!({ "name": "new_room_name", "subject": "This room subject" }),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().expect("id").to_string()
}

fn given_new_room_with_id(api: &Api, owner: Who, id: &str, name: &str) -> Response {
    putt(
        api,
        owner,
        &format!("/rooms/{id}"),
        &json!({ "name": name, "subject": "This room subject" }),
    )
}

fn invite_to_room(api: &Api, inviter: Who, room: &str, invitee: &str) -> Response {
    post(
        api,
        inviter,
        &format!("/rooms/{room}/users"),
        &json!({ "user": invitee }),
    )
}

fn given_user_invited(api: &Api, owner: Who, room: &str, invitee: Who) {
    expect(
        &invite_to_room(api, owner, room, invitee.0),
        NOCONTENT,
        None,
    );
}

fn given_new_room_with_users(api: &Api, owner: Who, users: &[Who]) -> String {
    let room = given_new_room(api, owner);
    for u in users {
        given_user_invited(api, owner, &room, *u);
    }
    room
}

fn given_message_sent_to_room(api: &Api, room: &str, sender: Who, body: &Value) -> Response {
    post(api, sender, &format!("/rooms/{room}/messages"), body)
}

/// Sends "Hi all!"; returns what the suite compares with.
fn given_hi_all(api: &Api, room: &str, sender: Who) -> Value {
    let r = ok_json(given_message_sent_to_room(
        api,
        room,
        sender,
        &json!({ "body": "Hi all!" }),
    ));
    let id = r["id"].as_str().expect("id").to_string();
    json!({ "body": "Hi all!", "id": id, "from": sender.0 })
}

fn get_room_info(api: &Api, who: Who, room: &str) -> Value {
    ok_json(gett(api, who, &format!("/rooms/{room}")))
}

fn get_room_messages(api: &Api, who: Who, room: &str, query: &str) -> Value {
    ok_json(gett(api, who, &format!("/rooms/{room}/messages{query}")))
}

fn is_participant(info: &Value, user: Who, role: &str) -> bool {
    info["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .any(|p| p["user"] == user.0 && p["role"] == role)
}

fn assert_room_info(owner: Who, info: &Value) {
    for k in ["subject", "name", "participants"] {
        assert!(!info[k].is_null(), "{k}: {info}");
    }
    assert!(is_participant(info, owner, "owner"), "{info}");
}

fn room_jid(room: &str) -> String {
    format!("{room}@muclight.localhost")
}

fn remove_user_from_a_room(api: &Api, who: Who, room: &str, user: Who) -> Response {
    delete(api, who, &format!("/rooms/{room}/users/{}", user.0))
}

#[track_caller]
fn assert_aff(v: &Value, room: &str, user: Who, affiliation: &str) {
    assert_eq!(v["type"], "affiliation", "{v}");
    assert_eq!(v["room"], room, "{v}");
    assert_eq!(v["from"], room_jid(room), "{v}");
    assert_eq!(v["user"], user.0, "{v}");
    assert_eq!(v["affiliation"], affiliation, "{v}");
}

fn contacts(api: &Api, who: Who) -> Value {
    ok_json(gett(api, who, "/contacts"))
}

fn contact(jid: Who, subscription: &str, ask: &str) -> Value {
    json!({ "jid": jid.0, "subscription": subscription, "ask": ask })
}

fn add_contact(api: &Api, owner: Who, c: Who) {
    expect(
        &post(api, owner, "/contacts", &json!({ "jid": c.0 })),
        NOCONTENT,
        None,
    );
}

fn contact_action(api: &Api, owner: Who, c: Who, action: &str) -> Response {
    putt(
        api,
        owner,
        &format!("/contacts/{}", c.0),
        &json!({ "action": action }),
    )
}

// --------------------------------------------------------------- messages

#[test]
fn msg_is_sent_and_delivered_over_sse() {
    let api = start();
    let mut conn = connect_to_sse(&api, ALICE);
    let m = send_message(&api, BOB, ALICE);
    let data = wait_for_event(&mut conn);
    for k in ["body", "to", "from", "id"] {
        assert_eq!(data[k], m[k], "{k}: {data}");
    }
}

#[test]
fn message_sending_errors() {
    let api = start();
    let m = json!({ "to": BOB.0, "body": "hello, bob it's me" });
    let without = |k: &str| {
        let mut m = m.clone();
        m.as_object_mut().unwrap().remove(k);
        m
    };
    expect(
        &post(&api, ALICE, "/messages", &without("body")),
        BAD_REQUEST,
        Some("Missing message body"),
    );
    expect(
        &post(&api, ALICE, "/messages", &without("to")),
        BAD_REQUEST,
        Some("Missing recipient JID"),
    );
    let mut bad = m.clone();
    bad["to"] = json!("@invalid");
    expect(
        &post(&api, ALICE, "/messages", &bad),
        BAD_REQUEST,
        Some("Invalid recipient JID"),
    );
}

fn send_messages(api: &Api) -> Vec<Value> {
    vec![
        send_message(api, BOB, ALICE),
        send_message(api, ALICE, BOB),
        send_message(api, KATE, ALICE),
    ]
}

#[test]
fn all_messages_are_archived() {
    let api = start();
    let sent = send_messages(&api);
    let received = ok_json(gett(&api, ALICE, "/messages/"));
    assert_messages(&sent, &received);
}

#[test]
fn messages_with_user_are_archived() {
    let api = start();
    let sent = send_messages(&api);
    let received = ok_json(gett(&api, ALICE, &format!("/messages/{}", KATE.0)));
    assert_messages(&sent[2..], &received);
}

/// `?before=` filters on the ms timestamps history reports, so the
/// expected page is computed from the full history (no clock games).
#[test]
fn messages_can_be_paginated() {
    let api = start();
    for i in 0..6 {
        let (from, to) = if i % 2 == 0 {
            (ALICE, BOB)
        } else {
            (BOB, ALICE)
        };
        send_message(&api, from, to);
    }
    send_message(&api, KATE, ALICE);
    let path = format!("/messages/{}", BOB.0);
    let all = ok_json(gett(&api, ALICE, &format!("{path}?limit=10")));
    let all = all.as_array().unwrap().clone();
    assert_eq!(all.len(), 6);
    let three = ok_json(gett(&api, ALICE, &format!("{path}?limit=3")));
    assert_eq!(three.as_array().unwrap()[..], all[3..]);
    let before = all[4]["timestamp"].as_u64().unwrap();
    let older: Vec<Value> = all
        .iter()
        .filter(|m| m["timestamp"].as_u64().unwrap() < before)
        .cloned()
        .collect();
    assert!(!older.is_empty() || all[0]["timestamp"].as_u64() == Some(before));
    let page = ok_json(gett(
        &api,
        ALICE,
        &format!("{path}?before={before}&limit=10"),
    ));
    assert_eq!(page.as_array().unwrap(), &older);
    let page = ok_json(gett(
        &api,
        ALICE,
        &format!("{path}?before={before}&limit=2"),
    ));
    let tail = &older[older.len().saturating_sub(2)..];
    assert_eq!(page.as_array().unwrap()[..], tail[..]);
}

#[test]
fn message_query_errors() {
    let api = start();
    let path = format!("/messages/{}", BOB.0);
    expect(
        &gett(&api, ALICE, "/messages/@invalid"),
        BAD_REQUEST,
        Some("Invalid interlocutor JID"),
    );
    expect(
        &gett(&api, ALICE, &format!("{path}?limit=x")),
        BAD_REQUEST,
        Some("Invalid limit"),
    );
    expect(
        &gett(&api, ALICE, &format!("{path}?before=x")),
        BAD_REQUEST,
        Some("Invalid value of 'before'"),
    );
    expect(
        &gett(&api, ALICE, &format!("{path}?kuropatwa")),
        BAD_REQUEST,
        Some("Invalid query string"),
    );
}

// -------------------------------------------------------------------- muc

#[test]
fn room_is_created() {
    let api = start();
    let room = given_new_room(&api, ALICE);
    assert_room_info(ALICE, &get_room_info(&api, ALICE, &room));
}

#[test]
fn room_is_created_with_given_identifier() {
    let api = start();
    let r = given_new_room_with_id(&api, ALICE, "tea-party", "new_room_name");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json(), json!({ "id": "tea-party" }));
    assert_room_info(ALICE, &get_room_info(&api, ALICE, "tea-party"));
}

#[test]
fn room_creation_errors() {
    let api = start();
    let room = json!({ "name": "My Room", "subject": "My Secrets" });
    let without = |k: &str| {
        let mut m = room.clone();
        m.as_object_mut().unwrap().remove(k);
        m
    };
    let path = "/rooms/secret-room";
    expect(
        &putt(&api, ALICE, "/rooms", &room),
        BAD_REQUEST,
        Some("Missing room ID"),
    );
    expect(
        &putt(&api, ALICE, "/rooms/@invalid", &room),
        BAD_REQUEST,
        Some("Invalid room ID"),
    );
    expect(
        &putt(&api, ALICE, path, &without("name")),
        BAD_REQUEST,
        Some("Missing room name"),
    );
    expect(
        &putt(&api, ALICE, path, &without("subject")),
        BAD_REQUEST,
        Some("Missing room subject"),
    );
    assert_eq!(putt(&api, ALICE, path, &room).status, 201);
    expect(&putt(&api, ALICE, path, &room), FORBIDDEN, None);
}

#[test]
fn room_query_errors() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[]);
    expect(
        &gett(&api, BOB, "/rooms/badroom"),
        NOT_FOUND,
        Some("Room not found"),
    );
    expect(&gett(&api, BOB, &format!("/rooms/{room}")), FORBIDDEN, None);
}

#[test]
fn user_is_invited_to_a_room() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[BOB]);
    assert!(is_participant(
        &get_room_info(&api, ALICE, &room),
        BOB,
        "member"
    ));
}

#[test]
fn user_is_removed_from_a_room() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[BOB]);
    let mut bob = connect_to_sse(&api, BOB);
    expect(
        &remove_user_from_a_room(&api, ALICE, &room, BOB),
        NOCONTENT,
        None,
    );
    assert_aff(&wait_for_event(&mut bob), &room, BOB, "none");
}

#[test]
fn user_removal_errors() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[BOB]);
    let path = format!("/rooms/{room}/users/");
    expect(
        &delete(&api, ALICE, &format!("{path}@invalid")),
        BAD_REQUEST,
        Some("Invalid user JID: @invalid"),
    );
    expect(
        &delete(&api, ALICE, &path),
        BAD_REQUEST,
        Some("Missing JID"),
    );
    expect(
        &delete(&api, ALICE, &format!("/rooms/badroom/users/{}", BOB.0)),
        NOT_FOUND,
        Some("Room does not exist"),
    );
}

#[test]
fn rooms_can_be_listed() {
    let api = start();
    assert_eq!(ok_json(gett(&api, ALICE, "/rooms")), json!([]));
    let room = given_new_room_with_users(&api, ALICE, &[BOB]);
    let rooms = ok_json(gett(&api, ALICE, "/rooms"));
    assert_eq!(
        rooms,
        json!([{ "id": room, "name": "new_room_name", "subject": "This room subject" }])
    );
    assert_eq!(ok_json(gett(&api, BOB, "/rooms")), rooms);
}

#[test]
fn owner_can_leave_a_room_and_auto_select_owner() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[BOB]);
    let mut bob = connect_to_sse(&api, BOB);
    expect(
        &remove_user_from_a_room(&api, ALICE, &room, ALICE),
        NOCONTENT,
        None,
    );
    assert_aff(&wait_for_event(&mut bob), &room, ALICE, "none");
    assert_aff(&wait_for_event(&mut bob), &room, BOB, "owner");
}

#[test]
fn user_can_leave_a_room() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[BOB]);
    let mut bob = connect_to_sse(&api, BOB);
    expect(
        &remove_user_from_a_room(&api, BOB, &room, BOB),
        NOCONTENT,
        None,
    );
    assert_aff(&wait_for_event(&mut bob), &room, BOB, "none");
}

#[test]
fn invitation_to_room_is_forbidden_for_non_member() {
    let api = start();
    let room = given_new_room(&api, ALICE);
    expect(
        &invite_to_room(&api, BOB, &room, "auser@domain.com"),
        FORBIDDEN,
        None,
    );
}

#[test]
fn msg_is_sent_and_delivered_in_room() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[BOB]);
    let mut conns = [connect_to_sse(&api, ALICE), connect_to_sse(&api, BOB)];
    let msgs = [
        given_hi_all(&api, &room, ALICE),
        given_hi_all(&api, &room, BOB),
    ];
    for m in &msgs {
        for c in conns.iter_mut() {
            let v = wait_for_event(c);
            assert_eq!(
                (&v["id"], &v["from"], &v["body"]),
                (&m["id"], &m["from"], &m["body"])
            );
        }
    }
}

#[test]
fn sending_message_by_not_room_member_results_in_forbidden() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[]);
    let r = given_message_sent_to_room(
        &api,
        &room,
        BOB,
        &json!({ "body": "Hello, I'm not member" }),
    );
    expect(&r, FORBIDDEN, None);
}

#[test]
fn sending_invalid_message_to_room_results_in_bad_request() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[]);
    let send = |body: Value| given_message_sent_to_room(&api, &room, ALICE, &body);
    expect(
        &send(json!({ "body": { "body": "Too nested" } })),
        BAD_REQUEST,
        Some("Invalid message body"),
    );
    expect(
        &send(json!({ "no_body": "This should be in body" })),
        BAD_REQUEST,
        Some("No valid message elements"),
    );
    expect(
        &send(json!({ "markable": true })),
        BAD_REQUEST,
        Some("No valid message elements"),
    );
    expect(
        &send(json!({ "chat_marker": { "type": "bad", "id": "some_id" } })),
        BAD_REQUEST,
        Some("Invalid chat marker"),
    );
    expect(
        &send(json!("This is not JSON object")),
        BAD_REQUEST,
        Some("Invalid request body"),
    );
}

#[test]
fn messages_are_archived_in_room() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[BOB]);
    let sent = [
        given_hi_all(&api, &room, ALICE),
        given_hi_all(&api, &room, BOB),
    ];
    let all = get_room_messages(&api, ALICE, &room, "");
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    // The oldest is the affiliation change.
    assert_eq!(all[0]["type"], "affiliation");
    assert_eq!(all[0]["affiliation"], "member");
    assert_eq!(all[0]["user"], BOB.0);
    for (s, r) in sent.iter().zip(&all[1..]) {
        assert_eq!(r["type"], "message");
        assert_eq!(
            (&r["id"], &r["from"], &r["body"]),
            (&s["id"], &s["from"], &s["body"])
        );
    }
}

#[test]
fn chat_markers_are_archived_in_room() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[BOB]);
    let mut conns = [connect_to_sse(&api, ALICE), connect_to_sse(&api, BOB)];
    let markers: Vec<Value> = ["received", "displayed", "acknowledged"]
        .iter()
        .map(|t| json!({ "chat_marker": { "type": t, "id": "RagnarokIsComing" } }))
        .collect();
    for m in &markers {
        let r = ok_json(given_message_sent_to_room(&api, &room, BOB, m));
        assert!(r["id"].is_string(), "{r}");
        // Delivered to every member as a `room.message` with the marker.
        for c in conns.iter_mut() {
            let v = wait_for_event(c);
            assert_eq!(v["chat_marker"], m["chat_marker"], "{v}");
            assert_eq!(v["id"], r["id"]);
            assert!(v.get("body").is_none(), "{v}");
        }
    }
    let all = get_room_messages(&api, ALICE, &room, "");
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 4, "{all:?}");
    let got: Vec<Value> = all[1..]
        .iter()
        .map(|m| json!({ "chat_marker": m["chat_marker"] }))
        .collect();
    assert_eq!(got, markers);
}

#[test]
fn room_message_query_errors() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[]);
    let path = format!("/rooms/{room}/messages");
    expect(
        &gett(&api, ALICE, &format!("{path}?limit=x")),
        BAD_REQUEST,
        Some("Invalid limit"),
    );
    expect(
        &gett(&api, ALICE, &format!("{path}?before=x")),
        BAD_REQUEST,
        Some("Invalid value of 'before'"),
    );
    expect(
        &gett(&api, ALICE, &format!("{path}?kuropatwa")),
        BAD_REQUEST,
        Some("Invalid query string"),
    );
}

#[test]
fn markable_property_is_archived_in_room() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[BOB]);
    let mut alice = connect_to_sse(&api, ALICE);
    let msg = json!({ "markable": true, "body": "Floor is lava!" });
    ok_json(given_message_sent_to_room(&api, &room, BOB, &msg));
    assert_eq!(wait_for_event(&mut alice)["markable"], true);
    let all = get_room_messages(&api, ALICE, &room, "");
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1]["markable"], true, "{}", all[1]);
    assert_eq!(all[1]["body"], "Floor is lava!");
}

#[test]
fn only_room_participant_can_read_messages() {
    let api = start();
    let room = given_new_room(&api, ALICE);
    expect(
        &gett(&api, BOB, &format!("/rooms/{room}/messages")),
        FORBIDDEN,
        None,
    );
}

#[test]
fn messages_can_be_paginated_in_room() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[BOB]);
    for i in 0..6 {
        given_hi_all(&api, &room, if i % 2 == 0 { ALICE } else { BOB });
    }
    let all = get_room_messages(&api, ALICE, &room, "?limit=10");
    let all = all.as_array().unwrap().clone();
    assert_eq!(all.len(), 7, "one affiliation change and six messages");
    let three = get_room_messages(&api, ALICE, &room, "?limit=3");
    assert_eq!(three.as_array().unwrap()[..], all[4..]);
    let before = all[5]["timestamp"].as_u64().unwrap();
    let older: Vec<Value> = all
        .iter()
        .filter(|m| m["timestamp"].as_u64().unwrap() < before)
        .cloned()
        .collect();
    let page = get_room_messages(&api, ALICE, &room, &format!("?limit=4&before={before}"));
    let tail = &older[older.len().saturating_sub(4)..];
    assert_eq!(page.as_array().unwrap()[..], tail[..]);
    let page = get_room_messages(&api, ALICE, &room, &format!("?limit=2&before={before}"));
    let tail = &older[older.len().saturating_sub(2)..];
    assert_eq!(page.as_array().unwrap()[..], tail[..]);
}

#[test]
fn room_msg_is_sent_and_delivered_over_sse() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[BOB]);
    assert!(is_participant(
        &get_room_info(&api, ALICE, &room),
        BOB,
        "member"
    ));
    let mut bob = connect_to_sse(&api, BOB);
    let m = given_hi_all(&api, &room, ALICE);
    let data = wait_for_event(&mut bob);
    assert_eq!(data["room"], room.as_str());
    assert_eq!(data["type"], "message");
    assert_eq!(data["from"], m["from"]);
    assert_eq!(data["body"], m["body"]);
    assert!(data["id"].is_string());
}

#[test]
fn aff_change_msg_is_delivered_over_sse() {
    let api = start();
    let room = given_new_room(&api, ALICE);
    let mut bob = connect_to_sse(&api, BOB);
    given_user_invited(&api, ALICE, &room, BOB);
    let data = wait_for_event(&mut bob);
    assert_aff(&data, &room, BOB, "member");
    assert!(data["id"].is_string());
}

#[test]
fn room_is_created_with_given_jid() {
    let api = start();
    let r = given_new_room_with_id(&api, ALICE, &room_jid("jid-room"), "new_room_name");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["id"], "jid-room");
    assert_room_info(ALICE, &get_room_info(&api, ALICE, "jid-room"));
}

#[test]
fn room_is_not_created_with_jid_not_matching_hostname() {
    let api = start();
    let r = given_new_room_with_id(&api, ALICE, "wrong@muclight.wrongdomain", "some_name");
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn room_can_be_fetched_by_jid() {
    let api = start();
    let jid = room_jid("fetched");
    assert_eq!(
        given_new_room_with_id(&api, ALICE, &jid, "new_room_name").status,
        201
    );
    assert_room_info(ALICE, &get_room_info(&api, ALICE, &jid));
}

#[test]
fn messages_can_be_sent_and_fetched_by_room_jid() {
    let api = start();
    let jid = room_jid(&given_new_room(&api, ALICE));
    given_hi_all(&api, &jid, ALICE);
    let msgs = get_room_messages(&api, ALICE, &jid, "?limit=10");
    assert_eq!(msgs.as_array().unwrap().len(), 1, "{msgs}");
}

#[test]
fn user_can_be_added_and_removed_by_room_jid() {
    let api = start();
    let jid = room_jid(&given_new_room(&api, ALICE));
    given_user_invited(&api, ALICE, &jid, BOB);
    expect(
        &remove_user_from_a_room(&api, ALICE, &jid, BOB),
        NOCONTENT,
        None,
    );
}

// ------------------------------------------------------------- muc_config

fn when_config_change(api: &Api, who: Who, room: &str, name: Value, subject: Value) -> Response {
    putt(
        api,
        who,
        &format!("/rooms/{room}/config"),
        &json!({ "name": name, "subject": subject }),
    )
}

#[test]
fn config_can_be_changed_by_owner() {
    let api = start();
    let jid = room_jid("configured");
    assert_eq!(
        given_new_room_with_id(&api, ALICE, &jid, "old_name").status,
        201
    );
    assert_eq!(get_room_info(&api, ALICE, "configured")["name"], "old_name");
    let r = when_config_change(&api, ALICE, &jid, json!("new_name"), json!("new_subject"));
    expect(&r, NOCONTENT, None);
    assert!(r.body.is_empty());
    let info = get_room_info(&api, ALICE, "configured");
    assert_eq!(info["name"], "new_name");
    assert_eq!(info["subject"], "new_subject");
}

#[test]
fn config_cannot_be_changed_by_member() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[BOB]);
    let r = when_config_change(&api, BOB, &room_jid(&room), json!("other"), json!("other"));
    expect(&r, FORBIDDEN, None);
    assert_eq!(get_room_info(&api, BOB, &room)["name"], "new_room_name");
}

#[test]
fn config_cannot_be_changed_by_non_member() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[]);
    let r = when_config_change(&api, BOB, &room_jid(&room), json!("other"), json!("other"));
    expect(&r, FORBIDDEN, None);
    assert_eq!(get_room_info(&api, ALICE, &room)["name"], "new_room_name");
}

#[test]
fn config_change_errors() {
    let api = start();
    let room = given_new_room_with_users(&api, ALICE, &[]);
    let r = when_config_change(&api, ALICE, "badroom", json!("other"), json!("other"));
    expect(&r, NOT_FOUND, None);
    let r = when_config_change(&api, ALICE, &room_jid(&room), json!("other"), json!(123));
    expect(&r, BAD_REQUEST, None);
    let reason = r.json();
    assert!(
        reason
            .as_str()
            .is_some_and(|s| s.starts_with("Validation failed ")),
        "{reason}"
    );
    assert_eq!(get_room_info(&api, ALICE, &room)["name"], "new_room_name");
}

// ----------------------------------------------------------------- roster

#[test]
fn add_contact_and_invite() {
    let api = start();
    assert_eq!(contacts(&api, BOB), json!([]));
    add_contact(&api, BOB, ALICE);
    assert_eq!(contacts(&api, BOB), json!([contact(ALICE, "none", "none")]));
    // He invites her: his item asks.
    expect(&contact_action(&api, BOB, ALICE, "invite"), NOCONTENT, None);
    assert_eq!(contacts(&api, BOB), json!([contact(ALICE, "none", "out")]));
    // She receives the request (over XMPP in the suite) and approves it.
    assert_eq!(contacts(&api, ALICE), json!([contact(BOB, "none", "in")]));
    expect(&contact_action(&api, ALICE, BOB, "accept"), NOCONTENT, None);
    assert_eq!(contacts(&api, BOB), json!([contact(ALICE, "to", "none")]));
    assert_eq!(contacts(&api, ALICE), json!([contact(BOB, "from", "none")]));
}

#[test]
fn add_contact_and_be_invited() {
    let api = start();
    assert_eq!(contacts(&api, BOB), json!([]));
    add_contact(&api, BOB, ALICE);
    assert_eq!(contacts(&api, BOB), json!([contact(ALICE, "none", "none")]));
    // She adds him and invites him.
    add_contact(&api, ALICE, BOB);
    expect(&contact_action(&api, ALICE, BOB, "invite"), NOCONTENT, None);
    // {none, in} is shown, as MongooseIM's REST API does (RFC 6121 hides it).
    assert_eq!(contacts(&api, BOB), json!([contact(ALICE, "none", "in")]));
    // He accepts.
    expect(&contact_action(&api, BOB, ALICE, "accept"), NOCONTENT, None);
    assert_eq!(contacts(&api, BOB), json!([contact(ALICE, "from", "none")]));
    assert_eq!(contacts(&api, ALICE), json!([contact(BOB, "to", "none")]));
}

#[test]
fn add_and_remove() {
    let api = start();
    add_contact(&api, BOB, ALICE);
    assert_eq!(contacts(&api, BOB), json!([contact(ALICE, "none", "none")]));
    expect(
        &delete(&api, BOB, &format!("/contacts/{}", ALICE.0)),
        NOCONTENT,
        None,
    );
    assert_eq!(contacts(&api, BOB), json!([]));
}

fn delete_many(api: &Api, who: Who, jids: &[Who]) -> Response {
    let list: Vec<&str> = jids.iter().map(|j| j.0).collect();
    let body = json!({ "to_delete": list }).to_string();
    call(api.addr(), who, "DELETE", "/contacts", Some(&body))
}

#[test]
fn add_and_remove_some_contacts_properly() {
    let api = start();
    for c in [ALICE, KATE, MIKE] {
        add_contact(&api, BOB, c);
    }
    let r = delete_many(&api, BOB, &[ALICE, KATE]);
    assert_eq!(ok_json(r), json!({ "not_deleted": [] }));
    assert_eq!(contacts(&api, BOB), json!([contact(MIKE, "none", "none")]));
}

#[test]
fn add_and_remove_some_contacts_with_nonexisting() {
    let api = start();
    for c in [ALICE, KATE] {
        add_contact(&api, BOB, c);
    }
    let r = delete_many(&api, BOB, &[ALICE, KATE, MIKE]);
    assert_eq!(ok_json(r), json!({ "not_deleted": [MIKE.0] }));
    assert_eq!(contacts(&api, BOB), json!([]));
}

#[test]
fn roster_errors() {
    let api = start();
    let alice = format!("/contacts/{}", ALICE.0);
    expect(
        &post(&api, BOB, "/contacts", &json!({})),
        BAD_REQUEST,
        Some("Missing JID"),
    );
    expect(
        &post(&api, BOB, "/contacts", &json!({ "jid": "@invalid" })),
        BAD_REQUEST,
        Some("Invalid JID: @invalid"),
    );
    expect(
        &putt(&api, BOB, &alice, &json!({ "action": "nosuchaction" })),
        BAD_REQUEST,
        Some("Invalid action"),
    );
    expect(
        &putt(&api, BOB, &alice, &json!({})),
        BAD_REQUEST,
        Some("Missing action"),
    );
    let zorro = "/contacts/zorro@localhost";
    expect(
        &post(&api, BOB, "/contacts", &json!({ "jid": "zorro@localhost" })),
        NOT_FOUND,
        None,
    );
    expect(
        &putt(&api, BOB, zorro, &json!({ "action": "invite" })),
        NOT_FOUND,
        None,
    );
    expect(&gett(&api, BOB, zorro), NOT_FOUND, None);
    expect(&delete(&api, BOB, zorro), NOT_FOUND, None);
}

// ------------------------------------------------- beyond the suite's cases

/// MongooseIM allows OPTIONS on every handler, without credentials
/// (`is_noauth_http_method`), answering cowboy's 200 with `Allow`.
#[test]
fn options_is_allowed_on_every_handler_without_auth() {
    let api = start();
    for (path, allow) in [
        ("/sse", "OPTIONS, GET"),
        ("/messages", "OPTIONS, GET, POST"),
        ("/messages/bob@localhost", "OPTIONS, GET"),
        ("/contacts", "OPTIONS, GET, POST, PUT, DELETE"),
        ("/contacts/bob@localhost", "OPTIONS, GET, POST, PUT, DELETE"),
        ("/rooms", "OPTIONS, GET, POST, PUT"),
        ("/rooms/r1", "OPTIONS, GET, PUT"),
        ("/rooms/r1/config", "OPTIONS, PUT"),
        ("/rooms/r1/users", "OPTIONS, POST, DELETE"),
        ("/rooms/r1/users/bob@localhost", "OPTIONS, POST, DELETE"),
        ("/rooms/r1/messages", "OPTIONS, GET, POST"),
    ] {
        let raw = format!("OPTIONS /api{path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let r = Conn::open(api.addr()).request(raw.as_bytes());
        assert_eq!(status_line(&r), OK, "{path}");
        assert_eq!(r.header("allow").as_deref(), Some(allow), "{path}");
        assert!(r.body.is_empty(), "{path}");
    }
    let raw = "OPTIONS /api/nothing HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let r = Conn::open(api.addr()).request(raw.as_bytes());
    assert_eq!(status_line(&r), NOT_FOUND);
    // Other methods a route lacks are 405 with the same Allow.
    let r = delete(&api, ALICE, "/rooms/r1/config");
    assert_eq!(status_line(&r), "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(r.header("allow").as_deref(), Some("OPTIONS, PUT"));
}

/// Both event types are framed `id:`, `event:`, `data:`.
#[test]
fn sse_frames_write_id_then_event_then_data() {
    let api = start();
    let room = given_new_room(&api, BOB);
    given_user_invited(&api, BOB, &room, ALICE);
    let mut alice = connect_to_sse(&api, ALICE);
    send_message(&api, BOB, ALICE);
    given_hi_all(&api, &room, BOB);
    for etype in ["message", "room.message"] {
        let ev = alice.next_event(T).expect("an event");
        let fields: Vec<&str> = ev
            .raw
            .trim_end()
            .lines()
            .map(|l| l.split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(fields, ["id", "event", "data"], "{:?}", ev.raw);
        assert_eq!(ev.event.as_deref(), Some(etype));
    }
}

/// The Basic scheme name is case-insensitive (RFC 7617).
#[test]
fn basic_scheme_is_case_insensitive() {
    let api = start();
    for scheme in ["Basic", "basic", "BASIC"] {
        let raw = format!(
            "GET /api/rooms HTTP/1.1\r\nHost: localhost\r\nAuthorization: {scheme} {}\r\n\r\n",
            base64(&format!("{}:{}", ALICE.0, ALICE.1))
        );
        let r = Conn::open(api.addr()).request(raw.as_bytes());
        assert_eq!(status_line(&r), OK, "{scheme}");
    }
}

/// NOTE: the reason phrase comes from the core's table in `http.rs`,
/// which lacks 201 today ("Unknown"); this test fails until that table is
/// fixed, which is expected.
#[test]
fn room_create_status_line_is_201_created() {
    let api = start();
    let r = post(
        &api,
        ALICE,
        "/rooms",
        &json!({ "name": "n", "subject": "s" }),
    );
    assert_eq!(status_line(&r), "HTTP/1.1 201 Created");
    let r = given_new_room_with_id(&api, ALICE, "put-room", "n");
    assert_eq!(status_line(&r), "HTTP/1.1 201 Created");
}

#[test]
fn a_users_line_without_colon_or_domain_stops_start_up_naming_the_line() {
    for (name, text, line) in [
        ("nocolon", "alice@localhost:pw\nbob@localhost\n", 2),
        ("nodomain", "# users\nalice:pw\n", 2),
    ] {
        let file = std::env::temp_dir().join(format!(
            "ssed-mongoose-badline-{}-{name}.txt",
            std::process::id()
        ));
        std::fs::write(&file, text).unwrap();
        let out = Ssed::new()
            .args(["--users", file.to_str().unwrap()])
            .output();
        let _ = std::fs::remove_file(&file);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("line {line}: not user@domain:password")),
            "{name}: {err}"
        );
        assert!(out.stdout.is_empty(), "{name}: it must not listen");
    }
}

#[test]
fn one_user_cannot_take_every_room() {
    let api = start();
    // ssed's per-user quota (MAX_ROOMS_PER_USER in src/apps/mongoose.rs).
    const QUOTA: usize = 20;
    let mut mine = Vec::new();
    for _ in 0..QUOTA {
        mine.push(given_new_room(&api, ALICE));
    }
    let r = post(&api, ALICE, "/rooms", &json!({"name": "n", "subject": "s"}));
    expect(
        &r,
        "HTTP/1.1 429 Too Many Requests",
        Some("Too many rooms created by this user (at most 20); delete one first"),
    );
    // PUT with an id is held to the same quota.
    let r = putt(
        &api,
        ALICE,
        "/rooms/extra",
        &json!({"name": "n", "subject": "s"}),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    // Everyone else still creates rooms.
    given_new_room(&api, BOB);
    // Leaving a room she alone is in deletes it and gives her quota back.
    let r = delete(
        &api,
        ALICE,
        &format!("/rooms/{}/users/{}", mine[0], ALICE.0),
    );
    expect(&r, NOCONTENT, None);
    given_new_room(&api, ALICE);
    let s = crate::common::stats(api.addr());
    assert_eq!(s["rejected"]["room_quota"], 2, "{s}");
}

/// Resident set of a process, from /proc (Linux).
fn rss_bytes(pid: u32) -> usize {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[test]
fn archives_count_against_the_history_budget() {
    // 100 users; one of them floods the others with 60 KB messages and
    // its rooms with 60 KB posts. Without the bound the archives alone
    // reach 100 × 256 KB (24 MB) plus 10 × 256 KB of rooms.
    const USERS: usize = 100;
    let file = std::env::temp_dir().join(format!("ssed-mongoose-flood-{}.txt", std::process::id()));
    let mut text = String::new();
    for i in 0..USERS {
        text.push_str(&format!("u{i}@localhost:pw{i}\n"));
    }
    std::fs::write(&file, text).unwrap();
    let srv = Server::start(&[
        "--users",
        file.to_str().unwrap(),
        "--history-total-bytes",
        "4194304",
    ]);
    let api = Api { srv, file };
    let pid = api.srv.child.id();
    let before = rss_bytes(pid);
    let me: Who = ("u0@localhost", "pw0");
    let body = "x".repeat(60_000);
    for round in 0..6 {
        for i in 1..USERS {
            let to = format!("u{i}@localhost");
            let r = post(&api, me, "/messages", &json!({"to": to, "body": body}));
            assert_eq!(r.status, 200, "round {round} to {to}: {}", r.text());
        }
    }
    let mut rooms = Vec::new();
    for _ in 0..10 {
        rooms.push(given_new_room(&api, me));
    }
    for _ in 0..10 {
        for r in &rooms {
            let resp = post(
                &api,
                me,
                &format!("/rooms/{r}/messages"),
                &json!({"body": body}),
            );
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    }
    let after = rss_bytes(pid);
    let grown = after.saturating_sub(before);
    eprintln!("RSS {before} -> {after} bytes (grew {grown})");
    // The 4 MiB budget (history and archives together), the request
    // buffers and the allocator's slack; far below the 27 MB unbounded.
    assert!(
        grown < 16 << 20,
        "RSS grew {grown} bytes ({before} -> {after})"
    );
    // The oldest conversations went first; the newest are all there.
    let old = ok_json(gett(&api, me, "/messages/u1@localhost"));
    assert_eq!(
        old.as_array().map(Vec::len),
        Some(0),
        "u1's messages were the oldest"
    );
    let last = ok_json(gett(&api, me, &format!("/rooms/{}/messages", rooms[9])));
    assert!(!last.as_array().unwrap().is_empty());
    // The broker made room for the archives: history plus archives fit.
    let s = crate::common::stats(api.addr());
    assert!(s["history"]["bytes"].as_u64().unwrap() <= 4 << 20, "{s}");
    assert!(s["history"]["evicted_bytes"].as_u64().unwrap() > 0, "{s}");
    // A bystander is still served.
    let r = gett(&api, ("u5@localhost", "pw5"), "/messages");
    assert_eq!(r.status, 200);
}
