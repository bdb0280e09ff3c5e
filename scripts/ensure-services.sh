#!/usr/bin/env bash
# Make sure the system Mosquitto (127.0.0.1:1883) and PostgreSQL (127.0.0.1:5432, user postgres,
# database `test`, trust from loopback) are installed and running, and that nats-server (for the
# cluster tests, which start their own nodes) is installed, for CI and developers.
#
#   bash scripts/ensure-services.sh
#
# Idempotent, and quick when both already answer. As root on Debian/Ubuntu it installs what is
# missing (apt-get) and starts what is stopped; otherwise it says what to do and exits non-zero.
# Prints one line per service; progress goes to stderr.
set -euo pipefail

MQTT_HOST=127.0.0.1 MQTT_PORT=1883
PG_HOST=127.0.0.1 PG_PORT=5432 PG_DB=test
WAIT_S=30

say() { printf '%s\n' "$*" >&2; }
die() { say "ensure-services: $*"; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }
# /usr/sbin is where Debian puts mosquitto, and a normal user's PATH may not have it.
export PATH="$PATH:/usr/sbin:/sbin"

mqtt_ok() {
  mosquitto_pub -h "$MQTT_HOST" -p "$MQTT_PORT" -q 1 -t citywatch/ensure-services -m ping \
    >/dev/null 2>&1
}
pg_ok() {
  psql "postgresql://postgres@$PG_HOST:$PG_PORT/$PG_DB?connect_timeout=3" -XAtqc 'select 1' \
    >/dev/null 2>&1
}
pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }
wait_for() {  # wait_for CHECK: run CHECK until it succeeds, for up to WAIT_S seconds
  local i
  for ((i = 0; i < WAIT_S * 4; i++)); do
    "$1" && return 0
    sleep 0.25
  done
  return 1
}

# --- install what is missing --------------------------------------------------------------
missing=()
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
{ command -v pg_ctlcluster >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; } \
  || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
# nats-server: tests/cluster start their own three-node cluster from it (no service needed).
command -v nats-server >/dev/null || missing+=(nats-server)
if [ ${#missing[@]} -gt 0 ]; then
  if is_root && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || say "apt-get update failed; trying with the package lists at hand"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  else
    die "missing ${missing[*]}: install them (Debian/Ubuntu: sudo apt-get install ${missing[*]})"
  fi
fi

# Chromium for the console's browser tests (tests/integration/test_console.py), and a CJK font
# so that the Chinese labels in their screenshots are not boxes. Root only; the tests say why
# they cannot run otherwise.
if [ ! -x /usr/bin/chromium ] && is_root && command -v apt-get >/dev/null; then
  say "installing chromium (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  chromium_pkgs=(chromium fonts-wqy-microhei)
  # Stale package lists are the usual reason to fail: refresh them once and retry.
  apt-get install -y -qq --no-install-recommends "${chromium_pkgs[@]}" >&2 \
    || { apt-get update -qq >&2 \
         && apt-get install -y -qq --no-install-recommends "${chromium_pkgs[@]}" >&2; } \
    || say "could not install chromium: the console's browser tests cannot run"
fi

# --- Mosquitto ----------------------------------------------------------------------------
if ! mqtt_ok; then
  is_root || die "Mosquitto does not answer on $MQTT_HOST:$MQTT_PORT; start it (as root:" \
    "mosquitto -d -c /etc/mosquitto/mosquitto.conf)"
  say "starting Mosquitto"
  # The packaged config writes its pid file here; a container has no systemd to create it.
  install -d -o mosquitto -g mosquitto /run/mosquitto 2>/dev/null || mkdir -p /run/mosquitto
  mosquitto -d -c /etc/mosquitto/mosquitto.conf
  wait_for mqtt_ok || die "Mosquitto did not answer on $MQTT_HOST:$MQTT_PORT within ${WAIT_S}s;" \
    "see /var/log/mosquitto/mosquitto.log"
fi
echo "mosquitto: ready at mqtt://$MQTT_HOST:$MQTT_PORT ($(mosquitto -h 2>/dev/null | sed -n 's/^mosquitto version /version /p' | head -n1))"

# --- PostgreSQL ---------------------------------------------------------------------------
as_postgres() { (cd / && runuser -u postgres -- "$@"); }
if ! pg_ok; then
  is_root || die "PostgreSQL does not answer as postgres@$PG_HOST:$PG_PORT/$PG_DB; start it" \
    "(as root: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start) and" \
    "create database $PG_DB"
  version=$(ls /usr/lib/postgresql | sort -V | tail -n1)
  if [ ! -d "/etc/postgresql/$version/main" ]; then
    say "creating PostgreSQL cluster $version/main"
    pg_createcluster "$version" main --port "$PG_PORT" >&2
  fi
  if ! pg_up; then
    say "starting PostgreSQL $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    wait_for pg_up \
      || die "PostgreSQL $version/main did not start; see /var/log/postgresql/"
  fi
  # A fresh Debian cluster asks for passwords over TCP: trust loopback, as the tests expect.
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ! grep -q 'citywatch ensure-services' "$hba"; then
    say "trusting loopback connections in $hba"
    tmp=$(mktemp)
    { echo "# citywatch ensure-services: local test server, trust loopback connections"
      echo "host all all 127.0.0.1/32 trust"
      echo "host all all ::1/128 trust"
      cat "$hba"; } >"$tmp"
    cat "$tmp" >"$hba"
    rm -f "$tmp"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload >&2
  fi
  if ! as_postgres psql -XAtqc "select 1 from pg_database where datname = '$PG_DB'" | grep -q 1; then
    say "creating database $PG_DB"
    as_postgres createdb "$PG_DB"
  fi
  wait_for pg_ok || die "PostgreSQL answers but not as postgres@$PG_HOST:$PG_PORT/$PG_DB"
fi
echo "postgresql: ready at postgresql://postgres@$PG_HOST:$PG_PORT/$PG_DB ($(psql "postgresql://postgres@$PG_HOST:$PG_PORT/$PG_DB" -XAtqc 'show server_version' | cut -d' ' -f1))"
