//! The Key Vault secrets data plane: get, list (with absolute `nextLink` paging), list versions,
//! and the writes (set, update, delete) that the SDK recordings replay. Errors use the service's
//! `{"error":{"code","message","innererror"}}` envelope and its AKV messages.

use serde_json::{Map, Value, json};

use crate::hostile;
use crate::http::{Request, Response};
use crate::state::{SecretInput, Version, World, now};

/// api-versions the emulated vault accepts.
pub const API_VERSIONS: &[&str] = &[
    "2016-10-01",
    "7.0",
    "7.1",
    "7.2",
    "7.3",
    "7.4",
    "7.4-preview.1",
    "7.5",
    "7.6",
    "2025-07-01",
    "2026-04-01",
];

const AUDIENCE: &str = "https://vault.azure.net";

/// What the handler needs besides the world: the tenant for challenges.
pub struct Ctx<'a> {
    pub tenant_id: &'a str,
}

/// The secret name a request is about, for counters (None for list calls).
pub fn secret_name(req: &Request) -> Option<String> {
    let rest = req.path.strip_prefix("/secrets/")?;
    let name = rest.split('/').next()?;
    (!name.is_empty()).then(|| name.to_string())
}

/// How the vault shapes fault answers (see [`crate::hostile`]).
pub struct Faults<'a> {
    pub tenant_id: &'a str,
}

impl hostile::Service for Faults<'_> {
    fn usual_error(&self, status: u16) -> (&'static str, &'static str) {
        match status {
            401 => ("Unauthorized", "AKV10011: Token expired."),
            429 => (
                "Throttled",
                "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached",
            ),
            503 => (
                "ServiceUnavailable",
                "The service is temporarily unavailable. Please retry.",
            ),
            _ => ("InternalServerError", "An unexpected error occurred."),
        }
    }

    fn envelope(&self, code: &str, message: &str) -> Value {
        error_body(code, message, Some(code))
    }

    fn status_error(&self, status: u16) -> Response {
        let (code, message) = self.usual_error(status);
        if status == 401 {
            return unauthorized(self.tenant_id, message);
        }
        if (300..400).contains(&status) {
            return Response::text(status, "Moved")
                .with_header("Location", "https://elsewhere.example/secrets/moved");
        }
        Response::json(status, &error_body(code, message, None))
    }

    fn success_shape(&self) -> Value {
        json!({ "value": hostile::MARKER })
    }
}

/// Answer one Key Vault request (after faults and counters).
pub fn handle(world: &mut World, req: &Request, ctx: &Ctx) -> Response {
    let Some(api_version) = req.param("api-version") else {
        return bad_parameter("api-version query parameter is missing.");
    };
    if !API_VERSIONS.contains(&api_version.as_str()) {
        return bad_parameter(&format!(
            "The specified version ({api_version}) is not recognized. Consider using the latest supported version (2026-04-01)."
        ));
    }
    if let Err(response) = authenticate(world, req, ctx) {
        return response;
    }
    let host = req.header("host").unwrap_or("localhost").to_string();
    let base = format!("https://{host}");
    let segments: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["secrets"]) => list(world, req, &base, &api_version, None),
        ("GET", ["secrets", name, "versions"]) => list(world, req, &base, &api_version, Some(name)),
        ("GET", ["secrets", name]) => get(world, req, &base, name, None),
        ("GET", ["secrets", name, version]) => get(world, req, &base, name, Some(version)),
        ("PUT", ["secrets", name]) => set(world, req, &base, name),
        ("PATCH", ["secrets", name, version]) => update(world, req, &base, name, version),
        ("DELETE", ["secrets", name]) => delete(world, &base, name),
        _ => Response::json(
            404,
            &error_body("NotFound", "The requested resource was not found.", None),
        ),
    }
}

fn bad_parameter(message: &str) -> Response {
    Response::json(400, &error_body("BadParameter", message, None))
}

