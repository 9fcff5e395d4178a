//! Help, usage and completions as a person meets them: the text each command prints, what a
//! bare `kvfetch` says, and each shell's completion script loaded in that shell.

mod common;

use std::process::Command;

use common::*;

fn kvfetch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).env_clear().output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn shell(name: &str) -> String {
    let path = format!("/usr/bin/{name}");
    assert!(
        std::path::Path::new(&path).exists(),
        "{name} is missing: run scripts/install-test-deps"
    );
    path
}

#[test]
fn bare_kvfetch_prints_a_short_usage_and_exits_2() {
    let (code, stdout, stderr) = kvfetch(&[]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.starts_with("Usage: kvfetch COMMAND"), "{stderr}");
    assert!(stderr.lines().count() < 15, "short: {stderr}");
}

#[test]
fn help_command_and_command_help_are_the_same_and_grouped() {
    for c in ["fetch", "watch", "exec"] {
        let (code, by_help, _) = kvfetch(&["help", c]);
        assert_eq!(code, 0);
        let (_, by_flag, _) = kvfetch(&[c, "--help"]);
        assert_eq!(by_help, by_flag, "{c}");
        for heading in [
            "\nSource (",
            "\nIdentity (",
            "\nOutput (",
            "\nRetry:",
            "\nLogging:",
            "\nExamples:\n",
        ] {
            assert!(by_help.contains(heading), "{c}: {heading}");
        }
        assert_eq!(by_help.contains("\nRefresh ("), c != "fetch", "{c}");
        let examples = by_help.split("\nExamples:\n").nth(1).unwrap();
        let n = examples
            .lines()
            .filter(|l| l.trim_start().starts_with("# "))
            .count();
        assert!((2..=4).contains(&n), "{c}: {n} examples");
    }
    let (code, _, stderr) = kvfetch(&["help", "nope"]);
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn exec_without_the_double_dash_says_where_it_goes() {
    let (code, _, stderr) = kvfetch(&["exec", "--vault", "contoso-kv", "sh", "-c", "true"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("put -- before the command"), "{stderr}");
    assert!(stderr.contains("-- sh"), "{stderr}");
}

#[test]
fn completions_need_a_known_shell() {
    for args in [&["completions"][..], &["completions", "powershell"]] {
        let (code, stdout, stderr) = kvfetch(args);
        assert_eq!(code, 2, "{args:?}");
        assert!(
            stdout.is_empty() && stderr.contains("bash, zsh or fish"),
            "{stderr}"
        );
    }
}

/// Load the bash script and complete `words` (the last one is being typed).
fn bash_complete(script: &str, words: &[&str]) -> Vec<String> {
    let array: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "{script}\nCOMP_WORDS=({}); COMP_CWORD={}; _kvfetch; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        array.join(" "),
        words.len() - 1
    );
    let out = Command::new(shell("bash"))
        .args(["--norc", "-c", &program])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_completes_commands_flags_per_command_and_values() {
    let (code, script, _) = kvfetch(&["completions", "bash"]);
    assert_eq!(code, 0);
    let c = |w: &[&str]| bash_complete(&script, w);
    assert_eq!(c(&["kvfetch", ""])[..3], ["fetch", "watch", "exec"]);
    assert_eq!(c(&["kvfetch", "watch", "--hea"]), ["--health-listen"]);
    assert!(
        c(&["kvfetch", "fetch", "--heal"]).is_empty(),
        "fetch has no --health-listen"
    );
    assert_eq!(c(&["kvfetch", "exec", "--on-c"]), ["--on-change"]);
    assert_eq!(
        c(&["kvfetch", "fetch", "--env-format", "d"]),
        ["dotenv", "docker"]
    );
    assert_eq!(
        c(&["kvfetch", "fetch", "--log-format", ""]),
        ["text", "json"]
    );
    assert!(
        c(&["kvfetch", "fetch", "--vault", ""]).is_empty(),
        "a name is not completed"
    );
    assert!(
        c(&["kvfetch", "exec", "--", "bas"])
            .iter()
            .any(|w| w == "bash")
    );
}

#[test]
fn fish_completes_flags_per_command() {
    let (code, script, _) = kvfetch(&["completions", "fish"]);
    assert_eq!(code, 0);
    let dir = Scratch::new();
    let file = dir.path("kvfetch.fish");
    std::fs::write(&file, script).unwrap();
    let complete = |line: &str| -> Vec<String> {
        let program = format!("source {}; complete -C '{line}'", file.display());
        let out = Command::new(shell("fish"))
            .args(["--no-config", "-c", &program])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(complete("kvfetch watch --hea"), ["--health-listen"]);
    assert!(complete("kvfetch fetch --heal").is_empty());
    assert!(complete("kvfetch ").iter().any(|w| w == "exec"));
    assert_eq!(complete("kvfetch fetch --env-format j"), ["json"]);
}

#[test]
fn zsh_loads_the_script_and_defines_the_completion() {
    let (code, script, _) = kvfetch(&["completions", "zsh"]);
    assert_eq!(code, 0);
    let dir = Scratch::new();
    let file = dir.path("_kvfetch");
    std::fs::write(&file, &script).unwrap();
    // Load it as a user's .zshrc would (compinit, then the script) and ask zsh what it bound.
    let program = format!(
        "autoload -U compinit && compinit -u -D && source {} && print -r -- $_comps[kvfetch]",
        file.display()
    );
    let out = Command::new(shell("zsh"))
        .args(["-f", "-c", &program])
        .env("HOME", &dir.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "_kvfetch");
    // The watch case offers --health-listen; the fetch case does not.
    let case = |name: &str| {
        script
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name})")))
            .unwrap()
            .to_string()
    };
    assert!(case("watch").contains("'--health-listen["));
    assert!(!case("fetch").contains("--health-listen"));
    // `:`, `[`, `]` are _arguments syntax: a value name or choice holding them is escaped (an
    // unescaped `UID[:GID]` made zsh run `GID]` as a command).
    assert!(
        case("fetch")
            .contains(r"--owner[numeric owner of the files kvfetch writes]:UID\[\:GID\]: '"),
        "{}",
        case("fetch")
    );
    assert!(
        case("exec").contains(r"(restart none signal\:HUP"),
        "{}",
        case("exec")
    );
}
