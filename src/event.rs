//! The one event type: what a publisher hands over and the broker encodes.
//! Checking it (stream names, event types) is the broker's and the
//! handlers' business, so every way in follows the same rules.

/// An event to publish: data, an optional type, an optional `retry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub(crate) data: String,
    pub(crate) event: Option<String>,
    pub(crate) retry: Option<u32>,
}

impl Event {
    /// An event of type `message` carrying `data` (newlines become
    /// several `data:` lines on the wire).
    pub fn new(data: impl Into<String>) -> Event {
        Event {
            data: data.into(),
            event: None,
            retry: None,
        }
    }
    /// Sets the event type (`event:` line). It must be 1..=64 visible ASCII
    /// characters without `:`; publishing an event with any other type is
    /// refused with [`crate::PublishError::BadEvent`].
    pub fn event(mut self, t: impl Into<String>) -> Event {
        self.event = Some(t.into());
        self
    }
    /// Asks clients to reconnect after `ms` milliseconds.
    pub fn retry(mut self, ms: u32) -> Event {
        self.retry = Some(ms);
        self
    }
    /// Why this event cannot be published, if it cannot.
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some(t) = &self.event {
            if !crate::frame::valid_event_type(t) {
                return Err(format!(
                    "bad event type {t:?}: 1..=64 visible ASCII characters without ':'"
                ));
            }
        }
        if self.data.contains('\0') {
            return Err("event data must not contain NUL bytes".into());
        }
        Ok(())
    }
}

/// Why a [`Publisher`](crate::Publisher) could not publish an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The server has stopped.
    Stopped,
    /// Too many publishes are waiting for the loop.
    Full,
    /// The loop did not answer in time.
    Timeout,
    /// The event itself is invalid (its type, NUL bytes in its data).
    BadEvent(String),
    /// The server refused it (stream name, `--no-auto-streams`,
    /// `--max-streams`, size, a failing journal).
    Refused(String),
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Stopped => write!(f, "server has stopped"),
            PublishError::Full => write!(f, "publish queue is full"),
            PublishError::Timeout => write!(f, "the server did not take the event in time"),
            PublishError::BadEvent(m) | PublishError::Refused(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for PublishError {}
