//! Mercure topic selectors: `*`, exact topics, and RFC 6570 level-1 URI
//! templates. Owns parsing and matching only; it must not decide who holds
//! which selectors, and matching must stay polynomial whatever the template
//! and topic are (no backtracking), since both can come from a token.

use std::cell::OnceCell;

/// Longest selector accepted, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 2048;
/// Longest URI template accepted, in bytes: no topic is longer than 1,024
/// bytes, and matching work grows with the template.
pub const MAX_TEMPLATE_BYTES: usize = 1024;
/// Most variables in one URI template: matching costs one pass over the
/// topic per run of variables, so this bounds it.
pub const MAX_TEMPLATE_VARS: usize = 16;

/// Why a selector string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorError {
    /// The empty string names no topic.
    Empty,
    /// Longer than [`MAX_SELECTOR_BYTES`] (or a template longer than
    /// [`MAX_TEMPLATE_BYTES`]).
    TooLong,
    /// A template with more than [`MAX_TEMPLATE_VARS`] variables.
    TooManyVars,
    /// A `{` without its `}`, or a `}` without its `{`.
    Unbalanced,
    /// A `{` inside a variable.
    Nested,
    /// `{}`.
    EmptyVar,
    /// A name with characters outside level 1 (operators such as `+` or
    /// `#`, modifiers such as `*` or `:`), which we do not implement.
    BadVarName,
    /// A `%` in a template literal that does not start a `%XX` escape
    /// (RFC 6570 §2.1 allows `%` there only as pct-encoded). Exact topics
    /// are compared as strings and keep any `%`.
    BadPercent,
}

impl SelectorError {
    /// A reason for the client.
    pub fn message(self) -> String {
        match self {
            SelectorError::Empty => "an empty selector names no topic".into(),
            SelectorError::TooLong => format!(
                "too long: a selector is at most {MAX_SELECTOR_BYTES} bytes, a URI template at most {MAX_TEMPLATE_BYTES}"
            ),
            SelectorError::TooManyVars => format!(
                "a URI template has at most {MAX_TEMPLATE_VARS} variables"
            ),
            SelectorError::Unbalanced => "unbalanced braces in the URI template".into(),
            SelectorError::Nested => "'{' inside a template variable".into(),
            SelectorError::EmptyVar => "an empty template variable {}".into(),
            SelectorError::BadVarName => {
                "template variables are level-1 RFC 6570 names (letters, digits, _, ., %XX)".into()
            }
            SelectorError::BadPercent => {
                "'%' in a URI template literal must start a %XX escape (RFC 6570)".into()
            }
        }
    }
}

/// A compiled template: literals and runs of variables. Adjacent variables
/// merge into one run, since `{a}{b}` matches exactly "two or more value
/// tokens": a run costs one pass over the topic however many it merges.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// Literal bytes (in [`Template::text`]) and their KMP failure table
    /// (in [`Template::fails`]), so finding every place the literal occurs
    /// is one pass, never literal × topic.
    Lit(Span),
    /// At least this many value tokens.
    Var(u8),
}

/// Where a literal's bytes are in its template's one buffer (one
/// allocation for all literals, read in order by every matcher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    at: u16,
    len: u16,
}

impl Span {
    fn range(self) -> std::ops::Range<usize> {
        self.at as usize..self.at as usize + self.len as usize
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    segs: Box<[Seg]>,
    /// Every literal's bytes, one after another.
    text: Box<str>,
    /// Every literal's KMP failure table, at the same offsets.
    fails: Box<[u16]>,
    /// Shortest topic it can match.
    min_len: usize,
    /// The template with variable names erased (`/a/{2}/b`): templates
    /// with the same key match the same topics.
    key: Box<str>,
    /// Exact necessary conditions, checked in a few operations before any
    /// matcher runs (see [`Topic`] for the topic's side). No value token
    /// holds a hard byte (see [`is_hard`]), so a topic's hard bytes are
    /// exactly the literals' hard bytes, in order: this hashes them.
    hard: u64,
    /// How often each soft byte occurs in the literals (sorted by byte):
    /// each literal byte is some topic byte, so the topic has at least as
    /// many.
    soft: Box<[(u8, u16)]>,
    /// Whether a literal holds `%` (which could match a topic's lone `%`
    /// or the start of a triplet: see [`greedy_applies`]).
    pct: bool,
    /// Whether a literal ends with `%` or `%` and one byte (so could end
    /// inside a topic's triplet). Never, for a template [`compile`]
    /// accepts (see [`valid_literal`]); kept as the guard the greedy pass's
    /// proof names.
    pct_tail: bool,
    /// Per literal, where it can start at all: at least the shortest the
    /// segments before it take, and with room for the shortest after it.
    places: Box<[Place]>,
}

impl Template {
    fn lit(&self, s: Span) -> &str {
        &self.text[s.range()]
    }

    fn fail(&self, s: Span) -> &[u16] {
        &self.fails[s.range()]
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    first: u8,
    last: u8,
    len: u16,
    /// Shortest the segments before it take.
    before: u16,
    /// Shortest the segments after it take, plus its own length.
    after: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Any,
    Exact,
    Template(Box<Template>),
    /// A Mercure draft-08 `match_urlpattern` value and the hub URL
    /// relative topics resolve against.
    #[cfg(feature = "mercure")]
    UrlPattern(Box<(super::urlpattern::UrlPattern, Option<super::url::Url>)>),
}

/// One parsed topic selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    raw: String,
    kind: Kind,
}

impl Selector {
    /// Parses `s`: `*`, a template if it contains `{`, else an exact topic.
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        if s.is_empty() {
            return Err(SelectorError::Empty);
        }
        if s.len() > MAX_SELECTOR_BYTES {
            return Err(SelectorError::TooLong);
        }
        let kind = if s == "*" {
            Kind::Any
        } else if s.contains('{') {
            if s.len() > MAX_TEMPLATE_BYTES {
                return Err(SelectorError::TooLong);
            }
            Kind::Template(Box::new(compile(s)?))
        } else {
            Kind::Exact
        };
        Ok(Selector {
            raw: s.to_string(),
            kind,
        })
    }

    /// A draft-08 URL pattern as a selector (so it is pooled and cached
    /// like a template). Its name starts with `}`, which no topic and no
    /// template can, so it never meets either; relative patterns and
    /// topics resolve against `hub`, which the name records.
    #[cfg(feature = "mercure")]
    pub fn url_pattern(
        pattern: &str,
        hub: Option<&super::url::Url>,
    ) -> Result<Selector, super::urlpattern::PatternError> {
        let p = super::urlpattern::UrlPattern::compile(pattern, hub)?;
        let base = hub.map_or(String::new(), |h| {
            format!("{}://{}:{}", h.protocol(), h.hostname(), h.port())
        });
        Ok(Selector {
            raw: format!("}}urlpattern {base} {pattern}"),
            kind: Kind::UrlPattern(Box::new((p, hub.cloned()))),
        })
    }

    /// The pattern of a selector made by [`Selector::url_pattern`].
    #[cfg(feature = "mercure")]
    pub fn pattern(&self) -> Option<&str> {
        match &self.kind {
            Kind::UrlPattern(p) => Some(p.0.as_str()),
            _ => None,
        }
    }

    /// The selector as written (a URL pattern's: its internal key).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// What its subscriber asked for: the selector, or a URL pattern as
    /// written (what a `gap` event names).
    pub fn shown(&self) -> &str {
        match &self.kind {
            #[cfg(feature = "mercure")]
            Kind::UrlPattern(p) => p.0.as_str(),
            _ => &self.raw,
        }
    }

    /// What decides which topics it matches: selectors with the same key
    /// match the same topics (template variable names are erased).
    pub fn key(&self) -> &str {
        match &self.kind {
            Kind::Template(t) => &t.key,
            _ => &self.raw,
        }
    }

