//! `--stale-ok DURATION`: through a vault or identity outage, kvfetch keeps the outputs it wrote
//! itself (checked against its manifest) instead of failing; never through a denial, a missing
//! secret or a usage error.

mod common;

use std::collections::HashMap;

use common::*;

const MANIFEST: &str = ".kvfetch-manifest.json";

fn seeded() -> Emulator {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", "stale-ok-first-value");
    emu.set_secret("api-key", "stale-ok-api-value");
    emu
}

/// The emulator's environment with a short deadline (an outage ends the run quickly).
fn env_short(emu: &Emulator) -> HashMap<String, String> {
    let mut env = env_for(emu);
    env.insert("KVFETCH_TIMEOUT".into(), "1s".into());
    env
}

/// The vault at the same address drops every connection from now on: an outage (the flags,
/// and so what they ask for, stay the same).
fn vault_down(emu: &Emulator) -> HashMap<String, String> {
    for _ in 0..3000 {
        emu.push_kv_fault(Fault::Drop);
    }
    env_short(emu)
}

/// A loopback address nothing listens on: a vault that cannot be reached.
fn dead_vault() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("https://127.0.0.1:{port}")
}

fn fetch_args<'a>(s: &'a Scratch, out: &'a str, env_file: &'a str) -> Vec<&'a str> {
    let _ = s;
    vec![
        "fetch",
        "--secret",
        "db-password",
        "--secret",
        "api-key",
        "--dir",
        out,
        "--env-file",
        env_file,
        "--stale-ok",
        "1h",
    ]
}

/// A first fetch with --stale-ok writes the outputs and the manifest; returns (dir, env file).
fn first_fetch(emu: &Emulator, s: &Scratch) -> (String, String) {
    let out = s.path("out").display().to_string();
    let env_file = s.path("app.env").display().to_string();
    let r = run_with(&env_for(emu), &fetch_args(s, &out, &env_file));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let manifest = read(&s.path("out").join(MANIFEST));
    assert!(
        !manifest.contains("stale-ok-first-value") && !manifest.contains("stale-ok-api-value"),
        "the manifest holds a value: {manifest}"
    );
    assert_eq!(mode(&s.path("out").join(MANIFEST)), 0o600);
    (out, env_file)
}

#[test]
fn vault_unreachable_keeps_what_kvfetch_wrote_and_exits_0() {
    let emu = seeded();
    let s = Scratch::new();
    let (out, env_file) = first_fetch(&emu, &s);
    let down = vault_down(&emu);
    let r = run_with(&down, &fetch_args(&s, &out, &env_file));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("KEEPING STALE SECRETS"), "{}", r.stderr);
    assert!(r.stderr.contains("gave up on"), "{}", r.stderr);
    assert_eq!(read(&s.path("out/db-password")), "stale-ok-first-value");
    assert!(read(&s.path("app.env")).contains("API_KEY"));
    assert_no_leak(&r, &["stale-ok-first-value", "stale-ok-api-value"]);
    // Without --stale-ok the outage fails as before.
    let mut args = fetch_args(&s, &out, &env_file);
    args.truncate(args.len() - 2);
    let r = run_with(&down, &args);
    assert_eq!(r.code, 7, "{}", r.stderr);
    // A throttling vault (429 until the deadline) is an outage too.
    emu.set_kv_rate_limit(Some(0));
    let r = run_with(&env_short(&emu), &fetch_args(&s, &out, &env_file));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("KEEPING STALE SECRETS"), "{}", r.stderr);
}

#[test]
fn identity_endpoint_unreachable_keeps_them_too() {
    let emu = seeded();
    let s = Scratch::new();
    let (out, env_file) = first_fetch(&emu, &s);
    let mut down = env_short(&emu);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    down.insert(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST".into(),
        format!("http://127.0.0.1:{port}"),
    );
    let r = run_with(&down, &fetch_args(&s, &out, &env_file));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("KEEPING STALE SECRETS"), "{}", r.stderr);
}

