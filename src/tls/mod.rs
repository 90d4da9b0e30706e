//! TLS for `turns:` listeners (rustls via tokio-rustls): a certificate that can be reloaded
//! at run time without touching established connections, the development profile's
//! self-signed certificate, and (in [`handshake`]) the reasons and rate-limited logging of
//! failed handshakes.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

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

/// ALPN of ACME TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// The certificate new handshakes get; swapped whole on reload. With ACME it also holds the
/// TLS-ALPN-01 challenge certificates, served only to handshakes that offer `acme-tls/1`.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
    /// Lower-case DNS name -> challenge certificate (RFC 8737 §3).
    challenges: RwLock<std::collections::HashMap<String, Arc<CertifiedKey>>>,
    acme: bool,
    /// With ACME: the served certificate came from the state directory (not a placeholder).
    acme_stored: std::sync::atomic::AtomicBool,
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme_hello = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ALPN_ACME_TLS));
        if self.acme && acme_hello {
            // RFC 8737 §3: only `acme-tls/1` is offered, and the SNI names the domain.
            let name = hello.server_name()?.to_ascii_lowercase();
            let challenges = self.challenges.read().unwrap_or_else(|e| e.into_inner());
            return challenges.get(&name).cloned();
        }
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
            challenges: RwLock::default(),
            acme: false,
            acme_stored: Default::default(),
        })
    }

    /// A certificate that also answers ACME TLS-ALPN-01 challenges.
    pub fn with_acme(key: CertifiedKey) -> Arc<Self> {
        Arc::new(ReloadableCert {
            current: RwLock::new(Arc::new(key)),
            challenges: RwLock::default(),
            acme: true,
            acme_stored: Default::default(),
        })
    }

    /// Was the ACME certificate served at start loaded from the state directory?
    pub fn acme_stored(&self) -> bool {
        self.acme_stored.load(Ordering::Relaxed)
    }

    pub fn set_acme_stored(&self, stored: bool) {
        self.acme_stored.store(stored, Ordering::Relaxed);
    }

    /// Does this certificate answer `acme-tls/1` handshakes?
    pub fn answers_acme(&self) -> bool {
        self.acme
    }

    /// Serve `key` to new handshakes from now on; established connections keep theirs.
    pub fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        self.warn_if_expiring(unix_now());
    }

    /// Answer TLS-ALPN-01 for `domain` with a self-signed certificate carrying the
    /// acmeIdentifier extension with `digest` (SHA-256 of the key authorization).
    pub fn add_challenge(&self, domain: &str, digest: &[u8]) -> anyhow::Result<()> {
        let mut params = rcgen::CertificateParams::new(vec![domain.to_string()])
            .context("challenge certificate")?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let key = rcgen::KeyPair::generate().context("challenge key")?;
        let cert = params.self_signed(&key).context("challenge certificate")?;
        let der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| anyhow!("challenge key: {e}"))?;
        // Not `certified`: its key check parses the certificate with webpki, which refuses
        // the critical acmeIdentifier extension. The key is the one just generated.
        let signing = any_supported_type(&der).map_err(|e| anyhow!("challenge key: {e}"))?;
        let ck = CertifiedKey::new(vec![cert.der().clone()], signing);
        self.challenges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_ascii_lowercase(), Arc::new(ck));
        Ok(())
    }

    /// Forget every challenge certificate.
    pub fn clear_challenges(&self) {
        self.challenges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Load a PEM certificate chain and key; the old certificate stays if this fails.
    pub fn reload(&self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        self.set(load_pem(cert, key)?);
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

/// One certificate of the served chain: its position (0: end entity), subject and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub index: usize,
    pub subject: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

/// Warn this long before a served certificate expires.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

impl ReloadableCert {
    /// Expiry of every certificate in the served chain (unparseable ones are left out).
    pub fn expiry(&self) -> Vec<Expiry> {
        expiry_of(&self.chain())
    }

    /// Log a warning for each served certificate that expires within [`EXPIRY_WARNING`] of
    /// `now_unix` (or has expired). Returns how many were warned about.
    pub fn warn_if_expiring(&self, now_unix: i64) -> usize {
        let mut n = 0;
        for e in self.expiry() {
            let left = e.not_after.saturating_sub(now_unix);
            if left < EXPIRY_WARNING.as_secs() as i64 {
                n += 1;
                tracing::warn!(
                    subject = %e.subject,
                    index = e.index,
                    not_after = e.not_after,
                    days_left = left / 86_400,
                    "TLS certificate expires soon (or has expired): renew it and reload"
                );
            }
        }
        n
    }
}

fn expiry_of(chain: &[CertificateDer<'_>]) -> Vec<Expiry> {
    chain
        .iter()
        .enumerate()
        .filter_map(|(index, der)| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            Some(Expiry {
                index,
                subject: cert.subject().to_string(),
                not_after: cert.validity().not_after.timestamp(),
            })
        })
        .collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// How often a running server looks at the expiry of its certificate.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);

/// A thread that warns (at start, then every 12 h, and after each reload through
/// [`ReloadableCert::reload`]) about a certificate expiring within 14 days; it ends when
/// `shutdown` is cancelled.
pub fn watch_expiry(
    cert: Arc<ReloadableCert>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("turnd-cert-expiry".into())
        .spawn(move || {
            let mut next = Instant::now();
            while !shutdown.is_cancelled() {
                if Instant::now() >= next {
                    cert.warn_if_expiring(unix_now());
                    next = Instant::now() + EXPIRY_CHECK_EVERY;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .context("cannot start the certificate expiry thread")
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
    parse_pem(&cert_pem, &key_pem, cert, key)
}

/// A PEM certificate chain and private key (names `cert`, `key` for messages).
pub fn parse_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> anyhow::Result<CertifiedKey> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        return Err(anyhow!("{}: no certificate found", cert.display()));
    }
    let key_der = rustls_pemfile::private_key(&mut &key_pem[..])
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

/// A rustls server config: TLS 1.2 and 1.3, ALPN `stun.turn` (and `acme-tls/1` when `certs`
/// answers ACME challenges), certificate from `certs`.
/// rustls never renegotiates.
pub fn server_config(certs: Arc<ReloadableCert>) -> anyhow::Result<Arc<ServerConfig>> {
    let certs_acme = certs.answers_acme();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
    if certs_acme {
        cfg.alpn_protocols.push(ALPN_ACME_TLS.to_vec());
    }
    Ok(Arc::new(cfg))
}

/// The certificate for TLS listeners from `[tls]` files, or in the development profile a
/// freshly generated self-signed one. `None` without TLS listeners. (An ACME certificate is
/// the composition root's: `crate::acme`.)
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
    fn expiry_is_the_not_after_of_each_certificate_and_warns_within_14_days() {
        let mut params = rcgen::CertificateParams::new(vec!["expiring.test".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "expiring.test");
        params.not_after = rcgen::date_time_ymd(2030, 3, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let r = ReloadableCert::new(certified(vec![cert.der().clone()], der).unwrap());
        let e = r.expiry();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].index, 0);
        assert_eq!(e[0].subject, "CN=expiring.test");
        // 2030-03-17T00:00:00Z
        assert_eq!(e[0].not_after, 1_899_936_000);
        let day = 86_400;
        assert_eq!(r.warn_if_expiring(1_899_936_000 - 15 * day), 0);
        assert_eq!(r.warn_if_expiring(1_899_936_000 - 13 * day), 1);
        assert_eq!(r.warn_if_expiring(1_899_936_000 + day), 1, "expired");
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
