//! The Mercure hub speaking draft-dunglas-mercure-08 beside the legacy
//! dialect, against the real binary: `match=`/`match_urlpattern=`
//! subscriptions, `at+jwt` tokens with `authorization_details` (issuer,
//! audience, expiry), private updates reaching only subscribers whose
//! grants match, every 400/401/403 with its body and `WWW-Authenticate`,
//! `Mercure-Last-Event-ID`, the RFC 9728 metadata, and URL patterns
//! drawing on the selector-stream pools.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use ssed::internals::auth::{mint_hs256_typ, Key};

use crate::common::*;
use crate::mercure::{drain, enc, mint, KEY};

const HUB: &str = "/.well-known/mercure";
const ISS: &str = "https://issuer.example";
const AUD: &str = "https://hub.example";
const DETAIL: &str = "https://mercure.rocks/authorization-detail";
/// What every refusal on host `t` names.
const METADATA: &str = "http://t/.well-known/oauth-protected-resource/.well-known/mercure";
const T: Duration = Duration::from_secs(5);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A draft-08 access token: `typ: at+jwt`, this hub's `iss` and `aud`.
fn at(details: Value, exp: u64) -> String {
    at_claims(json!({
        "iss": ISS, "aud": [AUD], "exp": exp, "authorization_details": details
    }))
}

fn at_claims(claims: Value) -> String {
    mint_hs256_typ(
        &claims,
        &Key::new(KEY.as_bytes().to_vec()).unwrap(),
        "at+jwt",
    )
}

fn grant(actions: &[&str], topics: Value) -> Value {
    json!([{"type": DETAIL, "actions": actions, "topics": topics}])
}

