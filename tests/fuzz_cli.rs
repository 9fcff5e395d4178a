//! A fuzz-style test of the whole command line: random commands, flags (before and after the
//! command), values (valid, out of range, hostile) and environment variables, run through the
//! real binary against a healthy emulator. kvfetch must never panic, hang, exit outside its
//! documented codes or print a secret value.
//!
//! `KVFETCH_FUZZ_CASES` (default 1000) and `KVFETCH_FUZZ_SEED` (default: the time) steer it; a
//! failure prints the seed and the case to replay.
//!
//! Every pool below is loopback-only or refused before any request: no generated case can make
//! kvfetch resolve or reach another host (no valid vault name, no `--resource` with a foreign
//! host that parses, no proxy variables).

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

const VALUES: [&str; 2] = ["Fz1-sEcReT-aaa", "Fz2-sEcReT-bbb"];
/// The exit codes kvfetch documents (an exec'd `false` exits 1).
const DOCUMENTED: [i32; 11] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 126, 127];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

struct Pools {
    vault: Vec<String>,
    dir: Vec<String>,
    env_file: Vec<String>,
    ready: Vec<String>,
    secret: Vec<String>,
}

const DURATIONS: &[&str] = &[
    "0s",
    "1ms",
    "10ms",
    "50ms",
    "1s",
    "1h",
    "500000000000y",
    "18446744073709551615s",
    "-1s",
    "abc",
    "",
    "1.5s",
];

fn flag_values(flag: &str, p: &Pools) -> Vec<String> {
    let list: &[&str] = match flag {
        "vault" => return p.vault.clone(),
        "secret" => return p.secret.clone(),
        "dir" => return p.dir.clone(),
        "env-file" => return p.env_file.clone(),
        "ready-file" => return p.ready.clone(),
        // The token file goes where the ready file may (a scratch path, a bad one).
        "serve-token-file" => return p.ready.clone(),
        "timeout" | "backoff-base" | "access-retry" | "refresh" | "max-stale" | "grace" => {
            DURATIONS
        }
        "env-format" => &["dotenv", "shell", "docker", "json", "bogus", ""],
        "file-mode" => &["0400", "0440", "7777", "0", "abc", "0o440", "4400", "0666"],
        "owner" => &["0", "0:0", "4294967295", "-1", "a:b", ":", "0:"],
        "client-id" | "object-id" | "resource-id" => &["abc", "", "a b", "%00"],
        "resource" => &[
            "https://vault.azure.net",
            "vault.azure.net",
            "https://x?y",
            "",
        ],
        "ca-file" => &["/nonexistent.pem", "/dev/null", "/proc/self/status"],
        "api-version" => &["7.5", "bogus", " ", "7.5&x=1", "7.5#", ""],
        "concurrency" => &["0", "1", "8", "256", "257", "-1", "99999999999999999999"],
        "log-format" => &["text", "json", "xml"],
        "health-listen" => &["127.0.0.1:0", "8089", "127.0.0.1:99999", "bogus"],
        // Never a wildcard address: 10.0.0.1 is refused (or, with --serve-allow-remote, cannot
        // be bound here); nothing is sent either way.
        "serve" => &["127.0.0.1:0", "10.0.0.1:0", "8090", ""],
        // A query is accepted (a webhook's token): only on loopback here; a foreign host is
        // given only where something else (the fragment, the scheme) refuses it.
        "notify-url" => &[
            "http://127.0.0.1:9/",
            "http://127.0.0.1:9/hook?token=x",
            "http://evil.test?x#y",
            "ftp://x",
            "",
        ],
        "on-change" => &[
            "restart",
            "none",
            "signal:HUP",
            "signal:KILLX",
            "signal:999",
        ],
        "allow-env" => &["PATH", "LD_PRELOAD,PATH", ""],
        // Pins to sources whose variables are not set are refused before any request; imds is
        // the emulator's (AZURE_POD_IDENTITY_AUTHORITY_HOST).
        "identity-source" => &[
            "auto",
            "imds",
            "workload",
            "arc",
            "cloud-shell",
            "service-fabric",
            "app-service",
            "IMDS",
            "",
        ],
        _ => &[""], // switches
    };
    list.iter().map(|s| s.to_string()).collect()
}

