//! A local stand-in for the Azure endpoints kvfetch talks to: the managed-identity token sources
//! (IMDS, App Service / Container Apps, legacy App Service `MSI_ENDPOINT`, Cloud Shell, Azure
//! Arc, Service Fabric), the Entra token endpoint AKS workload identity exchanges its federated
//! token at, and the Key Vault secrets data plane.
//!
//! Nothing in kvfetch may depend on reaching Azure, so this is how kvfetch is proven: every test,
//! the demo, the benchmarks and users' local runs talk to it over loopback. It follows
//! the protocol facts quirk for quirk, and the recorded SDK sessions in
//! `tests/fixtures/azure/` are replayed against it to check that it does.
//!
//! Three listeners: plain HTTP for the identity endpoints, the Entra endpoint and the
//! `/emulator/…` control API; HTTPS (a generated CA plus leaf) for the vault, and for the Entra
//! endpoint with its OIDC discovery document again (MSAL and the Azure SDKs want an https
//! authority); and HTTPS with a self-signed certificate for Service Fabric, whose clients pin it
//! by thumbprint. Tests drive it
//! through [`Emulator`]'s methods; scripts through the control API (see `control.rs`).

mod b64;
mod control;
mod echo;
mod entra;
mod hostile;
pub mod http;
mod identity;
mod sources;
mod state;
mod time;
mod tls;
mod vault;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use std::{io, thread};

pub use sources::ARC_API_VERSIONS;
pub use state::{Counters, Fault, FloodKind, Identity, SecretInput, SecretPatch};
pub use tls::VaultCert;
pub use vault::API_VERSIONS;

use http::{Reply, Request, Response};
use identity::Flavour;
use state::World;

/// A `--notify-url` path on the vault's TLS listener (counted in `Counters::notify_posts`).
pub const NOTIFY_PATH: &str = "/emulator/notify";

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
    /// The `IDENTITY_HEADER` value: the App Service endpoint expects it in `X-IDENTITY-HEADER`,
    /// the Service Fabric endpoint in `Secret`.
    pub identity_header: String,
    /// Open the identity listener only after this long (connections are refused until then), as
    /// an Azure Container Instances group's identity endpoint may come up after the container.
    /// With a fixed `identity_addr` (port not 0) the address need not exist yet: after the delay
    /// the emulator keeps trying to bind it (every 20 ms) until it does, so a test can add
    /// `169.254.169.254` to `lo` while kvfetch is already waiting.
    pub identity_start_delay: Duration,
    /// The certificate the vault presents: valid, or one a client must reject.
    pub vault_cert: VaultCert,
    /// DNS names the vault's certificate holds beside the loopback ones (e.g.
    /// `*.vault.azure.net`, for a test that names the vault as users do).
    pub vault_names: Vec<String>,
    /// Address for the Service Fabric HTTPS listener (self-signed certificate); port 0 =
    /// ephemeral.
    pub service_fabric_addr: SocketAddr,
    /// Where the Azure Arc endpoint writes its key files (created if missing); a directory in
    /// the emulator's temp directory when `None`.
    pub arc_key_dir: Option<PathBuf>,
    /// The directory Arc challenges name (where a client sees `arc_key_dir`, e.g. bind-mounted
    /// at `/var/opt/azcmagent/tokens` in a test's mount namespace); `arc_key_dir` when `None`.
    pub arc_realm_dir: Option<PathBuf>,
    /// The `MSI_SECRET` the legacy App Service endpoint expects in its `secret` header.
    pub msi_secret: String,
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
            vault_names: Vec::new(),
            service_fabric_addr: "127.0.0.1:0".parse().expect("literal"),
            arc_key_dir: None,
            arc_realm_dir: None,
            msi_secret: "emulator-msi-secret".into(),
        }
    }
}

struct Shared {
    world: Mutex<World>,
    identity_header: String,
    msi_secret: String,
    arc_key_dir: PathBuf,
    arc_realm_dir: PathBuf,
    stop: Arc<AtomicBool>,
    /// Connections (on every listener) whose thread is still running.
    open: Arc<AtomicUsize>,
}

/// Bind `addr`; with `retry`, keep trying every 20 ms (the address may not exist yet) until it
/// binds or the emulator stops.
fn bind_when_possible(addr: SocketAddr, retry: bool, stop: &AtomicBool) -> Option<TcpListener> {
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return Some(l),
            Err(_) if retry && !stop.load(Ordering::SeqCst) => {
                thread::sleep(Duration::from_millis(20))
            }
            Err(_) => return None,
        }
    }
}