/// Found in review: the manifest said what files were written, not for which flags, so a version
/// pinned to revoke a leaked value (or another vault) during an outage still kept the old files.
#[test]
fn outputs_written_for_other_flags_are_not_kept() {
    let emu = seeded();
    let s = Scratch::new();
    let (out, env_file) = first_fetch(&emu, &s);
    let down = vault_down(&emu);
    let mut args = fetch_args(&s, &out, &env_file);
    let at = args.iter().position(|a| *a == "db-password").unwrap();
    args[at] = "db-password/0123456789abcdef0123456789abcdef";
    let r = run_with(&down, &args);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(r.stderr.contains("written for other flags"), "{}", r.stderr);
    let mut args = fetch_args(&s, &out, &env_file);
    args.extend(["--env-format", "json"]);
    let r = run_with(&down, &args);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(r.stderr.contains("written for other flags"), "{}", r.stderr);
    // The same flags: kept.
    let r = run_with(&down, &fetch_args(&s, &out, &env_file));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn outputs_changed_by_hand_or_too_old_are_refused_with_exit_7() {
    let emu = seeded();
    let s = Scratch::new();
    let (out, env_file) = first_fetch(&emu, &s);
    let down = vault_down(&emu);
    // Changed by hand (same mode, other bytes).
    let file = s.path("out/api-key");
    let original = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, b"tampered").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
    let r = run_with(&down, &fetch_args(&s, &out, &env_file));
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(
        r.stderr.contains("api-key is not what kvfetch wrote"),
        "{}",
        r.stderr
    );
    // Put back as written: kept again.
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, &original).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
    let r = run_with(&down, &fetch_args(&s, &out, &env_file));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Written two hours ago: older than --stale-ok 1h.
    let manifest = s.path("out").join(MANIFEST);
    let mut m: serde_json::Value = serde_json::from_str(&read(&manifest)).unwrap();
    let written = m["written"].as_u64().unwrap();
    m["written"] = (written - 7200).into();
    std::fs::write(&manifest, m.to_string()).unwrap();
    let r = run_with(&down, &fetch_args(&s, &out, &env_file));
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(r.stderr.contains("more than --stale-ok 1h"), "{}", r.stderr);
    // No manifest at all.
    std::fs::remove_file(&manifest).unwrap();
    let r = run_with(&down, &fetch_args(&s, &out, &env_file));
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(r.stderr.contains("no manifest"), "{}", r.stderr);
}

