//! Every identity source end to end against the emulator (issue "Identity everywhere"): AKS
//! workload identity, legacy App Service, Cloud Shell, Azure Arc, Service Fabric; each refusal
//! by name; and never a fall back to IMDS (the emulator's IMDS stays configured in every test,
//! so a wrong fall back would show on its counter).

mod common;

use std::collections::HashMap;

use common::*;
use kvfetch_emulator::Config;

const VALUE: &str = "Id1-secret-value";

fn seeded() -> Emulator {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", VALUE);
    emu
}

fn fetch_with(env: &HashMap<String, String>, s: &Scratch) -> Run {
    let dir = s.path("out").display().to_string();
    run_with(env, &["fetch", "--secret", "db-password", "--dir", &dir])
}

/// The environment of a pod with workload identity, the token file holding `assertion`.
fn workload_env(
    emu: &Emulator,
    s: &Scratch,
    client: &str,
    assertion: &str,
) -> HashMap<String, String> {
    let file = s.path("azure-identity-token");
    std::fs::write(&file, assertion).unwrap();
    let mut env = env_for(emu);
    env.insert(
        "AZURE_FEDERATED_TOKEN_FILE".into(),
        file.display().to_string(),
    );
    env.insert("AZURE_CLIENT_ID".into(), client.into());
    env.insert("AZURE_TENANT_ID".into(), emu.tenant_id());
    env.insert("AZURE_AUTHORITY_HOST".into(), emu.authority_url());
    env
}

