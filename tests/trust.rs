//! The holes an adversarial review found, one test each (issue "Trust"). Every test here failed
//! on the build before the fixes (run with `KVFETCH_TEST_BIN=<old kvfetch>` to see it) and
//! asserts what the README's threat model promises: exit codes, request counts, bytes and modes
//! on disk, and that no value reaches a log line.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use kvfetch_emulator::{Config, VaultCert};

/// A distinctive value: no log key or message word contains it.
const VALUE: &str = "Zq8-vAlUe-7Hx";

fn seeded() -> Emulator {
    let emu = Emulator::start().unwrap();
    emu.set_secret("api-key", VALUE);
    emu.set_secret("other", "Wk3-oThEr-9Lp");
    emu
}

fn assert_no_requests(emu: &Emulator, what: &str) {
    let c = emu.counters();
    assert_eq!(
        (c.imds_token_requests, c.kv_total_requests),
        (0, 0),
        "{what}: no request may be sent"
    );
}

fn out_dir(s: &Scratch) -> String {
    s.path("out").display().to_string()
}

// 1. The host checked is the host connected to.

#[test]
fn hosts_that_could_carry_the_token_elsewhere_are_refused_before_any_request() {
    let emu = seeded();
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_TIMEOUT".into(), "1s".into());
    for vault in [
        "https://evil.test?.vault.azure.net",
        "https://evil.test#.vault.azure.net",
        "https://evil.test/?.vault.azure.net",
        "https://user@evil.test.vault.azure.net",
        "https://evil.test\\.vault.azure.net",
        "https://evil%2etest.vault.azure.net",
        "https://evil.test .vault.azure.net",
        "https://evilvault.azure.net",
        "https://vault.azure.net",
        "https://v.vault.azure.net.evil.test",
        "http://10.0.0.1:8443",
        "http://localhost.evil.test",
        "https://localhost.evil.test",
    ] {
        for via_env in [false, true] {
            let mut e = env.clone();
            let mut args = vec!["fetch", "--secret", "api-key", "--dir"];
            let dir = out_dir(&s);
            args.push(&dir);
            if via_env {
                e.insert("KVFETCH_VAULT".into(), vault.into());
            } else {
                args.extend(["--vault", vault]);
            }
            let r = run_with(&e, &args);
            assert_eq!(r.code, 2, "{vault} (env: {via_env}): {}", r.stderr);
            assert_no_requests(&emu, vault);
        }
        let id = format!("{vault}/secrets/api-key");
        let r = run_with(&env, &["fetch", "--secret", &id, "--dir", &out_dir(&s)]);
        assert_eq!(r.code, 2, "{id}: {}", r.stderr);
        assert_no_requests(&emu, &id);
    }
    assert!(s.entries("").is_empty(), "nothing written");
}

#[test]
fn reference_uris_notify_urls_and_identity_endpoints_use_the_same_parser() {
    let emu = seeded();
    let s = Scratch::new();
    let marker = s.path("started");
    let touch = format!("touch {}", marker.display());
    let mut env = env_for(&emu);
    env.insert(
        "DB".into(),
        "@Microsoft.KeyVault(SecretUri=https://evil.test?.vault.azure.net/secrets/api-key)".into(),
    );
    let r = run_with(&env, &["exec", "--", "sh", "-c", &touch]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!marker.exists(), "the command never starts");
    assert_no_requests(&emu, "reference");

    let env = env_for(&emu);
    // A query is accepted in --notify-url (a webhook's token): tests/hostile/cli.rs.
    for url in [
        "http://127.0.0.1:9/x?y#z",
        "http://a@127.0.0.1:9/",
        "http://127.0.0.1:9/#x",
    ] {
        let r = run_with(
            &env,
            &[
                "watch",
                "--secret",
                "api-key",
                "--dir",
                &out_dir(&s),
                "--notify-url",
                url,
            ],
        );
        assert_eq!(r.code, 2, "{url}: {}", r.stderr);
    }
    for (var, url) in [
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9?.x"),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://u@127.0.0.1:9"),
        ("IDENTITY_ENDPOINT", "http://127.0.0.1:9/msi/token?x=1"),
    ] {
        let mut e = env_for(&emu);
        e.insert(var.into(), url.into());
        e.insert("IDENTITY_HEADER".into(), "h".into());
        let r = run_with(&e, &["fetch", "--secret", "api-key", "--dir", &out_dir(&s)]);
        assert_eq!(r.code, 2, "{var}={url}: {}", r.stderr);
    }
    assert_no_requests(&emu, "notify and identity URLs");
}

// 2. and 3. exec: no value in a message; no vault value picks the program or the loader.

#[test]
fn exec_never_prints_a_value_even_when_path_is_allowed_from_a_secret() {
    let emu = seeded();
    let r = run(
        &emu,
        &[
            "exec",
            "--allow-env",
            "PATH",
            "--secret",
            "PATH=api-key",
            "--",
            "no-such-command-kvfetch",
        ],
    );
    assert_eq!(r.code, 127, "{}", r.stderr);
    assert!(r.stderr.contains("command not found"), "{}", r.stderr);
    assert_no_leak(&r, &[VALUE]);
}

