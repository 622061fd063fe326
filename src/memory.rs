//! The memory account: every kind of memory a client can make the server
//! hold is charged here, against a limit of its own and one global bound
//! (`--memory-max`). A charge that would pass either is refused with a
//! typed [`Refusal`] that names what was full, so the caller decides what
//! the client gets (a 503, a dropped connection, an evicted archive).
//!
//! Pure bookkeeping: no I/O, no allocation after construction, no clock.
//! It does not know what the bytes are; the code that holds them charges
//! before it holds them and releases when it lets go, and the account
//! trusts it (a release never goes below zero). History and the apps'
//! archives are different: the broker keeps one budget for both
//! (`--history-total-bytes`) and evicts rather than refuses, so they are
//! *reported* ([`Account::report`]) and count towards the global bound the
//! other kinds are checked against.
//!
//! The Redis bus's fetches and the selector registry are both: their parts
//! count what they hold (`Link::fetch_bytes`, `Broker::selector_bytes`)
//! and the driver reports it once a loop turn, where history is reported;
//! between reports, a growth a client causes is charged first and refused
//! past the bounds: a new selector stream through [`Account::charge`], an
//! announcement the bus link buffers while a fetch runs against room the
//! account lent it ([`Lease`], settled around the link's work). The next
//! report replaces the charges by what is really held.

/// What a charge is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Retained history (reported by the broker, never refused here).
    History,
    /// Incomplete requests' buffers.
    Requests,
    /// Bytes accepted for a socket but not yet written, copied out of
    /// shared frames: responses, stream heads, `gap`s, heartbeats. A stalled
    /// subscriber's tail of a shared frame is a position, not a copy, and
    /// is not charged here (see `Tails`).
    Output,
    /// App archives (the MongooseIM API's message and room archives),
    /// reported: they live within the history budget.
    Archives,
    /// What the Redis bus holds for history fetches: announcements
    /// buffered per stream while its fetch runs, and the connections' read
    /// and write buffers (a fetch page is read whole before it is taken).
    /// Reported by the bus link; a buffered announcement past the limit is
    /// dropped and its stream marked lost (subscribers get `gap`), a fetch
    /// page is asked no larger than the room left.
    Bus,
    /// The selector registry: compiled selectors and URL patterns, their
    /// streams' structs, interned keys, the (topic, selector) match cache.
    /// Reported by the broker; a subscription that would make new
    /// selector streams past the limit is refused (`503`).
    Selectors,
    /// Mercure active subscriptions (`--mercure-subscriptions`): the table
    /// of active subscriptions (every node's, with `--redis`) and this
    /// node's subscribers' records. Reported by the presence table, which
    /// stops listing past its own bound ([`PRESENCE_LIMIT`]; their updates
    /// still go out).
    Presence,
    /// Shared frames that only slow subscribers' stream tails keep alive:
    /// history evicted them while a subscriber was cut inside one. Each
    /// such frame counted once, reported by the fan-out (`Tails` in
    /// reactor/fanout.rs); past the bounds its holders are dropped as
    /// `--max-pending-bytes` drops a slow subscriber.
    Tails,
}

/// The presence table's own bound (`presence::MAX_ACTIVE_BYTES`, which
/// this layer cannot name) plus its subscribers' records.
pub const PRESENCE_LIMIT: usize = 80 << 20;

impl Kind {
    /// Every kind, in the order `/stats` lists them.
    pub const ALL: [Kind; 8] = [
        Kind::History,
        Kind::Requests,
        Kind::Output,
        Kind::Archives,
        Kind::Bus,
        Kind::Selectors,
        Kind::Presence,
        Kind::Tails,
    ];

    /// The name in `/stats` and the `kind` label in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::History => "history",
            Kind::Requests => "requests",
            Kind::Output => "output",
            Kind::Archives => "archives",
            Kind::Bus => "bus",
            Kind::Selectors => "selectors",
            Kind::Presence => "presence",
            Kind::Tails => "tails",
        }
    }

    fn at(self) -> usize {
        self as usize
    }
}

