//! RFC 6062 TCP relay allocations (issue 16 items 1 and 3): coturn's `turnutils_uclient -T`
//! (clients pair up; each Connects to the other's relayed TCP address, the other gets a
//! ConnectionAttempt and both ConnectionBind a data connection) over TCP and TLS control
//! connections, with good and bad credentials and with `[relay] tcp` off; and a raw RFC 6062
//! client written here (Connect to a TCP echo peer written here, 446, 403 for a denied peer,
//! ConnectionBind misuse), against turnd in-process on port 0, loopback only.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

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
        let r = self.running();
        let list = match t {
            ClientTransport::Udp => &r.udp,
            ClientTransport::Tcp => &r.tcp,
            ClientTransport::Tls => &r.tls,
        };
        *list.iter().find(|a| a.ip() == ip).expect("a listener")
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
