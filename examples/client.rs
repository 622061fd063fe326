//! The r3labs/sse client pattern
//!
//! ```go
//! client := sse.NewClient("http://server/events")
//! events := make(chan *sse.Event)
//! client.SubscribeChan("messages", events)
//! ```
//!
//! in Rust, against an in-process server: `subscribe_channel` feeds an
//! `mpsc` channel from a background thread; the main thread publishes
//! `--count` events (default 5) and prints what arrives, then stops both.
//!
//! ```sh
//! cargo run --example client -- --count 3
//! ```

use std::error::Error;
use std::sync::mpsc;
use std::time::Duration;

use ssed::client::Client;
use ssed::{Config, Event, Server};

fn main() -> Result<(), Box<dyn Error>> {
    let mut count: usize = 5;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--count", Some(v)) => count = v.parse()?,
            _ => return Err(format!("unknown argument {a}; try --count N").into()),
        }
    }
    let cfg = Config {
        listen: vec!["127.0.0.1:0".parse()?],
        ..Config::default()
    };
    let server = Server::bind(cfg)?;
    let url = format!("http://{}/events", server.local_addrs()[0]);
    let publisher = server.publisher();
    let stop = server.shutdown_handle();
    let loop_thread = std::thread::spawn(move || server.run());

    let (tx, rx) = mpsc::channel();
    let sub = Client::new(&url)?.subscribe_channel("messages", tx)?;
    // Publish only once the subscription is live: the first event a fresh
    // subscriber sees is whatever comes after it connected.
    let mut n = 0;
    while n < count {
        publisher.publish("messages", Event::new(format!("hello {n}")))?;
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => {
                println!(
                    "id={} event={} data={}",
                    ev.id.as_deref().unwrap_or("-"),
                    ev.event,
                    ev.data
                );
                n += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    sub.stop();
    stop.shutdown();
    let _ = loop_thread.join();
    Ok(())
}
