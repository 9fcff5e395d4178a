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
use crate::net::url::{self};
use options::Shape;

pub use crate::net::url::is_loopback;

mod names;
mod vault;

use names::*;
pub use names::{
    STEERING_NAMES, STEERING_PREFIXES, env_name_for, steers_programs, valid_env_name,
    valid_file_name, valid_name,
};
use vault::*;
pub use vault::{
    Audience, CLOUDS, Vault, check_loopback_vaults, check_resource, parse_vault, valid_vault_name,
};

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
    fn a_vault_without_a_scheme_is_told_to_add_one_only_when_it_is_a_host() {
        let Err(Error::Usage(m)) = vault("kv.vault.azure.net") else {
            panic!("accepted")
        };
        assert!(m.contains("give --vault https://kv.vault.azure.net"), "{m}");
        // Too short for a vault name, and no domain: neither.
        for text in ["ab", "a_b.c"] {
            let Err(Error::Usage(m)) = vault(text) else {
                panic!("{text} accepted")
            };
            assert!(m.contains("is neither a vault name"), "{text}: {m}");
        }
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
            // Two neighbours swapped is one edit (for flags too): `.nc` is `.cn`, not `.net`.
            ("https://x-kv.vault.azure.nc", "https://x-kv.vault.azure.cn"),
            (
                "https://x-kv.vualt.azure.nte",
                "https://x-kv.vault.azure.net",
            ),
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
