//! WHATWG URL patterns (the URL Pattern Standard) for Mercure's
//! `urlpattern` matcher type: a pattern string, absolute or relative to
//! the hub's URL, split into its eight components (protocol, username,
//! password, hostname, port, pathname, search, hash), each compiled to a
//! position automaton and run bit-parallel over the topic's canonical
//! component, so a match costs O(input × pattern words) whatever both are:
//! no backtracking, nothing a crafted pattern can make exponential.
//!
//! Supported: fixed text, named groups (`:id`, one segment by default:
//! `[^/]+` in the pathname, `[^.]+` in the hostname, anything non-empty
//! elsewhere), wildcards (`*`), groups (`{...}`), the modifiers `?`, `*`
//! and `+`, escapes (`\:`), duplicate-name and syntax errors as the
//! standard has them. Refused when compiling, with a typed error the hub
//! answers with 400: custom regular expressions (`(\d+)`, `:id(...)`),
//! patterns longer than [`MAX_PATTERN_BYTES`] or with more than
//! [`MAX_GROUPS`] groups, and hosts needing IDNA. This module owns
//! compiling and matching; it must not do I/O, log, or decide who may use
//! which pattern, and matching must never take more than the steps
//! [`UrlPattern::match_steps`] reports.

use super::url::{self, Url};

/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Most groups (named groups, wildcards, `{...}` with a modifier) in one
/// pattern, over all its components (a component that is only `*`, as
/// the ones a pattern leaves out are, does not count).
pub const MAX_GROUPS: usize = 32;
/// Most automaton positions (bytes of fixed text after canonicalization,
/// plus one per group) in one component.
pub const MAX_POSITIONS: usize = 2047;
/// 64-bit words of a position set.
const MAX_WORDS: usize = (MAX_POSITIONS + 1).div_ceil(64);

/// Why a pattern was refused. Every variant is the client's fault: the hub
/// answers 400 (or 401 `invalid_token` when the pattern came in a token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatternError {
    /// The empty string.
    Empty,
    /// Longer than `MAX_PATTERN_BYTES`, or a component too large once
    /// canonicalized.
    TooLong,
    /// More than `MAX_GROUPS` groups.
    TooManyGroups,
    /// A regular-expression group `(...)`: not supported, so that no
    /// pattern can ask for a backtracking engine.
    RegexpGroup,
    /// Not a URL pattern: a lone `\`, `:` without a name, unbalanced
    /// `{ }`, a modifier with nothing to modify.
    Syntax,
    /// The same group name twice in one component.
    DuplicateName,
    /// A relative pattern without a base URL.
    Relative,
    /// Fixed text a URL could never hold in this component (a space in a
    /// hostname, a letter in a port, `/` in a protocol).
    InvalidComponent(Component),
    /// A non-ASCII hostname: matching it needs IDNA, not implemented.
    Idna,
}

impl PatternError {
    /// A reason for the client.
    pub fn message(self) -> String {
        match self {
            PatternError::Empty => "an empty URL pattern".into(),
            PatternError::TooLong => format!("a URL pattern is at most {MAX_PATTERN_BYTES} bytes"),
            PatternError::TooManyGroups => {
                format!("a URL pattern has at most {MAX_GROUPS} groups")
            }
            PatternError::RegexpGroup => {
                "regular-expression groups \"(...)\" are not supported in URL patterns".into()
            }
            PatternError::Syntax => "invalid URL pattern syntax".into(),
            PatternError::DuplicateName => "a group name appears twice in a URL pattern".into(),
            PatternError::Relative => "a relative URL pattern needs a base URL".into(),
            PatternError::InvalidComponent(c) => format!("invalid {} in URL pattern", c.name()),
            PatternError::Idna => {
                "internationalized hostnames are not supported in URL patterns".into()
            }
        }
    }
}

impl std::fmt::Display for PatternError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for PatternError {}

/// One of the eight URL components a pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The scheme.
    Protocol,
    /// The username.
    Username,
    /// The password.
    Password,
    /// The host.
    Hostname,
    /// The port.
    Port,
    /// The path.
    Pathname,
    /// The query.
    Search,
    /// The fragment.
    Hash,
}

const ALL: [Component; 8] = [
    Component::Protocol,
    Component::Username,
    Component::Password,
    Component::Hostname,
    Component::Port,
    Component::Pathname,
    Component::Search,
    Component::Hash,
];

impl Component {
    /// The name the standard gives it.
    pub fn name(self) -> &'static str {
        match self {
            Component::Protocol => "protocol",
            Component::Username => "username",
            Component::Password => "password",
            Component::Hostname => "hostname",
            Component::Port => "port",
            Component::Pathname => "pathname",
            Component::Search => "search",
            Component::Hash => "hash",
        }
    }
    fn of(self, u: &Url) -> &str {
        match self {
            Component::Protocol => u.protocol(),
            Component::Username => u.username(),
            Component::Password => u.password(),
            Component::Hostname => u.hostname(),
            Component::Port => u.port(),
            Component::Pathname => u.pathname(),
            Component::Search => u.search(),
            Component::Hash => u.hash(),
        }
    }
}

