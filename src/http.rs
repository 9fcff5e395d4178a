//! The two HTTP clients kvfetch builds, and one small request helper.
//!
//! Identity endpoints are link-local or localhost: their client never uses a proxy. The Key Vault
//! client honours `HTTPS_PROXY`/`NO_PROXY` (as ureq reads them) and trusts the bundled Mozilla
//! roots plus `--ca-file`. Neither follows redirects: a redirect would carry the token elsewhere.

use std::time::Duration;

use ureq::Agent;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use crate::error::Error;

/// A response reduced to what kvfetch reads.
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<String>,
    pub location: Option<String>,
}

/// The client for IMDS / App Service endpoints: no proxy, no redirects, short connect timeout.
pub fn identity_agent() -> Agent {
    Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(2)))
        .build()
        .into()
}

/// The client for Key Vault: proxy from the environment, bundled roots plus `ca_pem`.
///
/// `loopback_only` (every vault is on loopback) leaves the bundled roots out when `ca_pem` is
/// given: no public CA may vouch for a loopback name, so they could never match, and ureq would
/// hash the whole list into its pool key on every request.
pub fn vault_agent(
    ca_pem: Option<&[u8]>,
    concurrency: usize,
    loopback_only: bool,
) -> Result<Agent, Error> {
    let mut tls = TlsConfig::builder();
    if let Some(pem) = ca_pem {
        let mut roots: Vec<Certificate<'static>> = Vec::new();
        if !loopback_only {
            roots.extend(
                webpki_root_certs::TLS_SERVER_ROOT_CERTS
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref())),
            );
        }
        roots.extend(parse_certs(pem)?);
        tls = tls.root_certs(RootCerts::new_with_certs(&roots));
    }
    Ok(Agent::config_builder()
        .tls_config(tls.build())
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        // Secrets are at most 25 KB: small buffers keep memory and start-up work down.
        .input_buffer_size(32 * 1024)
        .output_buffer_size(16 * 1024)
        .max_response_header_size(16 * 1024)
        .max_idle_connections_per_host(concurrency.max(1))
        .max_idle_connections(concurrency.max(1) * 4)
        .build()
        .into())
}

fn parse_certs(pem: &[u8]) -> Result<Vec<Certificate<'static>>, Error> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c.to_owned()),
            Ok(_) => {}
            Err(e) => return Err(Error::Usage(format!("--ca-file is not valid PEM: {e}"))),
        }
    }
    if certs.is_empty() {
        return Err(Error::Usage("--ca-file holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// GET `url` with `headers`, giving up after `timeout`. Transport failures come back as text.
pub fn get(
    agent: &Agent,
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Reply, String> {
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut response = req
        .config()
        .timeout_global(Some(timeout.max(Duration::from_millis(1))))
        .build()
        .call()
        .map_err(|e| describe(&e))?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let (retry_after, location) = (header("retry-after"), header("location"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(|e| describe(&e))?;
    Ok(Reply {
        status,
        body,
        retry_after,
        location,
    })
}

fn describe(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::HostNotFound => "host not found".into(),
        other => other.to_string(),
    }
}
