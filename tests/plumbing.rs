//! Processes, signals, limits and clocks around the fetch (issue "Supervisor and process
//! plumbing"): each test reproduces one defect found on the build before the fixes.

mod common;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

fn alive(pid: i32) -> bool {
    // A zombie is not alive: it only waits to be reaped.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start())
                .unwrap_or("");
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

fn seeded(value: &str) -> Emulator {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", value);
    emu
}

// 1. Shutdown wins.

#[test]
fn sigterm_during_a_restart_stops_everything_and_starts_nothing() {
    let emu = seeded("Pq1-first");
    let s = Scratch::new();
    let log = s.path("log");
    // The child takes 0.5 s to stop, so SIGTERM to kvfetch lands in the middle of the restart.
    let script = format!(
        "trap 'echo term >> {0}; sleep 0.5; exit 0' TERM; echo \"up $A\" >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised(
        &env_for(&emu),
        &["--secret", "A=a", "--grace", "3s"],
        &script,
    );
    wait_for("the child", ms(5000), || read(&log).contains("up"));
    emu.set_secret("a", "Pq1-second");
    wait_for("the restart's SIGTERM", ms(5000), || {
        read(&log).contains("term")
    });
    let t = Instant::now();
    sup.signal(SIGTERM);
    assert_eq!(sup.exit_within(ms(3500)), Some(0), "the child's status");
    assert!(t.elapsed() < ms(3000), "{:?}", t.elapsed());
    std::thread::sleep(ms(300));
    assert_eq!(
        read(&log).matches("up").count(),
        1,
        "no new child: {}",
        read(&log)
    );
}

#[test]
fn a_rotation_during_shutdown_starts_nothing() {
    let emu = seeded("Pq2-first");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap 'echo term >> {0}; sleep 1; exit 7' TERM; echo up >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised(
        &env_for(&emu),
        &["--secret", "A=a", "--grace", "3s"],
        &script,
    );
    wait_for("the child", ms(5000), || read(&log).contains("up"));
    sup.signal(SIGTERM);
    wait_for("the child's SIGTERM", ms(3000), || {
        read(&log).contains("term")
    });
    emu.set_secret("a", "Pq2-second");
    assert_eq!(sup.exit_within(ms(4000)), Some(7));
    assert_eq!(read(&log).matches("up").count(), 1, "{}", read(&log));
}

// 2. SIGKILL once.

#[test]
fn sigkill_goes_once_after_grace() {
    let emu = seeded("x");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap '' TERM; echo up >> {}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised(
        &env_for(&emu),
        &["--secret", "a", "--grace", "300ms"],
        &script,
    );
    wait_for("the child", ms(5000), || read(&log).contains("up"));
    let t = Instant::now();
    sup.signal(SIGTERM);
    assert_eq!(sup.exit_within(ms(3000)), Some(137), "128 + SIGKILL");
    assert!(
        t.elapsed() >= ms(250),
        "SIGKILL only after --grace: {:?}",
        t.elapsed()
    );
    let stderr = sup.stop_and_stderr();
    assert_eq!(stderr.matches("sending SIGKILL").count(), 1, "{stderr}");
}

// 3. The whole process group, and nothing left behind.

#[test]
fn restarts_and_exit_reach_the_whole_group_and_every_orphan() {
    let emu = seeded("Pq3-first");
    let s = Scratch::new();
    let (pids, log) = (s.path("pids"), s.path("log"));
    // `app` (a background sleep) shares the child's group; `escaped` leaves it with setsid.
    let script = format!(
        "sleep 1000 & echo \"app $!\" >> {p}; setsid sleep 1000 & echo \"escaped $!\" >> {p}; echo up >> {l}; wait",
        p = pids.display(),
        l = log.display()
    );
    let pid_of = |what: &str, nth: usize| -> i32 {
        read(&pids)
            .lines()
            .filter(|l| l.starts_with(what))
            .nth(nth)
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap()
    };
    let mut sup = supervised(&env_for(&emu), &["--secret", "a", "--grace", "1s"], &script);
    wait_for("the first generation", ms(5000), || {
        read(&log).contains("up")
    });
    let first_app = pid_of("app", 0);
    emu.set_secret("a", "Pq3-second");
    wait_for("the second generation", ms(8000), || {
        read(&log).matches("up").count() == 2
    });
    assert!(
        !alive(first_app),
        "the old generation's app was stopped with its group"
    );
    let second_app = pid_of("app", 1);
    let escaped = [pid_of("escaped", 0), pid_of("escaped", 1)];
    assert!(alive(second_app));
    sup.signal(SIGTERM);
    assert!(sup.exit_within(ms(4000)).is_some());
    std::thread::sleep(ms(200));
    assert!(!alive(second_app), "the group ends with kvfetch");
    for pid in escaped {
        assert!(
            !alive(pid),
            "an orphan left with kvfetch ends with it ({pid})"
        );
    }
}

// 4. A new environment that cannot be built keeps the healthy child.

#[test]
fn an_unusable_rotation_keeps_the_old_child_and_is_counted() {
    let emu = seeded("Pq4-first");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "echo \"up $A\" >> {}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised(
        &env_for(&emu),
        &["--secret", "A=a", "--health-listen", "127.0.0.1:0"],
        &script,
    );
    let addr = sup.health_addr();
    wait_for("the child", ms(5000), || {
        read(&log).contains("up Pq4-first")
    });
    for bad in ["with\0nul".to_string(), "x".repeat(200 * 1024)] {
        let before = metric(&addr, "kvfetch_restarts_refused_total");
        emu.set_secret("a", &bad);
        wait_for("a refused restart", ms(5000), || {
            metric(&addr, "kvfetch_restarts_refused_total") > before
        });
        assert_eq!(read(&log).matches("up").count(), 1, "the old child runs on");
    }
    assert_eq!(sup.exit_within(ms(10)), None);
    emu.set_secret("a", "Pq4-third");
    wait_for("the restart with a usable value", ms(15000), || {
        read(&log).contains("up Pq4-third")
    });
    let stderr = sup.stop_and_stderr();
    assert!(stderr.contains("keeps the old ones"), "{stderr}");
    assert!(
        !stderr.contains("with\\u{0}nul") && !stderr.contains("xxxxxxxx"),
        "no value"
    );
}