/// A program found through a PATH that came from a secret, but not executable: exit 126, and the
/// message names neither the directory nor the value.
#[test]
fn exec_never_shows_a_directory_of_a_path_from_a_secret() {
    let emu = seeded();
    let s = Scratch::new();
    let dir = s.path("bin-4c1d9e");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tool-kvfetch"), "#!/bin/sh\n").unwrap(); // mode 0644
    // Two entries: the redactor knows the whole value, not the directory alone.
    let path = dir.display().to_string();
    emu.set_secret("search-path", &format!("/nonexistent-kvfetch:{path}"));
    let r = run(
        &emu,
        &[
            "exec",
            "--allow-env",
            "PATH",
            "--secret",
            "PATH=search-path",
            "--",
            "tool-kvfetch",
        ],
    );
    assert_eq!(r.code, 126, "{}", r.stderr);
    assert!(r.stderr.contains("not executable"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("(a program found through a PATH set from a secret)"),
        "{}",
        r.stderr
    );
    assert_no_leak(&r, &["bin-4c1d9e", "nonexistent-kvfetch"]);
}

#[test]
fn secrets_may_not_set_variables_that_steer_programs() {
    let emu = seeded();
    let s = Scratch::new();
    let marker = s.path("started");
    let touch = format!("touch {}", marker.display());
    emu.set_secret("path", "/tmp/evil");
    emu.set_secret("node-options", "--require /tmp/evil.js");
    for spec in [
        "path",
        "LD_PRELOAD=api-key",
        "LD_LIBRARY_PATH=api-key",
        "LD_AUDIT=api-key",
        "IFS=api-key",
        "BASH_ENV=api-key",
        "ENV=api-key",
        "SHELLOPTS=api-key",
        "PS4=api-key",
        "NODE_OPTIONS=api-key",
        "node-options",
        "GCONV_PATH=api-key",
        "PYTHONPATH=api-key",
        "http_proxy=api-key",
        "JAVA_TOOL_OPTIONS=api-key",
    ] {
        let r = run(&emu, &["exec", "--secret", spec, "--", "sh", "-c", &touch]);
        assert_eq!(r.code, 2, "{spec}: {}", r.stderr);
        assert!(r.stderr.contains("--allow-env"), "{}", r.stderr);
        assert!(!marker.exists(), "{spec}: the command never starts");
        assert_no_requests(&emu, spec);
        let env_file = s.path("app.env").display().to_string();
        let r = run(&emu, &["fetch", "--secret", spec, "--env-file", &env_file]);
        assert_eq!(r.code, 2, "{spec} into an env file: {}", r.stderr);
    }
    // Named explicitly, it is allowed.
    let show = format!("printf %s \"$LD_PRELOAD\" > {}", marker.display());
    let r = run(
        &emu,
        &[
            "exec",
            "--allow-env",
            "LD_PRELOAD",
            "--secret",
            "LD_PRELOAD=api-key",
            "--",
            "sh",
            "-c",
            &show,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(read(&marker), VALUE);
}

#[test]
fn near_miss_references_fail_closed() {
    let emu = seeded();
    let s = Scratch::new();
    let marker = s.path("started");
    let touch = format!("touch {}", marker.display());
    let uri = format!("{}/secrets/api-key", emu.vault_url());
    for value in [
        format!("@Microsoft.KeyVault (SecretUri={uri})"),
        format!("\"@Microsoft.KeyVault(SecretUri={uri})\""),
        format!("'@Microsoft.KeyVault(SecretUri={uri})'"),
        format!("@Microsoft.KeyVault(SecretUrl={uri})"),
        format!("@Microsoft.KeyVault(SecretUri={uri};SecretUri={uri})"),
        "@Microsoft.KeyVault(VaultName=kv1;SecretName=api-key;SecretName=other)".to_string(),
        "@Microsoft.KeyVault(VaultName=kv1;SecretName=)".to_string(),
        format!("@microsoft.keyvault(SecretUri={uri}"),
    ] {
        let mut env = env_for(&emu);
        env.insert("DB".into(), value.clone());
        let r = run_with(&env, &["exec", "--", "sh", "-c", &touch]);
        assert_eq!(r.code, 2, "{value}: {}", r.stderr);
        assert!(!marker.exists(), "{value}: the command never starts");
        assert_no_requests(&emu, &value);
    }
}

// 4. The ready file is an output like the others.

#[test]
fn ready_file_replaces_a_symlink_and_has_the_file_mode_whatever_the_umask() {
    let emu = seeded();
    let s = Scratch::new();
    let victim = s.path("victim");
    std::fs::write(&victim, "victim").unwrap();
    let ready = s.path("ready");
    std::os::unix::fs::symlink(&victim, &ready).unwrap();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_BIN_UNDER_TEST".into(), bin());
    let script = format!(
        "umask 000; exec \"$KVFETCH_BIN_UNDER_TEST\" watch --secret api-key --dir {} --ready-file {}",
        out_dir(&s),
        ready.display()
    );
    let mut w = Background::new(
        Command::new("sh")
            .args(["-c", &script])
            .env_clear()
            .envs(&env)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for("the ready file", ms(5000), || {
        std::fs::symlink_metadata(&ready).is_ok_and(|m| m.is_file())
    });
    let log = w.stop_and_stderr();
    assert_eq!(
        read(&victim),
        "victim",
        "the symlink's target is untouched: {log}"
    );
    let mut w = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--secret",
            "api-key",
            "--dir",
            &out_dir(&s),
            "--ready-file",
            ready.to_str().unwrap(),
            "--file-mode",
            "0440",
        ],
    );
    wait_for("the ready file", ms(5000), || ready.exists());
    assert_eq!(mode(&ready), 0o440);
    assert_eq!(mode(&s.path("out/api-key")), 0o440);
    w.stop_and_stderr();
}

#[test]
fn a_stale_ready_file_is_removed_at_start() {
    let emu = seeded();
    let s = Scratch::new();
    let ready = s.path("ready");
    std::fs::write(&ready, "ready\n").unwrap();
    for _ in 0..1000 {
        emu.push_imds_fault(Fault::Status(503)); // the first fetch keeps waiting
    }
    let mut env = env_for(&emu);
    env.insert("KVFETCH_TIMEOUT".into(), "10s".into());
    let mut w = Background::start(
        &env,
        &[
            "watch",
            "--secret",
            "api-key",
            "--dir",
            &out_dir(&s),
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    wait_for("the stale ready file to go", ms(3000), || !ready.exists());
    assert_eq!(
        w.exit_within(ms(10)),
        None,
        "still waiting for its first fetch"
    );
    assert!(emu.counters().imds_token_requests < 1000);
}

// 5. The health listener is bounded.

fn vm_rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn health_probes_answer_within_a_second_beside_a_hog_and_idle_connections() {
    let emu = seeded();
    let s = Scratch::new();
    let mut w = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--secret",
            "api-key",
            "--dir",
            &out_dir(&s),
            "--health-listen",
            "127.0.0.1:0",
        ],
    );
    let addr = w.health_addr();
    wait_ready(&addr);
    // More idle connections than the listener keeps waiting: the oldest make room.
    let idle: Vec<_> = (0..100)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let hog_addr = addr.clone();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let hog_sent = sent.clone();
    let hog = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(&hog_addr).unwrap();
        c.set_write_timeout(Some(ms(4000))).unwrap();
        let chunk = vec![b'A'; 1 << 20];
        let until = Instant::now() + ms(3000);
        while Instant::now() < until {
            match c.write(&chunk) {
                Ok(n) => hog_sent.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst),
                Err(_) => break,
            };
        }
    });
    std::thread::sleep(ms(300));
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(http_get(&addr, "/readyz").0, 200);
        assert!(t.elapsed() < ms(1000), "probe took {:?}", t.elapsed());
    }
    hog.join().unwrap();
    let rss = vm_rss_kb(w.pid());
    assert!(
        rss < 40_000,
        "RSS {rss} kB after the hog sent {} bytes",
        sent.load(std::sync::atomic::Ordering::SeqCst)
    );
    drop(idle);
    w.stop_and_stderr();
}