/// The error envelope; `inner` becomes `innererror.code`.
pub fn error_body(code: &str, message: &str, inner: Option<&str>) -> Value {
    let mut error = json!({"code": code, "message": message});
    if let Some(inner) = inner {
        error["innererror"] = json!({"code": inner});
    }
    json!({ "error": error })
}

fn authenticate(world: &mut World, req: &Request, ctx: &Ctx) -> Result<(), Response> {
    let token = req
        .header("authorization")
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim);
    let message = match token.map(|t| world.tokens.get(t)) {
        None => {
            world.counters.kv_unauthenticated += 1;
            "AKV10000: Request is missing a Bearer or PoP token."
        }
        Some(None) => {
            "AKV10032: Invalid issuer or signature: the token was not issued for this tenant."
        }
        Some(Some(t)) if t.audience != AUDIENCE => {
            "AKV10022: Invalid audience. Expected https://vault.azure.net."
        }
        Some(Some(t)) if t.expires_on <= now() => "AKV10011: Token expired.",
        Some(Some(_)) => return Ok(()),
    };
    Err(unauthorized(ctx.tenant_id, message))
}

/// A 401 with the service's challenge header.
fn unauthorized(tenant_id: &str, message: &str) -> Response {
    let challenge = format!(
        "Bearer authorization=\"https://login.windows.net/{tenant_id}\", resource=\"{AUDIENCE}\""
    );
    Response::json(401, &error_body("Unauthorized", message, None))
        .with_header("WWW-Authenticate", &challenge)
}

fn attributes(v: &Version) -> Value {
    let mut a = json!({
        "enabled": v.enabled,
        "created": v.created,
        "updated": v.updated,
        "recoveryLevel": "Recoverable+Purgeable",
        "recoverableDays": 90,
    });
    if let Some(exp) = v.exp {
        a["exp"] = json!(exp);
    }
    if let Some(nbf) = v.nbf {
        a["nbf"] = json!(nbf);
    }
    a
}

fn bundle(base: &str, name: &str, v: &Version, with_value: bool, with_version: bool) -> Value {
    let id = if with_version {
        format!("{base}/secrets/{name}/{}", v.id)
    } else {
        format!("{base}/secrets/{name}")
    };
    let mut b = Map::new();
    if with_value {
        b.insert("value".into(), json!(v.value));
    }
    b.insert("id".into(), json!(id));
    if let Some(ct) = &v.content_type {
        b.insert("contentType".into(), json!(ct));
    }
    b.insert("attributes".into(), attributes(v));
    if !v.tags.is_empty() {
        b.insert("tags".into(), json!(v.tags));
    }
    if v.managed {
        b.insert("managed".into(), json!(true));
        b.insert("kid".into(), json!(format!("{base}/keys/{name}/{}", v.id)));
    }
    Value::Object(b)
}

fn not_found(name: &str) -> Response {
    Response::json(
        404,
        &error_body(
            "SecretNotFound",
            &format!(
                "A secret with (name/id) {name} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
            ),
            None,
        ),
    )
}

fn get(
    world: &mut World,
    _req: &Request,
    base: &str,
    name: &str,
    version: Option<&str>,
) -> Response {
    if world.denied.contains(&name.to_ascii_lowercase()) {
        if world.access_policies {
            return denied_by_policy(base, "get");
        }
        let resource = format!("secrets/{name}");
        return forbidden_by_rbac(
            base,
            &resource,
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
        );
    }
    let Some(secret) = world.secret(name) else {
        return not_found(name);
    };
    let found = match version.filter(|v| !v.is_empty()) {
        None => secret.latest(),
        Some(ver) => secret
            .versions
            .iter()
            .find(|v| v.id.eq_ignore_ascii_case(ver)),
    };
    let Some(v) = found else {
        return not_found(&format!("{name}/{}", version.unwrap_or_default()));
    };
    if !v.enabled {
        return Response::json(
            403,
            &error_body(
                "Forbidden",
                "Operation get is not allowed on a disabled secret.",
                Some("SecretDisabled"),
            ),
        );
    }
    Response::json(200, &bundle(base, &secret.name, v, true, true))
}

