//! What the bus link asks of the driver: the link (`bus/link.rs`) changes
//! the broker and the apps itself, but a socket is the driver's, so every
//! answer, pause and stream start comes back as an [`Effect`] for the
//! driver to carry out, in order. Data only; shared by the link and its
//! stub (a build without the `redis` feature, which makes none).

use crate::broker::{Cursors, StreamIdx};
use crate::handler::{Reply, Subscribe};

use super::super::conn::ConnKey;
use super::super::publish::{Outcome, To};

/// One thing the driver must do for the bus link.
pub(crate) enum Effect {
    /// A publish through the bus is over (Redis gave every id, or refused
    /// one): settle and answer it like a local one (`publish::settle`).
    Settled {
        /// Who asked.
        to: To,
        /// How to answer.
        reply: Reply,
        /// Public streams made for it, dropped again if it failed.
        made: Vec<StreamIdx>,
        /// The ids, audience and failure.
        outcome: Outcome,
    },
    /// The connection waits for the bus: its input stays paused.
    Pause(ConnKey),
    /// It no longer waits: its paused input may be read again.
    Resume(ConnKey),
    /// Start the connection's event stream, subscribed already (`cursors`);
    /// `waited`: its input was paused for history, unpause it quietly
    /// (the connection becomes a stream; later input is dropped anyway).
    Stream {
        /// The connection.
        key: ConnKey,
        /// It waited for history.
        waited: bool,
        /// The subscription, its prelude completed (a `gap` if owed).
        sub: Subscribe,
        /// Where it stands in each stream.
        cursors: Cursors,
    },
    /// So much was appended that the fan-out must run now.
    Flush,
    /// A subscription update's topic stream carried it and nobody reads
    /// that very topic: drop it again (`--mercure-subscriptions`).
    DropOneOff(StreamIdx),
}
