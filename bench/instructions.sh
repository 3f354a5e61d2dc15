#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind, for one or more lameduck binaries.
#
#   bench/instructions.sh target/release/lameduck /tmp/lameduck-old
#   RUNS=3 SECONDS_PER_RUN=10 BENCHES="B1 B3" bench/instructions.sh BINARY...
#   LOG_LEVEL=info bench/instructions.sh BINARY     # with the access log on (default: warn, off)
#
# CPU time on a small shared machine moves ±10 % between runs; instruction counts do not, so
# this is how two builds are compared exactly (bench/run.sh gives the CPU time against the
# peers). B1: small GET on 64 keep-alive connections; B3: the same with a new connection per
# request (wrk.lua's WRK_CLOSE). Each binary runs under valgrind with one worker, pinned to
# core 0, in front of the bench backend on core 1; a 3 s warm-up fills the upstream pool
# uninstrumented, then wrk runs SECONDS_PER_RUN seconds with instrumentation on. The figure
# is callgrind's total Ir divided by the requests wrk completed (0 errors required).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-2}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
BENCHES=${BENCHES:-B1 B3}
BACKEND=127.0.0.1:9100
PORT=8081
WORK=$(mktemp -d /tmp/lameduck-instructions.XXXXXX)
PIDS=()
(($#)) || { echo "usage: bench/instructions.sh BINARY [BINARY...]" >&2; exit 1; }

cleanup() { for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

for tool in valgrind wrk taskset ss; do
    if ! command -v $tool >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind wrk util-linux iproute2 >/dev/null
        break
    fi
done
for port in ${BACKEND##*:} $PORT; do
    if ss -ltnH "( sport = :$port )" | grep -q .; then
        echo "port $port is already in use" >&2; exit 1
    fi
done
cargo build --quiet --release --locked --example bench_backend
source "$ROOT/bench/config.sh"
lameduck_config "127.0.0.1:$PORT" > "$WORK/lameduck.toml"
ulimit -n "$(ulimit -Hn)"
taskset -c 1 "$ROOT/target/release/examples/bench_backend" "$BACKEND" > "$WORK/backend.log" 2>&1 &
PIDS+=($!)

# wrk_small BENCH SECONDS: wrk's JSON summary line (see wrk.lua)
wrk_small() {
    local env=()
    [ "$1" = B3 ] && env=(WRK_CLOSE=1)
    env "${env[@]}" taskset -c 1 wrk -t1 -c64 -d"$2"s --timeout 10s -s "$ROOT/bench/wrk.lua" \
        "http://127.0.0.1:$PORT/small" | tail -n 1
}

# measure BINARY BENCH: prints one result line
measure() {
    local bin=$1 bench=$2 out=$WORK/run-$RANDOM pid
    mkdir -p "$out"
    taskset -c 0 valgrind --tool=callgrind --instr-atstart=no --dump-instr=no \
        --callgrind-out-file="$out/callgrind.out.%p" \
        "$bin" --config "$WORK/lameduck.toml" --log-level "${LOG_LEVEL:-warn}" > "$out/lameduck.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 300); do
        curl -s -o /dev/null "http://127.0.0.1:$PORT/small" && break
        sleep 0.2
    done
    wrk_small "$bench" 3 > /dev/null
    callgrind_control -i on "$pid" > /dev/null 2>&1
    local summary
    summary=$(wrk_small "$bench" "$SECONDS_PER_RUN")
    callgrind_control -d "$pid" > /dev/null 2>&1
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    local ir
    ir=$(grep -h '^totals:' "$out"/callgrind.out.*.1 | awk '{print $2}')
    python3 - "$bin" "$bench" "$ir" "$summary" <<'PY'
import json, sys
bin, bench, ir, summary = sys.argv[1:]
w = json.loads(summary)
ok = w["errors"] == 0 and w["non2xx"] == 0
print(f"{bench} {bin}: {int(ir) / w['requests']:,.0f} instructions/request "
      f"({w['requests']} requests{'' if ok else ', ERRORS: ' + str(w['errors']) + ' non-2xx: ' + str(w['non2xx'])})")
PY
}

for run in $(seq "$RUNS"); do
    for bench in $BENCHES; do
        for bin in "$@"; do
            measure "$bin" "$bench"
        done
    done
done
