//! The library surface: `Server`, `Publisher`, `ShutdownHandle`, run in
//! this process and reached over TCP. `Publisher` follows the rules of
//! `POST /events` and reports the id subscribers see.

use std::time::Duration;

use ssed::{Config, Event, PublishError, Server};

use crate::common::{Sse, T};

fn start(
    cfg: Config,
) -> (
    std::net::SocketAddr,
    ssed::Publisher,
    ssed::ShutdownHandle,
    std::thread::JoinHandle<Result<(), ssed::Error>>,
) {
    let cfg = Config {
        listen: vec![([127, 0, 0, 1], 0).into()],
        heartbeat: Duration::ZERO,
        ..cfg
    };
    let server = Server::bind(cfg).expect("bind");
    let addr = server.local_addrs()[0];
    let p = server.publisher();
    let stop = server.shutdown_handle();
    let th = std::thread::spawn(move || server.run());
    (addr, p, stop, th)
}

#[test]
fn publisher_reports_the_id_subscribers_see() {
    let (addr, p, stop, th) = start(Config::default());
    let mut sub = Sse::open(addr, "/events?stream=lib", "");
    sub.next_block(T).unwrap(); // retry
    let id = p.publish("lib", Event::new("one").event("note")).unwrap();
    let e = sub.next_event(T).unwrap();
    assert_eq!(e.id.as_deref(), Some(id.to_string().as_str()));
    assert_eq!(
        (e.event.as_deref(), e.data().as_str()),
        (Some("note"), "one")
    );
    let id2 = p.publish("lib", Event::new("two")).unwrap();
    assert!(id2 > id);
    stop.shutdown();
    th.join().unwrap().unwrap();
    assert_eq!(
        p.publish("lib", Event::new("late")),
        Err(PublishError::Stopped)
    );
}

#[test]
fn publisher_follows_the_rules_of_post_events() {
    let (addr, p, stop, th) = start(Config {
        max_streams: 1,
        ..Config::default()
    });
    // An invalid type is an error, not a silently different event.
    assert!(matches!(
        p.publish("a", Event::new("x").event("bad type")),
        Err(PublishError::BadEvent(_))
    ));
    assert!(matches!(
        p.publish("a", Event::new("nul\0")),
        Err(PublishError::BadEvent(_))
    ));
    // Names outside the public alphabet are refused, as over HTTP.
    assert!(matches!(
        p.publish("no spaces", Event::new("x")),
        Err(PublishError::Refused(_))
    ));
    assert!(p.publish("a", Event::new("x")).is_ok());
    // --max-streams 1: a second stream is refused.
    match p.publish("b", Event::new("x")) {
        Err(PublishError::Refused(m)) => assert!(m.contains("--max-streams"), "{m}"),
        other => panic!("{other:?}"),
    }
    let r = crate::common::get(addr, "/streams");
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    stop.shutdown();
    th.join().unwrap().unwrap();
}

#[test]
fn publisher_creates_streams_under_no_auto_streams() {
    // The library is an authorised publisher (issue 14): it creates the
    // stream; a subscriber still cannot create one.
    let (addr, p, stop, th) = start(Config {
        auto_streams: false,
        ..Config::default()
    });
    let r = crate::common::get(addr, "/events?stream=fresh");
    assert_eq!(r.status, 404);
    let id = p.publish("fresh", Event::new("x")).unwrap();
    let r = crate::common::get(addr, "/streams/fresh");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["last_id"], id.to_string());
    stop.shutdown();
    th.join().unwrap().unwrap();
}

#[test]
fn many_streams_per_connection_are_all_merged() {
    // Beyond the old 64-stream cut-off of the merge.
    let (addr, p, stop, th) = start(Config {
        max_streams_per_conn: 100,
        ..Config::default()
    });
    let names: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    let q: Vec<String> = names.iter().map(|n| format!("stream={n}")).collect();
    let mut sub = Sse::open(addr, &format!("/events?{}", q.join("&")), "");
    sub.next_block(T).unwrap(); // retry
    let mut ids = Vec::new();
    for n in names.iter().rev() {
        ids.push(p.publish(n, Event::new(n.clone())).unwrap());
    }
    for (n, id) in names.iter().rev().zip(&ids) {
        let e = sub.next_event(T).expect("event from every stream");
        assert_eq!(
            (e.id.as_deref(), e.data()),
            (Some(id.to_string().as_str()), n.clone())
        );
    }
    stop.shutdown();
    th.join().unwrap().unwrap();
}
