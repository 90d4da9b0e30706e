//! [`tls_connector`]: a TLS client trusting only the given roots.

/// A TLS client (ring provider, safe default versions) trusting only `roots`, offering ALPN
/// `alpn`.
pub fn tls_connector(
    roots: &[rustls::pki_types::CertificateDer<'static>],
    alpn: &[u8],
) -> tokio_rustls::TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for c in roots {
        store.add(c.clone()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}
