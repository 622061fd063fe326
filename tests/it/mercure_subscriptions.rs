//! Mercure active subscriptions (`--mercure-subscriptions`): subscription
//! events as private `mercure` updates on
//! `/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}`,
//! the subscriptions API, its authorization, the flag off, and presence
//! across two nodes over a real redis-server.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use ssed::internals::auth::{mint_hs256_typ, Key};

use crate::common::*;
use crate::mercure::{drain, enc, KEY};

const HUB: &str = "/.well-known/mercure";
const SUBS: &str = "/.well-known/mercure/subscriptions";
const ISS: &str = "https://issuer.example";
const AUD: &str = "https://hub.example";
const DETAIL: &str = "https://mercure.rocks/authorization-detail";
/// What a watcher subscribes to: every subscription event.
const WATCH: &str = "/.well-known/mercure/subscriptions/:type/:match/:subscriber";
const T: Duration = Duration::from_secs(5);

fn at(details: Value) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = json!({"iss": ISS, "aud": [AUD], "exp": exp, "authorization_details": details});
    mint_hs256_typ(
        &claims,
        &Key::new(KEY.as_bytes().to_vec()).unwrap(),
        "at+jwt",
    )
}

/// A watcher's token: subscribe on every subscription event and on the
/// API's collection.
fn watcher_token() -> String {
    at(
        json!([{"type": DETAIL, "actions": ["subscribe"], "topics": [
            {"match": WATCH, "match_type": "urlpattern"},
            {"match": SUBS},
        ]}]),
    )
}

/// A subscriber's token, with a payload for its subscription.
fn member_token() -> String {
    at(json!([{"type": DETAIL, "actions": ["subscribe"],
        "topics": [{"match": "https://example.com/books/1"}],
        "payload": {"name": "ada"}}]))
}

const ARGS: [&str; 6] = ["--jwt-key", KEY, "--jwt-issuer", ISS, "--jwt-audience", AUD];

fn server(on: bool) -> Server {
    let mut args = ARGS.to_vec();
    if on {
        args.push("--mercure-subscriptions");
    }
    Server::start(&args)
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}\r\n")
}

fn sub(a: SocketAddr, query: &str, headers: &str) -> Sse {
    let s = Sse::open(a, &format!("{HUB}?{query}"), headers);
    assert_eq!(s.status(), 200, "{}", s.head);
    s
}

fn watch(a: SocketAddr) -> Sse {
    sub(
        a,
        &format!("match_urlpattern={}", enc(WATCH)),
        &bearer(&watcher_token()),
    )
}

fn api(a: SocketAddr, path: &str, auth: &str) -> Response {
    request(
        a,
        format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}\r\n").as_bytes(),
    )
}

/// The next subscription event: its SSE fields checked, its document.
fn next_update(s: &mut Sse) -> Value {
    next_update_id(s).1
}

/// [`next_update`] with the event's id.
fn next_update_id(s: &mut Sse) -> (String, Value) {
    let e = s.next_event(T).expect("a subscription event");
    assert_eq!(e.event.as_deref(), Some("mercure"), "{}", e.raw);
    let id = e.id.clone().expect("an id");
    (id, serde_json::from_str(&e.data()).unwrap())
}

/// The subscriber id a document names, checked to be a `urn:uuid:` v4.
fn subscriber_of(d: &Value) -> String {
    let s = d["subscriber"].as_str().unwrap().to_string();
    let u = s.strip_prefix("urn:uuid:").expect("urn:uuid: form");
    assert_eq!(u.len(), 36, "{s}");
    assert_eq!(&u[14..15], "4", "{s}");
    s
}

fn topic(match_type: &str, matcher: &str, subscriber: &str) -> String {
    format!("{SUBS}/{match_type}/{}/{}", enc(matcher), enc(subscriber))
}

fn listed(a: SocketAddr) -> Vec<Value> {
    let r = api(a, SUBS, &bearer(&watcher_token()));
    assert_eq!(r.status, 200, "{}{}", r.head, r.text());
    r.json()["subscriptions"].as_array().unwrap().clone()
}