/// A vault on the access-policy model (protocol.md §3: 403 `Forbidden` / `AccessDenied`).
fn denied_by_policy(base: &str, permission: &str) -> Response {
    let message = format!(
        "The user, group or application 'appid=00000000-0000-0000-0000-000000000000;oid=00000000-0000-0000-0000-000000000000;iss=https://sts.windows.net/00000000-0000-0000-0000-000000000000/' does not have secrets {permission} permission on key vault '{base};location=westeurope'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287"
    );
    Response::json(
        403,
        &error_body("Forbidden", &message, Some("AccessDenied")),
    )
}

fn forbidden_by_rbac(base: &str, resource: &str, action: &str) -> Response {
    let message = format!(
        "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nAction: '{action}'\r\nResource: '{base}/{resource}'\r\nAssignment: (not found)\r\n"
    );
    Response::json(
        403,
        &error_body("Forbidden", &message, Some("ForbiddenByRbac")),
    )
}

fn list(
    world: &World,
    req: &Request,
    base: &str,
    api_version: &str,
    name: Option<&str>,
) -> Response {
    if world.list_denied {
        if world.access_policies {
            return denied_by_policy(base, "list");
        }
        return forbidden_by_rbac(
            base,
            "secrets",
            "Microsoft.KeyVault/vaults/secrets/readMetadata/action",
        );
    }
    if let (Some(flood), None) = (world.list_flood, name) {
        return flood_page(req, base, api_version, flood, world.list_flood_kind);
    }
    let max: usize = match req.param("maxresults").map(|m| m.parse::<usize>()) {
        None => world.list_page_size.unwrap_or(25),
        Some(Ok(n)) if (1..=25).contains(&n) => n,
        Some(_) => {
            return bad_parameter("Invalid value for maxresults: it must be between 1 and 25.");
        }
    };
    // `$skiptoken=N` resumes at item N; `N-empty` is the empty page served before it.
    let token = req.param("$skiptoken").unwrap_or_default();
    let (skip, empty) = match token.strip_suffix("-empty") {
        Some(n) => (n.parse().unwrap_or(0), true),
        None => (token.parse().unwrap_or(0), false),
    };
    let items: Vec<Value> = match name {
        None => world
            .secrets
            .values()
            .filter(|s| !s.deleted)
            .filter_map(|s| s.latest().map(|v| bundle(base, &s.name, v, false, false)))
            .collect(),
        Some(n) => match world.secret(n) {
            Some(s) => s
                .versions
                .iter()
                .map(|v| bundle(base, &s.name, v, false, true))
                .collect(),
            None => return not_found(n),
        },
    };
    let path = name.map_or("secrets".to_string(), |n| format!("secrets/{n}/versions"));
    let link = |token: String| {
        format!("{base}/{path}?api-version={api_version}&$skiptoken={token}&maxresults={max}")
    };
    if empty {
        return Response::json(
            200,
            &json!({"value": [], "nextLink": link(skip.to_string())}),
        );
    }
    let page: Vec<Value> = items.iter().skip(skip).take(max).cloned().collect();
    let next = (skip + max < items.len()).then(|| {
        let suffix = if world.empty_pages { "-empty" } else { "" };
        link(format!("{}{suffix}", skip + max))
    });
    Response::json(200, &json!({"value": page, "nextLink": next}))
}