#[test]
fn workload_identity_exchanges_the_token_file_and_never_asks_imds() {
    let emu = seeded();
    let client = "5e0d2a41-wi01-4c3b-9d7e-000000000001";
    emu.federate(client, "Wi1-assertion-one");
    let s = Scratch::new();
    let r = fetch_with(&workload_env(&emu, &s, client, "Wi1-assertion-one\n"), &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(read(&s.path("out/db-password")), VALUE);
    let c = emu.counters();
    assert_eq!((c.entra_token_requests, c.imds_token_requests), (1, 0));
    assert_eq!(
        c.entra_assertions,
        ["Wi1-assertion-one"],
        "the file's token, trimmed"
    );
    assert!(
        r.stderr
            .contains("identity source source=\"AKS workload identity (Entra ID)\""),
        "said once at info level: {}",
        r.stderr
    );
    assert_no_leak(&r, &[VALUE, "Wi1-assertion-one"]);
}

#[test]
fn workload_identity_rereads_the_rotated_file_in_watch() {
    let emu = seeded();
    emu.set_token_lifetime(std::time::Duration::from_secs(2)); // renewed after about 1 s
    let client = "5e0d2a41-wi02-4c3b-9d7e-000000000002";
    emu.federate(client, "Wi2-first");
    let s = Scratch::new();
    let env = workload_env(&emu, &s, client, "Wi2-first");
    let dir = s.path("out").display().to_string();
    let w = Background::start(
        &env,
        &[
            "watch",
            "--secret",
            "db-password",
            "--dir",
            &dir,
            "--refresh",
            "200ms",
        ],
    );
    w.wait("the first write", ms(5000), || {
        s.path("out/db-password").exists()
    });
    // The kubelet rotates the projected token; the federation accepts the new one only.
    std::fs::write(s.path("azure-identity-token"), "Wi2-second").unwrap();
    emu.federate(client, "Wi2-second");
    w.wait("an exchange with the rotated token", ms(8000), || {
        emu.counters()
            .entra_assertions
            .iter()
            .any(|a| a == "Wi2-second")
    });
    let before = emu.counters().kv_total_requests;
    w.wait("refreshes going on", ms(5000), || {
        emu.counters().kv_total_requests > before + 2
    });
    assert_eq!(emu.counters().imds_token_requests, 0);
    let mut w = w;
    let log = w.stop_and_stderr();
    assert!(
        !log.contains("Wi2-"),
        "the token file's contents are never logged"
    );
}

#[test]
fn workload_identity_refusals_name_the_fix_and_never_fall_back() {
    let emu = seeded();
    let client = "5e0d2a41-wi03-4c3b-9d7e-000000000003";
    emu.federate(client, "Wi3-good");
    emu.expire_assertion("Wi3-expired");
    let s = Scratch::new();
    let base = workload_env(&emu, &s, client, "Wi3-good");
    let cases: Vec<(&str, HashMap<String, String>, i32, &str)> = vec![
        (
            "no tenant",
            {
                let mut e = base.clone();
                e.remove("AZURE_TENANT_ID");
                e
            },
            2,
            "AZURE_TENANT_ID is not set",
        ),
        (
            "no client",
            {
                let mut e = base.clone();
                e.remove("AZURE_CLIENT_ID");
                e
            },
            2,
            "AZURE_CLIENT_ID is not set",
        ),
        (
            "http authority",
            {
                let mut e = base.clone();
                e.insert(
                    "AZURE_AUTHORITY_HOST".into(),
                    "http://login.example.test".into(),
                );
                e
            },
            2,
            "must be https",
        ),
        (
            "missing file",
            {
                let mut e = base.clone();
                e.insert(
                    "AZURE_FEDERATED_TOKEN_FILE".into(),
                    s.path("nope").display().to_string(),
                );
                e
            },
            3,
            "cannot read the federated token",
        ),
        (
            "unknown client",
            {
                let mut e = base.clone();
                e.insert(
                    "AZURE_CLIENT_ID".into(),
                    "5e0d2a41-0000-4c3b-9d7e-00000000dead".into(),
                );
                e
            },
            3,
            "no app or identity with client id 5e0d2a41-0000-4c3b-9d7e-00000000dead",
        ),
        (
            "unknown tenant",
            {
                let mut e = base.clone();
                e.insert(
                    "AZURE_TENANT_ID".into(),
                    "00000000-0000-0000-0000-00000000beef".into(),
                );
                e
            },
            3,
            "the tenant does not exist: check AZURE_TENANT_ID",
        ),
    ];
    for (what, env, code, says) in cases {
        emu.reset_counters();
        let r = fetch_with(&env, &s);
        assert_eq!(r.code, code, "{what}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{what}: {}", r.stderr);
        assert_eq!(
            emu.counters().imds_token_requests,
            0,
            "{what}: no fall back to IMDS"
        );
        assert_eq!(emu.counters().kv_total_requests, 0, "{what}");
    }
    // A token the federation does not match, and an expired one: each says what to do.
    for (assertion, says) in [
        ("Wi3-stranger", "az identity federated-credential create"),
        ("Wi3-expired", "has expired"),
    ] {
        std::fs::write(s.path("azure-identity-token"), assertion).unwrap();
        emu.reset_counters();
        let r = fetch_with(&base, &s);
        assert_eq!(r.code, 3, "{assertion}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{assertion}: {}", r.stderr);
        assert_eq!(
            emu.counters().entra_token_requests,
            1,
            "{assertion}: not retried"
        );
        assert_no_leak(&r, &[assertion]);
    }
}

#[test]
fn legacy_app_service_and_cloud_shell() {
    let emu = seeded();
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("MSI_ENDPOINT".into(), emu.msi_endpoint());
    env.insert("MSI_SECRET".into(), emu.msi_secret().into());
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(emu.counters().legacy_msi_token_requests, 1);
    // A stale secret: named, never shown.
    env.insert("MSI_SECRET".into(), "Id2-stale-secret".into());
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("rejected MSI_SECRET"), "{}", r.stderr);
    assert_no_leak(&r, &["Id2-stale-secret"]);
    // MSI_ENDPOINT alone is Cloud Shell: a form POST.
    let mut env = env_for(&emu);
    env.insert("MSI_ENDPOINT".into(), emu.cloud_shell_endpoint());
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c = emu.counters();
    assert_eq!(
        (c.cloud_shell_token_requests, c.imds_token_requests),
        (1, 0)
    );
}

/// The environment of a Service Fabric application pointed at the emulator's endpoint.
fn service_fabric_env(emu: &Emulator) -> std::collections::HashMap<String, String> {
    let mut env = env_for(emu);
    env.insert("IDENTITY_ENDPOINT".into(), emu.service_fabric_endpoint());
    env.insert("IDENTITY_HEADER".into(), emu.identity_header().into());
    env.insert(
        "IDENTITY_SERVER_THUMBPRINT".into(),
        emu.service_fabric_thumbprint(),
    );
    env
}

#[test]
fn service_fabric_trusts_its_endpoint_by_thumbprint_only() {
    let emu = seeded();
    let s = Scratch::new();
    let mut env = service_fabric_env(&emu);
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(emu.counters().service_fabric_token_requests, 1);
    // Another thumbprint: the handshake fails, nothing is asked, exit 3 at once.
    env.insert("IDENTITY_SERVER_THUMBPRINT".into(), "00".repeat(20));
    emu.reset_counters();
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("thumbprint"), "{}", r.stderr);
    let c = emu.counters();
    assert_eq!(
        (c.service_fabric_token_requests, c.imds_token_requests),
        (0, 0)
    );
}

