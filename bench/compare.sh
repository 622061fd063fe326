#!/usr/bin/env bash
# Runs ssed-bench against ssed and against nginx + nchan, back to back on
# the same machine, and writes a markdown table to stdout and to
# $TARGET/bench-compare.md (raw JSON per run under $TARGET/bench-compare/).
#
# Usage: bench/compare.sh
# Environment: SSED_PORT (default 18090), NCHAN_PORT (default 18091),
#   CARGO_TARGET_DIR (default ./target), SERVERS (default "ssed nchan";
#   "ssed" alone skips the peer), REPEAT (default 3: rounds of the whole
#   suite; the table shows the median and the range of the rounds).
#
# Each server is restarted before every measurement so no run inherits
# another's heap. Each ssed-bench call is bounded with `timeout`, and the
# whole script stops starting new runs after MAX_TOTAL seconds (default
# 1200), so it ends within ~20 minutes even when something hangs.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
SSED_PORT="${SSED_PORT:-18090}"
NCHAN_PORT="${NCHAN_PORT:-18091}"
MAX_TOTAL="${MAX_TOTAL:-1200}"
REPEAT="${REPEAT:-3}"
OUT_MD="$TARGET/bench-compare.md"
RAW="$TARGET/bench-compare"
STREAM="bench"

