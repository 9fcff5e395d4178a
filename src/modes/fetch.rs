//! `kvfetch fetch`: the init step. Plan (validate everything that needs no network), get one
//! token per audience, fetch every secret in parallel, then write all outputs or none.
//!
//! `watch` and `exec` reuse the same pieces: [`plan`], [`Session`] (fetch again and again with one
//! token cache), [`write_outputs`] and [`sync_outputs`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::base::retry::{Deadline, human};
use crate::cli::Options;
use crate::error::Error;
use crate::identity::{Identity, Tokens};
use crate::output::{self, FileOptions};
use crate::shape::template::{self, Template};
use crate::spec::{self, SecretSpec};
use crate::vault::keyvault::{Client, Fetched};
use crate::vault::select::{self, Selection};
pub use crate::vault::snapshot::Snapshot;
use crate::{base::log, net::http, shape};

/// Everything decided before the first request.
pub struct Plan {
    /// The explicit specs (`--secret`, references, templates' secrets).
    pub specs: Vec<SecretSpec>,
    /// `--all` / `--prefix` / `--tag`: chosen from the vault's list at each fetch.
    pub selection: Option<Selection>,
    /// `--template`s; the secrets they use are hidden specs among `specs`.
    pub templates: Vec<Template>,
    pub files: FileOptions,
    pub ca_pem: Option<Vec<u8>>,
}

/// Whether any output is asked for: `--dir`, `--env-file` or a `--template`.
pub fn has_outputs(opts: &Options) -> bool {
    opts.dir.is_some()
        || opts.env_file.is_some()
        || !opts.templates.is_empty()
        || opts.serve.is_some()
}

/// Validate options into a plan: vaults, specs, names, outputs, CA file. `extra` are specs found
/// elsewhere (exec's Key Vault references); `env_names` checks variable names even without an
/// env file (exec).
pub fn plan(opts: &Options) -> Result<Plan, Error> {
    if !has_outputs(opts) {
        return Err(Error::Usage(
            "no output: give --dir DIR (KVFETCH_DIR), --env-file FILE (KVFETCH_ENV_FILE) and/or --template SRC:DEST (KVFETCH_TEMPLATES)"
                .into(),
        ));
    }
    if opts.secrets.is_empty() && !selects(opts) && opts.templates.is_empty() {
        return Err(Error::Usage(
            "no secrets: give --secret NAME (repeatable) or KVFETCH_SECRETS, or choose from the vault with --all, --prefix or --tag".into(),
        ));
    }
    let plan = plan_with(opts, Vec::new(), false)?;
    check_no_file(&plan)?;
    Ok(plan)
}

/// `?file` is `exec`'s: fetch and watch (and the doctor, which checks what fetch would do)
/// refuse it.
pub fn check_no_file(plan: &Plan) -> Result<(), Error> {
    match plan.specs.iter().find(|s| s.file) {
        Some(spec) => Err(Error::Usage(format!(
            "--secret {:?}: ?file hands the value to the command `kvfetch exec` starts, as a file named by a variable; fetch and watch write files with --dir already: drop ?file",
            spec.text
        ))),
        None => Ok(()),
    }
}

/// Whether the options choose secrets from the vault's list.
pub fn selects(opts: &Options) -> bool {
    opts.all || opts.prefix.is_some() || !opts.tags.is_empty()
}

/// The selection the options ask for, if any; it needs `--vault`.
fn selection(
    opts: &Options,
    vault: Option<&spec::Vault>,
    env_names: bool,
) -> Result<Option<Selection>, Error> {
    if !selects(opts) {
        return Ok(None);
    }
    let vault = vault.cloned().ok_or_else(|| {
        Error::Usage(
            "--all, --prefix and --tag choose from the list of one vault: give --vault (KVFETCH_VAULT)".into(),
        )
    })?;
    let (files, env) = (opts.dir.is_some(), opts.env_file.is_some() || env_names);
    if !files && !env {
        return Err(Error::Usage(
            "--all, --prefix and --tag choose secrets for --dir, --env-file or exec's environment; with templates alone, name each secret in the template".into(),
        ));
    }
    let env_prefix = if env { env_prefix(opts)? } else { None };
    let mut taken: Vec<PathBuf> = [&opts.env_file, &opts.ready_file]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    for t in &opts.templates {
        if let Ok((src, dest, _)) = template::parse_flag(t) {
            taken.extend([src, dest]);
        }
    }
    Ok(Some(Selection {
        vault,
        prefix: opts.prefix.clone(),
        tags: opts.tags.clone(),
        skip_managed: opts.skip_managed,
        files,
        env,
        allow_env: opts.allow_env.clone(),
        env_prefix,
        dir: opts.dir.clone(),
        taken,
        env_format: opts.env_file.as_ref().map(|_| opts.env_format),
    }))
}

