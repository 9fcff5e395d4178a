//! Each message an operator is likely to meet first names the actual problem and its fix
//! (issue "Operator experience"): one test per mistake, run against the emulator.

mod common;

use common::*;

fn seeded() -> Emulator {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", "Ms1-secret-value");
    emu
}

#[test]
fn dir_that_is_a_file_says_so() {
    let emu = seeded();
    let s = Scratch::new();
    let file = s.path("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "db-password",
            "--dir",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        r.stderr.contains("is a file, not a directory"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("--env-file"),
        "names the alternative: {}",
        r.stderr
    );
    assert_eq!(emu.counters().kv_total_requests, 0);
}

#[test]
fn an_alias_that_is_not_a_variable_name_says_which_characters() {
    let emu = seeded();
    let r = run(&emu, &["exec", "--secret", "1DB=db-password", "--", "true"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("alias \"1DB\""), "{}", r.stderr);
    assert!(r.stderr.contains("letters, digits and _"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("give an alias"),
        "it has one: {}",
        r.stderr
    );
    // Without an alias, the name itself is the problem: then an alias is the fix.
    let r = run(&emu, &["exec", "--secret", "1st-key", "--", "true"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--secret SECRET_1ST_KEY=1st-key"),
        "{}",
        r.stderr
    );
}

#[test]
fn exec_of_a_directory_says_it_is_a_directory() {
    let emu = seeded();
    let s = Scratch::new();
    let r = run(
        &emu,
        &[
            "exec",
            "--secret",
            "DB=db-password",
            "--",
            s.0.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 126, "{}", r.stderr);
    assert!(r.stderr.contains("is a directory"), "{}", r.stderr);
    assert_eq!(
        emu.counters().kv_total_requests,
        0,
        "checked before fetching"
    );
}

#[test]
fn a_wrong_identity_header_names_the_variable() {
    let emu = seeded();
    let mut env = env_for(&emu);
    env.insert("IDENTITY_ENDPOINT".into(), emu.identity_endpoint());
    env.insert("IDENTITY_HEADER".into(), "Ms2-stale-header".into());
    let s = Scratch::new();
    let out = s.path("out");
    let r = run_with(
        &env,
        &[
            "fetch",
            "--secret",
            "db-password",
            "--dir",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("IDENTITY_HEADER"), "{}", r.stderr);
    assert!(r.stderr.contains("rejected"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("Ms2-stale-header"),
        "the header is a credential"
    );
    assert_eq!(emu.counters().imds_token_requests, 0, "no fallback to IMDS");
}

#[test]
fn the_access_hint_for_a_loopback_vault_uses_a_placeholder_name() {
    let emu = seeded();
    emu.deny("db-password", true);
    let s = Scratch::new();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "db-password",
            "--dir",
            s.path("out").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("--name VAULT_NAME"), "{}", r.stderr);
    assert!(!r.stderr.contains("--name 127"), "{}", r.stderr);
}

#[test]
fn a_typo_in_the_vault_domain_suggests_the_real_domain() {
    let emu = seeded();
    let mut env = env_for(&emu);
    env.remove("KVFETCH_VAULT");
    let r = run_with(
        &env,
        &[
            "fetch",
            "--vault",
            "https://contoso-kv.vault.azure.com",
            "--secret",
            "db-password",
            "--env-file",
            "/dev/null/x",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("did you mean --vault https://contoso-kv.vault.azure.net"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("--resource https"),
        "no ready-made command vouching for a typo: {}",
        r.stderr
    );
}

#[test]
fn an_unknown_app_service_identity_names_the_assign_command() {
    let emu = seeded();
    let mut env = env_for(&emu);
    env.insert("IDENTITY_ENDPOINT".into(), emu.identity_endpoint());
    env.insert("IDENTITY_HEADER".into(), emu.identity_header().into());
    let s = Scratch::new();
    let out = s.path("out");
    let r = run_with(
        &env,
        &[
            "fetch",
            "--secret",
            "db-password",
            "--client-id",
            "9d0c7b1e-0000-4000-8000-00000000ms03",
            "--dir",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("Unable to load the proper Managed Identity"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("az containerapp identity assign"),
        "{}",
        r.stderr
    );
    assert_eq!(emu.counters().app_service_token_requests, 1, "not retried");
    assert_eq!(emu.counters().imds_token_requests, 0, "no fallback to IMDS");
}

#[test]
fn success_lists_each_output_with_its_version_never_the_value() {
    let emu = Emulator::start().unwrap();
    let v1 = emu.set_secret("db-password", "Ms4-first-value");
    let v2 = emu.set_secret("api-key", "Ms5-second-value");
    let s = Scratch::new();
    let (dir, env_file) = (s.path("out"), s.path("app.env"));
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "db-password",
            "--secret",
            "KEY=api-key",
            "--dir",
            dir.to_str().unwrap(),
            "--env-file",
            env_file.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let wrote: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("kvfetch: info: wrote "))
        .collect();
    assert_eq!(wrote.len(), 2, "{}", r.stderr);
    assert!(wrote[0].contains("secret=db-password "), "{}", wrote[0]);
    assert!(
        wrote[0].contains(&format!(" version={v1} ")),
        "{}",
        wrote[0]
    );
    assert!(
        wrote[0].contains(&format!(" file={} ", dir.join("db-password").display())),
        "{}",
        wrote[0]
    );
    assert!(wrote[0].ends_with(" variable=DB_PASSWORD"), "{}", wrote[0]);
    assert!(
        wrote[1].contains(&format!(" version={v2} ")),
        "{}",
        wrote[1]
    );
    assert!(wrote[1].ends_with(" variable=KEY"), "{}", wrote[1]);
    assert_no_leak(&r, &["Ms4-first-value", "Ms5-second-value"]);
    // Quiet means quiet.
    let r = run(
        &emu,
        &[
            "fetch",
            "-q",
            "--secret",
            "db-password",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
}

// While waiting: a wait of more than a few seconds says what it waits for, at info level.

/// The progress lines (`msg` prefix) in `stderr`.
fn progress<'a>(stderr: &'a str, msg: &str) -> Vec<&'a str> {
    let prefix = format!("kvfetch: info: {msg}");
    stderr.lines().filter(|l| l.starts_with(&prefix)).collect()
}

#[test]
fn a_slow_identity_endpoint_is_reported_while_waiting() {
    let emu = seeded();
    // 0.15 + 0.3 + 0.6 + 1.2 + 2.4 s of backoff (±20 % jitter: 3.7 to 5.6 s): the wait passes
    // 3 s before the sixth try, and not 6 s.
    for _ in 0..5 {
        emu.push_imds_fault(Fault::Status(410));
    }
    let mut env = env_for(&emu);
    env.insert("KVFETCH_BACKOFF_BASE".into(), "150ms".into());
    let s = Scratch::new();
    let out = s.path("out");
    let r = run_with(
        &env,
        &[
            "fetch",
            "--secret",
            "db-password",
            "--dir",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines = progress(&r.stderr, "waiting for the identity endpoint");
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    for field in [
        format!("endpoint={}/metadata/identity/oauth2/token", emu.imds_url()),
        "chosen_by=AZURE_POD_IDENTITY_AUTHORITY_HOST".into(),
        "problem=\"HTTP 410".into(),
        "waited=".into(),
        "retry_in=".into(),
    ] {
        assert!(lines[0].contains(&field), "{field}: {}", lines[0]);
    }
}

#[test]
fn throttling_is_reported_with_the_wait_it_asked_for() {
    let emu = seeded();
    emu.push_kv_fault(Fault::StatusRetryAfter(429, 3));
    let s = Scratch::new();
    let out = s.path("out");
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "db-password",
            "--dir",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines = progress(&r.stderr, "Key Vault is throttling");
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(lines[0].contains("secret=db-password"), "{}", lines[0]);
    assert!(lines[0].contains("retry_in=3s"), "{}", lines[0]);
    // A short wait says nothing at the default level.
    emu.push_kv_fault(Fault::StatusRetryAfter(429, 1));
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "db-password",
            "--dir",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        progress(&r.stderr, "Key Vault is").is_empty(),
        "{}",
        r.stderr
    );
}

#[test]
fn a_403_retried_while_a_role_propagates_is_reported() {
    let emu = seeded();
    emu.deny("db-password", true);
    let mut env = env_for(&emu);
    env.insert("KVFETCH_ACCESS_RETRY".into(), "4s".into());
    env.insert("KVFETCH_BACKOFF_BASE".into(), "1s".into());
    let s = Scratch::new();
    let out = s.path("out");
    let r = run_with(
        &env,
        &[
            "fetch",
            "--secret",
            "db-password",
            "--dir",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    let lines = progress(
        &r.stderr,
        "access denied; retrying while a role assignment propagates",
    );
    // Waits of 1 s, then 2 s (the report: 3 s waited by then), then the rest of the 4 s window.
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(lines[0].contains("secret=db-password"), "{}", lines[0]);
}

#[test]
fn a_vault_name_that_does_not_resolve_says_to_check_the_name() {
    if rerun_isolated(
        "a_vault_name_that_does_not_resolve_says_to_check_the_name",
        &["-n"],
    ) {
        return;
    }
    let emu = seeded();
    let mut env = env_for(&emu);
    env.remove("KVFETCH_VAULT");
    env.insert("KVFETCH_BACKOFF_BASE".into(), "200ms".into());
    env.insert("KVFETCH_TIMEOUT".into(), "4s".into());
    let s = Scratch::new();
    let out = s.path("out");
    let r = run_with(
        &env,
        &[
            "fetch",
            "--vault",
            "kvfetch-nx-ms6",
            "--secret",
            "db-password",
            "--dir",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("kvfetch-nx-ms6.vault.azure.net does not resolve; check the vault name"),
        "{}",
        r.stderr
    );
    let lines = progress(&r.stderr, "the vault's host does not resolve");
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert_eq!(emu.counters().imds_token_requests, 1);
}

#[test]
fn a_bare_port_for_the_health_listener_suggests_an_address() {
    let emu = seeded();
    let r = run(
        &emu,
        &[
            "watch",
            "--secret",
            "db-password",
            "--dir",
            "x",
            "--health-listen",
            "8089",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("127.0.0.1:8089 (this host only)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("0.0.0.0:8089"), "{}", r.stderr);
    assert_eq!(emu.counters().imds_token_requests, 0);
}

// A newcomer's first hour (issue 26): each mistake is told its fix, before any request.

/// Run kvfetch with `args` (the emulator's environment plus `extra`); assert exit 2, no request,
/// and that the one error line contains every `expected` text and none of `unwanted`.
fn told(
    emu: &Emulator,
    extra: &[(&str, &str)],
    args: &[&str],
    expected: &[&str],
    unwanted: &[&str],
) {
    let mut env = env_for(emu);
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    let r = run_with(&env, args);
    assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    for e in expected {
        assert!(r.stderr.contains(e), "{args:?}: wants {e:?}: {}", r.stderr);
    }
    for u in unwanted {
        assert!(
            !r.stderr.contains(u),
            "{args:?}: must not say {u:?}: {}",
            r.stderr
        );
    }
    let c = emu.counters();
    assert_eq!(
        (c.imds_token_requests, c.kv_total_requests),
        (0, 0),
        "{args:?}"
    );
}

#[test]
fn a_mistyped_flag_names_the_flag_meant() {
    let emu = seeded();
    for (typed, meant) in [
        ("--secrte", "--secret"),
        ("--env-fiel", "--env-file"),
        ("--valut", "--vault"),
        ("--timout", "--timeout"),
        ("--concurency", "--concurrency"),
    ] {
        told(
            &emu,
            &[],
            &["fetch", typed, "x", "--dir", "/tmp/x"],
            &[&format!("did you mean {meant}?")],
            &[],
        );
    }
    // Nothing close: no guess.
    told(
        &emu,
        &[],
        &["fetch", "--frobnicate", "x"],
        &["unknown option --frobnicate"],
        &["did you mean"],
    );
}

#[test]
fn secret_name_mistakes_are_told_their_fix() {
    let emu = seeded();
    let dir = ["--dir", "/tmp/kvfetch-never-written"];
    let args = |spec: &'static str| -> Vec<&'static str> {
        let mut a = vec!["fetch", "--secret", spec];
        a.extend(dir);
        a
    };
    told(
        &emu,
        &[],
        &args("db_password"),
        &["did you mean \"db-password\"?"],
        &[],
    );
    told(
        &emu,
        &[],
        &args("a,b"),
        &["one secret per --secret", "KVFETCH_SECRETS"],
        &[],
    );
    told(
        &emu,
        &[],
        &["exec", "--secret", "PATH=db-password", "--", "true"],
        &["the alias names PATH", "will not set", "--allow-env PATH"],
        &["give an alias"],
    );
}

#[test]
fn vault_mistakes_are_told_their_fix() {
    let emu = seeded();
    let env = [("KVFETCH_VAULT", "")];
    told(
        &emu,
        &env,
        &[
            "fetch",
            "--vault",
            "myvault.vault.azure.net",
            "--secret",
            "db",
            "--dir",
            "/tmp/x",
        ],
        &["--vault https://myvault.vault.azure.net"],
        &[],
    );
    // A typo'd domain: the fix only; never an invitation to vouch for it with --resource.
    told(
        &emu,
        &env,
        &[
            "fetch",
            "--vault",
            "https://myvault.vault.azure.com",
            "--secret",
            "db",
            "--dir",
            "/tmp/x",
        ],
        &["did you mean --vault https://myvault.vault.azure.net ?"],
        &["--resource"],
    );
    // The same slip inside a secret's URL points at that URL, not at --vault.
    told(
        &emu,
        &env,
        &[
            "fetch",
            "--secret",
            "https://myvault.vault.azure.com/secrets/db",
            "--dir",
            "/tmp/x",
        ],
        &["did you mean https://myvault.vault.azure.net/secrets/db ?"],
        &["--vault", "--resource"],
    );
}

#[test]
fn a_value_from_a_variable_is_named_by_that_variable() {
    let emu = seeded();
    let missing = "/nonexistent/emulator-ca.pem";
    let r = run_with(
        &{
            let mut env = env_for(&emu);
            env.insert("KVFETCH_CA_FILE".into(), missing.into());
            env
        },
        &[
            "fetch",
            "--secret",
            "db-password",
            "--dir",
            "/tmp/kvfetch-never-written",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("cannot read KVFETCH_CA_FILE {missing}")),
        "{}",
        r.stderr
    );
    // Given as a flag, the flag is named.
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "db-password",
            "--dir",
            "/tmp/x",
            "--ca-file",
            missing,
        ],
    );
    assert!(
        r.stderr
            .contains(&format!("cannot read --ca-file {missing}")),
        "{}",
        r.stderr
    );
    // A flag's own check names the variable too.
    told(
        &emu,
        &[("KVFETCH_TIMEOUT", "soon")],
        &["fetch", "--secret", "db-password", "--dir", "/tmp/x"],
        &["KVFETCH_TIMEOUT=\"soon\" is not a duration"],
        &["--timeout \"soon\""],
    );
}

#[test]
fn completions_say_what_is_offered_without_rust_debug_text() {
    let emu = seeded();
    told(
        &emu,
        &[],
        &["completions", "powershell"],
        &["\"powershell\" are not offered", "bash, zsh or fish"],
        &["Some(", "None"],
    );
    told(
        &emu,
        &[],
        &["completions"],
        &["needs a shell"],
        &["Some(", "None"],
    );
    for help in ["--help", "-h"] {
        let r = run(&emu, &["completions", help]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stdout
                .contains("Usage: kvfetch completions bash|zsh|fish"),
            "{}",
            r.stdout
        );
    }
}

#[test]
fn a_single_value_flag_given_twice_is_refused() {
    let emu = seeded();
    told(
        &emu,
        &[],
        &[
            "fetch",
            "--secret",
            "db-password",
            "--dir",
            "/tmp/a",
            "--dir",
            "/tmp/b",
        ],
        &["--dir was given 2 times; it takes one value"],
        &[],
    );
    // Repeatable flags stay repeatable.
    let s = Scratch::new();
    let out = s.path("out");
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "db-password",
            "--secret",
            "X=db-password",
            "--dir",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn plain_exec_refuses_the_flags_of_supervision() {
    let emu = seeded();
    for (flag, value) in [
        ("--on-change", "signal:HUP"),
        ("--grace", "5s"),
        ("--max-stale", "1m"),
        ("--full-read-every", "1h"),
        ("--health-listen", "127.0.0.1:0"),
    ] {
        told(
            &emu,
            &[],
            &[
                "exec",
                "--secret",
                "DB=db-password",
                flag,
                value,
                "--",
                "true",
            ],
            &[&format!("{flag} with exec needs --refresh")],
            &[],
        );
    }
    told(
        &emu,
        &[("KVFETCH_GRACE", "5s")],
        &["exec", "--secret", "DB=db-password", "--", "true"],
        &["KVFETCH_GRACE with exec needs --refresh"],
        &[],
    );
    // With --refresh they are taken.
    let r = run(
        &emu,
        &[
            "exec",
            "--secret",
            "DB=db-password",
            "--refresh",
            "1h",
            "--grace",
            "1s",
            "--",
            "true",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn the_success_line_counts_what_was_written() {
    let emu = seeded();
    let s = Scratch::new();
    let out = s.path("out");
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "db-password",
            "--secret",
            "gone?optional",
            "--dir",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("fetched and wrote secrets count=1 skipped=1"),
        "{}",
        r.stderr
    );
    let tpl = s.path("t.tpl");
    std::fs::write(&tpl, "p={{ secret \"db-password\" }}\n").unwrap();
    let dest = s.path("t.conf");
    let spec = format!("{}:{}", tpl.display(), dest.display());
    let r = run(&emu, &["fetch", "--template", &spec]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("fetched and wrote secrets count=1 templates=1"),
        "{}",
        r.stderr
    );
}

#[test]
fn no_identity_endpoint_outside_azure_is_said_within_seconds() {
    // The default IMDS address, with nothing there: only inside a network namespace of the
    // test's own (only `lo`, no route), where 169.254.169.254 is unreachable and nothing leaves.
    if rerun_isolated(
        "no_identity_endpoint_outside_azure_is_said_within_seconds",
        &["-n"],
    ) {
        return;
    }
    let emu = seeded();
    let mut env = env_for(&emu);
    env.remove("AZURE_POD_IDENTITY_AUTHORITY_HOST");
    env.remove("KVFETCH_VAULT");
    env.insert("KVFETCH_BACKOFF_BASE".into(), "200ms".into());
    env.insert("KVFETCH_TIMEOUT".into(), "60s".into());
    let s = Scratch::new();
    let out = s.path("out");
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(bin())
        .args([
            "fetch",
            "--vault",
            "kvfetch-nx-ms7",
            "--secret",
            "db-password",
        ])
        .args(["--dir", out.to_str().unwrap()])
        .env_clear()
        .envs(&env)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = String::new();
    let mut when = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("no managed-identity endpoint answers here") {
            when = Some(started.elapsed());
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let when = when.unwrap_or_else(|| panic!("no hint: {seen}"));
    // Within seconds of a 60 s timeout: a wide margin for a loaded machine.
    assert!(
        when < std::time::Duration::from_secs(15),
        "{when:?}: {seen}"
    );
    for fix in [
        "cargo run --example emulator",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    ] {
        assert!(seen.contains(fix), "{fix}: {seen}");
    }
    assert_eq!(emu.counters().kv_total_requests, 0);
}

#[test]
fn a_loopback_endpoint_where_nothing_listens_says_so() {
    let emu = seeded();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut env = env_for(&emu);
    let endpoint = format!("http://127.0.0.1:{closed}/msi/token");
    env.insert("IDENTITY_ENDPOINT".into(), endpoint.clone());
    env.insert("IDENTITY_HEADER".into(), emu.identity_header().into());
    env.insert("KVFETCH_TIMEOUT".into(), "2s".into());
    let s = Scratch::new();
    let r = run_with(
        &env,
        &[
            "fetch",
            "--secret",
            "db-password",
            "--dir",
            s.path("out").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
    let hint = format!("nothing listens at {endpoint} (from IDENTITY_ENDPOINT");
    assert_eq!(
        r.stderr.matches(&hint).count(),
        2,
        "once while waiting, once in the error: {}",
        r.stderr
    );
    assert!(r.stderr.contains("is the emulator"), "{}", r.stderr);
    let c = emu.counters();
    assert_eq!((c.imds_token_requests, c.kv_total_requests), (0, 0));
}
