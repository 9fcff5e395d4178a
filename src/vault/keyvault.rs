//! The Key Vault secrets client: one GET per secret (and the paged list a selection reads), with
//! Microsoft's retry rules and an error message for each way a vault says no.
//!
//! 429 honours `Retry-After` (else backoff), 5xx and transport failures are retried until the
//! run's deadline, 401 gets one retry with a fresh token, 403 is final except for a few slow
//! retries while a new role assignment propagates, 404 is final. Redirects are refused.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use serde_json::Value;
use ureq::Agent;

use crate::base::retry::clamp_retry_after;
use crate::base::retry::{Backoff, Deadline, human};
use crate::error::Error;
use crate::identity::{Token, Tokens};
use crate::net::http::{self, Reply};
use crate::spec::{SecretSpec, Vault};

/// A fetched secret. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Fetched {
    pub value: String,
    /// The version id (last segment of the bundle's `id`).
    pub version: String,
    pub content_type: Option<String>,
    /// The `exp` attribute (Unix seconds), if set.
    pub expires: Option<u64>,
    /// The `updated` attribute (Unix seconds), if given: a refresh compares it with the list's.
    pub updated: Option<u64>,
    /// When it was fetched (Unix seconds, this machine's clock).
    pub fetched_at: u64,
    /// What a later stage derives from the value once (a certificate taken apart), shared by
    /// its clones.
    pub parsed: Derived,
}

/// A slot for what a later stage derives from a fetched value once: every clone of the
/// [`Fetched`] (each spec that reads the secret, each shaping of one snapshot) shares it. Typed
/// by the stage that fills it (`shape::certificate`), so the vault client needs to know nothing
/// of certificates.
#[derive(Clone, Default)]
pub struct Derived(std::sync::Arc<std::sync::OnceLock<Box<dyn std::any::Any + Send + Sync>>>);

impl Derived {
    /// The derived value, made by `make` the first time.
    pub fn get_or_init<T: std::any::Any + Send + Sync>(&self, make: impl FnOnce() -> T) -> &T {
        self.0
            .get_or_init(|| Box::new(make()))
            .downcast_ref()
            .expect("one stage fills a slot, always with one type")
    }

    /// Whether it was made already.
    pub fn is_made(&self) -> bool {
        self.0.get().is_some()
    }
}

impl PartialEq for Derived {
    /// Derived from the value, which `Fetched` compares itself.
    fn eq(&self, _: &Derived) -> bool {
        true
    }
}

impl Eq for Derived {}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetched")
            .field("version", &self.version)
            .field("value", &"<redacted>")
            .finish()
    }
}

impl Drop for Fetched {
    fn drop(&mut self) {
        wipe(&mut self.value);
    }
}
pub use crate::base::redact::wipe;

/// How the client behaves.
pub struct Client {
    agent: Agent,
    /// For loopback vaults: never through a proxy (a proxy's "loopback" is not ours, and the
    /// token would cross it in clear text over http).
    loopback_agent: Agent,
    api_version: String,
    backoff: Backoff,
    access_retry: Duration,
    /// Per-vault pause and concurrency after 429s (see [`crate::vault::throttle`]).
    gates: crate::vault::throttle::Gates,
}

/// What a request is about: it names the request in messages and logs, and its vault gives the
/// token's audience.
#[derive(Clone, Copy)]
enum Subject<'a> {
    Secret(&'a SecretSpec),
    /// A page of the vault's list of secrets; `patient` retries a 403 while a role assignment
    /// may be propagating (a selection needs the list; change detection does without).
    List(&'a Vault, bool),
}

impl Subject<'_> {
    fn vault(&self) -> &Vault {
        match self {
            Subject::Secret(spec) => &spec.vault,
            Subject::List(vault, _) => vault,
        }
    }

    /// `secret NAME in vault URL` or `the list of secrets of vault URL`.
    fn what(&self) -> String {
        match self {
            Subject::Secret(spec) => {
                format!("secret {} in vault {}", spec.reference(), spec.vault.url)
            }
            Subject::List(vault, _) => format!("the list of secrets of vault {}", vault.url),
        }
    }

    /// The `secret` field of log lines.
    fn label(&self) -> &str {
        match self {
            Subject::Secret(spec) => &spec.name,
            Subject::List(..) => "(list)",
        }
    }

    /// The kind of request, for `/metrics`.
    fn kind(&self) -> &'static str {
        match self {
            Subject::Secret(_) => "get",
            Subject::List(..) => "list",
        }
    }

    /// The permission an access policy must grant.
    fn permission(&self) -> &'static str {
        match self {
            Subject::Secret(_) => "get",
            Subject::List(..) => "get list",
        }
    }
}

