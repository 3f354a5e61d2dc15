#!/usr/bin/env bash
# lameduck against nginx and HAProxy: same machine, same backend, same run, interleaved.
#
#   bench/run.sh                 # ROUNDS=3 DURATION=10 by default; writes bench/RESULTS.md
#   ROUNDS=5 DURATION=20 bench/run.sh
#   BASELINE=/tmp/lameduck-old ONLY="B1 B3" ROUNDS=3 bench/run.sh
#
# Installs what it needs (nginx, HAProxy, wrk, h2load from Debian; oha from crates.io),
# builds lameduck and the bench backend with --release, pins every proxy to core 0 and the
# load generator and backend to core 1, and runs each benchmark once per proxy per round
# (lameduck, nginx, HAProxy, lameduck, ...). Each proxy gets one worker thread.
# See bench/RESULTS.md for the method and the latest figures.
#
# Options (environment):
#   ROUNDS, DURATION (s per run), TUNNELS (idle WebSocket tunnels for B7/B8)
#   BASELINE=PATH  an older lameduck binary, benchmarked as a fourth proxy, lameduck-baseline:
#                  same config as lameduck but its own port (8084, h2c on the same port) and
#                  log, run right after lameduck in every round. The report adds its rows and,
#                  on the lameduck row, the median per-round ratio to it (`×baseline`). PATH is
#                  copied when the script starts, before the build, so a rebuild cannot change
#                  it mid-run (and BASELINE=target/release/lameduck means "the previous build").
#                  To get one: cp target/release/lameduck /tmp/lameduck-old before changing
#                  src/, or build an older commit in a git worktree.
#   ONLY="B1 B3"   run only these benchmarks (B1..B8; default all). B7 and B8 come from one
#                  pass (run_tunnels), which runs if either is named; only named ones are kept.
#   PROXIES="lameduck lameduck-baseline"  run only these proxies, always in the order
#                  lameduck, lameduck-baseline, nginx, haproxy (default: all of them, the
#                  baseline only when BASELINE is set).
# Only the tools the chosen benchmarks and proxies need are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
TUNNELS=${TUNNELS:-5000}
BASELINE=${BASELINE:-}
ALL_BENCHES="B1 B2 B3 B4 B5 B6 B7 B8"
ONLY=${ONLY:-$ALL_BENCHES}
ALL_PROXIES="lameduck lameduck-baseline nginx haproxy"
if [ -n "$BASELINE" ]; then
    PROXIES=${PROXIES:-$ALL_PROXIES}
else
    PROXIES=${PROXIES:-lameduck nginx haproxy}
