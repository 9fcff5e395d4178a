//! Managed-identity tokens. Which source to ask is decided once, by [`choose`], in the Azure
//! SDKs' order (workload identity first, as `DefaultAzureCredential` does):
//!
//! | variables | source | file |
//! |---|---|---|
//! | `AZURE_FEDERATED_TOKEN_FILE` (+ `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`) | AKS workload identity | `workload.rs` |
//! | `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` + `IDENTITY_SERVER_THUMBPRINT` | Service Fabric | `service_fabric.rs` |
//! | `IDENTITY_ENDPOINT` + `IDENTITY_HEADER` | App Service, Functions, Container Apps | `app_service.rs` |
//! | `MSI_ENDPOINT` + `MSI_SECRET` | legacy App Service (2017-09-01), Azure ML | `app_service.rs` |
//! | `MSI_ENDPOINT` | Cloud Shell | `cloud_shell.rs` |
//! | `IDENTITY_ENDPOINT` + `IMDS_ENDPOINT` (or the Arc agent installed) | Azure Arc | `arc.rs` |
//! | otherwise (`AZURE_POD_IDENTITY_AUTHORITY_HOST` overrides the address) | IMDS | `imds.rs` |
//!
//! A source whose variables are present but incomplete is an error naming what is missing, never
//! a quiet fall back to IMDS (which, on an AKS node, is the node's identity: another principal
//! with other rights). `--identity-source` pins one. [`Identity`] asks the chosen source
//! politely (backoff with jitter, 410 for 70 s, `Retry-After`, fail fast on final answers), and
//! [`Tokens`] caches so a run makes one token request per audience, not one per secret.

mod app_service;
pub(crate) mod arc;
mod ask;
mod cache;
mod choose;
mod cloud_shell;
mod imds;
mod service_fabric;
pub(crate) mod token;
mod workload;

