//! Change detection by list: a refresh reads the vault's list (one request per 25 secrets) and
//! GETs only the secrets whose `updated` moved, that appeared, or that the list lost. On a
//! fleet, an unchanged refresh costs ⌈S/25⌉ requests instead of S (Key Vault bills and
//! throttles per request).
//!
//! The list's `updated` has one-second resolution, so a value fetched in the very second its
//! version was written might hide a second write in that second: such a value is read again.
//! A full read (every `--full-read-every`) covers whatever the list cannot show.

use std::collections::HashMap;

use crate::spec::SecretSpec;
use crate::vault::keyvault::{Fetched, Listed};
use crate::vault::snapshot::Snapshot;

/// A vault's list as a refresh read it: for change detection it may stop early (see
/// `Session::list_for_detection`), and then says nothing of the secrets it did not reach.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    pub entries: Vec<Listed>,
    /// Read to its end: a secret it lacks is not in the vault.
    pub complete: bool,
}

/// The key a value is held under: vault, name (any case), version.
fn key(s: &SecretSpec) -> (&str, String, Option<&str>) {
    (
        s.vault.url.as_str(),
        s.name.to_ascii_lowercase(),
        s.version.as_deref(),
    )
}

/// For each spec, the value a refresh may keep without a GET (`Some(held)`), or `None` when it
/// must be read. `listings` holds the lists read this refresh, by vault URL; a vault without
/// one (not listable) is read in full.
pub fn reusable(
    specs: &[SecretSpec],
    held: &Snapshot,
    listings: &HashMap<String, Listing>,
) -> Vec<Option<Option<Fetched>>> {
    let before: HashMap<_, &Option<Fetched>> = held
        .specs
        .iter()
        .zip(&held.values)
        .map(|(s, v)| (key(s), v))
        .collect();
    specs
        .iter()
        .map(|spec| {
            let was = before.get(&key(spec))?;
            decide(spec, was, listings.get(&spec.vault.url))
        })
        .collect()
}

fn decide(
    spec: &SecretSpec,
    was: &Option<Fetched>,
    listing: Option<&Listing>,
) -> Option<Option<Fetched>> {
    // A pinned version's value cannot change.
    if spec.version.is_some() && was.is_some() {
        return Some(was.clone());
    }
    let listing = listing?;
    let listed = listing
        .entries
        .iter()
        .find(|l| l.name.eq_ignore_ascii_case(&spec.name));
    match (was, listed) {
        (Some(f), Some(l)) if spec.version.is_none() && unchanged(f, l) => Some(Some(f.clone())),
        // An absent optional secret the whole list still lacks stays absent.
        (None, None) if spec.shape.optional && listing.complete => Some(None),
        _ => None,
    }
}

/// The list shows the version that was fetched: enabled, with the same `updated`, fetched
/// after the second of that update.
fn unchanged(f: &Fetched, l: &Listed) -> bool {
    l.enabled && f.updated.is_some() && l.updated == f.updated && f.updated < Some(f.fetched_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> SecretSpec {
        let vault = crate::spec::parse_vault("https://127.0.0.1:8443", None).unwrap();
        crate::spec::parse_spec(text, Some(&vault)).unwrap()
    }

    fn fetched(updated: u64, at: u64) -> Fetched {
        let mut f = crate::vault::keyvault::parse_bundle(r#"{"value":"v","id":"x/1"}"#).unwrap();
        f.updated = Some(updated);
        f.fetched_at = at;
        f
    }

    fn listed(name: &str, updated: u64) -> Listed {
        Listed {
            name: name.into(),
            enabled: true,
            not_before: None,
            expires: None,
            updated: Some(updated),
            managed: false,
            content_type: None,
            tags: Default::default(),
        }
    }

    #[test]
    fn only_what_the_list_shows_unchanged_is_kept() {
        let specs = [
            spec("same"),
            spec("moved"),
            spec("gone"),
            spec("new"),
            spec("pinned/abc"),
            spec("absent?optional"),
            spec("fresh"),
            spec("off"),
        ];
        let held = Snapshot {
            specs: specs[..7].iter().chain(&specs[7..]).cloned().collect(),
            values: vec![
                Some(fetched(100, 101)),
                Some(fetched(100, 101)),
                Some(fetched(100, 101)),
                None, // "new" was not there (not in held specs in practice; None here)
                Some(fetched(1, 2)),
                None,
                Some(fetched(100, 100)),
                Some(fetched(100, 101)),
            ],
        };
        let mut off = listed("OFF", 100);
        off.enabled = false;
        let listing = vec![
            listed("SAME", 100),
            listed("moved", 130),
            listed("new", 100),
            listed("fresh", 100),
            off,
        ];
        let mut listings = HashMap::from([(
            "https://127.0.0.1:8443".to_string(),
            Listing {
                entries: listing,
                complete: true,
            },
        )]);
        let got = reusable(&specs, &held, &listings);
        let kept: Vec<bool> = got.iter().map(Option::is_some).collect();
        // same: kept; moved, gone, new: read; pinned: kept; absent and unlisted: kept absent;
        // fresh (fetched in the second of its update): read; disabled: read.
        assert_eq!(kept, [true, false, false, false, true, true, false, false]);
        assert_eq!(got[5], Some(None));
        // Without a listing for the vault everything unpinned is read.
        let none = reusable(&specs, &held, &HashMap::new());
        let kept: Vec<bool> = none.iter().map(Option::is_some).collect();
        assert_eq!(
            kept,
            [false, false, false, false, true, false, false, false]
        );
        // A list cut short says nothing of an absent optional secret: it is read.
        listings.values_mut().for_each(|l| l.complete = false);
        let partial = reusable(&specs, &held, &listings);
        assert_eq!(partial[5], None);
        assert_eq!(partial[0], got[0], "what it did reach still counts");
        // A spec the held snapshot lacks is read.
        let empty = Snapshot::default();
        assert!(
            reusable(&specs, &empty, &listings)
                .iter()
                .all(Option::is_none)
        );
    }
    #[test]
    fn only_an_optional_secret_stays_absent() {
        let specs = [spec("required"), spec("maybe?optional")];
        let held = Snapshot {
            specs: specs.to_vec(),
            values: vec![None, None],
        };
        let listings = HashMap::from([(
            "https://127.0.0.1:8443".to_string(),
            Listing {
                entries: vec![listed("other", 100)],
                complete: true,
            },
        )]);
        // A required secret missing from the list is read (and its absence is an error).
        assert_eq!(reusable(&specs, &held, &listings), [None, Some(None)]);
    }
}
