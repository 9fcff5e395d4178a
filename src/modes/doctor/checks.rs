//! The doctor's checks, one function a concern: outputs and `--stale-ok`, the identity source
//! and its token's claims, each vault (DNS, proxy, TCP, TLS, the token's audience) and each
//! secret or selection, reporting what it finds and never a value.

use super::*;
use crate::base::retry::{Deadline, human};
use crate::cli::Options;
use crate::error::Error;
use crate::identity::{Choice, Selector, Token, Tokens, now};
use crate::modes::fetch;
use crate::spec::{self, Vault};
use crate::vault::keyvault::Client;
use crate::{exit, net::http};
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, UNIX_EPOCH};

/// List the vault as `--all`/`--prefix`/`--tag` would, and say how many secrets it would
/// choose; returns every spec fetch would read (the plan's, then the chosen).
pub(super) fn check_selection(
    r: &mut Report,
    client: &Client,
    plan: &fetch::Plan,
    sel: &crate::vault::select::Selection,
    tokens: &Tokens,
    deadline: &Deadline,
) -> Option<Vec<spec::SecretSpec>> {
    let listed = match client.list(&sel.vault, tokens, deadline, false) {
        Ok(l) => l,
        Err(e) => {
            r.fail("selection", &e);
            return None;
        }
    };
    let now = crate::identity::token::now();
    let mut noted = BTreeSet::new();
    match crate::vault::select::choose(sel, &plan.specs, &listed, now, &mut noted) {
        Ok(specs) => {
            r.line(
                Status::Ok,
                "selection",
                &format!(
                    "the vault lists {} secrets; the selection chooses {}",
                    listed.len(),
                    specs.len() - plan.specs.len()
                ),
                &[("vault", sel.vault.url.clone())],
            );
            Some(specs)
        }
        Err(e) => {
            r.fail("selection", &e);
            None
        }
    }
}

/// Read each secret as fetch would (an absent `optional` one is skipped); `None` in place of
/// what could not be read. The second value is false when a read failed.
pub(super) fn check_secrets(
    r: &mut Report,
    client: &Client,
    specs: &[spec::SecretSpec],
    tokens: &Tokens,
    deadline: &Deadline,
) -> (Vec<Option<crate::vault::keyvault::Fetched>>, bool) {
    let mut all_read = true;
    let values = specs
        .iter()
        .map(|spec| match client.fetch(spec, tokens, deadline) {
            Ok(f) => {
                r.line(
                    Status::Ok,
                    "secret",
                    &format!("{}: readable", spec.reference()),
                    &[
                        ("vault", spec.vault.url.clone()),
                        ("version", f.version.clone()),
                        (
                            "content_type",
                            f.content_type.clone().unwrap_or_else(|| "(none)".into()),
                        ),
                    ],
                );
                Some(f)
            }
            Err(e) if fetch::skipped(spec, &e) => {
                let text = format!("{e}; it is optional: fetch skips it (no file, no variable)");
                r.line(Status::Warn, "secret", &text, &[]);
                None
            }
            Err(e) => {
                r.fail("secret", &e);
                all_read = false;
                None
            }
        })
        .collect();
    (values, all_read)
}

/// Apply every spec's options to its value in memory (nothing of it is printed), then render
/// the outputs as fetch would before writing: the exit code is the one fetch gives.
pub(super) fn check_values(
    r: &mut Report,
    opts: &Options,
    plan: &fetch::Plan,
    mut snap: fetch::Snapshot,
) {
    let mut shaped = true;
    for (spec, value) in snap.specs.iter().zip(&snap.values) {
        let Some(f) = value else { continue };
        if let Err(e) = crate::shape::apply(spec, f) {
            r.fail("value", &e);
            shaped = false;
        }
    }
    if !shaped {
        return;
    }
    if let Some(sel) = &plan.selection {
        let mut noted = BTreeSet::new();
        crate::vault::select::drop_uncarriable(sel, plan.specs.len(), &mut snap, &mut noted);
    }
    match fetch::check_values(opts, plan, &snap) {
        Ok(()) => r.line(
            Status::Ok,
            "value",
            "every secret's options apply to its value, and every output can hold the result",
            &[],
        ),
        Err(e) => r.fail("value", &e),
    }
}

