//! Tier 3 interop over TCP and TLS client legs (relays to peers are always UDP): coturn's
//! `turnutils_uclient` (`-t`, `-t -S`) and Python `aioice` (`transport="tcp"`, `ssl=`) against
//! turnd started in-process on port 0, on 127.0.0.1 and ::1.
//!
//! TLS: turnd serves a certificate generated here ([`TestCert`], configured through
//! `config.tls`); aioice verifies it (chain and IP address) with that certificate as its only
//! trust anchor, and must fail against another one or another name. coturn 4.6.1's uclient
//! does not verify certificates at all, so for it TLS is about the listener, not the
//! certificate. After every client run the server's counts must settle: a TCP/TLS allocation
//! lives only as long as its connection.
//!
//! `harness_selftest_coturn_streams` runs some of the same scenarios against coturn's
//! `turnserver` with TCP and TLS listeners. Needs coturn and `pip install aioice==0.13.*`; a
//! missing tool fails the test with the install hint.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

use ClientTransport::{Tcp, Tls};

/// turnd with `Config::for_tests()`, stopped on drop. Unless started with
/// [`Turnd::start_dev_cert`], its TLS listeners serve a fresh [`TestCert`] for 127.0.0.1, ::1
/// and localhost.
struct Turnd {
    running: Option<turnd::Running>,
    cert: Option<TestCert>,
}

impl Turnd {
    fn start() -> Turnd {
        let cert = TestCert::loopback();
        let mut config = turnd::Config::for_tests();
        config.tls = Some(turnd::config::TlsFiles {
            cert: cert.cert.clone(),
            key: cert.key.clone(),
        });
        let running = turnd::start(config).expect("turnd starts");
        Turnd {
            running: Some(running),
            cert: Some(cert),
        }
    }

    /// With the development profile's own self-signed certificate (no `config.tls`).
    fn start_dev_cert() -> Turnd {
        let running = turnd::start(turnd::Config::for_tests()).expect("turnd starts");
        Turnd {
            running: Some(running),
            cert: None,
        }
    }

    fn running(&self) -> &turnd::Running {
        self.running.as_ref().expect("running until dropped")
    }

    /// The CA file for verifying clients: the certificate turnd serves.
    fn ca_file(&self) -> &Path {
        &self.cert.as_ref().expect("started with a TestCert").cert
    }

    /// The TCP or TLS listener on `ip` (127.0.0.1 or ::1).
    fn addr(&self, t: ClientTransport, ip: IpAddr) -> SocketAddr {
        listener(self.running(), t, ip)
    }

    /// See [`assert_stats_settle`](crate::common::assert_stats_settle).
    fn assert_stats_settle(&self, want: (usize, usize, usize), why: &str) {
        assert_stats_settle(self.running(), want, why);
    }

    /// Nothing left: over UDP uclient leaves its probe allocation behind, over TCP/TLS its
    /// connection closes when it exits and must take the allocation with it.
    fn assert_all_freed(&self, why: &str) {
        self.assert_stats_settle((0, 0, 0), why);
    }
}

