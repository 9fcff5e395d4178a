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

/// One flag: its names, environment variable, value name (None for a switch), default and help.
pub struct Flag {
    pub long: &'static str,
    pub short: Option<char>,
    pub env: &'static str,
    pub value: Option<&'static str>,
    pub default: Option<&'static str>,
    pub help: &'static str,
    /// The commands that take this flag ([`FETCH`] | [`WATCH`] | [`EXEC`]).
    pub modes: u8,
}

/// Mode bits for [`Flag::modes`].
pub const FETCH: u8 = 1;
pub const WATCH: u8 = 2;
pub const EXEC: u8 = 4;
const ALL: u8 = FETCH | WATCH | EXEC;

const fn flag(
    long: &'static str,
    env: &'static str,
    value: Option<&'static str>,
    default: Option<&'static str>,
    help: &'static str,
) -> Flag {
    Flag {
        long,
        short: None,
        env,
        value,
        default,
        help,
        modes: ALL,
    }
}

const fn only(mut f: Flag, modes: u8) -> Flag {
    f.modes = modes;
    f
}

/// Every flag, with the commands that take it.
pub const FLAGS: &[Flag] = &[
    flag(
        "vault",
        "KVFETCH_VAULT",
        Some("NAME|URL"),
        None,
        "Key Vault name (NAME.vault.azure.net) or URL; https only (http for loopback emulators)",
    ),
    flag(
        "secret",
        "KVFETCH_SECRETS",
        Some("SPEC"),
        None,
        "[ALIAS=]NAME[/VERSION][?OPTIONS] or [ALIAS=]https://HOST/secrets/NAME[/VERSION][?OPTIONS]; OPTIONS: format=pem|key|cert|chain|pfx, json=/POINTER, decode=base64|base64url|hex, optional, file (exec: the variable names an in-memory file holding the value; NAME?file sets NAME_FILE), joined by &; repeatable (env: separated by commas, spaces or newlines)",
    ),
    flag(
        "all",
        "KVFETCH_ALL",
        None,
        None,
        "also fetch every enabled, current secret the --vault lists (needs the list permission); re-read on every refresh",
    ),
    flag(
        "prefix",
        "KVFETCH_PREFIX",
        Some("PREFIX"),
        None,
        "also fetch every listed secret whose name starts with PREFIX (any case); files are named without it, variables keep it: app-db -> file db, variable APP_DB (see --env-prefix)",
    ),
    flag(
        "env-prefix",
        "KVFETCH_ENV_PREFIX",
        Some("PREFIX"),
        None,
        "variables of secrets chosen by --all/--prefix/--tag are PREFIX + the name (APP_ + db -> APP_DB), a prefix of the app's own ending in _ (a runtime's namespace such as GO, OTEL_, SPRING_, PG is refused); without it, --prefix P keeps P in the variable (app-db -> APP_DB), --all/--tag need it (or --allow-env NAME for each bare name)",
    ),
    flag(
        "tag",
        "KVFETCH_TAGS",
        Some("KEY=VALUE"),
        None,
        "also fetch every listed secret carrying this tag; repeatable, all must match (env: separated by commas or newlines); with --prefix, both apply",
    ),
    flag(
        "skip-managed",
        "KVFETCH_SKIP_MANAGED",
        None,
        None,
        "with --all/--prefix/--tag: leave out certificate-backed secrets (managed: true)",
    ),
    flag(
        "template",
        "KVFETCH_TEMPLATES",
        Some("SRC:DEST[:MODE]"),
        None,
        "render the text file SRC into DEST, replacing {{ secret \"NAME\" }} (with | json \"/pointer\" and | base64); repeatable (env: separated by newlines)",
    ),
    flag(
        "dir",
        "KVFETCH_DIR",
        Some("DIR"),
        None,
        "write one file per secret here, named by alias or name (created if missing: mode 0700, with r-x for group/others where --file-mode lets them read, e.g. 0440 -> 0750; owned by --owner)",
    ),
    flag(
        "dir-layout",
        "KVFETCH_DIR_LAYOUT",
        Some("LAYOUT"),
        Some("files"),
        "files (one regular file per secret) or atomic (Kubernetes-style: each write a new hidden directory, ..data flipped to it, names symlinked through it)",
    ),
    flag(
        "env-file",
        "KVFETCH_ENV_FILE",
        Some("FILE"),
        None,
        "write all secrets to this env file",
    ),
    flag(
        "env-format",
        "KVFETCH_ENV_FORMAT",
        Some("FORMAT"),
        Some("dotenv"),
        "env file format: dotenv, shell, docker or json",
    ),
    flag(
        "file-mode",
        "KVFETCH_FILE_MODE",
        Some("MODE"),
        Some("0400"),
        "octal mode of the files kvfetch writes (no setuid/setgid/sticky, not group/world-writable)",
    ),
    flag(
        "owner",
        "KVFETCH_OWNER",
        Some("UID[:GID]"),
        None,
        "numeric owner of the files kvfetch writes (needs root or CAP_CHOWN)",
    ),
    flag(
        "require-tmpfs",
        "KVFETCH_REQUIRE_TMPFS",
        None,
        None,
        "fail (exit 6) instead of warning when --dir or the env file's directory is not on tmpfs/ramfs",
    ),
    flag(
        "require-private-dir",
        "KVFETCH_REQUIRE_PRIVATE_DIR",
        None,
        None,
        "fail (exit 6) instead of warning when --dir or the env file's directory is a symlink or writable by group or others",
    ),
    flag(
        "allow-env",
        "KVFETCH_ALLOW_ENV",
        Some("NAME"),
        None,
        "let a secret set this variable although it steers programs (PATH, IFS, ENV, BASH_ENV, SHELLOPTS, BASHOPTS, PS4, GLIBC_TUNABLES, LD_*); a selected secret whose bare name is NAME sets NAME itself; repeatable or comma-separated",
    ),
    flag(
        "identity-source",
        "KVFETCH_IDENTITY_SOURCE",
        Some("SOURCE"),
        Some("auto"),
        "auto (the Azure SDKs' order), imds, app-service, workload, arc, cloud-shell or service-fabric; a source whose variables are incomplete is an error, never a fall back",
    ),
    flag(
        "client-id",
        "AZURE_CLIENT_ID",
        Some("ID"),
        None,
        "use the user-assigned identity with this client id",
    ),
    flag(
        "object-id",
        "KVFETCH_OBJECT_ID",
        Some("ID"),
        None,
        "use the user-assigned identity with this object (principal) id",
    ),
    flag(
        "resource-id",
        "KVFETCH_RESOURCE_ID",
        Some("ARM_ID"),
        None,
        "use the user-assigned identity with this ARM resource id",
    ),
    flag(
        "resource",
        "KVFETCH_RESOURCE",
        Some("URL"),
        None,
        "token audience; default follows the vault's DNS suffix (vault.azure.net, vault.azure.cn, vault.usgovcloudapi.net, vault.microsoftazure.de); required for any other host",
    ),
    flag(
        "ca-file",
        "KVFETCH_CA_FILE",
        Some("PEM"),
        None,
        "extra trusted root certificates for every remote TLS connection (Key Vault, Entra ID, --notify-url), on top of the bundled Mozilla roots and SSL_CERT_FILE / SSL_CERT_DIR",
    ),
    flag(
        "api-version",
        "KVFETCH_API_VERSION",
        Some("VERSION"),
        Some("7.5"),
        "Key Vault REST api-version",
    ),
    flag(
        "concurrency",
        "KVFETCH_CONCURRENCY",
        Some("N"),
        Some("8"),
        "secrets fetched in parallel",
    ),
    flag(
        "timeout",
        "KVFETCH_TIMEOUT",
        Some("DURATION"),
        Some("2m"),
        "deadline for the whole run, retries included (10ms to 24h)",
    ),
    flag(
        "backoff-base",
        "KVFETCH_BACKOFF_BASE",
        Some("DURATION"),
        Some("1s"),
        "first retry delay, 10ms to 1m; later ones double (IMDS 410 is retried for 70 x this)",
    ),
    flag(
        "access-retry",
        "KVFETCH_ACCESS_RETRY",
        Some("DURATION"),
        Some("30s"),
        "how long to keep retrying 403 ForbiddenByRbac/AccessDenied while a role assignment propagates (0s to 1h)",
    ),
    flag(
        "start-splay",
        "KVFETCH_START_SPLAY",
        Some("DURATION"),
        Some("0s"),
        "wait a random time up to DURATION before the first fetch, so a fleet started at once does not hit the vault at once (0s to 1h)",
    ),
    flag(
        "log-format",
        "KVFETCH_LOG_FORMAT",
        Some("FORMAT"),
        Some("text"),
        "log lines on stderr as text or json",
    ),
    Flag {
        long: "quiet",
        short: Some('q'),
        env: "KVFETCH_QUIET",
        value: None,
        default: None,
        help: "log errors only",
        modes: ALL,
    },
    Flag {
        long: "verbose",
        short: Some('v'),
        env: "KVFETCH_VERBOSE",
        value: None,
        default: None,
        help: "log retries and details",
        modes: ALL,
    },
    only(
        flag(
            "refresh",
            "KVFETCH_REFRESH",
            Some("DURATION"),
            Some("5m"),
            "time between refreshes (10ms to 30d), spread +-10% at random (exec: turns on supervision; no default there)",
        ),
        WATCH | EXEC,
    ),
    only(
        flag(
            "max-stale",
            "KVFETCH_MAX_STALE",
            Some("DURATION"),
            None,
            "when refreshes have failed this long (10ms to 365d), fail /readyz and exit 7 (default: serve the last good secrets for ever)",
        ),
        WATCH | EXEC,
    ),
    only(
        flag(
            "full-read-every",
            "KVFETCH_FULL_READ_EVERY",
            Some("DURATION"),
            Some("1h"),
            "refreshes list the vault and GET only secrets whose 'updated' changed; every DURATION one refresh GETs every secret (10ms to 30d)",
        ),
        WATCH | EXEC,
    ),
    only(
        flag(
            "ready-file",
            "KVFETCH_READY_FILE",
            Some("PATH"),
            None,
            "created after the first complete write, removed on exit",
        ),
        WATCH,
    ),
    only(
        flag(
            "health-listen",
            "KVFETCH_HEALTH_LISTEN",
            Some("ADDR"),
            None,
            "serve /healthz, /readyz and /metrics on this address (e.g. 127.0.0.1:8089; exec: with --refresh)",
        ),
        WATCH | EXEC,
    ),
    only(
        flag(
            "serve",
            "KVFETCH_SERVE",
            Some("ADDR"),
            None,
            "serve GET /v1/secrets/NAME (the value; ?format=json for name, value, version, contentType, updated) on this loopback address, e.g. 127.0.0.1:8090; needs --serve-token-file",
        ),
        WATCH,
    ),
    only(
        flag(
            "serve-token-file",
            "KVFETCH_SERVE_TOKEN_FILE",
            Some("FILE"),
            None,
            "every --serve request must carry X-Kvfetch-Token with the token in FILE; created (32 random bytes, hex; --file-mode, --owner) when it does not exist",
        ),
        WATCH,
    ),
    only(
        flag(
            "serve-allow-remote",
            "KVFETCH_SERVE_ALLOW_REMOTE",
            None,
            None,
            "let --serve listen on an address that is not loopback (other hosts could then ask for secrets; see docs/serve.md)",
        ),
        WATCH,
    ),
    only(
        flag(
            "notify-url",
            "KVFETCH_NOTIFY_URL",
            Some("URL"),
            None,
            "after a refresh that changed anything, POST {\"changed\":[names]} here (http(s)://host[:port][/path][?query]; the query, e.g. a token, is never logged, but a flag is in argv for every process to read: give a token in KVFETCH_NOTIFY_URL)",
        ),
        WATCH,
    ),
    only(
        flag(
            "cleanup",
            "KVFETCH_CLEANUP",
            None,
            None,
            "on SIGTERM/SIGINT remove the files, env file and ready file kvfetch wrote",
        ),
        WATCH,
    ),
    only(
        flag(
            "on-change",
            "KVFETCH_ON_CHANGE",
            Some("ACTION"),
            Some("restart"),
            "supervised exec: restart, signal:SIG (HUP, INT, QUIT, TERM, USR1, USR2 or WINCH) or none when a secret changes",
        ),
        EXEC,
    ),
    only(
        flag(
            "grace",
            "KVFETCH_GRACE",
            Some("DURATION"),
            Some("10s"),
            "supervised exec: how long a restarted child gets after SIGTERM before SIGKILL (0s to 1h)",
        ),
        EXEC,
    ),
];

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

