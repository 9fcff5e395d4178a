//! The control API under `/emulator` on the plain listener, for scripts and the benchmark:
//! the same powers as the Rust methods on [`crate::Emulator`].
//!
//! | request | effect |
//! |---|---|
//! | `GET /emulator/counters` | the counters as JSON |
//! | `POST /emulator/counters/reset` | zero them |
//! | `PUT /emulator/secrets/NAME` (body: the value) | add a version; answers `{"version": id}` |
//! | `POST /emulator/secrets/NAME/disable` · `/enable` · `/deny` · `/allow` | as named |
//! | `PATCH /emulator/secrets/NAME` (body `{"managed":true,"tags":{"k":"v"},"exp":N,"nbf":N,"contentType":"t"}`, each optional) | change the latest version's attributes (tags are added) |
//! | `PUT /emulator/legacy-expiry` (body: `epoch` or `date`) | the legacy endpoint's `expires_on` form |
//! | `DELETE /emulator/secrets/NAME` | soft-delete |
//! | `POST /emulator/faults/imds` · `/faults/entra` · `/faults/keyvault` (body: a fault, see below) | queue one fault |
//! | `PUT /emulator/token-lifetime` (body: seconds) | lifetime of new tokens |
//! | `PUT /emulator/kv-delay` (body: milliseconds) | delay every vault answer |
//! | `PUT /emulator/system-identity` (body: `true`/`false`) | assign or remove it |
//! | `POST /emulator/identities` (body `{"name":"x"}`) | assign a user identity; answers its ids |
//! | `PUT /emulator/federations/CLIENT_ID` (body: the assertion) | as [`crate::Emulator::federate`]; answers the ids |
//! | `POST /emulator/assertions/expire` (body: the assertion) | answer it as expired (AADSTS700024) |
//!
//! Fault bodies, one per [`Fault`] variant: `{"status":429}`, `{"status":429,"retry_after":2}`,
//! `{"drop":true}`, `{"close_cleanly":true}`, `{"answer_then_close":true}`, `{"answer_then_hold":true}`, `{"delay_ms":500}`,
//! `{"huge_body":1048576}`, `{"endless_body":true}`,
//! `{"drip_ms":5}`, `{"invalid_utf8":200}`, `{"status":403,"code":"C","message":"M"}`,
//! `{"status":302,"location":"https://x"}`, `{"status":429,"header":"Retry-After","value":"0"}`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::http::{Request, Response};
use crate::state::{Fault, Identity, SecretInput, SecretPatch, World};

pub fn handle(world: &mut World, req: &Request, rest: &str) -> Response {
    let segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
    let body = String::from_utf8_lossy(&req.body).to_string();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["counters"]) => counters(world),
        ("POST", ["counters", "reset"]) => {
            world.counters = Default::default();
            ok()
        }
        ("PUT", ["secrets", name]) => {
            let id = world.set_secret(
                name,
                SecretInput {
                    value: body,
                    ..Default::default()
                },
            );
            Response::json(200, &json!({ "version": id }))
        }
        ("POST", ["secrets", name, action]) => secret_action(world, name, action),
        ("PATCH", ["secrets", name]) => match parse_patch(&body) {
            Some(patch) => found(world.patch_latest(name, patch)),
            None => bad(
                "body must be {\"managed\":bool,\"tags\":{…},\"exp\":N,\"nbf\":N,\"contentType\":S}",
            ),
        },
        ("PUT", ["legacy-expiry"]) => match body.trim() {
            "epoch" | "date" => {
                world.legacy_date_expiry = body.trim() == "date";
                ok()
            }
            _ => bad("body must be epoch or date"),
        },
        ("DELETE", ["secrets", name]) => found(world.delete(name)),
        ("POST", ["faults", endpoint]) => queue_fault(world, endpoint, &body),
        ("PUT", ["token-lifetime"]) => match body.trim().parse() {
            Ok(secs) => {
                world.token_lifetime = Duration::from_secs(secs);
                ok()
            }
            Err(_) => bad("body must be a number of seconds"),
        },
        ("PUT", ["kv-rate-limit"]) => match body.trim() {
            "none" => {
                world.kv_rate_limit = None;
                ok()
            }
            n => match n.parse() {
                Ok(n) => {
                    world.kv_rate_limit = Some(n);
                    world.kv_window = None;
                    ok()
                }
                Err(_) => bad("body must be requests per second, or none"),
            },
        },
        ("PUT", ["kv-delay"]) => match body.trim().parse() {
            Ok(ms) => {
                world.kv_delay = Duration::from_millis(ms);
                ok()
            }
            Err(_) => bad("body must be a number of milliseconds"),
        },
        ("PUT", ["system-identity"]) => {
            world.system_identity =
                (body.trim() == "true").then(|| Identity::user("system-assigned"));
            ok()
        }
        ("POST", ["identities"]) => add_identity(world, &body),
        ("PUT", ["federations", client_id]) => {
            ids(&crate::entra::federate(world, client_id, &body))
        }
        ("POST", ["assertions", "expire"]) => {
            world.expired_assertions.insert(body, crate::state::now());
            ok()
        }
        _ => Response::json(404, &json!({"error": "unknown control request"})),
    }
}