/// One entry of the vault's list of secrets: its name and what a selection decides on (a list
/// carries no values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The name as the vault spells it (the last segment of the item's `id`).
    pub name: String,
    pub enabled: bool,
    /// `nbf` and `exp` (Unix seconds), if set.
    pub not_before: Option<u64>,
    pub expires: Option<u64>,
    /// The `updated` attribute of the current version (Unix seconds).
    pub updated: Option<u64>,
    /// Backs a certificate (`managed: true`).
    pub managed: bool,
    pub content_type: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// At most this many pages (25 secrets each) are read: a vault that keeps sending `nextLink`s
/// past 25,000 secrets is taken for a broken or hostile server.
pub const MAX_LIST_PAGES: usize = 1000;
/// At most this many entries on one page: Key Vault sends 25; a page of more is refused while
/// it is parsed, before its entries are allocated.
pub const MAX_PAGE_ENTRIES: usize = 100;
/// At most this many entries in the whole list (1,000 pages of Key Vault's 25).
pub const MAX_LISTED: usize = 25_000;
/// What one entry may keep of its content type and tags (Key Vault's own limits: 255
/// characters; 15 tags, keys of 512 and values of 256 characters). Beyond, they are left out.
const MAX_CONTENT_TYPE: usize = 255;
/// At most this many bytes of names, content types and tags kept from the whole list: with the
/// limits above an entry keeps at most ~12 KB, and 25,000 of those would be 300 MB.
pub const MAX_LIST_BYTES: usize = 32 << 20;
/// The longest `nextLink` followed (real ones are a few hundred bytes): each is kept to notice a
/// loop, so 1,000 of them stay small.
pub const MAX_NEXT_LINK: usize = 8 << 10;
const MAX_TAGS: usize = 15;
const MAX_TAG_KEY: usize = 512;
const MAX_TAG_VALUE: usize = 256;

/// What the loop does after one answer.
enum Next {
    /// A 200: the body.
    Done(String),
    /// Retry after this delay (None: backoff), noting the problem.
    Retry(Option<Duration>, String),
    /// A 403 retried while a role assignment may be propagating: if time runs out first, this
    /// access error (exit 4), not "unavailable", is the answer.
    RetryDenied(Error),
    RefreshToken,
}

impl Client {
    pub fn new(
        (agent, loopback_agent): (Agent, Agent),
        api_version: &str,
        backoff_base: Duration,
        access_retry: Duration,
        concurrency: usize,
    ) -> Client {
        Client {
            gates: crate::vault::throttle::Gates::new(concurrency),
            agent,
            loopback_agent,
            api_version: api_version.to_string(),
            backoff: Backoff {
                base: backoff_base,
                cap_factor: 16,
            },
            access_retry,
        }
    }

    fn url(&self, spec: &SecretSpec) -> String {
        let version = spec
            .version
            .as_deref()
            .map(|v| format!("/{v}"))
            .unwrap_or_default();
        format!(
            "{}/secrets/{}{version}?api-version={}",
            spec.vault.url, spec.name, self.api_version
        )
    }

    /// Fetch one secret, retrying within `deadline`.
    pub fn fetch(
        &self,
        spec: &SecretSpec,
        tokens: &Tokens,
        deadline: &Deadline,
    ) -> Result<Fetched, Error> {
        let body = self.call(Subject::Secret(spec), &self.url(spec), tokens, deadline)?;
        parse_bundle(&body).ok_or_else(|| {
            Error::Other(format!(
                "secret {} in vault {}: Key Vault answered 200 without a secret value",
                spec.reference(),
                spec.vault.url
            ))
        })
    }

    /// Every secret the vault lists (following `nextLink` to the end), retrying each page
    /// within `deadline` (a 403 only when `patient`). Entries whose id names no valid secret are
    /// left out with a warning.
    pub fn list(
        &self,
        vault: &Vault,
        tokens: &Tokens,
        deadline: &Deadline,
        patient: bool,
    ) -> Result<Vec<Listed>, Error> {
        let (items, _) = self.list_while(vault, tokens, deadline, patient, &mut |_, _| true)?;
        Ok(items)
    }

