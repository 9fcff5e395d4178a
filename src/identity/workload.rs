//! AKS workload identity: the projected service-account token in `AZURE_FEDERATED_TOKEN_FILE`
//! is exchanged at Entra ID (`POST {AZURE_AUTHORITY_HOST}/{AZURE_TENANT_ID}/oauth2/v2.0/token`,
//! client credentials with a JWT-bearer client assertion) for a token of the app registration
//! or user-assigned identity `AZURE_CLIENT_ID`. The file is read again for every exchange: the
//! kubelet rotates it. Entra's refusals (AADSTS codes) become messages that name the fix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Ask, Choice, Selector, Source, error_detail, form, required};
use crate::error::Error;

const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// A projected service-account token is 1–2 KB; anything much larger is not one.
const MAX_ASSERTION: u64 = 64 * 1024;

pub fn choose(env: &HashMap<String, String>, selector: Option<&Selector>) -> Result<Choice, Error> {
    let fix = "the pod needs the label azure.workload.identity/use: \"true\" and a service account annotated with azure.workload.identity/client-id (the webhook then sets AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID and AZURE_TENANT_ID)";
    let file = required(env, "AZURE_FEDERATED_TOKEN_FILE", "workload identity", fix)?;
    let client_id = match selector {
        Some(Selector::ClientId(c)) => c.clone(),
        Some(other) => {
            return Err(Error::Usage(format!(
                "workload identity exchanges the token for one app or identity, named by its client id (AZURE_CLIENT_ID / --client-id), not {}",
                Selector::describe(Some(other))
            )));
        }
        None => required(env, "AZURE_CLIENT_ID", "workload identity", fix)?,
    };
    let tenant = required(env, "AZURE_TENANT_ID", "workload identity", fix)?;
    let tenant_ok = tenant.len() <= 256
        && !tenant.starts_with('.')
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
    if !tenant_ok {
        return Err(Error::Usage(format!(
            "AZURE_TENANT_ID={tenant:?} is not a tenant id (a GUID) or domain"
        )));
    }
    let authority = authority(env.get("AZURE_AUTHORITY_HOST").filter(|v| !v.is_empty()))?;
    Ok(Choice {
        source: Source::Workload {
            token_url: format!("{authority}/{tenant}/oauth2/v2.0/token"),
            client_id,
            token_file: PathBuf::from(file),
        },
        why: "AZURE_FEDERATED_TOKEN_FILE is set (AKS workload identity)".into(),
    })
}

/// `AZURE_AUTHORITY_HOST`: https (http only on loopback, for emulators), no query.
fn authority(given: Option<&String>) -> Result<String, Error> {
    let Some(given) = given else {
        return Ok(DEFAULT_AUTHORITY.into());
    };
    let url = crate::net::url::parse(given).map_err(|why| {
        Error::Usage(format!(
            "AZURE_AUTHORITY_HOST={:?} is refused: {why}; it must be https://host[/], e.g. https://login.microsoftonline.com/",
            crate::net::url::shown(given)
        ))
    })?;
    if url.scheme != "https" && !crate::net::url::is_loopback(&url.host) {
        return Err(Error::Usage(format!(
            "AZURE_AUTHORITY_HOST={:?} must be https: the federated token would travel in clear text",
            url.full()
        )));
    }
    Ok(url.full().trim_end_matches('/').to_string())
}

/// The federated token: a regular file of at most 64 KiB, trimmed, not empty.
fn read_assertion(file: &Path) -> Result<String, Error> {
    let fail = |why: String| {
        Error::NoToken(format!(
            "cannot read the federated token AZURE_FEDERATED_TOKEN_FILE={}: {why}; the pod's projected service account token volume is missing or not mounted (label azure.workload.identity/use: \"true\" on the pod)",
            file.display()
        ))
    };
    // Non-blocking (a FIFO is refused), following the path: the kubelet's projected volume is
    // made of symlinks.
    let bytes =
        crate::base::file::read_regular(file, MAX_ASSERTION).map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| fail("it is not UTF-8 text".into()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail("it is empty".into()));
    }
    crate::base::redact::credential(token);
    Ok(token.to_string())
}

pub(super) fn ask(
    token_url: &str,
    client_id: &str,
    file: &Path,
    resource: &str,
) -> Result<Ask, Error> {
    let assertion = read_assertion(file)?;
    let scope = format!("{}/.default", resource.trim_end_matches('/'));
    Ok(Ask {
        url: token_url.to_string(),
        headers: vec![("Accept", "application/json".into())],
        form: Some(form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &assertion),
            ("scope", &scope),
        ])),
    })
}

/// Entra's refusals, by AADSTS code, each with its fix; None for what the common rules retry.
pub(super) fn classify(source: &Source, status: u16, body: &str) -> Option<Result<String, Error>> {
    let Source::Workload {
        token_url,
        client_id,
        token_file,
    } = source
    else {
        return None;
    };
    if matches!(status, 408 | 429) || status >= 500 {
        return None;
    }
    let detail = error_detail(body);
    let code = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error_codes")?.get(0)?.as_u64())
        .or_else(|| {
            let at = detail.find("AADSTS")?;
            let digits: String = detail[at + 6..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        });
    let file = token_file.display();
    let fix = match code {
        Some(700024) => format!(
            "the federated token in {file} has expired or is not yet valid: the kubelet renews it; check that the projected volume is mounted and this machine's clock"
        ),
        Some(70021) => format!(
            "no federated credential of the identity with client id {client_id} matches this pod's token: add one whose issuer is the cluster's OIDC issuer and whose subject is system:serviceaccount:NAMESPACE:SERVICE_ACCOUNT \
             (az identity federated-credential create --identity-name IDENTITY --resource-group RG --name kvfetch --issuer \"$(az aks show -n CLUSTER -g RG --query oidcIssuerProfile.issuerUrl -o tsv)\" --subject system:serviceaccount:NAMESPACE:SERVICE_ACCOUNT --audience api://AzureADTokenExchange)"
        ),
        Some(700016) => format!(
            "no app or identity with client id {client_id} in this tenant: check AZURE_CLIENT_ID (the service account's azure.workload.identity/client-id annotation) and AZURE_TENANT_ID"
        ),
        Some(90002) => "the tenant does not exist: check AZURE_TENANT_ID, and AZURE_AUTHORITY_HOST for a sovereign cloud".to_string(),
        _ => "check AZURE_CLIENT_ID, AZURE_TENANT_ID and the identity's federated credentials".to_string(),
    };
    Some(Err(Error::NoToken(format!(
        "Entra ID ({token_url}) refused to exchange the federated token for a token of client id {client_id}: HTTP {status} \"{detail}\"; {fix}"
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_must_be_https_except_on_loopback() {
        assert_eq!(authority(None).unwrap(), DEFAULT_AUTHORITY);
        let a = |s: &str| authority(Some(&s.to_string()));
        assert_eq!(
            a("https://login.microsoftonline.us/").unwrap(),
            "https://login.microsoftonline.us"
        );
        assert_eq!(a("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080");
        assert!(a("http://login.microsoftonline.com").is_err());
        assert!(a("https://login.microsoftonline.com?x=1").is_err());
    }

    #[test]
    fn a_tenant_cannot_reshape_the_url() {
        let mut env: HashMap<String, String> = [
            ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
            ("AZURE_CLIENT_ID", "c"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for bad in ["a/b", "a?b", "a#b", "../x", "a b"] {
            env.insert("AZURE_TENANT_ID".into(), bad.into());
            assert!(choose(&env, None).is_err(), "{bad}");
        }
    }
}