/// Why a charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The kind's own limit would be passed.
    Kind {
        /// The kind charged.
        kind: Kind,
        /// Bytes asked for.
        want: usize,
        /// Its limit.
        limit: usize,
    },
    /// The global bound (`--memory-max`) would be passed.
    Global {
        /// The kind charged.
        kind: Kind,
        /// Bytes asked for.
        want: usize,
        /// The bound.
        max: usize,
    },
}

impl Refusal {
    /// The kind whose charge was refused.
    pub fn kind(&self) -> Kind {
        match *self {
            Refusal::Kind { kind, .. } | Refusal::Global { kind, .. } => kind,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Refusal::Kind { kind, want, limit } => write!(
                f,
                "the server holds too much {} memory ({want} more bytes would pass its limit of {limit})",
                kind.name()
            ),
            Refusal::Global { kind, want, max } => write!(
                f,
                "the server holds too much memory ({want} more bytes of {} would pass --memory-max {max})",
                kind.name()
            ),
        }
    }
}

impl std::error::Error for Refusal {}

/// The bounds: one per kind, and the global one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Everything together (`--memory-max`).
    pub max: usize,
    /// Per kind, indexed like [`Kind::ALL`].
    pub per_kind: [usize; Kind::ALL.len()],
}

/// Room left for the global bound past history, at least (config.rs's
/// `MEMORY_HEADROOM` refuses a smaller `--memory-max`).
pub const MIN_HEADROOM: usize = 4 << 20;

impl Limits {
    /// The default division of `max`: history gets its own budget; every
    /// other kind a share of what is left (the headroom), the shares adding
    /// up to more than the headroom on purpose, since they rarely peak
    /// together and the global bound is what holds. `requests` is the
    /// request-buffer budget the reactor has always had.
    pub fn new(max: usize, history: usize, requests: usize) -> Limits {
        let max = max.max(history.saturating_add(MIN_HEADROOM));
        let headroom = max - history;
        let mut per_kind = [0; Kind::ALL.len()];
        per_kind[Kind::History.at()] = history;
        per_kind[Kind::Requests.at()] = requests;
        per_kind[Kind::Output.at()] = headroom / 4;
        per_kind[Kind::Archives.at()] = headroom / 4;
        per_kind[Kind::Bus.at()] = headroom / 2;
        per_kind[Kind::Selectors.at()] = headroom / 16;
        per_kind[Kind::Presence.at()] = PRESENCE_LIMIT;
        per_kind[Kind::Tails.at()] = headroom / 4;
        Limits { max, per_kind }
    }

    /// A kind's limit (the reactor derives each address's share of
    /// `requests` from it).
    // Minimal builds may leave it unread.
    #[allow(dead_code)]
    pub fn of(&self, kind: Kind) -> usize {
        self.per_kind[kind.at()]
    }

    /// Changes one kind's limit (a feature with a bound of its own).
    pub fn with(mut self, kind: Kind, limit: usize) -> Limits {
        self.per_kind[kind.at()] = limit;
        self
    }
}

/// Room of one kind lent to a part that grows between the driver's calls
/// (the bus link buffering announcements): the part admits growth against
/// the room, and [`Lease::settle`] charges what was admitted, counts what
/// was refused and renews the room from the account. The driver settles
/// before and after the part works, so the account is never passed by more
/// than the room it lent.
#[derive(Debug, Clone)]
pub struct Lease {
    kind: Kind,
    room: usize,
    admitted: usize,
    refused: u64,
}

impl Lease {
    /// No room until the first settling.
    pub fn new(kind: Kind) -> Lease {
        Lease {
            kind,
            room: 0,
            admitted: 0,
            refused: 0,
        }
    }

    /// Room left.
    pub fn room(&self) -> usize {
        self.room
    }

