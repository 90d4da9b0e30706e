//! Tier 2 for TCP and TLS: framing against the live server, allocation lifetime bound to the
//! connection, timeouts, slow readers, and certificate reload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::raw::*;
use stun::attributes::*;
use stun::message::*;
use stun::xoraddr::XorMappedAddress;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn config() -> turnd::Config {
    let mut c = turnd::Config::for_tests();
    c.streams.first_frame_timeout = Duration::from_millis(500);
    c.streams.idle_timeout = Duration::from_millis(800);
    c.streams.write_queue_bytes = 64 * 1024;
    c
}

fn creds(nonce: &str) -> Option<(&str, &str, &str)> {
    Some((USER, PASS, nonce))
}

async fn ask<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, m: &Message) -> Message {
    stream_ask(s, m).await
}

/// Allocate over a stream a relay of the family of `like`; returns (relayed address, nonce).
async fn allocate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    like: SocketAddr,
) -> (SocketAddr, String) {
    let (t, f) = (udp_transport(), family_of(like));
    let r = ask(s, &request(METHOD_ALLOCATE, &[&t, &f], None)).await;
    assert_eq!(code(&r), Some(401));
    let nonce = nonce_of(&r);
    let r = ask(s, &request(METHOD_ALLOCATE, &[&t, &f], creds(&nonce))).await;
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", code(&r));
    (xor_addr(&r, ATTR_XOR_RELAYED_ADDRESS), nonce)
}

async fn channel_to<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, nonce: &str, peer: SocketAddr) {
    let m = request(
        METHOD_CHANNEL_BIND,
        &[&channel_number(0x4000), &peer_attr(peer)],
        creds(nonce),
    );
    assert_eq!(ask(s, &m).await.typ.class, CLASS_SUCCESS_RESPONSE);
}

