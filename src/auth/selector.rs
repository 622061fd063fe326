//! Mercure topic selectors: `*`, exact topics, and RFC 6570 level-1 URI
//! templates. Owns parsing and matching only; it must not decide who holds
//! which selectors, and matching must stay polynomial whatever the template
//! and topic are (no backtracking), since both can come from a token.

/// Longest selector accepted, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 2048;

/// Why a selector string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorError {
    /// The empty string names no topic.
    Empty,
    /// Longer than [`MAX_SELECTOR_BYTES`].
    TooLong,
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

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(Box<[u8]>),
    Var,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Any,
    Exact,
    Template(Vec<Part>),
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
            Kind::Template(parse_template(s.as_bytes())?)
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

    /// Whether `topic` is selected.
    pub fn matches(&self, topic: &str) -> bool {
        match &self.kind {
            Kind::Any => true,
            Kind::Exact => self.raw == topic,
            Kind::Template(parts) => template_matches(parts, topic.as_bytes()),
        }
    }
}

/// Whether any of `selectors` matches `topic`.
pub fn any_match(selectors: &[Selector], topic: &str) -> bool {
    selectors.iter().any(|s| s.matches(topic))
}

fn parse_template(s: &[u8]) -> Result<Vec<Part>, SelectorError> {
    let mut parts = Vec::new();
    let mut lit = Vec::new();
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
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit).into()));
                }
                parts.push(Part::Var);
                i = close + 1;
            }
            c => {
                lit.push(c);
                i += 1;
            }
        }
    }
    if !lit.is_empty() {
        parts.push(Part::Lit(lit.into()));
    }
    Ok(parts)
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
/// character or one percent-encoded triplet.
fn value_token(s: &[u8]) -> Option<usize> {
    match s.first() {
        Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => Some(1),
        _ => pct_len(s),
    }
}

/// Tracks the set of topic offsets each prefix of the template can end at,
/// so the cost is O(topic × template) instead of exponential backtracking.
fn template_matches(parts: &[Part], topic: &[u8]) -> bool {
    let n = topic.len();
    let mut reach = vec![false; n + 1];
    let mut next = vec![false; n + 1];
    reach[0] = true;
    for part in parts {
        next.iter_mut().for_each(|r| *r = false);
        match part {
            Part::Lit(lit) => {
                for p in (0..=n).filter(|&p| reach[p]) {
                    if topic[p..].starts_with(lit) {
                        next[p + lit.len()] = true;
                    }
                }
            }
            Part::Var => {
                for p in (0..=n).filter(|&p| reach[p]) {
                    let mut q = p;
                    while let Some(len) = value_token(&topic[q..]) {
                        q += len;
                        // An offset already reached continues exactly as
                        // before, so stopping here keeps each step linear.
                        if next[q] {
                            break;
                        }
                        next[q] = true;
                    }
                }
            }
        }
        std::mem::swap(&mut reach, &mut next);
        if !reach.contains(&true) {
            return false;
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

    #[test]
    fn adversarial_input_is_fast() {
        // A backtracking matcher tries every split of the a's between the
        // variables and would not finish.
        let t = format!("{}x", "{v}".repeat(300));
        let sel = Selector::parse(&t).unwrap();
        let topic = "a".repeat(20_000);
        let start = std::time::Instant::now();
        assert!(!sel.matches(&topic));
        assert!(sel.matches(&format!("{topic}x")));
        // Linear work is well under a second; exponential would never end.
        // The bound is loose so a loaded machine cannot fail it.
        assert!(start.elapsed() < std::time::Duration::from_secs(30));
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