// 5. Signals are handled before the first request, also as PID 1.

#[test]
fn sigterm_ends_the_first_fetch_even_as_pid_1() {
    for mode in [
        &["fetch", "--dir", "DIR"][..],
        &["exec", "--", "true"],
        &["watch", "--dir", "DIR"],
    ] {
        let emu = seeded("x");
        for _ in 0..1000 {
            emu.push_imds_fault(Fault::Status(503)); // the first fetch keeps waiting
        }
        let s = Scratch::new();
        let dir = s.path("out").display().to_string();
        let mut args: Vec<&str> = vec![mode[0], "--secret", "a"];
        args.extend(
            mode[1..]
                .iter()
                .map(|a| if *a == "DIR" { dir.as_str() } else { a }),
        );
        let mut env = env_for(&emu);
        env.insert("KVFETCH_TIMEOUT".into(), "30s".into());
        env.insert("KVFETCH_BACKOFF_BASE".into(), "100ms".into());
        let Some((mut kv, inner)) = as_pid_1(&env, &args) else {
            return;
        };
        wait_for("the identity endpoint being retried", ms(5000), || {
            emu.counters().imds_token_requests >= 2
        });
        let t = Instant::now();
        kill(inner, SIGTERM);
        let code = kv.exit_within(ms(3000));
        assert!(code.is_some(), "{mode:?}: SIGTERM to PID 1 was ignored");
        assert_eq!(code, Some(143), "{mode:?}: 128 + SIGTERM, not success");
        assert!(t.elapsed() < ms(1500), "{mode:?}: {:?}", t.elapsed());
        assert!(s.entries("").is_empty(), "{mode:?}: nothing written");
    }
}

#[test]
fn supervisor_as_pid_1_under_a_proc_of_another_namespace_ends_with_the_childs_status() {
    // `unshare --pid --fork` without --mount-proc: /proc still shows the outer namespace, whose
    // pids mean other processes here (the outer init's children have ppid 1, kvfetch's own pid).
    // kvfetch must neither take them for its orphans (and wait --grace for them) nor signal them.
    let emu = seeded("v");
    let env = env_for(&emu);
    let args = [
        "exec",
        "--secret",
        "a",
        "--refresh",
        "1h",
        "--grace",
        "20s",
        "--",
        "sh",
        "-c",
        "trap 'exit 42' TERM; echo up; while :; do sleep 0.05; done",
    ];
    let Some((mut kv, inner)) = as_pid_1(&env, &args) else {
        return;
    };
    kv.wait("the child's start", ms(10000), || {
        kv.stderr().contains("child started")
    });
    let t = Instant::now();
    kill(inner, SIGTERM);
    let code = kv.exit_within(ms(5000));
    assert_eq!(code, Some(42), "the child's status: {}", kv.stderr());
    assert!(t.elapsed() < ms(3000), "{:?}", t.elapsed());
}

// 7. A token whose expires_on is already past.