fi
PROXY_CORE=0
LOAD_CORE=1
BACKEND=127.0.0.1:9100
WORK=$(mktemp -d /tmp/lameduck-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
TOOLS=$ROOT/bench/.tools
PIDS=()

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

# one_of WORD LIST...: whether WORD is one of the words of LIST
one_of() {
    local word=$1 item
    shift
    for item in $*; do
        [ "$item" = "$word" ] && return 0
    done
    return 1
}

# wants BENCH...: whether any of the benchmarks was asked for (ONLY)
wants() {
    local bench
    for bench in "$@"; do
        one_of "$bench" "$ONLY" && return 0
    done
    return 1
}

# runs PROXY: whether the proxy was asked for (PROXIES)
runs() { one_of "$1" "$PROXIES"; }

check_options() {
    local word
    for word in $ONLY; do
        one_of "$word" "$ALL_BENCHES" || { log "ONLY: unknown benchmark $word (one of $ALL_BENCHES)"; exit 1; }
    done
    for word in $PROXIES; do
        one_of "$word" "$ALL_PROXIES" || { log "PROXIES: unknown proxy $word (one of $ALL_PROXIES)"; exit 1; }
    done
    [ -n "${ONLY// /}" ] || { log "ONLY names no benchmark"; exit 1; }
    [ -n "${PROXIES// /}" ] || { log "PROXIES names no proxy"; exit 1; }
    if runs lameduck-baseline && [ -z "$BASELINE" ]; then
        log "PROXIES has lameduck-baseline but BASELINE is not set"; exit 1
    fi
    if [ -n "$BASELINE" ]; then
        [ -f "$BASELINE" ] && [ -x "$BASELINE" ] || { log "BASELINE=$BASELINE is not an executable file"; exit 1; }
        # A copy: whatever happens to BASELINE during the run (a rebuild), the baseline stays.
        cp "$BASELINE" "$WORK/lameduck-baseline"
    fi
}

cleanup() {
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    pkill -KILL -f "$WORK/" 2>/dev/null || true
}
trap cleanup EXIT

install_tools() {
    local missing=()
    if runs nginx; then command -v nginx >/dev/null || missing+=(nginx-light); fi
    if runs haproxy; then command -v haproxy >/dev/null || missing+=(haproxy); fi
    if wants B1 B3 B4 B5; then command -v wrk >/dev/null || missing+=(wrk); fi
    if wants B6; then command -v h2load >/dev/null || missing+=(nghttp2-client); fi
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v ss >/dev/null || missing+=(iproute2)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # Debian starts the packaged services; they would only add noise.
    systemctl stop nginx haproxy 2>/dev/null || true
    pkill -KILL -x nginx 2>/dev/null || true
    pkill -KILL -x haproxy 2>/dev/null || true
    if wants B2 && [ ! -x "$TOOLS/bin/oha" ]; then
        log "installing oha (fixed-rate load generator) from crates.io"
        cargo install --quiet --locked --root "$TOOLS" oha@1.16.0
    fi
    log "building lameduck and the bench backend (release)"
    cargo build --quiet --release --locked --bin lameduck --example bench_backend --example bench_ws
}

# ---- measuring ----

# sum_over_tree FILE AWK PID...: sums what AWK prints for /proc/PID/FILE over the pids and
# their children (nginx's workers are the master's children)
sum_over_tree() {
    local file=$1 prog=$2 total=0 pid child
    shift 2
    for pid in "$@"; do
        for child in $pid $(pgrep -P "$pid" || true); do
            if [ -r "/proc/$child/$file" ]; then
                total=$((total + $(awk "$prog" "/proc/$child/$file")))
            fi
        done
    done
    echo "$total"
}

# user+sys clock ticks of the given pids and their children
cpu_ticks() { sum_over_tree stat '{print $14 + $15}' "$@"; }

# resident KiB of the given pids and their children
rss_kib() { sum_over_tree status '/^VmRSS:/ {print $2}' "$@"; }

# busy and total jiffies of one core
core_jiffies() {
    awk -v cpu="cpu$1" '$1 == cpu { busy = $2 + $3 + $4 + $7 + $8; total = busy + $5 + $6; print busy, total }' /proc/stat
}

TICK_US=$((1000000 / $(getconf CLK_TCK)))

# ---- the proxies ----

# lameduck_config ADDR (bench/config.sh): lameduck's config; the baseline's differs only in
# the listen address
source "$ROOT/bench/config.sh"

write_configs() {
    lameduck_config 127.0.0.1:8081 > "$WORK/lameduck.toml"
    lameduck_config 127.0.0.1:8084 > "$WORK/lameduck-baseline.toml"
    cat > "$WORK/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_shutdown_timeout 10s;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 12000; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-body;
    proxy_temp_path $WORK/nginx-proxy;
    keepalive_requests 1000000;
    upstream backend { server $BACKEND; keepalive 512; }
    map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
    server {
        listen 127.0.0.1:8082 reuseport;
        listen 127.0.0.1:8092 http2;
        client_max_body_size 0;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Host \$host;
            proxy_set_header Connection \$connection_upgrade;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_request_buffering off;
            proxy_buffers 16 64k;
            proxy_buffer_size 64k;
            proxy_read_timeout 1h;
        }
    }
}
EOF
    cat > "$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 9000
    hard-stop-after 10s
    tune.bufsize 65536
defaults
    mode http
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    option http-keep-alive
    option forwardfor
    http-reuse always
frontend web
    bind 127.0.0.1:8083
    bind 127.0.0.1:8093 proto h2
    default_backend app
backend app
    server s1 $BACKEND maxconn 9000
EOF
}

# refuse_busy_ports WHAT PORT...: exits if anything already listens on one of the ports. A proxy
# that cannot bind may still be alive when start_proxy first probes its port, and the run would
# then silently measure whoever holds it. (ss reads the socket table: the holder is not touched.)
refuse_busy_ports() {
    local what=$1 port held
    shift
    for port in "$@"; do
        held=$(ss -Hltnp "sport = :$port")
        if [ -n "$held" ]; then
            log "$what: port $port is already in use: $held"; exit 1
        fi
    done
}

