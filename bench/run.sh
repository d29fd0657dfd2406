#!/usr/bin/env bash
# Benchmarks for oauth-relay, all against 127.0.0.1 only, each on a fresh server.
#
#   bench/run.sh                 run everything (about 2 minutes)
#   bench/run.sh pairs longpoll  run only the named benchmarks
#
# Benchmarks: size pairs slow memory longpoll burst fdrecovery broker signins replicas events
# (see bench/README.md).
# Prints a Markdown table and writes it to bench/out/results.md; raw tool output goes to
# bench/out/*.txt and the servers' stderr to bench/out/server.log.
# Durations can be shortened for a quick look: PAIRS_SECS (5), HEALTH_SECS (10), CHURN_SECS (15),
# EVENTS_N (20000 callbacks per completion-event throughput run).
set -euo pipefail

# A relative CARGO_TARGET_DIR means the caller's directory; cargo would read it against the
# directory we cd to below, so make it absolute first (as scripts/build-static.sh does).
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    case "$CARGO_TARGET_DIR" in
        /*) ;;
        *) CARGO_TARGET_DIR="$(pwd)/$CARGO_TARGET_DIR" ;;
    esac
    export CARGO_TARGET_DIR
fi
cd "$(dirname "$0")/.."

ALL=(size pairs slow memory longpoll burst fdrecovery broker signins replicas events)
PAIRS_SECS=${PAIRS_SECS:-5}
HEALTH_SECS=${HEALTH_SECS:-10}
CHURN_SECS=${CHURN_SECS:-15}
PAIRS_SETTINGS=(2 4 8 16) # wrk threads = connections (see pairs.lua for why they are equal)

# Wherever cargo builds: CARGO_TARGET_DIR, a cargo config's build.target-dir, or target/.
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps --locked |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BIN="$TARGET_DIR/release/oauth-relay"
OUT=bench/out
UTIL=(python3 bench/util.py)
# The helpers import bench/httpc.py; keep bench/ free of __pycache__ (it is not git-ignored).
export PYTHONDONTWRITEBYTECODE=1

if [ $# -eq 0 ]; then
    SELECTED=("${ALL[@]}")
else
    SELECTED=("$@")
    for b in "${SELECTED[@]}"; do
        [[ " ${ALL[*]} " == *" $b "* ]] || { echo "unknown benchmark '$b' (choose from: ${ALL[*]})" >&2; exit 2; }
    done
fi

# ---------------------------------------------------------------------------------------------
# Processes: every one started here is recorded and ended on exit, however the script ends.
SERVER_PID=""
CLIENT_PID=""
IDP_PID=""
REDIS_PID=""
REPLICA_PIDS=()
cleanup() {
    local pid
    for pid in "$CLIENT_PID" "$SERVER_PID" "$IDP_PID" "${REPLICA_PIDS[@]}" "$REDIS_PID"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every request here comes from one address: its share of the pending cap
# (OAUTH_RELAY_MAX_PENDING_PER_CLIENT, 1 % by default) would stop the fills long before the cap.
export OAUTH_RELAY_MAX_PENDING_PER_CLIENT=${OAUTH_RELAY_MAX_PENDING_PER_CLIENT:-1000000000}

# Starts a fresh server on a free loopback port (extra flags are passed on); sets PORT.
start_server() {
    PORT=$("${UTIL[@]}" free-port)
    echo "--- server on port $PORT $*" >>"$OUT/server.log"
    "$BIN" --host 127.0.0.1 --port "$PORT" --log-level warn "$@" 2>>"$OUT/server.log" &
    SERVER_PID=$!
    "${UTIL[@]}" wait-ready "$PORT" 10
}

stop_server() {
    kill "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=""
}

rss_mib() { awk '{printf "%.1f", $1 / 1024}' <<<"$("${UTIL[@]}" rss "$SERVER_PID")"; }
threads_of() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }

# key=value fields from the machine-readable lines the helper scripts print.
field() { sed -n "s/.*[[:space:]]$1=\([^ ]*\).*/\1/p" <<<"$2" | head -n1; }

