//! The paged list of a vault's secrets a selection reads: every page within the deadline, each
//! bounded while it is parsed (entries a page, entries in all, bytes kept, `nextLink` length), a
//! `nextLink` followed only on the vault's own origin.

use super::*;
use crate::base::retry::Deadline;
use crate::error::Error;
use crate::identity::Tokens;
use crate::spec::Vault;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// One entry of the vault's list of secrets: its name and what a selection decides on (a list
/// carries no values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The name as the vault spells it (the last segment of the item's `id`).
    pub name: String,
    pub enabled: bool,
    /// `nbf` and `exp` (Unix seconds), if set.
    pub not_before: Option<u64>,
    pub expires: Option<u64>,
    /// The `updated` attribute of the current version (Unix seconds).
    pub updated: Option<u64>,
    /// Backs a certificate (`managed: true`).
    pub managed: bool,
    pub content_type: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// At most this many pages (25 secrets each) are read: a vault that keeps sending `nextLink`s
/// past 25,000 secrets is taken for a broken or hostile server.
pub const MAX_LIST_PAGES: usize = 1000;

/// At most this many entries on one page: Key Vault sends 25; a page of more is refused while
/// it is parsed, before its entries are allocated.
pub const MAX_PAGE_ENTRIES: usize = 100;

/// At most this many entries in the whole list (1,000 pages of Key Vault's 25).
pub const MAX_LISTED: usize = 25_000;

/// What one entry may keep of its content type and tags (Key Vault's own limits: 255
/// characters; 15 tags, keys of 512 and values of 256 characters). Beyond, they are left out.
pub(super) const MAX_CONTENT_TYPE: usize = 255;

/// At most this many bytes of names, content types and tags kept from the whole list: with the
/// limits above an entry keeps at most ~12 KB, and 25,000 of those would be 300 MB.
pub const MAX_LIST_BYTES: usize = 32 << 20;

/// The longest `nextLink` followed (real ones are a few hundred bytes): each is kept to notice a
/// loop, so 1,000 of them stay small.
pub const MAX_NEXT_LINK: usize = 8 << 10;

pub(super) const MAX_TAGS: usize = 15;

pub(super) const MAX_TAG_KEY: usize = 512;

pub(super) const MAX_TAG_VALUE: usize = 256;

/// A `nextLink` → the URL of the next page, on the vault's own origin. The link must name that
/// origin (`:443` spelled out or not) or be relative, and the path `/secrets`: a token is never
/// sent where a server's answer points. The link's own `api-version` is replaced with ours.
pub fn next_url(vault: &Vault, link: &str, api_version: &str) -> Result<String, Error> {
    let refuse = |why: &str| {
        Error::Protocol(format!(
            "vault {} sent a nextLink kvfetch will not follow ({why}): {}",
            vault.url,
            crate::base::log::escape(&crate::base::redact::cut_quiet(link, 200))
        ))
    };
    if link.len() > MAX_NEXT_LINK {
        return Err(refuse("it is longer than 8 KiB"));
    }
    let (base, query) = link.split_once('?').unwrap_or((link, ""));
    let path = if base.starts_with('/') {
        base.to_string()
    } else {
        let ours = crate::net::url::parse(&vault.url).map_err(|_| refuse("no vault origin"))?;
        let theirs = crate::net::url::parse(base).map_err(refuse)?;
        let port =
            |u: &crate::net::url::Url| u.port.unwrap_or(if u.scheme == "https" { 443 } else { 80 });
        if theirs.scheme != ours.scheme || theirs.host != ours.host || port(&theirs) != port(&ours)
        {
            return Err(refuse("it names another origin"));
        }
        theirs.path
    };
    if path.trim_end_matches('/') != "/secrets" {
        return Err(refuse("its path is not /secrets"));
    }
    let query_char = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b);
    if !query.bytes().all(query_char) {
        return Err(refuse("its query holds characters a URL may not"));
    }
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("api-version="))
        .collect();
    let ours = format!("api-version={api_version}");
    params.push(&ours);
    Ok(format!("{}/secrets?{}", vault.url, params.join("&")))
}

