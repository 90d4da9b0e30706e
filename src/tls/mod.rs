//! TLS for `turns:` listeners (rustls via tokio-rustls): a certificate that can be reloaded
//! at run time without touching established connections, the development profile's
//! self-signed certificate, and (in [`handshake`]) the reasons and rate-limited logging of
//! failed handshakes.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, Context};
use base64::Engine as _;
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

use crate::config::{Config, Profile};

mod handshake;

pub use handshake::{log_handshake_failure, HandshakeFailure, LogLimiter, HANDSHAKE_LOG_INTERVAL};

/// ALPN for STUN/TURN over TLS (RFC 7443): accepted, not required.
pub const ALPN_STUN_TURN: &[u8] = b"stun.turn";

/// The certificate new handshakes get; swapped whole on reload.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

impl ReloadableCert {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(ReloadableCert {
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Load a PEM certificate chain and key; the old certificate stays if this fails.
    pub fn reload(&self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        let k = load_pem(cert, key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(k);
        Ok(())
    }

    /// The certificate chain new handshakes get (end entity first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .cert
            .clone()
    }

    /// base64(SHA-256(SubjectPublicKeyInfo)) of the served certificate, the form Chromium's
    /// `--ignore-certificate-errors-spki-list` takes.
    pub fn spki_sha256(&self) -> Option<String> {
        let k = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        spki_hash_of(&k)
    }
}

/// base64(SHA-256) of the key's SubjectPublicKeyInfo DER, as rustls encodes it.
/// (`keys_match` at load time proves it is the end-entity certificate's key.)
fn spki_hash_of(key: &CertifiedKey) -> Option<String> {
    let spki = key.key.public_key()?;
    Some(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki.as_ref())))
}

/// Read a PEM certificate chain and private key into a rustls `CertifiedKey`.
pub fn load_pem(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let cert_pem =
        std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        return Err(anyhow!("{}: no certificate found", cert.display()));
    }
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{}: not a PEM private key", key.display()))?
        .ok_or_else(|| anyhow!("{}: no private key found", key.display()))?;
    certified(chain, key_der)
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<CertifiedKey> {
    let signing = any_supported_type(&key).map_err(|e| anyhow!("unsupported private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| anyhow!("certificate and key do not match: {e}"))?;
    Ok(ck)
}

/// A self-signed certificate for localhost, 127.0.0.1 and ::1 (development profile).
pub fn self_signed() -> anyhow::Result<CertifiedKey> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).context("cannot generate a certificate")?;
    let key = PrivateKeyDer::try_from(signing_key.serialize_der())
        .map_err(|e| anyhow!("generated key: {e}"))?;
    certified(vec![cert.der().clone()], key)
}

/// A rustls server config: TLS 1.2 and 1.3, ALPN `stun.turn`, certificate from `certs`.
/// rustls never renegotiates.
pub fn server_config(certs: Arc<ReloadableCert>) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
    Ok(Arc::new(cfg))
}

/// The certificate for TLS listeners: the configured files, or in the development profile a
/// freshly generated self-signed one. `None` without TLS listeners.
pub fn for_listeners(config: &Config) -> anyhow::Result<Option<Arc<ReloadableCert>>> {
    if config.listen.tls.is_empty() {
        return Ok(None);
    }
    let key = match (&config.tls, config.profile) {
        (Some(f), _) => load_pem(&f.cert, &f.key)?,
        (None, Profile::Development) => self_signed()?,
        (None, Profile::Production) => {
            anyhow::bail!("TLS listeners need [tls] cert and key")
        }
    };
    let cert = ReloadableCert::new(key);
    if config.tls.is_none() {
        tracing::warn!(
            spki_sha256 = %cert.spki_sha256().unwrap_or_default(),
            "serving a self-signed development certificate; for Chromium use \
             --ignore-certificate-errors-spki-list=<spki_sha256>"
        )
    }
    Ok(Some(cert))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_cert_has_an_spki_hash_matching_rcgen() {
        let names = vec!["localhost".to_string()];
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names).unwrap();
        use rcgen::PublicKeyData;
        let expected = base64::engine::general_purpose::STANDARD
            .encode(Sha256::digest(signing_key.subject_public_key_info()));
        let key = PrivateKeyDer::try_from(signing_key.serialize_der()).unwrap();
        let served = ReloadableCert::new(certified(vec![cert.der().clone()], key).unwrap());
        assert_eq!(served.spki_sha256().unwrap(), expected);
    }

    #[test]
    fn reload_keeps_the_old_certificate_on_error() {
        let r = ReloadableCert::new(self_signed().unwrap());
        let before = r.spki_sha256().unwrap();
        assert!(r
            .reload(
                Path::new("/nonexistent/c.pem"),
                Path::new("/nonexistent/k.pem")
            )
            .is_err());
        assert_eq!(r.spki_sha256().unwrap(), before);
    }
}