/// Flags that may be given more than once; every other flag takes one value.
const REPEATABLE: &[&str] = &["secret", "tag", "template", "allow-env"];

/// A flag that takes one value, given twice (`--dir a --dir b`), is an error, not "the last one
/// wins": the first was meant too, or is a mistake.
fn once_each(given: &HashMap<&'static str, Vec<String>>) -> Result<(), Error> {
    let twice = FLAGS.iter().find(|f| {
        f.value.is_some()
            && !REPEATABLE.contains(&f.long)
            && given.get(f.long).is_some_and(|v| v.len() > 1)
    });
    match twice {
        Some(f) => Err(usage(format!(
            "--{} was given {} times; it takes one value",
            f.long,
            given[f.long].len()
        ))),
        None => Ok(()),
    }
}

/// `exec` without `--refresh` becomes the command: flags of supervision would be ignored, so
/// they are refused (from a flag or its variable).
fn supervised_only(
    given: &HashMap<&'static str, Vec<String>>,
    env: &HashMap<String, String>,
) -> Result<(), Error> {
    const SUPERVISED: &[&str] = &[
        "health-listen",
        "on-change",
        "grace",
        "max-stale",
        "full-read-every",
    ];
    let set = FLAGS.iter().find(|f| {
        SUPERVISED.contains(&f.long)
            && (given.contains_key(f.long) || env.get(f.env).is_some_and(|v| !v.is_empty()))
    });
    match set {
        Some(f) => Err(usage(format!(
            "{} with exec needs --refresh (supervised mode): plain exec becomes the command, so nothing would act on it",
            if given.contains_key(f.long) {
                format!("--{}", f.long)
            } else {
                f.env.to_string()
            }
        ))),
        None => Ok(()),
    }
}

