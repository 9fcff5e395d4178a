//! The two HTTP clients kvfetch builds, and one small request helper.
//!
//! Identity endpoints are link-local or localhost: their client never uses a proxy. The Key Vault
//! and Entra ID clients honour `HTTPS_PROXY`/`NO_PROXY` (as ureq reads them) and trust the
//! bundled Mozilla roots plus [`Trust`]: `SSL_CERT_FILE`, `SSL_CERT_DIR` and `--ca-file`, so a
//! TLS-inspecting egress proxy or a private authority works for every remote host alike. None
//! follows redirects: a redirect would carry the token elsewhere.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use ureq::Agent;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

use crate::error::{Error, local_limit};

mod tls;
mod trust;
pub use trust::Trust;

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

/// An agent with `config`: ureq's CONNECT-proxy and TCP connectors, then [`tls::TlsConnector`]
/// in place of ureq's own (one rustls configuration per agent, built once).
fn agent(config: ureq::config::Config) -> Agent {
    use ureq::unversioned::transport::{ConnectProxyConnector, Connector, TcpConnector};
    let connector =
        ().chain(ConnectProxyConnector::default())
            .chain(TcpConnector::default())
            .chain(tls::TlsConnector::new(config.tls_config()));
    Agent::with_parts(config, connector, Resolve)
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

/// An HTTP date (RFC 9110: IMF-fixdate, or the obsolete RFC 850 and asctime forms) → Unix
/// seconds, through `httpdate`.
fn httpdate_to_unix(v: &str) -> Option<u64> {
    httpdate::parse_http_date(v)
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
            .tls_config(Trust::default().tls(false))
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(2)))
            .build(),
    )
}

/// The client for `--notify-url`: no proxy (the app it tells is usually local), no redirects,
/// trusting the same roots as every remote (bundled plus [`Trust`]).
pub fn notify_agent(trust: &Trust) -> Agent {
    agent(
        Agent::config_builder()
            .user_agent(USER_AGENT)
            .proxy(None)
            .tls_config(trust.tls(false))
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(2)))
            .build(),
    )
}

