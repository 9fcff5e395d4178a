//! Cloud Shell (`MSI_ENDPOINT` without `MSI_SECRET`): `POST {MSI_ENDPOINT}` with `Metadata:
//! true` and the form `resource=…`. The token is the signed-in user's; there is no choice of
//! identity.

use std::collections::HashMap;

use super::{Ask, Choice, Selector, Source, check_endpoint, form, no_selector, required};
use crate::error::Error;

pub fn choose(env: &HashMap<String, String>, selector: Option<&Selector>) -> Result<Choice, Error> {
    let endpoint = required(
        env,
        "MSI_ENDPOINT",
        "Cloud Shell",
        "Cloud Shell sets MSI_ENDPOINT",
    )?;
    no_selector(selector, "Cloud Shell")?;
    Ok(Choice {
        source: Source::CloudShell {
            endpoint: check_endpoint(&endpoint, "MSI_ENDPOINT")?,
        },
        why: "MSI_ENDPOINT is set without MSI_SECRET (Cloud Shell)".into(),
    })
}

pub(super) fn ask(endpoint: &str, resource: &str) -> Ask {
    Ask {
        url: endpoint.to_string(),
        headers: vec![("Metadata", "true".into())],
        form: Some(form(&[("resource", resource)])),
    }
}
