//! `kvfetch fetch` end to end: the real binary against the emulator over loopback.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::*;

fn seeded() -> Emulator {
    let emu = Emulator::start().unwrap();
    emu.set_secret("SampleSecret", "Hello Container Instances!");
    emu.set_secret("db-password", "p@ss w0rd\n");
    emu
}

fn dir_arg(s: &Scratch) -> String {
    s.path("out").display().to_string()
}

/// `kvfetch fetch --secret SampleSecret --dir SCRATCH/out` with `env`.
fn fetch_sample(env: &std::collections::HashMap<String, String>, s: &Scratch) -> Run {
    run_with(
        env,
        &["fetch", "--secret", "SampleSecret", "--dir", &dir_arg(s)],
    )
}

#[test]
fn writes_exact_bytes_with_final_modes_and_no_temp_files() {
    let emu = seeded();
    let s = Scratch::new();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "SampleSecret",
            "--secret",
            "DB=db-password",
            "--dir",
            &dir_arg(&s),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read(s.path("out/SampleSecret")).unwrap(),
        b"Hello Container Instances!"
    );
    assert_eq!(std::fs::read(s.path("out/DB")).unwrap(), b"p@ss w0rd\n");
    assert_eq!(mode(&s.path("out/DB")), 0o400);
    assert_eq!(mode(&s.path("out")), 0o700);
    assert_eq!(s.entries("out"), vec!["DB", "SampleSecret"]);
    assert_no_leak(&r, &["Hello Container", "p@ss"]);
}

#[test]
fn one_token_request_and_one_vault_request_per_secret_in_parallel() {
    let emu = Emulator::start().unwrap();
    let names: Vec<String> = (0..24).map(|i| format!("s{i}")).collect();
    for n in &names {
        emu.set_secret(n, &format!("value-{n}"));
    }
    emu.set_kv_delay(ms(30));
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_SECRETS".into(), names.join(","));
    let r = run_with(&env, &["fetch", "--dir", &dir_arg(&s)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c = emu.counters();
    assert_eq!(c.imds_token_requests, 1);
    assert_eq!(c.kv_total_requests, 24);
    assert!(c.kv_requests.values().all(|n| *n == 1));
    assert!(
        c.kv_max_concurrent > 1 && c.kv_max_concurrent <= 8,
        "max concurrent {}",
        c.kv_max_concurrent
    );
    assert_eq!(
        std::fs::read_to_string(s.path("out/s23")).unwrap(),
        "value-s23"
    );

    emu.reset_counters();
    let r = run_with(
        &env,
        &["fetch", "--dir", &dir_arg(&s), "--concurrency", "2"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(emu.counters().kv_max_concurrent <= 2);
}

#[test]
fn env_file_and_dir_together_and_file_mode() {
    let emu = seeded();
    let s = Scratch::new();
    let env_file = s.path("app.env").display().to_string();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "SampleSecret",
            "--dir",
            &dir_arg(&s),
            "--env-file",
            &env_file,
            "--file-mode",
            "0640",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&env_file).unwrap(),
        "SAMPLESECRET='Hello Container Instances!'\n"
    );
    assert_eq!(mode(s.path("app.env").as_path()), 0o640);
    assert_eq!(mode(&s.path("out/SampleSecret")), 0o640);
    assert_eq!(s.entries(""), vec!["app.env", "out"]);
}

#[test]
fn owner_is_applied_when_root() {
    if unsafe_geteuid() != 0 {
        return; // chown needs root; CI runs as root
    }
    let emu = seeded();
    let s = Scratch::new();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "SampleSecret",
            "--dir",
            &dir_arg(&s),
            "--owner",
            "4321:8765",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let meta = std::fs::metadata(s.path("out/SampleSecret")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4321, 8765));
    let dir = std::fs::metadata(s.path("out")).unwrap();
    assert_eq!((dir.uid(), dir.gid()), (4321, 8765));
}

fn unsafe_geteuid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
}

