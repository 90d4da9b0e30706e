//! HTTPS for the signaling listener: the rustls config. The certificate is the TLS
//! listeners' [`ReloadableCert`]; the ALPN is `http/1.1` (the TURN listeners announce
//! `stun.turn`). Handshakes run in [`super::limits::serve`], one task each, bounded in number
//! and time, so one slow client never holds up the accept loop.

use std::sync::Arc;

use anyhow::Context;

use crate::tls::ReloadableCert;

/// rustls config for HTTPS: TLS 1.2 and 1.3, ALPN `http/1.1`, certificate from `cert`.
pub fn http_tls_config(cert: Arc<ReloadableCert>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
