//! The emulator itself: every endpoint, every error and every fault, plus the control API.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use kvfetch::http::{Reply, get, identity_agent, vault_agents};
use kvfetch_emulator::{Config, VaultCert};
use serde_json::Value;

fn imds(emu: &Emulator, query: &str, headers: &[(&str, &str)]) -> Reply {
    let url = format!("{}/metadata/identity/oauth2/token?{query}", emu.imds_url());
    get(&identity_agent(), &url, headers, Duration::from_secs(5)).unwrap()
}

fn token_for(emu: &Emulator, resource: &str) -> String {
    let r = imds(
        emu,
        &format!("api-version=2018-02-01&resource={resource}"),
        &[("Metadata", "true")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    json(&r)["access_token"].as_str().unwrap().to_string()
}

fn vault(emu: &Emulator, path: &str, token: Option<&str>) -> Reply {
    let pem = std::fs::read(emu.ca_file()).unwrap();
    let agent = vault_agents(Some(&pem), 4).unwrap().1;
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("Authorization", b.as_str()))
        .collect();
    get(
        &agent,
        &format!("{}{path}", emu.vault_url()),
        &headers,
        Duration::from_secs(5),
    )
    .unwrap()
}

fn json(r: &Reply) -> Value {
    serde_json::from_str(&r.body).unwrap()
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&kvfetch::encoding::base64url_decode(payload).unwrap()).unwrap()
}

#[test]
fn imds_token_has_string_numbers_and_jwt_claims() {
    let emu = Emulator::start().unwrap();
    let r = imds(
        &emu,
        "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net",
        &[("Metadata", "true")],
    );
    assert_eq!(r.status, 200);
    let body = json(&r);
    for k in [
        "expires_in",
        "expires_on",
        "not_before",
        "ext_expires_in",
        "resource",
        "token_type",
        "refresh_token",
    ] {
        assert!(body[k].is_string(), "{k} must be a JSON string");
    }
    let c = claims(body["access_token"].as_str().unwrap());
    let id = emu.system_identity().unwrap();
    assert_eq!(c["aud"], "https://vault.azure.net");
    assert_eq!(
        (c["oid"].as_str(), c["appid"].as_str()),
        (Some(id.object_id.as_str()), Some(id.client_id.as_str()))
    );
    assert!(c["tid"].is_string() && c["iat"].is_u64());
    assert_eq!(
        c["exp"].as_u64().unwrap().to_string(),
        body["expires_on"].as_str().unwrap()
    );
    // A trailing slash on the path is accepted.
    let url = format!(
        "{}/metadata/identity/oauth2/token/?api-version=2018-02-01&resource=x",
        emu.imds_url()
    );
    assert_eq!(
        get(
            &identity_agent(),
            &url,
            &[("Metadata", "true")],
            Duration::from_secs(5)
        )
        .unwrap()
        .status,
        200
    );
}

#[test]
fn imds_request_errors() {
    let emu = Emulator::start().unwrap();
    let q = "api-version=2018-02-01&resource=https://vault.azure.net";
    let r = imds(&emu, q, &[]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (
            400,
            r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#
        )
    );
    assert_eq!(
        imds(
            &emu,
            q,
            &[("Metadata", "true"), ("X-Forwarded-For", "1.2.3.4")]
        )
        .status,
        400
    );
    assert_eq!(
        imds(&emu, &format!("{q}&resource=x"), &[("Metadata", "true")]).status,
        400
    );
    assert_eq!(
        imds(&emu, "resource=x", &[("Metadata", "true")]).status,
        400
    );
    let r = imds(
        &emu,
        &format!("{q}&client_id=nobody"),
        &[("Metadata", "true")],
    );
    assert_eq!(
        (r.status, json(&r)["error_description"].as_str()),
        (400, Some("Identity not found"))
    );
    emu.set_system_identity(false);
    assert_eq!(
        json(&imds(&emu, q, &[("Metadata", "true")]))["error_description"],
        "Identity not found"
    );
}

