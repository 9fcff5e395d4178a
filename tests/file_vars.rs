//! `?file` (and App Service references in `*_FILE` variables): `exec` hands the value over as
//! a file in memory whose path is the variable, never as the variable's value. Real processes
//! against the emulator.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;

const VALUE: &str = "pg-Secret-4711";

/// Held by each test that runs a supervised `exec` with `?file`: each start sweeps the
/// directories killed supervisors left, and one test kills a supervisor on purpose.
static SUPERVISED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_supervisor() -> std::sync::MutexGuard<'static, ()> {
    SUPERVISED.lock().unwrap_or_else(|e| e.into_inner())
}

fn exec_env(emu: &Emulator) -> HashMap<String, String> {
    let mut env = env_for(emu);
    env.insert("UNRELATED".into(), "stays".into());
    env
}

/// Run `kvfetch exec ARGS` (stdout and stderr captured).
fn exec(env: &HashMap<String, String>, args: &[&str]) -> Run {
    let mut all = vec!["exec"];
    all.extend(args);
    run_with(env, &all)
}

/// The lines of a `VAR=value` dump (`/proc/PID/environ` with NULs made newlines).
fn var(dump: &str, name: &str) -> Option<String> {
    dump.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .map(String::from)
}

/// A child script that reports, for variable `$1`'s file: its content, its mode and owner, and
/// what the path links to; then its own environment (NULs as newlines). Each to a file of `out`.
fn report_script(out: &Path, vars: &[&str]) -> String {
    let mut script = String::new();
    for v in vars {
        let o = out.join(v);
        script.push_str(&format!(
            "cat \"${v}\" > {o}.content; stat -L -c '%a %u' \"${v}\" > {o}.stat; readlink \"${v}\" > {o}.link; ",
            o = o.display()
        ));
    }
    script.push_str(&format!(
        "tr '\\0' '\\n' < /proc/$$/environ > {}/environ",
        out.display()
    ));
    script
}