/// `--refresh`: defaulted for `watch`; for `exec` only when given (it turns on supervision).
fn refresh(
    command: &Command,
    given: &HashMap<&'static str, Vec<String>>,
    env: &HashMap<String, String>,
) -> Result<Option<Duration>, Error> {
    let explicit = given
        .get("refresh")
        .and_then(|v| v.last().cloned())
        .or_else(|| {
            env.get("KVFETCH_REFRESH")
                .filter(|v| !v.is_empty())
                .cloned()
        });
    let text = match (command, explicit) {
        (_, Some(t)) => t,
        (Command::Watch, None) => "5m".to_string(),
        _ => return Ok(None),
    };
    duration_flag("refresh", &text).map(Some)
}

fn parse_on_change(s: &str) -> Result<OnChange, Error> {
    match s {
        "restart" => Ok(OnChange::Restart),
        "none" => Ok(OnChange::Nothing),
        _ => s
            .strip_prefix("signal:")
            .and_then(signal_number)
            .map(OnChange::Signal)
            .ok_or_else(|| {
                usage(format!(
                    "--on-change {s:?} must be restart, signal:SIG or none, where SIG is one an app can catch as a reload request: HUP, INT, QUIT, TERM, USR1, USR2 or WINCH (or its number)"
                ))
            }),
    }
}