#[test]
fn imds_selects_user_assigned_identities() {
    let emu = Emulator::start().unwrap();
    let id = Identity::user("app");
    emu.add_user_identity(id.clone());
    for (k, v) in [
        ("client_id", &id.client_id),
        ("object_id", &id.object_id),
        ("msi_res_id", &id.resource_id),
    ] {
        let r = imds(
            &emu,
            &format!(
                "api-version=2018-02-01&resource=r&{k}={}",
                kvfetch::encoding::percent_encode(v)
            ),
            &[("Metadata", "true")],
        );
        assert_eq!(r.status, 200, "{k}");
        assert_eq!(json(&r)[k], v.as_str(), "the selector is echoed");
        assert_eq!(
            claims(json(&r)["access_token"].as_str().unwrap())["oid"],
            id.object_id.as_str()
        );
    }
    let r = imds(
        &emu,
        &format!(
            "api-version=2018-02-01&resource=r&client_id={}&object_id={}",
            id.client_id, id.object_id
        ),
        &[("Metadata", "true")],
    );
    assert_eq!(r.status, 400, "selectors are mutually exclusive");
}

#[test]
fn app_service_endpoint() {
    let emu = Emulator::start().unwrap();
    let id = Identity::user("aca");
    emu.add_user_identity(id.clone());
    let call = |query: &str, header: &str| {
        let url = format!("{}?{query}", emu.identity_endpoint());
        get(
            &identity_agent(),
            &url,
            &[("X-IDENTITY-HEADER", header)],
            Duration::from_secs(5),
        )
        .unwrap()
    };
    let r = call(
        "api-version=2019-08-01&resource=https://vault.azure.net",
        emu.identity_header(),
    );
    assert_eq!(r.status, 200);
    let body = json(&r);
    assert!(body["expires_on"].is_string() && body.get("expires_in").is_none());
    let r = call("api-version=2019-08-01&resource=x", "wrong");
    assert_eq!(r.status, 401);
    assert!(
        json(&r)["statusCode"].is_u64() && json(&r)["message"].is_string(),
        "App Service error body"
    );
    for (k, v) in [
        ("client_id", &id.client_id),
        ("principal_id", &id.object_id),
        ("mi_res_id", &id.resource_id),
    ] {
        let r = call(
            &format!(
                "api-version=2019-08-01&resource=x&{k}={}",
                kvfetch::encoding::percent_encode(v)
            ),
            emu.identity_header(),
        );
        assert_eq!(r.status, 200, "{k}");
    }
    assert_eq!(
        call(
            "api-version=2019-08-01&resource=x&client_id=nope",
            emu.identity_header()
        )
        .status,
        400
    );
    assert_eq!(emu.counters().app_service_token_requests, 6);
}

#[test]
fn vault_challenge_and_token_checks() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("s", "v");
    let r = vault(&emu, "/secrets/s?api-version=7.5", None);
    assert_eq!(r.status, 401);
    assert_eq!(
        json(&r)["error"]["message"],
        "AKV10000: Request is missing a Bearer or PoP token."
    );
    assert_eq!(emu.counters().kv_unauthenticated, 1);
    let wrong_audience = token_for(&emu, "https://management.azure.com");
    assert!(
        json(&vault(
            &emu,
            "/secrets/s?api-version=7.5",
            Some(&wrong_audience)
        ))["error"]["message"]
            .as_str()
            .unwrap()
            .contains("audience")
    );
    assert_eq!(
        vault(&emu, "/secrets/s?api-version=7.5", Some("forged.token.x")).status,
        401
    );
    emu.set_token_lifetime(Duration::ZERO);
    let expired = token_for(&emu, "https://vault.azure.net");
    let r = vault(&emu, "/secrets/s?api-version=7.5", Some(&expired));
    assert_eq!(
        (r.status, json(&r)["error"]["message"].as_str()),
        (401, Some("AKV10011: Token expired."))
    );
}

#[test]
fn www_authenticate_header_shape() {
    let emu = Emulator::start().unwrap();
    let pem = std::fs::read(emu.ca_file()).unwrap();
    let agent = vault_agents(Some(&pem), 1).unwrap().1;
    let resp = agent
        .get(format!("{}/secrets/x?api-version=7.5", emu.vault_url()))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    let h = resp
        .headers()
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap();
    let re_ok = h.starts_with("Bearer authorization=\"https://login.windows.net/")
        && h.ends_with("\", resource=\"https://vault.azure.net\"");
    assert!(re_ok, "{h}");
}

