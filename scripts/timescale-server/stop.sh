#!/usr/bin/env bash
# Stop the server start.sh started on PORT (default 55433).
set -euo pipefail
port="${1:-55433}"
pid_file="${TMPDIR:-/tmp}/citywatch-timescale-$port.pid"
if [[ ! -f "$pid_file" ]]; then
  echo "no server recorded for port $port" >&2
  exit 0
fi
pid="$(cat "$pid_file")"
# Only signal our own server: the pid may have been recycled since.
if kill -0 "$pid" 2>/dev/null && grep -qs 'server.mjs' "/proc/$pid/cmdline"; then
  kill -TERM "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
fi
rm -f "$pid_file"