/// The signals `--on-change signal:SIG` may send: those an app can catch and that servers
/// commonly take as "reload" or "stop" requests. Never one that stops, kills or crashes the app
/// whatever it does (`STOP`, `KILL`, `SEGV`, …), one it cannot catch, or a job-control signal.
pub const RELOAD_SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("TERM", libc::SIGTERM),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("WINCH", libc::SIGWINCH),
];

/// `HUP`, `SIGHUP`, `hup` or `1` → 1; `None` for a signal not in [`RELOAD_SIGNALS`].
pub fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return RELOAD_SIGNALS.iter().any(|(_, s)| *s == n).then_some(n);
    }
    let upper = name.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    RELOAD_SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
}

/// Split args into the command and the flags given (long name → values).
fn scan(args: &[String]) -> Result<(Command, HashMap<&'static str, Vec<String>>), Error> {
    let mut given: HashMap<&'static str, Vec<String>> = HashMap::new();
    let mut command: Option<Command> = None;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        match arg.as_str() {
            "-h" | "--help" => {
                return Ok((Command::Help(command.as_ref().map(command_name)), given));
            }
            "help" if command.is_none() => {
                let topic = match args.get(i).map(String::as_str) {
                    None => None,
                    Some(t @ ("fetch" | "watch" | "exec" | "doctor")) => {
                        Some(command_name(&parse_command(t)))
                    }
                    Some(other) => {
                        return Err(usage(format!(
                            "no help on {other:?}: try kvfetch help fetch, watch, exec or doctor"
                        )));
                    }
                };
                return Ok((Command::Help(topic), given));
            }
            "completions" if command.is_none() => {
                return match args.get(i).map(String::as_str) {
                    Some(shell @ ("bash" | "zsh" | "fish")) => {
                        Ok((Command::Completions(shell.to_string()), given))
                    }
                    Some("-h" | "--help") => Ok((Command::Help(Some("completions")), given)),
                    Some(other) => Err(usage(format!(
                        "completions for {other:?} are not offered: kvfetch completions bash, zsh or fish"
                    ))),
                    None => Err(usage(
                        "completions needs a shell: kvfetch completions bash, zsh or fish",
                    )),
                };
            }
            "-V" | "--version" => return Ok((Command::Version, given)),
            "fetch" if command.is_none() => command = Some(Command::Fetch),
            "doctor" if command.is_none() => command = Some(Command::Doctor),
            "watch" if command.is_none() => command = Some(Command::Watch),
            "exec" if command.is_none() => command = Some(Command::Exec(Vec::new())),
            "--" if matches!(command, Some(Command::Exec(_))) => {
                let argv: Vec<std::ffi::OsString> = args[i..].iter().map(Into::into).collect();
                if argv.is_empty() {
                    return Err(usage("exec needs a command after --"));
                }
                command = Some(Command::Exec(argv));
                break;
            }
            a if a.starts_with('-') && a.len() > 1 => {
                let (f, v, next) = flag_value(a, args.get(i))?;
                if let Some(c) = &command
                    && f.modes & c.mode() == 0
                {
                    return Err(usage(format!(
                        "--{} does not apply to `kvfetch {}`",
                        f.long,
                        command_name(c)
                    )));
                }
                i += next;
                given.entry(f.long).or_default().push(v);
            }
            other if matches!(command, Some(Command::Exec(_))) => {
                return Err(usage(format!(
                    "unexpected argument {other:?}: put -- before the command to run: kvfetch exec [options] -- {other} [ARGS...]"
                )));
            }
            other => {
                return Err(usage(format!(
                    "unexpected argument {other:?} (commands: fetch, watch, exec, doctor)"
                )));
            }
        }
    }
    if let Some(c) = &command
        && let Some(f) = FLAGS
            .iter()
            .find(|f| given.contains_key(f.long) && f.modes & c.mode() == 0)
    {
        return Err(usage(format!(
            "--{} does not apply to `kvfetch {}`",
            f.long,
            command_name(c)
        )));
    }
    match command {
        None if given.is_empty() => Ok((Command::Usage, given)),
        None => Err(usage(
            "options need a command first: kvfetch fetch|watch|exec [options]",
        )),
        Some(Command::Exec(argv)) if argv.is_empty() => Err(usage(
            "exec needs a command: kvfetch exec [options] -- COMMAND [ARGS...]",
        )),
        Some(c) => Ok((c, given)),
    }
}

