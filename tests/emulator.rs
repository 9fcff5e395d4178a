//! The emulator itself: every endpoint, every error and every fault, plus the control API.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kvfetch::http::{Reply, get, identity_agent, vault_agent};
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
    let agent = vault_agent(Some(&pem), 4, true).unwrap();
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
    let agent = vault_agent(Some(&pem), 1, true).unwrap();
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
    let agent = vault_agent(Some(&pem), 1, true).unwrap();
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
    let agent = vault_agent(None, 1, true).unwrap();
    let err = get(
        &agent,
        &format!("{}/secrets/s?api-version=7.5", emu.vault_url()),
        &[],
        Duration::from_secs(5),
    )
    .err()
    .unwrap();
    assert!(
        err.to_lowercase().contains("certificate") || err.to_lowercase().contains("unknown"),
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