/// What the variables of selected secrets start with: `--env-prefix`, else `--prefix` as a
/// variable (`app-` → `APP_`). `--all`/`--tag` without either put a listed name into a variable
/// only when `--allow-env` names it; with no `--allow-env` either, that is a usage error.
fn env_prefix(opts: &Options) -> Result<Option<String>, Error> {
    if let Some(p) = &opts.env_prefix {
        return Ok(Some(p.clone()));
    }
    if let Some(p) = &opts.prefix {
        let var = spec::env_name_for(p);
        let what = format!("--prefix {p:?}, as the variables' prefix");
        return select::check_env_prefix(&var, &what).map(Some);
    }
    if opts.allow_env.is_empty() {
        return Err(Error::Usage(
            "--all and --tag put names the vault chose into variables only under a prefix you choose: add --env-prefix PREFIX (KVFETCH_ENV_PREFIX; e.g. APP_, so db-password becomes APP_DB_PASSWORD), or --allow-env NAME for each variable a selected secret may set".into(),
        ));
    }
    Ok(None)
}

/// The vault `--vault` names, if any.
pub fn default_vault(opts: &Options) -> Result<Option<spec::Vault>, Error> {
    opts.vault
        .as_deref()
        .map(|v| spec::parse_vault(v, opts.resource.as_deref()))
        .transpose()
}