#[test]
fn missing_secret_changes_nothing_and_exits_5() {
    let emu = seeded();
    let s = Scratch::new();
    std::fs::create_dir(s.path("out")).unwrap();
    std::fs::write(s.path("out/SampleSecret"), "old").unwrap();
    let env_file = s.path("app.env").display().to_string();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "SampleSecret",
            "--secret",
            "nope",
            "--dir",
            &dir_arg(&s),
            "--env-file",
            &env_file,
        ],
    );
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(
        r.stderr.contains("secret nope in vault https://127.0.0.1"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(s.path("out/SampleSecret")).unwrap(),
        "old"
    );
    assert_eq!(s.entries("out"), vec!["SampleSecret"]);
    assert_eq!(s.entries(""), vec!["out"]);
}

#[test]
fn disabled_secret_exits_5() {
    let emu = seeded();
    emu.set_enabled("db-password", false);
    let s = Scratch::new();
    let r = run(
        &emu,
        &["fetch", "--secret", "db-password", "--dir", &dir_arg(&s)],
    );
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("disabled"), "{}", r.stderr);
    assert!(s.entries("out").is_empty());
}

#[test]
fn an_access_policy_vault_gets_the_set_policy_fix() {
    let emu = seeded();
    emu.set_access_policies(true);
    emu.deny("db-password", true);
    let s = Scratch::new();
    let r = run(
        &emu,
        &["fetch", "--secret", "db-password", "--dir", &dir_arg(&s)],
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    let oid = emu.system_identity().unwrap().object_id;
    assert!(
        r.stderr.contains(&format!(
            "the vault uses access policies: grant get with az keyvault set-policy --name VAULT_NAME --object-id {oid} --secret-permissions get"
        )) && !r.stderr.contains("az role assignment"),
        "{}",
        r.stderr
    );
}

#[test]
fn denied_secret_exits_4_naming_identity_and_fix_after_slow_retries() {
    let emu = seeded();
    emu.deny("db-password", true);
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_ACCESS_RETRY".into(), "150ms".into());
    let r = run_with(
        &env,
        &["fetch", "--secret", "db-password", "--dir", &dir_arg(&s)],
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    let oid = emu.system_identity().unwrap().object_id;
    assert!(r.stderr.contains(&oid), "{}", r.stderr);
    // ForbiddenByRbac: the vault uses RBAC, so the fix is a role assignment, not a policy.
    assert!(
        r.stderr.contains("the vault uses Azure RBAC")
            && r.stderr.contains(&format!("az role assignment create --role 'Key Vault Secrets User' --assignee-object-id {oid} "))
            && !r.stderr.contains("set-policy"),
        "{}",
        r.stderr
    );
    assert!(
        emu.counters().kv_requests["db-password"] > 1,
        "ForbiddenByRbac gets a few slow retries"
    );
    emu.reset_counters();
    let r = run(
        &emu,
        &["fetch", "--secret", "db-password", "--dir", &dir_arg(&s)],
    );
    assert_eq!(r.code, 4);
    assert_eq!(
        emu.counters().kv_requests["db-password"],
        1,
        "no retry once --access-retry is over"
    );
}

#[test]
fn identity_not_found_fails_fast_with_exit_3() {
    let emu = seeded();
    emu.set_system_identity(false);
    let s = Scratch::new();
    let started = Instant::now();
    let r = fetch_sample(&env_for(&emu), &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("Identity not found") && r.stderr.contains("system-assigned"),
        "{}",
        r.stderr
    );
    assert!(started.elapsed() < ms(5000));
    assert_eq!(
        emu.counters().imds_token_requests,
        1,
        "400 Identity not found is not retried"
    );
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "SampleSecret",
            "--dir",
            &dir_arg(&s),
            "--client-id",
            "0000-abc",
        ],
    );
    assert_eq!(r.code, 3);
    assert!(r.stderr.contains("client id 0000-abc"), "{}", r.stderr);
}

