#!/usr/bin/env bash
# Starts the benchmark nginx + nchan on a loopback port.
# Usage: bench/nchan/start.sh [PORT]   (default 18091)
# Prints "listening on http://127.0.0.1:PORT" and the worker's PID line
# "worker pid PID". The run directory (pid file, logs, generated config) is
# /tmp/ssed-nchan-PORT; stop.sh PORT stops exactly this instance by PID.
set -euo pipefail

PORT="${1:-18091}"
HERE="$(cd "$(dirname "$0")" && pwd)"
RUNDIR="/tmp/ssed-nchan-$PORT"

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    echo "nginx not installed: run bench/nchan/setup.sh" >&2
    exit 1
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

if [ -f "$RUNDIR/nginx.pid" ] && kill -0 "$(cat "$RUNDIR/nginx.pid")" 2>/dev/null; then
    echo "already running (pid $(cat "$RUNDIR/nginx.pid")); run stop.sh $PORT first" >&2
    exit 1
fi

mkdir -p "$RUNDIR"
# The worker runs as an unprivileged user when started by root: it must be
# able to write its temp directories.
chmod 0777 "$RUNDIR"
sed -e "s#@PORT@#$PORT#g" -e "s#@RUNDIR@#$RUNDIR#g" "$HERE/nginx.conf" > "$RUNDIR/nginx.conf"

# The master must be allowed 20,000 files too (worker_rlimit_nofile covers
# the worker); this is the machine's hard limit.
ulimit -n 20000 2>/dev/null || true
"$NGINX" -p "$RUNDIR" -c "$RUNDIR/nginx.conf" -e "$RUNDIR/error.log"

# Wait (bounded) until the port answers and the worker exists: the master
# opens the listening socket before it forks the worker, so an answering
# port alone does not mean there is a worker PID to measure yet.
for _ in $(seq 1 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        MASTER="$(cat "$RUNDIR/nginx.pid" 2>/dev/null || true)"
        WORKER="$(pgrep -P "${MASTER:-0}" | head -n1 || true)"
        if [ -n "$WORKER" ]; then
            echo "listening on http://127.0.0.1:$PORT"
            echo "worker pid $WORKER"
            exit 0
        fi
    fi
    sleep 0.1
done
echo "nginx did not come up on port $PORT; see $RUNDIR/error.log" >&2
exit 1
