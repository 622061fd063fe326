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

fn publish(b: &mut Broker, s: &[StreamIdx], now: u64) -> EventId {
    b.publish(s, &crate::event::Event::new("x"), now)
        .unwrap()
        .id
}

fn publish_private(b: &mut Broker, s: &[StreamIdx], now: u64, private: bool) -> EventId {
    b.publish_as(s, now, private, |id| {
        frame::encode_numbered(id, None, "x", None)
    })
    .unwrap()
    .id
}

/// The id with number `n`.
fn id(n: u64) -> EventId {
    EventId::new(n)
}

fn ids_of(b: &Broker, cs: &Cursors) -> Vec<EventId> {
    b.merge(cs).map(|f| f.id).collect()
}

#[test]
fn ids_grow_past_clock() {
    let mut c = IdClock::new(100);
    assert_eq!(c.next(100), id(100));
    assert_eq!(c.next(100), id(101));
    assert_eq!(c.next(50), id(102));
    assert_eq!(c.next(500), id(500));
}

#[test]
fn resume_exact_and_gap_on_eviction() {
    let mut b = broker(3);
    let a = b.resolve(&["a"], true).unwrap()[0];
    let ids: Vec<EventId> = (0..5).map(|_| publish(&mut b, &[a], 1_000)).collect();
    assert_eq!(b.get(a).unwrap().retained(), 3);
    let c = b.subscribe(ConnKey(7), &[a], &Resume::After(ids[2], String::new()));
    assert!(c.gap.is_none());
    assert_eq!(ids_of(&b, &c.cursors), ids[3..].to_vec());
    let c = b.subscribe(ConnKey(8), &[a], &Resume::After(ids[0], "x".into()));
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
        Resume::After(last.succ(), String::new()),
        Resume::After(id(999), String::new()),
        Resume::Unparsable("zz".into()),
    ] {
        let c = b.subscribe(ConnKey(1), &[a], &res);
        assert!(c.gap.is_some(), "{res:?}");
        assert_eq!(ids_of(&b, &c.cursors), vec![last]);
    }
    let c = b.subscribe(ConnKey(1), &[a], &Resume::Live);
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
        .publish(&[a], &crate::event::Event::new("x".repeat(100)), 5)
        .unwrap_err();
    assert!(matches!(e, BrokerError::TooLarge { .. }));
    assert_eq!(b.get(a).unwrap().retained(), 0);
}

#[test]
fn deleted_stream_leaves_a_tombstone() {
    let mut b = broker(10);
    let a = b.resolve(&["a"], true).unwrap()[0];
    let id = publish(&mut b, &[a], 1_000);
    b.subscribe(ConnKey(3), &[a], &Resume::Live);
    assert_eq!(b.delete(a), [ConnKey(3)]);
    let a2 = b.resolve(&["a"], true).unwrap()[0];
    let c = b.subscribe(ConnKey(4), &[a2], &Resume::After(id.pred(), String::new()));
    assert!(c.gap.is_some());
}

#[test]
fn lag_is_measured_in_bytes() {
    let mut b = broker(10);
    let a = b.resolve(&["a"], true).unwrap()[0];
    let c = b.subscribe(ConnKey(1), &[a], &Resume::Live);
    let first = publish(&mut b, &[a], 1_000);
    publish(&mut b, &[a], 1_000);
    let one = b
        .get(a)
        .unwrap()
        .frames_after(EventId::NONE)
        .next()
        .unwrap()
        .cost() as u64;
    assert_eq!(b.lag(&c.cursors), 2 * one);
    let mut cs = c.cursors;
    cs.advance(first);
    assert_eq!(b.lag(&cs), one);
}

#[test]
fn merge_dedups_and_orders_across_streams() {
    let mut b = broker(100);
    let ab = b.resolve(&["a", "b"], true).unwrap();
    let c = b.subscribe(ConnKey(1), &ab, &Resume::Live);
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
    let c = b.subscribe(ConnKey(1), &idx, &Resume::Live);
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
    let c1 = b.subscribe(ConnKey(1), &[a], &Resume::Live);
    let _c2 = b.subscribe(ConnKey(2), &[a], &Resume::Live);
    b.unsubscribe(ConnKey(1), &c1.cursors);
    assert_eq!(b.subscribers(a), [ConnKey(2)]);
    // Unsubscribing twice (or with a stale slot) touches nobody else.
    b.unsubscribe(ConnKey(1), &c1.cursors);
    assert_eq!(b.subscribers(a), [ConnKey(2)]);
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
        let mut log: Vec<(EventId, Vec<usize>, bool)> = Vec::new();
        let mut per: Vec<Vec<EventId>> = vec![Vec::new(); n_streams];
        for _ in 0..rng.gen_range(0..20) {
            let mut ts: Vec<usize> = (0..n_streams).filter(|_| rng.gen_bool(0.5)).collect();
            if ts.is_empty() {
                ts.push(rng.gen_range(0..n_streams));
            }
            let targets: Vec<StreamIdx> = ts.iter().map(|&t| idx[t]).collect();
            let now = 1_000 + rng.gen_range(0..3u64) * 7;
            let private = rng.gen_bool(0.3);
            let id = publish_private(&mut b, &targets, now, private);
            for &t in &ts {
                per[t].push(id);
            }
            log.push((id, ts, private));
        }
        let retained = |t: usize, id: EventId| {
            let v = &per[t];
            v.len() <= history || v[v.len() - history..].contains(&id)
        };
        // Subscribe to a random subset from every possible cursor.
        let mut mine: Vec<usize> = (0..n_streams).filter(|_| rng.gen_bool(0.6)).collect();
        if mine.is_empty() {
            mine.push(0);
        }
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
        let mut cursors: Vec<EventId> = log.iter().map(|(id, _, _)| *id).collect();
        cursors.push(b.ids().first().pred());
        cursors.push(b.ids().last().succ());
        for cur in cursors {
            let outside = cur < b.ids().first() || cur > b.ids().last();
            // Resolved afresh each time, as a request does: a stream with
            // no history is dropped when its last reader leaves.
            let idx = b.resolve(&refs, true).unwrap();
            let targets: Vec<StreamIdx> = mine.iter().map(|&t| idx[t]).collect();
            let c = b.subscribe_as(
                ConnKey(1),
                &targets,
                &sees,
                &Resume::After(cur, cur.to_string()),
            );
            let got = ids_of(&b, &c.cursors);
            let want: Vec<EventId> = log
                .iter()
                .filter(|(id, ts, p)| {
                    (outside || *id > cur) && ts.iter().any(|t| through(t, *p) && retained(*t, *id))
                })
                .map(|(id, _, _)| *id)
                .collect();
            assert_eq!(got, want, "case {case} cursor {cur}");
            // What it is owed in bytes is what it can be sent.
            let frame_cost = Frame::new(
                EventId::NONE,
                &frame::encode_numbered(id(1_000), None, "x", None),
            )
            .cost();
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
            b.unsubscribe(ConnKey(1), &cs);
        }
    }
}

