//! The Key Vault secrets client: one GET per secret (and the paged list a selection reads), with
//! Microsoft's retry rules and an error message for each way a vault says no.
//!
//! 429 honours `Retry-After` (else backoff), 5xx and transport failures are retried until the
//! run's deadline, 401 gets one retry with a fresh token, 403 is final except for a few slow
//! retries while a new role assignment propagates, 404 is final. Redirects are refused.

use std::time::{Duration, Instant};

use ureq::Agent;

use crate::base::retry::clamp_retry_after;
use crate::base::retry::{Backoff, Deadline, human};
use crate::error::Error;
use crate::identity::{Token, Tokens};
use crate::net::http::{self, Reply};
use crate::spec::SecretSpec;

pub use crate::base::redact::wipe;

mod fetched;
mod list;
mod messages;

use crate::base::stamps::request_id;
pub use fetched::{Derived, Fetched, parse_bundle};
pub(crate) use list::parse_page;
#[cfg(test)]
use list::*;
pub use list::{
    Listed, MAX_LIST_BYTES, MAX_LIST_PAGES, MAX_LISTED, MAX_NEXT_LINK, MAX_PAGE_ENTRIES, next_url,
};
pub(crate) use messages::error_parts;
use messages::*;

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
        let status = reply.status;
        if status == 200 {
            // The body holds the value: it is parsed once, by the caller, and never as an error.
            return Ok(Next::Done(reply.body));
        }
        let (code, inner, message) = error_parts(&reply.body);
        let what = subject.what();
        let vault = subject.vault();
        match status {
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

/// A page's entries (`Err(id)` for one naming no valid secret) and its `nextLink`.
type Page = (Vec<Result<Listed, String>>, Option<String>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Vault;
    use std::collections::BTreeMap;

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