/// `fetch`, `watch` or `exec` as the command it names.
fn parse_command(name: &str) -> Command {
    match name {
        "watch" => Command::Watch,
        "exec" => Command::Exec(Vec::new()),
        "doctor" => Command::Doctor,
        _ => Command::Fetch,
    }
}

/// The name of a command, as typed.
pub fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Fetch => "fetch",
        Command::Doctor => "doctor",
        Command::Watch => "watch",
        Command::Exec(_) => "exec",
        _ => "kvfetch",
    }
}

/// One flag occurrence → (flag, value, how many extra args it consumed).
fn flag_value(arg: &str, next: Option<&String>) -> Result<(&'static Flag, String, usize), Error> {
    let (name, inline) = match arg.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (arg, None),
    };
    let f = lookup(name).ok_or_else(|| usage(unknown_option(name)))?;
    match (f.value, inline) {
        (None, None) => Ok((f, String::new(), 0)),
        (None, Some(_)) => Err(usage(format!("--{} takes no value", f.long))),
        (Some(_), Some(v)) => Ok((f, v, 0)),
        (Some(_), None) => {
            let v = next.ok_or_else(|| usage(format!("--{} needs a value", f.long)))?;
            Ok((f, v.clone(), 1))
        }
    }
}

/// "unknown option --secrte", with the flag that was probably meant (as ripgrep does).
fn unknown_option(name: &str) -> String {
    let typed = name.trim_start_matches('-');
    let best = FLAGS
        .iter()
        .map(|f| (edit_distance(typed, f.long), f.long))
        .min();
    match best {
        Some((d, long)) if d <= 2.max(typed.len() / 4) && d < typed.len() => {
            format!("unknown option {name}: did you mean --{long}?")
        }
        _ => format!("unknown option {name}"),
    }
}

