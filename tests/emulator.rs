//! The emulator itself: every endpoint, every error and every fault, plus the control API.

mod common;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use kvfetch::net::http::{Reply, get, identity_agent, vault_agents};
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
    serde_json::from_slice(&kvfetch::base::encoding::base64url_decode(payload).unwrap()).unwrap()
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
                kvfetch::base::encoding::percent_encode(v)
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
                kvfetch::base::encoding::percent_encode(v)
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
            managed: false,
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
    // kvfetch builds ureq without a default TLS provider: name ring's, as kvfetch does.
    let tls = ureq::tls::TlsConfig::builder()
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
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
        r#"{"answer_then_hold":true}"#,
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

// The other identity sources: Entra (workload identity), legacy App Service, Cloud Shell, Azure
// Arc and Service Fabric. Spoken to with bare ureq clients (or a bare rustls one for Service
// Fabric) that report every status and use no proxy.

/// A plain-HTTP client that reports every status, follows nothing and uses no proxy.
fn plain_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// Status, a header's value and the body of an answer (JSON, or else a JSON string of its text).
fn answer_with(
    mut r: ureq::http::Response<ureq::Body>,
    header: &str,
) -> (u16, Option<String>, Value) {
    let value = r
        .headers()
        .get(header)
        .map(|v| v.to_str().unwrap().to_string());
    let text = r.body_mut().read_to_string().unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (r.status().as_u16(), value, body)
}

/// Status and body of an answer.
fn answer(r: ureq::http::Response<ureq::Body>) -> (u16, Value) {
    let (status, _, body) = answer_with(r, "content-type");
    (status, body)
}

/// A vault GET of secret `s` with this bearer token: the status.
fn vault_status_with(emu: &Emulator, token: &str) -> u16 {
    kv_status(emu, &tls_agent(emu), token)
}

fn kv_status(emu: &Emulator, agent: &ureq::Agent, token: &str) -> u16 {
    agent
        .get(format!("{}/secrets/s?api-version=7.5", emu.vault_url()))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .unwrap()
        .status()
        .as_u16()
}

/// A projected service-account token: JWT-shaped, with issuer, subject and audience.
const ASSERTION: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsifQ.eyJpc3MiOiJodHRwczovL29pZGMuZXhhbXBsZS9jbHVzdGVyIiwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50OmRlZmF1bHQ6YXBwIiwiYXVkIjoiYXBpOi8vQXp1cmVBRFRva2VuRXhjaGFuZ2UiLCJuYmYiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMzYwMH0.c2ln";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const CLIENT_ID: &str = "2f3c9a41-7b1e-4d2a-9c3f-0a1b2c3d4e5f";

/// The form a workload-identity client posts, with `changes` applied (an empty value drops
/// the field).
fn wi_form<'a>(assertion: &'a str, changes: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
        ("scope", "https://vault.azure.net/.default"),
    ];
    for (k, v) in changes {
        form.retain(|(name, _)| name != k);
        if !v.is_empty() {
            form.push((k, v));
        }
    }
    form
}

fn entra(emu: &Emulator, tenant: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let url = format!("{}/{tenant}/oauth2/v2.0/token", emu.authority_url());
    answer(
        plain_agent()
            .post(&url)
            .send_form(form.iter().copied())
            .unwrap(),
    )
}

/// An Entra error: (status, `error`, the one error code), after checking the envelope's shape.
fn entra_error((status, body): (u16, Value)) -> (u16, String, u64) {
    let codes = body["error_codes"].as_array().expect("error_codes");
    assert_eq!(codes.len(), 1, "{body}");
    let code = codes[0].as_u64().unwrap();
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    let timestamp = body["timestamp"].as_str().unwrap();
    assert!(
        description.ends_with(&format!("\r\nTimestamp: {timestamp}")),
        "{description}"
    );
    assert!(
        timestamp.len() == 20 && timestamp.ends_with('Z'),
        "{timestamp}"
    );
    for k in ["trace_id", "correlation_id"] {
        assert_eq!(body[k].as_str().unwrap().len(), 36, "{k}");
    }
    assert_eq!(
        body["error_uri"],
        format!("https://login.microsoftonline.com/error?code={code}")
    );
    (status, body["error"].as_str().unwrap().to_string(), code)
}

