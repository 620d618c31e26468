#!/usr/bin/env bash
# The PostgreSQL backend's intake, by hand (not in CI): 64 connections for
# 10 s, then how long the replicas' queue takes to drain.
#   bash benches/postgres.sh            # a fresh database on 127.0.0.1:5432
#   bash benches/postgres.sh standby    # own primary + synchronous standby
#                                       # clusters on this box (root: runs
#                                       # initdb as user postgres)
# BIN=path runs another build; EXTRA_TOML='[worker]\nconcurrency = 4\n' adds
# to the service's config file; CPU=1 reports the CPU time of the database
# and of the service during the load.
# Needs a release build: cargo build --release --examples --bins
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/intercom-webhooks}
LOADGEN=target/release/examples/loadgen
WORK=${BENCH_DIR:-/tmp/iw-pg-bench}
PUBLIC=127.0.0.1:18390
ADMIN=127.0.0.1:19390
export INTERCOM_CLIENT_SECRET=test-client-secret
export INTERCOM_WEBHOOKS_ADMIN_TOKEN=bench-admin-token-0001
export INTERCOM_WEBHOOKS_DATA_KEY=$(printf '5a%.0s' {1..32})
export RUST_LOG=${RUST_LOG:-warn}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
rm -rf "$WORK"; mkdir -p "$WORK"; chmod 777 "$WORK"
printf '[store]\nbackend = "postgres"\n%b' "${EXTRA_TOML:-}" > "$WORK/pg.toml"

cluster() { # $1 = dir, $2 = port, $3 = extra config
  runuser -u postgres -- "$PGBIN/initdb" -D "$1" -A trust -U postgres >/dev/null
  printf "port = %s\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n%s\n" "$2" "$WORK" "$3" >> "$1/postgresql.conf"
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$1" -l "$1.log" start -w >/dev/null
}
cleanup() {
  [ -n "${SERVER:-}" ] && kill -TERM "$SERVER" 2>/dev/null || true
  for d in "$WORK/primary" "$WORK/standby"; do
    [ -d "$d" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d" stop -m fast >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

case "${1:-local}" in
  local)
    psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS iw_bench WITH (FORCE)" -c "CREATE DATABASE iw_bench"
    # DB_URL=postgres://postgres@%2Fvar%2Frun%2Fpostgresql/iw_bench: over the
    # Unix socket instead of TCP.
    export INTERCOM_WEBHOOKS_DATABASE_URL=${DB_URL:-postgres://postgres@127.0.0.1:5432/iw_bench}
    echo "== PostgreSQL on 127.0.0.1:5432, synchronous_commit=$(psql -h 127.0.0.1 -U postgres -d test -Atc 'show synchronous_commit')"
    ;;
  standby)
    cluster "$WORK/primary" 25432 "synchronous_standby_names = '*'"
    runuser -u postgres -- "$PGBIN/pg_basebackup" -h 127.0.0.1 -p 25432 -U postgres -D "$WORK/standby" -R -X stream
    printf "port = 25433\n" >> "$WORK/standby/postgresql.conf"
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/standby" -l "$WORK/standby.log" start -w >/dev/null
    export INTERCOM_WEBHOOKS_DATABASE_URL=postgres://postgres@127.0.0.1:25432/postgres
    for _ in $(seq 50); do
      [ "$(psql -h 127.0.0.1 -p 25432 -U postgres -Atc "select sync_state from pg_stat_replication")" = sync ] && break
      sleep 0.2
    done
    echo "== own primary with a synchronous standby (same box): $(psql -h 127.0.0.1 -p 25432 -U postgres -Atc "select sync_state from pg_stat_replication")"
    ;;
esac

"$BIN" --config "$WORK/pg.toml" --data-dir "$WORK/data" serve --listen $PUBLIC --admin-listen $ADMIN 2>"$WORK/server.log" &
SERVER=$!
for _ in $(seq 100); do curl -sf http://$PUBLIC/readyz >/dev/null && break; sleep 0.1; done
# CPU=1: CPU seconds of the database's processes and of the service over
# 6 s of the load (from 1 s after the load generator has connected).
ticks() { local t=0 s; for p in $(pgrep "$@"); do s=$(awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null); t=$((t + ${s:-0})); done; echo $t; }
if [ "${CPU:-0}" = 1 ]; then
  (
    for _ in $(seq 600); do
      [ "$(ss -Htn state established "( dport = :${PUBLIC##*:} )" | wc -l)" -gt 32 ] && break; sleep 0.1
    done
    sleep 1
    d0=$(ticks -u postgres); s0=$(ticks -f "^$BIN --config"); sleep 6
    d1=$(ticks -u postgres); s1=$(ticks -f "^$BIN --config")
    hz=$(getconf CLK_TCK)
    echo "CPU over 6 s of the load: database $(python3 -c "print(round(($d1-$d0)/$hz,2))") s, service $(python3 -c "print(round(($s1-$s0)/$hz,2))") s"
  ) &
  SAMPLER=$!
fi
db0=$(ticks -u postgres)
$LOADGEN --url http://$PUBLIC/webhooks/intercom --connections 64 --seconds 10 --bodies 300000 2>/dev/null > "$WORK/load.txt"
sed -n 1,3p "$WORK/load.txt"
[ -n "${SAMPLER:-}" ] && wait "$SAMPLER"
# Counted in the database itself (the service's own figure is refreshed
# at most once a second, less often while counting is slow).
depth() { psql -Atc "SELECT count(*) FROM iw_events WHERE status IN (0, 3)" "$INTERCOM_WEBHOOKS_DATABASE_URL"; }
t0=$(date +%s.%N); left=$(depth)
while [ "$(depth)" != "0" ]; do sleep 0.1; done
t1=$(date +%s.%N)
echo "queue right after: $left; drained in $(python3 -c "print(round($t1-$t0,1))") s"
# CPU per stored notification, received and processed, whatever the rate:
# the database's processes from the load's start until the queue is empty,
# and the service's threads by kind over its whole life.
db1=$(ticks -u postgres)
python3 benches/cpu_per_event.py "$SERVER" "$(grep -o 'accepted (200, signed) [0-9]*' "$WORK/load.txt" | awk '{print $4}')" "$((db1 - db0))"
