#!/usr/bin/env bash
# Issue 17's figures for the relay on Redis: one replica on Redis against the same replica in
# memory (pairs), three replicas on one Redis, on Sentinel and on a Redis Cluster (pairs/s and
# p99), the time from a primary's death to the first take on every replica
# (bench/topologies.py), and the Redis layer's calls per second against redis-benchmark at the
# same concurrency (bench/kv.sh). Everything on 127.0.0.1, on fresh servers.
#
#   bench/topologies.sh                    about 3 minutes
#   PAIRS_SECS=5 PAIRS_CONNS=16 bench/topologies.sh
#
# Prints Markdown tables and writes them to bench/out/topologies.md.
set -euo pipefail
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    case "$CARGO_TARGET_DIR" in
        /*) ;;
        *) CARGO_TARGET_DIR="$(pwd)/$CARGO_TARGET_DIR" ;;
    esac
    export CARGO_TARGET_DIR
fi
cd "$(dirname "$0")/.."
for tool in wrk redis-server redis-sentinel redis-cli redis-benchmark; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (Debian: wrk, redis-server, redis-sentinel, redis-tools)" >&2; exit 1; }
done
cargo build --release --locked >&2
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
mkdir -p bench/out
export PYTHONDONTWRITEBYTECODE=1
{
    python3 bench/topologies.py "$TARGET_DIR/release/oauth-relay"
    echo
    bench/kv.sh
} | tee bench/out/topologies.md