    /// Heap bytes it holds (text, compiled template or pattern), for the
    /// memory account's `selectors` kind: an estimate from lengths, not
    /// the allocator's figure.
    pub fn heap_bytes(&self) -> usize {
        self.raw.capacity()
            + match &self.kind {
                Kind::Any | Kind::Exact => 0,
                Kind::Template(t) => {
                    std::mem::size_of::<Template>()
                        + t.segs.len() * std::mem::size_of::<Seg>()
                        + t.text.len()
                        + t.fails.len() * 2
                        + t.key.len()
                        + t.soft.len() * std::mem::size_of::<(u8, u16)>()
                        + t.places.len() * std::mem::size_of::<Place>()
                }
                #[cfg(feature = "mercure")]
                Kind::UrlPattern(p) => {
                    std::mem::size_of::<(super::urlpattern::UrlPattern, Option<super::url::Url>)>()
                        + p.0.heap_bytes()
                        + p.1.as_ref().map_or(0, super::url::Url::heap_bytes)
                }
            }
    }

    /// What matching one topic costs, roughly, in template matches: a URL
    /// pattern parses the topic as a URL first (tens of times a template's
    /// summary check). What bounds how many topics one subscription may
    /// have matched at once (a selector stream's rebuild).
    pub fn match_cost(&self) -> usize {
        match &self.kind {
            #[cfg(feature = "mercure")]
            Kind::UrlPattern(_) => 32,
            _ => 1,
        }
    }

    /// Whether this is `*`.
    pub fn is_any(&self) -> bool {
        self.kind == Kind::Any
    }

    /// Whether `topic` is selected.
    pub fn matches(&self, topic: &str) -> bool {
        self.match_steps(topic).0
    }

    /// Whether a prepared topic is selected: the same answer as
    /// [`Selector::matches`], cheaper when one topic meets many selectors.
    /// A template is first held against the topic's exact summary (length,
    /// hard bytes, byte counts, first and last literal), which refuses
    /// most in a few operations; one that passes is matched greedily (see
    /// [`template_matches_greedy`]) or, where that pass cannot decide, by
    /// the bitset matcher.
    pub fn matches_in(&self, topic: &Topic<'_>) -> bool {
        match &self.kind {
            Kind::Any => true,
            Kind::Exact => self.raw == topic.topic,
            Kind::Template(t) => template_matches_fast(t, topic),
            #[cfg(feature = "mercure")]
            Kind::UrlPattern(_) => self.match_steps_in(topic).0,
        }
    }

    /// The bitset matcher alone (no summary, no greedy pass), with its
    /// steps (a step is one 64-bit word operation here): at most about
    /// (literal bytes + 20 per segment) × 17. A topic over 1,024 bytes
    /// takes [`Selector::match_steps`].
    pub fn match_steps_in(&self, topic: &Topic<'_>) -> (bool, u64) {
        match (&self.kind, topic.masks()) {
            (Kind::Template(t), Some(m)) => {
                let mut steps = 0;
                let r = template_matches_bits(t, topic.topic.as_bytes(), m, &mut steps);
                (r, steps)
            }
            #[cfg(feature = "mercure")]
            (Kind::UrlPattern(p), _) => {
                let (base, url) = topic.url.get_or_init(|| {
                    (
                        p.1.clone(),
                        super::url::Url::parse(topic.topic, p.1.as_ref()),
                    )
                });
                match url {
                    Some(u) if *base == p.1 => p.0.match_steps(u),
                    None if *base == p.1 => (false, 1),
                    _ => self.match_steps(topic.topic),
                }
            }
            _ => self.match_steps(topic.topic),
        }
    }

    /// [`Selector::matches`], with the elementary steps it took: at most
    /// about (runs of variables + literals + 1) × (topic length + 1) plus
    /// the template length, whatever the template and topic are.
    pub fn match_steps(&self, topic: &str) -> (bool, u64) {
        match &self.kind {
            Kind::Any => (true, 1),
            Kind::Exact => (self.raw == topic, 1 + topic.len() as u64),
            Kind::Template(t) => {
                let mut steps = 0;
                let m = template_matches(t, topic.as_bytes(), &mut steps);
                (m, steps)
            }
            #[cfg(feature = "mercure")]
            Kind::UrlPattern(p) => match super::url::Url::parse(topic, p.1.as_ref()) {
                Some(u) => {
                    let (m, steps) = p.0.match_steps(&u);
                    (m, steps + topic.len() as u64)
                }
                None => (false, 1 + topic.len() as u64),
            },
        }
    }
}

/// Whether any of `selectors` matches `topic`.
pub fn any_match(selectors: &[Selector], topic: &str) -> bool {
    let templates = selectors
        .iter()
        .filter(|s| matches!(s.kind, Kind::Template(_)))
        .count();
    if templates < 2 {
        return selectors.iter().any(|s| s.matches(topic));
    }
    let t = Topic::new(topic);
    selectors.iter().any(|s| s.matches_in(&t))
}

/// Words of a position set over a topic of up to [`BITS_TOPIC_BYTES`].
const W: usize = BITS_TOPIC_BYTES / 64 + 1;
/// Longest topic matched with position bitsets (Mercure topics all are).
const BITS_TOPIC_BYTES: usize = 1024;

type Bits = [u64; W];

/// A topic prepared once for matching against many selectors: a summary
/// every template is held against first (its hard bytes, byte counts,
/// whether it holds `%`), built in one pass; the token runs the greedy
/// matcher walks and the bitsets the bitset matcher uses are built on
/// first need only, since most publishes never need them.
pub struct Topic<'a> {
    topic: &'a str,
    /// Its hard bytes (see [`is_hard`]), hashed in order.
    hard: u64,
    /// How often each byte occurs.
    counts: [u32; 256],
    /// Whether it holds `%`.
    pct: bool,
    /// One past the last offset of each byte (0: absent), so a literal
    /// that cannot occur past a point is refused without a search.
    last: [u32; 256],
    runs: OnceCell<Runs>,
    masks: OnceCell<Option<Box<Masks>>>,
    /// The offsets of each byte, in order, grouped by byte: byte `c`'s
    /// are `at[start[c]..start[c + 1]]`.
    offsets: OnceCell<Offsets>,
    /// The topic parsed as a URL for URL patterns, once, with the base it
    /// was resolved against (patterns of another hub URL parse again).
    #[cfg(feature = "mercure")]
    url: OnceCell<UrlOf>,
}

/// `start` (per byte, and one past the last) and `at`: see [`Topic`].
type Offsets = (Box<[u32; 257]>, Box<[u32]>);

/// Where the topic's value tokens lie, read left to right.
struct Runs {
    /// Per offset: [`ONE`], [`TRIPLET`], [`INSIDE`] or [`NONE`].
    class: Box<[u8]>,
    /// Per offset (and the length): the first offset at or after it where
    /// no token starts, or the length. Tokens never cross one, so a run of
    /// variables starting at `p` ends at `stop[p]` at the latest.
    stop: Box<[u32]>,
}

/// A one-byte token (an unreserved character).
const ONE: u8 = 0;
/// The `%` of a percent-encoded triplet (a three-byte token).
const TRIPLET: u8 = 1;
/// The second or third byte of a triplet.
const INSIDE: u8 = 2;
/// No token starts here (a hard byte or a lone `%`).
const NONE: u8 = 3;

impl Runs {
    fn new(b: &[u8]) -> Runs {
        let n = b.len();
        let mut class = vec![NONE; n];
        let mut i = 0;
        while i < n {
            match value_token(&b[i..]) {
                Some(1) => {
                    class[i] = ONE;
                    i += 1;
                }
                Some(_) => {
                    class[i] = TRIPLET;
                    class[i + 1] = INSIDE;
                    class[i + 2] = INSIDE;
                    i += 3;
                }
                None => i += 1,
            }
        }
        let mut stop = vec![n as u32; n + 1];
        for i in (0..n).rev() {
            stop[i] = if class[i] == NONE {
                i as u32
            } else {
                stop[i + 1]
            };
        }
        Runs {
            class: class.into(),
            stop: stop.into(),
        }
    }
}

