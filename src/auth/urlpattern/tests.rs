//! URL pattern cases: the standard's own examples (web-platform-tests'
//! urlpatterntestdata.json, restated for string patterns), Mercure's,
//! refusals, patterns that would be exponential for a backtracking
//! matcher, and a differential test against a naive reference.

use super::*;
use std::collections::BTreeSet;

fn hub() -> Url {
    Url::parse("https://hub.example.com/.well-known/mercure", None).unwrap()
}
fn pat(p: &str) -> UrlPattern {
    UrlPattern::compile(p, Some(&hub())).unwrap_or_else(|e| panic!("{p:?}: {e}"))
}
fn err(p: &str) -> PatternError {
    UrlPattern::compile(p, Some(&hub())).expect_err(p)
}
/// `(pattern, [(topic, expected)])`, checked with the hub as base.
fn check(p: &str, cases: &[(&str, bool)]) {
    let compiled = pat(p);
    for (topic, want) in cases {
        assert_eq!(
            compiled.matches(topic, Some(&hub())),
            *want,
            "{p:?} on {topic:?}"
        );
    }
}
/// A pathname pattern on a fixed origin, as WPT's `{pathname: ...}` cases.
fn path(p: &str, cases: &[(&str, bool)]) {
    let full = format!("https://e.test{p}");
    let cases: Vec<(String, bool)> = cases
        .iter()
        .map(|(t, w)| (format!("https://e.test{t}"), *w))
        .collect();
    let cases: Vec<(&str, bool)> = cases.iter().map(|(t, w)| (t.as_str(), *w)).collect();
    check(&full, &cases);
}

#[test]
fn fixed_and_named_segments() {
    path(
        "/foo/bar",
        &[
            ("/foo/bar", true),
            ("/foo/ba", false),
            ("/foo/bar/", false),
            ("/foo/bar/baz", false),
            ("/foo/./bar", true),
            ("/foo/x/../bar", true),
        ],
    );
    path(
        "/foo/:bar",
        &[
            ("/foo/bar", true),
            ("/foo/index.html", true),
            ("/foo/bar/", false),
            ("/foo/", false),
        ],
    );
    path("/:café", &[("/foo", true), ("/", false)]);
    path("/:foo.", &[("/bar.", true), ("/bar", false)]);
    path("/:foo..", &[("/bar..", true)]);
    path("/:foo\\bar", &[("/bazbar", true), ("/bar", false)]);
    path("/{:foo}bar", &[("/foobar", true)]);
    path(
        "/:a-:b",
        &[("/x-y", true), ("/x-y-z", true), ("/x-", false)],
    );
}

#[test]
fn wildcards_and_modifiers() {
    path(
        "/foo/*",
        &[
            ("/foo/bar", true),
            ("/foo/bar/baz", true),
            ("/foo/", true),
            ("/foo", false),
        ],
    );
    path(
        "/foo/:bar?",
        &[
            ("/foo/bar", true),
            ("/foo", true),
            ("/foo/", false),
            ("/foobar", false),
            ("/foo/bar/baz", false),
        ],
    );
    path(
        "/foo/:bar+",
        &[
            ("/foo/bar", true),
            ("/foo/bar/baz", true),
            ("/foo", false),
            ("/foo/", false),
            ("/foobar", false),
        ],
    );
    path(
        "/foo/:bar*",
        &[
            ("/foo/bar", true),
            ("/foo/bar/baz", true),
            ("/foo", true),
            ("/foo/", false),
            ("/foobar", false),
        ],
    );
    for p in ["/foo/*?", "/foo/**"] {
        path(
            p,
            &[
                ("/foo/bar", true),
                ("/foo/bar/baz", true),
                ("/foo", true),
                ("/foo/", true),
                ("/foobar", false),
                ("/fo", false),
            ],
        );
    }
    path(
        "/foo/*+",
        &[
            ("/foo/bar", true),
            ("/foo/bar/baz", true),
            ("/foo/", true),
            ("/foo", false),
            ("/foobar", false),
        ],
    );
    path(
        "/foo{/bar}",
        &[("/foo/bar", true), ("/foo", false), ("/foo/", false)],
    );
    path(
        "/foo{/bar}?",
        &[
            ("/foo/bar", true),
            ("/foo", true),
            ("/foo/", false),
            ("/foo/bar/baz", false),
        ],
    );
    path(
        "/foo{/bar}+",
        &[
            ("/foo/bar", true),
            ("/foo/bar/bar", true),
            ("/foo/bar/baz", false),
            ("/foo", false),
        ],
    );
    path(
        "/foo{/bar}*",
        &[
            ("/foo/bar", true),
            ("/foo/bar/bar", true),
            ("/foo", true),
            ("/foo/", false),
        ],
    );
    path("/*/*", &[("/a/b", true), ("/a/b/c", true), ("/a", false)]);
}

