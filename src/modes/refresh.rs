//! The refresh loop shared by `watch` and supervised `exec`: fetch in the background, compare,
//! rewrite only what changed, back off on failure (capped at `--refresh`), and keep the last good
//! outputs when a refresh fails. The main thread owns every write, so a signal handled there never
//! interrupts one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::base::log;
use crate::base::retry::{Backoff, human, jitter};
use crate::cli::Options;
use crate::error::Error;
use crate::modes::fetch::{
    Session, Snapshot, keep_stale, record_manifest, sync_outputs, write_outputs,
};
use crate::modes::health::Status;
use crate::spec::SecretSpec;
use crate::vault::keyvault::Fetched;

/// Messages the mode's main loop waits for.
pub enum Event {
    Signal(i32),
    Fetched(Result<Snapshot, Error>),
}

/// What one fetch result meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The first complete write.
    First,
    /// These secrets (file/variable names) changed and were rewritten.
    Changed(Vec<String>),
    Unchanged,
    /// The refresh failed; the last good outputs stay.
    Failed,
    /// `--stale-ok`: the first fetch met an outage; the outputs an earlier kvfetch wrote are
    /// kept (checked) and served, marked stale, until a fetch succeeds (that one is `First`).
    Stale,
}

pub struct Refresher {
    session: Arc<Session>,
    opts: Options,
    tx: Sender<Event>,
    pub current: Option<Snapshot>,
    in_flight: bool,
    failures_in_row: u32,
    next_due: Instant,
    /// Serving stale outputs: when they become older than `--stale-ok` allows.
    stale_until: Option<Instant>,
    pub status: Arc<Mutex<Status>>,
}

impl Refresher {
    pub fn new(session: Session, opts: &Options, tx: Sender<Event>) -> Refresher {
        let status = Status {
            max_stale: opts.max_stale,
            ..Status::default()
        };
        Refresher {
            session: Arc::new(session),
            opts: opts.clone(),
            tx,
            current: None,
            in_flight: false,
            failures_in_row: 0,
            next_due: Instant::now(),
            stale_until: None,
            status: Arc::new(Mutex::new(status)),
        }
    }

