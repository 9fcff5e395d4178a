//! The Entra ID (v2) token endpoint, for AKS workload identity: `POST /{tenant}/oauth2/v2.0/token`
//! with a client-credentials grant whose client assertion is the projected service-account
//! token (protocol.md §2.6).
//!
//! Kept as Entra has it: `expires_in` and `ext_expires_in` are JSON numbers (not strings as in
//! IMDS), and errors carry `error`, `error_description` (`AADSTSnnnnnn: …` followed by the trace
//! lines), `error_codes`, `timestamp`, `trace_id`, `correlation_id` and `error_uri`.

use serde_json::{Value, json};

use crate::hostile;
use crate::http::{Request, Response, parse_query};
use crate::identity::mint;
use crate::state::{Federation, Identity, World, guid, now, version_id};
use crate::time::{entra_iso, entra_timestamp};

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const SCOPE_SUFFIX: &str = "/.default";

/// The tenant in a token endpoint path (`/{tenant}/oauth2/v2.0/token`), if the path is one.
pub fn tenant_of(path: &str) -> Option<&str> {
    path.strip_suffix("/oauth2/v2.0/token")?
        .strip_prefix('/')
        .filter(|t| !t.is_empty() && !t.contains('/'))
}

/// The form body's parameters; none unless the body is declared form-urlencoded.
pub fn form(req: &Request) -> Vec<(String, String)> {
    let is_form = req.header("content-type").is_some_and(|c| {
        c.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    if !is_form {
        return Vec::new();
    }
    parse_query(&String::from_utf8_lossy(&req.body))
}

/// Register `client_id` with a federated credential that accepts exactly `assertion`,
/// replacing the assertion it accepted before (a rotated token file).
pub fn federate(world: &mut World, client_id: &str, assertion: &str) -> Identity {
    if let Some(f) = world
        .federations
        .iter_mut()
        .find(|f| f.identity.client_id.eq_ignore_ascii_case(client_id))
    {
        f.assertion = assertion.to_string();
        return f.identity.clone();
    }
    let identity = Identity {
        client_id: client_id.to_string(),
        object_id: guid(&format!("federated-object-{client_id}")),
        resource_id: format!(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/federated-{client_id}"
        ),
    };
    world.federations.push(Federation {
        identity: identity.clone(),
        assertion: assertion.to_string(),
    });
    identity
}

/// Answer a token request for `tenant` (after counters and faults).
pub fn token(world: &mut World, req: &Request, tenant: &str) -> Response {
    if !tenant.eq_ignore_ascii_case(&world.tenant_id) {
        return error(
            400,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        );
    }
    if req.method != "POST" {
        return error(
            400,
            "invalid_request",
            900561,
            &format!(
                "The endpoint only accepts POST, OPTIONS requests. Received a {} request.",
                req.method
            ),
        );
    }
    let params = form(req);
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let missing = |name: &str| {
        error(
            400,
            "invalid_request",
            900144,
            &format!("The request body must contain the following parameter: '{name}'."),
        )
    };
    let Some(grant_type) = param("grant_type") else {
        return missing("grant_type");
    };
    if grant_type != "client_credentials" {
        return error(
            400,
            "invalid_request",
            70003,
            &format!("The app requested an unsupported grant type '{grant_type}'."),
        );
    }
    let Some(client_id) = param("client_id") else {
        return missing("client_id");
    };
    let Some(scope) = param("scope") else {
        return missing("scope");
    };
    let Some(assertion) = param("client_assertion") else {
        return error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    };
    match param("client_assertion_type") {
        None => return missing("client_assertion_type"),
        Some(t) if t != ASSERTION_TYPE => {
            return error(
                400,
                "invalid_request",
                90011,
                &format!("Unexpected client assertion type '{t}'."),
            );
        }
        Some(_) => {}
    }
    let Some(resource) = scope.strip_suffix(SCOPE_SUFFIX).filter(|r| !r.is_empty()) else {
        return error(
            400,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    };
    let Some(federation) = world
        .federations
        .iter()
        .find(|f| f.identity.client_id.eq_ignore_ascii_case(client_id))
        .cloned()
    else {
        return error(
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                world.tenant_id
            ),
        );
    };
    if let Some(&expired_at) = world.expired_assertions.get(assertion) {
        let claims = assertion_claims(assertion);
        let from = claims.get("nbf").and_then(Value::as_u64).unwrap_or(0);
        let until = claims
            .get("exp")
            .and_then(Value::as_u64)
            .unwrap_or(expired_at);
        return error(
            400,
            "invalid_client",
            700024,
            &format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                entra_iso(now()),
                entra_iso(from),
                entra_iso(until)
            ),
        );
    }
    if federation.assertion != assertion {
        let claims = assertion_claims(assertion);
        let claim = |k: &str| {
            claims
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        return error(
            401,
            "invalid_client",
            70021,
            &format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{}'. Assertion Subject: '{}'. Assertion Audience: '{}'. https://docs.microsoft.com/en-us/azure/active-directory/develop/workload-identity-federation",
                claim("iss"),
                claim("sub"),
                claim("aud")
            ),
        );
    }
    let (access_token, iat, exp) = mint(world, &federation.identity, resource);
    let lifetime = exp - iat;
    Response::json(
        200,
        &json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        }),
    )
}