#[test]
fn canonical_fixed_text() {
    path(
        "/café",
        &[("/café", true), ("/caf%C3%A9", true), ("/cafe", false)],
    );
    path("/caf%C3%A9", &[("/café", true)]);
    path("/caf%c3%a9", &[("/café", false)]);
    path("/foo/../bar", &[("/bar", true), ("/foo/bar", false)]);
    path("/foo!", &[("/foo!", true)]);
    path("/foo\\:", &[("/foo:", true)]);
    path("/foo\\{", &[("/foo{", true), ("/foo%7B", true)]);
    path("/foo\\(", &[("/foo(", true)]);
    path("/a b", &[("/a b", true), ("/a%20b", true)]);
    check(
        "HTTPS://EXAMPLE.com:443/x",
        &[
            ("https://example.COM/x", true),
            ("https://example.com:444/x", false),
        ],
    );
}

#[test]
fn constructor_strings() {
    check(
        "https://example.com:8080/foo?bar#baz",
        &[
            ("https://example.com:8080/foo?bar#baz", true),
            ("https://example.com:8081/foo?bar#baz", false),
            ("https://example.com:8080/foo?bar", false),
            ("https://u:p@example.com:8080/foo?bar#baz", true),
        ],
    );
    check(
        "https://example.com/",
        &[
            ("https://example.com:8080/", false),
            ("https://example.com/", true),
        ],
    );
    check(
        "https://example.com?foo",
        &[
            ("https://example.com/?foo", true),
            ("https://example.com/?bar", false),
        ],
    );
    check(
        "https://example.com#foo",
        &[
            ("https://example.com/#foo", true),
            ("https://example.com/?q#foo", false),
        ],
    );
    check(
        "https://example.com/*?foo",
        &[("https://example.com/?foo", false)],
    );
    check(
        "https://example.com/*\\?foo",
        &[("https://example.com/?foo", true)],
    );
    check(
        "https://example.com/:name?foo",
        &[("https://example.com/bar?foo", false)],
    );
    check(
        "https://example.com/:name\\?foo",
        &[("https://example.com/bar?foo", true)],
    );
    check(
        "https://example.com/{bar}?foo",
        &[("https://example.com/bar?foo", false)],
    );
    check(
        "https://example.com/{bar}\\?foo",
        &[("https://example.com/bar?foo", true)],
    );
    check(
        "https://example.com",
        &[
            ("https://example.com/any/path?q#h", true),
            ("https://example.org/", false),
        ],
    );
    check(
        "data\\:foobar",
        &[("data:foobar", true), ("data:foobaz", false)],
    );
    check(
        "https://{sub.}?example.com/foo",
        &[
            ("https://example.com/foo", true),
            ("https://sub.example.com/foo", true),
            ("https://other.example.com/foo", false),
        ],
    );
    check(
        "http{s}?://{*.}?example.com/:product/:endpoint",
        &[
            ("https://sub.example.com/foo/bar", true),
            ("http://example.com/foo/bar", true),
            ("ftp://example.com/foo/bar", false),
            ("https://example.com/foo", false),
        ],
    );
    check(
        "https://foo\\:bar@example.com",
        &[
            ("https://foo:bar@example.com", true),
            ("https://example.com", false),
        ],
    );
    check(
        "https://:user::pass@example.com",
        &[
            ("https://foo:bar@example.com", true),
            ("https://foo@example.com", false),
        ],
    );
    check(
        "http://[\\:\\:1]/",
        &[("http://[::1]/", true), ("http://[::2]/", false)],
    );
    check("http://[\\:\\:1]:8080/", &[("http://[0::1]:8080/", true)]);
    check("http://[:address]/", &[("http://[::1]/", true)]);
    check(
        "foo://bar",
        &[
            ("foo://bad_url_browser_interop", false),
            ("foo://bar", true),
        ],
    );
    check(
        "urn\\:uuid\\::id",
        &[("urn:uuid:bb3de268", true), ("urn:isbn:1", false)],
    );
}

