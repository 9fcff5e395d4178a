//! A local stand-in for the three Azure endpoints kvfetch talks to: IMDS, the App Service /
//! Container Apps identity endpoint, and the Key Vault secrets data plane.
//!
//! Nothing in kvfetch may depend on reaching Azure, so this is how kvfetch is proven: every test,
//! the demo, the benchmarks and users' local runs talk to it over loopback. It follows
//! the protocol facts quirk for quirk, and the recorded SDK sessions in
//! `tests/fixtures/azure/` are replayed against it to check that it does.
//!
//! Two listeners: plain HTTP for the identity endpoints and the `/emulator/…` control API,
//! HTTPS (a generated CA plus leaf) for the vault. Tests drive it through [`Emulator`]'s methods;
//! scripts through the control API (see `control.rs`).

mod b64;
mod control;
mod hostile;
pub mod http;
mod identity;
mod state;
mod tls;
mod vault;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use std::{io, thread};

pub use state::{Counters, Fault, Identity, SecretInput};
pub use tls::VaultCert;
pub use vault::API_VERSIONS;

use http::{Reply, Request, Response};
use identity::Flavour;
use state::World;

/// Path of the App Service / Container Apps style endpoint on the plain listener.
pub const APP_SERVICE_PATH: &str = "/msi/token";

/// How the emulator starts.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address for the plain HTTP listener (identity endpoints and control); port 0 = ephemeral.
    pub identity_addr: SocketAddr,
    /// Address for the HTTPS vault listener; port 0 = ephemeral.
    pub vault_addr: SocketAddr,
    /// Where to write the CA file; a fresh temp directory when `None`.
    pub ca_file: Option<PathBuf>,
    /// Whether the host has a system-assigned identity.
    pub system_identity: bool,
    /// Token lifetime.
    pub token_lifetime: Duration,
    /// The `X-IDENTITY-HEADER` value the App Service endpoint expects.
    pub identity_header: String,
    /// Open the identity listener only after this long (connections are refused until then), as
    /// an Azure Container Instances group's identity endpoint may come up after the container.
    pub identity_start_delay: Duration,
    /// The certificate the vault presents: valid, or one a client must reject.
    pub vault_cert: VaultCert,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            identity_addr: "127.0.0.1:0".parse().expect("literal"),
            vault_addr: "127.0.0.1:0".parse().expect("literal"),
            ca_file: None,
            system_identity: true,
            token_lifetime: Duration::from_secs(86_400),
            identity_header: "emulator-identity-header".into(),
            identity_start_delay: Duration::ZERO,
            vault_cert: VaultCert::Valid,
        }
    }
}

struct Shared {
    world: Mutex<World>,
    identity_header: String,
    stop: Arc<AtomicBool>,
    /// Connections (on both listeners) whose thread is still running.
    open: Arc<AtomicUsize>,
}

/// A running emulator; dropping it stops the listeners.
pub struct Emulator {
    shared: Arc<Shared>,
    identity_addr: SocketAddr,
    vault_addr: SocketAddr,
    ca_file: PathBuf,
    temp_dir: Option<PathBuf>,
}

impl Emulator {
    /// Start with the default configuration (ephemeral ports, a system-assigned identity).
    pub fn start() -> io::Result<Emulator> {
        Emulator::with_config(Config::default())
    }

