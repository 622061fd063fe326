//! Mercure draft-08 authorization (draft-dunglas-mercure-08, "Token
//! Validation", "Authorization Details", "Topic Matcher List"): access
//! tokens with `typ: at+jwt`, `iss`/`aud`/`exp`/`nbf` checks, grants from
//! `authorization_details`, topic matchers (`exact`, `urlpattern`, the
//! reserved `*`), and the errors each failure maps to (RFC 6750 codes and
//! the `WWW-Authenticate` challenge). Tokens of the legacy dialect (the
//! `mercure` claim) are recognised here too, so one hub serves both.
//!
//! Pure, like the rest of `auth`: it must not do I/O, read the clock (the
//! caller passes `now`), log tokens, or know about routes. Signatures are
//! checked by `jwt.rs` (HS256 only, never `none`) before any claim is read.

use std::cell::OnceCell;

use serde_json::{Map, Value};

use super::jwt::{self, JwtError, Key};
use super::url::Url;
use super::urlpattern::{PatternError, UrlPattern};
use super::Grants;

/// Authorization detail types granting Mercure rights: the reference
/// hub's URL form (what the Mercure tools mint) and the draft's `mercure`.
pub const DETAIL_TYPES: [&str; 2] = ["https://mercure.rocks/authorization-detail", "mercure"];
/// Signature algorithms accepted (the allowlist; `none` never is).
pub const ALGORITHMS: [&str; 1] = ["HS256"];
/// Most Mercure authorization details in one token.
pub const MAX_DETAILS: usize = 64;
/// Most topic matchers in one token, over all its details.
pub const MAX_TOPICS: usize = 256;
/// Longest `exact` matcher, in bytes (URL patterns have their own bound,
/// `urlpattern::MAX_PATTERN_BYTES`).
pub const MAX_EXACT_BYTES: usize = 2048;

/// A topic matcher type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchType {
    /// Byte-for-byte comparison (the default).
    Exact,
    /// A WHATWG URL pattern.
    UrlPattern,
}

impl MatchType {
    /// Every type this hub supports, as metadata lists them.
    pub const ALL: [MatchType; 2] = [MatchType::Exact, MatchType::UrlPattern];

    /// The canonical name (`exact`, `urlpattern`).
    pub fn name(self) -> &'static str {
        match self {
            MatchType::Exact => "exact",
            MatchType::UrlPattern => "urlpattern",
        }
    }

    /// The type a `match_type` value names; case-sensitive.
    pub fn parse(s: &str) -> Option<MatchType> {
        MatchType::ALL.into_iter().find(|t| t.name() == s)
    }

    /// What a subscribe query parameter named `name` is: `Ok(Some(_))` for
    /// `match`, `match_exact` and `match_urlpattern`, `Ok(None)` for a
    /// name outside the reserved `match` namespace, and `Err(())` for any
    /// other name beginning with `match` in any case (the draft wants 400).
    #[allow(clippy::result_unit_err)]
    pub fn from_query_param(name: &str) -> Result<Option<MatchType>, ()> {
        match name {
            "match" | "match_exact" => Ok(Some(MatchType::Exact)),
            "match_urlpattern" => Ok(Some(MatchType::UrlPattern)),
            n if n.len() >= 5 && n.as_bytes()[..5].eq_ignore_ascii_case(b"match") => Err(()),
            _ => Ok(None),
        }
    }
}

/// Why a matcher value was refused (a 400 in a query, `invalid_token` in
/// a token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatcherError {
    /// The empty string.
    Empty,
    /// Longer than [`MAX_EXACT_BYTES`].
    TooLong,
    /// A control or Unicode format character.
    ControlChar,
    /// Not a URL pattern this hub can match.
    Pattern(PatternError),
}

impl MatcherError {
    /// A reason for the client.
    pub fn message(self) -> String {
        match self {
            MatcherError::Empty => "an empty topic matcher".into(),
            MatcherError::TooLong => format!("a topic matcher is at most {MAX_EXACT_BYTES} bytes"),
            MatcherError::ControlChar => {
                "topic matchers must not contain control or format characters".into()
            }
            MatcherError::Pattern(e) => e.message(),
        }
    }
}

