//! The two main managed-identity token endpoints: IMDS (`/metadata/identity/oauth2/token`) and
//! the App Service / Container Apps endpoint (`IDENTITY_ENDPOINT` + `X-IDENTITY-HEADER`); and
//! the token minting every identity source shares (the other sources are in `sources.rs` and
//! `entra.rs`).
//!
//! Quirks kept on purpose: every number in an IMDS answer is a JSON string, App Service answers
//! have an epoch-string `expires_on` and no `expires_in`, and each endpoint has its own error
//! body shape.

use serde_json::{Value, json};

use crate::b64;
use crate::hostile;
use crate::http::{Reply, Request, Response};
use crate::state::{Identity, IssuedToken, World, now};

/// Which of the two endpoints a request came to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Imds,
    AppService,
}

/// Answer a token request on either endpoint (after counters and faults).
pub fn token(world: &mut World, req: &Request, flavour: Flavour, header: &str) -> Reply {
    if req.method != "GET" {
        return error(flavour, 405, "method_not_allowed", "Only GET is allowed");
    }
    if let Err(reply) = check_request(req, flavour, header) {
        return reply;
    }
    let Some(resource) = req.param("resource").filter(|r| !r.is_empty()) else {
        return error(
            flavour,
            400,
            "invalid_request",
            "Required audience parameter not specified",
        );
    };
    let selectors: &[&str] = match flavour {
        Flavour::Imds => &["client_id", "object_id", "msi_res_id"],
        Flavour::AppService => &["client_id", "principal_id", "object_id", "mi_res_id"],
    };
    let query = req.query();
    let chosen: Vec<(&str, String)> = selectors
        .iter()
        .filter_map(|s| {
            query
                .iter()
                .find(|(k, _)| k == s)
                .map(|(_, v)| (*s, v.clone()))
        })
        .collect();
    if chosen.len() > 1 {
        return error(
            flavour,
            400,
            "invalid_request",
            "Only one of client_id, object_id or msi_res_id may be given",
        );
    }
    let selector = chosen.first().map(|(k, v)| (*k, v.as_str()));
    let Some(identity) = world.find_identity(selector) else {
        // What each platform really says (App Service / Container Apps: protocol.md §2.1).
        let text = match flavour {
            Flavour::Imds => "Identity not found",
            Flavour::AppService => "Unable to load the proper Managed Identity.",
        };
        return error(flavour, 400, "invalid_request", text);
    };
    let body = issue(world, &identity, &resource, flavour, selector);
    Reply::Respond(Response::json(200, &body))
}

fn check_request(req: &Request, flavour: Flavour, header: &str) -> Result<(), Reply> {
    if req.header("x-forwarded-for").is_some() {
        return Err(error(
            flavour,
            400,
            "invalid_request",
            "Request contains X-Forwarded-For header",
        ));
    }
    match flavour {
        Flavour::Imds => {
            if req.header("metadata") != Some("true") {
                return Err(error(
                    flavour,
                    400,
                    "invalid_request",
                    "Required metadata header not specified",
                ));
            }
            let query = req.query();
            let mut names: Vec<&str> = query.iter().map(|(k, _)| k.as_str()).collect();
            names.sort_unstable();
            if names.windows(2).any(|w| w[0] == w[1]) {
                return Err(error(
                    flavour,
                    400,
                    "invalid_request",
                    "Duplicate query parameter",
                ));
            }
            match req.param("api-version").as_deref() {
                Some(v) if v >= "2018-02-01" && v.len() == 10 => Ok(()),
                _ => Err(Reply::Respond(Response::json(
                    400,
                    &json!({"error": "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds", "newest-versions": ["2023-07-01", "2021-12-13", "2021-11-15"]}),
                ))),
            }
        }
        Flavour::AppService => {
            if req.header("x-identity-header") != Some(header) {
                return Err(error(
                    flavour,
                    401,
                    "unauthorized",
                    "The X-IDENTITY-HEADER header is missing or wrong",
                ));
            }
            match req.param("api-version").as_deref() {
                Some("2019-08-01") => Ok(()),
                _ => Err(error(
                    flavour,
                    400,
                    "invalid_request",
                    "api-version must be 2019-08-01",
                )),
            }
        }
    }
}

/// How IMDS shapes fault answers (see [`crate::hostile`]).
pub struct ImdsFaults {
    /// Lifetime the success shape advertises.
    pub token_lifetime: u64,
}