#[test]
fn entra_issues_workload_identity_tokens_for_the_federated_assertion() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("s", "v");
    let tenant = emu.tenant_id();
    assert_eq!(emu.authority_url(), emu.imds_url(), "the plain listener");
    let id = emu.federate(CLIENT_ID, ASSERTION);
    assert_eq!(id.client_id, CLIENT_ID);
    let (status, body) = entra(&emu, &tenant, &wi_form(ASSERTION, &[]));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    for k in ["expires_in", "ext_expires_in"] {
        assert_eq!(body[k].as_u64(), Some(86_400), "{k} is a JSON number");
    }
    let token = body["access_token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(c["aud"], "https://vault.azure.net", "scope minus /.default");
    assert_eq!(
        (c["appid"].as_str(), c["oid"].as_str(), c["tid"].as_str()),
        (
            Some(CLIENT_ID),
            Some(id.object_id.as_str()),
            Some(tenant.as_str())
        )
    );
    assert_eq!(vault_status_with(&emu, token), 200);
    // A trailing slash on the authority's path and an upper-case tenant are the same endpoint;
    // a resource with a trailing slash gives the same audience.
    let (status, body) = entra(
        &emu,
        &tenant.to_uppercase(),
        &wi_form(ASSERTION, &[("scope", "https://vault.azure.net//.default")]),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["aud"],
        "https://vault.azure.net"
    );

    // The token file rotates: the new text is accepted, the old one no longer matches.
    let rotated = "rotated-token-file-contents";
    assert_eq!(emu.federate(CLIENT_ID, rotated), id, "the same identity");
    let (status, body) = entra(&emu, &tenant, &wi_form(ASSERTION, &[]));
    assert_eq!(
        entra_error((status, body.clone())),
        (401, "invalid_client".into(), 70021)
    );
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.contains("No matching federated identity record found for presented assertion. Assertion Issuer: 'https://oidc.example/cluster'. Assertion Subject: 'system:serviceaccount:default:app'. Assertion Audience: 'api://AzureADTokenExchange'."),
        "{description}"
    );
    assert_eq!(entra(&emu, &tenant, &wi_form(rotated, &[])).0, 200);
    emu.expire_assertion(rotated);
    let (status, body) = entra(&emu, &tenant, &wi_form(rotated, &[]));
    assert_eq!(
        entra_error((status, body.clone())),
        (400, "invalid_client".into(), 700024)
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("Client assertion is not within its valid time range. Current time: "),
        "{body}"
    );
    let c = emu.counters();
    assert_eq!(c.entra_token_requests, 5);
    assert_eq!(
        c.entra_assertions,
        [ASSERTION, ASSERTION, ASSERTION, rotated, rotated],
        "every assertion received, in order"
    );
    assert!(c.user_agents.iter().any(|a| a.starts_with("ureq")));
}

#[test]
fn entra_request_errors() {
    let emu = Emulator::start().unwrap();
    emu.federate(CLIENT_ID, ASSERTION);
    let tenant = emu.tenant_id();
    let other_tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let (status, body) = entra(&emu, other_tenant, &wi_form(ASSERTION, &[]));
    assert_eq!(
        entra_error((status, body.clone())),
        (400, "invalid_request".into(), 90002)
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with(&format!("AADSTS90002: Tenant '{other_tenant}' not found."))
    );
    let stranger = "00000000-1111-2222-3333-444444444444";
    let (status, body) = entra(
        &emu,
        &tenant,
        &wi_form(ASSERTION, &[("client_id", stranger)]),
    );
    assert_eq!(
        entra_error((status, body.clone())),
        (400, "unauthorized_client".into(), 700016)
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "AADSTS700016: Application with identifier '{stranger}' was not found in the directory"
            ))
    );
    for change in [
        ("grant_type", "password"),
        ("grant_type", ""),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
        ),
        ("client_assertion_type", ""),
        ("scope", ""),
        ("client_id", ""),
    ] {
        let (status, body) = entra(&emu, &tenant, &wi_form(ASSERTION, &[change]));
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{change:?}: {body}"
        );
        entra_error((status, body));
    }
    let (status, body) = entra(
        &emu,
        &tenant,
        &wi_form(ASSERTION, &[("scope", "https://vault.azure.net")]),
    );
    assert_eq!(
        entra_error((status, body)),
        (400, "invalid_scope".into(), 1002012)
    );
    // Only POST, and only a form body.
    let url = format!("{}/{tenant}/oauth2/v2.0/token", emu.authority_url());
    let (status, body) = answer(plain_agent().get(&url).call().unwrap());
    assert_eq!(
        entra_error((status, body)),
        (400, "invalid_request".into(), 900561)
    );
    let json_body = serde_json::json!({"grant_type": "client_credentials"}).to_string();
    let (status, body) = answer(
        plain_agent()
            .post(&url)
            .header("Content-Type", "application/json")
            .send(&json_body)
            .unwrap(),
    );
    assert_eq!(
        entra_error((status, body)),
        (400, "invalid_request".into(), 900144)
    );
    // No tokens were issued by any of these.
    assert!(
        emu.counters()
            .entra_assertions
            .iter()
            .all(|a| a == ASSERTION),
        "only form bodies are read"
    );
}