/// The claims of an assertion that is JWT-shaped (empty otherwise), for error messages.
fn assertion_claims(assertion: &str) -> serde_json::Map<String, Value> {
    assertion
        .split('.')
        .nth(1)
        .and_then(crate::b64::decode)
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

/// Entra's error envelope; the description carries the trace lines as Entra's does.
fn envelope(code: &str, number: Option<u64>, description: &str) -> Value {
    let (trace_id, correlation_id) = (guid(&version_id()), guid(&version_id()));
    let timestamp = entra_timestamp(now());
    let mut body = json!({
        "error": code,
        "error_description": format!(
            "{description}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        ),
        "error_codes": number.map_or_else(Vec::new, |n| vec![n]),
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
    });
    if let Some(n) = number {
        body["error_uri"] = json!(format!("https://login.microsoftonline.com/error?code={n}"));
    }
    body
}

fn error(status: u16, code: &str, number: u64, text: &str) -> Response {
    Response::json(
        status,
        &envelope(code, Some(number), &format!("AADSTS{number}: {text}")),
    )
}

/// How the Entra endpoint shapes fault answers (see [`crate::hostile`]).
pub struct Faults {
    /// Lifetime the success shape advertises.
    pub token_lifetime: u64,
}

impl hostile::Service for Faults {
    fn usual_error(&self, status: u16) -> (&'static str, &'static str) {
        match status {
            400 => (
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
            ),
            401 => (
                "invalid_client",
                "AADSTS70021: No matching federated identity record found for presented assertion.",
            ),
            429 => (
                "temporarily_unavailable",
                "AADSTS50196: The server terminated an operation because it encountered a client request loop.",
            ),
            503 => (
                "temporarily_unavailable",
                "AADSTS90033: A transient error has occurred. Please try again.",
            ),
            _ => (
                "server_error",
                "AADSTS50000: There was an error issuing a token or an issue with our sign-in service.",
            ),
        }
    }

    /// The `AADSTSnnnnnn:` number at the start of `message`, if any, goes into `error_codes`.
    fn envelope(&self, code: &str, message: &str) -> Value {
        let number = message
            .strip_prefix("AADSTS")
            .and_then(|m| m.split(':').next())
            .and_then(|n| n.parse().ok());
        envelope(code, number, message)
    }

    fn success_shape(&self) -> Value {
        json!({
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "ext_expires_in": self.token_lifetime,
            "access_token": hostile::MARKER,
        })
    }
}

/// The tenant in an OIDC discovery path (`/{tenant}/v2.0/.well-known/openid-configuration`), if
/// the path is one.
pub fn discovery_tenant_of(path: &str) -> Option<&str> {
    path.strip_suffix("/v2.0/.well-known/openid-configuration")?
        .strip_prefix('/')
        .filter(|t| !t.is_empty() && !t.contains('/'))
}

/// The OIDC discovery document Entra serves for `tenant` at `base` (the HTTPS authority host),
/// with the fields MSAL reads (`authorization_endpoint`, `token_endpoint`, `issuer`) and the
/// usual companions; an unknown tenant gets Entra's AADSTS90002 answer.
pub fn openid_configuration(world: &World, base: &str, tenant: &str) -> Response {
    if !tenant.eq_ignore_ascii_case(&world.tenant_id) {
        return error(
            400,
            "invalid_tenant",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    let t = format!("{base}/{}", world.tenant_id);
    Response::json(
        200,
        &json!({
            "token_endpoint": format!("{t}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{t}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": format!("{t}/v2.0"),
            "request_uri_parameter_supported": false,
            "authorization_endpoint": format!("{t}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{t}/oauth2/v2.0/devicecode"),
            "end_session_endpoint": format!("{t}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "ver"],
            "tenant_region_scope": "WW",
            "cloud_instance_name": "microsoftonline.com",
        }),
    )
}
