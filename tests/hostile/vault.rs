//! See main.rs. (area: vault) A hostile vault: list sizes, deadlines, throttling, and the names
//! a selection turns into variables.

use std::time::{Duration, Instant};

use crate::common::*;

/// The paths a test writes: `--dir`, an env file and a ready file in one scratch directory.
struct Out {
    s: Scratch,
}

impl Out {
    fn new() -> Out {
        Out { s: Scratch::new() }
    }
    fn dir(&self) -> String {
        self.s.path("out").to_str().unwrap().to_string()
    }
    fn file(&self, name: &str) -> String {
        self.s.path(name).to_str().unwrap().to_string()
    }
}

/// Defect 6: a `404 SecretNotFound` whose body the deadline cuts (one byte at a time) is a
/// deadline (exit 7), never a verdict: not "without Key Vault's SecretNotFound code ()" (exit 5),
/// and `?optional` does not turn it into absence.
#[test]
fn an_error_body_cut_by_the_deadline_is_a_deadline_not_a_verdict() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("here", "here-value-61c2");
    // The 404 of `gone` comes at once, its body (~250 bytes) over ~25 s, a byte each 100 ms.
    emu.push_kv_fault(Fault::DripBody(ms(100)));
    let out = Out::new();
    let t = Instant::now();
    let r = run(
        &emu,
        &[
            "fetch",
            "--vault",
            &emu.vault_url(),
            "--secret",
            "gone?optional",
            "--concurrency",
            "1",
            "--timeout",
            "2s",
            "--dir",
            &out.dir(),
        ],
    );
    let took = t.elapsed();
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(!r.stderr.contains("SecretNotFound code ()"), "{}", r.stderr);
    assert!(took < Duration::from_secs(2 + 5), "took {took:?}");
    assert!(!out.s.path("out").join("gone").exists());
    assert_no_leak(&r, &["here-value-61c2"]);
}

/// Defect 5: a 429 asking for 300 s, with `--max-stale 2s`: the sidecar ends about 2 s after its
/// last success with exit 7, not after the 20 s `--timeout`, and nothing is sent while the vault
/// asked for the pause.
#[test]
fn a_429_pause_ends_at_the_deadline_and_at_max_stale() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "a-value-3f90");
    let out = Out::new();
    let ready = out.file("ready");
    let mut bg = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--vault",
            &emu.vault_url(),
            "--secret",
            "a",
            "--refresh",
            "200ms",
            "--full-read-every",
            "10ms",
            "--max-stale",
            "2s",
            "--timeout",
            "20s",
            "--dir",
            &out.dir(),
            "--ready-file",
            &ready,
        ],
    );
    bg.wait("the first write", ms(10_000), || {
        std::path::Path::new(&ready).exists()
    });
    let before = emu.counters().kv_total_requests;
    emu.push_kv_fault(Fault::StatusRetryAfter(429, 300));
    let t = Instant::now();
    let code = bg.exit_within(ms(20_000));
    let took = t.elapsed();
    let stderr = bg.stop_and_stderr();
    assert_eq!(code, Some(7), "{stderr}");
    // --max-stale 2s after the last success, plus the refresh interval and a wide margin.
    assert!(took < Duration::from_secs(2 + 5), "took {took:?}: {stderr}");
    let sent = emu.counters().kv_total_requests - before;
    assert!(
        sent <= 2,
        "{sent} requests went to a vault that asked for a 300 s pause"
    );
    assert!(!stderr.contains("a-value-3f90"));
}

/// A vault of `n` secrets named `s00000`… with short values.
fn stocked(n: usize) -> Emulator {
    let emu = Emulator::start().unwrap();
    for i in 0..n {
        emu.set_secret(&format!("s{i:05}"), &format!("v{i:05}-7d2e"));
    }
    emu
}

