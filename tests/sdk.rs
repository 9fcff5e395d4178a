//! The official Azure SDK for Python (azure-identity 1.27, azure-keyvault-secrets 4.12) as a
//! client of the emulator: it fetches a secret through every identity source and lists a paged
//! vault. Where the SDK and kvfetch disagree about the emulator, the SDK is right until a
//! recording says otherwise, so this is how the emulator's fidelity is kept honest.
//!
//! The SDK runs in the test virtualenv (`scripts/install-test-deps`; a missing one fails the
//! test with that advice). Each Python process gets a cleared environment: the source's
//! variables, `AZURE_POD_IDENTITY_AUTHORITY_HOST` and `AZURE_AUTHORITY_HOST` at the emulator
//! (a wrong fallback lands on its counters), and a proxy on a closed loopback port for every
//! host but loopback, so nothing it might try elsewhere leaves the machine.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kvfetch_emulator::{Config, Counters, Emulator, Identity};

const VALUE: &str = "sdk-secret-value-7f3a";
const NAME: &str = "db-password";
/// The SDK's own retries are slow when something is wrong; a working run takes seconds.
const LIMIT: Duration = Duration::from_secs(120);

fn python() -> PathBuf {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-deps/venv/bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import azure.identity, azure.keyvault.secrets"])
        .env_clear()
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the Azure SDK for Python is missing from {}: run scripts/install-test-deps (as .ci/run does)",
        py.display()
    );
    py
}

fn script() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk/fetch.py")
        .display()
        .to_string()
}

/// The base environment of every SDK process: loopback only.
fn base_env(emu: &Emulator, home: &std::path::Path) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
    env.insert("HOME".into(), home.display().to_string());
    env.insert("AZURE_POD_IDENTITY_AUTHORITY_HOST".into(), emu.imds_url());
    env.insert("AZURE_AUTHORITY_HOST".into(), emu.authority_url_https());
    for proxy in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        env.insert(proxy.into(), "http://127.0.0.1:9".into());
    }
    for no in ["NO_PROXY", "no_proxy"] {
        env.insert(no.into(), "127.0.0.1,localhost".into());
    }
    env
}

/// Run `cmd` to its end, killing it after [`LIMIT`]; (success, stderr).
fn finish(mut cmd: Command) -> (bool, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let _ = child.wait();
    (status.is_some_and(|s| s.success()), stderr)
}

fn sdk_command(args: &[String], env: &HashMap<String, String>) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(script()).args(args).env_clear().envs(env);
    cmd
}

