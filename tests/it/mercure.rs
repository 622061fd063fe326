//! JWT authorization, private events and the Mercure hub
//! (`/.well-known/mercure`) against the real binary: who receives a
//! private update (and who never learns its id, not even through a resume
//! or a `gap`), token refusals with their statuses, the form publishers
//! send, custom ids and resume by them, `earliest`, and selector
//! subscriptions that see streams created after them.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use ssed::internals::auth::{mint_hs256, Key};

use crate::common::*;

pub(crate) const KEY: &str = "ssed-mercure-test-key-0123456789abcdef";
const SUB_KEY: &str = "ssed-mercure-subscriber-key-0123456789";
pub(crate) const HUB: &str = "/.well-known/mercure";
/// How long "nothing arrives" is watched for.
pub(crate) const QUIET: Duration = Duration::from_millis(400);

pub(crate) fn mint(claims: Value, key: &str) -> String {
    mint_hs256(&claims, &Key::new(key.as_bytes().to_vec()).unwrap())
}
pub(crate) fn sub_token(selectors: &[&str]) -> String {
    mint(json!({"mercure": {"subscribe": selectors}}), KEY)
}
pub(crate) fn pub_token(selectors: &[&str]) -> String {
    mint(json!({"mercure": {"publish": selectors}}), KEY)
}
pub(crate) fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// POSTs a Mercure form with `token` as bearer.
pub(crate) fn hub_post(addr: SocketAddr, token: &str, form: &str) -> Response {
    request(
        addr,
        format!(
            "POST {HUB} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
        .as_bytes(),
    )
}

/// Publishes through the hub; returns the id from the plain-text body.
pub(crate) fn hub_publish(addr: SocketAddr, form: &str) -> String {
    let r = hub_post(addr, &pub_token(&["*"]), form);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type").unwrap().starts_with("text/plain"),
        "{}",
        r.head
    );
    r.text()
}

pub(crate) fn hub_sub(addr: SocketAddr, query: &str, headers: &str) -> Sse {
    let s = Sse::open(addr, &format!("{HUB}?{query}"), headers);
    assert_eq!(s.status(), 200, "{}", s.head);
    s
}

/// Every data event until `QUIET` passes with nothing.
pub(crate) fn drain(s: &mut Sse) -> Vec<Ev> {
    let mut out = Vec::new();
    while let Some(e) = s.next_event(QUIET) {
        out.push(e);
    }
    out
}

#[test]
fn private_updates_reach_only_authorised_subscribers() {
    let srv = Server::start(&["--jwt-key", KEY]);
    let a = srv.addr;
    let topic = "https://example.com/books/1";
    let t = sub_token(&["https://example.com/books/{id}"]);
    let mut authed = hub_sub(a, &format!("topic={}&authorization={t}", enc(topic)), "");
    let mut cookie = hub_sub(
        a,
        &format!("topic={}", enc(topic)),
        &format!("Cookie: x=1; mercureAuthorization={t}\r\n"),
    );
    let mut anon = hub_sub(a, &format!("topic={}", enc(topic)), "");
    // The same stream through /events: the same rule.
    let mut events_anon = Sse::open(a, &format!("/events?stream={}", enc(topic)), "");
    let mut events_authed = Sse::open(
        a,
        &format!("/events?stream={}", enc(topic)),
        &format!("Authorization: Bearer {t}\r\n"),
    );
    assert!(wait_until(T, || stats(a)["connections"]["sse"].as_u64() == Some(5)));
    let p1 = hub_publish(a, &format!("topic={}&data=public-1", enc(topic)));
    let secret = hub_publish(a, &format!("topic={}&data=secret&private=on", enc(topic)));
    let p2 = hub_publish(a, &format!("topic={}&data=public-2", enc(topic)));
    for s in [&mut authed, &mut cookie, &mut events_authed] {
        let got: Vec<(Option<String>, String)> = (0..3)
            .map(|_| s.next_event(T).unwrap())
            .map(|e| (e.id.clone(), e.data()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(p1.clone()), "public-1".into()),
                (Some(secret.clone()), "secret".into()),
                (Some(p2.clone()), "public-2".into())
            ]
        );
    }
    for s in [&mut anon, &mut events_anon] {
        let got = drain(s);
        let raw: String = got.iter().map(|e| e.raw.clone()).collect();
        assert_eq!(got.len(), 2, "{raw}");
        assert!(!raw.contains("secret") && !raw.contains(&secret), "{raw}");
        assert_eq!(got[1].id.as_deref(), Some(p2.as_str()));
    }
    // A resume from before the private update does not leak it.
    let mut again = hub_sub(
        a,
        &format!("topic={}", enc(topic)),
        &format!("Last-Event-ID: {p1}\r\n"),
    );
    let got = drain(&mut again);
    assert_eq!(
        got.iter().map(|e| e.data()).collect::<Vec<_>>(),
        vec!["public-2"]
    );
    let mut again = hub_sub(
        a,
        &format!("topic={}&lastEventID={p1}&authorization={t}", enc(topic)),
        "",
    );
    let got = drain(&mut again);
    assert_eq!(
        got.iter().map(|e| e.data()).collect::<Vec<_>>(),
        vec!["secret", "public-2"]
    );
}

