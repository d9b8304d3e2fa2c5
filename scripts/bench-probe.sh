#!/usr/bin/env bash
# One quick measurement of one build, for A/B comparisons of two builds run
# alternately in one sitting (the README's benchmark section):
#
#   BIN=path/to/keyledger bash scripts/bench-probe.sh verify   # /v1/verify and /v1/auth req/s
#   BIN=path/to/keyledger bash scripts/bench-probe.sh create   # creations/s, pgbench inserts/s, the average group
#   BIN=path/to/keyledger bash scripts/bench-probe.sh usage    # how fast usage flushes append many keys' minutes
#   (CONNECTIONS, default 8, and THREADS, default 2, for wrk; pgbench uses as many clients;
#   SERVE_LOG=file keeps the server's standard error)
#
# It starts `keyledger serve` on a fresh database with one enterprise
# organization, runs wrk (THREADS, CONNECTIONS, DURATION) and prints one line.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?verify, create or usage}
BIN=${BIN:-target/release/keyledger}
DURATION=${DURATION:-8s}
work=$(mktemp -d)
db="keyledger_probe_$$"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export KEYLEDGER_HASH_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export KEYLEDGER_DATA_DIR="$work" KEYLEDGER_MAX_KEYS_PER_ORG=1000000 RUST_LOG=warn
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "drop database if exists $db with (force)" postgres >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
"$BIN" migrate >/dev/null
# Usage flushes every FLUSH_SECONDS (the usage probe times them).
export KEYLEDGER_USAGE_FLUSH_SECONDS=${FLUSH_SECONDS:-1}
KEYLEDGER_LISTEN="127.0.0.1:$port" "$BIN" serve 2>"${SERVE_LOG:-$work/serve.log}" &
pid=$!
for _ in $(seq 100); do curl -fs "$url/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
KEY=$("$BIN" org create --name Probe --plan enterprise --rate-limit 10000000 |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["key"])')
rate() { awk '/Requests\/sec/ {printf "%.0f", $2}'; }
psql_db() { psql -qtA -h 127.0.0.1 -U postgres "$db" "$@"; }
case "$what" in
  verify)
    CONNECTIONS=${CONNECTIONS:-32}
    cat >"$work/verify.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"key": "$KEY", "scopes": ["read:experiences"], "environment": "live"}'
