//! The two HTTP clients kvfetch builds, and one small request helper.
//!
//! Identity endpoints are link-local or localhost: their client never uses a proxy. The Key Vault
//! client honours `HTTPS_PROXY`/`NO_PROXY` (as ureq reads them) and trusts the bundled Mozilla
//! roots plus `--ca-file`. Neither follows redirects: a redirect would carry the token elsewhere.

use std::time::Duration;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use ureq::Agent;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

use crate::error::Error;

/// Name resolution without ureq's default helper thread: an IP literal (the emulator, IMDS at
/// 169.254.169.254, loopback endpoints) needs no lookup at all, and a name is looked up on a
/// helper thread bounded by the request's timeout, or, where no thread can be had (a process
/// limit), on this one: a busy node never turns into a panic.
#[derive(Debug, Default)]
struct Resolve;

impl Resolver for Resolve {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().ok_or(ureq::Error::HostNotFound)?;
        let default_port = if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        };
        let port = uri.port_u16().unwrap_or(default_port);
        let found = resolve(host, port, *timeout.after)?;
        let mut out = self.empty();
        for addr in found.into_iter().take(16) {
            out.push(addr);
        }
        if out.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

/// The addresses of `host:port`: an IP literal as it is, a name looked up within `within`
/// (the resolver every client here uses: the vault agents, doctor, Service Fabric).
pub fn resolve(host: &str, port: u16, within: Duration) -> Result<Vec<SocketAddr>, ureq::Error> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<IpAddr>() {
        Ok(ip) => Ok(vec![SocketAddr::new(ip, port)]),
        Err(_) => lookup(format!("{host}:{port}"), within),
    }
}

fn lookup(name: String, within: Duration) -> Result<Vec<SocketAddr>, ureq::Error> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let query = name.clone();
    let helper = std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || tx.send(query.to_socket_addrs().map(Vec::from_iter)).ok());
    let result = match helper {
        Ok(_) => rx
            .recv_timeout(within)
            .map_err(|_| ureq::Error::Timeout(ureq::Timeout::Resolve))?,
        Err(_) => name.to_socket_addrs().map(Vec::from_iter),
    };
    result.map_err(|_| ureq::Error::HostNotFound)
}

fn agent(config: ureq::config::Config) -> Agent {
    Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        Resolve,
    )
}

/// A response reduced to what kvfetch reads.
#[derive(Default)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// `Retry-After` (seconds or an HTTP date).
    pub retry_after: Option<String>,
    /// `retry-after-ms` or `x-ms-retry-after-ms` (milliseconds; preferred when present).
    pub retry_after_ms: Option<String>,
    pub location: Option<String>,
    /// `WWW-Authenticate` (Azure Arc's challenge names its key file here).
    pub www_authenticate: Option<String>,
}

impl Reply {
    /// How long the server asked to wait, if it said: `retry-after-ms` / `x-ms-retry-after-ms`
    /// first, then `Retry-After` in seconds or as an HTTP date.
    pub fn asked_delay(&self) -> Option<Duration> {
        if let Some(ms) = self
            .retry_after_ms
            .as_deref()
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            return Some(Duration::from_millis(ms));
        }
        let v = self.retry_after.as_deref()?.trim();
        match v.parse::<u64>() {
            Ok(secs) => Some(Duration::from_secs(secs.min(86_400))),
            Err(_) => {
                let at = httpdate_to_unix(v)?;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_secs();
                Some(Duration::from_secs(at.saturating_sub(now).min(86_400)))
            }
        }
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110) → Unix seconds.
fn httpdate_to_unix(v: &str) -> Option<u64> {
    humantime::parse_rfc3339(&{
        let parts: Vec<&str> = v.split_whitespace().collect();
        let &[_, day, month, year, time, "GMT"] = parts.as_slice() else {
            return None;
        };
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let m = months.iter().position(|x| *x == month)? + 1;
        let (d, y): (u32, u32) = (day.parse().ok()?, year.parse().ok()?);
        format!("{y:04}-{m:02}-{d:02}T{time}Z")
    })
    .ok()?
    .duration_since(std::time::UNIX_EPOCH)
    .ok()
    .map(|d| d.as_secs())
}

/// What to send: a GET, or a POST of a form (workload identity, Cloud Shell).
pub enum Body<'a> {
    None,
    Form(&'a str),
}

/// Every request says who sent it (a vault's diagnostic log and a proxy then show kvfetch).
pub const USER_AGENT: &str = concat!("kvfetch/", env!("CARGO_PKG_VERSION"));

/// The client for IMDS / App Service endpoints: no proxy, no redirects, short connect timeout.
pub fn identity_agent() -> Agent {
    agent(
        Agent::config_builder()
            .user_agent(USER_AGENT)
            .proxy(None)
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(2)))
            .build(),
    )
}

/// The client for Entra ID (workload identity): a remote host, so proxies from the
/// environment are honoured as for Key Vault; bundled roots; no redirects.
pub fn remote_identity_agent() -> Agent {
    agent(
        Agent::config_builder()
            .user_agent(USER_AGENT)
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build(),
    )
}

/// The clients for Key Vault: (remote vaults: proxy from the environment, bundled roots plus
/// `ca_pem`; loopback vaults: no proxy, `ca_pem` alone when given).
///
/// The loopback client leaves the bundled roots out when `ca_pem` is given: no public CA may
/// vouch for a loopback address, so they could never match, and ureq would hash the whole list
/// into its pool key on every request.
pub fn vault_agents(ca_pem: Option<&[u8]>, concurrency: usize) -> Result<(Agent, Agent), Error> {
    Ok((
        vault_agent(ca_pem, concurrency, false)?,
        vault_agent(ca_pem, concurrency, true)?,
    ))
}

