//! The production defaults, as deployed: every other test points kvfetch's identity endpoint at
//! the emulator and names the vault by a loopback URL, so the configuration users run — IMDS at
//! `169.254.169.254`, a vault given by name (`myvault` → `https://myvault.vault.azure.net`) — is
//! proven here. Each test runs again in a network namespace and a mount namespace of its own
//! ([`rerun_isolated`]: it checks there is only `lo` and no route out before anything starts),
//! adds `169.254.169.254/32` to `lo`, binds the emulator to `169.254.169.254:80` and
//! `127.0.0.1:443` with a certificate for `*.vault.azure.net`, and maps
//! `myvault.vault.azure.net` to loopback in a private `/etc/hosts`. kvfetch then runs with the
//! deployment example's own command line and environment, plus only `KVFETCH_CA_FILE` (the
//! emulator's CA): no endpoint override at all. These tests need root (CI runs as root); without
//! it they print `SKIPPED:`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use kvfetch_emulator::Config;

/// `unshare` flags for a test's own network and mount namespaces.
const ISOLATED: &[&str] = &["-n", "-m", "--propagation", "private"];
const IMDS_ADDR: &str = "169.254.169.254:80";
const DB: &str = "Gq7-db-pass-31d";
const API: &str = "Gq7-api-key-84a";
const CERT: &str = "Gq7-cert-55c";
const SMTP: &str = "Gq7-smtp-06e";

/// A test that runs again in namespaces of its own ([`rerun_isolated`]) and does its work there.
macro_rules! scenario {
    (fn $name:ident() $body:block) => {
        #[test]
        fn $name() {
            if rerun_isolated(stringify!($name), ISOLATED) {
                return;
            }
            $body
        }
    };
}

fn sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Give `lo` the IMDS address: from now on `169.254.169.254` answers, on loopback only.
fn imds_address_appears() {
    sh("ip addr add 169.254.169.254/32 dev lo");
}

/// One container group's machine, inside the test's namespaces: `/etc/hosts` that names the
/// vault, and a tmpfs volume (an `emptyDir`, mode 0777) that the containers share.
struct Group {
    s: Scratch,
    vol: PathBuf,
}

impl Group {
    fn new() -> Group {
        let s = Scratch::new();
        let hosts = s.path("hosts");
        std::fs::write(
            &hosts,
            "127.0.0.1 localhost\n127.0.0.1 myvault.vault.azure.net\n",
        )
        .unwrap();
        sh(&format!("mount --bind {} /etc/hosts", hosts.display()));
        let vol = s.path("vol");
        std::fs::create_dir(&vol).unwrap();
        sh(&format!(
            "mount -t tmpfs -o mode=0777,size=1m tmpfs {}",
            vol.display()
        ));
        Group { s, vol }
    }

    /// The example's kvfetch command line with the volume's mount path replaced by the volume.
    fn argv(&self, d: &Deployment) -> Vec<String> {
        let vol = self.vol.display().to_string();
        d.argv
            .iter()
            .map(
                |a| match d.mounts.iter().find(|m| a.starts_with(m.as_str())) {
                    Some(m) => format!("{vol}{}", &a[m.len()..]),
                    None => a.clone(),
                },
            )
            .collect()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.vol.join(name)
    }

    /// Run `script` as another container would: a mount namespace of its own in which the
    /// volume is mounted read-only, as `uid`:`gid`. Returns (exit code, stdout + stderr).
    fn container(&self, uid: u32, gid: u32, script: &str) -> (i32, String) {
        let env = std::collections::HashMap::from([
            ("PATH".to_string(), std::env::var("PATH").unwrap()),
            ("VOL".to_string(), self.vol.display().to_string()),
            ("SCRIPT".to_string(), script.to_string()),
        ]);
        let wrapper = format!(
            "mount --bind \"$VOL\" \"$VOL\" && mount -o remount,bind,ro \"$VOL\" && \
             exec setpriv --reuid {uid} --regid {gid} --clear-groups sh -c \"$SCRIPT\""
        );
        let out = in_private_mounts(&wrapper, &env).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.vol).status();
    }
}

