//! Many secrets at once: `--all`/`--prefix`/`--tag` (the vault's paged list), templates and the
//! atomic directory layout, against the emulator.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;

fn tagged(value: &str, tags: &[(&str, &str)]) -> SecretInput {
    SecretInput {
        value: value.into(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A vault with a bit of everything a selection must sort out.
fn stocked() -> Emulator {
    let emu = Emulator::start().unwrap();
    emu.set_secret("app-db", "db-value-5d1e");
    emu.set_secret_with("app-api-key", tagged("key-value-77aa", &[("team", "pay")]));
    emu.set_secret("other", "other-value-0c3f");
    emu.set_secret("app-off", "off-value-9b21");
    emu.set_enabled("app-off", false);
    let old = SecretInput {
        value: "old-value-3e4d".into(),
        exp: Some(now() - 60),
        ..Default::default()
    };
    emu.set_secret_with("app-old", old);
    let early = SecretInput {
        value: "early-value-8f0a".into(),
        nbf: Some(now() + 3600),
        ..Default::default()
    };
    emu.set_secret_with("app-early", early);
    emu
}

fn gets(emu: &Emulator) -> BTreeMap<String, u64> {
    emu.counters().kv_requests
}

#[test]
fn prefix_chooses_strips_and_skips_with_one_line_each() {
    let emu = stocked();
    // Two items a page, and an empty page (with a nextLink) after each: 9 list requests.
    emu.set_list_paging(Some(2), true);
    let s = Scratch::new();
    let (dir, env_file) = (s.path("out"), s.path("app.env"));
    let vault = emu.vault_url();
    let r = run(
        &emu,
        &[
            "fetch",
            "--vault",
            &vault,
            "--prefix",
            "app-",
            "--dir",
            dir.to_str().unwrap(),
            "--env-file",
            env_file.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(s.entries("out"), ["api-key", "db"]);
    assert_eq!(read(&dir.join("db")), "db-value-5d1e");
    assert_eq!(mode(&dir.join("api-key")), 0o400);
    assert_eq!(
        read(&env_file),
        "APP_API_KEY='key-value-77aa'\nAPP_DB='db-value-5d1e'\n",
        "variables keep the vault's prefix (files do not)"
    );
    for why in ["disabled", "has expired", "not valid yet"] {
        assert_eq!(r.stderr.matches(why).count(), 1, "{why}: {}", r.stderr);
    }
    assert!(r.stderr.contains("secret=app-off"), "{}", r.stderr);
    // One GET per chosen secret; the skipped ones and `other` are never read.
    let got = gets(&emu);
    assert_eq!(got.get("app-db"), Some(&1));
    assert_eq!(got.get("app-api-key"), Some(&1));
    for never in ["app-off", "app-old", "app-early", "other"] {
        assert_eq!(got.get(never), None, "{never}");
    }
    // 6 secrets at 2 a page: 3 full pages, each followed by an empty one but the last.
    assert_eq!(emu.counters().kv_total_requests, 5 + 2, "{got:?}");
    assert_eq!(emu.counters().imds_token_requests, 1);
    assert_no_leak(&r, &["db-value-5d1e", "key-value-77aa", "off-value-9b21"]);
}

/// A selection that chooses nothing says so once, and writes what it chose: nothing.
#[test]
fn a_selection_that_chooses_nothing_says_so() {
    let emu = stocked();
    let s = Scratch::new();
    let dir = s.path("out");
    let vault = emu.vault_url();
    let r = run(
        &emu,
        &[
            "fetch",
            "--vault",
            &vault,
            "--prefix",
            "nothing-",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stderr
            .matches("the selection chose no secret from the vault's list")
            .count(),
        1,
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("listed=6"), "{}", r.stderr);
    assert!(s.entries("out").is_empty());
}

#[test]
fn tags_must_all_match_and_explicit_specs_win() {
    let emu = Emulator::start().unwrap();
    emu.set_secret_with(
        "a",
        tagged("a-value-11", &[("team", "pay"), ("env", "prod")]),
    );
    emu.set_secret_with(
        "b",
        tagged("b-value-22", &[("team", "pay"), ("env", "dev")]),
    );
    emu.set_secret_with(
        "c",
        tagged("c-value-33", &[("team", "pay"), ("env", "prod")]),
    );
    emu.set_secret("pinned", "pinned-value-44");
    let s = Scratch::new();
    let dir = s.path("out");
    let vault = emu.vault_url();
    let r = run(
        &emu,
        &[
            "fetch",
            "--vault",
            &vault,
            "--tag",
            "team=pay",
            "--tag",
            "env=prod",
            "--secret",
            "c=pinned",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(s.entries("out"), ["a", "c"]);
    assert_eq!(
        read(&dir.join("c")),
        "pinned-value-44",
        "the explicit spec wins"
    );
    assert!(
        r.stderr.contains("already writes that name"),
        "{}",
        r.stderr
    );
    assert_eq!(gets(&emu).get("c"), None);
    assert_eq!(gets(&emu).get("b"), None);
    // The same through the environment.
    let mut env = env_for(&emu);
    env.insert("KVFETCH_TAGS".into(), "team=pay,env=dev".into());
    let dir2 = s.path("out2");
    let r = run_with(
        &env,
        &["fetch", "--vault", &vault, "--dir", dir2.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(s.entries("out2"), ["b"]);
}

#[test]
fn all_notes_certificates_and_skip_managed_leaves_them_out() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("plain", "plain-value-5a");
    emu.set_certificate("tls", Certificate::RsaPemMixed);
    let s = Scratch::new();
    let vault = emu.vault_url();
    let all = |dir: &Path, extra: &[&str]| {
        let mut args = vec!["fetch", "--vault", &vault, "--all", "--dir"];
        args.push(dir.to_str().unwrap());
        args.extend(extra);
        run(&emu, &args)
    };
    let r = all(&s.path("a"), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(s.entries("a"), ["plain", "tls"]);
    assert!(
        r.stderr.contains("certificate-backed")
            && r.stderr.contains("content_type=application/x-pem-file"),
        "{}",
        r.stderr
    );
    let r = all(&s.path("b"), &["--skip-managed"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(s.entries("b"), ["plain"]);
    assert!(r.stderr.contains("--skip-managed"), "{}", r.stderr);
}

#[test]
fn listing_refused_is_exit_4_with_the_permission_to_grant() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "a-value-66");
    emu.set_list_denied(true);
    let s = Scratch::new();
    let dir = s.path("out");
    let vault = emu.vault_url();
    let args = [
        "fetch",
        "--vault",
        &vault,
        "--all",
        "--dir",
        dir.to_str().unwrap(),
    ];
    let r = run(&emu, &args);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains("the list of secrets of vault") && r.stderr.contains("ForbiddenByRbac"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("Key Vault Secrets User"), "{}", r.stderr);
    assert!(!dir.exists(), "nothing written");
    assert_eq!(emu.counters().kv_total_requests, 1, "403 on list is final");
    emu.set_access_policies(true);
    let r = run(&emu, &args);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains("--secret-permissions get list"),
        "{}",
        r.stderr
    );
}

#[test]
fn selection_needs_a_vault_and_valid_flags() {
    let emu = Emulator::start().unwrap();
    let s = Scratch::new();
    let dir = s.path("out");
    let d = dir.to_str().unwrap();
    let mut env = env_for(&emu);
    env.remove("KVFETCH_VAULT");
    for args in [
        vec!["fetch", "--all", "--dir", d],
        vec![
            "fetch",
            "--vault",
            "https://127.0.0.1:1",
            "--prefix",
            "a/b",
            "--dir",
            d,
        ],
        vec![
            "fetch",
            "--vault",
            "https://127.0.0.1:1",
            "--tag",
            "novalue",
            "--dir",
            d,
        ],
    ] {
        let r = run_with(&env, &args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    }
    assert_eq!(emu.counters().kv_total_requests, 0);
    assert_eq!(emu.counters().imds_token_requests, 0);
}

#[test]
fn watch_follows_secrets_added_removed_and_disabled() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("app-a", "a-value-1");
    let s = Scratch::new();
    let (dir, env_file, ready) = (s.path("out"), s.path("app.env"), s.path("ready"));
    let vault = emu.vault_url();
    let mut w = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--vault",
            &vault,
            "--prefix",
            "app-",
            "--refresh",
            "100ms",
            "--dir",
            dir.to_str().unwrap(),
            "--env-file",
            env_file.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    wait_for("the ready file", ms(5000), || ready.exists());
    assert_eq!(s.entries("out"), ["a"]);
    emu.set_secret("app-b", "b-value-2");
    w.wait("the added secret", ms(5000), || dir.join("b").exists());
    w.wait("the env file", ms(2000), || {
        read(&env_file) == "APP_A='a-value-1'\nAPP_B='b-value-2'\n"
    });
    emu.delete_secret("app-a");
    w.wait("the deleted secret's file to go", ms(5000), || {
        !dir.join("a").exists()
    });
    w.wait("the env file", ms(2000), || {
        read(&env_file) == "APP_B='b-value-2'\n"
    });
    emu.set_enabled("app-b", false);
    w.wait("the disabled secret's file to go", ms(5000), || {
        s.entries("out").is_empty()
    });
    w.wait("the env file", ms(2000), || read(&env_file).is_empty());
    let log = w.stop_and_stderr();
    assert_eq!(log.matches("secret added").count(), 1, "{log}");
    assert_eq!(log.matches("secret removed").count(), 2, "{log}");
    // The skip is logged once, however many refreshes see it.
    assert_eq!(log.matches("skipped a listed secret").count(), 1, "{log}");
}

#[test]
fn exec_puts_a_selection_in_the_environment() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("svc-token", "token-value-9c");
    emu.set_secret("svc-path", "/evil");
    let vault = emu.vault_url();
    let r = run(
        &emu,
        &[
            "exec",
            "--vault",
            &vault,
            "--prefix",
            "svc-",
            "--",
            "sh",
            "-c",
            "echo \"T=$SVC_TOKEN\"; echo \"P=$PATH\"; echo \"SP=$SVC_PATH\"",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("T=token-value-9c\n"), "{}", r.stdout);
    assert!(
        !r.stdout.lines().any(|l| l == "P=/evil"),
        "PATH stays the operator's: {}",
        r.stdout
    );
    // The vault's name lands under the prefix the operator chose, where it steers nothing.
    assert!(r.stdout.contains("SP=/evil\n"), "{}", r.stdout);
}

fn write_template(s: &Scratch, text: &str) -> String {
    let src = s.path("app.conf.tpl");
    std::fs::write(&src, text).unwrap();
    src.display().to_string()
}

#[test]
fn templates_render_values_verbatim_with_json_and_base64() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db", r#"{"user":"app","password":"p@ss 'w\"rd"}"#);
    emu.set_secret("api-key", "k3y-value\n");
    let s = Scratch::new();
    let src = write_template(
        &s,
        "user={{ secret \"db\" | json \"/user\" }}\npass={{ secret \"db\" | json \"/password\" }}\nkey64={{ secret \"api-key\" | base64 }}\nraw={{secret \"api-key\"}}|{{ \"{{\" }}\n",
    );
    let dest = s.path("app.conf");
    let vault = emu.vault_url();
    let flag = format!("{src}:{}:0440", dest.display());
    let r = run(&emu, &["fetch", "--vault", &vault, "--template", &flag]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        read(&dest),
        "user=app\npass=p@ss 'w\"rd\nkey64=azN5LXZhbHVlCg==\nraw=k3y-value\n|{{\n"
    );
    assert_eq!(mode(&dest), 0o440);
    assert_eq!(gets(&emu).get("db"), Some(&1), "one GET for two uses");
    assert_no_leak(&r, &["k3y-value", "p@ss"]);
    assert_eq!(
        s.entries(""),
        ["app.conf", "app.conf.tpl"],
        "no temp file left"
    );
}

#[test]
fn a_template_that_cannot_be_rendered_writes_nothing() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db", "db-value-1f");
    let s = Scratch::new();
    let (dir, dest) = (s.path("out"), s.path("app.conf"));
    let vault = emu.vault_url();
    let flag = |src: &str| format!("{src}:{}", dest.display());
    // A secret the vault does not have: exit 5, and neither output exists.
    let src = write_template(&s, "x={{ secret \"nope\" }}\n");
    let go = |template: &str| {
        let d = dir.display().to_string();
        let args = [
            "fetch",
            "--vault",
            &vault,
            "--secret",
            "db",
            "--dir",
            &d,
            "--template",
            template,
        ];
        run(&emu, &args)
    };
    let r = go(&flag(&src));
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(!dest.exists() && !dir.join("db").exists());
    // A syntax error: exit 2 before any request.
    emu.reset_counters();
    let src = write_template(&s, "a\nb={{ secret \"db\" | upper }}\n");
    let r = go(&flag(&src));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("line 2, column 3"), "{}", r.stderr);
    assert_eq!(emu.counters().kv_total_requests, 0);
    // A JSON pointer the value lacks: exit 5, nothing written.
    let src = write_template(&s, "{{ secret \"db\" | json \"/x\" }}");
    let r = go(&flag(&src));
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(!dest.exists() && !dir.join("db").exists());
    assert_no_leak(&r, &["db-value-1f"]);
    // DEST may not be the template itself.
    let r = go(&format!("{src}:{src}"));
    assert_eq!(r.code, 2, "{}", r.stderr);
}

/// Accept one POST on `listener` and return its request text.
fn accept_post(listener: &std::net::TcpListener) -> String {
    use std::io::{Read, Write};
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(ms(5000))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = conn.read(&mut chunk) {
        buf.extend_from_slice(&chunk[..n]);
        if buf.ends_with(b"}") {
            break;
        }
    }
    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn watch_rerenders_a_template_and_names_it_in_the_notification() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db", "one-7b");
    emu.set_secret("other", "x");
    let s = Scratch::new();
    let src = write_template(&s, "password={{ secret \"db\" }}\n");
    let (dest, ready) = (s.path("app.conf"), s.path("ready"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/reload", listener.local_addr().unwrap());
    let vault = emu.vault_url();
    let flag = format!("{src}:{}", dest.display());
    let mut w = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--vault",
            &vault,
            "--secret",
            "other",
            "--dir",
            s.path("out").to_str().unwrap(),
            "--template",
            &flag,
            "--refresh",
            "100ms",
            "--ready-file",
            ready.to_str().unwrap(),
            "--notify-url",
            &url,
        ],
    );
    wait_for("the ready file", ms(5000), || ready.exists());
    assert_eq!(read(&dest), "password=one-7b\n");
    emu.set_secret("db", "two-8c");
    let post = accept_post(&listener);
    let expected = format!("{{\"changed\":[{:?}]}}", dest.display().to_string());
    assert!(post.ends_with(&expected), "{post}");
    assert_eq!(read(&dest), "password=two-8c\n");
    let log = w.stop_and_stderr();
    assert!(!log.contains("two-8c"), "{log}");
}

/// The generation `..data` points at.
fn generation(dir: &Path) -> Option<String> {
    Some(
        std::fs::read_link(dir.join("..data"))
            .ok()?
            .to_str()?
            .to_string(),
    )
}

#[test]
fn atomic_layout_links_every_name_through_data() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "a-value-1");
    emu.set_secret("b", "b-value-1");
    let s = Scratch::new();
    let dir = s.path("out");
    let vault = emu.vault_url();
    let fetch = |extra: &[&str]| {
        let mut args = vec![
            "fetch",
            "--vault",
            &vault,
            "--secret",
            "a",
            "--dir-layout",
            "atomic",
            "--dir",
        ];
        args.push(dir.to_str().unwrap());
        args.extend(extra);
        run(&emu, &args)
    };
    let r = fetch(&["--secret", "b", "--file-mode", "0440"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let first = generation(&dir).unwrap();
    assert!(first.starts_with("..20") && first.len() == 31, "{first}");
    let mut names = s.entries("out");
    names.sort();
    assert_eq!(
        names,
        [first.clone(), "..data".into(), "a".into(), "b".into()]
    );
    assert_eq!(
        std::fs::read_link(dir.join("a")).unwrap(),
        Path::new("..data/a")
    );
    assert_eq!(read(&dir.join("b")), "b-value-1");
    assert_eq!(mode(&dir.join(&first).join("a")), 0o440);
    assert_eq!(mode(&dir.join(&first)), 0o750);
    // A second run without b: a new generation, b's link gone, the old generation removed.
    let r = fetch(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let second = generation(&dir).unwrap();
    assert_ne!(first, second);
    let mut names = s.entries("out");
    names.sort();
    assert_eq!(names, [second, "..data".into(), "a".into()]);
}

#[test]
fn atomic_refreshes_never_show_files_of_two_generations() {
    let emu = Emulator::start().unwrap();
    // Two files from one secret: every fetch gives both the same generation number.
    emu.set_secret("pair", r#"{"crt":"0","key":"0"}"#);
    let s = Scratch::new();
    let (dir, ready) = (s.path("out"), s.path("ready"));
    let vault = emu.vault_url();
    let mut w = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--vault",
            &vault,
            "--secret",
            "tls.crt=pair?json=/crt",
            "--secret",
            "tls.key=pair?json=/key",
            "--dir-layout",
            "atomic",
            "--dir",
            dir.to_str().unwrap(),
            "--refresh",
            "20ms",
            "--ready-file",
            ready.to_str().unwrap(),
            "--cleanup",
        ],
    );
    wait_for("the ready file", ms(5000), || ready.exists());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut reads, mut seen) = (0u64, std::collections::BTreeSet::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // A reader that resolves ..data once sees one generation.
                let Some(g) = generation(&dir) else { continue };
                let (Ok(c), Ok(k)) = (
                    std::fs::read_to_string(dir.join(&g).join("tls.crt")),
                    std::fs::read_to_string(dir.join(&g).join("tls.key")),
                ) else {
                    continue; // pruned between the two reads: read again
                };
                assert_eq!(c, k, "generation {g} mixes two values");
                seen.insert(c);
                reads += 1;
            }
            (reads, seen.len())
        })
    };
    for n in 1..=15 {
        emu.set_secret("pair", &format!(r#"{{"crt":"{n}","key":"{n}"}}"#));
        let want = n.to_string();
        w.wait("the rotation", ms(5000), || {
            read(&dir.join("tls.key")) == want
        });
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (reads, values) = reader.join().unwrap();
    assert!(reads > 15 && values > 1, "{reads} reads, {values} values");
    let generations = s
        .entries("out")
        .into_iter()
        .filter(|n| n.starts_with("..20"))
        .count();
    assert_eq!(generations, 1, "old generations are removed");
    w.signal(SIGTERM);
    assert_eq!(w.exit_within(ms(3000)), Some(0));
    assert!(
        !dir.exists() || s.entries("out").is_empty(),
        "{:?}",
        s.entries("out")
    );
}

#[test]
fn doctor_reports_what_a_selection_would_choose() {
    let emu = stocked();
    let vault = emu.vault_url();
    let s = Scratch::new();
    let dir = s.path("out");
    let args = [
        "doctor",
        "--vault",
        &vault,
        "--prefix",
        "app-",
        "--dir",
        dir.to_str().unwrap(),
    ];
    let r = run(&emu, &args);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert_eq!(r.code, 0, "{all}");
    assert!(
        all.contains("the vault lists 6 secrets; the selection chooses 2"),
        "{all}"
    );
    assert!(!dir.exists(), "the doctor writes nothing");
    emu.set_list_denied(true);
    let r = run(&emu, &args);
    assert_eq!(r.code, 4, "{}{}", r.stdout, r.stderr);
}

/// A selection's vault is held to the loopback rule like any spec's: an identity endpoint that
/// is not an IP literal on loopback (`localhost` here, which does reach the emulator should the
/// rule fail) gets no token sent to a loopback vault.
#[test]
fn a_selection_on_a_loopback_vault_needs_a_loopback_identity() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "a-value-0d");
    let mut env = env_for(&emu);
    let endpoint = emu.identity_endpoint().replace("127.0.0.1", "localhost");
    env.insert("IDENTITY_ENDPOINT".into(), endpoint);
    env.insert("IDENTITY_HEADER".into(), emu.identity_header().into());
    let s = Scratch::new();
    let dir = s.path("out");
    let vault = emu.vault_url();
    let r = run_with(
        &env,
        &[
            "fetch",
            "--vault",
            &vault,
            "--all",
            "--dir",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("is on loopback but the identity endpoint is not"),
        "{}",
        r.stderr
    );
    let c = emu.counters();
    assert_eq!((c.app_service_token_requests, c.kv_total_requests), (0, 0));
}

#[test]
fn supervised_exec_restarts_when_a_selected_secret_is_added() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("svc-a", "a-value-31");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "echo \"A=$SVC_A B=${{SVC_B:-none}}\" >> {}; while :; do sleep 0.05; done",
        log.display()
    );
    let vault = emu.vault_url();
    let mut sup = supervised(
        &env_for(&emu),
        &["--vault", &vault, "--prefix", "svc-", "--grace", "1s"],
        &script,
    );
    sup.wait("the first child", ms(5000), || {
        read(&log).contains("A=a-value-31 B=none")
    });
    emu.set_secret("svc-b", "b-value-32");
    sup.wait("the restarted child", ms(5000), || {
        read(&log).contains("A=a-value-31 B=b-value-32")
    });
    let stderr = sup.stop_and_stderr();
    assert!(stderr.contains("secret added"), "{stderr}");
}

// Found by an adversarial review of the first version: each test failed then.

#[test]
fn a_vault_writer_cannot_steer_the_app_through_a_selection() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("pythonwarnings", "all:0:antigravity.x:0:0");
    emu.set_secret("browser", "/bin/sh -c 'id' #%s");
    emu.set_secret("azure-authority-host", "https://attacker.example");
    emu.set_secret("openssl-conf", "/run/secrets/evil");
    emu.set_secret("home", "/run/secrets");
    emu.set_secret("plain", "plain-value-2d");
    let vault = emu.vault_url();
    let script = "echo \"PW=$PYTHONWARNINGS BR=$BROWSER AAH=$AZURE_AUTHORITY_HOST OC=$OPENSSL_CONF P=$PLAIN\"";
    let r = run(
        &emu,
        &[
            "exec",
            "--vault",
            &vault,
            "--all",
            "--allow-env",
            "PLAIN",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // AZURE_AUTHORITY_HOST keeps the value the environment gave (the emulator's).
    let expected = format!("PW= BR= AAH={} OC= P=plain-value-2d\n", emu.authority_url());
    assert_eq!(r.stdout, expected);
    assert_eq!(
        r.stderr.matches("a vault writer could use").count(),
        5,
        "{}",
        r.stderr
    );
}

/// Found in review: images read `X_FILE` as the path of a file holding X, so a listed secret
/// named `app-db-password-file` would let a vault writer point the app at any file it can read
/// (a service account token) and have it used as the password.
#[test]
fn a_vault_writer_cannot_point_a_file_variable_at_a_path() {
    let emu = Emulator::start().unwrap();
    let token = "/var/run/secrets/kubernetes.io/serviceaccount/token";
    emu.set_secret("app-db-password-file", token);
    emu.set_secret("app-plain", "plain-value-3e");
    let vault = emu.vault_url();
    let script = "echo \"F=$APP_DB_PASSWORD_FILE P=$APP_PLAIN\"";
    let args = |allow: &[&'static str]| {
        let mut a = vec![
            "exec",
            "--vault",
            &vault,
            "--prefix",
            "app-",
            "--env-prefix",
            "APP_",
        ];
        a.extend_from_slice(allow);
        a.extend(["--", "sh", "-c", script]);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let a = args(&[]);
    let r = run(&emu, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "F= P=plain-value-3e\n");
    assert!(
        r.stderr.contains("APP_DB_PASSWORD_FILE") && r.stderr.contains("--allow-env"),
        "{}",
        r.stderr
    );
    // The operator may still allow it by name.
    let a = args(&["--allow-env", "APP_DB_PASSWORD_FILE"]);
    let r = run(&emu, &a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, format!("F={token} P=plain-value-3e\n"));
}

#[test]
fn a_value_that_cannot_be_a_variable_skips_that_secret_only() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("app-a", "a-value-71");
    emu.set_secret("app-evil", "x${y}");
    let s = Scratch::new();
    let (dir, env_file) = (s.path("out"), s.path("app.env"));
    let vault = emu.vault_url();
    let r = run(
        &emu,
        &[
            "fetch",
            "--vault",
            &vault,
            "--prefix",
            "app-",
            "--dir",
            dir.to_str().unwrap(),
            "--env-file",
            env_file.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(read(&env_file), "APP_A='a-value-71'\n");
    assert_eq!(s.entries("out"), ["a"]);
    assert!(
        r.stderr
            .contains("skipped a listed secret: its value holds"),
        "{}",
        r.stderr
    );
    emu.set_secret("app-evil", "nul\u{0}byte");
    let r = run(
        &emu,
        &[
            "exec",
            "--vault",
            &vault,
            "--prefix",
            "app-",
            "--",
            "sh",
            "-c",
            "echo started $APP_A",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "started a-value-71\n");
}

#[test]
fn a_selected_name_never_lands_on_another_output() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "a-value-5e");
    let s = Scratch::new();
    let dir = s.path("out");
    std::fs::create_dir_all(&dir).unwrap();
    let (ready, env_file) = (dir.join("ready"), dir.join("appenv"));
    let vault = emu.vault_url();
    let mut w = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--vault",
            &vault,
            "--all",
            "--env-prefix",
            "XY_",
            "--dir",
            dir.to_str().unwrap(),
            "--env-file",
            env_file.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
            "--refresh",
            "50ms",
        ],
    );
    w.wait("ready", ms(5000), || ready.exists());
    emu.set_secret("ready", "vault-writer-ready");
    emu.set_secret("appenv", "vault-writer-env");
    emu.set_secret("b", "b-value-5f");
    w.wait("b", ms(5000), || dir.join("b").exists());
    emu.delete_secret("ready");
    emu.delete_secret("appenv");
    emu.delete_secret("b");
    w.wait("b to go", ms(5000), || !dir.join("b").exists());
    assert_eq!(read(&ready), "ready\n");
    assert_eq!(read(&env_file), "XY_A='a-value-5e'\n");
    let log = w.stop_and_stderr();
    assert!(!log.contains("restored"), "{log}");
    assert!(
        log.contains("is another output or input of kvfetch"),
        "{log}"
    );
}

#[test]
fn atomic_refuses_what_it_cannot_flip_before_writing_anything() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "a-value-1");
    emu.set_secret("b", "b-value-1");
    let s = Scratch::new();
    let dir = s.path("out");
    let env_file = s.path("app.env");
    let vault = emu.vault_url();
    let d = dir.to_str().unwrap();
    let e = env_file.to_str().unwrap();
    let generations = || {
        s.entries("out")
            .iter()
            .filter(|n| n.starts_with("..20"))
            .count()
    };
    // A directory where ..data goes: exit 6, and the env file is not written either.
    std::fs::create_dir_all(dir.join("..data")).unwrap();
    let args = [
        "fetch",
        "--vault",
        &vault,
        "--secret",
        "a",
        "--dir-layout",
        "atomic",
        "--dir",
        d,
        "--env-file",
        e,
    ];
    let r = run(&emu, &args);
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        !env_file.exists() && generations() == 0,
        "{:?}",
        s.entries("out")
    );
    std::fs::remove_dir(dir.join("..data")).unwrap();
    // A directory at a selected name: exit 6 each time, no generation left behind.
    std::fs::create_dir_all(dir.join("b")).unwrap();
    for _ in 0..3 {
        let r = run(
            &emu,
            &[
                "fetch",
                "--vault",
                &vault,
                "--all",
                "--dir-layout",
                "atomic",
                "--dir",
                d,
            ],
        );
        assert_eq!(r.code, 6, "{}", r.stderr);
    }
    assert_eq!(generations(), 0, "{:?}", s.entries("out"));
    // The alias ..data belongs to the layout.
    let r = run(
        &emu,
        &[
            "fetch",
            "--vault",
            &vault,
            "--secret",
            "..data=a",
            "--dir-layout",
            "atomic",
            "--dir",
            d,
        ],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn a_template_using_a_secret_twice_counts_one_change() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db", r#"{"u":"a","p":"b"}"#);
    let s = Scratch::new();
    let src = write_template(
        &s,
        "u={{ secret \"db\" | json \"/u\" }} p={{ secret \"db\" | json \"/p\" }}\n",
    );
    let (dest, ready) = (s.path("t.conf"), s.path("ready"));
    let vault = emu.vault_url();
    let flag = format!("{src}:{}", dest.display());
    let mut w = Background::start(
        &env_for(&emu),
        &[
            "watch",
            "--vault",
            &vault,
            "--secret",
            "db",
            "--dir",
            s.path("out").to_str().unwrap(),
            "--template",
            &flag,
            "--refresh",
            "100ms",
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    w.wait("ready", ms(5000), || ready.exists());
    emu.set_secret("db", r#"{"u":"c","p":"d"}"#);
    w.wait("the render", ms(5000), || read(&dest) == "u=c p=d\n");
    let log = w.stop_and_stderr();
    assert_eq!(log.matches("secret changed").count(), 1, "{log}");
}
