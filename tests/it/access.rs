//! The one access rule over real sockets: every route × every credential
//! kind against a server started with `--jwt-key` (and `--publish-token`,
//! `--private-streams`, `--users`), asserting status and body; and every
//! write route against a server with no key, where only plainly local
//! requests write. The rule itself is unit-tested in src/access.rs.

use std::net::SocketAddr;

use serde_json::{json, Value};
use ssed::internals::auth::{mint_hs256, Key};

use crate::common::*;

const KEY: &str = "ssed-access-test-key-0123456789abcdef";
const TOKEN: &str = "access-publish-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cred {
    /// Nothing but the loopback peer (every test client is on loopback).
    LoopbackPlain,
    /// Relayed by a proxy on this host, not a trusted one.
    Forwarded,
    PublishToken,
    JwtGranted,
    JwtNoGrants,
    JwtExpired,
    CrossOrigin,
}

const CREDS: [Cred; 7] = [
    Cred::LoopbackPlain,
    Cred::Forwarded,
    Cred::PublishToken,
    Cred::JwtGranted,
    Cred::JwtNoGrants,
    Cred::JwtExpired,
    Cred::CrossOrigin,
];

fn mint(claims: Value) -> String {
    mint_hs256(&claims, &Key::new(KEY.as_bytes().to_vec()).unwrap())
}

fn headers(c: Cred) -> String {
    let all = json!({"mercure": {"publish": ["*"], "subscribe": ["*"]}});
    let other = json!({"mercure": {"publish": ["other"], "subscribe": ["other"]}});
    let expired = json!({"exp": 1_000_000_000, "mercure": {"publish": ["*"], "subscribe": ["*"]}});
    match c {
        Cred::LoopbackPlain => String::new(),
        Cred::Forwarded => "X-Forwarded-For: 203.0.113.9\r\n".into(),
        Cred::PublishToken => format!("Authorization: Bearer {TOKEN}\r\n"),
        Cred::JwtGranted => format!("Authorization: Bearer {}\r\n", mint(all)),
        Cred::JwtNoGrants => format!("Authorization: Bearer {}\r\n", mint(other)),
        Cred::JwtExpired => format!("Authorization: Bearer {}\r\n", mint(expired)),
        Cred::CrossOrigin => "Origin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\n".into(),
    }
}

/// One route: method, target, extra headers, body.
#[derive(Clone, Copy)]
struct Route {
    name: &'static str,
    method: &'static str,
    target: &'static str,
    extra: &'static str,
    body: &'static str,
}

const MEMBER_EVENT: &str = r#"{"event":{"type":"PING","body":{}}}"#;

const WRITES: [Route; 5] = [
    Route {
        name: "POST /events",
        method: "POST",
        target: "/events?stream=news",
        extra: "Content-Type: text/plain\r\n",
        body: "hello",
    },
    Route {
        name: "PUT /streams/NAME",
        method: "PUT",
        target: "/streams/made",
        extra: "",
        body: "",
    },
    Route {
        name: "DELETE /streams/NAME",
        method: "DELETE",
        target: "/streams/doomed",
        extra: "",
        body: "",
    },
    Route {
        name: "POST /.well-known/mercure",
        method: "POST",
        target: "/.well-known/mercure",
        extra: "Content-Type: application/x-www-form-urlencoded\r\n",
        body: "topic=news&data=hi",
    },
    Route {
        name: "POST /notification/events",
        method: "POST",
        target: "/notification/events",
        extra: "Member-ID: alice\r\nContent-Type: application/json\r\n",
        body: MEMBER_EVENT,
    },
];

fn send(addr: SocketAddr, r: &Route, c: Cred) -> Response {
    let raw = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\n{}{}Content-Length: {}\r\n\r\n{}",
        r.method,
        r.target,
        r.extra,
        headers(c),
        r.body.len(),
        r.body
    );
    request(addr, raw.as_bytes())
}

fn get(addr: SocketAddr, target: &str, extra: &str, c: Cred) -> Response {
    let raw = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}{}\r\n",
        headers(c)
    );
    request(addr, raw.as_bytes())
}

