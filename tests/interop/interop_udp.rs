//! Tier 3 interop over UDP: clients we did not write (coturn's `turnutils_uclient`, Python
//! `aioice`) against turnd started in-process on port 0, on 127.0.0.1 and ::1.
//!
//! `harness_selftest_coturn` runs a few of the same scenarios against coturn's `turnserver`, so
//! we know the harness detects success, loss and refusal; `harness_parsers` pins the parsers to
//! real uclient output. Needs coturn and `pip install aioice==0.13.*` (scripts/test installs
//! them); a missing tool fails the test with the install hint.

use std::net::{IpAddr, SocketAddr};

use crate::common::*;

/// turnd with `Config::for_tests()`, stopped on drop.
struct Turnd(Option<turnd::Running>);

impl Turnd {
    fn start() -> Turnd {
        let running = turnd::start(turnd::Config::for_tests()).expect("turnd starts");
        Turnd(Some(running))
    }

    fn running(&self) -> &turnd::Running {
        self.0.as_ref().expect("running until dropped")
    }

    /// The UDP listener on `ip` (127.0.0.1 or ::1).
    fn addr(&self, ip: IpAddr) -> SocketAddr {
        listener(self.running(), ClientTransport::Udp, ip)
    }

    /// See [`assert_stats_settle`](crate::common::assert_stats_settle).
    fn assert_stats_settle(&self, want: (usize, usize, usize), why: &str) {
        assert_stats_settle(self.running(), want, why);
    }
}

impl Drop for Turnd {
    fn drop(&mut self) {
        if let Some(running) = self.0.take() {
            running.stop();
        }
    }
}

/// uclient allocates once to probe the server, then once per connection; at the end it sends
/// Refresh(LIFETIME=0) for every allocation but the probe. So after a good run exactly one
/// allocation is left, and it holds no permission and no channel: the others must have been
/// freed together with their permissions and channels.
const AFTER_UCLIENT: (usize, usize, usize) = (1, 0, 0);

fn channels(ip: IpAddr) {
    let turnd = Turnd::start();
    uclient_channels(turnd.addr(ip), 10);
    turnd.assert_stats_settle(AFTER_UCLIENT, "after uclient");
}

#[test]
fn uclient_channels_v4() {
    channels(V4);
}

#[test]
fn uclient_channels_v6() {
    channels(V6);
}

fn send_indications(ip: IpAddr) {
    let turnd = Turnd::start();
    uclient_send_indications(turnd.addr(ip));
    turnd.assert_stats_settle(AFTER_UCLIENT, "after uclient");
}

#[test]
fn uclient_send_indications_v4() {
    send_indications(V4);
}

#[test]
fn uclient_send_indications_v6() {
    send_indications(V6);
}

#[test]
fn uclient_rtp_rtcp_pair_even_port_reservation_token_v4() {
    let turnd = Turnd::start();
    uclient_rtp_rtcp_pair(turnd.addr(V4));
    turnd.assert_stats_settle(AFTER_UCLIENT, "after uclient");
}

fn client_to_client(ip: IpAddr) {
    let turnd = Turnd::start();
    uclient_client_to_client(turnd.addr(ip));
    turnd.assert_stats_settle(AFTER_UCLIENT, "after uclient");
}

#[test]
fn uclient_client_to_client_v4() {
    client_to_client(V4);
}

#[test]
fn uclient_client_to_client_v6() {
    client_to_client(V6);
}

#[test]
fn uclient_ipv6_client_gets_ipv4_relay() {
    let turnd = Turnd::start();
    uclient_ipv6_client_ipv4_relay(turnd.addr(V6));
    turnd.assert_stats_settle(AFTER_UCLIENT, "after uclient");
}

fn rest_secret(ip: IpAddr) {
    let turnd = Turnd::start();
    uclient_rest_secret(turnd.addr(ip));
    turnd.assert_stats_settle(AFTER_UCLIENT, "after uclient");
}

#[test]
fn uclient_rest_secret_computed_by_client_v4() {
    rest_secret(V4);
}

#[test]
fn uclient_rest_secret_computed_by_client_v6() {
    rest_secret(V6);
}

