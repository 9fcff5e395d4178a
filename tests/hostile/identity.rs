//! Identity sources, TLS trust for every remote, and credentials in messages (issue 25, items
//! 8, 14 and 15). See main.rs.

use std::net::TcpListener;

use crate::common::*;
use kvfetch_emulator::Config;

const VALUE: &str = "Hid-secret-value-7f3a";

fn seeded() -> Emulator {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", VALUE);
    emu
}

/// Item 15: an endpoint that would be sent `IDENTITY_HEADER` or `MSI_SECRET` at an address off
/// this machine is refused (exit 2) before any connection. Run in a network namespace of its own
/// with only `lo`, where 10.1.2.3 is put on `lo` with a listener that would see a connection:
/// nothing can leave the machine even on a build without the fix.
#[test]
fn secret_headers_are_never_sent_to_an_address_off_the_machine() {
    if rerun_isolated(
        "identity::secret_headers_are_never_sent_to_an_address_off_the_machine",
        &["-n"],
    ) {
        return;
    }
    let added = std::process::Command::new("ip")
        .args(["addr", "add", "10.1.2.3/32", "dev", "lo"])
        .status()
        .unwrap();
    assert!(added.success());
    let far = TcpListener::bind("10.1.2.3:0").unwrap();
    far.set_nonblocking(true).unwrap();
    let port = far.local_addr().unwrap().port();
    let emu = seeded();
    let thumbprint = emu.service_fabric_thumbprint();
    let cases: [(&[(&str, String)], &str); 3] = [
        (
            &[
                (
                    "IDENTITY_ENDPOINT",
                    format!("http://10.1.2.3:{port}/msi/token"),
                ),
                ("IDENTITY_HEADER", emu.identity_header().to_string()),
            ],
            "IDENTITY_HEADER",
        ),
        (
            &[
                ("MSI_ENDPOINT", format!("http://10.1.2.3:{port}/msi/token")),
                ("MSI_SECRET", emu.msi_secret().to_string()),
            ],
            "MSI_SECRET",
        ),
        (
            &[
                ("IDENTITY_ENDPOINT", format!("https://10.1.2.3:{port}/sf")),
                ("IDENTITY_HEADER", emu.identity_header().to_string()),
                ("IDENTITY_SERVER_THUMBPRINT", thumbprint.clone()),
            ],
            "IDENTITY_HEADER",
        ),
    ];
    let s = Scratch::new();
    for (vars, secret) in cases {
        let mut env = env_for(&emu);
        env.insert("KVFETCH_TIMEOUT".into(), "3s".into());
        env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
        for args in [&["fetch"][..], &["doctor"]] {
            let dir = s.path("out").display().to_string();
            let mut argv = args.to_vec();
            // An explicit audience vouches for the loopback vault: only the identity endpoint
            // can be what refuses.
            let vault = emu.vault_url();
            argv.extend(["--vault", &vault, "--resource", "https://vault.azure.net"]);
            argv.extend(["--secret", "db-password", "--dir", &dir]);
            let r = run_with(&env, &argv);
            assert_eq!(r.code, 2, "{argv:?} {vars:?}: {}{}", r.stdout, r.stderr);
            let said = format!("{}{}", r.stdout, r.stderr);
            assert!(
                said.contains(&format!("would send {secret} to it"))
                    && said.contains("must not cross a network"),
                "{said}"
            );
            assert!(
                matches!(far.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "{argv:?} {vars:?}: a connection reached 10.1.2.3"
            );
            assert!(!said.contains(emu.identity_header()) && !said.contains(emu.msi_secret()));
        }
    }
    let c = emu.counters();
    assert_eq!(
        (c.app_service_token_requests, c.legacy_msi_token_requests),
        (0, 0)
    );
    assert_eq!(
        (c.imds_token_requests, c.service_fabric_token_requests),
        (0, 0)
    );
    assert_eq!(c.kv_total_requests, 0);
}

/// Item 8: fails unless no 8 characters in a row of `credential` appear in `said`, and the echo
/// did reach the message (as `<redacted>`).
fn assert_scrubbed(said: &str, credential: &str, what: &str) {
    let chars: Vec<char> = credential.chars().collect();
    for w in chars.windows(8) {
        let part: String = w.iter().collect();
        assert!(
            !said.contains(&part),
            "{what}: {part:?} of the credential leaked: {said}"
        );
    }
    assert!(
        said.contains("<redacted>"),
        "{what}: the echo was not shown: {said}"
    );
}

/// 64 characters, none of them `x` (the emulator's filler).
fn credential(tag: &str) -> String {
    let mut c = format!("{tag}-");
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWYZ0123456789abcdefghijklmnopqrstuvwyz";
    let mut i = tag.len() * 7;
    while c.len() < 64 {
        c.push(alphabet[i % alphabet.len()] as char);
        i = (i * 5 + 3) % 997;
    }
    c
}

/// A source's name, its variables, and the credential it sends.
type EchoSource = (&'static str, Vec<(String, String)>, String);

/// The identity environments of one emulator whose credentials are all 64 characters: App
/// Service, legacy App Service, Service Fabric and workload identity, each with the credential
/// it sends.
fn echo_sources(emu: &Emulator, s: &Scratch, assertion: &str) -> Vec<EchoSource> {
    let client = "5e0d2a41-ec01-4c3b-9d7e-000000000001";
    emu.federate(client, assertion);
    let file = s.path("azure-identity-token");
    std::fs::write(&file, assertion).unwrap();
    let pairs = |v: &[(&str, String)]| v.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let header = emu.identity_header().to_string();
    vec![
        (
            "app service",
            pairs(&[
                ("IDENTITY_ENDPOINT", emu.identity_endpoint()),
                ("IDENTITY_HEADER", header.clone()),
            ]),
            header.clone(),
        ),
        (
            "legacy app service",
            pairs(&[
                ("MSI_ENDPOINT", emu.msi_endpoint()),
                ("MSI_SECRET", emu.msi_secret().to_string()),
            ]),
            emu.msi_secret().to_string(),
        ),
        (
            "service fabric",
            pairs(&[
                ("IDENTITY_ENDPOINT", emu.service_fabric_endpoint()),
                ("IDENTITY_HEADER", header.clone()),
                (
                    "IDENTITY_SERVER_THUMBPRINT",
                    emu.service_fabric_thumbprint(),
                ),
            ]),
            header,
        ),
        (
            "workload identity",
            pairs(&[
                ("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()),
                ("AZURE_CLIENT_ID", client.to_string()),
                ("AZURE_TENANT_ID", emu.tenant_id()),
                ("AZURE_AUTHORITY_HOST", emu.authority_url()),
            ]),
            assertion.to_string(),
        ),
    ]
}

/// Item 8: every identity endpoint that quotes back the credential it was sent (the header
/// secrets, the federated assertion), whole or placed across the 200-character cut of its
/// error text, for `fetch` and `doctor`: not one 8-character run of it reaches a message.
#[test]
fn echoed_credentials_are_redacted_before_any_cut() {
    let emu = Emulator::with_config(Config {
        identity_header: credential("IdH"),
        msi_secret: credential("Msi"),
        ..Default::default()
    })
    .unwrap();
    emu.set_secret("db-password", VALUE);
    let s = Scratch::new();
    let assertion = credential("Fed");
    let dir = s.path("out").display().to_string();
    for (name, vars, sent) in echo_sources(&emu, &s, &assertion) {
        let statuses: &[u16] = if name == "workload identity" {
            &[400, 503]
        } else {
            &[400]
        };
        for (&status, at) in statuses.iter().flat_map(|s| [(s, 0), (s, 171)]) {
            emu.echo_credentials(Some((status, at)));
            let mut env = env_for(&emu);
            env.insert("KVFETCH_TIMEOUT".into(), "2s".into());
            env.extend(vars.iter().cloned());
            for cmd in ["fetch", "doctor"] {
                let r = run_with(&env, &[cmd, "--secret", "db-password", "--dir", &dir]);
                let what = format!("{name} {cmd} HTTP {status} at {at}");
                assert_eq!(r.code, 3, "{what}: {}{}", r.stdout, r.stderr);
                assert_scrubbed(&format!("{}{}", r.stdout, r.stderr), &sent, &what);
            }
        }
    }
    assert!(emu.counters().entra_token_requests >= 4);
}

/// Item 8 for Azure Arc: the agent quotes back `Authorization: Basic <key>`, across the cut.
/// The key file is read in a mount namespace where the agent's token directory is the
/// emulator's (root).
#[test]
fn an_echoed_arc_key_is_redacted_before_the_cut() {
    if !root_or_skip("the Arc token directory is mounted in a private mount namespace (root)") {
        return;
    }
    let emu = Emulator::with_config(Config {
        arc_realm_dir: Some("/var/opt/azcmagent/tokens".into()),
        ..Default::default()
    })
    .unwrap();
    emu.set_secret("db-password", VALUE);
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("IDENTITY_ENDPOINT".into(), emu.arc_endpoint());
    env.insert("IMDS_ENDPOINT".into(), emu.arc_imds_endpoint());
    env.insert("KVFETCH_BIN_UNDER_TEST".into(), bin());
    env.insert("KVFETCH_TIMEOUT".into(), "3s".into());
    for (cmd, at) in [("fetch", 171), ("doctor", 171), ("fetch", 0)] {
        emu.echo_credentials(Some((400, at)));
        let script = format!(
            "mount -t tmpfs tmpfs /var/opt && mkdir -p /var/opt/azcmagent/tokens && mount --bind {keys} /var/opt/azcmagent/tokens && \
             exec \"$KVFETCH_BIN_UNDER_TEST\" {cmd} --secret db-password --dir {dir}",
            keys = emu.arc_key_dir().display(),
            dir = s.path("out").display()
        );
        let out = in_private_mounts(&script, &env).output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(3), "{cmd} at {at}: {said}");
        let key_file = std::fs::read_dir(emu.arc_key_dir())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".key"))
            .expect("the challenge wrote a key");
        let key = std::fs::read_to_string(key_file.path()).unwrap();
        assert_scrubbed(&said, &key, &format!("arc {cmd} at {at}"));
    }
}

