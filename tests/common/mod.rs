//! Shared test helpers: an emulator per test, the kvfetch binary run against it with every
//! endpoint pointed at loopback, and scratch directories on tmpfs.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub mod deploy;

pub use deploy::*;
pub use kvfetch_emulator::{Certificate, Emulator, Fault, Identity, SecretInput};

pub const BIN: &str = env!("CARGO_BIN_EXE_kvfetch");

/// The binary under test: `KVFETCH_TEST_BIN` when set (to prove a test fails on an older build),
/// else the one cargo built.
pub fn bin() -> String {
    std::env::var("KVFETCH_TEST_BIN").unwrap_or_else(|_| BIN.to_string())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A scratch directory (on /dev/shm when there is one), removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        Scratch::under(&base)
    }

    pub fn under(base: &Path) -> Scratch {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = base.join(format!("kvfetch-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Every entry's name, sorted (temp files included, so tests can prove none is left).
    pub fn entries(&self, sub: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.0.join(sub))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The environment that points kvfetch at `emu`, with short retry timings.
pub fn env_for(emu: &Emulator) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = emu.env().into_iter().collect();
    env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
    // Entra ID too points at the emulator: a test that turns on workload identity by mistake
    // reaches loopback, never a real authority.
    env.insert("AZURE_AUTHORITY_HOST".into(), emu.authority_url());
    env.insert("KVFETCH_BACKOFF_BASE".into(), "10ms".into());
    env.insert("KVFETCH_ACCESS_RETRY".into(), "0s".into());
    env.insert("KVFETCH_TIMEOUT".into(), "20s".into());
    env
}

/// The result of one kvfetch run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run the kvfetch binary with `args` and exactly `env` (nothing inherited).
pub fn run_with(env: &HashMap<String, String>, args: &[&str]) -> Run {
    assert!(
        env.contains_key("AZURE_POD_IDENTITY_AUTHORITY_HOST")
            || env.contains_key("IDENTITY_ENDPOINT"),
        "tests must point the identity endpoint at loopback"
    );
    let out: Output = Command::new(bin())
        .args(args)
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run kvfetch against `emu`.
pub fn run(emu: &Emulator, args: &[&str]) -> Run {
    run_with(&env_for(emu), args)
}

/// Assert that nothing secret reached the logs: no value, no token.
pub fn assert_no_leak(run: &Run, values: &[&str]) {
    for v in values {
        assert!(
            !run.stderr.contains(v) && !run.stdout.contains(v),
            "a secret value leaked into the output: {}",
            run.stderr
        );
    }
    assert!(
        !run.stderr.contains("eyJ"),
        "a token leaked into the logs: {}",
        run.stderr
    );
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A kvfetch process running in the background (watch, supervised exec); killed on drop. Its
/// stderr, when piped, is read all the time by a thread (a child never blocks on a full pipe)
/// and kept for [`Background::stderr`].
pub struct Background {
    pub child: std::process::Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    drain: Option<std::thread::JoinHandle<()>>,
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGUSR1: i32 = 10;
pub const SIGTERM: i32 = 15;

/// Send `sig` to `pid` (a process the test started, or one of its descendants).
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc_kill(pid, sig) };
}

impl Background {
    /// Start `kvfetch ARGS` with exactly `env`, stderr captured.
    pub fn start(env: &HashMap<String, String>, args: &[&str]) -> Background {
        let child = Command::new(bin())
            .args(args)
            .env_clear()
            .envs(env)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Background::new(child)
    }

    /// Watch over `child`, draining its stderr if it was piped.
    pub fn new(mut child: std::process::Child) -> Background {
        use std::io::Read;
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let drain = child.stderr.take().map(|mut pipe| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    log.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        });
        Background { child, log, drain }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc_kill(self.pid(), sig) };
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Watch over `child` without reading its stderr (a test of a stalled reader): the pipe fills.
    pub fn undrained(child: std::process::Child) -> Background {
        let log = std::sync::Arc::default();
        Background {
            child,
            log,
            drain: None,
        }
    }

    /// The address its health listener reports having bound (start it with
    /// `--health-listen 127.0.0.1:0`: the system picks a free port, nothing is handed over).
    /// An undrained child's stderr is read up to that line and no further.
    pub fn health_addr(&mut self) -> String {
        if self.drain.is_none() {
            self.read_until("health endpoints listening");
        }
        let mut addr = String::new();
        self.wait("the health listener's address", ms(10000), || {
            let log = self.stderr();
            let found = log.lines().find_map(|l| {
                let rest = l.split("health endpoints listening").nth(1)?;
                rest.split_whitespace()
                    .find_map(|f| f.strip_prefix("addr="))
                    .map(str::to_string)
            });
            addr = found.unwrap_or_default();
            !addr.is_empty()
        });
        addr
    }

    /// Read an undrained child's stderr into the log up to the first line holding `text`.
    fn read_until(&mut self, text: &str) {
        use std::io::Read;
        let Some(pipe) = self.child.stderr.as_mut() else {
            return;
        };
        let mut line = Vec::new();
        let mut byte = [0u8];
        while let Ok(1) = pipe.read(&mut byte) {
            line.push(byte[0]);
            if byte[0] == b'\n' {
                let l = String::from_utf8_lossy(&line).into_owned();
                self.log.lock().unwrap().push_str(&l);
                line.clear();
                if l.contains(text) {
                    return;
                }
            }
        }
    }

    /// Poll `check` like [`wait_for`]; on time-out the panic shows this process's stderr.
    pub fn wait(&self, what: &str, within: Duration, mut check: impl FnMut() -> bool) {
        let until = std::time::Instant::now() + within;
        while std::time::Instant::now() < until {
            if check() {
                return;
            }
            std::thread::sleep(ms(20));
        }
        panic!(
            "timed out waiting for {what}; stderr so far:\n{}",
            self.stderr()
        );
    }

    /// The exit code, if it exits within `within`.
    pub fn exit_within(&mut self, within: Duration) -> Option<i32> {
        let until = std::time::Instant::now() + within;
        while std::time::Instant::now() < until {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(ms(10));
        }
        None
    }

    /// Stop it as an orchestrator does (SIGTERM, then SIGKILL after 3 s) and return its stderr.
    pub fn stop_and_stderr(&mut self) -> String {
        self.signal(SIGTERM);
        if self.exit_within(ms(3000)).is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        } else if let Some(mut pipe) = self.child.stderr.take() {
            use std::io::Read;
            let mut rest = Vec::new();
            let _ = pipe.read_to_end(&mut rest);
            self.log
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&rest));
        }
        self.stderr()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `check` every 20 ms for at most `within`; panic naming `what` on time-out.
pub fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if check() {
            return;
        }
        std::thread::sleep(ms(20));
    }
    panic!("timed out waiting for {what}");
}

