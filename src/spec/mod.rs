//! What to fetch and from where: vault URLs, secret specs, and the names secrets get on disk and
//! in the environment.
//!
//! May use: `error`, `base`, `net` (URLs), `output` (the names outputs may not take).
//!
//! The host rules live here because they are what keeps a token from leaking: a token is only
//! ever sent to a vault whose DNS suffix names the token's audience (or to loopback, or to a host
//! the user vouched for with `--resource`), and only over `https` (`http` for loopback only).

pub mod options;
pub mod reference;

use crate::error::Error;
use crate::net::url::{self, Url};
use options::Shape;

/// Known Key Vault DNS suffixes and the token audience each implies.
pub const CLOUDS: &[(&str, &str)] = &[
    (".vault.azure.net", "https://vault.azure.net"),
    (".vault.azure.cn", "https://vault.azure.cn"),
    (
        ".vault.usgovcloudapi.net",
        "https://vault.usgovcloudapi.net",
    ),
    (
        ".vault.microsoftazure.de",
        "https://vault.microsoftazure.de",
    ),
];

/// A vault: where requests go and which audience its token has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Vault {
    /// `scheme://host[:port]`, no trailing slash.
    pub url: String,
    pub host: String,
    /// The token audience (resource) for this vault.
    pub resource: String,
    /// Why this vault may have a token for `resource`.
    pub audience: Audience,
}

/// What allows a token to be sent to a vault's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Audience {
    /// The host ends in a known Key Vault DNS suffix, which names the audience.
    Cloud,
    /// `--resource` vouches for the `--vault` host (and only that host).
    Vouched,
    /// A loopback address: allowed only while the identity endpoint is on loopback too (an
    /// emulator); see [`check_loopback_vaults`].
    Loopback,
}

/// One secret to fetch, and the names it lands under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// The spec as the user wrote it (for messages).
    pub text: String,
    pub alias: Option<String>,
    pub vault: Vault,
    pub name: String,
    pub version: Option<String>,
    /// What is written: the value, or the part of it the spec's options ask for.
    pub shape: Shape,
    /// The name outputs take when there is no alias, if not `name`: a selected secret's name
    /// with `--prefix` stripped (`app-db` → file `db`, variable `DB`).
    pub output_name: Option<String>,
    /// The variable of a selected secret, chosen under the operator's rule (see
    /// [`crate::vault::select`]): the operator's prefix on the name, or a name `--allow-env` gave.
    pub env_alias: Option<String>,
    /// Fetched for a template only: no file, no variable of its own.
    pub hidden: bool,
    /// `?file` (or an App Service reference in a `*_FILE` variable): `exec` hands the value
    /// over as a file, the variable holding its path; `--dir` and the env file leave it out.
    pub file: bool,
}

impl SecretSpec {
    /// The file name under `--dir`.
    pub fn file_name(&self) -> &str {
        self.alias
            .as_deref()
            .or(self.output_name.as_deref())
            .unwrap_or(&self.name)
    }

    /// The environment variable name. A `?file` spec without an alias names the variable as
    /// images that read files expect: `db-password?file` → `DB_PASSWORD_FILE`.
    pub fn env_name(&self) -> String {
        let name = self.alias.clone().or_else(|| self.env_alias.clone());
        match name {
            Some(name) => name,
            None => {
                let name = env_name_for(self.output_name.as_deref().unwrap_or(&self.name));
                if self.file && !name.ends_with("_FILE") {
                    format!("{name}_FILE")
                } else {
                    name
                }
            }
        }
    }

    /// Whether `--dir` and the env file carry this spec: not a template's own, not `?file`.
    pub fn in_outputs(&self) -> bool {
        !self.hidden && !self.file
    }

    /// `name` or `name/version`, for messages.
    pub fn reference(&self) -> String {
        match &self.version {
            Some(v) => format!("{}/{v}", self.name),
            None => self.name.clone(),
        }
    }
}

