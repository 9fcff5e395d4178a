//! Keeps `examples/` and the README honest: every kvfetch command line in them parses with the
//! real CLI and passes the same checks `fetch` makes before its first request.

use std::collections::HashMap;
use std::path::PathBuf;

/// kvfetch command lines in a text: YAML flow sequences (`["/kvfetch", …]`) and shell lines
/// starting with `kvfetch `.
fn command_lines(text: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for line in text.lines().map(str::trim) {
        let line = line.trim_start_matches("- ").trim_start_matches("$ ");
        if let Some(rest) = line
            .strip_prefix("command: ")
            .or_else(|| line.strip_prefix("args: "))
        {
            if let Ok(argv) = serde_json::from_str::<Vec<String>>(rest)
                && argv.first().is_some_and(|a| a.ends_with("kvfetch"))
            {
                found.push(argv[1..].to_vec());
            }
        } else if let Some(rest) = line
            .strip_prefix("kvfetch ")
            .or_else(|| line.strip_prefix("cargo run -- "))
        {
            let rest = rest
                .split(" #")
                .next()
                .unwrap()
                .trim_end_matches('\\')
                .trim();
            found.push(
                rest.split_whitespace()
                    .map(|s| s.trim_matches('\'').trim_matches('"').to_string())
                    .collect(),
            );
        }
    }
    found
}

/// `environmentVariables` entries in an ACI YAML (name/value pairs).
fn yaml_env(text: &str) -> HashMap<String, String> {
    let mut env = HashMap::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- name: ") {
            name = Some(n.to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("value: "), name.take()) {
            env.insert(n, v.trim_matches('\'').to_string());
        }
    }
    env
}

/// The fenced code blocks of a Markdown file (prose that wraps onto "kvfetch …" is not a command).
fn code_blocks(markdown: &str) -> String {
    let mut inside = false;
    let mut out = String::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
        } else if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn check_file(path: &PathBuf) -> usize {
    let mut text = std::fs::read_to_string(path).unwrap();
    if path.extension().is_some_and(|e| e == "md") {
        text = code_blocks(&text);
    }
    let mut env = yaml_env(&text);
    if path.extension().is_some_and(|e| e == "md") {
        // The README's hand-run example sources the emulator's exports first.
        env.insert("KVFETCH_VAULT".into(), "https://127.0.0.1:8443".into());
    }
    let lines = command_lines(&text);
    for argv in &lines {
        let opts = kvfetch::cli::parse(argv, &env)
            .unwrap_or_else(|e| panic!("{}: {argv:?}: {e}", path.display()));
        if opts.command == kvfetch::cli::Command::Fetch {
            kvfetch::fetch::plan(&opts)
                .unwrap_or_else(|e| panic!("{}: {argv:?}: {e}", path.display()));
        }
    }
    lines.len()
}

#[test]
fn every_kvfetch_command_line_in_examples_and_readme_parses() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut total = 0;
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "sh")
        ) {
            let n = check_file(&path);
            assert!(n > 0, "{} has no kvfetch command line", path.display());
            total += n;
        }
    }
    total += check_file(&root.join("README.md"));
    assert!(total >= 3, "found {total} command lines");
}

#[test]
fn the_extractor_finds_both_forms() {
    let text = "command: [\"/kvfetch\", \"fetch\", \"--vault\", \"v\"]\n$ kvfetch fetch --secret a --dir /s   # comment\n";
    assert_eq!(command_lines(text).len(), 2);
}
