//! Draft-08 token cases: a vector minted outside this crate, each check
//! failing on its own, malformed `authorization_details`, both dialects on
//! one key, the RFC 6750 mapping, and the RFC 9728 document.

use super::*;
use crate::auth::jwt::{mint_hs256, mint_hs256_typ};
use crate::auth::{base64url, hmac::hmac_sha256};
use serde_json::json;

const NOW: u64 = 1_700_000_000;
const KEY: &str = "ssed-test-key-0123456789abcdef-32bytes!";
const HUB: &str = "https://hub.example.com/.well-known/mercure";

fn key() -> Key {
    Key::new(KEY).unwrap()
}
fn hub() -> Url {
    Url::parse(HUB, None).unwrap()
}
fn policy() -> Policy {
    Policy {
        issuer: Some("https://example.com".into()),
        audience: HUB.into(),
        legacy: true,
    }
}
fn run(token: &str, p: &Policy) -> Result<Verified, AuthError> {
    verify(token, &key(), p, Some(&hub()), NOW)
}
/// A draft-08 token's claims: the required ones plus `extra`.
fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": "https://example.com", "aud": HUB, "exp": NOW + 60});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}
fn at(c: Value) -> String {
    mint_hs256_typ(&c, &key(), "at+jwt")
}
fn grants(extra: Value) -> AccessGrants {
    match run(&at(claims(extra)), &policy()) {
        Ok(Verified::Draft08(g)) => g,
        other => panic!("{other:?}"),
    }
}
fn invalid(c: Value) -> InvalidToken {
    match run(&at(c), &policy()) {
        Err(AuthError::InvalidToken(e)) => e,
        other => panic!("{other:?}"),
    }
}
fn details(d: Value) -> Result<Vec<Detail>, DetailError> {
    parse_details(&d, Some(&hub()))
}
fn t(s: &str) -> Topic<'_> {
    static HUB_URL: std::sync::OnceLock<Url> = std::sync::OnceLock::new();
    Topic::new(s, Some(HUB_URL.get_or_init(hub)))
}
/// Raw header and payload text, signed under `key()`.
fn signed(header: &str, payload: &str) -> String {
    let hp = format!(
        "{}.{}",
        base64url::encode(header.as_bytes()),
        base64url::encode(payload.as_bytes())
    );
    let sig = base64url::encode(&hmac_sha256(KEY.as_bytes(), hp.as_bytes()));
    format!("{hp}.{sig}")
}

#[test]
fn vector_minted_with_python_stdlib() {
    // Python's hmac, hashlib and base64 over the compact JSON of
    // {"alg":"HS256","typ":"at+jwt"} and claims with two details: a
    // urlpattern subscribe grant with a payload, and a publish grant whose
    // unknown action "delete" is ignored.
    let t_ = "eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJpc3MiOiJodHRwczovL2V4YW1wbGUuY29tIiwiYXVkIjpbImh0dHBzOi8vaHViLmV4YW1wbGUuY29tLy53ZWxsLWtub3duL21lcmN1cmUiLCJvdGhlciJdLCJleHAiOjQxMDI0NDQ4MDAsIm5iZiI6MTYwMDAwMDAwMCwic3ViIjoidXJuOnV1aWQ6YmIzZGUyNjgtMDViMC00YzY1LWI0NGUtOGY5YWNlZmMyOWQ2IiwiYXV0aG9yaXphdGlvbl9kZXRhaWxzIjpbeyJ0eXBlIjoiaHR0cHM6Ly9tZXJjdXJlLnJvY2tzL2F1dGhvcml6YXRpb24tZGV0YWlsIiwiYWN0aW9ucyI6WyJzdWJzY3JpYmUiXSwidG9waWNzIjpbeyJtYXRjaCI6Imh0dHBzOi8vZXhhbXBsZS5jb20vYm9va3MvOmlkIiwibWF0Y2hfdHlwZSI6InVybHBhdHRlcm4ifV0sInBheWxvYWQiOnsidXNlciI6ImtpbSJ9fSx7InR5cGUiOiJtZXJjdXJlIiwiYWN0aW9ucyI6WyJwdWJsaXNoIiwiZGVsZXRlIl0sInRvcGljcyI6W3sibWF0Y2giOiJodHRwczovL2V4YW1wbGUuY29tL2Jvb2tzLzEifV19XX0.ByG8wC-p8P2RPIccdqTRctvGsaU1E2RT9ZiOs8Jfj0U";
    let Ok(Verified::Draft08(g)) = run(t_, &policy()) else {
        panic!("{:?}", run(t_, &policy()));
    };
    assert_eq!(g.exp, 4_102_444_800);
    assert!(g.can_subscribe(&t("https://example.com/books/42")));
    assert!(!g.can_subscribe(&t("https://example.com/books/42/reviews")));
    assert!(g.can_subscribe(&t("https://example.com/books/1")));
    assert!(!g.can_subscribe(&t("https://example.org/books/1")));
    assert!(g.can_publish(&t("https://example.com/books/1")));
    assert!(!g.can_publish(&t("https://example.com/books/2")));
    let sub = t("https://example.com/books/:id");
    assert_eq!(g.payload_for(&sub), Some(&json!({"user": "kim"})));
    // The signature's first byte changed.
    let bad = t_.replace(".ByG8", ".CyG8");
    assert_eq!(
        run(&bad, &policy()),
        Err(AuthError::InvalidToken(InvalidToken::Jwt(
            JwtError::BadSignature
        )))
    );
}

