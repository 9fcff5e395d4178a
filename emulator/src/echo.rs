//! A hostile identity endpoint that quotes back the credential it was sent, in its own error
//! body shape: the `X-IDENTITY-HEADER` (App Service), the `secret` header (legacy App Service,
//! Service Fabric), `Authorization: Basic <key>` (Azure Arc, once a key is presented) and the
//! `client_assertion` (Entra). The credential starts exactly `at` characters into the error text
//! a client shows, so a test can put it across a client's cut (see [`Emulator::echo_credentials`]).
//!
//! [`Emulator::echo_credentials`]: crate::Emulator::echo_credentials

use serde_json::{Value, json};

use crate::entra::form;
use crate::http::{Request, Response};

/// The endpoint a request came to.
#[derive(Clone, Copy)]
pub enum Endpoint {
    AppService,
    LegacyAppService,
    Arc,
    ServiceFabric,
    Entra,
}

/// With echoing on (`status`, `at`), the error answer quoting the request's credential; None
/// when echoing is off or the request carried no credential.
pub fn answer(echo: Option<(u16, usize)>, req: &Request, endpoint: Endpoint) -> Option<Response> {
    let (status, at) = echo?;
    let credential = match endpoint {
        Endpoint::AppService => req.header("x-identity-header")?.to_string(),
        Endpoint::LegacyAppService | Endpoint::ServiceFabric => req.header("secret")?.to_string(),
        Endpoint::Arc => req.header("authorization")?.to_string(),
        Endpoint::Entra => form(req)
            .into_iter()
            .find(|(k, _)| k == "client_assertion")?
            .1
            .clone(),
    };
    Some(Response::json(
        status,
        &body(endpoint, status, at, &credential),
    ))
}

/// `prefix`, filler up to `at` characters, the credential, and a tail.
fn quote(prefix: &str, at: usize, credential: &str) -> String {
    let fill = at.saturating_sub(prefix.chars().count());
    format!(
        "{prefix}{}{credential} is not what this endpoint expected",
        "x".repeat(fill)
    )
}

fn body(endpoint: Endpoint, status: u16, at: usize, credential: &str) -> Value {
    match endpoint {
        Endpoint::AppService | Endpoint::LegacyAppService => {
            json!({"statusCode": status, "message": quote("", at, credential)})
        }
        Endpoint::Arc => {
            json!({"error": "invalid_request", "error_description": quote("", at, credential)})
        }
        Endpoint::ServiceFabric => {
            json!({"error": {"code": "InvalidRequest", "message": quote("", at, credential)}})
        }
        Endpoint::Entra => json!({
            "error": "invalid_request",
            "error_description": format!(
                "{}\r\nTrace ID: 00000000-0000-0000-0000-000000000000",
                quote("AADSTS900023: ", at, credential)
            ),
            "error_codes": [900023],
        }),
    }
}
