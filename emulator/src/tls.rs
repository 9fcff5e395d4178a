//! A throw-away certificate authority: a CA plus a separate leaf for `127.0.0.1`, `::1`,
//! `localhost` and any DNS names the caller gives (rustls refuses a self-signed leaf used as its own root), and the rustls server
//! configuration that serves the leaf. [`VaultCert`] swaps the leaf for a hostile one; the CA
//! clients are told to trust is the same kind of CA in every case. Apart from that CA, a
//! self-signed certificate for the Service Fabric endpoint, which clients pin by thumbprint.

use std::io;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::http::{Stream, Wrap};

/// Which certificate the vault listener presents. The CA in `ca_file` is always the emulator's
/// CA, so a client that trusts it rejects the hostile kinds for exactly the stated reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VaultCert {
    /// A leaf for `127.0.0.1`, `::1` and `localhost`, signed by the CA.
    #[default]
    Valid,
    /// A leaf signed by the CA whose only name is the DNS name `wrong.example` (no IP SANs).
    WrongName,
    /// A leaf for the usual names, signed by the CA, valid from 30 days ago until 2 days ago.
    Expired,
    /// A leaf for the usual names that is self-signed: the CA did not sign it and it is served
    /// without the CA in the chain.
    SelfSigned,
}

/// The CA's PEM (what clients trust) and a server configuration for the leaf.
pub struct Tls {
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

fn err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The CA certificate and its key.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn ca() -> io::Result<Ca> {
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "kvfetch emulator CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(Ca { cert, key })
}

/// The chain the server presents (leaf first) and the leaf's key.
fn leaf(
    kind: VaultCert,
    ca: &Ca,
    names: &[String],
) -> io::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let key = KeyPair::generate().map_err(err)?;
    let (dns, common_name) = match kind {
        VaultCert::WrongName => ("wrong.example", "wrong.example"),
        VaultCert::SelfSigned => ("localhost", "kvfetch emulator vault (self-signed)"),
        VaultCert::Valid | VaultCert::Expired => ("localhost", "kvfetch emulator vault"),
    };
    let mut dns_names = vec![dns.to_string()];
    if kind != VaultCert::WrongName {
        dns_names.extend(names.iter().cloned());
    }
    let mut params = CertificateParams::new(dns_names).map_err(err)?;
    if kind != VaultCert::WrongName {
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    }
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if kind == VaultCert::Expired {
        let (y, m, d) = days_ago(30);
        params.not_before = rcgen::date_time_ymd(y, m, d);
        let (y, m, d) = days_ago(2);
        params.not_after = rcgen::date_time_ymd(y, m, d);
    }
    let chain = if kind == VaultCert::SelfSigned {
        let leaf = params.self_signed(&key).map_err(err)?;
        vec![CertificateDer::from(leaf.der().to_vec())]
    } else {
        let leaf = params.signed_by(&key, &ca.cert, &ca.key).map_err(err)?;
        vec![
            CertificateDer::from(leaf.der().to_vec()),
            CertificateDer::from(ca.cert.der().to_vec()),
        ]
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((chain, key))
}

/// Generate a fresh CA and a leaf of this kind, naming `names` (DNS names such as
/// `*.vault.azure.net`) beside the loopback ones, except for [`VaultCert::WrongName`].
pub fn generate(kind: VaultCert, names: &[String]) -> io::Result<Tls> {
    let ca = ca()?;
    let (chain, key) = leaf(kind, &ca, names)?;
    Ok(Tls {
        ca_pem: ca.cert.pem(),
        server: server_config(chain, key)?,
    })
}

/// A self-signed certificate for the usual loopback names, its DER and a server configuration
/// that serves it alone: what a Service Fabric cluster's managed-identity endpoint presents.
/// Clients pin it by its SHA-1 thumbprint ([`thumbprint`]), not by a CA.
pub struct SelfSigned {
    pub der: Vec<u8>,
    /// The certificate as PEM, for clients that trust it as a root instead of pinning it (MSAL
    /// for JavaScript does not pin).
    pub pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

/// Generate the Service Fabric endpoint's self-signed certificate.
pub fn self_signed(common_name: &str) -> io::Result<SelfSigned> {
    let key = KeyPair::generate().map_err(err)?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let cert = params.self_signed(&key).map_err(err)?;
    let der = cert.der().to_vec();
    let pem = cert.pem();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(SelfSigned {
        pem,
        server: server_config(vec![CertificateDer::from(der.clone())], key)?,
        der,
    })
}

/// The SHA-1 thumbprint of a certificate's DER, as Windows and `IDENTITY_SERVER_THUMBPRINT`
/// write it: 40 upper-case hex digits.
pub fn thumbprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> io::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(err)?;
    Ok(Arc::new(server))
}

/// The UTC calendar date `days` days before today, as (year, month, day).
fn days_ago(days: u64) -> (i32, u8, u8) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    crate::time::civil_from_days(today as i64 - days as i64)
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

/// A connection wrapper that speaks TLS with the leaf, calls `on_connection` for each connection
/// accepted and `on_full` once for each full handshake (not for a resumed session) when the
/// client's first bytes arrive: tests count connections and the certificate chains verified.
pub fn wrap_counting(
    config: Arc<rustls::ServerConfig>,
    on_connection: Arc<dyn Fn() + Send + Sync>,
    on_full: Arc<dyn Fn() + Send + Sync>,
) -> Wrap {
    Arc::new(move |tcp: TcpStream| {
        on_connection();
        let conn = rustls::ServerConnection::new(config.clone()).map_err(err)?;
        Ok(Box::new(Counted {
            inner: rustls::StreamOwned::new(conn, tcp),
            on_full: Some(on_full.clone()),
        }) as Box<dyn Stream>)
    })
}

/// A TLS stream that reports a full handshake once its first bytes are read (the handshake is
/// over by then).
struct Counted {
    inner: rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    on_full: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl io::Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0
            && let Some(on_full) = self.on_full.take()
            && self.inner.conn.handshake_kind() != Some(rustls::HandshakeKind::Resumed)
        {
            on_full();
        }
        Ok(n)
    }
}

