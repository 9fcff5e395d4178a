//! Run the local Azure emulator for people and scripts: every identity source the emulator
//! library serves (IMDS, App Service / Container Apps, legacy App Service, Cloud Shell, Azure
//! Arc, Service Fabric, workload identity's Entra endpoint) and a Key Vault, on loopback.
//!
//! It prints, and writes with `--env-file`, every endpoint and variable a client needs as
//! `export` lines to `source`: the IMDS block active, each other source a ready-to-uncomment
//! block, and `CONTROL` (the control API). It stops cleanly on Ctrl-C or SIGTERM. See `--help`
//! and docs/emulator.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kvfetch_emulator::{Config, Emulator, Identity, SecretPatch};

const HELP: &str = "\
usage: emulator [OPTION]…
Serve every Azure identity source and a Key Vault on loopback; print the variables to use them.

Secrets (each flag repeatable; attribute flags apply to the latest version of NAME):
  --secret NAME=VALUE           add a version of NAME
  --managed NAME                mark it managed (backs a certificate)
  --tag NAME:KEY=VALUE          add a tag
  --exp NAME=UNIX               attributes.exp (Unix seconds)
  --nbf NAME=UNIX               attributes.nbf (Unix seconds)
  --content-type NAME=TYPE      contentType
Identities:
  --user-identity LABEL         assign a user-assigned identity (ids printed as a comment)
  --no-system-identity          the host has no system-assigned identity
  --federate CLIENT_ID=FILE     workload identity: CLIENT_ID accepts the assertion in FILE (read
                                once at start; AZURE_FEDERATED_TOKEN_FILE in the env file)
Listeners (ADDR default 127.0.0.1:0, an ephemeral port):
  --identity-addr ADDR          plain HTTP: IMDS, App Service, legacy, Cloud Shell, Arc, Entra, control
  --vault-addr ADDR             HTTPS: Key Vault, and Entra for clients that need https
  --service-fabric-addr ADDR    HTTPS, self-signed (clients pin its thumbprint)
Source settings:
  --identity-header VALUE       IDENTITY_HEADER (App Service, Service Fabric) [emulator-identity-header]
  --msi-secret VALUE            MSI_SECRET (legacy App Service) [emulator-msi-secret]
  --arc-key-dir DIR             where Arc writes key files [a temp dir]; use /var/opt/azcmagent/tokens
                                (as root) for clients that accept keys only there
  --arc-realm-dir DIR           the directory Arc challenges name [--arc-key-dir]
  --legacy-date-expiry          legacy endpoint: expires_on as a 2017-era date string, not epoch
  --token-lifetime SECS         token lifetime [86400]
Other:
  --ca-file PATH                write the vault CA here [a temp file]
  --ca-bundle-file PATH         write the vault CA and the Service Fabric certificate here, for
                                clients that trust roots rather than pin (NODE_EXTRA_CA_CERTS)
  --kv-delay-ms MS              delay every vault answer [0]
  --env-file PATH               also write the export lines to PATH (mode 0600)
  -h, --help                    this help
";

/// The flags that take a value.
const VALUE_FLAGS: &[&str] = &[
    "--secret",
    "--managed",
    "--tag",
    "--exp",
    "--nbf",
    "--content-type",
    "--identity-addr",
    "--vault-addr",
    "--service-fabric-addr",
    "--ca-file",
    "--ca-bundle-file",
    "--token-lifetime",
    "--identity-header",
    "--msi-secret",
    "--arc-key-dir",
    "--arc-realm-dir",
    "--user-identity",
    "--federate",
    "--kv-delay-ms",
    "--env-file",
];

/// What the command line asks for beyond the library's [`Config`].
#[derive(Default)]
struct Plan {
    secrets: Vec<(String, String)>,
    patches: BTreeMap<String, SecretPatch>,
    users: Vec<String>,
    federations: Vec<(String, PathBuf)>,
    legacy_date_expiry: bool,
    kv_delay: u64,
    env_file: Option<String>,
    ca_bundle_file: Option<String>,
}

fn main() {
    match parse(std::env::args().skip(1)) {
        Ok(None) => print!("{HELP}"),
        Ok(Some((config, plan))) => {
            if let Err(e) = serve(config, plan) {
                eprintln!("emulator: {e}");
                std::process::exit(2);
            }
        }
        Err(e) => {
            eprintln!("emulator: {e} (see --help)");
            std::process::exit(2);
        }
    }
}

fn split<'a>(v: &'a str, sep: char, shape: &str) -> Result<(&'a str, &'a str), String> {
    v.split_once(sep)
        .filter(|(a, _)| !a.is_empty())
        .ok_or(format!("expected {shape}, got {v:?}"))
}

fn number<T: std::str::FromStr>(v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("not a number: {v:?}"))
}

