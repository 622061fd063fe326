//! chamber's `GET /streaming/sse` (seed 002): an endless stream of random
//! events, the first at once and then one every 4 s, each with a random
//! 32-hex-digit id, type `?event=` (default `random`) and data
//! `{"message": <?data= or 10..=50 random letters and digits>, "elapsed":
//! <seconds since the request, 6 decimals>}`, with
//! `Access-Control-Allow-Origin: *` whatever `--cors-origin` says.
//!
//! It owns nothing but a closure per connection, driven by the reactor's
//! timer heap (`Cx::ticker`): no thread, no per-connection timer
//! object. It must not keep state outside that closure, so the connection
//! and its tick die together. Per-connection memory is bounded by the
//! request line (`?event=` is at most 64 bytes, `?data=` at most
//! `--max-header-bytes`).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::ids;
use crate::access::Op;
use crate::frame;
use crate::handler::Cx;
use crate::http::{Method, Request};

/// The seed's interval between events.
const INTERVAL_MS: u64 = 4000;
/// Event type when `?event=` is absent.
const DEFAULT_EVENT: &str = "random";

/// The `data:` line's JSON, spelled as chamber's Lua prints it (a space
/// after each `:` and `,`, elapsed with 6 decimals). Written with integers:
/// `{:.6}` of an `f64` was the only float formatting in the binary and
/// linked core's float printer (about 20 KiB) for it.
pub fn data_json(message: &str, elapsed_ms: u64) -> String {
    let msg = Value::String(message.to_string());
    let (s, ms) = (elapsed_ms / 1000, elapsed_ms % 1000);
    format!("{{\"message\": {msg}, \"elapsed\": {s}.{ms:03}000}}")
}

/// `GET /streaming/sse`.
pub fn handle(cx: &mut Cx<'_>, req: &Request<'_>) {
    // chamber answers with `*` whatever the server's CORS settings are.
    cx.cors = vec![("Access-Control-Allow-Origin", "*".into())];
    if !matches!(req.method, Method::Get | Method::Head) {
        return cx.not_allowed(req, "GET");
    }
    if cx.allow(req, Op::AppStream).is_none() {
        return;
    }
    let event = req
        .query_first("event")
        .map(|e| e.into_owned())
        .unwrap_or_else(|| DEFAULT_EVENT.to_string());
    if !frame::valid_event_type(&event) {
        return cx.fail(
            req,
            400,
            "bad ?event=: 1..=64 visible ASCII characters without ':'",
        );
    }
    let data = req.query_first("data").map(|d| d.into_owned());
    // The seed's head lists `Date` and `Connection: keep-alive`; HTTP/1.0
    // streams end with the connection, so keep-alive is only claimed for 1.1.
    let mut headers = vec![("Date", ids::http_date(cx.unix_us / 1_000_000))];
    if !req.http10 {
        headers.push(("Connection", "keep-alive".into()));
    }
    let start = cx.now_ms;
    let mut rng = SmallRng::seed_from_u64(cx.rng.gen());
    let interval = super::scaled(cx.cfg, INTERVAL_MS);
    cx.ticker(
        req,
        &headers,
        interval,
        0,
        Box::new(move |now_ms| {
            let message = match &data {
                Some(d) => d.clone(),
                None => ids::random_alnum(&mut rng, 10..=50),
            };
            let id = ids::random_hex(&mut rng, 32);
            let body = data_json(&message, now_ms.saturating_sub(start));
            ids::frame_typed(&id, &event, &body)
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_spelled_like_the_seed() {
        assert_eq!(
            data_json("hello", 4003),
            r#"{"message": "hello", "elapsed": 4.003000}"#
        );
        assert_eq!(
            data_json("a\"b\nc", 0),
            r#"{"message": "a\"b\nc", "elapsed": 0.000000}"#
        );
    }

    /// The integer spelling is the `{:.6}` of `ms / 1000.0` it replaced.
    #[test]
    fn elapsed_matches_float_formatting() {
        let spread = (0..5000).chain((0..40).map(|k| 1u64 << k)).chain([
            999_999,
            86_400_001,
            u64::from(u32::MAX),
            31_536_000_123,
        ]);
        for ms in spread {
            let float = format!(
                r#"{{"message": "m", "elapsed": {:.6}}}"#,
                ms as f64 / 1000.0
            );
            assert_eq!(data_json("m", ms), float, "{ms} ms");
        }
    }
}
