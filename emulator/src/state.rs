//! The emulator's world: secrets and their versions, identities, issued tokens, queued faults
//! and counters. One mutex guards it; handlers hold it only while they read or change it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A user-assigned identity the emulated host carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub client_id: String,
    pub object_id: String,
    pub resource_id: String,
}

impl Identity {
    /// A user-assigned identity with ids derived from `name`.
    pub fn user(name: &str) -> Identity {
        Identity {
            client_id: guid(&format!("client-{name}")),
            object_id: guid(&format!("object-{name}")),
            resource_id: format!(
                "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
            ),
        }
    }
}

/// A fault to inject into the next request on one endpoint (IMDS token, Entra token or Key
/// Vault); each is served once, in the order queued. Besides the transient failures a real service shows, the
/// hostile ones are what a misbehaving or spoofed server would send.
///
/// "The success shape" below is the endpoint's usual answer reduced to its main string field:
/// `{"value":"…"}` on the vault, on IMDS `{"access_token":"…","expires_in":…,"expires_on":…,
/// "resource":"https://vault.azure.net","token_type":"Bearer"}` (numbers as strings, as IMDS
/// sends them), and on Entra `{"token_type":"Bearer","expires_in":N,"ext_expires_in":N,
/// "access_token":"…"}` (numbers as numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and the service's error body for it.
    Status(u16),
    /// Answer with this status and a `Retry-After: secs` header.
    StatusRetryAfter(u16, u64),
    /// Close the connection without answering.
    Drop,
    /// Close the connection without answering, as TLS should: `close_notify`, then FIN (a
    /// client reading for the answer sees a clean end of stream, not an error).
    CloseCleanly,
    /// Answer normally, then close the connection with `close_notify` (a kept-alive connection
    /// the server ended while it sat idle in the client's pool).
    AnswerThenClose,
    /// The success shape, then the connection held open until the client closes it, whatever
    /// its `Connection: close` asked (a server that never ends its answers by closing).
    AnswerThenHold,
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Answer 200 with `Content-Length: N` and exactly N body bytes: the success shape with its
    /// main string field padded with `a` (valid JSON) when N is at least the shape's own length
    /// (under 200 bytes), otherwise N bytes of `a`. The padding is generated as it is written, so
    /// N may exceed memory; the connection stays open for the next request afterwards.
    HugeBody(usize),
    /// Answer 200 with `Transfer-Encoding: chunked` and never finish: the success shape up to
    /// the opening quote of its main string field, then 64 KiB chunks of `a` until the client
    /// closes the connection, the emulator stops, [`crate::http::ENDLESS_MAX_BYTES`] (1 GiB) are
    /// sent or [`crate::http::ENDLESS_MAX_TIME`] (30 s) passes; then the connection is closed
    /// without the last chunk.
    EndlessBody,
    /// Send the answer the endpoint would send without the fault (status line, headers and
    /// body), one byte at a time, flushed each time, with this pause between bytes.
    Drip(Duration),
    /// Send the answer the endpoint would send without the fault with its status line and
    /// headers at once, then its body one byte at a time with this pause between bytes (an
    /// error body a deadline cuts in the middle).
    DripBody(Duration),
    /// Answer this status with `Content-Type: application/json; charset=utf-8` and a body that
    /// is not UTF-8: for 200 the success shape with the main string field holding the bytes
    /// `FF FE` (so `{"value":"\xff\xfe"}` on the vault); otherwise the service's error envelope
    /// for the status with the message `invalid UTF-8 follows: \xff\xfe`.
    InvalidUtf8(u16),
    /// Answer this status with the service's error envelope carrying `code` and `message`
    /// verbatim (JSON-escaped only): on the vault
    /// `{"error":{"code":C,"message":M,"innererror":{"code":C}}}`, on IMDS
    /// `{"error":C,"error_description":M}`, on Entra the same plus the trace lines in the
    /// description, `error_codes` (M's leading `AADSTSn`, if any), `timestamp`, `trace_id`,
    /// `correlation_id` and `error_uri`.
    ErrorText {
        status: u16,
        code: String,
        message: String,
    },
    /// Answer this status (meant for 3xx) with `Location: location` and the text body `Moved`.
    Redirect { status: u16, location: String },
    /// Answer with one extra header, `name: value`, written raw (nothing is checked or escaped,
    /// so a CR LF in the value splits it). For status 200 the answer is the one the endpoint
    /// would send without the fault; for any other status it is `Status(status)`'s answer.
    Header {
        status: u16,
        name: String,
        value: String,
    },
}