impl Drop for Turnd {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// turnutils_uclient
// ---------------------------------------------------------------------------------------------

fn channels(t: ClientTransport, ip: IpAddr) {
    let turnd = Turnd::start();
    uclient_stream_channels(turnd.addr(t, ip), t, 10);
    turnd.assert_all_freed("closing uclient's connections frees their allocations");
}

#[test]
fn uclient_tcp_channels_v4() {
    channels(Tcp, V4);
}

#[test]
fn uclient_tcp_channels_v6() {
    channels(Tcp, V6);
}

#[test]
fn uclient_tls_channels_v4() {
    channels(Tls, V4);
}

#[test]
fn uclient_tls_channels_v6() {
    channels(Tls, V6);
}

fn send_indications(t: ClientTransport, ip: IpAddr) {
    let turnd = Turnd::start();
    uclient_stream_send_indications(turnd.addr(t, ip), t);
    turnd.assert_all_freed("closing uclient's connections frees their allocations");
}

#[test]
fn uclient_tcp_send_indications_v4() {
    send_indications(Tcp, V4);
}

#[test]
fn uclient_tcp_send_indications_v6() {
    send_indications(Tcp, V6);
}

#[test]
fn uclient_tls_send_indications_v4() {
    send_indications(Tls, V4);
}

#[test]
fn uclient_tls_send_indications_v6() {
    send_indications(Tls, V6);
}

fn rest_secret(t: ClientTransport, ip: IpAddr) {
    let turnd = Turnd::start();
    uclient_stream_rest_secret(turnd.addr(t, ip), t);
    turnd.assert_all_freed("closing uclient's connections frees their allocations");
}

#[test]
fn uclient_tcp_rest_secret_computed_by_client_v6() {
    rest_secret(Tcp, V6);
}

#[test]
fn uclient_tls_rest_secret_computed_by_client_v4() {
    rest_secret(Tls, V4);
}

/// uclient without `-c` over TCP: the EVEN-PORT (R=1) probe on one connection reserves the
/// port that the RESERVATION-TOKEN Allocate on another connection must get.
#[test]
fn uclient_tcp_rtp_rtcp_pair_reservation_token_across_connections_v4() {
    let turnd = Turnd::start();
    let server = turnd.addr(Tcp, V4);
    let peer = EchoPeer::start(V4);
    let u = Uclient::new(server)
        .tcp()
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .messages(5);
    let r = u.run();
    assert_stream_run(&r, Tcp, u.expected_messages());
    assert_relays(&r, V4, 3);
    let ports: Vec<u16> = r.relay_addrs.iter().map(SocketAddr::port).collect();
    let ctx = r.context();
    assert_eq!(ports[0] % 2, 0, "EVEN-PORT: {ports:?}\n{ctx}");
    assert_eq!(ports[1], ports[0] + 1, "reserved port: {ports:?}\n{ctx}");
    assert_eq!(ports[2] % 2, 0, "EVEN-PORT: {ports:?}\n{ctx}");
    assert_eq!(
        peer.stats().datagrams,
        u.expected_messages(),
        "datagrams at the peer (both ports)"
    );
    turnd.assert_all_freed("closing uclient's connections frees their allocations");
}

fn refused(t: ClientTransport, ip: IpAddr, user: &str, password: &str) {
    let turnd = Turnd::start();
    uclient_stream_refused(turnd.addr(t, ip), t, user, password);
    turnd.assert_all_freed("a refused client holds nothing");
}

#[test]
fn uclient_tls_wrong_password_refused_v4() {
    refused(Tls, V4, USER, "wrong");
}

#[test]
fn uclient_tls_wrong_password_refused_v6() {
    refused(Tls, V6, USER, "wrong");
}

#[test]
fn uclient_tcp_wrong_password_refused_v4() {
    refused(Tcp, V4, USER, "wrong");
}

#[test]
fn uclient_tls_expired_rest_credentials_refused_v6() {
    let (user, password) = rest_credentials(SECRET, USER, unix_now() - 3600);
    refused(Tls, V6, &user, &password);
}

// ---------------------------------------------------------------------------------------------
// aioice
// ---------------------------------------------------------------------------------------------

fn aioice(t: ClientTransport, ip: IpAddr, tweak: impl FnOnce(&mut AioiceOpts)) -> AioiceReport {
    let turnd = Turnd::start();
    let mut opts = match t {
        ClientTransport::Tls => AioiceOpts::tls(turnd.ca_file()),
        _ => AioiceOpts::tcp(),
    };
    tweak(&mut opts);
    let r = aioice_stream_relay(turnd.addr(t, ip), &opts);
    let why = match opts.close {
        AioiceClose::Delete => "aioice's Refresh(0) frees its allocation",
        AioiceClose::Close => "closing the connection (no Refresh) frees the allocation",
        AioiceClose::Abort => "dropping the connection (no Refresh) frees the allocation",
    };
    turnd.assert_all_freed(why);
    r
}

#[test]
fn aioice_tcp_v4() {
    aioice(Tcp, V4, |_| {});
}

/// aioice over IPv6 gets an IPv4 relay (it never asks for another family).
#[test]
fn aioice_tcp_v6_connection_dropped_without_refresh() {
    aioice(Tcp, V6, |o| o.close = AioiceClose::Abort);
}

/// Verified against the test certificate (IP SAN 127.0.0.1); ALPN "stun.turn" (RFC 7443).
#[test]
fn aioice_tls_verified_v4() {
    let r = aioice(Tls, V4, |o| o.alpn = Some("stun.turn".into()));
    assert_eq!(r.tls_version, "TLSv1.3", "{}", r.raw);
    assert_eq!(r.alpn, "stun.turn", "{}", r.raw);
}

/// Verified against the test certificate (IP SAN ::1), TLS 1.2, closed with close_notify and
/// no Refresh.
#[test]
fn aioice_tls12_verified_v6_connection_closed_without_refresh() {
    let r = aioice(Tls, V6, |o| {
        o.tls12_only = true;
        o.close = AioiceClose::Close;
    });
    assert_eq!(r.tls_version, "TLSv1.2", "{}", r.raw);
}

#[test]
fn aioice_tls_v4_connection_dropped_without_refresh() {
    aioice(Tls, V4, |o| o.close = AioiceClose::Abort);
}

/// The development profile's self-signed certificate (no `config.tls`) is good enough for a
/// verifying client that trusts exactly that certificate, over ::1.
#[test]
fn aioice_tls_verifies_dev_self_signed_cert_v6() {
    let turnd = Turnd::start_dev_cert();
    let cert = turnd
        .running()
        .certificate
        .clone()
        .expect("TLS listeners have a certificate");
    let chain = cert.chain();
    assert!(!chain.is_empty(), "served chain");
    let dir = ScratchDir::new("devcert");
    let ca = dir.path().join("dev-cert.pem");
    std::fs::write(&ca, pem_certificates(chain.iter().map(|c| c.as_ref()))).expect("write PEM");
    aioice_stream_relay(turnd.addr(Tls, V6), &AioiceOpts::tls(&ca));
    turnd.assert_all_freed("aioice's Refresh(0) frees its allocation");
}

/// A TLS failure aioice must report before any TURN traffic: nothing allocated, nothing at
/// the peer. Returns the error text.
fn aioice_tls_fails(opts: impl FnOnce(&Turnd) -> AioiceOpts) -> String {
    let turnd = Turnd::start();
    let peer = EchoPeer::start(V4);
    let err = run_aioice_with(
        turnd.addr(Tls, V4),
        USER,
        PASSWORD,
        peer.addr(),
        &opts(&turnd),
    )
    .expect_err("the TLS handshake must fail");
    let err = format!("{err:#}");
    assert!(err.contains("CERTIFICATE_VERIFY_FAILED"), "{err}");
    assert_eq!(peer.stats(), EchoStats::default(), "{err}");
    turnd.assert_all_freed("a client that never got through TLS holds nothing");
    err
}

/// Verification is real: a CA that did not issue turnd's certificate is refused.
#[test]
fn aioice_tls_wrong_ca_fails_verification() {
    let other = TestCert::loopback();
    aioice_tls_fails(|_| AioiceOpts::tls(&other.cert));
}

/// The name is checked too: the right certificate for another name is refused.
#[test]
fn aioice_tls_wrong_name_fails_verification() {
    let err = aioice_tls_fails(|turnd| AioiceOpts {
        server_hostname: Some("not-in-the-cert.invalid".into()),
        ..AioiceOpts::tls(turnd.ca_file())
    });
    assert!(err.contains("not-in-the-cert.invalid"), "{err}");
}

#[test]
fn aioice_tls_wrong_password_fails() {
    let turnd = Turnd::start();
    let peer = EchoPeer::start(V4);
    let err = run_aioice_with(
        turnd.addr(Tls, V4),
        USER,
        "wrong",
        peer.addr(),
        &AioiceOpts::tls(turnd.ca_file()),
    )
    .expect_err("a wrong password must not allocate");
    assert!(
        format!("{err:#}").contains("401"),
        "expected a 401: {err:#}"
    );
    assert_eq!(peer.stats(), EchoStats::default());
    turnd.assert_all_freed("a refused client holds nothing");
}

/// The stream helpers against coturn's turnserver with TCP and TLS listeners (the reference
/// server): proves they see success over both transports, a TLS refusal at Allocate, and a
/// failed certificate verification. Few and fast on purpose.
mod harness_selftest_coturn_streams {
    use super::{Tcp, Tls};
    use crate::common::*;

