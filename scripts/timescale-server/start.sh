#!/usr/bin/env bash
# Start TimescaleDB (PGlite WebAssembly build) on 127.0.0.1:PORT in the background and print its DSN.
#
#   export CITYWATCH_TIMESCALE_URL="$(scripts/timescale-server/start.sh 55433)"
#   kill "$(cat "${TMPDIR:-/tmp}/citywatch-timescale-55433.pid")"     # to stop it
#
# Only the DSN goes to stdout, so the line above works; progress and errors go to stderr.
# In-memory: each start is an empty database. One client connection at a time (PGlite).
set -euo pipefail

port="${1:-55433}"
if ! [[ "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
  echo "usage: $0 [port]   (port 1..65535, default 55433)" >&2
  exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
run_dir="${TMPDIR:-/tmp}"
pid_file="$run_dir/citywatch-timescale-$port.pid"
log_file="$run_dir/citywatch-timescale-$port.log"
dsn="postgresql://postgres:postgres@127.0.0.1:$port/postgres?sslmode=disable"

# Reuse a server we started earlier if it is still serving (not stopping, pid not recycled).
if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null \
    && grep -qs 'server.mjs' "/proc/$(cat "$pid_file")/cmdline" \
    && grep -qs '^READY ' "$log_file" && ! grep -qs 'stopping' "$log_file"; then
  echo "already running (pid $(cat "$pid_file"))" >&2
  echo "$dsn"
  exit 0
fi

# npm ci only when the installed tree is missing or older than the lock file.
if [[ ! -f "$here/node_modules/.package-lock.json" \
      || "$here/package-lock.json" -nt "$here/node_modules/.package-lock.json" ]]; then
  echo "installing node packages (npm ci)" >&2
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

nohup node "$here/server.mjs" --port "$port" --host 127.0.0.1 >"$log_file" 2>&1 &
pid=$!
echo "$pid" >"$pid_file"

# The server prints READY only after its socket is listening; loading the WASM build takes seconds.
for _ in $(seq 1 120); do
  if grep -q '^READY ' "$log_file"; then
    echo "started pid $pid, log $log_file ($(sed -n 's/^READY .* //p' "$log_file" | head -n1))" >&2
    echo "$dsn"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "server exited before accepting connections; log $log_file:" >&2
    cat "$log_file" >&2
    rm -f "$pid_file"
    exit 1
  fi
  sleep 0.5
done
echo "server did not accept connections within 60 s; stopping it. Log $log_file:" >&2
cat "$log_file" >&2
kill "$pid" 2>/dev/null || true
rm -f "$pid_file"
exit 1
