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
            kvfetch::modes::fetch::plan(&opts)
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
        ("db-user", "Ex5-user-value"),
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
        // The environment, then NAME:CONTENT for each variable that names a file.
        let script = r#"env; env | grep -o '^[A-Za-z0-9_]*_FILE=' | tr -d = | while read v; do printf '%s:%s\n' "$v" "$(cat "$(printenv "$v")")"; done"#;
        argv.extend(["/bin/sh", "-c", script].map(String::from));
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
            let expected = exec_expectations(&argv, &d.env);
            assert!(!expected.is_empty(), "{what}: no variable checked");
            for (var, name, file) in expected {
                let value = values.iter().find(|(n, _)| *n == name).unwrap().1;
                let line = match file {
                    // The variable names a file in memory holding the value; no variable holds it.
                    true => format!("{var}:{value}"),
                    false => format!("{var}={value}"),
                };
                assert!(stdout.lines().any(|l| l == line), "{what}: {var}: {stdout}");
                if file {
                    assert!(!stdout.contains(&format!("={value}")), "{what}: {var}");
                    let path = format!("{var}=/proc/self/fd/");
                    assert!(
                        stdout.lines().any(|l| l.starts_with(&path)),
                        "{what}: {var}"
                    );
                }
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
    if argv.iter().any(|a| a == "--stale-ok") {
        stale_restart(&what, &emu, d.uid, &argv, &env, &s);
    }
}

/// A `--stale-ok` example run again while the vault throttles every request (an outage): it
/// keeps the files it wrote and exits 0 (with a short `--timeout`, so the test is quick).
fn stale_restart(
    what: &str,
    emu: &Emulator,
    uid: u32,
    argv: &[String],
    env: &std::collections::HashMap<String, String>,
    s: &Scratch,
) {
    let mut argv = argv.to_vec();
    if let Some(i) = argv.iter().position(|a| a == "--timeout") {
        argv[i + 1] = "1s".into();
    }
    emu.set_kv_rate_limit(Some(0));
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = as_user(uid, &[], &args, env).output().unwrap();
    emu.set_kv_rate_limit(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: stale restart: {stderr}"
    );
    assert!(stderr.contains("KEEPING STALE SECRETS"), "{what}: {stderr}");
    assert_eq!(read(&s.path("vol0/db-password")), "Ex1-db-value", "{what}");
}

/// What an exec example sets: (variable, secret name, whether the variable names a file), from
/// its `--secret`s and the Key Vault references in its environment.
fn exec_expectations(
    argv: &[String],
    env: &std::collections::HashMap<String, String>,
) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    for spec in argv
        .windows(2)
        .filter(|w| w[0] == "--secret")
        .map(|w| &w[1])
    {
        let (head, options) = spec.split_once('?').unwrap_or((spec, ""));
        let file = options.split('&').any(|o| o == "file");
        let (var, name) = match head.split_once('=') {
            Some((alias, name)) => (alias.to_string(), name),
            None => {
                let var = head.to_ascii_uppercase().replace('-', "_");
                (if file { format!("{var}_FILE") } else { var }, head)
            }
        };
        out.push((var, name.to_string(), file));
    }
    for (var, value) in env
        .iter()
        .filter(|(_, v)| v.starts_with("@Microsoft.KeyVault("))
    {
        let name = value
            .split(['=', '/', ';', ')'])
            .rev()
            .find(|p| !p.is_empty())
            .unwrap()
            .to_string();
        out.push((var.clone(), name, var.ends_with("_FILE")));
    }
    out
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

