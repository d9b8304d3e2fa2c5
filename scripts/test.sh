#!/usr/bin/env bash
# The whole test suite on a fresh machine: makes sure PostgreSQL runs and the
# Tansu broker, nginx, Chromium, Playwright and axe-core are installed, then
# builds the workspace once and runs every test (unit, store, end-to-end,
# Kafka), then the portal's browser tests against the built binary.
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

# The Kafka tests start their own brokers with Tansu, a Kafka-compatible
# broker from crates.io (about 7 minutes to build, once per machine).
ensure_tansu() {
  export PATH="$HOME/.cargo/bin:$PATH"
  if command -v tansu >/dev/null 2>&1; then return; fi
  echo "installing the Tansu broker (cargo install tansu)"
  cargo install tansu --locked --features dynostore,libsql
}

# The forward-auth test runs a real nginx (Debian's package).
ensure_nginx() {
  if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then return; fi
  echo "installing nginx"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
}

# The portal's browser tests: Debian's Chromium driven by Playwright (PyPI;
# its own browser download is not used), pytest, cryptography (to sign leak
# reports as a secret scanner does), and axe-core from npm in a
# git-ignored folder beside the tests.
ensure_browser_tools() {
  if [ ! -x /usr/bin/chromium ]; then
    echo "installing chromium"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
  if ! python3 -c 'import playwright, pytest, xdist, cryptography' 2>/dev/null; then
    echo "installing playwright, pytest, pytest-xdist and cryptography"
    python3 -m pip install --quiet playwright pytest pytest-xdist cryptography
  fi
  if [ ! -f tests/browser/node_modules/axe-core/axe.min.js ]; then
    echo "installing axe-core"
    npm install --prefix tests/browser --no-save --no-package-lock --no-audit --no-fund --silent axe-core@4.14.1
  fi
}

ensure_postgres
ensure_tansu
ensure_nginx
ensure_browser_tools
cargo test --workspace --locked "$@"
cargo build --locked --bin keyledger
python3 -m pytest tests/browser -q -n 2 -p no:cacheprovider
