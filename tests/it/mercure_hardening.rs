//! Where the Mercure hub meets the other features, against the real
//! binary: template selectors cost bounded work and come from per-address
//! pools, selector streams hold a place in history rather than a copy, an
//! anonymous reader learns nothing of private events (ids, names, counts,
//! timing), and a subscription ends when its token expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::common::*;
use crate::mercure::{enc, hub_post, hub_sub, mint, pub_token, sub_token, HUB, KEY, QUIET};

fn rejected(a: std::net::SocketAddr, why: &str) -> u64 {
    stats(a)["rejected"][why].as_u64().unwrap_or(0)
}

/// Publishes a hub form with an all-topics publisher token.
fn hub_pub(a: std::net::SocketAddr, form: &str) -> String {
    let r = hub_post(a, &pub_token(&["*"]), form);
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

#[test]
fn template_selectors_do_bounded_work_from_bounded_pools() {
    let srv = Server::start(&["--jwt-key", KEY]);
    let a = srv.addr;
    let mut bystander = hub_sub(a, "topic=/b", "");
    // The shape: templates that make a backtracking matcher try
    // every split of a long topic, 16 per anonymous subscription.
    let template = |i: usize| {
        format!(
            "https://ex.com/users/mallory/{i}/{{v1}}{}x",
            "{a}".repeat(15)
        )
    };
    let mut held = Vec::new();
    for c in 0..2 {
        let q: Vec<String> = (0..16)
            .map(|i| format!("topic={}", enc(&template(c * 16 + i))))
            .collect();
        held.push(hub_sub(a, &q.join("&"), ""));
    }
    // This address used its share of anonymous selector streams.
    let r = get(a, &format!("{HUB}?topic={}", enc(&template(99))));
    assert_eq!(r.status, 503, "{}", r.text());
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        msg.contains("from your address") && msg.contains("at most 32"),
        "{msg}"
    );
    assert!(!msg.contains("--max-streams"), "{msg}");
    // A token holder, and `*`, still get theirs.
    let t = sub_token(&["*"]);
    let _authed = hub_sub(
        a,
        &format!("topic={}&authorization={t}", enc(&template(99))),
        "",
    );
    let _any = hub_sub(a, "topic=*", "");
    // Templates are bounded: 16 variables, 1,024 bytes; a clear 400 past them.
    let r = get(a, &format!("{HUB}?topic={}", enc(&"{v}".repeat(17))));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("at most 16 variables"), "{}", r.text());
    let long = format!("/{}{{v}}", "a".repeat(1100));
    let r = get(a, &format!("{HUB}?topic={}", enc(&long)));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("URI template at most 1024"),
        "{}",
        r.text()
    );
    // A 1,024-byte topic every template nearly matches: published, and the
    // bystander's event after it arrives.
    let topic = format!("https://ex.com/users/mallory/0/{}", "a".repeat(993));
    assert_eq!(topic.len(), 1024);
    for _ in 0..5 {
        hub_pub(a, &format!("topic={}&data=x", enc(&topic)));
    }
    let id = hub_pub(a, "topic=/b&data=still-here");
    let e = bystander.next_event(T).expect("bystander event");
    assert_eq!(
        (e.id.as_deref(), e.data().as_str()),
        (Some(id.as_str()), "still-here")
    );
    assert_eq!(rejected(a, "too_many_selectors"), 1);
    assert_eq!(rejected(a, "bad_request"), 2);
    assert_eq!(stats(a)["internal_streams"], 32 + 2);
}

