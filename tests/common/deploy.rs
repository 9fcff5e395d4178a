//! The deployment examples (`examples/*.yaml`) as data: the kvfetch command lines in them, the
//! environment they set, the uid kvfetch runs as and the volumes it mounts. `examples.rs` runs
//! them against the emulator by URL; `group.rs` runs them as deployed, in namespaces of their own.

use std::collections::HashMap;
use std::path::PathBuf;

/// kvfetch command lines in a text: YAML flow sequences (`["/kvfetch", …]`) and shell lines
/// starting with `kvfetch `.
pub fn command_lines(text: &str) -> Vec<Vec<String>> {
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
pub fn yaml_env(text: &str) -> HashMap<String, String> {
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

/// What an example deploys: kvfetch's command line, its environment, the uid it runs as, and
/// the mount paths of its volumes.
pub struct Deployment {
    pub argv: Vec<String>,
    pub env: HashMap<String, String>,
    pub uid: u32,
    pub mounts: Vec<String>,
}

pub fn deployment(path: &PathBuf) -> Deployment {
    let text = std::fs::read_to_string(path).unwrap();
    let argv = command_lines(&text).remove(0);
    let uid = text
        .lines()
        .find_map(|l| l.strip_prefix("# kvfetch runs as uid "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}: no \"# kvfetch runs as uid N\" line", path.display()));
    let mounts = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mountPath: "))
        .map(|m| m.trim().to_string())
        .collect();
    Deployment {
        argv,
        env: yaml_env(&text),
        uid,
        mounts,
    }
}

/// The deployment example `name` (a file in `examples/`).
pub fn example(name: &str) -> Deployment {
    deployment(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
}