# start_proxy NAME -> sets PROXY_PID, PORT and H2PORT; the proxy runs pinned to PROXY_CORE
start_proxy() {
    case $1 in
        lameduck) PORT=8081; H2PORT=8081 ;;
        lameduck-baseline) PORT=8084; H2PORT=8084 ;;
        nginx) PORT=8082; H2PORT=8092 ;;
        haproxy) PORT=8083; H2PORT=8093 ;;
    esac
    refuse_busy_ports "$1" "$PORT" "$H2PORT"
    case $1 in
        lameduck)
            taskset -c $PROXY_CORE "$ROOT/target/release/lameduck" --config "$WORK/lameduck.toml" \
                --log-level warn 2>> "$WORK/lameduck.log" & ;;
        lameduck-baseline)
            taskset -c $PROXY_CORE "$WORK/lameduck-baseline" --config "$WORK/lameduck-baseline.toml" \
                --log-level warn 2>> "$WORK/lameduck-baseline.log" & ;;
        nginx)
            mkdir -p "$WORK/nginx-body" "$WORK/nginx-proxy"
            taskset -c $PROXY_CORE nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log" 2>> "$WORK/nginx.log" & ;;
        haproxy)
            taskset -c $PROXY_CORE haproxy -db -f "$WORK/haproxy.cfg" >> "$WORK/haproxy.log" 2>&1 & ;;
    esac
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    for _ in $(seq 100); do
        if ! kill -0 "$PROXY_PID" 2>/dev/null; then
            log "$1 exited at start-up"; tail -n 20 "$WORK/$1.log" >&2 || true; exit 1
        fi
        if curl -s -o /dev/null "http://127.0.0.1:$PORT/small"; then return; fi
        sleep 0.1
    done
    log "$1 did not come up"; exit 1
}

# graceful_signal NAME: the proxy's graceful stop signal
graceful_signal() {
    case $1 in
        lameduck | lameduck-baseline) echo TERM ;;
        nginx) echo QUIT ;;
        haproxy) echo USR1 ;;
    esac
}

stop_proxy() {
    # Children first: once the master is gone, its workers are orphans nobody would find.
    pkill -KILL -P "$2" 2>/dev/null || true
    kill -KILL "$2" 2>/dev/null || true
    wait "$2" 2>/dev/null || true
}

# ---- the benchmarks ----

# record ROUND BENCH PROXY JSON-FIELDS (only benchmarks named in ONLY are kept)
record() {
    wants "$2" || return 0
    printf '{"round":%d,"bench":"%s","proxy":"%s",%s}\n' "$1" "$2" "$3" "$4" >> "$RESULTS"
}

# run_wrk ROUND BENCH PROXY CONNECTIONS PATH [ENV...]: wrk on LOAD_CORE, proxy CPU measured
run_wrk() {
    local round=$1 bench=$2 proxy=$3 conns=$4 path=$5
    shift 5
    local t0 t1 out busy0 total0 busy1 total1
    t0=$(cpu_ticks "$PROXY_PID")
    read -r busy0 total0 < <(core_jiffies $LOAD_CORE)
    out=$(env "$@" taskset -c $LOAD_CORE wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 10s \
        -s "$ROOT/bench/wrk.lua" "http://127.0.0.1:$PORT$path" | tail -n 1)
    read -r busy1 total1 < <(core_jiffies $LOAD_CORE)
    t1=$(cpu_ticks "$PROXY_PID")
    local cpu_us=$(((t1 - t0) * TICK_US))
    local gen_busy
    gen_busy=$(awk -v b=$((busy1 - busy0)) -v t=$((total1 - total0)) 'BEGIN { printf "%.3f", t ? b / t : 0 }')
    record "$round" "$bench" "$proxy" "\"wrk\":$out,\"cpu_us\":$cpu_us,\"gen_busy\":$gen_busy"
}

run_oha() {
    local round=$1 proxy=$2 out
    out=$(taskset -c $LOAD_CORE "$TOOLS/bin/oha" --no-tui --output-format json -z "${DURATION}s" -q 10000 -c 64 \
        --latency-correction "http://127.0.0.1:$PORT/small" 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); p=d["latencyPercentiles"]; s=d["summary"]; print(json.dumps({"p50_ms":p["p50"]*1000,"p99_ms":p["p99"]*1000,"p999_ms":p["p99.9"]*1000,"rps":s["requestsPerSec"],"success":s["successRate"]}))')
    record "$round" B2 "$proxy" "\"oha\":$out"
}

run_h2load() {
    local round=$1 proxy=$2 t0 t1 out
    t0=$(cpu_ticks "$PROXY_PID")
    out=$(taskset -c $LOAD_CORE h2load -c 64 -m 10 -D "$DURATION" "http://127.0.0.1:$H2PORT/small" 2>&1 || true)
    t1=$(cpu_ticks "$PROXY_PID")
    local rps ok
    rps=$(echo "$out" | awk '/^finished in/ { gsub(",", "", $4); print $4 }')
    ok=$(echo "$out" | awk '/^status codes:/ { gsub(",", "", $3); print $3 }')
    record "$round" B6 "$proxy" "\"rps\":${rps:-0},\"ok\":${ok:-0},\"cpu_us\":$(((t1 - t0) * TICK_US))"
}

