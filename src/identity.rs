//! Managed-identity tokens: which endpoint to ask (IMDS or the App Service / Container Apps
//! endpoint), how to ask it politely (backoff, 410 for 70 s, fail fast on "identity not found"),
//! and a cache so a run makes one token request per audience, not one per secret.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use ureq::Agent;

use crate::error::Error;
use crate::http;
use crate::log;
use crate::retry::{Backoff, Deadline, human};

const IMDS_BASE: &str = "http://169.254.169.254";
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";

/// Which user-assigned identity to use (none: system-assigned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    ClientId(String),
    ObjectId(String),
    ResourceId(String),
}

impl Selector {
    pub fn describe(sel: Option<&Selector>) -> String {
        match sel {
            None => "the system-assigned identity".into(),
            Some(Selector::ClientId(v)) => format!("the user-assigned identity with client id {v}"),
            Some(Selector::ObjectId(v)) => format!("the user-assigned identity with object id {v}"),
            Some(Selector::ResourceId(v)) => format!("the user-assigned identity {v}"),
        }
    }
}

/// Where tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// IMDS (VMs, ACI, AKS nodes) at this base URL.
    Imds { base: String },
    /// App Service / Functions / Container Apps (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`).
    AppService {
        endpoint: String,
        header_env: String,
    },
}

impl Source {
    /// Pick the source from the environment, in the Azure SDKs' order.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Source, Error> {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty());
        if get("IDENTITY_ENDPOINT").is_some() && get("IDENTITY_SERVER_THUMBPRINT").is_some() {
            return Err(Error::Usage("Service Fabric managed identity (IDENTITY_SERVER_THUMBPRINT) is not supported by kvfetch".into()));
        }
        if let (Some(endpoint), Some(_)) = (get("IDENTITY_ENDPOINT"), get("IDENTITY_HEADER")) {
            return Ok(Source::AppService {
                endpoint: check_endpoint(endpoint, "IDENTITY_ENDPOINT")?,
                header_env: "IDENTITY_HEADER".into(),
            });
        }
        if get("IDENTITY_ENDPOINT").is_some() && get("IMDS_ENDPOINT").is_some() {
            return Err(Error::Usage("Azure Arc managed identity (IDENTITY_ENDPOINT + IMDS_ENDPOINT) is not supported by kvfetch".into()));
        }
        if get("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            log::warn(
                "AZURE_FEDERATED_TOKEN_FILE is set but workload identity is not supported yet; using IMDS",
                &[],
            );
        }
        let base = match get("AZURE_POD_IDENTITY_AUTHORITY_HOST") {
            Some(b) => check_endpoint(b, "AZURE_POD_IDENTITY_AUTHORITY_HOST")?
                .trim_end_matches('/')
                .to_string(),
            None => IMDS_BASE.to_string(),
        };
        Ok(Source::Imds { base })
    }

    fn url(&self, resource: &str, selector: Option<&Selector>) -> String {
        let enc = crate::encoding::percent_encode;
        let (base, version, names) = match self {
            Source::Imds { base } => (
                format!("{base}{IMDS_PATH}"),
                "2018-02-01",
                ["client_id", "object_id", "msi_res_id"],
            ),
            Source::AppService { endpoint, .. } => (
                endpoint.clone(),
                "2019-08-01",
                ["client_id", "principal_id", "mi_res_id"],
            ),
        };
        let mut url = format!("{base}?api-version={version}&resource={}", enc(resource));
        match selector {
            Some(Selector::ClientId(v)) => url.push_str(&format!("&{}={}", names[0], enc(v))),
            Some(Selector::ObjectId(v)) => url.push_str(&format!("&{}={}", names[1], enc(v))),
            Some(Selector::ResourceId(v)) => url.push_str(&format!("&{}={}", names[2], enc(v))),
            None => {}
        }
        url
    }

    /// Whether the endpoint is a loopback address (as the emulator's is).
    pub fn on_loopback(&self) -> bool {
        crate::url::parse(&self.endpoint()).is_ok_and(|u| crate::url::is_loopback(&u.host))
    }

    /// The endpoint for messages (no query).
    pub fn endpoint(&self) -> String {
        match self {
            Source::Imds { base } => format!("{base}{IMDS_PATH}"),
            Source::AppService { endpoint, .. } => endpoint.clone(),
        }
    }

    /// What chose this endpoint: the variable that named it, or the default.
    pub fn chosen_by(&self) -> &'static str {
        match self {
            Source::Imds { base } if base == IMDS_BASE => "default (IMDS)",
            Source::Imds { .. } => "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            Source::AppService { .. } => "IDENTITY_ENDPOINT",
        }
    }
}