    #[test]
    fn uclient_tcp_v4_and_tls_v6_and_tls_refusal() {
        let cert = TestCert::loopback();
        let coturn = Coturn::start_streams(&cert);
        uclient_stream_channels(coturn.v4(), Tcp, 5);
        uclient_stream_send_indications(coturn.tls_addr(V6), Tls);
        uclient_stream_refused(coturn.tls_addr(V4), Tls, USER, "wrong");
    }

    #[test]
    fn aioice_tcp_and_verified_tls_and_wrong_ca() {
        let cert = TestCert::loopback();
        let coturn = Coturn::start_streams(&cert);
        aioice_stream_relay(coturn.v6(), &AioiceOpts::tcp());
        let r = aioice_stream_relay(coturn.tls_addr(V4), &AioiceOpts::tls(&cert.cert));
        assert!(!r.tls_version.is_empty(), "{}", r.raw);
        let other = TestCert::loopback();
        let peer = EchoPeer::start(V4);
        let err = run_aioice_with(
            coturn.tls_addr(V4),
            USER,
            PASSWORD,
            peer.addr(),
            &AioiceOpts::tls(&other.cert),
        )
        .expect_err("another CA must not verify coturn's certificate");
        assert!(
            format!("{err:#}").contains("CERTIFICATE_VERIFY_FAILED"),
            "{err:#}"
        );
    }
}

/// The TLS additions to the uclient parser against real coturn 4.6.1 uclient output.
mod harness_parsers_streams {
    use crate::common::*;