/// A page of the secret list → its entries (`Err(id)` for one that names no valid secret) and
/// its `nextLink` (None when null, empty or absent). Err (why) when the body is not such a page,
/// or holds more than [`MAX_PAGE_ENTRIES`] entries: the count is checked while the array is
/// read, so a page of a million tiny entries never becomes a million values.
pub(crate) fn parse_page(body: &str) -> Result<Page, String> {
    let not_a_list = || "is not a Key Vault secret list".to_string();
    let raw: RawPage = match serde_json::from_str(body) {
        Ok(raw) => raw,
        Err(e) if e.to_string().contains(TOO_MANY) => {
            return Err(format!(
                "has a page of more than {MAX_PAGE_ENTRIES} entries (Key Vault sends 25)"
            ));
        }
        Err(_) => return Err(not_a_list()),
    };
    let items = raw.value.ok_or_else(not_a_list)?.0;
    let next = match raw.next_link {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(not_a_list()),
    };
    Ok((items.iter().map(parse_item).collect(), next))
}

/// The marker of a page refused for its length (see [`Bounded`]).
pub(super) const TOO_MANY: &str = "kvfetch: too many entries on a page";

/// A page as read: `value` bounded, `nextLink` as any JSON.
#[derive(serde::Deserialize)]
pub(super) struct RawPage {
    pub(super) value: Option<Bounded>,
    #[serde(rename = "nextLink")]
    pub(super) next_link: Option<Value>,
}

/// A JSON array of at most [`MAX_PAGE_ENTRIES`] values; one more fails the parse.
pub(super) struct Bounded(Vec<Value>);

impl<'de> serde::Deserialize<'de> for Bounded {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Bounded;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of list entries")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Bounded, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Value>()? {
                    if items.len() == MAX_PAGE_ENTRIES {
                        return Err(serde::de::Error::custom(TOO_MANY));
                    }
                    items.push(item);
                }
                Ok(Bounded(items))
            }
        }
        d.deserialize_seq(Visit)
    }
}

/// The bytes one entry keeps of what the vault sent (names, content type, tags).
pub(super) fn retained(l: &Listed) -> usize {
    let tags: usize = l.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
    l.name.len() + l.content_type.as_ref().map_or(0, String::len) + tags
}

