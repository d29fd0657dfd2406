#!/usr/bin/env bash
# Front-door figures for oauth-relay, side by side in one run, against 127.0.0.1 only:
#
#   bench/front.sh                        everything (about 5 minutes on 2 cores)
#   bench/front.sh health latency         only the named sections
#
# Sections (details in bench/FRONT.md):
#   health   /health requests/s of the relay with its access log on (the default, stderr to a
#            file), of the relay with it off (--log-level warn) and of nginx answering a fixed 200
#            (access_log off), same wrk settings (wrk -t2 -c64), run in turn twice; each relay's
#            ratio to nginx, and how many access lines were written and dropped.
#   pairs    callback-then-retrieve pairs/s at 32 connections (wrk -t32 -c32 + bench/pairs.lua).
#   latency  /health p50/p99 (wrk -t1 -c1 --latency) with nothing else connected, with 5,000 idle
#            keep-alive connections held open, and with 1,000 half-open clients.
#   memory   VmRSS idle and with 100,000 pending callbacks (bench/fill.py), and per-item costs,
#            (RSS after N items - RSS before) / N on a fresh relay each: an idle connection
#            (nothing sent, and after one request), a parked long-poll, a pending callback with a
#            1,024-byte state, a broker session (when the binary has broker mode), a connection
#            holding a 15 KiB unfinished request head.
#   floods   /health p50/p99 (bench/probe.py, from 127.0.0.1) on a relay with the default
#            caps and shares, just before and then while ONE other client (bench/flood.py from 127.0.0.2)
#            keeps FLOOD_CONNS connections of one kind open, re-opening each one the relay
#            closes or refuses: half-sent heads, half-sent bodies, idle keep-alive connections,
#            long-polls; then with split listeners, the internal listener's /health (where the
#            probes go) while one client, and then 16 clients, flood the public listener.
#
# Environment:
#   OAUTH_RELAY_BIN   binary to measure (default ${CARGO_TARGET_DIR:-target}/release/oauth-relay,
#                     built with `cargo build --release --locked` when missing)
#   HEALTH_SECS (10)  each of the four /health wrk runs      PAIRS_SECS (5)  the pairs run
#   LAT_SECS (5)      each latency wrk run                   HOLD_SECS (120) holders' safety net
#   IDLE_CONNS (5000) HALF_OPEN (1000) LONGPOLLS (5000) LONG_CALLBACKS (20000)
#   HEADER_CONNS (1000) HEADER_BYTES (15360) BROKER_SESSIONS (10000) FILL_CALLBACKS (100000)
#   FLOOD_CONNS (2000) connections each flood keeps open    FLOOD_RATE (1000) its new ones a second
#
# Needs wrk and nginx (Debian: apt-get install -y wrk nginx-light) and Python 3 (standard
# library only); installs nothing. nginx runs in the foreground from its own temporary
# configuration, prefix and pid file (never the system's nginx or its files).
# Prints a Markdown table (figure, result, aim, notes) and writes it to bench/out/front.md; raw
# wrk and helper output go to bench/out/front-*.txt, the relay's stderr to bench/out/front-server.log.
# Every process started here (relay, nginx, helpers, wrk) is recorded and ended on exit.
set -euo pipefail
CALLER_DIR=$PWD
cd "$(dirname "$0")/.."
ROOT=$PWD

ALL=(health pairs latency memory floods)
HEALTH_SECS=${HEALTH_SECS:-10}
PAIRS_SECS=${PAIRS_SECS:-5}
LAT_SECS=${LAT_SECS:-5}
HOLD_SECS=${HOLD_SECS:-120}
IDLE_CONNS=${IDLE_CONNS:-5000}
HALF_OPEN=${HALF_OPEN:-1000}
LONGPOLLS=${LONGPOLLS:-5000}
LONG_CALLBACKS=${LONG_CALLBACKS:-20000}
HEADER_CONNS=${HEADER_CONNS:-1000}
export HEADER_BYTES=${HEADER_BYTES:-15360}
BROKER_SESSIONS=${BROKER_SESSIONS:-10000}
FILL_CALLBACKS=${FILL_CALLBACKS:-100000}
FLOOD_CONNS=${FLOOD_CONNS:-2000}
FLOOD_RATE=${FLOOD_RATE:-1000}

OUT=bench/out
# Every request here comes from one address: its share of the pending cap
# (OAUTH_RELAY_MAX_PENDING_PER_CLIENT, 1 % by default) would stop the fills long before the cap.
export OAUTH_RELAY_MAX_PENDING_PER_CLIENT=${OAUTH_RELAY_MAX_PENDING_PER_CLIENT:-1000000000}
UTIL=(python3 bench/util.py)
FRONT=(python3 bench/front.py)
# The helpers import bench/httpc.py; keep bench/ free of __pycache__ (it is not git-ignored).
export PYTHONDONTWRITEBYTECODE=1