fn addr(v: &str) -> Result<SocketAddr, String> {
    v.parse().map_err(|e| format!("{v:?}: {e}"))
}

/// The configuration and plan, or None for `--help`.
fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<(Config, Plan)>, String> {
    let (mut config, mut plan) = (Config::default(), Plan::default());
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        match flag.as_str() {
            "--no-system-identity" => config.system_identity = false,
            "--legacy-date-expiry" => plan.legacy_date_expiry = true,
            f if !VALUE_FLAGS.contains(&f) => return Err(format!("unknown option {f}")),
            _ => {
                let v = args.next().ok_or(format!("{flag} needs a value"))?;
                if !secret_flag(&mut plan, &flag, &v)? {
                    setting(&mut config, &mut plan, &flag, v)?;
                }
            }
        }
    }
    Ok(Some((config, plan)))
}

/// A secret or attribute flag; false when `flag` is none of them.
fn secret_flag(plan: &mut Plan, flag: &str, v: &str) -> Result<bool, String> {
    fn name<'a>(v: &'a str, sep: char, shape: &str) -> Result<(String, &'a str), String> {
        split(v, sep, shape).map(|(n, r)| (n.to_string(), r))
    }
    match flag {
        "--secret" => {
            let (n, value) = name(v, '=', "NAME=VALUE")?;
            plan.secrets.push((n, value.to_string()));
        }
        "--managed" => plan.patches.entry(v.to_string()).or_default().managed = Some(true),
        "--tag" => {
            let (n, kv) = name(v, ':', "NAME:KEY=VALUE")?;
            let (k, t) = split(kv, '=', "NAME:KEY=VALUE")?;
            let patch = plan.patches.entry(n).or_default();
            patch.tags.insert(k.to_string(), t.to_string());
        }
        "--exp" | "--nbf" => {
            let (n, t) = name(v, '=', "NAME=UNIX")?;
            let patch = plan.patches.entry(n).or_default();
            let slot = if flag == "--exp" {
                &mut patch.exp
            } else {
                &mut patch.nbf
            };
            *slot = Some(number(t)?);
        }
        "--content-type" => {
            let (n, t) = name(v, '=', "NAME=TYPE")?;
            plan.patches.entry(n).or_default().content_type = Some(t.to_string());
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn setting(config: &mut Config, plan: &mut Plan, flag: &str, v: String) -> Result<(), String> {
    match flag {
        "--identity-addr" => config.identity_addr = addr(&v)?,
        "--vault-addr" => config.vault_addr = addr(&v)?,
        "--service-fabric-addr" => config.service_fabric_addr = addr(&v)?,
        "--ca-file" => config.ca_file = Some(v.into()),
        "--token-lifetime" => config.token_lifetime = Duration::from_secs(number(&v)?),
        "--identity-header" => config.identity_header = v,
        "--msi-secret" => config.msi_secret = v,
        "--arc-key-dir" => config.arc_key_dir = Some(v.into()),
        "--arc-realm-dir" => config.arc_realm_dir = Some(v.into()),
        "--user-identity" => plan.users.push(v),
        "--federate" => {
            let (id, file) = split(&v, '=', "CLIENT_ID=ASSERTION_FILE")?;
            plan.federations.push((id.to_string(), file.into()));
        }
        "--kv-delay-ms" => plan.kv_delay = number(&v)?,
        "--env-file" => plan.env_file = Some(v),
        "--ca-bundle-file" => plan.ca_bundle_file = Some(v),
        other => return Err(format!("unknown option {other}")),
    }
    Ok(())
}

fn serve(config: Config, plan: Plan) -> Result<(), String> {
    let emulator = Emulator::with_config(config).map_err(|e| format!("cannot start: {e}"))?;
    for (name, value) in &plan.secrets {
        emulator.set_secret(name, value);
    }
    for (name, patch) in &plan.patches {
        if !emulator.patch_secret(name, patch.clone()) {
            return Err(format!("attributes for {name}, which no --secret adds"));
        }
    }
    let mut users = Vec::new();
    for label in &plan.users {
        let identity = Identity::user(label);
        emulator.add_user_identity(identity.clone());
        users.push((label.clone(), identity));
    }
    for (client_id, file) in &plan.federations {
        let assertion = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        emulator.federate(client_id, assertion.trim_end());
    }
    emulator.set_legacy_date_expiry(plan.legacy_date_expiry);
    emulator.set_kv_delay(Duration::from_millis(plan.kv_delay));
    if let Some(path) = &plan.ca_bundle_file {
        let ca = std::fs::read_to_string(emulator.ca_file()).map_err(|e| format!("CA: {e}"))?;
        let bundle = format!("{ca}{}", emulator.service_fabric_cert_pem());
        std::fs::write(path, bundle).map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    let exports = exports(&emulator, &plan, &users);
    if let Some(path) = &plan.env_file {
        write_private(path, &exports).map_err(|e| format!("cannot write {path}: {e}"))?;
    }
    print!("{exports}");
    eprintln!(
        "emulator: serving {} secret(s); Ctrl-C to stop",
        plan.secrets.len()
    );
    wait_for_signal()
}

fn write_private(path: &str, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

fn wait_for_signal() -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| format!("signals: {e}"))?;
    signals.forever().next();
    eprintln!("emulator: stopped");
    Ok(())
}

/// Single-quote `v` for a POSIX shell.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

/// One block of `export` lines, commented out unless `active`.
fn block(title: &str, active: bool, vars: &[(&str, String)]) -> String {
    let mut out = format!("\n# {title}\n");
    for (k, v) in vars {
        let prefix = if active { "" } else { "# " };
        out.push_str(&format!("{prefix}export {k}={}\n", quote(v)));
    }
    out
}

/// Everything a client needs, as lines to `source`.
fn exports(emu: &Emulator, plan: &Plan, users: &[(String, Identity)]) -> String {
    let header = emu.identity_header().to_string();
    let mut out = String::from(
        "# kvfetch emulator: `. FILE` in a shell. The IMDS block is active; to use another source,\n\
         # uncomment its block (one at a time: a client takes the first complete source it finds,\n\
         # workload identity, Service Fabric, App Service, legacy / Cloud Shell, Arc, then IMDS).\n",
    );
    out += &block(
        "Common: the control API, the vault, its CA, IMDS (a wrong fallback lands here)",
        true,
        &[
            ("CONTROL", emu.control_url()),
            ("KVFETCH_VAULT", emu.vault_url()),
            ("KVFETCH_CA_FILE", emu.ca_file().display().to_string()),
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", emu.imds_url()),
        ],
    );
    out += "# The Azure SDKs trust the CA through connection_verify=\"$KVFETCH_CA_FILE\" (Python) or\n\
            # NODE_EXTRA_CA_CERTS (JavaScript; for Service Fabric too, a --ca-bundle-file);\n\
            # docs/emulator.md lists the client options they need.\n";
    out += &block(
        "App Service / Container Apps",
        false,
        &[
            ("IDENTITY_ENDPOINT", emu.identity_endpoint()),
            ("IDENTITY_HEADER", header.clone()),
        ],
    );
    out += &block(
        "Legacy App Service / Azure ML (api-version 2017-09-01)",
        false,
        &[
            ("MSI_ENDPOINT", emu.msi_endpoint()),
            ("MSI_SECRET", emu.msi_secret().to_string()),
        ],
    );
    out += &block(
        "Cloud Shell (MSI_ENDPOINT alone)",
        false,
        &[("MSI_ENDPOINT", emu.cloud_shell_endpoint())],
    );
    out += &block(
        &format!(
            "Azure Arc: key files in {} (clients read them from /var/opt/azcmagent/tokens)",
            emu.arc_key_dir().display()
        ),
        false,
        &[
            ("IDENTITY_ENDPOINT", emu.arc_endpoint()),
            ("IMDS_ENDPOINT", emu.arc_imds_endpoint()),
        ],
    );
    out += &block(
        "Service Fabric (HTTPS, self-signed: clients pin the thumbprint)",
        false,
        &[
            ("IDENTITY_ENDPOINT", emu.service_fabric_endpoint()),
            ("IDENTITY_HEADER", header),
            (
                "IDENTITY_SERVER_THUMBPRINT",
                emu.service_fabric_thumbprint(),
            ),
        ],
    );
    out += &workload_block(emu, plan);
    for (label, id) in users {
        out += &format!(
            "\n# user-assigned identity {label}: client_id {} object_id {} resource_id {}\n",
            id.client_id, id.object_id, id.resource_id
        );
    }
    out
}

/// Workload identity: the HTTPS authority (with the vault's CA), the tenant and, with
/// `--federate`, the first federation's client id and token file.
fn workload_block(emu: &Emulator, plan: &Plan) -> String {
    let mut vars = vec![
        ("AZURE_AUTHORITY_HOST", emu.authority_url_https()),
        ("AZURE_TENANT_ID", emu.tenant_id()),
    ];
    let title = match plan.federations.first() {
        Some((client_id, file)) => {
            vars.push(("AZURE_CLIENT_ID", client_id.clone()));
            let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.clone());
            vars.push(("AZURE_FEDERATED_TOKEN_FILE", file.display().to_string()));
            format!(
                "Workload identity: Entra over HTTPS (the vault's CA); the same in plain HTTP: {}",
                emu.authority_url()
            )
        }
        None => {
            "Workload identity: start with --federate CLIENT_ID=ASSERTION_FILE to use it".into()
        }
    };
    block(&title, false, &vars)
}