#[test]
fn relative_patterns_take_the_base() {
    let base = Url::parse("https://example.com:8080", None).unwrap();
    let p = UrlPattern::compile("/foo?bar#baz", Some(&base)).unwrap();
    assert!(p.matches("https://example.com:8080/foo?bar#baz", None));
    assert!(!p.matches("https://example.com/foo?bar#baz", None));
    let base = Url::parse("https://example.com/foo", None).unwrap();
    let p = UrlPattern::compile("?bar#baz", Some(&base)).unwrap();
    assert!(p.matches("https://example.com/foo?bar#baz", None));
    assert!(!p.matches("https://example.com/fo?bar#baz", None));
    let base = Url::parse("https://example.com/foo#baz", None).unwrap();
    let p = UrlPattern::compile("?bar", Some(&base)).unwrap();
    assert!(
        p.matches("https://example.com/foo?bar#snafu", None),
        "hash stays *"
    );
    let base = Url::parse("https://example.com/foo", None).unwrap();
    let p = UrlPattern::compile("#baz", Some(&base)).unwrap();
    assert!(p.matches("https://example.com/foo#baz", None));
    assert!(
        !p.matches("https://example.com/foo?x#baz", None),
        "search is ''"
    );
    let base = Url::parse("https://example.com", None).unwrap();
    let p = UrlPattern::compile("data{\\:}channel.html", Some(&base)).unwrap();
    assert!(p.matches("https://example.com/data:channel.html", None));
    let base = Url::parse("https://example.com/a/b", None).unwrap();
    let p = UrlPattern::compile("c/:x", Some(&base)).unwrap();
    assert!(
        p.matches("https://example.com/a/c/1", None),
        "resolved against the directory"
    );
    assert_eq!(
        UrlPattern::compile("/foo", None),
        Err(PatternError::Relative)
    );
    assert_eq!(
        UrlPattern::compile("example.com/foo", None),
        Err(PatternError::Relative)
    );
}

#[test]
fn mercure_examples() {
    check(
        "https://example.com/books/:id",
        &[
            ("https://example.com/books/1", true),
            ("https://example.com/books/1?x=1#y", true),
            ("https://example.com/books/", false),
            ("https://example.com/books/1/reviews", false),
            ("http://example.com/books/1", false),
            ("https://example.com:444/books/1", false),
            ("/books/1", false),
            ("not a url", false),
        ],
    );
    check(
        "https://example.com/:selector",
        &[("https://example.com/foo", true)],
    );
    // Relative patterns and topics both resolve against the hub's URL.
    check(
        "/.well-known/mercure/subscriptions/exact/:topic/:subscriber",
        &[
            (
                "/.well-known/mercure/subscriptions/exact/https%3A%2F%2Fexample.com%2Ffoo/urn%3Auuid%3Abb3d",
                true,
            ),
            (
                "https://hub.example.com/.well-known/mercure/subscriptions/exact/t/s",
                true,
            ),
            (
                "https://other.example.com/.well-known/mercure/subscriptions/exact/t/s",
                false,
            ),
            ("/.well-known/mercure/subscriptions/exact/t", false),
        ],
    );
    check(
        "/.well-known/mercure/subscriptions{/:type}?{/:topic}?{/:subscriber}?",
        &[
            ("/.well-known/mercure/subscriptions", true),
            ("/.well-known/mercure/subscriptions/exact", true),
            ("/.well-known/mercure/subscriptions/exact/t/s", true),
            ("/.well-known/mercure/subscriptions/exact/t/s/x", false),
        ],
    );
}

#[test]
fn refusals() {
    use PatternError::*;
    let cases = [
        ("", Empty),
        ("https://example.com/books/(\\d+)", RegexpGroup),
        ("https://example.com/books/:id(\\d+)", RegexpGroup),
        ("(https://)example.com/foo", RegexpGroup),
        ("https://example.com/a\\", Syntax),
        ("https://example.com/a/:", Syntax),
        ("https://example.com/{a", Syntax),
        ("https://example.com/a}", Syntax),
        ("https://example.com/{a{b}}", Syntax),
        ("https://example.com/x?a+", Syntax),
        (
            "https://{sub.}?example{.com/}foo",
            InvalidComponent(Component::Hostname),
        ),
        ("{https://}example.com/foo", Relative),
        ("https://example.com/:id/:id", DuplicateName),
        (
            "https://exa mple.com/",
            InvalidComponent(Component::Hostname),
        ),
        (
            "https://example.com:80a/",
            InvalidComponent(Component::Port),
        ),
        (
            "ht/tp://example.com/",
            InvalidComponent(Component::Protocol),
        ),
        ("https://café.example/", Idna),
    ];
    for (p, e) in cases {
        assert_eq!(UrlPattern::compile(p, None).err(), Some(e), "{p:?}");
    }
    // `:foobar` is a group, so this is a relative pathname: fine with a
    // base, refused without one.
    assert_eq!(
        UrlPattern::compile("data:foobar", None).err(),
        Some(Relative)
    );
    assert!(pat("data:foobar").matches("/.well-known/datax", Some(&hub())));
    assert!(err("/a/(b)").message().contains("not supported"));
    let long = format!("https://e.test/{}", "a".repeat(MAX_PATTERN_BYTES));
    assert_eq!(err(&long), TooLong);
    assert!(UrlPattern::compile(&long[..MAX_PATTERN_BYTES], None).is_ok());
    let many = format!("https://e.test{}", group_path(MAX_GROUPS + 1));
    assert_eq!(err(&many), TooManyGroups);
    let enough = format!("https://e.test{}", group_path(MAX_GROUPS));
    assert!(UrlPattern::compile(&enough, None).is_ok());
    // Non-ASCII canonicalizes to three bytes each: still bounded.
    let wide = format!("https://e.test/{}", "é".repeat(500));
    assert!(UrlPattern::compile(&wide, None).is_ok());
    let wide = format!("https://e.test/{}:x", "é".repeat(500));
    assert_eq!(err(&wide), TooLong);
}

