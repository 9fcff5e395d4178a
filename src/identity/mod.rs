//! Managed-identity tokens. Which source to ask is decided once, by [`choose`], in the Azure
//! SDKs' order (workload identity first, as `DefaultAzureCredential` does):
//!
//! | variables | source | file |
//! |---|---|---|
//! | `AZURE_FEDERATED_TOKEN_FILE` (+ `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`) | AKS workload identity | `workload.rs` |
//! | `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` + `IDENTITY_SERVER_THUMBPRINT` | Service Fabric | `service_fabric.rs` |
//! | `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` | App Service, Functions, Container Apps | `app_service.rs` |
//! | `MSI_ENDPOINT` + `MSI_SECRET` | legacy App Service (2017-09-01), Azure ML | `app_service.rs` |
//! | `MSI_ENDPOINT` | Cloud Shell | `cloud_shell.rs` |
//! | `IDENTITY_ENDPOINT` + `IMDS_ENDPOINT` (or the Arc agent installed) | Azure Arc | `arc.rs` |
//! | otherwise (`AZURE_POD_IDENTITY_AUTHORITY_HOST` overrides the address) | IMDS | `imds.rs` |
//!
//! A source whose variables are present but incomplete is an error naming what is missing, never
//! a quiet fall back to IMDS (which, on an AKS node, is the node's identity: another principal
//! with other rights). `--identity-source` pins one. [`Identity`] asks the chosen source
//! politely (backoff with jitter, 410 for 70 s, `Retry-After`, fail fast on final answers), and
//! [`Tokens`] caches so a run makes one token request per audience, not one per secret.

mod app_service;
pub(crate) mod arc;
mod cache;
mod cloud_shell;
mod imds;
mod service_fabric;
pub(crate) mod token;
mod workload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use ureq::Agent;

pub use cache::Tokens;
pub use token::{Token, now, parse_token};

use crate::base::log;
use crate::base::retry::{Backoff, Deadline, human};
use crate::error::Error;
use crate::net::http::{self, Body, Reply};

/// Which user-assigned identity to use (none: system-assigned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    ClientId(String),
    ObjectId(String),
    ResourceId(String),
}

impl Selector {
    pub fn describe(sel: Option<&Selector>) -> String {
        match sel {
            None => "the system-assigned identity".into(),
            Some(Selector::ClientId(v)) => format!("the user-assigned identity with client id {v}"),
            Some(Selector::ObjectId(v)) => format!("the user-assigned identity with object id {v}"),
            Some(Selector::ResourceId(v)) => format!("the user-assigned identity {v}"),
        }
    }
}

/// `--identity-source`: which source to use, or `auto` (the SDKs' order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    Auto,
    Imds,
    AppService,
    Workload,
    Arc,
    CloudShell,
    ServiceFabric,
}

impl Pin {
    pub const NAMES: &'static str =
        "auto, imds, app-service, workload, arc, cloud-shell or service-fabric";

    pub fn parse(s: &str) -> Option<Pin> {
        Some(match s {
            "auto" => Pin::Auto,
            "imds" => Pin::Imds,
            "app-service" => Pin::AppService,
            "workload" => Pin::Workload,
            "arc" => Pin::Arc,
            "cloud-shell" => Pin::CloudShell,
            "service-fabric" => Pin::ServiceFabric,
            _ => return None,
        })
    }
}

/// Where tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// IMDS (VMs, ACI, AKS nodes) at this base URL.
    Imds { base: String },
    /// App Service / Functions / Container Apps (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`).
    AppService { endpoint: String },
    /// Legacy App Service / Azure ML (`MSI_ENDPOINT` + `MSI_SECRET`, api-version 2017-09-01).
    LegacyAppService { endpoint: String },
    /// Cloud Shell (`MSI_ENDPOINT` alone): a form POST.
    CloudShell { endpoint: String },
    /// Azure Arc (`IDENTITY_ENDPOINT` + `IMDS_ENDPOINT`): a challenge with a key file.
    Arc { endpoint: String },
    /// AKS workload identity: the federated token file exchanged at Entra ID.
    Workload {
        /// `{authority}/{tenant}/oauth2/v2.0/token`.
        token_url: String,
        client_id: String,
        token_file: PathBuf,
    },
    /// Service Fabric: HTTPS to a self-signed endpoint, pinned by its certificate's thumbprint.
    ServiceFabric {
        endpoint: String,
        thumbprint: String,
    },
}

