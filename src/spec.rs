//! What to fetch and from where: vault URLs, secret specs, and the names secrets get on disk and
//! in the environment.
//!
//! The host rules live here because they are what keeps a token from leaking: a token is only
//! ever sent to a vault whose DNS suffix names the token's audience (or to loopback, or to a host
//! the user vouched for with `--resource`), and only over `https` (`http` for loopback only).

use crate::error::Error;

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
}

impl SecretSpec {
    /// The file name under `--dir`.
    pub fn file_name(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }

    /// The environment variable name.
    pub fn env_name(&self) -> String {
        self.alias
            .clone()
            .unwrap_or_else(|| env_name_for(&self.name))
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

/// Is this a plain file name (no `/`, not `.` or `..`, not empty)?
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// Is `host` a loopback name or address?
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Split `scheme://authority/path` into (scheme, authority, host, path).
fn split_url(url: &str) -> Option<(&str, &str, String, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let host = if authority.starts_with('[') {
        authority.split(']').next()?.to_string() + "]"
    } else {
        authority.split(':').next()?.to_string()
    };
    Some((scheme, authority, host.to_ascii_lowercase(), path))
}

/// Resolve `--vault NAME|URL` (or the vault part of a secret identifier) into a [`Vault`].
/// `resource` is `--resource`, which vouches for any host.
pub fn parse_vault(text: &str, resource: Option<&str>) -> Result<Vault, Error> {
    let text = text.trim();
    let url = if text.contains("://") {
        text.trim_end_matches('/').to_string()
    } else if valid_vault_name(text) {
        format!("https://{}.vault.azure.net", text.to_ascii_lowercase())
    } else {
        return Err(Error::Usage(format!(
            "--vault {text:?} is neither a vault name (3-24 letters, digits and dashes) nor an https:// URL"
        )));
    };
    let Some((scheme, authority, host, path)) = split_url(&url) else {
        return Err(Error::Usage(format!("--vault {text:?} is not a valid URL")));
    };
    if !path.is_empty() {
        return Err(Error::Usage(format!(
            "--vault {text:?} has a path ({path}); give the vault's base URL, e.g. https://NAME.vault.azure.net"
        )));
    }
    vault_from_parts(scheme, authority, host, resource, text)
}

fn vault_from_parts(
    scheme: &str,
    authority: &str,
    host: String,
    resource: Option<&str>,
    text: &str,
) -> Result<Vault, Error> {
    let loopback = is_loopback(&host);
    match scheme {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(Error::Usage(format!(
                "vault {text:?} uses plain http; kvfetch sends tokens over https only (http is allowed for loopback emulators)"
            )));
        }
        _ => {
            return Err(Error::Usage(format!(
                "vault {text:?}: the scheme must be https"
            )));
        }
    }
    let implied = CLOUDS
        .iter()
        .find(|(suffix, _)| host.ends_with(suffix))
        .map(|(_, r)| r.to_string());
    let resource = match (resource, implied) {
        (Some(r), _) => r.trim_end_matches('/').to_string(),
        (None, Some(r)) => r,
        (None, None) if loopback => "https://vault.azure.net".to_string(),
        (None, None) => {
            return Err(Error::Usage(format!(
                "vault host {host} is not a known Key Vault domain (*.vault.azure.net, *.vault.azure.cn, *.vault.usgovcloudapi.net, *.vault.microsoftazure.de); \
                 kvfetch will not send a token there unless you vouch for it with --resource (e.g. --resource https://vault.azure.net)"
            )));
        }
    };
    Ok(Vault {
        url: format!("{scheme}://{}", authority.to_ascii_lowercase()),
        host,
        resource,
    })
}

fn valid_vault_name(name: &str) -> bool {
    (3..=24).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.contains("--")
}

/// Parse one `[ALIAS=]REF` spec. `default_vault` is `--vault`, needed unless REF is a full
/// secret identifier.
pub fn parse_spec(
    text: &str,
    default_vault: Option<&Vault>,
    resource: Option<&str>,
) -> Result<SecretSpec, Error> {
    let (alias, reference) = match text.split_once('=') {
        Some((a, r)) => (Some(a.trim().to_string()), r.trim()),
        None => (None, text.trim()),
    };
    if alias.as_deref() == Some("") {
        return Err(Error::Usage(format!(
            "--secret {text:?}: the alias before '=' is empty"
        )));
    }
    let (vault, path) = if reference.contains("://") {
        identifier_parts(reference, resource)?
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
        return Err(Error::Usage(format!(
            "--secret {text:?}: {name:?} is not a valid secret name (1-127 letters, digits and dashes), or the reference has extra path segments"
        )));
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
    })
}

