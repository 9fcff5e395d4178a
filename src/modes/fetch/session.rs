//! The session: one token cache and one pair of clients, used to fetch every secret of a plan in
//! parallel (again and again for `watch` and supervised `exec`), and the one summary of what
//! failed.

use super::*;
use crate::base::retry::{Deadline, human};
use crate::cli::Options;
use crate::error::Error;
use crate::identity::{Identity, Tokens};
use crate::spec::{self, SecretSpec};
use crate::vault::keyvault::{Client, Fetched};
use crate::vault::select::{self};
use crate::{base::log, net::http};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Everything needed to fetch the plan's secrets, again and again: the identity, one token
/// cache (reused across refreshes) and one Key Vault client (kept-alive connections).
pub struct Session {
    pub plan: Plan,
    pub tokens: Tokens,
    /// The roots every remote TLS connection trusts (see [`http::Trust`]).
    pub trust: http::Trust,
    client: Client,
    timeout: std::time::Duration,
    concurrency: usize,
    /// The selection's log lines already given (see [`select::choose`]).
    noted: Mutex<std::collections::BTreeSet<String>>,
    /// The chosen secrets dropped for their values (see [`select::drop_uncarriable`]).
    dropped: Mutex<std::collections::BTreeSet<String>>,
    /// Vaults that refused to list (no `list` permission): refreshes there GET every secret,
    /// for the life of the process.
    unlisted: Mutex<std::collections::HashSet<String>>,
    /// When every secret was last read (see [`crate::vault::detect`]).
    last_full: Mutex<Option<std::time::Instant>>,
    full_read_every: std::time::Duration,
    /// `--start-splay`, spent before the first fetch only.
    splay: Mutex<Option<std::time::Duration>>,
}

impl Session {
    /// Check the outputs' ground and build the clients; no request yet.
    pub fn new(
        opts: &Options,
        env: &HashMap<String, String>,
        plan: Plan,
    ) -> Result<Session, Error> {
        check_outputs(opts, &plan)?;
        let choice = crate::identity::choose(env, opts.identity_source, opts.selector.as_ref())?;
        choice.log();
        let source = choice.source;
        spec::check_loopback_vaults(&plan.vaults(), source.on_loopback())?;
        let trust = http::Trust::load(plan.ca_pem.as_deref(), env)?;
        let identity = Identity::new(
            source,
            opts.selector.clone(),
            opts.backoff_base,
            env,
            &trust,
        );
        let agents = http::vault_agents_trusting(&trust, opts.concurrency);
        let client = Client::new(
            agents,
            &opts.api_version,
            opts.backoff_base,
            opts.access_retry,
            opts.concurrency,
        );
        sweep_outputs(opts);
        Ok(Session {
            plan,
            tokens: Tokens::new(identity),
            trust,
            client,
            timeout: opts.timeout,
            concurrency: opts.concurrency,
            noted: Mutex::default(),
            dropped: Mutex::default(),
            unlisted: Mutex::default(),
            last_full: Mutex::default(),
            full_read_every: opts.full_read_every,
            splay: Mutex::new(Some(opts.start_splay).filter(|d| !d.is_zero())),
        })
    }

    /// Fetch every secret of the plan (a selection's list read first) within one `--timeout`.
    pub fn fetch(&self) -> Result<Snapshot, Error> {
        self.refresh(None)
    }

    /// Fetch again, knowing what `held` holds: the vaults are listed and only what changed is
    /// read (see [`crate::vault::detect`]), unless a full read is due. `None` reads everything.
    pub fn refresh(&self, held: Option<&Snapshot>) -> Result<Snapshot, Error> {
        self.refresh_by(held, None)
    }

    /// [`Session::refresh`] with its deadline no later than `by` (when `--max-stale` runs out):
    /// no wait, a 429 pause or an identity endpoint's 410 window included, may outlast it.
    pub fn refresh_by(
        &self,
        held: Option<&Snapshot>,
        by: Option<std::time::Instant>,
    ) -> Result<Snapshot, Error> {
        self.splay_once();
        let deadline = Deadline::capped(self.timeout, by);
        let full = held.is_none() || self.full_read_due();
        let held = held.filter(|_| !full);
        let listings = self.listings(held.is_some(), &deadline)?;
        let specs = match &self.plan.selection {
            None => self.plan.specs.clone(),
            Some(sel) => {
                let listed = listings
                    .get(&sel.vault.url)
                    .map_or(&[][..], |l| l.entries.as_slice());
                let now = crate::identity::token::now();
                let mut noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
                select::choose(sel, &self.plan.specs, listed, now, &mut noted)?
            }
        };
        let kept = match held {
            Some(h) => crate::vault::detect::reusable(&specs, h, &listings),
            None => vec![None; specs.len()],
        };
        let to_read: Vec<SecretSpec> = specs
            .iter()
            .zip(&kept)
            .filter(|(_, k)| k.is_none())
            .map(|(s, _)| s.clone())
            .collect();
        let mut read = fetch_all(
            &to_read,
            &self.client,
            &self.tokens,
            &deadline,
            self.concurrency,
        )?
        .into_iter();
        let values = kept
            .into_iter()
            .map(|k| k.unwrap_or_else(|| read.next().flatten()))
            .collect();
        if full {
            *self.last_full.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(std::time::Instant::now());
        }
        let mut snap = Snapshot { specs, values };
        if let Some(sel) = &self.plan.selection {
            let mut dropped = self.dropped.lock().unwrap_or_else(|e| e.into_inner());
            select::drop_uncarriable(sel, self.plan.specs.len(), &mut snap, &mut dropped);
        }
        crate::shape::certificate::prepare(&snap.specs, &snap.values, &deadline)?;
        log::debug(
            "read",
            &[
                ("secrets", &snap.specs.len().to_string()),
                ("fetched", &to_read.len().to_string()),
                ("full", if full { "true" } else { "false" }),
            ],
        );
        Ok(snap)
    }