/// The chosen source and why it was chosen (for `-v`, the info line and `kvfetch doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub source: Source,
    pub why: String,
}

const IMDS_BASE: &str = "http://169.254.169.254";

/// How long a connection to an identity endpoint on this machine or its link may take.
const LOCAL_CONNECT: Duration = Duration::from_secs(3);
/// The Arc agent's binary: its presence alone means Arc (protocol.md §0).
const ARC_AGENT: &str = "/opt/azcmagent/bin/himds";
const ARC_DEFAULT: &str = "http://127.0.0.1:40342/metadata/identity/oauth2/token";

/// Pick the token source from the environment (see the table in the module docs), or the one
/// `pin` names. Every refusal names the variable to set or unset; no request is made here.
pub fn choose(
    env: &HashMap<String, String>,
    pin: Pin,
    selector: Option<&Selector>,
) -> Result<Choice, Error> {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    let has = |k: &str| get(k).is_some();
    let auto = pin == Pin::Auto;
    // `pin` names this source, or (auto) its variables are set.
    let wants = |p: Pin, set: bool| pin == p || (auto && set);
    let choice = if wants(Pin::Workload, has("AZURE_FEDERATED_TOKEN_FILE")) {
        workload::choose(env, selector)?
    } else if wants(Pin::ServiceFabric, has("IDENTITY_SERVER_THUMBPRINT")) {
        service_fabric::choose(env, selector)?
    } else if wants(
        Pin::AppService,
        has("IDENTITY_ENDPOINT") && has("IDENTITY_HEADER"),
    ) && (has("IDENTITY_ENDPOINT") || !has("MSI_ENDPOINT"))
    {
        app_service::choose(env)?
    } else if wants(Pin::AppService, has("MSI_ENDPOINT") && has("MSI_SECRET")) {
        app_service::choose_legacy(env, selector)?
    } else if wants(Pin::CloudShell, has("MSI_ENDPOINT")) {
        cloud_shell::choose(env, selector)?
    } else if wants(
        Pin::Arc,
        (has("IDENTITY_ENDPOINT") && has("IMDS_ENDPOINT"))
            || (!has("IDENTITY_ENDPOINT") && std::path::Path::new(ARC_AGENT).exists()),
    ) {
        arc::choose(env, selector)?
    } else if auto
        && [
            "IDENTITY_ENDPOINT",
            "IDENTITY_HEADER",
            "IMDS_ENDPOINT",
            "MSI_SECRET",
        ]
        .iter()
        .any(|k| has(k))
    {
        return Err(incomplete(env));
    } else {
        imds::choose(env)?
    };
    // Credentials go into headers: a value a header cannot carry is a configuration error.
    for var in ["IDENTITY_HEADER", "MSI_SECRET"] {
        if get(var).is_some_and(|v| !v.bytes().all(|b| b.is_ascii_graphic()))
            && choice.source.uses(var)
        {
            return Err(Error::Usage(format!(
                "{var} holds characters an HTTP header cannot carry (spaces, line breaks, non-ASCII); pass the platform's value unchanged"
            )));
        }
    }
    if matches!(choice.source, Source::Imds { .. }) && auto {
        for (var, meaning) in [
            (
                "AZURE_TENANT_ID",
                "workload identity also needs AZURE_FEDERATED_TOKEN_FILE (is the pod labelled azure.workload.identity/use: \"true\"?)",
            ),
            (
                "AZURE_CLIENT_SECRET",
                "kvfetch uses managed identities, not a service principal's secret",
            ),
            (
                "AZURE_CLIENT_CERTIFICATE_PATH",
                "kvfetch uses managed identities, not a service principal's certificate",
            ),
        ] {
            if has(var) {
                log::warn(
                    &format!(
                        "{var} is set but not used: {meaning}; asking IMDS (pin with --identity-source to silence this)"
                    ),
                    &[],
                );
            }
        }
    }
    Ok(choice)
}

