//! Mercure topic selectors: `*`, exact topics, and RFC 6570 level-1 URI
//! templates. Owns parsing and matching only; it must not decide who holds
//! which selectors, and matching must stay polynomial whatever the template
//! and topic are (no backtracking), since both can come from a token.

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
        }
    }
}

/// A compiled template: literals and runs of variables. Adjacent variables
/// merge into one run, since `{a}{b}` matches exactly "two or more value
/// tokens": a run costs one pass over the topic however many it merges.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// Literal bytes and their KMP failure table (so finding every place
    /// the literal occurs is one pass, never literal × topic).
    Lit(Box<[u8]>, Box<[u16]>),
    /// At least this many value tokens.
    Var(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    segs: Box<[Seg]>,
    /// Shortest topic it can match.
    min_len: usize,
    /// The template with variable names erased (`/a/{2}/b`): templates
    /// with the same key match the same topics.
    key: Box<str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Any,
    Exact,
    Template(Box<Template>),
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
            Kind::Template(Box::new(compile(s.as_bytes())?))
        } else {
            Kind::Exact
        };
        Ok(Selector {
            raw: s.to_string(),
            kind,
        })
    }

    /// The selector as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// What decides which topics it matches: selectors with the same key
    /// match the same topics (template variable names are erased).
    pub fn key(&self) -> &str {
        match &self.kind {
            Kind::Template(t) => &t.key,
            _ => &self.raw,
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
        }
    }
}

/// Whether any of `selectors` matches `topic`.
pub fn any_match(selectors: &[Selector], topic: &str) -> bool {
    selectors.iter().any(|s| s.matches(topic))
}

fn compile(s: &[u8]) -> Result<Template, SelectorError> {
    let mut segs: Vec<Seg> = Vec::new();
    let mut lit = Vec::new();
    let mut vars = 0usize;
    let mut key = String::new();
    let flush = |lit: &mut Vec<u8>, segs: &mut Vec<Seg>| {
        if !lit.is_empty() {
            let l = std::mem::take(lit);
            let fail = kmp_table(&l);
            segs.push(Seg::Lit(l.into(), fail.into()));
        }
    };
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'}' => return Err(SelectorError::Unbalanced),
            b'{' => {
                let close = s[i + 1..]
                    .iter()
                    .position(|&c| c == b'}' || c == b'{')
                    .map(|p| i + 1 + p);
                let close = match close {
                    Some(c) if s[c] == b'{' => return Err(SelectorError::Nested),
                    Some(c) => c,
                    None => return Err(SelectorError::Unbalanced),
                };
                valid_var_name(&s[i + 1..close])?;
                vars += 1;
                if vars > MAX_TEMPLATE_VARS {
                    return Err(SelectorError::TooManyVars);
                }
                flush(&mut lit, &mut segs);
                match segs.last_mut() {
                    Some(Seg::Var(k)) => *k += 1,
                    _ => segs.push(Seg::Var(1)),
                }
                i = close + 1;
            }
            c => {
                lit.push(c);
                i += 1;
            }
        }
    }
    flush(&mut lit, &mut segs);
    let mut min_len = 0;
    for seg in &segs {
        match seg {
            Seg::Lit(l, _) => {
                min_len += l.len();
                key.push_str(&String::from_utf8_lossy(l));
            }
            Seg::Var(k) => {
                min_len += *k as usize;
                key.push_str(&format!("{{{k}}}"));
            }
        }
    }
    Ok(Template {
        segs: segs.into(),
        min_len,
        key: key.into(),
    })
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
    if let Some(Seg::Lit(l, _)) = t.segs.first() {
        *steps += l.len() as u64;
        if !topic.starts_with(l) {
            return false;
        }
    }
    if let Some(Seg::Lit(l, _)) = t.segs.last() {
        *steps += l.len() as u64;
        if !topic.ends_with(l) {
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
            Seg::Lit(lit, fail) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m(sel: &str, topic: &str) -> bool {
        Selector::parse(sel).unwrap().matches(topic)
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
                let (_, steps) = sel.match_steps(&topic);
                assert!(
                    steps <= bound(&sel, &topic),
                    "{t:?}: {steps} steps on {} bytes",
                    topic.len()
                );
                worst = worst.max(steps as f64 / topic.len() as f64);
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
        let pieces = ["{v}", "a", "b", "%41", "/", "%", "ab"];
        let alphabet = [b'a', b'b', b'/', b'%', b'4', b'1'];
        for _ in 0..20_000 {
            let t: String = (0..rng.gen_range(1..6))
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect();
            let Ok(sel) = Selector::parse(&t) else {
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
