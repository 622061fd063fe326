//! HS256 JSON Web Token verification (RFC 7519 / RFC 7515 compact form) and
//! the Mercure claims inside. Owns the checks between a token string and
//! [`Claims`]; it must not read clocks, sockets or files (the caller passes
//! `now`), must not trust any other `alg`, and must not look at the payload
//! before the signature holds.

use serde_json::{Map, Value};

use super::base64url;
use super::hmac::{constant_time_eq, hmac_sha256};
use super::selector::Selector;

/// Longest token accepted, in bytes; bounds every allocation below.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Shortest HS256 key accepted: RFC 7518 §3.2 wants at least the hash size.
pub const MIN_KEY_BYTES: usize = 32;
/// Most selectors in one `publish` or `subscribe` claim.
pub const MAX_SELECTORS: usize = 256;

/// An HS256 secret. `Debug` does not print it.
#[derive(Clone)]
pub struct Key(Vec<u8>);

/// Why a key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// Fewer than [`MIN_KEY_BYTES`] bytes.
    TooShort,
}

impl Key {
    /// Wraps `bytes`, refusing keys shorter than [`MIN_KEY_BYTES`].
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Key, KeyError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort);
        }
        Ok(Key(bytes))
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts with a JSON object header and payload.
    Malformed,
    /// Longer than [`MAX_TOKEN_BYTES`].
    TooLarge,
    /// `alg` is not exactly `HS256`, or `typ` is not `JWT`.
    BadAlg,
    /// The signature does not match (wrong key or altered token).
    BadSignature,
    /// `exp` is not after now.
    Expired,
    /// `nbf` is after now.
    NotYetValid,
    /// A claim has the wrong type, too many selectors, or a bad selector.
    BadClaims,
}

impl JwtError {
    /// A reason safe to send to the client; it never quotes the token.
    pub fn message(self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed token",
            JwtError::TooLarge => "token too large",
            JwtError::BadAlg => "unsupported token algorithm or type",
            JwtError::BadSignature => "invalid token signature",
            JwtError::Expired => "token expired",
            JwtError::NotYetValid => "token not yet valid",
            JwtError::BadClaims => "invalid token claims",
        }
    }
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for JwtError {}

/// What a verified token grants. `None` means the claim was absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `mercure.publish` selectors.
    pub publish: Option<Vec<Selector>>,
    /// `mercure.subscribe` selectors.
    pub subscribe: Option<Vec<Selector>>,
    /// `exp` in whole seconds, so callers can end a subscription on time.
    pub exp: Option<u64>,
}

/// Verifies `token` as HS256 under `key` at `now_unix_secs`.
#[cfg_attr(all(feature = "mercure", not(test)), allow(dead_code))]
pub fn verify(token: &str, key: &Key, now_unix_secs: u64) -> Result<Claims, JwtError> {
    legacy_claims(&verify_signature(token, key, legacy_typ)?, now_unix_secs)
}

/// The time checks and the `mercure` claim of a legacy token whose
/// signature [`verify_signature`] has checked.
pub fn legacy_claims(claims: &Map<String, Value>, now_unix_secs: u64) -> Result<Claims, JwtError> {
    let now = now_unix_secs as f64;
    let exp = numeric_date(claims, "exp")?;
    if exp.is_some_and(|exp| exp <= now) {
        return Err(JwtError::Expired);
    }
    if numeric_date(claims, "nbf")?.is_some_and(|nbf| nbf > now) {
        return Err(JwtError::NotYetValid);
    }
    let (publish, subscribe) = match claims.get("mercure") {
        None => (None, None),
        Some(Value::Object(m)) => (selectors(m, "publish")?, selectors(m, "subscribe")?),
        Some(_) => return Err(JwtError::BadClaims),
    };
    Ok(Claims {
        publish,
        subscribe,
        // A float `exp` floors; `as` saturates, and exp > now >= 0 here.
        exp: exp.map(|e| e as u64),
    })
}

/// The legacy dialect's `typ`: `JWT` in any case, or none.
pub fn legacy_typ(typ: Option<&str>) -> bool {
    typ.is_none_or(|t| t.eq_ignore_ascii_case("JWT"))
}

/// Checks a token's size and shape, its header (`alg` exactly `HS256`,
/// `typ` as `typ_ok` wants it, no `crit`) and its signature, and returns
/// the claims without looking at them: the part both dialects share.
pub fn verify_signature(
    token: &str,
    key: &Key,
    typ_ok: fn(Option<&str>) -> bool,
) -> Result<Map<String, Value>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    check_header(&json_object(header)?, typ_ok)?;

    let sig = base64url::decode(sig, MAX_TOKEN_BYTES).map_err(|_| JwtError::Malformed)?;
    let signed = &token.as_bytes()[..header.len() + 1 + payload.len()];
    if !constant_time_eq(&hmac_sha256(&key.0, signed), &sig) {
        return Err(JwtError::BadSignature);
    }
    json_object(payload)
}