#[cfg(feature = "mercure")]
type UrlOf = (Option<super::url::Url>, Option<super::url::Url>);

struct Masks {
    /// Offsets of unreserved characters (one-byte value tokens).
    unres: Bits,
    /// Offsets where a percent-encoded triplet (a three-byte token) starts.
    pct: Bits,
    /// `unres`, plus every byte of a triplet: what a run of tokens covers
    /// when walked one byte at a time.
    wide: Bits,
    /// The second byte of each triplet, and the second and third.
    inner1: Bits,
    inner: Bits,
    /// Offsets of every byte (`0..len`).
    chars: Bits,
    /// Offsets of each byte value.
    eq: Vec<Bits>,
}

impl<'a> Topic<'a> {
    /// Prepares `topic` (one pass over it).
    pub fn new(topic: &'a str) -> Topic<'a> {
        let mut hard = Fnv::new();
        let mut counts = [0u32; 256];
        let mut last = [0u32; 256];
        let b = topic.as_bytes();
        for (i, &c) in b.iter().enumerate() {
            counts[c as usize] += 1;
            last[c as usize] = i as u32 + 1;
            if is_hard(c) {
                hard.push(c);
            }
        }
        Topic {
            topic,
            hard: hard.0,
            pct: counts[b'%' as usize] > 0,
            last,
            counts,
            runs: OnceCell::new(),
            masks: OnceCell::new(),
            offsets: OnceCell::new(),
            #[cfg(feature = "mercure")]
            url: OnceCell::new(),
        }
    }

    /// The offsets of byte `c`, in order.
    fn offsets(&self, c: u8) -> &[u32] {
        let (start, at) = self.offsets.get_or_init(|| {
            let mut start = Box::new([0u32; 257]);
            for c in 0..256 {
                start[c + 1] = start[c] + self.counts[c];
            }
            let mut next = *start;
            let mut at = vec![0u32; self.topic.len()];
            for (i, &c) in self.topic.as_bytes().iter().enumerate() {
                at[next[c as usize] as usize] = i as u32;
                next[c as usize] += 1;
            }
            (start, at.into())
        });
        &at[start[c as usize] as usize..start[c as usize + 1] as usize]
    }

    fn runs(&self) -> &Runs {
        self.runs.get_or_init(|| Runs::new(self.topic.as_bytes()))
    }

    /// Bitsets, for a topic of at most 1,024 bytes (every Mercure topic);
    /// a longer one is matched by the position-set walk, linear too.
    fn masks(&self) -> Option<&Masks> {
        self.masks
            .get_or_init(|| Masks::new(self.topic.as_bytes()))
            .as_deref()
    }
}

impl Masks {
    // Word-parallel loops over several bitsets at once read best indexed.
    #[allow(clippy::needless_range_loop)]
    fn new(b: &[u8]) -> Option<Box<Masks>> {
        if b.len() > BITS_TOPIC_BYTES {
            return None;
        }
        let mut m = Masks {
            unres: [0; W],
            pct: [0; W],
            wide: [0; W],
            inner1: [0; W],
            inner: [0; W],
            chars: [0; W],
            eq: vec![[0; W]; 256],
        };
        for (i, &c) in b.iter().enumerate() {
            let (w, bit) = (i / 64, 1u64 << (i % 64));
            m.eq[c as usize][w] |= bit;
            m.chars[w] |= bit;
            match value_token(&b[i..]) {
                Some(1) => m.unres[w] |= bit,
                Some(_) => m.pct[w] |= bit,
                None => {}
            }
        }
        m.inner1 = shl(&m.pct, 1);
        let inner2 = shl(&m.pct, 2);
        for i in 0..W {
            m.inner[i] = m.inner1[i] | inner2[i];
            m.wide[i] = m.unres[i] | m.pct[i] | m.inner[i];
        }
        Some(Box::new(m))
    }
}

/// [`Selector::matches_in`] for a template: the summary, then a matcher.
fn template_matches_fast(t: &Template, topic: &Topic<'_>) -> bool {
    let b = topic.topic.as_bytes();
    if b.len() < t.min_len || t.hard != topic.hard {
        return false;
    }
    if let Some(&Seg::Lit(l)) = t.segs.first() {
        let l = t.lit(l);
        if !b.starts_with(l.as_bytes()) {
            return false;
        }
    }
    if let Some(&Seg::Lit(l)) = t.segs.last() {
        let l = t.lit(l);
        if !b.ends_with(l.as_bytes()) {
            return false;
        }
    }
    if t.soft
        .iter()
        .any(|&(c, k)| topic.counts[c as usize] < k as u32)
    {
        return false;
    }
    // Each literal needs a place: from the shortest prefix before it on,
    // with room after it, and no later than its first and last byte's
    // last offsets allow.
    let n = b.len();
    // Last literals first: the most is before them, so they fail most.
    let fits = t.places.iter().rev().all(|p| {
        let by_first = topic.last[p.first as usize] as i64 - 1;
        let by_last = topic.last[p.last as usize] as i64 - p.len as i64;
        let latest = by_first.min(by_last).min((n - p.after as usize) as i64);
        latest >= p.before as i64
    });
    if !fits {
        return false;
    }
    if greedy_applies(t, topic) {
        if let Some(m) = template_matches_greedy(t, topic, topic.runs()) {
            return m;
        }
    }
    let mut steps = 0;
    match topic.masks() {
        Some(m) => template_matches_bits(t, b, m, &mut steps),
        None => template_matches(t, b, &mut steps),
    }
}

/// The first offset from `from` on where `lit` occurs, if one is at most
/// `hi`; `None` if `from` is not a character boundary (never after a
/// token or a literal). The topic's last offsets of the literal's first
/// and last byte bound where it can start; candidates come from the
/// offsets of its rarest byte (among its first 16), a binary search away,
/// and after a few that fail the rest is one linear search.
fn find(t: &Topic<'_>, from: usize, hi: usize, lit: &str) -> Option<Option<usize>> {
    let l = lit.as_bytes();
    let (Some(&first), Some(&end)) = (l.first(), l.last()) else {
        return Some(Some(from));
    };
    // One past the latest start each end byte allows.
    let by_first = t.last[first as usize] as usize;
    let by_end = (t.last[end as usize] as usize).saturating_sub(l.len() - 1);
    let limit = by_first.min(by_end).min(hi + 1);
    if from >= limit {
        return Some(None);
    }
    let (j, &c) = l
        .iter()
        .enumerate()
        .take(16)
        .min_by_key(|&(_, &c)| t.counts[c as usize])?;
    let offsets = t.offsets(c);
    let cands = &offsets[offsets.partition_point(|&o| (o as usize) < from + j)..];
    let mut from = from;
    for &o in cands.iter().take(8) {
        let at = o as usize - j;
        if at >= limit {
            return Some(None);
        }
        if t.topic.as_bytes()[at..].starts_with(l) {
            return Some(Some(at));
        }
        from = at + 1;
    }
    if cands.len() <= 8 {
        return Some(None);
    }
    let found = t.topic.get(from..)?.find(lit).map(|p| from + p);
    Some(found.filter(|&p| p < limit))
}

/// Whether [`template_matches_greedy`] is exact for this pair: when no
/// literal can end inside one of the topic's triplets. That holds if no
/// literal or no topic holds `%`, or if no literal ends with `%` or `%`
/// and one byte. (Then each `%` of a literal has two bytes after it: if
/// hex digits, it matches only a triplet's `%`, else only a lone `%`.)
fn greedy_applies(t: &Template, topic: &Topic<'_>) -> bool {
    !t.pct || !topic.pct || !t.pct_tail
}

/// Matches leftmost-first, one pass over the topic at most: each literal
/// goes at its first place the variables before it can reach, found by a
/// substring search. `None` if it cannot decide (the caller falls back to
/// an exhaustive matcher). Exact where [`greedy_applies`]:
///
/// Then every split point is on the one chain of tokens read left to
/// right ([`Runs`]): from such a point a run of variables steps along the
/// chain, and a literal that starts on it (one starting inside a triplet is
/// skipped) ends on it, or it would end with the triplet's `%` or `%` and
/// one more byte. So a run of `k` variables from `p` reaches exactly the
/// chain's offsets from its `k`-th after `p` to `stop[p]`, and the literal
/// after it goes somewhere in that range. If the literal holds a byte that
/// can only match where no token starts (a hard byte, or a `%` without hex
/// digits after it), its first such byte must be at `stop[p]`: one place
/// only. If not, moving it from a later place to the first one moves the
/// next range's start no later and keeps its end (a byte between the two
/// ends that starts no token would have to be in the literal), so whatever
/// matched after the later place matches after the first one too.
fn template_matches_greedy(t: &Template, prepared: &Topic<'_>, r: &Runs) -> Option<bool> {
    let topic = prepared.topic;
    let b = topic.as_bytes();
    let n = b.len();
    let segs = &t.segs;
    let (mut p, mut i) = match segs.first() {
        Some(&Seg::Lit(l)) if b.starts_with(t.lit(l).as_bytes()) => (l.len as usize, 1),
        Some(Seg::Lit(..)) => return Some(false),
        _ => (0, 0),
    };
    while i < segs.len() {
        let Seg::Var(k) = segs[i] else {
            return None; // literals and runs alternate
        };
        let mut lo = p;
        for _ in 0..k {
            match r.class.get(lo) {
                Some(&ONE) => lo += 1,
                Some(&TRIPLET) => lo += 3,
                _ => return Some(false),
            }
        }
        let hi = *r.stop.get(p)? as usize;
        let lit = match segs.get(i + 1) {
            None => return Some(hi == n),
            Some(&Seg::Lit(l)) => t.lit(l),
            Some(Seg::Var(_)) => return None,
        };
        if i + 2 == segs.len() {
            // The last literal ends the topic.
            let Some(at) = n.checked_sub(lit.len()) else {
                return Some(false);
            };
            return Some(
                lo <= at
                    && at <= hi
                    && r.class.get(at) != Some(&INSIDE)
                    && b[at..] == *lit.as_bytes(),
            );
        }
        let mut from = lo;
        let at = loop {
            // Mostly the literal is right where the variables can first end.
            let lb = lit.as_bytes();
            let at = if b.get(from) == lb.first() && b[from..].starts_with(lb) {
                Some(from)
            } else {
                find(prepared, from, hi, lit)?
            };
            let Some(at) = at else {
                return Some(false);
            };
            if at > hi {
                return Some(false);
            }
            if r.class.get(at) != Some(&INSIDE) {
                break at;
            }
            // Inside a triplet no variable ends: the next place.
            from = at + 1;
        };
        p = at + lit.len();
        i += 2;
    }
    Some(p == n)
}

fn compile(s: &str) -> Result<Template, SelectorError> {
    let mut segs: Vec<Seg> = Vec::new();
    let mut vars = 0usize;
    let mut key = String::new();
    let mut text = String::new();
    let mut fails = Vec::new();
    let mut flush = |lit: &str, segs: &mut Vec<Seg>| {
        if !lit.is_empty() {
            segs.push(Seg::Lit(Span {
                at: text.len() as u16,
                len: lit.len() as u16,
            }));
            text.push_str(lit);
            fails.extend(kmp_table(lit.as_bytes()));
        }
    };
    let b = s.as_bytes();
    // Braces are ASCII, so every literal is a `str` slice.
    let mut lit_start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'}' => return Err(SelectorError::Unbalanced),
            b'{' => {
                let close = b[i + 1..]
                    .iter()
                    .position(|&c| c == b'}' || c == b'{')
                    .map(|p| i + 1 + p);
                let close = match close {
                    Some(c) if b[c] == b'{' => return Err(SelectorError::Nested),
                    Some(c) => c,
                    None => return Err(SelectorError::Unbalanced),
                };
                valid_var_name(&b[i + 1..close])?;
                vars += 1;
                if vars > MAX_TEMPLATE_VARS {
                    return Err(SelectorError::TooManyVars);
                }
                valid_literal(&b[lit_start..i])?;
                flush(&s[lit_start..i], &mut segs);
                match segs.last_mut() {
                    Some(Seg::Var(k)) => *k += 1,
                    _ => segs.push(Seg::Var(1)),
                }
                i = close + 1;
                lit_start = i;
            }
            _ => i += 1,
        }
    }
    valid_literal(&b[lit_start..])?;
    flush(&s[lit_start..], &mut segs);
    let mut min_len = 0;
    let mut hard = Fnv::new();
    let mut counts = [0u16; 256];
    for seg in &segs {
        match seg {
            &Seg::Lit(l) => {
                let l = &text[l.range()];
                min_len += l.len();
                key.push_str(l);
                for &c in l.as_bytes() {
                    if is_hard(c) {
                        hard.push(c);
                    } else {
                        counts[c as usize] += 1;
                    }
                }
            }
            Seg::Var(k) => {
                min_len += *k as usize;
                key.push_str(&format!("{{{k}}}"));
            }
        }
    }
    let pct_tail = segs.iter().any(|seg| match seg {
        &Seg::Lit(l) => {
            let l = text[l.range()].as_bytes();
            l.ends_with(b"%") || (l.len() >= 2 && l[l.len() - 2] == b'%')
        }
        Seg::Var(_) => false,
    });
    let mut places = Vec::new();
    let mut before = 0;
    for seg in &segs {
        match seg {
            &Seg::Lit(l) => {
                let b = text[l.range()].as_bytes();
                places.push(Place {
                    first: b[0],
                    last: b[b.len() - 1],
                    len: b.len() as u16,
                    before: before as u16,
                    after: (min_len - before) as u16,
                });
                before += b.len();
            }
            Seg::Var(k) => before += *k as usize,
        }
    }
    let soft: Vec<(u8, u16)> = (0..=255u8).zip(counts).filter(|&(_, k)| k > 0).collect();
    Ok(Template {
        segs: segs.into(),
        text: text.into(),
        fails: fails.into(),
        min_len,
        key: key.into(),
        hard: hard.0,
        pct: counts[b'%' as usize] > 0,
        pct_tail,
        places: places.into(),
        soft: soft.into(),
    })
}