/// `n` distinct named groups.
fn group_path(n: usize) -> String {
    (0..n).map(|i| format!("/:g{i}")).collect()
}

#[test]
fn file_urls_and_bad_topics_match_nothing() {
    let p = pat("file:///foo/bar");
    assert!(
        !p.matches("file:///foo/bar", None),
        "file: is outside the subset"
    );
    let any = pat("*://*");
    assert!(!any.matches("https://café.example/", None), "IDNA topics");
    assert!(!any.matches("http://a b/", None));
    assert!(any.matches("https://example.com/", None));
}

/// The step bound the docs promise, from the compiled automata.
fn bound(p: &UrlPattern, u: &Url) -> u64 {
    let mut b = 0;
    for (m, c) in p.parts.iter().zip(ALL) {
        let n = c.of(u).len() as u64;
        match m {
            Matcher::Any => {}
            Matcher::Literal(l) => b += 1 + l.len() as u64 / 8,
            Matcher::Nfa(a) => {
                let (w, e, s) = (
                    a.words as u64,
                    a.extra_src.len() as u64,
                    a.shifts.len() as u64,
                );
                b += n * ((s + 1) * w + e + e * w) + w;
            }
        }
    }
    b
}

#[test]
fn adversarial_patterns_take_linear_steps() {
    // Each would make a backtracking regex engine try exponentially many
    // splits of the a's before failing on the missing final byte.
    let g = MAX_GROUPS;
    let patterns = [
        format!("https://e.test/{}b", "*a".repeat(g)),
        format!("https://e.test/{}b", named_run(g)),
        format!("https://e.test/{}b", "{a}*".repeat(g)),
        format!("https://e.test/x{}/b", "{/*}+".repeat(g)),
        format!("https://e.test/{}", "{a}?".repeat(g) + &"a".repeat(g)),
        format!("https://{}e.test/", "{*.}*".repeat(g)),
        format!("https://e.test/?{}b", "*a".repeat(g)),
    ];
    let mut worst = 0.0f64;
    for p in &patterns {
        let compiled = UrlPattern::compile(p, None).unwrap_or_else(|e| panic!("{p}: {e}"));
        for topic in [
            format!("https://e.test/{}", "a".repeat(1000)),
            format!("https://e.test/{}", "a/".repeat(500)),
            format!("https://{}e.test/", "a.".repeat(100)),
            format!("https://e.test/?{}", "a".repeat(1000)),
        ] {
            let u = Url::parse(&topic, None).unwrap();
            let (_, steps) = compiled.match_steps(&u);
            let b = bound(&compiled, &u);
            assert!(steps <= b, "{p:?}: {steps} steps > bound {b}");
            // Linear: a fixed number of word operations per input byte.
            assert!(steps <= 200 * topic.len() as u64, "{p:?}: {steps} steps");
            worst = worst.max(steps as f64 / topic.len() as f64);
        }
    }
    println!("worst steps per topic byte: {worst:.1}");
    // And the answers are right.
    let p = pat(&format!("https://e.test/{}b", "*a".repeat(3)));
    assert!(p.matches("https://e.test/xaxayab", None));
    assert!(!p.matches("https://e.test/aaaaaa", None));
}

fn named_run(n: usize) -> String {
    (0..n).map(|i| format!(":n{i}")).collect()
}

