//! Service Fabric (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER` + `IDENTITY_SERVER_THUMBPRINT`):
//! `GET {endpoint}?api-version=2019-07-01-preview&resource=…` with `Secret: {IDENTITY_HEADER}`
//! over HTTPS to a self-signed certificate, trusted by its SHA-1 thumbprint alone (not by any
//! CA; the handshake's signatures are still verified). No redirects, no proxy.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{
    Ask, Choice, Selector, Source, check_endpoint, check_secret_endpoint, error_detail,
    no_selector, required,
};
use crate::base::encoding::percent_encode;
use crate::error::Error;
use crate::net::http::{Failure, MAX_BODY, Reply};

pub fn choose(env: &HashMap<String, String>, selector: Option<&Selector>) -> Result<Choice, Error> {
    let fix = "Service Fabric sets IDENTITY_ENDPOINT, IDENTITY_HEADER and IDENTITY_SERVER_THUMBPRINT for an application with a managed identity";
    let endpoint = required(env, "IDENTITY_ENDPOINT", "Service Fabric", fix)?;
    required(env, "IDENTITY_HEADER", "Service Fabric", fix)?;
    let raw = required(env, "IDENTITY_SERVER_THUMBPRINT", "Service Fabric", fix)?;
    no_selector(selector, "Service Fabric")?;
    let thumbprint: String = raw
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if thumbprint.len() != 40 || !thumbprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Usage(format!(
            "IDENTITY_SERVER_THUMBPRINT={raw:?} is not a SHA-1 thumbprint (40 hex digits)"
        )));
    }
    let endpoint = check_endpoint(&endpoint, "IDENTITY_ENDPOINT")?;
    if !endpoint.starts_with("https://") {
        return Err(Error::Usage(format!(
            "Service Fabric: IDENTITY_ENDPOINT={endpoint} must be https (the thumbprint pins its certificate)"
        )));
    }
    check_secret_endpoint(&endpoint, "IDENTITY_ENDPOINT", "IDENTITY_HEADER")?;
    Ok(Choice {
        source: Source::ServiceFabric { endpoint, thumbprint },
        why: "IDENTITY_ENDPOINT, IDENTITY_HEADER and IDENTITY_SERVER_THUMBPRINT are set (Service Fabric)".into(),
    })
}

pub(super) fn ask(endpoint: &str, secret: &str, resource: &str) -> Ask {
    Ask {
        url: format!(
            "{endpoint}?api-version=2019-07-01-preview&resource={}",
            percent_encode(resource)
        ),
        headers: vec![("Secret", secret.into())],
        form: None,
    }
}

/// Service Fabric's own error codes.
pub(super) fn classify(status: u16, body: &str, endpoint: &str) -> Option<Result<String, Error>> {
    let code = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.get("code")?.as_str().map(String::from))
        .unwrap_or_default();
    let detail = error_detail(body);
    match code.as_str() {
        "SecretHeaderNotFound" => Some(Err(Error::NoToken(format!(
            "the Service Fabric endpoint {endpoint} rejected IDENTITY_HEADER (HTTP {status} {code}: {detail}); pass the application's own IDENTITY_HEADER through unchanged"
        )))),
        "ManagedIdentityNotFound" => Some(Err(Error::NoToken(format!(
            "the Service Fabric endpoint {endpoint} has no managed identity for this application (HTTP {status} {code}); assign one in the application manifest"
        )))),
        _ => None,
    }
}

/// A TLS client that trusts exactly one certificate, by thumbprint.
pub struct Pinned {
    config: Arc<rustls::ClientConfig>,
}

#[derive(Debug)]
struct Thumbprint {
    want: String,
    provider: Arc<CryptoProvider>,
}

/// Upper-case hex SHA-1 of a certificate's DER.
pub fn thumbprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