#[test]
fn service_fabric_answers_over_the_size_limit_are_refused_at_once_as_too_large() {
    // The pinned client reads its answers itself: its size cap is a refusal that names the
    // size (exit 3 within seconds, one request), never a wait until --timeout that says
    // "timed out".
    let emu = seeded();
    let s = Scratch::new();
    let mut env = service_fabric_env(&emu);
    env.insert("KVFETCH_TIMEOUT".into(), "30s".into());
    emu.push_service_fabric_fault(Fault::HugeBody(3 << 20));
    let started = std::time::Instant::now();
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("larger than"), "{}", r.stderr);
    assert!(!r.stderr.contains("timed out"), "{}", r.stderr);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(emu.counters().service_fabric_token_requests, 1);
}

#[test]
fn a_service_fabric_answer_is_used_when_whole_even_if_the_connection_stays_open() {
    // The pinned client asks for `Connection: close` but does not count on it: an answer whose
    // Content-Length has arrived is whole, and is used at once (not at --timeout).
    let emu = seeded();
    let s = Scratch::new();
    let mut env = service_fabric_env(&emu);
    env.insert("KVFETCH_TIMEOUT".into(), "40s".into());
    emu.push_service_fabric_fault(Fault::AnswerThenHold);
    let started = std::time::Instant::now();
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the answer was waited on past its end: {:?}",
        started.elapsed()
    );
    assert_eq!(emu.counters().service_fabric_token_requests, 1);
}

#[test]
fn arc_refuses_a_challenge_outside_its_token_directory() {
    let emu = seeded();
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("IDENTITY_ENDPOINT".into(), emu.arc_endpoint());
    env.insert("IMDS_ENDPOINT".into(), emu.arc_imds_endpoint());
    for realm in [
        "/etc/shadow",
        "/var/opt/azcmagent/tokens/../../../etc/passwd",
    ] {
        emu.set_arc_realm(Some(realm.into()));
        emu.reset_counters();
        let r = fetch_with(&env, &s);
        assert_eq!(r.code, 3, "{realm}: {}", r.stderr);
        assert!(r.stderr.contains("refuses"), "{realm}: {}", r.stderr);
        assert_eq!(
            emu.counters().arc_token_requests,
            1,
            "{realm}: no second request"
        );
    }
}

/// An Arc emulator whose challenges name the agent's real token directory, and `fetch` of
/// `db-password` run against it in a mount namespace of its own, where that directory is the
/// emulator's key directory (a tmpfs over /var/opt, so nothing is left on the host). None
/// (after a SKIPPED line) when not root.
fn arc_fetch(arrange: impl FnOnce(&Emulator)) -> Option<(Emulator, Scratch, std::process::Output)> {
    if !root_or_skip("the Arc token directory is mounted in a private mount namespace (root)") {
        return None;
    }
    let emu = Emulator::with_config(Config {
        arc_realm_dir: Some("/var/opt/azcmagent/tokens".into()),
        ..Default::default()
    })
    .unwrap();
    emu.set_secret("db-password", VALUE);
    arrange(&emu);
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("IDENTITY_ENDPOINT".into(), emu.arc_endpoint());
    env.insert("IMDS_ENDPOINT".into(), emu.arc_imds_endpoint());
    env.insert("KVFETCH_BIN_UNDER_TEST".into(), bin());
    env.insert("KVFETCH_TIMEOUT".into(), "3s".into());
    let script = format!(
        "mount -t tmpfs tmpfs /var/opt && mkdir -p /var/opt/azcmagent/tokens && mount --bind {keys} /var/opt/azcmagent/tokens && \
         exec \"$KVFETCH_BIN_UNDER_TEST\" fetch --secret db-password --dir {dir}",
        keys = emu.arc_key_dir().display(),
        dir = s.path("out").display()
    );
    let out = in_private_mounts(&script, &env).output().unwrap();
    Some((emu, s, out))
}

#[test]
fn arc_reads_the_key_its_challenge_names() {
    let Some((emu, s, out)) = arc_fetch(|_| {}) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(read(&s.path("out/db-password")), VALUE);
    let c = emu.counters();
    assert_eq!(
        (c.arc_token_requests, c.imds_token_requests),
        (2, 0),
        "challenge, then the key"
    );
}

#[test]
fn arc_that_rejects_the_key_of_its_own_challenge_is_asked_twice_then_named() {
    let Some((emu, s, out)) = arc_fetch(|emu| emu.set_arc_rejects_keys(true)) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("rejected the key"), "{stderr}");
    assert!(stderr.contains("azcmagent show"), "{stderr}");
    assert!(!s.path("out/db-password").exists());
    let c = emu.counters();
    assert_eq!(
        (c.arc_token_requests, c.imds_token_requests),
        (2, 0),
        "the challenge, then the key once: a second 401 is not answered with another key"
    );
}