    /// Start from values already fetched and written (supervised exec's first fetch).
    pub fn seed(&mut self, values: Snapshot) {
        self.current = Some(values);
        self.next_due = Instant::now() + jitter(self.refresh(), 0.1);
        let mut s = self.lock();
        s.first_write_done = true;
        s.last_success = Some(Instant::now());
        s.refreshes = 1;
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// How long the main loop may sleep before the next refresh is due.
    pub fn wait(&self) -> Duration {
        if self.in_flight {
            Duration::from_secs(3600)
        } else {
            self.next_due.saturating_duration_since(Instant::now())
        }
    }

    /// Start a fetch in the background unless one is running.
    pub fn start(&mut self) {
        if self.in_flight {
            return;
        }
        self.in_flight = true;
        let (session, tx) = (self.session.clone(), self.tx.clone());
        let held = self.current.clone();
        let stale_at = self.stale_at();
        let spawned = std::thread::Builder::new().spawn(move || {
            let _ = tx.send(Event::Fetched(session.refresh_by(held.as_ref(), stale_at)));
        });
        if let Err(e) = spawned {
            // This refresh fails like any other and is retried with backoff.
            let _ = self.tx.send(Event::Fetched(Err(Error::Resource(format!(
                "cannot start the refresh thread ({e}); the process or node is at its thread limit (ulimit -u, pids.max)"
            )))));
        }
    }

    /// Digest one fetch result. `Err` ends the mode: a failed first fetch (with `fetch`'s exit
    /// code) or refreshes failing for longer than `--max-stale` (exit 7).
    pub fn handle(&mut self, result: Result<Snapshot, Error>) -> Result<Outcome, Error> {
        self.in_flight = false;
        let first = self.current.is_none();
        let outcome = match result {
            Ok(values) => self.apply(values),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(o) => {
                self.failures_in_row = 0;
                self.next_due = Instant::now() + jitter(self.refresh(), 0.1);
                let mut s = self.lock();
                s.refreshes += 1;
                s.last_success = Some(Instant::now());
                s.first_write_done = true;
                if std::mem::take(&mut s.serving_stale) {
                    log::info(
                        "the vault answers again: the stale outputs were replaced with fresh ones",
                        &[],
                    );
                }
                Ok(o)
            }
            // Serving stale outputs: an outage is a failed refresh, retried with backoff, until
            // the outputs are older than --stale-ok allows; anything else (a denial, a missing
            // secret) ends the mode as it would end a first fetch: stale outputs never cover it.
            Err(e) if first && self.lock().serving_stale => {
                if !e.outage() {
                    return Err(e);
                }
                if self.stale_until.is_some_and(|t| Instant::now() >= t) {
                    let age = self.opts.stale_ok.map(human).unwrap_or_default();
                    return Err(e.map_text(|t| {
                        format!("{t}; the outputs kept through the outage are now older than --stale-ok {age}")
                    }));
                }
                self.failed(e)
            }
            Err(e) if first => self.stale_start(e),
            Err(e) => self.failed(e),
        }
    }

    /// The first fetch failed with `e`: with `--stale-ok` and an outage, keep and serve the
    /// outputs an earlier kvfetch wrote (as its manifest vouches for them), ready but marked
    /// stale, and retry; otherwise `e` ends the mode.
    fn stale_start(&mut self, e: Error) -> Result<Outcome, Error> {
        let kept = keep_stale(&self.opts, &self.session.plan, e.clone())?;
        let allowed = self.opts.stale_ok.unwrap_or_default();
        self.stale_until = Some(Instant::now() + allowed.saturating_sub(kept.age));
        let backoff = Backoff {
            base: self.opts.backoff_base,
            cap_factor: u32::MAX,
        };
        let delay = backoff.delay(self.failures_in_row).min(self.refresh());
        self.failures_in_row += 1;
        self.next_due = Instant::now() + delay;
        let mut s = self.lock();
        *s.failures.entry(e.kind()).or_default() += 1;
        s.serving_stale = true;
        s.stale_starts += 1;
        s.first_write_done = true;
        // The data is as old as the outputs: --max-stale and the age metric count from there.
        s.last_success = Some(
            Instant::now()
                .checked_sub(kept.age)
                .unwrap_or_else(Instant::now),
        );
        Ok(Outcome::Stale)
    }

    /// When `--max-stale` runs out (after the first write): no refresh may wait past it.
    fn stale_at(&self) -> Option<Instant> {
        let s = self.lock();
        Some(s.last_success? + s.max_stale?)
    }

    fn refresh(&self) -> Duration {
        self.opts.refresh.unwrap_or(Duration::from_secs(300))
    }

    /// The shared status (for `/metrics` and the health endpoints).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Compare with the last good values; make the outputs on disk match, which rewrites what
    /// changed and restores what someone else changed or removed. Secrets a selection added or
    /// dropped count as changes; a dropped one's file is removed.
    fn apply(&mut self, snap: Snapshot) -> Result<Outcome, Error> {
        // A value its spec cannot shape fails this refresh before anything is counted or
        // touched: the outputs on disk stay as they were, and are not damaged.
        crate::modes::fetch::shaped(&snap.specs, &snap.values)?;
        self.note_expiries(&snap);
        let Some(old) = self.current.take() else {
            write_outputs(&self.opts, &self.session.plan, &snap)?;
            record_manifest(&self.opts, &self.session.plan, &snap);
            let variables = self.opts.env_file.is_some();
            crate::modes::fetch::log_written(&self.opts, &snap, variables);
            self.current = Some(snap);
            return Ok(Outcome::First);
        };
        let changes = changes(&old, &snap);
        let written = match self.sync(&old, &snap) {
            Ok(w) => w,
            Err(e) => {
                self.lock().outputs_damaged = true;
                self.current = Some(old);
                return Err(e);
            }
        };
        self.lock().outputs_damaged = false;
        // The manifest vouches for the outputs as now checked current (--stale-ok).
        record_manifest(&self.opts, &self.session.plan, &snap);
        self.log_restored(&snap, &written, &changes);
        if changes.is_empty() {
            self.current = Some(snap);
            return Ok(Outcome::Unchanged);
        }
        let mut names = BTreeSet::new();
        // One secret read under several specs (aliases, a template's fields) changes once.
        let mut told = HashSet::new();
        for c in &changes {
            if !c.spec.hidden {
                names.insert(c.spec.file_name().to_string());
            }
            let secret = (
                &c.spec.vault.url,
                c.spec.name.to_ascii_lowercase(),
                &c.spec.version,
            );
            if !told.insert(secret) {
                continue;
            }
            let msg = match (c.old, c.new) {
                (None, _) => "secret added",
                (_, None) => "secret removed",
                _ => "secret changed",
            };
            log::info(
                msg,
                &[
                    ("secret", &c.spec.name),
                    ("vault", &c.spec.vault.url),
                    ("old_version", version(c.old)),
                    ("new_version", version(c.new)),
                ],
            );
            *self.lock().changes.entry(c.spec.name.clone()).or_default() += 1;
        }
        // A template is re-rendered by the sync above; it is named when a secret it uses changed.
        for t in &self.session.plan.templates {
            let uses = |c: &Change| t.uses().any(|i| std::ptr::eq(c.spec, &snap.specs[i]));
            if changes.iter().any(uses) {
                names.insert(t.dest.display().to_string());
            }
        }
        self.current = Some(snap);
        Ok(Outcome::Changed(names.into_iter().collect()))
    }

    /// Record each value's `exp` and certificate end for `/metrics`.
    fn note_expiries(&self, snap: &Snapshot) {
        let mut s = self.lock();
        s.expires.clear();
        s.certificate_expires.clear();
        for (spec, f) in snap.specs.iter().zip(&snap.values) {
            let Some(f) = f else { continue };
            if let Some(exp) = f.expires {
                s.expires.insert(spec.name.clone(), exp);
            }
            if spec.shape.format.is_some()
                && let Ok(b) = crate::shape::certificate::bundle(spec, f)
            {
                s.certificate_expires.insert(spec.name.clone(), b.not_after);
            }
        }
    }

    /// Write what differs; remove the files of secrets the selection no longer has.
    fn sync(&self, old: &Snapshot, snap: &Snapshot) -> Result<Vec<PathBuf>, Error> {
        let written = sync_outputs(&self.opts, &self.session.plan, snap)?;
        if let Some(dir) = &self.opts.dir {
            let kept: BTreeSet<&str> = snap.shown().map(|(s, _)| s.file_name()).collect();
            let gone = old
                .shown()
                .map(|(s, _)| s.file_name())
                .filter(|f| !kept.contains(f));
            crate::modes::fetch::remove_gone(
                &self.opts,
                &gone.map(|f| dir.join(f)).collect::<Vec<_>>(),
            )?;
        }
        Ok(written)
    }

    /// Log each written output that no secret change explains: it was restored.
    fn log_restored(&self, snap: &Snapshot, written: &[PathBuf], changes: &[Change]) {
        let explained = |p: &std::path::Path| {
            let env_changed = !changes.is_empty() && self.opts.env_file.as_deref() == Some(p);
            let file_changed = self.opts.dir.as_ref().is_some_and(|d| {
                changes
                    .iter()
                    .any(|c| c.spec.in_outputs() && d.join(c.spec.file_name()) == p)
            });
            let template = crate::modes::fetch::template_dests(&self.session.plan).any(|t| t == p)
                && !changes.is_empty();
            env_changed || file_changed || template
        };
        let _ = snap;
        for p in written.iter().filter(|p| !explained(p)) {
            log::warn(
                "an output was changed or removed by someone else; restored it",
                &[("path", &p.display().to_string())],
            );
        }
    }

    /// A failed refresh: log, count, back off (capped at `--refresh`), check `--max-stale`.
    fn failed(&mut self, e: Error) -> Result<Outcome, Error> {
        let backoff = Backoff {
            base: self.opts.backoff_base,
            cap_factor: u32::MAX,
        };
        // The next try comes no later than a second after --max-stale runs out, so that the
        // exit it calls for is not put off by a long backoff, while /readyz has shown 503 for a
        // moment a probe can see.
        let until_stale = self
            .stale_at()
            .map(|t| t.saturating_duration_since(Instant::now()) + Duration::from_secs(1));
        let delay = backoff
            .delay(self.failures_in_row)
            .min(self.refresh())
            .min(until_stale.unwrap_or(Duration::MAX));
        self.failures_in_row += 1;
        self.next_due = Instant::now() + delay;
        let stale = {
            let mut s = self.lock();
            *s.failures.entry(e.kind()).or_default() += 1;
            s.stale()
        };
        log::error(
            &format!("refresh failed; keeping the last good secrets: {e}"),
            &[("kind", e.kind()), ("retry_in", &human(delay))],
        );
        if stale {
            let max = self.opts.max_stale.unwrap_or_default();
            return Err(Error::VaultUnavailable(format!(
                "refreshes have failed for longer than --max-stale {}; exiting so the orchestrator restarts kvfetch (last error: {e})",
                human(max)
            )));
        }
        Ok(Outcome::Failed)
    }
}

/// A version id for the log, or `absent` for a secret that is not there (an absent optional
/// one, or one a selection added or dropped).
fn version(f: Option<&Fetched>) -> &str {
    f.map_or("absent", |f| f.version.as_str())
}

/// One secret whose value differs between two snapshots; `None` on a side where it is absent.
struct Change<'a> {
    spec: &'a SecretSpec,
    old: Option<&'a Fetched>,
    new: Option<&'a Fetched>,
}