/// What a secret version holds.
#[derive(Debug, Clone, Default)]
pub struct SecretInput {
    pub value: String,
    pub content_type: Option<String>,
    pub enabled: Option<bool>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub tags: BTreeMap<String, String>,
    /// Backs a certificate (`managed: true`, with a `kid`), as Key Vault marks those.
    pub managed: bool,
}

/// Changes to the attributes of a secret's latest version (`None`: leave as it is), as the
/// command's flags and the control API's `PATCH /emulator/secrets/NAME` make them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretPatch {
    pub content_type: Option<String>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    /// Tags to add (or overwrite) beside the version's others.
    pub tags: BTreeMap<String, String>,
    pub managed: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct Version {
    pub id: String,
    pub value: String,
    pub content_type: Option<String>,
    pub enabled: bool,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub created: u64,
    pub updated: u64,
    pub tags: BTreeMap<String, String>,
    pub managed: bool,
}

#[derive(Debug, Clone)]
pub struct Secret {
    /// The name as first written (Key Vault names are case-insensitive).
    pub name: String,
    pub versions: Vec<Version>,
    pub deleted: bool,
}

impl Secret {
    pub fn latest(&self) -> Option<&Version> {
        self.versions.last()
    }
}

/// Facts about a token the emulator issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub audience: String,
    pub expires_on: u64,
}

/// An identity that Entra issues tokens to on presentation of one federated assertion.
#[derive(Debug, Clone)]
pub struct Federation {
    pub identity: Identity,
    pub assertion: String,
}

/// Counters tests and benchmarks read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Token requests that reached the IMDS endpoint (faulted ones included).
    pub imds_token_requests: u64,
    /// Token requests that reached the App Service / Container Apps endpoint.
    pub app_service_token_requests: u64,
    /// Requests that reached the Entra token endpoint (workload identity; faulted ones included).
    pub entra_token_requests: u64,
    /// The object id of the identity each token was issued to, in order (every source).
    pub issued_to: Vec<String>,
    /// Requests for the OIDC discovery document on the HTTPS authority.
    pub entra_discovery_requests: u64,
    /// Every `client_assertion` the Entra token endpoint received, in order (faulted and refused
    /// requests included), so a test can tell a re-read token file from a cached one.
    pub entra_assertions: Vec<String>,
    /// Token requests that reached the legacy App Service endpoint (`MSI_ENDPOINT` +
    /// `MSI_SECRET`, api-version 2017-09-01).
    pub legacy_msi_token_requests: u64,
    /// Token requests that reached the Cloud Shell endpoint (`MSI_ENDPOINT` alone).
    pub cloud_shell_token_requests: u64,
    /// Token requests that reached the Azure Arc endpoint, challenged ones included.
    pub arc_token_requests: u64,
    /// Token requests that reached the Service Fabric endpoint (over TLS).
    pub service_fabric_token_requests: u64,
    /// Key Vault requests for one secret, by lower-cased name (faulted ones included).
    pub kv_requests: BTreeMap<String, u64>,
    /// All Key Vault requests.
    pub kv_total_requests: u64,
    /// Connections accepted on the vault's port.
    pub kv_connections: u64,
    /// Full TLS handshakes on the vault's port (resumed sessions not counted), counted when the
    /// client's first bytes after the handshake arrive.
    pub kv_full_tls_handshakes: u64,
    /// Key Vault requests for a page of the secret list (`GET /secrets`).
    pub kv_list_requests: u64,
    /// Key Vault requests answered 429 by the rate limit.
    pub kv_throttled: u64,
    /// Key Vault requests that carried no bearer token.
    pub kv_unauthenticated: u64,
    /// The highest number of Key Vault requests in progress at once.
    pub kv_max_concurrent: u64,
    /// `POST /emulator/notify` requests on the vault's TLS listener (a `--notify-url` over
    /// HTTPS whose certificate the emulator's CA vouches for).
    pub notify_posts: u64,
    /// Every `User-Agent` that token and vault requests carried ("" for none).
    pub user_agents: std::collections::BTreeSet<String>,
}

