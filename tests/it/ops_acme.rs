//! `[tls] acme` end to end against Debian's `pebble` ACME test server on loopback: turnd
//! answers TLS-ALPN-01 on its own TLS listener, gets a certificate, serves it to `turns:`
//! clients that trust only pebble's root, renews it (pebble issues 30 s certificates), and
//! a connection made before the renewal keeps working after it. Also: the expiry metric
//! follows the served certificate, and a restart serves the stored certificate at once.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::raw::*;
use rustls::pki_types::{CertificateDer, ServerName};
use stun::message::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const DOMAIN: &str = "localhost";
/// certificateValidityPeriod given to pebble, and turnd's renew_before.
const VALIDITY_SECS: u64 = 30;
const RENEW_BEFORE_SECS: u64 = 20;

/// pebble, killed by PID when dropped.
struct Pebble {
    child: Child,
    dir: Uri,
}

struct Uri {
    api: SocketAddr,
    management: SocketAddr,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn require_pebble() {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("pebble").is_file()));
    assert!(
        found,
        "pebble is not on PATH: install Debian's `pebble` package (apt-get install pebble)"
    );
}

/// Start pebble on loopback with its API certificate `https_cert`/`https_key`, validating
/// TLS-ALPN-01 on `tls_port`.
fn start_pebble(dir: &Path, https_cert: &Path, https_key: &Path, tls_port: u16) -> Pebble {
    require_pebble();
    let api = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let management = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()));
    let config = serde_json::json!({
        "pebble": {
            "listenAddress": api.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": https_cert,
            "privateKey": https_key,
            // HTTP-01 is not used; a port nobody listens on.
            "httpPort": free_tcp_port(),
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
            "certificateValidityPeriod": VALIDITY_SECS,
        }
    });
    let path = dir.join("pebble-config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
    let child = Command::new("pebble")
        .arg("-config")
        .arg(&path)
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        // Every order validates again (no authorization reuse), renewals included.
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("pebble starts");
    let p = Pebble {
        child,
        dir: Uri { api, management },
    };
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(api).is_err()
        || std::net::TcpStream::connect(management).is_err()
    {
        assert!(
            Instant::now() < end,
            "pebble did not listen: {}",
            pebble_log(dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p
}

/// Prints pebble's log if the test fails.
struct DumpOnPanic(std::path::PathBuf);
impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("pebble log:\n{}", pebble_log(&self.0));
        }
    }
}

fn pebble_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(roots: &[CertificateDer<'static>], alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

fn pem_ders(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// pebble's (per run) root CA, from its management API.
async fn pebble_root(
    p: &Pebble,
    api_root: &CertificateDer<'static>,
) -> Vec<CertificateDer<'static>> {
    let tls = tokio_rustls::TlsConnector::from(client_config(
        std::slice::from_ref(api_root),
        b"http/1.1",
    ));
    let tcp = TcpStream::connect(p.dir.management).await.unwrap();
    let mut s = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let req = format!(
        "GET /roots/0 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        p.dir.management
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut body = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut body)).await;
    let text = String::from_utf8_lossy(&body);
    let ders = pem_ders(&text);
    assert!(!ders.is_empty(), "no root from pebble: {text}");
    ders
}

/// A verified `turns:` connection to `addr` (SNI localhost), or the handshake error.
async fn turns(
    addr: SocketAddr,
    roots: &[CertificateDer<'static>],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tls = tokio_rustls::TlsConnector::from(client_config(roots, b"stun.turn"));
    let tcp = TcpStream::connect(addr).await?;
    tls.connect(ServerName::try_from(DOMAIN).unwrap(), tcp)
        .await
}

fn served_leaf(s: &TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Allocate over a TLS connection; returns the nonce.
async fn allocate(s: &mut TlsStream<TcpStream>) -> String {
    let r = stream_ask(s, &request(METHOD_ALLOCATE, &[&udp_transport()], None)).await;
    assert_eq!(code(&r), Some(401));
    let nonce = nonce_of(&r);
    let r = stream_ask(
        s,
        &request(
            METHOD_ALLOCATE,
            &[&udp_transport()],
            Some((USER, PASS, &nonce)),
        ),
    )
    .await;
    assert_eq!(
        r.typ.class,
        CLASS_SUCCESS_RESPONSE,
        "Allocate: {:?}",
        code(&r)
    );
    nonce
}

fn acme_config(tls_port: u16, p: &Pebble, state: &Path, api_ca: &Path) -> turnd::Config {
    let mut c = turnd::Config::for_tests();
    c.listen.tls = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, tls_port))];
    c.acme = Some(turnd::config::Acme {
        domains: vec![DOMAIN.into()],
        contact: Some("mailto:ops@example.org".into()),
        directory: format!("https://{}/dir", p.dir.api),
        state_dir: state.to_path_buf(),
        directory_ca: Some(api_ca.to_path_buf()),
        renew_before: Duration::from_secs(RENEW_BEFORE_SECS),
    });
    c
}

