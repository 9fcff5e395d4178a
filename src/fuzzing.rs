//! Entry points for the fuzz targets (`fuzz/`) and their stable replay
//! (`tests/fuzz_regressions.rs`): one function per parser of input from a server or a file,
//! each taking raw bytes, as an attacker controls them, and ignoring the result. A parser may
//! refuse anything; it must never panic, hang or allocate without bound.
//!
//! The parsers stay private to their modules; this module (hidden from the docs, not an API)
//! is the only door the fuzzers use, so both the fuzzers and the replay run exactly the same
//! code. Nothing here touches the network: the one target that reaches the file system
//! (`www_authenticate`, Azure Arc's challenge) only looks up names under the agent's token
//! directory, as kvfetch itself does.

use crate::net::http::Reply;
use crate::spec::{self, Vault};
use crate::vault::keyvault::{self, Fetched};

/// A target: it takes any bytes and must return, whatever they are.
pub type Target = fn(&[u8]);

/// The targets, by name: the fuzz crate's binaries and the corpus directories use these names.
pub const TARGETS: &[(&str, Target)] = &[
    ("list_page", list_page),
    ("secret_bundle", secret_bundle),
    ("token", token),
    ("www_authenticate", www_authenticate),
    ("certificate", certificate),
    ("pkcs12", pkcs12),
    ("der", der),
    ("shape", shape),
    ("template", template),
    ("reference", reference),
    ("url", url),
];

/// The vault the targets that need one resolve against (never contacted).
fn vault() -> Vault {
    spec::parse_vault("https://fuzz.vault.azure.net", None).expect("a valid vault")
}

/// Bodies arrive as UTF-8 text (http.rs refuses a success body that is not).
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}

/// A page of the secret list, its `nextLink`, and the same body read as a vault's error.
pub fn list_page(data: &[u8]) {
    let Some(body) = text(data) else { return };
    let vault = vault();
    if let Ok((items, next)) = keyvault::parse_page(body) {
        let _ = items.len();
        if let Some(link) = next {
            let _ = keyvault::next_url(&vault, &link, "7.5");
        }
    }
    let _ = keyvault::error_parts(body);
}

/// A SecretBundle, then what kvfetch reads of it: certificate or not, its expiry.
pub fn secret_bundle(data: &[u8]) {
    let Some(body) = text(data) else { return };
    if let Some(f) = keyvault::parse_bundle(body)
        && crate::shape::certificate::is_certificate(&f)
        && let Ok(spec) = spec::parse_spec("fuzz", Some(&vault()))
    {
        let _ = crate::shape::certificate::bundle(&spec, &f).map(|b| b.not_after);
    }
}

/// An identity endpoint's token answer (with the JWT claims inside the token).
pub fn token(data: &[u8]) {
    if let Some(body) = text(data) {
        let _ = crate::identity::parse_token(body, "fuzz");
    }
}

/// Response headers: the input is a `WWW-Authenticate` header (Azure Arc's challenge) and,
/// split at the first newline, `Retry-After` / `retry-after-ms` values.
pub fn www_authenticate(data: &[u8]) {
    let Some(header) = text(data) else { return };
    let (first, rest) = header.split_once('\n').unwrap_or((header, ""));
    let reply = Reply {
        status: 401,
        www_authenticate: Some(first.to_string()),
        retry_after: Some(rest.to_string()),
        retry_after_ms: Some(first.to_string()),
        ..Reply::default()
    };
    let _ = crate::identity::arc::read_key(
        &reply,
        "http://127.0.0.1:40342/metadata/identity/oauth2/token",
    );
    let _ = reply.asked_delay();
    let reply = Reply {
        retry_after: Some(first.to_string()),
        ..Reply::default()
    };
    let _ = reply.asked_delay();
}

/// A certificate secret: PEM text (any labels, any order) when the input starts with `-----`;
/// else the bytes as the DER of one certificate (so the fuzzer mutates X.509, not base64).
pub fn certificate(data: &[u8]) {
    let pem = if data.starts_with(b"-----") {
        match text(data) {
            Some(t) => t.to_string(),
            None => return,
        }
    } else {
        let b64 = crate::base::encoding::base64_encode(data);
        format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n")
    };
    let f = fetched(pem, Some("application/x-pem-file"));
    for format in ["pem", "chain"] {
        if let Ok(spec) = spec::parse_spec(&format!("fuzz?format={format}"), Some(&vault())) {
            let _ = crate::shape::apply(&spec, &f);
        }
    }
}