/// `https://HOST/secrets/NAME[/VERSION][/]` → (vault, "NAME[/VERSION]").
fn identifier_parts(reference: &str, resource: Option<&str>) -> Result<(Vault, String), Error> {
    let bad = || {
        Error::Usage(format!(
            "{reference:?} is not a secret identifier of the form https://VAULT.vault.azure.net/secrets/NAME[/VERSION]"
        ))
    };
    let (scheme, authority, host, path) = split_url(reference).ok_or_else(bad)?;
    if reference.contains(['?', '#']) {
        return Err(bad());
    }
    let rest = path.strip_prefix("/secrets/").ok_or_else(bad)?;
    let vault = vault_from_parts(scheme, authority, host, resource, reference)?;
    Ok((vault, rest.trim_end_matches('/').to_string()))
}

/// Split `KVFETCH_SECRETS`: specs separated by commas, spaces or newlines.
pub fn split_list(text: &str) -> Vec<String> {
    text.split([',', ' ', '\n', '\r', '\t'])
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Check aliases and collisions for the outputs in use.
pub fn check_names(specs: &[SecretSpec], files: bool, env: bool) -> Result<(), Error> {
    let mut seen_files = std::collections::HashMap::new();
    let mut seen_env = std::collections::HashMap::new();
    for spec in specs {
        if files {
            let f = spec.file_name();
            if !valid_file_name(f) {
                return Err(Error::Usage(format!(
                    "--secret {:?}: alias {f:?} is not a plain file name (no '/', not '.' or '..')",
                    spec.text
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
                return Err(Error::Usage(format!(
                    "--secret {:?}: {e:?} is not a valid environment variable name; give an alias (ALIAS=NAME)",
                    spec.text
                )));
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
        let s = parse_spec("db-password", Some(&v), None).unwrap();
        assert_eq!(
            (s.file_name(), s.env_name().as_str()),
            ("db-password", "DB_PASSWORD")
        );
        let s = parse_spec("DB=db-password/0123abcd", Some(&v), None).unwrap();
        assert_eq!(
            (s.alias.as_deref(), s.version.as_deref()),
            (Some("DB"), Some("0123abcd"))
        );
        let s = parse_spec("https://other.vault.azure.net/secrets/x/", Some(&v), None).unwrap();
        assert_eq!(
            (s.vault.url.as_str(), s.name.as_str(), s.version),
            ("https://other.vault.azure.net", "x", None)
        );
        assert!(parse_spec("bad_name", Some(&v), None).is_err());
        assert!(parse_spec("a/b/c", Some(&v), None).is_err());
        assert!(parse_spec("x", None, None).is_err());
        assert!(parse_spec("=x", Some(&v), None).is_err());
        assert!(parse_spec("https://evil.com/secrets/x", Some(&v), None).is_err());
    }

    #[test]
    fn collisions_and_aliases() {
        let v = vault("kv1").unwrap();
        let specs = |list: &[&str]| {
            list.iter()
                .map(|s| parse_spec(s, Some(&v), None).unwrap())
                .collect::<Vec<_>>()
        };
        assert!(check_names(&specs(&["a-b", "A_B=c"]), true, false).is_ok());
        assert!(check_names(&specs(&["a-b", "A_B=c"]), false, true).is_err());
        assert!(check_names(&specs(&["x", "x"]), true, false).is_err());
        assert!(check_names(&specs(&["..=x"]), true, false).is_err());
        assert!(check_names(&specs(&["9lives"]), false, true).is_err());
        assert_eq!(split_list("a, b\nc,,d"), vec!["a", "b", "c", "d"]);
    }
}
