//! `[relay] coalesce` against a client we did not write: coturn's `turnutils_uclient`, 20
//! clients sending ChannelData back to back (`-z 0`) through turnd to an echo peer. With a
//! 500 µs hold the loop holds above 8,000 datagrams/s (4 per hold), which uclient's rate
//! crosses: turnd must hold (the counter moves) and every message must come back. With
//! "0s" it never holds. uclient's clients send in runs of equal size, so most of what turnd
//! relays leaves in UDP GSO sends (`[relay] gso`): the runs form, and uclient still gets every
//! message back intact.

use std::time::Duration;

use crate::common::*;

const CLIENTS: u32 = 20;
const HOLDS: &str = "turnd_udp_coalesce_holds_total";

/// uclient's report and turnd's counters after the run: holds, datagrams received, and
/// datagrams sent inside GSO sends.
fn run(coalesce: Duration, messages: u32) -> (UclientReport, u64, u64, u64) {
    let mut c = turnd::Config::for_tests();
    c.relay.coalesce = coalesce;
    let running = turnd::start(c).expect("turnd starts");
    let server = listener(&running, ClientTransport::Udp, V4);
    let peer = EchoPeer::start(V4);
    let u = Uclient::new(server)
        .user(USER, PASSWORD)
        .peer(peer.addr())
        .no_rtcp()
        .clients(CLIENTS)
        .messages(messages)
        .length(100)
        .interval_ms(0)
        .timeout(Duration::from_secs(60));
    let r = u.run();
    r.assert_all_relayed(u.expected_messages());
    assert_eq!(
        peer.stats().datagrams,
        u.expected_messages(),
        "datagrams at the peer"
    );
    let holds = metric(&running, HOLDS);
    let received = metric(
        &running,
        "turnd_udp_batch_datagrams_total{call=\"recvmmsg\"}",
    );
    let gso = metric(&running, "turnd_udp_gso_datagrams_total");
    running.stop();
    (r, holds, received, gso)
}

#[test]
fn uclient_at_full_speed_makes_turnd_hold_and_loses_nothing() {
    let (r, holds, received, gso) = run(Duration::from_micros(500), 1000);
    eprintln!(
        "coalesce 500us: {} messages each way, {received} datagrams received, {holds} holds, \
         {gso} sent in GSO runs, rtt avg {:.3} ms",
        r.sent_msgs, r.rtt_avg_ms
    );
    // Each message crosses turnd twice (to the peer and back).
    assert!(received >= 2 * r.sent_msgs, "datagrams received {received}");
    assert!(holds > 0, "uclient at full speed never made the loop hold");
    // 39,768 of 40,280 measured; a quarter leaves room for a machine that reads faster.
    assert!(
        gso >= received / 4,
        "{gso} of {received} datagrams left in GSO sends"
    );
}

#[test]
fn uclient_with_coalesce_off_is_never_held() {
    let (_, holds, _, gso) = run(Duration::ZERO, 300);
    eprintln!("coalesce 0s: {holds} holds, {gso} sent in GSO runs");
    assert_eq!(holds, 0);
}