    /// [`Client::list`], asking `more(entries so far, pages read)` before each page after the
    /// first whether to go on; (entries, whether the list was read to its end). Of the entries
    /// left out, the first few are named and the rest counted in one line.
    pub fn list_while(
        &self,
        vault: &Vault,
        tokens: &Tokens,
        deadline: &Deadline,
        patient: bool,
        more: &mut dyn FnMut(&[Listed], usize) -> bool,
    ) -> Result<(Vec<Listed>, bool), Error> {
        let mut invalid = crate::base::log::Capped::new();
        let listed = self.list_pages(vault, tokens, deadline, patient, more, &mut invalid);
        invalid.finish(
            true,
            "the vault listed more entries whose ids name no valid secret; left out, not named one by one",
            &[("vault", &vault.url)],
        );
        listed
    }

    /// The pages of [`Client::list_while`]; `invalid` counts the entries left out.
    fn list_pages(
        &self,
        vault: &Vault,
        tokens: &Tokens,
        deadline: &Deadline,
        patient: bool,
        more: &mut dyn FnMut(&[Listed], usize) -> bool,
        invalid: &mut crate::base::log::Capped,
    ) -> Result<(Vec<Listed>, bool), Error> {
        let mut url = format!("{}/secrets?api-version={}", vault.url, self.api_version);
        let (mut items, mut seen, mut links) = (Vec::new(), HashSet::new(), HashSet::new());
        let mut kept = 0usize;
        for page_number in 0..MAX_LIST_PAGES {
            if page_number > 0 && !more(&items, page_number) {
                return Ok((items, false));
            }
            let body = self.call(Subject::List(vault, patient), &url, tokens, deadline)?;
            let (page, next) = parse_page(&body).map_err(|why| {
                Error::Protocol(format!(
                    "the list of secrets of vault {} {why}; check that --vault points at Key Vault and not at a proxy",
                    vault.url
                ))
            })?;
            kept += page.iter().flatten().map(retained).sum::<usize>();
            if items.len() + page.len() > MAX_LISTED || kept > MAX_LIST_BYTES {
                return Err(Error::Protocol(format!(
                    "vault {} listed more than {MAX_LISTED} secrets (or {} MiB of names, tags and content types); kvfetch stopped listing (a vault this large needs explicit --secret specs)",
                    vault.url,
                    MAX_LIST_BYTES >> 20
                )));
            }
            for item in page {
                match item {
                    Ok(l) if seen.insert(l.name.to_ascii_lowercase()) => items.push(l),
                    Ok(_) => {}
                    Err(id) => invalid.note(|| {
                        crate::base::log::warn(
                            "the vault listed an entry whose id names no valid secret; left out",
                            &[("vault", &vault.url), ("id", &id)],
                        )
                    }),
                }
            }
            let Some(link) = next else {
                return Ok((items, true));
            };
            url = next_url(vault, &link, &self.api_version)?;
            if !links.insert(url.clone()) {
                return Err(Error::Protocol(format!(
                    "vault {} sent the same nextLink twice while listing secrets (a loop); kvfetch stopped listing",
                    vault.url
                )));
            }
        }
        Err(Error::Protocol(format!(
            "vault {} listed more than {MAX_LIST_PAGES} pages of secrets; kvfetch stopped listing (a vault this large needs explicit --secret specs)",
            vault.url
        )))
    }