async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 256];
    loop {
        match tokio::time::timeout(within, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn coalesced_and_split_frames_over_tcp() {
    let srv = turnd::start(config()).unwrap();
    for addr in srv.tcp.clone() {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let a = request(METHOD_BINDING, &[], None);
        let b = request(METHOD_BINDING, &[], None);
        let mut both = a.raw.clone();
        both.extend_from_slice(&b.raw);
        s.write_all(&both).await.unwrap();
        for want in [&a, &b] {
            let mut r = Message::new();
            r.unmarshal_binary(&read_frame(&mut s).await).unwrap();
            assert_eq!(r.transaction_id, want.transaction_id);
            let mut x = XorMappedAddress::default();
            x.get_from(&r).unwrap();
            assert_eq!(SocketAddr::new(x.ip, x.port), s.local_addr().unwrap());
        }
        // One message split over three writes.
        let c = request(METHOD_BINDING, &[], None);
        for part in [&c.raw[..3], &c.raw[3..11], &c.raw[11..]] {
            s.write_all(part).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let mut r = Message::new();
        r.unmarshal_binary(&read_frame(&mut s).await).unwrap();
        assert_eq!(r.transaction_id, c.transaction_id);
    }
    srv.stop();
}

#[tokio::test]
async fn garbage_and_oversized_frames_close_the_connection() {
    let srv = turnd::start(config()).unwrap();
    let addr = srv.tcp[0];
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"\xC0\x00\x00\x00garbage").await.unwrap();
    assert!(
        closed_by_server(&mut s, Duration::from_secs(2)).await,
        "garbage"
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    // A ChannelData header declaring more than any datagram can carry.
    s.write_all(&[0x40, 0x00, 0xFF, 0xFF]).await.unwrap();
    assert!(
        closed_by_server(&mut s, Duration::from_secs(2)).await,
        "oversized"
    );
    // A valid request followed by garbage: answered, then closed.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let m = request(METHOD_BINDING, &[], None);
    let mut bytes = m.raw.clone();
    bytes.extend_from_slice(&[0x80; 8]);
    s.write_all(&bytes).await.unwrap();
    let f = read_frame(&mut s).await;
    assert_eq!(&f[8..20], &m.raw[8..20]);
    assert!(
        closed_by_server(&mut s, Duration::from_secs(2)).await,
        "garbage after a frame"
    );
    srv.stop();
}

#[tokio::test]
async fn silent_and_idle_connections_are_dropped() {
    let srv = turnd::start(config()).unwrap();
    let mut silent = TcpStream::connect(srv.tcp[0]).await.unwrap();
    let t0 = Instant::now();
    assert!(closed_by_server(&mut silent, Duration::from_secs(3)).await);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed too early: {waited:?}"
    );
    // A connection that said one thing and never allocated: idle timeout.
    let mut idle = TcpStream::connect(srv.tcp[0]).await.unwrap();
    ask(&mut idle, &request(METHOD_BINDING, &[], None)).await;
    assert!(closed_by_server(&mut idle, Duration::from_secs(3)).await);
    // With an allocation, the connection stays past the idle timeout.
    let mut busy = TcpStream::connect(srv.tcp[0]).await.unwrap();
    allocate(&mut busy, srv.tcp[0]).await;
    assert!(!closed_by_server(&mut busy, Duration::from_millis(1500)).await);
    srv.stop();
}

#[tokio::test]
async fn closing_the_connection_frees_the_allocation_and_its_port() {
    let srv = turnd::start(config()).unwrap();
    for addr in srv.tcp.clone() {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let (relay, nonce) = allocate(&mut s, addr).await;
        // Relay both ways with padding on the stream.
        let peer = UdpSocket::bind(SocketAddr::new(addr.ip(), 0))
            .await
            .unwrap();
        channel_to(&mut s, &nonce, peer.local_addr().unwrap()).await;
        s.write_all(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0])
            .await
            .unwrap();
        let mut b = [0u8; 100];
        let (n, from) = tokio::time::timeout(Duration::from_secs(2), peer.recv_from(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&b[..n], from), (&[1u8, 2, 3, 4, 5][..], relay));
        peer.send_to(&[9, 8, 7], relay).await.unwrap();
        assert_eq!(
            read_frame(&mut s).await,
            vec![0x40, 0x00, 0x00, 0x03, 9, 8, 7, 0]
        );
        assert_eq!(srv.stats().allocations, 1);
        drop(s);
        wait_until("allocation freed", || srv.stats().allocations == 0).await;
        wait_until("relay port bindable", || {
            std::net::UdpSocket::bind(relay).is_ok()
        })
        .await;
    }
    srv.stop();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_without_slowing_others() {
    let srv = turnd::start(config()).unwrap();
    // The slow client: a small receive window, allocates over TCP, then never reads.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut slow = sock.connect(srv.tcp[0]).await.unwrap();
    let (slow_relay, n1) = allocate(&mut slow, srv.tcp[0]).await;
    let flooder = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    channel_to(&mut slow, &n1, flooder.local_addr().unwrap()).await;
    // The healthy client: UDP, its own peer.
    let good_peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut good = UdpTurn::new(srv.udp[0]).await;
    let good_relay = good.allocate().await;
    good.channel_bind(0x4000, good_peer.local_addr().unwrap())
        .await;
    let mut b = vec![0u8; 2000];

    // Flood the slow client (6000 x 1400 bytes, far more than its 64 KiB queue and the
    // kernel's socket buffers) while the good client exchanges 200 datagrams with its peer.
    let payload = vec![0x55u8; 1400];
    let mut received = 0;
    for i in 0..6000 {
        flooder.send_to(&payload, slow_relay).await.unwrap();
        if i % 30 == 0 {
            good_peer
                .send_to(&payload[..100], good_relay)
                .await
                .unwrap();
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(500), good.sock.recv_from(&mut b)).await
            {
                received += 1;
            }
        }
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(received, 200, "the healthy client got every datagram");
    assert!(
        closed_by_server(&mut slow, Duration::from_secs(5)).await,
        "slow reader disconnected"
    );
    wait_until("slow client's allocation freed", || {
        srv.stats().allocations == 1
    })
    .await;
    srv.stop();
}

fn tls_client(roots: &[rustls::pki_types::CertificateDer<'static>]) -> tokio_rustls::TlsConnector {
    crate::common::tls_connector(roots, b"stun.turn")
}

async fn tls_connect(
    addr: SocketAddr,
    roots: &[rustls::pki_types::CertificateDer<'static>],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    tls_client(roots)
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn tls_allocation_with_the_development_certificate() {
    let srv = turnd::start(config()).unwrap();
    let cert = srv
        .certificate
        .clone()
        .expect("dev profile has a certificate");
    assert_eq!(cert.spki_sha256().unwrap().len(), 44, "base64 of 32 bytes");
    for addr in srv.tls.clone() {
        let mut s = tls_connect(addr, &cert.chain()).await;
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"stun.turn"[..]));
        let (relay, _) = allocate(&mut s, addr).await;
        assert_eq!(relay.ip(), addr.ip());
        drop(s);
        wait_until("TLS allocation freed on close", || {
            srv.stats().allocations == 0
        })
        .await;
    }
    // A plain-TCP client on the TLS port fails the handshake and is closed.
    let mut plain = TcpStream::connect(srv.tls[0]).await.unwrap();
    plain
        .write_all(&request(METHOD_BINDING, &[], None).raw)
        .await
        .unwrap();
    assert!(closed_by_server(&mut plain, Duration::from_secs(3)).await);
    srv.stop();
}

fn write_cert(dir: &std::path::Path) -> rustls::pki_types::CertificateDer<'static> {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    ck.cert.der().clone()
}

#[tokio::test]
async fn certificate_reload_serves_new_connections_and_keeps_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let first = write_cert(dir.path());
    let mut c = config();
    c.tls = Some(turnd::config::TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    });
    let srv = turnd::start(c).unwrap();
    let addr = srv.tls[0];
    let mut old = tls_connect(addr, std::slice::from_ref(&first)).await;
    allocate(&mut old, addr).await;

    let second = write_cert(dir.path());
    srv.reload_tls().unwrap();
    // New connections get the new certificate: trusting only the old one fails.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    assert!(tls_client(std::slice::from_ref(&first))
        .connect(name, tcp)
        .await
        .is_err());
    let mut new = tls_connect(addr, std::slice::from_ref(&second)).await;
    ask(&mut new, &request(METHOD_BINDING, &[], None)).await;
    // The old connection still works, its allocation intact.
    ask(&mut old, &request(METHOD_BINDING, &[], None)).await;
    assert_eq!(srv.stats().allocations, 1);

    // A broken file on reload keeps the current certificate.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    assert!(srv.reload_tls().is_err());
    let mut again = tls_connect(addr, std::slice::from_ref(&second)).await;
    ask(&mut again, &request(METHOD_BINDING, &[], None)).await;
    srv.stop();
}

