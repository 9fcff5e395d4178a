//! Every env-file format reads back exactly what was fetched, through the real parsers:
//! python-dotenv's `dotenv_values` and npm dotenv's `parse` (installed by
//! `scripts/install-test-deps`), `set -a; . FILE` in bash and dash, Docker's `--env-file` rules,
//! and a JSON parser. A value a format cannot carry must be refused, never altered.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use kvfetch::output::envfile::{Format, render};

/// Values that break naive quoting.
const VALUES: &[&str] = &[
    "simple",
    "",
    "with spaces  ",
    "  leading",
    "single ' quote",
    "double \" quote",
    "both ' and \" quotes",
    "dollar $HOME and $1",
    "brace ${HOME} expansion",
    "back\\slash",
    "double \\\\ backslash",
    "trailing backslash\\",
    "hash # not a comment",
    "#starts with hash",
    "a=b=c",
    "tab\there",
    "multi\nline\nvalue",
    "carriage\rreturn",
    "crlf\r\nline",
    "unicode ✓ 日本語 émoji 🎉",
    "`backticks` and $(subshell)",
    "export NOT=this",
    "'quoted' and \"double\" \\ with # hash",
    "\"starts with a quote' and has \\",
    "-----BEGIN KEY-----\nMIIB\n-----END KEY-----\n",
];

fn deps() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-deps");
    assert!(
        d.join("venv/bin/python").exists() && d.join("node_modules/dotenv").exists(),
        "the real dotenv parsers are missing: run scripts/install-test-deps (as .ci/run does)"
    );
    d
}

fn var(i: usize) -> String {
    format!("V{i}")
}

/// Render each value on its own; return the file of those the format carries, and the refused.
fn render_all(format: Format) -> (String, BTreeMap<String, String>, Vec<usize>) {
    let (mut file, mut expected, mut refused) = (String::new(), BTreeMap::new(), Vec::new());
    for (i, v) in VALUES.iter().enumerate() {
        match render(format, &[(var(i), v.to_string())]) {
            Ok(text) => {
                file.push_str(&text);
                expected.insert(var(i), v.to_string());
            }
            Err(e) => {
                assert!(matches!(e, kvfetch::Error::Output(_)), "{e}");
                assert!(
                    e.to_string().contains(&var(i)) && e.to_string().contains("use "),
                    "names the secret and a format: {e}"
                );
                refused.push(i);
            }
        }
    }
    (file, expected, refused)
}

fn write(dir: &Scratch, name: &str, text: &str) -> PathBuf {
    let p = dir.path(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn json_map(out: &[u8]) -> BTreeMap<String, String> {
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(out)))
}

fn python_dotenv(file: &Path) -> BTreeMap<String, String> {
    let py = deps().join("venv/bin/python");
    let out = Command::new(py)
        .args(["-c", "import json,sys\nfrom dotenv import dotenv_values\nsys.stdout.write(json.dumps(dotenv_values(sys.argv[1])))", file.to_str().unwrap()])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_map(&out.stdout)
}