#[test]
fn entra_faults_are_queued_like_the_others() {
    let emu = Emulator::start().unwrap();
    emu.federate(CLIENT_ID, ASSERTION);
    let tenant = emu.tenant_id();
    let form = wi_form(ASSERTION, &[]);
    let url = format!("{}/{tenant}/oauth2/v2.0/token", emu.authority_url());
    emu.push_entra_fault(Fault::StatusRetryAfter(429, 7));
    let (status, retry_after, body) = answer_with(
        plain_agent()
            .post(&url)
            .send_form(form.iter().copied())
            .unwrap(),
        "retry-after",
    );
    assert_eq!((status, retry_after.as_deref()), (429, Some("7")));
    entra_error((status, body));
    emu.push_entra_fault(Fault::Status(503));
    let (status, body) = entra(&emu, &tenant, &form);
    assert_eq!(entra_error((status, body)).0, 503);
    emu.push_entra_fault(Fault::Drop);
    assert!(
        plain_agent()
            .post(&url)
            .send_form(form.iter().copied())
            .is_err(),
        "dropped connection"
    );
    emu.push_entra_fault(Fault::ErrorText {
        status: 400,
        code: "invalid_grant".into(),
        message: "AADSTS50173: The provided grant has expired.".into(),
    });
    let (status, body) = entra(&emu, &tenant, &form);
    assert_eq!(
        entra_error((status, body)),
        (400, "invalid_grant".into(), 50173)
    );
    emu.push_entra_fault(Fault::HugeBody(4096));
    let (status, body) = entra(&emu, &tenant, &form);
    assert_eq!(status, 200);
    assert_eq!(body["expires_in"].as_u64(), Some(86_400));
    assert!(body["access_token"].as_str().unwrap().len() > 3900);
    emu.push_entra_fault(Fault::Delay(Duration::from_millis(200)));
    let started = Instant::now();
    assert_eq!(entra(&emu, &tenant, &form).0, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    let c = emu.counters();
    assert_eq!(
        (c.entra_token_requests, c.entra_assertions.len()),
        (6, 6),
        "faulted requests count"
    );
    // Through the control API too.
    let r = plain_agent()
        .post(format!("{}/faults/entra", emu.control_url()))
        .send(r#"{"status":500}"#)
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(entra(&emu, &tenant, &form).0, 500);
}

/// Days since 1970-01-01 of a Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

/// Unix seconds of a legacy `expires_on`, `MM/DD/YYYY hh:mm:ss AM|PM +00:00`, checking its shape.
fn legacy_time(text: &str) -> u64 {
    let parts: Vec<&str> = text.split(' ').collect();
    assert_eq!(parts.len(), 4, "{text}");
    let (date, time, half, zone) = (parts[0], parts[1], parts[2], parts[3]);
    assert!(
        date.len() == 10 && time.len() == 8 && zone == "+00:00",
        "{text}"
    );
    let num = |s: &str| s.parse::<i64>().unwrap();
    let d: Vec<i64> = date.split('/').map(num).collect();
    let t: Vec<i64> = time.split(':').map(num).collect();
    assert!((1..=12).contains(&t[0]), "a 12-hour clock: {text}");
    let hour = t[0] % 12
        + match half {
            "AM" => 0,
            "PM" => 12,
            _ => panic!("{text}"),
        };
    (days_from_civil(d[2], d[0], d[1]) * 86_400 + hour * 3_600 + t[1] * 60 + t[2]) as u64
}

#[test]
fn legacy_msi_endpoint() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("s", "v");
    let id = Identity::user("legacy");
    emu.add_user_identity(id.clone());
    assert!(emu.msi_endpoint().starts_with(&emu.imds_url()));
    let call = |query: &str, secret: Option<&str>| {
        let mut req = plain_agent().get(format!("{}?{query}", emu.msi_endpoint()));
        if let Some(secret) = secret {
            req = req.header("secret", secret);
        }
        let (status, body) = answer(req.call().unwrap());
        (status, body)
    };
    let q = "api-version=2017-09-01&resource=https%3A%2F%2Fvault.azure.net";
    let (status, body) = call(q, Some(emu.msi_secret()));
    assert_eq!(status, 200, "{body}");
    let keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["access_token", "expires_on", "resource", "token_type"]
    );
    assert_eq!(
        (body["resource"].as_str(), body["token_type"].as_str()),
        (Some("https://vault.azure.net"), Some("Bearer"))
    );
    let token = body["access_token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(
        body["expires_on"].as_u64(),
        c["exp"].as_u64(),
        "epoch seconds, as the current SDKs read it: {}",
        body["expires_on"]
    );
    // The 2017-era form, on request.
    emu.set_legacy_date_expiry(true);
    let (_, dated) = call(q, Some(emu.msi_secret()));
    let c_dated = claims(dated["access_token"].as_str().unwrap());
    assert_eq!(
        legacy_time(dated["expires_on"].as_str().unwrap()),
        c_dated["exp"].as_u64().unwrap(),
        "a date string in UTC: {}",
        dated["expires_on"]
    );
    // Selectors of the other endpoints are refused, not ignored.
    for selector in ["object_id", "msi_res_id"] {
        let (status, body) = call(
            &format!("{q}&{selector}={}", id.object_id),
            Some(emu.msi_secret()),
        );
        assert_eq!(
            (status, body["statusCode"].as_u64()),
            (400, Some(400)),
            "{selector}: {body}"
        );
    }
    assert_eq!(c["oid"], emu.system_identity().unwrap().object_id.as_str());
    assert_eq!(vault_status_with(&emu, token), 200);

    let (status, body) = call(
        &format!("{q}&clientid={}", id.client_id),
        Some(emu.msi_secret()),
    );
    assert_eq!(status, 200);
    assert_eq!(
        claims(body["access_token"].as_str().unwrap())["oid"],
        id.object_id.as_str()
    );
    for secret in [None, Some("wrong")] {
        let (status, body) = call(q, secret);
        assert_eq!(status, 401);
        assert!(
            body["statusCode"] == 401 && body["message"].is_string(),
            "{body}"
        );
    }
    let (status, body) = call(&format!("{q}&clientid=nobody"), Some(emu.msi_secret()));
    assert_eq!(
        (status, body),
        (
            400,
            serde_json::json!({"statusCode": 400, "message": "Unable to load the proper Managed Identity."})
        )
    );
    let (status, body) = call(
        "api-version=2019-08-01&resource=https://vault.azure.net",
        Some(emu.msi_secret()),
    );
    assert_eq!((status, body["statusCode"].as_u64()), (400, Some(400)));
    emu.set_system_identity(false);
    assert_eq!(call(q, Some(emu.msi_secret())).0, 400);
    assert_eq!(emu.counters().legacy_msi_token_requests, 10);
}