/// Whether `s` may be a topic, matcher or id: no C0 or C1 control, no
/// DEL, no Unicode format (`Cf`) character, as the draft requires of all
/// three (they are invisible and enable spoofing).
pub fn valid_protocol_string(s: &str) -> bool {
    !s.chars()
        .any(|c| c <= '\u{1f}' || ('\u{7f}'..='\u{9f}').contains(&c) || is_format(c))
}

/// Unicode general category `Cf` (Unicode 15.1).
fn is_format(c: char) -> bool {
    matches!(c as u32,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF
        | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// One topic matcher: `*`, an exact topic, or a URL pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicMatcher {
    /// The reserved `*`, whatever the type: every topic.
    Any,
    /// The topic itself.
    Exact(Box<str>),
    /// A compiled URL pattern.
    UrlPattern(Box<UrlPattern>),
}

impl TopicMatcher {
    /// Parses `value` as a matcher of type `t`; relative URL patterns
    /// resolve against `hub` (the hub's URL).
    pub fn parse(
        value: &str,
        t: MatchType,
        hub: Option<&Url>,
    ) -> Result<TopicMatcher, MatcherError> {
        if value.is_empty() {
            return Err(MatcherError::Empty);
        }
        if value.len() > MAX_EXACT_BYTES {
            return Err(MatcherError::TooLong);
        }
        if !valid_protocol_string(value) {
            return Err(MatcherError::ControlChar);
        }
        if value == "*" {
            return Ok(TopicMatcher::Any);
        }
        Ok(match t {
            MatchType::Exact => TopicMatcher::Exact(value.into()),
            MatchType::UrlPattern => TopicMatcher::UrlPattern(Box::new(
                UrlPattern::compile(value, hub).map_err(MatcherError::Pattern)?,
            )),
        })
    }

    /// The type it was parsed as (`*` reports `exact`).
    pub fn match_type(&self) -> MatchType {
        match self {
            TopicMatcher::UrlPattern(_) => MatchType::UrlPattern,
            _ => MatchType::Exact,
        }
    }

    /// The matcher as written.
    pub fn as_str(&self) -> &str {
        match self {
            TopicMatcher::Any => "*",
            TopicMatcher::Exact(s) => s,
            TopicMatcher::UrlPattern(p) => p.as_str(),
        }
    }

    /// Whether it selects `topic`.
    pub fn matches(&self, topic: &Topic<'_>) -> bool {
        match self {
            TopicMatcher::Any => true,
            TopicMatcher::Exact(s) => **s == *topic.raw,
            TopicMatcher::UrlPattern(p) => topic.url().is_some_and(|u| p.matches_url(u)),
        }
    }
}

/// A topic prepared for matching: parsed as a URL (against the hub's URL)
/// at most once, and only if a URL pattern asks.
pub struct Topic<'a> {
    raw: &'a str,
    hub: Option<&'a Url>,
    url: OnceCell<Option<Url>>,
}

impl<'a> Topic<'a> {
    /// Wraps `raw`; relative topics resolve against `hub`.
    pub fn new(raw: &'a str, hub: Option<&'a Url>) -> Topic<'a> {
        Topic {
            raw,
            hub,
            url: OnceCell::new(),
        }
    }
    /// The topic as published.
    pub fn as_str(&self) -> &str {
        self.raw
    }
    fn url(&self) -> Option<&Url> {
        self.url
            .get_or_init(|| Url::parse(self.raw, self.hub))
            .as_ref()
    }
}

/// What the hub requires of a draft-08 token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `--jwt-issuer`: `iss` must equal it; `None` skips the check (the
    /// draft allows that for self-issued tokens).
    pub issuer: Option<String>,
    /// `--jwt-audience`: `aud` must be it or an array holding it.
    pub audience: String,
    /// Whether tokens of the legacy dialect (`mercure` claim) are accepted
    /// (`--mercure-legacy`).
    pub legacy: bool,
}