# B7 and B8: idle memory, memory with TUNNELS idle WebSocket tunnels, then the drain.
run_tunnels() {
    local round=$1 proxy=$2 idle loaded ws_pid signalled first_line exited
    start_proxy "$proxy"
    sleep 1
    idle=$(rss_kib "$PROXY_PID")
    taskset -c $LOAD_CORE "$ROOT/target/release/examples/bench_ws" "ws://127.0.0.1:$PORT/ws" "$TUNNELS" \
        > "$WORK/ws.out" 2>&1 &
    ws_pid=$!
    PIDS+=("$ws_pid")
    for _ in $(seq 600); do
        grep -q '^open' "$WORK/ws.out" && break
        sleep 0.1
    done
    sleep 1
    loaded=$(rss_kib "$PROXY_PID")
    signalled=$(date +%s.%N)
    kill "-$(graceful_signal "$proxy")" "$PROXY_PID"
    wait "$PROXY_PID" 2>/dev/null || true
    exited=$(date +%s.%N)
    for _ in $(seq 300); do
        grep -qE '^(closed|ended)' "$WORK/ws.out" && break
        sleep 0.1
    done
    kill -KILL "$ws_pid" 2>/dev/null || true
    wait "$ws_pid" 2>/dev/null || true
    first_line=$(grep -E '^(closed|ended)' "$WORK/ws.out" | head -n 1 || true)
    local closes=0 close_at=0
    case $first_line in
        closed*) closes=$TUNNELS; close_at=${first_line##*=} ;;
        ended*) closes=$(echo "$first_line" | sed -E 's/.*closes=([0-9]+).*/\1/') ;;
    esac
    record "$round" B7 "$proxy" "\"idle_kib\":$idle,\"loaded_kib\":$loaded,\"tunnels\":$TUNNELS"
    record "$round" B8 "$proxy" "\"closes\":$closes,\"all_closed_s\":$(awk -v a="$close_at" -v s="$signalled" 'BEGIN { print (a > 0 ? a - s : -1) }'),\"exit_s\":$(awk -v e="$exited" -v s="$signalled" 'BEGIN { print e - s }')"
    : > "$WORK/ws.out"
}

main() {
    check_options
    install_tools
    ulimit -n "$(ulimit -Hn)"
    write_configs
    : > "$RESULTS"
    refuse_busy_ports backend "${BACKEND##*:}"
    taskset -c $LOAD_CORE "$ROOT/target/release/examples/bench_backend" "$BACKEND" > "$WORK/backend.log" 2>&1 &
    PIDS+=($!)
    sleep 0.5
    if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then
        log "the bench backend exited at start-up"; cat "$WORK/backend.log" >&2; exit 1
    fi
    local round proxy
    log "benchmarks: $ONLY; proxies: $PROXIES${BASELINE:+; baseline: $BASELINE}"
    for round in $(seq "$ROUNDS"); do
        for proxy in $ALL_PROXIES; do
            runs "$proxy" || continue
            log "round $round: $proxy"
            if wants B1 B2 B3 B4 B5 B6; then
                start_proxy "$proxy"
                if wants B1; then run_wrk "$round" B1 "$proxy" 64 /small; fi
                if wants B2; then run_oha "$round" "$proxy"; fi
                if wants B3; then run_wrk "$round" B3 "$proxy" 64 /small WRK_CLOSE=1; fi
                if wants B4; then run_wrk "$round" B4 "$proxy" 16 /1m; fi
                if wants B5; then run_wrk "$round" B5 "$proxy" 16 /upload WRK_BODY=65536; fi
                if wants B6; then run_h2load "$round" "$proxy"; fi
                stop_proxy "$proxy" "$PROXY_PID"
            fi
            if wants B7 B8; then run_tunnels "$round" "$proxy"; fi
        done
    done
    python3 "$ROOT/bench/report.py" "$RESULTS" "$ROUNDS" "$DURATION" "$TUNNELS" ${BASELINE:+"$BASELINE"} \
        > "$ROOT/bench/RESULTS.md"
    cp "$RESULTS" "$ROOT/bench/results.jsonl"
    cat "$ROOT/bench/RESULTS.md"
}

main "$@"
