#!/usr/bin/env bash
# Runs every test the project has, the same way on a laptop and in CI. Installs the Debian
# packages the tests need when they are missing (the tests use real programs, not mocks).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need prlimit util-linux   # runs the relay with few file descriptors (robustness test)
need chroot coreutils     # runs the static binary in an empty root (container test)
need unshare util-linux
need chromium chromium     # a real browser follows a login link (tests/broker.rs)
need redis-server redis-server  # the Redis store runs against a real server (tests/store_suite.rs)
need redis-cli redis-tools
need redis-sentinel redis-sentinel  # Sentinel failovers (tests/kv.rs)
need openssl openssl       # a private CA for the rediss:// test (tests/replicas.rs)

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing test dependencies: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
fi

# A real OpenID Provider (node-oidc-provider) and the driver of the browser that signs in there
# (playwright-core), from npm at the versions in its package-lock.json (tests/support/oidc.rs).
oidc=tests/support/oidc-provider
if [ ! -f $oidc/node_modules/.package-lock.json ] || [ $oidc/package-lock.json -nt $oidc/node_modules/.package-lock.json ]; then
  if ! command -v npm >/dev/null 2>&1 \
    || ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 12) ? 0 : 1)'; then
    echo "the OpenID Provider tests need Node.js 20.12 or later and npm (Debian packages nodejs and npm; Debian 12's nodejs 18 is too old)" >&2
    exit 1
  fi
  echo "installing the OpenID Provider for the tests: npm ci in $oidc" >&2
  (cd $oidc && npm ci --no-audit --no-fund >&2)
fi

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --locked --no-fail-fast "$@"
else
  exec cargo test --locked --no-fail-fast "$@"
fi
