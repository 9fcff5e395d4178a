//! `kvfetch doctor`: what fetch would do, checked one by one against the emulator, with nothing
//! written and no value or token shown; its exit code is the one fetch would give.

mod common;

use common::*;
use kvfetch_emulator::{Config, VaultCert};

const A: &str = "Dr1-alpha-value";
const B: &str = "Dr2-beta-value";

fn seeded() -> Emulator {
    let emu = Emulator::start().unwrap();
    emu.set_secret("alpha", A);
    emu.set_secret_with(
        "beta",
        SecretInput {
            value: B.into(),
            content_type: Some("application/x-pem-file".into()),
            ..Default::default()
        },
    );
    emu
}

/// The report's line for `check` whose text contains `about`.
fn line<'a>(stdout: &'a str, check: &str, about: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(check) && l.contains(about))
        .unwrap_or_else(|| panic!("no {check} line about {about:?}:\n{stdout}"))
}

#[test]
fn all_well_shows_each_check_and_writes_nothing() {
    let emu = seeded();
    let s = Scratch::new();
    let dir = s.path("out");
    let r = run(
        &emu,
        &[
            "doctor",
            "--secret",
            "alpha",
            "--secret",
            "beta",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let out = &r.stdout;
    assert!(line(out, "output", "--dir").starts_with("ok "), "{out}");
    let id = line(out, "identity", "IMDS at");
    assert!(
        id.contains("chosen_by=AZURE_POD_IDENTITY_AUTHORITY_HOST"),
        "{id}"
    );
    assert!(
        id.contains("identity=\"the system-assigned identity\""),
        "{id}"
    );
    let who = emu.system_identity().unwrap();
    let token = line(out, "token", "for https://vault.azure.net");
    for field in [
        format!("oid={}", who.object_id),
        format!("appid={}", who.client_id),
        "aud=https://vault.azure.net".to_string(),
        "tid=".into(),
        "expires=".into(),
    ] {
        assert!(token.contains(&field), "{field}: {token}");
    }
    let vault = line(out, "vault", &emu.vault_url());
    assert!(
        vault.contains("trusted certificate") && vault.contains("an IP address, connects"),
        "{out}"
    );
    let beta = line(out, "secret", "beta: readable");
    assert!(
        beta.contains("content_type=application/x-pem-file"),
        "{beta}"
    );
    assert!(
        line(out, "secret", "alpha: readable").contains("version="),
        "{out}"
    );
    assert_eq!(
        out.lines().last(),
        Some("all checks passed: kvfetch fetch would succeed")
    );
    assert!(!dir.exists(), "the doctor writes nothing");
    assert_no_leak(&r, &[A, B]);
    let c = emu.counters();
    assert_eq!(c.imds_token_requests, 1);
    assert_eq!(c.kv_requests["alpha"] + c.kv_requests["beta"], 2);
}

#[test]
fn each_failure_is_shown_with_its_fix_and_the_exit_code_is_fetchs() {
    let emu = seeded();
    emu.deny("alpha", true);
    let s = Scratch::new();
    let dir = s.path("out");
    let args = [
        "--secret",
        "alpha",
        "--secret",
        "Dr3-missing",
        "--secret",
        "beta",
        "--dir",
        dir.to_str().unwrap(),
    ];
    let doctor = run(&emu, &[&["doctor"][..], &args].concat());
    let fetch = run(&emu, &[&["fetch"][..], &args].concat());
    assert_eq!(doctor.code, 4, "{}", doctor.stdout);
    assert_eq!(doctor.code, fetch.code, "the code fetch gives");
    let out = &doctor.stdout;
    let denied = line(out, "secret", "alpha");
    assert!(
        denied.starts_with("FAIL") && denied.contains("az role assignment create"),
        "{denied}"
    );
    let missing = line(out, "secret", "Dr3-missing");
    assert!(
        missing.starts_with("FAIL") && missing.contains("not found"),
        "{missing}"
    );
    assert!(
        line(out, "secret", "beta").starts_with("ok "),
        "every secret is checked: {out}"
    );
    assert!(
        out.ends_with("2 problems: kvfetch fetch would exit 4\n"),
        "{out}"
    );
    assert_no_leak(&doctor, &[A, B]);
    // The doctor says what is true now: no retries while a role assignment propagates.
    emu.reset_counters();
    run(&emu, &[&["doctor"][..], &args].concat());
    assert_eq!(emu.counters().kv_requests["alpha"], 1);
}

#[test]
fn a_missing_identity_stops_before_the_secrets() {
    let emu = seeded();
    emu.set_system_identity(false);
    let s = Scratch::new();
    let r = run(
        &emu,
        &[
            "doctor",
            "--secret",
            "alpha",
            "--dir",
            s.path("out").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 3, "{}", r.stdout);
    assert!(
        line(&r.stdout, "token", "no managed identity").starts_with("FAIL"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains(" secret "),
        "no secret is asked for without a token"
    );
    assert_eq!(emu.counters().kv_requests.get("alpha"), None);
}

#[test]
fn an_untrusted_certificate_and_a_bad_output_are_both_reported() {
    let emu = Emulator::with_config(Config {
        vault_cert: VaultCert::WrongName,
        ..Default::default()
    })
    .unwrap();
    emu.set_secret("alpha", A);
    let s = Scratch::new();
    std::fs::write(s.path("a-file"), "x").unwrap();
    let r = run(
        &emu,
        &[
            "doctor",
            "--secret",
            "alpha",
            "--dir",
            s.path("a-file").to_str().unwrap(),
        ],
    );
    assert_eq!(
        r.code, 6,
        "the output comes first, as in fetch: {}",
        r.stdout
    );
    assert!(
        line(&r.stdout, "output", "is a file").starts_with("FAIL"),
        "{}",
        r.stdout
    );
    // The probe explains (a warning); the exit code is what the secret check gives, as in fetch.
    let vault = line(&r.stdout, "vault", "not trusted");
    assert!(
        vault.starts_with("warn") && vault.contains("--ca-file"),
        "{vault}"
    );
    assert!(
        line(&r.stdout, "secret", "alpha").starts_with("FAIL"),
        "{}",
        r.stdout
    );
}

#[test]
fn json_gives_one_object_per_check() {
    let emu = seeded();
    let s = Scratch::new();
    let r = run(
        &emu,
        &[
            "doctor",
            "--log-format",
            "json",
            "--secret",
            "alpha",
            "--secret",
            "Dr4-missing",
            "--dir",
            s.path("out").to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 5, "{}", r.stdout);
    let objects: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    let find = |check: &str, status: &str| {
        objects
            .iter()
            .find(|o| o["check"] == check && o["status"] == status)
            .unwrap_or_else(|| panic!("no {check} {status}: {}", r.stdout))
    };
    assert_eq!(
        find("token", "ok")["oid"],
        emu.system_identity().unwrap().object_id
    );
    assert_eq!(find("secret", "fail")["exit_code"], serde_json::json!(5));
    assert_eq!(find("result", "fail")["exit_code"], serde_json::json!(5));
    assert!(find("secret", "ok")["version"].is_string());
    assert_no_leak(&r, &[A]);
}

#[test]
fn no_secret_or_no_output_is_what_fetch_refuses() {
    let emu = seeded();
    let s = Scratch::new();
    let dir = s.path("out");
    for args in [
        vec!["doctor", "--dir", dir.to_str().unwrap()],
        vec!["doctor", "--secret", "alpha"],
    ] {
        let r = run(&emu, &args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stdout);
        assert!(r.stdout.contains("FAIL"), "{args:?}: {}", r.stdout);
    }
}

#[test]
fn a_closed_stdout_is_not_a_crash() {
    let emu = seeded();
    let s = Scratch::new();
    let dir = s.path("out").display().to_string();
    for args in [
        vec!["doctor", "--secret", "alpha", "--dir", &dir],
        vec!["completions", "bash"],
        vec!["help", "fetch"],
    ] {
        // A pipe whose reader is already gone: every write fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(bin())
            .args(&args)
            .env_clear()
            .envs(env_for(&emu))
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
