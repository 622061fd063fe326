//! The subset of the WHATWG URL parser that URL patterns need: a topic or
//! a hub URL parsed (relative ones against a base) into the components a
//! URLPattern compares, each in the canonical form the URL Standard
//! serializes (lowercase scheme and host, default port dropped, dot
//! segments removed, the standard percent-encode sets applied, IPv4 and
//! IPv6 hosts normalized). Owns parsing only; it must not do I/O, must not
//! allocate more than a few times the input, and refuses rather than
//! guesses where it stops short of the standard: internationalized
//! (non-ASCII) domain names, which need IDNA tables, and `file:` URLs.

use std::fmt::Write as _;

/// A parsed URL, as the components URLPattern matches against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    scheme: String,
    username: String,
    password: String,
    /// Serialized host; `None` for URLs without an authority.
    host: Option<String>,
    /// The port, serialized; empty when absent or the scheme's default.
    port: String,
    /// Serialized path (a `/`-joined list, or an opaque path).
    path: String,
    opaque: bool,
    query: Option<String>,
    fragment: Option<String>,
}

/// Schemes the URL Standard treats specially, with their default ports
/// (`file` has none; this parser refuses it).
const SPECIAL: [(&str, Option<u16>); 6] = [
    ("ftp", Some(21)),
    ("file", None),
    ("http", Some(80)),
    ("https", Some(443)),
    ("ws", Some(80)),
    ("wss", Some(443)),
];

/// Whether `scheme` is one of the URL Standard's special schemes.
pub fn is_special(scheme: &str) -> bool {
    SPECIAL.iter().any(|(s, _)| *s == scheme)
}

/// The default port of a special scheme.
pub fn default_port(scheme: &str) -> Option<u16> {
    SPECIAL.iter().find(|(s, _)| *s == scheme).and_then(|x| x.1)
}

impl Url {
    /// Heap bytes its components hold (for the memory account).
    pub fn heap_bytes(&self) -> usize {
        let opt = |o: &Option<String>| o.as_ref().map_or(0, String::capacity);
        self.scheme.capacity()
            + self.username.capacity()
            + self.password.capacity()
            + opt(&self.host)
            + self.port.capacity()
            + self.path.capacity()
            + opt(&self.query)
            + opt(&self.fragment)
    }

    /// Parses `input`, resolving it against `base` when it is relative.
    /// `None` when the standard would fail, or where this subset stops
    /// (non-ASCII hosts, `file:`).
    pub fn parse(input: &str, base: Option<&Url>) -> Option<Url> {
        let trimmed = input.trim_matches(|c: char| c <= ' ');
        let cleaned: String;
        let input = if trimmed.contains(['\t', '\n', '\r']) {
            cleaned = trimmed.replace(['\t', '\n', '\r'], "");
            &cleaned
        } else {
            trimmed
        };
        match split_scheme(input) {
            Some((scheme, rest)) => {
                let scheme = scheme.to_ascii_lowercase();
                if scheme == "file" {
                    return None;
                }
                if is_special(&scheme) {
                    match base {
                        Some(b) if b.scheme == scheme && !starts_slash(rest, true) => {
                            relative(rest, b)
                        }
                        _ => authority_then_rest(scheme, rest.trim_start_matches(['/', '\\'])),
                    }
                } else if let Some(rest) = rest.strip_prefix("//") {
                    authority_then_rest(scheme, rest)
                } else if rest.starts_with('/') {
                    let mut u = Url::empty(scheme);
                    path_query_fragment(&mut u, rest);
                    Some(u)
                } else {
                    let mut u = Url::empty(scheme);
                    u.opaque = true;
                    let end = rest.find(['?', '#']).unwrap_or(rest.len());
                    u.path = encode(&rest[..end], c0_control);
                    query_fragment(&mut u, &rest[end..]);
                    Some(u)
                }
            }
            None => relative(input, base?),
        }
    }

    fn empty(scheme: String) -> Url {
        Url {
            scheme,
            username: String::new(),
            password: String::new(),
            host: None,
            port: String::new(),
            path: String::new(),
            opaque: false,
            query: None,
            fragment: None,
        }
    }

