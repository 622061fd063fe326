//! Deadlines: every connection has one (`Conn::deadline`), and one sweep
//! walks the connection table when the earliest is due, for header, idle
//! and write timeouts, lingering closes and heartbeats. No connection owns
//! a timer object.
//!
//! The walk is sliced: at most [`SLICE`] slots per loop turn, continuing
//! on the next turn, so a table of 20,000 connections never holds the loop
//! for a whole pass. With nothing due, no sweep is scheduled and the loop
//! sleeps without a timeout.
//!
//! The stream lifecycle has its own, slower sweep: `Broker::expire` over
//! [`STREAM_SLICE`] stream slots per turn, a pass every quarter of
//! `--stream-idle-ttl` (between 250 ms and 60 s). It rests when a pass
//! finds every stream read (or internal): then none can expire until a
//! subscriber leaves or a stream appears, which only a wakeup for
//! something else brings, so an idle node sleeps without a timeout.

use super::conn::{State, Tick, NEVER};
use super::{ticks, Reactor, Timer, TICK_MS};

/// Connection slots examined per loop turn.
const SLICE: usize = 4096;
/// Rounds of the sweep start at most this often.
const SWEEP_SPACING_MS: u64 = 250;
/// Stream slots the lifecycle sweep examines per loop turn.
const STREAM_SLICE: usize = 1024;

/// Where the sweep stands.
#[derive(Debug, Default)]
pub(super) struct Sweep {
    /// When the scheduled sweep step runs (the live `Timer::Sweep` entry).
    pub at: Option<u64>,
    /// When the current or last round started.
    last: u64,
    /// The next slot to examine, when a round is under way.
    pos: Option<usize>,
    /// The earliest deadline seen (or set) during the round.
    next: Tick,
    /// The lifecycle sweep rests (no `Timer::Expire` scheduled) until the
    /// loop wakes for something else.
    expire_resting: bool,
}

impl Reactor {
    /// Makes sure a sweep runs by deadline `d`.
    pub(super) fn want_sweep(&mut self, d: Tick) {
        if d == NEVER {
            return;
        }
        if self.sweep.pos.is_some() {
            // A round is under way; it reschedules when it ends.
            self.sweep.next = self.sweep.next.min(d);
            return;
        }
        let when = (d as u64 * TICK_MS).max(self.sweep.last + SWEEP_SPACING_MS);
        if self.sweep.at.is_none_or(|s| when < s) {
            self.sweep.at = Some(when);
            self.timers.add(when, Timer::Sweep);
        }
    }

    /// One slice of the sweep (the timer entry for `when` fired).
    pub(super) fn sweep(&mut self, when: u64) {
        if self.sweep.at != Some(when) {
            return;
        }
        self.sweep.at = None;
        let start = match self.sweep.pos {
            Some(p) => p,
            None => {
                // A new round. Cancelled timer entries (superseded sweeps,
                // ticks of closed connections) are dropped lazily; compact
                // when they could have piled up.
                if self.timers.len() > 64 {
                    let (conns, at) = (&self.conns, self.sweep.at);
                    self.timers
                        .retain(|w, t| super::timer_live(conns, at, w, t));
                }
                self.sweep.last = self.clock.now_ms;
                self.sweep.next = NEVER;
                0
            }
        };
        let end = (start + SLICE).min(self.conns.capacity());
        let now = self.clock.now_tick();
        let mut due: Vec<u32> = Vec::new();
        for k in start..end {
            if let Some(c) = self.conns.get(k) {
                if c.deadline <= now {
                    due.push(k as u32);
                } else {
                    self.sweep.next = self.sweep.next.min(c.deadline);
                }
            }
        }
        // Mark the round as under way while handling, so deadlines set now
        // are folded into it.
        self.sweep.pos = Some(end);
        for key in due {
            self.expire(key, now);
            if let Some(c) = self.conns.get(key as usize) {
                if !c.closing() {
                    self.sweep.next = self.sweep.next.min(c.deadline);
                }
            }
        }
        if end < self.conns.capacity() {
            // More slots: continue next turn.
            let at = self.clock.now_ms;
            self.sweep.at = Some(at);
            self.timers.add(at, Timer::Sweep);
        } else {
            self.sweep.pos = None;
            let next = self.sweep.next;
            self.want_sweep(next);
        }
    }

    /// Schedules the next slice of the stream lifecycle sweep: on the next
    /// turn while a pass is under way, else after a rest.
    pub(super) fn schedule_expire(&mut self, mid_pass: bool) {
        let rest = match self.cfg.stream_idle_ttl.as_millis() as u64 {
            0 => 60_000,
            ttl => (ttl / 4).clamp(250, 60_000),
        };
        let at = if mid_pass {
            self.clock.now_ms
        } else {
            self.clock.now_ms + rest
        };
        self.timers.add(at, Timer::Expire);
    }

    /// One slice of the stream lifecycle sweep (its timer fired).
    pub(super) fn expire_streams(&mut self) {
        let now = self.clock.unix_us();
        let done = self.broker.expire(now, STREAM_SLICE);
        let unread = |(_, s): (u32, &crate::broker::Stream)| !s.internal && s.subs.is_empty();
        if done && !self.broker.iter().any(unread) {
            self.sweep.expire_resting = true;
            return;
        }
        self.schedule_expire(!done);
    }

    /// The loop woke for something other than the lifecycle sweep: a
    /// resting sweep starts again (after its usual rest).
    pub(super) fn stir_expire(&mut self) {
        if std::mem::take(&mut self.sweep.expire_resting) {
            self.schedule_expire(false);
        }
    }

    /// A connection's deadline passed.
    fn expire(&mut self, key: u32, now: Tick) {
        let write_ticks = ticks(self.cfg.write_timeout);
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        if c.closing() {
            return;
        }
        let exp = self.token_exp.get(&key).copied().unwrap_or(NEVER);
        if exp <= now && matches!(c.state, State::Streaming(_)) {
            // Mercure: a subscription ends when its token expires.
            log::info!("ending stream {key}: its token expired");
            self.counters.reject("token_expired");
            self.end_stream(key);
            return;
        }
        if let Some(out) = &c.out {
            if now.saturating_sub(out.since) >= write_ticks {
                log::info!(
                    "closing connection {key}: nothing written for {:?}",
                    self.cfg.write_timeout
                );
                self.counters.write_timeouts += 1;
                self.close(key);
            } else {
                c.deadline = out.since.saturating_add(write_ticks).min(exp);
            }
            return;
        }
        match &c.state {
            State::Reading { .. } if self.reserve.contains(&key) => {
                // Admitted over the cap for a health check that did not come
                // at once: the answer everyone else past the cap gets.
                self.counters.reject("over_capacity");
                self.error(key, 503, super::OVER_CAP_MSG, Some(("Retry-After", "1")));
            }
            State::Reading { buf, idle, .. } => {
                if *idle || buf.is_none() {
                    // Idle keep-alive, or a connection that never sent a
                    // byte (browsers open spare ones): just go. A 408 there
                    // could be read as the answer to the next request the
                    // client sends.
                    if buf.is_none() && !*idle {
                        self.counters.reject("idle_before_request");
                    }
                    self.close(key);
                } else {
                    let e = crate::http::HttpError::Timeout;
                    self.counters.reject(e.reason());
                    self.error(key, e.status(), e.message(), None);
                }
            }
            State::Streaming(_) | State::Ticking(_) => {
                if self.cfg.heartbeat.is_zero() {
                    c.deadline = exp;
                    return;
                }
                self.heartbeat(key);
            }
            State::Draining | State::Lingering | State::Closing => self.close(key),
        }
    }
}