#[test]
fn a_token_from_a_skewed_clock_is_requested_once() {
    let emu = Emulator::start().unwrap();
    for n in ["a", "b", "c", "d"] {
        emu.set_secret(n, "v");
    }
    emu.set_clock_skew(-2 * 86_400); // the answer's expires_on lies a day in the past
    let s = Scratch::new();
    let dir = s.path("out").display().to_string();
    let r = run(
        &emu,
        &[
            "fetch", "--secret", "a", "--secret", "b", "--secret", "c", "--secret", "d", "--dir",
            &dir,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(emu.counters().imds_token_requests, 1);
    assert_eq!(
        r.stderr.matches("check the clock").count(),
        1,
        "{}",
        r.stderr
    );

    emu.reset_counters();
    let mut w = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--secret",
            "a",
            "--secret",
            "b",
            "--dir",
            &dir,
            "--refresh",
            "50ms",
        ],
    );
    wait_for("many refreshes", ms(8000), || {
        emu.counters().kv_total_requests >= 30
    });
    assert_eq!(emu.counters().imds_token_requests, 1, "timed by expires_in");
    let stderr = w.stop_and_stderr();
    assert_eq!(
        stderr.matches("check the clock").count(),
        1,
        "warned once: {stderr}"
    );

    // Without expires_in (the App Service shape) it is used until the vault says 401.
    emu.reset_counters();
    let mut env = env_for(&emu);
    env.insert("IDENTITY_ENDPOINT".into(), emu.identity_endpoint());
    env.insert("IDENTITY_HEADER".into(), emu.identity_header().into());
    let mut w = Background::start(
        &env,
        &["watch", "--secret", "a", "--dir", &dir, "--refresh", "50ms"],
    );
    wait_for("many refreshes", ms(8000), || {
        emu.counters().kv_total_requests >= 20
    });
    assert_eq!(emu.counters().app_service_token_requests, 1);
    w.stop_and_stderr();
}

// 8. Children start with default dispositions and an empty mask.

#[test]
fn children_start_with_default_signal_dispositions() {
    let emu = seeded("x");
    let mut env = env_for(&emu);
    env.insert("KVFETCH_BIN_UNDER_TEST".into(), bin());
    for refresh in [&["--refresh", "1h"][..], &[]] {
        // The parent ignores and blocks signals; kvfetch passes none of that on.
        let script = format!(
            "trap '' USR1 TTOU INT; exec \"$KVFETCH_BIN_UNDER_TEST\" exec {} --secret a -- cat /proc/self/status",
            refresh.join(" ")
        );
        let out = Command::new("sh")
            .args(["-c", &script])
            .env_clear()
            .envs(&env)
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            field("SigIgn:"),
            "0000000000000000",
            "{refresh:?}: {status}"
        );
        assert_eq!(
            field("SigBlk:"),
            "0000000000000000",
            "{refresh:?}: {status}"
        );
    }
}

// 9. watch keeps what is on disk as it wrote it.

#[test]
fn watch_restores_outputs_and_readiness_tells() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "Pq9-alpha");
    emu.set_secret("b", "Pq9-beta");
    let s = Scratch::new();
    let (dir, env_file) = (s.path("out"), s.path("app.env"));
    let mut w = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--secret",
            "a",
            "--secret",
            "b",
            "--dir",
            dir.to_str().unwrap(),
            "--env-file",
            env_file.to_str().unwrap(),
            "--refresh",
            "100ms",
            "--health-listen",
            "127.0.0.1:0",
        ],
    );
    let addr = w.health_addr();
    wait_ready(&addr);
    let env_text = read(&env_file);
    std::fs::remove_file(dir.join("a")).unwrap();
    std::fs::set_permissions(
        dir.join("b"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(dir.join("b"), "tampered").unwrap();
    std::fs::write(&env_file, "A=evil\n").unwrap();
    wait_for("restored files", ms(5000), || {
        read(&dir.join("a")) == "Pq9-alpha"
            && read(&dir.join("b")) == "Pq9-beta"
            && read(&env_file) == env_text
    });
    assert_eq!(mode(&dir.join("b")), 0o400);
    std::fs::remove_dir_all(&dir).unwrap();
    wait_for("a recreated directory", ms(5000), || {
        read(&dir.join("a")) == "Pq9-alpha" && read(&dir.join("b")) == "Pq9-beta"
    });
    // What cannot be restored shows in /readyz until it can be.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, "in the way").unwrap();
    wait_for("/readyz to fail", ms(5000), || {
        http_get(&addr, "/readyz").0 == 503
    });
    std::fs::remove_file(&dir).unwrap();
    wait_for("/readyz again", ms(5000), || {
        http_get(&addr, "/readyz").0 == 200
    });
    assert_eq!(read(&dir.join("a")), "Pq9-alpha");
    let stderr = w.stop_and_stderr();
    assert!(stderr.contains("restored"), "{stderr}");
}

// 11. A stalled stderr reader.

#[test]
fn a_stalled_stderr_never_stops_refreshes_or_shutdown() {
    let emu = seeded("x");
    let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
    for n in &names {
        emu.set_secret(n, "v");
    }
    let s = Scratch::new();
    let dir = s.path("out").display().to_string();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_SECRETS".into(), names.join(","));
    // stderr is a pipe nobody reads (past the listener's address): -v logs every secret of
    // every refresh until it fills. Every refresh reads each secret (--full-read-every), so
    // each logs nine lines, not the one of a refresh by list.
    let child = Command::new(bin())
        .args([
            "watch",
            "-v",
            "--dir",
            &dir,
            "--refresh",
            "10ms",
            "--full-read-every",
            "10ms",
            "--health-listen",
            "127.0.0.1:0",
        ])
        .env_clear()
        .envs(&env)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = Background::undrained(child);
    let addr = w.health_addr();
    wait_ready(&addr);
    // The pipe (64 KiB) and the queue (1,024 lines): they took up to 40 s to fill on a loaded
    // machine when each refresh logged one line. The waits are bounds, not what it measures.
    wait_for("dropped log lines", ms(120_000), || {
        metric(&addr, "kvfetch_log_lines_dropped_total") > 0.0
    });
    let before = emu.counters().kv_total_requests;
    wait_for("refreshes going on", ms(10_000), || {
        emu.counters().kv_total_requests > before + 20
    });
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let t = Instant::now();
    w.signal(SIGTERM);
    assert_eq!(
        w.exit_within(ms(4000)),
        Some(0),
        "SIGTERM is not held up by logging"
    );
    assert!(t.elapsed() < ms(3000), "{:?}", t.elapsed());
}

// 12. Local limits are reported as what they are.

#[test]
fn out_of_file_descriptors_is_exit_9_not_throttling() {
    let emu = Emulator::start().unwrap();
    let names: Vec<String> = (0..16).map(|i| format!("s{i}")).collect();
    for n in &names {
        emu.set_secret(n, "v");
    }
    emu.set_kv_delay(ms(20));
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_SECRETS".into(), names.join(","));
    env.insert("KVFETCH_BIN_UNDER_TEST".into(), bin());
    let dir = s.path("out").display().to_string();
    let mut seen = Vec::new();
    for limit in 4..20 {
        let out = Command::new("prlimit")
            .arg(format!("--nofile={limit}:{limit}"))
            .args([&bin(), "fetch", "--dir", &dir, "--concurrency", "8"])
            .env_clear()
            .envs(&env)
            .output()
            .unwrap();
        let code = out.status.code().unwrap_or(-1);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if code == 127 && stderr.contains("error while loading shared libraries") {
            // Descriptors inherited from the test runner (cargo-mutants leaves some open) left
            // the loader none for a library: kvfetch never ran at this limit.
            continue;
        }
        assert!(
            [0, 2, 9].contains(&code),
            "limit {limit}: exit {code}: {stderr}"
        );
        if code == 9 {
            assert!(stderr.contains("limit"), "{stderr}");
        }
        seen.push(code);
    }
    assert!(seen.contains(&9), "{seen:?}");
    assert!(!seen.contains(&7), "never reported as throttling: {seen:?}");
}

#[test]
fn an_environment_too_large_for_execve_is_exit_9() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("big", &"y".repeat(200 * 1024));
    let r = run(&emu, &["exec", "--secret", "big", "--", "true"]);
    assert_eq!(r.code, 9, "{}", r.stderr);
    assert!(r.stderr.contains("--dir"), "{}", r.stderr);
    assert!(!r.stderr.contains("yyyyyyyy"));
}

