"""What the benchmarks share: starting the emulator and measuring one command."""
import os
import subprocess
import sys
import time


def start_emulator(emulator, work, names, value="value of {name}"):
    """Start the emulator with `names` seeded; return (process, kvfetch env, control URL)."""
    exports = os.path.join(work, "emulator.env")
    argv = [emulator, "--env-file", exports]
    for n in names:
        argv += ["--secret", f"{n}=" + value.format(name=n)]
    emu = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(exports) and os.path.getsize(exports) > 0:
            break
        time.sleep(0.05)
    env = dict(PATH=os.environ["PATH"], HOME=os.environ.get("HOME", "/root"))
    for line in open(exports):
        # Only the active block: `export K='V'` lines (the other sources' blocks are comments).
        if line.startswith("export "):
            k, v = line[len("export "):].strip().split("=", 1)
            env[k] = v[1:-1] if v[:1] == v[-1:] == "'" else v
    control_url = env.pop("CONTROL")
    return emu, env, control_url


def measure(argv, env, work):
    """Run argv under GNU time; return (wall s, cpu s, peak rss MB).

    Peak RSS comes from GNU time (a child forked straight from this Python process would inherit
    its RSS in ru_maxrss); CPU (user + system, the child's children included) from wait4, which
    has microsecond resolution where GNU time has centiseconds.
    """
    stats = os.path.join(work, "time.out")
    start = time.perf_counter()
    proc = subprocess.Popen(["/usr/bin/time", "-o", stats, "-f", "%M"] + argv, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{argv[0]} failed: {err}")
    rss_kb = open(stats).read().split()[-1]
    return wall, ru.ru_utime + ru.ru_stime, int(rss_kb) / 1024