/// Item 8 for fetched values: a vault that quotes one secret's value, across the 300-character
/// cut of its error message, in its refusal of the next secret.
#[test]
fn a_fetched_value_quoted_by_the_vault_is_redacted_before_the_cut() {
    let emu = seeded();
    let first = credential("Val");
    emu.set_secret("first", &first);
    emu.push_kv_fault(Fault::Delay(std::time::Duration::ZERO));
    emu.push_kv_fault(Fault::ErrorText {
        status: 400,
        code: "BadParameter".into(),
        message: format!("{}{first} is not valid here", "x".repeat(280)),
    });
    let s = Scratch::new();
    let dir = s.path("out").display().to_string();
    let r = run(
        &emu,
        &[
            "fetch",
            "--secret",
            "first",
            "--secret",
            "db-password",
            "--concurrency",
            "1",
            "--dir",
            &dir,
        ],
    );
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert_scrubbed(&r.stderr, &first, "vault");
}

/// Item 14: workload identity whose authority is reached over TLS that a private authority
/// vouches for (as behind a TLS-inspecting egress proxy): `--ca-file` (here
/// `KVFETCH_CA_FILE`), `SSL_CERT_FILE` or `SSL_CERT_DIR` makes the exchange succeed, for the
/// vault too; with none of them it is refused as untrusted (exit 3), nothing written.
#[test]
fn every_remote_trusts_the_ca_file_and_the_conventional_variables() {
    let emu = seeded();
    let client = "5e0d2a41-ca01-4c3b-9d7e-000000000001";
    emu.federate(client, "Tls-assertion-one");
    let s = Scratch::new();
    let file = s.path("azure-identity-token");
    std::fs::write(&file, "Tls-assertion-one").unwrap();
    let certs = s.path("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(emu.ca_file(), certs.join("emulator.pem")).unwrap();
    std::fs::write(certs.join("README"), "not a certificate").unwrap();
    let ca = emu.ca_file().display().to_string();
    let dirs = format!("/nonexistent-not-needed:{}", certs.display());
    let cases = [
        ("--ca-file", "KVFETCH_CA_FILE", ca.clone(), 0),
        ("SSL_CERT_FILE", "SSL_CERT_FILE", ca.clone(), 0),
        ("SSL_CERT_DIR", "SSL_CERT_DIR", dirs, 2),
        (
            "SSL_CERT_DIR",
            "SSL_CERT_DIR",
            certs.display().to_string(),
            0,
        ),
    ];
    for (what, var, value, code) in cases {
        let mut env = env_for(&emu);
        env.remove("KVFETCH_CA_FILE");
        env.insert(
            "AZURE_FEDERATED_TOKEN_FILE".into(),
            file.display().to_string(),
        );
        env.insert("AZURE_CLIENT_ID".into(), client.into());
        env.insert("AZURE_TENANT_ID".into(), emu.tenant_id());
        env.insert("AZURE_AUTHORITY_HOST".into(), emu.authority_url_https());
        env.insert(var.into(), value);
        let out = s.path(&format!("out-{what}-{code}"));
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
        assert_eq!(r.code, code, "{what}: {}", r.stderr);
        if code == 0 {
            assert_eq!(read(&out.join("db-password")), VALUE, "{what}");
        } else {
            assert!(r.stderr.contains("SSL_CERT_DIR="), "{what}: {}", r.stderr);
        }
        assert_no_leak(&r, &[VALUE, "Tls-assertion-one"]);
    }
    assert_eq!(emu.counters().entra_token_requests, 3);
    // Without any of them, the authority's certificate is not trusted: exit 3, one request.
    emu.reset_counters();
    let mut env = env_for(&emu);
    env.remove("KVFETCH_CA_FILE");
    env.insert(
        "AZURE_FEDERATED_TOKEN_FILE".into(),
        file.display().to_string(),
    );
    env.insert("AZURE_CLIENT_ID".into(), client.into());
    env.insert("AZURE_TENANT_ID".into(), emu.tenant_id());
    env.insert("AZURE_AUTHORITY_HOST".into(), emu.authority_url_https());
    let out = s.path("out-none");
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
    assert!(
        r.stderr.contains("UnknownIssuer") && r.stderr.contains("--ca-file (or SSL_CERT_FILE"),
        "{}",
        r.stderr
    );
    assert!(!out.join("db-password").exists());
    assert_eq!(
        emu.counters().entra_token_requests,
        0,
        "refused in the handshake"
    );
}

/// Item 14 for the last remote: `--notify-url` over HTTPS trusts `--ca-file` (here
/// `KVFETCH_CA_FILE`) like Key Vault and Entra ID.
#[test]
fn a_notify_url_over_https_trusts_the_ca_file() {
    let emu = seeded();
    let s = Scratch::new();
    let (dir, ready) = (s.path("out"), s.path("ready"));
    let url = format!("{}{}", emu.vault_url(), kvfetch_emulator::NOTIFY_PATH);
    let mut w = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--secret",
            "db-password",
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "100ms",
            "--ready-file",
            ready.to_str().unwrap(),
            "--notify-url",
            &url,
        ],
    );
    w.wait("the ready file", ms(10000), || ready.exists());
    emu.set_secret("db-password", "Hid-rotated-value-91c2");
    w.wait("the notification", ms(10000), || {
        emu.counters().notify_posts > 0
    });
    let stderr = w.stop_and_stderr();
    assert!(!stderr.contains("notification failed"), "{stderr}");
}

