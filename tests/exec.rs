//! `kvfetch exec`, the entrypoint wrapper: real processes against the emulator.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};

use common::*;

fn exec_env(emu: &Emulator) -> HashMap<String, String> {
    let mut env = env_for(emu);
    env.insert("UNRELATED".into(), "stays exactly".into());
    env
}

/// Run `kvfetch exec ARGS`, returning (exit code, stdout bytes, stderr).
fn exec(env: &HashMap<String, String>, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(BIN)
        .arg("exec")
        .args(args)
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn env_dump(bytes: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const TRICKY: &str = "line one\nline 'two' \"three\" $HOME ${PATH} \\ ✓ 日本";

#[test]
fn secrets_and_references_reach_the_environment_exactly() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", TRICKY);
    emu.set_secret("api-key", "key-123");
    let v1 = emu.set_secret("pinned", "first");
    emu.set_secret("pinned", "second");
    let mut env = exec_env(&emu);
    env.insert(
        "API".into(),
        format!(
            "@Microsoft.KeyVault(SecretUri={}/secrets/api-key/)",
            emu.vault_url()
        ),
    );
    env.insert("PINNED".into(), format!(" @microsoft.keyvault( VaultName = myvault ; SecretName = pinned ; SecretVersion = {v1} ) "));
    let (code, stdout, stderr) = exec(&env, &["--secret", "db-password", "--", "env", "-0"]);
    assert_eq!(code, 0, "{stderr}");
    let child = env_dump(&stdout);
    assert_eq!(child["DB_PASSWORD"], TRICKY);
    assert_eq!(child["API"], "key-123");
    assert_eq!(child["PINNED"], "first");
    assert_eq!(child["UNRELATED"], "stays exactly");
    assert_eq!(
        child["KVFETCH_VAULT"],
        emu.vault_url(),
        "nothing else changes"
    );
    assert!(
        !stderr.contains("key-123") && !stderr.contains("line one"),
        "{stderr}"
    );
}

#[test]
fn nothing_starts_when_a_secret_or_reference_fails() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("ok", "fine");
    let s = Scratch::new();
    let marker = s.path("started");
    let touch = format!("touch {}", marker.display());
    let mut env = exec_env(&emu);
    let (code, _, stderr) = exec(
        &env,
        &[
            "--secret", "ok", "--secret", "missing", "--", "sh", "-c", &touch,
        ],
    );
    assert_eq!(code, 5, "{stderr}");
    env.insert(
        "REF".into(),
        format!(
            "@Microsoft.KeyVault(SecretUri={}/secrets/gone)",
            emu.vault_url()
        ),
    );
    assert_eq!(exec(&env, &["--", "sh", "-c", &touch]).0, 5);
    env.insert(
        "REF".into(),
        "@Microsoft.KeyVault(SecretUri=https://evil.example.com/secrets/x)".into(),
    );
    assert_eq!(exec(&env, &["--", "sh", "-c", &touch]).0, 2);
    env.insert("REF".into(), "@Microsoft.KeyVault(VaultName=myvault".into());
    assert_eq!(exec(&env, &["--", "sh", "-c", &touch]).0, 2);
    emu.deny("ok", true);
    env.remove("REF");
    assert_eq!(
        exec(&env, &["--secret", "ok", "--", "sh", "-c", &touch]).0,
        4
    );
    assert!(!marker.exists(), "the command never ran");
}

#[test]
fn exit_status_passes_through_and_command_errors_are_126_or_127() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "x");
    let env = exec_env(&emu);
    assert_eq!(
        exec(&env, &["--secret", "a", "--", "sh", "-c", "exit 42"]).0,
        42
    );
    let (code, _, stderr) = exec(&env, &["--secret", "a", "--", "no-such-command-kvfetch"]);
    assert_eq!(code, 127);
    assert!(stderr.contains("command not found"), "{stderr}");
    let s = Scratch::new();
    let script = s.path("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let (code, _, stderr) = exec(&env, &["--secret", "a", "--", script.to_str().unwrap()]);
    assert_eq!(code, 126);
    assert!(stderr.contains("not executable"), "{stderr}");
}

