//! Identity sources, TLS trust for every remote, and credentials in messages (issue 25, items
//! 8, 14 and 15). See main.rs.

use std::net::TcpListener;

use crate::common::*;

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