/// The `WWW-Authenticate` of a 401: the hub's names its RFC 9728
/// metadata and, when a token was presented, the RFC 6750 error.
fn challenge(r: &Route, token: bool) -> Option<String> {
    if !r.target.starts_with("/.well-known/mercure") {
        return Some("Bearer".into());
    }
    let m = "Bearer resource_metadata=\"http://127.0.0.1/.well-known/oauth-protected-resource/.well-known/mercure\"";
    Some(if token {
        format!("{m}, error=\"invalid_token\"")
    } else {
        m.to_string()
    })
}

fn make_doomed(addr: SocketAddr) {
    let raw = format!(
        "PUT /streams/doomed HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
    );
    let r = request(addr, raw.as_bytes());
    assert!(matches!(r.status, 200 | 201), "{r:?}");
}

fn error(r: &Response) -> String {
    r.json()["error"].as_str().unwrap_or_default().to_string()
}

fn users_file() -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("ssed-access-users-{}", std::process::id()));
    std::fs::write(&p, "alice@localhost:pw\n").unwrap();
    p
}

#[test]
fn every_route_and_credential_with_a_jwt_key() {
    let users = users_file();
    let srv = Server::start(&[
        "--jwt-key",
        KEY,
        "--publish-token",
        TOKEN,
        "--private-streams",
        "secret",
        "--users",
        users.to_str().unwrap(),
    ]);
    let a = srv.addr;
    let mut refused = 0;
    for route in &WRITES {
        for c in CREDS {
            make_doomed(a);
            let r = send(a, route, c);
            let why = format!("{} with {c:?}: {r:?}", route.name);
            match c {
                Cred::PublishToken | Cred::JwtGranted => {
                    assert!(matches!(r.status, 200 | 201), "{why}");
                    let v = r.json();
                    match route.method {
                        "PUT" => assert_eq!(v["name"], "made", "{why}"),
                        "DELETE" => assert_eq!(v["deleted"], "doomed", "{why}"),
                        _ if route.target.starts_with("/.well-known") => {
                            assert!(!r.body.is_empty(), "{why}")
                        }
                        _ => assert!(v["id"].is_string(), "{why}"),
                    }
                }
                Cred::JwtNoGrants => {
                    refused += 1;
                    assert_eq!(r.status, 403, "{why}");
                    assert!(
                        error(&r).contains("mercure.publish selectors do not match"),
                        "{why}"
                    );
                }
                Cred::JwtExpired => {
                    refused += 1;
                    assert_eq!(r.status, 401, "{why}");
                    assert!(error(&r).contains("publisher token refused"), "{why}");
                    assert_eq!(
                        r.header("www-authenticate"),
                        challenge(route, true),
                        "{why}"
                    );
                }
                // No token: loopback, forwarded or cross-origin alike.
                Cred::LoopbackPlain | Cred::Forwarded | Cred::CrossOrigin => {
                    refused += 1;
                    assert_eq!(r.status, 401, "{why}");
                    assert!(
                        error(&r).starts_with("publishing needs 'Authorization: Bearer <JWT>'"),
                        "{why}"
                    );
                    assert_eq!(
                        r.header("www-authenticate"),
                        challenge(route, false),
                        "{why}"
                    );
                }
            }
        }
    }
    // Subscribing: a presented token must be valid (the publish token is
    // no JWT); a private stream needs matching subscribe selectors.
    let streams = [
        ("/events?stream=news", ""),
        ("/.well-known/mercure?topic=news", ""),
        ("/events?stream=secret", ""),
    ];
    for (target, extra) in streams {
        let private = target.ends_with("secret");
        for c in CREDS {
            let r = get(a, target, extra, c);
            let why = format!("GET {target} with {c:?}: {r:?}");
            let want = match c {
                Cred::JwtGranted => 200,
                Cred::JwtExpired | Cred::PublishToken => 401,
                Cred::JwtNoGrants if private => 403,
                _ if private => 401,
                _ => 200,
            };
            assert_eq!(r.status, want, "{why}");
            if want == 200 {
                assert!(r.head.contains("text/event-stream"), "{why}");
            } else {
                refused += 1;
                let e = error(&r);
                let expect = match (c, want) {
                    (Cred::JwtNoGrants, _) => "mercure.subscribe selectors do not match",
                    (Cred::JwtExpired | Cred::PublishToken, _) => "subscriber token refused",
                    _ => "is private: subscribing needs a JWT",
                };
                assert!(e.contains(expect), "{why}");
            }
        }
    }
    // Public reads and the apps' streams: the same for every credential.
    let public = [
        ("/streams", ""),
        ("/streams/news", ""),
        ("/stats", ""),
        ("/metrics", ""),
        ("/healthz", ""),
        ("/notification/events", "Member-ID: bob\r\n"),
        ("/streaming/sse", ""),
        ("/anything", "Accept: text/event-stream\r\n"),
    ];
    for (target, extra) in public {
        for c in CREDS {
            let r = get(a, target, extra, c);
            assert_eq!(r.status, 200, "GET {target} with {c:?}: {r:?}");
        }
    }
    // `/api` takes HTTP Basic against --users only: no JWT or publish
    // token opens it.
    for c in CREDS {
        let r = get(a, "/api/rooms", "", c);
        assert_eq!(r.status, 401, "/api with {c:?}: {r:?}");
        let reason: String = serde_json::from_slice(&r.body).unwrap();
        assert!(
            reason == "Invalid credentials" || reason.starts_with("Authentication required"),
            "{reason}"
        );
        refused += 1;
    }
    // alice@localhost:pw
    let r = get(
        a,
        "/api/rooms",
        "Authorization: Basic YWxpY2VAbG9jYWxob3N0OnB3\r\n",
        Cred::LoopbackPlain,
    );
    assert_eq!((r.status, r.text().trim()), (200, "[]"));
    // Every refusal was counted, by reason.
    let s = stats(a);
    let counted: u64 = ["unauthorized", "forbidden", "forbidden_not_local"]
        .iter()
        .map(|k| s["rejected"][k].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(counted, refused, "{s}");
    let _ = std::fs::remove_file(users);
}

#[test]
fn every_write_route_without_a_key_takes_only_plainly_local_requests() {
    let srv = Server::start(&[]);
    let a = srv.addr;
    for route in &WRITES {
        for c in [
            Cred::LoopbackPlain,
            Cred::Forwarded,
            Cred::CrossOrigin,
            Cred::PublishToken,
        ] {
            let raw =
                b"PUT /streams/doomed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n";
            assert!(matches!(request(a, raw).status, 200 | 201));
            let r = send(a, route, c);
            let why = format!("{} with {c:?}: {r:?}", route.name);
            match c {
                // No --publish-token set: a bearer means nothing, and the
                // request is plainly local.
                Cred::LoopbackPlain | Cred::PublishToken => {
                    assert!(matches!(r.status, 200 | 201), "{why}")
                }
                Cred::Forwarded => {
                    assert_eq!(r.status, 403, "{why}");
                    assert!(error(&r).contains("came through a proxy"), "{why}");
                }
                _ => {
                    assert_eq!(r.status, 403, "{why}");
                    assert!(error(&r).contains("another origin"), "{why}");
                }
            }
        }
    }
    let s = stats(a);
    assert_eq!(s["rejected"]["forbidden_not_local"], 10, "{s}");
}

#[test]
fn every_write_route_behind_a_trusted_proxy_judges_the_forwarded_client() {
    let srv = Server::start(&["--trusted-proxy", "127.0.0.1"]);
    let a = srv.addr;
    for route in &WRITES {
        let raw = b"PUT /streams/doomed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(request(a, raw).status, 200 | 201));
        // The proxy relays a remote client: not local.
        let r = send(a, route, Cred::Forwarded);
        assert_eq!(r.status, 403, "{}: {r:?}", route.name);
        assert!(
            error(&r).contains("allowed from loopback only"),
            "{}: {r:?}",
            route.name
        );
        // The proxy relays a client on this host: local.
        let local = Route {
            extra: match route.name {
                "POST /notification/events" => {
                    "Member-ID: alice\r\nContent-Type: application/json\r\nX-Forwarded-For: 127.0.0.1\r\n"
                }
                "POST /events" => "Content-Type: text/plain\r\nX-Forwarded-For: 127.0.0.1\r\n",
                "POST /.well-known/mercure" => {
                    "Content-Type: application/x-www-form-urlencoded\r\nX-Forwarded-For: 127.0.0.1\r\n"
                }
                _ => "X-Forwarded-For: 127.0.0.1\r\n",
            },
            ..*route
        };
        let r = send(a, &local, Cred::LoopbackPlain);
        assert!(matches!(r.status, 200 | 201), "{}: {r:?}", route.name);
    }
    let s = stats(a);
    assert_eq!(s["rejected"]["forbidden"], 5, "{s}");
}
