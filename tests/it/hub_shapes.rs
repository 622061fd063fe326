//! The Mercure hub's selector subscriptions (`topic=*`, URI templates,
//! `match_urlpattern=`) on every deployment shape (issue 21, item 1),
//! against the real binary: on two nodes over a real redis-server, node
//! B's selector subscribers get node A's updates to topics B never saw,
//! under A's custom ids, exactly once, in order, private ones only with a
//! token that allows them, and B resumes them (and exact subscriptions to
//! those topics) without a hole; after a `--data-dir` restart a selector
//! subscription resumes exactly from the journal's history; and the `gap`
//! a selector subscriber gets names what it asked for, byte for byte.
// The helpers serve the redis and journal cells too; a build with only
// some features leaves a few unused.
#![cfg_attr(
    not(all(feature = "redis", feature = "journal")),
    allow(dead_code, unused_imports)
)]

use serde_json::json;

use crate::common::*;
use crate::mercure::{drain, enc, hub_post, hub_sub, pub_token, sub_token, KEY};

/// A subscriber's events until quiet, as `(id, data)`.
fn pairs(s: &mut Sse) -> Vec<(String, String)> {
    drain(s)
        .into_iter()
        .map(|e| (e.id.clone().unwrap_or_default(), e.data()))
        .collect()
}

fn owned(want: &[(&str, &str)]) -> Vec<(String, String)> {
    want.iter()
        .map(|(i, d)| (i.to_string(), d.to_string()))
        .collect()
}

/// `want`, then nothing more: each event exactly once.
fn exactly(s: &mut Sse, want: &[(&str, &str)], what: &str) {
    let mut got = Vec::new();
    for _ in 0..want.len() {
        match s.next_event(T) {
            Some(e) => got.push((e.id.clone().unwrap_or_default(), e.data())),
            None => break,
        }
    }
    got.extend(pairs(s));
    assert_eq!(got, owned(want), "{what}");
}

/// Publishes one update through the hub on `a` with a custom id.
fn update(a: std::net::SocketAddr, topic: &str, id: &str, data: &str, private: bool) {
    let p = if private { "&private=on" } else { "" };
    let r = hub_post(
        a,
        &pub_token(&["*"]),
        &format!("topic={}&id={id}&data={data}{p}", enc(topic)),
    );
    assert_eq!((r.status, r.text()), (200, id.to_string()), "{}", r.head);
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}\r\n")
}

fn resume(id: &str) -> String {
    format!("Last-Event-ID: {id}\r\n")
}

/// The value of header `name` in a response head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

const SHELF: &str = "https://example.com/shelf/{id}";
const SHELF_PATTERN: &str = "https://example.com/shelf/:id";