    /// Whether the scheme is special (http, https, ws, wss, ftp).
    pub fn special(&self) -> bool {
        is_special(&self.scheme)
    }
    /// `protocol`: the scheme, without `:`.
    pub fn protocol(&self) -> &str {
        &self.scheme
    }
    /// `username`, percent-encoded.
    pub fn username(&self) -> &str {
        &self.username
    }
    /// `password`, percent-encoded.
    pub fn password(&self) -> &str {
        &self.password
    }
    /// `hostname`: the serialized host, or empty.
    pub fn hostname(&self) -> &str {
        self.host.as_deref().unwrap_or("")
    }
    /// `port`, empty when it is the default one or absent.
    pub fn port(&self) -> &str {
        &self.port
    }
    /// `pathname`.
    pub fn pathname(&self) -> &str {
        &self.path
    }
    /// `search`, without `?`.
    pub fn search(&self) -> &str {
        self.query.as_deref().unwrap_or("")
    }
    /// `hash`, without `#`.
    pub fn hash(&self) -> &str {
        self.fragment.as_deref().unwrap_or("")
    }
    /// Whether the path is opaque (`urn:x`, `mailto:x`): not `/`-separated.
    pub fn has_opaque_path(&self) -> bool {
        self.opaque
    }
}

/// `scheme ":" rest` when `s` starts with a URL scheme.
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let b = s.as_bytes();
    if !b.first()?.is_ascii_alphabetic() {
        return None;
    }
    let end = b
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')))?;
    (b[end] == b':').then(|| (&s[..end], &s[end + 1..]))
}

fn starts_slash(s: &str, special: bool) -> bool {
    s.starts_with('/') || (special && s.starts_with('\\'))
}

/// A reference without a scheme of its own, against `base`.
fn relative(input: &str, base: &Url) -> Option<Url> {
    if base.opaque {
        // Only a fragment can be resolved against an opaque path.
        let rest = input.strip_prefix('#')?;
        let mut u = base.clone();
        u.fragment = Some(encode(rest, fragment_set));
        return Some(u);
    }
    let special = base.special();
    let b = input.as_bytes();
    let slash = |i: usize| {
        b.get(i)
            .is_some_and(|&c| c == b'/' || (special && c == b'\\'))
    };
    if slash(0) && slash(1) {
        let rest = if special {
            input.trim_start_matches(['/', '\\'])
        } else {
            &input[2..]
        };
        return authority_then_rest(base.scheme.clone(), rest);
    }
    let mut u = base.clone();
    u.fragment = None;
    if slash(0) {
        u.query = None;
        path_query_fragment(&mut u, input);
    } else if input.starts_with('?') || input.starts_with('#') {
        if input.starts_with('?') {
            u.query = None;
        }
        query_fragment(&mut u, input);
    } else if input.is_empty() {
    } else {
        // Merge: the base path without its last segment, then the input.
        u.query = None;
        let dir = match u.path.rfind('/') {
            Some(i) => u.path[..=i].to_string(),
            None => "/".to_string(),
        };
        let joined = format!("{dir}{input}");
        path_query_fragment(&mut u, &joined);
    }
    Some(u)
}

/// `rest` starts right after `scheme://` (or the special scheme's slashes).
fn authority_then_rest(scheme: String, rest: &str) -> Option<Url> {
    let special = is_special(&scheme);
    let end = rest
        .find(|c| c == '/' || c == '?' || c == '#' || (special && c == '\\'))
        .unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let mut u = Url::empty(scheme);
    let hostport = match authority.rfind('@') {
        Some(at) => {
            let (user, pass) = match authority[..at].split_once(':') {
                Some((u, p)) => (u, p),
                None => (&authority[..at], ""),
            };
            u.username = encode(user, userinfo_set);
            u.password = encode(pass, userinfo_set);
            &authority[at + 1..]
        }
        None => authority,
    };
    // A port follows the last ':' outside an IPv6 literal's brackets.
    let (host, port) = match hostport.rfind(':') {
        Some(i) if !hostport[i..].contains(']') => (&hostport[..i], Some(&hostport[i + 1..])),
        _ => (hostport, None),
    };
    if special && host.is_empty() {
        return None;
    }
    u.host = Some(parse_host(host, special)?);
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        if !p.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let digits = p.trim_start_matches('0');
        if digits.len() > 5 {
            return None;
        }
        let n: u32 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        let n = u16::try_from(n).ok()?;
        if default_port(&u.scheme) != Some(n) {
            u.port = n.to_string();
        }
    }
    if special && tail.is_empty() {
        u.path = "/".to_string();
    } else {
        path_query_fragment(&mut u, tail);
    }
    Some(u)
}

/// Sets path, query and fragment from `s` (which starts with the path).
fn path_query_fragment(u: &mut Url, s: &str) {
    let end = s.find(['?', '#']).unwrap_or(s.len());
    u.path = parse_path(&s[..end], u.special());
    query_fragment(u, &s[end..]);
}

