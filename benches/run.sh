#!/usr/bin/env bash
# Benchmarks, run by hand (not in CI): intake, processing, replay and purge.
#   bash benches/run.sh [intake|replay|purge|erase|all]
# Needs a release build: cargo build --release --examples --bins
# Prints figures; the machine, load generator included, is whatever runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/intercom-webhooks}  # BIN=path: another build
LOADGEN=target/release/examples/loadgen
WORK=${BENCH_DIR:-/tmp/iw-bench}
PUBLIC=127.0.0.1:18090
ADMIN=127.0.0.1:19090
export INTERCOM_CLIENT_SECRET=test-client-secret
export INTERCOM_WEBHOOKS_ADMIN_TOKEN=bench-admin-token-0001
export INTERCOM_WEBHOOKS_DATA_KEY=$(printf '5a%.0s' {1..32})
export INTERCOM_WEBHOOKS_ADMIN_URL=http://$ADMIN
export RUST_LOG=${RUST_LOG:-warn}
URL=http://$PUBLIC/webhooks/intercom

start() { # $1 = config file (optional)
  rm -rf "$WORK/data"; mkdir -p "$WORK"
  local cfg=()
  [ -n "${1:-}" ] && cfg=(--config "$1")
  "$BIN" "${cfg[@]}" --data-dir "$WORK/data" serve --listen $PUBLIC --admin-listen $ADMIN 2>"$WORK/server.log" &
  SERVER=$!
  for _ in $(seq 100); do curl -sf http://$PUBLIC/readyz >/dev/null && return; sleep 0.1; done
  echo "server did not start"; exit 1
}
stop() { kill -TERM $SERVER; wait $SERVER || true; }
admin() { curl -sf -H "Authorization: Bearer bench-admin-token-0001" "$@"; }
metric() { admin http://$ADMIN/metrics | awk -v m="$1" '$1==m {print $2}'; }
# From /metrics, which is cheap; /admin/stats counts every event.
wait_idle() { while [ "$(metric intercom_webhooks_pending_depth)" != "0" ]; do sleep 0.2; done; }

# Server CPU (user + system) per accepted notification, by thread group,
# from /proc: where the time goes, in a figure that does not depend on how
# long the run took.
cpu_per_event() { # $1 = accepted notifications
  python3 benches/cpu_per_event.py "$SERVER" "$1"
}

intake() {
  echo "== intake, 64 connections, 10 s"
  start; $LOADGEN --url $URL --connections 64 --seconds 10 --bodies 300000 2>/dev/null | tee "$WORK/load.txt"
  echo "pending depth right after: $(metric intercom_webhooks_pending_depth)"
  local t0=$(date +%s.%N); wait_idle; local t1=$(date +%s.%N)
  echo "drained the backlog in $(python3 -c "print(round($t1-$t0,2))") s"
  cpu_per_event "$(grep -o 'accepted (200, signed) [0-9]*' "$WORK/load.txt" | awk '{print $4}')"
  admin http://$ADMIN/metrics | grep -E '^intercom_webhooks_processing_latency_seconds_(bucket|count|sum)' > "$WORK/proc.txt"
  python3 - "$WORK/proc.txt" <<'PY'
import sys,re
b=[];c=0
for l in open(sys.argv[1]):
    m=re.match(r'.*_bucket\{le="([^"]+)"\} (\S+)',l)
    if m: b.append((float('inf') if m.group(1)=='+Inf' else float(m.group(1)), float(m.group(2))))
    if '_count' in l: c=float(l.split()[-1])
def q(p):
    for le,n in b:
        if n>=p*c: return le
print(f"200 -> processed latency (histogram upper bounds): p50 <= {q(0.5)} s, p99 <= {q(0.99)} s over {int(c)} events")
PY
  stop
  echo "== intake, steady 1000 req/s, 10 s"
  start; $LOADGEN --url $URL --connections 16 --rate 1000 --seconds 10 --bodies 20000 2>/dev/null; stop
}

replay() {
  echo "== replay of 100,000 stored events"
  start; $LOADGEN --url $URL --connections 64 --seconds 60 --bodies 100000 2>/dev/null | sed -n 1p; wait_idle
  local t0=$(date +%s.%N)
  admin -X POST -H 'content-type: application/json' -d '{"all":true}' http://$ADMIN/admin/replay; echo
  $LOADGEN --url $URL --connections 16 --rate 1000 --seconds 8 --bodies 10000 2>/dev/null | grep '^latency' | sed 's/^/intake during replay: /'
  wait_idle; local t1=$(date +%s.%N)
  echo "replay throughput: $(python3 -c "print(round(100000/($t1-$t0)))") events/s (queue + handlers)"
  stop
}

purge() {
  echo "== purge of N expired notifications (N = 4 fills of 250,000)"
  mkdir -p "$WORK"
  cat > "$WORK/purge.toml" <<'TOML'
[retention]
events = "20s"
markers = "1d"
[purge]
interval = "1000d"
[store]
segment_max_age = "10s"
TOML
  start "$WORK/purge.toml"
  for i in 1 2 3 4; do $LOADGEN --url $URL --connections 64 --seconds 60 --bodies 250000 2>/dev/null | sed -n 1p; done
  wait_idle
  local raw=$(admin http://$ADMIN/admin/stats | python3 -c 'import json,sys;print(json.load(sys.stdin)["events_by_status"])')
  echo "stored: $raw; store size $(du -sh $WORK/data | cut -f1)"
  sleep 21
  $LOADGEN --url $URL --connections 16 --rate 1000 --seconds 8 --bodies 10000 2>/dev/null | grep '^latency' | sed 's/^/intake p99 without purge: /'
  ( $LOADGEN --url $URL --connections 16 --rate 1000 --seconds 20 --bodies 25000 2>/dev/null | grep '^latency' | sed 's/^/intake during purge: /' ) &
  LG=$!
  sleep 1
  local t0=$(date +%s.%N)
  admin -X POST -H 'content-type: application/json' -d '{}' http://$ADMIN/admin/purge; echo
  local t1=$(date +%s.%N)
  echo "purge took $(python3 -c "print(round($t1-$t0,1))") s"
  wait $LG
  echo "store size after fill-and-purge: $(du -sb $WORK/data | cut -f1) bytes ($(du -sh $WORK/data/index | cut -f1) index, $(du -sh $WORK/data/log | cut -f1) log)"
  stop
}

# Sends N signed contact.deleted notifications for the load generator's
# contacts c0..c(N-1), over one keep-alive connection.
send_deletions() { # $1 = N
  python3 - "$1" "$PUBLIC" "$INTERCOM_CLIENT_SECRET" <<'PY'
import hashlib, hmac, http.client, json, sys, time
n, addr, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
host, port = addr.split(':')
conn = http.client.HTTPConnection(host, int(port))
codes = {}
for i in range(n):
    body = json.dumps({"type": "notification_event", "app_id": "abc12xyz", "topic": "contact.deleted",
        "id": f"notif_bench_delete_{i}", "created_at": int(time.time()), "delivery_attempts": 1,
        "data": {"type": "notification_event_data", "item": {"type": "contact", "id": f"c{i}", "deleted": True}}}).encode()
    sig = "sha1=" + hmac.new(secret, body, hashlib.sha1).hexdigest()
    conn.request("POST", "/webhooks/intercom", body, {"X-Hub-Signature": sig, "Content-Type": "application/json"})
    r = conn.getresponse(); r.read(); codes[r.status] = codes.get(r.status, 0) + 1
print(f"deletions sent: {n}, answers {codes}")
PY
}

erase() {
  echo "== erasure at scale: 1,000 contact.deleted against ~1,000,000 stored events"
  start "${ERASE_CONFIG:-}"
  for i in $(seq ${ERASE_FILL_RUNS:-4}); do $LOADGEN --url $URL --connections 64 --seconds 120 --bodies 250000 2>/dev/null | sed -n 1p; done
  wait_idle
  echo "store: $(du -sh $WORK/data | cut -f1) ($(ls $WORK/data/log | wc -l) segments)"
  $LOADGEN --url $URL --connections 16 --rate 1000 --seconds 10 --bodies 12000 2>/dev/null | grep '^latency' | sed 's/^/intake at 1000\/s before: /'
  # About other contacts than the erased c0..c999: a notification about an
  # erased contact is erased on arrival and queues the open segment again,
  # so "all shredded" would wait for the load to end.
  ( $LOADGEN --url $URL --connections 16 --rate 1000 --contact-base 1000 --seconds ${ERASE_LOAD_SECONDS:-600} --bodies $(( ${ERASE_LOAD_SECONDS:-600} * 1000 + 10000 )) --windows 10 2>/dev/null | grep '^latency\|^window' | sed 's/^/intake at 1000\/s during erasure: /' ) &
  LG=$!
  sleep 2
  local t0=$(date +%s.%N)
  send_deletions ${ERASE_DELETIONS:-1000}
  local t1=$(date +%s.%N)
  # Processed (each one erased at once, so unreadable), then shredded.
  while [ "$(metric intercom_webhooks_pending_depth)" != "0" ]; do sleep 0.5; done
  local t2=$(date +%s.%N)
  sleep 1
  while [ "$(metric intercom_webhooks_erasure_segments_to_shred)" != "0" ]; do sleep 0.5; done
  local t3=$(date +%s.%N)
  python3 -c "print(f'sent in {$t1-$t0:.1f} s; all processed (unreadable) {$t2-$t0:.1f} s after the first; all shredded {$t3-$t0:.1f} s after the first')"
  wait $LG
  echo "store after: $(du -sh $WORK/data | cut -f1) ($(ls $WORK/data/log | wc -l) segments)"
  stop
}

case "${1:-all}" in
  intake) intake ;;
  replay) replay ;;
  purge) purge ;;
  erase) erase ;;
  all) intake; replay; purge ;;
esac
