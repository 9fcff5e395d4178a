//! Writing: a snapshot's values shaped into the outputs' items (files, env file, templates), then
//! all of them written or none, and what a later snapshot no longer holds removed.

use super::*;
use crate::cli::Options;
use crate::error::Error;
use crate::output::{self, FileOptions};
use crate::spec::SecretSpec;
use crate::vault::keyvault::Fetched;
use crate::{base::log, shape};
use std::path::PathBuf;

/// Every output's path, bytes and mode: one file per secret under `--dir` (or, atomic, the
/// files of one generation), the env file and each template. Each spec's options shape its
/// value here, before anything is written.
pub(super) fn output_items(opts: &Options, plan: &Plan, snap: &Snapshot) -> Result<Items, Error> {
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
pub(super) struct Items {
    write: Vec<(PathBuf, Vec<u8>, FileOptions)>,
    generation: Vec<(String, Vec<u8>)>,
    absent: Vec<PathBuf>,
}

impl Items {
    /// Every path these items put on disk (an atomic `--dir`'s files by their visible names).
    pub(super) fn paths(&self, dir: Option<&std::path::Path>) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.write.iter().map(|(p, _, _)| p.clone()).collect();
        if let Some(dir) = dir {
            paths.extend(self.generation.iter().map(|(n, _)| dir.join(n)));
        }
        paths
    }
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
pub(super) fn env_text(spec: &SecretSpec, bytes: &[u8]) -> Result<String, Error> {
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
pub(super) fn write_items(
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
pub(super) fn remove_absent(paths: &[PathBuf]) -> Result<(), Error> {
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