#[test]
fn selector_streams_cost_their_place_once() {
    // With 1,024 selector streams each counted as a copy, 20 x 4 KiB
    // publishes were 80 MiB of "history" and evicted the victim's, and a
    // 300 KiB publish was refused as 307 MB.
    let srv = Server::start(&["--jwt-key", KEY, "--history-total-bytes", "16777216"]);
    let a = srv.addr;
    let body = "v".repeat(500);
    for _ in 0..1000 {
        hub_pub(a, &format!("topic=victim&data={body}"));
    }
    let mut bystander = Sse::open(a, "/events?stream=victim", "");
    assert_eq!(bystander.status(), 200);
    let t = sub_token(&["*"]);
    let mut subs = Vec::new();
    for c in 0..64 {
        let q: Vec<String> = (0..16)
            .map(|i| {
                format!(
                    "topic={}",
                    enc(&format!("https://ex.com/t/{{v{}}}", c * 16 + i))
                )
            })
            .collect();
        subs.push(hub_sub(
            a,
            &format!("{}&authorization={t}", q.join("&")),
            "",
        ));
    }
    assert_eq!(stats(a)["internal_streams"], 1024);
    let data = "d".repeat(4096);
    for _ in 0..20 {
        hub_pub(
            a,
            &format!("topic={}&data={data}", enc("https://ex.com/t/x")),
        );
    }
    let big = "b".repeat(300 << 10);
    let r = hub_post(
        a,
        &pub_token(&["*"]),
        &format!("topic={}&data={big}", enc("https://ex.com/t/x")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let s = get(a, "/streams/victim").json();
    assert_eq!(s["history"], 1000, "{s}");
    let st = stats(a);
    assert_eq!(st["history"]["evicted_events"], 0, "{st}");
    assert_eq!(st["history"]["refused_too_large"], 0, "{st}");
    assert!(st["history"]["bytes"].as_u64().unwrap() < 4 << 20, "{st}");
    // Every slot is taken and read: a new template gets 503 naming the
    // real limit; `*` still gets in.
    let r = get(a, &format!("{HUB}?topic={}", enc("https://ex.com/{x}/y")));
    assert_eq!(r.status, 503, "{}", r.text());
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(msg.contains("at most 1024, a fixed limit"), "{msg}");
    assert!(!msg.contains("--max-streams"), "{msg}");
    let mut any = hub_sub(a, "topic=*", "");
    assert_eq!(rejected(a, "too_many_selectors"), 1);
    // Every selector subscriber got every event once.
    for s in subs.iter_mut().take(2) {
        let got: Vec<Ev> = (0..21).filter_map(|_| s.next_event(T)).collect();
        assert_eq!(got.len(), 21);
        assert_eq!(got[20].data().len(), 300 << 10);
    }
    let id = hub_pub(a, "topic=victim&data=after");
    for s in [&mut bystander, &mut any] {
        let e = s.next_event(T).expect("bystander");
        assert_eq!(
            (e.id.clone(), e.data()),
            (Some(id.clone()), "after".to_string())
        );
    }
}

#[test]
fn anonymous_readers_learn_nothing_of_private_events() {
    let srv = Server::start(&["--jwt-key", KEY, "--heartbeat", "0.5"]);
    let a = srv.addr;
    let t = sub_token(&["*"]);
    let mut authed = hub_sub(a, &format!("topic=*&authorization={t}"), "");
    let public = hub_pub(a, "topic=news&data=hello");
    // A watcher of one user's topics through a narrow template.
    let mut watcher = hub_sub(a, &format!("topic={}", enc("private-{x}")), "");
    assert_eq!(
        header(&watcher.head, "last-event-id").as_deref(),
        Some("earliest")
    );
    let secret = hub_pub(a, "topic=private-news&data=s0&private=on&id=urn:p1");
    assert_eq!(secret, "urn:p1");
    let e = authed.next_event(T).unwrap();
    assert_eq!(e.data(), "hello");
    let e = authed.next_event(T).unwrap();
    assert_eq!((e.id.as_deref(), e.data().as_str()), (Some("urn:p1"), "s0"));

    // Last-Event-ID: the newest event the reader could have been sent.
    let s = hub_sub(a, "topic=news&topic=private-news", "");
    assert_eq!(header(&s.head, "last-event-id"), Some(public.clone()));
    drop(s);
    let s = hub_sub(a, &format!("topic=private-news&authorization={t}"), "");
    let newest = header(&s.head, "last-event-id").unwrap();
    assert!(newest.parse::<u64>().unwrap() > public.parse::<u64>().unwrap());
    drop(s);

    // Listings and /stats: a topic that only carried private updates is
    // not there; a public one shows public counts only.
    let list = get(a, "/streams");
    assert_eq!(list.status, 200);
    assert!(!list.text().contains("private-news"), "{}", list.text());
    let one = get(a, "/streams/private-news");
    assert_eq!(one.status, 404, "{}", one.text());
    assert_eq!(one.json()["error"], "no stream named \"private-news\"");
    hub_pub(a, "topic=news&data=p&private=on");
    let news = get(a, "/streams/news").json();
    assert_eq!(news["published"], 1, "{news}");
    assert_eq!(news["history"], 1, "{news}");
    assert_eq!(news["last_id"], json!(public), "{news}");
    assert_eq!(stats(a)["streams"], 1);

    // Resuming from a private event's custom id is as unknown as any.
    let first = |h: &str| {
        let mut s = hub_sub(a, "topic=news", h);
        let e = s.next_event(T).unwrap();
        (
            e.event.clone(),
            e.data().replace("urn:p1", "ID").replace("urn:nope", "ID"),
        )
    };
    let known = first("Last-Event-ID: urn:p1\r\n");
    let unknown = first("Last-Event-ID: urn:nope\r\n");
    assert_eq!(known.0.as_deref(), Some("gap"));
    assert_eq!(known, unknown);
    let mut s = hub_sub(
        a,
        &format!("topic=news&authorization={t}"),
        "Last-Event-ID: urn:p1\r\n",
    );
    let e = s.next_event(T).unwrap();
    assert_eq!(
        (e.event.clone(), e.data()),
        (None, "p".to_string()),
        "an authorised resume places it"
    );

    // Timing: heartbeats keep their pace while private events flow.
    let hb0 = stats(a)["heartbeats"].as_u64().unwrap();
    while watcher.next_block(Duration::from_millis(10)).is_some() {}
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    let mut n = 0;
    while std::time::Instant::now() < until {
        hub_pub(a, &format!("topic=private-news&data=s{n}&private=on"));
        n += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut beats = 0;
    while let Some(b) = watcher.next_block(QUIET) {
        assert!(b.comment && b.data.is_empty(), "the watcher saw {b:?}");
        beats += 1;
    }
    assert!(beats >= 3, "{beats} heartbeats in 2.5 s at 0.5 s");
    assert!(stats(a)["heartbeats"].as_u64().unwrap() > hb0);
    // The authorised subscriber got every private update meanwhile.
    let got: Vec<Ev> = std::iter::from_fn(|| authed.next_event(QUIET)).collect();
    assert_eq!(got.iter().filter(|e| e.data().starts_with('s')).count(), n);
}

#[test]
fn subscriptions_end_when_the_token_expires() {
    let srv = Server::start(&["--jwt-key", KEY, "--heartbeat", "0"]);
    let a = srv.addr;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let short = mint(
        json!({"exp": now + 2, "mercure": {"subscribe": ["*"]}}),
        KEY,
    );
    let long = sub_token(&["*"]);
    let mut expiring = hub_sub(a, &format!("topic=private-news&authorization={short}"), "");
    let mut events = Sse::open(
        a,
        "/events?stream=private-news",
        &format!("Authorization: Bearer {short}\r\n"),
    );
    assert_eq!(events.status(), 200);
    let mut bystander = hub_sub(a, &format!("topic=private-news&authorization={long}"), "");
    let id = hub_pub(a, "topic=private-news&data=before&private=on");
    for s in [&mut expiring, &mut events, &mut bystander] {
        let e = s.next_event(T).unwrap();
        assert_eq!(
            (e.id.as_deref(), e.data().as_str()),
            (Some(id.as_str()), "before")
        );
    }
    // Both streams end at exp (the heartbeat is off: the deadline alone).
    assert!(
        expiring.ended_within(Duration::from_secs(6)),
        "hub stream still open"
    );
    assert!(
        events.ended_within(Duration::from_secs(2)),
        "/events stream still open"
    );
    let after_end = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(after_end >= now + 2, "ended before exp");
    let id = hub_pub(a, "topic=private-news&data=after&private=on");
    let e = bystander.next_event(T).unwrap();
    assert_eq!(
        (e.id.as_deref(), e.data().as_str()),
        (Some(id.as_str()), "after")
    );
    assert!(!String::from_utf8_lossy(&expiring.wire).contains("after"));
    assert_eq!(rejected(a, "token_expired"), 2);
    // The expired token is refused from now on.
    let r = get(
        a,
        &format!("{HUB}?topic=private-news&authorization={short}"),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.text().contains("token expired"), "{}", r.text());
}