fn args(emu: &Emulator, out: &std::path::Path, rest: &[&str]) -> Vec<String> {
    let mut v = vec![
        emu.vault_url(),
        emu.ca_file().display().to_string(),
        out.display().to_string(),
    ];
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

/// The JSON the script wrote, or a panic naming its stderr.
fn result(ok: bool, stderr: &str, out: &std::path::Path) -> serde_json::Value {
    assert!(ok, "the SDK failed: {stderr}");
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

/// Fetch [`NAME`] with the SDK in `env` (over `base_env`); returns the emulator's counters.
fn fetch_with(emu: &Emulator, extra: &[(&str, String)]) -> Counters {
    emu.set_secret(NAME, VALUE);
    let s = Scratch::new();
    let mut env = base_env(emu, &s.0);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let out = s.path("out.json");
    let (ok, stderr) = finish(sdk_command(&args(emu, &out, &["get", NAME]), &env));
    let got = result(ok, &stderr, &out);
    assert_eq!(got["value"], VALUE);
    let c = emu.counters();
    assert!(c.kv_requests.get(NAME).copied().unwrap_or(0) >= 2, "{c:?}");
    assert_eq!(c.kv_unauthenticated, 1, "one challenge: {c:?}");
    c
}

/// The token requests of every source but `except`, all of which must be 0.
fn others(c: &Counters, except: &str) -> Vec<(&'static str, u64)> {
    [
        ("imds", c.imds_token_requests),
        ("app_service", c.app_service_token_requests),
        ("entra", c.entra_token_requests),
        ("legacy", c.legacy_msi_token_requests),
        ("cloud_shell", c.cloud_shell_token_requests),
        ("arc", c.arc_token_requests),
        ("service_fabric", c.service_fabric_token_requests),
    ]
    .into_iter()
    .filter(|(k, n)| *k != except && *n != 0)
    .collect()
}

#[test]
fn sdk_fetches_through_imds() {
    let emu = Emulator::start().unwrap();
    let c = fetch_with(&emu, &[]);
    assert_eq!(c.imds_token_requests, 1);
    assert_eq!(others(&c, "imds"), []);
}

#[test]
fn sdk_fetches_through_app_service() {
    let emu = Emulator::start().unwrap();
    let c = fetch_with(
        &emu,
        &[
            ("IDENTITY_ENDPOINT", emu.identity_endpoint()),
            ("IDENTITY_HEADER", emu.identity_header().to_string()),
        ],
    );
    assert_eq!(c.app_service_token_requests, 1);
    assert_eq!(others(&c, "app_service"), []);
}

#[test]
fn sdk_fetches_through_the_legacy_msi_endpoint() {
    let emu = Emulator::start().unwrap();
    let c = fetch_with(
        &emu,
        &[
            ("MSI_ENDPOINT", emu.msi_endpoint()),
            ("MSI_SECRET", emu.msi_secret().to_string()),
        ],
    );
    assert_eq!(c.legacy_msi_token_requests, 1);
    assert_eq!(others(&c, "legacy"), []);
}

/// The legacy endpoint selects a user-assigned identity by `clientid` (the SDK renames its
/// `client_id`), and refuses an `object_id` it cannot honour instead of answering with the
/// system identity.
#[test]
fn sdk_legacy_msi_selects_by_client_id_and_refuses_object_id() {
    let emu = Emulator::start().unwrap();
    let id = Identity::user("legacy-user");
    emu.add_user_identity(id.clone());
    let legacy = [
        ("MSI_ENDPOINT", emu.msi_endpoint()),
        ("MSI_SECRET", emu.msi_secret().to_string()),
    ];
    let mut with_client = legacy.to_vec();
    with_client.push(("SDK_TEST_CLIENT_ID", id.client_id.clone()));
    let c = fetch_with(&emu, &with_client);
    assert_eq!(c.legacy_msi_token_requests, 1);
    assert_eq!(
        c.issued_to.as_slice(),
        std::slice::from_ref(&id.object_id),
        "the user-assigned identity"
    );

    emu.reset_counters();
    let s = Scratch::new();
    let mut env = base_env(&emu, &s.0);
    env.extend(legacy.iter().map(|(k, v)| (k.to_string(), v.clone())));
    env.insert("SDK_TEST_OBJECT_ID".into(), id.object_id.clone());
    let out = s.path("out.json");
    let (ok, stderr) = finish(sdk_command(&args(&emu, &out, &["get", NAME]), &env));
    assert!(!ok && !out.exists(), "{stderr}");
    assert!(stderr.contains("clientid only"), "{stderr}");
    let c = emu.counters();
    assert_eq!(c.legacy_msi_token_requests, 1, "{c:?}");
    assert_eq!(
        c.kv_requests.get(NAME),
        Some(&1),
        "the challenge only: {c:?}"
    );
}

#[test]
fn sdk_fetches_through_cloud_shell() {
    let emu = Emulator::start().unwrap();
    let c = fetch_with(&emu, &[("MSI_ENDPOINT", emu.cloud_shell_endpoint())]);
    assert_eq!(c.cloud_shell_token_requests, 1);
    assert_eq!(others(&c, "cloud_shell"), []);
}

#[test]
fn sdk_fetches_through_service_fabric() {
    let emu = Emulator::start().unwrap();
    let c = fetch_with(
        &emu,
        &[
            ("IDENTITY_ENDPOINT", emu.service_fabric_endpoint()),
            ("IDENTITY_HEADER", emu.identity_header().to_string()),
            (
                "IDENTITY_SERVER_THUMBPRINT",
                emu.service_fabric_thumbprint(),
            ),
        ],
    );
    assert_eq!(c.service_fabric_token_requests, 1);
    assert_eq!(others(&c, "service_fabric"), []);
}

const ASSERTION: &str =
    "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJhcGk6Ly9BenVyZUFEVG9rZW5FeGNoYW5nZSJ9.c2ln";
const CLIENT_ID: &str = "5e29463d-71da-4fe0-8e69-999b57db23b0";

/// The workload identity variables, with the projected token written to `s`.
fn workload_env(emu: &Emulator, s: &Scratch) -> Vec<(&'static str, String)> {
    let file = s.path("azure-identity-token");
    std::fs::write(&file, ASSERTION).unwrap();
    emu.federate(CLIENT_ID, ASSERTION);
    vec![
        ("AZURE_TENANT_ID", emu.tenant_id()),
        ("AZURE_CLIENT_ID", CLIENT_ID.to_string()),
        ("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()),
    ]
}

#[test]
fn sdk_fetches_through_workload_identity() {
    let emu = Emulator::start().unwrap();
    let s = Scratch::new();
    let c = fetch_with(&emu, &workload_env(&emu, &s));
    assert_eq!(c.entra_token_requests, 1);
    assert_eq!(c.entra_assertions, [ASSERTION]);
    assert_eq!(others(&c, "entra"), []);
}

/// MSAL (under @azure/identity too) reads the authority's OIDC discovery document before it
/// asks for a token: the HTTPS authority serves it.
#[test]
fn msal_discovers_the_https_authority() {
    let emu = Emulator::start().unwrap();
    let s = Scratch::new();
    let mut env = base_env(&emu, &s.0);
    env.extend(
        workload_env(&emu, &s)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    );
    let out = s.path("out.json");
    let (ok, stderr) = finish(sdk_command(&args(&emu, &out, &["msal"]), &env));
    let got = result(ok, &stderr, &out);
    assert_eq!(got["token"], true, "{got}");
    let c = emu.counters();
    assert_eq!(
        (c.entra_discovery_requests, c.entra_token_requests),
        (1, 1),
        "{c:?}"
    );
    assert_eq!(others(&c, "entra"), []);
}

#[test]
fn sdk_fetches_through_arc() {
    if !root_or_skip("the Arc token directory is mounted in a private mount namespace (root)") {
        return;
    }
    let emu = Emulator::with_config(Config {
        arc_realm_dir: Some("/var/opt/azcmagent/tokens".into()),
        ..Default::default()
    })
    .unwrap();
    emu.set_secret(NAME, VALUE);
    let s = Scratch::new();
    let mut env = base_env(&emu, &s.0);
    env.insert("IDENTITY_ENDPOINT".into(), emu.arc_endpoint());
    env.insert("IMDS_ENDPOINT".into(), emu.arc_imds_endpoint());
    let out = s.path("out.json");
    let quoted: Vec<String> = std::iter::once(python().display().to_string())
        .chain(std::iter::once(script()))
        .chain(args(&emu, &out, &["get", NAME]))
        .map(|a| format!("'{a}'"))
        .collect();
    let script = format!(
        "mount -t tmpfs tmpfs /var/opt && mkdir -p /var/opt/azcmagent/tokens && mount --bind {keys} /var/opt/azcmagent/tokens && exec {cmd}",
        keys = emu.arc_key_dir().display(),
        cmd = quoted.join(" ")
    );
    let (ok, stderr) = finish(in_private_mounts(&script, &env));
    let got = result(ok, &stderr, &out);
    assert_eq!(got["value"], VALUE);
    let c = emu.counters();
    assert_eq!(c.arc_token_requests, 2, "a challenge, then the key: {c:?}");
    assert_eq!(others(&c, "arc"), []);
}

#[test]
fn sdk_lists_a_paged_vault() {
    let emu = Emulator::start().unwrap();
    emu.set_list_paging(Some(2), true);
    let mut names: Vec<String> = (0..7).map(|i| format!("secret-{i}")).collect();
    for n in &names {
        emu.set_secret(n, "v");
    }
    let s = Scratch::new();
    let env = base_env(&emu, &s.0);
    let out = s.path("out.json");
    let (ok, stderr) = finish(sdk_command(&args(&emu, &out, &["list"]), &env));
    let got = result(ok, &stderr, &out);
    let mut listed: Vec<String> = got["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    names.sort();
    assert_eq!(listed, names);
    let c = emu.counters();
    // The challenge, then four pages of at most two with an empty page (that still has a
    // nextLink) between each, as the service sends them.
    assert_eq!((c.kv_list_requests, c.kv_unauthenticated), (8, 1), "{c:?}");
    assert_eq!(c.imds_token_requests, 1);
}

/// Attributes set through the control API reach the SDK's `SecretProperties` with the types
/// the service gives them.
#[test]
fn sdk_reads_attributes_set_through_the_control_api() {
    let emu = Emulator::start().unwrap();
    emu.set_secret(NAME, VALUE);
    let body = r#"{"managed":true,"tags":{"team":"a"},"exp":4102444800,"nbf":1700000000,"contentType":"text/plain"}"#;
    let r = kvfetch::net::http::identity_agent()
        .patch(format!("{}/secrets/{NAME}", emu.control_url()))
        .send(body)
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let s = Scratch::new();
    let env = base_env(&emu, &s.0);
    let out = s.path("out.json");
    let (ok, stderr) = finish(sdk_command(&args(&emu, &out, &["props", NAME]), &env));
    let got = result(ok, &stderr, &out);
    assert_eq!(
        got,
        serde_json::json!({
            "managed": true,
            "tags": {"team": "a"},
            "content_type": "text/plain",
            "expires_on": 4_102_444_800u64,
            "not_before": 1_700_000_000u64,
        })
    );
}
