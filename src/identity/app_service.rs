//! App Service, Functions and Container Apps: `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01
//! &resource=…` with `X-IDENTITY-HEADER: {IDENTITY_HEADER}` (selectors `client_id`,
//! `principal_id`, `mi_res_id`). The legacy form (`MSI_ENDPOINT` + `MSI_SECRET`, also Azure ML):
//! api-version 2017-09-01, header `secret`, selector `clientid` only, `expires_on` a date string.

use std::collections::HashMap;

use super::{
    Ask, Choice, Selector, Source, check_endpoint, check_secret_endpoint, error_detail, required,
};
use crate::base::encoding::percent_encode;
use crate::error::Error;

pub fn choose(env: &HashMap<String, String>) -> Result<Choice, Error> {
    let fix = "App Service / Container Apps set IDENTITY_ENDPOINT and IDENTITY_HEADER when the app has an identity (az containerapp identity assign / az webapp identity assign)";
    let endpoint = required(
        env,
        "IDENTITY_ENDPOINT",
        "App Service / Container Apps",
        fix,
    )?;
    required(env, "IDENTITY_HEADER", "App Service / Container Apps", fix)?;
    let endpoint = check_endpoint(&endpoint, "IDENTITY_ENDPOINT")?;
    check_secret_endpoint(&endpoint, "IDENTITY_ENDPOINT", "IDENTITY_HEADER")?;
    Ok(Choice {
        source: Source::AppService { endpoint },
        why: "IDENTITY_ENDPOINT and IDENTITY_HEADER are set".into(),
    })
}

pub fn choose_legacy(
    env: &HashMap<String, String>,
    selector: Option<&Selector>,
) -> Result<Choice, Error> {
    let fix = "the legacy App Service endpoint needs MSI_ENDPOINT and MSI_SECRET";
    let endpoint = required(env, "MSI_ENDPOINT", "App Service", fix)?;
    required(env, "MSI_SECRET", "App Service (legacy)", fix)?;
    if let Some(s @ (Selector::ObjectId(_) | Selector::ResourceId(_))) = selector {
        return Err(Error::Usage(format!(
            "the legacy App Service endpoint (MSI_ENDPOINT) selects a user-assigned identity by client id only, not {}; use --client-id",
            Selector::describe(Some(s))
        )));
    }
    let endpoint = check_endpoint(&endpoint, "MSI_ENDPOINT")?;
    check_secret_endpoint(&endpoint, "MSI_ENDPOINT", "MSI_SECRET")?;
    Ok(Choice {
        source: Source::LegacyAppService { endpoint },
        why: "MSI_ENDPOINT and MSI_SECRET are set (and IDENTITY_ENDPOINT is not)".into(),
    })
}

pub(super) fn ask(
    endpoint: &str,
    header: &str,
    resource: &str,
    selector: Option<&Selector>,
) -> Ask {
    let mut url = format!(
        "{endpoint}?api-version=2019-08-01&resource={}",
        percent_encode(resource)
    );
    match selector {
        Some(Selector::ClientId(v)) => url.push_str(&format!("&client_id={}", percent_encode(v))),
        Some(Selector::ObjectId(v)) => {
            url.push_str(&format!("&principal_id={}", percent_encode(v)))
        }
        Some(Selector::ResourceId(v)) => url.push_str(&format!("&mi_res_id={}", percent_encode(v))),
        None => {}
    }
    Ask {
        url,
        headers: vec![
            ("Metadata", "true".into()),
            ("X-IDENTITY-HEADER", header.into()),
        ],
        form: None,
    }
}

pub(super) fn ask_legacy(
    endpoint: &str,
    secret: &str,
    resource: &str,
    selector: Option<&Selector>,
) -> Ask {
    let mut url = format!(
        "{endpoint}?api-version=2017-09-01&resource={}",
        percent_encode(resource)
    );
    if let Some(Selector::ClientId(v)) = selector {
        url.push_str(&format!("&clientid={}", percent_encode(v)));
    }
    Ask {
        url,
        headers: vec![("secret", secret.into())],
        form: None,
    }
}

/// The answers only this endpoint gives: a rejected header, and its "unknown identity".
pub(super) fn classify(
    source: &Source,
    status: u16,
    body: &str,
    who: &str,
) -> Option<Result<String, Error>> {
    let endpoint = source.endpoint();
    let detail = error_detail(body);
    let (var, header) = match source {
        Source::LegacyAppService { .. } => ("MSI_ENDPOINT", "MSI_SECRET"),
        _ => ("IDENTITY_ENDPOINT", "IDENTITY_HEADER"),
    };
    if matches!(status, 401 | 403) {
        return Some(Err(Error::NoToken(format!(
            "the identity endpoint {endpoint} ({var}) rejected {header}: HTTP {status} \"{detail}\"; \
             the platform rotates that value: pass the container's own {header} through unchanged (do not copy or pin it), or restart the app so it gets the current one"
        ))));
    }
    if detail
        .to_ascii_lowercase()
        .contains("unable to load the proper managed identity")
    {
        return Some(Err(Error::NoToken(format!(
            "no managed identity found: {endpoint} answered HTTP {status} \"{detail}\" for {who}; assign it to the app (az containerapp identity assign / az webapp identity assign, with --user-assigned RESOURCE_ID for a user-assigned one) and check the id"
        ))));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_headers_per_flavour() {
        let a = ask(
            "http://l/msi/token",
            "h",
            "r",
            Some(&Selector::ObjectId("o".into())),
        );
        assert!(
            a.url
                .ends_with("?api-version=2019-08-01&resource=r&principal_id=o"),
            "{}",
            a.url
        );
        assert!(a.headers.contains(&("X-IDENTITY-HEADER", "h".into())));
        let l = ask_legacy(
            "http://l/m",
            "s",
            "r",
            Some(&Selector::ClientId("c".into())),
        );
        assert_eq!(
            l.url,
            "http://l/m?api-version=2017-09-01&resource=r&clientid=c"
        );
        assert_eq!(l.headers, vec![("secret", "s".to_string())]);
    }
}