/// One random command line and environment.
fn case(
    rng: &mut Rng,
    p: &Pools,
    base: &HashMap<String, String>,
) -> (Vec<String>, HashMap<String, String>, bool) {
    let command = rng.pick(&[
        "fetch",
        "fetch",
        "exec",
        "exec",
        "watch",
        "help",
        "",
        "bogus",
        "--version",
    ]);
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut env = base.clone();
    for _ in 0..rng.below(7) {
        let f = &kvfetch::cli::FLAGS[rng.below(kvfetch::cli::FLAGS.len())];
        let values = flag_values(f.long, p);
        let v = values[rng.below(values.len())].clone();
        if rng.chance(25) {
            env.insert(f.env.to_string(), v);
            continue;
        }
        let target = if rng.chance(10) {
            &mut before
        } else {
            &mut after
        };
        target.push(format!("--{}", f.long));
        if f.value.is_some() {
            target.push(v);
        }
    }
    if rng.chance(10) {
        let uri = p.secret[rng.below(p.secret.len())].clone();
        env.insert(
            "REF".into(),
            format!("@Microsoft.KeyVault(SecretUri={uri})"),
        );
    }
    // Most cases start from a working command line, so the random part reaches past parsing.
    if rng.chance(70) {
        after.splice(0..0, ["--secret", "a", "--dir"].map(String::from));
        after.insert(3, p.dir[0].clone());
    }
    let mut args = before;
    if !command.is_empty() {
        args.push(command.to_string());
    }
    args.extend(after);
    if command == "exec" && rng.chance(90) {
        args.push("--".into());
        let cmd: &[&str] = match rng.below(4) {
            0 => &["true"],
            1 => &["false"],
            2 => &["no-such-command-kvfetch"],
            _ => &["/"],
        };
        args.extend(cmd.iter().map(|s| s.to_string()));
    }
    let daemon = command == "watch"
        || (command == "exec" && args.iter().any(|a| a == "--refresh"))
        || env.contains_key("KVFETCH_REFRESH");
    (args, env, daemon)
}

/// Run one case: its exit code, or None when a daemon was still running (stopped by us).
fn run_case(args: &[String], env: &HashMap<String, String>, daemon: bool) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = Command::new(bin())
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let limit = if daemon {
        ms(400)
    } else {
        Duration::from_secs(10)
    };
    let until = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            break Some(status.code().unwrap_or(1000 + status.signal().unwrap_or(0)));
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(ms(2));
    };
    (code, reader.join().unwrap())
}

