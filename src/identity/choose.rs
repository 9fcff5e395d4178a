//! Which identity source to ask, decided once from the environment and the flags, in the Azure
//! SDKs' order; each source's endpoint checked before any request (a secret header goes only to a
//! local address). See the table in [`super`].

use super::*;
use crate::base::log;
use crate::error::Error;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

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

pub(super) const IMDS_BASE: &str = "http://169.254.169.254";

/// How long a connection to an identity endpoint on this machine or its link may take.
pub(super) const LOCAL_CONNECT: Duration = Duration::from_secs(3);
/// The Arc agent's binary: its presence alone means Arc (protocol.md §0).
pub(super) const ARC_AGENT: &str = "/opt/azcmagent/bin/himds";
pub(super) const ARC_DEFAULT: &str = "http://127.0.0.1:40342/metadata/identity/oauth2/token";

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
pub(super) fn incomplete(env: &HashMap<String, String>) -> Error {
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
pub(super) fn check_endpoint(url: &str, var: &str) -> Result<String, Error> {
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
pub(super) fn check_secret_endpoint(endpoint: &str, var: &str, secret: &str) -> Result<(), Error> {
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
pub(super) fn local_host(host: &str) -> bool {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    match literal.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_link_local(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback() || (ip.segments()[0] & 0xffc0) == 0xfe80,
        Err(_) => host == "localhost",
    }
}

/// A variable a source needs, or the refusal naming it.
pub(super) fn required(
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
pub(super) fn no_selector(selector: Option<&Selector>, source: &str) -> Result<(), Error> {
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