    /// A TLS run where uclient first picked its TLS 1.1 method (refused by the server), then
    /// reconnected with another method.
    const UCLIENT_TLS: &str = "\
0: : call SSL_connect...
0: : tls_connect: cannot connect: rc=-1, ctx=2
0: : errno=0, err=0, error:0A000410:SSL routines::sslv3 alert handshake failure (1)
0: : call SSL_connect...
0: : tls_connect: client session connected with cipher ECDHE-ECDSA-AES256-GCM-SHA384, method=TLSv1.2
0: : IPv4. Connected to: 127.0.0.1:34981
0: : IPv4. Received relay addr: 127.0.0.1:50467
0: : call SSL_connect...
0: : tls_connect: client session connected with cipher TLS_AES_256_GCM_SHA384, method=TLSv1.3
0: : IPv4. Received relay addr: 127.0.0.1:61640
4: : start_mclient: tot_send_msgs=10, tot_recv_msgs=10
4: : start_mclient: tot_send_bytes ~ 2000, tot_recv_bytes ~ 2000
4: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
4: : Average round trip delay 0.300000 ms; min = 0 ms, max = 3 ms
";

    #[test]
    fn uclient_tls_sessions_and_retries() {
        let mut r = UclientReport::parse(UCLIENT_TLS);
        r.exit_code = Some(0);
        assert_eq!(r.tls_sessions, vec!["TLSv1.2", "TLSv1.3"]);
        assert_eq!(r.tls_retries, vec![2]);
        assert_eq!(r.tls_retry_errors.len(), 1);
        assert_eq!(
            r.errors, r.tls_retry_errors,
            "the retry is also an error line"
        );
        assert!(
            std::panic::catch_unwind(|| r.assert_all_relayed(10)).is_err(),
            "the plain check rejects the retry's error line"
        );
        r.assert_all_relayed_tls(10);
        assert_stream_run(&r, ClientTransport::Tls, 10);
    }