/// Defect 3: `--timeout` bounds a run with a large selection. 400 secrets at 100 ms each with
/// 8 workers need ~7 s; with `--timeout 3s` the run ends by the deadline (plus a margin) with
/// exit 7, sends no request after it (the count stays far below one per secret) and says so in
/// a bounded number of lines.
#[test]
fn the_timeout_bounds_a_large_selection() {
    let emu = stocked(400);
    emu.set_kv_delay(ms(100));
    let out = Out::new();
    let t = Instant::now();
    let r = run(
        &emu,
        &[
            "fetch",
            "--vault",
            &emu.vault_url(),
            "--all",
            "--timeout",
            "3s",
            "--dir",
            &out.dir(),
        ],
    );
    let took = t.elapsed();
    let requests = emu.counters().kv_total_requests;
    assert_eq!(r.code, 7, "{}", r.stderr.lines().last().unwrap_or(""));
    assert!(took < Duration::from_secs(3 + 3), "took {took:?}");
    // 3 s of 100 ms requests on 8 connections is at most 240 requests (a loaded machine sends
    // fewer); one per secret would be 416 with the list's 16 pages.
    assert!(requests <= 300, "{requests} requests");
    let lines = r.stderr.lines().count();
    assert!(lines <= 10, "{lines} lines on stderr");
    assert!(!out.s.path("out").exists() || out.s.entries("out").is_empty());
    std::thread::sleep(ms(500));
    assert_eq!(emu.counters().kv_total_requests, requests);
}

/// `kvfetch ARGS` against `emu` under an address-space limit of `bytes` (`prlimit --as`).
fn run_limited(emu: &Emulator, bytes: u64, args: &[&str]) -> Run {
    let limit = format!("--as={bytes}");
    let out = std::process::Command::new("prlimit")
        .args([limit.as_str(), "--", &bin()])
        .args(args)
        .env_clear()
        .envs(env_for(emu))
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Defect 1: pages of ~1 MiB of tiny unique entries (18,000 a page, 1,000 pages) under a 1 GiB
/// address-space limit: kvfetch refuses the first page that holds more entries than Key Vault
/// ever sends (exit 8, saying so), within seconds, and never aborts.
#[test]
fn a_list_page_of_too_many_entries_is_refused_not_an_abort() {
    let emu = Emulator::start().unwrap();
    emu.set_list_flood(Some((18_000, 1000)));
    let out = Out::new();
    let t = Instant::now();
    let r = run_limited(
        &emu,
        1 << 30,
        &[
            "fetch",
            "--vault",
            &emu.vault_url(),
            "--all",
            "--timeout",
            "60s",
            "--dir",
            &out.dir(),
        ],
    );
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(r.stderr.contains("entries"), "{}", r.stderr);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert!(emu.counters().kv_list_requests <= 2);
}

/// Defect 1: a selection of more than 10,000 names is an error that says so (exit 8) before
/// any secret is read.
#[test]
fn a_selection_over_the_total_cap_is_an_error_that_says_so() {
    let emu = Emulator::start().unwrap();
    emu.set_list_flood(Some((100, 101)));
    let out = Out::new();
    let r = run(
        &emu,
        &[
            "fetch",
            "--vault",
            &emu.vault_url(),
            "--all",
            "--timeout",
            "10s",
            "--dir",
            &out.dir(),
        ],
    );
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(r.stderr.contains("more than 10000 secrets"), "{}", r.stderr);
    assert!(emu.counters().kv_requests.is_empty(), "a secret was read");
}

/// Defect 16: watching 2 secrets of a 1,000-secret vault (41 pages): an unchanged refresh costs
/// at most min(pages, 2) + 1 = 3 requests, not a list of every page.
#[test]
fn watching_a_few_secrets_of_a_big_vault_costs_at_most_their_reads_plus_one() {
    let emu = stocked(1000);
    emu.set_secret("zz-a", "zz-a-value-0b1e");
    emu.set_secret("zz-b", "zz-b-value-6c3d");
    let out = Out::new();
    let mut w = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--vault",
            &emu.vault_url(),
            "--secret",
            "zz-a",
            "--secret",
            "zz-b",
            "--refresh",
            "100ms",
            "--dir",
            &out.dir(),
            "--health-listen",
            "127.0.0.1:0",
        ],
    );
    let addr = w.health_addr();
    wait_ready(&addr);
    let done = || metric(&addr, "kvfetch_refreshes_total");
    // Values read in the second they were written are read once more: let that pass.
    std::thread::sleep(ms(1100));
    let start = done();
    w.wait("refreshes", ms(20_000), || done() >= start + 2.0);
    emu.reset_counters();
    let start = done();
    w.wait("refreshes", ms(20_000), || done() >= start + 3.0);
    let c = emu.counters();
    let refreshes = done() - start;
    // A refresh may be under way as the counters are read: allow one more.
    let bound = 3.0 * (refreshes + 1.0);
    assert!(
        (c.kv_total_requests as f64) <= bound,
        "{} requests in {refreshes} refreshes (lists: {}): {c:?}",
        c.kv_total_requests,
        c.kv_list_requests
    );
    let _ = w.stop_and_stderr();
}