#[test]
fn mark_lost_gaps_behind_subscribers_and_old_resumes() {
    let mut b = broker(10);
    let a = b.resolve(&["a"], true).unwrap()[0];
    let ids: Vec<EventId> = (0..3).map(|_| publish(&mut b, &[a], 1_000)).collect();
    let mut caught = b.subscribe(ConnKey(1), &[a], &Resume::Live).cursors;
    let mut behind = b
        .subscribe(ConnKey(2), &[a], &Resume::After(ids[0], String::new()))
        .cursors;
    let mut dirty = Vec::new();
    b.take_dirty(&mut dirty);
    // A hole after the last event: up to 5000 may be missing.
    assert!(b.mark_lost(a, id(5_000)));
    assert!(!b.mark_lost(a, id(4_000)), "a lower mark changes nothing");
    dirty.clear();
    b.take_dirty(&mut dirty);
    assert_eq!(dirty, vec![a], "subscribers are visited");
    assert_eq!(b.get(a).unwrap().retained(), 0);
    for cs in [&mut caught, &mut behind] {
        let gap = String::from_utf8(b.take_gap(cs).unwrap()).unwrap();
        assert!(gap.contains("event: gap"), "{gap}");
        assert_eq!(cs.as_slice()[0].last_id, id(5_000));
        assert!(b.take_gap(cs).is_none(), "one gap only");
    }
    // A resume from below the mark gets a gap; from the mark, none.
    assert!(b
        .subscribe(ConnKey(3), &[a], &Resume::After(ids[2], String::new()))
        .gap
        .is_some());
    let c = b.subscribe(ConnKey(4), &[a], &Resume::After(id(5_000), String::new()));
    assert!(c.gap.is_none());
    // Later events arrive normally.
    let p = b.append(&[a], id(6_000), b"data: x\n\n").unwrap();
    assert_eq!(p.id, id(6_000));
    assert_eq!(ids_of(&b, &c.cursors), vec![id(6_000)]);
    assert!(!b.mark_lost(StreamIdx(99), id(1)), "unknown stream");
}

// ------------------------------------------------ memory and lifecycle

const SEC: u64 = 1_000_000;

fn big_broker(total: usize, ttl_us: u64, max_streams: usize) -> Broker {
    let mut b = Broker::new(
        1_000,
        Limits {
            history: 100,
            history_bytes: 1 << 20,
        },
        max_streams,
    );
    b.set_memory(total, ttl_us);
    b
}

fn publish_sized(
    b: &mut Broker,
    s: &[StreamIdx],
    len: usize,
    now: u64,
) -> Result<EventId, BrokerError> {
    b.publish(s, &crate::event::Event::new("x".repeat(len)), now)
        .map(|p| p.id)
}

/// The LRU list holds exactly the streams with history, and the total is
/// the sum of the rings.
fn check_accounting(b: &Broker) {
    let sum: usize = b.iter().map(|(_, s)| s.retained_bytes()).sum();
    assert_eq!(b.total_bytes(), sum);
    assert!(b.total_bytes() <= b.budget());
    let mut listed = Vec::new();
    let mut i = b.lru_head;
    let mut prev = NIL;
    while i != NIL {
        let s = b.get(i).expect("listed stream exists");
        assert!(s.in_lru);
        assert_eq!(s.lru_prev, prev);
        listed.push(i);
        prev = i;
        i = s.lru_next;
    }
    assert_eq!(b.lru_tail, prev);
    let mut with_history: Vec<StreamIdx> = b
        .iter()
        .filter(|(_, s)| s.retained() > 0)
        .map(|(i, _)| i)
        .collect();
    with_history.sort_unstable();
    listed.sort_unstable();
    assert_eq!(listed, with_history);
}

#[test]
fn cost_is_known_before_the_frame_is_built() {
    for len in [0, 1, 15, 16, 255, 256, 4095, 4096, 1 << 20, (1 << 20) + 7] {
        let f = Frame::new(id(1), &vec![b'x'; len]);
        assert_eq!(Frame::cost_for(len), f.cost(), "{len}");
    }
}

#[test]
fn budget_evicts_least_recently_published_or_read_first() {
    // Room for three 1000-byte events, not four.
    let one =
        Frame::cost_for(frame::encode_numbered(id(1_000), None, &"x".repeat(1000), None).len());
    let mut b = big_broker(3 * one + one / 2, 0, 10);
    let s = b.resolve(&["a", "b", "c", "d"], true).unwrap();
    let ids: Vec<EventId> = s
        .iter()
        .take(3)
        .map(|&t| publish_sized(&mut b, &[t], 1000, 1_000).unwrap())
        .collect();
    assert_eq!(b.total_bytes(), 3 * one);
    // Reading "a" makes it recent: "b" is now the least recently used.
    let reader = b.subscribe(ConnKey(9), &[s[0]], &Resume::Live);
    b.unsubscribe(ConnKey(9), &reader.cursors);
    publish_sized(&mut b, &[s[3]], 1000, 1_000).unwrap();
    assert_eq!(b.get(s[1]).unwrap().retained(), 0, "b was least recent");
    assert_eq!(b.get(s[0]).unwrap().retained(), 1);
    assert_eq!(b.get(s[2]).unwrap().retained(), 1);
    assert_eq!(b.get(s[3]).unwrap().retained(), 1);
    let life = b.lifecycle();
    assert_eq!(life.evicted_events, 1);
    assert_eq!(life.evicted_bytes, one as u64);
    check_accounting(&b);
    // A resume into "b" from before its evicted event is told so.
    let c = b.subscribe(
        ConnKey(10),
        &[s[1]],
        &Resume::After(ids[1].pred(), "r".into()),
    );
    assert!(c.gap.is_some());
    // Publishing to "c" makes it recent; "a" goes next.
    publish_sized(&mut b, &[s[2]], 1000, 1_000).unwrap();
    assert_eq!(b.get(s[0]).unwrap().retained(), 0);
    check_accounting(&b);
}

#[test]
fn a_lagging_subscriber_gets_a_gap_when_the_budget_evicts() {
    let one =
        Frame::cost_for(frame::encode_numbered(id(1_000), None, &"x".repeat(500), None).len());
    let mut b = big_broker(2 * one, 0, 10);
    let s = b.resolve(&["slow", "busy"], true).unwrap();
    let mut sub = b.subscribe(ConnKey(1), &[s[0]], &Resume::Live);
    publish_sized(&mut b, &[s[0]], 500, 1_000).unwrap();
    // The reader has not been sent it when another stream needs the room.
    publish_sized(&mut b, &[s[1]], 500, 1_000).unwrap();
    publish_sized(&mut b, &[s[1]], 500, 1_000).unwrap();
    assert_eq!(b.get(s[0]).unwrap().retained(), 0);
    let g = b.take_gap(&mut sub.cursors).expect("gap");
    assert!(String::from_utf8(g).unwrap().contains("\"slow\""));
    assert_eq!(b.merge(&sub.cursors).count(), 0);
    check_accounting(&b);
}

