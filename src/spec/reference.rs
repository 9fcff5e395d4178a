//! App Service's Key Vault reference syntax, for `exec`: an inherited variable whose value is
//! `@Microsoft.KeyVault(SecretUri=https://HOST/secrets/NAME[/VERSION][/])` or
//! `@Microsoft.KeyVault(VaultName=V;SecretName=N[;SecretVersion=X])` (keys case-insensitive,
//! surrounding white space tolerated) is replaced by the secret's value. The same host rules as
//! `fetch` apply to every referenced vault. A variable whose name ends in `_FILE` (the images'
//! convention for a variable that names a file) gets a file holding the value instead, as
//! `?file` does for `--secret`.
//!
//! Fail closed: a value that merely looks like a reference (`@Microsoft.KeyVault (…)`, quoted,
//! unknown or repeated keys) is refused rather than handed to the app as a literal string.

use crate::error::Error;
use crate::spec::{self, CLOUDS, SecretSpec, Vault};

const PREFIX: &str = "@microsoft.keyvault(";
const MARK: &str = "@microsoft.keyvault";

/// Whether `value` is meant as a Key Vault reference: it mentions `@Microsoft.KeyVault` at its
/// start, after white space or quotes. Anything so marked must then parse exactly.
pub fn is_reference(value: &str) -> bool {
    value
        .trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
        .get(..MARK.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(MARK))
}

const KEYS: [&str; 4] = ["secreturi", "vaultname", "secretname", "secretversion"];

/// The spec a reference in variable `var` names; a malformed reference is a usage error, so an
/// unresolved reference never reaches the app.
pub fn parse(var: &str, value: &str, default_vault: Option<&Vault>) -> Result<SecretSpec, Error> {
    let bad = |why: &str| {
        Error::Usage(format!(
            "the Key Vault reference in {var} is malformed ({why}); expected @Microsoft.KeyVault(SecretUri=https://VAULT.vault.azure.net/secrets/NAME) or @Microsoft.KeyVault(VaultName=V;SecretName=N)"
        ))
    };
    let trimmed = value.trim();
    let inner = trimmed
        .get(..PREFIX.len())
        .filter(|head| head.eq_ignore_ascii_case(PREFIX))
        .ok_or_else(|| bad("it must start with @Microsoft.KeyVault( exactly, unquoted"))?;
    let inner = trimmed[inner.len()..]
        .strip_suffix(')')
        .ok_or_else(|| bad("no closing parenthesis at the end"))?;
    let mut fields = std::collections::HashMap::new();
    for part in inner.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad("a part without '='"))?;
        let key = k.trim().to_ascii_lowercase();
        if !KEYS.contains(&key.as_str()) {
            return Err(bad(
                "an unknown key; the keys are SecretUri, VaultName, SecretName and SecretVersion",
            ));
        }
        let v = v.trim();
        if v.is_empty() || v.contains(['(', ')', '"', '\'']) {
            return Err(bad("an empty or quoted value"));
        }
        if v.contains('?') {
            return Err(bad(
                "a '?': options such as ?json= belong to kvfetch's --secret, not to a reference",
            ));
        }
        if fields.insert(key, v.to_string()).is_some() {
            return Err(bad("a key given twice"));
        }
    }
    let reference = match (
        fields.get("secreturi"),
        fields.get("vaultname"),
        fields.get("secretname"),
    ) {
        (Some(uri), None, None) if fields.len() == 1 => uri.clone(),
        (None, Some(vault), Some(name)) if !name.contains('/') => {
            let base = vault_base(vault, default_vault)
                .ok_or_else(|| bad("VaultName is not a valid vault name"))?;
            match fields.get("secretversion") {
                Some(version) => format!("{base}/secrets/{name}/{version}"),
                None => format!("{base}/secrets/{name}"),
            }
        }
        _ => {
            return Err(bad(
                "give either SecretUri alone, or VaultName and SecretName (and SecretVersion)",
            ));
        }
    };
    let mut spec = spec::parse_spec(&format!("{var}={reference}"), default_vault)?;
    spec.file = var.ends_with("_FILE");
    Ok(spec)
}

/// `https://V.<suffix>`: the DNS suffix of `--vault` when given (a loopback `--vault`, an
/// emulator, stands for every vault name), else `vault.azure.net`.
fn vault_base(name: &str, default_vault: Option<&Vault>) -> Option<String> {
    if !spec::valid_vault_name(name) {
        return None;
    }
    if let Some(v) = default_vault.filter(|v| spec::is_loopback(&v.host)) {
        return Some(v.url.clone());
    }
    let suffix = default_vault
        .and_then(|v| CLOUDS.iter().find(|(s, _)| v.host.ends_with(s)))
        .map_or(".vault.azure.net", |(s, _)| s);
    Some(format!("https://{}{suffix}", name.to_ascii_lowercase()))
}

