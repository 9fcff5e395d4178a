//! The tests an audit of the suite found missing (issue "Tests that fail when the code is
//! wrong"): each pins down a rule a plausible bug would break while every other test passed.
//! (Host rules are in `trust.rs`, SIGKILL after --grace in `plumbing.rs`.)

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use common::*;

fn seeded() -> Emulator {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "Au1-alpha");
    emu.set_secret("b", "Au2-beta");
    emu
}

fn out(s: &Scratch) -> String {
    s.path("out").display().to_string()
}

#[test]
fn an_endless_410_ends_no_earlier_than_70_times_the_base_and_not_much_later() {
    let emu = seeded();
    for _ in 0..10_000 {
        emu.push_imds_fault(Fault::Status(410));
    }
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_BACKOFF_BASE".into(), "20ms".into()); // 70 x 20 ms = 1.4 s
    // Short of the window; long enough for the first 410 (which opens it) on a loaded machine.
    env.insert("KVFETCH_TIMEOUT".into(), "500ms".into());
    let t = Instant::now();
    let r = run_with(&env, &["fetch", "--secret", "a", "--dir", &out(&s)]);
    let took = t.elapsed();
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(took >= ms(1400), "gave up after {took:?}, before 70 x base");
    // An endless 410 loop would go on for minutes (10,000 queued 410s); the bound leaves room
    // for a loaded machine.
    assert!(took < ms(6000), "kept going for {took:?}");
    assert!(r.stderr.contains("410"), "{}", r.stderr);
}

#[test]
fn a_408_is_retried_on_both_endpoints() {
    let emu = seeded();
    emu.push_imds_fault(Fault::Status(408));
    emu.push_kv_fault(Fault::Status(408));
    let s = Scratch::new();
    let r = run(&emu, &["fetch", "--secret", "a", "--dir", &out(&s)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c = emu.counters();
    assert_eq!((c.imds_token_requests, c.kv_total_requests), (2, 2));
    assert_eq!(read(&s.path("out/a")), "Au1-alpha");
}

#[test]
fn a_403_that_is_not_about_roles_is_exit_4_after_one_request() {
    for inner in ["ForbiddenByFirewall", "ForbiddenByPolicy", "Forbidden"] {
        let emu = seeded();
        emu.push_kv_fault(Fault::ErrorText {
            status: 403,
            code: inner.into(),
            message: "Client address is not authorized".into(),
        });
        let s = Scratch::new();
        let mut env = env_for(&emu);
        env.insert("KVFETCH_ACCESS_RETRY".into(), "30s".into());
        let t = Instant::now();
        let r = run_with(&env, &["fetch", "--secret", "a", "--dir", &out(&s)]);
        assert_eq!(r.code, 4, "{inner}: {}", r.stderr);
        assert_eq!(emu.counters().kv_total_requests, 1, "{inner}: not retried");
        // A network rule names the firewall fix; anything else the access fix.
        let network = inner == "ForbiddenByFirewall";
        assert_eq!(
            r.stderr.contains("firewall"),
            network,
            "{inner}: {}",
            r.stderr
        );
        assert_eq!(
            r.stderr.contains("Key Vault Secrets User"),
            !network,
            "{}",
            r.stderr
        );
        assert!(t.elapsed() < ms(3000));
    }
}

#[test]
fn the_first_failing_secret_decides_the_exit_code_and_each_gets_one_line() {
    let emu = seeded();
    emu.deny("b", true);
    let s = Scratch::new();
    // Given order: missing (exit 5) first, then the denied one (exit 4).
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "missing",
            "--secret",
            "b",
            "--secret",
            "a",
            "--dir",
            &out(&s),
        ],
    );
    assert_eq!(r.code, 5, "{}", r.stderr);
    let errors: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains(": error: "))
        .collect();
    assert_eq!(errors.len(), 2, "{}", r.stderr);
    assert_eq!(errors.iter().filter(|l| l.contains("missing")).count(), 1);
    assert_eq!(errors.iter().filter(|l| l.contains("secret b ")).count(), 1);
    assert!(s.entries("").is_empty(), "nothing written");
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "b",
            "--secret",
            "missing",
            "--dir",
            &out(&s),
        ],
    );
    assert_eq!(r.code, 4, "the first in the given order: {}", r.stderr);
}

