//! `--template SRC:DEST[:MODE]`: a text file with `{{ secret "NAME" }}` actions, rendered into
//! DEST as one more output. The syntax is the subset of Vault Agent / consul-template that
//! secret files need:
//!
//! - `{{ secret "NAME" }}` (or `"NAME/VERSION"`): the value, verbatim;
//! - `| json "/pointer"`: a field of a JSON value (RFC 6901), then optionally `| base64`;
//! - `{{ "text" }}`: literal text (`{{ "{{" }}` writes two braces).
//!
//! A template is parsed once, before any request: a syntax error is a usage error (exit 2)
//! naming the file, line and column. Each action becomes a hidden spec fetched with the rest,
//! so a name the vault does not have fails the run (exit 5) before anything is written.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::spec::{self, SecretSpec, Vault};
use crate::vault::snapshot::Snapshot;

/// One parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub src: PathBuf,
    pub dest: PathBuf,
    /// MODE, or `--file-mode`.
    pub mode: Option<u32>,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Text(String),
    /// The shaped bytes of the spec at this index of the plan's specs, base64-encoded if asked.
    Value {
        spec: usize,
        base64: bool,
    },
}

/// The longest template source read (a config file, not a data set).
const MAX_SOURCE: u64 = 1 << 20;

/// `SRC:DEST[:MODE]` → its parts (paths may not hold `:`).
pub fn parse_flag(text: &str) -> Result<(PathBuf, PathBuf, Option<u32>), Error> {
    let bad = |why: &str| {
        Error::Usage(format!(
            "--template {text:?} {why}; give SRC:DEST[:MODE], e.g. /etc/app/db.conf.tpl:/run/secrets/db.conf:0440"
        ))
    };
    let parts: Vec<&str> = text.split(':').collect();
    let (src, dest, mode) = match parts.as_slice() {
        [s, d] => (s, d, None),
        [s, d, m] => (s, d, Some(*m)),
        _ => return Err(bad("is not SRC:DEST or SRC:DEST:MODE")),
    };
    if src.is_empty() || dest.is_empty() {
        return Err(bad("has an empty path"));
    }
    let mode = mode
        .map(|m| {
            crate::output::parse_mode(m).map_err(|_| {
                bad("has a MODE that is not an octal mode like 0440 (no setuid/setgid/sticky, not group/world-writable)")
            })
        })
        .transpose()?;
    Ok((PathBuf::from(src), PathBuf::from(dest), mode))
}

/// Read and parse `--template`'s SRC; the secrets it names are appended to `specs` (hidden),
/// and the template refers to them by index.
pub fn load(
    flag: &str,
    vault: Option<&Vault>,
    specs: &mut Vec<SecretSpec>,
) -> Result<Template, Error> {
    let (src, dest, mode) = parse_flag(flag)?;
    let text = read_source(&src)?;
    let parts = parse(&text, &src, vault, specs)?;
    Ok(Template {
        src,
        dest,
        mode,
        parts,
    })
}

fn read_source(src: &Path) -> Result<String, Error> {
    use crate::base::file::{Unreadable, read_regular};
    let bad = |why: String| Error::Usage(format!("--template {}: {why}", src.display()));
    let bytes = read_regular(src, MAX_SOURCE).map_err(|e| match e {
        Unreadable::Open(e) => bad(format!("cannot read it: {e}")),
        e => bad(e.to_string()),
    })?;
    String::from_utf8(bytes).map_err(|_| bad("it is not UTF-8 text".into()))
}

/// Where in the source an offset is, as `line L, column C` (both from 1). Offsets are asked for
/// in increasing order and counted on from the last one, so a template of many actions costs
/// time in proportion to its size, not its square.
#[derive(Default)]
struct Position {
    offset: usize,
    line: usize,
    column: usize,
}

