#!/usr/bin/env bash
# A/B of two ssed binaries in one run: the same ssed-bench measurements,
# alternating A and B each round so machine drift hits both alike.
#
# Usage: bench/ab.sh A_BINARY B_BINARY [ROUNDS]
# Environment: BENCH (ssed-bench binary; default target/release/ssed-bench),
#   PORT (default 18190), N_BIG (default 10000).
# Prints one line per measurement and a median table at the end.
set -euo pipefail
A="$1"; B="$2"; ROUNDS="${3:-3}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH="${BENCH:-$ROOT/target/release/ssed-bench}"
PORT="${PORT:-18190}"
N_BIG="${N_BIG:-10000}"
OUT="$(mktemp -d)"
PID=""
stop() {
    if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    PID=""
}
trap stop EXIT
start() {
    "$1" --listen "127.0.0.1:$PORT" --heartbeat 0 >"$OUT/srv.out" 2>"$OUT/srv.err" &
    PID=$!
    for _ in $(seq 1 100); do
        grep -q "listening on" "$OUT/srv.out" 2>/dev/null && { sleep 1; return 0; }
        sleep 0.1
    done
    echo "server did not start" >&2; return 1
}
run() { # label binary name args...
    local label="$1" bin="$2" name="$3"; shift 3
    start "$bin"
    timeout --kill-after=10 240 "$BENCH" "$@" --url "http://127.0.0.1:$PORT/events?stream=ab" \
        --pid "$PID" --json >"$OUT/$label-$name-$ROUND.json" || true
    stop
}
for ROUND in $(seq 1 "$ROUNDS"); do
    for label in A B; do
        bin="$A"; [ "$label" = B ] && bin="$B"
        run "$label" "$bin" density density --n "$N_BIG"
        run "$label" "$bin" fanout-big fanout --n "$N_BIG" --m 200 --size 64 --max-seconds 180 --publish "http://127.0.0.1:$PORT/events?stream=ab"
        run "$label" "$bin" fanout-1000 fanout --n 1000 --m 200 --size 64 --max-seconds 120 --publish "http://127.0.0.1:$PORT/events?stream=ab"
    done
done
python3 - "$OUT" <<'PY'
import json, os, statistics, sys
d = sys.argv[1]
rows = {}
for f in sorted(os.listdir(d)):
    if not f.endswith(".json"): continue
    label, rest = f.split("-", 1)
    name = rest.rsplit("-", 1)[0]
    try: j = json.load(open(os.path.join(d, f)))
    except Exception: continue
    for k in ("rss_per_conn", "pss_per_conn", "server_cpu_us_per_event", "delivered_per_sec", "events_per_sec"):
        if k in j and isinstance(j[k], (int, float)):
            rows.setdefault((name, k), {}).setdefault(label, []).append(j[k])
print(f"{'measurement':44} {'A (median, runs)':>28} {'B (median, runs)':>28}")
for (name, k), v in sorted(rows.items()):
    def fmt(xs): return f"{statistics.median(xs):.3g} {[round(x, 3) for x in xs]}" if xs else "-"
    print(f"{name + ' ' + k:44} {fmt(v.get('A', [])):>28} {fmt(v.get('B', [])):>28}")
PY
