//! Each flag's value parsed into its stage's own type, with the message that names the flag and
//! the fix: durations and their ranges, counts, owners, paths, listen addresses, URLs, signals.

use super::*;
use crate::error::Error;
use crate::identity::Selector;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// `exec` without `--refresh` becomes the command: flags of supervision would be ignored, so
/// they are refused (from a flag or its variable).
pub(super) fn supervised_only(
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

/// `--stale-ok`: fetch and watch only. `exec` keeps no outputs on disk to fall back on, so its
/// variable (shared with an init step) is ignored there; the flag is refused by the scan.
pub(super) fn stale_ok(
    command: &Command,
    value: Option<String>,
) -> Result<Option<Duration>, Error> {
    match command {
        Command::Fetch | Command::Watch | Command::Doctor => {
            value.map(|v| duration_flag("stale-ok", &v)).transpose()
        }
        _ => Ok(None),
    }
}

/// `--refresh`: defaulted for `watch`; for `exec` only when given (it turns on supervision).
pub(super) fn refresh(
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

pub(super) fn parse_on_change(s: &str) -> Result<OnChange, Error> {
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

pub(super) fn selector(
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

pub(super) fn parse_owner(s: &str) -> Result<(u32, Option<u32>), Error> {
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
pub(super) fn path_flag(flag: &str, value: &str, file: bool) -> Result<PathBuf, Error> {
    if value.is_empty() {
        return Err(usage(format!("--{flag} is empty")));
    }
    let path = PathBuf::from(value);
    if file {
        // The text's own last part (`Path` reads `dir/.` as the file `dir`).
        let last = value.rsplit('/').next().unwrap_or_default();
        if matches!(last, "" | "." | "..") || last.starts_with(crate::output::files::TEMP_PREFIX) {
            return Err(usage(format!(
                "--{flag} {value:?} must name a file (not ending in '/', '/.' or '/..', not starting with {})",
                crate::output::files::TEMP_PREFIX
            )));
        }
    }
    Ok(path)
}

/// `--health-listen`: an address and port, such as `127.0.0.1:8089`.
pub(super) fn listen_addr(a: &str) -> Result<String, Error> {
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
pub(super) fn serve_config(
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
pub(super) fn api_version(v: &str) -> Result<String, Error> {
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
pub(super) fn allow_env(given: Option<&Vec<String>>, env: &HashMap<String, String>) -> Vec<String> {
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
pub(super) fn list_flag(
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
pub(super) fn notify_url(u: &str) -> Result<String, Error> {
    match crate::net::url::parse_with_query(u) {
        Ok((url, Some(query))) => Ok(format!("{}?{query}", url.full())),
        Ok((url, None)) => Ok(url.full()),
        Err(why) => Err(usage(format!(
            "--notify-url {:?} is refused: {why}",
            crate::net::url::shown(u)
        ))),
    }
}

pub(super) fn parse_count(s: &str) -> Result<usize, Error> {
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
    ("stale-ok", Duration::from_secs(1), hours(24 * 365)),
    ("grace", Duration::ZERO, hours(1)),
    ("start-splay", Duration::ZERO, hours(1)),
    ("full-read-every", ms(10), hours(24 * 30)),
];

pub(super) const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

/// Parse a duration flag and check it against [`DURATION_RANGES`].
pub(super) fn duration_flag(name: &str, s: &str) -> Result<Duration, Error> {
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