/// An Arc answer other than 401 after the key (here 400, no identity) is judged like IMDS's,
/// never taken for a rejected key.
#[test]
fn arc_without_an_identity_says_so_after_one_key() {
    let Some((emu, _s, out)) = arc_fetch(|emu| emu.set_system_identity(false)) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(!stderr.contains("rejected the key"), "{stderr}");
    assert!(stderr.contains("Identity not found"), "{stderr}");
    assert_eq!(emu.counters().arc_token_requests, 2);
}

#[test]
fn incomplete_variables_and_pins() {
    let emu = seeded();
    let s = Scratch::new();
    for (var, value) in [
        ("IDENTITY_ENDPOINT", emu.identity_endpoint()),
        ("IDENTITY_HEADER", "h".to_string()),
        ("IMDS_ENDPOINT", emu.arc_imds_endpoint()),
    ] {
        let mut env = env_for(&emu);
        env.insert(var.into(), value);
        emu.reset_counters();
        let r = fetch_with(&env, &s);
        assert_eq!(r.code, 2, "{var}: {}", r.stderr);
        assert!(
            r.stderr.contains(&format!("{var} set")),
            "{var}: {}",
            r.stderr
        );
        assert_eq!(emu.counters().imds_token_requests, 0, "{var}: never IMDS");
    }
    // --identity-source imds pins IMDS although workload variables are set.
    let mut env = workload_env(&emu, &s, "c", "x");
    env.remove("AZURE_CLIENT_ID"); // else IMDS is asked for that user-assigned identity
    env.insert("KVFETCH_IDENTITY_SOURCE".into(), "imds".into());
    emu.reset_counters();
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c = emu.counters();
    assert_eq!((c.imds_token_requests, c.entra_token_requests), (1, 0));
    let r = run(
        &emu,
        &[
            "fetch",
            "--identity-source",
            "kerberos",
            "--secret",
            "a",
            "--dir",
            "x",
        ],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("workload"), "{}", r.stderr);
}

// Fidelity with the SDKs on the wire.

#[test]
fn the_identity_endpoint_is_retried_until_the_timeout() {
    let emu = seeded();
    for _ in 0..1000 {
        emu.push_imds_fault(Fault::Status(500));
    }
    let mut env = env_for(&emu);
    env.insert("KVFETCH_BACKOFF_BASE".into(), "1s".into());
    env.insert("KVFETCH_TIMEOUT".into(), "3s".into());
    let s = Scratch::new();
    let t = std::time::Instant::now();
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    // Backoff of 1 s then 2 s would overshoot at 1 s; the last try comes just before 3 s.
    assert!(t.elapsed() >= ms(2600), "gave up at {:?}", t.elapsed());
    assert!(t.elapsed() < ms(4500), "{:?}", t.elapsed());
    assert!(
        emu.counters().imds_token_requests >= 3,
        "{:?}",
        emu.counters()
    );
}

