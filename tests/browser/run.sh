#!/usr/bin/env bash
# Headless-Chromium tests: ssed's built-in demo page (GET /), CSRF from a
# page of another loopback origin (csrf.mjs), and the Mercure hub
# (mercure.mjs).
#
#   bash tests/browser/run.sh
#
# Installs Debian's chromium (and a small CJK-capable font for the
# screenshot) if missing and the npm packages of tests/browser/package-lock.json,
# builds ssed unless SSED_BIN is set, runs tests/browser/demo.mjs, which
# saves target/demo.png and ends with `N passed, M failed`. Exits non-zero on
# any failure. Safe to run again.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
mkdir -p target
log() { printf '== %s\n' "$*" >&2; }

# demo.mjs kills the ssed and Chromium it starts; this catches anything left
# in the background if the script is interrupted.
cleanup() {
  local p
  for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

missing=()
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
dpkg -s fonts-droid-fallback >/dev/null 2>&1 || missing+=(fonts-droid-fallback)
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v node >/dev/null 2>&1 || { echo "node (>= 20) is required" >&2; exit 1; }
[ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] || { echo "node >= 20 is required" >&2; exit 1; }

stamp="$here/node_modules/.ssed-lock"
if ! cmp -s "$here/package-lock.json" "$stamp" 2>/dev/null; then
  log "npm ci in tests/browser"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$here/package-lock.json" "$stamp"
fi

if [ -z "${SSED_BIN:-}" ]; then
  log "cargo build --bin ssed"
  cargo build --quiet --bin ssed
  SSED_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/ssed"
fi
SSED_BIN=$(cd "$(dirname "$SSED_BIN")" && pwd)/$(basename "$SSED_BIN")
[ -x "$SSED_BIN" ] || { echo "no ssed binary at $SSED_BIN" >&2; exit 1; }
export SSED_BIN

log "demo page in $("${CHROMIUM:-/usr/bin/chromium}" --version 2>/dev/null | head -n1)"
rc=0
node "$here/demo.mjs" || rc=1
log "CSRF from another origin"
node "$here/csrf.mjs" || rc=1
log "Mercure hub (EventSource + fetch with JWTs)"
node "$here/mercure.mjs" || rc=1
exit $rc
