//! TURN over DTLS (`listen.dtls`) with a client we did not write: coturn's
//! `turnutils_uclient -S` (DTLS over UDP to the server, OpenSSL; 4.6.1 does not verify the
//! certificate) against turnd started in-process on port 0, on 127.0.0.1 and ::1, with the
//! development profile's self-signed ECDSA certificate. Channels (ChannelData) and Send/Data
//! indications, each relayed to an echo peer and back, every message counted. And the other
//! way round: turnctl's DTLS load generator (dimpl) against coturn's DTLS server.

use std::net::{IpAddr, SocketAddr};

use crate::common::*;

/// turnd with DTLS listeners on 127.0.0.1 and ::1 (port 0), stopped on drop.
struct Turnd(Option<turnd::Running>);

impl Turnd {
    fn start() -> Turnd {
        let mut config = turnd::Config::for_tests();
        config.listen.dtls = vec![SocketAddr::from((V4, 0)), SocketAddr::from((V6, 0))];
        Turnd(Some(turnd::start(config).expect("turnd starts")))
    }

    fn running(&self) -> &turnd::Running {
        self.0.as_ref().expect("running until dropped")
    }

    fn addr(&self, ip: IpAddr) -> SocketAddr {
        let r = self.running();
        *r.dtls
            .iter()
            .find(|a| a.ip() == ip)
            .unwrap_or_else(|| panic!("no DTLS listener on {ip}: {:?}", r.dtls))
    }

    /// DTLS sessions established, summed over the shards.
    fn established(&self) -> u64 {
        let m = self.running().control.metrics();
        m.iter().map(|s| s.dtls.established).sum()
    }
}

/// Everything relayed, and the only uclient errors are the DTLS 1.0 handshakes turnd refused:
/// uclient picks a DTLS method at random per connection (any version, DTLS 1.0 only, DTLS 1.2
/// only) and reconnects when the handshake fails; turnd speaks DTLS 1.2 only and answers a
/// DTLS 1.0 ClientHello with a protocol_version alert.
fn assert_all_relayed_dtls(r: &UclientReport, expected_msgs: u64) {
    let ctx = r.context();
    assert!(!r.timed_out, "uclient timed out\n{ctx}");
    assert!(r.summary, "uclient printed no summary counters\n{ctx}");
    assert_eq!(r.sent_msgs, expected_msgs, "messages sent\n{ctx}");
    assert_eq!(r.recv_msgs, r.sent_msgs, "messages received back\n{ctx}");
    assert!(r.sent_bytes > 0, "bytes sent\n{ctx}");
    assert_eq!(r.recv_bytes, r.sent_bytes, "bytes received back\n{ctx}");
    assert_eq!(r.lost, 0, "lost packets\n{ctx}");
    assert_eq!(r.send_dropped, 0, "send dropped\n{ctx}");
    let unexpected: Vec<&String> = r
        .errors
        .iter()
        .filter(|e| !e.contains("alert protocol version"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "uclient errors: {unexpected:?}\n{ctx}"
    );
    assert_eq!(r.exit_code, Some(0), "uclient exit status\n{ctx}");
}

impl Drop for Turnd {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.stop();
        }
    }
}

fn channels(ip: IpAddr) {
    let turnd = Turnd::start();
    let server = turnd.addr(ip);
    let peer = EchoPeer::start(ip);
    let u = Uclient::new(server)
        .dtls()
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .no_rtcp()
        .messages(10)
        .length(200);
    let r = u.run();
    assert_all_relayed_dtls(&r, u.expected_messages());
    assert_relays(&r, ip, 2);
    assert_eq!(
        r.channels.len(),
        4,
        "ChannelBind successes\n{}",
        r.context()
    );
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    // uclient makes one DTLS association per allocation; all of them went through turnd's
    // DTLS sessions (the UDP listeners are other ports).
    assert!(
        turnd.established() >= 2,
        "DTLS sessions established: {}\n{}",
        turnd.established(),
        r.context()
    );
}

#[test]
fn uclient_dtls_channels_v4() {
    channels(V4);
}

#[test]
fn uclient_dtls_channels_v6() {
    channels(V6);
}

#[test]
fn uclient_dtls_send_indications_v4() {
    let turnd = Turnd::start();
    let server = turnd.addr(V4);
    let peer = EchoPeer::start(V4);
    let u = Uclient::new(server)
        .dtls()
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .no_rtcp()
        .send_indications()
        .messages(10)
        .length(300);
    let r = u.run();
    assert_all_relayed_dtls(&r, u.expected_messages());
    assert_relays(&r, V4, 2);
    assert!(
        r.channels.is_empty(),
        "no ChannelBind with -s\n{}",
        r.context()
    );
    assert_peer_saw(&peer, u.expected_messages(), r.relay_addrs[1]);
    assert!(turnd.established() >= 2, "DTLS sessions established");
}

/// `turnctl load --dtls` against coturn (OpenSSL's DTLS server): handshakes with turnctl's
/// dimpl client, long-term credentials, ChannelBind, and pre-encrypted ChannelData that
/// coturn decrypts and relays to turnctl's peers.
#[test]
fn turnctl_load_dtls_against_coturn() {
    let cert = TestCert::generate(&["127.0.0.1"]);
    let coturn = Coturn::start_streams_dtls(&cert);
    let server = format!("turn:{}", coturn.tls_addr(V4));
    let out = std::process::Command::new(turnctl_bin())
        .args(["load", "--dtls", "--server", &server, "--ca"])
        .arg(&cert.cert)
        .args([
            "--user",
            USER,
            "--password",
            PASSWORD,
            "-n",
            "2",
            "--rate",
            "500",
        ])
        .args(["--duration", "2s", "--dtls-mib", "1", "--json", "--quiet"])
        .env_remove("TURNCTL_SECRET")
        .env_remove("TURNCTL_PASSWORD")
        .env_remove("TURNCTL_USER")
        .output()
        .expect("run turnctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "turnctl load --dtls against coturn: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_str(&text).expect("one JSON report");
    assert_eq!(j["allocations"]["usable"], 2, "{j}");
    let (sent, at_peer) = (
        j["packets"]["sent"].as_u64().unwrap(),
        j["packets"]["at_peer"].as_u64().unwrap(),
    );
    assert!(at_peer > 0 && at_peer <= sent, "{j}");
    assert_eq!(j["packets"]["wrong_size"], 0, "{j}");
}