/// Fix group A: `kvfetch ARGS` with `env`, killed if it has not ended `within`: (its exit code,
/// None when it had to be killed; its stderr).
fn bounded(
    env: &std::collections::HashMap<String, String>,
    args: &[&str],
    within: std::time::Duration,
) -> (Option<i32>, String) {
    let mut child = Background::start(env, args);
    let code = child.exit_within(within);
    (code, child.stop_and_stderr())
}

/// A variable, its value, more flags, the exit code wanted and what the message names.
type FifoCase<'a> = (&'a str, &'a str, &'a [&'a str], Option<i32>, &'a str);

/// Fix group A, finding 4: a FIFO as `SSL_CERT_FILE`, as `--ca-file` (and `KVFETCH_CA_FILE`),
/// or inside `SSL_CERT_DIR` does not hold kvfetch up past `--timeout 3s`: the named file is
/// refused (exit 2 naming it), a FIFO among a directory's files is skipped like any file that
/// holds no certificate. Nobody ever writes to the FIFOs.
#[test]
fn a_fifo_as_a_trust_file_cannot_hang_the_start() {
    let emu = seeded();
    let s = Scratch::new();
    let dir = s.path("certs");
    std::fs::create_dir(&dir).unwrap();
    let fifo = s.path("fifo.pem");
    for f in [&fifo, &dir.join("00-fifo.pem")] {
        let made = std::process::Command::new("mkfifo")
            .arg(f)
            .status()
            .unwrap();
        assert!(made.success());
    }
    let fifo = fifo.display().to_string();
    let out = s.path("out").display().to_string();
    let fetch = [
        "fetch",
        "--secret",
        "db-password",
        "--dir",
        &out,
        "--timeout",
        "3s",
    ];
    let cases: [FifoCase; 4] = [
        ("SSL_CERT_FILE", &fifo, &[], Some(2), "SSL_CERT_FILE="),
        ("KVFETCH_CA_FILE", &fifo, &[], Some(2), "KVFETCH_CA_FILE"),
        (
            "PATH",
            "/usr/bin:/bin",
            &["--ca-file", &fifo],
            Some(2),
            "--ca-file",
        ),
        ("SSL_CERT_DIR", dir.to_str().unwrap(), &[], Some(0), ""),
    ];
    for (var, value, extra, want, named) in cases {
        let mut env = env_for(&emu);
        env.insert(var.into(), value.into());
        let mut args = fetch.to_vec();
        args.extend(extra);
        let started = std::time::Instant::now();
        let (code, stderr) = bounded(&env, &args, ms(3000 + 10_000));
        assert_eq!(code, want, "{var} {extra:?}: {stderr}");
        assert!(started.elapsed() < ms(3000 + 10_000), "{var}");
        assert!(stderr.contains(named), "{var} {extra:?}: {stderr}");
        if want == Some(2) {
            assert!(stderr.contains("not a regular file"), "{var}: {stderr}");
        }
    }
    assert_eq!(
        emu.counters().kv_total_requests,
        1,
        "only the SSL_CERT_DIR run fetched"
    );
}

