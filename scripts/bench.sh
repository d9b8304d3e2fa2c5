#!/usr/bin/env bash
# Benchmark of the verification hot path, on loopback, in one run:
#   nginx `return 204` (the ceiling) vs keyledger's GET /v1/auth and
#   POST /v1/verify with a warm key cache, each driven by wrk; then /v1/auth
#   at about half its measured throughput for the latency at moderate load.
# Prints requests/s, p50/p99 latency, the ratio to nginx, and the database
# work the run caused (key lookups that missed the cache, from /metrics, and
# all transactions on the benchmark database, from pg_stat_database).
#
#   bash scripts/bench.sh            # DURATION=10s CONNECTIONS=32 THREADS=2 by default
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}

for tool in wrk nginx; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx >/dev/null
  }
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --locked --bin keyledger 2>/dev/null
BIN=target/release/keyledger
work=$(mktemp -d)
db="keyledger_bench_$$"
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export KEYLEDGER_HASH_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export KEYLEDGER_DATA_DIR="$work"
export RUST_LOG=warn
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KL_PORT=$(free_port); NGINX_PORT=$(free_port)

cleanup() {
  [ -n "${kl_pid:-}" ] && kill "$kl_pid" 2>/dev/null || true
  [ -n "${nginx_pid:-}" ] && kill "$nginx_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "drop database if exists $db with (force)" postgres >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

$BIN migrate >/dev/null
KEYLEDGER_LISTEN="127.0.0.1:$KL_PORT" $BIN serve 2>"$work/keyledger.log" &
kl_pid=$!
cat >"$work/nginx.conf" <<NGINX
worker_processes auto;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/body; proxy_temp_path $work/proxy; fastcgi_temp_path $work/fcgi;
  uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
  server { listen 127.0.0.1:$NGINX_PORT; location / { return 204; } }
}
NGINX
"$NGINX" -p "$work" -c "$work/nginx.conf" &
nginx_pid=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$KL_PORT/healthz" >/dev/null 2>&1 && curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && break
  sleep 0.1
done

# An enterprise organization whose limit the benchmark cannot reach.
KEY=$($BIN org create --name Bench --plan enterprise --rate-limit 10000000 | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"]["key"])')
AUTH=(-H "Authorization: Bearer $KEY" -H "X-Original-Method: GET" -H "X-Original-URI: /api/experiences/1")
cat >"$work/verify.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"key": "$KEY", "scopes": ["read:experiences"], "environment": "live"}'
wrk.headers["Content-Type"] = "application/json"
LUA
# Warm the cache.
for _ in 1 2 3; do curl -fs "${AUTH[@]}" "http://127.0.0.1:$KL_PORT/v1/auth" >/dev/null; done

lookups() { curl -fs "http://127.0.0.1:$KL_PORT/metrics" | awk '/^keyledger_key_cache_database_lookups_total/ {print $2}'; }
transactions() { psql -tA -h 127.0.0.1 -U postgres -c "select xact_commit + xact_rollback from pg_stat_database where datname = '$db'" postgres; }

# wrk --latency output → "rps p50_ms p99_ms"
measure() {
  wrk -t"$THREADS" -c"$1" -d"$DURATION" --latency "${@:2}" >"$work/wrk.out"
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }' "$work/wrk.out"
}

lookups_before=$(lookups); tx_before=$(transactions)
read -r nginx_rps nginx_p50 nginx_p99 < <(measure "$CONNECTIONS" "http://127.0.0.1:$NGINX_PORT/")
read -r auth_rps auth_p50 auth_p99 < <(measure "$CONNECTIONS" "${AUTH[@]}" "http://127.0.0.1:$KL_PORT/v1/auth")
read -r verify_rps verify_p50 verify_p99 < <(measure "$CONNECTIONS" -s "$work/verify.lua" "http://127.0.0.1:$KL_PORT/v1/verify")

# About half of /v1/auth's throughput: connections that each pause 1 ms
# between requests, as many as half the rate needs.
paced_connections=$(python3 -c "print(max(1, round($auth_rps / 2 * (1 + $auth_p50) / 1000)))")
cat >"$work/paced.lua" <<LUA
function delay() return 1 end
LUA
read -r paced_rps paced_p50 paced_p99 < <(measure "$paced_connections" -s "$work/paced.lua" "${AUTH[@]}" "http://127.0.0.1:$KL_PORT/v1/auth")
lookups_after=$(lookups); tx_after=$(transactions)

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
printf '\n%-36s %12s %10s %10s %10s\n' "target (wrk -t$THREADS, $DURATION)" "requests/s" "p50 ms" "p99 ms" "vs nginx"
printf '%-36s %12s %10s %10s %10s\n' "nginx return 204 (-c$CONNECTIONS)" "$nginx_rps" "$nginx_p50" "$nginx_p99" "1.00"
printf '%-36s %12s %10s %10s %10s\n' "GET /v1/auth (-c$CONNECTIONS)" "$auth_rps" "$auth_p50" "$auth_p99" "$(ratio "$auth_rps" "$nginx_rps")"
printf '%-36s %12s %10s %10s %10s\n' "POST /v1/verify (-c$CONNECTIONS)" "$verify_rps" "$verify_p50" "$verify_p99" "$(ratio "$verify_rps" "$nginx_rps")"
printf '%-36s %12s %10s %10s %10s\n' "GET /v1/auth paced (-c$paced_connections)" "$paced_rps" "$paced_p50" "$paced_p99" "-"
echo
echo "key lookups that queried the database during the run: $(( lookups_after - lookups_before ))"
echo "database transactions during the run (usage flushes, listener, everything): $(( tx_after - tx_before ))"