#[test]
fn events_over_a_bound_are_refused_and_never_kept() {
    let mut b = big_broker(8192, 0, 10);
    let s = b.resolve(&["a", "b", "c"], true).unwrap();
    // Over the budget alone.
    let e = publish_sized(&mut b, &[s[0]], 9000, 1_000).unwrap_err();
    assert!(matches!(e, BrokerError::TooLarge { .. }));
    assert!(
        e.message().contains("--history-total-bytes"),
        "{}",
        e.message()
    );
    // Fits once, not three times over.
    let e = publish_sized(&mut b, &s, 3000, 1_000).unwrap_err();
    assert!(
        matches!(e, BrokerError::TooLarge { limit: 8192, .. }),
        "{e:?}"
    );
    publish_sized(&mut b, &[s[0]], 3000, 1_000).unwrap();
    assert_eq!(b.lifecycle().refused_too_large, 2);
    assert_eq!(b.get(s[1]).unwrap().retained(), 0);
    check_accounting(&b);
    // Over --history-bytes: CR bytes become `data:` lines, and the encoded
    // size is what counts.
    let mut b = Broker::new(
        1,
        Limits {
            history: 10,
            history_bytes: 4096,
        },
        10,
    );
    let a = b.resolve(&["a"], true).unwrap()[0];
    let ev = crate::event::Event::new("\r".repeat(1000));
    let e = b.publish(&[a], &ev, 5).unwrap_err();
    match e {
        BrokerError::TooLarge { size, limit, .. } => {
            assert!(size > 6000, "{size}");
            assert_eq!(limit, 4096);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.message().contains("--history-bytes"));
    assert_eq!(b.get(a).unwrap().retained(), 0);
    assert_eq!(b.total_bytes(), 0);
}

#[test]
fn a_stream_with_no_readers_and_no_history_goes_with_its_last_reader() {
    let mut b = big_broker(1 << 20, 60 * SEC, 10);
    let s = b
        .resolve_as(&["empty", "kept"], Create::Subscriber(0))
        .unwrap();
    assert_eq!(b.unclaimed(), 2);
    let c1 = b.subscribe(ConnKey(1), &s, &Resume::Live);
    let c2 = b.subscribe(ConnKey(2), &[s[0]], &Resume::Live);
    b.resolve(&["kept"], true).unwrap();
    let id = publish_sized(&mut b, &[s[1]], 10, 2_000).unwrap();
    b.unsubscribe(ConnKey(1), &c1.cursors);
    assert!(b.find("empty").is_some(), "still read by 2");
    b.unsubscribe(ConnKey(2), &c2.cursors);
    assert!(b.find("empty").is_none());
    assert!(b.find("kept").is_some(), "it holds history");
    assert_eq!(b.lifecycle().dropped_empty, 1);
    assert_eq!(b.len(), 1);
    assert_eq!(b.unclaimed(), 0);
    // Kept until the TTL, counted from its last reader leaving.
    b.tick(30 * SEC);
    assert!(b.expire(59 * SEC, 100));
    assert!(b.find("kept").is_some());
    b.expire(100 * SEC, 100);
    assert!(b.find("kept").is_none());
    assert_eq!(b.lifecycle().expired, 1);
    assert_eq!(b.total_bytes(), 0);
    check_accounting(&b);
    // Its tombstone keeps a resume honest.
    let s2 = b.resolve_as(&["kept"], Create::Subscriber(0)).unwrap();
    let c = b.subscribe(ConnKey(3), &s2, &Resume::After(id.pred(), "k".into()));
    assert!(c.gap.is_some());
}

#[test]
fn a_read_stream_never_expires_and_a_read_restarts_the_ttl() {
    let mut b = big_broker(1 << 20, 10 * SEC, 10);
    let s = b.resolve(&["r", "q"], true).unwrap();
    publish_sized(&mut b, &[s[0]], 10, SEC).unwrap();
    publish_sized(&mut b, &[s[1]], 10, SEC).unwrap();
    let c = b.subscribe(ConnKey(1), &[s[0]], &Resume::Live);
    b.expire(100 * SEC, 100);
    assert!(b.find("r").is_some(), "it has a reader");
    assert!(b.find("q").is_none());
    b.unsubscribe(ConnKey(1), &c.cursors);
    b.expire(105 * SEC, 100);
    assert!(
        b.find("r").is_some(),
        "the TTL runs from the reader leaving"
    );
    b.expire(111 * SEC, 100);
    assert!(b.find("r").is_none());
}

#[test]
fn expire_works_in_slices() {
    let mut b = big_broker(1 << 20, SEC, 100);
    let names: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let s = b.resolve(&refs, true).unwrap();
    for &t in &s {
        publish_sized(&mut b, &[t], 10, 1_000).unwrap();
    }
    let mut calls = 1;
    assert!(!b.expire(10 * SEC, 3));
    assert_eq!(b.len(), 7, "one slice, three slots");
    while !b.expire(10 * SEC, 3) {
        calls += 1;
    }
    assert!(calls >= 3);
    assert_eq!(b.len(), 0);
    assert_eq!(b.lifecycle().expired, 10);
}

#[test]
fn ttl_zero_never_expires_but_empty_streams_still_go() {
    let mut b = big_broker(1 << 20, 0, 10);
    let s = b.resolve(&["full", "hollow"], true).unwrap();
    publish_sized(&mut b, &[s[0]], 10, 1_000).unwrap();
    b.expire(u64::MAX / 2, 100);
    assert!(b.find("full").is_some());
    assert!(
        b.find("hollow").is_none(),
        "a publisher's empty stream nobody reads"
    );
}

#[test]
fn explicit_streams_are_kept_while_empty_until_the_ttl() {
    let mut b = big_broker(1 << 20, 10 * SEC, 10);
    assert!(b.create("made").unwrap().1);
    let (idx, created) = b.create("made").unwrap();
    assert!(!created);
    assert_eq!(b.get(idx).unwrap().claim, Claim::Explicit);
    let c = b.subscribe(ConnKey(1), &[idx], &Resume::Live);
    b.unsubscribe(ConnKey(1), &c.cursors);
    b.expire(5 * SEC, 100);
    assert!(b.find("made").is_some());
    b.expire(20 * SEC, 100);
    assert!(b.find("made").is_none());
    assert_eq!(b.create("bad name"), Err(BrokerError::BadName));
}

#[test]
fn subscribers_cannot_use_up_the_publishers_pool() {
    let mut b = big_broker(1 << 20, 0, 3);
    let subs = b
        .resolve_as(&["x1", "x2", "x3"], Create::Subscriber(0))
        .unwrap();
    let _c = b.subscribe(ConnKey(1), &subs, &Resume::Live);
    assert_eq!(
        b.resolve_as(&["x4"], Create::Subscriber(0)),
        Err((0, BrokerError::TooManyUnclaimed))
    );
    // An authorised publisher still creates, and claims a subscriber's
    // stream into its own pool.
    let p = b.resolve_as(&["news", "x1"], Create::Publisher).unwrap();
    assert_eq!(b.get(p[1]).unwrap().claim, Claim::Publisher);
    assert_eq!(b.unclaimed(), 2);
    // With x1 claimed, the subscribers have room again.
    b.resolve_as(&["x4"], Create::Subscriber(0)).unwrap();
    // The publishers' pool has its own bound.
    b.resolve(&["p3"], true).unwrap();
    assert_eq!(b.resolve(&["p4"], true), Err((0, BrokerError::TooMany)));
    // ...and a refused request claimed nothing.
    assert_eq!(
        b.resolve_as(&["x2", "p4"], Create::Publisher),
        Err((0, BrokerError::TooMany))
    );
    assert_eq!(b.get(subs[1]).unwrap().claim, Claim::Subscribers);
    assert_eq!(
        b.resolve_as(&["nope"], Create::No),
        Err((0, BrokerError::NotFound))
    );
}

#[test]
fn one_address_holds_at_most_its_share_of_the_subscribers_pool() {
    // 1024 streams: an address may make 128 only subscribers asked for.
    let mut b = big_broker(1 << 20, 0, 1024);
    assert_eq!(unclaimed_share(1024), 128);
    assert_eq!(unclaimed_share(16), MIN_UNCLAIMED_SHARE);
    let (one, two): (PeerKey, PeerKey) = (1, 7);
    let mut held = Vec::new();
    for i in 0..8 {
        let names: Vec<String> = (0..16).map(|j| format!("a{i}-{j}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        held.extend(b.resolve_as(&refs, Create::Subscriber(one)).unwrap());
    }
    assert_eq!(b.unclaimed_by(one), 128);
    // One more new name is refused, all or nothing; existing ones are not.
    assert_eq!(
        b.resolve_as(&["a0-0", "fresh"], Create::Subscriber(one)),
        Err((1, BrokerError::TooManyUnclaimedHere { limit: 128 }))
    );
    assert!(b.find("fresh").is_none());
    b.resolve_as(&["a0-0", "a7-15"], Create::Subscriber(one))
        .unwrap();
    let msg = BrokerError::TooManyUnclaimedHere { limit: 128 }.message();
    assert!(
        msg.contains("--max-streams") && msg.contains("128"),
        "{msg}"
    );
    // Another address has a share of its own, and reading another
    // address's stream costs nothing.
    b.resolve_as(&["b1", "a1-1"], Create::Subscriber(two))
        .unwrap();
    assert_eq!((b.unclaimed_by(one), b.unclaimed_by(two)), (128, 1));
    // A publisher claiming one gives its maker room back...
    b.resolve_as(&["a0-0"], Create::Publisher).unwrap();
    assert_eq!(b.unclaimed_by(one), 127);
    b.resolve_as(&["fresh"], Create::Subscriber(one)).unwrap();
    // ...and so does a stream dropped when its last reader leaves.
    let c = b.subscribe(ConnKey(1), &held[1..2], &Resume::Live);
    b.unsubscribe(ConnKey(1), &c.cursors);
    assert_eq!(b.unclaimed_by(one), 127);
    assert_eq!(b.unclaimed(), 127 + 1);
}

#[test]
fn a_failed_publish_leaves_no_stream_behind() {
    let mut b = big_broker(8192, 0, 10);
    let s = b.resolve(&["new"], true).unwrap();
    assert!(publish_sized(&mut b, &s, 10_000, 1_000).is_err());
    b.discard_unused(s[0]);
    assert!(b.find("new").is_none());
    assert_eq!(b.len(), 0);
    // A used stream is not discarded.
    let s = b.resolve(&["used"], true).unwrap();
    publish_sized(&mut b, &s, 10, 1_000).unwrap();
    b.discard_unused(s[0]);
    assert!(b.find("used").is_some());
}

#[test]
fn tombstones_are_bounded_and_forgetting_stays_honest() {
    let mut b = big_broker(64 << 20, SEC, 10);
    let first = b.resolve(&["t0"], true).unwrap();
    let id0 = publish_sized(&mut b, &first, 1, 1_000).unwrap();
    b.delete(first[0]);
    for i in 1..(MAX_TOMBSTONES + 100) {
        let n = format!("t{i}");
        let s = b.resolve(&[n.as_str()], true).unwrap();
        publish_sized(&mut b, &s, 1, 1_000).unwrap();
        b.delete(s[0]);
        assert!(b.tombstones() <= MAX_TOMBSTONES);
    }
    // t0's tombstone was forgotten; a resume into it still gets a gap.
    let s = b.resolve_as(&["t0"], Create::Subscriber(0)).unwrap();
    let c = b.subscribe(ConnKey(1), &s, &Resume::After(id0.pred(), String::new()));
    assert!(c.gap.is_some());
}

/// Random publishes, reads, deletes and expiries keep the accounting
/// exact and the total within the budget.
#[test]
fn model_budget_accounting_holds() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    let mut rng = SmallRng::seed_from_u64(0xb0d9e7);
    for _ in 0..50 {
        let mut b = Broker::new(
            1_000,
            Limits {
                history: rng.gen_range(1..8),
                history_bytes: rng.gen_range(200..2000),
            },
            8,
        );
        b.set_memory(rng.gen_range(300..5000), rng.gen_range(0..5) * SEC);
        let mut now = 1_000u64;
        let mut held: Vec<(ConnKey, Cursors)> = Vec::new();
        for step in 0..300u32 {
            now += rng.gen_range(0..SEC / 2);
            let name = format!("s{}", rng.gen_range(0..12));
            match rng.gen_range(0..10) {
                0..=4 => {
                    if let Ok(t) = b.resolve(&[name.as_str()], true) {
                        let _ = publish_sized(&mut b, &t, rng.gen_range(0..600), now);
                    }
                }
                5 | 6 => {
                    if let Ok(t) = b.resolve_as(&[name.as_str()], Create::Subscriber(0)) {
                        let c = b.subscribe(
                            ConnKey(step),
                            &t,
                            &Resume::After(EventId::NONE, String::new()),
                        );
                        held.push((ConnKey(step), c.cursors));
                    }
                }
                7 if !held.is_empty() => {
                    let (k, c) = held.swap_remove(rng.gen_range(0..held.len()));
                    b.unsubscribe(k, &c);
                }
                8 => {
                    b.expire(now, rng.gen_range(1..20));
                }
                _ => {
                    if let Some(i) = b.find(&name) {
                        if b.get(i).is_some_and(|s| s.subs.is_empty()) {
                            b.delete(i);
                        }
                    }
                }
            }
            check_accounting(&b);
            assert_eq!(
                b.unclaimed(),
                b.iter()
                    .filter(|(_, s)| !s.internal && s.claim == Claim::Subscribers)
                    .count()
            );
        }
    }
}

#[test]
fn lost_below_gaps_older_resumes_only() {
    let mut b = broker(10);
    let a = b.resolve(&["a"], true).unwrap()[0];
    let ids: Vec<EventId> = (0..4).map(|_| publish(&mut b, &[a], 1_000)).collect();
    b.mark_lost_below(ids[2]);
    let c = b.subscribe(ConnKey(1), &[a], &Resume::After(ids[1], String::new()));
    assert!(c.gap.is_some());
    assert_eq!(ids_of(&b, &c.cursors), ids[2..].to_vec());
    let c = b.subscribe(ConnKey(2), &[a], &Resume::After(ids[2], String::new()));
    assert!(c.gap.is_none());
    assert_eq!(ids_of(&b, &c.cursors), ids[3..].to_vec());
    let c = b.subscribe(ConnKey(3), &[a], &Resume::Live);
    assert!(c.gap.is_none());
}

#[test]
fn retains_and_restore() {
    let mut b = Broker::new(
        1,
        Limits {
            history: 2,
            history_bytes: 1 << 20,
        },
        1,
    );
    let a = b.restore("a", None);
    // Past --max-streams: a restored stream still comes back.
    let z = b.restore("z", None);
    assert_ne!(a, z);
    assert_eq!(b.len(), 2);
    assert!(b.resolve(&["y"], true).is_err());
    let i = b.restore("!member/m", None);
    assert!(b.get(i).unwrap().internal);
    // A Mercure topic outside the `/events` alphabet was public.
    let q = b.restore("https://e.com/b/1?lang=fr", None);
    assert!(!b.get(q).unwrap().internal);
    let ids: Vec<EventId> = (0..3).map(|_| publish(&mut b, &[a], 10)).collect();
    assert!(!b.retains("a", ids[0]));
    assert!(b.retains("a", ids[1]) && b.retains("a", ids[2]));
    assert!(!b.retains("z", ids[2]));
    assert!(!b.retains("nope", ids[2]));
    b.observe_id(id(1_000_000));
    assert_eq!(b.ids().last(), id(1_000_000));
}

#[test]
fn private_frames_reach_only_cursors_that_may_see_them() {
    let mut b = broker(3);
    let a = b.resolve(&["a"], true).unwrap()[0];
    let mut anon = b.subscribe(ConnKey(1), &[a], &Resume::Live).cursors;
    let mut authed = b
        .subscribe_as(ConnKey(2), &[a], &[true], &Resume::Live)
        .cursors;
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
    let c = b.subscribe(ConnKey(3), &[a], &Resume::After(pub1, pub1.to_string()));
    assert!(c.gap.is_none());
    let c = b.subscribe_as(
        ConnKey(4),
        &[a],
        &[true],
        &Resume::After(pub1, pub1.to_string()),
    );
    assert!(c.gap.is_some());
}

#[test]
fn a_private_frame_on_two_streams_comes_through_the_one_that_may_see_it() {
    let mut b = broker(10);
    let x = b.resolve(&["x", "y"], true).unwrap();
    let c = b.subscribe_as(ConnKey(1), &x, &[false, true], &Resume::Live);
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
    let s = b.selector_stream(&sel, None).unwrap();
    assert_eq!(
        b.selector_stream(&sel, None).unwrap(),
        s,
        "one ring per selector"
    );
    assert!(b.get(s).unwrap().internal);
    let c = b.subscribe(ConnKey(1), &[s], &Resume::Live);
    let later = b.resolve(&["/books/2", "/other"], true).unwrap();
    let i1 = publish(&mut b, &[later[0]], 5);
    let _i2 = publish(&mut b, &[later[1]], 5);
    let i3 = publish(&mut b, &later, 5);
    assert_eq!(ids_of(&b, &c.cursors), vec![i1, i3]);
    // Made after them, it was rebuilt from the history of the topics it
    // matches: a resume from before it was made is exact.
    let c = b.subscribe(ConnKey(2), &[s], &Resume::After(before, before.to_string()));
    assert!(c.gap.is_none());
    assert_eq!(ids_of(&b, &c.cursors), vec![before.succ(), i1, i3]);
    let c = b.subscribe(ConnKey(2), &[s], &Resume::Earliest);
    assert!(c.gap.is_none());
    assert_eq!(ids_of(&b, &c.cursors), vec![before, before.succ(), i1, i3]);
    // Deleting a selector stream unregisters it.
    b.delete(s);
    publish(&mut b, &[later[0]], 5);
    assert!(b.get(s).is_none_or(|st| st.name.as_ref() != "/books/{id}"));
}

fn sel(s: &str) -> crate::auth::Selector {
    crate::auth::Selector::parse(s).unwrap()
}

/// (id, private) of every frame a subscriber of `s` resuming after `x`
/// gets, and whether it gets a gap.
fn resumed(b: &mut Broker, s: StreamIdx, x: EventId, sees: bool) -> (Vec<(EventId, bool)>, bool) {
    let c = b.subscribe_as(ConnKey(99), &[s], &[sees], &Resume::After(x, x.to_string()));
    let got = b.merge(&c.cursors).map(|f| (f.id, f.private)).collect();
    b.unsubscribe(ConnKey(99), &c.cursors);
    (got, c.gap.is_some())
}

#[test]
fn a_selector_stream_is_rebuilt_from_its_topics_history() {
    let mut b = broker(10);
    let t = b.resolve(&["/b/1", "/b/2", "/c/1"], true).unwrap();
    let (b1, b2, c1) = (t[0], t[1], t[2]);
    let e1 = publish(&mut b, &[b1], 5);
    let e2 = publish(&mut b, &[c1], 5);
    let e3 = publish_private(&mut b, &[b2], 5, true);
    // One event on two matching topics: one frame.
    let e4 = publish(&mut b, &[b1, b2], 5);
    let e5 = publish(&mut b, &[b2, c1], 5);
    let bytes = b.total_bytes();
    let s = b.selector_stream(&sel("/b/{x}"), None).unwrap();
    let st = b.get(s).unwrap();
    assert_eq!(st.retained(), 4, "e1, e3, e4, e5");
    assert_eq!(st.last_id, e5);
    assert_eq!(b.total_bytes() - bytes, 4 * topics::ENTRY_BYTES, "places");
    // In id order, each once, private kept; nothing from /c/1 alone.
    assert_eq!(
        resumed(&mut b, s, e1, true),
        (vec![(e3, true), (e4, false), (e5, false)], false)
    );
    assert_eq!(
        resumed(&mut b, s, e1, false),
        (vec![(e4, false), (e5, false)], false)
    );
    assert_eq!(resumed(&mut b, s, e2, true).0[0], (e3, true));
    // A later event enters it once, after the rebuilt ones.
    let e6 = publish(&mut b, &[b1, b2], 5);
    assert_eq!(resumed(&mut b, s, e5, true), (vec![(e6, false)], false));
    // `*` holds everything.
    let any = b.selector_stream(&sel("*"), None).unwrap();
    assert_eq!(b.get(any).unwrap().retained(), 6);
}

#[test]
fn a_rebuilt_selector_stream_knows_what_its_topics_lost() {
    // Rings of three: the selector's own ring keeps the newest three of
    // the five events its topics retain.
    let mut b = broker(3);
    let t = b.resolve(&["/b/1", "/b/2", "/z"], true).unwrap();
    // So the ids below are ones this clock handed out.
    publish(&mut b, &[t[2]], 5);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(publish(&mut b, &[t[0]], 5));
        if i < 2 {
            // Private ones on /b/2: left out of the selector's ring, they
            // are no loss to a reader that may not see them.
            ids.push(publish_private(&mut b, &[t[1]], 5, true));
        }
    }
    // ids: p0 x0 p1 x1 p2 (p: public on /b/1, x: private on /b/2).
    let s = b.selector_stream(&sel("/b/{x}"), None).unwrap();
    let all = b.subscribe_as(ConnKey(1), &[s], &[true], &Resume::Earliest);
    let kept = ids_of(&b, &all.cursors);
    assert_eq!(kept, ids[2..].to_vec());
    // Private reader: from before the ring's oldest, a gap.
    assert!(resumed(&mut b, s, ids[1].pred(), true).1);
    assert!(!resumed(&mut b, s, ids[1], true).1);
    // Public reader: the newest public frame left out is ids[0].
    assert!(resumed(&mut b, s, ids[0].pred(), false).1);
    assert_eq!(
        resumed(&mut b, s, ids[0], false),
        (vec![(ids[2], false), (ids[4], false)], false)
    );
    // A matching topic's eviction is the selector's loss too.
    let mut b = broker(2);
    let x = b.resolve(&["/b/1"], true).unwrap()[0];
    let z = b.resolve(&["/z"], true).unwrap()[0];
    publish(&mut b, &[z], 5);
    let first = publish(&mut b, &[x], 5);
    let rest: Vec<EventId> = (0..2).map(|_| publish(&mut b, &[x], 5)).collect();
    let s = b.selector_stream(&sel("/b/{x}"), None).unwrap();
    assert!(resumed(&mut b, s, first.pred(), false).1);
    assert_eq!(
        resumed(&mut b, s, first, false),
        (rest.iter().map(|&i| (i, false)).collect(), false)
    );
    // And a dropped matching topic's tombstone, as for its own readers.
    let gone = b.resolve(&["/b/gone"], true).unwrap()[0];
    let g = publish(&mut b, &[gone], 5);
    b.delete(gone);
    b.delete(s);
    assert!(b.selector_lost_after(&sel("/b/{y}"), g.pred(), false));
    assert!(!b.selector_lost_after(&sel("/b/{y}"), g, false));
    let s = b.selector_stream(&sel("/b/{y}"), None).unwrap();
    assert!(resumed(&mut b, s, g.pred(), false).1);
    assert!(!resumed(&mut b, s, g, false).1);
    assert!(!b.selector_lost_after(&sel("/c/{y}"), g.pred(), false));
}

#[test]
fn topics_this_node_lacks_are_held_when_a_selector_wants_them() {
    let mut b = broker(10);
    assert_eq!(
        b.hold_for_selectors("/b/1", EventId::new(1)),
        None,
        "no selector"
    );
    let s = b.selector_stream(&sel("/b/{x}"), None).unwrap();
    let runs = b.selector_matches_run();
    assert_eq!(b.hold_for_selectors("/c/1", EventId::new(1)), None);
    assert_eq!(b.hold_for_selectors("/c/1", EventId::new(1)), None);
    assert_eq!(b.selector_matches_run() - runs, 1, "a miss is remembered");
    assert_eq!(
        b.hold_for_selectors("!member/m", EventId::new(1)),
        None,
        "internal"
    );
    assert_eq!(b.find("/c/1"), None);
    let h = b.hold_for_selectors("/b/1", EventId::new(1)).unwrap();
    assert_eq!(b.find_public("/b/1"), Some(h));
    assert_eq!(b.get(h).unwrap().claim, Claim::Publisher);
    // A selector made later is matched against a remembered miss.
    let c = b.selector_stream(&sel("/c/{x}"), None).unwrap();
    assert!(b.hold_for_selectors("/c/1", EventId::new(1)).is_some());
    // An event entering only the selector streams (its topic loads its
    // history first), then the topic: each selector stream has it once.
    let cur = b.subscribe(ConnKey(1), &[s, c], &Resume::Live);
    let t = [h, b.find("/c/1").unwrap()];
    let id = EventId::new(b.ids().last().get() + 10);
    let sse = frame::encode_numbered(id, None, "x", None);
    assert_eq!(b.append_selectors(&t, id, &sse, false), (true, false));
    assert_eq!(b.get(h).unwrap().retained(), 0, "not the topic yet");
    assert_eq!(b.append_selectors(&t, id, &sse, false), (false, false));
    b.append(&t, id, &sse).unwrap();
    assert_eq!(b.get(h).unwrap().retained(), 1);
    assert_eq!(ids_of(&b, &cur.cursors), vec![id]);
    assert_eq!(b.get(s).unwrap().retained(), 1);
    assert_eq!(b.get(c).unwrap().retained(), 1);
    assert_eq!(b.published, 1, "published once");
}

#[cfg(feature = "mercure")]
#[test]
fn a_rebuild_matches_a_bounded_number_of_streams_newest_first() {
    let mut b = Broker::new(
        1_000,
        Limits {
            history: 1000,
            history_bytes: 1 << 20,
        },
        10_000,
    );
    let hub = crate::auth::url::Url::parse("https://h.example/.well-known/mercure", None).unwrap();
    let p = crate::auth::Selector::url_pattern("https://e.com/b/:id", Some(&hub)).unwrap();
    let budget = REBUILD_MATCH_BUDGET / p.match_cost();
    let n = budget + 40;
    let mut ids = Vec::new();
    for i in 0..n {
        let t = b
            .resolve(&[format!("https://e.com/b/{i}").as_str()], true)
            .unwrap();
        ids.push(publish(&mut b, &t, 5));
    }
    let runs = b.selector_matches_run();
    let s = b.selector_stream(&p, None).unwrap();
    assert_eq!(b.selector_matches_run() - runs, budget as u64);
    // The newest `budget` streams were matched and their events rebuilt;
    // the 40 oldest were not, so a resume from before them is a gap.
    assert_eq!(b.get(s).unwrap().retained(), budget);
    let unseen = ids[39];
    assert!(resumed(&mut b, s, unseen.pred(), false).1);
    let (got, gap) = resumed(&mut b, s, unseen, false);
    assert!(!gap);
    assert_eq!(got.len(), budget);
    assert!(b.selector_lost_after(&p, unseen.pred(), false));
}

#[cfg(feature = "mercure")]
#[test]
fn a_gap_names_what_the_subscriber_asked_for() {
    let mut b = broker(10);
    let hub =
        crate::auth::url::Url::parse("https://hub.example/.well-known/mercure", None).unwrap();
    let p = crate::auth::Selector::url_pattern("/books/:id", Some(&hub)).unwrap();
    assert!(p.as_str().starts_with('}'));
    let s = b.selector_stream(&p, None).unwrap();
    let c = b.subscribe(ConnKey(1), &[s], &Resume::Unparsable("nope".into()));
    let gap = String::from_utf8(c.gap.unwrap()).unwrap();
    assert_eq!(
        gap,
        "event: gap\ndata: {\"last_event_id\":\"nope\",\"streams\":[\"/books/:id\"]}\n\n"
    );
}

#[test]
fn aliases_are_bounded_and_newest_wins() {
    let mut b = broker(10);
    b.alias("urn:a", id(5), false);
    b.alias("urn:a", id(6), false);
    assert_eq!(b.alias_id("urn:a", false), Some(id(6)));
    b.alias("urn:p", id(7), true);
    assert_eq!(b.alias_id("urn:p", false), None, "private: as if unknown");
    assert_eq!(b.alias_id("urn:p", true), Some(id(7)));
    for i in 0..MAX_ALIASES as u64 {
        b.alias(&format!("k{i}"), id(i), false);
    }
    assert_eq!(b.alias_id("urn:a", false), None);
    assert_eq!(b.alias_id("k0", false), Some(id(0)));
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
    let i = b.resolve_topics(&[t], Create::Publisher).unwrap();
    assert_eq!(
        b.resolve(&[t], false).unwrap(),
        i,
        "but reads an existing topic"
    );
}

#[test]
fn selector_fan_in_matches_each_topic_once() {
    let mut b = broker(10);
    let t = b.resolve(&["/u/m/aaaa"], true).unwrap()[0];
    let other = b.resolve(&["/v"], true).unwrap()[0];
    let mut sels = Vec::new();
    for i in 0..64 {
        // Two spellings per key: one match serves both.
        let v = if i % 2 == 0 { "{a}" } else { "{b}" };
        let sel =
            crate::auth::Selector::parse(&format!("/u/m/{}{v}", "{x}".repeat(i / 2 % 4))).unwrap();
        let ip: PeerKey = 10 + (i % 8) as u128;
        if let Ok(s) = b.selector_stream(&sel, Some(ip)) {
            if !sels.contains(&s) {
                sels.push(s);
            }
        }
    }
    let n = sels.len();
    assert_eq!(n, 8, "4 keys x 2 spellings");
    let c = b.subscribe(ConnKey(1), &sels, &Resume::Live);
    let before = b.selector_matches_run();
    let id = publish(&mut b, &[t], 5);
    assert_eq!(b.selector_matches_run() - before, 4, "one match per key");
    for _ in 0..10 {
        publish(&mut b, &[t], 5);
        publish(&mut b, &[other], 5);
    }
    assert_eq!(
        b.selector_matches_run() - before,
        8,
        "later publishes are served from the cache"
    );
    // Every selector stream got every event of its topic, once.
    for &s in &sels {
        assert_eq!(b.get(s).unwrap().published, 10 + 1, "{s:?}");
    }
    assert!(ids_of(&b, &c.cursors).iter().all(|&i| i >= id));
    // A new selector is matched against every stream with history once
    // when made (it is rebuilt from the ten `t` retains), and against the
    // topic once more, on its next publish.
    let late = crate::auth::Selector::parse("/u/{y}/aaaa").unwrap();
    let before = b.selector_matches_run();
    let ls = b.selector_stream(&late, None).unwrap();
    assert_eq!(b.selector_matches_run() - before, 2, "t and other");
    assert_eq!(b.get(ls).unwrap().retained(), 10);
    let _c2 = b.subscribe(ConnKey(2), &[ls], &Resume::Live);
    let before = b.selector_matches_run();
    publish(&mut b, &[t], 5);
    publish(&mut b, &[t], 5);
    assert_eq!(b.selector_matches_run() - before, 1);
    assert_eq!(b.get(ls).unwrap().published, 10 + 2);
}

#[test]
fn selector_key_numbers_are_shared_then_reused_without_mixing_results() {
    let mut b = broker(10);
    let sel = |s: &str| crate::auth::Selector::parse(s).unwrap();
    let sa = b.selector_stream(&sel("/k/{x}"), None).unwrap();
    let sb = b.selector_stream(&sel("/k/{y}"), None).unwrap();
    assert_ne!(sa, sb, "two spellings, two streams");
    let cb = b.subscribe(ConnKey(1), &[sb], &Resume::Live);
    // The key outlives one of its holders: a new key gets its own number
    // (sharing sb's would hand sb's answer to it, or its answer to sb).
    b.delete(sa);
    let sc = b.selector_stream(&sel("/k/{x}/z"), None).unwrap();
    let cc = b.subscribe(ConnKey(2), &[sc], &Resume::Live);
    let t = b.resolve(&["/k/1", "/k/3/z"], true).unwrap();
    let before = b.selector_matches_run();
    let i1 = publish(&mut b, &t[..1], 5);
    let i2 = publish(&mut b, &t[1..], 5);
    assert_eq!(b.selector_matches_run() - before, 4);
    assert_eq!(ids_of(&b, &cb.cursors), vec![i1]);
    assert_eq!(ids_of(&b, &cc.cursors), vec![i2]);
    // Its last holder gone, the number goes to the next new key, which
    // gets its own answers, not the old key's.
    b.unsubscribe(ConnKey(1), &cb.cursors);
    b.delete(sb);
    let sd = b.selector_stream(&sel("/k/{x}/y"), None).unwrap();
    let cd = b.subscribe(ConnKey(3), &[sd], &Resume::Live);
    let t2 = b.resolve(&["/k/2", "/k/4/y"], true).unwrap();
    publish(&mut b, &t2[..1], 5);
    let i4 = publish(&mut b, &t2[1..], 5);
    assert_eq!(ids_of(&b, &cd.cursors), vec![i4]);
    assert_eq!(ids_of(&b, &cc.cursors), vec![i2]);
}

#[test]
fn anonymous_selectors_come_from_per_peer_pools() {
    use super::topics::SelectorsFull;
    let mut b = broker(10);
    let ip = |n: u8| Some(n as PeerKey);
    let sel = |i: usize| crate::auth::Selector::parse(&format!("/t/{i}/{{x}}")).unwrap();
    let mut held = Vec::new();
    for i in 0..MAX_ANON_SELECTORS_PER_PEER {
        let s = b.selector_stream(&sel(i), ip(1)).unwrap();
        held.push(s);
    }
    let c = b.subscribe(ConnKey(1), &held, &Resume::Live);
    assert_eq!(
        b.selector_stream(&sel(1000), ip(1)),
        Err(BrokerError::TooManySelectors(SelectorsFull::Peer))
    );
    let e = BrokerError::TooManySelectors(SelectorsFull::Peer);
    assert!(!e.message().contains("--max-streams"), "{}", e.message());
    // Another address, a token holder, and `*` still get theirs.
    assert!(b.selector_stream(&sel(1001), ip(2)).is_ok());
    assert!(b.selector_stream(&sel(1002), None).is_ok());
    assert!(b
        .selector_stream(&crate::auth::Selector::parse("*").unwrap(), ip(1))
        .is_ok());
    // Once its subscriber leaves, the address's unread streams make room.
    b.unsubscribe(ConnKey(1), &c.cursors);
    assert!(b.selector_stream(&sel(1000), ip(1)).is_ok());
    // The anonymous pool as a whole is bounded too.
    let (mut n, mut refused) = (0, 0);
    for p in 3..=255u8 {
        for i in 0..MAX_ANON_SELECTORS_PER_PEER {
            match b.selector_stream(&sel(p as usize * 100 + i + 5000), ip(p)) {
                Ok(s) => {
                    b.subscribe(ConnKey(9), &[s], &Resume::Live);
                    n += 1;
                }
                Err(e) => {
                    assert_eq!(e, BrokerError::TooManySelectors(SelectorsFull::Anonymous));
                    refused += 1;
                }
            }
        }
    }
    // Unread ones were dropped to make room; read ones never.
    assert!(
        n <= MAX_ANON_SELECTOR_STREAMS && refused > 0,
        "{n} {refused}"
    );
    assert!(
        b.selector_stream(&sel(99_999), None).is_ok(),
        "token holders keep room"
    );
}

#[test]
fn selector_streams_cost_a_place_not_a_copy() {
    let mut b = Broker::new(
        1_000,
        Limits {
            history: 1000,
            history_bytes: 1 << 20,
        },
        100,
    );
    b.set_memory(8 << 20, 0);
    let victim = b.resolve(&["victim"], true).unwrap()[0];
    for _ in 0..1000 {
        publish_sized(&mut b, &[victim], 1000, 2_000).unwrap();
    }
    let hot = b.resolve(&["/u/m/x"], true).unwrap()[0];
    let mut sels = Vec::new();
    for i in 0..MAX_SELECTOR_STREAMS {
        let sel = crate::auth::Selector::parse(&format!("/u/{{a}}/{{b}}{}", "{c}".repeat(i % 2)))
            .unwrap();
        let sel = if i < 2 {
            sel
        } else {
            crate::auth::Selector::parse(&format!("/u/{{a{i}}}/x")).unwrap()
        };
        sels.push(b.selector_stream(&sel, None).unwrap());
    }
    let _c = b.subscribe(ConnKey(1), &sels, &Resume::Live);
    let before = b.total_bytes();
    for _ in 0..20 {
        publish_sized(&mut b, &[hot], 4096, 3_000).unwrap();
    }
    let grew = b.total_bytes() - before;
    // 20 frames once, plus one entry per selector stream and frame.
    assert!(
        grew <= 20 * (4200 + MAX_SELECTOR_STREAMS * topics::ENTRY_BYTES),
        "{grew}"
    );
    assert_eq!(
        b.get(victim).unwrap().retained(),
        1000,
        "the victim kept its history"
    );
    assert_eq!(b.lifecycle().evicted_events, 0);
    // A large event is checked against the budget once, not once per
    // selector (it used to be 300 KiB x 1,025 > 256 MiB: 413).
    let mut b2 = Broker::new(
        1_000,
        Limits {
            history: 1000,
            history_bytes: 1 << 20,
        },
        100,
    );
    let hot2 = b2.resolve(&["/u/m/x"], true).unwrap()[0];
    for i in 0..MAX_SELECTOR_STREAMS {
        let sel = crate::auth::Selector::parse(&format!("/u/{{a{i}}}/x")).unwrap();
        b2.selector_stream(&sel, None).unwrap();
    }
    publish_sized(&mut b2, &[hot2], 300 << 10, 2_000).unwrap();
    // When the budget evicts a frame, selector streams drop it too: they
    // never hold what no published-to stream holds.
    b2.set_memory(64 << 10, 0);
    assert_eq!(b2.get(hot2).unwrap().retained(), 0);
    for i in b2.topics.streams().collect::<Vec<_>>() {
        assert_eq!(b2.get(i).unwrap().retained(), 0, "selector stream {i:?}");
    }
    assert_eq!(b2.total_bytes(), 0);
}

/// The memory account's `selectors` kind: what a selector stream would
/// cost is known before it is made, the registry's bytes grow by about
/// that when it is, a longer template costs more, publishes fill the
/// match cache (counted), and deleting the stream gives its entry back.
#[test]
fn selector_bytes_follow_the_registry() {
    let mut b = broker(10);
    let sel = |t: &str| crate::auth::Selector::parse(t).unwrap();
    let empty = b.selector_bytes();
    let short = sel("/a/{x}");
    let long = sel(&format!("/{}/{{x}}/{{y}}", "l".repeat(900)));
    let (c_short, c_long) = (b.selector_cost(&short), b.selector_cost(&long));
    assert!(
        c_short > std::mem::size_of::<super::ring::Stream>(),
        "{c_short}"
    );
    // The text, its key and the compiled literals each hold it once.
    assert!(c_long > c_short + 3 * 900, "{c_long} vs {c_short}");
    let i = b.selector_stream(&long, None).unwrap();
    let grown = b.selector_bytes() - empty;
    // Entries and hash slots are counted by capacity: the first ones
    // allocate room for a few.
    assert!(
        grown >= c_long / 2 && grown <= 4 * c_long,
        "{grown} vs {c_long}"
    );
    assert_eq!(b.selector_cost(&long), 0, "made: costs nothing more");
    assert!(b.selector_cost(&short) > 0);
    let before = b.selector_bytes();
    let topic = format!("/{}/1/2", "l".repeat(900));
    let t = b.resolve_topics(&[&topic], Create::Publisher).unwrap();
    publish(&mut b, &t, 1);
    let cached = b.selector_bytes();
    assert!(cached > before, "the cache counts: {cached} vs {before}");
    b.delete(i);
    let after = b.selector_bytes();
    assert!(cached - after >= 3 * 900, "{after} vs {cached}");
}

/// With a bus, events of topics this node does not hold never come here:
/// a selector stream made after one counts everything up to it lost
/// (`note_unheld`), before and after it is made, keeps nothing at or below
/// it (it would come again after the gap) and places a live reader above
/// it; the topic's own readers resume as before.
#[test]
fn a_selector_stream_made_after_unheld_events_counts_them_lost() {
    let mut b = broker(10);
    let t = b.resolve(&["/b/1"], true).unwrap()[0];
    let e1 = publish(&mut b, &[t], 5);
    // Another node's event to a topic not held here: its id only.
    let unheld = EventId::new(e1.get() + 10);
    b.note_unheld(unheld);
    b.note_unheld(EventId::new(unheld.get() - 5));
    let e2 = publish(&mut b, &[t], 5);
    assert!(e2 > unheld, "the clock moved past it");
    let p = sel("/b/{x}");
    assert_eq!(b.selector_view(&p, false), (e2, unheld));
    assert_eq!(b.selector_view(&p, true), (e2, unheld));
    assert!(b.selector_lost_after(&p, e1, false));
    assert!(!b.selector_lost_after(&p, unheld, true));
    let s = b.selector_stream(&p, None).unwrap();
    assert_eq!(b.get(s).unwrap().retained(), 1, "e1 is not kept");
    assert_eq!(resumed(&mut b, s, e1, false), (vec![(e2, false)], true));
    assert_eq!(resumed(&mut b, s, e1, true), (vec![(e2, false)], true));
    assert_eq!(resumed(&mut b, s, unheld, true), (vec![(e2, false)], false));
    assert_eq!(b.selector_view(&p, true), (e2, unheld));
    let mut live = b.subscribe(ConnKey(1), &[s], &Resume::Live).cursors;
    assert!(b.take_gap(&mut live).is_none(), "live: nothing was lost");
    let c = b.subscribe(ConnKey(2), &[t], &Resume::After(e1, String::new()));
    assert!(c.gap.is_none());
    assert_eq!(ids_of(&b, &c.cursors), vec![e2]);
}

/// A topic a selector stream wants but the node cannot hold (the
/// publishers' pool is full) is not a silent hole: the selector streams
/// matching it mark the event lost, so their readers get `gap`.
#[test]
fn a_wanted_topic_that_cannot_be_held_gaps_its_selector_readers() {
    let mut b = broker(10);
    let c = b.selector_stream(&sel("/c/{x}"), None).unwrap();
    let other = b.selector_stream(&sel("/d/{x}"), None).unwrap();
    let mut cur = b.subscribe(ConnKey(1), &[c], &Resume::Live).cursors;
    let mut calm = b.subscribe(ConnKey(2), &[other], &Resume::Live).cursors;
    let mut full = false;
    for i in 0..100 {
        if b.resolve(&[&format!("/p/{i}")], true).is_err() {
            full = true;
            break;
        }
    }
    assert!(full, "the pool never filled");
    let id = EventId::new(b.ids().last().get() + 10);
    assert_eq!(b.hold_for_selectors("/c/1", id), None);
    assert!(b.get(c).unwrap().lost_upto() >= id);
    assert!(b.take_gap(&mut cur).is_some(), "the reader is told");
    assert!(
        b.take_gap(&mut calm).is_none(),
        "a selector not matching is not"
    );
}