#[test]
fn retry_after_is_honoured_in_every_form_on_both_endpoints() {
    let emu = seeded();
    let s = Scratch::new();
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, std::time::Duration);
    let cases: Vec<Case> = vec![
        (
            "IMDS 429 Retry-After: 2",
            Box::new(|| emu.push_imds_fault(Fault::StatusRetryAfter(429, 2))),
            ms(1900),
        ),
        (
            "vault 503 Retry-After: 2",
            Box::new(|| emu.push_kv_fault(Fault::StatusRetryAfter(503, 2))),
            ms(1900),
        ),
        (
            "vault 503 retry-after-ms: 1500",
            Box::new(|| {
                emu.push_kv_fault(Fault::Header {
                    status: 503,
                    name: "retry-after-ms".into(),
                    value: "1500".into(),
                })
            }),
            ms(1400),
        ),
        (
            "vault 429 x-ms-retry-after-ms: 1200",
            Box::new(|| {
                emu.push_kv_fault(Fault::Header {
                    status: 429,
                    name: "x-ms-retry-after-ms".into(),
                    value: "1200".into(),
                })
            }),
            ms(1100),
        ),
    ];
    let mut env = env_for(&emu);
    env.insert("KVFETCH_BACKOFF_BASE".into(), "10ms".into());
    for (what, fault, at_least) in cases {
        fault();
        let t = std::time::Instant::now();
        let r = fetch_with(&env, &s);
        assert_eq!(r.code, 0, "{what}: {}", r.stderr);
        assert!(
            t.elapsed() >= at_least,
            "{what}: waited only {:?}",
            t.elapsed()
        );
        assert!(
            t.elapsed() < at_least + ms(2000),
            "{what}: {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn each_vault_request_carries_a_fresh_client_request_id_shown_at_v_on_failure() {
    let emu = seeded();
    emu.push_kv_fault(Fault::Status(503));
    emu.push_kv_fault(Fault::Status(503));
    let s = Scratch::new();
    let dir = s.path("out").display().to_string();
    let r = run(
        &emu,
        &["fetch", "-v", "--secret", "db-password", "--dir", &dir],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let ids: Vec<&str> = r
        .stderr
        .lines()
        .filter_map(|l| l.split("request_id=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default())
        .collect();
    assert_eq!(ids.len(), 2, "{}", r.stderr);
    assert_ne!(ids[0], ids[1], "a fresh id per request");
    for id in ids {
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert_eq!(&id[14..15], "4", "version 4: {id}");
    }
}

// Found by the review of the identity sources.

/// A one-connection-at-a-time HTTP server on loopback answering every request with what
/// `answer` makes of the request's head; returns its base URL.
fn hostile_endpoint(answer: impl Fn(&str) -> (u16, String) + Send + 'static) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().take(50) {
            let Ok(mut conn) = conn else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let (status, body) = answer(&String::from_utf8_lossy(&head));
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn a_credential_an_endpoint_echoes_back_never_reaches_a_message() {
    let header = "Id9-header/with+slash=";
    for status in [400u16, 500] {
        let url = hostile_endpoint(move |head| {
            let sent = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("x-identity-header: ")
                        .or_else(|| l.strip_prefix("X-IDENTITY-HEADER: "))
                })
                .unwrap_or("?")
                .to_string();
            // JSON-escaped as a server may write it: "\/" for "/".
            let escaped = sent.replace('/', "\\/");
            (
                status,
                format!(r#"{{"statusCode":{status},"message":"you sent {escaped}"}}"#),
            )
        });
        let emu = seeded();
        let mut env = env_for(&emu);
        env.insert("IDENTITY_ENDPOINT".into(), format!("{url}/msi/token"));
        env.insert("IDENTITY_HEADER".into(), header.into());
        env.insert("KVFETCH_TIMEOUT".into(), "1s".into());
        let s = Scratch::new();
        let dir = s.path("out").display().to_string();
        let r = run_with(
            &env,
            &["fetch", "-v", "--secret", "db-password", "--dir", &dir],
        );
        assert_eq!(r.code, 3, "{status}: {}", r.stderr);
        assert!(
            r.stderr.contains("you sent <redacted>"),
            "{status}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("Id9-header"), "{status}: {}", r.stderr);
    }
}

#[test]
fn a_fifo_as_the_token_file_is_refused_at_once() {
    let emu = seeded();
    let client = "5e0d2a41-wi04-4c3b-9d7e-000000000004";
    emu.federate(client, "x");
    let s = Scratch::new();
    let mut env = workload_env(&emu, &s, client, "x");
    let fifo = s.path("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    env.insert(
        "AZURE_FEDERATED_TOKEN_FILE".into(),
        fifo.display().to_string(),
    );
    let t = std::time::Instant::now();
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    assert!(t.elapsed() < ms(5000), "{:?}", t.elapsed());
}

#[test]
fn bad_header_values_and_remote_arc_endpoints_are_refused_before_any_request() {
    let emu = seeded();
    let s = Scratch::new();
    let cases: Vec<(&[(&str, &str)], &str)> = vec![
        (
            &[("IDENTITY_HEADER", "Id8\r\nX-Injected: yes")],
            "IDENTITY_HEADER holds characters",
        ),
        (&[("MSI_SECRET", "s")], "MSI_SECRET set"),
        (
            &[("IMDS_ENDPOINT", "http://10.1.2.3")],
            "not on this machine",
        ),
    ];
    for (vars, says) in cases {
        let mut env = env_for(&emu);
        match vars[0].0 {
            "IDENTITY_HEADER" => {
                env.insert("IDENTITY_ENDPOINT".into(), emu.identity_endpoint());
            }
            "IMDS_ENDPOINT" => {
                env.insert(
                    "IDENTITY_ENDPOINT".into(),
                    "http://10.1.2.3:40342/metadata/identity/oauth2/token".into(),
                );
            }
            _ => {}
        }
        for (k, v) in vars {
            env.insert(k.to_string(), v.to_string());
        }
        emu.reset_counters();
        let r = fetch_with(&env, &s);
        assert_eq!(r.code, 2, "{says}: {}", r.stderr);
        assert!(r.stderr.contains(says), "{says}: {}", r.stderr);
        let c = emu.counters();
        assert_eq!(
            (c.imds_token_requests, c.app_service_token_requests),
            (0, 0),
            "{says}"
        );
    }
}

#[test]
fn an_installed_arc_agent_means_arc_even_without_variables() {
    if !root_or_skip("the Arc agent is faked in a private mount namespace (root)") {
        return;
    }
    let emu = seeded();
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_BIN_UNDER_TEST".into(), bin());
    env.insert("KVFETCH_TIMEOUT".into(), "1s".into());
    // A tmpfs over /opt holding the agent's binary: nothing is left on the host. Nothing
    // listens on the agent's port in this test, so the token cannot come; what matters is that
    // kvfetch asks the agent, not IMDS (the emulator), and says why.
    let script = format!(
        "mount -t tmpfs tmpfs /opt && mkdir -p /opt/azcmagent/bin && touch /opt/azcmagent/bin/himds && \
         exec \"$KVFETCH_BIN_UNDER_TEST\" fetch -v --secret db-password --dir {}",
        s.path("out").display()
    );
    let out = in_private_mounts(&script, &env).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("the Azure Arc agent is installed"),
        "{stderr}"
    );
    assert_eq!(emu.counters().imds_token_requests, 0, "{stderr}");
}

// Found by mutation testing of the identity sources.

#[test]
fn header_values_are_checked_only_where_they_are_sent() {
    let emu = seeded();
    let s = Scratch::new();
    // The legacy endpoint sends MSI_SECRET: a line break in it is a configuration error.
    let mut env = env_for(&emu);
    env.insert("MSI_ENDPOINT".into(), emu.msi_endpoint());
    env.insert("MSI_SECRET".into(), "Id7\r\nX: y".into());
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("MSI_SECRET holds characters"),
        "{}",
        r.stderr
    );
    assert_eq!(emu.counters().legacy_msi_token_requests, 0);
    // Workload identity sends neither: a stray IDENTITY_HEADER beside it changes nothing.
    let client = "5e0d2a41-wi05-4c3b-9d7e-000000000005";
    emu.federate(client, "Wi5-token");
    let mut env = workload_env(&emu, &s, client, "Wi5-token");
    env.insert("IDENTITY_HEADER".into(), "stray value".into());
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn unused_credential_variables_beside_imds_are_named_once() {
    let emu = seeded();
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert(
        "AZURE_TENANT_ID".into(),
        "e1d97a2c-0000-4000-8000-000000000000".into(),
    );
    env.insert("AZURE_CLIENT_SECRET".into(), "Id6-client-secret".into());
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stderr
            .matches("AZURE_TENANT_ID is set but not used")
            .count(),
        1,
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr
            .matches("AZURE_CLIENT_SECRET is set but not used")
            .count(),
        1,
        "{}",
        r.stderr
    );
    assert_no_leak(&r, &["Id6-client-secret"]);
    // Pinned to IMDS on purpose: nothing to warn about. Another source: not IMDS, no warning.
    env.insert("KVFETCH_IDENTITY_SOURCE".into(), "imds".into());
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("is set but not used"), "{}", r.stderr);
    env.remove("KVFETCH_IDENTITY_SOURCE");
    env.insert("IDENTITY_ENDPOINT".into(), emu.identity_endpoint());
    env.insert("IDENTITY_HEADER".into(), emu.identity_header().into());
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("is set but not used"), "{}", r.stderr);
}

#[test]
fn each_final_identity_answer_gets_its_own_message() {
    let emu = seeded();
    let s = Scratch::new();
    // A 200 that holds no token: the message names the identity and where it was asked.
    emu.push_imds_fault(Fault::ErrorText {
        status: 200,
        code: "odd".into(),
        message: "no token here".into(),
    });
    let r = fetch_with(&env_for(&emu), &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "the identity endpoint for the system-assigned identity via IMDS at {}/metadata/identity/oauth2/token sent an unusable token answer",
            emu.imds_url()
        )),
        "{}",
        r.stderr
    );
    // A 400 that is not "identity not found" is not reported as a missing identity.
    emu.push_imds_fault(Fault::ErrorText {
        status: 400,
        code: "bad_request_102".into(),
        message: "Required metadata header not specified".into(),
    });
    let r = fetch_with(&env_for(&emu), &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("refused a token for resource"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("no managed identity found"),
        "{}",
        r.stderr
    );
    // "Identity not found" under another status, and a 400's "… not found" without the word
    // identity, are a missing identity all the same.
    for (status, message) in [
        (403, "Identity not found"),
        (400, "Requested client id not found"),
    ] {
        emu.push_imds_fault(Fault::ErrorText {
            status,
            code: "invalid_request".into(),
            message: message.into(),
        });
        let r = fetch_with(&env_for(&emu), &s);
        assert_eq!(r.code, 3, "{}", r.stderr);
        assert!(
            r.stderr.contains(&format!(
                "no managed identity found: {}/metadata/identity/oauth2/token answered HTTP {status} \"{message}\"",
                emu.imds_url()
            )),
            "{status}: {}",
            r.stderr
        );
    }
    // Service Fabric's own codes: a rejected header is named as such.
    let mut env = env_for(&emu);
    env.insert("IDENTITY_ENDPOINT".into(), emu.service_fabric_endpoint());
    env.insert("IDENTITY_HEADER".into(), "Id5-wrong-header".into());
    env.insert(
        "IDENTITY_SERVER_THUMBPRINT".into(),
        emu.service_fabric_thumbprint(),
    );
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("rejected IDENTITY_HEADER"),
        "{}",
        r.stderr
    );
    assert_no_leak(&r, &["Id5-wrong-header"]);
    // The right header, and no identity for the application: named, and not retried as a 404.
    env.insert("IDENTITY_HEADER".into(), emu.identity_header().into());
    emu.set_system_identity(false);
    emu.reset_counters();
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "the Service Fabric endpoint {} has no managed identity for this application (HTTP 404 ManagedIdentityNotFound); assign one in the application manifest",
            emu.service_fabric_endpoint()
        )),
        "{}",
        r.stderr
    );
    assert_eq!(emu.counters().service_fabric_token_requests, 1);
}