if [ $# -eq 0 ]; then
    SELECTED=("${ALL[@]}")
else
    SELECTED=("$@")
    for s in "${SELECTED[@]}"; do
        [[ " ${ALL[*]} " == *" $s "* ]] || { echo "unknown section '$s' (choose from: ${ALL[*]})" >&2; exit 2; }
    done
fi

# ---------------------------------------------------------------------------------------------
# The binary: OAUTH_RELAY_BIN (relative to the caller's directory), else the release build in
# CARGO_TARGET_DIR (relative to the repository root), built only when missing.
if [ -n "${OAUTH_RELAY_BIN:-}" ]; then
    case $OAUTH_RELAY_BIN in /*) BIN=$OAUTH_RELAY_BIN ;; *) BIN=$CALLER_DIR/$OAUTH_RELAY_BIN ;; esac
    [ -x "$BIN" ] || { echo "OAUTH_RELAY_BIN=$OAUTH_RELAY_BIN is not an executable file" >&2; exit 1; }
else
    TARGET=${CARGO_TARGET_DIR:-target}
    case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
    BIN=$TARGET/release/oauth-relay
    if [ ! -x "$BIN" ]; then
        echo "building $BIN (cargo build --release --locked)" >&2
        CARGO_TARGET_DIR=$TARGET cargo build --release --locked >&2
    fi
fi

need() {
    command -v "$1" >/dev/null || {
        echo "front.sh needs '$1', which is not installed; on Debian: apt-get install -y $2" >&2
        exit 1
    }
}
need wrk wrk
need python3 python3
[[ " ${SELECTED[*]} " != *" health "* ]] || need nginx nginx-light

# What the binary offers: the new flags are passed only when its --help lists them, so the
# script also measures the tiny_http build (which exits on an unknown flag).
HELP=$("$BIN" --help 2>&1 || true)
has_flag() { grep -q -- "$1[ =<]" <<<"$HELP"; }
MAXCONN=()
if has_flag --max-connections; then MAXCONN=(--max-connections 10000); fi
# The held connections all come from 127.0.0.1, one client to the relay: its share is raised with
# the cap, or it would keep only its newest 256 (the floods section measures the shares).
if has_flag --max-connections-per-client; then MAXCONN+=(--max-connections-per-client 10000); fi
WAITERS_PER_CLIENT=()
if has_flag --max-waiters-per-client; then WAITERS_PER_CLIENT=(--max-waiters-per-client $((LONGPOLLS * 2))); fi
HAS_BROKER=""
if has_flag --public-base-url && has_flag --broker-token; then HAS_BROKER=1; fi

# 5,000 held connections need as many descriptors in the relay (it inherits this limit).
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 16384 ]; then
    ulimit -n 16384 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi

# ---------------------------------------------------------------------------------------------
# Processes: every one started here is recorded and ended on exit, however the script ends.
# Long-running tools (wrk, fill scripts) run in the background and are waited for, so a signal
# to this script ends them too (a foreground child would hold the trap until it finished).
SERVER_PID=""
LOGGED_PID=""
COUNTER_PID=""
NGINX_PID=""
HOLDER_PID=""
CHILD_PID=""
TMP=$(mktemp -d "${TMPDIR:-/tmp}/oauth-relay-front.XXXXXX")

# Ends one of our children: SIGTERM, then SIGKILL if it is still running after 10 s; reaps it.
running() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}
end_pid() {
    local pid=$1 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill "$pid" 2>/dev/null || true
    for i in $(seq 100); do
        running "$pid" || break
        sleep 0.1
    done
    if running "$pid"; then
        echo "pid $pid ignored SIGTERM for 10 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    # Clients first (a parked long-poll would hold the relay's graceful shutdown), then servers.
    end_pid "$CHILD_PID"
    end_pid "$HOLDER_PID"
    end_pid "$SERVER_PID"
    end_pid "$LOGGED_PID"
    end_pid "$COUNTER_PID"
    end_pid "$NGINX_PID"
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command in the background with stdout to FILE and waits for it; returns its status.
run_to() {
    local file=$1 rc=0
    shift
    "$@" >"$file" &
    CHILD_PID=$!
    wait "$CHILD_PID" || rc=$?
    CHILD_PID=""
    return "$rc"
}

# Starts a fresh relay on a free loopback port (extra flags are passed on); sets PORT.
start_server() {
    PORT=$("${UTIL[@]}" free-port)
    echo "--- relay on port $PORT $*" >>"$OUT/front-server.log"
    "$BIN" --host 127.0.0.1 --port "$PORT" --log-level warn "$@" 2>>"$OUT/front-server.log" &
    SERVER_PID=$!
    "${UTIL[@]}" wait-ready "$PORT" 10 || { echo "the relay did not start (see $OUT/front-server.log)" >&2; exit 1; }
}

stop_server() {
    end_pid "$SERVER_PID"
    SERVER_PID=""
}

# A second relay, with its access log on (the default level, one JSON line per request) and its
# stderr a pipe, as a container runtime reads it (not a file: a run writes hundreds of MB of
# lines), read by `grep -c`, cheap enough not to be what limits the relay; it writes how many
# access lines reached stderr to FILE when the relay has exited. Sets LOGGED_PORT, LOGGED_PID and
# COUNTER_PID.
start_logged() {
    local fifo=$TMP/stderr.fifo
    LOGGED_PORT=$("${UTIL[@]}" free-port)
    echo "--- relay on port $LOGGED_PORT with its access log on, stderr to grep -c" >>"$OUT/front-server.log"
    mkfifo "$fifo"
    { grep -cF '"event":"request"' <"$fifo" || true; } >"$1" &
    COUNTER_PID=$!
    "$BIN" --host 127.0.0.1 --port "$LOGGED_PORT" 2>"$fifo" &
    LOGGED_PID=$!
    "${UTIL[@]}" wait-ready "$LOGGED_PORT" 10 || { echo "the relay did not start" >&2; exit 1; }
}

# nginx answering a fixed 200 on a free loopback port, from a configuration in $TMP.
start_nginx() {
    local prefix=$TMP/nginx conf temps="" t
    NGINX_PORT=$("${UTIL[@]}" free-port)
    mkdir -p "$prefix"
    conf=$prefix/nginx.conf
    # Debian's build has absolute temp paths under /var/lib/nginx: point every one this build
    # knows (nginx -V) into the prefix, so nothing outside it is created or used.
    for t in client_body proxy fastcgi uwsgi scgi; do
        if [ "$t" = client_body ] || nginx -V 2>&1 | grep -q -- "--http-$t-temp-path"; then
            temps+="    ${t}_temp_path $prefix/tmp-$t;"$'\n'
        fi
    done
    cat >"$conf" <<EOF
worker_processes 2;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
$temps    server {
        listen 127.0.0.1:$NGINX_PORT;
        default_type application/json;
        location / { return 200 '{"status":"healthy"}'; }
    }
}
EOF
    nginx -t -q -e "$prefix/error.log" -c "$conf" -p "$prefix" \
        || { echo "nginx rejected $conf:" >&2; cat "$prefix/error.log" >&2; exit 1; }
    nginx -e "$prefix/error.log" -c "$conf" -p "$prefix" -g 'daemon off;' &
    NGINX_PID=$!
    "${UTIL[@]}" wait-ready "$NGINX_PORT" 10 || { echo "nginx did not start:" >&2; cat "$prefix/error.log" >&2; exit 1; }
}

rss_kib() { "${UTIL[@]}" rss "$SERVER_PID"; }
# CPU seconds (user + system) a process has used so far.
cpu_secs() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }
# CPU time a process has used, user and system, in clock ticks (/proc/PID/stat after its name).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
fds_of() { "${FRONT[@]}" fds "$1"; }

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
wrk_rps() { awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$1"; }
wrk_timeouts() { sed -n 's/.*timeout \([0-9]*\).*/\1/p' "$1" | head -n1 | grep . || echo 0; }
wrk_errors() {
    local e n
    e=$(sed -n 's/^ *Socket errors: //p' "$1")
    n=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$1")
    echo "socket errors: ${e:-none}; non-2xx: ${n:-0}"
}

ROWS=()
row() { ROWS+=("| $1 | $2 | $3 | $4 |"); }
# 100000 -> 100,000 (for labels).
commas() { sed ':a; s/\B[0-9]\{3\}\>/,&/; ta' <<<"$1"; }

# Starts `front.py hold PORT COUNT MODE` against the current relay and waits for READY; sets
# HOLD_FILE and HOLD_READY (the READY line).
start_holder() {
    local count=$1 mode=$2 i
    HOLD_FILE=$OUT/front-hold-$SECTION-$mode.txt
    "${FRONT[@]}" hold "$PORT" "$count" "$mode" "$HOLD_SECS" >"$HOLD_FILE" 2>&1 &
    HOLDER_PID=$!
    HOLD_READY=""
    for i in $(seq 1200); do
        HOLD_READY=$(grep '^READY' "$HOLD_FILE" || true)
        [ -z "$HOLD_READY" ] || return 0
        kill -0 "$HOLDER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "front.py hold $count $mode did not get ready" >&2
    exit 1
}

# Ends the holder (SIGUSR1: it checks every connection, prints HOLD ..., closes them); sets HOLD_LINE.
stop_holder() {
    kill -USR1 "$HOLDER_PID" 2>/dev/null || true
    wait "$HOLDER_PID" || true
    HOLDER_PID=""
    HOLD_LINE=$(grep '^HOLD' "$HOLD_FILE" || echo "HOLD (no report)")
}

hold_summary() {
    echo "at the end $(field open "$HOLD_LINE") still open, $(field closed "$HOLD_LINE") closed by the relay, $(field answered "$HOLD_LINE") answered (statuses $(field answer_statuses "$HOLD_LINE")); $(field failed "$HOLD_READY") failed to connect"
}

# ---------------------------------------------------------------------------------------------
section_health() {
    local i file logged=() quiet=() nginx=() rl rq n ratio_l ratio_q log=$TMP/access-counts
    local lines dropped answered answered_q t0 cpu_l=0 cpu_q=0 us_l us_q
    start_logged "$log"
    start_server
    start_nginx
    for i in 1 2; do
        file=$OUT/front-health-logged-$i.txt
        t0=$(cpu_ticks "$LOGGED_PID")
        run_to "$file" wrk -t2 -c64 -d"${HEALTH_SECS}s" "http://127.0.0.1:$LOGGED_PORT/health"
        cpu_l=$((cpu_l + $(cpu_ticks "$LOGGED_PID") - t0))
        logged+=("$(wrk_rps "$file")")
        file=$OUT/front-health-relay-$i.txt
        t0=$(cpu_ticks "$SERVER_PID")
        run_to "$file" wrk -t2 -c64 -d"${HEALTH_SECS}s" "http://127.0.0.1:$PORT/health"
        cpu_q=$((cpu_q + $(cpu_ticks "$SERVER_PID") - t0))
        quiet+=("$(wrk_rps "$file")")
        file=$OUT/front-health-nginx-$i.txt
        run_to "$file" wrk -t2 -c64 -d"${HEALTH_SECS}s" "http://127.0.0.1:$NGINX_PORT/health"
        nginx+=("$(wrk_rps "$file")")
    done
    # Lines the relay dropped rather than delay requests (stderr not read fast enough), then
    # SIGTERM: it writes what its log still holds before it exits; the counter then ends.
    dropped=$(python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
        "http://127.0.0.1:$LOGGED_PORT/metrics" | awk '$1 == "oauth_relay_log_lines_dropped_total" {print $2}')
    end_pid "$LOGGED_PID"
    LOGGED_PID=""
    wait "$COUNTER_PID" || true
    COUNTER_PID=""
    stop_server
    end_pid "$NGINX_PID"
    NGINX_PID=""
    mean() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f", (a + b) / 2}'; }
    percent() { awk -v r="$1" -v n="$2" 'BEGIN {printf "%.0f", (n > 0 ? 100 * r / n : 0)}'; }
    rl=$(mean "${logged[@]}")
    rq=$(mean "${quiet[@]}")
    n=$(mean "${nginx[@]}")
    ratio_l=$(percent "$rl" "$n")
    ratio_q=$(percent "$rq" "$n")
    lines=$(cat "$log")
    answered=$(cat "$OUT"/front-health-logged-[12].txt | awk '$2 == "requests" && $3 == "in" {s += $1} END {print s + 0}')
    answered_q=$(cat "$OUT"/front-health-relay-[12].txt | awk '$2 == "requests" && $3 == "in" {s += $1} END {print s + 0}')
    # CPU per request: what the log costs, whatever else runs on the machine meanwhile.
    per_request() { awk -v c="$1" -v n="$2" -v t="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (n > 0 ? c / t * 1e6 / n : 0)}'; }
    us_l=$(per_request "$cpu_l" "$answered")
    us_q=$(per_request "$cpu_q" "$answered_q")
    row "/health req/s, oauth-relay, access log on (runs 1, 4)" "**$rl**/s (${logged[0]}, ${logged[1]})" "-" \
        "the default --log-level info, stderr a pipe read by grep -c; wrk -t2 -c64 -d${HEALTH_SECS}s each; run 1: $(wrk_errors "$OUT/front-health-logged-1.txt"); run 4: $(wrk_errors "$OUT/front-health-logged-2.txt"); $(commas "$lines") access lines written, $(commas "${dropped:-?}") dropped (/metrics), wrk counted $(commas "$answered") answers (plus start-up probes)"
    row "/health req/s, oauth-relay, access log off (runs 2, 5)" "**$rq**/s (${quiet[0]}, ${quiet[1]})" "-" \
        "--log-level warn; run 2: $(wrk_errors "$OUT/front-health-relay-1.txt"); run 5: $(wrk_errors "$OUT/front-health-relay-2.txt")"
    row "/health req/s, nginx fixed 200 (runs 3, 6)" "**$n**/s (${nginx[0]}, ${nginx[1]})" "-" \
        "$(nginx -v 2>&1 | sed 's/.*: //'), worker_processes 2, access_log off, return 200 '{\"status\":\"healthy\"}'"
    row "/health relay / nginx, access log on" "**$ratio_l %**" ">= 70 %" \
        "means of the two runs each; wrk, the relays and nginx share $(nproc) cores"
    row "/health relay / nginx, access log off" "**$ratio_q %**" ">= 90 %" \
        "the same runs"
    row "relay CPU per /health request, access log on / off" "**$us_l / $us_q µs**" "-" \
        "user + system time of each relay process during its two wrk runs (/proc/PID/stat), divided by the answers wrk counted: the access log's own cost, less sensitive than requests/s to what else runs on the machine"
}

section_pairs() {
    local file line rps pairs ceiling health
    start_server
    start_nginx
    file=$OUT/front-pairs-c32.txt
    run_to "$file" wrk -t32 -c32 -d"${PAIRS_SECS}s" --latency -s bench/pairs.lua "http://127.0.0.1:$PORT/"
    # The same load generator against the cheapest answers there are, for scale: pairs.lua needs
    # one wrk thread per connection, and 32 wrk threads on these cores cost the server too.
    run_to "$OUT/front-pairs-health-c32.txt" wrk -t32 -c32 -d"${PAIRS_SECS}s" "http://127.0.0.1:$PORT/health"
    run_to "$OUT/front-pairs-nginx-c32.txt" wrk -t32 -c32 -d"${PAIRS_SECS}s" "http://127.0.0.1:$NGINX_PORT/health"
    stop_server
    end_pid "$NGINX_PID"
    NGINX_PID=""
    rps=$(wrk_rps "$file")
    pairs=$(awk -v r="$rps" 'BEGIN {printf "%d", r / 2}')
    health=$(wrk_rps "$OUT/front-pairs-health-c32.txt")
    ceiling=$(wrk_rps "$OUT/front-pairs-nginx-c32.txt")
    line=$(grep '^PAIRS ' "$file" || echo "PAIRS (no report)")
    row "callback-then-retrieve pairs/s, 32 connections" "**$pairs**/s ($rps req/s)" ">= 35,000/s" \
        "wrk -t32 -c32 -d${PAIRS_SECS}s -s bench/pairs.lua (threads = connections, see pairs.lua); non-200: $(field non200 "$line"), wrong code: $(field wrong_code "$line"), wrk timeouts: $(wrk_timeouts "$file"); p50 $(wrk_pct 50 "$file") ms, p99 $(wrk_pct 99 "$file") ms"
    row "same load generator (wrk -t32 -c32), /health: oauth-relay / nginx fixed 200" "$health / $ceiling req/s" "-" \
        "the ceiling of this machine and load generator: 35,000 pairs/s needs 70,000 requests/s"
}

# /health latency at low load (one connection, one request at a time) into FILE.
latency_run() {
    run_to "$1" wrk -t1 -c1 -d"${LAT_SECS}s" --latency "http://127.0.0.1:$PORT/health"
}

latency_row() {
    local label=$1 file=$2 notes=$3
    row "$label" "$(wrk_pct 50 "$file") ms / **$(wrk_pct 99 "$file") ms**" "p99 < 5 ms" \
        "wrk -t1 -c1 -d${LAT_SECS}s --latency: max $(wrk_max "$file") ms, $(wrk_rps "$file") req/s, $(wrk_errors "$file")$notes"
}

section_latency() {
    local file fds0 flags="${MAXCONN[*]:-(no --max-connections: not in this binary)}"
    start_server "${MAXCONN[@]}"
    file=$OUT/front-latency-alone.txt
    latency_run "$file"
    latency_row "/health p50 / p99, nothing else connected" "$file" "; relay flags: $flags"

    fds0=$(fds_of "$SERVER_PID")
    start_holder "$IDLE_CONNS" request
    "${FRONT[@]}" wait-fds "$SERVER_PID" $((fds0 + IDLE_CONNS)) >/dev/null || true
    file=$OUT/front-latency-idle.txt
    latency_run "$file"
    stop_holder
    stop_server
    latency_row "/health p50 / p99, $(commas "$IDLE_CONNS") idle keep-alive connections" "$file" \
        "; each connection sent one GET /health, read the answer, then nothing (connected in $(field connect_secs "$HOLD_READY") s); $(hold_summary)"

    start_server "${MAXCONN[@]}"
    fds0=$(fds_of "$SERVER_PID")
    start_holder "$HALF_OPEN" partial
    "${FRONT[@]}" wait-fds "$SERVER_PID" $((fds0 + HALF_OPEN)) >/dev/null || true
    file=$OUT/front-latency-halfopen.txt
    latency_run "$file"
    stop_holder
    stop_server
    latency_row "/health p50 / p99, $(commas "$HALF_OPEN") half-open clients" "$file" \
        "; each sent \`GET /health HTT\` and nothing more; $(hold_summary)"
}

# (RSS after COUNT held connections of MODE - RSS before) / COUNT on a fresh relay started with
# MAXCONN and any further flags given; adds a row.
per_connection() {
    local count=$1 mode=$2 label=$3 aim=$4 what=$5 before after fds0
    shift 5
    start_server "${MAXCONN[@]}" "$@"
    sleep 0.5
    before=$(rss_kib)
    fds0=$(fds_of "$SERVER_PID")
    start_holder "$count" "$mode"
    "${FRONT[@]}" wait-fds "$SERVER_PID" $((fds0 + count)) >/dev/null || true
    sleep 1
    after=$(rss_kib)
    stop_holder
    stop_server
    per_item_row "$label" "$before" "$after" "$count" "$aim" \
        "$what; N=$count; $(hold_summary) (a per-item figure needs all N open)"
}

# Adds a per-item row: (after - before) / count, KiB in, bytes and kB out.
per_item_row() {
    local label=$1 before=$2 after=$3 count=$4 aim=$5 notes=$6 per
    per=$(awk -v a="$after" -v b="$before" -v n="$count" 'BEGIN {
        x = (a - b) * 1024 / n
        if (x >= 1000) printf "%.1f kB (%.0f bytes)", x / 1000, x; else printf "%.0f bytes", x }')
    row "$label" "**$per**" "$aim" "$notes; VmRSS $(mib "$before") -> $(mib "$after") MiB"
}

section_memory() {
    local idle full fill active before after line ok flags
    start_server
    sleep 1
    idle=$(rss_kib)
    run_to "$OUT/front-memory-fill.txt" python3 bench/fill.py "$PORT" "$FILL_CALLBACKS" 4 || true
    fill=$(cat "$OUT/front-memory-fill.txt")
    active=$("${UTIL[@]}" active "$PORT")
    sleep 1
    full=$(rss_kib)
    stop_server
    row "RSS idle" "**$(mib "$idle") MiB**" "-" "VmRSS after start-up and one /health"
    row "RSS with $(commas "$FILL_CALLBACKS") pending callbacks" "**$(mib "$full") MiB**" "-" \
        "bench/fill.py; /health active_callbacks: $active; non-200: $(field non200 "$fill") of $(field sent "$fill"); per callback (short state): $(awk -v a="$full" -v b="$idle" -v n="$FILL_CALLBACKS" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}') bytes"

    per_connection "$IDLE_CONNS" none "per idle connection (nothing sent)" "12 kB" \
        "connected, never sent a byte"
    per_connection "$IDLE_CONNS" request "per idle keep-alive connection (after one request)" "12 kB" \
        "one GET /health answered, then nothing"
    per_connection "$LONGPOLLS" longpoll "per parked long-poll, connection included" "16 kB" \
        "GET /api/callback/{distinct state}?wait=60, still parked when measured (answered = not parked); --max-waiters $((LONGPOLLS * 2))" \
        --max-waiters $((LONGPOLLS * 2)) "${WAITERS_PER_CLIENT[@]}"

    # Room for all N: twice as many entries and, where the store also has a byte budget, 4 KiB
    # per entry (about three times what one counts).
    flags=(--max-pending $((LONG_CALLBACKS * 2)))
    if has_flag --max-pending-bytes; then flags+=(--max-pending-bytes $((LONG_CALLBACKS * 4096))); fi
    start_server "${flags[@]}"
    sleep 0.5
    before=$(rss_kib)
    run_to "$OUT/front-memory-long.txt" "${FRONT[@]}" fill-long "$PORT" "$LONG_CALLBACKS" 1024 100 4 || true
    sleep 1
    after=$(rss_kib)
    stop_server
    line=$(cat "$OUT/front-memory-long.txt")
    ok=$(field ok "$line")
    # Divided by the callbacks actually stored; a shortfall is shown in bold.
    if [ "${ok:-0}" -gt 0 ]; then
        per_item_row "per pending callback, 1,024-byte state, 100-byte code" "$before" "$after" \
            "$ok" "-" "N=$LONG_CALLBACKS sent (front.py fill-long, 4 keep-alive connections), $( [ "$ok" = "$LONG_CALLBACKS" ] && echo "all stored" || echo "**only $ok stored**, statuses $(field statuses "$line")"); relay flags: ${flags[*]}"
    else
        row "per pending callback, 1,024-byte state, 100-byte code" "not measured" "-" "no callback was stored: $line"
    fi

    if [ -n "$HAS_BROKER" ]; then
        broker_session
    else
        row "per broker session" "not measured" "-" "this binary's --help lists no --public-base-url/--broker-token"
    fi

    per_connection "$HEADER_CONNS" header "per connection holding a $(commas "$HEADER_BYTES")-byte unfinished head" "-" \
        "request line + X-Fill headers totalling $HEADER_BYTES bytes, no blank line; default --max-header-bytes$(has_flag --max-header-bytes || echo ' (flag not in this binary)')"
}

# Broker mode (as in run.sh's bench_broker); creating a session contacts no identity provider,
# and its URLs point at a closed loopback port so nothing could leave the machine anyway.
broker_session() {
    local before after line unused flags=(--max-pending 1000000)
    # Room for all N where sessions have their own cap.
    if has_flag --max-sessions; then flags+=(--max-sessions $((BROKER_SESSIONS * 2))); fi
    unused=$("${UTIL[@]}" free-port)
    PORT=$("${UTIL[@]}" free-port)
    export BROKER_TOKEN=bench-broker-token-0123456789
    echo "--- broker on port $PORT ${flags[*]}" >>"$OUT/front-server.log"
    WK_PUBLIC_BASE_URL="http://127.0.0.1:$PORT" WK_M365_CLIENT_ID=bench \
        WK_M365_TENANT_ID=11111111-2222-3333-4444-555555555555 WK_M365_BROKER_TOKEN="$BROKER_TOKEN" \
        WK_M365_LOGIN_BASE_URL="http://127.0.0.1:$unused" WK_M365_GRAPH_BASE_URL="http://127.0.0.1:$unused" \
        "$BIN" --host 127.0.0.1 --port "$PORT" --log-level warn "${flags[@]}" 2>>"$OUT/front-server.log" &
    SERVER_PID=$!
    if ! "${UTIL[@]}" wait-ready "$PORT" 10; then
        stop_server
        row "per broker session" "not measured" "-" "the broker did not start (see $OUT/front-server.log)"
        return
    fi
    sleep 0.5
    before=$(rss_kib)
    if ! run_to "$OUT/front-memory-broker.txt" python3 bench/broker.py fill "$PORT" "$BROKER_SESSIONS"; then
        stop_server
        row "per broker session" "not measured" "-" "bench/broker.py fill failed (see $OUT/front-memory-broker.txt)"
        return
    fi
    sleep 1
    after=$(rss_kib)
    stop_server
    line=$(cat "$OUT/front-memory-broker.txt")
    per_item_row "per broker session" "$before" "$after" "$BROKER_SESSIONS" "-" \
        "N=$BROKER_SESSIONS POST /m365/sessions on one keep-alive connection (bench/broker.py fill: $line); relay flags: ${flags[*]}"
}

# Starts `flood.py PORT MODE COUNT ...` (on HOLDER_PID, so the exit trap ends it) and waits for
# READY; sets FLOOD_FILE and FLOOD_READY.
start_flood() {
    local port=$1 mode=$2 count=$3 tag=$4 i
    shift 4
    FLOOD_FILE=$OUT/front-flood-$tag.txt
    python3 bench/flood.py "$port" "$mode" "$count" --rate "$FLOOD_RATE" --secs "$HOLD_SECS" "$@" >"$FLOOD_FILE" 2>&1 &
    HOLDER_PID=$!
    FLOOD_READY=""
    for i in $(seq 600); do
        FLOOD_READY=$(grep '^READY' "$FLOOD_FILE" || true)
        [ -z "$FLOOD_READY" ] || return 0
        kill -0 "$HOLDER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "flood.py $mode did not get ready (see $FLOOD_FILE)" >&2
    exit 1
}

# The relay's CPU over 3 s of the flood alone, as a share of one core; sets FLOOD_CPU.
flood_cpu() {
    local cpu0
    cpu0=$(cpu_secs "$SERVER_PID")
    sleep 3
    FLOOD_CPU=$(awk -v a="$cpu0" -v b="$(cpu_secs "$SERVER_PID")" 'BEGIN {printf "%.0f %%", (b - a) * 100 / 3}')
}

# Ends the flood (SIGUSR1: it counts what it holds and prints FLOOD ...); sets FLOOD_LINE.
stop_flood() {
    kill -USR1 "$HOLDER_PID" 2>/dev/null || true
    wait "$HOLDER_PID" || true
    HOLDER_PID=""
    FLOOD_LINE=$(grep '^FLOOD' "$FLOOD_FILE" || echo "FLOOD (no report)")
}

# The relay's counters of shares and caps, from /metrics on PORT (the first argument).
share_counters() {
    python3 - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode()
m = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in text.splitlines() if line and not line.startswith("#")}
q = lambda share: m.get(f'oauth_relay_quota_refused_total{{share="{share}"}}', "n/a")
print(f"relay counted: held to a share {q('connections')} times (connections) and {q('waiters')} (long-polls), "
      f"{m.get('oauth_relay_connections_shed_total')} shed, {m.get('oauth_relay_connections_refused_total')} refused at the cap (503), "
      f"{m.get('oauth_relay_open_connections')} open, {m.get('oauth_relay_waiting_clients')} waiting")
PY
}

flood_summary() {
    echo "flood ($(field sources "$FLOOD_LINE") address(es), $(commas "$(field count "$FLOOD_LINE")") connections kept open, at most $FLOOD_RATE new/s): $(field opened "$FLOOD_LINE") opened in $(field secs "$FLOOD_LINE") s, $(field open "$FLOOD_LINE") held open at the end, $(field closed "$FLOOD_LINE") closed by the relay, answers $(field answers "$FLOOD_LINE")"
}

# /health timed request by request from one keep-alive connection on 127.0.0.1 for LAT_SECS
# (bench/probe.py; wrk 4.1's latency statistics with one connection add up to several times the
# wall time, so they are not used here) against PORT; the PROBE line goes to FILE.
probe_run() {
    local file=$1 port=$2
    run_to "$file" python3 bench/probe.py "$port" "$LAT_SECS"
}

# A flood row: /health p50 / p99 just before the flood (same relay, same moment's background
# load: this machine is shared) and during it.
flood_row() {
    local label=$1 before b during d notes=$4
    b=$(grep '^PROBE' "$2" || echo "PROBE (none)")
    d=$(grep '^PROBE' "$3" || echo "PROBE (none)")
    row "$label" "before: $(field p50_ms "$b") / $(field p99_ms "$b") ms; during: $(field p50_ms "$d") / **$(field p99_ms "$d") ms**" "p99 < 5 ms" \
        "bench/probe.py ${LAT_SECS} s each, one request at a time on one connection; during: p99.9 $(field p999_ms "$d") ms, max $(field max_ms "$d") ms, $(field rps "$d") req/s, non-200 $(field non200 "$d"), busy $(field busy "$d") (before: p99.9 $(field p999_ms "$b") ms, max $(field max_ms "$b") ms, $(field rps "$b") req/s)$notes"
}

# /health from a well-behaved client on 127.0.0.1 while one client on 127.0.0.2 floods; the relay
# runs with the default caps and shares (no --max-connections: the default 1,024 is the point).
section_floods() {
    local before during kind mode label counters rss iport sources from n
    for kind in head:"half-sent heads" body:"half-sent bodies (POST, Content-Length: 1, no body)" \
        idle:"idle keep-alive connections" longpoll:"long-polls (wait=60)"; do
        mode=${kind%%:*} label=${kind#*:}
        start_server
        before=$OUT/front-floods-$mode-before.txt
        probe_run "$before" "$PORT"
        start_flood "$PORT" "$mode" "$FLOOD_CONNS" "$mode"
        during=$OUT/front-floods-$mode.txt
        flood_cpu
        probe_run "$during" "$PORT"
        counters=$(share_counters "$PORT")
        rss=$(mib "$(rss_kib)")
        stop_flood
        stop_server
        flood_row "/health p50 / p99, one client flooding $label" "$before" "$during" \
            "; $(flood_summary); $counters; relay VmRSS $rss MiB; the flood alone cost the relay $FLOOD_CPU of a core"
    done

    # Split listeners: the probes on the internal one while the public one is flooded.
    iport=$("${UTIL[@]}" free-port)
    for sources in 1 16; do
        start_server --internal-addr "127.0.0.1:$iport"
        before=$OUT/front-floods-split-$sources-before.txt
        probe_run "$before" "$iport"
        from="127.0.0.2"
        if [ "$sources" -gt 1 ]; then
            from=$(for n in $(seq 2 $((sources + 1))); do printf '127.0.0.%d,' "$n"; done)
            from=${from%,}
        fi
        start_flood "$PORT" body $((FLOOD_CONNS * (sources > 1 ? 2 : 1))) "split-$sources" --from "$from"
        during=$OUT/front-floods-split-$sources.txt
        flood_cpu
        probe_run "$during" "$iport"
        counters=$(share_counters "$iport")
        stop_flood
        stop_server
        flood_row "internal /health p50 / p99 (the probes), $sources client(s) flooding the public listener with half-sent bodies" "$before" "$during" \
            "; $(flood_summary); $counters; the flood alone cost the relay $FLOOD_CPU of a core"
    done
}

# ---------------------------------------------------------------------------------------------
mkdir -p "$OUT"
: >"$OUT/front-server.log"
for s in "${SELECTED[@]}"; do
    echo "running $s" >&2
    SECTION=$s
    "section_$s"
done

{
    echo "## oauth-relay front door"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)); binary $BIN ($("$BIN" --version 2>/dev/null || echo '?'), built $(date -u -r "$BIN" +%Y-%m-%dT%H:%MZ)$([ -n "${OAUTH_RELAY_BIN:-}" ] && echo ', from OAUTH_RELAY_BIN' || echo ", this tree at $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes')")); --max-connections: ${MAXCONN[*]:-not in this binary}; load generators run on the same machine"
    echo
    echo "| Figure | Result | Aim | Notes |"
    echo "|---|---|---|---|"
    printf '%s\n' "${ROWS[@]}"
} | tee "$OUT/front.md"