#[test]
fn evicted_private_updates_are_not_counted_in_a_gap() {
    let srv = Server::start(&["--jwt-key", KEY, "--history", "2"]);
    let a = srv.addr;
    let p1 = hub_publish(a, "topic=news&data=p1");
    for i in 0..3 {
        hub_publish(a, &format!("topic=news&data=s{i}&private=1"));
    }
    // Anonymous, resuming from p1: nothing it could see was lost.
    let mut anon = Sse::open(
        a,
        "/events?stream=news",
        &format!("Last-Event-ID: {p1}\r\n"),
    );
    let blocks: Vec<Ev> = std::iter::from_fn(|| anon.next_block(QUIET)).collect();
    assert!(
        blocks
            .iter()
            .all(|b| b.event.as_deref() != Some("gap") && b.data.is_empty()),
        "{blocks:?}"
    );
    // A subscriber that may see them is told they are gone.
    let t = sub_token(&["news"]);
    let mut authed = hub_sub(
        a,
        &format!("topic=news&authorization={t}"),
        &format!("Last-Event-ID: {p1}\r\n"),
    );
    let first = authed.next_event(T).unwrap();
    assert_eq!(first.event.as_deref(), Some("gap"), "{first:?}");
    let rest = drain(&mut authed);
    assert_eq!(
        rest.iter().map(|e| e.data()).collect::<Vec<_>>(),
        vec!["s1", "s2"]
    );
}