#[test]
fn typ_must_be_at_jwt() {
    let d = json!({"authorization_details": [
        {"type": "mercure", "actions": ["publish"], "topics": [{"match": "*"}]}
    ]});
    let c = claims(d);
    for typ in [
        "at+jwt",
        "AT+JWT",
        "application/at+jwt",
        "Application/AT+JWT",
    ] {
        assert!(
            matches!(
                run(&mint_hs256_typ(&c, &key(), typ), &policy()),
                Ok(Verified::Draft08(_))
            ),
            "{typ}"
        );
    }
    // The same claims as a legacy token, or with no typ at all.
    assert_eq!(
        run(&mint_hs256(&c, &key()), &policy()),
        Err(AuthError::InvalidToken(InvalidToken::Type))
    );
    let no_typ = signed(r#"{"alg":"HS256"}"#, &c.to_string());
    assert_eq!(
        run(&no_typ, &policy()),
        Err(AuthError::InvalidToken(InvalidToken::Type))
    );
    for typ in ["jwt+at", "application/jwt", "at+jwt ", "application/"] {
        let e = run(&mint_hs256_typ(&c, &key(), typ), &policy());
        assert!(matches!(e, Err(AuthError::InvalidToken(_))), "{typ}: {e:?}");
    }
}

#[test]
fn algorithm_allowlist() {
    let c = claims(json!({})).to_string();
    for h in [
        r#"{"alg":"none","typ":"at+jwt"}"#,
        r#"{"alg":"HS384","typ":"at+jwt"}"#,
        r#"{"alg":"RS256","typ":"at+jwt"}"#,
        r#"{"typ":"at+jwt"}"#,
    ] {
        assert_eq!(
            run(&signed(h, &c), &policy()),
            Err(AuthError::InvalidToken(InvalidToken::Jwt(JwtError::BadAlg))),
            "{h}"
        );
    }
    let h = base64url::encode(br#"{"alg":"none","typ":"at+jwt"}"#);
    let p = base64url::encode(c.as_bytes());
    assert!(matches!(
        run(&format!("{h}.{p}."), &policy()),
        Err(AuthError::InvalidToken(_))
    ));
    assert!(matches!(
        run(&signed(r#"{"alg":"HS256","typ":"at+jwt"}"#, &c), &policy()),
        Ok(Verified::Draft08(_))
    ));
}

#[test]
fn issuer_audience_and_times() {
    use InvalidToken::*;
    let base = json!({"aud": HUB, "exp": NOW + 60});
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    assert_eq!(
        invalid(base.clone()),
        Issuer,
        "iss required when configured"
    );
    assert_eq!(invalid(with("iss", json!("https://evil.example"))), Issuer);
    assert_eq!(invalid(with("iss", json!(["https://example.com"]))), Issuer);
    let mut open = policy();
    open.issuer = None;
    assert!(
        run(&at(base.clone()), &open).is_ok(),
        "no issuer configured"
    );

    let c = |aud: Value| claims(json!({ "aud": aud }));
    assert!(run(&at(c(json!([HUB, "other"]))), &policy()).is_ok());
    assert_eq!(
        invalid(c(json!("https://other.example/.well-known/mercure"))),
        Audience
    );
    assert_eq!(invalid(c(json!(["other"]))), Audience);
    assert_eq!(invalid(c(json!([HUB, 1]))), Audience);
    assert_eq!(invalid(c(json!(7))), Audience);
    let mut no_aud = claims(json!({}));
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(invalid(no_aud), Audience);

    let mut no_exp = claims(json!({}));
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(invalid(no_exp), MissingExp);
    assert_eq!(invalid(claims(json!({"exp": NOW}))), Jwt(JwtError::Expired));
    assert_eq!(
        invalid(claims(json!({"exp": "soon"}))),
        Jwt(JwtError::BadClaims)
    );
    assert_eq!(
        invalid(claims(json!({"nbf": NOW + 1}))),
        Jwt(JwtError::NotYetValid)
    );
    assert!(run(&at(claims(json!({"nbf": NOW}))), &policy()).is_ok());
    assert_eq!(grants(json!({"exp": (NOW as f64) + 9.5})).exp, NOW + 9);
}

#[test]
fn malformed_details_reject_the_token() {
    use DetailError::*;
    let ok =
        |topics: Value| json!([{"type": "mercure", "actions": ["subscribe"], "topics": topics}]);
    let cases = [
        (json!({}), Shape),
        (json!(["mercure"]), Shape),
        (
            json!([{"actions": ["publish"], "topics": [{"match": "*"}]}]),
            Shape,
        ),
        (json!([{"type": 1}]), Shape),
        (
            json!([{"type": "mercure", "topics": [{"match": "*"}]}]),
            Actions,
        ),
        (
            json!([{"type": "mercure", "actions": [], "topics": [{"match": "*"}]}]),
            Actions,
        ),
        (
            json!([{"type": "mercure", "actions": ["publish", 1], "topics": [{"match": "*"}]}]),
            Actions,
        ),
        (
            json!([{"type": "mercure", "actions": "publish", "topics": [{"match": "*"}]}]),
            Actions,
        ),
        (json!([{"type": "mercure", "actions": ["publish"]}]), Topics),
        (ok(json!([])), Topics),
        (ok(json!(["https://example.com/a"])), Topics),
        (ok(json!([null])), Topics),
        (ok(json!([{"match_type": "exact"}])), Topics),
        (ok(json!([{"match": 1}])), Topics),
        (
            ok(json!([{"match": "/a", "match_type": "regex"}])),
            MatchType,
        ),
        (
            ok(json!([{"match": "/a", "match_type": "URLPattern"}])),
            MatchType,
        ),
        (ok(json!([{"match": "/a", "match_type": null}])), MatchType),
        (ok(json!([{"match": ""}])), Match(MatcherError::Empty)),
        (
            ok(json!([{"match": "/a\u{7}b"}])),
            Match(MatcherError::ControlChar),
        ),
        (
            ok(json!([{"match": "/a\u{202e}b"}])),
            Match(MatcherError::ControlChar),
        ),
        (
            ok(json!([{"match": "/books/(\\d+)", "match_type": "urlpattern"}])),
            Match(MatcherError::Pattern(PatternError::RegexpGroup)),
        ),
        (
            ok(json!([{"match": "/books/:id/:id", "match_type": "urlpattern"}])),
            Match(MatcherError::Pattern(PatternError::DuplicateName)),
        ),
        (
            ok(json!([{"match": "x".repeat(MAX_EXACT_BYTES + 1)}])),
            Match(MatcherError::TooLong),
        ),
        (
            json!([{"type": "mercure", "actions": ["subscribe"], "topics": [{"match": "*"}], "payload": "x"}]),
            Payload,
        ),
    ];
    for (d, want) in cases {
        assert_eq!(details(d.clone()).err(), Some(want), "{d}");
        // And the token carrying it is refused whole, as invalid_token.
        assert_eq!(
            invalid(claims(json!({ "authorization_details": d }))),
            InvalidToken::Details(want)
        );
    }
    // Limits.
    let one = json!({"type": "mercure", "actions": ["publish"], "topics": [{"match": "/a"}]});
    assert_eq!(
        details(json!(vec![one.clone(); MAX_DETAILS + 1])).err(),
        Some(TooMany)
    );
    assert_eq!(
        details(json!(vec![one; MAX_DETAILS])).map(|d| d.len()),
        Ok(MAX_DETAILS)
    );
    let topics = vec![json!({"match": "/a"}); MAX_TOPICS + 1];
    assert_eq!(details(ok(json!(topics))).err(), Some(TooMany));
}

#[test]
fn grants_and_matchers() {
    // Other RFC 9396 types are someone else's: ignored, whatever shape.
    let g = grants(json!({"authorization_details": [
        {"type": "tenant", "topics": "acme", "actions": {"read": true}},
        {"type": "https://mercure.rocks/authorization-detail", "actions": ["subscribe", "future"],
         "topics": [{"match": "https://example.com/foo"},
                    {"match": "/.well-known/mercure/subscriptions/exact/:topic/:sub", "match_type": "urlpattern"}]},
        {"type": "mercure", "actions": ["publish"], "topics": [{"match": "*", "match_type": "urlpattern"}]},
    ]}));
    assert_eq!(g.details.len(), 2);
    assert!(g.can_subscribe(&t("https://example.com/foo")));
    assert!(!g.can_subscribe(&t("https://example.com/foo/")));
    assert!(g.can_subscribe(&t("/.well-known/mercure/subscriptions/exact/a/b")));
    assert!(g.can_subscribe(&t(
        "https://hub.example.com/.well-known/mercure/subscriptions/exact/a/b"
    )));
    assert!(!g.can_subscribe(&t(
        "https://example.com/.well-known/mercure/subscriptions/exact/a/b"
    )));
    assert!(
        g.can_publish(&t("anything at all")),
        "* matches every topic"
    );
    assert_eq!(g.details[1].topics[0], TopicMatcher::Any);
    assert!(!g.can_subscribe(&t("https://example.com/bar")));
    assert_eq!(
        g.check_publish(&[t("a"), t("https://example.com/b")]),
        Ok(())
    );
    // A token without Mercure details grants nothing.
    let none = grants(json!({"mercure": {"publish": ["*"]}}));
    assert!(none.details.is_empty());
    assert!(!none.can_publish(&t("a")));
    assert_eq!(
        none.check_publish(&[t("a")]),
        Err(AuthError::InsufficientScope)
    );
    // Every topic of an update needs a grant.
    let g = grants(json!({"authorization_details": [
        {"type": "mercure", "actions": ["publish"], "topics": [{"match": "https://example.com/books/:id", "match_type": "urlpattern"}]},
    ]}));
    assert_eq!(g.check_publish(&[t("https://example.com/books/1")]), Ok(()));
    assert_eq!(
        g.check_publish(&[
            t("https://example.com/books/1"),
            t("https://example.com/authors/1")
        ]),
        Err(AuthError::InsufficientScope)
    );
}

#[test]
fn payloads_first_match_wins() {
    let g = grants(json!({"authorization_details": [
        {"type": "mercure", "actions": ["subscribe"], "topics": [{"match": "https://example.com/foo"}], "payload": {"custom1": 1}},
        {"type": "mercure", "actions": ["subscribe"], "topics": [{"match": "https://example.com/bar/:id", "match_type": "urlpattern"}], "payload": {"custom2": 2}},
        {"type": "mercure", "actions": ["publish"], "topics": [{"match": "*"}], "payload": {"not": "subscribe"}},
        {"type": "mercure", "actions": ["subscribe"], "topics": [{"match": "*"}], "payload": {"custom3": 3}},
    ]}));
    let p = |s: &str| g.payload_for(&t(s)).cloned();
    assert_eq!(p("https://example.com/foo"), Some(json!({"custom1": 1})));
    assert_eq!(
        p("https://example.com/bar/:id"),
        Some(json!({"custom2": 2}))
    );
    assert_eq!(p("https://example.com/baz"), Some(json!({"custom3": 3})));
}

#[test]
fn both_dialects_on_one_key() {
    let legacy = mint_hs256(
        &json!({"exp": NOW + 60, "mercure": {"subscribe": ["https://example.com/books/{id}"]}}),
        &key(),
    );
    let Ok(Verified::Legacy(g)) = run(&legacy, &policy()) else {
        panic!("{:?}", run(&legacy, &policy()));
    };
    assert!(g.can_subscribe("https://example.com/books/1"));
    assert!(!g.can_publish("https://example.com/books/1"));
    // Legacy tokens keep their own rules: no aud or exp needed.
    let bare = mint_hs256(&json!({"mercure": {"publish": ["*"]}}), &key());
    assert!(matches!(run(&bare, &policy()), Ok(Verified::Legacy(_))));
    let expired = mint_hs256(&json!({"exp": NOW - 1, "mercure": {}}), &key());
    assert_eq!(
        run(&expired, &policy()),
        Err(AuthError::InvalidToken(InvalidToken::Jwt(
            JwtError::Expired
        )))
    );
    // --mercure-legacy off.
    let mut strict = policy();
    strict.legacy = false;
    assert_eq!(
        run(&legacy, &strict),
        Err(AuthError::InvalidToken(InvalidToken::Type))
    );
    let new = at(claims(json!({"authorization_details": [
        {"type": "mercure", "actions": ["subscribe"], "topics": [{"match": "https://example.com/books/:id", "match_type": "urlpattern"}]},
    ]})));
    assert!(matches!(run(&new, &strict), Ok(Verified::Draft08(_))));
    // An at+jwt token's `mercure` claim is not read.
    let mixed = at(claims(json!({"mercure": {"publish": ["*"]}})));
    let Ok(Verified::Draft08(g)) = run(&mixed, &policy()) else {
        panic!()
    };
    assert!(!g.can_publish(&t("https://example.com/x")));
    // Garbage is invalid_token, not a panic.
    for junk in ["", "a.b.c", "..", "x", "\u{0}.\u{0}.\u{0}"] {
        assert!(
            matches!(run(junk, &policy()), Err(AuthError::InvalidToken(_))),
            "{junk:?}"
        );
    }
}

#[test]
fn errors_map_to_rfc6750() {
    let md = "https://hub.example.com/.well-known/oauth-protected-resource/.well-known/mercure";
    let cases = [
        (AuthError::Missing, 401, None),
        (
            AuthError::InvalidToken(InvalidToken::Issuer),
            401,
            Some("invalid_token"),
        ),
        (
            AuthError::InsufficientScope,
            403,
            Some("insufficient_scope"),
        ),
        (AuthError::InvalidRequest, 400, Some("invalid_request")),
    ];
    for (e, status, code) in cases {
        assert_eq!((e.status(), e.code()), (status, code), "{e:?}");
        let c = e.challenge(md);
        assert!(
            c.starts_with(&format!("Bearer resource_metadata=\"{md}\"")),
            "{c}"
        );
        match code {
            Some(code) => assert!(c.ends_with(&format!(", error=\"{code}\"")), "{c}"),
            None => assert!(!c.contains("error="), "{c}"),
        }
    }
    // The metadata URL is configuration, but quoting stays sound anyway.
    let c = AuthError::Missing.challenge("https://h/\"x\\\r\n");
    assert_eq!(c, "Bearer resource_metadata=\"https://h/\\\"x\\\\\"");
    // Every invalid-token reason reads the same on the wire.
    assert_eq!(
        AuthError::InvalidToken(InvalidToken::Audience).message(),
        AuthError::InvalidToken(InvalidToken::Jwt(JwtError::BadSignature)).message()
    );
}

#[test]
fn query_parameter_names() {
    let q = MatchType::from_query_param;
    assert_eq!(q("match"), Ok(Some(MatchType::Exact)));
    assert_eq!(q("match_exact"), Ok(Some(MatchType::Exact)));
    assert_eq!(q("match_urlpattern"), Ok(Some(MatchType::UrlPattern)));
    for reserved in [
        "matchURLPattern",
        "MATCH",
        "match_URLPattern",
        "matches",
        "match_regex",
        "Match_exact",
    ] {
        assert_eq!(q(reserved), Err(()), "{reserved}");
    }
    for other in ["topic", "last_event_id", "matc", "authorization", ""] {
        assert_eq!(q(other), Ok(None), "{other}");
    }
    assert_eq!(MatchType::parse("urlpattern"), Some(MatchType::UrlPattern));
    assert_eq!(MatchType::parse("Exact"), None);
}

#[test]
fn protocol_strings() {
    assert!(valid_protocol_string(
        "https://example.com/\u{645}\u{631}\u{62d}\u{628}\u{627}"
    ));
    assert!(valid_protocol_string("urn:uuid:x é"));
    for bad in [
        "a\u{0}b",
        "a\nb",
        "a\u{7f}b",
        "a\u{85}b",
        "a\u{202e}b",
        "a\u{200b}b",
        "\u{feff}",
        "a\u{e0041}",
    ] {
        assert!(!valid_protocol_string(bad), "{bad:?}");
    }
    let m = |s: &str, ty| TopicMatcher::parse(s, ty, Some(&hub()));
    assert_eq!(m("*", MatchType::UrlPattern), Ok(TopicMatcher::Any));
    assert_eq!(
        m("*", MatchType::Exact).map(|m| m.as_str().to_string()),
        Ok("*".into())
    );
    assert_eq!(
        m("/books/:id", MatchType::Exact).map(|m| m.match_type()),
        Ok(MatchType::Exact)
    );
    let p = m("/books/:id", MatchType::UrlPattern).unwrap();
    assert_eq!(
        (p.as_str(), p.match_type()),
        ("/books/:id", MatchType::UrlPattern)
    );
    assert!(p.matches(&t("https://hub.example.com/books/1")));
    assert!(!p.matches(&t("https://example.com/books/1")));
    let e = m("/books/:id", MatchType::Exact).unwrap();
    assert!(e.matches(&t("/books/:id")) && !e.matches(&t("/books/1")));
}

#[test]
fn metadata_document() {
    let hub = hub();
    assert_eq!(
        metadata_url(&hub),
        "https://hub.example.com/.well-known/oauth-protected-resource/.well-known/mercure"
    );
    let local = Url::parse("http://127.0.0.1:8080/.well-known/mercure", None).unwrap();
    assert_eq!(
        metadata_url(&local),
        "http://127.0.0.1:8080/.well-known/oauth-protected-resource/.well-known/mercure"
    );
    let plain = MetadataOptions {
        authorization_servers: vec![],
        cookie: false,
        query: false,
        subscriptions: false,
    };
    assert_eq!(
        protected_resource_metadata(HUB, &plain),
        json!({
            "resource": HUB,
            "authorization_details_types_supported": ["https://mercure.rocks/authorization-detail", "mercure"],
            "bearer_methods_supported": ["header"],
            "resource_signing_alg_values_supported": ["HS256"],
            "mercure_matcher_types_supported": ["exact", "urlpattern"],
        })
    );
    let all = MetadataOptions {
        authorization_servers: vec!["https://auth.example.com".into()],
        cookie: true,
        query: true,
        subscriptions: true,
    };
    assert_eq!(
        protected_resource_metadata(HUB, &all),
        json!({
            "resource": HUB,
            "authorization_servers": ["https://auth.example.com"],
            "authorization_details_types_supported": ["https://mercure.rocks/authorization-detail", "mercure"],
            "bearer_methods_supported": ["header", "query"],
            "resource_signing_alg_values_supported": ["HS256"],
            "mercure_cookie": true,
            "mercure_matcher_types_supported": ["exact", "urlpattern"],
            "mercure_subscriptions": true,
        })
    );
}
