//! TLS client configuration for `turns:` servers: trust the system CA bundle, a `--ca` file,
//! or (with `--insecure`) anything, through a verifier whose name says it is dangerous.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

/// Where the system's CA bundle usually lives (Debian, Fedora/RHEL, Alpine, openSUSE).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// `--ca` / `--insecure`, shared by the subcommands that can talk to `turns:` servers.
#[derive(clap::Args, Debug)]
pub struct TlsArgs {
    /// CA certificate (PEM) to verify a turns: server with (default: the system bundle).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Do not verify the turns: server's certificate.
    #[arg(long)]
    pub insecure: bool,
}

impl TlsArgs {
    /// What a `turns:` connection to `host` needs; `None` for the other transports.
    pub fn target(
        &self,
        transport: turnd_proto::engine::Transport,
        host: &str,
    ) -> anyhow::Result<Option<crate::client::TlsTarget>> {
        use turnd_proto::engine::Transport;
        if !matches!(transport, Transport::Tls | Transport::Dtls) {
            return Ok(None);
        }
        Ok(Some(crate::client::TlsTarget {
            connector: connector(self.ca.as_deref(), self.insecure)?,
            name: server_name(host)?,
            verifier: verifier(self.ca.as_deref(), self.insecure)?,
        }))
    }
}

/// A connector that verifies the server against `ca` (or the system bundle), or verifies
/// nothing when `insecure`.
pub fn connector(ca: Option<&Path>, insecure: bool) -> anyhow::Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?;
    let mut cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(DangerousAcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"stun.turn".to_vec()];
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// The same verification for DTLS, whose library hands over the server's leaf certificate
/// and checks the handshake signatures with it, but leaves the certificate to us.
pub fn verifier(ca: Option<&Path>, insecure: bool) -> anyhow::Result<Arc<dyn ServerCertVerifier>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    if insecure {
        return Ok(Arc::new(DangerousAcceptAnyCert(provider)));
    }
    let v =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
            .build()
            .context("certificate verifier")?;
    Ok(v)
}

fn roots(ca: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let path = match ca {
        Some(p) => p.to_path_buf(),
        None => SYSTEM_BUNDLES
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .ok_or_else(|| anyhow!("no system CA bundle found; give --ca FILE (or --insecure)"))?
            .to_path_buf(),
    };
    let pem = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut store = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.with_context(|| format!("{}: not a PEM certificate", path.display()))?;
        store
            .add(cert)
            .with_context(|| format!("{}: unusable certificate", path.display()))?;
    }
    if store.is_empty() {
        return Err(anyhow!("{}: no certificate found", path.display()));
    }
    Ok(store)
}

/// The name to verify: an IP address literal or a DNS name.
pub fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(host.to_string()).map_err(|e| anyhow!("{host}: bad TLS server name: {e}"))
}

/// Accepts any certificate (`--insecure`): still checks the handshake signatures, so the
/// connection is encrypted, but not that the server is who it claims to be.
#[derive(Debug)]
struct DangerousAcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for DangerousAcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