#[test]
fn subscription_events_and_the_api() {
    let s = server(true);
    let mut w = watch(s.addr);
    // The watcher's own subscription is announced too.
    let own = next_update(&mut w);
    let watcher = subscriber_of(&own);
    assert_eq!(own["match_type"], "urlpattern");
    assert_eq!(own["match"], WATCH);

    let book = "https://example.com/books/1";
    let m = sub(
        s.addr,
        &format!("match={}", enc(book)),
        &bearer(&member_token()),
    );
    let (joined_id, joined) = next_update_id(&mut w);
    let who = subscriber_of(&joined);
    assert_ne!(who, watcher);
    let id = topic("exact", book, &who);
    let doc = |active: bool| {
        json!({"@context": "https://mercure.rocks/", "id": id, "type": "Subscription",
               "match_type": "exact", "match": book, "subscriber": who, "active": active,
               "payload": {"name": "ada"}})
    };
    assert_eq!(joined, doc(true));

    // The API: the collection, by matcher, the one subscription.
    let r = api(s.addr, SUBS, &bearer(&watcher_token()));
    assert_eq!(r.status, 200, "{}{}", r.head, r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/ld+json")
    );
    let body = r.json();
    let last = body["last_event_id"].as_str().unwrap().to_string();
    // The member's update was the hub's newest event.
    assert_eq!(last, joined_id);
    assert_eq!(
        r.header("link"),
        Some(format!(
            "<http://t/.well-known/mercure>; rel=\"mercure\"; last-event-id=\"{last}\""
        ))
    );
    assert_eq!(r.header("etag"), Some(format!("\"{last}\"")));
    let mut want_own = own.clone();
    want_own.as_object_mut().unwrap().remove("@context");
    let mut want_member = doc(true);
    want_member.as_object_mut().unwrap().remove("@context");
    let mut subs = body["subscriptions"].as_array().unwrap().clone();
    subs.sort_by_key(|d| d["match_type"].as_str().unwrap().to_string());
    assert_eq!(subs, vec![want_member.clone(), want_own]);
    assert_eq!(body["type"], "Subscriptions");
    assert_eq!(body["id"], SUBS);
    // A token whose grant covers the single subscription's path.
    let one_token = at(json!([{"type": DETAIL, "actions": ["subscribe"],
        "topics": [{"match": WATCH, "match_type": "urlpattern"}]}]));
    let r = api(s.addr, &id, &bearer(&one_token));
    assert_eq!(r.status, 200, "{}{}", r.head, r.text());
    let mut one = doc(true);
    one["last_event_id"] = json!(last);
    assert_eq!(r.json(), one);
    let by_match = format!("{SUBS}/exact/{}", enc(book));
    let mut tok = at(json!([{"type": DETAIL, "actions": ["subscribe"],
        "topics": [{"match": by_match}]}]));
    let r = api(s.addr, &by_match, &bearer(&tok));
    assert_eq!(r.status, 200, "{}{}", r.head, r.text());
    assert_eq!(r.json()["subscriptions"], json!([want_member]));
    // That token covers nothing else.
    let r = api(s.addr, SUBS, &bearer(&tok));
    assert_eq!(r.status, 403, "{}{}", r.head, r.text());
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"insufficient_scope\""));
    tok.clear();

    // A legacy `topic=` template subscription is announced as well.
    let tpl = "https://example.com/books/{id}";
    let legacy = sub(s.addr, &format!("topic={}", enc(tpl)), "");
    let d = next_update(&mut w);
    assert_eq!(
        (
            d["match_type"].clone(),
            d["match"].clone(),
            d["active"].clone()
        ),
        (json!("uritemplate"), json!(tpl), json!(true))
    );
    assert!(d.get("payload").is_none());
    drop(legacy);
    let d = next_update(&mut w);
    assert_eq!(
        (d["match"].clone(), d["active"].clone()),
        (json!(tpl), json!(false))
    );

    // The member leaves: `active: false`, and the API forgets it.
    drop(m);
    assert_eq!(next_update(&mut w), doc(false));
    let left: Vec<String> = listed(s.addr)
        .iter()
        .map(|d| d["subscriber"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec![watcher.clone()]);
    let r = api(s.addr, &id, &bearer(&one_token));
    assert_eq!(r.status, 404, "{}{}", r.head, r.text());
    // No topic stream stays behind (updates reach watchers through their
    // selector streams), and `books/1` went with its reader.
    assert_eq!(stats(s.addr)["streams"], json!(0));
    // A watcher resumes them like any private updates of its selector.
    let mut again = sub(
        s.addr,
        &format!("match_urlpattern={}&last_event_id={joined_id}", enc(WATCH)),
        &bearer(&watcher_token()),
    );
    let replay: Vec<(Value, Value)> = drain(&mut again)
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.data()).unwrap())
        .map(|d| (d["match"].clone(), d["active"].clone()))
        .collect();
    assert_eq!(
        replay,
        vec![
            (json!(tpl), json!(true)),
            (json!(tpl), json!(false)),
            (json!(book), json!(false)),
            (json!(WATCH), json!(true)),
        ]
    );
    // The metadata says the feature is on.
    let r = get(
        s.addr,
        "/.well-known/oauth-protected-resource/.well-known/mercure",
    );
    assert_eq!(r.json()["mercure_subscriptions"], json!(true));
}

