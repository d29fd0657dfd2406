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
need python3 python3        # Python tools the tests run (the virtual environment below)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)  # target/test-venv below
need curl curl             # docs/api.md's example, run as written (tests/retrieval_secret.rs)
need gcore gdb             # a core dump of the broker, searched for sealed tokens (tests/seal.rs)

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

# kubectl renders the Kustomize trees in deploy/ (tests/manifests.rs). Debian's archive has no
# package for it: kubectl 1.27 or later (which bundles Kustomize v5) must be installed already.
if ! command -v kubectl >/dev/null 2>&1 || ! kubectl kustomize --help >/dev/null 2>&1; then
  echo "the manifest tests need kubectl 1.27 or later (with 'kubectl kustomize') on the PATH" >&2
  exit 1
fi

# Python tools the tests run for real (schemathesis, the MCP SDK, kubernetes-validate, jwcrypto), pinned in
# tests/support/python/requirements.txt, in a virtual environment under the target directory
# (tests/support/python.rs looks there); reinstalled only when the pins change.
venv="${CARGO_TARGET_DIR:-target}/test-venv"
requirements=tests/support/python/requirements.txt
if ! cmp -s $requirements "$venv/requirements.txt"; then
  echo "installing the Python test tools into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r $requirements >&2
  cp $requirements "$venv/requirements.txt"
fi

if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --locked --no-fail-fast "$@"
else
  exec cargo test --locked --no-fail-fast "$@"
fi
