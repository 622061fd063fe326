#!/usr/bin/env bash
# Smoke test of one ssed binary, possibly for another CPU under an emulator:
#   tests/embedded/smoke.sh BINARY [RUNNER...]
#   tests/embedded/smoke.sh target/aarch64-unknown-linux-musl/minimal/ssed qemu-aarch64-static
# Starts it on a free loopback port, then over real HTTP (curl): /healthz,
# a live subscriber receiving three published events with their ids, a
# resume from the first id that gets exactly the other two in order, and
# /stats counting the publishes. Every wait is bounded; any mismatch fails.
set -euo pipefail

bin=${1:?usage: smoke.sh BINARY [RUNNER...]}
shift
runner=("$@")
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

fail() {
  echo "smoke FAILED: $*" >&2
  for f in "$work"/*; do echo "--- $f" >&2; cat "$f" >&2 || true; done
  exit 1
}

# until SECONDS CMD...: retries CMD every 50 ms until it succeeds.
until_ok() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

"${runner[@]}" "$bin" --listen 127.0.0.1:0 --heartbeat 0 >"$work/server.out" 2>"$work/server.err" &
pids+=($!)
until_ok 30 grep -q '^listening on http://' "$work/server.out" || fail "server did not start"
base=$(sed -n 's#^listening on \(http://[0-9.:]*\)$#\1#p' "$work/server.out" | head -1)
echo "server at $base (${runner[*]:-native} $bin)"

[ "$(curl -sS --max-time 10 "$base/healthz")" = ok ] || fail "/healthz is not ok"

# A live subscriber.
curl -sS -N --max-time 60 "$base/events?stream=smoke" >"$work/live.sse" 2>/dev/null &
pids+=($!)
subscribed() { curl -sS --max-time 5 "$base/streams/smoke" | grep -q '"subscribers":1[,}]'; }
until_ok 30 subscribed || fail "the subscriber did not arrive"

publish() {
  curl -sS --max-time 10 -X POST -H 'Content-Type: text/plain' --data-binary "$1" \
    "$base/events?stream=smoke" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p'
}
id1=$(publish one)
id2=$(publish two)
id3=$(publish three)
[ -n "$id1" ] && [ -n "$id2" ] && [ -n "$id3" ] || fail "a publish got no id ($id1, $id2, $id3)"
[ "$id1" != "$id2" ] && [ "$id2" != "$id3" ] || fail "ids repeat ($id1, $id2, $id3)"

# The events a subscriber got, as lines, must be exactly these `id=data`
# pairs (retry lines, comments and blank separators aside).
expect_events() {
  local file=$1 want="" got
  shift
  for pair in "$@"; do want+="id: ${pair%%=*}"$'\n'"data: ${pair#*=}"$'\n'; done
  got=$(grep -v -e '^retry:' -e '^:' -e '^$' "$file" || true)
  [ "$got" = "${want%$'\n'}" ]
}
until_ok 30 expect_events "$work/live.sse" "$id1=one" "$id2=two" "$id3=three" ||
  fail "the live subscriber did not get exactly one, two, three"

# Resume from the first id: exactly the two after it, in order.
curl -sS -N --max-time 60 -H "Last-Event-ID: $id1" "$base/events?stream=smoke" >"$work/resume.sse" 2>/dev/null &
pids+=($!)
until_ok 30 expect_events "$work/resume.sse" "$id2=two" "$id3=three" ||
  fail "the resumed subscriber did not get exactly two, three"

stats=$(curl -sS --max-time 10 "$base/stats")
echo "$stats" | grep -q '"events_published":3[,}]' || fail "/stats does not count 3 publishes: $stats"

echo "smoke ok: healthz, publish, live delivery, exact resume from $id1, stats"