/// One list entry; its name is the last segment of `id` after `/secrets/`.
pub(super) fn parse_item(item: &Value) -> Result<Listed, String> {
    let id = item.get("id").and_then(Value::as_str).unwrap_or_default();
    let shown = || crate::base::log::escape(&crate::base::redact::cut_quiet(id, 200));
    let name = id
        .trim_end_matches('/')
        .rsplit_once("/secrets/")
        .map(|(_, n)| n)
        .filter(|n| crate::spec::valid_name(n))
        .ok_or_else(shown)?;
    let attr = |k: &str| item.pointer(&format!("/attributes/{k}"));
    Ok(Listed {
        name: name.to_string(),
        enabled: attr("enabled").and_then(Value::as_bool).unwrap_or(true),
        not_before: attr("nbf").and_then(Value::as_u64),
        expires: attr("exp").and_then(Value::as_u64),
        updated: attr("updated").and_then(Value::as_u64),
        managed: item
            .get("managed")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        content_type: item
            .get("contentType")
            .and_then(Value::as_str)
            .filter(|c| c.chars().count() <= MAX_CONTENT_TYPE)
            .map(String::from),
        tags: item
            .get("tags")
            .and_then(Value::as_object)
            .map(|t| {
                t.iter()
                    .filter_map(|(k, v)| Some((k, v.as_str()?)))
                    .filter(|(k, v)| {
                        k.chars().count() <= MAX_TAG_KEY && v.chars().count() <= MAX_TAG_VALUE
                    })
                    .take(MAX_TAGS)
                    .map(|(k, v)| (k.clone(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

impl Client {
    /// Every secret the vault lists (following `nextLink` to the end), retrying each page
    /// within `deadline` (a 403 only when `patient`). Entries whose id names no valid secret are
    /// left out with a warning.
    pub fn list(
        &self,
        vault: &Vault,
        tokens: &Tokens,
        deadline: &Deadline,
        patient: bool,
    ) -> Result<Vec<Listed>, Error> {
        let (items, _) = self.list_while(vault, tokens, deadline, patient, &mut |_, _| true)?;
        Ok(items)
    }

    /// [`Client::list`], asking `more(entries so far, pages read)` before each page after the
    /// first whether to go on; (entries, whether the list was read to its end). Of the entries
    /// left out, the first few are named and the rest counted in one line.
    pub fn list_while(
        &self,
        vault: &Vault,
        tokens: &Tokens,
        deadline: &Deadline,
        patient: bool,
        more: &mut dyn FnMut(&[Listed], usize) -> bool,
    ) -> Result<(Vec<Listed>, bool), Error> {
        let mut invalid = crate::base::log::Capped::new();
        let listed = self.list_pages(vault, tokens, deadline, patient, more, &mut invalid);
        invalid.finish(
            true,
            "the vault listed more entries whose ids name no valid secret; left out, not named one by one",
            &[("vault", &vault.url)],
        );
        listed
    }

    /// The pages of [`Client::list_while`]; `invalid` counts the entries left out.
    pub(super) fn list_pages(
        &self,
        vault: &Vault,
        tokens: &Tokens,
        deadline: &Deadline,
        patient: bool,
        more: &mut dyn FnMut(&[Listed], usize) -> bool,
        invalid: &mut crate::base::log::Capped,
    ) -> Result<(Vec<Listed>, bool), Error> {
        let mut url = format!("{}/secrets?api-version={}", vault.url, self.api_version);
        let (mut items, mut seen, mut links) = (Vec::new(), HashSet::new(), HashSet::new());
        let mut kept = 0usize;
        for page_number in 0..MAX_LIST_PAGES {
            if page_number > 0 && !more(&items, page_number) {
                return Ok((items, false));
            }
            let body = self.call(Subject::List(vault, patient), &url, tokens, deadline)?;
            let (page, next) = parse_page(&body).map_err(|why| {
                Error::Protocol(format!(
                    "the list of secrets of vault {} {why}; check that --vault points at Key Vault and not at a proxy",
                    vault.url
                ))
            })?;
            kept += page.iter().flatten().map(retained).sum::<usize>();
            if items.len() + page.len() > MAX_LISTED || kept > MAX_LIST_BYTES {
                return Err(Error::Protocol(format!(
                    "vault {} listed more than {MAX_LISTED} secrets (or {} MiB of names, tags and content types); kvfetch stopped listing (a vault this large needs explicit --secret specs)",
                    vault.url,
                    MAX_LIST_BYTES >> 20
                )));
            }
            for item in page {
                match item {
                    Ok(l) if seen.insert(l.name.to_ascii_lowercase()) => items.push(l),
                    Ok(_) => {}
                    Err(id) => invalid.note(|| {
                        crate::base::log::warn(
                            "the vault listed an entry whose id names no valid secret; left out",
                            &[("vault", &vault.url), ("id", &id)],
                        )
                    }),
                }
            }
            let Some(link) = next else {
                return Ok((items, true));
            };
            url = next_url(vault, &link, &self.api_version)?;
            if !links.insert(url.clone()) {
                return Err(Error::Protocol(format!(
                    "vault {} sent the same nextLink twice while listing secrets (a loop); kvfetch stopped listing",
                    vault.url
                )));
            }
        }
        Err(Error::Protocol(format!(
            "vault {} listed more than {MAX_LIST_PAGES} pages of secrets; kvfetch stopped listing (a vault this large needs explicit --secret specs)",
            vault.url
        )))
    }
}
