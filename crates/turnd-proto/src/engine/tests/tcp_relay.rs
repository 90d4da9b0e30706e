//! RFC 6062 TCP relay allocations in the engine (`engine/tcp_relay.rs`): Allocate, Connect,
//! ConnectionAttempt, ConnectionBind, their refusals, timers, caps and policy.

use super::*;
use crate::engine::{ConnectionId, TcpRelayConfig, BIND_TIMEOUT};

fn tcp_client(n: u16) -> ClientAddr {
    ClientAddr {
        transport: Transport::Tcp,
        ..client(n)
    }
}

fn tcp_engine(max_connections: usize) -> T {
    let mut t = engine();
    t.e = t.e.with_tcp_relay(TcpRelayConfig {
        enabled: true,
        max_connections,
    });
    t
}

fn tcp_allocate_req(nonce: &str) -> Req {
    Req::new(METHOD_ALLOCATE)
        .raw(ATTR_REQUESTED_TRANSPORT, &[6, 0, 0, 0])
        .creds("alice", "secret", nonce)
}

impl T {
    /// Send, serve BindTcpRelay with a fake address, return the answer and other commands.
    fn ask_tcp(&mut self, from: ClientAddr, req: &Req) -> (Option<Message>, Vec<Command>) {
        assert!(self.send(from, &req.bytes()).is_none());
        let cmds = self.tcp_commands();
        let answer = self.e.poll_transmit().map(|t| {
            assert_eq!(t.to, from);
            decode(&t.bytes)
        });
        (answer, cmds)
    }
    fn tcp_commands(&mut self) -> Vec<Command> {
        let mut out = vec![];
        while let Some(c) = self.e.poll_command() {
            if let Command::BindTcpRelay { client, .. } = c {
                self.next_port += 2;
                let a = SocketAddr::from(([198, 51, 100, 1], self.next_port));
                self.e.relay_bound(self.now, client, vec![Ok(bound(a))]);
            } else {
                out.push(c);
            }
        }
        out
    }
    fn tcp_allocation(&mut self, c: ClientAddr) -> (SocketAddr, String) {
        let nonce = self.nonce(c);
        let (r, _) = self.ask_tcp(c, &tcp_allocate_req(&nonce));
        let r = r.expect("an answer");
        assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE, "{:?}", error_code(&r));
        let mut x = XorMappedAddress::default();
        x.get_from_as(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap();
        (SocketAddr::new(x.ip, x.port), nonce)
    }
    /// Connect to `p`; returns the ConnectPeer command's id (no answer yet).
    fn connect(&mut self, c: ClientAddr, nonce: &str, p: SocketAddr) -> ConnectionId {
        let req = Req::new(METHOD_CONNECT)
            .peer(p)
            .creds("alice", "secret", nonce);
        let (answer, cmds) = self.ask_tcp(c, &req);
        assert!(answer.is_none(), "answered only once connected");
        match cmds.as_slice() {
            [Command::ConnectPeer { id, peer, .. }] if peer.0 == p => *id,
            other => panic!("{other:?}"),
        }
    }
    fn connect_refused(&mut self, c: ClientAddr, nonce: &str, p: SocketAddr) -> Option<u16> {
        let req = Req::new(METHOD_CONNECT)
            .peer(p)
            .creds("alice", "secret", nonce);
        let (answer, cmds) = self.ask_tcp(c, &req);
        assert!(cmds.is_empty(), "{cmds:?}");
        error_code(&answer.expect("an answer"))
    }
    fn bind(&mut self, data: ClientAddr, nonce: &str, id: ConnectionId) -> (Message, Vec<Command>) {
        let req = Req::new(METHOD_CONNECTION_BIND)
            .raw(ATTR_CONNECTION_ID, &id.0.to_be_bytes())
            .creds("alice", "secret", nonce);
        let (a, cmds) = self.ask_tcp(data, &req);
        (a.expect("an answer"), cmds)
    }
}

#[test]
fn tcp_allocate_needs_the_setting_and_a_stream_client_and_no_udp_only_attributes() {
    let mut t = engine();
    let nonce = t.nonce(tcp_client(1));
    let (r, _) = t.ask_tcp(tcp_client(1), &tcp_allocate_req(&nonce));
    assert_eq!(error_code(&r.unwrap()), Some(442), "off by default");
    let mut t = tcp_engine(4);
    let nonce = t.nonce(client(1));
    let (r, _) = t.ask_tcp(client(1), &tcp_allocate_req(&nonce));
    assert_eq!(error_code(&r.unwrap()), Some(442), "not over UDP");
    let nonce = t.nonce(tcp_client(1));
    let req = tcp_allocate_req(&nonce);
    let even = Req::new(METHOD_ALLOCATE)
        .raw(ATTR_REQUESTED_TRANSPORT, &[6, 0, 0, 0])
        .raw(ATTR_EVEN_PORT, &[0])
        .creds("alice", "secret", &nonce);
    let (r, _) = t.ask_tcp(tcp_client(1), &even);
    assert_eq!(error_code(&r.unwrap()), Some(400), "EVEN-PORT");
    let (r, _) = t.ask_tcp(tcp_client(1), &req);
    assert_eq!(r.unwrap().typ.class, CLASS_SUCCESS_RESPONSE);
    let r = t.authed(
        tcp_client(1),
        &nonce,
        Req::new(METHOD_CHANNEL_BIND).channel(0x4000).peer(peer(1)),
    );
    assert_eq!(error_code(&r), Some(400), "no channels on a TCP allocation");
}