/// A byte no value token holds: neither unreserved nor `%` (so not in a
/// triplet either). Such a byte in a topic can only be matched by the same
/// byte of a literal.
fn is_hard(c: u8) -> bool {
    !(c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'%'))
}

/// FNV-1a, for the hard-byte sequence (equal sequences, equal hashes; a
/// collision only lets a template through to the real matcher).
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn push(&mut self, c: u8) {
        self.0 = (self.0 ^ c as u64).wrapping_mul(0x0100_0000_01b3);
    }
}

/// KMP failure function: `f[i]` is the length of the longest proper
/// prefix of `p[..=i]` that is also its suffix.
fn kmp_table(p: &[u8]) -> Vec<u16> {
    let mut f = vec![0u16; p.len()];
    let mut k = 0usize;
    for i in 1..p.len() {
        while k > 0 && p[i] != p[k] {
            k = f[k - 1] as usize;
        }
        if p[i] == p[k] {
            k += 1;
        }
        f[i] = k as u16;
    }
    f
}

/// RFC 6570 `varname = varchar *( ["."] varchar )`, `varchar = ALPHA / DIGIT / "_" / pct-encoded`.
fn valid_var_name(name: &[u8]) -> Result<(), SelectorError> {
    if name.is_empty() {
        return Err(SelectorError::EmptyVar);
    }
    let mut i = 0;
    let mut prev_dot = true; // a leading dot is refused like a doubled one
    while i < name.len() {
        let c = name[i];
        if c == b'.' && !prev_dot {
            prev_dot = true;
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            prev_dot = false;
            i += 1;
        } else if let Some(n) = pct_len(&name[i..]) {
            prev_dot = false;
            i += n;
        } else {
            return Err(SelectorError::BadVarName);
        }
    }
    if prev_dot {
        return Err(SelectorError::BadVarName);
    }
    Ok(())
}