/// An identity endpoint from the environment, through the one strict URL parser.
fn check_endpoint(url: &str, var: &str) -> Result<String, Error> {
    crate::url::parse(url).map(|u| u.full()).map_err(|why| {
        Error::Usage(format!(
            "{var}={url:?} is refused: {why}; it must be http(s)://host[:port][/path]"
        ))
    })
}

/// An access token. Its `Debug` never shows the token itself.
#[derive(Clone)]
pub struct Token {
    access: String,
    /// Unix seconds at which the token expires.
    pub expires_on: u64,
    /// `expires_in`, where the answer gave it: the lifetime in seconds.
    pub lifetime: Option<u64>,
    /// The identity's object id (`oid` claim), for messages.
    pub object_id: Option<String>,
    /// The identity's client id (`appid` claim), for messages.
    pub client_id: Option<String>,
    /// The tenant (`tid`), audience (`aud`) and the managed identity's resource id
    /// (`xms_mirid`): what `kvfetch doctor` shows of a token (never the token).
    pub tenant_id: Option<String>,
    pub audience: Option<String>,
    pub mi_resource_id: Option<String>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("expires_on", &self.expires_on)
            .field("object_id", &self.object_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        crate::keyvault::wipe(&mut self.access);
    }
}

impl Token {
    /// The `Authorization` header value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.access)
    }

    /// Whether this is the same token as `other`.
    pub fn same_as(&self, other: &Token) -> bool {
        self.access == other.access
    }

    /// "object id X" or "client id Y", for messages.
    pub fn who(&self) -> String {
        match (&self.object_id, &self.client_id) {
            (Some(oid), _) => format!("object id {oid}"),
            (None, Some(cid)) => format!("client id {cid}"),
            _ => "unknown object id".into(),
        }
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Asks one identity endpoint for tokens.
pub struct Identity {
    agent: Agent,
    pub source: Source,
    pub selector: Option<Selector>,
    backoff: Backoff,
    header: Option<String>,
}

impl Identity {
    pub fn new(
        source: Source,
        selector: Option<Selector>,
        backoff_base: Duration,
        env: &HashMap<String, String>,
    ) -> Identity {
        let header = match &source {
            Source::AppService { header_env, .. } => env.get(header_env).cloned(),
            Source::Imds { .. } => None,
        };
        Identity {
            agent: http::identity_agent(),
            source,
            selector,
            backoff: Backoff {
                base: backoff_base,
                cap_factor: 30,
            },
            header,
        }
    }

    /// "the system-assigned identity via IMDS at URL", for messages.
    pub fn describe(&self) -> String {
        let via = match self.source {
            Source::Imds { .. } => "IMDS",
            Source::AppService { .. } => "the App Service / Container Apps identity endpoint",
        };
        format!(
            "{} via {via} at {}",
            Selector::describe(self.selector.as_ref()),
            self.source.endpoint()
        )
    }

    /// Get a token for `resource`, retrying as Microsoft documents, within `deadline`.
    pub fn request(&self, resource: &str, deadline: &Deadline) -> Result<Token, Error> {
        let url = self.source.url(resource, self.selector.as_ref());
        let mut headers: Vec<(&str, &str)> = vec![("Metadata", "true")];
        if let Some(h) = &self.header {
            headers.push(("X-IDENTITY-HEADER", h));
        }
        let started = Instant::now();
        let (mut attempt, mut first_410) = (0u32, None);
        let mut last_410_try = false;
        // The last HTTP answer: a final attempt cut short by the deadline must not hide it.
        let mut last_answer: Option<String> = None;
        let mut waiting = crate::progress::Waiting::new();
        loop {
            let timeout = deadline.remaining().min(Duration::from_secs(20));
            let problem = match http::get(&self.agent, &url, &headers, timeout) {
                Ok(reply) if reply.status == 200 => {
                    return parse_token(&reply.body, &self.describe());
                }
                Ok(reply) => self.classify(reply.status, &reply.body, resource)?,
                Err(e) if e.local => {
                    return Err(Error::Resource(format!(
                        "cannot reach the identity endpoint {}: {}; raise the limit (ulimit -n, the container's memory)",
                        self.source.endpoint(),
                        e.text
                    )));
                }
                Err(e) if e.permanent => {
                    return Err(Error::NoToken(format!(
                        "the identity endpoint {} sent an unusable answer for {} ({}); kvfetch does not retry this: check what answers at that address",
                        self.source.endpoint(),
                        Selector::describe(self.selector.as_ref()),
                        log::escape(&e.text)
                    )));
                }
                Err(e) => e.text,
            };
            if problem.starts_with("HTTP ") {
                last_answer = Some(problem.clone());
            }
            if problem.starts_with("HTTP 410") {
                // "Back within 70 s": keep trying at least that long, even past --timeout.
                let first = *first_410.get_or_insert_with(Instant::now);
                deadline.extend_to(first + self.backoff.base * 70);
            }
            let delay = self.backoff.delay(attempt);
            attempt += 1;
            log::debug(
                "identity endpoint not ready; retrying",
                &[("endpoint", &self.source.endpoint()), ("problem", &problem)],
            );
            waiting.report(
                "identity",
                delay,
                "waiting for the identity endpoint",
                &[
                    ("endpoint", &self.source.endpoint()),
                    ("chosen_by", self.source.chosen_by()),
                    ("problem", &problem),
                ],
            );
            if !deadline.sleep(delay) {
                // In a 410 window, one last try at its very end (at or after 70 × base), as
                // Microsoft asks, before giving up.
                if first_410.is_some() && !last_410_try {
                    last_410_try = true;
                    std::thread::sleep(deadline.remaining());
                    // Time for the last request itself to be answered.
                    deadline.extend_to(Instant::now() + Duration::from_secs(1));
                    continue;
                }
                return Err(Error::NoToken(format!(
                    "gave up on the identity endpoint {} after {} ({attempt} attempts; last: {problem}{}) asking for {}; \
                     check that a managed identity is assigned to this container group / VM, or raise --timeout if the endpoint starts slowly",
                    self.source.endpoint(),
                    human(started.elapsed()),
                    last_answer
                        .filter(|a| *a != problem)
                        .map(|a| format!("; last answer: {a}"))
                        .unwrap_or_default(),
                    Selector::describe(self.selector.as_ref()),
                )));
            }
        }
    }

    /// A non-200 answer: `Ok(text)` when worth retrying, `Err` when final.
    fn classify(&self, status: u16, body: &str, resource: &str) -> Result<String, Error> {
        let detail = error_detail(body);
        if matches!(status, 404 | 408 | 410 | 429) || status >= 500 {
            return Ok(format!("HTTP {status} {detail}"));
        }
        let app_service = matches!(self.source, Source::AppService { .. });
        if app_service && matches!(status, 401 | 403) {
            return Err(Error::NoToken(format!(
                "the identity endpoint {} (IDENTITY_ENDPOINT) rejected IDENTITY_HEADER: HTTP {status} \"{detail}\"; \
                 the platform rotates that header: pass the container's own IDENTITY_HEADER through unchanged (do not copy or pin it), or restart the app so it gets the current one",
                self.source.endpoint()
            )));
        }
        let lower = detail.to_ascii_lowercase();
        if app_service && lower.contains("unable to load the proper managed identity") {
            return Err(Error::NoToken(format!(
                "no managed identity found: {} answered HTTP {status} \"{detail}\" for {}; assign it to the app (az containerapp identity assign / az webapp identity assign, with --user-assigned RESOURCE_ID for a user-assigned one) and check the id",
                self.source.endpoint(),
                Selector::describe(self.selector.as_ref())
            )));
        }
        if lower.contains("identity not found") || (status == 400 && lower.contains("not found")) {
            let fix = match &self.selector {
                None => {
                    "assign a system-assigned identity (e.g. az container create … --assign-identity, az vm identity assign) or select a user-assigned one with --client-id/--object-id/--resource-id"
                }
                Some(_) => {
                    "check the id, and that this identity is assigned to the container group / VM (az container create … --assign-identity RESOURCE_ID)"
                }
            };
            return Err(Error::NoToken(format!(
                "no managed identity found: {} answered HTTP {status} \"{detail}\" for {}; {fix}",
                self.source.endpoint(),
                Selector::describe(self.selector.as_ref())
            )));
        }
        Err(Error::NoToken(format!(
            "the identity endpoint {} refused a token for resource {resource} ({}): HTTP {status} \"{detail}\"",
            self.source.endpoint(),
            Selector::describe(self.selector.as_ref())
        )))
    }
}

/// The human part of an IMDS / App Service error body (which is not always JSON). A JSON body
/// without an error field is never echoed: it could be a token answer.
fn error_detail(body: &str) -> String {
    let text = match serde_json::from_str::<Value>(body) {
        Ok(v) => ["error_description", "message", "error"]
            .iter()
            .find_map(|k| v.get(k).and_then(Value::as_str).map(String::from))
            .unwrap_or_else(|| "(a JSON answer without an error text)".to_string()),
        Err(_) => body.to_string(),
    };
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    line.chars().take(200).collect()
}

/// The largest access token kvfetch sends (real ones are 1-4 KB; headers over 16-32 KB are
/// refused by servers).
const MAX_TOKEN: usize = 32 * 1024;

/// Parse a token answer: numbers may be strings, `expires_on` may be epoch or a date string.
pub fn parse_token(body: &str, who: &str) -> Result<Token, Error> {
    let bad = |why: &str| {
        Error::NoToken(format!(
            "the identity endpoint for {who} sent an unusable token answer: {why}"
        ))
    };
    let v: Value = serde_json::from_str(body).map_err(|_| bad("not JSON"))?;
    let access = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no access_token"))?;
    if access.len() > MAX_TOKEN {
        return Err(bad("the access_token is larger than 32 KiB"));
    }
    if !access.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "the access_token holds characters that cannot go into an HTTP header",
        ));
    }
    let claims = jwt_claims(access);
    let claim = |k: &str| {
        claims
            .as_ref()
            .and_then(|c| c.get(k))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let lifetime = v.get("expires_in").and_then(number);
    let expires_on = v
        .get("expires_on")
        .and_then(number_or_date)
        .or_else(|| now().checked_add(lifetime?))
        .or_else(|| claims.as_ref().and_then(|c| c.get("exp")).and_then(number))
        .ok_or_else(|| bad("no usable expires_on or expires_in"))?;
    Ok(Token {
        access: access.to_string(),
        expires_on,
        lifetime: lifetime.filter(|l| *l > 0 && *l < 10 * 365 * 86400),
        object_id: claim("oid"),
        client_id: claim("appid").or_else(|| claim("azp")),
        tenant_id: claim("tid"),
        audience: claim("aud"),
        mi_resource_id: claim("xms_mirid"),
    })
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn number_or_date(v: &Value) -> Option<u64> {
    number(v).or_else(|| v.as_str().and_then(parse_date))
}

/// `MM/DD/YYYY HH:MM:SS [AM|PM] [+HH:MM]` (the legacy App Service form) → Unix seconds.
/// Every field is range-checked, so no input can overflow the arithmetic.
fn parse_date(s: &str) -> Option<u64> {
    let mut parts = s.split_whitespace();
    let fields = |text: &str, sep: char| -> Option<Vec<i64>> {
        text.split(sep).map(|p| p.parse().ok()).collect()
    };
    let date = fields(parts.next()?, '/')?;
    let time = fields(parts.next()?, ':')?;
    let rest: Vec<&str> = parts.collect();
    let &[mo, d, y] = date.as_slice() else {
        return None;
    };
    let (hour, min, sec) = match *time.as_slice() {
        [h, m] => (h, m, 0),
        [h, m, s] => (h, m, s),
        _ => return None,
    };
    let hour = match rest.first().map(|w| w.to_ascii_uppercase()).as_deref() {
        Some("AM") if (0..=12).contains(&hour) => hour % 12,
        Some("PM") if (0..=12).contains(&hour) => hour % 12 + 12,
        Some("AM" | "PM") => return None,
        _ => hour,
    };
    let in_range = (1970..=9999).contains(&y)
        && (1..=12).contains(&mo)
        && (1..=31).contains(&d)
        && (0..=23).contains(&hour)
        && (0..=59).contains(&min)
        && (0..=60).contains(&sec);
    if !in_range {
        return None;
    }
    let offset = match rest.last().filter(|o| o.starts_with(['+', '-'])) {
        Some(o) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (h, m) = o[1..].split_once(':').unwrap_or((&o[1..], "0"));
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            if !(0..=14).contains(&h) || !(0..=59).contains(&m) {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
        None => 0,
    };
    let days = days_from_civil(y, mo, d);
    u64::try_from(days * 86400 + hour * 3600 + min * 60 + sec - offset).ok()
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The claims of a JWT-shaped token (no signature check: only for naming the identity).
fn jwt_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&crate::encoding::base64url_decode(payload)?).ok()
}

/// A cached token and how long it may be used, measured on the monotonic clock from when it
/// arrived: a wall clock that is off (a skewed VM, a container started with a wrong time) can
/// neither make a fresh token look expired nor an expired one look fresh.
#[derive(Clone)]
struct Cached {
    token: Arc<Token>,
    arrived: Instant,
    /// From `expires_in` where given, else `expires_on` minus the local clock; None when even
    /// that says it has expired: then it is used until the vault answers 401.
    valid_for: Option<Duration>,
    /// When a renewal last failed while this token was still valid.
    renewal_failed: Option<Instant>,
}

impl Cached {
    fn new(token: Token) -> Cached {
        let now = now();
        let valid_for = token
            .lifetime
            .or_else(|| token.expires_on.checked_sub(now).filter(|s| *s > 0))
            .map(Duration::from_secs);
        if token.expires_on <= now {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                log::warn(
                    "the token's expires_on is already past by this machine's clock; kvfetch times tokens by expires_in, or uses them until Key Vault refuses them: check the clock (NTP)",
                    &[("expires_on", &token.expires_on.to_string()), ("now", &now.to_string())],
                );
            });
        }
        Cached {
            token: Arc::new(token),
            arrived: Instant::now(),
            valid_for,
            renewal_failed: None,
        }
    }

    /// Usable without renewal: more than five minutes (or half its life, for short-lived
    /// tokens) before it ends; a token of unknown life until the vault says 401.
    fn fresh(&self) -> bool {
        self.valid_for.is_none_or(|life| {
            let margin = Duration::from_secs(300).min(life / 2);
            self.arrived.elapsed() + margin < life
        })
    }

    /// Still valid at all.
    fn valid(&self) -> bool {
        self.valid_for
            .is_none_or(|life| self.arrived.elapsed() < life)
    }
}