#[test]
fn plain_exec_hands_a_sealed_memfd_over_and_the_value_is_in_no_variable() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", VALUE);
    emu.set_secret("api", r#"{"key":"k-1"}"#);
    // base64 of "a\0b": a NUL no variable could carry, a file can.
    emu.set_secret("blob", "YQBi");
    let s = Scratch::new();
    let out = s.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let mut env = exec_env(&emu);
    env.insert(
        "REF_FILE".into(),
        format!(
            "@Microsoft.KeyVault(SecretUri={}/secrets/db-password)",
            emu.vault_url()
        ),
    );
    env.insert("DB_PASSWORD_FILE".into(), "inherited, replaced".into());
    let script = report_script(
        &out,
        &["DB_PASSWORD_FILE", "API_FILE", "BLOB_FILE", "REF_FILE"],
    );
    let run = exec(
        &env,
        &[
            "--secret",
            "DB_PASSWORD_FILE=db-password?file",
            "--secret",
            "api?json=/key&file",
            "--secret",
            "blob?decode=base64&file",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_no_leak(&run, &[VALUE, "k-1"]);
    let got = |name: &str, what: &str| read(&out.join(format!("{name}.{what}")));
    assert_eq!(got("DB_PASSWORD_FILE", "content"), VALUE);
    assert_eq!(
        got("REF_FILE", "content"),
        VALUE,
        "a *_FILE reference is a file"
    );
    assert_eq!(got("API_FILE", "content"), "k-1");
    assert_eq!(
        std::fs::read(out.join("BLOB_FILE.content")).unwrap(),
        b"a\0b"
    );
    let uid = std::fs::metadata("/proc/self").unwrap();
    let uid = std::os::unix::fs::MetadataExt::uid(&uid);
    for name in ["DB_PASSWORD_FILE", "API_FILE", "BLOB_FILE", "REF_FILE"] {
        assert_eq!(got(name, "stat"), format!("400 {uid}\n"), "{name}");
        // On no file system: a memfd, gone with the last process holding it.
        let link = got(name, "link");
        assert!(link.starts_with("/memfd:kvfetch:"), "{name}: {link}");
    }
    let environ = read(&out.join("environ"));
    assert!(
        !environ.contains(VALUE) && !environ.contains("k-1"),
        "{environ}"
    );
    assert!(!environ.contains("KeyVault"), "{environ}");
    let path = var(&environ, "DB_PASSWORD_FILE").unwrap();
    assert!(path.starts_with("/proc/self/fd/"), "{path}");
    assert_eq!(var(&environ, "UNRELATED").as_deref(), Some("stays"));
    assert_eq!(environ.matches("DB_PASSWORD_FILE=").count(), 1);
}

#[test]
fn the_app_can_neither_change_nor_grow_its_file() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", VALUE);
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "echo x > \"$DB_PASSWORD_FILE\" || echo refused >> {l}; echo x >> \"$DB_PASSWORD_FILE\" || echo refused >> {l}; cat \"$DB_PASSWORD_FILE\" >> {l}",
        l = log.display()
    );
    let run = exec(
        &exec_env(&emu),
        &["--secret", "db-password?file", "--", "sh", "-c", &script],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(read(&log), format!("refused\nrefused\n{VALUE}"));
}

#[test]
fn the_file_is_owned_by_the_user_the_app_runs_as() {
    if !root_or_skip("setpriv to another user needs root") {
        return;
    }
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", VALUE);
    let s = Scratch::new();
    let out = s.path("out");
    nobodys_dir(&out);
    let script = report_script(&out, &["DB_PASSWORD_FILE"]);
    let o = as_nobody(
        &[],
        &[
            "exec",
            "--secret",
            "db-password?file",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &exec_env(&emu),
    )
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read(&out.join("DB_PASSWORD_FILE.content")), VALUE);
    assert_eq!(read(&out.join("DB_PASSWORD_FILE.stat")), "400 65534\n");
}

/// The private directory a supervised child's variable points into.
fn private_dir(path: &str) -> PathBuf {
    let p = Path::new(path.trim());
    assert!(p.starts_with("/dev/shm"), "{path}");
    let name = p.parent().unwrap().file_name().unwrap().to_string_lossy();
    assert!(name.starts_with("kvfetch-exec-"), "{path}");
    p.parent().unwrap().to_path_buf()
}

#[test]
fn supervised_exec_rewrites_the_file_then_signals_and_removes_it_on_exit() {
    let _one = one_supervisor();
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", "v1");
    let s = Scratch::new();
    let (log, path) = (s.path("log"), s.path("path"));
    let script = format!(
        "trap 'echo >> {l}; cat \"$DB_PASSWORD_FILE\" >> {l}' USR2; \
         echo \"$DB_PASSWORD_FILE\" > {p}; stat -c '%a' \"$DB_PASSWORD_FILE\" \"$(dirname \"$DB_PASSWORD_FILE\")\" >> {p}; \
         tr '\\0' '\\n' < /proc/$$/environ >> {p}; \
         cat \"$DB_PASSWORD_FILE\" >> {l}; \
         while :; do sleep 0.05; done",
        p = path.display(),
        l = log.display()
    );
    let mut sup = supervised(
        &exec_env(&emu),
        &["--secret", "db-password?file", "--on-change", "signal:USR2"],
        &script,
    );
    sup.wait("the first child", ms(5000), || read(&log) == "v1");
    let report = read(&path);
    let mut lines = report.lines();
    let file = lines.next().unwrap().to_string();
    let dir = private_dir(&file);
    assert_eq!(lines.next(), Some("400"), "{report}");
    assert_eq!(lines.next(), Some("700"), "{report}");
    assert!(
        !report.contains("v1"),
        "no variable holds the value: {report}"
    );
    emu.set_secret("db-password", "v2");
    sup.wait("the signal after the rewrite", ms(5000), || {
        read(&log) == "v1\nv2"
    });
    assert_eq!(read(Path::new(&file)), "v2");
    let stderr = sup.stop_and_stderr();
    assert!(!stderr.contains("v2"), "{stderr}");
    assert!(!dir.exists(), "the private directory is removed on exit");
}

#[test]
fn supervised_exec_restarts_the_child_with_the_new_file_and_cleans_up() {
    let _one = one_supervisor();
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", "old");
    let s = Scratch::new();
    let (log, path) = (s.path("log"), s.path("path"));
    let script = format!(
        "trap 'exit 0' TERM; echo \"$PW_FILE\" > {p}; cat \"$PW_FILE\" >> {l}; echo >> {l}; while :; do sleep 0.05; done",
        p = path.display(),
        l = log.display()
    );
    let mut sup = supervised(
        &exec_env(&emu),
        &["--secret", "PW_FILE=db-password?file", "--grace", "2s"],
        &script,
    );
    sup.wait("the first child", ms(5000), || read(&log) == "old\n");
    let dir = private_dir(&read(&path));
    emu.set_secret("db-password", "new");
    sup.wait("the restarted child", ms(5000), || {
        read(&log) == "old\nnew\n"
    });
    let stderr = sup.stop_and_stderr();
    assert!(stderr.contains("restarting the child"), "{stderr}");
    assert!(!dir.exists(), "the private directory is removed on exit");
}

#[test]
fn exec_with_dir_and_env_file_leaves_file_secrets_out_of_them() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", VALUE);
    emu.set_secret("plain", "p");
    let s = Scratch::new();
    let (dir, envf, log) = (s.path("out"), s.path("app.env"), s.path("log"));
    let script = format!("cat \"$DB_PASSWORD_FILE\" > {}", log.display());
    let run = exec(
        &exec_env(&emu),
        &[
            "--secret",
            "db-password?file",
            "--secret",
            "plain",
            "--dir",
            dir.to_str().unwrap(),
            "--env-file",
            envf.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(read(&log), VALUE);
    assert_eq!(s.entries("out"), vec!["plain"]);
    let text = read(&envf);
    assert!(text.contains("PLAIN") && !text.contains(VALUE), "{text}");
}

#[test]
fn file_outside_exec_and_malformed_file_options_are_usage_errors() {
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", VALUE);
    let s = Scratch::new();
    let dir = s.path("out");
    let d = dir.to_str().unwrap();
    let envf = s.path("app.env");
    for args in [
        vec!["fetch", "--secret", "db-password?file", "--dir", d],
        vec![
            "fetch",
            "--secret",
            "db-password?file",
            "--env-file",
            envf.to_str().unwrap(),
        ],
        vec!["watch", "--secret", "db-password?file", "--dir", d],
        vec!["doctor", "--secret", "db-password?file", "--dir", d],
    ] {
        let r = run(&emu, &args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr
                .contains("?file hands the value to the command `kvfetch exec` starts"),
            "{}",
            r.stderr
        );
        assert!(!dir.exists() && !envf.exists(), "nothing written: {args:?}");
    }
    let marker = s.path("started");
    let touch = format!("touch {}", marker.display());
    for (spec, why) in [
        ("db-password?file=yes", "file takes no value"),
        ("db-password?file&file", "given twice"),
        (
            "9X=db-password?file",
            "not a valid environment variable name",
        ),
        ("LD_PRELOAD=db-password?file", "--allow-env"),
    ] {
        let r = exec(
            &exec_env(&emu),
            &["--secret", spec, "--", "sh", "-c", &touch],
        );
        assert_eq!(r.code, 2, "{spec}: {}", r.stderr);
        assert!(r.stderr.contains(why), "{spec}: {}", r.stderr);
    }
    assert!(!marker.exists(), "the command never ran");
    // A *_FILE variable given the value itself works, with a warning naming the fix.
    let r = exec(
        &exec_env(&emu),
        &["--secret", "PW_FILE=db-password", "--", "sh", "-c", "true"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("add ?file") && r.stderr.contains("PW_FILE"),
        "{}",
        r.stderr
    );
    assert_no_leak(&r, &[VALUE]);
}

/// Copy `bin` and the libraries `ldd` names for it into `root`, at the same paths.
fn copy_with_libs(bin: &Path, root: &Path) {
    let out = std::process::Command::new("ldd").arg(bin).output().unwrap();
    let mut files = vec![bin.to_path_buf()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        files.extend(path);
    }
    for f in files {
        let dest = root.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
    }
}

/// A `FROM scratch`-like root: kvfetch, a shell and `cat`, their libraries, `/proc`, and no
/// `/dev` at all (so no `/dev/fd`): the path the variable holds still reads.
#[test]
fn the_path_works_in_a_scratch_like_root_without_dev() {
    if !root_or_skip("chroot and mounting /proc need root") {
        return;
    }
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", VALUE);
    let s = Scratch::new();
    let root = s.path("root");
    let which = |name: &str| {
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .unwrap();
        std::fs::canonicalize(String::from_utf8_lossy(&out.stdout).trim()).unwrap()
    };
    copy_with_libs(&which("cat"), &root);
    copy_with_libs(&which("sh"), &root);
    std::fs::copy(which("sh"), root.join("sh")).unwrap();
    std::fs::copy(which("cat"), root.join("cat")).unwrap();
    copy_with_libs(Path::new(BIN), &root);
    std::fs::copy(BIN, root.join("kvfetch")).unwrap();
    let env = exec_env(&emu);
    let ca = PathBuf::from(&env["KVFETCH_CA_FILE"]);
    let ca_in_root = root.join(ca.strip_prefix("/").unwrap());
    std::fs::create_dir_all(ca_in_root.parent().unwrap()).unwrap();
    std::fs::copy(&ca, &ca_in_root).unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    assert!(!root.join("dev").exists());
    let script = format!(
        "mount -t proc proc {r}/proc && exec chroot {r} /kvfetch exec --secret db-password?file -- /sh -c '/cat \"$DB_PASSWORD_FILE\"; echo; [ -e /dev/fd ] || echo no /dev/fd'",
        r = root.display()
    );
    let out = in_private_mounts(&script, &env).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{VALUE}\nno /dev/fd\n"),
        "{stderr}"
    );
}

#[test]
fn the_directory_a_killed_supervisor_left_goes_with_the_next_start() {
    let _one = one_supervisor();
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", "killed");
    let s = Scratch::new();
    let path = s.path("path");
    let script = |p: &Path| {
        format!(
            "echo \"$DB_PASSWORD_FILE\" > {}; while :; do sleep 0.05; done",
            p.display()
        )
    };
    let mut first = supervised(
        &exec_env(&emu),
        &["--secret", "db-password?file"],
        &script(&path),
    );
    first.wait("the first child", ms(5000), || read(&path).ends_with('\n'));
    let dir = private_dir(&read(&path));
    first.child.kill().unwrap(); // SIGKILL: kvfetch removes nothing
    first.child.wait().unwrap();
    assert!(dir.exists(), "a killed kvfetch leaves its directory");
    let path2 = s.path("path2");
    let mut second = supervised(
        &exec_env(&emu),
        &["--secret", "db-password?file"],
        &script(&path2),
    );
    second.wait("the second child", ms(5000), || {
        read(&path2).ends_with('\n')
    });
    assert!(!dir.exists(), "the next supervised exec removed it");
    let dir2 = private_dir(&read(&path2));
    let stderr = second.stop_and_stderr();
    assert!(stderr.contains("a killed kvfetch left"), "{stderr}");
    assert!(!dir2.exists());
}

#[test]
fn supervised_exec_with_on_change_none_only_rewrites_the_file() {
    let _one = one_supervisor();
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", "v1");
    let s = Scratch::new();
    let log = s.path("log");
    let script = format!(
        "trap 'echo signalled >> {l}.signals' USR1 USR2 HUP; while :; do cat \"$DB_PASSWORD_FILE\" > {l}.new && mv {l}.new {l}; sleep 0.05; done",
        l = log.display()
    );
    let mut sup = supervised(
        &exec_env(&emu),
        &["--secret", "db-password?file", "--on-change", "none"],
        &script,
    );
    sup.wait("the first read", ms(5000), || read(&log) == "v1");
    emu.set_secret("db-password", "v2");
    sup.wait("the rewritten file", ms(5000), || read(&log) == "v2");
    let stderr = sup.stop_and_stderr();
    assert!(!stderr.contains("restarting the child"), "{stderr}");
    assert_eq!(read(&s.path("log.signals")), "", "never signalled");
}

#[test]
fn supervised_exec_refuses_a_dev_shm_that_is_not_in_memory() {
    if !root_or_skip("bind-mounting over /dev/shm needs root") {
        return;
    }
    let disk = Scratch::under(&std::env::temp_dir());
    if std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(&disk.0)
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "tmpfs")
    {
        skip("the temp directory is on tmpfs too");
        return;
    }
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", VALUE);
    let marker = disk.path("started");
    let script = format!(
        "mount --bind {d} /dev/shm && exec {bin} exec --refresh 100ms --secret db-password?file -- sh -c 'touch {m}'",
        d = disk.0.display(),
        bin = BIN,
        m = marker.display()
    );
    let out = in_private_mounts(&script, &exec_env(&emu))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(
        stderr.contains("/dev/shm is not on tmpfs or ramfs"),
        "{stderr}"
    );
    assert!(!marker.exists(), "the command never ran");
    assert_eq!(
        emu.counters().kv_total_requests,
        0,
        "refused before any request"
    );
}

#[test]
fn a_file_that_cannot_be_rewritten_holds_the_signal_back_until_it_can() {
    let _one = one_supervisor();
    let emu = Emulator::start().unwrap();
    emu.set_secret("db-password", "v1");
    let s = Scratch::new();
    let (log, path) = (s.path("log"), s.path("path"));
    let script = format!(
        "trap 'echo >> {l}; cat \"$DB_PASSWORD_FILE\" >> {l}' USR2; echo \"$DB_PASSWORD_FILE\" > {p}; cat \"$DB_PASSWORD_FILE\" >> {l}; while :; do sleep 0.05; done",
        p = path.display(),
        l = log.display()
    );
    let mut sup = supervised(
        &exec_env(&emu),
        &["--secret", "db-password?file", "--on-change", "signal:USR2"],
        &script,
    );
    sup.wait("the first child", ms(5000), || read(&log) == "v1");
    // A directory where the file was: the rewrite fails (as on a full tmpfs).
    let file = PathBuf::from(read(&path).trim());
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    emu.set_secret("db-password", "v2");
    sup.wait("the failed rewrite", ms(5000), || {
        sup.stderr().contains("cannot be rewritten")
    });
    assert_eq!(read(&log), "v1", "no signal while the file is old");
    std::fs::remove_dir(&file).unwrap();
    sup.wait("the signal after the retried rewrite", ms(5000), || {
        read(&log) == "v1\nv2"
    });
    let stderr = sup.stop_and_stderr();
    assert!(!stderr.contains("v2\n"), "{stderr}");
}
