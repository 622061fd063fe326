//! Authorization for private streams and the Mercure hub (issue 16): HS256
//! JWT verification, topic selectors, and where a request carries its
//! token. Everything here is pure: it must not do I/O, read the clock, log
//! tokens, or know about routing; the server passes in bytes and `now`.

#[cfg(feature = "mercure")]
pub mod base64url;
#[cfg(feature = "mercure")]
pub mod draft08;
pub mod hmac;
#[cfg_attr(not(feature = "mercure"), path = "jwt_off.rs")]
pub mod jwt;
pub mod selector;
#[cfg(feature = "mercure")]
pub mod sha256;
#[cfg(feature = "mercure")]
pub mod url;
#[cfg(feature = "mercure")]
pub mod urlpattern;

#[cfg(feature = "mercure")]
pub use jwt::mint_hs256;
// The hub verifies through `draft08::verify`, which reads both dialects.
#[cfg(any(test, not(feature = "mercure")))]
pub use jwt::verify;
pub use jwt::{Claims, Key};
pub use selector::{any_match, Selector};

/// Cookie Mercure clients use for the token when no other name is set
/// (config.rs spells the same default; it may not import this layer).
#[cfg(all(test, feature = "mercure"))]
pub const DEFAULT_COOKIE_NAME: &str = "mercureAuthorization";

/// What one request may do, with absent claims already turned into no rights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Topics the bearer may publish to.
    pub publish: Vec<Selector>,
    /// Topics the bearer may subscribe to.
    pub subscribe: Vec<Selector>,
    /// When the token expires (unix seconds): a subscription it opened
    /// ends then.
    pub exp: Option<u64>,
    /// A draft-08 token's grants (then `publish` and `subscribe` are
    /// empty): both dialects answer through the same methods.
    #[cfg(feature = "mercure")]
    pub draft08: Option<Box<draft08::AccessGrants>>,
}

impl Grants {
    /// Grants from verified claims; a missing claim grants nothing.
    pub fn from_claims(claims: Claims) -> Grants {
        Grants {
            publish: claims.publish.unwrap_or_default(),
            subscribe: claims.subscribe.unwrap_or_default(),
            exp: claims.exp,
            #[cfg(feature = "mercure")]
            draft08: None,
        }
    }
    /// Grants of a draft-08 token.
    #[cfg(feature = "mercure")]
    pub fn from_draft08(g: draft08::AccessGrants) -> Grants {
        Grants {
            publish: Vec::new(),
            subscribe: Vec::new(),
            exp: Some(g.exp),
            draft08: Some(Box::new(g)),
        }
    }
    /// Whether publishing to `topic` is allowed.
    pub fn can_publish(&self, topic: &str) -> bool {
        #[cfg(feature = "mercure")]
        if let Some(g) = &self.draft08 {
            return g.can_publish(&draft08::Topic::new(topic, None));
        }
        any_match(&self.publish, topic)
    }
    /// Whether subscribing to `topic` is allowed.
    pub fn can_subscribe(&self, topic: &str) -> bool {
        #[cfg(feature = "mercure")]
        if let Some(g) = &self.draft08 {
            return g.can_subscribe(&draft08::Topic::new(topic, None));
        }
        any_match(&self.subscribe, topic)
    }
    /// Whether a selector subscription (`*`, a template, a URL pattern)
    /// may see private updates: only when every topic it can match is
    /// granted, which is decidable for a `*` grant or the very same
    /// selector (anything else stays public-only).
    pub fn covers_selector(&self, sel: &Selector) -> bool {
        #[cfg(feature = "mercure")]
        if let Some(g) = &self.draft08 {
            return g.details.iter().filter(|d| d.subscribe).any(|d| {
                d.topics.iter().any(|m| match m {
                    draft08::TopicMatcher::Any => true,
                    draft08::TopicMatcher::UrlPattern(p) => sel.pattern() == Some(p.as_str()),
                    draft08::TopicMatcher::Exact(_) => false,
                })
            });
        }
        // A URL pattern's name (`}urlpattern …`) is no legacy selector.
        let pattern = sel.as_str().starts_with('}');
        self.subscribe
            .iter()
            .any(|s| s.as_str() == "*" || (s.as_str() == sel.as_str() && !pattern))
    }
}