#[test]
fn arc_key_files_are_judged_as_opened_and_only_a_plain_one_is_sent() {
    if !root_or_skip("the Arc token directory is made in a private mount namespace (root)") {
        return;
    }
    use std::sync::{Arc, Mutex};
    let realm = Arc::new(Mutex::new(String::new()));
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let s2 = sent.clone();
    let url = hostile_endpoint(move |head| {
        let auth = head.lines().find_map(|l| {
            l.strip_prefix("authorization: ")
                .or_else(|| l.strip_prefix("Authorization: "))
        });
        match auth {
            None => (401, String::new()),
            Some(a) => {
                s2.lock().unwrap().push(a.to_string());
                (
                    500,
                    r#"{"error":"server_error","error_description":"later"}"#.into(),
                )
            }
        }
    });
    // The hostile endpoint names the realm in a header the helper does not set: wrap it.
    let challenge = hostile_challenge(&url, realm.clone());
    let emu = seeded();
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert(
        "IDENTITY_ENDPOINT".into(),
        format!("{challenge}/metadata/identity/oauth2/token"),
    );
    env.insert("IMDS_ENDPOINT".into(), challenge.clone());
    env.insert("KVFETCH_TIMEOUT".into(), "1s".into());
    env.insert("KVFETCH_BIN_UNDER_TEST".into(), bin());
    let dir = "/var/opt/azcmagent/tokens";
    let make = format!(
        "mount -t tmpfs tmpfs /var/opt && mkdir -p {dir} /var/opt/azcmagent/other && cd {dir} && \
         head -c 4096 /dev/zero | tr '\\0' a > good.key && head -c 4097 /dev/zero | tr '\\0' a > big.key && \
         : > empty.key && printf 'a\\001b' > bin.key && ln -s /etc/hostname link.key && \
         echo elsewhere > /var/opt/azcmagent/other/x && ln /var/opt/azcmagent/other/x hard.key && mkfifo fifo.key"
    );
    for (file, accepted) in [
        ("good.key", true),
        ("big.key", false),
        ("empty.key", false),
        ("bin.key", false),
        ("link.key", false),
        ("hard.key", false),
        ("fifo.key", false),
    ] {
        *realm.lock().unwrap() = format!("{dir}/{file}");
        sent.lock().unwrap().clear();
        let script = format!(
            "{make} && exec \"$KVFETCH_BIN_UNDER_TEST\" fetch --secret db-password --dir {}",
            s.path("out").display()
        );
        let t = std::time::Instant::now();
        let out = in_private_mounts(&script, &env).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{file}: {stderr}");
        assert!(t.elapsed() < ms(5000), "{file}: {:?}", t.elapsed());
        let sent = sent.lock().unwrap().clone();
        if accepted {
            assert_eq!(
                sent.first().map(String::as_str),
                Some(format!("Basic {}", "a".repeat(4096)).as_str()),
                "{file}"
            );
        } else {
            assert!(sent.is_empty(), "{file}: sent {sent:?}");
            assert!(
                stderr.contains("refuses") || stderr.contains("cannot read"),
                "{file}: {stderr}"
            );
        }
        assert!(!stderr.contains("elsewhere"), "{file}: {stderr}");
    }
    assert_eq!(emu.counters().imds_token_requests, 0);
}