// Found by the review of the supervisor.

fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the command.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

#[test]
fn a_refused_restart_is_retried_once_per_fetch_not_in_a_loop() {
    let emu = seeded("Pq5-first");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap 'exit 0' TERM; echo \"up $A\" >> {}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut all = vec![
        "exec",
        "--refresh",
        "300ms",
        "--secret",
        "A=a",
        "--health-listen",
        "127.0.0.1:0",
        "--",
        "sh",
        "-c",
    ];
    all.push(&script);
    let mut sup = Background::start(&env_for(&emu), &all);
    let addr = sup.health_addr();
    wait_for("the child", ms(5000), || {
        read(&log).contains("up Pq5-first")
    });
    emu.set_secret("a", "Pq5-second");
    wait_for("a restart", ms(5000), || {
        read(&log).contains("up Pq5-second")
    });
    emu.set_secret("a", "with\0nul");
    let refused = |addr: &str| metric(addr, "kvfetch_restarts_refused_total");
    // The refusal comes when the restart is due: 10 s after the last one.
    wait_for("a refusal", ms(15000), || refused(&addr) > 0.0);
    let (before, t) = (cpu_ticks(sup.pid()), Instant::now());
    std::thread::sleep(ms(2000));
    let n = refused(&addr);
    assert!(
        n <= 12.0,
        "{n} refusals in about 2 s: one per fetch at most"
    );
    let cpu = cpu_ticks(sup.pid()) - before;
    assert!(
        cpu < 50,
        "{cpu} ticks of CPU in {:?}: a busy loop",
        t.elapsed()
    );
    sup.stop_and_stderr();
}

#[test]
fn stopping_does_not_spin() {
    let emu = seeded("x");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap '' TERM; echo up >> {}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut all = vec![
        "exec",
        "--refresh",
        "1s",
        "--grace",
        "3s",
        "--secret",
        "a",
        "--",
        "sh",
        "-c",
    ];
    all.push(&script);
    let mut sup = Background::start(&env_for(&emu), &all);
    wait_for("the child", ms(5000), || read(&log).contains("up"));
    std::thread::sleep(ms(1200)); // past the first refresh's due time
    sup.signal(SIGTERM);
    std::thread::sleep(ms(200));
    let before = cpu_ticks(sup.pid());
    std::thread::sleep(ms(1500));
    let cpu = cpu_ticks(sup.pid()) - before;
    assert!(cpu < 40, "{cpu} ticks of CPU while waiting for --grace");
    assert_eq!(sup.exit_within(ms(4000)), Some(137));
}