/// A PFX's bytes (Key Vault's `application/x-pkcs12` secret, after base64), opened with the
/// empty password, then the certificates found in it, as `format=` reads them (one opening:
/// PKCS#12's key derivation is the slow part, and it is what the time budget is about).
pub fn pkcs12(data: &[u8]) {
    let b64 = crate::base::encoding::base64_encode(data);
    let f = fetched(b64, Some("application/x-pkcs12"));
    if let Ok(spec) = spec::parse_spec("fuzz?format=pem", Some(&vault())) {
        let _ = crate::shape::apply(&spec, &f);
    }
}

/// The DER reading on its own: every TLV through the PKCS#12 walk's cursor, nested as deep as
/// the input goes, each one also read by `der`, `x509-cert`, `pkcs8`, `pkcs1`, `sec1` and
/// `pkcs5` as the types kvfetch reads (an INTEGER, a time, the key formats, PBES2 parameters;
/// certificates: the `certificate` target).
pub fn der(data: &[u8]) {
    walk(crate::shape::der::Reader::new(data), 0);
}

fn walk(mut r: crate::shape::der::Reader, depth: usize) {
    use der::Decode;
    while let Some((tag, content, whole)) = r.next_tlv() {
        let _ = x509_cert::time::Time::from_der(whole);
        let _ = u32::from_der(whole);
        if tag == 0x30 {
            let _ = pkcs8::PrivateKeyInfo::from_der(whole);
            let _ = pkcs1::RsaPrivateKey::from_der(whole);
            let _ = sec1::EcPrivateKey::from_der(whole);
            let _ = pkcs5::pbes2::Parameters::from_der(whole);
        }
        let mut copy = crate::shape::der::Reader::new(content);
        let _ = copy.small_int();
        if tag & 0x20 != 0 && depth < 64 {
            walk(crate::shape::der::Reader::new(content), depth + 1);
        }
    }
}

/// A spec's options (first line: `json=/POINTER&decode=…`) applied to a value (the rest): the
/// JSON pointer, the JSON document, the strict decoders.
pub fn shape(data: &[u8]) {
    let Some(input) = text(data) else { return };
    let (options, value) = input.split_once('\n').unwrap_or((input, ""));
    let _ = crate::shape::json_pointer(options);
    if let Ok(spec) = spec::parse_spec(&format!("fuzz?{options}"), Some(&vault())) {
        let _ = crate::shape::apply(&spec, &fetched(value.to_string(), None));
    }
}

/// A `--template` source file.
pub fn template(data: &[u8]) {
    if let Some(source) = text(data) {
        let mut specs = Vec::new();
        let src = std::path::Path::new("fuzz.tpl");
        let _ = crate::shape::template::parse(source, src, Some(&vault()), &mut specs);
    }
}

/// An inherited variable's value as an App Service Key Vault reference.
pub fn reference(data: &[u8]) {
    if let Some(value) = text(data)
        && crate::spec::reference::is_reference(value)
    {
        let _ = crate::spec::reference::parse("FUZZ", value, Some(&vault()));
        let _ = crate::spec::reference::parse("FUZZ", value, None);
    }
}

/// A URL: the parser, the vault rules built on it, and a secret identifier as a spec.
pub fn url(data: &[u8]) {
    let Some(input) = text(data) else { return };
    if let Ok(u) = crate::net::url::parse(input) {
        let _ = (u.full(), u.origin(), crate::net::url::is_loopback(&u.host));
    }
    let _ = spec::parse_vault(input, None);
    let _ = spec::parse_spec(input, Some(&vault()));
    let _ = keyvault::next_url(&vault(), input, "7.5");
}

fn fetched(value: String, content_type: Option<&str>) -> Fetched {
    Fetched {
        value,
        version: String::new(),
        content_type: content_type.map(String::from),
        expires: None,
        updated: None,
        fetched_at: 0,
        parsed: Default::default(),
    }
}