    /// One GET with the retry rules; the body of the 200.
    fn call(
        &self,
        subject: Subject,
        url: &str,
        tokens: &Tokens,
        deadline: &Deadline,
    ) -> Result<String, Error> {
        let vault = subject.vault();
        let resource = &vault.resource;
        let mut token = tokens.get(resource, deadline)?;
        let (mut refreshed, mut attempt) = (false, 0u32);
        let mut first_403: Option<Instant> = None;
        // The last answer the vault gave: the last attempt may be cut short by the deadline
        // itself, and "timed out" alone would hide that the vault was answering 503.
        let mut last_answer: Option<String> = None;
        let mut sent = 0u32;
        let mut waiting = crate::base::progress::Waiting::new();
        loop {
            // Wait while the vault is paused by a 429 or at its concurrency limit.
            let permit = match self.gates.enter(&vault.url, deadline) {
                Ok(permit) => permit,
                Err(closed) => {
                    let since = deadline.started();
                    return Err(closed_error(&subject, closed, since, sent, &last_answer));
                }
            };
            sent += 1;
            let timeout = deadline.remaining().min(Duration::from_secs(30));
            let bearer = token.bearer();
            // A fresh id per request: the vault's diagnostic log records it, so a failure
            // logged at -v can be matched with the vault's side.
            let request_id = request_id();
            let headers = [
                ("Authorization", bearer.as_str()),
                ("Accept", "application/json"),
                ("x-ms-client-request-id", request_id.as_str()),
            ];
            let agent = if crate::net::url::is_loopback(&vault.host) {
                &self.loopback_agent
            } else {
                &self.agent
            };
            let failed = |what: &str| {
                crate::base::log::debug(
                    "Key Vault request failed",
                    &[
                        ("secret", subject.label()),
                        ("vault", &vault.url),
                        ("problem", what),
                        ("request_id", &request_id),
                    ],
                );
            };
            crate::vault::throttle::sent(&vault.url, subject.kind());
            let answer = http::get(agent, url, &headers, timeout);
            drop(permit);
            match answer.as_ref().map(|r| r.status) {
                Ok(429) => {
                    let asked = answer.as_ref().ok().and_then(Reply::asked_delay);
                    let pause =
                        asked.map_or_else(|| self.backoff.delay(attempt), clamp_retry_after);
                    self.gates.throttled(&vault.url, pause);
                }
                Ok(200) => self.gates.succeeded(&vault.url),
                _ => {}
            }
            let next = match answer {
                Err(e) if e.permanent => {
                    failed(&e.text);
                    return Err(protocol_error(&subject.what(), &e));
                }
                Err(e) => Next::Retry(None, e.text),
                Ok(reply) => {
                    let status = reply.status;
                    match self.judge(subject, reply, &token, refreshed, &mut first_403) {
                        Ok(next) => next,
                        Err(e) => {
                            failed(&format!("HTTP {status}"));
                            return Err(e);
                        }
                    }
                }
            };
            let mut denied = None;
            let (delay, problem, asked) = match next {
                Next::Done(f) => return Ok(f),
                Next::RefreshToken => {
                    token = tokens.refresh(resource, &token, deadline)?;
                    refreshed = true;
                    continue;
                }
                Next::Retry(delay, problem) => {
                    if problem.starts_with("HTTP ") {
                        last_answer = Some(problem.clone());
                    }
                    (
                        delay.unwrap_or_else(|| self.backoff.delay(attempt)),
                        problem,
                        delay.is_some(),
                    )
                }
                Next::RetryDenied(e) => {
                    let problem = "HTTP 403 (a new role assignment may still be propagating)";
                    denied = Some(e);
                    // Never sleep past --access-retry: the last try comes at its end.
                    let window = first_403.map_or(Duration::ZERO, |t| {
                        self.access_retry.saturating_sub(t.elapsed())
                    });
                    (
                        self.backoff.delay(attempt).min(window),
                        problem.to_string(),
                        false,
                    )
                }
            };
            attempt += 1;
            crate::base::log::debug(
                "retrying",
                &[
                    ("secret", subject.label()),
                    ("vault", &vault.url),
                    ("problem", &problem),
                    ("request_id", &request_id),
                ],
            );
            let (kind, msg) = waiting_for(&problem, denied.is_some());
            // A delay the vault asked for is kept or the loop gives up; our own backoff is cut
            // so that tries go on until the deadline.
            let planned = deadline.planned(delay, asked);
            waiting.report_if(
                planned.is_some(),
                &format!("{kind} {}", vault.url),
                planned.unwrap_or(delay),
                msg,
                &[
                    ("secret", subject.label()),
                    ("vault", &vault.url),
                    ("problem", &problem),
                ],
            );
            if !deadline.sleep_within(delay, asked) {
                if let Some(e) = denied {
                    return Err(e);
                }
                if problem == http::HOST_NOT_FOUND {
                    return Err(Error::VaultUnavailable(format!(
                        "gave up on {} after {}: the vault's host {} does not resolve; check the vault name (--vault, the secret's URL), \
                         or, for a vault behind a private endpoint, that this network resolves privatelink.vaultcore.azure.net",
                        subject.what(),
                        human(deadline.started().elapsed()),
                        vault.host
                    )));
                }
                let last = match last_answer.filter(|a| *a != problem) {
                    Some(answer) => format!("last: {problem}; last answer: {answer}"),
                    None => format!("last: {problem}"),
                };
                return Err(Error::VaultUnavailable(format!(
                    "gave up on {} after {} and {} ({last}); the vault is throttling, failing or unreachable: check its network access (firewall, private endpoint, proxy) or raise --timeout",
                    subject.what(),
                    human(deadline.started().elapsed()),
                    crate::base::retry::attempts(attempt)
                )));
            }
        }
    }