// 6. and 13. All or nothing, checked before the first request.

#[test]
fn a_target_that_is_a_directory_is_refused_before_any_request() {
    let emu = seeded();
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("out/other")).unwrap();
    std::fs::write(s.path("out/api-key"), "old").unwrap();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "api-key",
            "--secret",
            "other",
            "--dir",
            &out_dir(&s),
        ],
    );
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert_eq!(read(&s.path("out/api-key")), "old");
    assert_eq!(s.entries("out"), vec!["api-key", "other"]);
    assert_no_requests(&emu, "a directory in the way");
}

/// Run `script` as root in a private mount namespace; None (with the reason printed) where that
/// is not possible.
fn in_mount_namespace(script: &str, env: &HashMap<String, String>) -> Option<Run> {
    in_mount_namespace_lacking(script, env, None)
}

/// [`in_mount_namespace`], on a machine that `lacks` a file-system feature (seccomp).
fn in_mount_namespace_lacking(
    script: &str,
    env: &HashMap<String, String>,
    lacks: Option<Lacks>,
) -> Option<Run> {
    let probe = Command::new("unshare").args(["-m", "true"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip("needs root and unshare -m (a private mount namespace)");
        return None;
    }
    let mut cmd = in_private_mounts(script, env);
    if let Some(lacks) = lacks {
        lacking(&mut cmd, lacks);
    }
    let out = cmd.output().unwrap();
    Some(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[test]
fn a_rename_that_fails_late_rolls_back_the_earlier_ones() {
    let emu = seeded();
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("out")).unwrap();
    std::fs::write(s.path("out/api-key"), "old-a").unwrap();
    std::fs::write(s.path("out/other"), "old-b").unwrap();
    std::fs::write(s.path("mounted"), "mounted").unwrap();
    let env_file = s.path("app.env");
    std::fs::write(&env_file, "OLD=1\n").unwrap();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_BIN_UNDER_TEST".into(), bin());
    // The last output (the env file) is a bind mount: renaming over it fails with EBUSY after
    // both files were already moved into place.
    let script = format!(
        "mount --bind {m} {e} && exec \"$KVFETCH_BIN_UNDER_TEST\" fetch --secret api-key --secret other --dir {d} --env-file {e}",
        m = s.path("mounted").display(),
        e = env_file.display(),
        d = out_dir(&s),
    );
    let Some(r) = in_mount_namespace(&script, &env) else {
        return;
    };
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        r.stderr.contains("every output was put back as it was"),
        "{}",
        r.stderr
    );
    assert_eq!(read(&s.path("out/api-key")), "old-a");
    assert_eq!(read(&s.path("out/other")), "old-b");
    assert_eq!(read(&env_file), "OLD=1\n");
    assert_eq!(
        s.entries("out"),
        vec!["api-key", "other"],
        "no temp file left"
    );
    assert_eq!(s.entries(""), vec!["app.env", "mounted", "out"]);
    assert_no_leak(&r, &[VALUE]);
}

#[test]
fn without_rename_exchange_commits_fall_back_and_still_roll_back() {
    if !can_lack() {
        return;
    }
    for lacks in [Lacks::Exchange, Lacks::ExchangeAndLinks] {
        let emu = seeded();
        let s = Scratch::new();
        std::fs::create_dir_all(s.path("out")).unwrap();
        std::fs::write(s.path("out/api-key"), "old-a").unwrap();
        std::fs::write(s.path("out/other"), "old-b").unwrap();
        std::fs::write(s.path("mounted"), "mounted").unwrap();
        let env_file = s.path("app.env");
        std::fs::write(&env_file, "OLD=1\n").unwrap();
        let mut env = env_for(&emu);
        env.insert("KVFETCH_BIN_UNDER_TEST".into(), bin());
        let fetch = format!(
            "\"$KVFETCH_BIN_UNDER_TEST\" fetch --secret api-key --secret other --dir {d} --env-file {e}",
            e = env_file.display(),
            d = out_dir(&s),
        );
        // A late failure (the env file is a bind mount: EBUSY) puts the earlier files back.
        let script = format!(
            "mount --bind {} {} && {fetch}",
            s.path("mounted").display(),
            env_file.display()
        );
        let Some(r) = in_mount_namespace_lacking(&script, &env, Some(lacks)) else {
            return;
        };
        assert_eq!(r.code, 6, "{lacks:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("every output was put back as it was"),
            "{}",
            r.stderr
        );
        assert_eq!(read(&s.path("out/api-key")), "old-a", "{lacks:?}");
        assert_eq!(read(&s.path("out/other")), "old-b", "{lacks:?}");
        assert_eq!(
            s.entries("out"),
            vec!["api-key", "other"],
            "{lacks:?}: no temp or backup left"
        );
        // Without the mount the same commit replaces every file, and leaves nothing beside them.
        let Some(r) = in_mount_namespace_lacking(&fetch, &env, Some(lacks)) else {
            return;
        };
        assert_eq!(r.code, 0, "{lacks:?}: {}", r.stderr);
        assert_eq!(read(&s.path("out/api-key")), VALUE, "{lacks:?}");
        assert_eq!(mode(&s.path("out/api-key")), 0o400);
        assert_eq!(s.entries("out"), vec!["api-key", "other"], "{lacks:?}");
        assert_eq!(
            s.entries(""),
            vec!["app.env", "mounted", "out"],
            "{lacks:?}"
        );
        assert!(read(&env_file).starts_with("API_KEY="), "{lacks:?}");
    }
}

#[test]
fn a_staging_failure_removes_the_temp_files_already_made() {
    let emu = seeded();
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("out")).unwrap();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_BIN_UNDER_TEST".into(), bin());
    // A tmpfs with room for the directory and one file: the second temp file cannot be made.
    let script = format!(
        "mount -t tmpfs -o nr_inodes=2,mode=0700 tmpfs {d} && \"$KVFETCH_BIN_UNDER_TEST\" fetch --secret api-key --secret other --dir {d}; rc=$?; ls -A {d}; exit $rc",
        d = out_dir(&s),
    );
    let Some(r) = in_mount_namespace(&script, &env) else {
        return;
    };
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert_eq!(r.stdout, "", "nothing left in the directory: {}", r.stdout);
    assert_no_leak(&r, &[VALUE]);
}

