#!/usr/bin/env bash
# How fast the customer portal's pages answer with 1,000 keys in the
# organization (and 1,000 alerts, and a key with a week of usage): the
# release binary (`keyledger serve`), a signed-in session, N requests per
# page one after another, and the server's own time per request taken from
# its access log (elapsed_ms). Prints a table; the target is under 50 ms.
#
#   bash scripts/bench-portal.sh          # N=50 requests per page by default
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-50}

# BIN=target/debug/keyledger measures a debug build instead (slower).
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked --bin keyledger
  BIN=target/release/keyledger
fi
work=$(mktemp -d)
db="keyledger_portal_bench_$$"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db"
export KEYLEDGER_HASH_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
export KEYLEDGER_DATA_DIR="$work" KEYLEDGER_LISTEN="127.0.0.1:$port" RUST_LOG=info,sqlx=warn
base="http://127.0.0.1:$port"

cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "drop database if exists $db with (force)" postgres >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$BIN" serve > "$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
created=$("$BIN" org create --name "Bench Corp" --plan pro)
admin=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["key"]["key"])' "$created")
org=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["org"]["id"])' "$created")

BASE="$base" ADMIN="$admin" ORG="$org" N="$N" LOG="$work/server.log" python3 - <<'PY'
import concurrent.futures, json, os, re, statistics, subprocess, urllib.request, http.cookiejar

base, admin, org, n, log = os.environ["BASE"], os.environ["ADMIN"], os.environ["ORG"], int(os.environ["N"]), os.environ["LOG"]

def api(method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")

# 1,000 keys (999 + the admin key), created over the API by 8 clients.
types = ["secret", "public", "test"]
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    keys = list(pool.map(lambda i: api("POST", "/v1/keys", {"name": f"Service {i:04}", "type": types[i % 3]}), range(999)))
key = keys[0]
# A week of usage for one key and 1,000 alerts for the organization, written
# straight into their tables (as the projector and the alert jobs would).
db = os.environ.get("DATABASE_URL")
sql = f"""
insert into usage_rollups (key_id, org_id, granularity, bucket, requests, successful, failed, rate_limited)
select '{key["id"]}', '{org}', g, b, 100, 95, 5, 1
from (values ('hour', interval '1 hour'), ('day', interval '1 day')) as s(g, step),
     generate_series(date_trunc(g, now() - interval '30 days'), now(), step) as b;
insert into alerts (id, dedupe_key, kind, org_id, key_id, recipients, subject, body_text, body_html, status, next_attempt_at, created_at)
select gen_random_uuid(), 'bench:' || i, 'error_rate', '{org}', '{key["id"]}', array['ops@bench.example'],
       'Error rate of Service 0000', 'x', 'x', 'sent', now(), now() - i * interval '1 minute'
from generate_series(1, 1000) as i;
"""
subprocess.run(["psql", "-q", db, "-c", sql], check=True)

url = api("POST", "/v1/portal/sessions", {"user": "bench@bench.example"})["url"]
jar = http.cookiejar.CookieJar()
opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
opener.open(url).read()
page = opener.open(base + "/portal/keys").read().decode()
cursor = re.search(r'href="/portal/keys\?cursor=([^"]+)"', page).group(1)
pages = {
    "/portal/keys (first page of 1,000)": "/portal/keys",
    "/portal/keys?cursor=… (page 2)": f"/portal/keys?cursor={cursor}",
    "/portal/keys?status=inactive (no match)": "/portal/keys?status=inactive",
    "/portal/keys?type=test": "/portal/keys?type=test",
    "/portal/keys/new": "/portal/keys/new",
    "/portal/keys/{id} (24 hours)": f"/portal/keys/{key['id']}",
    "/portal/keys/{id}?period=7d": f"/portal/keys/{key['id']}?period=7d",
    "/portal/keys/{id}?period=30d": f"/portal/keys/{key['id']}?period=30d",
    "/portal/keys/{id}/edit": f"/portal/keys/{key['id']}/edit",
    "/portal/settings": "/portal/settings",
    "/portal/alerts (1,000 alerts)": "/portal/alerts",
}
for path in pages.values():  # warm up
    opener.open(base + path).read()
marks = {}
for label, path in pages.items():
    before = open(log).read().count("\n")
    for _ in range(n):
        with opener.open(base + path) as r:
            assert r.status == 200, (path, r.status)
            r.read()
    lines = open(log).read().splitlines()[before:]
    marks[label] = [float(m.group(1)) for m in (re.search(r"elapsed_ms=([0-9.]+)", l) for l in lines) if m]
print(f"\n{n} requests per page, one at a time; server time per request (access log), ms\n")
print(f"| page | p50 | p95 | max |")
print(f"| --- | ---: | ---: | ---: |")
worst = 0.0
for label, times in marks.items():
    times.sort()
    p95 = times[int(len(times) * 0.95) - 1]
    worst = max(worst, times[-1])
    print(f"| `{label}` | {statistics.median(times):.1f} | {p95:.1f} | {times[-1]:.1f} |")
print(f"\nslowest single request: {worst:.1f} ms (target: under 50 ms)")
PY
