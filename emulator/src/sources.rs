//! The other managed-identity sources (protocol.md §2.2–2.5), each as its platform answers:
//! the legacy App Service / Azure ML endpoint (`MSI_ENDPOINT` + `MSI_SECRET`, api-version 2017-09-01),
//! Cloud Shell (`MSI_ENDPOINT` alone), Azure Arc (a 401 challenge naming a key file, then
//! `Authorization: Basic <key>`) and Service Fabric (HTTPS with a self-signed certificate, a
//! `Secret` header). The Entra endpoint for workload identity is in `entra.rs`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

use crate::entra::form;
use crate::http::{Request, Response};
use crate::identity::{imds_answer, mint};
use crate::state::{Identity, World, version_id};
use crate::time::legacy_expires_on;

/// The legacy App Service endpoint's path (the whole `MSI_ENDPOINT`).
pub const LEGACY_MSI_PATH: &str = "/msi/legacy-token";
/// The Cloud Shell endpoint's path (the whole `MSI_ENDPOINT`).
pub const CLOUD_SHELL_PATH: &str = "/cloudshell/token";
/// Where the Azure Arc agent's stand-in lives (`IMDS_ENDPOINT`).
pub const ARC_BASE: &str = "/arc";
/// The Azure Arc token path (`IDENTITY_ENDPOINT`).
pub const ARC_PATH: &str = "/arc/metadata/identity/oauth2/token";
/// The Service Fabric token path on its own HTTPS listener.
pub const SERVICE_FABRIC_PATH: &str = "/sf/token";

/// api-versions the Arc endpoint accepts: the ones the docs and SDKs send.
pub const ARC_API_VERSIONS: &[&str] = &["2019-08-15", "2019-11-01", "2020-06-01", "2021-02-01"];
const LEGACY_API_VERSION: &str = "2017-09-01";
const SERVICE_FABRIC_API_VERSION: &str = "2019-07-01-preview";

/// IMDS's error body, which Cloud Shell and the Arc agent share.
fn imds_error(status: u16, code: &str, text: &str) -> Response {
    Response::json(status, &json!({"error": code, "error_description": text}))
}