/// Every reference among `vars`, as specs aliased to their variable.
pub fn scan<'a>(
    vars: impl Iterator<Item = (&'a String, &'a String)>,
    default_vault: Option<&Vault>,
) -> Result<Vec<SecretSpec>, Error> {
    let mut found: Vec<(&String, &String)> = vars.filter(|(_, v)| is_reference(v)).collect();
    found.sort();
    found
        .into_iter()
        .map(|(k, v)| parse(k, v, default_vault))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_syntaxes() {
        let s = parse(
            "DB",
            " @Microsoft.KeyVault( SecretUri = https://v1.vault.azure.net/secrets/db/abc123/ ) ",
            None,
        )
        .unwrap();
        assert_eq!(
            (
                s.alias.as_deref(),
                s.vault.url.as_str(),
                s.name.as_str(),
                s.version.as_deref()
            ),
            (
                Some("DB"),
                "https://v1.vault.azure.net",
                "db",
                Some("abc123")
            )
        );
        let s = parse(
            "X",
            "@microsoft.keyvault(vaultname=kv1;SECRETNAME=x;SecretVersion=ff)",
            None,
        )
        .unwrap();
        assert_eq!(
            (s.vault.url.as_str(), s.version.as_deref()),
            ("https://kv1.vault.azure.net", Some("ff"))
        );
        let cn = spec::parse_vault("https://other.vault.azure.cn", None).unwrap();
        let s = parse(
            "X",
            "@Microsoft.KeyVault(VaultName=kv1;SecretName=x)",
            Some(&cn),
        )
        .unwrap();
        assert_eq!(
            (s.vault.url.as_str(), s.vault.resource.as_str()),
            ("https://kv1.vault.azure.cn", "https://vault.azure.cn")
        );
    }

    #[test]
    fn a_reference_in_a_file_variable_is_delivered_as_a_file() {
        let uri = "@Microsoft.KeyVault(SecretUri=https://v1.vault.azure.net/secrets/db)";
        let s = parse("DB_PASSWORD_FILE", uri, None).unwrap();
        assert!(s.file && s.env_name() == "DB_PASSWORD_FILE");
        for var in ["DB_PASSWORD", "PROFILE", "DB_FILE_X", "db_password_file"] {
            assert!(!parse(var, uri, None).unwrap().file, "{var}");
        }
    }

    #[test]
    fn malformed_and_foreign_references_are_refused() {
        for bad in [
            "@Microsoft.KeyVault(SecretUri=https://v1.vault.azure.net/secrets/db",
            "@Microsoft.KeyVault(VaultName=v1)",
            "@Microsoft.KeyVault(SecretUri=https://evil.example.com/secrets/db)",
            "@Microsoft.KeyVault(SecretUri=http://v1.vault.azure.net/secrets/db)",
            "@Microsoft.KeyVault(nonsense)",
            "@Microsoft.KeyVault (SecretUri=https://v1.vault.azure.net/secrets/db)",
            "\"@Microsoft.KeyVault(SecretUri=https://v1.vault.azure.net/secrets/db)\"",
            "'@Microsoft.KeyVault(VaultName=v1;SecretName=db)'",
            "@Microsoft.KeyVault(VaultName=v1;SecretName=db;Secretname=x)",
            "@Microsoft.KeyVault(VaultName=v1;SecretName=db;Version=x)",
            "@Microsoft.KeyVault(VaultName=v1;SecretName=)",
            "@Microsoft.KeyVault(VaultName=v1;SecretName=db/x)",
            "@Microsoft.KeyVault(SecretUri=https://v1.vault.azure.net/secrets/db;SecretName=x)",
            "@Microsoft.KeyVault(SecretUri=https://evil.test?.vault.azure.net/secrets/db)",
            "@Microsoft.KeyVaultx",
            "@Microsoft.KeyVault(SecretUri=https://v1.vault.azure.net/secrets/db;SecretVersion=abc)",
            "@Microsoft.KeyVault(VaultName=ab;SecretName=db)",
            "@Microsoft.KeyVault(VaultName=a--b;SecretName=db)",
            "@Microsoft.KeyVault(VaultName=a_b_c;SecretName=db)",
        ] {
            assert!(is_reference(bad), "{bad}");
            assert!(
                matches!(parse("X", bad, None), Err(Error::Usage(_))),
                "{bad}"
            );
        }
        assert!(!is_reference("plain value"));
        for (value, why) in [
            (
                "@Microsoft.KeyVault(VaultName=v1;SecretName=)",
                "an empty or quoted value",
            ),
            (
                "@Microsoft.KeyVault(VaultName=v1;SecretName=\"db\")",
                "an empty or quoted value",
            ),
            (
                "@Microsoft.KeyVault(VaultName=v1;SecretName=a;secretname=b)",
                "a key given twice",
            ),
        ] {
            let e = parse("X", value, None).unwrap_err().to_string();
            assert!(e.contains(why), "{value}: {e}");
        }
    }
}
