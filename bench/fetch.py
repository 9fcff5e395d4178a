#!/usr/bin/env python3
"""Benchmark `kvfetch fetch` against a bare hand-written client, the seed's curl recipe and the
official Azure SDK for Python.

All four clients fetch the same N secrets from the project's emulator (loopback only) and write
one file per secret into a tmpfs directory. Runs alternate between clients; the script prints the
median wall time, CPU time (user + system, children included) and peak RSS of each, and the ratios.

Usage: bench/fetch.py [--runs R] [--sizes 1,10,100] [--delays 0,10] [--clients kvfetch,bare,...]   (see bench/README section in
the project README; run via `bench/run`, which builds and installs what it needs).
"""
import argparse
import os
import shutil
import statistics
import tempfile
import urllib.request

from common import measure, start_emulator

HERE = os.path.dirname(os.path.abspath(__file__))

CURL_RECIPE = r'''
set -eu
TOKEN=$(curl -s -H Metadata:true "$AZURE_POD_IDENTITY_AUTHORITY_HOST/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net" | jq -r .access_token)
for s in $SECRETS; do
  curl -s --cacert "$KVFETCH_CA_FILE" -H "Authorization: Bearer $TOKEN" "$KVFETCH_VAULT/secrets/$s?api-version=7.5" | jq -r .value > "$OUT/$s"
done
'''

PYTHON_SDK = r'''
import os
from azure.identity import ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient
client = SecretClient(vault_url=os.environ["KVFETCH_VAULT"], credential=ManagedIdentityCredential(),
                      verify_challenge_resource=False, connection_verify=os.environ["KVFETCH_CA_FILE"])
for name in os.environ["SECRETS"].split():
    with open(os.path.join(os.environ["OUT"], name), "w") as f:
        f.write(client.get_secret(name).value)
'''


def control(base, method, path, body=b""):
    req = urllib.request.Request(base + path, data=body, method=method)
    urllib.request.urlopen(req).read()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sizes", default="1,10,100")
    ap.add_argument("--delays", default="0,10")
    ap.add_argument("--clients", default="kvfetch,bare,curl+jq,python-sdk",
                    help="which clients to run (kvfetch and bare always run)")
    ap.add_argument("--kvfetch", required=True)
    ap.add_argument("--bare", required=True)
    ap.add_argument("--emulator", required=True)
    ap.add_argument("--python", required=True)
    args = ap.parse_args()

    work = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    names = [f"bench-secret-{i:03d}" for i in range(max(int(s) for s in args.sizes.split(",")))]
    emu, env, control_url = start_emulator(args.emulator, work, names, "value of {name}: 0123456789abcdef0123456789abcdef")
    try:
        print(f"# {os.cpu_count()} cores; kvfetch {os.path.getsize(args.kvfetch)} bytes; {args.runs} runs each, alternating; medians")
        print(f"{'delay':>6} {'N':>4} {'client':<11} {'wall ms':>9} {'cpu ms':>8} {'rss MiB':>7}")
        for delay in [int(d) for d in args.delays.split(",")]:
            control(control_url, "PUT", "/kv-delay", str(delay).encode())
            for n in [int(s) for s in args.sizes.split(",")]:
                run_size(args, env, work, names[:n], delay)
    finally:
        emu.terminate()
        emu.wait()
        shutil.rmtree(work, ignore_errors=True)


def run_size(args, env, work, names, delay):
    env = dict(env, SECRETS=" ".join(names))
    clients = {
        "kvfetch": [args.kvfetch, "fetch", "-q"],
        "bare": [args.bare],
        "curl+jq": ["bash", "-c", CURL_RECIPE],
        "python-sdk": [args.python, "-c", PYTHON_SDK],
    }
    wanted = set(args.clients.split(",")) | {"kvfetch", "bare"}
    clients = {c: a for c, a in clients.items() if c in wanted}
    results = {c: [] for c in clients}
    for _ in range(args.runs):
        for client, argv in clients.items():
            out = os.path.join(work, "out")
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            cenv = dict(env, OUT=out, KVFETCH_DIR=out, KVFETCH_SECRETS=",".join(names))
            results[client].append(measure(argv, cenv, work))
            assert len(os.listdir(out)) == len(names), client
    med = {c: [statistics.median(x[i] for x in r) for i in range(3)] for c, r in results.items()}
    for client, (wall, cpu, rss) in med.items():
        print(f"{delay:>4}ms {len(names):>4} {client:<11} {wall*1000:>9.1f} {cpu*1000:>8.1f} {rss:>7.1f}")
    k = med["kvfetch"]
    b = med["bare"]
    verdict = "met" if k[0] / b[0] <= 1.2 else "NOT MET"
    print(f"{'':>6} {'':>4} {'vs bare':<11} wall {k[0]/b[0]:.2f}x, cpu {k[1]/max(b[1],1e-4):.2f}x, rss {k[2]/b[2]:.2f}x of the bare client (target: wall at most 1.2x): {verdict}")
    peak = max(x[2] for x in results["kvfetch"])
    print(f"{'':>6} {'':>4} {'rss':<11} kvfetch's highest peak RSS of {len(results['kvfetch'])} runs: {peak:.2f} MiB (budget: at most 6 MiB): {'met' if peak <= 6.0 else 'NOT MET'}")
    for other in ("curl+jq", "python-sdk"):
        if other not in med:
            continue
        o = med[other]
        print(f"{'':>6} {'':>4} {'ratio':<11} wall {o[0]/k[0]:.0f}x, cpu {o[1]/max(k[1],1e-4):.0f}x, rss {o[2]/k[2]:.1f}x faster/leaner than {other}")


if __name__ == "__main__":
    main()