/// A TCP connection to `to` from the local address `from` (port chosen by the kernel).
async fn connect_from(from: std::net::IpAddr, to: SocketAddr) -> TcpStream {
    let sock = if from.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .unwrap();
    sock.bind(SocketAddr::new(from, 0))
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    sock.connect(to).await.unwrap()
}

/// Whether the server served this connection: a Binding request is answered (true), or the
/// connection is closed without a byte (false, refused by a cap).
async fn served(s: &mut TcpStream) -> bool {
    let m = request(METHOD_BINDING, &[], None);
    // A refused connection may already be closed: the write can fail, the read tells.
    let _ = s.write_all(&m.raw).await;
    let mut b = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(3), s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => false,
        Ok(Ok(_)) => true,
        Err(_) => panic!("neither answered nor closed within 3 s"),
    }
}

fn connections_refused(srv: &turnd::Running) -> u64 {
    srv.control
        .metrics()
        .iter()
        .map(|m| m.connections_refused)
        .sum()
}

#[tokio::test]
async fn per_ip_cap_counts_each_ipv4_address_exactly() {
    let mut c = config();
    c.streams.max_connections_per_ip = 2;
    let srv = turnd::start(c).unwrap();
    let addr = srv.tcp[0];
    assert!(addr.is_ipv4());
    let a: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut held = vec![];
    for _ in 0..2 {
        let mut s = connect_from(a, addr).await;
        assert!(served(&mut s).await);
        held.push(s);
    }
    let mut third = connect_from(a, addr).await;
    assert!(
        !served(&mut third).await,
        "a third connection from 127.0.0.2"
    );
    assert_eq!(connections_refused(&srv), 1);
    // Another IPv4 address, even the next one, is another client.
    let mut other = connect_from("127.0.0.3".parse().unwrap(), addr).await;
    assert!(served(&mut other).await, "127.0.0.3 has its own cap");
    srv.stop();
}

