//! See main.rs. (area: cli) Outputs, `exec`, flags and the doctor: a careless operator's flags
//! must be refused before any request, and nothing a flag carries (a webhook's token, bytes that
//! are not UTF-8) may be lost or shown.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

#[allow(unused_imports)]
use crate::common::*;

/// A distinctive value: no log key or message word contains it.
const VALUE: &str = "Qc4-cLiVaL-8Rt";

fn seeded() -> Emulator {
    let emu = Emulator::start().unwrap();
    emu.set_secret("api-key", VALUE);
    emu
}

fn assert_no_requests(emu: &Emulator, what: &str) {
    let c = emu.counters();
    assert_eq!(
        (c.imds_token_requests, c.kv_total_requests),
        (0, 0),
        "{what}: no request may be sent"
    );
}

// Defect 2: a name the atomic layout reserves is never an output.

#[test]
fn names_the_atomic_layout_reserves_are_never_outputs() {
    let emu = seeded();
    let s = Scratch::new();
    let dir = s.path("out");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.display().to_string();
    let src = s.path("app.tpl");
    std::fs::write(&src, "key={{ secret \"api-key\" }}\n").unwrap();
    let src = src.display().to_string();
    let reserved = [
        format!("{d}/..data"),
        format!("{d}/./..data"),
        format!("{d}/..data_tmp"),
        format!("{d}/..2026_12_07_10_15_00.482913047"),
        format!("{d}/..data/app.env"),
        format!("{d}/.kvfetch-tmp-data-x"),
    ];
    let env = env_for(&emu);
    for path in &reserved {
        let base = ["--secret", "api-key", "--dir", &d, "--dir-layout", "atomic"];
        let template = format!("{src}:{path}");
        let cases: [(&str, Vec<&str>); 3] = [
            ("fetch", vec!["--env-file", path]),
            ("fetch", vec!["--template", &template]),
            ("watch", vec!["--ready-file", path]),
        ];
        for (command, extra) in cases {
            let mut args = vec![command];
            args.extend(base);
            args.extend(&extra);
            let r = run_with(&env, &args);
            assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
            assert_no_requests(&emu, &format!("{args:?}"));
            assert!(s.entries("out").is_empty(), "{args:?}: nothing written");
        }
    }
    // The same names beside (not in) the atomic --dir are plain files.
    let beside = s.path("..data").display().to_string();
    let r = run_with(
        &env,
        &[
            "fetch",
            "--secret",
            "api-key",
            "--dir",
            &d,
            "--dir-layout",
            "atomic",
            "--env-file",
            &beside,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(read(&dir.join("api-key")).contains(VALUE));
}

// Defect 13: `--on-change signal:SIG` takes only signals an app can catch as a reload request.

#[test]
fn on_change_takes_only_signals_an_app_can_catch() {
    let emu = seeded();
    let env = env_for(&emu);
    for sig in [
        "STOP", "SIGSTOP", "19", "KILL", "9", "TSTP", "TTIN", "TTOU", "SEGV", "11", "BUS", "FPE",
        "ILL", "ABRT", "TRAP", "SYS", "CHLD", "CONT", "0", "65", "34", "-1",
    ] {
        let on_change = format!("signal:{sig}");
        let r = run_with(
            &env,
            &[
                "exec",
                "--secret",
                "api-key",
                "--refresh",
                "1m",
                "--on-change",
                &on_change,
                "--",
                "true",
            ],
        );
        assert_eq!(r.code, 2, "{on_change}: {}", r.stderr);
        assert_no_requests(&emu, &on_change);
    }
    for sig in ["HUP", "SIGUSR1", "usr2", "10"] {
        let on_change = format!("signal:{sig}");
        let r = run_with(
            &env,
            &[
                "exec",
                "--secret",
                "api-key",
                "--refresh",
                "1m",
                "--on-change",
                &on_change,
                "--",
                "true",
            ],
        );
        assert_eq!(r.code, 0, "{on_change}: {}", r.stderr);
    }
}

// Defect 12: a webhook authenticated by a query token works, and the token is never shown.

#[test]
fn a_notify_url_with_a_query_token_is_used_and_never_shown() {
    let emu = seeded();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let token = "SeCrEt-w3bh00k";
    let url = format!(
        "http://{}/hook?token={token}&x=a%2Fb",
        listener.local_addr().unwrap()
    );
    let s = Scratch::new();
    let (dir, ready) = (s.path("out"), s.path("ready"));
    let mut w = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--secret",
            "api-key",
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "100ms",
            "--ready-file",
            ready.to_str().unwrap(),
            "--notify-url",
            &url,
            "--verbose",
        ],
    );
    wait_for("the ready file", ms(10000), || ready.exists());
    emu.set_secret("api-key", "Qc4-cLiVaL-9Zz");
    let failed = accept_post(
        &listener,
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
    );
    let line = failed.lines().next().unwrap_or_default();
    assert_eq!(line, format!("POST /hook?token={token}&x=a%2Fb HTTP/1.1"));
    emu.set_secret("api-key", "Qc4-cLiVaL-7Yy");
    let ok = accept_post(&listener, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(ok.starts_with("POST /hook?token="), "{ok}");
    w.wait("the notified line", ms(10000), || {
        w.stderr().contains("notified")
    });
    let log = w.stop_and_stderr();
    assert!(log.contains("notification failed"), "{log}");
    assert!(
        !log.contains(token),
        "the query token reached the log: {log}"
    );

    // Refusals name the URL without its user information, password or query.
    let env = env_for(&emu);
    for bad in [
        "http://user:PaSsW0rd@127.0.0.1:9/hook",
        "http://127.0.0.1:9/hook?token=PaSsW0rd#frag",
        "http://127.0.0.1:9/hook?token=PaSsW0rd x",
        "ftp://127.0.0.1:9/hook?token=PaSsW0rd",
    ] {
        let r = run_with(
            &env,
            &[
                "watch",
                "--secret",
                "api-key",
                "--dir",
                dir.to_str().unwrap(),
                "--notify-url",
                bad,
            ],
        );
        assert_eq!(r.code, 2, "{bad}: {}", r.stderr);
        assert!(
            !r.stderr.contains("PaSsW0rd") && !r.stderr.contains("user:"),
            "{bad}: {}",
            r.stderr
        );
    }
}

// Defect 11: arguments and inherited variables are bytes, end to end.

fn exec_bytes(emu: &Emulator, extra: &[&str]) -> (i32, String, String) {
    let script = r#"printf 'arg=%s\n' "$(printf %s "$1" | od -An -tx1 | tr -d ' \n')"; printf 'env=%s\n' "$(printf %s "$ODD" | od -An -tx1 | tr -d ' \n')""#;
    let env: HashMap<String, String> = env_for(emu);
    let out = Command::new(bin())
        .arg("exec")
        .args(["--secret", "api-key"])
        .args(extra)
        .args(["--", "sh", "-c", script, "sh"])
        .arg(OsStr::from_bytes(b"a\xff\xfe"))
        .env_clear()
        .envs(&env)
        .env("ODD", OsStr::from_bytes(b"\xff\xfdz"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exec_passes_bytes_that_are_not_utf8_unchanged() {
    let emu = seeded();
    for extra in [&[][..], &["--refresh", "1m"][..]] {
        let (code, stdout, stderr) = exec_bytes(&emu, extra);
        assert_eq!(code, 0, "{extra:?}: {stderr}");
        assert!(stdout.contains("arg=61fffe\n"), "{extra:?}: {stdout}");
        assert!(stdout.contains("env=fffd7a\n"), "{extra:?}: {stdout}");
    }
    // A flag's value that is not UTF-8 is refused, never replaced by U+FFFD.
    emu.reset_counters();
    let out = Command::new(bin())
        .args(["fetch", "--secret", "api-key", "--dir"])
        .arg(OsStr::from_bytes(b"/dev/shm/kvfetch-odd-\xff"))
        .env_clear()
        .envs(env_for(&emu))
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all("/dev/shm/kvfetch-odd-\u{fffd}");
    assert_eq!(out.status.code(), Some(2));
    assert_no_requests(&emu, "a flag that is not UTF-8");
    // So is one of kvfetch's variables.
    let out = Command::new(bin())
        .args(["fetch", "--secret", "api-key"])
        .env_clear()
        .envs(env_for(&emu))
        .env(
            "KVFETCH_DIR",
            OsStr::from_bytes(b"/dev/shm/kvfetch-odd-\xfe"),
        )
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all("/dev/shm/kvfetch-odd-\u{fffd}");
    assert_eq!(out.status.code(), Some(2));
    assert_no_requests(&emu, "a variable that is not UTF-8");
    // A reference under a name that is not UTF-8 could not be replaced: refused, not passed on.
    let s = Scratch::new();
    let marker = s.path("started");
    let vault = emu.vault_url();
    let out = Command::new(bin())
        .args(["exec", "--", "touch"])
        .arg(&marker)
        .env_clear()
        .envs(env_for(&emu))
        .env(
            OsStr::from_bytes(b"DB\xff"),
            format!("@Microsoft.KeyVault(SecretUri={vault}/secrets/api-key)"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!marker.exists(), "the command never starts");
    assert_no_requests(&emu, "a reference under a name that is not UTF-8");
}

// Defect 9: the doctor applies every option to the value in memory, and exits as fetch does.

/// What a secret is in the vault, for the doctor tests.
#[derive(Debug, Clone, Copy)]
enum Held {
    Absent,
    Disabled,
    Denied,
    Text,
    Json,
    Base64,
    BinaryBase64,
    Pem,
    Pfx,
    BrokenPem,
}

/// The distinctive part of every value below: no message may show it.
const MARK: &str = "Mk7dOcTvAl";

fn hold(emu: &Emulator, name: &str, held: Held) {
    let plain = |value: String, content_type: Option<&str>| SecretInput {
        value,
        content_type: content_type.map(String::from),
        ..SecretInput::default()
    };
    let input = match held {
        Held::Absent => return,
        Held::Disabled | Held::Denied | Held::Text => plain(format!("text {MARK}"), None),
        Held::Json => plain(format!(r#"{{"password":"{MARK}"}}"#), None),
        // "Mk7dOcTvAl" and four bytes that are not UTF-8.
        Held::Base64 => plain("TWs3ZE9jVHZBbA==".into(), None),
        Held::BinaryBase64 => plain("//79/E1rN2RPY1R2QWw=".into(), None),
        Held::Pem => return drop(emu.set_certificate(name, Certificate::RsaPemMixed)),
        Held::Pfx => return drop(emu.set_certificate(name, Certificate::RsaPfxAes)),
        Held::BrokenPem => plain(
            format!("-----BEGIN CERTIFICATE-----\n{MARK}AAAA\n-----END CERTIFICATE-----\n"),
            Some("application/x-pem-file"),
        ),
    };
    emu.set_secret_with(name, input);
    match held {
        Held::Disabled => drop(emu.set_enabled(name, false)),
        Held::Denied => emu.deny(name, true),
        _ => {}
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `fetch` and `doctor` with the same flags: their exit codes, and the doctor's output.
fn fetch_and_doctor(emu: &Emulator, specs: &[String], env_file: bool) -> (i32, Run) {
    let s = Scratch::new();
    let out = if env_file {
        [
            "--env-file".to_string(),
            s.path("app.env").display().to_string(),
        ]
    } else {
        ["--dir".to_string(), s.path("out").display().to_string()]
    };
    let args = |command: &'static str| -> Vec<String> {
        let mut a = vec![command.to_string()];
        for spec in specs {
            a.extend(["--secret".to_string(), spec.clone()]);
        }
        a.extend(out.iter().cloned());
        a
    };
    let env = env_for(emu);
    let fetch_args = args("fetch");
    let fetched = run_with(&env, &strs(&fetch_args));
    let doctor_args = args("doctor");
    let doctor = run_with(&env, &strs(&doctor_args));
    (fetched.code, doctor)
}

#[test]
fn the_doctor_applies_every_option_and_exits_as_fetch_does() {
    let emu = Emulator::start().unwrap();
    for (held, spec, env_file, want) in [
        (Held::Text, "x?json=/password", false, 5),
        (Held::Json, "x?json=/nothing", false, 5),
        (Held::Text, "x?decode=base64", false, 5),
        (Held::Text, "x?format=key", false, 5),
        (Held::BrokenPem, "x?format=chain", false, 5),
        (Held::Absent, "x?optional", false, 0),
        (Held::Disabled, "x?optional", true, 0),
        (Held::BinaryBase64, "x?decode=base64", true, 6),
        (Held::Json, "x?json=/password", true, 0),
        (Held::Pem, "x?format=chain", false, 0),
    ] {
        let name = format!("s{}", emu.counters().kv_total_requests);
        hold(&emu, &name, held);
        let spec = spec.replacen('x', &name, 1);
        let (fetched, doctor) = fetch_and_doctor(&emu, std::slice::from_ref(&spec), env_file);
        let what = format!("{held:?} {spec} env_file={env_file}");
        assert_eq!(fetched, want, "{what}: fetch");
        assert_eq!(doctor.code, fetched, "{what}: doctor: {}", doctor.stdout);
        assert_no_leak(&doctor, &[MARK, "Mk7d", "TWs3ZE9j"]);
    }
}

fn held() -> impl proptest::strategy::Strategy<Value = Held> {
    use proptest::prelude::*;
    prop_oneof![
        Just(Held::Absent),
        Just(Held::Disabled),
        Just(Held::Denied),
        Just(Held::Text),
        Just(Held::Json),
        Just(Held::Base64),
        Just(Held::BinaryBase64),
        Just(Held::Pem),
        Just(Held::Pfx),
        Just(Held::BrokenPem),
    ]
}

fn options() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let shape = prop_oneof![
        Just(""),
        Just("json=/password"),
        Just("json=/password&decode=base64"),
        Just("decode=base64"),
        Just("decode=hex"),
        Just("format=key"),
        Just("format=cert"),
        Just("format=chain"),
        Just("format=pem"),
        Just("format=pfx"),
    ];
    (shape, any::<bool>()).prop_map(|(shape, optional)| {
        let parts: Vec<&str> = [shape, if optional { "optional" } else { "" }]
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        match parts.is_empty() {
            true => String::new(),
            false => format!("?{}", parts.join("&")),
        }
    })
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(24),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    })]

    /// Whatever the vault holds and whatever the spec asks, the doctor's exit code is fetch's.
    #[test]
    fn the_doctor_exits_as_fetch_does(
        secrets in proptest::collection::vec((held(), options()), 1..=2),
        env_file in proptest::bool::ANY,
    ) {
        let emu = Emulator::start().unwrap();
        let mut specs = Vec::new();
        for (i, (held, options)) in secrets.iter().enumerate() {
            hold(&emu, &format!("s{i}"), *held);
            specs.push(format!("a{i}=s{i}{options}"));
        }
        let (fetched, doctor) = fetch_and_doctor(&emu, &specs, env_file);
        proptest::prop_assert_eq!(doctor.code, fetched, "{:?} {:?} env_file={}: {}", secrets, specs, env_file, doctor.stdout);
        assert_no_leak(&doctor, &[MARK, "Mk7d", "TWs3ZE9j"]);
    }
}

// Fix group B, finding 2: a refused URL never shows its password or token, whatever
// delimiters they hold, for every URL-valued flag and variable.

/// A refusal to provoke: the flag or variable its message must name, extra environment, and
/// the arguments after the command.
type RefusedCase = (String, Vec<(String, String)>, Vec<String>);

/// The two halves of every secret below: neither may appear in any message.
const HALVES: [&str; 2] = ["Zz1pw", "Qq2tk"];

/// A password or token of both halves around `delimiter`.
fn split_secret(delimiter: char) -> String {
    format!("{}{delimiter}{}", HALVES[0], HALVES[1])
}

/// Refusals that once showed a password or token.
fn refused_url_cases(dir: &str) -> Vec<RefusedCase> {
    let mut cases = Vec::new();
    let flag = |f: &str, v: String| (vec![], vec![f.to_string(), v]);
    for d in ['/', '?', '#', '@', ':'] {
        let pw = split_secret(d);
        for (env, args) in [
            flag("--notify-url", format!("http://user:{pw}@127.0.0.1:9/hook")),
            flag("--vault", format!("https://u:{pw}@127.0.0.1:1")),
            flag("--vault", format!("u:{pw}@127.0.0.1")),
            flag("--resource", format!("https://u:{pw}@vault.azure.net")),
            flag("--secret", format!("https://u:{pw}@127.0.0.1:1/secrets/db")),
            flag("--secret", format!("db=u:{pw}@127.0.0.1/secrets/db")),
            (
                vec![(
                    "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_string(),
                    format!("http://u:{pw}@127.0.0.1:1"),
                )],
                vec![],
            ),
            (
                vec![
                    ("IDENTITY_HEADER".into(), "h".into()),
                    (
                        "IDENTITY_ENDPOINT".into(),
                        format!("http://user:{pw}@127.0.0.1:1/msi/token"),
                    ),
                ],
                vec![],
            ),
            (
                vec![(
                    "MSI_ENDPOINT".into(),
                    format!("http://127.0.0.1:1/token?code={pw}"),
                )],
                vec![],
            ),
            (
                vec![
                    ("AZURE_FEDERATED_TOKEN_FILE".into(), "/dev/null".into()),
                    ("AZURE_CLIENT_ID".into(), "c".into()),
                    ("AZURE_TENANT_ID".into(), "t".into()),
                    (
                        "AZURE_AUTHORITY_HOST".into(),
                        format!("https://u:{pw}@127.0.0.1:1"),
                    ),
                ],
                vec![],
            ),
        ] {
            let named = args
                .first()
                .unwrap_or_else(|| &env.last().unwrap().0)
                .clone();
            cases.push((named, env, args));
        }
    }
    let sig = split_secret('&');
    cases.push((
        "IDENTITY_ENDPOINT".into(),
        vec![
            (
                "IDENTITY_ENDPOINT".into(),
                format!("http://user:Pa55word@127.0.0.1:1/msi/token?sig={sig}"),
            ),
            ("IDENTITY_HEADER".into(), "h".into()),
        ],
        vec![],
    ));
    for (_, _, args) in &mut cases {
        if !args.iter().any(|a| a == "--secret") {
            args.extend(["--secret".into(), "api-key".into()]);
        }
        args.extend(["--dir".into(), dir.into()]);
    }
    cases
}

#[test]
fn refused_urls_never_show_a_password_or_token() {
    let emu = seeded();
    let s = Scratch::new();
    let dir = s.path("out").display().to_string();
    for (named, extra, args) in refused_url_cases(&dir) {
        let what = format!("{extra:?} {args:?}");
        let mut env = env_for(&emu);
        env.extend(extra);
        let command = if args[0] == "--notify-url" {
            "watch"
        } else {
            "fetch"
        };
        let mut argv = vec![command];
        argv.extend(args.iter().map(String::as_str));
        let r = run_with(&env, &argv);
        assert_eq!(r.code, 2, "{what}: {}", r.stderr);
        assert!(
            HALVES
                .iter()
                .all(|h| !r.stderr.contains(h) && !r.stdout.contains(h)),
            "{what}: a password or token is shown: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains(&named),
            "{what}: not its refusal: {}",
            r.stderr
        );
        assert_no_requests(&emu, &what);
    }
}

// Fix group B, finding 9: a webhook token given as a flag is in argv, readable by every
// process of the machine (/proc/PID/cmdline, `ps`): one warning at start points at the variable.

/// The stderr of a `watch` started with `extra` flags and `vars`, stopped once ready.
fn watch_stderr(emu: &Emulator, extra: &[&str], vars: &[(&str, &str)]) -> String {
    let s = Scratch::new();
    let (dir, ready) = (s.path("out"), s.path("ready"));
    let mut env = env_for(emu);
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let mut args = vec![
        "watch",
        "--secret",
        "api-key",
        "--dir",
        dir.to_str().unwrap(),
        "--ready-file",
        ready.to_str().unwrap(),
    ];
    args.extend(extra);
    let mut w = Background::start(&env, &args);
    wait_for("the ready file", ms(10000), || ready.exists());
    w.stop_and_stderr()
}

#[test]
fn a_notify_url_flag_with_a_token_warns_that_argv_shows_it() {
    let emu = seeded();
    let token = "Zz1-w3bh00k-Qq2";
    let with_query = format!("http://127.0.0.1:9/hook?token={token}");
    let warned = |log: &str| log.matches("KVFETCH_NOTIFY_URL").count();

    let log = watch_stderr(&emu, &["--notify-url", &with_query], &[]);
    assert_eq!(warned(&log), 1, "one warning naming the variable: {log}");
    assert!(log.contains("argv"), "{log}");
    assert!(!log.contains(token), "the warning shows the token: {log}");

    // The variable, or a flag without a query, is no reason to warn.
    let log = watch_stderr(&emu, &[], &[("KVFETCH_NOTIFY_URL", &with_query)]);
    assert_eq!(warned(&log), 0, "{log}");
    let log = watch_stderr(&emu, &["--notify-url", "http://127.0.0.1:9/hook"], &[]);
    assert_eq!(warned(&log), 0, "{log}");
}
