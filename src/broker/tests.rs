//! Broker unit tests: resume planning, eviction gaps, tombstones, merge
//! order, private frames, selector streams, aliases, and a model test
//! against a naive reference.

use super::*;

fn broker(history: usize) -> Broker {
    Broker::new(
        1_000,
        Limits {
            history,
            history_bytes: 1 << 20,
        },
        10,
    )
}

fn publish(b: &mut Broker, s: &[u32], now: u64) -> u64 {
    b.publish(Origin::Local, s, &crate::event::Event::new("x"), now)
        .unwrap()
        .id
}

fn publish_private(b: &mut Broker, s: &[u32], now: u64, private: bool) -> u64 {
    b.publish_as(Origin::Local, s, now, private, |id| {
        frame::encode_numbered(id, None, "x", None)
    })
    .unwrap()
    .id
}

fn ids_of(b: &Broker, cs: &Cursors) -> Vec<u64> {
    b.merge(cs).map(|f| f.id).collect()
}

#[test]
fn ids_grow_past_clock() {
    let mut c = IdClock::new(100);
    assert_eq!(c.next(100), 100);
    assert_eq!(c.next(100), 101);
    assert_eq!(c.next(50), 102);
    assert_eq!(c.next(500), 500);
}

#[test]
fn resume_exact_and_gap_on_eviction() {
    let mut b = broker(3);
    let a = b.resolve(&["a"], true).unwrap()[0];
    let ids: Vec<u64> = (0..5).map(|_| publish(&mut b, &[a], 1_000)).collect();
    assert_eq!(b.get(a).unwrap().retained(), 3);
    let c = b.subscribe(7, &[a], &Resume::After(ids[2], String::new()));
    assert!(c.gap.is_none());
    assert_eq!(ids_of(&b, &c.cursors), ids[3..].to_vec());
    let c = b.subscribe(8, &[a], &Resume::After(ids[0], "x".into()));
    let gap = String::from_utf8(c.gap.unwrap()).unwrap();
    assert!(gap.contains("\"last_event_id\":\"x\""), "{gap}");
    assert_eq!(ids_of(&b, &c.cursors), ids[2..].to_vec());
}

#[test]
fn gap_for_future_old_and_garbage() {
    let mut b = broker(10);
    let a = b.resolve(&["a"], true).unwrap()[0];
    let last = publish(&mut b, &[a], 1_000);
    for res in [
        Resume::After(last + 1, String::new()),
        Resume::After(999, String::new()),
        Resume::Unparsable("zz".into()),
    ] {
        let c = b.subscribe(1, &[a], &res);
        assert!(c.gap.is_some(), "{res:?}");
        assert_eq!(ids_of(&b, &c.cursors), vec![last]);
    }
    let c = b.subscribe(1, &[a], &Resume::Live);
    assert!(c.gap.is_none());
    assert!(ids_of(&b, &c.cursors).is_empty());
}

#[test]
fn names_caps_and_all_or_nothing() {
    let mut b = Broker::new(
        1,
        Limits {
            history: 1,
            history_bytes: 100,
        },
        2,
    );
    assert_eq!(
        b.resolve(&["bad name"], true),
        Err((0, BrokerError::BadName))
    );
    assert_eq!(b.resolve(&["a"], false), Err((0, BrokerError::NotFound)));
    // A failing request creates nothing, not even the good names before
    // the bad one.
    assert_eq!(
        b.resolve(&["a", "b", "c"], true),
        Err((2, BrokerError::TooMany))
    );
    assert_eq!(
        b.resolve(&["a", "b d"], true),
        Err((1, BrokerError::BadName))
    );
    assert_eq!(b.len(), 0);
    b.resolve(&["a", "b"], true).unwrap();
    assert_eq!(b.resolve(&["c"], true), Err((0, BrokerError::TooMany)));
    b.internal("!app/x", None);
    assert_eq!(b.len(), 2);
}

#[test]
fn oversized_event_is_refused_not_kept() {
    let mut b = Broker::new(
        1,
        Limits {
            history: 10,
            history_bytes: 64,
        },
        2,
    );
    let a = b.resolve(&["a"], true).unwrap()[0];
    let e = b
        .publish(
            Origin::Local,
            &[a],
            &crate::event::Event::new("x".repeat(100)),
            5,
        )
        .unwrap_err();
    assert!(matches!(e, BrokerError::TooLarge(_)));
    assert_eq!(e.status(), 413);
    assert_eq!(b.get(a).unwrap().retained(), 0);
}