fn server(extra: &[&str]) -> Server {
    let mut args = vec!["--jwt-key", KEY, "--jwt-issuer", ISS, "--jwt-audience", AUD];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn post(a: SocketAddr, auth: &str, form: &str) -> Response {
    request(
        a,
        format!(
            "POST {HUB} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
        .as_bytes(),
    )
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}\r\n")
}

fn head_value(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

fn sub(a: SocketAddr, query: &str, headers: &str) -> Sse {
    let s = Sse::open(a, &format!("{HUB}?{query}"), headers);
    assert_eq!(s.status(), 200, "{}", s.head);
    s
}

/// Asserts a refusal: status, the JSON reason and the challenge.
fn refused(r: &Response, status: u16, reason: &str, code: Option<&str>) {
    assert_eq!(r.status, status, "{}{}", r.head, r.text());
    let err = r.json()["error"].as_str().unwrap().to_string();
    assert!(err.contains(reason), "{err:?} lacks {reason:?}");
    let want = match code {
        Some(c) => format!("Bearer resource_metadata=\"{METADATA}\", error=\"{c}\""),
        None => format!("Bearer resource_metadata=\"{METADATA}\""),
    };
    assert_eq!(r.header("www-authenticate"), Some(want), "{}", r.head);
}

#[test]
fn both_dialects_on_one_server() {
    let srv = server(&[]);
    let a = srv.addr;
    let exp = now() + 600;
    let pattern = "https://example.com/books/:id";
    let d08_sub = at(
        grant(
            &["subscribe"],
            json!([{"match": pattern, "match_type": "urlpattern"}]),
        ),
        exp,
    );
    let d08_exact = at(
        grant(
            &["subscribe"],
            json!([{"match": "https://example.com/books/1"}]),
        ),
        exp,
    );
    let d08_pub = at(
        grant(
            &["publish"],
            json!([{"match": pattern, "match_type": "urlpattern"}]),
        ),
        exp,
    );
    let legacy_sub = mint(
        json!({"mercure": {"subscribe": ["https://example.com/books/{id}"]}}),
        KEY,
    );
    let legacy_pub = mint(json!({"mercure": {"publish": ["*"]}}), KEY);
    let q_pattern = format!("match_urlpattern={}", enc(pattern));
    let mut new_pat = sub(a, &q_pattern, &bearer(&d08_sub));
    let mut new_exact = sub(
        a,
        &format!("match={}", enc("https://example.com/books/1")),
        &format!("Cookie: __Secure-mercure_access_token={d08_exact}\r\n"),
    );
    let mut old = sub(
        a,
        &format!("topic={}", enc("https://example.com/books/{id}")),
        &bearer(&legacy_sub),
    );
    let mut anon = sub(a, &q_pattern, "");
    let mut anon_all = sub(a, "match=*", "");
    assert_eq!(
        head_value(&new_pat.head, "link"),
        vec![
            "<http://t/.well-known/mercure>; rel=\"mercure\"".to_string(),
            format!("<{METADATA}>; rel=\"oauth-protected-resource\""),
        ]
    );
    assert!(wait_until(T, || stats(a)["connections"]["sse"].as_u64() == Some(5)));
    let topic = enc("https://example.com/books/1");
    // A draft-08 publisher, a custom id and multi-line data (CR, LF, CRLF).
    let r = post(
        a,
        &bearer(&d08_pub),
        &format!(
            "topic={topic}&topic={}&id=book-1-v1&data=line1%0Aline2%0D%0Aline3%0Dline4",
            enc("urn:alt")
        ),
    );
    // The alternate topic is not granted: 403, nothing published.
    refused(&r, 403, "urn:alt", Some("insufficient_scope"));
    let r = post(
        a,
        &bearer(&d08_pub),
        &format!("topic={topic}&id=book-1-v1&data=line1%0Aline2%0D%0Aline3%0Dline4"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(r.text(), "book-1-v1");
    let r = post(
        a,
        &bearer(&d08_pub),
        &format!("topic={topic}&id=secret-1&data=secret&private=on"),
    );
    assert_eq!((r.status, r.text()), (200, "secret-1".to_string()));
    // A legacy publisher on the same hub.
    let r = post(
        a,
        &bearer(&legacy_pub),
        &format!("topic={topic}&data=legacy"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let legacy_id = r.text();
    let want_all = vec![
        (
            Some("book-1-v1".to_string()),
            "line1\nline2\nline3\nline4".to_string(),
        ),
        (Some("secret-1".to_string()), "secret".to_string()),
        (Some(legacy_id.clone()), "legacy".to_string()),
    ];
    for (name, s) in [
        ("draft-08 pattern", &mut new_pat),
        ("draft-08 exact via cookie", &mut new_exact),
        ("legacy template", &mut old),
    ] {
        let got: Vec<_> = (0..3)
            .map(|_| {
                s.next_event(T)
                    .unwrap_or_else(|| panic!("{name}: no event"))
            })
            .map(|e| (e.id.clone(), e.data()))
            .collect();
        assert_eq!(got, want_all, "{name}");
    }
    assert!(
        new_pat
            .wire
            .windows(b"data: line1\ndata: line2\ndata: line3\ndata: line4\n".len())
            .any(|w| w == b"data: line1\ndata: line2\ndata: line3\ndata: line4\n"),
        "separate data: lines"
    );
    for (name, s) in [
        ("anonymous pattern", &mut anon),
        ("anonymous *", &mut anon_all),
    ] {
        let got = drain(s);
        let raw: String = got.iter().map(|e| e.raw.clone()).collect();
        assert_eq!(
            got.iter()
                .map(|e| e.id.clone().unwrap_or_default())
                .collect::<Vec<_>>(),
            vec!["book-1-v1".to_string(), legacy_id.clone()],
            "{name}: {raw}"
        );
        assert!(!raw.contains("secret"), "{name}: {raw}");
    }
    // Replayed events are checked against the token presented now: a
    // resume with the grant gets the private update, without it not.
    let mut again = sub(
        a,
        &format!("{q_pattern}&last_event_id=book-1-v1"),
        &bearer(&d08_sub),
    );
    assert_eq!(
        head_value(&again.head, "mercure-last-event-id"),
        vec!["book-1-v1".to_string()]
    );
    let got: Vec<_> = drain(&mut again).into_iter().map(|e| e.data()).collect();
    assert_eq!(got, vec!["secret", "legacy"]);
    let mut again = sub(a, &format!("{q_pattern}&last_event_id=book-1-v1"), "");
    let got: Vec<_> = drain(&mut again).into_iter().map(|e| e.data()).collect();
    assert_eq!(got, vec!["legacy"]);
}

#[test]
fn refusals_carry_the_challenge() {
    let srv = server(&[]);
    let a = srv.addr;
    let exp = now() + 600;
    let pub_all = grant(&["publish"], json!([{"match": "*"}]));
    refused(
        &post(a, "", "topic=x&data=1"),
        401,
        "Authorization: Bearer",
        None,
    );
    let bad = |claims: Value| post(a, &bearer(&at_claims(claims)), "topic=x&data=1");
    // Wrong issuer, wrong audience, no exp, expired, not yet valid.
    for claims in [
        json!({"iss": "https://evil.example", "aud": AUD, "exp": exp, "authorization_details": pub_all}),
        json!({"iss": ISS, "aud": "https://other.example", "exp": exp, "authorization_details": pub_all}),
        json!({"iss": ISS, "aud": AUD, "authorization_details": pub_all}),
        json!({"iss": ISS, "aud": AUD, "exp": now() - 5, "authorization_details": pub_all}),
        json!({"iss": ISS, "aud": AUD, "exp": exp, "nbf": now() + 300, "authorization_details": pub_all}),
        // An unsupported match_type rejects the whole token.
        json!({"iss": ISS, "aud": AUD, "exp": exp, "authorization_details":
            [{"type": DETAIL, "actions": ["publish"], "topics": [{"match": "x", "match_type": "regexp"}]}]}),
    ] {
        refused(
            &bad(claims.clone()),
            401,
            "token refused",
            Some("invalid_token"),
        );
    }
    // authorization_details without `typ: at+jwt`.
    let untyped = mint(
        json!({"iss": ISS, "aud": AUD, "exp": exp, "authorization_details": pub_all}),
        KEY,
    );
    refused(
        &post(a, &bearer(&untyped), "topic=x&data=1"),
        401,
        "token refused",
        Some("invalid_token"),
    );
    // A grant for one topic, not another: 403.
    let only_a = at(grant(&["publish"], json!([{"match": "a"}])), exp);
    refused(
        &post(a, &bearer(&only_a), "topic=a&topic=b&data=1"),
        403,
        "\"b\"",
        Some("insufficient_scope"),
    );
    assert_eq!(post(a, &bearer(&only_a), "topic=a&data=1").status, 200);
    // Subscribing with a bad token.
    let r = get(a, &format!("{HUB}?match=a&authorization={untyped}"));
    refused(&r, 401, "subscriber token refused", Some("invalid_token"));
    // A private stream without a token: 401 without an error code.
    drop(srv);
    let srv = server(&["--private-streams", "secret", "--mercure-legacy", "off"]);
    let r = get(srv.addr, &format!("{HUB}?match=secret"));
    refused(&r, 401, "private", None);
    // Legacy tokens off.
    let legacy = mint(json!({"mercure": {"publish": ["*"]}}), KEY);
    refused(
        &post(srv.addr, &bearer(&legacy), "topic=x&data=1"),
        401,
        "token refused",
        Some("invalid_token"),
    );
    let ok = at(pub_all, exp);
    assert_eq!(post(srv.addr, &bearer(&ok), "topic=x&data=1").status, 200);
}

#[test]
fn bad_requests_are_400_with_a_reason() {
    let srv = server(&[]);
    let a = srv.addr;
    let bad_sub = |q: &str, reason: &str| {
        let r = get(a, &format!("{HUB}?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        let err = r.json()["error"].as_str().unwrap().to_string();
        assert!(err.contains(reason), "{q}: {err:?} lacks {reason:?}");
    };
    bad_sub("matchx=a", "unknown parameter \"matchx\"");
    bad_sub("MATCH=a", "unknown parameter \"MATCH\"");
    bad_sub("match_regexp=a", "unknown parameter");
    bad_sub("match=a%01b", "control");
    bad_sub("match=a%E2%80%8Bb", "control or format");
    bad_sub(&format!("match={}", "a".repeat(1025)), "1..=1024 bytes");
    bad_sub("match=", "1..=1024 bytes");
    bad_sub(&"match=a&".repeat(17), "too many topics");
    let nine: String = (0..9)
        .map(|i| format!("match_urlpattern=https://e.com/{i}/:x&"))
        .collect();
    bad_sub(&nine, "at most 8");
    bad_sub(
        "match_urlpattern=https://e.com/(\\d%2B)",
        "bad match_urlpattern",
    );
    bad_sub("other=1", "missing topic");
    let tok = at(grant(&["publish"], json!([{"match": "*"}])), now() + 600);
    let bad_pub = |form: &str, reason: &str| {
        let r = post(a, &bearer(&tok), form);
        assert_eq!(r.status, 400, "{form}: {}", r.text());
        let err = r.json()["error"].as_str().unwrap().to_string();
        assert!(err.contains(reason), "{form}: {err:?} lacks {reason:?}");
    };
    bad_pub("topic=*&data=1", "bad topic \"*\"");
    bad_pub(&format!("topic={}&data=1", enc(HUB)), "reserved");
    bad_pub(
        &format!("topic={}&data=1", enc("/.well-known/mercure/x")),
        "reserved",
    );
    bad_pub(
        &format!(
            "topic={}&data=1",
            enc("http://t/.well-known/mercure/subscriptions")
        ),
        "reserved",
    );
    bad_pub("topic=x&id=%23frag&data=1", "bad id");
    bad_pub("topic=x&id=earliest&data=1", "bad id");
    bad_pub("topic=x&id=a%01b&data=1", "bad id");
    bad_pub("topic=x&type=mercure&data=1", "reserved");
    bad_pub("topic=x&retry=soon&data=1", "bad retry");
    bad_pub("data=1", "missing topic");
    // Near misses are fine.
    let ok = post(
        a,
        &bearer(&tok),
        &format!("topic={}&data=1", enc("/.well-known/mercurex")),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[test]
fn the_stream_ends_when_the_token_expires() {
    let srv = server(&[]);
    let tok = at(grant(&["subscribe"], json!([{"match": "*"}])), now() + 2);
    let mut s = sub(srv.addr, "match=x", &bearer(&tok));
    // A token without exp is refused, so every draft-08 stream ends.
    assert!(
        s.ended_within(Duration::from_secs(6)),
        "still open after exp"
    );
    // The anonymous one beside it stays.
    let mut anon = sub(srv.addr, "match=x", "");
    assert!(!anon.ended_within(Duration::from_millis(300)));
}

#[test]
fn mercure_last_event_id_answers_every_cursor() {
    let srv = server(&["--history", "3"]);
    let a = srv.addr;
    let tok = at(grant(&["publish"], json!([{"match": "*"}])), now() + 600);
    let ids: Vec<String> = (0..5)
        .map(|i| {
            let r = post(a, &bearer(&tok), &format!("topic=x&data={i}&id=e{i}"));
            assert_eq!(r.status, 200, "{}", r.text());
            r.text()
        })
        .collect();
    let header = |q: &str, h: &str| {
        let s = sub(a, &format!("match=x{q}"), h);
        head_value(&s.head, "mercure-last-event-id")
    };
    assert_eq!(header("", ""), Vec::<String>::new(), "no cursor, no header");
    assert_eq!(header("&last_event_id=e3", ""), vec!["e3"]);
    assert_eq!(header("&lastEventID=e3", ""), vec!["e3"]);
    assert_eq!(header("", "Last-Event-ID: e2\r\n"), vec!["e2"]);
    // The header wins over the query.
    assert_eq!(
        header("&last_event_id=e3", "Last-Event-ID: e2\r\n"),
        vec!["e2"]
    );
    assert_eq!(header("&last_event_id=earliest", ""), vec!["earliest"]);
    assert_eq!(header("&last_event_id=nope", ""), vec!["earliest"]);
    // e0 is no longer retained (--history 3).
    assert_eq!(header("&last_event_id=e0", ""), vec!["earliest"]);
    let mut s = sub(a, "match=x&last_event_id=e0", "");
    let first = s.next_event(T).unwrap();
    assert_eq!(first.event.as_deref(), Some("gap"), "{}", first.raw);
    assert_eq!(ids[4], "e4");
}

#[test]
fn discovery_document() {
    let srv = server(&[]);
    let r = get(
        srv.addr,
        "/.well-known/oauth-protected-resource/.well-known/mercure",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({
            "resource": "http://t/.well-known/mercure",
            "authorization_servers": [ISS],
            "authorization_details_types_supported": [DETAIL, "mercure"],
            "bearer_methods_supported": ["header"],
            "resource_signing_alg_values_supported": ["HS256"],
            "mercure_cookie": true,
            "mercure_matcher_types_supported": ["exact", "urlpattern"],
        })
    );
    assert!(head_value(&r.head, "link")
        .contains(&"<http://t/.well-known/mercure>; rel=\"mercure\"".to_string()));
}

#[test]
fn url_patterns_come_from_the_selector_pools() {
    let srv = server(&[]);
    let a = srv.addr;
    // An anonymous address's share of the pool: 32 selector streams, URI
    // templates and URL patterns alike, held while they are read.
    let mut held = Vec::new();
    for c in 0..4 {
        let q: String = (0..8)
            .map(|i| {
                format!(
                    "match_urlpattern={}&",
                    enc(&format!("https://e.com/{c}/{i}/:x"))
                )
            })
            .collect();
        held.push(sub(a, &q, ""));
    }
    let s = Sse::open(
        a,
        &format!("{HUB}?match_urlpattern={}", enc("https://e.com/more/:x")),
        "",
    );
    assert_eq!(s.status(), 503, "{}", s.head);
    // Exact topics need no selector stream.
    let mut exact = sub(a, "match=https%3A%2F%2Fe.com%2F1%2F2%2Fz", "");
    // A token holder draws on the shared pool.
    let tok = at(grant(&["subscribe"], json!([{"match": "*"}])), now() + 600);
    let mut authed = sub(
        a,
        &format!("match_urlpattern={}", enc("https://e.com/more/:x")),
        &bearer(&tok),
    );
    let ptok = at(grant(&["publish"], json!([{"match": "*"}])), now() + 600);
    for t in ["https://e.com/1/2/z", "https://e.com/more/y"] {
        let r = post(
            a,
            &bearer(&ptok),
            &format!("topic={}&data={}", enc(t), enc(t)),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(exact.next_event(T).unwrap().data(), "https://e.com/1/2/z");
    assert_eq!(held[1].next_event(T).unwrap().data(), "https://e.com/1/2/z");
    assert_eq!(authed.next_event(T).unwrap().data(), "https://e.com/more/y");
    assert!(drain(&mut held[0]).is_empty());
}

/// Draft-08 across two nodes on a real redis-server: a URL-pattern
/// subscriber with a grant on node B gets node A's private update under
/// the publisher's id, an anonymous one never does, and an exact resume
/// by that id on node B continues exactly after it, through the topic
/// and through the pattern. (Here an exact `match=` subscriber makes
/// node B hold the topic; hub_shapes covers selectors alone.)
#[cfg(feature = "redis")]
#[test]
fn draft08_on_two_nodes_over_redis() {
    use crate::redis::{node, Redis};
    let Some(r) = Redis::start() else { return };
    let args = ["--jwt-key", KEY, "--jwt-issuer", ISS, "--jwt-audience", AUD];
    let (a, b) = (node(&r, &args), node(&r, &args));
    let exp = now() + 600;
    let pattern = "https://example.com/shelves/:id";
    let q = format!("match_urlpattern={}", enc(pattern));
    let sub_tok = at(
        grant(
            &["subscribe"],
            json!([{"match": pattern, "match_type": "urlpattern"}]),
        ),
        exp,
    );
    let pub_tok = at(grant(&["publish"], json!([{"match": "*"}])), exp);
    let topic = enc("https://example.com/shelves/3");
    let mut exact = sub(b.addr, &format!("match={topic}"), "");
    let mut authed = sub(b.addr, &q, &bearer(&sub_tok));
    let mut anon = sub(b.addr, &q, "");
    assert!(wait_until(T, || stats(b.addr)["connections"]["sse"]
        .as_u64()
        == Some(3)));
    for form in [
        format!("topic={topic}&id=r-secret&private=on&data=secret"),
        format!("topic={topic}&id=r-public&data=public"),
    ] {
        let r = post(a.addr, &bearer(&pub_tok), &form);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let got: Vec<_> = (0..2)
        .map(|_| authed.next_event(T).expect("event on node B"))
        .map(|e| (e.id.clone().unwrap_or_default(), e.data()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("r-secret".to_string(), "secret".to_string()),
            ("r-public".to_string(), "public".to_string())
        ]
    );
    for s in [&mut anon, &mut exact] {
        let seen: Vec<_> = drain(s).into_iter().map(|e| e.data()).collect();
        assert_eq!(seen, vec!["public"]);
    }
    // A resume by the custom id on node B through an exact subscription
    // (the streams the bus syncs) continues exactly after it.
    let mut again = sub(
        b.addr,
        &format!("match={topic}&last_event_id=r-secret"),
        &bearer(&sub_tok),
    );
    assert_eq!(
        head_value(&again.head, "mercure-last-event-id"),
        vec!["r-secret".to_string()]
    );
    let resumed: Vec<_> = drain(&mut again).into_iter().map(|e| e.data()).collect();
    assert_eq!(resumed, vec!["public"]);
    // And through the URL pattern: the selector stream is node B's own.
    let mut again = sub(
        b.addr,
        &format!("{q}&last_event_id=r-secret"),
        &bearer(&sub_tok),
    );
    assert_eq!(
        head_value(&again.head, "mercure-last-event-id"),
        vec!["r-secret".to_string()]
    );
    let resumed: Vec<_> = drain(&mut again).into_iter().map(|e| e.data()).collect();
    assert_eq!(resumed, vec!["public"]);
}

/// Events until `QUIET` passes: `(id, data)` pairs.
#[cfg(feature = "workers")]
fn pairs(s: &mut Sse) -> Vec<(String, String)> {
    drain(s)
        .into_iter()
        .map(|e| (e.id.clone().unwrap_or_default(), e.data()))
        .collect()
}

#[cfg(feature = "workers")]
fn owned(want: &[(&str, &str)]) -> Vec<(String, String)> {
    want.iter()
        .map(|(i, d)| (i.to_string(), d.to_string()))
        .collect()
}

/// A `--workers 2` supervisor, stopped with SIGTERM (so it stops its
/// workers) on drop.
#[cfg(feature = "workers")]
struct Workers {
    child: std::process::Child,
    addr: SocketAddr,
}

#[cfg(feature = "workers")]
impl Drop for Workers {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open SSE connections per worker pid, sampled over fresh `/stats`
/// connections (the kernel spreads them) until both workers answered.
#[cfg(feature = "workers")]
fn sse_per_worker(a: SocketAddr) -> std::collections::BTreeMap<u64, u64> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..400 {
        let st = stats(a);
        let pid = st["pid"].as_u64().expect("a pid in /stats");
        seen.insert(pid, st["connections"]["sse"].as_u64().unwrap_or(0));
        if seen.len() == 2 {
            break;
        }
    }
    seen
}

/// Draft-08 under `--workers 2` on a real redis-server: a private update
/// with a custom id, published on whichever worker took the POST, reaches
/// every subscriber holding a grant on both workers (exact `match=` and
/// `match_urlpattern=`) under that id, never an anonymous one, and a
/// resume by that id, on either worker, continues exactly after it.
///
/// Exact `match=` subscribers are opened one at a time until each worker
/// holds at least one; then the URL-pattern and anonymous ones are opened,
/// landing anywhere (a worker holds a topic its selector streams match
/// once another worker publishes to it, so the order is not needed for
/// delivery any more; it keeps both workers covered).
#[cfg(feature = "workers")]
#[test]
fn draft08_under_two_workers() {
    use crate::redis::{connected, Redis};
    let Some(r) = Redis::start() else { return };
    let url = r.url();
    let (child, addrs) = Ssed::new()
        .args(["--workers", "2", "--redis", url.as_str()])
        .args(["--jwt-key", KEY, "--jwt-issuer", ISS, "--jwt-audience", AUD])
        .launch();
    let w = Workers {
        child,
        addr: addrs[0],
    };
    let a = w.addr;
    assert!(
        wait_until(T, || (0..8).all(|_| connected(a))),
        "workers' buses never came up"
    );
    let exp = now() + 600;
    let pattern = "https://example.com/racks/:id";
    let q = format!("match_urlpattern={}", enc(pattern));
    let sub_tok = at(
        grant(
            &["subscribe"],
            json!([{"match": pattern, "match_type": "urlpattern"}]),
        ),
        exp,
    );
    let pub_tok = at(grant(&["publish"], json!([{"match": "*"}])), exp);
    let topic = enc("https://example.com/racks/7");
    let exact_q = format!("match={topic}");
    // Exact subscribers with the grant, until both workers hold one.
    let mut authed = Vec::new();
    let mut per = std::collections::BTreeMap::new();
    while authed.len() < 16 {
        authed.push(sub(a, &exact_q, &bearer(&sub_tok)));
        let n = authed.len() as u64;
        assert!(
            wait_until(T, || {
                per = sse_per_worker(a);
                per.len() == 2 && per.values().sum::<u64>() == n
            }),
            "{n} subscribers not all counted: {per:?}"
        );
        if per.values().all(|&c| c >= 1) {
            break;
        }
    }
    assert!(
        per.len() == 2 && per.values().all(|&c| c >= 1),
        "16 connections all on one worker: {per:?}"
    );
    let exact_n = authed.len();
    for _ in 0..4 {
        authed.push(sub(a, &q, &bearer(&sub_tok)));
    }
    let mut anon: Vec<Sse> = (0..3)
        .flat_map(|_| [sub(a, &q, ""), sub(a, &exact_q, "")])
        .collect();
    let total = (authed.len() + anon.len()) as u64;
    assert!(wait_until(T, || sse_per_worker(a).values().sum::<u64>() == total));
    for form in [
        format!("topic={topic}&id=w-first&data=first"),
        format!("topic={topic}&id=w-secret&private=on&data=s1%0As2"),
        format!("topic={topic}&id=w-public&data=public"),
    ] {
        let r = post(a, &bearer(&pub_tok), &form);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let all = owned(&[
        ("w-first", "first"),
        ("w-secret", "s1\ns2"),
        ("w-public", "public"),
    ]);
    for (i, s) in authed.iter_mut().enumerate() {
        let kind = if i < exact_n { "exact" } else { "urlpattern" };
        let got: Vec<_> = (0..3)
            .map(|_| {
                s.next_event(T)
                    .unwrap_or_else(|| panic!("authorised {kind} #{i}: no event"))
            })
            .map(|e| (e.id.clone().unwrap_or_default(), e.data()))
            .collect();
        assert_eq!(got, all, "authorised {kind} #{i}");
    }
    let public = owned(&[("w-first", "first"), ("w-public", "public")]);
    for (i, s) in anon.iter_mut().enumerate() {
        assert_eq!(pairs(s), public, "anonymous #{i}");
        let wire = String::from_utf8_lossy(&s.wire).into_owned();
        assert!(!wire.contains("s1"), "anonymous #{i}: {wire}");
    }
    // Resumes, several connections so both workers answer: exactly what
    // follows the id, the private update only with the grant.
    for i in 0..6 {
        for (query, head, want) in [
            (
                &exact_q,
                bearer(&sub_tok),
                owned(&[("w-secret", "s1\ns2"), ("w-public", "public")]),
            ),
            (&q, bearer(&sub_tok), all[1..].to_vec()),
            (&exact_q, String::new(), owned(&[("w-public", "public")])),
        ] {
            let mut s = sub(a, &format!("{query}&last_event_id=w-first"), &head);
            assert_eq!(
                head_value(&s.head, "mercure-last-event-id"),
                vec!["w-first".to_string()]
            );
            assert_eq!(pairs(&mut s), want, "resume #{i} {query} {head:?}");
        }
        // A private update's id is, to an anonymous subscriber, as if
        // unknown (its existence is not revealed): `earliest`, a `gap`,
        // then the public updates.
        let mut s = sub(a, &format!("{exact_q}&last_event_id=w-secret"), "");
        assert_eq!(
            head_value(&s.head, "mercure-last-event-id"),
            vec!["earliest".to_string()]
        );
        let evs = drain(&mut s);
        assert_eq!(evs[0].event.as_deref(), Some("gap"), "{evs:?}");
        let rest: Vec<_> = evs[1..]
            .iter()
            .map(|e| (e.id.clone().unwrap_or_default(), e.data()))
            .collect();
        assert_eq!(rest, public, "anonymous resume #{i} from the private id");
    }
}

/// Draft-08 across `--data-dir` restarts (SIGTERM, then SIGKILL): a
/// private update with a custom id and multi-line data comes back from
/// the journal under that id with its data intact to a subscriber with a
/// grant, resuming from `earliest` or from an earlier id, never to an
/// anonymous one, and `Mercure-Last-Event-ID` names the cursor, through
/// `match=` and through `match_urlpattern=` alike (a selector stream made
/// after a restart is rebuilt from the topics the journal restored).
#[cfg(feature = "journal")]
#[test]
fn draft08_across_data_dir_restarts() {
    let dir = std::env::temp_dir().join(format!(
        "ssed-mercure08-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let rm = Rm(dir);
    let d = rm.0.to_str().unwrap();
    let exp = now() + 600;
    let pattern = "https://example.com/vault/:id";
    let sub_tok = at(
        grant(
            &["subscribe"],
            json!([{"match": pattern, "match_type": "urlpattern"}]),
        ),
        exp,
    );
    let pub_tok = at(grant(&["publish"], json!([{"match": "*"}])), exp);
    let topic = enc("https://example.com/vault/1");
    let pat_q = format!("match_urlpattern={}", enc(pattern));
    let exact_q = format!("match={topic}");
    // (id, data, private), in publish order.
    let mut sent: Vec<(String, String, bool)> = Vec::new();
    let publish_round = |a: SocketAddr, r: u32, sent: &mut Vec<(String, String, bool)>| {
        for (id, form_data, data, private) in [
            (
                format!("v{r}-open"),
                format!("open-{r}"),
                format!("open-{r}"),
                false,
            ),
            (
                format!("v{r}-secret"),
                format!("top-{r}%0Amiddle%0D%0A%0Abottom"),
                format!("top-{r}\nmiddle\n\nbottom"),
                true,
            ),
            (
                format!("v{r}-close"),
                format!("close-{r}"),
                format!("close-{r}"),
                false,
            ),
        ] {
            let p = if private { "&private=on" } else { "" };
            let r = post(
                a,
                &bearer(&pub_tok),
                &format!("topic={topic}&id={id}&data={form_data}{p}"),
            );
            assert_eq!((r.status, r.text()), (200, id.clone()));
            sent.push((id, data, private));
        }
    };
    let check = |a: SocketAddr, sent: &[(String, String, bool)], round: u32| {
        let expect = |from: usize, authed: bool| -> Vec<(String, String)> {
            sent[from..]
                .iter()
                .filter(|(_, _, p)| authed || !p)
                .map(|(i, d, _)| (i.clone(), d.clone()))
                .collect()
        };
        let cursors = [("earliest".to_string(), 0), (sent[0].0.clone(), 1)];
        for (cursor, from) in cursors {
            for (query, head, authed) in [
                (&exact_q, bearer(&sub_tok), true),
                (&pat_q, bearer(&sub_tok), true),
                (&exact_q, String::new(), false),
                (&pat_q, String::new(), false),
            ] {
                let what = format!("round {round}, {query} from {cursor}, authed {authed}");
                let mut s = sub(a, &format!("{query}&last_event_id={cursor}"), &head);
                let evs = drain(&mut s);
                let named = head_value(&s.head, "mercure-last-event-id");
                assert_eq!(named, vec![cursor.clone()], "{what}");
                let got: Vec<_> = evs
                    .iter()
                    .map(|e| (e.id.clone().unwrap_or_default(), e.data()))
                    .collect();
                assert_eq!(got, expect(from, authed), "{what}");
                // The lines as sent, an empty one kept (chunk framing aside).
                let raw: String = evs.iter().map(|e| e.raw.clone()).collect();
                let lines = format!("data: top-{round}\ndata: middle\ndata:\ndata: bottom\n");
                assert_eq!(raw.contains(&lines), authed, "{what}: {raw}");
            }
        }
    };
    let args = ["--data-dir", d];
    let mut srv = server(&args);
    publish_round(srv.addr, 1, &mut sent);
    // SIGTERM: a graceful shutdown.
    // SAFETY: kill(2) on our unreaped child.
    assert_eq!(
        unsafe { libc::kill(srv.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    assert!(srv.child.wait().unwrap().success());
    let srv = server(&args);
    check(srv.addr, &sent, 1);
    publish_round(srv.addr, 2, &mut sent);
    // SIGKILL: no shutdown at all (Server's drop kills it).
    drop(srv);
    let srv = server(&args);
    check(srv.addr, &sent, 2);
}