#[test]
fn denial_missing_secret_and_usage_fail_as_before() {
    let emu = seeded();
    let s = Scratch::new();
    let (out, env_file) = first_fetch(&emu, &s);
    emu.deny("api-key", true);
    let r = run_with(&env_short(&emu), &fetch_args(&s, &out, &env_file));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(!r.stderr.contains("KEEPING STALE"), "{}", r.stderr);
    emu.deny("api-key", false);
    let mut args = fetch_args(&s, &out, &env_file);
    args.extend(["--secret", "no-such-secret"]);
    let r = run_with(&env_short(&emu), &args);
    assert_eq!(r.code, 5, "{}", r.stderr);
    // Nothing to keep: templates alone, or no output.
    let tpl = s.path("t.tpl");
    std::fs::write(&tpl, "{{ secret \"db-password\" }}").unwrap();
    let template = format!("{}:{}", tpl.display(), s.path("t.out").display());
    let r = run_with(
        &env_short(&emu),
        &["fetch", "--template", &template, "--stale-ok", "1h"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("--dir DIR or --env-file FILE"),
        "{}",
        r.stderr
    );
    // exec has nothing on disk to keep: refused with the reason.
    let r = run_with(
        &env_short(&emu),
        &[
            "exec",
            "--secret",
            "db-password",
            "--stale-ok",
            "1h",
            "--",
            "true",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("keeps no outputs on disk"),
        "{}",
        r.stderr
    );
    // The manifest's name is not an output's.
    let r = run_with(
        &env_short(&emu),
        &[
            "fetch",
            "--secret",
            "db-password",
            "--env-file",
            &s.path(MANIFEST).display().to_string(),
            "--stale-ok",
            "1h",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    // Out of range.
    let r = run_with(
        &env_short(&emu),
        &[
            "fetch",
            "--secret",
            "db-password",
            "--dir",
            &out,
            "--stale-ok",
            "10ms",
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn watch_starts_ready_but_stale_through_an_outage_then_replaces_the_outputs() {
    let emu = seeded();
    let s = Scratch::new();
    let (out, env_file) = first_fetch(&emu, &s);
    emu.set_secret("db-password", "stale-ok-second-value");
    emu.set_kv_rate_limit(Some(0));
    let ready_file = s.path("ready").display().to_string();
    let mut args = vec!["watch"];
    args.extend(&fetch_args(&s, &out, &env_file)[1..]);
    args.extend([
        "--refresh",
        "200ms",
        "--health-listen",
        "127.0.0.1:0",
        "--ready-file",
        &ready_file,
    ]);
    let mut w = Background::start(&env_short(&emu), &args);
    let addr = w.health_addr();
    wait_ready(&addr);
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!(code, 200);
    assert!(body.contains("stale"), "{body}");
    assert_eq!(metric(&addr, "kvfetch_serving_stale"), 1.0);
    assert_eq!(metric(&addr, "kvfetch_stale_starts_total"), 1.0);
    assert_eq!(read(&s.path("out/db-password")), "stale-ok-first-value");
    assert_eq!(read(&s.path("ready")), "ready (stale)\n");
    // The vault answers again: the outputs are replaced, and kvfetch is no longer stale.
    emu.set_kv_rate_limit(None);
    wait_for("the fresh value", ms(30_000), || {
        read(&s.path("out/db-password")) == "stale-ok-second-value"
    });
    wait_for("not stale", ms(10_000), || {
        metric(&addr, "kvfetch_serving_stale") == 0.0
    });
    assert_eq!(http_get(&addr, "/readyz"), (200, "ready\n".to_string()));
    assert_eq!(read(&s.path("ready")), "ready\n");
    let stderr = w.stop_and_stderr();
    assert!(stderr.contains("KEEPING STALE SECRETS"), "{stderr}");
    assert!(!stderr.contains("stale-ok-second-value") && !stderr.contains("stale-ok-first-value"));
    // The manifest now vouches for the fresh outputs: an outage keeps them.
    let down = vault_down(&emu);
    let r = run_with(&down, &fetch_args(&s, &out, &env_file));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// Found in review: once serving stale, a denial (a revocation made during the outage) was taken
/// for one more failed refresh, and the stale outputs were served on with no end.
#[test]
fn watch_serving_stale_ends_on_a_denial_and_when_the_outputs_grow_too_old() {
    let emu = seeded();
    let s = Scratch::new();
    let (out, env_file) = first_fetch(&emu, &s);
    emu.set_kv_rate_limit(Some(0));
    let mut args = vec!["watch"];
    args.extend(&fetch_args(&s, &out, &env_file)[1..]);
    args.extend(["--refresh", "200ms", "--health-listen", "127.0.0.1:0"]);
    let mut w = Background::start(&env_short(&emu), &args);
    let addr = w.health_addr();
    wait_ready(&addr);
    assert_eq!(metric(&addr, "kvfetch_serving_stale"), 1.0);
    emu.set_kv_rate_limit(None);
    emu.deny("db-password", true);
    assert_eq!(w.exit_within(ms(30_000)), Some(4), "{}", w.stderr());
    emu.deny("db-password", false);

    // Outputs a few seconds old, kept for at most 3 s: the outage outlasts that, and watch ends
    // with the outage's own exit code instead of serving them on.
    emu.set_kv_rate_limit(Some(0));
    let mut args = vec!["watch"];
    args.extend(&fetch_args(&s, &out, &env_file)[1..]);
    let at = args.iter().position(|a| *a == "1h").unwrap();
    args[at] = "3s";
    args.extend(["--refresh", "200ms"]);
    // Rewrite the outputs and the manifest now, so they are fresh enough to be kept at first.
    emu.set_kv_rate_limit(None);
    first_fetch(&emu, &s);
    emu.set_kv_rate_limit(Some(0));
    let mut w = Background::start(&env_short(&emu), &args);
    assert_eq!(w.exit_within(ms(30_000)), Some(7), "{}", w.stderr());
    // Ended by the age limit, while serving; or at once when a loaded machine took longer than
    // 3 s to start it, and the first fetch already found the outputs too old.
    w.wait("the reason", ms(10_000), || {
        let e = w.stderr();
        e.contains("older than --stale-ok") || e.contains("more than --stale-ok 3s")
    });
}

#[test]
fn watch_without_a_matching_manifest_fails_its_first_fetch_as_before() {
    let emu = seeded();
    let s = Scratch::new();
    let (out, env_file) = first_fetch(&emu, &s);
    std::fs::remove_file(s.path("out").join(MANIFEST)).unwrap();
    let mut down = env_short(&emu);
    down.insert("KVFETCH_VAULT".into(), dead_vault());
    let mut args = vec!["watch"];
    args.extend(&fetch_args(&s, &out, &env_file)[1..]);
    let mut w = Background::start(&down, &args);
    assert_eq!(w.exit_within(ms(30_000)), Some(7));
    // Its stderr is drained by a thread: wait for the last line to arrive.
    w.wait("the reason", ms(10_000), || {
        w.stderr().contains("no manifest")
    });
}

#[test]
fn a_denial_beside_an_outage_is_never_covered() {
    let emu = seeded();
    let s = Scratch::new();
    let (out, env_file) = first_fetch(&emu, &s);
    // One secret's vault is unreachable, the other vault refuses: the denial decides (exit 4),
    // whatever the order of the secrets.
    emu.deny("api-key", true);
    let far = format!("{}/secrets/db-password", dead_vault());
    for order in [[&far[..], "api-key"], ["api-key", &far[..]]] {
        let r = run_with(
            &env_short(&emu),
            &[
                "fetch",
                "--secret",
                order[0],
                "--secret",
                order[1],
                "--dir",
                &out,
                "--env-file",
                &env_file,
                "--stale-ok",
                "1h",
            ],
        );
        assert_eq!(r.code, 4, "{order:?}: {}", r.stderr);
        assert!(!r.stderr.contains("KEEPING STALE"), "{}", r.stderr);
    }
}

#[test]
fn the_atomic_layout_a_selection_and_templates_are_kept_too() {
    let emu = seeded();
    let s = Scratch::new();
    let out = s.path("out").display().to_string();
    let tpl = s.path("conf.tpl");
    std::fs::write(&tpl, "password={{ secret \"db-password\" }}\n").unwrap();
    let template = format!("{}:{}", tpl.display(), s.path("conf.ini").display());
    let args = [
        "fetch",
        "--all",
        "--dir",
        &out,
        "--dir-layout",
        "atomic",
        "--template",
        &template,
        "--stale-ok",
        "1h",
    ];
    let r = run_with(&env_for(&emu), &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let manifest = read(&s.path("out").join(MANIFEST));
    assert!(manifest.contains("..data/api-key"), "{manifest}");
    emu.set_kv_rate_limit(Some(0));
    let r = run_with(&env_short(&emu), &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("KEEPING STALE SECRETS"), "{}", r.stderr);
    assert_eq!(read(&s.path("out/db-password")), "stale-ok-first-value");
    // A visible name pointed elsewhere is not what kvfetch wrote.
    let link = s.path("out/api-key");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("..data/db-password", &link).unwrap();
    let r = run_with(&env_short(&emu), &args);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(r.stderr.contains("symlink target"), "{}", r.stderr);
    // The template's output changed: refused.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("..data/api-key", &link).unwrap();
    std::fs::write(s.path("conf.ini"), "password=guess\n").unwrap();
    let r = run_with(&env_short(&emu), &args);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(
        r.stderr.contains("conf.ini is not what kvfetch wrote"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_doctor_says_whether_the_outputs_would_be_kept() {
    let emu = seeded();
    let s = Scratch::new();
    let (out, env_file) = first_fetch(&emu, &s);
    let mut args = vec!["doctor"];
    args.extend(&fetch_args(&s, &out, &env_file)[1..]);
    let r = run_with(&env_for(&emu), &args);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("ok    stale-ok through an outage, the outputs on disk would be kept"),
        "{}",
        r.stdout
    );
    std::fs::remove_file(s.path("app.env")).unwrap();
    let r = run_with(&env_for(&emu), &args);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("warn  stale-ok through an outage, the outputs on disk would not be kept")
            && r.stdout.contains("app.env: it is missing"),
        "{}",
        r.stdout
    );
}
