//! Carrying out queued faults, the transient ones a real service shows and the hostile ones a
//! misbehaving or spoofed server would send (huge, endless, dripped or non-UTF-8 bodies, odd
//! error texts, redirects, raw headers). The faulted endpoints, IMDS, Entra and the vault, go
//! through [`answer`]; each describes its own bodies through [`Service`].

use serde_json::Value;

use crate::http::{self, Reply, Response};
use crate::state::Fault;

/// Stands for the main string field of a success body in [`Service::success_shape`].
pub const MARKER: &str = "@@kvfetch-emulator-marker@@";

/// What a body that is not UTF-8 carries where text should be.
const INVALID_UTF8: &[u8] = b"\xff\xfe";

/// How one endpoint shapes its bodies.
pub trait Service {
    /// The usual error code and message for a status.
    fn usual_error(&self, status: u16) -> (&'static str, &'static str);

    /// The error envelope with this code and message.
    fn envelope(&self, code: &str, message: &str) -> Value;

    /// The answer to `Fault::Status(status)`.
    fn status_error(&self, status: u16) -> Response {
        let (code, message) = self.usual_error(status);
        Response::json(status, &self.envelope(code, message))
    }

    /// The success answer reduced to its main string field, which holds [`MARKER`].
    fn success_shape(&self) -> Value;
}

/// The answer to a request with `fault` queued for it; `normal` is the answer without a fault.
pub fn answer(
    fault: Option<Fault>,
    service: &dyn Service,
    normal: impl FnOnce() -> Reply,
) -> Reply {
    let Some(fault) = fault else {
        return normal();
    };
    match fault {
        Fault::Drop => Reply::Drop,
        Fault::CloseCleanly => Reply::CloseCleanly,
        Fault::AnswerThenClose => match normal() {
            Reply::Respond(response) => Reply::RespondThenClose(response),
            other => other,
        },
        Fault::AnswerThenHold => match normal() {
            Reply::Respond(response) => Reply::RespondThenHold(response),
            other => other,
        },
        Fault::Delay(d) => {
            http::pause(d);
            normal()
        }
        Fault::Status(status) => Reply::Respond(service.status_error(status)),
        Fault::StatusRetryAfter(status, secs) => Reply::Respond(
            service
                .status_error(status)
                .with_header("Retry-After", &secs.to_string()),
        ),
        Fault::HugeBody(len) => {
            let (before, after) = split_shape(service);
            let (body, at) = if len >= before.len() + after.len() {
                ([before.as_slice(), &after].concat(), before.len())
            } else {
                (Vec::new(), 0)
            };
            Reply::Padded {
                response: json_bytes(200, body),
                at,
                len,
            }
        }
        Fault::EndlessBody => Reply::Endless(json_bytes(200, split_shape(service).0)),
        Fault::Drip(delay) => match normal() {
            Reply::Respond(response) => Reply::Drip(response, delay),
            other => other,
        },
        Fault::DripBody(delay) => match normal() {
            Reply::Respond(response) => Reply::DripBody(response, delay),
            other => other,
        },
        Fault::InvalidUtf8(status) => {
            let body = if status == 200 {
                service.success_shape()
            } else {
                let (code, _) = service.usual_error(status);
                service.envelope(code, &format!("invalid UTF-8 follows: {MARKER}"))
            };
            let (before, after) = split(&body);
            Reply::Respond(json_bytes(
                status,
                [before.as_slice(), INVALID_UTF8, &after].concat(),
            ))
        }
        Fault::ErrorText {
            status,
            code,
            message,
        } => Reply::Respond(Response::json(status, &service.envelope(&code, &message))),
        Fault::Redirect { status, location } => {
            Reply::Respond(Response::text(status, "Moved").with_header("Location", &location))
        }
        Fault::Header {
            status,
            name,
            value,
        } => {
            let reply = if status == 200 {
                normal()
            } else {
                Reply::Respond(service.status_error(status))
            };
            match reply {
                Reply::Respond(response) => Reply::Respond(response.with_header(&name, &value)),
                other => other,
            }
        }
    }
}

/// The success shape serialized, cut where its main string field's text goes.
fn split_shape(service: &dyn Service) -> (Vec<u8>, Vec<u8>) {
    split(&service.success_shape())
}

/// `body` serialized and cut at [`MARKER`], which is left out.
fn split(body: &Value) -> (Vec<u8>, Vec<u8>) {
    let text = body.to_string();
    let (before, after) = text.split_once(MARKER).unwrap_or((&text, ""));
    (before.as_bytes().to_vec(), after.as_bytes().to_vec())
}

/// A JSON response from raw bytes (which need not be JSON, nor UTF-8).
fn json_bytes(status: u16, body: Vec<u8>) -> Response {
    Response {
        status,
        headers: vec![(
            "Content-Type".into(),
            "application/json; charset=utf-8".into(),
        )],
        body,
    }
}