/// The run's tokens, one request per audience, shared by the parallel fetchers.
pub struct Tokens {
    pub identity: Identity,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Tokens {
    pub fn new(identity: Identity) -> Tokens {
        Tokens {
            identity,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh token for `resource`, from the cache when it is still fresh or arrived during
    /// this fetch (`deadline` marks one fetch: never more than one token request per fetch and
    /// audience, whatever the token's times say). When renewal fails while the cached token is
    /// still valid, the cached one keeps working.
    pub fn get(&self, resource: &str, deadline: &Deadline) -> Result<Arc<Token>, Error> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let cached = cache.get(resource).cloned();
        let this_fetch = |t: Instant| t >= deadline.started();
        if let Some(c) = &cached
            && (c.fresh() || this_fetch(c.arrived) || c.renewal_failed.is_some_and(this_fetch))
        {
            return Ok(c.token.clone());
        }
        let token = match (self.identity.request(resource, deadline), cached) {
            (Ok(t), _) => t,
            (Err(e), Some(old)) if old.valid() => {
                log::warn(
                    "token renewal failed; the current token is still valid and stays in use",
                    &[("error", &e.to_string())],
                );
                // Not asked again in this fetch: the next fetch tries again.
                if let Some(c) = cache.get_mut(resource) {
                    c.renewal_failed = Some(Instant::now());
                }
                return Ok(old.token);
            }
            (Err(e), _) => return Err(e),
        };
        log::debug(
            "got a token",
            &[("resource", resource), ("identity", &token.who())],
        );
        let entry = Cached::new(token);
        let token = entry.token.clone();
        cache.insert(resource.to_string(), entry);
        Ok(token)
    }

    /// Replace `stale` (rejected by the vault) with a new token, unless another fetcher already did.
    pub fn refresh(
        &self,
        resource: &str,
        stale: &Token,
        deadline: &Deadline,
    ) -> Result<Arc<Token>, Error> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(resource).filter(|c| !c.token.same_as(stale)) {
            return Ok(c.token.clone());
        }
        let entry = Cached::new(self.identity.request(resource, deadline)?);
        let token = entry.token.clone();
        cache.insert(resource.to_string(), entry);
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_answers_with_string_numbers_and_dates() {
        let t = parse_token(r#"{"access_token":"a.eyJvaWQiOiJ4In0.c","expires_on":"1506484173","expires_in":"3599"}"#, "x").unwrap();
        assert_eq!(
            (t.expires_on, t.object_id.as_deref()),
            (1_506_484_173, Some("x"))
        );
        let t = parse_token(r#"{"access_token":"abc","expires_on":1506484173}"#, "x").unwrap();
        assert_eq!(t.expires_on, 1_506_484_173);
        let t = parse_token(
            r#"{"access_token":"abc","expires_on":"05/22/2021 17:14:33 +00:00"}"#,
            "x",
        )
        .unwrap();
        assert_eq!(t.expires_on, 1_621_703_673);
        let t = parse_token(
            r#"{"access_token":"abc","expires_on":"09/14/2017 00:00:00 PM +00:00"}"#,
            "x",
        )
        .unwrap();
        assert_eq!(t.expires_on, 1_505_390_400);
        assert_eq!(
            parse_date("09/14/2017 12:00:00 AM +00:00"),
            Some(1_505_347_200)
        );
        assert_eq!(
            parse_date("09/14/2017 12:00:00 PM +00:00"),
            Some(1_505_390_400)
        );
        assert_eq!(
            parse_date("09/14/2017 01:00:00 PM -01:30"),
            Some(1_505_399_400)
        );
        for bad in [
            "13/14/2017 00:00:00",
            "09/14/99999999999999 00:00:00",
            "09/14/2017 24:00:00",
            "09/14/2017 13:00:00 PM",
            "09/14/2017 00:00:00 +99:00",
            "09/14 00:00:00",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        for bad in [r"a\nb", "a b", r"\u00e9", r"a\u0000"] {
            let body = format!(r#"{{"access_token":"{bad}","expires_in":"60"}}"#);
            assert!(parse_token(&body, "x").is_err(), "{bad}");
        }
        let long = format!(
            r#"{{"access_token":"{}","expires_in":"60"}}"#,
            "a".repeat(40_000)
        );
        assert!(parse_token(&long, "x").is_err());
        let huge = format!(r#"{{"access_token":"abc","expires_in":"{}"}}"#, u64::MAX);
        assert!(parse_token(&huge, "x").is_err(), "no overflow");
        let t = parse_token(r#"{"access_token":"abc","expires_in":"60"}"#, "x").unwrap();
        assert!(t.expires_on >= now() + 59);
        assert!(parse_token(r#"{"access_token":""}"#, "x").is_err());
        assert!(!format!("{t:?}").contains("abc"));
    }

    #[test]
    fn urls_per_source() {
        let imds = Source::Imds {
            base: "http://h".into(),
        };
        assert_eq!(
            imds.url(
                "https://vault.azure.net",
                Some(&Selector::ResourceId("/a b".into()))
            ),
            "http://h/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&msi_res_id=%2Fa%20b"
        );
        let app = Source::AppService {
            endpoint: "http://l/msi/token".into(),
            header_env: "IDENTITY_HEADER".into(),
        };
        assert!(
            app.url("r", Some(&Selector::ObjectId("o".into())))
                .ends_with("?api-version=2019-08-01&resource=r&principal_id=o")
        );
    }
}
