//! Vaults: a vault name or URL turned into a [`Vault`] (its cloud, host and token audience),
//! with the fix for a near miss of a cloud's domain; `--resource`; the loopback rule.

use super::*;
use crate::error::Error;
use crate::net::url::{self, Url};

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
pub(super) enum Typed {
    Vault,
    /// A secret identifier (`--secret https://…/secrets/NAME`, a reference's `SecretUri`).
    Identifier,
}

pub(super) fn vault_from_url(
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
pub(super) fn typo_of_cloud(host: &str) -> Option<String> {
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
    // On a tie the first cloud (the public one) wins.
    let suffixes = CLOUDS.iter().map(|(suffix, _)| &suffix[1..]);
    crate::base::similar::closest(&rest, suffixes, 2).map(|suffix| format!("{name}.{suffix}"))
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