/// One page of a generated list (see `Emulator::set_list_flood`): `$skiptoken` is the page.
fn flood_page(
    req: &Request,
    base: &str,
    api_version: &str,
    (per_page, pages): (usize, usize),
    kind: crate::state::FloodKind,
) -> Response {
    let page: usize = req
        .param("$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let mut body = String::from("{\"value\":[");
    for i in 0..per_page {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&match kind {
            crate::state::FloodKind::Plain => format!("{{\"id\":\"{base}/secrets/f{page}x{i}\"}}"),
            crate::state::FloodKind::InvalidIds => {
                format!("{{\"id\":\"{base}/secrets/bad_name_{page}_{i}\"}}")
            }
            crate::state::FloodKind::Disabled => format!(
                "{{\"id\":\"{base}/secrets/f{page}x{i}\",\"attributes\":{{\"enabled\":false}}}}"
            ),
        });
    }
    body.push_str("],\"nextLink\":");
    if page + 1 < pages {
        let next = page + 1;
        body.push_str(&format!(
            "\"{base}/secrets?api-version={api_version}&$skiptoken={next}\"}}"
        ));
    } else {
        body.push_str("null}");
    }
    Response {
        status: 200,
        headers: vec![(
            "Content-Type".into(),
            "application/json; charset=utf-8".into(),
        )],
        body: body.into_bytes(),
    }
}

fn input_from(req: &Request) -> Result<SecretInput, Response> {
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|_| bad_parameter("The request body is not valid JSON."))?;
    let Some(value) = body.get("value").and_then(Value::as_str) else {
        return Err(bad_parameter("Property 'value' is required."));
    };
    let attrs = body.get("attributes");
    Ok(SecretInput {
        value: value.to_string(),
        content_type: body
            .get("contentType")
            .and_then(Value::as_str)
            .map(String::from),
        enabled: attrs
            .and_then(|a| a.get("enabled"))
            .and_then(Value::as_bool),
        exp: attrs.and_then(|a| a.get("exp")).and_then(Value::as_u64),
        nbf: attrs.and_then(|a| a.get("nbf")).and_then(Value::as_u64),
        tags: body
            .get("tags")
            .and_then(Value::as_object)
            .map(|t| {
                t.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        managed: false,
    })
}

fn set(world: &mut World, req: &Request, base: &str, name: &str) -> Response {
    let input = match input_from(req) {
        Ok(i) => i,
        Err(r) => return r,
    };
    world.set_secret(name, input);
    let secret = world.secret(name).expect("just written");
    Response::json(
        200,
        &bundle(
            base,
            &secret.name,
            secret.latest().expect("one version"),
            true,
            true,
        ),
    )
}

fn update(world: &mut World, req: &Request, base: &str, name: &str, version: &str) -> Response {
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    let Some(secret) = world.secret_mut(name) else {
        return not_found(name);
    };
    let secret_name = secret.name.clone();
    let Some(v) = secret
        .versions
        .iter_mut()
        .find(|v| v.id.eq_ignore_ascii_case(version))
    else {
        return not_found(&format!("{name}/{version}"));
    };
    if let Some(ct) = body.get("contentType").and_then(Value::as_str) {
        v.content_type = Some(ct.to_string());
    }
    if let Some(enabled) = body.pointer("/attributes/enabled").and_then(Value::as_bool) {
        v.enabled = enabled;
    }
    if let Some(exp) = body.pointer("/attributes/exp").and_then(Value::as_u64) {
        v.exp = Some(exp);
    }
    if let Some(nbf) = body.pointer("/attributes/nbf").and_then(Value::as_u64) {
        v.nbf = Some(nbf);
    }
    if let Some(tags) = body.get("tags").and_then(Value::as_object) {
        v.tags = tags
            .iter()
            .map(|(k, t)| (k.clone(), t.as_str().unwrap_or_default().to_string()))
            .collect();
    }
    v.updated = now();
    Response::json(200, &bundle(base, &secret_name, v, false, true))
}

fn delete(world: &mut World, base: &str, name: &str) -> Response {
    let Some(secret) = world.secret(name) else {
        return not_found(name);
    };
    let mut b = bundle(
        base,
        &secret.name,
        secret.latest().expect("one version"),
        false,
        true,
    );
    let t = now();
    b["recoveryId"] = json!(format!("{base}/deletedsecrets/{}", secret.name));
    b["deletedDate"] = json!(t);
    b["scheduledPurgeDate"] = json!(t + 90 * 86400);
    world.delete(name);
    Response::json(200, &b)
}