/// `s` is empty or starts with `?` or `#`.
fn query_fragment(u: &mut Url, s: &str) {
    let (q, f) = match s.find('#') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    if let Some(q) = q.strip_prefix('?') {
        let set = if u.special() {
            special_query_set
        } else {
            query_set
        };
        u.query = Some(encode(q, set));
    }
    if let Some(f) = f {
        u.fragment = Some(encode(f, fragment_set));
    }
}

/// A hierarchical path: dot segments resolved, each segment
/// percent-encoded; for special schemes `\` separates like `/` and the
/// result always starts with `/`.
pub fn parse_path(s: &str, special: bool) -> String {
    let mut segs: Vec<String> = Vec::new();
    let body = s
        .strip_prefix('/')
        .or_else(|| s.strip_prefix('\\').filter(|_| special))
        .unwrap_or(s);
    if s.is_empty() {
        return if special { "/".into() } else { String::new() };
    }
    let parts: Vec<&str> = if special {
        body.split(['/', '\\']).collect()
    } else {
        body.split('/').collect()
    };
    let last = parts.len() - 1;
    for (i, seg) in parts.iter().enumerate() {
        let lower = seg.to_ascii_lowercase();
        let single = matches!(lower.as_str(), "." | "%2e");
        let double = matches!(lower.as_str(), ".." | ".%2e" | "%2e." | "%2e%2e");
        if double {
            segs.pop();
            if i == last {
                segs.push(String::new());
            }
        } else if single {
            if i == last {
                segs.push(String::new());
            }
        } else {
            segs.push(encode(seg, path_set));
        }
    }
    let mut out = String::with_capacity(s.len() + 1);
    for seg in &segs {
        out.push('/');
        out.push_str(seg);
    }
    if out.is_empty() && special {
        out.push('/');
    }
    out
}

/// The host, serialized: IPv6 in brackets, IPv4 dotted decimal, a domain
/// lowercased; non-special schemes keep an opaque host.
fn parse_host(s: &str, special: bool) -> Option<String> {
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        return Some(format!("[{}]", ipv6_serialize(&ipv6_parse(inner)?)));
    }
    if !special {
        if s.bytes().any(|c| forbidden_host(c) && c != b'%') {
            return None;
        }
        return Some(encode(s, c0_control));
    }
    let decoded = percent_decode(s);
    let domain = std::str::from_utf8(&decoded).ok()?;
    if domain.is_empty() || !domain.is_ascii() {
        // Non-ASCII needs IDNA (UTS #46), which this subset leaves out.
        return None;
    }
    let domain = domain.to_ascii_lowercase();
    if domain
        .bytes()
        .any(|c| forbidden_host(c) || c <= 0x1f || c == b'%' || c == 0x7f)
    {
        return None;
    }
    if ends_in_number(&domain) {
        return ipv4(&domain).map(|a| {
            let [a, b, c, d] = a.to_be_bytes();
            format!("{a}.{b}.{c}.{d}")
        });
    }
    Some(domain)
}

/// Forbidden host code points (the URL Standard's list).
pub fn forbidden_host(c: u8) -> bool {
    matches!(
        c,
        0 | b'\t'
            | b'\n'
            | b'\r'
            | b' '
            | b'#'
            | b'/'
            | b':'
            | b'<'
            | b'>'
            | b'?'
            | b'@'
            | b'['
            | b'\\'
            | b']'
            | b'^'
            | b'|'
    )
}

fn ends_in_number(d: &str) -> bool {
    let mut parts: Vec<&str> = d.split('.').collect();
    if parts.last() == Some(&"") {
        if parts.len() == 1 {
            return false;
        }
        parts.pop();
    }
    let last = parts.last().copied().unwrap_or("");
    (!last.is_empty() && last.bytes().all(|c| c.is_ascii_digit())) || ipv4_number(last).is_some()
}