/// REST credentials from turnd's own helpers, cross-checked against the harness's HMAC.
fn rest_precomputed(ip: IpAddr) {
    let expiry = unix_now() + 3600;
    let username = turnd_proto::auth::rest_username(expiry, USER, ':');
    let password = turnd_proto::auth::rest_password(SECRET.as_bytes(), &username);
    assert_eq!(
        (username.clone(), password.clone()),
        rest_credentials(SECRET, USER, expiry)
    );
    let turnd = Turnd::start();
    uclient_with_credentials(turnd.addr(ip), &username, &password);
    turnd.assert_stats_settle(AFTER_UCLIENT, "after uclient");
}

#[test]
fn uclient_rest_precomputed_v4() {
    rest_precomputed(V4);
}

#[test]
fn uclient_rest_precomputed_v6() {
    rest_precomputed(V6);
}

fn refused(ip: IpAddr, user: &str, password: &str) {
    let turnd = Turnd::start();
    uclient_refused(turnd.addr(ip), user, password);
    turnd.assert_stats_settle((0, 0, 0), "a refused client holds nothing");
}

#[test]
fn uclient_wrong_password_refused_v4() {
    refused(V4, USER, "wrong");
}

#[test]
fn uclient_wrong_password_refused_v6() {
    refused(V6, USER, "wrong");
}

#[test]
fn uclient_expired_rest_credentials_refused_v4() {
    let (user, password) = rest_credentials(SECRET, USER, unix_now() - 3600);
    refused(V4, &user, &password);
}

#[test]
fn uclient_expired_rest_credentials_refused_v6() {
    let (user, password) = rest_credentials(SECRET, USER, unix_now() - 3600);
    refused(V6, &user, &password);
}

#[test]
fn uclient_rest_credentials_with_wrong_secret_refused_v4() {
    let (user, password) = rest_credentials("not-the-secret", USER, unix_now() + 3600);
    refused(V4, &user, &password);
}

/// aioice deletes its allocation (Refresh LIFETIME=0) when it closes.
fn aioice(server_ip: IpAddr) {
    let turnd = Turnd::start();
    aioice_relay(turnd.addr(server_ip), V4);
    turnd.assert_stats_settle((0, 0, 0), "aioice's Refresh(0) frees its allocation");
}

#[test]
fn aioice_relays_4000_byte_datagrams_v4() {
    aioice(V4);
}

/// aioice over IPv6 gets an IPv4 relay (it never asks for another family).
#[test]
fn aioice_relays_4000_byte_datagrams_over_v6_transport() {
    aioice(V6);
}

#[test]
fn aioice_wrong_password_fails() {
    let turnd = Turnd::start();
    let peer = EchoPeer::start(V4);
    let err = run_aioice(V4, turnd.addr(V4).port(), USER, "wrong", peer.addr())
        .expect_err("a wrong password must not allocate");
    assert!(
        format!("{err:#}").contains("401"),
        "expected a 401: {err:#}"
    );
    assert_eq!(peer.stats(), EchoStats::default());
    turnd.assert_stats_settle((0, 0, 0), "a refused client holds nothing");
}

/// The same harness against coturn's turnserver (the reference server): proves the helpers
/// see success, and see loss and refusal when they happen. Few and fast on purpose.
mod harness_selftest_coturn {
    use crate::common::*;
    use std::time::Duration;

    #[test]
    fn uclient_channels_v4_and_v6() {
        let coturn = Coturn::start();
        uclient_channels(coturn.v4(), 5);
        uclient_channels(coturn.v6(), 5);
    }

    /// A peer that never answers: uclient still exits 0, so only the counters show the loss.
    #[test]
    fn uclient_total_loss_is_detected() {
        let coturn = Coturn::start();
        let peer = EchoPeer::start_mute(V4);
        let u = Uclient::new(coturn.v4())
            .user(USER, PASSWORD)
            .peer(peer.addr())
            .no_rtcp()
            .messages(3)
            .timeout(Duration::from_secs(40));
        let r = u.run();
        let ctx = r.context();
        assert!(r.summary && !r.timed_out, "{ctx}");
        assert_eq!(
            r.exit_code,
            Some(0),
            "uclient exits 0 despite total loss\n{ctx}"
        );
        assert_eq!((r.sent_msgs, r.recv_msgs, r.lost), (3, 0, 3), "{ctx}");
        assert_eq!(
            peer.stats().datagrams,
            3,
            "the datagrams did reach the (mute) peer"
        );
        let caught = std::panic::catch_unwind(|| r.assert_all_relayed(u.expected_messages()));
        assert!(
            caught.is_err(),
            "assert_all_relayed must reject a run that lost everything"
        );
    }