/// The emulator as the platform's endpoints: identity at `identity_addr` (IMDS, or Container
/// Apps' `localhost:42356`), the vault at `127.0.0.1:443` for `*.vault.azure.net`. With `late`,
/// the identity side binds only once its address exists.
fn platform(identity_addr: &str, late: bool, system_identity: bool) -> Emulator {
    let emu = Emulator::with_config(Config {
        identity_addr: identity_addr.parse().unwrap(),
        vault_addr: "127.0.0.1:443".parse().unwrap(),
        vault_names: vec!["*.vault.azure.net".into()],
        identity_start_delay: if late { ms(1) } else { ms(0) },
        system_identity,
        ..Config::default()
    })
    .unwrap();
    for (name, value) in [
        ("db-password", DB),
        ("api-key", API),
        ("tls-cert", CERT),
        ("smtp-password", SMTP),
    ] {
        emu.set_secret(name, value);
    }
    emu
}

/// The example's environment with the two things the platform and the image provide: PATH,
/// and the CA kvfetch trusts (here the emulator's; in production the bundled roots).
fn deployed_env(d: &Deployment, emu: &Emulator) -> std::collections::HashMap<String, String> {
    let mut env = d.env.clone();
    env.insert("PATH".into(), std::env::var("PATH").unwrap());
    env.insert(
        "KVFETCH_CA_FILE".into(),
        emu.ca_file().display().to_string(),
    );
    if let Some(id) = d.env.get("AZURE_CLIENT_ID") {
        let mut identity = Identity::user(id);
        identity.client_id = id.clone();
        emu.add_user_identity(identity);
    }
    env
}

/// `kvfetch ARGV` as `uid` with exactly `env`, stderr drained.
fn start_as(
    uid: u32,
    argv: &[String],
    env: &std::collections::HashMap<String, String>,
) -> Background {
    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut cmd = as_user(uid, &[], &args, env);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    Background::new(cmd.spawn().unwrap())
}

fn assert_file(path: &Path, value: &str, mode_bits: u32, uid: u32) {
    assert_eq!(read(path), value, "{}", path.display());
    assert_eq!(mode(path), mode_bits, "{}", path.display());
    assert_eq!(
        std::fs::metadata(path).unwrap().uid(),
        uid,
        "{}",
        path.display()
    );
}

fn assert_no_value(stderr: &str) {
    for v in [DB, API, CERT, SMTP] {
        assert!(!stderr.contains(v), "a value in the log: {stderr}");
    }
}

scenario! {
    fn aci_init_container_fetches_by_vault_name_through_the_default_imds() {
        let g = Group::new();
        imds_address_appears();
        // Only the user-assigned identity the example names by AZURE_CLIENT_ID: a request without
        // its client_id is refused.
        let emu = platform(IMDS_ADDR, false, false);
        let d = example("aci-init-container.yaml");
        assert!(d.env.contains_key("AZURE_CLIENT_ID"));
        let mut kv = start_as(d.uid, &g.argv(&d), &deployed_env(&d, &emu));
        let code = kv.exit_within(ms(30000));
        let stderr = kv.stop_and_stderr();
        assert_eq!(code, Some(0), "{stderr}");
        assert_no_value(&stderr);
        assert_file(&g.file("db-password"), DB, 0o400, d.uid);
        assert_file(&g.file("API_KEY"), API, 0o400, d.uid);
        assert_eq!(
            read(&g.file("app.env")),
            format!("DB_PASSWORD='{DB}'\nAPI_KEY='{API}'\n")
        );
        let c = emu.counters();
        assert_eq!(c.imds_token_requests, 1, "one token for the run");
        assert_eq!(c.kv_requests.get("db-password"), Some(&1));
        assert_eq!(c.kv_requests.get("api-key"), Some(&1));
        // The app container (same uid, the volume read-only) reads them and cannot change them.
        let (code, out) = g.container(
            d.uid,
            d.uid,
            "cat \"$VOL/db-password\"; echo; cat \"$VOL/API_KEY\"; echo; echo x > \"$VOL/new\" || echo refused",
        );
        assert_eq!(code, 0, "{out}");
        assert!(out.starts_with(&format!("{DB}\n{API}\n")), "{out}");
        assert!(
            out.contains("Read-only file system") && out.contains("\nrefused\n"),
            "{out}"
        );
        // Another uid cannot read them.
        let (code, out) = g.container(1000, 1000, "cat \"$VOL/db-password\"");
        assert_ne!(code, 0, "{out}");
        assert!(
            out.contains("Permission denied") && !out.contains(DB),
            "{out}"
        );
    }
}