/// Legacy App Service / Azure ML: `GET ?api-version=2017-09-01&resource=…[&clientid=…]` with
/// `secret`. `expires_on` is epoch seconds (a JSON number), what the current SDKs parse (the
/// 2017-era date string with `set_legacy_date_expiry`); the selectors of other endpoints are
/// refused (docs/emulator.md says why).
pub fn legacy_msi(world: &mut World, req: &Request, secret: &str) -> Response {
    let fail = |status: u16, message: &str| {
        Response::json(status, &json!({"statusCode": status, "message": message}))
    };
    if req.method != "GET" {
        return fail(405, "Only GET is allowed");
    }
    if req.header("secret") != Some(secret) {
        return fail(401, "The secret header is missing or wrong");
    }
    if req.param("api-version").as_deref() != Some(LEGACY_API_VERSION) {
        return fail(400, "api-version must be 2017-09-01");
    }
    let Some(resource) = req.param("resource").filter(|r| !r.is_empty()) else {
        return fail(400, "Required audience parameter not specified");
    };
    if let Some(other) = LEGACY_REFUSED_SELECTORS
        .iter()
        .find(|k| req.param(k).is_some())
    {
        return fail(
            400,
            &format!("api-version 2017-09-01 selects an identity by clientid only, not {other}"),
        );
    }
    let selector = req.param("clientid");
    let identity = world.find_identity(selector.as_deref().map(|id| ("client_id", id)));
    let Some(identity) = identity else {
        return fail(400, "Unable to load the proper Managed Identity.");
    };
    let (access_token, _, exp) = mint(world, &identity, &resource);
    let shown = exp.saturating_add_signed(world.clock_skew);
    let expires_on = match world.legacy_date_expiry {
        true => json!(legacy_expires_on(shown)),
        false => json!(shown),
    };
    Response::json(
        200,
        &json!({
            "access_token": access_token,
            "expires_on": expires_on,
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}

/// Selectors other endpoints know that the legacy one refuses rather than ignore (ignoring
/// them would hand out the system identity to a caller that asked for another).
const LEGACY_REFUSED_SELECTORS: &[&str] = &[
    "client_id",
    "object_id",
    "principal_id",
    "msi_res_id",
    "mi_res_id",
];

/// Cloud Shell: `POST` with `Metadata: true` and the form body `resource=…`; the token is the
/// signed-in user's, whatever identities the host has.
pub fn cloud_shell(world: &mut World, req: &Request) -> Response {
    if req.method != "POST" {
        return imds_error(405, "method_not_allowed", "Only POST is allowed");
    }
    if req.header("metadata") != Some("true") {
        return imds_error(
            400,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    let params = form(req);
    let resource = params
        .iter()
        .find(|(k, _)| k == "resource")
        .map(|(_, v)| v.clone())
        .filter(|r| !r.is_empty());
    let Some(resource) = resource else {
        return imds_error(
            400,
            "invalid_request",
            "Required audience parameter not specified",
        );
    };
    let mut body = imds_answer(world, &Identity::user("cloud-shell-user"), &resource);
    if let Value::Object(map) = &mut body {
        map.remove("client_id");
    }
    Response::json(200, &body)
}

/// Azure Arc: `GET` with `Metadata: true`; without the right `Authorization: Basic <key>`, a
/// 401 whose `WWW-Authenticate: Basic realm=<path>` names a fresh key file in `key_dir`.
pub fn arc(world: &mut World, req: &Request, key_dir: &Path, realm_dir: &Path) -> Response {
    if req.method != "GET" {
        return imds_error(405, "method_not_allowed", "Only GET is allowed");
    }
    if req.header("metadata") != Some("true") {
        return imds_error(
            400,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    if !req
        .param("api-version")
        .is_some_and(|v| ARC_API_VERSIONS.contains(&v.as_str()))
    {
        return imds_error(
            400,
            "invalid_request",
            "api-version is invalid or was not specified in the request",
        );
    }
    let Some(resource) = req.param("resource").filter(|r| !r.is_empty()) else {
        return imds_error(
            400,
            "invalid_request",
            "Required audience parameter not specified",
        );
    };
    let presented = req
        .header("authorization")
        .and_then(|h| h.strip_prefix("Basic "));
    let latest = world.arc_key.as_ref().map(|(key, _)| key.as_str());
    if presented.is_none() || presented != latest || world.arc_rejects_keys {
        return challenge(world, key_dir, realm_dir);
    }
    let selectors = ["client_id", "object_id", "msi_res_id", "mi_res_id"];
    if req
        .query()
        .iter()
        .any(|(k, _)| selectors.contains(&k.as_str()))
    {
        return imds_error(
            400,
            "invalid_request",
            "Azure Arc supports only the system-assigned identity",
        );
    }
    let Some(identity) = world.system_identity.clone() else {
        return imds_error(400, "invalid_request", "Identity not found");
    };
    Response::json(200, &imds_answer(world, &identity, &resource))
}

/// The Arc challenge: write a new key (replacing the last key file), or name the configured
/// hostile realm without writing anything (then no key is valid).
fn challenge(world: &mut World, key_dir: &Path, realm_dir: &Path) -> Response {
    let realm = match world.arc_realm.clone() {
        Some(realm) => {
            world.arc_key = None;
            realm
        }
        None => match write_key(key_dir) {
            Ok((key, path)) => {
                if let Some((_, old)) = world.arc_key.replace((key, path.clone())) {
                    let _ = fs::remove_file(old);
                }
                realm_dir
                    .join(path.file_name().unwrap_or_default())
                    .display()
                    .to_string()
            }
            Err(e) => {
                return imds_error(
                    500,
                    "unknown",
                    &format!("could not write the key file: {e}"),
                );
            }
        },
    };
    imds_error(
        401,
        "unauthorized_client",
        "Authorization header with the key from the realm's file is required",
    )
    .with_header("WWW-Authenticate", &format!("Basic realm={realm}"))
}

/// A fresh key (64 hex digits) in a new `<id>.key` file of mode 0600 in `dir`.
fn write_key(dir: &Path) -> io::Result<(String, PathBuf)> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| io::Error::other("no randomness"))?;
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let path = dir.join(format!("{}.key", version_id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(key.as_bytes())?;
    Ok((key, path))
}

/// Service Fabric: `GET ?api-version=2019-07-01-preview&resource=…` with `Secret`; the
/// system-assigned identity only.
pub fn service_fabric(world: &mut World, req: &Request, secret: &str) -> Response {
    let fail = |status: u16, code: &str, message: &str| {
        Response::json(
            status,
            &json!({"error": {"code": code, "message": message}}),
        )
    };
    if req.method != "GET" {
        return fail(405, "MethodNotAllowed", "Only GET is allowed");
    }
    if req.header("secret") != Some(secret) {
        return fail(
            401,
            "SecretHeaderNotFound",
            "Secret is not found in the request headers or does not match.",
        );
    }
    match req.param("api-version").filter(|v| !v.is_empty()) {
        None => return fail(400, "ArgumentNullOrEmpty", "api-version is null or empty."),
        Some(v) if v != SERVICE_FABRIC_API_VERSION => {
            return fail(
                400,
                "InvalidApiVersion",
                &format!("api-version {v} is not supported; use {SERVICE_FABRIC_API_VERSION}."),
            );
        }
        Some(_) => {}
    }
    let Some(resource) = req.param("resource").filter(|r| !r.is_empty()) else {
        return fail(400, "ArgumentNullOrEmpty", "resource is null or empty.");
    };
    let Some(identity) = world.system_identity.clone() else {
        return fail(
            404,
            "ManagedIdentityNotFound",
            "Managed identity is not found for this application.",
        );
    };
    let (access_token, _, exp) = mint(world, &identity, &resource);
    Response::json(
        200,
        &json!({
            "access_token": access_token,
            "expires_on": exp.saturating_add_signed(world.clock_skew).to_string(),
            "token_type": "Bearer",
            "resource": resource,
        }),
    )
}
