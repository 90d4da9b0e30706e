//! RFC 6062 TCP relay allocations (issue 16 items 1 and 3): coturn's `turnutils_uclient -T`
//! (clients pair up; each Connects to the other's relayed TCP address, the other gets a
//! ConnectionAttempt and both ConnectionBind a data connection) over TCP and TLS control
//! connections, with good and bad credentials and with `[relay] tcp` off; and a raw RFC 6062
//! client written here (Connect to a TCP echo peer written here, 446, 403 for a denied peer,
//! ConnectionBind misuse), against turnd in-process on port 0, loopback only.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::common::*;

use ClientTransport::{Tcp, Tls};

struct Turnd {
    running: Option<turnd::Running>,
    _cert: TestCert,
}

impl Turnd {
    fn start(tcp_relay: bool, tweak: impl FnOnce(&mut turnd::Config)) -> Turnd {
        let cert = TestCert::loopback();
        let mut config = turnd::Config::for_tests();
        config.tls = Some(turnd::config::TlsFiles {
            cert: cert.cert.clone(),
            key: cert.key.clone(),
        });
        config.relay.tcp = tcp_relay;
        tweak(&mut config);
        let running = turnd::start(config).expect("turnd starts");
        Turnd {
            running: Some(running),
            _cert: cert,
        }
    }

    fn running(&self) -> &turnd::Running {
        self.running.as_ref().expect("running until dropped")
    }