    /// Takes `bytes` of the room; `false` (a refusal) past it.
    pub fn admit(&mut self, bytes: usize) -> bool {
        if bytes > self.room {
            self.refused += 1;
            return false;
        }
        self.room -= bytes;
        self.admitted += bytes;
        true
    }

    /// Charges what was admitted (it is held: the account's next report
    /// of the kind replaces it by what really is), counts the refusals,
    /// and takes the account's room anew.
    pub fn settle(&mut self, account: &mut Account) {
        let i = self.kind.at();
        account.force(self.kind, std::mem::take(&mut self.admitted));
        account.refused[i] += std::mem::take(&mut self.refused);
        self.room = account.room(self.kind);
    }
}

/// One kind's figures, for `/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// The kind.
    pub kind: Kind,
    /// Bytes held now.
    pub used: usize,
    /// Its limit.
    pub limit: usize,
    /// The most it held at once.
    pub peak: usize,
    /// Charges refused.
    pub refused: u64,
}

/// The account.
#[derive(Debug, Clone)]
pub struct Account {
    limits: Limits,
    used: [usize; Kind::ALL.len()],
    peak: [usize; Kind::ALL.len()],
    refused: [u64; Kind::ALL.len()],
    total: usize,
    /// Bytes released since [`Account::take_freed`] was last called.
    freed: usize,
}

impl Account {
    /// An empty account.
    pub fn new(limits: Limits) -> Account {
        Account {
            limits,
            used: [0; Kind::ALL.len()],
            peak: [0; Kind::ALL.len()],
            refused: [0; Kind::ALL.len()],
            total: 0,
            freed: 0,
        }
    }

    /// The bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether `bytes` more of `kind` would fit (charging nothing).
    pub fn check(&self, kind: Kind, bytes: usize) -> Result<(), Refusal> {
        let i = kind.at();
        let limit = self.limits.per_kind[i];
        if self.used[i].saturating_add(bytes) > limit {
            return Err(Refusal::Kind {
                kind,
                want: bytes,
                limit,
            });
        }
        if self.total.saturating_add(bytes) > self.limits.max {
            return Err(Refusal::Global {
                kind,
                want: bytes,
                max: self.limits.max,
            });
        }
        Ok(())
    }

    /// Bytes of `kind` that would still fit, by its limit and the global
    /// bound (what a fetch page may be sized to).
    pub fn room(&self, kind: Kind) -> usize {
        let i = kind.at();
        let by_kind = self.limits.per_kind[i].saturating_sub(self.used[i]);
        by_kind.min(self.limits.max.saturating_sub(self.total))
    }

    /// Charges `bytes` of `kind`, or refuses (and counts the refusal).
    pub fn charge(&mut self, kind: Kind, bytes: usize) -> Result<(), Refusal> {
        if let Err(r) = self.check(kind, bytes) {
            self.refused[kind.at()] += 1;
            return Err(r);
        }
        self.force(kind, bytes);
        Ok(())
    }

    /// Charges `bytes` that are held whatever the bounds say (a small
    /// error response sent instead of a refused large one; a request buffer
    /// put back after parsing). Callers keep such charges small and
    /// bounded by something else (the connection count).
    pub fn force(&mut self, kind: Kind, bytes: usize) {
        let i = kind.at();
        self.used[i] = self.used[i].saturating_add(bytes);
        self.total = self.total.saturating_add(bytes);
        self.peak[i] = self.peak[i].max(self.used[i]);
    }

    /// Gives back `bytes` of `kind` (never below zero): they are freed.
    pub fn release(&mut self, kind: Kind, bytes: usize) {
        let b = self.lend(kind, bytes);
        self.freed = self.freed.saturating_add(b);
    }

