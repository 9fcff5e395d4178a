//! TLS for every HTTPS client kvfetch builds: one rustls configuration per client, built once.
//!
//! ureq's own TLS connector caches its rustls configuration only for requests made with the
//! agent's configuration. kvfetch bounds every request by what is left of the run's deadline,
//! which makes each a request-level configuration, and for those ureq builds a new rustls
//! configuration per connection: the whole root store parsed again (the 118 bundled Mozilla
//! roots for a remote vault, with SSL_CERT_FILE's, SSL_CERT_DIR's and --ca-file's) and no TLS
//! session resumption between the pooled connections.
//! This connector takes ureq's place in the chain and builds the configuration once, from the
//! same [`TlsConfig`] (provider and roots), on the first HTTPS connection.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use ureq::tls::{RootCerts, TlsConfig};
use ureq::unversioned::transport::time::{Duration, Instant};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
    TransportAdapter,
};

/// Wraps an HTTPS connection in TLS with one shared rustls configuration.
#[derive(Debug)]
pub(super) struct TlsConnector {
    tls: TlsConfig,
    built: Mutex<Option<Arc<ClientConfig>>>,
}

impl TlsConnector {
    pub(super) fn new(tls: &TlsConfig) -> TlsConnector {
        TlsConnector {
            tls: tls.clone(),
            built: Mutex::new(None),
        }
    }

    /// The rustls configuration, built on first use (one thread builds; the others wait for
    /// it, so parallel first connections share its session cache too).
    fn config(&self) -> Result<Arc<ClientConfig>, ureq::Error> {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(config) = built.as_ref() {
            return Ok(config.clone());
        }
        let config = Arc::new(client_config(&self.tls)?);
        *built = Some(config.clone());
        Ok(config)
    }
}

/// The rustls configuration `tls` describes: its provider, its root list, every TLS version
/// the provider offers, no client certificate. What kvfetch never sets (other root sources, a
/// client certificate, no SNI, no verification) is refused rather than dropped in silence.
fn client_config(tls: &TlsConfig) -> Result<ClientConfig, ureq::Error> {
    let provider = tls
        .unversioned_rustls_crypto_provider()
        .clone()
        .ok_or(ureq::Error::Tls("no TLS provider configured"))?;
    let RootCerts::Specific(certs) = tls.root_certs() else {
        return Err(ureq::Error::Tls(
            "kvfetch's TLS takes an explicit root list only",
        ));
    };
    if tls.client_cert().is_some() || !tls.use_sni() || tls.disable_verification() {
        return Err(ureq::Error::Tls(
            "kvfetch's TLS carries no client certificate and always sends SNI and verifies",
        ));
    }
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(certs.iter().map(|c| c.der().to_vec().into()));
    Ok(ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl<In: Transport> Connector<In> for TlsConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details
            .uri
            .host()
            .ok_or(ureq::Error::Tls("no host to connect to"))?;
        let name = rustls::pki_types::ServerName::try_from(
            host.trim_start_matches('[').trim_end_matches(']'),
        )
        .map_err(|_| ureq::Error::Tls("the host is not a valid TLS server name"))?
        .to_owned();
        let mut conn = ClientConnection::new(self.config()?, name)?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(remaining(details));
        conn.complete_io(&mut sock)?;
        Ok(Some(Either::B(TlsTransport {
            buffers: LazyBuffers::new(
                details.config.input_buffer_size(),
                details.config.output_buffer_size(),
            ),
            stream: StreamOwned { conn, sock },
        })))
    }
}

/// The connection's timeout less what connecting has used of it already: the handshake ends
/// within the same bound as ureq's own connector sets.
fn remaining(details: &ConnectionDetails) -> NextTimeout {
    let mut timeout = details.timeout;
    if let (Instant::Exact(start), Instant::Exact(now), Duration::Exact(after)) =
        (details.now, (details.current_time)(), timeout.after)
    {
        timeout.after = Duration::Exact(after.saturating_sub(now.saturating_duration_since(start)));
    }
    timeout
}

/// An HTTPS connection: ureq's buffers over a rustls stream.
pub(super) struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl std::fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport").finish_non_exhaustive()
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Option<Arc<rustls::crypto::CryptoProvider>> {
        Some(Arc::new(rustls::crypto::ring::default_provider()))
    }

    #[test]
    fn what_kvfetch_never_sets_is_refused_not_dropped() {
        let ok = || {
            TlsConfig::builder()
                .unversioned_rustls_crypto_provider(provider().unwrap())
                .root_certs(RootCerts::new_with_certs(&[]))
        };
        assert!(client_config(&ok().build()).is_ok());
        for bad in [
            ok().root_certs(RootCerts::PlatformVerifier).build(),
            ok().use_sni(false).build(),
            ok().disable_verification(true).build(),
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&[]))
                .build(),
        ] {
            assert!(client_config(&bad).is_err());
        }
    }
}
