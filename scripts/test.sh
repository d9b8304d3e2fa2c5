#!/usr/bin/env bash
# The whole test suite on a fresh machine: makes sure PostgreSQL runs, then
# builds the workspace once and runs every test (unit, store, end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."

ensure_postgres() {
  if pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then return; fi
  echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 30); do
    pg_isready -h 127.0.0.1 -p 5432 -q && return
    sleep 1
  done
  echo "PostgreSQL did not start" >&2
  exit 1
}

ensure_postgres
cargo test --workspace --locked "$@"