#[test]
fn vault_get_versions_and_bundle_fields() {
    let emu = Emulator::start().unwrap();
    let mut tags = std::collections::BTreeMap::new();
    tags.insert("team".to_string(), "a".to_string());
    let v1 = emu.set_secret_with(
        "db",
        SecretInput {
            value: "one".into(),
            content_type: Some("text/plain".into()),
            exp: Some(4_000_000_000),
            nbf: Some(1),
            tags,
            enabled: None,
        },
    );
    let v2 = emu.set_secret("db", "two");
    let t = token_for(&emu, "https://vault.azure.net");
    let latest = json(&vault(&emu, "/secrets/db/?api-version=7.5", Some(&t)));
    assert_eq!(latest["value"], "two");
    assert!(
        latest["id"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/secrets/db/{v2}"))
    );
    let old = json(&vault(
        &emu,
        &format!("/secrets/db/{v1}?api-version=7.5"),
        Some(&t),
    ));
    assert_eq!(
        (
            old["value"].as_str(),
            old["contentType"].as_str(),
            old["tags"]["team"].as_str()
        ),
        (Some("one"), Some("text/plain"), Some("a"))
    );
    let a = &old["attributes"];
    assert!(
        a["enabled"].is_boolean()
            && a["created"].is_u64()
            && a["updated"].is_u64()
            && a["recoverableDays"].is_u64()
    );
    assert_eq!(
        (
            a["exp"].as_u64(),
            a["nbf"].as_u64(),
            a["recoveryLevel"].as_str()
        ),
        (Some(4_000_000_000), Some(1), Some("Recoverable+Purgeable"))
    );
    assert_eq!(
        json(&vault(&emu, "/secrets/DB?api-version=7.5", Some(&t)))["value"],
        "two",
        "names are case-insensitive"
    );
}

#[test]
fn vault_errors() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("off", "v");
    emu.set_secret("denied", "v");
    emu.set_secret("gone", "v");
    emu.set_enabled("off", false);
    emu.deny("denied", true);
    emu.delete_secret("gone");
    let t = token_for(&emu, "https://vault.azure.net");
    let code = |path: &str| {
        let r = vault(&emu, path, Some(&t));
        let v = json(&r);
        (
            r.status,
            v["error"]["code"].as_str().unwrap_or_default().to_string(),
            v["error"]["innererror"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    assert_eq!(
        code("/secrets/missing?api-version=7.5"),
        (404, "SecretNotFound".into(), "".into())
    );
    assert_eq!(
        code("/secrets/gone?api-version=7.5"),
        (404, "SecretNotFound".into(), "".into())
    );
    assert_eq!(
        code("/secrets/off?api-version=7.5"),
        (403, "Forbidden".into(), "SecretDisabled".into())
    );
    assert_eq!(
        code("/secrets/denied?api-version=7.5"),
        (403, "Forbidden".into(), "ForbiddenByRbac".into())
    );
    assert_eq!(
        code("/secrets/off"),
        (400, "BadParameter".into(), "".into())
    );
    assert_eq!(
        code("/secrets/off?api-version=1.0"),
        (400, "BadParameter".into(), "".into())
    );
    assert_eq!(code("/secrets/off/0000?api-version=7.5").0, 404);
}

#[test]
fn vault_lists_page_with_absolute_next_links() {
    let emu = Emulator::start().unwrap();
    for n in ["a", "b", "c"] {
        emu.set_secret(n, "v");
    }
    emu.set_secret("a", "v2");
    let t = token_for(&emu, "https://vault.azure.net");
    let mut path = "/secrets?api-version=7.5&maxresults=2".to_string();
    let mut ids = Vec::new();
    loop {
        let page = json(&vault(&emu, &path, Some(&t)));
        for item in page["value"].as_array().unwrap() {
            assert!(item.get("value").is_none(), "list items carry no values");
            ids.push(item["id"].as_str().unwrap().to_string());
        }
        match page["nextLink"].as_str() {
            Some(next) => {
                assert!(next.starts_with(&emu.vault_url()), "absolute nextLink");
                path = next.trim_start_matches(&emu.vault_url()).to_string();
            }
            None => break,
        }
    }
    assert_eq!(ids.len(), 3);
    let versions = json(&vault(
        &emu,
        "/secrets/a/versions?api-version=7.5&maxresults=1",
        Some(&t),
    ));
    assert_eq!(versions["value"].as_array().unwrap().len(), 1);
    assert!(
        versions["nextLink"]
            .as_str()
            .unwrap()
            .contains("/secrets/a/versions?")
    );
    assert_eq!(
        vault(&emu, "/secrets?api-version=7.5&maxresults=26", Some(&t)).status,
        400
    );
}

#[test]
fn imds_faults() {
    let emu = Emulator::start().unwrap();
    let q = "api-version=2018-02-01&resource=r";
    for status in [404, 410, 429, 500] {
        emu.push_imds_fault(Fault::Status(status));
        assert_eq!(imds(&emu, q, &[("Metadata", "true")]).status, status);
    }
    emu.push_imds_fault(Fault::StatusRetryAfter(429, 3));
    let url = format!("{}/metadata/identity/oauth2/token?{q}", emu.imds_url());
    let r = get(
        &identity_agent(),
        &url,
        &[("Metadata", "true")],
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!((r.status, r.retry_after.as_deref()), (429, Some("3")));
    emu.push_imds_fault(Fault::Drop);
    assert!(
        get(
            &identity_agent(),
            &url,
            &[("Metadata", "true")],
            Duration::from_secs(5)
        )
        .is_err(),
        "dropped connection"
    );
    emu.push_imds_fault(Fault::Delay(Duration::from_millis(300)));
    let started = Instant::now();
    assert_eq!(imds(&emu, q, &[("Metadata", "true")]).status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(emu.counters().imds_token_requests, 7);
}

#[test]
fn vault_faults_and_counters() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("s", "v");
    let t = token_for(&emu, "https://vault.azure.net");
    emu.push_kv_fault(Fault::StatusRetryAfter(429, 2));
    let r = vault(&emu, "/secrets/s?api-version=7.5", Some(&t));
    assert_eq!(
        (
            r.status,
            r.retry_after.as_deref(),
            json(&r)["error"]["code"].as_str()
        ),
        (429, Some("2"), Some("Throttled"))
    );
    emu.push_kv_fault(Fault::Status(429));
    assert_eq!(
        vault(&emu, "/secrets/s?api-version=7.5", Some(&t)).retry_after,
        None
    );
    for status in [500, 503] {
        emu.push_kv_fault(Fault::Status(status));
        assert_eq!(
            vault(&emu, "/secrets/s?api-version=7.5", Some(&t)).status,
            status
        );
    }
    emu.push_kv_fault(Fault::Drop);
    let pem = std::fs::read(emu.ca_file()).unwrap();
    let agent = vault_agents(Some(&pem), 1).unwrap().1;
    assert!(
        get(
            &agent,
            &format!("{}/secrets/s?api-version=7.5", emu.vault_url()),
            &[],
            Duration::from_secs(5)
        )
        .is_err()
    );
    emu.push_kv_fault(Fault::Delay(Duration::from_millis(200)));
    let started = Instant::now();
    assert_eq!(
        vault(&emu, "/secrets/s?api-version=7.5", Some(&t)).status,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    let c = emu.counters();
    assert_eq!((c.kv_requests["s"], c.kv_total_requests), (6, 6));
    // Concurrency is measured across connections.
    emu.reset_counters();
    emu.set_kv_delay(Duration::from_millis(100));
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                assert_eq!(
                    vault(&emu, "/secrets/s?api-version=7.5", Some(&t)).status,
                    200
                )
            });
        }
    });
    assert_eq!(emu.counters().kv_max_concurrent, 4);
}