/// Two nodes on one real redis-server: every selector shape on node B
/// gets node A's updates to topics B holds no stream for (one new, one
/// with history from before B's subscribers, which B must load), with A's
/// ids, exactly once and in publish order; private ones only with a token
/// whose grant covers the selector. Then B resumes exactly: an exact
/// subscription to a topic B holds only for its selectors (from Redis,
/// no hole), the selector streams, and a selector stream made now.
#[cfg(feature = "redis")]
#[test]
fn selector_subscribers_on_b_get_a_updates_to_topics_b_never_saw() {
    use crate::redis::{node, Redis};
    let Some(r) = Redis::start() else { return };
    let (a, b) = (node(&r, &["--jwt-key", KEY]), node(&r, &["--jwt-key", KEY]));
    let (shelf7, shelf9) = ("https://example.com/shelf/7", "https://example.com/shelf/9");
    let other = "https://example.com/other/1";
    // History B's subscribers do not see live, but B must load before it
    // appends after it.
    update(a.addr, shelf9, "s-pre", "pre", false);
    let all = sub_token(&["*"]);
    let narrow = sub_token(&["https://example.com/elsewhere/{x}"]);
    let any_q = "topic=*".to_string();
    let tmpl_q = format!("topic={}", enc(SHELF));
    let pat_q = format!("match_urlpattern={}", enc(SHELF_PATTERN));
    let mut subs: Vec<(String, Sse)> = Vec::new();
    for (q, tok, who) in [
        (&any_q, None, "anonymous *"),
        (&tmpl_q, None, "anonymous template"),
        (&pat_q, None, "anonymous pattern"),
        (&any_q, Some(&all), "granted *"),
        (&tmpl_q, Some(&all), "granted template"),
        (&pat_q, Some(&all), "granted pattern"),
        (&pat_q, Some(&narrow), "pattern, grant elsewhere"),
    ] {
        let h = tok.map(|t| bearer(t)).unwrap_or_default();
        subs.push((who.to_string(), hub_sub(b.addr, q, &h)));
    }
    assert!(wait_until(T, || stats(b.addr)["connections"]["sse"]
        .as_u64()
        == Some(subs.len() as u64)));
    update(a.addr, shelf7, "s1", "one", false);
    update(a.addr, shelf9, "s2", "two", false);
    update(a.addr, shelf7, "s3", "three", true);
    update(a.addr, shelf9, "s4", "four", false);
    update(a.addr, other, "s5", "five", false);
    let public_shelf = [("s1", "one"), ("s2", "two"), ("s4", "four")];
    let every_shelf = [
        ("s1", "one"),
        ("s2", "two"),
        ("s3", "three"),
        ("s4", "four"),
    ];
    for (who, s) in subs.iter_mut() {
        let want: Vec<(&str, &str)> = match who.as_str() {
            "anonymous *" => vec![
                public_shelf[0],
                public_shelf[1],
                public_shelf[2],
                ("s5", "five"),
            ],
            "granted *" => {
                let mut v = every_shelf.to_vec();
                v.push(("s5", "five"));
                v
            }
            "granted template" | "granted pattern" => every_shelf.to_vec(),
            _ => public_shelf.to_vec(),
        };
        exactly(s, &want, who);
    }
    // The bytes on the wire: A's id and data, nothing of B's numbering.
    let mut again = hub_sub(b.addr, &pat_q, &resume("s2"));
    let e = again.next_event(T).expect("s4 after s2");
    assert_eq!(e.raw, "id: s4\ndata: four\n\n");
    assert!(drain(&mut again).is_empty());
    // s3 was private: to an anonymous subscriber its id is unknown, and
    // the gap names the pattern as it was written.
    let mut again = hub_sub(b.addr, &pat_q, &resume("s3"));
    let e = again.next_event(T).expect("a gap");
    assert_eq!(
        e.raw,
        format!(
            "event: gap\ndata: {}\n\n",
            json!({"last_event_id": "s3", "streams": [SHELF_PATTERN]})
        )
    );
    // An exact subscription to a topic B holds only for its selectors
    // resumes from Redis's history, without a hole.
    let mut exact = hub_sub(b.addr, &format!("topic={}", enc(shelf9)), &resume("s-pre"));
    exactly(
        &mut exact,
        &[("s2", "two"), ("s4", "four")],
        "exact shelf/9 from s-pre",
    );
    let mut exact = hub_sub(
        b.addr,
        &format!("topic={}", enc(shelf7)),
        &format!("{}{}", resume("s1"), bearer(&all)),
    );
    exactly(
        &mut exact,
        &[("s3", "three")],
        "exact shelf/7 from s1, granted",
    );
    // The selector streams resume by A's ids; private ones only granted.
    let mut s = hub_sub(b.addr, &any_q, &resume("s2"));
    exactly(&mut s, &[("s4", "four"), ("s5", "five")], "* from s2");
    let mut s = hub_sub(
        b.addr,
        &tmpl_q,
        &format!("{}{}", resume("s2"), bearer(&all)),
    );
    assert_eq!(
        header(&s.head, "mercure-last-event-id").as_deref(),
        Some("s2")
    );
    exactly(
        &mut s,
        &[("s3", "three"), ("s4", "four")],
        "template from s2, granted",
    );
    // A selector made now is rebuilt from the topics B holds now.
    let q = format!("topic={}", enc("https://example.com/{kind}/{n}"));
    let mut s = hub_sub(b.addr, &q, &resume("s1"));
    assert_eq!(
        header(&s.head, "mercure-last-event-id").as_deref(),
        Some("s1")
    );
    exactly(
        &mut s,
        &[("s2", "two"), ("s4", "four"), ("s5", "five")],
        "new template from s1",
    );
}

/// What `topic=*` on `b` resuming after `from` starts with: the `gap`
/// (its bytes), and `Mercure-Last-Event-ID` says the cursor is unknown.
fn gap_first(b: std::net::SocketAddr, from: &str) -> Sse {
    let mut s = hub_sub(b, "topic=*", &resume(from));
    assert_eq!(
        header(&s.head, "mercure-last-event-id").as_deref(),
        Some("earliest"),
        "* from {from}"
    );
    let e = s.next_event(T).expect("a gap");
    assert_eq!(
        e.raw,
        format!(
            "event: gap\ndata: {}\n\n",
            json!({"last_event_id": from, "streams": ["*"]})
        ),
        "* from {from}"
    );
    s
}