/// The `typ` a token's header declares, read before any check, only to
/// choose which dialect verifies it (a string, or `None` when absent).
pub fn peek_typ(token: &str) -> Result<Option<String>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let header = token.split('.').next().unwrap_or("");
    match json_object(header)?.get("typ") {
        None => Ok(None),
        Some(Value::String(t)) => Ok(Some(t.clone())),
        Some(_) => Err(JwtError::BadAlg),
    }
}

/// Signs `claims_json` as an HS256 JWT, for tests and token tools.
pub fn mint_hs256(claims_json: &Value, key: &Key) -> String {
    mint_hs256_typ(claims_json, key, "JWT")
}

/// [`mint_hs256`] with another `typ` header (`at+jwt` for draft-08).
pub fn mint_hs256_typ(claims_json: &Value, key: &Key, typ: &str) -> String {
    let header = serde_json::json!({"alg": "HS256", "typ": typ}).to_string();
    let header = base64url::encode(header.as_bytes());
    let payload = base64url::encode(claims_json.to_string().as_bytes());
    let signed = format!("{header}.{payload}");
    let sig = base64url::encode(&hmac_sha256(&key.0, signed.as_bytes()));
    format!("{signed}.{sig}")
}

fn json_object(part: &str) -> Result<Map<String, Value>, JwtError> {
    let bytes = base64url::decode(part, MAX_TOKEN_BYTES).map_err(|_| JwtError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(JwtError::Malformed),
    }
}

fn check_header(h: &Map<String, Value>, typ_ok: fn(Option<&str>) -> bool) -> Result<(), JwtError> {
    if h.get("alg").and_then(Value::as_str) != Some("HS256") {
        return Err(JwtError::BadAlg);
    }
    match h.get("typ") {
        None if typ_ok(None) => {}
        Some(Value::String(t)) if typ_ok(Some(t)) => {}
        _ => return Err(JwtError::BadAlg),
    }
    // RFC 7515 §4.1.11: extensions we do not understand must be refused.
    if h.contains_key("crit") {
        return Err(JwtError::Malformed);
    }
    Ok(())
}

/// A NumericDate claim (seconds, maybe fractional); `None` when absent.
pub fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or(JwtError::BadClaims),
    }
}