scenario! {
    fn an_init_container_as_root_shares_files_with_the_apps_group() {
        let g = Group::new();
        imds_address_appears();
        let emu = platform(IMDS_ADDR, false, false);
        let d = example("aci-init-container.yaml");
        // What the example's comment says to do for an app of another uid.
        let mut argv = g.argv(&d);
        argv.extend(["--owner", "1000:1000", "--file-mode", "0440"].map(String::from));
        let mut kv = start_as(0, &argv, &deployed_env(&d, &emu));
        let code = kv.exit_within(ms(30000));
        let stderr = kv.stop_and_stderr();
        assert_eq!(code, Some(0), "{stderr}");
        assert_file(&g.file("db-password"), DB, 0o440, 1000);
        assert_eq!(
            std::fs::metadata(g.file("db-password")).unwrap().gid(),
            1000
        );
        // A member of group 1000 with a uid of its own reads them; a stranger does not.
        let (code, out) = g.container(1001, 1000, "cat \"$VOL/db-password\"");
        assert_eq!((code, out.as_str()), (0, DB));
        let (code, out) = g.container(1002, 1002, "cat \"$VOL/db-password\"");
        assert_ne!(code, 0, "{out}");
        assert!(!out.contains(DB), "{out}");
    }
}

scenario! {
    fn aci_identity_endpoint_that_appears_late_is_waited_for() {
        let g = Group::new();
        // 169.254.169.254 is not there yet: the emulator binds it once it is.
        let emu = platform(IMDS_ADDR, true, false);
        let d = example("aci-init-container.yaml");
        let mut kv = start_as(d.uid, &g.argv(&d), &deployed_env(&d, &emu));
        let mut line = String::new();
        kv.wait("the progress line", ms(15000), || {
            let log = kv.stderr();
            line = log
                .lines()
                .find(|l| l.contains("waiting for the identity endpoint"))
                .unwrap_or_default()
                .to_string();
            !line.is_empty()
        });
        // The operator sees what is awaited and what chose it: the default, not a variable.
        assert!(line.contains("endpoint=http://169.254.169.254"), "{line}");
        assert!(line.contains("chosen_by=\"default (IMDS)\""), "{line}");
        assert!(g.s.entries("vol").is_empty(), "nothing written yet");
        assert_eq!(kv.exit_within(ms(1)), None, "still waiting");
        imds_address_appears();
        let code = kv.exit_within(ms(30000));
        let stderr = kv.stop_and_stderr();
        assert_eq!(code, Some(0), "{stderr}");
        assert_file(&g.file("db-password"), DB, 0o400, d.uid);
        assert_eq!(emu.counters().imds_token_requests, 1, "{stderr}");
    }
}

