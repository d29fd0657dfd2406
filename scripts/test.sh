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
need openssl openssl       # a private CA for the rediss:// test (tests/replicas.rs)

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing test dependencies: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
fi

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --locked --no-fail-fast "$@"
else
  exec cargo test --locked --no-fail-fast "$@"
fi
