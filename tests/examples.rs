//! Keeps `examples/`, the README and `docs/` honest: every kvfetch command line in them parses with the
//! real CLI and passes the same checks `fetch` makes before its first request, and each
//! deployment example's command runs against the emulator as the user its image runs as, with
//! its volume as the platform provides it, and does its job.

mod common;

use std::path::PathBuf;

use common::*;

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
    // A template's SRC is read by the plan: stand in a small one for each.
    let scratch = std::env::temp_dir().join(format!("kvfetch-examples-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let stand_in = scratch.join("stand-in.tpl");
    std::fs::write(&stand_in, "password={{ secret \"db\" }}\n").unwrap();
    for argv in &lines {
        let argv: Vec<String> = argv
            .iter()
            .map(|a| match a.split_once(".tpl:") {
                Some((_, rest)) => format!("{}:{rest}", stand_in.display()),
                None => a.clone(),
            })
            .collect();
        let argv = &argv;
        let opts = kvfetch::cli::parse(argv, &env)
            .unwrap_or_else(|e| panic!("{}: {argv:?}: {e}", path.display()));
        if opts.command == kvfetch::cli::Command::Fetch {
            kvfetch::fetch::plan(&opts)
                .unwrap_or_else(|e| panic!("{}: {argv:?}: {e}", path.display()));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    lines.len()
}

#[test]
fn every_kvfetch_command_line_in_examples_readme_and_docs_parses() {
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
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            total += check_file(&path);
        }
    }
    assert!(total >= 3, "found {total} command lines");
}

#[test]
fn the_extractor_finds_both_forms() {
    let text = "command: [\"/kvfetch\", \"fetch\", \"--vault\", \"v\"]\n$ kvfetch fetch --secret a --dir /s   # comment\n";
    assert_eq!(command_lines(text).len(), 2);
}

/// The emulator's URL for a reference or vault that names `myvault` (the tests have no DNS:
/// the reference forms themselves are covered by `reference.rs`'s unit tests).
fn to_emulator(text: &str, vault: &str) -> String {
    let text = text.replace("https://myvault.vault.azure.net", vault);
    match text.split_once("VaultName=myvault;SecretName=") {
        Some((head, rest)) => {
            let name = rest.trim_end_matches(')');
            format!("{head}SecretUri={vault}/secrets/{name})")
        }
        None => text,
    }
}

#[test]
fn each_deployment_example_runs_as_its_image_user_and_does_its_job() {
    if !root_or_skip("running an example as its image's uid needs root (CI runs as root)") {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut ran = 0;
    for entry in std::fs::read_dir(root.join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            run_deployment(&path);
            ran += 1;
        }
    }
    assert!(ran >= 4, "{ran} examples");
}

fn run_deployment(path: &PathBuf) {
    let what = path.display().to_string();
    let d = deployment(path);
    let emu = Emulator::start().unwrap();
    let values = [
        ("db-password", "Ex1-db-value"),
        ("api-key", "Ex2-api-value"),
        ("tls-cert", "Ex3-cert-value"),
        ("smtp-password", "Ex4-smtp-value"),
    ];
    for (name, value) in values {
        emu.set_secret(name, value);
    }
    let mut env = env_for(&emu);
    env.remove("KVFETCH_VAULT");
    for (k, v) in &d.env {
        env.insert(k.clone(), to_emulator(v, &emu.vault_url()));
        if k == "AZURE_CLIENT_ID" {
            let mut id = Identity::user(v);
            id.client_id = v.clone();
            emu.add_user_identity(id);
        }
    }
    // Each volume: a directory every container may write (ACI emptyDir; Kubernetes emptyDir is
    // mode 0777 too), on tmpfs.
    let s = Scratch::new();
    let mut argv: Vec<String> = d.argv.clone();
    for (i, mount) in d.mounts.iter().enumerate() {
        let vol = s.path(&format!("vol{i}"));
        std::fs::create_dir(&vol).unwrap();
        std::fs::set_permissions(&vol, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        for a in argv.iter_mut() {
            if let Some(rest) = a.strip_prefix(mount.as_str()) {
                *a = format!("{}{rest}", vol.display());
            }
        }
    }
    for i in 0..argv.len() {
        match argv[i].as_str() {
            "myvault" if i > 0 && argv[i - 1] == "--vault" => argv[i] = emu.vault_url(),
            "--health-listen" => argv[i + 1] = "127.0.0.1:0".into(),
            _ => {}
        }
    }
    if let Some(dd) = argv.iter().position(|a| a == "--") {
        argv.truncate(dd + 1);
        argv.push("/usr/bin/env".into());
    }
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut cmd = as_user(d.uid, &[], &args, &env);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    match argv[0].as_str() {
        "fetch" => {
            let out = cmd.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{what}: {stderr}");
        }
        "watch" => {
            let w = Background::new(cmd.spawn().unwrap());
            let first = s.path("vol0/db-password");
            w.wait(&format!("{what}: the first write"), ms(10000), || {
                first.exists()
            });
            w.signal(SIGTERM);
            let mut w = w;
            assert_eq!(w.exit_within(ms(5000)), Some(0), "{what}: {}", w.stderr());
        }
        "exec" => {
            let out = cmd.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{what}: {stderr}");
            for (var, value) in [
                ("DB_PASSWORD", "Ex1-db-value"),
                ("API_KEY", "Ex2-api-value"),
                ("SMTP_PASSWORD", "Ex4-smtp-value"),
            ] {
                assert!(
                    stdout.lines().any(|l| l == format!("{var}={value}")),
                    "{what}: {var}"
                );
            }
            return;
        }
        other => panic!("{what}: command {other}"),
    }
    // The files: the secret's bytes, mode 0400, owned by the uid that runs kvfetch.
    let specs = argv
        .windows(2)
        .filter(|w| w[0] == "--secret")
        .map(|w| w[1].as_str());
    let mut checked = 0;
    for spec in specs {
        let (file, name) = spec.split_once('=').unwrap_or((spec, spec));
        let value = values.iter().find(|(n, _)| *n == name).unwrap().1;
        let file = s.path(&format!("vol0/{file}"));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(read(&file), value, "{what}: {name}");
        assert_eq!(mode(&file), 0o400, "{what}: {name}");
        assert_eq!(
            std::fs::metadata(&file).unwrap().uid(),
            d.uid,
            "{what}: {name}"
        );
        checked += 1;
    }
    assert!(checked >= 1, "{what}: no file checked");
}

#[test]
fn the_demo_runs_and_removes_its_directory() {
    // cargo test builds the examples beside the test binaries' deps directory.
    let exe = std::env::current_exe().unwrap();
    let demo = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/demo");
    assert!(
        demo.exists(),
        "{} (a plain cargo test builds the examples; a filtered one may leave it stale)",
        demo.display()
    );
    let out = std::process::Command::new(&demo)
        .env_clear()
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("exit code: 0"), "{stdout}");
    assert!(
        stdout.contains("(mode 400, 26 bytes): \"Hello Container Instances!\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("token requests: 1, Key Vault requests: 1"),
        "{stdout}"
    );
    let dir = stdout
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/secrets"))
        .expect("the demo names its directory");
    assert!(!std::path::Path::new(dir).exists(), "{dir} is left behind");
    let ca = stdout
        .lines()
        .find_map(|l| l.strip_prefix("#   KVFETCH_CA_FILE="))
        .expect("the demo names the emulator's CA file");
    let emulator_dir = std::path::Path::new(ca).parent().unwrap();
    assert!(
        !emulator_dir.exists(),
        "{} is left behind",
        emulator_dir.display()
    );
}