    /// Decide what one answer means.
    fn judge(
        &self,
        subject: Subject,
        reply: Reply,
        token: &Token,
        refreshed: bool,
        first_403: &mut Option<Instant>,
    ) -> Result<Next, Error> {
        let (code, inner, message) = error_parts(&reply.body);
        let status = reply.status;
        let what = subject.what();
        let vault = subject.vault();
        match status {
            200 => Ok(Next::Done(reply.body)),
            401 if !refreshed => Ok(Next::RefreshToken),
            401 => Err(Error::AccessDenied(format!(
                "Key Vault rejected the managed identity's token ({}) for {what} even after a fresh token: {message}; check that the vault is in the identity's tenant and cloud (token audience {})",
                token.who(),
                vault.resource
            ))),
            403 if inner == "SecretDisabled" => Err(Error::Absent(format!(
                "{what} is disabled; enable it (az keyvault secret set-attributes --enabled true) or pin an enabled version"
            ))),
            403 if matches!(inner.as_str(), "ForbiddenByRbac" | "AccessDenied")
                || code == "AccessDenied" =>
            {
                let since = *first_403.get_or_insert_with(Instant::now);
                let e = Error::AccessDenied(access_denied(subject, token, &inner));
                let patient = !matches!(subject, Subject::List(_, false));
                if patient && since.elapsed() < self.access_retry {
                    return Ok(Next::RetryDenied(e));
                }
                Err(e)
            }
            403 if inner.starts_with("ForbiddenBy") && inner != "ForbiddenByPolicy" => {
                Err(Error::AccessDenied(format!(
                    "the network rules of vault {} refused this client for {what} ({inner}: {message}); allow this network in the vault's firewall or use a private endpoint",
                    vault.url
                )))
            }
            403 => Err(Error::AccessDenied(access_denied(
                subject,
                token,
                if inner.is_empty() { &code } else { &inner },
            ))),
            404 if code == "SecretNotFound" => Err(Error::Absent(format!(
                "{what} was not found ({code}); check the name, version and vault, or recover it if it was deleted recently (az keyvault secret recover)"
            ))),
            // Not Key Vault's own answer about the secret: a proxy, gateway or misrouted private
            // endpoint may have answered; `optional` does not skip it.
            404 => Err(Error::NotFound(format!(
                "{what}: HTTP 404 without Key Vault's SecretNotFound code ({code}); check the name, version and vault, and that --vault reaches Key Vault itself (no proxy or gateway answering for it)"
            ))),
            400 => Err(Error::Usage(format!(
                "Key Vault refused the request for {what}: {code}: {message}"
            ))),
            300..=399 => Err(Error::Other(format!(
                "vault {} answered {what} with a redirect to {}; kvfetch never follows redirects with a token: point --vault at the vault itself",
                vault.url,
                reply.location.as_deref().unwrap_or("?")
            ))),
            429 | 408 | 500..=599 => Ok(Next::Retry(
                reply.asked_delay().map(clamp_retry_after),
                format!("HTTP {status} {code}"),
            )),
            _ => Err(Error::Other(format!(
                "unexpected HTTP {status} from Key Vault for {what}: {code}: {message}"
            ))),
        }
    }
}