/// RFC 6570 §2.1: a literal's `%` only as `%` HEXDIG HEXDIG, inside the
/// literal. Besides following the RFC, this keeps every literal from
/// ending inside a topic's triplet, so the greedy pass always applies
/// (see [`greedy_applies`]) and no template is left to the bitsets by its
/// `%` alone.
fn valid_literal(lit: &[u8]) -> Result<(), SelectorError> {
    let mut i = 0;
    while i < lit.len() {
        if lit[i] != b'%' {
            i += 1;
        } else if let Some(n) = pct_len(&lit[i..]) {
            i += n;
        } else {
            return Err(SelectorError::BadPercent);
        }
    }
    Ok(())
}

fn pct_len(s: &[u8]) -> Option<usize> {
    match s {
        [b'%', a, b, ..] if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => Some(3),
        _ => None,
    }
}

/// Length of the variable-value token at the start of `s`: one unreserved
/// character or one percent-encoded triplet (never both, so the tokens
/// from a given offset form a single chain).
fn value_token(s: &[u8]) -> Option<usize> {
    match s.first() {
        Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => Some(1),
        _ => pct_len(s),
    }
}

/// Simulates every split at once: `reach[p]` says some prefix of the
/// template can end at topic offset `p`, and each segment maps that set to
/// the next in one left-to-right pass (a literal: its occurrences found by
/// KMP; a run of `k` variables: the most tokens, capped at `k`, that reach
/// each offset). So the cost is O(segments × topic + template) with no
/// backtracking, whatever the input.
fn template_matches(t: &Template, topic: &[u8], steps: &mut u64) -> bool {
    let n = topic.len();
    *steps += 1;
    if n < t.min_len {
        return false;
    }
    // Cheap refusals first: most templates differ from a topic in their
    // first or last literal.
    if let Some(&Seg::Lit(l)) = t.segs.first() {
        let l = t.lit(l);
        *steps += l.len() as u64;
        if !topic.starts_with(l.as_bytes()) {
            return false;
        }
    }
    if let Some(&Seg::Lit(l)) = t.segs.last() {
        let l = t.lit(l);
        *steps += l.len() as u64;
        if !topic.ends_with(l.as_bytes()) {
            return false;
        }
    }
    let mut reach = vec![false; n + 1];
    let mut next = vec![false; n + 1];
    // Tokens seen + 1 on the best path to each offset (0: unreached).
    let mut best = vec![0u8; n + 1];
    reach[0] = true;
    let mut lo = 0;
    for seg in t.segs.iter() {
        next.iter_mut().for_each(|r| *r = false);
        *steps += (n + 1 - lo) as u64;
        match seg {
            &Seg::Lit(sp) => {
                let (lit, fail) = (t.lit(sp).as_bytes(), t.fail(sp));
                let len = lit.len();
                let count = reach[lo..].iter().filter(|&&r| r).count();
                if count.saturating_mul(len) <= n + len {
                    for p in (lo..=n).filter(|&p| reach[p]) {
                        *steps += len as u64;
                        if topic[p..].starts_with(lit) {
                            next[p + len] = true;
                        }
                    }
                } else {
                    // Every occurrence of the literal in one pass.
                    *steps += (n - lo + len) as u64;
                    let mut k = 0usize;
                    for (i, &c) in topic.iter().enumerate().skip(lo) {
                        while k > 0 && c != lit[k] {
                            k = fail[k - 1] as usize;
                        }
                        if c == lit[k] {
                            k += 1;
                        }
                        if k == len {
                            if reach[i + 1 - len] {
                                next[i + 1] = true;
                            }
                            k = fail[k - 1] as usize;
                        }
                    }
                }
            }
            Seg::Var(want) => {
                let want = *want;
                best[lo..].iter_mut().for_each(|b| *b = 0);
                for p in lo..=n {
                    if reach[p] {
                        best[p] = best[p].max(1);
                    }
                    let b = best[p];
                    if b == 0 {
                        continue;
                    }
                    next[p] = b > want;
                    if let Some(len) = value_token(&topic[p..]) {
                        let v = (b + 1).min(want + 1);
                        best[p + len] = best[p + len].max(v);
                    }
                }
            }
        }
        std::mem::swap(&mut reach, &mut next);
        match reach[lo..].iter().position(|&r| r) {
            Some(p) => lo += p,
            None => return false,
        }
    }
    reach[n]
}

fn shl(x: &Bits, k: usize) -> Bits {
    let mut out = [0u64; W];
    let (words, bits) = (k / 64, k % 64);
    for i in (words..W).rev() {
        let lo = x[i - words] << bits;
        let carry = if bits > 0 && i > words {
            x[i - words - 1] >> (64 - bits)
        } else {
            0
        };
        out[i] = lo | carry;
    }
    out
}

fn shr(x: &Bits, k: usize) -> Bits {
    let mut out = [0u64; W];
    let (words, bits) = (k / 64, k % 64);
    for i in 0..W.saturating_sub(words) {
        let hi = x[i + words] >> bits;
        let carry = if bits > 0 && i + words + 1 < W {
            x[i + words + 1] << (64 - bits)
        } else {
            0
        };
        out[i] = hi | carry;
    }
    out
}

/// The offsets reachable from `s` by zero or more steps over `u` (each
/// step from an offset in `u` to the next): one addition, whose carries
/// run through each run of `u` from the first start in it to its end.
// Word-parallel loops over several bitsets at once read best indexed.
#[allow(clippy::needless_range_loop)]
fn fill(s: &Bits, u: &Bits) -> Bits {
    let mut out = [0u64; W];
    let mut carry = false;
    for i in 0..W {
        let (a, c1) = (s[i] & u[i]).overflowing_add(u[i]);
        let (a, c2) = a.overflowing_add(carry as u64);
        carry = c1 || c2;
        out[i] = (a ^ u[i]) | s[i];
    }
    out
}

/// The offsets reachable from `s` by zero or more value tokens. Walking a
/// triplet byte by byte (`fill` over `wide`) reaches the same offsets
/// outside triplets (triplets never overlap, and a walk that enters one at
/// its `%` leaves it at its end); inside one, only where a walk started
/// there: its second byte if a start, its third if a start or after one.
// Word-parallel loops over several bitsets at once read best indexed.
#[allow(clippy::needless_range_loop)]
fn fill_tokens(s: &Bits, m: &Masks) -> Bits {
    let f = fill(s, &m.wide);
    let mut s1 = [0u64; W];
    for i in 0..W {
        s1[i] = s[i] & m.inner1[i];
    }
    let s1 = shl(&s1, 1);
    let mut out = [0u64; W];
    for i in 0..W {
        out[i] = (f[i] & !m.inner[i]) | (s[i] & m.inner[i]) | s1[i];
    }
    out
}

