#!/usr/bin/env bash
# Interop suite: real SSE clients against a real ssed.
#
#   bash tests/interop/run.sh [eventsource|eventsource2|eventsource5|fetch-event-source|
#                              httpx-sse|sseclient-py|pyjwt|curl|chromium ...]
#
# Installs what it needs (Debian chromium and curl if missing, the npm
# packages of tests/interop/package-lock.json, httpx, httpx-sse, requests
# and sseclient-py in a venv under target/), builds ssed unless SSED_BIN is
# set, runs every client (or the ones named), writes the client versions to
# target/interop-versions.txt and ends with one line `N passed, M failed`.
# Exits non-zero on any failure. Safe to run again.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
mkdir -p target
log() { printf '== %s\n' "$*" >&2; }

# The test programs kill the ssed, curl and Chromium processes they start;
# this catches anything left in the background if the script is interrupted.
cleanup() {
  local p
  for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(eventsource eventsource2 eventsource5 fetch-event-source httpx-sse sseclient-py pyjwt curl chromium)
wants() { local s; for s in "${suites[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

# --- system packages -------------------------------------------------------
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
if wants chromium; then
  chromium_bin=${CHROMIUM:-/usr/bin/chromium}
  [ -x "$chromium_bin" ] || missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v node >/dev/null 2>&1 || { echo "node (>= 20) is required" >&2; exit 1; }
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || { echo "node >= 20 is required, found $(node --version)" >&2; exit 1; }

# --- npm packages (eventsource 4/2/5, fetch-event-source, playwright) ------
if wants eventsource || wants eventsource2 || wants eventsource5 ||
   wants fetch-event-source || wants curl || wants chromium; then
  stamp="$here/node_modules/.ssed-lock"
  if ! cmp -s "$here/package-lock.json" "$stamp" 2>/dev/null; then
    log "npm ci in tests/interop"
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$here/package-lock.json" "$stamp"
  fi
fi

# --- Python packages (httpx, httpx-sse, requests, sseclient-py) ------------
venv="$root/target/interop-venv"
py="$venv/bin/python"
if wants httpx-sse || wants sseclient-py || wants pyjwt; then
  if ! "$py" -c 'import httpx, httpx_sse, requests, sseclient, jwt' >/dev/null 2>&1; then
    log "pip install -r tests/interop/requirements.txt into target/interop-venv"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
      # Debian's own python3 needs python3-venv for ensurepip.
      log "apt-get install python3-venv"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      rm -rf "$venv"
      python3 -m venv "$venv"
    fi
    "$py" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"
  fi
fi

# --- ssed ------------------------------------------------------------------
if [ -z "${SSED_BIN:-}" ]; then
  log "cargo build --bin ssed"
  cargo build --quiet --bin ssed
  SSED_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/ssed"
fi
SSED_BIN=$(cd "$(dirname "$SSED_BIN")" && pwd)/$(basename "$SSED_BIN")
[ -x "$SSED_BIN" ] || { echo "no ssed binary at $SSED_BIN" >&2; exit 1; }
export SSED_BIN

# --- versions --------------------------------------------------------------
versions="$root/target/interop-versions.txt"
{
  echo "ssed: $SSED_BIN"
  echo "node: $(node --version)"
  if [ -f "$here/node_modules/eventsource/package.json" ]; then
    echo "eventsource (npm): $(node -p "require('$here/node_modules/eventsource/package.json').version")"
    echo "eventsource2 (npm alias of eventsource): $(node -p "require('$here/node_modules/eventsource2/package.json').version")"
    echo "eventsource5 (npm alias of eventsource): $(node -p "require('$here/node_modules/eventsource5/package.json').version")"
    echo "@microsoft/fetch-event-source (npm): $(node -p "require('$here/node_modules/@microsoft/fetch-event-source/package.json').version")"
    echo "playwright-core (npm): $(node -p "require('$here/node_modules/playwright-core/package.json').version")"
  fi
  if [ -x "$py" ]; then
    echo "python: $("$py" -c 'import platform; print(platform.python_version())')"
    "$py" -c 'import importlib.metadata as m; print("httpx-sse (PyPI):", m.version("httpx-sse")); print("httpx (PyPI):", m.version("httpx")); print("sseclient-py (PyPI):", m.version("sseclient-py")); print("requests (PyPI):", m.version("requests")); print("PyJWT (PyPI):", m.version("PyJWT"))' 2>/dev/null || true
  fi
  echo "curl: $(curl --version | head -n1)"
  if [ -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    echo "chromium: $("${CHROMIUM:-/usr/bin/chromium}" --version 2>/dev/null | head -n1)"
  fi
} >"$versions"
log "client versions (target/interop-versions.txt):"
sed 's/^/   /' "$versions" >&2

# --- run -------------------------------------------------------------------
total_pass=0
total_fail=0
summary=()

# Reads "# pass N" / "# fail N" from a TAP file; a run that crashed before
# reporting counts as one failure.
count() { # label tapfile exit-code
  local p f
  p=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$2" | tail -n1)
  f=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$2" | tail -n1)
  if [ -z "$p" ] || [ -z "$f" ]; then p=${p:-0}; f=1; fi
  if [ "$3" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  total_pass=$((total_pass + p))
  total_fail=$((total_fail + f))
  summary+=("$(printf '%-18s pass=%-3s fail=%s' "$1" "$p" "$f")")
}

run_node() { # label file
  local tap="$root/target/interop-$1.tap" rc=0
  log "$1"
  rm -f "$tap"
  node --test --test-concurrency=1 \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$tap" \
    "$here/$2" || rc=$?
  touch "$tap"
  count "$1" "$tap" "$rc"
}

run_python() { # label file
  local tap="$root/target/interop-$1.tap" rc=0
  log "$1"
  "$py" "$here/$2" | tee "$tap" || rc=$?
  count "$1" "$tap" "$rc"
}

for s in "${suites[@]}"; do
  case "$s" in
    eventsource) run_node eventsource eventsource.test.mjs ;;
    eventsource2) run_node eventsource2 eventsource2.test.mjs ;;
    eventsource5) run_node eventsource5 eventsource5.test.mjs ;;
    fetch-event-source) run_node fetch-event-source fetch-event-source.test.mjs ;;
    curl) run_node curl curl.test.mjs ;;
    chromium) run_node chromium chromium.test.mjs ;;
    httpx-sse) run_python httpx-sse test_httpx_sse.py ;;
    sseclient-py) run_python sseclient-py test_sseclient_py.py ;;
    pyjwt) run_python pyjwt test_pyjwt.py ;;
    *) echo "unknown client: $s (eventsource, eventsource2, eventsource5, fetch-event-source, httpx-sse, sseclient-py, pyjwt, curl, chromium)" >&2; exit 2 ;;
  esac
done

echo
echo "interop results by client:"
printf '  %s\n' "${summary[@]}"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