async fn wait_for<T>(what: &str, within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_issues_and_renews_through_pebble_without_dropping_connections() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("turnd=info")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().to_path_buf();
    let _dump = DumpOnPanic(log_dir);
    // pebble's own HTTPS certificate; turnd trusts it as tls.acme.directory_ca.
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (api_cert, api_key) = (dir.path().join("api.pem"), dir.path().join("api-key.pem"));
    std::fs::write(&api_cert, cert.pem()).unwrap();
    std::fs::write(&api_key, signing_key.serialize_pem()).unwrap();
    let api_root = cert.der().clone();

    let tls_port = free_tcp_port();
    let pebble = start_pebble(dir.path(), &api_cert, &api_key, tls_port);
    let roots = pebble_root(&pebble, &api_root).await;
    let state = dir.path().join("acme");
    let srv = turnd::start(acme_config(tls_port, &pebble, &state, &api_cert)).unwrap();
    let addr = srv.tls[0];
    let started = Instant::now();

    // Issue: until then the placeholder is served and a verifying client refuses it.
    let mut first = wait_for(
        "a certificate from pebble",
        Duration::from_secs(30),
        async || turns(addr, &roots).await.ok(),
    )
    .await;
    eprintln!("issued after {:?}", started.elapsed());
    let leaf1 = served_leaf(&first);
    assert!(state.join("cert.pem").exists() && state.join("key.pem").exists());
    assert!(state.join("account.json").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state.join("key.pem")), 0o600);
    assert_eq!(mode(&state.join("account.json")), 0o600);
    assert_eq!(mode(&state), 0o700);
    let nonce = allocate(&mut first).await;
    let expiry1 = srv.certificate.as_ref().unwrap().expiry()[0].not_after;

    // The expiry metric names the served certificate.
    let (_, metrics) = http("GET", srv.admin.unwrap(), "/metrics", None).await;
    let m = prometheus(&metrics);
    let key = r#"turnd_tls_certificate_expiry_seconds{index="0",subject=""}"#;
    let value = m
        .iter()
        .find(|(k, _)| k.starts_with("turnd_tls_certificate_expiry_seconds{index=\"0\""))
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("{key} missing:\n{metrics}"));
    assert_eq!(value as i64, expiry1);

    // Renewal: with 30 s certificates and renew_before 20 s, within about 10 s.
    let mut second = wait_for(
        "a renewed certificate",
        Duration::from_secs(40),
        async || {
            let s = turns(addr, &roots).await.ok()?;
            (served_leaf(&s) != leaf1).then_some(s)
        },
    )
    .await;
    eprintln!("renewed after {:?}", started.elapsed());
    let expiry2 = srv.certificate.as_ref().unwrap().expiry()[0].not_after;
    assert!(expiry2 > expiry1, "the renewed certificate lives longer");
    // The new connection relays; the old one, handshaken with the old certificate, too.
    allocate(&mut second).await;
    let r = stream_ask(
        &mut first,
        &request(
            METHOD_REFRESH,
            &[&lifetime(600)],
            Some((USER, PASS, &nonce)),
        ),
    )
    .await;
    assert_eq!(
        r.typ.class,
        CLASS_SUCCESS_RESPONSE,
        "the connection from before the renewal still works: {:?}",
        code(&r)
    );
    srv.stop();

    // A restart serves the stored certificate at once (no placeholder, no new order first).
    let stored = std::fs::read_to_string(state.join("cert.pem")).unwrap();
    let stored_leaf = pem_ders(&stored)[0].to_vec();
    let srv = turnd::start(acme_config(tls_port, &pebble, &state, &api_cert)).unwrap();
    let s = turns(srv.tls[0], &roots)
        .await
        .expect("the stored certificate at start");
    let leaf = served_leaf(&s);
    // The stored certificate is seconds old, far from due (renewal at 10 s of its 30 s).
    assert_eq!(
        leaf, stored_leaf,
        "the stored certificate is served at start"
    );
    srv.stop();
    drop(pebble);
}
