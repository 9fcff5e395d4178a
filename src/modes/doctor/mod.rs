//! `kvfetch doctor`: with the same flags as `fetch`, find out what `fetch` would do and why,
//! without writing any output and without printing any value or token. It checks, in the order
//! `fetch` meets them: the outputs (writable, on memory, private), the identity source and why it
//! was chosen, each token's claims that matter, each vault (resolves, connects, presents a
//! trusted certificate, answers as Key Vault), and each secret (readable: its version and
//! content type). Every failure is the error `fetch` would give, with its fix; the exit code is
//! the one `fetch` would have given (0 when all is well).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::base::log::{self, Format};
use crate::base::retry::Deadline;
use crate::cli::Options;
use crate::error::Error;
use crate::identity::{self, Identity, Tokens};
use crate::modes::fetch;
use crate::spec::{self, Vault};
use crate::vault::keyvault::Client;
use crate::{exit, net::http};

mod checks;
use checks::*;

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

/// A vault check that failed: a warning (it explains), for the exit code is what the secret
/// checks below give, as in fetch, which retries where this probe does not.
fn warn(r: &mut Report, e: &Error) {
    r.line(Status::Warn, "vault", &e.to_string(), &[]);
}