/// The addresses the /64 test binds its clients to: 32 of fd00:1::/64 and one of fd00:2::/64.
fn slash64_test_addrs() -> Vec<String> {
    let mut v: Vec<String> = (1..=32).map(|i| format!("fd00:1::{i:x}")).collect();
    v.push("fd00:2::1".into());
    v
}

/// Runs [`netns_per_64_cap`] inside a network namespace of its own, whose loopback carries
/// the addresses of [`slash64_test_addrs`] (the host's interfaces are never touched).
#[test]
fn per_ip_cap_counts_an_ipv6_slash64_as_one_client() {
    let ns = format!("turnd-streams-{}", std::process::id());
    let ip = |args: &[&str]| {
        let st = std::process::Command::new("ip")
            .args(args)
            .status()
            .expect("this test needs iproute2's `ip` (apt-get install iproute2)");
        assert!(st.success(), "ip {args:?} failed (this test needs root)");
    };
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    ip(&["netns", "add", &ns]);
    let _guard = Netns(ns.clone());
    ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
    for a in slash64_test_addrs() {
        let a = format!("{a}/128");
        ip(&[
            "netns", "exec", &ns, "ip", "-6", "addr", "add", &a, "dev", "lo", "nodad",
        ]);
    }
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe().unwrap())
        .args([
            "stream_inprocess::netns_per_64_cap",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("TURND_TEST_NETNS", &ns)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the test in the namespace failed:\n{stdout}\n{stderr}"
    );
}

/// The body of [`per_ip_cap_counts_an_ipv6_slash64_as_one_client`]; only meaningful inside
/// its namespace, so ignored unless run from there.
#[tokio::test]
#[ignore = "run inside a network namespace by per_ip_cap_counts_an_ipv6_slash64_as_one_client"]
async fn netns_per_64_cap() {
    assert!(
        std::env::var_os("TURND_TEST_NETNS").is_some(),
        "run by per_ip_cap_counts_an_ipv6_slash64_as_one_client"
    );
    let mut c = config();
    c.streams.max_connections_per_ip = 8;
    let srv = turnd::start(c).unwrap();
    let addr = *srv.tcp.iter().find(|a| a.is_ipv6()).unwrap();
    let addrs: Vec<std::net::IpAddr> = slash64_test_addrs()
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let (same64, other64) = (&addrs[..32], addrs[32]);
    // Eight connections from eight addresses of fd00:1::/64 fill its cap...
    let mut held = vec![];
    for a in &same64[..8] {
        let mut s = connect_from(*a, addr).await;
        assert!(served(&mut s).await, "{a} within the cap");
        held.push(s);
    }
    // ...and each of the other 24 addresses of the same /64 is refused.
    let mut refused = 0;
    for a in &same64[8..] {
        let mut s = connect_from(*a, addr).await;
        if !served(&mut s).await {
            refused += 1;
        }
    }
    assert_eq!(refused, 24, "connections beyond the cap of one /64");
    assert_eq!(connections_refused(&srv), 24);
    // Another /64 is another client.
    let mut s = connect_from(other64, addr).await;
    assert!(served(&mut s).await, "fd00:2::/64 has its own cap");
    // A closed connection gives its place back to the /64.
    drop(held.pop());
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect_from(same64[31], addr).await;
        if served(&mut s).await {
            break;
        }
        assert!(Instant::now() < end, "the freed place was not given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop();
}

fn tcp_connections_open(srv: &turnd::Running) -> u64 {
    srv.control
        .metrics()
        .iter()
        .map(|m| m.streams_open[0])
        .sum()
}

/// A TCP client with a 4 KiB receive buffer that allocates and binds a channel to a fresh
/// UDP peer; returns (stream, relayed address, peer).
async fn stalled_client(srv: &turnd::Running) -> (TcpStream, SocketAddr, UdpSocket) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(srv.tcp[0]).await.unwrap();
    let (relay, nonce) = allocate(&mut s, srv.tcp[0]).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    channel_to(&mut s, &nonce, peer.local_addr().unwrap()).await;
    (s, relay, peer)
}

