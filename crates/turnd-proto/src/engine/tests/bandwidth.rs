//! `[policy] max_bps_per_allocation` through the engine: ChannelData and Send to the peer,
//! ChannelData and Data indications to the client, each direction with its own bucket,
//! drops counted, the cap taken on reload, 0 unlimited.

use super::*;

/// Set the cap the way the daemon does: on the shared quotas, then a reload.
fn set_cap(t: &mut T, bps: u64) {
    t.e.shared.quotas.set_max_bps_per_allocation(bps);
    let shared = t.e.shared.clone();
    t.e.set_shared(shared);
}

/// An allocation with a channel 0x4000 to peer(2) and a permission for peer(1)'s IP.
fn with_channel(t: &mut T, c: ClientAddr) -> (SocketAddr, String) {
    let (relay, nonce) = t.allocate(c);
    let r = t.authed(
        c,
        &nonce,
        Req::new(METHOD_CHANNEL_BIND).channel(0x4000).peer(peer(2)),
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&r));
    (relay, nonce)
}

/// How many of `n` ChannelData of 1000 bytes go to the peer now.
fn to_peer(t: &mut T, c: ClientAddr, n: usize) -> usize {
    let cd = channel_data(0x4000, &[7; 1000]);
    (0..n).filter(|_| t.send(c, &cd).is_some()).count()
}

/// How many of `n` datagrams of 1000 bytes from peer(2) go to the client now.
fn to_client(t: &mut T, c: ClientAddr, relay: SocketAddr, n: usize) -> usize {
    (0..n)
        .filter(|_| from_peer(t, c, relay, peer(2), &[9; 1000]).is_some())
        .count()
}

#[test]
fn cap_zero_relays_everything() {
    let mut t = engine();
    let c = client(1);
    let (relay, _) = with_channel(&mut t, c);
    assert_eq!(to_peer(&mut t, c, 5000), 5000);
    assert_eq!(to_client(&mut t, c, relay, 5000), 5000);
    assert_eq!(t.e.metrics_snapshot().counters.bandwidth_dropped, [0, 0]);
}

#[test]
fn channel_data_to_the_peer_gets_the_burst_then_the_rate_and_drops_are_counted() {
    let mut t = engine();
    set_cap(&mut t, 800_000); // 100 kB/s: burst 25 000 bytes
    let c = client(1);
    let (relay, _) = with_channel(&mut t, c);
    assert_eq!(to_peer(&mut t, c, 100), 25);
    t.now += Duration::from_millis(100);
    assert_eq!(to_peer(&mut t, c, 100), 10);
    let s = t.e.metrics_snapshot();
    assert_eq!(s.counters.bandwidth_dropped, [90 + 75, 0]);
    assert_eq!(
        s.traffic.bytes_to_peer[0], 35_000,
        "only what was relayed is counted as relayed"
    );
    // The other direction has its own bucket, untouched so far.
    assert_eq!(to_client(&mut t, c, relay, 100), 25);
    assert_eq!(t.e.metrics_snapshot().counters.bandwidth_dropped, [165, 75]);
    let info = &t.e.sessions(t.now, None)[0];
    assert_eq!((info.packets_to_peer, info.packets_to_client), (35, 25));
    assert_eq!(info.bandwidth_dropped, [165, 75], "the session API's view");
}

#[test]
fn send_and_data_indications_share_the_buckets_of_channel_data() {
    let mut t = engine();
    set_cap(&mut t, 800_000);
    let c = client(1);
    let (relay, nonce) = with_channel(&mut t, c);

    let r = t.authed(c, &nonce, Req::new(METHOD_CREATE_PERMISSION).peer(peer(1)));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&r));
    let si = send_indication(peer(1), &[1; 1000]);
    let sent = (0..20).filter(|_| t.send(c, &si).is_some()).count();
    assert_eq!(sent, 20);
    assert_eq!(to_peer(&mut t, c, 100), 5, "20 + 5 = the 25 of the burst");
    let data = (0..20)
        .filter(|_| from_peer(&mut t, c, relay, peer(1), &[3; 1000]).is_some())
        .count();
    assert_eq!(data, 20, "Data indications to the client");
    assert_eq!(to_client(&mut t, c, relay, 100), 5);
    assert!(t.send(c, &si).is_none(), "Send over the cap is dropped");
}

