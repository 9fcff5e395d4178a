//! `kvfetch doctor`: with the same flags as `fetch`, find out what `fetch` would do and why,
//! without writing any output and without printing any value or token. It checks, in the order
//! `fetch` meets them: the outputs (writable, on memory, private), the identity source and why it
//! was chosen, each token's claims that matter, each vault (resolves, connects, presents a
//! trusted certificate, answers as Key Vault), and each secret (readable: its version and
//! content type). Every failure is the error `fetch` would give, with its fix; the exit code is
//! the one `fetch` would have given (0 when all is well).

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, UNIX_EPOCH};

use crate::base::log::{self, Format};
use crate::base::retry::{Deadline, human};
use crate::cli::Options;
use crate::error::Error;
use crate::identity::{self, Choice, Identity, Selector, Token, Tokens, now};
use crate::modes::fetch;
use crate::spec::{self, Vault};
use crate::vault::keyvault::Client;
use crate::{exit, net::http};

/// One line on stdout; a closed stdout (`kvfetch doctor | head -1`) is not an error.
fn out(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// How one check came out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warn,
    Fail(u8),
}

/// The report: lines on stdout as checks finish, and the exit code of the first failure.
struct Report {
    json: bool,
    first_failure: Option<u8>,
    problems: usize,
}

impl Report {
    fn line(&mut self, status: Status, check: &str, text: &str, fields: &[(&str, String)]) {
        // Field values can come from a server (a version id, a content type): cut and
        // redacted like every log field, then escaped.
        let fields: Vec<(&str, String)> = fields
            .iter()
            .map(|(k, v)| (*k, log::escape(&log::sanitize(v, 500))))
            .collect();
        let (word, code) = match status {
            Status::Ok => ("ok", None),
            Status::Warn => ("warn", None),
            Status::Fail(c) => ("FAIL", Some(c)),
        };
        if let Some(c) = code {
            self.first_failure.get_or_insert(c);
            self.problems += 1;
        }
        let text = log::escape(&log::sanitize(text, 2000));
        if self.json {
            let mut obj = serde_json::Map::new();
            obj.insert("check".into(), check.into());
            obj.insert("status".into(), word.to_ascii_lowercase().into());
            obj.insert("text".into(), text.into());
            for (k, v) in &fields {
                obj.insert((*k).into(), v.clone().into());
            }
            if let Some(c) = code {
                obj.insert("exit_code".into(), c.into());
            }
            out(&serde_json::Value::Object(obj).to_string());
        } else {
            let extra: String = fields
                .iter()
                .map(|(k, v)| match v {
                    v if v.contains([' ', '"', '=']) || v.is_empty() => format!(" {k}=\"{v}\""),
                    v => format!(" {k}={v}"),
                })
                .collect();
            out(&format!("{word:<5} {check:<8} {text}{extra}"));
        }
    }

    fn fail(&mut self, check: &str, e: &Error) {
        self.line(Status::Fail(e.exit_code()), check, &e.to_string(), &[]);
    }

    /// The summary line, and the exit code.
    fn finish(self) -> u8 {
        let code = self.first_failure.unwrap_or(exit::OK);
        let text = match self.problems {
            0 => "all checks passed: kvfetch fetch would succeed".to_string(),
            n => format!(
                "{n} problem{}: kvfetch fetch would exit {code}",
                if n == 1 { "" } else { "s" }
            ),
        };
        if self.json {
            out(&serde_json::json!({"check": "result", "status": if code == 0 {"ok"} else {"fail"}, "text": text, "exit_code": code}).to_string());
        } else {
            out(&text);
        }
        code
    }
}