#[test]
fn bad_output_paths_are_found_before_the_first_request() {
    let emu = seeded();
    let s = Scratch::new();
    std::fs::write(s.path("a-file"), "x").unwrap();
    let long = format!("{}=api-key", "n".repeat(256));
    let missing = s.path("missing/app.env").display().to_string();
    let file_dir = s.path("a-file").display().to_string();
    let under_file = s.path("a-file/out").display().to_string();
    for args in [
        vec!["fetch", "--secret", "api-key", "--env-file", &missing],
        vec!["fetch", "--secret", "api-key", "--dir", &file_dir],
        vec!["fetch", "--secret", "api-key", "--dir", &under_file],
        vec!["fetch", "--secret", &long, "--dir", &out_dir(&s)],
    ] {
        let r = run(&emu, &args);
        assert_eq!(r.code, 6, "{args:?}: {}", r.stderr);
        assert_no_requests(&emu, &format!("{args:?}"));
    }
    assert_eq!(s.entries(""), vec!["a-file"]);
}

// 7. and 8. Flags: ranges, owners, modes, clashes, placement.

#[test]
fn out_of_range_and_unsafe_flags_are_usage_errors_not_panics() {
    let emu = seeded();
    let s = Scratch::new();
    let dir = out_dir(&s);
    let env_in_dir = s.path("out/api-key").display().to_string();
    let ready = s.path("ready").display().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["watch", "--refresh", "500000000000y"],
        vec!["watch", "--refresh", "18446744073709551615s"],
        vec!["watch", "--refresh", "31d"],
        vec!["fetch", "--backoff-base", "100000000h"],
        vec!["fetch", "--backoff-base", "0s"],
        vec!["fetch", "--timeout", "0s"],
        vec!["fetch", "--timeout", "18446744073709551615s"],
        vec!["fetch", "--access-retry", "500000000000y"],
        vec!["watch", "--max-stale", "18446744073709551615s"],
        vec!["exec", "--grace", "500000000000y", "--refresh", "1m"],
        vec!["fetch", "--owner", "4294967295"],
        vec!["fetch", "--owner", "0:4294967295"],
        vec!["fetch", "--owner", "-1"],
        vec!["fetch", "--file-mode", "4400"],
        vec!["fetch", "--file-mode", "2400"],
        vec!["fetch", "--file-mode", "1400"],
        vec!["fetch", "--file-mode", "0460"],
        vec!["fetch", "--file-mode", "0402"],
        vec!["fetch", "--file-mode", "00000400"],
        vec!["fetch", "--env-file", &env_in_dir],
        vec!["watch", "--env-file", &ready, "--ready-file", &ready],
        vec!["--refresh", "1m", "fetch"],
        vec!["--health-listen", "127.0.0.1:9", "fetch"],
        vec!["--on-change", "none", "watch"],
        vec!["fetch", "--resource", "vault.azure.net"],
    ];
    for case in cases {
        let mut args = case.clone();
        if !args.contains(&"exec") {
            args.extend(["--secret", "api-key", "--dir", &dir]);
        } else {
            args.extend(["--secret", "api-key", "--", "true"]);
        }
        let r = run(&emu, &args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert_no_requests(&emu, &format!("{case:?}"));
    }
}