#[test]
fn user_assigned_identity_by_each_selector() {
    let emu = seeded();
    let id = Identity::user("app");
    emu.add_user_identity(id.clone());
    let s = Scratch::new();
    for (flag, value) in [
        ("--client-id", &id.client_id),
        ("--object-id", &id.object_id),
        ("--resource-id", &id.resource_id),
    ] {
        let r = run(
            &emu,
            &[
                "fetch",
                "--secret",
                "SampleSecret",
                "--dir",
                &dir_arg(&s),
                flag,
                value,
            ],
        );
        assert_eq!(r.code, 0, "{flag}: {}", r.stderr);
    }
    let mut env = env_for(&emu);
    env.insert("AZURE_CLIENT_ID".into(), id.client_id.clone());
    assert_eq!(fetch_sample(&env, &s).code, 0);
    let r = run_with(
        &env,
        &[
            "fetch",
            "--secret",
            "SampleSecret",
            "--dir",
            &dir_arg(&s),
            "--object-id",
            "x",
        ],
    );
    assert_eq!(r.code, 2, "two selectors are a usage error");
}

#[test]
fn unreachable_identity_endpoint_exits_3_naming_it() {
    let emu = seeded();
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST".into(),
        "http://127.0.0.1:9".into(),
    );
    env.insert("KVFETCH_TIMEOUT".into(), "300ms".into());
    let r = fetch_sample(&env, &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("http://127.0.0.1:9/metadata/identity/oauth2/token")
            && r.stderr.contains("attempts"),
        "{}",
        r.stderr
    );
}

