#!/usr/bin/env python3
"""Python `httpx-sse` against a real ssed.

httpx-sse parses the stream but does not reconnect, so `Client` does what
its README suggests: reconnect after `retry` ms with a `Last-Event-ID`
header carrying the last id seen. Prints TAP (`ok N - name`, then
`# pass N` and `# fail M`); exits 1 on any failure.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
import traceback
from urllib.parse import urlencode

import httpx
from httpx_sse import connect_sse

SSED_BIN = os.path.abspath(os.environ.get("SSED_BIN", "target/debug/ssed"))
WAIT = 10.0

# [data, publish options, expected type]: the same samples as lib/ssed.mjs.
SAMPLES = [
    ("a\nb\nc", {}, "message"),
    ("héllo ✓ 日本", {"event": "greeting"}, "greeting"),
    ("", {}, "message"),
    ("", {"json": True, "event": "empty"}, "empty"),
    ('{"k":[1,2]}', {"json": True}, "message"),
    ("crlf\r\nsplit\rlines", {"event": "x.y-z_1"}, "x.y-z_1"),
]


def expected_data(d):
    return d.replace("\r\n", "\n").replace("\r", "\n")


def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = check()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Ssed:
    """One ssed process on 127.0.0.1; port 0 picks a free port."""

    def __init__(self, port=0, heartbeat="0"):
        self.heartbeat = heartbeat
        deadline = time.monotonic() + 8
        while True:
            try:
                self._start(port)
                return
            except RuntimeError:
                if port == 0 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _start(self, port):
        args = [SSED_BIN, "--listen", f"127.0.0.1:{port}", "--heartbeat", self.heartbeat, "--retry", "300"]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = [None]
        t = threading.Thread(target=lambda: line.__setitem__(0, self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(10)
        m = re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)\n", line[0] or "")
        if not m:
            self.proc.kill()
            self.proc.wait(5)
            raise RuntimeError(f"ssed did not print its listening line: {line[0]!r}")
        self.port = int(m.group(1))
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(6)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def restart(self):
        self.stop()
        return Ssed(self.port, self.heartbeat)

    def heartbeats_past(self, n_from, n):
        """Waits until the server has sent `n` more heartbeats than `n_from`."""
        def hb():
            v = httpx.get(f"{self.base}/stats", timeout=5).json()["heartbeats"]
            return v if v >= n_from + n else None
        return wait_for(hb, WAIT, f"{n} heartbeats")


def publish(base, stream, data, event=None, json_body=False):
    q = [("stream", stream)]
    if json_body:
        body = {"data": data}
        if event:
            body["event"] = event
        r = httpx.post(f"{base}/events?{urlencode(q)}", json=body, timeout=5)
    else:
        if event:
            q.append(("event", event))
        r = httpx.post(f"{base}/events?{urlencode(q)}", content=data.encode(),
                       headers={"Content-Type": "text/plain; charset=utf-8"}, timeout=5)
    assert r.status_code == 200, f"publish answered {r.status_code}: {r.text}"
    reply = r.json()
    assert isinstance(reply["id"], str) and reply["id"].isdigit(), f"bad id in {reply}"
    return reply


class Client:
    """A reconnecting httpx-sse subscriber running in a thread."""

    def __init__(self, base, streams, last_event_id=None):
        self.base, self.streams = base, streams
        self.events, self.opens, self.retry = [], 0, 1000
        self.last_id = last_event_id or ""
        self.first_cursor = last_event_id
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.response = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _url(self, first):
        q = [("stream", s) for s in self.streams]
        if first and self.first_cursor:
            q.append(("last_event_id", self.first_cursor))
        return f"{self.base}/events?{urlencode(q)}"

    def _run(self):
        first = True
        while not self.closed.is_set():
            headers = {}
            if not first and self.last_id:
                headers["Last-Event-ID"] = self.last_id
            url = self._url(first)
            first = False
            try:
                with httpx.Client(timeout=httpx.Timeout(5.0, read=None)) as http:
                    with connect_sse(http, "GET", url, headers=headers) as es:
                        self.response = es.response
                        if es.response.status_code != 200:
                            raise RuntimeError(f"subscribe answered {es.response.status_code}")
                        with self.lock:
                            self.opens += 1
                        # Every event it yields is recorded: its decoder
                        # dispatches any block ending in a blank line once it
                        # has an id, so a `retry:`-only block or a `:\n\n`
                        # heartbeat would show up here as an empty message.
                        for sse in es.iter_sse():
                            if sse.retry is not None:
                                self.retry = sse.retry
                            with self.lock:
                                self.last_id = sse.id
                                self.events.append((sse.event, sse.id, sse.data))
            except Exception:  # noqa: BLE001 - closed or refused: reconnect
                pass
            self.closed.wait(self.retry / 1000)

    def snapshot(self):
        with self.lock:
            return list(self.events), self.opens

    def wait_events(self, n, what):
        return wait_for(lambda: (lambda s: s if len(s[0]) >= n else None)(self.snapshot()), WAIT, what)[0]

    def wait_open(self, n=1):
        wait_for(lambda: self.snapshot()[1] >= n, WAIT, "the connection to open")

    def close(self):
        self.closed.set()
        r = self.response
        if r is not None:
            try:
                r.close()
            except Exception:  # noqa: BLE001
                pass
        self.thread.join(3)


_uniq = [0]


def name(p):
    _uniq[0] += 1
    return f"{p}-{os.getpid()}-{_uniq[0]}"


def test_exact_data_types_ids(srv):
    s = name("exact")
    c = Client(srv.base, [s])
    try:
        c.wait_open()
        want, subs = [], []
        for data, opts, typ in SAMPLES:
            r = publish(srv.base, s, data, opts.get("event"), opts.get("json", False))
            want.append((typ, r["id"], expected_data(data)))
            subs.append(r["subscribers"])
        got = c.wait_events(len(want), f"{len(want)} events")
        assert got == want, f"got {got!r}\nwant {want!r}"
        assert subs == [1] * len(want), f"subscriber counts {subs}"
    finally:
        c.close()


def test_two_streams(srv):
    a, b = name("two-a"), name("two-b")
    c = Client(srv.base, [a, b])
    try:
        c.wait_open()
        want = []
        for st, d in [(a, "first on a"), (b, "first on b"), (a, "second on a")]:
            want.append(("message", publish(srv.base, st, d)["id"], d))
        got = c.wait_events(3, "3 events from two streams")
        assert got == want, f"got {got!r}\nwant {want!r}"
    finally:
        c.close()


def test_query_resume(srv):
    s = name("query")
    sent = [("message", publish(srv.base, s, d)["id"], d) for d in ["one", "two", "three"]]
    c = Client(srv.base, [s], last_event_id=sent[0][1])
    try:
        c.wait_events(2, "the 2 events after the cursor")
        sent.append(("message", publish(srv.base, s, "four")["id"], "four"))
        got = c.wait_events(3, "the live event")
        assert got == sent[1:], f"got {got!r}\nwant {sent[1:]!r}"
    finally:
        c.close()


def test_delete_resume(srv):
    s = name("delete")
    c = Client(srv.base, [s])
    try:
        c.wait_open()
        want = []

        def pub(d, event=None):
            r = publish(srv.base, s, d, event)
            want.append((event or "message", r["id"], d))
            return r

        pub("before 1")
        pub("before 2", "greeting")
        c.wait_events(2, "the 2 events before DELETE")
        r = httpx.delete(f"{srv.base}/streams/{s}", timeout=5)
        assert 200 <= r.status_code < 300, f"DELETE answered {r.status_code}: {r.text}"
        away = pub("while away 1")
        pub("while away 2\nsecond line", "greeting")
        pub("while away 3")
        assert away["subscribers"] == 0, f"DELETE left the subscriber connected: {away}"
        c.wait_events(5, "the 3 events published while disconnected")
        assert c.snapshot()[1] >= 2, "reconnected"
        pub("live again")
        got = c.wait_events(6, "a live event after the reconnect")
        assert got == want, f"got {got!r}\nwant {want!r}"
    finally:
        c.close()


def test_restart_gap(srv_holder):
    srv = srv_holder[0]
    s = name("restart")
    c = Client(srv.base, [s])
    try:
        c.wait_open()
        r1 = publish(srv.base, s, "before restart")
        c.wait_events(1, "the event before the restart")
        srv = srv_holder[0] = srv.restart()
        events = wait_for(lambda: (lambda e: e if any(x[0] == "gap" for x in e) else None)(c.snapshot()[0]),
                          15, "a gap event from the restarted server")
        gaps = [e for e in events if e[0] == "gap"]
        assert len(gaps) == 1, f"one gap: {events}"
        g = json.loads(gaps[0][2])
        assert g["last_event_id"] == r1["id"], f"gap cursor {g} vs {r1}"
        assert g["streams"] == [s], f"gap streams {g}"
        r2 = publish(srv.base, s, "after restart")
        assert int(r2["id"]) > int(r1["id"]), "ids grow across restarts"
        got = c.wait_events(3, "the event after the restart")
        assert [e[0] for e in got] == ["message", "gap", "message"], got
        assert [e for e in got if e[0] != "gap"] == [
            ("message", r1["id"], "before restart"), ("message", r2["id"], "after restart")], got
    finally:
        c.close()


def test_default_read_timeout_ends_an_idle_stream(_srv):
    """The quirk the README names: httpx's default timeout (5 s, reads
    included) ends a stream that is quiet for longer, and ssed's default
    heartbeat is 15 s. The clients above pass `read=None`."""
    srv = Ssed(heartbeat="15")
    # Should httpx stop timing out, the stopped server ends the stream.
    guard = threading.Timer(20, srv.stop)
    guard.start()
    try:
        url = f"{srv.base}/events?{urlencode([('stream', name('idle'))])}"
        t0 = time.monotonic()
        try:
            with httpx.Client() as http:
                with connect_sse(http, "GET", url) as es:
                    for _ in es.iter_sse():
                        pass
            raise AssertionError("the stream ended without a timeout")
        except httpx.ReadTimeout:
            # Before the first heartbeat (15 s), and not before 5 s.
            dt = time.monotonic() - t0
            assert 4.5 < dt < 15, f"read timeout after {dt:.1f} s"
    finally:
        guard.cancel()
        srv.stop()


def test_nothing_unpublished(_srv):
    """No event nobody published: on connect (the `retry:` line), on
    heartbeats before and after an event with an id, and on a resume.
    httpx-sse dispatches any block ending in a blank line once it has seen
    an id; an event published after the awaited heartbeats proves the
    client read past them."""
    srv = Ssed(heartbeat="0.2")
    s = name("nothing")
    c = r = None
    try:
        first = publish(srv.base, s, "before")["id"]
        c = Client(srv.base, [s])
        c.wait_open()
        hb = srv.heartbeats_past(0, 3)
        want = [("message", publish(srv.base, s, "after connect")["id"], "after connect")]
        got = c.wait_events(1, "the first event")
        assert got == want, f"on connect or heartbeats: got {got!r}\nwant {want!r}"
        hb = srv.heartbeats_past(hb, 3)
        want.append(("message", publish(srv.base, s, "after heartbeats")["id"], "after heartbeats"))
        got = c.wait_events(2, "the second event")
        assert got == want, f"on heartbeats after an event: got {got!r}\nwant {want!r}"
        r = Client(srv.base, [s], last_event_id=first)
        r.wait_events(2, "the replay")
        srv.heartbeats_past(hb, 3)
        want.append(("message", publish(srv.base, s, "live")["id"], "live"))
        got = r.wait_events(3, "the live event after the replay")
        assert got == want, f"on resume: got {got!r}\nwant {want!r}"
    finally:
        for x in (c, r):
            if x is not None:
                x.close()
        srv.stop()


def main():
    tests = [test_exact_data_types_ids, test_two_streams, test_query_resume, test_delete_resume,
             test_nothing_unpublished, test_default_read_timeout_ends_an_idle_stream]
    passed = failed = 0
    n = 0
    for t in tests + [test_restart_gap]:
        n += 1
        label = f"httpx-sse: {t.__name__[5:].replace('_', ' ')}"
        holder = [Ssed()]
        try:
            t(holder if t is test_restart_gap else holder[0])
            print(f"ok {n} - {label}", flush=True)
            passed += 1
        except Exception:  # noqa: BLE001
            print(f"not ok {n} - {label}", flush=True)
            for line in traceback.format_exc().splitlines():
                print(f"  # {line}", flush=True)
            failed += 1
        finally:
            holder[0].stop()
    print(f"1..{n}\n# pass {passed}\n# fail {failed}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