#[test]
fn vault_tls_needs_the_emulator_ca() {
    let emu = Emulator::start().unwrap();
    let agent = vault_agents(None, 1).unwrap().1;
    let err = get(
        &agent,
        &format!("{}/secrets/s?api-version=7.5", emu.vault_url()),
        &[],
        Duration::from_secs(5),
    )
    .err()
    .unwrap();
    // Through Debug, so the check holds whatever type the transport error has.
    let err = format!("{err:?}").to_lowercase();
    assert!(
        err.contains("certificate") || err.contains("unknown"),
        "{err}"
    );
    let pem = std::fs::read_to_string(emu.ca_file()).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
fn control_api_over_http() {
    let emu = Emulator::start().unwrap();
    let agent = identity_agent();
    let call = |method: &str, path: &str, body: &str| -> (u16, Value) {
        let url = format!("{}{path}", emu.control_url());
        let resp = match method {
            "PUT" => agent.put(&url).send(body),
            "POST" => agent.post(&url).send(body),
            "DELETE" => agent.delete(&url).call(),
            _ => agent.get(&url).call(),
        }
        .unwrap();
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_str(&resp.into_body().read_to_string().unwrap()).unwrap(),
        )
    };
    let (s, v) = call("PUT", "/secrets/api", "from-http");
    assert!(s == 200 && v["version"].as_str().unwrap().len() == 32);
    assert_eq!(call("POST", "/secrets/api/disable", "").0, 200);
    assert_eq!(call("POST", "/secrets/api/enable", "").0, 200);
    assert_eq!(call("POST", "/secrets/api/deny", "").0, 200);
    assert_eq!(call("POST", "/secrets/api/allow", "").0, 200);
    assert_eq!(call("POST", "/faults/keyvault", r#"{"status":503}"#).0, 200);
    assert_eq!(
        call("POST", "/faults/imds", r#"{"status":429,"retry_after":1}"#).0,
        200
    );
    assert_eq!(call("POST", "/faults/imds", "nonsense").0, 400);
    assert_eq!(call("PUT", "/token-lifetime", "60").0, 200);
    assert_eq!(call("PUT", "/kv-delay", "0").0, 200);
    let (_, id) = call("POST", "/identities", r#"{"name":"x"}"#);
    assert!(id["client_id"].is_string());
    let r = imds(
        &emu,
        "api-version=2018-02-01&resource=r",
        &[("Metadata", "true")],
    );
    assert_eq!(r.status, 429, "the queued fault is served");
    let t = token_for(&emu, "https://vault.azure.net");
    assert_eq!(
        vault(&emu, "/secrets/api?api-version=7.5", Some(&t)).status,
        503
    );
    assert_eq!(
        json(&vault(&emu, "/secrets/api?api-version=7.5", Some(&t)))["value"],
        "from-http"
    );
    let (_, c) = call("GET", "/counters", "");
    assert_eq!(
        (
            c["imds_token_requests"].as_u64(),
            c["kv_requests"]["api"].as_u64()
        ),
        (Some(2), Some(2))
    );
    assert_eq!(call("DELETE", "/secrets/api", "").0, 200);
    assert_eq!(
        vault(&emu, "/secrets/api?api-version=7.5", Some(&t)).status,
        404
    );
    assert_eq!(call("PUT", "/system-identity", "false").0, 200);
    assert_eq!(
        imds(
            &emu,
            "api-version=2018-02-01&resource=r",
            &[("Metadata", "true")]
        )
        .status,
        400
    );
}

// Hostile mode: what a misbehaving or spoofed server sends, checked on the wire. IMDS is read
// with a plain socket (every byte as sent); the vault with a bare ureq client that trusts only
// the emulator's CA file and hides nothing.

const TOKEN_QUERY: &str = "api-version=2018-02-01&resource=https://vault.azure.net";

/// A connection to the plain listener with the IMDS token request written on it.
fn imds_request(emu: &Emulator) -> TcpStream {
    let mut s = TcpStream::connect(emu.imds_url().trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metadata/identity/oauth2/token?{TOKEN_QUERY} HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s
}

/// One IMDS token exchange read raw until the emulator closes: (status line and headers, body).
fn raw_imds(emu: &Emulator) -> (String, Vec<u8>) {
    let mut all = Vec::new();
    imds_request(emu).read_to_end(&mut all).unwrap();
    split_head(&all)
}

fn split_head(all: &[u8]) -> (String, Vec<u8>) {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    (
        String::from_utf8_lossy(&all[..end + 2]).into_owned(),
        all[end + 4..].to_vec(),
    )
}

fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A client that trusts only the emulator's CA file, follows nothing and reports every status.
fn tls_agent(emu: &Emulator) -> ureq::Agent {
    let pem = std::fs::read(emu.ca_file()).unwrap();
    let roots: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(roots.len(), 1, "the CA file holds the CA alone");
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// GET secret `name` from the vault with a valid token.
fn kv_get(emu: &Emulator, agent: &ureq::Agent, name: &str) -> ureq::http::Response<ureq::Body> {
    let token = emu.issue_token("https://vault.azure.net");
    agent
        .get(format!(
            "{}/secrets/{name}?api-version=7.5",
            emu.vault_url()
        ))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap()
}

fn kv_header(r: &ureq::http::Response<ureq::Body>, name: &str) -> Option<Vec<u8>> {
    r.headers().get(name).map(|v| v.as_bytes().to_vec())
}

#[test]
fn hostile_huge_body_has_exactly_the_length_announced() {
    let emu = Emulator::start().unwrap();
    let n = 3 << 20;
    emu.push_imds_fault(Fault::HugeBody(n));
    let (head, body) = raw_imds(&emu);
    assert_eq!(status_of(&head), 200);
    assert_eq!(
        header_of(&head, "content-length"),
        Some(n.to_string().as_str())
    );
    assert_eq!(body.len(), n);
    let v: Value = serde_json::from_slice(&body).expect("valid JSON when large enough");
    let token = v["access_token"].as_str().unwrap();
    assert!(token.len() > n - 200 && token.bytes().all(|b| b == b'a'));
    assert_eq!(v["token_type"], "Bearer");
    // Shorter than the success shape: N bytes of `a`.
    emu.push_imds_fault(Fault::HugeBody(5));
    let (head, body) = raw_imds(&emu);
    assert_eq!(
        (header_of(&head, "content-length"), body.as_slice()),
        (Some("5"), b"aaaaa".as_slice())
    );

    emu.set_secret("s", "v");
    let agent = tls_agent(&emu);
    emu.push_kv_fault(Fault::HugeBody(n));
    let mut r = kv_get(&emu, &agent, "s");
    assert_eq!(r.status(), 200);
    assert_eq!(r.body().content_length(), Some(n as u64));
    let body = r
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .unwrap();
    assert_eq!(body.len(), n);
    assert!(body.starts_with(b"{\"value\":\"aaaa") && body.ends_with(b"aaaa\"}"));
    // The fault is served once; the connection goes on serving.
    let mut r = kv_get(&emu, &agent, "s");
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!((r.status().as_u16(), v["value"].as_str()), (200, Some("v")));
    assert_eq!(emu.counters().imds_token_requests, 2);
}

#[test]
fn hostile_endless_body_streams_until_the_client_closes() {
    let emu = Emulator::start().unwrap();
    let wanted = 5 << 20;
    emu.push_imds_fault(Fault::EndlessBody);
    let mut s = imds_request(&emu);
    let (mut start, mut total) = (Vec::new(), 0);
    let mut buf = vec![0; 64 * 1024];
    while total < wanted {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the body ended after {total} bytes");
        if start.len() < 4096 {
            start.extend_from_slice(&buf[..n]);
        }
        total += n;
    }
    let (head, body) = split_head(&start);
    assert_eq!(status_of(&head), 200);
    assert_eq!(header_of(&head, "transfer-encoding"), Some("chunked"));
    assert_eq!(header_of(&head, "content-length"), None);
    let first = String::from_utf8_lossy(&body);
    // The success shape up to its token's text as the first chunk, then 64 KiB chunks of `a`.
    assert!(
        first.starts_with("11\r\n{\"access_token\":\"\r\n10000\r\naaaa"),
        "{first:.80}"
    );
    assert_eq!(emu.open_connections(), 1);
    drop(s);
    wait_for("the endless IMDS reply to end", ms(5000), || {
        emu.open_connections() == 0
    });

    // Over TLS, decoded by a real client.
    emu.push_kv_fault(Fault::EndlessBody);
    let agent = tls_agent(&emu);
    let r = kv_get(&emu, &agent, "any");
    assert_eq!(r.status(), 200);
    let mut reader = r.into_body().into_with_config().limit(u64::MAX).reader();
    let mut prefix = [0; 12];
    reader.read_exact(&mut prefix).unwrap();
    assert_eq!(&prefix, b"{\"value\":\"aa");
    let copied = io::copy(&mut (&mut reader).take(wanted as u64), &mut io::sink()).unwrap();
    assert_eq!(copied, wanted as u64);
    assert_eq!(emu.open_connections(), 1);
    drop(reader);
    drop(agent);
    wait_for("the endless vault reply to end", ms(5000), || {
        emu.open_connections() == 0
    });
}

#[test]
fn hostile_drip_sends_the_normal_answer_slowly() {
    let emu = Emulator::start().unwrap();
    let delay = Duration::from_micros(500);
    emu.push_imds_fault(Fault::Drip(delay));
    let mut s = imds_request(&emu);
    let started = Instant::now();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= delay * (all.len() as u32 - 1),
        "{} bytes in {elapsed:?}",
        all.len()
    );
    let (head, body) = split_head(&all);
    assert_eq!(status_of(&head), 200);
    let token = serde_json::from_slice::<Value>(&body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    // The token the dripped answer carried is a real one.
    emu.set_secret("s", "dripped");
    let delay = Duration::from_millis(1);
    emu.push_kv_fault(Fault::Drip(delay));
    let agent = tls_agent(&emu);
    let started = Instant::now();
    let mut r = agent
        .get(format!("{}/secrets/s?api-version=7.5", emu.vault_url()))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap();
    let text = r.body_mut().read_to_string().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(r.status(), 200);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["value"],
        "dripped"
    );
    assert!(
        kv_header(&r, "x-ms-request-id").is_some(),
        "the normal vault headers"
    );
    assert!(
        elapsed >= delay * text.len() as u32,
        "{} body bytes in {elapsed:?}",
        text.len()
    );
}

#[test]
fn hostile_invalid_utf8_bodies() {
    let emu = Emulator::start().unwrap();
    emu.push_imds_fault(Fault::InvalidUtf8(200));
    let (head, body) = raw_imds(&emu);
    assert_eq!(status_of(&head), 200);
    assert!(
        header_of(&head, "content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert!(std::str::from_utf8(&body).is_err());
    assert!(body.starts_with(b"{\"access_token\":\"\xff\xfe\","));
    emu.push_imds_fault(Fault::InvalidUtf8(500));
    let (head, body) = raw_imds(&emu);
    assert_eq!(status_of(&head), 500);
    assert_eq!(
        body,
        b"{\"error\":\"unknown\",\"error_description\":\"invalid UTF-8 follows: \xff\xfe\"}"
    );

    let agent = tls_agent(&emu);
    for (status, expected) in [
        (200, b"{\"value\":\"\xff\xfe\"}".as_slice()),
        (
            403,
            b"{\"error\":{\"code\":\"InternalServerError\",\"innererror\":{\"code\":\"InternalServerError\"},\"message\":\"invalid UTF-8 follows: \xff\xfe\"}}",
        ),
    ] {
        emu.push_kv_fault(Fault::InvalidUtf8(status));
        let mut r = kv_get(&emu, &agent, "s");
        assert_eq!(r.status(), status);
        assert!(
            kv_header(&r, "content-type")
                .unwrap()
                .starts_with(b"application/json")
        );
        let body = r.body_mut().read_to_vec().unwrap();
        assert_eq!(body, expected, "{}", String::from_utf8_lossy(&body));
        assert!(std::str::from_utf8(&body).is_err());
    }
}

#[test]
fn hostile_error_text_is_carried_verbatim() {
    let emu = Emulator::start().unwrap();
    let code = "Forbidden\u{1b}[31m";
    let message =
        "denied\nline two\r\n2024-01-01T00:00:00Z INFO kvfetch: fetched 3 secrets\u{1b}[2J";
    emu.push_kv_fault(Fault::ErrorText {
        status: 403,
        code: code.into(),
        message: message.into(),
    });
    let mut r = kv_get(&emu, &tls_agent(&emu), "s");
    assert_eq!(r.status(), 403);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(
        (
            v["error"]["code"].as_str(),
            v["error"]["message"].as_str(),
            v["error"]["innererror"]["code"].as_str()
        ),
        (Some(code), Some(message), Some(code))
    );

    emu.push_imds_fault(Fault::ErrorText {
        status: 400,
        code: code.into(),
        message: message.into(),
    });
    let (head, body) = raw_imds(&emu);
    assert_eq!(status_of(&head), 400);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (v["error"].as_str(), v["error_description"].as_str()),
        (Some(code), Some(message))
    );
}

#[test]
fn hostile_redirects() {
    let emu = Emulator::start().unwrap();
    let location = "https://attacker.example/collect?token=";
    emu.push_kv_fault(Fault::Redirect {
        status: 307,
        location: location.into(),
    });
    let r = kv_get(&emu, &tls_agent(&emu), "s");
    assert_eq!(
        (r.status().as_u16(), kv_header(&r, "location")),
        (307, Some(location.as_bytes().to_vec()))
    );
    emu.push_imds_fault(Fault::Redirect {
        status: 302,
        location: location.into(),
    });
    let (head, _) = raw_imds(&emu);
    assert_eq!(
        (status_of(&head), header_of(&head, "location")),
        (302, Some(location))
    );
}

#[test]
fn hostile_extra_headers_are_sent_raw() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("s", "v");
    let agent = tls_agent(&emu);
    emu.push_kv_fault(Fault::Header {
        status: 429,
        name: "Retry-After".into(),
        value: "0".into(),
    });
    emu.push_kv_fault(Fault::StatusRetryAfter(429, 0));
    for _ in 0..2 {
        let mut r = kv_get(&emu, &agent, "s");
        assert_eq!(
            (r.status().as_u16(), kv_header(&r, "retry-after")),
            (429, Some(b"0".to_vec()))
        );
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(v["error"]["code"], "Throttled");
    }
    // On 200 the answer is the normal one, plus the header.
    emu.push_kv_fault(Fault::Header {
        status: 200,
        name: "X-Odd".into(),
        value: "caf\u{e9} ~".into(),
    });
    let mut r = kv_get(&emu, &agent, "s");
    assert_eq!(kv_header(&r, "x-odd"), Some(b"caf\xc3\xa9 ~".to_vec()));
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!((r.status().as_u16(), v["value"].as_str()), (200, Some("v")));

    // Nothing is escaped: control bytes go out as they are, and a CR LF splits the header.
    emu.push_imds_fault(Fault::Header {
        status: 200,
        name: "X-Odd".into(),
        value: "a\u{1}b\tc\r\nX-Injected: yes".into(),
    });
    let (head, body) = raw_imds(&emu);
    assert_eq!(status_of(&head), 200);
    assert!(
        head.contains("\r\nX-Odd: a\u{1}b\tc\r\nX-Injected: yes\r\n"),
        "{head}"
    );
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["access_token"].is_string());
    emu.push_imds_fault(Fault::Header {
        status: 503,
        name: "Retry-After".into(),
        value: "soon".into(),
    });
    let (head, body) = raw_imds(&emu);
    assert_eq!(
        (status_of(&head), header_of(&head, "retry-after")),
        (503, Some("soon"))
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"],
        "server_error"
    );
}

#[test]
fn hostile_vault_certificates_fail_for_their_stated_reason() {
    let url = |emu: &Emulator| format!("{}/secrets/s?api-version=7.5", emu.vault_url());
    let emu = Emulator::start().unwrap();
    let r = tls_agent(&emu).get(url(&emu)).call().unwrap();
    assert_eq!(r.status(), 401, "the valid leaf is accepted");
    for (kind, reason) in [
        (VaultCert::WrongName, "not valid for name"),
        (VaultCert::Expired, "certificate expired"),
        (VaultCert::SelfSigned, "UnknownIssuer"),
    ] {
        let emu = Emulator::with_config(Config {
            vault_cert: kind,
            ..Config::default()
        })
        .unwrap();
        let err = tls_agent(&emu)
            .get(url(&emu))
            .call()
            .expect_err("the client refuses the certificate")
            .to_string();
        assert!(err.contains(reason), "{kind:?}: {err}");
        if kind == VaultCert::WrongName {
            assert!(err.contains("wrong.example"), "{err}");
        }
        assert_eq!(emu.counters().kv_total_requests, 0, "{kind:?}");
    }
}

#[test]
fn control_api_queues_hostile_faults() {
    let emu = Emulator::start().unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let queue = |endpoint: &str, body: &str| {
        agent
            .post(format!("{}/faults/{endpoint}", emu.control_url()))
            .send(body)
            .unwrap()
            .status()
            .as_u16()
    };
    for body in [
        r#"{"huge_body":16}"#,
        r#"{"invalid_utf8":200}"#,
        r#"{"status":302,"location":"https://x.example/"}"#,
        r#"{"status":429,"header":"Retry-After","value":"0"}"#,
        r#"{"status":400,"code":"C","message":"M\n"}"#,
        r#"{"drip_ms":0}"#,
        r#"{"endless_body":true}"#,
    ] {
        assert_eq!(queue("imds", body), 200, "{body}");
    }
    assert_eq!(queue("imds", r#"{"huge_body":"big"}"#), 400);
    let (_, body) = raw_imds(&emu);
    assert_eq!(body, b"aaaaaaaaaaaaaaaa");
    let (_, body) = raw_imds(&emu);
    assert!(std::str::from_utf8(&body).is_err());
    let (head, _) = raw_imds(&emu);
    assert_eq!(header_of(&head, "location"), Some("https://x.example/"));
    let (head, _) = raw_imds(&emu);
    assert_eq!(header_of(&head, "retry-after"), Some("0"));
    let (_, body) = raw_imds(&emu);
    assert_eq!(body, b"{\"error\":\"C\",\"error_description\":\"M\\n\"}");
    let (head, _) = raw_imds(&emu);
    assert_eq!(status_of(&head), 200);
    let mut s = imds_request(&emu);
    let mut start = [0; 512];
    let n = s.read(&mut start).unwrap();
    let head = String::from_utf8_lossy(&start[..n]).into_owned();
    assert_eq!(
        header_of(&head, "transfer-encoding"),
        Some("chunked"),
        "{head}"
    );
}