#[test]
fn cloud_shell_endpoint() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("s", "v");
    let url = emu.cloud_shell_endpoint();
    assert!(url.starts_with(&emu.imds_url()));
    let post = |metadata: bool, form: &[(&str, &str)]| {
        let mut req = plain_agent().post(&url);
        if metadata {
            req = req.header("Metadata", "true");
        }
        let (status, body) = answer(req.send_form(form.iter().copied()).unwrap());
        (status, body)
    };
    let (status, body) = post(true, &[("resource", "https://vault.azure.net")]);
    assert_eq!(status, 200, "{body}");
    for k in [
        "expires_in",
        "expires_on",
        "not_before",
        "resource",
        "token_type",
    ] {
        assert!(body[k].is_string(), "{k} must be a JSON string");
    }
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(vault_status_with(&emu, token), 200);
    // The signed-in user's token, whatever the host has.
    emu.set_system_identity(false);
    assert_eq!(
        post(true, &[("resource", "https://vault.azure.net")]).0,
        200
    );
    let (status, body) = post(false, &[("resource", "https://vault.azure.net")]);
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(post(true, &[]).0, 400, "no resource in the form");
    let in_query = plain_agent()
        .post(format!("{url}?resource=https://vault.azure.net"))
        .header("Metadata", "true")
        .send_empty()
        .unwrap();
    assert_eq!(in_query.status(), 400, "the resource goes in the body");
    let get = plain_agent()
        .get(format!("{url}?resource=x"))
        .header("Metadata", "true")
        .call()
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(emu.counters().cloud_shell_token_requests, 6);
}