/// A compiled URL pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPattern {
    raw: Box<str>,
    /// One matcher per component, in [`Component`] order.
    parts: Box<[Matcher]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    /// `*`: anything.
    Any,
    /// Fixed text only.
    Literal(Box<str>),
    Nfa(Box<Nfa>),
}

impl UrlPattern {
    /// Compiles `pattern`; a relative one is resolved against `base` (the
    /// hub's URL), as `new URLPattern(pattern, base)` does.
    pub fn compile(pattern: &str, base: Option<&Url>) -> Result<UrlPattern, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(PatternError::TooLong);
        }
        let init = parse_constructor_string(pattern)?;
        let strings = process_init(init, base)?;
        let mut groups = 0;
        let mut parts = Vec::with_capacity(8);
        let protocol = compile_component(&strings[0], Component::Protocol, false, &mut groups)?;
        let special_path = matches_special_scheme(&protocol);
        parts.push(protocol);
        for c in &ALL[1..] {
            parts.push(compile_component(
                &strings[*c as usize],
                *c,
                special_path,
                &mut groups,
            )?);
        }
        Ok(UrlPattern {
            raw: pattern.into(),
            parts: parts.into(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Heap bytes the compiled pattern holds (for the memory account).
    pub fn heap_bytes(&self) -> usize {
        let parts: usize = self
            .parts
            .iter()
            .map(|m| match m {
                Matcher::Any => 0,
                Matcher::Literal(l) => l.len(),
                Matcher::Nfa(n) => {
                    std::mem::size_of::<Nfa>()
                        + n.shifts.len()
                        + n.extra_src.len() * 4
                        + n.data.len() * 8
                }
            })
            .sum();
        self.raw.len() + self.parts.len() * std::mem::size_of::<Matcher>() + parts
    }

    /// Whether `topic` (relative ones resolved against `base`) matches. A
    /// topic that is not a URL matches nothing.
    pub fn matches(&self, topic: &str, base: Option<&Url>) -> bool {
        Url::parse(topic, base).is_some_and(|u| self.matches_url(&u))
    }

    /// Whether a parsed topic matches (parse a topic once, test it against
    /// many patterns).
    pub fn matches_url(&self, url: &Url) -> bool {
        self.match_steps(url).0
    }

    /// [`UrlPattern::matches_url`] with the steps it took: one step per
    /// 64-bit word operation, per component automaton at most `(length +
    /// 1) × (words × (d + 1 + e) + e)`, where `d` (at most 33) counts its
    /// edge distances and `e` its long edges, both fixed when compiling.
    pub fn match_steps(&self, url: &Url) -> (bool, u64) {
        let mut steps = 0;
        // Fixed components first: they refuse most topics cheaply.
        for (m, c) in self.parts.iter().zip(ALL) {
            if let Matcher::Literal(l) = m {
                steps += 1 + l.len() as u64 / 8;
                if **l != *c.of(url) {
                    return (false, steps);
                }
            }
        }
        for (m, c) in self.parts.iter().zip(ALL) {
            if let Matcher::Nfa(n) = m {
                if !n.run(c.of(url).as_bytes(), &mut steps) {
                    return (false, steps);
                }
            }
        }
        (true, steps)
    }
}

fn matches_special_scheme(protocol: &Matcher) -> bool {
    ["ftp", "file", "http", "https", "ws", "wss"]
        .iter()
        .any(|s| match protocol {
            Matcher::Any => true,
            Matcher::Literal(l) => **l == **s,
            Matcher::Nfa(n) => n.run(s.as_bytes(), &mut 0),
        })
}

// ---------------------------------------------------------------------
// Tokenizer (URL Pattern Standard, "tokenizing").

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tk {
    Open,
    Close,
    Name,
    Char,
    Escaped,
    /// `?` or `+`.
    Modifier,
    Asterisk,
    End,
    /// Lenient tokenizing only: a lone `\` or a `:` without a name.
    Invalid,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Tk,
    /// Byte offset in the input.
    at: usize,
    value: &'a str,
}

fn name_start(c: char) -> bool {
    c == '$' || c == '_' || c.is_ascii_alphabetic() || (!c.is_ascii() && c.is_alphabetic())
}

fn name_part(c: char) -> bool {
    name_start(c)
        || c.is_ascii_digit()
        || (!c.is_ascii() && c.is_alphanumeric())
        || c == '\u{200c}'
        || c == '\u{200d}'
}

/// Tokenizes `s`; `lenient` turns errors into [`Tk::Invalid`] tokens (the
/// constructor-string parser's policy) instead of failing. A `(` is always
/// refused: regular-expression groups are not supported.
fn tokenize(s: &str, lenient: bool) -> Result<Vec<Token<'_>>, PatternError> {
    let mut out = Vec::new();
    let mut it = s.char_indices().peekable();
    let one = |kind, at: usize, c: char| Token {
        kind,
        at,
        value: &s[at..at + c.len_utf8()],
    };
    while let Some((at, c)) = it.next() {
        let t = match c {
            '*' => one(Tk::Asterisk, at, c),
            '+' | '?' => one(Tk::Modifier, at, c),
            '{' => one(Tk::Open, at, c),
            '}' => one(Tk::Close, at, c),
            '(' => return Err(PatternError::RegexpGroup),
            '\\' => match it.next() {
                Some((i, e)) => Token {
                    kind: Tk::Escaped,
                    at,
                    value: &s[i..i + e.len_utf8()],
                },
                None if lenient => one(Tk::Invalid, at, c),
                None => return Err(PatternError::Syntax),
            },
            ':' => {
                let start = at + 1;
                let mut end = start;
                while let Some(&(i, n)) = it.peek() {
                    let ok = if i == start {
                        name_start(n)
                    } else {
                        name_part(n)
                    };
                    if !ok {
                        break;
                    }
                    end = i + n.len_utf8();
                    it.next();
                }
                if end == start {
                    if !lenient {
                        return Err(PatternError::Syntax);
                    }
                    one(Tk::Invalid, at, c)
                } else {
                    Token {
                        kind: Tk::Name,
                        at,
                        value: &s[start..end],
                    }
                }
            }
            _ => one(Tk::Char, at, c),
        };
        out.push(t);
    }
    out.push(Token {
        kind: Tk::End,
        at: s.len(),
        value: "",
    });
    Ok(out)
}

// ---------------------------------------------------------------------
// Constructor string parser: a whole pattern string into components.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Init,
    Protocol,
    Authority,
    Username,
    Password,
    Hostname,
    Port,
    Pathname,
    Search,
    Hash,
    Done,
}