/// A file's text, or "" when it does not exist (yet).
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// GET `path` from a health endpoint: (status, body), or (0, "") when nothing listens, the
/// connection is closed or reset without an answer, or no answer comes within 5 s.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(ms(5000)));
    let _ = s.set_write_timeout(Some(ms(5000)));
    let mut out = String::new();
    if write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").is_err()
        || s.read_to_string(&mut out).is_err()
    {
        return (0, String::new());
    }
    let Some(code) = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()) else {
        return (0, String::new());
    };
    (
        code,
        out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string(),
    )
}

/// The `Content-Type` a health endpoint at `addr` answers `path` with ("" for none).
pub fn http_content_type(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let _ = s.set_read_timeout(Some(ms(5000)));
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let head = out.split("\r\n\r\n").next().unwrap_or_default();
    head.lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_string()
}

/// Wait until the health endpoint at `addr` answers `/readyz` with 200.
pub fn wait_ready(addr: &str) {
    wait_for("readiness", ms(5000), || http_get(addr, "/readyz").0 == 200);
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

/// Say that the calling test cannot run here, and is to be counted as skipped, not passed.
/// The line `SKIPPED: <test>: <why>` goes to the real stderr (the harness captures only the
/// print macros, so it shows in every run), and when `KVFETCH_SKIP_LOG` names a file it is
/// appended there too: `.ci/run` counts those lines and takes them off the passed count.
pub fn skip(why: &str) {
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let line = format!("SKIPPED: {test}: {why}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(log) = std::env::var_os("KVFETCH_SKIP_LOG") {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log);
        if let Ok(mut f) = file {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Whether the tests run as root; when not, [`skip`] with `why` and return false.
pub fn root_or_skip(why: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { geteuid() } == 0;
    if !root {
        skip(why);
    }
    root
}

/// Create `dir` and give it to uid/gid 65534 (nobody), for kvfetch run by [`as_nobody`].
pub fn nobodys_dir(dir: &Path) {
    users_dir(dir, 65534);
}

/// Create `dir` and give it to `uid` (as its gid too).
pub fn users_dir(dir: &Path, uid: u32) {
    std::fs::create_dir_all(dir).unwrap();
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).unwrap();
}

/// `kvfetch ARGS` as uid/gid 65534 (through setpriv), with exactly `env`; `prefix` runs before
/// setpriv (e.g. `prlimit --nproc=1:1`).
pub fn as_nobody(prefix: &[&str], args: &[&str], env: &HashMap<String, String>) -> Command {
    as_user(65534, prefix, args, env)
}

/// Like [`as_nobody`] with another uid. Tests that limit processes per user (RLIMIT_NPROC counts
/// all of a uid's processes on the machine) use a uid of their own, so that no other test's
/// processes share the budget.
pub fn as_user(uid: u32, prefix: &[&str], args: &[&str], env: &HashMap<String, String>) -> Command {
    as_user_in(uid, &[], prefix, args, env)
}

/// Like [`as_user`], with supplementary `groups` (none: `--clear-groups`).
pub fn as_user_in(
    uid: u32,
    groups: &[u32],
    prefix: &[&str],
    args: &[&str],
    env: &HashMap<String, String>,
) -> Command {
    let id = uid.to_string();
    let mut all: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
    all.extend(["setpriv", "--reuid", &id, "--regid", &id].map(String::from));
    match groups {
        [] => all.push("--clear-groups".into()),
        _ => {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            all.extend(["--groups".to_string(), list.join(",")]);
        }
    }
    all.push(bin());
    all.extend(args.iter().map(|s| s.to_string()));
    let mut c = Command::new(&all[0]);
    c.args(&all[1..]).env_clear().envs(env);
    c
}

/// Start supervised `kvfetch exec --refresh 100ms ARGS -- sh -c SCRIPT`.
pub fn supervised(env: &HashMap<String, String>, args: &[&str], script: &str) -> Background {
    let mut all: Vec<&str> = vec!["exec", "--refresh", "100ms"];
    all.extend(args);
    all.extend(["--", "sh", "-c", script]);
    Background::start(env, &all)
}

/// The value of the metric `series` (its name and labels exactly, such as
/// `kvfetch_refresh_failures_total{kind="no_token"}`); panics when the series is absent, so a
/// renamed metric fails the test instead of reading as 0.
pub fn metric(addr: &str, series: &str) -> f64 {
    let text = http_get(addr, "/metrics").1;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or_else(|| panic!("no series {series} in /metrics: {text}"))
}

/// What a seccomp filter takes away from a process (and everything it starts), to run kvfetch
/// as on a file system that lacks a feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lacks {
    /// `renameat2(RENAME_EXCHANGE)` fails with EINVAL (NFS, FUSE, vfat).
    Exchange,
    /// Exchange fails as above, and hard links fail with EPERM (vfat).
    ExchangeAndLinks,
}

/// Whether [`lacking`] can simulate anything here (its filter is written for x86_64); prints
/// [`skip`]s when not.
pub fn can_lack() -> bool {
    let ok = cfg!(target_arch = "x86_64");
    if !ok {
        skip("the seccomp filter that simulates file systems is for x86_64 only");
    }
    ok
}

/// Install, in `cmd`'s child before it execs, a seccomp filter for `lacks` (x86_64 only; on
/// other machines the filter lets every call through: check [`can_lack`] first).
pub fn lacking(cmd: &mut Command, lacks: Lacks) {
    use std::os::unix::process::CommandExt;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let ld = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let jset = libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | e as u32;
    // Jumps are relative to the next instruction; the returns sit at the end.
    let links = lacks == Lacks::ExchangeAndLinks;
    let (allow, einval, eperm) = if links { (9u8, 10u8, 8u8) } else { (6, 7, 0) };
    let to = |from: u8, target: u8| target - from - 1;
    let mut prog = vec![
        stmt(ld, 4),                                                    // 0: the architecture
        jump(jeq, 0xc000_003e, 0, to(1, allow)),                        // 1: x86_64 only
        stmt(ld, 0),                                                    // 2: the syscall number
        jump(jeq, libc::SYS_renameat2 as u32, 0, to(3, 6)),             // 3
        stmt(ld, 48), // 4: args[4] (flags), low half
        jump(jset, libc::RENAME_EXCHANGE, to(5, einval), to(5, allow)), // 5
    ];
    if links {
        prog.push(jump(jeq, libc::SYS_linkat as u32, to(6, eperm), 0)); // 6
        prog.push(jump(jeq, libc::SYS_link as u32, to(7, eperm), to(7, allow))); // 7
        prog.push(stmt(ret, errno(libc::EPERM))); // 8
    }
    prog.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(ret, errno(libc::EINVAL)));
    // Built before the fork: the child only makes two prctl calls.
    let filter = move || -> std::io::Result<()> {
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prctl with a filter program that outlives the call.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &fprog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure makes only prctl calls (async-signal-safe) on data made before fork.
    unsafe { cmd.pre_exec(filter) };
}

/// `sh -c SCRIPT` in a private mount namespace of its own (mounts made there vanish with it),
/// with exactly `env`. Needs root: callers check first.
pub fn in_private_mounts(script: &str, env: &HashMap<String, String>) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", script])
        .env_clear()
        .envs(env);
    cmd
}

/// Run this test again inside new namespaces (`unshare FLAGS`, which must include `-n`: a
/// network namespace of its own), where it first checks it finds only `lo` and no route out (a
/// name lookup there reaches no resolver, and nothing leaves the machine), then brings `lo` up.
/// Returns true in the outer run (which has checked the inner run passed), false in the inner
/// run, which then does the work. Needs root (CI runs as root); without it the outer run
/// [`skip`]s and returns true.
pub fn rerun_isolated(test: &str, flags: &[&str]) -> bool {
    assert!(flags.contains(&"-n"), "a network namespace of its own");
    if std::env::var_os("KVFETCH_TEST_IN_NETNS").is_some() {
        let links = Command::new("ip")
            .args(["-o", "link", "show"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&links.stdout).into_owned();
        assert_eq!(links.lines().count(), 1, "only lo: {links}");
        assert!(links.contains(": lo:"), "{links}");
        let routes = Command::new("ip").args(["route", "show"]).output().unwrap();
        assert!(routes.stdout.is_empty(), "no route out");
        assert!(
            Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .unwrap()
                .success()
        );
        return false;
    }
    if !root_or_skip("a private network namespace needs root (CI runs as root)") {
        return true;
    }
    let out = Command::new("unshare")
        .args(flags)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("KVFETCH_TEST_IN_NETNS", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "inner run: {text}"
    );
    true
}

/// A child of `parent`, from /proc.
pub fn child_of(parent: i32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid: i32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent).then_some(pid)
    })
}

