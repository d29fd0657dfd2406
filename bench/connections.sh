#!/usr/bin/env bash
# Kept connections' figures, against 127.0.0.1 only (bench/README.md, "Kept connections"):
#
#   bench/connections.sh               the release build in CARGO_TARGET_DIR (built if missing)
#
# 1. Access-token requests per second for a connection whose token is fresh (served without
#    asking the provider), with /health in the same run for the ratio: wrk -t2 -c32 for SECS
#    each, /health then the token route, on a single replica keeping connections in its redb
#    file, then on a replica keeping them in Redis (a fresh redis-server, appendfsync always).
# 2. The latency a refresh adds, the provider's own time excluded: one caller asks, one at a
#    time, for a token of REFRESHES connections with more life left (min_ttl) than their tokens
#    have, so each waits for its refresh; the fake GitHub's own handling time of each refresh
#    is subtracted (bench/connections.py).
# 3. Memory per connection: KEPT kept sign-ins, then a fresh replica on the same file: its VmRSS
#    before and after serving a token of every connection (so every record has been read; the
#    sign-ins' sessions, which the first replica held, are not counted).
#
# Needs wrk, redis-server and Python 3 (standard library only). Prints a Markdown table and
# writes it to bench/out/connections.md; raw output goes to bench/out/connections-*.txt. Every
# process started here is ended on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-10}
KEPT=${KEPT:-5000}
REFRESHES=${REFRESHES:-300}
OUT=bench/out
mkdir -p "$OUT"
export PYTHONDONTWRITEBYTECODE=1
UTIL=(python3 bench/util.py)
TARGET=${CARGO_TARGET_DIR:-target}
BIN=${OAUTH_RELAY_BIN:-$TARGET/release/oauth-relay}
if [ ! -x "$BIN" ]; then
    echo "building $BIN (cargo build --release --locked)" >&2
    cargo build --release --locked >&2
fi
for tool in wrk redis-server python3; do
    command -v $tool >/dev/null || { echo "connections.sh needs $tool" >&2; exit 1; }
done

PIDS=()
TMP=$(mktemp -d "${TMPDIR:-/tmp}/oauth-relay-conn.XXXXXX")
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export BROKER_TOKEN=bench-broker-token-0123456789
KEY="k1:$(head -c 32 /dev/urandom | base64)"
FAKE_PORT=$("${UTIL[@]}" free-port)
# Tokens live 10 minutes: fresh through the whole run (refreshes are asked for with min_ttl).
python3 bench/fake_github.py "$FAKE_PORT" --app 600 >"$OUT/connections-fake.txt" &
PIDS+=($!)

# Starts a broker with the provider `gh` on the fake and `$@` settings; sets PORT and PID.
start_relay() {
    PORT=$("${UTIL[@]}" free-port)
    env OAUTH_RELAY_PUBLIC_URL="http://127.0.0.1:$PORT" OAUTH_RELAY_BROKER_TOKEN="$BROKER_TOKEN" \
        OAUTH_RELAY_PROVIDERS=gh OAUTH_RELAY_PROVIDER_GH_KIND=github \
        OAUTH_RELAY_PROVIDER_GH_CLIENT_ID=bench-client OAUTH_RELAY_PROVIDER_GH_CLIENT_SECRET=bench-secret \
        OAUTH_RELAY_PROVIDER_GH_AUTHORIZE_URL="http://127.0.0.1:$FAKE_PORT/login/oauth/authorize" \
        OAUTH_RELAY_PROVIDER_GH_TOKEN_URL="http://127.0.0.1:$FAKE_PORT/login/oauth/access_token" \
        OAUTH_RELAY_PROVIDER_GH_API_URL="http://127.0.0.1:$FAKE_PORT" \
        OAUTH_RELAY_ENCRYPTION_KEY="$KEY" OAUTH_RELAY_MAX_SESSIONS=100000 \
        "$@" "$BIN" --host 127.0.0.1 --port "$PORT" --log-level warn 2>>"$OUT/connections-server.log" &
    PID=$!
    PIDS+=($PID)
    "${UTIL[@]}" wait-ready "$PORT" 10 || { echo "the relay did not start ($OUT/connections-server.log)" >&2; exit 1; }
}