    /// Gives back `bytes` that are charged again at once (a request buffer
    /// taken out to be parsed and put back): not counted as freed. Returns
    /// what was given back.
    pub fn lend(&mut self, kind: Kind, bytes: usize) -> usize {
        let i = kind.at();
        let b = bytes.min(self.used[i]);
        self.used[i] -= b;
        self.total -= b;
        b
    }

    /// Counts a refusal found by a kind's own part rather than by
    /// [`Account::charge`] (stream tails past their bound, whose holders
    /// are dropped).
    pub fn note_refused(&mut self, kind: Kind) {
        self.refused[kind.at()] += 1;
    }

    /// Bytes of `kind` the bounds allow it to hold, given what the other
    /// kinds hold now: what a reported kind must shrink to.
    pub fn allowed(&self, kind: Kind) -> usize {
        self.used[kind.at()].saturating_add(self.room(kind))
    }

    /// Sets what a kind that keeps its own budget holds now (history).
    pub fn report(&mut self, kind: Kind, bytes: usize) {
        let i = kind.at();
        let old = self.used[i];
        if bytes >= old {
            self.force(kind, bytes - old);
        } else {
            self.release(kind, old - bytes);
        }
    }

    /// Notes bytes freed outside the account (a shared frame a closed
    /// subscriber was the last to hold), for [`Account::take_freed`].
    pub fn note_freed(&mut self, bytes: usize) {
        self.freed = self.freed.saturating_add(bytes);
    }

    /// Bytes released since [`Account::take_freed`] was last called.
    pub fn freed(&self) -> usize {
        self.freed
    }

    /// Bytes released since the last call (to decide when to hand memory
    /// back to the system).
    pub fn take_freed(&mut self) -> usize {
        std::mem::take(&mut self.freed)
    }

    /// Bytes of `kind` held.
    pub fn used(&self, kind: Kind) -> usize {
        self.used[kind.at()]
    }