/// A front for `inner` that adds Arc's challenge header to every 401: `WWW-Authenticate: Basic
/// realm=<realm>`.
fn hostile_challenge(inner: &str, realm: std::sync::Arc<std::sync::Mutex<String>>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let inner = inner.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(200) {
            let Ok(mut conn) = conn else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let Ok(mut up) = std::net::TcpStream::connect(&inner) else {
                continue;
            };
            let _ = up.write_all(&head);
            let mut answer = Vec::new();
            let _ = up.read_to_end(&mut answer);
            let text = String::from_utf8_lossy(&answer).into_owned();
            let text = if text.starts_with("HTTP/1.1 401") {
                text.replacen(
                    "\r\n",
                    &format!(
                        "\r\nWWW-Authenticate: Basic realm={}\r\n",
                        realm.lock().unwrap()
                    ),
                    1,
                )
            } else {
                text
            };
            let _ = conn.write_all(text.as_bytes());
        }
    });
    url
}

#[test]
fn entra_is_retried_on_5xx_and_read_without_error_codes() {
    let emu = seeded();
    let client = "5e0d2a41-wi06-4c3b-9d7e-000000000006";
    emu.federate(client, "Wi6-token");
    let s = Scratch::new();
    let env = workload_env(&emu, &s, client, "Wi6-token");
    emu.push_entra_fault(Fault::Status(503));
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(emu.counters().entra_token_requests, 2, "the 503 is retried");
    // An answer that names its AADSTS code in the text only is still understood.
    let url = hostile_endpoint(|_| {
        (
            400,
            r#"{"error":"invalid_client","error_description":"AADSTS700024: Client assertion is not within its valid time range."}"#.into(),
        )
    });
    let mut env = env.clone();
    env.insert("AZURE_AUTHORITY_HOST".into(), url);
    let r = fetch_with(&env, &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("has expired or is not yet valid"),
        "{}",
        r.stderr
    );
    // A token file of more than 64 KiB is not a service account token.
    std::fs::write(s.path("azure-identity-token"), "a".repeat(64 * 1024 + 1)).unwrap();
    let r = fetch_with(&workload_env_keeping_file(&emu, &s, client), &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("larger than 64 KiB"), "{}", r.stderr);
    // Exactly 64 KiB is within the limit: it is sent (and Entra refuses the unknown assertion).
    std::fs::write(s.path("azure-identity-token"), "a".repeat(64 * 1024)).unwrap();
    let before = emu.counters().entra_token_requests;
    let r = fetch_with(&workload_env_keeping_file(&emu, &s, client), &s);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(!r.stderr.contains("larger than 64 KiB"), "{}", r.stderr);
    assert_eq!(emu.counters().entra_token_requests, before + 1, "sent once");
}

