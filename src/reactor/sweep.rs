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
//! `--stream-idle-ttl` (between 250 ms and 60 s).

use super::conn::{Tick, NEVER, TICK_MS};
use super::proto::Due;
use super::{Reactor, Timer};

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
        self.schedule_expire(!done);
    }

    /// A connection's deadline passed: the connection machine says what
    /// that means (`Conn::expire`), the reactor does it.
    fn expire(&mut self, key: u32, now: Tick) {
        let exp = self.token_exp.get(&key).copied().unwrap_or(NEVER);
        let reserved = self.reserve.contains(&key);
        let Some(c) = self.conns.get_mut(key as usize) else {
            return;
        };
        match c.expire(now, exp, reserved, &self.rules) {
            Due::Nothing => {}
            Due::TokenExpired => {
                // Mercure: a subscription ends when its token expires.
                log::info!("ending stream {key}: its token expired");
                self.counters.reject("token_expired");
                self.end_stream(key);
            }
            Due::WriteStalled => {
                log::info!(
                    "closing connection {key}: nothing written for {:?}",
                    self.cfg.write_timeout
                );
                self.counters.write_timeouts += 1;
                self.close(key);
            }
            Due::Refuse(r) => self.refuse(key, r),
            Due::Close { unasked } => {
                if unasked {
                    self.counters.reject("idle_before_request");
                }
                self.close(key);
            }
            Due::Heartbeat => self.heartbeat(key),
        }
    }
}