/// Send 1400-byte datagrams from `peer` to `relay` (at most `max` of them, in bursts of 10,
/// small enough for the server to move each into the socket buffers until they are full)
/// until the server holds no allocation; returns how long that took, or None.
async fn flood_until_freed(
    srv: &turnd::Running,
    peer: &UdpSocket,
    relay: SocketAddr,
    max: usize,
    within: Duration,
) -> Option<Duration> {
    let payload = vec![0x55u8; 1400];
    let t0 = Instant::now();
    let mut sent = 0;
    while t0.elapsed() < within {
        if srv.stats().allocations == 0 {
            return Some(t0.elapsed());
        }
        if sent < max {
            for _ in 0..10 {
                let _ = peer.send_to(&payload, relay).await;
            }
            sent += 10;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_when_its_queue_fills_without_reading() {
    let mut c = config();
    // Only the full queue can close it here.
    c.streams.write_queue_bytes = 64 * 1024;
    let srv = turnd::start(c).unwrap();
    let (mut s, relay, peer) = stalled_client(&srv).await;
    assert_eq!(srv.stats().allocations, 1);
    // At most 16,000 x 1400 bytes: far beyond the queue and every socket buffer.
    let freed = flood_until_freed(&srv, &peer, relay, 16_000, Duration::from_secs(10)).await;
    let freed = freed.expect("the allocation of a client that stopped reading is still held");
    eprintln!("queue full: allocation freed {freed:?} after the flood began");
    wait_until("connection closed", || tcp_connections_open(&srv) == 0).await;
    // The client, reading at last, finds the connection closed.
    assert!(closed_by_server(&mut s, Duration::from_secs(3)).await);
    srv.stop();
}

#[tokio::test]
async fn a_write_that_makes_no_progress_closes_the_connection_after_write_timeout() {
    let mut c = config();
    // The queue never fills here (at most 11 MB are sent): only the write timeout can act.
    c.streams.write_queue_bytes = 64 << 20;
    c.streams.write_timeout = Duration::from_secs(1);
    let srv = turnd::start(c).unwrap();
    let (mut s, relay, peer) = stalled_client(&srv).await;
    let freed = flood_until_freed(&srv, &peer, relay, 8_000, Duration::from_secs(15)).await;
    let freed = freed.expect("a write stuck for longer than write_timeout did not close");
    eprintln!("write timeout: allocation freed {freed:?} after the flood began");
    assert!(freed >= Duration::from_secs(1), "closed after {freed:?}");
    wait_until("connection closed", || tcp_connections_open(&srv) == 0).await;
    assert!(closed_by_server(&mut s, Duration::from_secs(3)).await);
    srv.stop();
}

/// The built `turnd` binary with a config file, killed on drop; its JSON log lines (stderr)
/// are collected as they come.
struct Binary {
    child: std::process::Child,
    lines: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Binary {
    fn start(config: &std::path::Path) -> Binary {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_turnd"))
            .arg("--config")
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .env_remove("RUST_LOG")
            .spawn()
            .expect("turnd runs");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(vec![]));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let v = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                sink.lock().unwrap().push(v);
            }
        });
        Binary { child, lines }
    }

    /// The lines logged so far with this message.
    fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .filter(|v| v["message"] == message)
            .cloned()
            .collect()
    }

    /// Wait (up to 10 s) for a line with this message and these field values.
    async fn wait_for(&mut self, message: &str, fields: &[(&str, &str)]) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .logged(message)
                .into_iter()
                .find(|v| fields.iter().all(|(k, want)| v[*k] == *want));
            if let Some(v) = found {
                return v;
            }
            let exited = self.child.try_wait().unwrap();
            assert!(
                Instant::now() < end && exited.is_none(),
                "no log line {message:?} {fields:?} (exit: {exited:?}); saw {:#?}",
                self.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Tier 4 (the built binary, its stderr captured): 500 failed TLS handshakes of three kinds
/// are all counted, by reason, and logged at most once per reason per interval.
#[tokio::test]
async fn failed_tls_handshakes_are_counted_by_reason_and_logged_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path());
    let config = dir.path().join("turnd.toml");
    std::fs::write(
        &config,
        format!(
            r#"realm = "turnd"
workers = 2
[listen]
tls = ["127.0.0.1:0"]
[tls]
cert = "{cert}"
key = "{key}"
[relay]
ipv4 = "127.0.0.1"
ipv6 = "none"
[auth]
users = ["u:p"]
[streams]
handshake_timeout = "1s"
max_connections_per_ip = 1000
[admin]
listen = "127.0.0.1:0"
token = "streams-test-token-0123456789"
[log]
format = "json"
level = "info"
"#,
            cert = dir.path().join("cert.pem").display(),
            key = dir.path().join("key.pem").display(),
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    let mut bin = Binary::start(&config);
    let tls: SocketAddr = bin.wait_for("listening", &[("transport", "tls")]).await["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let admin: SocketAddr = bin.wait_for("admin API listening", &[]).await["addr"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // 300 clients speak plain STUN to the TLS port (not TLS: "protocol").
    let binding = request(METHOD_BINDING, &[], None);
    for _ in 0..300 {
        let mut s = TcpStream::connect(tls).await.unwrap();
        let _ = s.write_all(&binding.raw).await;
        assert!(closed_by_server(&mut s, Duration::from_secs(3)).await);
    }
    // 190 connect and hang up before saying anything ("closed").
    for _ in 0..190 {
        drop(TcpStream::connect(tls).await.unwrap());
    }
    // 10 say nothing and keep the connection open past handshake_timeout ("timeout").
    let mut silent = vec![];
    for _ in 0..10 {
        silent.push(TcpStream::connect(tls).await.unwrap());
    }
    for s in &mut silent {
        assert!(closed_by_server(s, Duration::from_secs(5)).await);
    }

    let metric = "turnd_tls_handshake_failures_total";
    let token = Some("streams-test-token-0123456789");
    let end = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let (status, body) = http("GET", admin, "/metrics", token).await;
        assert_eq!(status, 200);
        let m = prometheus(&body);
        let total: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with(metric))
            .map(|(_, v)| v)
            .sum();
        if total >= 500.0 || Instant::now() > end {
            assert_eq!(total, 500.0, "failed handshakes counted");
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = t0.elapsed();

    let lines = bin.logged("TLS handshake failed");
    // One line per reason per 10 s interval, at most.
    let per_reason = 1 + elapsed.as_secs() as usize / 10;
    assert!(
        lines.len() <= 3 * per_reason,
        "{} log lines for 500 failed handshakes in {elapsed:?}",
        lines.len()
    );
    for reason in ["protocol", "closed", "timeout"] {
        let n = m
            .get(&format!("{metric}{{reason=\"{reason}\"}}"))
            .copied()
            .unwrap_or_default();
        let want = match reason {
            "protocol" => 300.0,
            "closed" => 190.0,
            _ => 10.0,
        };
        assert_eq!(n, want, "{metric} {reason}");
        let logged = lines.iter().filter(|v| v["reason"] == reason).count();
        assert!(
            (1..=per_reason).contains(&logged),
            "{logged} lines for {reason}"
        );
    }
    // Secrets stay out of the log.
    let all = format!("{:?}", bin.lines.lock().unwrap());
    assert!(!all.contains("streams-test-token"));
}

/// ChannelData padded to 4 bytes, as streams carry it.
fn padded_channel_data(number: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = channel_data(number, payload);
    v.resize((v.len() + 3) & !3, 0);
    v
}

/// A Send indication to `peer` carrying `data`.
fn send_indication(peer: SocketAddr, data: &[u8]) -> Message {
    let mut m = Message::new();
    m.typ = MessageType::new(METHOD_SEND, CLASS_INDICATION);
    m.new_transaction_id().unwrap();
    m.write_header();
    peer_attr(peer).add_to(&mut m).unwrap();
    m.add(ATTR_DATA, data);
    m
}

async fn nothing_arrives(sock: &UdpSocket, within: Duration) -> bool {
    let mut b = vec![0u8; 65_536];
    tokio::time::timeout(within, sock.recv_from(&mut b))
        .await
        .is_err()
}

/// Issue 9 over a real TCP connection: at the limits of the 16-bit STUN and ChannelData
/// lengths, a frame is relayed whole or dropped whole, never truncated, and the stream stays
/// in step (the next frame is read where it begins).
#[tokio::test]
async fn stream_frames_at_the_length_limits_are_whole_or_dropped_never_truncated() {
    let srv = turnd::start(config()).unwrap();
    let addr = *srv.tcp.iter().find(|a| a.is_ipv6()).unwrap();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (relay, nonce) = allocate(&mut s, addr).await;
    assert!(relay.is_ipv6());
    let perm_peer = UdpSocket::bind("[::1]:0").await.unwrap();
    let chan_peer = UdpSocket::bind("[::1]:0").await.unwrap();
    let m = request(
        METHOD_CREATE_PERMISSION,
        &[&peer_attr(perm_peer.local_addr().unwrap())],
        creds(&nonce),
    );
    assert_eq!(ask(&mut s, &m).await.typ.class, CLASS_SUCCESS_RESPONSE);
    channel_to(&mut s, &nonce, chan_peer.local_addr().unwrap()).await;
    // The largest UDP payload over IPv6.
    let big: Vec<u8> = (0..65_527u32).map(|i| (i % 251) as u8).collect();

    // Peer to client without a channel: as a Data indication (20 + 24 + 4 + 65,528 bytes)
    // its STUN length cannot be written in 16 bits: dropped whole; what follows arrives intact.
    perm_peer.send_to(&big, relay).await.unwrap();
    perm_peer.send_to(b"after", relay).await.unwrap();
    let r = parse(&read_frame(&mut s).await);
    assert_eq!(r.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    assert_eq!(r.get(ATTR_DATA).unwrap(), b"after");

    // Through the channel it fits (ChannelData length 65,527, padded to 65,528): whole.
    chan_peer.send_to(&big, relay).await.unwrap();
    let f = read_frame(&mut s).await;
    assert_eq!(f.len(), 4 + 65_528);
    assert_eq!(&f[..4], &[0x40, 0x00, 0xFF, 0xF7]);
    assert_eq!(&f[4..4 + big.len()], &big[..]);

    // Client to peer: the largest ChannelData payload a stream takes reaches the peer whole.
    let mut b = vec![0u8; 65_536];
    s.write_all(&padded_channel_data(0x4000, &big[..65_507]))
        .await
        .unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), chan_peer.recv_from(&mut b))
        .await
        .expect("the largest ChannelData reaches the peer")
        .unwrap();
    assert_eq!(&b[..n], &big[..65_507]);

    // A Send indication whose DATA attribute claims more bytes than its message holds:
    // dropped (nothing reaches the peer), and the stream stays in step.
    let peer = perm_peer.local_addr().unwrap();
    let mut lying = send_indication(peer, &[7u8; 100]).raw;
    // XOR-PEER-ADDRESS (IPv6) takes 4 + 20 bytes; DATA's length field follows its type.
    assert_eq!(&lying[44..46], &ATTR_DATA.value().to_be_bytes());
    lying[46..48].copy_from_slice(&1000u16.to_be_bytes());
    s.write_all(&lying).await.unwrap();
    ask(&mut s, &request(METHOD_BINDING, &[], None)).await;
    assert!(nothing_arrives(&perm_peer, Duration::from_millis(300)).await);
    // A large, well-formed Send right after it arrives whole.
    let send = send_indication(peer, &big[..60_000]);
    s.write_all(&send.raw).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), perm_peer.recv_from(&mut b))
        .await
        .expect("the Send after the dropped one")
        .unwrap();
    assert_eq!(&b[..n], &big[..60_000]);
    assert_eq!(srv.stats().allocations, 1, "the connection is still up");
    srv.stop();
}

#[tokio::test]
async fn a_tls_client_that_stops_reading_is_closed_after_write_timeout() {
    let mut c = config();
    // As over TCP: the queue never fills here, only the write timeout can act.
    c.streams.write_queue_bytes = 64 << 20;
    c.streams.write_timeout = Duration::from_secs(1);
    let srv = turnd::start(c).unwrap();
    let addr = srv.tls[0];
    let chain = srv.certificate.clone().unwrap().chain();
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let mut s = tls_client(&chain).connect(name, tcp).await.unwrap();
    let (relay, nonce) = allocate(&mut s, addr).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    channel_to(&mut s, &nonce, peer.local_addr().unwrap()).await;
    let freed = flood_until_freed(&srv, &peer, relay, 8_000, Duration::from_secs(15)).await;
    let freed = freed.expect("a TLS client that stopped reading is still served");
    eprintln!("TLS write timeout: allocation freed {freed:?} after the flood began");
    let tls_open = |srv: &turnd::Running| -> u64 {
        srv.control
            .metrics()
            .iter()
            .map(|m| m.streams_open[1])
            .sum()
    };
    wait_until("TLS connection closed", || tls_open(&srv) == 0).await;
    srv.stop();
}