impl St {
    fn component(self) -> Option<usize> {
        Some(match self {
            St::Protocol => 0,
            St::Username => 1,
            St::Password => 2,
            St::Hostname => 3,
            St::Port => 4,
            St::Pathname => 5,
            St::Search => 6,
            St::Hash => 7,
            _ => return None,
        })
    }
}

type Init = [Option<String>; 8];

struct CtorParser<'a> {
    input: &'a str,
    tokens: Vec<Token<'a>>,
    result: Init,
    state: St,
    index: usize,
    start: usize,
    incr: usize,
    depth: usize,
    ipv6: usize,
    special: bool,
}

impl<'a> CtorParser<'a> {
    fn safe(&self, i: usize) -> Token<'a> {
        match self.tokens.get(i) {
            Some(t) => *t,
            None => self.tokens[self.tokens.len() - 1],
        }
    }
    /// "is a non-special pattern char".
    fn nsp(&self, i: usize, v: &str) -> bool {
        let t = self.safe(i);
        t.value == v && matches!(t.kind, Tk::Char | Tk::Escaped | Tk::Invalid)
    }
    fn search_prefix(&self, i: usize) -> bool {
        if self.nsp(i, "?") {
            return true;
        }
        if self.safe(i).value != "?" {
            return false;
        }
        // `?` right after a name, group or wildcard modifies it.
        i == 0 || !matches!(self.safe(i - 1).kind, Tk::Name | Tk::Close | Tk::Asterisk)
    }
    fn component_string(&self) -> String {
        let end = self.safe(self.index).at;
        let start = self.safe(self.start).at;
        self.input[start..end].to_string()
    }
    fn rewind(&mut self) {
        self.index = self.start;
        self.incr = 0;
    }
    fn rewind_set(&mut self, s: St) {
        self.rewind();
        self.state = s;
    }
    fn change(&mut self, new: St, skip: usize) {
        use St::*;
        if let Some(c) = self.state.component() {
            self.result[c] = Some(self.component_string());
        }
        let s = self.state;
        if s != Init && new != Done {
            if matches!(s, Protocol | Authority | Username | Password)
                && matches!(new, Port | Pathname | Search | Hash)
                && self.result[3].is_none()
            {
                self.result[3] = Some(String::new());
            }
            if matches!(
                s,
                Protocol | Authority | Username | Password | Hostname | Port
            ) && matches!(new, Search | Hash)
                && self.result[5].is_none()
            {
                self.result[5] = Some(if self.special { "/" } else { "" }.into());
            }
            if matches!(
                s,
                Protocol | Authority | Username | Password | Hostname | Port | Pathname
            ) && new == Hash
                && self.result[6].is_none()
            {
                self.result[6] = Some(String::new());
            }
        }
        self.state = new;
        self.index += skip;
        self.start = self.index;
        self.incr = 0;
    }
}

