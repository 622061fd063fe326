//! What a request handler gets and what it gives back. A handler (the core
//! API, the apps) sees a narrow context — the broker (read-only), the
//! configuration, the counters, `now`, randomness, the peer — and turns a
//! request into [`Action`]s: respond, publish ([`Publish`]: targets, one
//! [`Body`] per event, the private flag, how to [`Reply`]), subscribe
//! ([`Subscribe`]), start a ticker, end other connections, create or
//! delete a stream. The reactor carries them out: it makes the streams a
//! decision names ([`Targets`]), applies every publish in one place, and
//! renders every publish reply. No handler changes the broker or knows
//! whether Redis or a journal is configured when it publishes.
//!
//! Nothing here touches sockets, `Poll` or the clock. The helpers every
//! handler shares live once (in `cx`): replies built by `http::Response`, the
//! 405 with `Allow`, asking the access rule ([`Cx::allow`]; the rule
//! itself is `crate::access`, and no handler decides access alone), the
//! Last-Event-ID reader, and the one place a subscription is planned and
//! started.
//!
//! By responsibility: `action` (the decision contract), `cx` (the context
//! and its helpers), `payload` (a publish's Redis bus codec), `refusal`
//! (why a publish was refused, refusal → HTTP status). Other modules name
//! everything as `crate::handler::X`.

mod action;
mod cx;
mod payload;
mod refusal;

pub use action::{Action, Body, Chat, Internal, Publish, Reply, Shape, Subscribe, Targets, TickFn};
pub use cx::{last_event_id, Cx};
pub use payload::bus_frame;
pub use refusal::{status, Refusal};
