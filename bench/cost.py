#!/usr/bin/env python3
"""Fleet cost, against the emulator (loopback only).

fleet:        N kvfetch processes x S secrets started at once against a vault limited to R
              requests per second (429 + Retry-After beyond it): time against the floor N*S/R,
              and throttled requests per needed request. Targets: within 1.25x the floor, no
              failure, at most 0.5 throttled per needed.
refresh-cost: Key Vault requests per unchanged `watch` refresh, for several S (the list is one
              request per 25 secrets; before, one GET per secret), and the cost table for a fleet.

Usage: bench/run fleet [--processes N] [--secrets S] [--rate R]
       bench/run refresh-cost
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from common import start_emulator


def control(url, method="GET", path="counters", body=None):
    req = urllib.request.Request(f"{url}/{path}", data=body, method=method)
    with urllib.request.urlopen(req) as r:
        text = r.read().decode()
    return json.loads(text) if text else {}


def bench_fleet(work):
    n, s, rate = ARGS.processes, ARGS.secrets, ARGS.rate
    names = [f"s{i:02d}" for i in range(s)]
    emu, env, ctl = start_emulator(ARGS.emulator, work, names)
    try:
        control(ctl, "PUT", "kv-rate-limit", str(rate).encode())
        control(ctl, "POST", "counters/reset")
        env = dict(env, KVFETCH_SECRETS=",".join(names), KVFETCH_TIMEOUT="2m")
        start = time.perf_counter()
        procs = [
            subprocess.Popen([ARGS.kvfetch, "fetch", "-q", "--dir", os.path.join(work, f"p{i}")] + ARGS.extra,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for i in range(n)
        ]
        codes = [p.wait() for p in procs]
        wall = time.perf_counter() - start
        c = control(ctl)
    finally:
        emu.terminate()
        emu.wait()
    needed = n * s
    floor = needed / rate
    throttled = c["kv_throttled"]
    failed = sum(1 for code in codes if code != 0)
    print(f"# fleet: {n} processes x {s} secrets, vault limited to {rate} requests/s; flags: {' '.join(ARGS.extra) or '(none)'}")
    print(f"{'wall s':>8} {'floor s':>8} {'ratio':>6} {'requests':>9} {'throttled':>10} {'throttled/needed':>17} {'failed':>7}")
    print(f"{wall:8.2f} {floor:8.2f} {wall / floor:6.2f} {c['kv_total_requests']:9d} {throttled:10d} {throttled / needed:17.2f} {failed:7d}")
    ok = failed == 0 and wall <= 1.25 * floor and throttled / needed <= 0.5
    print("targets (<= 1.25x floor, <= 0.5 throttled per needed, no failure):", "met" if ok else "NOT met")


def metric(addr, name):
    try:
        text = urllib.request.urlopen(f"http://{addr}/metrics").read().decode()
    except OSError:
        return 0.0
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def wait_refreshes(addr, more):
    start = metric(addr, "kvfetch_refreshes_total")
    while metric(addr, "kvfetch_refreshes_total") < start + more:
        time.sleep(0.02)


def bench_refresh_cost(work):
    print("# requests per unchanged watch refresh (one vault); before: one GET per secret")
    print(f"{'secrets':>8} {'list pages':>11} {'GETs':>5} {'requests':>9} {'before':>7} {'target':>7}")
    rows = []
    for s in (10, 25, 50, 100, 250):
        names = [f"s{i:03d}" for i in range(s)]
        sub = os.path.join(work, f"s{s}")
        os.makedirs(sub)
        emu, env, ctl = start_emulator(ARGS.emulator, sub, names)
        addr = "127.0.0.1:18090"
        env = dict(env, KVFETCH_SECRETS=",".join(names), KVFETCH_DIR=os.path.join(work, f"out{s}"))
        w = subprocess.Popen([ARGS.kvfetch, "watch", "-q", "--refresh", "100ms", "--health-listen", addr], env=env)
        try:
            while metric(addr, "kvfetch_refreshes_total") < 1:
                time.sleep(0.02)
            time.sleep(1.1)  # values fetched in their own second are read once more
            wait_refreshes(addr, 2)
            control(ctl, "POST", "counters/reset")
            k = 10
            wait_refreshes(addr, k)
            c = control(ctl)
        finally:
            w.terminate()
            w.wait()
            emu.terminate()
            emu.wait()
        # Refreshes that completed after the reset; one more may have started.
        per = c["kv_total_requests"] / k
        lists = c["kv_list_requests"] / k
        gets = (c["kv_total_requests"] - c["kv_list_requests"]) / k
        target = math.ceil(s / 25) + 1
        rows.append((s, per))
        print(f"{s:8d} {lists:11.1f} {gets:5.1f} {per:9.1f} {s:7d} {target:7d}")
    print()
    print("# requests per hour for a fleet (pods x secrets x refresh interval): today vs with list detection")
    print("# (with detection: ceil(S/25) list pages per refresh, plus one full read of S GETs per hour)")
    print(f"{'pods':>6} {'secrets':>8} {'refresh':>8} {'before /h':>12} {'list /h':>12} {'saving':>7}")
    for pods, s, every in ((100, 20, 300), (1000, 20, 300), (1000, 20, 60), (1000, 100, 300), (5000, 50, 300)):
        refreshes = 3600 / every
        before = pods * s * refreshes
        after = pods * (math.ceil(s / 25) * refreshes + s)
        print(f"{pods:6d} {s:8d} {every:7d}s {before:12,.0f} {after:12,.0f} {before / after:6.1f}x")


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("suite", choices=["fleet", "refresh-cost"])
    ap.add_argument("--kvfetch", required=True)
    ap.add_argument("--emulator", required=True)
    ap.add_argument("--processes", type=int, default=40)
    ap.add_argument("--secrets", type=int, default=25)
    ap.add_argument("--rate", type=int, default=200)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    ARGS = ap.parse_args(argv[: len(argv) - len(extra) - (1 if extra or "--" in argv else 0)])
    ARGS.extra = extra  # kvfetch flags for the fleet, after --
    work = tempfile.mkdtemp(prefix="kvfetch-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        {"fleet": bench_fleet, "refresh-cost": bench_refresh_cost}[ARGS.suite](work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