/// The env file with the block whose title starts with `title` uncommented.
fn with_block(env_file: &str, title: &str) -> String {
    let mut inside = false;
    let mut out = String::new();
    for line in env_file.lines() {
        if line.starts_with("# ") && !line.starts_with("# export ") {
            inside = line[2..].starts_with(title);
        }
        let line = match line.strip_prefix("# export ") {
            Some(rest) if inside => format!("export {rest}"),
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// The emulator command's counters, through `$CONTROL` as the env file defines it.
fn control_counters(sourced: &str) -> serde_json::Value {
    let control = sourced
        .lines()
        .find_map(|l| l.strip_prefix("export CONTROL="))
        .expect("the env file defines CONTROL")
        .trim_matches('\'');
    let url = format!("{control}/counters");
    let r = kvfetch::net::http::get(&kvfetch::net::http::identity_agent(), &url, &[], ms(5000))
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// `kvfetch fetch --secret db --dir OUT` in a shell that sources `file` (and nothing else of
/// this process's environment but PATH and short retry timings), run by `wrap` (`exec`, or a
/// command that runs its arguments).
fn fetch_sourcing(
    file: &std::path::Path,
    out: &std::path::Path,
    wrap: &str,
) -> std::process::Output {
    let script = format!(
        ". '{}' && {wrap} \"$KVFETCH_BIN_UNDER_TEST\" fetch --secret db --dir '{}'",
        file.display(),
        out.display()
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-c", &script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KVFETCH_BIN_UNDER_TEST", bin())
        .env("KVFETCH_BACKOFF_BASE", "10ms")
        .env("KVFETCH_TIMEOUT", "20s");
    cmd.output().unwrap()
}

#[test]
fn the_emulator_command_serves_every_source_its_env_file_names() {
    let exe = std::env::current_exe().unwrap();
    let command = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/emulator");
    assert!(
        command.exists(),
        "{} (a plain cargo test builds the examples; a filtered one may leave it stale)",
        command.display()
    );
    let s = Scratch::new();
    let token = s.path("azure-identity-token");
    std::fs::write(&token, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ0In0.c2ln\n").unwrap();
    let env_file = s.path("emulator.env");
    let child = std::process::Command::new(&command)
        .args(["--secret", "db=from-the-command", "--tag", "db:team=a"])
        .args(["--managed", "db", "--exp", "db=4102444800"])
        .args(["--content-type", "db=text/plain"])
        .args(["--arc-realm-dir", "/var/opt/azcmagent/tokens"])
        .arg("--federate")
        .arg(format!("wi-client={}", token.display()))
        .arg("--env-file")
        .arg(&env_file)
        .arg("--ca-bundle-file")
        .arg(s.path("bundle.pem"))
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut emulator = Background::new(child);
    wait_for("the env file", ms(20_000), || {
        read(&env_file).contains("AZURE_FEDERATED_TOKEN_FILE")
    });
    assert_eq!(mode(&env_file) & 0o777, 0o600);
    let bundle = read(&s.path("bundle.pem"));
    assert_eq!(
        bundle.matches("BEGIN CERTIFICATE").count(),
        2,
        "the vault CA and Service Fabric's"
    );
    let text = read(&env_file);
    let blocks = [
        ("Common", "imds_token_requests"),
        ("App Service", "app_service_token_requests"),
        ("Legacy", "legacy_msi_token_requests"),
        ("Cloud Shell", "cloud_shell_token_requests"),
        ("Service Fabric", "service_fabric_token_requests"),
        ("Workload identity", "entra_token_requests"),
    ];
    for (title, counter) in blocks {
        let mut sourced = with_block(&text, title);
        if title == "Workload identity" {
            // kvfetch trusts KVFETCH_CA_FILE for the vault only, so it takes the plain authority
            // the block's title names (the SDKs need the https one).
            let plain = sourced
                .lines()
                .find_map(|l| l.split_once("the same in plain HTTP: "))
                .expect("the workload block names the plain authority")
                .1
                .to_string();
            sourced.push_str(&format!("export AZURE_AUTHORITY_HOST='{plain}'\n"));
        }
        let file = s.path("sourced.env");
        std::fs::write(&file, &sourced).unwrap();
        let before = control_counters(&sourced)[counter].as_u64().unwrap();
        let out = s.path(&format!("out-{}", counter));
        let run = fetch_sourcing(&file, &out, "exec");
        assert!(
            run.status.success(),
            "{title}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(read(&out.join("db")), "from-the-command", "{title}");
        let after = control_counters(&sourced)[counter].as_u64().unwrap();
        assert_eq!(after, before + 1, "{title} reached its endpoint");
    }
    assert_attributes(&with_block(&text, "Common"));
    let arc_dir = text
        .lines()
        .find_map(|l| l.strip_prefix("# Azure Arc: key files in "))
        .and_then(|l| l.split(" (").next())
        .expect("the env file names the Arc key directory")
        .to_string();
    if root_or_skip("the Arc token directory is mounted in a private mount namespace (root)") {
        let sourced = with_block(&text, "Azure Arc");
        let file = s.path("sourced.env");
        std::fs::write(&file, &sourced).unwrap();
        let out = s.path("out-arc");
        let wrap = format!(
            "exec unshare -m --propagation private sh -c 'mount -t tmpfs tmpfs /var/opt && mkdir -p /var/opt/azcmagent/tokens && mount --bind {arc_dir} /var/opt/azcmagent/tokens && exec \"$0\" \"$@\"'"
        );
        let run = fetch_sourcing(&file, &out, &wrap);
        assert!(
            run.status.success(),
            "Arc: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(read(&out.join("db")), "from-the-command");
        assert_eq!(control_counters(&sourced)["arc_token_requests"], 2);
    }
    emulator.signal(SIGTERM);
    assert_eq!(emulator.exit_within(ms(10_000)), Some(0));
    assert!(
        !std::path::Path::new(&arc_dir).exists(),
        "{arc_dir} is left behind"
    );
}

/// The attributes the command's flags gave `db`, as the vault answers them.
fn assert_attributes(sourced: &str) {
    use kvfetch::net::http::{get, identity_agent, vault_agents};
    let var = |k: &str| {
        sourced
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {k}=")))
            .unwrap_or_else(|| panic!("{k} in the env file"))
            .trim_matches('\'')
            .to_string()
    };
    let imds = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
        var("AZURE_POD_IDENTITY_AUTHORITY_HOST")
    );
    let r = get(&identity_agent(), &imds, &[("Metadata", "true")], ms(5000)).unwrap();
    let token: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let pem = std::fs::read(var("KVFETCH_CA_FILE")).unwrap();
    let agent = vault_agents(Some(&pem), 1).unwrap().1;
    let url = format!("{}/secrets/db?api-version=7.4", var("KVFETCH_VAULT"));
    let r = get(&agent, &url, &[("Authorization", &bearer)], ms(5000)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        (&v["managed"], &v["contentType"], &v["tags"]["team"]),
        (&true.into(), &"text/plain".into(), &"a".into()),
        "{v}"
    );
    assert_eq!(v["attributes"]["exp"], 4_102_444_800u64, "{v}");
}