pub(super) fn check_outputs(r: &mut Report, opts: &Options, plan: &fetch::Plan) {
    if !fetch::has_outputs(opts) {
        r.line(
            Status::Fail(exit::USAGE),
            "output",
            "no --dir, --env-file or --template given: fetch needs one (KVFETCH_DIR, KVFETCH_ENV_FILE, KVFETCH_TEMPLATES)",
            &[],
        );
        return;
    }
    let mut warnings = Vec::new();
    let result = fetch::check_outputs_with(opts, plan, &mut |m| warnings.push(m.to_string()));
    for w in &warnings {
        r.line(Status::Warn, "output", w, &[]);
    }
    match result {
        Err(e) => r.fail("output", &e),
        Ok(()) => {
            let outputs: Vec<String> = opts
                .dir
                .iter()
                .map(|d| format!("--dir {}", d.display()))
                .chain(
                    opts.env_file
                        .iter()
                        .map(|f| format!("--env-file {}", f.display())),
                )
                .collect();
            r.line(
                Status::Ok,
                "output",
                &format!("{}: can be written", outputs.join(", ")),
                &[],
            );
        }
    }
}

/// `--stale-ok`: whether the outputs on disk would be kept through an outage now (a warning
/// when not: `fetch` succeeds while the vault answers).
pub(super) fn check_stale_ok(r: &mut Report, opts: &Options, plan: &fetch::Plan) {
    let Some(max) = opts.stale_ok else { return };
    if let Err(e) = fetch::check_stale_ok(opts, plan) {
        r.fail("stale-ok", &e);
        return;
    }
    match fetch::stale_verdict(opts, plan) {
        Ok(kept) => r.line(
            Status::Ok,
            "stale-ok",
            &format!(
                "through an outage, the outputs on disk would be kept: written {} ago (--stale-ok {})",
                human(kept.age),
                human(max)
            ),
            &[("files", kept.files.to_string())],
        ),
        Err(why) => r.line(
            Status::Warn,
            "stale-ok",
            &format!("through an outage, the outputs on disk would not be kept: {why}"),
            &[],
        ),
    }
}

pub(super) fn report_source(r: &mut Report, choice: &Choice, selector: Option<&Selector>) {
    let source = &choice.source;
    r.line(
        Status::Ok,
        "identity",
        &format!("{} at {}", source.name(), source.endpoint()),
        &[
            ("chosen_by", source.chosen_by().to_string()),
            ("why", choice.why.clone()),
            ("identity", Selector::describe(selector)),
        ],
    );
}

pub(super) fn report_token(r: &mut Report, resource: &str, t: &Token) {
    // Year 10000 and later cannot be written as RFC 3339 (and a server may say anything).
    let expires = (t.expires_on < 253_402_300_800)
        .then(|| UNIX_EPOCH.checked_add(Duration::from_secs(t.expires_on)))
        .flatten()
        .map_or_else(
            || format!("unix {}", t.expires_on),
            |at| humantime::format_rfc3339_seconds(at).to_string(),
        );
    let left = Duration::from_secs(t.expires_on.saturating_sub(now()));
    let unknown = || "(not in the token)".to_string();
    r.line(
        Status::Ok,
        "token",
        &format!("for {resource}"),
        &[
            ("oid", t.object_id.clone().unwrap_or_else(unknown)),
            ("appid", t.client_id.clone().unwrap_or_else(unknown)),
            (
                "xms_mirid",
                t.mi_resource_id.clone().unwrap_or_else(unknown),
            ),
            ("tid", t.tenant_id.clone().unwrap_or_else(unknown)),
            ("aud", t.audience.clone().unwrap_or_else(unknown)),
            ("expires", format!("{expires} (in {})", human(left))),
        ],
    );
}

