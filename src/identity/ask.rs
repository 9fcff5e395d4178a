//! Asking the chosen source for a token, politely: backoff with jitter, IMDS's 410 window,
//! `Retry-After`, final answers failing fast, and one line that names the identity and the fix.

use super::*;
use crate::base::log;
use crate::base::retry::{Backoff, Deadline, human};
use crate::error::Error;
use crate::net::http::{self, Body, Reply};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use ureq::Agent;

/// One request to an identity endpoint.
pub(super) struct Ask {
    pub(super) url: String,
    pub(super) headers: Vec<(&'static str, String)>,
    pub(super) form: Option<String>,
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
                "{}{} at {} after {} ({}; last: {problem}{}) asking for {}; {fix}",
                crate::error::GAVE_UP_ON_IDENTITY,
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
pub(super) fn error_detail(body: &str) -> String {
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
pub(super) fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::base::encoding::percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}