#[test]
fn imds_transient_faults_are_retried() {
    let emu = seeded();
    for f in [
        Fault::Status(404),
        Fault::Status(429),
        Fault::Status(500),
        Fault::Status(503),
        Fault::Drop,
    ] {
        emu.push_imds_fault(f);
    }
    let s = Scratch::new();
    let r = fetch_sample(&env_for(&emu), &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(emu.counters().imds_token_requests, 6);
}

#[test]
fn imds_410_is_retried_for_70_backoff_units_even_past_timeout() {
    let emu = seeded();
    for _ in 0..4 {
        emu.push_imds_fault(Fault::Status(410));
    }
    let s = Scratch::new();
    let mut env = env_for(&emu);
    // The first 410 must arrive before --timeout ends (it opens the window): 1 s leaves a loaded
    // machine room (40 ms did not). The four waits after the 410s are at least 0.8 x (200 + 400 +
    // 800 + 1600) ms = 2.4 s, well past the timeout, inside the 410 window of 70 x 200 ms = 14 s.
    env.insert("KVFETCH_TIMEOUT".into(), "1s".into());
    env.insert("KVFETCH_BACKOFF_BASE".into(), "200ms".into());
    let started = Instant::now();
    let r = fetch_sample(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(emu.counters().imds_token_requests, 5);
    assert!(
        started.elapsed() >= Duration::from_millis(2400),
        "{:?}",
        started.elapsed()
    );
}

/// The last try at the end of the 410 window gets time to be answered: IMDS is back just before
/// the window ends, and slow.
#[test]
fn imds_410_window_ends_with_a_try_that_has_time_to_be_answered() {
    let emu = seeded();
    // Window: 70 x 10 ms = 700 ms from the first 410; IMDS is back after 690 ms, 100 ms slow.
    emu.set_imds_gone(ms(690), ms(100));
    let s = Scratch::new();
    let mut env = env_for(&emu);
    // Short of the window, so the window is what keeps kvfetch asking; long enough for the first
    // 410 (which opens the window) to arrive on a loaded machine.
    env.insert("KVFETCH_TIMEOUT".into(), "400ms".into());
    let r = fetch_sample(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn identity_endpoint_that_comes_up_late_is_waited_for() {
    // An ACI group's identity endpoint may start after the container: connection refused first.
    let emu = Emulator::with_config(kvfetch_emulator::Config {
        identity_start_delay: ms(600),
        ..Default::default()
    })
    .unwrap();
    emu.set_secret("late", "worth the wait");
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_BACKOFF_BASE".into(), "50ms".into());
    let started = Instant::now();
    let r = run_with(&env, &["fetch", "--secret", "late", "--dir", &dir_arg(&s)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(started.elapsed() >= ms(500));
    assert_eq!(
        std::fs::read_to_string(s.path("out/late")).unwrap(),
        "worth the wait"
    );
    assert_eq!(
        emu.counters().imds_token_requests,
        1,
        "refused connections never reached it"
    );
}

#[test]
fn key_vault_throttling_and_failures_are_retried() {
    let emu = seeded();
    emu.push_kv_fault(Fault::StatusRetryAfter(429, 1));
    emu.push_kv_fault(Fault::Status(429));
    emu.push_kv_fault(Fault::Status(500));
    emu.push_kv_fault(Fault::Status(503));
    emu.push_kv_fault(Fault::Drop);
    let s = Scratch::new();
    let started = Instant::now();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "SampleSecret",
            "--dir",
            &dir_arg(&s),
            "--concurrency",
            "1",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(started.elapsed() >= ms(1000), "Retry-After: 1 is honoured");
    assert_eq!(emu.counters().kv_requests["samplesecret"], 6);
    assert_eq!(emu.counters().imds_token_requests, 1);
}

/// Every connection to a vault shares one TLS configuration, built once: a connection opened
/// after the first resumes its TLS session instead of verifying the certificate chain again.
/// (ureq's own connector built a configuration per connection for every request bounded by a
/// deadline, so each handshake was full and the whole root store was parsed again.)
#[test]
fn later_connections_to_a_vault_resume_the_first_tls_session() {
    let emu = seeded();
    emu.set_secret("second", "second value");
    // The first answer carries the session ticket; then each connection is dropped once.
    emu.push_kv_fault(Fault::Delay(Duration::ZERO));
    emu.push_kv_fault(Fault::Drop);
    emu.push_kv_fault(Fault::Drop);
    let s = Scratch::new();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "SampleSecret",
            "--secret",
            "second",
            "--dir",
            &dir_arg(&s),
            "--concurrency",
            "1",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c = emu.counters();
    assert_eq!(c.kv_total_requests, 4, "two answered, two dropped");
    assert_eq!(
        c.kv_connections, 3,
        "the first kept alive for the second request"
    );
    assert_eq!(
        c.kv_full_tls_handshakes, 1,
        "three connections, one full handshake, two resumed"
    );
}

/// A "vault" that accepts the connection and never says a word of TLS: the handshake is bounded
/// by the run's deadline like every other step (kvfetch's own TLS connector hands it what is
/// left of the connection's timeout), so the run ends with exit 7 at `--timeout`, not never.
#[test]
fn a_vault_that_never_answers_the_tls_handshake_is_given_up_at_the_deadline() {
    let emu = seeded();
    let s = Scratch::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn); // open, and silent
        }
    });
    let mut env = env_for(&emu);
    env.insert("KVFETCH_VAULT".into(), format!("https://{addr}"));
    env.insert("KVFETCH_TIMEOUT".into(), "1s".into());
    let started = Instant::now();
    // `timeout` ends a run that would hang, so the test fails instead of waiting forever.
    let o = std::process::Command::new("timeout")
        .args([
            "60",
            &bin(),
            "fetch",
            "--secret",
            "SampleSecret",
            "--dir",
            &dir_arg(&s),
        ])
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(7), "{stderr}");
    assert!(started.elapsed() < ms(20_000), "{:?}", started.elapsed());
    assert!(!s.path("out/SampleSecret").exists());
}

/// A vault that ends the connection cleanly (TLS `close_notify`) instead of answering: the end
/// of stream is seen at once and the request is sent again, not waited on until the deadline.
#[test]
fn a_vault_that_closes_cleanly_instead_of_answering_is_asked_again_at_once() {
    let emu = seeded();
    emu.push_kv_fault(Fault::CloseCleanly);
    let s = Scratch::new();
    let started = Instant::now();
    let r = run(
        &emu,
        &["fetch", "--secret", "SampleSecret", "--dir", &dir_arg(&s)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        started.elapsed() < ms(10_000),
        "the clean close was waited on: {:?}",
        started.elapsed()
    );
    assert_eq!(emu.counters().kv_requests["samplesecret"], 2);
    assert_eq!(
        read(&s.path("out/SampleSecret")),
        "Hello Container Instances!"
    );
}

/// An answer that arrives a byte at a time is read to its end: each read that brings bytes is
/// progress, even before a whole status line has come.
#[test]
fn an_answer_that_arrives_a_byte_at_a_time_is_read_whole() {
    let emu = seeded();
    emu.push_kv_fault(Fault::Drip(Duration::from_micros(200)));
    let s = Scratch::new();
    let r = run(
        &emu,
        &["fetch", "--secret", "SampleSecret", "--dir", &dir_arg(&s)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(emu.counters().kv_requests["samplesecret"], 1, "no retry");
    assert_eq!(
        read(&s.path("out/SampleSecret")),
        "Hello Container Instances!"
    );
}

#[test]
fn key_vault_that_stays_down_exits_7_at_timeout() {
    let emu = seeded();
    for _ in 0..200 {
        emu.push_kv_fault(Fault::Status(503));
    }
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_TIMEOUT".into(), "700ms".into());
    let started = Instant::now();
    let r = fetch_sample(&env, &s);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(started.elapsed() < ms(5000));
    assert!(
        r.stderr.contains("gave up on secret SampleSecret") && r.stderr.contains("503"),
        "{}",
        r.stderr
    );
    assert!(s.entries("out").is_empty());
}

#[test]
fn a_401_gets_one_retry_with_a_fresh_token() {
    let emu = seeded();
    emu.push_kv_fault(Fault::Status(401));
    let s = Scratch::new();
    let r = fetch_sample(&env_for(&emu), &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(emu.counters().imds_token_requests, 2);

    emu.reset_counters();
    emu.push_kv_fault(Fault::Status(401));
    emu.push_kv_fault(Fault::Status(401));
    let r = fetch_sample(&env_for(&emu), &s);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert_eq!(emu.counters().imds_token_requests, 2);
    assert_eq!(emu.counters().kv_requests["samplesecret"], 2);
}

#[test]
fn redirects_are_not_followed() {
    let emu = seeded();
    emu.push_kv_fault(Fault::Status(302));
    let s = Scratch::new();
    let r = fetch_sample(&env_for(&emu), &s);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("redirect") && r.stderr.contains("elsewhere.example"),
        "{}",
        r.stderr
    );
    assert_eq!(emu.counters().kv_total_requests, 1);
}

#[test]
fn foreign_hosts_and_plain_http_are_refused_before_any_request() {
    let emu = seeded();
    let s = Scratch::new();
    for vault in [
        "https://evil.example.com",
        "http://myvault.vault.azure.net",
        "https://myvault.vault.azure.net.evil.com",
    ] {
        let r = run(
            &emu,
            &[
                "fetch",
                "--vault",
                vault,
                "--secret",
                "x",
                "--dir",
                &dir_arg(&s),
            ],
        );
        assert_eq!(r.code, 2, "{vault}: {}", r.stderr);
    }
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "https://evil.example.com/secrets/x",
            "--dir",
            &dir_arg(&s),
        ],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--resource"), "{}", r.stderr);
    assert_eq!(emu.counters(), Default::default(), "no request was made");
}

#[test]
fn full_secret_identifier_names_its_own_vault() {
    let emu = seeded();
    let s = Scratch::new();
    let id = format!("{}/secrets/SampleSecret", emu.vault_url());
    let mut env = env_for(&emu);
    env.remove("KVFETCH_VAULT");
    let r = run_with(
        &env,
        &[
            "fetch",
            "--secret",
            &format!("greeting={id}"),
            "--dir",
            &dir_arg(&s),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(s.path("out/greeting")).unwrap(),
        "Hello Container Instances!"
    );
}

#[test]
fn pinned_version_is_fetched_after_rotation() {
    let emu = seeded();
    let v1 = emu.set_secret("rotating", "one");
    emu.set_secret("rotating", "two");
    let s = Scratch::new();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            &format!("old=rotating/{v1}"),
            "--secret",
            "rotating",
            "--dir",
            &dir_arg(&s),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(s.path("out/old")).unwrap(), "one");
    assert_eq!(
        std::fs::read_to_string(s.path("out/rotating")).unwrap(),
        "two"
    );
}

#[test]
fn usage_errors_exit_2() {
    let emu = seeded();
    let s = Scratch::new();
    let cases: &[&[&str]] = &[
        &["fetch", "--secret", "SampleSecret"],
        &["fetch", "--dir", "/dev/shm/x"],
        &["fetch", "--secret", "bad_name", "--dir", "/dev/shm/x"],
        &[
            "fetch",
            "--secret",
            "a",
            "--secret",
            "A=a",
            "--secret",
            "A=b",
            "--dir",
            "/dev/shm/x",
        ],
        &["fetch", "--secret", "../x=a", "--dir", "/dev/shm/x"],
        &["fetch", "--bogus"],
        &[
            "fetch",
            "--secret",
            "a",
            "--dir",
            "/dev/shm/x",
            "--timeout",
            "later",
        ],
    ];
    for args in cases {
        let r = run(&emu, args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("kvfetch: error:"), "{}", r.stderr);
    }
    assert_eq!(emu.counters(), Default::default());
    drop(s);
}

#[test]
fn output_failure_exits_6_and_writes_nothing() {
    let emu = seeded();
    let s = Scratch::new();
    let env_file = s.path("missing-dir/app.env").display().to_string();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "SampleSecret",
            "--dir",
            &dir_arg(&s),
            "--env-file",
            &env_file,
        ],
    );
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(s.entries("out").is_empty(), "all outputs or none");

    emu.set_secret("mixed", "costs ${PRICE} quoted");
    let env_file = s.path("app.env").display().to_string();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "mixed",
            "--secret",
            "SampleSecret",
            "--env-file",
            &env_file,
            "--dir",
            &dir_arg(&s),
        ],
    );
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        r.stderr.contains("MIXED") && r.stderr.contains("--env-format shell or json"),
        "{}",
        r.stderr
    );
    assert_no_leak(&r, &["quoted"]);
    assert!(s.entries("").is_empty(), "not even --dir is created");
}