#[test]
fn the_app_keeps_kvfetchs_pid_and_files_are_written_first() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "alpha");
    let s = Scratch::new();
    let dir = s.path("out");
    let script = format!("echo $$; cat {}/a", dir.display());
    let child = Command::new(BIN)
        .args([
            "exec",
            "--secret",
            "a",
            "--dir",
            dir.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env_clear()
        .envs(exec_env(&emu))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{pid}\nalpha")
    );
}

#[test]
fn supervised_forwards_signals_and_passes_exit_status() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "x");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap 'echo USR1 >> {0}' USR1; trap 'echo HUP >> {0}' HUP; trap 'echo TERM >> {0}; exit 3' TERM; echo up >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised(&exec_env(&emu), &["--secret", "a"], &script);
    wait_for("the child", ms(5000), || read(&log).contains("up"));
    sup.signal(SIGUSR1);
    wait_for("USR1 at the child", ms(2000), || {
        read(&log).contains("USR1")
    });
    sup.signal(SIGHUP);
    wait_for("HUP at the child", ms(2000), || read(&log).contains("HUP"));
    sup.signal(SIGTERM);
    assert_eq!(
        sup.exit_within(ms(3000)),
        Some(3),
        "the child's exit status"
    );
    assert_eq!(read(&log).matches("TERM").count(), 1);

    let mut sup = supervised(&exec_env(&emu), &["--secret", "a"], "kill -9 $$");
    assert_eq!(sup.exit_within(ms(5000)), Some(137), "128 + SIGKILL");
}

#[test]
fn supervised_restarts_the_child_with_the_new_value_on_rotation() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", "old");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap 'exit 0' TERM; echo \"$DB_PASSWORD\" >> {}; while :; do sleep 0.05; done",
        log.display()
    );
    let mut sup = supervised(
        &exec_env(&emu),
        &["--secret", "db-password", "--grace", "2s"],
        &script,
    );
    wait_for("the first child", ms(5000), || read(&log) == "old\n");
    emu.set_secret("db-password", "new");
    wait_for("the restarted child", ms(5000), || {
        read(&log) == "old\nnew\n"
    });
    let stderr = sup.stop_and_stderr();
    assert!(stderr.contains("restarting the child"), "{stderr}");
    assert!(!stderr.contains("new\n"));
}

#[test]
fn supervised_signal_on_change_and_files_updated() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("cert", "v1");
    let s = Scratch::new();
    let (log, dir) = (s.path("log"), s.path("out"));
    let script = format!(
        "trap 'cat {}/cert >> {}' USR2; while :; do sleep 0.05; done",
        dir.display(),
        log.display()
    );
    let _sup = supervised(
        &exec_env(&emu),
        &[
            "--secret",
            "cert",
            "--dir",
            dir.to_str().unwrap(),
            "--on-change",
            "signal:USR2",
        ],
        &script,
    );
    wait_for("the first write", ms(5000), || {
        read(&dir.join("cert")) == "v1"
    });
    std::thread::sleep(ms(300));
    emu.set_secret("cert", "v2");
    wait_for("the signal after the new file", ms(5000), || {
        read(&log) == "v2"
    });
}

#[test]
fn supervised_reaps_orphaned_zombies() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "x");
    let s = Scratch::new();
    let out = s.path("zombies");
    // The subshell exits at once, so its `sleep` is orphaned and re-parented to kvfetch (a child
    // subreaper); when it ends, kvfetch must reap it. Then count zombie children of kvfetch.
    let script = format!(
        "(sleep 0.2 &); sleep 1; n=0; for f in /proc/[0-9]*/status; do \
         if grep -q '^State:.*Z' $f 2>/dev/null && grep -q \"^PPid:[[:space:]]*$PPID$\" $f 2>/dev/null; then n=$((n+1)); fi; done; echo $n > {}",
        out.display()
    );
    let mut sup = supervised(&exec_env(&emu), &["--secret", "a"], &script);
    assert_eq!(sup.exit_within(ms(5000)), Some(0));
    assert_eq!(read(&out).trim(), "0", "no zombie left under kvfetch");
}

