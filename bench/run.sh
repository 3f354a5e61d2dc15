#!/usr/bin/env bash
# lameduck against nginx and HAProxy: same machine, same backend, same run, interleaved.
#
#   bench/run.sh                 # ROUNDS=3 DURATION=10 by default; writes bench/RESULTS.md
#   ROUNDS=5 DURATION=20 bench/run.sh
#
# Installs what it needs (nginx, HAProxy, wrk, h2load from Debian; oha from crates.io),
# builds lameduck and the bench backend with --release, pins every proxy to core 0 and the
# load generator and backend to core 1, and runs each benchmark once per proxy per round
# (lameduck, nginx, HAProxy, lameduck, ...). Each proxy gets one worker thread.
# See bench/RESULTS.md for the method and the latest figures.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
TUNNELS=${TUNNELS:-5000}
PROXY_CORE=0
LOAD_CORE=1
BACKEND=127.0.0.1:9100
WORK=$(mktemp -d /tmp/lameduck-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
TOOLS=$ROOT/bench/.tools
PIDS=()

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }

cleanup() {
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    pkill -KILL -f "$WORK/" 2>/dev/null || true
}
trap cleanup EXIT

install_tools() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx-light)
    command -v haproxy >/dev/null || missing+=(haproxy)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v h2load >/dev/null || missing+=(nghttp2-client)
    command -v taskset >/dev/null || missing+=(util-linux)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # Debian starts the packaged services; they would only add noise.
    systemctl stop nginx haproxy 2>/dev/null || true
    pkill -KILL -x nginx 2>/dev/null || true
    pkill -KILL -x haproxy 2>/dev/null || true
    if [ ! -x "$TOOLS/bin/oha" ]; then
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

write_configs() {
    cat > "$WORK/lameduck.toml" <<EOF
workers = 1

[[listen]]
addr = "127.0.0.1:8081"

[upstream.backend]
addrs = ["$BACKEND"]

[[route]]
upstream = "backend"

[drain]
deadline = "10s"
close_timeout = "5s"

[limits]
max_connections = 9000
EOF
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

# start_proxy NAME -> sets PROXY_PID; the proxy runs pinned to PROXY_CORE
start_proxy() {
    case $1 in
        lameduck)
            taskset -c $PROXY_CORE "$ROOT/target/release/lameduck" --config "$WORK/lameduck.toml" \
                --log-level warn 2>> "$WORK/lameduck.log" &
            PROXY_PID=$!; PORT=8081; H2PORT=8081 ;;
        nginx)
            mkdir -p "$WORK/nginx-body" "$WORK/nginx-proxy"
            taskset -c $PROXY_CORE nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log" 2>> "$WORK/nginx.log" &
            PROXY_PID=$!; PORT=8082; H2PORT=8092 ;;
        haproxy)
            taskset -c $PROXY_CORE haproxy -db -f "$WORK/haproxy.cfg" >> "$WORK/haproxy.log" 2>&1 &
            PROXY_PID=$!; PORT=8083; H2PORT=8093 ;;
    esac
    PIDS+=("$PROXY_PID")
    for _ in $(seq 100); do
        if ! kill -0 "$PROXY_PID" 2>/dev/null; then
            log "$1 exited at start-up"; exit 1
        fi
        if curl -s -o /dev/null "http://127.0.0.1:$PORT/small"; then return; fi
        sleep 0.1
    done
    log "$1 did not come up"; exit 1
}

# graceful_signal NAME: the proxy's graceful stop signal
graceful_signal() {
    case $1 in
        lameduck) echo TERM ;;
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

# record ROUND BENCH PROXY JSON-FIELDS
record() {
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
    install_tools
    ulimit -n "$(ulimit -Hn)"
    write_configs
    : > "$RESULTS"
    taskset -c $LOAD_CORE "$ROOT/target/release/examples/bench_backend" "$BACKEND" > "$WORK/backend.log" 2>&1 &
    PIDS+=($!)
    sleep 0.5
    local round proxy
    for round in $(seq "$ROUNDS"); do
        for proxy in lameduck nginx haproxy; do
            log "round $round: $proxy"
            start_proxy "$proxy"
            run_wrk "$round" B1 "$proxy" 64 /small
            run_oha "$round" "$proxy"
            run_wrk "$round" B3 "$proxy" 64 /small WRK_CLOSE=1
            run_wrk "$round" B4 "$proxy" 16 /1m
            run_wrk "$round" B5 "$proxy" 16 /upload WRK_BODY=65536
            run_h2load "$round" "$proxy"
            stop_proxy "$proxy" "$PROXY_PID"
            run_tunnels "$round" "$proxy"
        done
    done
    python3 "$ROOT/bench/report.py" "$RESULTS" "$ROUNDS" "$DURATION" "$TUNNELS" > "$ROOT/bench/RESULTS.md"
    cp "$RESULTS" "$ROOT/bench/results.jsonl"
    cat "$ROOT/bench/RESULTS.md"
}

main "$@"