#[test]
fn the_api_needs_a_grant_and_events_stay_private() {
    let s = server(true);
    let r = api(s.addr, SUBS, "");
    assert_eq!(r.status, 401, "{}{}", r.head, r.text());
    assert_eq!(
        r.header("www-authenticate"),
        Some(
            "Bearer resource_metadata=\"http://t/.well-known/oauth-protected-resource/.well-known/mercure\""
                .to_string()
        )
    );
    let other = at(json!([{"type": DETAIL, "actions": ["subscribe"],
        "topics": [{"match": "https://example.com/books/1"}]}]));
    let r = api(s.addr, SUBS, &bearer(&other));
    assert_eq!(r.status, 403, "{}{}", r.head, r.text());
    let r = api(
        s.addr,
        &format!("{SUBS}/nope/x/y"),
        &bearer(&watcher_token()),
    );
    assert_eq!(r.status, 400, "{}{}", r.head, r.text());
    let r = request(
        s.addr,
        format!("POST {SUBS} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 405, "{}{}", r.head, r.text());
    // An anonymous watcher of the same pattern sees no subscription event
    // (they are private), while an authorised one does.
    let mut anon = sub(s.addr, &format!("match_urlpattern={}", enc(WATCH)), "");
    let mut w = watch(s.addr);
    assert_eq!(next_update(&mut w)["match"], WATCH);
    let _m = sub(s.addr, "match=x", "");
    let d = next_update(&mut w);
    assert_eq!(d["match"], "x");
    assert!(drain(&mut anon).is_empty());
    // Publishers may not forge them.
    let pub_tok = at(json!([{"type": DETAIL, "actions": ["publish"], "topics": [{"match": "*"}]}]));
    let form = format!("topic={}&data=x", enc(&topic("exact", "x", "urn:uuid:1")));
    let r = request(
        s.addr,
        format!(
            "POST {HUB} HTTP/1.1\r\nHost: t\r\n{}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            bearer(&pub_tok),
            form.len()
        )
        .as_bytes(),
    );
    assert!(matches!(r.status, 400 | 403), "{}{}", r.head, r.text());
    assert!(drain(&mut w).is_empty());
}

#[test]
fn off_by_default() {
    let s = server(false);
    let mut w = watch(s.addr);
    let _m = sub(s.addr, "match=x", &bearer(&member_token()));
    assert!(drain(&mut w).is_empty());
    let r = api(s.addr, SUBS, &bearer(&watcher_token()));
    assert_eq!(r.status, 404, "{}{}", r.head, r.text());
    let r = get(
        s.addr,
        "/.well-known/oauth-protected-resource/.well-known/mercure",
    );
    assert!(r.json().get("mercure_subscriptions").is_none());
}

/// Subscribe on node B: watchers on both nodes get the updates, and node
/// A's API lists it (A learns it from the bus announcement, whatever
/// streams it holds), then forgets it.
#[cfg(feature = "redis")]
#[test]
fn presence_covers_every_node() {
    use crate::redis::{node, Redis};
    let Some(r) = Redis::start() else { return };
    let mut args = ARGS.to_vec();
    args.push("--mercure-subscriptions");
    let (a, b) = (node(&r, &args), node(&r, &args));
    // Each watcher hears its own join; A's also hears B's (through the bus).
    let mut wa = watch(a.addr);
    let own_a = subscriber_of(&next_update(&mut wa));
    let mut wb = watch(b.addr);
    let own_b = subscriber_of(&next_update(&mut wb));
    assert_ne!(own_a, own_b);
    assert_eq!(subscriber_of(&next_update(&mut wa)), own_b);
    let book = "https://example.com/books/1";
    let m = sub(
        b.addr,
        &format!("match={}", enc(book)),
        &bearer(&member_token()),
    );
    let on_a = |addr| {
        listed(addr)
            .into_iter()
            .filter(|d| d["match"] == book)
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(T, || on_a(a.addr).len() == 1),
        "A never listed it"
    );
    let d = on_a(a.addr).remove(0);
    let who = subscriber_of(&d);
    assert_eq!(
        d,
        json!({"id": topic("exact", book, &who), "type": "Subscription",
               "match_type": "exact", "match": book, "subscriber": who, "active": true,
               "payload": {"name": "ada"}})
    );
    // B lists it too, from the same announcement.
    assert_eq!(on_a(b.addr), vec![d.clone()]);
    let mut event = d.clone();
    event["@context"] = json!("https://mercure.rocks/");
    assert_eq!(next_update(&mut wa), event);
    assert_eq!(next_update(&mut wb), event);
    drop(m);
    event["active"] = json!(false);
    assert_eq!(next_update(&mut wa), event);
    assert_eq!(next_update(&mut wb), event);
    assert!(wait_until(T, || on_a(a.addr).is_empty() && on_a(b.addr).is_empty()));
    // The node it was on keeps no stream per subscription either.
    assert_eq!(stats(b.addr)["streams"], json!(0));
    // Nor does Redis: subscription updates are announced, not kept, so
    // no key or `last` field per subscription piles up there.
    let keys = r.cli(&["--scan", "--pattern", "ssed:s:*"]);
    assert_eq!(keys, "", "stream keys left in Redis");
    let lasts = r.cli(&["HKEYS", "ssed:last"]);
    assert_eq!(lasts, "", "last ids left in Redis");
    assert!(r.cli(&["GET", "ssed:id"]).parse::<u64>().unwrap() > 0);
}

/// With `--data-dir` the updates go into the journal like any publish; a
/// restart lists nothing stale (the table is not rebuilt from it) and
/// brings back no stream per subscription.
#[cfg(feature = "journal")]
#[test]
fn a_restart_lists_nothing_stale() {
    let dir = std::env::temp_dir().join(format!(
        "ssed-presence-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let rm = Rm(dir);
    let mut args = ARGS.to_vec();
    args.extend([
        "--mercure-subscriptions",
        "--data-dir",
        rm.0.to_str().unwrap(),
    ]);
    let first_watcher;
    {
        let s = Server::start(&args);
        let mut w = watch(s.addr);
        first_watcher = subscriber_of(&next_update(&mut w));
        let m = sub(s.addr, "match=x", "");
        let who = subscriber_of(&next_update(&mut w));
        drop(m);
        let d = next_update(&mut w);
        assert_eq!(
            (d["subscriber"].as_str(), d["active"].as_bool()),
            (Some(who.as_str()), Some(false))
        );
    }
    let s = Server::start(&args);
    let mut w = watch(s.addr);
    let d = next_update(&mut w);
    assert_ne!(subscriber_of(&d), first_watcher);
    let now: Vec<Value> = listed(s.addr);
    assert_eq!(now.len(), 1, "{now:?}");
    assert_eq!(now[0]["subscriber"], d["subscriber"]);
    assert_eq!(stats(s.addr)["streams"], json!(0));
}

/// A subscription that ends because its token expired is announced as
/// ended like one whose client left.
#[test]
fn a_token_expiry_ends_the_subscription() {
    let s = server(true);
    let mut w = watch(s.addr);
    next_update(&mut w);
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let claims = json!({"iss": ISS, "aud": [AUD], "exp": exp, "authorization_details": []});
    let short = mint_hs256_typ(
        &claims,
        &Key::new(KEY.as_bytes().to_vec()).unwrap(),
        "at+jwt",
    );
    let mut m = sub(s.addr, "match=x", &bearer(&short));
    let joined = next_update(&mut w);
    assert_eq!(joined["active"], json!(true));
    assert!(m.ended_within(T), "the stream ends at exp");
    let mut left = next_update(&mut w);
    assert_eq!(left["active"], json!(false));
    left["active"] = json!(true);
    assert_eq!(left, joined);
}

/// What the feature holds is in the memory account (`presence` kind):
/// nothing when off, growing with subscribers when on, back to nothing
/// once they leave.
#[test]
fn the_table_is_in_the_memory_account() {
    let used = |a: SocketAddr| {
        stats(a)["memory"]["kinds"]["presence"]["used"]
            .as_u64()
            .expect("presence kind in /stats")
    };
    let off = server(false);
    let _m = sub(off.addr, "match=x", &bearer(&member_token()));
    assert_eq!(used(off.addr), 0);
    let s = server(true);
    let mut w = watch(s.addr);
    next_update(&mut w); // the watcher's own join
    let before = used(s.addr);
    let mut subs = Vec::new();
    for i in 0..10 {
        subs.push(sub(
            s.addr,
            &format!("match=https%3A%2F%2Fexample.com%2Fbooks%2F{i}"),
            &bearer(&member_token()),
        ));
        next_update(&mut w);
    }
    let during = used(s.addr);
    assert!(during > before + 10 * 100, "{before} -> {during}");
    let metrics = get(s.addr, "/metrics").text();
    assert!(
        metrics.contains("kind=\"presence\""),
        "presence kind missing from /metrics"
    );
    drop(subs);
    for _ in 0..10 {
        assert_eq!(next_update(&mut w)["active"], json!(false));
    }
    assert!(wait_until(T, || used(s.addr) == before), "{}", used(s.addr));
}
