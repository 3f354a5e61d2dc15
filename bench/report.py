#!/usr/bin/env python3
"""Turns bench/run.sh's results.jsonl into bench/RESULTS.md: medians and min-max over the
rounds, and every figure as a ratio to nginx computed within the same round (and, when an older
lameduck ran as lameduck-baseline, lameduck's figures as a ratio to it too).

    report.py RESULTS.jsonl ROUNDS DURATION TUNNELS [BASELINE-BINARY]

Benchmarks and proxies missing from the results are left out."""

import json
import os
import platform
import statistics
import subprocess
import sys
from collections import defaultdict

PROXIES = ["lameduck", "lameduck-baseline", "nginx", "haproxy"]
DISPLAY = {"lameduck": "lameduck", "lameduck-baseline": "lameduck-baseline", "nginx": "nginx",
           "haproxy": "HAProxy"}
# (proxy, reference, label): the ratios each proxy's cells show, as medians of per-round ratios
RATIOS = [(p, "nginx", "nginx") for p in PROXIES if p != "nginx"] + [("lameduck", "lameduck-baseline", "baseline")]
# figures that get no ratio
NO_RATIO = ("errors", "gen busy", "success", "closes")
SATURATED = 0.95
BENCHES = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8"]


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        text = (out.stdout + out.stderr).strip().splitlines()
        return text[0] if text else "?"
    except Exception:  # noqa: BLE001 - a missing tool just shows as "?"
        return "?"


def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Linux {platform.release()}"


def metrics(row, duration):
    """The figures of one measurement."""
    bench = row["bench"]
    if bench in ("B1", "B3", "B5"):
        w = row["wrk"]
        secs = w["duration_us"] / 1e6
        return {
            "req/s": w["requests"] / secs,
            "p50 ms": w["p50_us"] / 1000,
            "p99 ms": w["p99_us"] / 1000,
            "CPU µs/req": row["cpu_us"] / max(w["requests"], 1),
            "errors": w["errors"] + w["non2xx"],
            "gen busy": row["gen_busy"],
        }
    if bench == "B4":
        w = row["wrk"]
        mb = w["bytes"] / 1e6
        return {
            "MB/s": mb / (w["duration_us"] / 1e6),
            "CPU ms/MB": row["cpu_us"] / 1000 / max(mb, 1e-9),
            "errors": w["errors"] + w["non2xx"],
            "gen busy": row["gen_busy"],
        }
    if bench == "B2":
        o = row["oha"]
        return {"p50 ms": o["p50_ms"], "p99 ms": o["p99_ms"], "p99.9 ms": o["p999_ms"], "req/s": o["rps"],
                "success": o["success"]}
    if bench == "B6":
        return {"req/s": row["ok"] / duration, "CPU µs/req": row["cpu_us"] / max(row["ok"], 1)}
    if bench == "B7":
        return {"idle RSS KiB": row["idle_kib"],
                "KiB/tunnel": (row["loaded_kib"] - row["idle_kib"]) / row["tunnels"]}
    if bench == "B8":
        return {"closes": row["closes"], "all Close frames s": row["all_closed_s"], "exit s": row["exit_s"]}
    raise ValueError(bench)


TITLES = {
    "B1": "B1 small GET, 64 keep-alive connections",
    "B2": "B2 small GET at a fixed 10k req/s (oha, latency-corrected)",
    "B3": "B3 small GET, a new connection per request",
    "B4": "B4 1 MiB responses, 16 connections",
    "B5": "B5 64 KiB uploads, 16 connections",
    "B6": "B6 HTTP/2 (h2c) small GET, 64 connections x 10 streams",
    "B7": "B7 memory: idle, and per idle WebSocket tunnel",
    "B8": "B8 drain with open WebSocket tunnels",
}


def fmt(x):
    if isinstance(x, float):
        if abs(x) >= 100:
            return f"{x:,.0f}"
        return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
    return str(x)


def ratio_cell(by, bench, rounds_of, proxy, ref, name):
    """The median over the rounds of proxy's figure divided by ref's in the same round, or None."""
    ratios = [by[(bench, r)][proxy][name] / by[(bench, r)][ref][name]
              for r in rounds_of
              if proxy in by[(bench, r)] and ref in by[(bench, r)]
              and isinstance(by[(bench, r)][ref][name], (int, float))
              and by[(bench, r)][ref][name] > 0]
    return statistics.median(ratios) if ratios else None