/// [`template_matches`] over bitsets of offsets (a topic of at most 1,024
/// bytes): a literal keeps the reached offsets where it occurs and moves
/// them past it; a run of `k` variables takes `k` token steps (one byte
/// from an unreserved character, three from a triplet), then any number
/// more (`fill_tokens`).
// Word-parallel loops over several bitsets at once read best indexed.
#[allow(clippy::needless_range_loop)]
fn template_matches_bits(t: &Template, topic: &[u8], m: &Masks, steps: &mut u64) -> bool {
    let n = topic.len();
    *steps += 1;
    if n < t.min_len {
        return false;
    }
    if let Some(&Seg::Lit(l)) = t.segs.last() {
        let l = t.lit(l);
        *steps += l.len() as u64 / 8;
        if !topic.ends_with(l.as_bytes()) {
            return false;
        }
    }
    let mut reach = [0u64; W];
    reach[0] = 1;
    for seg in t.segs.iter() {
        *steps += W as u64;
        match seg {
            &Seg::Lit(sp) => {
                let lit = t.lit(sp).as_bytes();
                let len = lit.len();
                let count: u32 = reach.iter().map(|w| w.count_ones()).sum();
                if (count as usize).saturating_mul(len) <= len.saturating_mul(W) {
                    let mut next = [0u64; W];
                    for (wi, &w) in reach.iter().enumerate() {
                        let mut w = w;
                        while w != 0 {
                            let p = wi * 64 + w.trailing_zeros() as usize;
                            w &= w - 1;
                            *steps += 1 + len as u64 / 8;
                            if topic.get(p..).is_some_and(|r| r.starts_with(lit)) {
                                let q = p + len;
                                next[q / 64] |= 1 << (q % 64);
                            }
                        }
                    }
                    reach = next;
                } else {
                    // Offsets where the whole literal starts: its k-th
                    // byte's offsets moved back by k, intersected.
                    let mut occ = m.chars;
                    for (k, &c) in lit.iter().enumerate() {
                        *steps += W as u64;
                        let e = shr(&m.eq[c as usize], k);
                        occ.iter_mut().zip(e.iter()).for_each(|(o, e)| *o &= e);
                    }
                    reach.iter_mut().zip(occ.iter()).for_each(|(r, o)| *r &= o);
                    reach = shl(&reach, len);
                }
            }
            Seg::Var(k) => {
                for _ in 0..*k {
                    *steps += 2 * W as u64;
                    let mut one = reach;
                    let mut three = reach;
                    for i in 0..W {
                        one[i] &= m.unres[i];
                        three[i] &= m.pct[i];
                    }
                    let (one, three) = (shl(&one, 1), shl(&three, 3));
                    for i in 0..W {
                        reach[i] = one[i] | three[i];
                    }
                }
                *steps += 2 * W as u64;
                reach = fill_tokens(&reach, m);
            }
        }
        if reach.iter().all(|&w| w == 0) {
            return false;
        }
    }
    reach[n / 64] & (1 << (n % 64)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both matchers, which must agree.
    fn m(sel: &str, topic: &str) -> bool {
        let s = Selector::parse(sel).unwrap();
        let walk = s.matches(topic);
        assert_eq!(
            s.matches_in(&Topic::new(topic)),
            walk,
            "{sel:?} on {topic:?}"
        );
        walk
    }

    #[test]
    fn exact_and_any() {
        assert!(m("https://example.com/a", "https://example.com/a"));
        assert!(!m("https://example.com/a", "https://example.com/ab"));
        assert!(!m("https://example.com/a", "https://example.com/"));
        assert!(m("*", "anything/at?all#"));
        assert!(m("*", ""));
        assert!(!m("a*", "ab"), "only a lone * is a wildcard");
        assert!(m("a}b", "a}b"), "no '{{' means exact");
    }

    #[test]
    fn one_variable() {
        let t = "https://example.com/books/{id}";
        assert!(m(t, "https://example.com/books/1"));
        assert!(m(t, "https://example.com/books/a-b.c_d~e"));
        assert!(!m(t, "https://example.com/books/"));
        assert!(!m(t, "https://example.com/books/1/reviews"));
        assert!(!m(t, "https://example.com/books/1?x"));
        assert!(!m(t, "https://example.com/books/1#x"));
        assert!(!m(t, "https://example.com/books/a&b"));
        assert!(!m(t, "https://example.org/books/1"));
    }

    #[test]
    fn two_variables_and_adjacent_literals() {
        let t = "https://example.com/users/{user}/books/{id}.json";
        assert!(m(t, "https://example.com/users/kim/books/42.json"));
        assert!(m(t, "https://example.com/users/kim/books/4.2.json"));
        assert!(!m(t, "https://example.com/users/kim/books/42.xml"));
        assert!(!m(t, "https://example.com/users/a/b/books/42.json"));
        assert!(
            m("{a}-{b}", "x-y-z"),
            "the split point is found, not guessed"
        );
        assert!(m("{a}{b}", "xy"));
        assert!(!m("{a}{b}", "x"));
        assert!(m("a{x}a", "aaa"));
        assert!(!m("a{x}a", "aa"));
    }

    #[test]
    fn percent_encoded_values() {
        let t = "/t/{v}";
        assert!(m(t, "/t/a%2Fb"));
        assert!(m(t, "/t/%e2%82%ac"));
        assert!(!m(t, "/t/a%2"));
        assert!(!m(t, "/t/a%zz"));
        assert!(!m(t, "/t/%"));
        assert!(!m(t, "/t/é"));
    }

    #[test]
    fn invalid_templates() {
        use SelectorError::*;
        let cases = [
            ("", Empty),
            ("/a/{id", Unbalanced),
            ("/a/{id}}", Unbalanced),
            ("/a/{}", EmptyVar),
            ("/a/{x{y}}", Nested),
            ("/a/{+id}", BadVarName),
            ("/a/{id*}", BadVarName),
            ("/a/{id:3}", BadVarName),
            ("/a/{.id}", BadVarName),
            ("/a/{i..d}", BadVarName),
        ];
        for (s, e) in cases {
            assert_eq!(Selector::parse(s), Err(e), "{s:?}");
        }
        assert!(Selector::parse("/a/{x.y_1%41}").is_ok());
        let long = "a".repeat(MAX_SELECTOR_BYTES + 1);
        assert_eq!(Selector::parse(&long), Err(TooLong));
        assert!(Selector::parse(&long[1..]).is_ok());
    }

    /// Whether every `%` outside the braces of `t` has two hex digits
    /// after it (the RFC's rule, restated over the raw string).
    fn pct_ok(t: &str) -> bool {
        let b = t.as_bytes();
        let mut in_var = false;
        (0..b.len()).all(|i| {
            match b[i] {
                b'{' => in_var = true,
                b'}' => in_var = false,
                _ => {}
            }
            in_var
                || b[i] != b'%'
                || b.get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        })
    }

    /// [`Selector::parse`], checking a refusal for a bad `%` against
    /// [`pct_ok`] both ways: random tests then see every template the
    /// rule refuses refused, and the rest matched.
    fn parse_checked(t: &str) -> Option<Selector> {
        let r = Selector::parse(t);
        match &r {
            Err(SelectorError::BadPercent) => assert!(!pct_ok(t), "{t:?} refused"),
            Ok(_) if t.contains('{') => assert!(pct_ok(t), "{t:?} accepted"),
            _ => {}
        }
        r.ok()
    }

    #[test]
    fn percent_in_a_template_literal_must_start_an_escape() {
        for t in [
            "https://x/a%{v}",
            "https://x/a%4{v}",
            "https://x/a%4{v}1",
            "https://x/{v}%",
            "https://x/{v}%4",
            "https://x/%zz/{v}",
            "https://x/%G1/{v}",
            "/{a}%{b}",
            "/x%4{a}",
        ] {
            assert_eq!(Selector::parse(t), Err(SelectorError::BadPercent), "{t:?}");
            assert!(!pct_ok(t), "{t:?}");
        }
        assert!(SelectorError::BadPercent.message().contains("%XX"));
        // Escapes, in either case, anywhere in a literal; and in names.
        for (t, topic) in [
            ("https://x/a%41{v}", "https://x/a%41b"),
            ("https://x/{v}%2f", "https://x/b%2f"),
            ("https://x/%2F%2a/{v%41}/%7E", "https://x/%2F%2a/b/%7E"),
        ] {
            let sel = Selector::parse(t).unwrap();
            assert!(sel.matches(topic), "{t:?}");
            assert!(sel.matches_in(&Topic::new(topic)), "{t:?}");
        }
        // Exact topics are strings: any `%` stays allowed.
        for t in ["https://x/a%", "https://x/a%4", "%", "/a%zz"] {
            let sel = Selector::parse(t).unwrap();
            assert_eq!(sel.kind, Kind::Exact, "{t:?}");
            assert!(sel.matches(t) && sel.matches_in(&Topic::new(t)), "{t:?}");
        }
    }

    /// The bound [`Selector::match_steps`] promises.
    fn bound(sel: &Selector, topic: &str) -> u64 {
        let segs = 2 * MAX_TEMPLATE_VARS as u64 + 1;
        let n = topic.len() as u64 + 1;
        4 * (segs + 1) * n + 2 * sel.as_str().len() as u64
    }

    #[test]
    fn adversarial_input_takes_bounded_steps() {
        // A backtracking matcher tries every split of the a's between the
        // variables and would not finish; the step count stays linear.
        let topic = format!("https://ex.com/users/mallory/{}", "a".repeat(990));
        let cases = [
            format!("https://ex.com/users/mallory/{}x", "{v}".repeat(16)),
            format!("https://ex.com/users/mallory/{}", "{v}a".repeat(16)),
            format!("https://ex.com/users/mallory/{}b", "a{v}".repeat(16)),
            "{a}a".repeat(16),
            format!("{}aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab", "{a}".repeat(16)),
            format!(
                "https://ex.com/users/mallory/{{v1}}{}",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab{a}"
                    .repeat(12)
            ),
        ];
        let mut worst = 0.0f64;
        for t in &cases {
            let sel = Selector::parse(t).unwrap();
            for topic in [topic.clone(), format!("{topic}x"), "a".repeat(1024)] {
                let (m, steps) = sel.match_steps(&topic);
                assert!(
                    steps <= bound(&sel, &topic),
                    "{t:?}: {steps} steps on {} bytes",
                    topic.len()
                );
                worst = worst.max(steps as f64 / topic.len() as f64);
                // With bitsets: word operations, independent of the topic's
                // length past its 17 words.
                let (mb, bits) = sel.match_steps_in(&Topic::new(&topic));
                assert_eq!(m, mb);
                let segs = 2 * MAX_TEMPLATE_VARS as u64 + 1;
                let lits = t.len() as u64;
                assert!(
                    bits <= (segs * 20 + lits) * W as u64,
                    "{t:?}: {bits} word steps"
                );
            }
        }
        println!("worst steps per topic byte: {worst:.1}");
        // The match results themselves are right.
        let sel = Selector::parse(&cases[0]).unwrap();
        assert!(!sel.matches(&topic));
        assert!(sel.matches(&format!("{topic}x")));
        assert!(!sel.matches("https://ex.com/users/mallory/aaaaaaaaaaaaaaax"));
        assert!(sel.matches("https://ex.com/users/mallory/aaaaaaaaaaaaaaaax"));
    }

    #[test]
    fn templates_are_bounded() {
        let ok = "{v}".repeat(MAX_TEMPLATE_VARS);
        assert!(Selector::parse(&ok).is_ok());
        let e = Selector::parse(&format!("{ok}{{w}}")).unwrap_err();
        assert_eq!(e, SelectorError::TooManyVars);
        assert!(
            e.message().contains("at most 16 variables"),
            "{}",
            e.message()
        );
        let long = format!("/{}{{v}}", "a".repeat(MAX_TEMPLATE_BYTES));
        assert_eq!(Selector::parse(&long), Err(SelectorError::TooLong));
        // Exact selectors keep their own, larger bound.
        assert!(Selector::parse(&"a".repeat(MAX_TEMPLATE_BYTES + 1)).is_ok());
    }

    #[test]
    fn same_key_same_topics() {
        let a = Selector::parse("/u/{a}{b}/x").unwrap();
        let b = Selector::parse("/u/{c}{d}/x").unwrap();
        let c = Selector::parse("/u/{c}/x").unwrap();
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
        assert_eq!(a.key(), "/u/{2}/x");
        assert!(a.matches("/u/ab/x") && !a.matches("/u/a/x") && c.matches("/u/a/x"));
        assert!(a.matches("/u/%41b/x") && !a.matches("/u/%41/x"));
        // Two tokens, but the pct triplet is one of them.
        assert!(!Selector::parse("/{a}{b}{c}").unwrap().matches("/%41b"));
        assert!(Selector::parse("/{a}{b}").unwrap().matches("/%41b"));
    }

    /// A plain backtracking matcher over the raw template, for small inputs.
    fn reference(t: &[u8], topic: &[u8]) -> bool {
        match t.first() {
            None => topic.is_empty(),
            Some(b'{') => {
                let close = t.iter().position(|&c| c == b'}').unwrap();
                let rest = &t[close + 1..];
                let mut q = 0;
                while let Some(len) = value_token(&topic[q..]) {
                    q += len;
                    if reference(rest, &topic[q..]) {
                        return true;
                    }
                }
                false
            }
            Some(&c) => topic.first() == Some(&c) && reference(&t[1..], &topic[1..]),
        }
    }

    #[test]
    fn agrees_with_backtracking() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let pieces = ["{v}", "a", "b", "%41", "/", "%", "ab", "{v}{w}", "aab"];
        let alphabet = [b'a', b'b', b'/', b'%', b'4', b'1'];
        for _ in 0..20_000 {
            let t: String = (0..rng.gen_range(1..6))
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect();
            let Some(sel) = parse_checked(&t) else {
                continue;
            };
            let topic: Vec<u8> = (0..rng.gen_range(0..9))
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let topic = String::from_utf8(topic).unwrap();
            let want = if t.contains('{') {
                reference(t.as_bytes(), topic.as_bytes())
            } else {
                t == topic
            };
            assert_eq!(sel.matches(&topic), want, "{t:?} on {topic:?}");
            assert_eq!(
                sel.matches_in(&Topic::new(&topic)),
                want,
                "bits: {t:?} on {topic:?}"
            );
        }
    }

    #[test]
    fn bitsets_agree_across_words() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let pieces = [
            "{v}",
            "{v}{w}{x}",
            "a",
            "ab",
            "b",
            "/",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab",
            "-",
            "%4",
            "1",
            "%41",
        ];
        let alphabet = [b'a', b'a', b'a', b'b', b'/', b'-', b'%', b'4', b'1'];
        for _ in 0..2_000 {
            let t: String = (0..rng.gen_range(1..10))
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect();
            let Some(sel) = parse_checked(&t) else {
                continue;
            };
            let len = rng.gen_range(0..=BITS_TOPIC_BYTES);
            let topic: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let topic = String::from_utf8(topic).unwrap();
            assert_eq!(
                sel.matches_in(&Topic::new(&topic)),
                sel.matches(&topic),
                "{t:?} on {} bytes",
                topic.len()
            );
            // Near-matches: built from the template itself.
            let mut built = String::new();
            for (i, part) in t.split('{').enumerate() {
                let lit = if i == 0 {
                    part
                } else {
                    part.split_once('}').map_or("", |x| x.1)
                };
                if i > 0 {
                    for _ in 0..rng.gen_range(1..40) {
                        built.push_str(if rng.gen_bool(0.2) { "%41" } else { "a" });
                    }
                }
                built.push_str(lit);
            }
            if built.len() <= BITS_TOPIC_BYTES {
                assert!(sel.matches(&built), "{t:?} on {built:?}");
                assert!(
                    sel.matches_in(&Topic::new(&built)),
                    "bits: {t:?} on {built:?}"
                );
            }
        }
    }

    /// Every matcher, each against the plain backtracking one: the walk,
    /// the bitsets, the greedy pass where it decides, and the whole fast
    /// path (summary, greedy or bitsets); and the summary never refuses a
    /// topic that matches.
    fn all_agree(t: &str, topic: &str) {
        let Some(sel) = parse_checked(t) else {
            return;
        };
        let Kind::Template(tpl) = &sel.kind else {
            return;
        };
        let want = reference(t.as_bytes(), topic.as_bytes());
        assert_eq!(sel.matches(topic), want, "walk: {t:?} on {topic:?}");
        let prepared = Topic::new(topic);
        assert_eq!(
            sel.match_steps_in(&prepared).0,
            want,
            "bits: {t:?} on {topic:?}"
        );
        if let Some(g) = template_matches_greedy(tpl, &prepared, prepared.runs()) {
            if greedy_applies(tpl, &prepared) {
                assert_eq!(g, want, "greedy: {t:?} on {topic:?}");
            }
        }
        assert_eq!(sel.matches_in(&prepared), want, "fast: {t:?} on {topic:?}");
    }

    #[test]
    fn fast_paths_agree_on_a_table() {
        let templates = [
            "https://ex.com/users/{u}",
            "https://ex.com/users/{u}/books/{b}.json",
            "https://ex.com/{a}/{b}",
            "/{a}{b}{c}",
            "/{a}a{b}aa{c}b{d}",
            "/{a}%41{b}",
            "/x%41{a}",
            "/{a}%2f{b}",
            "/{a}1{b}",
            "/{a}41",
            "/é/{a}",
            "{a}",
            "{a}:{b}",
            "a{a}a",
            "/{a}-{b}-{c}",
            // Operators and modifiers (levels 2..4) are refused at parse:
            // they reach no matcher.
            "/{+a}",
            "/{#a}",
            "/{a*}",
            "/{a:3}",
        ];
        let topics = [
            "https://ex.com/users/kim",
            "https://ex.com/users/kim/books/42.json",
            "https://ex.com/users/kim/books/4.2.json",
            "https://ex.com/users/k%2Fm/books/42.json",
            "https://ex.com/users/",
            "https://ex.com/a/b",
            "https://ex.com/a/b/c",
            "/xyz",
            "/xy",
            "/%41%42",
            "/%41b",
            "/%4",
            "/x%41",
            "/x%4%41",
            "/aaaaab",
            "/xaxaaxbz",
            "/xaxaaxb",
            "/a%41%41b",
            "/%2541",
            "/a%41",
            "/a41",
            "/a%%41",
            "/é/x",
            "/é/%C3%A9",
            "x",
            "",
            "x:y",
            "x:y:z",
            "aaa",
            "aa",
            "/a-b-c-d",
            "/a--b",
        ];
        for t in templates {
            for topic in topics {
                all_agree(t, topic);
            }
        }
        for t in ["/{+a}", "/{#a}", "/{a*}", "/{a:3}", "/{.a}"] {
            assert_eq!(Selector::parse(t), Err(SelectorError::BadVarName));
        }
        // A literal `%` that starts no escape is refused at parse too.
        for t in ["/{a}%{b}", "/x%4{a}"] {
            assert_eq!(Selector::parse(t), Err(SelectorError::BadPercent));
        }
    }

    #[test]
    fn fast_paths_agree_on_random_input() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(23);
        let pieces = [
            "{v}", "{v}{w}", "a", "b", "1", "41", "%41", "%4", "%", "/", ":", "ab", "é", "-",
            "%zz", "%4a", "a%41b",
        ];
        let alphabet = [
            "a", "b", "1", "4", "%", "/", ":", "-", "é", "%41", "z", "%4a",
        ];
        for _ in 0..60_000 {
            let t: String = (0..rng.gen_range(1..7))
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect();
            let topic: String = (0..rng.gen_range(0..10))
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            all_agree(&t, &topic);
        }
    }

    #[test]
    fn greedy_decides_without_percent_in_literals() {
        // The greedy pass takes these (no `%` in a literal) and must not
        // hand them on; with `%` on both sides it is not asked.
        let cases = [
            ("/{a}a{b}b", "/%41axb", true),
            ("/{a}a{b}b", "/%41ab", false),
            ("/{a}a{b}b", "/%41a%42", false),
            ("/{a}1{b}", "/%41%31x", false),
            ("/{a}1{b}", "/x1%41", true),
            ("/{a}{b}{c}", "/%41%41", false),
            ("/{a}{b}{c}", "/%41%41a", true),
        ];
        for (t, topic, want) in cases {
            assert_eq!(reference(t.as_bytes(), topic.as_bytes()), want);
            let sel = Selector::parse(t).unwrap();
            let Kind::Template(tpl) = &sel.kind else {
                unreachable!()
            };
            let prepared = Topic::new(topic);
            assert_eq!(
                template_matches_greedy(tpl, &prepared, prepared.runs()),
                Some(want),
                "{t:?} on {topic:?}"
            );
        }
    }

    #[test]
    fn literal_search_past_failed_candidates() {
        // The literal's rarer byte is `a`: every `a` is a candidate, all
        // but the last fail, and past 8 failures a linear search takes
        // over where they stopped.
        for a in 1..24 {
            for (t, tail) in [("/{x}ab{y}", "b"), ("/{x}ab{y}", "c"), ("/{x}aab{y}", "b")] {
                let topic = format!("/{}{}", "a".repeat(a), tail.repeat(30));
                all_agree(t, &topic);
            }
        }
        let topic = format!("/{}{}", "a".repeat(10), "b".repeat(21));
        assert!(Selector::parse("/{x}ab{y}")
            .unwrap()
            .matches_in(&Topic::new(&topic)));
    }

    #[test]
    fn summary_refuses_without_a_matcher() {
        // Neither the token runs nor the bitsets get built when the summary
        // already says no: a wrong number of '/', a missing byte, another
        // prefix or suffix, too short.
        let topic = format!("https://ex.com/users/mallory/{}", "a".repeat(990));
        let refused = [
            "https://ex.com/users/mallory/{a}/{b}",
            "https://ex.com/users/mallory/{a}b{c}",
            "https://ex.org/users/mallory/{a}",
            "https://ex.com/users/mallory/{a}x",
            "{a}:{b}",
        ];
        for t in refused {
            let sel = Selector::parse(t).unwrap();
            let prepared = Topic::new(&topic);
            assert!(!sel.matches_in(&prepared), "{t:?}");
            assert!(prepared.runs.get().is_none(), "{t:?}: runs built");
            assert!(prepared.masks.get().is_none(), "{t:?}: bitsets built");
            assert!(!sel.matches(&topic));
        }
        // One that passes it goes to the greedy pass, not the bitsets.
        let sel = Selector::parse("https://ex.com/users/mallory/{a}a{b}").unwrap();
        let prepared = Topic::new(&topic);
        assert!(sel.matches_in(&prepared));
        assert!(prepared.runs.get().is_some() && prepared.masks.get().is_none());
        // A literal with `%` is matched greedily where it cannot end inside
        // a triplet and the topic's every `%` starts one.
        let sel = Selector::parse("/{a}%41{b}").unwrap();
        let prepared = Topic::new("/x%41y");
        assert!(sel.matches_in(&prepared));
        assert!(prepared.runs.get().is_some() && prepared.masks.get().is_none());
        // Literals that could end inside a triplet (`%` or `%4` at their
        // end), which only the bitsets could decide, are refused at parse,
        // so a `%` in a literal never sends a template to the bitsets.
        for (t, topic, want) in [
            ("/{a}%41{b}", "/x%41%y", false),
            ("/{a}%2a{b}", "/x%2a%41", true),
        ] {
            let sel = Selector::parse(t).unwrap();
            let prepared = Topic::new(topic);
            assert_eq!(sel.matches_in(&prepared), want, "{t:?} on {topic:?}");
            assert_eq!(reference(t.as_bytes(), topic.as_bytes()), want);
            assert!(prepared.masks.get().is_none(), "{t:?} on {topic:?}");
        }
        for t in ["/{a}%4{b}", "/{a}%{b}", "/{a}%4{b}y"] {
            assert_eq!(Selector::parse(t), Err(SelectorError::BadPercent));
        }
    }

    #[test]
    fn any_match_over_list() {
        let list: Vec<Selector> = ["/a", "/b/{x}"]
            .iter()
            .map(|s| Selector::parse(s).unwrap())
            .collect();
        assert!(any_match(&list, "/a"));
        assert!(any_match(&list, "/b/1"));
        assert!(!any_match(&list, "/c"));
        assert!(!any_match(&[], "/a"));
    }
}