/// `db-password` → `DB_PASSWORD`.
pub fn env_name_for(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// Is this a valid Key Vault object name (`[0-9A-Za-z-]{1,127}`)?
pub fn valid_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn valid_version(v: &str) -> bool {
    (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Is this a valid environment variable name (`[A-Za-z_][A-Za-z0-9_]*`)?
pub fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Is this a plain file name (no `/`, not `.` or `..`, not empty, and not the name of
/// kvfetch's own temp files)? Its length is checked with the outputs.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
        && !name.starts_with(crate::output::files::TEMP_PREFIX)
}

/// The variables [`steers_programs`] names (compared in upper case).
pub const STEERING_NAMES: &[&str] = &[
    // shells and the C library
    "PATH",
    "IFS",
    "ENV",
    "BASH_ENV",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "CDPATH",
    "GLIBC_TUNABLES",
    "GCONV_PATH",
    "LOCPATH",
    "NLSPATH",
    "HOSTALIASES",
    "RES_OPTIONS",
    "LOCALDOMAIN",
    "MALLOC_CONF",
    "TMPDIR",
    // language runtimes
    "NODE_OPTIONS",
    "NODE_PATH",
    "NODE_EXTRA_CA_CERTS",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PYTHONINSPECT",
    "PERL5OPT",
    "PERL5LIB",
    "PERLLIB",
    "RUBYOPT",
    "RUBYLIB",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "CLASSPATH",
    "DOTNET_STARTUP_HOOKS",
    "DOTNET_ADDITIONAL_DEPS",
    "GODEBUG",
    // traffic and trust
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
];
/// The namespaces [`steers_programs`] covers (compared in upper case).
pub const STEERING_PREFIXES: &[&str] = &["LD_", "DYLD_", "CORECLR_", "COR_", "COMPlus_"];

/// Variables that choose which program runs, what a shell, the loader or a language runtime
/// loads before the app's own code, or where the app's traffic goes and whom it trusts. A vault
/// value must not set them unless the operator names them in `--allow-env`. Compared without
/// regard to case, as some tools read lower-case forms (`http_proxy`).
pub fn steers_programs(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    STEERING_NAMES.contains(&upper.as_str())
        || STEERING_PREFIXES
            .iter()
            .any(|p| upper.starts_with(&p.to_ascii_uppercase()))
}

pub use crate::net::url::is_loopback;

/// Resolve `--vault NAME|URL` into a [`Vault`]. `resource` is `--resource`, which vouches for
/// this host; other hosts (in secret identifiers and references) never inherit it.
pub fn parse_vault(text: &str, resource: Option<&str>) -> Result<Vault, Error> {
    if !text.contains("://") {
        if valid_vault_name(text) {
            let url = url::parse(&format!("https://{text}.vault.azure.net"))
                .map_err(|why| Error::Usage(format!("--vault {text:?}: {why}")))?;
            return vault_from_url(url, resource, text, Typed::Vault);
        }
        if url::parse(&format!("https://{text}")).is_ok() && text.contains('.') {
            return Err(Error::Usage(format!(
                "--vault {text:?} has no scheme: give --vault https://{text} (or the vault's name alone, e.g. --vault {})",
                text.split('.').next().unwrap_or_default()
            )));
        }
        return Err(Error::Usage(format!(
            "--vault {:?} is neither a vault name (3-24 letters, digits and dashes) nor an https:// URL",
            url::shown(text)
        )));
    }
    let url = url::parse(text)
        .map_err(|why| Error::Usage(format!("--vault {:?} is refused: {why}", url::shown(text))))?;
    if !url.path.is_empty() && url.path != "/" {
        return Err(Error::Usage(format!(
            "--vault {text:?} has a path ({}); give the vault's base URL, e.g. https://NAME.vault.azure.net",
            url.path
        )));
    }
    vault_from_url(url, resource, text, Typed::Vault)
}

/// Which input a vault URL came from, so a message points at what the user typed.
#[derive(Clone, Copy)]
enum Typed {
    Vault,
    /// A secret identifier (`--secret https://…/secrets/NAME`, a reference's `SecretUri`).
    Identifier,
}

fn vault_from_url(
    url: Url,
    resource: Option<&str>,
    text: &str,
    typed: Typed,
) -> Result<Vault, Error> {
    let host = url.host.clone();
    let loopback = is_loopback(&host);
    match url.scheme.as_str() {
        "https" => {}
        "http" if loopback => {}
        // The URL parser admits only http and https: this is plain http to another host.
        _ => {
            return Err(Error::Usage(format!(
                "vault {text:?} uses plain http; kvfetch sends tokens over https only (http is allowed for loopback emulators)"
            )));
        }
    }
    let implied = CLOUDS
        .iter()
        .find(|(suffix, _)| host.ends_with(suffix))
        .map(|(_, r)| r.to_string());
    let (resource, audience) = match (resource, implied) {
        (Some(r), _) => (check_resource(r)?, Audience::Vouched),
        (None, Some(r)) => (r, Audience::Cloud),
        (None, None) if loopback => ("https://vault.azure.net".to_string(), Audience::Loopback),
        (None, None) if let Some(meant) = typo_of_cloud(&host) => {
            // The fix only: a typo'd domain is never one to vouch for with --resource.
            let fix = match typed {
                Typed::Vault => format!("--vault https://{meant}"),
                Typed::Identifier => text.replacen(&host, &meant, 1),
            };
            return Err(Error::Usage(format!(
                "vault host {host} is not a Key Vault domain: did you mean {fix} ?"
            )));
        }
        (None, None) => {
            return Err(Error::Usage(format!(
                "vault host {host} is not a known Key Vault domain (*.vault.azure.net, *.vault.azure.cn, *.vault.usgovcloudapi.net, *.vault.microsoftazure.de); \
                 kvfetch will not send a token there unless it is --vault and you vouch for it with --resource (e.g. --vault https://{host} --resource https://vault.azure.net)"
            )));
        }
    };
    Ok(Vault {
        url: url.origin(),
        host,
        resource,
        audience,
    })
}

/// `NAME.vault.azure.com` and other near misses of a cloud's suffix → the host that was
/// probably meant (`NAME.vault.azure.net`): at most two edits away from one of [`CLOUDS`]
/// (after reading `.com` as `.net` and `keyvault` as `vault`, the commonest slips).
fn typo_of_cloud(host: &str) -> Option<String> {
    let (name, rest) = host.split_once('.')?;
    if !valid_vault_name(name) {
        return None;
    }
    // `.com` for `.net` is the commonest slip, and `.com` is closer to `.cn` than to `.net`.
    let rest = rest.trim_end_matches('.');
    let rest = match rest.strip_suffix(".com") {
        Some(stem) => format!("{stem}.net"),
        None => rest.to_string(),
    };
    // "keyvault" for "vault" (the product's name) is the other one.
    let rest = rest.strip_prefix("key").unwrap_or(&rest).to_string();
    CLOUDS
        .iter()
        .map(|(suffix, _)| &suffix[1..])
        .map(|suffix| (edit_distance(&rest, suffix), suffix))
        .filter(|(d, _)| *d <= 2)
        // On a tie the first cloud (the public one) wins: `min_by_key` keeps the first.
        .min_by_key(|(d, _)| *d)
        .map(|(_, suffix)| format!("{name}.{suffix}"))
}

/// Levenshtein distance (both texts are short host names).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (prev + cost).min(row[j] + 1).min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// `--resource`: an `https://` URL as the token audience (kept verbatim but for a trailing `/`).
pub fn check_resource(r: &str) -> Result<String, Error> {
    match url::parse(r) {
        Ok(u) if u.scheme == "https" => Ok(r.trim_end_matches('/').to_string()),
        Ok(_) => Err(Error::Usage(format!(
            "--resource {r:?} must be an https:// audience such as https://vault.azure.net"
        ))),
        Err(why) => Err(Error::Usage(format!(
            "--resource {:?} is refused: {why}",
            url::shown(r)
        ))),
    }
}

/// A Key Vault name: 3 to 24 letters, digits and single dashes.
pub fn valid_vault_name(name: &str) -> bool {
    (3..=24).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.contains("--")
}

/// A loopback vault gets a real-audience token only from an identity endpoint that is itself on
/// loopback (the emulator): on a real host, whatever listens on a loopback port (another
/// container of the pod, another user) must not receive the identity's token. `--resource`
/// vouches for a loopback `--vault` explicitly.
pub fn check_loopback_vaults(vaults: &[&Vault], identity_on_loopback: bool) -> Result<(), Error> {
    match vaults.iter().find(|v| v.audience == Audience::Loopback) {
        Some(v) if !identity_on_loopback => Err(Error::Usage(format!(
            "vault {} is on loopback but the identity endpoint is not: kvfetch sends a real token to a loopback address only when both are local (an emulator); to vouch for it, give --vault {} --resource AUDIENCE",
            v.url, v.url
        ))),
        _ => Ok(()),
    }
}

/// Parse one `[ALIAS=]REF` spec. `default_vault` is `--vault`, needed unless REF is a full
/// secret identifier; an identifier naming `--vault`'s own origin gets its audience (vouched or
/// not), any other host only what its DNS suffix implies.
pub fn parse_spec(text: &str, default_vault: Option<&Vault>) -> Result<SecretSpec, Error> {
    parse_spec_as_typed(text, default_vault).map_err(|e| match e {
        Error::Usage(_) if holds_userinfo(text) => Error::Usage(format!(
            "--secret {:?} is refused: it has user information ('@'), which kvfetch does not accept",
            url::shown(text)
        )),
        e => e,
    })
}

/// Whether a refused spec may hold a password, so no message may quote it or any part of it:
/// it has an `@` and its reference (before the options' `?`) is neither a plain secret name
/// (`NAME[/VERSION]`) nor a URL that parses (a password holding `?` starts the "options"
/// early). An `@` in a JSON pointer after a well-formed reference is the operator's own text
/// and stays quoted.
fn holds_userinfo(text: &str) -> bool {
    let head = text.split('?').next().unwrap_or_default();
    let reference = head.split_once('=').map_or(head, |(_, r)| r).trim();
    let plain = reference
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/')
        || url::parse(reference).is_ok();
    text.contains('@') && !plain
}

fn parse_spec_as_typed(text: &str, default_vault: Option<&Vault>) -> Result<SecretSpec, Error> {
    // The first `?` starts the options; an `=` before it ends the alias.
    let (head, (shape, file)) = match text.split_once('?') {
        Some((head, options)) => (head, options::parse(options, text)?),
        None => (text, (Shape::default(), false)),
    };
    let (alias, reference) = match head.split_once('=') {
        Some((a, r)) => (Some(a.trim().to_string()), r.trim()),
        None => (None, head.trim()),
    };
    if alias.as_deref() == Some("") {
        return Err(Error::Usage(format!(
            "--secret {text:?}: the alias before '=' is empty"
        )));
    }
    let (vault, path) = if reference.contains("://") {
        identifier_parts(reference, default_vault)?
    } else {
        let vault = default_vault.cloned().ok_or_else(|| {
            Error::Usage(format!(
                "--secret {text:?} names no vault: set --vault (KVFETCH_VAULT) or use a full identifier https://VAULT.vault.azure.net/secrets/NAME"
            ))
        })?;
        (vault, reference.to_string())
    };
    let mut parts = path.split('/');
    let name = parts.next().unwrap_or_default().to_string();
    let version = parts.next().filter(|v| !v.is_empty()).map(String::from);
    if !valid_name(&name) || parts.any(|p| !p.is_empty()) {
        return Err(Error::Usage(bad_name(text, &name)));
    }
    if let Some(v) = version.as_deref().filter(|v| !valid_version(v)) {
        return Err(Error::Usage(format!(
            "--secret {text:?}: {v:?} is not a valid secret version"
        )));
    }
    Ok(SecretSpec {
        text: text.to_string(),
        alias,
        vault,
        name,
        version,
        shape,
        output_name: None,
        env_alias: None,
        hidden: false,
        file,
    })
}

/// Why `name` (from the spec `text`) is not a secret name, with the likely fix.
fn bad_name(text: &str, name: &str) -> String {
    let generic = "1-127 letters, digits and dashes";
    if name.contains([',', ' ', ';']) {
        return format!(
            "--secret {text:?}: one secret per --secret (give --secret again for each); a list goes in KVFETCH_SECRETS, separated by commas, spaces or newlines"
        );
    }
    let dashed = name.replace(['_', '.'], "-");
    if dashed != name && valid_name(&dashed) {
        return format!(
            "--secret {text:?}: Key Vault names hold no '_' or '.'; did you mean {dashed:?}? ({generic}; the variable is still {}, from the name)",
            dashed.to_ascii_uppercase().replace('-', "_")
        );
    }
    format!(
        "--secret {text:?}: {name:?} is not a valid secret name ({generic}), or the reference has extra path segments"
    )
}

/// `https://HOST/secrets/NAME[/VERSION][/]` → (vault, "NAME[/VERSION]").
fn identifier_parts(
    reference: &str,
    default_vault: Option<&Vault>,
) -> Result<(Vault, String), Error> {
    let bad = || {
        Error::Usage(format!(
            "{reference:?} is not a secret identifier of the form https://VAULT.vault.azure.net/secrets/NAME[/VERSION]"
        ))
    };
    let url = url::parse(reference).map_err(|why| {
        Error::Usage(format!(
            "{:?} is refused as a secret identifier: {why}",
            url::shown(reference)
        ))
    })?;
    let rest = url
        .path
        .strip_prefix("/secrets/")
        .ok_or_else(bad)?
        .to_string();
    let vault = match default_vault.filter(|v| v.url == url.origin()) {
        Some(v) => v.clone(),
        None => vault_from_url(url, None, reference, Typed::Identifier)?,
    };
    Ok((vault, rest.trim_end_matches('/').to_string()))
}

/// Split `KVFETCH_SECRETS`: specs separated by commas, spaces or newlines.
pub fn split_list(text: &str) -> Vec<String> {
    text.split([',', ' ', '\n', '\r', '\t'])
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Check aliases and collisions for the outputs in use; `allow_env` is `--allow-env`.
pub fn check_names(
    specs: &[SecretSpec],
    files: bool,
    env: bool,
    allow_env: &[String],
) -> Result<(), Error> {
    let mut seen_files = std::collections::HashMap::new();
    let mut seen_env = std::collections::HashMap::new();
    for spec in specs.iter().filter(|s| !s.hidden) {
        if files && spec.in_outputs() {
            let f = spec.file_name();
            if !valid_file_name(f) {
                return Err(Error::Usage(format!(
                    "--secret {:?}: alias {f:?} is not a plain file name (no '/', not '.' or '..', not starting with {})",
                    spec.text,
                    crate::output::files::TEMP_PREFIX
                )));
            }
            if let Some(other) = seen_files.insert(f.to_string(), spec.text.clone()) {
                return Err(Error::Usage(format!(
                    "--secret {:?} and {other:?} both write the file {f:?}; give one an alias (ALIAS=NAME)",
                    spec.text
                )));
            }
        }
        if env {
            let e = spec.env_name();
            if !valid_env_name(&e) {
                return Err(Error::Usage(match &spec.alias {
                    Some(alias) => format!(
                        "--secret {:?}: alias {alias:?} is not a valid environment variable name: use letters, digits and _, not starting with a digit",
                        spec.text
                    ),
                    None => format!(
                        "--secret {:?}: {e:?} is not a valid environment variable name; give an alias, e.g. --secret SECRET_{e}={}",
                        spec.text, spec.text
                    ),
                }));
            }
            if steers_programs(&e) && !allow_env.iter().any(|a| a == &e) {
                let why =
                    "it decides what programs run or load, or where their traffic and trust go";
                return Err(Error::Usage(match &spec.alias {
                    Some(_) => format!(
                        "--secret {:?}: the alias names {e}, a variable kvfetch will not set from a vault value ({why}); choose another alias, or allow it with --allow-env {e} (KVFETCH_ALLOW_ENV) if the vault is meant to set it",
                        spec.text
                    ),
                    None => format!(
                        "--secret {:?} would set {e}, a variable kvfetch will not set from a vault value ({why}); give an alias (ALIAS=NAME), or allow it with --allow-env {e} (KVFETCH_ALLOW_ENV)",
                        spec.text
                    ),
                }));
            }
            if let Some(other) = seen_env.insert(e.clone(), spec.text.clone()) {
                return Err(Error::Usage(format!(
                    "--secret {:?} and {other:?} both set the variable {e}; give one an alias (ALIAS=NAME)",
                    spec.text
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault(text: &str) -> Result<Vault, Error> {
        parse_vault(text, None)
    }

    #[test]
    fn a_near_miss_of_a_cloud_suffix_suggests_the_real_one_not_resource() {
        for (typo, meant) in [
            (
                "https://x-kv.vault.azure.com",
                "https://x-kv.vault.azure.net",
            ),
            (
                "https://x-kv.vaults.azure.net",
                "https://x-kv.vault.azure.net",
            ),
            (
                "https://x-kv.keyvault.azure.net",
                "https://x-kv.vault.azure.net",
            ),
            ("https://x-kv.vault.azure.cm", "https://x-kv.vault.azure.cn"),
            (
                "https://x-kv.vault.usgovcloudapi.com",
                "https://x-kv.vault.usgovcloudapi.net",
            ),
        ] {
            let Err(Error::Usage(msg)) = vault(typo) else {
                panic!("{typo} accepted")
            };
            assert!(
                msg.contains(&format!("did you mean --vault {meant} ")),
                "{msg}"
            );
            assert!(msg.contains("did you mean"), "{msg}");
        }
        // Far from every suffix: no guess, the --resource explanation instead.
        for other in [
            "https://evilvault.azure.net",
            "https://x.vault.azure.net.evil.test",
        ] {
            let Err(Error::Usage(msg)) = vault(other) else {
                panic!("{other} accepted")
            };
            assert!(
                !msg.contains("did you mean") && msg.contains("--resource"),
                "{msg}"
            );
        }
        assert_eq!(edit_distance("vault.azure.com", "vault.azure.net"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("abc", "abc"), 0);
    }

    /// A spec that may hold a password is never quoted, whichever delimiter the password
    /// holds; an `@` in a JSON pointer of a well-formed spec is quoted as typed.
    #[test]
    fn a_secret_spec_holding_a_password_is_never_quoted() {
        let v = vault("https://v1.vault.azure.net").unwrap();
        for d in ["/", "?", "#", "@", ":", "=", "&"] {
            for text in [
                format!("https://u:Zz1{d}Qq2@v1.vault.azure.net/secrets/db"),
                format!("db=https://u:Zz1{d}Qq2@v1.vault.azure.net/secrets/db?optional"),
                format!("db=u:Zz1{d}Qq2@v1.vault.azure.net/secrets/db"),
            ] {
                let Err(Error::Usage(msg)) = parse_spec(&text, Some(&v)) else {
                    panic!("{text} accepted")
                };
                assert!(
                    !msg.contains("Zz1") && !msg.contains("Qq2"),
                    "{text}: {msg}"
                );
            }
        }
        let Err(Error::Usage(msg)) = parse_spec("db?json=/a@b&decode=no", Some(&v)) else {
            panic!("decode=no accepted")
        };
        assert!(msg.contains("\"db?json=/a@b&decode=no\""), "{msg}");
    }

    #[test]
    fn vault_names_and_clouds() {
        assert_eq!(
            vault("myvault").unwrap().url,
            "https://myvault.vault.azure.net"
        );
        assert_eq!(
            vault("https://v.vault.azure.cn/").unwrap().resource,
            "https://vault.azure.cn"
        );
        assert_eq!(
            vault("https://v.vault.usgovcloudapi.net").unwrap().resource,
            "https://vault.usgovcloudapi.net"
        );
        assert_eq!(
            vault("https://v.vault.microsoftazure.de").unwrap().resource,
            "https://vault.microsoftazure.de"
        );
        assert_eq!(
            vault("http://127.0.0.1:8443").unwrap().resource,
            "https://vault.azure.net"
        );
        assert_eq!(vault("https://[::1]:8443").unwrap().host, "[::1]");
    }

    #[test]
    fn foreign_and_plain_http_hosts_are_refused() {
        assert!(matches!(
            vault("https://evil.example.com"),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            vault("http://v.vault.azure.net"),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            vault("https://v.vault.azure.net.evil.com"),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            vault("ftp://v.vault.azure.net"),
            Err(Error::Usage(_))
        ));
        assert!(matches!(
            vault("https://v.vault.azure.net/secrets"),
            Err(Error::Usage(_))
        ));
        let vouched = parse_vault(
            "https://kv.internal.example",
            Some("https://vault.azure.net/"),
        )
        .unwrap();
        assert_eq!(vouched.resource, "https://vault.azure.net");
    }

    #[test]
    fn specs() {
        let v = vault("kv1").unwrap();
        let s = parse_spec("db-password", Some(&v)).unwrap();
        assert_eq!(
            (s.file_name(), s.env_name().as_str()),
            ("db-password", "DB_PASSWORD")
        );
        let s = parse_spec("DB=db-password/0123abcd", Some(&v)).unwrap();
        assert_eq!(
            (s.alias.as_deref(), s.version.as_deref()),
            (Some("DB"), Some("0123abcd"))
        );
        let s = parse_spec("https://other.vault.azure.net/secrets/x/", Some(&v)).unwrap();
        assert_eq!(
            (s.vault.url.as_str(), s.name.as_str(), s.version),
            ("https://other.vault.azure.net", "x", None)
        );
        let s = parse_spec("db-password?file&json=/pw", Some(&v)).unwrap();
        assert!(s.file && !s.in_outputs());
        assert_eq!(s.env_name(), "DB_PASSWORD_FILE");
        assert_eq!(
            parse_spec("db-file?file", Some(&v)).unwrap().env_name(),
            "DB_FILE"
        );
        assert_eq!(parse_spec("PW=db?file", Some(&v)).unwrap().env_name(), "PW");
        assert!(parse_spec("bad_name", Some(&v)).is_err());
        assert!(parse_spec("a/b/c", Some(&v)).is_err());
        assert!(parse_spec("x", None).is_err());
        assert!(parse_spec("=x", Some(&v)).is_err());
        assert!(parse_spec("https://evil.com/secrets/x", Some(&v)).is_err());
        // --resource vouches for the --vault host only, never for other identifiers.
        let vouched = parse_vault(
            "https://kv.internal.example",
            Some("https://vault.azure.net"),
        )
        .unwrap();
        assert_eq!(vouched.audience, Audience::Vouched);
        let same = parse_spec("https://kv.internal.example/secrets/x", Some(&vouched)).unwrap();
        assert_eq!(same.vault, vouched);
        assert!(parse_spec("https://evil.example/secrets/x", Some(&vouched)).is_err());
        assert!(
            parse_spec("http://127.0.0.1:9/secrets/x", Some(&vouched))
                .is_ok_and(|s| s.vault.audience == Audience::Loopback)
        );
    }

    #[test]
    fn name_rules_at_their_boundaries() {
        assert!(valid_name("a") && valid_name(&"a".repeat(127)) && valid_name("a-B-9"));
        assert!(!valid_name("") && !valid_name(&"a".repeat(128)) && !valid_name("a_b"));
        assert!(valid_version(&"f".repeat(64)) && !valid_version(&"f".repeat(65)));
        assert!(!valid_version("") && !valid_version("ab-c"));
        assert!(valid_env_name("_A1") && valid_env_name("a"));
        assert!(!valid_env_name("1A") && !valid_env_name("A-B") && !valid_env_name(""));
        assert!(valid_vault_name("abc") && valid_vault_name(&"a".repeat(24)));
        assert!(!valid_vault_name("ab") && !valid_vault_name(&"a".repeat(25)));
        assert!(!valid_vault_name("a--b") && !valid_vault_name("a_b"));
        assert_eq!(env_name_for("db-pass-2"), "DB_PASS_2");
        for name in [
            "PATH",
            "path",
            "Ld_Preload",
            "LD_AUDIT",
            "DYLD_X",
            "http_proxy",
            "NODE_OPTIONS",
        ] {
            assert!(steers_programs(name), "{name}");
        }
        for name in ["DB_PASSWORD", "PATHS", "MY_LD_X", "API_KEY"] {
            assert!(!steers_programs(name), "{name}");
        }
        assert!(
            check_resource("https://vault.azure.net/")
                .is_ok_and(|r| r == "https://vault.azure.net")
        );
        assert!(check_resource("http://vault.azure.net").is_err());
        assert!(parse_vault("https://v.vault.azure.net/", None).is_ok());
        assert!(parse_vault("https://v.vault.azure.net/x", None).is_err());
        let v = parse_vault("https://127.0.0.1:1", None).unwrap();
        assert_eq!(v.audience, Audience::Loopback);
        let spec = parse_spec("a", Some(&v)).unwrap();
        assert!(check_loopback_vaults(&[&spec.vault], false).is_err());
        assert!(check_loopback_vaults(&[&spec.vault], true).is_ok());
    }

    #[test]
    fn collisions_and_aliases() {
        let v = vault("kv1").unwrap();
        let specs = |list: &[&str]| {
            list.iter()
                .map(|s| parse_spec(s, Some(&v)).unwrap())
                .collect::<Vec<_>>()
        };
        let check = |list: &[&str], files, env| check_names(&specs(list), files, env, &[]);
        assert!(check(&["a-b", "A_B=c"], true, false).is_ok());
        assert!(check(&["a-b", "A_B=c"], false, true).is_err());
        assert!(check(&["x", "x"], true, false).is_err());
        assert!(check(&["..=x"], true, false).is_err());
        assert!(check(&["9lives"], false, true).is_err());
        for steering in [
            "path",
            "LD_PRELOAD=x",
            "LD_LIBRARY_PATH=x",
            "IFS=x",
            "bash-env",
        ] {
            assert!(check(&[steering], false, true).is_err(), "{steering}");
        }
        let allowed = check_names(&specs(&["path"]), false, true, &["PATH".into()]);
        assert!(allowed.is_ok());
        assert!(check(&[".kvfetch-tmp-1=x"], true, false).is_err());
        // A ?file spec writes no file under --dir: it takes no file name there.
        assert!(check(&["a?file", "a"], true, true).is_ok());
        assert!(check(&["..=x?file"], true, false).is_ok());
        assert!(check(&["A_FILE=x", "a?file"], false, true).is_err());
        assert_eq!(split_list("a, b\nc,,d"), vec!["a", "b", "c", "d"]);
    }
}
