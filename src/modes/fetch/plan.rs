//! The plan: everything checked once, offline, from flags and environment, before any request:
//! vaults, specs and selections, outputs (paths, reserved names, the ground they stand on),
//! templates, the CA file. Each input is parsed here, once.

use crate::base::log;
use crate::cli::Options;
use crate::error::Error;
use crate::output::{self, FileOptions};
use crate::shape::template::{self, Template};
use crate::spec::{self, SecretSpec};
use crate::vault::select::{self, Selection};
use std::path::{Path, PathBuf};

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
    super::check_stale_ok(opts, &plan)?;
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
pub(super) fn selection(
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
pub(super) fn env_prefix(opts: &Options) -> Result<Option<String>, Error> {
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
pub(super) fn read_ca_file(p: &Path, named: &str) -> Result<Vec<u8>, Error> {
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
pub(super) fn check_env_file_apart(
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
pub(super) fn check_reserved(opts: &Options, templates: &[Template]) -> Result<(), Error> {
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
pub(super) fn check_file_name(name: &str, what: &str) -> Result<(), Error> {
    if name.len() > 255 {
        return Err(Error::Output(format!(
            "{what:?}: the file name {}... is {} bytes long, more than a file system allows (255); give a shorter alias (ALIAS=NAME)",
            name.chars().take(32).collect::<String>(),
            name.len()
        )));
    }
    Ok(())
}

pub(super) fn parent_dir(file: &Path) -> &Path {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Warn (or fail with the strict flags) when `dir` would rest on disk or is not private.
pub(super) fn check_ground(
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

pub(super) fn strict_or_warn(
    strict: bool,
    msg: String,
    warn: &mut dyn FnMut(&str),
) -> Result<(), Error> {
    if strict {
        return Err(Error::Output(msg));
    }
    warn(&msg);
    Ok(())
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