/// The access-denied message, with the one fix the vault's permission model calls for:
/// `ForbiddenByRbac` comes from an RBAC vault (a role assignment), `AccessDenied` from an
/// access-policy vault (a policy); anything else gets both.
fn access_denied(subject: Subject, token: &Token, code: &str) -> String {
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
fn waiting_for(problem: &str, denied: bool) -> (&'static str, &'static str) {
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
fn vault_name(host: &str) -> &str {
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return "VAULT_NAME";
    }
    host.split('.').next().unwrap_or(host)
}

/// A random (version 4) UUID for `x-ms-client-request-id`.
fn request_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No randomness to be had: an id that is at least unique within this process.
        let n = crate::base::retry::random_unit().to_bits();
        b[..8].copy_from_slice(&n.to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The run's deadline came before a request could start: the vault's 429 pause lasts past it,
/// or the deadline passed while the request waited for a slot. Nothing is sent after it.
fn closed_error(
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
fn protocol_error(what: &str, e: &http::Failure) -> Error {
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

/// A `nextLink` → the URL of the next page, on the vault's own origin. The link must name that
/// origin (`:443` spelled out or not) or be relative, and the path `/secrets`: a token is never
/// sent where a server's answer points. The link's own `api-version` is replaced with ours.
pub fn next_url(vault: &Vault, link: &str, api_version: &str) -> Result<String, Error> {
    let refuse = |why: &str| {
        Error::Protocol(format!(
            "vault {} sent a nextLink kvfetch will not follow ({why}): {}",
            vault.url,
            crate::base::log::escape(&crate::base::redact::cut_quiet(link, 200))
        ))
    };
    if link.len() > MAX_NEXT_LINK {
        return Err(refuse("it is longer than 8 KiB"));
    }
    let (base, query) = link.split_once('?').unwrap_or((link, ""));
    let path = if base.starts_with('/') {
        base.to_string()
    } else {
        let ours = crate::net::url::parse(&vault.url).map_err(|_| refuse("no vault origin"))?;
        let theirs = crate::net::url::parse(base).map_err(refuse)?;
        let port =
            |u: &crate::net::url::Url| u.port.unwrap_or(if u.scheme == "https" { 443 } else { 80 });
        if theirs.scheme != ours.scheme || theirs.host != ours.host || port(&theirs) != port(&ours)
        {
            return Err(refuse("it names another origin"));
        }
        theirs.path
    };
    if path.trim_end_matches('/') != "/secrets" {
        return Err(refuse("its path is not /secrets"));
    }
    let query_char = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b);
    if !query.bytes().all(query_char) {
        return Err(refuse("its query holds characters a URL may not"));
    }
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("api-version="))
        .collect();
    let ours = format!("api-version={api_version}");
    params.push(&ours);
    Ok(format!("{}/secrets?{}", vault.url, params.join("&")))
}

/// A page's entries (`Err(id)` for one naming no valid secret) and its `nextLink`.
type Page = (Vec<Result<Listed, String>>, Option<String>);

/// A page of the secret list → its entries (`Err(id)` for one that names no valid secret) and
/// its `nextLink` (None when null, empty or absent). Err (why) when the body is not such a page,
/// or holds more than [`MAX_PAGE_ENTRIES`] entries: the count is checked while the array is
/// read, so a page of a million tiny entries never becomes a million values.
pub(crate) fn parse_page(body: &str) -> Result<Page, String> {
    let not_a_list = || "is not a Key Vault secret list".to_string();
    let raw: RawPage = match serde_json::from_str(body) {
        Ok(raw) => raw,
        Err(e) if e.to_string().contains(TOO_MANY) => {
            return Err(format!(
                "has a page of more than {MAX_PAGE_ENTRIES} entries (Key Vault sends 25)"
            ));
        }
        Err(_) => return Err(not_a_list()),
    };
    let items = raw.value.ok_or_else(not_a_list)?.0;
    let next = match raw.next_link {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(not_a_list()),
    };
    Ok((items.iter().map(parse_item).collect(), next))
}

/// The marker of a page refused for its length (see [`Bounded`]).
const TOO_MANY: &str = "kvfetch: too many entries on a page";

/// A page as read: `value` bounded, `nextLink` as any JSON.
#[derive(serde::Deserialize)]
struct RawPage {
    value: Option<Bounded>,
    #[serde(rename = "nextLink")]
    next_link: Option<Value>,
}

/// A JSON array of at most [`MAX_PAGE_ENTRIES`] values; one more fails the parse.
struct Bounded(Vec<Value>);

impl<'de> serde::Deserialize<'de> for Bounded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Bounded;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of list entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Bounded, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Value>()? {
                    if items.len() == MAX_PAGE_ENTRIES {
                        return Err(serde::de::Error::custom(TOO_MANY));
                    }
                    items.push(item);
                }
                Ok(Bounded(items))
            }
        }
        d.deserialize_seq(Visit)
    }
}

/// The bytes one entry keeps of what the vault sent (names, content type, tags).
fn retained(l: &Listed) -> usize {
    let tags: usize = l.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
    l.name.len() + l.content_type.as_ref().map_or(0, String::len) + tags
}