    #[test]
    fn uclient_wrong_password_is_refused() {
        let coturn = Coturn::start();
        uclient_refused(coturn.v4(), USER, "wrong");
    }

    #[test]
    fn uclient_rest_secret_precomputed_and_expired() {
        let coturn = Coturn::start_rest();
        uclient_rest_secret(coturn.v4());
        let (user, password) = rest_credentials(SECRET, USER, unix_now() + 3600);
        uclient_with_credentials(coturn.v6(), &user, &password);
        let (user, password) = rest_credentials(SECRET, USER, unix_now() - 3600);
        uclient_refused(coturn.v4(), &user, &password);
    }

    #[test]
    fn aioice_relays_and_detects_refusal() {
        let coturn = Coturn::start();
        aioice_relay(coturn.v4(), V4);
        aioice_relay(coturn.v6(), V4);
        let peer = EchoPeer::start(V4);
        let err = run_aioice(V4, coturn.port, USER, "wrong", peer.addr()).expect_err("refused");
        assert!(format!("{err:#}").contains("401"), "{err:#}");
    }
}

/// The parsers against real output of coturn 4.6.1's tools.
mod harness_parsers {
    use crate::common::*;

    const UCLIENT_OK: &str = "\
0: : IPv6. Received relay addr: ::1:40261
0: : success: 0x561f
5: : start_mclient: msz=2, tot_send_msgs=16, tot_recv_msgs=16, tot_send_bytes ~ 1600, tot_recv_bytes ~ 1600
6: : start_mclient: tot_send_msgs=20, tot_recv_msgs=19
6: : start_mclient: tot_send_bytes ~ 2000, tot_recv_bytes ~ 1900
6: : Total lost packets 1 (5.000000%), total send dropped 0 (0.000000%)
6: : Average round trip delay 0.350000 ms; min = 0 ms, max = 2 ms
6: : Average jitter 0.400000 ms; min = 0 ms, max = 1 ms
";

    #[test]
    fn uclient_summary() {
        let r = UclientReport::parse(UCLIENT_OK);
        assert!(r.summary);
        assert_eq!(
            (r.sent_msgs, r.recv_msgs, r.sent_bytes, r.recv_bytes),
            (20, 19, 2000, 1900)
        );
        assert_eq!((r.lost, r.send_dropped, r.rtt_max_ms), (1, 0, 2));
        assert!((r.rtt_avg_ms - 0.35).abs() < 1e-9);
        assert_eq!(r.relay_addrs, vec!["[::1]:40261".parse().unwrap()]);
        assert_eq!(r.channels, vec![0x561f]);
        assert!(r.errors.is_empty() && !r.allocation_failed);
        assert!(
            std::panic::catch_unwind(|| r.assert_all_relayed(20)).is_err(),
            "1 lost"
        );
    }

    #[test]
    fn uclient_refusal() {
        // A wrong password: 32 Allocates, each answered 401, then uclient gives up (exit 255).
        let out = "0: : allocate sent\n0: : allocate response received: \n".repeat(32)
            + "0: : ERROR: Cannot complete Allocation\n";
        let r = UclientReport::parse(&out);
        assert!(r.allocation_failed && !r.summary);
        assert_eq!(r.errors, vec!["0: : ERROR: Cannot complete Allocation"]);
    }

    #[test]
    fn aioice_json_line() {
        let j = parse_flat_json(
            r#"{"ok": true, "relayed": "[::1]:40554", "sent": 3, "error": "a \"b\", c"}"#,
        );
        assert_eq!(j["ok"], "true");
        assert_eq!(j["relayed"], "[::1]:40554");
        assert_eq!(j["sent"], "3");
        assert_eq!(j["error"], "a \"b\", c");
    }
}