impl Position {
    fn at(&mut self, text: &str, offset: usize) -> String {
        let passed = &text[self.offset..offset];
        match passed.rsplit_once('\n') {
            Some((before, after)) => {
                self.line += before.matches('\n').count() + 1;
                self.column = after.chars().count();
            }
            None => self.column += passed.chars().count(),
        }
        self.offset = offset;
        format!("line {}, column {}", self.line + 1, self.column + 1)
    }
}

/// Split a template into text and actions.
pub(crate) fn parse(
    text: &str,
    src: &Path,
    vault: Option<&Vault>,
    specs: &mut Vec<SecretSpec>,
) -> Result<Vec<Part>, Error> {
    let mut parts = Vec::new();
    let mut rest = 0;
    let mut position = Position::default();
    while let Some(open) = text[rest..].find("{{").map(|i| rest + i) {
        if open > rest {
            parts.push(Part::Text(text[rest..open].to_string()));
        }
        let place = position.at(text, open);
        let at =
            |why: String| Error::Usage(format!("--template {}: {why} at {place}", src.display()));
        let close = text[open + 2..]
            .find("}}")
            .map(|i| open + 2 + i)
            .ok_or_else(|| at("a '{{' is never closed by '}}'".into()))?;
        let action = &text[open + 2..close];
        parts.push(parse_action(action, src, &place, vault, specs).map_err(at)?);
        rest = close + 2;
    }
    if rest < text.len() {
        parts.push(Part::Text(text[rest..].to_string()));
    }
    Ok(parts)
}

/// One action: `secret "NAME" [| json "/p"] [| base64]`, or `"literal"`.
fn parse_action(
    action: &str,
    src: &Path,
    place: &str,
    vault: Option<&Vault>,
    specs: &mut Vec<SecretSpec>,
) -> Result<Part, String> {
    let mut stages = action.split('|').map(str::trim);
    let head = stages.next().unwrap_or_default();
    if let Some(lit) = head.strip_prefix('"') {
        if stages.next().is_some() {
            return Err("a literal takes no pipes".into());
        }
        return Ok(Part::Text(string(lit)?));
    }
    let name = match head.split_once(char::is_whitespace) {
        Some(("secret", rest)) => Some(rest.trim_start()),
        _ if head == "secret" => Some(""),
        _ => None,
    };
    let Some(name) = name else {
        return Err(format!(
            "{:?} is not an action kvfetch knows (write {{{{ secret \"NAME\" }}}}, or {{{{ \"{{{{\" }}}} for literal braces)",
            head.chars().take(40).collect::<String>()
        ));
    };
    let name = name
        .strip_prefix('"')
        .ok_or("secret takes a quoted name: secret \"NAME\"")
        .and_then(|n| string(n).map_err(|_| "the secret's name is not a closed string"))?;
    let (mut json, mut base64) = (None, false);
    for stage in stages {
        match stage.split_once(char::is_whitespace) {
            _ if stage == "base64" && !base64 => base64 = true,
            Some(("json", arg)) if json.is_none() && !base64 => {
                let arg = arg.trim_start();
                let p = arg.strip_prefix('"').ok_or("json takes a quoted pointer")?;
                json = Some(string(p)?);
            }
            _ => {
                return Err(format!(
                    "pipe {stage:?} is not json \"/POINTER\" or base64 (json first, each once)"
                ));
            }
        }
    }
    // A name with an '@' may be a URL with a password: shown without it.
    let quoted = if name.contains('@') {
        crate::net::url::shown(&name)
    } else {
        name.clone()
    };
    if name.contains(['?', '=', ':']) {
        return Err(format!("{quoted:?} is not a secret NAME or NAME/VERSION"));
    }
    let shown = format!("{{{{ secret {quoted:?} }}}} in {} ({place})", src.display());
    let mut spec = spec::parse_spec(&name, vault).map_err(|e| format!("{e} (in {shown})"))?;
    if let Some(p) = json {
        let p = crate::shape::json_pointer(&p)
            .map_err(|why| format!("json {p:?} is not a JSON pointer ({why})"))?;
        spec.shape.json = Some(p);
    }
    spec.text = shown;
    spec.hidden = true;
    specs.push(spec);
    Ok(Part::Value {
        spec: specs.len() - 1,
        base64,
    })
}

