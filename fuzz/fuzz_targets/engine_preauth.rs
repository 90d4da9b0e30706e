//! The engine before authentication: arbitrary datagrams from arbitrary 5-tuples. Nothing
//! unauthenticated may create state.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use turnd_proto::engine::testing::Harness;
use turnd_proto::engine::{ClientAddr, Transport};

#[derive(Debug, Arbitrary)]
struct Datagram {
    transport: u8,
    v6: bool,
    ip: [u8; 4],
    port: u16,
    advance_ms: u16,
    bytes: Vec<u8>,
}

fuzz_target!(|input: Vec<Datagram>| {
    let mut h = Harness::new();
    for d in input.iter().take(64) {
        let ip: IpAddr = if d.v6 {
            let [a, b, c, e] = d.ip;
            Ipv6Addr::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, e]),
            )
            .into()
        } else {
            d.ip.into()
        };
        let from = ClientAddr {
            transport: match d.transport % 3 {
                0 => Transport::Udp,
                1 => Transport::Tcp,
                _ => Transport::Tls,
            },
            remote: SocketAddr::new(ip, d.port),
            local: SocketAddr::from(([198, 51, 100, 1], 3478)),
        };
        h.now += std::time::Duration::from_millis(u64::from(d.advance_ms));
        let out = h.engine.handle_client(h.now, from, &d.bytes);
        assert!(out.is_none(), "relayed without an allocation");
        h.engine.handle_timeout(h.now);
        while h.engine.poll_transmit().is_some() {}
        assert!(
            h.engine.poll_command().is_none(),
            "a command without authentication"
        );
        let s = h.engine.stats();
        assert_eq!(s, Default::default(), "unauthenticated state: {s:?}");
    }
});
