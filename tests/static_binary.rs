//! The release binary is static and works alone in an empty root, as in a `FROM scratch` image:
//! `chroot` into a directory holding only the binary, `/etc/hosts` and the emulator's CA file,
//! and fetch from the emulator. There is no Docker engine here; this is the same proof.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The static release binary that `scripts/build-static` built (CI builds it in its own step,
/// so `cargo test` stays fast for a developer and this test checks exactly what ships).
fn static_binary() -> PathBuf {
    let path = std::env::var("KVFETCH_STATIC_BIN").expect(
        "KVFETCH_STATIC_BIN names the static binary: KVFETCH_STATIC_BIN=$(scripts/build-static) cargo test --test static_binary -- --ignored",
    );
    PathBuf::from(path)
}

/// Whether an ELF file asks for a dynamic loader (has a PT_INTERP program header).
fn has_interpreter(path: &Path) -> bool {
    let elf = std::fs::read(path).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum)
        .any(|i| u32::from_le_bytes(elf[phoff + i * phentsize..][..4].try_into().unwrap()) == 3)
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[test]
#[ignore = "checks the static release binary: .ci/run builds it (scripts/build-static) and runs this with KVFETCH_STATIC_BIN"]
fn static_release_binary_runs_alone_in_an_empty_root() {
    let bin = static_binary();
    assert!(
        !has_interpreter(&bin),
        "the release binary must be statically linked"
    );
    let size = std::fs::metadata(&bin).unwrap().len();
    assert!(
        size <= 6 * 1024 * 1024,
        "release binary is {size} bytes; the budget is 6 MiB"
    );
    if !is_root() {
        eprintln!("skipping the chroot half: it needs root (CI runs as root)");
        return;
    }
    let emu = Emulator::start().unwrap();
    emu.set_secret("SampleSecret", "Hello Container Instances!");
    let root = Scratch::under(&std::env::temp_dir());
    std::fs::create_dir_all(root.path("etc")).unwrap();
    std::fs::write(root.path("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    std::fs::copy(&bin, root.path("kvfetch")).unwrap();
    std::fs::copy(emu.ca_file(), root.path("ca.pem")).unwrap();
    let chroot = ["/usr/sbin/chroot", "/sbin/chroot"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("chroot");
    let out = Command::new(chroot)
        .arg(&root.0)
        .args([
            "/kvfetch",
            "fetch",
            "--secret",
            "SampleSecret",
            "--dir",
            "/secrets",
            "--ca-file",
            "/ca.pem",
        ])
        .env_clear()
        .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", emu.imds_url())
        // A name, resolved through /etc/hosts by the static binary; a name is not a loopback
        // address, so the operator vouches for it.
        .env(
            "KVFETCH_VAULT",
            emu.vault_url().replace("127.0.0.1", "localhost"),
        )
        .env("KVFETCH_RESOURCE", "https://vault.azure.net")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(root.path("secrets/SampleSecret")).unwrap(),
        "Hello Container Instances!"
    );
    assert_eq!(mode(&root.path("secrets/SampleSecret")), 0o400);
    let mut entries: Vec<String> = std::fs::read_dir(&root.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        vec!["ca.pem", "etc", "kvfetch", "secrets"],
        "nothing else was needed or left"
    );
    assert_eq!(emu.counters().imds_token_requests, 1);
}
