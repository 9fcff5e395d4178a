//! Property tests for every parser that takes outside input: URLs and vaults (whatever is
//! accepted, the host connected to is the host checked), secret specs, Key Vault references,
//! duration flags, token answers and the log escaper. A few hundred cases each by default;
//! `PROPTEST_CASES=N` runs more.

use std::collections::HashMap;

use kvfetch::spec::{self, CLOUDS};
use kvfetch::{Error, base::encoding, cli, identity, net::url, shape, spec::reference};
use proptest::prelude::*;
use ureq::http::{HeaderValue, Uri};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Pieces that make URL parsers disagree, mixed with plain ones.
fn url_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("?".to_string()),
        Just("#".to_string()),
        Just("@".to_string()),
        Just("\\".to_string()),
        Just("%2e".to_string()),
        Just("%40".to_string()),
        Just(":".to_string()),
        Just(":443".to_string()),
        Just("/".to_string()),
        Just(".".to_string()),
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("[::1]".to_string()),
        Just("127.0.0.1".to_string()),
        Just("localhost".to_string()),
        Just("evil.test".to_string()),
        Just(".vault.azure.net".to_string()),
        Just("vault.azure.net".to_string()),
        Just(".vault.azure.cn".to_string()),
        Just("é".to_string()),
        Just("\u{0}".to_string()),
        "[a-z0-9-]{1,8}",
    ];
    let scheme = prop_oneof![
        Just("https://"),
        Just("http://"),
        Just("HTTPS://"),
        Just("https:/"),
        Just("ftp://"),
        Just(""),
    ];
    (scheme, prop::collection::vec(piece, 0..8)).prop_map(|(s, p)| format!("{s}{}", p.concat()))
}

