//! The XDP kernel fast path (issue 13, item 5) with clients we did not write: Python `aioice`
//! (aiortc's ICE stack) and headless Chromium (libwebrtc's `TurnPort`), both binding channels
//! and then sending ChannelData. Built only with `--features xdp`.
//!
//! Topology from `fastpath.rs` (`Topo::build`, on 10.213.1.0/24): two namespaces of our own joined
//! by a veth pair; the server's has `txs<tag><id>` 10.213.1.1/24 with forwarding on and the
//! program attached in native mode; the other has `txc<tag><id>` with 10.213.1.2 and 10.213.1.3
//! and an `XDP_PASS` program so that frames sent with `XDP_TX` arrive. turnd runs in-process on
//! a thread moved into the server's namespace; the clients run in the other one (`ip netns
//! exec` for the Python client; Chromium is spawned from a thread in that namespace, as
//! `fleet.rs` does).
//!
//! "Through the kernel" is asserted on the program's own counters
//! (`turnd_fastpath_packets_total{action="tx"}`, read from its per-CPU map), never on user
//! space's. Needs root, `ip`, a kernel that takes BPF, `python3` with `aioice`, and Chromium
//! with `playwright-core` in tests/browser: every test fails loudly without them.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fastpath::netns::{in_ns, kernel, Topo};
use crate::raw::*;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 2);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 3);

/// This module's topology: 10.213.1.0/24, interfaces `txs..`/`txc..`, IPv4 only.
fn topo(tag: &str) -> Topo {
    Topo::build(tag, 'x', 1, false)
}

/// A server config on the topology's server address with the fast path on its interface.
fn fast_config(t: &Topo) -> turnd::Config {
    let mut c = server_config(SERVER, 41000);
    c.fastpath.xdp = vec![t.srv_if.clone()];
    c.validate().expect("a valid config");
    c
}