/// One list entry; its name is the last segment of `id` after `/secrets/`.
fn parse_item(item: &Value) -> Result<Listed, String> {
    let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
    let shown = || crate::base::log::escape(&crate::base::redact::cut_quiet(id, 200));
    let name = id
        .trim_end_matches('/')
        .rsplit_once("/secrets/")
        .map(|(_, n)| n)
        .filter(|n| crate::spec::valid_name(n))
        .ok_or_else(shown)?;
    let attr = |k: &str| item.pointer(&format!("/attributes/{k}"));
    Ok(Listed {
        name: name.to_string(),
        enabled: attr("enabled").and_then(Value::as_bool).unwrap_or(true),
        not_before: attr("nbf").and_then(Value::as_u64),
        expires: attr("exp").and_then(Value::as_u64),
        updated: attr("updated").and_then(Value::as_u64),
        managed: item
            .get("managed")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        content_type: item
            .get("contentType")
            .and_then(Value::as_str)
            .filter(|c| c.chars().count() <= MAX_CONTENT_TYPE)
            .map(String::from),
        tags: item
            .get("tags")
            .and_then(Value::as_object)
            .map(|t| {
                t.iter()
                    .filter_map(|(k, v)| Some((k, v.as_str()?)))
                    .filter(|(k, v)| {
                        k.chars().count() <= MAX_TAG_KEY && v.chars().count() <= MAX_TAG_VALUE
                    })
                    .take(MAX_TAGS)
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// A SecretBundle → what kvfetch keeps of it.
pub fn parse_bundle(body: &str) -> Option<Fetched> {
    let v: Value = serde_json::from_str(body).ok()?;
    let value = v.get("value")?.as_str()?.to_string();
    crate::base::redact::value(&value);
    let id = v.get("id").and_then(Value::as_str).unwrap_or_default();
    Some(Fetched {
        value,
        version: id
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string(),
        content_type: v
            .get("contentType")
            .and_then(Value::as_str)
            .map(String::from),
        expires: v.pointer("/attributes/exp").and_then(Value::as_u64),
        updated: v.pointer("/attributes/updated").and_then(Value::as_u64),
        fetched_at: crate::identity::token::now(),
        parsed: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_random_version_4_uuids() {
        let ids: Vec<String> = (0..64).map(|_| request_id()).collect();
        for id in &ids {
            let groups: Vec<usize> = id.split('-').map(str::len).collect();
            assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.chars()
                    .all(|c| c == '-' || matches!(c, '0'..='9' | 'a'..='f')),
                "{id}"
            );
            assert_eq!(&id[14..15], "4", "version 4: {id}");
            assert!(
                matches!(&id[19..20], "8" | "9" | "a" | "b"),
                "RFC 4122 variant: {id}"
            );
        }
        let mut distinct = ids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), ids.len(), "each request its own id");
    }

    fn vault(url: &str) -> Vault {
        crate::spec::parse_vault(url, None).unwrap()
    }

    #[test]
    fn next_links_stay_on_the_vaults_origin() {
        let v = vault("https://myvault.vault.azure.net");
        let ok = |link: &str| next_url(&v, link, "7.5").unwrap();
        assert_eq!(
            ok(
                "https://myvault.vault.azure.net:443/secrets?api-version=7.2&$skiptoken=eyJ&maxresults=25"
            ),
            "https://myvault.vault.azure.net/secrets?$skiptoken=eyJ&maxresults=25&api-version=7.5"
        );
        assert_eq!(
            ok("https://MyVault.vault.azure.net/secrets/?$skiptoken=a%3D"),
            "https://myvault.vault.azure.net/secrets?$skiptoken=a%3D&api-version=7.5"
        );
        assert_eq!(
            ok("/secrets?$skiptoken=x"),
            "https://myvault.vault.azure.net/secrets?$skiptoken=x&api-version=7.5"
        );
        for bad in [
            "https://evil.example/secrets?$skiptoken=x",
            "https://myvault.vault.azure.net.evil.example/secrets?x=1",
            "https://myvault.vault.azure.net:8443/secrets?x=1",
            "http://myvault.vault.azure.net/secrets?x=1",
            "https://other.vault.azure.net/secrets?x=1",
            "https://user@myvault.vault.azure.net/secrets?x=1",
            "https://myvault.vault.azure.net/keys?x=1",
            "https://myvault.vault.azure.net/secrets/a?x=1",
            "/secrets?x=1#frag",
            "/secrets?x=a b",
            "//evil.example/secrets?x=1",
            "secrets?x=1",
        ] {
            let e = next_url(&v, bad, "7.5").unwrap_err();
            assert!(matches!(e, Error::Protocol(_)), "{bad}: {e:?}");
        }
        // A link too long to keep is refused, not followed.
        let long = format!("/secrets?$skiptoken={}", "a".repeat(MAX_NEXT_LINK));
        assert!(next_url(&v, &long, "7.5").is_err());
        // One of exactly 8 KiB is followed.
        let at = format!("/secrets?$skiptoken={}", "a".repeat(MAX_NEXT_LINK - 20));
        assert_eq!(at.len(), MAX_NEXT_LINK);
        assert!(next_url(&v, &at, "7.5").is_ok());
        // A loopback vault with a port: the port must match.
        let l = vault("http://127.0.0.1:8080");
        assert!(next_url(&l, "http://127.0.0.1:8080/secrets?a=1", "7.5").is_ok());
        assert!(next_url(&l, "http://127.0.0.1/secrets?a=1", "7.5").is_err());
    }

    #[test]
    fn list_pages_and_items() {
        let body = r#"{"value":[
            {"id":"https://v.vault.azure.net/secrets/db","attributes":{"enabled":false,"exp":5,"nbf":1},"tags":{"team":"a","n":1},"managed":true,"contentType":"application/x-pem-file"},
            {"id":"https://v.vault.azure.net/secrets/../etc"},
            {"id":"https://v.vault.azure.net/secrets/ok/"},
            {"noid":true}
        ],"nextLink":""}"#;
        let (items, next) = parse_page(body).unwrap();
        assert_eq!(next, None, "an empty nextLink ends the list");
        let db = items[0].as_ref().unwrap();
        assert_eq!(
            (
                db.name.as_str(),
                db.enabled,
                db.expires,
                db.not_before,
                db.managed
            ),
            ("db", false, Some(5), Some(1), true)
        );
        assert_eq!(db.tags.len(), 1, "only string tags");
        assert_eq!(
            retained(db),
            "db".len() + "application/x-pem-file".len() + 5
        );
        // Tags and content types beyond Key Vault's own limits are not kept.
        let big = format!(
            r#"{{"value":[{{"id":"/secrets/x","contentType":"{}","tags":{{{}}}}}]}}"#,
            "c".repeat(256),
            (0..20)
                .map(|i| format!(r#""k{i}":"v""#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let x = parse_page(&big).unwrap().0.remove(0).unwrap();
        assert_eq!((x.content_type, x.tags.len()), (None, MAX_TAGS));
        assert!(items[1].is_err() && items[3].is_err());
        assert_eq!(items[2].as_ref().unwrap().name, "ok");
        assert!(
            items[2].as_ref().unwrap().enabled,
            "enabled unless it says not"
        );
        assert_eq!(
            parse_page(r#"{"value":[],"nextLink":"/secrets?x=1"}"#)
                .unwrap()
                .1
                .as_deref(),
            Some("/secrets?x=1")
        );
        assert!(parse_page(r#"{"value":[],"nextLink":1}"#).is_err());
        assert!(parse_page(r#"{"nextLink":null}"#).is_err());
        assert_eq!(
            parse_page("<html>").unwrap_err(),
            "is not a Key Vault secret list"
        );
        // A tag whose key or value is longer than Key Vault allows is left out; at the limits,
        // kept.
        let tags = format!(
            r#"{{"value":[{{"id":"/secrets/t","tags":{{"{}":"v","k":"{}","{}":"{}"}}}}]}}"#,
            "k".repeat(MAX_TAG_KEY + 1),
            "v".repeat(MAX_TAG_VALUE + 1),
            "a".repeat(MAX_TAG_KEY),
            "b".repeat(MAX_TAG_VALUE)
        );
        let t = parse_page(&tags).unwrap().0.remove(0).unwrap();
        assert_eq!(
            t.tags,
            BTreeMap::from([("a".repeat(MAX_TAG_KEY), "b".repeat(MAX_TAG_VALUE))])
        );
        // A page of more entries than Key Vault sends is refused as it is read.
        let many = format!(r#"{{"value":[{}{{}}]}}"#, "{},".repeat(MAX_PAGE_ENTRIES));
        let e = parse_page(&many).unwrap_err();
        assert!(e.contains("more than 100 entries"), "{e}");
        let full = format!(
            r#"{{"value":[{}{{}}]}}"#,
            "{},".repeat(MAX_PAGE_ENTRIES - 1)
        );
        assert_eq!(parse_page(&full).unwrap().0.len(), MAX_PAGE_ENTRIES);
    }

    #[test]
    fn vault_names_for_messages() {
        assert_eq!(vault_name("myvault.vault.azure.net"), "myvault");
        assert_eq!(vault_name("127.0.0.1"), "VAULT_NAME");
        assert_eq!(vault_name("[::1]"), "VAULT_NAME");
        assert_eq!(
            clamp_retry_after(Duration::ZERO),
            crate::base::retry::RETRY_AFTER_FLOOR
        );
        assert_eq!(
            clamp_retry_after(Duration::from_secs(99_999_999)),
            crate::base::retry::RETRY_AFTER_CAP
        );
        assert_eq!(
            clamp_retry_after(Duration::from_secs(7)),
            Duration::from_secs(7)
        );
    }
}