fn parse_constructor_string(input: &str) -> Result<Init, PatternError> {
    let mut p = CtorParser {
        input,
        tokens: tokenize(input, true)?,
        result: Default::default(),
        state: St::Init,
        index: 0,
        start: 0,
        incr: 1,
        depth: 0,
        ipv6: 0,
        special: false,
    };
    while p.index < p.tokens.len() {
        p.incr = 1;
        let i = p.index;
        let t = p.tokens[i];
        if t.kind == Tk::End {
            match p.state {
                St::Init => {
                    p.rewind();
                    if p.nsp(p.index, "#") {
                        p.change(St::Hash, 1);
                    } else if p.search_prefix(p.index) {
                        p.change(St::Search, 1);
                    } else {
                        p.change(St::Pathname, 0);
                    }
                    p.index += p.incr;
                    continue;
                }
                St::Authority => {
                    p.rewind_set(St::Hostname);
                    p.index += p.incr;
                    continue;
                }
                _ => {
                    p.change(St::Done, 0);
                    break;
                }
            }
        }
        if p.depth > 0 {
            if t.kind == Tk::Close {
                p.depth -= 1;
            } else {
                p.index += p.incr;
                continue;
            }
        }
        if t.kind == Tk::Open {
            p.depth += 1;
            p.index += p.incr;
            continue;
        }
        match p.state {
            St::Init => {
                if p.nsp(i, ":") {
                    p.rewind_set(St::Protocol);
                }
            }
            St::Protocol => {
                if p.nsp(i, ":") {
                    let proto = p.component_string();
                    let m = compile_component(&proto, Component::Protocol, false, &mut 0)?;
                    p.special = matches_special_scheme(&m);
                    let (next, skip) = if p.nsp(i + 1, "/") && p.nsp(i + 2, "/") {
                        (St::Authority, 3)
                    } else if p.special {
                        (St::Authority, 1)
                    } else {
                        (St::Pathname, 1)
                    };
                    p.change(next, skip);
                }
            }
            St::Authority => {
                if p.nsp(i, "@") {
                    p.rewind_set(St::Username);
                } else if p.nsp(i, "/") || p.search_prefix(i) || p.nsp(i, "#") {
                    p.rewind_set(St::Hostname);
                }
            }
            St::Username => {
                if p.nsp(i, ":") {
                    p.change(St::Password, 1);
                } else if p.nsp(i, "@") {
                    p.change(St::Hostname, 1);
                }
            }
            St::Password => {
                if p.nsp(i, "@") {
                    p.change(St::Hostname, 1);
                }
            }
            St::Hostname => {
                if p.nsp(i, "[") {
                    p.ipv6 += 1;
                } else if p.nsp(i, "]") {
                    p.ipv6 = p.ipv6.saturating_sub(1);
                } else if p.nsp(i, ":") && p.ipv6 == 0 {
                    p.change(St::Port, 1);
                } else if p.nsp(i, "/") {
                    p.change(St::Pathname, 0);
                } else if p.search_prefix(i) {
                    p.change(St::Search, 1);
                } else if p.nsp(i, "#") {
                    p.change(St::Hash, 1);
                }
            }
            St::Port => {
                if p.nsp(i, "/") {
                    p.change(St::Pathname, 0);
                } else if p.search_prefix(i) {
                    p.change(St::Search, 1);
                } else if p.nsp(i, "#") {
                    p.change(St::Hash, 1);
                }
            }
            St::Pathname => {
                if p.search_prefix(i) {
                    p.change(St::Search, 1);
                } else if p.nsp(i, "#") {
                    p.change(St::Hash, 1);
                }
            }
            St::Search => {
                if p.nsp(i, "#") {
                    p.change(St::Hash, 1);
                }
            }
            St::Hash | St::Done => {}
        }
        p.index += p.incr;
    }
    if p.result[3].is_some() && p.result[4].is_none() {
        p.result[4] = Some(String::new());
    }
    Ok(p.result)
}