/// The entries of a generated list (`Emulator::set_list_flood`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FloodKind {
    /// Valid names (`f{page}x{entry}`) without attributes.
    #[default]
    Plain,
    /// Ids whose last segment is no valid secret name (`bad_name_{page}_{entry}`).
    InvalidIds,
    /// Valid names, each disabled (`"attributes":{"enabled":false}`).
    Disabled,
}

#[derive(Default)]
pub struct World {
    pub tenant_id: String,
    pub system_identity: Option<Identity>,
    pub user_identities: Vec<Identity>,
    pub token_lifetime: Duration,
    /// Seconds added to the absolute times in token answers (a service clock that is off).
    pub clock_skew: i64,
    pub secrets: BTreeMap<String, Secret>,
    pub denied: HashSet<String>,
    /// The vault uses access policies, not Azure RBAC: a denial says so (`AccessDenied`).
    pub access_policies: bool,
    pub tokens: HashMap<String, IssuedToken>,
    pub imds_faults: VecDeque<Fault>,
    /// Faults for the next Service Fabric token requests.
    pub service_fabric_faults: VecDeque<Fault>,
    /// See `Emulator::set_imds_gone`: how long 410 lasts, and the delay of answers after it.
    pub imds_gone: Option<(Duration, Duration)>,
    /// When IMDS saw its first token request.
    pub imds_first: Option<std::time::Instant>,
    pub entra_faults: VecDeque<Fault>,
    /// App registrations / user-assigned identities with a federated credential, and the one
    /// assertion text each accepts now.
    pub federations: Vec<Federation>,
    /// Assertions answered as expired, with the time each was declared expired.
    pub expired_assertions: HashMap<String, u64>,
    /// The Arc key the latest challenge wrote (what `Authorization: Basic …` must carry) and
    /// the file holding it.
    pub arc_key: Option<(String, std::path::PathBuf)>,
    /// The legacy endpoint writes `expires_on` as the 2017-era date string
    /// (`09/14/2017 01:05:09 PM +00:00`) instead of epoch seconds.
    pub legacy_date_expiry: bool,
    /// Name this path in Arc challenges instead of writing a key file.
    pub arc_realm: Option<String>,
    /// Arc challenges every request, a valid key included (a broken agent).
    pub arc_rejects_keys: bool,
    /// Listing secrets is refused (403), as for an identity with `get` but not `list`.
    pub list_denied: bool,
    /// Every page of a listing is followed by an empty page that still carries a `nextLink`
    /// (the service does this; clients must keep following).
    pub empty_pages: bool,
    /// Page size when the request names none (the service's is 25).
    pub list_page_size: Option<usize>,
    /// A hostile list (see `Emulator::set_list_flood`): (entries a page, pages); the vault's own
    /// secrets are not listed while it is set.
    pub list_flood: Option<(usize, usize)>,
    /// What each generated entry of a hostile list is (see `Emulator::set_list_flood_kind`).
    pub list_flood_kind: FloodKind,
    pub kv_faults: VecDeque<Fault>,
    /// See `Emulator::echo_credentials`: the status and the position of the quoted credential.
    pub echo_credentials: Option<(u16, usize)>,
    /// Requests per one-second window before 429s (see `Emulator::set_kv_rate_limit`).
    pub kv_rate_limit: Option<u64>,
    /// The current window's start and the requests in it.
    pub kv_window: Option<(std::time::Instant, u64)>,
    pub kv_delay: Duration,
    pub counters: Counters,
    pub kv_in_flight: u64,
}

static SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// A deterministic-looking, unique 32-hex-digit id (Key Vault version ids have this shape).
pub fn version_id() -> String {
    let n = SEQUENCE.fetch_add(1, Ordering::SeqCst);
    format!(
        "{:016x}{:016x}",
        mix(n ^ now_nanos()),
        mix(n.wrapping_mul(0x9e37_79b9))
    )
}