#[test]
fn deleted_stream_leaves_a_tombstone() {
    let mut b = broker(10);
    let a = b.resolve(&["a"], true).unwrap()[0];
    let id = publish(&mut b, &[a], 1_000);
    b.subscribe(3, &[a], &Resume::Live);
    assert_eq!(b.delete(Origin::Local, a), vec![3]);
    let a2 = b.resolve(&["a"], true).unwrap()[0];
    let c = b.subscribe(4, &[a2], &Resume::After(id - 1, String::new()));
    assert!(c.gap.is_some());
}

#[test]
fn lag_is_measured_in_bytes() {
    let mut b = broker(10);
    let a = b.resolve(&["a"], true).unwrap()[0];
    let c = b.subscribe(1, &[a], &Resume::Live);
    let first = publish(&mut b, &[a], 1_000);
    publish(&mut b, &[a], 1_000);
    let one = b.get(a).unwrap().frames_after(0).next().unwrap().cost() as u64;
    assert_eq!(b.lag(&c.cursors), 2 * one);
    let mut cs = c.cursors;
    cs.advance(first);
    assert_eq!(b.lag(&cs), one);
}

#[test]
fn merge_dedups_and_orders_across_streams() {
    let mut b = broker(100);
    let ab = b.resolve(&["a", "b"], true).unwrap();
    let c = b.subscribe(1, &ab, &Resume::Live);
    let x = publish(&mut b, &[ab[0]], 1_000);
    let y = publish(&mut b, &ab, 1_000);
    let z = publish(&mut b, &[ab[1]], 1_000);
    assert_eq!(ids_of(&b, &c.cursors), vec![x, y, z]);
    assert_eq!(b.audience(&ab), 1);
}

#[test]
fn many_streams_per_subscriber_are_not_truncated() {
    // More streams than any inline buffer: every one is merged.
    let mut b = Broker::new(
        1,
        Limits {
            history: 10,
            history_bytes: 1 << 20,
        },
        1000,
    );
    let names: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let idx = b.resolve(&refs, true).unwrap();
    let c = b.subscribe(1, &idx, &Resume::Live);
    let mut want = Vec::new();
    for &i in idx.iter().rev() {
        want.push(publish(&mut b, &[i], 5));
    }
    assert_eq!(ids_of(&b, &c.cursors), want);
}

#[test]
fn unsubscribe_frees_the_slot_and_keeps_others() {
    let mut b = broker(10);
    let a = b.resolve(&["a"], true).unwrap()[0];
    let c1 = b.subscribe(1, &[a], &Resume::Live);
    let _c2 = b.subscribe(2, &[a], &Resume::Live);
    b.unsubscribe(1, &c1.cursors);
    assert_eq!(b.subscribers(a), vec![2]);
    // Unsubscribing twice (or with a stale slot) touches nobody else.
    b.unsubscribe(1, &c1.cursors);
    assert_eq!(b.subscribers(a), vec![2]);
}