#[test]
fn a_reload_sets_raises_and_lifts_the_cap_of_existing_allocations() {
    let mut t = engine();
    let c = client(1);
    let (relay, _) = with_channel(&mut t, c);
    assert_eq!(to_peer(&mut t, c, 100), 100, "no cap yet");
    set_cap(&mut t, 800_000);
    assert_eq!(to_peer(&mut t, c, 100), 25);
    assert_eq!(to_client(&mut t, c, relay, 100), 25);
    t.now += Duration::from_secs(1);
    set_cap(&mut t, 8_000_000); // 1 MB/s: burst 250 000 bytes
    assert_eq!(to_peer(&mut t, c, 1000), 250);
    set_cap(&mut t, 0);
    assert_eq!(to_peer(&mut t, c, 1000), 1000);
    assert_eq!(to_client(&mut t, c, relay, 1000), 1000);
}

#[test]
fn each_allocation_has_its_own_buckets_and_a_new_one_starts_full() {
    let mut t = engine();
    set_cap(&mut t, 800_000);
    let (a, b) = (client(1), client(2));
    let (_, nonce) = with_channel(&mut t, a);
    with_channel(&mut t, b);
    assert_eq!(to_peer(&mut t, a, 100), 25);
    assert_eq!(to_peer(&mut t, b, 100), 25);
    // `a` ends; a new allocation that takes its slot starts with a full bucket.
    let r = t.authed(a, &nonce, Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let c = client(3);
    with_channel(&mut t, c);
    assert_eq!(to_peer(&mut t, c, 100), 25);
}

#[test]
fn the_rate_holds_over_ten_seconds_of_four_times_the_cap() {
    let mut t = engine();
    let bps = 500_000u64;
    set_cap(&mut t, bps);
    let c = client(1);
    let (relay, _) = with_channel(&mut t, c);
    // 1000-byte datagrams every 4 ms both ways: 2 Mbit/s offered, 4x the cap.
    let (mut up, mut down) = (0u64, 0u64);
    for _ in 0..2500 {
        up += to_peer(&mut t, c, 1) as u64 * 1000;
        down += to_client(&mut t, c, relay, 1) as u64 * 1000;
        t.now += Duration::from_millis(4);
    }
    let expected = bps / 8 * 10 + bps / 8 / 4;
    for got in [up, down] {
        assert!(
            got.abs_diff(expected) <= 1000,
            "{got} bytes, expected {expected}"
        );
    }
}

#[test]
fn every_client_transport_is_capped_by_payload_not_by_framing() {
    for transport in [Transport::Tcp, Transport::Tls, Transport::Dtls] {
        let mut t = engine();
        set_cap(&mut t, 800_000);
        let mut c = client(1);
        c.transport = transport;
        let (relay, _) = with_channel(&mut t, c);
        assert_eq!(to_peer(&mut t, c, 100), 25, "{transport:?}");
        // 961-byte payloads (964 padded on streams, 968 with the ChannelData header): the
        // bucket counts payload, so 26 fit in the 25 000 bytes of the burst (26 x 964 would
        // not).
        let got = (0..100)
            .filter(|_| from_peer(&mut t, c, relay, peer(2), &[5; 961]).is_some())
            .count();
        assert_eq!(got, 26, "{transport:?}");
        let s = t.e.metrics_snapshot();
        assert_eq!(s.counters.bandwidth_dropped, [75, 74], "{transport:?}");
    }
}

/// The usage record of an ended allocation (the Redis stream's and the "usage" log line's
/// source) carries its drops, as the session API does.
#[test]
fn the_usage_record_of_a_capped_allocation_counts_its_drops() {
    let mut t = engine();
    let sink = Arc::new(RecordingSink::default());
    t.e = t.e.with_usage(sink.clone());
    set_cap(&mut t, 800_000);
    let c = client(1);
    let (relay, nonce) = with_channel(&mut t, c);
    assert_eq!(to_peer(&mut t, c, 30), 25);
    assert_eq!(to_client(&mut t, c, relay, 27), 25);
    let r = t.authed(c, &nonce, Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let got = sink.0.lock().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].session.bandwidth_dropped, [5, 2]);
    assert_eq!(
        (
            got[0].session.packets_to_peer,
            got[0].session.packets_to_client
        ),
        (25, 25)
    );
}