#[test]
fn require_tmpfs_refuses_a_disk_directory() {
    let disk = Scratch::under(&std::env::current_dir().unwrap().join("target"));
    // Judged by the test itself (statfs), not by the code under test.
    let fs_type = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&disk.0)
        .output()
        .unwrap();
    let fs_type = String::from_utf8_lossy(&fs_type.stdout).trim().to_string();
    if fs_type == "tmpfs" || fs_type == "ramfs" {
        println!(
            "NOT RUN: the build directory is on {fs_type} here, so no disk directory to test with"
        );
        return;
    }
    let emu = seeded();
    let out = disk.path("out").display().to_string();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "SampleSecret",
            "--dir",
            &out,
            "--require-tmpfs",
        ],
    );
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(disk.entries("").is_empty());
    assert_eq!(
        emu.counters().imds_token_requests,
        0,
        "checked before any request"
    );
    let r = run(&emu, &["fetch", "--secret", "SampleSecret", "--dir", &out]);
    assert_eq!(r.code, 0);
    assert!(r.stderr.contains("not on tmpfs"), "{}", r.stderr);
    // What the README says of ACI: no writable volume there is in memory.
    assert!(
        r.stderr.contains("On ACI no writable volume is in memory"),
        "{}",
        r.stderr
    );
}

