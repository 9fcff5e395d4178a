//! The floor `bench/run fetch` measures kvfetch against: a bare, hand-written client of the same
//! two endpoints, on the same HTTP stack (ureq 3, rustls with ring), with none of kvfetch's
//! checks, retries, messages or atomic writes.
//!
//! One token request to the managed-identity endpoint, then the named secrets over 8 threads
//! sharing one agent (kept-alive connections), each value written to `$KVFETCH_DIR/NAME` with
//! mode 0400. Reads what the emulator's env file exports: `AZURE_POD_IDENTITY_AUTHORITY_HOST`,
//! `KVFETCH_VAULT`, `KVFETCH_CA_FILE`, plus `KVFETCH_SECRETS` (comma-separated) and `KVFETCH_DIR`.
//! Any failure panics: this is a yardstick, not a tool.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ureq::Agent;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

const THREADS: usize = 8;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

fn main() {
    let imds = var("AZURE_POD_IDENTITY_AUTHORITY_HOST");
    let vault = var("KVFETCH_VAULT");
    let dir = var("KVFETCH_DIR");
    let names: Vec<String> = var("KVFETCH_SECRETS")
        .split(',')
        .map(str::to_string)
        .collect();
    let token = token(&imds);
    let agent = vault_agent(&std::fs::read(var("KVFETCH_CA_FILE")).expect("CA file"));

    let next = Arc::new(AtomicUsize::new(0));
    let names = Arc::new(names);
    let failed = Arc::new(Mutex::new(None::<String>));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (next, names, agent) = (next.clone(), names.clone(), agent.clone());
            let (token, vault, dir, failed) =
                (token.clone(), vault.clone(), dir.clone(), failed.clone());
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(name) = names.get(i) else { break };
                    if let Err(e) = fetch_one(&agent, &vault, &token, name, &dir) {
                        *failed.lock().unwrap() = Some(format!("{name}: {e}"));
                        break;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    if let Some(e) = failed.lock().unwrap().take() {
        panic!("{e}");
    }
}

fn token(imds: &str) -> String {
    let agent: Agent = Agent::config_builder().proxy(None).build().into();
    let url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net",
        imds.trim_end_matches('/')
    );
    let body = agent
        .get(&url)
        .header("Metadata", "true")
        .call()
        .expect("token request")
        .body_mut()
        .read_to_string()
        .expect("token body");
    let json: serde_json::Value = serde_json::from_str(&body).expect("token JSON");
    json["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

fn vault_agent(ca_pem: &[u8]) -> Agent {
    let roots: Vec<Certificate<'static>> = ureq::tls::parse_pem(ca_pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let tls = TlsConfig::builder()
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .root_certs(RootCerts::new_with_certs(&roots))
        .build();
    Agent::config_builder()
        .proxy(None)
        .tls_config(tls)
        .max_idle_connections_per_host(THREADS)
        .build()
        .into()
}

fn fetch_one(agent: &Agent, vault: &str, token: &str, name: &str, dir: &str) -> Result<(), String> {
    let url = format!(
        "{}/secrets/{name}?api-version=7.5",
        vault.trim_end_matches('/')
    );
    let body = agent
        .get(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .map_err(|e| e.to_string())?
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let value = json["value"].as_str().ok_or("no value")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(format!("{dir}/{name}"))
        .map_err(|e| e.to_string())?;
    f.write_all(value.as_bytes()).map_err(|e| e.to_string())
}