pub use ask::Identity;
use ask::*;
pub use cache::Tokens;
use choose::*;
pub use choose::{Choice, Pin, Selector, Source, choose};
pub use token::{Token, now, parse_token};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_sources_in_the_sdks_order() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "IMDS"),
            (
                &[("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:1")],
                "IMDS",
            ),
            (
                &[
                    ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
                    ("IDENTITY_HEADER", "h"),
                ],
                "App Service",
            ),
            (
                &[
                    ("IDENTITY_ENDPOINT", "https://127.0.0.1:1/sf"),
                    ("IDENTITY_HEADER", "h"),
                    ("IDENTITY_SERVER_THUMBPRINT", &"A".repeat(40)),
                ],
                "Service Fabric",
            ),
            (
                &[
                    ("MSI_ENDPOINT", "http://127.0.0.1:1/m"),
                    ("MSI_SECRET", "s"),
                ],
                "legacy",
            ),
            (&[("MSI_ENDPOINT", "http://127.0.0.1:1/m")], "Cloud Shell"),
            (
                &[
                    ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/a"),
                    ("IMDS_ENDPOINT", "http://127.0.0.1:1"),
                ],
                "Arc",
            ),
            (
                &[
                    ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
                    ("AZURE_CLIENT_ID", "c"),
                    ("AZURE_TENANT_ID", "t"),
                    ("AZURE_AUTHORITY_HOST", "http://127.0.0.1:1"),
                    ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
                    ("IDENTITY_HEADER", "h"),
                ],
                "workload",
            ),
        ];
        for (vars, want) in cases {
            let e = env(vars);
            let sel = e
                .get("AZURE_CLIENT_ID")
                .map(|c| Selector::ClientId(c.clone()));
            let c =
                choose(&e, Pin::Auto, sel.as_ref()).unwrap_or_else(|err| panic!("{vars:?}: {err}"));
            assert!(
                c.source.name().contains(want) || format!("{:?}", c.source).contains(want),
                "{vars:?}: {:?}",
                c.source
            );
        }
    }

    #[test]
    fn incomplete_variables_are_refused_by_name_never_imds() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("IDENTITY_ENDPOINT", "http://127.0.0.1:1/x")],
                "IDENTITY_ENDPOINT set",
            ),
            (&[("IDENTITY_HEADER", "h")], "IDENTITY_HEADER set"),
            (
                &[("IMDS_ENDPOINT", "http://127.0.0.1:1")],
                "IMDS_ENDPOINT set",
            ),
            (
                &[
                    ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
                    ("AZURE_CLIENT_ID", "c"),
                ],
                "AZURE_TENANT_ID",
            ),
            (
                &[
                    ("AZURE_FEDERATED_TOKEN_FILE", "/t"),
                    ("AZURE_TENANT_ID", "t"),
                ],
                "AZURE_CLIENT_ID",
            ),
        ];
        for (vars, want) in cases {
            let e = env(vars);
            let sel = e
                .get("AZURE_CLIENT_ID")
                .map(|c| Selector::ClientId(c.clone()));
            match choose(&e, Pin::Auto, sel.as_ref()) {
                Err(Error::Usage(m)) => assert!(m.contains(want), "{vars:?}: {m}"),
                other => panic!("{vars:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn secret_headers_go_only_to_this_machine_or_link_local() {
        for host in [
            "localhost",
            "127.0.0.1",
            "127.3.4.5",
            "[::1]",
            "169.254.169.254",
        ] {
            assert!(local_host(host), "{host}");
        }
        assert!(local_host("[fe80::1]"));
        for host in [
            "10.1.2.3",
            "192.168.1.1",
            "localhost.evil.test",
            "metadata",
            "[::ffff:127.0.0.1]",
            "[fec0::1]",
            "0.0.0.0",
        ] {
            assert!(!local_host(host), "{host}");
        }
        let e = env(&[
            ("IDENTITY_ENDPOINT", "http://10.1.2.3:8080/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ]);
        assert!(
            matches!(choose(&e, Pin::Auto, None), Err(Error::Usage(m)) if m.contains("must not cross a network"))
        );
    }

    #[test]
    fn every_pin_name_parses_to_its_source() {
        for (name, pin) in [
            ("auto", Pin::Auto),
            ("imds", Pin::Imds),
            ("app-service", Pin::AppService),
            ("workload", Pin::Workload),
            ("arc", Pin::Arc),
            ("cloud-shell", Pin::CloudShell),
            ("service-fabric", Pin::ServiceFabric),
        ] {
            assert_eq!(Pin::parse(name), Some(pin), "{name}");
            assert!(Pin::NAMES.contains(name), "{name} is listed");
        }
        assert_eq!(Pin::parse("IMDS"), None);
    }

    #[test]
    fn a_pin_wins_and_needs_its_variables() {
        let e = env(&[
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ]);
        let c = choose(&e, Pin::Imds, None).unwrap();
        assert!(matches!(c.source, Source::Imds { .. }));
        assert!(
            matches!(choose(&env(&[]), Pin::Workload, None), Err(Error::Usage(m)) if m.contains("AZURE_FEDERATED_TOKEN_FILE"))
        );
        assert!(
            matches!(choose(&env(&[]), Pin::AppService, None), Err(Error::Usage(m)) if m.contains("IDENTITY_ENDPOINT"))
        );
        assert!(
            matches!(choose(&env(&[]), Pin::Arc, None), Err(Error::Usage(m)) if m.contains("IDENTITY_ENDPOINT"))
        );
        assert!(
            matches!(choose(&env(&[]), Pin::CloudShell, None), Err(Error::Usage(m)) if m.contains("MSI_ENDPOINT"))
        );
        assert!(
            matches!(choose(&env(&[]), Pin::ServiceFabric, None), Err(Error::Usage(m)) if m.contains("IDENTITY_ENDPOINT"))
        );
    }

    #[test]
    fn sources_without_a_choice_of_identity_refuse_a_selector() {
        let sel = Selector::ObjectId("o".into());
        for vars in [
            &[("MSI_ENDPOINT", "http://127.0.0.1:1/m")][..],
            &[
                ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/a"),
                ("IMDS_ENDPOINT", "http://127.0.0.1:1"),
            ],
            &[
                ("MSI_ENDPOINT", "http://127.0.0.1:1/m"),
                ("MSI_SECRET", "s"),
            ],
        ] {
            assert!(
                matches!(
                    choose(&env(vars), Pin::Auto, Some(&sel)),
                    Err(Error::Usage(_))
                ),
                "{vars:?}"
            );
        }
    }
}
