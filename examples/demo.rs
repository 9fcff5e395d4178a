//! The Quick start: run the main job here, with no Azure account.
//!
//! Starts the emulator with the seed's `SampleSecret`, runs `kvfetch fetch` against it (through
//! the same `kvfetch::run` entry the binary uses) into a fresh directory, and shows what was
//! written. The value is printed only because this is a demo secret.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use kvfetch_emulator::Emulator;

fn main() {
    let emu = Emulator::start().expect("start the emulator");
    emu.set_secret("SampleSecret", "Hello Container Instances!");
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm".into()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("kvfetch-demo-{}", std::process::id()));
    let out = dir.join("secrets");
    let env_file = dir.join("app.env");
    // kvfetch creates --dir, but the env file's directory must exist (as a volume would).
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .expect("create the demo directory");

    let mut env: HashMap<String, String> = emu.env().into_iter().collect();
    env.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
    let args: Vec<String> = [
        "fetch",
        "--secret",
        "SampleSecret",
        "--dir",
        out.to_str().unwrap(),
        "--env-file",
        env_file.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    println!("# the environment this demo gives kvfetch (the emulator and its CA file live only");
    println!(
        "# while the demo runs; for a shell of your own, start: cargo run --example emulator)"
    );
    for (k, v) in emu.env() {
        println!("#   {k}={v}");
    }
    println!("kvfetch {}", args.join(" "));
    let code = kvfetch::run(&args, &env);
    println!("exit code: {code}");
    for path in [out.join("SampleSecret"), env_file.clone()] {
        if let (Ok(meta), Ok(text)) = (std::fs::metadata(&path), std::fs::read_to_string(&path)) {
            println!(
                "{} (mode {:o}, {} bytes): {text:?}",
                path.display(),
                meta.permissions().mode() & 0o7777,
                meta.len()
            );
        }
    }
    let c = emu.counters();
    println!(
        "token requests: {}, Key Vault requests: {}",
        c.imds_token_requests, c.kv_total_requests
    );
    println!(
        "(the demo removes {} and stops the emulator now)",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(emu); // removes the emulator's temp directory (exit would skip it)
    std::process::exit(code.into());
}