#[test]
fn connect_answers_once_connected_then_an_unbound_connection_closes_after_30_s() {
    let mut t = tcp_engine(4);
    let c = tcp_client(1);
    let (_, nonce) = t.tcp_allocation(c);
    let id = t.connect(c, &nonce, peer(1));
    assert_eq!(id.shard(), 0, "shard 0's connection");
    assert!(t.e.peer_connected(t.now, id, true));
    let ok = decode(&t.e.poll_transmit().expect("the Connect answer").bytes);
    assert_eq!(
        ok.typ,
        MessageType::new(METHOD_CONNECT, CLASS_SUCCESS_RESPONSE)
    );
    assert_eq!(ok.get(ATTR_CONNECTION_ID).unwrap(), id.0.to_be_bytes());
    MessageIntegrity(key("alice", "secret"))
        .check(&mut ok.clone())
        .unwrap();
    assert_eq!(t.e.tcp_connections(), (1, 0));
    t.advance(BIND_TIMEOUT - Duration::from_secs(1));
    assert_eq!(t.tcp_commands(), vec![]);
    t.advance(Duration::from_secs(2));
    assert_eq!(t.tcp_commands(), vec![Command::ClosePeer(id)]);
    assert_eq!(t.e.tcp_connections(), (0, 0));
    let (r, cmds) = t.bind(tcp_client(2), &nonce, id);
    assert_eq!(error_code(&r), Some(400), "timed out: unknown");
    assert!(cmds.is_empty());
}

#[test]
fn a_failed_or_unanswered_connect_gets_447() {
    let mut t = tcp_engine(4);
    let c = tcp_client(1);
    let (_, nonce) = t.tcp_allocation(c);
    let id = t.connect(c, &nonce, peer(1));
    assert!(!t.e.peer_connected(t.now, id, false));
    let r = decode(&t.e.poll_transmit().unwrap().bytes);
    assert_eq!(error_code(&r), Some(447));
    let id = t.connect(c, &nonce, peer(1));
    t.advance(Duration::from_secs(36));
    assert_eq!(t.tcp_commands(), vec![Command::ClosePeer(id)]);
    let r = decode(&t.e.poll_transmit().unwrap().bytes);
    assert_eq!(error_code(&r), Some(447));
    assert!(!t.e.peer_connected(t.now, id, true), "too late: closed");
    assert_eq!(t.e.tcp_connections(), (0, 0));
}

#[test]
fn connect_refusals_403_446_437_and_508_at_the_cap() {
    let mut t = tcp_engine(2);
    let c = tcp_client(1);
    let (_, nonce) = t.tcp_allocation(c);
    let denied = SocketAddr::from(([10, 1, 2, 3], 80));
    assert_eq!(t.connect_refused(c, &nonce, denied), Some(403));
    t.connect(c, &nonce, peer(1));
    assert_eq!(
        t.connect_refused(c, &nonce, peer(1)),
        Some(446),
        "connecting"
    );
    t.connect(c, &nonce, peer(2));
    assert_eq!(t.connect_refused(c, &nonce, peer(3)), Some(508), "the cap");
    // A UDP allocation has no connections.
    let u = client(9);
    let (_, n2) = t.allocate(u);
    let req = Req::new(METHOD_CONNECT)
        .peer(peer(1))
        .creds("alice", "secret", &n2);
    let (a, _) = t.ask_tcp(u, &req);
    assert_eq!(error_code(&a.unwrap()), Some(437));
}