// 9. Forged log lines.

#[test]
fn control_characters_from_a_server_cannot_forge_log_lines() {
    let emu = seeded();
    let s = Scratch::new();
    let forged = "Oops\r kvfetch: info: fetched and wrote secrets\x1b[2K\u{2028}\u{202e}x\n kvfetch: info: second line";
    emu.push_kv_fault(Fault::ErrorText {
        status: 400,
        code: forged.into(),
        message: forged.into(),
    });
    let r = run(
        &emu,
        &["fetch", "--secret", "api-key", "--dir", &out_dir(&s)],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        !r.stderr.contains(['\r', '\x1b', '\u{2028}', '\u{202e}']),
        "raw control characters: {:?}",
        r.stderr
    );
    for line in r.stderr.lines() {
        assert!(line.starts_with("kvfetch: "), "a forged line: {line:?}");
        assert!(!line.starts_with(" kvfetch"), "{line:?}");
    }
    assert_eq!(r.stderr.lines().count(), 1, "{:?}", r.stderr);
    assert!(r.stderr.contains("Oops\\r kvfetch: info"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("second line"),
        "only a message's first line: {}",
        r.stderr
    );
    assert!(!r.stderr.contains('\u{202e}'), "no bidirectional override");
}

// 10. Not dumpable.

#[test]
fn the_process_is_not_dumpable() {
    // /proc/PID files of a non-dumpable process belong to root, whoever runs it: run kvfetch as
    // another user and look.
    if !root_or_skip("needs root to run kvfetch as another user") {
        return;
    }
    let emu = seeded();
    let s = Scratch::new();
    nobodys_dir(&s.path("out"));
    let mut env = env_for(&emu);
    env.insert("KVFETCH_BIN_UNDER_TEST".into(), bin());
    let mut w = Background::new(
        as_nobody(
            &[],
            &["watch", "--secret", "api-key", "--dir", &out_dir(&s)],
            &env,
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
    );
    wait_for("the first write", ms(5000), || {
        s.path("out/api-key").exists()
    });
    let meta = std::fs::metadata(format!("/proc/{}/environ", w.pid())).unwrap();
    assert_eq!(
        meta.uid(),
        0,
        "a dumpable process's /proc files belong to its user"
    );
    w.stop_and_stderr();
}

// 11. Permanent errors fail fast with their cause.

fn emulator_with_cert(cert: VaultCert) -> Emulator {
    let emu = Emulator::with_config(Config {
        vault_cert: cert,
        ..Config::default()
    })
    .unwrap();
    emu.set_secret("api-key", VALUE);
    emu
}

#[test]
fn untrusted_certificates_fail_within_seconds_with_exit_8() {
    for cert in [
        VaultCert::WrongName,
        VaultCert::Expired,
        VaultCert::SelfSigned,
    ] {
        let emu = emulator_with_cert(cert);
        let s = Scratch::new();
        let t = Instant::now();
        let r = run(
            &emu,
            &["fetch", "--secret", "api-key", "--dir", &out_dir(&s)],
        );
        assert_eq!(r.code, 8, "{cert:?}: {}", r.stderr);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{cert:?}: {:?}",
            t.elapsed()
        );
        assert!(r.stderr.contains("certificate"), "{}", r.stderr);
        assert!(r.stderr.contains("--ca-file"), "{}", r.stderr);
        assert_eq!(emu.counters().kv_total_requests, 0, "{cert:?}");
        assert!(s.entries("").is_empty());
    }
}

#[test]
fn unusable_answers_fail_within_seconds() {
    for (fault, code) in [
        (Fault::InvalidUtf8(200), 8),
        (Fault::HugeBody(2 << 20), 8),
        (Fault::EndlessBody, 8),
    ] {
        let emu = seeded();
        let s = Scratch::new();
        emu.push_kv_fault(fault.clone());
        let t = Instant::now();
        let r = run(
            &emu,
            &["fetch", "--secret", "api-key", "--dir", &out_dir(&s)],
        );
        assert_eq!(r.code, code, "{fault:?}: {}", r.stderr);
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{fault:?}: {:?}",
            t.elapsed()
        );
        assert_eq!(
            emu.counters().kv_total_requests,
            1,
            "{fault:?}: not retried"
        );
    }
    let emu = seeded();
    emu.push_imds_fault(Fault::InvalidUtf8(200));
    let s = Scratch::new();
    let r = run(
        &emu,
        &["fetch", "--secret", "api-key", "--dir", &out_dir(&s)],
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(emu.counters().imds_token_requests, 1);
}

#[test]
fn a_persistent_403_is_access_denied_even_when_the_timeout_ends_first() {
    let emu = seeded();
    emu.deny("api-key", true);
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_ACCESS_RETRY".into(), "30s".into());
    env.insert("KVFETCH_TIMEOUT".into(), "500ms".into());
    let r = run_with(
        &env,
        &["fetch", "--secret", "api-key", "--dir", &out_dir(&s)],
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("Key Vault Secrets User"), "{}", r.stderr);
}

// 12. A floor under every retry delay.

#[test]
fn retry_after_zero_does_not_spin() {
    let emu = seeded();
    for _ in 0..10_000 {
        emu.push_kv_fault(Fault::StatusRetryAfter(429, 0));
    }
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_TIMEOUT".into(), "1s".into());
    let r = run_with(
        &env,
        &["fetch", "--secret", "api-key", "--dir", &out_dir(&s)],
    );
    assert_eq!(r.code, 7, "{}", r.stderr);
    let n = emu.counters().kv_total_requests;
    assert!(
        (5..=12).contains(&n),
        "{n} requests in 1 s with a 100 ms floor"
    );
}

// 14. Temp files a killed run left behind.

#[test]
fn stale_temp_files_are_swept_and_live_ones_kept() {
    let emu = seeded();
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("out")).unwrap();
    let stale = s.path("out/.kvfetch-tmp-999999999-deadbeef");
    let unrelated = s.path("out/.kvfetch-tmpnot");
    for p in [&stale, &unrelated] {
        std::fs::write(p, "leftover").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o400)).unwrap();
    }
    // A file of a gone process is swept once it is 2 s old (judged by its ctime, which a
    // rename or link refreshes); younger, or of a live process, it stays.
    std::thread::sleep(ms(2100));
    let fresh = s.path("out/.kvfetch-tmp-999999998-0badf00d");
    let live = s.path(&format!("out/.kvfetch-tmp-{}-cafe", std::process::id()));
    for p in [&fresh, &live] {
        std::fs::write(p, "leftover").unwrap();
    }
    let r = run(
        &emu,
        &["fetch", "--secret", "api-key", "--dir", &out_dir(&s)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let name = |p: &std::path::Path| p.file_name().unwrap().to_string_lossy().into_owned();
    let mut expected = vec![
        "api-key".to_string(),
        name(&unrelated),
        name(&fresh),
        name(&live),
    ];
    expected.sort();
    assert_eq!(s.entries("out"), expected);
    assert!(
        r.stderr.contains("removed temp files") && r.stderr.contains("count=1"),
        "{}",
        r.stderr
    );
}

// 15. A directory others can write, a symlinked one, and the env file's directory.

#[test]
fn exposed_directories_warn_or_fail_with_require_private_dir() {
    let emu = seeded();
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("shared")).unwrap();
    std::fs::set_permissions(s.path("shared"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::symlink(s.path("shared"), s.path("link")).unwrap();
    let shared = s.path("shared").display().to_string();
    let link = s.path("link").display().to_string();
    let env_file = s.path("shared/app.env").display().to_string();
    for args in [
        vec!["--dir", shared.as_str()],
        vec!["--dir", link.as_str()],
        vec!["--env-file", env_file.as_str()],
    ] {
        let mut all = vec!["fetch", "--secret", "api-key"];
        all.extend(&args);
        let r = run(&emu, &all);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("kvfetch: warn:")
                && (r.stderr.contains("writable by group or others")
                    || r.stderr.contains("is a symlink")),
            "{args:?}: {}",
            r.stderr
        );
        emu.reset_counters();
        all.push("--require-private-dir");
        let r = run(&emu, &all);
        assert_eq!(r.code, 6, "{args:?}: {}", r.stderr);
        assert_no_requests(&emu, &format!("{args:?}"));
    }
}

#[test]
fn require_tmpfs_covers_the_env_file_directory() {
    let disk = Scratch::under(&std::env::current_dir().unwrap().join("target"));
    if kvfetch::output::files::on_memory_fs(&disk.0) != Some(false) {
        skip("the build directory is on tmpfs here, so there is no disk to refuse");
        return;
    }
    let emu = seeded();
    let env_file = disk.path("app.env").display().to_string();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "api-key",
            "--env-file",
            &env_file,
            "--require-tmpfs",
        ],
    );
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert_no_requests(&emu, "env file on disk");
    assert!(disk.entries("").is_empty());
}