/// Why a draft-08 token is invalid: all are reported as `invalid_token`
/// (the draft wants one code, so the reason is not disclosed on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidToken {
    /// Signature, shape, algorithm, size or time (see `JwtError`).
    Jwt(JwtError),
    /// `typ` is not `at+jwt` while the token carries
    /// `authorization_details`, or a legacy token where the legacy dialect
    /// is off.
    Type,
    /// No `exp`.
    MissingExp,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` does not contain the configured audience.
    Audience,
    /// `authorization_details` is malformed or over a limit.
    Details(DetailError),
}

/// What is wrong with `authorization_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetailError {
    /// Not an array of objects with a string `type`.
    Shape,
    /// More than [`MAX_DETAILS`] Mercure details or [`MAX_TOPICS`] topics.
    TooMany,
    /// `actions` is not a non-empty array of strings.
    Actions,
    /// `topics` is not a non-empty array of `{match, match_type}` objects.
    Topics,
    /// A `match_type` this hub does not support.
    MatchType,
    /// A `match` value refused.
    Match(MatcherError),
    /// `payload` is not an object.
    Payload,
}

/// An authorization failure, with the RFC 6750 error it is reported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No token where one is required: 401, a challenge without an error.
    Missing,
    /// A token was presented and failed: 401 `invalid_token`.
    InvalidToken(InvalidToken),
    /// A valid token without the grant: 403 `insufficient_scope`.
    InsufficientScope,
    /// The token's presentation is malformed: 400 `invalid_request`.
    InvalidRequest,
}

impl From<InvalidToken> for AuthError {
    fn from(e: InvalidToken) -> AuthError {
        AuthError::InvalidToken(e)
    }
}

impl AuthError {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            AuthError::Missing | AuthError::InvalidToken(_) => 401,
            AuthError::InsufficientScope => 403,
            AuthError::InvalidRequest => 400,
        }
    }
    /// The RFC 6750 `error` code; none when no token was presented.
    pub fn code(self) -> Option<&'static str> {
        match self {
            AuthError::Missing => None,
            AuthError::InvalidToken(_) => Some("invalid_token"),
            AuthError::InsufficientScope => Some("insufficient_scope"),
            AuthError::InvalidRequest => Some("invalid_request"),
        }
    }
    /// A reason for the response body (never the token, never which check
    /// failed for an invalid one).
    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => "an access token is required",
            AuthError::InvalidToken(_) => "invalid access token",
            AuthError::InsufficientScope => "the access token does not grant this",
            AuthError::InvalidRequest => "malformed access token presentation",
        }
    }
    /// The `WWW-Authenticate` value: `Bearer`, the RFC 9728
    /// `resource_metadata` URL, and the error code when there is one.
    pub fn challenge(self, resource_metadata: &str) -> String {
        let mut s = format!("Bearer resource_metadata=\"{}\"", quoted(resource_metadata));
        if let Some(code) = self.code() {
            s.push_str(&format!(", error=\"{code}\""));
        }
        s
    }
}

/// RFC 9110 quoted-string content: `"` and `\` escaped, controls dropped.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One Mercure authorization detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail {
    /// `actions` holds `publish`.
    pub publish: bool,
    /// `actions` holds `subscribe`.
    pub subscribe: bool,
    /// The topics the actions apply to.
    pub topics: Box<[TopicMatcher]>,
    /// `payload`, for subscription events.
    pub payload: Option<Value>,
}

/// What a verified draft-08 token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessGrants {
    /// The Mercure details, in token order (payload lookup is first-wins).
    pub details: Box<[Detail]>,
    /// `exp` in whole seconds: a subscription it opened ends then.
    pub exp: u64,
}

impl AccessGrants {
    fn allows(&self, subscribe: bool, topic: &Topic<'_>) -> bool {
        self.details.iter().any(|d| {
            (if subscribe { d.subscribe } else { d.publish })
                && d.topics.iter().any(|m| m.matches(topic))
        })
    }
    /// Whether publishing to `topic` is granted.
    pub fn can_publish(&self, topic: &Topic<'_>) -> bool {
        self.allows(false, topic)
    }
    /// Whether receiving private updates of `topic` is granted.
    pub fn can_subscribe(&self, topic: &Topic<'_>) -> bool {
        self.allows(true, topic)
    }
    /// Publishing needs a grant for every topic of the update; else 403.
    pub fn check_publish(&self, topics: &[Topic<'_>]) -> Result<(), AuthError> {
        if topics.iter().all(|t| self.can_publish(t)) {
            Ok(())
        } else {
            Err(AuthError::InsufficientScope)
        }
    }
    /// The `payload` of the first subscribe detail whose topics match the
    /// subscription's own matcher string, treated as a topic.
    pub fn payload_for(&self, subscription: &Topic<'_>) -> Option<&Value> {
        self.details
            .iter()
            .filter(|d| d.subscribe)
            .find(|d| d.topics.iter().any(|m| m.matches(subscription)))
            .and_then(|d| d.payload.as_ref())
    }
}

/// A verified token of either dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The `mercure` claim (publish/subscribe selector arrays).
    Legacy(Grants),
    /// Draft-08 `authorization_details`.
    Draft08(AccessGrants),
}