/// An Arc token request; the realm of a challenge is returned as the header's value.
fn arc(emu: &Emulator, query: &str, auth: Option<&str>) -> (u16, Option<String>, Value) {
    let mut req = plain_agent()
        .get(format!("{}?{query}", emu.arc_endpoint()))
        .header("Metadata", "true");
    if let Some(key) = auth {
        req = req.header("Authorization", format!("Basic {key}"));
    }
    answer_with(req.call().unwrap(), "www-authenticate")
}

const ARC_QUERY: &str = "api-version=2020-06-01&resource=https%3A%2F%2Fvault.azure.net";

/// The key file a challenge names, after checking the challenge's shape.
fn arc_key_file(challenge: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let path = std::path::PathBuf::from(
        challenge
            .strip_prefix("Basic realm=")
            .unwrap_or_else(|| panic!("{challenge}")),
    );
    assert!(!challenge.contains('"'), "unquoted: {challenge}");
    assert!(path.is_absolute(), "{challenge}");
    assert_eq!(path.parent(), Some(dir), "{challenge}");
    assert_eq!(path.extension().and_then(|e| e.to_str()), Some("key"));
    path
}

#[test]
fn arc_challenge_names_a_fresh_key_file() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("s", "v");
    assert_eq!(
        emu.arc_endpoint(),
        format!("{}/metadata/identity/oauth2/token", emu.arc_imds_endpoint())
    );
    assert!(emu.arc_imds_endpoint().starts_with(&emu.imds_url()));
    let dir = emu.arc_key_dir().to_path_buf();
    assert_eq!(dir, dir.canonicalize().unwrap());
    let (status, challenge, body) = arc(&emu, ARC_QUERY, None);
    assert_eq!(status, 401, "{body}");
    let file = arc_key_file(&challenge.unwrap(), &dir);
    assert_eq!(mode(&file), 0o600);
    let key = std::fs::read_to_string(&file).unwrap();
    assert!(
        key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{key}"
    );
    let (status, _, body) = arc(&emu, ARC_QUERY, Some(&key));
    assert_eq!(status, 200, "{body}");
    for k in [
        "expires_in",
        "expires_on",
        "not_before",
        "resource",
        "token_type",
    ] {
        assert!(body[k].is_string(), "{k} must be a JSON string");
    }
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(
        claims(token)["oid"],
        emu.system_identity().unwrap().object_id.as_str()
    );
    assert_eq!(vault_status_with(&emu, token), 200);
    // The key may be used again until the next challenge.
    assert_eq!(arc(&emu, ARC_QUERY, Some(&key)).0, 200);

    // A wrong key: a new challenge, with a new file; the old key is spent.
    let (status, challenge, _) = arc(&emu, ARC_QUERY, Some("not-the-key"));
    assert_eq!(status, 401);
    let second = arc_key_file(&challenge.unwrap(), &dir);
    assert_ne!(second, file);
    assert!(!file.exists(), "the previous key file is removed");
    assert_eq!(arc(&emu, ARC_QUERY, Some(&key)).0, 401);
    // That last request was challenged too: only the newest file's key is accepted.
    let entries = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(entries, 1);
    let newest = std::fs::read_dir(&dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let key = std::fs::read_to_string(&newest).unwrap();
    assert_eq!(arc(&emu, ARC_QUERY, Some(&key)).0, 200);
    // Base64 of the contents is not the contents.
    let (status, _, _) = arc(&emu, ARC_QUERY, Some(&format!("{key}=")));
    assert_eq!(status, 401);

    // A hostile realm: named exactly, nothing written, no key accepted.
    let before: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    emu.set_arc_realm(Some("/etc/shadow".into()));
    let (status, challenge, _) = arc(&emu, ARC_QUERY, None);
    assert_eq!(
        (status, challenge.as_deref()),
        (401, Some("Basic realm=/etc/shadow"))
    );
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), before.len());
    emu.set_arc_realm(None);
    let (status, challenge, _) = arc(&emu, ARC_QUERY, None);
    assert_eq!(status, 401);
    arc_key_file(&challenge.unwrap(), &dir);

    // Request errors come before the challenge.
    let no_metadata = plain_agent()
        .get(format!("{}?{ARC_QUERY}", emu.arc_endpoint()))
        .call()
        .unwrap();
    assert_eq!(no_metadata.status(), 400);
    let (status, challenge, _) = arc(&emu, "api-version=2018-02-01&resource=x", None);
    assert_eq!((status, challenge), (400, None));
    assert_eq!(emu.counters().arc_token_requests, 11);
}