#[test]
fn a_dripping_answer_is_bounded_by_the_timeout_and_a_redirect_is_never_followed() {
    let emu = seeded();
    for _ in 0..50 {
        emu.push_kv_fault(Fault::Drip(ms(200)));
    }
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_TIMEOUT".into(), "1s".into());
    let t = Instant::now();
    let r = run_with(
        &env,
        &["fetch", "--secret", "api-key", "--dir", &out_dir(&s)],
    );
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(t.elapsed() < ms(3000), "{:?}", t.elapsed());
    assert!(s.entries("").is_empty());

    let emu = seeded();
    emu.push_kv_fault(Fault::Redirect {
        status: 307,
        location: "https://evil.test/secrets/api-key".into(),
    });
    let r = run(
        &emu,
        &["fetch", "--secret", "api-key", "--dir", &out_dir(&s)],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("never follows redirects"), "{}", r.stderr);
    assert_eq!(emu.counters().kv_total_requests, 1);
    assert!(s.entries("").is_empty());
}

// Found by the adversarial review of the fixes above.

#[test]
fn resource_vouches_for_the_vault_host_only() {
    let emu = seeded();
    let s = Scratch::new();
    let marker = s.path("started");
    let touch = format!("touch {}", marker.display());
    let vault = emu.vault_url();
    for (what, args, reference) in [
        (
            "a reference to another host",
            vec!["--resource", "https://vault.azure.net"],
            Some("@Microsoft.KeyVault(SecretUri=https://kv.other.example:8443/secrets/api-key)"),
        ),
        (
            "a secret identifier on another host",
            vec![
                "--resource",
                "https://vault.azure.net",
                "--secret",
                "https://kv.other.example:8443/secrets/api-key",
            ],
            None,
        ),
    ] {
        let mut env = env_for(&emu);
        if let Some(r) = reference {
            env.insert("DB".into(), r.into());
        }
        let mut all = vec!["exec", "--vault", vault.as_str()];
        all.extend(args);
        all.extend(["--", "sh", "-c", &touch]);
        let r = run_with(&env, &all);
        assert_eq!(r.code, 2, "{what}: {}", r.stderr);
        assert!(!marker.exists());
        assert_no_requests(&emu, what);
    }
}