# wrk prints latencies as 83.00us, 1.63ms, 1.07s or 1.00m; this turns one into milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : -1
        if (f < 0) print "?"; else printf (n * f < 1 ? "%.3f" : "%.2f"), n * f
    }'
}
wrk_pct() { to_ms "$(awk -v p="$1%" '$1 == p {print $2}' "$2")"; }
wrk_max() { to_ms "$(awk '$1 == "Latency" && NF >= 4 {print $4; exit}' "$1")"; }
wrk_rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
wrk_timeouts() { sed -n 's/.*timeout \([0-9]*\).*/\1/p' "$1" | head -n1 | grep . || echo 0; }

ROWS=()
NOTES=()
row() { ROWS+=("| $1 | $2 | $3 | $4 | $5 |"); }
note() { NOTES+=("$1"); }

# ---------------------------------------------------------------------------------------------
bench_size() {
    local bytes
    bytes=$(stat -c %s "$BIN")
    row size "release binary size" "$(awk -v b="$bytes" 'BEGIN {printf "%.2f MiB (%d bytes)", b / 1048576, b}')" \
        "-" "opt-level z, LTO, stripped"
}

bench_pairs() {
    local n file rps pairs line non200 wrong timeouts p50 p99 max rss best=0 best_n="" best_rps best_bad
    note ""
    note "**pairs by wrk setting** (${PAIRS_SECS} s each, fresh server each; wrk and the server share the machine's $(nproc) cores):"
    note ""
    note "| wrk | requests/s | pairs/s | non-200 | wrong code | wrk timeouts | p50 ms | p99 ms | max ms | server RSS after |"
    note "|---|---|---|---|---|---|---|---|---|---|"
    for n in "${PAIRS_SETTINGS[@]}"; do
        start_server
        file="$OUT/pairs-t$n-c$n.txt"
        wrk -t"$n" -c"$n" -d"${PAIRS_SECS}s" --latency -s bench/pairs.lua "http://127.0.0.1:$PORT/" >"$file"
        rss=$(rss_mib)
        stop_server
        rps=$(wrk_rps "$file")
        pairs=$(awk -v r="$rps" 'BEGIN {printf "%d", r / 2}')
        line=$(grep '^PAIRS ' "$file")
        non200=$(field non200 "$line")
        wrong=$(field wrong_code "$line")
        timeouts=$(wrk_timeouts "$file")
        p50=$(wrk_pct 50 "$file")
        p99=$(wrk_pct 99 "$file")
        max=$(wrk_max "$file")
        note "| -t$n -c$n | $rps | $pairs | $non200 | $wrong | $timeouts | $p50 | $p99 | $max | $rss MiB |"
        if [ "$pairs" -gt "$best" ]; then
            best=$pairs best_n=$n best_rps=$rps best_bad="non-200: $non200, wrong code: $wrong"
        fi
    done
    row pairs "callback-then-retrieve pairs/s, unique states" "**$best**/s ($best_rps req/s)" ">= 20,000/s" \
        "best of -t/-c ${PAIRS_SETTINGS[*]}: wrk -t$best_n -c$best_n -d${PAIRS_SECS}s; $best_bad; wrk and server share $(nproc) cores"
}

# /health latency with wrk; prints "p50 p99 max rps timeouts".
health_latency() {
    local file=$1
    wrk -t1 -c8 -d"${HEALTH_SECS}s" --latency "http://127.0.0.1:$PORT/health" >"$file"
    echo "$(wrk_pct 50 "$file") $(wrk_pct 99 "$file") $(wrk_max "$file") $(wrk_rps "$file") $(wrk_timeouts "$file")"
}

