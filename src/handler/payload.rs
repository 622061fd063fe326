//! The Redis bus payload codec of a publish: [`Body::payload`] encodes an
//! event without its id (each node numbers it), [`bus_frame`] spells the
//! SSE bytes back once the id is known, refusing malformed payloads. It
//! lives with the [`Body`] it encodes rather than in `crate::bus` (layer
//! 0), which must not know events; it does no I/O and never panics on
//! what arrives from Redis.

use serde_json::Value;

use super::Body;
use crate::frame;
use crate::id::EventId;

impl Body {
    /// The bus payload: `E` + `{"d","e","r","p"}` (`"t"`: typed), or raw
    /// bytes (`R` public, `P` private). Each node spells the frame once the
    /// id is known ([`bus_frame`]).
    pub fn payload(&self, private: bool) -> Vec<u8> {
        let json = |mut v: Value, typed: bool| {
            if private {
                v["p"] = Value::Bool(true);
            }
            if typed {
                v["t"] = Value::Bool(true);
            }
            let mut out = b"E".to_vec();
            out.extend_from_slice(v.to_string().as_bytes());
            out
        };
        match self {
            Body::Numbered(ev) => json(
                serde_json::json!({ "d": ev.data, "e": ev.event, "r": ev.retry }),
                false,
            ),
            Body::Typed { event, data } => json(serde_json::json!({ "d": data, "e": event }), true),
            Body::Fixed(sse) => {
                let mut out = Vec::with_capacity(sse.len() + 1);
                out.push(if private { b'P' } else { b'R' });
                out.extend_from_slice(sse);
                out
            }
        }
    }
}

/// The SSE bytes of a bus payload ([`Body::payload`]) given its id, and
/// whether the event is private; `None` when malformed.
pub fn bus_frame(id: EventId, payload: &[u8]) -> Option<(Vec<u8>, bool)> {
    match payload.split_first()? {
        (b'E', json) => {
            let v: Value = serde_json::from_slice(json).ok()?;
            let data = v.get("d")?.as_str()?;
            let event = match v.get("e") {
                None | Some(Value::Null) => None,
                Some(e) => Some(e.as_str().filter(|t| frame::valid_event_type(t))?),
            };
            let retry = match v.get("r") {
                None | Some(Value::Null) => None,
                Some(r) => Some(u32::try_from(r.as_u64()?).ok()?),
            };
            let private = v.get("p").and_then(Value::as_bool).unwrap_or(false);
            let body = if v.get("t").and_then(Value::as_bool).unwrap_or(false) {
                Body::Typed {
                    event: event?.to_string(),
                    data: data.to_string(),
                }
            } else {
                Body::Numbered(crate::event::Event {
                    data: data.to_string(),
                    event: event.map(str::to_string),
                    retry,
                })
            };
            Some((body.encode(id), private))
        }
        (b'R', sse) if sse.ends_with(b"\n\n") => Some((sse.to_vec(), false)),
        (b'P', sse) if sse.ends_with(b"\n\n") => Some((sse.to_vec(), true)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_payloads_round_trip() {
        let ev = crate::event::Event {
            data: "a\nb".into(),
            event: Some("t".into()),
            retry: Some(5),
        };
        let body = Body::Numbered(ev);
        let f = bus_frame(EventId::new(42), &body.payload(false)).unwrap();
        assert_eq!(
            f,
            (
                frame::encode_numbered(EventId::new(42), Some("t"), "a\nb", Some(5)),
                false
            )
        );
        assert!(
            bus_frame(EventId::new(42), &body.payload(true)).unwrap().1,
            "private survives the bus"
        );
        let raw = b"id: u\ndata: x\n\n";
        assert_eq!(
            bus_frame(EventId::new(1), &Body::Fixed(raw.to_vec()).payload(false)).unwrap(),
            (raw.to_vec(), false)
        );
        for bad in [
            &b""[..],
            b"X",
            b"E{",
            b"E{\"d\":1}",
            b"E{\"d\":\"x\",\"e\":\"a:b\"}",
            b"Rdata: x",
        ] {
            assert!(bus_frame(EventId::new(1), bad).is_none(), "{bad:?}");
        }
    }
}
