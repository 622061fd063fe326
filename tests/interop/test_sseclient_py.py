#!/usr/bin/env python3
"""`sseclient-py` and `requests`' own `iter_lines` against a real ssed.

Both are used exactly as their READMEs show:

    import requests, sseclient
    client = sseclient.SSEClient(requests.get(url, stream=True))
    for event in client.events(): ...

    r = requests.get(url, stream=True)
    for line in r.iter_lines(): ...

They read the body in fixed-size pieces (128 bytes, 512 bytes), so over a
body with neither chunking nor a length a small event waits until more bytes
follow it, and the last event of a burst never shows. ssed's HTTP/1.1 streams
are chunked, so each event is readable as soon as it is sent. Every test
asserts that each event arrives within a second of its publish, the last one
of a burst included. Prints TAP; exits 1 on any failure.
"""

import os
import sys
import threading
import time
import traceback
from urllib.parse import urlencode

import requests
import sseclient

from test_httpx_sse import Ssed, name, wait_for

# How late an event may arrive after its publish returned.
LATE = 1.0


def publish(base, stream, data, event=None):
    q = [("stream", stream)]
    if event:
        q.append(("event", event))
    r = requests.post(f"{base}/events?{urlencode(q)}", data=data.encode(),
                      headers={"Content-Type": "text/plain; charset=utf-8"}, timeout=5)
    assert r.status_code == 200, f"publish answered {r.status_code}: {r.text}"
    return r.json()["id"], time.monotonic()


class Reader:
    """Runs `read(url, on_event)` in a thread, stamping each arrival."""

    def __init__(self, url, read):
        self.got = []
        self.lock = threading.Lock()
        self.response = None
        self.error = None

        def run():
            try:
                read(self, url)
            except Exception as e:  # noqa: BLE001 - closed by the test, or a failure
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def on_event(self, event, id_, data):
        with self.lock:
            self.got.append((event, id_, data, time.monotonic()))

    def snapshot(self):
        with self.lock:
            return list(self.got)

    def close(self):
        # Closing a response another thread is blocked reading deadlocks in
        # http.client; the server's stop (after each test) ends the stream,
        # and the daemon thread with it.
        pass


def read_sseclient(reader, url):
    # As the sseclient-py README shows.
    response = requests.get(url, stream=True)
    reader.response = response
    assert response.status_code == 200, response.status_code
    client = sseclient.SSEClient(response)
    for event in client.events():
        reader.on_event(event.event, event.id, event.data)


def read_iter_lines(reader, url):
    # requests' own line iterator, as its docs show; SSE blocks end at a
    # blank line.
    response = requests.get(url, stream=True)
    reader.response = response
    assert response.status_code == 200, response.status_code
    ev = {"event": "message", "id": None, "data": []}
    for line in response.iter_lines():
        line = line.decode("utf-8")
        if line == "":
            if ev["data"]:
                reader.on_event(ev["event"], ev["id"], "\n".join(ev["data"]))
            ev = {"event": "message", "id": None, "data": []}
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                ev["data"].append(value)
            elif field in ("event", "id"):
                ev[field] = value


def subscribers(base, stream):
    r = requests.get(f"{base}/streams/{stream}", timeout=5)
    return r.json().get("subscribers", 0) if r.status_code == 200 else 0


def check_bursts(srv, read, label):
    """One small event alone, then bursts of small events, then one last
    event after a pause: each must arrive within LATE of its publish."""
    s = name(label)
    r = Reader(f"{srv.base}/events?{urlencode([('stream', s)])}", read)
    try:
        wait_for(lambda: subscribers(srv.base, s) == 1, 10, "the subscription")
        sent = []

        def expect(n):
            wait_for(lambda: len(r.snapshot()) >= n or r.error, LATE + 9,
                     f"{n} events (got {len(r.snapshot())}, error {r.error!r})")
            assert r.error is None, f"reader failed: {r.error!r}"

        sent.append(("message",) + publish(srv.base, s, "alone") + ("alone",))
        expect(1)
        for burst in range(3):
            for i in range(5):
                d = f"burst {burst} event {i}"
                sent.append(("tick",) + publish(srv.base, s, d, "tick") + (d,))
            expect(len(sent))
        time.sleep(0.3)
        sent.append(("message",) + publish(srv.base, s, "last") + ("last",))
        expect(len(sent))
        got = r.snapshot()
        assert [(g[0], g[1], g[2]) for g in got] == [(e[0], e[1], e[3]) for e in sent], \
            f"got {got!r}\nsent {sent!r}"
        for (event, id_, at, data), g in zip(sent, got):
            late = g[3] - at
            assert late < LATE, f"event {id_} ({data!r}) arrived {late:.3f} s after its publish"
    finally:
        r.close()


def test_sseclient_py_readme_usage(srv):
    check_bursts(srv, read_sseclient, "sseclient")


def test_requests_iter_lines(srv):
    check_bursts(srv, read_iter_lines, "iterlines")


def test_sseclient_py_nothing_unpublished(_srv):
    """No event nobody published: on connect (the `retry:` line), on
    heartbeats before and after an event, and on a resume from
    `?last_event_id=`. An event published after the awaited heartbeats
    proves the client read past them."""
    srv = Ssed(heartbeat="0.2")
    s = name("nothing")
    readers = []
    try:
        first, _ = publish(srv.base, s, "before")
        got = lambda r: [(g[0], g[1], g[2]) for g in r.snapshot()]  # noqa: E731

        def until(r, n, what):
            wait_for(lambda: len(r.snapshot()) >= n or r.error, 10, what)
            assert r.error is None, f"reader failed: {r.error!r}"

        c = Reader(f"{srv.base}/events?{urlencode([('stream', s)])}", read_sseclient)
        readers.append(c)
        wait_for(lambda: subscribers(srv.base, s) == 1, 10, "the subscription")
        hb = srv.heartbeats_past(0, 3)
        want = [("message", publish(srv.base, s, "after connect")[0], "after connect")]
        until(c, 1, "the first event")
        assert got(c) == want, f"on connect or heartbeats: {got(c)!r}"
        hb = srv.heartbeats_past(hb, 3)
        want.append(("message", publish(srv.base, s, "after heartbeats")[0], "after heartbeats"))
        until(c, 2, "the second event")
        assert got(c) == want, f"on heartbeats after an event: {got(c)!r}"
        q = urlencode([("stream", s), ("last_event_id", first)])
        r = Reader(f"{srv.base}/events?{q}", read_sseclient)
        readers.append(r)
        until(r, 2, "the replay")
        srv.heartbeats_past(hb, 3)
        want.append(("message", publish(srv.base, s, "live")[0], "live"))
        until(r, 3, "the live event after the replay")
        assert got(r) == want, f"on resume: {got(r)!r}"
    finally:
        for x in readers:
            x.close()
        srv.stop()


def main():
    tests = [test_sseclient_py_readme_usage, test_requests_iter_lines,
             test_sseclient_py_nothing_unpublished]
    passed = failed = 0
    for n, t in enumerate(tests, 1):
        label = f"python: {t.__name__[5:].replace('_', ' ')}"
        srv = Ssed()
        try:
            t(srv)
            print(f"ok {n} - {label}", flush=True)
            passed += 1
        except Exception:  # noqa: BLE001
            print(f"not ok {n} - {label}", flush=True)
            for line in traceback.format_exc().splitlines():
                print(f"  # {line}", flush=True)
            failed += 1
        finally:
            srv.stop()
    print(f"1..{len(tests)}\n# pass {passed}\n# fail {failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
