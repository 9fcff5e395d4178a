//! Env-file formats, each proven to read back exactly what was fetched by the parsers people use:
//! `dotenv` (python-dotenv and npm dotenv, both), `shell` (`set -a; . FILE` in bash and dash),
//! `docker` (`docker run --env-file`) and `json`.
//!
//! A value a format cannot carry is refused with the secret's name and a format that can carry
//! it: kvfetch never writes a silently altered value.

use crate::error::Error;

/// The env-file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Dotenv,
    Shell,
    Docker,
    Json,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "dotenv" => Some(Format::Dotenv),
            "shell" => Some(Format::Shell),
            "docker" => Some(Format::Docker),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Render `(variable, value)` pairs, in order.
pub fn render(format: Format, entries: &[(String, String)]) -> Result<String, Error> {
    if format == Format::Json {
        let map: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        return Ok(format!("{}\n", serde_json::Value::Object(map)));
    }
    let mut out = String::new();
    for (name, value) in entries {
        if value.contains('\0') {
            return Err(refuse(
                name,
                "a NUL byte, which no environment variable can hold",
                "--dir (files) or --env-format json",
            ));
        }
        let line = match format {
            Format::Shell => format!("export {name}='{}'\n", value.replace('\'', r"'\''")),
            Format::Docker => docker_line(name, value)?,
            Format::Dotenv => dotenv_line(name, value)?,
            Format::Json => unreachable!("handled above"),
        };
        out.push_str(&line);
    }
    Ok(out)
}

fn refuse(name: &str, what: &str, use_instead: &str) -> Error {
    Error::Output(format!(
        "the value of {name} contains {what}, which this env-file format cannot carry exactly; use {use_instead}"
    ))
}

/// Docker takes the line verbatim after the first `=`, one line per variable.
fn docker_line(name: &str, value: &str) -> Result<String, Error> {
    if value.contains(['\n', '\r']) {
        return Err(refuse(
            name,
            "a line break",
            "--env-format shell, dotenv or json, or --dir",
        ));
    }
    Ok(format!("{name}={value}\n"))
}

/// The first quoting both dotenv parsers read back exactly: single quotes, double quotes (with
/// `\n`/`\r` escapes), or none at all; else refuse.
fn dotenv_line(name: &str, value: &str) -> Result<String, Error> {
    if value.contains("${") {
        // python-dotenv expands ${VAR} inside any quotes.
        return Err(refuse(
            name,
            "\"${\", which python-dotenv expands",
            "--env-format shell or json, or --dir",
        ));
    }
    // python-dotenv unescapes \\ and \' inside single quotes; npm dotenv turns \r into \n.
    if !value.contains(['\'', '\r']) && !value.contains(r"\\") && !value.ends_with('\\') {
        return Ok(format!("{name}='{value}'\n"));
    }
    // npm dotenv keeps backslashes and cannot escape '"' inside double quotes.
    if !value.contains(['"', '\\']) {
        let escaped = value.replace('\n', r"\n").replace('\r', r"\r");
        return Ok(format!("{name}=\"{escaped}\"\n"));
    }
    // Unquoted, both take the rest of the line verbatim but trim it and stop at '#'.
    let plain = !value.contains(['#', '\n', '\r'])
        && value.trim() == value
        && !value.starts_with(['\'', '"', '`']);
    if plain {
        return Ok(format!("{name}={value}\n"));
    }
    Err(refuse(
        name,
        "a mix of quotes, backslashes, '#' or line breaks that no dotenv quoting reads back the same in both python-dotenv and npm dotenv",
        "--env-format shell or json, or --dir",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(f: Format, v: &str) -> Result<String, Error> {
        render(f, &[("K".into(), v.into())])
    }

    #[test]
    fn quoting_choices() {
        assert_eq!(one(Format::Dotenv, "a b#c").unwrap(), "K='a b#c'\n");
        assert_eq!(one(Format::Dotenv, "it's\nx").unwrap(), "K=\"it's\\nx\"\n");
        assert_eq!(one(Format::Dotenv, "it's \"q\"").unwrap(), "K=it's \"q\"\n");
        assert!(one(Format::Dotenv, "'it's \"q\"'").is_err());
        assert!(one(Format::Dotenv, "${HOME}").is_err());
        assert_eq!(one(Format::Shell, "it's").unwrap(), "export K='it'\\''s'\n");
        assert!(one(Format::Docker, "a\nb").is_err());
        assert_eq!(one(Format::Docker, " a=b ").unwrap(), "K= a=b \n");
        assert_eq!(one(Format::Json, "a\"b").unwrap(), "{\"K\":\"a\\\"b\"}\n");
        assert!(matches!(one(Format::Shell, "a\0b"), Err(Error::Output(_))));
    }
}