#[test]
fn random_command_lines_never_panic_hang_or_leak() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", VALUES[0]);
    emu.set_secret("b", VALUES[1]);
    let s = Scratch::new();
    std::fs::write(s.path("a-file"), "x").unwrap();
    let vault = emu.vault_url();
    let pools = Pools {
        vault: [
            vault.as_str(),
            "https://evil.test?.vault.azure.net",
            "https://user@127.0.0.1:9",
            "http://10.0.0.1",
            "ab",
            "a_b",
            "https://[::1",
            "https://127.0.0.1:0",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        dir: vec![
            s.path("out").display().to_string(),
            s.path("a-file").display().to_string(),
            s.path("a-file/x").display().to_string(),
            "/proc/self".into(),
            String::new(),
        ],
        env_file: vec![
            s.path("app.env").display().to_string(),
            s.path("missing/x.env").display().to_string(),
            s.path("out/a").display().to_string(),
        ],
        ready: vec![
            s.path("ready").display().to_string(),
            s.path("missing/ready").display().to_string(),
        ],
        secret: vec![
            "a".into(),
            "b".into(),
            "A=a".into(),
            "a/0123abcd".into(),
            "bad_name".into(),
            "..=a".into(),
            "path".into(),
            "LD_PRELOAD=a".into(),
            "missing".into(),
            format!("{vault}/secrets/b"),
            "https://evil.test?.vault.azure.net/secrets/a".into(),
            String::new(),
            "=".into(),
            format!("{}=a", "n".repeat(300)),
        ],
    };
    let mut base = env_for(&emu);
    base.insert("KVFETCH_TIMEOUT".into(), "3s".into());
    let cases: usize = std::env::var("KVFETCH_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("KVFETCH_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("fuzz: {cases} cases, KVFETCH_FUZZ_SEED={seed}");
    let done = AtomicUsize::new(0);
    let codes = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    std::thread::scope(|scope| {
        for worker in 0..2u64 {
            let (pools, base, done, codes) = (&pools, &base, &done, &codes);
            scope.spawn(move || {
                let mut rng = Rng(seed ^ (worker.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
                while done.fetch_add(1, Ordering::SeqCst) < cases {
                    let (args, env, daemon) = case(&mut rng, pools, base);
                    let (code, stderr) = run_case(&args, &env, daemon);
                    let extra: Vec<_> = env
                        .iter()
                        .filter(|(k, v)| base.get(*k) != Some(*v))
                        .collect();
                    let what =
                        format!("seed {seed} worker {worker}: kvfetch {args:?} with {extra:?}");
                    assert!(!stderr.contains("panicked"), "{what}: a panic: {stderr}");
                    let key = code.map_or("running".to_string(), |c| c.to_string());
                    *codes.lock().unwrap().entry(key).or_default() += 1;
                    match code {
                        Some(c) => assert!(DOCUMENTED.contains(&c), "{what}: exit {c}: {stderr}"),
                        None => assert!(daemon, "{what}: still running after 10 s: {stderr}"),
                    }
                    // The child's own dynamic loader may name a preload that `--allow-env LD_PRELOAD`
                    // let a secret set (`ERROR: ld.so: object '…' … cannot be preloaded`): the
                    // operator's choice, written by the child, not by kvfetch.
                    let ours: String = stderr
                        .lines()
                        .filter(|l| !l.starts_with("ERROR: ld.so: "))
                        .collect::<Vec<_>>()
                        .join("\n");
                    for v in VALUES {
                        assert!(!ours.contains(v), "{what}: a value in the log: {stderr}");
                    }
                    for line in ours.lines().filter(|l| l.starts_with("kvfetch: ")) {
                        assert!(
                            rust_debug(line).is_none(),
                            "{what}: Rust Debug text ({:?}) in a message: {line}",
                            rust_debug(line)
                        );
                    }
                }
            });
        }
    });
    let codes = codes.into_inner().unwrap();
    eprintln!("fuzz: exit codes seen: {codes:?}");
    // The generator reaches past parsing: many cases run a real fetch to the end.
    let ok = codes.get("0").copied().unwrap_or(0);
    assert!(
        ok * 10 >= cases,
        "only {ok} of {cases} cases succeeded: {codes:?}"
    );
}

/// Text only Rust's `Debug` writes (`Some("x")`, `None`, `Ok(..)`, `Err(..)`, a struct's
/// `Name { field: .. }`): no message of kvfetch's may show its insides to an operator.
fn rust_debug(line: &str) -> Option<&'static str> {
    [
        "Some(", "(None)", " None ", "None,", "Ok(", "Err(", " { ", "[\"",
    ]
    .into_iter()
    .find(|p| line.contains(p))
}

#[test]
fn the_debug_detector_finds_what_it_looks_for() {
    assert_eq!(
        rust_debug("kvfetch: error: completions needs a shell (got Some(\"powershell\"))"),
        Some("Some(")
    );
    assert_eq!(
        rust_debug("kvfetch: error: --timeout \"x\" is not a duration like 30s"),
        None
    );
}
