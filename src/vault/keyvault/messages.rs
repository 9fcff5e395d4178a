//! What the client says: what a request is about, and the one line for each way a vault says
//! no (the fix for a denial by the vault's permission model, a wait, a protocol failure).

use crate::base::retry::human;
use crate::error::Error;
use crate::identity::Token;
use crate::net::http::{self};
use crate::spec::{SecretSpec, Vault};
use serde_json::Value;
use std::time::Instant;

/// What a request is about: it names the request in messages and logs, and its vault gives the
/// token's audience.
#[derive(Clone, Copy)]
pub(super) enum Subject<'a> {
    Secret(&'a SecretSpec),
    /// A page of the vault's list of secrets; `patient` retries a 403 while a role assignment
    /// may be propagating (a selection needs the list; change detection does without).
    List(&'a Vault, bool),
}

impl Subject<'_> {
    pub(super) fn vault(&self) -> &Vault {
        match self {
            Subject::Secret(spec) => &spec.vault,
            Subject::List(vault, _) => vault,
        }
    }

    /// `secret NAME in vault URL` or `the list of secrets of vault URL`.
    pub(super) fn what(&self) -> String {
        match self {
            Subject::Secret(spec) => {
                format!("secret {} in vault {}", spec.reference(), spec.vault.url)
            }
            Subject::List(vault, _) => format!("the list of secrets of vault {}", vault.url),
        }
    }

    /// The `secret` field of log lines.
    pub(super) fn label(&self) -> &str {
        match self {
            Subject::Secret(spec) => &spec.name,
            Subject::List(..) => "(list)",
        }
    }

    /// The kind of request, for `/metrics`.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Subject::Secret(_) => "get",
            Subject::List(..) => "list",
        }
    }

    /// The permission an access policy must grant.
    pub(super) fn permission(&self) -> &'static str {
        match self {
            Subject::Secret(_) => "get",
            Subject::List(..) => "get list",
        }
    }
}

/// The access-denied message, with the one fix the vault's permission model calls for:
/// `ForbiddenByRbac` comes from an RBAC vault (a role assignment), `AccessDenied` from an
/// access-policy vault (a policy); anything else gets both.
pub(super) fn access_denied(subject: Subject, token: &Token, code: &str) -> String {
    let what = subject.what();
    let oid = token.object_id.as_deref().unwrap_or("OBJECT_ID");
    let vault = vault_name(&subject.vault().host);
    let permissions = subject.permission();
    let role = format!(
        "az role assignment create --role 'Key Vault Secrets User' --assignee-object-id {oid} --assignee-principal-type ServicePrincipal --scope $(az keyvault show --name {vault} --query id -o tsv)"
    );
    let policy = format!(
        "az keyvault set-policy --name {vault} --object-id {oid} --secret-permissions {permissions}"
    );
    let fix = match code {
        "ForbiddenByRbac" => format!("the vault uses Azure RBAC: grant the role with {role}"),
        "AccessDenied" => {
            format!("the vault uses access policies: grant {permissions} with {policy}")
        }
        _ => format!(
            "grant it the 'Key Vault Secrets User' role ({role}), or for a vault using access policies: {policy}"
        ),
    };
    format!(
        "access denied to {what} for the managed identity ({}): 403 {code}; {fix}",
        token.who()
    )
}

/// What a retried vault answer is waiting for: (kind of wait, the progress line).
pub(super) fn waiting_for(problem: &str, denied: bool) -> (&'static str, &'static str) {
    if denied {
        (
            "denied",
            "access denied; retrying while a role assignment propagates (--access-retry)",
        )
    } else if problem.starts_with("HTTP 429") {
        (
            "throttled",
            "Key Vault is throttling; waiting as it asks (Retry-After)",
        )
    } else if problem == http::HOST_NOT_FOUND {
        (
            "dns",
            "the vault's host does not resolve; check the vault name",
        )
    } else {
        ("failing", "Key Vault is not answering; retrying")
    }
}

/// The vault's name for `az keyvault` (the first DNS label); a placeholder for an IP address,
/// which names no vault.
pub(super) fn vault_name(host: &str) -> &str {
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return "VAULT_NAME";
    }
    host.split('.').next().unwrap_or(host)
}

/// The run's deadline came before a request could start: the vault's 429 pause lasts past it,
/// or the deadline passed while the request waited for a slot. Nothing is sent after it.
pub(super) fn closed_error(
    subject: &Subject,
    closed: crate::vault::throttle::Closed,
    run_started: Instant,
    sent: u32,
    last_answer: &Option<String>,
) -> Error {
    let what = subject.what();
    let took = human(run_started.elapsed());
    let last = last_answer
        .as_deref()
        .map(|a| format!("; last answer: {a}"))
        .unwrap_or_default();
    let tries = match sent {
        0 => "no request for it".to_string(),
        1 => "1 request for it".to_string(),
        n => format!("{n} requests for it"),
    };
    Error::VaultUnavailable(match closed.paused {
        Some(p) => format!(
            "gave up on {what} {took} into the run, after {tries}: the vault asked for a pause (429 Retry-After) that lasts {} more, past this run's deadline (--timeout, or --max-stale running out){last}; the vault is throttling: spread the load (--start-splay, fewer replicas) or raise --timeout",
            human(p)
        ),
        None => format!(
            "gave up on {what} {took} into the run, after {tries}: the deadline (--timeout, or --max-stale running out) came before another request could start{last}; raise --timeout or choose fewer secrets"
        ),
    })
}

/// A failure retrying cannot fix, as an error that names the fix.
pub(super) fn protocol_error(what: &str, e: &http::Failure) -> Error {
    if e.local {
        return Error::Resource(format!(
            "{what}: cannot connect: {}; raise the limit (ulimit -n, the container's memory) or lower --concurrency",
            e.text
        ));
    }
    if e.tls {
        return Error::Protocol(format!(
            "{what}: the vault's TLS certificate was refused ({}); kvfetch does not retry this: check that --vault names the vault itself, the clock is right, and, behind a TLS-inspecting proxy or with a private CA, pass its root with --ca-file",
            crate::base::log::escape(&e.text)
        ));
    }
    Error::Protocol(format!(
        "{what}: the vault's answer cannot be used ({}); kvfetch does not retry this: check that --vault points at Key Vault and not at a proxy or captive portal",
        crate::base::log::escape(&e.text)
    ))
}

/// (code, innererror.code, message's first line) from a Key Vault error body.
pub(crate) fn error_parts(body: &str) -> (String, String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    // Codes are short words (cut at 100 characters); of the message, its first line (300).
    let get = |p: &str, max: usize| {
        // Redacted before it is cut (see crate::base::redact): no prefix of a credential survives.
        let text = v.pointer(p).and_then(Value::as_str).unwrap_or_default();
        let text = crate::base::redact::redact_prefix(text, 64 * 1024);
        crate::base::redact::cut_quiet(text.lines().next().unwrap_or_default(), max)
    };
    (
        get("/error/code", 100),
        get("/error/innererror/code", 100),
        get("/error/message", 300),
    )
}