/// Escapes `s` so the pattern parser reads it as fixed text.
fn escape_pattern(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '+' | '*' | '?' | ':' | '{' | '}' | '(' | ')' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// "process a URLPatternInit" for a pattern: components the string left
/// out come from `base` when the string is relative, the rest are `*`.
fn process_init(mut init: Init, base: Option<&Url>) -> Result<[String; 8], PatternError> {
    if init[0].is_none() {
        let Some(b) = base else {
            return Err(PatternError::Relative);
        };
        init[0] = Some(escape_pattern(b.protocol()));
        let inherit = [
            (3, b.hostname()),
            (4, b.port()),
            (5, b.pathname()),
            (6, b.search()),
            (7, b.hash()),
        ];
        // Each component is inherited while the pattern names none of it
        // or the ones before it (username and password never are).
        for (c, v) in inherit {
            if init[c].is_some() {
                break;
            }
            init[c] = Some(escape_pattern(v));
        }
        if let Some(path) = &init[5] {
            if !b.has_opaque_path() && !absolute_pathname(path) {
                let bp = escape_pattern(b.pathname());
                if let Some(i) = bp.rfind('/') {
                    init[5] = Some(format!("{}{path}", &bp[..=i]));
                }
            }
        }
    }
    let mut out: [String; 8] = Default::default();
    for (o, i) in out.iter_mut().zip(init) {
        *o = i.unwrap_or_else(|| "*".to_string());
    }
    if url::default_port(&out[0].to_ascii_lowercase()).is_some_and(|p| p.to_string() == out[4]) {
        out[4].clear();
    }
    Ok(out)
}

fn absolute_pathname(p: &str) -> bool {
    p.starts_with('/') || p.starts_with("\\/") || p.starts_with("{/")
}

// ---------------------------------------------------------------------
// Pattern parser: one component's pattern string into parts.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modifier {
    None,
    Optional,
    ZeroOrMore,
    OneOrMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wild {
    /// `:name`: one segment.
    Segment,
    /// `*`: anything.
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Fixed(String, Modifier),
    Group {
        wild: Wild,
        prefix: String,
        suffix: String,
        modifier: Modifier,
    },
}

struct PatternParser<'a> {
    tokens: Vec<Token<'a>>,
    i: usize,
    pending: String,
    parts: Vec<Part>,
    names: Vec<&'a str>,
    component: Component,
    /// The prefix code point (`/` in a hierarchical pathname).
    prefix: &'static str,
    special_path: bool,
}

impl<'a> PatternParser<'a> {
    fn take(&mut self, k: Tk) -> Option<Token<'a>> {
        let t = self.tokens.get(self.i).filter(|t| t.kind == k).copied();
        if t.is_some() {
            self.i += 1;
        }
        t
    }
    fn modifier(&mut self) -> Modifier {
        match self.tokens.get(self.i) {
            Some(t) if t.kind == Tk::Asterisk => {
                self.i += 1;
                Modifier::ZeroOrMore
            }
            Some(t) if t.kind == Tk::Modifier => {
                self.i += 1;
                if t.value == "?" {
                    Modifier::Optional
                } else {
                    Modifier::OneOrMore
                }
            }
            _ => Modifier::None,
        }
    }
    fn text(&mut self) -> String {
        let mut s = String::new();
        while let Some(t) = self.take(Tk::Char).or_else(|| self.take(Tk::Escaped)) {
            s.push_str(t.value);
        }
        s
    }
    fn encode(&self, s: &str) -> Result<String, PatternError> {
        canonicalize(s, self.component, self.special_path)
    }
    fn flush(&mut self) -> Result<(), PatternError> {
        if !self.pending.is_empty() {
            let p = std::mem::take(&mut self.pending);
            let e = self.encode(&p)?;
            self.parts.push(Part::Fixed(e, Modifier::None));
        }
        Ok(())
    }
    fn add(
        &mut self,
        prefix: &str,
        name: Option<Token<'a>>,
        wild: Option<Token<'a>>,
        suffix: &str,
        modifier: Modifier,
    ) -> Result<(), PatternError> {
        if name.is_none() && wild.is_none() && modifier == Modifier::None {
            self.pending.push_str(prefix);
            return Ok(());
        }
        self.flush()?;
        if name.is_none() && wild.is_none() {
            if !prefix.is_empty() {
                let e = self.encode(prefix)?;
                self.parts.push(Part::Fixed(e, modifier));
            }
            return Ok(());
        }
        if let Some(n) = name {
            if self.names.contains(&n.value) {
                return Err(PatternError::DuplicateName);
            }
            self.names.push(n.value);
        }
        let part = Part::Group {
            wild: if wild.is_some() {
                Wild::Full
            } else {
                Wild::Segment
            },
            prefix: self.encode(prefix)?,
            suffix: self.encode(suffix)?,
            modifier,
        };
        self.parts.push(part);
        Ok(())
    }

    fn parse(mut self) -> Result<Vec<Part>, PatternError> {
        while self.i < self.tokens.len() {
            let ch = self.take(Tk::Char);
            let name = self.take(Tk::Name);
            let wild = if name.is_none() {
                self.take(Tk::Asterisk)
            } else {
                None
            };
            if name.is_some() || wild.is_some() {
                let mut prefix = ch.map_or("", |t| t.value);
                if !prefix.is_empty() && prefix != self.prefix {
                    self.pending.push_str(prefix);
                    prefix = "";
                }
                self.flush()?;
                let m = self.modifier();
                self.add(prefix, name, wild, "", m)?;
                continue;
            }
            if let Some(f) = ch.or_else(|| self.take(Tk::Escaped)) {
                self.pending.push_str(f.value);
                continue;
            }
            if self.take(Tk::Open).is_some() {
                let prefix = self.text();
                let name = self.take(Tk::Name);
                let wild = if name.is_none() {
                    self.take(Tk::Asterisk)
                } else {
                    None
                };
                let suffix = self.text();
                self.take(Tk::Close).ok_or(PatternError::Syntax)?;
                let m = self.modifier();
                self.add(&prefix, name, wild, &suffix, m)?;
                continue;
            }
            self.flush()?;
            self.take(Tk::End).ok_or(PatternError::Syntax)?;
        }
        Ok(self.parts)
    }
}

