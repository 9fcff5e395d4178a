//! The command line. One table describes every flag (its environment variable, default and help),
//! and both parsing and `--help` are driven from it, so they cannot disagree. A flag wins over
//! its environment variable, which wins over the default. [`help`] writes help, examples and
//! completions from the same table.
//!
//! May use every stage below `modes` (to parse a flag into its stage's own type).

pub mod help;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::base::log;
use crate::error::Error;
use crate::identity::{Pin, Selector};
use crate::output::Format;

mod flags;
mod scan;
mod values;

use flags::*;
pub use flags::{EXEC, FETCH, FLAGS, Flag, WATCH};
pub use scan::command_name;
use scan::*;
use values::*;
pub use values::{DURATION_RANGES, RELOAD_SIGNALS, signal_number};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Fetch,
    Watch,
    /// `doctor [fetch flags]`: check what fetch would do, writing nothing.
    Doctor,
    /// `exec [flags] -- COMMAND [ARGS…]`: bytes, as given (they need not be UTF-8).
    Exec(Vec<std::ffi::OsString>),
    /// Help for one command (or the overview).
    Help(Option<&'static str>),
    /// A bare `kvfetch`: the short usage, exit 2.
    Usage,
    /// `completions SHELL`: a completion script.
    Completions(String),
    Version,
}

impl Command {
    fn mode(&self) -> u8 {
        match self {
            Command::Fetch | Command::Doctor => FETCH,
            Command::Watch => WATCH,
            Command::Exec(_) => EXEC,
            _ => ALL,
        }
    }
}

/// What a supervised child gets when a secret changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    Restart,
    Signal(i32),
    Nothing,
}

/// `--serve ADDR`, `--serve-token-file FILE`, `--serve-allow-remote`, as parsed (served by
/// `modes::serve`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    pub addr: std::net::SocketAddr,
    pub token_file: PathBuf,
    pub allow_remote: bool,
}

/// Parsed, validated options.
#[derive(Debug, Clone)]
pub struct Options {
    pub command: Command,
    pub vault: Option<String>,
    pub secrets: Vec<String>,
    /// `--all`, `--prefix`, `--tag`, `--skip-managed`: choose from the vault's list.
    pub all: bool,
    pub prefix: Option<String>,
    /// `--env-prefix`: the variables of selected secrets start with it.
    pub env_prefix: Option<String>,
    pub tags: Vec<(String, String)>,
    pub skip_managed: bool,
    /// `--template SRC:DEST[:MODE]`, as given (parsed with the plan, which reads SRC).
    pub templates: Vec<String>,
    pub dir: Option<PathBuf>,
    pub dir_layout: crate::output::Layout,
    pub env_file: Option<PathBuf>,
    pub env_format: Format,
    pub file_mode: u32,
    pub owner: Option<(u32, Option<u32>)>,
    pub require_tmpfs: bool,
    pub require_private_dir: bool,
    /// Variables a secret may set although they steer programs (`--allow-env`).
    pub allow_env: Vec<String>,
    pub selector: Option<Selector>,
    pub identity_source: Pin,
    pub resource: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub api_version: String,
    pub concurrency: usize,
    pub timeout: Duration,
    pub backoff_base: Duration,
    pub access_retry: Duration,
    pub start_splay: Duration,
    pub full_read_every: Duration,
    pub log: log::Logger,
    /// `--refresh`, when given or defaulted (exec: only when given).
    pub refresh: Option<Duration>,
    pub max_stale: Option<Duration>,
    /// `--stale-ok`: through an outage, keep the outputs written at most this long ago.
    pub stale_ok: Option<Duration>,
    pub ready_file: Option<PathBuf>,
    pub health_listen: Option<String>,
    /// `watch --serve`: the secrets endpoint (None for every other command).
    pub serve: Option<ServeConfig>,
    pub notify_url: Option<String>,
    pub cleanup: bool,
    pub on_change: OnChange,
    pub grace: Duration,
    /// Flags whose value came from their environment variable, not the command line.
    pub from_env: Vec<&'static str>,
}

impl Options {
    /// How the user gave flag `long`: `--ca-file`, or `KVFETCH_CA_FILE` when it came from the
    /// environment, so a message points at what to change.
    pub fn named(&self, long: &str) -> String {
        match FLAGS.iter().find(|f| f.long == long) {
            Some(f) if self.from_env.contains(&f.long) => f.env.to_string(),
            _ => format!("--{long}"),
        }
    }
}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(format!("{}; see kvfetch --help", msg.into()))
}

