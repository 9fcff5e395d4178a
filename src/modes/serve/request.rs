//! The little HTTP/1.1 the endpoint speaks: a bounded request head read within its time, the
//! request line and the headers it looks at, the route, and the response written back.

use super::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Read until `buf` holds a whole request head; returns its length (through the blank line).
/// `Ok(None)`: the peer closed or idled out between requests. `Err`: the answer that refuses it.
/// The head is due within [`HEADER_TIME`] of `started`, or of its first byte.
pub(super) fn read_head(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    started: Option<Instant>,
    timeout: &mut Option<Duration>,
) -> Result<Option<usize>, Response> {
    let mut started = started.or((!buf.is_empty()).then(Instant::now));
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(n) = head_end(buf) {
            return Ok(Some(n));
        }
        if buf.len() >= MAX_REQUEST {
            return Err(Response::text(431, "request head too large\n"));
        }
        let wait = match started {
            None => IDLE_TIME,
            Some(t) => match HEADER_TIME.checked_sub(t.elapsed()) {
                Some(left) if !left.is_zero() => left,
                _ => return Err(Response::text(408, "request head too slow\n")),
            },
        };
        if *timeout != Some(wait) {
            let _ = conn.set_read_timeout(Some(wait));
            *timeout = Some(wait);
        }
        match conn.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                started.get_or_insert_with(Instant::now);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) if started.is_none() => return Ok(None),
            Err(_) => return Err(Response::text(408, "request head too slow\n")),
        }
    }
}

/// Where the head ends: after the first blank line (`\r\n\r\n`, or a bare `\n\n`).
pub(super) fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What a request said that matters here.
#[derive(Debug, Default)]
pub(super) struct Request {
    pub(super) method: String,
    pub(super) target: String,
    pub(super) head: bool,
    pub(super) keep_alive: bool,
    pub(super) tokens: Vec<Vec<u8>>,
    pub(super) forwarded: bool,
    pub(super) has_body: bool,
    pub(super) if_none_match: Option<String>,
}

impl Request {
    pub(super) fn parse(raw: &[u8]) -> Result<Request, Response> {
        let bad = || Response::text(400, "bad request\n");
        let text = std::str::from_utf8(raw).map_err(|_| bad())?;
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let mut parts = lines.next().ok_or_else(bad)?.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let http11 = match version {
            "HTTP/1.1" => true,
            "HTTP/1.0" => false,
            _ => return Err(bad()),
        };
        let mut req = Request {
            method: method.to_string(),
            target: target.to_string(),
            head: method == "HEAD",
            keep_alive: http11,
            ..Request::default()
        };
        for line in lines.take_while(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').ok_or_else(bad)?;
            if name.is_empty() || name.contains([' ', '\t']) {
                return Err(bad());
            }
            req.header(&name.to_ascii_lowercase(), value.trim_matches([' ', '\t']));
        }
        Ok(req)
    }

    pub(super) fn header(&mut self, name: &str, value: &str) {
        match name {
            TOKEN_HEADER => self.tokens.push(value.as_bytes().to_vec()),
            "x-forwarded-for" | "forwarded" | "x-forwarded-host" | "x-real-ip" => {
                self.forwarded = true;
            }
            "content-length" => self.has_body |= value != "0",
            "transfer-encoding" => self.has_body = true,
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.split(',').any(|t| t.trim() == "close") {
                    self.keep_alive = false;
                } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                    self.keep_alive = true;
                }
            }
            "if-none-match" => self.if_none_match = Some(value.to_string()),
            _ => {}
        }
    }
}

/// One answer: status, headers beyond the fixed ones, body.
#[derive(Debug)]
pub(super) struct Response {
    pub(super) code: u16,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) body: Vec<u8>,
}

impl Response {
    pub(super) fn text(code: u16, body: &str) -> Response {
        Response {
            code,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    /// The bytes on the wire; `head` leaves the body out (its length stays).
    pub(super) fn bytes(&self, head: bool, close: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
            self.code,
            reason(self.code),
            self.body.len()
        );
        for (name, value) in &self.headers {
            let _ = write!(out, "{name}: {value}\r\n");
        }
        out.extend_from_slice(if close {
            b"Connection: close\r\n\r\n"
        } else {
            b"\r\n"
        });
        if !head && self.code != 304 {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

pub(super) fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    }
}

/// `/v1/secrets/NAME[?format=raw|json]` → (NAME decoded, Some(json?)); `Some(None)` for
/// another query; `None` for another path.
pub(super) fn route(target: &str) -> Option<(String, Option<bool>)> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let name = percent_decode(path.strip_prefix("/v1/secrets/")?)?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let json = match query {
        "" | "format=raw" => Some(false),
        "format=json" => Some(true),
        _ => None,
    };
    Some((name, json))
}

/// A path segment's percent-escapes decoded (`percent-encoding`); a name that is not UTF-8 is
/// none. A malformed escape stays as it is, and so names no secret.
pub(super) fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|n| n.into_owned())
}