/// The standard's encoding callbacks: fixed text in the form a URL
/// component would have it, or refused when no URL could hold it.
fn canonicalize(s: &str, c: Component, special_path: bool) -> Result<String, PatternError> {
    let bad = Err(PatternError::InvalidComponent(c));
    Ok(match c {
        Component::Protocol => {
            if !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            {
                return bad;
            }
            s.to_ascii_lowercase()
        }
        Component::Username | Component::Password => url::encode(s, url::userinfo_set),
        Component::Hostname => {
            if !s.is_ascii() {
                return Err(PatternError::Idna);
            }
            // Pieces of an IPv6 literal (`[\:\:1]`) hold hex digits only.
            let ipv6 = s.contains(['[', ']', ':']);
            let ok = |b: u8| {
                if ipv6 {
                    b.is_ascii_hexdigit() || matches!(b, b'[' | b']' | b':' | b'.')
                } else {
                    !url::forbidden_host(b) && b > 0x1f && b != 0x7f
                }
            };
            if !s.bytes().all(ok) {
                return bad;
            }
            s.to_ascii_lowercase()
        }
        Component::Port => {
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return bad;
            }
            s.to_string()
        }
        Component::Pathname if special_path => {
            if s.is_empty() {
                return Ok(String::new());
            }
            if s.starts_with('/') {
                url::parse_path(s, false)
            } else {
                // The standard's trick: parse "/-" + text, then drop "/-",
                // so a relative piece keeps its first segment as written.
                let p = url::parse_path(&format!("/-{s}"), false);
                p.get(2..).unwrap_or("").to_string()
            }
        }
        Component::Pathname => url::encode(s, url::c0_control),
        Component::Search => url::encode(s, url::query_set),
        Component::Hash => url::encode(s, url::fragment_set),
    })
}

/// The delimiter a `:name` segment stops at, and the prefix code point.
fn options(c: Component, special_path: bool) -> (Option<u8>, &'static str) {
    match c {
        Component::Pathname if special_path => (Some(b'/'), "/"),
        Component::Hostname => (Some(b'.'), ""),
        _ => (None, ""),
    }
}

fn parse_parts(pattern: &str, c: Component, special_path: bool) -> Result<Vec<Part>, PatternError> {
    PatternParser {
        tokens: tokenize(pattern, false)?,
        i: 0,
        pending: String::new(),
        parts: Vec::new(),
        names: Vec::new(),
        component: c,
        prefix: options(c, special_path).1,
        special_path,
    }
    .parse()
}

fn compile_component(
    pattern: &str,
    c: Component,
    special_path: bool,
    groups: &mut usize,
) -> Result<Matcher, PatternError> {
    let delim = options(c, special_path).0;
    let parts = parse_parts(pattern, c, special_path)?;
    // Shapes that need no automaton.
    if let [Part::Group {
        wild: Wild::Full,
        prefix,
        suffix,
        ..
    }] = parts.as_slice()
    {
        if prefix.is_empty() && suffix.is_empty() {
            return Ok(Matcher::Any);
        }
    }
    if parts
        .iter()
        .all(|p| matches!(p, Part::Fixed(_, Modifier::None)))
    {
        let mut lit = String::new();
        for p in &parts {
            if let Part::Fixed(s, _) = p {
                lit.push_str(s);
            }
        }
        return Ok(Matcher::Literal(lit.into()));
    }
    for p in &parts {
        if !matches!(p, Part::Fixed(_, Modifier::None)) {
            *groups += 1;
        }
    }
    if *groups > MAX_GROUPS {
        return Err(PatternError::TooManyGroups);
    }
    let mut nodes = Vec::with_capacity(parts.len());
    for p in parts {
        nodes.push(match p {
            Part::Fixed(s, m) => modify(Node::Lit(s.into_bytes()), m),
            Part::Group {
                wild,
                prefix,
                suffix,
                modifier,
            } => {
                let inner = match (wild, delim) {
                    (Wild::Segment, Some(d)) => Node::Plus(Box::new(Node::Sym(Sym::Not(d)))),
                    (Wild::Segment, None) => Node::Plus(Box::new(Node::Sym(Sym::Any))),
                    (Wild::Full, _) => Node::Star(Box::new(Node::Sym(Sym::Any))),
                };
                let body = Node::Cat(vec![
                    Node::Lit(prefix.into_bytes()),
                    inner,
                    Node::Lit(suffix.into_bytes()),
                ]);
                // The standard's `P((?:R)(?:S P(?:R))*)S` for `+` is the
                // language `(P R S)+`; `*` adds the empty string.
                modify(body, modifier)
            }
        });
    }
    Ok(Matcher::Nfa(Box::new(Nfa::build(&Node::Cat(nodes))?)))
}

