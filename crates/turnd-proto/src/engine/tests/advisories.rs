//! The 2026 coturn advisories as engine regression tests: each fails on a server with that bug.

use std::net::Ipv6Addr;

use super::*;
use crate::policy::PeerFilter;

/// An engine with the real peer policy of the secure default profile.
fn engine_with_real_policy() -> T {
    let mut t = engine();
    let policy = crate::settings::Policy::default();
    t.e.shared.policy = Arc::new(PeerFilter::new(&policy, vec![]));
    t
}

fn v6(s: &str) -> IpAddr {
    s.parse::<Ipv6Addr>().unwrap().into()
}

#[test]
fn embedded_ipv4_forms_of_loopback_unspecified_and_metadata_peers_are_refused() {
    let mut t = engine_with_real_policy();
    let c = client(1);
    let (_, n) = t.allocate(c);
    let forms: Vec<IpAddr> = vec![
        "127.0.0.1".parse().unwrap(),
        "0.0.0.0".parse().unwrap(),
        "169.254.169.254".parse().unwrap(),
        v6("::1"),
        v6("::"),
        // IPv4-mapped
        v6("::ffff:127.0.0.1"),
        v6("::ffff:0.0.0.0"),
        v6("::ffff:169.254.169.254"),
        // IPv4-compatible (deprecated)
        v6("::127.0.0.1"),
        v6("::169.254.169.254"),
        // NAT64 well-known and local-use prefixes
        v6("64:ff9b::127.0.0.1"),
        v6("64:ff9b::0.0.0.0"),
        v6("64:ff9b::169.254.169.254"),
        v6("64:ff9b:1::7f00:1"),
        v6("64:ff9b:1::a9fe:a9fe"),
        // 6to4 and Teredo carrying them
        v6("2002:7f00:1::"),
        v6("2002:a9fe:a9fe::"),
        v6("2001:0:0:0:0:0:80ff:fffe"),
        // Cloud metadata over IPv6 (AWS)
        v6("fd00:ec2::254"),
    ];
    let mut allowed = vec![];
    for ip in forms {
        let p = SocketAddr::new(ip, 80);
        let r = t.authed(c, &n, Req::new(METHOD_CREATE_PERMISSION).peer(p));
        if error_code(&r) != Some(403) && error_code(&r) != Some(443) {
            allowed.push(ip);
        }
        // Nothing may reach it either way, also not over a channel or a Send.
        let r = t.authed(c, &n, Req::new(METHOD_CHANNEL_BIND).channel(0x4000).peer(p));
        assert_ne!(r.typ.class, CLASS_SUCCESS_RESPONSE, "channel to {ip}");
        assert!(
            t.send(c, &send_indication(p, b"x")).is_none(),
            "Send to {ip}"
        );
    }
    assert!(allowed.is_empty(), "peers permitted: {allowed:?}");
    assert_eq!(t.e.stats().permissions, 0);
}

fn even_port_cycle(t: &mut T, c: ClientAddr, n: &str, flags: u8) {
    let r = t.authed(
        c,
        n,
        Req::new(METHOD_ALLOCATE)
            .transport_udp()
            .raw(ATTR_EVEN_PORT, &[flags]),
    );
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&r));
    let r = t.authed(c, n, Req::new(METHOD_REFRESH).lifetime(0));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
}

#[test]
fn even_port_with_and_without_r_never_leaks_a_relay_port() {
    let mut t = engine();
    let c = client(1);
    let n = t.nonce(c);
    for i in 0..1000 {
        even_port_cycle(&mut t, c, &n, if i % 2 == 0 { 0x00 } else { 0x80 });
        // A malformed EVEN-PORT (length 0, 2, 4) binds nothing.
        for v in [&[][..], &[0x80, 0][..], &[0x80, 0, 0, 0][..]] {
            let r = t.authed(
                c,
                &n,
                Req::new(METHOD_ALLOCATE)
                    .transport_udp()
                    .raw(ATTR_EVEN_PORT, v),
            );
            assert_eq!(error_code(&r), Some(400));
        }
    }
    t.serve_commands(true);
    let mut bound = std::collections::BTreeSet::new();
    let mut binds = 0;
    for cmd in &t.seen {
        match cmd {
            Command::BindRelays { .. } => binds += 1,
            Command::ReleaseRelay(a) => {
                bound.insert(a.addr);
            }
            _ => {}
        }
    }
    assert_eq!(binds, 1000);
    assert_eq!(bound.len(), 1000, "every bound relay released exactly once");
    assert_eq!(t.e.stats(), EngineStats::default());
    assert_eq!(t.e.shared.quotas.total(), 0);
}