/// A GUID-shaped id derived from a seed string.
pub fn guid(seed: &str) -> String {
    let h = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let (a, b) = (mix(h), mix(h ^ 0x5555));
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl World {
    /// Under a rate limit, the 429 this request gets, if its window is full.
    pub fn rate_limited(&mut self) -> Option<Fault> {
        let limit = self.kv_rate_limit?;
        let now = std::time::Instant::now();
        let (start, used) = match self.kv_window {
            Some((start, used)) if now.duration_since(start) < Duration::from_secs(1) => {
                (start, used)
            }
            _ => (now, 0),
        };
        if used < limit {
            self.kv_window = Some((start, used + 1));
            return None;
        }
        self.kv_window = Some((start, used));
        self.counters.kv_throttled += 1;
        Some(Fault::StatusRetryAfter(429, 1))
    }

    /// Add a version to a secret (creating or undeleting it); returns the version id.
    pub fn set_secret(&mut self, name: &str, input: SecretInput) -> String {
        let key = name.to_ascii_lowercase();
        let t = now();
        let id = version_id();
        let secret = self.secrets.entry(key).or_insert_with(|| Secret {
            name: name.to_string(),
            versions: Vec::new(),
            deleted: false,
        });
        if secret.deleted {
            secret.versions.clear();
            secret.deleted = false;
        }
        secret.versions.push(Version {
            id: id.clone(),
            value: input.value,
            content_type: input.content_type,
            enabled: input.enabled.unwrap_or(true),
            exp: input.exp,
            nbf: input.nbf,
            created: t,
            updated: t,
            tags: input.tags,
            managed: input.managed,
        });
        id
    }

    pub fn secret(&self, name: &str) -> Option<&Secret> {
        self.secrets
            .get(&name.to_ascii_lowercase())
            .filter(|s| !s.deleted)
    }

    pub fn secret_mut(&mut self, name: &str) -> Option<&mut Secret> {
        self.secrets
            .get_mut(&name.to_ascii_lowercase())
            .filter(|s| !s.deleted)
    }

    /// Enable or disable the latest version; false when there is no such secret.
    pub fn set_enabled(&mut self, name: &str, enabled: bool) -> bool {
        let Some(v) = self.secret_mut(name).and_then(|s| s.versions.last_mut()) else {
            return false;
        };
        v.enabled = enabled;
        v.updated = now();
        true
    }

    /// Apply `patch` to the latest version of `name`; false when there is no such secret.
    pub fn patch_latest(&mut self, name: &str, patch: SecretPatch) -> bool {
        let Some(v) = self.secret_mut(name).and_then(|s| s.versions.last_mut()) else {
            return false;
        };
        if patch.content_type.is_some() {
            v.content_type = patch.content_type;
        }
        v.exp = patch.exp.or(v.exp);
        v.nbf = patch.nbf.or(v.nbf);
        v.managed = patch.managed.unwrap_or(v.managed);
        v.tags.extend(patch.tags);
        v.updated = now();
        true
    }

    /// Soft-delete a secret; false when there is no such secret.
    pub fn delete(&mut self, name: &str) -> bool {
        match self.secret_mut(name) {
            Some(s) => {
                s.deleted = true;
                true
            }
            None => false,
        }
    }

    /// The identity a selector names; `None` selects the system-assigned one.
    pub fn find_identity(&self, selector: Option<(&str, &str)>) -> Option<Identity> {
        let Some((kind, value)) = selector else {
            return self.system_identity.clone();
        };
        let value = value.to_ascii_lowercase();
        self.user_identities
            .iter()
            .find(|i| {
                let field = match kind {
                    "client_id" => &i.client_id,
                    "object_id" | "principal_id" => &i.object_id,
                    _ => &i.resource_id,
                };
                field.to_ascii_lowercase() == value
            })
            .cloned()
    }

    /// Note the `User-Agent` of a token or vault request.
    pub fn note_agent(&mut self, req: &crate::http::Request) {
        let agent = req.header("user-agent").unwrap_or_default().to_string();
        self.counters.user_agents.insert(agent);
    }

    pub fn count_kv(&mut self, name: Option<&str>) {
        self.counters.kv_total_requests += 1;
        if let Some(name) = name {
            *self
                .counters
                .kv_requests
                .entry(name.to_ascii_lowercase())
                .or_default() += 1;
        }
    }
}