fn vault_agent(ca_pem: Option<&[u8]>, concurrency: usize, loopback: bool) -> Result<Agent, Error> {
    let mut tls = TlsConfig::builder();
    if let Some(pem) = ca_pem {
        let mut roots: Vec<Certificate<'static>> = Vec::new();
        if !loopback {
            roots.extend(
                webpki_root_certs::TLS_SERVER_ROOT_CERTS
                    .iter()
                    .map(|c| Certificate::from_der(c.as_ref())),
            );
        }
        roots.extend(parse_certs(pem)?);
        tls = tls.root_certs(RootCerts::new_with_certs(&roots));
    }
    let mut config = Agent::config_builder();
    if loopback {
        config = config.proxy(None);
    }
    let config = config
        .user_agent(USER_AGENT)
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
        .build();
    Ok(agent(config))
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

/// A request that got no usable answer.
#[derive(Debug, Clone)]
pub struct Failure {
    /// What went wrong, for messages.
    pub text: String,
    /// Retrying cannot help: the certificate is not trusted (or expired, or for another name),
    /// the answer is too large or not UTF-8, or the request itself cannot be sent.
    pub permanent: bool,
    /// The failure was TLS verification (the fix is about certificates and proxies).
    pub tls: bool,
    /// The failure is a local resource limit (file descriptors, memory), not the server's.
    pub local: bool,
}

use crate::error::local_limit;

impl Failure {
    fn transient(text: String) -> Failure {
        Failure {
            text,
            permanent: false,
            tls: false,
            local: false,
        }
    }
}

/// The largest answer kvfetch reads (a secret is at most 25 KB; a token answer a few KB).
pub const MAX_BODY: u64 = 1 << 20;

/// GET `url` with `headers`, giving up after `timeout`.
pub fn get(
    agent: &Agent,
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Reply, Failure> {
    send(agent, url, headers, Body::None, timeout)
}

/// GET (or POST a form to) `url` with `headers`, giving up after `timeout`.
pub fn send(
    agent: &Agent,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
    timeout: Duration,
) -> Result<Reply, Failure> {
    let timeout = Some(timeout.max(Duration::from_millis(1)));
    let sent = match body {
        Body::None => {
            let mut req = agent.get(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.config().timeout_global(timeout).build().call()
        }
        Body::Form(form) => {
            let mut req = agent
                .post(url)
                .header("Content-Type", "application/x-www-form-urlencoded");
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.config()
                .timeout_global(timeout)
                .build()
                .send(form.as_bytes())
        }
    };
    let mut response = sent.map_err(|e| classify(&e))?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let (retry_after, location) = (header("retry-after"), header("location"));
    let retry_after_ms = header("retry-after-ms").or_else(|| header("x-ms-retry-after-ms"));
    let www_authenticate = header("www-authenticate");
    let status = response.status().as_u16();
    let read = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec();
    // Only a success must be read whole and exactly: an error page (a proxy's, a CDN's) that is
    // too large or not UTF-8 still says what its status says, and is judged by it.
    let success = (200..300).contains(&status);
    let body = match read {
        Ok(bytes) if success => String::from_utf8(bytes).map_err(|_| Failure {
            text: format!("HTTP {status} with an answer that is not UTF-8 text"),
            permanent: true,
            tls: false,
            local: false,
        })?,
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if success => return Err(classify(&e)),
        // An error page too large to read is still judged by its status; one the deadline (or
        // the connection) cut is no answer at all: a cut body must never pass for an empty one.
        Err(ureq::Error::BodyExceedsLimit(_)) => String::new(),
        Err(e) => {
            let mut failure = classify(&e);
            failure.text = format!("HTTP {status} whose body was cut ({})", failure.text);
            return Err(failure);
        }
    };
    Ok(Reply {
        status,
        body,
        retry_after,
        retry_after_ms,
        location,
        www_authenticate,
    })
}

/// The failure text of a name that does not resolve (messages about it name the vault).
pub const HOST_NOT_FOUND: &str = "host not found";

/// Sort a ureq error into a retryable or a permanent failure.
fn classify(e: &ureq::Error) -> Failure {
    let permanent = |text: String, tls: bool| Failure {
        text,
        permanent: true,
        tls,
        local: false,
    };
    match e {
        ureq::Error::Timeout(_) => Failure::transient("timed out".into()),
        ureq::Error::HostNotFound => Failure::transient(HOST_NOT_FOUND.into()),
        ureq::Error::Io(io) if local_limit(io) => Failure {
            text: format!("{io} (a local limit of this process or node, not the server)"),
            permanent: true,
            tls: false,
            local: true,
        },
        ureq::Error::Io(io) => match io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(tls) => permanent(format!("TLS: {tls}"), true),
            None => Failure::transient(io.to_string()),
        },
        ureq::Error::Rustls(tls) => permanent(format!("TLS: {tls}"), true),
        ureq::Error::Tls(why) => permanent(format!("TLS: {why}"), true),
        ureq::Error::BodyExceedsLimit(_) => permanent(
            format!("the answer is larger than {} bytes", MAX_BODY),
            false,
        ),
        ureq::Error::LargeResponseHeader(..) => {
            permanent("the answer's headers are too large".into(), false)
        }
        ureq::Error::Http(_) | ureq::Error::BadUri(_) => {
            permanent(format!("the request cannot be sent: {e}"), false)
        }
        other => Failure::transient(other.to_string()),
    }
}
