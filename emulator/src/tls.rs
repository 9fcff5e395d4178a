//! A throw-away certificate authority: a CA plus a separate leaf for `127.0.0.1`, `::1` and
//! `localhost` (rustls refuses a self-signed leaf used as its own root), and the rustls server
//! configuration that serves the leaf.

use std::io;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::http::{Stream, Wrap};

/// The CA's PEM (what clients trust) and a server configuration for the leaf.
pub struct Tls {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Generate a fresh CA and leaf.
pub fn generate() -> io::Result<Tls> {
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kvfetch emulator CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;

    let leaf_key = KeyPair::generate().map_err(err)?;
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "kvfetch emulator vault");
    let leaf = leaf_params
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .map_err(err)?;

    let chain = vec![
        CertificateDer::from(leaf.der().to_vec()),
        CertificateDer::from(ca_cert.der().to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(err)?;
    Ok(Tls {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    })
}

/// Write the CA file clients should trust.
pub fn write_ca(tls: &Tls, path: &Path) -> io::Result<()> {
    std::fs::write(path, &tls.ca_pem)
}

/// A connection wrapper that speaks TLS with the leaf.
pub fn wrap(config: Arc<rustls::ServerConfig>) -> Wrap {
    Arc::new(move |tcp: TcpStream| {
        let conn = rustls::ServerConnection::new(config.clone()).map_err(err)?;
        Ok(Box::new(rustls::StreamOwned::new(conn, tcp)) as Box<dyn Stream>)
    })
}

/// A connection wrapper for plain HTTP.
pub fn plain() -> Wrap {
    Arc::new(|tcp: TcpStream| Ok(Box::new(tcp) as Box<dyn Stream>))
}