/// Parse the process's own arguments: COMMAND and ARGS after `exec`'s `--` are kept as bytes;
/// every other argument must be UTF-8 text (a flag's value that is not is refused, never
/// changed into U+FFFD).
pub fn parse_os(
    args: &[std::ffi::OsString],
    env: &HashMap<String, String>,
) -> Result<Options, Error> {
    let text: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut opts = parse(&text, env)?;
    let tail = match &opts.command {
        Command::Exec(argv) => argv.len(),
        _ => 0,
    };
    let (flags, argv) = args.split_at(args.len() - tail);
    if let Some(bad) = flags.iter().find(|a| a.to_str().is_none()) {
        return Err(usage(format!(
            "the argument {:?} is not UTF-8 text; only the command after exec's -- and its arguments may hold other bytes",
            bad.to_string_lossy()
        )));
    }
    if let Command::Exec(v) = &mut opts.command {
        *v = argv.to_vec();
    }
    Ok(opts)
}

/// Parse `args` (without the program name) with `env` as the environment.
pub fn parse(args: &[String], env: &HashMap<String, String>) -> Result<Options, Error> {
    let (command, given) = scan(args)?;
    let value = |f: &Flag| -> Option<String> {
        given
            .get(f.long)
            .and_then(|v| v.last().cloned())
            .or_else(|| env.get(f.env).filter(|v| !v.is_empty()).cloned())
            .or(f.default.map(String::from))
    };
    let by = |long: &str| {
        FLAGS
            .iter()
            .find(|f| f.long == long)
            .expect("flag in table")
    };
    let get = |long: &str| value(by(long));
    let switch = |long: &str| -> Result<bool, Error> {
        if given.contains_key(long) {
            return Ok(true);
        }
        let f = by(long);
        match env.get(f.env).map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("" | "0" | "false" | "no") => Ok(false),
            Some("1" | "true" | "yes") => Ok(true),
            Some(other) => Err(usage(format!("{}={other:?} must be true or false", f.env))),
        }
    };
    let secrets = match given.get("secret") {
        Some(list) => list.clone(),
        None => env
            .get("KVFETCH_SECRETS")
            .map(|s| crate::spec::split_list(s))
            .unwrap_or_default(),
    };
    let (quiet, verbose) = (switch("quiet")?, switch("verbose")?);
    let log_format = match get("log-format").as_deref() {
        Some("json") => log::Format::Json,
        Some("text") => log::Format::Text,
        other => {
            return Err(usage(format!(
                "--log-format {:?} must be text or json",
                other.unwrap_or_default()
            )));
        }
    };
    let refresh = refresh(&command, &given, env)?;
    once_each(&given)?;
    if matches!(command, Command::Exec(_)) && refresh.is_none() {
        supervised_only(&given, env)?;
    }
    let from_env: Vec<&'static str> = FLAGS
        .iter()
        .filter(|f| !given.contains_key(f.long) && env.get(f.env).is_some_and(|v| !v.is_empty()))
        .map(|f| f.long)
        .collect();
    let options = || -> Result<Options, Error> {
        Ok(Options {
            vault: get("vault"),
            secrets,
            all: switch("all")?,
            prefix: get("prefix")
                .map(|p| crate::vault::select::check_prefix(&p))
                .transpose()?,
            env_prefix: get("env-prefix")
                .map(|p| crate::vault::select::check_env_prefix(&p, "--env-prefix"))
                .transpose()?,
            tags: list_flag(given.get("tag"), env, "KVFETCH_TAGS", &[',', '\n'])
                .iter()
                .map(|t| crate::vault::select::parse_tag(t))
                .collect::<Result<_, _>>()?,
            skip_managed: switch("skip-managed")?,
            templates: list_flag(given.get("template"), env, "KVFETCH_TEMPLATES", &['\n']),
            dir_layout: {
                let v = get("dir-layout").unwrap_or_default();
                crate::output::Layout::parse(&v)
                    .ok_or_else(|| usage(format!("--dir-layout {v:?} must be files or atomic")))?
            },
            dir: get("dir")
                .map(|d| path_flag("dir", &d, false))
                .transpose()?,
            env_file: get("env-file")
                .map(|f| path_flag("env-file", &f, true))
                .transpose()?,
            env_format: get("env-format")
                .as_deref()
                .and_then(Format::parse)
                .ok_or_else(|| usage("--env-format must be dotenv, shell, docker or json"))?,
            file_mode: crate::output::parse_mode(&get("file-mode").unwrap_or_default())?,
            owner: get("owner").map(|o| parse_owner(&o)).transpose()?,
            require_tmpfs: switch("require-tmpfs")?,
            require_private_dir: switch("require-private-dir")?,
            allow_env: allow_env(given.get("allow-env"), env),
            selector: selector(get("client-id"), get("object-id"), get("resource-id"))?,
            identity_source: {
                let v = get("identity-source").unwrap_or_default();
                Pin::parse(&v).ok_or_else(|| {
                    usage(format!("--identity-source {v:?} must be {}", Pin::NAMES))
                })?
            },
            resource: get("resource")
                .map(|r| crate::spec::check_resource(&r))
                .transpose()?,
            ca_file: get("ca-file").map(PathBuf::from),
            api_version: api_version(&get("api-version").unwrap_or_default())?,
            concurrency: parse_count(&get("concurrency").unwrap_or_default())?,
            timeout: duration_flag("timeout", &get("timeout").unwrap_or_default())?,
            backoff_base: duration_flag("backoff-base", &get("backoff-base").unwrap_or_default())?,
            access_retry: duration_flag("access-retry", &get("access-retry").unwrap_or_default())?,
            start_splay: duration_flag("start-splay", &get("start-splay").unwrap_or_default())?,
            full_read_every: duration_flag(
                "full-read-every",
                &get("full-read-every").unwrap_or_default(),
            )?,
            log: log::Logger {
                format: log_format,
                level: if quiet {
                    0
                } else if verbose {
                    2
                } else {
                    1
                },
            },
            refresh,
            max_stale: get("max-stale")
                .map(|d| duration_flag("max-stale", &d))
                .transpose()?,
            stale_ok: stale_ok(&command, get("stale-ok"))?,
            ready_file: get("ready-file")
                .map(|f| path_flag("ready-file", &f, true))
                .transpose()?,
            health_listen: get("health-listen").map(|a| listen_addr(&a)).transpose()?,
            serve: match command {
                Command::Watch => serve_config(
                    get("serve"),
                    get("serve-token-file"),
                    switch("serve-allow-remote")?,
                )?,
                // A variable shared with an init step (fetch) is not an error there.
                _ => None,
            },
            notify_url: get("notify-url").map(|u| notify_url(&u)).transpose()?,
            cleanup: switch("cleanup")?,
            on_change: parse_on_change(&get("on-change").unwrap_or_default())?,
            grace: duration_flag("grace", &get("grace").unwrap_or_default())?,
            from_env: from_env.clone(),
            command: command.clone(),
        })
    };
    options().map_err(|e| named_by_variable(e, &from_env))
}