/// Two nodes on one redis-server: node A publishes to a topic node B
/// never holds (no subscriber of it on B, no selector on B wants it), so
/// B never has its update. A selector stream made on B afterwards cannot
/// have it either: a subscriber resuming from before it gets `gap`, then
/// what B has, never a silent hole; one resuming from after it is exact;
/// and once a selector on B wants that topic, its updates come live.
#[cfg(feature = "redis")]
#[test]
fn a_selector_stream_made_on_b_gaps_for_updates_to_topics_b_never_held() {
    use crate::redis::{node, Redis};
    let Some(r) = Redis::start() else { return };
    let (a, b) = (node(&r, &["--jwt-key", KEY]), node(&r, &["--jwt-key", KEY]));
    let (held, unheld) = ("https://example.com/held/1", "https://example.com/unheld/1");
    // B holds `held`: an exact subscriber reads it there.
    let mut exact = hub_sub(b.addr, &format!("topic={}", enc(held)), "");
    update(a.addr, held, "h1", "one", false);
    update(a.addr, unheld, "u1", "never on b", false);
    update(a.addr, held, "h2", "two", false);
    // Announcements come in order on one channel: B has skipped u1's
    // once its subscriber has h2.
    exactly(&mut exact, &[("h1", "one"), ("h2", "two")], "held, on B");
    let mut s = gap_first(b.addr, "h1");
    exactly(&mut s, &[("h2", "two")], "* from h1, after the gap");
    // After u1: nothing is missing, nothing is owed.
    let mut s = hub_sub(b.addr, "topic=*", &resume("h2"));
    assert_eq!(
        header(&s.head, "mercure-last-event-id").as_deref(),
        Some("h2")
    );
    assert!(drain(&mut s).is_empty());
    // The `*` stream wants every topic now: B holds `unheld` from here.
    update(a.addr, unheld, "u2", "now on b", false);
    exactly(&mut s, &[("u2", "now on b")], "* from h2, live");
}

/// A node B started after node A published: what A published before
/// B's subscription to the bus was live is unknown to B, so a selector
/// stream on B resuming from before it gets `gap`, then what B has (the
/// history it loaded of a topic it holds), then live updates.
#[cfg(feature = "redis")]
#[test]
fn a_node_started_after_updates_gaps_a_selector_resume_from_before_them() {
    use crate::redis::{node, Redis};
    let Some(r) = Redis::start() else { return };
    let a = node(&r, &["--jwt-key", KEY]);
    let (held, unheld) = ("https://example.com/held/1", "https://example.com/unheld/1");
    update(a.addr, held, "h1", "one", false);
    update(a.addr, unheld, "u1", "before b", false);
    let b = node(&r, &["--jwt-key", KEY]);
    // B loads `held` from Redis for an exact subscriber from the start,
    // and so knows h1.
    let mut exact = hub_sub(b.addr, &format!("topic={}", enc(held)), &resume("earliest"));
    exactly(&mut exact, &[("h1", "one")], "held on B, from the start");
    let mut s = gap_first(b.addr, "h1");
    assert!(drain(&mut s).is_empty(), "B has nothing after h1 yet");
    update(a.addr, held, "h2", "two", false);
    exactly(&mut s, &[("h2", "two")], "* from h1, live after the gap");
}