impl hostile::Service for ImdsFaults {
    fn usual_error(&self, status: u16) -> (&'static str, &'static str) {
        match status {
            404 => ("not_found", "IMDS endpoint is updating"),
            410 => (
                "service_unavailable",
                "IMDS is going through updates; IMDS will be available within 70 seconds",
            ),
            429 => ("too_many_requests", "IMDS Throttle limit reached"),
            500 => (
                "unknown",
                "Failed to retrieve token from the Active directory. For details see logs in C:\\User1\\Logs\\imds.log",
            ),
            _ => ("server_error", "Transient error"),
        }
    }

    fn envelope(&self, code: &str, message: &str) -> Value {
        json!({"error": code, "error_description": message})
    }

    fn success_shape(&self) -> Value {
        let lifetime = self.token_lifetime;
        json!({
            "access_token": hostile::MARKER,
            "expires_in": lifetime.to_string(),
            "expires_on": (now() + lifetime).to_string(),
            "resource": "https://vault.azure.net",
            "token_type": "Bearer",
        })
    }
}

fn error(flavour: Flavour, status: u16, code: &str, text: &str) -> Reply {
    let body = match flavour {
        Flavour::Imds => json!({"error": code, "error_description": text}),
        Flavour::AppService => {
            json!({"statusCode": status, "message": text, "correlationId": crate::state::guid(text)})
        }
    };
    Reply::Respond(Response::json(status, &body))
}

fn issue(
    world: &mut World,
    identity: &Identity,
    resource: &str,
    flavour: Flavour,
    selector: Option<(&str, &str)>,
) -> Value {
    let (access_token, iat, exp) = mint(world, identity, resource);
    let lifetime = (exp - iat).to_string();
    // A skewed service clock shows in the answer's absolute times only; the vault checks the
    // token's real expiry.
    let shown = |t: u64| t.saturating_add_signed(world.clock_skew).to_string();
    let (exp_shown, iat_shown) = (shown(exp), shown(iat));
    let mut body = match flavour {
        Flavour::Imds => json!({
            "access_token": access_token,
            "refresh_token": "",
            "expires_in": lifetime,
            "expires_on": exp_shown,
            "ext_expires_in": lifetime,
            "not_before": iat_shown,
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }),
        Flavour::AppService => json!({
            "access_token": access_token,
            "expires_on": exp_shown,
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        }),
    };
    if let (Flavour::Imds, Some((k, v))) = (flavour, selector) {
        body[k] = Value::String(v.to_string());
    }
    body
}

/// The IMDS-shaped answer (every number a string) with a fresh token for `identity`: what IMDS,
/// Azure Arc and (without `client_id`) Cloud Shell send.
pub fn imds_answer(world: &mut World, identity: &Identity, resource: &str) -> Value {
    issue(world, identity, resource, Flavour::Imds, None)
}

/// A fresh token for `identity` with the audience `resource` (a trailing `/` trimmed), recorded
/// so the vault accepts it until it expires: (token, issued at, expires on), Unix seconds.
pub fn mint(world: &mut World, identity: &Identity, resource: &str) -> (String, u64, u64) {
    let iat = now();
    let exp = iat + world.token_lifetime.as_secs();
    let audience = resource.trim_end_matches('/').to_string();
    let token = jwt(world, identity, &audience, iat, exp);
    world.counters.issued_to.push(identity.object_id.clone());
    world.tokens.insert(
        token.clone(),
        IssuedToken {
            audience,
            expires_on: exp,
        },
    );
    (token, iat, exp)
}

/// A JWT-shaped token: base64url header, claims and a random-looking signature.
pub fn jwt(world: &World, identity: &Identity, audience: &str, iat: u64, exp: u64) -> String {
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "emulator"});
    let claims = json!({
        "aud": audience,
        "iss": format!("https://sts.windows.net/{}/", world.tenant_id),
        "iat": iat, "nbf": iat, "exp": exp,
        "oid": identity.object_id,
        "sub": identity.object_id,
        "tid": world.tenant_id,
        "appid": identity.client_id,
        "xms_mirid": identity.resource_id,
    });
    let signature = crate::state::version_id();
    format!(
        "{}.{}.{}",
        b64::encode(header.to_string().as_bytes()),
        b64::encode(claims.to_string().as_bytes()),
        b64::encode(signature.as_bytes())
    )
}