#[test]
fn attributes_after_message_integrity_are_never_acted_on() {
    let mut t = engine();
    let c = client(1);
    let (_, n) = t.allocate(c);
    // LIFETIME 0 after MESSAGE-INTEGRITY: the Refresh keeps the default lifetime.
    let mut req = Req::new(METHOD_REFRESH).creds("alice", "secret", &n);
    req.m.add(ATTR_LIFETIME, &0u32.to_be_bytes());
    let r = t.ask(c, &req);
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    assert_ne!(r.get(ATTR_LIFETIME).unwrap(), 0u32.to_be_bytes());
    assert_eq!(t.e.stats().allocations, 1);
    // XOR-PEER-ADDRESS only after MESSAGE-INTEGRITY: no peer, 400, no permission.
    let mut req = Req::new(METHOD_CREATE_PERMISSION).creds("alice", "secret", &n);
    XorMappedAddress {
        ip: peer(1).ip(),
        port: peer(1).port(),
    }
    .add_to_as(&mut req.m, ATTR_XOR_PEER_ADDRESS)
    .unwrap();
    assert_eq!(error_code(&t.ask(c, &req)), Some(400));
    assert_eq!(t.e.stats().permissions, 0);
    // A second USERNAME after MESSAGE-INTEGRITY does not change who signed.
    let mut req = Req::new(METHOD_REFRESH).creds("alice", "secret", &n);
    TextAttribute::new(ATTR_USERNAME, "bob".into())
        .add_to(&mut req.m)
        .unwrap();
    assert_eq!(t.ask(c, &req).typ.class, CLASS_SUCCESS_RESPONSE);
    // EVEN-PORT with R after MESSAGE-INTEGRITY reserves nothing.
    let c2 = client(2);
    let n2 = t.nonce(c2);
    let mut req = Req::new(METHOD_ALLOCATE)
        .transport_udp()
        .creds("alice", "secret", &n2);
    req.m.add(ATTR_EVEN_PORT, &[0x80]);
    let r = t.ask(c2, &req);
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    assert!(!r.contains(ATTR_RESERVATION_TOKEN));
    assert!(matches!(
        t.seen.last(),
        Some(Command::BindRelays {
            port: PortChoice::Any,
            ..
        })
    ));
}

#[test]
fn send_with_data_past_offset_65535_relays_the_data_not_the_header() {
    // Issue 10, item 12: a Send framed on a stream can be 65,552+ bytes; with u16 offsets
    // DATA at offset 65,536 pointed at the STUN header.
    let mut t = engine();
    let c = ClientAddr {
        transport: Transport::Tcp,
        ..client(1)
    };
    let (_, n) = t.allocate(c);
    t.authed(c, &n, Req::new(METHOD_CREATE_PERMISSION).peer(peer(1)));
    let filler = vec![0xEEu8; 65_500];
    let payload = b"the payload";
    let m = Req::indication(METHOD_SEND)
        .peer(peer(1))
        .raw(AttrType(0x8050), &filler)
        .raw(ATTR_DATA, payload)
        .bytes();
    assert!(m.len() > 65_536, "{}", m.len());
    let out = t.send(c, &m).expect("relayed");
    assert!(out.range.start > 65_535);
    assert_eq!(&m[out.range], payload);
}

