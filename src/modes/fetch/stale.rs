//! `--stale-ok DURATION`: through an outage of Key Vault or the identity endpoint, keep the
//! outputs this kvfetch wrote at most DURATION ago, as its manifest vouches for them
//! ([`output::manifest`]). Never for a denial, a missing secret, a usage or an output error.

use super::*;
use crate::error::Error;
use crate::output::{self, manifest};
use std::path::{Path, PathBuf};

/// `--stale-ok` needs outputs on disk to keep: `--dir` or `--env-file`. A usage error.
pub fn check_stale_ok(opts: &Options, plan: &Plan) -> Result<(), Error> {
    if opts.stale_ok.is_none() {
        return Ok(());
    }
    let Some(at) = manifest_path(opts) else {
        return Err(Error::Usage(format!(
            "{} keeps the outputs an earlier kvfetch wrote, in --dir or --env-file: give --dir DIR or --env-file FILE (templates alone are not kept), or drop it",
            opts.named("stale-ok")
        )));
    };
    let mut outputs: Vec<(&str, PathBuf)> = [
        ("--env-file", &opts.env_file),
        ("--ready-file", &opts.ready_file),
    ]
    .into_iter()
    .filter_map(|(flag, p)| Some((flag, p.clone()?)))
    .collect();
    outputs.extend(
        plan.templates
            .iter()
            .map(|t| ("--template DEST", t.dest.clone())),
    );
    if let Some(dir) = &opts.dir {
        let shown = plan.specs.iter().filter(|s| s.in_outputs());
        outputs.extend(shown.map(|s| ("--secret", dir.join(s.file_name()))));
    }
    match outputs
        .iter()
        .find(|(_, p)| output::files::same_path(p, &at))
    {
        Some((flag, p)) => Err(Error::Usage(format!(
            "{flag} {}: that name belongs to --stale-ok's manifest; give a path of its own",
            p.display()
        ))),
        None => Ok(()),
    }
}

/// The manifest of these flags' outputs: in `--dir`, else beside the env file.
pub fn manifest_path(opts: &Options) -> Option<PathBuf> {
    manifest::path(opts.dir.as_deref(), opts.env_file.as_deref())
}

/// After a successful write (or a refresh that found everything current): with `--stale-ok`,
/// record every output of `snap` in the manifest, as written now. A manifest that cannot be
/// written fails nothing (the outputs are good): it is a warning, and a later start through an
/// outage refuses the outputs the old manifest does not describe.
pub fn record_manifest(opts: &Options, plan: &Plan, snap: &Snapshot) {
    let (Some(_), Some(at)) = (opts.stale_ok, manifest_path(opts)) else {
        return;
    };
    let recorded = output_items(opts, plan, snap).and_then(|items| {
        manifest::record(
            &at,
            &items.paths(opts.dir.as_deref()),
            manifest::now(),
            &asked(opts, plan),
        )
    });
    if let Err(e) = recorded {
        log::warn(
            &format!("{e}; a start through an outage will not keep these outputs (--stale-ok)"),
            &[],
        );
    }
}

/// `outage` ended the fetch: keep the outputs on disk if `--stale-ok` allows it and the
/// manifest vouches for them (`Ok`, with how old they are), else `outage` as it was, with the
/// reason they were not kept.
pub fn keep_stale(opts: &Options, plan: &Plan, outage: Error) -> Result<manifest::Kept, Error> {
    let Some(max_age) = opts.stale_ok else {
        return Err(outage);
    };
    if !outage.outage() {
        return Err(outage);
    }
    match stale_verdict(opts, plan) {
        Ok(kept) => {
            log::warn(
                "KEEPING STALE SECRETS: Key Vault or the identity endpoint is unreachable; the outputs an earlier kvfetch wrote are kept as they are (--stale-ok); they may be out of date until the vault answers again",
                &[
                    ("age", &human(kept.age)),
                    ("files", &kept.files.to_string()),
                    ("stale_ok", &human(max_age)),
                    ("outage", &outage.to_string()),
                    (
                        "fix",
                        "restore the network path to the vault and the identity endpoint; the next fetch (or watch's next refresh) replaces them",
                    ),
                ],
            );
            Ok(kept)
        }
        Err(why) => Err(outage.map_text(|t| {
            format!("{t}; --stale-ok could not keep the outputs written before: {why}")
        })),
    }
}

/// Whether `--stale-ok` would keep the outputs on disk now (the doctor asks too): `Ok` with
/// their age when the manifest vouches for them, else the reason.
pub fn stale_verdict(opts: &Options, plan: &Plan) -> Result<manifest::Kept, String> {
    let (Some(max_age), Some(at)) = (opts.stale_ok, manifest_path(opts)) else {
        return Err("--stale-ok needs --dir or --env-file".into());
    };
    let required = required_outputs(opts, plan);
    let dir = opts.dir.clone();
    let templates: Vec<PathBuf> = template_dests(plan).map(Path::to_path_buf).collect();
    let allowed = |p: &Path| {
        required.iter().any(|r| r == p)
            || templates.iter().any(|t| t == p)
            || opts.env_file.as_deref() == Some(p)
            // A selection's files: any name directly in --dir but the manifest's own.
            || dir.as_deref().is_some_and(|d| {
                p.parent() == Some(d) && p.file_name().is_some_and(|n| n != manifest::NAME)
            })
    };
    manifest::check(
        &at,
        &required,
        &allowed,
        max_age,
        manifest::now(),
        &asked(opts, plan),
    )
}

/// A digest of what the flags ask for: each secret (vault, name, version, the spec as written,
/// with its alias and options), the selection and the formats outputs take. Outputs written for
/// other flags (another vault, a version pinned to revoke a leaked one) are never kept.
fn asked(opts: &Options, plan: &Plan) -> String {
    let mut text = String::new();
    for s in &plan.specs {
        text.push_str(&format!(
            "secret {}|{}|{:?}|{}|{}\n",
            s.vault.url, s.name, s.version, s.text, s.hidden
        ));
    }
    text.push_str(&format!(
        "select {:?}|{}|{:?}|{:?}|{:?}|{}\n",
        opts.vault, opts.all, opts.prefix, opts.env_prefix, opts.tags, opts.skip_managed
    ));
    text.push_str(&format!(
        "outputs {:?}|{:?}|{:o}|{:?}|{:?}|{:?}\n",
        opts.dir_layout,
        opts.env_format,
        opts.file_mode,
        opts.owner,
        opts.templates,
        opts.allow_env
    ));
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    crate::base::encoding::hex(digest.as_ref())
}

/// The outputs the plan writes whatever the vault says: each named secret's file in `--dir`
/// (an optional one may be absent), the env file and each template.
fn required_outputs(opts: &Options, plan: &Plan) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match &opts.dir {
        Some(dir) => plan
            .specs
            .iter()
            .filter(|s| s.in_outputs() && !s.shape.optional)
            .map(|s| dir.join(s.file_name()))
            .collect(),
        None => Vec::new(),
    };
    out.extend(opts.env_file.clone());
    out.extend(template_dests(plan).map(Path::to_path_buf));
    out
}
