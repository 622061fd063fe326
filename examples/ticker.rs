//! A ticking publisher, the r3labs/sse pattern
//!
//! ```go
//! go func() {
//!     for {
//!         server.Publish("time", &sse.Event{Data: []byte(time.Now().String())})
//!         time.Sleep(time.Second)
//!     }
//! }()
//! ```
//!
//! in Rust: a thread publishes the time to stream `time` every
//! `--interval-ms` (default 1000), as event type `tick`, `--ticks` times
//! (default 10), then shuts the server down.
//!
//! ```sh
//! cargo run --example ticker -- --listen 127.0.0.1:8081 --ticks 5
//! curl -N 'http://127.0.0.1:8081/events?stream=time&last_event_id=0'
//! ```
//!
//! Tick 1 is published as the server starts, before anyone can connect:
//! `last_event_id=0` reads it (and any other missed tick) from the
//! history, after a `gap` (0 is no id the server issued). `--listen`
//! defaults to `127.0.0.1:0`, a free port, printed
//! first as `listening on http://ADDR`. `tests/it/readme.rs` runs it.

use std::error::Error;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ssed::{Config, Event, Server};

fn main() -> Result<(), Box<dyn Error>> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut ticks: u32 = 10;
    let mut interval_ms: u64 = 1000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = value()?.parse()?,
            "--ticks" => ticks = value()?.parse()?,
            "--interval-ms" => interval_ms = value()?.parse()?,
            _ => {
                return Err(format!(
                    "unknown argument {a}; try --listen ADDR --ticks N --interval-ms MS"
                )
                .into())
            }
        }
    }

    let cfg = Config {
        listen: vec![listen],
        ..Config::default()
    };
    let server = Server::bind(cfg)?;
    println!("listening on http://{}", server.local_addrs()[0]);

    let publisher = server.publisher();
    let stop = server.shutdown_handle();
    let ticker = std::thread::spawn(move || {
        for n in 1..=ticks {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let event = Event::new(format!("tick {n} at {now:.3}")).event("tick");
            if let Err(e) = publisher.publish("time", event) {
                eprintln!("publish: {e}");
                break;
            }
            std::thread::sleep(Duration::from_millis(interval_ms));
        }
        // Bounded: the example ends once its ticks are out.
        stop.shutdown();
    });

    server.run()?;
    ticker.join().map_err(|_| "ticker thread panicked")?;
    Ok(())
}