fn ipv4_number(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() {
        return Some(0);
    }
    if digits.len() > 20 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

fn ipv4(d: &str) -> Option<u32> {
    let mut parts: Vec<&str> = d.split('.').collect();
    if parts.last() == Some(&"") && parts.len() > 1 {
        parts.pop();
    }
    if parts.len() > 4 {
        return None;
    }
    let nums = parts
        .iter()
        .map(|p| ipv4_number(p))
        .collect::<Option<Vec<u64>>>()?;
    let (last, init) = nums.split_last()?;
    if init.iter().any(|&n| n > 255) || *last >= 256u64.pow(5 - nums.len() as u32) {
        return None;
    }
    let mut v = *last;
    for (i, n) in init.iter().enumerate() {
        v += n * 256u64.pow(3 - i as u32);
    }
    u32::try_from(v).ok()
}

/// The URL Standard's IPv6 parser.
fn ipv6_parse(s: &str) -> Option<[u16; 8]> {
    let b = s.as_bytes();
    let mut a = [0u16; 8];
    let (mut piece, mut compress, mut i) = (0usize, None, 0usize);
    if b.first() == Some(&b':') {
        if b.get(1) != Some(&b':') {
            return None;
        }
        i = 2;
        piece = 1;
        compress = Some(1);
    }
    while i < b.len() {
        if piece == 8 {
            return None;
        }
        if b[i] == b':' {
            if compress.is_some() {
                return None;
            }
            i += 1;
            piece += 1;
            compress = Some(piece);
            continue;
        }
        let (mut value, mut len) = (0u32, 0);
        while len < 4 && i < b.len() && b[i].is_ascii_hexdigit() {
            value = value * 16 + (b[i] as char).to_digit(16).unwrap_or(0);
            i += 1;
            len += 1;
        }
        if i < b.len() && b[i] == b'.' {
            if len == 0 || piece > 6 {
                return None;
            }
            i -= len;
            let mut seen = 0;
            while i < b.len() {
                if seen > 0 {
                    if b[i] == b'.' && seen < 4 {
                        i += 1;
                    } else {
                        return None;
                    }
                }
                let mut v4: Option<u32> = None;
                while i < b.len() && b[i].is_ascii_digit() {
                    let d = u32::from(b[i] - b'0');
                    v4 = match v4 {
                        None => Some(d),
                        Some(0) => return None,
                        Some(v) => Some(v * 10 + d),
                    };
                    if v4 > Some(255) {
                        return None;
                    }
                    i += 1;
                }
                let v4 = v4?;
                a[piece] = a[piece] * 0x100 + v4 as u16;
                seen += 1;
                if seen == 2 || seen == 4 {
                    piece += 1;
                }
            }
            if seen != 4 {
                return None;
            }
            break;
        } else if i < b.len() && b[i] == b':' {
            i += 1;
            if i == b.len() {
                return None;
            }
        } else if i < b.len() {
            return None;
        }
        a[piece] = value as u16;
        piece += 1;
    }
    if let Some(c) = compress {
        let mut swaps = piece - c;
        piece = 7;
        while piece != 0 && swaps > 0 {
            a.swap(piece, c + swaps - 1);
            piece -= 1;
            swaps -= 1;
        }
    } else if piece != 8 {
        return None;
    }
    Some(a)
}

fn ipv6_serialize(a: &[u16; 8]) -> String {
    // The first longest run of two or more zero pieces is compressed.
    let (mut best, mut best_len, mut i) = (None, 1, 0);
    while i < 8 {
        let start = i;
        while i < 8 && a[i] == 0 {
            i += 1;
        }
        if i - start > best_len {
            best = Some(start);
            best_len = i - start;
        }
        i += 1;
    }
    let mut out = String::new();
    let mut ignore0 = false;
    for (i, p) in a.iter().enumerate() {
        if ignore0 && *p == 0 {
            continue;
        }
        ignore0 = false;
        if best == Some(i) {
            out.push_str(if i == 0 { "::" } else { ":" });
            ignore0 = true;
            continue;
        }
        let _ = write!(out, "{p:x}");
        if i != 7 {
            out.push(':');
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|&c| hex(c)),
            b.get(i + 2).and_then(|&c| hex(c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The C0 control percent-encode set (every non-ASCII byte included).
pub fn c0_control(c: u8) -> bool {
    !(0x20..=0x7e).contains(&c)
}
/// The fragment percent-encode set.
pub fn fragment_set(c: u8) -> bool {
    c0_control(c) || matches!(c, b' ' | b'"' | b'<' | b'>' | b'`')
}
/// The query percent-encode set.
pub fn query_set(c: u8) -> bool {
    c0_control(c) || matches!(c, b' ' | b'"' | b'#' | b'<' | b'>')
}
/// The special-query percent-encode set.
pub fn special_query_set(c: u8) -> bool {
    query_set(c) || c == b'\''
}
/// The path percent-encode set.
pub fn path_set(c: u8) -> bool {
    query_set(c) || matches!(c, b'?' | b'^' | b'`' | b'{' | b'}')
}
/// The userinfo percent-encode set.
pub fn userinfo_set(c: u8) -> bool {
    path_set(c) || matches!(c, b'/' | b':' | b';' | b'=' | b'@' | b'['..=b'^' | b'|')
}

/// Percent-encodes the bytes of `s` that are in `set` (uppercase hex).
pub fn encode(s: &str, set: fn(u8) -> bool) -> String {
    if !s.bytes().any(set) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.bytes() {
        if set(c) {
            let _ = write!(out, "%{c:02X}");
        } else {
            out.push(char::from(c));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<Url> {
        Url::parse(s, None)
    }
    fn parts(u: &Url) -> [String; 8] {
        [
            u.protocol().into(),
            u.username().into(),
            u.password().into(),
            u.hostname().into(),
            u.port().into(),
            u.pathname().into(),
            u.search().into(),
            u.hash().into(),
        ]
    }

    #[test]
    fn absolute() {
        let u = p("HTTPS://User:Pa ss@Example.COM:443/a/./b/../c%2fd?q= 'x#f `").unwrap();
        assert_eq!(
            parts(&u),
            [
                "https",
                "User",
                "Pa%20ss",
                "example.com",
                "",
                "/a/c%2fd",
                "q=%20%27x",
                "f%20%60"
            ]
        );
        let u = p("http://example.com:8080").unwrap();
        assert_eq!((u.port(), u.pathname()), ("8080", "/"));
        let u = p("https://example.com/caf\u{e9}/{x}").unwrap();
        assert_eq!(u.pathname(), "/caf%C3%A9/%7Bx%7D");
        let u = p("wss:\\\\h\\a\\..\\b").unwrap();
        assert_eq!((u.hostname(), u.pathname()), ("h", "/b"));
        let u = p("https://h/a/%2E%2e/b/.").unwrap();
        assert_eq!(u.pathname(), "/b/");
    }

    #[test]
    fn non_special() {
        let u = p("urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6").unwrap();
        assert!(u.has_opaque_path());
        assert_eq!(u.protocol(), "urn");
        assert_eq!(u.pathname(), "uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6");
        let u = p("foo://Host/a b?c d#e").unwrap();
        assert_eq!(
            parts(&u),
            ["foo", "", "", "Host", "", "/a%20b", "c%20d", "e"]
        );
        assert_eq!(p("foo:/x/../y").unwrap().pathname(), "/y");
    }

    #[test]
    fn relative_against_base() {
        let base = p("https://hub.example.com/.well-known/mercure").unwrap();
        let r = |s| Url::parse(s, Some(&base)).map(|u| parts(&u));
        let want = |path: &str, q: &str, f: &str| {
            Some([
                "https".to_string(),
                "".into(),
                "".into(),
                "hub.example.com".into(),
                "".into(),
                path.into(),
                q.into(),
                f.into(),
            ])
        };
        assert_eq!(r("/a/b"), want("/a/b", "", ""));
        assert_eq!(r("sub/x"), want("/.well-known/sub/x", "", ""));
        assert_eq!(r("../x"), want("/x", "", ""));
        assert_eq!(r("?q"), want("/.well-known/mercure", "q", ""));
        assert_eq!(r("#f"), want("/.well-known/mercure", "", "f"));
        assert_eq!(r(""), want("/.well-known/mercure", "", ""));
        assert_eq!(r("//other.example/p").unwrap()[3], "other.example");
        assert_eq!(r("https:rel").unwrap()[5], "/.well-known/rel");
        assert_eq!(r("http:x").unwrap()[3], "x", "another scheme: authority");
        assert_eq!(Url::parse("/a", None), None);
    }

    #[test]
    fn hosts() {
        let h = |s: &str| p(&format!("http://{s}/")).map(|u| u.hostname().to_string());
        assert_eq!(h("0x7f.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(h("2130706433").as_deref(), Some("127.0.0.1"));
        assert_eq!(h("1.2.3.256"), None);
        assert_eq!(h("[0:0::1]").as_deref(), Some("[::1]"));
        assert_eq!(h("[1:0:0:2::3:0]").as_deref(), Some("[1::2:0:0:3:0]"));
        assert_eq!(h("[::ffff:1.2.3.4]").as_deref(), Some("[::ffff:102:304]"));
        assert_eq!(h("[1::2::3]"), None);
        assert_eq!(h("ex%41mple.com").as_deref(), Some("example.com"));
        assert_eq!(h("a b"), None);
        assert_eq!(h("caf\u{e9}.com"), None, "IDNA is not implemented");
        assert_eq!(
            p("http:///x").map(|u| u.hostname().to_string()).as_deref(),
            Some("x")
        );
        assert_eq!(p("http://h:65536/"), None);
        assert_eq!(p("http://h:8x/"), None);
        assert_eq!(p("file:///etc/passwd"), None);
    }
}
