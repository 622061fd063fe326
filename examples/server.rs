//! r3labs/sse's "Example Server" in Rust: the Go snippets
//!
//! ```go
//! server := sse.New()
//! server.CreateStream("messages")
//! mux.HandleFunc("/events", server.HTTPHandler)
//! http.ListenAndServe(":8080", mux)
//! server.Publish("messages", []byte("ping"))
//! ```
//!
//! become `Server::bind` (scheduler and HTTP handler in one, `/events`
//! included), a `Publisher` used from another thread, and `Server::run`.
//! `CreateStream` is implicit: publishing creates the stream. Unlike
//! r3labs, an event published before anyone listens is not lost: it waits
//! in the stream's history for subscribers that resume.
//!
//! ```sh
//! cargo run --example server -- --listen 127.0.0.1:8081 --seconds 30
//! curl -N 'http://127.0.0.1:8081/events?stream=messages&last_event_id=0'
//! ```
//!
//! It prints `listening on http://ADDR` first. `--listen` defaults to
//! `127.0.0.1:0` (a free port, so it never collides with a server already
//! on 8080); `--seconds N` stops the server after N seconds (default: run
//! until interrupted). `tests/it/readme.rs` runs it.

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use ssed::{Config, Event, Publisher, Server};

fn main() -> Result<(), Box<dyn Error>> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut seconds: u64 = 0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs ADDR")?.parse()?,
            "--seconds" => seconds = args.next().ok_or("--seconds needs N")?.parse()?,
            _ => return Err(format!("unknown argument {a}; try --listen ADDR --seconds N").into()),
        }
    }

    // sse.New() + ListenAndServe: the server owns the /events handler.
    let cfg = Config {
        listen: vec![listen],
        ..Config::default()
    };
    let server = Server::bind(cfg)?;
    println!("listening on http://{}", server.local_addrs()[0]);

    // server.Publish("messages", []byte("ping")), from another thread.
    let publisher: Publisher = server.publisher();
    std::thread::spawn(move || {
        if let Err(e) = publisher.publish("messages", Event::new("ping")) {
            eprintln!("publish: {e}");
        }
    });

    if seconds > 0 {
        let stop = server.shutdown_handle();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(seconds));
            stop.shutdown();
        });
    }
    server.run()?;
    Ok(())
}
