#!/usr/bin/env bash
# Bytes per idle subscriber (issue 21, "Measure"): N idle subscribers of
# plain `/events`, of the Mercure hub anonymously, and of the hub with a
# draft-08 `at+jwt` bearer token (`authorization_details` granting
# `subscribe` on the topic), each against a fresh ssed started with the
# same flags, rounds interleaved so outside load spreads over all three
# (A/B/C in one run). Prints one line per run and a median table.
#
# Usage: bench/hub_idle.sh
# Environment: N (default 10000, at most 10000: one ssed-bench worker
#   process holds them, under its 20,000-file limit), ROUNDS (default 3),
#   PORT (default 18095), CARGO_TARGET_DIR (default ./target).
# Every ssed-bench call is bounded with `timeout`; the whole script takes
# about ROUNDS × 3 × 10 s.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
N="${N:-10000}"
ROUNDS="${ROUNDS:-3}"
PORT="${PORT:-18095}"
RAW="$TARGET/bench-hub-idle"
if [ "$N" -gt 10000 ]; then
    echo "N is at most 10000" >&2
    exit 2
fi
mkdir -p "$RAW"
rm -f "$RAW"/*.json

cargo build --release --bins >&2
BENCH="$TARGET/release/ssed-bench"
SSED="$TARGET/release/ssed"

KEY="bench-hub-idle-key-0123456789abcdef0123"
ISS="https://issuer.example"
AUD="https://hub.example"
TOPIC="https://example.com/books/1"
# A draft-08 access token, minted with Python's standard library.
TOKEN="$(KEY="$KEY" ISS="$ISS" AUD="$AUD" TOPIC="$TOPIC" python3 - <<'EOF'
import base64, hashlib, hmac, json, os, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
head = {"alg": "HS256", "typ": "at+jwt"}
claims = {
    "iss": os.environ["ISS"], "aud": [os.environ["AUD"]],
    "exp": int(time.time()) + 3600,
    "authorization_details": [{
        "type": "https://mercure.rocks/authorization-detail",
        "actions": ["subscribe"],
        "topics": [{"match": os.environ["TOPIC"], "match_type": "exact"}],
    }],
}
signing = b64(json.dumps(head).encode()) + b"." + b64(json.dumps(claims).encode())
sig = hmac.new(os.environ["KEY"].encode(), signing, hashlib.sha256).digest()
print((signing + b"." + b64(sig)).decode())
EOF
)"
ENC_TOPIC="$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$TOPIC")"

SSED_PID=""
start_ssed() {
    "$SSED" --listen "127.0.0.1:$PORT" --heartbeat 0 \
        --jwt-key "$KEY" --jwt-issuer "$ISS" --jwt-audience "$AUD" \
        >"$RAW/ssed.out" 2>"$RAW/ssed.err" &
    SSED_PID=$!
    for _ in $(seq 1 100); do
        grep -q "listening on http://" "$RAW/ssed.out" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "ssed did not start; see $RAW/ssed.err" >&2
    return 1
}
stop_ssed() {
    if [ -n "$SSED_PID" ] && kill -0 "$SSED_PID" 2>/dev/null; then
        kill -TERM "$SSED_PID"
        for _ in $(seq 1 100); do
            kill -0 "$SSED_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SSED_PID" 2>/dev/null || true
        wait "$SSED_PID" 2>/dev/null || true
    fi
    SSED_PID=""
}
trap stop_ssed EXIT

# run NAME PATH [ssed-bench args...]
run() {
    local name="$1" path="$2"
    shift 2
    local file="$RAW/$name.$ROUND.json"
    start_ssed
    sleep 1
    if timeout --signal=TERM --kill-after=10 120 "$BENCH" density \
        --url "http://127.0.0.1:$PORT$path" --n "$N" --pid "$SSED_PID" "$@" --json >"$file"; then
        python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], "round", sys.argv[3], "held", d["connections"], "rss/conn", d["rss_per_conn"], "pss/conn", d["pss_per_conn"])' \
            "$file" "$name" "$ROUND"
    else
        echo "$name round $ROUND: failed or timed out" >&2
        rm -f "$file"
    fi
    stop_ssed
    sleep 2
}

for ROUND in $(seq 1 "$ROUNDS"); do
    run events "/events?stream=bench"
    run hub-anonymous "/.well-known/mercure?match=$ENC_TOPIC"
    run hub-token "/.well-known/mercure?match=$ENC_TOPIC" --header "Authorization: Bearer $TOKEN"
done

python3 - "$RAW" <<'EOF'
import glob, json, statistics, sys
rows = {}
for f in sorted(glob.glob(sys.argv[1] + "/*.json")):
    name = f.rsplit("/", 1)[1].split(".")[0]
    d = json.load(open(f))
    rows.setdefault(name, []).append((d["rss_per_conn"], d["pss_per_conn"], d["connections"]))
print("| subscribers | held | RSS per connection (B) | PSS per connection (B) |")
print("|---|---|---|---|")
for name in ["events", "hub-anonymous", "hub-token"]:
    r = rows.get(name, [])
    if not r:
        continue
    fmt = lambda xs: f"{statistics.median(xs):.0f} ({min(xs):.0f}–{max(xs):.0f})"
    print(f"| {name} | {min(x[2] for x in r)} | {fmt([x[0] for x in r])} | {fmt([x[1] for x in r])} |")
EOF