    /// Start with `config`.
    pub fn with_config(config: Config) -> io::Result<Emulator> {
        let tls = tls::generate(config.vault_cert)?;
        let (ca_file, temp_dir) = match &config.ca_file {
            Some(p) => (p.clone(), None),
            None => {
                let dir = temp_dir()?;
                (dir.join("emulator-ca.pem"), Some(dir))
            }
        };
        tls::write_ca(&tls, &ca_file)?;
        let world = World {
            tenant_id: state::guid("tenant"),
            system_identity: config
                .system_identity
                .then(|| Identity::user("system-assigned")),
            token_lifetime: config.token_lifetime,
            ..World::default()
        };
        let shared = Arc::new(Shared {
            world: Mutex::new(world),
            identity_header: config.identity_header.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            open: Arc::new(AtomicUsize::new(0)),
        });
        let plain = TcpListener::bind(config.identity_addr)?;
        let secure = TcpListener::bind(config.vault_addr)?;
        let (identity_addr, vault_addr) = (plain.local_addr()?, secure.local_addr()?);
        let s = shared.clone();
        let plain_handler: http::Handler = Arc::new(move |r: &Request| plain_route(&s, r));
        let s = shared.clone();
        let vault_handler: http::Handler = Arc::new(move |r: &Request| vault_route(&s, r));
        let (stop, open) = (shared.stop.clone(), shared.open.clone());
        let delay = config.identity_start_delay;
        // With a start delay, free the port now and bind it again later.
        let plain = if delay.is_zero() { Some(plain) } else { None };
        thread::spawn(move || {
            let listener = match plain {
                Some(l) => l,
                None => {
                    thread::sleep(delay);
                    match TcpListener::bind(identity_addr) {
                        Ok(l) => l,
                        Err(_) => return,
                    }
                }
            };
            http::serve(listener, tls::plain(), plain_handler, stop, open)
        });
        let (stop, open) = (shared.stop.clone(), shared.open.clone());
        let wrap = tls::wrap(tls.server.clone());
        thread::spawn(move || http::serve(secure, wrap, vault_handler, stop, open));
        Ok(Emulator {
            shared,
            identity_addr,
            vault_addr,
            ca_file,
            temp_dir,
        })
    }

    /// Base URL of the IMDS stand-in, for `AZURE_POD_IDENTITY_AUTHORITY_HOST`.
    pub fn imds_url(&self) -> String {
        format!("http://{}", self.identity_addr)
    }

    /// The App Service / Container Apps `IDENTITY_ENDPOINT`.
    pub fn identity_endpoint(&self) -> String {
        format!("http://{}{APP_SERVICE_PATH}", self.identity_addr)
    }

    /// The App Service / Container Apps `IDENTITY_HEADER`.
    pub fn identity_header(&self) -> &str {
        &self.shared.identity_header
    }

    /// The vault's base URL (`https://127.0.0.1:PORT`).
    pub fn vault_url(&self) -> String {
        format!("https://{}", self.vault_addr)
    }

    /// The control API's base URL.
    pub fn control_url(&self) -> String {
        format!("http://{}/emulator", self.identity_addr)
    }