mkdir -p "$RAW"
rm -f "$RAW"/*.json

echo "building release binaries..." >&2
cargo build --release --bins >&2
BENCH="$TARGET/release/ssed-bench"
SSED="$TARGET/release/ssed"

SERVERS="${SERVERS:-ssed nchan}"
case " $SERVERS " in
*" nchan "*)
    if ! [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
        bash bench/nchan/setup.sh >&2
    fi
    ;;
esac

SSED_PID=""
SERVER_PID=""

start_ssed() {
    local log="$RAW/ssed.out"
    "$SSED" --listen "127.0.0.1:$SSED_PORT" --heartbeat 0 >"$log" 2>"$RAW/ssed.err" &
    SSED_PID=$!
    for _ in $(seq 1 100); do
        if grep -q "listening on http://" "$log" 2>/dev/null; then
            SERVER_PID="$SSED_PID"
            return 0
        fi
        sleep 0.1
    done
    echo "ssed did not start; see $RAW/ssed.err" >&2
    return 1
}

stop_ssed() {
    if [ -n "$SSED_PID" ] && kill -0 "$SSED_PID" 2>/dev/null; then
        kill -TERM "$SSED_PID"
        # Bounded wait: ssed exits within its --shutdown-timeout (5 s).
        for _ in $(seq 1 100); do
            kill -0 "$SSED_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SSED_PID" 2>/dev/null || true
        wait "$SSED_PID" 2>/dev/null || true
    fi
    SSED_PID=""
}

start_nchan() {
    local out
    out="$(bash bench/nchan/start.sh "$NCHAN_PORT")"
    SERVER_PID="$(printf '%s\n' "$out" | sed -n 's/^worker pid //p')"
}

stop_nchan() {
    bash bench/nchan/stop.sh "$NCHAN_PORT" >/dev/null
}

cleanup() {
    stop_ssed
    case " $SERVERS " in *" nchan "*) stop_nchan || true ;; esac
}
trap cleanup EXIT

port_of() { if [ "$1" = ssed ]; then echo "$SSED_PORT"; else echo "$NCHAN_PORT"; fi; }

# run SERVER NAME TIMEOUT_SECS SUBCOMMAND ARGS...: fresh server, one
# measurement, JSON into $RAW/SERVER-NAME.ROUND.json.
run() {
    local server="$1" name="$2" limit="$3"
    local file="$RAW/$server-$name.$ROUND.json"
    shift 3
    if [ "$SECONDS" -ge "$MAX_TOTAL" ]; then
        echo "skipping $server $name: over the ${MAX_TOTAL}s budget" >&2
        return 0
    fi
    "start_$server"
    # A server's heap still moves for a moment after it starts listening
    # (ssed builds its hub on the loop thread); sampling "before" too early
    # would charge that to the connections.
    sleep 1
    local url="http://127.0.0.1:$(port_of "$server")/events?stream=$STREAM"
    echo "== round $ROUND: $server $name: ssed-bench $*" >&2
    # Without a PID ssed-bench finds the server from its port itself.
    local pid_arg=()
    case "$SERVER_PID" in '' | *[!0-9]*) ;; *) pid_arg=(--pid "$SERVER_PID") ;; esac
    if timeout --signal=TERM --kill-after=10 "$limit" \
        "$BENCH" "$@" --url "$url" "${pid_arg[@]}" --json >"$file"; then
        cat "$file" >&2
    else
        echo "   failed or timed out (exit $?)" >&2
        rm -f "$file"
    fi
    "stop_$server"
    # Let closed sockets and the CPU settle between runs.
    sleep 2
}

# Rounds interleave the whole suite rather than repeating one run back to
# back, so a burst of load from elsewhere on the box spreads over figures
# instead of skewing one.
for ROUND in $(seq 1 "$REPEAT"); do
    for server in $SERVERS; do
        for n in 1000 10000 19000; do
            run "$server" "density-$n" 180 density --n "$n"
        done
    done
    for server in $SERVERS; do
        port="$(port_of "$server")"
        pub="http://127.0.0.1:$port/events?stream=$STREAM"
        for n in 1000 10000; do
            # As fast as the server answers: throughput and CPU per event.
            run "$server" "fanout-$n" 240 fanout --n "$n" --m 200 --size 64 \
                --publish "$pub" --max-seconds 180
        done
        # Paced at 2 events/s, slow enough for both servers and for the
        # receivers: latency is then the time one event takes to reach all
        # 10,000 subscribers, not a queue.
        run "$server" fanout-10000-paced 120 fanout --n 10000 --m 20 --size 64 --rate 2 \
            --publish "$pub" --max-seconds 60
        run "$server" idle-10000 120 idle --n 10000 --seconds 10
        run "$server" churn-5000 120 churn --cycles 5000 --max-seconds 60
    done
done

# The table: one row per figure, one column per server, and the ratio.
python3 - "$RAW" "$SERVERS" >"$OUT_MD" <<'PY'
import json, os, sys

raw, servers = sys.argv[1], sys.argv[2].split()
import glob, statistics

def get(server, name, key):
    """The figure from every round that produced it."""
    out = []
    for path in sorted(glob.glob(os.path.join(raw, f"{server}-{name}.*.json"))):
        try:
            with open(path) as f:
                v = json.load(f).get(key)
        except (OSError, ValueError):
            continue
        if v is not None:
            out.append(v)
    return out

# (label, run, key, unit, decimals, better): better is "lower" or
# "higher" for rows that get a ratio, None for counts and tiny figures.
ROWS = []
for n in (1000, 10000, 19000):
    name = f"density-{n}"
    ROWS += [
        (f"density {n:,}: connections held", name, "connections", "", 0, None),
        (f"density {n:,}: server RSS per connection", name, "rss_per_conn", "B", 0, "lower"),
        (f"density {n:,}: server PSS per connection", name, "pss_per_conn", "B", 0, "lower"),
        (f"density {n:,}: connect rate", name, "connect_rate", "conns/s", 0, "higher"),
        (f"density {n:,}: SYNs dropped (listen queue full)", name, "listen_overflows", "", 0, None),
    ]
for n in (1000, 10000):
    name = f"fanout-{n}"
    label = f"fanout {n:,}×200×64 B"
    ROWS += [
        (f"{label}: delivered / expected", name, ("delivered", "expected"), "", 0, None),
        (f"{label}: delivered events/s", name, "delivered_per_s", "events/s", 0, "higher"),
        (f"{label}: server CPU per delivered event", name, "server_cpu_us_per_event", "µs", 2, "lower"),
        (f"{label}: latency p50 (backlogged)", name, "latency_p50_us", "µs", 0, "lower"),
        (f"{label}: latency p99 (backlogged)", name, "latency_p99_us", "µs", 0, "lower"),
    ]
name, label = "fanout-10000-paced", "fanout 10,000×20×64 B at 2/s"
ROWS += [
    (f"{label}: delivered / expected", name, ("delivered", "expected"), "", 0, None),
    (f"{label}: latency p50", name, "latency_p50_us", "µs", 0, "lower"),
    (f"{label}: latency p99", name, "latency_p99_us", "µs", 0, "lower"),
    (f"{label}: latency max", name, "latency_max_us", "µs", 0, "lower"),
    (f"{label}: server CPU per delivered event", name, "server_cpu_us_per_event", "µs", 2, "lower"),
    ("idle 10,000 for 10 s: server wakeups/s", "idle-10000", "wakeups_per_s", "/s", 1, None),
    ("idle 10,000 for 10 s: server CPU", "idle-10000", "server_cpu_ms", "ms", 2, None),
    ("churn 5,000: cycles/s", "churn-5000", "cycles_per_s", "cycles/s", 0, "higher"),
    ("churn 5,000: server RSS growth", "churn-5000", "rss_growth_kb", "kB", 0, None),
]

def num(v, digits):
    return f"{v:,.{digits}f}"

def cell(vals, digits):
    """Median, and the range when the rounds disagree."""
    if not vals:
        return "–", None
    med = statistics.median(vals)
    lo, hi = min(vals), max(vals)
    text = num(med, digits)
    if len(vals) > 1 and num(lo, digits) != num(hi, digits):
        text += f" ({num(lo, digits)}–{num(hi, digits)})"
    return text, med

names = {"ssed": "ssed", "nchan": "nginx+nchan"}
pair = servers == ["ssed", "nchan"]
head = ["figure"] + [names.get(s, s) for s in servers] + (["ssed better by"] if pair else []) + ["unit"]
print("| " + " | ".join(head) + " |")
print("|" + "|".join(["---"] + ["---:"] * (len(head) - 2) + ["---"]) + "|")
for label, name, key, unit, digits, better in ROWS:
    cells, meds = [], []
    for s in servers:
        if isinstance(key, tuple):
            # Counts: the worst round, against what was expected.
            got, want = get(s, name, key[0]), get(s, name, key[1])
            if got and want:
                cells.append(f"{num(min(got), 0)} / {num(max(want), 0)} ({len(got)} runs)")
            else:
                cells.append("–")
            meds.append(None)
        else:
            text, med = cell(get(s, name, key), digits)
            cells.append(text)
            meds.append(med)
    if pair:
        ssed, peer = meds
        ratio = ""
        if better and all(isinstance(v, (int, float)) and v > 0 for v in (ssed, peer)):
            r = peer / ssed if better == "lower" else ssed / peer
            ratio = f"{r:,.1f}×"
        cells.append(ratio)
    print("| " + " | ".join([label] + cells + [unit]) + " |")
PY

cat "$OUT_MD"
echo "(written to $OUT_MD; raw JSON in $RAW/)" >&2