# wrk's requests/s of $2 (health or token) on $1, with CONN_ID/CONN_CREDENTIAL for token.
rate() {
    local port=$1 what=$2 file="$OUT/connections-wrk-$3-$2.txt"
    if [ "$what" = health ]; then
        wrk -t2 -c32 -d"${SECS}s" "http://127.0.0.1:$port/health" >"$file"
    else
        wrk -t2 -c32 -d"${SECS}s" -s bench/conn_token.lua "http://127.0.0.1:$port" >"$file"
    fi
    grep -q "^NON200 0$" "$file" || [ "$what" = health ] || { echo "non-200 answers: $file" >&2; exit 1; }
    awk '/^Requests\/sec/ {print int($2)}' "$file"
}

ROWS=()
row() { ROWS+=("| $1 | $2 | $3 |"); }

# --- the single replica, connections in its redb file ---------------------------------------
start_relay OAUTH_RELAY_CONNECTIONS_FILE="$TMP/connections.redb"
python3 bench/connections.py fill "$PORT" "$KEPT" "$TMP/kept.txt" | tee "$OUT/connections-fill.txt"
read -r CONN_ID CONN_CREDENTIAL < "$TMP/kept.txt"
export CONN_ID CONN_CREDENTIAL
health=$(rate "$PORT" health redb)
token=$(rate "$PORT" token redb)
row "Fresh-token requests/s, single replica (redb)" "**$token**" "$((token * 100 / health)) % of /health ($health/s) in the same run; wrk -t2 -c32, ${SECS} s each"
kill "$PID"; wait "$PID" 2>/dev/null || true
# A fresh replica on the same file: what the connections cost it, every record read once.
start_relay OAUTH_RELAY_CONNECTIONS_FILE="$TMP/connections.redb"
idle=$("${UTIL[@]}" rss "$PID")
python3 bench/connections.py serve "$PORT" "$TMP/kept.txt" >"$OUT/connections-readall.txt"
full=$("${UTIL[@]}" rss "$PID")
kept=$(awk '/^FILLED/ {for (i = 1; i <= NF; i++) if ($i ~ /^n=/) print substr($i, 3)}' "$OUT/connections-fill.txt")
row "Memory per kept connection (redb)" "**$(( (full - idle) * 1024 / kept )) bytes**" "VmRSS of a fresh replica $((idle / 1024)) -> $((full / 1024)) MiB serving a token of each of $kept connections ($(sed -n 's/.*ok=\([0-9]*\).*/\1/p' "$OUT/connections-readall.txt") answered); the file: $(( $(stat -c %s "$TMP/connections.redb") / 1024 )) KiB"
tail -n "$REFRESHES" "$TMP/kept.txt" >"$TMP/refresh.txt"
python3 bench/connections.py refresh "$PORT" "$FAKE_PORT" "$TMP/refresh.txt" | tee "$OUT/connections-refresh.txt"
r=$(cat "$OUT/connections-refresh.txt")
get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$r"; }
row "Extra latency of a refresh, redb (p50 / p99)" "**$(get extra_p50_ms) / $(get extra_p99_ms) ms**" "a caller waited $(get wait_p50_ms) / $(get wait_p99_ms) ms, the fake GitHub's own handling $(get provider_p50_ms) ms (p50); $(get n) refreshes, one at a time"
kill "$PID"; wait "$PID" 2>/dev/null || true

# --- a replica on Redis ------------------------------------------------------------------------
REDIS_PORT=$("${UTIL[@]}" free-port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always \
    --dir "$TMP" >/dev/null &
PIDS+=($!)
until redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; do sleep 0.1; done
start_relay OAUTH_RELAY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
python3 bench/connections.py fill "$PORT" 200 "$TMP/kept-redis.txt" >"$OUT/connections-fill-redis.txt"
read -r CONN_ID CONN_CREDENTIAL < "$TMP/kept-redis.txt"
export CONN_ID CONN_CREDENTIAL
health=$(rate "$PORT" health redis)
token=$(rate "$PORT" token redis)
row "Fresh-token requests/s, on Redis" "**$token**" "$((token * 100 / health)) % of /health ($health/s) in the same run; Redis with appendfsync always on the same machine"
tail -n 100 "$TMP/kept-redis.txt" >"$TMP/refresh-redis.txt"
r=$(python3 bench/connections.py refresh "$PORT" "$FAKE_PORT" "$TMP/refresh-redis.txt" | tee "$OUT/connections-refresh-redis.txt")
row "Extra latency of a refresh, Redis (p50 / p99)" "**$(get extra_p50_ms) / $(get extra_p99_ms) ms**" "a caller waited $(get wait_p50_ms) / $(get wait_p99_ms) ms, the fake's own handling $(get provider_p50_ms) ms (p50); $(get n) refreshes"

{
    echo "| Figure | Result | Notes |"
    echo "|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} | tee "$OUT/connections.md"