#[test]
fn reaps_as_pid_1_in_a_pid_namespace() {
    let unshare = ["/usr/bin/unshare", "/bin/unshare"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(unshare) = unshare else { return };
    if Command::new(unshare)
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("skipping: unshare --pid needs root (CI runs as root)");
        return;
    }
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "x");
    let s = Scratch::new();
    let out = s.path("report");
    let script = format!(
        "(sleep 0.2 &); sleep 1; n=0; for f in /proc/[0-9]*/status; do grep -q '^State:.*Z' $f && n=$((n+1)); done; echo \"$PPID $n\" > {}",
        out.display()
    );
    let status = Command::new(unshare)
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            BIN,
            "exec",
            "--refresh",
            "1h",
            "--secret",
            "a",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env_clear()
        .envs(exec_env(&emu))
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        read(&out).trim(),
        "1 0",
        "kvfetch is PID 1 and left no zombie"
    );
}

/// Run supervised kvfetch on a real pseudo-terminal (python's pty module), wait until the child
/// log has `ups` "up" lines (calling `between` after the first), type a line the child reads,
/// then ^C, and return
/// (python's report of kvfetch's exit code, the child log).
/// Runs `kvfetch exec` as the foreground of a new terminal with `stty tostop` set, types a
/// line, then ^C. Returns the driver's verdict (exit code or "timeout"), the child's log and all
/// the terminal showed.
fn ctrl_c_on_a_pty(emu: &Emulator, ups: usize, between: impl FnOnce()) -> (String, String, String) {
    let s = Scratch::new();
    let log = s.path("log");
    let screen = s.path("screen");
    let script = format!(
        "trap 'echo INT >> {0}; exit 0' INT; echo up >> {0}; read line; echo \"read $line\" >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let driver = r#"
import os, pty, sys, time
import termios
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
# tostop: a background process that writes to the terminal is stopped (or, orphaned, gets EIO).
attrs = termios.tcgetattr(fd)
attrs[3] |= termios.TOSTOP
termios.tcsetattr(fd, termios.TCSANOW, attrs)
os.set_blocking(fd, False)
log, ups = os.environ["CHILD_LOG"], int(os.environ["UPS"])
screen = open(os.environ["SCREEN"], "ab")
def drain():
    try:
        screen.write(os.read(fd, 4096)); screen.flush()
    except OSError:
        pass
end = time.time() + 10
while time.time() < end and (not os.path.exists(log) or open(log).read().count("up") < ups):
    drain(); time.sleep(0.02)
time.sleep(0.2)
os.write(fd, b"hello\n")
end = time.time() + 5
while time.time() < end and "read hello" not in open(log).read():
    drain(); time.sleep(0.02)
time.sleep(0.2)
os.write(fd, b"")
end, status = time.time() + 5, None
while time.time() < end:
    drain()
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        status = st
        break
    time.sleep(0.05)
# What kvfetch wrote between the last drain and its exit is still in the terminal's buffer:
# read it all (then EIO, the terminal's other side being closed).
os.set_blocking(fd, True)
while status is not None:
    try:
        data = os.read(fd, 4096)
    except OSError:
        break
    if not data:
        break
    screen.write(data); screen.flush()
print(os.waitstatus_to_exitcode(status) if status is not None else "timeout")
"#;
    let mut env = exec_env(emu);
    env.insert("CHILD_LOG".into(), log.display().to_string());
    env.insert("UPS".into(), ups.to_string());
    env.insert("SCREEN".into(), screen.display().to_string());
    let child = Command::new("python3")
        .args([
            "-c",
            driver,
            BIN,
            "exec",
            "--refresh",
            "100ms",
            "--grace",
            "2s",
            "--secret",
            "a",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env_clear()
        .envs(env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first child", ms(5000), || read(&log).contains("up"));
    between();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        read(&log),
        read(&screen),
    )
}

#[test]
fn ctrl_c_at_a_terminal_reaches_the_child_once() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "x");
    let (code, log, screen) = ctrl_c_on_a_pty(&emu, 1, || {});
    assert_eq!(code, "0");
    assert_eq!(log.matches("INT").count(), 1, "{log}");
    // The child owns the terminal: it reads from it (a background group would be stopped).
    assert!(log.contains("read hello"), "{log}");
    // kvfetch, now in the background, still shows its own lines under `stty tostop`.
    assert_eq!(screen.matches("child started").count(), 1, "{screen}");
    assert_eq!(screen.matches("child exited").count(), 1, "{screen}");
}

#[test]
fn ctrl_c_reaches_a_restarted_child_once() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "x");
    let (code, log, screen) = ctrl_c_on_a_pty(&emu, 2, || {
        emu.set_secret("a", "rotated");
    });
    assert_eq!(screen.matches("child started").count(), 2, "{screen}");
    assert_eq!(code, "0");
    assert_eq!(
        log, "up\nup\nread hello\nINT\n",
        "the restarted child owns the terminal"
    );
}

