#!/usr/bin/env bash
# Stops the benchmark nginx started by start.sh, by the PID in its pid file.
# Usage: bench/nchan/stop.sh [PORT]   (default 18091)
set -euo pipefail

PORT="${1:-18091}"
RUNDIR="/tmp/ssed-nchan-$PORT"
PIDFILE="$RUNDIR/nginx.pid"

if [ ! -f "$PIDFILE" ]; then
    echo "not running (no $PIDFILE)"
    exit 0
fi
PID="$(cat "$PIDFILE")"
if ! kill -0 "$PID" 2>/dev/null; then
    echo "not running (stale pid $PID)"
    rm -f "$PIDFILE"
    exit 0
fi
# SIGTERM is nginx's fast shutdown; wait a bounded time for the master.
kill -TERM "$PID"
for _ in $(seq 1 100); do
    if ! kill -0 "$PID" 2>/dev/null; then
        echo "stopped (pid $PID)"
        exit 0
    fi
    sleep 0.1
done
kill -KILL "$PID" 2>/dev/null || true
echo "killed (pid $PID)"