/// [`workload_env`] without rewriting the token file.
fn workload_env_keeping_file(emu: &Emulator, s: &Scratch, client: &str) -> HashMap<String, String> {
    let mut env = env_for(emu);
    env.insert(
        "AZURE_FEDERATED_TOKEN_FILE".into(),
        s.path("azure-identity-token").display().to_string(),
    );
    env.insert("AZURE_CLIENT_ID".into(), client.into());
    env.insert("AZURE_TENANT_ID".into(), emu.tenant_id());
    env.insert("AZURE_AUTHORITY_HOST".into(), emu.authority_url());
    env
}

#[test]
fn a_token_that_goes_stale_during_one_fetch_is_not_renewed_in_it() {
    // A 6 s token is fresh for 3 s (half its life) and accepted by the vault for 5 s or more;
    // one fetch of 20 secrets, one at a time at 200 ms each, outlasts the first but not the
    // second. The fetch asks for a token once: one request per fetch, whatever the token's times.
    let emu = Emulator::start().unwrap();
    emu.set_token_lifetime(std::time::Duration::from_secs(6));
    let mut args = vec!["fetch".to_string(), "--concurrency".into(), "1".into()];
    for i in 0..20 {
        emu.set_secret(&format!("s{i}"), "v");
        args.extend(["--secret".into(), format!("s{i}")]);
    }
    emu.set_kv_delay(ms(200));
    let s = Scratch::new();
    args.extend(["--dir".into(), s.path("out").display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = std::time::Instant::now();
    let r = run_with(&env_for(&emu), &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        t.elapsed() > ms(3500),
        "the fetch outlasted the token's freshness"
    );
    assert_eq!(emu.counters().imds_token_requests, 1, "{}", r.stderr);
}
