#!/usr/bin/env python3
"""Benchmarks for the long-running modes, against the emulator (loopback only).

watch: RSS and CPU of `kvfetch watch` over 10,000 fast refreshes (`--refreshes N`; RSS must stay
       flat and peak at most 6 MiB), and its CPU while idle between refreshes (must be ~0: no
       polling).
exec:  the wrapper's own overhead (`kvfetch exec -- true` against `kvfetch fetch` of the same
       secrets) and the supervisor's RSS while its child runs (peak at most 6 MiB).

Usage: bench/run watch|exec [--runs R]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request

from common import measure, start_emulator

TICK = os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def proc_hwm_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def proc_cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def metric(addr, name):
    text = urllib.request.urlopen(f"http://{addr}/metrics").read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def bench_watch(work):
    names = [f"s{i:02d}" for i in range(10)]
    emu, env, _ = start_emulator(ARGS.emulator, work, names)
    addr = "127.0.0.1:18089"
    out = os.path.join(work, "out")
    env = dict(env, KVFETCH_SECRETS=",".join(names), KVFETCH_DIR=out)
    try:
        w = subprocess.Popen([ARGS.kvfetch, "watch", "-q", "--refresh", "10ms", "--health-listen", addr], env=env)
        samples = []
        last = ARGS.refreshes
        marks = sorted({100, 1000, *(last * k // 10 for k in range(1, 11))})
        for target in marks:
            while metric_safe(addr, "kvfetch_refreshes_total") < target:
                time.sleep(0.02)
            samples.append((target, proc_rss_mb(w.pid), proc_cpu_s(w.pid)))
        hwm = proc_hwm_mb(w.pid)
        w.terminate()
        w.wait()
        print(f"# kvfetch watch, 10 secrets, --refresh 10ms: RSS and CPU as refreshes accumulate (MiB)")
        print(f"{'refreshes':>10} {'rss MiB':>8} {'cpu s':>7} {'cpu ms/refresh since previous':>30}")
        prev = None
        for n, rss, cpu in samples:
            per = "" if prev is None else f"{(cpu - prev[2]) * 1000 / (n - prev[0]):.2f}"
            print(f"{n:>10} {rss:>8.2f} {cpu:>7.2f} {per:>30}")
            prev = (n, rss, cpu)
        growth = samples[-1][1] - samples[1][1]
        ok = hwm <= 6.0 and growth <= 0.25
        print(f"# peak RSS {hwm:.2f} MiB; RSS from refresh {samples[1][0]} to {samples[-1][0]}: {growth:+.2f} MiB"
              f" (budget: peak at most 6 MiB, flat within 0.25 MiB): {'met' if ok else 'NOT MET'}")
        w = subprocess.Popen([ARGS.kvfetch, "watch", "-q", "--refresh", "1h"], env=env)
        time.sleep(1)
        before = proc_cpu_s(w.pid)
        time.sleep(5)
        idle = proc_cpu_s(w.pid) - before
        w.terminate()
        w.wait()
        print(f"# idle between refreshes (--refresh 1h): {idle * 1000:.0f} ms CPU in 5 s (clock tick {1000 / TICK:.0f} ms)")
    finally:
        emu.terminate()
        emu.wait()


def metric_safe(addr, name):
    try:
        return metric(addr, name)
    except OSError:
        return 0.0


def bench_exec(work):
    names = [f"s{i:02d}" for i in range(10)]
    emu, env, _ = start_emulator(ARGS.emulator, work, names)
    out = os.path.join(work, "out")
    env = dict(env, KVFETCH_SECRETS=",".join(names))
    true = shutil.which("true")
    try:
        runs = {"fetch --dir": [], "exec -- true": []}
        for _ in range(ARGS.runs):
            shutil.rmtree(out, ignore_errors=True)
            runs["fetch --dir"].append(measure([ARGS.kvfetch, "fetch", "-q", "--dir", out], env, work))
            runs["exec -- true"].append(measure([ARGS.kvfetch, "exec", "-q", "--", true], env, work))
        print(f"# 10 secrets, {ARGS.runs} runs each, alternating; medians")
        print(f"{'command':<14} {'wall ms':>8} {'cpu ms':>7}")
        for name, r in runs.items():
            print(f"{name:<14} {statistics.median(x[0] for x in r) * 1000:>8.1f} {statistics.median(x[1] for x in r) * 1000:>7.1f}")
        sup = subprocess.Popen([ARGS.kvfetch, "exec", "-q", "--refresh", "1m", "--", "sleep", "30"], env=env)
        time.sleep(1.5)
        rss, hwm = proc_rss_mb(sup.pid), proc_hwm_mb(sup.pid)
        sup.terminate()
        sup.wait()
        print(f"# supervisor (exec --refresh 1m -- sleep 30) while the child runs: RSS {rss:.2f} MiB, peak {hwm:.2f} MiB"
              f" (budget: peak at most 6 MiB): {'met' if hwm <= 6.0 else 'NOT MET'}")
    finally:
        emu.terminate()
        emu.wait()


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("suite", choices=["watch", "exec"])
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--refreshes", type=int, default=10000, help="watch: refreshes to run")
    ap.add_argument("--kvfetch", required=True)
    ap.add_argument("--emulator", required=True)
    ap.add_argument("--python")
    ARGS = ap.parse_args()
    work = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        {"watch": bench_watch, "exec": bench_exec}[ARGS.suite](work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
