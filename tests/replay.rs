//! Fidelity: replay the real recorded Azure SDK sessions in `tests/fixtures/azure/` against
//! the emulator and check that it answers the same requests with the same status codes, error
//! codes, header shapes and JSON field types (ignoring sanitized hosts, tokens and timestamps).
//!
//! What is replayed differently, and why:
//! - `/deletedsecrets` requests are skipped: the emulator does not serve soft-deleted secrets
//!   (kvfetch never reads them).
//! - List pages are followed through the emulator's own `nextLink` (skip tokens are opaque), and
//!   compared as one chain: the same items, each of the same shape. The real service also sends
//!   empty pages that still carry a `nextLink`; the emulator never does.
//! - Secrets a recording reads but never writes are seeded first with the recorded value.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use ureq::Agent;

fn fixtures() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.join("tests/fixtures/azure")
}

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

/// What came back from the emulator.
struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    content_type: Option<String>,
    body: Value,
}

struct Replayer {
    emu: Emulator,
    vault: Agent,
    plain: Agent,
    /// Recorded version ids → the emulator's, learned from answers, so later requests that name
    /// a recorded version reach the emulator's.
    versions: std::cell::RefCell<Vec<(String, String)>>,
}

impl Replayer {
    fn new() -> Replayer {
        let emu = Emulator::start().unwrap();
        let pem = std::fs::read(emu.ca_file()).unwrap();
        Replayer {
            vault: kvfetch::net::http::vault_agents(Some(&pem), 4).unwrap().1,
            plain: kvfetch::net::http::identity_agent(),
            emu,
            versions: Default::default(),
        }
    }

    /// Point a recorded URL at the emulator.
    fn local(&self, uri: &str) -> String {
        let (scheme, rest) = uri.split_once("://").unwrap();
        let path = &rest[rest.find('/').unwrap_or(rest.len())..];
        if rest.starts_with("169.254.169.254") {
            format!("{}{path}", self.emu.imds_url())
        } else if rest.starts_with("msi-endpoint") {
            let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
            format!("{}?{query}", self.emu.identity_endpoint())
        } else {
            assert_eq!(scheme, "https");
            format!("{}{path}", self.emu.vault_url())
        }
    }

    fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Option<&Value>,
    ) -> Answer {
        let agent = if url.starts_with("https") {
            &self.vault
        } else {
            &self.plain
        };
        let mut req = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let req = req.body(payload).unwrap();
        let mut resp = agent.run(req).unwrap();
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (www_authenticate, content_type) = (header("www-authenticate"), header("content-type"));
        let text = resp.body_mut().read_to_string().unwrap();
        Answer {
            status: resp.status().as_u16(),
            www_authenticate,
            content_type,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// Replay one recorded request: same method, headers (a real token where the recording had
    /// one) and body.
    fn replay(&self, entry: &Value) -> Answer {
        let mut url = self.local(entry["RequestUri"].as_str().unwrap());
        for (recorded, ours) in self.versions.borrow().iter() {
            url = url.replace(recorded.as_str(), ours);
        }
        let mut headers = Vec::new();
        for (k, v) in entry["RequestHeaders"].as_object().unwrap() {
            let v = v.as_str().map(String::from).unwrap_or_else(|| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            match k.to_ascii_lowercase().as_str() {
                "authorization" => headers.push((
                    k.clone(),
                    format!("Bearer {}", self.emu.issue_token("https://vault.azure.net")),
                )),
                "host" | "content-length" | "accept-encoding" | "connection" => {}
                _ => headers.push((k.clone(), v)),
            }
        }
        let body = entry["RequestBody"]
            .as_object()
            .map(|_| &entry["RequestBody"]);
        let answer = self.send(
            entry["RequestMethod"].as_str().unwrap(),
            &url,
            &headers,
            body,
        );
        let version = |v: &Value| {
            v["id"]
                .as_str()
                .and_then(|id| id.split("/secrets/").nth(1))
                .and_then(|p| p.split('/').nth(1))
                .map(String::from)
        };
        if let (Some(recorded), Some(ours)) =
            (version(&entry["ResponseBody"]), version(&answer.body))
        {
            self.versions.borrow_mut().push((recorded, ours));
        }
        answer
    }
}

/// Same JSON shape: every field of `recorded` is in `ours` with the same type (recursively).
fn same_shape(recorded: &Value, ours: &Value, at: &str) -> Result<(), String> {
    match (recorded, ours) {
        (Value::Null, _) => Ok(()),
        (Value::Object(r), Value::Object(o)) => {
            for (k, v) in r {
                let mine = o.get(k).ok_or(format!("{at}.{k} is missing"))?;
                same_shape(v, mine, &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(r), Value::Array(o)) => match (r.first(), o.first()) {
            (Some(a), Some(b)) => same_shape(a, b, &format!("{at}[0]")),
            _ => Ok(()),
        },
        (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Number(_), Value::Number(_)) => Ok(()),
        _ => Err(format!("{at}: recorded {recorded}, emulator {ours}")),
    }
}

fn challenge_shape(h: &str) -> bool {
    h.starts_with("Bearer authorization=\"https://login.windows.net/")
        && h.contains("\", resource=\"https://")
}

fn check(entry: &Value, answer: &Answer, file: &str) {
    let uri = entry["RequestUri"].as_str().unwrap();
    let what = format!("{file}: {} {uri}", entry["RequestMethod"]);
    assert_eq!(
        answer.status as u64,
        entry["StatusCode"].as_u64().unwrap(),
        "{what}: {}",
        answer.body
    );
    let recorded = &entry["ResponseBody"];
    same_shape(recorded, &answer.body, "body").unwrap_or_else(|e| panic!("{what}: {e}"));
    for code in ["/error/code", "/error/innererror/code", "/error"] {
        if let Some(Value::String(c)) = recorded.pointer(code) {
            assert_eq!(answer.body.pointer(code), Some(&json!(c)), "{what}: {code}");
        }
    }
    let headers = entry["ResponseHeaders"].as_object().unwrap();
    for (k, v) in headers {
        match k.to_ascii_lowercase().as_str() {
            "www-authenticate" => {
                assert!(
                    challenge_shape(v.as_str().unwrap()),
                    "recorded challenge shape"
                );
                assert!(
                    challenge_shape(answer.www_authenticate.as_deref().unwrap_or("")),
                    "{what}: challenge {:?}",
                    answer.www_authenticate
                );
            }
            "content-type" if v.as_str().unwrap().starts_with("application/json") => {
                assert!(
                    answer
                        .content_type
                        .as_deref()
                        .unwrap_or("")
                        .starts_with("application/json"),
                    "{what}"
                );
            }
            _ => {}
        }
    }
}

fn is_page(entry: &Value) -> bool {
    let uri = entry["RequestUri"].as_str().unwrap();
    entry["RequestMethod"] == "GET" && (uri.contains("/secrets?") || uri.contains("/versions?"))
}

/// Seed what a recording reads but never writes, and the identities it selects.
fn seed(r: &Replayer, entries: &[Value]) {
    let mut written = HashSet::new();
    for e in entries {
        let uri = e["RequestUri"].as_str().unwrap();
        let name = uri
            .split("/secrets/")
            .nth(1)
            .map(|s| s.split(['/', '?']).next().unwrap().to_string());
        if e["RequestMethod"] == "PUT" {
            written.extend(name.clone());
        }
        if let (Some(name), Some(value)) = (name, e["ResponseBody"]["value"].as_str())
            && e["RequestMethod"] == "GET"
            && !written.contains(&name)
        {
            let tags = e["ResponseBody"]["tags"]
                .as_object()
                .map(|t| {
                    t.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            r.emu.set_secret_with(
                &name,
                SecretInput {
                    value: value.into(),
                    tags,
                    ..Default::default()
                },
            );
            written.insert(name);
        }
        if let Some(q) = uri.split("client_id=").nth(1) {
            let client_id = q.split('&').next().unwrap().to_string();
            r.emu.add_user_identity(Identity {
                client_id,
                object_id: "o".into(),
                resource_id: "r".into(),
            });
        }
    }
}

fn replay_recording(file: &str) -> usize {
    let r = Replayer::new();
    let entries = load(file)["Entries"].as_array().unwrap().clone();
    seed(&r, &entries);
    let mut checked = 0;
    let mut i = 0;
    while i < entries.len() {
        let e = &entries[i];
        if e["RequestUri"]
            .as_str()
            .unwrap()
            .contains("/deletedsecrets")
        {
            i += 1;
            continue;
        }
        if is_page(e) {
            let chain: Vec<&Value> = entries[i..].iter().take_while(|e| is_page(e)).collect();
            replay_pages(&r, &chain, file);
            i += chain.len();
            checked += chain.len();
            continue;
        }
        check(e, &r.replay(e), file);
        checked += 1;
        i += 1;
    }
    checked
}

fn replay_pages(r: &Replayer, chain: &[&Value], file: &str) {
    let recorded: Vec<&Value> = chain
        .iter()
        .flat_map(|e| e["ResponseBody"]["value"].as_array().unwrap())
        .collect();
    let mut answer = r.replay(chain[0]);
    assert_eq!(answer.status, 200, "{file}: first page");
    same_shape(&chain[0]["ResponseBody"], &answer.body, "page").unwrap();
    let mut ours = Vec::new();
    loop {
        assert_eq!(answer.status, 200, "{file}: list page");
        ours.extend(answer.body["value"].as_array().unwrap().iter().cloned());
        match answer.body["nextLink"].as_str() {
            Some(next) => {
                answer = r.send(
                    "GET",
                    next,
                    &[(
                        "Authorization".into(),
                        format!("Bearer {}", r.emu.issue_token("https://vault.azure.net")),
                    )],
                    None,
                )
            }
            None => break,
        }
    }
    assert_eq!(
        ours.len(),
        recorded.len(),
        "{file}: items across the page chain"
    );
    for (a, b) in recorded.iter().zip(&ours) {
        same_shape(a, b, "item").unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

#[test]
fn dotnet_imds_sessions_replay() {
    assert_eq!(replay_recording("net-imds-system-assigned.json"), 3);
    assert_eq!(replay_recording("net-imds-user-assigned.json"), 3);
}

#[test]
fn python_imds_sessions_replay() {
    assert_eq!(replay_recording("py-imds-system-assigned.json"), 2);
    assert_eq!(replay_recording("py-imds-user-assigned.json"), 2);
}

#[test]
fn go_key_vault_sessions_replay() {
    assert_eq!(replay_recording("go-kv-crud.json"), 5);
    assert_eq!(replay_recording("go-kv-list-secrets.json"), 16);
    assert_eq!(replay_recording("go-kv-list-secret-versions.json"), 9);
}

#[test]
fn js_key_vault_error_sessions_replay() {
    assert_eq!(replay_recording("js-kv-disabled-secret.json"), 3);
    assert_eq!(replay_recording("js-kv-secret-not-found.json"), 2);
}

#[test]
fn python_app_service_session_replays() {
    // vcrpy YAML: read the one request and the response body string.
    let text =
        std::fs::read_to_string(fixtures().join("py-appservice-system-assigned.yaml")).unwrap();
    let uri = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("uri: "))
        .unwrap();
    let start = text.find("string: '").unwrap() + "string: '".len();
    let end = start + text[start..].find("'\n").unwrap();
    let body: Value = serde_json::from_str(
        &text[start..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    )
    .unwrap();
    let r = Replayer::new();
    let headers = vec![(
        "X-IDENTITY-HEADER".to_string(),
        r.emu.identity_header().to_string(),
    )];
    let answer = r.send("GET", &r.local(uri), &headers, None);
    assert_eq!(answer.status, 200);
    // The recording's expires_on is a date string and the emulator's an epoch string: both strings.
    same_shape(&body, &answer.body, "body").unwrap();
    assert!(answer.body.get("expires_in").is_none());
    assert_eq!(r.emu.counters().app_service_token_requests, 1);
}

#[test]
fn imds_spec_examples_replay() {
    let r = Replayer::new();
    for file in [
        "spec-imds-GetIdentityToken-2023-07-01.json",
        "spec-imds-getIdentityToken-2018-02-01.json",
    ] {
        let ex = load(file);
        let p = &ex["parameters"];
        let url = format!(
            "{}/metadata/identity/oauth2/token?api-version={}&resource={}",
            r.emu.imds_url(),
            p["api-version"].as_str().unwrap(),
            kvfetch::base::encoding::percent_encode(p["resource"].as_str().unwrap())
        );
        let meta = vec![("Metadata".to_string(), "true".to_string())];
        for (status, response) in ex["responses"].as_object().unwrap() {
            let answer = match status.as_str() {
                "200" => r.send("GET", &url, &meta, None),
                "400" => r.send("GET", &url, &[], None),
                "405" => r.send("POST", &url, &meta, None),
                other => {
                    r.emu.push_imds_fault(Fault::Status(other.parse().unwrap()));
                    r.send("GET", &url, &meta, None)
                }
            };
            assert_eq!(answer.status.to_string(), *status, "{file}");
            same_shape(&response["body"], &answer.body, "body")
                .unwrap_or_else(|e| panic!("{file} {status}: {e}"));
            if status == "200" {
                for (k, v) in response["body"].as_object().unwrap() {
                    assert!(
                        v.is_string() && answer.body[k].is_string(),
                        "{file}: {k} is a string in both"
                    );
                }
            }
        }
    }
}

#[test]
fn key_vault_spec_examples_replay() {
    let r = Replayer::new();
    let get = load("spec-kv-GetSecret-7.5.json");
    let name = get["parameters"]["secret-name"].as_str().unwrap();
    let value = get["responses"]["200"]["body"]["value"].as_str().unwrap();
    let content_type = Some("plainText".to_string());
    let version = r.emu.set_secret_with(
        name,
        SecretInput {
            value: value.into(),
            content_type: content_type.clone(),
            ..Default::default()
        },
    );
    r.emu.set_secret_with(
        "another",
        SecretInput {
            value: "x".into(),
            content_type: content_type.clone(),
            ..Default::default()
        },
    );
    let auth = vec![(
        "Authorization".to_string(),
        format!("Bearer {}", r.emu.issue_token("https://vault.azure.net")),
    )];
    let api = get["parameters"]["api-version"].as_str().unwrap();
    let answer = r.send(
        "GET",
        &format!(
            "{}/secrets/{name}/{version}?api-version={api}",
            r.emu.vault_url()
        ),
        &auth,
        None,
    );
    assert_eq!(answer.status, 200);
    same_shape(&get["responses"]["200"]["body"], &answer.body, "GetSecret").unwrap();
    for (file, path) in [
        ("spec-kv-GetSecrets-7.5.json", "/secrets".to_string()),
        (
            "spec-kv-GetSecretVersions-7.5.json",
            format!("/secrets/{name}/versions"),
        ),
    ] {
        let ex = load(file);
        if file.contains("Versions") {
            r.emu.set_secret_with(
                name,
                SecretInput {
                    value: "rotated".into(),
                    content_type: content_type.clone(),
                    ..Default::default()
                },
            );
        }
        let url = format!(
            "{}{path}?api-version={api}&maxresults={}",
            r.emu.vault_url(),
            ex["parameters"]["maxresults"]
        );
        let answer = r.send("GET", &url, &auth, None);
        assert_eq!(answer.status, 200);
        same_shape(&ex["responses"]["200"]["body"], &answer.body, file).unwrap();
        assert!(
            answer.body["nextLink"]
                .as_str()
                .unwrap()
                .starts_with(&r.emu.vault_url()),
            "absolute nextLink"
        );
    }
}

#[test]
fn every_fixture_is_replayed() {
    let covered = [
        "go-kv-crud.json",
        "go-kv-list-secret-versions.json",
        "go-kv-list-secrets.json",
        "js-kv-disabled-secret.json",
        "js-kv-secret-not-found.json",
        "net-imds-system-assigned.json",
        "net-imds-user-assigned.json",
        "py-appservice-system-assigned.yaml",
        "py-imds-system-assigned.json",
        "py-imds-user-assigned.json",
        "spec-imds-GetIdentityToken-2023-07-01.json",
        "spec-imds-getIdentityToken-2018-02-01.json",
        "spec-kv-GetSecret-7.5.json",
        "spec-kv-GetSecretVersions-7.5.json",
        "spec-kv-GetSecrets-7.5.json",
    ];
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "SOURCES.md" || covered.contains(&name.as_str()),
            "{name} is not replayed"
        );
    }
    let _ = Duration::ZERO;
}
