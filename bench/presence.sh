#!/usr/bin/env bash
# A/B in one run: bytes per idle anonymous hub subscriber
# (`GET /.well-known/mercure?match=bench`) with --mercure-subscriptions off
# and on, alternating each round so machine drift hits both alike.
#
# Usage: bench/presence.sh [ROUNDS]   (after cargo build --release --bins)
# Environment: N (default 10000), PORT (default 18600).
set -euo pipefail
ROUNDS="${1:-2}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SSED="$ROOT/target/release/ssed"
BENCH="$ROOT/target/release/ssed-bench"
N="${N:-10000}"
PORT="${PORT:-18600}"
OUT="$(mktemp -d)"
PID=""
stop() {
    if [ -n "$PID" ]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    PID=""
}
trap stop EXIT
for round in $(seq 1 "$ROUNDS"); do
    for mode in off on; do
        flags=(--listen "127.0.0.1:$PORT" --heartbeat 0)
        [ "$mode" = on ] && flags+=(--mercure-subscriptions)
        "$SSED" "${flags[@]}" >"$OUT/srv.out" 2>"$OUT/srv.err" &
        PID=$!
        for _ in $(seq 1 100); do
            grep -q "listening on" "$OUT/srv.out" 2>/dev/null && break
            sleep 0.1
        done
        sleep 1
        timeout 180 "$BENCH" density --url "http://127.0.0.1:$PORT/.well-known/mercure?match=bench" \
            --n "$N" --pid "$PID" --json >"$OUT/$mode-$round.json"
        stop
        python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], sys.argv[3], 'held', d['connections'], 'rss/conn', d['rss_per_conn'], 'anon/conn', d['anon_per_conn'])" \
            "$OUT/$mode-$round.json" "$mode" "$round"
    done
done