#[test]
fn inbound_connections_need_a_permission_and_the_policy_and_fit_the_cap() {
    let mut t = tcp_engine(1);
    let c = tcp_client(1);
    let (_, nonce) = t.tcp_allocation(c);
    assert_eq!(
        t.e.peer_inbound(t.now, c, PeerAddr(peer(1))),
        None,
        "no permission"
    );
    assert!(t.e.poll_transmit().is_none(), "and no indication");
    let r = t.authed(c, &nonce, Req::new(METHOD_CREATE_PERMISSION).peer(peer(1)));
    assert_eq!(r.typ.class, CLASS_SUCCESS_RESPONSE);
    let id =
        t.e.peer_inbound(t.now, c, PeerAddr(peer(1)))
            .expect("admitted");
    let ind = decode(&t.e.poll_transmit().unwrap().bytes);
    assert_eq!(
        ind.typ,
        MessageType::new(METHOD_CONNECTION_ATTEMPT, CLASS_INDICATION)
    );
    assert_eq!(ind.get(ATTR_CONNECTION_ID).unwrap(), id.0.to_be_bytes());
    let mut x = XorMappedAddress::default();
    x.get_from_as(&ind, ATTR_XOR_PEER_ADDRESS).unwrap();
    assert_eq!(SocketAddr::new(x.ip, x.port), peer(1));
    assert_eq!(
        t.e.peer_inbound(t.now, c, PeerAddr(peer(1))),
        None,
        "the cap"
    );
    // Bound, then the allocation ends: its connection and data connection close.
    let data = tcp_client(2);
    let (r, cmds) = t.bind(data, &nonce, id);
    assert_eq!(
        r.typ,
        MessageType::new(METHOD_CONNECTION_BIND, CLASS_SUCCESS_RESPONSE)
    );
    assert_eq!(cmds, vec![Command::SpliceData { id, data }]);
    let (r, _) = t.bind(c, &nonce, id);
    assert_eq!(error_code(&r), Some(400), "on the control connection");
    assert_eq!(t.e.tcp_connections(), (1, 1));
    t.e.client_closed(t.now, c);
    let cmds = t.tcp_commands();
    assert!(cmds.contains(&Command::ClosePeer(id)), "{cmds:?}");
    assert!(cmds.contains(&Command::CloseClient(data)), "{cmds:?}");
    assert_eq!(t.e.tcp_connections(), (0, 0));
}

#[test]
fn another_users_connection_bind_gets_441_and_a_reload_closes_forbidden_connections() {
    let mut t = tcp_engine(4);
    let c = tcp_client(1);
    let (_, nonce) = t.tcp_allocation(c);
    let id = t.connect(c, &nonce, peer(1));
    assert!(t.e.peer_connected(t.now, id, true));
    t.e.poll_transmit();
    let req = Req::new(METHOD_CONNECTION_BIND)
        .raw(ATTR_CONNECTION_ID, &id.0.to_be_bytes())
        .creds("bob", "hunter2", &nonce);
    let (r, _) = t.ask_tcp(tcp_client(2), &req);
    assert_eq!(error_code(&r.unwrap()), Some(441));
    struct DenyAll;
    impl PeerPolicy for DenyAll {
        fn permits(&self, _: SocketAddr) -> bool {
            false
        }
        fn permits_ip(&self, _: IpAddr) -> bool {
            false
        }
    }
    let mut shared = t.e.shared.clone();
    shared.policy = Arc::new(DenyAll);
    t.e.set_shared(shared);
    assert_eq!(t.tcp_commands(), vec![Command::ClosePeer(id)]);
    assert_eq!(t.e.tcp_connections(), (0, 0));
}

#[test]
fn a_connection_bind_for_another_shards_connection_asks_that_shard() {
    let mut t = tcp_engine(4);
    let nonce = t.nonce(tcp_client(1));
    let other = ConnectionId(3 << (32 - crate::engine::SHARD_BITS) | 77);
    let data = tcp_client(2);
    let req = Req::new(METHOD_CONNECTION_BIND)
        .raw(ATTR_CONNECTION_ID, &other.0.to_be_bytes())
        .creds("alice", "secret", &nonce);
    let (a, cmds) = t.ask_tcp(data, &req);
    assert!(a.is_none(), "answered when shard 3 answers");
    assert_eq!(
        cmds,
        vec![Command::ClaimPeer {
            id: other,
            user: "alice".into(),
            data
        }]
    );
    assert!(t.e.peer_claimed(t.now, data, Ok(())));
    assert!(!t.e.peer_claimed(t.now, data, Ok(())), "answered once");
    assert_eq!(
        t.tcp_commands(),
        vec![Command::SpliceData { id: other, data }]
    );
    let r = decode(&t.e.poll_transmit().unwrap().bytes);
    assert_eq!(
        r.typ,
        MessageType::new(METHOD_CONNECTION_BIND, CLASS_SUCCESS_RESPONSE)
    );
    assert_eq!(r.transaction_id, req.m.transaction_id);
    // The owner's side: shard 0's own connection, claimed for a client of another shard.
    let c = tcp_client(1);
    let (_, nonce) = t.tcp_allocation(c);
    let id = t.connect(c, &nonce, peer(1));
    assert!(t.e.peer_connected(t.now, id, true));
    assert_eq!(
        t.e.claim_peer(t.now, id, "bob", data),
        Err(Refusal::WrongCredentials)
    );
    assert_eq!(t.e.claim_peer(t.now, id, "alice", data), Ok(()));
    assert_eq!(
        t.e.claim_peer(t.now, id, "alice", data),
        Err(BadRequest::ConnectionId.into()),
        "bound once"
    );
}