/// The server resolves both client-side addresses now, so that no packet of the test
/// waits in user space for a neighbour entry (the program passes those up).
fn resolve_neighbours(t: &Topo) {
    in_ns(&t.srv, || {
        let s = std::net::UdpSocket::bind((SERVER, 0)).unwrap();
        for a in [CLIENT, PEER] {
            s.send_to(b"arp", (a, 9)).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
}

/// A plain server config on `addr` (relay on the same address), peers in 10.213.1.0/24.
fn server_config(addr: Ipv4Addr, ports: u16) -> turnd::Config {
    let mut c = turnd::Config::secure_default();
    c.workers = 1;
    c.listen.udp = vec![SocketAddr::from((addr, 0))];
    c.admin.listen = None;
    c.signaling.listen = None;
    c.relay.ipv4 = Some(addr);
    c.relay.ipv6 = None;
    c.relay.ports = turnd::config::PortRange {
        min: ports,
        max: ports + 100,
    };
    c.policy.allow_peers = vec!["10.213.1.0/24".parse().unwrap()];
    c.auth.users = vec![turnd::config::StaticUser {
        name: USER.into(),
        credential: turnd::config::Credential::Password(PASS.into()),
    }];
    c.realm = REALM.into();
    c.validate().expect("a valid config");
    c
}

fn kernel_tx(r: &turnd::Running) -> (f64, f64) {
    (kernel(r, "to_peer", "tx"), kernel(r, "to_client", "tx"))
}

/// A UDP echo on `addr` in the calling thread's namespace, for at most `limit` datagrams or
/// until `stop` is set (bounded: the socket times out every 100 ms to look at it).
fn echo(
    sock: std::net::UdpSocket,
    limit: u64,
    stop: &std::sync::atomic::AtomicBool,
) -> (u64, Option<SocketAddr>) {
    use std::sync::atomic::Ordering;
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = vec![0u8; 2048];
    let (mut n, mut from) = (0, None);
    while n < limit && !stop.load(Ordering::Relaxed) {
        if let Ok((len, src)) = sock.recv_from(&mut buf) {
            sock.send_to(&buf[..len], src).unwrap();
            n += 1;
            from = Some(src);
        }
    }
    (n, from)
}

/// aioice allocates a UDP relay from turnd, binds a channel to an echo peer and sends 200
/// datagrams (100 and 1,000 bytes) as ChannelData, each echoed back byte for byte; the
/// program relayed at least as many packets each way as aioice sent.
#[test]
fn aioice_relays_channel_data_through_the_kernel_fast_path() {
    const COUNT: u64 = 100; // per size
    const SIZES: &str = "100,1000";
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/aioice_relay.py");
    let probe = Command::new("python3")
        .args(["-c", "import aioice; print(aioice.__version__)"])
        .output()
        .expect("python3 is required");
    assert!(
        probe.status.success(),
        "python3 with aioice is required (pip install aioice==0.13.0): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let t = topo("a");
    let running = t.start(fast_config(&t));
    resolve_neighbours(&t);
    let port = running.udp[0].port().to_string();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let peer_sock = in_ns(&t.cli, || std::net::UdpSocket::bind((PEER, 0)).unwrap());
    let peer = peer_sock.local_addr().unwrap().to_string();
    let before = kernel_tx(&running);
    let (out, (echoed, relayed_from)) = std::thread::scope(|s| {
        let echoer = s.spawn(|| echo(peer_sock, 10 * COUNT, &stop));
        let out = Command::new("timeout")
            .args(["120", "ip", "netns", "exec", &t.cli_ns, "python3"])
            .arg(&script)
            .args(["--server", "10.213.1.1", "--port", &port, "--user", USER])
            .args(["--password", PASS, "--peer", &peer, "--sizes", SIZES])
            .args(["--count", &COUNT.to_string(), "--timeout", "5"])
            .output()
            .expect("cannot run ip netns exec python3");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, echoer.join().unwrap())
    });
    let after = kernel_tx(&running);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!(
        "aioice_relay.py: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "aioice failed: {text}");
    let report: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("aioice_relay.py printed no JSON ({e}): {text}"));
    let sent = report["sent"].as_u64().unwrap();
    assert_eq!(sent, 2 * COUNT, "{report}");
    assert_eq!(
        report["received"].as_u64(),
        Some(sent),
        "every echo back: {report}"
    );
    assert_eq!(echoed, sent, "the peer got each datagram once");
    // The peer saw the relayed address aioice was given (the program sends from it too).
    assert_eq!(
        relayed_from.map(|a| a.to_string()).as_deref(),
        report["relayed"].as_str(),
        "{report}"
    );
    let (to_peer, to_client) = (after.0 - before.0, after.1 - before.1);
    eprintln!(
        "FIGURE aioice: {sent} datagrams each way; the program relayed {to_peer} to the peer, \
         {to_client} to the client"
    );
    // The shard mirrors a new route into the map before the ChannelBind answer leaves, so
    // even aioice's first ChannelData, sent the moment the answer arrives, finds it.
    assert!(
        to_peer >= sent as f64 && to_client >= sent as f64,
        "the program relayed {to_peer} to the peer and {to_client} back, of the {sent} aioice \
         sent each way"
    );
    running.stop();
}

/// A relay-only call in headless Chromium: two peer connections, each with
/// `iceTransportPolicy: "relay"`, a reliable data channel, 200 messages of 1,000 bytes echoed
/// back. One side's only TURN server is turnd with the fast path (10.213.1.1), the other's a
/// second turnd without it in the clients' namespace (10.213.1.3): relay to relay on one
/// server would be local delivery, which the program on the veth never sees. Every packet
/// between the two relays crosses the veth, so the program carries the call's media path
/// both ways (A's client -> peer and peer -> client). libwebrtc refuses loopback TURN
/// servers in places, hence the namespaces' private addresses.
#[test]
fn chromium_relay_only_call_goes_through_the_kernel_fast_path() {
    use crate::common::browser::{check_tools, run_driver};
    const CHROMIUM: &str = "/usr/bin/chromium";
    const MESSAGES: u64 = 200;
    check_tools("playwright-core", &[CHROMIUM]);
    let t = topo("b");
    let running = t.start(fast_config(&t));
    let other = in_ns(&t.cli, || {
        turnd::start(server_config(PEER, 42000)).expect("the second turnd starts")
    });
    resolve_neighbours(&t);
    let (ua, ub) = (
        format!("10.213.1.1:{}", running.udp[0].port()),
        format!("10.213.1.3:{}", other.udp[0].port()),
    );
    let spec = serde_json::json!({
        "a": {"urls": format!("turn:{ua}?transport=udp"), "username": USER, "credential": PASS},
        "b": {"urls": format!("turn:{ub}?transport=udp"), "username": USER, "credential": PASS},
        "messages": MESSAGES,
        "size": 1000,
    })
    .to_string();
    let before = kernel_tx(&running);
    let t0 = Instant::now();
    let out = in_ns(&t.cli, || {
        run_driver(
            "fastpath_call.js",
            &[CHROMIUM, &spec],
            Duration::from_secs(120),
        )
    });
    let after = kernel_tx(&running);
    eprintln!("fastpath_call.js ({:?}): {out}", t0.elapsed());
    assert_eq!(out["connected"], true, "the call connected: {out}");
    assert_eq!(
        out["echoed"].as_u64(),
        Some(MESSAGES),
        "every message back: {out}"
    );
    assert_eq!(
        out["intact"], true,
        "each echo equal to what was sent: {out}"
    );
    // The selected pair is relay to relay, A's relay on turnd with the fast path.
    let pair = &out["pair"];
    assert_eq!(pair["local"]["candidateType"], "relay", "{out}");
    assert_eq!(pair["remote"]["candidateType"], "relay", "{out}");
    assert_eq!(pair["local"]["address"], SERVER.to_string(), "{out}");
    assert_eq!(pair["remote"]["address"], PEER.to_string(), "{out}");
    let (to_peer, to_client) = (after.0 - before.0, after.1 - before.1);
    eprintln!(
        "FIGURE Chromium relay-only call: {MESSAGES} messages of 1000 B each way; the program \
         relayed {to_peer} packets to the peer, {to_client} to the client"
    );
    // Each 1,000-byte message is its own SCTP packet (no bundling at that size), each way.
    assert!(
        to_peer >= MESSAGES as f64 && to_client >= MESSAGES as f64,
        "the program relayed {to_peer} to the peer and {to_client} back for {MESSAGES} \
         messages each way"
    );
    other.stop();
    running.stop();
}