/// [`plan`] without the output and secret-count checks, plus `extra` specs.
pub fn plan_with(opts: &Options, extra: Vec<SecretSpec>, env_names: bool) -> Result<Plan, Error> {
    let vault = default_vault(opts)?;
    let mut specs = opts
        .secrets
        .iter()
        .map(|s| spec::parse_spec(s, vault.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    specs.extend(extra);
    let templates = opts
        .templates
        .iter()
        .map(|t| template::load(t, vault.as_ref(), &mut specs))
        .collect::<Result<Vec<_>, _>>()?;
    check_env_file_apart(opts, &specs, &templates)?;
    check_reserved(opts, &templates)?;
    spec::check_names(
        &specs,
        opts.dir.is_some(),
        opts.env_file.is_some() || env_names,
        &opts.allow_env,
    )?;
    let ca_pem = opts
        .ca_file
        .as_deref()
        .map(|p| read_ca_file(p, &opts.named("ca-file")))
        .transpose()?;
    Ok(Plan {
        selection: selection(opts, vault.as_ref(), env_names)?,
        templates,
        specs,
        files: FileOptions {
            mode: opts.file_mode,
            owner: opts.owner,
        },
        ca_pem,
    })
}

/// `--ca-file`: a regular file of at most 1 MiB (a bundle of every public root is ~200 KB).
/// `named` is how the user gave it (`--ca-file` or `KVFETCH_CA_FILE`).
fn read_ca_file(p: &Path, named: &str) -> Result<Vec<u8>, Error> {
    use crate::base::file::{Unreadable, read_regular};
    read_regular(p, 1 << 20).map_err(|e| {
        let msg = format!("cannot read {named} {}: {e}", p.display());
        match e {
            Unreadable::Open(io) => Error::from_io(&io, Error::Usage, msg),
            _ => Error::Usage(msg),
        }
    })
}

/// The env file, the ready file and each template's DEST must not be one of the files `--dir`
/// writes, nor each other, nor a template's source.
fn check_env_file_apart(
    opts: &Options,
    specs: &[SecretSpec],
    templates: &[Template],
) -> Result<(), Error> {
    let mut dir_files: Vec<PathBuf> = opts
        .dir
        .iter()
        .flat_map(|d| {
            let shown = specs.iter().filter(|s| s.in_outputs());
            shown.map(move |s| d.join(s.file_name()))
        })
        .collect();
    dir_files.extend(templates.iter().map(|t| t.src.clone()));
    let mut singles = vec![
        ("--env-file", opts.env_file.clone()),
        ("--ready-file", opts.ready_file.clone()),
    ];
    singles.extend(
        templates
            .iter()
            .map(|t| ("--template DEST", Some(t.dest.clone()))),
    );
    for (i, (flag, file)) in singles.iter().enumerate() {
        let Some(file) = file else { continue };
        let others = singles[i + 1..].iter().filter_map(|(_, f)| f.clone());
        let clash = dir_files
            .iter()
            .cloned()
            .chain(others)
            .find(|p| output::files::same_path(file, p));
        if let Some(p) = clash {
            return Err(Error::Usage(format!(
                "{flag} {} is also a file that kvfetch writes ({}); give it a path of its own",
                file.display(),
                p.display()
            )));
        }
    }
    Ok(())
}

/// No output may be a name the layout or kvfetch itself reserves: a kvfetch temp name (the
/// sweep removes those) anywhere, and with `--dir-layout atomic` anything under `--dir` that
/// starts with `..` (see [`output::atomic::reserved`]). A usage error, before any request.
fn check_reserved(opts: &Options, templates: &[Template]) -> Result<(), Error> {
    let outputs = [
        ("--env-file", &opts.env_file),
        ("--ready-file", &opts.ready_file),
    ]
    .into_iter()
    .filter_map(|(flag, p)| Some((flag, p.clone()?)))
    .chain(
        templates
            .iter()
            .map(|t| ("--template DEST", t.dest.clone())),
    );
    for (flag, path) in outputs {
        let temp = path.file_name().is_some_and(|n| {
            n.as_encoded_bytes()
                .starts_with(output::files::TEMP_PREFIX.as_bytes())
        });
        let atomic = opts.dir_layout == output::Layout::Atomic;
        let layout = opts
            .dir
            .as_deref()
            .filter(|_| atomic)
            .is_some_and(|dir| output::atomic::reserved(dir, &path));
        if temp || layout {
            return Err(Error::Usage(format!(
                "{flag} {}: that name belongs to {}; give a path of its own",
                path.display(),
                if temp {
                    "kvfetch's temp files (they are swept)"
                } else {
                    "the atomic layout of --dir (..data, generations: every name starting with '..')"
                }
            )));
        }
    }
    Ok(())
}

/// Before the first request: every output can be written (exit 6 if not), and its directory is
/// on memory and private (a warning, or exit 6 with `--require-tmpfs` / `--require-private-dir`).
/// Nothing on disk changes here.
pub fn check_outputs(opts: &Options, plan: &Plan) -> Result<(), Error> {
    check_outputs_with(opts, plan, &mut |msg| log::warn(msg, &[]))
}

/// [`check_outputs`], handing each warning to `warn` (the doctor reports them as findings).
pub fn check_outputs_with(
    opts: &Options,
    plan: &Plan,
    warn: &mut dyn FnMut(&str),
) -> Result<(), Error> {
    if let Some((uid, gid)) = opts.owner
        && !output::files::can_chown(uid, gid)
    {
        return Err(Error::Output(format!(
            "--owner {uid}{}: kvfetch runs as uid {} without CAP_CHOWN, so it can give files only to itself and its own groups; run it as root (or with CAP_CHOWN) or drop --owner",
            gid.map(|g| format!(":{g}")).unwrap_or_default(),
            output::files::euid()
        )));
    }
    let env_dir = opts.env_file.as_deref().map(parent_dir);
    let ready_dir = opts.ready_file.as_deref().map(parent_dir);
    if let Some(dir) = &opts.dir {
        output::files::check_writable_dir(dir, "--dir", true)?;
        for spec in plan.specs.iter().filter(|s| s.in_outputs()) {
            check_file_name(spec.file_name(), &spec.text)?;
            if opts.dir_layout == output::Layout::Atomic && spec.file_name().starts_with("..") {
                return Err(Error::Usage(format!(
                    "--secret {:?}: with --dir-layout atomic, names starting with '..' belong to the layout (..data, generations); give another alias",
                    spec.text
                )));
            }
            output::files::check_target(&dir.join(spec.file_name()))?;
        }
        check_ground(dir, "--dir", opts, warn)?;
    }
    if let (Some(file), Some(dir)) = (&opts.env_file, env_dir) {
        let name = file.file_name().map(|n| n.to_string_lossy());
        check_file_name(name.as_deref().unwrap_or_default(), "--env-file")?;
        output::files::check_writable_dir(dir, "the directory of --env-file", false)?;
        output::files::check_target(file)?;
        check_ground(dir, "the directory of --env-file", opts, warn)?;
    }
    if let (Some(file), Some(dir)) = (&opts.ready_file, ready_dir) {
        output::files::check_writable_dir(dir, "the directory of --ready-file", false)?;
        output::files::check_target(file)?;
    }
    for t in &plan.templates {
        let dir = parent_dir(&t.dest);
        let name = t.dest.file_name().map(|n| n.to_string_lossy());
        check_file_name(name.as_deref().unwrap_or_default(), "--template DEST")?;
        output::files::check_writable_dir(dir, "the directory of --template DEST", false)?;
        output::files::check_target(&t.dest)?;
        check_ground(dir, "the directory of --template DEST", opts, warn)?;
    }
    Ok(())
}

/// The files the templates render into.
pub fn template_dests(plan: &Plan) -> impl Iterator<Item = &Path> {
    plan.templates.iter().map(|t| t.dest.as_path())
}

/// Remove temp files a killed run left in the directories kvfetch writes (after every check
/// has passed, just before the first request).
pub fn sweep_outputs(opts: &Options) {
    let env_dir = opts.env_file.as_deref().map(parent_dir);
    let ready_dir = opts.ready_file.as_deref().map(parent_dir);
    let template_dirs = opts
        .templates
        .iter()
        .filter_map(|t| template::parse_flag(t).ok())
        .map(|(_, dest, _)| parent_dir(&dest).to_path_buf())
        .collect::<Vec<_>>();
    let dirs = opts
        .dir
        .as_deref()
        .into_iter()
        .chain(env_dir)
        .chain(ready_dir)
        .chain(template_dirs.iter().map(PathBuf::as_path));
    let mut swept: usize = dirs.map(output::files::sweep_stale_temps).sum();
    if let (Some(dir), output::Layout::Atomic) = (&opts.dir, opts.dir_layout) {
        swept += output::atomic::sweep(dir);
    }
    if swept > 0 {
        log::info(
            "removed temp files a killed kvfetch left behind",
            &[("count", &swept.to_string())],
        );
    }
}

/// File systems hold names of at most 255 bytes (NAME_MAX).
fn check_file_name(name: &str, what: &str) -> Result<(), Error> {
    if name.len() > 255 {
        return Err(Error::Output(format!(
            "{what:?}: the file name {}... is {} bytes long, more than a file system allows (255); give a shorter alias (ALIAS=NAME)",
            name.chars().take(32).collect::<String>(),
            name.len()
        )));
    }
    Ok(())
}

fn parent_dir(file: &Path) -> &Path {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Warn (or fail with the strict flags) when `dir` would rest on disk or is not private.
fn check_ground(
    dir: &Path,
    what: &str,
    opts: &Options,
    warn: &mut dyn FnMut(&str),
) -> Result<(), Error> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    if output::files::on_memory_fs(existing) == Some(false) {
        let msg = format!(
            "{what} {} is not on tmpfs or ramfs, so secrets would rest on disk; mount a memory volume there (Kubernetes: emptyDir with medium: Memory; docker: --tmpfs). On ACI no writable volume is in memory (only read-only secret volumes are): expect this warning there, or use kvfetch exec to keep secrets off disk",
            dir.display()
        );
        strict_or_warn(opts.require_tmpfs, msg, warn)?;
    }
    if let Some(why) = output::files::exposure(dir, opts.owner.map(|(uid, _)| uid)) {
        let msg = format!(
            "{what}: {why}, so another user or process could redirect or replace the secret files; use a directory only kvfetch and the app can write (e.g. mode 0700 or 0750)"
        );
        strict_or_warn(opts.require_private_dir, msg, warn)?;
    }
    Ok(())
}

fn strict_or_warn(strict: bool, msg: String, warn: &mut dyn FnMut(&str)) -> Result<(), Error> {
    if strict {
        return Err(Error::Output(msg));
    }
    warn(&msg);
    Ok(())
}

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

/// Run `fetch`.
pub fn run(opts: &Options, env: &HashMap<String, String>) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let session = Session::new(opts, env, plan(opts)?)?;
    let snap = session.fetch()?;
    write_outputs(opts, &session.plan, &snap)?;
    log_written(opts, &snap, opts.env_file.is_some());
    let (written, skipped) = written_counts(&snap);
    let mut fields = vec![("count", written.to_string())];
    if skipped > 0 {
        fields.push(("skipped", skipped.to_string()));
    }
    if !session.plan.templates.is_empty() {
        fields.push(("templates", session.plan.templates.len().to_string()));
    }
    fields.push(("elapsed", human(started.elapsed())));
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    log::info("fetched and wrote secrets", &fields);
    Ok(())
}

/// (secrets whose value reached an output — a file, a variable or a template — and secrets
/// skipped as absent and optional).
fn written_counts(snap: &Snapshot) -> (usize, usize) {
    let present = snap.values.iter().filter(|v| v.is_some()).count();
    (present, snap.values.len() - present)
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
const NAMED_FAILURES: usize = 3;

/// The first failure is the error (its exit code wins). A few more are each logged on a line
/// of their own; beyond [`NAMED_FAILURES`] in all, one line names the first few, cut, and counts
/// the rest, so that however many secrets fail (a deadline over a large selection), the log
/// stays short.
fn report(errors: Vec<Error>) -> Result<(), Error> {
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

/// Every output's path, bytes and mode: one file per secret under `--dir` (or, atomic, the
/// files of one generation), the env file and each template. Each spec's options shape its
/// value here, before anything is written.
fn output_items(opts: &Options, plan: &Plan, snap: &Snapshot) -> Result<Items, Error> {
    let shaped = shaped(&snap.specs, &snap.values)?;
    // A ?file secret is exec's to hand over: neither --dir nor the env file holds it.
    let shown = || {
        snap.specs
            .iter()
            .zip(&shaped)
            .filter(|(s, _)| s.in_outputs())
    };
    let mut items = Items::default();
    if let Some(dir) = &opts.dir {
        for (spec, bytes) in shown() {
            let path = dir.join(spec.file_name());
            match bytes {
                Some(bytes) if opts.dir_layout == output::Layout::Atomic => items
                    .generation
                    .push((spec.file_name().to_string(), bytes.clone())),
                Some(bytes) => items.write.push((path, bytes.clone(), plan.files)),
                None if opts.dir_layout == output::Layout::Atomic => {}
                None => items.absent.push(path),
            }
        }
    }
    if let Some(file) = &opts.env_file {
        let entries = shown()
            .filter_map(|(s, b)| Some((s, b.as_ref()?)))
            .map(|(s, b)| Ok((s.env_name(), env_text(s, b)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        let text = output::envfile::render(opts.env_format, &entries)?;
        items
            .write
            .push((file.clone(), text.into_bytes(), plan.files));
    }
    for t in &plan.templates {
        let files = FileOptions {
            mode: t.mode.unwrap_or(plan.files.mode),
            ..plan.files
        };
        items
            .write
            .push((t.dest.clone(), t.render(snap, &shaped)?, files));
    }
    Ok(items)
}

/// What the outputs are: the files to hold these bytes, the files of an atomic `--dir`'s
/// generation, and the files of absent optional secrets, which must not exist.
#[derive(Default)]
struct Items {
    write: Vec<(PathBuf, Vec<u8>, FileOptions)>,
    generation: Vec<(String, Vec<u8>)>,
    absent: Vec<PathBuf>,
}

/// Each spec's bytes (its options applied); `None` for an absent optional secret.
pub fn shaped(
    specs: &[SecretSpec],
    values: &[Option<Fetched>],
) -> Result<Vec<Option<Vec<u8>>>, Error> {
    specs
        .iter()
        .zip(values)
        .map(|(spec, f)| f.as_ref().map(|f| shape::apply(spec, f)).transpose())
        .collect()
}

/// A value as the text of a variable: bytes that are not UTF-8 (decoded binary) cannot be.
fn env_text(spec: &SecretSpec, bytes: &[u8]) -> Result<String, Error> {
    String::from_utf8(bytes.to_vec()).map_err(|_| {
        Error::Output(format!(
            "the value of {} ({}) is not UTF-8 text, so an env file cannot carry it; write it to a file with --dir",
            spec.env_name(),
            spec.reference()
        ))
    })
}

/// Say at info level what each secret became: its file and/or variable, and the version id
/// that was written (never the value), so an operator can match it with the vault's history.
/// `variables` is true when the secrets became environment variables (an env file or exec).
pub fn log_written(opts: &Options, snap: &Snapshot, variables: bool) {
    let present = snap.values.iter().map(Option::as_ref);
    for (spec, f) in snap
        .specs
        .iter()
        .zip(present)
        .filter(|(s, _)| !s.hidden)
        .filter_map(|(s, f)| Some((s, f?)))
    {
        let mut fields: Vec<(&str, String)> = vec![
            ("secret", spec.reference()),
            ("vault", spec.vault.url.clone()),
            ("version", f.version.clone()),
        ];
        if let Some(dir) = opts.dir.as_ref().filter(|_| spec.in_outputs()) {
            fields.push(("file", dir.join(spec.file_name()).display().to_string()));
        }
        if variables {
            fields.push(("variable", spec.env_name()));
        }
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        log::info("wrote", &fields);
    }
}

/// Write every output, or none.
pub fn write_outputs(opts: &Options, plan: &Plan, snap: &Snapshot) -> Result<(), Error> {
    let items = output_items(opts, plan, snap)?;
    write_items(opts, plan, items, true).map(|_| ())
}

/// Write `items` (only what differs unless `all`), as one unit: an atomic `--dir`'s generation
/// is prepared first, the other files are written, and `..data` flips last. Returns the paths
/// written.
fn write_items(
    opts: &Options,
    plan: &Plan,
    items: Items,
    all: bool,
) -> Result<Vec<PathBuf>, Error> {
    if let Some(dir) = &opts.dir {
        output::files::ensure_dir(dir, plan.files)?;
    }
    let write: Vec<_> = items
        .write
        .into_iter()
        .filter(|(path, bytes, files)| all || output::files::differs(path, bytes, *files))
        .collect();
    let mut written: Vec<PathBuf> = write.iter().map(|(p, _, _)| p.clone()).collect();
    let prepared = match &opts.dir {
        Some(dir) if opts.dir_layout == output::Layout::Atomic => {
            let (differ, off) = output::atomic::stale(dir, &items.generation, plan.files);
            written.extend(differ.iter().map(|n| dir.join(n)));
            if all || off || !differ.is_empty() {
                output::atomic::check(dir, &items.generation)?;
                Some(output::atomic::prepare(dir, &items.generation, plan.files)?)
            } else {
                None
            }
        }
        _ => None,
    };
    // One unit: the other files are moved into place, then `..data` flips; if the flip fails,
    // they are put back.
    let mut prepared = prepared;
    let result = output::files::write_all_then(&write, || match prepared.take() {
        Some(p) => p.commit(),
        None => Ok(()),
    });
    if let Err(e) = result {
        if let Some(p) = prepared {
            p.discard();
        }
        return Err(e);
    }
    remove_absent(&items.absent)?;
    Ok(written)
}

/// Remove the files of secrets a selection no longer has (an atomic `--dir` drops them with the
/// next generation instead).
pub fn remove_gone(opts: &Options, paths: &[PathBuf]) -> Result<(), Error> {
    if opts.dir_layout == output::Layout::Atomic {
        return Ok(());
    }
    for path in paths {
        if output::files::remove_file(path)? {
            log::info(
                "removed the file of a secret no longer selected",
                &[("file", &path.display().to_string())],
            );
        }
    }
    Ok(())
}

/// Remove the file of each absent optional secret (one a previous run or refresh wrote).
fn remove_absent(paths: &[PathBuf]) -> Result<(), Error> {
    for path in paths {
        if output::files::remove_file(path)? {
            log::info(
                "removed the file of an optional secret that is now absent",
                &[("file", &path.display().to_string())],
            );
        }
    }
    Ok(())
}

/// Make the outputs on disk what `snap` says, rewriting only the ones that differ (in bytes,
/// mode or owner, or missing): a changed secret, or an output someone else changed or removed.
/// Unchanged outputs keep their inode and mtime. All or nothing; returns the paths written.
pub fn sync_outputs(opts: &Options, plan: &Plan, snap: &Snapshot) -> Result<Vec<PathBuf>, Error> {
    let items = output_items(opts, plan, snap)?;
    write_items(opts, plan, items, false)
}

impl Plan {
    /// Every vault a token may be sent to: the specs' and the selection's.
    pub fn vaults(&self) -> Vec<&spec::Vault> {
        let specs = self.specs.iter().map(|s| &s.vault);
        specs
            .chain(self.selection.as_ref().map(|s| &s.vault))
            .collect()
    }
}