#[test]
fn hostile_usernames_and_realms_get_an_error_and_create_nothing() {
    // The real credential store: a static user and a TURN REST secret (REST usernames are
    // parsed, so hostile ones reach that parser too).
    let mut t = engine();
    let auth = crate::settings::Auth {
        users: vec![crate::settings::StaticUser {
            name: "alice".into(),
            credential: crate::settings::Credential::Password("secret".into()),
        }],
        secrets: vec!["rest-secret".into()],
        ..Default::default()
    };
    t.e.shared.auth = Arc::new(crate::auth::Credentials::from_config(&auth, REALM));
    let c = client(1);
    let n = t.nonce(c);
    let long = "a".repeat(513);
    let rest_long = format!("1700000000:{}", "b".repeat(600));
    let longer = "%n".repeat(400);
    let hostile = [
        "al\u{0}ice",
        "alice\r\nSet-Cookie: x",
        "\u{1b}[31malice",
        "%s%s%s%n%x",
        "{}{:?}${jndi:x}",
        long.as_str(),
        longer.as_str(),
        rest_long.as_str(),
        "99999999999999999999999:alice",
        "1700000000:%s\n",
    ];
    for s in hostile {
        for (user, realm) in [(s, REALM), ("alice", s)] {
            let mut req = Req::new(METHOD_ALLOCATE).transport_udp();
            for (typ, v) in [(ATTR_USERNAME, user), (ATTR_REALM, realm), (ATTR_NONCE, &n)] {
                // Raw: the stun crate itself refuses USERNAME over 513 bytes.
                req.m.add(typ, v.as_bytes());
            }
            MessageIntegrity(key(user, "secret"))
                .add_to(&mut req.m)
                .unwrap();
            let r = t.ask(c, &req);
            let code = error_code(&r);
            assert!(
                matches!(code, Some(400 | 401)),
                "{code:?} for {user:?}/{realm:?}"
            );
            // The answer never echoes what the client sent.
            assert!(!r.contains(ATTR_USERNAME));
            let realm_back = TextAttribute::get_from_as(&r, ATTR_REALM).ok();
            assert!(realm_back.is_none_or(|r| r.text == REALM));
        }
    }
    assert_eq!(t.e.stats(), EngineStats::default());
    assert!(t.e.poll_command().is_none());
}

#[test]
fn structurally_valid_signed_spoofed_flood_creates_no_state() {
    let mut t = engine();
    t.e.shared.budget = Arc::new(FailureBudget::new(50));
    let before = t.e.stats();
    let mut answered = 0usize;
    let real_nonce = t.nonce(client(0));
    for i in 0..50_000u32 {
        let from = ClientAddr {
            transport: Transport::Udp,
            remote: SocketAddr::from((
                [198, 18, (i >> 8) as u8, i as u8],
                1024 + (i % 60000) as u16,
            )),
            local: client(0).local,
        };
        // Valid STUN, right realm, known user, a real nonce of another address or a forged
        // one, signed with the right or a wrong key.
        let nonce = if i % 2 == 0 {
            real_nonce.clone()
        } else {
            format!("{:027}", i)
        };
        let pass = if i % 3 == 0 { "secret" } else { "guess" };
        let req = match i % 4 {
            0 => Req::new(METHOD_ALLOCATE).transport_udp(),
            1 => Req::new(METHOD_REFRESH).lifetime(600),
            2 => Req::new(METHOD_CREATE_PERMISSION).peer(peer(1)),
            _ => Req::new(METHOD_CHANNEL_BIND).channel(0x4000).peer(peer(1)),
        }
        .creds("alice", pass, &nonce)
        .fingerprint();
        t.send(from, &req.bytes());
        while t.e.poll_transmit().is_some() {
            answered += 1;
        }
    }
    assert_eq!(t.e.stats(), before);
    assert!(t.e.poll_command().is_none(), "nothing bound");
    assert_eq!(t.e.shared.quotas.total(), 0);
    assert!(t.e.transmits.capacity() < 1024, "no queue growth");
    assert!(answered <= 50_000, "{answered}");
}