/// A message about a flag whose value came from its environment variable names the variable:
/// `--ca-file "…"` becomes `KVFETCH_CA_FILE="…"` (the user never typed `--ca-file`).
fn named_by_variable(e: Error, from_env: &[&'static str]) -> Error {
    let Error::Usage(msg) = e else { return e };
    let named = FLAGS
        .iter()
        .filter(|f| from_env.contains(&f.long))
        .find_map(|f| {
            let flag = format!("--{}", f.long);
            let rest = msg.strip_prefix(&flag)?;
            match rest.strip_prefix(' ') {
                Some(r) if r.starts_with('"') => Some(format!("{}={r}", f.env)),
                _ if rest.is_empty() || rest.starts_with([' ', ':', ';', ',']) => {
                    Some(format!("{}{rest}", f.env))
                }
                _ => None,
            }
        });
    Error::Usage(named.unwrap_or(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(args: &[&str], env: &[(&str, &str)]) -> Result<Options, Error> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(&args, &env)
    }

    #[test]
    fn flags_env_and_defaults() {
        let o = parse_with(
            &["fetch", "--secret", "a", "--secret=b", "-q"],
            &[
                ("KVFETCH_VAULT", "v1"),
                ("KVFETCH_SECRETS", "x,y"),
                ("KVFETCH_TIMEOUT", "5s"),
            ],
        )
        .unwrap();
        assert_eq!(
            (o.vault.as_deref(), o.secrets.clone()),
            (Some("v1"), vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            (o.timeout, o.file_mode, o.concurrency, o.log.level),
            (Duration::from_secs(5), 0o400, 8, 0)
        );
        let o = parse_with(
            &["fetch", "--vault", "v2", "--file-mode", "0640"],
            &[("KVFETCH_VAULT", "v1"), ("KVFETCH_SECRETS", "x y\nz")],
        )
        .unwrap();
        assert_eq!(
            (o.vault.as_deref(), o.secrets.len(), o.file_mode),
            (Some("v2"), 3, 0o640)
        );
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["fetch", "--nope"][..],
            &["fetch", "--timeout", "soon"],
            &["fetch", "--client-id", "a", "--object-id", "b"],
            &["fetch", "--owner", "root"],
            &["fetch", "--concurrency", "0"],
            &["fetch", "--vault"],
        ] {
            assert!(
                matches!(parse_with(args, &[]), Err(Error::Usage(_))),
                "{args:?}"
            );
        }
        assert!(parse_with(&["fetch", "--object-id", "b"], &[("AZURE_CLIENT_ID", "a")]).is_err());
    }

    #[test]
    fn on_change_signals_are_those_an_app_can_catch() {
        for ok in ["HUP", "SIGHUP", "hup", "1", "USR1", "10", "WINCH", "TERM"] {
            assert!(signal_number(ok).is_some(), "{ok}");
        }
        for bad in [
            "STOP", "19", "KILL", "9", "TSTP", "TTIN", "TTOU", "SEGV", "BUS", "FPE", "ILL", "ABRT",
            "CONT", "CHLD", "ALRM", "0", "65", "-1", "34", "SIG", "",
        ] {
            assert_eq!(signal_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn help_lists_every_flag_with_env_and_default() {
        let h = format!(
            "{}{}{}",
            crate::cli::help::help(None),
            crate::cli::help::help(Some("watch")),
            crate::cli::help::help(Some("exec"))
        );
        for f in FLAGS {
            assert!(
                h.contains(&format!("--{}", f.long)) && h.contains(f.env),
                "{}",
                f.long
            );
            if let Some(d) = f.default {
                assert!(h.contains(&format!("[default: {d}]")));
            }
        }
        assert!(h.contains("7  gave up on Key Vault"));
    }
    #[test]
    fn a_flag_suggestion_counts_characters_and_never_replaces_the_whole_name() {
        let said = |typed: &str| scan::unknown_option(typed);
        assert_eq!(
            said("--secrte"),
            "unknown option --secrte: did you mean --secret?"
        );
        // Three characters of four bytes each: replacing all three is no slip.
        assert_eq!(said("--😀😀😀"), "unknown option --😀😀😀");
        assert_eq!(
            said("--ab"),
            "unknown option --ab",
            "two edits of two letters"
        );
        assert_eq!(said("--"), "unknown option --");
        // A long name is allowed one edit in four: three here, in twelve characters.
        assert_eq!(
            said("--ful-red-evry"),
            "unknown option --ful-red-evry: did you mean --full-read-every?"
        );
    }

    #[test]
    fn help_on_a_command_is_that_commands_help() {
        for topic in ["fetch", "watch", "exec", "doctor"] {
            for args in [vec!["help", topic], vec![topic, "--help"]] {
                let o = parse_with(&args, &[]).unwrap();
                assert!(
                    matches!(o.command, Command::Help(Some(t)) if t == topic),
                    "{args:?}"
                );
            }
        }
        assert!(matches!(
            parse_with(&["help"], &[]).unwrap().command,
            Command::Help(None)
        ));
    }

    #[test]
    fn each_duration_flag_takes_its_documented_range_and_nothing_past_it() {
        // (flag, least, most, just below the least, just past the most), as docs/cli.md says.
        let ranges = [
            ("timeout", "10ms", "24h", "9ms", "24h 1ms"),
            ("backoff-base", "10ms", "60s", "9ms", "60s 1ms"),
            ("access-retry", "0s", "1h", "", "1h 1ms"),
            ("refresh", "10ms", "30days", "9ms", "30days 1ms"),
            ("max-stale", "10ms", "365days", "9ms", "365days 1ms"),
            ("stale-ok", "1s", "365days", "999ms", "365days 1ms"),
            ("grace", "0s", "1h", "", "1h 1ms"),
            ("start-splay", "0s", "1h", "", "1h 1ms"),
            ("full-read-every", "10ms", "30days", "9ms", "30days 1ms"),
        ];
        assert_eq!(ranges.len(), DURATION_RANGES.len());
        for (flag, least, most, below, past) in ranges {
            for ok in [least, most] {
                assert!(duration_flag(flag, ok).is_ok(), "--{flag} {ok}");
            }
            for bad in [below, past].into_iter().filter(|b| !b.is_empty()) {
                let Err(Error::Usage(m)) = duration_flag(flag, bad) else {
                    panic!("--{flag} {bad} accepted")
                };
                assert!(m.contains("out of range"), "{m}");
            }
        }
    }

    #[test]
    fn only_exec_takes_a_command_after_double_dash() {
        for cmd in ["fetch", "watch", "doctor"] {
            let e = parse_with(&[cmd, "--secret", "a", "--", "true"], &[]);
            assert!(matches!(e, Err(Error::Usage(_))), "{cmd}");
        }
        let o = parse_with(&["exec", "--secret", "a", "--", "true"], &[]).unwrap();
        assert!(matches!(o.command, Command::Exec(argv) if argv == ["true"]));
    }

    #[test]
    fn a_file_flag_names_a_file() {
        for bad in ["out/", "dir/.", "..", "x/.kvfetch-tmp-1"] {
            let e = parse_with(&["fetch", "--secret", "a", "--env-file", bad], &[]);
            let Err(Error::Usage(m)) = e else {
                panic!("{bad} accepted")
            };
            assert!(m.contains("must name a file"), "{bad}: {m}");
        }
        let o = parse_with(&["fetch", "--secret", "a", "--env-file", "x/app.env"], &[]);
        assert!(o.is_ok());
    }
}