/// The refusal for identity variables that name no complete source.
fn incomplete(env: &HashMap<String, String>) -> Error {
    let set: Vec<&str> = [
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "IMDS_ENDPOINT",
        "MSI_SECRET",
    ]
    .into_iter()
    .filter(|k| env.get(*k).is_some_and(|v| !v.is_empty()))
    .collect();
    Error::Usage(format!(
        "{} set, but no complete identity source: App Service / Container Apps needs IDENTITY_ENDPOINT and IDENTITY_HEADER, Azure Arc IDENTITY_ENDPOINT and IMDS_ENDPOINT, the legacy endpoint MSI_ENDPOINT and MSI_SECRET; \
         kvfetch does not fall back to IMDS (another identity): set the missing variable, unset these, or pin one with --identity-source",
        set.join(" and ")
    ))
}

impl Choice {
    /// Say which source was chosen and why: at `-v` always, at info level when it is not IMDS
    /// (the one an operator most often did not mean).
    pub fn log(&self) {
        let fields = [
            ("source", self.source.name()),
            ("endpoint", &self.source.endpoint()),
            ("why", self.why.as_str()),
        ];
        if matches!(self.source, Source::Imds { .. }) {
            log::debug("identity source", &fields);
        } else {
            log::info("identity source", &fields);
        }
    }
}

/// An identity endpoint from the environment, through the one strict URL parser.
fn check_endpoint(url: &str, var: &str) -> Result<String, Error> {
    crate::net::url::parse(url)
        .map(|u| u.full())
        .map_err(|why| {
            Error::Usage(format!(
                "{var}={:?} is refused: {why}; it must be http(s)://host[:port][/path]",
                crate::net::url::shown(url)
            ))
        })
}

/// An endpoint that is sent a secret header (`IDENTITY_HEADER`, `MSI_SECRET`) must be where the
/// platforms put it: this machine (`localhost`, a loopback address) or a link-local address
/// (169.254.0.0/16, fe80::/10). Anywhere else the secret would cross a network, in clear text
/// over `http`; refused before any request.
fn check_secret_endpoint(endpoint: &str, var: &str, secret: &str) -> Result<(), Error> {
    let local = crate::net::url::parse(endpoint).is_ok_and(|u| local_host(&u.host));
    if local {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "{var}={endpoint} is refused: kvfetch would send {secret} to it, and that secret must not cross a network; \
         the platforms put this endpoint on localhost, a loopback address or a link-local address (169.254.x.x): pass the platform's value unchanged"
    )))
}

/// `localhost`, a loopback address or a link-local one.
fn local_host(host: &str) -> bool {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_link_local(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() || (ip.segments()[0] & 0xffc0) == 0xfe80,
        Err(_) => host == "localhost",
    }
}

/// A variable a source needs, or the refusal naming it.
fn required(
    env: &HashMap<String, String>,
    var: &str,
    source: &str,
    fix: &str,
) -> Result<String, Error> {
    env.get(var)
        .filter(|v| !v.is_empty())
        .cloned()
        .ok_or_else(|| {
            Error::Usage(format!(
                "{source}: {var} is not set; {fix}. kvfetch does not fall back to another identity"
            ))
        })
}

/// A source that has no runtime choice of identity refuses a selector.
fn no_selector(selector: Option<&Selector>, source: &str) -> Result<(), Error> {
    match selector {
        None => Ok(()),
        Some(s) => Err(Error::Usage(format!(
            "{source} has no user-assigned identities to choose from, but {} was asked for (--client-id/AZURE_CLIENT_ID, --object-id or --resource-id); remove it",
            Selector::describe(Some(s))
        ))),
    }
}

impl Source {
    /// The endpoint tokens are asked from, for messages.
    pub fn endpoint(&self) -> String {
        match self {
            Source::Imds { base } => format!("{base}{}", imds::PATH),
            Source::AppService { endpoint }
            | Source::LegacyAppService { endpoint }
            | Source::CloudShell { endpoint }
            | Source::Arc { endpoint }
            | Source::ServiceFabric { endpoint, .. } => endpoint.clone(),
            Source::Workload { token_url, .. } => token_url.clone(),
        }
    }

