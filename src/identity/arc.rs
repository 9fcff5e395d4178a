//! Azure Arc-enabled servers (`IDENTITY_ENDPOINT` + `IMDS_ENDPOINT`, or the agent installed):
//! the first `GET` is answered 401 with `WWW-Authenticate: Basic realm=<key file>`; the file's
//! contents are sent back as `Authorization: Basic <contents>`. The key file must be a regular
//! file directly in the agent's token directory, end in `.key` and hold at most 4096 bytes:
//! anything else is refused without reading it, so an endpoint can never make kvfetch read and
//! send another file.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path};

use super::{ARC_AGENT, ARC_DEFAULT, Ask, Choice, Selector, Source, check_endpoint, no_selector};
use crate::base::encoding::percent_encode;
use crate::error::Error;
use crate::net::http::Reply;

/// Where the Arc agent writes its key files (Linux).
pub const TOKEN_DIR: &str = "/var/opt/azcmagent/tokens";
const MAX_KEY: u64 = 4096;

pub fn choose(env: &HashMap<String, String>, selector: Option<&Selector>) -> Result<Choice, Error> {
    no_selector(selector, "Azure Arc")?;
    let (endpoint, why) = match env.get("IDENTITY_ENDPOINT").filter(|v| !v.is_empty()) {
        Some(e) => (
            check_endpoint(e, "IDENTITY_ENDPOINT")?,
            "IDENTITY_ENDPOINT and IMDS_ENDPOINT are set (Azure Arc)",
        ),
        None if Path::new(ARC_AGENT).exists() => (
            ARC_DEFAULT.to_string(),
            "the Azure Arc agent is installed (/opt/azcmagent/bin/himds)",
        ),
        None => {
            return Err(Error::Usage(
                "Azure Arc: IDENTITY_ENDPOINT is not set and the Arc agent is not installed; kvfetch does not fall back to another identity".into(),
            ));
        }
    };
    // The agent listens on this machine: a key file must never travel to another host.
    let local = crate::net::url::parse(&endpoint)
        .is_ok_and(|u| crate::net::url::is_loopback(&u.host) || u.host == "localhost");
    if !local {
        return Err(Error::Usage(format!(
            "Azure Arc: IDENTITY_ENDPOINT={endpoint} is not on this machine (localhost or a loopback address); the agent's key would leave it"
        )));
    }
    Ok(Choice {
        source: Source::Arc { endpoint },
        why: why.into(),
    })
}

pub(super) fn ask(endpoint: &str, resource: &str, key: Option<&str>) -> Ask {
    let mut headers = vec![("Metadata", "true".to_string())];
    if let Some(k) = key {
        headers.push(("Authorization", format!("Basic {k}")));
    }
    Ask {
        url: format!(
            "{endpoint}?api-version=2020-06-01&resource={}",
            percent_encode(resource)
        ),
        headers,
        form: None,
    }
}

/// The challenge's key file, checked, then read.
pub(crate) fn read_key(reply: &Reply, endpoint: &str) -> Result<String, Error> {
    let refuse = |why: &str| {
        Error::NoToken(format!(
            "the Azure Arc endpoint {endpoint} answered 401 with a challenge kvfetch refuses ({why}); it reads key files only directly in {TOKEN_DIR}, named *.key, of at most {MAX_KEY} bytes"
        ))
    };
    let realm = reply
        .www_authenticate
        .as_deref()
        .and_then(|h| h.trim().strip_prefix("Basic realm="))
        .map(|r| r.trim().trim_matches('"'))
        .ok_or_else(|| refuse("no Basic realm naming a key file"))?;
    let path = Path::new(realm);
    let plain = path
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain || path.parent() != Some(Path::new(TOKEN_DIR)) {
        return Err(refuse(
            "the key file is not directly in the agent's token directory",
        ));
    }
    if path.extension().is_none_or(|e| e != "key") {
        return Err(refuse("the key file's name does not end in .key"));
    }
    let canonical = std::fs::canonicalize(path).ok();
    let dir = std::fs::canonicalize(TOKEN_DIR).ok();
    if canonical.as_deref().and_then(Path::parent) != dir.as_deref() {
        return Err(refuse("it resolves outside the agent's token directory"));
    }
    // Opened once, never through a symlink, never blocking (a FIFO); then the open file itself
    // is judged: a regular file, small, with no other name (a hard link to a file elsewhere).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            Error::NoToken(format!(
                "cannot read the Azure Arc key file {realm}: {e}; run kvfetch as root or as a member of the himds group"
            ))
        })?;
    let meta = file
        .metadata()
        .map_err(|e| refuse(&format!("cannot stat it: {e}")))?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    if meta.len() > MAX_KEY {
        return Err(refuse("it is larger than 4096 bytes"));
    }
    if meta.nlink() != 1 {
        return Err(refuse("it has other names (a hard link)"));
    }
    let mut key = String::new();
    file.take(MAX_KEY)
        .read_to_string(&mut key)
        .map_err(|e| refuse(&format!("cannot read it: {e}")))?;
    let key = key.trim().to_string();
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(refuse("the key is empty or not printable"));
    }
    crate::base::redact::credential(&key);
    Ok(key)
}

/// A second 401, after the key was sent.
pub(super) fn rejected(endpoint: &str) -> Error {
    Error::NoToken(format!(
        "the Azure Arc endpoint {endpoint} rejected the key from its own challenge; check that the Arc agent (himds) is healthy: azcmagent show"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(realm: &str) -> Reply {
        Reply {
            status: 401,
            www_authenticate: Some(format!("Basic realm={realm}")),
            ..Reply::default()
        }
    }

    #[test]
    fn only_key_files_in_the_token_directory_are_read() {
        for realm in [
            "/etc/shadow",
            "/var/opt/azcmagent/tokens/../../../etc/shadow",
            "/var/opt/azcmagent/tokens/sub/x.key",
            "/var/opt/azcmagent/tokens/x.txt",
            "relative/x.key",
            "/var/opt/azcmagent/tokens",
        ] {
            let e = read_key(&challenge(realm), "http://e").unwrap_err();
            assert!(e.to_string().contains("refuses"), "{realm}: {e}");
        }
        let none = Reply {
            status: 401,
            ..Reply::default()
        };
        assert!(read_key(&none, "http://e").is_err());
    }
}