scenario! {
    fn aci_sidecar_is_ready_rotates_notifies_and_stops_on_sigterm() {
        let g = Group::new();
        imds_address_appears();
        let emu = platform(IMDS_ADDR, false, true);
        let d = example("aci-sidecar.yaml");
        let argv = g.argv(&d);
        let flag = |name: &str| {
            let i = argv.iter().position(|a| a == name).unwrap();
            argv[i + 1].clone()
        };
        // The app's reload endpoint, at the address the example names.
        let notify = flag("--notify-url");
        let app_addr = notify
            .strip_prefix("http://")
            .and_then(|r| r.split('/').next())
            .unwrap();
        let listener = std::net::TcpListener::bind(app_addr).unwrap();
        // The app container starts at once and waits for the ready file, as the example's does.
        let app_out = g.s.path("app-saw");
        let script = format!(
            "while [ ! -f {vol}/.ready ]; do sleep 0.05; done; cat {vol}/db-password > {out}",
            vol = g.vol.display(),
            out = app_out.display()
        );
        // Killed when dropped, so a failing test leaves no app waiting.
        let mut app = Background::new(Command::new("sh").args(["-c", &script]).spawn().unwrap());
        let mut kv = start_as(d.uid, &argv, &deployed_env(&d, &emu));
        let health = flag("--health-listen");
        kv.wait("the health listener", ms(15000), || {
            http_get(&health, "/readyz").0 == 200
        });
        assert_eq!(app.exit_within(ms(10000)), Some(0), "the app started");
        assert_eq!(read(&app_out), DB, "the app saw the secret once ready");
        assert_file(&g.file("tls-cert"), CERT, 0o400, d.uid);
        // A rotation: the new value is written and the app is told which secret changed.
        let rotated = "Gq7-db-rotated-e2f";
        emu.set_secret("db-password", rotated);
        kv.signal(SIGHUP);
        let post = accept_post(&listener, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let path = notify.split_once(app_addr).unwrap().1;
        assert!(post.starts_with(&format!("POST {path} ")), "{post}");
        assert!(post.ends_with(r#"{"changed":["db-password"]}"#), "{post}");
        assert!(!post.contains(rotated), "names only");
        assert_eq!(read(&g.file("db-password")), rotated);
        assert_eq!(emu.counters().imds_token_requests, 1, "the token is kept");
        // The runtime stops the group: SIGTERM, exit 0, files kept.
        kv.signal(SIGTERM);
        assert_eq!(kv.exit_within(ms(5000)), Some(0), "{}", kv.stderr());
        assert_no_value(&kv.stderr());
        assert!(!kv.stderr().contains(rotated));
        assert_eq!(read(&g.file("db-password")), rotated);
    }
}

scenario! {
    fn k8s_native_sidecar_is_ready_only_once_its_files_exist() {
        let g = Group::new();
        imds_address_appears();
        let emu = platform(IMDS_ADDR, false, false);
        emu.set_kv_delay(ms(1500)); // a slow vault: the probe sees "not ready" first
        let d = example("k8s-native-sidecar.yaml");
        let argv = g.argv(&d);
        let listen = &argv[argv.iter().position(|a| a == "--health-listen").unwrap() + 1];
        let probe = listen.replace("0.0.0.0", "127.0.0.1");
        let mut kv = start_as(d.uid, &argv, &deployed_env(&d, &emu));
        // The kubelet's startupProbe: the app container starts only after a 200.
        let mut answers = Vec::new();
        kv.wait("/readyz 200", ms(20000), || {
            let code = http_get(&probe, "/readyz").0;
            if code == 200 {
                // Ready means written: both files and the env file are there now.
                assert_eq!(read(&g.file("db-password")), DB);
                assert_eq!(read(&g.file("API_KEY")), API);
                assert!(read(&g.file("app.env")).contains(&format!("API_KEY='{API}'\n")));
            } else {
                std::thread::sleep(ms(50));
            }
            answers.push(code);
            code == 200
        });
        assert!(
            answers.contains(&503),
            "not ready while fetching: {answers:?}"
        );
        let (code, out) = g.container(d.uid, d.uid, "cat \"$VOL/db-password\"");
        assert_eq!((code, out.as_str()), (0, DB));
        kv.signal(SIGTERM);
        assert_eq!(kv.exit_within(ms(5000)), Some(0), "{}", kv.stderr());
        let stderr = kv.stderr();
        assert_no_value(&stderr);
        // --log-format json: every line is a JSON object.
        for l in stderr.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            assert!(v.get("msg").is_some() && v.get("level").is_some(), "{l}");
        }
    }
}

/// The exec example's command line with its app replaced by `sh -c SCRIPT`.
fn exec_argv(d: &Deployment, extra: &[&str], script: &str) -> Vec<String> {
    let dd = d.argv.iter().position(|a| a == "--").unwrap();
    let mut argv: Vec<String> = d.argv[..dd].to_vec();
    argv.extend(extra.iter().map(|s| s.to_string()));
    argv.extend(["--", "sh", "-c", script].map(String::from));
    argv
}

scenario! {
    fn the_entrypoint_wrapper_as_pid_1_passes_signals_and_exit_status() {
        let g = Group::new();
        imds_address_appears();
        let emu = platform(IMDS_ADDR, false, true);
        let d = example("aci-exec-wrapper.yaml");
        // The variables hold Key Vault references by URL and by vault name, as App Service spells them.
        assert!(d.env["API_KEY"].contains("myvault.vault.azure.net"));
        assert!(d.env["SMTP_PASSWORD"].contains("VaultName=myvault"));
        let env = deployed_env(&d, &emu);
        let app_env = g.s.path("app-env");
        let script = format!(
            // The trap first: the test sends SIGTERM once the file is there, and a PID 1 without a
            // handler never sees it (the kernel drops it).
            "trap 'exit 42' TERM; env > {e}.tmp; echo \"pid=$$\" >> {e}.tmp; mv {e}.tmp {e}; while :; do sleep 0.05; done",
            e = app_env.display()
        );
        // Plain exec: the app itself becomes PID 1. Supervised (--refresh): kvfetch stays PID 1 and
        // forwards the runtime's SIGTERM to the app, then exits with the app's status.
        for (extra, pid1) in [(&[][..], "sh"), (&["--refresh", "1h"][..], "kvfetch")] {
            let _ = std::fs::remove_file(&app_env);
            let argv = exec_argv(&d, extra, &script);
            let args: Vec<&str> = argv.iter().map(String::as_str).collect();
            let (mut unshare, inner) = as_pid_1_with(&["--mount-proc"], &env, &args).expect("root");
            unshare.wait("the app's start", ms(30000), || app_env.exists());
            let seen = read(&app_env);
            for line in [
                format!("DB_PASSWORD={DB}"),
                format!("API_KEY={API}"),
                format!("SMTP_PASSWORD={SMTP}"),
            ] {
                assert!(seen.lines().any(|l| l == line), "{extra:?}: {line}");
            }
            let app_is_pid_1 = seen.lines().any(|l| l == "pid=1");
            assert_eq!(app_is_pid_1, pid1 == "sh", "{extra:?}: {seen}");
            let comm = std::fs::read_to_string(format!("/proc/{inner}/comm")).unwrap();
            assert_eq!(comm.trim(), pid1, "{extra:?}");
            kill(inner, SIGTERM);
            assert_eq!(
                unshare.exit_within(ms(5000)),
                Some(42),
                "{extra:?}: {}",
                unshare.stderr()
            );
            assert_no_value(&unshare.stderr());
        }
        assert_eq!(emu.counters().imds_token_requests, 2, "one per run");
    }
}

scenario! {
    fn container_apps_identity_variables_are_used_and_imds_is_never_asked() {
        let g = Group::new();
        imds_address_appears();
        // Container Apps' identity endpoint, where the platform puts it; and an IMDS that must stay
        // unasked (a wrong fallback would land on its counters).
        let apps = platform("127.0.0.1:42356", false, true);
        let imds = Emulator::with_config(Config {
            identity_addr: IMDS_ADDR.parse().unwrap(),
            ..Config::default()
        })
        .unwrap();
        let env = std::collections::HashMap::from([
            ("PATH".to_string(), std::env::var("PATH").unwrap()),
            (
                "KVFETCH_CA_FILE".to_string(),
                apps.ca_file().display().to_string(),
            ),
            (
                "IDENTITY_ENDPOINT".to_string(),
                "http://localhost:42356/msi/token".to_string(),
            ),
            (
                "IDENTITY_HEADER".to_string(),
                apps.identity_header().to_string(),
            ),
        ]);
        let dir = g.vol.display().to_string();
        let argv: Vec<String> = [
            "fetch",
            "--vault",
            "myvault",
            "--secret",
            "db-password",
            "--dir",
            &dir,
        ]
        .map(String::from)
        .to_vec();
        let mut kv = start_as(65532, &argv, &env);
        let code = kv.exit_within(ms(30000));
        let stderr = kv.stop_and_stderr();
        assert_eq!(code, Some(0), "{stderr}");
        assert_file(&g.file("db-password"), DB, 0o400, 65532);
        assert_eq!(apps.counters().app_service_token_requests, 1);
        assert_eq!(apps.counters().imds_token_requests, 0);
        assert_eq!(imds.counters().imds_token_requests, 0, "IMDS was asked");
        assert!(
            stderr.contains("identity source") && stderr.contains("App Service / Container Apps"),
            "{stderr}"
        );
    }
}