    /// The source's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Imds { .. } => "IMDS",
            Source::AppService { .. } => "the App Service / Container Apps identity endpoint",
            Source::LegacyAppService { .. } => {
                "the legacy App Service identity endpoint (MSI_ENDPOINT)"
            }
            Source::CloudShell { .. } => "Cloud Shell's identity endpoint",
            Source::Arc { .. } => "the Azure Arc agent",
            Source::Workload { .. } => "AKS workload identity (Entra ID)",
            Source::ServiceFabric { .. } => "the Service Fabric identity endpoint",
        }
    }

    /// What chose this endpoint: the variable that named it, or the default.
    pub fn chosen_by(&self) -> &'static str {
        match self {
            Source::Imds { base } if base == IMDS_BASE => "default (IMDS)",
            Source::Imds { .. } => "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            Source::AppService { .. } | Source::ServiceFabric { .. } | Source::Arc { .. } => {
                "IDENTITY_ENDPOINT"
            }
            Source::LegacyAppService { .. } | Source::CloudShell { .. } => "MSI_ENDPOINT",
            Source::Workload { .. } => "AZURE_FEDERATED_TOKEN_FILE",
        }
    }

    /// Whether this source sends the value of `var` in a header.
    fn uses(&self, var: &str) -> bool {
        match self {
            Source::AppService { .. } | Source::ServiceFabric { .. } => var == "IDENTITY_HEADER",
            Source::LegacyAppService { .. } => var == "MSI_SECRET",
            _ => false,
        }
    }

    /// Whether the endpoint is a loopback address (as the emulator's is).
    pub fn on_loopback(&self) -> bool {
        crate::net::url::parse(&self.endpoint())
            .is_ok_and(|u| crate::net::url::is_loopback(&u.host))
    }
}

/// One request to an identity endpoint.
struct Ask {
    url: String,
    headers: Vec<(&'static str, String)>,
    form: Option<String>,
}

/// Asks one identity source for tokens.
pub struct Identity {
    agent: Agent,
    pub source: Source,
    pub selector: Option<Selector>,
    backoff: Backoff,
    /// `IDENTITY_HEADER` or `MSI_SECRET`, read once (never logged).
    secret: Option<String>,
    /// The Service Fabric endpoint's pinned client (built on first use).
    pinned: Option<service_fabric::Pinned>,
}

impl Identity {
    pub fn new(
        source: Source,
        selector: Option<Selector>,
        backoff_base: Duration,
        env: &HashMap<String, String>,
        trust: &http::Trust,
    ) -> Identity {
        let secret = match &source {
            Source::AppService { .. } | Source::ServiceFabric { .. } => env.get("IDENTITY_HEADER"),
            Source::LegacyAppService { .. } => env.get("MSI_SECRET"),
            _ => None,
        };
        // Registered at once: an endpoint that echoes it back must not put it in a message.
        if let Some(s) = secret {
            crate::base::redact::credential(s);
        }
        let pinned = match &source {
            Source::ServiceFabric { thumbprint, .. } => {
                Some(service_fabric::Pinned::new(thumbprint))
            }
            _ => None,
        };
        // Entra ID is a remote host: reached like Key Vault, through HTTPS_PROXY where set
        // (an emulator on loopback, directly), trusting the same roots (--ca-file,
        // SSL_CERT_FILE, SSL_CERT_DIR). Every other source is local: never a proxy.
        let entra = matches!(source, Source::Workload { .. });
        Identity {
            agent: if entra {
                http::entra_agent(trust, source.on_loopback())
            } else {
                http::identity_agent()
            },
            source,
            selector,
            backoff: Backoff {
                base: backoff_base,
                cap_factor: 30,
            },
            secret: secret.cloned(),
            pinned,
        }
    }