/// Levenshtein distance, with a swap of two neighbours counted as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

fn lookup(name: &str) -> Option<&'static Flag> {
    if let Some(long) = name.strip_prefix("--") {
        return FLAGS.iter().find(|f| f.long == long);
    }
    let short = name.strip_prefix('-')?.chars().collect::<Vec<_>>();
    FLAGS
        .iter()
        .find(|f| short.len() == 1 && f.short == Some(short[0]))
}

fn selector(
    client: Option<String>,
    object: Option<String>,
    resource: Option<String>,
) -> Result<Option<Selector>, Error> {
    let mut chosen: Vec<Selector> = Vec::new();
    chosen.extend(client.map(Selector::ClientId));
    chosen.extend(object.map(Selector::ObjectId));
    chosen.extend(resource.map(Selector::ResourceId));
    if chosen.len() > 1 {
        return Err(usage(
            "give at most one of --client-id (AZURE_CLIENT_ID), --object-id and --resource-id",
        ));
    }
    Ok(chosen.pop())
}

fn parse_owner(s: &str) -> Result<(u32, Option<u32>), Error> {
    let bad = || {
        usage(format!(
            "--owner {s:?} must be numeric UID or UID:GID, each from 0 to 4294967294"
        ))
    };
    let id = |t: &str| {
        let ok = !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| t.parse::<u32>().ok())
            .flatten()
            .filter(|n| *n != u32::MAX) // -1 means "leave unchanged" to chown(2)
            .ok_or_else(bad)
    };
    let (uid, gid) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    Ok((id(uid)?, gid.map(id).transpose()?))
}

/// A path flag: not empty; a file flag names a file (no trailing `/`, not `.`/`..`, not one of
/// kvfetch's own temp names, which the stale-temp sweep removes).
fn path_flag(flag: &str, value: &str, file: bool) -> Result<PathBuf, Error> {
    if value.is_empty() {
        return Err(usage(format!("--{flag} is empty")));
    }
    let path = PathBuf::from(value);
    if file {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let plain = value.ends_with('/') || name.is_none();
        if plain || name.is_some_and(|n| n.starts_with(crate::output::files::TEMP_PREFIX)) {
            return Err(usage(format!(
                "--{flag} {value:?} must name a file (no trailing '/', not starting with {})",
                crate::output::files::TEMP_PREFIX
            )));
        }
    }
    Ok(path)
}

/// `--health-listen`: an address and port, such as `127.0.0.1:8089`.
fn listen_addr(a: &str) -> Result<String, Error> {
    match a.parse::<std::net::SocketAddr>() {
        Ok(_) => Ok(a.to_string()),
        Err(_) if a.parse::<u16>().is_ok() => Err(usage(format!(
            "--health-listen {a:?} needs an address too: 127.0.0.1:{a} (this host only) or 0.0.0.0:{a} (probes from the node)"
        ))),
        Err(_) => Err(usage(format!(
            "--health-listen {a:?} is not an address and port such as 127.0.0.1:8089"
        ))),
    }
}