    #[test]
    fn uclient_tls_rejects_old_versions_and_failed_modern_handshakes() {
        let mut r = UclientReport::parse(&UCLIENT_TLS.replace("method=TLSv1.2", "method=TLSv1.1"));
        r.exit_code = Some(0);
        assert!(std::panic::catch_unwind(|| r.assert_all_relayed_tls(10)).is_err());
        let mut r = UclientReport::parse(&UCLIENT_TLS.replace("ctx=2", "ctx=3"));
        r.exit_code = Some(0);
        assert!(std::panic::catch_unwind(|| r.assert_all_relayed_tls(10)).is_err());
    }
}

/// Failed TLS handshakes of clients we did not write, counted by reason
/// (`turnd_tls_handshake_failures_total{reason}`): per reason, summed over shards.
fn handshake_failures(turnd: &Turnd) -> Vec<(&'static str, u64)> {
    let metrics = turnd.running().control.metrics();
    turnd::tls::HandshakeFailure::ALL
        .iter()
        .map(|r| {
            let n = metrics
                .iter()
                .map(|m| m.handshake_failures[r.index()])
                .sum();
            (r.as_str(), n)
        })
        .collect()
}

/// Wait (up to 5 s) until the failed handshakes are exactly `want` (reasons not named: 0).
fn expect_handshake_failures(turnd: &Turnd, want: &[(&str, u64)], what: &str) {
    let expected: Vec<(&str, u64)> = handshake_failures(turnd)
        .iter()
        .map(|(r, _)| (*r, want.iter().find(|(w, _)| w == r).map_or(0, |(_, n)| *n)))
        .collect();
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let got = handshake_failures(turnd);
        if got == expected {
            return;
        }
        assert!(Instant::now() < end, "{what}: {got:?}, want {expected:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `openssl s_client` against `addr` with `args`, stdin closed; its exit status (bounded).
fn s_client(addr: SocketAddr, args: &[&str]) -> std::process::ExitStatus {
    let mut child = ChildGuard::spawn(
        std::process::Command::new("openssl")
            .arg("s_client")
            .arg("-connect")
            .arg(addr.to_string())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
        "openssl",
    );
    child
        .wait_timeout(Duration::from_secs(10))
        .expect("openssl s_client finishes within 10 s")
}

/// aioice refusing turnd's certificate (another CA) hangs up without an alert (asyncio closes
/// the transport): reason "closed". OpenSSL's s_client sends `unknown_ca`: reason "alert";
/// offering only cipher suites rustls does not implement: "incompatible"; a good handshake
/// counts nothing.
#[test]
fn tls_handshake_failures_of_foreign_clients_are_counted_by_reason() {
    let other = TestCert::loopback();
    let turnd = Turnd::start();
    let peer = EchoPeer::start(V4);
    let addr = turnd.addr(Tls, V4);
    run_aioice_with(
        addr,
        USER,
        PASSWORD,
        peer.addr(),
        &AioiceOpts::tls(&other.cert),
    )
    .expect_err("the TLS handshake must fail");
    expect_handshake_failures(&turnd, &[("closed", 1)], "aioice, another CA");

    let ca = turnd.ca_file().to_str().unwrap().to_string();
    let other_ca = other.cert.to_str().unwrap();
    let ok = s_client(addr, &["-CAfile", &ca, "-verify_return_error"]);
    assert!(ok.success(), "s_client with the right CA: {ok:?}");
    expect_handshake_failures(&turnd, &[("closed", 1)], "a good handshake");
    let refused = s_client(addr, &["-CAfile", other_ca, "-verify_return_error"]);
    assert!(!refused.success(), "s_client must refuse another CA");
    expect_handshake_failures(
        &turnd,
        &[("closed", 1), ("alert", 1)],
        "s_client, another CA",
    );
    let weak = s_client(addr, &["-tls1_2", "-cipher", "AES128-SHA"]);
    assert!(!weak.success(), "no common cipher suite");
    expect_handshake_failures(
        &turnd,
        &[("closed", 1), ("alert", 1), ("incompatible", 1)],
        "s_client, RSA key exchange only",
    );
    assert_eq!(peer.stats(), EchoStats::default());
    turnd.assert_all_freed("clients that never got through TLS hold nothing");
}