#[test]
fn app_service_identity_endpoint_is_used_when_configured() {
    let emu = seeded();
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.remove("AZURE_POD_IDENTITY_AUTHORITY_HOST");
    env.insert("IDENTITY_ENDPOINT".into(), emu.identity_endpoint());
    env.insert("IDENTITY_HEADER".into(), emu.identity_header().into());
    let r = fetch_sample(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c = emu.counters();
    assert_eq!(
        (c.app_service_token_requests, c.imds_token_requests),
        (1, 0)
    );
    env.insert("IDENTITY_HEADER".into(), "wrong".into());
    let r = fetch_sample(&env, &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
}

/// A proxy on loopback that records each request line (a CONNECT names the target) and
/// refuses it; no connection goes any further.
fn recording_proxy() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(conn);
            let mut line = String::new();
            if reader.read_line(&mut line).is_ok() {
                log.lock().unwrap().push(line.trim_end().to_string());
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
        }
    });
    (format!("http://{addr}"), seen)
}

#[test]
fn proxy_is_used_for_remote_vaults_but_never_for_imds_or_loopback_vaults() {
    let emu = seeded();
    let s = Scratch::new();
    let (proxy, seen) = recording_proxy();
    let mut env = env_for(&emu);
    env.insert("HTTPS_PROXY".into(), proxy.clone());
    env.insert("HTTP_PROXY".into(), proxy);
    env.insert("KVFETCH_TIMEOUT".into(), "500ms".into());
    // A vault on loopback (the emulator) never goes through a proxy.
    let r = fetch_sample(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    // A remote vault does: the proxy is asked for it by name (kvfetch resolves nothing itself,
    // so nothing leaves loopback) and refuses, so the vault stays unreachable.
    emu.reset_counters();
    let dir = s.path("remote").display().to_string();
    let r = run_with(
        &env,
        &[
            "fetch",
            "--vault",
            "myvault",
            "--secret",
            "SampleSecret",
            "--dir",
            &dir,
        ],
    );
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert_eq!(
        emu.counters().imds_token_requests,
        1,
        "IMDS was reached directly"
    );
    let lines = seen.lock().unwrap().clone();
    assert!(!lines.is_empty(), "the proxy was asked");
    assert!(
        lines
            .iter()
            .all(|l| l == "CONNECT myvault.vault.azure.net:443 HTTP/1.1"),
        "{lines:?}"
    );
}

#[test]
fn json_logs_and_quiet() {
    let emu = seeded();
    let s = Scratch::new();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "nope",
            "--dir",
            &dir_arg(&s),
            "--log-format",
            "json",
        ],
    );
    assert_eq!(r.code, 5);
    for line in r.stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["level"].is_string() && v["msg"].is_string());
    }
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "SampleSecret",
            "--dir",
            &dir_arg(&s),
            "-q",
        ],
    );
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
}

