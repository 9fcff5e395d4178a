//! Shared test helpers: an emulator per test, the kvfetch binary run against it with every
//! endpoint pointed at loopback, and scratch directories on tmpfs.
#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use kvfetch_emulator::{Emulator, Fault, Identity, SecretInput};

pub const BIN: &str = env!("CARGO_BIN_EXE_kvfetch");

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
    let out: Output = Command::new(BIN)
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