#[test]
fn exact_modes_under_a_restrictive_umask() {
    let emu = seeded();
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_BIN_UNDER_TEST".into(), bin());
    let script = format!(
        "umask 077; exec \"$KVFETCH_BIN_UNDER_TEST\" fetch --secret a --dir {} --env-file {} --file-mode 0440",
        out(&s),
        s.path("app.env").display()
    );
    let o = std::process::Command::new("sh")
        .args(["-c", &script])
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&s.path("out/a")), 0o440);
    assert_eq!(mode(&s.path("app.env")), 0o440);
    assert_eq!(
        mode(&s.path("out")),
        0o750,
        "group-readable files: a group-searchable dir"
    );
}

#[test]
fn group_readable_files_can_be_read_by_that_group_in_a_dir_kvfetch_made() {
    if !root_or_skip("--owner to another uid needs root (CI runs as root)") {
        return;
    }
    let emu = seeded();
    let s = Scratch::new();
    let dir = s.path("out");
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "a",
            "--dir",
            &out(&s),
            "--file-mode",
            "0440",
            "--owner",
            "64020:64021",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!((meta.uid(), meta.gid(), mode(&dir)), (64020, 64021, 0o750));
    // Another user of that group (the app) reads the file; a user of no such group cannot.
    let cat = |uid: &str, gid: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid", uid, "--regid", gid, "--clear-groups", "cat"])
            .arg(dir.join("a"))
            .output()
            .unwrap()
    };
    let app = cat("64099", "64021");
    assert_eq!(
        String::from_utf8_lossy(&app.stdout),
        "Au1-alpha",
        "{}",
        String::from_utf8_lossy(&app.stderr)
    );
    assert!(!cat("64099", "64099").status.success(), "no other group");
    // Directories created above it get the same mode and owner: the group reaches the file.
    let nested = s.path("a/b/c");
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "a",
            "--dir",
            nested.to_str().unwrap(),
            "--file-mode",
            "0440",
            "--owner",
            "64020:64021",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for d in [s.path("a"), s.path("a/b"), nested.clone()] {
        let meta = std::fs::metadata(&d).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), mode(&d)),
            (64020, 64021, 0o750),
            "{}",
            d.display()
        );
    }
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            "64099",
            "--regid",
            "64021",
            "--clear-groups",
            "cat",
        ])
        .arg(nested.join("a"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Au1-alpha");
    // Root without CAP_CHOWN (a container that dropped every capability) cannot give files
    // away: refused before any request, nothing created.
    emu.reset_counters();
    let out = std::process::Command::new("setpriv")
        .args([
            "--bounding-set",
            "-chown",
            &bin(),
            "fetch",
            "--secret",
            "a",
            "--owner",
            "64020:64021",
            "--dir",
        ])
        .arg(s.path("nocap"))
        .env_clear()
        .envs(env_for(&emu))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(emu.counters().imds_token_requests, 0);
    assert!(!s.path("nocap").exists());
    // With the default 0400 the directory stays 0700.
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "a",
            "--dir",
            &s.path("private").display().to_string(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(mode(&s.path("private")), 0o700);
}

#[test]
fn a_secret_named_twice_is_requested_once() {
    let emu = seeded();
    let s = Scratch::new();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "a",
            "--secret",
            "SECOND=a",
            "--secret",
            "A3=A",
            "--dir",
            &out(&s),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(emu.counters().kv_requests.get("a"), Some(&1));
    assert_eq!(emu.counters().kv_total_requests, 1);
    for f in ["a", "SECOND", "A3"] {
        assert_eq!(read(&s.path(&format!("out/{f}"))), "Au1-alpha");
    }
}

#[test]
fn fetched_secrets_and_tokens_never_show_in_debug() {
    let f = kvfetch::vault::keyvault::parse_bundle(
        r#"{"value":"Au9-debug-value","id":"https://v.vault.azure.net/secrets/a/0123abcd"}"#,
    )
    .unwrap();
    let shown = format!("{f:?} {f:#?}");
    assert!(
        !shown.contains("Au9-debug-value") && shown.contains("0123abcd"),
        "{shown}"
    );
    let t = kvfetch::identity::parse_token(
        r#"{"access_token":"eyJhbGciOiJub25lIn0.eyJvaWQiOiJ4In0.Au9sig","expires_in":"60"}"#,
        "x",
    )
    .unwrap();
    let shown = format!("{t:?} {t:#?}");
    assert!(
        !shown.contains("Au9sig") && !shown.contains("eyJhbGci"),
        "{shown}"
    );
}

#[test]
fn a_bad_api_version_is_a_usage_error_before_any_request() {
    let emu = seeded();
    let s = Scratch::new();
    for v in ["7.5&x=1", "7.5/../x", "", "x".repeat(40).as_str()] {
        let r = run(
            &emu,
            &[
                "fetch",
                "--secret",
                "a",
                "--dir",
                &out(&s),
                "--api-version",
                v,
            ],
        );
        assert_eq!(r.code, 2, "{v:?}: {}", r.stderr);
    }
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "a",
            "--dir",
            &out(&s),
            "--api-version",
            "1.0",
        ],
    );
    assert_eq!(
        r.code, 2,
        "the vault's 400 for an unknown version: {}",
        r.stderr
    );
    assert_eq!(emu.counters().kv_total_requests, 1);
}