/// List the vault as `--all`/`--prefix`/`--tag` would, and say how many secrets it would
/// choose; returns every spec fetch would read (the plan's, then the chosen).
fn check_selection(
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
fn check_secrets(
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
fn check_values(r: &mut Report, opts: &Options, plan: &fetch::Plan, mut snap: fetch::Snapshot) {
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

/// Run the doctor; returns its exit code (usage errors are returned as errors, as for fetch).
pub fn run(opts: &Options, env: &HashMap<String, String>) -> Result<u8, Error> {
    let plan = fetch::plan_with(opts, Vec::new(), false)?;
    fetch::check_no_file(&plan)?;
    let vault = fetch::default_vault(opts)?;
    let mut r = Report {
        json: opts.log.format == Format::Json,
        first_failure: None,
        problems: 0,
    };
    if plan.specs.is_empty() && plan.selection.is_none() {
        r.line(
            Status::Fail(exit::USAGE),
            "secret",
            "no --secret given: fetch needs at least one (KVFETCH_SECRETS), or --all, --prefix or --tag",
            &[],
        );
    }
    check_outputs(&mut r, opts, &plan);
    check_stale_ok(&mut r, opts, &plan);
    let choice = match identity::choose(env, opts.identity_source, opts.selector.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            r.fail("identity", &e);
            return Ok(r.finish());
        }
    };
    report_source(&mut r, &choice, opts.selector.as_ref());
    let source = choice.source;
    if let Err(e) = spec::check_loopback_vaults(&plan.vaults(), source.on_loopback()) {
        r.fail("identity", &e);
        return Ok(r.finish());
    }
    let trust = http::Trust::load(plan.ca_pem.as_deref(), env)?;
    let identity = Identity::new(
        source,
        opts.selector.clone(),
        opts.backoff_base,
        env,
        &trust,
    );
    let tokens = Tokens::new(identity);
    let deadline = Deadline::after(opts.timeout);
    let vaults = vaults_of(&plan.specs, vault.as_ref());
    let resources: BTreeSet<&str> = vaults.iter().map(|v| v.resource.as_str()).collect();
    let mut have_token = true;
    for resource in resources {
        match tokens.get(resource, &deadline) {
            Ok(t) => report_token(&mut r, resource, &t),
            Err(e) => {
                r.fail("token", &e);
                have_token = false;
            }
        }
    }
    let agents = http::vault_agents_trusting(&trust, 1);
    for v in &vaults {
        check_vault(&mut r, v, &agents, &opts.api_version, &deadline);
    }
    if !have_token {
        return Ok(r.finish());
    }
    // The doctor does not wait for a role assignment to propagate: it says what is true now.
    let client = Client::new(
        agents,
        &opts.api_version,
        opts.backoff_base,
        Duration::ZERO,
        1,
    );
    let chosen = plan
        .selection
        .as_ref()
        .and_then(|sel| check_selection(&mut r, &client, &plan, sel, &tokens, &deadline));
    let specs = chosen.unwrap_or_else(|| plan.specs.clone());
    let (values, all_read) = check_secrets(&mut r, &client, &specs, &tokens, &deadline);
    if all_read {
        check_values(&mut r, opts, &plan, fetch::Snapshot { specs, values });
    }
    Ok(r.finish())
}

/// The vaults to check: every spec's; `--vault` only when there is no spec (a `--vault` no
/// spec uses is never contacted, as by fetch).
fn vaults_of(specs: &[spec::SecretSpec], default: Option<&Vault>) -> Vec<Vault> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let default = default.filter(|_| specs.is_empty());
    for v in specs.iter().map(|s| &s.vault).chain(default) {
        if seen.insert(v.url.clone()) {
            out.push(v.clone());
        }
    }
    out
}

fn check_outputs(r: &mut Report, opts: &Options, plan: &fetch::Plan) {
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
fn check_stale_ok(r: &mut Report, opts: &Options, plan: &fetch::Plan) {
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

fn report_source(r: &mut Report, choice: &Choice, selector: Option<&Selector>) {
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

fn report_token(r: &mut Report, resource: &str, t: &Token) {
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
fn proxied(url: &str) -> Option<String> {
    let proxy = ureq::Proxy::try_from_env()?;
    let uri: ureq::http::Uri = url.parse().ok()?;
    if proxy.is_no_proxy(&uri) {
        return None;
    }
    Some(format!("{:?}://{}:{}", proxy.protocol(), proxy.host(), proxy.port()).to_ascii_lowercase())
}

/// Resolve, connect, then one request without a token: Key Vault answers 401 with a bearer
/// challenge, which proves the certificate is trusted and that a vault answers.
fn check_vault(
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

/// A vault check that failed: a warning (it explains), for the exit code is what the secret
/// checks below give, as in fetch, which retries where this probe does not.
fn warn(r: &mut Report, e: &Error) {
    r.line(Status::Warn, "vault", &e.to_string(), &[]);
}

/// Resolve `host` (unless it is an IP address) and connect to one of its addresses.
fn reach(host: &str, port: u16, deadline: &Deadline) -> Result<String, Error> {
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