impl Stream for Counted {
    fn close_cleanly(&mut self) {
        self.inner.close_cleanly();
    }
}

impl io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A connection wrapper for plain HTTP.
pub fn plain() -> Wrap {
    Arc::new(|tcp: TcpStream| Ok(Box::new(tcp) as Box<dyn Stream>))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    use rustls::{CertificateError, Error};

    use super::*;

    /// Verify the chain `kind` serves as a client trusting the CA would, for `name` at `at`.
    fn verify(kind: VaultCert, name: &str, at: SystemTime) -> Result<(), Error> {
        let ca = ca().unwrap();
        let (chain, _) = leaf(kind, &ca, &[]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.cert.der().to_vec()))
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let at = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap());
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &name, &[], at)
            .map(|_| ())
    }

    fn reason(r: Result<(), Error>) -> String {
        match r {
            Err(Error::InvalidCertificate(e)) => format!("{e:?}"),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn each_kind_fails_for_its_reason_only() {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        for name in ["127.0.0.1", "::1", "localhost"] {
            verify(VaultCert::Valid, name, now).unwrap();
        }
        // Signed by the CA: valid for its own name, not for the emulator's.
        verify(VaultCert::WrongName, "wrong.example", now).unwrap();
        assert!(
            reason(verify(VaultCert::WrongName, "127.0.0.1", now)).starts_with("NotValidForName")
        );
        // Signed by the CA and for the right names: valid ten days ago, expired now.
        verify(VaultCert::Expired, "127.0.0.1", now - 10 * day).unwrap();
        assert!(reason(verify(VaultCert::Expired, "127.0.0.1", now)).starts_with("Expired"));
        assert!(matches!(
            verify(VaultCert::SelfSigned, "127.0.0.1", now),
            Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
        ));
    }
}