/// `--serve ADDR` with its token file: a loopback address unless `--serve-allow-remote`.
fn serve_config(
    addr: Option<String>,
    token_file: Option<String>,
    allow_remote: bool,
) -> Result<Option<ServeConfig>, Error> {
    let Some(a) = addr else {
        if token_file.is_some() || allow_remote {
            return Err(usage(
                "--serve-token-file and --serve-allow-remote need --serve ADDR",
            ));
        }
        return Ok(None);
    };
    let addr: std::net::SocketAddr = a.parse().map_err(|_| {
        usage(format!(
            "--serve {a:?} is not an address and port such as 127.0.0.1:8090"
        ))
    })?;
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(usage(format!(
            "--serve {a:?} is not a loopback address: anyone who can reach it could ask for secrets; use 127.0.0.1:{} or ::1, or add --serve-allow-remote if that is meant",
            addr.port()
        )));
    }
    let Some(f) = token_file else {
        return Err(usage(
            "--serve needs --serve-token-file FILE: every request must carry the token it holds (kvfetch creates the file when it does not exist)",
        ));
    };
    Ok(Some(ServeConfig {
        addr,
        token_file: path_flag("serve-token-file", &f, true)?,
        allow_remote,
    }))
}

/// `--api-version`: a version string only (it goes into every request's query).
fn api_version(v: &str) -> Result<String, Error> {
    let ok = (1..=32).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !ok {
        return Err(usage(format!(
            "--api-version {v:?} is not a version like 7.5 or 2025-07-01"
        )));
    }
    Ok(v.to_string())
}

/// `--allow-env` values (repeatable, comma-separated) or `KVFETCH_ALLOW_ENV`.
fn allow_env(given: Option<&Vec<String>>, env: &HashMap<String, String>) -> Vec<String> {
    let from_env = env.get("KVFETCH_ALLOW_ENV").map(|v| vec![v.clone()]);
    given
        .cloned()
        .or(from_env)
        .unwrap_or_default()
        .iter()
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// A repeatable flag's values, or its environment variable split at `seps` (blank items dropped).
fn list_flag(
    given: Option<&Vec<String>>,
    env: &HashMap<String, String>,
    var: &str,
    seps: &[char],
) -> Vec<String> {
    match given {
        Some(list) => list.clone(),
        None => env
            .get(var)
            .map(|v| {
                v.split(seps)
                    .map(|t| t.trim_matches(['\r', ' ']).to_string())
                    .filter(|t| !t.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// `--notify-url`: the one URL that may carry a query (a webhook's token); messages never
/// show its user information or query.
fn notify_url(u: &str) -> Result<String, Error> {
    match crate::net::url::parse_with_query(u) {
        Ok((url, Some(query))) => Ok(format!("{}?{query}", url.full())),
        Ok((url, None)) => Ok(url.full()),
        Err(why) => Err(usage(format!(
            "--notify-url {:?} is refused: {why}",
            crate::net::url::shown(u)
        ))),
    }
}

fn parse_count(s: &str) -> Result<usize, Error> {
    s.parse()
        .ok()
        .filter(|n| (1..=256).contains(n))
        .ok_or_else(|| {
            usage(format!(
                "--concurrency {s:?} must be a number from 1 to 256"
            ))
        })
}

/// The range each duration flag accepts. Everything kvfetch computes from them (backoff
/// factors, deadlines, jitter) stays far from overflow inside these bounds.
pub const DURATION_RANGES: &[(&str, Duration, Duration)] = &[
    ("timeout", ms(10), hours(24)),
    ("backoff-base", ms(10), Duration::from_secs(60)),
    ("access-retry", Duration::ZERO, hours(1)),
    ("refresh", ms(10), hours(24 * 30)),
    ("max-stale", ms(10), hours(24 * 365)),
    ("grace", Duration::ZERO, hours(1)),
    ("start-splay", Duration::ZERO, hours(1)),
    ("full-read-every", ms(10), hours(24 * 30)),
];

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

/// Parse a duration flag and check it against [`DURATION_RANGES`].
fn duration_flag(name: &str, s: &str) -> Result<Duration, Error> {
    let (_, min, max) = DURATION_RANGES
        .iter()
        .find(|(n, _, _)| *n == name)
        .expect("every duration flag has a range");
    let shown = |d: &Duration| humantime::format_duration(*d).to_string();
    let range = format!("from {} to {}", shown(min), shown(max));
    let d = humantime::parse_duration(s).map_err(|_| {
        usage(format!(
            "--{name} {s:?} is not a duration like 30s, 2m or 1h ({range})"
        ))
    })?;
    if d < *min || d > *max {
        return Err(usage(format!("--{name} {s:?} is out of range: {range}")));
    }
    Ok(d)
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
}