fn ok() -> Response {
    Response::json(200, &json!({"ok": true}))
}

fn bad(message: &str) -> Response {
    Response::json(400, &json!({ "error": message }))
}

fn found(yes: bool) -> Response {
    if yes {
        ok()
    } else {
        Response::json(404, &json!({"error": "no such secret"}))
    }
}

fn counters(world: &World) -> Response {
    let c = &world.counters;
    Response::json(
        200,
        &json!({
            "imds_token_requests": c.imds_token_requests,
            "app_service_token_requests": c.app_service_token_requests,
            "entra_token_requests": c.entra_token_requests,
            "entra_assertions": c.entra_assertions,
            "entra_discovery_requests": c.entra_discovery_requests,
            "issued_to": c.issued_to,
            "legacy_msi_token_requests": c.legacy_msi_token_requests,
            "cloud_shell_token_requests": c.cloud_shell_token_requests,
            "arc_token_requests": c.arc_token_requests,
            "service_fabric_token_requests": c.service_fabric_token_requests,
            "kv_requests": c.kv_requests,
            "kv_total_requests": c.kv_total_requests,
            "kv_connections": c.kv_connections,
            "kv_full_tls_handshakes": c.kv_full_tls_handshakes,
            "kv_unauthenticated": c.kv_unauthenticated,
            "kv_max_concurrent": c.kv_max_concurrent,
            "kv_list_requests": c.kv_list_requests,
            "kv_throttled": c.kv_throttled,
        }),
    )
}

fn secret_action(world: &mut World, name: &str, action: &str) -> Response {
    match action {
        "disable" => found(world.set_enabled(name, false)),
        "enable" => found(world.set_enabled(name, true)),
        "deny" => {
            world.denied.insert(name.to_ascii_lowercase());
            ok()
        }
        "allow" => {
            world.denied.remove(&name.to_ascii_lowercase());
            ok()
        }
        _ => bad("action must be disable, enable, deny or allow"),
    }
}

