//! workerman's Accept-detected SSE (seed 003): a `GET` on a path that no
//! route claims, with `Accept: text/event-stream`, becomes an event stream
//! that sends `event: message`, `id: 1`, `data: hello` every 2 s, the
//! first one 2 s after the request (workerman's `Timer::add(2, ...)`).
//!
//! The seed's PHP must delete its timer when the connection goes or timers
//! pile up; here the tick is an entry in the reactor's timer heap tagged
//! with the connection's generation, so it dies with the connection
//! (the reactor drops entries of freed or reused keys). This module
//! keeps no state at all.

use crate::access::Op;
use crate::handler::Cx;
use crate::http::{Method, Request};

/// The seed's interval.
const INTERVAL_MS: u64 = 2000;
/// The one frame this app sends, in workerman's field order (`event`,
/// `id`, `data`), `event: message` spelled out as the seed writes it.
fn frame() -> Vec<u8> {
    crate::frame::Block::new()
        .event("message")
        .id("1")
        .data("hello")
}

/// Takes over an unrouted `GET` that asks for an event stream; `false`
/// (so the core answers 404) for anything else.
pub fn fallback(cx: &mut Cx<'_>, req: &Request<'_>) -> bool {
    if !matches!(req.method, Method::Get | Method::Head) || !req.accepts_event_stream() {
        return false;
    }
    if cx.allow(req, Op::AppStream).is_none() {
        return true;
    }
    let interval = super::scaled(cx.cfg, INTERVAL_MS);
    cx.ticker(req, &[], interval, interval, Box::new(|_| frame()));
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seeds_frame() {
        assert_eq!(super::frame(), b"event: message\nid: 1\ndata: hello\n\n");
    }
}