bench_slow() {
    local base loaded result open threads ready=""
    # 1,000 client sockets here plus 1,000 in the server, plus threads' descriptors.
    if [ "$(ulimit -n)" -lt 4096 ]; then ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)"; fi

    start_server
    read -r -a base <<<"$(health_latency "$OUT/slow-baseline.txt")"
    stop_server

    # The 1,000 slow clients all come from 127.0.0.1: one client to the relay, which would keep
    # only its share (256) of them; raised so that all 1,000 are held, as 1,000 clients would be.
    start_server --max-connections-per-client 1000
    python3 bench/slow_clients.py "$PORT" 1000 3 120 >"$OUT/slow-clients.txt" &
    CLIENT_PID=$!
    for _ in $(seq 300); do
        if grep -q '^READY' "$OUT/slow-clients.txt"; then ready=1; break; fi
        kill -0 "$CLIENT_PID" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$ready" ] || { echo "slow clients did not connect" >&2; exit 1; }
    read -r -a loaded <<<"$(health_latency "$OUT/slow-loaded.txt")"
    threads=$(threads_of "$SERVER_PID")
    kill -USR1 "$CLIENT_PID"
    wait "$CLIENT_PID" || true
    CLIENT_PID=""
    stop_server
    result=$(grep '^SLOW ' "$OUT/slow-clients.txt")
    open=$(field open "$result")

    row slow "/health p50 / p99, no slow clients" "${base[0]} ms / ${base[1]} ms" "-" \
        "wrk -t1 -c8 -d${HEALTH_SECS}s --latency; max ${base[2]} ms, ${base[3]} req/s, wrk timeouts ${base[4]}"
    row slow "/health p50 / p99, 1,000 slow clients connected" "**${loaded[0]} ms / ${loaded[1]} ms**" "-" \
        "same wrk run; max ${loaded[2]} ms, ${loaded[3]} req/s, wrk timeouts ${loaded[4]}; server had $threads threads"
    row slow "slow clients still connected at the end" "**$open / 1000**" "0: cut off at the total read deadline" \
        "a header byte every 3 s (read timeout 10 s); closed by server: $(field closed "$result"), answered early: $(field answered "$result"), held $(field held_secs "$result") s"
}

bench_memory() {
    local idle full active fill churn_file line churn_rss
    start_server
    sleep 1
    idle=$(rss_mib)
    fill=$(python3 bench/fill.py "$PORT" 100000 4 | tee "$OUT/memory-fill.txt")
    active=$("${UTIL[@]}" active "$PORT")
    sleep 1
    full=$(rss_mib)
    stop_server
    row memory "RSS idle" "**$idle MiB**" "< 5 MB" "VmRSS after start-up and one /health"
    row memory "RSS with 100,000 pending callbacks" "**$full MiB**" "< 64 MB" \
        "/health active_callbacks: $active; callbacks non-200: $(field non200 "$fill") of $(field sent "$fill") (filled in $(field secs "$fill") s)"

    # Churn: callbacks that are retrieved at once should cost nothing lasting beyond the
    # max_pending retrieved markers; this shows whether memory stays bounded under that load.
    start_server
    churn_file="$OUT/memory-churn.txt"
    wrk -t4 -c4 -d"${CHURN_SECS}s" -s bench/pairs.lua "http://127.0.0.1:$PORT/" >"$churn_file"
    churn_rss=$(rss_mib)
    stop_server
    line=$(grep '^PAIRS ' "$churn_file")
    row memory "RSS after ${CHURN_SECS} s of pairs (all retrieved)" "$churn_rss MiB" "-" \
        "$(field retrieved "$line") pairs (wrk -t4 -c4, pairs.lua), non-200: $(field non200 "$line"); retrieved markers are capped at max_pending (100,000)"
}

bench_longpoll() {
    local line
    start_server
    line=$(python3 bench/longpoll.py "$PORT" 200 | tee "$OUT/longpoll.txt")
    stop_server
    row longpoll "callback answered -> waiter answered, p50 / p99 / max" \
        "**$(field resp_p50 "$line") / $(field resp_p99 "$line") / $(field resp_max "$line") ms**" "< 5 ms" \
        "$(field n "$line") long-polls, failures: $(field failures "$line"); negative = waiter answered first (min $(field resp_min "$line") ms)"
    row longpoll "callback sent -> waiter answered, p50 / p99 / max" \
        "$(field sent_p50 "$line") / $(field sent_p99 "$line") / $(field sent_max "$line") ms" "-" \
        "includes the callback's own round trip"
}

# Broker mode against bench/slow_idp.py (a token endpoint that answers after IDP_DELAY s).
export BROKER_TOKEN=bench-broker-token-0123456789
start_broker() {
    local idp_port=$1
    shift
    PORT=$("${UTIL[@]}" free-port)
    echo "--- broker on port $PORT $*" >>"$OUT/server.log"
    WK_PUBLIC_BASE_URL="http://127.0.0.1:$PORT" WK_M365_CLIENT_ID=bench \
        WK_M365_TENANT_ID=11111111-2222-3333-4444-555555555555 WK_M365_BROKER_TOKEN="$BROKER_TOKEN" \
        WK_M365_LOGIN_BASE_URL="http://127.0.0.1:$idp_port" WK_M365_GRAPH_BASE_URL="http://127.0.0.1:$idp_port" \
        "$BIN" --host 127.0.0.1 --port "$PORT" --log-level warn "$@" 2>>"$OUT/server.log" &
    SERVER_PID=$!
    "${UTIL[@]}" wait-ready "$PORT" 10
}