#[test]
fn token_refusals() {
    let srv = Server::start(&[
        "--jwt-key",
        KEY,
        "--subscriber-jwt-key",
        SUB_KEY,
        "--max-header-bytes",
        "32768",
        "--private-streams",
        "/secret/{id}",
    ]);
    let a = srv.addr;
    let sub_ok = mint(json!({"mercure": {"subscribe": ["*"]}}), SUB_KEY);
    let sub_status = |token: &str, topic: &str| {
        let s = Sse::open(
            a,
            &format!("{HUB}?topic={}", enc(topic)),
            &format!("Authorization: Bearer {token}\r\n"),
        );
        s.status()
    };
    let pub_status = |token: &str| hub_post(a, token, "topic=x&data=1").status;
    assert_eq!(sub_status(&sub_ok, "x"), 200);
    // Wrong key role: a publisher-key token cannot subscribe, and the reverse.
    assert_eq!(sub_status(&sub_token(&["*"]), "x"), 401);
    assert_eq!(
        pub_status(&mint(json!({"mercure": {"publish": ["*"]}}), SUB_KEY)),
        401
    );
    assert_eq!(pub_status(&pub_token(&["*"])), 200);
    // Bad signature.
    let (signed, _) = sub_ok.rsplit_once('.').unwrap();
    assert_eq!(sub_status(&format!("{signed}.AAAA"), "x"), 401);
    // alg none.
    let b64 = |s: &str| base64url(s.as_bytes());
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(r#"{"mercure":{"publish":["*"],"subscribe":["*"]}}"#)
    );
    assert_eq!(sub_status(&none, "x"), 401);
    assert_eq!(pub_status(&none), 401);
    // Expired.
    let expired = mint(
        json!({"exp": 1_000_000, "mercure": {"subscribe": ["*"]}}),
        SUB_KEY,
    );
    assert_eq!(sub_status(&expired, "x"), 401);
    let r = get(a, &format!("{HUB}?topic=x&authorization={expired}"));
    assert_eq!(r.status, 401);
    assert!(
        r.text().contains("expired") && !r.text().contains(&expired),
        "{}",
        r.text()
    );
    // Oversize.
    let big = mint(
        json!({"pad": "x".repeat(9000), "mercure": {"subscribe": ["*"]}}),
        SUB_KEY,
    );
    assert_eq!(sub_status(&big, "x"), 401);
    // A publish token whose selectors miss a topic: 403; none at all: 401.
    assert_eq!(
        hub_post(a, &pub_token(&["y"]), "topic=y&topic=x&data=1").status,
        403
    );
    let r = post(
        a,
        HUB,
        "application/x-www-form-urlencoded",
        "topic=x&data=1",
    );
    assert_eq!(r.status, 401);
    assert!(r.head.contains("WWW-Authenticate: Bearer"), "{}", r.head);
    // A token's template whose literal `%` starts no %XX escape is a bad
    // claim like any bad selector (401); in an exact selector any `%` is
    // part of the topic.
    let pct = "topic=https%3A%2F%2Fx%2Fa%25&data=1";
    for bad in ["https://x/a%{v}", "https://x/a%4{v}", "https://x/a{v"] {
        assert_eq!(hub_post(a, &pub_token(&[bad]), pct).status, 401, "{bad}");
    }
    assert_eq!(hub_post(a, &pub_token(&["https://x/a%"]), pct).status, 200);
    // Private streams: 401 anonymous, 403 without a matching selector.
    let s = Sse::open(a, "/events?stream=/secret/1", "");
    assert_eq!(s.status(), 401);
    let narrow = mint(json!({"mercure": {"subscribe": ["/public"]}}), SUB_KEY);
    let s = Sse::open(
        a,
        "/events?stream=/secret/1",
        &format!("Authorization: Bearer {narrow}\r\n"),
    );
    assert_eq!(s.status(), 403);
    assert_eq!(sub_status(&narrow, "/secret/1"), 403);
    assert_eq!(sub_status(&sub_ok, "/secret/1"), 200);
    // An anonymous `*` subscriber does not read a private stream's events.
    let mut star = hub_sub(a, "topic=*", "");
    assert!(wait_until(T, || stats(a)["connections"]["sse"].as_u64() == Some(1)));
    let r = post(a, "/events?stream=/secret/1", "text/plain", "hidden");
    assert_eq!(
        r.status, 401,
        "/events publishing needs a token too once a key is set"
    );
    let ok = request(
        a,
        format!(
            "POST /events?stream=/secret/1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhidden",
            pub_token(&["/secret/{id}"])
        )
        .as_bytes(),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    hub_publish(a, "topic=/open&data=visible");
    let got = drain(&mut star);
    assert_eq!(
        got.iter().map(|e| e.data()).collect::<Vec<_>>(),
        vec!["visible"]
    );
}

fn base64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn publish_form_shape_and_errors() {
    let srv = Server::start(&[
        "--jwt-key",
        KEY,
        "--publish-token",
        "admin",
        "--max-body",
        "200",
    ]);
    let a = srv.addr;
    let topic = "https://example.com/books/1?lang=fr#x";
    let mut s = hub_sub(a, &format!("topic={}&topic=urn:other", enc(topic)), "");
    assert!(wait_until(T, || stats(a)["connections"]["sse"].as_u64() == Some(1)));
    // What Symfony's and the JS publishers send.
    let form = format!(
        "topic={}&topic=urn%3Aother&data=%7B%22title%22%3A%22Dune%22%7D&type=book&retry=1500",
        enc(topic)
    );
    let id = hub_publish(a, &form);
    let e = s.next_event(T).unwrap();
    assert_eq!(e.id.as_deref(), Some(id.as_str()));
    assert_eq!(e.event.as_deref(), Some("book"));
    assert_eq!(e.retry.as_deref(), Some("1500"));
    assert_eq!(e.data(), r#"{"title":"Dune"}"#);
    assert!(s.next_event(QUIET).is_none(), "one update, delivered once");
    // --publish-token works beside JWTs.
    assert_eq!(hub_post(a, "admin", "topic=x&data=1").status, 200);
    // The topic is the stream's name, whole; /events reads it percent-encoded.
    let r = get(a, &format!("/streams/{}", enc(topic)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], topic);
    let t = pub_token(&["*"]);
    for (form, why) in [
        ("data=1", "no topic"),
        ("topic=a&id=%23frag", "leading #"),
        ("topic=a&id=a%0Ab", "LF in id"),
        ("topic=a&retry=soon", "retry"),
        ("topic=a&type=a%3Ab", "type"),
        ("topic=%2A", "topic *"),
        ("topic=%2Fa%2F%7Bid%7D", "a template is no topic"),
        ("topic=a&data=%00", "NUL"),
    ] {
        assert_eq!(hub_post(a, &t, form).status, 400, "{why}");
    }
    let long = format!("topic={}&data=1", "a".repeat(1025));
    let r = request(
        a,
        format!("POST {HUB} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer admin\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{long}", long.len()).as_bytes(),
    );
    assert_eq!(r.status, 413, "past --max-body");
    let r = request(
        a,
        format!("POST {HUB} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes(),
    );
    assert_eq!(r.status, 400);
    assert_eq!(get(a, HUB).status, 400, "subscribing needs a topic");
    assert_eq!(get(a, &format!("{HUB}?topic=%7Bx")).status, 400);
    // RFC 6570: a literal `%` in a template only starts a %XX escape.
    for t in ["https://x/a%{v}", "https://x/a%4{v}", "https://x/{v}%zz"] {
        let r = get(a, &format!("{HUB}?topic={}", enc(t)));
        assert_eq!(r.status, 400, "{t}");
        assert!(
            r.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("must start a %XX escape")),
            "{t}: {}",
            r.text()
        );
    }
}

#[test]
fn custom_ids_resume_and_earliest() {
    let srv = Server::start(&["--jwt-key", KEY]);
    let a = srv.addr;
    let mut live = hub_sub(a, "topic=urn:t", "");
    assert!(wait_until(T, || stats(a)["connections"]["sse"].as_u64() == Some(1)));
    assert_eq!(
        hub_publish(a, "topic=urn:t&data=one&id=urn:uuid:1"),
        "urn:uuid:1"
    );
    assert_eq!(
        hub_publish(a, "topic=urn:t&data=two&id=urn:uuid:2"),
        "urn:uuid:2"
    );
    let plain = hub_publish(a, "topic=urn:t&data=three");
    assert!(plain.parse::<u64>().is_ok(), "{plain}");
    let ids: Vec<Option<String>> = (0..3).map(|_| live.next_event(T).unwrap().id).collect();
    assert_eq!(
        ids,
        vec![
            Some("urn:uuid:1".into()),
            Some("urn:uuid:2".into()),
            Some(plain.clone())
        ]
    );
    // Resume by a custom id: header and Mercure's query parameter.
    let mut r = hub_sub(a, "topic=urn:t", "Last-Event-ID: urn:uuid:1\r\n");
    assert_eq!(
        drain(&mut r).iter().map(|e| e.data()).collect::<Vec<_>>(),
        vec!["two", "three"]
    );
    let mut r = hub_sub(a, "topic=urn:t&lastEventID=urn%3Auuid%3A2", "");
    assert_eq!(
        drain(&mut r).iter().map(|e| e.data()).collect::<Vec<_>>(),
        vec!["three"]
    );
    // And through /events too.
    let mut r = Sse::open(a, "/events?stream=urn:t", "Last-Event-ID: urn:uuid:2\r\n");
    assert_eq!(
        drain(&mut r).iter().map(|e| e.data()).collect::<Vec<_>>(),
        vec!["three"]
    );
    // An unknown id: gap, then everything retained.
    let mut r = hub_sub(a, "topic=urn:t&lastEventID=urn:nope", "");
    assert_eq!(r.next_event(T).unwrap().event.as_deref(), Some("gap"));
    assert_eq!(drain(&mut r).len(), 3);
    // earliest: everything retained, no gap.
    let mut r = hub_sub(a, "topic=urn:t&lastEventID=earliest", "");
    let got = drain(&mut r);
    assert_eq!(
        got.iter().map(|e| e.data()).collect::<Vec<_>>(),
        vec!["one", "two", "three"]
    );
}

#[test]
fn selector_subscriptions_see_streams_created_later() {
    let srv = Server::start(&["--jwt-key", KEY]);
    let a = srv.addr;
    let mut tpl = hub_sub(
        a,
        &format!("topic={}", enc("https://example.com/books/{id}")),
        "",
    );
    let mut star = hub_sub(a, "topic=*", "");
    let t = sub_token(&["*"]);
    let mut star_authed = hub_sub(a, &format!("topic=*&authorization={t}"), "");
    assert!(wait_until(T, || stats(a)["connections"]["sse"].as_u64() == Some(3)));
    let b42 = hub_publish(
        a,
        &format!("topic={}&data=b42", enc("https://example.com/books/42")),
    );
    hub_publish(
        a,
        &format!(
            "topic={}&data=review",
            enc("https://example.com/books/42/reviews/1")
        ),
    );
    let secret = hub_publish(
        a,
        &format!(
            "topic={}&data=s&private=on",
            enc("https://example.com/books/7")
        ),
    );
    // /events publishes reach selector subscribers too.
    let r = request(
        a,
        format!(
            "POST /events?stream=fresh HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nfrom-events",
            pub_token(&["fresh"])
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = r.json()["id"].as_str().unwrap().to_string();
    let got = drain(&mut tpl);
    assert_eq!(
        got.iter()
            .map(|e| e.id.clone().unwrap())
            .collect::<Vec<_>>(),
        vec![b42.clone()]
    );
    let got = drain(&mut star);
    assert_eq!(
        got.iter().map(|e| e.data()).collect::<Vec<_>>(),
        vec!["b42", "review", "from-events"]
    );
    let got = drain(&mut star_authed);
    assert_eq!(got.len(), 4);
    assert_eq!(got[2].id.as_deref(), Some(secret.as_str()));
    assert_eq!(got[3].id.as_deref(), Some(ev.as_str()));
    // Resume within the selector stream.
    let mut r = hub_sub(a, "topic=*", &format!("Last-Event-ID: {b42}\r\n"));
    assert_eq!(
        drain(&mut r).iter().map(|e| e.data()).collect::<Vec<_>>(),
        vec!["review", "from-events"]
    );
}

#[test]
fn cors_for_the_hub() {
    let srv = Server::start(&["--cors-origin", "https://app.example"]);
    let a = srv.addr;
    let r = request(
        a,
        format!("OPTIONS {HUB} HTTP/1.1\r\nHost: t\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(
        r.header("access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert!(r
        .header("access-control-allow-headers")
        .unwrap()
        .contains("Authorization"));
    let s = Sse::open(
        a,
        &format!("{HUB}?topic=x"),
        "Origin: https://app.example\r\n",
    );
    assert!(
        s.head.contains("Access-Control-Allow-Credentials: true"),
        "{}",
        s.head
    );
}

#[test]
fn short_keys_are_refused_at_start() {
    for args in [
        vec!["--jwt-key", "too-short"],
        vec!["--subscriber-jwt-key", "31-bytes-is-one-byte-too-short!"],
    ] {
        let out = Ssed::new().args(&args).output();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("256 bits") && !err.contains(args[1]), "{err}");
    }
}