/// A naive reference: every event ever published, with its streams; a
/// resume is "every event after the cursor on any of my streams that is
/// still retained", and a gap is owed when any event after the cursor on
/// one of my streams is no longer retained.
#[test]
fn model_resume_and_merge_match_a_naive_reference() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    let mut rng = SmallRng::seed_from_u64(0x55ed);
    for case in 0..300 {
        let history = rng.gen_range(1..6);
        let mut b = Broker::new(
            1_000,
            Limits {
                history,
                history_bytes: 1 << 20,
            },
            100,
        );
        let n_streams = rng.gen_range(1..5);
        let names: Vec<String> = (0..n_streams).map(|i| format!("s{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let idx = b.resolve(&refs, true).unwrap();
        // (id, streams) of every event, and per stream its ids in order.
        let mut log: Vec<(u64, Vec<usize>, bool)> = Vec::new();
        let mut per: Vec<Vec<u64>> = vec![Vec::new(); n_streams];
        for _ in 0..rng.gen_range(0..20) {
            let mut ts: Vec<usize> = (0..n_streams).filter(|_| rng.gen_bool(0.5)).collect();
            if ts.is_empty() {
                ts.push(rng.gen_range(0..n_streams));
            }
            let targets: Vec<u32> = ts.iter().map(|&t| idx[t]).collect();
            let now = 1_000 + rng.gen_range(0..3u64) * 7;
            let private = rng.gen_bool(0.3);
            let id = publish_private(&mut b, &targets, now, private);
            for &t in &ts {
                per[t].push(id);
            }
            log.push((id, ts, private));
        }
        let retained = |t: usize, id: u64| {
            let v = &per[t];
            v.len() <= history || v[v.len() - history..].contains(&id)
        };
        // Subscribe to a random subset from every possible cursor.
        let mut mine: Vec<usize> = (0..n_streams).filter(|_| rng.gen_bool(0.6)).collect();
        if mine.is_empty() {
            mine.push(0);
        }
        let targets: Vec<u32> = mine.iter().map(|&t| idx[t]).collect();
        // Which of my streams let this subscriber see private events.
        let sees: Vec<bool> = mine.iter().map(|_| rng.gen_bool(0.5)).collect();
        let through = |t: &usize, private: bool| {
            mine.iter()
                .position(|m| m == t)
                .is_some_and(|p| !private || sees[p])
        };
        // Every id, plus one below and one above what the clock handed
        // out (the contract: those start at the oldest retained event,
        // with a gap).
        let mut cursors: Vec<u64> = log.iter().map(|(id, _, _)| *id).collect();
        cursors.push(b.ids().first() - 1);
        cursors.push(b.ids().last() + 1);
        for cur in cursors {
            let outside = cur < b.ids().first() || cur > b.ids().last();
            let c = b.subscribe_as(1, &targets, &sees, &Resume::After(cur, cur.to_string()));
            let got = ids_of(&b, &c.cursors);
            let want: Vec<u64> = log
                .iter()
                .filter(|(id, ts, p)| {
                    (outside || *id > cur) && ts.iter().any(|t| through(t, *p) && retained(*t, *id))
                })
                .map(|(id, _, _)| *id)
                .collect();
            assert_eq!(got, want, "case {case} cursor {cur}");
            // What it is owed in bytes is what it can be sent.
            let frame_cost = Frame::new(0, &frame::encode_numbered(1_000, None, "x", None)).cost();
            let mut cs = c.cursors;
            let lag_want: u64 = mine
                .iter()
                .zip(&targets)
                .map(|(t, &ti)| {
                    let pos = cs
                        .as_slice()
                        .iter()
                        .find(|x| x.stream == ti)
                        .unwrap()
                        .last_id;
                    log.iter()
                        .filter(|(id, ts, p)| {
                            *id > pos && ts.contains(t) && through(t, *p) && retained(*t, *id)
                        })
                        .count() as u64
                })
                .sum::<u64>()
                * frame_cost as u64;
            assert_eq!(b.lag(&cs), lag_want, "case {case} cursor {cur} lag");
            let lost = outside
                || log.iter().any(|(id, ts, p)| {
                    *id > cur && ts.iter().any(|t| through(t, *p) && !retained(*t, *id))
                });
            assert_eq!(
                c.gap.is_some(),
                lost,
                "case {case} cursor {cur} gap; history {history} mine {mine:?} log {log:?}"
            );
            // Later evictions of frames it may not see never surface as
            // a gap, and the merge after a take_gap is unchanged.
            assert!(b.take_gap(&mut cs).is_none() || lost);
            b.unsubscribe(1, &cs);
        }
    }
}

#[test]
fn private_frames_reach_only_cursors_that_may_see_them() {
    let mut b = broker(3);
    let a = b.resolve(&["a"], true).unwrap()[0];
    let mut anon = b.subscribe(1, &[a], &Resume::Live).cursors;
    let mut authed = b.subscribe_as(2, &[a], &[true], &Resume::Live).cursors;
    assert!(authed.as_slice()[0].sees_private());
    assert!(!anon.as_slice()[0].sees_private());
    assert_eq!(authed.as_slice()[0].slot(), 1);
    let p1 = publish_private(&mut b, &[a], 5, true);
    let pub1 = publish_private(&mut b, &[a], 5, false);
    assert_eq!(ids_of(&b, &anon), vec![pub1]);
    assert_eq!(ids_of(&b, &authed), vec![p1, pub1]);
    anon.advance(pub1);
    authed.advance(pub1);
    // Private frames pile up and are evicted: the anonymous cursor owes
    // nothing, is not behind, and gets no gap.
    for _ in 0..5 {
        publish_private(&mut b, &[a], 5, true);
    }
    assert_eq!(b.lag(&anon), 0);
    assert!(b.lag(&authed) > 0);
    assert!(b.take_gap(&mut anon).is_none());
    assert!(ids_of(&b, &anon).is_empty());
    // The cursor moved past them, so no merge walks them again.
    assert_eq!(anon.as_slice()[0].last_id, b.get(a).unwrap().last_id);
    assert!(b.take_gap(&mut authed).is_some());
    // A resume from before the evicted private frames: gap only for those
    // that may see them.
    let c = b.subscribe(3, &[a], &Resume::After(pub1, pub1.to_string()));
    assert!(c.gap.is_none());
    let c = b.subscribe_as(4, &[a], &[true], &Resume::After(pub1, pub1.to_string()));
    assert!(c.gap.is_some());
}

#[test]
fn a_private_frame_on_two_streams_comes_through_the_one_that_may_see_it() {
    let mut b = broker(10);
    let x = b.resolve(&["x", "y"], true).unwrap();
    let c = b.subscribe_as(1, &x, &[false, true], &Resume::Live);
    let p = publish_private(&mut b, &x, 5, true);
    let only_x = publish_private(&mut b, &x[..1], 5, true);
    assert_eq!(ids_of(&b, &c.cursors), vec![p]);
    assert!(only_x > p);
}

#[test]
fn selector_streams_fan_in_later_streams() {
    let mut b = broker(10);
    let early = b.resolve(&["/books/1"], true).unwrap()[0];
    let before = publish(&mut b, &[early], 5);
    publish(&mut b, &[early], 5);
    let sel = crate::auth::Selector::parse("/books/{id}").unwrap();
    let s = b.selector_stream(&sel).unwrap();
    assert_eq!(b.selector_stream(&sel).unwrap(), s, "one ring per selector");
    assert!(b.get(s).unwrap().internal);
    let c = b.subscribe(1, &[s], &Resume::Live);
    let later = b.resolve(&["/books/2", "/other"], true).unwrap();
    let i1 = publish(&mut b, &[later[0]], 5);
    let _i2 = publish(&mut b, &[later[1]], 5);
    let i3 = publish(&mut b, &later, 5);
    assert_eq!(ids_of(&b, &c.cursors), vec![i1, i3]);
    // Resuming from before the selector stream existed: gap.
    let c = b.subscribe(2, &[s], &Resume::After(before, before.to_string()));
    assert!(c.gap.is_some());
    let c = b.subscribe(2, &[s], &Resume::Earliest);
    assert!(c.gap.is_none());
    assert_eq!(ids_of(&b, &c.cursors), vec![i1, i3]);
    // Deleting a selector stream unregisters it.
    b.delete(Origin::Local, s);
    publish(&mut b, &[later[0]], 5);
    assert!(b.get(s).is_none_or(|st| st.name.as_ref() != "/books/{id}"));
}

#[test]
fn aliases_are_bounded_and_newest_wins() {
    let mut b = broker(10);
    b.alias("urn:a", 5);
    b.alias("urn:a", 6);
    assert_eq!(b.alias_id("urn:a"), Some(6));
    for i in 0..MAX_ALIASES as u64 {
        b.alias(&format!("k{i}"), i);
    }
    assert_eq!(b.alias_id("urn:a"), None);
    assert_eq!(b.alias_id("k0"), Some(0));
    assert!(b.topics.alias_order.len() <= MAX_ALIASES);
}

#[test]
fn topic_names() {
    assert!(valid_topic("https://example.com/books/1?x=%20y#z"));
    assert!(valid_topic("ünïcode"));
    assert!(!valid_topic(""));
    assert!(!valid_topic("*"));
    assert!(!valid_topic("/a/{id}"));
    assert!(!valid_topic("a\nb"));
    assert!(!valid_topic(&"a".repeat(MAX_TOPIC_BYTES + 1)));
    let mut b = broker(10);
    let t = "https://example.com/books/1?x=y";
    assert!(b.resolve(&[t], true).is_err(), "/events keeps its alphabet");
    let i = b.resolve_topics(&[t], true).unwrap();
    assert_eq!(
        b.resolve(&[t], false).unwrap(),
        i,
        "but reads an existing topic"
    );
}
