//! A throw-away certificate authority: a CA plus a separate leaf for `127.0.0.1`, `::1` and
//! `localhost` (rustls refuses a self-signed leaf used as its own root), and the rustls server
//! configuration that serves the leaf. [`VaultCert`] swaps the leaf for a hostile one; the CA
//! clients are told to trust is the same kind of CA in every case.

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
) -> io::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let key = KeyPair::generate().map_err(err)?;
    let (dns, common_name) = match kind {
        VaultCert::WrongName => ("wrong.example", "wrong.example"),
        VaultCert::SelfSigned => ("localhost", "kvfetch emulator vault (self-signed)"),
        VaultCert::Valid | VaultCert::Expired => ("localhost", "kvfetch emulator vault"),
    };
    let mut params = CertificateParams::new(vec![dns.to_string()]).map_err(err)?;
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

/// Generate a fresh CA and a leaf of this kind.
pub fn generate(kind: VaultCert) -> io::Result<Tls> {
    let ca = ca()?;
    let (chain, key) = leaf(kind, &ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(err)?;
    Ok(Tls {
        ca_pem: ca.cert.pem(),
        server: Arc::new(server),
    })
}

/// The UTC calendar date `days` days before today, as (year, month, day).
fn days_ago(days: u64) -> (i32, u8, u8) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    civil_from_days(today as i64 - days as i64)
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8, day as u8)
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
        let (chain, _) = leaf(kind, &ca).unwrap();
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

    #[test]
    fn calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