/// A running emulator; dropping it stops the listeners.
pub struct Emulator {
    shared: Arc<Shared>,
    identity_addr: SocketAddr,
    vault_addr: SocketAddr,
    service_fabric_addr: SocketAddr,
    service_fabric_thumbprint: String,
    service_fabric_pem: String,
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
        let tls = tls::generate(config.vault_cert, &config.vault_names)?;
        let service_fabric_tls = tls::self_signed("kvfetch emulator service fabric")?;
        let temp_dir = if config.ca_file.is_none() || config.arc_key_dir.is_none() {
            Some(temp_dir()?)
        } else {
            None
        };
        let in_temp = |name: &str| temp_dir.as_ref().expect("made when needed").join(name);
        let ca_file = config
            .ca_file
            .clone()
            .unwrap_or_else(|| in_temp("emulator-ca.pem"));
        tls::write_ca(&tls, &ca_file)?;
        let arc_key_dir = match &config.arc_key_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                dir.clone()
            }
            None => {
                let dir = in_temp("arc-tokens");
                std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
                dir
            }
        };
        // The realm names the file by its canonical path, as clients check it.
        let arc_key_dir = arc_key_dir.canonicalize()?;
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
            msi_secret: config.msi_secret.clone(),
            arc_realm_dir: config
                .arc_realm_dir
                .clone()
                .unwrap_or_else(|| arc_key_dir.clone()),
            arc_key_dir,
            stop: Arc::new(AtomicBool::new(false)),
            open: Arc::new(AtomicUsize::new(0)),
        });
        let delay = config.identity_start_delay;
        // A late start on a fixed address binds it only then (the address may not exist yet);
        // on an ephemeral port, bind now to learn the port, free it, and bind it again later.
        let late_fixed = !delay.is_zero() && config.identity_addr.port() != 0;
        let plain = match late_fixed {
            true => None,
            false => Some(TcpListener::bind(config.identity_addr)?),
        };
        let secure = TcpListener::bind(config.vault_addr)?;
        let fabric = TcpListener::bind(config.service_fabric_addr)?;
        let identity_addr = match &plain {
            Some(l) => l.local_addr()?,
            None => config.identity_addr,
        };
        let vault_addr = secure.local_addr()?;
        let service_fabric_addr = fabric.local_addr()?;
        let s = shared.clone();
        let plain_handler: http::Handler = Arc::new(move |r: &Request| plain_route(&s, r));
        let s = shared.clone();
        let vault_handler: http::Handler = Arc::new(move |r: &Request| vault_route(&s, r));
        let (stop, open) = (shared.stop.clone(), shared.open.clone());
        let plain = if delay.is_zero() { plain } else { None };
        thread::spawn(move || {
            let listener = match plain {
                Some(l) => l,
                None => {
                    thread::sleep(delay);
                    match bind_when_possible(identity_addr, late_fixed, &stop) {
                        Some(l) => l,
                        None => return,
                    }
                }
            };
            http::serve(listener, tls::plain(), plain_handler, stop, open)
        });
        let (stop, open) = (shared.stop.clone(), shared.open.clone());
        let (s, c) = (shared.clone(), shared.clone());
        let wrap = tls::wrap_counting(
            tls.server.clone(),
            Arc::new(move || lock(&c).counters.kv_connections += 1),
            Arc::new(move || lock(&s).counters.kv_full_tls_handshakes += 1),
        );
        thread::spawn(move || http::serve(secure, wrap, vault_handler, stop, open));
        let s = shared.clone();
        let fabric_handler: http::Handler = Arc::new(move |r: &Request| fabric_route(&s, r));
        let (stop, open) = (shared.stop.clone(), shared.open.clone());
        let wrap = tls::wrap(service_fabric_tls.server);
        thread::spawn(move || http::serve(fabric, wrap, fabric_handler, stop, open));
        Ok(Emulator {
            shared,
            identity_addr,
            vault_addr,
            service_fabric_addr,
            service_fabric_thumbprint: tls::thumbprint(&service_fabric_tls.der),
            service_fabric_pem: service_fabric_tls.pem.clone(),
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

    /// The App Service / Container Apps (and Service Fabric) `IDENTITY_HEADER`.
    pub fn identity_header(&self) -> &str {
        &self.shared.identity_header
    }

    /// The authority host for workload identity (`AZURE_AUTHORITY_HOST`): `http://127.0.0.1:PORT`,
    /// where `POST /{tenant}/oauth2/v2.0/token` is the Entra token endpoint.
    pub fn authority_url(&self) -> String {
        format!("http://{}", self.identity_addr)
    }

    /// The authority host over HTTPS (`https://127.0.0.1:PORT`, the vault's listener and CA),
    /// for clients that refuse a plain one, as MSAL and the Azure SDKs do: it serves
    /// `POST /{tenant}/oauth2/v2.0/token` and `GET /{tenant}/v2.0/.well-known/openid-configuration`.
    pub fn authority_url_https(&self) -> String {
        format!("https://{}", self.vault_addr)
    }

    /// The tenant the Entra endpoint knows (`AZURE_TENANT_ID`); tokens carry it as `tid`.
    pub fn tenant_id(&self) -> String {
        self.world().tenant_id.clone()
    }

    /// Register an app registration / user-assigned identity with this client id
    /// (`AZURE_CLIENT_ID`) whose federated credential accepts exactly `assertion` (the text of
    /// `AZURE_FEDERATED_TOKEN_FILE`). Called again for the same client id, it replaces the
    /// accepted assertion, as a rotated token file does; the identity stays the same.
    pub fn federate(&self, client_id: &str, assertion: &str) -> Identity {
        entra::federate(&mut self.world(), client_id, assertion)
    }

    /// Answer this assertion as expired (AADSTS700024) from now on.
    pub fn expire_assertion(&self, assertion: &str) {
        self.world()
            .expired_assertions
            .insert(assertion.to_string(), state::now());
    }

    /// Queue a fault for the next request to the Entra token endpoint.
    pub fn push_entra_fault(&self, fault: Fault) {
        self.world().entra_faults.push_back(fault);
    }

    /// The legacy App Service `MSI_ENDPOINT` (api-version 2017-09-01, header `secret`).
    pub fn msi_endpoint(&self) -> String {
        format!("http://{}{}", self.identity_addr, sources::LEGACY_MSI_PATH)
    }

    /// The legacy App Service `MSI_SECRET`.
    pub fn msi_secret(&self) -> &str {
        &self.shared.msi_secret
    }

    /// The Cloud Shell `MSI_ENDPOINT` (set without `MSI_SECRET`).
    pub fn cloud_shell_endpoint(&self) -> String {
        format!("http://{}{}", self.identity_addr, sources::CLOUD_SHELL_PATH)
    }

    /// The Azure Arc `IDENTITY_ENDPOINT` (the full token URL).
    pub fn arc_endpoint(&self) -> String {
        format!("http://{}{}", self.identity_addr, sources::ARC_PATH)
    }

    /// The Azure Arc `IMDS_ENDPOINT` (`http://127.0.0.1:PORT/arc`).
    pub fn arc_imds_endpoint(&self) -> String {
        format!("http://{}{}", self.identity_addr, sources::ARC_BASE)
    }

    /// The directory (canonical path) the Arc endpoint writes its key files to: what a client
    /// must accept a challenge's realm in, instead of `/var/opt/azcmagent/tokens`.
    pub fn arc_key_dir(&self) -> &Path {
        &self.shared.arc_key_dir
    }

    /// Make Arc challenges name exactly `path` as their realm, writing nothing (and then no key
    /// is accepted), so a client's checks of the realm can be tested; `None` goes back to
    /// writing a fresh key file for each challenge.
    pub fn set_arc_realm(&self, path: Option<String>) {
        self.world().arc_realm = path;
    }

    /// Make Arc answer every request with a fresh challenge, the key of the last one included
    /// (an agent that rejects its own keys).
    pub fn set_arc_rejects_keys(&self, on: bool) {
        self.world().arc_rejects_keys = on;
    }

    /// The Service Fabric `IDENTITY_ENDPOINT` (`https://127.0.0.1:PORT/sf/token`); its header is
    /// [`Emulator::identity_header`].
    pub fn service_fabric_endpoint(&self) -> String {
        format!(
            "https://{}{}",
            self.service_fabric_addr,
            sources::SERVICE_FABRIC_PATH
        )
    }

    /// The Service Fabric `IDENTITY_SERVER_THUMBPRINT`: the SHA-1 of its self-signed
    /// certificate's DER, 40 upper-case hex digits.
    pub fn service_fabric_thumbprint(&self) -> String {
        self.service_fabric_thumbprint.clone()
    }

    /// The Service Fabric endpoint's self-signed certificate as PEM, for clients that trust it
    /// as a root rather than pin its thumbprint (MSAL for JavaScript: `NODE_EXTRA_CA_CERTS`).
    pub fn service_fabric_cert_pem(&self) -> &str {
        &self.service_fabric_pem
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

    /// Change attributes of the latest version of `name` (managed, tags, exp, nbf,
    /// contentType); false when there is no such secret.
    pub fn patch_secret(&self, name: &str, patch: SecretPatch) -> bool {
        self.world().patch_latest(name, patch)
    }

    /// Make the legacy endpoint write `expires_on` as the 2017-era date string
    /// (`09/14/2017 01:05:09 PM +00:00`, what App Service answered in 2019-2020) instead of the
    /// epoch seconds it writes by default (see docs/emulator.md).
    pub fn set_legacy_date_expiry(&self, on: bool) {
        self.world().legacy_date_expiry = on;
    }

    /// Disable (or re-enable) the latest version of `name`.
    pub fn set_enabled(&self, name: &str, enabled: bool) -> bool {
        self.world().set_enabled(name, enabled)
    }

    /// Add a version of `name` holding a certificate as Key Vault stores one (see
    /// [`Certificate`]); returns the version id.
    pub fn set_certificate(&self, name: &str, certificate: Certificate) -> String {
        let (value, content_type) = certificate.secret();
        self.set_secret_with(
            name,
            SecretInput {
                value: value.trim().to_string(),
                content_type: Some(content_type.into()),
                managed: true,
                ..Default::default()
            },
        )
    }

    /// Refuse (or allow again) listing secrets (403, as without the `list` permission).
    pub fn set_list_denied(&self, denied: bool) {
        self.world().list_denied = denied;
    }

    /// Follow every page of a listing with an empty page that still has a `nextLink`, and use
    /// `page_size` items per page when the request names none.
    pub fn set_list_paging(&self, page_size: Option<usize>, empty_pages: bool) {
        let mut w = self.world();
        w.list_page_size = page_size;
        w.empty_pages = empty_pages;
    }

    /// List `pages` pages of `per_page` generated entries each (names `f{page}x{entry}`, no
    /// attributes, each page's `nextLink` to the next), instead of the vault's own secrets: a
    /// hostile or broken vault's list of any size and shape. Generated as it is served. None:
    /// list the vault's secrets again.
    pub fn set_list_flood(&self, flood: Option<(usize, usize)>) {
        self.world().list_flood = flood;
    }

    /// What each entry of the list `set_list_flood` generates is: valid names (the default),
    /// ids that name no valid secret, or disabled secrets.
    pub fn set_list_flood_kind(&self, kind: FloodKind) {
        self.world().list_flood_kind = kind;
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

    /// Queue a fault for the next Service Fabric token request (its own HTTPS listener).
    pub fn push_service_fabric_fault(&self, fault: Fault) {
        self.world().service_fabric_faults.push_back(fault);
    }

    /// Queue a fault for the next Key Vault request.
    pub fn push_kv_fault(&self, fault: Fault) {
        self.world().kv_faults.push_back(fault);
    }

    /// IMDS answers 410 for `gone` after the first token request it sees (as while an identity
    /// is being assigned), then answers normally, each answer `then` late.
    pub fn set_imds_gone(&self, gone: Duration, then: Duration) {
        let mut w = self.world();
        w.imds_gone = Some((gone, then));
        w.imds_first = None;
    }

    /// Limit the vault to `per_second` requests in each second (fixed one-second windows);
    /// beyond it, 429 with `Retry-After: 1`, as Key Vault throttles a vault. None: no limit.
    pub fn set_kv_rate_limit(&self, per_second: Option<u64>) {
        let mut w = self.world();
        w.kv_rate_limit = per_second;
        w.kv_window = None;
    }

    /// Add this delay to every Key Vault answer (a real vault is not instant).
    pub fn set_kv_delay(&self, delay: Duration) {
        self.world().kv_delay = delay;
    }

    /// Connections the emulator holds open now, on every listener: a connection counts from
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

    /// From now on (`Some((status, at))`), every token request that carries a credential (the
    /// App Service `X-IDENTITY-HEADER`, the legacy and Service Fabric `secret`, Arc's
    /// `Authorization: Basic <key>`, Entra's `client_assertion`) is answered `status` with the
    /// endpoint's error body quoting that credential, starting `at` characters into the error
    /// text (after filler); a hostile endpoint that echoes credentials. `None` stops it.
    pub fn echo_credentials(&self, echo: Option<(u16, usize)>) {
        self.world().echo_credentials = echo;
    }

    /// Issue a token for `resource` to the system identity without a request (for replays).
    pub fn issue_token(&self, resource: &str) -> String {
        let mut w = self.world();
        let identity = w
            .system_identity
            .clone()
            .unwrap_or_else(|| Identity::user("system-assigned"));
        identity::mint(&mut w, &identity, resource).0
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loops so their threads end.
        let _ = TcpStream::connect(self.identity_addr);
        let _ = TcpStream::connect(self.vault_addr);
        let _ = TcpStream::connect(self.service_fabric_addr);
        if let Some((_, key_file)) = self.world().arc_key.take() {
            let _ = std::fs::remove_file(key_file);
        }
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
            let first = *w.imds_first.get_or_insert_with(std::time::Instant::now);
            let fault = match w.imds_gone {
                Some((gone, _)) if first.elapsed() < gone => Some(Fault::Status(410)),
                Some((_, then)) if !then.is_zero() => Some(Fault::Delay(then)),
                _ => w.imds_faults.pop_front(),
            };
            (fault, w.token_lifetime.as_secs())
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
        if let Some(r) = echo::answer(w.echo_credentials, req, echo::Endpoint::AppService) {
            return Reply::Respond(r);
        }
        return identity::token(&mut w, req, Flavour::AppService, &shared.identity_header);
    }
    if let Some(tenant) = entra::tenant_of(path) {
        return entra_route(shared, req, tenant);
    }
    if path == sources::LEGACY_MSI_PATH {
        let mut w = lock(shared);
        w.counters.legacy_msi_token_requests += 1;
        w.note_agent(req);
        if let Some(r) = echo::answer(w.echo_credentials, req, echo::Endpoint::LegacyAppService) {
            return Reply::Respond(r);
        }
        return Reply::Respond(sources::legacy_msi(&mut w, req, &shared.msi_secret));
    }
    if path == sources::CLOUD_SHELL_PATH {
        let mut w = lock(shared);
        w.counters.cloud_shell_token_requests += 1;
        w.note_agent(req);
        return Reply::Respond(sources::cloud_shell(&mut w, req));
    }
    if path == sources::ARC_PATH {
        let mut w = lock(shared);
        w.counters.arc_token_requests += 1;
        w.note_agent(req);
        if let Some(r) = echo::answer(w.echo_credentials, req, echo::Endpoint::Arc) {
            return Reply::Respond(r);
        }
        return Reply::Respond(sources::arc(
            &mut w,
            req,
            &shared.arc_key_dir,
            &shared.arc_realm_dir,
        ));
    }
    if let Some(rest) = path.strip_prefix("/emulator") {
        return Reply::Respond(control::handle(&mut lock(shared), req, rest));
    }
    Reply::Respond(Response::text(404, "Not found"))
}

/// The Entra token endpoint (on the plain listener, and on the vault's HTTPS one for clients
/// such as MSAL that need an `https` authority).
fn entra_route(shared: &Shared, req: &Request, tenant: &str) -> Reply {
    let (fault, token_lifetime) = {
        let mut w = lock(shared);
        w.counters.entra_token_requests += 1;
        w.note_agent(req);
        let assertion = entra::form(req)
            .into_iter()
            .find(|(k, _)| k == "client_assertion");
        if let Some((_, assertion)) = assertion {
            w.counters.entra_assertions.push(assertion);
        }
        if let Some(r) = echo::answer(w.echo_credentials, req, echo::Endpoint::Entra) {
            return Reply::Respond(r);
        }
        (w.entra_faults.pop_front(), w.token_lifetime.as_secs())
    };
    let service = entra::Faults { token_lifetime };
    hostile::answer(fault, &service, || {
        Reply::Respond(entra::token(&mut lock(shared), req, tenant))
    })
}

/// Entra on the vault's HTTPS listener: the token endpoint and the OIDC discovery document
/// (`/{tenant}/v2.0/.well-known/openid-configuration`) MSAL reads first. None for vault paths.
fn entra_https_route(shared: &Shared, req: &Request) -> Option<Reply> {
    let path = req.path.trim_end_matches('/');
    if let Some(tenant) = entra::tenant_of(path) {
        return Some(entra_route(shared, req, tenant));
    }
    let tenant = entra::discovery_tenant_of(path)?;
    let mut w = lock(shared);
    w.counters.entra_discovery_requests += 1;
    w.note_agent(req);
    let host = req.header("host").unwrap_or("localhost").to_string();
    let base = format!("https://{host}");
    Some(Reply::Respond(entra::openid_configuration(
        &w, &base, tenant,
    )))
}

fn fabric_route(shared: &Shared, req: &Request) -> Reply {
    if req.path.trim_end_matches('/') != sources::SERVICE_FABRIC_PATH {
        return Reply::Respond(Response::text(404, "Not found"));
    }
    let (fault, token_lifetime) = {
        let mut w = lock(shared);
        w.counters.service_fabric_token_requests += 1;
        w.note_agent(req);
        if let Some(r) = echo::answer(w.echo_credentials, req, echo::Endpoint::ServiceFabric) {
            return Reply::Respond(r);
        }
        (
            w.service_fabric_faults.pop_front(),
            w.token_lifetime.as_secs(),
        )
    };
    let service = identity::ImdsFaults { token_lifetime };
    hostile::answer(fault, &service, || {
        Reply::Respond(sources::service_fabric(
            &mut lock(shared),
            req,
            &shared.identity_header,
        ))
    })
}

fn vault_route(shared: &Shared, req: &Request) -> Reply {
    if let Some(reply) = entra_https_route(shared, req) {
        return reply;
    }
    if req.path == NOTIFY_PATH && req.method == "POST" {
        lock(shared).counters.notify_posts += 1;
        return Reply::Respond(Response::text(200, ""));
    }
    let name = vault::secret_name(req);
    let (fault, delay, tenant) = {
        let mut w = lock(shared);
        w.count_kv(name.as_deref());
        w.note_agent(req);
        w.kv_in_flight += 1;
        w.counters.kv_max_concurrent = w.counters.kv_max_concurrent.max(w.kv_in_flight);
        if req.path.trim_end_matches('/') == "/secrets" {
            w.counters.kv_list_requests += 1;
        }
        let fault = match w.kv_faults.pop_front() {
            Some(f) => Some(f),
            None => w.rate_limited(),
        };
        (fault, w.kv_delay, w.tenant_id.clone())
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

/// Certificate secrets the emulator serves, made by OpenSSL (`scripts/make-cert-fixtures`):
/// a root → intermediate → leaf chain, stored the ways Key Vault stores certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Certificate {
    /// RSA leaf, PFX with PBES1 SHA1-3DES (Windows, .NET, Key Vault), chain stored root first.
    RsaPfx3des,
    /// RSA leaf, PFX with PBES2 AES-256 (OpenSSL 3).
    RsaPfxAes,
    /// EC P-256 leaf, PFX with PBES2 AES-256.
    EcPfxAes,
    /// EC P-256 leaf, PFX with PBES1 SHA1-3DES.
    EcPfx3des,
    /// RSA leaf as PEM: intermediate, key, root, leaf (mixed order).
    RsaPemMixed,
    /// A PFX protected by a password (Key Vault's have none).
    RsaPfxPassword,
}

impl Certificate {
    /// The secret's value and content type.
    pub fn secret(self) -> (&'static str, &'static str) {
        const PKCS12: &str = "application/x-pkcs12";
        macro_rules! fixture {
            ($name:literal) => {
                include_str!(concat!("../../tests/fixtures/certs/", $name))
            };
        }
        match self {
            Certificate::RsaPfx3des => (fixture!("rsa-3des.pfx.b64"), PKCS12),
            Certificate::RsaPfxAes => (fixture!("rsa-aes.pfx.b64"), PKCS12),
            Certificate::EcPfxAes => (fixture!("ec-aes.pfx.b64"), PKCS12),
            Certificate::EcPfx3des => (fixture!("ec-3des.pfx.b64"), PKCS12),
            Certificate::RsaPemMixed => (fixture!("mixed.pem"), "application/x-pem-file"),
            Certificate::RsaPfxPassword => (fixture!("rsa-password.pfx.b64"), PKCS12),
        }
    }
}
