use super::*;

fn hub() -> Url {
    Url::parse("https://hub.example.com/.well-known/mercure", None).unwrap()
}
fn pat(p: &str) -> UrlPattern {
    UrlPattern::compile(p, Some(&hub())).unwrap_or_else(|e| panic!("{p:?}: {e}"))
}
fn m(p: &str, topic: &str) -> bool {
    pat(p).matches(topic, Some(&hub()))
}

#[test]
fn smoke() {
    assert!(m("https://example.com/books/:id", "https://example.com/books/1"));
    assert!(!m("https://example.com/books/:id", "https://example.com/books/1/x"));
}