/// The client for Entra ID (workload identity): a remote host, so proxies from the
/// environment are honoured as for Key Vault, and the same roots are trusted (bundled plus
/// [`Trust`]); no redirects. On loopback (an emulator): no proxy, and `--ca-file` alone when
/// given, as for a loopback vault.
pub fn entra_agent(trust: &Trust, loopback: bool) -> Agent {
    let mut config = Agent::config_builder();
    if loopback {
        config = config.proxy(None);
    }
    agent(
        config
            .user_agent(USER_AGENT)
            .tls_config(trust.tls(loopback))
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
    let trust = Trust::load(ca_pem, &HashMap::new())?;
    Ok(vault_agents_trusting(&trust, concurrency))
}

/// [`vault_agents`] trusting `trust` (see [`Trust`]).
pub fn vault_agents_trusting(trust: &Trust, concurrency: usize) -> (Agent, Agent) {
    (
        vault_agent(trust, concurrency, false),
        vault_agent(trust, concurrency, true),
    )
}

fn vault_agent(trust: &Trust, concurrency: usize, loopback: bool) -> Agent {
    let mut config = Agent::config_builder();
    if loopback {
        config = config.proxy(None);
    }
    let config = config
        .user_agent(USER_AGENT)
        .tls_config(trust.tls(loopback))
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
    agent(config)
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
    /// Nothing answered at the address: the connection was refused, the network or host is
    /// unreachable, or connecting timed out. The fix is the address, not the server.
    pub unanswered: bool,
}

impl Failure {
    fn transient(text: String) -> Failure {
        Failure {
            text,
            permanent: false,
            tls: false,
            local: false,
            unanswered: false,
        }
    }

    /// A transient failure where nothing answered at the address.
    fn unanswered(text: String) -> Failure {
        Failure {
            unanswered: true,
            ..Failure::transient(text)
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
    send_within(agent, url, headers, body, timeout, None)
}

/// [`send`], with connecting bounded by `connect` too (for endpoints on this machine or its
/// link, which answer a connection at once when they are there at all).
pub fn send_within(
    agent: &Agent,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
    timeout: Duration,
    connect: Option<Duration>,
) -> Result<Reply, Failure> {
    let timeout = timeout.max(Duration::from_millis(1));
    let connect = connect.map(|c| c.min(timeout));
    let timeout = Some(timeout);
    let sent = match body {
        Body::None => {
            let mut req = agent.get(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.config()
                .timeout_global(timeout)
                .timeout_connect(connect)
                .build()
                .call()
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
                .timeout_connect(connect)
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
            unanswered: false,
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

/// Whether connecting failed because nothing is there: refused, or no way to the address.
fn nothing_answers(io: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        io.kind(),
        ConnectionRefused | NetworkUnreachable | HostUnreachable | AddrNotAvailable
    )
}

/// Sort a ureq error into a retryable or a permanent failure.
fn classify(e: &ureq::Error) -> Failure {
    let permanent = |text: String, tls: bool| Failure {
        text,
        permanent: true,
        tls,
        local: false,
        unanswered: false,
    };
    match e {
        ureq::Error::Timeout(ureq::Timeout::Connect) => {
            Failure::unanswered("timed out connecting".into())
        }
        ureq::Error::Timeout(_) => Failure::transient("timed out".into()),
        ureq::Error::HostNotFound => Failure::transient(HOST_NOT_FOUND.into()),
        ureq::Error::Io(io) if local_limit(io) => Failure {
            text: format!("{io} (a local limit of this process or node, not the server)"),
            permanent: true,
            tls: false,
            local: true,
            unanswered: false,
        },
        ureq::Error::Io(io) if nothing_answers(io) => Failure::unanswered(io.to_string()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(v: &str) -> Option<Duration> {
        Reply {
            status: 429,
            body: String::new(),
            retry_after: Some(v.into()),
            retry_after_ms: None,
            location: None,
            www_authenticate: None,
        }
        .asked_delay()
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        assert_eq!(retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("99999999"), Some(Duration::from_secs(86_400)));
        let in_a_minute = std::time::SystemTime::now() + Duration::from_secs(60);
        let got = retry_after(&httpdate::fmt_http_date(in_a_minute)).unwrap();
        // Whole seconds, and the clock moves on between the two reads (however slowly this
        // machine runs them): never more than asked, and the date was read, not ignored.
        assert!((1..=60).contains(&got.as_secs()), "{got:?}");
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        // RFC 9110's obsolete forms are still HTTP dates.
        assert_eq!(
            retry_after("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after("Sun Nov  6 08:49:37 1994"),
            Some(Duration::ZERO)
        );
        for bad in ["soon", "-1", "Sun, 32 Nov 1994 08:49:37 GMT", ""] {
            assert_eq!(retry_after(bad), None, "{bad:?}");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn trust_variables_that_name_nothing_usable_are_refused_by_name() {
        let refused = |pairs: &[(&str, &str)], want: &str| match Trust::load(None, &env(pairs)) {
            Err(Error::Usage(m)) => assert!(m.contains(want), "{m}"),
            Err(other) => panic!("{pairs:?}: {other}"),
            Ok(_) => panic!("{pairs:?}: accepted"),
        };
        refused(
            &[("SSL_CERT_FILE", "/nonexistent/ca.pem")],
            "SSL_CERT_FILE=",
        );
        refused(&[("SSL_CERT_FILE", "/proc/self")], "not a regular file");
        let empty = std::env::temp_dir().join(format!("kvfetch-trust-{}", std::process::id()));
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let shown = empty.display().to_string();
        refused(&[("SSL_CERT_FILE", &shown)], "holds no PEM certificate");
        let _ = std::fs::remove_file(&empty);
        refused(&[("SSL_CERT_DIR", "/nonexistent")], "SSL_CERT_DIR=");
        // Unset or empty: nothing added, the bundled roots alone.
        let t = Trust::load(None, &env(&[("SSL_CERT_FILE", ""), ("SSL_CERT_DIR", "")])).unwrap();
        assert!(t.system.is_empty() && t.ca_file.is_empty());
        // A directory without certificates adds none and is no error (OpenSSL's reading).
        let t = Trust::load(None, &env(&[("SSL_CERT_DIR", "/proc/self/fdinfo")])).unwrap();
        assert!(t.system.is_empty());
    }
}