/// `kvfetch exec … &` from an interactive shell: kvfetch starts in a background process group
/// of the terminal, and neither it nor its child may take the terminal from the shell.
#[test]
fn a_background_kvfetch_leaves_the_terminal_to_the_shell() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("a", "x");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "echo up >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let driver = r#"
import os, pty, sys, time
pid, fd = pty.fork()
if pid == 0:
    kv = os.fork()
    if kv == 0:
        os.setpgid(0, 0)
        os.execv(sys.argv[1], sys.argv[1:])
    os.setpgid(kv, kv)
    log = os.environ["CHILD_LOG"]
    end = time.time() + 10
    while time.time() < end and not (os.path.exists(log) and "up" in open(log).read()):
        time.sleep(0.02)
    time.sleep(0.2)
    mine = os.tcgetpgrp(0) == os.getpgrp()
    open(log, "a").write("foreground=%s\n" % ("shell" if mine else "taken"))
    os.kill(kv, 15)
    _, st = os.waitpid(kv, 0)
    open(log, "a").write("kvfetch=%d\n" % os.waitstatus_to_exitcode(st))
    os._exit(0)
os.set_blocking(fd, False)
end, status = time.time() + 15, None
while time.time() < end:
    try:
        os.read(fd, 4096)
    except OSError:
        pass
    done, st = os.waitpid(pid, os.WNOHANG)
    if done:
        status = st
        break
    time.sleep(0.02)
print(os.waitstatus_to_exitcode(status) if status is not None else "timeout")
"#;
    let mut env = exec_env(&emu);
    env.insert("CHILD_LOG".into(), log.display().to_string());
    let out = Command::new("python3")
        .args([
            "-c",
            driver,
            BIN,
            "exec",
            "--refresh",
            "1h",
            "--secret",
            "a",
            "--",
            "sh",
            "-c",
        ])
        .arg(&script)
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    let log = read(&log);
    // SIGTERM reaches the child through kvfetch: 128 + 15.
    assert_eq!(log, "up\nforeground=shell\nkvfetch=143\n");
}

#[test]
fn exec_help_and_usage() {
    let emu = Emulator::start().unwrap();
    let env = exec_env(&emu);
    let (code, stdout, _) = exec(&env, &["--help"]);
    let help = String::from_utf8_lossy(&stdout);
    assert_eq!(code, 0);
    assert!(
        help.contains("--on-change")
            && help.contains("127  COMMAND not found")
            && help.contains("KVFETCH_GRACE")
    );
    assert_eq!(exec(&env, &["--secret", "a"]).0, 2, "a command is required");
    assert_eq!(exec(&env, &["--on-change", "explode", "--", "true"]).0, 2);
}