/// The rest of a `"…"` string (after its opening quote): its text, with `\"` and `\\` escapes;
/// nothing may follow the closing quote.
fn string(after_quote: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = after_quote.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\')) => out.push(e),
                _ => return Err("a string has an escape other than \\\" or \\\\".into()),
            },
            '"' if chars.as_str().trim().is_empty() => return Ok(out),
            '"' => return Err("text follows a closing quote".into()),
            c => out.push(c),
        }
    }
    Err("a string is not closed".into())
}

impl Template {
    /// The rendered bytes, from a snapshot whose first specs are the plan's (so the indices
    /// hold) and whose values are all present for these hidden specs.
    pub fn render(&self, snap: &Snapshot, shaped: &[Option<Vec<u8>>]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Value { spec, base64 } => {
                    let bytes = shaped.get(*spec).and_then(Option::as_ref).ok_or_else(|| {
                        let name = snap.specs.get(*spec).map_or("?", |s| s.text.as_str());
                        Error::Other(format!("no value for {name}"))
                    })?;
                    if *base64 {
                        out.extend_from_slice(
                            crate::base::encoding::base64_encode(bytes).as_bytes(),
                        );
                    } else {
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The plan indices of the secrets this template uses.
    pub fn uses(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Value { spec, .. } => Some(*spec),
            Part::Text(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        spec::parse_vault("https://127.0.0.1:8443", None).unwrap()
    }

    fn parsed(text: &str) -> Result<(Vec<Part>, Vec<SecretSpec>), Error> {
        let mut specs = Vec::new();
        let parts = parse(text, Path::new("t.tpl"), Some(&vault()), &mut specs)?;
        Ok((parts, specs))
    }

    #[test]
    fn actions_and_text() {
        let (parts, specs) = parsed(
            "user={{ secret \"db-user\" }}\npass={{secret \"db\" | json \"/password\" | base64}}\n{{ \"{{\" }} x }}",
        )
        .unwrap();
        assert_eq!(
            parts,
            [
                Part::Text("user=".into()),
                Part::Value {
                    spec: 0,
                    base64: false
                },
                Part::Text("\npass=".into()),
                Part::Value {
                    spec: 1,
                    base64: true
                },
                Part::Text("\n".into()),
                Part::Text("{{".into()),
                Part::Text(" x }}".into()),
            ]
        );
        assert_eq!(specs[1].name, "db");
        assert_eq!(specs[1].shape.json.as_deref(), Some("/password"));
        assert!(specs.iter().all(|s| s.hidden));
        assert_eq!(
            specs[0].text,
            "{{ secret \"db-user\" }} in t.tpl (line 1, column 6)"
        );
    }

    #[test]
    fn syntax_errors_name_the_place() {
        for (text, why) in [
            ("a\n  {{ secret \"x\" ", "never closed"),
            ("{{ secrets \"x\" }}", "not an action"),
            ("{{ secret x }}", "quoted name"),
            ("{{ secret \"x }}", "not a closed string"),
            ("{{ secret \"x\" | base64 | json \"/a\" }}", "json first"),
            ("{{ secret \"x\" | upper }}", "is not json"),
            ("{{ secret \"a=b\" }}", "not a secret NAME"),
            ("{{ secret \"a?optional\" }}", "not a secret NAME"),
            (
                "{{ secret \"https://v.vault.azure.net/secrets/a\" }}",
                "not a secret NAME",
            ),
            ("{{ secret \"bad_name\" }}", "did you mean \"bad-name\""),
            ("{{ \"lit\" | base64 }}", "no pipes"),
            ("{{ secret \"x\" | json \"a\" }}", "JSON pointer"),
            ("{{ secret }}", "quoted name"),
            ("{{ secret \"x\" | base64 | base64 }}", "each once"),
            (
                "{{ secret \"x\" | json \"/a\" | json \"/b\" }}",
                "each once",
            ),
            ("{{ \"lit\" x }}", "text follows a closing quote"),
            ("{{ \"a\\nb\" }}", "an escape other than"),
        ] {
            let e = parsed(text).unwrap_err();
            assert!(matches!(e, Error::Usage(_)), "{text}: {e:?}");
            assert!(e.to_string().contains(why), "{text}: {e}");
            assert!(e.to_string().contains("t.tpl"), "{text}: {e}");
        }
        let e = parsed("ok\n\n   {{ nope }}").unwrap_err().to_string();
        assert!(e.ends_with("at line 3, column 4"), "{e}");
    }

    #[test]
    fn a_name_holding_a_password_is_never_quoted() {
        for d in ["/", "?", "#", "@", ":"] {
            for name in [
                format!("https://u:Zz1{d}Qq2@v.vault.azure.net/secrets/a"),
                format!("u:Zz1{d}Qq2@v"),
                format!("Zz1{d}Qq2@v"),
            ] {
                let e = parsed(&format!("{{{{ secret \"{name}\" }}}}"))
                    .unwrap_err()
                    .to_string();
                assert!(!e.contains("Zz1") && !e.contains("Qq2"), "{name}: {e}");
            }
        }
    }

    #[test]
    fn positions_counted_on_are_those_counted_from_the_start() {
        let text = "é {{ a }}{{ b }}\n\n  ü{{ c }}\nx\ny {{ d }}{{";
        let from_start = |offset: usize| {
            let before = &text[..offset];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap().chars().count() + 1;
            format!("line {line}, column {column}")
        };
        let mut position = Position::default();
        let offsets: Vec<usize> = text.match_indices("{{").map(|(i, _)| i).collect();
        assert_eq!(offsets.len(), 5);
        for offset in offsets {
            assert_eq!(position.at(text, offset), from_start(offset));
        }
        let e = parsed("{{ \"a\" }}\n{{ \"b\" }} {{ nope }}").unwrap_err();
        assert!(e.to_string().ends_with("at line 2, column 11"), "{e}");
    }

    #[test]
    fn adjacent_actions_leave_no_empty_text_and_uses_names_each() {
        let mut specs = vec![spec::parse_spec("first", Some(&vault())).unwrap()];
        let text = "{{ secret \"a\" }}{{ \"x\\\"y\\\\z\" }}{{ secret \"b\" | base64 }}";
        let parts = parse(text, Path::new("t.tpl"), Some(&vault()), &mut specs).unwrap();
        assert_eq!(
            parts,
            [
                Part::Value {
                    spec: 1,
                    base64: false
                },
                Part::Text("x\"y\\z".into()),
                Part::Value {
                    spec: 2,
                    base64: true
                },
            ]
        );
        let t = Template {
            src: "t.tpl".into(),
            dest: "t".into(),
            mode: None,
            parts,
        };
        assert_eq!(t.uses().collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn sources_up_to_one_mib_of_utf8_in_a_regular_file() {
        let d = std::env::temp_dir().join(format!("kvfetch-template-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        let f = d.join("t.tpl");
        let max = MAX_SOURCE as usize;
        std::fs::write(&f, "a".repeat(max)).unwrap();
        assert_eq!(read_source(&f).unwrap().len(), max, "exactly 1 MiB, whole");
        std::fs::write(&f, "a".repeat(max + 1)).unwrap();
        let e = read_source(&f).unwrap_err().to_string();
        assert!(e.contains("larger than 1 MiB"), "{e}");
        std::fs::write(&f, b"ok\xff").unwrap();
        let e = read_source(&f).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        let e = read_source(&d).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn flags() {
        assert_eq!(
            parse_flag("a.tpl:/run/out:0440").unwrap(),
            ("a.tpl".into(), "/run/out".into(), Some(0o440))
        );
        assert_eq!(parse_flag("a:b").unwrap().2, None);
        for bad in ["a", "a:b:0440:x", ":b", "a:", "a:b:999", "a:b:4755"] {
            assert!(parse_flag(bad).is_err(), "{bad}");
        }
    }
}
