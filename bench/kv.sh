#!/usr/bin/env bash
# Calls per second through the Redis layer (src/kv) against redis-benchmark at the same
# concurrency, on a fresh redis-server on a 127.0.0.1 free port. Every call is an EVALSHA of
# `return redis.call('INCR', KEYS[1])`.
#
#   bench/kv.sh               32 concurrent callers, 5 s per run
#   CALLERS=64 SECS=10 bench/kv.sh
#
# Rows: redis-benchmark (-c CALLERS, one connection per client, no pipelining); the layer with
# CALLERS tasks on two current-thread runtimes (as the server's event loops call it); the same
# with each call spawned onto one dedicated runtime thread (the design not taken); with
# CALLERS blocking threads (as handlers on the blocking pool would until they are async); and
# CALLERS threads with a synchronous connection each (the store's pool before this layer, without its hop to the
# blocking pool). All on the same cores as Redis.
set -euo pipefail
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    case "$CARGO_TARGET_DIR" in
        /*) ;;
        *) CARGO_TARGET_DIR="$(pwd)/$CARGO_TARGET_DIR" ;;
    esac
    export CARGO_TARGET_DIR
fi
cd "$(dirname "$0")/.."
CALLERS=${CALLERS:-32}
SECS=${SECS:-5}

cargo build --release --locked --example kv_bench >&2
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BENCH="$TARGET_DIR/release/examples/kv_bench"

DIR=$(mktemp -d)
REDIS_PID=""
cleanup() {
    if [ -n "$REDIS_PID" ] && kill -0 "$REDIS_PID" 2>/dev/null; then
        kill "$REDIS_PID"
        wait "$REDIS_PID" 2>/dev/null || true
    fi
    rm -rf "$DIR"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$DIR" \
    --logfile "$DIR/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do
    [ "$(redis-cli -p "$PORT" PING 2>/dev/null)" = PONG ] && break
    sleep 0.05
done
SHA=$(redis-cli -p "$PORT" SCRIPT LOAD "return redis.call('INCR', KEYS[1])")
N=$((CALLERS * 6000))

echo "# EVALSHA calls per second, $CALLERS concurrent callers, $(nproc) cores shared with redis-server"
echo
echo "| Client | calls/s |"
echo "|---|---|"
RB=$(redis-benchmark -p "$PORT" -c "$CALLERS" -n "$N" -q EVALSHA "$SHA" 1 bench:kv |
    tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | cut -d' ' -f1)
echo "| redis-benchmark -c $CALLERS -n $N EVALSHA | ${RB%.*} |"
for mode in loops handoff blocking sync; do
    case $mode in
        loops) what="kv: $CALLERS tasks on 2 event loops (Kv::run)" ;;
        handoff) what="kv: the same, each call handed to one runtime thread (JoinHandle)" ;;
        blocking) what="kv: $CALLERS blocking threads (Kv::run_blocking)" ;;
        sync) what="sync: $CALLERS threads, a connection each (no kv)" ;;
    esac
    echo "| $what | $("$BENCH" "redis://127.0.0.1:$PORT/0" "$mode" "$CALLERS" "$SECS") |"
done