#[test]
fn a_rotation_during_a_restart_reaches_the_new_child() {
    let emu = seeded("Pq6-first");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap 'echo term >> {0}; sleep 1; exit 0' TERM; echo \"up $A\" >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised(
        &env_for(&emu),
        &["--secret", "A=a", "--grace", "5s"],
        &script,
    );
    wait_for("the child", ms(5000), || {
        read(&log).contains("up Pq6-first")
    });
    emu.set_secret("a", "Pq6-second");
    wait_for("the restart's SIGTERM", ms(5000), || {
        read(&log).contains("term")
    });
    emu.set_secret("a", "Pq6-third");
    wait_for("the new child", ms(8000), || {
        read(&log).matches("up").count() == 2
    });
    std::thread::sleep(ms(300));
    assert!(read(&log).contains("up Pq6-third"), "{}", read(&log));
    sup.stop_and_stderr();
}

// 6. A thread that cannot be had after the first write fails that refresh, which is retried.

#[test]
fn a_refresh_without_a_thread_fails_and_is_retried() {
    if !root_or_skip("needs root to run kvfetch as another user under a process limit") {
        return;
    }
    let emu = seeded("x");
    let s = Scratch::new();
    users_dir(&s.path("out"), 64_015);
    // RLIMIT_NPROC 5 for a uid of its own: the main, log, signal, health and refresh threads fit; a
    // health connection's thread then takes the refresh thread's place.
    let dir = s.path("out").display().to_string();
    let child = as_user(
        64_015,
        &["prlimit", "--nproc=5:5"],
        &[
            "watch",
            "--secret",
            "a",
            "--dir",
            &dir,
            "--refresh",
            "100ms",
            "--health-listen",
            "127.0.0.1:0",
        ],
        &env_for(&emu),
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut w = Background::new(child);
    let addr = w.health_addr();
    w.wait("the first write", ms(5000), || s.path("out/a").exists());
    // Hold the thread budget with idle health connections (each has a thread for 2 s, and
    // holds it again when renewed).
    let mut idle: Vec<std::net::TcpStream> = Vec::new();
    w.wait("a refresh without a thread", ms(10000), || {
        idle.retain(|c| {
            c.peek(&mut [0u8])
                .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock)
        });
        while idle.len() < 3 {
            let c = std::net::TcpStream::connect(&addr).unwrap();
            c.set_nonblocking(true).unwrap();
            idle.push(c);
        }
        w.stderr().contains("thread limit")
    });
    // A probe that finds no thread is closed at once, not left waiting.
    let t = Instant::now();
    let (code, _) = http_get(&addr, "/healthz");
    assert!(
        t.elapsed() < ms(3000),
        "a probe waited {:?} (answered {code})",
        t.elapsed()
    );
    drop(idle);
    let before = emu.counters().kv_total_requests;
    w.wait("refreshes again", ms(10000), || {
        emu.counters().kv_total_requests > before + 3
    });
    // The health threads of the dropped connections may live a moment longer: /metrics is
    // asked until a thread answers it.
    w.wait("/metrics counts the refresh that failed", ms(10000), || {
        let (code, text) = http_get(&addr, "/metrics");
        code == 200
            && text.lines().any(|l| {
                l.strip_prefix("kvfetch_refresh_failures_total{kind=\"resource\"} ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .is_some_and(|v| v > 0.0)
            })
    });
    assert_eq!(w.exit_within(ms(10)), None, "still running");
    w.stop_and_stderr();
}

// Found by mutation testing of the supervisor.

#[test]
fn a_command_that_can_no_longer_run_keeps_the_old_child_until_it_can() {
    use std::os::unix::fs::PermissionsExt;
    let emu = seeded("Pq6-first");
    let s = Scratch::new();
    let log = s.path("log");
    let app = s.path("app.sh");
    std::fs::write(
        &app,
        format!(
            "#!/bin/sh\ntrap 'exit 0' TERM\necho \"up $A\" >> {}\nwhile :; do sleep 0.05; done\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&app, PermissionsExt::from_mode(0o755)).unwrap();
    let app_path = app.display().to_string();
    let mut sup = Background::start(
        &env_for(&emu),
        &[
            "exec",
            "--refresh",
            "100ms",
            "--grace",
            "1s",
            "--secret",
            "A=a",
            "--health-listen",
            "127.0.0.1:0",
            "--",
            &app_path,
        ],
    );
    let addr = sup.health_addr();
    sup.wait("the child", ms(5000), || {
        read(&log).contains("up Pq6-first")
    });
    // The program is no longer executable when a rotation comes: the restart is refused before
    // the old child is stopped, and the old child runs on.
    std::fs::set_permissions(&app, PermissionsExt::from_mode(0o644)).unwrap();
    emu.set_secret("a", "Pq6-second");
    sup.wait("a refused restart", ms(15000), || {
        metric(&addr, "kvfetch_restarts_refused_total") > 0.0
    });
    assert_eq!(read(&log).matches("up").count(), 1, "the old child runs on");
    assert_eq!(sup.exit_within(ms(10)), None, "kvfetch runs on");
    // Executable again: the restart is retried at the next fetch, with no further change.
    std::fs::set_permissions(&app, PermissionsExt::from_mode(0o755)).unwrap();
    sup.wait("the restart once the command can run", ms(15000), || {
        read(&log).contains("up Pq6-second")
    });
    sup.stop_and_stderr();
}

// Found by mutation testing of the supervisor (src/supervise.rs).

/// `kvfetch exec ARGS -- sh -c SCRIPT` with the refresh an hour away, so that only the
/// supervisor's own timers (and its 1 s heartbeat) wake its loop.
fn supervised_idle(
    env: &std::collections::HashMap<String, String>,
    args: &[&str],
    script: &str,
) -> Background {
    let mut all = vec!["exec", "--refresh", "1h"];
    all.extend(args);
    all.extend(["--", "sh", "-c", script]);
    Background::start(env, &all)
}

#[test]
fn an_idle_supervisor_fetches_only_when_a_refresh_is_due() {
    let emu = seeded("Pq7-first");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!("echo up >> {}; while :; do sleep 0.05; done", log.display());
    let mut sup = supervised_idle(&env_for(&emu), &["--secret", "a"], &script);
    wait_for("the child", ms(5000), || read(&log).contains("up"));
    std::thread::sleep(ms(2500)); // two heartbeats and more
    assert_eq!(
        emu.counters().kv_requests.get("a").copied(),
        Some(1),
        "the first fetch only"
    );
    sup.stop_and_stderr();
}

#[test]
fn forwarded_signals_reach_the_whole_group() {
    let emu = seeded("x");
    let s = Scratch::new();
    let log = s.path("log");
    // A grandchild in the child's process group: only a signal to the group reaches it.
    let script = format!(
        "trap 'echo main >> {0}' USR1; sh -c \"trap 'echo grand >> {0}' USR1; echo up >> {0}; while :; do sleep 0.05; done\" & while :; do wait; done",
        log.display()
    );
    let mut sup = supervised(&env_for(&emu), &["--secret", "a"], &script);
    wait_for("the grandchild", ms(5000), || read(&log).contains("up"));
    sup.signal(SIGUSR1);
    wait_for("both trapped it", ms(3000), || {
        read(&log).contains("grand") && read(&log).contains("main")
    });
    assert_eq!(read(&log).matches("grand").count(), 1, "{}", read(&log));
    sup.stop_and_stderr();
}

#[test]
fn sigkill_comes_when_grace_runs_out_not_at_the_next_heartbeat() {
    let emu = seeded("x");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap '' TERM; echo up >> {}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised_idle(
        &env_for(&emu),
        &["--secret", "a", "--grace", "200ms"],
        &script,
    );
    wait_for("the child", ms(5000), || read(&log).contains("up"));
    let t = Instant::now();
    sup.signal(SIGTERM);
    assert_eq!(sup.exit_within(ms(3000)), Some(137), "128 + SIGKILL");
    // The heartbeat would come 1 s after the SIGTERM; --grace ends at 200 ms.
    let took = t.elapsed();
    assert!(
        took >= ms(150) && took < ms(900),
        "SIGKILL at {took:?}, --grace 200ms"
    );
}

#[test]
fn a_restart_held_back_for_the_gap_does_not_spin() {
    let emu = seeded("Pq8-first");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap 'exit 0' TERM; echo \"up $A\" >> {}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised(&env_for(&emu), &["--secret", "A=a"], &script);
    wait_for("the child", ms(5000), || {
        read(&log).contains("up Pq8-first")
    });
    emu.set_secret("a", "Pq8-second");
    wait_for("the first restart", ms(5000), || {
        read(&log).contains("up Pq8-second")
    });
    emu.set_secret("a", "Pq8-third");
    std::thread::sleep(ms(500)); // the change is seen; its restart waits out the 10 s gap
    let before = cpu_ticks(sup.pid());
    std::thread::sleep(ms(1500));
    let cpu = cpu_ticks(sup.pid()) - before;
    assert!(
        cpu < 40,
        "{cpu} ticks of CPU while a restart waits for its gap"
    );
    assert!(
        !read(&log).contains("up Pq8-third"),
        "held back: {}",
        read(&log)
    );
    sup.stop_and_stderr();
}

#[test]
fn sigterm_while_a_restarting_group_lingers_ends_with_the_old_childs_status() {
    let emu = seeded("Pq9-first");
    let s = Scratch::new();
    let log = s.path("log");
    // The child exits 3 on SIGTERM at once; a grandchild that ignores it keeps the group alive.
    let script = format!(
        "echo \"up $A\" >> {0}; sh -c \"trap '' TERM; while :; do sleep 0.05; done\" & trap 'echo term >> {0}; exit 3' TERM; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised(
        &env_for(&emu),
        &["--secret", "A=a", "--grace", "2s"],
        &script,
    );
    wait_for("the child", ms(5000), || {
        read(&log).contains("up Pq9-first")
    });
    emu.set_secret("a", "Pq9-second");
    wait_for("the restart's SIGTERM", ms(5000), || {
        read(&log).contains("term")
    });
    std::thread::sleep(ms(200)); // the old child has exited; its group lingers
    sup.signal(SIGTERM);
    assert_eq!(sup.exit_within(ms(6000)), Some(3), "the old child's status");
    assert_eq!(
        read(&log).matches("up").count(),
        1,
        "nothing new started: {}",
        read(&log)
    );
}

#[test]
fn a_change_seen_during_shutdown_is_not_signalled_to_the_stopping_child() {
    let emu = seeded("Pq10-first");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap 'echo hup >> {0}' HUP; trap 'echo term >> {0}; sleep 2; exit 0' TERM; echo up >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised(
        &env_for(&emu),
        &[
            "--secret",
            "a",
            "--on-change",
            "signal:HUP",
            "--grace",
            "5s",
        ],
        &script,
    );
    wait_for("the child", ms(5000), || read(&log).contains("up"));
    // A refresh in flight when SIGTERM comes answers with a changed value after it (its first
    // request may be the list: an unchanged secret is not read again).
    emu.set_kv_delay(ms(800));
    let seen = emu.counters().kv_total_requests;
    wait_for("a refresh in flight", ms(5000), || {
        emu.counters().kv_total_requests > seen
    });
    emu.set_secret("a", "Pq10-second");
    sup.signal(SIGTERM);
    assert_eq!(sup.exit_within(ms(8000)), Some(0));
    let l = read(&log);
    assert!(l.contains("term") && !l.contains("hup"), "{l}");
}

/// The pid a script wrote on the line `what PID` of `pids`.
fn pid_in(pids: &std::path::Path, what: &str) -> i32 {
    read(pids)
        .lines()
        .find_map(|l| l.strip_prefix(what)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {what} pid in {}", read(pids)))
}

/// Write `text` as the shell script `name` in `s`; its path.
/// `@idle@` in the text is a loop that sleeps for about 30 s: a process a failed test leaves
/// behind ends by itself.
fn script_file(s: &Scratch, name: &str, text: &str) -> String {
    let path = s.path(name);
    let idle = "i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done";
    std::fs::write(&path, text.replace("@idle@", idle)).unwrap();
    path.display().to_string()
}

/// A script that ignores SIGTERM, writes `stubborn PID` to `pids` and then `stubborn-ready` to
/// `log`; its path.
fn stubborn_orphan(s: &Scratch, log: &std::path::Path, pids: &std::path::Path) -> String {
    let (l, p) = (log.display(), pids.display());
    script_file(
        s,
        "stubborn.sh",
        &format!("trap '' TERM; echo \"stubborn $$\" >> {p}; echo stubborn-ready >> {l}; @idle@"),
    )
}

#[test]
fn a_restart_waits_for_the_old_generations_orphans() {
    let emu = seeded("Pq11-first");
    let s = Scratch::new();
    let log = s.path("log").display().to_string();
    // An orphan outside the child's group (setsid) takes a second to finish after SIGTERM. The
    // child says it is up only once the orphans' traps are set.
    let orphan = script_file(
        &s,
        "orphan.sh",
        &format!(
            "trap 'echo \"orphan-term $A\" >> {log}; sleep 1; echo \"orphan-out $A\" >> {log}; exit 0' TERM; echo \"orphan-ready $A\" >> {log}; @idle@"
        ),
    );
    // A second orphan ends 0.3 s after SIGTERM: its exit must not bring the first another one.
    let quick = script_file(
        &s,
        "quick.sh",
        &format!("trap 'sleep 0.3; exit 0' TERM; echo \"quick-ready $A\" >> {log}; @idle@"),
    );
    let script = format!(
        "setsid sh {orphan} & setsid sh {quick} & \
         until grep -q \"orphan-ready $A\" {log} && grep -q \"quick-ready $A\" {log}; do sleep 0.02; done; \
         trap 'exit 0' TERM; echo \"up $A\" >> {log}; while :; do sleep 0.05; done"
    );
    let mut sup = supervised(
        &env_for(&emu),
        &["--secret", "A=a", "--grace", "5s"],
        &script,
    );
    let log = s.path("log");
    wait_for("the child", ms(5000), || {
        read(&log).contains("up Pq11-first")
    });
    emu.set_secret("a", "Pq11-second");
    wait_for("the second generation", ms(8000), || {
        read(&log).contains("up Pq11-second")
    });
    let l = read(&log);
    let (out, up) = (l.find("orphan-out Pq11-first"), l.find("up Pq11-second"));
    let stderr = sup.stop_and_stderr();
    assert!(
        out.is_some() && out < up,
        "the old orphan finished before the new child started: {l}\n{stderr}"
    );
    assert_eq!(
        l.matches("orphan-term Pq11-first").count(),
        1,
        "the orphan got SIGTERM once: {l}"
    );
}

#[test]
fn when_the_child_exits_its_group_and_orphans_get_sigterm_then_grace_then_sigkill() {
    let emu = seeded("x");
    let s = Scratch::new();
    let (log, pids) = (s.path("log"), s.path("pids"));
    let l = log.display();
    // The child exits 4 by itself and leaves: `careful`, an orphan that cleans up for 0.3 s on
    // SIGTERM; `stubborn`, an orphan that ignores SIGTERM; and `deep`, a grandchild's child in
    // the child's group (not a child of kvfetch even once its parent is gone), reached only by
    // a signal to the group. The child exits once all three have set their traps.
    let careful = script_file(
        &s,
        "careful.sh",
        &format!(
            "trap 'sleep 0.3; echo careful-clean >> {l}; exit 0' TERM; echo careful-ready >> {l}; @idle@"
        ),
    );
    let stubborn = stubborn_orphan(&s, &log, &pids);
    let deep = script_file(
        &s,
        "deep.sh",
        &format!("trap 'echo deep-term >> {l}; exit 0' TERM; echo deep-ready >> {l}; @idle@"),
    );
    let script = format!(
        "setsid sh {careful} & setsid sh {stubborn} & sh -c 'sh {deep} & wait' & \
         until [ \"$(grep -c ready {l})\" -ge 3 ]; do sleep 0.02; done; echo up >> {l}; exit 4"
    );
    let mut sup = supervised_idle(&env_for(&emu), &["--secret", "a", "--grace", "2s"], &script);
    wait_for("the child", ms(5000), || read(&log).contains("up"));
    let stubborn = pid_in(&pids, "stubborn");
    let t = Instant::now();
    assert_eq!(sup.exit_within(ms(6000)), Some(4), "the child's status");
    let took = t.elapsed();
    let l = read(&log);
    assert!(l.contains("careful-clean"), "an orphan had its grace: {l}");
    assert!(l.contains("deep-term"), "the group got SIGTERM: {l}");
    assert!(!alive(stubborn), "an orphan that ignores SIGTERM is killed");
    assert!(
        took >= ms(1500),
        "kvfetch waited --grace for the stubborn orphan ({took:?})"
    );
}

#[test]
fn grace_is_counted_from_the_shutdown_not_paid_again_at_exit() {
    let emu = seeded("x");
    let s = Scratch::new();
    let (log, pids) = (s.path("log"), s.path("pids"));
    let l = log.display();
    // The child takes 2 s to stop; an orphan ignores SIGTERM. With --grace 3s, everything is
    // gone 3 s after the SIGTERM, not 2 s + 3 s.
    let stubborn = stubborn_orphan(&s, &log, &pids);
    let script = format!(
        "setsid sh {stubborn} & until grep -q stubborn-ready {l}; do sleep 0.02; done; \
         trap 'sleep 2; exit 0' TERM; echo up >> {l}; while :; do sleep 0.05; done"
    );
    let mut sup = supervised_idle(&env_for(&emu), &["--secret", "a", "--grace", "3s"], &script);
    wait_for("the child", ms(5000), || read(&log).contains("up"));
    let stubborn = pid_in(&pids, "stubborn");
    let t = Instant::now();
    sup.signal(SIGTERM);
    assert_eq!(sup.exit_within(ms(8000)), Some(0), "the child's status");
    let took = t.elapsed();
    assert!(!alive(stubborn), "the orphan is killed at --grace");
    assert!(
        took >= ms(2800) && took < ms(4300),
        "{took:?} from SIGTERM to exit, --grace 3s"
    );
}

#[test]
fn out_of_file_descriptors_at_the_identity_request_is_exit_9_at_once() {
    let emu = seeded("x");
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_TIMEOUT".into(), "3s".into());
    // watch opens its signal pipe before the first fetch: some limit leaves it room but none
    // for the identity request's socket. Each limit up to that one fails at once.
    let mut identity_seen = false;
    for limit in 3..16 {
        let dir = s.path(&format!("out{limit}")).display().to_string();
        let mut child = Command::new("prlimit")
            .arg(format!("--nofile={limit}:{limit}"))
            .args([&bin(), "watch", "--secret", "a", "--dir", &dir])
            .env_clear()
            .envs(&env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while child.try_wait().unwrap().is_none() && t.elapsed() < ms(2000) {
            std::thread::sleep(ms(20));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if stderr.contains("identity endpoint") {
            assert_eq!(out.status.code(), Some(9), "limit {limit}: {stderr}");
            assert!(stderr.contains("raise the limit"), "{stderr}");
            assert!(t.elapsed() < ms(1500), "not retried: {stderr}");
            identity_seen = true;
            break;
        }
        if out.status.code().is_none() {
            break; // running (killed): the limit was high enough for everything
        }
    }
    assert!(
        identity_seen,
        "no limit left the identity request without a descriptor"
    );
}