#[test]
fn a_loopback_vault_gets_a_token_only_from_a_loopback_identity_endpoint() {
    let emu = seeded();
    let s = Scratch::new();
    let mut env = env_for(&emu);
    // A real (non-loopback) identity endpoint: refused before any request is sent to it.
    env.insert(
        "IDENTITY_ENDPOINT".into(),
        "http://10.0.0.1:9/msi/token".into(),
    );
    env.insert("IDENTITY_HEADER".into(), "h".into());
    let r = run_with(
        &env,
        &["fetch", "--secret", "api-key", "--dir", &out_dir(&s)],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("loopback"), "{}", r.stderr);
    assert_no_requests(&emu, "loopback vault, remote identity");
    for vault in ["http://localhost:9", "https://localhost:9"] {
        let r = run(
            &emu,
            &[
                "fetch",
                "--vault",
                vault,
                "--secret",
                "api-key",
                "--dir",
                &out_dir(&s),
            ],
        );
        assert_eq!(
            r.code, 2,
            "{vault}: localhost is a name, not a loopback address: {}",
            r.stderr
        );
    }
    assert_no_requests(&emu, "localhost");
}

#[test]
fn a_directory_owned_by_another_user_is_not_private() {
    if !root_or_skip("needs root to create directories owned by another user") {
        return;
    }
    let emu = seeded();
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("theirs/secrets")).unwrap();
    std::os::unix::fs::chown(s.path("theirs"), Some(65534), Some(65534)).unwrap();
    for dir in [
        s.path("theirs"),
        s.path("theirs/secrets"),
        s.path("theirs/new"),
    ] {
        let d = dir.display().to_string();
        let r = run(
            &emu,
            &[
                "fetch",
                "--secret",
                "api-key",
                "--dir",
                &d,
                "--require-private-dir",
            ],
        );
        assert_eq!(r.code, 6, "{d}: {}", r.stderr);
        assert!(r.stderr.contains("belongs to uid 65534"), "{}", r.stderr);
        assert_no_requests(&emu, &d);
    }
}

