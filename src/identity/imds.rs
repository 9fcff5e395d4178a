//! IMDS (VMs, VM scale sets, ACI, AKS nodes): `GET http://169.254.169.254/metadata/identity/
//! oauth2/token?api-version=2018-02-01&resource=…` with `Metadata: true`, never through a proxy.
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST` replaces the base URL, as in the Azure SDKs.

use std::collections::HashMap;

use super::{Ask, Choice, IMDS_BASE, Selector, Source, check_endpoint};
use crate::base::encoding::percent_encode;
use crate::error::Error;

pub const PATH: &str = "/metadata/identity/oauth2/token";

pub fn choose(env: &HashMap<String, String>) -> Result<Choice, Error> {
    let (base, why) = match env
        .get("AZURE_POD_IDENTITY_AUTHORITY_HOST")
        .filter(|v| !v.is_empty())
    {
        Some(b) => (
            check_endpoint(b, "AZURE_POD_IDENTITY_AUTHORITY_HOST")?
                .trim_end_matches('/')
                .to_string(),
            "AZURE_POD_IDENTITY_AUTHORITY_HOST names an IMDS stand-in",
        ),
        None => (
            IMDS_BASE.to_string(),
            "no other identity source's variables are set",
        ),
    };
    Ok(Choice {
        source: Source::Imds { base },
        why: why.into(),
    })
}

pub(super) fn ask(base: &str, resource: &str, selector: Option<&Selector>) -> Ask {
    let mut url = format!(
        "{base}{PATH}?api-version=2018-02-01&resource={}",
        percent_encode(resource)
    );
    match selector {
        Some(Selector::ClientId(v)) => url.push_str(&format!("&client_id={}", percent_encode(v))),
        Some(Selector::ObjectId(v)) => url.push_str(&format!("&object_id={}", percent_encode(v))),
        Some(Selector::ResourceId(v)) => {
            url.push_str(&format!("&msi_res_id={}", percent_encode(v)))
        }
        None => {}
    }
    Ask {
        url,
        headers: vec![("Metadata", "true".into())],
        form: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_names_the_selector_as_imds_spells_it() {
        let a = ask(
            "http://h",
            "https://vault.azure.net",
            Some(&Selector::ResourceId("/a b".into())),
        );
        assert_eq!(
            a.url,
            "http://h/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net&msi_res_id=%2Fa%20b"
        );
        assert_eq!(a.headers, vec![("Metadata", "true".to_string())]);
    }
}