// Supervised exec.

#[test]
fn every_listed_signal_is_forwarded() {
    let emu = seeded();
    let s = Scratch::new();
    let log = s.path("log");
    let names = ["HUP", "INT", "QUIT", "USR1", "USR2", "WINCH"];
    let traps: String = names
        .iter()
        .map(|n| format!("trap 'echo {n} >> {}' {n}; ", log.display()))
        .collect();
    let script = format!(
        "{traps} echo up >> {}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised(&env_for(&emu), &["--secret", "a"], &script);
    wait_for("the child", ms(5000), || read(&log).contains("up"));
    for (sig, name) in [
        (1, "HUP"),
        (2, "INT"),
        (3, "QUIT"),
        (10, "USR1"),
        (12, "USR2"),
        (28, "WINCH"),
    ] {
        sup.signal(sig);
        wait_for(name, ms(2000), || read(&log).lines().any(|l| l == name));
        if name == "INT" {
            break; // SIGINT also ends kvfetch (shutdown wins)
        }
    }
    let _ = sup.exit_within(ms(3000));
    let mut sup = supervised(&env_for(&emu), &["--secret", "a"], &script);
    std::fs::remove_file(&log).unwrap();
    wait_for("the child", ms(5000), || read(&log).contains("up"));
    for (sig, name) in [(3, "QUIT"), (10, "USR1"), (12, "USR2"), (28, "WINCH")] {
        sup.signal(sig);
        wait_for(name, ms(2000), || read(&log).lines().any(|l| l == name));
    }
    sup.stop_and_stderr();
}

#[test]
fn the_child_gets_sigterm_when_kvfetch_is_killed() {
    let emu = seeded();
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap 'echo TERM >> {0}; exit 0' TERM; echo up >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let sup = supervised(&env_for(&emu), &["--secret", "a"], &script);
    wait_for("the child", ms(5000), || read(&log).contains("up"));
    sup.signal(9);
    wait_for("SIGTERM at the orphaned child", ms(3000), || {
        read(&log).contains("TERM")
    });
}

#[test]
fn on_change_none_updates_files_and_leaves_the_child_alone() {
    let emu = seeded();
    let s = Scratch::new();
    let (log, dir) = (s.path("log"), s.path("out"));
    let script = format!(
        "echo \"up $A\" >> {}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised(
        &env_for(&emu),
        &[
            "--secret",
            "A=a",
            "--dir",
            dir.to_str().unwrap(),
            "--on-change",
            "none",
        ],
        &script,
    );
    wait_for("the child", ms(5000), || {
        read(&log).contains("up Au1-alpha")
    });
    emu.set_secret("a", "Au1-rotated");
    wait_for("the new file", ms(5000), || {
        read(&dir.join("A")) == "Au1-rotated"
    });
    std::thread::sleep(ms(500));
    assert_eq!(read(&log), "up Au1-alpha\n", "no restart, no signal");
    sup.stop_and_stderr();
}

#[test]
fn changes_during_the_restart_gap_are_coalesced_into_one_restart() {
    let emu = seeded();
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap 'exit 0' TERM; echo \"up $A\" >> {}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised(&env_for(&emu), &["--secret", "A=a"], &script);
    wait_for("the child", ms(5000), || {
        read(&log).contains("up Au1-alpha")
    });
    emu.set_secret("a", "Au1-two");
    wait_for("the first restart", ms(5000), || {
        read(&log).contains("up Au1-two")
    });
    let first_restart = Instant::now();
    emu.set_secret("a", "Au1-three");
    std::thread::sleep(ms(400));
    emu.set_secret("a", "Au1-four");
    wait_for("the coalesced restart", ms(15000), || {
        read(&log).contains("up Au1-four")
    });
    assert!(
        first_restart.elapsed() >= ms(9500),
        "restarts are at least 10 s apart: {:?}",
        first_restart.elapsed()
    );
    assert_eq!(
        read(&log).lines().collect::<Vec<_>>(),
        ["up Au1-alpha", "up Au1-two", "up Au1-four"],
        "the change in between was coalesced"
    );
    sup.stop_and_stderr();
}

#[test]
fn nul_in_an_exec_variable_is_refused() {
    let emu = seeded();
    emu.set_secret("nul", "before\0after");
    let s = Scratch::new();
    let marker = s.path("started");
    let r = run(
        &emu,
        &[
            "exec",
            "--secret",
            "nul",
            "--",
            "sh",
            "-c",
            &format!("touch {}", marker.display()),
        ],
    );
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(!marker.exists());
    assert!(!r.stderr.contains("before"), "{}", r.stderr);
}

#[test]
fn retries_back_off_exponentially() {
    let emu = seeded();
    for _ in 0..1000 {
        emu.push_kv_fault(Fault::Status(503));
    }
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_BACKOFF_BASE".into(), "50ms".into());
    env.insert("KVFETCH_TIMEOUT".into(), "1500ms".into());
    let r = run_with(&env, &["fetch", "--secret", "a", "--dir", &out(&s)]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    // 50, 100, 200, 400, 800 ms (±20 %): about 5 retries in 1.5 s; a fixed delay would be ~30.
    let n = emu.counters().kv_total_requests;
    assert!((4..=8).contains(&n), "{n} requests");
    assert_eq!(
        r.stderr.matches("HTTP 503").count(),
        1,
        "named once: {}",
        r.stderr
    );
}

/// Each stderr line as a JSON object (panics on a line that is not one).
fn json_lines(stderr: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    stderr
        .lines()
        .map(|l| match serde_json::from_str(l) {
            Ok(serde_json::Value::Object(o)) => o,
            _ => panic!("not a JSON object: {l:?}"),
        })
        .collect()
}

#[test]
fn json_logs_carry_typed_fields() {
    let emu = seeded();
    let s = Scratch::new();
    let r = run(
        &emu,
        &[
            "fetch",
            "--log-format",
            "json",
            "--secret",
            "a",
            "--secret",
            "b",
            "--dir",
            &out(&s),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines = json_lines(&r.stderr);
    let done = lines
        .iter()
        .find(|o| o["msg"] == "fetched and wrote secrets")
        .unwrap_or_else(|| panic!("no success line: {}", r.stderr));
    assert_eq!(done["level"], "info");
    assert_eq!(done["count"], serde_json::json!(2), "a number, not \"2\"");
    assert!(done["ts"].as_f64().is_some_and(|t| t > 1.7e9), "{done:?}");
    for o in &lines {
        assert!(o["level"].is_string() && o["msg"].is_string(), "{o:?}");
    }
    // A failure: one error line with its kind and exit code, and the secret named.
    let r = run(
        &emu,
        &[
            "fetch",
            "--log-format",
            "json",
            "--secret",
            "Zx9-missing",
            "--dir",
            &out(&s),
        ],
    );
    assert_eq!(r.code, 5, "{}", r.stderr);
    let errors: Vec<_> = json_lines(&r.stderr)
        .into_iter()
        .filter(|o| o["level"] == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert_eq!(errors[0]["kind"], "not_found");
    assert_eq!(errors[0]["exit_code"], serde_json::json!(5));
    assert!(
        errors[0]["msg"]
            .as_str()
            .is_some_and(|m| m.contains("Zx9-missing")),
        "{:?}",
        errors[0]
    );
    assert_no_leak(&r, &["Au1-alpha", "Au2-beta"]);
}

#[test]
fn as_another_user_a_roots_shared_dir_is_used_and_a_live_writers_temp_file_kept() {
    if !root_or_skip("needs root to run kvfetch as another user") {
        return;
    }
    let emu = seeded();
    let s = Scratch::new();
    // A directory root made for this user's group (as a platform's volume can be): usable.
    let dir = s.path("out");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(0), Some(65534)).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o770)).unwrap();
    // A temp file of another live process (pid 1, which this user may not signal: EPERM, not
    // ESRCH), older than a killed run's orphan may be: not swept.
    let live = dir.join(".kvfetch-tmp-1-0000abcd");
    std::fs::write(&live, "in flight").unwrap();
    std::thread::sleep(ms(2200));
    let out = as_nobody(
        &[],
        &["fetch", "--secret", "a", "--dir", &out(&s)],
        &env_for(&emu),
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(read(&s.path("out/a")), "Au1-alpha");
    assert_eq!(
        read(&live),
        "in flight",
        "a live writer's temp file is kept"
    );
}

#[test]
fn as_another_user_its_groups_write_access_and_trusted_owners_are_its_own() {
    if !root_or_skip("needs root to run kvfetch as another user") {
        return;
    }
    let emu = seeded();
    let s = Scratch::new();
    let env = env_for(&emu);
    // A private directory of this user's, under root-owned ancestors: nothing to warn of.
    let dir = s.path("out");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let run_as = |groups: &[u32], extra: &[&str]| {
        let mut args = vec!["fetch", "--secret", "a", "--dir"];
        let out = out(&s);
        args.push(&out);
        args.extend(extra);
        let o = as_user_in(65534, groups, &[], &args, &env)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, stderr) = run_as(&[], &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains("could redirect or replace"),
        "root-owned ancestors are trusted: {stderr}"
    );
    // --owner to a supplementary group of this user: no CAP_CHOWN needed; to another: refused.
    std::fs::remove_file(s.path("out/a")).unwrap();
    let (code, stderr) = run_as(
        &[4242, 4343],
        &["--owner", "65534:4343", "--file-mode", "0440"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::metadata(s.path("out/a")).unwrap().gid(), 4343);
    let (code, stderr) = run_as(&[4242, 4343], &["--owner", "65534:4444"]);
    assert_eq!(code, Some(6), "{stderr}");
    assert!(stderr.contains("without CAP_CHOWN"), "{stderr}");
    // A directory this user cannot write in: refused before any request, naming it.
    let locked = s.path("locked");
    std::fs::create_dir(&locked).unwrap();
    let target = locked.join("out").display().to_string();
    let o = as_nobody(&[], &["fetch", "--secret", "a", "--dir", &target], &env)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot create files in {}", locked.display())),
        "{stderr}"
    );
}