fn modify(n: Node, m: Modifier) -> Node {
    match m {
        Modifier::None => n,
        Modifier::Optional => Node::Opt(Box::new(n)),
        Modifier::ZeroOrMore => Node::Star(Box::new(n)),
        Modifier::OneOrMore => Node::Plus(Box::new(n)),
    }
}

// ---------------------------------------------------------------------
// The automaton: Glushkov's construction (one position per symbol, no
// epsilon moves), simulated over bitsets of positions.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sym {
    Byte(u8),
    /// Any byte but this one (a segment: ASCII delimiters never occur
    /// inside a UTF-8 sequence, so bytes and code points agree).
    Not(u8),
    Any,
}

impl Sym {
    fn accepts(self, c: u8) -> bool {
        match self {
            Sym::Byte(b) => b == c,
            Sym::Not(b) => b != c,
            Sym::Any => true,
        }
    }
}

enum Node {
    Lit(Vec<u8>),
    Sym(Sym),
    Cat(Vec<Node>),
    Opt(Box<Node>),
    Plus(Box<Node>),
    Star(Box<Node>),
}

/// Longest follow edge, in positions either way, handled as a shifted
/// mask (one word operation per 64 positions); longer ones are listed.
const MAX_SHIFT: isize = 16;

/// Position 0 is the start; positions 1..=m are the symbols in order.
/// Every follow edge `p -> p + d` with `|d| <= MAX_SHIFT` lives in the
/// mask of its distance, so a step is a few shifts of the whole position
/// set (skips over optional parts and loop-backs are short); the rest are
/// listed by source.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Nfa {
    words: usize,
    /// The distances that have edges, in the order their masks sit in
    /// `data`.
    shifts: Box<[i8]>,
    /// Sources of the long edges; their targets follow in `data`.
    extra_src: Box<[u32]>,
    /// Byte -> index of its set of accepting positions.
    class_of: [u8; 256],
    /// One allocation, `words` per set: the shift masks, the accepting
    /// positions, the long edges' targets, then the byte classes.
    data: Box<[u64]>,
}

struct Builder {
    syms: Vec<Sym>,
    follow: Vec<Vec<u32>>,
}

/// nullable, first positions, last positions.
type Info = (bool, Vec<u32>, Vec<u32>);

impl Builder {
    fn position(&mut self, s: Sym) -> Result<u32, PatternError> {
        if self.syms.len() >= MAX_POSITIONS {
            return Err(PatternError::TooLong);
        }
        self.syms.push(s);
        self.follow.push(Vec::new());
        Ok(self.syms.len() as u32)
    }
    fn link(&mut self, from: &[u32], to: &[u32]) {
        for &p in from {
            self.follow[p as usize].extend_from_slice(to);
        }
    }
    fn walk(&mut self, n: &Node) -> Result<Info, PatternError> {
        Ok(match n {
            Node::Sym(s) => {
                let p = self.position(*s)?;
                (false, vec![p], vec![p])
            }
            Node::Lit(bytes) => {
                let mut first = Vec::new();
                let mut last = Vec::new();
                for &b in bytes {
                    let p = self.position(Sym::Byte(b))?;
                    self.link(&last, &[p]);
                    if first.is_empty() {
                        first.push(p);
                    }
                    last = vec![p];
                }
                (bytes.is_empty(), first, last)
            }
            Node::Cat(children) => {
                let (mut nullable, mut first, mut last) = (true, Vec::new(), Vec::new());
                for child in children {
                    let (n2, f2, l2) = self.walk(child)?;
                    self.link(&last, &f2);
                    if nullable {
                        first.extend_from_slice(&f2);
                    }
                    if n2 {
                        last.extend_from_slice(&l2);
                    } else {
                        last = l2;
                    }
                    nullable &= n2;
                }
                (nullable, first, last)
            }
            Node::Opt(inner) => {
                let (_, f, l) = self.walk(inner)?;
                (true, f, l)
            }
            Node::Plus(inner) | Node::Star(inner) => {
                let (nullable, f, l) = self.walk(inner)?;
                self.link(&l, &f);
                (nullable || matches!(n, Node::Star(_)), f, l)
            }
        })
    }
}

fn set(bits: &mut [u64], p: usize) {
    bits[p / 64] |= 1 << (p % 64);
}

