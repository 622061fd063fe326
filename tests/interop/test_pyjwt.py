#!/usr/bin/env python3
"""Tokens minted by PyJWT (PyPI) against a real ssed started with --jwt-key:
what PyJWT signs is accepted (subscribing to /.well-known/mercure,
publishing a private update) and what it signs wrongly is refused with the
Mercure statuses. Prints TAP; exits 1 on any failure.
"""

import os
import re
import subprocess
import sys
import threading
import time
import traceback

import httpx
import jwt

SSED_BIN = os.path.abspath(os.environ.get("SSED_BIN", "target/debug/ssed"))
KEY = "pyjwt-interop-key-0123456789abcdef-0123"
SUB_KEY = "pyjwt-interop-subscriber-key-0123456789"
HUB = "/.well-known/mercure"


def start():
    args = [SSED_BIN, "--listen", "127.0.0.1:0", "--heartbeat", "0",
            "--jwt-key", KEY, "--subscriber-jwt-key", SUB_KEY]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    m = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)\n", proc.stdout.readline())
    assert m, "ssed did not start"
    return proc, m.group(1)


def tok(claims, key, alg="HS256"):
    return jwt.encode(claims, key, algorithm=alg)


def sub_status(base, token, topic="urn:x"):
    with httpx.stream("GET", f"{base}{HUB}", params={"topic": topic, "authorization": token},
                      timeout=5) as r:
        return r.status_code


def pub(base, token, form):
    return httpx.post(f"{base}{HUB}", data=form, headers={"Authorization": f"Bearer {token}"},
                      timeout=5)


def test_accepted(base):
    sub = tok({"mercure": {"subscribe": ["https://example.com/books/{id}"]},
               "exp": int(time.time()) + 60}, SUB_KEY)
    publisher = tok({"mercure": {"publish": ["https://example.com/books/{id}"]}}, KEY)
    got = []
    ready = threading.Event()

    def read():
        with httpx.stream("GET", f"{base}{HUB}",
                          params={"topic": "https://example.com/books/{id}"},
                          cookies={"mercureAuthorization": sub}, timeout=10) as r:
            assert r.status_code == 200, r.status_code
            ready.set()
            for line in r.iter_lines():
                if line.startswith("data: "):
                    got.append(line[6:])
                    return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    assert ready.wait(5), "subscriber did not connect"
    deadline = time.monotonic() + 5
    while httpx.get(f"{base}/stats", timeout=5).json()["connections"]["sse"] != 1:
        assert time.monotonic() < deadline, "subscription never showed in /stats"
        time.sleep(0.02)
    r = pub(base, publisher, {"topic": "https://example.com/books/1", "data": "private hello",
                              "private": "on", "id": "urn:uuid:pyjwt-1"})
    assert r.status_code == 200 and r.text == "urn:uuid:pyjwt-1", (r.status_code, r.text)
    t.join(5)
    assert got == ["private hello"], got


def test_refused(base):
    now = int(time.time())
    cases = [
        ("expired", sub_status(base, tok({"exp": now - 10}, SUB_KEY)), 401),
        ("not yet valid", sub_status(base, tok({"nbf": now + 600}, SUB_KEY)), 401),
        ("HS384", sub_status(base, tok({}, SUB_KEY, "HS384")), 401),
        ("alg none", sub_status(base, jwt.encode({}, None, algorithm="none")), 401),
        ("publisher key used to subscribe", sub_status(base, tok({}, KEY)), 401),
        ("subscriber key used to publish",
         pub(base, tok({"mercure": {"publish": ["*"]}}, SUB_KEY), {"topic": "a", "data": "1"}).status_code, 401),
        ("publish selectors miss the topic",
         pub(base, tok({"mercure": {"publish": ["b"]}}, KEY), {"topic": "a", "data": "1"}).status_code, 403),
        ("valid subscriber token", sub_status(base, tok({}, SUB_KEY)), 200),
    ]
    bad = [(w, got, want) for w, got, want in cases if got != want]
    assert not bad, bad


def at(claims, key):
    """A draft-08 access token, as an authorization server mints one."""
    return jwt.encode(claims, key, algorithm="HS256", headers={"typ": "at+jwt"})


def grants(actions, match, match_type="urlpattern"):
    return [{"type": "https://mercure.rocks/authorization-detail", "actions": actions,
             "topics": [{"match": match, "match_type": match_type}]}]


def test_draft08(base):
    # No --jwt-audience: the audience is the hub's URL as the client names it.
    aud = f"{base}{HUB}"
    exp = int(time.time()) + 60
    pattern = "https://example.com/books/:id"
    sub = at({"aud": aud, "exp": exp, "authorization_details": grants(["subscribe"], pattern)},
             SUB_KEY)
    publisher = at({"aud": [aud, "https://other.example"], "exp": exp,
                    "authorization_details": grants(["publish"], pattern)}, KEY)
    got = []
    ready = threading.Event()

    def read():
        with httpx.stream("GET", f"{base}{HUB}", params={"match_urlpattern": pattern},
                          headers={"Authorization": f"Bearer {sub}"}, timeout=10) as r:
            assert r.status_code == 200, r.status_code
            ready.set()
            for line in r.iter_lines():
                if line.startswith("id: "):
                    got.append(line[4:])
                elif line.startswith("data: "):
                    got.append(line[6:])
                    if len(got) == 3:
                        return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    assert ready.wait(5), "subscriber did not connect"
    deadline = time.monotonic() + 5
    while httpx.get(f"{base}/stats", timeout=5).json()["connections"]["sse"] != 1:
        assert time.monotonic() < deadline, "subscription never showed in /stats"
        time.sleep(0.02)
    r = pub(base, publisher, {"topic": "https://example.com/books/7", "data": "a\nb",
                              "private": "on", "id": "book-7"})
    assert (r.status_code, r.headers["content-type"], r.text) == \
        (200, "text/plain; charset=utf-8", "book-7"), (r.status_code, r.text)
    t.join(5)
    assert got == ["book-7", "a", "b"], got
    # Refusals name the error and the metadata.
    wrong_aud = at({"aud": "https://elsewhere.example", "exp": exp,
                    "authorization_details": grants(["publish"], "*", "exact")}, KEY)
    r = pub(base, wrong_aud, {"topic": "urn:x", "data": "1"})
    assert r.status_code == 401, r.status_code
    assert 'error="invalid_token"' in r.headers["www-authenticate"], r.headers
    assert "resource_metadata=" in r.headers["www-authenticate"], r.headers
    r = pub(base, publisher, {"topic": "https://example.com/authors/1", "data": "1"})
    assert r.status_code == 403, r.status_code
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"], r.headers
    meta = httpx.get(f"{base}/.well-known/oauth-protected-resource{HUB}", timeout=5).json()
    assert meta["resource"] == aud, meta


def main():
    proc, base = start()
    passed = failed = 0
    try:
        for i, t in enumerate([test_accepted, test_refused, test_draft08], 1):
            try:
                t(base)
                passed += 1
                print(f"ok {i} - {t.__name__}")
            except Exception:
                failed += 1
                print(f"not ok {i} - {t.__name__}")
                for l in traceback.format_exc().splitlines():
                    print(f"  # {l}")
    finally:
        proc.kill()
        proc.wait(5)
    print(f"1..{passed + failed}")
    print(f"# pass {passed}")
    print(f"# fail {failed}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