/// The proxy that carries requests to `url`, as `scheme://host:port` (never its credentials),
/// found exactly as the Key Vault client finds it (ureq: `ALL_PROXY`, `HTTPS_PROXY`,
/// `HTTP_PROXY` in both cases, and `NO_PROXY`).
pub(super) fn proxied(url: &str) -> Option<String> {
    let proxy = ureq::Proxy::try_from_env()?;
    let uri: ureq::http::Uri = url.parse().ok()?;
    if proxy.is_no_proxy(&uri) {
        return None;
    }
    Some(format!("{:?}://{}:{}", proxy.protocol(), proxy.host(), proxy.port()).to_ascii_lowercase())
}

/// Resolve, connect, then one request without a token: Key Vault answers 401 with a bearer
/// challenge, which proves the certificate is trusted and that a vault answers.
pub(super) fn check_vault(
    r: &mut Report,
    v: &Vault,
    agents: &(ureq::Agent, ureq::Agent),
    api_version: &str,
    deadline: &Deadline,
) {
    let port = crate::net::url::parse(&v.url)
        .ok()
        .and_then(|u| u.port)
        .unwrap_or(443);
    let loopback = crate::net::url::is_loopback(&v.host);
    let mut steps = Vec::new();
    match proxied(&v.url).filter(|_| !loopback) {
        Some(proxy) => steps.push(format!(
            "through the proxy {proxy} (it resolves and connects)"
        )),
        None => match reach(&v.host, port, deadline) {
            Ok(step) => steps.push(step),
            Err(e) => return warn(r, &e),
        },
    }
    let agent = if loopback { &agents.1 } else { &agents.0 };
    let url = format!("{}/secrets?api-version={api_version}&maxresults=1", v.url);
    let timeout = deadline.remaining().min(Duration::from_secs(10));
    match http::get(agent, &url, &[("Accept", "application/json")], timeout) {
        Err(e) if e.tls => warn(
            r,
            &Error::Protocol(format!(
                "vault {}: its certificate is not trusted ({}); if a proxy inspects TLS, give its root with --ca-file",
                v.url, e.text
            )),
        ),
        Err(e) => warn(
            r,
            &Error::VaultUnavailable(format!(
                "vault {}: no answer ({}); check its firewall and network access",
                v.url, e.text
            )),
        ),
        Ok(reply) if reply.status == 401 => {
            steps.push("trusted certificate, answers as Key Vault (401 without a token)".into());
            r.line(Status::Ok, "vault", &format!("{}: {}", v.url, steps.join(", ")), &[]);
        }
        Ok(reply) => r.line(
            Status::Warn,
            "vault",
            &format!(
                "{}: {}, trusted certificate, but a request without a token got HTTP {} (Key Vault says 401): is this a vault?",
                v.url,
                steps.join(", "),
                reply.status
            ),
            &[],
        ),
    }
}

/// Resolve `host` (unless it is an IP address) and connect to one of its addresses.
pub(super) fn reach(host: &str, port: u16, deadline: &Deadline) -> Result<String, Error> {
    let resolved = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_err();
    let lookup_within = deadline.remaining().min(Duration::from_secs(10));
    let addrs: Vec<SocketAddr> = http::resolve(host, port, lookup_within).map_err(|e| {
        Error::VaultUnavailable(format!(
            "the vault's host {host} does not resolve ({e}); check the vault name, or, for a private endpoint, that this network resolves privatelink.vaultcore.azure.net"
        ))
    })?;
    let within = deadline
        .remaining()
        .min(Duration::from_secs(5))
        .max(Duration::from_millis(1));
    let mut last = None;
    if !addrs
        .iter()
        .any(|a| match TcpStream::connect_timeout(a, within) {
            Ok(_) => true,
            Err(e) => {
                last = Some(format!("{a}: {e}"));
                false
            }
        })
    {
        return Err(Error::VaultUnavailable(format!(
            "cannot connect to {host} ({}); check the vault's firewall, private endpoint and this network's outbound rules",
            last.unwrap_or_else(|| "no address".into())
        )));
    }
    if !resolved {
        return Ok("an IP address, connects".into());
    }
    let plural = if addrs.len() == 1 { "" } else { "es" };
    Ok(format!(
        "resolves ({} address{plural}), connects",
        addrs.len()
    ))
}