impl ServerCertVerifier for Thumbprint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if thumbprint(end_entity.as_ref()) == self.want {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the certificate's thumbprint is not IDENTITY_SERVER_THUMBPRINT".into(),
            ))
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl Pinned {
    pub fn new(thumbprint: &str) -> Pinned {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Thumbprint {
            want: thumbprint.to_string(),
            provider: provider.clone(),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Pinned {
            config: Arc::new(config),
        }
    }

    /// One GET over a fresh connection (`Connection: close`), read to its end.
    pub fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Reply, Failure> {
        let fail = |text: String, permanent: bool, tls: bool| Failure {
            text,
            permanent,
            tls,
            local: false,
            unanswered: false,
        };
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let parsed =
            crate::net::url::parse(base).map_err(|why| fail(why.to_string(), true, false))?;
        let host = parsed
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = parsed.port.unwrap_or(443);
        let timeout = timeout.max(Duration::from_millis(1));
        let addr = crate::net::http::resolve(&host, port, timeout)
            .ok()
            .and_then(|a| a.into_iter().next())
            .ok_or_else(|| fail(crate::net::http::HOST_NOT_FOUND.into(), false, false))?;
        let tcp = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| fail(e.to_string(), false, false))?;
        let _ = tcp.set_read_timeout(Some(timeout));
        let _ = tcp.set_write_timeout(Some(timeout));
        let name =
            ServerName::try_from(host.clone()).map_err(|e| fail(e.to_string(), true, false))?;
        let conn = rustls::ClientConnection::new(self.config.clone(), name)
            .map_err(|e| fail(format!("TLS: {e}"), true, true))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let path = if parsed.path.is_empty() {
            "/"
        } else {
            &parsed.path
        };
        let mut request = format!(
            "GET {path}?{query} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {}\r\nConnection: close\r\n",
            match parsed.port {
                Some(p) if p != 443 => format!("{}:{p}", parsed.host),
                _ => parsed.host.clone(),
            },
            crate::net::http::USER_AGENT
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        let io =
            |e: std::io::Error| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(t) => fail(format!("TLS: {t}"), true, true),
                None => fail(e.to_string(), false, false),
            };
        tls.write_all(request.as_bytes()).map_err(io)?;
        // Read until the answer is complete (Content-Length, the last chunk, or the end), all
        // within `timeout` in total: a server that drips or keeps the connection open cannot
        // hold kvfetch past its deadline.
        let until = std::time::Instant::now() + timeout;
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        // The answer's head and body together: an answer larger than kvfetch reads from any
        // endpoint is refused as such (final), however it ends.
        let cap = (MAX_BODY + 64 * 1024) as usize;
        while !complete(&raw) {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(fail("timed out".into(), false, false));
            }
            let _ = tls.sock.set_read_timeout(Some(left));
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) if raw.len() + n > cap => {
                    return Err(fail(
                        format!("the answer is larger than {MAX_BODY} bytes"),
                        true,
                        false,
                    ));
                }
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                // A peer that closes without close_notify still sent a whole answer.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(fail("timed out".into(), false, false));
                }
                Err(e) => return Err(io(e)),
            }
        }
        parse_response(&raw).ok_or_else(|| fail("not an HTTP answer".into(), true, false))
    }
}

/// Whether `raw` holds a whole answer: its head, and all of a Content-Length body or the last
/// chunk of a chunked one (otherwise the answer ends when the connection does).
fn complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = raw.len() - split - 4;
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body >= len;
    }
    head.contains("transfer-encoding: chunked") && raw.ends_with(b"0\r\n\r\n")
}

/// Status, headers and body of an HTTP/1.1 answer (Content-Length, chunked, or to the end).
fn parse_response(raw: &[u8]) -> Option<Reply> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut reply = Reply {
        status,
        ..Reply::default()
    };
    let mut chunked = false;
    for line in lines {
        let (k, v) = line.split_once(':')?;
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
        match k.as_str() {
            "content-length" => body.truncate(v.parse().ok()?),
            "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
            "retry-after" => reply.retry_after = Some(v),
            _ => {}
        }
    }
    if chunked {
        body = dechunk(&body)?;
    }
    // Only a success must be exact text; an error page is judged by its status.
    reply.body = if (200..300).contains(&status) {
        String::from_utf8(body).ok()?
    } else {
        String::from_utf8_lossy(&body).into_owned()
    };
    Some(reply)
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_whatever_their_framing() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        let r = parse_response(
            b"HTTP/1.1 401 No\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_str()), (401, "abc"));
        assert!(parse_response(b"garbage").is_none());
        assert_eq!(
            thumbprint(b"abc"),
            "A9993E364706816ABA3E25717850C26C9CD0D89D"
        );
    }
}