    fn addr(&self, t: ClientTransport, ip: IpAddr) -> SocketAddr {
        listener(self.running(), t, ip)
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
// turnutils_uclient -T
// ---------------------------------------------------------------------------------------------

fn uclient_tcp_relay(t: ClientTransport, ip: IpAddr) {
    let turnd = Turnd::start(true, |_| {});
    let mut u = Uclient::new(turnd.addr(t, ip))
        .transport(t)
        .tcp_relay()
        .user(USER, PASSWORD)
        .messages(20)
        .length(300);
    if ip.is_ipv6() {
        u = u.ipv6_relay();
    }
    let r = u.run();
    let ctx = r.context();
    match t {
        Tls => {
            r.assert_all_relayed_tls(u.expected_messages());
            // Control connections (the probe's and one per client) and two data connections.
            assert_eq!(r.tls_sessions.len(), 5, "TLS connections\n{ctx}");
        }
        _ => {
            r.assert_all_relayed(u.expected_messages());
            assert!(r.tls_sessions.is_empty(), "no TLS expected\n{ctx}");
        }
    }
    // uclient's probe allocation, then one per client of the pair.
    assert_relays(&r, ip, 3);
    assert_stats_settle(
        turnd.running(),
        (0, 0, 0),
        "closing uclient's connections frees the TCP allocations",
    );
}

#[test]
fn uclient_tcp_relay_over_tcp_v4() {
    uclient_tcp_relay(Tcp, V4);
}

#[test]
fn uclient_tcp_relay_over_tls_v4() {
    uclient_tcp_relay(Tls, V4);
}

#[test]
fn uclient_tcp_relay_over_tcp_v6() {
    uclient_tcp_relay(Tcp, V6);
}

fn uclient_tcp_relay_refused(t: ClientTransport, tcp_relay: bool, password: &str) {
    let turnd = Turnd::start(tcp_relay, |_| {});
    let r = Uclient::new(turnd.addr(t, V4))
        .transport(t)
        .tcp_relay()
        .user(USER, password)
        .messages(5)
        .timeout(Duration::from_secs(20))
        .run();
    if tcp_relay {
        r.assert_refused();
    } else {
        let ctx = r.context();
        assert!(!r.timed_out, "timed out\n{ctx}");
        assert!(r.output.contains("error 442"), "442 expected\n{ctx}");
        assert!(r.relay_addrs.is_empty(), "no relay\n{ctx}");
        assert_ne!(r.exit_code, Some(0), "uclient exit status\n{ctx}");
    }
    assert_stats_settle(turnd.running(), (0, 0, 0), "a refused client holds nothing");
}

#[test]
fn uclient_tcp_relay_wrong_password_refused_over_tcp() {
    uclient_tcp_relay_refused(Tcp, true, "wrong");
}

#[test]
fn uclient_tcp_relay_wrong_password_refused_over_tls() {
    uclient_tcp_relay_refused(Tls, true, "wrong");
}

#[test]
fn uclient_tcp_relay_refused_when_off_by_default() {
    assert!(
        !turnd::Config::for_tests().relay.tcp,
        "[relay] tcp defaults to false"
    );
    uclient_tcp_relay_refused(Tcp, false, PASSWORD);
}

// ---------------------------------------------------------------------------------------------
// A raw RFC 6062 client and a TCP echo peer, written here
// ---------------------------------------------------------------------------------------------

use stun::attributes::*;
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP echo peer on 127.0.0.1: echoes every connection byte for byte on its own thread,
/// and records where each connection came from. Bounded: at most 16 connections.
struct TcpEchoPeer {
    addr: SocketAddr,
    from: std::sync::mpsc::Receiver<SocketAddr>,
}

impl TcpEchoPeer {
    fn start() -> TcpEchoPeer {
        let l = TcpListener::bind((V4, 0)).expect("bind echo peer");
        let addr = l.local_addr().unwrap();
        let (tx, from) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming().take(16) {
                let Ok(mut s) = s else { continue };
                let _ = tx.send(s.peer_addr().unwrap());
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        TcpEchoPeer { addr, from }
    }

    /// The source address of the next connection the peer accepted.
    fn next_connection_from(&self) -> SocketAddr {
        self.from
            .recv_timeout(IO_TIMEOUT)
            .expect("a connection at the echo peer")
    }
}

/// One STUN-over-TCP connection to turnd with the dev credentials.
struct Stun {
    s: TcpStream,
    realm: String,
    nonce: Option<String>,
}

impl Stun {
    fn connect(server: SocketAddr) -> Stun {
        let s = TcpStream::connect(server).expect("connect to turnd");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        Stun {
            s,
            realm: String::new(),
            nonce: None,
        }
    }

    fn read_msg(&mut self) -> Message {
        let mut hdr = [0u8; 20];
        self.s.read_exact(&mut hdr).expect("a STUN header");
        let len = usize::from(u16::from_be_bytes([hdr[2], hdr[3]]));
        let mut raw = hdr.to_vec();
        raw.resize(20 + len, 0);
        self.s.read_exact(&mut raw[20..]).expect("a STUN body");
        let mut m = Message::new();
        m.unmarshal_binary(&raw).expect("a STUN message");
        m
    }

    /// Send a request (authenticated once a nonce is known; a 401 is answered once with
    /// credentials) and return the answer.
    fn request(
        &mut self,
        method: Method,
        attrs: &[(AttrType, Vec<u8>)],
        peer: Option<SocketAddr>,
    ) -> Message {
        for _ in 0..2 {
            let mut m = Message::new();
            m.typ = MessageType::new(method, CLASS_REQUEST);
            m.new_transaction_id().unwrap();
            m.write_header();
            for (t, v) in attrs {
                m.add(*t, v);
            }
            if let Some(p) = peer {
                XorMappedAddress {
                    ip: p.ip(),
                    port: p.port(),
                }
                .add_to_as(&mut m, ATTR_XOR_PEER_ADDRESS)
                .unwrap();
            }
            if let Some(nonce) = self.nonce.clone() {
                for (t, v) in [
                    (ATTR_USERNAME, USER),
                    (ATTR_REALM, &self.realm),
                    (ATTR_NONCE, &nonce),
                ] {
                    TextAttribute::new(t, v.to_string()).add_to(&mut m).unwrap();
                }
                MessageIntegrity::new_long_term_integrity(
                    USER.into(),
                    self.realm.clone(),
                    PASSWORD.into(),
                )
                .add_to(&mut m)
                .unwrap();
            }
            self.s.write_all(&m.raw).expect("send");
            let answer = self.read_msg();
            if code(&answer) == Some(401) && self.nonce.is_none() {
                let text = |t| TextAttribute::get_from_as(&answer, t).unwrap().text;
                self.realm = text(ATTR_REALM);
                self.nonce = Some(text(ATTR_NONCE));
                continue;
            }
            return answer;
        }
        panic!("401 twice");
    }

    fn allocate_tcp(&mut self) -> SocketAddr {
        let a = self.request(
            METHOD_ALLOCATE,
            &[(ATTR_REQUESTED_TRANSPORT, vec![6, 0, 0, 0])],
            None,
        );
        assert_eq!(
            a.typ.class,
            CLASS_SUCCESS_RESPONSE,
            "TCP Allocate: {:?}",
            code(&a)
        );
        let mut x = XorMappedAddress::default();
        x.get_from_as(&a, ATTR_XOR_RELAYED_ADDRESS).unwrap();
        SocketAddr::new(x.ip, x.port)
    }

    /// Connect to `peer`: the CONNECTION-ID, or the error code.
    fn connect_peer(&mut self, peer: SocketAddr) -> Result<u32, u16> {
        let a = self.request(METHOD_CONNECT, &[], Some(peer));
        match code(&a) {
            Some(c) => Err(c),
            None => Ok(connection_id(&a)),
        }
    }

    /// ConnectionBind `id` on this connection: the error code, if any.
    fn connection_bind(&mut self, id: u32) -> Option<u16> {
        let a = self.request(
            METHOD_CONNECTION_BIND,
            &[(ATTR_CONNECTION_ID, id.to_be_bytes().to_vec())],
            None,
        );
        code(&a)
    }
}

fn code(m: &Message) -> Option<u16> {
    let mut ec = ErrorCodeAttribute::default();
    ec.get_from(m).ok().map(|_| ec.code.0)
}

fn connection_id(m: &Message) -> u32 {
    let v = m.get(ATTR_CONNECTION_ID).expect("CONNECTION-ID");
    u32::from_be_bytes(v[..4].try_into().unwrap())
}

/// Write `n` bytes in chunks and read them back through the relay, byte for byte.
fn echo_through(data: &mut TcpStream, n: usize) {
    data.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let sent: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
    let mut writer = data.try_clone().unwrap();
    let copy = sent.clone();
    let w = std::thread::spawn(move || writer.write_all(&copy).unwrap());
    let mut got = vec![0u8; n];
    data.read_exact(&mut got).expect("the echo");
    w.join().unwrap();
    assert!(got == sent, "bytes came back changed");
}

#[test]
fn raw_connect_to_tcp_echo_peer_relays_bytes_from_the_relayed_address() {
    let turnd = Turnd::start(true, |_| {});
    let server = turnd.addr(Tcp, V4);
    let peer = TcpEchoPeer::start();
    let mut control = Stun::connect(server);
    let relayed = control.allocate_tcp();
    let id = control.connect_peer(peer.addr).expect("Connect succeeds");
    assert_eq!(
        peer.next_connection_from(),
        relayed,
        "the peer sees the relayed transport address (RFC 6062 §5.2)"
    );
    assert_eq!(
        control.connect_peer(peer.addr),
        Err(446),
        "a second Connect to the same peer: Connection Already Exists"
    );
    assert_eq!(
        control.connection_bind(id),
        Some(400),
        "ConnectionBind on the control connection"
    );
    let mut data = Stun::connect(server);
    data.nonce = control.nonce.clone();
    data.realm = control.realm.clone();
    assert_eq!(
        data.connection_bind(id ^ 1),
        Some(400),
        "unknown CONNECTION-ID"
    );
    let mut data = Stun::connect(server);
    data.nonce = control.nonce.clone();
    data.realm = control.realm.clone();
    assert_eq!(data.connection_bind(id), None, "ConnectionBind succeeds");
    echo_through(&mut data.s, 1 << 20);
    let mut again = Stun::connect(server);
    again.nonce = control.nonce.clone();
    again.realm = control.realm.clone();
    assert_eq!(again.connection_bind(id), Some(400), "already bound");
    drop(control);
    // The allocation ends with its control connection, and its data connection with it.
    let mut rest = Vec::new();
    let n = data.s.read_to_end(&mut rest);
    assert!(matches!(n, Ok(0) | Err(_)), "data connection closed: {n:?}");
    assert_stats_settle(turnd.running(), (0, 0, 0), "everything freed");
}

#[test]
fn raw_connect_to_denied_peers_gets_403() {
    let turnd = Turnd::start(true, |c| {
        c.policy.allow_peers.clear();
    });
    let server = turnd.addr(Tcp, V4);
    let peer = TcpEchoPeer::start();
    let mut control = Stun::connect(server);
    control.allocate_tcp();
    // Loopback without the development profile's allowance, and the server's own listener
    // (the policy bypass of pion/turn#570 would reach it).
    assert_eq!(control.connect_peer(peer.addr), Err(403), "a denied peer");
    assert_eq!(
        control.connect_peer(server),
        Err(403),
        "turnd's own listener"
    );
    assert!(
        peer.from.recv_timeout(Duration::from_millis(300)).is_err(),
        "the denied peer saw no connection"
    );
}

#[test]
fn raw_inbound_peer_connection_needs_a_permission_then_gets_a_connection_attempt() {
    let turnd = Turnd::start(true, |_| {});
    let server = turnd.addr(Tcp, V4);
    let mut control = Stun::connect(server);
    let relayed = control.allocate_tcp();
    // No permission: the connection is closed and the client hears nothing.
    let mut early = TcpStream::connect(relayed).expect("the relay listens");
    early.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut b = [0u8; 1];
    assert!(
        matches!(early.read(&mut b), Ok(0) | Err(_)),
        "a peer without permission is closed"
    );
    let perm = control.request(METHOD_CREATE_PERMISSION, &[], Some(SocketAddr::new(V4, 9)));
    assert_eq!(code(&perm), None, "CreatePermission for 127.0.0.1");
    let mut inbound = TcpStream::connect(relayed).expect("the relay listens");
    let attempt = control.read_msg();
    assert_eq!(
        attempt.typ,
        MessageType::new(METHOD_CONNECTION_ATTEMPT, CLASS_INDICATION)
    );
    let mut x = XorMappedAddress::default();
    x.get_from_as(&attempt, ATTR_XOR_PEER_ADDRESS).unwrap();
    assert_eq!(SocketAddr::new(x.ip, x.port), inbound.local_addr().unwrap());
    let id = connection_id(&attempt);
    let mut data = Stun::connect(server);
    data.nonce = control.nonce.clone();
    data.realm = control.realm.clone();
    assert_eq!(data.connection_bind(id), None, "ConnectionBind succeeds");
    // Peer -> client and client -> peer.
    inbound.write_all(b"from the peer").unwrap();
    let mut got = [0u8; 13];
    data.s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from the peer");
    data.s.write_all(b"from the client").unwrap();
    inbound.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = [0u8; 15];
    inbound.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from the client");
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Back-pressure: a peer that stops reading stops the client's writes (TCP flow control
/// through turnd's bounded splice buffers) instead of growing turnd's memory; once it reads
/// again every byte arrives, in order.
#[test]
fn raw_a_peer_that_stops_reading_pushes_back_on_the_client() {
    let turnd = Turnd::start(true, |_| {});
    let server = turnd.addr(Tcp, V4);
    let l = TcpListener::bind((V4, 0)).unwrap();
    let peer = l.local_addr().unwrap();
    let mut control = Stun::connect(server);
    control.allocate_tcp();
    let id = control.connect_peer(peer).expect("Connect succeeds");
    let (mut slow, _) = l.accept().unwrap();
    let mut data = Stun::connect(server);
    data.nonce = control.nonce.clone();
    data.realm = control.realm.clone();
    assert_eq!(data.connection_bind(id), None);
    let rss_before = rss_kib();
    data.s
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut written = 0usize;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        // Continue the pattern where the last (possibly partial) write stopped.
        match data.s.write(&chunk[written % chunk.len()..]) {
            Ok(n) => written += n,
            Err(_) => break, // the write timed out: pushed back
        }
        assert!(
            written < 64 << 20,
            "64 MiB accepted while the peer reads nothing"
        );
    }
    let rss_growth = rss_kib().saturating_sub(rss_before);
    eprintln!("accepted {written} bytes before back-pressure; RSS +{rss_growth} KiB");
    assert!(written > 0, "some bytes were accepted");
    assert!(
        rss_growth < 16 * 1024,
        "memory grew by {rss_growth} KiB for {written} bytes queued"
    );
    // The peer reads again: every byte arrives, unchanged and in order.
    slow.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = vec![0u8; written];
    slow.read_exact(&mut got)
        .expect("everything written arrives");
    for (i, b) in got.iter().enumerate() {
        assert_eq!(*b, chunk[i % chunk.len()], "byte {i}");
    }
}

/// Back-pressure the other way: a client that stops reading its data connection stops the
/// peer's writes.
#[test]
fn raw_a_client_that_stops_reading_pushes_back_on_the_peer() {
    let turnd = Turnd::start(true, |_| {});
    let server = turnd.addr(Tcp, V4);
    let l = TcpListener::bind((V4, 0)).unwrap();
    let peer = l.local_addr().unwrap();
    let mut control = Stun::connect(server);
    control.allocate_tcp();
    let id = control.connect_peer(peer).expect("Connect succeeds");
    let (slow, _) = l.accept().unwrap();
    let mut data = Stun::connect(server);
    data.nonce = control.nonce.clone();
    data.realm = control.realm.clone();
    assert_eq!(data.connection_bind(id), None);
    let rss_before = rss_kib();
    let (mut writer, mut reader) = (slow, data.s);
    writer
        .set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut written = 0usize;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        // Continue the pattern where the last (possibly partial) write stopped.
        match writer.write(&chunk[written % chunk.len()..]) {
            Ok(n) => written += n,
            Err(_) => break, // the write timed out: pushed back
        }
        assert!(
            written < 64 << 20,
            "64 MiB accepted while the client reads nothing"
        );
    }
    let rss_growth = rss_kib().saturating_sub(rss_before);
    eprintln!("accepted {written} bytes before back-pressure; RSS +{rss_growth} KiB");
    assert!(written > 0, "some bytes were accepted");
    assert!(
        rss_growth < 16 * 1024,
        "memory grew by {rss_growth} KiB for {written} bytes queued"
    );
    // The client reads again: every byte arrives, unchanged and in order.
    reader.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = vec![0u8; written];
    reader
        .read_exact(&mut got)
        .expect("everything written arrives");
    for (i, b) in got.iter().enumerate() {
        assert_eq!(*b, chunk[i % chunk.len()], "byte {i}");
    }
}

/// Eight allocations on two shards, each with a data connection: the kernel puts control and
/// data connections on shards independently (SO_REUSEPORT), so most runs bind some
/// connections across shards (the CONNECTION-ID's shard hands the peer socket over); every
/// one must relay, and everything must be freed afterwards.
#[test]
fn raw_connection_binds_work_whichever_shard_the_data_connection_lands_on() {
    let turnd = Turnd::start(true, |c| c.workers = 2);
    let server = turnd.addr(Tcp, V4);
    let peer = TcpEchoPeer::start();
    let mut shards = std::collections::BTreeSet::new();
    let mut pairs = Vec::new();
    for _ in 0..8 {
        let mut control = Stun::connect(server);
        control.allocate_tcp();
        let id = control.connect_peer(peer.addr).expect("Connect succeeds");
        shards.insert(id >> (32 - turnd_proto::engine::SHARD_BITS));
        let mut data = Stun::connect(server);
        data.nonce = control.nonce.clone();
        data.realm = control.realm.clone();
        assert_eq!(data.connection_bind(id), None, "ConnectionBind succeeds");
        echo_through(&mut data.s, 64 * 1024);
        pairs.push((control, data));
    }
    assert!(shards.len() == 2 || shards.len() == 1, "{shards:?}");
    drop(pairs);
    assert_stats_settle(turnd.running(), (0, 0, 0), "everything freed");
}

/// `turnd_tcp_relay_connections` (RFC 6062 peer data connections open), rendered as
/// `/metrics` renders it.
fn tcp_relay_connections(r: &turnd::Running) -> Option<f64> {
    let text = turnd::admin::metrics::render(
        &r.control.metrics(),
        &turnd::admin::metrics::ProcessMetrics::read(&r.control),
    );
    text.lines()
        .find_map(|l| l.strip_prefix("turnd_tcp_relay_connections "))
        .and_then(|v| v.trim().parse().ok())
}

/// Wait up to 5 s for the gauge to read `want`.
fn gauge_settles(r: &turnd::Running, want: f64, why: &str) {
    let end = std::time::Instant::now() + Duration::from_secs(5);
    let mut last = tcp_relay_connections(r);
    while last != Some(want) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        last = tcp_relay_connections(r);
    }
    assert_eq!(last, Some(want), "turnd_tcp_relay_connections: {why}");
}

/// The gauge counts a peer connection from its Connect until it closes: waiting for its
/// ConnectionBind, spliced, then gone with its allocation.
#[test]
fn raw_tcp_relay_connections_gauge_moves_up_and_down() {
    let turnd = Turnd::start(true, |_| {});
    let r = turnd.running();
    let server = turnd.addr(Tcp, V4);
    let peer = TcpEchoPeer::start();
    gauge_settles(r, 0.0, "none before");
    let mut control = Stun::connect(server);
    control.allocate_tcp();
    let id = control.connect_peer(peer.addr).expect("Connect succeeds");
    gauge_settles(r, 1.0, "connected, waiting for ConnectionBind");
    let mut data = Stun::connect(server);
    data.nonce = control.nonce.clone();
    data.realm = control.realm.clone();
    assert_eq!(data.connection_bind(id), None, "ConnectionBind succeeds");
    echo_through(&mut data.s, 4096);
    gauge_settles(r, 1.0, "spliced");
    drop(control);
    let mut rest = Vec::new();
    let _ = data.s.read_to_end(&mut rest);
    gauge_settles(r, 0.0, "closed with its allocation");
}
