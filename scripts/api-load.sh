#!/usr/bin/env bash
# Load benchmark of the quota API with a real load generator (wrk) on loopback:
#   1. GET /v1/quota         (target ≥ 20,000 req/s, p99 < 20 ms)
#   2. POST /v1/jobs         (target ≥ 2,000 submissions/s, p99 < 20 ms)
# Builds the release binary, starts `zhisuan api` on a fresh SQLite ledger,
# creates a tenant through the admin API and prints one line per scenario.
# Usage: scripts/api-load.sh [DURATION_S] [CONNECTIONS]
# Note: wrk and the server share this machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${1:-10}"
CONNECTIONS="${2:-32}"
THREADS="${WRK_THREADS:-2}"
PORT="${PORT:-18787}"
BASE="http://127.0.0.1:${PORT}"

command -v wrk >/dev/null || { echo "wrk not installed: apt-get install -y wrk" >&2; exit 2; }
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --bin zhisuan

tmp="$(mktemp -d)"
cleanup() { [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

ZHISUAN_ADMIN_KEY="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export ZHISUAN_ADMIN_KEY
# Rate limiting is per key; lift it so the figure measures the server, not the limiter.
target/release/zhisuan api --listen "127.0.0.1:${PORT}" --db "$tmp/ledger.db" \
  --rate-limit-rps 10000000 --rate-limit-burst 10000000 >"$tmp/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "$BASE/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$BASE/healthz" >/dev/null || { cat "$tmp/server.log" >&2; exit 1; }

admin=(-H "Authorization: Bearer ${ZHISUAN_ADMIN_KEY}" -H "Content-Type: application/json")
key="$(curl -fsS "${admin[@]}" -d '{"name":"bench"}' "$BASE/v1/tenants" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')"
export ZHISUAN_LOAD_KEY="$key"

# Prints "<label> req_per_s=<n> p99_ms=<n> non2xx=<n>" from wrk's output.
summarise() {
  python3 - "$1" "$2" <<'PY'
import re, sys
label, path = sys.argv[1], sys.argv[2]
out = open(path).read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
errs = re.search(r"Socket errors:.*", out)
print(f"{label}: req_per_s={rps:.0f} p99_ms={p99:.2f} non2xx={int(bad.group(1)) if bad else 0}"
      + (f" ({errs.group(0)})" if errs else ""))
PY
}

wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
  -H "Authorization: Bearer ${key}" "$BASE/v1/quota" >"$tmp/quota.txt"
summarise "GET /v1/quota" "$tmp/quota.txt"

wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
  -s scripts/api-load-jobs.lua "$BASE" >"$tmp/jobs.txt"
summarise "POST /v1/jobs" "$tmp/jobs.txt"

if [ -n "${VERBOSE:-}" ]; then cat "$tmp/quota.txt" "$tmp/jobs.txt"; fi