/// Fix group A, finding 7: `SSL_CERT_DIR` with more than 1000 entries is refused (exit 2 naming
/// the variable and the cap) instead of reading the first 1000 and ignoring the rest silently.
#[test]
fn a_trust_directory_past_the_cap_is_refused_not_cut() {
    let emu = seeded();
    let s = Scratch::new();
    let dir = s.path("certs");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..1000 {
        std::fs::write(dir.join(format!("{i:04}.txt")), "").unwrap();
    }
    std::fs::copy(emu.ca_file(), dir.join("zz-last.pem")).unwrap();
    let mut env = env_for(&emu);
    env.insert("SSL_CERT_DIR".into(), dir.display().to_string());
    let out = s.path("out").display().to_string();
    let r = run_with(&env, &["fetch", "--secret", "db-password", "--dir", &out]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("SSL_CERT_DIR=") && r.stderr.contains("1000"),
        "{}",
        r.stderr
    );
    assert_eq!(emu.counters().kv_total_requests, 0);
    // At the cap exactly, it is read.
    std::fs::remove_file(dir.join("0000.txt")).unwrap();
    let r = run_with(&env, &["fetch", "--secret", "db-password", "--dir", &out]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// A trust directory holds at most 4 MiB of files in all: exactly that is read, a byte more is
/// refused by name (not cut), before any request.
#[test]
fn a_trust_directory_of_more_than_4_mib_is_refused_and_one_of_4_mib_is_read() {
    let emu = seeded();
    let s = Scratch::new();
    let dir = s.path("certs");
    std::fs::create_dir(&dir).unwrap();
    let ca = std::fs::read(emu.ca_file()).unwrap();
    std::fs::write(dir.join("zz-ca.pem"), &ca).unwrap();
    // Text that holds no certificate, in files under the 1 MiB a trust file may hold.
    let total = 4 << 20;
    let mut left = total - ca.len();
    for i in 0.. {
        let n = left.min(1_000_000);
        std::fs::write(dir.join(format!("junk-{i}.txt")), vec![b'x'; n]).unwrap();
        left -= n;
        if left == 0 {
            break;
        }
    }
    let mut env = env_for(&emu);
    env.remove("KVFETCH_CA_FILE"); // the directory alone vouches for the vault
    env.insert("SSL_CERT_DIR".into(), dir.display().to_string());
    let out = s.path("out").display().to_string();
    let r = run_with(&env, &["fetch", "--secret", "db-password", "--dir", &out]);
    assert_eq!(r.code, 0, "exactly 4 MiB: {}", r.stderr);
    std::fs::write(dir.join("junk-last.txt"), "x").unwrap();
    emu.reset_counters();
    let r = run_with(&env, &["fetch", "--secret", "db-password", "--dir", &out]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("SSL_CERT_DIR=") && r.stderr.contains("more than 4 MiB of files"),
        "{}",
        r.stderr
    );
    assert_eq!(emu.counters().kv_total_requests, 0);
}

/// Certificates are kept once each, however many files of a directory hold them, and every
/// different one is kept: the one that vouches for the vault may come after another.
#[test]
fn a_trust_directory_keeps_each_different_certificate() {
    let emu = seeded();
    let s = Scratch::new();
    let dir = s.path("certs");
    std::fs::create_dir(&dir).unwrap();
    let other = include_str!("../fixtures/certs/other.pem");
    std::fs::write(dir.join("a-other.pem"), other).unwrap();
    std::fs::write(dir.join("b-other-again.pem"), other).unwrap();
    std::fs::copy(emu.ca_file(), dir.join("c-ca.pem")).unwrap();
    let mut env = env_for(&emu);
    env.remove("KVFETCH_CA_FILE"); // the directory alone vouches for the vault
    env.insert("SSL_CERT_DIR".into(), dir.display().to_string());
    let out = s.path("out").display().to_string();
    let r = run_with(&env, &["fetch", "--secret", "db-password", "--dir", &out]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// Fix group A, finding 8: a trust file that is not valid PEM is refused by name in fixed words;
/// its bytes never reach the message (not as text, not as a list of decimal bytes).
#[test]
fn a_bad_pem_trust_file_is_refused_without_its_bytes() {
    let emu = seeded();
    let s = Scratch::new();
    let out = s.path("out").display().to_string();
    let files = [
        "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIALabcdef0123\n-----END CERTIFICATE-----\n",
        "-----BEGIN TOPSECRETKEYMATERIAL\nabc\n",
    ];
    for (i, text) in files.iter().enumerate() {
        let bad = s.path(&format!("bad{i}.pem"));
        std::fs::write(&bad, text).unwrap();
        let shown = bad.display().to_string();
        for (var, extra) in [
            ("SSL_CERT_FILE", &[][..]),
            ("PATH", &["--ca-file", shown.as_str()][..]),
        ] {
            let mut env = env_for(&emu);
            env.insert(var.into(), shown.clone());
            let mut args = vec!["fetch", "--secret", "db-password", "--dir", &out];
            args.extend(extra);
            let r = run_with(&env, &args);
            assert_eq!(r.code, 2, "{var}: {}", r.stderr);
            assert!(r.stderr.contains("is not valid PEM"), "{var}: {}", r.stderr);
            assert!(!r.stderr.contains("TOPSECRET"), "{var}: {}", r.stderr);
            assert!(!holds_byte_list(&r.stderr), "{var}: {}", r.stderr);
        }
    }
}

/// Whether `text` holds three numbers in a row separated by ", " (a byte list's Debug).
fn holds_byte_list(text: &str) -> bool {
    let words: Vec<&str> = text.split(", ").collect();
    words.windows(3).any(|w| {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let last = w[0]
            .rsplit(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap_or("");
        let first = w[2]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap_or("");
        digits(last) && digits(w[1]) && digits(first)
    })
}

/// Fix group A, finding 1: a vault writer cannot evict a credential from the redaction
/// registry. 120 values of 25,000 control characters (each kept raw and JSON-escaped, 6 times
/// longer) are fetched after `IDENTITY_HEADER` was registered; then, tokens living 10 s
/// (renewed at half their life), a renewal in `watch` meets an App Service endpoint that quotes the header back in its 400:
/// the warning shows `<redacted>`, never 8 characters in a row of the header.
#[test]
fn values_cannot_evict_a_credential_from_redaction() {
    let header = credential("IdV");
    let emu = Emulator::with_config(Config {
        identity_header: header.clone(),
        token_lifetime: std::time::Duration::from_secs(10),
        ..Default::default()
    })
    .unwrap();
    let names: Vec<String> = (0..120).map(|i| format!("bulk-{i:03}")).collect();
    for (i, name) in names.iter().enumerate() {
        emu.set_secret(name, &format!("{i:03}{}", "\u{1}".repeat(25_000)));
    }
    let s = Scratch::new();
    let (dir, ready) = (s.path("out"), s.path("ready"));
    let mut env = env_for(&emu);
    env.remove("AZURE_POD_IDENTITY_AUTHORITY_HOST");
    env.insert("IDENTITY_ENDPOINT".into(), emu.identity_endpoint());
    env.insert("IDENTITY_HEADER".into(), header.clone());
    env.insert("KVFETCH_SECRETS".into(), names.join(","));
    let mut w = Background::start(
        &env,
        &[
            "watch",
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "500ms",
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    w.wait("the ready file", ms(30_000), || ready.exists());
    emu.echo_credentials(Some((400, 0)));
    w.wait("a renewal that met the echo", ms(30_000), || {
        let said = w.stderr();
        said.contains("renewal failed") || said.contains("refresh failed")
    });
    let said = w.stop_and_stderr();
    assert_scrubbed(&said, &header, "watch renewal");
    assert!(emu.counters().app_service_token_requests >= 2);
}

/// Fix group A, finding 1, past the bound: more fetched values than the registry keeps (16 MiB)
/// do not make it stop redacting in silence. The value that could not be kept is then quoted
/// by the vault in its refusal of the next secret: the vault's text is withheld whole, the
/// run says once that it withholds, and reading goes on.
#[test]
fn values_past_the_redaction_bound_withhold_what_servers_say() {
    let emu = seeded();
    let n = 680;
    let big = |i: usize| {
        let fill: String = (0..25_000)
            .map(|k| (b'a' + ((k * 7 + i * 13) % 26) as u8) as char)
            .collect();
        format!("{i:03}-Big-{fill}")
    };
    let mut names: Vec<String> = (0..n).map(|i| format!("big-{i:03}")).collect();
    for (i, name) in names.iter().enumerate() {
        emu.set_secret(name, &big(i));
    }
    for _ in 0..n {
        emu.push_kv_fault(Fault::Delay(std::time::Duration::ZERO));
    }
    // The first value (the oldest kept) and the last (the one not kept), quoted.
    let (first, last) = (big(0), big(n - 1));
    emu.push_kv_fault(Fault::ErrorText {
        status: 400,
        code: "BadParameter".into(),
        message: format!("{} and {} are not valid here", &first[..60], &last[..60]),
    });
    names.push("db-password".into());
    let s = Scratch::new();
    let mut env = env_for(&emu);
    env.insert("KVFETCH_SECRETS".into(), names.join(","));
    let dir = s.path("out");
    let r = run_with(
        &env,
        &[
            "fetch",
            "--concurrency",
            "1",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert_scrubbed_or_withheld(&r.stderr, &first[..60]);
    assert_scrubbed_or_withheld(&r.stderr, &last[..60]);
    assert!(
        r.stderr.contains("or credentials than it can redact"),
        "{}",
        r.stderr
    );
    assert_eq!(
        emu.counters().kv_total_requests,
        n as u64 + 1,
        "every secret was read"
    );
}

/// No 8 characters in a row of `value` in `said`, and the vault's text was withheld.
fn assert_scrubbed_or_withheld(said: &str, value: &str) {
    let chars: Vec<char> = value.chars().collect();
    for w in chars.windows(8) {
        let part: String = w.iter().collect();
        assert!(
            !said.contains(&part),
            "{part:?} of the value leaked: {said}"
        );
    }
    assert!(said.contains("<withheld"), "{said}");
}