// ---------------------------------------------------------------------
// A naive reference: the standard's regular expression for each part,
// evaluated over sets of end offsets, for small inputs.

fn lit(from: &BTreeSet<usize>, s: &[u8], input: &[u8]) -> BTreeSet<usize> {
    from.iter()
        .filter(|&&p| input[p..].starts_with(s))
        .map(|&p| p + s.len())
        .collect()
}

/// `R`: a segment (`[^d]+`, or `.+` without a delimiter) or `.*`.
fn inner(from: &BTreeSet<usize>, wild: Wild, delim: Option<u8>, input: &[u8]) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for &p in from {
        if wild == Wild::Full {
            out.extend(p..=input.len());
            continue;
        }
        let mut q = p;
        while q < input.len() && Some(input[q]) != delim {
            q += 1;
            out.insert(q);
        }
    }
    out
}

fn star(
    from: &BTreeSet<usize>,
    f: &dyn Fn(&BTreeSet<usize>) -> BTreeSet<usize>,
) -> BTreeSet<usize> {
    let mut all = from.clone();
    let mut frontier = from.clone();
    while !frontier.is_empty() {
        let next: BTreeSet<usize> = f(&frontier).difference(&all).copied().collect();
        all.extend(next.iter().copied());
        frontier = next;
    }
    all
}

fn reference(parts: &[Part], delim: Option<u8>, input: &[u8]) -> bool {
    let mut cur: BTreeSet<usize> = [0].into();
    for part in parts {
        cur = match part {
            Part::Fixed(s, m) => {
                let one = |f: &BTreeSet<usize>| lit(f, s.as_bytes(), input);
                match m {
                    Modifier::None => one(&cur),
                    Modifier::Optional => &cur | &one(&cur),
                    Modifier::ZeroOrMore => star(&cur, &one),
                    Modifier::OneOrMore => star(&one(&cur), &one),
                }
            }
            Part::Group {
                wild,
                prefix,
                suffix,
                modifier,
            } => {
                let (p, s) = (prefix.as_bytes(), suffix.as_bytes());
                let pr = |f: &BTreeSet<usize>| inner(&lit(f, p, input), *wild, delim, input);
                match modifier {
                    Modifier::None => lit(&pr(&cur), s, input),
                    Modifier::Optional => &cur | &lit(&pr(&cur), s, input),
                    // P R (S P R)* S, as the standard writes it.
                    Modifier::OneOrMore | Modifier::ZeroOrMore => {
                        let first = pr(&cur);
                        let looped = star(&first, &|f| pr(&lit(f, s, input)));
                        let done = lit(&looped, s, input);
                        if *modifier == Modifier::ZeroOrMore {
                            &cur | &done
                        } else {
                            done
                        }
                    }
                }
            }
        };
    }
    cur.contains(&input.len())
}

#[test]
fn agrees_with_reference() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::seed_from_u64(21);
    let pieces = [
        "a", "b", "/", "ab", ":x", ":y", "*", "{a}", "{/:z}", "{b*}", "{/}", "?", "+", "*",
    ];
    let alphabet = [b'a', b'b', b'/'];
    let mut compared = 0;
    for _ in 0..10_000 {
        let p: String = (0..rng.gen_range(1..7))
            .map(|_| pieces[rng.gen_range(0..pieces.len())])
            .collect();
        // Half of them behind a long literal, so positions span words.
        let pad = if rng.gen_bool(0.5) {
            "c".repeat(70)
        } else {
            String::new()
        };
        let p = format!("/{pad}{p}");
        // Rename groups apart so duplicates do not refuse most patterns.
        let mut n = 0;
        let p: String = p
            .split_inclusive(['x', 'y', 'z'])
            .map(|s| {
                n += 1;
                format!("{s}{n}")
            })
            .collect();
        let Ok(parts) = parse_parts(&p, Component::Pathname, true) else {
            continue;
        };
        let Ok(Matcher::Nfa(nfa)) = compile_component(&p, Component::Pathname, true, &mut 0) else {
            continue;
        };
        for _ in 0..8 {
            let input: Vec<u8> = std::iter::once(b'/')
                .chain(pad.bytes())
                .chain((0..rng.gen_range(0..7)).map(|_| alphabet[rng.gen_range(0..3)]))
                .collect();
            let want = reference(&parts, Some(b'/'), &input);
            assert_eq!(
                nfa.run(&input, &mut 0),
                want,
                "{p:?} on {:?}",
                String::from_utf8_lossy(&input)
            );
            compared += 1;
        }
    }
    assert!(compared > 25_000, "{compared}");
}