    /// "the system-assigned identity via IMDS at URL", for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} via {} at {}",
            Selector::describe(self.selector.as_ref()),
            self.source.name(),
            self.source.endpoint()
        )
    }

    /// The request for a token for `resource` (a workload identity's token file is read here,
    /// for every exchange: the kubelet rotates it).
    fn ask(&self, resource: &str, arc_key: Option<&str>) -> Result<Ask, Error> {
        let secret = self.secret.clone().unwrap_or_default();
        let sel = self.selector.as_ref();
        Ok(match &self.source {
            Source::Imds { base } => imds::ask(base, resource, sel),
            Source::AppService { endpoint } => app_service::ask(endpoint, &secret, resource, sel),
            Source::LegacyAppService { endpoint } => {
                app_service::ask_legacy(endpoint, &secret, resource, sel)
            }
            Source::CloudShell { endpoint } => cloud_shell::ask(endpoint, resource),
            Source::Arc { endpoint } => arc::ask(endpoint, resource, arc_key),
            Source::Workload {
                token_url,
                client_id,
                token_file,
            } => workload::ask(token_url, client_id, token_file, resource)?,
            Source::ServiceFabric { endpoint, .. } => {
                service_fabric::ask(endpoint, &secret, resource)
            }
        })
    }

    /// Send one request (Service Fabric over its pinned TLS client).
    fn send(&self, ask: &Ask, timeout: Duration) -> Result<Reply, http::Failure> {
        let headers: Vec<(&str, &str)> =
            ask.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Some(pinned) = &self.pinned {
            return pinned.get(&ask.url, &headers, timeout);
        }
        let body = ask.form.as_deref().map_or(Body::None, Body::Form);
        // An endpoint on this machine or its link answers a connection at once when it is
        // there: a few seconds of silence mean nothing is (Entra is remote, and not bounded so).
        let connect = (!matches!(self.source, Source::Workload { .. })).then_some(LOCAL_CONNECT);
        http::send_within(&self.agent, &ask.url, &headers, body, timeout, connect)
    }

    /// When nothing answers at the endpoint: what the operator most likely has to do.
    fn unanswered_hint(&self) -> String {
        let endpoint = self.source.endpoint();
        if self.source.chosen_by() == "default (IMDS)" {
            return format!(
                "no managed-identity endpoint answers here ({endpoint}): outside Azure (a laptop, CI), run the emulator \
                 (cargo run --example emulator -- --env-file FILE, then source FILE) or set AZURE_POD_IDENTITY_AUTHORITY_HOST; \
                 in Azure, check that this container group or VM has a managed identity"
            );
        }
        let on_loopback = crate::net::url::parse(&endpoint)
            .ok()
            .is_some_and(|u| crate::net::url::is_loopback(&u.host) || u.host == "localhost");
        if on_loopback {
            return format!(
                "nothing listens at {endpoint} (from {}): is the emulator (or the platform's identity agent) running, and on that port?",
                self.source.chosen_by()
            );
        }
        format!(
            "nothing answers at {endpoint} (from {}): check that address",
            self.source.chosen_by()
        )
    }

    /// Get a token for `resource`, retrying as Microsoft documents, within `deadline`.
    pub fn request(&self, resource: &str, deadline: &Deadline) -> Result<Token, Error> {
        let started = Instant::now();
        let (mut attempt, mut first_410) = (0u32, None);
        let mut last_410_try = false;
        let mut arc_key: Option<String> = None;
        // The last HTTP answer: a final attempt cut short by the deadline must not hide it.
        let mut last_answer: Option<String> = None;
        let mut waiting = crate::base::progress::Waiting::new();
        // Said once, at the first failure where nothing answered at the endpoint.
        let mut hint: Option<String> = None;
        loop {
            let ask = self.ask(resource, arc_key.as_deref())?;
            let timeout = deadline.remaining().min(Duration::from_secs(20));
            let (problem, asked) = match self.send(&ask, timeout) {
                Ok(reply) if reply.status == 200 => {
                    return parse_token(&reply.body, &self.describe());
                }
                Ok(reply)
                    if arc_key.is_none()
                        && matches!(self.source, Source::Arc { .. })
                        && reply.status == 401 =>
                {
                    // The Arc challenge: read the key file it names, and ask again at once.
                    arc_key = Some(arc::read_key(&reply, &self.source.endpoint())?);
                    continue;
                }
                Ok(reply) => {
                    // An endpoint that echoes a credential back must not put it in a message
                    // (error_detail redacts before it cuts; this covers the rest).
                    let scrub = crate::base::redact::redact;
                    let verdict = self
                        .classify(&reply, resource)
                        .map_err(|e| e.map_text(scrub));
                    (scrub(&verdict?), reply.asked_delay())
                }
                Err(e) if e.local => {
                    return Err(Error::Resource(format!(
                        "cannot reach the identity endpoint {}: {}; raise the limit (ulimit -n, the container's memory)",
                        self.source.endpoint(),
                        e.text
                    )));
                }
                Err(e) if e.permanent => {
                    let fix = if e.tls {
                        "; behind a TLS-inspecting proxy or with a private authority, give its root with --ca-file (or SSL_CERT_FILE / SSL_CERT_DIR)"
                    } else {
                        ""
                    };
                    return Err(Error::NoToken(format!(
                        "the identity endpoint {} sent an unusable answer for {} ({}); kvfetch does not retry this: check what answers at that address{fix}",
                        self.source.endpoint(),
                        Selector::describe(self.selector.as_ref()),
                        log::escape(&e.text)
                    )));
                }
                Err(e) if e.unanswered => {
                    if hint.is_none() {
                        let h = self.unanswered_hint();
                        log::warn(&h, &[("problem", &e.text)]);
                        hint = Some(h);
                    }
                    (e.text, None)
                }
                Err(e) => (e.text, None),
            };
            if problem.starts_with("HTTP ") {
                last_answer = Some(problem.clone());
            }
            if problem.starts_with("HTTP 410") {
                // "Back within 70 s": keep trying at least that long, even past --timeout (but
                // never past the deadline's hard limit: a refresh's --max-stale).
                let first = *first_410.get_or_insert_with(Instant::now);
                deadline.extend_to(first + self.backoff.base * 70);
            }
            let delay = asked
                .map(crate::base::retry::clamp_retry_after)
                .unwrap_or_else(|| self.backoff.delay(attempt));
            attempt += 1;
            log::debug(
                "identity endpoint not ready; retrying",
                &[("endpoint", &self.source.endpoint()), ("problem", &problem)],
            );
            let planned = deadline.planned(delay, asked.is_some());
            waiting.report_if(
                planned.is_some(),
                "identity",
                planned.unwrap_or(delay),
                "waiting for the identity endpoint",
                &[
                    ("endpoint", &self.source.endpoint()),
                    ("chosen_by", self.source.chosen_by()),
                    ("problem", &problem),
                ],
            );
            if deadline.sleep_within(delay, asked.is_some()) {
                continue;
            }
            // In a 410 window, one last try at its very end (at or after 70 × base), as
            // Microsoft asks, before giving up.
            if first_410.is_some() && !last_410_try {
                last_410_try = true;
                std::thread::sleep(deadline.remaining());
                // Time for the last request itself to be answered, unless the deadline's hard
                // limit (--max-stale running out) leaves none.
                deadline.extend_to(Instant::now() + Duration::from_secs(1));
                if !deadline.remaining().is_zero() {
                    continue;
                }
            }
            let fix = match hint.filter(|_| last_answer.is_none()) {
                Some(h) => h,
                None => "check that a managed identity is assigned to this container group / VM, or raise --timeout if the endpoint starts slowly".into(),
            };
            return Err(Error::NoToken(format!(
                "gave up on {} at {} after {} ({}; last: {problem}{}) asking for {}; {fix}",
                self.source.name(),
                self.source.endpoint(),
                human(started.elapsed()),
                crate::base::retry::attempts(attempt),
                last_answer
                    .filter(|a| *a != problem)
                    .map(|a| format!("; last answer: {a}"))
                    .unwrap_or_default(),
                Selector::describe(self.selector.as_ref()),
            )));
        }
    }

    /// A non-200 answer: `Ok(text)` when worth retrying, `Err` when final.
    fn classify(&self, reply: &Reply, resource: &str) -> Result<String, Error> {
        let (status, body) = (reply.status, reply.body.as_str());
        let endpoint = self.source.endpoint();
        let who = Selector::describe(self.selector.as_ref());
        let source_says = match &self.source {
            Source::Workload { .. } => workload::classify(&self.source, status, body),
            Source::AppService { .. } | Source::LegacyAppService { .. } => {
                app_service::classify(&self.source, status, body, &who)
            }
            Source::Arc { .. } if status == 401 => Some(Err(arc::rejected(&endpoint))),
            Source::ServiceFabric { .. } => service_fabric::classify(status, body, &endpoint),
            _ => None,
        };
        if let Some(verdict) = source_says {
            return verdict;
        }
        let detail = error_detail(body);
        if matches!(status, 404 | 408 | 410 | 429) || status >= 500 {
            return Ok(format!("HTTP {status} {detail}"));
        }
        let lower = detail.to_ascii_lowercase();
        if lower.contains("identity not found") || (status == 400 && lower.contains("not found")) {
            let fix = match &self.selector {
                None => {
                    "assign a system-assigned identity (e.g. az container create … --assign-identity, az vm identity assign) or select a user-assigned one with --client-id/--object-id/--resource-id"
                }
                Some(_) => {
                    "check the id, and that this identity is assigned to the container group / VM (az container create … --assign-identity RESOURCE_ID)"
                }
            };
            return Err(Error::NoToken(format!(
                "no managed identity found: {endpoint} answered HTTP {status} \"{detail}\" for {who}; {fix}"
            )));
        }
        Err(Error::NoToken(format!(
            "the identity endpoint {endpoint} refused a token for resource {resource} ({who}): HTTP {status} \"{detail}\""
        )))
    }
}