bench_broker() {
    local idp_port file rps bad line idle full
    idp_port=$("${UTIL[@]}" free-port)
    python3 bench/slow_idp.py "$idp_port" 10 ana.silva@contoso.example &
    IDP_PID=$!
    sleep 0.5

    start_broker "$idp_port" --max-pending 1000000 --max-sessions 1000000
    file="$OUT/broker-sessions.txt"
    wrk -t2 -c8 -d"${PAIRS_SECS}s" -s bench/sessions.lua "http://127.0.0.1:$PORT/" >"$file"
    rps=$(wrk_rps "$file")
    bad=$(awk '/^NON200/ {print $2}' "$file")
    stop_server
    row broker "sessions created per second" "**$rps/s**" "-" \
        "wrk -t2 -c8 -d${PAIRS_SECS}s POST /m365/sessions (bench/sessions.lua); non-200: $bad"

    start_broker "$idp_port" --exchange-timeout-secs 30
    python3 bench/broker.py stuck "$PORT" 50 >"$OUT/broker-stuck.txt" &
    CLIENT_PID=$!
    sleep 2
    file="$OUT/broker-health.txt"
    wrk -t1 -c8 -d5s --latency "http://127.0.0.1:$PORT/health" >"$file"
    wait "$CLIENT_PID"
    CLIENT_PID=""
    stop_server
    line=$(tr '\n' ' ' <"$OUT/broker-stuck.txt")
    row broker "/health p50 / p99 while 50 sign-ins wait on a 10 s identity provider" \
        "**$(wrk_pct 50 "$file") ms / $(wrk_pct 99 "$file") ms**" "< 5 ms" \
        "wrk -t1 -c8 -d5s --latency, started 2 s into the stall; max $(wrk_max "$file") ms, $(wrk_rps "$file") req/s; sign-ins: $line"

    start_broker "$idp_port" --max-pending 1000000 --max-sessions 1000000
    sleep 1
    idle=$(rss_mib)
    python3 bench/broker.py fill "$PORT" 10000 >"$OUT/broker-fill.txt"
    sleep 1
    full=$(rss_mib)
    stop_server
    row broker "RSS idle / with 10,000 open sessions" "$idle MiB / **$full MiB**" "-" \
        "$(cat "$OUT/broker-fill.txt") (one keep-alive connection)"
    kill "$IDP_PID" 2>/dev/null || true
    wait "$IDP_PID" 2>/dev/null || true
    IDP_PID=""
}

# Complete broker sign-ins through a GitHub provider `gh` pointed at bench/fake_github.py
# (an asyncio fake of GitHub's OAuth app endpoints and REST API, on IDP_PID).
SIGNIN_SESSIONS=10000
start_fake_github() {
    FAKE_PORT=$("${UTIL[@]}" free-port)
    python3 bench/fake_github.py "$FAKE_PORT" "$@" >"$FAKE_OUT" 2>&1 &
    IDP_PID=$!
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$FAKE_PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "fake_github.py did not start" >&2
    exit 1
}

stop_fake_github() {
    kill "$IDP_PID" 2>/dev/null || true
    wait "$IDP_PID" 2>/dev/null || true
    IDP_PID=""
}

start_signin_broker() {
    PORT=$("${UTIL[@]}" free-port)
    echo "--- broker, provider gh = fake GitHub on $FAKE_PORT, on port $PORT $*" >>"$OUT/server.log"
    OAUTH_RELAY_PUBLIC_URL="http://127.0.0.1:$PORT" OAUTH_RELAY_BROKER_TOKEN="$BROKER_TOKEN" \
        OAUTH_RELAY_PROVIDERS=gh OAUTH_RELAY_PROVIDER_GH_KIND=github \
        OAUTH_RELAY_PROVIDER_GH_CLIENT_ID=bench-client OAUTH_RELAY_PROVIDER_GH_CLIENT_SECRET=bench-secret \
        OAUTH_RELAY_PROVIDER_GH_AUTHORIZE_URL="http://127.0.0.1:$FAKE_PORT/login/oauth/authorize" \
        OAUTH_RELAY_PROVIDER_GH_TOKEN_URL="http://127.0.0.1:$FAKE_PORT/login/oauth/access_token" \
        OAUTH_RELAY_PROVIDER_GH_API_URL="http://127.0.0.1:$FAKE_PORT" \
        "$BIN" --host 127.0.0.1 --port "$PORT" --log-level warn "$@" 2>>"$OUT/server.log" &
    SERVER_PID=$!
    "${UTIL[@]}" wait-ready "$PORT" 10
}

