//! Reading argv: the command, each flag's values, `--` and what follows it; a flag given twice
//! that takes one value, and an unknown flag (with the likely one it was meant to be).

use super::*;
use crate::error::Error;
use std::collections::HashMap;

/// Flags that may be given more than once; every other flag takes one value.
pub(super) const REPEATABLE: &[&str] = &["secret", "tag", "template", "allow-env"];

/// A flag that takes one value, given twice (`--dir a --dir b`), is an error, not "the last one
/// wins": the first was meant too, or is a mistake.
pub(super) fn once_each(given: &HashMap<&'static str, Vec<String>>) -> Result<(), Error> {
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

/// Split args into the command and the flags given (long name → values).
pub(super) fn scan(
    args: &[String],
) -> Result<(Command, HashMap<&'static str, Vec<String>>), Error> {
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
                    Some(t) => Some(COMMANDS.into_iter().find(|c| *c == t).ok_or_else(|| {
                        usage(format!(
                            "no help on {t:?}: try kvfetch help fetch, watch, exec or doctor"
                        ))
                    })?),
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
                        "--{} does not apply to `kvfetch {}`{}",
                        f.long,
                        command_name(c),
                        why_not(f.long)
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
            "--{} does not apply to `kvfetch {}`{}",
            f.long,
            command_name(c),
            why_not(f.long)
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

/// Why a flag is not a command's, when that is worth saying.
fn why_not(long: &str) -> &'static str {
    match long {
        "stale-ok" => {
            ": exec hands secrets to the command in memory and keeps no outputs on disk to fall back on; run `kvfetch fetch --stale-ok` in an init step (or watch) instead"
        }
        _ => "",
    }
}

/// The commands `help` gives help on.
const COMMANDS: [&str; 4] = ["fetch", "watch", "exec", "doctor"];

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
pub(super) fn flag_value(
    arg: &str,
    next: Option<&String>,
) -> Result<(&'static Flag, String, usize), Error> {
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
pub(super) fn unknown_option(name: &str) -> String {
    let typed = name.trim_start_matches('-');
    // Two edits, or one in four of a long name; never all of it (counted in characters).
    let n = typed.chars().count();
    let within = 2.max(n / 4).min(n.saturating_sub(1));
    match crate::base::similar::closest(typed, FLAGS.iter().map(|f| f.long), within) {
        Some(long) => format!("unknown option {name}: did you mean --{long}?"),
        None => format!("unknown option {name}"),
    }
}

pub(super) fn lookup(name: &str) -> Option<&'static Flag> {
    if let Some(long) = name.strip_prefix("--") {
        return FLAGS.iter().find(|f| f.long == long);
    }
    let short = name.strip_prefix('-')?.chars().collect::<Vec<_>>();
    FLAGS
        .iter()
        .find(|f| short.len() == 1 && f.short == Some(short[0]))
}