#[test]
fn the_ready_file_cannot_be_a_secret_file_and_nothing_is_removed_before_the_checks() {
    let emu = seeded();
    let s = Scratch::new();
    std::fs::create_dir_all(s.path("out")).unwrap();
    std::fs::write(s.path("out/api-key"), "good").unwrap();
    let ready = s.path("out/api-key").display().to_string();
    let r = run(
        &emu,
        &[
            "watch",
            "--secret",
            "api-key",
            "--dir",
            &out_dir(&s),
            "--ready-file",
            &ready,
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    let other_ready = s.path("ready");
    std::fs::write(&other_ready, "ready\n").unwrap();
    let r = run(
        &emu,
        &[
            "watch",
            "--secret",
            "api-key",
            "--dir",
            &out_dir(&s),
            "--ready-file",
            other_ready.to_str().unwrap(),
            "--health-listen",
            "not-an-address",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert_eq!(read(&s.path("out/api-key")), "good");
    assert!(other_ready.exists(), "a usage error removes nothing");
    assert_no_requests(&emu, "ready file");
}

#[test]
fn a_token_echoed_by_a_server_never_reaches_the_log() {
    let emu = seeded();
    let s = Scratch::new();
    let echoed = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJvaWQiOiJ4In0.c2lnbmF0dXJlLXh5eg";
    emu.push_kv_fault(Fault::ErrorText {
        status: 400,
        code: "BadParameter".into(),
        message: format!("the token {echoed} is not welcome"),
    });
    let r = run(
        &emu,
        &["fetch", "--secret", "api-key", "--dir", &out_dir(&s)],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("the token <token> is not welcome"),
        "{}",
        r.stderr
    );
    assert_no_leak(&r, &[VALUE]);
}

#[test]
fn output_paths_are_plain_and_owners_possible_before_any_request() {
    let emu = seeded();
    let s = Scratch::new();
    let slash = format!("{}/", s.path("newdir").display());
    let temp_named = s.path(".kvfetch-tmp-env").display().to_string();
    for args in [
        vec!["fetch", "--secret", "api-key", "--dir", ""],
        vec!["fetch", "--secret", "api-key", "--env-file", ""],
        vec!["fetch", "--secret", "api-key", "--env-file", &slash],
        vec!["fetch", "--secret", "api-key", "--env-file", &temp_named],
        vec![
            "watch",
            "--secret",
            "api-key",
            "--dir",
            "x",
            "--ready-file",
            &temp_named,
        ],
        vec![
            "fetch",
            "--secret",
            "api-key",
            "--dir",
            "x",
            "--ca-file",
            "/dev/zero",
        ],
        vec![
            "watch",
            "--secret",
            "api-key",
            "--dir",
            "x",
            "--health-listen",
            "8089",
        ],
    ] {
        let r = run(&emu, &args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert_no_requests(&emu, &format!("{args:?}"));
    }
    if !root_or_skip("(the owner part) needs root to run kvfetch as another user") {
        return;
    }
    nobodys_dir(&s.path("out"));
    let out = as_nobody(
        &[],
        &[
            "fetch",
            "--secret",
            "api-key",
            "--dir",
            &out_dir(&s),
            "--owner",
            "0",
        ],
        &env_for(&emu),
    )
    .output()
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("CAP_CHOWN"));
    assert_no_requests(&emu, "--owner without CAP_CHOWN");
    assert!(s.entries("out").is_empty());
    // Its own uid with a group it is not in is refused the same way, before any request; its
    // own uid and group are fine.
    for (owner, code) in [("65534:1000", 6), ("65534:65534", 0)] {
        let out = as_nobody(
            &[],
            &[
                "fetch",
                "--secret",
                "api-key",
                "--dir",
                &out_dir(&s),
                "--owner",
                owner,
            ],
            &env_for(&emu),
        )
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{owner}: {stderr}");
        if code == 6 {
            assert!(stderr.contains("CAP_CHOWN"), "{stderr}");
            assert_no_requests(&emu, owner);
        }
    }
}

#[test]
fn without_threads_secrets_are_fetched_one_at_a_time() {
    if !root_or_skip("needs root to run kvfetch as another user under a process limit") {
        return;
    }
    let emu = seeded();
    let s = Scratch::new();
    users_dir(&s.path("out"), 64_008);
    // RLIMIT_NPROC 1 for a uid of its own: kvfetch itself is its one process, so no thread
    // can start.
    let out = as_user(
        64_008,
        &["prlimit", "--nproc=1:1"],
        &[
            "fetch",
            "--secret",
            "api-key",
            "--secret",
            "other",
            "--dir",
            &out_dir(&s),
        ],
        &env_for(&emu),
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("one secret at a time"), "{stderr}");
    assert_eq!(read(&s.path("out/api-key")), VALUE);
}

#[test]
fn exec_finds_the_command_before_any_request_or_write() {
    let emu = seeded();
    let s = Scratch::new();
    let r = run(
        &emu,
        &[
            "exec",
            "--secret",
            "api-key",
            "--dir",
            &out_dir(&s),
            "--",
            "/nonexistent/cmd",
        ],
    );
    assert_eq!(r.code, 127, "{}", r.stderr);
    assert_no_requests(&emu, "a missing command");
    assert!(s.entries("").is_empty());
}

#[test]
fn an_error_page_that_is_not_utf8_is_judged_by_its_status_and_retried() {
    let emu = seeded();
    emu.push_kv_fault(Fault::InvalidUtf8(503));
    let s = Scratch::new();
    let r = run(
        &emu,
        &["fetch", "--secret", "api-key", "--dir", &out_dir(&s)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(emu.counters().kv_total_requests, 2);
    assert_eq!(read(&s.path("out/api-key")), VALUE);
}