# CPU seconds (user + system) a process has used so far.
cpu_secs() { awk -v t="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / t}' "/proc/$1/stat"; }

bench_signins() {
    local file base line fails relay_cpu fake_cpu stuck ready="" idle_kib full_kib fill
    # Throughput: 8 threads, each an agent plus a browser, signing in over and over.
    FAKE_OUT="$OUT/signins-fake.txt"
    start_fake_github
    start_signin_broker --max-sessions 1000000
    file="$OUT/signins.txt"
    relay_cpu=$(cpu_secs "$SERVER_PID")
    fake_cpu=$(cpu_secs "$IDP_PID")
    python3 bench/signins.py "$PORT" 8 "$PAIRS_SECS" >"$file"
    relay_cpu=$(awk -v a="$relay_cpu" -v b="$(cpu_secs "$SERVER_PID")" 'BEGIN {printf "%.1f", b - a}')
    fake_cpu=$(awk -v a="$fake_cpu" -v b="$(cpu_secs "$IDP_PID")" 'BEGIN {printf "%.1f", b - a}')
    stop_server
    stop_fake_github
    line=$(grep '^SIGNINS ' "$file")
    fails=$(sed -n 's/^FAILURES //p' "$file")
    row signins "complete sign-ins/s: session, link, provider, callback (code exchange, /user, /user/emails), token" \
        "**$(field per_sec "$line")/s**" "-" \
        "bench/signins.py, 8 threads for $(field secs "$line") s against bench/fake_github.py; $(field n "$line") sign-ins, p50 / p99 $(field p50_ms "$line") / $(field p99_ms "$line") ms each; failures $(field failures "$line") ($fails); CPU used: relay $relay_cpu s, fake GitHub $fake_cpu s, client $(field cpu_secs "$line") s, of $(nproc) cores"

    # /health while 50 sign-ins wait on a token endpoint that answers after 10 s.
    FAKE_OUT="$OUT/signins-fake-slow.txt"
    start_fake_github --delay 10
    start_signin_broker --exchange-timeout-secs 30
    # The same wrk on the same relay with nothing waiting, for comparison (the machine is shared).
    base="$OUT/signins-health-idle.txt"
    wrk -t1 -c8 -d5s --latency "http://127.0.0.1:$PORT/health" >"$base"
    stuck="$OUT/signins-stuck.txt"
    python3 bench/signins.py --stuck "$PORT" 50 40 >"$stuck" &
    CLIENT_PID=$!
    for _ in $(seq 100); do
        if grep -q '^IN_FLIGHT' "$stuck"; then ready=1; break; fi
        kill -0 "$CLIENT_PID" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$ready" ] || { echo "the stuck sign-ins did not start" >&2; exit 1; }
    file="$OUT/signins-health.txt"
    wrk -t1 -c8 -d5s --latency "http://127.0.0.1:$PORT/health" >"$file"
    wait "$CLIENT_PID" || true
    CLIENT_PID=""
    stop_server
    stop_fake_github
    line=$(grep '^SIGNINS ' "$stuck")
    row signins "/health p50 / p99 while 50 GitHub sign-ins wait on a token endpoint taking 10 s" \
        "**$(wrk_pct 50 "$file") ms / $(wrk_pct 99 "$file") ms**" "< 5 ms" \
        "wrk -t1 -c8 -d5s --latency, started once the 50 callbacks were sent ($(sed -n 's/^IN_FLIGHT //p' "$stuck") in flight 0.5 s later); max $(wrk_max "$file") ms, $(wrk_rps "$file") req/s (just before, nothing waiting: $(wrk_pct 50 "$base") / $(wrk_pct 99 "$base") ms, max $(wrk_max "$base") ms); then $(field n "$line") of 50 completed (callback to tokens p50 $(field p50_ms "$line") ms), failures $(field failures "$line")"

    # Memory: VmRSS with N pending sessions (created, never opened) minus idle, over N.
    # (No provider is called: creating a session only stores it. FAKE_PORT is the last fake's.)
    start_signin_broker --max-sessions $((SIGNIN_SESSIONS * 2))
    sleep 1
    idle_kib=$("${UTIL[@]}" rss "$SERVER_PID")
    fill=$(python3 bench/signins.py --fill "$PORT" "$SIGNIN_SESSIONS" | tee "$OUT/signins-fill.txt")
    sleep 1
    full_kib=$("${UTIL[@]}" rss "$SERVER_PID")
    stop_server
    row signins "memory one pending sign-in session costs (GitHub provider)" \
        "**$(awk -v i="$idle_kib" -v f="$full_kib" -v n="$SIGNIN_SESSIONS" 'BEGIN {printf "%d bytes", (f - i) * 1024 / n}')**" \
        "< 8 KiB (budget.rs SESSION, which includes tokens)" \
        "(VmRSS with $SIGNIN_SESSIONS sessions - idle) / $SIGNIN_SESSIONS: $(awk -v k="$idle_kib" 'BEGIN {printf "%.1f", k / 1024}') MiB idle, $(awk -v k="$full_kib" 'BEGIN {printf "%.1f", k / 1024}') MiB full; POST /sessions on one keep-alive connection (signins.py --fill), non-200: $(field non200 "$fill"), $(field secs "$fill") s"
}

# Several replicas sharing one Redis (Debian's redis-server, started here on a free port).
REDIS_KEY="k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
start_replica() {
    local port
    port=$("${UTIL[@]}" free-port)
    OAUTH_RELAY_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" OAUTH_RELAY_ENCRYPTION_KEY="$REDIS_KEY" \
        "$BIN" --host 127.0.0.1 --port "$port" --log-level warn "$@" 2>>"$OUT/server.log" &
    REPLICA_PIDS+=("$!")
    "${UTIL[@]}" wait-ready "$port" 10
    REPLICA_PORTS+=("$port")
}

bench_replicas() {
    command -v redis-server >/dev/null || { apt-get install -y -qq redis-server redis-tools >&2; }
    local file total bad p mem_p50 redis_p50 line
    REDIS_PORT=$("${UTIL[@]}" free-port)
    # DEBUG SLEEP (the stall below) needs the debug command enabled for local clients.
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --enable-debug-command local >/dev/null 2>&1 &
    REDIS_PID=$!
    sleep 0.5
    REPLICA_PORTS=()
    start_replica; start_replica; start_replica

    # Three wrk processes, one per replica, all storing in and taking from the same Redis.
    total=0; bad=0
    for p in "${REPLICA_PORTS[@]}"; do
        PAIRS_PREFIX="r$p-" wrk -t2 -c2 -d"${PAIRS_SECS}s" -s bench/pairs.lua "http://127.0.0.1:$p/" >"$OUT/replicas-$p.txt" &
    done
    wait $(jobs -p | grep -v -e "$REDIS_PID" $(printf -- "-e %s " "${REPLICA_PIDS[@]}")) 2>/dev/null || true
    for p in "${REPLICA_PORTS[@]}"; do
        file="$OUT/replicas-$p.txt"
        total=$(awk -v t="$total" '/^Requests\/sec:/ {printf "%.0f", t + $2 / 2}' "$file")
        line=$(grep '^PAIRS ' "$file" || true)
        bad=$((bad + $(field non200 "$line")))
    done
    row replicas "callback-then-retrieve pairs/s, 3 replicas + 1 Redis" "**$total/s**" "-" \
        "three wrk -t2 -c2 -d${PAIRS_SECS}s, one per replica, at once; non-200: $bad; compare the single in-memory replica above; everything (3 replicas, Redis, 3 wrk) on 2 cores"

    # One store round trip: a take of an unknown state, one connection, memory vs Redis.
    file="$OUT/replicas-rtt-redis.txt"
    wrk -t1 -c1 -d3s --latency "http://127.0.0.1:${REPLICA_PORTS[0]}/api/callback/unknown" >"$file"
    redis_p50=$(wrk_pct 50 "$file")
    start_server
    file="$OUT/replicas-rtt-memory.txt"
    wrk -t1 -c1 -d3s --latency "http://127.0.0.1:$PORT/api/callback/unknown" >"$file"
    mem_p50=$(wrk_pct 50 "$file")
    stop_server
    row replicas "one store round trip (GET /api/callback/unknown p50, Redis vs memory)" \
        "**$redis_p50 ms vs $mem_p50 ms**" "-" "wrk -t1 -c1 -d3s --latency; the difference is one Lua take on Redis"

    # A one-second Redis stall (DEBUG SLEEP 1) in the middle of a /health measurement.
    file="$OUT/replicas-stall.txt"
    (sleep 1; redis-cli -p "$REDIS_PORT" DEBUG SLEEP 1 >/dev/null) &
    wrk -t1 -c4 -d3s --latency "http://127.0.0.1:${REPLICA_PORTS[0]}/health" >"$file"
    line=$(python3 - "${REPLICA_PORTS[1]}" "$REDIS_PORT" <<'PY'
import subprocess, sys, time, urllib.request, urllib.error
port, redis_port = sys.argv[1], sys.argv[2]
stall = subprocess.Popen(["redis-cli", "-p", redis_port, "DEBUG", "SLEEP", "1"], stdout=subprocess.DEVNULL)
time.sleep(0.1)
t = time.monotonic()
try:
    status = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/callback/x", timeout=5).status
except urllib.error.HTTPError as e:
    status = e.code
print(f"a request needing Redis during the stall: HTTP {status} after {(time.monotonic() - t) * 1000:.0f} ms")
stall.wait()
PY
)
    row replicas "/health p50 / p99 / max with a 1 s Redis stall mid-run" \
        "**$(wrk_pct 50 "$file") / $(wrk_pct 99 "$file") / $(wrk_max "$file") ms**" "-" \
        "wrk -t1 -c4 -d3s --latency, DEBUG SLEEP 1 after 1 s; /health reads a count refreshed in the background; $line (OAUTH_RELAY_REDIS_TIMEOUT_MS 500)"
    for p in "${REPLICA_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    REPLICA_PIDS=()
    kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=""
}

# The relay with 64 file descriptors, flooded past them and then released (prlimit execs the
# relay, so SERVER_PID is the relay itself).
bench_fdrecovery() {
    local line
    PORT=$("${UTIL[@]}" free-port)
    echo "--- fdrecovery on port $PORT" >>"$OUT/server.log"
    prlimit --nofile=64:64 "$BIN" --host 127.0.0.1 --port "$PORT" --log-level warn \
        --read-timeout-secs 60 --workers 2 2>>"$OUT/server.log" &
    SERVER_PID=$!
    "${UTIL[@]}" wait-ready "$PORT" 10
    line=$(python3 bench/fd_recovery.py "$PORT" 200 3 | tee "$OUT/fdrecovery.txt")
    stop_server
    row fdrecovery "seconds until /health answers after 200 connections on 64 descriptors close" \
        "**max $(field max "$line") s**" "recovers" \
        "3 rounds, each: 200 connections held 3 s, then closed; per round: $(sed 's/.*secs=\(\[[^]]*\]\).*/\1/' <<<"$line")"
}

bench_burst() {
    local line
    start_server
    line=$(python3 bench/burst.py "$PORT" 16 10 | tee "$OUT/burst.txt")
    stop_server
    row burst "16 connections opened at once, each sends GET /health" \
        "$(field within_100ms "$line")/16 answered within 100 ms; slowest $(field slowest "$line") s; unanswered after 10 s: $(field unanswered "$line")" \
        "- (all fast)" "fresh server, see bench/burst.py"
}

# Completion events: bench/events.py starts its own relays, receiver, Redis and replicas and
# prints finished rows for the table.
bench_events() {
    command -v redis-server >/dev/null || { apt-get install -y -qq redis-server redis-tools >&2; }
    local line
    python3 bench/events.py "$BIN" "${EVENTS_N:-20000}" >"$OUT/events.txt"
    while IFS= read -r line; do ROWS+=("$line"); done < <(grep '^| events |' "$OUT/events.txt")
}

# ---------------------------------------------------------------------------------------------
mkdir -p "$OUT"
: >"$OUT/server.log"
command -v wrk >/dev/null || { echo "installing wrk" >&2; apt-get install -y wrk >&2; }
echo "building release binary" >&2
cargo build --release --quiet >&2

for b in "${SELECTED[@]}"; do
    echo "running $b" >&2
    "bench_$b"
done

{
    echo "## oauth-relay benchmarks"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes'); load generators run on the same machine"
    echo
    echo "| Benchmark | Figure | Result | Aim | Settings / notes |"
    echo "|---|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
    [ ${#NOTES[@]} -eq 0 ] || printf '%s\n' "${NOTES[@]}"
} | tee "$OUT/results.md"