fn selectors(m: &Map<String, Value>, name: &str) -> Result<Option<Vec<Selector>>, JwtError> {
    let Some(v) = m.get(name) else {
        return Ok(None);
    };
    let list = v.as_array().ok_or(JwtError::BadClaims)?;
    if list.len() > MAX_SELECTORS {
        return Err(JwtError::BadClaims);
    }
    list.iter()
        .map(|s| {
            let s = s.as_str().ok_or(JwtError::BadClaims)?;
            Selector::parse(s).map_err(|_| JwtError::BadClaims)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::JwtError::*;
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn key() -> Key {
        Key::new("ssed-test-key-0123456789abcdef-32bytes!").unwrap()
    }
    fn v(token: &str) -> Result<Claims, JwtError> {
        verify(token, &key(), NOW)
    }
    /// Mints `claims` under `key()` and verifies the result.
    fn round(claims: Value) -> Result<Claims, JwtError> {
        v(&mint_hs256(&claims, &key()))
    }
    /// Raw header and payload text, signed correctly under `key()`.
    fn signed(header: &str, payload: &str) -> String {
        let hp = format!(
            "{}.{}",
            base64url::encode(header.as_bytes()),
            base64url::encode(payload.as_bytes())
        );
        let sig = base64url::encode(&hmac_sha256(&key().0, hp.as_bytes()));
        format!("{hp}.{sig}")
    }

    #[test]
    fn key_length() {
        assert_eq!(Key::new(vec![0u8; 31]).unwrap_err(), KeyError::TooShort);
        assert!(Key::new(vec![0u8; 32]).is_ok());
        assert_eq!(format!("{:?}", key()), "Key(39 bytes)");
    }

    #[test]
    fn good_token() {
        let m = json!({"publish": ["/a/{id}"], "subscribe": ["*"], "payload": 1});
        let c = round(json!({"exp": NOW + 60, "mercure": m})).unwrap();
        assert!(c.publish.unwrap()[0].matches("/a/7"));
        assert!(c.subscribe.unwrap()[0].matches("/anything"));
        assert_eq!(c.exp, Some(NOW + 60));
        let none = Claims {
            publish: None,
            subscribe: None,
            exp: None,
        };
        assert_eq!(round(json!({})), Ok(none));
    }

    #[test]
    fn pyjwt_token() {
        // Minted by PyJWT 2.15.1: jwt.encode({"mercure": {"publish":
        // ["https://example.com/books/{id}"], "subscribe": ["*"], "payload":
        // {"user": "kim"}}, "exp": 4102444800, "nbf": 1600000000}, key, "HS256").
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJtZXJjdXJlIjp7InB1Ymxpc2giOlsiaHR0cHM6Ly9leGFtcGxlLmNvbS9ib29rcy97aWR9Il0sInN1YnNjcmliZSI6WyIqIl0sInBheWxvYWQiOnsidXNlciI6ImtpbSJ9fSwiZXhwIjo0MTAyNDQ0ODAwLCJuYmYiOjE2MDAwMDAwMDB9.YRdj-KS6JSrsV9OEoUl1Jvj8eJ_oXd0JqudYCfF9gqI";
        let c = v(t).unwrap();
        assert_eq!(c.exp, Some(4_102_444_800));
        let publish = c.publish.unwrap();
        assert_eq!(publish[0].as_str(), "https://example.com/books/{id}");
        assert_eq!(c.subscribe.unwrap()[0].as_str(), "*");
    }

    #[test]
    fn bad_signature_and_wrong_key() {
        let t = mint_hs256(&json!({"mercure": {"subscribe": ["*"]}}), &key());
        let other = Key::new([7u8; 32]).unwrap();
        assert_eq!(verify(&t, &other, NOW), Err(BadSignature));
        // Another payload under the original signature.
        let forged = mint_hs256(&json!({"mercure": {"publish": ["*"]}}), &other);
        let (head, _) = forged.rsplit_once('.').unwrap();
        let (signed, sig) = t.rsplit_once('.').unwrap();
        assert_eq!(v(&format!("{head}.{sig}")), Err(BadSignature));
        assert_eq!(v(&format!("{signed}.AAAA")), Err(BadSignature));
    }

    #[test]
    fn algorithms() {
        let c = r#"{"mercure":{"publish":["*"]}}"#;
        for h in [
            r#"{"alg":"HS384","typ":"JWT"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"alg":"none"}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":["HS256"]}"#,
            r#"{"alg":"HS256","typ":"JWS"}"#,
            r#"{"alg":"HS256","typ":1}"#,
        ] {
            assert_eq!(v(&signed(h, c)), Err(BadAlg), "{h}");
        }
        assert!(v(&signed(r#"{"alg":"HS256","typ":"jwt"}"#, c)).is_ok());
        assert!(v(&signed(r#"{"alg":"HS256"}"#, c)).is_ok());
        let crit = signed(r#"{"alg":"HS256","crit":["x"],"x":1}"#, c);
        assert_eq!(v(&crit), Err(Malformed));
    }

    #[test]
    fn alg_none_with_empty_signature() {
        let h = base64url::encode(br#"{"alg":"none","typ":"JWT"}"#);
        let p = base64url::encode(br#"{"mercure":{"publish":["*"]}}"#);
        assert_eq!(v(&format!("{h}.{p}.")), Err(BadAlg));
        let h = base64url::encode(br#"{"alg":"HS256"}"#);
        assert_eq!(v(&format!("{h}.{p}.")), Err(BadSignature));
    }

    #[test]
    fn time_claims() {
        assert_eq!(round(json!({"exp": NOW})), Err(Expired));
        assert_eq!(round(json!({"exp": NOW - 1})), Err(Expired));
        assert_eq!(round(json!({"exp": -5})), Err(Expired));
        let frac = round(json!({"exp": (NOW as f64) + 0.5}));
        assert_eq!(frac.unwrap().exp, Some(NOW));
        assert_eq!(round(json!({"nbf": NOW + 1})), Err(NotYetValid));
        assert!(round(json!({"nbf": NOW})).is_ok());
        assert_eq!(round(json!({"exp": "never"})), Err(BadClaims));
        assert_eq!(round(json!({"nbf": null})), Err(BadClaims));
    }

    #[test]
    fn malformed() {
        let t = mint_hs256(&json!({}), &key());
        let (h, rest) = t.split_once('.').unwrap();
        let (hp, _) = t.rsplit_once('.').unwrap();
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            &format!("{t}."),
            &format!("{h}=.{rest}"),
            &format!("{h}!.{rest}"),
            &format!("{hp}.*"),
            // Signed correctly, but the payload is not a JSON object.
            &signed(r#"{"alg":"HS256"}"#, "[1]"),
            &signed(r#"{"alg":"HS256"}"#, "nul"),
            &signed(r#"{"alg":"HS256"}"#, "\"x\""),
        ] {
            assert_eq!(v(bad), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn oversize() {
        let big = "x".repeat(MAX_TOKEN_BYTES);
        assert_eq!(round(json!({ "pad": big })), Err(TooLarge));
        assert_eq!(v(&"a".repeat(MAX_TOKEN_BYTES + 1)), Err(TooLarge));
    }

    #[test]
    fn selector_limits() {
        let m = |m: Value| round(json!({ "mercure": m }));
        let many = vec!["/a"; MAX_SELECTORS + 1];
        assert_eq!(m(json!({ "subscribe": many })), Err(BadClaims));
        let enough = vec!["/a"; MAX_SELECTORS];
        let got = m(json!({ "subscribe": enough })).unwrap().subscribe;
        assert_eq!(got.map(|s| s.len()), Some(MAX_SELECTORS));
        let long = "a".repeat(2049);
        assert_eq!(m(json!({ "publish": [long] })), Err(BadClaims));
        assert_eq!(m(json!({"publish": "*"})), Err(BadClaims));
        assert_eq!(m(json!({"publish": [1]})), Err(BadClaims));
        assert_eq!(m(json!({"publish": ["{x"]})), Err(BadClaims));
        assert_eq!(m(json!([])), Err(BadClaims));
        assert_eq!(m(json!({"publish": []})).unwrap().publish, Some(vec![]));
    }
}