/// Run `kvfetch ARGS` as PID 1 of a new PID namespace; returns it and its PID outside.
pub fn as_pid_1(env: &HashMap<String, String>, args: &[&str]) -> Option<(Background, i32)> {
    as_pid_1_with(&[], env, args)
}

/// [`as_pid_1`] with more `unshare` flags (`--mount-proc`: a /proc of its own, as a container has).
pub fn as_pid_1_with(
    flags: &[&str],
    env: &HashMap<String, String>,
    args: &[&str],
) -> Option<(Background, i32)> {
    if !root_or_skip("unshare --pid needs root (CI runs as root)") {
        return None;
    }
    let child = Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .args(flags)
        .arg(bin())
        .args(args)
        .env_clear()
        .envs(env)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let unshare = child.id();
    let mut bg = Background::new(child);
    let mut inner = 0;
    wait_for("kvfetch as PID 1", ms(5000), || {
        if bg.exit_within(ms(1)).is_some() {
            panic!("unshare ended early: {}", bg.stop_and_stderr());
        }
        inner = child_of(unshare as i32).unwrap_or(0);
        inner > 0
    });
    Some((bg, inner))
}

/// Accept one request, read it whole (headers and body), answer `reply`.
pub fn accept_post(listener: &std::net::TcpListener, reply: &str) -> String {
    // Poll, so that a request that never comes fails the test instead of hanging it.
    listener.set_nonblocking(true).unwrap();
    let until = std::time::Instant::now() + ms(15000);
    let mut conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(std::time::Instant::now() < until, "no request came");
                std::thread::sleep(ms(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(ms(2000))).unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).unwrap();
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                conn.write_all(reply.as_bytes()).unwrap();
                return text;
            }
        }
        assert!(n > 0, "connection closed early");
    }
}