wrk.headers["Content-Type"] = "application/json"
LUA
    # Warm the cache.
    curl -fs -X POST -H 'Content-Type: application/json' -d "{\"key\": \"$KEY\"}" "$url/v1/verify" >/dev/null
    verify=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -s "$work/verify.lua" "$url/v1/verify" | rate)
    auth=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" -H "Authorization: Bearer $KEY" -H "X-Original-Method: GET" \
      -H "X-Original-URI: /api/experiences/1" "$url/v1/auth" | rate)
    echo "verify $verify req/s  auth $auth req/s"
    ;;
  create)
    CONNECTIONS=${CONNECTIONS:-8}
    cat >"$work/create.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"name": "probe", "type": "secret", "scopes": ["read:experiences"], "allowed_ips": ["10.0.0.0/8"]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA
    before=$(psql_db -c "select count(*) from keys")
    wrk -t"${THREADS:-2}" -c"$CONNECTIONS" -d"$DURATION" -s "$work/create.lua" "$url/v1/keys" >"$work/create.out"
    after=$(psql_db -c "select count(*) from keys")
    seconds=$(awk '/ requests in / {sub(/s,?$/, "", $4); print $4}' "$work/create.out")
    psql_db -c "create table probe_insert (id bigserial primary key, name text not null, created_at timestamptz not null default now())"
    echo "insert into probe_insert (name) values ('probe');" >"$work/insert.sql"
    inserts=$(pgbench -n -h 127.0.0.1 -U postgres -c "$CONNECTIONS" -j 2 -T "${DURATION%s}" -f "$work/insert.sql" "$db" 2>/dev/null |
      awk '/^tps/ {printf "%.0f", $3}')
    [ -n "$inserts" ] || { echo "pgbench failed" >&2; exit 1; }
    groups=$(curl -fs "$url/metrics" | awk '$1 == "keyledger_key_creation_groups_total" {print $2}')
    grouped=$(curl -fs "$url/metrics" | awk '$1 == "keyledger_key_creations_total{commit=\"group\"}" {print $2}')
    python3 -c "r = ($after - $before) / $seconds; print(f'create {r:.0f}/s  pgbench {$inserts}/s  ratio {r / $inserts:.2f}  group {$grouped / max($groups, 1):.1f}')"
    ;;
  usage)
    # USAGE_KEYS keys created through the API (each secret read from its
    # answer), then each verified once: one key's minute to flush each.
    # Timed: from the last verification's answer until the flushes have
    # appended them all (flushes run every second).
    USAGE_KEYS=${USAGE_KEYS:-50000}
    mkdir -p "$work/keys"
    # wrk waits out its duration after its threads stop: it is stopped once
    # each thread has written its keys.
    KEYLEDGER_ADMIN_KEY=$KEY wrk -t"${THREADS:-2}" -c8 -d10m -s scripts/create-keys.lua "$url/v1/keys" \
      -- "$work/keys" $((USAGE_KEYS / ${THREADS:-2})) '{"name": "probe", "type": "secret", "scopes": ["read:experiences"]}' >/dev/null &
    wrk_pid=$!
    while [ "$(cat "$work"/keys/* 2>/dev/null | wc -l)" -lt $((USAGE_KEYS / ${THREADS:-2} * ${THREADS:-2})) ]; do
      kill -0 "$wrk_pid" || { echo "wrk stopped before creating the keys" >&2; exit 1; }
      sleep 0.2
    done
    kill "$wrk_pid"; wait "$wrk_pid" 2>/dev/null || true
    sort -u "$work"/keys/* >"$work/keys.txt"
    keys=$(wc -l <"$work/keys.txt")
    metric() { curl -fs "$url/metrics" | awk -v m="$1" '$1 == m {print $2 + 0}'; }
    valid() { curl -fs "$url/metrics" | awk '$1 ~ /^keyledger_verifications_total/ && $1 ~ /VALID/ {n += $2} END {print n + 0}'; }
    # The creations' own usage (the admin key's) flushed first.
    sleep 2
    flushed_before=$(metric keyledger_usage_flushed_events_total)
    # The creations' key checks count as VALID too.
    valid_target=$(($(valid) + keys))
    wrk -t"${THREADS:-2}" -c8 -d1h -s scripts/verify-each-key.lua "$url/v1/verify" -- "$work/keys.txt" "${THREADS:-2}" >/dev/null &
    wrk_pid=$!
    while [ "$(valid)" -lt "$valid_target" ]; do sleep 0.05; done
    verified_at=$(date +%s.%N)
    kill "$wrk_pid"; wait "$wrk_pid" 2>/dev/null || true
    # Done when the count of appended records has not moved for 1.5 s (a
    # flush a second appended nothing); timed to its last move.
    python3 - "$url/metrics" "$verified_at" "$keys" "$flushed_before" <<'PY'
import sys, time, urllib.request
url, verified_at, keys, before = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def flushed():
    for line in urllib.request.urlopen(url).read().decode().splitlines():
        if line.startswith("keyledger_usage_flushed_events_total "):
            return float(line.split()[1])
last, moved = flushed(), time.time()
while last - before < keys * 0.99 or time.time() - moved < 1.5:
    time.sleep(0.05)
    now = flushed()
    if now != last:
        last, moved = now, time.time()
seconds = moved - verified_at
print(f"usage {last - before:.0f} keys' minutes (of {keys} keys) flushed {seconds:.2f} s after the last verification ({(last - before) / seconds:.0f}/s)")
PY
    # The records' own times: each is stamped as its append (one key's
    # minute, or a batch) starts. With FLUSH_SECONDS longer than the
    # verifications take, one flush appends them all, from the first to the last.
    psql_db -F ' ' -c "select 'usage records', count(*), 'in', count(distinct tx_id), 'transactions; first to last stamped',
        round(extract(epoch from max(occurred_at) - min(occurred_at))::numeric, 3), 's'
      from events where type = 'key.used' and stream_id in (select 'key-' || id from keys where name = 'probe')"
    ;;
  *) echo "verify, create or usage" >&2; exit 2 ;;
esac