/// After a `--data-dir` restart, a selector subscription of each shape
/// resuming by a custom id gets exactly the events after it that its
/// topics retain, private ones only with a grant, and
/// `Mercure-Last-Event-ID` names the cursor.
#[cfg(feature = "journal")]
#[test]
fn selector_subscriptions_resume_exactly_after_a_restart() {
    let dir = std::env::temp_dir().join(format!(
        "ssed-hub-shapes-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
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
    let d = rm.0.to_str().unwrap();
    let args = ["--jwt-key", KEY, "--data-dir", d];
    let mut srv = Server::start(&args);
    // A selector subscriber before the restart: its stream is not kept.
    let mut before = hub_sub(srv.addr, &format!("topic={}", enc(SHELF)), "");
    let sent = [
        ("https://example.com/shelf/1", "r1", "one", false),
        ("https://example.com/other/1", "r2", "two", false),
        ("https://example.com/shelf/2", "r3", "three", true),
        ("https://example.com/shelf/1", "r4", "four", false),
        ("https://example.com/shelf/2", "r5", "five", false),
        // Outside the `/events` alphabet: still a public topic after it.
        ("https://example.com/misc/1?lang=fr", "r6", "six", false),
    ];
    for (t, id, data, private) in sent {
        update(srv.addr, t, id, data, private);
    }
    exactly(
        &mut before,
        &[("r1", "one"), ("r4", "four"), ("r5", "five")],
        "before the restart",
    );
    drop(before);
    // SAFETY: kill(2) on our unreaped child.
    assert_eq!(
        unsafe { libc::kill(srv.child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    assert!(srv.child.wait().unwrap().success());
    let srv = Server::start(&args);
    // Before any selector stream exists, `Last-Event-ID` names the newest
    // update it will hold (a broker id), and resuming from it replays
    // nothing; a selector matching nothing has none.
    let s = hub_sub(srv.addr, "topic=*", "");
    let newest = header(&s.head, "last-event-id").expect("Last-Event-ID");
    assert_ne!(newest, "earliest");
    drop(s);
    let mut s = hub_sub(srv.addr, "topic=*", &resume(&newest));
    assert_eq!(
        header(&s.head, "mercure-last-event-id"),
        Some(newest.clone())
    );
    assert!(drain(&mut s).is_empty());
    let mut s = hub_sub(srv.addr, "topic=*", &resume("r5"));
    exactly(&mut s, &[("r6", "six")], "* from r5: r6 is the newest");
    let q = format!("topic={}", enc("https://example.com/nothing/{x}"));
    let s = hub_sub(srv.addr, &q, "");
    assert_eq!(
        header(&s.head, "last-event-id").as_deref(),
        Some("earliest")
    );
    let all = sub_token(&["*"]);
    for (q, granted, want) in [
        (
            "topic=*".to_string(),
            false,
            vec![("r4", "four"), ("r5", "five"), ("r6", "six")],
        ),
        (
            "topic=*".to_string(),
            true,
            vec![
                ("r3", "three"),
                ("r4", "four"),
                ("r5", "five"),
                ("r6", "six"),
            ],
        ),
        (
            format!("topic={}", enc(SHELF)),
            true,
            vec![("r3", "three"), ("r4", "four"), ("r5", "five")],
        ),
        (
            format!("match_urlpattern={}", enc(SHELF_PATTERN)),
            false,
            vec![("r4", "four"), ("r5", "five")],
        ),
        (
            format!("match_urlpattern={}", enc(SHELF_PATTERN)),
            true,
            vec![("r3", "three"), ("r4", "four"), ("r5", "five")],
        ),
    ] {
        let what = format!("{q} from r2, granted {granted}");
        let auth = if granted { bearer(&all) } else { String::new() };
        let mut s = hub_sub(srv.addr, &q, &format!("{}{auth}", resume("r2")));
        assert_eq!(
            header(&s.head, "mercure-last-event-id").as_deref(),
            Some("r2"),
            "{what}"
        );
        let evs = drain(&mut s);
        let raw: String = evs.iter().map(|e| e.raw.clone()).collect();
        let want_raw: String = want
            .iter()
            .map(|(i, d)| format!("id: {i}\ndata: {d}\n\n"))
            .collect();
        assert_eq!(raw, want_raw, "{what}");
    }
    // And live after the rebuilt history.
    let mut s = hub_sub(srv.addr, &format!("topic={}", enc(SHELF)), &resume("r4"));
    update(srv.addr, "https://example.com/shelf/3", "r6", "six", false);
    exactly(
        &mut s,
        &[("r5", "five"), ("r6", "six")],
        "template from r4, then live",
    );
}

/// The `gap` a selector subscriber gets names what it asked for (the URL
/// pattern as written, the template, `*`), never the hub's internal key
/// for a URL pattern; exact topics beside it are named as they are.
#[test]
fn the_gap_names_what_the_subscriber_asked_for() {
    let srv = Server::start(&["--jwt-key", KEY]);
    update(srv.addr, "https://example.com/shelf/1", "g1", "one", false);
    for (q, named, then) in [
        // Relative: resolved against this hub (http://t), so it matches
        // no topic of example.com.
        (
            format!("match_urlpattern={}", enc("/shelf/:id")),
            json!(["/shelf/:id"]),
            false,
        ),
        (
            format!(
                "match={}&match_urlpattern={}",
                enc("https://example.com/shelf/1"),
                enc(SHELF_PATTERN)
            ),
            json!(["https://example.com/shelf/1", SHELF_PATTERN]),
            true,
        ),
        (format!("topic={}", enc(SHELF)), json!([SHELF]), true),
        ("topic=*".to_string(), json!(["*"]), true),
    ] {
        // An id the hub never handed out: a gap, then what is retained.
        let mut s = hub_sub(srv.addr, &q, &resume("never-seen"));
        let gap = s.next_event(T).expect("a gap");
        let want = format!(
            "event: gap\ndata: {}\n\n",
            json!({"last_event_id": "never-seen", "streams": named})
        );
        assert_eq!(gap.raw, want, "{q}");
        let wire = String::from_utf8_lossy(&s.wire).into_owned();
        assert!(!wire.contains("}urlpattern"), "{q}: {wire}");
        assert!(wire.contains(&want), "{q}: {wire}");
        let rest: Vec<String> = drain(&mut s).into_iter().map(|e| e.raw).collect();
        let want: Vec<String> = if then {
            vec!["id: g1\ndata: one\n\n".to_string()]
        } else {
            Vec::new()
        };
        assert_eq!(rest, want, "{q}");
    }
}