/// The key a secret is matched by across snapshots: its outputs and what it reads.
fn key(s: &SecretSpec) -> (String, bool, bool, String, String, Option<String>) {
    (
        s.file_name().to_string(),
        s.hidden,
        s.file,
        s.vault.url.clone(),
        s.name.to_ascii_lowercase(),
        s.version.clone(),
    )
}

/// What changed from `old` to `new`: new values, and secrets that appeared or went.
fn changes<'a>(old: &'a Snapshot, new: &'a Snapshot) -> Vec<Change<'a>> {
    let before: HashMap<_, _> = old
        .specs
        .iter()
        .zip(&old.values)
        .map(|(s, v)| (key(s), (s, v.as_ref())))
        .collect();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (spec, v) in new.specs.iter().zip(&new.values) {
        let k = key(spec);
        let was = before.get(&k).and_then(|(_, v)| *v);
        let differs = match (was, v.as_ref()) {
            (Some(a), Some(b)) => a.version != b.version || a.value != b.value,
            (None, None) => false,
            _ => true,
        };
        if differs {
            out.push(Change {
                spec,
                old: was,
                new: v.as_ref(),
            });
        }
        seen.insert(k);
    }
    for (k, (spec, v)) in &before {
        if !seen.contains(k) && v.is_some() {
            out.push(Change {
                spec,
                old: *v,
                new: None,
            });
        }
    }
    out
}
