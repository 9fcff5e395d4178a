//! kvfetch: read Azure Key Vault secrets with a managed identity, with no credentials in code.
//!
//! The binary is a thin shell around [`run`], which tests drive directly. Modules, one concern
//! each: [`cli`] (flags, env), [`help`] (help, examples, completions), [`spec`] (what to fetch, host rules), [`identity`] (tokens),
//! [`keyvault`] (the vault client), [`retry`] (backoff and deadline), [`output`] (files and env
//! files), [`fetch`] (the init-step mode), [`error`] (the error enum and exit codes), [`log`].

pub mod certificate;
pub mod cli;
pub mod der;
pub mod detect;
pub mod doctor;
pub mod encoding;
pub mod error;
pub mod exec;
pub mod fetch;
pub mod health;
pub mod help;
pub mod http;
pub mod identity;
pub mod keyvault;
pub mod log;
pub mod output;
pub mod pkcs12;
pub mod progress;
pub mod reference;
pub mod refresh;
pub mod retry;
pub mod select;
pub mod serve;
pub mod shape;
pub mod signals;
pub mod spec;
pub mod supervise;
pub mod template;
pub mod throttle;
pub mod url;
pub mod watch;

use std::collections::HashMap;
use std::ffi::OsString;

pub use error::{Error, exit};

/// The environment as kvfetch reads it: variables whose name or value is not UTF-8 are
/// changed into U+FFFD text here (they are read as text only: flags, references, identity), and
/// named in the second list when kvfetch would act on them: its own (`KVFETCH_*`), and what
/// looks like a Key Vault reference (a reference under a name that is not UTF-8 could not be
/// replaced, and would reach the app as a literal). The environment a command started by
/// `exec` gets is read as bytes apart ([`exec`]), so other variables pass through unchanged.
pub fn env_of(
    vars: impl Iterator<Item = (OsString, OsString)>,
) -> (HashMap<String, String>, Vec<String>) {
    let mut bad = Vec::new();
    let env = vars
        .map(|(k, v)| {
            let text = v.to_str().is_some() && k.to_str().is_some();
            let k = k.to_string_lossy().into_owned();
            let read = k.starts_with("KVFETCH_") || reference::is_reference(&v.to_string_lossy());
            if !text && read {
                bad.push(k.clone());
            }
            (k, v.to_string_lossy().into_owned())
        })
        .collect();
    (env, bad)
}

/// Run kvfetch with the process's `args` (without the program name) and variables.
pub fn run_os(args: &[OsString], vars: impl Iterator<Item = (OsString, OsString)>) -> u8 {
    let (env, not_text) = env_of(vars);
    if let Some(name) = not_text.first() {
        let code = fail(&Error::Usage(format!(
            "the variable {name} is not UTF-8 text (its name or value), and kvfetch reads it: one of its own, or a Key Vault reference"
        )));
        log::flush();
        return code;
    }
    run(args, &env)
}

/// Run kvfetch with `args` (without the program name) and `env`; returns the exit code.
/// `exec`'s COMMAND and ARGS are passed on as the bytes given.
pub fn run<A: AsRef<std::ffi::OsStr>>(args: &[A], env: &HashMap<String, String>) -> u8 {
    harden();
    let args: Vec<OsString> = args.iter().map(|a| a.as_ref().to_os_string()).collect();
    let opts = match cli::parse_os(&args, env) {
        Ok(o) => o,
        Err(e) => {
            let code = fail(&e);
            log::flush();
            return code;
        }
    };
    log::init(opts.log);
    let result = match opts.command {
        cli::Command::Help(command) => {
            stdout(&help::help(command));
            Ok(exit::OK)
        }
        cli::Command::Usage => {
            eprint!("{}", help::short_usage());
            Ok(exit::USAGE)
        }
        cli::Command::Completions(ref shell) => {
            stdout(&help::completions(shell).unwrap_or_default());
            Ok(exit::OK)
        }
        cli::Command::Version => {
            stdout(&format!("kvfetch {}\n", env!("CARGO_PKG_VERSION")));
            Ok(exit::OK)
        }
        cli::Command::Fetch => early(|| fetch::run(&opts, env).map(|()| exit::OK)),
        cli::Command::Watch => early(|| watch::run(&opts, env)),
        cli::Command::Doctor => early(|| doctor::run(&opts, env)),
        cli::Command::Exec(ref argv) => early(|| exec::run(&opts, env, argv)),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => fail(&e),
    };
    log::flush();
    code
}

/// Write `text` to stdout; a reader that went away (`kvfetch help | head`) is not an error.
fn stdout(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Run a mode with the early signal handler in place (see [`signals`]).
fn early(mode: impl FnOnce() -> Result<u8, Error>) -> Result<u8, Error> {
    signals::install_early()?;
    mode()
}

/// Make the process non-dumpable before any secret or token is in memory: no core dump holds
/// them, and other processes of the same user cannot ptrace it or read its `/proc/PID/mem` or
/// `environ`. (`execve` of the app resets this for the app, as it should.)
fn harden() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
}

fn fail(e: &Error) -> u8 {
    log::error(
        &e.to_string(),
        &[
            ("kind", e.kind()),
            ("exit_code", &e.exit_code().to_string()),
        ],
    );
    e.exit_code()
}