#[test]
fn arc_key_directory_is_configurable() {
    let scratch = Scratch::new();
    let dir = scratch.path("tokens");
    let emu = Emulator::with_config(Config {
        arc_key_dir: Some(dir.clone()),
        ..Config::default()
    })
    .unwrap();
    let dir = dir.canonicalize().unwrap();
    assert_eq!(emu.arc_key_dir(), dir);
    let (status, challenge, _) = arc(&emu, ARC_QUERY, None);
    assert_eq!(status, 401);
    let file = arc_key_file(&challenge.unwrap(), &dir);
    let key = std::fs::read_to_string(&file).unwrap();
    emu.set_system_identity(false);
    let (status, _, body) = arc(&emu, ARC_QUERY, Some(&key));
    assert_eq!(
        (status, body["error_description"].as_str()),
        (400, Some("Identity not found"))
    );
    drop(emu);
    assert!(!file.exists(), "the last key file goes with the emulator");
}

/// Service Fabric over a bare rustls client that accepts any certificate and keeps it, as a
/// client pinning by thumbprint would before comparing: (the certificate chain's DER, head, body).
fn service_fabric(
    emu: &Emulator,
    query: &str,
    secret: Option<&str>,
) -> (Vec<Vec<u8>>, String, Vec<u8>) {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use std::sync::{Arc, Mutex};

    #[derive(Debug)]
    struct Keep(Mutex<Vec<Vec<u8>>>, Arc<rustls::crypto::CryptoProvider>);
    impl ServerCertVerifier for Keep {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            intermediates: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let mut chain = vec![end_entity.to_vec()];
            chain.extend(intermediates.iter().map(|c| c.to_vec()));
            *self.0.lock().unwrap() = chain;
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.1.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.1.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.1.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let keep = Arc::new(Keep(Mutex::new(Vec::new()), provider.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(keep.clone())
        .with_no_client_auth();
    let url = emu.service_fabric_endpoint();
    let rest = url.strip_prefix("https://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let secret = secret.map_or(String::new(), |s| format!("Secret: {s}\r\n"));
    write!(
        tls,
        "GET {path}?{query} HTTP/1.1\r\nHost: {addr}\r\n{secret}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    match tls.read_to_end(&mut all) {
        Ok(_) => {}
        // The emulator closes without close_notify.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("{e}"),
    }
    let (head, body) = split_head(&all);
    let chain = keep.0.lock().unwrap().clone();
    (chain, head, body)
}

#[test]
fn service_fabric_endpoint_pins_a_self_signed_certificate() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("s", "v");
    let url = emu.service_fabric_endpoint();
    assert!(
        url.starts_with("https://127.0.0.1:") && url.ends_with("/sf/token"),
        "{url}"
    );
    let q = "api-version=2019-07-01-preview&resource=https%3A%2F%2Fvault.azure.net";
    let (chain, head, body) = service_fabric(&emu, q, Some(emu.identity_header()));
    assert_eq!(status_of(&head), 200, "{head}");
    // The thumbprint is the SHA-1 of the certificate served, alone in its chain.
    assert_eq!(chain.len(), 1, "a self-signed certificate, served alone");
    let thumbprint = emu.service_fabric_thumbprint();
    assert!(
        thumbprint.len() == 40
            && thumbprint
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
        "{thumbprint}"
    );
    let mut sha1 = std::process::Command::new("sha1sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sha1.stdin.take().unwrap().write_all(&chain[0]).unwrap();
    let out = String::from_utf8(sha1.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(out.split(' ').next().unwrap().to_uppercase(), thumbprint);
    // The vault's CA did not sign it.
    let err = tls_agent(&emu)
        .get(format!("{url}?{q}"))
        .call()
        .expect_err("not signed by the vault CA")
        .to_string();
    assert!(err.contains("UnknownIssuer"), "{err}");

    let v: Value = serde_json::from_slice(&body).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["access_token", "expires_on", "resource", "token_type"]
    );
    let token = v["access_token"].as_str().unwrap();
    assert_eq!(
        v["expires_on"].as_str().unwrap(),
        claims(token)["exp"].as_u64().unwrap().to_string(),
        "Unix seconds as a string"
    );
    assert_eq!(
        (v["resource"].as_str(), v["token_type"].as_str()),
        (Some("https://vault.azure.net"), Some("Bearer"))
    );
    assert_eq!(vault_status_with(&emu, token), 200);

    let code = |query: &str, secret: Option<&str>| {
        let (_, head, body) = service_fabric(&emu, query, secret);
        let v: Value = serde_json::from_slice(&body).unwrap();
        (
            status_of(&head),
            v["error"]["code"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(code(q, None), (401, "SecretHeaderNotFound".into()));
    assert_eq!(code(q, Some("wrong")), (401, "SecretHeaderNotFound".into()));
    assert_eq!(
        code(
            "api-version=2019-07-01-preview",
            Some(emu.identity_header())
        ),
        (400, "ArgumentNullOrEmpty".into())
    );
    assert_eq!(
        code(
            "api-version=2019-08-01&resource=x",
            Some(emu.identity_header())
        )
        .0,
        400
    );
    emu.set_system_identity(false);
    assert_eq!(
        code(q, Some(emu.identity_header())),
        (404, "ManagedIdentityNotFound".into())
    );
    // The TLS-refused request never reached the handler.
    assert_eq!(emu.counters().service_fabric_token_requests, 6);
}

#[test]
fn control_api_sets_secret_attributes() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("attrs", "v");
    let agent = identity_agent();
    let patch = |name: &str, body: &str| {
        agent
            .patch(format!("{}/secrets/{name}", emu.control_url()))
            .config()
            .http_status_as_error(false)
            .build()
            .send(body)
            .unwrap()
            .status()
            .as_u16()
    };
    let body = r#"{"managed":true,"tags":{"team":"a","env":"dev"},"exp":4102444800,"nbf":1700000000,"contentType":"text/plain"}"#;
    assert_eq!(patch("attrs", body), 200);
    assert_eq!(patch("attrs", r#"{"tags":{"env":"prod"}}"#), 200);
    assert_eq!(patch("missing", r#"{"managed":true}"#), 404);
    assert_eq!(patch("attrs", r#"{"exp":"soon"}"#), 400);
    assert_eq!(patch("attrs", r#"{"colour":"red"}"#), 400);
    let token = token_for(&emu, "https://vault.azure.net");
    let r = vault(&emu, "/secrets/attrs?api-version=7.4", Some(&token));
    let v = json(&r);
    assert_eq!(r.status, 200, "{v}");
    assert_eq!(v["managed"], true, "{v}");
    assert_eq!(v["contentType"], "text/plain");
    assert_eq!(v["tags"], serde_json::json!({"team": "a", "env": "prod"}));
    assert_eq!(
        (
            v["attributes"]["exp"].as_u64(),
            v["attributes"]["nbf"].as_u64()
        ),
        (Some(4_102_444_800), Some(1_700_000_000))
    );
    // The legacy endpoint's expires_on form, switched by the control API.
    let put = |body: &str| {
        agent
            .put(format!("{}/legacy-expiry", emu.control_url()))
            .config()
            .http_status_as_error(false)
            .build()
            .send(body)
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!((put("date"), put("never")), (200, 400));
    let url = format!(
        "{}?api-version=2017-09-01&resource=https://vault.azure.net",
        emu.msi_endpoint()
    );
    let r = get(&agent, &url, &[("secret", emu.msi_secret())], ms(5000)).unwrap();
    assert!(
        json(&r)["expires_on"]
            .as_str()
            .unwrap()
            .ends_with(" +00:00")
    );
    assert_eq!(put("epoch"), 200);
    let r = get(&agent, &url, &[("secret", emu.msi_secret())], ms(5000)).unwrap();
    assert!(json(&r)["expires_on"].is_u64(), "{}", r.body);
}