fn access_token_typ(typ: Option<&str>) -> bool {
    typ.is_some_and(|t| {
        let t = t
            .get(..12)
            .filter(|p| p.eq_ignore_ascii_case("application/"))
            .map_or(t, |_| &t[12..]);
        t.eq_ignore_ascii_case("at+jwt")
    })
}

/// Verifies `token` under `key` at `now`: a `typ: at+jwt` token by the
/// draft-08 rules, any other by the legacy ones when `policy.legacy`.
pub fn verify(
    token: &str,
    key: &Key,
    policy: &Policy,
    hub: Option<&Url>,
    now: u64,
) -> Result<Verified, AuthError> {
    let jwt = |e| AuthError::InvalidToken(InvalidToken::Jwt(e));
    if access_token_typ(jwt::peek_typ(token).map_err(jwt)?.as_deref()) {
        let claims = jwt::verify_signature(token, key, access_token_typ).map_err(jwt)?;
        return Ok(Verified::Draft08(draft08_claims(
            &claims, policy, hub, now,
        )?));
    }
    let claims = jwt::verify_signature(token, key, jwt::legacy_typ).map_err(jwt)?;
    // A token written for draft-08 but missing its `typ` says so, rather
    // than passing as a legacy token that grants nothing.
    if !policy.legacy || claims.contains_key("authorization_details") {
        return Err(InvalidToken::Type.into());
    }
    let claims = jwt::legacy_claims(&claims, now).map_err(jwt)?;
    Ok(Verified::Legacy(Grants::from_claims(claims)))
}

fn draft08_claims(
    c: &Map<String, Value>,
    policy: &Policy,
    hub: Option<&Url>,
    now: u64,
) -> Result<AccessGrants, InvalidToken> {
    let now_f = now as f64;
    let exp = jwt::numeric_date(c, "exp")
        .map_err(InvalidToken::Jwt)?
        .ok_or(InvalidToken::MissingExp)?;
    if exp <= now_f {
        return Err(InvalidToken::Jwt(JwtError::Expired));
    }
    if jwt::numeric_date(c, "nbf")
        .map_err(InvalidToken::Jwt)?
        .is_some_and(|nbf| nbf > now_f)
    {
        return Err(InvalidToken::Jwt(JwtError::NotYetValid));
    }
    if let Some(iss) = &policy.issuer {
        if c.get("iss").and_then(Value::as_str) != Some(iss) {
            return Err(InvalidToken::Issuer);
        }
    }
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => *a == policy.audience,
        Some(Value::Array(list)) => {
            list.iter().all(Value::is_string)
                && list.iter().any(|a| a.as_str() == Some(&policy.audience))
        }
        _ => false,
    };
    if !aud_ok {
        return Err(InvalidToken::Audience);
    }
    let details = match c.get("authorization_details") {
        None => Vec::new(),
        Some(v) => parse_details(v, hub).map_err(InvalidToken::Details)?,
    };
    Ok(AccessGrants {
        details: details.into(),
        // A float `exp` floors; `as` saturates, and exp > now >= 0 here.
        exp: exp as u64,
    })
}