fn npm_dotenv(file: &Path) -> BTreeMap<String, String> {
    let out = Command::new("node")
        .args(["-e", "const d=require('dotenv');const fs=require('fs');process.stdout.write(JSON.stringify(d.parse(fs.readFileSync(process.argv[1]))))", file.to_str().unwrap()])
        .env("NODE_PATH", deps().join("node_modules"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_map(&out.stdout)
}

/// `set -a; . FILE` in `shell`, then read the exported variables back NUL-separated.
fn sourced(shell: &str, file: &Path) -> BTreeMap<String, String> {
    let out = Command::new(shell)
        .args([
            "-c",
            "set -a; . \"$1\"; exec env -0",
            "sh",
            file.to_str().unwrap(),
        ])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{shell}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| {
            k.starts_with('V') && k[1..].chars().all(|c| c.is_ascii_digit()) && !k[1..].is_empty()
        })
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Docker's `--env-file` rules (opts/file.go): lines split on `\n` with a trailing `\r`
/// dropped, leading white space trimmed, `#` lines skipped, the value taken verbatim after `=`.
fn docker_env_file(text: &str) -> BTreeMap<String, String> {
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).trim_start())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn dotenv_reads_back_exactly_in_python_and_node() {
    let dir = Scratch::new();
    let (text, expected, refused) = render_all(Format::Dotenv);
    let file = write(&dir, "app.env", &text);
    assert_eq!(python_dotenv(&file), expected, "python-dotenv");
    assert_eq!(npm_dotenv(&file), expected, "npm dotenv");
    // Only the values no dotenv quoting can carry in both parsers are refused.
    let refused: Vec<&str> = refused.iter().map(|i| VALUES[*i]).collect();
    assert_eq!(
        refused,
        vec![
            "brace ${HOME} expansion",
            "'quoted' and \"double\" \\ with # hash",
            "\"starts with a quote' and has \\"
        ]
    );
}

#[test]
fn shell_reads_back_exactly_in_bash_and_dash() {
    let dir = Scratch::new();
    let (text, expected, refused) = render_all(Format::Shell);
    assert!(refused.is_empty());
    let file = write(&dir, "app.sh", &text);
    assert_eq!(sourced("bash", &file), expected, "bash");
    assert_eq!(sourced("dash", &file), expected, "dash");
}

#[test]
fn docker_reads_back_exactly_and_refuses_line_breaks() {
    let (text, expected, refused) = render_all(Format::Docker);
    assert_eq!(docker_env_file(&text), expected);
    for i in refused {
        assert!(VALUES[i].contains(['\n', '\r']), "{:?}", VALUES[i]);
    }
}

#[test]
fn json_reads_back_everything() {
    let entries: Vec<(String, String)> = VALUES
        .iter()
        .enumerate()
        .map(|(i, v)| (var(i), v.to_string()))
        .collect();
    let text = render(Format::Json, &entries).unwrap();
    assert_eq!(json_map(text.as_bytes()), entries.into_iter().collect());
}

#[test]
fn end_to_end_through_the_binary_for_each_format() {
    let emu = Emulator::start().unwrap();
    let carried = [
        "simple",
        "single ' quote",
        "multi\nline\nvalue",
        "unicode ✓ 日本語 émoji 🎉",
        "a=b=c",
    ];
    let mut args = vec!["fetch".to_string()];
    for (i, v) in carried.iter().enumerate() {
        emu.set_secret(&format!("s{i}"), v);
        args.extend(["--secret".to_string(), format!("V{i}=s{i}")]);
    }
    let dir = Scratch::new();
    for (format, read) in [
        (
            "dotenv",
            python_dotenv as fn(&Path) -> BTreeMap<String, String>,
        ),
        ("shell", |p: &Path| sourced("dash", p)),
        ("json", |p: &Path| json_map(&std::fs::read(p).unwrap())),
    ] {
        let file = dir.path(&format!("out.{format}"));
        let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
        let f = file.display().to_string();
        a.extend(["--env-file", &f, "--env-format", format]);
        let r = run(&emu, &a);
        assert_eq!(r.code, 0, "{format}: {}", r.stderr);
        let expected: BTreeMap<String, String> = carried
            .iter()
            .enumerate()
            .map(|(i, v)| (var(i), v.to_string()))
            .collect();
        assert_eq!(read(&file), expected, "{format}");
        assert_eq!(mode(&file), 0o400);
    }
}

/// Values built from the characters that break quoting, and a few ordinary ones.
fn hostile_value() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let piece = prop_oneof![
        Just("'"),
        Just("\""),
        Just("\\"),
        Just("$"),
        Just("${"),
        Just("{"),
        Just("}"),
        Just("#"),
        Just(" "),
        Just("\t"),
        Just("\n"),
        Just("\r"),
        Just("`"),
        Just("="),
        Just("export "),
        Just("é✓"),
        Just("a"),
        Just("Z9"),
    ];
    proptest::collection::vec(piece, 0..10).prop_map(|p| p.concat())
}

/// Every value a format accepts reads back exactly through the real parsers of that format;
/// many random values per case, each parser run once per case. `PROPTEST_CASES` runs more.
#[test]
fn random_values_read_back_exactly_or_are_refused() {
    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, TestRunner};
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .map_or(3, |n| n.div_ceil(100));
    let mut runner = TestRunner::new(Config::default());
    let strategy = proptest::collection::vec(hostile_value(), 150);
    let dir = Scratch::new();
    for case in 0..cases {
        let values = strategy.new_tree(&mut runner).unwrap().current();
        for format in [Format::Dotenv, Format::Shell, Format::Docker, Format::Json] {
            let (mut text, mut expected) = (String::new(), BTreeMap::new());
            for (i, v) in values.iter().enumerate() {
                if format == Format::Json {
                    expected.insert(var(i), v.clone());
                } else if let Ok(line) = render(format, &[(var(i), v.clone())]) {
                    text.push_str(&line);
                    expected.insert(var(i), v.clone());
                }
            }
            if format == Format::Json {
                let entries: Vec<_> = expected.clone().into_iter().collect();
                text = render(format, &entries).unwrap();
            }
            let file = write(&dir, &format!("case{case}.{format:?}"), &text);
            let what = format!("{format:?}, case {case}: {values:?}");
            match format {
                Format::Dotenv => {
                    assert_eq!(python_dotenv(&file), expected, "python-dotenv, {what}");
                    assert_eq!(npm_dotenv(&file), expected, "npm dotenv, {what}");
                }
                Format::Shell => {
                    assert_eq!(expected.len(), values.len(), "shell carries every value");
                    assert_eq!(sourced("bash", &file), expected, "bash, {what}");
                    assert_eq!(sourced("dash", &file), expected, "dash, {what}");
                }
                Format::Docker => assert_eq!(docker_env_file(&text), expected, "{what}"),
                Format::Json => {
                    assert_eq!(json_map(text.as_bytes()), expected, "{what}");
                }
            }
        }
    }
}