/// The host and port a standard URL parser (the one ureq connects with) finds in `text`.
fn connected_to(text: &str) -> Option<(String, Option<u16>)> {
    let uri: Uri = text.parse().ok()?;
    Some((uri.host()?.to_ascii_lowercase(), uri.port_u16()))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn accepted_urls_connect_to_the_host_that_was_checked(text in url_text()) {
        if let Ok(u) = url::parse(&text) {
            let full = u.full();
            prop_assert_eq!(connected_to(&full), Some((u.host.clone(), u.port)), "{}", full);
            prop_assert!(u.path.is_empty() || u.path.starts_with('/'));
            prop_assert!(!full.contains(['?', '#', '@', '\\', '%', ' ']));
            // Parsing the rebuilt URL gives the same parts.
            prop_assert_eq!(url::parse(&full).ok(), Some(u));
        }
    }

    #[test]
    fn accepted_vaults_are_known_clouds_or_loopback(text in url_text(), vouch in any::<bool>()) {
        let resource = vouch.then_some("https://vault.azure.net");
        if let Ok(v) = spec::parse_vault(&text, resource) {
            let (host, _) = connected_to(&v.url).expect("a vault URL parses");
            prop_assert_eq!(&host, &v.host);
            let known = CLOUDS.iter().any(|(suffix, _)| {
                host.len() > suffix.len() && host.ends_with(suffix)
            });
            prop_assert!(known || spec::is_loopback(&host) || vouch, "{}", host);
            prop_assert!(v.url.starts_with("https://") || spec::is_loopback(&host));
        }
    }

    #[test]
    fn secret_specs_name_a_valid_secret_in_a_checked_vault(
        alias in prop::option::of("[A-Za-z_./=-]{0,6}"),
        name in "[A-Za-z0-9/_.-]{0,12}",
        full in prop::option::of(url_text()),
    ) {
        let default = spec::parse_vault("https://127.0.0.1:8443", None).unwrap();
        let reference = match &full {
            Some(u) => format!("{u}/secrets/{name}"),
            None => name.clone(),
        };
        let text = match &alias {
            Some(a) => format!("{a}={reference}"),
            None => reference,
        };
        if let Ok(s) = spec::parse_spec(&text, Some(&default)) {
            prop_assert!(spec::valid_name(&s.name), "{:?}", s.name);
            prop_assert!(s.version.as_deref().is_none_or(|v| v.bytes().all(|b| b.is_ascii_alphanumeric())));
            prop_assert_eq!(connected_to(&s.vault.url).map(|h| h.0), Some(s.vault.host.clone()));
            prop_assert!(!s.file_name().is_empty());
        }
    }

    #[test]
    fn anything_marked_as_a_reference_resolves_or_is_refused(
        lead in prop_oneof![Just(""), Just(" "), Just("\""), Just("'")],
        mark in prop_oneof![Just("@Microsoft.KeyVault"), Just("@microsoft.keyvault"), Just("@MICROSOFT.KEYVAULT")],
        gap in prop_oneof![Just(""), Just(" ")],
        body in "[A-Za-z=;/:. ()\"-]{0,40}",
        uri in url_text(),
    ) {
        let value = format!("{lead}{mark}{gap}(SecretUri={uri}/secrets/x;{body})");
        prop_assert!(reference::is_reference(&value));
        match reference::parse("V", &value, None) {
            Ok(s) => {
                // White space around a reference is tolerated; quotes and a gap before `(` are not.
                prop_assert!(lead.trim().is_empty() && gap.is_empty(), "{:?}", value);
                prop_assert_eq!(connected_to(&s.vault.url).map(|h| h.0), Some(s.vault.host.clone()));
            }
            Err(e) => prop_assert!(matches!(e, Error::Usage(_)), "{}", e),
        }
    }

    #[test]
    fn duration_flags_never_panic_and_stay_in_range(
        flag in prop::sample::select(vec!["timeout", "backoff-base", "access-retry", "refresh", "max-stale", "grace"]),
        n in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[0-9]{1,25}"],
        unit in prop::sample::select(vec!["ns", "ms", "s", "m", "h", "d", "w", "M", "y", ""]),
    ) {
        let args: Vec<String> = ["watch".to_string(), format!("--{flag}"), format!("{n}{unit}")].to_vec();
        if let Ok(o) = cli::parse(&args, &HashMap::new()) {
            let (_, min, max) = cli::DURATION_RANGES.iter().find(|(f, _, _)| *f == flag).unwrap();
            let got = match flag {
                "timeout" => o.timeout,
                "backoff-base" => o.backoff_base,
                "access-retry" => o.access_retry,
                "refresh" => o.refresh.unwrap(),
                "max-stale" => o.max_stale.unwrap(),
                _ => o.grace,
            };
            prop_assert!(got >= *min && got <= *max);
        }
    }

    #[test]
    fn token_answers_never_panic_and_accepted_tokens_fit_a_header(
        token in prop_oneof!["[ -~]{0,40}", "[\\x00-\\x7f]{0,20}", "\\PC{0,10}", Just("a.eyJvaWQiOiJ4In0.c".to_string())],
        expires in prop_oneof![
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            any::<f64>().prop_map(|n| serde_json::json!(n)),
            "[0-9 ./:APM+-]{0,30}".prop_map(|s| serde_json::json!(s)),
            Just(serde_json::Value::Null),
        ],
        field in prop::sample::select(vec!["expires_on", "expires_in", "nothing"]),
    ) {
        let body = serde_json::json!({ "access_token": token, field: expires }).to_string();
        if let Ok(t) = identity::parse_token(&body, "who") {
            prop_assert!(HeaderValue::from_str(&t.bearer()).is_ok());
            let shown = format!("{:?}", t);
            prop_assert!(!shown.contains(&token) || token.len() < 3);
        }
    }

    #[test]
    fn escaped_log_text_holds_no_control_character(text in "\\PC*|[\\x00-\\x1f\\x7f\u{80}-\u{9f}\u{2028}\u{2029} a-z]{0,30}") {
        let escaped = kvfetch::base::log::escape(&text);
        let clean = !escaped.chars().any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'));
        prop_assert!(clean, "{:?}", escaped);
        if !text.chars().any(char::is_control) && !text.contains(['\u{2028}', '\u{2029}']) {
            prop_assert_eq!(escaped, text);
        }
    }

    #[test]
    fn spec_options_parse_or_are_usage_errors(
        options in prop::collection::vec(
            prop_oneof![
                Just("optional".to_string()),
                "(format|json|decode|colour)=[a-z0-9/~=?&]{0,8}",
                "[a-z=&?/~]{0,6}",
            ],
            0..4,
        ),
    ) {
        let default = spec::parse_vault("https://127.0.0.1:8443", None).unwrap();
        let text = format!("A=c?{}", options.join("&"));
        match spec::parse_spec(&text, Some(&default)) {
            Ok(s) => {
                prop_assert_eq!((s.alias.as_deref(), s.name.as_str()), (Some("A"), "c"));
                let shape = s.shape;
                prop_assert!(shape.format.is_none() || (shape.json.is_none() && shape.decode.is_none()));
                prop_assert!(shape.json.as_deref().is_none_or(|p| p.is_empty() || p.starts_with('/')));
            }
            Err(e) => prop_assert!(matches!(e, Error::Usage(_)), "{}", e),
        }
    }

    #[test]
    fn decoders_round_trip_and_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..64),
        junk in "[ -~\n]{0,40}",
    ) {
        let b64 = encoding::base64_encode(&data);
        prop_assert_eq!(encoding::base64_strict(&b64, false).unwrap(), data.clone());
        let url: String = b64.trim_end_matches('=').chars().map(|c| match c { '+' => '-', '/' => '_', c => c }).collect();
        prop_assert_eq!(encoding::base64_strict(&url, true).unwrap(), data.clone());
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        prop_assert_eq!(encoding::hex_strict(&hex).unwrap(), data);
        // Strict: whatever decodes re-encodes to the same text (white space and padding aside).
        if let Ok(bytes) = encoding::base64_strict(&junk, false) {
            let canonical: String = junk.chars().filter(|c| !c.is_ascii_whitespace() && *c != '=').collect();
            let again = encoding::base64_encode(&bytes);
            prop_assert_eq!(again.trim_end_matches('='), canonical.as_str());
        }
        let _ = encoding::hex_strict(&junk);
    }

    #[test]
    fn damaged_certificate_secrets_are_refused_never_a_panic(
        which in 0usize..4,
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let (file, content_type) = [
            ("rsa-3des.pfx.b64", "application/x-pkcs12"),
            ("ec-aes.pfx.b64", "application/x-pkcs12"),
            ("rsa-nomac.pfx.b64", "application/x-pkcs12"),
            ("mixed.pem", "application/x-pem-file"),
        ][which];
        let text = std::fs::read_to_string(format!("{}/tests/fixtures/certs/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let value = if content_type.ends_with("pkcs12") {
            let mut der = encoding::base64_strict(&text, false).unwrap();
            for (at, x) in &flips {
                let i = at.index(der.len());
                der[i] ^= x;
            }
            if let Some(c) = cut {
                der.truncate(c.index(der.len()));
            }
            encoding::base64_encode(&der)
        } else {
            let mut bytes = text.into_bytes();
            for (at, x) in &flips {
                let i = at.index(bytes.len());
                bytes[i] = b"A/+=-\n"[usize::from(*x) % 6];
            }
            String::from_utf8(bytes).unwrap()
        };
        let default = spec::parse_vault("https://127.0.0.1:8443", None).unwrap();
        let s = spec::parse_spec("c?format=pem", Some(&default)).unwrap();
        let body = serde_json::json!({"value": value, "id": "x/1", "contentType": content_type}).to_string();
        let f = kvfetch::vault::keyvault::parse_bundle(&body).unwrap();
        if let Err(e) = shape::apply(&s, &f) {
            prop_assert!(matches!(e, Error::NotFound(_)), "{}", e);
        }
    }
}