def main():
    path, rounds, duration, tunnels = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    baseline = sys.argv[5] if len(sys.argv) > 5 else None
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by = defaultdict(dict)  # (bench, round) -> proxy -> metrics
    for row in rows:
        by[(row["bench"], row["round"])][row["proxy"]] = metrics(row, duration)
    present = {row["proxy"] for row in rows}
    proxies = [p for p in PROXIES if p in present]
    benches = [b for b in BENCHES if any(bench == b for (bench, _) in by)]

    out = ["# Benchmark results", ""]
    line = f"Machine: {machine()}. Rounds: {rounds}, {duration:g} s each run, {tunnels} tunnels for B7/B8."
    if benches != BENCHES:
        line += f" Benchmarks run: {', '.join(benches) or 'none'}."
    out.append(line)
    out.append("")
    out.append("Versions: " + "; ".join([
        version(["target/release/lameduck", "--version"]),
        *([f"baseline {version([baseline, '--version'])} (`{baseline}`)"]
          if baseline and "lameduck-baseline" in present else []),
        *([version(["nginx", "-v"])] if "nginx" in present else []),
        *([version(["haproxy", "-v"])] if "haproxy" in present else []),
        version(["wrk", "-v"]),
        version(["h2load", "--version"]),
        version(["bench/.tools/bin/oha", "--version"]),
        version(["rustc", "--version"]),
    ]) + ".")
    out.append("")
    order = ", ".join(DISPLAY[p] for p in proxies)
    baseline_text = ""
    if "lameduck-baseline" in present:
        baseline_text = (
            " lameduck-baseline is an older lameduck binary (`BASELINE=`) run exactly like lameduck (same "
            "config, its own port), right after it in every round; `×baseline` on the lameduck row is the "
            "median of the per-round ratios of lameduck to it.")
    out.append(
        "Method: `bench/run.sh`. One fast backend (`examples/bench_backend.rs`, one thread). Each proxy has "
        "one worker (lameduck `workers = 1`, nginx `worker_processes 1`, HAProxy `nbthread 1`), keep-alive "
        "to the backend, no access log, and runs pinned to core 0; the load generator (wrk, oha, h2load) and "
        f"the backend share core 1. Runs are interleaved {order} in every round. CPU is the "
        "proxy's user+sys time from /proc (all its processes) over the run, divided by the requests (or MB). "
        "Figures are medians over the rounds with min–max; `×nginx` is the median of the per-round ratios to "
        f"nginx.{baseline_text} `gen busy` is core 1's busy share: at ≥ 0.95 the generator/backend core is "
        "saturated and req/s is its limit, not the proxy's. B8: lameduck sends every client a Close frame "
        "(1001) and exits; nginx (SIGQUIT) and HAProxy (SIGUSR1) keep tunnels until their 10 s stop timeout "
        "and then cut them without a Close frame.")
    out.append("")

    for bench in benches:
        rounds_of = sorted(r for (b, r) in by if b == bench)
        names = list(next(iter(by[(bench, rounds_of[0])].values())).keys())
        out.append(f"## {TITLES[bench]}")
        out.append("")
        out.append("| proxy | " + " | ".join(names) + " |")
        out.append("|---" * (len(names) + 1) + "|")
        for proxy in proxies:
            cells = []
            for name in names:
                values = [by[(bench, r)][proxy][name] for r in rounds_of if proxy in by[(bench, r)]]
                if not values:
                    cells.append("–")
                    continue
                med = statistics.median(values)
                cell = f"{fmt(med)} ({fmt(min(values))}–{fmt(max(values))})"
                for of, ref, label in RATIOS:
                    if of != proxy or name in NO_RATIO:
                        continue
                    ratio = ratio_cell(by, bench, rounds_of, proxy, ref, name)
                    if ratio is not None:
                        cell += f" {ratio:.2f}×{label}"
                if name == "gen busy":
                    cell += " saturated" if med >= SATURATED else ""
                cells.append(cell)
            out.append(f"| {proxy} | " + " | ".join(cells) + " |")
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