/// The variable names in `env`'s output.
fn names_in(env_output: &str) -> Vec<String> {
    env_output
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
        .collect()
}

/// Defect 4: names a vault writer adds never set a variable a runtime reads for code, libraries,
/// trust roots or temp paths. With `--prefix app-`, selected secrets keep the prefix in their
/// variables (`app-erl-aflags` → `APP_ERL_AFLAGS`, never `ERL_AFLAGS`); `--allow-env DB` lets
/// the operator name a bare one; `--all` puts names into variables only under `--env-prefix`,
/// and without it (nor `--allow-env`) is a usage error before any request.
#[test]
fn a_vault_writer_cannot_set_runtime_variables_through_a_selection() {
    let emu = Emulator::start().unwrap();
    let hostile = [
        "erl-aflags",
        "erl-flags",
        "erl-zflags",
        "elixir-erl-options",
        "lua-init",
        "grpc-default-ssl-roots-file-path",
        "aspnetcore-hostingstartupassemblies",
        "temp",
        "tmp",
        "krb5-config",
    ];
    for name in hostile {
        emu.set_secret(&format!("app-{name}"), "-eval 'os:cmd(\"id\")'");
    }
    emu.set_secret("app-db", "db-value-44e0");
    let vault = emu.vault_url();
    let exec = |extra: &[&str]| {
        let mut args = vec!["exec", "--vault", &vault];
        args.extend_from_slice(extra);
        args.extend(["--", "sh", "-c", "env"]);
        run(&emu, &args)
    };
    let bare: Vec<String> = hostile
        .iter()
        .map(|n| n.to_ascii_uppercase().replace('-', "_"))
        .collect();
    // --prefix: the vault's prefix stays in every variable.
    let r = exec(&["--prefix", "app-"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let names = names_in(&r.stdout);
    for b in &bare {
        assert!(!names.contains(b), "{b} reached the child");
        assert!(names.contains(&format!("APP_{b}")), "APP_{b}: {names:?}");
    }
    assert!(names.contains(&"APP_DB".to_string()), "{names:?}");
    // --allow-env names a bare variable the operator wants.
    let r = exec(&["--prefix", "app-", "--allow-env", "DB"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.lines().any(|l| l == "DB=db-value-44e0"));
    // --all without a prefix for the variables: exit 2, nothing requested, nothing run.
    emu.reset_counters();
    let r = exec(&["--all"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--env-prefix"), "{}", r.stderr);
    assert_eq!(emu.counters().kv_total_requests, 0);
    assert!(r.stdout.is_empty());
    // --all --env-prefix KV_: every variable under it.
    let r = exec(&["--all", "--env-prefix", "KV_"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let names = names_in(&r.stdout);
    assert!(
        names.contains(&"KV_APP_ERL_AFLAGS".to_string()),
        "{names:?}"
    );
    for b in &bare {
        assert!(!names.contains(b), "{b} reached the child");
    }
    assert!(!r.stderr.contains("db-value-44e0") && !r.stderr.contains("eyJ"));
}

/// Defect 5, in `fetch`: after `429 Retry-After: 300` the other secrets do not wait out the
/// 20 s `--timeout` at the gate and then go with a 1 ms timeout: the run ends at once, exit 7,
/// with one request sent, and says the vault asked for a pause past the deadline.
#[test]
fn a_429_pause_past_the_deadline_ends_a_fetch_at_once() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "a-value-5512");
    emu.set_secret("b", "b-value-5513");
    emu.push_kv_fault(Fault::StatusRetryAfter(429, 300));
    let out = Out::new();
    let t = Instant::now();
    let r = run(
        &emu,
        &[
            "fetch",
            "--vault",
            &emu.vault_url(),
            "--secret",
            "a",
            "--secret",
            "b",
            "--concurrency",
            "1",
            "--timeout",
            "20s",
            "--dir",
            &out.dir(),
        ],
    );
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(emu.counters().kv_total_requests, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("past this run's deadline"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.lines().count() <= 2, "{}", r.stderr);
    assert_no_leak(&r, &["a-value-5512", "b-value-5513"]);
}

/// Defect 1: the whole list is capped too: 251 pages of 100 entries (25,100) end the list with
/// exit 8 that says so, however well-formed each page is.
#[test]
fn a_list_over_the_total_cap_is_refused() {
    let emu = Emulator::start().unwrap();
    emu.set_list_flood(Some((100, 251)));
    let out = Out::new();
    let r = run(
        &emu,
        &[
            "fetch",
            "--vault",
            &emu.vault_url(),
            "--prefix",
            "none-",
            "--timeout",
            "60s",
            "--dir",
            &out.dir(),
        ],
    );
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(r.stderr.contains("more than 25000 secrets"), "{}", r.stderr);
    assert_eq!(emu.counters().kv_list_requests, 251);
}

/// Defect 1: the list is capped by what it keeps too (names, content types and tags): 32 MiB
/// exactly is read (4,096 entries of 8 KiB, each within Key Vault's limits on content types and
/// tags), one entry more ends the list with exit 8 that says so.
#[test]
fn a_list_over_the_byte_cap_is_refused_and_one_at_it_is_read() {
    const ENTRY: usize = 8 << 10;
    let emu = Emulator::start().unwrap();
    // An entry of exactly 8 KiB kept: name + content type = 256, 10 tags of 512 + 256, and one
    // of 100 + 156.
    let entry = |name: &str| {
        let mut tags: std::collections::BTreeMap<String, String> = (0..10)
            .map(|j| (format!("{j:0>512}"), "v".repeat(256)))
            .collect();
        tags.insert("t".repeat(100), "u".repeat(156));
        SecretInput {
            value: format!("{name}-value-5e07"),
            content_type: Some("c".repeat(256 - name.len())),
            tags,
            ..Default::default()
        }
    };
    emu.set_secret_with("app-db", entry("app-db"));
    for i in 1..4096 {
        let name = format!("big-{i:04}");
        emu.set_secret_with(&name, entry(&name));
    }
    let fetch = |out: &Out| {
        run(
            &emu,
            &[
                "fetch",
                "--vault",
                &emu.vault_url(),
                "--prefix",
                "app-",
                // 34 MB of JSON read by a debug build on a loaded machine: minutes, not seconds.
                "--timeout",
                "600s",
                "--dir",
                &out.dir(),
            ],
        )
    };
    let out = Out::new();
    let r = fetch(&out);
    assert_eq!(
        r.code, 0,
        "4096 x {ENTRY} bytes is the cap, not past it: {}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(std::path::Path::new(&out.dir()).join("db")).unwrap(),
        "app-db-value-5e07"
    );
    emu.set_secret("big-4096", "big-4096-value-5e07");
    let out = Out::new();
    let r = fetch(&out);
    assert_eq!(r.code, 8, "{}", r.stderr);
    assert!(r.stderr.contains("32 MiB of names"), "{}", r.stderr);
    assert_no_leak(&r, &["-value-5e07"]);
}

/// Fix C3: an identity-endpoint 410 ("back within 70 s") does not hold a `watch` refresh past
/// `--max-stale`: with tokens of 12 s (renewed after 6 s) and IMDS answering 410 from then on,
/// the sidecar ends with exit 7 about 3 s after its last success, not after the 70 s window.
#[test]
fn an_identity_410_does_not_hold_a_refresh_past_max_stale() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db", "db-value-8c31");
    emu.set_token_lifetime(Duration::from_secs(12));
    let out = Out::new();
    let ready = out.file("ready");
    let mut bg = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--vault",
            &emu.vault_url(),
            "--secret",
            "db",
            "--refresh",
            "2s",
            "--max-stale",
            "3s",
            "--timeout",
            "2s",
            // The default: the 410 window is 70 s.
            "--backoff-base",
            "1s",
            "--dir",
            &out.dir(),
            "--ready-file",
            &ready,
        ],
    );
    bg.wait("the first write", ms(10_000), || {
        std::path::Path::new(&ready).exists()
    });
    for _ in 0..40 {
        emu.push_imds_fault(Fault::Status(410));
    }
    // The token is renewed ~6 s after it was issued; then 3 s of --max-stale and a wide margin
    // (the 410 window alone would be 70 s).
    let code = bg.exit_within(ms(25_000));
    let stderr = bg.stop_and_stderr();
    assert_eq!(code, Some(7), "{stderr}");
    assert!(!stderr.contains("db-value-8c31"));
}

/// Fix C5: `--env-prefix` (and `--prefix` as the variables' prefix) cannot be a runtime's or
/// tool's namespace, nor the beginning of one: `GO` + `maxprocs` would be `GOMAXPROCS`,
/// `SPRING_` + `application-json` `SPRING_APPLICATION_JSON`, `OTEL_` + … the exporter's
/// endpoint. Each is exit 2 before any request, nothing run; an app's own prefix works.
#[test]
fn an_env_prefix_cannot_be_a_runtime_namespace() {
    let emu = Emulator::start().unwrap();
    for (name, value) in [
        ("maxprocs", "1"),
        ("traceback", "crash"),
        (
            "application-json",
            "{\"spring.main.sources\":\"http://127.0.0.1:1/x\"}",
        ),
        ("exporter-otlp-endpoint", "http://127.0.0.1:1"),
        ("arena-max", "1"),
        ("host", "127.0.0.1"),
        ("libs", "/tmp/evil"),
        ("db", "db-value-c5a1"),
    ] {
        emu.set_secret(name, value);
    }
    let vault = emu.vault_url();
    let exec = |extra: &[&str]| {
        let mut args = vec!["exec", "--vault", &vault, "--all"];
        args.extend_from_slice(extra);
        args.extend(["--", "sh", "-c", "echo ran; env"]);
        run(&emu, &args)
    };
    for prefix in [
        "GO", "GO_", "SPRING_", "OTEL_", "MALLOC_", "PG", "R_", "DENO_", "DOCKER_", "NODE",
        "PYTHON_", "HTTP_", "JAVA_", "X_", "APP", "_",
    ] {
        emu.reset_counters();
        let r = exec(&["--env-prefix", prefix]);
        assert_eq!(r.code, 2, "--env-prefix {prefix}: {}", r.stderr);
        assert!(r.stderr.contains("--env-prefix"), "{prefix}: {}", r.stderr);
        assert!(r.stdout.is_empty(), "{prefix}: the command ran");
        assert_eq!(emu.counters().kv_total_requests, 0, "{prefix}");
        assert_no_leak(&r, &["db-value-c5a1"]);
    }
    // `--prefix go` as the variables' prefix is `GO`: refused the same way.
    let r = exec(&["--prefix", "go"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for prefix in ["APP_", "MYAPP_", "KV_"] {
        let r = exec(&["--env-prefix", prefix]);
        assert_eq!(r.code, 0, "--env-prefix {prefix}: {}", r.stderr);
        let names = names_in(&r.stdout);
        assert!(names.contains(&format!("{prefix}DB")), "{names:?}");
        assert!(names.contains(&format!("{prefix}MAXPROCS")), "{names:?}");
        assert!(
            !names
                .iter()
                .any(|n| n == "GOMAXPROCS" || n == "SPRING_APPLICATION_JSON")
        );
    }
}

/// Fix C6: a list of 10,000 entries whose ids name no valid secret, or of 10,000 disabled
/// secrets, logs a few of them by name and one line with the count, not a line each (the
/// reviewer saw 30,003 lines for 30,000 invalid ids); in `fetch` and in `doctor`.
#[test]
fn a_hostile_list_does_not_flood_the_log() {
    use kvfetch_emulator::FloodKind;
    let emu = Emulator::start().unwrap();
    emu.set_list_flood(Some((100, 100)));
    let vault = emu.vault_url();
    for kind in [FloodKind::InvalidIds, FloodKind::Disabled] {
        emu.set_list_flood_kind(kind);
        let out = Out::new();
        let dir = out.dir();
        let fetch = ["fetch", "--vault", &vault, "--all", "--dir", &dir];
        let doctor = ["doctor", "--vault", &vault, "--all", "--dir", &dir];
        for args in [&fetch[..], &doctor[..]] {
            let r = run(&emu, args);
            let lines = r.stderr.lines().count() + r.stdout.lines().count();
            assert!(
                lines <= 40,
                "{kind:?} {}: {lines} lines (exit {})\n{}",
                args[0],
                r.code,
                r.stderr.lines().take(12).collect::<Vec<_>>().join("\n")
            );
            if args[0] == "fetch" {
                assert_eq!(r.code, 0, "{kind:?}: {}", r.stderr);
                assert!(
                    r.stderr.contains("10000"),
                    "{kind:?}: no count\n{}",
                    r.stderr
                );
            }
        }
    }
}
