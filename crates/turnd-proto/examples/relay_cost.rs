//! Relays `N` packets each way through one [`Engine`](turnd_proto::engine::Engine), for
//! instruction counts of the data path (README "Engine cost per packet"): run it under
//! `valgrind --tool=callgrind` with `N` = 0 and with a large `N`; the difference over `2N` is
//! the cost of one relayed packet in the engine alone (no sockets, no syscalls).
//!
//! `cargo build --release -p turnd-proto --features fuzzing --example relay_cost`, then
//! `relay_cost channel 100000` (ChannelData both ways) or `relay_cost indication 100000`
//! (Send indications out, Data indications back).

use std::net::SocketAddr;

use turnd_proto::engine::testing::{
    peer_addr, Attr, AttrType, Harness, Method, Signing, Step, Value,
};
use turnd_proto::engine::{PeerAddr, RelayAddr, HEADROOM, TAILROOM};

fn request(client: u8, method: Method, attrs: Vec<Attr>) -> Step {
    Step::Request {
        client,
        user: false,
        method,
        attrs,
        after_integrity: vec![],
        signing: Signing::Good,
        fingerprint: false,
        tid: 0,
    }
}

fn attr(typ: u16, value: Value) -> Attr {
    Attr {
        typ: AttrType::Any(typ),
        value,
        truncate: None,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "channel".into());
    let n: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let mut h = Harness::new();
    // Four allocations (so the tables are not trivially small), each with a channel and a
    // permission; client 0 is the one measured.
    for c in 0..4u8 {
        h.run(&request(
            c,
            Method::Allocate,
            vec![attr(0x0019, Value::Udp)],
        ));
        h.run(&Step::ServeBinds { ok: true });
        h.run(&request(
            c,
            Method::ChannelBind,
            vec![
                attr(0x000C, Value::Channel(0x4000)),
                attr(0x0012, Value::Peer(0)),
            ],
        ));
        h.run(&request(
            c,
            Method::CreatePermission,
            vec![attr(0x0012, Value::Peer(1))],
        ));
    }
    let client = Harness::client(0);
    let relay: SocketAddr = h
        .engine
        .sessions(h.now, None)
        .into_iter()
        .find(|s| s.client == client.remote)
        .and_then(|s| s.relays.first().copied())
        .expect("client 0 has an allocation");
    let payload = [0x5Au8; 160];
    let (peer, out): (SocketAddr, Vec<u8>) = match mode.as_str() {
        "channel" => {
            let mut m = vec![0x40, 0x00, 0, payload.len() as u8];
            m.extend_from_slice(&payload);
            (peer_addr(0), m)
        }
        "indication" => {
            let mut m = vec![0x00, 0x16, 0, 0, 0x21, 0x12, 0xA4, 0x42];
            m.extend_from_slice(&[7; 12]);
            let p = peer_addr(1);
            let mut v = [0u8; 20];
            let tid: [u8; 12] = [7; 12];
            let l = turnd_proto::engine::wire::encode_xor_addr(p, &tid, &mut v);
            turnd_proto::engine::testing::push_attr(&mut m, 0x0012, &v[..l]);
            turnd_proto::engine::testing::push_attr(&mut m, 0x0013, &payload);
            (p, m)
        }
        other => panic!("unknown mode {other}: channel or indication"),
    };
    let mut buf = vec![0u8; HEADROOM + payload.len() + TAILROOM];
    let (mut to_peer, mut to_client) = (0u64, 0u64);
    for _ in 0..n {
        if h.engine.handle_client(h.now, client, &out).is_some() {
            to_peer += 1;
        }
        buf[HEADROOM..HEADROOM + payload.len()].copy_from_slice(&payload);
        if h.engine
            .handle_peer(
                h.now,
                client,
                RelayAddr(relay),
                PeerAddr(peer),
                &mut buf,
                payload.len(),
            )
            .is_some()
        {
            to_client += 1;
        }
    }
    assert_eq!((to_peer, to_client), (n, n), "every packet relayed");
    let s = h
        .engine
        .sessions(h.now, None)
        .into_iter()
        .find(|s| s.client == client.remote)
        .expect("still there");
    assert_eq!(
        (s.packets_to_peer, s.packets_to_client),
        (n, n),
        "counted exactly"
    );
    println!("{mode}: relayed {n} packets each way");
}