/// The human part of an identity endpoint's error body (which is not always JSON), on one line
/// and cut to 200 characters. A JSON body without an error field is never echoed: it could be
/// a token answer. Every credential the process holds is replaced *before* the whitespace is
/// folded and the text cut (see [`crate::base::redact`]): decoded texts are scrubbed, so no JSON
/// escape hides a credential, and no prefix of one survives the cut.
fn error_detail(body: &str) -> String {
    let text = match serde_json::from_str::<Value>(body) {
        Ok(v) => ["error_description", "message", "error"]
            .iter()
            .find_map(|k| match v.get(k) {
                Some(Value::String(s)) => Some(s.clone()),
                // Service Fabric: {"error":{"code":…,"message":…}}
                Some(Value::Object(o)) => {
                    o.get("message").and_then(Value::as_str).map(String::from)
                }
                _ => None,
            })
            .unwrap_or_else(|| "(a JSON answer without an error text)".to_string()),
        Err(_) => body.to_string(),
    };
    let text = crate::base::redact::redact_prefix(&text, 64 * 1024);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    crate::base::redact::cut_quiet(&line, 200)
}

/// `key=value&…` with each value percent-encoded.
fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::base::encoding::percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_sources_in_the_sdks_order() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "IMDS"),
            (
                &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:1")],
                "IMDS",
            ),
            (
                &[
                    ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
                    ("IDENTITY_HEADER", "h"),
                ],
                "App Service",
            ),
            (
                &[
                    ("IDENTITY_ENDPOINT", "https://127.0.0.1:1/sf"),
                    ("IDENTITY_HEADER", "h"),
                    ("IDENTITY_SERVER_THUMBPRINT", &"A".repeat(40)),
                ],
                "Service Fabric",
            ),
            (
                &[
                    ("MSI_ENDPOINT", "http://127.0.0.1:1/m"),
                    ("MSI_SECRET", "s"),
                ],
                "legacy",
            ),
            (&[("MSI_ENDPOINT", "http://127.0.0.1:1/m")], "Cloud Shell"),
            (
                &[
                    ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/a"),
                    ("IMDS_ENDPOINT", "http://127.0.0.1:1"),
                ],
                "Arc",
            ),
            (
                &[
                    ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
                    ("AZURE_CLIENT_ID", "c"),
                    ("AZURE_TENANT_ID", "t"),
                    ("AZURE_AUTHORITY_HOST", "http://127.0.0.1:1"),
                    ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
                    ("IDENTITY_HEADER", "h"),
                ],
                "workload",
            ),
        ];
        for (vars, want) in cases {
            let e = env(vars);
            let sel = e
                .get("AZURE_CLIENT_ID")
                .map(|c| Selector::ClientId(c.clone()));
            let c =
                choose(&e, Pin::Auto, sel.as_ref()).unwrap_or_else(|err| panic!("{vars:?}: {err}"));
            assert!(
                c.source.name().contains(want) || format!("{:?}", c.source).contains(want),
                "{vars:?}: {:?}",
                c.source
            );
        }
    }

    #[test]
    fn incomplete_variables_are_refused_by_name_never_imds() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("IDENTITY_ENDPOINT", "http://127.0.0.1:1/x")],
                "IDENTITY_ENDPOINT set",
            ),
            (&[("IDENTITY_HEADER", "h")], "IDENTITY_HEADER set"),
            (
                &[("IMDS_ENDPOINT", "http://127.0.0.1:1")],
                "IMDS_ENDPOINT set",
            ),
            (
                &[
                    ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
                    ("AZURE_CLIENT_ID", "c"),
                ],
                "AZURE_TENANT_ID",
            ),
            (
                &[
                    ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
                    ("AZURE_TENANT_ID", "t"),
                ],
                "AZURE_CLIENT_ID",
            ),
        ];
        for (vars, want) in cases {
            let e = env(vars);
            let sel = e
                .get("AZURE_CLIENT_ID")
                .map(|c| Selector::ClientId(c.clone()));
            match choose(&e, Pin::Auto, sel.as_ref()) {
                Err(Error::Usage(m)) => assert!(m.contains(want), "{vars:?}: {m}"),
                other => panic!("{vars:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn secret_headers_go_only_to_this_machine_or_link_local() {
        for host in [
            "localhost",
            "127.0.0.1",
            "127.3.4.5",
            "[::1]",
            "169.254.169.254",
        ] {
            assert!(local_host(host), "{host}");
        }
        assert!(local_host("[fe80::1]"));
        for host in [
            "10.1.2.3",
            "192.168.1.1",
            "localhost.evil.test",
            "metadata",
            "[::ffff:127.0.0.1]",
            "[fec0::1]",
            "0.0.0.0",
        ] {
            assert!(!local_host(host), "{host}");
        }
        let e = env(&[
            ("IDENTITY_ENDPOINT", "http://10.1.2.3:8080/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ]);
        assert!(
            matches!(choose(&e, Pin::Auto, None), Err(Error::Usage(m)) if m.contains("must not cross a network"))
        );
    }

    #[test]
    fn every_pin_name_parses_to_its_source() {
        for (name, pin) in [
            ("auto", Pin::Auto),
            ("imds", Pin::Imds),
            ("app-service", Pin::AppService),
            ("workload", Pin::Workload),
            ("arc", Pin::Arc),
            ("cloud-shell", Pin::CloudShell),
            ("service-fabric", Pin::ServiceFabric),
        ] {
            assert_eq!(Pin::parse(name), Some(pin), "{name}");
            assert!(Pin::NAMES.contains(name), "{name} is listed");
        }
        assert_eq!(Pin::parse("IMDS"), None);
    }

    #[test]
    fn a_pin_wins_and_needs_its_variables() {
        let e = env(&[
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ]);
        let c = choose(&e, Pin::Imds, None).unwrap();
        assert!(matches!(c.source, Source::Imds { .. }));
        assert!(
            matches!(choose(&env(&[]), Pin::Workload, None), Err(Error::Usage(m)) if m.contains("AZURE_FEDERATED_TOKEN_FILE"))
        );
        assert!(
            matches!(choose(&env(&[]), Pin::AppService, None), Err(Error::Usage(m)) if m.contains("IDENTITY_ENDPOINT"))
        );
        assert!(
            matches!(choose(&env(&[]), Pin::Arc, None), Err(Error::Usage(m)) if m.contains("IDENTITY_ENDPOINT"))
        );
        assert!(
            matches!(choose(&env(&[]), Pin::CloudShell, None), Err(Error::Usage(m)) if m.contains("MSI_ENDPOINT"))
        );
        assert!(
            matches!(choose(&env(&[]), Pin::ServiceFabric, None), Err(Error::Usage(m)) if m.contains("IDENTITY_ENDPOINT"))
        );
    }

    #[test]
    fn sources_without_a_choice_of_identity_refuse_a_selector() {
        let sel = Selector::ObjectId("o".into());
        for vars in [
            &[("MSI_ENDPOINT", "http://127.0.0.1:1/m")][..],
            &[
                ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/a"),
                ("IMDS_ENDPOINT", "http://127.0.0.1:1"),
            ],
            &[
                ("MSI_ENDPOINT", "http://127.0.0.1:1/m"),
                ("MSI_SECRET", "s"),
            ],
        ] {
            assert!(
                matches!(
                    choose(&env(vars), Pin::Auto, Some(&sel)),
                    Err(Error::Usage(_))
                ),
                "{vars:?}"
            );
        }
    }
}
