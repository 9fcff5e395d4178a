//! Run the local Azure emulator for people and scripts.
//!
//! `cargo run --example emulator -- --secret NAME=VALUE …` serves IMDS, the App Service identity
//! endpoint and a Key Vault on loopback, prints the environment that points kvfetch at it, and
//! stops cleanly on Ctrl-C (or SIGTERM).
//!
//! Options: `--secret NAME=VALUE` (repeatable), `--identity-addr ADDR`, `--vault-addr ADDR`
//! (default `127.0.0.1:0`, an ephemeral port), `--ca-file PATH`, `--token-lifetime SECS`,
//! `--kv-delay-ms MS`, `--env-file PATH` (also write the exports there).

use std::time::Duration;

use kvfetch_emulator::{Config, Emulator};

fn main() {
    if let Err(e) = run() {
        eprintln!("emulator: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut config = Config::default();
    let mut secrets = Vec::new();
    let (mut kv_delay, mut env_file) = (0u64, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--secret" => {
                let v = value()?;
                let (n, s) = v.split_once('=').ok_or("--secret takes NAME=VALUE")?;
                secrets.push((n.to_string(), s.to_string()));
            }
            "--identity-addr" => {
                config.identity_addr = value()?.parse().map_err(|e| format!("{e}"))?
            }
            "--vault-addr" => config.vault_addr = value()?.parse().map_err(|e| format!("{e}"))?,
            "--ca-file" => config.ca_file = Some(value()?.into()),
            "--token-lifetime" => {
                config.token_lifetime =
                    Duration::from_secs(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--kv-delay-ms" => kv_delay = value()?.parse().map_err(|e| format!("{e}"))?,
            "--env-file" => env_file = Some(value()?),
            "-h" | "--help" => {
                println!(
                    "usage: emulator [--secret NAME=VALUE]… [--identity-addr ADDR] [--vault-addr ADDR] [--ca-file PATH] [--token-lifetime SECS] [--kv-delay-ms MS] [--env-file PATH]"
                );
                return Ok(());
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    let emulator = Emulator::with_config(config).map_err(|e| format!("cannot start: {e}"))?;
    for (name, value) in &secrets {
        emulator.set_secret(name, value);
    }
    emulator.set_kv_delay(Duration::from_millis(kv_delay));
    let mut exports = String::new();
    for (k, v) in emulator.env() {
        exports.push_str(&format!("export {k}={v}\n"));
    }
    exports.push_str(&format!("# App Service / Container Apps flavour instead of IMDS:\n# export IDENTITY_ENDPOINT={} IDENTITY_HEADER={}\n", emulator.identity_endpoint(), emulator.identity_header()));
    exports.push_str(&format!("# control API: {}\n", emulator.control_url()));
    if let Some(path) = env_file {
        std::fs::write(&path, &exports).map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    print!("{exports}");
    eprintln!(
        "emulator: serving {} secret(s); Ctrl-C to stop",
        secrets.len()
    );
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| format!("signals: {e}"))?;
    signals.forever().next();
    eprintln!("emulator: stopped");
    Ok(())
}
