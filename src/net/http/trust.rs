//! What every remote TLS connection trusts: the bundled Mozilla roots (linked once), then
//! `SSL_CERT_FILE`, `SSL_CERT_DIR` and `--ca-file`, each read with a bound; and ring's provider,
//! handed to ureq explicitly.

use crate::error::Error;
use std::collections::HashMap;
use std::path::Path;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// The certificates every remote TLS connection trusts beside the bundled Mozilla roots, read
/// once per run, in this order: `SSL_CERT_FILE` (a PEM bundle), the PEM files of each
/// directory in `SSL_CERT_DIR` (colon-separated, as OpenSSL reads it), then `--ca-file`. All
/// of them are trusted together; none replaces the bundled roots. A loopback endpoint (an
/// emulator) trusts `--ca-file` alone when it is given.
#[derive(Clone, Default)]
pub struct Trust {
    /// From `SSL_CERT_FILE` and `SSL_CERT_DIR`.
    pub(super) system: Vec<Certificate<'static>>,
    /// From `--ca-file`.
    pub(super) ca_file: Vec<Certificate<'static>>,
}

/// The most a trust file or directory may hold: a bundle of every public root is ~200 KB.
pub(super) const MAX_TRUST_BYTES: u64 = 1 << 20;
/// The most files read from `SSL_CERT_DIR` (a system directory holds a few hundred).
pub(super) const MAX_TRUST_FILES: usize = 1000;

impl Trust {
    /// `--ca-file`'s PEM (already read) and the conventional variables in `env`. A variable
    /// that names nothing readable, or a file with no certificate, is a usage error naming it.
    pub fn load(ca_pem: Option<&[u8]>, env: &HashMap<String, String>) -> Result<Trust, Error> {
        let mut system = Vec::new();
        if let Some(file) = env.get("SSL_CERT_FILE").filter(|v| !v.is_empty()) {
            let pem = read_trust_file(Path::new(file))
                .map_err(|why| Error::Usage(format!("SSL_CERT_FILE={file}: {why}")))?;
            system.extend(parse_certs(&pem, "SSL_CERT_FILE")?);
        }
        if let Some(dirs) = env.get("SSL_CERT_DIR").filter(|v| !v.is_empty()) {
            for dir in dirs.split(':').filter(|d| !d.is_empty()) {
                system.extend(
                    read_trust_dir(Path::new(dir)).map_err(|why| {
                        Error::Usage(format!("SSL_CERT_DIR={dirs}: {dir}: {why}"))
                    })?,
                );
            }
        }
        let ca_file = ca_pem
            .map(|pem| parse_certs(pem, "--ca-file"))
            .transpose()?
            .unwrap_or_default();
        Ok(Trust { system, ca_file })
    }

    /// The TLS configuration for a remote host, or (`loopback`) an emulator's address. Always
    /// ring's provider and an explicit root list: ureq is built without its own copy of the
    /// Mozilla roots (`RootCerts::WebPki` would panic), so the bundled roots are linked once.
    pub(super) fn tls(&self, loopback: bool) -> TlsConfig {
        let tls = TlsConfig::builder().unversioned_rustls_crypto_provider(crypto_provider());
        if loopback && !self.ca_file.is_empty() {
            // No public CA may vouch for a loopback address, so the bundled roots could never
            // match there.
            return tls
                .root_certs(RootCerts::new_with_certs(&self.ca_file))
                .build();
        }
        if self.system.is_empty() && self.ca_file.is_empty() {
            return tls.root_certs(bundled_roots().clone()).build();
        }
        let RootCerts::Specific(bundled) = bundled_roots() else {
            unreachable!("the bundled roots are a list")
        };
        let mut roots: Vec<Certificate<'static>> = bundled.as_ref().clone();
        roots.extend(self.system.iter().cloned());
        roots.extend(self.ca_file.iter().cloned());
        tls.root_certs(RootCerts::new_with_certs(&roots)).build()
    }
}

/// ring's TLS provider, made once: ureq shares connections only between configurations that
/// hold the same provider and the same root list (by pointer).
pub(super) fn crypto_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The Mozilla roots bundled in the binary (webpki-root-certs), as one shared list.
pub(super) fn bundled_roots() -> &'static RootCerts {
    static ROOTS: std::sync::OnceLock<RootCerts> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()))
            .collect::<Vec<_>>()
            .into()
    })
}

/// A regular file of at most [`MAX_TRUST_BYTES`] (see [`crate::base::file::read_regular`]).
pub(super) fn read_trust_file(path: &Path) -> Result<Vec<u8>, String> {
    crate::base::file::read_regular(path, MAX_TRUST_BYTES).map_err(|e| e.to_string())
}

/// The certificates of every PEM file in `dir` (following the hash-named symlinks of a
/// `c_rehash` directory; files that hold no certificate, are not regular files, or cannot be
/// read, are skipped as OpenSSL skips them). A directory of more than [`MAX_TRUST_FILES`]
/// entries is refused (the listing stops there: none is ignored in silence, and a huge
/// directory costs no more than the cap), and 4 MiB of files in all.
pub(super) fn read_trust_dir(dir: &Path) -> Result<Vec<Certificate<'static>>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    for entry in entries.flatten() {
        if names.len() == MAX_TRUST_FILES {
            return Err(format!(
                "it holds more than {MAX_TRUST_FILES} entries, the most kvfetch reads; give SSL_CERT_FILE a bundle instead"
            ));
        }
        names.push(entry.path());
    }
    names.sort();
    let (mut certs, mut bytes) = (Vec::new(), 0u64);
    for path in names {
        let Ok(pem) = read_trust_file(&path) else {
            continue;
        };
        bytes += pem.len() as u64;
        if bytes > 4 * MAX_TRUST_BYTES {
            return Err("it holds more than 4 MiB of files".into());
        }
        for item in ureq::tls::parse_pem(&pem).flatten() {
            if let ureq::tls::PemItem::Certificate(c) = item {
                let c = c.to_owned();
                if !certs.iter().any(|have: &Certificate| have.der() == c.der()) {
                    certs.push(c);
                }
            }
        }
    }
    Ok(certs)
}

/// The certificates of a PEM bundle named by `what` (`--ca-file`, `SSL_CERT_FILE`).
pub(super) fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<Certificate<'static>>, Error> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c.to_owned()),
            Ok(_) => {}
            // Fixed words: the parser's error carries the file's bytes (a line, an end marker).
            Err(_) => {
                return Err(Error::Usage(format!(
                    "{what} is not valid PEM (a section is malformed or not closed)"
                )));
            }
        }
    }
    if certs.is_empty() {
        return Err(Error::Usage(format!("{what} holds no PEM certificate")));
    }
    Ok(certs)
}