/// The token a request presents, in Mercure's order: `Authorization:
/// Bearer`, then the (already percent-decoded) `authorization` query
/// value, then the `cookie_name` cookie. A source that is absent, empty,
/// not UTF-8 or (for the header) not a Bearer credential is skipped rather
/// than fatal, so a browser's stray `Authorization: Basic` cannot hide its
/// cookie. The token is not checked here; [`verify`] does that.
pub fn token_from_request_parts<'a>(
    authorization_header: Option<&'a [u8]>,
    query_authorization: Option<&'a str>,
    cookie_header: Option<&'a [u8]>,
    cookie_name: &str,
) -> Option<&'a str> {
    let non_empty = |t: &'a str| Some(t).filter(|t| !t.is_empty());
    authorization_header
        .and_then(bearer)
        .and_then(non_empty)
        .or_else(|| query_authorization.and_then(non_empty))
        .or_else(|| cookie(cookie_header?, cookie_name).and_then(non_empty))
}

fn bearer(header: &[u8]) -> Option<&str> {
    let header = std::str::from_utf8(header).ok()?.trim_matches([' ', '\t']);
    let (scheme, token) = header.split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_matches([' ', '\t']))
}

/// RFC 6265 `cookie-string`: `name=value` pairs split by `;`, a value
/// optionally in double quotes. The first cookie of that name wins.
fn cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a str> {
    let header = std::str::from_utf8(header).ok()?;
    header.split(';').find_map(|pair| {
        let (n, v) = pair.trim_matches([' ', '\t']).split_once('=')?;
        let v = v.trim_matches([' ', '\t']);
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        (n == name).then_some(v)
    })
}

#[cfg(all(test, feature = "mercure"))]
mod tests {
    use super::*;
    use serde_json::json;

    const C: &str = DEFAULT_COOKIE_NAME;

    #[test]
    fn authorization_header() {
        let t = |h: &'static [u8]| token_from_request_parts(Some(h), None, None, C);
        assert_eq!(t(b"Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(t(b"bEaReR   abc "), Some("abc"));
        assert_eq!(t(b"Basic dXNlcjpwYXNz"), None);
        assert_eq!(t(b"Bearer"), None);
        assert_eq!(t(b"Bearer "), None);
        assert_eq!(t(b"Bearerabc"), None);
        assert_eq!(t(b"Bearer \xff"), None);
    }

    #[test]
    fn query_value() {
        assert_eq!(
            token_from_request_parts(None, Some("q.t.s"), None, C),
            Some("q.t.s")
        );
        assert_eq!(token_from_request_parts(None, Some(""), None, C), None);
    }

    #[test]
    fn cookie_header() {
        let t = |h: &'static [u8], name| token_from_request_parts(None, None, Some(h), name);
        assert_eq!(t(b"mercureAuthorization=c.t.s", C), Some("c.t.s"));
        assert_eq!(t(b"a=1; mercureAuthorization=c.t.s; b=2", C), Some("c.t.s"));
        assert_eq!(t(b"a=1;mercureAuthorization=\"c.t.s\"", C), Some("c.t.s"));
        assert_eq!(
            t(b"mercureauthorization=c.t.s", C),
            None,
            "names are case-sensitive"
        );
        assert_eq!(t(b"xmercureAuthorization=c.t.s", C), None);
        assert_eq!(t(b"tok=x; tok=y", "tok"), Some("x"));
        assert_eq!(t(b"a=1; junk; tok=x", "tok"), Some("x"));
        assert_eq!(t(b"tok=", "tok"), None);
        assert_eq!(t(b"", C), None);
    }

    #[test]
    fn order_of_sources() {
        let cookie = Some(&b"mercureAuthorization=from-cookie"[..]);
        let header = Some(&b"Bearer from-header"[..]);
        let basic = Some(&b"Basic xyz"[..]);
        let t = token_from_request_parts;
        assert_eq!(
            t(header, Some("from-query"), cookie, C),
            Some("from-header")
        );
        assert_eq!(t(None, Some("from-query"), cookie, C), Some("from-query"));
        assert_eq!(t(basic, None, cookie, C), Some("from-cookie"));
        assert_eq!(t(None, Some(""), cookie, C), Some("from-cookie"));
        assert_eq!(t(None, None, None, C), None);
    }

    #[test]
    fn grants() {
        let key = Key::new([1u8; 32]).unwrap();
        let tok = mint_hs256(
            &json!({"mercure": {"subscribe": ["/books/{id}", "/news"]}}),
            &key,
        );
        let g = Grants::from_claims(verify(&tok, &key, 0).unwrap());
        assert!(g.can_subscribe("/books/1"));
        assert!(g.can_subscribe("/news"));
        assert!(!g.can_subscribe("/books/1/reviews"));
        assert!(
            !g.can_publish("/news"),
            "absent publish claim grants nothing"
        );
        assert_eq!(
            Grants::default(),
            Grants::from_claims(verify(&mint_hs256(&json!({}), &key), &key, 0).unwrap())
        );
    }
}
