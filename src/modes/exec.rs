//! `kvfetch exec [flags] -- COMMAND [ARGS…]`: the entrypoint wrapper. Resolve `--secret` specs
//! and inherited Key Vault references into the environment, write `--dir`/`--env-file` if asked,
//! then become COMMAND (`execve`, PATH lookup as a shell does). Fail closed: if anything cannot be
//! resolved, COMMAND never starts. With `--refresh`, kvfetch stays the parent instead
//! ([`crate::modes::supervise`]).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use crate::cli::Options;
use crate::error::Error;
use crate::modes::fetch::{Session, Snapshot, default_vault, plan_with, write_outputs};
use crate::output::memfile;
use crate::spec::SecretSpec;
use crate::vault::keyvault::Fetched;
use crate::{base::log, modes::supervise, spec::reference};

/// Run `exec`; returns the exit code (supervised mode) or never returns (plain mode).
pub fn run(opts: &Options, env: &HashMap<String, String>, argv: &[OsString]) -> Result<u8, Error> {
    let vault = default_vault(opts)?;
    let references = reference::scan(env.iter(), vault.as_ref())?;
    let plan = plan_with(opts, references, true)?;
    let session = Session::new(opts, env, plan)?;
    warn_file_names_holding_values(&session.plan.specs);
    let base: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    // With `--allow-env PATH` a secret may set PATH: then no message shows it, nor a path found
    // through it. Otherwise the command is found before any request: a typo costs no fetch and
    // writes no file.
    let selected_path =
        session.plan.selection.is_some() && opts.allow_env.iter().any(|a| a == "PATH");
    let named_path = session
        .plan
        .specs
        .iter()
        .any(|s| !s.hidden && s.env_name() == "PATH");
    let secret_path = selected_path || named_path;
    if !secret_path {
        find_program(&argv[0], path_of(&base), false)?;
    }
    // Supervised, ?file values live in a private directory on tmpfs: made (or refused) before
    // any request.
    let files_dir = match opts.refresh {
        Some(_) => supervise::private_dir(&session.plan.specs)?,
        None => None,
    };
    let snap = if session.plan.specs.is_empty() && session.plan.selection.is_none() {
        log::warn(
            "nothing to resolve: no --secret and no @Microsoft.KeyVault(...) reference in the environment",
            &[],
        );
        Snapshot::default()
    } else {
        session.fetch()?
    };
    if crate::modes::fetch::has_outputs(opts) {
        write_outputs(opts, &session.plan, &snap)?;
    }
    let (mut child_env, files) = child_env(&base, &snap.specs, &snap.values)?;
    // Plain exec: each ?file value in a sealed memfd the command inherits (supervised exec
    // keeps them in a private directory instead: supervise.rs).
    let mut fds = Vec::new();
    if opts.refresh.is_none() {
        for (name, bytes) in &files {
            let Some(bytes) = bytes else { continue };
            let fd = memfile::sealed(name, bytes)?;
            child_env.push((name.into(), memfile::fd_path(&fd).into()));
            fds.push(fd);
        }
    }
    let program = find_program(&argv[0], path_of(&child_env), secret_path)?;
    crate::modes::fetch::log_written(opts, &snap, true);
    log::info(
        "starting",
        &[
            ("command", &argv[0].to_string_lossy()),
            ("secrets", &snap.shown().count().to_string()),
        ],
    );
    if opts.refresh.is_some() {
        return supervise::run(opts, session, snap, base, program, argv, files_dir);
    }
    check_exec_size(argv, &child_env)?;
    for fd in &fds {
        memfile::inherit(fd)?;
    }
    log::flush();
    let mut command = std::process::Command::new(&program);
    command
        .arg0(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(child_env);
    // SAFETY: reset_in_child makes only async-signal-safe calls.
    unsafe {
        command.pre_exec(|| {
            crate::base::signals::reset_in_child();
            Ok(())
        });
    }
    let err = command.exec();
    Err(exec_error(
        &argv[0].to_string_lossy(),
        &shown(&program, secret_path),
        err,
    ))
}

/// The `?file` variables: each one's name and shaped value (`None`: an absent optional secret,
/// which sets no variable).
pub type FileVars = Vec<(String, Option<Vec<u8>>)>;

/// The parent's environment with secrets added (each shaped by its spec's options) and
/// references replaced; nothing else changes. An absent optional secret sets nothing. The
/// `?file` secrets are returned apart, their variables not set (every inherited entry of their
/// names removed): the caller puts each value in a file and sets the variable to its path.
pub fn child_env(
    base: &[(OsString, OsString)],
    specs: &[SecretSpec],
    values: &[Option<Fetched>],
) -> Result<(Vec<(OsString, OsString)>, FileVars), Error> {
    let mut env: Vec<(OsString, OsString)> = base.to_vec();
    let mut files = FileVars::new();
    let shaped = crate::modes::fetch::shaped(specs, values)?;
    for (spec, bytes) in specs.iter().zip(shaped).filter(|(s, _)| !s.hidden) {
        let name = spec.env_name();
        if spec.file {
            env.retain(|(k, _)| k != OsStr::new(&name));
            files.push((name, bytes));
            continue;
        }
        let Some(bytes) = bytes else { continue };
        if bytes.contains(&0) {
            return Err(Error::Output(format!(
                "the value of {name} ({}) contains a NUL byte, which no environment variable can hold; hand it over as a file with ?file (or write it with --dir)",
                spec.reference()
            )));
        }
        // Every inherited entry of that name goes (an environment may hold a name twice, and
        // the last would win): no reference string or old value survives beside the secret.
        env.retain(|(k, _)| k != OsStr::new(&name));
        env.push((name.into(), OsString::from_vec(bytes)));
    }
    Ok((env, files))
}

/// A variable named `*_FILE` is, by the images' convention, a path: one set to the value itself
/// is most likely a `?file` left out. Said once per variable, without the value.
fn warn_file_names_holding_values(specs: &[SecretSpec]) {
    for spec in specs.iter().filter(|s| !s.hidden && !s.file) {
        let name = spec.env_name();
        if name.ends_with("_FILE") {
            log::warn(
                "this variable's name ends in _FILE, which programs read as a path, but it gets the secret's value; add ?file to hand the value over as a file",
                &[("variable", &name), ("secret", &spec.reference())],
            );
        }
    }
}

/// The kernel's limit on one argument or `NAME=value` string (MAX_ARG_STRLEN, 32 pages).
const MAX_ARG_STRLEN: usize = 32 * 4096;

/// Check that `argv` and `env` fit what `execve` accepts, so a value that cannot be passed is
/// refused with its name before anything is stopped or started.
pub fn check_exec_size(argv: &[OsString], env: &[(OsString, OsString)]) -> Result<(), Error> {
    if let Some((k, v)) = env
        .iter()
        .find(|(k, v)| k.len() + v.len() + 2 > MAX_ARG_STRLEN)
    {
        return Err(Error::Resource(format!(
            "the variable {} is {} bytes, more than the kernel passes to a program (128 KiB); hand it over as a file with ?file (or write it with --dir)",
            k.to_string_lossy(),
            v.len()
        )));
    }
    // SAFETY: sysconf with a valid name.
    let arg_max = unsafe { libc::sysconf(libc::_SC_ARG_MAX) };
    let arg_max = usize::try_from(arg_max).unwrap_or(128 * 1024);
    let strings: usize = argv.iter().map(|a| a.len() + 1).sum::<usize>()
        + env
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
    let pointers = (argv.len() + env.len() + 2) * std::mem::size_of::<usize>();
    if strings + pointers > arg_max {
        return Err(Error::Resource(format!(
            "the environment and arguments take {} bytes, more than the kernel's limit of {arg_max} for a new program; hand large secrets over as files with ?file (or write them with --dir)",
            strings + pointers
        )));
    }
    Ok(())
}

fn path_of(env: &[(OsString, OsString)]) -> OsString {
    env.iter()
        .find(|(k, _)| k == "PATH")
        .map_or_else(|| "/usr/local/bin:/usr/bin:/bin".into(), |(_, v)| v.clone())
}

/// How a program found through PATH is named in messages: not at all when PATH is a secret.
fn shown(program: &Path, secret_path: bool) -> PathBuf {
    if secret_path && program.components().count() > 1 {
        PathBuf::from("(a program found through a PATH set from a secret)")
    } else {
        program.to_path_buf()
    }
}

/// Find COMMAND as a shell does: a name with `/` is a path; otherwise the first executable match
/// in PATH. Not found: exit 127; found but not executable: exit 126. With `secret_path`, PATH
/// came from a secret and no message shows it.
pub fn find_program(command: &OsStr, path: OsString, secret_path: bool) -> Result<PathBuf, Error> {
    let has_slash = command.as_bytes().contains(&b'/');
    let not_found = || {
        let searched = if secret_path {
            "PATH set from a secret, not shown".to_string()
        } else {
            format!("PATH={}", crate::base::log::escape(&path.to_string_lossy()))
        };
        Error::CommandNotFound(format!(
            "{}: command not found ({searched}); check the image and the command after --",
            command.to_string_lossy()
        ))
    };
    let not_executable = |p: &Path| {
        let p = if has_slash {
            p.to_path_buf()
        } else {
            shown(p, secret_path)
        };
        Error::NotExecutable(format!(
            "{}: permission denied (not executable); chmod +x it or fix the command after --",
            p.display()
        ))
    };
    if has_slash {
        let p = PathBuf::from(command);
        return match (p.is_file(), executable(&p)) {
            (true, true) => Ok(p),
            (true, false) => Err(not_executable(&p)),
            _ if p.is_dir() => Err(Error::NotExecutable(format!(
                "{}: is a directory, not a program; fix the command after --",
                p.display()
            ))),
            _ => Err(not_found()),
        };
    }
    let mut seen_non_executable = None;
    for dir in std::env::split_paths(&path) {
        let candidate = if dir.as_os_str().is_empty() {
            PathBuf::from(command)
        } else {
            dir.join(command)
        };
        if candidate.is_file() {
            if executable(&candidate) {
                return Ok(candidate);
            }
            seen_non_executable.get_or_insert(candidate);
        }
    }
    Err(seen_non_executable.map_or_else(not_found, |p| not_executable(&p)))
}

fn executable(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path.
    unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
}

/// What a failed `execve` means for the exit code.
pub fn exec_error(command: &str, program: &Path, err: std::io::Error) -> Error {
    if err.raw_os_error() == Some(libc::E2BIG) {
        return Error::Resource(format!(
            "{command}: the environment and arguments are larger than the kernel accepts for a new program ({err}); hand large secrets over as files with ?file (or write them with --dir)"
        ));
    }
    if crate::error::local_limit(&err) || err.raw_os_error() == Some(libc::EAGAIN) {
        return Error::Resource(format!(
            "{command}: cannot start it: {err} (a process, file or memory limit of this container or node)"
        ));
    }
    match err.kind() {
        std::io::ErrorKind::NotFound => Error::CommandNotFound(format!(
            "{command}: cannot run {} ({err}); a script's interpreter may be missing",
            program.display()
        )),
        _ => Error::NotExecutable(format!(
            "{command}: cannot run {} ({err})",
            program.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inherited_entry_of_a_secrets_name_is_replaced() {
        let vault = crate::spec::parse_vault("https://127.0.0.1:1", None).unwrap();
        let spec = crate::spec::parse_spec("DB=db", Some(&vault)).unwrap();
        let fetched =
            crate::vault::keyvault::parse_bundle(r#"{"value":"new","id":"x/1"}"#).unwrap();
        let base: Vec<(OsString, OsString)> = vec![
            (
                "DB".into(),
                "@Microsoft.KeyVault(SecretUri=https://x/secrets/db)".into(),
            ),
            ("OTHER".into(), "o".into()),
            ("DB".into(), "old".into()),
        ];
        let (env, files) = child_env(&base, &[spec], &[Some(fetched)]).unwrap();
        assert!(files.is_empty());
        let dbs: Vec<_> = env.iter().filter(|(k, _)| k == "DB").collect();
        assert_eq!(dbs.len(), 1);
        assert_eq!(dbs[0].1, "new");
        assert!(env.iter().any(|(k, v)| k == "OTHER" && v == "o"));
    }

    #[test]
    fn a_file_secret_sets_no_variable_and_clears_inherited_ones() {
        let vault = crate::spec::parse_vault("https://127.0.0.1:1", None).unwrap();
        let file = crate::spec::parse_spec("db?file", Some(&vault)).unwrap();
        let gone = crate::spec::parse_spec("GONE_FILE=gone?file&optional", Some(&vault)).unwrap();
        let fetched =
            crate::vault::keyvault::parse_bundle(r#"{"value":"a\u0000b","id":"x/1"}"#).unwrap();
        let base: Vec<(OsString, OsString)> = vec![
            (
                "DB_FILE".into(),
                "@Microsoft.KeyVault(SecretUri=https://x/secrets/db)".into(),
            ),
            ("GONE_FILE".into(), "old".into()),
        ];
        let (env, files) = child_env(&base, &[file, gone], &[Some(fetched), None]).unwrap();
        assert!(env.is_empty(), "{env:?}");
        assert_eq!(
            files,
            vec![
                ("DB_FILE".to_string(), Some(b"a\0b".to_vec())),
                ("GONE_FILE".to_string(), None)
            ]
        );
    }
}
