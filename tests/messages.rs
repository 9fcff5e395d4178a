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
        !r.stderr.contains("--resource"),
        "no advice to vouch for a typo: {}",
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