/// `authorization_details`: entries of other types are ignored (RFC 9396
/// lets one token carry several resources' details); a Mercure entry that
/// is malformed rejects the whole token, never only itself.
pub fn parse_details(v: &Value, hub: Option<&Url>) -> Result<Vec<Detail>, DetailError> {
    let list = v.as_array().ok_or(DetailError::Shape)?;
    let mut out = Vec::new();
    let mut topics_seen = 0usize;
    for entry in list {
        let obj = entry.as_object().ok_or(DetailError::Shape)?;
        let ty = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or(DetailError::Shape)?;
        if !DETAIL_TYPES.contains(&ty) {
            continue;
        }
        if out.len() == MAX_DETAILS {
            return Err(DetailError::TooMany);
        }
        let actions = obj
            .get("actions")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .ok_or(DetailError::Actions)?;
        let (mut publish, mut subscribe) = (false, false);
        for a in actions {
            match a.as_str().ok_or(DetailError::Actions)? {
                "publish" => publish = true,
                "subscribe" => subscribe = true,
                // Actions from future specifications grant nothing here.
                _ => {}
            }
        }
        let list = obj
            .get("topics")
            .and_then(Value::as_array)
            .filter(|t| !t.is_empty())
            .ok_or(DetailError::Topics)?;
        topics_seen += list.len();
        if topics_seen > MAX_TOPICS {
            return Err(DetailError::TooMany);
        }
        let mut topics = Vec::with_capacity(list.len());
        for t in list {
            let t = t.as_object().ok_or(DetailError::Topics)?;
            let m = t
                .get("match")
                .and_then(Value::as_str)
                .ok_or(DetailError::Topics)?;
            let ty = match t.get("match_type") {
                None => MatchType::Exact,
                Some(Value::String(s)) => MatchType::parse(s).ok_or(DetailError::MatchType)?,
                Some(_) => return Err(DetailError::MatchType),
            };
            topics.push(TopicMatcher::parse(m, ty, hub).map_err(DetailError::Match)?);
        }
        let payload = match obj.get("payload") {
            None => None,
            Some(p @ Value::Object(_)) => Some(p.clone()),
            Some(_) => return Err(DetailError::Payload),
        };
        out.push(Detail {
            publish,
            subscribe,
            topics: topics.into(),
            payload,
        });
    }
    Ok(out)
}

/// Options of the RFC 9728 protected-resource metadata document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataOptions {
    /// Issuers of authorization servers to advertise (`--jwt-issuer`).
    pub authorization_servers: Vec<String>,
    /// Whether the hub reads the token from a cookie.
    pub cookie: bool,
    /// Whether `?access_token=` (RFC 6750 "query") is accepted.
    pub query: bool,
    /// Whether active subscriptions (`--mercure-subscriptions`) are on.
    pub subscriptions: bool,
}

/// The document served at `/.well-known/oauth-protected-resource` + the
/// hub's path: `resource` is the identifier tokens name in `aud`.
pub fn protected_resource_metadata(resource: &str, o: &MetadataOptions) -> Value {
    let mut m = Map::new();
    m.insert("resource".into(), resource.into());
    if !o.authorization_servers.is_empty() {
        m.insert(
            "authorization_servers".into(),
            o.authorization_servers.clone().into(),
        );
    }
    m.insert(
        "authorization_details_types_supported".into(),
        DETAIL_TYPES.to_vec().into(),
    );
    let mut methods = vec!["header"];
    if o.query {
        methods.push("query");
    }
    m.insert("bearer_methods_supported".into(), methods.into());
    m.insert(
        "resource_signing_alg_values_supported".into(),
        ALGORITHMS.to_vec().into(),
    );
    if o.cookie {
        m.insert("mercure_cookie".into(), true.into());
    }
    let types: Vec<&str> = MatchType::ALL.iter().map(|t| t.name()).collect();
    m.insert("mercure_matcher_types_supported".into(), types.into());
    if o.subscriptions {
        m.insert("mercure_subscriptions".into(), true.into());
    }
    Value::Object(m)
}

/// The metadata URL for a hub URL (RFC 9728 §3.1: the well-known segment
/// goes between the host and the path).
pub fn metadata_url(hub: &Url) -> String {
    let port = if hub.port().is_empty() {
        String::new()
    } else {
        format!(":{}", hub.port())
    };
    let path = hub.pathname().trim_end_matches('/');
    format!(
        "{}://{}{port}/.well-known/oauth-protected-resource{path}",
        hub.protocol(),
        hub.hostname()
    )
}

#[cfg(test)]
mod tests;