fn has(bits: &[u64], p: usize) -> bool {
    bits[p / 64] >> (p % 64) & 1 == 1
}

impl Nfa {
    fn build(root: &Node) -> Result<Nfa, PatternError> {
        let mut b = Builder {
            syms: Vec::new(),
            follow: vec![Vec::new()],
        };
        let (nullable, first, last) = b.walk(root)?;
        b.follow[0] = first;
        let words = (b.syms.len() + 1).div_ceil(64);
        let span = (2 * MAX_SHIFT + 1) as usize;
        let mut by_shift = vec![vec![0u64; words]; span];
        let mut extra_src = Vec::new();
        let mut extra_dst = Vec::new();
        for (p, f) in b.follow.iter().enumerate() {
            let mut dst = vec![0u64; words];
            let mut any = false;
            for &q in f {
                let d = q as isize - p as isize;
                if d.abs() <= MAX_SHIFT {
                    set(&mut by_shift[(d + MAX_SHIFT) as usize], p);
                } else {
                    set(&mut dst, q as usize);
                    any = true;
                }
            }
            if any {
                extra_src.push(p as u32);
                extra_dst.extend_from_slice(&dst);
            }
        }
        let mut shifts = Vec::new();
        let mut data = Vec::new();
        for (i, m) in by_shift.iter().enumerate() {
            if m.iter().any(|&w| w != 0) {
                shifts.push((i as isize - MAX_SHIFT) as i8);
                data.extend_from_slice(m);
            }
        }
        let mut accept = vec![0u64; words];
        for &p in &last {
            set(&mut accept, p as usize);
        }
        if nullable {
            set(&mut accept, 0);
        }
        data.extend_from_slice(&accept);
        data.extend_from_slice(&extra_dst);
        // One set of positions per distinct byte class (at most 256).
        let classes_at = data.len();
        let mut class_of = [0u8; 256];
        for c in 0..=255u8 {
            let mut m = vec![0u64; words];
            for (i, s) in b.syms.iter().enumerate() {
                if s.accepts(c) {
                    set(&mut m, i + 1);
                }
            }
            let found = data[classes_at..].chunks(words).position(|x| *x == *m);
            let idx = match found {
                Some(i) => i,
                None => {
                    data.extend_from_slice(&m);
                    (data.len() - classes_at) / words - 1
                }
            };
            class_of[c as usize] = idx as u8;
        }
        Ok(Nfa {
            words,
            shifts: shifts.into(),
            extra_src: extra_src.into(),
            class_of,
            data: data.into(),
        })
    }

    fn set_at(&self, k: usize) -> &[u64] {
        &self.data[k * self.words..(k + 1) * self.words]
    }

    /// Whether the automaton accepts all of `input`, counting word
    /// operations into `steps`: per byte, one per word for each shift
    /// distance and for the class mask, one per long edge, and one per
    /// word for each long edge taken.
    fn run(&self, input: &[u8], steps: &mut u64) -> bool {
        let w = self.words;
        let (ns, ne) = (self.shifts.len(), self.extra_src.len());
        let mut bufs = [[0u64; MAX_WORDS]; 2];
        let [a, b] = &mut bufs;
        let (mut cur, mut next) = (&mut a[..w], &mut b[..w]);
        cur[0] = 1;
        let classes = ns + 1 + ne;
        for &c in input {
            *steps += ((ns + 1) * w + ne) as u64;
            next.fill(0);
            for (k, &d) in self.shifts.iter().enumerate() {
                let m = self.set_at(k);
                let d = d as isize;
                if d >= 0 {
                    let d = d as u32;
                    let mut carry = 0;
                    for i in 0..w {
                        let x = cur[i] & m[i];
                        next[i] |= x.checked_shl(d).unwrap_or(0) | carry;
                        carry = if d == 0 { 0 } else { x >> (64 - d) };
                    }
                } else {
                    let d = (-d) as u32;
                    let mut carry = 0;
                    for i in (0..w).rev() {
                        let x = cur[i] & m[i];
                        next[i] |= (x >> d) | carry;
                        carry = x << (64 - d);
                    }
                }
            }
            for (k, &src) in self.extra_src.iter().enumerate() {
                if has(cur, src as usize) {
                    *steps += w as u64;
                    for (n, d) in next.iter_mut().zip(self.set_at(ns + 1 + k)) {
                        *n |= d;
                    }
                }
            }
            let mask = self.set_at(classes + self.class_of[c as usize] as usize);
            let mut alive = 0;
            for (n, k) in next.iter_mut().zip(mask) {
                *n &= k;
                alive |= *n;
            }
            if alive == 0 {
                return false;
            }
            std::mem::swap(&mut cur, &mut next);
        }
        *steps += w as u64;
        cur.iter().zip(self.set_at(ns)).any(|(c, a)| c & a != 0)
    }
}

#[cfg(test)]
mod tests;