/// Parse a fault description (the bodies listed at the top of this file).
pub fn parse_fault(body: &str) -> Option<Fault> {
    let v: Value = serde_json::from_str(body).ok()?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    let status_of = |k: &str| u16::try_from(v.get(k)?.as_u64()?).ok();
    if v.get("drop").and_then(Value::as_bool) == Some(true) {
        return Some(Fault::Drop);
    }
    if v.get("close_cleanly").and_then(Value::as_bool) == Some(true) {
        return Some(Fault::CloseCleanly);
    }
    if v.get("answer_then_close").and_then(Value::as_bool) == Some(true) {
        return Some(Fault::AnswerThenClose);
    }
    if v.get("answer_then_hold").and_then(Value::as_bool) == Some(true) {
        return Some(Fault::AnswerThenHold);
    }
    if v.get("endless_body").and_then(Value::as_bool) == Some(true) {
        return Some(Fault::EndlessBody);
    }
    if let Some(ms) = v.get("delay_ms").and_then(Value::as_u64) {
        return Some(Fault::Delay(Duration::from_millis(ms)));
    }
    if let Some(ms) = v.get("drip_ms").and_then(Value::as_u64) {
        return Some(Fault::Drip(Duration::from_millis(ms)));
    }
    if let Some(ms) = v.get("drip_body_ms").and_then(Value::as_u64) {
        return Some(Fault::DripBody(Duration::from_millis(ms)));
    }
    if let Some(len) = v.get("huge_body").and_then(Value::as_u64) {
        return Some(Fault::HugeBody(usize::try_from(len).ok()?));
    }
    if let Some(status) = status_of("invalid_utf8") {
        return Some(Fault::InvalidUtf8(status));
    }
    let status = status_of("status")?;
    if let (Some(code), Some(message)) = (text("code"), text("message")) {
        return Some(Fault::ErrorText {
            status,
            code,
            message,
        });
    }
    if let Some(location) = text("location") {
        return Some(Fault::Redirect { status, location });
    }
    if let (Some(name), Some(value)) = (text("header"), text("value")) {
        return Some(Fault::Header {
            status,
            name,
            value,
        });
    }
    Some(match v.get("retry_after").and_then(Value::as_u64) {
        Some(secs) => Fault::StatusRetryAfter(status, secs),
        None => Fault::Status(status),
    })
}

fn queue_fault(world: &mut World, endpoint: &str, body: &str) -> Response {
    let Some(fault) = parse_fault(body) else {
        return bad(
            "body must be a fault: {\"status\":N[,\"retry_after\":S]}, {\"drop\":true}, {\"close_cleanly\":true}, {\"answer_then_close\":true}, {\"answer_then_hold\":true}, {\"delay_ms\":N}, {\"huge_body\":N}, {\"endless_body\":true}, {\"drip_ms\":N}, {\"invalid_utf8\":N}, {\"status\":N,\"code\":C,\"message\":M}, {\"status\":N,\"location\":L} or {\"status\":N,\"header\":H,\"value\":V}",
        );
    };
    match endpoint {
        "imds" => world.imds_faults.push_back(fault),
        "entra" => world.entra_faults.push_back(fault),
        "keyvault" => world.kv_faults.push_back(fault),
        _ => return bad("endpoint must be imds, entra or keyvault"),
    }
    ok()
}

fn add_identity(world: &mut World, body: &str) -> Response {
    let name = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("name").and_then(Value::as_str).map(String::from))
        .unwrap_or_else(|| "user".into());
    let identity = Identity::user(&name);
    world.user_identities.push(identity.clone());
    ids(&identity)
}

fn ids(identity: &Identity) -> Response {
    Response::json(
        200,
        &json!({
            "client_id": identity.client_id,
            "object_id": identity.object_id,
            "resource_id": identity.resource_id,
        }),
    )
}

/// Parse a `PATCH /emulator/secrets/NAME` body; None when it is not an object of the known
/// fields with the right types.
pub fn parse_patch(body: &str) -> Option<SecretPatch> {
    let v: Value = serde_json::from_str(body).ok()?;
    let map = v.as_object()?;
    let mut patch = SecretPatch::default();
    for (key, value) in map {
        match key.as_str() {
            "managed" => patch.managed = Some(value.as_bool()?),
            "exp" => patch.exp = Some(value.as_u64()?),
            "nbf" => patch.nbf = Some(value.as_u64()?),
            "contentType" => patch.content_type = Some(value.as_str()?.to_string()),
            "tags" => {
                for (k, t) in value.as_object()? {
                    patch.tags.insert(k.clone(), t.as_str()?.to_string());
                }
            }
            _ => return None,
        }
    }
    Some(patch)
}