    /// Bytes held, all kinds together.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Each kind's figures.
    pub fn usage(&self) -> impl Iterator<Item = Usage> + '_ {
        Kind::ALL.iter().map(|&kind| Usage {
            kind,
            used: self.used[kind.at()],
            limit: self.limits.per_kind[kind.at()],
            peak: self.peak[kind.at()],
            refused: self.refused[kind.at()],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn account() -> Account {
        // 64 MiB of history, 96 MiB in all: 32 MiB of headroom.
        Account::new(Limits::new(96 * MIB, 64 * MIB, 8 * MIB))
    }

    #[test]
    fn default_shares_follow_the_headroom() {
        let l = Limits::new(96 * MIB, 64 * MIB, 8 * MIB);
        assert_eq!(l.max, 96 * MIB);
        assert_eq!(l.of(Kind::History), 64 * MIB);
        assert_eq!(l.of(Kind::Requests), 8 * MIB);
        assert_eq!(l.of(Kind::Output), 8 * MIB);
        assert_eq!(l.of(Kind::Archives), 8 * MIB);
        assert_eq!(l.of(Kind::Bus), 16 * MIB);
        assert_eq!(l.of(Kind::Selectors), 2 * MIB);
        assert_eq!(l.of(Kind::Tails), 8 * MIB);
        // A bound below the history budget is raised to leave headroom.
        let l = Limits::new(MIB, 64 * MIB, MIB);
        assert_eq!(l.max, 64 * MIB + MIN_HEADROOM);
        assert_eq!(l.with(Kind::Bus, 5).of(Kind::Bus), 5);
    }

    #[test]
    fn a_kind_is_refused_past_its_own_limit() {
        let mut a = account();
        assert_eq!(a.charge(Kind::Output, 8 * MIB - 10), Ok(()));
        assert_eq!(
            a.charge(Kind::Output, 11),
            Err(Refusal::Kind {
                kind: Kind::Output,
                want: 11,
                limit: 8 * MIB
            })
        );
        // Nothing was charged by the refusal; what fits still does.
        assert_eq!(a.used(Kind::Output), 8 * MIB - 10);
        assert_eq!(a.charge(Kind::Output, 10), Ok(()));
        // Other kinds are unaffected by this one's limit.
        assert_eq!(a.charge(Kind::Requests, MIB), Ok(()));
        let u: Vec<Usage> = a.usage().collect();
        assert_eq!(u[2].kind, Kind::Output);
        assert_eq!((u[2].used, u[2].refused, u[2].peak), (8 * MIB, 1, 8 * MIB));
        assert_eq!(a.total(), 9 * MIB);
    }

    #[test]
    fn history_counts_towards_the_global_bound() {
        let mut a = account();
        a.report(Kind::History, 64 * MIB);
        assert_eq!(a.total(), 64 * MIB);
        a.charge(Kind::Requests, 8 * MIB).unwrap();
        a.charge(Kind::Output, 8 * MIB).unwrap();
        a.charge(Kind::Archives, 8 * MIB).unwrap();
        // 88 MiB held; the bus may hold 16 MiB by its own limit, but only
        // 8 MiB fit under the global bound.
        let r = a.charge(Kind::Bus, 9 * MIB).unwrap_err();
        assert_eq!(
            r,
            Refusal::Global {
                kind: Kind::Bus,
                want: 9 * MIB,
                max: 96 * MIB
            }
        );
        assert_eq!(r.kind(), Kind::Bus);
        assert!(r.to_string().contains("--memory-max"), "{r}");
        assert_eq!(a.charge(Kind::Bus, 8 * MIB), Ok(()));
        // History shrinking (evictions) makes room again.
        a.report(Kind::History, 60 * MIB);
        assert_eq!(a.charge(Kind::Selectors, 2 * MIB), Ok(()));
        assert_eq!(a.total(), 96 * MIB - 2 * MIB);
        // History is reported, never refused, even past the bound.
        a.report(Kind::History, 70 * MIB);
        assert_eq!(a.used(Kind::History), 70 * MIB);
        assert!(a.check(Kind::Selectors, 1).is_err());
    }

    #[test]
    fn releases_never_go_below_zero_and_are_noted_as_freed() {
        let mut a = account();
        a.charge(Kind::Output, 100).unwrap();
        a.release(Kind::Output, 60);
        a.release(Kind::Output, 60);
        assert_eq!(a.used(Kind::Output), 0);
        assert_eq!(a.total(), 0);
        a.note_freed(1000);
        assert_eq!(a.take_freed(), 1100);
        // Lent bytes come back at once: not freed.
        a.charge(Kind::Requests, 500).unwrap();
        assert_eq!(a.lend(Kind::Requests, 500), 500);
        a.force(Kind::Requests, 700);
        assert_eq!((a.used(Kind::Requests), a.freed()), (700, 0));
        a.release(Kind::Requests, 700);
        assert_eq!(a.take_freed(), 700);
        // A forced charge passes the bounds but still counts.
        a.force(Kind::Output, 9 * MIB);
        assert_eq!(a.used(Kind::Output), 9 * MIB);
        assert!(a.charge(Kind::Output, 1).is_err());
    }

    /// Room lent to a part: admitted growth is charged at the settling,
    /// refusals counted there, and the room follows the account.
    #[test]
    fn a_lease_lends_room_and_settles() {
        let mut a = account();
        let mut l = Lease::new(Kind::Bus);
        assert_eq!(l.room(), 0, "nothing before the first settling");
        assert!(!l.admit(1));
        l.settle(&mut a);
        assert_eq!(l.room(), 16 * MIB);
        assert_eq!(a.usage().find(|u| u.kind == Kind::Bus).unwrap().refused, 1);
        assert!(l.admit(10 * MIB));
        assert!(!l.admit(7 * MIB), "6 MiB left");
        assert!(l.admit(6 * MIB));
        assert_eq!(a.used(Kind::Bus), 0, "charged at the settling");
        l.settle(&mut a);
        assert_eq!(a.used(Kind::Bus), 16 * MIB);
        assert_eq!(l.room(), 0);
        let u = a.usage().find(|u| u.kind == Kind::Bus).unwrap();
        assert_eq!((u.refused, u.peak), (2, 16 * MIB));
        // The part let go of it (the next report says so): room again, as
        // far as the global bound lets.
        a.report(Kind::Bus, 0);
        a.report(Kind::History, 90 * MIB);
        l.settle(&mut a);
        assert_eq!(l.room(), 6 * MIB);
    }

    /// The bus and selectors are reported each turn and charged between
    /// reports: a charge admits growth against the reported figure, and
    /// the next report replaces charge and estimate by what is held.
    #[test]
    fn reported_kinds_are_charged_between_reports() {
        let mut a = account();
        assert_eq!(a.room(Kind::Selectors), 2 * MIB);
        a.report(Kind::Selectors, MIB);
        assert_eq!(a.room(Kind::Selectors), MIB);
        // A new selector stream costing 600 KiB fits once, not twice.
        assert_eq!(a.charge(Kind::Selectors, 600 << 10), Ok(()));
        let r = a.charge(Kind::Selectors, 600 << 10).unwrap_err();
        assert_eq!(r.kind(), Kind::Selectors);
        assert!(r.to_string().contains("selectors memory"), "{r}");
        // The registry really grew by 500 KiB: the report says so, and
        // the room follows.
        a.report(Kind::Selectors, MIB + (500 << 10));
        assert_eq!(a.used(Kind::Selectors), MIB + (500 << 10));
        assert_eq!(a.room(Kind::Selectors), 524 << 10);
        let u = a.usage().find(|u| u.kind == Kind::Selectors).unwrap();
        assert_eq!((u.refused, u.peak), (1, MIB + (600 << 10)));
        // Room is the smaller of the kind's and the global bound's.
        a.report(Kind::History, 64 * MIB);
        a.charge(Kind::Requests, 8 * MIB).unwrap();
        a.charge(Kind::Output, 8 * MIB).unwrap();
        a.charge(Kind::Archives, 8 * MIB).unwrap();
        let left = 96 * MIB - a.total();
        assert_eq!(a.room(Kind::Bus), left);
        assert!(a.charge(Kind::Bus, left + 1).is_err());
        a.report(Kind::Bus, left);
        assert_eq!(a.room(Kind::Bus), 0);
        assert_eq!(a.room(Kind::Selectors), 0);
        // Released when the bus lets go.
        a.report(Kind::Bus, 0);
        assert_eq!(a.room(Kind::Bus), left.min(16 * MIB));
        assert_eq!(a.take_freed(), left + (100 << 10));
    }

    /// What a reported kind may hold is the smaller of its limit and what
    /// the global bound leaves beside the other kinds; a refusal its part
    /// finds is counted.
    #[test]
    fn a_reported_kind_is_allowed_what_the_bounds_leave() {
        let mut a = account();
        assert_eq!(a.allowed(Kind::Tails), 8 * MIB);
        a.report(Kind::Tails, 3 * MIB);
        assert_eq!(a.allowed(Kind::Tails), 8 * MIB);
        a.report(Kind::History, 64 * MIB);
        a.charge(Kind::Bus, 16 * MIB).unwrap();
        a.charge(Kind::Requests, 8 * MIB).unwrap();
        // 91 MiB held of 96: the 3 MiB of tails and 5 more.
        assert_eq!(a.allowed(Kind::Tails), 8 * MIB);
        a.charge(Kind::Output, 4 * MIB).unwrap();
        assert_eq!(a.allowed(Kind::Tails), 4 * MIB);
        a.note_refused(Kind::Tails);
        let u = a.usage().find(|u| u.kind == Kind::Tails).unwrap();
        assert_eq!((u.used, u.refused), (3 * MIB, 1));
    }
}