    fn full_read_due(&self) -> bool {
        let last = *self.last_full.lock().unwrap_or_else(|e| e.into_inner());
        last.is_none_or(|t| t.elapsed() >= self.full_read_every)
    }

    /// `--start-splay`: a random wait before the first fetch.
    fn splay_once(&self) {
        let Some(max) = self.splay.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let wait = max.mul_f64(crate::base::retry::random_unit());
        log::info(
            "waiting before the first fetch (--start-splay)",
            &[("wait", &human(wait))],
        );
        std::thread::sleep(wait);
    }

    /// The lists this fetch reads, by vault URL: the selection's vault always, and with
    /// `detect` every vault of an unpinned spec that has not refused to list.
    fn listings(
        &self,
        detect: bool,
        deadline: &Deadline,
    ) -> Result<HashMap<String, crate::vault::detect::Listing>, Error> {
        let mut vaults: Vec<&spec::Vault> = Vec::new();
        let sel = self.plan.selection.as_ref().map(|s| &s.vault);
        let unlisted = self
            .unlisted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let unpinned = self.plan.specs.iter().filter(|s| s.version.is_none());
        let detected = unpinned
            .map(|s| &s.vault)
            .filter(|v| detect && !unlisted.contains(&v.url));
        for v in sel.into_iter().chain(detected) {
            if !vaults.iter().any(|w| w.url == v.url) {
                vaults.push(v);
            }
        }
        let mut listings = HashMap::new();
        for v in vaults {
            let listed = if Some(v) == sel {
                let entries = self.client.list(v, &self.tokens, deadline, true);
                entries.map(|entries| crate::vault::detect::Listing {
                    entries,
                    complete: true,
                })
            } else {
                self.list_for_detection(v, deadline)
            };
            match listed {
                Ok(l) => {
                    listings.insert(v.url.clone(), l);
                }
                // Change detection is a saving, not a need: without `list`, read every secret.
                Err(Error::AccessDenied(_)) if Some(v) != sel => {
                    self.unlisted
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(v.url.clone());
                    log::info(
                        "the vault refuses to list secrets (no list permission), so every refresh reads each secret (one GET each) for the life of this process; grant list (part of Key Vault Secrets User) to pay one request per 25 secrets instead",
                        &[("vault", &v.url)],
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok(listings)
    }
}

impl Session {
    /// The list of `vault` as far as change detection of the named secrets pays: the next page
    /// is read only while the pages read so far are no more than the named secrets found on
    /// them (each page then saved a GET), and not once all are found. A refresh so costs at most
    /// min(pages, S) + 1 requests for S unchanged secrets, whatever the vault's size, and judges
    /// afresh each time. A list cut short knows nothing of the secrets it did not reach
    /// ([`crate::vault::detect::Listing::complete`]): those are read.
    fn list_for_detection(
        &self,
        vault: &spec::Vault,
        deadline: &Deadline,
    ) -> Result<crate::vault::detect::Listing, Error> {
        let named: std::collections::HashSet<String> = self
            .plan
            .specs
            .iter()
            .filter(|s| s.version.is_none() && s.vault.url == vault.url)
            .map(|s| s.name.to_ascii_lowercase())
            .collect();
        let mut more = |items: &[crate::vault::keyvault::Listed], pages: usize| {
            let found = items
                .iter()
                .filter(|l| named.contains(&l.name.to_ascii_lowercase()))
                .count();
            found < named.len() && pages <= found
        };
        let (entries, complete) =
            self.client
                .list_while(vault, &self.tokens, deadline, false, &mut more)?;
        Ok(crate::vault::detect::Listing { entries, complete })
    }
}

/// Fetch every spec (each distinct secret once), in parallel; all or an error.
pub fn fetch_all(
    specs: &[SecretSpec],
    client: &Client,
    tokens: &Tokens,
    deadline: &Deadline,
    concurrency: usize,
) -> Result<Vec<Option<Fetched>>, Error> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    // One token request per audience, before any fan-out.
    for spec in specs {
        tokens.get(&spec.vault.resource, deadline)?;
    }
    let key = |s: &SecretSpec| {
        (
            s.vault.url.clone(),
            s.name.to_ascii_lowercase(),
            s.version.clone(),
        )
    };
    let mut unique: Vec<&SecretSpec> = Vec::new();
    let mut index: HashMap<_, usize> = HashMap::new();
    for s in specs {
        index.entry(key(s)).or_insert_with(|| {
            unique.push(s);
            unique.len() - 1
        });
    }
    let results: Vec<Mutex<Option<Result<Fetched, Error>>>> =
        unique.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    // After the deadline no secret is started: those left are counted, not requested.
    let work = || {
        while !deadline.remaining().is_zero()
            && let Some(spec) = unique.get(next.fetch_add(1, Ordering::SeqCst))
        {
            let i = index[&key(spec)];
            let r = client.fetch(spec, tokens, deadline);
            if let Ok(f) = &r {
                log::debug(
                    "fetched",
                    &[
                        ("secret", &spec.name),
                        ("vault", &spec.vault.url),
                        ("version", &f.version),
                    ],
                );
            }
            *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        }
    };
    std::thread::scope(|scope| {
        // A thread that cannot be had (a process limit, a busy node) is one worker fewer; with
        // none at all, this thread fetches one secret at a time.
        let spawned = (0..concurrency.min(unique.len()))
            .filter(|_| {
                std::thread::Builder::new()
                    .spawn_scoped(scope, work)
                    .is_ok()
            })
            .count();
        if spawned == 0 {
            log::warn(
                "cannot start worker threads; fetching one secret at a time",
                &[],
            );
            work();
        }
    });
    let mut fetched = Vec::with_capacity(specs.len());
    let mut errors = Vec::new();
    let mut unstarted = 0usize;
    // A selection may be thousands of secrets deleted between the list and their reads.
    let mut absent = log::Capped::new();
    for s in specs {
        let slot = results[index[&key(s)]]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(result) = slot.as_ref() else {
            unstarted += 1;
            continue;
        };
        match result {
            Ok(f) => fetched.push(Some(f.clone())),
            // Optional is about absence only: access denied, throttling and the rest stay errors.
            Err(e) if skipped(s, e) => {
                absent.note(|| {
                    log::warn(
                        &format!(
                            "an optional secret is absent; skipped (no file written, no variable set): {e}"
                        ),
                        &[("secret", &s.reference()), ("vault", &s.vault.url)],
                    )
                });
                fetched.push(None);
            }
            Err(e) => errors.push(e.clone()),
        }
    }
    absent.finish(
        true,
        "more optional secrets are absent; skipped, not named one by one",
        &[],
    );
    if unstarted > 0 {
        errors.push(Error::VaultUnavailable(format!(
            "{unstarted} secrets were not requested: the deadline (--timeout {}) came first; raise --timeout, or choose fewer secrets",
            human(deadline.at().saturating_duration_since(deadline.started()))
        )));
    }
    report(errors)?;
    Ok(fetched)
}

/// Whether fetching `spec` failed only because an `optional` secret is absent (then it is
/// skipped). Optional is about absence only: access denied, throttling and the rest stay errors.
pub fn skipped(spec: &SecretSpec, e: &Error) -> bool {
    matches!(e, Error::Absent(_)) && spec.shape.optional
}

/// Everything [`write_outputs`] does before its first write: shape every value, render the env
/// file and the templates, in memory. The doctor's check that `fetch` can write these values.
pub fn check_values(opts: &Options, plan: &Plan, snap: &Snapshot) -> Result<(), Error> {
    output_items(opts, plan, snap).map(drop)
}

/// How many failures one summary names before it only counts the rest.
pub(super) const NAMED_FAILURES: usize = 3;

/// The first failure is the error (its exit code wins), a definite one before an outage. A few more are each logged on a line
/// of their own; beyond [`NAMED_FAILURES`] in all, one line names the first few, cut, and counts
/// the rest, so that however many secrets fail (a deadline over a large selection), the log
/// stays short.
pub(super) fn report(mut errors: Vec<Error>) -> Result<(), Error> {
    // A definite failure (a denial, a missing secret) comes before an outage (a vault or an
    // identity endpoint that stayed unreachable): it does not pass with time, and `--stale-ok`
    // must never keep outputs through it. Stable: otherwise in spec order.
    errors.sort_by_key(Error::outage);
    let mut errors = errors.into_iter();
    let Some(first) = errors.next() else {
        return Ok(());
    };
    let rest: Vec<Error> = errors.collect();
    if rest.len() < NAMED_FAILURES {
        for e in &rest {
            log::error(&e.to_string(), &[("kind", e.kind())]);
        }
        return Err(first);
    }
    let cut = |e: &Error| {
        let t = e.to_string();
        match t.char_indices().nth(240) {
            Some((i, _)) => format!("{}…", &t[..i]),
            None => t,
        }
    };
    let named: Vec<String> = rest.iter().take(NAMED_FAILURES).map(cut).collect();
    let more = rest.len().saturating_sub(NAMED_FAILURES);
    let tail = if more > 0 {
        format!("; and {more} more")
    } else {
        String::new()
    };
    let total = rest.len() + 1;
    Err(first.map_text(|t| {
        format!(
            "{t} [{total} failures in all; also: {}{tail}]",
            named.join("; ")
        )
    }))
}