#[test]
fn help_shows_flags_env_vars_defaults_and_exit_codes() {
    let emu = seeded();
    let r = run(&emu, &["--help"]);
    assert_eq!(r.code, 0);
    for needle in [
        "--vault",
        "KVFETCH_VAULT",
        "[default: 0400]",
        "[default: 2m]",
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        "5  secret not found",
    ] {
        assert!(r.stdout.contains(needle), "{needle}");
    }
}

/// Up to three failures are each an error line of their own; more are one line that names the
/// first few and counts the rest, so a vault with many missing secrets stays readable.
#[test]
fn up_to_three_failures_are_named_one_a_line_and_more_are_counted() {
    let emu = seeded();
    let s = Scratch::new();
    for (missing, lines, summary) in [
        (3, 3, None),
        (4, 1, Some("[4 failures in all; also: ")),
        (6, 1, Some("; and 2 more]")),
    ] {
        let mut args = vec!["fetch".to_string(), "--dir".into(), dir_arg(&s)];
        for i in 0..missing {
            args.extend(["--secret".into(), format!("gone-{i}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = run(&emu, &args);
        assert_eq!(r.code, 5, "{}", r.stderr);
        let errors: Vec<&str> = r
            .stderr
            .lines()
            .filter(|l| l.starts_with("kvfetch: error:"))
            .collect();
        assert_eq!(errors.len(), lines, "{missing}: {}", r.stderr);
        match summary {
            Some(text) => assert!(errors[0].contains(text), "{}", errors[0]),
            None => assert!(!r.stderr.contains("failures in all"), "{}", r.stderr),
        }
        assert!(s.entries("out").is_empty());
    }
}