    /// The PEM file of the CA that signed the vault's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The environment that points kvfetch at this emulator (IMDS flavour).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST".into(), self.imds_url()),
            ("KVFETCH_VAULT".into(), self.vault_url()),
            ("KVFETCH_CA_FILE".into(), self.ca_file.display().to_string()),
        ]
    }

    fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.shared)
    }

    /// Add a version of `name` holding `value`; returns the version id.
    pub fn set_secret(&self, name: &str, value: &str) -> String {
        self.set_secret_with(
            name,
            SecretInput {
                value: value.into(),
                ..Default::default()
            },
        )
    }

    /// Add a version of `name` with attributes; returns the version id.
    pub fn set_secret_with(&self, name: &str, input: SecretInput) -> String {
        self.world().set_secret(name, input)
    }

    /// Disable (or re-enable) the latest version of `name`.
    pub fn set_enabled(&self, name: &str, enabled: bool) -> bool {
        self.world().set_enabled(name, enabled)
    }

    /// Soft-delete `name`.
    pub fn delete_secret(&self, name: &str) -> bool {
        self.world().delete(name)
    }

    /// Deny (or allow again) the caller access to `name` (403 `ForbiddenByRbac`).
    pub fn deny(&self, name: &str, denied: bool) {
        let key = name.to_ascii_lowercase();
        let mut w = self.world();
        if denied {
            w.denied.insert(key);
        } else {
            w.denied.remove(&key);
        }
    }

    /// Make the vault use the access-policy permission model (true) or Azure RBAC (false, the
    /// default): a denied secret is answered as that model answers.
    pub fn set_access_policies(&self, on: bool) {
        self.world().access_policies = on;
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.world().token_lifetime = lifetime;
    }

    /// Shift the absolute times (`expires_on`, `not_before`) in token answers by `secs`, as a
    /// skewed clock between the identity endpoint and kvfetch's host would.
    pub fn set_clock_skew(&self, secs: i64) {
        self.world().clock_skew = secs;
    }

    /// Give the host a system-assigned identity, or take it away.
    pub fn set_system_identity(&self, present: bool) {
        self.world().system_identity = present.then(|| Identity::user("system-assigned"));
    }

    /// The system-assigned identity, if any.
    pub fn system_identity(&self) -> Option<Identity> {
        self.world().system_identity.clone()
    }

    /// Assign a user-assigned identity to the host.
    pub fn add_user_identity(&self, identity: Identity) {
        self.world().user_identities.push(identity);
    }

    /// Queue a fault for the next IMDS token request.
    pub fn push_imds_fault(&self, fault: Fault) {
        self.world().imds_faults.push_back(fault);
    }

    /// Queue a fault for the next Key Vault request.
    pub fn push_kv_fault(&self, fault: Fault) {
        self.world().kv_faults.push_back(fault);
    }

    /// Add this delay to every Key Vault answer (a real vault is not instant).
    pub fn set_kv_delay(&self, delay: Duration) {
        self.world().kv_delay = delay;
    }

    /// Connections the emulator holds open now, on both listeners: a connection counts from
    /// its accept until its thread ends (the client closed it, a fault dropped it, or a write to
    /// a client that went away failed). Idle keep-alive connections count.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.world().counters.clone()
    }

    /// Zero the counters.
    pub fn reset_counters(&self) {
        self.world().counters = Counters::default();
    }

    /// Issue a token for `resource` to the system identity without a request (for replays).
    pub fn issue_token(&self, resource: &str) -> String {
        let mut w = self.world();
        let identity = w
            .system_identity
            .clone()
            .unwrap_or_else(|| Identity::user("system-assigned"));
        let iat = state::now();
        let exp = iat + w.token_lifetime.as_secs();
        let token = identity::jwt(&w, &identity, resource, iat, exp);
        let issued = state::IssuedToken {
            audience: resource.trim_end_matches('/').into(),
            expires_on: exp,
        };
        w.tokens.insert(token.clone(), issued);
        token
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake both accept loops so their threads end.
        let _ = TcpStream::connect(self.identity_addr);
        let _ = TcpStream::connect(self.vault_addr);
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, World> {
    shared.world.lock().unwrap_or_else(|e| e.into_inner())
}

fn temp_dir() -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "kvfetch-emulator-{}-{}",
        std::process::id(),
        state::version_id()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn plain_route(shared: &Shared, req: &Request) -> Reply {
    let path = req.path.trim_end_matches('/');
    if path == "/metadata/identity/oauth2/token" {
        let (fault, token_lifetime) = {
            let mut w = lock(shared);
            w.counters.imds_token_requests += 1;
            w.note_agent(req);
            (w.imds_faults.pop_front(), w.token_lifetime.as_secs())
        };
        // A delay fault sleeps in here, without the lock, then answers normally.
        let service = identity::ImdsFaults { token_lifetime };
        return hostile::answer(fault, &service, || {
            identity::token(
                &mut lock(shared),
                req,
                Flavour::Imds,
                &shared.identity_header,
            )
        });
    }
    if path.eq_ignore_ascii_case(APP_SERVICE_PATH) {
        let mut w = lock(shared);
        w.counters.app_service_token_requests += 1;
        w.note_agent(req);
        return identity::token(&mut w, req, Flavour::AppService, &shared.identity_header);
    }
    if let Some(rest) = path.strip_prefix("/emulator") {
        return Reply::Respond(control::handle(&mut lock(shared), req, rest));
    }
    Reply::Respond(Response::text(404, "Not found"))
}

fn vault_route(shared: &Shared, req: &Request) -> Reply {
    let name = vault::secret_name(req);
    let (fault, delay, tenant) = {
        let mut w = lock(shared);
        w.count_kv(name.as_deref());
        w.note_agent(req);
        w.kv_in_flight += 1;
        w.counters.kv_max_concurrent = w.counters.kv_max_concurrent.max(w.kv_in_flight);
        (w.kv_faults.pop_front(), w.kv_delay, w.tenant_id.clone())
    };
    http::pause(delay);
    let service = vault::Faults { tenant_id: &tenant };
    let reply = hostile::answer(fault, &service, || {
        let ctx = vault::Ctx { tenant_id: &tenant };
        let response = vault::handle(&mut lock(shared), req, &ctx);
        Reply::Respond(with_kv_headers(response))
    });
    lock(shared).kv_in_flight -= 1;
    reply
}

fn with_kv_headers(response: Response) -> Response {
    response
        .with_header("Cache-Control", "no-cache")
        .with_header("x-ms-keyvault-region", "emulator")
        .with_header("x-ms-keyvault-service-version", "1.9.0.0")
        .with_header("x-ms-request-id", &state::guid(&state::version_id()))
}
